//! The SQLite state under `state_dir`: what the operator asked for, the
//! process groups that may need cleaning up after a crash, log offsets, and a
//! history of status changes and exits.
//!
//! One thread owns the connection; everything else sends it operations, so
//! no blocking database call ever runs on an async worker. Operations that
//! arrive together are committed in one transaction. Nothing is dropped on
//! a failed write: it stays pending and is retried, whoever waits for it
//! (a change of desired state) is told it is not stored yet, and
//! [`StoreHealth`] says so until it is.

use crate::wire::{Desired, Status};
use anyhow::{Context, bail};
use rusqlite::{Connection, params};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;
use tokio::sync::{oneshot, watch};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS desired (
    agent TEXT PRIMARY KEY,
    desired TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS process_groups (
    agent TEXT PRIMARY KEY,
    pgid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS log_base (
    agent TEXT PRIMARY KEY,
    base INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    agent TEXT NOT NULL,
    at TEXT NOT NULL,
    old_status TEXT NOT NULL,
    new_status TEXT NOT NULL,
    pid INTEGER,
    exit_code INTEGER,
    exit_signal TEXT,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS history_agent ON history(agent, id);
";

/// History rows kept in memory while the database cannot be written.
const PENDING_HISTORY: usize = 10_000;
/// How long a busy database (locked by another process) is waited for.
pub const BUSY_WAIT: Duration = Duration::from_secs(5);
/// How often pending writes are retried.
const RETRY: Duration = Duration::from_secs(1);

/// One status change, as kept in the history table.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    pub agent: String,
    pub at: String,
    pub old_status: Status,
    pub new_status: Status,
    pub pid: Option<u32>,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<String>,
    pub reason: Option<String>,
}

/// Whether a write was committed: `Err` carries why not (it stays pending
/// and is retried).
pub type Ack = oneshot::Receiver<Result<(), String>>;

/// What the store has not managed to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// Writes waiting to be stored.
    pub pending: usize,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// History rows given up on (the backlog was full).
    pub history_dropped: u64,
}

enum Op {
    SetDesired(String, Desired, String, oneshot::Sender<Result<(), String>>),
    SetGroup(String, Option<i32>),
    SetLogBase(String, u64),
    History(HistoryRow),
    Flush(mpsc::Sender<()>),
}

/// What was stored by earlier runs of the daemon.
#[derive(Debug, Default, Clone)]
pub struct Loaded {
    pub desired: HashMap<String, Desired>,
    /// Process groups of agents that were running when the daemon last stopped.
    pub groups: Vec<(String, i32)>,
    pub log_bases: HashMap<String, u64>,
}

/// A cheap, cloneable sender of store operations.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Op>,
    health: watch::Receiver<StoreHealth>,
    path: std::sync::Arc<Path>,
}

impl Store {
    /// Opens (or creates) `dir/state.db` and starts the writer thread. A
    /// database that fails its integrity check is an error: the daemon
    /// must not run on a state it cannot trust.
    /// Each agent keeps its last `history_keep` status changes.
    pub fn open(dir: &Path, history_keep: u32) -> anyhow::Result<(Store, Loaded)> {
        let path = dir.join("state.db");
        let conn = connect(&path)?;
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .with_context(|| format!("cannot check the state database {}", path.display()))?;
        if check != "ok" {
            bail!(
                "the state database {} is corrupt ({check}); move it away to start with an empty state (what operators asked for will be forgotten)",
                path.display()
            );
        }
        let loaded =
            load(&conn).with_context(|| format!("cannot read the state database {}", path.display()))?;
        let identity = identity(&path);
        let (tx, rx) = mpsc::channel();
        let (health_tx, health) = watch::channel(StoreHealth::default());
        let shared: std::sync::Arc<Path> = path.as_path().into();
        let mut writer = Writer {
            conn: Some(conn),
            path,
            history_keep,
            identity,
            mirror: Mirror::from(&loaded),
            pending: Pending::default(),
            health: health_tx,
        };
        // It ends once every `Store` is dropped, after what was queued.
        std::thread::Builder::new()
            .name("agentsd-store".into())
            .spawn(move || writer.run(rx))
            .context("cannot start the store thread")?;
        Ok((
            Store {
                tx,
                health,
                path: shared,
            },
            loaded,
        ))
    }

