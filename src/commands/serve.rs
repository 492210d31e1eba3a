//! `agentsd serve`: the daemon.

use crate::api::{self, AppState};
use crate::cli::ServeArgs;
use crate::config::{self, Config};
use crate::server;
use crate::store::Store;
use crate::supervisor::{self, process};
use crate::upgrade;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

/// Open files the daemon holds without agents when /proc cannot say.
const DEFAULT_OWN_FDS: u64 = crate::fds::OWN_WITHOUT_AGENTS - OPENED_AFTER;
/// Open files the daemon opens once its agents are being started: the
/// config watcher (inotify, its poll and wake-up) and the listener's spare.
const OPENED_AFTER: u64 = 4;
/// Threads for blocking work at most (tokio's default is 512).
const BLOCKING_THREADS: usize = 64;

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // First: an in-place upgrade's handover (its descriptors are taken
    // before anything else opens one).
    let incoming = upgrade::incoming();
    crate::memory::limit_arenas();
    init_tracing();
    let incoming = incoming.context("cannot take over from the daemon's previous image")?;
    let path = config::resolve_path(args.config.as_deref());
    let mut cfg = config::load(path.as_deref()).map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    if let Some(listen) = &args.listen {
        cfg.server.listen = config::parse_listen(listen)
            .with_context(|| format!("invalid --listen {listen:?}: expected IP:PORT"))?;
    }
    crate::host::check(&cfg)?;
    let limit = raise_nofile_limit(incoming.as_ref().map(|i| i.agents_nofile));
    private_state_dir(&cfg.server.state_dir)?;
    // One daemon per state dir: a second would fight the first over its
    // agents, logs and database.
    let _lock = lock_state_dir(&cfg.server.state_dir)?;
    // Listening comes before anything is started: a daemon that cannot
    // listen exits at once with the reason, and never says it is ready.
    let bound = match &incoming {
        None => server::bind(cfg.server.listen)?,
        Some(i) => {
            let bound = server::Bound::adopt(
                i.listener
                    .try_clone()
                    .context("cannot take the listening socket")?,
            )?;
            if bound.local != cfg.server.listen && cfg.server.listen.port() != 0 {
                tracing::warn!(
                    "still listening on {} (handed over); listen = {} takes effect when the daemon restarts",
                    bound.local,
                    cfg.server.listen
                );
            }
            bound
        }
    };
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
    // What a daemon that died left behind is killed; agents handed over
    // in place are the daemon's own and go on.
    if incoming.is_none() {
        let killed = process::kill_leftovers(&loaded.groups, &cfg.server.state_dir.display().to_string());
        if killed > 0 {
            tracing::warn!("killed {killed} processes left behind by an earlier run");
        }
        for (agent, _) in &loaded.groups {
            store.clear_group(agent);
        }
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
    // Agents are forked by this thread, the process's first: it lives as
    // long as the daemon (their parent-death signal follows it) and is the
    // one that execs at an in-place upgrade. The daemon itself runs on
    // another.
    let (forker, fork_loop) = supervisor::Forker::new();
    let upgrades = Upgrades {
        check: upgrade::Check {
            exe: upgrade::own_path().unwrap_or_else(|| "/proc/self/exe".into()),
            config: path.clone(),
            listen: args.listen.clone(),
        },
        forker: forker.clone(),
        incoming,
    };
    let daemon = std::thread::Builder::new()
        .name("agentsd-serve".into())
        .spawn(move || {
            let result = runtime.block_on(serve(
                cfg,
                path,
                store.clone(),
                loaded,
                ring,
                tls,
                bound,
                limit,
                upgrades,
            ));
            // The captures have ended: the lines they queued are written
            // before the daemon goes (a stalled disk gets a few seconds,
            // not forever).
            if !crate::logs::flush(Duration::from_secs(5)) {
                tracing::error!(
                    "the log writer did not finish within 5 s; the last lines queued may be lost"
                );
            }
            store.flush();
            runtime.shutdown_timeout(Duration::from_secs(2));
            forker.quit();
            result
        })
        .context("cannot start the daemon's thread")?;
    fork_loop.run();
    let result = daemon
        .join()
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the daemon's thread panicked")));
    result.map(|_| ExitCode::SUCCESS)
}

