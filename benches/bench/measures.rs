//! The measures of agentsd itself.

use crate::emit;
use crate::stats::{RUNS, Row, cpu_percent, median, ms, percentile, rss_mib, sorted};
use crate::util::{Daemon, Home, KEY, Pty, Sse, bin};
use agentsd::wire::{AgentSummary, Status};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const DEFAULTS: &str = "[defaults]\nstart_window = \"0s\"\nstop_timeout = \"5s\"\n";

fn exe() -> String {
    std::env::current_exe().unwrap().display().to_string()
}

fn daemon(agents: &str) -> (Home, Daemon) {
    let mut home = Home::new();
    home.log_level = "warn";
    home.write_config(&format!("{DEFAULTS}{agents}"));
    let d = home.start();
    (home, d)
}

pub fn many(n: usize, prefix: &str, body: &str) -> String {
    (0..n)
        .map(|i| format!("[agents.{prefix}{i:04}]\n{body}\n"))
        .collect()
}

async fn list(d: &Daemon) -> Vec<AgentSummary> {
    serde_json::from_value(d.get("/agents").await).unwrap()
}

/// Waits (at most a minute) until every agent is running.
/// Waits (at most `within`) until `n` agents are running (with a probe,
/// running is healthy).
pub async fn all_running_within(d: &Daemon, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let running = list(d)
            .await
            .iter()
            .filter(|a| a.status == Status::Running)
            .count();
        if running == n {
            return;
        }
        assert!(Instant::now() < deadline, "only {running} of {n} agents running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn all_running(d: &Daemon, n: usize) {
    all_running_within(d, n, Duration::from_secs(60)).await
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

pub async fn lag() -> Vec<Row> {
    const LINES: usize = 2000;
    let (mut p50, mut p99, mut max) = (vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let (_home, d) = daemon(&format!(
            "[agents.lag]\ncommand = [\"{}\", \"--emit-timed\", \"{LINES}\", \"2\", \"1500\"]\n",
            exe()
        ));
        d.wait_status("lag", Status::Running).await;
        let mut sse = Sse::open(&d, "/sse/agents/lag/logs", None).await;
        let mut lags = Vec::with_capacity(LINES);
        let deadline = Instant::now() + Duration::from_secs(30);
        while lags.len() < LINES && Instant::now() < deadline {
            let Some(ev) = sse.next(Duration::from_secs(5)).await else {
                break;
            };
            let now = now_ns();
            if let Ok(ts) = ev.data.parse::<u128>() {
                lags.push(now.saturating_sub(ts) as f64 / 1e6);
            }
        }
        assert!(lags.len() > LINES / 2, "only {} lines arrived", lags.len());
        let s = sorted(lags);
        p50.push(percentile(&s, 50.0));
        p99.push(percentile(&s, 99.0));
        max.push(percentile(&s, 100.0));
    }
    let (p50, p99, max) = (median(p50), median(p99), median(max));
    vec![Row::new(
        "lag_p99",
        p99,
        "log line lag, agent write -> SSE follower over TLS (2,000 lines at 500/s)",
        format!("p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"),
        "p99 < 2 ms",
        Some(p99 < 2.0),
    )]
}

pub async fn list_1000() -> Vec<Row> {
    const N: usize = 1000;
    let (_home, d) = daemon(&many(N, "a", "command = [\"sleep\", \"100000\"]"));
    all_running(&d, N).await;
    let (mut p50, mut p99) = (vec![], vec![]);
    for _ in 0..20 {
        list(&d).await;
    }
    for _ in 0..RUNS {
        let mut t = Vec::new();
        for _ in 0..300 {
            let start = Instant::now();
            let res = d
                .client
                .get(format!("{}/agents", d.url))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap();
            let body = res.bytes().await.unwrap();
            t.push(ms(start.elapsed()));
            assert!(body.len() > 100_000);
        }
        let s = sorted(t);
        p50.push(percentile(&s, 50.0));
        p99.push(percentile(&s, 99.0));
    }
    let (p50, p99) = (median(p50), median(p99));
    let rss = rss_mib(d.pid());
    vec![
        Row::new(
            "list_p99",
            p99,
            "GET /agents with 1,000 agents (300 requests)",
            format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
            "p99 < 10 ms",
            Some(p99 < 10.0),
        ),
        Row::new(
            "rss_1000",
            rss,
            "daemon RSS, 1,000 idle agents",
            format!("{rss:.1} MiB"),
            "-",
            None,
        ),
    ]
}

pub async fn resources(idle: bool, busy: bool) -> Vec<Row> {
    let mut rows = vec![];
    if idle {
        let agents = many(100, "a", "command = [\"sleep\", \"100000\"]");
        let (_home, d) = daemon(&agents);
        all_running(&d, 100).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut cpu = vec![];
        for _ in 0..RUNS {
            cpu.push(cpu_percent(d.pid(), Duration::from_secs(5)).await);
        }
        let mut rss = vec![rss_mib(d.pid())];
        drop((_home, d));
        // Two more daemons for the median: what is mapped varies by a few
        // pages from one start to the next.
        for _ in 1..RUNS {
            let (_home, d) = daemon(&agents);
            all_running(&d, 100).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            rss.push(rss_mib(d.pid()));
        }
        let all = rss
            .iter()
            .map(|r| format!("{r:.1}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rss = median(rss);
        let cpu = median(cpu);
        rows.push(Row::new(
            "rss_100",
            rss,
            "daemon memory, 100 idle agents (median of 3 daemons)",
            format!("{rss:.1} MiB RSS ({all})"),
            "< 13 MiB (SPEC)",
            Some(rss < 13.0),
        ));
        rows.push(Row::new(
            "cpu_idle",
            cpu,
            "daemon CPU, 100 idle agents",
            format!("{cpu:.3} % of one core"),
            "-",
            None,
        ));
    }
    if busy {
        let (_home, d) = daemon(&many(
            100,
            "t",
            "command = [\"sh\", \"-c\", \"while :; do echo tick; sleep 1; done\"]",
        ));
        all_running(&d, 100).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut cpu = vec![];
        for _ in 0..RUNS {
            cpu.push(cpu_percent(d.pid(), Duration::from_secs(10)).await);
        }
        let cpu = median(cpu);
        let rss = rss_mib(d.pid());
        rows.push(Row::new(
            "cpu_busy",
            cpu,
            "daemon CPU, 100 agents each printing a line a second (3 x 10 s)",
            format!("{cpu:.3} % of one core ({rss:.1} MiB RSS)"),
            "< 0.5 %",
            Some(cpu < 0.5),
        ));
    }
    rows
}

pub async fn capture() -> Vec<Row> {
    const N: u64 = 1_000_000;
    let mut rates = vec![];
    let mut lost_total = 0u64;
    for _ in 0..RUNS {
        let (home, d) = daemon(&format!(
            "[agents.fast]\ncommand = [\"{}\", \"--emit-fast\", \"{N}\"]\nautostart = false\nlog_max_size = \"1GiB\"\n",
            exe()
        ));
        let path = home.log_path("fast");
        let want = emit::fast_bytes(N);
        let start = Instant::now();
        d.control("fast", "start").await;
        let deadline = start + Duration::from_secs(60);
        while std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) < want && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = start.elapsed();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let mut expect = 0u64;
        for line in text.lines() {
            if line == format!("line {expect:07}") {
                expect += 1;
            }
        }
        let dropped = d.agent("fast").await.dropped_log_lines;
        lost_total += (N - expect) + dropped;
        rates.push(N as f64 / took.as_secs_f64());
    }
    let rate = median(rates);
    vec![Row::new(
        "capture",
        rate,
        "log capture from one agent (1,000,000 lines into the log file)",
        format!("{:.2} M lines/s, {lost_total} lost", rate / 1e6),
        "1 M lines/s, none lost",
        Some(rate >= 1e6 && lost_total == 0),
    )]
}

pub async fn followers() -> Vec<Row> {
    const FOLLOWERS: usize = 1000;
    const LINES: usize = 1000;
    let (_home, d) = daemon(&format!(
        "[agents.src]\ncommand = [\"{}\", \"--emit-timed\", \"{LINES}\", \"2\", \"0\"]\nautostart = false\n",
        exe()
    ));
    // One TLS connection per follower, as separate clients would have.
    let client = d.new_client(true).build().unwrap();
    let before = rss_mib(d.pid());
    let connected = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let mut tasks = Vec::new();
    for _ in 0..FOLLOWERS {
        let (client, url, connected) = (client.clone(), d.url.clone(), connected.clone());
        tasks.push(tokio::spawn(async move {
            let res = client
                .get(format!("{url}/sse/agents/src/logs"))
                .bearer_auth(KEY)
                .send()
                .await;
            connected.add_permits(1);
            let Ok(res) = res else { return 0 };
            let mut sse = Sse::from_response(res);
            let mut n = 0;
            while n < LINES {
                match sse.next(Duration::from_secs(30)).await {
                    Some(ev) if ev.name == "line" => n += 1,
                    Some(_) => {}
                    None => break,
                }
            }
            n
        }));
    }
    let all = tokio::time::timeout(Duration::from_secs(120), connected.acquire_many(FOLLOWERS as u32)).await;
    assert!(all.is_ok(), "followers did not all connect");
    let connected_rss = rss_mib(d.pid());
    let pid = d.pid();
    let peak = tokio::spawn(async move {
        let mut peak = 0f64;
        for _ in 0..600 {
            peak = peak.max(rss_mib(pid));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    });
    let start = Instant::now();
    d.control("src", "start").await;
    let mut complete = 0;
    let mut delivered = 0;
    for t in tasks {
        let n = t.await.unwrap_or(0);
        delivered += n;
        if n == LINES {
            complete += 1;
        }
    }
    let took = start.elapsed();
    peak.abort();
    let after = rss_mib(d.pid()).max(connected_rss);
    let extra = after - before;
    vec![Row::new(
        "followers",
        extra,
        "1,000 concurrent SSE followers of one agent (1,000 lines at 500/s)",
        format!(
            "{complete}/{FOLLOWERS} got every line ({delivered} lines) in {:.1} s; +{extra:.1} MiB RSS",
            took.as_secs_f64()
        ),
        "every line to every follower",
        Some(complete == FOLLOWERS),
    )]
}

pub async fn start_100() -> Vec<Row> {
    let (_home, d) = daemon(&many(
        100,
        "a",
        "command = [\"sleep\", \"100000\"]\nautostart = false",
    ));
    let ids: Vec<String> = list(&d).await.into_iter().map(|a| a.id).collect();
    let mut times = vec![];
    for _ in 0..RUNS {
        let start = Instant::now();
        let res = futures_util::future::join_all(ids.iter().map(|id| d.control(id, "start"))).await;
        times.push(ms(start.elapsed()));
        assert!(res.iter().all(|a| a.status == Status::Running));
        futures_util::future::join_all(ids.iter().map(|id| d.control(id, "stop"))).await;
    }
    let t = median(times);
    vec![Row::new(
        "start_100",
        t,
        "start 100 agents (start_window 0), 100 concurrent API calls",
        format!("{t:.1} ms"),
        "< 200 ms",
        Some(t < 200.0),
    )]
}

pub async fn restart_one() -> Vec<Row> {
    let (_home, d) = daemon("[agents.one]\ncommand = [\"sleep\", \"100000\"]\n");
    d.wait_status("one", Status::Running).await;
    let mut times = vec![];
    for _ in 0..20 {
        let start = Instant::now();
        let a = d.control("one", "restart").await;
        times.push(ms(start.elapsed()));
        assert_eq!(a.status, Status::Running);
    }
    let s = sorted(times);
    let (p50, p90) = (percentile(&s, 50.0), percentile(&s, 90.0));
    vec![Row::new(
        "restart",
        p50,
        "restart one agent (start_window 0), 20 restarts",
        format!("median {p50:.1} ms, p90 {p90:.1} ms"),
        "< 50 ms",
        Some(p50 < 50.0),
    )]
}

pub async fn cli_list() -> Vec<Row> {
    let (home, d) = daemon(&many(100, "a", "command = [\"sleep\", \"100000\"]"));
    all_running(&d, 100).await;
    let run = || {
        let start = Instant::now();
        let out = std::process::Command::new(bin())
            .args(["agents", "list"])
            .env("AGENTSD_URL", &d.url)
            .env("AGENTSD_API_KEY", KEY)
            .env("AGENTSD_CA_CERT", home.path().join("state/tls/cert.pem"))
            .env("XDG_CONFIG_HOME", home.path())
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(out.stdout.len() > 100 * 20);
        ms(start.elapsed())
    };
    for _ in 0..3 {
        run();
    }
    let s = sorted((0..30).map(|_| run()).collect());
    let (p50, p90) = (percentile(&s, 50.0), percentile(&s, 90.0));
    vec![Row::new(
        "cli_list",
        p50,
        "`agentsd agents list`, whole command, 100 agents (30 runs)",
        format!("median {p50:.1} ms, p90 {p90:.1} ms"),
        "< 10 ms",
        Some(p50 < 10.0),
    )]
}

/// Waits until the daemon's RSS stops falling (or `within` passes); returns
/// the last reading and when it settled.
pub async fn settled_rss(pid: u32, within: Duration) -> (f64, Duration) {
    let t = Instant::now();
    let mut last = rss_mib(pid);
    let mut stable_since = Instant::now();
    while t.elapsed() < within {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = rss_mib(pid);
        if (now - last).abs() > 0.05 {
            stable_since = Instant::now();
        }
        last = now;
        if stable_since.elapsed() > Duration::from_secs(6) {
            break;
        }
    }
    (last, t.elapsed())
}

/// RSS after rounds of 4,150 event streams opened and dropped mid-stream.
pub async fn streams() -> Vec<Row> {
    const STREAMS: usize = 4150;
    const ROUNDS: usize = 5;
    let (_home, d) = daemon(
        "[agents.talk]\ncommand = [\"sh\", \"-c\", \"i=0; while :; do i=$((i+1)); echo $i; sleep 0.01; done\"]\n",
    );
    d.wait_status("talk", Status::Running).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = rss_mib(d.pid());
    let mut peaks = vec![];
    let mut after = vec![];
    let mut took = Duration::ZERO;
    for _ in 0..ROUNDS {
        let client = d.new_client(true).build().unwrap();
        let mut open = Vec::new();
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
        let mut tasks = Vec::new();
        for i in 0..STREAMS {
            let (client, url, sem) = (client.clone(), d.url.clone(), sem.clone());
            tasks.push(tokio::spawn(async move {
                let _p = sem.acquire().await.unwrap();
                let path = if i % 2 == 0 {
                    "/sse/agents/talk/logs?n=100"
                } else {
                    "/sse/status"
                };
                let res = client
                    .get(format!("{url}{path}"))
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .ok()?;
                let mut sse = Sse::from_response(res);
                sse.next(Duration::from_secs(10)).await?;
                Some(sse)
            }));
        }
        for t in tasks {
            if let Ok(Some(s)) = t.await {
                open.push(s);
            }
        }
        peaks.push(rss_mib(d.pid()));
        drop(open);
        drop(client);
        let (rss, t) = settled_rss(d.pid(), Duration::from_secs(30)).await;
        took = took.max(t);
        after.push(rss);
    }
    let last = *after.last().unwrap();
    let peak = peaks.iter().cloned().fold(0.0, f64::max);
    vec![Row::new(
        "streams_rss",
        last,
        "RSS after 5 rounds of 4,150 event streams opened and dropped",
        format!(
            "idle {idle:.1} MiB, peak {peak:.1}, after each round {} MiB (settled within {:.0} s)",
            after
                .iter()
                .map(|r| format!("{r:.1}"))
                .collect::<Vec<_>>()
                .join(" / "),
            took.as_secs_f64()
        ),
        "back under 2x idle within 30 s",
        Some(last < 2.0 * idle && took <= Duration::from_secs(30)),
    )]
}

/// RSS with 100 agents after 5 stop-all / start-all rounds.
pub async fn churn() -> Vec<Row> {
    let (_home, d) = daemon(&many(100, "c", "command = [\"sleep\", \"100000\"]"));
    all_running(&d, 100).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_mib(d.pid());
    let ids: Vec<String> = list(&d).await.into_iter().map(|a| a.id).collect();
    for _ in 0..5 {
        for op in ["stop", "start"] {
            let calls = ids.iter().map(|id| d.control(id, op));
            futures_util::future::join_all(calls).await;
        }
    }
    all_running(&d, 100).await;
    let (rss, _) = settled_rss(d.pid(), Duration::from_secs(30)).await;
    vec![Row::new(
        "churn_rss",
        rss,
        "daemon RSS, 100 agents, after 5 stop-all / start-all rounds",
        format!("{rss:.1} MiB (before {before:.1} MiB)"),
        "< 14 MiB",
        Some(rss < 14.0),
    )]
}

/// RSS growth per follower that stops reading during a flood.
pub async fn stalled() -> Vec<Row> {
    const LINES: u64 = 10_000_000;
    const FOLLOWERS: usize = 20;
    let (_home, d) = daemon(&format!(
        "[agents.flood]\ncommand = [\"{}\", \"--emit-fast\", \"{LINES}\"]\nautostart = false\nlog_max_size = \"1MiB\"\nlog_keep = 3\n",
        exe()
    ));
    let before = rss_mib(d.pid());
    // Each follower takes one event, then reads nothing more.
    let mut held = Vec::new();
    for _ in 0..FOLLOWERS {
        let client = d.new_client(true).build().unwrap();
        let res = client
            .get(format!("{}/sse/agents/flood/logs", d.url))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        held.push((client, Sse::from_response(res)));
    }
    let pid = d.pid();
    let peak = tokio::spawn(async move {
        let mut peak = 0f64;
        for _ in 0..1200 {
            peak = peak.max(rss_mib(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        peak
    });
    let t = Instant::now();
    d.control("flood", "start").await;
    let bytes = emit::fast_bytes(LINES);
    let deadline = Instant::now() + Duration::from_secs(55);
    loop {
        let written: u64 = std::fs::read_dir(d.home.join("logs"))
            .unwrap()
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        let a = d.agent("flood").await;
        if written > 0 && a.dropped_log_lines == 0 && t.elapsed() > Duration::from_secs(3) {
            // The flood is done once the log stops growing.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let again: u64 = std::fs::read_dir(d.home.join("logs"))
                .unwrap()
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum();
            if again == written {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let flood = t.elapsed();
    peak.abort();
    let peak = peak.await.unwrap_or_else(|_| rss_mib(pid)).max(rss_mib(pid));
    let per = (peak - before) * 1024.0 / FOLLOWERS as f64;
    drop(held);
    vec![Row::new(
        "stalled_follower",
        per,
        "RSS growth per stalled follower, 20 followers, 10M-line flood",
        format!(
            "{per:.0} KiB each (peak {peak:.1} MiB, before {before:.1} MiB; {:.0} MB flood in {:.1} s)",
            bytes as f64 / 1e6,
            flood.as_secs_f64()
        ),
        "< 256 KiB per follower",
        Some(per < 256.0),
    )]
}

/// Start-all time, memory, descriptors, list latency, idle CPU and shutdown
/// time at 100, 1,000 and 8,000 agents.
pub async fn scale() -> Vec<Row> {
    let mut rows = vec![];
    let mut per_agent = vec![];
    for n in [100usize, 1000, 8000] {
        let mut home = Home::new();
        home.log_level = "warn";
        home.write_config(&format!(
            "{DEFAULTS}{}",
            many(n, "s", "command = [\"sleep\", \"100000\"]")
        ));
        let t = Instant::now();
        let mut d = home.start();
        running_by_events(&d, n, Duration::from_secs(120)).await;
        let started = t.elapsed();
        // The daemon gives memory back once things are quiet.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let rss = rss_mib(d.pid());
        let fds = std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
            .map(|r| r.count())
            .unwrap_or(0);
        let calls = if n > 1000 { 60 } else { 200 };
        let mut times = vec![];
        for _ in 0..calls {
            let t = Instant::now();
            let res = d
                .client
                .get(format!("{}/agents", d.url))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200);
            let body = res.bytes().await.unwrap();
            times.push(ms(t.elapsed()));
            assert!(body.len() > n * 100);
        }
        let times = sorted(times);
        let cpu = cpu_percent(d.pid(), Duration::from_secs(5)).await;
        let t = Instant::now();
        let st = d.stop();
        let shutdown = t.elapsed();
        assert!(st.success(), "the daemon exited with {st}");
        per_agent.push((n, rss));
        let (p50, p99) = (percentile(&times, 50.0), percentile(&times, 99.0));
        let target = match n {
            8000 => "all running < 10 s; GET /agents p99 < 50 ms",
            1000 => "GET /agents p99 < 10 ms; RSS < 24 MiB",
            _ => "-",
        };
        let met = match n {
            8000 => Some(started < Duration::from_secs(10) && p99 < 50.0),
            1000 => Some(p99 < 10.0 && rss < 24.0),
            _ => None,
        };
        rows.push(Row::new(
            "scale",
            started.as_secs_f64(),
            format!("{n} agents: start all, RSS, fds, GET /agents, idle CPU, shutdown"),
            format!(
                "all running in {:.2} s; {rss:.1} MiB; {fds} fds; GET /agents p50 {p50:.1} / p99 {p99:.1} ms; idle CPU {cpu:.2} %; shutdown {:.2} s",
                started.as_secs_f64(),
                shutdown.as_secs_f64()
            ),
            target,
            met,
        ));
    }
    if let (Some((n0, r0)), Some((n1, r1))) = (per_agent.get(1), per_agent.get(2)) {
        let kib = (r1 - r0) * 1024.0 / (*n1 - *n0) as f64;
        rows.push(Row::new(
            "per_agent",
            kib,
            "daemon memory per additional agent (1,000 to 8,000)",
            format!("{kib:.1} KiB"),
            "< 4 KiB",
            Some(kib < 4.0),
        ));
    }
    rows
}

/// The daemon's peak RSS (VmHWM) since it was last reset.
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// 100 clients connecting at once to `/sse/status` with 8,000 agents: the
/// daemon's peak RSS while it sends each its snapshot (3 rounds, the peak
/// reset before each).
pub async fn snapshot() -> Vec<Row> {
    const N: usize = 8000;
    const CLIENTS: usize = 100;
    let mut home = Home::new();
    home.log_level = "warn";
    home.write_config(&format!(
        "{DEFAULTS}{}",
        many(N, "s", "command = [\"sleep\", \"100000\"]")
    ));
    let d = home.start();
    running_by_events(&d, N, Duration::from_secs(120)).await;
    let mut peaks = vec![];
    let mut times = vec![];
    let mut idle = 0.0;
    for _ in 0..RUNS {
        let (rss, _) = settled_rss(d.pid(), Duration::from_secs(30)).await;
        idle = rss;
        // Resets the peak to the current RSS.
        std::fs::write(format!("/proc/{}/clear_refs", d.pid()), "5").unwrap();
        let client = d.new_client(true).build().unwrap();
        let t = Instant::now();
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (client, url) = (client.clone(), d.url.clone());
                tokio::spawn(async move {
                    let res = client
                        .get(format!("{url}/sse/status"))
                        .bearer_auth(KEY)
                        .timeout(Duration::from_secs(120))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(res.status(), 200);
                    let mut sse = Sse::from_response(res);
                    let ev = sse.next(Duration::from_secs(60)).await.expect("a snapshot");
                    assert_eq!(ev.name, "snapshot");
                    let all: Vec<AgentSummary> = serde_json::from_str(&ev.data).unwrap();
                    assert_eq!(all.len(), N);
                    sse
                })
            })
            .collect();
        let mut open = vec![];
        for task in tasks {
            open.push(task.await.unwrap());
        }
        times.push(t.elapsed().as_secs_f64());
        peaks.push(peak_rss_mib(d.pid()) - idle);
        drop(open);
    }
    let (peak, took) = (median(peaks.clone()), median(times));
    vec![Row::new(
        "snapshot_rss",
        peak,
        "100 clients connecting at once to /sse/status, 8,000 agents: daemon peak RSS",
        format!(
            "idle {idle:.1} MiB, peak +{peak:.1} MiB (rounds {}), all 100 snapshots in {took:.2} s",
            peaks
                .iter()
                .map(|p| format!("+{p:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        ),
        "-",
        None,
    )]
}

/// Waits (at most `within`) until every agent is running, following
/// `/sse/status` (polling the list of thousands would load the daemon it
/// measures).
pub async fn running_by_events(d: &Daemon, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    let mut sse = Sse::open(d, "/sse/status", None).await;
    let mut running = std::collections::HashSet::new();
    while running.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(ev) = sse.next(left).await else {
            panic!("only {} of {n} agents running", running.len());
        };
        match ev.name.as_str() {
            "snapshot" => {
                let all: Vec<AgentSummary> = serde_json::from_str(&ev.data).unwrap();
                running = all
                    .into_iter()
                    .filter(|a| a.status == Status::Running)
                    .map(|a| a.id)
                    .collect();
            }
            "status" => {
                let e: agentsd::wire::StatusEvent = serde_json::from_str(&ev.data).unwrap();
                if e.new_status == Status::Running {
                    running.insert(e.agent_id);
                } else {
                    running.remove(&e.agent_id);
                }
            }
            _ => {}
        }
    }
}

/// The resource sampler's cost with 1,000 agents, and `GET /metrics`.
pub async fn observe() -> Vec<Row> {
    const N: usize = 1000;
    let mut rows = vec![];
    // Sampling on (the default 5 s) and off, same agents: the difference
    // is the sampler's.
    let mut cpu = [0.0f64; 2];
    for (i, interval) in ["5s", "0s"].iter().enumerate() {
        let mut home = Home::new();
        home.log_level = "warn";
        home.write_config(&format!(
            "{DEFAULTS}{}",
            many(N, "o", "command = [\"sleep\", \"100000\"]")
        ));
        let text = std::fs::read_to_string(home.config_path()).unwrap().replace(
            "log_dir = \"logs\"\n",
            &format!("log_dir = \"logs\"\nsample_interval = \"{interval}\"\n"),
        );
        std::fs::write(home.config_path(), text).unwrap();
        let d = home.start();
        running_by_events(&d, N, Duration::from_secs(60)).await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        cpu[i] = cpu_percent(d.pid(), Duration::from_secs(30)).await;
        if i == 0 {
            for _ in 0..10 {
                let _ = d.get("/metrics").await;
            }
            let mut times = vec![];
            for _ in 0..200 {
                let t = Instant::now();
                let res = d
                    .client
                    .get(format!("{}/metrics", d.url))
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .unwrap();
                let body = res.bytes().await.unwrap();
                times.push(ms(t.elapsed()));
                assert!(body.len() > N * 100);
            }
            let s = sorted(times);
            let (p50, p99) = (percentile(&s, 50.0), percentile(&s, 99.0));
            rows.push(Row::new(
                "metrics_p99",
                p99,
                "GET /metrics with 1,000 agents (200 requests)",
                format!("p50 {p50:.2} ms, p99 {p99:.2} ms"),
                "p99 < 20 ms",
                Some(p99 < 20.0),
            ));
        }
    }
    let sampler = (cpu[0] - cpu[1]).max(0.0);
    rows.push(Row::new(
        "sampler_cpu",
        sampler,
        "resource sampler, 1,000 agents, every 5 s (CPU with sampling minus without, 30 s each)",
        format!(
            "{sampler:.3} % of one core ({:.3} % with, {:.3} % without)",
            cpu[0], cpu[1]
        ),
        "< 1 % of one core",
        Some(sampler < 1.0),
    ));
    rows
}

/// `agentsd top` on a 120x40 pseudo-terminal watching 100 agents that each
/// print a line a second (the selected one's log followed, uptimes ticking,
/// resources every 5 s): its CPU, and the daemon's while it serves it,
/// beside the daemon's alone under the same load.
pub async fn top() -> Vec<Row> {
    let (home, d) = daemon(&many(
        100,
        "t",
        "command = [\"sh\", \"-c\", \"while :; do echo tick; sleep 1; done\"]",
    ));
    all_running(&d, 100).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let alone = cpu_percent(d.pid(), Duration::from_secs(10)).await;
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("top")
        .env("AGENTSD_URL", &d.url)
        .env("AGENTSD_API_KEY", KEY)
        .env("AGENTSD_CA_CERT", home.path().join("state/tls/cert.pem"))
        .env("XDG_CONFIG_HOME", home.path())
        .env_remove("NO_COLOR");
    let pty = Pty::spawn(&cmd, 40, 120);
    pty.wait_screen(Duration::from_secs(20), "top showing the agents and a log", |s| {
        s.contains("● live") && s.contains("t0000") && s.contains("tick")
    });
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pty.pid())).unwrap_or_default();
    assert!(
        cmdline.split(|b| *b == 0).any(|a| a == b"top"),
        "the measured process is top itself"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut top_cpu, mut daemon_cpu) = (vec![], vec![]);
    for _ in 0..RUNS {
        let (t, dm) = tokio::join!(
            cpu_percent(pty.pid(), Duration::from_secs(10)),
            cpu_percent(d.pid(), Duration::from_secs(10))
        );
        top_cpu.push(t);
        daemon_cpu.push(dm);
    }
    let rss = rss_mib(pty.pid());
    let (t, dm) = (median(top_cpu), median(daemon_cpu));
    vec![
        Row::new(
            "top_cpu",
            t,
            "`agentsd top`, 100 agents each printing a line a second (3 x 10 s)",
            format!("{t:.2} % of one core ({rss:.1} MiB RSS)"),
            "< 1 %",
            Some(t < 1.0),
        ),
        Row::new(
            "top_daemon_cpu",
            dm,
            "daemon CPU while serving `agentsd top`, same load (3 x 10 s)",
            format!("{dm:.3} % of one core ({alone:.3} % without top)"),
            "< 0.5 %",
            Some(dm < 0.5),
        ),
    ]
}
