//! The dashboard (`/ui/`) in a real headless Chromium against the real
//! daemon over TLS: sign-in, the agents table, controls, logs, reconnects,
//! cross-site requests, roles, and the page behind nginx.
//!
//! They need Debian's `chromium` and `chromium-driver` (and `nginx` for the
//! proxy test): `cargo test --test integration -- --ignored dashboard::`.
//! The README's screenshot: `cargo test --test integration -- --ignored
//! dashboard::screenshot` (writes docs/dashboard.png).

use crate::util::browser::{Browser, daemon_spki, spki_of};
use crate::util::*;
use agentsd::wire::{AgentSummary, HealthState, Status};
use serde_json::Value;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const T: Duration = Duration::from_secs(15);
const DESKTOP: (u32, u32) = (1400, 1000);

async fn browser_for(homes: &[&Home]) -> Browser {
    let spki: Vec<String> = homes.iter().map(|h| daemon_spki(h.path())).collect();
    Browser::start(&spki, DESKTOP, &[]).await
}

/// The rows of the agents table as the page shows them, sorted by id.
const ROWS: &str = "return [...document.querySelectorAll('#agents-viewport .row')].map(r => ({
    id: r.dataset.id, status: r.dataset.status,
    pid: r.querySelector('.c-pid').textContent,
    restarts: r.querySelector('.c-restarts').textContent,
    msgs: r.querySelector('.c-msgs').textContent,
    buttons: [...r.querySelectorAll('.c-actions button')].filter(b => !b.hidden).map(b => b.textContent + (b.disabled ? ':off' : ':on')).join(' '),
})).sort((a, b) => a.id < b.id ? -1 : 1)";

/// `const row = ...` for the row of agent `id`.
fn row_js(id: &str) -> String {
    format!("const row = document.querySelector('#agents-viewport .row[data-id=\"{id}\"]');")
}

/// The log lines the Logs panel shows for `agent`, in order.
fn log_lines_js(agent: &str) -> String {
    format!(
        "return [...document.querySelectorAll('#logs-lines .line:not(.gap)')].filter(l => l.dataset.agent === '{agent}').map(l => l.lastChild.textContent)"
    )
}

/// Keeps `window.sent`: the method and path of every request the page
/// makes from now on, in order, logged as it is made.
const SENT_LOG: &str = "window.sent = []; const f = window.fetch; \
    window.fetch = (u, o) => { window.sent.push(((o && o.method) || 'GET') + ' ' + new URL(u, location.href).pathname); return f(u, o); }";

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
#[ignore = "needs chromium"]
async fn sign_in_refuses_a_wrong_key_accepts_the_right_one_and_keeps_no_key() {
    let home = Home::new();
    home.write_config(&format!("{FAST}[agents.web]\ncommand = [\"sleep\", \"1000\"]\n"));
    let d = home.start();
    let b = browser_for(&[&home]).await;
    b.goto(&format!("{}/ui/", d.url)).await;
    b.wait_js(
        T,
        "the sign-in form",
        "return !document.getElementById('signin').hidden",
    )
    .await;
    b.type_into("#key", "not-the-key-0123456789").await;
    b.click("#signin-button").await;
    let said = b
        .wait_js(
            T,
            "a refusal",
            "return document.getElementById('signin-error').textContent",
        )
        .await;
    assert_eq!(said, "That key was refused.");
    assert!(
        b.js("return document.getElementById('dash').hidden")
            .await
            .as_bool()
            .unwrap()
    );
    // The right key: in, and the key is nowhere in the page or its storage.
    b.sign_in(&d.url, KEY).await;
    let kept = b
        .js("return [document.getElementById('key').value, localStorage.length, sessionStorage.length, document.cookie]")
        .await;
    assert_eq!(
        kept,
        serde_json::json!(["", 0, 0, ""]),
        "the key or the cookie is readable by the page"
    );
    let who = b
        .js("return document.getElementById('conn-who').textContent")
        .await;
    assert_eq!(who, "api_key_file (admin)");
    let version = b
        .wait_js(
            T,
            "the version",
            "return document.getElementById('conn-version').textContent",
        )
        .await;
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    // A reload stays signed in (the cookie); signing out ends the session.
    b.client.refresh().await.unwrap();
    b.wait_js(
        T,
        "signed in after a reload",
        "return !document.getElementById('dash').hidden",
    )
    .await;
    b.click("#signout").await;
    b.wait_js(
        T,
        "the sign-in form again",
        "return !document.getElementById('signin').hidden",
    )
    .await;
    let after = b.js("return fetch('../agents').then(r => r.status)").await;
    assert_eq!(after, 401, "the session outlived its sign-out");
}

