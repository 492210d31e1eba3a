//! Which daemon a client command talks to, with which key, trusting what.
//!
//! In this order: flags (`--url`, `--context`, `--api-key-file`,
//! `--ca-cert`), the environment (`AGENTSD_URL`, `AGENTSD_CONTEXT`,
//! `AGENTSD_API_KEY`, `AGENTSD_CA_CERT`), the client file's default context,
//! and last the daemon on this host. A context's key and trust are only ever
//! used with that context's URL, so a key is never sent to a server it was
//! not meant for.

use super::ClientError;
use super::trust::{Trust, normalize_pin};
use crate::cli::ConnectFlags;
use crate::config::{self, Tls};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub key: String,
    pub trust: Trust,
}

/// `~/.config/agentsd/client.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    pub default_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    pub url: String,
    pub api_key_file: Option<PathBuf>,
    /// A command that prints the key, e.g. `["pass", "show", "agentsd/prod"]`.
    pub api_key_command: Option<Vec<String>>,
    pub ca_cert: Option<PathBuf>,
    /// `SHA256:AB:CD:...`, as `agentsd gen-key --tls-dir` and `serve` print it.
    pub fingerprint: Option<String>,
}

pub fn client_file_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("agentsd").join("client.toml"))
}

/// Reads the client file; a missing one is empty.
pub fn load_client_file(path: &Path) -> Result<ClientFile, ClientError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ClientFile::default()),
        Err(e) => return Err(ClientError::Usage(format!("cannot read {}: {e}", path.display()))),
    };
    let mut file: ClientFile = toml::from_str(&text)
        .map_err(|e| ClientError::Usage(format!("{}: {}", path.display(), e.message().trim())))?;
    let base = path.parent().unwrap_or(Path::new("/"));
    for ctx in file.contexts.values_mut() {
        for p in [&mut ctx.api_key_file, &mut ctx.ca_cert].into_iter().flatten() {
            *p = expand(p, base);
        }
    }
    Ok(file)
}

