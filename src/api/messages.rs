//! Messages out: the rows an agent's `stats.messages` query finds, for
//! `GET /sse/agents/{id}/messages`. The query runs read-only on the
//! blocking pool, each run a short read under a time limit (the stats
//! helpers); a database is watched once (its directory, filtered by its
//! file names) for all the streams that read it.
//!
//! The contract: the first column is the cursor, an integer that grows
//! with each row; `?1` is bound to the last cursor sent
//! ([`BEGINNING`] before any); the query returns rows after it, in cursor
//! order (`WHERE id > ?1 ORDER BY id LIMIT 100`).

use rusqlite::types::ValueRef;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// `?1` before any row was sent: below every cursor.
pub const BEGINNING: i64 = i64::MIN;
/// Rows read in one run at most, whatever the query's `LIMIT` (the rest
/// come in the next run, right after).
pub const MAX_ROWS: usize = 1000;
/// Recent rows a new stream may ask for (`n`) at most.
pub const MAX_TAIL: usize = 1000;
/// A database's changes start a run at most this often per stream.
pub const MIN_GAP: Duration = Duration::from_secs(1);
/// A run waits this long after the change that starts it: a commit is
/// several writes (each an event), and a run between them would find
/// nothing and hold the next one back by [`MIN_GAP`].
pub const SETTLE: Duration = Duration::from_millis(30);
/// Finding where the last `n` rows start (up to 64 short queries) takes
/// at most this long.
const TAIL_LIMIT: Duration = Duration::from_secs(2);

/// One row: its cursor and the row as a JSON object.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub cursor: i64,
    pub json: String,
}

/// A row as a JSON object keyed by column name, in column order: integers
/// and reals as numbers (a real that is not finite as `null`), text as a
/// string (invalid UTF-8 replaced), blobs as a base64 string, `NULL` as
/// `null`. A column name given twice keeps its first value.
pub fn row_json(names: &[String], values: &[ValueRef<'_>]) -> String {
    let mut out = String::from("{");
    let mut seen = std::collections::HashSet::new();
    for (name, value) in names.iter().zip(values) {
        if !seen.insert(name.as_str()) {
            continue;
        }
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::from(name.as_str()).to_string());
        out.push(':');
        let v = match *value {
            ValueRef::Null => serde_json::Value::Null,
            ValueRef::Integer(i) => i.into(),
            ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into),
            ValueRef::Text(t) => String::from_utf8_lossy(t).into(),
            ValueRef::Blob(b) => data_encoding::BASE64.encode(b).into(),
        };
        out.push_str(&v.to_string());
    }
    out.push('}');
    out
}

/// A cursor as the first column holds it, or why it cannot be one.
fn cursor_of(v: ValueRef<'_>) -> Result<i64, String> {
    match v {
        ValueRef::Integer(i) => Ok(i),
        other => Err(format!(
            "the first column (the cursor) must be an integer, found {}",
            match other {
                ValueRef::Null => "null",
                ValueRef::Real(_) => "a real",
                ValueRef::Text(_) => "text",
                _ => "a blob",
            }
        )),
    }
}

/// The query, prepared and checked: one statement, one parameter.
fn prepare<'c>(conn: &'c rusqlite::Connection, sql: &str) -> Result<rusqlite::Statement<'c>, String> {
    let stmt = conn
        .prepare(sql)
        .map_err(|e| format!("the messages query does not run: {e}"))?;
    if stmt.parameter_count() != 1 {
        return Err(format!(
            "the messages query must have exactly one parameter (?1, the last cursor sent); it has {}",
            stmt.parameter_count()
        ));
    }
    Ok(stmt)
}