/// `agentsd upgrade-check`: what this binary, as the next image of a
/// running daemon, would refuse: a handover format it cannot read, the
/// config, the host's files (key, certificate), the state database.
/// Prints `agentsd VERSION` when it would take over.
pub fn upgrade_check(args: crate::cli::UpgradeCheckArgs) -> anyhow::Result<ExitCode> {
    if args.handover_version > upgrade::VERSION {
        bail!(
            "the running daemon hands over in format {}, this agentsd reads formats up to {}",
            args.handover_version,
            upgrade::VERSION
        );
    }
    let mut cfg =
        config::load(args.config.as_deref()).map_err(|e| anyhow::anyhow!("invalid config:\n{e}"))?;
    if let Some(listen) = &args.listen {
        cfg.server.listen = config::parse_listen(listen)
            .with_context(|| format!("invalid --listen {listen:?}: expected IP:PORT"))?;
    }
    crate::host::check(&cfg)?;
    crate::store::check_schema(&cfg.server.state_dir)?;
    super::say!("agentsd {}", env!("CARGO_PKG_VERSION"))?;
    Ok(ExitCode::SUCCESS)
}

/// What an in-place upgrade needs: how to check the new binary, the fork
/// thread that execs it, and the handover that started this image.
struct Upgrades {
    check: upgrade::Check,
    forker: supervisor::Forker,
    incoming: Option<upgrade::Incoming>,
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
    mut upgrades: Upgrades,
) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut sigusr2 = signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?;
    let incoming = upgrades.incoming.take();
    let (started_at, upgraded_from) = match &incoming {
        Some(i) => (i.started_at, Some(i.from.clone())),
        None => (std::time::SystemTime::now(), None),
    };

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
    let handed = incoming.map(|i| i.handed);
    let taken_over = handed
        .as_ref()
        .map(|(a, _)| a.agents.iter().filter(|a| a.live.is_some()).count());
    let handle = supervisor::start(
        &cfg,
        store.clone(),
        &loaded.desired,
        upgrades.forker.clone(),
        handed,
    )
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
    // The certificate served (expiry, serial), for /health and /metrics.
    let (cert_tx, certificate) = watch::channel(tls.as_ref().and_then(|t| t.pair.info.clone()));
    let mut acme_orders = None;
    let served = match (&cfg.server.tls, &tls) {
        (config::Tls::Acme(acme), _) => {
            let running = crate::acme::start(acme, &cfg.server.state_dir, cert_tx, shutdown.clone())?;
            acme_orders = Some(running.orders);
            server::Tls::Config(running.server_config)
        }
        (_, Some(files)) => server::Tls::Files(files.clone(), Arc::new(cert_tx)),
        (_, None) => server::Tls::Off,
    };
    let has_tls = !matches!(served, server::Tls::Off);
    let upgraded = upgraded_from.is_some();
    let (upgrade_tx, mut upgrade_rx) = mpsc::channel(4);
    // Edits of the config over the API are made here, one at a time, by
    // the owner of the running config.
    let (edit_tx, mut edit_rx) = mpsc::channel(16);
    let edits = (cfg.server.api_edits && path.is_some()).then_some(edit_tx);
    // Many hosts: events and heartbeats over NATS, never in the way.
    let fleet = cfg.fleet.as_ref().map(|f| {
        let url = api_url(&cfg.server, has_tls, bound.local);
        tracing::info!(
            "fleet: publishing agentsd.{}.status and .heartbeat to {} (this daemon: {url})",
            f.host,
            f.nats
        );
        crate::fleet::start(f, handle.clone(), url)
    });
    log_keys(&ring);
    let (keys_tx, keys) = watch::channel(Arc::new(ring));
    // The API's state takes back the dashboard's sessions from a file: on
    // the blocking pool.
    let (server_cfg, h, st, sd) = (
        cfg.server.clone(),
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
                    upgrades: upgrade_tx,
                    edits,
                    fleet,
                    certificate,
                    acme: acme_orders,
                },
                trim,
                Default::default(),
            )
            .started(started_at, upgraded)
        })
        .await
        .context("cannot make the API's state")?,
    );
    tokio::spawn(api::stats::keep_counts(state.clone()));
    let scheme = if has_tls { "https" } else { "http" };
    let how = match &tls {
        Some(t) if t.self_signed => format!(
            " (self-signed certificate {}, SHA-256 fingerprint {})",
            t.cert.display(),
            t.fingerprint
        ),
        Some(t) => format!(" (certificate SHA-256 fingerprint {})", t.fingerprint),
        None if has_tls => " (certificate from ACME)".to_string(),
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
    // Kept for an in-place upgrade: the socket stays open (connections
    // wait in its backlog) while the API stops and the next image starts.
    let listener = bound.spare().context("cannot keep the listening socket")?;
    let serving = Serving {
        tls: served,
        state: state.clone(),
        shutdown,
    };
    let mut server = serving.start(bound);
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
    if let (Some(n), Some(from)) = (taken_over, &upgraded_from) {
        tracing::info!(
            "upgraded in place from agentsd {from} to {}: {n} running agents taken over",
            env!("CARGO_PKG_VERSION")
        );
    }
    // Under systemd (Type=notify): ready once the API accepts connections
    // (after an upgrade, the reload is over).
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
            _ = sigusr2.recv() => {
                let attempt = Attempt { upgrades: &upgrades, handle: &handle, store: &store, sessions: &sessions, listener: &listener, started_at };
                let result = attempt.check().await;
                audit_signal(&store, &result).await;
                if let Ok(to) = result {
                    server = attempt.hand_over(&to, &shutdown_tx, server, &serving).await;
                }
            }
            Some(req) = upgrade_rx.recv() => {
                let req: api::UpgradeRequest = req;
                let attempt = Attempt { upgrades: &upgrades, handle: &handle, store: &store, sessions: &sessions, listener: &listener, started_at };
                let result = attempt.check().await;
                let _ = req.reply.send(result.clone());
                if let Ok(to) = result {
                    server = attempt.hand_over(&to, &shutdown_tx, server, &serving).await;
                }
            }
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
                    let _ = reload(p, &mut current, &handle, &config_error, &keys_tx, &sessions.0.sessions).await;
                    limits_tx.send_replace(fd_warning(&current, nofile, own_fds));
                }
            }
            Some(req) = edit_rx.recv() => {
                let req: api::EditRequest = req;
                let Some(p) = &path else { continue };
                let answer = edit(p, &req).await;
                let answer = match answer {
                    Ok(applied) if applied.written() => {
                        // Applied now, not when the watcher sees the file.
                        let done = reload(p, &mut current, &handle, &config_error, &keys_tx, &sessions.0.sessions).await;
                        limits_tx.send_replace(fd_warning(&current, nofile, own_fds));
                        done.map(|()| applied).map_err(api::EditFailure::NotApplied)
                    }
                    other => other,
                };
                let _ = req.reply.send(answer);
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

/// The API as served: it stops for an upgrade and, should the handover
/// not happen, starts again on the same socket.
struct Serving {
    tls: server::Tls,
    state: Arc<AppState>,
    shutdown: watch::Receiver<bool>,
}

type ServerTask = tokio::task::JoinHandle<anyhow::Result<()>>;

impl Serving {
    fn start(&self, bound: server::Bound) -> ServerTask {
        let drain = server::Drain::new();
        let (tls, service, shutdown) = (
            self.tls.clone(),
            api::service(self.state.clone(), drain.hoop()),
            self.shutdown.clone(),
        );
        tokio::spawn(async move { server::serve(bound, tls, service, shutdown, drain).await })
    }
}

/// How long the API is given to answer the requests under way before an
/// upgrade (connections that come meanwhile wait in the socket's backlog).
const API_STOP_WAIT: Duration = Duration::from_secs(6);

/// One upgrade, asked for over the API or by SIGUSR2.
struct Attempt<'a> {
    upgrades: &'a Upgrades,
    handle: &'a supervisor::Handle,
    store: &'a Store,
    sessions: &'a (Arc<AppState>, PathBuf),
    listener: &'a std::os::fd::OwnedFd,
    started_at: std::time::SystemTime,
}

