//! The event loop that owns every agent: it feeds each agent's
//! [`Lifecycle`] what happened, carries out the actions it returns, and
//! announces the changes.

use super::cgroup::Cgroups;
use super::lifecycle::{Action, Exit, Lifecycle, SpawnError};
use super::process::{self, Member, Scan, ScanRequest};
use super::spawn::{self, Forked, Prepared};
use super::tree;
use super::{AgentView, ControlReply, Error, Event, Listed, Msg, ReloadReport, Reply};
use crate::config::{AgentConfig, Config};
use crate::logs::{LogHub, capture};
use crate::store::{HistoryRow, Store};
use crate::wire::{
    AgentSummary, Desired, LastExit, Op, RemovedEvent, Resources, ResourcesEvent, Status, StatusEvent,
    rfc3339,
};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{broadcast, mpsc};

/// Status events kept for slow subscribers before they see a lag.
const EVENT_BACKLOG: usize = 4096;
/// After SIGKILL, how long processes may take to go before the stop gives
/// up on them (another user's process, one stuck in the kernel).
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Spawns under way at once (prepared or forking): thousands of agents
/// starting together are prepared only as fast as they can be forked, so
/// what waits costs an entry in a queue, not a prepared environment.
const SPAWN_SLOTS: usize = 32;
/// An exit reaped before its spawn was reported is kept this long.
const UNCLAIMED_KEEP: Duration = Duration::from_secs(10);

/// What a waiting start/stop/restart is waiting for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Settled,
    Stopped,
}

struct Waiter {
    wait: Wait,
    /// What the request asked for: a later request for the opposite
    /// overtakes it.
    want: Desired,
    reply: Reply<Result<AgentSummary, Error>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    /// Waiting for one of the spawn slots.
    Queued,
    /// Being prepared on the blocking pool: can be dropped.
    Prepare,
    /// Handed to a fork thread: its process will exist.
    Fork,
}

/// The agent's main process.
struct Proc {
    pid: u32,
    started: (SystemTime, Instant),
}

/// A stop in progress.
#[derive(Default)]
struct Stopping {
    /// Processes that left the group and have had the stop signal (pid,
    /// start): each gets it once.
    signalled: std::collections::HashSet<(u32, u64)>,
    /// The stop timeout passed: everything gets SIGKILL.
    killed: bool,
    /// SIGKILL's grace passed too: whatever is left is given up on.
    give_up: bool,
}

struct Agent {
    cfg: AgentConfig,
    life: Lifecycle,
    desired: Desired,
    /// Identifies the current spawn, so that a late answer for an earlier
    /// one is not mistaken for it.
    run: u64,
    phase: Option<Phase>,
    proc: Option<Proc>,
    /// The process group of the current run, kept until the agent is down.
    pgid: Option<u32>,
    capture: Option<capture::Capture>,
    stopping: Option<Stopping>,
    /// The group of a run that ended on its own: whatever of it is left
    /// (also outside the group) is killed by the next scan.
    leftovers: Option<u32>,
    last_exit: Option<LastExit>,
    /// As of the last sample, while it runs.
    resources: Option<Resources>,
    cpu: CpuAccount,
    hub: Arc<LogHub>,
    waiters: Vec<Waiter>,
    /// Removed from the config: dropped once stopped.
    removing: bool,
    /// Dropped log lines as the last summary event said.
    announced_dropped: u64,
}

impl Agent {
    fn summary(&self) -> AgentSummary {
        let status = self.life.status();
        let proc = self.proc.as_ref().filter(|_| status.is_live());
        AgentSummary {
            id: self.cfg.id.clone(),
            status,
            desired: self.desired,
            pid: proc.map(|p| p.pid),
            started_at: proc.map(|p| rfc3339(p.started.0)),
            uptime_s: proc.map(|p| p.started.1.elapsed().as_secs()),
            restarts: self.life.restarts(),
            last_exit: self.last_exit.clone(),
            msg_count_24h: None,
            command: self.cfg.command.clone(),
            reason: self.life.reason().map(str::to_string),
            dropped_log_lines: self.hub.dropped(),
            resources: self.resources.filter(|_| status.is_live()),
        }
    }

    fn listed(&self) -> Listed {
        Listed {
            summary: self.summary(),
            stats: self.cfg.stats.clone(),
            cpu_seconds: self.cpu.total as f64 / process::ticks_per_second(),
            log_lines: self.hub.lines(),
        }
    }

    fn settled(&self, wait: Wait) -> bool {
        let s = self.life.status();
        match wait {
            Wait::Stopped => !matches!(s, Status::Stopping | Status::Starting),
            // Running, or given up on: a crash loop in backoff is still
            // trying (the API answers with it when its wait runs out).
            Wait::Settled => {
                !matches!(s, Status::Starting | Status::Stopping | Status::Backoff)
                    && !self.life.start_queued()
                    && !self.life.spawning()
            }
        }
    }
}

