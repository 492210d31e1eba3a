//! The HTTP API: routes, the auth hoop, and the OpenAPI description.

mod agents;
mod audit;
mod auth;
mod body;
mod edits;
mod error;
mod fleet;
mod input;
mod json;
mod messages;
mod metrics;
mod session;
mod slots;
mod sse;
pub mod stats;
mod ui;
mod upgrade;

pub use edits::{EditFailure, EditRequest};
pub use error::ApiError;
pub use session::{SESSIONS_FILE, Sessions};

use crate::secret::KeyRing;
use crate::store::StoreHealth;
use crate::supervisor::Handle;
use crate::wire::{Health, Role};
use salvo::affix_state;
use salvo::oapi::OpenApi;
use salvo::oapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use salvo::prelude::*;
use std::sync::Arc;
use tokio::sync::watch;

pub use slots::StreamSlots;

pub struct AppState {
    pub handle: Handle,
    /// The keys accepted now (replaced on a config reload).
    pub keys: watch::Receiver<Arc<KeyRing>>,
    /// Failed keys per address.
    pub guard: auth::Guard,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Dashboard sessions.
    pub sessions: session::Sessions,
    /// The dashboard's origin (`[server] public_url`), when behind a proxy.
    pub public_origin: Option<String>,
    /// Whether the daemon itself serves HTTPS.
    pub tls: bool,
    /// The last config reload error, if the file is newer than what runs.
    pub config_error: watch::Receiver<Option<String>>,
    /// What the state database has not stored yet.
    pub store_health: watch::Receiver<StoreHealth>,
    /// For reading the history.
    pub store: crate::store::Store,
    /// A warning about the daemon's limits (open files), if any.
    pub limits: watch::Receiver<Option<String>>,
    pub stats: stats::StatsCache,
    /// The agents' databases watched for `/sse/agents/{id}/messages`.
    pub messages: messages::Watchers,
    /// Turns true when the daemon shuts down: event streams end then.
    pub shutdown: watch::Receiver<bool>,
    /// The event-stream slots, shared per key and per address.
    pub streams: Arc<StreamSlots>,
    /// Told when an event stream ends, to give its memory back.
    pub trim: crate::memory::Trimmer,
    /// Request counts and times, for `/metrics`.
    pub metrics: metrics::HttpMetrics,
    /// When the daemon started serving (`/health`'s `started_at`; an
    /// in-place upgrade does not change it).
    pub started_at: std::time::SystemTime,
    /// When this image took over in place, if it did (`upgraded_at`).
    pub upgraded_at: Option<std::time::SystemTime>,
    /// Where `POST /upgrade` asks the daemon to upgrade itself.
    pub upgrades: tokio::sync::mpsc::Sender<UpgradeRequest>,
    /// Where edits of the config go (`None`: `api_edits` is off).
    pub edits: edits::Edits,
    /// The NATS publisher (`[fleet]`).
    pub fleet: Option<crate::fleet::Fleet>,
    /// The certificate served (expiry, serial), and where it comes from:
    /// `files`, `self-signed` or `acme`.
    pub certificate: watch::Receiver<Option<crate::host::CertInfo>>,
    pub tls_source: &'static str,
    /// The ACME orders (`tls = { acme = ... }`).
    pub acme: Option<watch::Receiver<crate::acme::Orders>>,
}

/// An upgrade asked for: answered with the new version once its check
/// passed (the handover follows), or why it was refused.
pub struct UpgradeRequest {
    pub reply: tokio::sync::oneshot::Sender<Result<String, String>>,
}

/// What the API is told of by the rest of the daemon, each on a channel:
/// the keys accepted now, the last config reload error, a warning about the
/// daemon's limits, and its shutdown.
pub struct Channels {
    pub keys: watch::Receiver<Arc<KeyRing>>,
    pub config_error: watch::Receiver<Option<String>>,
    pub limits: watch::Receiver<Option<String>>,
    pub shutdown: watch::Receiver<bool>,
    pub upgrades: tokio::sync::mpsc::Sender<UpgradeRequest>,
    /// Edits of the config file, when `api_edits` is on (and there is a
    /// file).
    pub edits: edits::Edits,
    /// The NATS publisher (`[fleet]`), when there is one.
    pub fleet: Option<crate::fleet::Fleet>,
    /// The certificate served, when there is one (TLS files or ACME).
    pub certificate: watch::Receiver<Option<crate::host::CertInfo>>,
    /// The ACME orders, with `tls = { acme = ... }`.
    pub acme: Option<watch::Receiver<crate::acme::Orders>>,
}

