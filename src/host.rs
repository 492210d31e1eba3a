//! The host side of a config: its API key and its TLS files. `config
//! check`, `install-unit` and `serve` check them the same way ([`check`]);
//! `serve` makes on first start what belongs under its state dir.

use crate::config::{Config, ENV_KEY_NAME, FILE_KEY_NAME, Tls};
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
        _ => {
            key_ring(cfg, read_key(cfg)?.as_deref())?;
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
        Tls::Acme(acme) => {
            if let Some(ca) = &acme.ca {
                crate::acme::read_certs(ca)?;
            }
        }
    }
    Ok(())
}

/// What `/health`, `/metrics` and `doctor` show of a certificate.
#[derive(Clone, Debug, PartialEq)]
pub struct CertInfo {
    pub not_after: std::time::SystemTime,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
}

impl CertInfo {
    /// `None` for DER that is not a certificate.
    pub fn of(der: &CertificateDer<'_>) -> Option<CertInfo> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let secs = cert.validity().not_after.timestamp();
        let not_after = if secs >= 0 {
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64)
        } else {
            std::time::UNIX_EPOCH
        };
        Some(CertInfo {
            not_after,
            serial: data_encoding::HEXUPPER.encode(cert.raw_serial()),
        })
    }
}

/// A key under the daemon's own state dir (the embedded default, the
/// demo) is made on first start; one elsewhere is the operator's to
/// provision with `agentsd gen-key`.
fn generated_key(cfg: &Config, path: &Path) -> bool {
    path.starts_with(&cfg.server.state_dir)
}

/// The daemon's own (admin) key: from `api_key_file`, else
/// `AGENTSD_API_KEY`; none is needed once `[keys]` has entries.
fn read_key(cfg: &Config) -> anyhow::Result<Option<String>> {
    if let Some(path) = &cfg.server.api_key_file {
        return keys::read_key_file(path).map(Some);
    }
    match std::env::var(ENV_KEY_NAME) {
        Ok(k) => {
            let k = k.trim().to_string();
            keys::check_len(&k, ENV_KEY_NAME)?;
            Ok(Some(k))
        }
        Err(_) if !cfg.keys.is_empty() => Ok(None),
        Err(_) => bail!(
            "no API key: set server.api_key_file in {}, or the AGENTSD_API_KEY environment variable, or add [keys.NAME] entries (agentsd gen-key makes a key)",
            cfg.display_path()
        ),
    }
}

/// The daemon's own key (see [`read_key`]). With the embedded default
/// config, a key file is generated on first start.
pub fn load_key(cfg: &Config) -> anyhow::Result<Option<String>> {
    if let Some(path) = &cfg.server.api_key_file
        && generated_key(cfg, path)
        && !path.exists()
    {
        keys::write_private(path, format!("{}\n", keys::generate()?).as_bytes(), false)?;
        tracing::info!("generated an API key in {}", path.display());
    }
    read_key(cfg)
}

/// Every key `cfg` accepts: its own key (`own`, an admin key named after
/// where it came from) and its `[keys.NAME]`.
pub fn key_ring(cfg: &Config, own: Option<&str>) -> anyhow::Result<keys::KeyRing> {
    let mut entries = Vec::with_capacity(cfg.keys.len() + 1);
    if let Some(k) = own {
        entries.push(keys::KeyEntry {
            name: if cfg.server.api_key_file.is_some() {
                FILE_KEY_NAME
            } else {
                ENV_KEY_NAME
            }
            .to_string(),
            role: crate::wire::Role::Admin,
            digest: keys::digest(k),
        });
    }
    entries.extend(cfg.keys.iter().cloned());
    keys::KeyRing::new(entries).map_err(|e| anyhow::anyhow!("{}: [keys]: {e}", cfg.display_path()))
}

fn self_signed_paths(cfg: &Config) -> (PathBuf, PathBuf) {
    let dir = cfg.server.state_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Certificate and key files to serve with, read and checked, and the
/// certificate's fingerprint; `None` for plain HTTP.
#[cfg_attr(not(feature = "server"), allow(dead_code))]
#[derive(Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub fingerprint: String,
    pub self_signed: bool,
    pub(crate) pair: Pair,
}

pub fn tls_files(cfg: &Config) -> anyhow::Result<Option<TlsFiles>> {
    let (cert, key, self_signed) = match &cfg.server.tls {
        // ACME: no files; see `crate::acme`.
        Tls::Off | Tls::Acme(_) => return Ok(None),
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
    /// Expiry and serial of the first certificate.
    pub(crate) info: Option<CertInfo>,
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
        let info = CertInfo::of(first);
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
            info,
        })
    }
}