impl Attempt<'_> {
    /// Runs the new binary's check, then waits (up to 10 s) until no agent
    /// is starting or stopping: the new version, or why it is refused.
    async fn check(&self) -> Result<String, String> {
        let check = &self.upgrades.check;
        tracing::info!("upgrade asked for: checking {}", check.exe.display());
        let before = std::time::Instant::now();
        let mut child = check
            .command()
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", check.exe.display()))?;
        // Its exit is collected by the supervisor's reaper (which reaps
        // every child): it hands it over.
        let exit = self.handle.child_exit(child.id(), before).await;
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let read = tokio::task::spawn_blocking(move || {
            fn read_all(r: Option<impl std::io::Read>) -> Vec<u8> {
                let mut buf = Vec::new();
                if let Some(r) = r {
                    // What it says is read to the end (it must not block
                    // on a full pipe); a screenful is kept.
                    let _ = std::io::copy(&mut r.take(1 << 20), &mut buf);
                }
                buf.split_off(buf.len().saturating_sub(64 << 10))
            }
            std::thread::scope(|s| {
                let e = s.spawn(|| read_all(err));
                let o = read_all(out);
                (o, e.join().unwrap_or_default())
            })
        });
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let waited = tokio::time::timeout(upgrade::CHECK_LIMIT, async {
            let output = read.await.unwrap_or_default();
            (output, exit.await.ok())
        })
        .await;
        let result = match waited {
            Ok(((out, err), exit)) => check.verdict(exit, &out, &err),
            Err(_) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
                check.verdict(None, b"", b"")
            }
        };
        // While the API still serves: no agent on its way (a long stop
        // refuses the upgrade here, never pausing the API for it).
        let result = match result {
            Ok(v) => self.handle.when_quiet().await.map(|()| v),
            Err(why) => Err(why),
        };
        match &result {
            Ok(v) => tracing::info!("upgrade to agentsd {v}: the check passed"),
            Err(why) => tracing::error!("upgrade refused: {why}"),
        }
        result
    }

    /// Hands the agents over to the new image and execs it: returns only
    /// when the handover did not happen (the API serves again, the agents
    /// as they were). An exec that failed after the agents were taken out
    /// ends the daemon.
    async fn hand_over(
        &self,
        to: &str,
        shutdown: &watch::Sender<bool>,
        mut server: ServerTask,
        serving: &Serving,
    ) -> ServerTask {
        let t0 = std::time::Instant::now();
        let mut reloading = vec![sd_notify::NotifyState::Reloading];
        reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
        let _ = sd_notify::notify(&reloading);
        // The API stops accepting (the socket stays open: connections wait
        // in its backlog), its event streams end (clients resume by
        // cursor) and the requests under way are answered.
        shutdown.send_replace(true);
        if tokio::time::timeout(API_STOP_WAIT, &mut server).await.is_err() {
            tracing::warn!(
                "the API did not stop within {} s; its last connections are cut",
                API_STOP_WAIT.as_secs()
            );
            server.abort();
        }
        let taken = match self.handle.hand_over().await {
            Ok(t) => t,
            Err(why) => {
                tracing::error!("upgrade to agentsd {to} not made: {why}");
                shutdown.send_replace(false);
                let again = self
                    .listener
                    .try_clone()
                    .map_err(anyhow::Error::from)
                    .and_then(server::Bound::adopt);
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                return match again {
                    Ok(bound) => serving.start(bound),
                    Err(e) => tokio::spawn(async move {
                        Err(e.context("cannot listen again after an upgrade not made"))
                    }),
                };
            }
        };
        let (agents, outputs) = taken.finish().await;
        let live = agents.agents.iter().filter(|a| a.live.is_some()).count();
        let mut state = upgrade::State {
            version: upgrade::VERSION,
            from: env!("CARGO_PKG_VERSION").into(),
            started_at_ms: upgrade::epoch_ms(self.started_at),
            // Set to the descriptor kept open for the exec.
            listener: -1,
            agents_nofile: supervisor::agents_nofile(),
            agents,
        };
        let (store, (app, path)) = (self.store.clone(), self.sessions.clone());
        let to = to.to_string();
        let (forker, exe, listener) = (
            self.upgrades.forker.clone(),
            self.upgrades.check.exe.clone(),
            self.listener.try_clone(),
        );
        let failed = tokio::task::spawn_blocking(move || {
            // Every line read so far is in its log, what was asked for is
            // stored, and the dashboard's sessions are kept.
            if !crate::logs::flush(Duration::from_secs(5)) {
                tracing::error!(
                    "the log writer did not finish within 5 s; the last lines queued may be lost"
                );
            }
            store.flush();
            if let Err(e) = app.sessions.save(&path) {
                tracing::warn!("cannot keep the dashboard's sessions: {e:#}");
            }
            tracing::info!(
                "handing {live} running agents over to agentsd {to} ({} ms since asked)",
                t0.elapsed().as_millis()
            );
            match listener {
                Ok(l) => {
                    state.listener = std::os::fd::AsRawFd::as_raw_fd(&l);
                    upgrade::exec(&forker, &exe, &state, &l, &outputs)
                }
                Err(e) => anyhow::Error::from(e).context("cannot keep the listening socket"),
            }
        })
        .await;
        // Only when no image could be exec'd: the agents were taken out and
        // nothing supervises them; the daemon ends (and they with it).
        let why = match failed {
            Ok(e) => e,
            Err(e) => anyhow::anyhow!("the handover failed: {e}"),
        };
        tracing::error!("upgrade failed after the handover began: {why:#}");
        tokio::spawn(async move { Err(why) })
    }
}