pub(super) struct Supervisor {
    /// Boxed: a B-tree node holds 11 entries, most of them empty when
    /// agents are added in order, and an empty slot for an `Agent` costs
    /// as much as an agent.
    agents: BTreeMap<String, Box<Agent>>,
    tx: mpsc::UnboundedSender<Msg>,
    events: broadcast::Sender<Event>,
    store: Store,
    log_dir: Arc<std::path::Path>,
    log_bases: HashMap<String, u64>,
    next_run: u64,
    shutting_down: Vec<Reply<()>>,
    instance: Arc<str>,
    base_env: Arc<Vec<(OsString, OsString)>>,
    forker: std::sync::mpsc::Sender<spawn::Job>,
    /// Jobs with the fork threads, not answered yet.
    forking: usize,
    /// Spawns holding a slot (being prepared or forked).
    spawning: usize,
    /// Agents waiting for a spawn slot.
    spawn_queue: std::collections::VecDeque<String>,
    /// The live agents' main processes.
    leaders: HashMap<u32, String>,
    /// Exits reaped before the spawn that made them was reported.
    unclaimed: HashMap<u32, (Exit, Instant)>,
    /// Children that failed before their exec, not reaped yet: their exit
    /// is dropped when it comes (the pid cannot be reused before).
    failed_children: std::collections::HashSet<u32>,
    scanner: std::sync::mpsc::Sender<ScanRequest>,
    scan_in_flight: bool,
    scan_wanted: bool,
    /// The next scan is also a resource sample.
    sample_wanted: bool,
    sample_interval: Duration,
    /// A cgroup per agent, where the daemon can have them.
    cgroups: Option<Arc<Cgroups>>,
    /// Without cgroups: whose each process was when a scan last saw it
    /// (pid -> its start, the agent), for processes the daemon adopts.
    lineage: HashMap<u32, (u64, String)>,
    /// The last scan at shutdown is wanted, and whether it was done.
    sweep_wanted: bool,
    swept: bool,
    /// Whether exits are collected yet: from the first fork on.
    reaping: bool,
    /// What every agent's log is dropping (shared with the API).
    drops: Arc<crate::logs::Drops>,
}

/// Exits are collected (SIGCHLD, then `waitpid` of every child) from the
/// first fork on, listening before it: until then no child of the process
/// is the supervisor's (orphans are only adopted from agents), so it waits
/// for none.
fn listen_for_exits(listening: &mut bool, tx: &mpsc::UnboundedSender<Msg>) {
    if std::mem::replace(listening, true) {
        return;
    }
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(mut sigchld) => {
            let tx = tx.clone();
            tokio::spawn(async move {
                while sigchld.recv().await.is_some() {
                    if tx.send(Msg::ChildSignal).is_err() {
                        break;
                    }
                }
            });
        }
        Err(e) => tracing::error!("cannot handle SIGCHLD ({e}); agent exits will go unnoticed"),
    }
}

