//! The typed client of the HTTP API that every client command uses. It
//! speaks the same wire types as the server.

pub mod control;
pub mod cursors;
pub mod follow;
pub mod local;
pub mod output;
pub mod several;
pub mod target;
pub mod top;
pub mod trust;

use crate::wire::{AgentDetail, AgentSummary, AuditEntry, ErrorBody, Health, HistoryEntry, LogLine, Op};
use futures_util::StreamExt;
use output::escape_controls;
use std::time::Duration;
pub use target::Target;

/// Exit codes, one per class of error (also in `agentsd --help`).
pub mod exit {
    pub const ERROR: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const UNREACHABLE: u8 = 3;
    pub const UNAUTHORIZED: u8 = 4;
    pub const NOT_FOUND: u8 = 5;
    pub const SERVER: u8 = 6;
    pub const FORBIDDEN: u8 = 7;
    pub const NOT_REACHED: u8 = 8;
    pub const CONFLICT: u8 = 9;
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A bad flag, context or client file.
    #[error("{0}")]
    Usage(String),
    /// The daemon could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The daemon's certificate was refused (same exit code as unreachable).
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Unauthorized(String),
    /// The key's role lacks the right (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The agent did not reach the state asked for: the start ended
    /// `failed` or `exited`, or a later request overtook this one (409).
    #[error("{0}")]
    NotReached(String),
    /// A 5xx, or an answer that makes no sense.
    #[error("{0}")]
    Server(String),
    /// An edit of the config was made on a version of the file that
    /// changed since (412): nothing was written.
    #[error("{0}")]
    Conflict(String),
    /// The daemon refused an edit of the config as invalid (422), with
    /// `config check`'s message.
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Usage(_) => exit::USAGE,
            ClientError::Unreachable(_) | ClientError::Tls(_) => exit::UNREACHABLE,
            ClientError::Unauthorized(_) => exit::UNAUTHORIZED,
            ClientError::Forbidden(_) => exit::FORBIDDEN,
            ClientError::NotFound(_) => exit::NOT_FOUND,
            ClientError::NotReached(_) => exit::NOT_REACHED,
            ClientError::Server(_) => exit::SERVER,
            ClientError::Conflict(_) => exit::CONFLICT,
            ClientError::Invalid(_) => exit::USAGE,
        }
    }

    /// Worth reconnecting after (for `logs -f` and `status --watch`); a
    /// refused certificate is not.
    pub fn is_transient(&self) -> bool {
        matches!(self, ClientError::Unreachable(_) | ClientError::Server(_))
    }
}

/// The innermost useful message of a transport error: why the TLS
/// handshake failed (one sentence with a hint), or the OS's reason for a
/// refused connection.
fn transport_error(url: &str, e: &reqwest::Error) -> ClientError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut deepest = e.to_string();
    while let Some(s) = source {
        if let Some(tls) = rustls_error(s) {
            return ClientError::Tls(format!("TLS with {url} failed: {}", trust::describe_tls(tls)));
        }
        deepest = s.to_string();
        source = s.source();
    }
    if e.is_timeout() {
        return ClientError::Unreachable(format!("{url} did not answer in time"));
    }
    ClientError::Unreachable(format!("cannot reach {url}: {deepest}"))
}

/// The rustls error in `e`, also inside io::Errors (which hide what they
/// wrap from `source()`, and come nested).
fn rustls_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_error(inner)
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    target: Target,
}

/// One Server-Sent Event.
pub struct SseFrame {
    pub name: String,
    pub data: String,
    pub id: String,
}

/// The answer to a start, stop or restart.
#[derive(Debug)]
pub struct Controlled {
    pub summary: AgentSummary,
    /// 202: the daemon's wait ran out before the agent got there; the
    /// summary is the agent as it was then.
    pub pending: bool,
}

/// The caller's key, as `GET /whoami` names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Identity {
    #[serde(default)]
    pub name: Option<String>,
    /// `read`, `operate` or `admin`.
    pub role: String,
}

/// `GET /agents` narrowed on the daemon.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    pub status: Option<String>,
    /// A substring of the id.
    pub text: Option<String>,
}

impl ListFilter {
    /// The same filter applied here, for a daemon that does not know it yet.
    pub fn keeps(&self, a: &AgentSummary) -> bool {
        self.status.as_ref().is_none_or(|s| a.status.as_str() == s)
            && self.text.as_ref().is_none_or(|t| a.id.contains(t.as_str()))
    }
}

