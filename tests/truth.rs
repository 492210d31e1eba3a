//! What the API says must be what happened: removals announced, re-added
//! agents followed and started as configured.

use crate::util::*;
use agentsd::wire::Status;
use std::time::Duration;

const ONE_AGENT: &str = "[agents.stays]\ncommand = [\"sleep\", \"100000\"]\n";

fn with_goes(goes: &str) -> String {
    format!("{FAST}{ONE_AGENT}[agents.goes]\n{goes}\n")
}

/// Waits for an event named `name` whose data has `"agent_id":"<id>"`,
/// skipping others; its data.
async fn wait_event(sse: &mut Sse, name: &str, id: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let Some(ev) = sse.next(left).await else { break };
        if ev.name == name {
            let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
            if v["agent_id"] == id {
                return v;
            }
        }
    }
    panic!("no {name} event for {id} within 20 s");
}

#[tokio::test]
async fn a_removed_agent_is_announced_and_one_added_again_is_announced_as_new() {
    let home = Home::new();
    home.write_config(&with_goes("command = [\"sleep\", \"100000\"]"));
    let d = home.start();
    d.wait_status("goes", Status::Running).await;
    let mut sse = Sse::open(&d, "/sse/status", None).await;
    let snap = sse.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(snap.name, "snapshot");

    home.write_config(&format!("{FAST}{ONE_AGENT}"));
    let removed = wait_event(&mut sse, "removed", "goes").await;
    assert!(
        removed["at"].as_str().is_some_and(|a| a.ends_with('Z')),
        "{removed}"
    );
    // Announced once it is gone: the API agrees.
    let (code, _) = d.request(reqwest::Method::GET, "/agents/goes").await;
    assert_eq!(code, 404);

    // Added again: it comes as a new agent (a summary and its start).
    home.write_config(&with_goes("command = [\"sleep\", \"100000\"]"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .expect("a summary of the agent added again within 20 s");
        let ev = sse.next(left).await.expect("the stream goes on");
        if ev.name == "summary" {
            let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
            if v["id"] == "goes" && v["status"] == "running" {
                break;
            }
        }
    }
}

#[tokio::test]
async fn status_watch_prints_a_removal() {
    let home = Home::new();
    home.write_config(&with_goes("command = [\"sleep\", \"100000\"]"));
    let d = home.start();
    d.wait_status("goes", Status::Running).await;
    for json in [false, true] {
        let mut cmd = cli_for(&home, &d);
        cmd.args(["status", "--watch"]);
        if json {
            cmd.arg("--json");
        }
        let out = home.path().join(format!("watch-{json}.out"));
        let mut child = cmd
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Connected once the snapshot's table is printed (text), or once
        // the daemon counts its stream (JSON prints no snapshot).
        eventually_with(Duration::from_secs(10), "status --watch connected", || async {
            let m = d.metrics().await;
            match sample(&m, "agentsd_event_streams") {
                Some(n) if n >= 1.0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        home.write_config(&format!("{FAST}{ONE_AGENT}"));
        let text = eventually_blocking(Duration::from_secs(20), "the removal printed", || {
            let t = std::fs::read_to_string(&out).unwrap();
            if t.contains("removed") { Ok(t) } else { Err(t) }
        });
        if json {
            let line = text.lines().find(|l| l.contains("removed")).unwrap();
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["agent_id"], "goes");
            assert_eq!(v["removed"], true);
        } else {
            assert!(text.contains("goes: removed from the config"), "{text}");
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
        eventually_with(Duration::from_secs(10), "its stream closed", || async {
            match sample(&d.metrics().await, "agentsd_event_streams") {
                Some(0.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        // Back for the next round.
        home.write_config(&with_goes("command = [\"sleep\", \"100000\"]"));
        d.wait_status("goes", Status::Running).await;
    }
}

/// `/sse/logs` for every agent follows an agent removed and added again.
#[tokio::test]
async fn all_logs_follow_an_agent_added_again_after_its_removal() {
    let home = Home::new();
    let talks =
        "command = [\"sh\", \"-c\", \"i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.2; done\"]";
    home.write_config(&with_goes(talks));
    let d = home.start();
    d.wait_status("goes", Status::Running).await;
    let mut all = Sse::open(&d, "/sse/logs", None).await;
    let got_line = |ev: &Event| {
        ev.name == "line" && serde_json::from_str::<serde_json::Value>(&ev.data).unwrap()["agent"] == "goes"
    };
    loop {
        let ev = all.next(Duration::from_secs(10)).await.expect("a line of goes");
        if got_line(&ev) {
            break;
        }
    }
    home.write_config(&format!("{FAST}{ONE_AGENT}"));
    eventually_with(Duration::from_secs(15), "goes removed", || async {
        match d.request(reqwest::Method::GET, "/agents/goes").await {
            (404, _) => Ok(()),
            (code, body) => Err(format!("{code} {body}")),
        }
    })
    .await;
    home.write_config(&with_goes(talks));
    d.wait_status("goes", Status::Running).await;
    // Its lines come again on the same stream.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline
            .checked_duration_since(std::time::Instant::now())
            .expect("a line of the agent added again within 10 s");
        match all.next(left).await {
            Some(ev) if got_line(&ev) => break,
            Some(_) => {}
            None => panic!("no line of the agent added again within 10 s"),
        }
    }
}

/// A choice stored for an agent is forgotten with the agent: added again,
/// it follows `autostart`, after a reload and after a daemon restart.
#[tokio::test]
async fn a_removed_agents_stored_choice_goes_with_it() {
    let home = Home::new();
    let goes = "command = [\"sleep\", \"100000\"]";
    home.write_config(&with_goes(goes));
    let mut d = home.start();
    d.wait_status("goes", Status::Running).await;
    // The operator stops it: a stored choice.
    d.control("goes", "stop").await;
    home.write_config(&format!("{FAST}{ONE_AGENT}"));
    eventually_with(Duration::from_secs(15), "goes removed", || async {
        match d.request(reqwest::Method::GET, "/agents/goes").await {
            (404, _) => Ok(()),
            (code, body) => Err(format!("{code} {body}")),
        }
    })
    .await;
    // Added again: autostart (the default) starts it.
    home.write_config(&with_goes(goes));
    d.wait_status("goes", Status::Running).await;
    // And it still does after a restart of the daemon.
    assert!(d.stop().success());
    let d2 = home.start();
    let a = d2.wait_status("goes", Status::Running).await;
    assert_eq!(a.desired, agentsd::wire::Desired::Running);
    drop(d2);

    // Removed while the daemon is down, then added again by a reload: the
    // old choice must not come back at the next start either.
    let mut d = home.start();
    d.wait_status("goes", Status::Running).await;
    d.control("goes", "stop").await;
    assert!(d.stop().success());
    home.write_config(&format!("{FAST}{ONE_AGENT}"));
    let mut d = home.start();
    d.wait_status("stays", Status::Running).await;
    home.write_config(&with_goes(goes));
    d.wait_status("goes", Status::Running).await;
    assert!(d.stop().success());
    let d = home.start();
    d.wait_status("goes", Status::Running).await;
}

/// One `curl` POST of `file` (or of stdin, chunked, when `None`); its
/// status, body and `-v` trace.
fn curl_post(
    d: &Daemon,
    home: &Home,
    args: &[&str],
    file: Option<&std::path::Path>,
    path: &str,
) -> (String, String, String) {
    let body = home.path().join("curl-body");
    let mut c = std::process::Command::new("curl");
    c.args(["-sS", "-v", "--max-time", "60", "-o"])
        .arg(&body)
        .args(["-w", "%{http_code}", "--cacert"])
        .arg(home.path().join("state/tls/cert.pem"))
        .args(args)
        .args(["-X", "POST", "--data-binary"]);
    match file {
        Some(f) => {
            c.arg(format!("@{}", f.display()));
        }
        None => {
            c.args(["@-", "-H", "Transfer-Encoding: chunked"]);
            c.stdin(std::fs::File::open(home.path().join("10m")).unwrap());
        }
    }
    let out = c.arg(format!("{}{path}", d.url)).output().expect("curl runs");
    let body = std::fs::read_to_string(&body).unwrap_or_default();
    (text(&out.stdout), body, text(&out.stderr))
}

/// A body over the 16 KiB limit gets a 413 with the JSON error that curl
/// sees, over HTTP/1.1 and HTTP/2, at sizes past HTTP/2's 64 KiB window,
/// announced (with and without `Expect: 100-continue`) or chunked, on a
/// route or not; and no `100 Continue` is sent for a length over it.
#[tokio::test]
#[ignore = "needs curl"]
async fn an_oversized_body_is_refused_with_a_413_the_client_sees() {
    let home = Home::new();
    home.write_config(&format!("{FAST}{ONE_AGENT}"));
    let d = home.start();
    for (name, size) in [("100k", 100_000usize), ("10m", 10_000_000)] {
        std::fs::write(home.path().join(name), vec![b'x'; size]).unwrap();
    }
    let mut failed = Vec::new();
    for http in ["--http1.1", "--http2"] {
        for path in ["/agents/stays/stop", "/no/such/route"] {
            for (name, file) in [
                ("100k", Some("100k")),
                ("10m", Some("10m")),
                ("chunked 10m", None),
            ] {
                for expect in [None, Some("Expect:")] {
                    let mut args = vec![http];
                    if let Some(e) = expect {
                        args.extend(["-H", e]);
                    }
                    for round in 0..2 {
                        let f = file.map(|f| home.path().join(f));
                        let (code, body, trace) = curl_post(&d, &home, &args, f.as_deref(), path);
                        let what = format!("{http} {path} {name} {expect:?} round {round}");
                        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                        if code != "413" || json["error"]["code"] != "payload_too_large" {
                            failed.push(format!(
                                "{what}: {code} {body:?} {}",
                                trace
                                    .lines()
                                    .filter(|l| l.starts_with("curl:")
                                        || l.starts_with("* ") && l.contains("rror"))
                                    .collect::<Vec<_>>()
                                    .join(" | ")
                            ));
                        } else if file.is_some() && trace.contains("100 Continue") {
                            failed.push(format!("{what}: a 100 Continue for a length over the limit"));
                        }
                    }
                }
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 48 failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    // The daemon is fine and the agent untouched.
    assert_eq!(d.agent("stays").await.status, Status::Running);
}

/// `logs --all -f` over more agents than their cursors fit in a request
/// line (here 150 agents with 60-character ids: about 10 KB of `after=`)
/// resumes every one of them exactly after a daemon restart (the cursors
/// go in the body of `POST /sse/logs`): each agent's line of its new run
/// is printed once, none of the old ones again.
#[tokio::test]
async fn logs_all_follow_resumes_every_agent_when_the_cursors_do_not_fit_a_request_line() {
    const AGENTS: usize = 150;
    let home = Home::new();
    let port = free_port();
    let id = |i: usize| format!("agent-{i:03}-{}", "x".repeat(50));
    let mut agents = String::new();
    for i in 0..AGENTS {
        agents.push_str(&format!(
            "[agents.{}]\ncommand = [\"sh\", \"-c\", \"echo run $$; exec sleep 100000\"]\n",
            id(i)
        ));
    }
    write_config_on_port(&home, port, &format!("{FAST}{agents}"));
    let mut d = home.start();
    wait_all_running(&d, AGENTS).await;
    let mut follower = cli_for(&home, &d)
        .args(["logs", "--all", "-f", "-n", "1", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut got: Vec<(String, String)> = Vec::new();
    let take = |got: &mut Vec<(String, String)>, n: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while got.len() < n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Ok(l) = rx.recv_timeout(left) else {
                return false;
            };
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            got.push((
                v["agent"].as_str().unwrap().to_string(),
                v["line"].as_str().unwrap().to_string(),
            ));
        }
        true
    };
    assert!(take(&mut got, AGENTS), "the first lines: {}", got.len());
    // Its stream is live once a line written now reaches it: only the
    // stream can bring it (the tails, from another route, are printed). A
    // count of open streams is no proof: the daemon counts a stream's slot
    // before it answers, and a shutdown then answers the follower's first
    // connection 503 (which ends a follow that never connected).
    d.control(&id(0), "restart").await;
    assert!(
        take(&mut got, AGENTS + 1),
        "the restarted agent's line: {}",
        got.len()
    );
    assert_eq!(d.stop().code(), Some(0));
    drop(d);
    let d = home.start();
    wait_all_running(&d, AGENTS).await;
    let complete = take(&mut got, 2 * AGENTS + 1);
    let _ = follower.kill();
    let out = follower.wait_with_output().unwrap();
    let mut missing = Vec::new();
    for i in 0..AGENTS {
        let mine: Vec<&str> = got
            .iter()
            .filter(|(a, _)| *a == id(i))
            .map(|(_, l)| l.as_str())
            .collect();
        let distinct: std::collections::BTreeSet<&&str> = mine.iter().collect();
        // The first agent was restarted once more, as the barrier above.
        let runs = if i == 0 { 3 } else { 2 };
        if mine.len() != runs || distinct.len() != runs {
            missing.push(format!("{}: {mine:?}", id(i)));
        }
    }
    assert!(
        complete && missing.is_empty(),
        "{} of {AGENTS} agents not resumed exactly (each run's line once); e.g. {:?}; stderr: {}",
        missing.len(),
        missing.first(),
        text(&out.stderr)
    );
    drop(d);
}

async fn wait_all_running(d: &Daemon, n: usize) {
    eventually_with(Duration::from_secs(60), "every agent running", || async {
        let list = d.get("/agents").await;
        let running = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["status"] == "running")
            .count();
        if running == n {
            Ok(())
        } else {
            Err(format!("{running} of {n} running"))
        }
    })
    .await
}

/// `HEAD` on a `GET` route answers as `GET` would, without a body (event
/// streams included: they end at once); parameters given empty are "not
/// given", as the description allows; the description has what was
/// missing (`DELETE /session`'s answers, the 401 of `/openapi.json`, the
/// body of `POST /sse/logs`, the `removed` event).
#[tokio::test]
async fn head_empty_parameters_and_the_description_agree_with_the_daemon() {
    let home = Home::new();
    home.write_config(&format!("{FAST}{ONE_AGENT}"));
    let d = home.start();
    d.wait_status("stays", Status::Running).await;
    let routes = [
        ("/health", 200),
        ("/agents", 200),
        ("/agents/stays", 200),
        ("/agents/stays/logs", 200),
        ("/agents/stays/history", 200),
        ("/agents/nope", 404),
        ("/whoami", 200),
        ("/audit", 200),
        ("/metrics", 200),
        ("/openapi.json", 200),
        ("/sse/status", 200),
        ("/sse/agents/stays/logs", 200),
        ("/sse/logs", 200),
        ("/ui/", 200),
    ];
    for http1 in [true, false] {
        let client = d
            .new_client(http1)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        for (path, want) in routes {
            let res = client
                .head(format!("{}{path}", d.url))
                .bearer_auth(&d.key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("HEAD {path}: {e}"));
            assert_eq!(res.status().as_u16(), want, "HEAD {path} (http1: {http1})");
            let body = res.bytes().await.unwrap();
            assert!(body.is_empty(), "HEAD {path}: a body of {} bytes", body.len());
        }
    }
    // HEAD of an event stream holds no stream slot.
    eventually_with(Duration::from_secs(10), "no event stream left open", || async {
        match sample(&d.metrics().await, "agentsd_event_streams") {
            Some(0.0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    for path in [
        "/agents?status=",
        "/agents?q=",
        "/agents/stays/logs?n=",
        "/agents/stays/history?limit=&before=",
        "/audit?limit=&before=",
    ] {
        let (code, body) = d.request(reqwest::Method::GET, path).await;
        assert_eq!(code, 200, "{path}: {body}");
    }
    let mut sse = Sse::open(&d, "/sse/logs?n=", None).await;
    drop(sse.next(Duration::from_millis(1)).await);

    let doc = d.get("/openapi.json").await;
    let p = &doc["paths"];
    assert!(
        p["/openapi.json"]["get"]["responses"]["401"].is_object(),
        "{}",
        p["/openapi.json"]
    );
    assert!(
        p["/session"]["delete"]["responses"]["204"].is_object(),
        "{}",
        p["/session"]
    );
    assert!(
        p["/session"]["delete"]["responses"]["401"].is_object(),
        "{}",
        p["/session"]
    );
    assert_eq!(
        p["/sse/logs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/LogResume"
    );
    assert!(doc["components"]["schemas"]["RemovedEvent"]["properties"]["agent_id"].is_object());
    // Health probes: the event, the states, the summary's fields.
    let schemas = &doc["components"]["schemas"];
    assert!(
        schemas["HealthEvent"]["properties"]["new_health"].is_object(),
        "{}",
        schemas["HealthEvent"]
    );
    assert!(
        schemas["HealthState"]["enum"].to_string().contains("unhealthy"),
        "{}",
        schemas["HealthState"]
    );
    assert!(schemas["AgentSummary"]["properties"]["health_detail"].is_object());
    assert!(schemas["Status"]["enum"].to_string().contains("waiting"));
    let status_stream = p["/sse/status"]["get"]["responses"]["200"]["description"].to_string();
    assert!(
        status_stream.contains("`health` (HealthEvent)"),
        "{status_stream}"
    );
    assert!(p["/agents"].get("head").is_none(), "HEAD is not described apart");
}

/// `POST /sse/logs` resumes each agent after the cursor in its body.
#[tokio::test]
async fn post_sse_logs_resumes_from_the_cursors_in_its_body() {
    let home = Home::new();
    home.write_config(&format!(
        "{FAST}[agents.a]\ncommand = [\"sh\", \"-c\", \"echo a1; echo a2; echo a3; exec sleep 100000\"]\n\
         [agents.b]\ncommand = [\"sh\", \"-c\", \"echo b1; echo b2; exec sleep 100000\"]\n"
    ));
    let d = home.start();
    eventually(Duration::from_secs(10), "both logs written", || {
        std::fs::read_to_string(home.log_path("a"))
            .unwrap_or_default()
            .lines()
            .count()
            == 3
            && std::fs::read_to_string(home.log_path("b"))
                .unwrap_or_default()
                .lines()
                .count()
                == 2
    })
    .await;
    // After a's first line ("a1\n": cursor 3) and b's second ("b1\nb2\n": 6).
    let res = d
        .client
        .post(format!("{}/sse/logs?agent=a&agent=b", d.url))
        .bearer_auth(&d.key)
        .json(&serde_json::json!({"after": {"a": 3, "b": 6}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut sse = Sse::from_response(res);
    let mut got = Vec::new();
    while got.len() < 2 {
        let ev = sse
            .next(Duration::from_secs(10))
            .await
            .expect("the lines after the cursors");
        if ev.name == "line" {
            got.push(ev.data);
        }
    }
    assert_eq!(
        got,
        [r#"{"agent":"a","line":"a2"}"#, r#"{"agent":"a","line":"a3"}"#],
        "b is at its end, a resumes after a1"
    );
    // Over 1 MiB of cursors: 413, announced or streamed.
    let big = format!(
        "{{\"after\": {{\"a\": 1, \"pad\": \"{}\"}}}}",
        "x".repeat(2 << 20)
    );
    for chunked in [false, true] {
        let req = d
            .client
            .post(format!("{}/sse/logs", d.url))
            .bearer_auth(&d.key)
            .header("content-type", "application/json");
        let req = if chunked {
            let parts: Vec<Result<Vec<u8>, std::io::Error>> =
                big.as_bytes().chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
            req.body(reqwest::Body::wrap_stream(futures_util::stream::iter(parts)))
        } else {
            req.body(big.clone())
        };
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 413, "chunked: {chunked}");
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["error"]["code"], "payload_too_large");
    }
    // A bad body is a 400 with the JSON error shape, never a stream.
    for body in [r#"{"after": {"A/../x": 1}}"#, r#"{"after": 5}"#, "not json"] {
        let res = d
            .client
            .post(format!("{}/sse/logs", d.url))
            .bearer_auth(&d.key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{body}");
        let v: serde_json::Value = res.json().await.unwrap();
        assert!(v["error"]["code"].is_string(), "{body}: {v}");
    }
}
