//! The listening side of `serve`: binding, TLS (files reloaded when they
//! change) and graceful shutdown (`drain`: a stop that cuts no request
//! short).

mod drain;

pub use drain::Drain;

use crate::host::{CertInfo, Pair, TlsFiles};
use anyhow::Context;
use salvo::conn::rustls::{Keycert, RustlsAcceptor, RustlsConfig};
use salvo::conn::tcp::TcpAcceptor;
use salvo::conn::{Acceptor, Listener, RustlsListener};
use salvo::fuse::FuseConfig;
use salvo::{Server, Service};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The certificate and key as salvo's listener takes them.
fn rustls(pair: Pair) -> RustlsConfig {
    RustlsConfig::new(Keycert::new().cert(pair.cert_pem).key(pair.key_pem))
        .alpn_protocols(vec![b"h2".to_vec(), b"http/1.1".to_vec()])
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

impl Bound {
    /// A listening socket handed over (an in-place upgrade), or kept.
    pub fn adopt(fd: std::os::fd::OwnedFd) -> anyhow::Result<Bound> {
        let listener = std::net::TcpListener::from(fd);
        listener
            .set_nonblocking(true)
            .context("cannot use the listening socket handed over")?;
        let local = listener
            .local_addr()
            .context("the socket handed over is not a listening TCP socket")?;
        Ok(Bound {
            listener: NoDelayListener(listener),
            local,
        })
    }

    /// Another descriptor of the same socket: it stays open (and its
    /// backlog keeps connections waiting) after the server lets go of it.
    pub fn spare(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        Ok(self.listener.0.try_clone()?.into())
    }
}

/// How the API is served.
#[derive(Clone)]
pub enum Tls {
    /// Plain HTTP (loopback only).
    Off,
    /// Certificate and key files, reloaded when they change; what is
    /// served is published on the sender (expiry, serial).
    Files(TlsFiles, Arc<watch::Sender<Option<CertInfo>>>),
    /// A TLS config of its own: ACME's, whose resolver holds the
    /// certificate and answers the tls-alpn-01 challenges.
    Config(Arc<rustls::ServerConfig>),
}

/// Serves on `bound` until `shutdown` turns true; `service` runs
/// `drain`'s hoop first (see [`Drain::hoop`]).
pub async fn serve(
    bound: Bound,
    tls: Tls,
    service: Service,
    shutdown: watch::Receiver<bool>,
    drain: Drain,
) -> anyhow::Result<()> {
    let Bound { listener, local } = bound;
    let listener = Serving {
        socket: listener.0,
        stopping: drain.stopping(),
    };
    match tls {
        Tls::Off => {
            let acceptor = listener
                .try_bind()
                .await
                .with_context(|| format!("cannot listen on {local}"))?;
            run(acceptor, service, shutdown, drain).await
        }
        Tls::Files(files, served) => {
            let (tx, rx) = mpsc::channel(4);
            tx.send(rustls(files.pair.clone())).await.ok();
            watch_certificate(&files, tx, served);
            let acceptor = RustlsListener::new(tokio_stream::wrappers::ReceiverStream::new(rx), listener)
                .try_bind()
                .await
                .with_context(|| format!("cannot listen on {local}"))?;
            run(acceptor, service, shutdown, drain).await
        }
        Tls::Config(config) => {
            // One config for good: the certificate changes in its resolver
            // (salvo's own configs pick a certificate by name alone, which
            // cannot tell an ACME challenge from a client).
            let inner = listener
                .try_bind()
                .await
                .with_context(|| format!("cannot listen on {local}"))?;
            let tls = tokio_rustls::TlsAcceptor::from(config);
            let acceptor = RustlsAcceptor::new(
                inner,
                Arc::new(arc_swap::ArcSwapOption::from_pointee(tls)),
                tokio_util::sync::CancellationToken::new(),
            );
            run(acceptor, service, shutdown, drain).await
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

/// The listening socket as served: it accepts until `stopping`.
struct Serving {
    socket: std::net::TcpListener,
    stopping: tokio_util::sync::CancellationToken,
}

impl Listener for Serving {
    type Acceptor = Patient<TcpAcceptor>;

    async fn try_bind(self) -> salvo::Result<Patient<TcpAcceptor>> {
        let inner: TcpAcceptor = tokio::net::TcpListener::from_std(self.socket)?.try_into()?;
        Ok(Patient {
            inner,
            spare: crate::fds::Spare::new(),
            said: crate::fds::RateLimited::new(OUT_OF_FILES_SAID_EVERY),
            stopping: self.stopping,
        })
    }
}

/// How often running out of descriptors to accept with is logged at most.
const OUT_OF_FILES_SAID_EVERY: Duration = Duration::from_secs(10);
/// How long the listener waits before it tries again when out of
/// descriptors even after giving up its spare one.
const OUT_OF_FILES_RETRY: Duration = Duration::from_millis(100);

/// An acceptor that, out of descriptors, gives up its spare one to accept
/// the connection waiting (so that the operator gets in), waits a little
/// when even that is not enough, and says so at a bounded rate (salvo
/// would log each failure, a hundred lines a second). Once `stopping`,
/// it accepts nothing more: connections wait in the socket's backlog.
pub struct Patient<A> {
    inner: A,
    spare: crate::fds::Spare,
    said: crate::fds::RateLimited,
    stopping: tokio_util::sync::CancellationToken,
}

impl<A: Acceptor> Acceptor for Patient<A> {
    type Coupler = A::Coupler;
    type Stream = A::Stream;

    fn holdings(&self) -> &[salvo::conn::Holding] {
        self.inner.holdings()
    }

    async fn accept(
        &mut self,
        fuse_policy: Option<salvo::fuse::ArcFusePolicy>,
    ) -> std::io::Result<salvo::conn::Accepted<A::Coupler, A::Stream>> {
        loop {
            let accepted = tokio::select! {
                biased;
                // The stop: never again (salvo's loop ends on its own).
                () = self.stopping.cancelled() => std::future::pending().await,
                accepted = self.inner.accept(fuse_policy.clone()) => accepted,
            };
            match accepted {
                Ok(accepted) => {
                    self.spare.take();
                    return Ok(accepted);
                }
                Err(e) if crate::fds::is_out_of_files(&e) => {
                    if let Some(n) = self.said.note(std::time::Instant::now()) {
                        tracing::warn!(
                            "cannot accept a connection: {e} ({n} time{} since last said); agents wait in backoff until descriptors are free",
                            if n == 1 { "" } else { "s" }
                        );
                    }
                    // The connection is still waiting: accept it with the
                    // spare descriptor at once, or wait for one to free.
                    if !self.spare.release() {
                        tokio::time::sleep(OUT_OF_FILES_RETRY).await;
                        self.spare.take();
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

async fn run<A: Acceptor + Send + 'static>(
    acceptor: A,
    service: Service,
    mut shutdown: watch::Receiver<bool>,
    drain: Drain,
) -> anyhow::Result<()> {
    let server = Server::new(acceptor).fuse_policy(drain.policy(fuse()));
    let handle = server.handle();
    tokio::spawn(async move {
        let _ = shutdown.wait_for(|down| *down).await;
        // Nothing more accepted; connections accepted just before send
        // their requests; then hyper answers what it has read.
        drain.settle().await;
        drain.close_silent();
        handle.stop_graceful(Some(Duration::from_secs(5)));
    });
    server.serve(service).await;
    Ok(())
}

/// Reloads the certificate when its files change; a pair that does not load
/// is reported and the previous one kept.
fn watch_certificate(
    files: &TlsFiles,
    tx: mpsc::Sender<RustlsConfig>,
    served: Arc<watch::Sender<Option<CertInfo>>>,
) {
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
            // Files and parsing: on the blocking pool.
            let (c, k) = (cert.clone(), key.clone());
            let read = tokio::task::spawn_blocking(move || Pair::read(&c, &k))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("reading the certificate failed: {e}")));
            match read {
                Ok(pair) => {
                    tracing::info!(
                        "loaded the new certificate {} (fingerprint {})",
                        cert.display(),
                        pair.fingerprint
                    );
                    let info = pair.info.clone();
                    if tx.send(rustls(pair)).await.is_err() {
                        break;
                    }
                    served.send_replace(info);
                }
                Err(e) => tracing::error!("certificate not reloaded, keeping the previous one: {e:#}"),
            }
        }
    });
}