impl Client {
    pub fn new(target: Target) -> Result<Client, ClientError> {
        let url = url::Url::parse(&target.url)
            .map_err(|e| ClientError::Usage(format!("invalid URL {:?}: {e}", target.url)))?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // The API never redirects; a redirect could only carry the key
            // somewhere it was not meant to go.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("agentsd/", env!("CARGO_PKG_VERSION")));
        // A loopback daemon is reached directly, never through an
        // HTTP_PROXY that would see plain http and its key.
        if url.host().is_some_and(|h| target::is_loopback(&h)) {
            builder = builder.no_proxy();
        }
        if url.scheme() == "https" {
            let tls =
                trust::client_config(&target.trust).map_err(|e| ClientError::Usage(format!("{e:#}")))?;
            builder = builder.tls_backend_preconfigured(tls);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Usage(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client { http, target })
    }

    pub fn url(&self) -> &str {
        &self.target.url
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let res = req
            .bearer_auth(&self.target.key)
            .send()
            .await
            .map_err(|e| transport_error(&self.target.url, &e))?;
        self.checked(res).await
    }

    /// The answer if it is a success, else the error it carries.
    async fn checked(&self, res: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let body = res.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&body) {
            // What the daemon says goes to a terminal: no control characters.
            Ok(b) => (b.error.code, escape_controls(&b.error.message).into_owned()),
            Err(_) => (String::new(), status.to_string()),
        };
        let url = &self.target.url;
        Err(match status.as_u16() {
            401 => ClientError::Unauthorized(format!("{url} refused the API key: {message}")),
            403 => ClientError::Forbidden(format!(
                "{url} refused: the key's role lacks the right to do this: {message}"
            )),
            429 => ClientError::Unauthorized(format!("{url} refused: {message}")),
            404 => ClientError::NotFound(message),
            409 if code == "conflict" || code == "upgrade_refused" => ClientError::NotReached(message),
            412 => ClientError::Conflict(message),
            422 => ClientError::Invalid(message),
            400..=499 => ClientError::Usage(message),
            _ => ClientError::Server(format!("{url} answered {status}: {message}")),
        })
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let res = self.send(req.timeout(Duration::from_secs(120))).await?;
        self.body(res).await
    }

