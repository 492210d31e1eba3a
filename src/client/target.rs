//! Which daemon a client command talks to, with which key, trusting what.
//!
//! In this order: flags (`--url`, `--context`, `--api-key-file`,
//! `--ca-cert`), the environment (`AGENTSD_URL`, `AGENTSD_CONTEXT`,
//! `AGENTSD_CONFIG`, `AGENTSD_API_KEY`, `AGENTSD_CA_CERT`), the client file's
//! default context, and last the daemon on this host. A context's key and
//! trust are only ever used with that context's URL, so a key is never sent
//! to a server it was not meant for.

use super::ClientError;
use super::local::{Local, line_col};
use super::trust::{Trust, normalize_pin};
use crate::cli::ConnectFlags;
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
    let mut file: ClientFile = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|s| line_col(&text, s.start))
            .map(|(l, c)| format!(":{l}:{c}"))
            .unwrap_or_default();
        ClientError::Usage(format!("{}{at}: {}", path.display(), e.message().trim()))
    })?;
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

/// One context's own target, for a command that asks several contexts at
/// once: its URL, its key and its trust, and nothing from flags or the
/// environment (a key or CA given there was meant for one daemon, not for
/// every context).
pub fn context_target(name: &str, ctx: &Context) -> Result<Target, ClientError> {
    let url = check_url(&ctx.url)?;
    let key = context_key(ctx)?.filter(|k| !k.is_empty()).ok_or_else(|| {
        ClientError::Usage(format!(
            "context {name:?} names no key: give it an api_key_file or api_key_command (with several contexts, each uses only its own)"
        ))
    })?;
    let trust = context_trust(name, ctx)?.unwrap_or(Trust::System);
    Ok(Target { url, key, trust })
}

/// Parses a daemon URL and checks where a request to it would really go:
/// http or https only, no user name or password (a URL such as
/// `http://127.0.0.1:1@example.com/` goes to example.com), and plain http
/// only to this host (127.0.0.0/8, ::1 or localhost), so the key never
/// travels in clear text. Returns the base URL requests are made under.
pub fn check_url(raw: &str) -> Result<String, ClientError> {
    let invalid = |why: &str| ClientError::Usage(format!("invalid URL {raw:?}: {why}"));
    let url =
        url::Url::parse(raw.trim()).map_err(|e| invalid(&format!("{e}; expected https://HOST:PORT")))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ClientError::Usage(
            "refusing a URL with a user name or password in it: the API key goes in --api-key-file or AGENTSD_API_KEY, and the host after '@' is where the request would go"
                .into(),
        ));
    }
    let host = url
        .host()
        .ok_or_else(|| invalid("no host; expected https://HOST:PORT"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(
            "a daemon URL has no query or fragment; expected https://HOST:PORT",
        ));
    }
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&host) => {}
        "http" => {
            return Err(ClientError::Usage(format!(
                "refusing to send the API key in clear text to {}: use https:// (plain http is for loopback only)",
                url.as_str().trim_end_matches('/')
            )));
        }
        other => return Err(invalid(&format!("the scheme {other:?} is not http or https"))),
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Whether a host is this one: 127.0.0.0/8, ::1 (also as ::ffff:127.x.y.z),
/// or `localhost`.
pub fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.to_canonical().is_loopback(),
    }
}

enum Source<'a> {
    /// `--url` or `AGENTSD_URL`.
    Explicit(&'static str),
    /// Where the name came from, the name, the context.
    Context(&'static str, &'a str, &'a Context),
    Local(Local),
}

/// Where to connect, and a line to show first, if any.
#[derive(Debug)]
pub struct Resolved {
    pub target: Target,
    /// Set when `AGENTSD_CONFIG` names a local daemon but a higher-ranked
    /// source chose another one: the user should know which one answers.
    pub note: Option<String>,
    /// The name of the context that chose the daemon, if one did.
    pub context: Option<String>,
}

/// A selection of several contexts (`all`, or `a,b`) and where it comes
/// from: `--context`, or `AGENTSD_CONTEXT` when nothing ranked above it
/// (`--url`, `--context`, `AGENTSD_URL`) names a daemon. `None`: one
/// daemon is meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Several {
    /// `--context` or `AGENTSD_CONTEXT`.
    pub origin: &'static str,
    pub spec: String,
}

impl std::fmt::Display for Several {
    /// As the user wrote it: `--context all`, `AGENTSD_CONTEXT=all`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.origin {
            "--context" => write!(f, "--context {}", self.spec),
            origin => write!(f, "{origin}={}", self.spec),
        }
    }
}