    fn send(&self, op: Op) {
        // The writer only goes away at shutdown, after the supervisor.
        let _ = self.tx.send(op);
    }

    /// Stores what an operator asked for; the answer says once it is.
    pub fn set_desired(&self, agent: &str, desired: Desired) -> Ack {
        let (tx, rx) = oneshot::channel();
        self.send(Op::SetDesired(
            agent.to_string(),
            desired,
            crate::wire::rfc3339(std::time::SystemTime::now()),
            tx,
        ));
        rx
    }

    pub fn set_group(&self, agent: &str, pgid: i32) {
        self.send(Op::SetGroup(agent.to_string(), Some(pgid)));
    }

    pub fn clear_group(&self, agent: &str) {
        self.send(Op::SetGroup(agent.to_string(), None));
    }

    pub fn set_log_base(&self, agent: &str, base: u64) {
        self.send(Op::SetLogBase(agent.to_string(), base));
    }

    pub fn history(&self, row: HistoryRow) {
        self.send(Op::History(row));
    }

    /// An agent's status changes, newest first: at most `limit`, older than
    /// row `before` when given. Blocking (a read of its own, beside the
    /// writer): call it off the async workers.
    pub fn read_history(
        &self,
        agent: &str,
        limit: u32,
        before: Option<i64>,
    ) -> anyhow::Result<Vec<crate::wire::HistoryEntry>> {
        use crate::wire::{ExitInfo, HistoryEntry};
        let conn = rusqlite::Connection::open_with_flags(
            &*self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("cannot open the state database {}", self.path.display()))?;
        conn.busy_timeout(BUSY_WAIT)?;
        let status = |s: String| -> rusqlite::Result<Status> {
            serde_json::from_value(serde_json::Value::String(s)).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
            })
        };
        let mut st = conn.prepare(
            "SELECT id, at, old_status, new_status, pid, exit_code, exit_signal, reason FROM history
             WHERE agent = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = st.query_map(params![agent, before.unwrap_or(i64::MAX), limit], |r| {
            let code: Option<i32> = r.get(5)?;
            let signal: Option<String> = r.get(6)?;
            Ok(HistoryEntry {
                id: r.get(0)?,
                at: r.get(1)?,
                old_status: status(r.get(2)?)?,
                new_status: status(r.get(3)?)?,
                pid: r.get(4)?,
                exit: (code.is_some() || signal.is_some()).then_some(ExitInfo { code, signal }),
                reason: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// What is not stored yet, now and on every change.
    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        self.health.clone()
    }

    /// Waits until everything sent before has been tried once (committed,
    /// or kept pending).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Flush(tx));
        let _ = rx.recv();
    }
}

fn connect(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)
        .with_context(|| format!("cannot open the state database {}", path.display()))?;
    conn.busy_timeout(BUSY_WAIT)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
        // Written far more than read: a small page cache (SQLite's default
        // is 2 MiB).
        .and_then(|_| conn.pragma_update(None, "cache_size", "-256"))
        .and_then(|_| conn.execute_batch(SCHEMA))
        .with_context(|| format!("cannot prepare the state database {}", path.display()))?;
    Ok(conn)
}

/// Which file a path names now (device, inode).
fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

fn load(conn: &Connection) -> rusqlite::Result<Loaded> {
    let mut loaded = Loaded::default();
    let mut st = conn.prepare("SELECT agent, desired FROM desired")?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (agent, d) = row?;
        let d = match d.as_str() {
            "running" => Desired::Running,
            "stopped" => Desired::Stopped,
            _ => continue,
        };
        loaded.desired.insert(agent, d);
    }
    let mut st = conn.prepare("SELECT agent, pgid FROM process_groups")?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i32>(1)?)))? {
        loaded.groups.push(row?);
    }
    let mut st = conn.prepare("SELECT agent, base FROM log_base")?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (agent, base) = row?;
        loaded.log_bases.insert(agent, base.max(0) as u64);
    }
    Ok(loaded)
}

