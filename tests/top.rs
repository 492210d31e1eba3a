//! `agentsd top` in a real pseudo-terminal, against the real daemon: what an
//! operator sees and types.

use crate::util::*;
use agentsd::wire::Status;
use nix::sys::termios::LocalFlags;
use std::process::Command;
use std::time::Duration;

/// `agentsd top` aimed at `d`, with a clean environment (no stray client
/// file or AGENTSD_*), on an operator's terminal (colour not turned off).
fn top_for(home: &Home, d: &Daemon) -> Command {
    let mut c = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("AGENTSD_") {
            c.env_remove(k);
        }
    }
    c.arg("top")
        .env_remove("NO_COLOR")
        .env("XDG_CONFIG_HOME", home.path().join("client-config"))
        .env("HOME", home.path())
        .env("AGENTSD_URL", &d.url)
        .env("AGENTSD_API_KEY", KEY)
        .env("AGENTSD_CA_CERT", home.path().join("state/tls/cert.pem"));
    c
}

/// Whether a row of the screen names `id` with `status`, and `also`.
fn row(screen: &str, id: &str, status: &str, also: &str) -> bool {
    screen.lines().any(|l| {
        l.split_whitespace().any(|w| w == id) && l.split_whitespace().any(|w| w == status) && l.contains(also)
    })
}

/// Where `needle` last occurs in `hay`.
fn last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

#[tokio::test]
async fn top_stops_and_starts_an_agent_shows_its_log_and_gives_the_terminal_back() {
    let home = Home::new();
    home.write_config(&format!(
        "{FAST}[agents.alpha]\ncommand = [\"sh\", \"-c\", \"echo \\\"alpha up as $$\\\"; exec sleep 1000\"]\n\
         [agents.beta]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    let d = home.start();
    let pid = d.wait_status("alpha", Status::Running).await.pid.unwrap();
    d.wait_status("beta", Status::Running).await;
    let within = Duration::from_secs(20);

    let mut pty = Pty::spawn(&top_for(&home, &d), 24, 80);
    // Both agents, alpha selected (sorted by id), its log line in the pane.
    let screen = pty.wait_screen(within, "both agents listed with alpha's log", |s| {
        row(s, "alpha", "running", &pid.to_string())
            && row(s, "beta", "running", "")
            && s.contains(&format!("alpha up as {pid}"))
            && s.contains("● live")
    });
    assert!(screen.contains("x stop") && screen.contains("q quit"), "{screen}");
    let raw_mode = pty.termios();
    assert!(
        !raw_mode.local_flags.contains(LocalFlags::ICANON)
            && !raw_mode.local_flags.contains(LocalFlags::ECHO),
        "top runs the terminal raw"
    );
    assert_eq!(pty.modes(), (true, true), "alternate screen, cursor hidden");

    // x asks first; y stops it: its process is gone.
    pty.send("x");
    pty.wait_screen(within, "the stop to be asked for", |s| {
        s.contains("Stop alpha? y stop")
    });
    assert!(pid_alive(pid), "nothing stopped before y");
    pty.send("y");
    eventually_blocking(within, "alpha's process to be gone", || {
        if pid_alive(pid) {
            Err(format!("{pid} is alive; the screen:\n{}", pty.screen()))
        } else {
            Ok(())
        }
    });
    pty.wait_screen(within, "alpha shown stopped", |s| {
        row(s, "alpha", "stopped", "") && s.contains("alpha: stopped")
    });
    assert_eq!(d.agent("alpha").await.status, Status::Stopped);
    assert!(home.pids_of("alpha").is_empty());

    // s starts it again: a new process, whose first line shows up live in
    // the log pane under the old one.
    pty.send("s");
    let again = d
        .wait_for("alpha", within, |a| {
            a.status == Status::Running && a.pid.is_some_and(|p| p != pid)
        })
        .await
        .pid
        .unwrap();
    assert!(pid_alive(again));
    let screen = pty.wait_screen(within, "alpha running again, its new line in the log", |s| {
        row(s, "alpha", "running", &again.to_string()) && s.contains(&format!("alpha up as {again}"))
    });
    let (old, new) = (
        screen.find(&format!("alpha up as {pid}")),
        screen.find(&format!("alpha up as {again}")),
    );
    assert!(old.is_some() && old < new, "{screen}");
    assert!(row(&screen, "beta", "running", ""), "{screen}");

    // q: exit 0, the terminal as it was.
    pty.send("q");
    let status = pty.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    // After the last frame: the alternate screen left, the cursor shown.
    eventually_blocking(within, "the exit sequences", || {
        let raw = pty.raw();
        let (left, shown) = (last(&raw, b"\x1b[?1049l"), last(&raw, b"\x1b[?25h"));
        if left > last(&raw, b"\x1b[?1049h") && shown > last(&raw, b"\x1b[?25l") {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&raw[raw.len().saturating_sub(200)..]).into_owned())
        }
    });
    assert_eq!(pty.modes(), (false, false), "main screen, cursor shown");
    assert_eq!(
        pty.termios(),
        pty.termios_before,
        "the terminal's settings restored"
    );
    // The agents were left as they were.
    assert_eq!(d.agent("alpha").await.pid, Some(again));
}

