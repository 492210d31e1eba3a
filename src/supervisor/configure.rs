//! The supervisor made from a config, and a changed config applied: what
//! the reload adds, removes and changes.

use super::agent::{Agent, Run};
use super::cgroup::Cgroups;
use super::reaper::Reaper;
use super::run::Supervisor;
use super::slots::Slots;
use super::{Change, Error};
use super::{Msg, ReloadReport, process, spawn};
use crate::config::AgentConfig;
use crate::config::Config;
use crate::logs::LogHub;
use crate::store::Store;
use crate::wire::{Desired, RemovedEvent, Status, rfc3339};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::{broadcast, mpsc};

/// Status events kept for slow subscribers before they see a lag.
pub(super) const EVENT_BACKLOG: usize = 4096;

impl Supervisor {
    pub(super) fn new(
        config: &Config,
        store: Store,
        tx: mpsc::UnboundedSender<Msg>,
        forker: spawn::Forker,
        fresh: bool,
    ) -> std::io::Result<Supervisor> {
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
            crate::config::Cgroups::Auto => match Cgroups::discover(&instance, fresh) {
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
        let instance: Arc<str> = instance.into();
        let base_env = spawn::base_env();
        let prober = super::probe::start(
            tx.clone(),
            super::probe::Spawning {
                forker: forker.clone(),
                base_env: base_env.clone(),
                instance: instance.clone(),
                cgroups: cgroups.clone(),
            },
        );
        Ok(Supervisor {
            agents: BTreeMap::new(),
            tx,
            events,
            store,
            log_dir: config.server.log_dir.as_path().into(),
            next_run: 0,
            shutting_down: Vec::new(),
            instance,
            base_env,
            forker,
            forking: 0,
            slots: Slots::default(),
            reaper: Reaper::default(),
            scanner,
            scan_in_flight: false,
            scan_wanted: false,
            sample_wanted: false,
            sample_interval: config.server.sample_interval,
            cgroups,
            lineage: HashMap::new(),
            sweep_wanted: false,
            swept: false,
            drops: Default::default(),
            index: Default::default(),
            own_children: Default::default(),
            prober,
            dependents: HashMap::new(),
            handover: None,
            handovers: 0,
            quiet_waits: Vec::new(),
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

    pub(super) fn reload(&mut self, config: Config) -> ReloadReport {
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
                self.act(&id, |l, stage| l.stop(stage));
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
                        // The same settings: take the new copy, so that the
                        // daemon's current config and this agent share one.
                        a.cfg = cfg;
                        continue;
                    }
                    report.changed.push(id.clone());
                    self.index.insert(&id, a.life.status(), cfg.stats.is_some());
                    a.hub.set_policy(cfg.log);
                    a.cfg = cfg;
                    let active = matches!(
                        a.life.status(),
                        Status::Starting | Status::Running | Status::Backoff | Status::Stopping
                    );
                    if active && a.desired == Desired::Running {
                        self.act(&id, |l, stage| l.restart(stage));
                    }
                }
            }
        }
        // The graph as the new config draws it; added agents start once
        // all are known, and waiting ones look at their (maybe new)
        // dependencies again.
        self.rebuild_dependents();
        for id in &report.added {
            self.start_if_desired(id);
        }
        let waiting: Vec<String> = self
            .agents
            .iter()
            .filter(|(_, a)| a.life.status() == Status::Waiting)
            .map(|(id, _)| id.clone())
            .collect();
        for id in waiting {
            self.act(&id, |l, _| l.dependencies_changed());
        }
        report
    }

    /// Adds an agent (stopped); [`Supervisor::start_if_desired`] starts it
    /// once every agent it may depend on is known.
    pub(super) fn add(&mut self, cfg: Arc<AgentConfig>, desired: Option<Desired>) {
        let id = cfg.id.clone();
        // Where its log goes on (also after a removal and a comeback): the
        // store keeps what its hub last set.
        let base = self.store.log_base(&id);
        let hub = LogHub::open(
            self.log_dir.clone(),
            &id,
            base,
            cfg.log,
            Some(self.store.clone()),
            self.drops.clone(),
        );
        self.index.insert(&id, Status::Stopped, cfg.stats.is_some());
        let desired = desired.unwrap_or(if cfg.autostart {
            Desired::Running
        } else {
            Desired::Stopped
        });
        self.agents
            .insert(id.clone(), Box::new(Agent::new(cfg, desired, hub)));
    }

    /// Starts agent `id` if what is desired of it is to run.
    pub(super) fn start_if_desired(&mut self, id: &str) {
        if self.agents.get(id).is_some_and(|a| a.desired == Desired::Running) {
            self.act(id, |l, _| l.start());
        }
    }

    /// Drops agent `id` if it was removed from the config and is now down:
    /// its followers and waiters are told, what was asked of it is
    /// forgotten, and its removal is announced.
    pub(super) fn drop_if_removed(&mut self, id: &str, now: SystemTime) {
        let Some(a) = self.agents.get_mut(id) else { return };
        if a.removing && !a.life.status().is_live() && matches!(a.run, Run::Idle) {
            if let Some(c) = self.cgroups.clone() {
                let id = id.to_string();
                tokio::task::spawn_blocking(move || c.remove(&id));
            }
            self.index.remove(id);
            if let Some(a) = self.agents.remove(id) {
                // Whoever follows its log is told it is gone (should it
                // come back, the store has where its log goes on).
                a.hub.close();
                for w in a.waiters {
                    let _ = w.reply.send(Err(Error::NotFound(id.to_string())));
                }
                // What an operator asked of it goes with it: should it come
                // back, it follows `autostart` (its history stays, under
                // its id, for `history` to show).
                self.store.forget_desired(id);
                let _ = self.events.send(Change::Removed(Arc::new(RemovedEvent {
                    agent_id: id.to_string(),
                    at: rfc3339(now),
                })));
            }
            tracing::info!(agent = id, "removed");
        }
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

    #[tokio::test(flavor = "multi_thread")]
    async fn a_removed_agent_that_comes_back_goes_on_where_its_log_ended() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &["a", "b"]);
        std::fs::create_dir_all(&cfg.server.log_dir).unwrap();
        let keep = crate::store::Keep {
            history: 100,
            audit: 100,
        };
        let (store, _) = Store::open(dir.path(), keep).unwrap();
        // As a hub sets it at a rotation (here, of an earlier run).
        store.set_log_base("a", 100);
        let (tx, _rx) = mpsc::unbounded_channel();
        let forker = spawn::Forker::thread().unwrap();
        let mut sup = Supervisor::new(&cfg, store.clone(), tx, forker, true).unwrap();
        for a in cfg.agents.values() {
            sup.add(a.clone(), None);
        }
        assert_eq!(sup.agents["a"].hub.base(), 100);
        assert_eq!(sup.agents["b"].hub.base(), 0);
        // Its hub rotates (sets a new base), then it is removed; back, its
        // log goes on from what the store keeps, not from where it began.
        store.set_log_base("a", 250);
        sup.reload(config(dir.path(), &["b"]));
        assert!(!sup.agents.contains_key("a"));
        sup.reload(config(dir.path(), &["a", "b"]));
        assert_eq!(sup.agents["a"].hub.base(), 250);
        // And after a restart of the daemon, from the database.
        tokio::task::block_in_place(|| store.flush());
        drop(sup);
        drop(store);
        let (store, loaded) = Store::open(dir.path(), keep).unwrap();
        assert_eq!(store.log_base("a"), 250);
        assert_eq!(loaded.log_bases.get("a"), Some(&250));
    }
}
