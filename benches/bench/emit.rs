//! The agents the benchmark measures: this same executable, re-run.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `--emit-timed COUNT EVERY_MS WAIT_MS`: after WAIT_MS, COUNT lines holding
/// the time they were written (ns since the epoch), one every EVERY_MS.
/// `--emit-fast COUNT`: COUNT numbered lines as fast as the pipe takes them.
pub fn run(args: &[String]) -> Option<i32> {
    let n = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    match args.first().map(String::as_str) {
        Some("--emit-timed") => {
            std::thread::sleep(Duration::from_millis(n(3)));
            let mut out = std::io::stdout().lock();
            let start = std::time::Instant::now();
            for i in 0..n(1) {
                // Paced against the start, so that a slow write does not shift the rest.
                let due = start + Duration::from_millis(i * n(2));
                if let Some(d) = due.checked_duration_since(std::time::Instant::now()) {
                    std::thread::sleep(d);
                }
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
                if writeln!(out, "{now}").and_then(|_| out.flush()).is_err() {
                    return Some(1);
                }
            }
            std::thread::sleep(Duration::from_secs(3600));
            Some(0)
        }
        Some("--emit-fast") => {
            let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
            for i in 0..n(1) {
                if writeln!(out, "line {i:07}").is_err() {
                    return Some(1);
                }
            }
            let _ = out.flush();
            drop(out);
            std::thread::sleep(Duration::from_secs(3600));
            Some(0)
        }
        _ => None,
    }
}

/// Bytes `--emit-fast COUNT` writes.
pub fn fast_bytes(count: u64) -> u64 {
    count * "line 0000000\n".len() as u64
}
