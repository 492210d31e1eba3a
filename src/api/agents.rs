//! The REST routes under `/agents`.

use super::AppState;
use super::error::ApiError;
use crate::config::{AgentConfig, StatsConfig};
use crate::supervisor::{Filter, Listed, Outcome};
use crate::wire::{AgentConfigView, AgentDetail, AgentSummary, HistoryEntry, LogLine, Op, Status};
use salvo::http::StatusCode;
use salvo::oapi::extract::{PathParam, QueryParam};
use salvo::oapi::{Components, EndpointOutRegister, Operation, ToSchema};
use salvo::prelude::*;
use std::sync::Arc;
use std::time::Duration;

/// Most lines `?n=` may ask for.
pub const MAX_LINES: u64 = 10_000;
/// Lines in the detail view.
const DETAIL_LINES: usize = 200;

pub(super) fn state_ref(depot: &Depot) -> Result<&Arc<AppState>, ApiError> {
    depot
        .get_typed::<Arc<AppState>>()
        .map_err(|_| ApiError::internal("state missing"))
}

pub(super) fn state(depot: &Depot) -> Result<Arc<AppState>, ApiError> {
    depot
        .get_typed::<Arc<AppState>>()
        .cloned()
        .map_err(|_| ApiError::internal("state missing"))
}

/// A path id that cannot name an agent is simply not found.
pub(super) fn agent_id(id: PathParam<String>) -> Result<String, ApiError> {
    let id = id.into_inner();
    if crate::wire::is_agent_id(&id) {
        Ok(id)
    } else {
        Err(ApiError::not_found(format!("no agent named {id:?}")))
    }
}

/// `?n=` as a bounded line count.
pub(super) fn line_count(n: Option<String>, default: u64) -> Result<usize, ApiError> {
    // Given empty (`n=`): not given, as the schema allows.
    match n.filter(|s| !s.is_empty()) {
        None => Ok(default as usize),
        Some(s) => match s.parse::<u64>() {
            Ok(n) if n <= MAX_LINES => Ok(n as usize),
            _ => Err(ApiError::bad_request(format!(
                "invalid n={s:?}: expected a whole number from 0 to {MAX_LINES}"
            ))),
        },
    }
}

/// The summaries with their message counts (from each agent's stats
/// query, cached).
pub(super) async fn with_stats(
    state: &AppState,
    listed: impl IntoIterator<Item = (AgentSummary, Option<StatsConfig>)>,
) -> Vec<AgentSummary> {
    let listed: Vec<_> = listed.into_iter().collect();
    let wanted = listed
        .iter()
        .filter_map(|(summary, stats)| stats.clone().map(|s| (summary.id.clone(), s)))
        .collect();
    let counts = state.stats.counts(wanted).await;
    listed
        .into_iter()
        .map(|(mut s, _)| {
            s.msg_count_24h = counts.get(&s.id).copied().flatten();
            s
        })
        .collect()
}

/// List every agent, or those with `status` whose id contains `q`.
///
/// A long list is written a piece at a time as the connection takes it
/// (the client reads the first agents while the last are written).
#[endpoint(tags("agents"), responses((status_code = 200, description = "The agents, in id order", body = Vec<AgentSummary>)))]
pub async fn list(
    status: QueryParam<String, false>,
    q: QueryParam<String, false>,
    depot: &mut Depot,
    res: &mut Response,
) -> Result<(), ApiError> {
    let state = state(depot)?;
    let status =
        match status.into_inner().filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse::<Status>().map_err(|e| {
                ApiError::bad_request(format!("invalid status={s:?}: expected {}", e.expected))
            })?),
        };
    let q = q.into_inner().filter(|q| !q.is_empty());
    // Filtered by the supervisor, before the stats queries: only what is
    // asked for (a status is looked up in its index, not in every agent).
    let mut listed = state.handle.list(Filter { status, q }).await?;
    fill_counts(&state, &mut listed).await;
    if listed.len() <= STREAMED_FROM {
        json_body(res, super::json::summaries(listed.iter().map(|l| &l.summary)));
    } else {
        res.headers_mut().insert(
            salvo::http::header::CONTENT_TYPE,
            salvo::http::HeaderValue::from_static("application/json; charset=utf-8"),
        );
        res.stream(json_chunks(listed));
    }
    Ok(())
}

/// Lists longer than this are streamed.
const STREAMED_FROM: usize = 256;
/// A streamed list is written this many bytes at a time (about).
const LIST_CHUNK: usize = 64 * 1024;

