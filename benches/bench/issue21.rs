//! Every row of issue #21's table, each measured the way its row says
//! (medians of 3 runs), with as few daemon starts as the rows allow: one
//! daemon of 1,000 agents, one of 100, one of 8,000 (starting 8,000 agents
//! takes seconds). `cargo bench --bench bench -- issue21`.

use crate::measures::{DEFAULTS, lag, many, running_by_events};
use crate::stats::{RUNS, Row, cpu_percent, median, ms, percentile, sorted};
use crate::util::{Daemon, Home, KEY, bin};
use agentsd::wire::Status;
use std::time::{Duration, Instant};

fn start(n: usize) -> (Home, Daemon) {
    let mut home = Home::new();
    home.log_level = "warn";
    home.write_config(&format!(
        "{DEFAULTS}{}",
        many(n, "a", "command = [\"sleep\", \"100000\"]")
    ));
    let d = home.start();
    (home, d)
}

/// `count` requests of `path` with the harness's client (reqwest, HTTP/2
/// over TLS, one connection), each timed until its whole body is read, in
/// `RUNS` runs: the medians of the runs' p50 and p99, and the body's size.
async fn timed_gets(d: &Daemon, path: &str, count: usize) -> (f64, f64, usize) {
    let (mut p50, mut p99, mut size) = (vec![], vec![], 0);
    for _ in 0..RUNS {
        let mut t = Vec::with_capacity(count);
        for _ in 0..count {
            let start = Instant::now();
            let res = d
                .client
                .get(format!("{}{path}", d.url))
                .bearer_auth(KEY)
                .send()
                .await
                .unwrap();
            assert!(res.status().is_success(), "{path}: {}", res.status());
            let body = res.bytes().await.unwrap();
            t.push(ms(start.elapsed()));
            size = body.len();
        }
        let s = sorted(t);
        p50.push(percentile(&s, 50.0));
        p99.push(percentile(&s, 99.0));
    }
    (median(p50), median(p99), size)
}

/// The median of `RUNS` medians of `per_run` runs of the real CLI (a new
/// process each: config, trust, TLS handshake, request, output), and the
/// overall p90.
fn timed_cli(home: &Home, d: &Daemon, args: &[&str], per_run: usize) -> (f64, f64) {
    let run = || {
        let start = Instant::now();
        let out = std::process::Command::new(bin())
            .args(args)
            .env("AGENTSD_URL", &d.url)
            .env("AGENTSD_API_KEY", KEY)
            .env("AGENTSD_CA_CERT", home.path().join("state/tls/cert.pem"))
            .env("XDG_CONFIG_HOME", home.path())
            .output()
            .unwrap();
        let took = ms(start.elapsed());
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (took, out.stdout.len())
    };
    // Warm the page cache with the binary.
    for _ in 0..3 {
        run();
    }
    let (mut medians, mut all) = (vec![], vec![]);
    for _ in 0..RUNS {
        let t: Vec<f64> = (0..per_run).map(|_| run().0).collect();
        all.extend(t.iter().copied());
        medians.push(median(t));
    }
    (median(medians), percentile(&sorted(all), 90.0))
}

pub async fn issue21() -> Vec<Row> {
    let mut rows = vec![];
    // Row 1: lag (its own daemon, one agent writing 500 lines a second).
    for mut r in lag().await {
        r.target = "p99 < 1 ms".into();
        r.met = Some(r.value < 1.0);
        rows.push(r);
    }
    rows.extend(thousand().await);
    rows.extend(hundred().await);
    rows.extend(eight_thousand().await);
    rows
}

/// `GET /agents` and `GET /metrics` with 1,000 agents.
async fn thousand() -> Vec<Row> {
    const N: usize = 1000;
    let (_home, d) = start(N);
    running_by_events(&d, N, Duration::from_secs(60)).await;
    for _ in 0..20 {
        d.get("/agents").await;
        let _ = d.metrics().await;
    }
    let (l50, l99, lsize) = timed_gets(&d, "/agents", 300).await;
    assert!(lsize > N * 100);
    let (m50, m99, msize) = timed_gets(&d, "/metrics", 200).await;
    assert!(msize > N * 100);
    vec![
        Row::new(
            "i21_list_1000",
            l99,
            "GET /agents, 1,000 agents (reqwest over HTTP/2, body read; 3 x 300)",
            format!("p50 {l50:.2} ms, p99 {l99:.2} ms"),
            "p99 < 5 ms",
            Some(l99 < 5.0),
        ),
        Row::new(
            "i21_metrics_1000",
            m99,
            "GET /metrics, 1,000 agents (reqwest over HTTP/2, body read; 3 x 200)",
            format!("p50 {m50:.2} ms, p99 {m99:.2} ms"),
            "p99 < 20 ms",
            Some(m99 < 20.0),
        ),
    ]
}

