//! Services, not just processes: health probes and dependencies through
//! the binary. The agents serve for real (perl, from Debian's essential
//! perl-base: a TCP listener, an HTTP server whose answer a file turns to
//! 503), and the daemon probes them.

use crate::util::*;
use agentsd::wire::{HealthState, HistoryEntry, Status};
use std::time::{Duration, Instant};

/// A TCP listener on 127.0.0.1:PORT after DELAY seconds.
const TCP_PL: &str = r#"
use IO::Socket::INET;
$| = 1;
my ($port, $delay) = @ARGV;
select(undef, undef, undef, $delay);
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1:$port", Listen => 64, ReuseAddr => 1) or die "listen: $!";
print "listening on $port\n";
while (my $c = $s->accept) { close $c }
"#;

/// A port nothing listens on now (taken from the kernel, then let go).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scripts(home: &Home) {
    std::fs::write(home.path().join("http.pl"), HTTP_PL).unwrap();
    std::fs::write(home.path().join("tcp.pl"), TCP_PL).unwrap();
}

async fn history(d: &Daemon, id: &str) -> Vec<HistoryEntry> {
    let mut h: Vec<HistoryEntry> =
        serde_json::from_value(d.get(&format!("/agents/{id}/history?limit=100")).await).unwrap();
    h.reverse();
    h
}

/// The time of the first history row of `id` that `pred` picks.
fn when(h: &[HistoryEntry], id: &str, what: &str, pred: impl Fn(&HistoryEntry) -> bool) -> String {
    h.iter()
        .find(|e| pred(e))
        .map(|e| e.at.clone())
        .unwrap_or_else(|| panic!("{id}: no row for {what} in {h:#?}"))
}

