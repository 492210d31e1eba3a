//! One agent as the supervisor holds it: its config, its restart policy's
//! state ([`Lifecycle`]) and, as one value, where its process is ([`Run`]).

use super::cpu::CpuAccount;
use super::lifecycle::{Lifecycle, Stage};
use super::process::{self, Member};
use super::{Error, Listed, Reply};
use crate::config::AgentConfig;
use crate::logs::{LogHub, capture};
use crate::wire::{AgentSummary, Desired, LastExit, Resources, Status, rfc3339};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Where an agent's process is: one state at a time, each holding what
/// only it has (a spawn's number while the spawn is under way, the pid and
/// the output pipe while the process lives, the stop while one runs).
///
/// The policy ([`Lifecycle`]: status, restarts, backoff, a start queued
/// behind a stop) lives beside it and sees it as a [`Stage`]
/// ([`Run::stage`]). Where the next states go:
/// - health probes (`ready`/`unhealthy`): a field of [`Live`] (the probe's
///   state and its timer's generation), since only a live process is probed;
///   the statuses they show belong to [`Lifecycle`].
/// - dependencies (waiting for another agent to be ready): a variant before
///   [`Run::Queued`] (`Waiting { on }`), left when the supervisor sees the
///   other agent ready, and dropped by a stop as `Queued` is.
/// - in-place upgrade (handing a live process over): a variant beside
///   [`Run::Live`] (`HandingOver { old: Live, new spawn }`) that keeps the
///   old process's pid and pipe until the new one reports.
#[derive(Default)]
pub(super) enum Run {
    /// No process, and none on its way.
    #[default]
    Idle,
    /// Spawn number `run` waits for a spawn slot.
    Queued { run: u64 },
    /// Being prepared on the blocking pool: its answer can be dropped.
    Preparing { run: u64 },
    /// With a fork thread: its process will exist.
    Forking { run: u64 },
    /// Its main process runs.
    Live(Live),
    /// Its main process exited during a stop: the rest of its group (and
    /// what left it) is awaited. Its output is read until it is gone
    /// (held only to be dropped: that reads the pipe to its end).
    Draining {
        pgid: u32,
        _capture: Option<capture::Capture>,
        stop: StopState,
    },
}

/// A running main process. It leads its own process group (`pid`).
pub(super) struct Live {
    /// The spawn's number: a probe's late answer for an earlier run is
    /// recognised by it.
    pub run: u64,
    pub pid: u32,
    pub started: (SystemTime, Instant),
    pub capture: Option<capture::Capture>,
    /// The writing end of its stdin (`stdin = "pipe"`), non-blocking.
    pub stdin: Option<std::os::fd::OwnedFd>,
    /// A stop is under way.
    pub stop: Option<StopState>,
}

/// A stop in progress.
#[derive(Default, Debug)]
pub(super) struct StopState {
    /// Processes that left the group and have had the stop signal (pid,
    /// start): each gets it once.
    pub signalled: HashSet<(u32, u64)>,
    /// The stop timeout passed: everything gets SIGKILL.
    pub killed: bool,
    /// SIGKILL's grace passed too: whatever is left is given up on.
    pub give_up: bool,
}

/// What a look at the agent's processes means for its stop.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Nothing of it is left.
    Gone,
    /// Processes survived SIGKILL: the stop gives up, saying why.
    GiveUp(String),
    /// Something is left: wait for it.
    Wait,
}

