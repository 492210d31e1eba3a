//! The daemon on this host, found with no flags at all.
//!
//! Only the `[server]` table of the daemon's config file is read, and only
//! the keys that say how to reach it, with none of the daemon's validation:
//! a file whose agents are being edited (and are invalid for now) must not
//! keep the operator from the daemon that still runs the previous version.

use super::ClientError;
use super::trust::Trust;
use crate::paths;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// What the daemon on this host would be reached with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    pub url: String,
    pub key_file: Option<PathBuf>,
    pub trust: Option<Trust>,
}

/// The part of the daemon's config the client reads. Unknown keys and every
/// other table are ignored.
#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    server: Server,
}

#[derive(Debug, Default, Deserialize)]
struct Server {
    listen: Option<String>,
    api_key_file: Option<PathBuf>,
    tls: Option<TlsSetting>,
    state_dir: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TlsSetting {
    /// `"self-signed"`.
    Named(String),
    Files {
        cert: PathBuf,
    },
}

pub fn no_daemon() -> ClientError {
    ClientError::Unreachable("no daemon found: run `agentsd serve` or pass --url".into())
}

/// The local daemon of `config` (from `AGENTSD_CONFIG`), else of the default
/// config file, else of the embedded default (whose key and certificate exist
/// once it has run).
pub fn local_daemon(config: Option<&Path>) -> Result<Local, ClientError> {
    match config {
        Some(p) => from_file(p),
        None => {
            let p = Path::new(paths::DEFAULT_CONFIG);
            if p.exists() { from_file(p) } else { embedded() }
        }
    }
}

fn embedded() -> Result<Local, ClientError> {
    let state = paths::user_state_dir();
    let key = paths::embedded_key_file(&state);
    let cert = paths::self_signed_cert(&state);
    if !key.exists() || !cert.exists() {
        return Err(no_daemon());
    }
    Ok(Local {
        url: format!("https://{}", paths::DEFAULT_LISTEN),
        key_file: Some(key),
        trust: Some(pin(&cert)?),
    })
}

fn from_file(path: &Path) -> Result<Local, ClientError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ClientError::Usage(format!(
            "cannot read the local daemon's config {}: {e}",
            path.display()
        ))
    })?;
    let server = read_server(&text).map_err(|(at, msg)| {
        let at = at.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default();
        ClientError::Usage(format!(
            "cannot read the local daemon's config: {}{at}: {msg}",
            path.display()
        ))
    })?;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let base = abs.parent().unwrap_or(Path::new("/"));
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    let listen = server.listen.as_deref().unwrap_or(paths::DEFAULT_LISTEN);
    let mut addr = paths::parse_listen(listen).ok_or_else(|| {
        ClientError::Usage(format!(
            "cannot read the local daemon's config {}: invalid listen address {listen:?}",
            path.display()
        ))
    })?;
    addr.set_ip(reachable(addr.ip()));
    let state_dir = resolve(
        server
            .state_dir
            .as_deref()
            .unwrap_or(Path::new(paths::DEFAULT_STATE_DIR)),
    );
    // Pin the very certificate the daemon serves: its names need not
    // include 127.0.0.1, and it need not be self-signed.
    let (scheme, trust) = match &server.tls {
        None => ("http", None),
        Some(TlsSetting::Files { cert }) => ("https", Some(pin(&resolve(cert))?)),
        Some(TlsSetting::Named(n)) if n == "self-signed" => {
            ("https", Some(pin(&paths::self_signed_cert(&state_dir))?))
        }
        Some(TlsSetting::Named(n)) => {
            return Err(ClientError::Usage(format!(
                "cannot read the local daemon's config {}: invalid tls {n:?}",
                path.display()
            )));
        }
    };
    Ok(Local {
        url: format!("{scheme}://{}", socket(addr)),
        key_file: server.api_key_file.as_deref().map(resolve),
        trust,
    })
}

/// A daemon listening on every address is reached on loopback.
pub fn reachable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) if v4.is_unspecified() => Ipv4Addr::LOCALHOST.into(),
        IpAddr::V6(v6) if v6.is_unspecified() => Ipv6Addr::LOCALHOST.into(),
        other => other,
    }
}

fn socket(addr: SocketAddr) -> String {
    // SocketAddr's Display already brackets IPv6 addresses.
    addr.to_string()
}

fn pin(cert: &Path) -> Result<Trust, ClientError> {
    crate::certs::fingerprint_of_pem(cert)
        .map(Trust::Pin)
        .map_err(|e| ClientError::Usage(format!("cannot read the local daemon's certificate: {e:#}")))
}

