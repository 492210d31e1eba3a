//! `agentsd serve`: the daemon.

use crate::api::{self, AppState};
use crate::cli::ServeArgs;
use crate::config::{self, Config};
use crate::server;
use crate::store::Store;
use crate::supervisor::{self, process};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

/// Open files the daemon holds without agents when /proc cannot say.
const DEFAULT_OWN_FDS: u64 = 24;
/// Open files the daemon opens once its agents are being started: the
/// config watcher (inotify, its poll and wake-up) and the listener's spare.
const OPENED_AFTER: u64 = 4;
/// Threads for blocking work at most (tokio's default is 512).
const BLOCKING_THREADS: usize = 64;
/// Open files each running agent costs the daemon: its output pipe and its
/// log file.
const FDS_PER_AGENT: u64 = 2;

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    crate::memory::limit_arenas();
    init_tracing();
    let path = config::resolve_path(args.config.as_deref());
    let mut cfg = config::load(path.as_deref()).map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    if let Some(listen) = &args.listen {
        cfg.server.listen = config::parse_listen(listen)
            .with_context(|| format!("invalid --listen {listen:?}: expected IP:PORT"))?;
    }
    crate::host::check(&cfg)?;
    let limit = raise_nofile_limit();
    private_state_dir(&cfg.server.state_dir)?;
    // One daemon per state dir: a second would fight the first over its
    // agents, logs and database.
    let _lock = lock_state_dir(&cfg.server.state_dir)?;
    // Listening comes before anything is started: a daemon that cannot
    // listen exits at once with the reason, and never says it is ready.
    let bound = server::bind(cfg.server.listen)?;
    let key = crate::host::load_key(&cfg)?;
    let ring = crate::host::key_ring(&cfg, key.as_deref())?;
    drop(key);
    let tls = crate::host::tls_files(&cfg)?;
    if let Err(e) = create_dir(&cfg.server.log_dir, 0o750) {
        // Agents still run; their lines are counted as dropped.
        tracing::error!("{e:#}");
    }
    let (store, loaded) = Store::open(
        &cfg.server.state_dir,
        crate::store::Keep {
            history: cfg.server.history_keep,
            audit: cfg.server.audit_keep,
        },
    )?;
    let killed = process::kill_leftovers(&loaded.groups, &cfg.server.state_dir.display().to_string());
    if killed > 0 {
        tracing::warn!("killed {killed} processes left behind by an earlier run");
    }
    for (agent, _) in &loaded.groups {
        store.clear_group(agent);
    }
    // Descendants that leave their agent's process group (setsid, double
    // fork) are re-parented to the daemon, so that a stop finds them.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(
            "cannot become the child subreaper ({e}); processes that leave an agent's group are only found by their environment"
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Log reads, stats queries and agent preparation: a burst of event
        // streams must not leave hundreds of threads (and their memory).
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(Duration::from_secs(2))
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(cfg, path, store.clone(), loaded, ring, tls, bound, limit));
    // The captures have ended: the lines they queued are written before the
    // daemon goes (a stalled disk gets a few seconds, not forever).
    if !crate::logs::flush(Duration::from_secs(5)) {
        tracing::error!("the log writer did not finish within 5 s; the last lines queued may be lost");
    }
    store.flush();
    runtime.shutdown_timeout(Duration::from_secs(2));
    result.map(|_| ExitCode::SUCCESS)
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    cfg: Config,
    path: Option<PathBuf>,
    store: Store,
    loaded: crate::store::Loaded,
    ring: crate::secret::KeyRing,
    tls: Option<crate::host::TlsFiles>,
    bound: server::Bound,
    nofile: Option<u64>,
) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;

    // What the daemon holds without agents: what is open now (the database,
    // the listener, the runtime) and what opens below (the config watcher,
    // the listener's spare descriptor).
    let own_fds = tokio::task::spawn_blocking(crate::fds::in_use)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(DEFAULT_OWN_FDS)
        + OPENED_AFTER;
    let (limits_tx, limits) = watch::channel(fd_warning(&cfg, nofile, own_fds));
    let handle = supervisor::start(&cfg, store.clone(), &loaded.desired)
        .context("cannot start the supervisor's threads")?;
    // Memory freed by stopped agents and ended streams goes back to the
    // system once things are quiet.
    let trim = crate::memory::Trimmer::default();
    trim.spawn();
    if let Ok((_, mut events)) = handle.watch().await {
        let trim = trim.clone();
        tokio::spawn(async move {
            while !matches!(
                events.recv().await,
                Err(tokio::sync::broadcast::error::RecvError::Closed)
            ) {
                trim.freed();
            }
        });
    }
    let (config_error, config_error_rx) = watch::channel(None::<String>);
    let (shutdown_tx, shutdown) = watch::channel(false);
    log_keys(&ring);
    let (keys_tx, keys) = watch::channel(Arc::new(ring));
    // The API's state takes back the dashboard's sessions from a file: on
    // the blocking pool.
    let (server_cfg, has_tls, h, st, sd) = (
        cfg.server.clone(),
        tls.is_some(),
        handle.clone(),
        store.clone(),
        shutdown.clone(),
    );
    let state = Arc::new(
        tokio::task::spawn_blocking(move || {
            AppState::new(
                &server_cfg,
                has_tls,
                h,
                st,
                api::Channels {
                    keys,
                    config_error: config_error_rx,
                    limits,
                    shutdown: sd,
                },
                trim,
                Default::default(),
            )
        })
        .await
        .context("cannot make the API's state")?,
    );
    tokio::spawn(api::stats::keep_counts(state.clone()));
    let scheme = if tls.is_some() { "https" } else { "http" };
    let how = match &tls {
        Some(t) if t.self_signed => format!(
            " (self-signed certificate {}, SHA-256 fingerprint {})",
            t.cert.display(),
            t.fingerprint
        ),
        Some(t) => format!(" (certificate SHA-256 fingerprint {})", t.fingerprint),
        None => String::new(),
    };
    let key_hint = match &cfg.server.api_key_file {
        Some(p) => format!("API key in {}", p.display()),
        None if std::env::var_os(config::ENV_KEY_NAME).is_some() => "API key from AGENTSD_API_KEY".into(),
        None => format!("{} keys from [keys]", cfg.keys.len()),
    };
    let tls_cert = tls.as_ref().map(|t| t.cert.clone());
    let addr = bound.local;
    let sessions = (state.clone(), cfg.server.state_dir.join(api::SESSIONS_FILE));
    let mut server =
        tokio::spawn(async move { server::serve(bound, tls.as_ref(), api::service(state), shutdown).await });
    tracing::info!("API listening on {scheme}://{addr}");
    // A closed stdout must not stop the daemon: the banner is a courtesy.
    let _ = super::say!("agentsd listening on {scheme}://{addr}{how}; {key_hint}");
    if let (Some(t), Some(k)) = (&tls_cert, &cfg.server.api_key_file) {
        let _ = super::say!(
            "  try: curl --cacert {} -H \"Authorization: Bearer $(cat {})\" {scheme}://{addr}/agents",
            t.display(),
            k.display()
        );
    }
    {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
    // Under systemd (Type=notify): ready once the API accepts connections.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!("cannot notify systemd of readiness: {e}");
    }

    let (reload_tx, mut reload_rx) = mpsc::unbounded_channel();
    let _watcher = match &path {
        Some(p) => match config::watch::watch(p, reload_tx.clone()) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "cannot watch {} for changes ({e}); reload with SIGHUP",
                    p.display()
                );
                None
            }
        },
        None => None,
    };
    tracing::info!(
        "agentsd {} supervising {} agents from {}",
        env!("CARGO_PKG_VERSION"),
        cfg.agents.len(),
        cfg.display_path()
    );

    let mut current = cfg;
    let outcome = loop {
        tokio::select! {
            _ = sigterm.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
            _ = sighup.recv() => { let _ = reload_tx.send(()); }
            r = &mut server => {
                // The API went away on its own: nothing can control the
                // agents any more, so stop them and say why.
                break Err(match r {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => anyhow::anyhow!("the API server stopped"),
                    Err(e) => anyhow::anyhow!("the API server failed: {e}"),
                });
            }
            Some(()) = reload_rx.recv() => {
                // Editors write in several steps: let them finish.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while reload_rx.try_recv().is_ok() {}
                if let Some(p) = &path {
                    reload(p, &mut current, &handle, &config_error, &keys_tx, &sessions.0.sessions).await;
                    limits_tx.send_replace(fd_warning(&current, nofile, own_fds));
                }
            }
        }
    };
    tracing::info!("stopping every agent");
    let longest = current
        .agents
        .values()
        .map(|a| a.policy.stop_timeout)
        .max()
        .unwrap_or_default();
    // However long the agents' stop timeouts, systemd waits for them.
    let extend = longest + Duration::from_secs(30);
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::ExtendTimeoutUsec(extend.as_micros().try_into().unwrap_or(u32::MAX)),
    ]);
    shutdown_tx.send_replace(true);
    handle.shutdown().await;
    if !server.is_finished() {
        let _ = tokio::time::timeout(Duration::from_secs(6), server).await;
    }
    // The dashboard's sessions, for the next daemon (a restart or an
    // upgrade does not sign its pages out).
    let (state, path) = sessions;
    match tokio::task::spawn_blocking(move || state.sessions.save(&path)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot keep the dashboard's sessions: {e:#}"),
        Err(e) => tracing::warn!("cannot keep the dashboard's sessions: {e}"),
    }
    tracing::info!("all agents stopped; exiting");
    outcome
}

