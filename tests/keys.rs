//! Keys with roles, revocation on reload, the audit trail and the client
//! address behind a proxy: through the real binary, its CLI and HTTPS.

use crate::util::*;
use agentsd::wire::{AuditEntry, Status};
use std::time::{Duration, Instant};

/// The CLI aimed at `d` with `key`.
fn cli_with_key(home: &Home, d: &Daemon, key: &str) -> std::process::Command {
    let mut c = cli_for(home, d);
    c.env("AGENTSD_API_KEY", key);
    c
}

#[tokio::test]
async fn gen_key_prints_the_key_once_and_lines_that_match_it() {
    let home = Home::new();
    let (key, lines) = gen_key(&home, "wall", "read");
    assert_eq!(key.len(), 64);
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert!(lines.contains(&format!("digest = \"sha256:{hex}\"")), "{lines}");
    assert!(lines.contains("role = \"read\""), "{lines}");
    assert!(!lines.contains(&key), "the key itself is not in the config lines");
    // Refused before anything is printed.
    for (args, says) in [
        (
            &["gen-key", "--name", "a b", "--role", "read"][..],
            "invalid --name",
        ),
        (
            &["gen-key", "--name", "api_key_file", "--role", "read"][..],
            "reserved",
        ),
        (
            &["gen-key", "--name", "x", "--role", "root"][..],
            "invalid value 'root'",
        ),
        (&["gen-key", "--name", "x"][..], "--role"),
    ] {
        let out = run(cli(&home), args);
        assert!(!out.status.success(), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed {}", text(&out.stdout));
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[tokio::test]
async fn a_read_key_reads_an_operate_key_stops_and_the_audit_names_it() {
    let home = Home::new();
    let (read, read_lines) = gen_key(&home, "wall", "read");
    let (operate, operate_lines) = gen_key(&home, "oncall", "operate");
    home.write_config(&format!(
        "{FAST}[agents.svc]\ncommand = [\"sh\", \"-c\", \"echo hello; exec sleep 1000\"]\n\n{read_lines}\n{operate_lines}\n"
    ));
    // config check lists the keys by name and role, never a whole digest.
    let out = run(
        cli(&home),
        &[
            "config",
            "check",
            "--config",
            home.config_path().to_str().unwrap(),
        ],
    );
    let listing = text(&out.stdout);
    assert!(out.status.success(), "{listing}{}", text(&out.stderr));
    for (name, role) in [("api_key_file", "admin"), ("wall", "read"), ("oncall", "operate")] {
        assert!(
            listing.lines().any(|l| l.contains(name) && l.contains(role)),
            "{name} {role} not listed:\n{listing}"
        );
    }
    let digest_of = |l: &str| l.split('"').nth(1).unwrap()[7..].to_string();
    for lines in [&read_lines, &operate_lines] {
        let d = digest_of(lines.lines().find(|l| l.starts_with("digest")).unwrap());
        assert!(!listing.contains(&d), "a whole digest in:\n{listing}");
    }

    let d = home.start();
    let pid = d.wait_status("svc", Status::Running).await.pid.unwrap();
    // Read: list, follow logs, scrape metrics.
    let out = run(cli_with_key(&home, &d, &read), &["agents", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("\"svc\""));
    let mut follow = Sse::open_with_key(&d, "/sse/agents/svc/logs?n=10", &read).await;
    let ev = follow.next(Duration::from_secs(10)).await.expect("a line");
    assert_eq!(ev.data, "hello");
    assert_eq!(d.status_with(reqwest::Method::GET, "/metrics", &read).await, 200);
    // ... but not stop: exit 7, a clear line, the agent untouched.
    let out = run(cli_with_key(&home, &d, &read), &["agents", "stop", "svc"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("\"wall\" has the role read; this needs operate"),
        "{err}"
    );
    assert!(pid_alive(pid));
    assert_eq!(d.status_with(reqwest::Method::GET, "/audit", &read).await, 403);
    // Operate stops it.
    let out = run(cli_with_key(&home, &d, &operate), &["agents", "stop", "svc"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!pid_alive(pid), "stopped agent still in the process table");
    let out = run(cli_with_key(&home, &d, &operate), &["audit"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    // Admin reads the audit: who stopped what, and how it ended.
    let entries: Vec<AuditEntry> =
        eventually_with(Duration::from_secs(10), "the audit has both requests", || async {
            let out = run(cli_for(&home, &d), &["audit", "--json"]);
            if !out.status.success() {
                return Err(text(&out.stderr));
            }
            let entries: Vec<AuditEntry> = text(&out.stdout)
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if entries.len() == 2 {
                Ok(entries)
            } else {
                Err(format!("{entries:?}"))
            }
        })
        .await;
    // Oldest first.
    let (refused, done) = (&entries[0], &entries[1]);
    assert_eq!(
        (
            refused.key.as_str(),
            refused.status,
            refused.outcome.as_str(),
            refused.agent.as_deref()
        ),
        ("wall", 403, "forbidden", Some("svc"))
    );
    assert_eq!(
        (
            done.key.as_str(),
            done.role.as_str(),
            done.status,
            done.outcome.as_str()
        ),
        ("oncall", "operate", 200, "ok")
    );
    assert_eq!(
        (done.method.as_str(), done.path.as_str(), done.agent.as_deref()),
        ("POST", "/agents/svc/stop", Some("svc"))
    );
    assert_eq!(done.remote, "127.0.0.1");
    let table = text(&run(cli_for(&home, &d), &["audit"]).stdout);
    assert!(
        table.lines().last().unwrap().contains("oncall (operate)"),
        "{table}"
    );
    // Neither key is ever logged.
    let log = d.stderr_text();
    assert!(!log.contains(&read) && !log.contains(&operate));
}

#[tokio::test]
async fn a_key_removed_from_the_config_is_refused_at_once_and_its_streams_end() {
    let home = Home::new();
    let (key, lines) = gen_key(&home, "wall", "read");
    let agents = format!(
        "{FAST}[agents.talk]\ncommand = [\"sh\", \"-c\", \"while :; do echo tick; sleep 0.2; done\"]\n"
    );
    home.write_config(&format!("{agents}\n{lines}"));
    let d = home.start();
    d.wait_status("talk", Status::Running).await;
    let mut logs = Sse::open_with_key(&d, "/sse/agents/talk/logs?n=1", &key).await;
    assert!(logs.next(Duration::from_secs(10)).await.is_some());
    let mut status = Sse::open_with_key(&d, "/sse/status", &key).await;
    assert_eq!(
        status.next(Duration::from_secs(10)).await.unwrap().name,
        "snapshot"
    );
    // A stream of another key lives on.
    let mut other = Sse::open(&d, "/sse/agents/talk/logs?n=1", None).await;
    assert!(other.next(Duration::from_secs(10)).await.is_some());

    let changed = Instant::now();
    home.write_config(&agents);
    loop {
        let code = d.status_with(reqwest::Method::GET, "/agents", &key).await;
        if code == 401 {
            break;
        }
        assert_eq!(code, 200);
        assert!(
            changed.elapsed() < Duration::from_secs(5),
            "the removed key is still accepted"
        );
        // The poll interval of a measured wait (how soon the removed key
        // is refused), bounded by the 5 s check above.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_after = changed.elapsed();
    // A line sent before the key left may still be on its way: the streams
    // must end within the bound all the same (the agent prints every
    // 200 ms, so an open stream would keep sending).
    logs.ends_within(Duration::from_secs(5)).await;
    status.ends_within(Duration::from_secs(5)).await;
    eprintln!("revocation: refused {refused_after:?} after the config file changed; its 2 streams ended");
    assert!(refused_after < Duration::from_secs(2), "{refused_after:?}");
    assert!(
        other.next(Duration::from_secs(5)).await.is_some(),
        "another key's stream ended too"
    );
    // Added back, it works again without a restart.
    home.write_config(&format!("{agents}\n{lines}"));
    eventually_with(Duration::from_secs(5), "the key accepted again", || async {
        match d.status_with(reqwest::Method::GET, "/agents", &key).await {
            200 => Ok(()),
            c => Err(c.to_string()),
        }
    })
    .await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_audited_and_budgeted() {
    let home = Home::new();
    home.write_config(&format!(
        "{FAST}[agents.svc]\ncommand = [\"sleep\", \"1000\"]\nautostart = false\n"
    ));
    let cfg = std::fs::read_to_string(home.config_path()).unwrap();
    std::fs::write(
        home.config_path(),
        cfg.replacen("[server]\n", "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n", 1),
    )
    .unwrap();
    let d = home.start();
    d.wait_status("svc", Status::Stopped).await;
    let from = |ip: [u8; 4]| {
        d.new_client(false)
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
    };
    let (proxy, stranger) = (from([127, 0, 0, 1]), from([127, 0, 0, 2]));
    for (client, path) in [(&proxy, "/agents/svc/start"), (&stranger, "/agents/svc/stop")] {
        let res = client
            .post(format!("{}{path}", d.url))
            .bearer_auth(KEY)
            .header("x-forwarded-for", "6.6.6.6, 198.51.100.7")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let entries: Vec<AuditEntry> = eventually_with(Duration::from_secs(10), "two audit entries", || async {
        let v = d.get("/audit").await;
        let e: Vec<AuditEntry> = serde_json::from_value(v).unwrap();
        if e.len() == 2 {
            Ok(e)
        } else {
            Err(format!("{e:?}"))
        }
    })
    .await;
    // Newest first: the stranger's header is not believed.
    assert_eq!(entries[0].remote, "127.0.0.2");
    assert_eq!(entries[1].remote, "198.51.100.7");
    // Wrong keys through the proxy cost the forwarded address, not the
    // proxy: another client behind it is not slowed.
    let mut codes = Vec::new();
    for _ in 0..25 {
        let res = proxy
            .get(format!("{}/agents", d.url))
            .bearer_auth("wrong-key-0123456789abcdef0123456789")
            .header("x-forwarded-for", "198.51.100.66")
            .send()
            .await
            .unwrap();
        codes.push(res.status().as_u16());
    }
    assert_eq!(codes.iter().filter(|c| **c == 429).count(), 5, "{codes:?}");
    let res = proxy
        .get(format!("{}/agents", d.url))
        .bearer_auth(KEY)
        .header("x-forwarded-for", "198.51.100.67")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}