impl AppState {
    /// When the daemon started, and whether this image took over in place
    /// (now).
    pub fn started(mut self, at: std::time::SystemTime, upgraded: bool) -> AppState {
        self.started_at = at;
        self.upgraded_at = upgraded.then(std::time::SystemTime::now);
        self
    }

    /// The API's state for the daemon of `server` (its proxies, public URL
    /// and state directory, where the dashboard's sessions are kept), over
    /// the supervisor's `handle` and the `store`; `tls` whether it serves
    /// HTTPS itself; at most `max_streams` event streams open at once.
    pub fn new(
        server: &crate::config::ServerConfig,
        tls: bool,
        handle: Handle,
        store: crate::store::Store,
        channels: Channels,
        trim: crate::memory::Trimmer,
        streams: StreamSlots,
    ) -> AppState {
        let sessions = Sessions::restore(&server.state_dir.join(SESSIONS_FILE), &channels.keys.borrow());
        AppState {
            handle,
            keys: channels.keys,
            guard: Default::default(),
            trusted_proxies: server.trusted_proxies.clone(),
            sessions,
            public_origin: server
                .public_url
                .as_ref()
                .map(|u| u.origin().ascii_serialization()),
            tls,
            config_error: channels.config_error,
            store_health: store.health(),
            store,
            limits: channels.limits,
            stats: Default::default(),
            messages: Default::default(),
            shutdown: channels.shutdown,
            streams: Arc::new(streams),
            trim,
            metrics: Default::default(),
            started_at: std::time::SystemTime::now(),
            upgraded_at: None,
            upgrades: channels.upgrades,
            edits: channels.edits,
            fleet: channels.fleet,
            certificate: channels.certificate,
            tls_source: match server.tls {
                crate::config::Tls::Off => "",
                crate::config::Tls::SelfSigned => "self-signed",
                crate::config::Tls::Files { .. } => "files",
                crate::config::Tls::Acme(_) => "acme",
            },
            acme: channels.acme,
        }
    }
}

/// Liveness without a key (`status` and `version` only); with a key, what
/// makes the daemon degraded.
#[endpoint(tags("health"), responses((status_code = 200, description = "The daemon is up; `ok` or `degraded`", body = Health)))]
async fn health(req: &mut Request, depot: &mut Depot) -> Result<Json<Health>, ApiError> {
    let state = agents::state_ref(depot)?;
    let config_error = state.config_error.borrow().clone();
    let mut problems = Vec::new();
    let store = state.store_health.borrow().clone();
    if store.pending > 0 {
        problems.push(format!(
            "{} change{} not stored in the state database yet ({}); retrying",
            store.pending,
            if store.pending == 1 { "" } else { "s" },
            store.error.as_deref().unwrap_or("being written")
        ));
    }
    if let Some(l) = state.limits.borrow().clone() {
        problems.push(l);
    }
    // Agents whose log lines are being dropped (disk full): until a write
    // of theirs succeeds again.
    let dropping = state.handle.drops().now();
    if !dropping.is_empty() {
        const NAMED: usize = 10;
        let mut named: Vec<String> = dropping
            .iter()
            .take(NAMED)
            .map(|(id, n)| format!("{id} ({n})"))
            .collect();
        if dropping.len() > NAMED {
            named.push(format!("and {} more", dropping.len() - NAMED));
        }
        problems.push(format!(
            "log lines are being dropped (cannot write the log): {}",
            named.join(", ")
        ));
    }
    let fleet = state.fleet.as_ref().map(|f| {
        let link = f.link();
        crate::wire::FleetLink {
            nats: f.nats.clone(),
            host: f.host.clone(),
            connected: link.connected,
            queued: f.queued(),
            dropped: f.dropped(),
            error: link.error,
        }
    });
    if let Some(f) = fleet.as_ref().filter(|f| !f.connected) {
        problems.push(format!(
            "not connected to NATS at {} ({}): {} events wait, {} dropped so far",
            f.nats,
            f.error.as_deref().unwrap_or("connecting"),
            f.queued,
            f.dropped
        ));
    }
    let tls = certificate(state, &mut problems);
    let status = if config_error.is_some() || !problems.is_empty() {
        "degraded"
    } else {
        "ok"
    };
    let mut answer = Health {
        status: status.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        config_error: None,
        dropped_log_lines: None,
        dropping_log_lines: Default::default(),
        problems: Vec::new(),
        process_tracking: None,
        pid: None,
        started_at: None,
        upgraded_at: None,
        fleet: None,
        tls: None,
    };
    // Details (paths, values from the config file) only for a caller with
    // the key.
    if auth::optional_caller(req, state).is_some() {
        let dropped = state.handle.drops().total();
        answer.config_error = config_error;
        answer.dropped_log_lines = Some(dropped);
        answer.dropping_log_lines = dropping.into_iter().collect();
        answer.problems = problems;
        answer.process_tracking = Some(state.handle.tracking().to_string());
        answer.pid = Some(std::process::id());
        answer.started_at = Some(crate::wire::rfc3339(state.started_at));
        answer.upgraded_at = Some(state.upgraded_at.map(crate::wire::rfc3339));
        answer.fleet = fleet;
        answer.tls = tls;
    }
    Ok(Json(answer))
}