/// The `[server]` table, or where and why it could not be read. A file that
/// is not valid TOML as a whole (an agent being edited) still gives its
/// `[server]` table when the TOML parser, recovering from the errors, finds
/// none of them inside that table.
fn read_server(text: &str) -> Result<Server, (Option<(usize, usize)>, String)> {
    let whole = match toml::from_str::<File>(text) {
        Ok(f) => return Ok(f.server),
        Err(e) => e,
    };
    let refused = || {
        Err((
            whole.span().map(|s| line_col(text, s.start)),
            whole.message().trim().to_string(),
        ))
    };
    let (doc, errors) = toml::de::DeTable::parse_recoverable(text);
    let Some(server) = doc.get_ref().get("server").map(|v| v.span().start) else {
        return refused();
    };
    // Where each table's header is: an error belongs to the last one
    // before it.
    let mut headers = Vec::new();
    table_headers(doc.get_ref(), text, &mut headers);
    let owner = |at: usize| headers.iter().copied().filter(|&h| h <= at).max();
    if errors
        .iter()
        .any(|e| e.span().is_none_or(|s| owner(s.start) == Some(server)))
    {
        return refused();
    }
    match File::deserialize(toml::de::Deserializer::from(doc)) {
        Ok(f) => Ok(f.server),
        Err(_) => refused(),
    }
}

/// The offsets of the `[table]` and `[[array]]` headers in `table`, nested
/// ones too (not inline tables: those are values inside their table).
fn table_headers(table: &toml::de::DeTable<'_>, text: &str, out: &mut Vec<usize>) {
    use toml::de::DeValue;
    for value in table.values() {
        match value.get_ref() {
            DeValue::Table(t) => {
                let at = value.span().start;
                if text.get(at..).is_some_and(|t| t.starts_with('[')) {
                    out.push(at);
                }
                table_headers(t, text, out);
            }
            DeValue::Array(items) => {
                for item in items {
                    if let DeValue::Table(t) = item.get_ref() {
                        let at = item.span().start;
                        if text.get(at..).is_some_and(|t| t.starts_with('[')) {
                            out.push(at);
                        }
                        table_headers(t, text, out);
                    }
                }
            }
            _ => {}
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn only_the_server_table_is_read() {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::write_self_signed(&dir.path().join("state/tls"), &["localhost".into()], false).unwrap();
        let served = crate::certs::fingerprint_of_pem(&dir.path().join("state/tls/cert.pem")).unwrap();
        // Agents the daemon would refuse, and keys this reader does not know.
        let cfg = write(
            dir.path(),
            "a.toml",
            "[server]\nlisten = \"0.0.0.0:9000\"\ntls = \"self-signed\"\napi_key_file = \"api.key\"\nstate_dir = \"state\"\nsample_interval = \"5s\"\n\n[agents.bad]\ncommand = 5\nnonsense = true\n",
        );
        let l = local_daemon(Some(&cfg)).unwrap();
        assert_eq!(
            l,
            Local {
                url: "https://127.0.0.1:9000".into(),
                key_file: Some(dir.path().join("api.key")),
                trust: Some(Trust::Pin(served.clone())),
            }
        );

        // Not even valid TOML below the server table: the table still counts.
        let cfg = write(
            dir.path(),
            "b.toml",
            "# comment\n[server]\nlisten = \"[::]:9001\"\ntls = { cert = \"state/tls/cert.pem\", key = \"k.pem\" }\n\n[agents.half-edited]\ncommand = [\"sleep\", \n",
        );
        let l = local_daemon(Some(&cfg)).unwrap();
        assert_eq!(l.url, "https://[::1]:9001");
        assert_eq!(l.trust, Some(Trust::Pin(served)));
        assert_eq!(l.key_file, None);

        // No tls: plain http; defaults for what is not written.
        let cfg = write(dir.path(), "c.toml", "[agents.x]\ncommand = [\"true\"]\n");
        let l = local_daemon(Some(&cfg)).unwrap();
        assert_eq!(l.url, format!("http://{}", paths::DEFAULT_LISTEN));
    }

    #[test]
    fn a_broken_server_table_is_reported_with_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write(dir.path(), "a.toml", "[server]\nlisten = 5\n");
        let e = local_daemon(Some(&cfg)).unwrap_err();
        assert!(matches!(e, ClientError::Usage(_)));
        assert!(e.to_string().contains("a.toml:2:10: "), "{e}");
        let e = local_daemon(Some(&dir.path().join("missing.toml"))).unwrap_err();
        assert!(
            e.to_string().contains("cannot read the local daemon's config"),
            "{e}"
        );
    }

    #[test]
    fn an_error_inside_the_server_table_is_not_recovered_from() {
        // Broken below the table: the table counts.
        let below = "[server]\nlisten = \"127.0.0.1:9002\"\n[agents.a]\ncommand = [\"x\",\n";
        assert_eq!(
            read_server(below).unwrap().listen.as_deref(),
            Some("127.0.0.1:9002")
        );
        // Broken inside it: reported, never read as a default.
        let inside = "[server]\nlisten = \"127.0.0.1:9002\"\nstate_dir = \n[agents.a]\ncommand = [\"x\"]\n";
        let (at, _) = read_server(inside).unwrap_err();
        assert_eq!(at.map(|(line, _)| line), Some(3));
        // An array left open above it takes the table in (`[server]` reads
        // as an element): reported with its place, not guessed.
        let above = "[agents.a]\ncommand = [\n[server]\nlisten = \"127.0.0.1:9003\"\n";
        let (at, _) = read_server(above).unwrap_err();
        assert_eq!(at, Some((4, 1)));
    }
}