/// An upgrade asked for by SIGUSR2 (no key): audited as the signal's.
async fn audit_signal(store: &Store, result: &Result<String, String>) {
    store
        .audit(crate::store::AuditRow {
            at: crate::wire::rfc3339(std::time::SystemTime::now()),
            key: "SIGUSR2".into(),
            role: crate::wire::Role::Admin,
            remote: "local".into(),
            method: "SIGNAL".into(),
            path: "/upgrade".into(),
            agent: None,
            status: if result.is_ok() { 202 } else { 409 },
            outcome: match result {
                Ok(_) => "accepted".into(),
                Err(_) => "upgrade_refused".into(),
            },
            detail: None,
        })
        .await;
}

/// A warning when the config's agents would need more open files than
/// the daemon may have (said at start and on every reload, before it runs
/// out rather than after).
fn fd_warning(cfg: &Config, limit: Option<u64>, own: u64) -> Option<String> {
    let limit = limit?;
    let stdins = cfg.agents.values().filter(|a| a.stdin_pipe).count() as u64;
    let needed = crate::fds::needed(cfg.agents.len() as u64, stdins, own);
    let reserve = crate::fds::reserve(limit);
    (needed + reserve > limit).then(|| {
        let msg = format!(
            "{} agents need about {needed} open files ({own} for the daemon, {} per agent) and {reserve} are kept free for the API, but the daemon may open {limit}: some will wait in backoff; raise LimitNOFILE",
            cfg.agents.len(),
            crate::fds::PER_AGENT
        );
        tracing::warn!("{msg}");
        msg
    })
}

