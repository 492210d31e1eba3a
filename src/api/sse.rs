//! Server-Sent Events: status changes, and log lines with resume cursors.

use super::AppState;
use super::agents::{agent_id, line_count, state};
use super::auth::{Caller, caller};
use super::error::ApiError;
use crate::logs::{Follower, Item};
use crate::supervisor::{Change, Listed};
use crate::wire::{AgentLine, AgentSummary, StatusEvent};
use futures_util::stream;
use salvo::http::HeaderValue;
use salvo::oapi::extract::{PathParam, QueryParam};
use salvo::prelude::*;
use salvo::sse::{SseEvent, SseKeepAlive};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Keep-alive comments at least this often, so proxies keep streams open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

fn sse_headers(res: &mut Response) {
    // nginx buffers proxied responses unless told not to.
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// A `ping` event at least this often on every stream, whatever else it
/// carries: keep-alive comments are invisible to a browser's EventSource,
/// so a page tells a half-open connection by pings that stop coming.
pub const PING: Duration = Duration::from_secs(20);

/// The `ping` events of one stream, the first one [`PING`] after it opens.
fn pings() -> tokio::time::Interval {
    let mut i = tokio::time::interval_at(tokio::time::Instant::now() + PING, PING);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

/// A `ping` event: `{"at": RFC 3339}` (an event without data would not
/// reach an EventSource listener).
fn ping_event() -> SseEvent {
    json_event(
        "ping",
        &serde_json::json!({"at": crate::wire::rfc3339(std::time::SystemTime::now())}),
    )
}

/// One of the open event streams: counted against its key's and its
/// address's share while it lasts, and its memory given back when it ends.
struct Slot {
    _slot: super::slots::StreamSlot,
    trim: crate::memory::Trimmer,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.trim.freed();
    }
}

/// A stream slot for this request's key and address, taken before the
/// stream reads anything (429 or 503 with why when there is none).
fn permit(state: &AppState, depot: &Depot) -> Result<Slot, ApiError> {
    let c = caller(depot)?;
    Ok(Slot {
        _slot: state.streams.take(c.digest, c.remote)?,
        trim: state.trim.clone(),
    })
}

fn json_event(name: &str, value: &impl serde::Serialize) -> SseEvent {
    SseEvent::default()
        .name(name)
        .json(value)
        .unwrap_or_else(|e| SseEvent::default().name("error").text(e.to_string()))
}

/// A `snapshot` event's body is written this many bytes at a time (about).
const SNAPSHOT_CHUNK: usize = 32 * 1024;
/// Agents asked of the supervisor at a time for a snapshot.
const SNAPSHOT_PAGE: usize = 256;

/// The next page of agents after the one named, with their message counts;
/// `None` if the supervisor could not answer.
type PageFn = Box<
    dyn FnMut(Option<String>) -> futures_util::future::BoxFuture<'static, Option<(Vec<Listed>, Counts)>>
        + Send,
>;
type Counts = HashMap<String, Option<i64>>;

/// A `snapshot` event, read from the supervisor a page of agents at a time
/// and written a few summaries at a time, so that neither the summaries
/// nor their JSON are ever held whole, however many agents there are. Its
/// data is a JSON array with one element on each `data:` line; a client
/// joins the lines with newlines, which JSON reads as whitespace: what it
/// parses is the same array as ever.
struct Snapshot {
    fetch: PageFn,
    page: std::vec::IntoIter<Listed>,
    counts: Counts,
    /// The last agent written.
    after: Option<String>,
    /// The last page was full: there may be more.
    more: bool,
    started: bool,
    done: bool,
}

impl Snapshot {
    fn new(fetch: PageFn) -> Snapshot {
        Snapshot {
            fetch,
            page: Vec::new().into_iter(),
            counts: HashMap::new(),
            after: None,
            more: true,
            started: false,
            done: false,
        }
    }

    /// Every agent of the supervisor's, with its message count.
    fn of(state: &Arc<AppState>) -> Snapshot {
        let state = state.clone();
        Snapshot::new(Box::new(move |after| {
            let state = state.clone();
            Box::pin(async move {
                let page = state.handle.page(after, SNAPSHOT_PAGE).await.ok()?;
                let wanted = page
                    .iter()
                    .filter_map(|l| l.stats.clone().map(|s| (l.summary.id.clone(), s)))
                    .collect();
                let counts = state.stats.counts(wanted).await;
                Some((page, counts))
            })
        }))
    }

    /// The next agent, asking for the next page when this one is done;
    /// `Err` if the supervisor could not answer.
    async fn next_agent(&mut self) -> Result<Option<AgentSummary>, ()> {
        if let Some(l) = self.page.next() {
            let mut summary = l.summary;
            summary.msg_count_24h = self.counts.get(&summary.id).copied().flatten();
            self.after = Some(summary.id.clone());
            return Ok(Some(summary));
        }
        if !self.more {
            return Ok(None);
        }
        let (page, counts) = (self.fetch)(self.after.clone()).await.ok_or(())?;
        self.more = page.len() >= SNAPSHOT_PAGE;
        if page.is_empty() {
            self.more = false;
            return Ok(None);
        }
        (self.page, self.counts) = (page.into_iter(), counts);
        Box::pin(self.next_agent()).await
    }

    /// The next part of the event; `None` once it is all written, `Err` if
    /// the supervisor could not answer (the stream ends: the client starts
    /// over).
    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, ()> {
        if self.done {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(SNAPSHOT_CHUNK + 1024);
        if !self.started {
            out.extend_from_slice(b"event: snapshot\ndata: [\n");
        }
        while out.len() < SNAPSHOT_CHUNK {
            let Some(summary) = self.next_agent().await? else {
                out.extend_from_slice(b"data: ]\n\n");
                self.done = true;
                break;
            };
            // Compact JSON has no line break: one element, one line.
            out.extend_from_slice(if self.started { b"data: ," } else { b"data: " });
            self.started = true;
            super::json::summary(&mut out, &summary);
            out.push(b'\n');
        }
        self.started = true;
        Ok(Some(out))
    }
}

/// An event as the bytes of the stream.
fn bytes(e: SseEvent) -> Vec<u8> {
    e.to_string().into_bytes()
}

/// Every agent, live: a `snapshot` event with every summary on connect, then
/// a `status` event (StatusEvent) for each status change as it happens, a
/// `summary` event (AgentSummary) whenever anything in an agent's summary
/// but its uptime changes, and a `resources` event (ResourcesEvent) after
/// each resource sample. Nothing needs polling. Like every stream, a
/// `ping` event (`{"at"}`) every 20 s, so that a client can tell a dead
/// connection; a key holding its share of streams is refused 429.
///
/// The snapshot's data spans one `data:` line per agent (see [`Snapshot`]),
/// read and written a page at a time as the connection takes it: an
/// agent's summary is as of when its page was read, and a change made
/// while the snapshot is sent also comes after it as an event (applying
/// the events in order ends at the same state).
#[endpoint(tags("events"), responses((status_code = 200, description = "text/event-stream of `snapshot` (AgentSummary[]), `status` (StatusEvent), `summary` (AgentSummary), `resources` (ResourcesEvent), `removed` (RemovedEvent), `health` (HealthEvent) and `ping` events", content_type = "text/event-stream", body = StatusEvent)))]
pub async fn status(depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let state = state(depot)?;
    let permit = permit(&state, depot)?;
    // Subscribed first: whatever changes while the snapshot is read comes
    // after it as events.
    let rx = state.handle.subscribe().await?;
    let counts = state.stats.subscribe();
    let snapshot = Snapshot::of(&state);
    struct S {
        rx: broadcast::Receiver<Change>,
        /// Agents whose message count changed (the stats cache says).
        counts: broadcast::Receiver<Arc<str>>,
        snapshot: Option<Snapshot>,
        state: Arc<AppState>,
        end: End,
        ping: tokio::time::Interval,
        _slot: Slot,
    }
    let s = S {
        rx,
        counts,
        snapshot: Some(snapshot),
        end: End::new(&state, depot)?,
        state,
        ping: pings(),
        _slot: permit,
    };
    let events = stream::unfold(s, |mut s| async move {
        if let Some(snap) = s.snapshot.as_mut() {
            match snap.next_chunk().await.ok()? {
                Some(chunk) => return Some((Ok::<_, Infallible>(chunk), s)),
                None => s.snapshot = None,
            }
        }
        // Fell behind: start over from a fresh snapshot.
        async fn again(mut s: S) -> Option<(Result<Vec<u8>, Infallible>, S)> {
            let mut snap = Snapshot::of(&s.state);
            let chunk = snap.next_chunk().await.ok()??;
            s.snapshot = Some(snap);
            Some((Ok(chunk), s))
        }
        tokio::select! {
            ev = s.rx.recv() => match ev {
                Ok(Change::Status(ev)) => Some((Ok(bytes(json_event("status", &*ev))), s)),
                Ok(Change::Summary(l)) => {
                    let mut summary = l.summary.clone();
                    summary.msg_count_24h = s.state.stats.get(&summary.id);
                    Some((Ok(bytes(json_event("summary", &summary))), s))
                }
                Ok(Change::Resources(r)) => Some((Ok(bytes(json_event("resources", &*r))), s)),
                Ok(Change::Removed(r)) => Some((Ok(bytes(json_event("removed", &*r))), s)),
                Ok(Change::Health(h)) => Some((Ok(bytes(json_event("health", &*h))), s)),
                Err(broadcast::error::RecvError::Lagged(_)) => again(s).await,
                Err(broadcast::error::RecvError::Closed) => None,
            },
            // A count changed: the agent's summary as it is now (a change
            // made since comes after it as an event of its own).
            id = s.counts.recv() => match id {
                Ok(id) => match s.state.handle.get(&id).await {
                    Ok(view) => {
                        let mut summary = view.summary;
                        summary.msg_count_24h = s.state.stats.get(&id);
                        Some((Ok(bytes(json_event("summary", &summary))), s))
                    }
                    // Gone meanwhile: its removal comes as an event; a
                    // comment keeps the stream going.
                    Err(crate::supervisor::Error::NotFound(_)) => Some((Ok(b":\n\n".to_vec()), s)),
                    Err(_) => None,
                },
                Err(broadcast::error::RecvError::Lagged(_)) => again(s).await,
                Err(broadcast::error::RecvError::Closed) => None,
            },
            _ = s.end.wait() => None,
            _ = s.ping.tick() => Some((Ok(bytes(ping_event())), s)),
            // Nothing to send for a while: a comment keeps proxies from
            // closing the stream.
            _ = tokio::time::sleep(KEEP_ALIVE) => Some((Ok(b":\n\n".to_vec()), s)),
        }
    });
    res.headers_mut()
        .insert("content-type", HeaderValue::from_static("text/event-stream"));
    res.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-cache"));
    sse_headers(res);
    res.stream(events);
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
#[endpoint(tags("events", "logs"), parameters(("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor")), responses((status_code = 200, description = "text/event-stream of `line`, `gap` and `ping` events", content_type = "text/event-stream", body = String)))]
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
    // The slot first: a request refused one reads nothing.
    let permit = permit(&state, depot)?;
    let cursor = start_at(&hub, resume, n, "Last-Event-ID").await?;
    struct S {
        follower: Follower,
        /// The log's end when the stream opened: up to there, the tail is
        /// read first (a shutdown or the key leaving still ends it).
        tail_end: u64,
        at: u64,
        end: End,
        ping: tokio::time::Interval,
        _slot: Slot,
    }
    let s = S {
        tail_end: hub.end(),
        at: cursor,
        follower: Follower::new(hub, cursor),
        end: End::new(&state, depot)?,
        ping: pings(),
        _slot: permit,
    };
    // The tail is streamed from the files like any other line: what the
    // stream holds is the follower's read buffer, however long the lines.
    let events = stream::unfold(s, |mut s| async move {
        let item = if s.at < s.tail_end {
            tokio::select! {
                biased;
                item = s.follower.next() => item?,
                _ = s.end.wait() => return None,
            }
        } else {
            tokio::select! {
                item = s.follower.next() => item?,
                _ = s.end.wait() => return None,
                _ = s.ping.tick() => return Some((Ok::<_, Infallible>(ping_event()), s)),
            }
        };
        let event = match item {
            Item::Line { cursor, text } => {
                s.at = cursor;
                line_event(cursor, &text)
            }
            Item::Gap { from, to } => {
                s.at = to;
                gap_event(from, to)
            }
        };
        Some((Ok(event), s))
    });
    sse_headers(res);
    SseKeepAlive::new(events).max_interval(KEEP_ALIVE).stream(res);
    Ok(())
}

/// Where a follower of `hub` starts: just after `resume` (moved to a whole
/// line; beyond the end is a 400 naming `what`), else where the last `n`
/// lines begin (they are read from the files as the follower goes).
async fn start_at(
    hub: &Arc<crate::logs::LogHub>,
    resume: Option<u64>,
    n: usize,
    what: &str,
) -> Result<u64, ApiError> {
    match resume {
        Some(c) => {
            let h = hub.clone();
            blocking(move || h.align(c)).await?.map_err(|end| {
                ApiError::bad_request(format!(
                    "invalid {what}: cursor {c} is beyond the end of the log ({end})"
                ))
            })
        }
        None if n == 0 => Ok(hub.end()),
        None => {
            let h = hub.clone();
            blocking(move || h.tail_start(n))
                .await?
                .map_err(|e| ApiError::internal(format!("cannot read the log: {e}")))
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

/// `GET /sse/logs` for more agents than a request line holds: the same
/// stream, with the resume cursors in the body (`{"after": {"A": 123,
/// ...}}`, up to 1 MiB) instead of `after=`; `agent=`, `n=` and
/// `Last-Event-ID` as for `GET`. An EventSource cannot POST; the CLI uses
/// it when its cursors do not fit in `after=`.
#[endpoint(tags("events", "logs"), parameters(("agent" = Option<Vec<String>>, Query, description = "An agent to follow; repeat for more; none: all"), ("n" = Option<u64>, Query, description = "Recent lines per agent without a cursor (at most 10,000)"), ("Last-Event-ID" = Option<String>, Header, description = "AGENT:CURSOR: resume that agent")), responses((status_code = 200, description = "text/event-stream of `line` (AgentLine) and `gap` events, as `GET /sse/logs`", content_type = "text/event-stream", body = AgentLine)))]
pub async fn resume_logs(
    body: salvo::oapi::extract::JsonBody<crate::wire::LogResume>,
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
    ctrl: &mut FlowCtrl,
) {
    depot.insert_typed(body.into_inner());
    salvo::Handler::handle(&multi_logs, req, depot, res, ctrl).await;
}

/// Several agents' logs in one stream (`agent=A&agent=B`; none: every
/// agent, also those added later): for each agent the last `n` lines
/// (default 0), or the lines after its cursor in `after=A:123,B:456`, then
/// every new line live. Each `line` event's data is `{"agent","line"}` and
/// its `id` is `AGENT:CURSOR`; a `Last-Event-ID` resumes its own agent.
/// Lines rotated away come as a `gap` event `{"agent","from","to"}`.
#[endpoint(tags("events", "logs"), parameters(("agent" = Option<Vec<String>>, Query, description = "An agent to follow; repeat for more; none: all"), ("after" = Option<String>, Query, description = "AGENT:CURSOR,... to resume each agent after"), ("n" = Option<u64>, Query, description = "Recent lines per agent without a cursor (at most 10,000)"), ("Last-Event-ID" = Option<String>, Header, description = "AGENT:CURSOR: resume that agent")), responses((status_code = 200, description = "text/event-stream of `line` (AgentLine), `gap` and `ping` events", content_type = "text/event-stream", body = AgentLine)))]
pub async fn multi_logs(
    n: QueryParam<String, false>,
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
) -> Result<(), ApiError> {
    let state = state(depot)?;
    let n = line_count(n.into_inner(), 0)?;
    let mut st = starts(req)?;
    // `POST /sse/logs`: the cursors of its body.
    if let Ok(body) = depot.get_typed::<crate::wire::LogResume>() {
        for (agent, cursor) in &body.after {
            if !crate::wire::is_agent_id(agent) {
                return Err(ApiError::bad_request(format!(
                    "invalid agent id {agent:?} in after"
                )));
            }
            st.after.insert(agent.clone(), *cursor);
        }
    }
    let all = st.agents.is_empty();
    // The slot first: a request refused one reads nothing.
    let permit = permit(&state, depot)?;
    // Every agent's hub; for all agents, also news of agents added later.
    let (listed, events) = state.handle.watch().await?;
    let mut ids: Vec<String> = if all {
        listed.iter().map(|l| l.summary.id.clone()).collect()
    } else {
        st.agents.clone()
    };
    drop(listed);
    ids.sort();
    let mut pending = std::collections::VecDeque::new();
    let mut followers: futures_util::stream::SelectAll<AgentStream> = futures_util::stream::SelectAll::new();
    for id in &ids {
        let hub = state.handle.get(id).await?.hub;
        match st.after.get(id).copied() {
            // Its last lines are read when its turn comes.
            None if n > 0 => pending.push_back(hub),
            resume => {
                let cursor = start_at(&hub, resume, 0, &format!("after for {id}")).await?;
                followers.push(Box::pin(Follower::new(hub, cursor).into_stream()));
            }
        }
    }
    struct S {
        /// Agents whose last `n` lines are still to be sent, in order.
        pending: std::collections::VecDeque<Arc<crate::logs::LogHub>>,
        /// The one agent whose last lines are being sent, and its end as it
        /// was when they were asked for.
        tail: Option<(Follower, u64)>,
        n: usize,
        followers: futures_util::stream::SelectAll<AgentStream>,
        known: std::collections::HashSet<String>,
        events: Option<broadcast::Receiver<Change>>,
        state: Arc<AppState>,
        end: End,
        ping: tokio::time::Interval,
        _slot: Slot,
    }
    let s = S {
        pending,
        tail: None,
        n,
        followers,
        known: ids.into_iter().collect(),
        events: all.then_some(events),
        state: state.clone(),
        end: End::new(&state, depot)?,
        ping: pings(),
        _slot: permit,
    };
    // Each agent's last lines are streamed from its files, one agent after
    // the other, then every agent's new lines as they come: what a stream
    // holds is a read buffer per agent, never the lines it has to send.
    let stream = stream::unfold(s, |mut s| async move {
        loop {
            if s.tail.is_none()
                && let Some(hub) = s.pending.pop_front()
            {
                let stop = hub.end();
                let (h, n) = (hub.clone(), s.n);
                let start = match tokio::task::spawn_blocking(move || h.tail_start(n)).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        tracing::warn!(agent = hub.id(), "cannot read the log's last lines: {e}");
                        stop
                    }
                    Err(_) => stop,
                };
                let f = Follower::new(hub, start);
                if start < stop {
                    s.tail = Some((f, stop));
                } else {
                    s.followers.push(Box::pin(f.into_stream()));
                }
                continue;
            }
            if let Some((follower, stop)) = s.tail.as_mut() {
                // Its last lines come first; a shutdown or the key leaving
                // ends the stream even then (a client resumes by cursor).
                let item = tokio::select! {
                    biased;
                    item = follower.next() => item,
                    _ = s.end.wait() => return None,
                };
                let Some(item) = item else {
                    s.tail = None;
                    continue;
                };
                let past = match item {
                    Item::Line { cursor, .. } => cursor >= *stop,
                    Item::Gap { to, .. } => to >= *stop,
                };
                let agent = follower.agent().to_string();
                if past && let Some((f, _)) = s.tail.take() {
                    // Its last lines are sent: it goes on live with the others.
                    s.followers.push(Box::pin(f.into_stream()));
                }
                return Some((Ok::<_, Infallible>(agent_event(&agent, item)), s));
            }
            let news = async {
                match s.events.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                item = futures_util::StreamExt::next(&mut s.followers), if !s.followers.is_empty() => {
                    let (agent, item) = item?;
                    return Some((Ok(agent_event(&agent, item)), s));
                }
                ev = news => match ev {
                    // An agent this stream has not seen: added to the config
                    // since. It is followed from where its log is now (it has
                    // only just started).
                    Ok(Change::Status(e)) if !s.known.contains(&e.agent_id) => {
                        if let Ok(view) = s.state.handle.get(&e.agent_id).await {
                            let end = view.hub.end();
                            s.known.insert(e.agent_id.clone());
                            s.followers.push(Box::pin(Follower::new(view.hub, end).into_stream()));
                        }
                    }
                    // Gone (its follower ends with its log): should it come
                    // back, it is followed again as an agent added.
                    Ok(Change::Removed(r)) => {
                        s.known.remove(&r.agent_id);
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = s.end.wait() => return None,
                _ = s.ping.tick() => return Some((Ok(ping_event()), s)),
            }
        }
    });
    sse_headers(res);
    SseKeepAlive::new(stream).max_interval(KEEP_ALIVE).stream(res);
    Ok(())
}

/// A line or gap of one agent's in a stream of several.
fn agent_event(agent: &str, item: Item) -> SseEvent {
    match item {
        Item::Line { cursor, text } => agent_line_event(agent, cursor, &text),
        Item::Gap { from, to } => json_event(
            "gap",
            &serde_json::json!({"agent": agent, "from": from, "to": to}),
        )
        .id(format!("{agent}:{to}")),
    }
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

/// An agent's messages: the rows of its `stats.messages` query (see
/// `api::messages`), each a `message` event whose data is the row as a
/// JSON object by column name and whose `id` is its cursor (the first
/// column). Resume with `Last-Event-ID` (or `after=`, for a page that
/// opens a new EventSource) to get exactly the rows after that cursor.
/// Without one, the last `n` rows first (default 0, at most 1,000 and at
/// most what the query returns at once), then each new row. The database
/// is read when its files change, at most once a second, read-only; a
/// query that fails is a `query_error` event (`{"message"}`, once until it
/// works again) and is tried again at the next change. The stream ends
/// when the agent is removed, or restarts with another query. 409
/// `no_messages` for an agent without the query.
#[endpoint(tags("events"), parameters(("Last-Event-ID" = Option<String>, Header, description = "Resume after this cursor"), ("after" = Option<i64>, Query, description = "Resume after this cursor (Last-Event-ID wins)"), ("n" = Option<u64>, Query, description = "Recent rows without a cursor (at most 1,000)")), responses((status_code = 200, description = "text/event-stream of `message` (the row as a JSON object by column name; `id`: its cursor), `query_error` ({\"message\"}) and `ping` events", content_type = "text/event-stream", body = String)))]
pub async fn messages(
    id: PathParam<String>,
    n: QueryParam<String, false>,
    after: QueryParam<String, false>,
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
) -> Result<(), ApiError> {
    use super::messages::{MAX_TAIL, MIN_GAP, Row, SETTLE, parse_cursor, rows_after, tail_start};
    let state = state(depot)?;
    let id = agent_id(id)?;
    let n = match n.into_inner().filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n <= MAX_TAIL => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "invalid n={s:?}: expected a whole number from 0 to {MAX_TAIL}"
                )));
            }
        },
    };
    let resume = match req.headers().get("last-event-id") {
        Some(v) => Some(v.to_str().ok().and_then(parse_cursor).ok_or_else(|| {
            ApiError::bad_request(
                "invalid Last-Event-ID: expected a cursor (an integer) from an earlier event",
            )
        })?),
        None => match after.into_inner().filter(|s| !s.is_empty()) {
            Some(a) => Some(parse_cursor(&a).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid after={a:?}: expected a cursor (an integer) from an earlier event"
                ))
            })?),
            None => None,
        },
    };
    let stats = state.handle.get(&id).await?.config.stats.clone();
    let Some((db, sql)) = stats.and_then(|s| Some((s.db, s.messages?))) else {
        return Err(ApiError::new(
            salvo::http::StatusCode::CONFLICT,
            "no_messages",
            format!("agent {id:?} has no messages query (stats.messages in its config)"),
        ));
    };
    // The slot first: a request refused one opens no database.
    let permit = permit(&state, depot)?;
    // Its removal, or its query changed, ends the stream.
    let events = state.handle.subscribe().await?;
    struct S {
        id: String,
        events: broadcast::Receiver<Change>,
        db: Arc<std::path::Path>,
        sql: Arc<str>,
        n: usize,
        /// The last cursor sent (or resumed from); `None` until the start
        /// of a stream without one is found (the last `n` rows).
        cursor: Option<i64>,
        rows: std::collections::VecDeque<Row>,
        /// Run the query now: the stream just opened, or the last run
        /// found rows (there may be more).
        more: bool,
        /// The database changed: a run is due then (a second after the
        /// last at the soonest).
        due: Option<tokio::time::Instant>,
        last_run: Option<tokio::time::Instant>,
        /// A change was read: one more run a second after the last, for
        /// a commit that was not visible yet (SQLite writes the WAL, the
        /// change a watcher sees, before it publishes the commit).
        trailing: bool,
        changes: Option<watch::Receiver<u64>>,
        _watch: Option<Arc<super::messages::DbWatch>>,
        /// The last problem told, not told again until a run works.
        told: Option<String>,
        /// A problem to send, then end the stream.
        fatal: bool,
        state: Arc<AppState>,
        end: End,
        ping: tokio::time::Interval,
        _slot: Slot,
    }
    let s = S {
        id,
        events,
        db: db.into(),
        sql: sql.into(),
        n,
        cursor: resume,
        rows: Default::default(),
        more: true,
        due: None,
        last_run: None,
        trailing: false,
        changes: None,
        _watch: None,
        told: None,
        fatal: false,
        end: End::new(&state, depot)?,
        state,
        ping: pings(),
        _slot: permit,
    };
    fn problem(s: &mut S, message: String) -> Option<SseEvent> {
        if s.told.as_deref() == Some(&message) {
            return None;
        }
        tracing::warn!(agent = s.id, "messages: {message}");
        let ev = json_event("query_error", &serde_json::json!({"message": message}));
        s.told = Some(message);
        Some(ev)
    }
    let events = stream::unfold(s, |mut s| async move {
        loop {
            if let Some(row) = s.rows.pop_front() {
                let ev = SseEvent::default()
                    .name("message")
                    .id(row.cursor.to_string())
                    .text(row.json);
                return Some((Ok::<_, Infallible>(ev), s));
            }
            if s.fatal {
                return None;
            }
            if s.changes.is_none() {
                // The database's watcher (shared with its other streams)
                // before the first read: no change is missed after it.
                let (st, db) = (s.state.clone(), s.db.clone());
                let watched = tokio::select! {
                    biased;
                    _ = s.end.wait() => return None,
                    w = tokio::task::spawn_blocking(move || st.messages.watch(&db)) => w,
                };
                match watched {
                    Ok(Ok(w)) => {
                        s.changes = Some(w.changes());
                        s._watch = Some(w);
                    }
                    Ok(Err(e)) => {
                        s.fatal = true;
                        if let Some(ev) = problem(&mut s, e) {
                            return Some((Ok(ev), s));
                        }
                        return None;
                    }
                    Err(_) => return None,
                }
            }
            if s.more {
                s.more = false;
                s.last_run = Some(tokio::time::Instant::now());
                // What changed until now, this run reads: only a change
                // from now on calls for another (and for a trailing one).
                if let Some(c) = s.changes.as_mut() {
                    if c.has_changed().unwrap_or(false) {
                        s.trailing = true;
                    }
                    c.borrow_and_update();
                }
                let (db, sql, cursor, n) = (s.db.clone(), s.sql.clone(), s.cursor, s.n);
                let run = tokio::task::spawn_blocking(move || {
                    let start = match cursor {
                        Some(c) => c,
                        None => tail_start(&db, &sql, n)?,
                    };
                    Ok::<_, String>((start, rows_after(&db, &sql, start)))
                });
                let ran = tokio::select! {
                    biased;
                    _ = s.end.wait() => return None,
                    r = run => r,
                };
                match ran {
                    Ok(Ok((start, Ok(rows)))) => {
                        s.told = None;
                        s.cursor = Some(rows.last().map_or(start, |r| r.cursor));
                        s.more = !rows.is_empty();
                        s.rows = rows.into();
                        continue;
                    }
                    Ok(Ok((start, Err(e)))) => {
                        // Where it starts is found: rows written from now
                        // on are new, however long the query fails.
                        s.cursor = Some(start);
                        if let Some(ev) = problem(&mut s, e) {
                            return Some((Ok(ev), s));
                        }
                        continue;
                    }
                    Ok(Err(e)) => {
                        if let Some(ev) = problem(&mut s, e) {
                            return Some((Ok(ev), s));
                        }
                        continue;
                    }
                    Err(_) => return None,
                }
            }
            if s.due.is_none() && s.trailing {
                s.trailing = false;
                s.due = s.last_run.map(|at| at + MIN_GAP);
            }
            let due = s.due;
            let changes = s.changes.as_mut()?;
            tokio::select! {
                changed = changes.changed(), if due.is_none() => {
                    changed.ok()?;
                    s.trailing = true;
                    let soon = tokio::time::Instant::now() + SETTLE;
                    s.due = Some(s.last_run.map_or(soon, |at| (at + MIN_GAP).max(soon)));
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                    s.due = None;
                    s.more = true;
                }
                ev = s.events.recv() => match ev {
                    Ok(Change::Removed(r)) if r.agent_id == s.id => return None,
                    // Its config changed (a reload restarted it): the
                    // client comes back with its cursor for the new query.
                    Ok(Change::Summary(l))
                        if l.summary.id == s.id
                            && l.stats.as_ref().and_then(|st| Some((st.db.as_path(), st.messages.as_deref()?)))
                                != Some((&*s.db, &*s.sql)) =>
                    {
                        return None;
                    }
                    // Changes were missed: the agent is asked whether it is
                    // still there with this query (its removal may be among
                    // them).
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let same = match s.state.handle.get(&s.id).await {
                            Ok(view) => view.config.stats.as_ref().and_then(|st| Some((st.db.as_path(), st.messages.as_deref()?)))
                                == Some((&*s.db, &*s.sql)),
                            Err(_) => false,
                        };
                        if !same {
                            return None;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = s.end.wait() => return None,
                _ = s.ping.tick() => return Some((Ok(ping_event()), s)),
            }
        }
    });
    sse_headers(res);
    SseKeepAlive::new(events).max_interval(KEEP_ALIVE).stream(res);
    Ok(())
}

/// The fleet, live (`[fleet] view = true`): a `snapshot` event with every
/// host heard from (as `GET /fleet`), then a `host` event each time one
/// changes (a heartbeat, or it went `stale` or came back), and an `agent`
/// event for every status, health and summary event any host publishes
/// (as it published it: with `event` and `host`). 404 without a view.
#[endpoint(tags("events", "fleet"), responses((status_code = 200, description = "text/event-stream of `snapshot` (FleetHost list), `host` (FleetHost), `agent` and `ping` events", content_type = "text/event-stream", body = Vec<crate::wire::FleetHost>)))]
pub async fn fleet(depot: &mut Depot, res: &mut Response) -> Result<(), ApiError> {
    let state = state(depot)?;
    let view = super::fleet::view(&state)?.clone();
    let permit = permit(&state, depot)?;
    struct S {
        hosts: watch::Receiver<crate::fleet::Hosts>,
        agents: broadcast::Receiver<bytes::Bytes>,
        /// The hosts as last sent.
        sent: Option<crate::fleet::Hosts>,
        end: End,
        ping: tokio::time::Interval,
        queue: std::collections::VecDeque<SseEvent>,
        /// The hosts changed since they were last sent.
        changed: bool,
        _slot: Slot,
    }
    let s = S {
        changed: false,
        hosts: view.hosts.clone(),
        agents: view.events.subscribe(),
        sent: None,
        end: End::new(&state, depot)?,
        ping: pings(),
        queue: Default::default(),
        _slot: permit,
    };
    let events = stream::unfold(s, |mut s| async move {
        loop {
            if let Some(ev) = s.queue.pop_front() {
                return Some((Ok::<_, Infallible>(ev), s));
            }
            match &s.sent {
                None => {
                    let now = s.hosts.borrow_and_update().clone();
                    let list: Vec<_> = now.values().collect();
                    s.queue.push_back(json_event("snapshot", &list));
                    s.sent = Some(now);
                    continue;
                }
                Some(before) => {
                    if std::mem::take(&mut s.changed) || s.hosts.has_changed().unwrap_or(false) {
                        let now = s.hosts.borrow_and_update().clone();
                        for (name, h) in now.iter() {
                            if before.get(name) != Some(h) {
                                s.queue.push_back(json_event("host", h));
                            }
                        }
                        s.sent = Some(now);
                        continue;
                    }
                }
            }
            tokio::select! {
                // (`changed` marks the new hosts seen: they are sent above.)
                changed = s.hosts.changed() => {
                    changed.ok()?;
                    s.changed = true;
                }
                ev = s.agents.recv() => match ev {
                    Ok(body) => {
                        let text = String::from_utf8_lossy(&body).into_owned();
                        return Some((Ok(SseEvent::default().name("agent").text(text)), s));
                    }
                    // A slow reader misses agent events; hosts are not missed.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                _ = s.end.wait() => return None,
                _ = s.ping.tick() => return Some((Ok(ping_event()), s)),
            }
        }
    });
    sse_headers(res);
    SseKeepAlive::new(events).max_interval(KEEP_ALIVE).stream(res);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Counts, HashMap, Listed, SNAPSHOT_CHUNK, SNAPSHOT_PAGE, Snapshot, agent_cursor};
    use crate::wire::{AgentSummary, Desired, Status};

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
                msg_count_24h: None,
                // A line break in a value must not break the framing.
                command: vec!["sh".into(), "-c".into(), format!("echo {i}\nsleep 1")],
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

    /// Parses a stream's bytes the way EventSource does: events end at a
    /// blank line, `data:` lines are joined with newlines.
    fn events(wire: &str) -> Vec<(String, String)> {
        wire.split_terminator("\n\n")
            .map(|ev| {
                let (mut name, mut data) = (String::new(), Vec::new());
                for line in ev.lines() {
                    if let Some(n) = line.strip_prefix("event: ") {
                        name = n.into();
                    } else if let Some(d) = line.strip_prefix("data: ") {
                        data.push(d);
                    }
                }
                (name, data.join("\n"))
            })
            .collect()
    }

    /// The chunks of a snapshot of `n` agents, paged as the supervisor
    /// would, and the summaries it must read as.
    fn written(n: usize, counts: Counts) -> (Vec<Vec<u8>>, Vec<AgentSummary>) {
        let all: Vec<Listed> = (0..n).map(listed).collect();
        let mut want: Vec<AgentSummary> = all.iter().map(|l| l.summary.clone()).collect();
        for s in &mut want {
            s.msg_count_24h = counts.get(&s.id).copied().flatten();
        }
        let pages = std::sync::Arc::new(std::sync::Mutex::new(0usize));
        let asked = pages.clone();
        let mut snap = Snapshot::new(Box::new(move |after: Option<String>| {
            *asked.lock().expect("lock") += 1;
            let page: Vec<Listed> = all
                .iter()
                .filter(|l| after.as_ref().is_none_or(|a| l.summary.id > *a))
                .take(SNAPSHOT_PAGE)
                .cloned()
                .collect();
            let counts = counts.clone();
            Box::pin(async move { Some((page, counts)) })
        }));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let mut chunks = Vec::new();
        while let Some(c) = rt.block_on(snap.next_chunk()).expect("pages") {
            chunks.push(c);
            assert!(chunks.len() < 10_000, "no end");
        }
        assert_eq!(
            *pages.lock().expect("lock"),
            n / SNAPSHOT_PAGE + 1,
            "pages asked for"
        );
        (chunks, want)
    }

    #[test]
    fn a_snapshot_is_written_in_chunks_and_reads_as_one_event_of_every_summary() {
        let counts = HashMap::from([("agent-00007".to_string(), Some(42))]);
        let (chunks, want) = written(3000, counts);
        assert!(chunks.len() > 3, "{} chunks", chunks.len());
        for c in &chunks {
            assert!(c.len() < SNAPSHOT_CHUNK + 1024, "a chunk of {} bytes", c.len());
        }
        let wire = String::from_utf8(chunks.concat()).expect("UTF-8");
        let evs = events(&wire);
        assert_eq!(evs.len(), 1, "one event");
        assert_eq!(evs[0].0, "snapshot");
        let got: Vec<AgentSummary> = serde_json::from_str(&evs[0].1).expect("a JSON array");
        assert_eq!(got, want);
        assert_eq!(got[7].msg_count_24h, Some(42));
    }

    #[test]
    fn an_empty_snapshot_is_an_empty_array() {
        let (chunks, _) = written(0, HashMap::new());
        let evs = events(&String::from_utf8(chunks.concat()).expect("UTF-8"));
        assert_eq!(evs, vec![("snapshot".to_string(), "[\n]".to_string())]);
        let got: Vec<AgentSummary> = serde_json::from_str(&evs[0].1).expect("JSON");
        assert!(got.is_empty());
        let (chunks, want) = written(1, HashMap::new());
        let evs = events(&String::from_utf8(chunks.concat()).expect("UTF-8"));
        let got: Vec<AgentSummary> = serde_json::from_str(&evs[0].1).expect("JSON");
        assert_eq!(got, want);
    }

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
