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
use rusqlite::{Connection, params};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
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

/// Changes to [`SCHEMA`], in order: a database at `user_version` N has
/// had the first N applied (databases of the first release are at 0).
const MIGRATIONS: &[&str] = &[
    // 1: the audit trail.
    "CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        key TEXT NOT NULL,
        role TEXT NOT NULL,
        remote TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        agent TEXT,
        status INTEGER NOT NULL,
        outcome TEXT NOT NULL
    );",
    // 2: refusals (403) are a class of their own, kept apart from what
    // keys with the right did, and a repeated one is counted in one row.
    "ALTER TABLE audit ADD COLUMN refused INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE audit ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE audit ADD COLUMN last_at TEXT;
    UPDATE audit SET refused = 1 WHERE status = 403;
    CREATE INDEX audit_class ON audit(refused, id);
    CREATE INDEX audit_refusal ON audit(key, path) WHERE refused = 1;",
    // 3: health changes (the status stays the same on such a row).
    "ALTER TABLE history ADD COLUMN health TEXT;",
    // 4: what an edit of the config changed (key names, never values).
    "ALTER TABLE audit ADD COLUMN detail TEXT;",
];

/// Audit entries kept in memory while the database cannot be written.
const PENDING_AUDIT: usize = 10_000;

/// History rows kept in memory while the database cannot be written.
const PENDING_HISTORY: usize = 10_000;
/// Audit entries waiting for the writer at most: a request beyond waits
/// for a place (the writer takes a batch in each turn, whether the
/// database can be written or not, so at most one write attempt).
const QUEUED_AUDIT: usize = 4096;
/// History rows waiting for the writer at most. The supervisor cannot wait
/// (it would hold up every agent): a row beyond is counted as dropped,
/// like one beyond the pending backlog.
const QUEUED_HISTORY: usize = 10_000;
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
    /// The health after the change, on a change of health.
    pub health: Option<crate::wire::HealthState>,
}

/// One entry of the audit trail, as kept in the audit table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub at: String,
    pub key: String,
    pub role: crate::wire::Role,
    pub remote: String,
    pub method: String,
    pub path: String,
    pub agent: Option<String>,
    pub status: u16,
    pub outcome: String,
    /// What the request changed, where it says more than its path (the
    /// keys of an agent's table an edit changed; never a value).
    pub detail: Option<String>,
}

impl AuditRow {
    /// A request its key's role (or origin) refused: such entries are
    /// kept apart, so that however many a key sends they never push out
    /// what keys with the right did.
    pub fn refused(&self) -> bool {
        self.status == 403
    }
}

/// A history row as read back, with the id that pages on.
#[derive(Debug, Clone)]
pub struct StoredHistory {
    pub id: i64,
    pub row: HistoryRow,
}

/// An audit entry as read back: its id, and how often a refusal repeated.
#[derive(Debug, Clone)]
pub struct StoredAudit {
    pub id: i64,
    pub row: AuditRow,
    /// Times this entry happened (a repeated refusal is one entry).
    pub count: u64,
    /// When it last happened, if more than once.
    pub last_at: Option<String>,
}

/// How much of the past the database keeps.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    /// Status changes per agent.
    pub history: u32,
    /// Audit entries of what keys did; as many again of refusals.
    pub audit: u32,
}

/// Whether a write was committed: `Err` carries why not (it stays pending
/// and is retried).
pub type Ack = oneshot::Receiver<Result<(), StoreError>>;

/// Why the state database could not be opened or written. Cloneable (one
/// failed commit answers every write it held), so the sources are shared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The directory of a database that was removed could not be made again.
    #[error("cannot create {}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The database could not be opened or prepared (pragmas, schema).
    #[error("cannot open the state database {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// A migration step failed.
    #[error("cannot update the state database {}", path.display())]
    Migrate {
        path: PathBuf,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// Written by a later release: this one cannot know what it means.
    #[error(
        "the state database {} was written by a newer agentsd (schema {found}; this one knows up to {known}): run that release, or move the file away",
        path.display()
    )]
    Newer { path: PathBuf, found: i64, known: i64 },
    /// A commit failed (a locked database, a full disk, ...).
    #[error("cannot write the state database")]
    Write(#[source] Arc<rusqlite::Error>),
    /// The database is gone and could not be made again.
    #[error("the state database is not open")]
    NotOpen,
    /// The writer did not answer within its bound.
    #[error("the state database did not answer in time")]
    NoAnswer,
    /// The integrity check failed at open.
    #[error(
        "the state database {} is corrupt ({found}); move it away to start with an empty state (what operators asked for will be forgotten)",
        path.display()
    )]
    Corrupt { path: PathBuf, found: String },
    /// A read (the state at open, a page of history or audit) failed.
    #[error("cannot read the state database {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// The writer thread could not be started.
    #[error("cannot start the store thread")]
    Thread(#[source] Arc<std::io::Error>),
}

