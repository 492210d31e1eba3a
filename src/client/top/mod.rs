//! `agentsd top`: the terminal dashboard.
//!
//! One loop owns the [`State`](state::State) and the terminal. Everything
//! else comes to it as a message: keys and resizes from a thread blocked on
//! the terminal, and from tasks on this runtime the `/sse/status` stream,
//! the selected agent's log stream, and the answers to start, stop and
//! restart. Nothing is polled; the screen is drawn again only when a
//! message changed something, at most every [`FRAME`], and once a second
//! while an uptime is on screen. The terminal is given back as it was on
//! every way out: `q`, Ctrl-C, a signal, a fatal error, a panic.
//!
//! With several contexts (`--context all`, `--context a,b`), each host has
//! its own client (its context's URL, key and trust) and its own status
//! stream, reconnecting by itself; the state keys its agents `host/id`, and
//! a start, stop, restart or log goes to the selected agent's own host.

mod state;
mod view;

pub use state::ContextEntry;

use super::follow::{Follow, LogCursor, LogItem, follow};
use super::{Client, ClientError, Identity, SseFrame, local, target};
use crate::cli::ConnectFlags;
use crate::wire::{AgentSummary, HealthEvent, Op, RemovedEvent, ResourcesEvent, StatusEvent};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::Event as TermEvent;
use ratatui::crossterm::{cursor, execute, style, terminal};
use ratatui::layout::Rect;
use state::{Access, Effect, Link, State};
use std::io::{self, Stdout};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The shortest time between two frames: a burst of events is drawn once.
const FRAME: Duration = Duration::from_millis(20);
/// How long the selection rests on an agent before its log is fetched:
/// holding a key down through a thousand agents fetches one log, not all.
const SETTLE: Duration = Duration::from_millis(120);
/// Stream events handled between two frames at most, so that a flooding
/// log never holds keys and drawing back.
const BATCH: usize = 256;

/// How `top` ended, when not by the user.
#[derive(Debug)]
pub enum Error {
    Client(ClientError),
    Io(io::Error),
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// Where the dashboard starts.
pub struct Start {
    pub daemons: Daemons,
    /// The client file's contexts, for `c`.
    pub contexts: Vec<ContextEntry>,
    pub color: bool,
}

/// The daemon, or the daemons, to follow.
pub enum Daemons {
    One {
        client: Client,
        /// What `/whoami` said, before the screen was taken.
        identity: Option<Identity>,
        context: Option<String>,
    },
    /// Each context by name, with its client, or why it has none (no key,
    /// an invalid URL): that host is shown failed, the others followed.
    Several(Vec<(String, Result<Client, ClientError>)>),
}

/// The clients the loop acts through.
enum Clients {
    One(Client),
    Several(std::collections::BTreeMap<String, Client>),
}

impl Clients {
    /// The client that reaches agent `key` (of [`State::agents`]), and the
    /// agent's id on its daemon.
    fn of(&self, key: &str) -> Option<(Client, String)> {
        match self {
            Clients::One(c) => Some((c.clone(), key.to_string())),
            Clients::Several(all) => match state::split_key(key) {
                (Some(host), id) => all.get(host).map(|c| (c.clone(), id.to_string())),
                (None, _) => None,
            },
        }
    }
}

/// Runs the dashboard until the user quits (or a signal, or a fatal error
/// of the status stream: a refused key or certificate).
pub async fn run(start: Start) -> Result<(), Error> {
    // Tasks need not be Send: this runtime has one thread.
    tokio::task::LocalSet::new().run_until(main_loop(start)).await
}

/// A message to the loop. `conn` tells which daemon it is about: after a
/// switch of context, what the previous one's tasks still send is dropped.
struct Msg {
    conn: u64,
    /// With several contexts, the host whose stream sent it.
    host: Option<std::rc::Rc<str>>,
    body: Body,
}

enum Body {
    Link(Link),
    Snapshot(Vec<AgentSummary>),
    Summary(AgentSummary),
    Status(StatusEvent),
    Health(HealthEvent),
    Resources(ResourcesEvent),
    Removed(RemovedEvent),
    /// The status stream ended for good (a refused key or certificate).
    Fatal(ClientError),
    Access(Access),
    /// For the log follower number `follower`.
    Log {
        follower: u64,
        item: LogMsg,
    },
    Done {
        id: String,
        op: Op,
        result: Result<super::Controlled, ClientError>,
    },
    Switched(Result<Switch, ClientError>),
}

enum LogMsg {
    Lines(Vec<String>),
    Gap,
    Note(Option<String>),
}

struct Switch {
    client: Client,
    context: String,
    access: Access,
}

/// The way to the loop: stream events wait for room (a flooding log is
/// slowed down at the daemon, not buffered here); everything else is rare
/// and never waits.
#[derive(Clone)]
struct Tx {
    conn: u64,
    host: Option<std::rc::Rc<str>>,
    data: mpsc::Sender<Msg>,
    ctl: mpsc::UnboundedSender<Msg>,
}

impl Tx {
    async fn data(&self, body: Body) {
        let _ = self
            .data
            .send(Msg {
                conn: self.conn,
                host: self.host.clone(),
                body,
            })
            .await;
    }

