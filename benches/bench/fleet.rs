//! Issue #25's figures: 50 daemons on 127.0.0.11 to 127.0.0.60, 5 agents
//! each, one `nats-server` (Debian's, on 127.0.0.1); skipped, saying so,
//! without it.
//!
//! - Event latency: a subscriber on `agentsd.*.status` receives the status
//!   events of 100 restarts spread over the hosts (each restart: stopping,
//!   stopped, starting, running); each event's latency is the subscriber's
//!   clock when it arrived less the daemon's `at` stamp (the same clock,
//!   millisecond stamps). Medians of 3 runs of the p50 and p99.
//! - NATS down: `GET /agents` on one daemon, 200 requests 20 ms apart over
//!   one kept-alive connection, body read, before and while nats-server is
//!   killed (10 s), p99 of each; then nats-server comes back on its port and
//!   the time until every daemon says it is connected again is measured.
//!
//! The daemons serve plain HTTP on their loopback addresses (a self-signed
//! certificate names 127.0.0.1 only), so the API figures have no TLS.

use crate::stats::{RUNS, Row, median, ms, percentile, sorted};
use crate::util::nats::Nats;
use crate::util::{Daemon, FAST, Home};
use futures_util::StreamExt;
use std::time::{Duration, Instant, SystemTime};

const HOSTS: usize = 50;
const AGENTS: usize = 5;
const RESTARTS: usize = 100;

