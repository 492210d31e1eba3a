//! The supervisor: one task that owns every agent's state. Everything else
//! talks to it through a [`Handle`] (a message with a reply channel), and it
//! announces every status change on a broadcast channel. Process exits and
//! timers reach it as messages too; nothing polls.

pub mod lifecycle;
pub mod process;

use crate::config::{AgentConfig, Config, StatsConfig};
use crate::logs::{self, LogHub};
use crate::store::{HistoryRow, Store};
use crate::wire::{AgentSummary, Desired, LastExit, Status, StatusEvent, rfc3339};
use lifecycle::{Action, Exit, Lifecycle};
use nix::sys::signal::Signal;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Status events kept for slow subscribers before they see a lag.
const EVENT_BACKLOG: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no agent named {0:?}")]
    NotFound(String),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("the supervisor did not answer in time")]
    Busy,
}

/// How long a question to the supervisor may take.
const ASK_LIMIT: Duration = Duration::from_secs(30);

/// An agent as the detail view needs it.
pub struct AgentView {
    pub summary: AgentSummary,
    pub config: AgentConfig,
    pub hub: Arc<LogHub>,
}

/// An agent as the list needs it: its summary, and how to count its messages.
pub struct Listed {
    pub summary: AgentSummary,
    pub stats: Option<StatsConfig>,
}

/// What a config reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

type Reply<T> = oneshot::Sender<T>;

enum Op {
    Start,
    Stop,
    Restart,
}

enum Msg {
    List(Reply<Vec<Listed>>),
    Get(String, Reply<Option<AgentView>>),
    Control(String, Op, Reply<Result<AgentSummary, Error>>),
    Watch(Reply<(Vec<Listed>, broadcast::Receiver<StatusEvent>)>),
    Reload(Box<Config>, Reply<ReloadReport>),
    Shutdown(Reply<()>),
    Spawned {
        id: String,
        run: u64,
        result: Result<Box<process::Spawned>, String>,
    },
    Exited {
        id: String,
        run: u64,
        exit: Exit,
    },
    StartWindow {
        id: String,
        generation: u64,
    },
    Backoff {
        id: String,
        generation: u64,
    },
    StopTimeout {
        id: String,
        generation: u64,
    },
    GroupGone {
        id: String,
        run: u64,
    },
}

/// A cloneable way to talk to the supervisor.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Handle {
    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Msg) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| Error::ShuttingDown)?;
        // The supervisor answers in microseconds; if it does not, say so
        // rather than hang the caller.
        match tokio::time::timeout(ASK_LIMIT, rx).await {
            Ok(r) => r.map_err(|_| Error::ShuttingDown),
            Err(_) => Err(Error::Busy),
        }
    }

    pub async fn list(&self) -> Result<Vec<Listed>, Error> {
        self.ask(Msg::List).await
    }

    pub async fn get(&self, id: &str) -> Result<AgentView, Error> {
        self.ask(|r| Msg::Get(id.to_string(), r))
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// Starts the agent and waits (at most `wait`) until it is running or
    /// has settled otherwise; then returns its summary.
    pub async fn start(&self, id: &str, wait: Duration) -> Result<AgentSummary, Error> {
        self.control(id, Op::Start, wait).await
    }

    /// Stops the agent and waits (at most `wait`) until its group is gone.
    pub async fn stop(&self, id: &str, wait: Duration) -> Result<AgentSummary, Error> {
        self.control(id, Op::Stop, wait).await
    }

    pub async fn restart(&self, id: &str, wait: Duration) -> Result<AgentSummary, Error> {
        self.control(id, Op::Restart, wait).await
    }

    async fn control(&self, id: &str, op: Op, wait: Duration) -> Result<AgentSummary, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Control(id.to_string(), op, tx))
            .map_err(|_| Error::ShuttingDown)?;
        match tokio::time::timeout(wait, rx).await {
            Ok(reply) => reply.map_err(|_| Error::ShuttingDown)?,
            // Still going: answer with where it is now.
            Err(_) => self.get(id).await.map(|v| v.summary),
        }
    }

    /// Every summary now, and every status change after it.
    pub async fn watch(&self) -> Result<(Vec<Listed>, broadcast::Receiver<StatusEvent>), Error> {
        self.ask(Msg::Watch).await
    }

    pub async fn reload(&self, config: Config) -> Result<ReloadReport, Error> {
        self.ask(|r| Msg::Reload(Box::new(config), r)).await
    }

    /// Stops every agent gracefully; returns once all are down.
    pub async fn shutdown(&self) {
        let _ = self.ask(Msg::Shutdown).await;
    }
}