    fn ctl(&self, body: Body) {
        let _ = self.ctl.send(Msg {
            conn: self.conn,
            host: self.host.clone(),
            body,
        });
    }

    /// The same way to the loop, for what `host`'s tasks send.
    fn of_host(&self, host: &str) -> Tx {
        Tx {
            host: Some(host.into()),
            ..self.clone()
        }
    }
}

async fn main_loop(start: Start) -> Result<(), Error> {
    let (data_tx, mut data) = mpsc::channel(BATCH);
    let (ctl_tx, mut ctl) = mpsc::unbounded_channel();
    let mut tx = Tx {
        conn: 0,
        host: None,
        data: data_tx,
        ctl: ctl_tx,
    };
    let (mut state, mut clients, mut status_tasks) = match start.daemons {
        Daemons::One {
            client,
            identity,
            context,
        } => {
            let mut state = State::new(client.url().to_string(), context, start.contexts, start.color);
            state.access = Access::from_identity(identity);
            let task = spawn_status(&client, &tx);
            (state, Clients::One(client), vec![task])
        }
        Daemons::Several(hosts) => {
            let mut state = State::several(hosts.iter().map(|(n, _)| n.clone()), start.color);
            let mut clients = std::collections::BTreeMap::new();
            let mut tasks = Vec::new();
            for (name, client) in hosts {
                match client {
                    Ok(c) => {
                        tasks.push(spawn_status(&c, &tx.of_host(&name)));
                        clients.insert(name, c);
                    }
                    Err(e) => state.host_link(&name, Link::Failed(e.to_string())),
                }
            }
            (state, Clients::Several(clients), tasks)
        }
    };
    let mut log_task: Option<JoinHandle<()>> = None;
    let mut follower = 0u64;
    let mut followed: Option<String> = None;
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let mut tty = Tty::enter()?;
    let mut keys = spawn_input()?;
    let size = tty.term.size()?;
    state.set_page(view::page(Rect::new(0, 0, size.width, size.height)));
    let mut dirty = true;
    let mut last_draw: Option<Instant> = None;
    let outcome = loop {
        if dirty && last_draw.is_none_or(|t| t.elapsed() >= FRAME) {
            let now = Instant::now();
            tty.term.draw(|f| view::draw(f, &state, now))?;
            last_draw = Some(now);
            dirty = false;
        }
        let wake = match last_draw {
            Some(t) if dirty => Some(t + FRAME),
            Some(t) if state.ticks(Instant::now()) => Some(t + Duration::from_secs(1)),
            _ => None,
        };
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            biased;
            _ = sigterm.recv() => break Ok(()),
            _ = sighup.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
            ev = keys.recv() => match ev {
                // The terminal is gone.
                None => break Ok(()),
                Some(TermEvent::Key(k)) => {
                    dirty = true;
                    match state.key(k) {
                        None => {}
                        Some(Effect::Quit) => break Ok(()),
                        Some(Effect::Control { id, op }) => {
                            // The selected agent's own host, with several.
                            let tx = tx.clone();
                            match clients.of(&id) {
                                Some((c, agent)) => {
                                    tokio::task::spawn_local(async move {
                                        let result = c.control(&agent, op).await;
                                        tx.ctl(Body::Done { id, op, result });
                                    });
                                }
                                None => {
                                    let result = Err(ClientError::Usage(format!("no daemon for {id}")));
                                    tx.ctl(Body::Done { id, op, result });
                                }
                            }
                        }
                        Some(Effect::SwitchContext(name)) => {
                            let tx = tx.clone();
                            tokio::task::spawn_local(async move {
                                let result = switch(name).await;
                                tx.ctl(Body::Switched(result));
                            });
                        }
                    }
                }
                Some(TermEvent::Resize(w, h)) => {
                    state.set_page(view::page(Rect::new(0, 0, w, h)));
                    dirty = true;
                }
                Some(_) => {}
            },
            Some(m) = ctl.recv() => {
                if m.conn != tx.conn {
                    continue;
                }
                dirty = true;
                if let Some(host) = m.host {
                    // A host's link, live (again): its key's rights, which a
                    // restart of its daemon may have changed.
                    if matches!(m.body, Body::Link(Link::Live))
                        && let Some((c, _)) = clients.of(&state::host_key(&host, ""))
                    {
                        let tx = tx.of_host(&host);
                        tokio::task::spawn_local(async move {
                            if let Ok(id) = c.whoami().await {
                                tx.ctl(Body::Access(Access::from_identity(id)));
                            }
                        });
                    }
                    apply_host(&mut state, &host, m.body);
                    continue;
                }
                match m.body {
                    Body::Fatal(e) => break Err(Error::Client(e)),
                    Body::Link(Link::Live) if matches!(state.link, Link::Reconnecting(_)) => {
                        // The daemon may have restarted with other keys.
                        state.link = Link::Live;
                        let Clients::One(client) = &clients else { continue };
                        let (c, tx) = (client.clone(), tx.clone());
                        tokio::task::spawn_local(async move {
                            if let Ok(id) = c.whoami().await {
                                tx.ctl(Body::Access(Access::from_identity(id)));
                            }
                        });
                    }
                    Body::Switched(Ok(sw)) => {
                        for t in status_tasks.drain(..) {
                            t.abort();
                        }
                        if let Some(t) = log_task.take() {
                            t.abort();
                        }
                        followed = None;
                        tx.conn += 1;
                        state.switched(sw.client.url().to_string(), Some(sw.context), sw.access);
                        status_tasks.push(spawn_status(&sw.client, &tx));
                        clients = Clients::One(sw.client);
                        // Whatever the switch printed (a key command's
                        // stderr) is painted over.
                        tty.term.clear()?;
                    }
                    Body::Switched(Err(e)) => {
                        state.message = Some(state::Message {
                            text: format!("cannot switch: {e}"),
                            error: true,
                        });
                    }
                    body => apply(&mut state, body, follower),
                }
            },
            Some(m) = data.recv() => {
                dispatch(&mut state, m, tx.conn, follower);
                for _ in 1..BATCH {
                    match data.try_recv() {
                        Ok(m) => dispatch(&mut state, m, tx.conn, follower),
                        Err(_) => break,
                    }
                }
                dirty = true;
            },
            _ = tokio::time::sleep_until(wake.unwrap_or(far).into()), if wake.is_some() => {
                dirty = true;
            },
        }
        // The log pane follows the selection.
        if state.selected() != followed.as_deref() {
            if let Some(t) = log_task.take() {
                t.abort();
            }
            followed = state.selected().map(str::to_string);
            follower += 1;
            state.log_for(followed.clone());
            if let Some((c, id)) = followed.as_deref().and_then(|k| clients.of(k)) {
                log_task = Some(spawn_log(&c, &tx, id, follower));
            }
        }
    };
    for t in status_tasks {
        t.abort();
    }
    if let Some(t) = log_task {
        t.abort();
    }
    drop(tty);
    outcome
}