/// A certificate this close to its end makes the daemon `degraded`.
const CERT_WARN: std::time::Duration = std::time::Duration::from_secs(14 * 24 * 3600);

/// `/health`'s view of the certificate served, and what is wrong with it.
fn certificate(state: &AppState, problems: &mut Vec<String>) -> Option<crate::wire::TlsCertificate> {
    if !state.tls {
        return None;
    }
    let info = state.certificate.borrow().clone();
    let orders = state.acme.as_ref().map(|o| o.borrow().clone());
    let now = std::time::SystemTime::now();
    let left = info.as_ref().map(|i| match i.not_after.duration_since(now) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    });
    match (&info, left) {
        (Some(i), Some(s)) if s <= 0 => problems.push(format!(
            "the certificate served expired at {}",
            crate::wire::rfc3339(i.not_after)
        )),
        (Some(i), Some(s)) if (s as u64) < CERT_WARN.as_secs() => problems.push(format!(
            "the certificate served expires in {} ({}){}",
            humantime::format_duration(std::time::Duration::from_secs(s as u64)),
            crate::wire::rfc3339(i.not_after),
            if state.acme.is_some() { "" } else { ": renew it" }
        )),
        (None, _) if state.acme.is_some() => problems.push("no certificate from ACME yet".into()),
        _ => {}
    }
    if let Some(o) = orders.as_ref().filter(|o| o.failures > 0) {
        problems.push(format!(
            "ACME: {} order{} failed in a row ({}); next attempt at {}",
            o.failures,
            if o.failures == 1 { "" } else { "s" },
            o.last_error.as_deref().unwrap_or("?"),
            o.retry_at.map(crate::wire::rfc3339).unwrap_or_default()
        ));
    }
    Some(crate::wire::TlsCertificate {
        source: state.tls_source.to_string(),
        not_after: info.as_ref().map(|i| crate::wire::rfc3339(i.not_after)),
        expires_in_s: left,
        serial: info.map(|i| i.serial),
        acme_failures: orders.as_ref().map(|o| o.failures),
        acme_error: orders.as_ref().and_then(|o| o.last_error.clone()),
        acme_retry_at: orders.and_then(|o| o.retry_at.map(crate::wire::rfc3339)),
    })
}

/// Query parameters that take one value: given twice, the request is
/// ambiguous and refused (400) rather than answered with one of them.
const SINGLE_VALUED: &[&str] = &["n", "limit", "before", "status", "q"];

