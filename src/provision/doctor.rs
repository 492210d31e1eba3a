//! `agentsd doctor`: every check of a host, each one verdict (ok, warn,
//! fail, skip), a detail and a hint to fix it. Usable before the daemon
//! starts (what would stop `serve`) and while it runs. The output is
//! `commands/doctor.rs`'s; this file decides.
//!
//! The thresholds, as the help text documents them:
//! - certificate: expired or not valid yet = fail; expiring within 14 days
//!   = warn; a `public_url` host it does not name = fail (browsers refuse
//!   it); a `listen` address it does not name = warn (a client that pins
//!   the fingerprint still connects).
//! - disk: less than 64 MiB or 1 % free = fail (a log cannot even rotate
//!   once at the default 50 MiB); less than 5 % = warn.
//! - open files: `serve` raises its soft limit to the hard one, so the
//!   hard limit is compared with what it needs: [`fds::needed`] (2 per
//!   agent, 1 more with `stdin = "pipe"`, 28 for the daemon itself) plus
//!   the reserve it keeps for the API ([`fds::reserve`]).

use super::unit;
use crate::config::{self, Config, Tls};
use crate::fds;
use serde::Serialize;
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a package or `install-unit` puts the unit, in the order systemd
/// prefers them.
pub const UNIT_PATHS: [&str; 3] = [
    "/etc/systemd/system/agentsd.service",
    "/lib/systemd/system/agentsd.service",
    "/usr/lib/systemd/system/agentsd.service",
];

/// A certificate that expires within this many days is a warning.
pub const EXPIRY_WARN_DAYS: u64 = 14;
/// Less free space than this (or [`FULL_PERCENT`]) is a failure.
pub const FULL_BYTES: u64 = 64 * 1024 * 1024;
pub const FULL_PERCENT: f64 = 1.0;
/// Less free space than this is a warning.
pub const LOW_PERCENT: f64 = 5.0;
/// How long the daemon has to answer `/health`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Skip,
    Warn,
    Fail,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Skip => "skip",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// One check's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Level,
    pub detail: String,
    /// How to fix it (warn and fail).
    pub hint: Option<String>,
    /// The unit's drift: a unified diff, installed against expected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

impl Check {
    fn new(name: &'static str, status: Level, detail: impl Into<String>) -> Check {
        Check {
            name,
            status,
            detail: detail.into(),
            hint: None,
            diff: None,
        }
    }
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check::new(name, Level::Ok, detail)
    }
    fn skip(name: &'static str, detail: impl Into<String>) -> Check {
        Check::new(name, Level::Skip, detail)
    }
    fn warn(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check::new(name, Level::Warn, detail).hint(hint)
    }
    fn fail(name: &'static str, detail: impl Into<String>, hint: impl Into<String>) -> Check {
        Check::new(name, Level::Fail, detail).hint(hint)
    }
    fn hint(mut self, hint: impl Into<String>) -> Check {
        self.hint = Some(hint.into());
        self
    }
}

/// What to examine.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--config`; `None`: the default path, else the embedded default (as
    /// `serve` does).
    pub config: Option<PathBuf>,
    /// `--unit`; `None`: the first of [`UNIT_PATHS`] that exists.
    pub unit: Option<PathBuf>,
}

/// Every check, in the order they are shown.
pub fn run(opts: &Options) -> Vec<Check> {
    let path = config::resolve_path(opts.config.as_deref());
    let (config_check, cfg) = check_config(path.as_deref());
    let unit = Installed::find(opts.unit.as_deref());
    let user = DaemonUser::of(unit.as_ref());
    let mut checks = vec![config_check];
    let mut unit_checks = vec![
        check_unit(opts.unit.as_deref(), unit.as_ref(), path.as_deref()),
        check_systemd(),
    ];
    let Some(cfg) = cfg else {
        for name in [
            "key",
            "certificate",
            "listen",
            "daemon",
            "state_dir",
            "log_dir",
            "open_files",
        ] {
            checks.push(Check::skip(name, "the config is not valid"));
        }
        checks.append(&mut unit_checks);
        return checks;
    };
    let key = check_key(&cfg, &user);
    checks.push(key.check);
    checks.push(check_certificate(&cfg));
    let (listen, daemon, pid) = check_daemon(&cfg, key.key.as_deref());
    checks.push(listen);
    checks.push(daemon);
    checks.push(check_dir("state_dir", &cfg.server.state_dir, &user, true));
    checks.push(check_dir("log_dir", &cfg.server.log_dir, &user, false));
    checks.push(check_open_files(&cfg, pid, unit.as_ref()));
    checks.append(&mut unit_checks);
    checks
}

fn check_config(path: Option<&Path>) -> (Check, Option<Config>) {
    let shown = path.map_or_else(|| "<embedded default>".to_string(), |p| p.display().to_string());
    match config::load(path) {
        Err(e) => (
            // One line a check: the errors one after the other.
            Check::fail(
                "config",
                e.to_string().replace('\n', "; "),
                format!("agentsd config check --config {shown}"),
            ),
            None,
        ),
        Ok(cfg) => {
            if let Err(e) = cfg.check_listen_security() {
                return (
                    Check::fail(
                        "config",
                        format!("{shown}: {e}"),
                        "listen on loopback, or set tls",
                    ),
                    Some(cfg),
                );
            }
            let agents = cfg.agents.len();
            let what = format!(
                "{agents} agent{}, listen {}",
                if agents == 1 { "" } else { "s" },
                cfg.server.listen
            );
            let check = match path {
                Some(p) => Check::ok("config", format!("{} is valid ({what})", p.display())),
                None => Check::warn(
                    "config",
                    format!(
                        "no {}: serve would run its embedded default ({what})",
                        config::DEFAULT_PATH
                    ),
                    "write a config file, or pass --config",
                ),
            };
            (check, Some(cfg))
        }
    }
}