/// Everything the database should hold but its history: written again
/// whole if the database is removed under the daemon.
#[derive(Default)]
struct Mirror {
    desired: BTreeMap<String, (Desired, String)>,
    groups: BTreeMap<String, i32>,
    log_bases: BTreeMap<String, u64>,
}

impl Mirror {
    fn from(l: &Loaded) -> Mirror {
        let now = crate::wire::rfc3339(std::time::SystemTime::now());
        Mirror {
            desired: l
                .desired
                .iter()
                .map(|(a, d)| (a.clone(), (*d, now.clone())))
                .collect(),
            groups: l.groups.iter().cloned().collect(),
            log_bases: l.log_bases.iter().map(|(a, b)| (a.clone(), *b)).collect(),
        }
    }
}

/// Writes not committed yet, coalesced: the latest value per agent.
#[derive(Default)]
struct Pending {
    desired: BTreeMap<String, (Desired, String)>,
    groups: BTreeMap<String, Option<i32>>,
    log_bases: BTreeMap<String, u64>,
    history: VecDeque<HistoryRow>,
    history_dropped: u64,
    acks: Vec<oneshot::Sender<Result<(), String>>>,
}

impl Pending {
    fn len(&self) -> usize {
        self.desired.len() + self.groups.len() + self.log_bases.len() + self.history.len()
    }
}

struct Writer {
    /// `None` after the database file was found removed and could not be
    /// made again.
    conn: Option<Connection>,
    path: PathBuf,
    identity: Option<(u64, u64)>,
    mirror: Mirror,
    pending: Pending,
    health: watch::Sender<StoreHealth>,
    history_keep: u32,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Op>) {
        loop {
            // Wait for work; while something is pending, retry now and then.
            let first = if self.pending.len() == 0 {
                match rx.recv() {
                    Ok(op) => Some(op),
                    Err(_) => return,
                }
            } else {
                match rx.recv_timeout(RETRY) {
                    Ok(op) => Some(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => None,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        self.write();
                        return;
                    }
                }
            };
            let mut flushes = Vec::new();
            let mut batch = first.into_iter().collect::<Vec<_>>();
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            for op in batch {
                self.queue(op, &mut flushes);
            }
            self.write();
            for f in flushes {
                let _ = f.send(());
            }
        }
    }

    fn queue(&mut self, op: Op, flushes: &mut Vec<mpsc::Sender<()>>) {
        let p = &mut self.pending;
        match op {
            Op::SetDesired(agent, d, at, ack) => {
                self.mirror.desired.insert(agent.clone(), (d, at.clone()));
                p.desired.insert(agent, (d, at));
                p.acks.push(ack);
            }
            Op::SetGroup(agent, g) => {
                match g {
                    Some(g) => self.mirror.groups.insert(agent.clone(), g),
                    None => self.mirror.groups.remove(&agent),
                };
                p.groups.insert(agent, g);
            }
            Op::SetLogBase(agent, base) => {
                self.mirror.log_bases.insert(agent.clone(), base);
                p.log_bases.insert(agent, base);
            }
            Op::History(row) => {
                if p.history.len() >= PENDING_HISTORY {
                    p.history.pop_front();
                    p.history_dropped += 1;
                }
                p.history.push_back(row);
            }
            Op::Flush(done) => flushes.push(done),
        }
    }

    /// Tries to commit everything pending in one transaction.
    fn write(&mut self) {
        if self.pending.len() == 0 {
            return;
        }
        let result = self.ensure_db().and_then(|()| match self.conn.as_mut() {
            Some(conn) => commit(conn, &self.pending, self.history_keep).map_err(|e| e.to_string()),
            None => Err("the state database is not open".to_string()),
        });
        let acks = std::mem::take(&mut self.pending.acks);
        let was_failing = self.health.borrow().error.is_some();
        match result {
            Ok(()) => {
                let dropped = self.pending.history_dropped;
                self.pending = Pending {
                    history_dropped: dropped,
                    ..Pending::default()
                };
                self.set_health(None);
                for a in acks {
                    let _ = a.send(Ok(()));
                }
                if was_failing {
                    tracing::info!("the state database {} is written again", self.path.display());
                }
            }
            Err(e) => {
                if !was_failing {
                    tracing::error!(
                        "cannot write the state database {}: {e}; the changes are kept and retried",
                        self.path.display()
                    );
                }
                // Health first: whoever is told "not stored" finds it there.
                self.set_health(Some(e.clone()));
                for a in acks {
                    let _ = a.send(Err(e.clone()));
                }
            }
        }
    }

    fn set_health(&self, error: Option<String>) {
        let h = StoreHealth {
            pending: self.pending.len(),
            error,
            history_dropped: self.pending.history_dropped,
        };
        self.health.send_if_modified(|old| {
            let changed = *old != h;
            *old = h;
            changed
        });
    }

    /// The connection, made anew (with everything the daemon knows) if the
    /// database file was removed or replaced under it.
    fn ensure_db(&mut self) -> Result<(), String> {
        let now = identity(&self.path);
        if self.conn.is_none() || now != self.identity {
            if self.conn.is_some() {
                tracing::error!(
                    "the state database {} was removed or replaced while the daemon ran; making it again",
                    self.path.display()
                );
            }
            self.conn = None;
            let dir = self.path.parent().unwrap_or(Path::new("/"));
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            // The old one may still be there under the same name (replaced).
            if now.is_some() && self.identity.is_some() && now != self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
            let conn = connect(&self.path).map_err(|e| format!("{e:#}"))?;
            self.identity = identity(&self.path);
            let p = &mut self.pending;
            for (a, v) in &self.mirror.desired {
                p.desired.entry(a.clone()).or_insert_with(|| v.clone());
            }
            for (a, g) in &self.mirror.groups {
                p.groups.entry(a.clone()).or_insert(Some(*g));
            }
            for (a, b) in &self.mirror.log_bases {
                p.log_bases.entry(a.clone()).or_insert(*b);
            }
            self.conn = Some(conn);
        }
        Ok(())
    }
}