#[handler]
async fn single_valued(req: &mut Request, res: &mut Response, ctrl: &mut FlowCtrl) {
    let twice = SINGLE_VALUED
        .iter()
        .find(|p| req.queries().get_vec(**p).is_some_and(|v| v.len() > 1));
    if let Some(p) = twice {
        ApiError::bad_request(format!("{p}= is given more than once: give it once")).render(res);
        ctrl.skip_rest();
    }
}

/// A `GET` route; served, it answers `HEAD` the same way (hyper sends no
/// body for a `HEAD`). The description lists `GET` alone: operation ids
/// are one per handler.
macro_rules! get {
    ($router:expr, $handler:expr, $head:expr) => {
        if $head {
            $router.get($handler).head($handler)
        } else {
            $router.get($handler)
        }
    };
}

/// The routes that need a key, without the OpenAPI route itself. Every
/// key may read; what more a route needs is its [`auth::Needs`]. `head`:
/// each `GET` route answers `HEAD` too.
fn api_routes(head: bool) -> Router {
    let operate = || auth::Needs(Role::Operate);
    Router::new()
        .push(
            get!(Router::with_path("agents"), agents::list, head).push(
                get!(Router::with_path("{id}"), agents::show, head)
                    .push(Router::with_path("start").hoop(operate()).post(agents::start))
                    .push(Router::with_path("stop").hoop(operate()).post(agents::stop))
                    .push(Router::with_path("restart").hoop(operate()).post(agents::restart))
                    .push(Router::with_path("message").hoop(operate()).post(input::message))
                    .push(get!(Router::with_path("logs"), agents::logs, head))
                    .push(get!(Router::with_path("history"), agents::history, head))
                    .push(
                        get!(
                            Router::with_path("config").hoop(auth::Needs(Role::Admin)),
                            edits::get_config,
                            head
                        )
                        .put(edits::put_config)
                        .delete(edits::delete_config),
                    ),
            ),
        )
        .push(get!(Router::with_path("whoami"), auth::whoami, head))
        .push(
            Router::with_path("upgrade")
                .hoop(auth::Needs(Role::Admin))
                .post(upgrade::upgrade),
        )
        .push(
            Router::with_path("session")
                .post(session::sign_in)
                .delete(session::sign_out),
        )
        .push(get!(
            Router::with_path("audit").hoop(auth::Needs(Role::Admin)),
            audit::list,
            head
        ))
        .push(get!(Router::with_path("sse/status"), sse::status, head))
        .push(get!(Router::with_path("fleet"), fleet::list, head))
        .push(get!(Router::with_path("sse/fleet"), sse::fleet, head))
        .push(get!(Router::with_path("metrics"), metrics::metrics, head))
        .push(get!(Router::with_path("sse/agents/{id}/logs"), sse::logs, head))
        .push(get!(
            Router::with_path("sse/agents/{id}/messages"),
            sse::messages,
            head
        ))
        .push(get!(Router::with_path("sse/logs"), sse::multi_logs, head).post(sse::resume_logs))
}

fn documented() -> Router {
    Router::new()
        .push(Router::with_path("health").get(health))
        .push(api_routes(false))
}

