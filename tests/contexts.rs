//! `--context all` and `--context a,b`: several daemons asked at once, one
//! table with a HOST column, a failed host one line on stderr.

use crate::util::*;
use agentsd::wire::Status;
use serde_json::Value;
use std::time::{Duration, Instant};

const OTHER_KEY: &str = "other-key-0123456789abcdef0123456789abcdef";

/// A daemon with `agents` (ids, all `sleep`), running.
async fn daemon(agents: &[&str], key: Option<&str>) -> (Home, Daemon) {
    let home = Home::new();
    if let Some(k) = key {
        std::fs::write(home.path().join("api.key"), format!("{k}\n")).unwrap();
    }
    let mut cfg = FAST.to_string();
    for id in agents {
        cfg.push_str(&format!("[agents.{id}]\ncommand = [\"sleep\", \"1000\"]\n"));
    }
    home.write_config(&cfg);
    let mut d = home.start();
    if let Some(k) = key {
        d.key = k.to_string();
    }
    for id in agents {
        d.wait_status(id, Status::Running).await;
    }
    (home, d)
}

/// A context of the client file for the daemon of `home`: its own key file
/// and its own certificate.
/// A client command left running (`--watch`): ended when the test ends,
/// also when it fails.
struct Watch(std::process::Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn context(name: &str, home: &Home, d: &Daemon) -> String {
    format!(
        "[contexts.{name}]\nurl = \"{}\"\napi_key_file = \"{}\"\nca_cert = \"{}\"\n",
        d.url,
        home.path().join("api.key").display(),
        home.path().join("state/tls/cert.pem").display()
    )
}

fn write_client_file(client: &Home, text: &str) {
    let dir = client.path().join("client-config/agentsd");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("client.toml"), text).unwrap();
}

/// The first cells of each row of a table, header included.
fn cells(table: &str, n: usize) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| l.split_whitespace().take(n).map(str::to_string).collect())
        .collect()
}

