//! The client commands, run as the real binary against a real daemon.

use crate::util::*;
use agentsd::wire::{AgentDetail, AgentSummary, Status};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn agents_commands_print_tables_and_json() {
    let home = Home::new();
    home.write_config(&format!(
        "{FAST}[agents.web]\ncommand = [\"sh\", \"-c\", \"echo hello; exec sleep 1000\"]\n[agents.idle]\ncommand = [\"sleep\", \"1000\"]\nautostart = false\n"
    ));
    let d = home.start();
    d.wait_status("web", Status::Running).await;

    let out = run(cli_for(&home, &d), &["agents", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("AGENT  STATUS"), "{table}");
    assert!(lines[1].starts_with("idle   stopped"), "{table}");
    assert!(lines[2].starts_with("web    running"), "{table}");
    assert!(!table.contains('\x1b'), "colour without a terminal");

    let out = run(cli_for(&home, &d), &["agents", "list", "--json"]);
    let list: Vec<AgentSummary> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 2);
    let out = run(cli_for(&home, &d), &["agents", "list", "--status", "stopped"]);
    let table = text(&out.stdout);
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.lines().nth(1).unwrap().starts_with("idle "), "{table}");
    let out = run(
        cli_for(&home, &d),
        &["agents", "list", "--filter", "we", "--json"],
    );
    let list: Vec<AgentSummary> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(), ["web"]);

    let out = run(cli_for(&home, &d), &["agents", "start", "idle"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("idle: running (pid "),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(d.agent("idle").await.status, Status::Running);

    let out = run(cli_for(&home, &d), &["agents", "stop", "--all"]);
    assert!(out.status.success());
    let stopped = text(&out.stdout);
    assert!(
        stopped.contains("idle: stopped") && stopped.contains("web: stopped"),
        "{stopped}"
    );

    let out = run(cli_for(&home, &d), &["agents", "restart", "web"]);
    assert!(
        text(&out.stdout).starts_with("web: running"),
        "{}",
        text(&out.stdout)
    );

    let out = run(cli_for(&home, &d), &["agents", "show", "web", "--json"]);
    let detail: AgentDetail = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(detail.summary.id, "web");
    assert!(detail.logs.iter().any(|l| l.text == "hello"));
    let out = run(cli_for(&home, &d), &["agents", "show", "web"]);
    assert!(
        text(&out.stdout).contains("command: sh -c 'echo hello; exec sleep 1000'"),
        "{}",
        text(&out.stdout)
    );

    let out = run(cli_for(&home, &d), &["logs", "web", "-n", "1"]);
    assert_eq!(text(&out.stdout), "hello\n");

    let out = run(cli_for(&home, &d), &["status"]);
    let status = text(&out.stdout);
    assert!(
        status.contains("2 agents: ") && status.contains("1 running") && status.contains("1 stopped"),
        "{status}"
    );
    let first = status.lines().next().unwrap();
    assert!(
        first.contains(&format!(" (pid {}, serving since 20", d.pid())),
        "{first}"
    );
}

#[tokio::test]
async fn exit_codes_and_one_line_errors_per_class() {
    let home = Home::new();
    home.write_config(&format!("{FAST}[agents.a]\ncommand = [\"sleep\", \"1000\"]\n"));
    let d = home.start();
    let one_line = |o: &Output| {
        let e = text(&o.stderr);
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    };

    let o = run(cli_for(&home, &d), &["agents", "show", "nope"]);
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(one_line(&o), "agentsd: no agent named \"nope\"\n");

    let o = run(cli_for(&home, &d), &["agents", "start", "a", "nope"]);
    assert_eq!(o.status.code(), Some(5));
    assert!(one_line(&o).contains("nope: no agent named"));

    let mut c = cli_for(&home, &d);
    c.env("AGENTSD_API_KEY", "wrong-key-wrong-key-wrong-key-wrong");
    let o = run(c, &["agents", "list"]);
    assert_eq!(o.status.code(), Some(4));
    assert!(one_line(&o).contains("refused the API key"));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let o = run(
        cli_for(&home, &d),
        &["agents", "list", "--url", &format!("https://127.0.0.1:{port}")],
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(one_line(&o).contains("cannot reach"));

    // A follower whose first connection fails ends at once with that error.
    let t = Instant::now();
    let o = run(
        cli_for(&home, &d),
        &["logs", "a", "-f", "--url", &format!("https://127.0.0.1:{port}")],
    );
    assert_eq!(o.status.code(), Some(3));
    assert!(t.elapsed() < Duration::from_secs(10));

    let o = run(cli_for(&home, &d), &["agents", "show", "../etc"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(one_line(&o).contains("invalid agent id"));

    let o = run(
        cli_for(&home, &d),
        &["agents", "list", "--url", "http://example.com:8487"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(one_line(&o).contains("clear text"));

    let o = run(cli_for(&home, &d), &["agents", "list", "--bogus"]);
    assert_eq!(o.status.code(), Some(2));

    let mut c = cli(&home);
    c.env("AGENTSD_URL", &d.url);
    let o = run(c, &["agents", "list"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(one_line(&o).contains("no API key"));

    let o = run(cli(&home), &["--help"]);
    assert!(text(&o.stdout).contains("4  unauthorized"));
}

#[tokio::test]
async fn another_certificate_is_refused_showing_the_presented_fingerprint() {
    let home = Home::new();
    home.write_config(FAST);
    let d = home.start();
    let other = home.path().join("other");
    let (files, _) = agentsd::certs::write_self_signed(&other, &["localhost".into()], false).unwrap();
    let served = agentsd::certs::fingerprint_of_pem(&home.path().join("state/tls/cert.pem")).unwrap();

    let o = run(
        cli_for(&home, &d),
        &["status", "--ca-cert", files.cert.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(3));
    let e = text(&o.stderr);
    assert!(e.contains("not trusted") && e.contains(&served), "{e}");

    // A pinned fingerprint in a context: the right one works, a wrong one is refused.
    let write_client = |fp: &str| {
        let dir = home.path().join("client-config/agentsd");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("client.toml"),
            format!("default_context = \"here\"\n[contexts.here]\nurl = \"{}\"\napi_key_file = \"{}\"\nfingerprint = \"{fp}\"\n", d.url, home.path().join("api.key").display()),
        )
        .unwrap();
    };
    write_client(&served);
    let o = run(cli(&home), &["agents", "list", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let wrong = agentsd::certs::fingerprint_of_pem(&files.cert).unwrap();
    write_client(&wrong);
    let o = run(cli(&home), &["agents", "list"]);
    assert_eq!(o.status.code(), Some(3));
    let e = text(&o.stderr);
    assert!(
        e.contains(&format!(
            "fingerprint mismatch: the server presented {served}, expected {wrong}"
        )),
        "{e}"
    );
}

#[tokio::test]
async fn the_local_daemon_is_found_with_no_flags() {
    let home = Home::new();
    home.write_config(&format!("{FAST}[agents.a]\ncommand = [\"sleep\", \"1000\"]\n"));
    let d = home.start();
    d.wait_status("a", Status::Running).await;
    // The config says port 0; point a copy at the port actually bound.
    let port = d.url.rsplit(':').next().unwrap();
    let local = std::fs::read_to_string(home.config_path())
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(home.path().join("local.toml"), local).unwrap();
    let mut c = cli(&home);
    c.env("AGENTSD_CONFIG", home.path().join("local.toml"));
    let o = run(c, &["agents", "list", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let list: Vec<AgentSummary> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0].id, "a");
}

#[tokio::test]
async fn a_closed_output_pipe_ends_quietly() {
    let home = Home::new();
    home.write_config(&format!(
        "{FAST}[agents.a]\ncommand = [\"sh\", \"-c\", \"seq 1 300; exec sleep 1000\"]\n"
    ));
    let d = home.start();
    d.wait_status("a", Status::Running).await;
    for args in [
        &["logs", "a", "-n", "300"][..],
        &["agents", "list"],
        &["agents", "show", "a"],
    ] {
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        let o = cli_for(&home, &d)
            .args(args)
            .stdout(Stdio::from(w))
            .output()
            .unwrap();
        assert!(o.status.success(), "{args:?}: {:?} {}", o.status, text(&o.stderr));
        assert_eq!(text(&o.stderr), "", "{args:?}");
    }
}

/// The commands that need no daemon print through the same path as the
/// client commands: a reader that went away ends them quietly too.
#[test]
fn commands_without_a_daemon_end_quietly_on_a_closed_output_pipe() {
    let home = Home::new();
    home.write_config("[agents.a]\ncommand = [\"sleep\", \"100\"]\n");
    let config = home.config_path();
    let config = config.to_str().unwrap();
    let docs = home.path().join("docs");
    let docs = docs.to_str().unwrap();
    let commands: [&[&str]; 6] = [
        &["config", "check", "--config", config],
        &["gen-key"],
        &["gen-key", "--name", "ci", "--role", "read"],
        &[
            "install-unit",
            "--dry-run",
            "--bin",
            "/usr/bin/agentsd",
            "--config",
            config,
        ],
        &["generate-docs", "--out", docs],
        &["--help"],
    ];
    // A closed pipe used to panic in most runs, not all: a few runs each.
    for args in commands {
        for _ in 0..3 {
            let (r, w) = nix::unistd::pipe().unwrap();
            drop(r);
            let o = cli(&home)
                .env("AGENTSD_API_KEY", KEY)
                .args(args)
                .stdout(Stdio::from(w))
                .output()
                .unwrap();
            assert!(o.status.success(), "{args:?}: {:?} {}", o.status, text(&o.stderr));
            assert_eq!(text(&o.stderr), "", "{args:?}");
        }
    }
}

#[tokio::test]
async fn logs_follow_survives_a_daemon_restart_without_gap_or_duplicate() {
    let home = Home::new();
    let port = free_port();
    let agents = format!(
        "{FAST}[agents.count]\ncommand = [\"sh\", \"-c\", \"i=0; while :; do i=$((i+1)); echo \\\"$$ $i\\\"; sleep 0.01; done\"]\n"
    );
    home.write_config(&agents);
    let cfg = std::fs::read_to_string(home.config_path())
        .unwrap()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(home.config_path(), cfg).unwrap();
    let mut d = home.start();
    d.wait_status("count", Status::Running).await;

    let mut follower = cli_for(&home, &d)
        .args(["logs", "count", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stdout_lines(follower.stdout.take().unwrap());
    let mut got: Vec<String> = Vec::new();
    let take = |got: &mut Vec<String>, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let want = got.len() + n;
        while got.len() < want {
            let left = deadline.saturating_duration_since(Instant::now());
            got.push(rx.recv_timeout(left).expect("the follower stopped printing"));
        }
    };
    take(&mut got, 50);
    assert_eq!(d.stop().code(), Some(0));
    drop(d);
    let d = home.start();
    d.wait_status("count", Status::Running).await;
    // Lines of the new run arrive through the reconnected stream.
    take(&mut got, 100);
    let _ = follower.kill();
    let _ = follower.wait();
    let log = std::fs::read_to_string(home.log_path("count")).unwrap();
    let all: Vec<&str> = log.lines().collect();
    let start = all.iter().position(|l| *l == got[0]).unwrap();
    assert_eq!(
        got.as_slice(),
        &all[start..start + got.len()],
        "the follower's lines differ from the log"
    );
    let pids: std::collections::BTreeSet<&str> = got.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(pids.len(), 2, "both runs should be seen: {pids:?}");
    assert!(Path::new(&home.log_path("count")).exists());
}

#[tokio::test]
async fn status_watch_prints_each_change() {
    let home = Home::new();
    home.write_config(&format!("{FAST}[agents.svc]\ncommand = [\"sleep\", \"1000\"]\n"));
    let d = home.start();
    d.wait_status("svc", Status::Running).await;
    let mut watch = cli_for(&home, &d)
        .args(["status", "--watch"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stdout_lines(watch.stdout.take().unwrap());
    let header = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(header.starts_with("AGENT"), "{header}");
    assert!(
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap()
            .starts_with("svc")
    );
    d.control("svc", "stop").await;
    let a = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let b = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(a.contains(" svc: running -> stopping (pid "), "{a}");
    assert!(b.contains(" svc: stopping -> stopped"), "{b}");
}

#[test]
fn a_server_error_is_exit_6() {
    let home = Home::new();
    // A loopback "daemon" that answers every request with a 500.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for conn in listener.incoming().take(4) {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let body = r#"{"error":{"code":"internal","message":"boom"}}"#;
            let _ = write!(
                c,
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let mut c = cli(&home);
    c.env("AGENTSD_API_KEY", KEY);
    let o = run(
        c,
        &["agents", "list", "--url", &format!("http://127.0.0.1:{port}")],
    );
    assert_eq!(o.status.code(), Some(6), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("500") && text(&o.stderr).contains("boom"),
        "{}",
        text(&o.stderr)
    );
}

#[tokio::test]
async fn color_only_when_asked_or_on_a_terminal() {
    let home = Home::new();
    home.write_config(&format!("{FAST}[agents.a]\ncommand = [\"sleep\", \"1000\"]\n"));
    let d = home.start();
    d.wait_status("a", Status::Running).await;
    let o = run(cli_for(&home, &d), &["agents", "list", "--color", "always"]);
    assert!(
        text(&o.stdout).contains("\x1b[32mrunning"),
        "{:?}",
        text(&o.stdout)
    );
    let o = run(cli_for(&home, &d), &["agents", "list", "--color", "never"]);
    assert!(!text(&o.stdout).contains('\x1b'));
}

#[test]
#[ignore = "needs root, to run it as another user with setpriv (`cargo test -- --ignored`, as .ci/run does)"]
fn install_unit_as_a_normal_user_says_to_run_it_as_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root, to drop to another user"
    );
    let setpriv = Command::new("setpriv")
        .arg("--version")
        .output()
        .expect("setpriv (util-linux) is needed");
    assert!(setpriv.status.success(), "{}", text(&setpriv.stderr));
    let o = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            bin(),
            "install-unit",
            "--bin",
            "/usr/bin/agentsd",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("run it as root"), "{}", text(&o.stderr));
}

/// The CLI aimed at `d` with the key but no trust yet.
fn cli_key(home: &Home, d: &Daemon) -> Command {
    let mut c = cli(home);
    c.env("AGENTSD_URL", &d.url).env("AGENTSD_API_KEY", KEY);
    c
}

/// Writes `~/.config/agentsd/client.toml` for the CLI of `home`.
fn write_client_file(home: &Home, text: &str) -> std::path::PathBuf {
    let dir = home.path().join("client-config/agentsd");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("client.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// What a stand-in daemon answers.
struct Reply {
    status: u16,
    body: String,
    /// An event stream: `body` is sent, then the connection stays open
    /// (unless `hold` is false: then it ends, as a daemon that went away).
    events: bool,
    hold: bool,
}

fn reply(status: u16, body: impl Into<String>) -> Reply {
    Reply {
        status,
        body: body.into(),
        events: false,
        hold: false,
    }
}

/// An event stream that stays open once `body` is sent.
fn events(body: impl Into<String>) -> Reply {
    Reply {
        status: 200,
        body: body.into(),
        events: true,
        hold: true,
    }
}

fn error_reply(status: u16, code: &str, message: &str) -> Reply {
    reply(
        status,
        serde_json::json!({"error": {"code": code, "message": message}}).to_string(),
    )
}

/// A loopback stand-in for the daemon over plain http: answers each request
/// with what `answer` says for its method and path (query included), and
/// keeps every request line.
struct Stub {
    url: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Stub {
    fn start(answer: impl Fn(&str, &str) -> Reply + Send + Sync + 'static) -> Stub {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = requests.clone();
        let answer = std::sync::Arc::new(answer);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let (seen, answer) = (seen.clone(), answer.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        if c.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let line = head.lines().next().unwrap_or_default().to_string();
                    let mut parts = line.split(' ');
                    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let r = answer(method, path);
                    seen.lock().unwrap().push(format!("{method} {path}"));
                    let reason = if r.status < 400 { "OK" } else { "Error" };
                    let _ = if r.events {
                        write!(
                            c,
                            "HTTP/1.1 {} {reason}\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n{}",
                            r.status, r.body
                        )
                    } else {
                        write!(
                            c,
                            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                            r.status,
                            r.body.len(),
                            r.body
                        )
                    };
                    let _ = c.flush();
                    if r.events && r.hold {
                        // Held open until the client is done with it.
                        let _ = c.read(&mut [0u8; 1]);
                    }
                });
            }
        });
        Stub { url, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// The CLI aimed at a stand-in daemon.
fn cli_stub(home: &Home, stub: &Stub) -> Command {
    let mut c = cli(home);
    c.env("AGENTSD_URL", &stub.url).env("AGENTSD_API_KEY", KEY);
    c
}

fn summary(id: &str, status: Status, desired: agentsd::wire::Desired) -> AgentSummary {
    AgentSummary {
        id: id.into(),
        status,
        desired,
        pid: None,
        started_at: None,
        uptime_s: None,
        restarts: 0,
        last_exit: None,
        msg_count_24h: None,
        command: vec!["sleep".into(), "1000".into()],
        reason: None,
        dropped_log_lines: 0,
        resources: None,
        health: None,
        health_detail: None,
    }
}

fn summary_json(id: &str, status: Status, desired: agentsd::wire::Desired) -> String {
    serde_json::to_string(&summary(id, status, desired)).unwrap()
}

fn detail_json(id: &str, status: Status, desired: agentsd::wire::Desired) -> String {
    let d = AgentDetail {
        summary: summary(id, status, desired),
        config: agentsd::wire::AgentConfigView {
            command: vec!["sleep".into(), "1000".into()],
            cwd: None,
            env: Default::default(),
            env_file: None,
            user: None,
            autostart: true,
            restart: "on-failure".into(),
            stop_signal: "SIGTERM".into(),
            stop_timeout_ms: 10_000,
            start_window_ms: 1000,
            backoff_initial_ms: 1000,
            backoff_max_ms: 60_000,
            max_restarts: 10,
            log_max_size: 1 << 20,
            log_keep: 5,
            log_timestamps: false,
            has_stats: false,
            has_messages: false,
            health: None,
            depends_on: Default::default(),
        },
        logs: vec![],
    };
    serde_json::to_string(&d).unwrap()
}

/// One SSE event as the daemon frames it.
fn sse(name: &str, data: &str) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

fn status_event(id: &str, old: Status, new: Status) -> String {
    let e = agentsd::wire::StatusEvent {
        agent_id: id.into(),
        old_status: old,
        new_status: new,
        pid: None,
        at: "2026-01-01T00:00:00Z".into(),
    };
    sse("status", &serde_json::to_string(&e).unwrap())
}

#[test]
fn urls_with_a_user_name_or_password_are_refused_before_connecting() {
    let home = Home::new();
    for url in [
        "http://127.0.0.1:1@example.invalid/",
        "http://localhost:1@example.invalid/",
        "http://[::1]@example.invalid/",
        "https://user:secret@127.0.0.1:1/",
    ] {
        let mut c = cli(&home);
        c.env("AGENTSD_API_KEY", KEY);
        let o = run(c, &["agents", "list", "--url", url]);
        assert_eq!(o.status.code(), Some(2), "{url}: {}", text(&o.stderr));
        let e = text(&o.stderr);
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            e.contains("refusing a URL with a user name or password"),
            "{url}: {e}"
        );
        assert!(!e.contains("secret"), "the password is echoed: {e}");

        let mut c = cli(&home);
        c.env("AGENTSD_API_KEY", KEY).env("AGENTSD_URL", url);
        let o = run(c, &["status"]);
        assert_eq!(o.status.code(), Some(2), "AGENTSD_URL={url}: {}", text(&o.stderr));
    }
    let key = home.path().join("api.key");
    write_client_file(
        &home,
        &format!(
            "default_context = \"sneaky\"\n[contexts.sneaky]\nurl = \"http://127.0.0.1:1@example.invalid/\"\napi_key_file = \"{}\"\n",
            key.display()
        ),
    );
    let o = run(cli(&home), &["agents", "list"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("user name or password"));
}

#[test]
fn a_loopback_daemon_is_reached_directly_not_through_a_proxy() {
    let home = Home::new();
    let stub = Stub::start(|_, _| reply(200, "[]"));
    // A proxy that is not there: a request sent through it fails.
    let proxy = format!("http://127.0.0.1:{}", free_port());
    let mut c = cli_stub(&home, &stub);
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        c.env(var, &proxy);
    }
    c.env_remove("NO_PROXY").env_remove("no_proxy");
    let o = run(c, &["agents", "list", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(stub.requests(), ["GET /agents"]);
}

/// Runs `args` of the CLI on a terminal (a pty made by util-linux's
/// `script`) with the environment of `c`, and returns its exit code and
/// what the terminal received.
fn on_a_terminal(c: &Command, args: &[&str]) -> (Option<i32>, String) {
    on_a_terminal_for(c, None, args)
}

/// The same, ended after `secs` seconds if given.
fn on_a_terminal_for(c: &Command, secs: Option<u32>, args: &[&str]) -> (Option<i32>, String) {
    let mut line = match secs {
        Some(s) => format!("timeout {s} {}", bin()),
        None => bin().to_string(),
    };
    for a in args {
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=".contains(c)),
            "{a}"
        );
        line.push(' ');
        line.push_str(a);
    }
    let mut s = Command::new("script");
    s.args(["-qec", &line, "/dev/null"]).stdin(Stdio::null());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => s.env(k, v),
            None => s.env_remove(k),
        };
    }
    // A terminal of an operator who did not turn colour off.
    s.env_remove("NO_COLOR");
    let o = s
        .output()
        .expect("`script` (util-linux) is needed to run the CLI on a terminal");
    (o.status.code(), text(&o.stdout).replace("\r\n", "\n"))
}

#[tokio::test]
async fn control_characters_from_agents_are_escaped_on_a_terminal_only() {
    let home = Home::new();
    home.write_config(&format!(
        r#"{FAST}[agents.esc]
command = ["sh", "-c", "printf 'x \\033]0;pwned\\007 \\033[2J\\ty\\n'; exec sleep 1000"]
"#
    ));
    let d = home.start();
    d.wait_status("esc", Status::Running).await;
    let raw = "x \x1b]0;pwned\x07 \x1b[2J\ty";
    let escaped = "x \\x1b]0;pwned\\x07 \\x1b[2J\ty";
    eventually(Duration::from_secs(10), "the agent's line in its log", || {
        std::fs::read_to_string(home.log_path("esc")).is_ok_and(|l| l.contains("pwned"))
    })
    .await;

    // Not a terminal: exactly as the agent wrote it, for scripts.
    let o = run(cli_for(&home, &d), &["logs", "esc", "-n", "5"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), format!("{raw}\n"));
    let o = run(cli_for(&home, &d), &["agents", "show", "esc"]);
    assert!(
        text(&o.stdout).ends_with(&format!("{raw}\n")),
        "{:?}",
        text(&o.stdout)
    );

    // A terminal: nothing the agent wrote can drive it.
    let c = cli_for(&home, &d);
    let (code, out) = on_a_terminal(&c, &["logs", "esc", "-n", "5"]);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out, format!("{escaped}\n"));
    let (code, out) = on_a_terminal(&c, &["agents", "show", "esc", "--color", "never"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.ends_with(&format!("{escaped}\n")), "{out:?}");
    assert!(!out.contains('\x1b'), "{out:?}");
    // Followed lines too (the follower is ended by `timeout`, exit 124).
    let (code, out) = on_a_terminal_for(&c, Some(2), &["logs", "esc", "-n", "1", "-f", "--color", "never"]);
    assert_eq!(code, Some(124), "the follower did not follow: {out}");
    assert!(out.starts_with(&format!("{escaped}\n")), "{out:?}");
    assert!(!out.contains('\x1b'), "{out:?}");

    // --raw passes them through.
    let (code, out) = on_a_terminal(&c, &["logs", "esc", "-n", "5", "--raw"]);
    assert_eq!(code, Some(0), "{out:?}");
    assert_eq!(out, format!("{raw}\n"));
}

#[tokio::test]
async fn status_reaches_the_local_daemon_while_its_config_on_disk_is_invalid() {
    let home = Home::new();
    let port = free_port();
    let agents = format!("{FAST}[agents.a]\ncommand = [\"sleep\", \"1000\"]\n");
    write_config_on_port(&home, port, &agents);
    let d = home.start();
    d.wait_status("a", Status::Running).await;
    let good = std::fs::read_to_string(home.config_path()).unwrap();
    let local = |home: &Home| {
        let mut c = cli(home);
        c.env("AGENTSD_CONFIG", home.config_path());
        c
    };

    // An agent the daemon refuses: it keeps running the previous config.
    std::fs::write(
        home.config_path(),
        format!("{good}\n[agents.bad]\ncommand = 5\nnonsense = true\n"),
    )
    .unwrap();
    eventually_with(Duration::from_secs(10), "the config error reported", || async {
        let h = d.get("/health").await;
        if h["config_error"].is_string() {
            Ok(())
        } else {
            Err(h.to_string())
        }
    })
    .await;
    let o = run(local(&home), &["status"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains(&format!("at https://127.0.0.1:{port}")), "{out}");
    assert!(out.contains("1 agent: 1 running"), "{out}");
    assert!(
        out.contains("config error (the previous config is still running)"),
        "{out}"
    );

    // Not even TOML: half an edit below the server table.
    std::fs::write(
        home.config_path(),
        format!("{good}\n[agents.half]\ncommand = [\"sleep\", \n"),
    )
    .unwrap();
    let o = run(local(&home), &["agents", "list", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let list: Vec<AgentSummary> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0].id, "a");
}

#[tokio::test]
async fn agentsd_config_ranks_above_the_client_file_and_a_higher_source_says_so() {
    let home = Home::new();
    let port = free_port();
    write_config_on_port(
        &home,
        port,
        &format!("{FAST}[agents.a]\ncommand = [\"sleep\", \"1000\"]\n"),
    );
    let d = home.start();
    d.wait_status("a", Status::Running).await;
    // A default context for some other daemon, not running.
    write_client_file(
        &home,
        &format!(
            "default_context = \"elsewhere\"\n[contexts.elsewhere]\nurl = \"https://127.0.0.1:{}\"\napi_key_file = \"{}\"\n",
            free_port(),
            home.path().join("api.key").display()
        ),
    );
    let mut c = cli(&home);
    c.env("AGENTSD_CONFIG", home.config_path());
    let o = run(c, &["agents", "list", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "");
    let list: Vec<AgentSummary> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list[0].id, "a");

    // A flag outranks it, and the user is told which daemon answered.
    let mut c = cli_for(&home, &d);
    c.env("AGENTSD_CONFIG", home.config_path())
        .env_remove("AGENTSD_URL");
    let url = format!("https://localhost:{port}");
    let o = run(c, &["agents", "list", "--json", "--url", &url]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stderr),
        format!(
            "agentsd: talking to {url} (from --url), not to the daemon of AGENTSD_CONFIG={}\n",
            home.config_path().display()
        )
    );
}

#[test]
fn no_daemon_anywhere_is_exit_3_with_what_to_do() {
    if Path::new("/etc/agentsd/agentsd.toml").exists() {
        // This host has a daemon config: the CLI rightly goes there.
        panic!("cannot test `no daemon found` on a host with /etc/agentsd/agentsd.toml");
    }
    let home = Home::new();
    let o = run(cli(&home), &["status"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stderr),
        "agentsd: no daemon found: run `agentsd serve` or pass --url\n"
    );
}

#[test]
fn client_file_errors_name_the_line_and_column() {
    let home = Home::new();
    let p = write_client_file(
        &home,
        "default_context = \"x\"\n\n[contexts.x]\nurl = \"https://h:1\"\n  fingerprnt = \"SHA256:00\"\n",
    );
    let o = run(cli(&home), &["agents", "list"]);
    assert_eq!(o.status.code(), Some(2));
    let e = text(&o.stderr);
    assert!(e.starts_with(&format!("agentsd: {}:5:3: ", p.display())), "{e}");
    assert!(e.contains("fingerprnt"), "{e}");
}

/// A self-signed certificate made the common way: `openssl req -x509`
/// (CA:TRUE by default), for localhost and 127.0.0.1. Where openssl is not
/// installed, rcgen makes the same kind (CA:TRUE, RSA is not needed for it).
fn openssl_style_cert(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .is_ok_and(|o| o.status.success());
    if !made {
        let k = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let c = p.self_signed(&k).unwrap();
        std::fs::write(&cert, c.pem()).unwrap();
        std::fs::write(&key, k.serialize_pem()).unwrap();
    }
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let text = std::fs::read_to_string(&cert).unwrap();
    assert!(text.contains("BEGIN CERTIFICATE"), "{text}");
    (cert, key)
}

#[test]
fn a_ca_file_holding_the_served_certificate_is_trusted_even_if_it_says_ca_true() {
    let home = Home::new();
    let (cert, _) = openssl_style_cert(&home.path().join("tls"));
    home.write_config_tls("{ cert = \"tls/cert.pem\", key = \"tls/key.pem\" }", FAST);
    let d = home.start_with_ca(&cert);
    let port = d.url.rsplit(':').next().unwrap().to_string();
    for url in [
        format!("https://127.0.0.1:{port}"),
        format!("https://localhost:{port}"),
    ] {
        let o = run(
            cli_key(&home, &d),
            &["status", "--url", &url, "--ca-cert", cert.to_str().unwrap()],
        );
        assert!(o.status.success(), "{url}: {}", text(&o.stderr));
        assert!(
            text(&o.stdout).contains(&format!("at {url}")),
            "{}",
            text(&o.stdout)
        );
    }

    // Any other certificate in the CA file: one sentence with what to do.
    let other = home.path().join("other");
    let (files, _) = agentsd::certs::write_self_signed(&other, &["localhost".into()], false).unwrap();
    let o = run(
        cli_key(&home, &d),
        &["status", "--ca-cert", files.cert.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(3));
    let e = text(&o.stderr);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains(&format!(
            "failed: the server's certificate is not trusted: it is a CA certificate (CA:TRUE), and the CA file {} does not hold this very certificate; it presented SHA256:",
            files.cert.display()
        )),
        "{e}"
    );
    assert!(
        e.ends_with("(trust it with --ca-cert FILE, or pin that fingerprint in a context)\n"),
        "{e}"
    );
    assert!(!e.contains('{') && !e.contains("unexpected error"), "{e}");

    // TLS spoken to a plain http listener, which answers 400 at once.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tls_to_plain = format!("https://{}", plain.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut c, _)) = plain.accept() {
            let _ = c.read(&mut [0u8; 512]);
            let _ =
                c.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let o = run(cli_key(&home, &d), &["status", "--url", &tls_to_plain]);
    assert_eq!(o.status.code(), Some(3));
    let e = text(&o.stderr);
    assert!(e.contains("the server does not speak TLS"), "{e}");
}

#[tokio::test]
async fn a_start_that_ends_failed_or_exited_is_exit_8_and_every_failure_is_printed() {
    let home = Home::new();
    home.write_config(&format!(
        "{FAST}[agents.ok]\ncommand = [\"sleep\", \"1000\"]\nautostart = false\n\
         [agents.quits]\ncommand = [\"sh\", \"-c\", \"exit 3\"]\nautostart = false\nrestart = \"never\"\nstart_window = \"5s\"\n\
         [agents.crashes]\ncommand = [\"sh\", \"-c\", \"exit 4\"]\nautostart = false\nmax_restarts = 0\nstart_window = \"5s\"\n"
    ));
    let d = home.start();

    let o = run(cli_for(&home, &d), &["agents", "start", "quits"]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stderr),
        "agentsd: quits: exited instead of running: exit code 3\n"
    );
    assert_eq!(text(&o.stdout), "");

    let o = run(cli_for(&home, &d), &["agents", "restart", "crashes"]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o.stderr));
    let e = text(&o.stderr);
    assert!(
        e.starts_with("agentsd: crashes: failed instead of running: "),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");

    // Several ids: each failure on its own line, the first one's code.
    let o = run(cli_for(&home, &d), &["agents", "start", "ok", "quits", "nope"]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o.stderr));
    let e = text(&o.stderr);
    assert_eq!(e.lines().count(), 2, "{e}");
    assert!(e.contains("agentsd: quits: exited instead of running"), "{e}");
    assert!(e.contains("agentsd: nope: no agent named \"nope\""), "{e}");
    assert!(
        text(&o.stdout).starts_with("ok: running (pid "),
        "{}",
        text(&o.stdout)
    );
    let o = run(cli_for(&home, &d), &["agents", "start", "nope", "quits"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr).lines().count(), 2);
}

#[test]
fn forbidden_overtaken_and_not_stored_answers_have_their_own_exit_codes() {
    let home = Home::new();
    let stub = Stub::start(|method, path| match (method, path) {
        ("GET", "/health") => reply(200, r#"{"status":"ok","version":"0.1.0"}"#),
        ("POST", "/agents/a/stop") => {
            error_reply(403, "forbidden", "the key \"ci\" (role read) may not stop agents")
        }
        ("POST", "/agents/b/stop") => error_reply(409, "conflict", "started again by a later request"),
        ("POST", "/agents/c/stop") => error_reply(
            503,
            "state_not_stored",
            "cannot store the desired state: database is locked; retrying",
        ),
        _ => error_reply(404, "not_found", "no route"),
    });
    for (id, code, message) in [
        (
            "a",
            7,
            "refused: the key's role lacks the right to do this: the key \"ci\" (role read) may not stop agents",
        ),
        ("b", 8, "agentsd: b: started again by a later request\n"),
        (
            "c",
            6,
            "503 Service Unavailable: cannot store the desired state: database is locked; retrying",
        ),
    ] {
        let o = run(cli_stub(&home, &stub), &["agents", "stop", id]);
        assert_eq!(o.status.code(), Some(code), "{id}: {}", text(&o.stderr));
        let e = text(&o.stderr);
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.contains(message), "{id}: {e}");
    }
    // All three at once: each printed, the first one's code.
    let o = run(cli_stub(&home, &stub), &["agents", "stop", "c", "a", "b"]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr).lines().count(), 3, "{}", text(&o.stderr));
}

#[test]
fn an_answer_202_is_followed_on_sse_status_until_the_agent_settles() {
    use agentsd::wire::Desired::{Running as Up, Stopped as Down};
    let home = Home::new();
    // The restart is asked for twice in the summary: between its stop and
    // its start it is `stopped` but still wanted up.
    let restart_reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reads = restart_reads.clone();
    let stub = Stub::start(move |method, path| match (method, path) {
        ("POST", "/agents/slow/stop") => reply(202, summary_json("slow", Status::Stopping, Down)),
        ("POST", "/agents/lost/start") => reply(202, summary_json("lost", Status::Starting, Up)),
        ("POST", "/agents/web/restart") => reply(202, summary_json("web", Status::Stopping, Up)),
        ("GET", "/sse/status") => Reply {
            hold: true,
            status: 200,
            body: [
                sse(
                    "snapshot",
                    &format!(
                        "[{},{},{}]",
                        summary_json("slow", Status::Stopping, Down),
                        summary_json("lost", Status::Starting, Up),
                        summary_json("web", Status::Stopping, Up)
                    ),
                ),
                status_event("slow", Status::Stopping, Status::Stopped),
                status_event("lost", Status::Starting, Status::Stopped),
                status_event("web", Status::Stopping, Status::Stopped),
                status_event("web", Status::Stopped, Status::Starting),
                status_event("web", Status::Starting, Status::Running),
            ]
            .concat(),
            events: true,
        },
        ("GET", "/agents/slow") => reply(200, detail_json("slow", Status::Stopped, Down)),
        // A stop overtook this start.
        ("GET", "/agents/lost") => reply(200, detail_json("lost", Status::Stopped, Down)),
        ("GET", "/agents/web") => {
            if reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                reply(200, detail_json("web", Status::Stopped, Up))
            } else {
                reply(200, detail_json("web", Status::Running, Up))
            }
        }
        _ => error_reply(404, "not_found", "no route"),
    });

    let o = run(cli_stub(&home, &stub), &["agents", "stop", "slow"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "slow: stopped\n");
    assert_eq!(
        text(&o.stderr),
        "agentsd: slow: still stopping when the daemon answered; waiting\n"
    );

    let o = run(cli_stub(&home, &stub), &["agents", "start", "lost"]);
    assert_eq!(o.status.code(), Some(8), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr)
            .ends_with("agentsd: lost: stopped instead of running (a later request asked for stopped)\n"),
        "{}",
        text(&o.stderr)
    );

    let o = run(cli_stub(&home, &stub), &["agents", "restart", "web"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "web: running\n");
    assert_eq!(restart_reads.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn agents_list_asks_the_daemon_for_a_status_and_text() {
    use agentsd::wire::Desired::Running as Up;
    let home = Home::new();
    // A daemon that does not filter (an older one): the client still does.
    let all = format!(
        "[{},{},{}]",
        summary_json("bot-1", Status::Failed, Up),
        summary_json("bot-2", Status::Running, Up),
        summary_json("web", Status::Failed, Up)
    );
    let stub = Stub::start(move |_, _| reply(200, all.clone()));
    let o = run(
        cli_stub(&home, &stub),
        &[
            "agents", "list", "--status", "failed", "--filter", "bot & co", "--json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(stub.requests(), ["GET /agents?status=failed&q=bot+%26+co"]);
    let o = run(
        cli_stub(&home, &stub),
        &["agents", "list", "--status", "failed", "--filter", "bot"],
    );
    let table = text(&o.stdout);
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(
        table.lines().nth(1).unwrap().starts_with("bot-1  failed"),
        "{table}"
    );

    let o = run(
        cli_stub(&home, &stub),
        &["agents", "list", "--status", "sleeping"],
    );
    assert_eq!(o.status.code(), Some(2));
}

// Observing agents: resources in the table, history, several agents' logs.

#[tokio::test]
async fn agents_list_shows_cpu_and_memory_of_running_agents() {
    let home = Home::new();
    home.write_config(&format!(
        "sample_interval = \"100ms\"\n{FAST}[agents.web]\ncommand = [\"sleep\", \"1000\"]\n[agents.idle]\ncommand = [\"sleep\", \"1000\"]\nautostart = false\n"
    ));
    let d = home.start();
    d.wait_for("web", Duration::from_secs(15), |a| a.resources.is_some())
        .await;
    let out = run(cli_for(&home, &d), &["agents", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    let head: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        head,
        [
            "AGENT", "STATUS", "HEALTH", "PID", "CPU", "MEM", "RESTARTS", "MSGS/24H", "INFO"
        ],
        "{table}"
    );
    // idle: nothing runs, so nothing to measure.
    let idle: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(idle[..6], ["idle", "stopped", "-", "-", "-", "-"], "{table}");
    let web: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(web[..2], ["web", "running"], "{table}");
    let (cpu, mem) = (web[4], web[5]);
    let pct: f64 = cpu
        .strip_suffix('%')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("CPU {cpu:?}\n{table}"));
    assert!(
        (0.0..50.0).contains(&pct),
        "a sleeping agent uses no CPU: {table}"
    );
    // sleep's resident memory: hundreds of KiB to a few MiB.
    let (n, unit) = mem.split_at(mem.len() - 1);
    assert!(
        n.parse::<f64>().is_ok() && ["K", "M"].contains(&unit),
        "MEM {mem:?}\n{table}"
    );

    // --json keeps the API's raw numbers.
    let out = run(cli_for(&home, &d), &["agents", "list", "--json"]);
    let list: Vec<AgentSummary> = serde_json::from_slice(&out.stdout).unwrap();
    let r = list.iter().find(|a| a.id == "web").unwrap().resources.unwrap();
    assert!(r.rss_bytes > 100 * 1024 && r.processes == 1, "{r:?}");
    assert!(list.iter().find(|a| a.id == "idle").unwrap().resources.is_none());
    let raw: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let web = raw.as_array().unwrap().iter().find(|a| a["id"] == "web").unwrap();
    assert!(web["resources"]["rss_bytes"].is_u64(), "{web}");
    assert!(web["resources"]["cpu_pct"].is_number(), "{web}");
}

#[tokio::test]
async fn history_after_a_crash_loop_shows_every_transition_with_its_exit_code() {
    let home = Home::new();
    home.write_config(&format!(
        "{FAST}[agents.crashy]\ncommand = [\"sh\", \"-c\", \"exit 3\"]\nmax_restarts = 2\nstart_window = \"1s\"\n[agents.calm]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    let d = home.start();
    d.wait_status("crashy", Status::Failed).await;
    let api: Vec<agentsd::wire::HistoryEntry> =
        serde_json::from_value(d.get("/agents/crashy/history?limit=1000").await).unwrap();
    // Three starts that each ended with exit 3 within the start window (the
    // first and two restarts), then it gave up.
    let exits = api
        .iter()
        .filter(|e| e.exit.as_ref().is_some_and(|x| x.code == Some(3)))
        .count();
    assert_eq!(exits, 3, "{api:#?}");

    let out = run(cli_for(&home, &d), &["history", "crashy"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    let lines: Vec<&str> = shown.lines().collect();
    // Every transition, oldest first (the API answers newest first).
    assert_eq!(lines.len(), api.len(), "{shown}");
    for (line, e) in lines.iter().zip(api.iter().rev()) {
        assert!(line.starts_with(&e.at), "{line:?} vs {e:?}");
        let transition = format!("  {} -> {}", e.old_status, e.new_status);
        assert!(line.contains(&transition), "{line:?} vs {e:?}");
        if let Some(pid) = e.pid {
            assert!(line.contains(&format!("pid {pid}")), "{line:?}");
        }
        if e.exit.as_ref().is_some_and(|x| x.code == Some(3)) {
            assert!(line.contains("exit 3"), "{line:?}");
        }
    }
    assert_eq!(
        lines.iter().filter(|l| l.contains("exit 3")).count(),
        3,
        "{shown}"
    );
    assert!(lines[0].contains("-> starting"), "{shown}");
    let last = lines.last().unwrap();
    assert!(
        last.contains("starting -> failed")
            && last.contains("exit 3")
            && last.contains("gave up after 3 starts"),
        "{shown}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("starting -> backoff") && l.contains("exit 3"))
            .count(),
        2,
        "{shown}"
    );

    // -n: the latest ones, still oldest first.
    let out = run(cli_for(&home, &d), &["history", "crashy", "-n", "2"]);
    assert_eq!(
        text(&out.stdout).lines().collect::<Vec<_>>(),
        lines[lines.len() - 2..]
    );

    // --json: the API's entries, one a line, oldest first.
    let out = run(cli_for(&home, &d), &["history", "crashy", "--json"]);
    let mut json: Vec<agentsd::wire::HistoryEntry> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    json.reverse();
    assert_eq!(json, api);

    let o = run(cli_for(&home, &d), &["history", "nope"]);
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(text(&o.stderr), "agentsd: no agent named \"nope\"\n");
    let o = run(cli_for(&home, &d), &["history", "crashy", "-n", "0"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(cli_for(&home, &d), &["history", "crashy", "-n", "1001"]);
    assert_eq!(o.status.code(), Some(2));
}

#[tokio::test]
async fn logs_of_several_agents_are_prefixed_and_json_carries_cursors() {
    let home = Home::new();
    home.write_config(&format!(
        "{FAST}[agents.a]\ncommand = [\"sh\", \"-c\", \"echo a1; echo a2; exec sleep 1000\"]\n\
         [agents.bb]\ncommand = [\"sh\", \"-c\", \"echo b1; exec sleep 1000\"]\n\
         [agents.quiet]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    let d = home.start();
    for (id, n) in [("a", 2), ("bb", 1)] {
        eventually(Duration::from_secs(10), "the agents' lines in their logs", || {
            std::fs::read_to_string(home.log_path(id)).is_ok_and(|l| l.lines().count() == n)
        })
        .await;
    }

    let o = run(cli_for(&home, &d), &["logs", "a", "bb"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "a  | a1\na  | a2\nbb | b1\n");
    let o = run(cli_for(&home, &d), &["logs", "--all", "-n", "1"]);
    assert_eq!(text(&o.stdout), "a     | a2\nbb    | b1\n");
    // One id: as before, no prefix.
    let o = run(cli_for(&home, &d), &["logs", "a"]);
    assert_eq!(text(&o.stdout), "a1\na2\n");

    let api: Vec<agentsd::wire::LogLine> =
        serde_json::from_value(d.get("/agents/a/logs?n=10").await).unwrap();
    for args in [&["logs", "a", "--json"][..], &["logs", "a", "bb", "--json"]] {
        let o = run(cli_for(&home, &d), args);
        let got: Vec<serde_json::Value> = text(&o.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            got[0],
            serde_json::json!({"agent": "a", "cursor": api[0].cursor, "line": "a1"})
        );
        assert_eq!(
            got[1],
            serde_json::json!({"agent": "a", "cursor": api[1].cursor, "line": "a2"})
        );
        assert_eq!(got.len(), args.len() - 1, "{args:?}");
    }

    // An unknown id among others: the others' lines, the failure, exit 5.
    let o = run(cli_for(&home, &d), &["logs", "a", "nope", "-f"]);
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "a    | a1\na    | a2\n");
    assert_eq!(text(&o.stderr), "agentsd: nope: no agent named \"nope\"\n");
    let o = run(cli_for(&home, &d), &["logs"]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(cli_for(&home, &d), &["logs", "a", "--all"]);
    assert_eq!(o.status.code(), Some(2));

    // On a terminal: each agent's prefix in its own colour.
    let c = cli_for(&home, &d);
    let (code, out) = on_a_terminal(&c, &["logs", "a", "bb", "-n", "1", "--color", "always"]);
    assert_eq!(code, Some(0), "{out}");
    let colour = |s: &str| {
        s.strip_prefix("\x1b[")
            .and_then(|r| r.split_once('m'))
            .map(|(c, _)| c.to_string())
            .unwrap_or_else(|| panic!("no colour in {s:?}"))
    };
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(
        lines[0].ends_with(" | a2") && lines[1].ends_with(" | b1"),
        "{out:?}"
    );
    // The same colour for the same agent in every run.
    let (_, again) = on_a_terminal(&c, &["logs", "bb", "a", "-n", "1", "--color", "always"]);
    let again: Vec<&str> = again.lines().collect();
    assert_eq!(colour(lines[0]), colour(again[1]));
    assert_eq!(colour(lines[1]), colour(again[0]));
}

#[test]
fn several_agents_follow_one_stream_and_each_resumes_from_its_own_cursor() {
    let home = Home::new();
    let line = |agent: &str, cursor: u64, text: &str| {
        format!(
            "event: line\nid: {agent}:{cursor}\ndata: {}\n\n",
            serde_json::json!({"agent": agent, "line": text})
        )
    };
    let first = [
        line("a", 20, "a1"),
        line("b", 5, "b1"),
        format!(
            "event: gap\nid: b:9\ndata: {}\n\n",
            serde_json::json!({"agent": "b", "from": 5, "to": 9})
        ),
    ]
    .concat();
    let second = line("a", 30, "a2");
    let stub = Stub::start(move |_, path| match path {
        "/health" => reply(200, r#"{"status":"ok","version":"0"}"#),
        "/agents" => reply(
            200,
            format!(
                "[{},{}]",
                summary_json("a", Status::Running, agentsd::wire::Desired::Running),
                summary_json("b", Status::Running, agentsd::wire::Desired::Running)
            ),
        ),
        "/agents/a/logs?n=1" => reply(200, r#"[{"cursor":10,"text":"a0"}]"#),
        "/agents/b/logs?n=1" => reply(200, "[]"),
        // The first stream ends after three events, as a daemon that
        // restarts; the second resumes a after a1 and b after the gap.
        "/sse/logs?agent=a&agent=b&after=b:0,a:10" => Reply {
            hold: false,
            ..events(first.clone())
        },
        "/sse/logs?agent=a&agent=b&after=b:9,a:20" => events(second.clone()),
        "/sse/logs?n=0&after=b:0,a:10" => events(line("c", 3, "c1")),
        _ => error_reply(404, "not_found", path),
    });
    let mut follower = cli_stub(&home, &stub)
        .args(["logs", "a", "b", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stdout_lines(follower.stdout.take().unwrap());
    let mut got = Vec::new();
    while got.len() < 4 {
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => got.push(l),
            Err(_) => panic!("stopped after {got:?}; requests {:?}", stub.requests()),
        }
    }
    let _ = follower.kill();
    let out = follower.wait_with_output().unwrap();
    assert_eq!(got, ["a | a0", "a | a1", "b | b1", "a | a2"]);
    let err = text(&out.stderr);
    assert!(
        err.contains("agentsd: b: some lines were rotated away before they could be shown (cursor 5 to 9)"),
        "{err}"
    );
    let streams: Vec<String> = stub
        .requests()
        .into_iter()
        .filter(|r| r.contains("/sse/"))
        .collect();
    assert_eq!(
        streams,
        [
            "GET /sse/logs?agent=a&agent=b&after=b:0,a:10",
            "GET /sse/logs?agent=a&agent=b&after=b:9,a:20"
        ]
    );

    // --all: one stream for every agent (agents added later included,
    // starting with their last n lines), in JSON with cursors.
    let mut follower = cli_stub(&home, &stub)
        .args(["logs", "--all", "-f", "-n", "0", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stdout_lines(follower.stdout.take().unwrap());
    let l = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let _ = follower.kill();
    let _ = follower.wait();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&l).unwrap(),
        serde_json::json!({"agent": "c", "cursor": 3, "line": "c1"})
    );
    assert!(
        stub.requests()
            .contains(&"GET /sse/logs?n=0&after=b:0,a:10".to_string())
    );
}

#[tokio::test]
async fn logs_of_two_agents_follow_across_a_daemon_restart_each_line_once() {
    let home = Home::new();
    let port = free_port();
    let count = "[\"sh\", \"-c\", \"i=0; while :; do i=$((i+1)); echo \\\"$$ $i\\\"; sleep 0.01; done\"]";
    write_config_on_port(
        &home,
        port,
        &format!("{FAST}[agents.a]\ncommand = {count}\n[agents.b]\ncommand = {count}\n"),
    );
    let mut d = home.start();
    d.wait_status("a", Status::Running).await;
    d.wait_status("b", Status::Running).await;

    let mut follower = cli_for(&home, &d)
        .args(["logs", "a", "b", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stdout_lines(follower.stdout.take().unwrap());
    /// (agent, line) as the follower printed them.
    type Lines = Vec<(String, String)>;
    let mut got: Lines = Vec::new();
    // Reads until `enough` holds for what was read.
    let take = |got: &mut Lines, enough: &dyn Fn(&Lines) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !enough(got) {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = rx.recv_timeout(left).expect("the follower stopped printing");
            let (agent, line) = l.split_once(" | ").unwrap_or_else(|| panic!("no prefix: {l:?}"));
            got.push((agent.to_string(), line.to_string()));
        }
    };
    let pids = |got: &[(String, String)], agent: &str| -> std::collections::BTreeSet<String> {
        got.iter()
            .filter(|(a, _)| a == agent)
            .map(|(_, l)| l.split(' ').next().unwrap().to_string())
            .collect()
    };
    take(&mut got, &|g| {
        ["a", "b"]
            .iter()
            .all(|id| g.iter().filter(|(a, _)| a == id).count() >= 30)
    });
    assert_eq!(d.stop().code(), Some(0));
    drop(d);
    let d = home.start();
    d.wait_status("a", Status::Running).await;
    // Lines of both agents' new runs arrive through the reconnected stream.
    take(&mut got, &|g| {
        ["a", "b"]
            .iter()
            .all(|id| pids(g, id).len() == 2 && g.iter().rev().take(40).any(|(a, _)| a == id))
    });
    take(&mut got, &|g| g.len() >= 200);
    let _ = follower.kill();
    let out = follower.wait_with_output().unwrap();
    for id in ["a", "b"] {
        let mine: Vec<&str> = got
            .iter()
            .filter(|(a, _)| a == id)
            .map(|(_, l)| l.as_str())
            .collect();
        let log = std::fs::read_to_string(home.log_path(id)).unwrap();
        let all: Vec<&str> = log.lines().collect();
        let start = all.iter().position(|l| *l == mine[0]).unwrap();
        assert_eq!(
            mine.as_slice(),
            &all[start..start + mine.len()],
            "{id}: the follower's lines differ from the log (stderr: {})",
            text(&out.stderr)
        );
        assert_eq!(pids(&got, id).len(), 2, "{id}: both runs should be seen");
    }
}

#[tokio::test]
async fn status_json_and_watch_json_print_one_object_a_line() {
    let home = Home::new();
    home.write_config(&format!(
        "{FAST}[agents.svc]\ncommand = [\"sleep\", \"1000\"]\n[agents.off]\ncommand = [\"sleep\", \"1000\"]\nautostart = false\n"
    ));
    let d = home.start();
    d.wait_status("svc", Status::Running).await;
    let o = run(cli_for(&home, &d), &["status", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().count(), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["url"], d.url.as_str());
    assert_eq!(v["health"]["status"], "ok");
    assert_eq!(v["health"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["agents"], 2);
    assert_eq!(v["by_status"]["running"], 1);
    assert_eq!(v["by_status"]["stopped"], 1);
    assert_eq!(v["by_status"]["failed"], 0);

    let mut watch = cli_for(&home, &d)
        .args(["status", "--watch", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stdout_lines(watch.stdout.take().unwrap());
    // Connected once the daemon counts the stream.
    eventually_with(Duration::from_secs(10), "the watch to connect", || async {
        let m = d.metrics().await;
        if m.lines().any(|l| l == "agentsd_event_streams 1") {
            Ok(())
        } else {
            Err(m)
        }
    })
    .await;
    d.control("svc", "stop").await;
    let a = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let b = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let _ = watch.kill();
    let _ = watch.wait();
    let a: agentsd::wire::StatusEvent = serde_json::from_str(&a).unwrap();
    let b: agentsd::wire::StatusEvent = serde_json::from_str(&b).unwrap();
    assert_eq!(
        (a.agent_id.as_str(), a.old_status, a.new_status),
        ("svc", Status::Running, Status::Stopping)
    );
    assert_eq!((b.old_status, b.new_status), (Status::Stopping, Status::Stopped));
}
