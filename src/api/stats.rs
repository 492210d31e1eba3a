//! `msg_count_24h`: each agent's `stats` query, run read-only on a blocking
//! thread and cached, so that listing many agents stays fast and a broken
//! stats database only ever yields `null`.

use crate::config::StatsConfig;
use rusqlite::{Connection, OpenFlags};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a count is served before it is computed again.
const FRESH: Duration = Duration::from_secs(5);
/// A query running longer than this is interrupted.
pub const QUERY_LIMIT: Duration = Duration::from_secs(1);
/// A count nobody asked for this long is dropped (its agent was removed,
/// or its query changed): the cache holds only what is being asked for.
const STALE: Duration = Duration::from_secs(60);

/// The one owner of every agent's message count: it computes them (on a
/// list's demand, and on each resource sample for the agents that have a
/// query), keeps them, and announces a count that changed.
pub struct StatsCache {
    entries: Mutex<HashMap<String, Entry>>,
    refreshing: tokio::sync::Mutex<()>,
    /// The ids of agents whose count changed.
    changes: tokio::sync::broadcast::Sender<Arc<str>>,
}

impl Default for StatsCache {
    fn default() -> StatsCache {
        StatsCache {
            entries: Default::default(),
            refreshing: Default::default(),
            changes: tokio::sync::broadcast::channel(CHANGES_BACKLOG).0,
        }
    }
}

/// Count changes kept for a slow event stream before it sees a lag.
const CHANGES_BACKLOG: usize = 1024;

#[derive(Clone)]
struct Entry {
    cfg: StatsConfig,
    value: Option<i64>,
    at: Instant,
}

