//! Server-Sent Events: status changes, and log lines with resume cursors.

use super::AppState;
use super::agents::{agent_id, line_count, pair, state, with_stats};
use super::error::ApiError;
use crate::logs::{Follower, Item};
use crate::supervisor::Event;
use crate::wire::{AgentSummary, StatusEvent};
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
        shutdown: watch::Receiver<bool>,
        _slot: Slot,
    }
    let s = S {
        rx,
        first: Some(first),
        shutdown: state.shutdown.clone(),
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
            _ = until_shutdown(&mut s.shutdown) => None,
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
    let mut first = Vec::new();
    let cursor = match resume {
        Some(c) => {
            let h = hub.clone();
            blocking(move || h.align(c)).await?.map_err(|end| {
                ApiError::bad_request(format!(
                    "invalid Last-Event-ID: cursor {c} is beyond the end of the log ({end})"
                ))
            })?
        }
        None if n == 0 => hub.end(),
        None => {
            let h = hub.clone();
            let tail = blocking(move || h.tail(n))
                .await?
                .map_err(|e| ApiError::internal(format!("cannot read the log: {e}")))?;
            let cursor = tail.last().map_or(hub.end(), |l| l.cursor);
            first.extend(tail.into_iter().map(|l| line_event(l.cursor, &l.text)));
            cursor
        }
    };
    struct S {
        first: std::vec::IntoIter<SseEvent>,
        follower: Follower,
        shutdown: watch::Receiver<bool>,
        _slot: Slot,
    }
    let s = S {
        first: first.into_iter(),
        follower: Follower::new(hub, cursor),
        shutdown: state.shutdown.clone(),
        _slot: permit,
    };
    let events = stream::unfold(s, |mut s| async move {
        if let Some(e) = s.first.next() {
            return Some((Ok::<_, Infallible>(e), s));
        }
        let item = tokio::select! {
            item = s.follower.next() => item?,
            _ = until_shutdown(&mut s.shutdown) => return None,
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

/// Runs a log read on the blocking pool; a failed read is a 500 with why.
async fn blocking<T: Send + 'static, E: std::fmt::Display + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<Result<T, E>, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(e.to_string()))
}

async fn until_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|down| *down).await;
}

/// Lines from `from` to `to` cannot be sent; the stream goes on at `to`.
fn gap_event(from: u64, to: u64) -> SseEvent {
    json_event("gap", &serde_json::json!({"from": from, "to": to})).id(to.to_string())
}

fn line_event(cursor: u64, text: &str) -> SseEvent {
    SseEvent::default().name("line").id(cursor.to_string()).text(text)
}
