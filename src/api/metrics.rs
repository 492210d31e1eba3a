//! `/metrics` in the Prometheus text format. Agent metrics are computed from
//! the supervisor's state and the resource sampler at each scrape (no agent
//! is asked anything); request metrics are counted by a hoop on every route.

use super::AppState;
use super::agents::state;
use super::error::ApiError;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use salvo::http::header::CONTENT_TYPE;
use salvo::prelude::*;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteCode {
    route: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Route {
    route: &'static str,
}

/// The labels of the agent families, as a registry would have them (the
/// families are written by hand; a test compares).
#[cfg(test)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentLabel {
    agent: String,
}

#[cfg(test)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentStatus {
    agent: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Version {
    version: &'static str,
}

/// What the daemon counts over its life (agent metrics are read fresh at
/// each scrape).
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RouteCode, Counter>,
    duration: Family<Route, Histogram, fn() -> Histogram>,
    auth_failures: Counter,
    auth_throttled: Counter,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        fn buckets() -> Histogram {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
            ])
        }
        HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(buckets),
            auth_failures: Counter::default(),
            auth_throttled: Counter::default(),
        }
    }
}

impl HttpMetrics {
    /// A request presented no key or a wrong one.
    pub fn auth_failed(&self) {
        self.auth_failures.inc();
    }

    /// A request was refused (429) for the wrong keys its address sent
    /// before.
    pub fn auth_throttled(&self) {
        self.auth_throttled.inc();
    }
}

/// The route a path belongs to, as a label of bounded cardinality (an
/// unknown path is `other`, an agent id is `{id}`).
pub fn route_of(path: &str) -> &'static str {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["health"] => "/health",
        ["agents"] => "/agents",
        ["agents", _] => "/agents/{id}",
        ["agents", _, "start"] => "/agents/{id}/start",
        ["agents", _, "stop"] => "/agents/{id}/stop",
        ["agents", _, "restart"] => "/agents/{id}/restart",
        ["agents", _, "logs"] => "/agents/{id}/logs",
        ["agents", _, "history"] => "/agents/{id}/history",
        ["agents", _, "config"] => "/agents/{id}/config",
        ["agents", _, "message"] => "/agents/{id}/message",
        ["sse", "status"] => "/sse/status",
        ["sse", "logs"] => "/sse/logs",
        ["sse", "agents", _, "logs"] => "/sse/agents/{id}/logs",
        ["sse", "agents", _, "messages"] => "/sse/agents/{id}/messages",
        ["upgrade"] => "/upgrade",
        ["fleet"] => "/fleet",
        ["sse", "fleet"] => "/sse/fleet",
        ["session"] => "/session",
        ["metrics"] => "/metrics",
        ["whoami"] => "/whoami",
        ["audit"] => "/audit",
        ["openapi.json"] => "/openapi.json",
        _ => "other",
    }
}

/// Counts every request by route and status code, and times it (to the
/// start of the answer: an event stream counts until its headers).
#[handler]
pub async fn count(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    let started = Instant::now();
    let route = route_of(req.uri().path());
    ctrl.call_next(req, depot, res).await;
    let Ok(state) = depot.get_typed::<std::sync::Arc<AppState>>() else {
        return;
    };
    let code = res.status_code.map_or(200, |s| s.as_u16());
    let m = &state.metrics;
    m.requests.get_or_create(&RouteCode { route, code }).inc();
    m.duration
        .get_or_create(&Route { route })
        .observe(started.elapsed().as_secs_f64());
}

/// One agent as its metrics need it.
struct AgentRow {
    id: String,
    status: crate::wire::Status,
    restarts: u32,
    /// When its current process started, in seconds since the epoch.
    start_time: Option<f64>,
    cpu_seconds: f64,
    resources: Option<crate::wire::Resources>,
    log_lines: u64,
    dropped: u64,
    messages: Option<i64>,
    health: Option<crate::wire::HealthState>,
}

