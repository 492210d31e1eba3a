//! Certificates from an ACME server (`tls = { acme = ... }`): Let's
//! Encrypt, or a private one such as pebble.
//!
//! `rustls-acme` drives the orders (tls-alpn-01: the challenge is answered
//! on the API port itself, by the certificate resolver the listener uses);
//! this module gives it a cache under `state_dir/acme` (files 0600, written
//! on the blocking pool), runs its event stream on a task of its own, logs
//! each attempt once, and publishes the certificate being served (expiry,
//! serial) and the state of the orders for `/health` and `/metrics`. A
//! renewed certificate is swapped in the resolver: connections and event
//! streams already open keep theirs, new ones get the new one, and nothing
//! restarts. A failed order is retried with backoff (1 s doubling up to
//! about 18 h) while the last certificate keeps being served.

use crate::config::Acme;
use crate::host::CertInfo;
use anyhow::Context;
use futures_util::StreamExt;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls_acme::{AccountCache, AcmeConfig, CertCache, EventError, EventOk};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;

/// What `/health` and `/metrics` show of the ACME orders.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Orders {
    /// Orders failed in a row (0 once one succeeds).
    pub failures: u32,
    /// The last failure, while failing.
    pub last_error: Option<String>,
    /// When the next attempt is due, while failing.
    pub retry_at: Option<SystemTime>,
}

/// A running ACME client: the TLS config the listener serves with (its
/// resolver answers the challenges and holds the current certificate), and
/// what it reports.
pub struct Running {
    pub server_config: Arc<rustls::ServerConfig>,
    pub orders: watch::Receiver<Orders>,
}

/// The directory under the state dir where account and certificates are
/// cached.
pub fn cache_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("acme")
}

/// The cache file of `acme`'s certificate (its key, then the chain), as
/// `doctor` reads it.
pub fn cached_cert(state_dir: &Path, acme: &Acme) -> PathBuf {
    cache_dir(state_dir).join(Cache::name("cert", &acme.domains, &acme.directory))
}

/// Starts ordering (or loads the cached certificate) for `acme`; the
/// certificate being served is published on `cert`. Returns at once: until
/// a certificate is there, TLS handshakes other than the challenge fail.
pub fn start(
    acme: &Acme,
    state_dir: &Path,
    cert: watch::Sender<Option<CertInfo>>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Running> {
    let client = Arc::new(client_config(acme.ca.as_deref())?);
    let cache = Cache {
        dir: cache_dir(state_dir),
        cert: cert.clone(),
    };
    let mut state = AcmeConfig::new_with_client_config(&acme.domains, client)
        .contact(&acme.contact)
        .directory(&acme.directory)
        .cache(cache)
        .state();
    let mut server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(state.resolver());
    server_config.alpn_protocols = vec![
        b"h2".to_vec(),
        b"http/1.1".to_vec(),
        rustls_acme::acme::ACME_TLS_ALPN_NAME.to_vec(),
    ];
    let (orders_tx, orders) = watch::channel(Orders::default());
    let what = format!("{} from {}", acme.domains.join(", "), acme.directory);
    tracing::info!(
        "ACME: a certificate for {what} (tls-alpn-01 on the API port; cache {})",
        cache_dir(state_dir).display()
    );
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let event = tokio::select! {
                e = state.next() => e,
                _ = shutdown.wait_for(|down| *down) => break,
            };
            let Some(event) = event else { break };
            match event {
                Ok(EventOk::DeployedCachedCert) => {
                    tracing::info!("ACME: serving the cached certificate for {what}{}", expiry(&cert));
                }
                Ok(EventOk::DeployedNewCert) => {
                    failures = 0;
                    orders_tx.send_replace(Orders::default());
                    tracing::info!("ACME: obtained a new certificate for {what}; serving it now");
                }
                Ok(EventOk::CertCacheStore) => {
                    tracing::info!("ACME: certificate cached{}", expiry(&cert));
                }
                Ok(EventOk::AccountCacheStore) => {
                    tracing::info!("ACME: new account key cached");
                }
                Err(EventError::Order(e)) => {
                    failures += 1;
                    // rustls-acme waits 2^(n-1) s before attempt n+1, at
                    // most 2^16 s.
                    let wait = std::time::Duration::from_secs(1 << (failures - 1).min(16));
                    let serving = if cert.borrow().is_some() {
                        "the current certificate is still served"
                    } else {
                        "no certificate to serve yet"
                    };
                    tracing::warn!(
                        "ACME: order {failures} for {what} failed: {e}; {serving}; next attempt in {}",
                        humantime::format_duration(wait)
                    );
                    orders_tx.send_replace(Orders {
                        failures,
                        last_error: Some(e.to_string()),
                        retry_at: Some(SystemTime::now() + wait),
                    });
                }
                Err(e) => tracing::error!("ACME: {e}"),
            }
        }
    });
    Ok(Running {
        server_config: Arc::new(server_config),
        orders,
    })
}

fn expiry(cert: &watch::Sender<Option<CertInfo>>) -> String {
    match &*cert.borrow() {
        Some(c) => format!(
            " (serial {}, valid until {})",
            c.serial,
            humantime::format_rfc3339_seconds(c.not_after)
        ),
        None => String::new(),
    }
}

