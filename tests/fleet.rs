//! Many hosts: a daemon publishes its status events and a heartbeat over a
//! real `nats-server` on loopback (Debian's; installed by `.ci/run`), and
//! keeps serving while NATS is down.

use crate::util::nats::Nats;
use crate::util::*;
use agentsd::wire::Status;
use futures_util::{FutureExt, StreamExt};
use serde_json::Value;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(15);

/// The next message on `sub` whose JSON satisfies `pred`.
async fn next_where(
    sub: &mut async_nats::Subscriber,
    within: Duration,
    what: &str,
    pred: impl Fn(&str, &Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, sub.next())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {within:?}"))
            .expect("the subscription ended");
        let v: Value = serde_json::from_slice(&msg.payload).unwrap();
        if pred(msg.subject.as_str(), &v) {
            return v;
        }
    }
}

#[tokio::test]
#[ignore = "needs nats-server"]
async fn status_events_and_heartbeats_reach_a_subscriber_and_nats_down_never_stops_the_daemon() {
    let mut nats = Nats::start(None);
    let watcher = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = watcher.subscribe("agentsd.h1.>").await.unwrap();
    watcher.flush().await.unwrap();
    let home = Home::new();
    home.write_config(&format!(
        "{FAST}[agents.bot]\ncommand = [\"sleep\", \"1000\"]\n\n[fleet]\nnats = \"{}\"\nhost = \"h1\"\n",
        nats.url()
    ));
    let d = home.start();
    d.wait_status("bot", Status::Running).await;

    // A heartbeat: who, where, how many.
    let beat = next_where(&mut sub, T, "heartbeat", |s, v| {
        s == "agentsd.h1.heartbeat" && v["by_status"]["running"] == 1
    })
    .await;
    assert_eq!(beat["host"], "h1");
    assert_eq!(beat["url"], d.url.as_str());
    assert_eq!(beat["agents"], 1);
    assert_eq!(beat["version"], env!("CARGO_PKG_VERSION"));
    let first = Instant::now();
    next_where(&mut sub, T, "a second heartbeat", |s, _| {
        s == "agentsd.h1.heartbeat"
    })
    .await;
    let gap = first.elapsed();
    eprintln!("heartbeats {gap:?} apart");
    assert!(
        gap > Duration::from_secs(3) && gap < Duration::from_secs(8),
        "{gap:?}"
    );

    // A stop: a status event with the host.
    d.control("bot", "stop").await;
    let ev = next_where(&mut sub, T, "the stop as a status event", |s, v| {
        s == "agentsd.h1.status" && v["event"] == "status" && v["new_status"] == "stopped"
    })
    .await;
    assert_eq!(
        (ev["host"].as_str(), ev["agent_id"].as_str()),
        (Some("h1"), Some("bot"))
    );
    let health = d.get("/health").await;
    assert_eq!(health["fleet"]["connected"], true, "{health}");
    assert_eq!(health["fleet"]["host"], "h1");
    assert_eq!(health["fleet"]["dropped"], 0);
    let metrics = d.metrics().await;
    assert_eq!(
        sample(&metrics, "agentsd_fleet_connected"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "agentsd_fleet_dropped_events_total"), Some(0.0));

    // NATS gone: the daemon serves on, says so, and queues.
    let port = nats.port;
    nats.kill();
    let down = eventually_with(T, "/health to say NATS is down", || async {
        let h = d.get("/health").await;
        if h["fleet"]["connected"] == false {
            Ok(h)
        } else {
            Err(h.to_string())
        }
    })
    .await;
    assert_eq!(down["status"], "degraded", "{down}");
    assert_eq!(sample(&d.metrics().await, "agentsd_fleet_connected"), Some(0.0));
    assert!(
        down["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("not connected to NATS")),
        "{down}"
    );
    for _ in 0..3 {
        let t = Instant::now();
        d.control("bot", "start").await;
        d.control("bot", "stop").await;
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "a start and stop took {:?}",
            t.elapsed()
        );
    }
    // Back on the same port: the daemon reconnects by itself, and what
    // happens then reaches a new subscriber.
    let nats = Nats::start(Some(port));
    eventually_with(Duration::from_secs(30), "the daemon to reconnect", || async {
        let h = d.get("/health").await;
        if h["fleet"]["connected"] == true {
            Ok(())
        } else {
            Err(h.to_string())
        }
    })
    .await;
    let watcher = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = watcher.subscribe("agentsd.h1.status").await.unwrap();
    watcher.flush().await.unwrap();
    d.control("bot", "start").await;
    next_where(&mut sub, T, "a start after the reconnect", |_, v| {
        v["event"] == "status" && v["new_status"] == "running"
    })
    .await;
}

