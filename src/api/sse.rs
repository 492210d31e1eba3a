//! Server-Sent Events: status changes, and log lines with resume cursors.

use super::AppState;
use super::agents::{agent_id, line_count, pair, state, with_stats};
use super::auth::{Caller, caller};
use super::error::ApiError;
use crate::logs::{Follower, Item};
use crate::supervisor::Event;
use crate::wire::{AgentLine, AgentSummary, StatusEvent};
use futures_util::stream;
use salvo::http::HeaderValue;
use salvo::oapi::extract::{PathParam, QueryParam};
use salvo::prelude::*;
use salvo::sse::{SseEvent, SseKeepAlive};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, broadcast, watch};

/// Keep-alive comments at least this often, so proxies keep streams open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn sse_headers(res: &mut Response) {
    // nginx buffers proxied responses unless told not to.
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// One of the open event streams: counted against the limit while it
/// lasts, and its memory given back when it ends.
struct Slot {
    _permit: OwnedSemaphorePermit,
    trim: crate::memory::Trimmer,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.trim.freed();
    }
}

fn permit(state: &AppState) -> Result<Slot, ApiError> {
    let permit = state
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::unavailable("too many open event streams; try again later"))?;
    Ok(Slot {
        _permit: permit,
        trim: state.trim.clone(),
    })
}

fn json_event(name: &str, value: &impl serde::Serialize) -> SseEvent {
    SseEvent::default()
        .name(name)
        .json(value)
        .unwrap_or_else(|e| SseEvent::default().name("error").text(e.to_string()))
}

/// Every agent, live: a `snapshot` event with every summary on connect, then
/// a `status` event (StatusEvent) for each status change as it happens, a
/// `summary` event (AgentSummary) whenever anything in an agent's summary
/// but its uptime changes, and a `resources` event (ResourcesEvent) after
/// each resource sample. Nothing needs polling.
#[endpoint(tags("events"), responses((status_code = 200, description = "text/event-stream of `snapshot` (AgentSummary[]), `status` (StatusEvent), `summary` (AgentSummary) and `resources` (ResourcesEvent) events", content_type = "text/event-stream", body = StatusEvent)))]
pub async fn status(depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let state = state(depot)?;
    let permit = permit(&state)?;
    let (snapshot, rx) = state.handle.watch().await?;
    let snapshot = with_stats(&state, snapshot.into_iter().map(pair)).await;
    let first = json_event("snapshot", &snapshot);
    struct S {
        rx: broadcast::Receiver<Event>,
        first: Option<SseEvent>,
        state: Arc<AppState>,
        end: End,
        _slot: Slot,
    }
    let s = S {
        rx,
        first: Some(first),
        end: End::new(&state, depot)?,
        state,
        _slot: permit,
    };
    let events = stream::unfold(s, |mut s| async move {
        if let Some(e) = s.first.take() {
            return Some((Ok::<_, Infallible>(e), s));
        }
        tokio::select! {
            ev = s.rx.recv() => match ev {
                Ok(Event::Status(ev)) => Some((Ok(json_event("status", &ev)), s)),
                Ok(Event::Summary(l)) => {
                    let summary = with_stats(&s.state, [pair(*l)]).await.remove(0);
                    Some((Ok(json_event("summary", &summary)), s))
                }
                Ok(Event::Resources(r)) => Some((Ok(json_event("resources", &*r)), s)),
                // Fell behind: start over from a fresh snapshot.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let listed = s.state.handle.list().await.ok()?;
                    let snap: Vec<AgentSummary> = with_stats(&s.state, listed.into_iter().map(pair)).await;
                    Some((Ok(json_event("snapshot", &snap)), s))
                }
                Err(broadcast::error::RecvError::Closed) => None,
            },
            _ = s.end.wait() => None,
        }
    });
    sse_headers(res);
    SseKeepAlive::new(events).max_interval(KEEP_ALIVE).stream(res);
    Ok(())
}

/// An agent's log: the last `n` lines (default 0, at most 10,000), then every
/// new line as it is written.
///
/// Each `line` event's `id` is a cursor: reconnect with `Last-Event-ID` set
/// to it to get exactly the lines after it, across log rotations. Lines that
/// were rotated away before they could be sent come as one `gap` event
/// (`{"from": cursor, "to": cursor}`). A cursor inside a line resumes at the
/// next whole line; one beyond the end of the log is refused (400).
#[endpoint(tags("events", "logs"), parameters(("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor")), responses((status_code = 200, description = "text/event-stream of `line` and `gap` events", content_type = "text/event-stream", body = String)))]
pub async fn logs(
    id: PathParam<String>,
    n: QueryParam<String, false>,
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
) -> Result<(), ApiError> {
    let state = state(depot)?;
    let id = agent_id(id)?;
    let n = line_count(n.into_inner(), 0)?;
    let resume = match req.headers().get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request("invalid Last-Event-ID: expected a cursor from an earlier event")
                })?,
        ),
    };
    let hub = state.handle.get(&id).await?.hub;
    let permit = permit(&state)?;
    let (cursor, tail) = start_at(&hub, resume, n, "Last-Event-ID").await?;
    let first: Vec<SseEvent> = tail.into_iter().map(|l| line_event(l.cursor, &l.text)).collect();
    struct S {
        first: std::vec::IntoIter<SseEvent>,
        follower: Follower,
        end: End,
        _slot: Slot,
    }
    let s = S {
        first: first.into_iter(),
        follower: Follower::new(hub, cursor),
        end: End::new(&state, depot)?,
        _slot: permit,
    };
    let events = stream::unfold(s, |mut s| async move {
        if let Some(e) = s.first.next() {
            return Some((Ok::<_, Infallible>(e), s));
        }
        let item = tokio::select! {
            item = s.follower.next() => item?,
            _ = s.end.wait() => return None,
        };
        let event = match item {
            Item::Line { cursor, text } => line_event(cursor, &text),
            Item::Gap { from, to } => gap_event(from, to),
        };
        Some((Ok(event), s))
    });
    sse_headers(res);
    SseKeepAlive::new(events).max_interval(KEEP_ALIVE).stream(res);
    Ok(())
}