/// The JSON array of these agents' summaries, a piece at a time.
fn json_chunks(
    listed: Vec<Listed>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::convert::Infallible>> + Send + 'static {
    struct S {
        rest: std::vec::IntoIter<Listed>,
        started: bool,
        /// An agent is in the array already: the next comes after a comma.
        any: bool,
        done: bool,
    }
    let s = S {
        rest: listed.into_iter(),
        started: false,
        any: false,
        done: false,
    };
    futures_util::stream::unfold(s, |mut s| async move {
        if s.done {
            return None;
        }
        let mut out = Vec::with_capacity(LIST_CHUNK + 2 * super::json::SUMMARY_SIZE);
        if !std::mem::replace(&mut s.started, true) {
            out.push(b'[');
        }
        while out.len() < LIST_CHUNK {
            let Some(l) = s.rest.next() else {
                out.push(b']');
                s.done = true;
                break;
            };
            if std::mem::replace(&mut s.any, true) {
                out.push(b',');
            }
            super::json::summary(&mut out, &l.summary);
        }
        Some((Ok(out), s))
    })
}

/// A JSON body already written, as salvo's `Json` sends one.
pub(super) fn json_body(res: &mut Response, body: Vec<u8>) {
    res.headers_mut().insert(
        salvo::http::header::CONTENT_TYPE,
        salvo::http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    res.body(body);
}

/// Puts each agent's message count (from its stats query, cached) in its
/// summary.
pub(super) async fn fill_counts(state: &AppState, listed: &mut [Listed]) {
    let wanted: Vec<_> = listed
        .iter()
        .filter_map(|l| l.stats.clone().map(|s| (l.summary.id.clone(), s)))
        .collect();
    if wanted.is_empty() {
        return;
    }
    let counts = state.stats.counts(wanted).await;
    for l in listed {
        l.summary.msg_count_24h = counts.get(&l.summary.id).copied().flatten();
    }
}

fn config_view(c: &AgentConfig) -> AgentConfigView {
    AgentConfigView {
        command: c.command.clone(),
        cwd: Some(c.cwd.display().to_string()),
        env: c
            .env
            .keys()
            .map(|k| (k.clone(), "<redacted>".to_string()))
            .collect(),
        env_file: c.env_file.as_ref().map(|p| p.display().to_string()),
        user: c.user.clone(),
        autostart: c.autostart,
        restart: c.policy.restart.as_str().to_string(),
        stop_signal: c.policy.stop_signal.as_str().to_string(),
        stop_timeout_ms: c.policy.stop_timeout.as_millis() as u64,
        start_window_ms: c.policy.start_window.as_millis() as u64,
        backoff_initial_ms: c.policy.backoff_initial.as_millis() as u64,
        backoff_max_ms: c.policy.backoff_max.as_millis() as u64,
        max_restarts: c.policy.max_restarts,
        log_max_size: c.log.max_size,
        log_keep: c.log.keep,
        log_timestamps: c.log.timestamps,
        has_stats: c.stats.is_some(),
        has_messages: c.stats.as_ref().is_some_and(|s| s.messages.is_some()),
        health: c.probe.as_ref().zip(c.policy.health).map(|(p, h)| {
            format!(
                "{}; interval {}, timeout {}, start_period {}, failures {}, on_failure {}",
                p.describe(),
                humantime::format_duration(h.interval),
                humantime::format_duration(h.timeout),
                humantime::format_duration(h.start_period),
                h.failures,
                match h.on_failure {
                    crate::config::OnFailure::Restart => "restart",
                    crate::config::OnFailure::Report => "report",
                }
            )
        }),
        depends_on: c
            .depends_on
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().to_string()))
            .collect(),
    }
}

/// One agent: summary, config (env values redacted) and its last 200 log lines.
#[endpoint(tags("agents"), responses((status_code = 200, description = "The agent", body = AgentDetail)))]
pub async fn show(id: PathParam<String>, depot: &mut Depot) -> Result<Json<AgentDetail>, ApiError> {
    let state = state(depot)?;
    let id = agent_id(id)?;
    let view = state.handle.get(&id).await?;
    let hub = view.hub.clone();
    let tail = tokio::task::spawn_blocking(move || hub.tail(DETAIL_LINES))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::internal(format!("cannot read the log: {e}")))?;
    let summary = with_stats(&state, [(view.summary, view.config.stats.clone())])
        .await
        .remove(0);
    Ok(Json(AgentDetail {
        summary,
        config: config_view(&view.config),
        logs: tail,
    }))
}

/// The longest a control request is answered after: then with 202 and the
/// agent as it is (clients follow `/sse/status`), well within a client's
/// own timeout.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// A control request's answer: 200 once the agent got there, 202 with the
/// summary as it is when it is still on its way.
pub struct Controlled(Outcome);