impl StoreError {
    /// The message with every cause after it (`a: b: c`), as health and
    /// logs say it.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }
}

/// What the store has not managed to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// Writes waiting to be stored.
    pub pending: usize,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// History rows given up on (the backlog was full).
    pub history_dropped: u64,
    /// Audit entries given up on (the backlog was full).
    pub audit_dropped: u64,
}

enum Write {
    SetDesired(String, Desired, String, oneshot::Sender<Result<(), StoreError>>),
    ForgetDesired(String),
    SetGroup(String, Option<i32>),
    SetLogBase(String, u64),
    History(HistoryRow),
    /// With its place in the queue, given back when the writer takes it.
    Audit(AuditRow, tokio::sync::OwnedSemaphorePermit),
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

/// The rows on their way to the writer, bounded (the operations keyed by
/// agent are few: one per change of an agent, and they coalesce).
struct Queued {
    audit: std::sync::Arc<tokio::sync::Semaphore>,
    history: std::sync::atomic::AtomicUsize,
    history_dropped: std::sync::atomic::AtomicU64,
}

impl Default for Queued {
    fn default() -> Queued {
        Queued {
            audit: std::sync::Arc::new(tokio::sync::Semaphore::new(QUEUED_AUDIT)),
            history: Default::default(),
            history_dropped: Default::default(),
        }
    }
}

/// A cheap, cloneable sender of store operations.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Write>,
    queued: std::sync::Arc<Queued>,
    health: watch::Receiver<StoreHealth>,
    path: std::sync::Arc<Path>,
    /// Each agent's log base, as its hub last set it: the one place the
    /// daemon keeps it (a removed agent that comes back goes on from it);
    /// the writer thread stores it.
    log_bases: Arc<std::sync::Mutex<HashMap<String, u64>>>,
}

impl Store {
    /// Opens (or creates) `dir/state.db` and starts the writer thread. A
    /// database that fails its integrity check is an error: the daemon
    /// must not run on a state it cannot trust.
    /// What is kept of the past is bounded by `keep`.
    pub fn open(dir: &Path, keep: Keep) -> Result<(Store, Loaded), StoreError> {
        let path = dir.join("state.db");
        let conn = connect(&path)?;
        let read = |e: rusqlite::Error| StoreError::Read {
            path: path.clone(),
            source: Arc::new(e),
        };
        let check: String = conn
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(read)?;
        if check != "ok" {
            return Err(StoreError::Corrupt { path, found: check });
        }
        let loaded = load(&conn).map_err(read)?;
        let identity = identity(&path);
        let (tx, rx) = mpsc::channel();
        let (health_tx, health) = watch::channel(StoreHealth::default());
        let shared: std::sync::Arc<Path> = path.as_path().into();
        let queued = std::sync::Arc::new(Queued::default());
        let mut writer = Writer {
            queued: queued.clone(),
            conn: Some(conn),
            path,
            keep,
            identity,
            mirror: Mirror::from(&loaded),
            pending: Pending::default(),
            health: health_tx,
        };
        // It ends once every `Store` is dropped, after what was queued.
        std::thread::Builder::new()
            .name("agentsd-store".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Thread(Arc::new(e)))?;
        Ok((
            Store {
                tx,
                queued,
                health,
                path: shared,
                log_bases: Arc::new(std::sync::Mutex::new(loaded.log_bases.clone())),
            },
            loaded,
        ))
    }

    fn send(&self, op: Write) {
        // The writer only goes away at shutdown, after the supervisor.
        let _ = self.tx.send(op);
    }

    /// Stores what an operator asked for; the answer says once it is.
    pub fn set_desired(&self, agent: &str, desired: Desired) -> Ack {
        let (tx, rx) = oneshot::channel();
        self.send(Write::SetDesired(
            agent.to_string(),
            desired,
            crate::wire::rfc3339(std::time::SystemTime::now()),
            tx,
        ));
        rx
    }

    /// Forgets what an operator asked of an agent (it left the config): if
    /// it comes back, it follows `autostart`. Its history is kept.
    pub fn forget_desired(&self, agent: &str) {
        self.send(Write::ForgetDesired(agent.to_string()));
    }

    pub fn set_group(&self, agent: &str, pgid: i32) {
        self.send(Write::SetGroup(agent.to_string(), Some(pgid)));
    }

    pub fn clear_group(&self, agent: &str) {
        self.send(Write::SetGroup(agent.to_string(), None));
    }