/// What a waiting start/stop/restart is waiting for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Settled,
    Stopped,
}

struct Agent {
    cfg: AgentConfig,
    life: Lifecycle,
    desired: Desired,
    /// Identifies the current process, so that a late exit of an earlier
    /// one is not mistaken for it.
    run: u64,
    pid: Option<u32>,
    started_at: Option<(SystemTime, Instant)>,
    stop_deadline: Option<Instant>,
    last_exit: Option<LastExit>,
    hub: Arc<LogHub>,
    waiters: Vec<(Wait, Reply<Result<AgentSummary, Error>>)>,
    /// Removed from the config: dropped once stopped.
    removing: bool,
    /// The run being spawned on the spawner thread, if any.
    spawning: Option<u64>,
}

impl Agent {
    fn summary(&self) -> AgentSummary {
        let status = self.life.status();
        let live = matches!(status, Status::Starting | Status::Running | Status::Stopping);
        let started = self.started_at.filter(|_| live);
        AgentSummary {
            id: self.cfg.id.clone(),
            status,
            desired: self.desired,
            pid: self.pid.filter(|_| live),
            started_at: started.map(|(t, _)| rfc3339(t)),
            uptime_s: started.map(|(_, i)| i.elapsed().as_secs()),
            restarts: self.life.restarts(),
            last_exit: self.last_exit.clone(),
            msg_count_24h: None,
            command: self.cfg.command.clone(),
            reason: self.life.reason().map(str::to_string),
            dropped_log_lines: self.hub.dropped(),
        }
    }

    fn settled(&self, wait: Wait) -> bool {
        let s = self.life.status();
        match wait {
            Wait::Stopped => s != Status::Stopping,
            // Running, or given up on: a crash loop in backoff is still
            // trying (the API answers with it when its wait runs out).
            Wait::Settled => {
                !matches!(s, Status::Starting | Status::Stopping | Status::Backoff)
                    && !self.life.start_queued()
                    && self.spawning.is_none()
            }
        }
    }
}

struct Supervisor {
    agents: BTreeMap<String, Agent>,
    tx: mpsc::UnboundedSender<Msg>,
    events: broadcast::Sender<StatusEvent>,
    store: Store,
    log_dir: PathBuf,
    log_bases: HashMap<String, u64>,
    next_run: u64,
    shutting_down: Vec<Reply<()>>,
    spawner: std::sync::mpsc::Sender<SpawnJob>,
    /// Spawn jobs sent and not yet answered.
    in_flight: usize,
}

struct SpawnJob {
    id: String,
    run: u64,
    cfg: AgentConfig,
}

/// The thread that forks and execs agents, so that a slow cwd, env_file or
/// user lookup never holds up the supervisor. It lives as long as the
/// daemon: each agent's PR_SET_PDEATHSIG is tied to the thread that forked
/// it, so a pool thread that retires when idle would take the agents along.
fn spawner(
    tx: mpsc::UnboundedSender<Msg>,
    instance: String,
) -> std::io::Result<std::sync::mpsc::Sender<SpawnJob>> {
    let (jobs, rx) = std::sync::mpsc::channel::<SpawnJob>();
    let rt = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("agentsd-spawn".into())
        .spawn(move || {
            // tokio's child reaping is registered with the runtime.
            let _rt = rt.enter();
            while let Ok(job) = rx.recv() {
                let result = process::spawn(&job.cfg, &instance).map(Box::new);
                let msg = Msg::Spawned {
                    id: job.id,
                    run: job.run,
                    result,
                };
                if tx.send(msg).is_err() {
                    break;
                }
            }
        })?;
    Ok(jobs)
}