/// How the daemon talks to the ACME directory: the system's roots, and
/// `ca` beside them (a private ACME server).
fn client_config(ca: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder();
    let Some(ca) = ca else {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls_platform_verifier::Verifier::new(provider)
            .context("cannot load the system's certificate roots")?;
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth());
    };
    // A private directory: its CA only (as `curl --cacert` does).
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots
            .add(c)
            .with_context(|| format!("tls.acme.ca {}: not a usable CA certificate", ca.display()))?;
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// The certificates of a PEM file (`tls.acme.ca`).
pub fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read tls.acme.ca {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("tls.acme.ca {}: not PEM certificates", path.display()))?;
    if certs.is_empty() {
        anyhow::bail!("tls.acme.ca {}: no certificate in it", path.display());
    }
    Ok(certs)
}

/// Account key and certificates under `state_dir/acme`, each a file of
/// mode 0600 named after what it is for (the directory, the domains or
/// contacts), written whole (beside, then renamed) on the blocking pool.
struct Cache {
    dir: PathBuf,
    cert: watch::Sender<Option<CertInfo>>,
}

impl Cache {
    fn name(kind: &str, parts: &[String], directory: &str) -> String {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        for p in parts {
            h.update(p.as_bytes());
            h.update(&[0]);
        }
        h.update(directory.as_bytes());
        let digest = data_encoding::HEXLOWER.encode(&h.finish().as_ref()[..12]);
        format!("{kind}-{digest}.pem")
    }

    async fn read(&self, name: String) -> std::io::Result<Option<Vec<u8>>> {
        let path = self.dir.join(name);
        tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        })
        .await
        .map_err(std::io::Error::other)?
    }

    async fn write(&self, name: String, bytes: Vec<u8>) -> std::io::Result<()> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            crate::secret::write_private(&dir.join(&name), &bytes, true)
                .map_err(|e| std::io::Error::other(format!("{e:#}")))
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Publishes the certificate of a cache file (its key comes first).
    fn publish(&self, pem: &[u8]) {
        let first = CertificateDer::pem_slice_iter(pem).next().and_then(Result::ok);
        match first.as_ref().and_then(CertInfo::of) {
            Some(info) => {
                self.cert.send_replace(Some(info));
            }
            None => tracing::warn!("ACME: cannot read the expiry of the certificate being served"),
        }
    }
}

#[async_trait::async_trait]
impl CertCache for Cache {
    type EC = std::io::Error;
    async fn load_cert(&self, domains: &[String], directory: &str) -> Result<Option<Vec<u8>>, Self::EC> {
        let pem = self.read(Self::name("cert", domains, directory)).await?;
        if let Some(p) = &pem {
            // rustls-acme serves it unless it does not parse; published
            // then (it says so otherwise).
            self.publish(p);
        }
        Ok(pem)
    }
    async fn store_cert(&self, domains: &[String], directory: &str, cert: &[u8]) -> Result<(), Self::EC> {
        // Served already (rustls-acme deploys, then stores).
        self.publish(cert);
        self.write(Self::name("cert", domains, directory), cert.to_vec())
            .await
    }
}

#[async_trait::async_trait]
impl AccountCache for Cache {
    type EA = std::io::Error;
    async fn load_account(&self, contact: &[String], directory: &str) -> Result<Option<Vec<u8>>, Self::EA> {
        self.read(Self::name("account", contact, directory)).await
    }
    async fn store_account(
        &self,
        contact: &[String],
        directory: &str,
        account: &[u8],
    ) -> Result<(), Self::EA> {
        self.write(Self::name("account", contact, directory), account.to_vec())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_names_differ_by_kind_directory_and_names() {
        let d = ["a.example".to_string()];
        let n = Cache::name("cert", &d, "https://x/dir");
        assert!(n.starts_with("cert-") && n.ends_with(".pem"), "{n}");
        assert_ne!(n, Cache::name("account", &d, "https://x/dir"));
        assert_ne!(n, Cache::name("cert", &d, "https://y/dir"));
        assert_ne!(
            n,
            Cache::name("cert", &["b.example".to_string()], "https://x/dir")
        );
        // Not a prefix game: ["ab"] and ["a", "b"] differ.
        assert_ne!(
            Cache::name("cert", &["ab".to_string()], "d"),
            Cache::name("cert", &["a".to_string(), "b".to_string()], "d")
        );
    }

    #[tokio::test]
    async fn the_cache_writes_0600_files_and_reads_them_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (tx, _rx) = watch::channel(None);
        let cache = Cache {
            dir: dir.path().join("acme"),
            cert: tx,
        };
        let contact = ["mailto:a@b.example".to_string()];
        assert_eq!(cache.load_account(&contact, "d").await.unwrap(), None);
        cache.store_account(&contact, "d", b"key").await.unwrap();
        assert_eq!(
            cache.load_account(&contact, "d").await.unwrap().as_deref(),
            Some(&b"key"[..])
        );
        let file = dir
            .path()
            .join("acme")
            .join(Cache::name("account", &contact, "d"));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(dir.path().join("acme"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
    }
}