    pub fn set_log_base(&self, agent: &str, base: u64) {
        self.bases().insert(agent.to_string(), base);
        self.send(Write::SetLogBase(agent.to_string(), base));
    }

    /// Where `agent`'s log goes on: the base its hub last set (also in an
    /// earlier run of the daemon), 0 for a log never rotated.
    pub fn log_base(&self, agent: &str) -> u64 {
        self.bases().get(agent).copied().unwrap_or(0)
    }

    fn bases(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        // Never held across anything that can panic: a poisoned lock's map
        // is whole.
        self.log_bases.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn history(&self, row: HistoryRow) {
        use std::sync::atomic::Ordering;
        if self.queued.history.fetch_add(1, Ordering::SeqCst) >= QUEUED_HISTORY {
            self.queued.history.fetch_sub(1, Ordering::SeqCst);
            self.queued.history_dropped.fetch_add(1, Ordering::SeqCst);
            return;
        }
        self.send(Write::History(row));
    }

    /// Queues an audit entry, once there is a place for it.
    pub async fn audit(&self, row: AuditRow) {
        // The semaphore is never closed.
        let Ok(place) = self.queued.audit.clone().acquire_owned().await else {
            return;
        };
        self.send(Write::Audit(row, place));
    }

    /// A read-only connection of its own, beside the writer.
    fn reader(&self) -> Result<Connection, StoreError> {
        let open = |e: rusqlite::Error| StoreError::Open {
            path: self.path.to_path_buf(),
            source: Arc::new(e),
        };
        let conn = rusqlite::Connection::open_with_flags(
            &*self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(open)?;
        conn.busy_timeout(BUSY_WAIT).map_err(open)?;
        Ok(conn)
    }

    fn read_error(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |e| StoreError::Read {
            path: self.path.to_path_buf(),
            source: Arc::new(e),
        }
    }

    /// The audit trail, newest first: at most `limit` entries, older than
    /// entry `before` when given. Blocking: call it off the async workers.
    pub fn read_audit(&self, limit: u32, before: Option<i64>) -> Result<Vec<StoredAudit>, StoreError> {
        let conn = self.reader()?;
        let read = || -> rusqlite::Result<Vec<StoredAudit>> {
            let mut st = conn.prepare(
                "SELECT id, at, key, role, remote, method, path, agent, status, outcome, count, last_at, detail
                 FROM audit WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![before.unwrap_or(i64::MAX), limit], |r| {
                let role: String = r.get(3)?;
                Ok(StoredAudit {
                    id: r.get(0)?,
                    row: AuditRow {
                        at: r.get(1)?,
                        key: r.get(2)?,
                        role: role.parse().map_err(|e: String| {
                            rusqlite::Error::FromSqlConversionFailure(
                                3,
                                rusqlite::types::Type::Text,
                                e.into(),
                            )
                        })?,
                        remote: r.get(4)?,
                        method: r.get(5)?,
                        path: r.get(6)?,
                        agent: r.get(7)?,
                        status: r.get(8)?,
                        outcome: r.get(9)?,
                        detail: r.get(12)?,
                    },
                    count: r.get::<_, i64>(10)?.max(1) as u64,
                    last_at: r.get(11)?,
                })
            })?;
            rows.collect()
        };
        read().map_err(self.read_error())
    }

    /// An agent's status changes, newest first: at most `limit`, older than
    /// row `before` when given. Blocking (a read of its own, beside the
    /// writer): call it off the async workers.
    pub fn read_history(
        &self,
        agent: &str,
        limit: u32,
        before: Option<i64>,
    ) -> Result<Vec<StoredHistory>, StoreError> {
        let conn = self.reader()?;
        let status = |i: usize, s: String| -> rusqlite::Result<Status> {
            s.parse().map_err(|e: crate::wire::UnknownName| {
                rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
            })
        };
        let read = || -> rusqlite::Result<Vec<StoredHistory>> {
            let mut st = conn.prepare(
                "SELECT id, at, old_status, new_status, pid, exit_code, exit_signal, reason, health FROM history
                 WHERE agent = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = st.query_map(params![agent, before.unwrap_or(i64::MAX), limit], |r| {
                Ok(StoredHistory {
                    id: r.get(0)?,
                    row: HistoryRow {
                        agent: agent.to_string(),
                        at: r.get(1)?,
                        old_status: status(2, r.get(2)?)?,
                        new_status: status(3, r.get(3)?)?,
                        pid: r.get(4)?,
                        exit_code: r.get(5)?,
                        exit_signal: r.get(6)?,
                        reason: r.get(7)?,
                        health: r.get::<_, Option<String>>(8)?.and_then(|h| {
                            crate::wire::HealthState::ALL
                                .into_iter()
                                .find(|x| x.as_str() == h)
                        }),
                    },
                })
            })?;
            rows.collect()
        };
        read().map_err(self.read_error())
    }

    /// What is not stored yet, now and on every change.
    pub fn health(&self) -> watch::Receiver<StoreHealth> {
        self.health.clone()
    }

    /// Waits until everything sent before has been tried once (committed,
    /// or kept pending).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Write::Flush(tx));
        let _ = rx.recv();
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let open = |e: rusqlite::Error| StoreError::Open {
        path: path.to_path_buf(),
        source: Arc::new(e),
    };
    let mut conn = Connection::open(path).map_err(open)?;
    conn.busy_timeout(BUSY_WAIT).map_err(open)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
        // Written far more than read: a small page cache (SQLite's default
        // is 2 MiB).
        .and_then(|_| conn.pragma_update(None, "cache_size", "-256"))
        .and_then(|_| conn.execute_batch(SCHEMA))
        .map_err(open)?;
    migrate(&mut conn, path)?;
    Ok(conn)
}

/// Whether this release can use the state database of `state_dir` (an
/// in-place upgrade's check): one written by a later release is refused.
/// Read only: the running daemon's database is not touched.
pub fn check_schema(state_dir: &Path) -> Result<(), StoreError> {
    let path = state_dir.join("state.db");
    if !path.exists() {
        return Ok(());
    }
    let open = |e: rusqlite::Error| StoreError::Open {
        path: path.clone(),
        source: Arc::new(e),
    };
    let conn =
        Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(open)?;
    conn.busy_timeout(BUSY_WAIT).map_err(open)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(open)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Newer {
            path,
            found: version,
            known,
        });
    }
    Ok(())
}

/// Brings a database written by an earlier release up to this one's
/// schema, one step per transaction. One written by a later release is
/// refused: this release cannot know what it means.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let failed = |e: rusqlite::Error| StoreError::Migrate {
        path: path.to_path_buf(),
        source: Arc::new(e),
    };
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(failed)?;
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Newer {
            path: path.to_path_buf(),
            found: version,
            known,
        });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(failed)?;
        tx.execute_batch(step).map_err(failed)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(failed)?;
        tx.commit().map_err(failed)?;
    }
    Ok(())
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
        let Ok(d) = d.parse::<Desired>() else { continue };
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
    /// `None`: delete the agent's row.
    desired: BTreeMap<String, Option<(Desired, String)>>,
    groups: BTreeMap<String, Option<i32>>,
    log_bases: BTreeMap<String, u64>,
    history: VecDeque<HistoryRow>,
    history_dropped: u64,
    audit: VecDeque<AuditRow>,
    audit_dropped: u64,
    acks: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