/// The user the daemon runs as: the unit's `User=` (none: root); with no
/// unit installed, the user running `doctor`.
#[derive(Debug, Clone)]
pub struct DaemonUser {
    pub name: String,
    pub uid: u32,
    /// Its primary and supplementary groups.
    pub gids: Vec<u32>,
    /// `User=` names no user of this host.
    pub unknown: bool,
}

impl DaemonUser {
    /// `unit`: the installed unit, if any.
    fn of(unit: Option<&Installed>) -> DaemonUser {
        use nix::unistd::{Uid, User};
        let wanted = match unit {
            Some(u) => u.user.clone(),
            None => None,
        };
        let found = match (&wanted, unit) {
            (Some(name), _) => User::from_name(name).ok().flatten(),
            (None, Some(_)) => User::from_uid(Uid::from_raw(0)).ok().flatten(),
            (None, None) => User::from_uid(Uid::effective()).ok().flatten(),
        };
        match found {
            Some(u) => {
                let gids = std::ffi::CString::new(u.name.clone())
                    .ok()
                    .and_then(|n| nix::unistd::getgrouplist(&n, u.gid).ok())
                    .unwrap_or_else(|| vec![u.gid])
                    .into_iter()
                    .map(|g| g.as_raw())
                    .collect();
                DaemonUser {
                    name: u.name,
                    uid: u.uid.as_raw(),
                    gids,
                    unknown: false,
                }
            }
            // `User=` names no user here.
            None if wanted.is_some() => DaemonUser {
                name: wanted.unwrap_or_default(),
                uid: u32::MAX,
                gids: Vec::new(),
                unknown: true,
            },
            // No passwd entry for the uid: still that uid.
            None => {
                let uid = if unit.is_some() {
                    0
                } else {
                    Uid::effective().as_raw()
                };
                DaemonUser {
                    name: if uid == 0 {
                        "root".into()
                    } else {
                        format!("uid {uid}")
                    },
                    uid,
                    gids: Vec::new(),
                    unknown: false,
                }
            }
        }
    }

    /// Whether this user may write into a directory with `meta`, by its
    /// mode bits (what `access(2)` would say for that user).
    fn can_write(&self, meta: &std::fs::Metadata) -> bool {
        let mode = meta.mode();
        if self.uid == 0 {
            true
        } else if meta.uid() == self.uid {
            mode & 0o300 == 0o300
        } else if self.gids.contains(&meta.gid()) {
            mode & 0o030 == 0o030
        } else {
            mode & 0o003 == 0o003
        }
    }
}

struct KeyCheck {
    check: Check,
    /// The key, when it could be read (to ask `/health` with it).
    key: Option<String>,
}

fn check_key(cfg: &Config, user: &DaemonUser) -> KeyCheck {
    const NAME: &str = "key";
    let done = |check: Check| KeyCheck { check, key: None };
    let Some(path) = &cfg.server.api_key_file else {
        return match std::env::var(config::ENV_KEY_NAME) {
            Ok(k) => match crate::secret::check_len(k.trim(), config::ENV_KEY_NAME) {
                Ok(()) => KeyCheck {
                    check: Check::ok(
                        NAME,
                        format!("no api_key_file; the key from {}", config::ENV_KEY_NAME),
                    ),
                    key: Some(k.trim().to_string()),
                },
                Err(e) => done(Check::fail(NAME, format!("{e:#}"), "agentsd gen-key makes one")),
            },
            Err(_) if !cfg.keys.is_empty() => done(Check::ok(
                NAME,
                format!("no api_key_file; {} [keys] entries", cfg.keys.len()),
            )),
            Err(_) => done(Check::fail(
                NAME,
                "no API key: no api_key_file, no AGENTSD_API_KEY, no [keys]",
                "agentsd gen-key --out /etc/agentsd/api.key, then api_key_file in [server]",
            )),
        };
    };
    let shown = path.display();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return done(if path.starts_with(&cfg.server.state_dir) {
                Check::ok(NAME, format!("{shown} will be generated at first start"))
            } else {
                Check::fail(
                    NAME,
                    format!("{shown} does not exist"),
                    format!("agentsd gen-key --out {shown}"),
                )
            });
        }
        Err(e) => {
            return done(Check::fail(
                NAME,
                format!("cannot read {shown}: {e}"),
                "check its directory's permissions",
            ));
        }
    };
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return done(Check::fail(
            NAME,
            format!("{shown} has mode {mode:04o}: readable by group or others (serve refuses it)"),
            format!("chmod 600 {shown}"),
        ));
    }
    if user.unknown {
        return done(Check::fail(
            NAME,
            format!("the unit's User={} does not exist on this host", user.name),
            format!(
                "useradd --system {}, or install-unit --user with another user",
                user.name
            ),
        ));
    }
    let chown = format!("chown {} {shown}", user.name);
    // A root daemon reads a file of another owner: said, and the key is
    // still read to ask the daemon with it.
    let mut owner = None;
    if meta.uid() != user.uid {
        let detail = format!(
            "{shown} belongs to uid {}, not to the daemon's user {} (uid {})",
            meta.uid(),
            user.name,
            user.uid
        );
        if user.uid != 0 {
            return done(Check::fail(
                NAME,
                format!("{detail}: the daemon cannot read it"),
                chown,
            ));
        }
        owner = Some(Check::warn(NAME, detail, chown));
    }
    match crate::secret::read_key_file(path) {
        Ok(key) => KeyCheck {
            check: owner.unwrap_or_else(|| {
                Check::ok(NAME, format!("{shown}: mode {mode:04o}, owned by {}", user.name))
            }),
            key: Some(key),
        },
        Err(e) => {
            let unreadable = e
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied);
            if unreadable {
                done(Check::warn(
                    NAME,
                    format!(
                        "{shown}: mode {mode:04o}, owned by {}; this user cannot read it to check it",
                        user.name
                    ),
                    format!("run agentsd doctor as root or as {}", user.name),
                ))
            } else {
                done(Check::fail(
                    NAME,
                    format!("{e:#}"),
                    format!("agentsd gen-key --force --out {shown}"),
                ))
            }
        }
    }
}

