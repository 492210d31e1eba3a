//! Edits of one agent's table in the config file, for `PUT` and `DELETE
//! /agents/{id}/config`: the text of the rest of the file (comments,
//! layout, order) is kept byte for byte (`toml_edit`), and the new file
//! replaces the old one atomically, only if it is still the one the edit
//! was made on.

use std::path::Path;
use toml_edit::{DocumentMut, Item, TableLike};

/// Why an edit could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    /// The file as it is does not parse as TOML.
    #[error("the config file is not valid TOML: {0}")]
    Unparsable(String),
    /// The agent's table has a shape this editor does not write (e.g.
    /// `agents` is not a table).
    #[error("{0}")]
    Shape(String),
    /// What was sent cannot be a TOML table.
    #[error("{0}")]
    Value(String),
}

/// Why the new file was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The file changed since it was read (a hand edit, or another edit).
    #[error("the config file changed while the edit was being written; nothing was written")]
    Changed,
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What is asked of one agent's table.
#[derive(Debug, Clone)]
pub enum Change {
    /// Its table as written, and the file's tag.
    Read,
    /// Create or replace it.
    Put(toml::Table),
    /// Remove it.
    Remove,
}

/// What an edit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Created,
    Changed,
    /// The table sent is the one there: nothing was written.
    Unchanged,
    Removed,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Created => "created",
            Action::Changed => "changed",
            Action::Unchanged => "unchanged",
            Action::Removed => "removed",
        }
    }
}

/// The outcome of [`apply`].
#[derive(Debug, Clone)]
pub struct Applied {
    pub action: Action,
    /// The agent's table now (none once removed).
    pub table: Option<toml::Table>,
    /// The keys that changed (never values).
    pub changed: Vec<String>,
    /// The file's tag now.
    pub etag: String,
}

impl Applied {
    /// Whether the file was written (a reload follows).
    pub fn written(&self) -> bool {
        matches!(self.action, Action::Created | Action::Changed | Action::Removed)
    }
}

/// Why [`apply`] did nothing.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("no agent named {id:?} in the config file")]
    NotFound { id: String, etag: String },
    /// `If-Match` names another version of the file.
    #[error(
        "the config file changed since it was read (its ETag is now {etag}): read it again and redo the edit"
    )]
    Stale { etag: String },
    /// The file with the edit would not be a valid config: why, as `config
    /// check` says it.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Reads the config file at `path` and does `change` to agent `id`'s
/// table, if the file is still the one `wanted` (`If-Match`) names (any for a read):
/// the whole new file must pass `check` (the config's validation, as
/// `config check` makes it), then replaces the old one (see
/// [`write_if_unchanged`]). Blocking: file reads, parsing and writes.
pub fn apply(
    path: &Path,
    id: &str,
    change: Change,
    wanted: &str,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<Applied, ApplyError> {
    let io = |source| WriteError::Io {
        path: path.display().to_string(),
        source,
    };
    let bytes = std::fs::read(path).map_err(io)?;
    let tag = etag(&bytes);
    let text = String::from_utf8(bytes).map_err(|_| EditError::Unparsable("the file is not UTF-8".into()))?;
    let old = agent_table(&text, id)?;
    let not_found = || ApplyError::NotFound {
        id: id.to_string(),
        etag: tag.clone(),
    };
    let stale = |tag: &String| (!if_match(wanted, tag)).then(|| ApplyError::Stale { etag: tag.clone() });
    let (new_text, action, table, changed) = match change {
        Change::Read => {
            let table = old.ok_or_else(not_found)?;
            return Ok(Applied {
                action: Action::Read,
                table: Some(table),
                changed: Vec::new(),
                etag: tag,
            });
        }
        Change::Put(_) | Change::Remove if let Some(e) = stale(&tag) => return Err(e),
        Change::Put(new) => {
            let changed = changed_keys(old.as_ref().unwrap_or(&toml::Table::new()), &new);
            if old.as_ref() == Some(&new) {
                return Ok(Applied {
                    action: Action::Unchanged,
                    table: Some(new),
                    changed,
                    etag: tag,
                });
            }
            let (text, created) = put(&text, id, &new)?;
            let action = if created { Action::Created } else { Action::Changed };
            (text, action, Some(new), changed)
        }
        Change::Remove => {
            let Some(old) = old else {
                return Err(not_found());
            };
            let text = remove(&text, id)?.ok_or_else(not_found)?;
            (
                text,
                Action::Removed,
                None,
                changed_keys(&old, &toml::Table::new()),
            )
        }
    };
    check(&new_text).map_err(ApplyError::Invalid)?;
    write_if_unchanged(path, &tag, &new_text)?;
    Ok(Applied {
        action,
        table,
        changed,
        etag: etag(new_text.as_bytes()),
    })
}

/// The entity tag of a config file's text: its SHA-256, quoted as HTTP
/// wants it.
pub fn etag(text: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text);
    format!("\"{}\"", data_encoding::HEXLOWER.encode(digest.as_ref()))
}

