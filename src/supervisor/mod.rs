//! The supervisor: one task that owns every agent's state. Everything else
//! talks to it through a [`Handle`] (a message with a reply channel), and it
//! announces every status change on a broadcast channel. Process exits,
//! process-table scans and timers reach it as messages too; nothing polls.
//!
//! - `handle`: the cloneable way in.
//! - `run`: the event loop that owns the agents and dispatches messages.
//! - `configure`: the supervisor made from a config; a reload applied.
//! - `agent`: an agent's state; where its process is, as one type (`Run`).
//! - `lifecycle`: each agent's restart policy, free of I/O.
//! - `slots`: the spawn-slot queue, and a spawn from queued to live.
//! - `index`: the agents by status (and those with a stats query).
//! - `spawn`: preparing (blocking pool) and forking (the fork thread) agents.
//! - `reaper`: collecting exits (leaders, adopted orphans, failed children).
//! - `stop`: the stop signal, timeouts, leftovers, scans, the last sweep.
//! - `tree`: an agent's processes from its own tree, without a scan.
//! - `cpu`: CPU accounting and the resource sample.
//! - `vfork`: the clone and exec of one process (the unsafe island).
//! - `process`: signals, process-table scans, leftovers of a crashed daemon.
//! - `cgroup`: a cgroup per agent, where the daemon can have one.
//! - `probe`: the one task that runs every health probe.
//! - `depends`: what an agent's dependencies let it do; the order of a
//!   shutdown.
//! - `handover`: the agents written down for the next image of the daemon
//!   (an in-place upgrade), and taken back by it.

mod agent;
mod announce;
mod cgroup;
mod configure;
mod cpu;
mod depends;
mod handle;
pub mod handover;
mod index;
pub mod lifecycle;
mod probe;
pub mod process;
mod reaper;
mod run;
mod slots;
mod spawn;
mod stdin;
mod stop;
mod tree;
mod vfork;

pub use handle::{Handle, Outcome};
pub use index::Filter;
pub use spawn::{Exec, Forker, agents_nofile, keep_nofile_for_agents};
pub use stdin::Refused;

/// Agents handed over by an earlier image, with the descriptors they hold
/// (by number).
pub type Handed = (
    handover::Agents,
    HashMap<std::os::fd::RawFd, std::os::fd::OwnedFd>,
);

use crate::config::{AgentConfig, Config, StatsConfig};
use crate::logs::LogHub;
use crate::store::{Ack, Store};
use crate::wire::{AgentSummary, Desired, HealthEvent, Op, RemovedEvent, ResourcesEvent, StatusEvent};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{broadcast, mpsc, oneshot};

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("no agent named {0:?}")]
    NotFound(String),
    #[error("the daemon is shutting down")]
    ShuttingDown,
    #[error("the supervisor did not answer in time")]
    Busy,
    /// A later request asked for the opposite.
    #[error("{0}")]
    Conflict(String),
    /// The change is made, but what the operator asked for could not be
    /// stored yet (it is retried).
    #[error("the desired state could not be stored: {}", .0.chain())]
    NotStored(crate::store::StoreError),
}

/// An agent as the detail view needs it.
pub struct AgentView {
    pub summary: AgentSummary,
    pub config: Arc<AgentConfig>,
    pub hub: Arc<LogHub>,
}

/// An agent as the list needs it: its summary, and how to count its messages.
#[derive(Debug, Clone)]
pub struct Listed {
    pub summary: AgentSummary,
    pub stats: Option<StatsConfig>,
    /// CPU its processes used since the daemon started (for `/metrics`).
    pub cpu_seconds: f64,
    /// Lines it wrote since the daemon started.
    pub log_lines: u64,
}

/// What the supervisor announces, in order. Every variant is one pointer:
/// the broadcast channel keeps [`configure::EVENT_BACKLOG`] slots of it
/// from the start (4096 slots of the events inline were 420 KiB of the idle
/// daemon), and each subscriber's copy is a reference count, not a clone.
#[derive(Debug, Clone)]
pub enum Change {
    /// An agent's status changed.
    Status(Arc<StatusEvent>),
    /// Something in an agent's summary but its uptime changed.
    Summary(Arc<Listed>),
    /// A resource sample of every live agent was taken.
    Resources(Arc<ResourcesEvent>),
    /// An agent removed from the config has stopped and is gone.
    Removed(Arc<RemovedEvent>),
    /// An agent's health changed.
    Health(Arc<HealthEvent>),
}