/// Where a follower of `hub` starts: just after `resume` (moved to a whole
/// line; beyond the end is a 400 naming `what`), else after the last `n`
/// lines, which come back to be sent first.
async fn start_at(
    hub: &Arc<crate::logs::LogHub>,
    resume: Option<u64>,
    n: usize,
    what: &str,
) -> Result<(u64, Vec<crate::wire::LogLine>), ApiError> {
    match resume {
        Some(c) => {
            let h = hub.clone();
            let cursor = blocking(move || h.align(c)).await?.map_err(|end| {
                ApiError::bad_request(format!(
                    "invalid {what}: cursor {c} is beyond the end of the log ({end})"
                ))
            })?;
            Ok((cursor, Vec::new()))
        }
        None if n == 0 => Ok((hub.end(), Vec::new())),
        None => {
            let h = hub.clone();
            let tail = blocking(move || h.tail(n))
                .await?
                .map_err(|e| ApiError::internal(format!("cannot read the log: {e}")))?;
            Ok((tail.last().map_or(hub.end(), |l| l.cursor), tail))
        }
    }
}

/// Runs a log read on the blocking pool; a failed read is a 500 with why.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<Result<T, E>, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// What ends an event stream: the daemon shutting down, or the key it was
/// opened with being revoked.
struct End {
    shutdown: watch::Receiver<bool>,
    keys: watch::Receiver<Arc<crate::secret::KeyRing>>,
    caller: Caller,
    state: Arc<AppState>,
}

impl End {
    fn new(state: &Arc<AppState>, depot: &Depot) -> Result<End, ApiError> {
        Ok(End {
            shutdown: state.shutdown.clone(),
            keys: state.keys.clone(),
            caller: caller(depot)?.clone(),
            state: state.clone(),
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.shutdown.wait_for(|down| *down) => {}
            _ = self.caller.revoked(&mut self.keys, &self.state) => {}
        }
    }
}

/// Lines from `from` to `to` cannot be sent; the stream goes on at `to`.
fn gap_event(from: u64, to: u64) -> SseEvent {
    json_event("gap", &serde_json::json!({"from": from, "to": to})).id(to.to_string())
}

fn line_event(cursor: u64, text: &str) -> SseEvent {
    SseEvent::default().name("line").id(cursor.to_string()).text(text)
}

/// Where a stream of several agents starts each agent.
#[derive(Debug, Default, PartialEq, Eq)]
struct Starts {
    /// Agents named (empty: every agent, also those added later).
    agents: Vec<String>,
    /// Resume cursors per agent (`after`, and a `Last-Event-ID` for its own
    /// agent).
    after: std::collections::HashMap<String, u64>,
}

/// `agent:cursor`.
fn agent_cursor(s: &str) -> Option<(String, u64)> {
    let (agent, cursor) = s.trim().rsplit_once(':')?;
    (crate::wire::is_agent_id(agent)).then_some(())?;
    Some((agent.to_string(), cursor.parse().ok()?))
}

fn starts(req: &Request) -> Result<Starts, ApiError> {
    let mut st = Starts::default();
    for a in req.queries().get_vec("agent").into_iter().flatten() {
        if !crate::wire::is_agent_id(a) {
            return Err(ApiError::not_found(format!("no agent named {a:?}")));
        }
        if !st.agents.contains(a) {
            st.agents.push(a.clone());
        }
    }
    for list in req.queries().get_vec("after").into_iter().flatten() {
        for part in list.split(',').filter(|p| !p.trim().is_empty()) {
            let (agent, cursor) = agent_cursor(part).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid after={part:?}: expected AGENT:CURSOR[,AGENT:CURSOR...]"
                ))
            })?;
            st.after.insert(agent, cursor);
        }
    }
    if let Some(v) = req.headers().get("last-event-id") {
        let (agent, cursor) = v.to_str().ok().and_then(agent_cursor).ok_or_else(|| {
            ApiError::bad_request("invalid Last-Event-ID: expected AGENT:CURSOR from an earlier event")
        })?;
        st.after.insert(agent, cursor);
    }
    Ok(st)
}

