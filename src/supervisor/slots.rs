//! The way from a spawn asked for to a live process: a queue for the spawn
//! slots, preparing on the blocking pool, forking on the fork thread.

use super::Msg;
use super::agent::{Live, Run};
use super::lifecycle::SpawnError;
use super::process;
use super::run::Supervisor;
use super::spawn::{self, Forked, Prepared};
use crate::logs::capture;
use nix::sys::signal::Signal;
use std::collections::VecDeque;
use std::time::{Instant, SystemTime};

/// Spawns under way at once (prepared or forking): thousands of agents
/// starting together are prepared only as fast as they can be forked, so
/// what waits costs an entry in a queue, not a prepared environment.
const SPAWN_SLOTS: usize = 32;

/// The spawn slots and the agents waiting for one, in order.
#[derive(Default)]
pub(super) struct Slots {
    /// Spawns holding a slot (being prepared or forked).
    busy: usize,
    queue: VecDeque<String>,
}

impl Slots {
    /// Agent `id` waits for a slot.
    pub fn push(&mut self, id: String) {
        self.queue.push_back(id);
    }

    /// The next agent in line while a slot is free; the caller takes the
    /// slot ([`Slots::take`]) if the agent still wants it.
    pub fn next(&mut self) -> Option<String> {
        if self.busy < SPAWN_SLOTS {
            self.queue.pop_front()
        } else {
            None
        }
    }

    pub fn take(&mut self) {
        self.busy += 1;
    }

    pub fn release(&mut self) {
        self.busy = self.busy.saturating_sub(1);
    }
}

impl Supervisor {
    /// Starts preparing queued spawns while slots are free.
    pub(super) fn pump(&mut self) {
        while let Some(id) = self.slots.next() {
            // Dropped meanwhile (a stop), its entry is skipped.
            let Some(a) = self.agents.get_mut(&id) else {
                continue;
            };
            let Some(run) = a.run.queued() else { continue };
            a.run = Run::Preparing { run };
            self.slots.take();
            let (cfg, env, instance, tx, cgroups) = (
                a.cfg.clone(),
                self.base_env.clone(),
                self.instance.clone(),
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
    pub(super) fn release_slot(&mut self) {
        self.slots.release();
        self.pump();
    }

    /// A spawn that gave no process: the policy hears why.
    fn spawn_failed(&mut self, id: &str, e: SpawnError) {
        if let Some(a) = self.agents.get_mut(id) {
            a.run = Run::Idle;
            if !matches!(e, SpawnError::Cancelled) {
                tracing::error!(agent = id, "cannot start: {e}");
            }
            let policy = a.cfg.policy;
            self.act(id, |l, _| l.spawned(Err(e), &policy));
        }
    }

    pub(super) fn prepared(&mut self, id: &str, run: u64, result: Result<Box<Prepared>, SpawnError>) {
        if !self
            .agents
            .get(id)
            .is_some_and(|a| a.run.is_spawn(run, Run::preparing))
        {
            // Cancelled by a stop meanwhile.
            self.release_slot();
            return;
        }
        let prepared = match result {
            Ok(p) => p,
            Err(e) => {
                self.spawn_failed(id, e);
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
        self.reaper.listen(&self.tx);
        if self.forker.spawn(job).is_err() {
            let gone = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the fork thread is gone");
            let why = super::lifecycle::Why::Io {
                what: "cannot start the agent".into(),
                source: gone,
            };
            self.spawn_failed(id, SpawnError::Permanent(why));
            self.release_slot();
            return;
        }
        if let Some(a) = self.agents.get_mut(id) {
            a.run = Run::Forking { run };
        }
        self.forking += 1;
    }

    /// A fork thread's answer for spawn `run`.
    pub(super) fn spawned(&mut self, id: &str, run: u64, result: Result<Forked, spawn::Failed>) {
        self.forking = self.forking.saturating_sub(1);
        self.release_slot();
        // A child that failed before its exec is the reaper's to collect,
        // and its exit nobody's.
        let result = result.map_err(|f| {
            if let Some(pid) = f.child {
                self.reaper.failed_child(pid);
            }
            f.error
        });
        let Some(a) = self
            .agents
            .get_mut(id)
            .filter(|a| a.run.is_spawn(run, Run::forking))
        else {
            // Nobody wants it (cannot happen while an agent waits for its
            // fork, but a process must never run unsupervised).
            if let Ok(f) = result {
                process::signal_group(f.pid, Signal::SIGKILL);
            }
            return;
        };
        let f = match result {
            Ok(f) => f,
            Err(e) => return self.spawn_failed(id, e),
        };
        let capture = match capture::start(a.hub.clone(), f.output) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(agent = id, "cannot read the agent's output: {e}");
                None
            }
        };
        a.run = Run::Live(Live {
            run,
            pid: f.pid,
            started: (SystemTime::now(), Instant::now()),
            capture,
            stdin: f.stdin,
            stop: None,
        });
        let policy = a.cfg.policy;
        self.store.set_group(id, f.pid as i32);
        let early_exit = self.reaper.claim(f.pid, id, f.before);
        self.act(id, |l, _| l.spawned(Ok(()), &policy));
        // It may have exited before this answer came.
        if let Some(exit) = early_exit {
            self.exited(id, exit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawns_wait_in_order_for_a_free_slot() {
        let mut s = Slots::default();
        for i in 0..SPAWN_SLOTS + 2 {
            s.push(format!("a{i}"));
        }
        for i in 0..SPAWN_SLOTS {
            assert_eq!(s.next(), Some(format!("a{i}")));
            s.take();
        }
        assert_eq!(s.next(), None, "every slot is taken");
        s.release();
        assert_eq!(s.next().as_deref(), Some(&*format!("a{SPAWN_SLOTS}")));
        // Not taken (the agent no longer wanted it): the slot stays free.
        assert_eq!(s.next().as_deref(), Some(&*format!("a{}", SPAWN_SLOTS + 1)));
        assert_eq!(s.next(), None, "the queue is empty");
    }

    #[test]
    fn a_release_never_makes_more_slots_than_there_are() {
        let mut s = Slots::default();
        s.release();
        for i in 0..SPAWN_SLOTS + 1 {
            s.push(format!("a{i}"));
        }
        let mut taken = 0;
        while s.next().is_some() {
            s.take();
            taken += 1;
        }
        assert_eq!(taken, SPAWN_SLOTS);
    }
}
