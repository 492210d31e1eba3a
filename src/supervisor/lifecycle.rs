//! The per-agent state machine, free of processes and clocks so that it can
//! be tested on its own. The supervisor feeds it what happened and carries
//! out the [`Action`]s it returns.
//!
//! It holds the restart policy's state (status, counters, timers' generation,
//! a start queued behind a stop) and nothing of the process: where the
//! process is, the supervisor's `agent::Run` says, and it passes that as a
//! [`Stage`] to the calls that depend on it.

use crate::config::{OnFailure, Policy, RestartPolicy};
use crate::wire::{HealthState, Status};
use nix::sys::signal::Signal;
use std::time::Duration;

/// What the supervisor must do next for this agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Spawn the process, then report with [`Lifecycle::spawned`].
    Spawn,
    /// A stop came while the spawn is under way: drop it if it has not
    /// reached the fork yet (and report [`Lifecycle::spawned`] with an
    /// error); a process already forked is stopped normally when it arrives.
    CancelSpawn,
    /// Send the stop signal to every process of the agent and arm the stop
    /// timeout.
    SignalStop,
    /// Call [`Lifecycle::start_window_elapsed`] after this long.
    ArmStartWindow(Duration),
    /// Call [`Lifecycle::backoff_elapsed`] after this long.
    ArmBackoff(Duration),
    /// The main process exited on its own: kill what is left of the agent.
    KillLeftovers,
    /// The main process exited during a stop: report
    /// [`Lifecycle::group_gone`] once no process of the agent is left.
    AwaitGroupEmpty,
    /// Probe the new process (its health probe), reporting each result
    /// with [`Lifecycle::probed`].
    StartProbes,
    /// Call [`Lifecycle::start_period_elapsed`] after this long.
    ArmStartPeriod(Duration),
}

/// Whether an agent's dependencies let it start, as the supervisor sees
/// them when a start is due (set with [`Lifecycle::set_gate`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Gate {
    /// Met (or none).
    #[default]
    Open,
    /// Not met yet: `waiting for db (healthy)`.
    Wait(String),
    /// One failed for good: the reason.
    Failed(String),
}

/// A change of health, and the status it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthChange {
    pub old: Option<HealthState>,
    pub new: Option<HealthState>,
    pub status: Status,
}

/// A run ended by the daemon for its health, to be counted as a crash once
/// its processes are gone.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Crash {
    /// Within the start (`start_period`): counts toward `max_restarts`.
    early: bool,
    reason: String,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by {s}"),
        }
    }
}

/// Why a spawn did not give a process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// It cannot work as configured (command not found, no such cwd, ...).
    #[error(transparent)]
    Permanent(Why),
    /// The host is out of a resource for now (EMFILE, ENFILE, EAGAIN,
    /// ENOMEM): wait in backoff and try again.
    #[error(transparent)]
    Transient(Why),
    /// A stop overtook it before it was forked.
    #[error("cancelled by a stop")]
    Cancelled,
}

/// What kept a process from starting, as the operator reads it, with the
/// error under it.
#[derive(Debug, thiserror::Error)]
pub enum Why {
    #[error("command not found: {0:?} is not in PATH")]
    NotInPath(String),
    #[error("command not found: {0:?} does not exist")]
    NoSuchFile(String),
    #[error("permission denied: cannot execute {0:?}")]
    NotExecutable(String),
    /// A system call failed; `what` says what it was for.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The agent's env_file cannot be read or parsed.
    #[error("{what} {}: {source}", path.display())]
    EnvFile {
        what: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: dotenvy::Error,
    },
    /// The config asks for what cannot be (an unknown user, a NUL byte in
    /// an argument, a working directory that is not there, ...).
    #[error("{0}")]
    Invalid(String),
}

/// Where the agent's process is, as far as the policy cares (the
/// supervisor's `agent::Run::stage` gives it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// No process, and none on its way.
    None,
    /// A spawn was asked for and has not reported yet.
    Spawning,
    /// A process of the agent was spawned and its main process has not
    /// exited yet.
    Process,
    /// The main process exited during a stop; the rest of its group may
    /// still be there.
    Draining,
}