impl Supervisor {
    pub(super) fn new(
        config: &Config,
        store: Store,
        log_bases: HashMap<String, u64>,
        tx: mpsc::UnboundedSender<Msg>,
    ) -> std::io::Result<Supervisor> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
        let forker = spawn::fork_threads(threads)?;
        let scan_tx = tx.clone();
        let scanner = process::scanner(move |found, sample, everything| {
            scan_tx
                .send(Msg::Scanned {
                    found,
                    sample,
                    everything,
                })
                .is_ok()
        })?;
        let instance = config.server.state_dir.display().to_string();
        let cgroups = match config.server.cgroups {
            crate::config::Cgroups::Off => None,
            crate::config::Cgroups::Auto => match Cgroups::discover(&instance) {
                Ok(c) => Some(Arc::new(c)),
                Err(why) => {
                    tracing::info!(
                        "agents get no cgroup ({why}): their processes are tracked by process group and as the daemon's adopted children"
                    );
                    None
                }
            },
        };
        if let Some(c) = &cgroups {
            tracing::info!(
                "each agent runs in a cgroup of its own under {}",
                c.root().display()
            );
        }
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        Ok(Supervisor {
            agents: BTreeMap::new(),
            tx,
            events,
            store,
            log_dir: config.server.log_dir.as_path().into(),
            log_bases,
            next_run: 0,
            shutting_down: Vec::new(),
            instance: instance.into(),
            base_env: spawn::base_env(),
            forker,
            forking: 0,
            spawning: 0,
            spawn_queue: Default::default(),
            leaders: HashMap::new(),
            unclaimed: HashMap::new(),
            failed_children: Default::default(),
            scanner,
            scan_in_flight: false,
            scan_wanted: false,
            sample_wanted: false,
            sample_interval: config.server.sample_interval,
            cgroups,
            lineage: HashMap::new(),
            sweep_wanted: false,
            swept: false,
            reaping: false,
            drops: Default::default(),
        })
    }

    /// What every agent's log is dropping: the API reads it as it is.
    pub(super) fn drops(&self) -> Arc<crate::logs::Drops> {
        self.drops.clone()
    }

    /// How agents' processes are tracked, as `/health` says it.
    pub(super) fn tracking(&self) -> Arc<str> {
        match &self.cgroups {
            Some(c) => format!("cgroup {}", c.root().display()).into(),
            None => "process-group+subreaper".into(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut requests: mpsc::Receiver<Msg>,
        desired: HashMap<String, Desired>,
        agents: Vec<AgentConfig>,
    ) {
        // One sampler for every agent: a tick asks for one scan of the
        // process table.
        if !self.sample_interval.is_zero() {
            let (tx, every) = (self.tx.clone(), self.sample_interval);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if tx.send(Msg::SampleTick).is_err() {
                        break;
                    }
                }
            });
        }
        // A choice stored for an agent the config no longer has (removed
        // while the daemon was down) is forgotten, as on a reload.
        for id in desired.keys().filter(|id| !agents.iter().any(|a| &a.id == *id)) {
            self.store.forget_desired(id);
        }
        for cfg in agents {
            let d = desired.get(&cfg.id).copied();
            self.add(cfg, d);
        }
        loop {
            let msg = tokio::select! {
                // What its own helpers report first: exits, spawns and
                // timers make progress (and room) for what is asked.
                biased;
                Some(msg) = rx.recv() => msg,
                Some(msg) = requests.recv() => msg,
                else => break,
            };
            self.handle(msg);
            if !self.shutting_down.is_empty() && self.all_down() {
                // Last, whatever is left below the daemon (a process no
                // agent could be told to own) is killed: none outlives it.
                if !self.swept {
                    if !self.sweep_wanted {
                        self.sweep_wanted = true;
                        self.scan();
                    }
                    continue;
                }
                if let Some(c) = self.cgroups.clone() {
                    let _ = tokio::task::spawn_blocking(move || c.remove_all()).await;
                }
                for r in self.shutting_down.drain(..) {
                    let _ = r.send(());
                }
                break;
            }
        }
    }

    fn listed(&self) -> Vec<Listed> {
        self.agents.values().map(|a| a.listed()).collect()
    }

    fn all_down(&self) -> bool {
        self.forking == 0 && self.agents.values().all(|a| !a.life.status().is_live())
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
            Msg::Changed(id) => {
                if let Some(a) = self.agents.get(&id) {
                    let _ = self.events.send(Event::Summary(Box::new(a.listed())));
                }
            }
            Msg::Subscribe(r) => {
                let _ = r.send(self.events.subscribe());
            }
            Msg::Page { after, limit, reply } => {
                use std::ops::Bound::{Excluded, Unbounded};
                let from = after.map_or(Unbounded, Excluded);
                let page = self
                    .agents
                    .range::<String, _>((from, Unbounded))
                    .take(limit)
                    .map(|(_, a)| a.listed())
                    .collect();
                let _ = reply.send(page);
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
            Msg::Prepared { id, run, result } => self.prepared(&id, run, result),
            Msg::Spawned { id, run, result } => self.spawned(&id, run, result),
            Msg::ChildSignal => self.reap(),
            Msg::SampleTick => {
                self.sample_wanted = true;
                self.scan();
            }
            Msg::Scanned {
                found,
                sample,
                everything,
            } => self.scanned(found, sample, everything),
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
            Msg::StopTimeout { id, generation } => self.stop_timeout(&id, generation),
            Msg::KillGrace { id, generation } => {
                if let Some(a) = self.agents.get_mut(&id)
                    && a.life.stop_timed_out(generation)
                    && let Some(s) = a.stopping.as_mut()
                {
                    s.give_up = true;
                    self.scan();
                }
            }
        }
    }

    fn control(&mut self, id: String, op: Op, reply: ControlReply) {
        let Some(agent) = self.agents.get_mut(&id).filter(|a| !a.removing) else {
            let _ = reply.accepted.send(Err(Error::NotFound(id)));
            return;
        };
        if !self.shutting_down.is_empty() && op != Op::Stop {
            let _ = reply.accepted.send(Err(Error::ShuttingDown));
            return;
        }
        let (want, wait) = match op {
            Op::Start | Op::Restart => (Desired::Running, Wait::Settled),
            Op::Stop => (Desired::Stopped, Wait::Stopped),
        };
        // Whoever waits for the opposite has been overtaken: say so, rather
        // than answer later with a state that reads like success.
        let overtaken = match want {
            Desired::Stopped => "stopped by a later request",
            Desired::Running => "started by a later request",
        };
        let (lost, kept) = std::mem::take(&mut agent.waiters)
            .into_iter()
            .partition::<Vec<_>, _>(|w| w.want != want);
        agent.waiters = kept;
        for w in lost {
            let _ = w.reply.send(Err(Error::Conflict(overtaken.into())));
        }
        agent.desired = want;
        let _ = reply.accepted.send(Ok(self.store.set_desired(&id, want)));
        agent.waiters.push(Waiter {
            wait,
            want,
            reply: reply.settled,
        });
        self.act(&id, |l| match op {
            Op::Start => l.start(),
            Op::Stop => l.stop(),
            Op::Restart => l.restart(),
        });
    }

    fn prepared(&mut self, id: &str, run: u64, result: Result<Box<Prepared>, SpawnError>) {
        let Some(a) = self
            .agents
            .get_mut(id)
            .filter(|a| a.run == run && a.phase == Some(Phase::Prepare))
        else {
            // Cancelled by a stop meanwhile.
            self.release_slot();
            return;
        };
        let prepared = match result {
            Ok(p) => p,
            Err(e) => {
                a.phase = None;
                if let SpawnError::Permanent(reason) | SpawnError::Transient(reason) = &e {
                    tracing::error!(agent = id, "cannot start: {reason}");
                }
                let policy = a.cfg.policy;
                self.act(id, |l| l.spawned(Err(e), &policy));
                self.release_slot();
                return;
            }
        };
        let tx = self.tx.clone();
        let job_id = id.to_string();
        let job = spawn::Job {
            prepared: *prepared,
            done: Box::new(move |result| {
                let _ = tx.send(Msg::Spawned {
                    id: job_id,
                    run,
                    result,
                });
            }),
        };
        listen_for_exits(&mut self.reaping, &self.tx);
        if self.forker.send(job).is_err() {
            a.phase = None;
            let policy = a.cfg.policy;
            let e = SpawnError::Permanent("the fork threads are gone".into());
            self.act(id, |l| l.spawned(Err(e), &policy));
            self.release_slot();
            return;
        }
        a.phase = Some(Phase::Fork);
        self.forking += 1;
    }

    /// A fork thread's answer for run `run`.
    fn spawned(&mut self, id: &str, run: u64, result: Result<Forked, spawn::Failed>) {
        self.forking = self.forking.saturating_sub(1);
        self.release_slot();
        // A child that failed before its exec is the reaper's to collect,
        // and its exit nobody's.
        let result = result.map_err(|f| {
            if let Some(pid) = f.child
                && self.unclaimed.remove(&pid).is_none()
            {
                self.failed_children.insert(pid);
            }
            f.error
        });
        let Some(a) = self
            .agents
            .get_mut(id)
            .filter(|a| a.run == run && a.phase == Some(Phase::Fork))
        else {
            // Nobody wants it (cannot happen while an agent waits for its
            // fork, but a process must never run unsupervised).
            if let Ok(f) = result {
                process::signal_group(f.pid, Signal::SIGKILL);
            }
            return;
        };
        a.phase = None;
        let policy = a.cfg.policy;
        let f = match result {
            Ok(f) => f,
            Err(e) => {
                if let SpawnError::Permanent(reason) | SpawnError::Transient(reason) = &e {
                    tracing::error!(agent = id, "cannot start: {reason}");
                }
                self.act(id, |l| l.spawned(Err(e), &policy));
                return;
            }
        };
        a.proc = Some(Proc {
            pid: f.pid,
            started: (SystemTime::now(), Instant::now()),
        });
        a.pgid = Some(f.pid);
        match capture::start(a.hub.clone(), f.output) {
            Ok(c) => a.capture = Some(c),
            Err(e) => tracing::error!(agent = id, "cannot read the agent's output: {e}"),
        }
        self.leaders.insert(f.pid, id.to_string());
        self.store.set_group(id, f.pid as i32);
        self.act(id, |l| l.spawned(Ok(()), &policy));
        // It may have exited before this answer came.
        if let Some((exit, at)) = self.unclaimed.remove(&f.pid)
            && at >= f.before
        {
            self.leaders.remove(&f.pid);
            self.exited(id, exit);
        }
    }

    /// Collects exited children.
    fn reap(&mut self) {
        let mut reaped = Vec::new();
        let mut collect = || -> bool {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    reaped.push((pid.as_raw() as u32, Exit::Code(code)));
                    true
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    reaped.push((pid.as_raw() as u32, Exit::Signal(sig)));
                    true
                }
                Ok(WaitStatus::StillAlive) | Err(_) => false,
                Ok(_) => true,
            }
        };
        // Every child: the agents' processes, and the orphans of theirs the
        // daemon adopted as their child subreaper. Nothing else in the
        // process forks.
        while collect() {}
        let mut adopted_exited = false;
        for (pid, exit) in reaped {
            if self.failed_children.remove(&pid) {
                continue;
            }
            match self.leaders.remove(&pid) {
                Some(id) => self.exited(&id, exit),
                None => {
                    let now = Instant::now();
                    self.unclaimed
                        .retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_KEEP);
                    self.unclaimed.insert(pid, (exit, now));
                    adopted_exited = true;
                }
            }
        }
        // The last process of a stopping agent is always the daemon's own
        // child (adopted when its parent died): its exit is the moment to
        // look again.
        if adopted_exited
            && self
                .agents
                .values()
                .any(|a| a.stopping.is_some() || a.leftovers.is_some())
        {
            self.scan();
        }
    }

    fn exited(&mut self, id: &str, exit: Exit) {
        let Some(a) = self.agents.get_mut(id) else { return };
        let ran = a.proc.as_ref().map(|p| p.started.1.elapsed()).unwrap_or_default();
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

    /// Asks the scan thread to look at the process table (at most one scan
    /// in flight; requests meanwhile are answered by the next one).
    fn scan(&mut self) {
        if self.scan_in_flight {
            self.scan_wanted = true;
            return;
        }
        let groups = self
            .agents
            .values()
            .filter(|a| a.stopping.is_some())
            .filter_map(|a| a.pgid)
            .chain(self.agents.values().filter_map(|a| a.leftovers))
            .collect();
        let req = ScanRequest {
            leaders: self.leaders.keys().copied().collect(),
            groups,
            sample: std::mem::take(&mut self.sample_wanted),
            cgroups: self
                .cgroups
                .as_ref()
                .map(|c| (c.clone(), self.agents.keys().cloned().collect())),
            everything: self.sweep_wanted,
        };
        if self.scanner.send(req).is_ok() {
            self.scan_in_flight = true;
        } else {
            tracing::error!("the process scan thread is gone");
        }
    }

    fn scanned(&mut self, scan: Scan, sample: bool, everything: bool) {
        self.scan_in_flight = false;
        let Scan {
            members: found,
            usage,
        } = scan;
        if everything && !self.swept {
            self.swept = true;
            for m in found.iter().filter(|m| m.top != 0 || m.owner.is_some()) {
                tracing::warn!(
                    pid = m.pid,
                    "killing a process left behind by the agents at shutdown"
                );
                process::signal_member(m, Signal::SIGKILL);
            }
            return;
        }
        // Whose is each process: by its process group, by the leader it
        // descends from, or by the mark an adopted process carries.
        let mut owner: HashMap<u32, &str> = HashMap::new();
        for a in self.agents.values() {
            for g in a.pgid.iter().chain(a.leftovers.iter()) {
                owner.insert(*g, &a.cfg.id);
            }
        }
        let mut by_agent: HashMap<String, Vec<Member>> = HashMap::new();
        let mut lineage = HashMap::new();
        for m in found {
            // Its cgroup says for sure; then its group, its leader, its
            // mark, or, adopted, whose it was when a scan saw it before.
            let id = m
                .owner
                .as_deref()
                .or_else(|| owner.get(&m.pgrp).copied())
                .or_else(|| self.leaders.get(&m.top).map(String::as_str))
                .or(m.mark.as_deref())
                .or_else(|| {
                    self.lineage
                        .get(&m.pid)
                        .filter(|(start, _)| *start == m.start)
                        .map(|(_, id)| id.as_str())
                });
            if let Some(id) = id {
                if self.cgroups.is_none() {
                    lineage.insert(m.pid, (m.start, id.to_string()));
                }
                by_agent.entry(id.to_string()).or_default().push(m);
            }
        }
        self.lineage = lineage;
        if sample {
            self.sampled(&by_agent, &usage);
        }
        let ids: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| a.stopping.is_some() || a.leftovers.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let members = by_agent.remove(&id).unwrap_or_default();
            self.examine(&id, members);
        }
        if std::mem::take(&mut self.scan_wanted) {
            self.scan();
        }
    }

    /// Every live agent's resources from one scan, announced together.
    fn sampled(
        &mut self,
        by_agent: &HashMap<String, Vec<Member>>,
        usage: &HashMap<String, super::cgroup::Usage>,
    ) {
        let now = Instant::now();
        let mut agents = BTreeMap::new();
        for (id, a) in self.agents.iter_mut() {
            let members = by_agent.get(id).map(Vec::as_slice).unwrap_or_default();
            let used = usage.get(id);
            let cpu_pct = match used {
                // The cgroup counts every process that was ever in it.
                Some(u) => a.cpu.update_total(
                    (u.cpu_usec as f64 * process::ticks_per_second() / 1e6) as u64,
                    now,
                ),
                None => a.cpu.update(members, now),
            };
            a.resources = (a.life.status().is_live() && !members.is_empty()).then(|| Resources {
                cpu_pct,
                rss_bytes: used
                    .and_then(|u| u.memory)
                    .unwrap_or_else(|| members.iter().map(|m| m.rss_bytes).sum()),
                processes: members.len() as u32,
            });
            if let Some(r) = a.resources {
                agents.insert(id.clone(), r);
            }
        }
        let _ = self.events.send(Event::Resources(Arc::new(ResourcesEvent {
            at: rfc3339(SystemTime::now()),
            agents,
        })));
        // Lines dropped since the last summary: said at the sample, not
        // line by line.
        for a in self.agents.values_mut() {
            let dropped = a.hub.dropped();
            if dropped != a.announced_dropped {
                a.announced_dropped = dropped;
                let _ = self.events.send(Event::Summary(Box::new(a.listed())));
            }
        }
    }

    /// Acts on what a scan found of one stopping (or crashed) agent.
    fn examine(&mut self, id: &str, members: Vec<Member>) {
        let Some(a) = self.agents.get_mut(id) else { return };
        let policy = a.cfg.policy;
        if let Some(old) = a.leftovers.take() {
            // A new run may have started since: its processes are not leftovers.
            let current = a.proc.as_ref().map(|p| p.pid);
            for m in &members {
                let ours_now = current.is_some_and(|c| m.top == c || m.pgrp == c);
                if m.pgrp == old || !ours_now {
                    tracing::debug!(agent = id, pid = m.pid, "killing a leftover process");
                    process::signal_member(m, Signal::SIGKILL);
                }
            }
            if a.stopping.is_none() {
                return;
            }
        }
        let Some(s) = a.stopping.as_mut() else { return };
        // What left the group and the stop signal missed.
        signal_escaped(id, &members, a.pgid, policy.stop_signal, &mut s.signalled);
        if s.killed {
            if let Some(c) = &self.cgroups {
                c.kill(id);
            }
            for m in &members {
                process::signal_member(m, Signal::SIGKILL);
            }
        }
        let leader_gone = a.proc.as_ref().is_none_or(|p| !self.leaders.contains_key(&p.pid));
        if leader_gone && members.is_empty() {
            self.act(id, |l| l.group_gone());
        } else if leader_gone && s.give_up {
            let shown: Vec<String> = members
                .iter()
                .take(5)
                .map(|m| format!("pid {} (state {})", m.pid, m.state))
                .collect();
            let reason = format!(
                "{} process{} of the agent survived SIGKILL: {}",
                members.len(),
                if members.len() == 1 { "" } else { "es" },
                shown.join(", ")
            );
            tracing::error!(agent = id, "stop gave up: {reason}");
            self.act(id, |l| {
                l.unkillable(reason);
                vec![]
            });
        }
    }

    /// What of agent `id` lives now, from its own tree (see `tree`): below
    /// its `leader`, below the daemon's adopted children that are its, and
    /// in its cgroup.
    fn tree_of(&self, id: &str, leader: Option<u32>) -> Vec<Member> {
        let mut out = Vec::new();
        if let Some(l) = leader.filter(|l| self.leaders.contains_key(l)) {
            tree::subtree(l, l, &mut out);
        }
        let adopted: Vec<u32> = tree::children(std::process::id())
            .into_iter()
            .filter(|p| !self.leaders.contains_key(p))
            .collect();
        if !adopted.is_empty() {
            let groups: HashMap<u32, String> = self
                .agents
                .values()
                .flat_map(|a| {
                    a.pgid
                        .iter()
                        .chain(a.leftovers.iter())
                        .map(|g| (*g, a.cfg.id.clone()))
                })
                .collect();
            let clues = tree::Clues {
                groups: &groups,
                lineage: &self.lineage,
            };
            for pid in adopted {
                if let Some(m) = Member::now(pid, pid)
                    && clues.owner(&m, || process::agent_mark(pid)).as_deref() == Some(id)
                {
                    tree::subtree(pid, pid, &mut out);
                }
            }
        }
        if let Some(c) = &self.cgroups {
            let seen: std::collections::HashSet<u32> = out.iter().map(|m| m.pid).collect();
            out.extend(
                c.procs(id)
                    .into_iter()
                    .filter(|p| !seen.contains(p))
                    .filter_map(|p| Member::now(p, 0)),
            );
        }
        out
    }

    /// Whether nothing of stopping agent `id` is left: its leader exited,
    /// its group is empty, and its tree holds nothing.
    fn gone(&self, id: &str) -> bool {
        let Some(a) = self.agents.get(id) else { return true };
        if a.proc.as_ref().is_some_and(|p| self.leaders.contains_key(&p.pid)) {
            return false;
        }
        if let Some(pgid) = a.pgid
            && nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), None)
                != Err(nix::errno::Errno::ESRCH)
        {
            return false;
        }
        self.tree_of(id, None).is_empty()
    }

    fn stop_timeout(&mut self, id: &str, generation: u64) {
        let Some(a) = self.agents.get_mut(id) else { return };
        if !a.life.stop_timed_out(generation) {
            return;
        }
        let Some(s) = a.stopping.as_mut() else { return };
        tracing::warn!(
            agent = id,
            "did not stop within {}; sending SIGKILL to every process of it",
            humantime::format_duration(a.cfg.policy.stop_timeout)
        );
        s.killed = true;
        if let Some(pgid) = a.pgid {
            process::signal_group(pgid, Signal::SIGKILL);
        }
        if let Some(c) = &self.cgroups {
            c.kill(id);
        }
        send_after(
            KILL_GRACE,
            self.tx.clone(),
            Msg::KillGrace {
                id: id.to_string(),
                generation,
            },
        );
        self.scan();
    }

    /// Starts preparing queued spawns while slots are free.
    fn pump(&mut self) {
        while self.spawning < SPAWN_SLOTS {
            let Some(id) = self.spawn_queue.pop_front() else {
                return;
            };
            let Some(a) = self
                .agents
                .get_mut(&id)
                .filter(|a| a.phase == Some(Phase::Queued))
            else {
                continue;
            };
            a.phase = Some(Phase::Prepare);
            self.spawning += 1;
            let (cfg, env, instance, run, tx, cgroups) = (
                a.cfg.clone(),
                self.base_env.clone(),
                self.instance.clone(),
                a.run,
                self.tx.clone(),
                self.cgroups.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let result = spawn::prepare(&cfg, &env, &instance, cgroups.as_deref()).map(Box::new);
                let _ = tx.send(Msg::Prepared { id, run, result });
            });
        }
    }

    /// A spawn let go of its slot.
    fn release_slot(&mut self) {
        self.spawning = self.spawning.saturating_sub(1);
        self.pump();
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
        self.settle(id);
    }

    fn execute(&mut self, id: &str, action: Action) -> Vec<Action> {
        let tx = self.tx.clone();
        let Some(a) = self.agents.get_mut(id) else {
            return vec![];
        };
        let generation = a.life.generation();
        let id = id.to_string();
        match action {
            Action::Spawn => {
                self.next_run += 1;
                a.run = self.next_run;
                a.phase = Some(Phase::Queued);
                self.spawn_queue.push_back(id);
                self.pump();
                vec![]
            }
            Action::CancelSpawn => {
                // Queued: its queue entry is skipped. Being prepared: the
                // answer is dropped when it comes. Forking: stopped once
                // its process exists.
                if matches!(a.phase, Some(Phase::Queued | Phase::Prepare)) {
                    a.phase = None;
                    let policy = a.cfg.policy;
                    a.life.spawned(Err(SpawnError::Cancelled), &policy)
                } else {
                    vec![]
                }
            }
            Action::SignalStop => {
                let Some(pgid) = a.pgid else { return vec![] };
                let (policy, leader) = (a.cfg.policy, a.proc.as_ref().map(|p| p.pid));
                // Its processes, found from its own tree before any of them
                // goes (once a parent is gone, its children are the
                // daemon's and say nothing of whose they were): remembered,
                // and those outside the group signalled with it.
                let found = self.tree_of(&id, leader);
                for m in &found {
                    self.lineage.insert(m.pid, (m.start, id.clone()));
                }
                process::signal_group(pgid, policy.stop_signal);
                // A stopped (SIGSTOP) process only sees the signal once continued.
                process::signal_group(pgid, Signal::SIGCONT);
                let mut stopping = Stopping::default();
                signal_escaped(
                    &id,
                    &found,
                    Some(pgid),
                    policy.stop_signal,
                    &mut stopping.signalled,
                );
                if let Some(a) = self.agents.get_mut(&id) {
                    a.stopping = Some(stopping);
                }
                send_after(policy.stop_timeout, tx, Msg::StopTimeout { id, generation });
                vec![]
            }
            Action::ArmStartWindow(d) => {
                send_after(d, tx, Msg::StartWindow { id, generation });
                vec![]
            }
            Action::ArmBackoff(d) => {
                send_after(d, tx, Msg::Backoff { id, generation });
                vec![]
            }
            Action::KillLeftovers => {
                if let Some(pgid) = a.pgid {
                    process::signal_group(pgid, Signal::SIGKILL);
                    a.leftovers = Some(pgid);
                    self.scan();
                }
                vec![]
            }
            Action::AwaitGroupEmpty => {
                if a.stopping.is_none() {
                    a.stopping = Some(Stopping::default());
                }
                // Its own tree says at once when nothing is left; what it
                // cannot rule out, a scan settles.
                if self.gone(&id) {
                    return self
                        .agents
                        .get_mut(&id)
                        .map(|a| a.life.group_gone())
                        .unwrap_or_default();
                }
                self.scan();
                vec![]
            }
        }
    }

    /// Announces the agent's status changes, answers its waiters, lets go
    /// of what a stopped agent held, and drops it if it was removed and is
    /// now down.
    fn settle(&mut self, id: &str) {
        let Some(a) = self.agents.get_mut(id) else { return };
        let now = SystemTime::now();
        let transitions = a.life.take_transitions();
        let changed = !transitions.is_empty();
        for (old, new) in transitions {
            let pid = a.proc.as_ref().map(|p| p.pid);
            tracing::info!(agent = id, "{old} -> {new}");
            let exit = a.last_exit.as_ref().filter(|_| old.is_live() && !new.is_live());
            self.store.history(HistoryRow {
                agent: id.to_string(),
                at: rfc3339(now),
                old_status: old,
                new_status: new,
                pid,
                exit_code: exit.and_then(|e| e.code),
                exit_signal: exit.and_then(|e| e.signal.clone()),
                reason: matches!(new, Status::Failed | Status::Backoff)
                    .then(|| a.life.reason().map(str::to_string))
                    .flatten(),
            });
            let _ = self.events.send(Event::Status(StatusEvent {
                agent_id: id.to_string(),
                old_status: old,
                new_status: new,
                pid,
                at: rfc3339(now),
            }));
        }
        if !a.life.status().is_live() {
            a.resources = None;
            if let Some(p) = a.proc.take() {
                self.leaders.remove(&p.pid);
            }
            if a.pgid.take().is_some() {
                self.store.clear_group(id);
                self.lineage.retain(|_, (_, whose)| whose != id);
            }
            a.stopping = None;
            // Reads what is still in the pipe, then lets go of it and of
            // the log file.
            a.capture = None;
        }
        if changed {
            a.announced_dropped = a.hub.dropped();
            let _ = self.events.send(Event::Summary(Box::new(a.listed())));
        }
        let mut i = 0;
        while i < a.waiters.len() {
            if a.settled(a.waiters[i].wait) {
                let w = a.waiters.swap_remove(i);
                let _ = w.reply.send(Ok(a.summary()));
            } else {
                i += 1;
            }
        }
        if a.removing && !a.life.status().is_live() && a.phase.is_none() {
            if let Some(c) = self.cgroups.clone() {
                let id = id.to_string();
                tokio::task::spawn_blocking(move || c.remove(&id));
            }
            if let Some(a) = self.agents.remove(id) {
                // Should it come back, its log goes on where it ended, and
                // whoever follows this one is told it is gone.
                self.log_bases.insert(id.to_string(), a.hub.base());
                a.hub.close();
                for w in a.waiters {
                    let _ = w.reply.send(Err(Error::NotFound(id.to_string())));
                }
                // What an operator asked of it goes with it: should it come
                // back, it follows `autostart` (its history stays, under
                // its id, for `history` to show).
                self.store.forget_desired(id);
                let _ = self.events.send(Event::Removed(RemovedEvent {
                    agent_id: id.to_string(),
                    at: rfc3339(now),
                }));
            }
            tracing::info!(agent = id, "removed");
        }
    }

    fn add(&mut self, cfg: AgentConfig, desired: Option<Desired>) {
        let id = cfg.id.clone();
        // The hub keeps its base from now on: the map holds only agents
        // that are not configured (for their log to go on should they
        // come back).
        let base = self.log_bases.remove(&id).unwrap_or(0);
        let hub = LogHub::open(
            self.log_dir.clone(),
            &id,
            base,
            cfg.log,
            Some(self.store.clone()),
            self.drops.clone(),
        );
        let desired = desired.unwrap_or(if cfg.autostart {
            Desired::Running
        } else {
            Desired::Stopped
        });
        self.agents.insert(
            id.clone(),
            Box::new(Agent {
                cfg,
                life: Lifecycle::default(),
                desired,
                run: 0,
                phase: None,
                proc: None,
                pgid: None,
                capture: None,
                stopping: None,
                leftovers: None,
                last_exit: None,
                resources: None,
                cpu: CpuAccount::default(),
                hub,
                waiters: Vec::new(),
                removing: false,
                announced_dropped: 0,
            }),
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
        self.log_dir = config.server.log_dir.as_path().into();
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

/// Sends the stop signal to each of `members` outside the group `pgid`
/// that has not had it (`signalled`, by pid and start).
fn signal_escaped(
    id: &str,
    members: &[Member],
    pgid: Option<u32>,
    sig: Signal,
    signalled: &mut std::collections::HashSet<(u32, u64)>,
) {
    for m in members.iter().filter(|m| Some(m.pgrp) != pgid) {
        if signalled.insert((m.pid, m.start)) {
            tracing::debug!(
                agent = id,
                pid = m.pid,
                "stopping a process that left the agent's group"
            );
            process::signal_member(m, sig);
            process::signal_member(m, Signal::SIGCONT);
        }
    }
}

/// Sends `msg` after `d`.
fn send_after(d: Duration, tx: mpsc::UnboundedSender<Msg>, msg: Msg) {
    tokio::spawn(async move {
        tokio::time::sleep(d).await;
        let _ = tx.send(msg);
    });
}

/// CPU time of an agent's processes, counted so that a process that exits
/// between samples is not lost.
#[derive(Default)]
struct CpuAccount {
    /// The processes of the last sample: pid -> (ticks, parent).
    seen: HashMap<u32, (u64, u32)>,
    /// Ticks of processes gone since, whose time no live parent reaped.
    gone: u64,
    /// Everything so far (never goes back).
    total: u64,
    last: Option<(u64, Instant)>,
}

impl CpuAccount {
    /// Takes a sample; returns the percent of one core used since the last.
    fn update(&mut self, members: &[Member], now: Instant) -> f64 {
        let live: HashMap<u32, (u64, u32)> = members.iter().map(|m| (m.pid, (m.ticks, m.ppid))).collect();
        for (pid, (ticks, parent)) in &self.seen {
            // A process reaped by a live parent is in that parent's ticks.
            if !live.contains_key(pid) && !live.contains_key(parent) {
                self.gone += ticks;
            }
        }
        let now_total = self.gone + live.values().map(|(t, _)| t).sum::<u64>();
        self.seen = live;
        self.update_total(now_total, now)
    }

    /// Takes a sample of the total so far (a cgroup's); returns the percent
    /// of one core used since the last.
    fn update_total(&mut self, now_total: u64, now: Instant) -> f64 {
        self.total = self.total.max(now_total);
        let pct = match self.last {
            Some((before, at)) if now > at => {
                let secs = now.duration_since(at).as_secs_f64();
                (self.total - before) as f64 / process::ticks_per_second() / secs * 100.0
            }
            _ => 0.0,
        };
        self.last = Some((self.total, now));
        (pct * 10.0).round() / 10.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, ids: &[&str]) -> Config {
        let mut text = String::new();
        for id in ids {
            text.push_str(&format!(
                "[agents.{id}]\ncommand = [\"sleep\", \"1000\"]\nautostart = false\n"
            ));
        }
        let mut cfg = crate::config::parse(&text, "t.toml", dir).unwrap_or_else(|e| panic!("{e}"));
        cfg.server.log_dir = dir.join("logs");
        cfg.server.state_dir = dir.join("state");
        // Nothing is started here: no cgroup to make either.
        cfg.server.cgroups = crate::config::Cgroups::Off;
        cfg
    }

    #[tokio::test]
    async fn log_bases_are_kept_only_for_agents_not_configured() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &["a", "b"]);
        std::fs::create_dir_all(&cfg.server.log_dir).unwrap();
        let keep = crate::store::Keep {
            history: 100,
            audit: 100,
        };
        let (store, _) = Store::open(dir.path(), keep).unwrap();
        let bases = HashMap::from([("a".to_string(), 100), ("gone".to_string(), 5)]);
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut sup = Supervisor::new(&cfg, store, bases, tx).unwrap();
        for a in cfg.agents.values() {
            sup.add(a.clone(), None);
        }
        // Taken by its hub: no second copy.
        assert_eq!(sup.agents["a"].hub.base(), 100);
        assert_eq!(sup.log_bases.keys().collect::<Vec<_>>(), ["gone"]);
        // Removed: kept for a comeback.
        sup.reload(config(dir.path(), &["b"]));
        assert!(!sup.agents.contains_key("a"));
        assert_eq!(sup.log_bases.get("a"), Some(&100));
        // Back: its log goes on where it ended, and the entry goes.
        sup.reload(config(dir.path(), &["a", "b"]));
        assert_eq!(sup.agents["a"].hub.base(), 100);
        assert!(!sup.log_bases.contains_key("a"));
    }
}