fn commit(conn: &mut Connection, p: &Pending, history_keep: u32) -> rusqlite::Result<()> {
    // Take the write lock at once: a busy database is waited for here (up
    // to the busy timeout), not halfway through.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (agent, (d, at)) in &p.desired {
        tx.execute(
            "INSERT INTO desired(agent, desired, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(agent) DO UPDATE SET desired = ?2, updated_at = ?3",
            params![agent, d.as_str(), at],
        )?;
    }
    for (agent, g) in &p.groups {
        match g {
            Some(pgid) => tx.execute(
                "INSERT INTO process_groups(agent, pgid) VALUES (?1, ?2)
                 ON CONFLICT(agent) DO UPDATE SET pgid = ?2",
                params![agent, pgid],
            )?,
            None => tx.execute("DELETE FROM process_groups WHERE agent = ?1", params![agent])?,
        };
    }
    for (agent, base) in &p.log_bases {
        tx.execute(
            "INSERT INTO log_base(agent, base) VALUES (?1, ?2)
             ON CONFLICT(agent) DO UPDATE SET base = ?2",
            params![agent, *base as i64],
        )?;
    }
    let mut agents = std::collections::BTreeSet::new();
    for h in &p.history {
        tx.execute(
            "INSERT INTO history(agent, at, old_status, new_status, pid, exit_code, exit_signal, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                h.agent,
                h.at,
                h.old_status.as_str(),
                h.new_status.as_str(),
                h.pid,
                h.exit_code,
                h.exit_signal,
                h.reason
            ],
        )?;
        agents.insert(h.agent.as_str());
    }
    // Each agent keeps its last `history_keep` changes.
    for agent in agents {
        tx.execute(
            "DELETE FROM history WHERE agent = ?1 AND id <= (SELECT id FROM history WHERE agent = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            params![agent, history_keep],
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = Store::open(dir.path(), 1000).unwrap();
        assert!(loaded.desired.is_empty());
        drop(store.set_desired("a", Desired::Stopped));
        drop(store.set_desired("b", Desired::Running));
        let ack = store.set_desired("a", Desired::Running);
        store.set_group("a", 1234);
        store.set_group("b", 99);
        store.clear_group("b");
        store.set_log_base("a", 4096);
        store.history(HistoryRow {
            agent: "a".into(),
            at: "2026-01-01T00:00:00Z".into(),
            old_status: Status::Starting,
            new_status: Status::Running,
            pid: Some(5),
            exit_code: None,
            exit_signal: None,
            reason: None,
        });
        store.flush();
        assert_eq!(ack.blocking_recv().unwrap(), Ok(()));
        drop(store);
        let (_store, loaded) = Store::open(dir.path(), 1000).unwrap();
        assert_eq!(loaded.desired["a"], Desired::Running);
        assert_eq!(loaded.desired["b"], Desired::Running);
        assert_eq!(loaded.groups, vec![("a".to_string(), 1234)]);
        assert_eq!(loaded.log_bases["a"], 4096);
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM history WHERE agent = 'a'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
    }

    #[test]
    fn a_locked_database_keeps_the_write_pending_until_it_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 1000).unwrap();
        let other = Connection::open(dir.path().join("state.db")).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let ack = store.set_desired("a", Desired::Stopped);
        let answer = ack.blocking_recv().unwrap();
        assert!(answer.unwrap_err().contains("locked"));
        let mut health = store.health();
        assert_eq!(health.borrow().pending, 1);
        other.execute_batch("COMMIT").unwrap();
        // Retried by itself, within a few seconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while health.borrow_and_update().pending > 0 {
            assert!(std::time::Instant::now() < deadline, "still pending");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(health.borrow().error, None);
        let d: String = other
            .query_row("SELECT desired FROM desired WHERE agent = 'a'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(d, "stopped");
    }

    #[test]
    fn a_removed_database_is_made_again_with_the_known_state() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let (store, _) = Store::open(&state, 1000).unwrap();
        let ack = store.set_desired("a", Desired::Stopped);
        store.flush();
        assert_eq!(ack.blocking_recv().unwrap(), Ok(()));
        std::fs::remove_dir_all(&state).unwrap();
        let ack = store.set_desired("b", Desired::Running);
        assert_eq!(ack.blocking_recv().unwrap(), Ok(()));
        let conn = Connection::open(state.join("state.db")).unwrap();
        let loaded = load(&conn).unwrap();
        assert_eq!(loaded.desired["a"], Desired::Stopped);
        assert_eq!(loaded.desired["b"], Desired::Running);
    }

    #[test]
    fn history_is_kept_per_agent_and_read_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), 3).unwrap();
        let row = |agent: &str, i: u32| HistoryRow {
            agent: agent.into(),
            at: format!("2026-01-01T00:00:{i:02}Z"),
            old_status: Status::Running,
            new_status: Status::Backoff,
            pid: Some(i),
            exit_code: Some(i as i32),
            exit_signal: None,
            reason: None,
        };
        for i in 0..10 {
            store.history(row("a", i));
            store.history(row("b", i));
        }
        store.flush();
        let a = store.read_history("a", 100, None).unwrap();
        assert_eq!(
            a.iter().map(|e| e.pid).collect::<Vec<_>>(),
            [Some(9), Some(8), Some(7)]
        );
        assert_eq!(a[0].exit.as_ref().unwrap().code, Some(9));
        let page = store.read_history("a", 1, Some(a[0].id)).unwrap();
        assert_eq!(page[0].pid, Some(8));
        assert_eq!(store.read_history("b", 100, None).unwrap().len(), 3);
        assert!(store.read_history("c", 100, None).unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_database_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path(), 1000).unwrap();
            for i in 0..200 {
                drop(store.set_desired(&format!("agent-{i}"), Desired::Running));
            }
            store.flush();
            drop(store);
        }
        let path = dir.path().join("state.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)").unwrap();
        drop(conn);
        let mut bytes = std::fs::read(&path).unwrap();
        // Scribble over every page but the header page.
        for b in bytes.iter_mut().skip(4096) {
            *b = 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
        let e = Store::open(dir.path(), 1000).err().unwrap();
        let e = format!("{e:#}");
        assert!(e.contains("state.db"), "{e}");
    }
}