/// The certificate file `serve` would serve, and whether it is the one it
/// generates itself.
fn cert_path(cfg: &Config) -> Option<(PathBuf, PathBuf, bool)> {
    match &cfg.server.tls {
        Tls::Off => None,
        Tls::Files { cert, key } => Some((cert.clone(), key.clone(), false)),
        Tls::SelfSigned => {
            let cert = crate::paths::self_signed_cert(&cfg.server.state_dir);
            let key = cert.with_file_name("key.pem");
            Some((cert, key, true))
        }
        // ACME's cache file holds the key, then the chain.
        Tls::Acme(acme) => {
            let cached = crate::acme::cached_cert(&cfg.server.state_dir, acme);
            Some((cached.clone(), cached, false))
        }
    }
}

fn check_certificate(cfg: &Config) -> Check {
    const NAME: &str = "certificate";
    let Some((cert, key, generated)) = cert_path(cfg) else {
        return Check::skip(NAME, format!("tls is off: plain HTTP on {}", cfg.server.listen));
    };
    let shown = cert.display();
    if generated && !cert.exists() {
        return Check::ok(
            NAME,
            format!("self-signed: {shown} will be generated at first start"),
        );
    }
    if let Tls::Acme(acme) = &cfg.server.tls
        && !cert.exists()
    {
        let port = cfg.server.listen.port();
        let reach = if port == 443 {
            String::new()
        } else {
            format!(" (the ACME server connects to port 443: forward it to {port})")
        };
        return Check::ok(
            NAME,
            format!(
                "ACME: none cached yet ({shown}): serve orders one for {} from {} at start, with tls-alpn-01 on the API port{reach}",
                acme.domains.join(", "),
                acme.directory
            ),
        );
    }
    let renew = if matches!(cfg.server.tls, Tls::Acme(_)) {
        "the daemon renews it itself, two thirds into its life: its log says why an order failed (journalctl -u agentsd | grep ACME)".to_string()
    } else if generated {
        format!(
            "remove {shown} and {} and restart the daemon: it makes a new one",
            key.display()
        )
    } else {
        format!(
            "renew it with its CA (or agentsd gen-key --force --tls-dir {} --san NAME...)",
            cert.parent().unwrap_or(Path::new(".")).display()
        )
    };
    let pem = match std::fs::read(&cert) {
        Ok(p) => p,
        Err(e) => return Check::fail(NAME, format!("cannot read {shown}: {e}"), renew),
    };
    let facts = match CertFacts::from_pem(&pem) {
        Ok(f) => f,
        Err(e) => return Check::fail(NAME, format!("{shown}: {e}"), renew),
    };
    // The key is the daemon's to read: one this user may not read is left
    // unchecked, not failed.
    let unchecked = match crate::host::Pair::read(&cert, &key) {
        Ok(_) => None,
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied) =>
        {
            Some(format!("{e:#}"))
        }
        Err(e) => return Check::fail(NAME, format!("{e:#}"), renew),
    };
    // An ACME certificate names its domains, by which clients reach it:
    // the listen address is not one of them.
    let listen = match cfg.server.tls {
        Tls::Acme(_) => SocketAddr::new(std::net::Ipv4Addr::UNSPECIFIED.into(), cfg.server.listen.port()),
        _ => cfg.server.listen,
    };
    let mut verdict = certificate_verdict(&facts, unix_now(), listen, cfg.server.public_url.as_ref());
    verdict.detail = format!("{shown}: {}", verdict.detail);
    if verdict.status >= Level::Warn && verdict.hint.is_none() {
        verdict.hint = Some(renew);
    }
    if let Some(why) = unchecked
        && verdict.status < Level::Warn
    {
        return Check::warn(
            NAME,
            format!("{}; its key was not checked ({why})", verdict.detail),
            "run agentsd doctor as root or as the daemon's user",
        );
    }
    verdict
}

/// What the checks need of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    pub dns: Vec<String>,
    pub ips: Vec<std::net::IpAddr>,
}

