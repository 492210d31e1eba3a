//! The host side of a config: its API key and its TLS files. `config
//! check`, `install-unit` and `serve` check them the same way ([`check`]);
//! `serve` makes on first start what belongs under its state dir.

use crate::config::{Config, Tls};
use crate::{certs as tls, secret as keys};
use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

/// Everything `serve` would refuse about `cfg`, checked without changing
/// anything: `serve`, `config check` and `install-unit` share it. A key or
/// self-signed certificate that `serve` makes on first start (under its
/// state dir) is fine when missing.
pub fn check(cfg: &Config) -> anyhow::Result<()> {
    cfg.check_listen_security().map_err(anyhow::Error::msg)?;
    match &cfg.server.api_key_file {
        Some(path) if generated_key(cfg, path) && !path.exists() => {}
        Some(path) => {
            keys::read_key_file(path)?;
        }
        None => {
            env_key(cfg)?;
        }
    }
    match &cfg.server.tls {
        Tls::Off => {}
        Tls::Files { cert, key } => {
            Pair::read(cert, key)?;
        }
        Tls::SelfSigned => {
            let (cert, key) = self_signed_paths(cfg);
            if cert.exists() || key.exists() {
                Pair::read(&cert, &key)?;
            }
        }
    }
    Ok(())
}

/// A key under the daemon's own state dir (the embedded default, the
/// demo) is made on first start; one elsewhere is the operator's to
/// provision with `agentsd gen-key`.
fn generated_key(cfg: &Config, path: &Path) -> bool {
    path.starts_with(&cfg.server.state_dir)
}

fn env_key(cfg: &Config) -> anyhow::Result<String> {
    match std::env::var("AGENTSD_API_KEY") {
        Ok(k) => {
            let k = k.trim().to_string();
            keys::check_len(&k, "AGENTSD_API_KEY")?;
            Ok(k)
        }
        Err(_) => bail!(
            "no API key: set server.api_key_file in {} or the AGENTSD_API_KEY environment variable (agentsd gen-key makes a key)",
            cfg.display_path()
        ),
    }
}

/// The API key: from `api_key_file`, else `AGENTSD_API_KEY`. With the
/// embedded default config, a key file is generated on first start.
pub fn load_key(cfg: &Config) -> anyhow::Result<String> {
    if let Some(path) = &cfg.server.api_key_file {
        if generated_key(cfg, path) && !path.exists() {
            keys::write_private(path, format!("{}\n", keys::generate()?).as_bytes(), false)?;
            tracing::info!("generated an API key in {}", path.display());
        }
        return keys::read_key_file(path);
    }
    env_key(cfg)
}

fn self_signed_paths(cfg: &Config) -> (PathBuf, PathBuf) {
    let dir = cfg.server.state_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Certificate and key files to serve with, read and checked, and the
/// certificate's fingerprint; `None` for plain HTTP.
#[cfg_attr(not(feature = "server"), allow(dead_code))]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub fingerprint: String,
    pub self_signed: bool,
    pub(crate) pair: Pair,
}

pub fn tls_files(cfg: &Config) -> anyhow::Result<Option<TlsFiles>> {
    let (cert, key, self_signed) = match &cfg.server.tls {
        Tls::Off => return Ok(None),
        Tls::Files { cert, key } => (cert.clone(), key.clone(), false),
        Tls::SelfSigned => {
            let (cert, key) = self_signed_paths(cfg);
            if !cert.exists() || !key.exists() {
                let dir = cert.parent().unwrap_or(Path::new("."));
                let (_, fp) = tls::write_self_signed(dir, &tls::default_names(), true)?;
                tracing::info!(
                    "generated a self-signed certificate in {} (fingerprint {fp})",
                    dir.display()
                );
            }
            (cert, key, true)
        }
    };
    let pair = Pair::read(&cert, &key)?;
    Ok(Some(TlsFiles {
        fingerprint: pair.fingerprint.clone(),
        cert,
        key,
        self_signed,
        pair,
    }))
}

/// A certificate and key as read from their files (each read once), known
/// to form a valid pair.
#[derive(Clone)]
#[cfg_attr(not(feature = "server"), allow(dead_code))]
pub(crate) struct Pair {
    pub(crate) cert_pem: Vec<u8>,
    pub(crate) key_pem: Vec<u8>,
    pub(crate) fingerprint: String,
}

impl Pair {
    pub(crate) fn read(cert: &Path, key: &Path) -> anyhow::Result<Pair> {
        let cert_pem =
            std::fs::read(cert).with_context(|| format!("cannot read certificate {}", cert.display()))?;
        let key_pem =
            std::fs::read(key).with_context(|| format!("cannot read private key {}", key.display()))?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("invalid certificate {}", cert.display()))?;
        let Some(first) = certs.first() else {
            bail!("no certificate in {}", cert.display());
        };
        let fingerprint = crate::wire::fingerprint(first);
        let private = PrivateKeyDer::from_pem_slice(&key_pem)
            .with_context(|| format!("cannot read private key {}", key.display()))?;
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .with_context(|| {
                format!(
                    "the certificate {} and key {} do not form a valid pair",
                    cert.display(),
                    key.display()
                )
            })?;
        Ok(Pair {
            cert_pem,
            key_pem,
            fingerprint,
        })
    }
}
