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
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub fingerprint: String,
    pub self_signed: bool,
    pair: Pair,
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
struct Pair {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    fingerprint: String,
}

impl Pair {
    fn read(cert: &Path, key: &Path) -> anyhow::Result<Pair> {
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

    fn rustls(self) -> RustlsConfig {
        RustlsConfig::new(Keycert::new().cert(self.cert_pem).key(self.key_pem))
            .alpn_protocols(vec![b"h2".to_vec(), b"http/1.1".to_vec()])
    }
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

/// Binds `addr` now, so that a daemon that cannot listen says so and exits
/// before it starts anything.
pub fn bind(addr: SocketAddr) -> anyhow::Result<Bound> {
    let listener = NoDelayListener::bind(addr).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::AddrInUse => "address in use".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            std::io::ErrorKind::AddrNotAvailable => "address not available on this host".to_string(),
            _ => e.to_string(),
        };
        anyhow::anyhow!("cannot listen on {addr}: {why}")
    })?;
    let local = listener
        .0
        .local_addr()
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(Bound { listener, local })
}

/// A bound listening socket.
pub struct Bound {
    listener: NoDelayListener,
    pub local: SocketAddr,
}

/// Serves on `bound` until `shutdown` turns true.
pub async fn serve(
    bound: Bound,
    tls: Option<&TlsFiles>,
    service: Service,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let Bound { listener, local } = bound;
    match tls {
        None => {
            let acceptor = listener
                .try_bind()
                .await
                .with_context(|| format!("cannot listen on {local}"))?;
            run(acceptor, service, shutdown).await
        }
        Some(files) => {
            let (tx, rx) = mpsc::channel(4);
            tx.send(files.pair.clone().rustls()).await.ok();
            watch_certificate(files, tx);
            let acceptor = RustlsListener::new(tokio_stream::wrappers::ReceiverStream::new(rx), listener)
                .try_bind()
                .await
                .with_context(|| format!("cannot listen on {local}"))?;
            run(acceptor, service, shutdown).await
        }
    }
}

/// A listening socket with TCP_NODELAY set, which the connections it
/// accepts inherit. Without it, the last segment of a large response waits
/// for the client's delayed ACK (40 ms on Linux).
struct NoDelayListener(std::net::TcpListener);

impl NoDelayListener {
    /// Binds outside the runtime (before it starts); the socket joins the
    /// runtime when served.
    fn bind(addr: SocketAddr) -> std::io::Result<NoDelayListener> {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(NoDelayListener(socket.into()))
    }
}

impl Listener for NoDelayListener {
    type Acceptor = TcpAcceptor;

    async fn try_bind(self) -> salvo::Result<TcpAcceptor> {
        Ok(tokio::net::TcpListener::from_std(self.0)?.try_into()?)
    }
}

async fn run<A: Acceptor + Send + 'static>(
    acceptor: A,
    service: Service,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
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
            match Pair::read(&cert, &key) {
                Ok(pair) => {
                    tracing::info!(
                        "loaded the new certificate {} (fingerprint {})",
                        cert.display(),
                        pair.fingerprint
                    );
                    if tx.send(pair.rustls()).await.is_err() {
                        break;
                    }
                }
                Err(e) => tracing::error!("certificate not reloaded, keeping the previous one: {e:#}"),
            }
        }
    });
}