impl CertFacts {
    pub fn from_pem(pem: &[u8]) -> Result<CertFacts, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let der = CertificateDer::pem_slice_iter(pem)
            .next()
            .ok_or("no certificate in the file")?
            .map_err(|e| format!("not a PEM certificate: {e}"))?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| format!("not a valid certificate: {e}"))?;
        let mut facts = CertFacts {
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            dns: Vec::new(),
            ips: Vec::new(),
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => facts.dns.push(d.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            facts.ips.push(v4.into());
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            facts.ips.push(v6.into());
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(facts)
    }

    /// Whether the certificate names `host` (a DNS name or an IP address;
    /// `*.example.com` covers one label).
    pub fn covers(&self, host: &url::Host<&str>) -> bool {
        match host {
            url::Host::Ipv4(ip) => self.ips.contains(&(*ip).into()),
            url::Host::Ipv6(ip) => self.ips.contains(&(*ip).into()),
            url::Host::Domain(name) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                self.dns.iter().any(|d| {
                    let d = d.trim_end_matches('.').to_ascii_lowercase();
                    match d.strip_prefix("*.") {
                        Some(parent) => name
                            .split_once('.')
                            .is_some_and(|(first, rest)| !first.is_empty() && rest == parent),
                        None => d == name,
                    }
                })
            }
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn date(t: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The verdict on a certificate at `now`: its dates, then its names.
pub fn certificate_verdict(
    facts: &CertFacts,
    now: i64,
    listen: SocketAddr,
    public_url: Option<&url::Url>,
) -> Check {
    const NAME: &str = "certificate";
    if facts.not_after <= now {
        return Check::new(NAME, Level::Fail, format!("expired on {}", date(facts.not_after)));
    }
    if facts.not_before > now {
        return Check::new(
            NAME,
            Level::Fail,
            format!("not valid before {}", date(facts.not_before)),
        );
    }
    let days = (facts.not_after - now) as u64 / 86_400;
    let expiry = format!("valid until {} ({days} days)", date(facts.not_after));
    let mut problems: Vec<(Level, String, Option<String>)> = Vec::new();
    if let Some(url) = public_url
        && let Some(host) = url.host()
        && !facts.covers(&host)
    {
        problems.push((
            Level::Fail,
            format!("does not name {host} (public_url): browsers and clients refuse it"),
            Some(format!("a certificate whose SANs include {host}")),
        ));
    }
    let ip = listen.ip();
    if !ip.is_unspecified() && !facts.ips.contains(&ip) {
        problems.push((
            Level::Warn,
            format!("does not name {ip} (listen): only clients that pin its fingerprint connect"),
            Some(format!(
                "a certificate whose SANs include {ip}, or pin it in the clients"
            )),
        ));
    }
    if days < EXPIRY_WARN_DAYS {
        problems.push((
            Level::Warn,
            format!(
                "expires in {days} days, on {} (less than {EXPIRY_WARN_DAYS})",
                date(facts.not_after)
            ),
            None,
        ));
    }
    let Some(worst) = problems.iter().map(|p| p.0).max() else {
        return Check::ok(NAME, expiry);
    };
    let detail = problems
        .iter()
        .map(|p| p.1.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let hint = problems.iter().find(|p| p.0 == worst).and_then(|p| p.2.clone());
    Check {
        name: NAME,
        status: worst,
        detail,
        hint,
        diff: None,
    }
}

/// `listen` and `daemon`: whether the port is free or held by this
/// config's daemon, and what that daemon answers on `/health`; the
/// daemon's pid when it told it.
fn check_daemon(cfg: &Config, key: Option<&str>) -> (Check, Check, Option<u32>) {
    let listen = cfg.server.listen;
    if listen.port() == 0 {
        return (
            Check::skip("listen", "port 0: the daemon takes another port at each start"),
            Check::skip("daemon", "listen port 0: the daemon cannot be found"),
            None,
        );
    }
    let port = listen.port();
    let ss = format!("see who holds it: ss -ltnp 'sport = :{port}'; or choose another listen");
    let start = match &cfg.path {
        Some(p) => format!(
            "systemctl start agentsd, or agentsd serve --config {}",
            p.display()
        ),
        None => "systemctl start agentsd, or agentsd serve".to_string(),
    };
    let mut addr = listen;
    addr.set_ip(crate::client::local::reachable(listen.ip()));
    match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            let listen_check = match std::net::TcpListener::bind(listen) {
                Ok(_) => Check::ok("listen", format!("{listen} is free: serve can listen there")),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Check::fail(
                    "listen",
                    format!("{listen} is taken by something else (address in use)"),
                    ss,
                ),
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => Check::warn(
                    "listen",
                    format!("{listen}: this user may not listen there (port below 1024)"),
                    "the daemon's user needs CAP_NET_BIND_SERVICE (AmbientCapabilities= in the unit)",
                ),
                Err(e) => Check::fail(
                    "listen",
                    format!("cannot listen on {listen}: {e}"),
                    "choose another listen",
                ),
            };
            let daemon = Check::warn("daemon", format!("not running: nothing listens on {addr}"), start);
            (listen_check, daemon, None)
        }
        Err(e) => (
            Check::fail("listen", format!("cannot reach {addr}: {e}"), ss),
            Check::warn("daemon", format!("not answering on {addr}"), start),
            None,
        ),
        Ok(_) => match ask_health(cfg, addr, key) {
            Ok(h) => daemon_answered(h, addr, key.is_some()),
            Err(why) => (
                Check::fail(
                    "listen",
                    format!(
                        "{listen} is taken by something else: it does not answer as this config's agentsd ({why})"
                    ),
                    ss,
                ),
                Check::warn("daemon", format!("no agentsd answers on {addr}"), start),
                None,
            ),
        },
    }
}

fn daemon_answered(h: crate::wire::Health, addr: SocketAddr, with_key: bool) -> (Check, Check, Option<u32>) {
    let held = match h.pid {
        Some(pid) => format!("{addr} is held by the daemon (pid {pid})"),
        None => format!("{addr} is held by the daemon"),
    };
    let listen = Check::ok("listen", held);
    let about = match h.pid {
        Some(pid) => format!("agentsd {} (pid {pid}) answers /health: {}", h.version, h.status),
        None => format!("agentsd {} answers /health: {}", h.version, h.status),
    };
    let daemon = if h.pid.is_none() && with_key {
        Check::fail(
            "daemon",
            format!("{about}, but refuses the config's key"),
            "the running daemon has another key: restart it (systemctl restart agentsd) or check api_key_file",
        )
    } else if h.pid.is_none() {
        Check::warn(
            "daemon",
            format!("{about}; its details were not asked (no key could be read)"),
            "run agentsd doctor as the daemon's user or root",
        )
    } else if h.status != "ok" {
        let mut why: Vec<String> = h.config_error.iter().cloned().collect();
        why.extend(h.problems.iter().cloned());
        Check::warn(
            "daemon",
            format!("{about}: {}", why.join("; ")),
            "journalctl -u agentsd, or the daemon's log",
        )
    } else {
        Check::ok("daemon", about)
    };
    (listen, daemon, h.pid)
}

/// `GET /health` with the key, trusting only the config's certificate.
fn ask_health(cfg: &Config, addr: SocketAddr, key: Option<&str>) -> Result<crate::wire::Health, String> {
    use crate::client::trust::Trust;
    let (scheme, trust) = match cert_path(cfg) {
        None => ("http", Trust::System),
        Some((cert, ..)) => match crate::certs::fingerprint_of_pem(&cert) {
            Ok(fp) => ("https", Trust::Pin(fp)),
            Err(e) => return Err(format!("{e:#}")),
        },
    };
    let target = crate::client::Target {
        url: format!("{scheme}://{addr}"),
        key: key.unwrap_or_default().to_string(),
        trust,
    };
    let client = crate::client::Client::new(target).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        match tokio::time::timeout(HEALTH_TIMEOUT, client.health()).await {
            Err(_) => Err(format!("no answer within {}s", HEALTH_TIMEOUT.as_secs())),
            Ok(r) => r.map_err(|e| e.to_string()),
        }
    })
}

