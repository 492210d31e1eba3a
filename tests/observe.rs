//! Observing agents through the API: resources, history, /metrics, several
//! agents' logs in one stream, and the summary and resources events.

use crate::util::*;
use agentsd::wire::{AgentLine, AgentSummary, HistoryEntry, Status};
use std::time::Duration;

/// Samples every 300 ms.
fn config(agents: &str) -> String {
    format!("{FAST}{agents}")
}

fn sampled(home: &Home, agents: &str) {
    home.write_config(&config(agents));
    let text = std::fs::read_to_string(home.config_path()).unwrap().replace(
        "log_dir = \"logs\"\n",
        "log_dir = \"logs\"\nsample_interval = \"300ms\"\n",
    );
    std::fs::write(home.config_path(), text).unwrap();
}

#[tokio::test]
async fn resources_are_summed_over_every_process_of_an_agent() {
    let home = Home::new();
    sampled(
        &home,
        "[agents.idle]\ncommand = [\"sleep\", \"100000\"]\n\
         [agents.busy]\ncommand = [\"sh\", \"-c\", \"while :; do :; done\"]\n\
         [agents.big]\ncommand = [\"sh\", \"-c\", \"x=$(head -c 60000000 /dev/zero | tr '\\\\0' a); echo ready; sleep 100000\"]\n\
         [agents.family]\ncommand = [\"sh\", \"-c\", \"setsid sleep 100000 & sleep 100001 & wait\"]\n",
    );
    let d = home.start();
    let agent = |id: &'static str| {
        let d = &d;
        move || async move {
            let a: AgentSummary = serde_json::from_value(d.get(&format!("/agents/{id}")).await).unwrap();
            Ok::<_, String>(a)
        }
    };
    let big = eventually_with(Duration::from_secs(20), "big's memory counted", || async {
        let a = agent("big")().await?;
        match a.resources {
            Some(r) if r.rss_bytes > 50 * 1024 * 1024 => Ok(a),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(big.status, Status::Running);
    // A busy loop: well above the idle agent (the suite's other tests share
    // the machine's cores with it, so not always a whole core).
    let busy = eventually_with(
        Duration::from_secs(10),
        "busy using a good part of a core",
        || async {
            let a = agent("busy")().await?;
            match a.resources {
                Some(r) if r.cpu_pct > 30.0 => Ok(r),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(busy.cpu_pct <= 110.0, "{busy:?}");
    let idle = agent("idle")().await.unwrap().resources.unwrap();
    assert!(idle.cpu_pct < 5.0, "{idle:?}");
    assert_eq!(idle.processes, 1);
    // The shell, its sleep, and the one that left the group with setsid.
    let family = eventually_with(Duration::from_secs(10), "the family counted", || async {
        let a = agent("family")().await?;
        match a.resources {
            Some(r) if r.processes == 3 => Ok(r),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(family.rss_bytes > 0);
    // Nothing runs: null.
    let a: AgentSummary = serde_json::from_value(d.post("/agents/idle/stop").await).unwrap();
    assert_eq!(a.resources, None);
}

#[tokio::test]
async fn history_after_a_crash_loop_shows_every_transition_newest_first() {
    let home = Home::new();
    home.write_config(&config(
        "[agents.crasher]\ncommand = [\"sh\", \"-c\", \"exit 3\"]\nstart_window = \"1s\"\nmax_restarts = 2\n",
    ));
    let d = home.start();
    d.wait_status("crasher", Status::Failed).await;
    let h: Vec<HistoryEntry> = serde_json::from_value(d.get("/agents/crasher/history").await).unwrap();
    let moves: Vec<(Status, Status)> = h.iter().rev().map(|e| (e.old_status, e.new_status)).collect();
    use Status::*;
    assert_eq!(
        moves,
        [
            (Stopped, Starting),
            (Starting, Backoff),
            (Backoff, Starting),
            (Starting, Backoff),
            (Backoff, Starting),
            (Starting, Failed),
        ]
    );
    assert!(h.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    for e in h.iter().filter(|e| e.old_status == Starting) {
        assert_eq!(e.exit.as_ref().unwrap().code, Some(3), "{e:?}");
    }
    assert!(h[0].reason.as_deref().unwrap().contains("gave up"), "{:?}", h[0]);
    // Paged.
    let page: Vec<HistoryEntry> = serde_json::from_value(
        d.get(&format!("/agents/crasher/history?limit=2&before={}", h[1].id))
            .await,
    )
    .unwrap();
    assert_eq!(page, h[2..4]);
    let (code, _) = d
        .request(reqwest::Method::GET, "/agents/crasher/history?limit=0")
        .await;
    assert_eq!(code, 400);
    let (code, _) = d.request(reqwest::Method::GET, "/agents/nope/history").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn metrics_move_when_agents_restart_and_requests_come() {
    let home = Home::new();
    home.write_config(&config(
        "[agents.flappy]\ncommand = [\"sh\", \"-c\", \"echo up; sleep 0.2; exit 1\"]\nrestart = \"always\"\nmax_restarts = 1000\n\
         [agents.steady]\ncommand = [\"sleep\", \"100000\"]\n",
    ));
    let d = home.start();
    d.wait_status("steady", Status::Running).await;
    let before = d.metrics().await;
    for family in [
        "agentsd_build_info{",
        "agentsd_agent_up{agent=\"steady\"} 1",
        "agentsd_agent_status{agent=\"steady\",status=\"running\"} 1",
        "agentsd_agent_status{agent=\"steady\",status=\"failed\"} 0",
        "agentsd_agent_start_time_seconds{agent=\"steady\"}",
        "agentsd_agent_cpu_seconds_total{agent=\"steady\"}",
        "agentsd_agent_log_dropped_lines_total{agent=\"steady\"} 0",
        "agentsd_event_streams ",
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_start_time_seconds ",
    ] {
        assert!(before.contains(family), "{family} missing in:\n{before}");
    }
    let restarts = |t: &str| sample(t, "agentsd_agent_restarts_total{agent=\"flappy\"}").unwrap_or(0.0);
    let lines = |t: &str| sample(t, "agentsd_agent_log_lines_total{agent=\"flappy\"}").unwrap_or(0.0);
    let listed =
        |t: &str| sample(t, "agentsd_http_requests_total{route=\"/agents\",code=\"200\"}").unwrap_or(0.0);
    let failures = |t: &str| sample(t, "agentsd_auth_failures_total").unwrap_or(0.0);
    let _ = d.get("/agents").await;
    let res = d
        .client
        .get(format!("{}/agents", d.url))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let after = eventually_with(Duration::from_secs(10), "flappy restarted twice more", || async {
        let now = d.metrics().await;
        if restarts(&now) >= restarts(&before) + 2.0 {
            Ok(now)
        } else {
            Err(format!("restarts {} then {}", restarts(&before), restarts(&now)))
        }
    })
    .await;
    assert!(lines(&after) > lines(&before), "log lines did not move");
    assert!(listed(&after) >= listed(&before) + 1.0);
    assert!(failures(&after) >= failures(&before) + 1.0);
    // A scrape without the key is refused like any other route.
    let res = d.client.get(format!("{}/metrics", d.url)).send().await.unwrap();
    assert_eq!(res.status(), 401);
}

#[tokio::test]
async fn several_agents_in_one_stream_resume_exactly_per_agent() {
    let home = Home::new();
    let counter = |id: &str| {
        format!(
            "[agents.{id}]\ncommand = [\"sh\", \"-c\", \"i=1; while :; do echo {id}-$i; i=$((i+1)); sleep 0.02; done\"]\n"
        )
    };
    home.write_config(&config(&format!(
        "{}{}{}",
        counter("a"),
        counter("b"),
        counter("c")
    )));
    let d = home.start();
    d.wait_status("a", Status::Running).await;
    d.wait_status("b", Status::Running).await;
    let mut sse = Sse::open(&d, "/sse/logs?agent=a&agent=b&n=1", None).await;
    let mut last: std::collections::HashMap<String, (u64, String)> = Default::default();
    let mut seen = std::collections::HashMap::<String, Vec<u64>>::new();
    while seen.values().map(Vec::len).sum::<usize>() < 40 {
        let ev = sse.next(Duration::from_secs(5)).await.expect("an event");
        assert_eq!(ev.name, "line", "{ev:?}");
        let line: AgentLine = serde_json::from_str(&ev.data).unwrap();
        assert_ne!(line.agent, "c", "an agent not asked for");
        let id = ev.id.clone().unwrap();
        let (agent, cursor) = id.rsplit_once(':').unwrap();
        assert_eq!(agent, line.agent);
        let n: u64 = line.line.rsplit('-').next().unwrap().parse().unwrap();
        seen.entry(line.agent.clone()).or_default().push(n);
        last.insert(line.agent.clone(), (cursor.parse().unwrap(), line.line.clone()));
    }
    drop(sse);
    // Each agent's lines came in order, none twice.
    for (agent, ns) in &seen {
        assert!(ns.windows(2).all(|w| w[1] == w[0] + 1), "{agent}: {ns:?}");
    }
    // While no stream is open, each agent writes on: the resumed stream
    // must bring those lines too.
    for (agent, ns) in &seen {
        let ahead = format!("{agent}-{}", ns.last().unwrap() + 10);
        eventually(
            Duration::from_secs(10),
            &format!("{agent} written past {ahead}"),
            || std::fs::read_to_string(home.log_path(agent)).is_ok_and(|t| t.lines().any(|l| l == ahead)),
        )
        .await;
    }
    // Resumed: each agent goes on right after its own cursor.
    let after = last
        .iter()
        .map(|(a, (c, _))| format!("{a}:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut sse = Sse::open(&d, &format!("/sse/logs?agent=a&agent=b&after={after}"), None).await;
    let mut next_expected: std::collections::HashMap<String, u64> = seen
        .iter()
        .map(|(a, ns)| (a.clone(), ns.last().unwrap() + 1))
        .collect();
    let mut checked = 0;
    while checked < 30 {
        let ev = sse.next(Duration::from_secs(5)).await.expect("an event");
        let line: AgentLine = serde_json::from_str(&ev.data).unwrap();
        let n: u64 = line.line.rsplit('-').next().unwrap().parse().unwrap();
        let want = next_expected.get_mut(&line.agent).unwrap();
        assert_eq!(n, *want, "{} resumed at {n}, expected {want}", line.agent);
        *want += 1;
        checked += 1;
    }
    // Every agent, with none named: c too.
    let mut all = Sse::open(&d, "/sse/logs", None).await;
    let mut agents = std::collections::HashSet::new();
    while agents.len() < 3 {
        let ev = all.next(Duration::from_secs(5)).await.expect("an event");
        agents.insert(serde_json::from_str::<AgentLine>(&ev.data).unwrap().agent);
    }
    let (code, _) = d.request(reqwest::Method::GET, "/sse/logs?after=a:nope").await;
    assert_eq!(code, 400);
    let (code, _) = d.request(reqwest::Method::GET, "/sse/logs?agent=nope").await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn the_all_agents_stream_takes_in_agents_added_later() {
    let home = Home::new();
    home.write_config(&config("[agents.first]\ncommand = [\"sleep\", \"100000\"]\n"));
    let d = home.start();
    d.wait_status("first", Status::Running).await;
    let mut all = Sse::open(&d, "/sse/logs", None).await;
    home.write_config(&config(
        "[agents.first]\ncommand = [\"sleep\", \"100000\"]\n\
         [agents.later]\ncommand = [\"sh\", \"-c\", \"sleep 0.3; echo hello from later; exec sleep 100000\"]\n",
    ));
    let ev = all
        .next(Duration::from_secs(10))
        .await
        .expect("a line from the new agent");
    let line: AgentLine = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(
        (line.agent.as_str(), line.line.as_str()),
        ("later", "hello from later")
    );
}

#[tokio::test]
async fn status_stream_sends_summary_and_resources_events() {
    let home = Home::new();
    sampled(&home, "[agents.svc]\ncommand = [\"sleep\", \"100000\"]\n");
    let d = home.start();
    d.wait_status("svc", Status::Running).await;
    let mut sse = Sse::open(&d, "/sse/status", None).await;
    assert_eq!(sse.next(Duration::from_secs(5)).await.unwrap().name, "snapshot");
    let resources = next_named(&mut sse, "resources").await;
    let r: agentsd::wire::ResourcesEvent = serde_json::from_str(&resources.data).unwrap();
    assert_eq!(r.agents["svc"].processes, 1);
    d.post("/agents/svc/restart").await;
    let summary = next_named(&mut sse, "summary").await;
    let s: AgentSummary = serde_json::from_str(&summary.data).unwrap();
    assert_eq!(s.id, "svc");
}

/// The next event named `name` (others skipped), within 5 s.
async fn next_named(sse: &mut Sse, name: &str) -> Event {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ev = sse
            .next(left)
            .await
            .unwrap_or_else(|| panic!("no {name} event within 5 s"));
        if ev.name == name {
            return ev;
        }
    }
}

#[tokio::test]
async fn a_changed_message_count_and_dropped_lines_are_announced_as_summaries() {
    let home = Home::new();
    let db = home.path().join("bot.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE messages(x); INSERT INTO messages VALUES (1);")
        .unwrap();
    // The log dir is a file: every line the agent prints is dropped.
    std::fs::write(home.path().join("logs"), "not a directory").unwrap();
    sampled(
        &home,
        "[agents.bot]\ncommand = [\"sleep\", \"100000\"]\nstats = { db = \"bot.db\", query = \"SELECT count(*) FROM messages\" }\n\
         [agents.talk]\ncommand = [\"sh\", \"-c\", \"sleep 1; echo lost; exec sleep 100000\"]\n",
    );
    let d = home.start();
    d.wait_status("bot", Status::Running).await;
    let mut sse = Sse::open(&d, "/sse/status", None).await;
    let first = sse.next(Duration::from_secs(5)).await.unwrap();
    let snap: Vec<AgentSummary> = serde_json::from_str(&first.data).unwrap();
    assert_eq!(snap[0].msg_count_24h, Some(1));
    conn.execute_batch("INSERT INTO messages VALUES (2), (3);")
        .unwrap();
    // Within a few samples (300 ms each; counts are cached 5 s).
    let (mut count, mut dropped) = (None, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while (count.is_none() || dropped.is_none()) && std::time::Instant::now() < deadline {
        let Some(ev) = sse.next(Duration::from_secs(1)).await else {
            continue;
        };
        if ev.name != "summary" {
            continue;
        }
        let s: AgentSummary = serde_json::from_str(&ev.data).unwrap();
        match s.id.as_str() {
            "bot" if s.msg_count_24h == Some(3) => count = Some(s),
            "talk" if s.dropped_log_lines > 0 => dropped = Some(s),
            _ => {}
        }
    }
    assert!(count.is_some(), "no summary with the new message count");
    assert_eq!(
        dropped.expect("no summary with the dropped lines").status,
        Status::Running
    );
}

/// With cgroups, a process the daemon adopted (its parent gone) that
/// cleared its environment still counts in its agent's resources: a sample
/// reads no agent's member list, and the process's own cgroup says whose it
/// is.
#[tokio::test]
#[ignore = "needs root and cgroup v2 (`cargo test -- --ignored`, as .ci/run does)"]
async fn with_cgroups_an_adopted_process_without_its_environment_counts_in_its_agents_resources() {
    let home = Home::new();
    sampled(
        &home,
        "[agents.orphan]\ncommand = [\"sh\", \"-c\", \"(env -i setsid sleep 987695 &); exec sleep 987696\"]\n\
         [agents.other]\ncommand = [\"sleep\", \"987697\"]\n",
    );
    let mut d = home.start();
    let health = d.get("/health").await;
    assert!(
        health["process_tracking"]
            .as_str()
            .is_some_and(|t| t.starts_with("cgroup ")),
        "no cgroup in use: {health}"
    );
    let a = d
        .wait_for("orphan", Duration::from_secs(10), |a| {
            a.resources.is_some_and(|r| r.processes == 2)
        })
        .await;
    assert_eq!(a.resources.unwrap().processes, 2);
    let o = d
        .wait_for("other", Duration::from_secs(10), |a| a.resources.is_some())
        .await;
    assert_eq!(
        o.resources.unwrap().processes,
        1,
        "another agent's process counted here"
    );
    assert_eq!(d.stop().code(), Some(0), "{}", d.stderr_text());
}