/// Visits the rows after `after`, at most `max`, checking that their
/// cursors grow from `after` on; `f` gets each row's cursor and values.
fn each_row(
    stmt: &mut rusqlite::Statement<'_>,
    after: i64,
    max: usize,
    mut f: impl FnMut(i64, &rusqlite::Row<'_>) -> Result<(), String>,
) -> Result<(), String> {
    let mut rows = stmt
        .query([after])
        .map_err(|e| format!("the messages query failed: {e}"))?;
    let mut last = after;
    for _ in 0..max {
        let row = match rows.next() {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(e) => return Err(format!("the messages query failed: {e}")),
        };
        let cursor = cursor_of(
            row.get_ref(0)
                .map_err(|e| format!("the messages query has no column: {e}"))?,
        )?;
        if cursor <= last {
            return Err(format!(
                "the messages query returned cursor {cursor} after {last}: it must return only rows after ?1, in cursor order (… WHERE id > ?1 ORDER BY id)"
            ));
        }
        last = cursor;
        f(cursor, row)?;
    }
    Ok(())
}

/// The rows after `after` (at most [`MAX_ROWS`]). Blocking: the blocking
/// pool only.
pub fn rows_after(db: &Path, sql: &str, after: i64) -> Result<Vec<Row>, String> {
    let conn = open(db, super::stats::QUERY_LIMIT)?;
    let mut stmt = prepare(&conn, sql)?;
    let names: Vec<String> = stmt.column_names().map(String::from).collect();
    let mut out = Vec::new();
    each_row(&mut stmt, after, MAX_ROWS, |cursor, row| {
        let values = (0..names.len())
            .map(|i| row.get_ref(i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the messages query failed: {e}"))?;
        out.push(Row {
            cursor,
            json: row_json(&names, &values),
        });
        Ok(())
    })?;
    Ok(out)
}

/// Where a stream without a cursor starts, so that its first rows are
/// the last `n` (fewer if there are fewer; `n = 0`: none, it starts at
/// the end). Found by bisecting the cursor's range: whether there are at
/// least `n` rows after a cursor is one short query (at most 64 of them),
/// whatever the table's size. With no database yet, or not its table,
/// every row it will have is new: the beginning. Blocking: the blocking
/// pool only.
pub fn tail_start(db: &Path, sql: &str, n: usize) -> Result<i64, String> {
    if !db.exists() {
        return Ok(BEGINNING);
    }
    let conn = open(db, TAIL_LIMIT)?;
    let mut stmt = match prepare(&conn, sql) {
        Err(e) if e.contains("no such table") => return Ok(BEGINNING),
        other => other?,
    };
    // The rows after `c`, up to `max`, and the last one's cursor.
    let mut after = |c: i64, max: usize| -> Result<(usize, i64), String> {
        let (mut count, mut last) = (0, c);
        each_row(&mut stmt, c, max, |cursor, _| {
            count += 1;
            last = cursor;
            Ok(())
        })?;
        Ok((count, last))
    };
    let mut want = n.clamp(1, MAX_TAIL);
    let (count, last) = after(BEGINNING, want)?;
    if count < want {
        if count == 0 || after(last, 1)?.0 == 0 {
            // Fewer rows than asked for: all of them, or (n = 0) the end.
            return Ok(if n == 0 { last } else { BEGINNING });
        }
        // More rows than the query returns at once (its LIMIT): the
        // last page's worth.
        want = count;
    }
    // At least `want` rows after `lo`, fewer after `hi`.
    let (mut lo, mut hi) = (BEGINNING as i128, i64::MAX as i128);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if after(mid as i64, want)?.0 >= want {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let lo = lo as i64;
    if n == 0 {
        // One row after `lo`: the last; the stream starts after it.
        return Ok(after(lo, 1)?.1);
    }
    Ok(lo)
}

fn open(db: &Path, limit: Duration) -> Result<rusqlite::Connection, String> {
    super::stats::open_read_only(db, limit).map_err(|e| format!("cannot open {}: {e}", db.display()))
}

/// A cursor from a client (`Last-Event-ID`, `after=`).
pub fn parse_cursor(s: &str) -> Option<i64> {
    s.trim().parse().ok()
}

/// The databases watched for the streams that read them: one watcher (one
/// inotify instance and its thread) for all of them, each database's
/// directory watched once, and each database's changes told once to all
/// its streams. A database is forgotten with its last stream; its
/// directory, when the next stream opens.
#[derive(Default)]
pub struct Watchers {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Made with the first stream.
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    /// The directories watched now.
    dirs: Mutex<std::collections::HashSet<PathBuf>>,
    /// Each database watched: its directory and file name, and where its
    /// changes go (the watcher's thread reads it for every event).
    dbs: Mutex<HashMap<PathBuf, Weak<DbWatch>>>,
}

/// One database watched: while a stream holds it, the changes of its file,
/// its `-wal` and its `-journal` are told on `changes`.
pub struct DbWatch {
    dir: PathBuf,
    name: String,
    tx: watch::Sender<u64>,
}

impl DbWatch {
    /// Changes from now on (a count; its value means nothing).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }

    fn names(&self, file: &std::ffi::OsStr) -> bool {
        let Some(file) = file.to_str() else {
            return false;
        };
        file.strip_prefix(self.name.as_str())
            .is_some_and(|rest| rest.is_empty() || rest == "-wal" || rest == "-journal")
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Watchers {
    /// The watch of `db`, shared with the other streams of it. Blocking
    /// (inotify calls): the blocking pool only.
    pub fn watch(&self, db: &Path) -> Result<Arc<DbWatch>, String> {
        let dir = match db.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => ".".into(),
        };
        let name = db
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| format!("{} names no file", db.display()))?;
        let mut watcher = lock(&self.shared.watcher);
        if watcher.is_none() {
            let shared = Arc::downgrade(&self.shared);
            let w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                if let (Ok(event), Some(shared)) = (res, shared.upgrade()) {
                    shared.tell(&event);
                }
            })
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
            *watcher = Some(w);
        }
        let Some(w) = watcher.as_mut() else {
            return Err(format!("cannot watch {}", dir.display()));
        };
        // Never held while the watcher is asked to watch: its thread takes
        // it for every event, and the watcher answers from that thread.
        let wanted = {
            let mut dbs = lock(&self.shared.dbs);
            dbs.retain(|_, d| d.strong_count() > 0);
            if let Some(d) = dbs.get(db).and_then(Weak::upgrade) {
                return Ok(d);
            }
            let mut wanted: std::collections::HashSet<PathBuf> = dbs
                .values()
                .filter_map(Weak::upgrade)
                .map(|d| d.dir.clone())
                .collect();
            wanted.insert(dir.clone());
            wanted
        };
        // Directories no database is watched in any more go first.
        let mut dirs = lock(&self.shared.dirs);
        for gone in dirs.iter().filter(|d| !wanted.contains(*d)) {
            let _ = notify::Watcher::unwatch(w, gone);
        }
        dirs.retain(|d| wanted.contains(d));
        if !dirs.contains(&dir) {
            notify::Watcher::watch(w, &dir, notify::RecursiveMode::NonRecursive)
                .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
            dirs.insert(dir.clone());
        }
        let d = Arc::new(DbWatch {
            dir,
            name,
            tx: watch::channel(0).0,
        });
        // No other stream added it meanwhile: `watcher` is held.
        lock(&self.shared.dbs).insert(db.to_path_buf(), Arc::downgrade(&d));
        Ok(d)
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let dbs = lock(&self.shared.dbs);
        let live = dbs.values().filter(|w| w.strong_count() > 0).count();
        (live, lock(&self.shared.dirs).len())
    }
}

impl Shared {
    /// An event of a watched directory: told to the databases it is about.
    fn tell(&self, event: &notify::Event) {
        use notify::event::{EventKind, ModifyKind};
        // Opens, reads and closes change nothing; nor does a change of
        // owner or mode, which a read makes (SQLite gives the `-wal` file
        // the database's owner when it runs as root): the streams' own
        // reads must not wake them.
        if event.kind.is_access() || matches!(event.kind, EventKind::Modify(ModifyKind::Metadata(_))) {
            return;
        }
        let dbs = lock(&self.dbs);
        for path in &event.paths {
            let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
                continue;
            };
            for d in dbs.values().filter_map(Weak::upgrade) {
                if d.dir == dir && d.names(file) {
                    tracing::trace!("database change: {:?} {}", event.kind, path.display());
                    d.tx.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    const QUERY: &str = "SELECT id, at, sender, body FROM messages WHERE id > ?1 ORDER BY id LIMIT 100";

    fn db(rows: i64) -> (tempfile::TempDir, PathBuf, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bot.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; CREATE TABLE messages(id INTEGER PRIMARY KEY, at TEXT, sender TEXT, body TEXT);",
        )
        .unwrap();
        insert(&conn, rows);
        (dir, path, conn)
    }

    fn insert(conn: &Connection, rows: i64) {
        for i in 0..rows {
            conn.execute(
                "INSERT INTO messages(at, sender, body) VALUES ('2026-12-05T07:00:00Z', 'alice', ?1)",
                [format!("hello {i}")],
            )
            .unwrap();
        }
    }

    #[test]
    fn a_row_is_a_json_object_by_column_name_in_column_order() {
        let names: Vec<String> = ["id", "score", "body", "raw", "none", "inf", "id"]
            .map(String::from)
            .into();
        let values = [
            ValueRef::Integer(7),
            ValueRef::Real(0.5),
            ValueRef::Text("a \"quote\"\nand a line".as_bytes()),
            ValueRef::Blob(&[0, 1, 2, 255]),
            ValueRef::Null,
            ValueRef::Real(f64::INFINITY),
            ValueRef::Integer(8),
        ];
        let json = row_json(&names, &values);
        assert_eq!(
            json,
            r#"{"id":7,"score":0.5,"body":"a \"quote\"\nand a line","raw":"AAEC/w==","none":null,"inf":null}"#
        );
        // One line: an SSE data line holds it whole.
        assert!(!json.contains('\n'));
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["id"], 7);
        // Invalid UTF-8 is replaced, not refused.
        let bad = row_json(&["t".into()], &[ValueRef::Text(&[0x66, 0xff])]);
        assert_eq!(bad, "{\"t\":\"f\u{fffd}\"}");
        assert_eq!(row_json(&[], &[]), "{}");
    }

    #[test]
    fn cursors_must_be_integers() {
        assert_eq!(cursor_of(ValueRef::Integer(-3)), Ok(-3));
        assert!(
            cursor_of(ValueRef::Text(b"x"))
                .unwrap_err()
                .contains("found text")
        );
        assert!(cursor_of(ValueRef::Null).unwrap_err().contains("found null"));
        assert_eq!(parse_cursor(" 42 "), Some(42));
        assert_eq!(parse_cursor("-1"), Some(-1));
        assert_eq!(parse_cursor("4x"), None);
        assert_eq!(parse_cursor(""), None);
    }

    #[test]
    fn rows_come_after_the_cursor_each_once() {
        let (_dir, path, conn) = db(250);
        // From the beginning: the query's page of 100.
        let first = rows_after(&path, QUERY, BEGINNING).unwrap();
        assert_eq!(first.len(), 100);
        assert_eq!(first[0].cursor, 1);
        let v: serde_json::Value = serde_json::from_str(&first[0].json).unwrap();
        assert_eq!(v["body"], "hello 0");
        assert_eq!(v["sender"], "alice");
        // Page after page, each row once, none skipped.
        let mut cursor = BEGINNING;
        let mut seen = Vec::new();
        loop {
            let rows = rows_after(&path, QUERY, cursor).unwrap();
            let Some(last) = rows.last() else { break };
            cursor = last.cursor;
            seen.extend(rows.iter().map(|r| r.cursor));
        }
        assert_eq!(seen, (1..=250).collect::<Vec<_>>());
        insert(&conn, 3);
        let more = rows_after(&path, QUERY, cursor).unwrap();
        assert_eq!(more.iter().map(|r| r.cursor).collect::<Vec<_>>(), [251, 252, 253]);
        // A query without a LIMIT is read MAX_ROWS at a time.
        insert(&conn, 1500);
        let all = "SELECT id, body FROM messages WHERE id > ?1 ORDER BY id";
        assert_eq!(rows_after(&path, all, BEGINNING).unwrap().len(), MAX_ROWS);
    }

    #[test]
    fn queries_that_break_the_contract_say_why() {
        let (_dir, path, _conn) = db(3);
        let err = |sql: &str| rows_after(&path, sql, BEGINNING).unwrap_err();
        assert!(
            err("SELECT id FROM messages").contains("exactly one parameter"),
            "{}",
            err("SELECT id FROM messages")
        );
        assert!(err("SELECT body, id FROM messages WHERE id > ?1").contains("must be an integer"));
        // Ignoring ?1 would send the same rows again and again.
        let again = "SELECT id FROM messages WHERE ?1 IS NOT NULL ORDER BY id DESC";
        assert!(err(again).contains("in cursor order"), "{}", err(again));
        assert!(err("SELECT id FROM nowhere WHERE id > ?1").contains("no such table"));
        let missing = rows_after(&path.with_file_name("none.db"), QUERY, BEGINNING).unwrap_err();
        assert!(
            missing.contains("cannot open") && missing.contains("none.db"),
            "{missing}"
        );
        // A read-only connection: a query cannot write.
        let write = "INSERT INTO messages(id) VALUES (?1) RETURNING id";
        assert!(rows_after(&path, write, 1000).is_err());
    }

    #[test]
    fn a_new_stream_starts_at_the_last_n_rows() {
        let (dir, path, conn) = db(0);
        // No database yet, or not its table: every row to come is new.
        let none = dir.path().join("later.db");
        assert_eq!(tail_start(&none, QUERY, 0).unwrap(), BEGINNING);
        Connection::open(&none)
            .unwrap()
            .execute_batch("CREATE TABLE other(x)")
            .unwrap();
        assert_eq!(tail_start(&none, QUERY, 0).unwrap(), BEGINNING);
        // Empty: from the beginning, whatever n.
        assert_eq!(tail_start(&path, QUERY, 0).unwrap(), BEGINNING);
        assert_eq!(tail_start(&path, QUERY, 50).unwrap(), BEGINNING);
        insert(&conn, 30);
        // Fewer rows than asked for: all of them.
        assert_eq!(tail_start(&path, QUERY, 50).unwrap(), BEGINNING);
        // n = 0: the end.
        assert_eq!(tail_start(&path, QUERY, 0).unwrap(), 30);
        insert(&conn, 5000);
        // Sparse cursors: the last 50 rows exactly.
        conn.execute_batch(
            "DELETE FROM messages WHERE id % 3 = 0; INSERT INTO messages(id, body) VALUES (1000000, 'far');",
        )
        .unwrap();
        let start = tail_start(&path, QUERY, 50).unwrap();
        let rows = rows_after(&path, QUERY, start).unwrap();
        assert_eq!(rows.len(), 50);
        assert_eq!(rows.last().unwrap().cursor, 1_000_000);
        assert_eq!(tail_start(&path, QUERY, 0).unwrap(), 1_000_000);
        assert_eq!(rows_after(&path, QUERY, 1_000_000).unwrap(), []);
        // More than the query's LIMIT: the LIMIT's worth (the last 100).
        let start = tail_start(&path, QUERY, 500).unwrap();
        let rows = rows_after(&path, QUERY, start).unwrap();
        assert_eq!(rows.len(), 100);
        assert_eq!(rows.last().unwrap().cursor, 1_000_000);
    }

    #[tokio::test]
    async fn one_watcher_per_database_tells_its_changes_only() {
        let (dir, path, conn) = db(0);
        let watchers = Watchers::default();
        let a = watchers.watch(&path).unwrap();
        let b = watchers.watch(&path).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        // Another database of the same directory: its own changes, the
        // directory watched once.
        let other = watchers.watch(&dir.path().join("other.db")).unwrap();
        let other_changes = other.changes();
        assert_eq!(watchers.len(), (2, 1));
        let mut changes = a.changes();
        // Another file of the directory: nothing.
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), changes.changed())
                .await
                .is_err()
        );
        // A read (a stream's own) either.
        rows_after(&path, QUERY, BEGINNING).unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), changes.changed())
                .await
                .is_err(),
            "a read woke the streams"
        );
        insert(&conn, 1);
        tokio::time::timeout(Duration::from_secs(5), changes.changed())
            .await
            .expect("told of the insert")
            .unwrap();
        assert!(!other_changes.has_changed().unwrap(), "told of another database");
        drop((a, b, other));
        assert_eq!(watchers.len().0, 0);
        assert!(watchers.watch(&dir.path().join("no/such/dir/x.db")).is_err());
        // The directory is let go when the next stream opens.
        let elsewhere = tempfile::tempdir().unwrap();
        let _c = watchers.watch(&elsewhere.path().join("c.db")).unwrap();
        assert_eq!(watchers.len(), (1, 1));
    }
}
