//! An in-place upgrade as the supervisor sees it: once nothing is on its
//! way (no spawn, no stop, no leftovers to kill), every agent is written
//! down with what its live process holds (pid, output pipe, the start of
//! a line not ended yet), the supervisor ends without letting go of a
//! process, and the next image of the daemon takes the agents back as
//! they were: same pids, same restarts, their timers re-armed for what
//! was left of them.

use super::agent::{Live, Run};
use super::lifecycle::Lifecycle;
use super::run::{Supervisor, send_after};
use super::{Msg, Reply};
use crate::config::AgentConfig;
use crate::logs::capture;
use crate::wire::{Desired, LastExit};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a handover waits for spawns and stops under way to end.
pub const QUIET_WAIT: Duration = Duration::from_secs(10);

/// The supervisor's part of the handover. Fields added by a later
/// version have defaults, so that it reads this one's.
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(default)]
pub struct Agents {
    /// The last spawn's number: the next image goes on after it.
    pub next_run: u64,
    pub agents: Vec<AgentState>,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct AgentState {
    pub id: String,
    /// Its command: an agent gone from the config meanwhile is stopped
    /// as a removed one (with the default stop signal and timeout).
    pub command: Vec<String>,
    pub desired: Desired,
    pub life: Lifecycle,
    #[serde(default)]
    pub last_exit: Option<LastExit>,
    #[serde(default)]
    pub live: Option<LiveState>,
    #[serde(default)]
    pub timers: Vec<TimerState>,
}

/// A live main process.
#[derive(Serialize, Deserialize, Debug)]
pub struct LiveState {
    pub run: u64,
    pub pid: u32,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// How long it had run at the handover, in milliseconds.
    pub uptime_ms: u64,
    /// The descriptor of its output pipe in the next image (none when its
    /// capture had ended).
    #[serde(default)]
    pub output: Option<RawFd>,
    /// What was read of a line it had not ended.
    #[serde(default)]
    pub partial: Vec<u8>,
    /// The descriptor of the writing end of its stdin in the next image
    /// (`stdin = "pipe"`).
    #[serde(default)]
    pub stdin: Option<RawFd>,
}

/// A timer of the agent's policy, as it was left.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TimerState {
    pub kind: TimerKind,
    /// The policy's generation it was armed in.
    pub generation: u64,
    pub due_in_ms: u64,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimerKind {
    StartWindow,
    Backoff,
    StartPeriod,
}

/// A timer armed (kept beside the agent until its generation passes).
#[derive(Debug, Clone, Copy)]
pub struct Armed {
    pub kind: TimerKind,
    pub generation: u64,
    pub due: Instant,
}

impl TimerKind {
    fn msg(self, id: String, generation: u64) -> Msg {
        match self {
            TimerKind::StartWindow => Msg::StartWindow { id, generation },
            TimerKind::Backoff => Msg::Backoff { id, generation },
            TimerKind::StartPeriod => Msg::StartPeriod { id, generation },
        }
    }
}

/// The agents taken out of the supervisor, their captures still to be
/// stopped.
pub struct Taken {
    agents: Agents,
    captures: Vec<(usize, capture::Capture)>,
    /// Stdin pipes, each with its agent's place.
    stdins: Vec<(usize, OwnedFd)>,
}

impl Taken {
    /// Stops every capture (whole lines logged) and takes its pipe: the
    /// agents as the next image reads them, and the descriptors it must
    /// get (their numbers are in the agents).
    pub async fn finish(mut self) -> (Agents, Vec<OwnedFd>) {
        let mut fds = Vec::new();
        for (i, c) in self.captures {
            if let (Some(h), Some(live)) = (c.hand_over().await, self.agents.agents[i].live.as_mut()) {
                live.output = Some(h.output.as_raw_fd());
                live.partial = h.partial;
                fds.push(h.output);
            }
        }
        for (i, fd) in self.stdins {
            if let Some(live) = self.agents.agents[i].live.as_mut() {
                live.stdin = Some(fd.as_raw_fd());
                fds.push(fd);
            }
        }
        (self.agents, fds)
    }
}

/// Milliseconds in `d`, saturated.
fn ms(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

impl Supervisor {
    /// An in-place upgrade asks for the agents: they are handed over once
    /// quiet ([`Supervisor::quiet_reached`]), or the ask is refused after
    /// [`QUIET_WAIT`]. A later ask replaces an earlier one.
    pub(super) fn handover_asked(&mut self, r: Reply<Result<Taken, String>>) {
        if !self.shutting_down.is_empty() {
            let _ = r.send(Err("the daemon is shutting down".into()));
            return;
        }
        if let Some((_, earlier)) = self.handover.take() {
            let _ = earlier.send(Err("another upgrade came after this one".into()));
        }
        self.handovers += 1;
        self.handover = Some((self.handovers, r));
        send_after(QUIET_WAIT, self.tx.clone(), Msg::HandoverTimeout(self.handovers));
    }

    /// Ask `n` for the agents ran out of time (a later one goes on).
    pub(super) fn handover_timeout(&mut self, n: u64) {
        if self.handover.as_ref().is_some_and(|(m, _)| *m == n)
            && let Some((_, r)) = self.handover.take()
        {
            let _ = r.send(Err(self.not_quiet()));
        }
    }

    /// Someone waits for the agents to be quiet (an upgrade's check, while
    /// the API still serves): answered after the message at hand, at the
    /// loop's check, or refused after [`QUIET_WAIT`].
    pub(super) fn when_quiet(&mut self, r: Reply<Result<(), String>>) {
        self.handovers += 1;
        self.quiet_waits.push((self.handovers, r));
        send_after(QUIET_WAIT, self.tx.clone(), Msg::QuietTimeout(self.handovers));
    }

    /// Wait `n` for quiet ran out of time.
    pub(super) fn quiet_timeout(&mut self, n: u64) {
        if let Some(i) = self.quiet_waits.iter().position(|(m, _)| *m == n) {
            let (_, r) = self.quiet_waits.remove(i);
            let _ = r.send(Err(self.not_quiet()));
        }
    }

    fn not_quiet(&self) -> String {
        format!(
            "the agents were not quiet within {} s ({}); try again",
            QUIET_WAIT.as_secs(),
            self.busy()
        )
    }

    /// After each message: answers whoever waits for quiet, and hands the
    /// agents over when an upgrade asked and they are quiet. True when
    /// they were handed over (the supervisor must end).
    pub(super) fn quiet_reached(&mut self) -> bool {
        if self.quiet_waits.is_empty() && self.handover.is_none() || !self.quiet() {
            return false;
        }
        for (_, r) in self.quiet_waits.drain(..) {
            let _ = r.send(Ok(()));
        }
        let Some((_, r)) = self.handover.take() else {
            return false;
        };
        // Everything is written down here.
        let taken = self.take();
        let _ = r.send(Ok(taken));
        true
    }

    /// Whether nothing is on its way: no spawn, no stop, no group left to
    /// kill, no scan out.
    pub(super) fn quiet(&self) -> bool {
        self.forking == 0
            && !self.scan_in_flight
            && self.agents.values().all(|a| {
                a.leftovers.is_none() && matches!(&a.run, Run::Idle | Run::Live(Live { stop: None, .. }))
            })
    }

    /// What is still on its way, for the operator (a handover that
    /// waited in vain).
    pub(super) fn busy(&self) -> String {
        let busy: Vec<&str> = self
            .agents
            .iter()
            .filter(|(_, a)| {
                a.leftovers.is_some() || !matches!(&a.run, Run::Idle | Run::Live(Live { stop: None, .. }))
            })
            .map(|(id, _)| id.as_str())
            .take(5)
            .collect();
        if busy.is_empty() {
            "a process-table scan is under way".into()
        } else {
            format!("still starting or stopping: {}", busy.join(", "))
        }
    }

    /// Takes every agent out (call once [`Supervisor::quiet`]): the
    /// supervisor holds no process afterwards and must end. Exec probes
    /// under way are killed (the next image probes again).
    pub(super) fn take(&mut self) -> Taken {
        for pid in self.reaper.probe_pids() {
            let _ =
                nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
        }
        let now = (SystemTime::now(), Instant::now());
        let mut agents = Agents {
            next_run: self.next_run,
            agents: Vec::new(),
        };
        let mut captures = Vec::new();
        let mut stdins = Vec::new();
        for (id, a) in std::mem::take(&mut self.agents) {
            let mut a = *a;
            let generation = a.life.generation();
            let timers = a
                .timers
                .iter()
                .filter(|t| t.generation == generation)
                .map(|t| TimerState {
                    kind: t.kind,
                    generation: t.generation,
                    due_in_ms: ms(t.due.saturating_duration_since(now.1)),
                })
                .collect();
            let live = match std::mem::take(&mut a.run) {
                Run::Live(l) => {
                    if let Some(c) = l.capture {
                        captures.push((agents.agents.len(), c));
                    }
                    if let Some(fd) = l.stdin {
                        stdins.push((agents.agents.len(), fd));
                    }
                    Some(LiveState {
                        run: l.run,
                        pid: l.pid,
                        started_ms: ms(l.started.0.duration_since(UNIX_EPOCH).unwrap_or_default()),
                        uptime_ms: ms(now.1.saturating_duration_since(l.started.1)),
                        output: None,
                        partial: Vec::new(),
                        stdin: None,
                    })
                }
                _ => None,
            };
            for w in a.waiters.drain(..) {
                let _ = w.reply.send(Err(super::Error::ShuttingDown));
            }
            agents.agents.push(AgentState {
                id,
                command: a.cfg.command.clone(),
                desired: a.desired,
                life: a.life,
                last_exit: a.last_exit,
                live,
                timers,
            });
        }
        Taken {
            agents,
            captures,
            stdins,
        }
    }

    /// Takes back the agents an earlier image handed over (call once every
    /// agent of the config is added): their state, their processes and
    /// what they write, their timers. An agent the config lost meanwhile
    /// is stopped and removed as a reload would.
    pub(super) fn restore(&mut self, handed: Agents, fds: &mut HashMap<RawFd, OwnedFd>) {
        self.next_run = self.next_run.max(handed.next_run);
        let now = (SystemTime::now(), Instant::now());
        let mut gone = Vec::new();
        for s in handed.agents {
            if !self.agents.contains_key(&s.id) {
                self.add(std::sync::Arc::new(orphan_config(&s)), Some(Desired::Stopped));
                if let Some(a) = self.agents.get_mut(&s.id) {
                    a.removing = true;
                }
                gone.push(s.id.clone());
            }
            let Some(a) = self.agents.get_mut(&s.id) else {
                continue;
            };
            let old = a.life.status();
            a.desired = s.desired;
            a.life = s.life;
            a.last_exit = s.last_exit;
            let status = a.life.status();
            self.index.moved(&s.id, old, status);
            if let Some(l) = s.live {
                let capture = l.output.and_then(|fd| fds.remove(&fd)).and_then(|fd| {
                    capture::resume(a.hub.clone(), fd, l.partial)
                        .inspect_err(|e| {
                            tracing::error!(agent = s.id, "cannot read the agent's output again: {e}")
                        })
                        .ok()
                });
                let started = (
                    UNIX_EPOCH + Duration::from_millis(l.started_ms),
                    now.1
                        .checked_sub(Duration::from_millis(l.uptime_ms))
                        .unwrap_or(now.1),
                );
                a.run = Run::Live(Live {
                    run: l.run,
                    pid: l.pid,
                    started,
                    capture,
                    stdin: l.stdin.and_then(|fd| fds.remove(&fd)),
                    stop: None,
                });
                self.reaper.leaders.insert(l.pid, s.id.clone());
                if a.cfg.probe.is_some() && status.is_live() {
                    let _ = self.prober.send(super::probe::Order::Watch {
                        cfg: a.cfg.clone(),
                        run: l.run,
                    });
                }
            }
            for t in s.timers {
                a.timers.push(Armed {
                    kind: t.kind,
                    generation: t.generation,
                    due: now.1 + Duration::from_millis(t.due_in_ms),
                });
                let msg = t.kind.msg(s.id.clone(), t.generation);
                send_after(Duration::from_millis(t.due_in_ms), self.tx.clone(), msg);
            }
        }
        // Exits that came during the handover wait as zombies: collected
        // now, from the first message on.
        self.reaper.listen(&self.tx);
        let _ = self.tx.send(Msg::ChildSignal);
        for id in gone {
            tracing::warn!(
                agent = id,
                "left the config during the upgrade: stopping it (default stop signal and timeout)"
            );
            self.act(&id, |l, stage| l.stop(stage));
        }
    }
}

/// The config of an agent handed over that the config lost meanwhile:
/// enough to stop it.
fn orphan_config(s: &AgentState) -> AgentConfig {
    AgentConfig {
        id: s.id.clone(),
        command: s.command.clone(),
        cwd: "/".into(),
        env: Default::default(),
        env_file: None,
        user: None,
        autostart: false,
        stats: None,
        policy: Default::default(),
        log: Default::default(),
        probe: None,
        depends_on: Default::default(),
        stdin_pipe: false,
    }
}
