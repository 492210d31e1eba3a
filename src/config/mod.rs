//! The one TOML config file: parsed as written (`raw`), then validated into
//! a [`Config`] with defaults applied and paths resolved.

pub mod edit;
pub mod health;
mod raw;
pub mod units;
pub mod watch;

pub use health::{Condition, HealthPolicy, OnFailure, Probe};
pub use raw::RestartPolicy;
use raw::{RawAgent, RawConfig, RawPolicy, RawTls};

use nix::sys::signal::Signal;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// `IP:PORT` as `listen` and `serve --listen` take it.
pub use crate::paths::parse_listen;
/// The embedded default's state directory.
pub use crate::paths::user_state_dir;
/// Where `serve` and `config check` look when no path is given.
pub use crate::paths::{DEFAULT_CONFIG as DEFAULT_PATH, DEFAULT_LISTEN};

/// The config used when no file exists at all.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this came from; `None` for the embedded default.
    pub path: Option<PathBuf>,
    pub server: ServerConfig,
    /// Shared with the supervisor's agents (one copy of each agent's
    /// config in the daemon, not one here and one there).
    pub agents: BTreeMap<String, Arc<AgentConfig>>,
    /// `[keys.NAME]`: API keys by digest, beside `api_key_file`.
    pub keys: Vec<crate::secret::KeyEntry>,
    /// `[fleet]`: where status events and heartbeats are published.
    pub fleet: Option<FleetConfig>,
}

/// `[fleet]`: this daemon's events published over NATS, as host `host`.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetConfig {
    /// `nats://HOST:PORT` or `tls://HOST:PORT` (user and password may be
    /// in it).
    pub nats: url::Url,
    /// This daemon's name in the subjects (`agentsd.<host>.status`).
    pub host: String,
    /// A CA to trust for `tls://`, beside the system's.
    pub nats_ca: Option<PathBuf>,
    /// A NATS credentials file (`.creds`: a JWT and an nkey seed).
    pub nats_creds: Option<PathBuf>,
    /// This daemon also serves the fleet view (`GET /fleet`).
    pub view: bool,
    /// Events waiting for NATS at most; past it they are dropped and
    /// counted (`queue`, 1 to 1,000,000).
    pub queue: usize,
}

