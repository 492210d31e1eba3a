//! Server-Sent Events: status changes, and log lines with resume cursors.

use super::AppState;
use super::agents::{agent_id, line_count, state};
use super::error::ApiError;
use crate::logs::{LogChunk, LogHub, Read, lines};
use crate::wire::{AgentSummary, StatusEvent};
use futures_util::stream;
use salvo::http::HeaderValue;
use salvo::oapi::extract::{PathParam, QueryParam};
use salvo::prelude::*;
use salvo::sse::{SseEvent, SseKeepAlive};
use std::collections::VecDeque;
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

fn permit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    state
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::unavailable("too many open event streams; try again later"))
}

fn json_event(name: &str, value: &impl serde::Serialize) -> SseEvent {
    SseEvent::default()
        .name(name)
        .json(value)
        .unwrap_or_else(|e| SseEvent::default().name("error").text(e.to_string()))
}

/// Status changes of every agent: a `snapshot` event with every summary on
/// connect, then a `status` event for each change as it happens.
#[endpoint(tags("events"), responses((status_code = 200, description = "text/event-stream of `snapshot` (AgentSummary[]) and `status` (StatusEvent) events", content_type = "text/event-stream", body = StatusEvent)))]
pub async fn status(depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let state = state(depot)?;
    let permit = permit(&state)?;
    let (snapshot, rx) = state.handle.watch().await?;
    let snapshot = super::agents::with_stats(&state, snapshot).await;
    let first = json_event("snapshot", &snapshot);
    struct S {
        rx: broadcast::Receiver<StatusEvent>,
        first: Option<SseEvent>,
        state: Arc<AppState>,
        shutdown: watch::Receiver<bool>,
        _permit: OwnedSemaphorePermit,
    }
    let s = S {
        rx,
        first: Some(first),
        shutdown: state.shutdown.clone(),
        state,
        _permit: permit,
    };
    let events = stream::unfold(s, |mut s| async move {
        if let Some(e) = s.first.take() {
            return Some((Ok::<_, Infallible>(e), s));
        }
        tokio::select! {
            ev = s.rx.recv() => match ev {
                Ok(ev) => Some((Ok(json_event("status", &ev)), s)),
                // Fell behind: start over from a fresh snapshot.
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let listed = s.state.handle.list().await.ok()?;
                    let snap: Vec<AgentSummary> = super::agents::with_stats(&s.state, listed).await;
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
/// (`{"from": cursor, "to": cursor}`).
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
    let (rx, end) = hub.subscribe();
    let mut queue = VecDeque::new();
    let cursor = match resume {
        // A cursor from beyond the end (another daemon, a lost state
        // database): say so, and go on from the end.
        Some(c) if c > end => {
            queue.push_back(gap_event(c, end));
            end
        }
        Some(c) => c,
        None if n == 0 => end,
        None => {
            let h = hub.clone();
            let tail = tokio::task::spawn_blocking(move || h.tail(n))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?
                .map_err(|e| ApiError::internal(format!("cannot read the log: {e}")))?;
            let cursor = tail.last().map_or(end, |l| l.cursor);
            queue.extend(tail.into_iter().map(|l| line_event(l.cursor, &l.text)));
            cursor
        }
    };
    let follower = Follower {
        hub,
        rx,
        cursor,
        queue,
        shutdown: state.shutdown.clone(),
        _permit: permit,
    };
    let events = stream::unfold(follower, |mut f| async move {
        let event = f.next().await?;
        Some((Ok::<_, Infallible>(event), f))
    });
    sse_headers(res);
    SseKeepAlive::new(events).max_interval(KEEP_ALIVE).stream(res);
    Ok(())
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

/// Follows one agent's log from a cursor: from the live chunks while it keeps
/// up, from the files when it falls behind.
struct Follower {
    hub: Arc<LogHub>,
    rx: broadcast::Receiver<Arc<LogChunk>>,
    /// Everything before this has been queued.
    cursor: u64,
    queue: VecDeque<SseEvent>,
    shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
}

impl Follower {
    async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            // Anything on disk past the cursor comes first (a resume, or a
            // follower that fell behind).
            if self.cursor < self.hub.end() {
                self.catch_up().await?;
                continue;
            }
            let chunk = tokio::select! {
                c = self.rx.recv() => c,
                _ = until_shutdown(&mut self.shutdown) => return None,
            };
            match chunk {
                Ok(chunk) => self.take(&chunk),
                // Missed chunks are on disk; the next round reads them.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// Queues the part of a live chunk past the cursor.
    fn take(&mut self, chunk: &LogChunk) {
        if chunk.end() <= self.cursor || chunk.start > self.cursor {
            // Already sent, or past a hole that the files will fill.
            return;
        }
        let skip = (self.cursor - chunk.start) as usize;
        self.push_lines(self.cursor, &chunk.data[skip..]);
    }

    fn push_lines(&mut self, start: u64, data: &[u8]) {
        for (end, line) in lines::split(start, data) {
            self.queue
                .push_back(line_event(end, &String::from_utf8_lossy(line)));
        }
        self.cursor = start + data.len() as u64;
    }

    /// Reads the next piece of the log from the files.
    async fn catch_up(&mut self) -> Option<()> {
        let hub = self.hub.clone();
        let from = self.cursor;
        let read = tokio::task::spawn_blocking(move || hub.read_from(from))
            .await
            .ok()?;
        match read {
            Ok(Read::Gap { from, to }) => {
                self.queue.push_back(gap_event(from, to));
                self.cursor = to;
            }
            Ok(Read::Data { start, data }) if data.is_empty() => {
                // Nothing past the cursor after all.
                self.cursor = start;
            }
            Ok(Read::Data { start, data }) => self.push_lines(start, &data),
            Err(e) => {
                tracing::warn!(agent = self.hub.id(), "cannot read the log for a follower: {e}");
                return None;
            }
        }
        Some(())
    }
}