/// A warning when the config's agents would need more open files than
/// the daemon may have (said at start and on every reload, before it runs
/// out rather than after).
fn fd_warning(cfg: &Config, limit: Option<u64>, own: u64) -> Option<String> {
    let limit = limit?;
    let needed = cfg.agents.len() as u64 * FDS_PER_AGENT + own;
    let reserve = crate::fds::reserve(limit);
    (needed + reserve > limit).then(|| {
        let msg = format!(
            "{} agents need about {needed} open files ({own} for the daemon, {FDS_PER_AGENT} per agent) and {reserve} are kept free for the API, but the daemon may open {limit}: some will wait in backoff; raise LimitNOFILE",
            cfg.agents.len()
        );
        tracing::warn!("{msg}");
        msg
    })
}

/// Names the keys accepted (never a digest in full).
fn log_keys(ring: &crate::secret::KeyRing) {
    let names: Vec<String> = ring
        .entries()
        .iter()
        .map(|e| format!("{} ({})", e.name, e.role))
        .collect();
    tracing::info!("API keys: {}", names.join(", "));
}

async fn reload(
    path: &Path,
    current: &mut Config,
    handle: &supervisor::Handle,
    error: &watch::Sender<Option<String>>,
    keys: &watch::Sender<Arc<crate::secret::KeyRing>>,
    sessions: &api::Sessions,
) {
    // Keys are taken from the new config at once (a removed key is refused
    // from now on); the daemon's own key file is read again too. Files and
    // parsing: on the blocking pool.
    let (path, key_file) = (path.to_path_buf(), current.server.api_key_file.clone());
    let loaded = tokio::task::spawn_blocking(move || {
        config::load(Some(&path))
            .map_err(|e| e.to_string())
            .and_then(|mut new| {
                new.server.api_key_file = key_file;
                let own = crate::host::load_key(&new).map_err(|e| format!("{e:#}"))?;
                let ring = crate::host::key_ring(&new, own.as_deref()).map_err(|e| format!("{e:#}"))?;
                Ok((new, ring))
            })
    })
    .await
    .unwrap_or_else(|e| Err(format!("reading the config failed: {e}")));
    match loaded {
        Err(e) => {
            tracing::error!("config reload rejected, still running the previous config:\n{e}");
            error.send_replace(Some(e));
        }
        Ok((mut new, ring)) => {
            error.send_replace(None);
            keys.send_if_modified(|old| {
                let changed = **old != ring;
                if changed {
                    log_keys(&ring);
                    *old = Arc::new(ring);
                }
                changed
            });
            // A key that leaves takes its sessions with it for good: put
            // back later, it signs in again.
            sessions.end_without_key(&keys.borrow());
            // Where the daemon listens and keeps its state is fixed at start.
            if new.server != current.server {
                tracing::warn!("changes to [server] take effect when the daemon restarts");
            }
            new.server = current.server.clone();
            match handle.reload(new.clone()).await {
                Ok(r) => tracing::info!(
                    "config reloaded: {} added, {} removed, {} changed",
                    r.added.len(),
                    r.removed.len(),
                    r.changed.len()
                ),
                Err(e) => tracing::warn!("config reload not applied: {e}"),
            }
            *current = new;
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("AGENTSD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// systemd starts services with a soft limit of 1,024 open files; many
/// agents need more. Returns the limit in force.
fn raise_nofile_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let limits = getrlimit(Resource::RLIMIT_NOFILE);
    if let Ok((soft, _)) = limits {
        // Agents get the limit the daemon was started with (a select()
        // program breaks above 1,024).
        supervisor::keep_nofile_for_agents(soft);
    }
    match limits {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => Some(hard),
            Err(e) => {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {e}");
                Some(soft)
            }
        },
        Ok((soft, _)) => Some(soft),
        Err(e) => {
            tracing::warn!("cannot read the open-file limit: {e}");
            None
        }
    }
}

/// Holds the state dir for this daemon: a lock on a file in it, and an
/// abstract socket named after it, which no one can delete (so a second
/// daemon is refused even after the state dir was removed under the first).
struct StateLock {
    _file: nix::fcntl::Flock<std::fs::File>,
    _name: std::os::unix::net::UnixListener,
}

fn lock_state_dir(dir: &Path) -> anyhow::Result<StateLock> {
    use std::os::linux::net::SocketAddrExt;
    let taken = |why: String| {
        anyhow::anyhow!(
            "another agentsd is already running with state_dir {} ({why})",
            dir.display()
        )
    };
    let canonical = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_os_str().as_encoded_bytes());
    let hex: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(format!("agentsd-state-{hex}"))
        .context("cannot name the state dir's lock")?;
    let name = std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => taken("its lock is held".into()),
        _ => anyhow::anyhow!("cannot lock state_dir {}: {e}", dir.display()),
    })?;
    let path = dir.join("agentsd.lock");
    let file = std::os::unix::fs::OpenOptionsExt::mode(
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true),
        0o600,
    )
    .open(&path)
    .with_context(|| format!("cannot open {}", path.display()))?;
    let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| taken(e.to_string()))?;
    Ok(StateLock {
        _file: file,
        _name: name,
    })
}