/// Idle CPU, then the whole CLI commands, with 100 agents.
async fn hundred() -> Vec<Row> {
    const N: usize = 100;
    let (home, d) = start(N);
    running_by_events(&d, N, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cpu = vec![];
    for _ in 0..RUNS {
        // Whole sampler periods (5 s each).
        cpu.push(cpu_percent(d.pid(), Duration::from_secs(10)).await);
    }
    let cpu = median(cpu);
    let (l50, l90) = timed_cli(&home, &d, &["agents", "list"], 10);
    let (r50, r90) = timed_cli(&home, &d, &["agents", "restart", "a0001"], 10);
    assert_eq!(d.agent("a0001").await.status, Status::Running);
    vec![
        Row::new(
            "i21_cpu_100",
            cpu,
            "daemon CPU, 100 idle agents, default sampler (5 s), no client (3 x 10 s)",
            format!("{cpu:.3} % of one core"),
            "< 0.4 %",
            Some(cpu < 0.4),
        ),
        Row::new(
            "i21_cli_restart",
            r50,
            "`agentsd agents restart a0001`, whole command (spawned process to exit), 100 agents (3 x 10)",
            format!("median {r50:.1} ms, p90 {r90:.1} ms"),
            "< 5 ms",
            Some(r50 < 5.0),
        ),
        Row::new(
            "i21_cli_list",
            l50,
            "`agentsd agents list`, whole command (spawned process to exit), 100 agents (3 x 10)",
            format!("median {l50:.1} ms, p90 {l90:.1} ms"),
            "< 5 ms",
            Some(l50 < 5.0),
        ),
    ]
}

/// Idle CPU, the full list, an empty filtered list and `/health` with
/// 8,000 agents, from one daemon start.
async fn eight_thousand() -> Vec<Row> {
    const N: usize = 8000;
    let (_home, d) = start(N);
    running_by_events(&d, N, Duration::from_secs(120)).await;
    // Past the start's burst (and a few sampler periods).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut cpu = vec![];
    for _ in 0..RUNS {
        cpu.push(cpu_percent(d.pid(), Duration::from_secs(10)).await);
    }
    let cpu = median(cpu);
    let (a50, a99, asize) = timed_gets(&d, "/agents", 40).await;
    assert!(asize > N * 100);
    let (s50, s99, ssize) = timed_gets(&d, "/agents?status=stopped", 100).await;
    assert!(ssize < 10, "the filtered list is not empty: {ssize} bytes");
    let (h50, h99, _) = timed_gets(&d, "/health", 100).await;
    vec![
        Row::new(
            "i21_list_8000",
            a99,
            "GET /agents, 8,000 agents (reqwest over HTTP/2, whole body read; 3 x 40)",
            format!("p50 {a50:.1} ms, p99 {a99:.1} ms ({:.1} MB)", asize as f64 / 1e6),
            "p99 < 50 ms",
            Some(a99 < 50.0),
        ),
        Row::new(
            "i21_stopped_8000",
            s50,
            "GET /agents?status=stopped (empty answer), 8,000 agents (reqwest, body read; 3 x 100)",
            format!("p50 {s50:.2} ms, p99 {s99:.2} ms"),
            "< 5 ms (p50)",
            Some(s50 < 5.0),
        ),
        Row::new(
            "i21_health_8000",
            h50,
            "GET /health with a key, 8,000 agents (reqwest, body read; 3 x 100)",
            format!("p50 {h50:.2} ms, p99 {h99:.2} ms"),
            "< 2 ms (p50)",
            Some(h50 < 2.0),
        ),
        Row::new(
            "i21_cpu_8000",
            cpu,
            "daemon CPU, 8,000 idle agents, default sampler, no client (3 x 10 s)",
            format!("{cpu:.3} % of one core"),
            "< 1 %",
            Some(cpu < 1.0),
        ),
    ]
}
