//! The protocol: every type that crosses the HTTP API, the rules of agent
//! ids, and certificate fingerprints. The server produces these and the
//! client consumes them, so both share this one definition; it depends on
//! no part of the server (with the `server` feature, the OpenAPI schemas are
//! derived here too).

use serde::{Deserialize, Serialize};

/// Where an agent is in its lifecycle.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "server", salvo(schema(name = "Status")))]
pub enum Status {
    Starting,
    Running,
    Stopping,
    /// An operator stopped it, or it never started.
    Stopped,
    /// It ended and its restart policy does not restart it.
    Exited,
    /// Waiting to restart after a crash.
    Backoff,
    /// Gave up restarting, or could not be spawned (see `reason`).
    Failed,
    /// Wants to run, and waits for its dependencies (`reason` names them).
    Waiting,
}

impl Status {
    /// Every status, in the order of the enum.
    pub const ALL: [Status; 8] = [
        Status::Starting,
        Status::Running,
        Status::Stopping,
        Status::Stopped,
        Status::Exited,
        Status::Backoff,
        Status::Failed,
        Status::Waiting,
    ];

    /// Whether a process of the agent may exist.
    pub fn is_live(self) -> bool {
        matches!(self, Status::Starting | Status::Running | Status::Stopping)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
            Status::Exited => "exited",
            Status::Backoff => "backoff",
            Status::Failed => "failed",
            Status::Waiting => "waiting",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no status (or no desired state).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {given:?}: expected {expected}")]
pub struct UnknownName {
    pub what: &'static str,
    pub given: String,
    pub expected: &'static str,
}

/// The one way from a name to a status: [`Status::as_str`] read back (the
/// serde names are the same, as a test checks).
impl std::str::FromStr for Status {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Status, UnknownName> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "status",
                given: s.to_string(),
                expected: "starting, running, stopping, stopped, exited, backoff, failed or waiting",
            })
    }
}

/// What an agent's health probe says (agents without a probe have none).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug, Hash)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "server", salvo(schema(name = "HealthState")))]
pub enum HealthState {
    /// Within `start_period`, not passed yet.
    Starting,
    Healthy,
    /// `failures` probes in a row failed.
    Unhealthy,
}

impl HealthState {
    pub const ALL: [HealthState; 3] = [
        HealthState::Starting,
        HealthState::Healthy,
        HealthState::Unhealthy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Starting => "starting",
            HealthState::Healthy => "healthy",
            HealthState::Unhealthy => "unhealthy",
        }
    }
}

impl std::fmt::Display for HealthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an operator asked for; kept across daemon restarts.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "server", salvo(schema(name = "Desired")))]
pub enum Desired {
    Running,
    Stopped,
}

impl Desired {
    pub fn as_str(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        }
    }
}

impl std::str::FromStr for Desired {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Desired, UnknownName> {
        [Desired::Running, Desired::Stopped]
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| UnknownName {
                what: "desired state",
                given: s.to_string(),
                expected: "running or stopped",
            })
    }
}

/// How the last process of an agent ended.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "LastExit")))]
pub struct LastExit {
    /// Exit code, when the process exited normally.
    pub code: Option<i32>,
    /// Signal name (e.g. `SIGKILL`), when a signal ended it.
    pub signal: Option<String>,
    /// RFC 3339 time of the exit.
    pub at: String,
}

/// One agent as the API lists it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "AgentSummary")))]
pub struct AgentSummary {
    pub id: String,
    pub status: Status,
    pub desired: Desired,
    pub pid: Option<u32>,
    /// RFC 3339 time the current process was started.
    pub started_at: Option<String>,
    pub uptime_s: Option<u64>,
    /// Restarts done by the restart policy since the daemon started.
    pub restarts: u32,
    pub last_exit: Option<LastExit>,
    /// From the agent's `stats` query; null when there is none or it fails.
    pub msg_count_24h: Option<i64>,
    pub command: Vec<String>,
    /// Why the agent is `failed`, or why the last start did not succeed.
    pub reason: Option<String>,
    /// Log lines that could not be written (disk full, permissions).
    pub dropped_log_lines: u64,
    /// What every process of the agent uses together (descendants that left
    /// its group included); null when nothing runs or sampling is off.
    #[serde(default)]
    pub resources: Option<Resources>,
    /// What its health probe says while it runs; null without a probe (or
    /// when nothing runs).
    #[serde(default)]
    pub health: Option<HealthState>,
    /// The last failed probe's status, exit code or error (at most 1 KiB).
    #[serde(default)]
    pub health_detail: Option<String>,
}