/// Whether `s` may be a NATS subject token: `agentsd.<host>.status` must
/// stay three tokens, without wildcards.
pub fn is_fleet_host(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// This host's name as a subject token: the host name's first label, with
/// anything a token may not hold made `-`.
pub fn default_fleet_host() -> String {
    let name = nix::unistd::gethostname()
        .ok()
        .and_then(|n| n.into_string().ok())
        .unwrap_or_default();
    let first = name.split('.').next().unwrap_or_default();
    let token: String = first
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if token.is_empty() {
        "localhost".into()
    } else {
        token
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub api_key_file: Option<PathBuf>,
    pub tls: Tls,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    /// How often the resources of every agent are sampled; zero: never.
    pub sample_interval: Duration,
    /// Status changes kept per agent.
    pub history_keep: u32,
    /// Proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Audit entries kept (the oldest go first).
    pub audit_keep: u32,
    /// Where browsers reach the dashboard, behind a proxy: its origin is
    /// the one cookie requests must come from.
    pub public_url: Option<url::Url>,
    /// Whether each agent gets a cgroup of its own (where the daemon can
    /// have one).
    pub cgroups: Cgroups,
    /// Whether admin keys may add, change and remove agents over the API
    /// (`PUT`/`DELETE /agents/{id}/config`): the file is then written by
    /// the daemon.
    pub api_edits: bool,
}

/// `[server] cgroups`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cgroups {
    /// A cgroup per agent where the daemon can make them (cgroup v2, a
    /// delegated or writable tree), else process groups and the subreaper.
    #[default]
    Auto,
    /// Process groups and the subreaper only.
    Off,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Tls {
    /// Plain HTTP: only on a loopback address, behind a TLS-terminating proxy.
    Off,
    /// Generated once under `state_dir`.
    SelfSigned,
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Obtained from an ACME server (tls-alpn-01 on the API port), cached
    /// under `state_dir/acme` and renewed while serving.
    Acme(Acme),
}

/// `tls = { acme = { ... } }`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Acme {
    /// DNS names the certificate is for (no IP addresses, no wildcards:
    /// tls-alpn-01 validates neither).
    pub domains: Vec<String>,
    /// `mailto:` addresses the ACME server may write to.
    pub contact: Vec<String>,
    /// The directory URL (Let's Encrypt's production one by default).
    pub directory: String,
    /// A CA to trust for the directory (a private ACME server), beside the
    /// system's roots.
    pub ca: Option<PathBuf>,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub id: String,
    pub command: Vec<String>,
    /// `cwd`, else the config file's directory.
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub env_file: Option<PathBuf>,
    pub user: Option<String>,
    pub autostart: bool,
    pub stats: Option<StatsConfig>,
    pub policy: Policy,
    pub log: LogPolicy,
    /// Its health probe (its timing is `policy.health`).
    pub probe: Option<Probe>,
    /// What it waits for before it starts: agent id -> condition.
    pub depends_on: BTreeMap<String, Condition>,
    /// `stdin = "pipe"`: its stdin is a pipe the daemon writes messages
    /// to (`POST /agents/{id}/message`); else /dev/null.
    pub stdin_pipe: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatsConfig {
    pub db: PathBuf,
    pub query: String,
    /// Rows for `/sse/agents/{id}/messages`: the first column a growing
    /// integer cursor, `?1` the last one sent.
    pub messages: Option<String>,
}

/// How an agent is stopped and restarted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub restart: RestartPolicy,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    pub start_window: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    pub max_restarts: u32,
    /// When its probe runs and what a failed one does (with `probe`).
    pub health: Option<HealthPolicy>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            restart: RestartPolicy::OnFailure,
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(10),
            start_window: Duration::from_secs(1),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_restarts: 10,
            health: None,
        }
    }
}

/// How an agent's log file is written and rotated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogPolicy {
    pub max_size: u64,
    pub keep: u32,
    pub timestamps: bool,
}

impl Default for LogPolicy {
    fn default() -> Self {
        LogPolicy {
            max_size: 50 * 1024 * 1024,
            keep: 5,
            timestamps: false,
        }
    }
}

/// Resources are sampled this often unless `[server] sample_interval` says.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Status changes kept per agent unless `[server] history_keep` says.
pub const DEFAULT_HISTORY_KEEP: u32 = 1000;
const MAX_HISTORY_KEEP: u32 = 1_000_000;
/// Audit entries kept unless `[server] audit_keep` says.
pub const DEFAULT_AUDIT_KEEP: u32 = 100_000;
const MAX_AUDIT_KEEP: u32 = 10_000_000;
/// Events waiting for NATS at most unless `[fleet] queue` says.
pub const DEFAULT_FLEET_QUEUE: u32 = 10_000;
const MAX_FLEET_QUEUE: u32 = 1_000_000;
/// The key-name rules, shared with `gen-key`.
pub use crate::secret::{ENV_KEY_NAME, FILE_KEY_NAME, is_key_name};

/// The most rotated files kept: each rotation renames every one of them.
const MAX_LOG_KEEP: u32 = 1000;

/// The smallest `log_max_size` accepted: below it every line would rotate.
const MIN_LOG_SIZE: u64 = 4096;

/// A config error with the place it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    /// 1-based line and column, when the error has a place in the file.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => write!(f, "{}:{line}:{col}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Errors found in one file, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Which file to read: an explicit path must exist; the default path may be
/// absent, and then the embedded default is used.
pub fn resolve_path(explicit: Option<&Path>) -> Option<PathBuf> {
    match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let p = PathBuf::from(DEFAULT_PATH);
            p.exists().then_some(p)
        }
    }
}

