//! Collecting exited children: the agents' main processes, the orphans of
//! theirs the daemon adopted as their child subreaper, and children that
//! failed before their exec. Nothing else in the process forks.

use super::Msg;
use super::lifecycle::Exit;
use super::run::Supervisor;
use crate::wire::{LastExit, Status, rfc3339};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// An exit reaped before its spawn was reported is kept this long.
const UNCLAIMED_KEEP: Duration = Duration::from_secs(10);

/// Whose each child is, and exits that came before their owner did.
#[derive(Default)]
pub(super) struct Reaper {
    /// The live agents' main processes.
    pub leaders: HashMap<u32, String>,
    /// Exits reaped before the spawn that made them was reported.
    unclaimed: HashMap<u32, (Exit, Instant)>,
    /// Children that failed before their exec, not reaped yet: their exit
    /// is dropped when it comes (the pid cannot be reused before).
    failed: HashSet<u32>,
    /// Whether exits are collected yet: from the first fork on.
    listening: bool,
    /// Exec probes' processes: where each one's exit goes.
    probes: HashMap<u32, tokio::sync::oneshot::Sender<Exit>>,
}

/// What the exits reaped at once mean.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Reaped {
    /// Agents whose main process exited, and how.
    pub leaders: Vec<(String, Exit)>,
    /// Some other child (an adopted process) exited.
    pub adopted: bool,
}

impl Reaper {
    /// Exits are collected (SIGCHLD, then `waitpid` of every child) from
    /// the first fork on, listening before it: until then no child of the
    /// process is the supervisor's (orphans are only adopted from agents),
    /// so it waits for none.
    pub fn listen(&mut self, tx: &mpsc::UnboundedSender<Msg>) {
        if std::mem::replace(&mut self.listening, true) {
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

    /// A child that failed before its exec: its exit is nobody's.
    pub fn failed_child(&mut self, pid: u32) {
        if self.unclaimed.remove(&pid).is_none() {
            self.failed.insert(pid);
        }
    }

    /// `pid` is agent `id`'s main process, forked after `before`; its exit,
    /// if it was reaped already (it is then no longer a leader).
    pub fn claim(&mut self, pid: u32, id: &str, before: Instant) -> Option<Exit> {
        match self.unclaimed.remove(&pid) {
            Some((exit, at)) if at >= before => Some(exit),
            _ => {
                self.leaders.insert(pid, id.to_string());
                None
            }
        }
    }

    /// `pid` is an exec probe's process, forked after `before`: its exit
    /// goes to `exit` (at once if it was reaped already).
    pub fn probe(&mut self, pid: u32, before: Instant, exit: tokio::sync::oneshot::Sender<Exit>) {
        match self.unclaimed.remove(&pid) {
            Some((e, at)) if at >= before => {
                let _ = exit.send(e);
            }
            _ => {
                self.probes.insert(pid, exit);
            }
        }
    }

    /// The exec probes' processes running now.
    pub fn probe_pids(&self) -> Vec<u32> {
        self.probes.keys().copied().collect()
    }

    /// Sorts exits reaped at `now`.
    pub fn sort(&mut self, reaped: Vec<(u32, Exit)>, now: Instant) -> Reaped {
        let mut out = Reaped::default();
        for (pid, exit) in reaped {
            if self.failed.remove(&pid) {
                continue;
            }
            if let Some(to) = self.probes.remove(&pid) {
                let _ = to.send(exit);
                continue;
            }
            match self.leaders.remove(&pid) {
                Some(id) => out.leaders.push((id, exit)),
                None => {
                    self.unclaimed
                        .retain(|_, (_, at)| now.duration_since(*at) < UNCLAIMED_KEEP);
                    self.unclaimed.insert(pid, (exit, now));
                    out.adopted = true;
                }
            }
        }
        out
    }
}

/// Every exited child, without waiting.
fn reap_all() -> Vec<(u32, Exit)> {
    let mut reaped = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => reaped.push((pid.as_raw() as u32, Exit::Code(code))),
            Ok(WaitStatus::Signaled(pid, sig, _)) => reaped.push((pid.as_raw() as u32, Exit::Signal(sig))),
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(_) => {}
        }
    }
}