#[async_trait]
impl Writer for Controlled {
    async fn write(self, _req: &mut Request, _depot: &mut Depot, res: &mut Response) {
        let (status, summary) = match self.0 {
            Outcome::Done(s) => (StatusCode::OK, s),
            Outcome::Pending(s) => (StatusCode::ACCEPTED, s),
        };
        res.status_code(status);
        res.render(Json(summary));
    }
}

impl EndpointOutRegister for Controlled {
    fn register(components: &mut Components, operation: &mut Operation) {
        for (code, what) in [
            (
                "200",
                "The agent got where it was asked to (a start that failed says so in `status` and `reason`)",
            ),
            (
                "202",
                "Still on its way after 60 s: the agent as it is now; follow /sse/status",
            ),
        ] {
            operation.responses.insert(
                code,
                salvo::oapi::Response::new(what)
                    .add_content("application/json", AgentSummary::to_schema(components)),
            );
        }
    }
}

async fn control(depot: &Depot, id: PathParam<String>, op: Op) -> Result<Controlled, ApiError> {
    let state = state(depot)?;
    let id = agent_id(id)?;
    let outcome = state.handle.control(&id, op, ANSWER_WITHIN).await?;
    // The same summary as GET gives, message count included.
    let stats = state
        .handle
        .get(&id)
        .await
        .ok()
        .and_then(|v| v.config.stats.clone());
    let enrich = |s: AgentSummary| async { with_stats(&state, [(s, stats.clone())]).await.remove(0) };
    Ok(Controlled(match outcome {
        Outcome::Done(s) => Outcome::Done(enrich(s).await),
        Outcome::Pending(s) => Outcome::Pending(enrich(s).await),
    }))
}

/// Start an agent; answers once it is running or has failed.
///
/// Starting a running agent is not an error: it answers with its summary.
/// A stop that overtakes it makes it 409 `conflict`.
#[endpoint(tags("agents"))]
pub async fn start(id: PathParam<String>, depot: &mut Depot) -> Result<Controlled, ApiError> {
    control(depot, id, Op::Start).await
}

/// Stop an agent; answers once no process of it is left.
///
/// A start that overtakes it makes it 409 `conflict`.
#[endpoint(tags("agents"))]
pub async fn stop(id: PathParam<String>, depot: &mut Depot) -> Result<Controlled, ApiError> {
    control(depot, id, Op::Stop).await
}

/// Stop then start an agent; answers once it is up again (or failed).
#[endpoint(tags("agents"))]
pub async fn restart(id: PathParam<String>, depot: &mut Depot) -> Result<Controlled, ApiError> {
    control(depot, id, Op::Restart).await
}

/// The last `n` log lines (default 200, at most 10,000), oldest first.
///
/// The array is written as the client takes it, read from the log files a
/// piece at a time (the follower's buffer): a request holds the same little
/// memory whether its lines are short or 64 KiB each, and whether or not
/// its client reads (a whole 8 MiB tail per request once cost that much
/// for as long as a slow client took it).
#[endpoint(tags("logs"), responses((status_code = 200, description = "Log lines with their resume cursors", body = Vec<LogLine>)))]
pub async fn logs(
    id: PathParam<String>,
    n: QueryParam<String, false>,
    depot: &mut Depot,
    res: &mut Response,
) -> Result<(), ApiError> {
    let state = state(depot)?;
    let id = agent_id(id)?;
    let n = line_count(n.into_inner(), DETAIL_LINES as u64)?;
    let hub = state.handle.get(&id).await?.hub;
    // Up to the end as it is now: a flooding agent must not keep it going.
    let until = hub.end();
    let h = hub.clone();
    let from = if n == 0 {
        until
    } else {
        tokio::task::spawn_blocking(move || h.tail_start(n))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(|e| ApiError::internal(format!("cannot read the log: {e}")))?
    };
    let body = json_lines(crate::logs::Follower::new(hub, from), from, until);
    res.add_header("content-type", "application/json", true)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    res.stream(body);
    Ok(())
}

/// The JSON array of the lines `follower` reads from `at` up to `until`,
/// a line at a time. A hole (rotated away meanwhile) is skipped; a log
/// that cannot be read any more ends the array early.
fn json_lines(
    follower: crate::logs::Follower,
    at: u64,
    until: u64,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::convert::Infallible>> + Send + 'static {
    struct S {
        follower: crate::logs::Follower,
        at: u64,
        until: u64,
        opened: bool,
        /// A line is in the array already: the next one comes after a comma.
        any: bool,
        closed: bool,
    }
    let s = S {
        follower,
        at,
        until,
        opened: false,
        any: false,
        closed: false,
    };
    futures_util::stream::unfold(s, |mut s| async move {
        if s.closed {
            return None;
        }
        let mut out = Vec::new();
        if !s.opened {
            s.opened = true;
            out.push(b'[');
        }
        while s.at < s.until {
            match s.follower.next().await {
                Some(crate::logs::Item::Line { cursor, text }) => {
                    s.at = cursor;
                    if std::mem::replace(&mut s.any, true) {
                        out.push(b',');
                    }
                    // A struct of a number and a string: it always serializes.
                    let _ = serde_json::to_writer(&mut out, &LogLine { cursor, text });
                    return Some((Ok(out), s));
                }
                Some(crate::logs::Item::Gap { to, .. }) => s.at = to,
                None => break,
            }
        }
        out.push(b']');
        s.closed = true;
        Some((Ok(out), s))
    })
}