#[tokio::test]
async fn every_context_in_one_table_each_with_its_own_key() {
    // b's daemon has a key of its own: sent anywhere else it would be refused.
    let ((ha, a), (hb, b), (hc, mut c)) = tokio::join!(
        daemon(&["web", "idle"], None),
        daemon(&["api"], Some(OTHER_KEY)),
        daemon(&["web"], None),
    );
    let client = Home::new();
    write_client_file(
        &client,
        &format!(
            "default_context = \"b\"\n{}{}{}",
            context("c", &hc, &c),
            context("a", &ha, &a),
            context("b", &hb, &b)
        ),
    );

    let o = run(cli(&client), &["agents", "list", "--context", "all"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "");
    let table = text(&o.stdout);
    assert_eq!(
        cells(&table, 3),
        [
            ["HOST", "AGENT", "STATUS"],
            ["a", "idle", "running"],
            ["a", "web", "running"],
            ["b", "api", "running"],
            ["c", "web", "running"],
        ],
        "{table}"
    );

    let o = run(cli(&client), &["agents", "list", "--context", "all", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let list: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    let pairs: Vec<(&str, &str)> = list
        .iter()
        .map(|v| (v["host"].as_str().unwrap(), v["id"].as_str().unwrap()))
        .collect();
    assert_eq!(pairs, [("a", "idle"), ("a", "web"), ("b", "api"), ("c", "web")]);
    assert_eq!(list[0]["status"], "running", "the summary's own fields stay");

    // A list: only those, still in name order; --filter applies on every host.
    let o = run(
        cli(&client),
        &["agents", "list", "--context", "c,a", "--filter", "we"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        cells(&text(&o.stdout), 2),
        [["HOST", "AGENT"], ["a", "web"], ["c", "web"]]
    );

    // AGENTSD_CONTEXT takes the same selection as the flag (the client
    // file's default context notwithstanding).
    let env_cli = |value: &str| {
        let mut c = cli(&client);
        c.env("AGENTSD_CONTEXT", value);
        c
    };
    let o = run(env_cli("c,a"), &["agents", "list"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(
        cells(&text(&o.stdout), 2),
        [["HOST", "AGENT"], ["a", "idle"], ["a", "web"], ["c", "web"]]
    );
    let o = run(env_cli("all"), &["status", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().count(), 3, "{}", text(&o.stdout));
    // ... a command on one daemon refuses it as it refuses the flag ...
    let o = run(env_cli("all"), &["agents", "show", "web"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        text(&o.stderr),
        "agentsd: AGENTSD_CONTEXT=all: several contexts at once work with `agents list`, `status` and `top` only; name one context\n"
    );
    // ... and a flag naming one daemon wins over it.
    let o = run(env_cli("all"), &["agents", "list", "--context", "b"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(cells(&text(&o.stdout), 1), [["AGENT"], ["api"]]);

    // An unknown name is a usage error naming it; nothing is asked.
    let o = run(cli(&client), &["agents", "list", "--context", "a,nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(text(&o.stdout), "");
    assert_eq!(
        text(&o.stderr),
        "agentsd: no context named \"nope\" in the client file (known: a, b, c)\n"
    );
    // A key or URL given on the command line would go to every host.
    let o = run(
        cli(&client),
        &["agents", "list", "--context", "all", "--url", &a.url],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    // Commands that act on one daemon refuse several.
    let o = run(cli(&client), &["agents", "show", "web", "--context", "a,c"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("name one context"),
        "{}",
        text(&o.stderr)
    );
    // top takes several, on a terminal (tests/top.rs drives one).
    let o = run(cli(&client), &["top", "--context", "all"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("needs a terminal; in a script, use `agentsd status --watch --context"),
        "{}",
        text(&o.stderr)
    );
    let o = run(cli(&client), &["top", "--context", "a,nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("no context named \"nope\""),
        "{}",
        text(&o.stderr)
    );

    // status: one line per host.
    let o = run(cli(&client), &["status", "--context", "all"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let table = text(&o.stdout);
    let rows = cells(&table, 2);
    assert_eq!(
        rows,
        [["HOST", "HEALTH"], ["a", "ok"], ["b", "ok"], ["c", "ok"]],
        "{table}"
    );
    let line_a = table.lines().nth(1).unwrap();
    assert!(line_a.contains(&a.url), "{table}");
    assert!(line_a.ends_with("2 agents: 2 running"), "{table}");
    let o = run(cli(&client), &["status", "--context", "all", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let objs: Vec<Value> = text(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let hosts: Vec<_> = objs.iter().map(|v| v["host"].as_str().unwrap()).collect();
    assert_eq!(hosts, ["a", "b", "c"]);
    assert_eq!(objs[1]["url"], b.url.as_str());
    assert_eq!(objs[1]["agents"], 1);
    assert_eq!(objs[1]["by_status"]["running"], 1);
    assert_eq!(objs[0]["health"]["status"], "ok");

    // A daemon stopped: one line naming its context, the others still print.
    c.stop();
    let o = run(cli(&client), &["agents", "list", "--context", "all"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("agentsd: context c: cannot reach ") && err.contains(&c.url),
        "{err}"
    );
    assert_eq!(
        cells(&text(&o.stdout), 2),
        [["HOST", "AGENT"], ["a", "idle"], ["a", "web"], ["b", "api"]]
    );
    let o = run(cli(&client), &["status", "--context", "all", "--json"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(text(&o.stdout).lines().count(), 2);
    assert!(text(&o.stderr).starts_with("agentsd: context c: "));
}

#[tokio::test]
async fn a_closed_port_and_a_host_that_never_answers_hold_nothing_up() {
    let (ha, a) = daemon(&["web"], None).await;
    // Accepts connections (the kernel does) and never reads nor answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_url = format!("http://127.0.0.1:{}", hung.local_addr().unwrap().port());
    let closed_url = format!("https://127.0.0.1:{}", free_port());
    let key = ha.path().join("api.key");
    let client = Home::new();
    write_client_file(
        &client,
        &format!(
            "{}[contexts.down]\nurl = \"{closed_url}\"\napi_key_file = \"{k}\"\n[contexts.hung]\nurl = \"{hung_url}\"\napi_key_file = \"{k}\"\n",
            context("a", &ha, &a),
            k = key.display()
        ),
    );

    let t0 = Instant::now();
    let o = run(cli(&client), &["agents", "list", "--context", "all", "--json"]);
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    let list: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!((&list[0]["host"], &list[0]["id"]), (&"a".into(), &"web".into()));
    let err = text(&o.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!("agentsd: context down: cannot reach {closed_url}")),
        "{err}"
    );
    assert_eq!(
        lines[1],
        format!("agentsd: context hung: {hung_url} did not answer within 10 s")
    );

    // status likewise: the host that answered, and the same two lines.
    let t0 = Instant::now();
    let o = run(cli(&client), &["status", "--context", "all"]);
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(cells(&text(&o.stdout), 2), [["HOST", "HEALTH"], ["a", "ok"]]);
    assert_eq!(text(&o.stderr).lines().count(), 2, "{}", text(&o.stderr));
    drop(hung);
}

#[tokio::test]
async fn status_watch_follows_every_host_each_line_led_by_it() {
    let ((ha, a), (hb, b)) = tokio::join!(daemon(&["web"], None), daemon(&["api"], Some(OTHER_KEY)));
    let client = Home::new();
    write_client_file(
        &client,
        &format!(
            "{}{}[contexts.down]\nurl = \"https://127.0.0.1:{}\"\napi_key_file = \"{}\"\n",
            context("a", &ha, &a),
            context("b", &hb, &b),
            free_port(),
            ha.path().join("api.key").display()
        ),
    );
    let watch = |json: bool| {
        let mut c = cli(&client);
        c.args(["status", "--watch", "--context", "all"]);
        if json {
            c.arg("--json");
        }
        Watch(
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        )
    };
    let wait_line = |rx: &std::sync::mpsc::Receiver<String>, what: &str, pred: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(l) => seen.push(l),
                Err(_) => break,
            }
        }
        panic!("no line {what}; seen:\n{}", seen.join("\n"));
    };

    let mut text_watch = watch(false);
    let mut json_watch = watch(true);
    let lines = stdout_lines(text_watch.0.stdout.take().unwrap());
    let json_lines = stdout_lines(json_watch.0.stdout.take().unwrap());
    // Both snapshots, as rows of the HOST table, in whichever order they
    // come.
    let mut rows = [false, false];
    while rows != [true, true] {
        let l = wait_line(&lines, "a web and b api", &|l| {
            (l.starts_with("a ") && l.contains(" web ")) || (l.starts_with("b ") && l.contains(" api "))
        });
        rows[usize::from(l.starts_with("b "))] = true;
    }

    // Both watches connected to b once it counts two streams.
    eventually_with(Duration::from_secs(10), "both watches to connect", || async {
        let m = b.metrics().await;
        if m.lines().any(|l| l == "agentsd_event_streams 2") {
            Ok(())
        } else {
            Err(m)
        }
    })
    .await;
    b.control("api", "stop").await;
    let l = wait_line(&lines, "b's api stopping", &|l| {
        l.contains("api: running -> stopping")
    });
    assert!(l.starts_with("b "), "{l}");
    let l = wait_line(&json_lines, "b's api stopping", &|l| l.contains("\"stopping\""));
    let v: Value = serde_json::from_str(&l).unwrap();
    assert_eq!((&v["host"], &v["agent_id"]), (&"b".into(), &"api".into()));

    for mut watch in [text_watch, json_watch] {
        let child = &mut watch.0;
        let _ = child.kill();
        let _ = child.wait();
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert!(err.starts_with("agentsd: context down: cannot reach "), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// `status --watch --context all` with a host that accepts connections and
/// never answers: the others' snapshots come at once, and the silent one
/// is said on stderr after the 10 s bound, then tried again.
#[tokio::test]
async fn status_watch_cuts_off_a_host_that_never_answers() {
    let ((ha, a), (hb, b)) = tokio::join!(daemon(&["web"], None), daemon(&["api"], Some(OTHER_KEY)));
    // Accepts connections (the kernel does) and never reads nor answers.
    let hung = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hung_url = format!("http://127.0.0.1:{}", hung.local_addr().unwrap().port());
    let client = Home::new();
    write_client_file(
        &client,
        &format!(
            "{}{}[contexts.hung]\nurl = \"{hung_url}\"\napi_key_file = \"{}\"\n",
            context("a", &ha, &a),
            context("b", &hb, &b),
            ha.path().join("api.key").display()
        ),
    );
    let t0 = Instant::now();
    let mut watch = Watch(
        cli(&client)
            .args(["status", "--watch", "--context", "all"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = stdout_lines(watch.0.stdout.take().unwrap());
    let errors = stdout_lines(watch.0.stderr.take().unwrap());
    let mut rows = [false, false];
    while rows != [true, true] {
        let l = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("both snapshots, while the silent host is waited for");
        if l.starts_with("a ") && l.contains(" web ") {
            rows[0] = true;
        }
        if l.starts_with("b ") && l.contains(" api ") {
            rows[1] = true;
        }
    }
    let snapshots = t0.elapsed();
    assert!(
        snapshots < Duration::from_secs(8),
        "the snapshots took {snapshots:?}"
    );
    let said = errors
        .recv_timeout(Duration::from_secs(30))
        .expect("the silent host reported");
    let after = t0.elapsed();
    eprintln!("snapshots after {snapshots:?}, the silent host said after {after:?}");
    assert!(
        after >= Duration::from_secs(9) && after < Duration::from_secs(30),
        "{after:?}"
    );
    assert_eq!(
        said,
        format!("agentsd: context hung: {hung_url} did not answer within 10 s; reconnecting in 200ms")
    );
    // Tried again, while the others still follow: a's stop comes through.
    a.control("web", "stop").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let l = lines.recv_timeout(left).expect("a's web stopping");
        if l.starts_with("a ") && l.contains("web: running -> stopping") {
            break;
        }
    }
    let again = errors
        .recv_timeout(Duration::from_secs(30))
        .expect("the silent host said again");
    assert!(
        again.starts_with("agentsd: context hung: ") && again.contains("reconnecting in 400ms"),
        "{again}"
    );
    assert!(watch.0.try_wait().unwrap().is_none(), "the watch ended");
    drop(watch);

    // The silent host alone: the same bound, then exit 3 as a one-shot
    // command would.
    let t0 = Instant::now();
    let o = run(cli(&client), &["status", "--watch", "--context", "hung"]);
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(30),
        "{took:?}"
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o.stderr));
    assert_eq!(
        text(&o.stderr),
        format!("agentsd: {hung_url} did not answer within 10 s\n")
    );
    drop(hung);
}