/// What the daemon said, into the state.
fn apply(state: &mut State, body: Body, follower: u64) {
    let now = Instant::now();
    match body {
        Body::Link(l) => state.link = l,
        Body::Snapshot(agents) => state.snapshot(agents, now),
        Body::Summary(s) => state.summary(s, now),
        Body::Status(e) => state.status(e, now),
        Body::Health(e) => state.health(e),
        Body::Resources(r) => state.resources(&r),
        Body::Removed(r) => state.removed(&r),
        Body::Access(a) => state.access = a,
        Body::Done { id, op, result } => state.done(&id, op, result),
        Body::Log { follower: f, item } if f == follower => match item {
            LogMsg::Lines(lines) => state.log_lines(lines),
            LogMsg::Gap => state.log_gap(),
            LogMsg::Note(n) => state.log_note(n),
        },
        Body::Log { .. } | Body::Fatal(_) | Body::Switched(_) => {}
    }
}

/// A stream's message, into the state, unless it is about a daemon left
/// (`conn` is the current one's).
fn dispatch(state: &mut State, m: Msg, conn: u64, follower: u64) {
    if m.conn != conn {
        return;
    }
    match m.host {
        Some(host) => apply_host(state, &host, m.body),
        None => apply(state, m.body, follower),
    }
}

