//! Issue #23's figures: an in-place upgrade with 100 agents each writing
//! a line every 10 ms. The daemon runs from a copy of the binary; each
//! upgrade puts a new copy at that path first (a new file, as a package
//! does). Measured from the benchmark's side: the handover time is from
//! sending `POST /upgrade` to the first `/health` answer (a new TLS
//! connection each time, its body read) that shows the new `upgraded_at`;
//! the capture pause is the longest gap between two lines the daemon
//! stamped (`log_timestamps`, milliseconds) in any agent's log around the
//! upgrade, less nothing (an agent writes every 10 ms, so 10 ms is the
//! floor); and every log is checked to be 1, 2, 3, ... with none lost or
//! repeated.

use crate::measures::all_running_within;
use crate::stats::{RUNS, Row, median};
use crate::util::{Home, bin};
use std::time::{Duration, Instant, SystemTime};

const N: usize = 100;

/// Prints 1, 2, 3, ... a line every 10 ms.
const COUNTER: &str = r#"command = ["perl", "-e", '$| = 1; my $i = 0; while (1) { $i++; print "$i\n"; select(undef, undef, undef, 0.01) }']"#;

fn put_new_binary(exe: &std::path::Path) {
    let tmp = exe.with_extension("new");
    std::fs::copy(bin(), &tmp).unwrap();
    std::fs::rename(&tmp, exe).unwrap();
}

/// The daemon's stamp at the start of a log line, in ms since the epoch.
fn stamp(line: &str) -> Option<(u128, &str)> {
    let (at, rest) = line.split_once(' ')?;
    let t = humantime::parse_rfc3339(at).ok()?;
    Some((t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis(), rest))
}

/// The longest gap (ms) between two consecutive lines stamped within
/// `[from, to]` in any of the agents' logs, and how many lines are out of
/// place (a log must be 1, 2, 3, ...: a line lost or repeated).
fn longest_pause(home: &Home, from: u128, to: u128) -> (u128, usize) {
    let (mut longest, mut wrong) = (0, 0);
    for i in 0..N {
        let id = format!("u{i:03}");
        let text = std::fs::read_to_string(home.log_path(&id)).unwrap();
        let mut prev: Option<u128> = None;
        let mut expect = 1u64;
        for line in text.lines() {
            let (at, n) = stamp(line).unwrap_or_else(|| panic!("{id}: no stamp on {line:?}"));
            match n.parse::<u64>() {
                Ok(n) if n == expect => {}
                Ok(n) => {
                    eprintln!("{id}: line {n} where {expect} was due");
                    wrong += 1;
                    expect = n;
                }
                Err(_) => wrong += 1,
            }
            expect += 1;
            if at >= from && at <= to {
                if let Some(p) = prev {
                    longest = longest.max(at - p);
                }
                prev = Some(at);
            } else if at < from {
                prev = Some(at);
            }
        }
    }
    (longest, wrong)
}

fn epoch_ms() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

pub async fn upgrade() -> Vec<Row> {
    let mut home = Home::new();
    home.log_level = "info";
    let dir = home.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("agentsd");
    std::fs::copy(bin(), &exe).unwrap();
    let mut config =
        String::from("[defaults]\nstart_window = \"0s\"\nstop_timeout = \"5s\"\nlog_timestamps = true\n");
    for i in 0..N {
        config.push_str(&format!("[agents.u{i:03}]\n{COUNTER}\n"));
    }
    home.write_config(&config);
    let d = home.start_via_shell(&format!("exec '{}' \"$@\"", exe.display()));
    all_running_within(&d, N, Duration::from_secs(60)).await;
    let fresh = d
        .new_client(true)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let (mut handovers, mut pauses, mut wrong) = (Vec::new(), Vec::new(), 0);
    for _ in 0..RUNS {
        tokio::time::sleep(Duration::from_millis(500)).await;
        put_new_binary(&exe);
        let before: serde_json::Value = d.get("/health").await;
        let (from, t0) = (epoch_ms(), Instant::now());
        let (status, body) = d.request(reqwest::Method::POST, "/upgrade").await;
        assert_eq!(status, 202, "{body}");
        let took = loop {
            let answered = fresh
                .get(format!("{}/health", d.url))
                .bearer_auth(&d.key)
                .send()
                .await;
            if let Ok(r) = answered {
                let h: serde_json::Value = r.json().await.unwrap_or_default();
                if h["upgraded_at"].is_string() && h["upgraded_at"] != before["upgraded_at"] {
                    assert_eq!(h["pid"], d.pid(), "not in place");
                    break t0.elapsed();
                }
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "no new image after 30 s");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        handovers.push(took.as_secs_f64() * 1000.0);
        // The lines the agents wrote meanwhile are logged by now.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let to = from + took.as_millis() + 500;
        let (pause, out_of_place) = longest_pause(&home, from.saturating_sub(500), to);
        pauses.push(pause as f64);
        wrong += out_of_place;
    }
    let said = d.stderr_text();
    let split: Vec<&str> = said
        .lines()
        .filter_map(|l| l.split("since asked").next()?.rsplit('(').next())
        .filter(|s| s.ends_with(" ms "))
        .collect();
    println!(
        "upgrade: API back after {handovers:?} ms; longest capture pause {pauses:?} ms; exec after ({split:?} since asked)"
    );
    let (h, p) = (median(handovers.clone()), median(pauses.clone()));
    let worst = handovers.iter().cloned().fold(0.0, f64::max);
    vec![
        Row::new(
            "upgrade_handover_ms",
            h,
            format!(
                "in-place upgrade, {N} agents writing every 10 ms: POST /upgrade to the new image answering /health (new TLS connection)"
            ),
            format!("{h:.0} ms (worst of {RUNS}: {worst:.0} ms)"),
            "< 200 ms",
            Some(worst < 200.0),
        ),
        Row::new(
            "upgrade_capture_pause_ms",
            p,
            "the same: longest gap between two logged lines of any agent around the upgrade (10 ms is the agents' own pace); no line lost or repeated",
            format!("{p:.0} ms; {wrong} lines lost or repeated"),
            "no line lost",
            Some(wrong == 0),
        ),
    ]
}