/// Whether an `If-Match` header value matches `etag` (`*`, or one of a
/// list of tags; weak tags never match, as RFC 9110 says for If-Match).
pub fn if_match(header: &str, etag: &str) -> bool {
    header.split(',').map(str::trim).any(|t| t == "*" || t == etag)
}

/// The table of agent `id` as written in `text` (no defaults applied);
/// `None` if the file has no such agent.
pub fn agent_table(text: &str, id: &str) -> Result<Option<toml::Table>, EditError> {
    let doc: toml::Table =
        toml::from_str(text).map_err(|e| EditError::Unparsable(e.message().to_string()))?;
    match doc.get("agents").and_then(|a| a.get(id)) {
        None => Ok(None),
        Some(toml::Value::Table(t)) => Ok(Some(t.clone())),
        Some(_) => Err(EditError::Shape(format!("agents.{id} is not a table"))),
    }
}

/// A JSON object as a TOML table: `null` has no TOML form.
pub fn table_from_json(v: serde_json::Value) -> Result<toml::Table, EditError> {
    fn no_nulls(v: &serde_json::Value, at: &str) -> Result<(), EditError> {
        match v {
            serde_json::Value::Null => Err(EditError::Value(format!(
                "{at} is null: TOML has no null; leave the key out"
            ))),
            serde_json::Value::Array(a) => a
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| no_nulls(v, &format!("{at}[{i}]"))),
            serde_json::Value::Object(o) => o.iter().try_for_each(|(k, v)| {
                let at = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                no_nulls(v, &at)
            }),
            _ => Ok(()),
        }
    }
    if !v.is_object() {
        return Err(EditError::Value(
            "expected a JSON object: the agent's table, e.g. {\"command\": [\"./bot\"]}".into(),
        ));
    }
    no_nulls(&v, "")?;
    toml::Table::try_from(v).map_err(|e| EditError::Value(format!("not a TOML table: {e}")))
}

/// The keys that differ between two tables, as dotted paths (`command`,
/// `env.TOKEN`): what an audit entry names (never a value).
pub fn changed_keys(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    fn walk(old: &toml::Table, new: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let path = format!("{prefix}{k}");
            match (old.get(k), new.get(k)) {
                (Some(a), Some(b)) if a == b => {}
                (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                    walk(a, b, &format!("{path}."), out)
                }
                (Some(toml::Value::Table(t)), None) | (None, Some(toml::Value::Table(t)))
                    if !t.is_empty() =>
                {
                    walk(t, &toml::Table::new(), &format!("{path}."), out)
                }
                _ => out.push(path),
            }
        }
    }
    let mut out = Vec::new();
    walk(old, new, "", &mut out);
    out
}

