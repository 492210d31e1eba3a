//! Agents as data: agents added, changed and removed over the API and
//! with `agents add|edit|rm`, the config file kept as written around the
//! edit, through the real binary over HTTPS.

use crate::util::*;
use agentsd::wire::Status;
use reqwest::Method;
use serde_json::{Value, json};

/// The part of the file above the agents: comments and layout an edit
/// must keep byte for byte.
fn server_part(extra: &str) -> String {
    format!(
        "# Bots of example.com: edited by hand and over the API.\n\
         [server]\n\
         listen = \"127.0.0.1:0\"\n\
         tls = \"self-signed\"\n\
         api_key_file = \"api.key\"\n\
         state_dir = \"state\"\n\
         log_dir = \"logs\"\n\
         {extra}\n\
         [defaults]\n\
         start_window = \"0s\"   # started at once\n\
         stop_timeout = \"5s\"\n\
         \n\
         # The first bot: sleeps.\n\
         [agents.one]\n\
         command = [\"sleep\", \"1000\"]   # long\n"
    )
}

fn write(home: &Home, text: &str) {
    let tmp = home.path().join(".agentsd.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, home.config_path()).unwrap();
}

fn file(home: &Home) -> String {
    std::fs::read_to_string(home.config_path()).unwrap()
}

/// `method /agents/{id}/config` with `body`, `If-Match` and the key.
async fn edit(
    d: &Daemon,
    method: Method,
    id: &str,
    if_match: Option<&str>,
    body: Option<Value>,
    key: &str,
) -> (u16, Option<String>, Value) {
    let mut req = d
        .client
        .request(method, format!("{}/agents/{id}/config", d.url))
        .bearer_auth(key);
    if let Some(tag) = if_match {
        req = req.header("if-match", tag);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let etag = res.headers().get("etag").map(|v| v.to_str().unwrap().to_string());
    (status, etag, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn agents_are_added_changed_and_removed_over_the_api_and_the_file_keeps_the_rest() {
    let home = Home::new();
    let (read, read_lines) = gen_key(&home, "wall", "read");
    let (operate, operate_lines) = gen_key(&home, "oncall", "operate");
    let keys = format!("\n{read_lines}\n{operate_lines}");
    write(
        &home,
        &format!(
            "{}{keys}",
            server_part("api_edits = true   # the daemon writes this file")
        ),
    );
    let mut d = home.start();
    d.wait_status("one", Status::Running).await;

    // Read: the table as written, and the file's tag (also on a 404).
    let (status, tag, body) = edit(&d, Method::GET, "one", None, None, KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"command": ["sleep", "1000"]}));
    let tag0 = tag.unwrap();
    let (status, tag, _) = edit(&d, Method::GET, "two", None, None, KEY).await;
    assert_eq!((status, tag.as_deref()), (404, Some(tag0.as_str())));

    // Keys without the admin role are refused, whatever they ask.
    for key in [&read, &operate] {
        for method in [Method::GET, Method::PUT, Method::DELETE] {
            let (status, _, body) = edit(&d, method.clone(), "one", Some(&tag0), Some(json!({})), key).await;
            assert_eq!(status, 403, "{method} with a non-admin key: {body}");
        }
    }
    // No If-Match: 428, nothing written.
    let before = file(&home);
    let (status, _, body) = edit(
        &d,
        Method::PUT,
        "two",
        None,
        Some(json!({"command": ["true"]})),
        KEY,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (428, Some("precondition_required"))
    );

    // Create: the file is the file before plus the new table.
    let two = json!({"command": ["sh", "-c", "echo \"X=$X\"; exec sleep 1000"], "env": {"X": "1"}});
    let (status, tag, body) = edit(&d, Method::PUT, "two", Some(&tag0), Some(two), KEY).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body,
        json!({"agent_id": "two", "action": "created", "changed": ["command", "env.X"]})
    );
    let tag1 = tag.unwrap();
    assert_ne!(tag1, tag0);
    // The new table goes after the last agent: the rest is byte for byte
    // the file before.
    let after = file(&home);
    let table =
        "\n[agents.two]\ncommand = [\"sh\", \"-c\", 'echo \"X=$X\"; exec sleep 1000']\nenv = { X = \"1\" }\n";
    assert!(after.contains(&format!("# long\n{table}")), "{after}");
    assert_eq!(after.replacen(table, "", 1), before);
    // Answered once applied: the agent is there already, and runs.
    let (status, body) = d.request(Method::GET, "/agents/two").await;
    assert_eq!(status, 200, "{body}");
    let first = d.wait_status("two", Status::Running).await;
    log_has(&home, "two", "X=1").await;

    // Change its env: restarted with the new value; only that line changed.
    let (status, tag, body) = edit(
        &d,
        Method::PUT,
        "two",
        Some(&tag1),
        Some(json!({"command": ["sh", "-c", "echo \"X=$X\"; exec sleep 1000"], "env": {"X": "2"}})),
        KEY,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], json!(["env.X"]));
    let tag2 = tag.unwrap();
    assert_eq!(file(&home), after.replace("X = \"1\"", "X = \"2\""));
    log_has(&home, "two", "X=2").await;
    let second = d.wait_status("two", Status::Running).await;
    assert_ne!(first.pid, second.pid, "restarted for its new env");

    // A stale tag: 412, the file untouched.
    let now = file(&home);
    let (status, _, body) = edit(
        &d,
        Method::PUT,
        "two",
        Some(&tag1),
        Some(json!({"command": ["true"]})),
        KEY,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (412, Some("precondition_failed")),
        "{body}"
    );
    assert_eq!(file(&home), now);

    // An invalid table: 422 with config check's message, the file untouched.
    let (status, _, body) = edit(
        &d,
        Method::PUT,
        "three",
        Some(&tag2),
        Some(json!({"command": ["true"], "restart": "sometimes"})),
        KEY,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_config")),
        "{body}"
    );
    // What `config check` says of the same file with that table.
    let probe = home.path().join("agentsd.toml.check");
    std::fs::write(
        &probe,
        format!("{now}\n[agents.three]\ncommand = [\"true\"]\nrestart = \"sometimes\"\n"),
    )
    .unwrap();
    let out = run(
        cli(&home),
        &["config", "check", "--config", probe.to_str().unwrap()],
    );
    let check = text(&out.stderr);
    let message = body["error"]["message"].as_str().unwrap();
    assert_eq!(
        message.split_once(": ").unwrap().1,
        check.trim().split_once(": ").unwrap().1,
        "the same message as config check (beside the file name)"
    );
    assert!(message.contains("unknown variant `sometimes`"), "{message}");
    assert_eq!(file(&home), now);
    let (status, _) = d.request(Method::GET, "/agents/three").await;
    assert_eq!(status, 404);

    // A hand edit between the read and the write: the write is refused,
    // and the hand edit stays.
    let by_hand = format!("{now}# added by hand\n");
    write(&home, &by_hand);
    let (status, _, _) = edit(
        &d,
        Method::PUT,
        "two",
        Some(&tag2),
        Some(json!({"command": ["true"]})),
        KEY,
    )
    .await;
    assert_eq!(status, 412);
    assert_eq!(file(&home), by_hand, "the hand edit is kept");
    // The hand edit and the API meet through the same tag.
    let (_, tag3, _) = edit(&d, Method::GET, "two", None, None, KEY).await;
    let tag3 = tag3.unwrap();
    assert_ne!(tag3, tag2);

    // Remove: stopped and gone when the answer comes.
    let pids = home.pids_of("two");
    assert!(!pids.is_empty());
    let (status, _, body) = edit(&d, Method::DELETE, "two", Some(&tag3), None, KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["action"], "removed");
    let (status, _) = d.request(Method::GET, "/agents/two").await;
    assert_eq!(status, 404);
    assert!(
        home.pids_of("two").is_empty(),
        "{}",
        describe(&home.pids_of("two"))
    );
    let last = file(&home);
    assert!(
        !last.contains("[agents.two]") && last.contains("# added by hand"),
        "{last}"
    );
    assert_eq!(last, format!("{before}# added by hand\n"));

    // The audit names the keys each edit changed, never a value.
    let audit = d.get("/audit?limit=20").await;
    let entries: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["path"] == "/agents/two/config" && e["status"].as_u64().unwrap() < 300)
        .collect();
    let details: Vec<&str> = entries.iter().map(|e| e["detail"].as_str().unwrap()).collect();
    assert_eq!(
        details,
        [
            "removed: command, env.X",
            "changed: env.X",
            "created: command, env.X"
        ],
        "{audit:#}"
    );
    assert!(!audit.to_string().contains("X=2"));
    d.stop();
}