/// `~/x` is under the home directory; other relative paths under `base`.
fn expand(p: &Path, base: &Path) -> PathBuf {
    if let Ok(rest) = p.strip_prefix("~")
        && let Some(home) = dirs::home_dir()
    {
        return home.join(rest);
    }
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// What the daemon on this host would be reached with.
pub struct Local {
    pub url: String,
    pub key_file: Option<PathBuf>,
    pub trust: Option<Trust>,
}

/// The local daemon, from its config file (or the embedded default).
pub fn local_daemon(env: &dyn Fn(&str) -> Option<String>) -> Result<Local, ClientError> {
    let explicit = env("AGENTSD_CONFIG").map(PathBuf::from);
    let path = config::resolve_path(explicit.as_deref());
    let cfg = config::load(path.as_deref())
        .map_err(|e| ClientError::Usage(format!("cannot read the local daemon's config: {e}")))?;
    let mut addr = cfg.server.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            [127, 0, 0, 1].into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    // Pin the very certificate the daemon serves: its names need not
    // include 127.0.0.1, and it need not be self-signed.
    let pin = |cert: &Path| {
        crate::certs::fingerprint_of_pem(cert)
            .map(Trust::Pin)
            .map_err(|e| ClientError::Usage(format!("cannot read the local daemon's certificate: {e:#}")))
    };
    let (scheme, trust) = match &cfg.server.tls {
        Tls::Off => ("http", None),
        Tls::SelfSigned => ("https", Some(pin(&cfg.server.state_dir.join("tls/cert.pem"))?)),
        Tls::Files { cert, .. } => ("https", Some(pin(cert)?)),
    };
    Ok(Local {
        url: format!("{scheme}://{addr}"),
        key_file: cfg.server.api_key_file,
        trust,
    })
}

/// The same rules as the daemon's: not readable by group or others, long
/// enough.
fn read_key_file(path: &Path) -> Result<String, ClientError> {
    crate::secret::read_key_file(path)
        .map_err(|e| ClientError::Usage(format!("{e:#} (pass --api-key-file, or set AGENTSD_API_KEY)")))
}

fn run_key_command(cmd: &[String]) -> Result<String, ClientError> {
    let (prog, args) = cmd
        .split_first()
        .ok_or_else(|| ClientError::Usage("api_key_command is empty".into()))?;
    let out = std::process::Command::new(prog)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| ClientError::Usage(format!("cannot run api_key_command {prog:?}: {e}")))?;
    if !out.status.success() {
        return Err(ClientError::Usage(format!(
            "api_key_command {prog:?} failed ({})",
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn context_key(ctx: &Context) -> Result<Option<String>, ClientError> {
    match (&ctx.api_key_file, &ctx.api_key_command) {
        (Some(f), _) => read_key_file(f).map(Some),
        (None, Some(c)) => run_key_command(c).map(Some),
        (None, None) => Ok(None),
    }
}

fn context_trust(name: &str, ctx: &Context) -> Result<Option<Trust>, ClientError> {
    match (&ctx.fingerprint, &ctx.ca_cert) {
        (Some(fp), _) => normalize_pin(fp).map(|p| Some(Trust::Pin(p))).ok_or_else(|| {
            ClientError::Usage(format!(
                "context {name:?}: invalid fingerprint {fp:?}: expected SHA256: and 32 hex pairs"
            ))
        }),
        (None, Some(ca)) => Ok(Some(Trust::CaFile(ca.clone()))),
        (None, None) => Ok(None),
    }
}

/// Whether an `http://` URL names this host (127.0.0.0/8, ::1 or localhost).
fn is_loopback_url(url: &str) -> bool {
    let rest = url.trim_start_matches("http://");
    let host = rest.split('/').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

enum Source<'a> {
    Explicit,
    Context(&'a str, &'a Context),
    Local(Local),
}

/// Decides the target. `local` is only consulted when nothing else names a daemon.
pub fn resolve(
    flags: &ConnectFlags,
    env: &dyn Fn(&str) -> Option<String>,
    file: &ClientFile,
    local: &dyn Fn() -> Result<Local, ClientError>,
) -> Result<Target, ClientError> {
    let context = |name: &str| {
        file.contexts.get(name).ok_or_else(|| {
            let known: Vec<_> = file.contexts.keys().map(String::as_str).collect();
            ClientError::Usage(format!(
                "no context named {name:?} in the client file (known: {})",
                known.join(", ")
            ))
        })
    };
    let env_context = env("AGENTSD_CONTEXT");
    let (url, source) = if let Some(u) = &flags.url {
        (u.clone(), Source::Explicit)
    } else if let Some(name) = &flags.context {
        let c = context(name)?;
        (c.url.clone(), Source::Context(name, c))
    } else if let Some(u) = env("AGENTSD_URL") {
        (u, Source::Explicit)
    } else if let Some(name) = env_context.as_deref() {
        let c = context(name)?;
        (c.url.clone(), Source::Context(name, c))
    } else if let Some(name) = &file.default_context {
        let c = context(name)?;
        (c.url.clone(), Source::Context(name, c))
    } else {
        let l = local()?;
        (l.url.clone(), Source::Local(l))
    };
    let (source_key, source_trust) = match &source {
        Source::Explicit => (None, None),
        Source::Context(name, c) => (context_key(c)?, context_trust(name, c)?),
        Source::Local(l) => (
            l.key_file.as_deref().map(read_key_file).transpose()?,
            l.trust.clone(),
        ),
    };
    let flag_key = flags.api_key_file.as_deref().map(read_key_file).transpose()?;
    let env_key = env("AGENTSD_API_KEY").map(|k| k.trim().to_string());
    let flag_trust = flags.ca_cert.clone().map(Trust::CaFile);
    let env_trust = env("AGENTSD_CA_CERT").map(|p| Trust::CaFile(p.into()));
    // Flags always win. A context keeps its own key and trust over the
    // environment's (a key exported for one daemon must not travel to a
    // context's server, nor a CA file replace a context's pin); the
    // environment only fills in what the context leaves out.
    let (key, trust) = match source {
        Source::Context(..) => (
            flag_key.or(source_key).or(env_key),
            flag_trust.or(source_trust).or(env_trust),
        ),
        Source::Explicit | Source::Local(_) => (
            flag_key.or(env_key).or(source_key),
            flag_trust.or(env_trust).or(source_trust),
        ),
    };
    let key = key.filter(|k| !k.is_empty()).ok_or_else(|| {
        ClientError::Usage(format!(
            "no API key for {url}: pass --api-key-file, set AGENTSD_API_KEY, or give the context an api_key_file"
        ))
    })?;
    if url.starts_with("http://") && !is_loopback_url(&url) {
        return Err(ClientError::Usage(format!(
            "refusing to send the API key in clear text to {url}: use https:// (plain http is for loopback only)"
        )));
    }
    if !url.starts_with("https://") && !url.starts_with("http://") {
        return Err(ClientError::Usage(format!(
            "invalid URL {url:?}: expected https://HOST:PORT"
        )));
    }
    Ok(Target {
        url: url.trim_end_matches('/').to_string(),
        key,
        trust: trust.unwrap_or(Trust::System),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROD_KEY: &str = "prod-key-0123456789abcdef0123456789abcdef";

    /// A client file whose prod context reads its key from a file in a
    /// directory of its own (tests run in parallel).
    fn file() -> (tempfile::TempDir, ClientFile) {
        let mut f = ClientFile {
            default_context: Some("prod".into()),
            ..Default::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let kf = dir.path().join("prod.key");
        crate::secret::write_private(&kf, format!("{PROD_KEY}\n").as_bytes(), false).unwrap();
        f.contexts.insert(
            "prod".into(),
            Context {
                url: "https://prod:8487".into(),
                api_key_file: Some(kf),
                fingerprint: Some("ab".repeat(32)),
                ..Default::default()
            },
        );
        f.contexts.insert(
            "lab".into(),
            Context {
                url: "https://lab:8487".into(),
                api_key_command: Some(vec!["echo".into(), "lab-key".into()]),
                ca_cert: Some("/lab/ca.pem".into()),
                ..Default::default()
            },
        );
        (dir, f)
    }

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    fn no_local() -> Result<Local, ClientError> {
        Err(ClientError::Usage("no local daemon".into()))
    }

    fn local() -> Result<Local, ClientError> {
        Ok(Local {
            url: "https://127.0.0.1:8487".into(),
            key_file: None,
            trust: Some(Trust::CaFile("/var/lib/agentsd/tls/cert.pem".into())),
        })
    }

    #[test]
    fn default_context_from_the_file() {
        let t = resolve(&ConnectFlags::default(), &env_of(&[]), &file().1, &no_local).unwrap();
        assert_eq!(t.url, "https://prod:8487");
        assert_eq!(t.key, PROD_KEY);
        assert_eq!(t.trust, Trust::Pin(normalize_pin(&"ab".repeat(32)).unwrap()));
    }

    #[test]
    fn env_beats_the_file_and_flags_beat_env() {
        let env = env_of(&[("AGENTSD_CONTEXT", "lab")]);
        let t = resolve(&ConnectFlags::default(), &env, &file().1, &no_local).unwrap();
        assert_eq!((t.url.as_str(), t.key.as_str()), ("https://lab:8487", "lab-key"));
        assert_eq!(t.trust, Trust::CaFile("/lab/ca.pem".into()));

        let flags = ConnectFlags {
            context: Some("prod".into()),
            ..Default::default()
        };
        let env = env_of(&[
            ("AGENTSD_CONTEXT", "lab"),
            ("AGENTSD_URL", "https://env:1"),
            ("AGENTSD_API_KEY", "env-key"),
        ]);
        let t = resolve(&flags, &env, &file().1, &no_local).unwrap();
        assert_eq!((t.url.as_str(), t.key.as_str()), ("https://prod:8487", PROD_KEY));

        let env = env_of(&[
            ("AGENTSD_URL", "https://env:1"),
            ("AGENTSD_API_KEY", "env-key"),
            ("AGENTSD_CA_CERT", "/env/ca.pem"),
        ]);
        let t = resolve(&ConnectFlags::default(), &env, &file().1, &no_local).unwrap();
        assert_eq!(
            t,
            Target {
                url: "https://env:1".into(),
                key: "env-key".into(),
                trust: Trust::CaFile("/env/ca.pem".into())
            }
        );

        let flags = ConnectFlags {
            url: Some("https://flag:2/".into()),
            ca_cert: Some("/flag/ca.pem".into()),
            ..Default::default()
        };
        let t = resolve(&flags, &env, &file().1, &no_local).unwrap();
        assert_eq!(
            t,
            Target {
                url: "https://flag:2".into(),
                key: "env-key".into(),
                trust: Trust::CaFile("/flag/ca.pem".into())
            }
        );
    }

    #[test]
    fn a_context_key_never_goes_to_another_url() {
        let flags = ConnectFlags {
            url: Some("https://elsewhere:1".into()),
            ..Default::default()
        };
        let e = resolve(&flags, &env_of(&[]), &file().1, &no_local).unwrap_err();
        assert!(
            e.to_string().contains("no API key for https://elsewhere:1"),
            "{e}"
        );
    }

    #[test]
    fn the_local_daemon_comes_last() {
        let env = env_of(&[("AGENTSD_API_KEY", "k")]);
        let t = resolve(&ConnectFlags::default(), &env, &ClientFile::default(), &local).unwrap();
        assert_eq!(t.url, "https://127.0.0.1:8487");
        assert_eq!(t.trust, Trust::CaFile("/var/lib/agentsd/tls/cert.pem".into()));
    }

    #[test]
    fn unknown_context_is_a_usage_error() {
        let flags = ConnectFlags {
            context: Some("nope".into()),
            ..Default::default()
        };
        let e = resolve(&flags, &env_of(&[]), &file().1, &no_local).unwrap_err();
        assert!(matches!(e, ClientError::Usage(_)));
        assert!(
            e.to_string()
                .contains("no context named \"nope\" in the client file (known: lab, prod)"),
            "{e}"
        );
    }

    #[test]
    fn a_context_keeps_its_own_key_and_pin_over_the_environment() {
        let env = env_of(&[
            ("AGENTSD_API_KEY", "exported-for-another-daemon"),
            ("AGENTSD_CA_CERT", "/env/ca.pem"),
        ]);
        let t = resolve(&ConnectFlags::default(), &env, &file().1, &no_local).unwrap();
        assert_eq!(t.url, "https://prod:8487");
        assert_eq!(t.key, PROD_KEY);
        assert!(matches!(t.trust, Trust::Pin(_)));
    }

    #[test]
    fn plain_http_only_to_loopback() {
        let env = env_of(&[("AGENTSD_API_KEY", "k")]);
        for ok in [
            "http://127.0.0.1:8487",
            "http://localhost:1",
            "http://[::1]:2/",
            "http://127.1.2.3",
        ] {
            let flags = ConnectFlags {
                url: Some(ok.into()),
                ..Default::default()
            };
            assert!(
                resolve(&flags, &env, &ClientFile::default(), &no_local).is_ok(),
                "{ok}"
            );
        }
        for bad in [
            "http://bots.example.com:8487",
            "http://10.0.0.5:1",
            "http://[2001:db8::1]:2",
        ] {
            let flags = ConnectFlags {
                url: Some(bad.into()),
                ..Default::default()
            };
            let e = resolve(&flags, &env, &ClientFile::default(), &no_local).unwrap_err();
            assert!(
                e.to_string()
                    .contains("refusing to send the API key in clear text"),
                "{bad}: {e}"
            );
        }
    }
}