    async fn body<T: serde::de::DeserializeOwned>(&self, res: reqwest::Response) -> Result<T, ClientError> {
        res.json::<T>()
            .await
            .map_err(|e| ClientError::Server(format!("unexpected answer from {}: {e}", self.target.url)))
    }

    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.http.get(format!("{}{path}", self.target.url))
    }

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.json(self.get("/health")).await
    }

    /// The key's name and role; `None` from a daemon that has no roles yet
    /// (it answers 404), where every key may do everything.
    pub async fn whoami(&self) -> Result<Option<Identity>, ClientError> {
        match self.json(self.get("/whoami")).await {
            Ok(id) => Ok(Some(id)),
            Err(ClientError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<AgentSummary>, ClientError> {
        let mut url = url::Url::parse(&format!("{}/agents", self.target.url))
            .map_err(|e| ClientError::Usage(format!("invalid URL: {e}")))?;
        if filter.status.is_some() || filter.text.is_some() {
            let mut q = url.query_pairs_mut();
            if let Some(s) = &filter.status {
                q.append_pair("status", s);
            }
            if let Some(t) = &filter.text {
                q.append_pair("q", t);
            }
        }
        let mut agents: Vec<AgentSummary> = self.json(self.http.get(url)).await?;
        agents.retain(|a| filter.keeps(a));
        Ok(agents)
    }

    pub async fn show(&self, id: &str) -> Result<AgentDetail, ClientError> {
        Self::check_id(id)?;
        self.json(self.get(&format!("/agents/{id}")))
            .await
            .map_err(|e| not_found_agent(e, id))
    }

    /// Asks for `op` on one agent. The daemon answers within 60 s (200 once
    /// it got there or the start ended, 202 with the agent as it is).
    pub async fn control(&self, id: &str, op: Op) -> Result<Controlled, ClientError> {
        Self::check_id(id)?;
        let req = self
            .http
            .post(format!("{}/agents/{id}/{}", self.target.url, op.as_str()))
            .timeout(Duration::from_secs(120));
        let res = self.send(req).await.map_err(|e| not_found_agent(e, id))?;
        let pending = res.status() == reqwest::StatusCode::ACCEPTED;
        Ok(Controlled {
            summary: self.body(res).await?,
            pending,
        })
    }

    /// An agent id that cannot exist is refused before it goes into a URL.
    fn check_id(id: &str) -> Result<(), ClientError> {
        if crate::wire::is_agent_id(id) {
            Ok(())
        } else {
            Err(ClientError::Usage(format!(
                "invalid agent id {id:?}: ids are 1 to 63 characters of a-z, 0-9, '_' and '-'"
            )))
        }
    }

    pub async fn logs(&self, id: &str, n: u64) -> Result<Vec<LogLine>, ClientError> {
        Self::check_id(id)?;
        self.json(self.get(&format!("/agents/{id}/logs?n={n}")))
            .await
            .map_err(|e| not_found_agent(e, id))
    }

    /// The agent's latest `limit` status changes (1 to 1,000), newest first.
    pub async fn history(&self, id: &str, limit: u32) -> Result<Vec<HistoryEntry>, ClientError> {
        Self::check_id(id)?;
        self.json(self.get(&format!("/agents/{id}/history?limit={limit}")))
            .await
            .map_err(|e| not_found_agent(e, id))
    }

    /// Asks the daemon to upgrade in place: what to (the check passed and
    /// the handover is under way), or why it was refused.
    pub async fn upgrade(&self) -> Result<crate::wire::UpgradeStarted, ClientError> {
        let req = self.http.post(format!("{}/upgrade", self.target.url));
        self.json(req).await
    }

    /// Agent `id`'s table as the config file has it (`None`: the file has
    /// no such agent), and the file's `ETag` for an edit to send.
    pub async fn agent_config(&self, id: &str) -> Result<(Option<toml::Table>, String), ClientError> {
        Self::check_id(id)?;
        let req = self
            .get(&format!("/agents/{id}/config"))
            .timeout(Duration::from_secs(120));
        let res = req
            .bearer_auth(&self.target.key)
            .send()
            .await
            .map_err(|e| transport_error(&self.target.url, &e))?;
        let etag = res
            .headers()
            .get(reqwest::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if res.status() == reqwest::StatusCode::NOT_FOUND
            && let Some(etag) = etag
        {
            return Ok((None, etag));
        }
        let res = self.checked(res).await?;
        let etag = etag.ok_or_else(|| {
            ClientError::Server(format!(
                "{} sent the agent's config without an ETag",
                self.target.url
            ))
        })?;
        Ok((Some(self.body(res).await?), etag))
    }

    /// Creates or replaces agent `id` with `table`, if the config file is
    /// still the version `etag` names.
    pub async fn put_agent_config(
        &self,
        id: &str,
        table: &toml::Table,
        etag: &str,
    ) -> Result<crate::wire::ConfigEdit, ClientError> {
        Self::check_id(id)?;
        let req = self
            .http
            .put(format!("{}/agents/{id}/config", self.target.url))
            .header(reqwest::header::IF_MATCH, etag)
            .json(table);
        self.json(req).await
    }

    /// Removes agent `id` from the config file (stopped first), if the
    /// file is still the version `etag` names; `true` with it when the
    /// daemon answered while the agent was still stopping (202).
    pub async fn delete_agent_config(
        &self,
        id: &str,
        etag: &str,
    ) -> Result<(crate::wire::ConfigEdit, bool), ClientError> {
        Self::check_id(id)?;
        let req = self
            .http
            .delete(format!("{}/agents/{id}/config", self.target.url))
            .header(reqwest::header::IF_MATCH, etag)
            .timeout(Duration::from_secs(120));
        let res = self.send(req).await.map_err(|e| not_found_agent(e, id))?;
        let stopping = res.status() == reqwest::StatusCode::ACCEPTED;
        Ok((self.body(res).await?, stopping))
    }

    /// Writes `text` and a newline to agent `id`'s stdin.
    pub async fn message(&self, id: &str, text: &str) -> Result<crate::wire::MessageSent, ClientError> {
        Self::check_id(id)?;
        let req = self
            .http
            .post(format!("{}/agents/{id}/message", self.target.url))
            .json(&crate::wire::MessageIn { text: text.into() });
        self.json(req).await.map_err(|e| not_found_agent(e, id))
    }

    /// The latest `limit` audit entries (1 to 1,000), newest first.
    pub async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, ClientError> {
        self.json(self.get(&format!("/audit?limit={limit}"))).await
    }

    /// Opens an event stream; `last_id` resumes after that event.
    pub async fn events(
        &self,
        path: &str,
        last_id: Option<&str>,
    ) -> Result<impl futures_util::Stream<Item = Result<SseFrame, ClientError>> + use<>, ClientError> {
        self.events_of(self.get(path), last_id).await
    }

    /// An event stream opened with a POST of `body` (JSON): for `/sse/logs`
    /// with more resume cursors than a request line holds.
    pub async fn events_post(
        &self,
        path: &str,
        body: String,
        last_id: Option<&str>,
    ) -> Result<impl futures_util::Stream<Item = Result<SseFrame, ClientError>> + use<>, ClientError> {
        let req = self
            .http
            .post(format!("{}{path}", self.target.url))
            .header("content-type", "application/json")
            .body(body);
        self.events_of(req, last_id).await
    }

    async fn events_of(
        &self,
        req: reqwest::RequestBuilder,
        last_id: Option<&str>,
    ) -> Result<impl futures_util::Stream<Item = Result<SseFrame, ClientError>> + use<>, ClientError> {
        let mut req = req.header("accept", "text/event-stream");
        if let Some(id) = last_id {
            req = req.header("last-event-id", id);
        }
        let res = self.send(req).await?;
        let url = self.target.url.clone();
        use eventsource_stream::Eventsource;
        Ok(res.bytes_stream().eventsource().map(move |ev| match ev {
            Ok(ev) => Ok(SseFrame {
                name: ev.event,
                data: ev.data,
                id: ev.id,
            }),
            Err(e) => Err(ClientError::Unreachable(format!(
                "the event stream from {url} broke: {e}"
            ))),
        }))
    }
}

fn not_found_agent(e: ClientError, id: &str) -> ClientError {
    match e {
        ClientError::NotFound(_) => ClientError::NotFound(format!("no agent named {id:?}")),
        other => other,
    }
}