#[tokio::test]
async fn config_check_explains_a_wrong_fleet_table() {
    let home = Home::new();
    for (fleet, says) in [
        ("nats = \"http://x:4222\"", "invalid nats"),
        (
            "nats = \"nats://127.0.0.1:4222\"\nhost = \"a.b\"",
            "invalid fleet host",
        ),
        ("host = \"h1\"", "missing field `nats`"),
        ("nats = \"nats://127.0.0.1:4222\"\nview = \"yes\"", "invalid type"),
        (
            "nats = \"nats://127.0.0.1:4222\"\nqueue = 0",
            "queue = 0 is out of range: expected 1 to 1000000",
        ),
    ] {
        home.write_config(&format!("[fleet]\n{fleet}\n"));
        let out = run(
            cli(&home),
            &[
                "config",
                "check",
                "--config",
                home.config_path().to_str().unwrap(),
            ],
        );
        assert!(!out.status.success(), "{fleet}");
        assert!(text(&out.stderr).contains(says), "{fleet}: {}", text(&out.stderr));
    }
}

#[tokio::test]
#[ignore = "needs nats-server"]
async fn the_viewer_lists_every_host_and_marks_a_silent_one_stale() {
    let nats = Nats::start(None);
    let homes: Vec<Home> = (0..3).map(|_| Home::new()).collect();
    let mut daemons = Vec::new();
    for (i, home) in homes.iter().enumerate() {
        let agents: String = (0..=i)
            .map(|n| format!("[agents.a{n}]\ncommand = [\"sleep\", \"1000\"]\n"))
            .collect();
        let view = if i == 2 { "view = true\n" } else { "" };
        home.write_config(&format!(
            "{FAST}{agents}\n[fleet]\nnats = \"{}\"\nhost = \"h{}\"\n{view}",
            nats.url(),
            i + 1
        ));
        daemons.push(home.start());
    }
    let viewer = &daemons[2];
    // A host that is only a publisher has no view.
    let (status, _) = daemons[0].request(reqwest::Method::GET, "/fleet").await;
    assert_eq!(status, 404);
    let mut stream = Sse::open(viewer, "/sse/fleet", None).await;
    let hosts = eventually_with(T, "every host in /fleet, its agents running", || async {
        let v = viewer.get("/fleet").await;
        let all = v.as_array().unwrap();
        let running: Vec<u64> = all
            .iter()
            .map(|h| h["by_status"]["running"].as_u64().unwrap_or(0))
            .collect();
        if running == [1, 2, 3] {
            Ok(v)
        } else {
            Err(v.to_string())
        }
    })
    .await;
    let names: Vec<&str> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["h1", "h2", "h3"]);
    for (h, d) in hosts.as_array().unwrap().iter().zip(&daemons) {
        assert_eq!(h["url"], d.url.as_str());
        assert_eq!(h["stale"], false);
    }
    // The stream: a snapshot first, then each host's heartbeats as `host`
    // events, and the fleet's agent events.
    let first = stream.next(T).await.expect("a snapshot");
    assert_eq!(first.name, "snapshot");
    daemons[0].control("a0", "stop").await;
    let deadline = Instant::now() + T;
    let (mut stop_seen, mut h1_after_stop) = (false, false);
    while !(stop_seen && h1_after_stop) {
        let ev = stream
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
            .expect("h1's stop, then its heartbeat");
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        match ev.name.as_str() {
            "agent" if v["host"] == "h1" && v["event"] == "status" && v["new_status"] == "stopped" => {
                stop_seen = true
            }
            "host" if stop_seen && v["host"] == "h1" && v["by_status"]["stopped"] == 1 => {
                h1_after_stop = true
            }
            _ => {}
        }
    }
    // h2 goes silent: stale after 15 s without a heartbeat.
    let killed = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemons[1].pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let stale = eventually_with(Duration::from_secs(30), "h2 stale", || async {
        let v = viewer.get("/fleet").await;
        let h2 = v
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host"] == "h2")
            .cloned()
            .unwrap();
        if h2["stale"] == true {
            Ok(v)
        } else {
            Err(h2.to_string())
        }
    })
    .await;
    eprintln!("h2 stale {:?} after it was killed", killed.elapsed());
    assert!(
        killed.elapsed() >= Duration::from_secs(9),
        "stale too soon: {:?}",
        killed.elapsed()
    );
    let fresh: Vec<bool> = stale
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["stale"] == false)
        .collect();
    assert_eq!(fresh, [true, false, true]);
}