/// `state_dir` or `log_dir`: there (or makeable), writable by the daemon's
/// user, with room. `serve` also refuses a state dir of another owner.
fn check_dir(name: &'static str, dir: &Path, user: &DaemonUser, owned: bool) -> Check {
    let shown = dir.display();
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let parent = dir.ancestors().skip(1).find(|p| p.exists());
            return match parent.map(|p| (p, std::fs::metadata(p))) {
                Some((_, Ok(m))) if user.can_write(&m) => Check::warn(
                    name,
                    format!("{shown} does not exist: serve creates it"),
                    format!("mkdir -p {shown}"),
                ),
                Some((p, _)) => Check::fail(
                    name,
                    format!(
                        "{shown} does not exist and {} cannot create it in {}",
                        user.name,
                        p.display()
                    ),
                    format!("mkdir -p {shown} && chown {} {shown}", user.name),
                ),
                None => Check::fail(
                    name,
                    format!("{shown} does not exist"),
                    format!("mkdir -p {shown}"),
                ),
            };
        }
        Err(e) => {
            return Check::fail(
                name,
                format!("cannot read {shown}: {e}"),
                "check the permissions of its parents",
            );
        }
    };
    if !meta.is_dir() {
        return Check::fail(
            name,
            format!("{shown} is not a directory"),
            format!("choose another {name}"),
        );
    }
    let chown = format!("chown {} {shown}", user.name);
    if owned && !user.unknown && meta.uid() != user.uid {
        return Check::fail(
            name,
            format!(
                "{shown} belongs to uid {}, not to the daemon's user {} (uid {}): serve refuses it",
                meta.uid(),
                user.name,
                user.uid
            ),
            chown,
        );
    }
    if !user.unknown && !user.can_write(&meta) {
        return Check::fail(name, format!("{shown} is not writable by {}", user.name), chown);
    }
    if let Err(e) = tempfile::Builder::new()
        .prefix(".agentsd-doctor-")
        .tempfile_in(dir)
    {
        return Check::fail(
            name,
            format!("cannot create a file in {shown}: {e}"),
            format!("{chown}, and free some space"),
        );
    }
    match nix::sys::statvfs::statvfs(dir) {
        Err(e) => Check::warn(
            name,
            format!("{shown}: cannot tell the free space ({e})"),
            "df -h",
        ),
        Ok(s) => {
            let unit = s.fragment_size();
            let free = s.blocks_available() * unit;
            let total = s.blocks() * unit;
            space_verdict(name, &shown.to_string(), free, total)
        }
    }
}

/// The verdict on `free` bytes of `total`.
pub fn space_verdict(name: &'static str, dir: &str, free: u64, total: u64) -> Check {
    let percent = if total == 0 {
        0.0
    } else {
        free as f64 * 100.0 / total as f64
    };
    let what = format!(
        "{dir}: writable, {} free of {} ({percent:.1} %)",
        bytesize::ByteSize::b(free).display().iec(),
        bytesize::ByteSize::b(total).display().iec()
    );
    let hint = format!("free some space on {dir}'s filesystem (df -h {dir}), or move {name}");
    if free < FULL_BYTES || percent < FULL_PERCENT {
        Check::fail(name, format!("{what}: full (less than 64 MiB or 1 %)"), hint)
    } else if percent < LOW_PERCENT {
        Check::warn(name, format!("{what}: low (less than 5 %)"), hint)
    } else {
        Check::ok(name, what)
    }
}