/// `text` with agent `id`'s table set to `new`: an existing table is
/// changed key by key (a key whose value is unchanged keeps its comments
/// and layout; removed keys go; new keys come last), a new one is appended
/// at the end of the file as `[agents.ID]`. Returns the new text and
/// whether the agent is new.
pub fn put(text: &str, id: &str, new: &toml::Table) -> Result<(String, bool), EditError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Unparsable(e.message().to_string()))?;
    let old = agent_table(text, id)?;
    let root = doc.as_table_mut();
    if !root.contains_key("agents") {
        let mut agents = toml_edit::Table::new();
        agents.set_implicit(true);
        root.insert("agents", Item::Table(agents));
    }
    let agents = root
        .get_mut("agents")
        .and_then(Item::as_table_like_mut)
        .ok_or_else(|| EditError::Shape("`agents` in the config file is not a table".into()))?;
    match (old, agents.get_mut(id)) {
        (Some(old), Some(item)) => {
            let table = item
                .as_table_like_mut()
                .ok_or_else(|| EditError::Shape(format!("agents.{id} is not a table")))?;
            merge(table, &old, new)?;
            Ok((doc.to_string(), false))
        }
        _ => {
            let mut table = toml_edit::Table::new();
            for (k, v) in ordered(new) {
                table.insert(k, Item::Value(value(v)?));
            }
            if !text.is_empty() {
                // A blank line between the file's end and the new table.
                let sep = if text.ends_with("\n\n") {
                    ""
                } else if text.ends_with('\n') {
                    "\n"
                } else {
                    "\n\n"
                };
                table.decor_mut().set_prefix(sep);
            }
            agents.insert(id, Item::Table(table));
            Ok((doc.to_string(), true))
        }
    }
}

/// `text` without agent `id`'s table (and its subtables); `None` if it
/// has none.
pub fn remove(text: &str, id: &str) -> Result<Option<String>, EditError> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Unparsable(e.message().to_string()))?;
    let Some(agents) = doc.get_mut("agents").and_then(Item::as_table_like_mut) else {
        return Ok(None);
    };
    Ok(agents.remove(id).map(|_| doc.to_string()))
}

/// The keys of a new table in the order the docs write them: the command
/// first, then where and as whom it runs, then the rest by name.
fn ordered(t: &toml::Table) -> Vec<(&String, &toml::Value)> {
    const FIRST: [&str; 7] = [
        "command",
        "cwd",
        "user",
        "env",
        "env_file",
        "autostart",
        "restart",
    ];
    let mut v: Vec<_> = t.iter().collect();
    v.sort_by_key(|(k, _)| {
        (
            FIRST.iter().position(|f| f == k).unwrap_or(FIRST.len()),
            (*k).clone(),
        )
    });
    v
}

/// A TOML value as `toml_edit` writes it (tables inline).
fn value(v: &toml::Value) -> Result<toml_edit::Value, EditError> {
    let text = toml::to_string(&std::collections::BTreeMap::from([("v", v)]))
        .map_err(|e| EditError::Value(format!("not a TOML value: {e}")))?;
    let doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| EditError::Value(e.message().to_string()))?;
    let item = doc.get("v").cloned().unwrap_or(Item::None);
    let mut out = item
        .into_value()
        .map_err(|_| EditError::Value("not a TOML value".into()))?;
    out.decor_mut().clear();
    Ok(out)
}

/// Changes `table` (which holds `old`) to hold `new`.
fn merge(table: &mut dyn TableLike, old: &toml::Table, new: &toml::Table) -> Result<(), EditError> {
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        table.remove(k);
    }
    for (k, v) in ordered(new) {
        if old.get(k) == Some(v) {
            continue;
        }
        if let (Some(toml::Value::Table(was)), toml::Value::Table(now)) = (old.get(k), v)
            && let Some(inner) = table.get_mut(k).and_then(Item::as_table_like_mut)
        {
            merge(inner, was, now)?;
            continue;
        }
        let mut new_value = value(v)?;
        match table.get_mut(k) {
            // The value replaced in place: its spacing and trailing comment stay.
            Some(Item::Value(existing)) => {
                *new_value.decor_mut() = existing.decor().clone();
                *existing = new_value;
            }
            _ => {
                table.remove(k);
                table.insert(k, Item::Value(new_value));
            }
        }
    }
    Ok(())
}

