//! CPU accounting per agent, and the resource sample that feeds it.

use super::Change;
use super::process::{self, Member};
use super::run::Supervisor;
use crate::wire::{Resources, ResourcesEvent, rfc3339};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// CPU time of an agent's processes, counted so that a process that exits
/// between samples is not lost.
#[derive(Default)]
pub(super) struct CpuAccount {
    /// The processes of the last sample: pid -> (ticks, parent).
    seen: HashMap<u32, (u64, u32)>,
    /// Ticks of processes gone since, whose time no live parent reaped.
    gone: u64,
    /// Everything so far (never goes back).
    pub total: u64,
    last: Option<(u64, Instant)>,
}

impl CpuAccount {
    /// Takes a sample; returns the percent of one core used since the last.
    pub fn update(&mut self, members: &[Member], now: Instant) -> f64 {
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
    pub fn update_total(&mut self, now_total: u64, now: Instant) -> f64 {
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

impl Supervisor {
    /// One sampler for every agent: a tick every `sample_interval` asks
    /// for one scan of the process table (none when it is zero).
    pub(super) fn start_sampler(&self) {
        if self.sample_interval.is_zero() {
            return;
        }
        let (tx, every) = (self.tx.clone(), self.sample_interval);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if tx.send(super::Msg::SampleTick).is_err() {
                    break;
                }
            }
        });
    }

    /// Every live agent's resources from one scan, announced together.
    pub(super) fn sampled(
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
        let _ = self.events.send(Change::Resources(Arc::new(ResourcesEvent {
            at: rfc3339(SystemTime::now()),
            agents,
        })));
        // Lines dropped since the last summary: said at the sample, not
        // line by line.
        for a in self.agents.values_mut() {
            let dropped = a.hub.dropped();
            if dropped != a.announced_dropped {
                a.announced_dropped = dropped;
                let _ = self.events.send(Change::Summary(Arc::new(a.listed())));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn member(pid: u32, ppid: u32, ticks: u64) -> Member {
        Member {
            pid,
            ppid,
            pgrp: 1,
            state: 'S',
            ticks,
            rss_bytes: 0,
            top: 1,
            mark: None,
            owner: None,
            start: 0,
        }
    }

    #[test]
    fn the_first_sample_has_no_rate_and_later_ones_count_per_second() {
        let t = Instant::now();
        let mut c = CpuAccount::default();
        assert_eq!(c.update(&[member(10, 1, 50)], t), 0.0);
        let tps = process::ticks_per_second();
        // One core's worth of ticks in a second: 100 %.
        let pct = c.update(&[member(10, 1, 50 + tps as u64)], t + Duration::from_secs(1));
        assert_eq!(pct, 100.0);
        assert_eq!(c.total, 50 + tps as u64);
    }

    #[test]
    fn a_process_gone_between_samples_keeps_its_time_unless_its_parent_reaped_it() {
        let t = Instant::now();
        let mut c = CpuAccount::default();
        c.update(&[member(10, 1, 5), member(11, 10, 7), member(12, 1, 3)], t);
        // 11 was reaped by 10 (live: its time is in 10's); 12 went with
        // nobody to count it.
        c.update(&[member(10, 1, 12)], t + Duration::from_secs(1));
        assert_eq!(c.total, 12 + 3);
        // The total never goes back.
        c.update(&[], t + Duration::from_secs(2));
        assert_eq!(c.total, 15);
        c.update_total(4, t + Duration::from_secs(3));
        assert_eq!(c.total, 15);
    }
}