/// An agent's processes, summed, as of the last sample.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "Resources")))]
pub struct Resources {
    /// Percent of one core over the last sample interval.
    pub cpu_pct: f64,
    pub rss_bytes: u64,
    pub processes: u32,
}

/// `/sse/status`'s `resources` event: every live agent's resources after a
/// sample.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "ResourcesEvent")))]
pub struct ResourcesEvent {
    pub at: String,
    pub agents: std::collections::BTreeMap<String, Resources>,
}

/// One status change of an agent, as its history keeps it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "HistoryEntry")))]
pub struct HistoryEntry {
    /// Pass as `before` to page on.
    pub id: i64,
    pub at: String,
    pub old_status: Status,
    pub new_status: Status,
    pub pid: Option<u32>,
    /// How its process ended, on a change from a live status.
    pub exit: Option<ExitInfo>,
    pub reason: Option<String>,
    /// The health after this change, on a change of health (the status
    /// stays the same then).
    #[serde(default)]
    pub health: Option<HealthState>,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "ExitInfo")))]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<String>,
}

/// The data of a `line` event of `/sse/logs` (several agents in one
/// stream); its `id` is `<agent>:<cursor>`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "AgentLine")))]
pub struct AgentLine {
    pub agent: String,
    pub line: String,
}

/// The body of `POST /sse/logs`: where to resume each agent, for more
/// agents than a request line holds (`after=` of `GET /sse/logs`).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug, Default)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "LogResume")))]
pub struct LogResume {
    /// Agent id -> the cursor of its last line received.
    pub after: std::collections::BTreeMap<String, u64>,
}

/// A status change, as `/sse/status` sends it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "StatusEvent")))]
pub struct StatusEvent {
    pub agent_id: String,
    pub old_status: Status,
    pub new_status: Status,
    pub pid: Option<u32>,
    pub at: String,
}

/// A change of an agent's health, as `/sse/status` sends it (a `health`
/// event).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "HealthEvent")))]
pub struct HealthEvent {
    pub agent_id: String,
    pub old_health: Option<HealthState>,
    pub new_health: Option<HealthState>,
    /// The last failed probe's status, exit code or error.
    pub detail: Option<String>,
    pub at: String,
}

/// An agent left the config (a reload) and is gone once it stopped, as
/// `/sse/status` sends it (a `removed` event): forget it. Should it come
/// back, it is announced like a new agent.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "RemovedEvent")))]
pub struct RemovedEvent {
    pub agent_id: String,
    pub at: String,
}

/// The agent detail view: summary, effective config and recent log lines.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "AgentDetail")))]
pub struct AgentDetail {
    #[serde(flatten)]
    pub summary: AgentSummary,
    pub config: AgentConfigView,
    pub logs: Vec<LogLine>,
}

/// An agent's configuration as the API shows it (env values redacted).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "AgentConfig")))]
pub struct AgentConfigView {
    pub command: Vec<String>,
    pub cwd: Option<String>,
    /// Variable names; every value reads `"<redacted>"`.
    pub env: std::collections::BTreeMap<String, String>,
    pub env_file: Option<String>,
    pub user: Option<String>,
    pub autostart: bool,
    pub restart: String,
    pub stop_signal: String,
    pub stop_timeout_ms: u64,
    pub start_window_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub max_restarts: u32,
    pub log_max_size: u64,
    pub log_keep: u32,
    pub log_timestamps: bool,
    pub has_stats: bool,
    /// Whether it has a `stats.messages` query (`/sse/agents/{id}/messages`).
    #[serde(default)]
    pub has_messages: bool,
    /// The health probe and its timing, as one line; null without one.
    #[serde(default)]
    pub health: Option<String>,
    /// Agent id -> `started`, `healthy` or `succeeded`.
    #[serde(default)]
    pub depends_on: std::collections::BTreeMap<String, String>,
}

/// One log line with its resume cursor (the log offset just past it).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "LogLine")))]
pub struct LogLine {
    pub cursor: u64,
    pub text: String,
}

/// `/health`. Without a key only `status` and `version` are sent; the
/// details need a key.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "Health")))]
pub struct Health {
    /// `ok`, or `degraded` when something below needs attention.
    pub status: String,
    pub version: String,
    /// The last config reload error, if the running config is older than the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_error: Option<String>,
    /// Log lines that could not be written since the daemon started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropped_log_lines: Option<u64>,
    /// The agents whose log cannot be written now (disk full,
    /// permissions): lines dropped since its last write that succeeded.
    /// While any is here, the daemon is `degraded`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub dropping_log_lines: std::collections::BTreeMap<String, u64>,
    /// What makes the daemon `degraded` (beside a config error), one
    /// sentence each: state not stored, open files near the limit, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    /// How each agent's processes are tracked: `cgroup PATH` (a cgroup
    /// per agent under PATH), or `process-group+subreaper`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_tracking: Option<String>,
    /// The daemon's process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// RFC 3339 time the daemon started serving (kept across in-place
    /// upgrades).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// RFC 3339 time of the last in-place upgrade; null when there was
    /// none since the daemon started (absent without a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgraded_at: Option<Option<String>>,
    /// The NATS publisher of `[fleet]`, when there is one (with a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetLink>,
    /// The certificate served, over HTTPS (with a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsCertificate>,
}