/// Several agents' logs in one stream (`agent=A&agent=B`; none: every
/// agent, also those added later): for each agent the last `n` lines
/// (default 0), or the lines after its cursor in `after=A:123,B:456`, then
/// every new line live. Each `line` event's data is `{"agent","line"}` and
/// its `id` is `AGENT:CURSOR`; a `Last-Event-ID` resumes its own agent.
/// Lines rotated away come as a `gap` event `{"agent","from","to"}`.
#[endpoint(tags("events", "logs"), parameters(("agent" = Option<Vec<String>>, Query, description = "An agent to follow; repeat for more; none: all"), ("after" = Option<String>, Query, description = "AGENT:CURSOR,... to resume each agent after"), ("n" = Option<u64>, Query, description = "Recent lines per agent without a cursor (at most 10,000)"), ("Last-Event-ID" = Option<String>, Header, description = "AGENT:CURSOR: resume that agent")), responses((status_code = 200, description = "text/event-stream of `line` (AgentLine) and `gap` events", content_type = "text/event-stream", body = AgentLine)))]
pub async fn multi_logs(
    n: QueryParam<String, false>,
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
) -> Result<(), ApiError> {
    let state = state(depot)?;
    let n = line_count(n.into_inner(), 0)?;
    let st = starts(req)?;
    let all = st.agents.is_empty();
    // Every agent's hub; for all agents, also news of agents added later.
    let (listed, events) = state.handle.watch().await?;
    let mut ids: Vec<String> = if all {
        listed.iter().map(|l| l.summary.id.clone()).collect()
    } else {
        st.agents.clone()
    };
    ids.sort();
    let mut first = Vec::new();
    let mut followers: futures_util::stream::SelectAll<AgentStream> = futures_util::stream::SelectAll::new();
    for id in &ids {
        let hub = state.handle.get(id).await?.hub;
        let resume = st.after.get(id).copied();
        let (cursor, tail) = start_at(&hub, resume, n, &format!("after for {id}")).await?;
        first.extend(tail.into_iter().map(|l| agent_line_event(id, l.cursor, &l.text)));
        followers.push(Box::pin(Follower::new(hub, cursor).into_stream()));
    }
    let permit = permit(&state)?;
    struct S {
        first: std::vec::IntoIter<SseEvent>,
        followers: futures_util::stream::SelectAll<AgentStream>,
        known: std::collections::HashSet<String>,
        events: Option<broadcast::Receiver<Event>>,
        state: Arc<AppState>,
        end: End,
        _slot: Slot,
    }
    let s = S {
        first: first.into_iter(),
        followers,
        known: ids.into_iter().collect(),
        events: all.then_some(events),
        state: state.clone(),
        end: End::new(&state, depot)?,
        _slot: permit,
    };
    let stream = stream::unfold(s, |mut s| async move {
        if let Some(e) = s.first.next() {
            return Some((Ok::<_, Infallible>(e), s));
        }
        loop {
            let news = async {
                match s.events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                item = futures_util::StreamExt::next(&mut s.followers), if !s.followers.is_empty() => {
                    let (agent, item) = item?;
                    let ev = match item {
                        Item::Line { cursor, text } => agent_line_event(&agent, cursor, &text),
                        Item::Gap { from, to } => json_event("gap", &serde_json::json!({"agent": agent, "from": from, "to": to}))
                            .id(format!("{agent}:{to}")),
                    };
                    return Some((Ok(ev), s));
                }
                ev = news => match ev {
                    // An agent this stream has not seen: added to the config
                    // since. It is followed from where its log is now (it has
                    // only just started).
                    Ok(Event::Status(e)) if !s.known.contains(&e.agent_id) => {
                        if let Ok(view) = s.state.handle.get(&e.agent_id).await {
                            let end = view.hub.end();
                            s.known.insert(e.agent_id.clone());
                            s.followers.push(Box::pin(Follower::new(view.hub, end).into_stream()));
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = s.end.wait() => return None,
            }
        }
    });
    sse_headers(res);
    SseKeepAlive::new(stream).max_interval(KEEP_ALIVE).stream(res);
    Ok(())
}

/// One agent's follower in a stream of several.
type AgentStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = (String, Item)> + Send>>;

fn agent_line_event(agent: &str, cursor: u64, text: &str) -> SseEvent {
    json_event(
        "line",
        &AgentLine {
            agent: agent.to_string(),
            line: text.to_string(),
        },
    )
    .id(format!("{agent}:{cursor}"))
}

#[cfg(test)]
mod tests {
    use super::agent_cursor;

    #[test]
    fn agent_cursors() {
        assert_eq!(agent_cursor("bot-1:123"), Some(("bot-1".into(), 123)));
        assert_eq!(agent_cursor(" a:0 "), Some(("a".into(), 0)));
        assert_eq!(agent_cursor("a"), None);
        assert_eq!(agent_cursor("A:1"), None);
        assert_eq!(agent_cursor("a:-1"), None);
        assert_eq!(agent_cursor("a:b:1"), None);
    }
}