impl AgentRow {
    fn of(l: crate::supervisor::Listed, messages: Option<i64>) -> AgentRow {
        let s = l.summary;
        let start_time = s
            .started_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64());
        AgentRow {
            id: s.id,
            status: s.status,
            restarts: s.restarts,
            start_time,
            cpu_seconds: l.cpu_seconds,
            resources: s.resources,
            log_lines: l.log_lines,
            dropped: s.dropped_log_lines,
            messages,
            health: s.health,
        }
    }
}

/// The per-agent families in the Prometheus text format (0.0.4), written
/// straight from the rows in id order: a registry would allocate a metric
/// and its labels for each agent and status (8,000 agents: over 100,000
/// of them per scrape). The same text as `prometheus_client` writes, as a
/// test checks.
fn write_agents(out: &mut String, rows: &[AgentRow]) {
    use std::fmt::Write;
    enum Kind {
        Gauge,
        Counter,
    }
    /// A family's head, then `line` for each row that has a value.
    fn family<T: std::fmt::Display>(
        out: &mut String,
        rows: &[AgentRow],
        name: &str,
        help: &str,
        kind: Kind,
        value: impl Fn(&AgentRow) -> Option<T>,
    ) {
        let (sample, kind) = match kind {
            Kind::Gauge => (name.to_string(), "gauge"),
            Kind::Counter => (format!("{name}_total"), "counter"),
        };
        // Written to a String: it cannot fail.
        let _ = write!(out, "# HELP {sample} {help}.\n# TYPE {sample} {kind}\n");
        for r in rows {
            if let Some(v) = value(r) {
                let _ = writeln!(out, "{sample}{{agent=\"{}\"}} {v}", r.id);
            }
        }
    }
    /// A float as `prometheus_client` writes it (`1.0`, `0.25`).
    struct F(f64);
    impl std::fmt::Display for F {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?}", self.0)
        }
    }
    family(
        out,
        rows,
        "agentsd_agent_up",
        "1 while the agent is running",
        Kind::Gauge,
        |r| Some(i64::from(r.status == crate::wire::Status::Running)),
    );
    let _ = write!(
        out,
        "# HELP agentsd_agent_status The agent's status, one-hot.\n# TYPE agentsd_agent_status gauge\n"
    );
    for r in rows {
        for st in crate::wire::Status::ALL {
            let _ = writeln!(
                out,
                "agentsd_agent_status{{agent=\"{}\",status=\"{st}\"}} {}",
                r.id,
                i64::from(r.status == st)
            );
        }
    }
    family(
        out,
        rows,
        "agentsd_agent_restarts",
        "Restarts made by the restart policy since the daemon started",
        Kind::Counter,
        |r| Some(r.restarts),
    );
    family(
        out,
        rows,
        "agentsd_agent_healthy",
        "1 while the agent's health probe passes, 0 while it starts or fails; absent without a probe or a process",
        Kind::Gauge,
        |r| {
            r.health
                .map(|h| i64::from(h == crate::wire::HealthState::Healthy))
        },
    );
    family(
        out,
        rows,
        "agentsd_agent_start_time_seconds",
        "When the agent's current process started, in seconds since the epoch",
        Kind::Gauge,
        |r| r.start_time.map(F),
    );
    family(
        out,
        rows,
        "agentsd_agent_cpu_seconds",
        "CPU time of every process of the agent since the daemon started",
        Kind::Counter,
        |r| Some(F(r.cpu_seconds)),
    );
    family(
        out,
        rows,
        "agentsd_agent_resident_memory_bytes",
        "Resident memory of every process of the agent, as of the last sample",
        Kind::Gauge,
        |r| r.resources.map(|x| x.rss_bytes as i64),
    );
    family(
        out,
        rows,
        "agentsd_agent_processes",
        "Processes of the agent, as of the last sample",
        Kind::Gauge,
        |r| r.resources.map(|x| i64::from(x.processes)),
    );
    family(
        out,
        rows,
        "agentsd_agent_log_lines",
        "Log lines written since the daemon started",
        Kind::Counter,
        |r| Some(r.log_lines),
    );
    family(
        out,
        rows,
        "agentsd_agent_log_dropped_lines",
        "Log lines that could not be written (disk full, permissions)",
        Kind::Counter,
        |r| Some(r.dropped),
    );
    family(
        out,
        rows,
        "agentsd_agent_messages_24h",
        "The agent's stats query (messages in the last 24 hours)",
        Kind::Gauge,
        |r| r.messages,
    );
}