/// Replaces the file at `path` with `text`, atomically, if it still
/// holds what has `expected` as its [`etag`]: the new text goes to a file
/// beside it, which is swapped with the old one in one step
/// (`renameat2(RENAME_EXCHANGE)`); the old one, now beside, is checked,
/// and swapped back if it was not what the edit was made on. Where the
/// file system cannot swap, the file is checked just before a plain
/// rename. A symlink is followed: the file it points to is replaced.
pub fn write_if_unchanged(path: &Path, expected: &str, text: &str) -> Result<(), WriteError> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| WriteError::Io { path, source }
    };
    let path = std::fs::canonicalize(path).map_err(io(path))?;
    let dir = path.parent().unwrap_or(Path::new("/"));
    let meta = std::fs::metadata(&path).map_err(io(&path))?;
    let mode = meta.permissions().mode();
    let mut tmp = tempfile::Builder::new()
        .prefix(".agentsd-edit-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(text.as_bytes()).map_err(io(tmp.path()))?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io(tmp.path()))?;
    // The owner stays (where the daemon may give it: as root).
    {
        use std::os::unix::fs::MetadataExt as _;
        let _ = std::os::unix::fs::fchown(tmp.as_file(), Some(meta.uid()), Some(meta.gid()));
    }
    tmp.as_file().sync_all().map_err(io(tmp.path()))?;
    let tmp_path = tmp.into_temp_path();
    let swap = || {
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &*tmp_path,
            nix::fcntl::AT_FDCWD,
            &path,
            nix::fcntl::RenameFlags::RENAME_EXCHANGE,
        )
    };
    match swap() {
        Ok(()) => {
            // The old file is now at the temporary path.
            let was = std::fs::read(&tmp_path).map_err(io(&tmp_path))?;
            if etag(&was) != expected {
                swap().map_err(|e| io(&path)(std::io::Error::from(e)))?;
                return Err(WriteError::Changed);
            }
        }
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS | nix::errno::Errno::EOPNOTSUPP) => {
            let was = std::fs::read(&path).map_err(io(&path))?;
            if etag(&was) != expected {
                return Err(WriteError::Changed);
            }
            std::fs::rename(&tmp_path, &path).map_err(io(&path))?;
        }
        Err(e) => return Err(io(&path)(std::io::Error::from(e))),
    }
    // Whatever is at the temporary path now (the old file) goes when it drops.
    drop(tmp_path);
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# The bots of example.com.
[server]
listen = "127.0.0.1:8487"   # loopback only

[defaults]
restart = "always"

# The support bot: talks to the helpdesk.
[agents.bot]
command = ["./bot", "--fast"]   # keep --fast
env = { TOKEN = "x", MODE = "a" }
stop_timeout = "5s"

