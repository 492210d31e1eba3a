//! The cloneable way to talk to the supervisor.

use super::{AgentView, ControlReply, Error, Event, Listed, Msg, ReloadReport, Reply};
use crate::config::Config;
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

#[derive(Clone)]
pub struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
    tracking: std::sync::Arc<str>,
}

impl Handle {
    pub(super) fn new(tx: mpsc::UnboundedSender<Msg>, tracking: std::sync::Arc<str>) -> Handle {
        Handle { tx, tracking }
    }

    /// How the processes of each agent are tracked: `cgroup PATH`, or
    /// `process-group+subreaper`.
    pub fn tracking(&self) -> &str {
        &self.tracking
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Msg) -> Result<T, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| Error::ShuttingDown)?;
        match tokio::time::timeout(ASK_LIMIT, rx).await {
            Ok(r) => r.map_err(|_| Error::ShuttingDown),
            Err(_) => Err(Error::Busy),
        }
    }

    pub async fn list(&self) -> Result<Vec<Listed>, Error> {
        self.ask(Msg::List).await
    }

    pub async fn get(&self, id: &str) -> Result<AgentView, Error> {
        self.ask(|r| Msg::Get(id.to_string(), r))
            .await?
            .ok_or_else(|| Error::NotFound(id.to_string()))
    }

    /// Asks for `op` and waits, at most `wait`, until the agent got there.
    /// The desired state is stored first: one that cannot be stored is
    /// [`Error::NotStored`] (the agent is started or stopped all the same,
    /// and the store keeps retrying).
    pub async fn control(&self, id: &str, op: Op, wait: Duration) -> Result<Outcome, Error> {
        let deadline = tokio::time::Instant::now() + wait;
        let (accepted, accepted_rx) = oneshot::channel();
        let (settled, settled_rx) = oneshot::channel();
        self.tx
            .send(Msg::Control(
                id.to_string(),
                op,
                ControlReply { accepted, settled },
            ))
            .map_err(|_| Error::ShuttingDown)?;
        let ack = accepted_rx.await.map_err(|_| Error::ShuttingDown)??;
        // The store waits for a busy database itself; this only bounds it.
        match tokio::time::timeout(BUSY_WAIT + Duration::from_secs(2), ack).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(Error::NotStored(e)),
            Ok(Err(_)) => return Err(Error::ShuttingDown),
            Err(_) => {
                return Err(Error::NotStored(
                    "the state database did not answer in time".into(),
                ));
            }
        }
        match tokio::time::timeout_at(deadline, settled_rx).await {
            Ok(reply) => reply.map_err(|_| Error::ShuttingDown)?.map(Outcome::Done),
            Err(_) => Ok(Outcome::Pending(self.get(id).await?.summary)),
        }
    }

    /// Every summary now, and every status change after it.
    pub async fn watch(&self) -> Result<(Vec<Listed>, broadcast::Receiver<Event>), Error> {
        self.ask(Msg::Watch).await
    }

    /// Announces the agent's summary again (a `Summary` event), because
    /// something outside the supervisor's state changed in it.
    pub fn changed(&self, id: &str) {
        let _ = self.tx.send(Msg::Changed(id.to_string()));
    }

    /// Every change from now on: with [`Handle::page`] after it, a
    /// snapshot read a page at a time (a change made meanwhile shows in
    /// the pages read after it, and comes as an event too).
    pub async fn subscribe(&self) -> Result<broadcast::Receiver<Event>, Error> {
        self.ask(Msg::Subscribe).await
    }

    /// At most `limit` agents, in id order, after the one named `after`.
    pub async fn page(&self, after: Option<String>, limit: usize) -> Result<Vec<Listed>, Error> {
        self.ask(|reply| Msg::Page { after, limit, reply }).await
    }

    pub async fn reload(&self, config: Config) -> Result<ReloadReport, Error> {
        self.ask(|r| Msg::Reload(Box::new(config), r)).await
    }

    /// Stops every agent gracefully, each within its own stop timeout
    /// however long; returns once all are down.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