/// The delay before restart number `step` (0-based): `initial * 2^step`,
/// capped at `max`.
pub fn backoff_delay(step: u32, initial: Duration, max: Duration) -> Duration {
    initial
        .checked_mul(1u32.checked_shl(step.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max)
}

/// Written down whole at an in-place upgrade (the next image reads it:
/// a field added later needs a default), but for what is only ever
/// pending between two messages (changes not announced yet).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Lifecycle {
    status: Status,
    /// Bumped whenever a timer is armed or the state moves on, so that a
    /// timer that fires late is recognised as stale.
    generation: u64,
    /// Consecutive runs that ended within the start window.
    failures: u32,
    /// Consecutive crashes, for the backoff delay; reset by a stable run.
    backoff_step: u32,
    restarts: u32,
    reason: Option<String>,
    /// Start again once the current stop has completed.
    then_start: bool,
    /// Count as a crash once the current stop has completed (a failed
    /// health check ended the run).
    then_crash: Option<Crash>,
    /// The reason stays until the next run is healthy (it says why the
    /// last one was ended).
    reason_until_healthy: bool,
    #[serde(skip)]
    transitions: Vec<(Status, Status)>,
    /// What the probe says of the current run; `None` without a probe or
    /// a process.
    health: Option<HealthState>,
    /// Failed probes in a row since the last pass.
    misses: u32,
    /// The last failed probe's detail, this run.
    detail: Option<String>,
    /// Each with the status it came in.
    #[serde(skip)]
    health_changes: Vec<HealthChange>,
    gate: Gate,
    /// What a waiting agent waits for changed (no status change says so).
    #[serde(skip)]
    waits_for_changed: bool,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            status: Status::Stopped,
            generation: 0,
            failures: 0,
            backoff_step: 0,
            restarts: 0,
            reason: None,
            then_start: false,
            then_crash: None,
            reason_until_healthy: false,
            transitions: Vec::new(),
            health: None,
            misses: 0,
            detail: None,
            health_changes: Vec::new(),
            gate: Gate::Open,
            waits_for_changed: false,
        }
    }
}