[agents.worker]
command = ["./worker"]
[agents.worker.env]
QUEUE = "jobs"
"#;

    fn table(json: serde_json::Value) -> toml::Table {
        table_from_json(json).unwrap()
    }

    #[test]
    fn a_new_agent_is_the_file_plus_its_table() {
        let (text, created) = put(
            FILE,
            "mail",
            &table(serde_json::json!({"env": {"A": "1"}, "command": ["./mail", "-v"], "autostart": false})),
        )
        .unwrap();
        assert!(created);
        assert_eq!(
            text,
            format!(
                "{FILE}\n[agents.mail]\ncommand = [\"./mail\", \"-v\"]\nenv = {{ A = \"1\" }}\nautostart = false\n"
            )
        );
        let cfg = crate::config::parse(&text, "t.toml", Path::new("/")).unwrap();
        assert_eq!(cfg.agents["mail"].command, ["./mail", "-v"]);
        assert!(!cfg.agents["mail"].autostart);
    }

    #[test]
    fn a_file_without_agents_gets_an_agents_table() {
        let (text, _) = put("[server]\n", "a", &table(serde_json::json!({"command": ["x"]}))).unwrap();
        assert_eq!(text, "[server]\n\n[agents.a]\ncommand = [\"x\"]\n");
        let (text, _) = put("", "a", &table(serde_json::json!({"command": ["x"]}))).unwrap();
        assert_eq!(text, "[agents.a]\ncommand = [\"x\"]\n");
    }

    #[test]
    fn a_changed_agent_keeps_what_did_not_change() {
        let mut new = agent_table(FILE, "bot").unwrap().unwrap();
        new["env"]["TOKEN"] = "y".into();
        new.remove("stop_timeout");
        new.insert("user".into(), "bots".into());
        let (text, created) = put(FILE, "bot", &new).unwrap();
        assert!(!created);
        assert_eq!(
            text,
            FILE.replace("TOKEN = \"x\"", "TOKEN = \"y\"")
                .replace("stop_timeout = \"5s\"\n", "user = \"bots\"\n")
        );
        // A subtable with a header of its own stays one.
        let mut new = agent_table(FILE, "worker").unwrap().unwrap();
        new["env"]["QUEUE"] = "mail".into();
        let (text, _) = put(FILE, "worker", &new).unwrap();
        assert_eq!(text, FILE.replace("QUEUE = \"jobs\"", "QUEUE = \"mail\""));
        assert_eq!(
            changed_keys(&agent_table(FILE, "bot").unwrap().unwrap(), &{
                let mut t = agent_table(FILE, "bot").unwrap().unwrap();
                t["env"]["TOKEN"] = "z".into();
                t.remove("stop_timeout");
                t
            }),
            ["env.TOKEN", "stop_timeout"]
        );
    }

    #[test]
    fn the_same_table_changes_nothing() {
        let same = agent_table(FILE, "bot").unwrap().unwrap();
        assert_eq!(put(FILE, "bot", &same).unwrap().0, FILE);
    }

    #[test]
    fn a_removed_agent_takes_its_subtables() {
        let text = remove(FILE, "worker").unwrap().unwrap();
        assert!(!text.contains("worker") && !text.contains("QUEUE"), "{text}");
        // The blank line before the table went with it.
        assert_eq!(
            text.trim_end(),
            FILE[..FILE.find("[agents.worker]").unwrap()].trim_end()
        );
        assert_eq!(remove(FILE, "nobody").unwrap(), None);
        assert_eq!(remove("[server]\n", "a").unwrap(), None);
    }

    #[test]
    fn what_is_not_a_table_is_refused() {
        assert!(table_from_json(serde_json::json!(["x"])).is_err());
        let e = table_from_json(serde_json::json!({"env": {"A": null}})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "env.A is null: TOML has no null; leave the key out"
        );
        assert!(matches!(
            put("a = [", "x", &toml::Table::new()),
            Err(EditError::Unparsable(_))
        ));
    }

    #[test]
    fn if_match_takes_star_and_lists() {
        let tag = etag(b"x");
        assert!(if_match(&tag, &tag));
        assert!(if_match("*", &tag));
        assert!(if_match(&format!("\"other\", {tag}"), &tag));
        assert!(!if_match("\"other\"", &tag));
        assert!(!if_match(&format!("W/{tag}"), &tag));
    }

    #[test]
    fn a_file_changed_under_the_edit_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentsd.toml");
        std::fs::write(&path, "a = 1\n").unwrap();
        let tag = etag(b"a = 1\n");
        std::fs::write(&path, "a = 2\n").unwrap();
        assert!(matches!(
            write_if_unchanged(&path, &tag, "a = 3\n"),
            Err(WriteError::Changed)
        ));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a = 2\n");
        write_if_unchanged(&path, &etag(b"a = 2\n"), "a = 3\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a = 3\n");
        // Nothing is left beside it.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