/// The open-file limit the daemon has (or would have) against what its
/// agents need.
fn check_open_files(cfg: &Config, pid: Option<u32>, unit: Option<&Installed>) -> Check {
    let from_daemon = pid.and_then(|p| {
        let limits = std::fs::read_to_string(format!("/proc/{p}/limits")).ok()?;
        Some((
            proc_hard_nofile(&limits)?,
            format!("the running daemon's, pid {p}"),
        ))
    });
    let from_unit = || {
        let u = unit?;
        Some((u.limit_nofile?, format!("{}'s LimitNOFILE=", u.path.display())))
    };
    let from_here = || {
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(_, hard)| (hard, "this shell's hard limit".to_string()))
    };
    let Some((limit, source)) = from_daemon.or_else(from_unit).or_else(from_here) else {
        return Check::skip("open_files", "cannot read the open-file limit");
    };
    let agents = cfg.agents.len() as u64;
    let stdins = cfg.agents.values().filter(|a| a.stdin_pipe).count() as u64;
    open_files_verdict(agents, stdins, limit, &source)
}

/// The verdict on an open-file `limit` for `agents` (`stdins` of them with
/// a stdin pipe).
pub fn open_files_verdict(agents: u64, stdins: u64, limit: u64, source: &str) -> Check {
    let needed = fds::needed(agents, stdins, fds::OWN_WITHOUT_AGENTS);
    let reserve = fds::reserve(limit);
    let what = format!(
        "{agents} agent{} need{} about {needed} open files ({} for the daemon, {} per agent) and {reserve} kept free for the API; the limit is {limit} ({source})",
        if agents == 1 { "" } else { "s" },
        if agents == 1 { "s" } else { "" },
        fds::OWN_WITHOUT_AGENTS,
        fds::PER_AGENT
    );
    if needed + reserve > limit {
        Check::fail(
            "open_files",
            format!("{what}: too low, some agents would wait in backoff"),
            format!(
                "raise LimitNOFILE= in the unit (systemctl edit agentsd), or ulimit -n {} before agentsd serve",
                (needed + reserve).next_power_of_two()
            ),
        )
    } else {
        Check::ok("open_files", what)
    }
}

/// The hard "Max open files" of a `/proc/PID/limits`.
fn proc_hard_nofile(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let _soft = fields.next()?;
    match fields.next()? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// The unit file found, as far as doctor reads it.
#[derive(Debug, Clone)]
pub struct Installed {
    pub path: PathBuf,
    pub text: String,
    pub user: Option<String>,
    /// `ExecStart=`'s arguments, unquoted.
    pub exec: Option<Vec<String>>,
    pub limit_nofile: Option<u64>,
}

impl Installed {
    fn find(explicit: Option<&Path>) -> Option<Installed> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None => UNIT_PATHS.iter().map(PathBuf::from).find(|p| p.exists())?,
        };
        let text = std::fs::read_to_string(&path).ok()?;
        Some(Installed::parse(path, text))
    }

    pub fn parse(path: PathBuf, text: String) -> Installed {
        let mut user = None;
        let mut exec = None;
        let mut limit_nofile = None;
        for line in text.lines().map(str::trim) {
            if let Some(u) = line.strip_prefix("User=") {
                user = (!u.is_empty()).then(|| u.to_string());
            } else if let Some(e) = line.strip_prefix("ExecStart=") {
                exec = exec_args(e);
            } else if let Some(l) = line.strip_prefix("LimitNOFILE=") {
                // `SOFT:HARD` or one value for both; the hard one counts.
                let hard = l.rsplit(':').next().unwrap_or(l).trim();
                limit_nofile = if hard == "infinity" {
                    Some(u64::MAX)
                } else {
                    hard.parse().ok()
                };
            }
        }
        Installed {
            path,
            text,
            user,
            exec,
            limit_nofile,
        }
    }
}

/// The arguments of an `ExecStart=` line: split on blanks, double or
/// single quotes keep blanks, `\` escapes within double quotes, `%%` and
/// `$$` are `%` and `$` (what [`unit::render`] writes, read back). Prefixes
/// such as `-` or `@` are dropped.
pub fn exec_args(line: &str) -> Option<Vec<String>> {
    let line = line.trim_start_matches(['-', '@', ':', '+', '!']);
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut in_arg = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_arg {
                    args.push(std::mem::take(&mut cur));
                    in_arg = false;
                }
            }
            '"' | '\'' => {
                in_arg = true;
                let quote = c;
                loop {
                    match chars.next()? {
                        q if q == quote => break,
                        '\\' if quote == '"' => cur.push(chars.next()?),
                        other => cur.push(other),
                    }
                }
            }
            '%' | '$' if chars.peek() == Some(&c) => {
                chars.next();
                cur.push(c);
                in_arg = true;
            }
            other => {
                cur.push(other);
                in_arg = true;
            }
        }
    }
    if in_arg {
        args.push(cur);
    }
    (!args.is_empty()).then_some(args)
}