#[test]
fn without_a_terminal_top_says_so_and_exits_2() {
    let home = Home::new();
    let o = Command::new(bin())
        .arg("top")
        .env("XDG_CONFIG_HOME", home.path().join("client-config"))
        .env("AGENTSD_URL", "https://127.0.0.1:1")
        .env("AGENTSD_API_KEY", KEY)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err,
        "agentsd: agentsd top needs a terminal; in a script, use `agentsd status --watch --json`\n"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn an_unreachable_daemon_is_one_line_and_exit_3_before_the_screen_is_taken() {
    let home = Home::new();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = Command::new(bin());
    c.arg("top")
        .env_remove("AGENTSD_CONTEXT")
        .env_remove("AGENTSD_CONFIG")
        .env("XDG_CONFIG_HOME", home.path().join("client-config"))
        .env("AGENTSD_URL", format!("http://127.0.0.1:{port}"))
        .env("AGENTSD_API_KEY", KEY);
    let mut pty = Pty::spawn(&c, 24, 80);
    assert_eq!(pty.wait_exit(Duration::from_secs(20)).code(), Some(3));
    let out = eventually_blocking(Duration::from_secs(5), "the error line", || {
        let raw = String::from_utf8_lossy(&pty.raw()).into_owned();
        if raw.contains('\n') { Ok(raw) } else { Err(raw) }
    });
    assert!(
        out.starts_with(&format!("agentsd: cannot reach http://127.0.0.1:{port}")),
        "{out:?}"
    );
    assert!(!out.contains("\x1b[?1049h"), "the screen was taken: {out:?}");
    assert_eq!(pty.termios(), pty.termios_before);
}

#[tokio::test]
async fn top_with_a_read_key_shows_the_role_and_stops_nothing() {
    let home = Home::new();
    let out = run(cli(&home), &["gen-key", "--name", "wall", "--role", "read"]);
    let printed = text(&out.stdout);
    let key = printed.lines().next().unwrap().to_string();
    let lines = &printed[printed.find("[keys.").unwrap()..];
    home.write_config(&format!(
        "{FAST}[agents.alpha]\ncommand = [\"sleep\", \"1000\"]\n\n{lines}"
    ));
    let d = home.start();
    let pid = d.wait_status("alpha", Status::Running).await.pid.unwrap();
    let within = Duration::from_secs(20);
    let mut c = top_for(&home, &d);
    c.env("AGENTSD_API_KEY", &key);
    let mut pty = Pty::spawn(&c, 24, 80);
    pty.wait_screen(within, "the read-only key named", |s| {
        row(s, "alpha", "running", &pid.to_string()) && s.contains("key wall (read-only)")
    });
    pty.send("x");
    pty.wait_screen(within, "why not", |s| {
        s.contains("read-only: the key \"wall\" has the role read")
    });
    // Nothing asked, nothing stopped. Esc after y is the barrier: top
    // handles keys in order, and once Esc has cleared the message the
    // status line shows what y did: a stop under way, or its answer.
    pty.send("y");
    pty.send("\x1b");
    let screen = pty.wait_screen(within, "y and Esc handled", |s| {
        row(s, "alpha", "running", &pid.to_string()) && !s.contains("read-only: the key")
    });
    assert!(
        !screen.contains("under way") && !screen.contains("alpha:") && !screen.contains("stopping"),
        "y sent a stop:\n{screen}"
    );
    // Anything top sent before that was answered before it showed (a stop
    // answers once the process is gone): the agent runs, and the audit,
    // read after a request of the test's own, has nothing of the key.
    assert!(pid_alive(pid));
    let a = d.agent("alpha").await;
    assert_eq!((a.status, a.pid), (Status::Running, Some(pid)));
    let (code, _) = d.request(reqwest::Method::POST, "/agents/nope/start").await;
    assert_eq!(code, 404);
    let audit = eventually_with(within, "the test's own request in the audit", || async {
        let audit = d.get("/audit").await;
        let has = audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "/agents/nope/start");
        if has { Ok(audit) } else { Err(audit.to_string()) }
    })
    .await;
    assert!(
        audit.as_array().unwrap().iter().all(|e| e["key"] != "wall"),
        "top sent a request with the read key: {audit:#}"
    );
    pty.send("q");
    assert_eq!(pty.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// A reload that removes an agent takes its row out of `top` at once (it
/// used to stay, `stopped`, until top reconnected).
#[tokio::test]
async fn top_drops_an_agent_removed_from_the_config() {
    let home = Home::new();
    let both = format!(
        "{FAST}[agents.alpha]\ncommand = [\"sleep\", \"1000\"]\n[agents.gamma]\ncommand = [\"sleep\", \"1000\"]\n"
    );
    home.write_config(&both);
    let d = home.start();
    d.wait_status("alpha", Status::Running).await;
    d.wait_status("gamma", Status::Running).await;
    let within = Duration::from_secs(20);
    let mut pty = Pty::spawn(&top_for(&home, &d), 24, 100);
    pty.wait_screen(within, "both agents listed", |s| {
        row(s, "alpha", "running", "") && row(s, "gamma", "running", "") && s.contains("● live")
    });
    home.write_config(&format!(
        "{FAST}[agents.alpha]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    // The Agents box alone (the events pane below still names gamma).
    let agents_box = |s: &str| -> Vec<String> {
        s.lines()
            .skip_while(|l| !l.contains("┌ Agents"))
            .take_while(|l| !l.contains('└'))
            .map(str::to_string)
            .collect()
    };
    pty.wait_screen(within, "gamma's row gone", |s| {
        let rows = agents_box(s);
        s.contains("1 agent: 1 running")
            && rows.iter().any(|l| l.contains("alpha"))
            && !rows.iter().any(|l| l.split_whitespace().any(|w| w == "gamma"))
    });
    home.write_config(&both);
    pty.wait_screen(within, "gamma back", |s| row(s, "gamma", "running", ""));
    pty.send("q");
    assert!(pty.wait_exit(within).success());
}

/// Whether a row of the screen has every one of `words`, each a whole word.
fn row_words(screen: &str, words: &[&str]) -> bool {
    screen
        .lines()
        .any(|l| words.iter().all(|w| l.split_whitespace().any(|x| x == *w)))
}

/// An agent's health in its own column, live: healthy while its server
/// answers 200, unhealthy once it answers 503 (and the detail line says
/// what it answered), healthy again after.
#[tokio::test]
async fn top_shows_an_agents_health_go_healthy_then_unhealthy() {
    let home = Home::new();
    std::fs::write(home.path().join("http.pl"), HTTP_PL).unwrap();
    std::fs::create_dir(home.path().join("web")).unwrap();
    let port = free_port();
    home.write_config(&format!(
        "{FAST}\
         [agents.web]\ncommand = [\"perl\", \"../http.pl\", \"{port}\", \"0\"]\ncwd = \"web\"\n\
         health = {{ http = \"http://127.0.0.1:{port}/\", interval = \"200ms\", timeout = \"200ms\", failures = 2, on_failure = \"report\" }}\n\
         [agents.plain]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    let d = home.start();
    let pid = d.wait_status("web", Status::Running).await.pid.unwrap();
    let within = Duration::from_secs(20);
    let mut pty = Pty::spawn(&top_for(&home, &d), 24, 120);
    let screen = pty.wait_screen(within, "web healthy", |s| {
        row_words(s, &["web", "running", "healthy", &pid.to_string()]) && s.contains("● live")
    });
    assert!(screen.contains("HEALTH"), "{screen}");
    // No probe, no health.
    assert!(
        screen.lines().any(|l| l.starts_with("│ plain ")
            && !l.contains("healthy")
            && l.split_whitespace().any(|w| w == "running")),
        "{screen}"
    );
    // web selected: the detail line is its own.
    pty.send("j");
    pty.wait_screen(within, "web selected", |s| s.contains(" web running, healthy "));

    std::fs::write(home.path().join("web/sick"), "").unwrap();
    let screen = pty.wait_screen(within, "web unhealthy, and why", |s| {
        row_words(s, &["web", "running", "unhealthy", &pid.to_string()])
            && s.contains("web running, unhealthy: HTTP 503 Service Unavailable")
    });
    assert!(screen.contains("1 unhealthy"), "{screen}");
    assert!(screen.contains("web health→unhealthy"), "{screen}");
    // Report only: the same process.
    assert_eq!(d.agent("web").await.pid, Some(pid));

    std::fs::remove_file(home.path().join("web/sick")).unwrap();
    pty.wait_screen(within, "web healthy again", |s| {
        row_words(s, &["web", "running", "healthy"]) && s.contains("web running, healthy ")
    });
    pty.send("q");
    assert_eq!(pty.wait_exit(Duration::from_secs(10)).code(), Some(0));
}

/// `top --context all`: two real daemons (b with a key of its own, the same
/// agent id on both) and a context nothing answers. Both hosts' agents in
/// one table with a HOST column, the down one a line of its own; a stop on
/// b's row stops b's agent, not a's of the same name; the log pane shows
/// the selected row's host's log.
#[tokio::test]
async fn top_over_several_contexts_shows_every_host_and_acts_on_the_rows_own() {
    const B_KEY: &str = "b-key-0123456789abcdef0123456789abcdef0123";
    let agent = |host: &str, id: &str| {
        format!(
            "[agents.{id}]\ncommand = [\"sh\", \"-c\", \"echo \\\"{id} of {host} as $$\\\"; exec sleep 1000\"]\n"
        )
    };
    let (ha, hb) = (Home::new(), Home::new());
    ha.write_config(&format!("{FAST}{}", agent("a", "alpha")));
    std::fs::write(hb.path().join("api.key"), format!("{B_KEY}\n")).unwrap();
    hb.write_config(&format!("{FAST}{}{}", agent("b", "alpha"), agent("b", "beta")));
    let a = ha.start();
    let mut b = hb.start();
    b.key = B_KEY.to_string();
    let a_pid = a.wait_status("alpha", Status::Running).await.pid.unwrap();
    let b_pid = b.wait_status("alpha", Status::Running).await.pid.unwrap();
    b.wait_status("beta", Status::Running).await;

    let client = Home::new();
    let dir = client.path().join("client-config/agentsd");
    std::fs::create_dir_all(&dir).unwrap();
    let context = |name: &str, home: &Home, d: &Daemon| {
        format!(
            "[contexts.{name}]\nurl = \"{}\"\napi_key_file = \"{}\"\nca_cert = \"{}\"\n",
            d.url,
            home.path().join("api.key").display(),
            home.path().join("state/tls/cert.pem").display()
        )
    };
    let down_url = format!("https://127.0.0.1:{}", free_port());
    std::fs::write(
        dir.join("client.toml"),
        format!(
            "{}{}[contexts.down]\nurl = \"{down_url}\"\napi_key_file = \"{}\"\n",
            context("b", &hb, &b),
            context("a", &ha, &a),
            ha.path().join("api.key").display()
        ),
    )
    .unwrap();
    let mut c = Command::new(bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("AGENTSD_") {
            c.env_remove(k);
        }
    }
    c.args(["top", "--context", "all"])
        .env("XDG_CONFIG_HOME", client.path().join("client-config"))
        .env("HOME", client.path());
    let within = Duration::from_secs(20);
    let mut pty = Pty::spawn(&c, 30, 120);

    let screen = pty.wait_screen(within, "both hosts' agents, and the down one", |s| {
        row_words(s, &["a", "alpha", "running", &a_pid.to_string()])
            && row_words(s, &["b", "alpha", "running", &b_pid.to_string()])
            && row_words(s, &["b", "beta", "running"])
            && row_words(s, &["down", "unreachable,", "retrying:"])
    });
    assert!(
        screen.contains("HOST") && screen.contains("3 contexts, 2 live"),
        "{screen}"
    );
    assert!(screen.contains(&down_url), "the down host says why: {screen}");
    // Sorted by host, then id: a's alpha, b's alpha, b's beta.
    let order: Vec<usize> = [["a", "alpha"], ["b", "alpha"], ["b", "beta"]]
        .iter()
        .map(|[host, id]| {
            screen
                .lines()
                .position(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    w.len() > 3 && w[1] == *host && w[2] == *id
                })
                .unwrap_or_else(|| panic!("no row {host} {id}: {screen}"))
        })
        .collect();
    assert!(order[0] < order[1] && order[1] < order[2], "{order:?}: {screen}");

    // The first row, then the next: b's alpha, whose log is b's.
    pty.send("g");
    pty.send("j");
    pty.wait_screen(within, "b's alpha selected, its log shown", |s| {
        s.contains(&format!("alpha of b as {b_pid}")) && s.contains("b/alpha running")
    });
    pty.send("x");
    pty.wait_screen(within, "the stop to be asked for", |s| {
        s.contains("Stop b/alpha? y stop")
    });
    pty.send("y");
    b.wait_status("alpha", Status::Stopped).await;
    pty.wait_screen(within, "b's alpha shown stopped", |s| {
        row_words(s, &["b", "alpha", "stopped"]) && s.contains("b/alpha: stopped")
    });
    // a's agent of the same name was left alone.
    assert_eq!(a.agent("alpha").await.pid, Some(a_pid));
    assert!(pid_alive(a_pid));
    assert!(!pid_alive(b_pid));

    pty.send("q");
    assert_eq!(pty.wait_exit(Duration::from_secs(10)).code(), Some(0));
}