impl StopState {
    /// Those of `members` outside the group `pgid` that have not had the
    /// stop signal, marked as having had it.
    pub fn escaped<'m>(&mut self, members: &'m [Member], pgid: Option<u32>) -> Vec<&'m Member> {
        members
            .iter()
            .filter(|m| Some(m.pgrp) != pgid)
            .filter(|m| self.signalled.insert((m.pid, m.start)))
            .collect()
    }

    /// What `members` (every live process of the agent) mean for the stop,
    /// its main process being gone (`leader_gone`) or not.
    pub fn verdict(&self, leader_gone: bool, members: &[Member]) -> Verdict {
        if !leader_gone {
            return Verdict::Wait;
        }
        if members.is_empty() {
            return Verdict::Gone;
        }
        if !self.give_up {
            return Verdict::Wait;
        }
        let shown: Vec<String> = members
            .iter()
            .take(5)
            .map(|m| format!("pid {} (state {})", m.pid, m.state))
            .collect();
        Verdict::GiveUp(format!(
            "{} process{} of the agent survived SIGKILL: {}",
            members.len(),
            if members.len() == 1 { "" } else { "es" },
            shown.join(", ")
        ))
    }
}

impl Run {
    /// The state as the policy sees it.
    pub fn stage(&self) -> Stage {
        match self {
            Run::Idle => Stage::None,
            Run::Queued { .. } | Run::Preparing { .. } | Run::Forking { .. } => Stage::Spawning,
            Run::Live(_) => Stage::Process,
            Run::Draining { .. } => Stage::Draining,
        }
    }

    /// The main process, while it runs.
    pub fn leader(&self) -> Option<u32> {
        match self {
            Run::Live(l) => Some(l.pid),
            _ => None,
        }
    }

    /// The process group of the current run, until it is gone.
    pub fn pgid(&self) -> Option<u32> {
        match self {
            Run::Live(l) => Some(l.pid),
            Run::Draining { pgid, .. } => Some(*pgid),
            _ => None,
        }
    }

    /// The stop under way.
    pub fn stop(&self) -> Option<&StopState> {
        match self {
            Run::Live(l) => l.stop.as_ref(),
            Run::Draining { stop, .. } => Some(stop),
            _ => None,
        }
    }

    pub fn stop_mut(&mut self) -> Option<&mut StopState> {
        match self {
            Run::Live(l) => l.stop.as_mut(),
            Run::Draining { stop, .. } => Some(stop),
            _ => None,
        }
    }

    /// Whether spawn number `run` is the one under way, at `stage`'s step.
    pub fn is_spawn(&self, run: u64, step: fn(&Run) -> Option<u64>) -> bool {
        step(self) == Some(run)
    }

    pub fn preparing(&self) -> Option<u64> {
        match self {
            Run::Preparing { run } => Some(*run),
            _ => None,
        }
    }

    pub fn forking(&self) -> Option<u64> {
        match self {
            Run::Forking { run } => Some(*run),
            _ => None,
        }
    }

    pub fn queued(&self) -> Option<u64> {
        match self {
            Run::Queued { run } => Some(*run),
            _ => None,
        }
    }

    /// Its main process exited: a stop goes on draining the group; without
    /// a stop, the group's number is returned (what is left of it are
    /// leftovers to kill). The state is [`Run::Idle`] or
    /// [`Run::Draining`] after.
    pub fn leader_exited(&mut self) -> Option<u32> {
        match std::mem::take(self) {
            Run::Live(Live {
                pid,
                capture,
                stop: Some(stop),
                ..
            }) => {
                *self = Run::Draining {
                    pgid: pid,
                    _capture: capture,
                    stop,
                };
                None
            }
            Run::Live(l) => Some(l.pid),
            other => {
                *self = other;
                None
            }
        }
    }

    /// A stop began: signalled is what its first look signalled.
    pub fn begin_stop(&mut self, stop: StopState) {
        if let Run::Live(l) = self {
            l.stop = Some(stop);
        }
    }
}

/// What a waiting start/stop/restart is waiting for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    Settled,
    Stopped,
}

pub(super) struct Waiter {
    pub wait: Wait,
    /// What the request asked for: a later request for the opposite
    /// overtakes it.
    pub want: Desired,
    pub reply: Reply<Result<AgentSummary, Error>>,
}

