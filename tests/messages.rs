//! Messages out: `GET /sse/agents/{id}/messages` streams the rows of an
//! agent's `stats.messages` query as its database changes.

use crate::util::*;
use reqwest::Method;
use rusqlite::Connection;
use std::path::Path;
use std::time::{Duration, Instant};

const QUERY: &str = "SELECT id, at, sender, body FROM messages WHERE id > ?1 ORDER BY id LIMIT 100";

/// The agent's database as a bot would keep it: WAL mode, one table.
fn bot_db(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS messages(id INTEGER PRIMARY KEY, at TEXT NOT NULL, sender TEXT, body TEXT);",
    )
    .unwrap();
    conn
}

/// Inserts a message; its id.
fn say(conn: &Connection, body: &str) -> i64 {
    conn.execute(
        "INSERT INTO messages(at, sender, body) VALUES (strftime('%Y-%m-%dT%H:%M:%fZ','now'), 'alice', ?1)",
        [body],
    )
    .unwrap();
    conn.last_insert_rowid()
}

fn agent(id: &str, db: &str, messages: &str) -> String {
    format!(
        "[agents.{id}]\ncommand = [\"sleep\", \"1000\"]\nstats = {{ db = \"{db}\", query = \"SELECT count(*) FROM messages\", messages = \"{messages}\" }}\n"
    )
}

/// The next `message` event's id and row (pings skipped); fails on
/// anything else.
async fn next_row(sse: &mut Sse, within: Duration, what: &str) -> (String, serde_json::Value) {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(ev) = sse.next(left).await else {
            panic!("no message event within {within:?}: {what}");
        };
        match ev.name.as_str() {
            "ping" => continue,
            "message" => {
                let row: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
                return (ev.id.expect("an id"), row);
            }
            _ => panic!("not a message: {ev:?}"),
        }
    }
}

/// No `message` event for `within` (pings may come).
async fn no_row(sse: &mut Sse, within: Duration) {
    let deadline = Instant::now() + within;
    while let Some(ev) = sse.next(deadline.saturating_duration_since(Instant::now())).await {
        assert_eq!(ev.name, "ping", "nothing more was written: {ev:?}");
    }
}

#[tokio::test]
async fn rows_arrive_as_they_are_written_and_resume_exactly_after_the_last_seen() {
    let home = Home::new();
    let conn = bot_db(&home.path().join("bot.db"));
    for i in 1..=3 {
        say(&conn, &format!("before {i}"));
    }
    home.write_config(&format!("{FAST}{}", agent("bot", "bot.db", QUERY)));
    let d = home.start();

    // A new stream: the last n rows first.
    let mut sse = Sse::open(&d, "/sse/agents/bot/messages?n=2", None).await;
    let (id, row) = next_row(&mut sse, Duration::from_secs(5), "the first of the last 2").await;
    assert_eq!(id, "2");
    assert_eq!(row["body"], "before 2");
    let mut keys: Vec<&String> = row.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["at", "body", "id", "sender"], "by column name");
    assert_eq!(row["id"], 2);
    assert_eq!(row["sender"], "alice");
    let (id, _) = next_row(&mut sse, Duration::from_secs(5), "the second of the last 2").await;
    assert_eq!(id, "3");

    // Live: each row soon after it is written (a database that has not
    // been read for a second is read at once when it changes; after each
    // change it is read once more a second later).
    let mut delays = Vec::new();
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let written = Instant::now();
        let id = say(&conn, &format!("live {i}"));
        let (got, row) = next_row(&mut sse, Duration::from_secs(5), "a live row").await;
        delays.push(written.elapsed());
        assert_eq!(got, id.to_string());
        assert_eq!(row["body"], format!("live {i}"));
    }
    eprintln!("insert to event: {delays:?}");
    for d in &delays {
        assert!(*d < Duration::from_secs(5), "{delays:?}");
    }
    // The stream's own reads do not wake it (it would then read once a
    // second, and a row wait for the next beat).
    assert!(
        delays
            .iter()
            .min()
            .is_some_and(|d| *d < Duration::from_millis(500)),
        "{delays:?}"
    );
    // A burst: every row once, in order (read at most once a second).
    conn.execute_batch("BEGIN").unwrap();
    let burst: Vec<i64> = (0..250).map(|i| say(&conn, &format!("burst {i}"))).collect();
    conn.execute_batch("COMMIT").unwrap();
    for want in &burst {
        let (got, _) = next_row(&mut sse, Duration::from_secs(10), "a row of the burst").await;
        assert_eq!(got, want.to_string());
    }
    let last = burst.last().unwrap().to_string();
    drop(sse);

    // Written while nobody listened: exactly those after a reconnect.
    let missed: Vec<i64> = (0..3).map(|i| say(&conn, &format!("missed {i}"))).collect();
    let mut sse = Sse::open(&d, "/sse/agents/bot/messages?n=50", Some(&last)).await;
    for want in &missed {
        let (got, row) = next_row(&mut sse, Duration::from_secs(5), "a row missed while away").await;
        assert_eq!(got, want.to_string(), "{row}");
    }
    no_row(&mut sse, Duration::from_millis(1500)).await;
    let after = say(&conn, "after the reconnect");
    let (got, _) = next_row(&mut sse, Duration::from_secs(5), "a row after the reconnect").await;
    assert_eq!(got, after.to_string());
    // `after=` does the same for a page that opens a new EventSource.
    let mut again = Sse::open(&d, &format!("/sse/agents/bot/messages?after={}", missed[2]), None).await;
    let (got, _) = next_row(&mut again, Duration::from_secs(5), "a row after after=").await;
    assert_eq!(got, after.to_string());
    no_row(&mut again, Duration::from_millis(1200)).await;
    // Without a cursor or n: from the end, only what comes next.
    let mut fresh = Sse::open(&d, "/sse/agents/bot/messages", None).await;
    no_row(&mut fresh, Duration::from_millis(1200)).await;
    let next = say(&conn, "next");
    let (got, _) = next_row(
        &mut fresh,
        Duration::from_secs(5),
        "the next row on a fresh stream",
    )
    .await;
    assert_eq!(got, next.to_string());
    // Every stream of the database shares its watcher: all got it.
    for s in [&mut sse, &mut again] {
        let (got, _) = next_row(s, Duration::from_secs(5), "the next row on each other stream").await;
        assert_eq!(got, next.to_string());
    }
    // Streams end when the daemon shuts down.
    let mut d = d;
    d.signal(nix::sys::signal::Signal::SIGTERM);
    fresh.ends_within(Duration::from_secs(10)).await;
    d.wait_exit(Duration::from_secs(20));
}