/// Most entries one page of history or audit holds.
pub const MAX_PAGE: u32 = 1000;

/// `?limit=` (default 100, at most [`MAX_PAGE`]) and `?before=` (an
/// entry's id) of a page of newest-first entries.
pub(super) fn page(limit: Option<String>, before: Option<String>) -> Result<(u32, Option<i64>), ApiError> {
    let limit = match limit.filter(|s| !s.is_empty()) {
        None => 100,
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid limit={s:?}: expected a whole number from 1 to {MAX_PAGE}"
                )));
            }
        },
    };
    let before =
        match before.filter(|s| !s.is_empty()) {
            None => None,
            Some(s) => Some(s.parse::<i64>().map_err(|_| {
                ApiError::bad_request(format!("invalid before={s:?}: expected an entry's id"))
            })?),
        };
    Ok((limit, before))
}

/// The agent's status changes, newest first (`limit` default 100, at most
/// 1,000; `before` an entry's `id` to page on). Kept per agent up to
/// `[server] history_keep`.
#[endpoint(tags("agents"), responses((status_code = 200, description = "Status changes, newest first", body = Vec<HistoryEntry>)))]
pub async fn history(
    id: PathParam<String>,
    limit: QueryParam<String, false>,
    before: QueryParam<String, false>,
    depot: &mut Depot,
) -> Result<Json<Vec<HistoryEntry>>, ApiError> {
    let state = state(depot)?;
    let id = agent_id(id)?;
    let (limit, before) = page(limit.into_inner(), before.into_inner())?;
    state.handle.get(&id).await?;
    let store = state.store.clone();
    let rows = tokio::task::spawn_blocking(move || store.read_history(&id, limit, before))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::unavailable(format!("cannot read the history: {}", e.chain())))?;
    Ok(Json(rows.into_iter().map(history_entry).collect()))
}

/// A history row as the API shows it.
fn history_entry(s: crate::store::StoredHistory) -> HistoryEntry {
    let r = s.row;
    HistoryEntry {
        id: s.id,
        at: r.at,
        old_status: r.old_status,
        new_status: r.new_status,
        pid: r.pid,
        exit: (r.exit_code.is_some() || r.exit_signal.is_some()).then_some(crate::wire::ExitInfo {
            code: r.exit_code,
            signal: r.exit_signal,
        }),
        reason: r.reason,
        health: r.health,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Desired;
    use futures_util::StreamExt;

    fn listed(i: usize) -> Listed {
        Listed {
            summary: AgentSummary {
                id: format!("agent-{i:05}"),
                status: Status::Running,
                desired: Desired::Running,
                pid: Some(1000 + i as u32),
                started_at: None,
                uptime_s: Some(i as u64),
                restarts: 0,
                last_exit: None,
                msg_count_24h: Some(i as i64),
                command: vec!["sh".into(), "-c".into(), format!("echo \"{i}\"\nsleep 1")],
                reason: None,
                dropped_log_lines: 0,
                resources: None,
                health: None,
                health_detail: None,
            },
            stats: None,
            cpu_seconds: 0.0,
            log_lines: 0,
        }
    }

    /// A streamed list comes in pieces of about `LIST_CHUNK` that make the
    /// same array serde writes, for no agent, one, and many.
    #[tokio::test]
    async fn a_streamed_list_is_the_whole_array_in_pieces() {
        for n in [0usize, 1, 3000] {
            let all: Vec<Listed> = (0..n).map(listed).collect();
            let want = serde_json::to_vec(&all.iter().map(|l| &l.summary).collect::<Vec<_>>()).unwrap();
            let pieces: Vec<Vec<u8>> = json_chunks(all)
                .map(|c| match c {
                    Ok(c) => c,
                    Err(e) => match e {},
                })
                .collect()
                .await;
            assert!(
                pieces.iter().all(|p| p.len() < LIST_CHUNK + 2048),
                "a piece too big"
            );
            if n == 3000 {
                assert!(pieces.len() > 5, "{} pieces", pieces.len());
            }
            assert_eq!(pieces.concat(), want, "{n} agents");
        }
    }
}
