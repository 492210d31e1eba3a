//! The same measures for supervisord, where they apply.

use crate::stats::{RUNS, Row, cpu_percent, median, ms, percentile, rss_mib, sorted};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Supervisord {
    daemon: PathBuf,
    ctl: PathBuf,
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

/// Only with this set to 1 may the benchmark install anything system-wide.
pub const INSTALL_VAR: &str = "AGENTSD_BENCH_INSTALL";

impl Supervisord {
    /// supervisord from PATH; else, only if `AGENTSD_BENCH_INSTALL=1`,
    /// installed from Debian's package (as root, with apt-get). Otherwise
    /// why the comparison is skipped, and how to enable it.
    pub fn find_or_install() -> Result<Supervisord, String> {
        if which("supervisord").is_none() {
            if std::env::var(INSTALL_VAR).as_deref() != Ok("1") {
                return Err(format!(
                    "supervisord is not installed: comparison skipped (install it, e.g. `apt-get install supervisor`, or run with {INSTALL_VAR}=1 as root to let the benchmark install Debian's package)"
                ));
            }
            if !nix::unistd::geteuid().is_root() || which("apt-get").is_none() {
                return Err(format!(
                    "supervisord is not installed, and {INSTALL_VAR}=1 needs root and apt-get to install it: comparison skipped"
                ));
            }
            println!(
                "installing supervisord (apt-get install supervisor, as {INSTALL_VAR}=1 asks) for the comparison..."
            );
            let quiet = |args: &[&str]| {
                Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            };
            if !quiet(&["install", "-y", "-q", "supervisor"]) {
                quiet(&["update", "-q"]);
                quiet(&["install", "-y", "-q", "supervisor"]);
            }
        }
        match (which("supervisord"), which("supervisorctl")) {
            (Some(daemon), Some(ctl)) => Ok(Supervisord { daemon, ctl }),
            _ => Err(
                "supervisord is not available (apt-get install supervisor failed?): comparison skipped"
                    .into(),
            ),
        }
    }
}

struct Running {
    dir: tempfile::TempDir,
    child: Child,
    ctl: PathBuf,
}

impl Running {
    fn start(sup: &Supervisord, programs: &str) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let conf = format!(
            "[unix_http_server]\nfile={d}/sock\n\n[supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/pid\nchildlogdir={d}\n\n\
             [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
             [supervisorctl]\nserverurl=unix://{d}/sock\n\n{programs}"
        );
        std::fs::write(dir.path().join("supervisord.conf"), conf).unwrap();
        let child = Command::new(&sup.daemon)
            .arg("-c")
            .arg(dir.path().join("supervisord.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Running {
            dir,
            child,
            ctl: sup.ctl.clone(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !r.ctl(&["pid"]).0 {
            assert!(Instant::now() < deadline, "supervisord did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    fn ctl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(&self.ctl)
            .arg("-c")
            .arg(self.dir.path().join("supervisord.conf"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn wait_running(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let running = self
                .ctl(&["status"])
                .1
                .lines()
                .filter(|l| l.contains("RUNNING"))
                .count();
            if running >= n {
                return;
            }
            assert!(Instant::now() < deadline, "supervisord: {running} of {n} running");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn programs(n: usize, command: &str, autostart: bool) -> String {
    (0..n)
        .map(|i| format!("[program:a{i:04}]\ncommand={command}\nautostart={autostart}\nstartsecs=0\nautorestart=false\nstopasgroup=true\nkillasgroup=true\n\n"))
        .collect()
}

fn ratio(rows: &[Row], key: &str, theirs: f64) -> String {
    match rows.iter().find(|r| r.key == key) {
        Some(r) if theirs > 0.0 && r.value > 0.0 => format!(
            "agentsd/supervisord = {:.3} ({:.0}x less)",
            r.value / theirs,
            theirs / r.value
        ),
        _ => "agentsd not measured in this run".into(),
    }
}

pub fn compare(sup: &Supervisord, rows: &mut Vec<Row>) {
    let version = Command::new(&sup.daemon)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut out = vec![];
    {
        let s = Running::start(sup, &programs(100, "sleep 100000", true));
        s.wait_running(100);
        std::thread::sleep(Duration::from_secs(2));
        let rss = rss_mib(s.pid());
        out.push(Row::new(
            "",
            rss,
            format!("supervisord {version}: memory, 100 idle programs"),
            format!("{rss:.1} MiB RSS"),
            ratio(rows, "rss_100", rss),
            None,
        ));
        let mut t = vec![];
        for _ in 0..3 {
            s.ctl(&["status"]);
        }
        for _ in 0..30 {
            let start = Instant::now();
            s.ctl(&["status"]);
            t.push(ms(start.elapsed()));
        }
        let m = median(t);
        out.push(Row::new(
            "",
            m,
            "supervisord: `supervisorctl status`, 100 programs (30 runs)",
            format!("median {m:.1} ms"),
            ratio(rows, "cli_list", m),
            None,
        ));
    }
    {
        let s = Running::start(sup, &programs(100, "sleep 100000", false));
        let mut t = vec![];
        for _ in 0..RUNS {
            let start = Instant::now();
            s.ctl(&["start", "all"]);
            t.push(ms(start.elapsed()));
            s.ctl(&["stop", "all"]);
        }
        let m = median(t);
        out.push(Row::new(
            "",
            m,
            "supervisord: `supervisorctl start all`, 100 programs (startsecs 0)",
            format!("{m:.1} ms"),
            ratio(rows, "start_100", m),
            None,
        ));
    }
    {
        let s = Running::start(
            sup,
            &programs(100, "sh -c 'while :; do echo tick; sleep 1; done'", true),
        );
        s.wait_running(100);
        std::thread::sleep(Duration::from_secs(2));
        let cpu = median(
            (0..RUNS)
                .map(|_| rt.block_on(cpu_percent(s.pid(), Duration::from_secs(10))))
                .collect(),
        );
        out.push(Row::new(
            "",
            cpu,
            "supervisord: CPU, 100 programs each printing a line a second",
            format!("{cpu:.3} % of one core"),
            ratio(rows, "cpu_busy", cpu),
            None,
        ));
    }
    {
        let exe = std::env::current_exe().unwrap();
        let s = Running::start(
            sup,
            &format!(
                "[program:lag]\ncommand={} --emit-timed 500 10 2000\nautostart=true\nstartsecs=0\n",
                exe.display()
            ),
        );
        s.wait_running(1);
        let mut tail = Command::new(&s.ctl)
            .arg("-c")
            .arg(s.path().join("supervisord.conf"))
            .args(["tail", "-f", "lag"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = tail.stdout.take().unwrap();
        let mut lags = vec![];
        use std::io::BufRead;
        let deadline = Instant::now() + Duration::from_secs(20);
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            if let Ok(ts) = line.trim().parse::<u128>() {
                lags.push(now.saturating_sub(ts) as f64 / 1e6);
            }
            if lags.len() >= 450 || Instant::now() > deadline {
                break;
            }
        }
        let _ = tail.kill();
        let _ = tail.wait();
        let s = sorted(lags);
        let (p50, p99) = (percentile(&s, 50.0), percentile(&s, 99.0));
        out.push(Row::new(
            "",
            p99,
            "supervisord: `supervisorctl tail -f` lag (500 lines at 100/s)",
            format!("p50 {p50:.1} ms, p99 {p99:.1} ms"),
            ratio(rows, "lag_p99", p99),
            None,
        ));
    }
    rows.extend(out);
}