/// Starts the supervisor for `config`. `desired` holds what operators asked
/// for in earlier runs; agents without an entry follow `autostart`.
pub fn start(
    config: &Config,
    store: Store,
    desired: &HashMap<String, Desired>,
    log_bases: HashMap<String, u64>,
) -> std::io::Result<Handle> {
    let (tx, rx) = mpsc::unbounded_channel();
    let instance = config.server.state_dir.display().to_string();
    let spawner = spawner(tx.clone(), instance)?;
    let (events, _) = broadcast::channel(EVENT_BACKLOG);
    let mut sup = Supervisor {
        agents: BTreeMap::new(),
        tx: tx.clone(),
        events,
        store,
        log_dir: config.server.log_dir.clone(),
        log_bases,
        next_run: 0,
        shutting_down: Vec::new(),
        spawner,
        in_flight: 0,
    };
    for cfg in config.agents.values() {
        let d = desired.get(&cfg.id).copied();
        sup.add(cfg.clone(), d);
    }
    tokio::spawn(sup.run(rx));
    Ok(Handle { tx })
}

impl Supervisor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Msg>) {
        while let Some(msg) = rx.recv().await {
            self.handle(msg);
            if !self.shutting_down.is_empty() && self.all_down() {
                for r in self.shutting_down.drain(..) {
                    let _ = r.send(());
                }
                break;
            }
        }
    }

    fn listed(&self) -> Vec<Listed> {
        self.agents
            .values()
            .map(|a| Listed {
                summary: a.summary(),
                stats: a.cfg.stats.clone(),
            })
            .collect()
    }

    fn all_down(&self) -> bool {
        self.in_flight == 0
            && self.agents.values().all(|a| {
                !matches!(
                    a.life.status(),
                    Status::Starting | Status::Running | Status::Stopping
                )
            })
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::List(r) => {
                let _ = r.send(self.listed());
            }
            Msg::Get(id, r) => {
                let _ = r.send(self.agents.get(&id).map(|a| AgentView {
                    summary: a.summary(),
                    config: a.cfg.clone(),
                    hub: a.hub.clone(),
                }));
            }
            Msg::Watch(r) => {
                let rx = self.events.subscribe();
                let _ = r.send((self.listed(), rx));
            }
            Msg::Control(id, op, r) => self.control(id, op, r),
            Msg::Reload(cfg, r) => {
                let _ = r.send(self.reload(*cfg));
            }
            Msg::Shutdown(r) => {
                self.shutting_down.push(r);
                let ids: Vec<_> = self.agents.keys().cloned().collect();
                for id in ids {
                    // Failed and exited agents keep their status; live ones
                    // are stopped, pending restarts are cancelled, and a
                    // stop in progress loses any start queued behind it.
                    self.act(&id, |l| match l.status() {
                        Status::Starting | Status::Running | Status::Backoff | Status::Stopping => l.stop(),
                        _ => vec![],
                    });
                }
            }
            Msg::Spawned { id, run, result } => self.spawned(&id, run, result),
            Msg::Exited { id, run, exit } => self.exited(&id, run, exit),
            Msg::StartWindow { id, generation } => {
                self.act(&id, |l| {
                    l.start_window_elapsed(generation);
                    vec![]
                });
            }
            Msg::Backoff { id, generation } => {
                if self.shutting_down.is_empty() {
                    self.act(&id, |l| l.backoff_elapsed(generation));
                }
            }
            Msg::StopTimeout { id, generation } => {
                if let Some(a) = self.agents.get(&id)
                    && a.life.stop_timed_out(generation)
                    && let Some(pid) = a.pid
                {
                    tracing::warn!(
                        agent = id.as_str(),
                        "did not stop within {}; sending SIGKILL to its process group",
                        humantime::format_duration(a.cfg.policy.stop_timeout)
                    );
                    process::signal_group(pid, Signal::SIGKILL);
                }
            }
            Msg::GroupGone { id, run } => {
                if self.agents.get(&id).is_some_and(|a| a.run == run) {
                    self.store.clear_group(&id);
                    self.act(&id, |l| l.group_gone());
                }
            }
        }
    }

    fn control(&mut self, id: String, op: Op, reply: Reply<Result<AgentSummary, Error>>) {
        let Some(agent) = self.agents.get_mut(&id).filter(|a| !a.removing) else {
            let _ = reply.send(Err(Error::NotFound(id)));
            return;
        };
        if !self.shutting_down.is_empty() && !matches!(op, Op::Stop) {
            let _ = reply.send(Err(Error::ShuttingDown));
            return;
        }
        let (desired, wait) = match op {
            Op::Start | Op::Restart => (Desired::Running, Wait::Settled),
            Op::Stop => (Desired::Stopped, Wait::Stopped),
        };
        agent.desired = desired;
        self.store.set_desired(&id, desired);
        agent.waiters.push((wait, reply));
        self.act(&id, |l| match op {
            Op::Start => l.start(),
            Op::Stop => l.stop(),
            Op::Restart => l.restart(),
        });
    }

    /// The spawner's answer for run `run`.
    fn spawned(&mut self, id: &str, run: u64, result: Result<Box<process::Spawned>, String>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let tx = self.tx.clone();
        let wanted = self.agents.get_mut(id).filter(|a| a.spawning == Some(run));
        let Some(a) = wanted else {
            // Stopped, removed or shut down while it was being spawned.
            if let Ok(p) = result {
                process::signal_group(p.pid, Signal::SIGKILL);
            }
            return;
        };
        a.spawning = None;
        let result = match result {
            Ok(p) => {
                let p = *p;
                a.pid = Some(p.pid);
                a.started_at = Some((SystemTime::now(), Instant::now()));
                self.store.set_group(id, p.pid as i32);
                tokio::spawn(logs::capture::capture(a.hub.clone(), p.stdout, p.stderr));
                let (id, mut child) = (id.to_string(), p.child);
                tokio::spawn(async move {
                    let exit = match child.wait().await {
                        Ok(st) => match (st.code(), st.signal()) {
                            (Some(c), _) => Exit::Code(c),
                            (None, Some(s)) => Exit::Signal(Signal::try_from(s).unwrap_or(Signal::SIGKILL)),
                            (None, None) => Exit::Code(-1),
                        },
                        Err(e) => {
                            tracing::error!(agent = id.as_str(), "cannot wait for the agent's process: {e}");
                            Exit::Code(-1)
                        }
                    };
                    let _ = tx.send(Msg::Exited { id, run, exit });
                });
                Ok(())
            }
            Err(reason) => {
                tracing::error!(agent = id, "cannot start: {reason}");
                a.pid = None;
                Err(reason)
            }
        };
        let policy = a.cfg.policy;
        self.act(id, |l| l.spawned(result, &policy));
    }

    fn exited(&mut self, id: &str, run: u64, exit: Exit) {
        let Some(a) = self.agents.get_mut(id).filter(|a| a.run == run) else {
            return;
        };
        let ran = a.started_at.map(|(_, i)| i.elapsed()).unwrap_or_default();
        a.last_exit = Some(LastExit {
            code: match exit {
                Exit::Code(c) => Some(c),
                Exit::Signal(_) => None,
            },
            signal: match exit {
                Exit::Signal(s) => Some(s.as_str().to_string()),
                Exit::Code(_) => None,
            },
            at: rfc3339(SystemTime::now()),
        });
        if a.life.status() != Status::Stopping {
            tracing::info!(
                agent = id,
                "exited ({exit}) after {}",
                humantime::format_duration(Duration::from_millis(ran.as_millis() as u64))
            );
        }
        let policy = a.cfg.policy;
        self.act(id, |l| l.exited(exit, ran, &policy));
    }

    /// Feeds the agent's lifecycle, carries out the actions it returns, then
    /// announces what changed and answers whoever waits.
    fn act(&mut self, id: &str, f: impl FnOnce(&mut Lifecycle) -> Vec<Action>) {
        let Some(a) = self.agents.get_mut(id) else { return };
        let mut actions = f(&mut a.life);
        while !actions.is_empty() {
            let mut next = Vec::new();
            for action in actions {
                next.extend(self.execute(id, action));
            }
            actions = next;
        }
        self.after(id);
    }

    fn execute(&mut self, id: &str, action: Action) -> Vec<Action> {
        let tx = self.tx.clone();
        let Some(a) = self.agents.get_mut(id) else {
            return vec![];
        };
        let generation = a.life.generation();
        match action {
            Action::Spawn => {
                if a.spawning.is_some() {
                    // Already on its way.
                    return vec![];
                }
                self.next_run += 1;
                a.run = self.next_run;
                let job = SpawnJob {
                    id: id.to_string(),
                    run: a.run,
                    cfg: a.cfg.clone(),
                };
                if self.spawner.send(job).is_err() {
                    let policy = a.cfg.policy;
                    return a.life.spawned(Err("the spawner thread is gone".into()), &policy);
                }
                a.spawning = Some(a.run);
                self.in_flight += 1;
                vec![]
            }
            Action::SignalStop => {
                if let Some(pid) = a.pid {
                    let policy = a.cfg.policy;
                    process::signal_group(pid, policy.stop_signal);
                    // A stopped (SIGSTOP) process only sees the signal once continued.
                    process::signal_group(pid, Signal::SIGCONT);
                    a.stop_deadline = Some(Instant::now() + policy.stop_timeout);
                    let id = id.to_string();
                    after(policy.stop_timeout, tx, Msg::StopTimeout { id, generation });
                }
                vec![]
            }
            Action::ArmStartWindow(d) => {
                after(
                    d,
                    tx,
                    Msg::StartWindow {
                        id: id.to_string(),
                        generation,
                    },
                );
                vec![]
            }
            Action::ArmBackoff(d) => {
                after(
                    d,
                    tx,
                    Msg::Backoff {
                        id: id.to_string(),
                        generation,
                    },
                );
                vec![]
            }
            Action::KillLeftovers => {
                if let Some(pid) = a.pid.take() {
                    process::signal_group(pid, Signal::SIGKILL);
                }
                vec![]
            }
            Action::AwaitGroupEmpty => {
                let (Some(pgid), run) = (a.pid, a.run) else {
                    return a.life.group_gone();
                };
                let deadline = a.stop_deadline.unwrap_or_else(Instant::now);
                let id = id.to_string();
                tokio::spawn(async move {
                    wait_group_gone(pgid, deadline).await;
                    let _ = tx.send(Msg::GroupGone { id, run });
                });
                vec![]
            }
        }
    }

    /// Announces the agent's status changes, answers its waiters, and drops
    /// it if it was removed and is now down.
    fn after(&mut self, id: &str) {
        let Some(a) = self.agents.get_mut(id) else { return };
        let now = SystemTime::now();
        for (old, new) in a.life.take_transitions() {
            let pid = a.pid;
            tracing::info!(agent = id, "{old} -> {new}");
            let exit = a.last_exit.as_ref().filter(|_| {
                matches!(old, Status::Starting | Status::Running | Status::Stopping)
                    && !matches!(new, Status::Starting | Status::Running | Status::Stopping)
            });
            self.store.history(HistoryRow {
                agent: id.to_string(),
                at: rfc3339(now),
                old_status: old,
                new_status: new,
                pid,
                exit_code: exit.and_then(|e| e.code),
                exit_signal: exit.and_then(|e| e.signal.clone()),
                reason: (new == Status::Failed)
                    .then(|| a.life.reason().map(str::to_string))
                    .flatten(),
            });
            let _ = self.events.send(StatusEvent {
                agent_id: id.to_string(),
                old_status: old,
                new_status: new,
                pid,
                at: rfc3339(now),
            });
        }
        if !matches!(
            a.life.status(),
            Status::Starting | Status::Running | Status::Stopping
        ) {
            a.pid = None;
        }
        // A spawn still under way that nobody wants any more: its process is
        // killed when the spawner reports it.
        if a.spawning.is_some()
            && (a.desired == Desired::Stopped || a.removing || !self.shutting_down.is_empty())
        {
            a.spawning = None;
        }
        let mut i = 0;
        while i < a.waiters.len() {
            if a.settled(a.waiters[i].0) {
                let (_, r) = a.waiters.swap_remove(i);
                let _ = r.send(Ok(a.summary()));
            } else {
                i += 1;
            }
        }
        if a.removing && a.life.status() != Status::Stopping {
            if let Some(a) = self.agents.remove(id) {
                // Should it come back, its log goes on where it ended, and
                // whoever follows this one is told it is gone.
                self.log_bases.insert(id.to_string(), a.hub.base());
                a.hub.close();
                for (_, r) in a.waiters {
                    let _ = r.send(Err(Error::NotFound(id.to_string())));
                }
            }
            tracing::info!(agent = id, "removed");
        }
    }

    fn add(&mut self, cfg: AgentConfig, desired: Option<Desired>) {
        let id = cfg.id.clone();
        let base = self.log_bases.get(&id).copied().unwrap_or(0);
        let hub = LogHub::open(&self.log_dir, &id, base, cfg.log, Some(self.store.clone()));
        let desired = desired.unwrap_or(if cfg.autostart {
            Desired::Running
        } else {
            Desired::Stopped
        });
        self.agents.insert(
            id.clone(),
            Agent {
                cfg,
                life: Lifecycle::default(),
                desired,
                run: 0,
                pid: None,
                started_at: None,
                stop_deadline: None,
                last_exit: None,
                hub,
                waiters: Vec::new(),
                removing: false,
                spawning: None,
            },
        );
        if desired == Desired::Running {
            self.act(&id, |l| l.start());
        }
    }

    fn reload(&mut self, config: Config) -> ReloadReport {
        let mut report = ReloadReport::default();
        let removed: Vec<String> = self
            .agents
            .keys()
            .filter(|id| !config.agents.contains_key(*id))
            .cloned()
            .collect();
        for id in removed {
            if let Some(a) = self.agents.get_mut(&id) {
                if a.removing {
                    continue;
                }
                a.removing = true;
                report.removed.push(id.clone());
                self.act(&id, |l| l.stop());
            }
        }
        self.log_dir = config.server.log_dir.clone();
        for (id, cfg) in config.agents {
            match self.agents.get_mut(&id) {
                None => {
                    report.added.push(id.clone());
                    self.add(cfg, None);
                }
                Some(a) => {
                    let was_removing = std::mem::replace(&mut a.removing, false);
                    if a.cfg == cfg && !was_removing {
                        continue;
                    }
                    report.changed.push(id.clone());
                    a.hub.set_policy(cfg.log);
                    a.cfg = cfg;
                    let active = matches!(
                        a.life.status(),
                        Status::Starting | Status::Running | Status::Backoff | Status::Stopping
                    );
                    if active && a.desired == Desired::Running {
                        self.act(&id, |l| l.restart());
                    }
                }
            }
        }
        report
    }
}

/// Sends `msg` after `d`.
fn after(d: Duration, tx: mpsc::UnboundedSender<Msg>, msg: Msg) {
    tokio::spawn(async move {
        tokio::time::sleep(d).await;
        let _ = tx.send(msg);
    });
}

/// Waits until no process of the group is alive; past `deadline` it
/// SIGKILLs the group. The group has no event to wait on once its leader is
/// reaped, so this checks with a growing interval, only during a stop.
async fn wait_group_gone(pgid: u32, deadline: Instant) {
    let mut interval = Duration::from_millis(1);
    let mut killed = false;
    while process::group_alive(pgid) {
        if !killed && Instant::now() >= deadline {
            tracing::warn!("process group {pgid} outlived its stop timeout; sending SIGKILL");
            process::signal_group(pgid, Signal::SIGKILL);
            killed = true;
        }
        let until_deadline = deadline.saturating_duration_since(Instant::now());
        let sleep = if killed {
            interval
        } else {
            interval.min(until_deadline.max(Duration::from_millis(1)))
        };
        tokio::time::sleep(sleep).await;
        interval = (interval * 2).min(Duration::from_millis(50));
    }
}
