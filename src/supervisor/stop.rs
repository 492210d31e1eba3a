//! Stopping agents: the stop signal, the stop timeout and SIGKILL's grace,
//! the escaped processes, what a run that ended on its own left behind,
//! and the last sweep at shutdown. The process table is scanned (on the
//! scan thread) only when an agent's own tree cannot settle it.

use super::agent::{Run, StopState, Verdict};
use super::lifecycle::Action;
use super::process::{self, Member, Scan, ScanRequest};
use super::run::{Supervisor, send_after};
use super::{Msg, tree};
use nix::sys::signal::Signal;
use std::collections::HashMap;
use std::time::Duration;

/// After SIGKILL, how long processes may take to go before the stop gives
/// up on them (another user's process, one stuck in the kernel).
const KILL_GRACE: Duration = Duration::from_secs(5);

impl Supervisor {
    /// [`Action::SignalStop`]: the stop signal to the group at once, and to
    /// what of the agent's tree left the group.
    pub(super) fn signal_stop(&mut self, id: &str) {
        let Some(a) = self.agents.get(id) else { return };
        let Run::Live(live) = &a.run else { return };
        let (policy, pgid, generation) = (a.cfg.policy, live.pid, a.life.generation());
        // A stopping agent is probed no more.
        if a.cfg.probe.is_some() {
            let _ = self
                .prober
                .send(super::probe::Order::Forget { id: id.to_string() });
        }
        // Its processes, found from its own tree before any of them goes
        // (once a parent is gone, its children are the daemon's and say
        // nothing of whose they were): remembered, and those outside the
        // group signalled with it.
        let found = self.tree_of(id, Some(pgid));
        for m in &found {
            self.lineage.insert(m.pid, (m.start, id.to_string()));
        }
        process::signal_group(pgid, policy.stop_signal);
        // A stopped (SIGSTOP) process only sees the signal once continued.
        process::signal_group(pgid, Signal::SIGCONT);
        let mut stop = StopState::default();
        signal(id, &stop.escaped(&found, Some(pgid)), policy.stop_signal);
        if let Some(a) = self.agents.get_mut(id) {
            a.run.begin_stop(stop);
        }
        let msg = Msg::StopTimeout {
            id: id.to_string(),
            generation,
        };
        send_after(policy.stop_timeout, self.tx.clone(), msg);
    }

    /// [`Action::AwaitGroupEmpty`]: the main process exited during a stop.
    /// Its own tree says at once when nothing is left; what it cannot rule
    /// out, a scan settles.
    pub(super) fn await_group_empty(&mut self, id: &str) -> Vec<Action> {
        if self.gone(id) {
            return self.group_gone(id);
        }
        self.scan();
        vec![]
    }

    /// Nothing of stopping agent `id` is left.
    fn group_gone(&mut self, id: &str) -> Vec<Action> {
        self.down(id);
        match self.agents.get_mut(id) {
            Some(a) => {
                let policy = a.cfg.policy;
                a.life.group_gone(a.run.stage(), &policy)
            }
            None => vec![],
        }
    }

    /// [`Action::KillLeftovers`]: the main process exited on its own.
    pub(super) fn kill_leftovers(&mut self, id: &str) {
        if let Some(group) = self.agents.get(id).and_then(|a| a.leftovers) {
            process::signal_group(group, Signal::SIGKILL);
            self.scan();
        }
    }

    /// An adopted process exited: a stopping agent may be gone now.
    pub(super) fn adopted_exited(&mut self) {
        if self
            .agents
            .values()
            .any(|a| a.run.stop().is_some() || a.leftovers.is_some())
        {
            self.scan();
        }
    }

