//! What a read key can do to everyone else: nothing. Its streams, sessions
//! and refused requests are bounded by its own share, through the real
//! binary over HTTPS.

use crate::util::*;
use agentsd::wire::{AuditEntry, Status};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(20);

/// Item 1: event streams of every agent's last 10,000 lines, held open by
/// clients that never read, cost the daemon little: the tails are streamed
/// from the files, not loaded whole for each request.
#[tokio::test]
async fn slow_clients_of_long_tails_hold_little_of_the_daemons_memory() {
    let home = Home::new();
    let (read, lines) = gen_key(&home, "wall", "read");
    // Two agents with about 8 MB of 60 kB lines each.
    let big = "head -c 8400000 /dev/zero | tr '\\\\0' x | fold -w 60000; exec sleep 1000";
    home.write_config(&format!(
        "{FAST}{lines}\n[agents.big1]\ncommand = [\"sh\", \"-c\", \"{big}\"]\n\n[agents.big2]\ncommand = [\"sh\", \"-c\", \"{big}\"]\n"
    ));
    let d = home.start();
    for id in ["big1", "big2"] {
        d.wait_status(id, Status::Running).await;
        eventually_blocking(T, "the log written", || {
            let len = std::fs::metadata(home.log_path(id)).map(|m| m.len()).unwrap_or(0);
            (len >= 8_000_000).then_some(()).ok_or(format!("{len} bytes"))
        });
    }
    let before = rss_kib(d.pid());
    let mut held = Vec::new();
    for _ in 0..10 {
        let c = d.new_client(true).build().unwrap();
        let res = c
            .get(format!("{}/sse/logs?n=10000", d.url))
            .bearer_auth(&read)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let mut sse = Sse::from_response(res);
        // The stream has started sending its tail; the client reads no more.
        let ev = sse.next(T).await.expect("a first line");
        assert_eq!(ev.name, "line");
        held.push((c, sse));
    }
    let during = rss_kib(d.pid());
    let grew_mib = during.saturating_sub(before) / 1024;
    assert!(
        grew_mib < 64,
        "10 streams of 16 MB of tails took {grew_mib} MiB ({before} -> {during} KiB)"
    );
    drop(held);
}

/// The same class on the REST route: `GET /agents/{id}/logs?n=10000` from
/// clients that read the headers and then nothing cost the daemon little
/// (each answer once held its whole tail, up to 8 MiB, as lines and JSON),
/// and a client that reads gets the last lines exactly.
#[tokio::test]
async fn slow_clients_of_long_rest_tails_hold_little_of_the_daemons_memory() {
    let home = Home::new();
    let (read, lines) = gen_key(&home, "wall", "read");
    // About 8 MB of 60 kB lines, numbered, so the last ones can be checked.
    let big = "i=0; while [ $i -lt 140 ]; do i=$((i+1)); printf '%d ' $i; head -c 60000 /dev/zero | tr '\\\\0' x; echo; done; exec sleep 1000";
    home.write_config(&format!(
        "{FAST}{lines}\n[agents.big]\ncommand = [\"sh\", \"-c\", \"{big}\"]\n"
    ));
    let d = home.start();
    d.wait_status("big", Status::Running).await;
    eventually_blocking(T, "the log written", || {
        let len = std::fs::metadata(home.log_path("big"))
            .map(|m| m.len())
            .unwrap_or(0);
        (len >= 140 * 60_000).then_some(()).ok_or(format!("{len} bytes"))
    });
    // A client that reads: the last 3 lines, whole, in order.
    let tail: Vec<agentsd::wire::LogLine> = d
        .send_with(reqwest::Method::GET, "/agents/big/logs?n=3", &read)
        .await
        .json()
        .await
        .unwrap();
    let heads: Vec<&str> = tail.iter().map(|l| l.text.split(' ').next().unwrap()).collect();
    assert_eq!(heads, ["138", "139", "140"]);
    assert!(tail.iter().all(|l| l.text.len() > 60_000));
    let before = rss_kib(d.pid());
    let mut held = Vec::new();
    for _ in 0..10 {
        let c = d.new_client(true).build().unwrap();
        let res = c
            .get(format!("{}/agents/big/logs?n=10000", d.url))
            .bearer_auth(&read)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        // Headers only: the body is left unread.
        held.push((c, res));
    }
    let during = rss_kib(d.pid());
    let grew_mib = during.saturating_sub(before) / 1024;
    eprintln!("rest tails: 10 unread answers of 8.4 MB: {before} -> {during} KiB");
    assert!(
        grew_mib < 32,
        "10 unread answers of 8.4 MB of lines took {grew_mib} MiB ({before} -> {during} KiB)"
    );
    drop(held);
}