impl Supervisor {
    /// Collects exited children.
    pub(super) fn reap(&mut self) {
        let reaped = self.reaper.sort(reap_all(), Instant::now());
        for (id, exit) in reaped.leaders {
            self.exited(&id, exit);
        }
        // The last process of a stopping agent is always the daemon's own
        // child (adopted when its parent died): its exit is the moment to
        // look again.
        if reaped.adopted {
            self.adopted_exited();
        }
    }

    /// Agent `id`'s main process exited.
    pub(super) fn exited(&mut self, id: &str, exit: Exit) {
        let Some(a) = self.agents.get_mut(id) else { return };
        let ran = match &a.run {
            super::agent::Run::Live(l) => l.started.1.elapsed(),
            _ => Duration::ZERO,
        };
        if let Some(group) = a.run.leader_exited() {
            a.leftovers = Some(group);
            self.store.clear_group(id);
            // Its run is over: nothing more to probe.
            if a.cfg.probe.is_some() {
                let _ = self
                    .prober
                    .send(super::probe::Order::Forget { id: id.to_string() });
            }
        }
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
        self.act(id, |l, _| l.exited(exit, ran, &policy));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;

    #[test]
    fn a_leaders_exit_goes_to_its_agent_and_others_wait_to_be_claimed() {
        let mut r = Reaper::default();
        let t = Instant::now();
        assert_eq!(r.claim(10, "a", t), None);
        let got = r.sort(vec![(10, Exit::Code(3)), (11, Exit::Signal(Signal::SIGTERM))], t);
        assert_eq!(got.leaders, vec![("a".to_string(), Exit::Code(3))]);
        assert!(got.adopted);
        assert!(r.leaders.is_empty());
        // 11 was a spawn whose report comes after its exit.
        let before = t - Duration::from_millis(1);
        assert_eq!(r.claim(11, "b", before), Some(Exit::Signal(Signal::SIGTERM)));
        assert!(r.leaders.is_empty(), "an exited leader is no leader");
        // Claimed once.
        assert_eq!(r.claim(11, "b", before), None);
    }

    #[test]
    fn an_exit_from_before_the_fork_is_another_processs() {
        let mut r = Reaper::default();
        let t = Instant::now();
        r.sort(vec![(12, Exit::Code(0))], t);
        assert_eq!(r.claim(12, "a", t + Duration::from_millis(1)), None);
        assert_eq!(r.leaders.get(&12).map(String::as_str), Some("a"));
    }

    #[test]
    fn a_child_that_failed_before_its_exec_is_nobodys() {
        let mut r = Reaper::default();
        let t = Instant::now();
        r.failed_child(13);
        assert_eq!(r.sort(vec![(13, Exit::Code(127))], t), Reaped::default());
        // Reaped first: its exit is dropped when the failure is reported.
        r.sort(vec![(14, Exit::Code(127))], t);
        r.failed_child(14);
        assert_eq!(r.claim(14, "a", t), None);
        assert!(r.failed.is_empty());
    }

    #[test]
    fn a_probes_exit_goes_to_its_probe_whenever_it_was_reaped() {
        let mut r = Reaper::default();
        let t = Instant::now();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        r.probe(20, t, tx);
        let got = r.sort(vec![(20, Exit::Code(2))], t);
        assert_eq!(got, Reaped::default(), "neither a leader's nor adopted");
        assert_eq!(rx.try_recv(), Ok(Exit::Code(2)));
        // Reaped before it was told of: handed over when it is.
        r.sort(vec![(21, Exit::Code(0))], t);
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        r.probe(21, t, tx);
        assert_eq!(rx.try_recv(), Ok(Exit::Code(0)));
        assert!(r.unclaimed.is_empty() && r.probes.is_empty());
    }

    #[test]
    fn unclaimed_exits_are_kept_for_a_while_only() {
        let mut r = Reaper::default();
        let t = Instant::now();
        r.sort(vec![(15, Exit::Code(0))], t);
        r.sort(vec![(16, Exit::Code(0))], t + UNCLAIMED_KEEP);
        assert!(!r.unclaimed.contains_key(&15));
        assert!(r.unclaimed.contains_key(&16));
    }
}