    /// What of agent `id` lives now, from its own tree (see `tree`): below
    /// its `leader`, below the daemon's adopted children that are its, and
    /// in its cgroup.
    fn tree_of(&self, id: &str, leader: Option<u32>) -> Vec<Member> {
        // Its cgroup holds every process of it, for sure: nothing to walk.
        if let Some(c) = &self.cgroups {
            return c
                .procs(id)
                .into_iter()
                .filter_map(|p| Member::now(p, 0))
                .collect();
        }
        let leaders = &self.reaper.leaders;
        let mut out = Vec::new();
        if let Some(l) = leader.filter(|l| leaders.contains_key(l)) {
            tree::subtree(l, l, &mut out);
        }
        let adopted: Vec<u32> = self
            .own_children
            .get_or_init(|| tree::children(std::process::id()))
            .iter()
            .copied()
            .filter(|p| !leaders.contains_key(p))
            .collect();
        if !adopted.is_empty() {
            let groups = self.groups();
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
        out
    }

    /// Each agent's process groups (current run and leftovers).
    fn groups(&self) -> HashMap<u32, String> {
        let mut groups = HashMap::new();
        for a in self.agents.values() {
            for g in a.run.pgid().iter().chain(a.leftovers.iter()) {
                groups.insert(*g, a.cfg.id.clone());
            }
        }
        groups
    }

    /// Whether nothing of stopping agent `id` is left: its leader exited,
    /// its group is empty, and its tree holds nothing.
    fn gone(&self, id: &str) -> bool {
        let Some(a) = self.agents.get(id) else { return true };
        if a.run.leader().is_some() {
            return false;
        }
        if let Some(pgid) = a.run.pgid()
            && nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), None)
                != Err(nix::errno::Errno::ESRCH)
        {
            return false;
        }
        self.tree_of(id, None).is_empty()
    }

    /// Asks the scan thread to look at the process table (at most one scan
    /// in flight; requests meanwhile are answered by the next one).
    pub(super) fn scan(&mut self) {
        if self.scan_in_flight {
            self.scan_wanted = true;
            return;
        }
        let groups = self
            .agents
            .values()
            .filter(|a| a.run.stop().is_some())
            .filter_map(|a| a.run.pgid())
            .chain(self.agents.values().filter_map(|a| a.leftovers))
            .collect();
        let req = ScanRequest {
            leaders: self.reaper.leaders.keys().copied().collect(),
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

    pub(super) fn scanned(&mut self, scan: Scan, sample: bool, everything: bool) {
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
        let owner = self.groups();
        let mut by_agent: HashMap<String, Vec<Member>> = HashMap::new();
        let mut lineage = HashMap::new();
        for m in found {
            // Its cgroup says for sure; then its group, its leader, its
            // mark, or, adopted, whose it was when a scan saw it before.
            let id = m
                .owner
                .clone()
                .or_else(|| owner.get(&m.pgrp).cloned())
                .or_else(|| self.reaper.leaders.get(&m.top).cloned())
                .or_else(|| m.mark.clone())
                .or_else(|| {
                    self.lineage
                        .get(&m.pid)
                        .filter(|(start, _)| *start == m.start)
                        .map(|(_, id)| id.clone())
                });
            if let Some(id) = id {
                if self.cgroups.is_none() {
                    lineage.insert(m.pid, (m.start, id.clone()));
                }
                by_agent.entry(id).or_default().push(m);
            }
        }
        self.lineage = lineage;
        if sample {
            self.sampled(&by_agent, &usage);
        }
        let ids: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| a.run.stop().is_some() || a.leftovers.is_some())
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

    /// Acts on what a scan found of one stopping (or crashed) agent.
    fn examine(&mut self, id: &str, members: Vec<Member>) {
        let Some(a) = self.agents.get_mut(id) else { return };
        let policy = a.cfg.policy;
        if let Some(old) = a.leftovers.take() {
            // A new run may have started since: its processes are not leftovers.
            let current = a.run.leader();
            for m in &members {
                let ours_now = current.is_some_and(|c| m.top == c || m.pgrp == c);
                if m.pgrp == old || !ours_now {
                    tracing::debug!(agent = id, pid = m.pid, "killing a leftover process");
                    process::signal_member(m, Signal::SIGKILL);
                }
            }
        }
        let pgid = a.run.pgid();
        let leader_gone = a.run.leader().is_none();
        let Some(s) = a.run.stop_mut() else { return };
        // What left the group and the stop signal missed.
        signal(id, &s.escaped(&members, pgid), policy.stop_signal);
        if s.killed {
            if let Some(c) = &self.cgroups {
                c.kill(id);
            }
            for m in &members {
                process::signal_member(m, Signal::SIGKILL);
            }
        }
        match s.verdict(leader_gone, &members) {
            Verdict::Wait => {}
            Verdict::Gone => {
                let actions = self.group_gone(id);
                self.act(id, |_, _| actions);
            }
            Verdict::GiveUp(reason) => {
                tracing::error!(agent = id, "stop gave up: {reason}");
                self.act(id, |l, _| {
                    l.unkillable(reason);
                    vec![]
                });
            }
        }
    }

    pub(super) fn stop_timeout(&mut self, id: &str, generation: u64) {
        let Some(a) = self.agents.get_mut(id) else { return };
        if !a.life.stop_timed_out(generation) {
            return;
        }
        let timeout = a.cfg.policy.stop_timeout;
        let pgid = a.run.pgid();
        let Some(s) = a.run.stop_mut() else { return };
        tracing::warn!(
            agent = id,
            "did not stop within {}; sending SIGKILL to every process of it",
            humantime::format_duration(timeout)
        );
        s.killed = true;
        if let Some(pgid) = pgid {
            process::signal_group(pgid, Signal::SIGKILL);
        }
        if let Some(c) = &self.cgroups {
            c.kill(id);
        }
        let msg = Msg::KillGrace {
            id: id.to_string(),
            generation,
        };
        send_after(KILL_GRACE, self.tx.clone(), msg);
        self.scan();
    }

    pub(super) fn kill_grace(&mut self, id: &str, generation: u64) {
        if let Some(a) = self.agents.get_mut(id)
            && a.life.stop_timed_out(generation)
            && let Some(s) = a.run.stop_mut()
        {
            s.give_up = true;
            self.scan();
        }
    }
}

/// Sends the stop signal to each of `members` (and SIGCONT: a stopped
/// process only sees it once continued).
fn signal(id: &str, members: &[&Member], sig: Signal) {
    for m in members {
        tracing::debug!(
            agent = id,
            pid = m.pid,
            "stopping a process that left the agent's group"
        );
        process::signal_member(m, sig);
        process::signal_member(m, Signal::SIGCONT);
    }
}