/// Loads `path`, or the embedded default when `path` is `None`.
pub fn load(path: Option<&Path>) -> Result<Config, ConfigErrors> {
    match path {
        None => Ok(embedded_default()),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigErrors(vec![ConfigError {
                    file: path.display().to_string(),
                    at: None,
                    message: format!("cannot read the config file: {e}"),
                }])
            })?;
            // Relative paths in the file are taken from the file's directory.
            let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            let base = abs.parent().unwrap_or(Path::new("/"));
            let mut cfg = parse(&text, &path.display().to_string(), base)?;
            cfg.path = Some(path.to_path_buf());
            Ok(cfg)
        }
    }
}

/// The config used when there is no file: loopback, self-signed TLS, no
/// agents, state under the user's state directory.
pub fn embedded_default() -> Config {
    let state = user_state_dir();
    #[allow(clippy::expect_used)]
    let mut cfg =
        parse(EMBEDDED_DEFAULT, "<embedded default>", &state).expect("the embedded default config is valid");
    cfg.server.state_dir = state.clone();
    cfg.server.log_dir = state.join("logs");
    cfg.server.api_key_file = Some(crate::paths::embedded_key_file(&state));
    cfg
}

/// Parses and validates config text. Relative paths are taken from `base`.
pub fn parse(text: &str, file: &str, base: &Path) -> Result<Config, ConfigErrors> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            at: e.span().map(|s| line_col(text, s.start)),
            message: e.message().trim().to_string(),
        }])
    })?;
    let mut v = Validator {
        text,
        file,
        errors: Vec::new(),
    };
    let cfg = v.config(raw, base);
    if v.errors.is_empty() {
        Ok(cfg)
    } else {
        v.errors.sort_by_key(|e| e.at);
        Err(ConfigErrors(v.errors))
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
    errors: Vec<ConfigError>,
}