/// Each host's agent's transitions, `old>new`, in the order received.
type Transitions = std::collections::BTreeMap<String, Vec<String>>;

fn record(seen: &mut Transitions, payload: &[u8]) {
    let v: Value = serde_json::from_slice(payload).unwrap();
    if v["event"] == "status" {
        let key = format!(
            "{}/{}",
            v["host"].as_str().unwrap(),
            v["agent_id"].as_str().unwrap()
        );
        let t = format!(
            "{}>{}",
            v["old_status"].as_str().unwrap(),
            v["new_status"].as_str().unwrap()
        );
        seen.entry(key).or_default().push(t);
    }
}

/// Nothing lost on the way: every transition of 50 restarts of agents on
/// two hosts reaches a subscriber, in order for each agent.
#[tokio::test]
#[ignore = "needs nats-server"]
async fn every_transition_of_many_restarts_reaches_the_subscriber_in_order() {
    let nats = Nats::start(None);
    let watcher = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = watcher.subscribe("agentsd.*.status").await.unwrap();
    watcher.flush().await.unwrap();
    let homes = [Home::new(), Home::new()];
    let mut daemons = vec![];
    for (i, home) in homes.iter().enumerate() {
        home.write_config(&format!(
            "{FAST}[agents.a]\ncommand = [\"sleep\", \"1000\"]\n[agents.b]\ncommand = [\"sleep\", \"1000\"]\n\n[fleet]\nnats = \"{}\"\nhost = \"h{i}\"\n",
            nats.url()
        ));
        let d = home.start();
        d.wait_status("a", Status::Running).await;
        d.wait_status("b", Status::Running).await;
        daemons.push(d);
    }
    // The starts before may still be on their way: from now on, per agent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seen: Transitions = Default::default();
    // What came before the restarts is not counted.
    while let Some(Some(m)) = sub.next().now_or_never() {
        drop(m);
    }
    for k in 0..50 {
        daemons[k % 2]
            .control(if k % 4 < 2 { "a" } else { "b" }, "restart")
            .await;
    }
    let deadline = Instant::now() + T;
    loop {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            record(&mut seen, &m.payload);
        }
        let total: usize = seen.values().map(Vec::len).sum();
        if total >= 200 || Instant::now() > deadline {
            break;
        }
    }
    let cycle = [
        "running>stopping",
        "stopping>stopped",
        "stopped>starting",
        "starting>running",
    ];
    for (agent, transitions) in &seen {
        let expected: Vec<&str> = cycle
            .iter()
            .copied()
            .cycle()
            .take(transitions.len().max(4 * 12))
            .collect();
        assert_eq!(transitions.len() % 4, 0, "{agent}: {transitions:?}");
        assert_eq!(transitions.as_slice(), &expected[..transitions.len()], "{agent}");
    }
    let total: usize = seen.values().map(Vec::len).sum();
    assert_eq!(total, 200, "{seen:#?}");
}

