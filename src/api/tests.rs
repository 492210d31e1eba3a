//! Every route through salvo's TestClient, without a socket.

use super::*;
use crate::config;
use crate::store::Store;
use crate::wire::{AgentSummary, ErrorBody, Status};
use salvo::http::StatusCode;
use salvo::test::{ResponseExt, TestClient};

const KEY: &str = "unit-test-key-0123456789abcdef0123456789";
const READ_KEY: &str = "unit-test-read-key-0123456789abcdef01234";
const OPERATE_KEY: &str = "unit-test-operate-key-0123456789abcdef01";

fn ring() -> crate::secret::KeyRing {
    use crate::secret::{KeyEntry, KeyRing, digest};
    use crate::wire::Role;
    let entry = |name: &str, role, key: &str| KeyEntry {
        name: name.into(),
        role,
        digest: digest(key),
    };
    KeyRing::new(vec![
        entry("api_key_file", Role::Admin, KEY),
        entry("wall", Role::Read, READ_KEY),
        entry("oncall", Role::Operate, OPERATE_KEY),
    ])
    .unwrap()
}
const BASE: &str = "http://127.0.0.1:5800";

struct Fixture {
    _dir: tempfile::TempDir,
    service: Service,
    handle: Handle,
    shutdown: watch::Sender<bool>,
    config_error: watch::Sender<Option<String>>,
}

/// The API over a real supervisor and store whose agents never run: these
/// tests start no process (a supervisor collects every child of its process
/// once it has forked, which in a test process would take other tests'
/// children). What needs a running agent is tested through the binary
/// (tests/api.rs and the others). `svc` has a log from an earlier run.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let text = "[defaults]\nstart_window = \"0s\"\nstop_timeout = \"2s\"\n\
                [agents.svc]\ncommand = [\"sh\", \"-c\", \"echo one; echo two; exec sleep 1000\"]\nautostart = false\n\
                [agents.off]\ncommand = [\"sleep\", \"1000\"]\nautostart = false\n";
    let mut cfg = config::parse(text, "t.toml", dir.path()).unwrap();
    cfg.server.log_dir = dir.path().join("logs");
    cfg.server.state_dir = dir.path().join("state");
    // The fixtures of one test run share a state dir (the default) and no
    // lock: the cgroups named after it would be shared too.
    cfg.server.cgroups = config::Cgroups::Off;
    std::fs::create_dir_all(&cfg.server.log_dir).unwrap();
    std::fs::write(cfg.server.log_dir.join("svc.log"), "one\ntwo\n").unwrap();
    let (store, loaded) = Store::open(
        dir.path(),
        crate::store::Keep {
            history: 1000,
            audit: 1000,
        },
    )
    .unwrap();
    let forker = crate::supervisor::Forker::thread().unwrap();
    let handle = crate::supervisor::start(&cfg, store.clone(), &loaded.desired, forker, None).unwrap();
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (config_error_tx, config_error) = watch::channel(None);
    let (_, limits) = watch::channel(None);
    // Two event streams at most, to see the third refused.
    let state = Arc::new(AppState::new(
        &cfg.server,
        true,
        handle.clone(),
        store,
        Channels {
            keys: watch::channel(Arc::new(ring())).1,
            config_error,
            limits,
            shutdown: shutdown_rx,
            upgrades: tokio::sync::mpsc::channel(1).0,
            edits: None,
            fleet: None,
            certificate: watch::channel(None).1,
            acme: None,
        },
        Default::default(),
        StreamSlots::new(2, 4, 4, 0),
    ));
    Fixture {
        _dir: dir,
        service: service(state, crate::server::Drain::new().hoop()),
        handle,
        shutdown,
        config_error: config_error_tx,
    }
}

async fn call(f: &Fixture, method: &str, path: &str, key: Option<&str>) -> (StatusCode, String) {
    let url = format!("{BASE}{path}");
    let mut req = match method {
        "POST" => TestClient::post(url),
        "PUT" => TestClient::put(url),
        "DELETE" => TestClient::delete(url),
        _ => TestClient::get(url),
    };
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let mut res = req.send(&f.service).await;
    let status = res.status_code.unwrap_or(StatusCode::OK);
    (status, res.take_string().await.unwrap_or_default())
}