/// The files of the state dir that only the daemon may read: the
/// database (audit, history), its journal, and the lock.
const PRIVATE_FILES: [&str; 4] = ["state.db", "state.db-wal", "state.db-shm", "agentsd.lock"];

/// Creates the state dir, or takes one that exists (as a package makes it,
/// 0755) and makes it the daemon's alone: the dir 0700 and its files 0600.
/// A state dir of another user is refused: the daemon would leave it
/// readable to that user, or could not use it at all.
fn private_state_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    create_dir(dir, 0o700)?;
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "state_dir {} belongs to uid {}, not to the daemon's user (uid {me}): give it to that user (chown), or choose another state_dir",
            dir.display(),
            meta.uid()
        );
    }
    let tighten = |path: &Path, mode: u32| -> anyhow::Result<()> {
        let m = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if m.file_type().is_symlink() || m.mode() & 0o777 == mode {
            return Ok(());
        }
        tracing::info!("{}: mode {:o} -> {mode:o}", path.display(), m.mode() & 0o777);
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot make {} private (mode {mode:o})", path.display()))
    };
    tighten(dir, 0o700)?;
    for f in PRIVATE_FILES {
        tighten(&dir.join(f), 0o600)?;
    }
    // SQLite gives its journal the database's mode: made private from the
    // start, the database never exists readable to others.
    let db = dir.join(PRIVATE_FILES[0]);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .append(true)
        .mode(0o600)
        .open(&db)
        .with_context(|| format!("cannot create {}", db.display()))?;
    Ok(())
}

fn create_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agents(n: usize) -> Config {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!("[agents.a{i:03}]\ncommand = [\"sleep\", \"1\"]\n"));
        }
        config::parse(&text, "test.toml", Path::new("/")).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_open_file_estimate_is_what_agents_hold_plus_the_reserve() {
        // Measured (debug build, agents that each wrote a line): the
        // daemon holds 21 without agents and 621 with 300.
        let msg = fd_warning(&agents(300), Some(256), 21).unwrap_or_default();
        assert!(msg.starts_with("300 agents need about 621 open files"), "{msg}");
        assert!(msg.contains("32 are kept free for the API"), "{msg}");
        // 621 + 128 kept fit in 1,024: no warning.
        assert_eq!(fd_warning(&agents(300), Some(1024), 21), None);
        assert!(fd_warning(&agents(300), Some(700), 21).is_some());
        assert_eq!(fd_warning(&agents(300), None, 21), None);
    }
}
