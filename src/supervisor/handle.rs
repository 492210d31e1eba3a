//! The cloneable way to talk to the supervisor.

use super::{AgentView, Change, ControlReply, Error, Filter, Listed, Msg, ReloadReport, Reply};
use crate::config::{Config, StatsConfig};
use crate::store::BUSY_WAIT;
use crate::wire::{AgentSummary, Op};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

/// How long a question to the supervisor may take: it answers in
/// microseconds, so this only guards against a wedged daemon.
const ASK_LIMIT: Duration = Duration::from_secs(30);

/// How a control request ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The agent got where it was asked to (or gave up trying, as a failed
    /// start does).
    Done(AgentSummary),
    /// Still on its way when the wait ran out (e.g. `stopping` under a long
    /// `stop_timeout`).
    Pending(AgentSummary),
}

/// Requests waiting for the supervisor at most; a caller beyond waits for
/// a place (see [`Handle`]).
pub(super) const REQUESTS: usize = 1024;

/// The way in. Requests (from the API) go through a bounded queue: a flood
/// of them waits for the supervisor instead of growing its queue without
/// end. That cannot deadlock: callers wait on the supervisor, which never
/// waits on a caller (it answers on oneshots and announces on a broadcast
/// that leaves a slow listener behind) nor sends into that queue itself.
/// What the supervisor's own helpers report (exits, spawns, timers, scans)
/// goes through its own queue, bounded by the number of agents.
#[derive(Clone)]
pub struct Handle {
    requests: mpsc::Sender<Msg>,
    tracking: std::sync::Arc<str>,
    drops: std::sync::Arc<crate::logs::Drops>,
}

impl Handle {
    pub(super) fn new(
        requests: mpsc::Sender<Msg>,
        tracking: std::sync::Arc<str>,
        drops: std::sync::Arc<crate::logs::Drops>,
    ) -> Handle {
        Handle {
            requests,
            tracking,
            drops,
        }
    }

    /// What every agent's log is dropping, as it is now (no message to the
    /// supervisor: `/health` reads it).
    pub fn drops(&self) -> &crate::logs::Drops {
        &self.drops
    }

    /// How the processes of each agent are tracked: `cgroup PATH`, or
    /// `process-group+subreaper`.
    pub fn tracking(&self) -> &str {
        &self.tracking
    }

    /// Waits (at most [`handover::QUIET_WAIT`]) until no agent is
    /// starting or stopping; `Err` names those that still were.
    ///
    /// [`handover::QUIET_WAIT`]: super::handover::QUIET_WAIT
    pub async fn when_quiet(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Msg::WhenQuiet(tx))
            .await
            .map_err(|_| "the daemon is shutting down".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the daemon is shutting down".into()))
    }