/// Waits (at most 10 s) until `f` gives something.
async fn until<T, F: std::future::Future<Output = Option<T>>>(mut f: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "not within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn error_code(body: &str) -> String {
    serde_json::from_str::<ErrorBody>(body)
        .unwrap_or_else(|e| panic!("not an error body ({e}): {body}"))
        .error
        .code
}

#[tokio::test]
async fn health_is_open_and_everything_else_needs_the_key() {
    let f = fixture().await;
    let (code, body) = call(&f, "GET", "/health", None).await;
    assert_eq!(code, StatusCode::OK);
    let h: crate::wire::Health = serde_json::from_str(&body).unwrap();
    assert_eq!((h.status.as_str(), h.config_error), ("ok", None));
    for (m, p) in [
        ("GET", "/agents"),
        ("GET", "/agents/svc"),
        ("POST", "/agents/svc/start"),
        ("POST", "/agents/svc/stop"),
        ("POST", "/agents/svc/restart"),
        ("GET", "/agents/svc/logs"),
        ("GET", "/sse/status"),
        ("GET", "/sse/agents/svc/logs"),
        ("GET", "/openapi.json"),
    ] {
        for key in [None, Some("wrong"), Some(&KEY[1..])] {
            let (code, body) = call(&f, m, p, key).await;
            assert_eq!(code, StatusCode::UNAUTHORIZED, "{m} {p} {key:?}");
            assert_eq!(error_code(&body), "unauthorized");
        }
    }
    let mut res = TestClient::get(format!("{BASE}/agents")).send(&f.service).await;
    assert_eq!(res.headers().get("www-authenticate").unwrap(), "Bearer");
    let _ = res.take_string().await;
    f.handle.shutdown().await;
}

#[tokio::test]
async fn health_shows_details_only_to_a_caller_with_the_key() {
    let f = fixture().await;
    f.config_error.send_replace(Some(
        "/etc/agentsd/agentsd.toml:3:13: invalid type: string \"s3cr3t-token\", expected a boolean".into(),
    ));
    let (code, body) = call(&f, "GET", "/health", None).await;
    assert_eq!(code, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "degraded");
    assert!(
        !body.contains("s3cr3t") && !body.contains("/etc/agentsd"),
        "{body}"
    );
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["status", "version"]
    );
    for wrong in [Some("wrong"), Some(&KEY[1..])] {
        let (_, body) = call(&f, "GET", "/health", wrong).await;
        assert!(!body.contains("s3cr3t"), "{body}");
    }
    let (_, body) = call(&f, "GET", "/health", Some(KEY)).await;
    let h: crate::wire::Health = serde_json::from_str(&body).unwrap();
    assert_eq!(h.status, "degraded");
    assert!(h.config_error.unwrap().contains("s3cr3t-token"));
    assert_eq!(h.dropped_log_lines, Some(0));
    f.handle.shutdown().await;
}