/// What a config reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

type Reply<T> = oneshot::Sender<T>;

/// Answers a control request: at once whether it was taken (and the ack of
/// its desired state), later once the agent has settled.
pub(crate) struct ControlReply {
    accepted: Reply<Result<Ack, Error>>,
    settled: Reply<Result<AgentSummary, Error>>,
}

pub(crate) enum Msg {
    /// The agents a filter asks for, in id order.
    List(Filter, Reply<Vec<Listed>>),
    /// How many agents have each status (from the index: no agent is
    /// looked at).
    Counts(Reply<Vec<(crate::wire::Status, usize)>>),
    /// The agents that have a stats query, with it.
    StatsQueries(Reply<Vec<(String, StatsConfig)>>),
    /// The agents whose log lines are being dropped now, with how many
    /// since their last write that succeeded.
    Get(String, Reply<Option<AgentView>>),
    Control(String, Op, ControlReply),
    /// A message for an agent's stdin (the text, without its newline).
    Message {
        id: String,
        text: Vec<u8>,
        reply: Reply<Result<(), stdin::Refused>>,
    },
    Watch(Reply<(Vec<Listed>, broadcast::Receiver<Change>)>),
    /// Every change from now on.
    Subscribe(Reply<broadcast::Receiver<Change>>),
    /// At most `limit` agents, in id order, after `after`.
    Page {
        after: Option<String>,
        limit: usize,
        reply: Reply<Vec<Listed>>,
    },
    Reload(Box<Config>, Reply<ReloadReport>),
    Shutdown(Reply<()>),
    Prepared {
        id: String,
        run: u64,
        result: Result<Box<spawn::Prepared>, lifecycle::SpawnError>,
    },
    Spawned {
        id: String,
        run: u64,
        result: Result<spawn::Forked, spawn::Failed>,
    },
    /// A SIGCHLD: some child may have exited.
    ChildSignal,
    /// Time for a resource sample.
    SampleTick,
    /// A scan's answer; `sample` when a resource sample asked for it,
    /// `everything` when the last sweep at shutdown did.
    Scanned {
        found: process::Scan,
        sample: bool,
        everything: bool,
    },
    StartWindow {
        id: String,
        generation: u64,
    },
    Backoff {
        id: String,
        generation: u64,
    },
    StopTimeout {
        id: String,
        generation: u64,
    },
    KillGrace {
        id: String,
        generation: u64,
    },
    StartPeriod {
        id: String,
        generation: u64,
    },
    /// A health probe of spawn `run` passed, or failed with its detail.
    Probed {
        id: String,
        run: u64,
        result: Result<(), String>,
    },
    /// An exec probe's process: its exit goes to `exit`.
    ProbeChild {
        pid: u32,
        before: std::time::Instant,
        exit: oneshot::Sender<lifecycle::Exit>,
    },
    /// A child (of a probe) that failed before its exec: nobody's exit.
    FailedChild(u32),
    /// An in-place upgrade: once nothing is on its way, every agent taken
    /// out, and the supervisor ends.
    Handover(Reply<Result<handover::Taken, String>>),
    /// The handover numbered so waited too long for quiet.
    HandoverTimeout(u64),
    /// Answered once nothing is on its way (or why not, after
    /// [`handover::QUIET_WAIT`]): an upgrade asks before its API stops.
    WhenQuiet(Reply<Result<(), String>>),
    /// The quiet wait numbered so ran out.
    QuietTimeout(u64),
}

/// Starts the supervisor for `config`. `desired` holds what operators asked
/// for in earlier runs; agents without an entry follow `autostart`; those
/// `handed` over by an earlier image go on as they were. Agents are forked
/// by `forker`. Must be called inside the tokio runtime.
pub fn start(
    config: &Config,
    store: Store,
    desired: &HashMap<String, Desired>,
    forker: Forker,
    handed: Option<Handed>,
) -> std::io::Result<Handle> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (requests, requests_rx) = mpsc::channel(handle::REQUESTS);
    let sup = run::Supervisor::new(config, store, tx, forker, handed.is_none())?;
    let tracking = sup.tracking();
    let drops = sup.drops();
    tokio::spawn(sup.run(
        rx,
        requests_rx,
        desired.clone(),
        config.agents.values().cloned().collect(),
        handed,
    ));
    Ok(Handle::new(requests, tracking, drops))
}