/// `/health`'s view of the certificate the daemon serves.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "TlsCertificate")))]
pub struct TlsCertificate {
    /// `files`, `self-signed` or `acme`.
    pub source: String,
    /// RFC 3339 end of validity; absent while ACME has none yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
    /// Seconds until then (negative once expired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_s: Option<i64>,
    /// Serial number, hex (as `openssl x509 -serial` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// ACME: orders failed in a row (0 while all is well).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme_failures: Option<u32>,
    /// ACME: the last failure, while failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme_error: Option<String>,
    /// ACME: RFC 3339 time of the next attempt, while failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acme_retry_at: Option<String>,
}

/// One host of the fleet, as `GET /fleet` and `/sse/fleet` show it.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "FleetHost")))]
pub struct FleetHost {
    pub host: String,
    /// Where its API (and dashboard, under `/ui/`) is reached.
    pub url: String,
    pub version: String,
    pub agents: u64,
    /// Agents by status (every status, zeros included).
    pub by_status: std::collections::BTreeMap<String, u64>,
    /// RFC 3339 time of its last heartbeat.
    pub last_heartbeat: String,
    /// No heartbeat for 15 s: it may be down, or cut off from NATS.
    pub stale: bool,
}

/// `/health`'s view of the NATS publisher (`[fleet]`).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "FleetLink")))]
pub struct FleetLink {
    /// The server (its password hidden).
    pub nats: String,
    /// This daemon's name in the subjects (`agentsd.<host>.status`).
    pub host: String,
    pub connected: bool,
    /// Events waiting for NATS (at most `[fleet] queue`, 10,000 by default).
    pub queued: usize,
    /// Events dropped since the daemon started (the queue was full).
    pub dropped: u64,
    /// The client's last error, until it connects again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `POST /upgrade`'s answer: the check of the new binary passed and the
/// handover is under way (the new image answers shortly, same pid).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "UpgradeStarted")))]
pub struct UpgradeStarted {
    /// The running version.
    pub from: String,
    /// The version the new binary says it is.
    pub to: String,
    /// The daemon's pid (the new image keeps it).
    pub pid: u32,
}

/// `POST /agents/{id}/message`'s body: a line for the agent's stdin.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "MessageIn")))]
pub struct MessageIn {
    /// At most 16 KiB of UTF-8, no NUL; written with a newline after it.
    pub text: String,
}

/// A message written to an agent's stdin.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "MessageSent")))]
pub struct MessageSent {
    pub agent_id: String,
    /// Bytes written: the text and its newline.
    pub bytes: usize,
}

/// What `PUT` or `DELETE /agents/{id}/config` did to the config file (its
/// new `ETag` is in the header).
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "ConfigEdit")))]
pub struct ConfigEdit {
    pub agent_id: String,
    /// `created`, `changed`, `unchanged` (nothing written) or `removed`.
    pub action: String,
    /// The keys of the agent's table that changed, as dotted paths
    /// (`command`, `env.TOKEN`); never a value.
    pub changed: Vec<String>,
}

/// Every error body: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "ErrorBody")))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "ErrorDetail")))]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// Whether `s` can name an agent: `^[a-z0-9][a-z0-9_-]{0,62}$`.
pub fn is_agent_id(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-')
}

/// What an operator asks of an agent; also the last segment of its path
/// (`POST /agents/{id}/start`).
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Start,
    Stop,
    Restart,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Restart => "restart",
        }
    }
}

/// What an API key may do. Each role can do what the one before it can.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "server", salvo(schema(name = "Role")))]
pub enum Role {
    /// Every GET but `/audit`, every event stream, `/metrics`.
    Read,
    /// Also start, stop and restart.
    Operate,
    /// Also the audit trail.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Admin => "admin",
        }
    }

    /// Whether this role includes `needed`.
    pub fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "read" => Ok(Role::Read),
            "operate" => Ok(Role::Operate),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "invalid role {other:?}: expected \"read\", \"operate\" or \"admin\""
            )),
        }
    }
}