impl Pending {
    fn len(&self) -> usize {
        self.desired.len() + self.groups.len() + self.log_bases.len() + self.history.len() + self.audit.len()
    }
}

struct Writer {
    queued: std::sync::Arc<Queued>,
    /// `None` after the database file was found removed and could not be
    /// made again.
    conn: Option<Connection>,
    path: PathBuf,
    identity: Option<(u64, u64)>,
    mirror: Mirror,
    pending: Pending,
    health: watch::Sender<StoreHealth>,
    keep: Keep,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Write>) {
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
            let dropped = (self.queued.history_dropped).swap(0, std::sync::atomic::Ordering::SeqCst);
            self.pending.history_dropped += dropped;
            self.write();
            for f in flushes {
                let _ = f.send(());
            }
        }
    }

    fn queue(&mut self, op: Write, flushes: &mut Vec<mpsc::Sender<()>>) {
        let p = &mut self.pending;
        match op {
            Write::SetDesired(agent, d, at, ack) => {
                self.mirror.desired.insert(agent.clone(), (d, at.clone()));
                p.desired.insert(agent, Some((d, at)));
                p.acks.push(ack);
            }
            Write::ForgetDesired(agent) => {
                self.mirror.desired.remove(&agent);
                p.desired.insert(agent, None);
            }
            Write::SetGroup(agent, g) => {
                match g {
                    Some(g) => self.mirror.groups.insert(agent.clone(), g),
                    None => self.mirror.groups.remove(&agent),
                };
                p.groups.insert(agent, g);
            }
            Write::SetLogBase(agent, base) => {
                self.mirror.log_bases.insert(agent.clone(), base);
                p.log_bases.insert(agent, base);
            }
            Write::History(row) => {
                self.queued
                    .history
                    .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                if p.history.len() >= PENDING_HISTORY {
                    p.history.pop_front();
                    p.history_dropped += 1;
                }
                p.history.push_back(row);
            }
            Write::Audit(row, place) => {
                drop(place);
                if p.audit.len() >= PENDING_AUDIT {
                    // A refusal goes first: refusals never push out what
                    // keys with the right did.
                    match p.audit.iter().position(AuditRow::refused) {
                        Some(i) => drop(p.audit.remove(i)),
                        None if row.refused() => {
                            p.audit_dropped += 1;
                            return;
                        }
                        None => drop(p.audit.pop_front()),
                    }
                    p.audit_dropped += 1;
                }
                p.audit.push_back(row);
            }
            Write::Flush(done) => flushes.push(done),
        }
    }

    /// Tries to commit everything pending in one transaction.
    fn write(&mut self) {
        if self.pending.len() == 0 {
            return;
        }
        let result = self.ensure_db().and_then(|()| match self.conn.as_mut() {
            Some(conn) => commit(conn, &self.pending, self.keep).map_err(|e| StoreError::Write(Arc::new(e))),
            None => Err(StoreError::NotOpen),
        });
        let acks = std::mem::take(&mut self.pending.acks);
        let was_failing = self.health.borrow().error.is_some();
        match result {
            Ok(()) => {
                self.pending = Pending {
                    history_dropped: self.pending.history_dropped,
                    audit_dropped: self.pending.audit_dropped,
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
                        "{} ({}); the changes are kept and retried",
                        e.chain(),
                        self.path.display()
                    );
                }
                // Health first: whoever is told "not stored" finds it there.
                self.set_health(Some(e.chain()));
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
            audit_dropped: self.pending.audit_dropped,
        };
        self.health.send_if_modified(|old| {
            let changed = *old != h;
            *old = h;
            changed
        });
    }

    /// The connection, made anew (with everything the daemon knows) if the
    /// database file was removed or replaced under it.
    fn ensure_db(&mut self) -> Result<(), StoreError> {
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
                    .map_err(|e| StoreError::CreateDir {
                        dir: dir.to_path_buf(),
                        source: Arc::new(e),
                    })?;
            }
            // The old one may still be there under the same name (replaced).
            if now.is_some() && self.identity.is_some() && now != self.identity {
                let _ = std::fs::remove_file(&self.path);
            }
            let conn = connect(&self.path)?;
            self.identity = identity(&self.path);
            let p = &mut self.pending;
            for (a, v) in &self.mirror.desired {
                p.desired.entry(a.clone()).or_insert_with(|| Some(v.clone()));
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

fn commit(conn: &mut Connection, p: &Pending, keep: Keep) -> rusqlite::Result<()> {
    // Take the write lock at once: a busy database is waited for here (up
    // to the busy timeout), not halfway through.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for (agent, d) in &p.desired {
        match d {
            Some((d, at)) => tx.execute(
                "INSERT INTO desired(agent, desired, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(agent) DO UPDATE SET desired = ?2, updated_at = ?3",
                params![agent, d.as_str(), at],
            )?,
            None => tx.execute("DELETE FROM desired WHERE agent = ?1", params![agent])?,
        };
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
            "INSERT INTO history(agent, at, old_status, new_status, pid, exit_code, exit_signal, reason, health)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                h.agent,
                h.at,
                h.old_status.as_str(),
                h.new_status.as_str(),
                h.pid,
                h.exit_code,
                h.exit_signal,
                h.reason,
                h.health.map(|x| x.as_str())
            ],
        )?;
        agents.insert(h.agent.as_str());
    }
    // Each agent keeps its last `history_keep` changes.
    for agent in agents {
        tx.execute(
            "DELETE FROM history WHERE agent = ?1 AND id <= (SELECT id FROM history WHERE agent = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            params![agent, keep.history],
        )?;
    }
    let mut added = [false; 2];
    for a in &p.audit {
        let refused = a.refused();
        // The same refusal again (key, method, path, answer): counted in
        // the entry it already has.
        if refused
            && tx.execute(
                "UPDATE audit SET count = count + 1, last_at = ?1, remote = ?2
                 WHERE id = (SELECT id FROM audit WHERE refused = 1 AND key = ?3 AND path = ?4
                     AND method = ?5 AND status = ?6 AND outcome = ?7 AND role = ?8
                     ORDER BY id DESC LIMIT 1)",
                params![
                    a.at,
                    a.remote,
                    a.key,
                    a.path,
                    a.method,
                    a.status,
                    a.outcome,
                    a.role.as_str()
                ],
            )? > 0
        {
            continue;
        }
        tx.execute(
            "INSERT INTO audit(at, key, role, remote, method, path, agent, status, outcome, refused, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                a.at,
                a.key,
                a.role.as_str(),
                a.remote,
                a.method,
                a.path,
                a.agent,
                a.status,
                a.outcome,
                refused,
                a.detail
            ],
        )?;
        added[usize::from(refused)] = true;
    }
    // Each class keeps its newest `keep.audit` entries.
    for (class, added) in added.into_iter().enumerate() {
        if added {
            tx.execute(
                "DELETE FROM audit WHERE refused = ?1 AND id <= (SELECT id FROM audit WHERE refused = ?1
                     ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![class as i64, keep.audit],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Keep = Keep {
        history: 1000,
        audit: 1000,
    };

    fn audit_row(i: u32) -> AuditRow {
        AuditRow {
            at: format!("2026-01-01T00:00:{i:02}Z"),
            key: "ops".into(),
            role: crate::wire::Role::Operate,
            remote: "127.0.0.1".into(),
            method: "POST".into(),
            path: format!("/agents/a{i}/stop"),
            agent: Some(format!("a{i}")),
            status: 200,
            outcome: "ok".into(),
            detail: None,
        }
    }

    /// The schema of the first release (no `user_version`, no audit).
    const FIRST_RELEASE: &str = "
        CREATE TABLE desired (agent TEXT PRIMARY KEY, desired TEXT NOT NULL, updated_at TEXT NOT NULL);
        CREATE TABLE process_groups (agent TEXT PRIMARY KEY, pgid INTEGER NOT NULL);
        CREATE TABLE log_base (agent TEXT PRIMARY KEY, base INTEGER NOT NULL);
        CREATE TABLE history (id INTEGER PRIMARY KEY AUTOINCREMENT, agent TEXT NOT NULL, at TEXT NOT NULL,
            old_status TEXT NOT NULL, new_status TEXT NOT NULL, pid INTEGER, exit_code INTEGER,
            exit_signal TEXT, reason TEXT);
        CREATE INDEX history_agent ON history(agent, id);
        INSERT INTO desired VALUES ('bot', 'stopped', '2026-01-01T00:00:00Z');
        INSERT INTO log_base VALUES ('bot', 4096);
        INSERT INTO history(agent, at, old_status, new_status, pid) VALUES ('bot', '2026-01-01T00:00:00Z', 'running', 'stopped', 42);
    ";

    #[tokio::test]
    async fn a_database_of_the_first_release_is_migrated_and_keeps_its_state() {
        let dir = tempfile::tempdir().unwrap();
        Connection::open(dir.path().join("state.db"))
            .unwrap()
            .execute_batch(FIRST_RELEASE)
            .unwrap();
        let (store, loaded) = Store::open(dir.path(), KEEP).unwrap();
        assert_eq!(loaded.desired["bot"], Desired::Stopped);
        assert_eq!(loaded.log_bases["bot"], 4096);
        assert_eq!(store.read_history("bot", 10, None).unwrap()[0].row.pid, Some(42));
        store.audit(audit_row(1)).await;
        store.flush();
        assert_eq!(
            store.read_audit(10, None).unwrap()[0].row.agent.as_deref(),
            Some("a1")
        );
        drop(store);
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v, MIGRATIONS.len() as i64);
        drop(conn);
        // Opening again applies nothing twice.
        let (store, _) = Store::open(dir.path(), KEEP).unwrap();
        assert_eq!(store.read_audit(10, None).unwrap().len(), 1);
    }

    /// A store whose writer is the test: what waits in the queue is seen.
    fn unwritten() -> (Store, mpsc::Receiver<Write>) {
        let (tx, rx) = mpsc::channel();
        let store = Store {
            tx,
            queued: Default::default(),
            health: watch::channel(StoreHealth::default()).1,
            path: Path::new("/nonexistent").into(),
            log_bases: Default::default(),
        };
        (store, rx)
    }

    fn history_row(i: usize) -> HistoryRow {
        HistoryRow {
            agent: format!("a{i}"),
            at: "2026-01-01T00:00:00Z".into(),
            old_status: Status::Starting,
            new_status: Status::Running,
            pid: None,
            exit_code: None,
            exit_signal: None,
            reason: None,
            health: None,
        }
    }

    #[tokio::test]
    async fn the_queue_to_the_writer_is_bounded() {
        use std::sync::atomic::Ordering;
        let (store, rx) = unwritten();
        // History: the supervisor never waits; beyond the bound, counted.
        for i in 0..QUEUED_HISTORY + 5 {
            store.history(history_row(i));
        }
        assert_eq!(
            rx.try_iter().filter(|op| matches!(op, Write::History(_))).count(),
            QUEUED_HISTORY
        );
        assert_eq!(store.queued.history_dropped.load(Ordering::SeqCst), 5);
        // Audit: a request beyond the bound waits for a place.
        for i in 0..QUEUED_AUDIT {
            store.audit(audit_row((i % 60) as u32)).await;
        }
        let waiting = tokio::spawn({
            let store = store.clone();
            async move { store.audit(audit_row(1)).await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "queued past the bound");
        // The writer takes one: the waiting one gets its place.
        let taken = rx.recv().unwrap();
        drop(taken);
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rx.try_iter().count(), QUEUED_AUDIT);
    }

    #[tokio::test]
    async fn a_database_of_schema_1_gets_the_refusal_class_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        conn.execute_batch(FIRST_RELEASE).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 1;
            INSERT INTO audit(at, key, role, remote, method, path, agent, status, outcome)
                VALUES ('2026-01-01T00:00:00Z', 'wall', 'read', '127.0.0.1', 'POST', '/agents/bot/stop', 'bot', 403, 'forbidden');
            INSERT INTO audit(at, key, role, remote, method, path, agent, status, outcome)
                VALUES ('2026-01-01T00:00:01Z', 'ops', 'operate', '127.0.0.1', 'POST', '/agents/bot/stop', 'bot', 200, 'ok');",
        )
        .unwrap();
        drop(conn);
        let (store, _) = Store::open(dir.path(), KEEP).unwrap();
        let all = store.read_audit(10, None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[1].count, all[1].last_at.as_deref()), (1, None));
        // The old refusal is one of the class: the same again is counted in it.
        let mut again = audit_row(9);
        (again.key, again.role, again.path, again.status, again.outcome) = (
            "wall".into(),
            crate::wire::Role::Read,
            "/agents/bot/stop".into(),
            403,
            "forbidden".into(),
        );
        store.audit(again).await;
        store.flush();
        let all = store.read_audit(10, None).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].count, 2);
        assert_eq!(all[1].last_at.as_deref(), Some("2026-01-01T00:00:09Z"));
    }

    #[tokio::test]
    async fn refusals_are_counted_and_never_push_out_what_keys_did() {
        let dir = tempfile::tempdir().unwrap();
        let keep = Keep {
            history: 10,
            audit: 5,
        };
        let (store, _) = Store::open(dir.path(), keep).unwrap();
        for i in 0..3 {
            store.audit(audit_row(i)).await;
        }
        let refusal = |path: String| AuditRow {
            key: "wall".into(),
            role: crate::wire::Role::Read,
            path,
            status: 403,
            outcome: "forbidden".into(),
            ..audit_row(50)
        };
        for i in 0..100 {
            store.audit(refusal("/agents/a1/stop".into())).await;
            if i % 30 == 0 {
                store.flush();
            }
        }
        store.flush();
        let all = store.read_audit(100, None).unwrap();
        assert_eq!(all.len(), 4, "{all:#?}");
        assert_eq!((all[0].count, all[0].row.status), (100, 403));
        // Refusals of many paths push out only older refusals.
        for i in 0..50 {
            store.audit(refusal(format!("/agents/x{i}/stop"))).await;
        }
        store.flush();
        let all = store.read_audit(100, None).unwrap();
        let (refused, did): (Vec<_>, Vec<_>) = all.iter().partition(|e| e.row.status == 403);
        assert_eq!(refused.len(), 5);
        assert_eq!(refused[0].row.path, "/agents/x49/stop");
        assert_eq!(
            did.iter().map(|e| e.row.path.as_str()).collect::<Vec<_>>(),
            ["/agents/a2/stop", "/agents/a1/stop", "/agents/a0/stop"]
        );
    }

    #[test]
    fn a_database_of_a_newer_release_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("state.db")).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        let e = Store::open(dir.path(), KEEP).err().unwrap();
        assert!(matches!(e, StoreError::Newer { found: 99, .. }), "{e:?}");
    }

    #[tokio::test]
    async fn the_audit_keeps_its_newest_entries_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(
            dir.path(),
            Keep {
                history: 10,
                audit: 5,
            },
        )
        .unwrap();
        for i in 0..12 {
            store.audit(audit_row(i)).await;
            if i % 4 == 0 {
                store.flush();
            }
        }
        store.flush();
        let all = store.read_audit(100, None).unwrap();
        assert_eq!(
            all.iter().map(|e| e.row.path.as_str()).collect::<Vec<_>>(),
            [
                "/agents/a11/stop",
                "/agents/a10/stop",
                "/agents/a9/stop",
                "/agents/a8/stop",
                "/agents/a7/stop"
            ]
        );
        assert_eq!(all[0].row.role, crate::wire::Role::Operate);
        let page = store.read_audit(2, Some(all[1].id)).unwrap();
        assert_eq!(page.len(), 2);
        assert_eq!(page[0].row.path, "/agents/a9/stop");
    }

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = Store::open(dir.path(), KEEP).unwrap();
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
            health: None,
        });
        store.flush();
        assert!(ack.blocking_recv().unwrap().is_ok());
        drop(store);
        let (_store, loaded) = Store::open(dir.path(), KEEP).unwrap();
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
    fn a_forgotten_choice_is_gone_after_reopen_and_history_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), KEEP).unwrap();
        drop(store.set_desired("a", Desired::Stopped));
        drop(store.set_desired("b", Desired::Stopped));
        store.history(HistoryRow {
            agent: "a".into(),
            at: "2026-01-01T00:00:00Z".into(),
            old_status: Status::Running,
            new_status: Status::Stopped,
            pid: None,
            exit_code: None,
            exit_signal: None,
            reason: None,
            health: None,
        });
        store.flush();
        store.forget_desired("a");
        store.flush();
        drop(store);
        let (store, loaded) = Store::open(dir.path(), KEEP).unwrap();
        assert_eq!(loaded.desired.get("a"), None);
        assert_eq!(loaded.desired["b"], Desired::Stopped);
        assert_eq!(store.read_history("a", 10, None).unwrap().len(), 1);
    }

    #[test]
    fn a_locked_database_keeps_the_write_pending_until_it_is_free() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), KEEP).unwrap();
        let other = Connection::open(dir.path().join("state.db")).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        let ack = store.set_desired("a", Desired::Stopped);
        let answer = ack.blocking_recv().unwrap();
        match answer.unwrap_err() {
            StoreError::Write(e) => {
                assert_eq!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy))
            }
            e => panic!("not a failed write: {e:?}"),
        }
        let mut health = store.health();
        assert_eq!(health.borrow().pending, 1);
        other.execute_batch("COMMIT").unwrap();
        // Retried by itself, within a few seconds: woken by the change.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(15), health.wait_for(|h| h.pending == 0)).await
        })
        .expect("still pending after 15 s")
        .unwrap();
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
        let (store, _) = Store::open(&state, KEEP).unwrap();
        let ack = store.set_desired("a", Desired::Stopped);
        store.flush();
        assert!(ack.blocking_recv().unwrap().is_ok());
        std::fs::remove_dir_all(&state).unwrap();
        let ack = store.set_desired("b", Desired::Running);
        assert!(ack.blocking_recv().unwrap().is_ok());
        let conn = Connection::open(state.join("state.db")).unwrap();
        let loaded = load(&conn).unwrap();
        assert_eq!(loaded.desired["a"], Desired::Stopped);
        assert_eq!(loaded.desired["b"], Desired::Running);
    }

    #[test]
    fn history_is_kept_per_agent_and_read_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(
            dir.path(),
            Keep {
                history: 3,
                audit: 1000,
            },
        )
        .unwrap();
        let row = |agent: &str, i: u32| HistoryRow {
            agent: agent.into(),
            at: format!("2026-01-01T00:00:{i:02}Z"),
            old_status: Status::Running,
            new_status: Status::Backoff,
            pid: Some(i),
            exit_code: Some(i as i32),
            exit_signal: None,
            reason: None,
            health: (i == 9).then_some(crate::wire::HealthState::Unhealthy),
        };
        for i in 0..10 {
            store.history(row("a", i));
            store.history(row("b", i));
        }
        store.flush();
        let a = store.read_history("a", 100, None).unwrap();
        assert_eq!(
            a.iter().map(|e| e.row.pid).collect::<Vec<_>>(),
            [Some(9), Some(8), Some(7)]
        );
        assert_eq!(a[0].row.health, Some(crate::wire::HealthState::Unhealthy));
        assert_eq!(a[1].row.health, None);
        assert_eq!(a[0].row.exit_code, Some(9));
        let page = store.read_history("a", 1, Some(a[0].id)).unwrap();
        assert_eq!(page[0].row.pid, Some(8));
        assert_eq!(store.read_history("b", 100, None).unwrap().len(), 3);
        assert!(store.read_history("c", 100, None).unwrap().is_empty());
    }

    #[test]
    fn a_corrupt_database_is_refused_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _) = Store::open(dir.path(), KEEP).unwrap();
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
        match Store::open(dir.path(), KEEP).err().unwrap() {
            StoreError::Corrupt { path, .. } => assert_eq!(path, dir.path().join("state.db")),
            // Scribbled pages can also fail the check itself.
            StoreError::Read { path, .. }
            | StoreError::Open { path, .. }
            | StoreError::Migrate { path, .. } => {
                assert_eq!(path, dir.path().join("state.db"))
            }
            e => panic!("not refused as corrupt: {e:?}"),
        }
    }
}