fn millis(at: &str) -> u128 {
    humantime::parse_rfc3339(at)
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

#[tokio::test]
async fn a_chain_of_services_starts_in_order_each_once_its_condition_holds() {
    let home = Home::new();
    scripts(&home);
    let (db, api) = (free_port(), free_port());
    home.write_config(&format!(
        "{FAST}\
         [agents.db]\ncommand = [\"perl\", \"tcp.pl\", \"{db}\", \"2\"]\n\
         health = {{ tcp = \"127.0.0.1:{db}\", interval = \"1s\", start_period = \"30s\" }}\n\
         [agents.api]\ncommand = [\"perl\", \"http.pl\", \"{api}\", \"0.5\"]\n\
         depends_on = {{ db = \"healthy\" }}\n\
         health = {{ http = \"http://127.0.0.1:{api}/healthz\", interval = \"1s\", start_period = \"30s\" }}\n\
         [agents.migrate]\ncommand = [\"sh\", \"-c\", \"sleep 0.3; echo migrated\"]\nrestart = \"never\"\n\
         [agents.worker]\ncommand = [\"sleep\", \"1000\"]\n\
         depends_on = {{ api = \"healthy\", migrate = \"succeeded\" }}\n"
    ));
    let started = Instant::now();
    let d = home.start();
    // Meanwhile: waiting, saying for what.
    let w = d.wait_status("worker", Status::Waiting).await;
    let why = w.reason.unwrap();
    assert!(why.starts_with("waiting for api (healthy)"), "{why}");
    let a = d.wait_status("api", Status::Waiting).await;
    assert_eq!(a.reason.as_deref(), Some("waiting for db (healthy)"));
    assert_eq!(a.pid, None);
    let db_now = d.agent("db").await;
    assert_eq!(db_now.health, Some(HealthState::Starting), "{db_now:?}");
    // Then each in turn.
    let w = d
        .wait_for("worker", Duration::from_secs(30), |a| a.status == Status::Running)
        .await;
    assert!(started.elapsed() >= Duration::from_secs(2), "before db listened");
    assert_eq!(w.health, None, "no probe, no health");
    let api_now = d.agent("api").await;
    assert_eq!(
        (api_now.status, api_now.health),
        (Status::Running, Some(HealthState::Healthy))
    );

    let (hd, ha, hm, hw) = (
        history(&d, "db").await,
        history(&d, "api").await,
        history(&d, "migrate").await,
        history(&d, "worker").await,
    );
    let db_start = when(&hd, "db", "start", |e| e.new_status == Status::Starting);
    let db_healthy = when(&hd, "db", "healthy", |e| e.health == Some(HealthState::Healthy));
    let api_start = when(&ha, "api", "start", |e| e.new_status == Status::Starting);
    let api_healthy = when(&ha, "api", "healthy", |e| e.health == Some(HealthState::Healthy));
    let migrated = when(&hm, "migrate", "exit", |e| e.new_status == Status::Exited);
    let worker_start = when(&hw, "worker", "start", |e| e.new_status == Status::Starting);
    assert!(
        ha.iter()
            .any(|e| e.new_status == Status::Waiting
                && e.reason.as_deref() == Some("waiting for db (healthy)")),
        "{ha:#?}"
    );
    // db answered only once its listener was up (2 s after its start).
    assert!(
        millis(&db_healthy) - millis(&db_start) >= 1900,
        "{db_start} {db_healthy}"
    );
    assert!(
        api_start >= db_healthy,
        "api started {api_start} before db was healthy {db_healthy}"
    );
    assert!(api_healthy > api_start);
    assert!(
        worker_start >= api_healthy,
        "worker {worker_start} before api healthy {api_healthy}"
    );
    assert!(
        worker_start >= migrated,
        "worker {worker_start} before migrate ended {migrated}"
    );
    // Seen healthy soon after it was: the start cadence, not the interval.
    let lag = millis(&worker_start) - millis(&api_healthy);
    assert!(lag < 1000, "worker started {lag} ms after its condition held");

    // The CLI says the same: a HEALTH column, and the history's rows.
    let o = run(cli_for(&home, &d), &["agents", "list"]);
    let table = text(&o.stdout);
    let row = |id: &str| -> Vec<String> {
        let line = table.lines().find(|l| l.starts_with(&format!("{id} "))).unwrap();
        line.split_whitespace().map(str::to_string).collect()
    };
    assert_eq!(row("api")[..3], ["api", "running", "healthy"], "{table}");
    assert_eq!(row("worker")[..3], ["worker", "running", "-"], "{table}");
    let o = run(cli_for(&home, &d), &["agents", "show", "api"]);
    let shown = text(&o.stdout);
    assert!(
        shown.contains(&format!("health: http http://127.0.0.1:{api}/healthz; interval 1s, timeout 1s, start_period 30s, failures 3, on_failure restart")),
        "{shown}"
    );
    assert!(shown.contains("depends on: db (healthy)"), "{shown}");
    let o = run(cli_for(&home, &d), &["history", "api"]);
    let h = text(&o.stdout);
    assert!(h.contains("running (healthy)"), "{h}");
    assert!(
        h.contains("stopped -> waiting") && h.contains("waiting for db (healthy)"),
        "{h}"
    );
}

#[tokio::test]
async fn a_restart_answers_once_healthy_and_a_start_never_healthy_is_a_failed_start() {
    let home = Home::new();
    scripts(&home);
    let (api, nobody) = (free_port(), free_port());
    home.write_config(&format!(
        "{FAST}\
         [agents.api]\ncommand = [\"perl\", \"http.pl\", \"{api}\", \"1\"]\n\
         health = {{ http = \"http://127.0.0.1:{api}/healthz\", interval = \"5s\", start_period = \"30s\" }}\n\
         [agents.never]\ncommand = [\"sleep\", \"1000\"]\nautostart = false\nmax_restarts = 0\n\
         health = {{ tcp = \"127.0.0.1:{nobody}\", interval = \"1s\", start_period = \"1500ms\" }}\n"
    ));
    let d = home.start();
    d.wait_for("api", Duration::from_secs(20), |a| {
        a.health == Some(HealthState::Healthy)
    })
    .await;
    // Over the API: the answer is the new process, healthy (its listener
    // comes 1 s after its start).
    let t = Instant::now();
    let a = d.control("api", "restart").await;
    let took = t.elapsed();
    assert_eq!(
        (a.status, a.health),
        (Status::Running, Some(HealthState::Healthy)),
        "{a:?}"
    );
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}, before it listened"
    );
    // Through the CLI, likewise.
    let t = Instant::now();
    let o = run(cli_for(&home, &d), &["agents", "restart", "api"]);
    let took = t.elapsed();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(took >= Duration::from_millis(900), "answered after {took:?}");
    let now = d.agent("api").await;
    assert_eq!(now.health, Some(HealthState::Healthy));
    assert_ne!(now.pid, a.pid);

    // Never healthy within its start period: a failed start, exit 8.
    let t = Instant::now();
    let o = run(cli_for(&home, &d), &["agents", "start", "never"]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("not healthy within its start_period of 1s 500ms"),
        "{err}"
    );
    assert!(err.contains(&format!("connect to 127.0.0.1:{nobody}")), "{err}");
    assert!(t.elapsed() >= Duration::from_millis(1400));
    let n = d.agent("never").await;
    assert_eq!((n.status, n.pid, n.health), (Status::Failed, None, None));
}