impl StatsCache {
    /// The count as last computed (`None` if it never was, or failed):
    /// what an event stream shows, without running a query.
    pub fn get(&self, id: &str) -> Option<i64> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(id).and_then(|e| e.value)
    }

    /// The agents whose count changed, from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.changes.subscribe()
    }

    /// The counts of these agents: fresh ones from the cache, the rest
    /// computed now (all in one blocking task). A count that differs from
    /// the one it replaces is announced.
    pub async fn counts(&self, wanted: Vec<(String, StatsConfig)>) -> HashMap<String, Option<i64>> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            for (id, cfg) in wanted {
                match entries.get(&id) {
                    Some(e) if e.cfg == cfg && e.at.elapsed() < FRESH => {
                        out.insert(id, e.value);
                    }
                    _ => missing.push((id, cfg)),
                }
            }
        }
        if missing.is_empty() {
            return out;
        }
        // One refresh at a time; a request that waited finds what the one
        // before it computed.
        let _guard = self.refreshing.lock().await;
        {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            missing.retain(|(id, cfg)| match entries.get(id) {
                Some(e) if e.cfg == *cfg && e.at.elapsed() < FRESH => {
                    out.insert(id.clone(), e.value);
                    false
                }
                _ => true,
            });
        }
        if missing.is_empty() {
            return out;
        }
        let computed = tokio::task::spawn_blocking(move || {
            missing
                .into_iter()
                .map(|(id, cfg)| {
                    let v = query(&cfg);
                    (id, cfg, v)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        entries.retain(|_, e| now.duration_since(e.at) < STALE);
        for (id, cfg, value) in computed {
            let old = entries.insert(
                id.clone(),
                Entry {
                    cfg,
                    value,
                    at: Instant::now(),
                },
            );
            // The first count of an agent is no change.
            if old.is_some_and(|o| o.value != value) {
                let _ = self.changes.send(id.as_str().into());
            }
            out.insert(id, value);
        }
        out
    }

    /// Drops the counts of agents that are gone.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.retain(|id, _| keep(id));
        if entries.capacity() > 2 * entries.len() + 16 {
            entries.shrink_to_fit();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Keeps `msg_count_24h` live for event streams: after each resource
/// sample (one beat for all agents, no timer per agent), the counts of the
/// agents that have a stats query (only those: the supervisor keeps them
/// apart) are taken again through the cache, which announces those that
/// changed.
pub async fn keep_counts(state: Arc<super::AppState>) {
    use crate::supervisor::Change;
    use tokio::sync::broadcast::error::RecvError;
    let Ok(mut events) = state.handle.subscribe().await else {
        return;
    };
    loop {
        match events.recv().await {
            Ok(Change::Resources(_)) | Err(RecvError::Lagged(_)) => {}
            Ok(_) => continue,
            Err(RecvError::Closed) => return,
        }
        let Ok(wanted) = state.handle.stats_queries().await else {
            continue;
        };
        // Counts of agents removed (or whose query went) since the last
        // beat go.
        let ids: std::collections::HashSet<&str> = wanted.iter().map(|(id, _)| id.as_str()).collect();
        state.stats.retain(|id| ids.contains(id));
        drop(ids);
        if !wanted.is_empty() {
            state.stats.counts(wanted).await;
        }
    }
}

/// Opens an agent's database for a short read: read-only (it can never
/// write, and `query_only` besides), waiting at most 250 ms for a lock, and
/// every statement run on it interrupted once the connection is `limit`
/// old. Blocking: call it on the blocking pool.
pub fn open_read_only(db: &std::path::Path, limit: Duration) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_millis(250))?;
    conn.pragma_update(None, "query_only", true)?;
    let start = Instant::now();
    conn.progress_handler(10_000, Some(move || start.elapsed() > limit))?;
    Ok(conn)
}

/// Runs the stats query; any failure is `None`.
pub fn query(cfg: &StatsConfig) -> Option<i64> {
    let run = || -> rusqlite::Result<i64> {
        open_read_only(&cfg.db, QUERY_LIMIT)?.query_row(&cfg.query, [], |r| r.get::<_, i64>(0))
    };
    match run() {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::debug!("stats query on {} failed: {e}", cfg.db.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(dir: &std::path::Path) -> StatsConfig {
        StatsConfig {
            db: dir.join("none.db"),
            query: "SELECT 1".into(),
            messages: None,
        }
    }

    #[tokio::test]
    async fn the_counts_of_removed_agents_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StatsCache::default();
        let wanted = (0..100).map(|i| (format!("a{i}"), stats(dir.path()))).collect();
        cache.counts(wanted).await;
        assert_eq!(cache.len(), 100);
        cache.retain(|id| id == "a7" || id == "a42");
        assert_eq!(cache.len(), 2);
    }

    #[tokio::test]
    async fn counts_nobody_asks_for_expire() {
        let dir = tempfile::tempdir().unwrap();
        let cache = StatsCache::default();
        cache.counts(vec![("old".into(), stats(dir.path()))]).await;
        // As if it was last computed long ago.
        if let Some(e) = cache.entries.lock().unwrap().get_mut("old") {
            e.at = Instant::now().checked_sub(STALE * 2).unwrap_or(e.at);
        }
        cache.counts(vec![("new".into(), stats(dir.path()))]).await;
        assert_eq!(cache.len(), 1);
    }

    /// A count that changes is announced by the cache itself (the first
    /// count of an agent is no change), and read back without a query.
    #[tokio::test]
    async fn a_changed_count_is_announced_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE m(x); INSERT INTO m VALUES (1);")
            .unwrap();
        let cfg = StatsConfig {
            db,
            query: "SELECT count(*) FROM m".into(),
            messages: None,
        };
        let cache = StatsCache::default();
        let mut changes = cache.subscribe();
        cache.counts(vec![("bot".into(), cfg.clone())]).await;
        assert_eq!(cache.get("bot"), Some(1));
        // Computed again (as if 5 s passed), unchanged: nothing said.
        let stale = |cache: &StatsCache| {
            if let Some(e) = cache.entries.lock().unwrap().get_mut("bot") {
                e.at = Instant::now().checked_sub(FRESH * 2).unwrap_or(e.at);
            }
        };
        stale(&cache);
        cache.counts(vec![("bot".into(), cfg.clone())]).await;
        assert!(changes.try_recv().is_err());
        conn.execute_batch("INSERT INTO m VALUES (2);").unwrap();
        stale(&cache);
        cache.counts(vec![("bot".into(), cfg)]).await;
        assert_eq!(changes.try_recv().ok().as_deref(), Some("bot"));
        assert_eq!(cache.get("bot"), Some(2));
        assert_eq!(cache.get("other"), None);
    }

    #[test]
    fn broken_stats_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("CREATE TABLE m(x); INSERT INTO m VALUES (1),(2),(3);")
            .unwrap();
        let ok = StatsConfig {
            db: db.clone(),
            query: "SELECT count(*) FROM m".into(),
            messages: None,
        };
        assert_eq!(query(&ok), Some(3));
        let bad_sql = StatsConfig {
            db: db.clone(),
            query: "SELEC nonsense".into(),
            messages: None,
        };
        assert_eq!(query(&bad_sql), None);
        let no_db = StatsConfig {
            db: dir.path().join("missing.db"),
            query: "SELECT 1".into(),
            messages: None,
        };
        assert_eq!(query(&no_db), None);
        let text = StatsConfig {
            db,
            query: "SELECT 'x'".into(),
            messages: None,
        };
        assert_eq!(query(&text), None);
    }
}