/// The installed unit against what `install-unit` writes for its own
/// `ExecStart=` and `User=`; `checked`: the config doctor was given, which
/// the unit should run.
fn check_unit(explicit: Option<&Path>, unit: Option<&Installed>, checked: Option<&Path>) -> Check {
    const NAME: &str = "unit";
    let Some(unit) = unit else {
        let detail = match explicit {
            Some(p) => format!("no unit at {}", p.display()),
            None => format!("no unit installed ({})", UNIT_PATHS.join(", ")),
        };
        return Check::warn(NAME, detail, "agentsd install-unit");
    };
    let shown = unit.path.display();
    let (bin, config) = match unit.exec.as_deref() {
        Some([bin, serve, flag, config, ..]) if serve == "serve" && flag == "--config" => {
            (PathBuf::from(bin), PathBuf::from(config))
        }
        _ => {
            return Check::fail(
                NAME,
                format!("{shown}: ExecStart= is not `BIN serve --config PATH`"),
                "agentsd install-unit rewrites it",
            );
        }
    };
    let mut reinstall = format!(
        "agentsd install-unit --config {} --bin {}",
        config.display(),
        bin.display()
    );
    if let Some(u) = &unit.user {
        reinstall.push_str(&format!(" --user {u}"));
    }
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(&bin) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {}
        _ => {
            return Check::fail(
                NAME,
                format!(
                    "{shown}: ExecStart= runs {}, which is not an executable file",
                    bin.display()
                ),
                reinstall.replace(&format!("--bin {}", bin.display()), "--bin $(command -v agentsd)"),
            );
        }
    }
    let edits = config::load(Some(&config)).is_ok_and(|c| c.server.api_edits);
    let expected = unit::render(&bin, &config, unit.user.as_deref(), edits);
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let other_config = checked.filter(|c| absolute(c) != absolute(&config)).map(|c| {
        format!(
            "it runs --config {}, not {} (checked here)",
            config.display(),
            c.display()
        )
    });
    if expected == unit.text {
        return match other_config {
            None => Check::ok(NAME, format!("{shown} is what install-unit writes")),
            Some(other) => Check::warn(
                NAME,
                format!("{shown} is what install-unit writes, but {other}"),
                format!("agentsd doctor --config {}", config.display()),
            ),
        };
    }
    let diff = similar::TextDiff::from_lines(unit.text.as_str(), expected.as_str())
        .unified_diff()
        .context_radius(2)
        .header(&unit.path.display().to_string(), "install-unit")
        .to_string();
    let mut c = Check::warn(
        NAME,
        match &other_config {
            None => format!("{shown} differs from what install-unit writes (- installed, + expected)"),
            Some(other) => {
                format!("{shown} differs from what install-unit writes (- installed, + expected); {other}")
            }
        },
        format!("{reinstall}; local changes belong in a drop-in: systemctl edit agentsd"),
    );
    c.diff = Some(diff);
    c
}