    /// Waits (at most [`handover::QUIET_WAIT`]) until no agent is
    /// starting or stopping, then takes every agent out for an in-place
    /// upgrade: the supervisor ends, holding on to every process. `Err`
    /// says why it did not (the supervisor goes on).
    ///
    /// [`handover::QUIET_WAIT`]: super::handover::QUIET_WAIT
    pub async fn hand_over(&self) -> Result<super::handover::Taken, String> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Msg::Handover(tx))
            .await
            .map_err(|_| "the daemon is shutting down".to_string())?;
        rx.await
            .unwrap_or_else(|_| Err("the daemon is shutting down".into()))
    }

    /// The exit of the daemon's child `pid`, spawned after `before` by
    /// something other than the supervisor (the supervisor's reaper
    /// collects every child's exit, so it hands this one over).
    pub async fn child_exit(
        &self,
        pid: u32,
        before: std::time::Instant,
    ) -> oneshot::Receiver<super::lifecycle::Exit> {
        let (exit, rx) = oneshot::channel();
        let _ = self.requests.send(Msg::ProbeChild { pid, before, exit }).await;
        rx
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Msg) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        // The wait for a place counts toward the limit too.
        let asked = async {
            self.requests
                .send(make(tx))
                .await
                .map_err(|_| Error::ShuttingDown)?;
            rx.await.map_err(|_| Error::ShuttingDown)
        };
        match tokio::time::timeout(ASK_LIMIT, asked).await {
            Ok(r) => r,
            Err(_) => Err(Error::Busy),
        }
    }

    /// The agents `filter` asks for, in id order: those of one status are
    /// found without a look at the others.
    pub async fn list(&self, filter: Filter) -> Result<Vec<Listed>, Error> {
        self.ask(|r| Msg::List(filter, r)).await
    }

    /// The agents that have a stats query, with it.
    pub async fn stats_queries(&self) -> Result<Vec<(String, StatsConfig)>, Error> {
        self.ask(Msg::StatsQueries).await
    }

    pub async fn get(&self, id: &str) -> Result<AgentView, Error> {
        self.ask(|r| Msg::Get(id.to_string(), r))
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// Writes `text` and a newline to agent `id`'s stdin pipe, whole or
    /// not at all, without waiting for the agent.
    pub async fn message(&self, id: &str, text: Vec<u8>) -> Result<(), super::Refused> {
        let id = id.to_string();
        match self.ask(|reply| Msg::Message { id, text, reply }).await {
            Ok(done) => done,
            Err(e) => Err(super::Refused::Unavailable(e.to_string())),
        }
    }

    /// Asks for `op` and waits, at most `wait`, until the agent got there.
    /// The desired state is stored first: one that cannot be stored is
    /// [`Error::NotStored`] (the agent is started or stopped all the same,
    /// and the store keeps retrying).
    pub async fn control(&self, id: &str, op: Op, wait: Duration) -> Result<Outcome, Error> {
        let deadline = tokio::time::Instant::now() + wait;
        let (accepted, accepted_rx) = oneshot::channel();
        let (settled, settled_rx) = oneshot::channel();
        let sent = self.requests.send(Msg::Control(
            id.to_string(),
            op,
            ControlReply { accepted, settled },
        ));
        match tokio::time::timeout(ASK_LIMIT, sent).await {
            Ok(r) => r.map_err(|_| Error::ShuttingDown)?,
            Err(_) => return Err(Error::Busy),
        }
        let ack = accepted_rx.await.map_err(|_| Error::ShuttingDown)??;
        // The store waits for a busy database itself; this only bounds it.
        match tokio::time::timeout(BUSY_WAIT + Duration::from_secs(2), ack).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(Error::NotStored(e)),
            Ok(Err(_)) => return Err(Error::ShuttingDown),
            Err(_) => return Err(Error::NotStored(crate::store::StoreError::NoAnswer)),
        }
        match tokio::time::timeout_at(deadline, settled_rx).await {
            Ok(reply) => reply.map_err(|_| Error::ShuttingDown)?.map(Outcome::Done),
            Err(_) => Ok(Outcome::Pending(self.get(id).await?.summary)),
        }
    }

    /// Every summary now, and every status change after it.
    pub async fn watch(&self) -> Result<(Vec<Listed>, broadcast::Receiver<Change>), Error> {
        self.ask(Msg::Watch).await
    }

    /// Every change from now on: with [`Handle::page`] after it, a
    /// snapshot read a page at a time (a change made meanwhile shows in
    /// the pages read after it, and comes as an event too).
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<Change>, Error> {
        self.ask(Msg::Subscribe).await
    }

    /// At most `limit` agents, in id order, after the one named `after`.
    pub async fn page(&self, after: Option<String>, limit: usize) -> Result<Vec<Listed>, Error> {
        self.ask(|reply| Msg::Page { after, limit, reply }).await
    }

    /// How many agents have each status (no agent is looked at).
    pub async fn counts(&self) -> Result<Vec<(crate::wire::Status, usize)>, Error> {
        self.ask(Msg::Counts).await
    }

    pub async fn reload(&self, config: Config) -> Result<ReloadReport, Error> {
        self.ask(|r| Msg::Reload(Box::new(config), r)).await
    }

    /// Stops every agent gracefully, each within its own stop timeout
    /// however long; returns once all are down.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Msg::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Twice as many requests as the queue holds: the rest wait for a
    /// place, and every one is answered once the supervisor gets to it.
    #[tokio::test]
    async fn a_flood_of_requests_waits_for_room_and_is_answered() {
        let (requests, mut rx) = mpsc::channel(REQUESTS);
        let handle = Handle::new(requests, "process-group+subreaper".into(), Default::default());
        let callers: Vec<_> = (0..2 * REQUESTS)
            .map(|_| {
                let h = handle.clone();
                tokio::spawn(async move { h.list(Filter::default()).await.map(|l| l.len()) })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while rx.len() < REQUESTS {
            assert!(Instant::now() < deadline, "{} queued", rx.len());
            tokio::task::yield_now().await;
        }
        // Full: the other callers wait, nothing more is queued.
        tokio::task::yield_now().await;
        assert_eq!(rx.len(), REQUESTS);
        // The supervisor answers each in turn; the waiting ones get in.
        for _ in 0..2 * REQUESTS {
            match rx.recv().await {
                Some(Msg::List(_, reply)) => {
                    let _ = reply.send(Vec::new());
                }
                _ => panic!("not a list request"),
            }
        }
        for c in callers {
            assert_eq!(c.await.unwrap().ok(), Some(0));
        }
    }
}