/// Prometheus metrics of the daemon and of every agent.
#[endpoint(tags("health"), responses((status_code = 200, description = "Prometheus text format (0.0.4)", content_type = "text/plain", body = String)))]
pub async fn metrics(depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let state = state(depot)?;
    let listed = state.handle.list(crate::supervisor::Filter::default()).await?;
    let wanted = listed
        .iter()
        .filter_map(|l| l.stats.clone().map(|s| (l.summary.id.clone(), s)))
        .collect();
    let counts = state.stats.counts(wanted).await;
    let rows: Vec<AgentRow> = listed
        .into_iter()
        .map(|l| {
            let n = counts.get(&l.summary.id).copied().flatten();
            AgentRow::of(l, n)
        })
        .collect();

    let mut build_reg = Registry::default();
    let build = Family::<Version, Gauge>::default();
    build
        .get_or_create(&Version {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
    build_reg.register("agentsd_build_info", "The running agentsd's version", build);

    let mut reg = Registry::default();
    let m = &state.metrics;
    reg.register(
        "agentsd_http_requests",
        "API requests by route and status code",
        m.requests.clone(),
    );
    reg.register_with_unit(
        "agentsd_http_request_duration",
        "Time to answer API requests (to the start of an event stream)",
        Unit::Seconds,
        m.duration.clone(),
    );
    reg.register(
        "agentsd_auth_failures",
        "Requests with no key or a wrong one",
        m.auth_failures.clone(),
    );
    reg.register(
        "agentsd_auth_throttled",
        "Requests refused (429) because their address sent too many wrong keys",
        m.auth_throttled.clone(),
    );
    let streams = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    streams.set(state.streams.open() as i64);
    reg.register("agentsd_event_streams", "Open event streams", streams);
    let pending = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    pending.set(state.store_health.borrow().pending as i64);
    reg.register(
        "agentsd_state_pending_writes",
        "Changes not stored in the state database yet",
        pending,
    );
    if let Some(fleet) = &state.fleet {
        let dropped = Counter::<u64, AtomicU64>::default();
        dropped.inc_by(fleet.dropped());
        reg.register(
            "agentsd_fleet_dropped_events",
            "Events for NATS dropped because its queue was full ([fleet])",
            dropped,
        );
        let queued = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        queued.set(fleet.queued() as i64);
        reg.register(
            "agentsd_fleet_queued_events",
            "Events waiting for NATS ([fleet])",
            queued,
        );
        let connected = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        connected.set(i64::from(fleet.link().connected));
        reg.register(
            "agentsd_fleet_connected",
            "1 while connected to NATS ([fleet]), else 0",
            connected,
        );
    }
    if let Some(cert) = state.certificate.borrow().as_ref() {
        let at = cert
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let expiry = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        expiry.set(at);
        reg.register(
            "agentsd_tls_certificate_expiry_seconds",
            "When the certificate served expires, in seconds since the Unix epoch",
            expiry,
        );
    }
    if let Some(orders) = &state.acme {
        let failures = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        failures.set(i64::from(orders.borrow().failures));
        reg.register(
            "agentsd_acme_failed_orders",
            "ACME orders failed in a row (0 once one succeeds)",
            failures,
        );
    }
    process_metrics(&mut reg);

    // About 1.2 KiB per agent.
    let mut text = String::with_capacity(4096 + rows.len() * 1280);
    let encoded =
        prometheus_client::encoding::prometheus_text::encode(&mut text, &build_reg).and_then(|()| {
            write_agents(&mut text, &rows);
            prometheus_client::encoding::prometheus_text::encode(&mut text, &reg)
        });
    encoded.map_err(|e| ApiError::internal(format!("cannot encode the metrics: {e}")))?;
    res.add_header(
        CONTENT_TYPE,
        prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        true,
    )
    .ok();
    res.render(text);
    Ok(())
}

/// The daemon's own `process_*` metrics, as Prometheus' clients name them.
fn process_metrics(reg: &mut Registry) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rfind(')')
        .map(|i| stat[i + 2..].split(' ').collect())
        .unwrap_or_default();
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    let tps = crate::supervisor::process::ticks_per_second();
    let cpu = Counter::<f64, AtomicU64>::default();
    cpu.inc_by((num(11) + num(12)) / tps);
    reg.register_with_unit("process_cpu", "CPU time of the daemon", Unit::Seconds, cpu);
    let rss = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    rss.set((num(21) * page_size()) as i64);
    reg.register_with_unit(
        "process_resident_memory",
        "Resident memory of the daemon",
        Unit::Bytes,
        rss,
    );
    let fds = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    fds.set(std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as i64);
    reg.register("process_open_fds", "Open file descriptors of the daemon", fds);
    if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        let max = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        max.set(soft.min(i64::MAX as u64) as i64);
        reg.register("process_max_fds", "The daemon's open-file limit", max);
    }
    // Boot time plus the process's start in ticks since boot.
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
    });
    let start = Gauge::<f64, AtomicU64>::default();
    start.set(boot.unwrap_or(0.0) + num(19) / tps);
    reg.register_with_unit(
        "process_start_time",
        "When the daemon started, in seconds since the epoch",
        Unit::Seconds,
        start,
    );
}