impl Validator<'_> {
    fn error(&mut self, span: std::ops::Range<usize>, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_string(),
            at: Some(line_col(self.text, span.start)),
            message,
        });
    }

    /// `tls = { acme = ... }`: what an ACME server would refuse, said
    /// before an order is sent.
    fn acme(
        &mut self,
        span: std::ops::Range<usize>,
        raw: raw::RawAcme,
        resolve: impl Fn(PathBuf) -> PathBuf,
    ) -> Acme {
        if raw.domains.is_empty() {
            self.error(
                span.clone(),
                "tls.acme.domains is empty: name at least one DNS name, like domains = [\"agents.example.com\"]"
                    .into(),
            );
        }
        for d in &raw.domains {
            if let Some(why) = acme_domain_problem(d) {
                self.error(span.clone(), format!("tls.acme.domains: {d:?} {why}"));
            }
        }
        let contact = raw.contact.map(raw::OneOrMany::into_vec).unwrap_or_default();
        for c in &contact {
            let ok = c.strip_prefix("mailto:").is_some_and(|a| {
                a.split_once('@')
                    .is_some_and(|(u, h)| !u.is_empty() && h.contains('.'))
            });
            if !ok {
                self.error(
                    span.clone(),
                    format!(
                        "tls.acme.contact: {c:?} is not a mailto: address, like \"mailto:ops@example.com\""
                    ),
                );
            }
        }
        let directory = raw.directory.unwrap_or_else(|| LETS_ENCRYPT.to_string());
        match url::Url::parse(&directory) {
            Ok(u) if u.scheme() == "https" && u.host().is_some() => {}
            Ok(_) => self.error(
                span.clone(),
                format!(
                    "tls.acme.directory: {directory:?} is not an https:// URL (ACME servers speak HTTPS only)"
                ),
            ),
            Err(e) => self.error(
                span.clone(),
                format!("tls.acme.directory: {directory:?} is not a URL ({e})"),
            ),
        }
        Acme {
            domains: raw.domains,
            contact,
            directory,
            ca: raw.ca.map(resolve),
        }
    }

    fn config(&mut self, raw: RawConfig, base: &Path) -> Config {
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let listen = match &raw.server.listen {
            None => DEFAULT_LISTEN.parse().ok(),
            Some(l) => match parse_listen(l.get_ref()) {
                Some(a) => Some(a),
                None => {
                    self.error(
                        l.span(),
                        format!(
                            "invalid listen address {:?}: expected IP:PORT, like \"127.0.0.1:8487\" or \"[::]:8487\"",
                            l.get_ref()
                        ),
                    );
                    None
                }
            },
        };
        let tls = match raw.server.tls.map(|t| (t.span(), t.into_inner())) {
            None => Tls::Off,
            Some((_, RawTls::SelfSigned)) => Tls::SelfSigned,
            Some((_, RawTls::Files { cert, key })) => Tls::Files {
                cert: resolve(cert),
                key: resolve(key),
            },
            Some((span, RawTls::Acme(a))) => Tls::Acme(self.acme(span, a, resolve)),
        };
        let server = ServerConfig {
            listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8487))),
            api_key_file: raw.server.api_key_file.map(resolve),
            tls,
            state_dir: resolve(
                raw.server
                    .state_dir
                    .unwrap_or_else(|| crate::paths::DEFAULT_STATE_DIR.into()),
            ),
            log_dir: resolve(
                raw.server
                    .log_dir
                    .unwrap_or_else(|| crate::paths::DEFAULT_LOG_DIR.into()),
            ),
            sample_interval: raw
                .server
                .sample_interval
                .map_or(DEFAULT_SAMPLE_INTERVAL, |d| d.0),
            history_keep: self.bounded(
                raw.server.history_keep.as_ref(),
                "history_keep",
                (DEFAULT_HISTORY_KEEP, MAX_HISTORY_KEEP),
                "status changes per agent",
            ),
            audit_keep: self.bounded(
                raw.server.audit_keep.as_ref(),
                "audit_keep",
                (DEFAULT_AUDIT_KEEP, MAX_AUDIT_KEEP),
                "audit entries",
            ),
            public_url: raw.server.public_url.as_ref().and_then(|u| self.public_url(u)),
            cgroups: match raw.server.cgroups.as_ref() {
                None => Cgroups::Auto,
                Some(v) => match v.get_ref().as_str() {
                    "auto" => Cgroups::Auto,
                    "off" => Cgroups::Off,
                    other => {
                        self.error(
                            v.span(),
                            format!("invalid cgroups {other:?}: expected \"auto\" or \"off\""),
                        );
                        Cgroups::Auto
                    }
                },
            },
            api_edits: raw.server.api_edits.unwrap_or(false),
            trusted_proxies: raw
                .server
                .trusted_proxies
                .iter()
                .flatten()
                .filter_map(|p| self.proxy(p))
                .collect(),
        };
        let keys = raw
            .keys
            .into_iter()
            .filter_map(|(name, key)| self.key(name, key))
            .collect::<Vec<_>>();
        if let Err(e) = crate::secret::KeyRing::new(keys.clone()) {
            self.errors.push(ConfigError {
                file: self.file.to_string(),
                at: None,
                message: format!("[keys]: {e}"),
            });
        }
        let (defaults, default_log) = self.policy(&raw.defaults, Policy::default(), LogPolicy::default());
        let mut agents = BTreeMap::new();
        let mut dep_spans = BTreeMap::new();
        for (id, agent) in raw.agents {
            let span = agent.span();
            let agent = agent.into_inner();
            let at = agent.depends_on.as_ref().map_or(span.clone(), |d| d.span());
            dep_spans.insert(id.0.clone(), at);
            let cfg = self.agent(id.0.clone(), agent, span, (defaults, default_log), base, &resolve);
            agents.insert(id.0, Arc::new(cfg));
        }
        self.dependencies(&agents, &dep_spans);
        let fleet = raw.fleet.and_then(|f| self.fleet(f.into_inner(), &resolve));
        Config {
            path: None,
            server,
            agents,
            keys,
            fleet,
        }
    }

    /// `[fleet]`: a `nats://` or `tls://` URL, a host usable in a subject.
    fn fleet(&mut self, raw: raw::RawFleet, resolve: &dyn Fn(PathBuf) -> PathBuf) -> Option<FleetConfig> {
        let text = raw.nats.get_ref();
        let nats = match url::Url::parse(text) {
            Ok(u) if matches!(u.scheme(), "nats" | "tls") && u.has_host() => Some(u),
            _ => {
                self.error(
                    raw.nats.span(),
                    format!(
                        "invalid nats {text:?}: expected \"nats://HOST:PORT\" or \"tls://HOST:PORT\", like \"nats://127.0.0.1:4222\""
                    ),
                );
                None
            }
        };
        let host = match raw.host {
            None => default_fleet_host(),
            Some(h) if is_fleet_host(h.get_ref()) => h.into_inner(),
            Some(h) => {
                self.error(
                    h.span(),
                    format!(
                        "invalid fleet host {:?}: expected 1 to 64 letters, digits, '-' or '_' (it is a NATS subject token: agentsd.<host>.status)",
                        h.get_ref()
                    ),
                );
                return None;
            }
        };
        let queue = self.bounded(
            raw.queue.as_ref(),
            "queue",
            (DEFAULT_FLEET_QUEUE, MAX_FLEET_QUEUE),
            "events waiting for NATS",
        ) as usize;
        Some(FleetConfig {
            queue,
            nats: nats?,
            host,
            nats_ca: raw.nats_ca.map(resolve),
            nats_creds: raw.nats_creds.map(resolve),
            view: raw.view.unwrap_or(false),
        })
    }

    /// A count between 1 and `max`, `default` when not given.
    fn bounded(
        &mut self,
        v: Option<&toml::Spanned<u32>>,
        key: &str,
        (default, max): (u32, u32),
        what: &str,
    ) -> u32 {
        match v {
            None => default,
            Some(k) if *k.get_ref() == 0 || *k.get_ref() > max => {
                self.error(
                    k.span(),
                    format!(
                        "{key} = {} is out of range: expected 1 to {max} {what}",
                        k.get_ref()
                    ),
                );
                default
            }
            Some(k) => *k.get_ref(),
        }
    }

    /// An `https://` (or `http://`) URL without user or password.
    fn public_url(&mut self, u: &toml::Spanned<String>) -> Option<url::Url> {
        let text = u.get_ref();
        match url::Url::parse(text) {
            Ok(url)
                if matches!(url.scheme(), "https" | "http")
                    && url.username().is_empty()
                    && url.password().is_none()
                    && url.has_host() =>
            {
                Some(url)
            }
            _ => {
                self.error(
                    u.span(),
                    format!("invalid public_url {text:?}: expected the dashboard's address as browsers see it, like \"https://bots.example.com\""),
                );
                None
            }
        }
    }

    /// A CIDR (`10.0.0.0/8`, `::1/128`) or a single address.
    fn proxy(&mut self, p: &toml::Spanned<String>) -> Option<ipnet::IpNet> {
        let text = p.get_ref().trim();
        let parsed = text
            .parse::<ipnet::IpNet>()
            .ok()
            .or_else(|| text.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from));
        if parsed.is_none() {
            self.error(
                p.span(),
                format!(
                    "invalid trusted proxy {text:?}: expected an address or a CIDR, like \"10.0.0.0/8\" or \"::1\""
                ),
            );
        }
        parsed.map(|n| n.trunc())
    }

    fn key(
        &mut self,
        name: toml::Spanned<String>,
        key: toml::Spanned<raw::RawKey>,
    ) -> Option<crate::secret::KeyEntry> {
        let (span, key) = (key.span(), key.into_inner());
        let n = name.get_ref();
        if !is_key_name(n) {
            self.error(
                name.span(),
                format!("invalid key name {n:?}: expected 1 to 64 letters, digits, '-', '_' or '.'"),
            );
            return None;
        }
        if n == FILE_KEY_NAME || n == ENV_KEY_NAME {
            self.error(
                name.span(),
                format!("the key name {n:?} is reserved for the daemon's own key: choose another"),
            );
            return None;
        }
        match crate::secret::parse_digest(key.digest.get_ref()) {
            Ok(digest) => Some(crate::secret::KeyEntry {
                name: name.into_inner(),
                role: key.role,
                digest,
            }),
            Err(e) => {
                let at = if key.digest.span().is_empty() {
                    span
                } else {
                    key.digest.span()
                };
                self.error(at, format!("key {n:?}: {e}"));
                None
            }
        }
    }

    fn policy(&mut self, raw: &RawPolicy, base: Policy, base_log: LogPolicy) -> (Policy, LogPolicy) {
        let mut p = base;
        if let Some(r) = raw.restart {
            p.restart = r;
        }
        if let Some(s) = raw.stop_signal {
            p.stop_signal = s.0;
        }
        if let Some(d) = raw.stop_timeout {
            p.stop_timeout = d.0;
        }
        if let Some(d) = raw.start_window {
            p.start_window = d.0;
        }
        if let Some(n) = raw.max_restarts {
            p.max_restarts = n;
        }
        if let Some(b) = &raw.backoff {
            let inner = b.get_ref();
            if let Some(d) = inner.initial {
                p.backoff_initial = d.0;
            }
            if let Some(d) = inner.max {
                p.backoff_max = d.0;
            }
            if p.backoff_initial > p.backoff_max {
                self.error(
                    b.span(),
                    format!(
                        "backoff initial ({}) is longer than backoff max ({}): expected initial <= max",
                        humantime::format_duration(p.backoff_initial),
                        humantime::format_duration(p.backoff_max)
                    ),
                );
            }
        }
        let mut log = base_log;
        if let Some(s) = &raw.log_max_size {
            if s.get_ref().0 < MIN_LOG_SIZE {
                self.error(
                    s.span(),
                    format!(
                        "log_max_size of {} bytes is too small: expected at least \"4KiB\"",
                        s.get_ref().0
                    ),
                );
            }
            log.max_size = s.get_ref().0;
        }
        if let Some(k) = &raw.log_keep {
            let v = *k.get_ref();
            if v > MAX_LOG_KEEP {
                self.error(
                    k.span(),
                    format!("log_keep = {v} is too many: expected at most {MAX_LOG_KEEP} rotated files"),
                );
            }
            log.keep = v;
        }
        if let Some(t) = raw.log_timestamps {
            log.timestamps = t;
        }
        (p, log)
    }

    /// The dependency graph's problems, each at the `depends_on` of the
    /// agent it is found on.
    fn dependencies(
        &mut self,
        agents: &BTreeMap<String, Arc<AgentConfig>>,
        spans: &BTreeMap<String, std::ops::Range<usize>>,
    ) {
        let nodes = agents
            .iter()
            .map(|(id, a)| {
                (
                    id.as_str(),
                    health::Node {
                        depends_on: &a.depends_on,
                        has_probe: a.probe.is_some(),
                        restarts_always: a.policy.restart == RestartPolicy::Always,
                    },
                )
            })
            .collect();
        for (id, problem) in health::check_graph(&nodes) {
            let span = spans.get(&id).cloned().unwrap_or(0..0);
            self.error(span, problem);
        }
    }

    fn agent(
        &mut self,
        id: String,
        raw: RawAgent,
        span: std::ops::Range<usize>,
        (defaults, default_log): (Policy, LogPolicy),
        base: &Path,
        resolve: &dyn Fn(PathBuf) -> PathBuf,
    ) -> AgentConfig {
        if raw.command.get_ref().is_empty() || raw.command.get_ref()[0].trim().is_empty() {
            self.error(
                raw.command.span(),
                format!("agent {id:?}: command is empty: expected [\"program\", \"arg\", ...]"),
            );
        }
        for key in raw.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                self.error(
                    span.clone(),
                    format!("agent {id:?}: invalid environment variable name {key:?}"),
                );
            }
        }
        if let Some(u) = &raw.user
            && u.trim().is_empty()
        {
            self.error(span.clone(), format!("agent {id:?}: user is empty"));
        }
        let (mut policy, log) = self.policy(&raw.policy(), defaults, default_log);
        let probe = match raw.health {
            None => None,
            Some(h) => {
                let at = h.span();
                match health::health(h.into_inner()) {
                    Ok((probe, timing)) => {
                        policy.health = Some(timing);
                        Some(probe)
                    }
                    Err(problems) => {
                        for p in problems {
                            self.error(at.clone(), format!("agent {id:?}: {p}"));
                        }
                        None
                    }
                }
            }
        };
        let stdin_pipe = match raw.stdin.as_ref() {
            None => false,
            Some(s) => match s.get_ref().as_str() {
                "pipe" => true,
                "null" => false,
                other => {
                    self.error(
                        s.span(),
                        format!("agent {id:?}: invalid stdin {other:?}: expected \"pipe\" or \"null\""),
                    );
                    false
                }
            },
        };
        let depends_on = raw
            .depends_on
            .map(|d| d.into_inner().into_iter().map(|(k, c)| (k.0, c)).collect())
            .unwrap_or_default();
        let stats = raw.stats.map(|s| {
            if let Some(problem) = s.messages.as_deref().and_then(messages_problem) {
                self.error(span.clone(), format!("agent {id:?}: stats.messages: {problem}"));
            }
            StatsConfig {
                db: resolve(s.db),
                query: s.query,
                messages: s.messages,
            }
        });
        AgentConfig {
            id,
            command: raw.command.into_inner(),
            cwd: raw.cwd.map(resolve).unwrap_or_else(|| base.to_path_buf()),
            env: raw.env,
            env_file: raw.env_file.map(resolve),
            user: raw.user,
            autostart: raw.autostart.unwrap_or(true),
            stats,
            policy,
            log,
            probe,
            depends_on,
            stdin_pipe,
        }
    }
}