/// What one host's stream said (with several contexts), into the state:
/// its agents are keyed `host/id`, and a fatal error is that host's alone.
fn apply_host(state: &mut State, host: &str, body: Body) {
    let now = Instant::now();
    let key = |id: &mut String| *id = state::host_key(host, id);
    match body {
        Body::Link(l) => state.host_link(host, l),
        Body::Fatal(e) => state.host_link(host, Link::Failed(e.to_string())),
        Body::Access(a) => state.host_access(host, a),
        Body::Snapshot(agents) => state.host_snapshot(host, agents, now),
        Body::Resources(r) => state.host_resources(host, &r),
        Body::Summary(mut s) => {
            key(&mut s.id);
            state.summary(s, now)
        }
        Body::Status(mut e) => {
            key(&mut e.agent_id);
            state.status(e, now)
        }
        Body::Health(mut e) => {
            key(&mut e.agent_id);
            state.health(e)
        }
        Body::Removed(mut r) => {
            key(&mut r.agent_id);
            state.removed(&r)
        }
        // Logs, answers and switches come through the loop's own way.
        Body::Log { .. } | Body::Done { .. } | Body::Switched(_) => {}
    }
}

/// Follows `/sse/status` into the loop, reconnecting for as long as it runs.
fn spawn_status(client: &Client, tx: &Tx) -> JoinHandle<()> {
    let (client, tx) = (client.clone(), tx.clone());
    tokio::task::spawn_local(async move {
        let mut s = StatusStream { tx: tx.clone() };
        if let Err(e) = follow(&client, &mut s).await {
            tx.ctl(Body::Fatal(e));
        }
    })
}

struct StatusStream {
    tx: Tx,
}

impl Follow for StatusStream {
    type Error = ClientError;

    fn request(&self) -> (String, Option<String>) {
        ("/sse/status".into(), None)
    }

    async fn event(&mut self, _: &Client, ev: SseFrame) -> Result<ControlFlow<()>, ClientError> {
        fn parse<T: serde::de::DeserializeOwned>(ev: &SseFrame) -> Result<T, ClientError> {
            serde_json::from_str(&ev.data)
                .map_err(|e| ClientError::Server(format!("unexpected {} event: {e}", ev.name)))
        }
        let body = match ev.name.as_str() {
            "snapshot" => Body::Snapshot(parse(&ev)?),
            "summary" => Body::Summary(parse(&ev)?),
            "status" => Body::Status(parse(&ev)?),
            "health" => Body::Health(parse(&ev)?),
            "resources" => Body::Resources(parse(&ev)?),
            "removed" => Body::Removed(parse(&ev)?),
            _ => return Ok(ControlFlow::Continue(())),
        };
        self.tx.data(body).await;
        Ok(ControlFlow::Continue(()))
    }

    fn connected(&mut self) {
        self.tx.ctl(Body::Link(Link::Live));
    }

    fn reconnecting(&mut self, e: &ClientError, _: Duration) {
        self.tx.ctl(Body::Link(Link::Reconnecting(e.to_string())));
    }

    fn retry_first(&self) -> bool {
        true
    }
}

/// Follows one agent's log into the pane: its recent lines, then every new
/// one, resumed exactly after a reconnection (as `logs -f` does).
fn spawn_log(client: &Client, tx: &Tx, id: String, follower: u64) -> JoinHandle<()> {
    let (client, tx) = (client.clone(), tx.clone());
    tokio::task::spawn_local(async move {
        tokio::time::sleep(SETTLE).await;
        let send = |item| {
            let tx = tx.clone();
            async move { tx.data(Body::Log { follower, item }).await }
        };
        let mut delay = super::follow::FIRST_DELAY;
        let at = loop {
            match LogCursor::tail(&client, &id, state::LOG_TAIL).await {
                Ok((lines, at)) => {
                    send(LogMsg::Lines(lines.into_iter().map(|l| l.text).collect())).await;
                    send(LogMsg::Note(None)).await;
                    break at;
                }
                Err(e) if e.is_transient() => {
                    send(LogMsg::Note(Some(format!("reconnecting: {e}")))).await;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(super::follow::MAX_DELAY);
                }
                Err(e) => return send(LogMsg::Note(Some(e.to_string()))).await,
            }
        };
        let mut s = LogStream {
            tx: tx.clone(),
            follower,
            at,
        };
        if let Err(e) = follow(&client, &mut s).await {
            send(LogMsg::Note(Some(format!("stopped: {e}")))).await;
        }
    })
}