fn page_size() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096.0, |v| v as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Resources, Status};

    /// The families written by hand say what a `prometheus_client`
    /// registry of the same values says (in id order rather than a hash
    /// map's).
    #[test]
    fn agent_families_are_what_a_registry_writes() {
        let rows = vec![
            AgentRow {
                id: "bot-1".into(),
                status: Status::Running,
                restarts: 3,
                start_time: Some(1_764_792_000.125),
                cpu_seconds: 12.5,
                resources: Some(Resources {
                    cpu_pct: 1.5,
                    rss_bytes: 1 << 20,
                    processes: 2,
                }),
                log_lines: 42,
                dropped: 1,
                messages: Some(7),
                health: Some(crate::wire::HealthState::Healthy),
            },
            AgentRow {
                id: "web".into(),
                status: Status::Failed,
                restarts: 0,
                start_time: None,
                cpu_seconds: 0.0,
                resources: None,
                log_lines: 0,
                dropped: 0,
                messages: None,
                health: None,
            },
            AgentRow {
                id: "db".into(),
                status: Status::Starting,
                restarts: 0,
                start_time: None,
                cpu_seconds: 0.0,
                resources: None,
                log_lines: 0,
                dropped: 0,
                messages: None,
                health: Some(crate::wire::HealthState::Starting),
            },
        ];
        let mut mine = String::new();
        write_agents(&mut mine, &rows);

        let mut reg = Registry::default();
        let up = Family::<AgentLabel, Gauge>::default();
        let status = Family::<AgentStatus, Gauge>::default();
        let restarts = Family::<AgentLabel, Counter>::default();
        let healthy = Family::<AgentLabel, Gauge>::default();
        let start_time = Family::<AgentLabel, Gauge<f64, AtomicU64>>::default();
        let cpu = Family::<AgentLabel, Counter<f64, AtomicU64>>::default();
        let rss = Family::<AgentLabel, Gauge>::default();
        let processes = Family::<AgentLabel, Gauge>::default();
        let lines = Family::<AgentLabel, Counter>::default();
        let dropped = Family::<AgentLabel, Counter>::default();
        let messages = Family::<AgentLabel, Gauge>::default();
        for r in &rows {
            let agent = AgentLabel { agent: r.id.clone() };
            up.get_or_create(&agent)
                .set(i64::from(r.status == Status::Running));
            for st in Status::ALL {
                status
                    .get_or_create(&AgentStatus {
                        agent: r.id.clone(),
                        status: st.as_str(),
                    })
                    .set(i64::from(r.status == st));
            }
            restarts.get_or_create(&agent).inc_by(u64::from(r.restarts));
            if let Some(h) = r.health {
                healthy
                    .get_or_create(&agent)
                    .set(i64::from(h == crate::wire::HealthState::Healthy));
            }
            if let Some(t) = r.start_time {
                start_time.get_or_create(&agent).set(t);
            }
            cpu.get_or_create(&agent).inc_by(r.cpu_seconds);
            if let Some(x) = r.resources {
                rss.get_or_create(&agent).set(x.rss_bytes as i64);
                processes.get_or_create(&agent).set(i64::from(x.processes));
            }
            lines.get_or_create(&agent).inc_by(r.log_lines);
            dropped.get_or_create(&agent).inc_by(r.dropped);
            if let Some(n) = r.messages {
                messages.get_or_create(&agent).set(n);
            }
        }
        reg.register("agentsd_agent_up", "1 while the agent is running", up);
        reg.register("agentsd_agent_status", "The agent's status, one-hot", status);
        reg.register(
            "agentsd_agent_restarts",
            "Restarts made by the restart policy since the daemon started",
            restarts,
        );
        reg.register(
            "agentsd_agent_healthy",
            "1 while the agent's health probe passes, 0 while it starts or fails; absent without a probe or a process",
            healthy,
        );
        reg.register_with_unit(
            "agentsd_agent_start_time",
            "When the agent's current process started, in seconds since the epoch",
            Unit::Seconds,
            start_time,
        );
        reg.register_with_unit(
            "agentsd_agent_cpu",
            "CPU time of every process of the agent since the daemon started",
            Unit::Seconds,
            cpu,
        );
        reg.register_with_unit(
            "agentsd_agent_resident_memory",
            "Resident memory of every process of the agent, as of the last sample",
            Unit::Bytes,
            rss,
        );
        reg.register(
            "agentsd_agent_processes",
            "Processes of the agent, as of the last sample",
            processes,
        );
        reg.register(
            "agentsd_agent_log_lines",
            "Log lines written since the daemon started",
            lines,
        );
        reg.register(
            "agentsd_agent_log_dropped_lines",
            "Log lines that could not be written (disk full, permissions)",
            dropped,
        );
        reg.register(
            "agentsd_agent_messages_24h",
            "The agent's stats query (messages in the last 24 hours)",
            messages,
        );
        let mut theirs = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut theirs, &reg).unwrap();
        // Families in the same order; samples within one in any order.
        let blocks = |t: &str| -> Vec<Vec<String>> {
            let mut out: Vec<Vec<String>> = Vec::new();
            for l in t.lines() {
                if l.starts_with("# HELP") {
                    out.push(Vec::new());
                }
                out.last_mut().unwrap().push(l.to_string());
            }
            for b in &mut out {
                b[2..].sort();
            }
            out
        };
        assert_eq!(blocks(&mine), blocks(&theirs));
    }

    #[test]
    fn routes_have_a_bounded_set_of_labels() {
        assert_eq!(route_of("/agents"), "/agents");
        assert_eq!(route_of("/agents/bot-1"), "/agents/{id}");
        assert_eq!(route_of("/agents/bot-1/stop"), "/agents/{id}/stop");
        assert_eq!(route_of("/sse/agents/x/logs"), "/sse/agents/{id}/logs");
        assert_eq!(route_of("/agents/x/y/z"), "other");
        assert_eq!(route_of("/../../etc/passwd"), "other");
        // Every route the API describes has a label of its own.
        let doc = crate::api::openapi();
        for path in doc["paths"].as_object().unwrap().keys() {
            assert_eq!(route_of(&path.replace("{id}", "bot-1")), path, "{path}");
        }
    }
}