/// Whether several contexts are asked for, by the same ranking as
/// [`resolve`]'s.
pub fn several(flags: &ConnectFlags, env: &dyn Fn(&str) -> Option<String>) -> Option<Several> {
    use super::several::is_several;
    if let Some(spec) = flags.context.as_deref().filter(|s| is_several(s)) {
        return Some(Several {
            origin: "--context",
            spec: spec.to_string(),
        });
    }
    if flags.url.is_some() || flags.context.is_some() || env("AGENTSD_URL").is_some() {
        return None;
    }
    env("AGENTSD_CONTEXT")
        .filter(|s| is_several(s))
        .map(|spec| Several {
            origin: "AGENTSD_CONTEXT",
            spec,
        })
}

/// Decides the target. `local` finds the daemon of a config file (or, given
/// `None`, the one of the default config), and is only consulted when
/// nothing ranked above it names a daemon.
pub fn resolve(
    flags: &ConnectFlags,
    env: &dyn Fn(&str) -> Option<String>,
    file: &ClientFile,
    local: &dyn Fn(Option<&Path>) -> Result<Local, ClientError>,
) -> Result<Resolved, ClientError> {
    let context = |name: &str| {
        file.contexts.get(name).ok_or_else(|| {
            let known: Vec<_> = file.contexts.keys().map(String::as_str).collect();
            ClientError::Usage(format!(
                "no context named {name:?} in the client file (known: {})",
                known.join(", ")
            ))
        })
    };
    if let Some(several) = several(flags, env) {
        return Err(ClientError::Usage(format!(
            "{several}: several contexts at once work with `agents list`, `status` and `top` only; name one context"
        )));
    }
    let env_context = env("AGENTSD_CONTEXT");
    let env_config = env("AGENTSD_CONFIG").map(PathBuf::from);
    let (url, source) = if let Some(u) = &flags.url {
        (u.clone(), Source::Explicit("--url"))
    } else if let Some(name) = &flags.context {
        let c = context(name)?;
        (c.url.clone(), Source::Context("--context", name, c))
    } else if let Some(u) = env("AGENTSD_URL") {
        (u, Source::Explicit("AGENTSD_URL"))
    } else if let Some(name) = env_context.as_deref() {
        let c = context(name)?;
        (c.url.clone(), Source::Context("AGENTSD_CONTEXT", name, c))
    } else if let Some(config) = &env_config {
        let l = local(Some(config))?;
        (l.url.clone(), Source::Local(l))
    } else if let Some(name) = &file.default_context {
        let c = context(name)?;
        (
            c.url.clone(),
            Source::Context("the client file's default_context", name, c),
        )
    } else {
        let l = local(None)?;
        (l.url.clone(), Source::Local(l))
    };
    let url = check_url(&url)?;
    let note = match (&source, &env_config) {
        (Source::Local(_), _) | (_, None) => None,
        (Source::Explicit(origin) | Source::Context(origin, ..), Some(config)) => {
            let same = local(Some(config)).is_ok_and(|l| check_url(&l.url).is_ok_and(|u| u == url));
            let origin = match &source {
                Source::Context(_, name, _) => format!("{origin}: context {name:?}"),
                _ => origin.to_string(),
            };
            (!same).then(|| {
                format!(
                    "talking to {url} (from {origin}), not to the daemon of AGENTSD_CONFIG={}",
                    config.display()
                )
            })
        }
    };
    let (source_key, source_trust) = match &source {
        Source::Explicit(_) => (None, None),
        Source::Context(_, name, c) => (context_key(c)?, context_trust(name, c)?),
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
        Source::Explicit(_) | Source::Local(_) => (
            flag_key.or(env_key).or(source_key),
            flag_trust.or(env_trust).or(source_trust),
        ),
    };
    let key = key.filter(|k| !k.is_empty()).ok_or_else(|| {
        ClientError::Usage(format!(
            "no API key for {url}: pass --api-key-file, set AGENTSD_API_KEY, or give the context an api_key_file"
        ))
    })?;
    let context = match &source {
        Source::Context(_, name, _) => Some(name.to_string()),
        Source::Explicit(_) | Source::Local(_) => None,
    };
    Ok(Resolved {
        context,
        target: Target {
            url,
            key,
            trust: trust.unwrap_or(Trust::System),
        },
        note,
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

    fn no_local(_: Option<&Path>) -> Result<Local, ClientError> {
        Err(ClientError::Usage("no local daemon".into()))
    }

    /// The default config's daemon on 8487; `AGENTSD_CONFIG`'s on 9000.
    fn local(config: Option<&Path>) -> Result<Local, ClientError> {
        let port = if config.is_some() { 9000 } else { 8487 };
        Ok(Local {
            url: format!("https://127.0.0.1:{port}"),
            key_file: None,
            trust: Some(Trust::CaFile("/var/lib/agentsd/tls/cert.pem".into())),
        })
    }

    fn target(
        flags: &ConnectFlags,
        env: &dyn Fn(&str) -> Option<String>,
        file: &ClientFile,
        local: &dyn Fn(Option<&Path>) -> Result<Local, ClientError>,
    ) -> Result<Target, ClientError> {
        resolve(flags, env, file, local).map(|r| r.target)
    }

    #[test]
    fn default_context_from_the_file() {
        let t = target(&ConnectFlags::default(), &env_of(&[]), &file().1, &no_local).unwrap();
        assert_eq!(t.url, "https://prod:8487");
        assert_eq!(t.key, PROD_KEY);
        assert_eq!(t.trust, Trust::Pin(normalize_pin(&"ab".repeat(32)).unwrap()));
    }

    #[test]
    fn env_beats_the_file_and_flags_beat_env() {
        let env = env_of(&[("AGENTSD_CONTEXT", "lab")]);
        let t = target(&ConnectFlags::default(), &env, &file().1, &no_local).unwrap();
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
        let t = target(&flags, &env, &file().1, &no_local).unwrap();
        assert_eq!((t.url.as_str(), t.key.as_str()), ("https://prod:8487", PROD_KEY));

        let env = env_of(&[
            ("AGENTSD_URL", "https://env:1"),
            ("AGENTSD_API_KEY", "env-key"),
            ("AGENTSD_CA_CERT", "/env/ca.pem"),
        ]);
        let t = target(&ConnectFlags::default(), &env, &file().1, &no_local).unwrap();
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
        let t = target(&flags, &env, &file().1, &no_local).unwrap();
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
        let e = target(&flags, &env_of(&[]), &file().1, &no_local).unwrap_err();
        assert!(
            e.to_string().contains("no API key for https://elsewhere:1"),
            "{e}"
        );
    }

    #[test]
    fn the_local_daemon_comes_last() {
        let env = env_of(&[("AGENTSD_API_KEY", "k")]);
        let t = target(&ConnectFlags::default(), &env, &ClientFile::default(), &local).unwrap();
        assert_eq!(t.url, "https://127.0.0.1:8487");
        assert_eq!(t.trust, Trust::CaFile("/var/lib/agentsd/tls/cert.pem".into()));
    }

    #[test]
    fn unknown_context_is_a_usage_error() {
        let flags = ConnectFlags {
            context: Some("nope".into()),
            ..Default::default()
        };
        let e = target(&flags, &env_of(&[]), &file().1, &no_local).unwrap_err();
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
        let t = target(&ConnectFlags::default(), &env, &file().1, &no_local).unwrap();
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
                target(&flags, &env, &ClientFile::default(), &no_local).is_ok(),
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
            let e = target(&flags, &env, &ClientFile::default(), &no_local).unwrap_err();
            assert!(
                e.to_string()
                    .contains("refusing to send the API key in clear text"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn urls_are_parsed_and_checked_where_they_really_go() {
        // Userinfo is refused outright: the request would go to the host after '@'.
        for bad in [
            "http://127.0.0.1:1@example.invalid/",
            "http://localhost:1@example.invalid/",
            "http://[::1]@example.invalid/",
            "https://user:pass@bots.example.com:8487",
            "https://token@bots.example.com",
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(matches!(e, ClientError::Usage(_)), "{bad}");
            assert!(e.to_string().contains("user name or password"), "{bad}: {e}");
            assert!(!e.to_string().contains("pass@"), "the password is echoed: {e}");
        }
        // The host the parser sees, however it is written.
        assert_eq!(
            check_url("http://2130706433:8487/").unwrap(),
            "http://127.0.0.1:8487"
        );
        assert_eq!(check_url("http://LOCALHOST:1").unwrap(), "http://localhost:1");
        assert_eq!(
            check_url("http://[::ffff:127.0.0.1]:1").unwrap(),
            "http://[::ffff:7f00:1]:1"
        );
        assert_eq!(
            check_url("https://bots.example.com:8487/").unwrap(),
            "https://bots.example.com:8487"
        );
        assert_eq!(
            check_url("https://proxy.example.com/agentsd/").unwrap(),
            "https://proxy.example.com/agentsd"
        );
        for bad in [
            "http://localhost.example.com:1",
            "http://127.0.0.1.example.com",
            "http://0.0.0.0:8487",
            "http://[::]:8487",
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(e.to_string().contains("clear text"), "{bad}: {e}");
        }
        for bad in [
            "ftp://127.0.0.1",
            "127.0.0.1:8487",
            "https://",
            "https://h/?a=b",
            "https://h/#x",
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid URL"), "{bad}: {e}");
        }
    }

    #[test]
    fn agentsd_context_may_name_several_like_the_flag() {
        let none = ConnectFlags::default();
        for (value, spec) in [("all", "all"), ("lab,prod", "lab,prod")] {
            let env = |k: &str| (k == "AGENTSD_CONTEXT").then(|| value.to_string());
            assert_eq!(
                several(&none, &env),
                Some(Several {
                    origin: "AGENTSD_CONTEXT",
                    spec: spec.into()
                })
            );
            // A command on one daemon refuses it as it refuses the flag.
            let e = target(&none, &env, &file().1, &no_local).unwrap_err();
            assert!(matches!(e, ClientError::Usage(_)), "{e}");
            assert_eq!(
                e.to_string(),
                format!(
                    "AGENTSD_CONTEXT={value}: several contexts at once work with `agents list`, `status` and `top` only; name one context"
                )
            );
        }
        // One name is one context, as before.
        let env = env_of(&[("AGENTSD_CONTEXT", "lab")]);
        assert_eq!(several(&none, &env), None);
        assert_eq!(
            target(&none, &env, &file().1, &no_local).unwrap().url,
            "https://lab:8487"
        );
        // What ranks above the environment wins: --context, --url, AGENTSD_URL.
        let env = env_of(&[("AGENTSD_CONTEXT", "all"), ("AGENTSD_API_KEY", "k")]);
        let flag = |context: Option<&str>, url: Option<&str>| ConnectFlags {
            context: context.map(Into::into),
            url: url.map(Into::into),
            ..Default::default()
        };
        assert_eq!(several(&flag(Some("prod"), None), &env), None);
        let t = target(&flag(Some("prod"), None), &env, &file().1, &no_local).unwrap();
        assert_eq!(t.url, "https://prod:8487");
        assert_eq!(several(&flag(None, Some("https://x:1")), &env), None);
        let env_url = env_of(&[
            ("AGENTSD_CONTEXT", "all"),
            ("AGENTSD_URL", "https://env:1"),
            ("AGENTSD_API_KEY", "k"),
        ]);
        assert_eq!(several(&none, &env_url), None);
        assert_eq!(
            target(&none, &env_url, &file().1, &no_local).unwrap().url,
            "https://env:1"
        );
        // The flag's selection is the flag's, whatever the environment says.
        let s = several(&flag(Some("all"), None), &env_of(&[("AGENTSD_CONTEXT", "lab")])).unwrap();
        assert_eq!(s.to_string(), "--context all");
        let e = target(&flag(Some("lab,prod"), None), &env_of(&[]), &file().1, &no_local).unwrap_err();
        assert!(
            e.to_string().starts_with("--context lab,prod: several contexts"),
            "{e}"
        );
    }

    #[test]
    fn agentsd_config_ranks_with_the_environment_above_the_client_file() {
        let env = env_of(&[("AGENTSD_CONFIG", "/srv/agentsd.toml"), ("AGENTSD_API_KEY", "k")]);
        let r = resolve(&ConnectFlags::default(), &env, &file().1, &local).unwrap();
        assert_eq!(r.target.url, "https://127.0.0.1:9000");
        assert_eq!(r.note, None);
        assert_eq!(r.context, None);

        // A higher-ranked source wins, and says so.
        let env = env_of(&[
            ("AGENTSD_CONFIG", "/srv/agentsd.toml"),
            ("AGENTSD_CONTEXT", "lab"),
        ]);
        let r = resolve(&ConnectFlags::default(), &env, &file().1, &local).unwrap();
        assert_eq!(r.target.url, "https://lab:8487");
        assert_eq!(r.context.as_deref(), Some("lab"));
        assert_eq!(
            r.note.as_deref(),
            Some(
                "talking to https://lab:8487 (from AGENTSD_CONTEXT: context \"lab\"), not to the daemon of AGENTSD_CONFIG=/srv/agentsd.toml"
            )
        );
        let flags = ConnectFlags {
            url: Some("https://127.0.0.1:9000/".into()),
            ..Default::default()
        };
        let env = env_of(&[("AGENTSD_CONFIG", "/srv/agentsd.toml"), ("AGENTSD_API_KEY", "k")]);
        let r = resolve(&flags, &env, &file().1, &local).unwrap();
        assert_eq!(r.note, None, "the same daemon: nothing to say");

        // Without it, the client file's default context comes before the local daemon.
        let r = resolve(&ConnectFlags::default(), &env_of(&[]), &file().1, &local).unwrap();
        assert_eq!(r.target.url, "https://prod:8487");
        assert_eq!(r.context.as_deref(), Some("prod"), "the default context");
    }
}