#[tokio::test]
async fn what_cannot_be_streamed_is_said() {
    let home = Home::new();
    let conn = bot_db(&home.path().join("bot.db"));
    say(&conn, "hello");
    home.write_config(&format!(
        "{FAST}[agents.plain]\ncommand = [\"sleep\", \"1000\"]\n{}{}",
        agent("texty", "bot.db", "SELECT body, id FROM messages WHERE id > ?1"),
        agent("later", "later/bot.db", QUERY),
    ));
    let d = home.start();
    // No query: 409 with why; no agent: 404; a bad cursor: 400.
    let (code, body) = d.request(Method::GET, "/sse/agents/plain/messages").await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("no_messages")),
        "{body}"
    );
    let (code, _) = d.request(Method::GET, "/sse/agents/nope/messages").await;
    assert_eq!(code, 404);
    let (code, _) = d
        .request(Method::GET, "/sse/agents/texty/messages?after=abc")
        .await;
    assert_eq!(code, 400);

    // A query that breaks the contract: a `query_error` event saying why,
    // and the stream stays open.
    let mut sse = Sse::open(&d, "/sse/agents/texty/messages?n=5", None).await;
    let ev = sse.next(Duration::from_secs(5)).await.expect("an event");
    assert_eq!(ev.name, "query_error", "{ev:?}");
    let problem: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert!(
        problem["message"]
            .as_str()
            .unwrap()
            .contains("must be an integer"),
        "{problem}"
    );
    // Told once, not at every change.
    say(&conn, "again");
    no_row(&mut sse, Duration::from_millis(1500)).await;
    assert!(d.stderr_text().contains("must be an integer"), "logged");

    // A database that does not exist yet: said, then its rows once the
    // agent has written them (all of them: they are all new, even
    // without n).
    std::fs::create_dir(home.path().join("later")).unwrap();
    let mut sse = Sse::open(&d, "/sse/agents/later/messages", None).await;
    let ev = sse.next(Duration::from_secs(5)).await.expect("an event");
    assert_eq!(ev.name, "query_error", "{ev:?}");
    assert!(ev.data.contains("cannot open"), "{ev:?}");
    let later = bot_db(&home.path().join("later/bot.db"));
    let id = say(&later, "first");
    // Read while the table was being made: that may be said too.
    let deadline = Instant::now() + Duration::from_secs(5);
    let ev = loop {
        let ev = sse
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
            .expect("the first row");
        if ev.name != "query_error" {
            break ev;
        }
    };
    assert_eq!((ev.name.as_str(), ev.id), ("message", Some(id.to_string())));
    let row: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(row["body"], "first");

    // A reload that takes the agent's query away ends its stream (a
    // client that comes back is told why); one that removes the agent
    // ends that of the other.
    let mut texty = Sse::open(&d, "/sse/agents/texty/messages", None).await;
    home.write_config(&format!(
        "{FAST}[agents.plain]\ncommand = [\"sleep\", \"1000\"]\n[agents.later]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    sse.ends_within(Duration::from_secs(15)).await;
    texty.ends_within(Duration::from_secs(15)).await;
    let (code, body) = d.request(Method::GET, "/sse/agents/later/messages").await;
    assert_eq!(
        (code, body["error"]["code"].as_str()),
        (409, Some("no_messages")),
        "{body}"
    );
}