struct LogStream {
    tx: Tx,
    follower: u64,
    at: LogCursor,
}

impl LogStream {
    async fn send(&self, item: LogMsg) {
        let follower = self.follower;
        self.tx.data(Body::Log { follower, item }).await;
    }

    fn note(&self, note: Option<String>) {
        let follower = self.follower;
        let item = LogMsg::Note(note);
        self.tx.ctl(Body::Log { follower, item });
    }
}

impl Follow for LogStream {
    type Error = ClientError;

    fn request(&self) -> (String, Option<String>) {
        self.at.request()
    }

    async fn event(&mut self, _: &Client, ev: SseFrame) -> Result<ControlFlow<()>, ClientError> {
        match self.at.take(ev) {
            Some(LogItem::Line { text, .. }) => self.send(LogMsg::Lines(vec![text])).await,
            Some(LogItem::Gap(_)) => self.send(LogMsg::Gap).await,
            None => {}
        }
        Ok(ControlFlow::Continue(()))
    }

    fn connected(&mut self) {
        self.note(None);
    }

    fn reconnecting(&mut self, e: &ClientError, _: Duration) {
        self.note(Some(format!("reconnecting: {e}")));
    }

    fn retry_first(&self) -> bool {
        true
    }
}

/// Connects to another context of the client file, with the rules of
/// `--context NAME`: its own key and trust, the environment only filling
/// in what it leaves out.
async fn switch(name: String) -> Result<Switch, ClientError> {
    let flags = ConnectFlags {
        context: Some(name.clone()),
        ..ConnectFlags::default()
    };
    // Reading the key may run the context's api_key_command.
    let resolved = tokio::task::spawn_blocking(move || {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let file = match target::client_file_path() {
            Some(p) => target::load_client_file(&p)?,
            None => target::ClientFile::default(),
        };
        target::resolve(&flags, &env, &file, &local::local_daemon)
    })
    .await
    .map_err(|e| ClientError::Usage(format!("cannot read the context: {e}")))??;
    let client = Client::new(resolved.target)?;
    let access = Access::from_identity(client.whoami().await?);
    Ok(Switch {
        client,
        context: name,
        access,
    })
}

/// Keys and resizes, read by a thread of their own (crossterm's read
/// blocks) and handed to the loop.
fn spawn_input() -> io::Result<mpsc::UnboundedReceiver<TermEvent>> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("top-input".into())
        .spawn(move || {
            while let Ok(ev) = ratatui::crossterm::event::read() {
                if tx.send(ev).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// Whether the terminal is ours (raw, alternate screen): then a panic gives
/// it back before its message is printed.
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The terminal in raw mode on the alternate screen, given back on drop.
struct Tty {
    term: Terminal<CrosstermBackend<Stdout>>,
}

impl Tty {
    fn enter() -> io::Result<Tty> {
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let ours = restore();
                previous(info);
                if ours {
                    // A task's panic would leave the loop drawing on a
                    // terminal given back: end here, as the main task's does.
                    std::process::exit(101);
                }
            }));
        });
        terminal::enable_raw_mode()?;
        ACTIVE.store(true, Ordering::SeqCst);
        let entered = execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide)
            .and_then(|()| Terminal::new(CrosstermBackend::new(io::stdout())));
        match entered {
            Ok(term) => Ok(Tty { term }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for Tty {
    fn drop(&mut self) {
        restore();
    }
}

/// Gives the terminal back as it was: attributes reset, main screen,
/// cursor shown, cooked mode. Says whether it was ours to give back.
fn restore() -> bool {
    if !ACTIVE.swap(false, Ordering::SeqCst) {
        return false;
    }
    let _ = execute!(
        io::stdout(),
        style::SetAttribute(style::Attribute::Reset),
        style::ResetColor,
        terminal::LeaveAlternateScreen,
        cursor::Show
    );
    let _ = terminal::disable_raw_mode();
    true
}