pub(super) struct Agent {
    pub cfg: Arc<AgentConfig>,
    pub life: Lifecycle,
    pub desired: Desired,
    pub run: Run,
    /// The group of a run that ended on its own: whatever of it is left
    /// (also outside the group) is killed by the next scan. Apart from
    /// [`Run`]: a new run may start meanwhile.
    pub leftovers: Option<u32>,
    pub last_exit: Option<LastExit>,
    /// As of the last sample, while it runs.
    pub resources: Option<Resources>,
    pub cpu: CpuAccount,
    pub hub: Arc<LogHub>,
    pub waiters: Vec<Waiter>,
    /// Removed from the config: dropped once stopped.
    pub removing: bool,
    /// Dropped log lines as the last summary event said.
    pub announced_dropped: u64,
    /// The policy's timers armed in its current generation (an in-place
    /// upgrade re-arms them in the next image).
    pub timers: Vec<super::handover::Armed>,
}

impl Agent {
    pub fn new(cfg: Arc<AgentConfig>, desired: Desired, hub: Arc<LogHub>) -> Agent {
        Agent {
            cfg,
            life: Lifecycle::default(),
            desired,
            run: Run::Idle,
            leftovers: None,
            last_exit: None,
            resources: None,
            cpu: CpuAccount::default(),
            hub,
            waiters: Vec::new(),
            removing: false,
            announced_dropped: 0,
            timers: Vec::new(),
        }
    }

    /// Keeps a timer just armed (those of earlier generations are stale).
    pub fn arm(&mut self, kind: super::handover::TimerKind, after: std::time::Duration) {
        let generation = self.life.generation();
        self.timers.retain(|t| t.generation == generation);
        self.timers.push(super::handover::Armed {
            kind,
            generation,
            due: Instant::now() + after,
        });
    }

    pub fn summary(&self) -> AgentSummary {
        let status = self.life.status();
        let live = match &self.run {
            Run::Live(l) if status.is_live() => Some(l),
            _ => None,
        };
        AgentSummary {
            id: self.cfg.id.clone(),
            status,
            desired: self.desired,
            pid: live.map(|p| p.pid),
            started_at: live.map(|p| rfc3339(p.started.0)),
            uptime_s: live.map(|p| p.started.1.elapsed().as_secs()),
            restarts: self.life.restarts(),
            last_exit: self.last_exit.clone(),
            msg_count_24h: None,
            command: self.cfg.command.clone(),
            reason: self.life.reason().map(str::to_string),
            dropped_log_lines: self.hub.dropped(),
            resources: self.resources.filter(|_| status.is_live()),
            health: self.life.health(),
            health_detail: self.life.health_detail().map(str::to_string),
        }
    }

    pub fn listed(&self) -> Listed {
        Listed {
            summary: self.summary(),
            stats: self.cfg.stats.clone(),
            cpu_seconds: self.cpu.total as f64 / process::ticks_per_second(),
            log_lines: self.hub.lines(),
        }
    }