/// Item 2: a read key's refused requests, however many, never push out
/// what keys with the right did; the same refusal again is counted.
#[tokio::test]
async fn refusals_of_a_read_key_never_push_out_what_keys_with_rights_did() {
    let home = Home::new();
    let (read, read_lines) = gen_key(&home, "wall", "read");
    let (operate, operate_lines) = gen_key(&home, "oncall", "operate");
    let cfg =
        format!("{FAST}[agents.svc]\ncommand = [\"sleep\", \"1000\"]\n\n{read_lines}\n{operate_lines}\n");
    home.write_config(&cfg);
    // A small audit_keep, so that a few hundred refusals would be enough.
    let text = std::fs::read_to_string(home.config_path())
        .unwrap()
        .replace("[server]\n", "[server]\naudit_keep = 50\n");
    std::fs::write(home.config_path(), text).unwrap();
    let d = home.start();
    d.wait_status("svc", Status::Running).await;
    for op in ["restart", "restart", "restart"] {
        let res = d
            .send_with(reqwest::Method::POST, &format!("/agents/svc/{op}"), &operate)
            .await;
        assert!(res.status().is_success(), "{}", res.status());
    }
    // 100 times the same refusal, then 100 different ones.
    for i in 0..200 {
        let path = if i < 100 {
            "/agents/svc/stop".to_string()
        } else {
            format!("/agents/x{i}/stop")
        };
        let res = d.send_with(reqwest::Method::POST, &path, &read).await;
        assert_eq!(res.status(), 403);
    }
    let entries: Vec<AuditEntry> = eventually_with(T, "the refusals in the audit", || async {
        let all: Vec<AuditEntry> = serde_json::from_value(d.get("/audit?limit=1000").await).unwrap();
        if all.iter().any(|e| e.path == "/agents/x199/stop") {
            Ok(all)
        } else {
            Err(format!("{} entries", all.len()))
        }
    })
    .await;
    let did: Vec<&AuditEntry> = entries.iter().filter(|e| e.key == "oncall").collect();
    assert_eq!(did.len(), 3, "what the operate key did is gone: {entries:#?}");
    let refused: Vec<&AuditEntry> = entries.iter().filter(|e| e.key == "wall").collect();
    assert!(refused.len() <= 50, "{} refusals kept", refused.len());
    // The repeated refusal is one entry counted 100 times, if still kept
    // among the newest 50 refusals; the newest distinct one is there.
    assert!(
        refused
            .iter()
            .all(|e| e.status == 403 && e.outcome == "forbidden")
    );
    assert!(
        refused
            .iter()
            .all(|e| e.path != "/agents/svc/stop" || e.count == 100)
    );
    // Through the CLI, as an admin reads it.
    let out = run(cli_for(&home, &d), &["audit", "-n", "1000"]);
    assert!(out.status.success(), "{}", crate::util::text(&out.stderr));
    assert_eq!(
        crate::util::text(&out.stdout)
            .lines()
            .filter(|l| l.contains("oncall (operate)"))
            .count(),
        3
    );
}

/// Item 2, the count: one refusal repeated is one entry with a count and
/// when it last happened.
#[tokio::test]
async fn a_refusal_repeated_is_one_entry_with_its_count() {
    let home = Home::new();
    let (read, read_lines) = gen_key(&home, "wall", "read");
    home.write_config(&format!(
        "{FAST}[agents.svc]\ncommand = [\"sleep\", \"1000\"]\n\n{read_lines}\n"
    ));
    let d = home.start();
    for _ in 0..30 {
        let res = d
            .send_with(reqwest::Method::POST, "/agents/svc/stop", &read)
            .await;
        assert_eq!(res.status(), 403);
    }
    let e: AuditEntry = eventually_with(T, "30 refusals counted", || async {
        let all: Vec<AuditEntry> = serde_json::from_value(d.get("/audit").await).unwrap();
        match all.iter().find(|e| e.key == "wall") {
            Some(e) if e.count == 30 => Ok(e.clone()),
            _ => Err(format!("{all:#?}")),
        }
    })
    .await;
    assert_eq!(e.path, "/agents/svc/stop");
    assert!(e.last_at.as_deref().is_some_and(|l| l >= e.at.as_str()), "{e:?}");
}