#[tokio::test]
async fn agents_routes() {
    let f = fixture().await;
    let (code, body) = call(&f, "GET", "/agents", Some(KEY)).await;
    assert_eq!(code, StatusCode::OK);
    let list: Vec<AgentSummary> = serde_json::from_str(&body).unwrap();
    assert_eq!(
        list.iter().map(|a| (a.id.as_str(), a.status)).collect::<Vec<_>>(),
        [("off", Status::Stopped), ("svc", Status::Stopped)],
        "{list:?}"
    );

    // Filtered on the daemon.
    let ids = |body: &str| {
        serde_json::from_str::<Vec<AgentSummary>>(body)
            .unwrap()
            .into_iter()
            .map(|a| a.id)
            .collect::<Vec<_>>()
    };
    let (_, body) = call(&f, "GET", "/agents?status=stopped", Some(KEY)).await;
    assert_eq!(ids(&body), ["off", "svc"]);
    let (_, body) = call(&f, "GET", "/agents?status=running", Some(KEY)).await;
    assert!(ids(&body).is_empty());
    let (_, body) = call(&f, "GET", "/agents?q=sv", Some(KEY)).await;
    assert_eq!(ids(&body), ["svc"]);
    let (_, body) = call(&f, "GET", "/agents?status=running&q=of", Some(KEY)).await;
    assert!(ids(&body).is_empty());
    let (code, body) = call(&f, "GET", "/agents?status=sleepy", Some(KEY)).await;
    assert_eq!(
        (code, error_code(&body).as_str()),
        (StatusCode::BAD_REQUEST, "bad_request")
    );

    let (code, body) = call(&f, "GET", "/agents/svc", Some(KEY)).await;
    assert_eq!(code, StatusCode::OK);
    let d: crate::wire::AgentDetail = serde_json::from_str(&body).unwrap();
    assert_eq!(d.config.command[0], "sh");

    for p in [
        "/agents/nope",
        "/agents/Bad.Id",
        "/agents/nope/logs",
        "/sse/agents/nope/logs",
        "/sse/agents/nope/messages",
    ] {
        let (code, body) = call(&f, "GET", p, Some(KEY)).await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{p}");
        assert_eq!(error_code(&body), "not_found");
    }
    for op in ["start", "stop", "restart"] {
        let (code, body) = call(&f, "POST", &format!("/agents/nope/{op}"), Some(KEY)).await;
        assert_eq!(
            (code, error_code(&body).as_str()),
            (StatusCode::NOT_FOUND, "not_found")
        );
    }

    // A stop of a stopped agent: done at once. (Starts run a process:
    // tests/api.rs.)
    let (code, body) = call(&f, "POST", "/agents/off/stop", Some(KEY)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<AgentSummary>(&body).unwrap().status,
        Status::Stopped
    );

    // GET on a POST route, and routes that do not exist.
    let (code, body) = call(&f, "GET", "/agents/off/start", Some(KEY)).await;
    assert!(
        code == StatusCode::METHOD_NOT_ALLOWED || code == StatusCode::NOT_FOUND,
        "{code}"
    );
    error_code(&body);
    let (code, body) = call(&f, "DELETE", "/agents/off", Some(KEY)).await;
    assert!(code.is_client_error(), "{code}");
    error_code(&body);
    let (code, body) = call(&f, "GET", "/nowhere", Some(KEY)).await;
    assert_eq!(
        (code, error_code(&body).as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    f.handle.shutdown().await;
}

#[tokio::test]
async fn logs_route_bounds_n() {
    let f = fixture().await;
    let (code, body) = call(&f, "GET", "/agents/svc/logs?n=1", Some(KEY)).await;
    assert_eq!(code, StatusCode::OK);
    let lines = serde_json::from_str::<Vec<crate::wire::LogLine>>(&body).unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].text, "two");
    assert_eq!(lines[0].cursor, 8);
    // Empty is not given (the default), as the description allows.
    let (code, _) = call(&f, "GET", "/agents/svc/logs?n=", Some(KEY)).await;
    assert_eq!(code, StatusCode::OK);
    for bad in ["x", "-1", "10001", "1.5"] {
        let (code, body) = call(&f, "GET", &format!("/agents/svc/logs?n={bad}"), Some(KEY)).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "n={bad}");
        assert_eq!(error_code(&body), "bad_request");
    }
    let (code, _) = call(&f, "GET", "/agents/svc/logs?n=10000", Some(KEY)).await;
    assert_eq!(code, StatusCode::OK);
    f.handle.shutdown().await;
}