    pub fn settled(&self, wait: Wait) -> bool {
        let s = self.life.status();
        match wait {
            Wait::Stopped => !matches!(s, Status::Stopping | Status::Starting),
            // Running, or given up on: a crash loop in backoff is still
            // trying (the API answers with it when its wait runs out).
            // Waiting for its dependencies is on its way too.
            Wait::Settled => {
                !matches!(
                    s,
                    Status::Starting | Status::Stopping | Status::Backoff | Status::Waiting
                ) && !self.life.start_queued()
                    && self.run.stage() != Stage::Spawning
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(pid: u32, pgrp: u32) -> Member {
        Member {
            pid,
            ppid: 1,
            pgrp,
            state: 'S',
            ticks: 0,
            rss_bytes: 0,
            top: pid,
            mark: None,
            owner: None,
            start: 1000 + pid as u64,
        }
    }

    fn live(pid: u32, stop: Option<StopState>) -> Run {
        Run::Live(Live {
            run: 1,
            pid,
            started: (SystemTime::now(), Instant::now()),
            capture: None,
            stdin: None,
            stop,
        })
    }

    #[test]
    fn each_state_is_one_stage_of_the_policy() {
        assert_eq!(Run::Idle.stage(), Stage::None);
        for r in [
            Run::Queued { run: 1 },
            Run::Preparing { run: 1 },
            Run::Forking { run: 1 },
        ] {
            assert_eq!(r.stage(), Stage::Spawning);
            assert_eq!((r.leader(), r.pgid()), (None, None));
        }
        let r = live(7, None);
        assert_eq!(
            (r.stage(), r.leader(), r.pgid()),
            (Stage::Process, Some(7), Some(7))
        );
        assert!(r.stop().is_none());
    }

    #[test]
    fn a_spawn_is_recognised_by_its_number_at_its_step() {
        let r = Run::Preparing { run: 3 };
        assert!(r.is_spawn(3, Run::preparing));
        assert!(!r.is_spawn(2, Run::preparing), "an earlier spawn's late answer");
        assert!(!r.is_spawn(3, Run::forking));
        assert!(Run::Queued { run: 4 }.is_spawn(4, Run::queued));
        assert!(Run::Forking { run: 5 }.is_spawn(5, Run::forking));
        assert!(!Run::Idle.is_spawn(5, Run::forking));
    }

    #[test]
    fn a_leader_that_exits_on_its_own_leaves_its_group_as_leftovers() {
        let mut r = live(7, None);
        assert_eq!(r.leader_exited(), Some(7));
        assert!(matches!(r, Run::Idle));
    }

    #[test]
    fn a_leader_that_exits_during_a_stop_drains_its_group() {
        let mut r = live(7, None);
        r.begin_stop(StopState::default());
        assert_eq!(r.leader_exited(), None);
        assert!(matches!(r, Run::Draining { pgid: 7, .. }));
        assert_eq!(
            (r.stage(), r.leader(), r.pgid()),
            (Stage::Draining, None, Some(7))
        );
        r.stop_mut().unwrap().killed = true;
        assert!(r.stop().unwrap().killed);
        // Nothing else has a leader to exit.
        for mut r in [Run::Idle, Run::Queued { run: 1 }] {
            assert_eq!(r.leader_exited(), None);
            assert!(r.pgid().is_none());
        }
    }

    #[test]
    fn a_stop_signals_each_escaped_process_once() {
        let mut s = StopState::default();
        let members = [member(7, 7), member(8, 7), member(9, 9), member(10, 9)];
        let first: Vec<u32> = s.escaped(&members, Some(7)).iter().map(|m| m.pid).collect();
        assert_eq!(first, [9, 10]);
        let more = [member(9, 9), member(11, 11)];
        let second: Vec<u32> = s.escaped(&more, Some(7)).iter().map(|m| m.pid).collect();
        assert_eq!(second, [11]);
        // The same pid, another process (started later): signalled too.
        let reused = Member {
            start: 5,
            ..member(9, 9)
        };
        assert_eq!(s.escaped(&[reused], Some(7)).len(), 1);
    }

    #[test]
    fn a_stop_ends_when_nothing_is_left_or_gives_up_after_sigkill() {
        let mut s = StopState::default();
        assert_eq!(s.verdict(false, &[]), Verdict::Wait, "the leader still runs");
        assert_eq!(s.verdict(true, &[]), Verdict::Gone);
        let left = [member(9, 9), member(10, 9)];
        assert_eq!(s.verdict(true, &left), Verdict::Wait);
        s.killed = true;
        assert_eq!(s.verdict(true, &left), Verdict::Wait);
        s.give_up = true;
        let Verdict::GiveUp(why) = s.verdict(true, &left) else {
            panic!("no give-up")
        };
        assert!(
            why.starts_with("2 processes of the agent survived SIGKILL: pid 9 (state S)"),
            "{why}"
        );
        assert_eq!(s.verdict(false, &left), Verdict::Wait);
    }
}