impl Lifecycle {
    pub fn status(&self) -> Status {
        self.status
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Whether a start is queued behind the stop in progress.
    pub fn start_queued(&self) -> bool {
        self.then_start
    }

    /// The status changes since the last call, in order.
    pub fn take_transitions(&mut self) -> Vec<(Status, Status)> {
        std::mem::take(&mut self.transitions)
    }

    /// Whether what a waiting agent waits for changed since the last call
    /// (its summary says something new without a status change).
    pub fn take_waits_for_changed(&mut self) -> bool {
        std::mem::take(&mut self.waits_for_changed)
    }

    pub fn health(&self) -> Option<HealthState> {
        self.health
    }

    /// The last failed probe's status, exit code or error, this run.
    pub fn health_detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The health changes since the last call, in order.
    pub fn take_health_changes(&mut self) -> Vec<HealthChange> {
        std::mem::take(&mut self.health_changes)
    }

    /// What the agent's dependencies say now; read when a start is due.
    pub fn set_gate(&mut self, gate: Gate) {
        self.gate = gate;
    }

    fn set(&mut self, s: Status) {
        if s != self.status {
            self.transitions.push((self.status, s));
            self.status = s;
        }
        if !s.is_live() {
            self.set_health(None);
        }
        self.generation += 1;
    }

    fn set_health(&mut self, h: Option<HealthState>) {
        if h != self.health {
            self.health_changes.push(HealthChange {
                old: self.health,
                new: h,
                status: self.status,
            });
            self.health = h;
        }
    }

    /// Asks for a spawn if the dependencies let it: `starting` from now on
    /// (a stop waits for the process and stops it like any other);
    /// `waiting` while they are not met; `failed` when one failed for good.
    fn spawn(&mut self) -> Vec<Action> {
        match self.gate.clone() {
            Gate::Open => {
                if self.status == Status::Waiting {
                    self.reason = None;
                }
                self.set(Status::Starting);
                vec![Action::Spawn]
            }
            Gate::Wait(why) => {
                if self.status == Status::Waiting && self.reason.as_deref() != Some(&why) {
                    self.waits_for_changed = true;
                }
                self.reason = Some(why);
                self.reason_until_healthy = false;
                self.set(Status::Waiting);
                vec![]
            }
            Gate::Failed(why) => {
                self.reason = Some(why);
                self.reason_until_healthy = false;
                self.set(Status::Failed);
                vec![]
            }
        }
    }

    /// The dependencies of a waiting agent changed (see
    /// [`Lifecycle::set_gate`]): it starts, waits on, or fails.
    pub fn dependencies_changed(&mut self) -> Vec<Action> {
        if self.status == Status::Waiting {
            self.spawn()
        } else {
            vec![]
        }
    }

    /// An operator's start.
    pub fn start(&mut self) -> Vec<Action> {
        match self.status {
            Status::Starting | Status::Running | Status::Waiting => vec![],
            Status::Stopping => {
                self.then_start = true;
                vec![]
            }
            Status::Stopped | Status::Exited | Status::Failed | Status::Backoff => {
                self.failures = 0;
                self.backoff_step = 0;
                self.reason = None;
                self.reason_until_healthy = false;
                self.spawn()
            }
        }
    }

    /// An operator's stop, the process being at `stage`.
    pub fn stop(&mut self, stage: Stage) -> Vec<Action> {
        self.then_start = false;
        self.then_crash = None;
        match self.status {
            Status::Starting if stage == Stage::Spawning => {
                self.set(Status::Stopping);
                vec![Action::CancelSpawn]
            }
            Status::Starting | Status::Running => {
                self.set(Status::Stopping);
                vec![Action::SignalStop]
            }
            Status::Backoff | Status::Exited | Status::Failed | Status::Waiting => {
                self.set(Status::Stopped);
                vec![]
            }
            Status::Stopping | Status::Stopped => vec![],
        }
    }

    /// An operator's restart: stop if running, then start.
    pub fn restart(&mut self, stage: Stage) -> Vec<Action> {
        match self.status {
            Status::Starting | Status::Running => {
                let actions = self.stop(stage);
                self.then_start = true;
                actions
            }
            Status::Stopping => {
                self.then_start = true;
                vec![]
            }
            Status::Waiting => vec![],
            _ => self.start(),
        }
    }

    /// The outcome of [`Action::Spawn`] (once per spawn: the supervisor
    /// reports only the spawn it is waiting for).
    pub fn spawned(&mut self, result: Result<(), SpawnError>, policy: &Policy) -> Vec<Action> {
        match result {
            Ok(()) => {
                // A resource error that held it back is over (why a failed
                // health check ended the last run stays until this one is
                // healthy).
                if !self.reason_until_healthy {
                    self.reason = None;
                }
                self.misses = 0;
                self.detail = None;
                match self.status {
                    // A stop came while it was being spawned.
                    Status::Stopping => vec![Action::SignalStop],
                    _ if policy.health.is_some() => {
                        self.set_health(Some(HealthState::Starting));
                        let period = policy.health.map(|h| h.start_period).unwrap_or_default();
                        vec![Action::StartProbes, Action::ArmStartPeriod(period)]
                    }
                    _ if policy.start_window.is_zero() => {
                        self.failures = 0;
                        self.set(Status::Running);
                        vec![]
                    }
                    _ => vec![Action::ArmStartWindow(policy.start_window)],
                }
            }
            Err(_) if self.status == Status::Stopping => self.stopped(),
            Err(SpawnError::Cancelled) => vec![],
            Err(SpawnError::Permanent(why)) => {
                self.reason = Some(why.to_string());
                self.set(Status::Failed);
                vec![]
            }
            Err(SpawnError::Transient(why)) => {
                self.reason = Some(why.to_string());
                let delay = backoff_delay(self.backoff_step, policy.backoff_initial, policy.backoff_max);
                self.backoff_step = self.backoff_step.saturating_add(1);
                self.set(Status::Backoff);
                vec![Action::ArmBackoff(delay)]
            }
        }
    }

    pub fn start_window_elapsed(&mut self, generation: u64, stage: Stage) {
        if generation == self.generation && self.status == Status::Starting && stage == Stage::Process {
            self.failures = 0;
            self.set(Status::Running);
        }
    }

    /// The main process exited after running for `ran`.
    pub fn exited(&mut self, exit: Exit, ran: Duration, policy: &Policy) -> Vec<Action> {
        match self.status {
            Status::Stopping => vec![Action::AwaitGroupEmpty],
            Status::Starting | Status::Running => {
                let early = self.status == Status::Starting;
                if ran >= policy.start_window.max(policy.backoff_max) {
                    self.backoff_step = 0;
                }
                let restart = match policy.restart {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => !exit.success(),
                    RestartPolicy::Never => false,
                };
                if !restart {
                    self.set(Status::Exited);
                    return vec![Action::KillLeftovers];
                }
                let mut actions = vec![Action::KillLeftovers];
                actions.extend(self.crashed(early, &exit.to_string(), policy));
                actions
            }
            _ => vec![],
        }
    }

    /// A run ended against the agent's will (`what` says how): back off and
    /// start again, or give up after too many early ends in a row.
    fn crashed(&mut self, early: bool, what: &str, policy: &Policy) -> Vec<Action> {
        if early {
            self.failures += 1;
            if self.failures > policy.max_restarts {
                let window = match policy.health {
                    Some(h) => format!("start_period of {}", humantime::format_duration(h.start_period)),
                    None => format!(
                        "start window of {}",
                        humantime::format_duration(policy.start_window)
                    ),
                };
                self.reason = Some(format!(
                    "gave up after {} starts in a row ended within the {window}; last: {what}",
                    self.failures,
                ));
                self.reason_until_healthy = false;
                self.set(Status::Failed);
                return vec![];
            }
        }
        let delay = backoff_delay(self.backoff_step, policy.backoff_initial, policy.backoff_max);
        self.backoff_step = self.backoff_step.saturating_add(1);
        self.set(Status::Backoff);
        vec![Action::ArmBackoff(delay)]
    }

    /// A probe of the current run passed (`Ok`) or failed with its detail.
    pub fn probed(&mut self, result: Result<(), String>, policy: &Policy) -> Vec<Action> {
        let Some(h) = policy.health else { return vec![] };
        if !matches!(self.status, Status::Starting | Status::Running) || self.health.is_none() {
            return vec![];
        }
        match result {
            Ok(()) => {
                self.misses = 0;
                if self.reason_until_healthy {
                    self.reason_until_healthy = false;
                    self.reason = None;
                }
                if self.status == Status::Starting {
                    self.failures = 0;
                    self.set(Status::Running);
                }
                self.set_health(Some(HealthState::Healthy));
                vec![]
            }
            Err(detail) => {
                self.detail = Some(detail.clone());
                if self.health == Some(HealthState::Starting) {
                    // Within the start: `start_period` decides.
                    return vec![];
                }
                self.misses = self.misses.saturating_add(1);
                if self.misses < h.failures {
                    return vec![];
                }
                let was = self.health;
                self.set_health(Some(HealthState::Unhealthy));
                if h.on_failure == OnFailure::Report || was == Some(HealthState::Unhealthy) {
                    return vec![];
                }
                let reason = format!("health check failed {} times: {detail}", self.misses);
                self.end_for_health(false, reason)
            }
        }
    }

    /// The start period armed at `generation` is over: a run whose probe
    /// has not passed is a failed start.
    pub fn start_period_elapsed(&mut self, generation: u64, stage: Stage, policy: &Policy) -> Vec<Action> {
        let Some(h) = policy.health else { return vec![] };
        if generation != self.generation
            || self.status != Status::Starting
            || self.health != Some(HealthState::Starting)
            || stage != Stage::Process
        {
            return vec![];
        }
        let detail = self.detail.as_deref().unwrap_or("no probe answered");
        let reason = format!(
            "not healthy within its start_period of {}: {detail}",
            humantime::format_duration(h.start_period)
        );
        self.set_health(Some(HealthState::Unhealthy));
        self.end_for_health(true, reason)
    }

    /// Stops the run for its health; once it is gone it counts as a crash.
    fn end_for_health(&mut self, early: bool, reason: String) -> Vec<Action> {
        self.reason = Some(reason.clone());
        self.reason_until_healthy = true;
        self.then_crash = Some(Crash { early, reason });
        self.set(Status::Stopping);
        vec![Action::SignalStop]
    }

    pub fn backoff_elapsed(&mut self, generation: u64) -> Vec<Action> {
        if generation == self.generation && self.status == Status::Backoff {
            self.restarts += 1;
            self.spawn()
        } else {
            vec![]
        }
    }

    /// Whether a stop timeout armed at `generation` should still SIGKILL.
    pub fn stop_timed_out(&self, generation: u64) -> bool {
        generation == self.generation && self.status == Status::Stopping
    }

    /// Every process of the agent has exited after a stop (`stage` is
    /// where its process is now: a new spawn may be on its way).
    pub fn group_gone(&mut self, stage: Stage, policy: &Policy) -> Vec<Action> {
        if self.status != Status::Stopping || stage != Stage::None {
            return vec![];
        }
        match self.then_crash.take() {
            // An operator's start or restart meanwhile wins.
            Some(crash) if !self.then_start => {
                if crash.early && policy.restart == RestartPolicy::Never {
                    self.reason_until_healthy = false;
                    self.set(Status::Failed);
                    return vec![];
                }
                self.crashed(crash.early, &crash.reason, policy)
            }
            _ => self.stopped(),
        }
    }

    fn stopped(&mut self) -> Vec<Action> {
        self.then_crash = None;
        self.set(Status::Stopped);
        if std::mem::take(&mut self.then_start) {
            self.start()
        } else {
            vec![]
        }
    }

    /// Processes of the agent survived SIGKILL (another user's, or stuck in
    /// the kernel): the stop gives up and says so.
    pub fn unkillable(&mut self, reason: String) {
        if self.status == Status::Stopping {
            self.then_start = false;
            self.then_crash = None;
            self.reason_until_healthy = false;
            self.reason = Some(reason);
            self.set(Status::Failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(restart: RestartPolicy) -> Policy {
        Policy {
            restart,
            start_window: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            max_restarts: 2,
            ..Policy::default()
        }
    }

    fn started(p: &Policy) -> Lifecycle {
        let mut l = Lifecycle::default();
        assert_eq!(l.start(), vec![Action::Spawn]);
        assert_eq!(l.spawned(Ok(()), p), vec![Action::ArmStartWindow(p.start_window)]);
        assert_eq!(l.status(), Status::Starting);
        l
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let (i, m) = (Duration::from_secs(1), Duration::from_secs(60));
        let got: Vec<_> = (0..8).map(|s| backoff_delay(s, i, m).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(backoff_delay(200, i, m), m);
        assert_eq!(backoff_delay(3, Duration::ZERO, m), Duration::ZERO);
    }

    #[test]
    fn start_window_makes_it_running() {
        let p = policy(RestartPolicy::OnFailure);
        let mut l = started(&p);
        l.start_window_elapsed(l.generation() - 1, Stage::Process); // stale
        assert_eq!(l.status(), Status::Starting);
        l.start_window_elapsed(l.generation(), Stage::Process);
        assert_eq!(l.status(), Status::Running);
        assert_eq!(
            l.take_transitions(),
            vec![
                (Status::Stopped, Status::Starting),
                (Status::Starting, Status::Running)
            ]
        );
    }

    #[test]
    fn zero_start_window_is_running_at_once() {
        let p = Policy {
            start_window: Duration::ZERO,
            ..policy(RestartPolicy::Always)
        };
        let mut l = Lifecycle::default();
        l.start();
        assert_eq!(l.spawned(Ok(()), &p), vec![]);
        assert_eq!(l.status(), Status::Running);
    }

    #[test]
    fn crash_loop_backs_off_then_fails() {
        let p = policy(RestartPolicy::OnFailure);
        let mut l = started(&p);
        let mut delays = vec![];
        for _ in 0..p.max_restarts {
            let a = l.exited(Exit::Code(1), Duration::from_millis(10), &p);
            assert_eq!(l.status(), Status::Backoff);
            let Action::ArmBackoff(d) = a[1] else {
                panic!("{a:?}")
            };
            delays.push(d.as_millis());
            assert_eq!(l.backoff_elapsed(l.generation()), vec![Action::Spawn]);
            l.spawned(Ok(()), &p);
        }
        assert_eq!(delays, [100, 200]);
        assert_eq!(l.restarts(), 2);
        let a = l.exited(Exit::Signal(Signal::SIGSEGV), Duration::from_millis(10), &p);
        assert_eq!(a, vec![Action::KillLeftovers]);
        assert_eq!(l.status(), Status::Failed);
        let reason = l.reason().unwrap();
        assert!(reason.contains("3 starts in a row"), "{reason}");
        assert!(reason.contains("killed by SIGSEGV"), "{reason}");
        // An operator start clears it.
        assert_eq!(l.start(), vec![Action::Spawn]);
        assert_eq!(l.reason(), None);
    }

    #[test]
    fn crash_after_start_window_does_not_count_toward_failed() {
        let p = policy(RestartPolicy::Always);
        let mut l = started(&p);
        for _ in 0..10 {
            l.start_window_elapsed(l.generation(), Stage::Process);
            l.exited(Exit::Code(1), Duration::from_millis(1500), &p);
            assert_eq!(l.status(), Status::Backoff);
            l.backoff_elapsed(l.generation());
            l.spawned(Ok(()), &p);
        }
        assert_eq!(l.restarts(), 10);
    }

    #[test]
    fn stable_run_resets_backoff() {
        let p = Policy {
            backoff_max: Duration::from_secs(2),
            ..policy(RestartPolicy::Always)
        };
        let mut l = started(&p);
        l.start_window_elapsed(l.generation(), Stage::Process);
        let delay = |a: Vec<Action>| match a.as_slice() {
            [_, Action::ArmBackoff(d)] => d.as_millis(),
            _ => panic!("{a:?}"),
        };
        assert_eq!(
            delay(l.exited(Exit::Code(1), Duration::from_millis(1100), &p)),
            100
        );
        l.backoff_elapsed(l.generation());
        l.spawned(Ok(()), &p);
        l.start_window_elapsed(l.generation(), Stage::Process);
        assert_eq!(
            delay(l.exited(Exit::Code(1), Duration::from_millis(1100), &p)),
            200
        );
        l.backoff_elapsed(l.generation());
        l.spawned(Ok(()), &p);
        l.start_window_elapsed(l.generation(), Stage::Process);
        // Ran longer than backoff max: stable, delay starts over.
        assert_eq!(delay(l.exited(Exit::Code(1), Duration::from_secs(5), &p)), 100);
    }

    #[test]
    fn restart_policies() {
        let p = policy(RestartPolicy::OnFailure);
        let mut l = started(&p);
        l.start_window_elapsed(l.generation(), Stage::Process);
        l.exited(Exit::Code(0), Duration::from_secs(5), &p);
        assert_eq!(l.status(), Status::Exited);

        let p = policy(RestartPolicy::Never);
        let mut l = started(&p);
        l.exited(Exit::Code(3), Duration::from_millis(5), &p);
        assert_eq!(l.status(), Status::Exited);

        let p = policy(RestartPolicy::Always);
        let mut l = started(&p);
        l.start_window_elapsed(l.generation(), Stage::Process);
        l.exited(Exit::Code(0), Duration::from_secs(5), &p);
        assert_eq!(l.status(), Status::Backoff);
    }

    #[test]
    fn spawn_failure_is_failed_with_reason() {
        let p = policy(RestartPolicy::Always);
        let mut l = Lifecycle::default();
        l.start();
        let why = || Why::NotInPath("nope".into());
        l.spawned(Err(SpawnError::Permanent(why())), &p);
        assert_eq!(l.status(), Status::Failed);
        assert_eq!(l.reason(), Some(&*why().to_string()));
    }

    #[test]
    fn stop_waits_for_the_group() {
        let p = policy(RestartPolicy::Always);
        let mut l = started(&p);
        assert_eq!(l.stop(Stage::Process), vec![Action::SignalStop]);
        assert_eq!(l.status(), Status::Stopping);
        let generation = l.generation();
        assert!(l.stop_timed_out(generation));
        assert_eq!(
            l.exited(Exit::Signal(Signal::SIGTERM), Duration::ZERO, &p),
            vec![Action::AwaitGroupEmpty]
        );
        assert_eq!(l.status(), Status::Stopping);
        l.group_gone(Stage::None, &p);
        assert_eq!(l.status(), Status::Stopped);
        assert!(!l.stop_timed_out(generation));
        assert_eq!(l.restarts(), 0);
    }

    #[test]
    fn stop_during_backoff_cancels_the_restart() {
        let p = policy(RestartPolicy::Always);
        let mut l = started(&p);
        l.exited(Exit::Code(1), Duration::ZERO, &p);
        let generation = l.generation();
        assert_eq!(l.stop(Stage::None), vec![]);
        assert_eq!(l.status(), Status::Stopped);
        assert_eq!(l.backoff_elapsed(generation), vec![]);
    }

    #[test]
    fn restart_stops_then_starts() {
        let p = policy(RestartPolicy::Always);
        let mut l = started(&p);
        assert_eq!(l.restart(Stage::Process), vec![Action::SignalStop]);
        assert!(l.start_queued());
        l.exited(Exit::Signal(Signal::SIGTERM), Duration::ZERO, &p);
        assert_eq!(l.group_gone(Stage::None, &p), vec![Action::Spawn]);
        l.spawned(Ok(()), &p);
        assert_eq!(l.status(), Status::Starting);
        // A stop in between cancels the queued start.
        l.restart(Stage::Process);
        l.stop(Stage::Process);
        l.exited(Exit::Signal(Signal::SIGTERM), Duration::ZERO, &p);
        assert_eq!(l.group_gone(Stage::None, &p), vec![]);
        assert_eq!(l.status(), Status::Stopped);
        // Restart of a stopped agent is a start.
        assert_eq!(l.restart(Stage::None), vec![Action::Spawn]);
    }

    #[test]
    fn start_is_idempotent() {
        let p = policy(RestartPolicy::Always);
        let mut l = started(&p);
        assert_eq!(l.start(), vec![]);
        l.start_window_elapsed(l.generation(), Stage::Process);
        assert_eq!(l.start(), vec![]);
        assert_eq!(l.status(), Status::Running);
    }

    #[test]
    fn starting_is_entered_when_the_spawn_is_asked_for() {
        let p = policy(RestartPolicy::Always);
        let mut l = Lifecycle::default();
        assert_eq!(l.start(), vec![Action::Spawn]);
        assert_eq!(l.status(), Status::Starting);
        assert_eq!(l.take_transitions(), vec![(Status::Stopped, Status::Starting)]);
        // A second start while spawning asks for nothing more.
        assert_eq!(l.start(), vec![]);
        // Once its process exists, a stop signals it; while it is on its
        // way, a stop cancels the spawn.
        let mut forked = l.clone();
        forked.spawned(Ok(()), &p);
        assert_eq!(forked.stop(Stage::Process), vec![Action::SignalStop]);
        assert_eq!(l.stop(Stage::Spawning), vec![Action::CancelSpawn]);
    }

    #[test]
    fn a_stop_during_the_spawn_stops_the_process_once_it_exists() {
        let p = policy(RestartPolicy::Always);
        let mut l = Lifecycle::default();
        l.start();
        assert_eq!(l.stop(Stage::Spawning), vec![Action::CancelSpawn]);
        assert_eq!(l.status(), Status::Stopping);
        // Forked already: it gets its stop signal like any process.
        assert_eq!(l.spawned(Ok(()), &p), vec![Action::SignalStop]);
        assert_eq!(
            l.group_gone(Stage::Process, &p),
            vec![],
            "its process has not exited yet"
        );
        assert_eq!(
            l.exited(Exit::Signal(Signal::SIGTERM), Duration::ZERO, &p),
            vec![Action::AwaitGroupEmpty]
        );
        l.group_gone(Stage::None, &p);
        assert_eq!(l.status(), Status::Stopped);
    }

    #[test]
    fn a_cancelled_spawn_is_stopped_and_a_queued_start_runs() {
        let p = policy(RestartPolicy::Always);
        let mut l = Lifecycle::default();
        l.start();
        l.stop(Stage::Spawning);
        assert_eq!(l.spawned(Err(SpawnError::Cancelled), &p), vec![]);
        assert_eq!(l.status(), Status::Stopped);
        // A restart during a spawn: stop, then start again.
        l.start();
        l.restart(Stage::Spawning);
        assert_eq!(l.spawned(Err(SpawnError::Cancelled), &p), vec![Action::Spawn]);
        assert_eq!(l.status(), Status::Starting);
    }

    #[test]
    fn resource_errors_back_off_and_retry() {
        let p = policy(RestartPolicy::Never);
        let mut l = Lifecycle::default();
        l.start();
        let emfile = || Why::Io {
            what: "cannot start \"x\" for now".into(),
            source: std::io::Error::from_raw_os_error(nix::libc::EMFILE),
        };
        let a = l.spawned(Err(SpawnError::Transient(emfile())), &p);
        assert_eq!(a, vec![Action::ArmBackoff(Duration::from_millis(100))]);
        assert_eq!(l.status(), Status::Backoff);
        assert_eq!(l.reason(), Some(&*emfile().to_string()));
        assert_eq!(l.backoff_elapsed(l.generation()), vec![Action::Spawn]);
        let a = l.spawned(Err(SpawnError::Transient(emfile())), &p);
        assert_eq!(a, vec![Action::ArmBackoff(Duration::from_millis(200))]);
        l.backoff_elapsed(l.generation());
        l.spawned(Ok(()), &p);
        assert_eq!(l.status(), Status::Starting);
    }

    #[test]
    fn an_unkillable_process_fails_the_stop_with_its_reason() {
        let p = policy(RestartPolicy::Always);
        let mut l = started(&p);
        l.restart(Stage::Process);
        l.exited(Exit::Signal(Signal::SIGKILL), Duration::ZERO, &p);
        l.unkillable("1 process could not be killed".into());
        assert_eq!(l.status(), Status::Failed);
        assert!(!l.start_queued());
        assert_eq!(l.reason(), Some("1 process could not be killed"));
        assert_eq!(l.start(), vec![Action::Spawn]);
    }

    fn probed_policy(on_failure: OnFailure) -> Policy {
        Policy {
            health: Some(crate::config::HealthPolicy {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                start_period: Duration::from_secs(5),
                failures: 3,
                on_failure,
            }),
            ..policy(RestartPolicy::OnFailure)
        }
    }

    fn probing(p: &Policy) -> Lifecycle {
        let mut l = Lifecycle::default();
        l.start();
        assert_eq!(
            l.spawned(Ok(()), p),
            vec![
                Action::StartProbes,
                Action::ArmStartPeriod(Duration::from_secs(5))
            ]
        );
        assert_eq!(
            (l.status(), l.health()),
            (Status::Starting, Some(HealthState::Starting))
        );
        l
    }

    #[test]
    fn with_a_probe_it_runs_once_the_probe_passes() {
        let p = probed_policy(OnFailure::Restart);
        let mut l = probing(&p);
        let period = l.generation();
        // Failures within the start period count for nothing but the detail.
        for _ in 0..10 {
            assert_eq!(l.probed(Err("connection refused".into()), &p), vec![]);
        }
        assert_eq!(l.status(), Status::Starting);
        assert_eq!(l.health_detail(), Some("connection refused"));
        assert_eq!(l.probed(Ok(()), &p), vec![]);
        assert_eq!(
            (l.status(), l.health()),
            (Status::Running, Some(HealthState::Healthy))
        );
        // The start period's end is stale now.
        assert_eq!(l.start_period_elapsed(period, Stage::Process, &p), vec![]);
        let changes: Vec<_> = l
            .take_health_changes()
            .into_iter()
            .map(|c| (c.old, c.new, c.status))
            .collect();
        assert_eq!(
            changes,
            vec![
                (None, Some(HealthState::Starting), Status::Starting),
                (
                    Some(HealthState::Starting),
                    Some(HealthState::Healthy),
                    Status::Running
                )
            ]
        );
    }

    #[test]
    fn exactly_failures_misses_in_a_row_restart_it_like_a_crash() {
        let p = probed_policy(OnFailure::Restart);
        let mut l = probing(&p);
        l.probed(Ok(()), &p);
        // Two misses, a pass: the count starts over.
        l.probed(Err("HTTP 503".into()), &p);
        l.probed(Err("HTTP 503".into()), &p);
        l.probed(Ok(()), &p);
        l.probed(Err("HTTP 503".into()), &p);
        assert_eq!(l.probed(Err("HTTP 503".into()), &p), vec![]);
        assert_eq!(l.health(), Some(HealthState::Healthy));
        assert_eq!(l.probed(Err("HTTP 500".into()), &p), vec![Action::SignalStop]);
        assert_eq!(
            (l.status(), l.health()),
            (Status::Stopping, Some(HealthState::Unhealthy))
        );
        assert_eq!(l.reason(), Some("health check failed 3 times: HTTP 500"));
        // Once its processes are gone: backed off and started again, not
        // counted as an early failure (it was healthy).
        assert_eq!(
            l.exited(Exit::Signal(Signal::SIGTERM), Duration::from_secs(9), &p),
            vec![Action::AwaitGroupEmpty]
        );
        assert_eq!(
            l.group_gone(Stage::None, &p),
            vec![Action::ArmBackoff(Duration::from_millis(100))]
        );
        assert_eq!((l.status(), l.health()), (Status::Backoff, None));
        assert_eq!(l.backoff_elapsed(l.generation()), vec![Action::Spawn]);
        l.spawned(Ok(()), &p);
        // The reason stays until the new run is healthy; misses start at 0.
        assert_eq!(l.reason(), Some("health check failed 3 times: HTTP 500"));
        l.probed(Ok(()), &p);
        assert_eq!(l.reason(), None);
        assert_eq!(l.restarts(), 1);
    }

    #[test]
    fn on_failure_report_only_marks_it_unhealthy() {
        let p = probed_policy(OnFailure::Report);
        let mut l = probing(&p);
        l.probed(Ok(()), &p);
        for _ in 0..5 {
            assert_eq!(l.probed(Err("exit code 1".into()), &p), vec![]);
        }
        assert_eq!(
            (l.status(), l.health()),
            (Status::Running, Some(HealthState::Unhealthy))
        );
        l.probed(Ok(()), &p);
        assert_eq!(l.health(), Some(HealthState::Healthy));
    }

    #[test]
    fn no_pass_within_the_start_period_is_a_failed_start() {
        let p = Policy {
            max_restarts: 0,
            ..probed_policy(OnFailure::Restart)
        };
        let mut l = probing(&p);
        l.probed(Err("connect: refused".into()), &p);
        let period = l.generation();
        assert_eq!(
            l.start_period_elapsed(period, Stage::Process, &p),
            vec![Action::SignalStop]
        );
        assert_eq!(
            l.reason(),
            Some("not healthy within its start_period of 5s: connect: refused")
        );
        l.exited(Exit::Signal(Signal::SIGTERM), Duration::from_secs(5), &p);
        assert_eq!(l.group_gone(Stage::None, &p), vec![]);
        assert_eq!(l.status(), Status::Failed);
        assert!(
            l.reason()
                .unwrap()
                .starts_with("gave up after 1 starts in a row ended within the start_period of 5s")
        );
        // An operator's stop during that stop ends it stopped, not failed.
        let mut l = probing(&p);
        let period = l.generation();
        l.start_period_elapsed(period, Stage::Process, &p);
        l.stop(Stage::Process);
        l.exited(Exit::Signal(Signal::SIGTERM), Duration::ZERO, &p);
        l.group_gone(Stage::None, &p);
        assert_eq!(l.status(), Status::Stopped);
    }

    #[test]
    fn a_start_waits_for_its_dependencies_and_fails_with_them() {
        let p = policy(RestartPolicy::Always);
        let mut l = Lifecycle::default();
        l.set_gate(Gate::Wait("waiting for db (healthy)".into()));
        assert_eq!(l.start(), vec![]);
        assert_eq!(
            (l.status(), l.reason()),
            (Status::Waiting, Some("waiting for db (healthy)"))
        );
        // Asked again, or woken with nothing new: still waiting.
        assert_eq!(l.start(), vec![]);
        assert_eq!(l.restart(Stage::None), vec![]);
        assert_eq!(l.dependencies_changed(), vec![]);
        assert!(!l.take_waits_for_changed(), "the same wait");
        l.set_gate(Gate::Wait("waiting for db (started)".into()));
        assert_eq!(l.dependencies_changed(), vec![]);
        assert!(l.take_waits_for_changed());
        assert_eq!(l.reason(), Some("waiting for db (started)"));
        l.set_gate(Gate::Open);
        assert_eq!(l.dependencies_changed(), vec![Action::Spawn]);
        assert_eq!((l.status(), l.reason()), (Status::Starting, None));
        l.spawned(Ok(()), &p);
        // A crash, and the dependency failed meanwhile: failed with its reason.
        l.exited(Exit::Code(1), Duration::ZERO, &p);
        l.set_gate(Gate::Failed(
            "dependency db (healthy) cannot be met: it failed".into(),
        ));
        assert_eq!(l.backoff_elapsed(l.generation()), vec![]);
        assert_eq!(l.status(), Status::Failed);
        // A stop of a waiting agent: stopped.
        let mut l = Lifecycle::default();
        l.set_gate(Gate::Wait("waiting for db (started)".into()));
        l.start();
        assert_eq!(l.stop(Stage::None), vec![]);
        assert_eq!(l.status(), Status::Stopped);
        assert_eq!(
            l.take_transitions(),
            vec![
                (Status::Stopped, Status::Waiting),
                (Status::Waiting, Status::Stopped)
            ]
        );
    }
}