#[tokio::test]
async fn event_streams_are_capped_and_end_on_shutdown() {
    let f = fixture().await;
    let mut a = TestClient::get(format!("{BASE}/sse/status"))
        .bearer_auth(KEY)
        .send(&f.service)
        .await;
    assert_eq!(a.status_code, Some(StatusCode::OK));
    assert_eq!(a.headers().get("content-type").unwrap(), "text/event-stream");
    assert_eq!(a.headers().get("x-accel-buffering").unwrap(), "no");
    let mut b = TestClient::get(format!("{BASE}/sse/agents/svc/logs?n=2"))
        .bearer_auth(KEY)
        .send(&f.service)
        .await;
    assert_eq!(b.status_code, Some(StatusCode::OK));
    // The cap here is 2: a third stream is refused.
    let (code, body) = call(&f, "GET", "/sse/status", Some(KEY)).await;
    assert_eq!(
        (code, error_code(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    let (code, body) = call(&f, "GET", "/sse/agents/svc/logs", Some(KEY)).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (code, body) = {
        let mut r = TestClient::get(format!("{BASE}/sse/agents/svc/logs"))
            .bearer_auth(KEY)
            .add_header("last-event-id", "not-a-cursor", true)
            .send(&f.service)
            .await;
        (r.status_code, r.take_string().await.unwrap_or_default())
    };
    assert_eq!(code, Some(StatusCode::BAD_REQUEST), "{body}");
    // The log stream's last two lines (read from the file as the client
    // takes them)...
    let mut b_body = b.take_body();
    let mut b_text = String::new();
    let tail = "event: line\ndata: one\nid: 4\n\nevent: line\ndata: two\nid: 8\n\n";
    let within = std::time::Duration::from_secs(5);
    while b_text.len() < tail.len() {
        let frame = tokio::time::timeout(within, futures_util::StreamExt::next(&mut b_body))
            .await
            .expect("the tail within 5 s")
            .expect("the stream open")
            .unwrap();
        if let Some(data) = frame.data_ref() {
            b_text.push_str(std::str::from_utf8(data).unwrap());
        }
    }
    assert_eq!(b_text, tail);
    // ...then shutdown ends both streams, and their bodies complete.
    f.shutdown.send_replace(true);
    let a = tokio::time::timeout(within, a.take_string())
        .await
        .unwrap()
        .unwrap();
    assert!(a.starts_with("event: snapshot\n"), "{a}");
    let rest = tokio::time::timeout(within, async {
        let mut n = 0;
        while let Some(frame) = futures_util::StreamExt::next(&mut b_body).await {
            n += frame
                .ok()
                .and_then(|f| f.data_ref().map(|d| d.len()))
                .unwrap_or(0);
        }
        n
    })
    .await
    .expect("the log stream ended by the shutdown");
    assert_eq!(rest, 0, "nothing after the tail but the end");
    f.handle.shutdown().await;
}

#[tokio::test]
async fn openapi_route() {
    let f = fixture().await;
    let (code, body) = call(&f, "GET", "/openapi.json", Some(KEY)).await;
    assert_eq!(code, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with('3')), Some(true));
    assert!(doc["paths"]["/sse/agents/{id}/logs"]["get"].is_object());
    let messages = &doc["paths"]["/sse/agents/{id}/messages"]["get"]["responses"];
    assert!(
        messages["409"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("no_messages")),
        "{messages}"
    );
    f.handle.shutdown().await;
}

/// An agent without a messages query: 409 with why, before any stream
/// (or database) is opened; a bad cursor or `n` is a 400.
#[tokio::test]
async fn messages_of_an_agent_without_a_query_are_refused() {
    let f = fixture().await;
    let (code, body) = call(&f, "GET", "/sse/agents/svc/messages", Some(KEY)).await;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(error_code(&body), "no_messages");
    assert!(body.contains("stats.messages"), "{body}");
    for p in [
        "/sse/agents/svc/messages?n=1001",
        "/sse/agents/svc/messages?after=x",
    ] {
        let (code, body) = call(&f, "GET", p, Some(KEY)).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{p}: {body}");
    }
    f.handle.shutdown().await;
}

#[tokio::test]
async fn each_role_can_do_what_it_may_and_the_audit_says_who_did_what() {
    let f = fixture().await;
    for (key, name, role) in [
        (READ_KEY, "wall", "read"),
        (OPERATE_KEY, "oncall", "operate"),
        (KEY, "api_key_file", "admin"),
    ] {
        let (code, body) = call(&f, "GET", "/whoami", Some(key)).await;
        assert_eq!(code, StatusCode::OK);
        let me: crate::wire::Whoami = serde_json::from_str(&body).unwrap();
        assert_eq!((me.name.as_str(), me.role.as_str()), (name, role));
        let (code, _) = call(&f, "GET", "/agents", Some(key)).await;
        assert_eq!(code, StatusCode::OK, "{name} lists");
    }
    let (code, body) = call(&f, "POST", "/agents/off/stop", Some(READ_KEY)).await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(error_code(&body), "forbidden");
    let e: ErrorBody = serde_json::from_str(&body).unwrap();
    assert_eq!(
        e.error.message,
        "the key \"wall\" has the role read; this needs operate"
    );
    let (code, body) = call(&f, "POST", "/agents/off/stop", Some(OPERATE_KEY)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    for key in [READ_KEY, OPERATE_KEY] {
        let (code, body) = call(&f, "GET", "/audit", Some(key)).await;
        assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    }
    let entries = until(|| async {
        let (code, body) = call(&f, "GET", "/audit", Some(KEY)).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        let e: Vec<crate::wire::AuditEntry> = serde_json::from_str(&body).unwrap();
        (e.len() == 2).then_some(e)
    })
    .await;
    // Newest first: the stop that was done, then the one refused.
    assert_eq!(
        (
            entries[0].key.as_str(),
            entries[0].role.as_str(),
            entries[0].status,
            entries[0].outcome.as_str()
        ),
        ("oncall", "operate", 200, "ok")
    );
    assert_eq!(entries[0].agent.as_deref(), Some("off"));
    assert_eq!(
        (entries[0].method.as_str(), entries[0].path.as_str()),
        ("POST", "/agents/off/stop")
    );
    assert_eq!(
        (
            entries[1].key.as_str(),
            entries[1].status,
            entries[1].outcome.as_str()
        ),
        ("wall", 403, "forbidden")
    );
    // Reads are not audited; paging goes on from an entry's id.
    let (_, body) = call(
        &f,
        "GET",
        &format!("/audit?limit=1&before={}", entries[0].id),
        Some(KEY),
    )
    .await;
    let page: Vec<crate::wire::AuditEntry> = serde_json::from_str(&body).unwrap();
    assert_eq!(page, entries[1..]);
    for bad in ["/audit?limit=0", "/audit?limit=1001", "/audit?before=x"] {
        let (code, _) = call(&f, "GET", bad, Some(KEY)).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}");
    }
    f.handle.shutdown().await;
}

#[tokio::test]
async fn an_address_sending_wrong_keys_gets_429_and_no_oracle() {
    let f = fixture().await;
    let wrong = "wrong-key-0123456789abcdef0123456789abcdef";
    let mut codes = Vec::new();
    for _ in 0..25 {
        codes.push(call(&f, "GET", "/agents", Some(wrong)).await.0);
    }
    assert!(
        codes[..20].iter().all(|c| *c == StatusCode::UNAUTHORIZED),
        "{codes:?}"
    );
    assert!(
        codes[20..].iter().all(|c| *c == StatusCode::TOO_MANY_REQUESTS),
        "{codes:?}"
    );
    // Past the budget even the right key is not looked at: a 429 tells
    // nothing about the key.
    let mut res = TestClient::get(format!("{BASE}/agents"))
        .bearer_auth(KEY)
        .send(&f.service)
        .await;
    assert_eq!(res.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    let secs: u64 = res
        .headers()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&secs), "{secs}");
    assert_eq!(error_code(&res.take_string().await.unwrap()), "too_many_failures");
    // /health answers, but tells no details to a key it did not check.
    let (code, body) = call(&f, "GET", "/health", Some(KEY)).await;
    assert_eq!(code, StatusCode::OK);
    assert!(!body.contains("dropped_log_lines"), "{body}");
    // A request without any key costs nothing and is 401 as before it.
    let (code, _) = call(&f, "GET", "/metrics", None).await;
    assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    f.handle.shutdown().await;
}

/// Sends with a session cookie and an optional Origin.
async fn with_cookie(
    f: &Fixture,
    method: &str,
    path: &str,
    cookie: &str,
    origin: Option<&str>,
) -> (StatusCode, String) {
    let url = format!("{BASE}{path}");
    let mut req = match method {
        "POST" => TestClient::post(url),
        "DELETE" => TestClient::delete(url),
        _ => TestClient::get(url),
    };
    req = req.add_header("cookie", cookie, true);
    if let Some(o) = origin {
        req = req.add_header("origin", o, true);
    }
    let mut res = req.send(&f.service).await;
    (
        res.status_code.unwrap_or(StatusCode::OK),
        res.take_string().await.unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_session_cookie_works_like_the_key_and_needs_the_page_origin_to_change_anything() {
    let f = fixture().await;
    let mut res = TestClient::post(format!("{BASE}/session"))
        .bearer_auth(OPERATE_KEY)
        .send(&f.service)
        .await;
    assert_eq!(res.status_code, Some(StatusCode::OK));
    let set = res
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let me: crate::wire::Whoami = serde_json::from_str(&res.take_string().await.unwrap()).unwrap();
    assert_eq!(
        (me.name.as_str(), me.role),
        ("oncall", crate::wire::Role::Operate)
    );
    for part in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(set.contains(part), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let (code, body) = with_cookie(&f, "GET", "/whoami", &cookie, None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(body.contains("oncall"));
    // Changing something: only from the page's own origin.
    let (code, body) = with_cookie(&f, "POST", "/agents/off/stop", &cookie, None).await;
    assert_eq!(
        (code, error_code(&body).as_str()),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{body}"
    );
    let (code, body) = with_cookie(
        &f,
        "POST",
        "/agents/off/stop",
        &cookie,
        Some("https://evil.example"),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body.contains("https://evil.example is not https://127.0.0.1:5800"),
        "{body}"
    );
    let (code, body) = with_cookie(
        &f,
        "POST",
        "/agents/off/stop",
        &cookie,
        Some("https://127.0.0.1:5800"),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    // A session cannot open another one.
    let (code, _) = with_cookie(&f, "POST", "/session", &cookie, Some("https://127.0.0.1:5800")).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    // Signed out: the cookie is worth nothing.
    let (code, _) = with_cookie(&f, "DELETE", "/session", &cookie, Some("https://127.0.0.1:5800")).await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, _) = with_cookie(&f, "GET", "/agents", &cookie, None).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    // Sign-in with a wrong key opens nothing.
    let res = TestClient::post(format!("{BASE}/session"))
        .bearer_auth("nope-0123456789abcdef0123456789abcdef")
        .send(&f.service)
        .await;
    assert_eq!(res.status_code, Some(StatusCode::UNAUTHORIZED));
    assert!(res.headers().get("set-cookie").is_none());
    // The sign-in and the stop are in the audit, with the key's name.
    let entries = until(|| async {
        let (_, body) = call(&f, "GET", "/audit", Some(KEY)).await;
        let e: Vec<crate::wire::AuditEntry> = serde_json::from_str(&body).unwrap();
        (e.len() >= 5 && e.iter().any(|e| e.count == 2)).then_some(e)
    })
    .await;
    // The same refusal twice is one entry counted twice.
    let paths: Vec<(&str, &str, u16, u64)> = entries
        .iter()
        .rev()
        .map(|e| (e.method.as_str(), e.path.as_str(), e.status, e.count))
        .collect();
    assert_eq!(
        paths,
        [
            ("POST", "/session", 200, 1),
            ("POST", "/agents/off/stop", 403, 2),
            ("POST", "/agents/off/stop", 200, 1),
            ("POST", "/session", 400, 1),
            ("DELETE", "/session", 204, 1),
        ]
    );
    f.handle.shutdown().await;
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_policy() {
    let f = fixture().await;
    let res = TestClient::get(format!("{BASE}/")).send(&f.service).await;
    assert_eq!(res.status_code, Some(StatusCode::FOUND));
    // Relative: under a path prefix it stays under it.
    assert_eq!(res.headers().get("location").unwrap(), "ui/");
    let res = TestClient::get(format!("{BASE}/ui")).send(&f.service).await;
    assert_eq!(res.status_code, Some(StatusCode::PERMANENT_REDIRECT));
    assert_eq!(res.headers().get("location").unwrap(), "ui/");
    for path in ["/ui/", "/ui/index.html", "/ui/app.js"] {
        let mut res = TestClient::get(format!("{BASE}{path}")).send(&f.service).await;
        assert_eq!(res.status_code, Some(StatusCode::OK), "{path}");
        let h = res.headers();
        assert!(
            h.get("content-security-policy")
                .unwrap()
                .to_str()
                .unwrap()
                .contains("script-src 'self'")
        );
        assert_eq!(h.get("x-content-type-options").unwrap(), "nosniff");
        assert_eq!(h.get("referrer-policy").unwrap(), "no-referrer");
        assert!(!res.take_string().await.unwrap().is_empty());
    }
    let res = TestClient::get(format!("{BASE}/ui/nope.js"))
        .send(&f.service)
        .await;
    assert_eq!(res.status_code, Some(StatusCode::NOT_FOUND));
    let res = TestClient::get(format!("{BASE}/ui/../agents"))
        .send(&f.service)
        .await;
    assert_ne!(res.status_code, Some(StatusCode::OK));
    f.handle.shutdown().await;
}
