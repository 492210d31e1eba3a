//! The SQLite state under `state_dir`: what the operator asked for, the
//! process groups that may need cleaning up after a crash, log offsets, and a
//! history of status changes and exits.
//!
//! One thread owns the connection; everything else sends it operations, so
//! no blocking database call ever runs on an async worker. Operations that
//! arrive together are committed in one transaction.

use crate::wire::{Desired, Status};
use anyhow::Context;
use rusqlite::{Connection, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;

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

/// Rows of history kept; older ones are pruned.
const HISTORY_KEEP: i64 = 100_000;

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

enum Op {
    SetDesired(String, Desired, String),
    SetGroup(String, i32),
    ClearGroup(String),
    SetLogBase(String, u64),
    History(HistoryRow),
    Flush(mpsc::Sender<()>),
}

/// What was stored by earlier runs of the daemon.
#[derive(Debug, Default)]
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
}

/// Owns the writer thread; `close` waits for every queued operation.
pub struct StoreThread {
    handle: JoinHandle<()>,
}

impl Store {
    /// Opens (or creates) `dir/state.db` and starts the writer thread.
    pub fn open(dir: &Path) -> anyhow::Result<(Store, StoreThread, Loaded)> {
        let path = dir.join("state.db");
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open the state database {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"))
            .and_then(|_| conn.execute_batch(SCHEMA))
            .with_context(|| format!("cannot prepare the state database {}", path.display()))?;
        let loaded =
            load(&conn).with_context(|| format!("cannot read the state database {}", path.display()))?;
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("agentsd-store".into())
            .spawn(move || writer(conn, rx))
            .context("cannot start the store thread")?;
        Ok((Store { tx }, StoreThread { handle }, loaded))
    }

    fn send(&self, op: Op) {
        // The writer only goes away at shutdown, after the supervisor.
        let _ = self.tx.send(op);
    }

    pub fn set_desired(&self, agent: &str, desired: Desired) {
        self.send(Op::SetDesired(
            agent.to_string(),
            desired,
            crate::wire::rfc3339(std::time::SystemTime::now()),
        ));
    }

    pub fn set_group(&self, agent: &str, pgid: i32) {
        self.send(Op::SetGroup(agent.to_string(), pgid));
    }

    pub fn clear_group(&self, agent: &str) {
        self.send(Op::ClearGroup(agent.to_string()));
    }

    pub fn set_log_base(&self, agent: &str, base: u64) {
        self.send(Op::SetLogBase(agent.to_string(), base));
    }

    pub fn history(&self, row: HistoryRow) {
        self.send(Op::History(row));
    }

    /// Waits until everything sent before has been committed (or failed).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Op::Flush(tx));
        let _ = rx.recv();
    }
}

impl StoreThread {
    /// Commits what is queued and ends the writer. Every `Store` clone must
    /// be dropped first.
    pub fn close(self) {
        let _ = self.handle.join();
    }
}

fn load(conn: &Connection) -> rusqlite::Result<Loaded> {
    let mut loaded = Loaded::default();
    let mut st = conn.prepare("SELECT agent, desired FROM desired")?;
    for row in st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))? {
        let (agent, d) = row?;
        if let Some(d) = Desired::parse(&d) {
            loaded.desired.insert(agent, d);
        }
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

fn writer(mut conn: Connection, rx: mpsc::Receiver<Op>) {
    let mut inserted: u64 = 0;
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut flushes = Vec::new();
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for op in batch {
                match op {
                    Op::SetDesired(agent, d, at) => {
                        tx.execute(
                            "INSERT INTO desired(agent, desired, updated_at) VALUES (?1, ?2, ?3)
                             ON CONFLICT(agent) DO UPDATE SET desired = ?2, updated_at = ?3",
                            params![agent, d.as_str(), at],
                        )?;
                    }
                    Op::SetGroup(agent, pgid) => {
                        tx.execute(
                            "INSERT INTO process_groups(agent, pgid) VALUES (?1, ?2)
                             ON CONFLICT(agent) DO UPDATE SET pgid = ?2",
                            params![agent, pgid],
                        )?;
                    }
                    Op::ClearGroup(agent) => {
                        tx.execute("DELETE FROM process_groups WHERE agent = ?1", params![agent])?;
                    }
                    Op::SetLogBase(agent, base) => {
                        tx.execute(
                            "INSERT INTO log_base(agent, base) VALUES (?1, ?2)
                             ON CONFLICT(agent) DO UPDATE SET base = ?2",
                            params![agent, base as i64],
                        )?;
                    }
                    Op::History(h) => {
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
                        inserted += 1;
                        if inserted.is_multiple_of(1000) {
                            tx.execute(
                                "DELETE FROM history WHERE id <= (SELECT max(id) FROM history) - ?1",
                                params![HISTORY_KEEP],
                            )?;
                        }
                    }
                    Op::Flush(done) => flushes.push(done),
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            tracing::error!("cannot write the state database: {e}; the changes of this batch are lost");
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, thread, loaded) = Store::open(dir.path()).unwrap();
        assert!(loaded.desired.is_empty());
        store.set_desired("a", Desired::Stopped);
        store.set_desired("b", Desired::Running);
        store.set_desired("a", Desired::Running);
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
        drop(store);
        thread.close();
        let (_store, _thread, loaded) = Store::open(dir.path()).unwrap();
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
}
