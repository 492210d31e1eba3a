//! In-place upgrades through the binary: the daemon runs from a copy of
//! the binary under test, and a new file is put at that path (a copy
//! renamed over it, as a package upgrade does), or a broken one.

use crate::util::*;
use agentsd::wire::{AgentSummary, HistoryEntry, Status};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How long a wait may take at most here.
const T: Duration = Duration::from_secs(20);

/// Prints 1, 2, 3, ... a line every 10 ms.
const COUNTER: &str = r#"command = ["perl", "-e", '$| = 1; my $i = 0; while (1) { $i++; print "$i\n"; select(undef, undef, undef, 0.01) }']"#;

/// The binary under test copied to `home/bin/agentsd`: the daemon's path.
pub fn own_binary(home: &Home) -> PathBuf {
    let dir = home.path().join("bin");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("agentsd");
    std::fs::copy(bin(), &path).unwrap();
    path
}

/// Puts a new file at `path` (written beside it, renamed over it).
pub fn replace(path: &Path, contents: &[u8], mode: u32) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub fn start_from(home: &Home, exe: &Path) -> Daemon {
    home.start_via_shell(&format!("exec '{}' \"$@\"", exe.display()))
}

async fn agents(d: &Daemon) -> HashMap<String, AgentSummary> {
    let list: Vec<AgentSummary> = serde_json::from_value(d.get("/agents").await).unwrap();
    list.into_iter().map(|a| (a.id.clone(), a)).collect()
}