/// Item 3: a read key signing in again and again ends only its own
/// sessions: the admin's page goes on.
#[tokio::test]
async fn a_key_signing_in_again_and_again_ends_only_its_own_sessions() {
    let home = Home::new();
    let (read, read_lines) = gen_key(&home, "wall", "read");
    home.write_config(&format!("{FAST}{read_lines}\n"));
    let d = home.start();
    let admin = d.sign_in(KEY).await;
    let mut stream = Sse::from_response(
        d.client
            .get(format!("{}/sse/status", d.url))
            .header("cookie", &admin)
            .send()
            .await
            .unwrap(),
    );
    assert_eq!(stream.next(T).await.unwrap().name, "snapshot");
    let first = d.sign_in(&read).await;
    let started = Instant::now();
    for _ in 0..150 {
        d.sign_in(&read).await;
    }
    assert!(started.elapsed() < Duration::from_secs(120));
    // The key's own oldest session went; the admin's did not.
    assert_eq!(
        d.status_with_cookie("/whoami", &first).await,
        401,
        "no bound per key"
    );
    assert_eq!(d.status_with_cookie("/whoami", &admin).await, 200);
    let mut other = Sse::from_response(
        d.client
            .get(format!("{}/sse/status", d.url))
            .header("cookie", &admin)
            .send()
            .await
            .unwrap(),
    );
    assert_eq!(other.next(T).await.unwrap().name, "snapshot");
}

/// Item 4: a read key holding as many event streams as it may does not
/// keep an admin from opening one; its next is refused with a clear
/// JSON error.
#[tokio::test]
async fn a_read_key_cannot_take_every_stream_slot() {
    let home = Home::new();
    let (read, read_lines) = gen_key(&home, "wall", "read");
    home.write_config(&format!("{FAST}{read_lines}\n"));
    let d = home.start();
    // Over HTTP/2, 128 streams on each of a few connections.
    let clients: Vec<reqwest::Client> = (0..9).map(|_| d.new_client(false).build().unwrap()).collect();
    let mut held = Vec::new();
    let mut refused = None;
    let started = Instant::now();
    for i in 0..1100 {
        let res = clients[i / 128]
            .get(format!("{}/sse/status", d.url))
            .bearer_auth(&read)
            .send()
            .await
            .unwrap();
        if res.status() != 200 {
            refused = Some((i, res));
            break;
        }
        held.push(res);
    }
    assert!(started.elapsed() < Duration::from_secs(120));
    let (i, res) = refused.expect("1,100 streams of one read key, none refused");
    assert_eq!(i, 1024, "refused after {i} streams");
    assert_eq!(res.status(), 429);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");
    // The admin's stream opens.
    let mut admin = Sse::open(&d, "/sse/status", None).await;
    assert_eq!(admin.next(T).await.unwrap().name, "snapshot");
    drop(held);
}

/// Item 5: a session ends for good when its key leaves the config, even
/// when the key comes back before the session is used again.
#[tokio::test]
async fn a_session_ends_for_good_when_its_key_leaves() {
    let home = Home::new();
    let (read, read_lines) = gen_key(&home, "wall", "read");
    let with = format!("{FAST}[agents.svc]\ncommand = [\"sleep\", \"1000\"]\n\n{read_lines}\n");
    let without = format!("{FAST}[agents.svc]\ncommand = [\"sleep\", \"1000\"]\n");
    home.write_config(&with);
    let d = home.start();
    let cookie = d.sign_in(&read).await;
    assert_eq!(d.status_with_cookie("/whoami", &cookie).await, 200);
    home.write_config(&without);
    eventually_with(T, "the key refused", || async {
        match d
            .send_with(reqwest::Method::GET, "/whoami", &read)
            .await
            .status()
            .as_u16()
        {
            401 => Ok(()),
            s => Err(s.to_string()),
        }
    })
    .await;
    home.write_config(&with);
    eventually_with(T, "the key back", || async {
        match d
            .send_with(reqwest::Method::GET, "/whoami", &read)
            .await
            .status()
            .as_u16()
        {
            200 => Ok(()),
            s => Err(s.to_string()),
        }
    })
    .await;
    assert_eq!(
        d.status_with_cookie("/whoami", &cookie).await,
        401,
        "the session came back"
    );
}

/// Item 14: every stream carries a named `ping` event, which a browser's
/// EventSource sees (keep-alive comments it never does).
#[tokio::test]
async fn every_stream_sends_a_ping_event() {
    let home = Home::new();
    let (read, read_lines) = gen_key(&home, "wall", "read");
    home.write_config(&format!(
        "{FAST}[agents.svc]\ncommand = [\"sleep\", \"1000\"]\n\n{read_lines}\n"
    ));
    let d = home.start();
    d.wait_status("svc", Status::Running).await;
    let mut streams = Vec::new();
    for path in ["/sse/status", "/sse/logs", "/sse/agents/svc/logs"] {
        streams.push((path, Sse::open_with_key(&d, path, &read).await));
    }
    for (path, sse) in &mut streams {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ping = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match sse.next(left).await {
                Some(ev) if ev.name == "ping" => break ev,
                Some(_) => {}
                None => panic!("{path}: no ping within 30 s"),
            }
        };
        let v: serde_json::Value = serde_json::from_str(&ping.data).unwrap();
        assert!(v["at"].as_str().is_some_and(|a| a.ends_with('Z')), "{path}: {v}");
    }
}