#[tokio::test]
async fn edits_are_refused_unless_the_config_allows_them() {
    let home = Home::new();
    write(&home, &server_part(""));
    let mut d = home.start();
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let (status, _, body) = edit(
            &d,
            method,
            "one",
            Some("*"),
            Some(json!({"command": ["true"]})),
            KEY,
        )
        .await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("edits_disabled")),
            "{body}"
        );
    }
    let out = run(cli_for(&home, &d), &["agents", "add", "x", "--", "true"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("api_edits = true"),
        "{}",
        text(&out.stderr)
    );
    d.stop();
}

/// An `EDITOR` that runs `script` (with the file as `$1`).
fn editor(home: &Home, name: &str, script: &str) -> String {
    let path = home.path().join(name);
    std::fs::write(&path, format!("#!/bin/sh\nset -e\n{script}\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.display().to_string()
}

#[tokio::test]
async fn agents_add_edit_and_rm_change_the_file_from_the_cli() {
    let home = Home::new();
    write(&home, &server_part("api_edits = true"));
    let mut d = home.start();
    d.wait_status("one", Status::Running).await;
    let before = file(&home);

    let out = run(
        cli_for(&home, &d),
        &[
            "agents",
            "add",
            "web",
            "--env",
            "PORT=8080",
            "--cwd",
            "/tmp",
            "--",
            "sh",
            "-c",
            "echo port=$PORT; exec sleep 1000",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "web: created (command, cwd, env.PORT)\n");
    assert!(file(&home).starts_with(&before));
    d.wait_status("web", Status::Running).await;
    log_has(&home, "web", "port=8080").await;

    let out = run(cli_for(&home, &d), &["agents", "add", "web", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("agents edit web"),
        "{}",
        text(&out.stderr)
    );

    // An editor that changes the port: applied, the agent restarted.
    let mut c = cli_for(&home, &d);
    c.env_remove("VISUAL")
        .env("EDITOR", editor(&home, "port.sh", "sed -i 's/8080/9090/' \"$1\""));
    let out = run(c, &["agents", "edit", "web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "web: changed (env.PORT)\n");
    log_has(&home, "web", "port=9090").await;

    // Saved unchanged: nothing happens.
    let mut c = cli_for(&home, &d);
    c.env("VISUAL", editor(&home, "noop.sh", "true"));
    let out = run(c, &["agents", "edit", "web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "web: not changed\n");

    // An invalid edit: refused with the reason, kept in a file that is named.
    let now = file(&home);
    let mut c = cli_for(&home, &d);
    c.env(
        "VISUAL",
        editor(
            &home,
            "bad.sh",
            "sed -i 's/^command = /restart = \"sometimes\"\\ncommand = /' \"$1\"",
        ),
    );
    let out = run(c, &["agents", "edit", "web"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("unknown variant `sometimes`"), "{err}");
    let kept = err
        .lines()
        .find_map(|l| l.strip_prefix("agentsd: your edit is kept in "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(std::fs::read_to_string(kept).unwrap().contains("sometimes"));
    assert_eq!(file(&home), now);

    // The file changed by hand while the editor was open: refused (exit 9)
    // and kept; the hand edit stays.
    let config = home.config_path().display().to_string();
    let mut c = cli_for(&home, &d);
    c.env(
        "VISUAL",
        editor(
            &home,
            "race.sh",
            &format!("echo '# by hand' >> '{config}'\nsed -i 's/9090/7070/' \"$1\""),
        ),
    );
    let out = run(c, &["agents", "edit", "web"]);
    assert_eq!(out.status.code(), Some(9), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let kept = err
        .lines()
        .find_map(|l| l.strip_prefix("agentsd: your edit is kept in "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(std::fs::read_to_string(kept).unwrap().contains("7070"));
    assert!(file(&home).ends_with("# by hand\n") && file(&home).contains("9090"));

    let out = run(cli_for(&home, &d), &["agents", "rm", "web"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "web: removed (command, cwd, env.PORT)\n");
    assert!(home.pids_of("web").is_empty());
    let out = run(cli_for(&home, &d), &["agents", "list"]);
    assert!(!text(&out.stdout).contains("web"), "{}", text(&out.stdout));
    let out = run(cli_for(&home, &d), &["agents", "rm", "web"]);
    assert_eq!(out.status.code(), Some(5));
    d.stop();
}