/// `agentsd upgrade ARGS` against `d`, on a thread of its own: the test's
/// clients (the hammer, the harness's connections) go on meanwhile.
pub async fn upgrade(home: &Home, d: &Daemon, args: &[&str]) -> std::process::Output {
    let mut cmd = cli_for(home, d);
    cmd.arg("upgrade").args(args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

async fn all_running(d: &Daemon, n: usize) -> HashMap<String, AgentSummary> {
    eventually_with(Duration::from_secs(60), "every agent running", || async {
        let a = agents(d).await;
        let running = a.values().filter(|a| a.status == Status::Running).count();
        if running == n {
            Ok(a)
        } else {
            Err(format!("{running} of {n} running"))
        }
    })
    .await
}

/// The numbers an agent's log holds, checked to be 1, 2, 3, ... with
/// none missing or repeated; the last one.
fn consecutive(text: &str, what: &str) -> u64 {
    let mut expect = 1;
    for line in text.lines() {
        let n: u64 = line
            .parse()
            .unwrap_or_else(|_| panic!("{what}: not a number: {line:?}"));
        assert_eq!(n, expect, "{what}: {expect} expected, {n} found");
        expect += 1;
    }
    expect - 1
}

/// Asks `/health` with a new connection each time until told to stop;
/// counts the answers and the failures (a refused or reset connection, an
/// answer that is not 200), with the first failure.
struct Hammer {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Hammer {
    fn start(d: &Daemon) -> Hammer {
        let client = d
            .new_client(true)
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        let (stop, ok) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let (s, o, url) = (stop.clone(), ok.clone(), format!("{}/health", d.url));
        let task = tokio::spawn(async move {
            let mut failures = Vec::new();
            // Bounded: at most 20,000 requests.
            for _ in 0..20_000 {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        o.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(r) => failures.push(format!("answered {}", r.status())),
                    Err(e) => failures.push(format!("{e:?}")),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            failures
        });
        Hammer { stop, ok, task }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let failures = self.task.await.unwrap();
        (self.ok.load(Ordering::SeqCst), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_keeps_every_agent_its_pid_and_every_line() {
    const N: usize = 100;
    let home = Home::new();
    let exe = own_binary(&home);
    let mut config = String::from(FAST);
    for i in 0..N {
        config.push_str(&format!("[agents.a{i:03}]\n{COUNTER}\n"));
    }
    home.write_config(&config);
    let mut d = start_from(&home, &exe);
    let before = all_running(&d, N).await;
    let health: serde_json::Value = d.get("/health").await;
    assert_eq!(health["pid"], d.pid());
    assert!(health["upgraded_at"].is_null(), "{health}");
    let started_at = health["started_at"].clone();
    // A follower of one agent's log, through the CLI.
    let mut follow = cli_for(&home, &d)
        .args(["logs", "-f", "a000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let followed = stdout_lines(follow.stdout.take().unwrap());
    let first: u64 = followed.recv_timeout(T).unwrap().parse().unwrap();
    let hammer = Hammer::start(&d);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A new file at the daemon's path, then the upgrade.
    replace(&exe, &std::fs::read(bin()).unwrap(), 0o755);
    let out = upgrade(&home, &d, &[]).await;
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), d.stderr_text());
    let said = text(&out.stdout);
    assert!(said.contains("upgraded in place"), "{said}");
    assert!(said.contains(&format!("(pid {})", d.pid())), "{said}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (answered, failures) = hammer.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the upgrade, first: {}",
        failures.len(),
        failures.len() as u64 + answered,
        failures[0]
    );
    assert!(answered > 20, "only {answered} answers");

    let health: serde_json::Value = d.get("/health").await;
    assert_eq!(health["pid"], d.pid(), "the daemon's pid changed");
    assert!(health["upgraded_at"].is_string(), "{health}");
    assert_eq!(health["started_at"], started_at, "an upgrade is not a start");
    let after = agents(&d).await;
    for (id, a) in &before {
        let b = &after[id];
        assert_eq!(
            (b.status, b.pid, b.restarts),
            (Status::Running, a.pid, a.restarts),
            "{id}"
        );
    }
    assert!(d.stderr_text().contains("running agents taken over"));
    let status = run(cli_for(&home, &d), &["status"]);
    let said = text(&status.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        said.contains(&format!("(pid {}, serving since ", d.pid()))
            && said.contains(", upgraded in place 20"),
        "{said}"
    );

    // The follower resumed exactly: consecutive numbers on both sides of
    // the handover.
    let mut last = first;
    let target = last + 150;
    while last < target {
        let n: u64 = followed
            .recv_timeout(T)
            .unwrap_or_else(|_| panic!("the follower stopped at {last}"))
            .parse()
            .unwrap();
        assert_eq!(n, last + 1, "the follower skipped or repeated a line");
        last = n;
    }
    let _ = follow.kill();
    let _ = follow.wait();
    // Every log: 1, 2, 3, ... none lost or repeated.
    assert_eq!(d.stop().code(), Some(0));
    for i in 0..N {
        let id = format!("a{i:03}");
        let text = std::fs::read_to_string(home.log_path(&id)).unwrap();
        let n = consecutive(&text, &id);
        assert!(n > 50, "{id}: only {n} lines");
    }
    home.wait_no_agents(T);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_new_binary_is_refused_and_nothing_changes() {
    let home = Home::new();
    let exe = own_binary(&home);
    home.write_config(&format!("{FAST}[agents.w]\ncommand = [\"sleep\", \"1000\"]\n"));
    let d = start_from(&home, &exe);
    let w = d.wait_status("w", Status::Running).await;
    let good = std::fs::read(&exe).unwrap();
    let fails = b"#!/bin/sh\necho 'cannot start: something is missing' >&2\nexit 1\n".to_vec();
    let cases: [(&str, &[u8], u32, &str); 4] = [
        ("not executable", &good, 0o644, "Permission denied"),
        (
            "exits 1",
            &fails,
            0o755,
            "(exit code 1): cannot start: something is missing",
        ),
        (
            "not agentsd",
            b"#!/bin/sh\necho hello\n",
            0o755,
            "did not say its version",
        ),
        ("missing", b"", 0, "No such file"),
    ];
    for (what, contents, mode, reason) in cases {
        if mode == 0 {
            std::fs::remove_file(&exe).unwrap();
        } else {
            replace(&exe, contents, mode);
        }
        let (status, body) = d.request(reqwest::Method::POST, "/upgrade").await;
        assert_eq!(status, 409, "{what}: {body}");
        assert_eq!(body["error"]["code"], "upgrade_refused", "{what}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{what}: {message}");
    }
    // A config the new binary refuses (here: broken on disk; the running
    // daemon keeps what it runs).
    replace(&exe, &good, 0o755);
    std::fs::write(home.config_path(), "[agents.w]\ncommand = 5\n").unwrap();
    let out = upgrade(&home, &d, &[]).await;
    assert_eq!(out.status.code(), Some(8), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("invalid config"), "{err}");
    // The old daemon serves on, nothing restarted.
    let health: serde_json::Value = d.get("/health").await;
    assert_eq!(health["pid"], d.pid());
    assert!(health["upgraded_at"].is_null(), "{health}");
    let now = d.agent("w").await;
    assert_eq!((now.status, now.pid, now.restarts), (Status::Running, w.pid, 0));
    // Every attempt is in the audit trail, with its key.
    let audit = d.get("/audit?limit=20").await;
    let refused = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"] == "/upgrade" && e["outcome"] == "upgrade_refused")
        .count();
    assert_eq!(refused, 5, "{audit:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_exits_during_the_handover_is_restarted_by_the_new_image() {
    let home = Home::new();
    let exe = own_binary(&home);
    let real = home.path().join("bin/agentsd-real");
    std::fs::copy(bin(), &real).unwrap();
    let victim = home.path().join("victim.pid");
    home.write_config(&format!(
        "{FAST}[agents.victim]\ncommand = [\"sh\", \"-c\", \"echo $$ > '{}'; exec sleep 1000\"]\n\
         [agents.bystander]\ncommand = [\"sleep\", \"1000\"]\n",
        victim.display()
    ));
    let d = start_from(&home, &exe);
    let v = d.wait_status("victim", Status::Running).await;
    let b = d.wait_status("bystander", Status::Running).await;
    let cookie = d.sign_in(KEY).await;
    // The new "binary": when it is exec'd to take over (not for its
    // check), it first kills the victim: the victim's exit comes after the
    // old image took the agents out and before the new one took them back.
    // In perl, which (unlike a shell) reaps no child it did not start.
    replace(
        &exe,
        format!(
            "#!/usr/bin/perl\nif ($ARGV[0] eq 'serve') {{ open(my $f, '<', '{}') or die; my $pid = <$f>; chomp $pid; kill 'KILL', $pid or die; select(undef, undef, undef, 0.3) }}\nexec '{}', @ARGV or die;\n",
            victim.display(),
            real.display()
        )
        .as_bytes(),
        0o755,
    );
    let out = upgrade(&home, &d, &["--json"]).await;
    assert!(out.status.success(), "{}\n{}", text(&out.stderr), d.stderr_text());
    let said: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(said["pid"], d.pid());
    // Its exit is recorded by the new image, and the policy restarts it.
    let again = d
        .wait_for("victim", T, |a| a.status == Status::Running && a.pid != v.pid)
        .await;
    assert_eq!(again.restarts, 1);
    let killed = again.last_exit.expect("its exit");
    assert_eq!(killed.signal.as_deref(), Some("SIGKILL"));
    let history: Vec<HistoryEntry> =
        serde_json::from_value(d.get("/agents/victim/history?limit=20").await).unwrap();
    assert!(
        history
            .iter()
            .any(|h| h.pid == v.pid && h.exit.as_ref().and_then(|e| e.signal.as_deref()) == Some("SIGKILL")),
        "{history:#?}"
    );
    let other = d.agent("bystander").await;
    assert_eq!((other.pid, other.restarts), (b.pid, 0));
    // The dashboard's session outlives the upgrade; the audit names it
    // with its key.
    assert_eq!(d.status_with_cookie("/agents", &cookie).await, 200);
    let audit = d.get("/audit?limit=20").await;
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/upgrade")
        .unwrap_or_else(|| panic!("no upgrade in {audit:#}"))
        .clone();
    assert_eq!(
        (entry["outcome"].as_str(), entry["status"].as_u64()),
        (Some("accepted"), Some(202))
    );
    assert_eq!(entry["role"], "admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_upgrades_too_and_is_audited() {
    let home = Home::new();
    let exe = own_binary(&home);
    // A reader of its stdin: its pipe is handed over too.
    home.write_config(&format!(
        "{FAST}[agents.w]\ncommand = [\"sh\", \"-c\", \"while read -r l; do echo \\\"got: $l\\\"; done\"]\nstdin = \"pipe\"\n"
    ));
    let d = start_from(&home, &exe);
    let w = d.wait_status("w", Status::Running).await;
    let said = |what: &'static str| {
        let log = home.log_path("w");
        async move {
            eventually(T, &format!("{what:?} in the log"), || {
                std::fs::read_to_string(&log).is_ok_and(|t| t.contains(what))
            })
            .await
        }
    };
    let out = run(cli_for(&home, &d), &["send", "w", "before"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    said("got: before").await;
    replace(&exe, &std::fs::read(bin()).unwrap(), 0o755);
    d.signal(nix::sys::signal::Signal::SIGUSR2);
    let health = eventually_with(T, "the new image answering", || async {
        let h: serde_json::Value = d.get("/health").await;
        if h["upgraded_at"].is_string() {
            Ok(h)
        } else {
            Err(h.to_string())
        }
    })
    .await;
    assert_eq!(health["pid"], d.pid());
    assert_eq!(d.agent("w").await.pid, w.pid);
    // The same agent reads what the new image writes to its stdin.
    let out = run(cli_for(&home, &d), &["send", "w", "after"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    said("got: after").await;
    let audit = d.get("/audit?limit=5").await;
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["key"] == "SIGUSR2" && e["outcome"] == "accepted"),
        "{audit:#}"
    );
}

/// An agent still stopping (it ignores SIGTERM, and its stop timeout is
/// long) when an upgrade is asked for: refused after the quiet wait with
/// the agent named, and the API answered all the while (it is not paused
/// for the wait).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_stop_refuses_the_upgrade_while_the_api_serves_on() {
    let home = Home::new();
    let exe = own_binary(&home);
    home.write_config(&format!(
        "{FAST}[agents.stubborn]\ncommand = [\"sh\", \"-c\", \"trap '' TERM; while :; do sleep 0.2; done\"]\nstop_timeout = \"14s\"\n"
    ));
    let d = Arc::new(start_from(&home, &exe));
    d.wait_status("stubborn", Status::Running).await;
    replace(&exe, &std::fs::read(bin()).unwrap(), 0o755);
    // The stop answers only once it is done: asked on a task of its own.
    let stopping = {
        let d = d.clone();
        tokio::spawn(async move { d.request(reqwest::Method::POST, "/agents/stubborn/stop").await })
    };
    d.wait_status("stubborn", Status::Stopping).await;
    let asked = std::time::Instant::now();
    let upgrade = {
        let d = d.clone();
        tokio::spawn(async move { d.request(reqwest::Method::POST, "/upgrade").await })
    };
    // Meanwhile every /health is answered at once.
    let mut slowest = Duration::ZERO;
    while !upgrade.is_finished() {
        let t = std::time::Instant::now();
        let (status, _) = d.request(reqwest::Method::GET, "/health").await;
        assert_eq!(status, 200);
        slowest = slowest.max(t.elapsed());
        assert!(asked.elapsed() < T, "the upgrade is still not answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = upgrade.await.unwrap();
    eprintln!(
        "refused after {:?}; the slowest /health meanwhile took {slowest:?}",
        asked.elapsed()
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "upgrade_refused");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("stubborn"), "{message}");
    assert!(slowest < Duration::from_secs(2), "/health waited {slowest:?}");
    let health: serde_json::Value = d.get("/health").await;
    assert!(health["upgraded_at"].is_null(), "{health}");
    // The stop goes on and ends with its kill.
    let (status, _) = stopping.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(d.agent("stubborn").await.status, Status::Stopped);
}