/// What is wrong with a `stats.messages` query that can be told without
/// its database (which may not exist yet): blank, not SQL, several
/// statements, or (when it compiles without tables) not exactly one
/// parameter. A query on tables it cannot see is taken as it is; the
/// stream reports what is still wrong when it runs.
fn messages_problem(sql: &str) -> Option<String> {
    if sql.trim().is_empty() {
        return Some("the query is empty".into());
    }
    let conn = rusqlite::Connection::open_in_memory().ok()?;
    match conn.prepare(sql) {
        Ok(stmt) if stmt.parameter_count() != 1 => Some(format!(
            "expected exactly one parameter (?1, the last cursor sent), found {}",
            stmt.parameter_count()
        )),
        Ok(_) => None,
        Err(rusqlite::Error::MultipleStatement) => Some("expected one statement, found several".into()),
        Err(e) => {
            let text = e.to_string();
            // Tables and columns are the database's: not known here.
            (!text.contains("no such")).then(|| format!("not a valid query: {text}"))
        }
    }
}

impl Config {
    /// Refuses plain HTTP on a non-loopback address.
    pub fn check_listen_security(&self) -> Result<(), String> {
        if self.server.tls == Tls::Off && !self.server.listen.ip().is_loopback() {
            return Err(format!(
                "refusing to serve plain HTTP on {}: without `tls` only a loopback address is allowed (put a TLS-terminating proxy in front, or set tls = \"self-signed\" or tls = {{ cert = ..., key = ... }})",
                self.server.listen
            ));
        }
        Ok(())
    }

    /// The file name shown in messages.
    pub fn display_path(&self) -> String {
        self.path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<embedded default>".into())
    }
}

#[cfg(test)]
mod tests;

/// Why an ACME server would refuse `d` as a name to validate with
/// tls-alpn-01, if it would.
fn acme_domain_problem(d: &str) -> Option<&'static str> {
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Some("is an IP address: ACME certificates here are for DNS names");
    }
    if d.starts_with("*.") {
        return Some("is a wildcard: tls-alpn-01 cannot validate wildcards (use a DNS-01 client)");
    }
    if rustls::pki_types::DnsName::try_from(d).is_err() {
        return Some("is not a valid DNS name");
    }
    None
}