/// The OpenAPI description of every route, with the bearer scheme required
/// everywhere but `/health`.
pub fn openapi() -> serde_json::Value {
    let doc = OpenApi::new("agentsd", env!("CARGO_PKG_VERSION"))
        .add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)))
        .security([SecurityRequirement::new("bearer", Vec::<String>::new())])
        .merge_router(&documented());
    let mut v = serde_json::to_value(&doc).unwrap_or_default();
    if let Some(get) = v.pointer_mut("/paths/~1health/get") {
        get["security"] = serde_json::json!([]);
    }
    let error = |what: &str| serde_json::json!({"description": what, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}});
    if let Some(paths) = v.get_mut("paths").and_then(|p| p.as_object_mut()) {
        paths.insert(
            "/openapi.json".into(),
            serde_json::json!({"get": {"summary": "This description", "tags": ["health"], "responses": {
                "200": {"description": "OpenAPI 3 document"},
                "401": error("Missing or wrong API key"),
            }}}),
        );
    }
    if let Some(responses) = v.pointer_mut("/paths/~1session/delete/responses") {
        *responses = serde_json::json!({
            "204": {"description": "Signed out: the session ended and the cookie is cleared"},
            "401": error("Missing or wrong API key or session"),
        });
    }
    // The errors every endpoint shares, as `/upgrade` has them.
    if let Some(responses) = v
        .pointer_mut("/paths/~1upgrade/post/responses")
        .and_then(|r| r.as_object_mut())
    {
        responses.remove("404");
        responses.insert(
            "409".into(),
            error(
                "upgrade_refused: the new binary's check failed (the reason in the message); nothing changed",
            ),
        );
    }
    // What a config edit takes: the agent's table, and the file's version.
    let if_match = serde_json::json!({"name": "If-Match", "in": "header", "required": true,
        "description": "The config file's ETag, as GET /agents/{id}/config sent it (`*`: whatever the file holds)",
        "schema": {"type": "string"}});
    for method in ["put", "delete"] {
        if let Some(params) = v
            .pointer_mut(&format!("/paths/~1agents~1{{id}}~1config/{method}/parameters"))
            .and_then(|p| p.as_array_mut())
        {
            params.push(if_match.clone());
        }
    }
    if let Some(put) = v.pointer_mut("/paths/~1agents~1{id}~1config/put") {
        put["requestBody"] = serde_json::json!({"required": true, "description": "The agent's table as JSON, the shape GET gives (keys as in agentsd.toml(5))",
            "content": {"application/json": {"schema": {"type": "object", "additionalProperties": true}}}});
    }
    if let Some(responses) = v
        .pointer_mut("/paths/~1sse~1agents~1{id}~1messages/get/responses")
        .and_then(|r| r.as_object_mut())
    {
        responses.insert(
            "409".into(),
            error("no_messages: the agent has no messages query (stats.messages)"),
        );
    }
    // Sent on `/sse/status` (an event stream has one schema in the
    // description: the others are named in its text).
    let mut components = salvo::oapi::Components::new();
    let removed = <crate::wire::RemovedEvent as salvo::oapi::ToSchema>::to_schema(&mut components);
    let health_event = <crate::wire::HealthEvent as salvo::oapi::ToSchema>::to_schema(&mut components);
    let inline = serde_json::to_value(&components.schemas).unwrap_or_default();
    if let Some(schemas) = v
        .pointer_mut("/components/schemas")
        .and_then(|s| s.as_object_mut())
    {
        for (name, schema) in [("RemovedEvent", removed), ("HealthEvent", health_event)] {
            let own = inline
                .get(name)
                .cloned()
                .or_else(|| serde_json::to_value(&schema).ok());
            if let Some(own) = own {
                schemas.insert(name.into(), own);
            }
        }
        // Referred to by HealthEvent.
        if let Some(h) = inline.get("HealthState") {
            schemas.entry("HealthState").or_insert_with(|| h.clone());
        }
    }
    v
}

/// `/openapi.json`, made on first request (most daemons are never asked
/// for it: it costs them no memory).
#[handler]
async fn openapi_doc(res: &mut Response) {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| openapi().to_string());
    res.add_header(salvo::http::header::CONTENT_TYPE, "application/json", true)
        .ok();
    res.render(doc.as_str());
}

/// The whole API, for a socket or for `salvo::test`; `first` runs first on
/// every request, routed or not (the server's [`Drain`] hoop: it sees each
/// request arrive).
///
/// [`Drain`]: crate::server::Drain
pub fn service(state: Arc<AppState>, first: impl Handler) -> Service {
    let router = Router::new()
        .hoop(affix_state::inject(state))
        .hoop(metrics::count)
        .push(get!(Router::with_path("health"), health, true))
        .push(ui::routes())
        .push(
            Router::new()
                .hoop(auth::require_key)
                .hoop(audit::record)
                .hoop(auth::check_origin)
                .hoop(single_valued)
                .push(api_routes(true))
                .push(get!(Router::with_path("openapi.json"), openapi_doc, true)),
        );
    // On the service: a body is refused on every request, routed or not.
    Service::new(router)
        .hoop(first)
        .hoop(body::limit_body)
        .catcher(salvo::catcher::Catcher::default().hoop(error::catcher))
}

#[cfg(test)]
mod tests;
