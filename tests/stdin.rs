//! Messages in: `stdin = "pipe"`, `POST /agents/{id}/message` and `agentsd
//! send`, through the real binary over HTTPS.

use crate::util::*;
use agentsd::wire::Status;
use reqwest::Method;
use serde_json::{Value, json};
use std::io::Write as _;
use std::time::{Duration, Instant};

async fn send(d: &Daemon, id: &str, body: Value, key: &str) -> (u16, Value, Duration) {
    let t = Instant::now();
    let res = d
        .client
        .post(format!("{}/agents/{id}/message", d.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let took = t.elapsed();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null), took)
}

#[tokio::test]
async fn messages_reach_a_reader_and_a_deaf_agent_is_said_at_once() {
    let home = Home::new();
    let (read, read_lines) = gen_key(&home, "wall", "read");
    home.write_config(&format!(
        "{FAST}\
         [agents.bot]\ncommand = [\"sh\", \"-c\", \"while read -r line; do echo \\\"got: $line\\\"; done\"]\nstdin = \"pipe\"\n\n\
         [agents.deaf]\ncommand = [\"sleep\", \"1000\"]\nstdin = \"pipe\"\n\n\
         [agents.plain]\ncommand = [\"sleep\", \"1000\"]\n\n{read_lines}"
    ));
    let mut d = home.start();
    for id in ["bot", "deaf", "plain"] {
        d.wait_status(id, Status::Running).await;
    }

    // The CLI, with the text as an argument and from stdin.
    let out = run(cli_for(&home, &d), &["send", "bot", "hello there"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "bot: 12 bytes written to its stdin\n");
    log_has(&home, "bot", "got: hello there").await;
    let mut c = cli_for(&home, &d);
    let mut child = c
        .args(["send", "bot", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"from a pipe\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    log_has(&home, "bot", "got: from a pipe").await;

    // At most 16 KiB: one byte more is refused whole.
    let (status, body, _) = send(&d, "bot", json!({"text": "x".repeat(16 * 1024 + 1)}), KEY).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{body}"
    );
    let (status, body, _) = send(&d, "bot", json!({"text": "y".repeat(16 * 1024)}), KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"agent_id": "bot", "bytes": 16 * 1024 + 1}));
    log_has(&home, "bot", &format!("got: {}", "y".repeat(16 * 1024))).await;
    let (status, _, _) = send(&d, "bot", json!({"text": "a\u{0}b"}), KEY).await;
    assert_eq!(status, 400);

    // An agent that never reads: its pipe fills, and the next message is
    // refused at once, none of it written; everything else still answers.
    let mut busy = None;
    for i in 0..8 {
        let (status, body, took) = send(&d, "deaf", json!({"text": "z".repeat(16 * 1024)}), KEY).await;
        assert!(took < Duration::from_secs(1), "message {i} took {took:?}");
        match status {
            200 => {}
            503 => {
                busy = Some((i, body, took));
                break;
            }
            other => panic!("message {i}: {other} {body}"),
        }
        let (status, _) = d.request(Method::GET, "/health").await;
        assert_eq!(status, 200);
    }
    let (i, body, took) = busy.expect("a full pipe refuses the message");
    assert_eq!(body["error"]["code"], "agent_busy", "{body}");
    eprintln!("message {i} to an agent that does not read: 503 after {took:?}");
    assert!(i >= 1, "the first messages fit in the pipe");
    let t = Instant::now();
    d.get("/agents").await;
    assert!(t.elapsed() < Duration::from_secs(1));
    let out = run(cli_for(&home, &d), &["send", "deaf", &"z".repeat(16 * 1024)]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("deaf is not reading its stdin"),
        "{}",
        text(&out.stderr)
    );

    // No stdin pipe, or not running: 409 no_stdin; the CLI exits 2.
    let (status, body, _) = send(&d, "plain", json!({"text": "hi"}), KEY).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("no_stdin")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stdin = \"pipe\"")
    );
    let out = run(cli_for(&home, &d), &["send", "plain", "hi"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    d.control("bot", "stop").await;
    let (status, body, _) = send(&d, "bot", json!({"text": "hi"}), KEY).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("no_stdin")),
        "{body}"
    );
    // Started again: a new pipe, read again.
    d.control("bot", "start").await;
    let (status, _, _) = send(&d, "bot", json!({"text": "again"}), KEY).await;
    assert_eq!(status, 200);
    log_has(&home, "bot", "got: again").await;
    let (status, _, _) = send(&d, "nobody", json!({"text": "hi"}), KEY).await;
    assert_eq!(status, 404);

    // A read key may not; the audit has the length, never the text.
    let (status, _, _) = send(&d, "bot", json!({"text": "hi"}), &read).await;
    assert_eq!(status, 403);
    let audit = d.get("/audit?limit=50").await;
    let sent: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"] == "/agents/bot/message" && e["status"] == 200)
        .collect();
    assert!(sent.iter().any(|e| e["detail"] == "11 bytes"), "{audit:#}");
    assert!(!audit.to_string().contains("hello there"), "{audit:#}");
    d.stop();
}
