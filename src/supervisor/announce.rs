//! What the supervisor tells of an agent after a change: a log line, a
//! history row for the store, an event on the broadcast (status, health,
//! the new summary), in the order the changes came.

use super::Change;
use super::agent::Agent;
use super::run::Supervisor;
use crate::store::{HistoryRow, Store};
use crate::wire::{HealthEvent, HealthState, Status, StatusEvent, rfc3339};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::broadcast;

impl Supervisor {
    /// Announces what changed of agent `id` since its last announcement:
    /// its status transitions and health changes, then its summary. True
    /// when anything did.
    pub(super) fn announce(&mut self, id: &str, now: SystemTime) -> bool {
        let Some(a) = self.agents.get_mut(id) else {
            return false;
        };
        let transitions = a.life.take_transitions();
        let changed = !transitions.is_empty();
        let health_changes = a.life.take_health_changes();
        // In the order they came: those in the status before this change's
        // transitions first (a run found unhealthy is then stopped), the
        // rest after (a start that passed is running, then healthy).
        let before = transitions.first().map(|t| t.0);
        let (first, then): (Vec<_>, Vec<_>) = health_changes
            .iter()
            .partition(|c| before.is_none_or(|b| c.status == b));
        for c in first {
            announce_health(&self.store, &self.events, id, a, c, now);
        }
        for (old, new) in transitions {
            // The run's (its group is its leader's pid), or the one that
            // just ended on its own.
            let pid = a.run.pgid().or(a.leftovers);
            tracing::info!(agent = id, "{old} -> {new}");
            self.index.moved(id, old, new);
            let exit = a.last_exit.as_ref().filter(|_| old.is_live() && !new.is_live());
            self.store.history(HistoryRow {
                agent: id.to_string(),
                at: rfc3339(now),
                old_status: old,
                new_status: new,
                pid,
                exit_code: exit.and_then(|e| e.code),
                exit_signal: exit.and_then(|e| e.signal.clone()),
                reason: matches!(new, Status::Failed | Status::Backoff | Status::Waiting)
                    .then(|| a.life.reason().map(str::to_string))
                    .flatten(),
                health: None,
            });
            let _ = self.events.send(Change::Status(Arc::new(StatusEvent {
                agent_id: id.to_string(),
                old_status: old,
                new_status: new,
                pid,
                at: rfc3339(now),
            })));
        }
        for c in then {
            announce_health(&self.store, &self.events, id, a, c, now);
        }
        let changed = changed || !health_changes.is_empty() || a.life.take_waits_for_changed();
        // A stopped agent shows no resources (its summary below neither).
        if !a.life.status().is_live() {
            a.resources = None;
        }
        if changed {
            a.announced_dropped = a.hub.dropped();
            let _ = self.events.send(Change::Summary(Arc::new(a.listed())));
        }
        changed
    }
}

/// A change of agent `id`'s health: logged, a history row for what the
/// status does not say already (healthy, unhealthy), and an event.
fn announce_health(
    store: &Store,
    events: &broadcast::Sender<Change>,
    id: &str,
    a: &Agent,
    c: &super::lifecycle::HealthChange,
    now: SystemTime,
) {
    let detail = a.life.health_detail().map(str::to_string);
    tracing::info!(
        agent = id,
        "health {} -> {}{}",
        c.old.map_or("none", HealthState::as_str),
        c.new.map_or("none", HealthState::as_str),
        detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default()
    );
    if let Some(h @ (HealthState::Healthy | HealthState::Unhealthy)) = c.new {
        store.history(HistoryRow {
            agent: id.to_string(),
            at: rfc3339(now),
            old_status: c.status,
            new_status: c.status,
            pid: a.run.pgid(),
            exit_code: None,
            exit_signal: None,
            reason: (h == HealthState::Unhealthy).then(|| detail.clone()).flatten(),
            health: Some(h),
        });
    }
    let _ = events.send(Change::Health(Arc::new(HealthEvent {
        agent_id: id.to_string(),
        old_health: c.old,
        new_health: c.new,
        detail,
        at: rfc3339(now),
    })));
}
