//! Figures: percentiles, medians, process readings, and the table.

use std::time::Duration;

pub const RUNS: usize = 3;

/// One line of the result table.
pub struct Row {
    /// Names the figure for comparisons (e.g. with supervisord).
    pub key: &'static str,
    /// The figure as a number, in the unit the comparison uses.
    pub value: f64,
    pub what: String,
    pub figure: String,
    pub target: String,
    /// None when there is no target to meet.
    pub met: Option<bool>,
}

impl Row {
    pub fn new(
        key: &'static str,
        value: f64,
        what: impl Into<String>,
        figure: impl Into<String>,
        target: impl Into<String>,
        met: Option<bool>,
    ) -> Row {
        Row {
            key,
            value,
            what: what.into(),
            figure: figure.into(),
            target: target.into(),
            met,
        }
    }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

pub fn median(v: Vec<f64>) -> f64 {
    percentile(&sorted(v), 50.0)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Resident memory of a process, in MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(f64::NAN)
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based).
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // USER_HZ: what /proc counts in, 100 on every Linux architecture.
    let hz = 100.0;
    Duration::from_secs_f64((ticks(14) + ticks(15)) as f64 / hz)
}

/// CPU use of `pid` over `window`, in percent of one core.
pub async fn cpu_percent(pid: u32, window: Duration) -> f64 {
    let before = cpu_time(pid);
    let t = std::time::Instant::now();
    tokio::time::sleep(window).await;
    let used = cpu_time(pid).saturating_sub(before);
    used.as_secs_f64() / t.elapsed().as_secs_f64() * 100.0
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kib| format!("{:.0} GiB", kib / 1024.0 / 1024.0))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    format!("{cpu}, {cores} cores, {mem}, Linux {kernel}")
}

pub fn print_table(rows: &[Row]) {
    let w0 = rows.iter().map(|r| r.what.len()).max().unwrap_or(0).max(4);
    let w1 = rows.iter().map(|r| r.figure.len()).max().unwrap_or(0).max(6);
    let w2 = rows.iter().map(|r| r.target.len()).max().unwrap_or(0).max(6);
    println!(
        "| {:<w0$} | {:<w1$} | {:<w2$} | met |",
        "what", "figure", "target"
    );
    println!(
        "|{}|{}|{}|-----|",
        "-".repeat(w0 + 2),
        "-".repeat(w1 + 2),
        "-".repeat(w2 + 2)
    );
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        println!(
            "| {:<w0$} | {:<w1$} | {:<w2$} | {met:<3} |",
            r.what, r.figure, r.target
        );
    }
}