/// `[fleet] queue = 5`, NATS down, 8 starts and stops (32 status changes):
/// five events wait, every other one is dropped and counted in /metrics and
/// /health; NATS back, the daemon reconnects by itself and the queued ones
/// reach a subscriber, oldest first.
#[tokio::test]
#[ignore = "needs nats-server"]
async fn past_the_queue_events_are_dropped_and_counted_and_the_queued_ones_arrive() {
    let mut nats = Nats::start(None);
    let home = Home::new();
    home.write_config(&format!(
        "{FAST}[agents.bot]\ncommand = [\"sleep\", \"1000\"]\n\n[fleet]\nnats = \"{}\"\nhost = \"h1\"\nqueue = 5\n",
        nats.url()
    ));
    let d = home.start();
    d.wait_status("bot", Status::Running).await;
    eventually_with(T, "the daemon to connect to NATS", || async {
        let h = d.get("/health").await;
        if h["fleet"]["connected"] == true {
            Ok(())
        } else {
            Err(h.to_string())
        }
    })
    .await;
    let port = nats.port;
    nats.kill();
    eventually_with(T, "/health to say NATS is down", || async {
        let h = d.get("/health").await;
        if h["fleet"]["connected"] == false {
            Ok(())
        } else {
            Err(h.to_string())
        }
    })
    .await;
    let down_at = Instant::now();
    let changes = 32;
    for _ in 0..changes / 4 {
        d.control("bot", "stop").await;
        d.wait_status("bot", Status::Stopped).await;
        d.control("bot", "start").await;
        d.wait_status("bot", Status::Running).await;
    }
    let metrics = d.metrics().await;
    let dropped = sample(&metrics, "agentsd_fleet_dropped_events_total").unwrap();
    let queued = sample(&metrics, "agentsd_fleet_queued_events").unwrap();
    eprintln!("{dropped} dropped, {queued} queued");
    assert_eq!(queued, 5.0, "{metrics}");
    // Every change is at least one event (with its summary, and the
    // heartbeats, more): all but the five queued are dropped.
    assert!(dropped >= f64::from(changes - 5), "{metrics}");
    let health = d.get("/health").await;
    assert_eq!(health["fleet"]["queued"], 5, "{health}");
    let health_dropped = health["fleet"]["dropped"].as_u64().unwrap();
    assert!(health_dropped as f64 >= dropped, "{health}");
    assert!(
        health["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().contains("5 events wait")),
        "{health}"
    );

    // Back on the same port: a subscriber first (the daemon held still
    // meanwhile, so that it cannot publish before), then the daemon, by
    // itself, reconnects and publishes what waited: the first stop's
    // events among them.
    let signal = |s| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid() as i32), s).unwrap();
    };
    signal(nix::sys::signal::Signal::SIGSTOP);
    let nats = Nats::start(Some(port));
    let watcher = async_nats::connect(nats.url()).await;
    let subscribed = match &watcher {
        Ok(w) => match w.subscribe("agentsd.h1.>").await {
            Ok(sub) => w.flush().await.map(|()| sub).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    signal(nix::sys::signal::Signal::SIGCONT);
    let mut sub = subscribed.unwrap();
    let ev = next_where(
        &mut sub,
        Duration::from_secs(30),
        "the first stop, queued",
        |s, v| {
            s == "agentsd.h1.status"
                && v["event"] == "status"
                && v["old_status"] == "running"
                && v["new_status"] == "stopping"
        },
    )
    .await;
    assert_eq!(ev["agent_id"], "bot");
    eventually_with(T, "the queue to drain", || async {
        let h = d.get("/health").await;
        if h["fleet"]["connected"] == true && h["fleet"]["queued"] == 0 {
            Ok(())
        } else {
            Err(h.to_string())
        }
    })
    .await;
    assert!(d.metrics().await.contains("agentsd_fleet_connected 1"));
    eprintln!(
        "NATS down, back, and the queue drained in {:?}",
        down_at.elapsed()
    );
}
