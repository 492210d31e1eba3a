//! Dependencies between agents: whether an agent's conditions let it start
//! (its [`Gate`]), who waits on whom, and the order of a shutdown
//! (dependents first). Waits are woken by the changes of the agents waited
//! on (`settle` calls [`Supervisor::wake_dependents`]), never polled.

use super::agent::Agent;
use super::lifecycle::{Gate, Stage};
use super::run::Supervisor;
use crate::config::Condition;
use crate::wire::{HealthState, Status};
use std::collections::{BTreeMap, HashMap};

/// Where a dependency stands with respect to one condition.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Met {
    Yes,
    NotYet,
    /// It cannot be met any more (without an operator): why.
    Never(String),
}

/// Whether `dep` meets `cond` now.
pub(super) fn meets(dep: &Agent, cond: Condition) -> Met {
    let status = dep.life.status();
    let failed = || match dep.life.reason() {
        Some(r) => format!("it failed: {r}"),
        None => "it failed".to_string(),
    };
    match cond {
        Condition::Started => match status {
            Status::Running | Status::Exited => Met::Yes,
            Status::Starting if dep.run.stage() == Stage::Process => Met::Yes,
            Status::Failed => Met::Never(failed()),
            _ => Met::NotYet,
        },
        Condition::Healthy => match status {
            Status::Running if dep.life.health() == Some(HealthState::Healthy) => Met::Yes,
            Status::Failed => Met::Never(failed()),
            Status::Exited => Met::Never(format!("it exited ({})", exit_text(dep))),
            _ => Met::NotYet,
        },
        Condition::Succeeded => match status {
            Status::Exited if dep.last_exit.as_ref().is_some_and(|e| e.code == Some(0)) => Met::Yes,
            Status::Exited => Met::Never(format!("it did not succeed ({})", exit_text(dep))),
            Status::Failed => Met::Never(failed()),
            _ => Met::NotYet,
        },
    }
}

fn exit_text(a: &Agent) -> String {
    match &a.last_exit {
        Some(e) => match (e.code, &e.signal) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by {s}"),
            (None, None) => "no exit status".into(),
        },
        None => "no exit status".into(),
    }
}

/// The gate of an agent depending on `depends_on`, its dependencies looked
/// up in `agents`.
pub(super) fn gate(depends_on: &BTreeMap<String, Condition>, agents: &BTreeMap<String, Box<Agent>>) -> Gate {
    let mut waiting = Vec::new();
    for (dep, cond) in depends_on {
        let Some(d) = agents.get(dep) else {
            return Gate::Failed(format!("dependency {dep} is not in the config"));
        };
        match meets(d, *cond) {
            Met::Yes => {}
            Met::NotYet => waiting.push(format!("{dep} ({})", cond.as_str())),
            Met::Never(why) => {
                return Gate::Failed(format!(
                    "dependency {dep} ({}) cannot be met: {why}",
                    cond.as_str()
                ));
            }
        }
    }
    if waiting.is_empty() {
        Gate::Open
    } else {
        Gate::Wait(format!("waiting for {}", waiting.join(", ")))
    }
}

/// Who depends on each agent.
pub(super) fn dependents<'a>(
    agents: impl Iterator<Item = (&'a String, &'a BTreeMap<String, Condition>)>,
) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (id, deps) in agents {
        for dep in deps.keys() {
            out.entry(dep.clone()).or_default().push(id.clone());
        }
    }
    out
}

impl Supervisor {
    /// What agent `id`'s dependencies let it do now.
    pub(super) fn gate(&self, id: &str) -> Gate {
        match self.agents.get(id) {
            Some(a) if !a.cfg.depends_on.is_empty() => gate(&a.cfg.depends_on, &self.agents),
            _ => Gate::Open,
        }
    }

    /// Agent `id` changed: those of its dependents that wait look again;
    /// at shutdown, its dependencies whose dependents are all down stop.
    pub(super) fn wake_dependents(&mut self, id: &str) {
        let waiting: Vec<String> = self
            .dependents
            .get(id)
            .into_iter()
            .flatten()
            .filter(|d| {
                self.agents
                    .get(d.as_str())
                    .is_some_and(|a| a.life.status() == Status::Waiting)
            })
            .cloned()
            .collect();
        for d in waiting {
            self.act(&d, |l, _| l.dependencies_changed());
        }
        if !self.shutting_down.is_empty()
            && let Some(a) = self.agents.get(id)
            && !a.life.status().is_live()
        {
            let deps: Vec<String> = a.cfg.depends_on.keys().cloned().collect();
            for dep in deps {
                self.stop_for_shutdown(&dep);
            }
        }
    }