fn available() -> bool {
    ["/usr/bin/nats-server", "/usr/sbin/nats-server"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}

pub async fn fleet() -> Vec<Row> {
    if !available() {
        println!("fleet: skipped (needs Debian's nats-server: apt-get install nats-server)\n");
        return vec![];
    }
    let mut nats = Nats::start(None);
    let homes: Vec<Home> = (0..HOSTS).map(|_| Home::new()).collect();
    let agents: String = (0..AGENTS)
        .map(|a| format!("[agents.a{a}]\ncommand = [\"sleep\", \"100000\"]\n"))
        .collect();
    let daemons: Vec<Daemon> = homes
        .iter()
        .enumerate()
        .map(|(i, home)| {
            // Plain HTTP (loopback): a self-signed certificate names
            // 127.0.0.1 only.
            let text = format!(
                "[server]\nlisten = \"127.0.0.{}:0\"\napi_key_file = \"api.key\"\nstate_dir = \"state\"\nlog_dir = \"logs\"\n\n{FAST}{agents}\n[fleet]\nnats = \"{}\"\nhost = \"h{:02}\"\n",
                11 + i,
                nats.url(),
                11 + i
            );
            std::fs::write(home.config_path(), text).unwrap();
            home.start()
        })
        .collect();
    for d in &daemons {
        for a in 0..AGENTS {
            d.wait_status(&format!("a{a}"), agentsd::wire::Status::Running)
                .await;
        }
    }
    let watcher = async_nats::connect(nats.url()).await.unwrap();
    let mut rows = vec![];

    // Event latency.
    let (mut p50s, mut p99s, mut counts) = (vec![], vec![], vec![]);
    for run in 0..RUNS {
        let mut sub = watcher.subscribe("agentsd.*.status").await.unwrap();
        watcher.flush().await.unwrap();
        let collector = tokio::spawn(async move {
            let mut lat = vec![];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while lat.len() < RESTARTS * 4 {
                let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.next()).await else {
                    break;
                };
                let got = SystemTime::now();
                let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
                if v["event"] != "status" {
                    continue;
                }
                let at = humantime::parse_rfc3339(v["at"].as_str().unwrap()).unwrap();
                lat.push(ms(got.duration_since(at).unwrap_or_default()));
            }
            lat
        });
        for k in 0..RESTARTS {
            let d = &daemons[(k + run) % HOSTS];
            d.control(&format!("a{}", k % AGENTS), "restart").await;
        }
        let lat = sorted(collector.await.unwrap());
        counts.push(lat.len() as f64);
        p50s.push(percentile(&lat, 50.0));
        p99s.push(percentile(&lat, 99.0));
    }
    let (p50, p99) = (median(p50s), median(p99s));
    rows.push(Row::new(
        "fleet_event_p99",
        p99,
        format!(
            "status change on one of {HOSTS} hosts -> a NATS subscriber ({RESTARTS} restarts = {} events a run, 3 runs)",
            RESTARTS * 4
        ),
        format!(
            "p50 {p50:.2} ms, p99 {p99:.2} ms (events received per run: {:?})",
            counts
        ),
        "p99 < 50 ms",
        Some(p99 < 50.0),
    ));

    // `agents list --context all` over the 50 (a client file with a
    // context per daemon; the whole command, spawned to exit, stdout read).
    let client = Home::new();
    let file: String = homes
        .iter()
        .zip(&daemons)
        .enumerate()
        .map(|(i, (h, d))| {
            format!(
                "[contexts.h{:02}]\nurl = \"{}\"\napi_key_file = \"{}\"\n",
                11 + i,
                d.url,
                h.path().join("api.key").display()
            )
        })
        .collect();
    let dir = client.path().join("client-config/agentsd");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("client.toml"), file).unwrap();
    let run_list = || {
        let t = Instant::now();
        let out = crate::util::cli(&client)
            .args(["agents", "list", "--context", "all"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rows = String::from_utf8_lossy(&out.stdout).lines().count();
        assert_eq!(rows, 1 + HOSTS * AGENTS, "one table of every agent");
        ms(t.elapsed())
    };
    run_list();
    let mut medians = vec![];
    for _ in 0..RUNS {
        medians.push(median((0..5).map(|_| run_list()).collect()));
    }
    let list = median(medians);
    rows.push(Row::new(
        "fleet_list_all",
        list,
        format!("`agentsd agents list --context all` over {HOSTS} daemons ({} agents), whole command, plain HTTP (3 x 5)", HOSTS * AGENTS),
        format!("median {list:.1} ms"),
        "< 1 s",
        Some(list < 1000.0),
    ));

    // NATS down: the API does not notice.
    let d = &daemons[0];
    let timed = |d: &Daemon| {
        let client = d.client.clone();
        let (url, key) = (format!("{}/agents", d.url), d.key.clone());
        async move {
            let mut t = vec![];
            for _ in 0..200 {
                let s = Instant::now();
                let r = client.get(&url).bearer_auth(&key).send().await.unwrap();
                r.bytes().await.unwrap();
                t.push(ms(s.elapsed()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            percentile(&sorted(t), 99.0)
        }
    };
    let before = timed(d).await;
    let port = nats.port;
    nats.kill();
    let down_at = Instant::now();
    // Events while it is down: they wait, then count as dropped past the bound.
    for k in 0..20 {
        daemons[k % HOSTS].control("a0", "restart").await;
    }
    let during = timed(d).await;
    let left = Duration::from_secs(10).saturating_sub(down_at.elapsed());
    tokio::time::sleep(left).await;
    let health = d.get("/health").await;
    let queued = health["fleet"]["queued"].as_u64().unwrap_or(0);
    let dropped = health["fleet"]["dropped"].as_u64().unwrap_or(0);
    let _nats = Nats::start(Some(port));
    let back = Instant::now();
    let deadline = back + Duration::from_secs(60);
    let mut waiting: Vec<&Daemon> = daemons.iter().collect();
    while !waiting.is_empty() && Instant::now() < deadline {
        let mut still = vec![];
        for d in waiting {
            if d.get("/health").await["fleet"]["connected"] != true {
                still.push(d);
            }
        }
        waiting = still;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let reconnected = ms(back.elapsed());
    rows.push(Row::new(
        "fleet_nats_down_p99",
        during,
        "`GET /agents` (5 agents, body read, one connection) while nats-server is down, p99 of 200",
        format!(
            "p99 {during:.2} ms down vs {before:.2} ms up; h11 had {queued} events queued, {dropped} dropped; all {HOSTS} daemons connected again {reconnected:.0} ms after nats-server came back ({} not)",
            waiting.len()
        ),
        "within 2x of before (1 ms floor)",
        Some(during <= 2.0 * before.max(1.0)),
    ));
    for d in daemons {
        drop(d);
    }
    rows
}
