//! `--context all` or `--context a,b`: `agents list` and `status` ask
//! several contexts of the client file at once and show one table, each
//! row with its host (the context's name).
//!
//! Each context is reached with its own URL, key and trust only; flags and
//! the environment that would give one key or CA to every host are
//! refused or ignored. Every host is asked at the same time, and each gets
//! at most [`PER_HOST`] to answer, so that one hung host holds nothing up.
//! A host that fails is one line on stderr; the others still print, and
//! the exit code is the first failed host's (in name order).

use super::target::{ClientFile, context_target};
use super::{Client, ClientError, Target};
use crate::wire::AgentSummary;
use std::future::Future;
use std::time::Duration;

/// `--context all`: every context of the client file.
pub const ALL: &str = "all";

/// How long one host may take to answer, connecting included (the same
/// bound as a connection's).
pub const PER_HOST: Duration = Duration::from_secs(10);

/// Whether a `--context` value names several contexts (`all`, or a list).
pub fn is_several(spec: &str) -> bool {
    spec.trim() == ALL || spec.contains(',')
}

/// The contexts `spec` names, in name order, each once. An unknown name,
/// an empty one, or a client file without contexts is a usage error, which
/// names the selection as `shown` (`--context all`, `AGENTSD_CONTEXT=a,b`).
pub fn select(file: &ClientFile, shown: &str, spec: &str) -> Result<Vec<String>, ClientError> {
    let known = || file.contexts.keys().cloned().collect::<Vec<_>>().join(", ");
    if file.contexts.is_empty() {
        return Err(ClientError::Usage(format!(
            "{shown}: the client file has no contexts (see ~/.config/agentsd/client.toml)"
        )));
    }
    if spec.trim() == ALL {
        return Ok(file.contexts.keys().cloned().collect());
    }
    let mut names = Vec::new();
    for name in spec.split(',').map(str::trim) {
        if name.is_empty() {
            return Err(ClientError::Usage(format!(
                "{shown}: an empty context name (expected all, or names separated by commas)"
            )));
        }
        if name == ALL {
            return Err(ClientError::Usage(format!(
                "{shown}: `all` stands alone, it already names every context"
            )));
        }
        if !file.contexts.contains_key(name) {
            return Err(ClientError::Usage(format!(
                "no context named {name:?} in the client file (known: {})",
                known()
            )));
        }
        names.push(name.to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// Each selected context's own target; one that cannot be used (no key,
/// an unreadable key file, an invalid URL or fingerprint) is that host's
/// failure, not the command's. Key commands run one after another, before
/// any request, as they may ask for a passphrase on the terminal.
pub fn targets(file: &ClientFile, names: &[String]) -> Vec<(String, Result<Target, ClientError>)> {
    names
        .iter()
        .map(|name| {
            let target = file
                .contexts
                .get(name)
                .ok_or_else(|| ClientError::Usage(format!("no context named {name:?} in the client file")))
                .and_then(|ctx| context_target(name, ctx));
            (name.clone(), target)
        })
        .collect()
}

/// One host's answer.
pub struct Answer<T> {
    pub host: String,
    pub result: Result<T, ClientError>,
}

/// Asks every host at once (one future each, all polled together), each
/// bounded by `limit`; the answers come back in the order of `targets`.
pub async fn ask_all<T, F, Fut>(
    targets: Vec<(String, Result<Target, ClientError>)>,
    limit: Duration,
    ask: F,
) -> Vec<Answer<T>>
where
    F: Fn(Client) -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let asks = targets.into_iter().map(|(host, target)| {
        let client = target.and_then(Client::new);
        let ask = &ask;
        async move {
            let result = match client {
                Ok(client) => {
                    let url = client.url().to_string();
                    match tokio::time::timeout(limit, ask(client)).await {
                        Ok(r) => r,
                        Err(_) => Err(ClientError::Unreachable(format!(
                            "{url} did not answer within {} s",
                            limit.as_secs_f64()
                        ))),
                    }
                }
                Err(e) => Err(e),
            };
            Answer { host, result }
        }
    });
    futures_util::future::join_all(asks).await
}

/// The code to exit with: that of the first host that failed, 0 if all
/// answered.
pub fn exit_code<T>(answers: &[Answer<T>]) -> Option<u8> {
    answers
        .iter()
        .find_map(|a| a.result.as_ref().err().map(ClientError::exit_code))
}

/// An agent of one host, as `agents list --context all --json` prints it:
/// the agent summary with `host` added.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostAgent {
    pub host: String,
    #[serde(flatten)]
    pub agent: AgentSummary,
}

/// Every agent of every host once, sorted by host, then id.
pub fn merge(lists: Vec<(String, Vec<AgentSummary>)>) -> Vec<HostAgent> {
    let mut all: Vec<HostAgent> = lists
        .into_iter()
        .flat_map(|(host, agents)| {
            agents.into_iter().map(move |agent| HostAgent {
                host: host.clone(),
                agent,
            })
        })
        .collect();
    all.sort_by(|a, b| (&a.host, &a.agent.id).cmp(&(&b.host, &b.agent.id)));
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::target::Context;

    fn file(names: &[&str]) -> ClientFile {
        let mut f = ClientFile::default();
        for (i, n) in names.iter().enumerate() {
            f.contexts.insert(
                n.to_string(),
                Context {
                    url: format!("https://h{i}:8487"),
                    api_key_command: Some(vec!["echo".into(), format!("key-of-{n}")]),
                    ..Default::default()
                },
            );
        }
        f
    }

    fn agent(id: &str) -> AgentSummary {
        serde_json::from_value(serde_json::json!({
            "id": id, "status": "running", "desired": "running", "pid": 1,
            "started_at": null, "uptime_s": null, "restarts": 0, "last_exit": null,
            "msg_count_24h": null, "command": ["x"], "reason": null,
            "dropped_log_lines": 0, "resources": null, "health": null, "health_detail": null
        }))
        .unwrap()
    }

    #[test]
    fn several_means_all_or_a_list() {
        assert!(is_several("all"));
        assert!(is_several("a,b"));
        assert!(is_several("a,"));
        assert!(!is_several("prod"));
        assert!(!is_several("allison"));
    }

    #[test]
    fn all_is_every_context_in_name_order() {
        let f = file(&["web", "db", "lab"]);
        assert_eq!(select(&f, "--context", "all").unwrap(), ["db", "lab", "web"]);
    }

    #[test]
    fn a_list_is_sorted_and_each_once() {
        let f = file(&["web", "db", "lab"]);
        assert_eq!(select(&f, "--context", "web, db,web").unwrap(), ["db", "web"]);
    }

    #[test]
    fn unknown_empty_or_mixed_names_are_usage_errors() {
        let f = file(&["web", "db"]);
        let e = select(&f, "--context", "web,nope").unwrap_err();
        assert!(matches!(e, ClientError::Usage(_)));
        assert_eq!(
            e.to_string(),
            "no context named \"nope\" in the client file (known: db, web)"
        );
        for bad in ["web,", ",web", "web,,db"] {
            let e = select(&f, "--context", bad).unwrap_err();
            assert!(e.to_string().contains("empty context name"), "{bad}: {e}");
        }
        let e = select(&f, "AGENTSD_CONTEXT=all,web", "all,web").unwrap_err();
        assert_eq!(
            e.to_string(),
            "AGENTSD_CONTEXT=all,web: `all` stands alone, it already names every context"
        );
        let e = select(&ClientFile::default(), "--context", "all").unwrap_err();
        assert!(e.to_string().contains("no contexts"), "{e}");
    }

    #[test]
    fn each_context_gets_its_own_key_and_a_keyless_one_fails_alone() {
        let mut f = file(&["a", "b"]);
        f.contexts.insert(
            "c".into(),
            Context {
                url: "https://h:1".into(),
                ..Default::default()
            },
        );
        let t = targets(&f, &select(&f, "--context", "all").unwrap());
        let keys: Vec<_> = t
            .iter()
            .map(|(n, r)| (n.as_str(), r.as_ref().map(|t| t.key.as_str()).ok()))
            .collect();
        assert_eq!(
            keys,
            [("a", Some("key-of-a")), ("b", Some("key-of-b")), ("c", None)]
        );
        let e = t[2].1.as_ref().unwrap_err();
        assert!(e.to_string().contains("context \"c\" names no key"), "{e}");
    }

    #[test]
    fn merged_agents_are_sorted_by_host_then_id() {
        let merged = merge(vec![
            ("web".into(), vec![agent("z"), agent("a")]),
            ("db".into(), vec![agent("m"), agent("b")]),
            ("empty".into(), vec![]),
        ]);
        let order: Vec<_> = merged
            .iter()
            .map(|h| (h.host.as_str(), h.agent.id.as_str()))
            .collect();
        assert_eq!(order, [("db", "b"), ("db", "m"), ("web", "a"), ("web", "z")]);
        let v = serde_json::to_value(&merged[0]).unwrap();
        assert_eq!(v["host"], "db");
        assert_eq!(v["id"], "b");
        assert_eq!(v["status"], "running");
    }

    #[test]
    fn the_exit_code_is_the_first_failed_hosts() {
        let ok = |h: &str| Answer {
            host: h.into(),
            result: Ok(()),
        };
        let bad = |h: &str, e: ClientError| Answer {
            host: h.into(),
            result: Err(e),
        };
        assert_eq!(exit_code(&[ok("a"), ok("b")]), None);
        assert_eq!(
            exit_code(&[
                ok("a"),
                bad("b", ClientError::Unreachable("x".into())),
                bad("c", ClientError::Unauthorized("y".into()))
            ]),
            Some(3)
        );
        assert_eq!(
            exit_code(&[bad("a", ClientError::Unauthorized("y".into())), ok("b")]),
            Some(4)
        );
    }

    #[tokio::test]
    async fn a_host_that_never_answers_is_cut_off() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hung = Target {
            url: format!("http://127.0.0.1:{port}"),
            key: "k".into(),
            trust: crate::client::trust::Trust::System,
        };
        let t0 = std::time::Instant::now();
        let answers = ask_all(
            vec![
                ("hung".into(), Ok(hung)),
                ("bad".into(), Err(ClientError::Usage("no key".into()))),
            ],
            Duration::from_millis(300),
            |c| async move { c.health().await },
        )
        .await;
        assert!(t0.elapsed() < Duration::from_secs(5));
        let e = answers[0].result.as_ref().unwrap_err();
        assert!(matches!(e, ClientError::Unreachable(_)));
        assert!(e.to_string().contains("did not answer within 0.3 s"), "{e}");
        assert_eq!(answers[1].host, "bad");
        assert!(matches!(answers[1].result, Err(ClientError::Usage(_))));
        drop(listener);
    }
}
