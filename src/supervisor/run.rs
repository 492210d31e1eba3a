//! The event loop that owns every agent: it dispatches the messages, feeds
//! each agent's [`Lifecycle`] what happened, carries out the actions it
//! returns, and has the changes announced. The rest of the supervisor's
//! work is beside it: `announce` (history rows and events), `configure`
//! (agents added, reloaded, removed), `slots` (spawning), `reaper` (exits),
//! `stop` (stops, scans), `cpu` (resource samples), `handover` (quiet, and
//! an upgrade's hand-over); `agent` holds an agent's state.

use super::agent::{Agent, Run, Wait, Waiter};
use super::cgroup::Cgroups;
use super::handover::TimerKind;
use super::lifecycle::{Action, Lifecycle, SpawnError, Stage};
use super::process::ScanRequest;
use super::reaper::Reaper;
use super::slots::Slots;
use super::spawn;
use super::{AgentView, Change, ControlReply, Error, Listed, Msg, Reply};
use crate::config::AgentConfig;
use crate::store::Store;
use crate::wire::{Desired, Op};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, mpsc};

pub(super) struct Supervisor {
    /// Boxed: a B-tree node holds 11 entries, most of them empty when
    /// agents are added in order, and an empty slot for an `Agent` costs
    /// as much as an agent.
    pub(super) agents: BTreeMap<String, Box<Agent>>,
    pub(super) tx: mpsc::UnboundedSender<Msg>,
    pub(super) events: broadcast::Sender<Change>,
    pub(super) store: Store,
    pub(super) log_dir: Arc<std::path::Path>,
    pub(super) next_run: u64,
    pub(super) shutting_down: Vec<Reply<()>>,
    pub(super) instance: Arc<str>,
    pub(super) base_env: Arc<Vec<(OsString, OsString)>>,
    pub(super) forker: spawn::Forker,
    /// Jobs with the fork thread, not answered yet.
    pub(super) forking: usize,
    pub(super) slots: Slots,
    pub(super) reaper: Reaper,
    pub(super) scanner: std::sync::mpsc::Sender<ScanRequest>,
    pub(super) scan_in_flight: bool,
    pub(super) scan_wanted: bool,
    /// The next scan is also a resource sample.
    pub(super) sample_wanted: bool,
    pub(super) sample_interval: Duration,
    /// A cgroup per agent, where the daemon can have them.
    pub(super) cgroups: Option<Arc<Cgroups>>,
    /// Whose each process was when it was last seen (pid -> its start, the
    /// agent), for processes the daemon adopts.
    pub(super) lineage: HashMap<u32, (u64, String)>,
    /// The last scan at shutdown is wanted, and whether it was done.
    pub(super) sweep_wanted: bool,
    pub(super) swept: bool,
    /// What every agent's log is dropping (shared with the API).
    pub(super) drops: Arc<crate::logs::Drops>,
    /// The agents by status, and those with a stats query.
    pub(super) index: super::index::Index,
    /// The daemon's own children as read once for the message being
    /// handled (a shutdown stops every agent in one message: one read of
    /// the list, not one per agent).
    pub(super) own_children: std::cell::OnceCell<Vec<u32>>,
    /// The one task that runs every health probe.
    pub(super) prober: mpsc::UnboundedSender<super::probe::Order>,
    /// Who depends on each agent (made from the config).
    pub(super) dependents: HashMap<String, Vec<String>>,
    /// An in-place upgrade waits for the agents to be quiet: its number
    /// (a late timeout of an earlier one is recognised) and where the
    /// agents go.
    pub(super) handover: Option<(u64, Reply<Result<super::handover::Taken, String>>)>,
    pub(super) handovers: u64,
    /// Who waits for quiet ([`Msg::WhenQuiet`]), each with its number.
    pub(super) quiet_waits: Vec<(u64, Reply<Result<(), String>>)>,
}