/// `GET /whoami`: the key the request was made with.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "Whoami")))]
pub struct Whoami {
    /// The key's name in the config (`api_key_file` or `AGENTSD_API_KEY`
    /// for the daemon's own key).
    pub name: String,
    pub role: Role,
    /// Whether this key may add, change and remove agents over the API
    /// (an admin key, and `api_edits` on).
    #[serde(default)]
    pub edits: bool,
}

/// One entry of the audit trail (`GET /audit`): a mutating request or a
/// sign-in, who made it and how it ended.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq, Debug)]
#[cfg_attr(feature = "server", derive(salvo::oapi::ToSchema))]
#[cfg_attr(feature = "server", salvo(schema(name = "AuditEntry")))]
pub struct AuditEntry {
    /// Pass as `before` to page on.
    pub id: i64,
    pub at: String,
    /// The key's name and role.
    pub key: String,
    pub role: Role,
    /// The client's address (from `X-Forwarded-For` only behind a trusted
    /// proxy).
    pub remote: String,
    pub method: String,
    pub path: String,
    pub agent: Option<String>,
    /// The HTTP status of the answer.
    pub status: u16,
    /// `ok`, or the error code of the answer (`forbidden`, `conflict`, ...).
    pub outcome: String,
    /// How many times it happened: a refusal (403) repeated by the same key
    /// on the same method and path is counted in one entry.
    #[serde(default = "one")]
    pub count: u64,
    /// When it last happened, if more than once (`at` is the first time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_at: Option<String>,
    /// What it changed, where the path does not say it all: the keys of
    /// an agent's table a config edit changed (never a value), the length
    /// of a message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn one() -> u64 {
    1
}

/// `SHA256:` and a certificate's digest (of its DER) as colon-separated hex
/// pairs: what the daemon logs and clients pin.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: Vec<String> = d.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    format!("SHA256:{}", hex.join(":"))
}

/// RFC 3339 with milliseconds, UTC. A clock set before 1970 or past 9999
/// (which humantime cannot write: it panics) reads as the nearest end.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(representable(t)).to_string()
}

/// `t` within what RFC 3339 can write: 1970-01-01 to 9999-12-31.
pub fn representable(t: std::time::SystemTime) -> std::time::SystemTime {
    use std::time::{Duration, UNIX_EPOCH};
    // The last millisecond of 9999-12-31.
    let last = UNIX_EPOCH + Duration::from_millis(253_402_300_800_000 - 1);
    t.clamp(UNIX_EPOCH, last)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `as_str` is the one conversion: serde says the same names, and
    /// every name reads back as its status.
    #[test]
    fn a_status_has_one_name_everywhere() {
        for s in Status::ALL {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.to_string(), s.as_str());
            assert_eq!(s.as_str().parse::<Status>(), Ok(s));
        }
        for d in [Desired::Running, Desired::Stopped] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
            assert_eq!(d.as_str().parse::<Desired>(), Ok(d));
        }
        let e = "Running".parse::<Status>().unwrap_err();
        assert_eq!((e.what, e.given.as_str()), ("status", "Running"));
        assert!("paused".parse::<Desired>().is_err());
        for h in HealthState::ALL {
            assert_eq!(serde_json::to_value(h).unwrap(), h.as_str());
        }
    }

    #[test]
    fn a_clock_outside_1970_to_9999_is_written_not_a_panic() {
        use std::time::{Duration, UNIX_EPOCH};
        let before = UNIX_EPOCH - Duration::from_secs(86_400);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
        let after = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339(after), "9999-12-31T23:59:59.999Z");
        let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(rfc3339(now), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn roles_are_ordered_and_parsed() {
        assert!(Role::Admin.allows(Role::Operate));
        assert!(Role::Operate.allows(Role::Read));
        assert!(!Role::Read.allows(Role::Operate));
        assert!(!Role::Operate.allows(Role::Admin));
        for r in [Role::Read, Role::Operate, Role::Admin] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(serde_json::to_value(r).unwrap(), serde_json::json!(r.as_str()));
        }
        assert!("Admin".parse::<Role>().is_err());
    }

    #[test]
    fn agent_ids() {
        assert!(is_agent_id("assistant-bot"));
        assert!(is_agent_id("0"));
        assert!(is_agent_id(&"a".repeat(63)));
        assert!(!is_agent_id(&"a".repeat(64)));
        assert!(!is_agent_id(""));
        assert!(!is_agent_id("-bot"));
        assert!(!is_agent_id("Bot"));
        assert!(!is_agent_id("bot.1"));
        assert!(!is_agent_id("bot/../x"));
    }
}
