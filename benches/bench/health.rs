//! Issue #22's figures: what health probes cost the daemon, and how fast a
//! chain of dependency waves comes up. The probes ask an HTTP server of the
//! benchmark's own (on 127.0.0.1, always 200): the daemon's side of a probe
//! is what is measured, not the agent's.

use crate::measures::all_running_within;
use crate::stats::{RUNS, Row, cpu_percent, median};
use crate::util::{Daemon, Home};
use agentsd::wire::{HealthState, HistoryEntry, Status};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// An HTTP server answering 200 to every request, counting them.
async fn server() -> (u16, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                count.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    (port, served)
}

fn start(config: &str) -> (Home, Daemon) {
    let mut home = Home::new();
    home.log_level = "warn";
    // No resource sampler: its cost is not the probes'.
    home.write_config(&format!(
        "sample_interval = \"0s\"\n[defaults]\nstart_window = \"0s\"\nstop_timeout = \"5s\"\n{config}"
    ));
    let d = home.start();
    (home, d)
}

/// 1,000 agents with an HTTP probe every 5 s: the daemon's CPU, beside
/// the same 1,000 agents without probes.
pub async fn probes() -> Vec<Row> {
    const N: usize = 1000;
    let (port, served) = server().await;
    let mut figures = Vec::new();
    for probed in [false, true] {
        let health = if probed {
            format!(
                "health = {{ http = \"http://127.0.0.1:{port}/healthz\", interval = \"5s\", timeout = \"2s\" }}\n"
            )
        } else {
            String::new()
        };
        let agents: String = (0..N)
            .map(|i| format!("[agents.p{i:04}]\ncommand = [\"sleep\", \"100000\"]\n{health}"))
            .collect();
        let (_home, d) = start(&agents);
        all_running_within(&d, N, Duration::from_secs(120)).await;
        // Past the start cadence: every probe on its interval.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let before = served.load(Ordering::Relaxed);
        let t = Instant::now();
        let mut cpu = Vec::new();
        for _ in 0..RUNS {
            cpu.push(cpu_percent(d.pid(), Duration::from_secs(10)).await);
        }
        let rate = (served.load(Ordering::Relaxed) - before) as f64 / t.elapsed().as_secs_f64();
        figures.push((median(cpu), rate));
    }
    let ((base, _), (with, rate)) = (figures[0], figures[1]);
    vec![
        Row::new(
            "probes_1000",
            with,
            "daemon CPU, 1,000 agents with an HTTP probe every 5 s (3 x 10 s, sampler off)",
            format!("{with:.2} % of one core ({rate:.0} probes/s answered); without probes {base:.2} %"),
            "< 2 %",
            Some(with < 2.0),
        ),
        Row::new(
            "probes_1000_cost",
            with - base,
            "of which the probes (with minus without)",
            format!("{:.2} % of one core", with - base),
            "-",
            None,
        ),
    ]
}

/// 100 agents in 10 waves, each agent depending on every agent of the wave
/// before being healthy: from the last wave's condition holding (the last
/// agent of wave 9 healthy) to all of wave 10 healthy, by the daemon's own
/// history timestamps.
pub async fn waves() -> Vec<Row> {
    const WAVES: usize = 10;
    const WIDTH: usize = 10;
    let (port, _) = server().await;
    let mut last_lag = Vec::new();
    let mut wave_lag = Vec::new();
    let mut total = Vec::new();
    for _ in 0..RUNS {
        let mut config = String::new();
        for w in 0..WAVES {
            for i in 0..WIDTH {
                let deps = if w == 0 {
                    String::new()
                } else {
                    let list: Vec<String> = (0..WIDTH)
                        .map(|j| format!("w{}a{j} = \"healthy\"", w - 1))
                        .collect();
                    format!("depends_on = {{ {} }}\n", list.join(", "))
                };
                config.push_str(&format!(
                    "[agents.w{w}a{i}]\ncommand = [\"sleep\", \"100000\"]\n{deps}\
                     health = {{ http = \"http://127.0.0.1:{port}/\", interval = \"5s\", timeout = \"1s\" }}\n"
                ));
            }
        }
        let (_home, d) = start(&config);
        all_running_within(&d, WAVES * WIDTH, Duration::from_secs(60)).await;
        // Each agent's first healthy row and first start, in ms.
        let mut healthy = vec![vec![0u128; WIDTH]; WAVES];
        let mut first_start = u128::MAX;
        for (w, row) in healthy.iter_mut().enumerate() {
            for (i, at) in row.iter_mut().enumerate() {
                let h: Vec<HistoryEntry> =
                    serde_json::from_value(d.get(&format!("/agents/w{w}a{i}/history?limit=50")).await)
                        .unwrap();
                let ms = |e: &HistoryEntry| {
                    humantime::parse_rfc3339(&e.at)
                        .unwrap()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis()
                };
                *at = h
                    .iter()
                    .filter(|e| e.health == Some(HealthState::Healthy))
                    .map(ms)
                    .min()
                    .expect("a healthy row");
                if w == 0 {
                    let s = h
                        .iter()
                        .filter(|e| e.new_status == Status::Starting)
                        .map(ms)
                        .min()
                        .unwrap();
                    first_start = first_start.min(s);
                }
            }
        }
        let done = |w: usize| *healthy[w].iter().max().unwrap();
        last_lag.push((done(WAVES - 1) - done(WAVES - 2)) as f64);
        for w in 1..WAVES {
            wave_lag.push((done(w) - done(w - 1)) as f64);
        }
        total.push((done(WAVES - 1) - first_start) as f64);
    }
    let (last, each, all) = (median(last_lag), median(wave_lag), median(total));
    vec![Row::new(
        "waves_100",
        last,
        "100 agents in 10 dependency waves: last wave all healthy after its condition held (history times)",
        format!("{last:.0} ms (median wave {each:.0} ms; all 100 healthy {all:.0} ms after the first start)"),
        "< 1 s",
        Some(last < 1000.0),
    )]
}
