//! The listening side of `serve`: the API key, TLS (files reloaded when they
//! change, or a self-signed certificate made once), binding and graceful
//! shutdown.

use crate::config::{Config, Tls};
use crate::{certs as tls, secret as keys};
use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use salvo::conn::rustls::{Keycert, RustlsConfig};
use salvo::conn::tcp::TcpAcceptor;
use salvo::conn::{Acceptor, Listener, RustlsListener};
use salvo::fuse::FuseConfig;
use salvo::{Server, Service};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The API key: from `api_key_file`, else `AGENTSD_API_KEY`. With the
/// embedded default config, a key file is generated on first start.
pub fn load_key(cfg: &Config) -> anyhow::Result<String> {
    if let Some(path) = &cfg.server.api_key_file {
        // A key under the daemon's own state dir (the embedded default, the
        // demo) is made on first start; one elsewhere is the operator's to
        // provision with `agentsd gen-key`.
        if !path.exists() && path.starts_with(&cfg.server.state_dir) {
            keys::write_private(path, format!("{}\n", keys::generate()?).as_bytes(), false)?;
            tracing::info!("generated an API key in {}", path.display());
        }
        return keys::read_key_file(path);
    }
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

/// Certificate and key files to serve with, and the certificate's
/// fingerprint; `None` for plain HTTP.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub fingerprint: String,
    pub self_signed: bool,
}

pub fn tls_files(cfg: &Config) -> anyhow::Result<Option<TlsFiles>> {
    match &cfg.server.tls {
        Tls::Off => Ok(None),
        Tls::Files { cert, key } => Ok(Some(TlsFiles {
            fingerprint: tls::fingerprint_of_pem(cert)?,
            cert: cert.clone(),
            key: key.clone(),
            self_signed: false,
        })),
        Tls::SelfSigned => {
            let dir = cfg.server.state_dir.join("tls");
            let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !cert.exists() || !key.exists() {
                let (_, fp) = tls::write_self_signed(&dir, &tls::default_names(), true)?;
                tracing::info!(
                    "generated a self-signed certificate in {} (fingerprint {fp})",
                    dir.display()
                );
            }
            Ok(Some(TlsFiles {
                fingerprint: tls::fingerprint_of_pem(&cert)?,
                cert,
                key,
                self_signed: true,
            }))
        }
    }
}

/// Loads and checks a certificate and key pair for the listener.
fn rustls_config(cert: &Path, key: &Path) -> anyhow::Result<RustlsConfig> {
    // Build it once here for clear errors; the listener builds its own.
    server_config(cert, key)?;
    let cert_pem =
        std::fs::read(cert).with_context(|| format!("cannot read certificate {}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("cannot read private key {}", key.display()))?;
    Ok(RustlsConfig::new(Keycert::new().cert(cert_pem).key(key_pem))
        .alpn_protocols(vec![b"h2".to_vec(), b"http/1.1".to_vec()]))
}

fn server_config(cert: &Path, key: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("invalid certificate {}", cert.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read private key {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and key do not form a valid pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Time limits on connections: slow handshakes and headers are cut off,
/// and a connection with nothing moving for two minutes is closed (event
/// streams send a keep-alive every 15 s, so they never look idle).
fn fuse() -> FuseConfig {
    FuseConfig::default()
        .with_tls_handshake_timeout(Duration::from_secs(10))
        .with_http1_header_timeout(Duration::from_secs(10))
        .with_request_body_timeout(Duration::from_secs(30))
        .with_connection_idle_timeout(Duration::from_secs(120))
        .with_write_stall_timeout(Duration::from_secs(60))
}

/// Binds `addr` and serves until `shutdown` turns true. `bound` is called
/// with the address actually bound (the port, when it was 0).
pub async fn serve(
    addr: SocketAddr,
    tls: Option<&TlsFiles>,
    service: Service,
    shutdown: watch::Receiver<bool>,
    bound: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let listener = NoDelayListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    match tls {
        None => {
            let acceptor = listener
                .try_bind()
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            run(acceptor, service, shutdown, bound).await
        }
        Some(files) => {
            let initial = rustls_config(&files.cert, &files.key)?;
            let (tx, rx) = mpsc::channel(4);
            tx.send(initial).await.ok();
            watch_certificate(files, tx);
            let acceptor = RustlsListener::new(tokio_stream::wrappers::ReceiverStream::new(rx), listener)
                .try_bind()
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            run(acceptor, service, shutdown, bound).await
        }
    }
}

/// A listening socket with TCP_NODELAY set, which the connections it
/// accepts inherit. Without it, the last segment of a large response waits
/// for the client's delayed ACK (40 ms on Linux).
struct NoDelayListener(tokio::net::TcpListener);

impl NoDelayListener {
    fn bind(addr: SocketAddr) -> std::io::Result<NoDelayListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_nodelay(true)?;
        socket.bind(addr)?;
        Ok(NoDelayListener(socket.listen(1024)?))
    }
}

impl Listener for NoDelayListener {
    type Acceptor = TcpAcceptor;

    async fn try_bind(self) -> salvo::Result<TcpAcceptor> {
        Ok(self.0.try_into()?)
    }
}

async fn run<A: Acceptor + Send + 'static>(
    acceptor: A,
    service: Service,
    mut shutdown: watch::Receiver<bool>,
    bound: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let local = acceptor
        .holdings()
        .first()
        .and_then(|h| h.local_addr.clone().into_std())
        .context("the listener has no address")?;
    bound(local);
    let server = Server::new(acceptor).fuse_config(fuse());
    let handle = server.handle();
    tokio::spawn(async move {
        let _ = shutdown.wait_for(|down| *down).await;
        handle.stop_graceful(Some(Duration::from_secs(5)));
    });
    server.serve(service).await;
    Ok(())
}

/// Reloads the certificate when its files change; a pair that does not load
/// is reported and the previous one kept.
fn watch_certificate(files: &TlsFiles, tx: mpsc::Sender<RustlsConfig>) {
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let mut watchers = Vec::new();
    for f in [&files.cert, &files.key] {
        match crate::config::watch::watch(f, ev_tx.clone()) {
            Ok(w) => watchers.push(w),
            Err(e) => tracing::warn!(
                "cannot watch {} for changes ({e}); restart to load a new certificate",
                f.display()
            ),
        }
    }
    let (cert, key) = (files.cert.clone(), files.key.clone());
    tokio::spawn(async move {
        let _keep = watchers;
        while ev_rx.recv().await.is_some() {
            // Certificate and key are usually written one after the other.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while ev_rx.try_recv().is_ok() {}
            match rustls_config(&cert, &key) {
                Ok(c) => {
                    match tls::fingerprint_of_pem(&cert) {
                        Ok(fp) => {
                            tracing::info!("loaded the new certificate {} (fingerprint {fp})", cert.display())
                        }
                        Err(_) => tracing::info!("loaded the new certificate {}", cert.display()),
                    }
                    if tx.send(c).await.is_err() {
                        break;
                    }
                }
                Err(e) => tracing::error!("certificate not reloaded, keeping the previous one: {e:#}"),
            }
        }
    });
}