    /// Whether an agent that depends on `id` still runs.
    fn has_live_dependents(&self, id: &str) -> bool {
        self.dependents.get(id).into_iter().flatten().any(|d| {
            self.agents
                .get(d.as_str())
                .is_some_and(|a| a.life.status().is_live())
        })
    }

    /// At shutdown: agent `id` stops once no agent that depends on it runs
    /// (the last of them to go stops it); what has no process ends at once.
    pub(super) fn stop_for_shutdown(&mut self, id: &str) {
        let Some(a) = self.agents.get(id) else { return };
        match a.life.status() {
            Status::Backoff | Status::Waiting => self.act(id, |l, stage| l.stop(stage)),
            Status::Starting | Status::Running if !self.has_live_dependents(id) => {
                self.act(id, |l, stage| l.stop(stage));
            }
            // A stop under way may have a start queued behind it: dropped.
            Status::Stopping => self.act(id, |l, stage| l.stop(stage)),
            _ => {}
        }
    }

    /// The dependents map, made again from every agent's config.
    pub(super) fn rebuild_dependents(&mut self) {
        self.dependents = dependents(self.agents.iter().map(|(id, a)| (id, &a.cfg.depends_on)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Desired, LastExit};
    use std::sync::Arc;

    fn agent(id: &str) -> Box<Agent> {
        let text = format!("[agents.{id}]\ncommand = [\"x\"]\n");
        let cfg = crate::config::parse(&text, "t", std::path::Path::new("/")).unwrap();
        let hub = crate::logs::LogHub::open(
            Arc::from(std::path::Path::new("/nonexistent")),
            id,
            0,
            Default::default(),
            None,
            Default::default(),
        );
        Box::new(Agent::new(cfg.agents[id].clone(), Desired::Running, hub))
    }

    #[test]
    fn conditions_are_met_waited_for_or_never_met() {
        let mut db = agent("db");
        assert_eq!(meets(&db, Condition::Started), Met::NotYet);
        assert_eq!(meets(&db, Condition::Succeeded), Met::NotYet);
        db.last_exit = Some(LastExit {
            code: Some(0),
            signal: None,
            at: "t".into(),
        });
        // Exited with 0: succeeded, started, and never healthy again.
        let p = crate::config::Policy {
            restart: crate::config::RestartPolicy::Never,
            start_window: std::time::Duration::ZERO,
            ..Default::default()
        };
        db.life.start();
        db.life.spawned(Ok(()), &p);
        db.life
            .exited(super::super::lifecycle::Exit::Code(0), Default::default(), &p);
        assert_eq!(db.life.status(), Status::Exited);
        assert_eq!(meets(&db, Condition::Succeeded), Met::Yes);
        assert_eq!(meets(&db, Condition::Started), Met::Yes);
        assert!(matches!(meets(&db, Condition::Healthy), Met::Never(_)));
        db.last_exit.as_mut().unwrap().code = Some(3);
        assert_eq!(
            meets(&db, Condition::Succeeded),
            Met::Never("it did not succeed (exit code 3)".into())
        );
    }

    #[test]
    fn a_gate_names_what_it_waits_for_and_what_failed() {
        let mut agents = BTreeMap::new();
        agents.insert("db".to_string(), agent("db"));
        agents.insert("migrate".to_string(), agent("migrate"));
        let deps: BTreeMap<String, Condition> = [
            ("db".to_string(), Condition::Started),
            ("migrate".to_string(), Condition::Succeeded),
        ]
        .into();
        assert_eq!(
            gate(&deps, &agents),
            Gate::Wait("waiting for db (started), migrate (succeeded)".into())
        );
        let ghost: BTreeMap<String, Condition> = [("ghost".to_string(), Condition::Started)].into();
        assert_eq!(
            gate(&ghost, &agents),
            Gate::Failed("dependency ghost is not in the config".into())
        );
        let m = agents.get_mut("migrate").unwrap();
        m.life.start();
        m.life.spawned(
            Err(super::super::lifecycle::SpawnError::Permanent(
                super::super::lifecycle::Why::NotInPath("migrate".into()),
            )),
            &Default::default(),
        );
        let Gate::Failed(why) = gate(&deps, &agents) else {
            panic!()
        };
        assert_eq!(
            why,
            "dependency migrate (succeeded) cannot be met: it failed: command not found: \"migrate\" is not in PATH"
        );
        assert!(dependents([("api".to_string(), deps.clone())].iter().map(|(a, b)| (a, b)))["db"] == ["api"]);
    }
}