/// Where this daemon's API is reached, as the fleet's heartbeat says it:
/// `public_url`, else the address it listens on (a wildcard address
/// named by the host's name).
fn api_url(server: &config::ServerConfig, tls: bool, local: std::net::SocketAddr) -> String {
    if let Some(u) = &server.public_url {
        return u.as_str().trim_end_matches('/').to_string();
    }
    let scheme = if tls { "https" } else { "http" };
    if local.ip().is_unspecified() {
        let name = nix::unistd::gethostname()
            .ok()
            .and_then(|n| n.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        return format!("{scheme}://{name}:{}", local.port());
    }
    format!("{scheme}://{local}")
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

/// An edit of an agent's table asked over the API, made to the file (on
/// the blocking pool): checked as `config check` checks a file, written
/// only if the file is still the one the edit was asked on.
async fn edit(path: &Path, req: &api::EditRequest) -> Result<config::edit::Applied, api::EditFailure> {
    let (path, id, change, wanted) = (
        path.to_path_buf(),
        req.id.clone(),
        req.change.clone(),
        req.if_match.clone(),
    );
    tokio::task::spawn_blocking(move || {
        let name = path.display().to_string();
        let abs = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
        let base = abs.parent().unwrap_or(Path::new("/")).to_path_buf();
        let check = |text: &str| {
            config::parse(text, &name, &base)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        config::edit::apply(&path, &id, change, &wanted, check)
    })
    .await
    .unwrap_or_else(|e| {
        Err(config::edit::ApplyError::Write(config::edit::WriteError::Io {
            path: String::new(),
            source: std::io::Error::other(e.to_string()),
        }))
    })
    .map_err(api::EditFailure::from)
}

/// Reads the config file again and applies it; why not, if it was not.
async fn reload(
    path: &Path,
    current: &mut Config,
    handle: &supervisor::Handle,
    error: &watch::Sender<Option<String>>,
    keys: &watch::Sender<Arc<crate::secret::KeyRing>>,
    sessions: &api::Sessions,
) -> Result<(), String> {
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
            error.send_replace(Some(e.clone()));
            Err(e)
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
            if new.fleet != current.fleet {
                tracing::warn!("changes to [fleet] take effect when the daemon restarts");
            }
            new.server = current.server.clone();
            new.fleet = current.fleet.clone();
            let done = match handle.reload(new.clone()).await {
                Ok(r) if r == Default::default() => {
                    tracing::info!("config reloaded: nothing changed");
                    Ok(())
                }
                Ok(r) => {
                    tracing::info!(
                        "config reloaded: {} added, {} removed, {} changed",
                        r.added.len(),
                        r.removed.len(),
                        r.changed.len()
                    );
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!("config reload not applied: {e}");
                    Err(e.to_string())
                }
            };
            *current = new;
            done
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
/// agents need more. Returns the limit in force. `handed`: the limit
/// agents get, as an earlier image handed it over (this one started with
/// the raised limit).
fn raise_nofile_limit(handed: Option<Option<u64>>) -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let limits = getrlimit(Resource::RLIMIT_NOFILE);
    match (handed, &limits) {
        (Some(Some(soft)), _) => supervisor::keep_nofile_for_agents(soft),
        // Agents get the limit the daemon was started with (a select()
        // program breaks above 1,024).
        (None, Ok((soft, _))) => supervisor::keep_nofile_for_agents(*soft),
        _ => {}
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