#[tokio::test]
#[ignore = "needs chromium"]
async fn the_agents_table_matches_get_agents() {
    let home = Home::new();
    home.write_config(&format!(
        "{FAST}[agents.web]\ncommand = [\"sleep\", \"1000\"]\n\
         [agents.idle]\ncommand = [\"sleep\", \"1000\"]\nautostart = false\n\
         [agents.oneshot]\ncommand = [\"true\"]\nrestart = \"never\"\n\
         [agents.broken]\ncommand = [\"/does/not/exist\"]\n\
         [agents.b-2]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    let d = home.start();
    d.wait_status("web", Status::Running).await;
    d.wait_status("oneshot", Status::Exited).await;
    d.wait_status("broken", Status::Failed).await;
    d.wait_status("b-2", Status::Running).await;
    let b = browser_for(&[&home]).await;
    b.sign_in(&d.url, KEY).await;
    let want: Vec<AgentSummary> = serde_json::from_value(d.get("/agents").await).unwrap();
    let shown = b
        .wait_js(
            T,
            "every agent in the table",
            &format!(
                "const r = (() => {{ {ROWS} }})(); return r.length === {} && r",
                want.len()
            ),
        )
        .await;
    let shown = shown.as_array().unwrap();
    let mut want = want;
    want.sort_by(|a, b| a.id.cmp(&b.id));
    for (row, a) in shown.iter().zip(&want) {
        assert_eq!(row["id"], a.id.as_str());
        assert_eq!(row["status"], a.status.as_str(), "{}", a.id);
        assert_eq!(
            row["pid"],
            a.pid.map(|p| p.to_string()).unwrap_or_default(),
            "{}",
            a.id
        );
        assert_eq!(row["restarts"], a.restarts.to_string(), "{}", a.id);
        assert_eq!(row["msgs"], "—", "{}", a.id);
    }
    assert_eq!(
        b.js("return document.getElementById('agents-count').textContent")
            .await,
        "(5)"
    );
    // The filter box.
    b.type_into("#agents-filter", "running").await;
    let ids = b
        .wait_js(
            T,
            "the filtered table",
            &format!("const r = (() => {{ {ROWS} }})(); return r.length === 2 && r.map(x => x.id)"),
        )
        .await;
    assert_eq!(ids, serde_json::json!(["b-2", "web"]));
}

#[tokio::test]
#[ignore = "needs chromium"]
async fn stop_after_confirming_ends_the_process_and_start_brings_it_back() {
    let home = Home::new();
    home.write_config(&format!("{FAST}[agents.web]\ncommand = [\"sleep\", \"1000\"]\n"));
    let d = home.start();
    let pid = d.wait_status("web", Status::Running).await.pid.unwrap();
    let b = browser_for(&[&home]).await;
    b.sign_in(&d.url, KEY).await;
    b.wait_js(
        T,
        "web running in the table",
        &format!("{} return row && row.dataset.status === 'running'", row_js("web")),
    )
    .await;
    // The page's own request log: every request it makes, in the order
    // it makes them (the page calls the global `fetch` for each).
    b.js(SENT_LOG).await;
    // Cancelled: nothing happens.
    b.click("#agents-viewport .row[data-id=\"web\"] .op-stop").await;
    b.wait_js(
        T,
        "the confirmation",
        "return document.getElementById('confirm').open",
    )
    .await;
    b.click("#confirm-cancel").await;
    b.wait_js(
        T,
        "the confirmation closed",
        "return !document.getElementById('confirm').open",
    )
    .await;
    // Confirmed (with the keyboard): stopped, the process gone. This stop
    // is the barrier: the page makes its request after the cancelled
    // dialog's answer was handled (one dialog, its close events in order),
    // so a stop sent on cancel is in the log before it.
    b.click("#agents-viewport .row[data-id=\"web\"] .op-stop").await;
    b.wait_js(
        T,
        "the confirmation",
        "return document.getElementById('confirm').open",
    )
    .await;
    b.js("document.getElementById('confirm-ok').focus(); window.sent.push('-- confirmed --')")
        .await;
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys(fantoccini::key::Key::Enter.to_string().as_str())
        .await
        .unwrap();
    let sent = b
        .wait_js(
            T,
            "the confirmed stop's request",
            "const s = window.sent; return s.slice(s.indexOf('-- confirmed --')).some(r => r.startsWith('POST ')) && s",
        )
        .await;
    let posts: Vec<String> = strings(&sent)
        .into_iter()
        .filter(|r| !r.starts_with("GET "))
        .collect();
    assert_eq!(
        posts,
        ["-- confirmed --", "POST /agents/web/stop"],
        "a cancelled stop sent a request"
    );
    eventually(T, "the agent's process to be gone", || !pid_alive(pid)).await;
    b.wait_js(T, "stopped in the table", &format!("{} return row && row.dataset.status === 'stopped' && row.querySelector('.c-pid').textContent === ''", row_js("web")))
        .await;
    // Start brings it back, with a new process.
    b.wait_js(
        T,
        "start enabled",
        &format!(
            "{} return !row.querySelector('.op-start').disabled",
            row_js("web")
        ),
    )
    .await;
    b.click("#agents-viewport .row[data-id=\"web\"] .op-start").await;
    let a = d.wait_status("web", Status::Running).await;
    let new = a.pid.unwrap();
    assert_ne!(new, pid);
    assert!(pid_alive(new));
    b.wait_js(
        T,
        "the new pid in the table",
        &format!(
            "{} return row.querySelector('.c-pid').textContent === '{new}'",
            row_js("web")
        ),
    )
    .await;
    // The Status panel saw each change; the history has them too.
    let feed = b
        .wait_js(T, "the live feed", "const t = document.getElementById('feed').textContent; return t.includes('stopping') && t.includes('starting') && t")
        .await;
    assert!(feed.as_str().unwrap().contains("web"), "{feed}");
    b.click("#agents-viewport .row[data-id=\"web\"] .c-id button")
        .await;
    b.wait_js(T, "web's history", "const t = document.getElementById('history').textContent; return t.includes('stopped') && t.includes('running')")
        .await;
}

#[tokio::test]
#[ignore = "needs chromium"]
async fn log_lines_appear_in_the_logs_panel_as_text() {
    let home = Home::new();
    // The markup line comes again every 10 lines: whenever the page starts
    // following, some are in what it shows (the first alone could already
    // be older than the tail it loads on a slow machine).
    home.write_config(&format!(
        "{FAST}[agents.talker]\ncommand = [\"sh\", \"-c\", \"echo '<b id=injected>bold</b>'; i=0; while :; do i=$((i+1)); echo \\\"line $i\\\"; [ $((i % 10)) -eq 0 ] && echo '<b id=injected>bold</b>'; sleep 0.05; done\"]\n\
         [agents.quiet]\ncommand = [\"sh\", \"-c\", \"echo 'quiet one'; sleep 1000\"]\n"
    ));
    let d = home.start();
    d.wait_status("talker", Status::Running).await;
    d.wait_status("quiet", Status::Running).await;
    let b = browser_for(&[&home]).await;
    b.sign_in(&d.url, KEY).await;
    b.wait_js(T, "the rows", &format!("{} return row", row_js("talker")))
        .await;
    b.click("#agents-viewport .row[data-id=\"talker\"] .op-follow")
        .await;
    b.click("#agents-viewport .row[data-id=\"quiet\"] .op-follow")
        .await;
    let lines = b
        .wait_js(
            T,
            "talker's lines",
            &format!(
                "const l = (() => {{ {} }})(); return l.length > 20 && l",
                log_lines_js("talker")
            ),
        )
        .await;
    let lines = strings(&lines);
    // Consecutive, none twice.
    let numbers: Vec<u64> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("line ").and_then(|n| n.parse().ok()))
        .collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    b.wait_js(
        T,
        "quiet's line",
        "return document.getElementById('logs-lines').textContent.includes('quiet one')",
    )
    .await;
    // Markup in a line is text.
    assert_eq!(
        b.js("return document.getElementById('injected')").await,
        Value::Null
    );
    assert!(
        b.js("return document.getElementById('logs-lines').textContent.includes('<b id=injected>bold</b>')")
            .await
            .as_bool()
            .unwrap()
    );
    // The filter hides other lines; pause holds new ones.
    b.type_into("#logs-filter", "quiet").await;
    let visible = b
        .wait_js(T, "the filter applied", "const v = [...document.querySelectorAll('#logs-lines .line')].filter(l => !l.hidden); return v.length === 1 && v[0].textContent")
        .await;
    assert_eq!(visible, "quietquiet one");
    b.click("#logs-pause").await;
    let n = b
        .js("return document.querySelectorAll('#logs-lines .line').length")
        .await;
    // The barrier: the page says it received lines while paused (talker
    // writes one every 50 ms); none of them was drawn.
    b.wait_js(
        T,
        "lines held while paused",
        "const m = document.getElementById('logs-state').textContent.match(/paused, (\\d+) lines waiting/); return m && Number(m[1]) >= 10",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelectorAll('#logs-lines .line').length")
            .await,
        n,
        "lines were drawn while paused"
    );
    b.click("#logs-pause").await;
    b.wait_js(
        T,
        "held lines shown",
        &format!("return document.querySelectorAll('#logs-lines .line').length > {n}"),
    )
    .await;
}

const COUNTER: &str = "[agents.count]\ncommand = [\"sh\", \"-c\", \"i=0; while :; do i=$((i+1)); echo \\\"$$ $i\\\"; sleep 0.02; done\"]\n";

/// Waits until the Logs panel shows at least `n` more of `agent`'s lines
/// than `had`; returns them all.
async fn lines_past(b: &Browser, agent: &str, had: usize, n: usize) -> Vec<String> {
    let v = b
        .wait_js(
            Duration::from_secs(30),
            &format!("{n} more lines of {agent}"),
            &format!(
                "const l = (() => {{ {} }})(); return l.length >= {} && l",
                log_lines_js(agent),
                had + n
            ),
        )
        .await;
    strings(&v)
}

/// `got` is a run of consecutive lines of `agent`'s log file: none missing,
/// none twice.
fn exactly_the_log(home: &Home, agent: &str, got: &[String]) {
    let log = std::fs::read_to_string(home.log_path(agent)).unwrap();
    let all: Vec<&str> = log.lines().collect();
    let start = all
        .iter()
        .position(|l| *l == got[0])
        .unwrap_or_else(|| panic!("{:?} is not in the log", got[0]));
    assert_eq!(
        got,
        &all[start..start + got.len()],
        "the Logs panel differs from the log file"
    );
}

#[tokio::test]
#[ignore = "needs chromium"]
async fn after_a_daemon_restart_the_page_reconnects_and_shows_every_line_once() {
    let home = Home::new();
    let port = free_port();
    write_config_on_port(&home, port, &format!("{FAST}{COUNTER}"));
    let mut d = home.start();
    d.wait_status("count", Status::Running).await;
    let b = browser_for(&[&home]).await;
    b.sign_in(&d.url, KEY).await;
    b.wait_js(T, "the row", &format!("{} return row", row_js("count")))
        .await;
    b.click("#agents-viewport .row[data-id=\"count\"] .op-follow")
        .await;
    let before = lines_past(&b, "count", 0, 50).await;
    assert_eq!(d.stop().code(), Some(0));
    drop(d);
    b.wait_js(
        T,
        "the page to see the daemon gone",
        "return document.getElementById('conn-live').textContent !== 'live'",
    )
    .await;
    let d = home.start();
    d.wait_status("count", Status::Running).await;
    b.wait_js(
        Duration::from_secs(20),
        "the page live again by itself",
        "return document.getElementById('conn-live').textContent === 'live'",
    )
    .await;
    let got = lines_past(&b, "count", before.len(), 100).await;
    exactly_the_log(&home, "count", &got);
    let pids: std::collections::BTreeSet<&str> = got.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(pids.len(), 2, "both runs should be seen: {pids:?}");
    assert!(d.stderr_text().len() < 10_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium"]
async fn after_an_in_place_upgrade_the_page_resumes_every_line_once_still_signed_in() {
    use crate::upgrade::{own_binary, replace, start_from, upgrade};
    let home = Home::new();
    let exe = own_binary(&home);
    home.write_config(&format!("{FAST}{COUNTER}"));
    let d = start_from(&home, &exe);
    let count = d.wait_status("count", Status::Running).await;
    let b = browser_for(&[&home]).await;
    b.sign_in(&d.url, KEY).await;
    b.wait_js(T, "the row", &format!("{} return row", row_js("count")))
        .await;
    b.click("#agents-viewport .row[data-id=\"count\"] .op-follow")
        .await;
    let before = lines_past(&b, "count", 0, 50).await;
    replace(&exe, &std::fs::read(bin()).unwrap(), 0o755);
    let out = upgrade(&home, &d, &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The page comes back by itself, signed in (its session was handed
    // over), and goes on exactly where it was: one run of the agent.
    let got = lines_past(&b, "count", before.len(), 100).await;
    b.wait_js(
        T,
        "the page live",
        "return document.getElementById('conn-live').textContent === 'live'",
    )
    .await;
    exactly_the_log(&home, "count", &got);
    let pids: std::collections::BTreeSet<&str> = got.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(pids.len(), 1, "the agent was restarted: {pids:?}");
    let now = d.agent("count").await;
    assert_eq!((now.pid, now.restarts), (count.pid, 0));
    assert!(d.get("/health").await["upgraded_at"].is_string());
}

/// A tiny plain-HTTP server on loopback answering every request with an
/// empty page: another origin (and another site: http, not https).
struct Plain {
    port: u16,
}

impl Plain {
    fn start() -> Plain {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            // Bounded: a few requests are all a test makes.
            for s in l.incoming().take(20).flatten() {
                let mut s = s;
                let mut buf = [0u8; 4096];
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = s.read(&mut buf);
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 13\r\nConnection: close\r\n\r\n<p>other</p>\n");
            }
        });
        Plain { port }
    }
}

#[tokio::test]
#[ignore = "needs chromium"]
async fn a_cross_site_post_with_the_cookie_is_refused_and_the_agent_untouched() {
    let home = Home::new();
    home.write_config(&format!("{FAST}[agents.web]\ncommand = [\"sleep\", \"1000\"]\n"));
    let d = home.start();
    let pid = d.wait_status("web", Status::Running).await.pid.unwrap();
    // Another daemon: a page on another origin of the same site
    // (https://127.0.0.1, another port), where the cookie is sent.
    let other = Home::new();
    other.write_config("");
    let o = other.start();
    let plain = Plain::start();
    let b = browser_for(&[&home, &other]).await;
    b.sign_in(&d.url, KEY).await;
    let stop = format!("{}/agents/web/stop", d.url);
    let post = format!(
        "return fetch('{stop}', {{method: 'POST', credentials: 'include', mode: 'no-cors'}}).then(() => 'sent', e => 'failed: ' + e)"
    );
    for origin in [o.url.clone(), format!("http://127.0.0.1:{}", plain.port)] {
        b.goto(&format!("{origin}/health")).await;
        let sent = b.js(&post).await;
        assert_eq!(sent, "sent", "from {origin}");
    }
    // No sleep: each fetch above resolved with the daemon's answer, and a
    // stop is answered only once no process of the agent is left, so a
    // stop that got through would show here already.
    let a = d.agent("web").await;
    assert_eq!(
        (a.status, a.pid),
        (Status::Running, Some(pid)),
        "a cross-site POST reached the agent"
    );
    assert!(pid_alive(pid));
    // The same-site one carried the cookie and was refused for its Origin,
    // and audited. The audit is written after the answer: the test's own
    // audited request after it is the barrier (entries are stored in order).
    let (code, _) = d.request(reqwest::Method::POST, "/agents/nope/start").await;
    assert_eq!(code, 404);
    let audit = eventually_with(T, "the test's own request in the audit", || async {
        let audit = d.get("/audit?limit=20").await;
        let has = audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == "/agents/nope/start");
        if has { Ok(audit) } else { Err(audit.to_string()) }
    })
    .await;
    let refused: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"] == "/agents/web/stop")
        .collect();
    assert_eq!(refused.len(), 1, "{audit:#}");
    assert_eq!(refused[0]["status"], 403, "{audit:#}");
}

#[tokio::test]
#[ignore = "needs chromium"]
async fn a_read_key_sees_the_buttons_disabled() {
    let home = Home::new();
    let out = run(cli(&home), &["gen-key", "--name", "wall", "--role", "read"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let key = stdout.lines().next().unwrap().to_string();
    let lines = &stdout[stdout.find("[keys.").unwrap()..];
    home.write_config(&format!(
        "{FAST}{lines}\n[agents.web]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    let d = home.start();
    d.wait_status("web", Status::Running).await;
    let b = browser_for(&[&home]).await;
    b.sign_in(&d.url, &key).await;
    let rows = b
        .wait_js(
            T,
            "the row",
            &format!("const r = (() => {{ {ROWS} }})(); return r.length === 1 && r"),
        )
        .await;
    assert_eq!(rows[0]["buttons"], "Start:off Stop:off Restart:off Logs:on");
    // Nor can it add agents or write to one's stdin.
    assert_eq!(
        b.js("return document.getElementById('agents-new').hidden").await,
        true
    );
    b.click("#agents-viewport .row[data-id=\"web\"] .op-follow").await;
    assert_eq!(
        b.js("return document.getElementById('logs-send').hidden").await,
        true
    );
    assert_eq!(
        b.js("return document.getElementById('conn-who').textContent")
            .await,
        "wall (read)"
    );
    // The daemon says no as well, whatever the page does. Its answer is the
    // barrier: a stop that got through would answer only once no process
    // of the agent is left.
    let code = b
        .js("return fetch('../agents/web/stop', {method: 'POST'}).then(r => r.status)")
        .await;
    assert_eq!(code, 403);
    assert_eq!(d.agent("web").await.status, Status::Running);
}

/// nginx in front of a loopback daemon without TLS.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    fn start(dir: tempfile::TempDir, port: u16, upstream: &str) -> Nginx {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("the proxy test needs Debian's nginx (apt-get install nginx)");
        let p = dir.path();
        // The example in dist/, with this test's addresses and files.
        let example =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/nginx.conf")).unwrap();
        let server = example
            .split("# --- cut here ---")
            .nth(1)
            .expect("dist/nginx.conf has its server block between cut marks")
            .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port} ssl;"))
            .replace("listen [::]:443 ssl;", "")
            .replace(
                "/etc/ssl/certs/bots.example.com.pem",
                &p.join("cert.pem").display().to_string(),
            )
            .replace(
                "/etc/ssl/private/bots.example.com.key",
                &p.join("key.pem").display().to_string(),
            )
            .replace("bots.example.com", "127.0.0.1")
            .replace("http://127.0.0.1:8487", upstream);
        let conf = format!(
            "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n\
             access_log off;\nclient_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\nfastcgi_temp_path {d}/fcgi;\n\
             uwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n{server}\n}}\n",
            d = p.display()
        );
        std::fs::write(p.join("nginx.conf"), conf).unwrap();
        let child = {
            use std::os::unix::process::CommandExt;
            Command::new(nginx)
                .arg("-c")
                .arg(p.join("nginx.conf"))
                .arg("-p")
                .arg(p)
                .arg("-e")
                .arg(p.join("error.log"))
                .stdin(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap()
        };
        let mut n = Nginx { child, dir };
        eventually_blocking(T, "nginx listening", || {
            if let Ok(Some(st)) = n.child.try_wait() {
                panic!(
                    "nginx exited ({st}): {}",
                    std::fs::read_to_string(n.dir.path().join("error.log")).unwrap_or_default()
                );
            }
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
        n
    }

    /// Ends it and gives its directory back, to start it again.
    fn stop(mut self) -> tempfile::TempDir {
        self.kill();
        let dir = tempfile::Builder::new().tempdir().unwrap();
        std::mem::replace(&mut self.dir, dir)
    }

    fn kill(&mut self) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.child.wait();
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
#[ignore = "needs nginx"]
async fn behind_nginx_the_page_signs_in_lists_follows_and_reconnects_by_itself() {
    let home = Home::new();
    let proxy_port = free_port();
    let public = format!("https://127.0.0.1:{proxy_port}");
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\napi_key_file = \"api.key\"\nstate_dir = \"state\"\nlog_dir = \"logs\"\n\
         public_url = \"{public}\"\ntrusted_proxies = [\"127.0.0.1/32\"]\n\n{FAST}{COUNTER}\
         [agents.web]\ncommand = [\"sleep\", \"1000\"]\n"
    );
    std::fs::write(home.config_path(), cfg).unwrap();
    let d = home.start();
    assert!(d.url.starts_with("http://127.0.0.1:"), "{}", d.url);
    let web = d.wait_status("web", Status::Running).await.pid.unwrap();
    d.wait_status("count", Status::Running).await;
    // nginx's certificate: self-signed, made here.
    let dir = tempfile::Builder::new()
        .prefix("agentsd-nginx-")
        .tempdir()
        .unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let spki = spki_of(&dir.path().join("key.pem"));
    let nginx = Nginx::start(dir, proxy_port, &d.url);
    let b = Browser::start(&[spki], DESKTOP, &[]).await;
    b.sign_in(&public, KEY).await;
    let rows = b
        .wait_js(
            T,
            "the table",
            &format!("const r = (() => {{ {ROWS} }})(); return r.length === 2 && r"),
        )
        .await;
    assert_eq!(rows[1]["pid"], web.to_string());
    b.click("#agents-viewport .row[data-id=\"count\"] .op-follow")
        .await;
    let before = lines_past(&b, "count", 0, 20).await;
    // A mutating request through the proxy passes the Origin check.
    b.click("#agents-viewport .row[data-id=\"web\"] .op-restart")
        .await;
    d.wait_for("web", T, |a| a.pid.is_some_and(|p| p != web)).await;
    // The proxy goes away and comes back: the page reconnects by itself
    // and misses no line.
    let dir = nginx.stop();
    b.wait_js(
        T,
        "the page to see the proxy gone",
        "return document.getElementById('conn-live').textContent !== 'live'",
    )
    .await;
    // Lines written while the page cannot see them, to be caught up on.
    let lines = || {
        std::fs::read_to_string(home.log_path("count"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let had = lines();
    eventually(T, "lines written while the proxy is away", || lines() >= had + 10).await;
    let _nginx = Nginx::start(dir, proxy_port, &d.url);
    b.wait_js(
        Duration::from_secs(20),
        "live again",
        "return document.getElementById('conn-live').textContent === 'live'",
    )
    .await;
    let got = lines_past(&b, "count", before.len(), 50).await;
    exactly_the_log(&home, "count", &got);
    // The audit names the browser's address from X-Forwarded-For, not
    // a missing one.
    let audit = d.get("/audit?limit=5").await;
    let restart = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/agents/web/restart")
        .unwrap_or_else(|| panic!("{audit:#}"));
    assert_eq!(restart["status"], 200, "{restart}");
    assert_eq!(restart["remote"], "127.0.0.1", "{restart}");
}

/// The README's screenshot: the demo config (`dist/demo.toml`) on a daemon
/// of its own, a window of 1400 x 1000, written to `docs/dashboard.png`.
#[tokio::test]
#[ignore = "writes docs/dashboard.png: run by hand"]
async fn screenshot() {
    let home = Home::new();
    let root = env!("CARGO_MANIFEST_DIR");
    let demo = std::fs::read_to_string(format!("{root}/dist/demo.toml")).unwrap();
    let agents = &demo[demo.find("[defaults]").unwrap()..];
    let agents = agents.replace("\"demo/", &format!("\"{root}/dist/demo/"));
    // The bot's copy of its database: in the test's directory.
    let agents = agents.replace("../target/demo", &home.path().join("demo").display().to_string());
    home.write_config(&agents);
    // Samples every second, for the sparklines.
    let cfg = std::fs::read_to_string(home.config_path()).unwrap().replace(
        "log_dir = \"logs\"\n",
        "log_dir = \"logs\"\nsample_interval = \"1s\"\n",
    );
    std::fs::write(home.config_path(), cfg).unwrap();
    let d = home.start();
    d.wait_status("ticker", Status::Running).await;
    d.wait_for("crasher", Duration::from_secs(30), |a| a.status == Status::Failed)
        .await;
    let b = browser_for(&[&home]).await;
    b.sign_in(&d.url, KEY).await;
    b.wait_js(T, "the rows", &format!("{} return row", row_js("ticker")))
        .await;
    for id in ["ticker", "assistant-bot"] {
        b.click(&format!("#agents-viewport .row[data-id=\"{id}\"] .op-follow"))
            .await;
    }
    b.click("#agents-viewport .row[data-id=\"crasher\"] .c-id button")
        .await;
    d.control("manual", "start").await;
    d.control("manual", "stop").await;
    b.wait_js(
        Duration::from_secs(20),
        "a few log lines",
        "return document.querySelectorAll('#logs-lines .line').length >= 8",
    )
    .await;
    b.js("document.activeElement.blur(); window.scrollTo(0, 0)").await;
    let png = b.screenshot().await;
    std::fs::create_dir_all(format!("{root}/docs")).unwrap();
    std::fs::write(format!("{root}/docs/dashboard.png"), png).unwrap();
}

#[tokio::test]
async fn a_session_outlives_a_clean_restart_but_not_a_crash() {
    let home = Home::new();
    write_config_on_port(&home, free_port(), FAST);
    let mut d = home.start();
    let cookie = d.sign_in(KEY).await;
    assert_eq!(d.status_with_cookie("/agents", &cookie).await, 200);
    assert_eq!(d.stop().code(), Some(0));
    drop(d);
    let sessions = home.path().join("state/sessions");
    let kept = std::fs::read_to_string(&sessions).unwrap();
    assert!(
        !kept.contains(cookie.split('=').nth(1).unwrap()),
        "the cookie itself was written"
    );
    let mut d = home.start();
    assert!(!sessions.exists(), "read once, then removed");
    assert_eq!(
        d.status_with_cookie("/agents", &cookie).await,
        200,
        "signed out by a restart"
    );
    // A crash keeps nothing.
    d.signal(nix::sys::signal::Signal::SIGKILL);
    d.wait_exit(T);
    drop(d);
    let d = home.start();
    assert_eq!(d.status_with_cookie("/agents", &cookie).await, 401);
}

#[tokio::test]
#[ignore = "needs chromium"]
async fn on_a_phone_the_page_fits_and_the_keyboard_alone_reaches_stop() {
    let home = Home::new();
    home.write_config(&format!("{FAST}[agents.web]\ncommand = [\"sleep\", \"1000\"]\n"));
    let d = home.start();
    let pid = d.wait_status("web", Status::Running).await.pid.unwrap();
    let b = Browser::start(&[daemon_spki(home.path())], (390, 844), &[]).await;
    b.sign_in(&d.url, KEY).await;
    b.wait_js(T, "the row", &format!("{} return row", row_js("web")))
        .await;
    let (page, window) = {
        let v = b
            .js("return [document.documentElement.scrollWidth, window.innerWidth]")
            .await;
        (v[0].as_u64().unwrap(), v[1].as_u64().unwrap())
    };
    assert!(window < 500, "the window is not phone-sized: {window}");
    assert!(
        page <= window,
        "the page is wider ({page}) than the screen ({window})"
    );
    // Tab from the top until the focus is on web's Stop button, then Enter
    // twice: the confirmation, then its default button is Cancel, so Tab
    // once more to Stop and Enter.
    let tab = fantoccini::key::Key::Tab.to_string();
    let enter = fantoccini::key::Key::Enter.to_string();
    b.js("document.activeElement.blur()").await;
    let mut found = false;
    for _ in 0..40 {
        b.client
            .active_element()
            .await
            .unwrap()
            .send_keys(&tab)
            .await
            .unwrap();
        let at = b
            .js("const e = document.activeElement; return e && e.getAttribute('aria-label')")
            .await;
        if at == "stop web" {
            found = true;
            break;
        }
    }
    assert!(found, "Tab never reached web's Stop button");
    let visible = b
        .js("const e = document.activeElement; return getComputedStyle(e).outlineStyle")
        .await;
    assert_ne!(visible, "none", "the focus is not visible");
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys(&enter)
        .await
        .unwrap();
    b.wait_js(
        T,
        "the confirmation",
        "return document.getElementById('confirm').open",
    )
    .await;
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys(&tab)
        .await
        .unwrap();
    b.client
        .active_element()
        .await
        .unwrap()
        .send_keys(&enter)
        .await
        .unwrap();
    eventually(T, "the agent's process to be gone", || !pid_alive(pid)).await;
}

/// Every agent followed gets a colour, the 1,001st as well as the first
/// (the page's palette once ran out after 1,000 agents).
#[tokio::test]
#[ignore = "needs chromium"]
async fn every_agents_log_colour_is_one_of_the_palette() {
    let home = Home::new();
    home.write_config(&format!("{FAST}[agents.web]\ncommand = [\"sleep\", \"1000\"]\n"));
    let d = home.start();
    let b = browser_for(&[&home]).await;
    b.sign_in(&d.url, KEY).await;
    let colours = b
        .js(
            "return import(new URL('logs.js', document.baseURI).href).then(m => {
            const p = new m.LogsPanel();
            const c = [];
            for (let i = 0; i < 1200; i++) c.push(String(p.color('agent-' + i)));
            return c;
        })",
        )
        .await;
    let colours = strings(&colours);
    assert_eq!(colours.len(), 1200);
    let odd: Vec<(usize, &String)> = colours
        .iter()
        .enumerate()
        .filter(|(_, c)| !matches!(c.as_bytes(), [b'a', b'0'..=b'7']))
        .collect();
    assert!(odd.is_empty(), "colours not in the palette: {odd:?}");
}

/// The health banner follows what happens: a config reload that failed
/// shows on the page at the next status event, without a reload of the
/// page or a click of its own.
#[tokio::test]
#[ignore = "needs chromium"]
async fn a_failed_reload_shows_in_the_banner_at_the_next_status_event() {
    let home = Home::new();
    home.write_config(&format!("{FAST}[agents.web]\ncommand = [\"sleep\", \"1000\"]\n"));
    let d = home.start();
    let web = d.wait_status("web", Status::Running).await.pid.unwrap();
    let b = browser_for(&[&home]).await;
    b.sign_in(&d.url, KEY).await;
    assert_eq!(
        b.js("return document.getElementById('config-error').hidden")
            .await,
        true
    );
    // A broken config: the daemon goes on with the previous one.
    let good = std::fs::read_to_string(home.config_path()).unwrap();
    std::fs::write(home.config_path(), format!("{good}\n[agents.bad\n")).unwrap();
    eventually_with(T, "the reload refused", || async {
        let h = d.get("/health").await;
        if h["config_error"].is_string() {
            Ok(())
        } else {
            Err(h.to_string())
        }
    })
    .await;
    // A status event from elsewhere (a restart through the API).
    d.control("web", "restart").await;
    d.wait_for("web", T, |a| a.pid.is_some_and(|p| p != web)).await;
    b.wait_js(
        T,
        "the config error in the banner",
        "const e = document.getElementById('config-error'); return !e.hidden && e.textContent.includes('config file has an error')",
    )
    .await;
}

/// A TCP relay that can be frozen: while frozen it keeps every connection
/// open and passes nothing (a half-open path, as a dead NAT or Wi-Fi
/// leaves), then passes everything it held once thawed.
struct Relay {
    port: u16,
    frozen: tokio::sync::watch::Sender<bool>,
}

impl Relay {
    async fn start(upstream: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(Relay::pump(dr, uw, rx.clone()));
                tokio::spawn(Relay::pump(ur, dw, rx.clone()));
            }
        });
        Relay { port, frozen }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut frozen: tokio::sync::watch::Receiver<bool>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if frozen.wait_for(|f| !*f).await.is_err() {
                return;
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if frozen.wait_for(|f| !*f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

/// A connection that goes silent without closing (no FIN, no RST) is seen
/// as lost: no `ping` event came for too long, so the page says so and
/// reconnects by itself once the path works again.
#[tokio::test]
#[ignore = "needs chromium"]
async fn a_silent_connection_is_taken_for_dead_and_the_page_reconnects() {
    let home = Home::new();
    home.write_config(&format!("{FAST}[agents.web]\ncommand = [\"sleep\", \"1000\"]\n"));
    let d = home.start();
    d.wait_status("web", Status::Running).await;
    let upstream: std::net::SocketAddr = d.url.trim_start_matches("https://").parse().unwrap();
    let relay = Relay::start(upstream).await;
    let b = browser_for(&[&home]).await;
    b.sign_in(&format!("https://127.0.0.1:{}", relay.port), KEY).await;
    relay.frozen.send_replace(true);
    // 50 s without an event, and some slack.
    b.wait_js(
        Duration::from_secs(75),
        "the page to see the connection lost",
        "return document.getElementById('conn-live').textContent !== 'live'",
    )
    .await;
    relay.frozen.send_replace(false);
    b.wait_js(
        Duration::from_secs(30),
        "live again",
        "return document.getElementById('conn-live').textContent === 'live'",
    )
    .await;
}

/// A reload that removes an agent removes its row, live (the page used to
/// show it `stopped` until it reconnected); one added again comes back.
#[tokio::test]
#[ignore = "needs chromium"]
async fn an_agent_removed_from_the_config_leaves_the_table() {
    let home = Home::new();
    let both = format!(
        "{FAST}[agents.stays]\ncommand = [\"sleep\", \"1000\"]\n[agents.goes]\ncommand = [\"sleep\", \"1000\"]\n"
    );
    home.write_config(&both);
    let d = home.start();
    d.wait_status("stays", Status::Running).await;
    d.wait_status("goes", Status::Running).await;
    let b = browser_for(&[&home]).await;
    b.sign_in(&d.url, KEY).await;
    let ids =
        |n: usize| format!("const r = (() => {{ {ROWS} }})(); return r.length === {n} && r.map(x => x.id)");
    let shown = b.wait_js(T, "both agents in the table", &ids(2)).await;
    assert_eq!(shown, serde_json::json!(["goes", "stays"]));

    home.write_config(&format!(
        "{FAST}[agents.stays]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    let shown = b.wait_js(T, "the removed agent's row gone", &ids(1)).await;
    assert_eq!(shown, serde_json::json!(["stays"]));
    assert_eq!(
        b.js("return document.getElementById('agents-count').textContent")
            .await,
        "(1)"
    );

    home.write_config(&both);
    let shown = b.wait_js(T, "the agent added again in the table", &ids(2)).await;
    assert_eq!(shown, serde_json::json!(["goes", "stays"]));
}

/// Health in the agents table, live: an agent whose probe passes shows
/// `healthy` under its status; once its server answers 503 the badge turns
/// `unhealthy`, with the answer as its tooltip and in the live feed,
/// without a reload of the page. An agent waiting for a dependency shows
/// `waiting`, and for what.
#[tokio::test]
#[ignore = "needs chromium"]
async fn an_agents_health_shows_under_its_status_and_turns_unhealthy_live() {
    let home = Home::new();
    std::fs::write(home.path().join("http.pl"), HTTP_PL).unwrap();
    std::fs::create_dir(home.path().join("web")).unwrap();
    let (port, nobody) = (free_port(), free_port());
    home.write_config(&format!(
        "{FAST}\
         [agents.web]\ncommand = [\"perl\", \"../http.pl\", \"{port}\", \"0\"]\ncwd = \"web\"\n\
         health = {{ http = \"http://127.0.0.1:{port}/\", interval = \"200ms\", timeout = \"200ms\", failures = 2, on_failure = \"report\" }}\n\
         [agents.db]\ncommand = [\"sleep\", \"1000\"]\nautostart = false\n\
         health = {{ tcp = \"127.0.0.1:{nobody}\" }}\n\
         [agents.app]\ncommand = [\"sleep\", \"1000\"]\ndepends_on = {{ db = \"healthy\" }}\n"
    ));
    let d = home.start();
    let web = d
        .wait_for("web", T, |a| a.health == Some(HealthState::Healthy))
        .await;
    let app = d.wait_status("app", Status::Waiting).await;
    assert_eq!(app.reason.as_deref(), Some("waiting for db (healthy)"));
    let b = browser_for(&[&home]).await;
    b.sign_in(&d.url, KEY).await;
    // What a row shows of its status and health, and whether the badge is
    // drawn inside the row.
    let cell = |id: &str| {
        format!(
            "{} if (!row) return null; const c = row.querySelector('.c-status'); \
             const h = c.querySelector('.health'); const hr = h.getBoundingClientRect(), rr = row.getBoundingClientRect(); \
             return {{ status: row.dataset.status, word: c.querySelector('.word').textContent, reason: c.title, \
             health: h.textContent, kind: h.dataset.health, detail: h.title, \
             drawn: getComputedStyle(h).display !== 'none' && hr.height > 0 && hr.top >= rr.top && hr.bottom <= rr.bottom, \
             page: window.samePage === true }};",
            row_js(id)
        )
    };
    let shown = b
        .wait_js(
            T,
            "web healthy",
            &format!(
                "const r = (() => {{ {} }})(); return r && r.health === 'healthy' && r",
                cell("web")
            ),
        )
        .await;
    assert_eq!(
        shown,
        serde_json::json!({"status": "running", "word": "running", "reason": "", "health": "healthy",
            "kind": "healthy", "detail": "", "drawn": true, "page": false})
    );
    let shown = b
        .wait_js(
            T,
            "app waiting",
            &format!(
                "const r = (() => {{ {} }})(); return r && r.status === 'waiting' && r",
                cell("app")
            ),
        )
        .await;
    assert_eq!(
        shown,
        serde_json::json!({"status": "waiting", "word": "waiting", "reason": "waiting for db (healthy)",
            "health": "", "kind": "", "detail": "", "drawn": false, "page": false})
    );
    // Waiting is drawn like starting (its dot), not like stopped.
    let dots = b
        .js(
            "const dot = (id) => getComputedStyle(document.querySelector(`#agents-viewport .row[data-id=\"${id}\"] .dot`)).backgroundColor; \
             const probe = document.createElement('div'); probe.className = 'row'; probe.dataset.status = 'starting'; \
             const d = document.createElement('span'); d.className = 'dot'; probe.append(d); document.body.append(probe); \
             const starting = getComputedStyle(d).backgroundColor; probe.remove(); \
             return [dot('app'), starting, dot('db')]",
        )
        .await;
    assert_eq!(dots[0], dots[1], "waiting's dot: {dots}");
    assert_ne!(dots[0], dots[2], "waiting's dot like stopped's: {dots}");
    // A mark that a reload of the page would lose.
    b.js("window.samePage = true; return null").await;

    std::fs::write(home.path().join("web/sick"), "").unwrap();
    let shown = b
        .wait_js(
            T,
            "web unhealthy, live",
            &format!(
                "const r = (() => {{ {} }})(); return r && r.health === 'unhealthy' && r",
                cell("web")
            ),
        )
        .await;
    assert_eq!(
        shown,
        serde_json::json!({"status": "running", "word": "running", "reason": "", "health": "unhealthy",
            "kind": "unhealthy", "detail": "HTTP 503 Service Unavailable", "drawn": true, "page": true})
    );
    // Report only: the same process.
    assert_eq!(d.agent("web").await.pid, web.pid);
    let feed = b
        .wait_js(
            T,
            "the verdict in the live feed",
            "const li = [...document.querySelectorAll('#feed li.health-change')].find(l => l.textContent.includes('unhealthy')); return li && li.textContent",
        )
        .await;
    let feed = feed.as_str().unwrap();
    assert!(
        feed.contains("web")
            && feed.contains("healthy→unhealthy")
            && feed.contains("HTTP 503 Service Unavailable"),
        "{feed}"
    );
    // Healthy again: the tooltip goes with the trouble.
    std::fs::remove_file(home.path().join("web/sick")).unwrap();
    let shown = b
        .wait_js(
            T,
            "web healthy again",
            &format!(
                "const r = (() => {{ {} }})(); return r && r.health === 'healthy' && r",
                cell("web")
            ),
        )
        .await;
    assert_eq!(shown["detail"], "", "{shown}");
    assert_eq!(shown["page"], true, "{shown}");
}

/// Agents as data in the page (admin key, `api_edits` on): a new agent
/// added through the form appears and runs; an invalid edit is refused
/// with the daemon's reason in the dialog, which stays open; a message
/// typed under a followed agent's log reaches its stdin and its answer
/// shows in the log.
#[tokio::test]
#[ignore = "needs chromium"]
async fn an_admin_adds_and_edits_agents_and_talks_to_one_from_the_page() {
    let home = Home::new();
    home.write_config_server(
        "api_edits = true\n",
        &format!(
            "{FAST}[agents.bot]\ncommand = [\"sh\", \"-c\", \"while read -r l; do echo \\\"got: $l\\\"; done\"]\nstdin = \"pipe\"\n"
        ),
    );
    let d = home.start();
    d.wait_status("bot", Status::Running).await;
    let b = browser_for(&[&home]).await;
    b.sign_in(&d.url, KEY).await;
    b.wait_js(
        T,
        "the New agent button",
        "return !document.getElementById('agents-new').hidden",
    )
    .await;

    // New agent: the form, then the row, running.
    b.click("#agents-new").await;
    b.wait_js(T, "the editor", "return document.getElementById('editor').open")
        .await;
    b.type_into("#editor-id", "fresh").await;
    b.js("document.getElementById('editor-text').value = 'command = [\"sh\", \"-c\", \"echo fresh-started; exec sleep 1000\"]\\n'; return true")
        .await;
    b.click("#editor-save").await;
    b.wait_js(
        T,
        "the new agent running in the table",
        &format!(
            "{} return row && row.dataset.status === 'running'",
            row_js("fresh")
        ),
    )
    .await;
    assert_eq!(b.js("return document.getElementById('editor').open").await, false);
    assert!(
        std::fs::read_to_string(home.config_path())
            .unwrap()
            .contains("[agents.fresh]")
    );
    let fresh = d.wait_status("fresh", Status::Running).await;

    // An invalid edit: the reason inline, the dialog open, nothing changed.
    b.click("#agents-viewport .row[data-id=\"fresh\"] .op-edit").await;
    let text = b
        .wait_js(
            T,
            "the table in the editor",
            "const e = document.getElementById('editor'); return e.open && document.getElementById('editor-text').value",
        )
        .await;
    assert!(text.as_str().unwrap().contains("fresh-started"), "{text}");
    b.js("const t = document.getElementById('editor-text'); t.value += 'restart = \"sometimes\"\\n'; return true")
        .await;
    b.click("#editor-save").await;
    let error = b
        .wait_js(
            T,
            "the error in the dialog",
            "return document.getElementById('editor-error').textContent",
        )
        .await;
    assert!(
        error.as_str().unwrap().contains("unknown variant `sometimes`"),
        "{error}"
    );
    assert_eq!(b.js("return document.getElementById('editor').open").await, true);
    assert_eq!(d.agent("fresh").await.pid, fresh.pid);
    b.click("#editor-cancel").await;

    // A line typed under the followed agent's log reaches its stdin.
    b.click("#agents-viewport .row[data-id=\"bot\"] .op-follow").await;
    b.wait_js(
        T,
        "the input line",
        "return !document.getElementById('logs-send').hidden",
    )
    .await;
    b.type_into("#logs-send-text", "hello from the page").await;
    b.click("#logs-send-button").await;
    b.wait_js(
        T,
        "the agent's answer in the log",
        &format!(
            "const l = (() => {{ {} }})(); return l.includes('got: hello from the page')",
            log_lines_js("bot")
        ),
    )
    .await;
}

#[tokio::test]
#[ignore = "needs chromium"]
async fn the_messages_panel_shows_the_selected_agents_rows_live_as_text() {
    let home = Home::new();
    let conn = rusqlite::Connection::open(home.path().join("bot.db")).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE messages(id INTEGER PRIMARY KEY, at TEXT, sender TEXT, body TEXT);
         INSERT INTO messages(at, sender, body) VALUES ('2026-12-05 07:00:00', 'alice', 'hello'),
           ('2026-12-05 07:00:01', 'bot', '<b id=injected>bold</b>');",
    )
    .unwrap();
    home.write_config(&format!(
        "{FAST}[agents.bot]\ncommand = [\"sleep\", \"1000\"]\nstats = {{ db = \"bot.db\", query = \"SELECT count(*) FROM messages\", messages = \"SELECT id, at, sender, body FROM messages WHERE id > ?1 ORDER BY id LIMIT 100\" }}\n\
         [agents.plain]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    let d = home.start();
    let b = browser_for(&[&home]).await;
    b.sign_in(&d.url, KEY).await;
    b.wait_js(T, "the rows", &format!("{} return row", row_js("bot")))
        .await;
    const BODIES: &str = "return [...document.querySelectorAll('#messages-rows .line')].map(r => r.querySelector('[data-column=body]').textContent)";
    // Selecting an agent with a messages query shows its rows.
    b.click("#agents-viewport .row[data-id=\"bot\"] .c-id button")
        .await;
    let shown = b
        .wait_js(
            T,
            "the bot's messages",
            &format!("const l = (() => {{ {BODIES} }})(); return l.length >= 2 && l"),
        )
        .await;
    assert_eq!(strings(&shown), ["hello", "<b id=injected>bold</b>"]);
    assert_eq!(
        b.js("return [document.getElementById('messages').hidden, document.getElementById('messages-agent').textContent]")
            .await,
        serde_json::json!([false, "bot"])
    );
    // Markup in a row is text.
    assert_eq!(
        b.js("return document.getElementById('injected')").await,
        Value::Null
    );
    // A row written now comes live, once.
    conn.execute(
        "INSERT INTO messages(at, sender, body) VALUES ('2026-12-05 07:00:02', 'alice', 'live one')",
        [],
    )
    .unwrap();
    let shown = b
        .wait_js(
            T,
            "the new row",
            &format!("const l = (() => {{ {BODIES} }})(); return l.length >= 3 && l"),
        )
        .await;
    assert_eq!(strings(&shown), ["hello", "<b id=injected>bold</b>", "live one"]);
    let state = b
        .wait_js(
            T,
            "live",
            "const s = document.getElementById('messages-state').textContent; return s === 'live' && s",
        )
        .await;
    assert_eq!(state, "live");
    // An agent without one: no Messages panel.
    b.click("#agents-viewport .row[data-id=\"plain\"] .c-id button")
        .await;
    b.wait_js(
        T,
        "the panel hidden",
        "return document.getElementById('messages').hidden",
    )
    .await;
    // Back to the bot; then a reload takes its query away: the panel goes.
    b.click("#agents-viewport .row[data-id=\"bot\"] .c-id button")
        .await;
    b.wait_js(
        T,
        "the panel again",
        &format!("const l = (() => {{ {BODIES} }})(); return !document.getElementById('messages').hidden && l.length >= 3"),
    )
    .await;
    home.write_config(&format!(
        "{FAST}[agents.bot]\ncommand = [\"sleep\", \"1000\"]\n[agents.plain]\ncommand = [\"sleep\", \"1000\"]\n"
    ));
    b.wait_js(
        T,
        "the panel gone with the query",
        "return document.getElementById('messages').hidden",
    )
    .await;
}

/// The Fleet panel on a daemon with `[fleet] view = true`: every host
/// heard from over NATS, each linking to its own dashboard, a silent one
/// marked stale, live.
#[tokio::test]
#[ignore = "needs chromium and nats-server"]
async fn the_fleet_panel_lists_the_hosts_with_links_and_marks_a_silent_one() {
    let nats = crate::util::nats::Nats::start(None);
    let (viewer_home, other_home) = (Home::new(), Home::new());
    for (home, host, view) in [(&viewer_home, "h1", "view = true\n"), (&other_home, "h2", "")] {
        home.write_config(&format!(
            "{FAST}[agents.bot]\ncommand = [\"sleep\", \"1000\"]\n\n[fleet]\nnats = \"{}\"\nhost = \"{host}\"\n{view}",
            nats.url()
        ));
    }
    let viewer = viewer_home.start();
    let other = other_home.start();
    let b = browser_for(&[&viewer_home]).await;
    b.sign_in(&viewer.url, KEY).await;
    let rows = b
        .wait_js(
            T,
            "both hosts in the Fleet panel",
            "const rows = [...document.querySelectorAll('#fleet-rows tr')]; \
             return !document.getElementById('fleet').hidden && rows.length === 2 && \
               rows.map(r => ({host: r.dataset.host, href: r.querySelector('a').href, stale: r.classList.contains('stale'), text: r.textContent}))",
        )
        .await;
    assert_eq!(rows[0]["host"], "h1");
    assert_eq!(rows[0]["href"], format!("{}/ui/", viewer.url));
    assert_eq!(rows[1]["host"], "h2");
    assert_eq!(rows[1]["href"], format!("{}/ui/", other.url));
    assert_eq!(rows[1]["stale"], false);
    // h2 goes silent: its row turns stale by itself (15 s without a heartbeat).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(other.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let text = b
        .wait_js(
            Duration::from_secs(40),
            "h2 stale in the panel",
            "const r = document.querySelector('#fleet-rows tr[data-host=\"h2\"]'); return r && r.classList.contains('stale') && r.textContent",
        )
        .await;
    assert!(text.as_str().unwrap().contains("stale"), "{text}");
}