#[tokio::test]
async fn a_liveness_failure_restarts_after_exactly_failures_misses_or_only_reports() {
    let home = Home::new();
    scripts(&home);
    let (live, rep) = (free_port(), free_port());
    for dir in ["live", "rep"] {
        std::fs::create_dir(home.path().join(dir)).unwrap();
    }
    home.write_config(&format!(
        "{FAST}\
         [agents.live]\ncommand = [\"perl\", \"../http.pl\", \"{live}\", \"0\"]\ncwd = \"live\"\n\
         health = {{ http = \"http://127.0.0.1:{live}/\", interval = \"200ms\", timeout = \"200ms\", failures = 3 }}\n\
         [agents.rep]\ncommand = [\"perl\", \"../http.pl\", \"{rep}\", \"0\"]\ncwd = \"rep\"\n\
         health = {{ http = \"http://127.0.0.1:{rep}/\", interval = \"200ms\", timeout = \"200ms\", failures = 2, on_failure = \"report\" }}\n"
    ));
    let d = home.start();
    let before = d
        .wait_for("live", Duration::from_secs(20), |a| {
            a.health == Some(HealthState::Healthy)
        })
        .await;
    let rep_before = d
        .wait_for("rep", Duration::from_secs(20), |a| {
            a.health == Some(HealthState::Healthy)
        })
        .await;

    std::fs::write(home.path().join("live/sick"), "").unwrap();
    let a = d
        .wait_for("live", Duration::from_secs(10), |a| a.restarts == 1)
        .await;
    assert_eq!(
        a.reason.as_deref(),
        Some("health check failed 3 times: HTTP 503 Service Unavailable"),
        "{a:?}"
    );
    // Exactly 3 failed answers, then the stop: none after the third.
    let log = std::fs::read_to_string(home.log_path("live")).unwrap();
    let run1 = &log[..log.find("terminated").expect("the first run was stopped")];
    let misses = run1.matches("answered 503").count();
    assert_eq!(misses, 3, "{log}");
    let h = history(&d, "live").await;
    assert!(
        h.iter()
            .any(|e| e.health == Some(HealthState::Unhealthy) && e.new_status == Status::Running),
        "{h:#?}"
    );
    assert!(
        h.iter().any(|e| e.new_status == Status::Backoff
            && e.reason.as_deref() == Some("health check failed 3 times: HTTP 503 Service Unavailable")),
        "{h:#?}"
    );
    std::fs::remove_file(home.path().join("live/sick")).unwrap();
    let a = d
        .wait_for("live", Duration::from_secs(20), |a| {
            a.health == Some(HealthState::Healthy)
        })
        .await;
    assert_ne!(a.pid, before.pid);
    assert_eq!(a.reason, None, "healthy again: the reason is over");

    // Report only: unhealthy, still the same process; `status --watch`
    // says so as it happens.
    let mut watch = cli_for(&home, &d)
        .args(["status", "--watch"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = stdout_lines(watch.stdout.take().unwrap());
    let header = lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(header.starts_with("AGENT"), "{header}");
    std::fs::write(home.path().join("rep/sick"), "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let said = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = lines
            .recv_timeout(left)
            .expect("no health line from status --watch");
        if l.contains(" rep: health") {
            break l;
        }
    };
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        said.ends_with(" rep: health healthy -> unhealthy: HTTP 503 Service Unavailable"),
        "{said}"
    );
    let r = d
        .wait_for("rep", Duration::from_secs(10), |a| {
            a.health == Some(HealthState::Unhealthy)
        })
        .await;
    assert_eq!(r.health_detail.as_deref(), Some("HTTP 503 Service Unavailable"));
    // Well past its failures: never restarted.
    eventually(Duration::from_secs(10), "rep to fail 10 more probes", || {
        std::fs::read_to_string(home.log_path("rep"))
            .unwrap()
            .matches("answered 503")
            .count()
            >= 12
    })
    .await;
    let r = d.agent("rep").await;
    assert_eq!(
        (r.status, r.pid, r.restarts),
        (Status::Running, rep_before.pid, 0)
    );
    assert_eq!(r.health, Some(HealthState::Unhealthy));
    std::fs::remove_file(home.path().join("rep/sick")).unwrap();
    d.wait_for("rep", Duration::from_secs(10), |a| {
        a.health == Some(HealthState::Healthy)
    })
    .await;
}

#[tokio::test]
async fn an_exec_probe_runs_as_its_agent_and_a_hung_one_is_killed_with_its_group() {
    let home = Home::new();
    home.write_config(&format!(
        "{FAST}\
         [agents.ex]\ncommand = [\"sh\", \"-c\", \"sleep 0.5; touch ready; exec sleep 1000\"]\n\
         env = {{ PROBE_SAYS = \"not ready yet\" }}\n\
         health = {{ exec = [\"sh\", \"-c\", \"test -e ready || {{ echo $PROBE_SAYS; exit 3; }}\"], interval = \"300ms\", start_period = \"20s\" }}\n\
         [agents.hung]\ncommand = [\"sleep\", \"1000\"]\nmax_restarts = 0\n\
         health = {{ exec = [\"sh\", \"-c\", \"echo $$ > probe.pid; sleep 1000 & sleep 1000\"], interval = \"400ms\", timeout = \"400ms\", start_period = \"1s\" }}\n"
    ));
    let d = home.start();
    let a = d
        .wait_for("ex", Duration::from_secs(20), |a| {
            a.health == Some(HealthState::Healthy)
        })
        .await;
    assert_eq!(a.status, Status::Running);
    let h = history(&d, "ex").await;
    assert!(h.iter().any(|e| e.health == Some(HealthState::Healthy)), "{h:#?}");
    // Its failures said why, from the probe's own output, in its own
    // environment and working directory (the last failure of this run).
    assert_eq!(a.health_detail.as_deref(), Some("exit code 3: not ready yet"));

    let hung = d.wait_status("hung", Status::Failed).await;
    let why = hung.reason.unwrap();
    assert!(why.contains("timed out after 400ms"), "{why}");
    // Every probe, and what it started, is gone.
    let pid: u32 = std::fs::read_to_string(home.path().join("probe.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    eventually(Duration::from_secs(5), "the hung probe's group to go", || {
        !pid_alive(pid)
    })
    .await;
    eventually(Duration::from_secs(5), "no sleep 1000 of the probe left", || {
        home.pids_of("hung").is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_dependency_that_fails_for_good_fails_its_dependents_with_its_reason() {
    let home = Home::new();
    home.write_config(&format!(
        "{FAST}\
         [agents.broken]\ncommand = [\"no-such-command-here\"]\n\
         [agents.needs]\ncommand = [\"sleep\", \"1000\"]\ndepends_on = {{ broken = \"started\" }}\n\
         [agents.after]\ncommand = [\"sleep\", \"1000\"]\ndepends_on = {{ needs = \"started\" }}\n\
         [agents.migrate]\ncommand = [\"sh\", \"-c\", \"exit 4\"]\nrestart = \"never\"\n\
         [agents.app]\ncommand = [\"sleep\", \"1000\"]\ndepends_on = {{ migrate = \"succeeded\" }}\n"
    ));
    let d = home.start();
    let n = d.wait_status("needs", Status::Failed).await;
    assert_eq!(
        n.reason.as_deref(),
        Some(
            "dependency broken (started) cannot be met: it failed: command not found: \"no-such-command-here\" is not in PATH"
        )
    );
    let a = d.wait_status("after", Status::Failed).await;
    assert!(
        a.reason
            .unwrap()
            .starts_with("dependency needs (started) cannot be met: it failed: dependency broken")
    );
    let app = d.wait_status("app", Status::Failed).await;
    assert_eq!(
        app.reason.as_deref(),
        Some("dependency migrate (succeeded) cannot be met: it did not succeed (exit code 4)")
    );
    assert!(home.pids_of("needs").is_empty() && home.pids_of("app").is_empty());
}

#[tokio::test]
async fn shutdown_stops_dependents_first() {
    let home = Home::new();
    let order = home.path().join("order");
    let agent = |id: &str| {
        format!(
            "command = [\"sh\", \"-c\", \"trap 'echo {id} >> {}; sleep 0.3; exit 0' TERM; while :; do sleep 0.05; done\"]\n",
            order.display()
        )
    };
    home.write_config(&format!(
        "{FAST}\
         [agents.base]\n{}\
         [agents.mid]\n{}depends_on = {{ base = \"started\" }}\n\
         [agents.top]\n{}depends_on = {{ mid = \"started\" }}\n\
         [agents.side]\n{}depends_on = {{ base = \"started\" }}\n",
        agent("base"),
        agent("mid"),
        agent("top"),
        agent("side")
    ));
    let mut d = home.start();
    for id in ["base", "mid", "top", "side"] {
        d.wait_status(id, Status::Running).await;
    }
    assert!(d.stop().success());
    let got = std::fs::read_to_string(&order).unwrap();
    let got: Vec<&str> = got.lines().collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(
        got.last(),
        Some(&"base"),
        "base went before its dependents: {got:?}"
    );
    let pos = |id: &str| got.iter().position(|g| *g == id).unwrap();
    assert!(pos("top") < pos("mid"), "{got:?}");
    home.wait_no_agents(Duration::from_secs(2));
}

#[test]
fn config_check_refuses_cycles_unknown_dependencies_and_healthy_without_a_probe() {
    let home = Home::new();
    let check = |config: &str| {
        home.write_config(config);
        let path = home.config_path();
        let o = run(
            cli(&home),
            &["config", "check", "--config", path.to_str().unwrap()],
        );
        assert!(!o.status.success(), "{config}");
        text(&o.stderr)
    };
    let e = check(
        "[agents.a]\ncommand = [\"x\"]\ndepends_on = { c = \"started\" }\n\
         [agents.b]\ncommand = [\"x\"]\ndepends_on = { a = \"healthy\" }\nhealth = { tcp = \"h:1\" }\n\
         [agents.c]\ncommand = [\"x\"]\ndepends_on = { b = \"healthy\" }\nhealth = { tcp = \"h:1\" }\n",
    );
    assert!(e.contains("dependency cycle: a -> c -> b -> a"), "{e}");
    assert!(e.contains("\"a\" has no health probe"), "{e}");
    let e = check("[agents.a]\ncommand = [\"x\"]\ndepends_on = { db = \"healthy\" }\n");
    assert!(
        e.contains("depends on \"db\", which is not an agent of this config"),
        "{e}"
    );
    let e = check("[agents.a]\ncommand = [\"x\"]\nhealth = { tcp = \"h:1\", exec = [\"true\"] }\n");
    assert!(e.contains("health has 2 probes"), "{e}");
}