fn check_systemd() -> Check {
    const NAME: &str = "systemd";
    if !Path::new("/run/systemd/system").exists() {
        return Check::skip(NAME, "systemd is not running here (no /run/systemd/system)");
    }
    let ask = |what: &str| {
        std::process::Command::new("systemctl")
            .args([what, "agentsd.service"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match (ask("is-active"), ask("is-enabled")) {
        (Ok(active), Ok(enabled)) => {
            let detail = format!("agentsd.service is {active}, {enabled}");
            if active == "active" && enabled == "enabled" {
                Check::ok(NAME, detail)
            } else {
                Check::warn(NAME, detail, "systemctl enable --now agentsd")
            }
        }
        (Err(e), _) | (_, Err(e)) => Check::warn(
            NAME,
            format!("cannot run systemctl: {e}"),
            "is systemd installed?",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(days: i64, dns: &[&str], ips: &[&str]) -> (CertFacts, i64) {
        let now = 1_800_000_000;
        (
            CertFacts {
                not_before: now - 86_400,
                not_after: now + days * 86_400,
                dns: dns.iter().map(|s| s.to_string()).collect(),
                ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            },
            now,
        )
    }

    #[test]
    fn doctor_certificate_dates() {
        let listen: SocketAddr = "127.0.0.1:8487".parse().unwrap();
        let (f, now) = facts(90, &["localhost"], &["127.0.0.1"]);
        assert_eq!(certificate_verdict(&f, now, listen, None).status, Level::Ok);
        let (f, now) = facts(3, &["localhost"], &["127.0.0.1"]);
        let c = certificate_verdict(&f, now, listen, None);
        assert_eq!(c.status, Level::Warn, "{c:?}");
        assert!(c.detail.contains("expires in 3 days"), "{c:?}");
        let (f, now) = facts(-1, &[], &["127.0.0.1"]);
        let c = certificate_verdict(&f, now, listen, None);
        assert_eq!(c.status, Level::Fail);
        assert!(c.detail.starts_with("expired on "), "{c:?}");
        let (mut f, now) = facts(30, &[], &["127.0.0.1"]);
        f.not_before = now + 60;
        assert_eq!(certificate_verdict(&f, now, listen, None).status, Level::Fail);
    }

    #[test]
    fn doctor_certificate_names() {
        let (f, now) = facts(90, &["*.example.com", "bots.example.org"], &["10.0.0.5"]);
        let url = |u: &str| url::Url::parse(u).unwrap();
        // A wildcard listen has nothing to name.
        let any: SocketAddr = "0.0.0.0:8487".parse().unwrap();
        assert_eq!(
            certificate_verdict(&f, now, any, Some(&url("https://a.example.com/"))).status,
            Level::Ok
        );
        assert_eq!(
            certificate_verdict(&f, now, any, Some(&url("https://BOTS.example.org"))).status,
            Level::Ok
        );
        // One label only.
        let c = certificate_verdict(&f, now, any, Some(&url("https://a.b.example.com")));
        assert_eq!(c.status, Level::Fail, "{c:?}");
        assert!(
            c.detail.contains("does not name a.b.example.com (public_url)"),
            "{c:?}"
        );
        let c = certificate_verdict(&f, now, any, Some(&url("https://example.com")));
        assert_eq!(c.status, Level::Fail);
        // The listen address: a warning only.
        let c = certificate_verdict(&f, now, "10.0.0.6:8487".parse().unwrap(), None);
        assert_eq!(c.status, Level::Warn, "{c:?}");
        assert!(c.detail.contains("does not name 10.0.0.6 (listen)"), "{c:?}");
        assert_eq!(
            certificate_verdict(&f, now, "10.0.0.5:8487".parse().unwrap(), None).status,
            Level::Ok
        );
    }

    #[test]
    fn doctor_certificate_facts_come_from_the_pem() {
        let (pem, _, _) =
            crate::certs::self_signed(&["localhost".into(), "127.0.0.1".into(), "::1".into()]).unwrap();
        let f = CertFacts::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(f.dns, ["localhost"]);
        assert_eq!(
            f.ips,
            [
                "127.0.0.1".parse::<std::net::IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert!(f.not_after > unix_now() + 365 * 86_400);
        assert!(CertFacts::from_pem(b"nothing").is_err());
    }

    #[test]
    fn doctor_space() {
        const G: u64 = 1 << 30;
        assert_eq!(
            space_verdict("state_dir", "/s", 50 * G, 100 * G).status,
            Level::Ok
        );
        assert_eq!(
            space_verdict("state_dir", "/s", 4 * G, 100 * G).status,
            Level::Warn
        );
        assert_eq!(
            space_verdict("state_dir", "/s", G / 2, 100 * G).status,
            Level::Fail
        );
        // A small filesystem: under 64 MiB free fails whatever the share.
        let c = space_verdict("log_dir", "/l", 60 << 20, 100 << 20);
        assert_eq!(c.status, Level::Fail, "{c:?}");
        assert!(c.detail.contains("full"), "{c:?}");
    }

    #[test]
    fn doctor_open_files_formula() {
        // 100 agents, 10 with a stdin pipe: 2 * 100 + 10 + 28 = 238, and a
        // reserve of 32 at a limit of 256 (238 + 32 > 256).
        let c = open_files_verdict(100, 10, 256, "test");
        assert_eq!(c.status, Level::Fail, "{c:?}");
        assert!(
            c.detail.starts_with("100 agents need about 238 open files"),
            "{c:?}"
        );
        assert!(c.hint.as_deref().unwrap_or_default().contains("LimitNOFILE="));
        // 238 + 128 <= 1024.
        assert_eq!(open_files_verdict(100, 10, 1024, "test").status, Level::Ok);
        assert_eq!(open_files_verdict(0, 0, 64, "test").status, Level::Ok);
    }

    #[test]
    fn doctor_reads_the_hard_limit_of_a_process() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \nMax processes             63704                63704                processes \nMax open files            1024                 524288               files     \n";
        assert_eq!(proc_hard_nofile(limits), Some(524_288));
        assert_eq!(
            proc_hard_nofile(&limits.replace("524288", "unlimited")),
            Some(u64::MAX)
        );
    }

    #[test]
    fn doctor_reads_back_what_the_unit_renders() {
        let bin = Path::new("/opt/my bots/agentsd");
        let config = Path::new("/srv/100%/$x.toml");
        let text = unit::render(bin, config, Some("bots"), false);
        let u = Installed::parse("/u".into(), text);
        assert_eq!(
            u.exec.as_deref().unwrap(),
            ["/opt/my bots/agentsd", "serve", "--config", "/srv/100%/$x.toml"]
        );
        assert_eq!(u.user.as_deref(), Some("bots"));
        assert_eq!(u.limit_nofile, Some(1_048_576));
        assert_eq!(
            exec_args("-/bin/a 'b c' \"d\\\"e\"").unwrap(),
            ["/bin/a", "b c", "d\"e"]
        );
        assert_eq!(exec_args("  "), None);
        assert_eq!(exec_args("/bin/a \"open"), None);
    }

    #[test]
    fn doctor_shows_a_drifted_unit_as_a_diff() {
        let dir = tempfile::tempdir().unwrap();
        let bin = std::env::current_exe().unwrap();
        let config = dir.path().join("agentsd.toml");
        let path = dir.path().join("agentsd.service");
        let good = unit::render(&bin, &config, None, false);
        std::fs::write(&path, &good).unwrap();
        let c = check_unit(Some(&path), Installed::find(Some(&path)).as_ref(), Some(&config));
        assert_eq!(c.status, Level::Ok, "{c:?}");
        std::fs::write(&path, good.replace("RestartSec=2s", "RestartSec=30s")).unwrap();
        let c = check_unit(Some(&path), Installed::find(Some(&path)).as_ref(), Some(&config));
        assert_eq!(c.status, Level::Warn, "{c:?}");
        let diff = c.diff.unwrap();
        assert!(diff.contains("\n-RestartSec=30s\n+RestartSec=2s\n"), "{diff}");
        let c = check_unit(Some(&dir.path().join("none")), None, None);
        assert_eq!(
            (c.status, c.hint.as_deref()),
            (Level::Warn, Some("agentsd install-unit"))
        );
        // The unit runs another config than the one checked.
        std::fs::write(&path, &good).unwrap();
        let elsewhere = dir.path().join("other.toml");
        let c = check_unit(
            Some(&path),
            Installed::find(Some(&path)).as_ref(),
            Some(&elsewhere),
        );
        assert_eq!(c.status, Level::Warn, "{c:?}");
        assert!(
            c.detail.contains(&format!(
                "it runs --config {}, not {}",
                config.display(),
                elsewhere.display()
            )),
            "{c:?}"
        );
        assert_eq!(
            c.hint,
            Some(format!("agentsd doctor --config {}", config.display()))
        );
    }

    #[test]
    fn doctor_write_rights_follow_the_mode_bits() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        let owner = DaemonUser {
            name: "o".into(),
            uid: meta.uid(),
            gids: vec![],
            unknown: false,
        };
        let stranger = DaemonUser {
            name: "s".into(),
            uid: meta.uid() + 1000,
            gids: vec![meta.gid()],
            unknown: false,
        };
        assert!(owner.can_write(&meta));
        assert!(!stranger.can_write(&meta), "the group may only read");
    }
}
