//! What a read key costs everyone else: the daemon's memory while slow
//! clients ask `/sse/logs` for long tails (`tails`), and whether an admin
//! still gets an event stream while a read key holds as many as it can
//! (`slots`). Run against another build with `AGENTSD_TEST_BIN=PATH`.

use crate::stats::{Row, rss_mib};
use crate::util::{Daemon, Home, KEY, Sse, cli, run, text};
use agentsd::wire::Status;
use std::time::{Duration, Instant};

/// A read key made by the daemon's own `gen-key`: the key and its lines.
fn read_key(home: &Home) -> (String, String) {
    let out = run(cli(home), &["gen-key", "--name", "wall", "--role", "read"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let key = stdout.lines().next().unwrap().to_string();
    (key, stdout[stdout.find("[keys.").unwrap()..].to_string())
}

fn daemon(agents: &str) -> (Home, Daemon, String) {
    let mut home = Home::new();
    home.log_level = "warn";
    let (key, lines) = read_key(&home);
    home.write_config(&format!("{}{agents}\n{lines}\n", crate::measures::DEFAULTS));
    let d = home.start();
    (home, d, key)
}

fn peak_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// 20 clients of `/sse/logs?n=10000` with a read key over four agents of
/// 8 MB of 60 kB lines each, each taking one event and then reading no
/// more: the daemon's RSS while they hold their streams, and after they
/// close.
pub async fn tails() -> Vec<Row> {
    const AGENTS: usize = 4;
    const CLIENTS: usize = 20;
    let big = "head -c 8400000 /dev/zero | tr '\\\\0' x | fold -w 60000; exec sleep 100000";
    let agents: String = (0..AGENTS)
        .map(|i| format!("[agents.big{i}]\ncommand = [\"sh\", \"-c\", \"{big}\"]\n"))
        .collect();
    let (home, d, read) = daemon(&agents);
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..AGENTS {
        let id = format!("big{i}");
        d.wait_status(&id, Status::Running).await;
        while std::fs::metadata(home.log_path(&id)).map_or(0, |m| m.len()) < 8_000_000 {
            assert!(Instant::now() < deadline, "{id}'s log not written");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (idle, _) = crate::measures::settled_rss(d.pid(), Duration::from_secs(30)).await;
    let started = Instant::now();
    let mut held = Vec::new();
    for _ in 0..CLIENTS {
        let c = d.new_client(true).build().unwrap();
        let res = c
            .get(format!("{}/sse/logs?n=10000", d.url))
            .bearer_auth(&read)
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let mut sse = Sse::from_response(res);
        sse.next(Duration::from_secs(30)).await.expect("a first line");
        held.push((c, sse));
    }
    let opened = started.elapsed();
    let (holding, _) = crate::measures::settled_rss(d.pid(), Duration::from_secs(30)).await;
    let peak = peak_mib(d.pid());
    drop(held);
    let (after, took) = crate::measures::settled_rss(d.pid(), Duration::from_secs(60)).await;
    vec![Row::new(
        "tails_rss",
        holding,
        "RSS: 20 slow clients of /sse/logs?n=10000 (read key), 4 agents x 8 MB of 60 kB lines",
        format!(
            "idle {idle:.1} MiB, {holding:.1} MiB while held (peak {peak:.1}), {after:.1} MiB after they closed (settled in {:.0} s); opened in {:.1} s",
            took.as_secs_f64(),
            opened.as_secs_f64()
        ),
        "held < idle + 64 MiB, back under 1.5x idle",
        Some(holding < idle + 64.0 && after < 1.5 * idle),
    )]
}

/// A read key opens `/sse/status` streams (128 a connection over HTTP/2)
/// until refused or 4,200; then an admin opens one.
pub async fn slots() -> Vec<Row> {
    const TRY: usize = 4200;
    let (_home, d, read) = daemon("[agents.a]\ncommand = [\"sleep\", \"100000\"]\n");
    d.wait_status("a", Status::Running).await;
    let started = Instant::now();
    let mut clients: Vec<reqwest::Client> = Vec::new();
    let mut held = Vec::new();
    let mut refused = None;
    for i in 0..TRY {
        if i % 128 == 0 {
            clients.push(d.new_client(false).build().unwrap());
        }
        let res = clients[i / 128]
            .get(format!("{}/sse/status", d.url))
            .bearer_auth(&read)
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .unwrap();
        if res.status() != 200 {
            let status = res.status().as_u16();
            let body = res.text().await.unwrap_or_default();
            refused = Some(format!("{status} {body}"));
            break;
        }
        held.push(res);
    }
    let filled = started.elapsed();
    let t = Instant::now();
    let admin = d
        .client
        .get(format!("{}/sse/status", d.url))
        .bearer_auth(KEY)
        .timeout(Duration::from_secs(3600))
        .send()
        .await
        .unwrap();
    let admin_status = admin.status().as_u16();
    let admin_ms = t.elapsed().as_secs_f64() * 1000.0;
    let rss = rss_mib(d.pid());
    let n = held.len();
    drop(held);
    drop(admin);
    vec![Row::new(
        "slots_admin",
        f64::from(admin_status),
        "an admin's /sse/status while a read key holds as many streams as it may",
        format!(
            "read key held {n} streams (opened in {:.1} s; next: {}); admin got {admin_status} in {admin_ms:.0} ms; daemon RSS {rss:.1} MiB",
            filled.as_secs_f64(),
            refused.as_deref().unwrap_or("none refused").trim()
        ),
        "admin 200; a read key refused 429 past its share",
        Some(admin_status == 200 && refused.is_some_and(|r| r.starts_with("429"))),
    )]
}