impl Supervisor {
    pub(super) async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        mut requests: mpsc::Receiver<Msg>,
        desired: HashMap<String, Desired>,
        agents: Vec<Arc<AgentConfig>>,
        handed: Option<super::Handed>,
    ) {
        self.start_sampler();
        // A choice stored for an agent the config no longer has (removed
        // while the daemon was down) is forgotten, as on a reload.
        for id in desired.keys().filter(|id| !agents.iter().any(|a| &a.id == *id)) {
            self.store.forget_desired(id);
        }
        // Every agent is known before any starts: a start looks at its
        // dependencies.
        let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
        for cfg in agents {
            let d = desired.get(&cfg.id).copied();
            self.add(cfg, d);
        }
        self.rebuild_dependents();
        // Handed over by an earlier image: those agents go on as they
        // were; the config's new ones start as at any start.
        let mut taken_back = std::collections::HashSet::new();
        if let Some((agents, mut fds)) = handed {
            taken_back.extend(agents.agents.iter().map(|a| a.id.clone()));
            self.restore(agents, &mut fds);
        }
        for id in ids.iter().filter(|id| !taken_back.contains(*id)) {
            self.start_if_desired(id);
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
            if self.quiet_reached() {
                // Handed over: the supervisor ends here without letting go
                // of a process.
                return;
            }
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
        self.own_children.take();
        match msg {
            Msg::List(filter, r) => {
                let found = self.index.select(&self.agents, &filter, None, usize::MAX);
                let _ = r.send(found.map(|a| a.listed()).collect());
            }
            Msg::StatsQueries(r) => {
                let agents = &self.agents;
                let found = self
                    .index
                    .with_stats()
                    .filter_map(|id| Some((id.to_string(), agents.get(id)?.cfg.stats.clone()?)));
                let _ = r.send(found.collect());
            }
            Msg::Counts(r) => {
                let _ = r.send(self.index.counts());
            }
            Msg::Get(id, r) => {
                let _ = r.send(self.agents.get(&id).map(|a| AgentView {
                    summary: a.summary(),
                    config: a.cfg.clone(),
                    hub: a.hub.clone(),
                }));
            }
            Msg::Message { id, text, reply } => {
                let _ = reply.send(self.message(&id, &text));
            }
            Msg::Watch(r) => {
                let rx = self.events.subscribe();
                let _ = r.send((self.listed(), rx));
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
                // Failed and exited agents keep their status; live ones
                // are stopped once no agent that depends on them runs
                // (dependents first), pending restarts and waits are
                // cancelled, and a stop in progress loses any start queued
                // behind it.
                for id in ids {
                    self.stop_for_shutdown(&id);
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
                self.act(&id, |l, stage| {
                    l.start_window_elapsed(generation, stage);
                    vec![]
                });
            }
            Msg::Backoff { id, generation } => {
                if self.shutting_down.is_empty() {
                    self.act(&id, |l, _| l.backoff_elapsed(generation));
                }
            }
            Msg::StopTimeout { id, generation } => self.stop_timeout(&id, generation),
            Msg::KillGrace { id, generation } => self.kill_grace(&id, generation),
            Msg::StartPeriod { id, generation } => {
                let Some(policy) = self.agents.get(&id).map(|a| a.cfg.policy) else {
                    return;
                };
                self.act(&id, |l, stage| l.start_period_elapsed(generation, stage, &policy));
            }
            Msg::Probed { id, run, result } => {
                let Some(a) = self.agents.get(&id) else { return };
                let current = matches!(&a.run, Run::Live(l) if l.run == run && l.stop.is_none());
                if current {
                    let policy = a.cfg.policy;
                    self.act(&id, |l, _| l.probed(result, &policy));
                }
            }
            Msg::ProbeChild { pid, before, exit } => {
                // Also a child of the daemon's own (an upgrade's check),
                // maybe before any agent was forked: exits are collected
                // from now on, and one that came already is found.
                self.reaper.listen(&self.tx);
                self.reaper.probe(pid, before, exit);
                self.reap();
            }
            Msg::Handover(r) => self.handover_asked(r),
            Msg::HandoverTimeout(n) => self.handover_timeout(n),
            Msg::WhenQuiet(r) => self.when_quiet(r),
            Msg::QuietTimeout(n) => self.quiet_timeout(n),
            Msg::FailedChild(pid) => self.reaper.failed_child(pid),
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
        self.act(&id, |l, stage| match op {
            Op::Start => l.start(),
            Op::Stop => l.stop(stage),
            Op::Restart => l.restart(stage),
        });
    }

    /// Feeds the agent's lifecycle (and where its process is), carries out
    /// the actions it returns, then announces what changed and answers
    /// whoever waits.
    pub(super) fn act(&mut self, id: &str, f: impl FnOnce(&mut Lifecycle, Stage) -> Vec<Action>) {
        // A start that comes due looks at the dependencies as they are.
        let gate = self.gate(id);
        let Some(a) = self.agents.get_mut(id) else { return };
        a.life.set_gate(gate);
        let mut actions = f(&mut a.life, a.run.stage());
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
        match action {
            Action::Spawn => {
                self.next_run += 1;
                a.run = Run::Queued { run: self.next_run };
                self.slots.push(id.to_string());
                self.pump();
            }
            Action::CancelSpawn => {
                // Queued: its queue entry is skipped. Being prepared: the
                // answer is dropped when it comes. Forking: stopped once
                // its process exists.
                if matches!(a.run, Run::Queued { .. } | Run::Preparing { .. }) {
                    a.run = Run::Idle;
                    let policy = a.cfg.policy;
                    return a.life.spawned(Err(SpawnError::Cancelled), &policy);
                }
            }
            Action::SignalStop => self.signal_stop(id),
            Action::ArmStartWindow(d) => {
                a.arm(TimerKind::StartWindow, d);
                let id = id.to_string();
                send_after(d, tx, Msg::StartWindow { id, generation });
            }
            Action::ArmBackoff(d) => {
                a.arm(TimerKind::Backoff, d);
                let id = id.to_string();
                send_after(d, tx, Msg::Backoff { id, generation });
            }
            Action::KillLeftovers => self.kill_leftovers(id),
            Action::AwaitGroupEmpty => return self.await_group_empty(id),
            Action::StartProbes => {
                if let Run::Live(l) = &a.run {
                    let order = super::probe::Order::Watch {
                        cfg: a.cfg.clone(),
                        run: l.run,
                    };
                    let _ = self.prober.send(order);
                }
            }
            Action::ArmStartPeriod(d) => {
                a.arm(TimerKind::StartPeriod, d);
                let id = id.to_string();
                send_after(d, tx, Msg::StartPeriod { id, generation });
            }
        }
        vec![]
    }

    /// The agent's run is over: its group and what was learnt of its
    /// processes go, and its output is read to the end (the capture goes
    /// with the run).
    pub(super) fn down(&mut self, id: &str) {
        let Some(a) = self.agents.get_mut(id) else { return };
        if a.cfg.probe.is_some() {
            let _ = self
                .prober
                .send(super::probe::Order::Forget { id: id.to_string() });
        }
        match std::mem::take(&mut a.run) {
            Run::Live(l) => {
                self.reaper.leaders.remove(&l.pid);
            }
            Run::Draining { .. } => {}
            other => {
                a.run = other;
                return;
            }
        }
        self.store.clear_group(id);
        self.lineage.retain(|_, (_, whose)| whose != id);
    }

    /// Announces the agent's status changes, answers its waiters, lets go
    /// of what a stopped agent held, and drops it if it was removed and is
    /// now down.
    fn settle(&mut self, id: &str) {
        // Given up on (a stop that could not kill everything).
        if self
            .agents
            .get(id)
            .is_some_and(|a| !a.life.status().is_live() && a.run.pgid().is_some())
        {
            self.down(id);
        }
        let now = SystemTime::now();
        let changed = self.announce(id, now);
        let Some(a) = self.agents.get_mut(id) else { return };
        let mut i = 0;
        while i < a.waiters.len() {
            if a.settled(a.waiters[i].wait) {
                let w = a.waiters.swap_remove(i);
                let _ = w.reply.send(Ok(a.summary()));
            } else {
                i += 1;
            }
        }
        if changed {
            self.wake_dependents(id);
        }
        self.drop_if_removed(id, now);
    }
}

/// Sends `msg` after `d`.
pub(super) fn send_after(d: Duration, tx: mpsc::UnboundedSender<Msg>, msg: Msg) {
    tokio::spawn(async move {
        tokio::time::sleep(d).await;
        let _ = tx.send(msg);
    });
}
