//! The client commands: `agents`, `logs` and `status`, all over the API.

use crate::cli::ConnectFlags;
use crate::cli::{AgentsCommand, LogsArgs, StatusArgs};
use crate::client::output::{self, LogText, escape_controls, escape_controls_but_newlines, status_style};
use crate::client::{Client, ClientError, Event, local, target};
use crate::wire::{AgentSummary, StatusEvent};
use futures_util::StreamExt;
use std::io::{self, Write};
use std::time::Duration;

/// A client command failed in one of the documented ways, or its output
/// pipe closed.
pub enum Failure {
    Client(ClientError),
    Io(io::Error),
    /// Already reported on stderr; exit with this code.
    Reported(u8),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Failure::Client(e)
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

type Result<T> = std::result::Result<T, Failure>;

pub fn connect(flags: &ConnectFlags) -> std::result::Result<Client, ClientError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    // The client file only matters when no URL is given outright.
    let file = match target::client_file_path() {
        Some(p) if flags.url.is_none() => target::load_client_file(&p)?,
        _ => Default::default(),
    };
    let resolved = target::resolve(flags, &env, &file, &local::local_daemon)?;
    if let Some(note) = &resolved.note {
        let _ = writeln!(anstream::stderr(), "agentsd: {note}");
    }
    Client::new(resolved.target)
}

pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut out = anstream::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

pub async fn agents(cmd: AgentsCommand, flags: &ConnectFlags) -> Result<()> {
    let client = connect(flags)?;
    match cmd {
        AgentsCommand::List { json } => {
            let agents = client.list().await?;
            if json {
                print_json(&agents)?;
            } else {
                output::agents_table(&mut anstream::stdout().lock(), &agents)?;
            }
        }
        AgentsCommand::Show { id, json, raw } => {
            let d = client.show(&id).await?;
            if json {
                print_json(&d)?;
            } else {
                // What the daemon relays from the config is shown escaped.
                let esc = |s: &str| escape_controls(s).into_owned();
                let mut out = anstream::stdout().lock();
                output::agents_table(&mut out, std::slice::from_ref(&d.summary))?;
                writeln!(out, "\ncommand: {}", esc(&shell_words(&d.config.command)))?;
                if let Some(cwd) = &d.config.cwd {
                    writeln!(out, "cwd: {}", esc(cwd))?;
                }
                if let Some(u) = &d.config.user {
                    writeln!(out, "user: {}", esc(u))?;
                }
                if !d.config.env.is_empty() {
                    let names: Vec<_> = d.config.env.keys().map(String::as_str).collect();
                    writeln!(out, "env: {} (values hidden)", esc(&names.join(", ")))?;
                }
                writeln!(
                    out,
                    "restart: {}, max_restarts {}, stop: {} then SIGKILL after {}ms",
                    esc(&d.config.restart),
                    d.config.max_restarts,
                    esc(&d.config.stop_signal),
                    d.config.stop_timeout_ms
                )?;
                if let Some(started) = &d.summary.started_at {
                    writeln!(out, "started: {}", esc(started))?;
                }
                writeln!(out, "\nlast {} log lines:", d.logs.len())?;
                out.flush()?;
                drop(out);
                // Log lines bypass anstream, which would strip escape
                // sequences from them when stdout is not a terminal.
                let shown = LogText::for_stdout(raw);
                let mut out = io::stdout().lock();
                for l in &d.logs {
                    writeln!(out, "{}", shown.show(&l.text))?;
                }
                out.flush()?;
            }
        }
        AgentsCommand::Start(args) => control(&client, "start", args.ids, args.all).await?,
        AgentsCommand::Stop(args) => control(&client, "stop", args.ids, args.all).await?,
        AgentsCommand::Restart(args) => control(&client, "restart", args.ids, args.all).await?,
    }
    Ok(())
}

fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `op` on every agent named (or on all), concurrently; reports each
/// result on its own line and fails with the first error's class.
async fn control(client: &Client, op: &str, ids: Vec<String>, all: bool) -> Result<()> {
    let ids = if all {
        client.list().await?.into_iter().map(|a| a.id).collect()
    } else {
        ids
    };
    let results = futures_util::future::join_all(ids.iter().map(|id| client.control(id, op))).await;
    let mut first_error = None;
    let mut out = anstream::stdout().lock();
    for (id, r) in ids.iter().zip(results) {
        match r {
            Ok(a) => {
                let st = status_style(a.status);
                let pid = a.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                let why = a
                    .reason
                    .as_deref()
                    .map(|r| format!(": {}", escape_controls(r)))
                    .unwrap_or_default();
                writeln!(out, "{id}: {st}{}{st:#}{pid}{why}", a.status)?;
            }
            Err(e) => {
                let _ = writeln!(anstream::stderr(), "agentsd: {id}: {e}");
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(Failure::Reported(e.exit_code())),
        None => Ok(()),
    }
}

/// Waits before reconnecting: 200 ms, doubling up to 5 s.
struct Reconnect {
    delay: Duration,
}

impl Reconnect {
    const FIRST: Duration = Duration::from_millis(200);

    async fn wait(&mut self, e: &ClientError) {
        let _ = writeln!(
            anstream::stderr(),
            "agentsd: {e}; reconnecting in {}ms",
            self.delay.as_millis()
        );
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(5));
    }
}

/// What one event stream command does with its stream.
trait Follow {
    /// The path to (re)connect to, and the `Last-Event-ID` to send.
    fn request(&self) -> (String, Option<String>);
    fn event(&mut self, ev: Event) -> Result<()>;
}

/// With keep-alives every 15 s, this long without a byte means the
/// connection is dead even if no error says so.
const STREAM_SILENCE: Duration = Duration::from_secs(45);

/// Follows an event stream until interrupted. Once connected, it reconnects
/// with backoff after a network error or a daemon restart; a first
/// connection that fails, a refused certificate or key, or an unknown agent
/// end it with that error.
async fn follow(client: &Client, f: &mut impl Follow) -> Result<()> {
    let mut reconnect = Reconnect {
        delay: Reconnect::FIRST,
    };
    let mut connected_once = false;
    loop {
        let (path, last_id) = f.request();
        let mut events = match client.events(&path, last_id.as_deref()).await {
            Ok(s) => Box::pin(s),
            Err(e) if e.is_transient() && connected_once => {
                reconnect.wait(&e).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        connected_once = true;
        reconnect.delay = Reconnect::FIRST;
        let ended = loop {
            match tokio::time::timeout(STREAM_SILENCE, events.next()).await {
                Err(_) => {
                    break ClientError::Unreachable(format!(
                        "nothing from {} for {} s",
                        client.url(),
                        STREAM_SILENCE.as_secs()
                    ));
                }
                Ok(None) => break ClientError::Unreachable(format!("{} closed the stream", client.url())),
                Ok(Some(Err(e))) => break e,
                Ok(Some(Ok(ev))) => f.event(ev)?,
            }
        };
        reconnect.wait(&ended).await;
    }
}

struct FollowLogs {
    id: String,
    shown: LogText,
    /// The cursor of the last line printed: every (re)connection resumes
    /// right after it.
    cursor: String,
}

impl Follow for FollowLogs {
    fn request(&self) -> (String, Option<String>) {
        (format!("/sse/agents/{}/logs", self.id), Some(self.cursor.clone()))
    }

    fn event(&mut self, ev: Event) -> Result<()> {
        match ev.name.as_str() {
            "line" => {
                // Not through anstream: it would strip escape sequences
                // from the line when stdout is not a terminal.
                let mut out = io::stdout().lock();
                writeln!(out, "{}", self.shown.show(&ev.data))?;
                out.flush()?;
            }
            "gap" => {
                let _ = writeln!(
                    anstream::stderr(),
                    "agentsd: some lines were rotated away before they could be shown ({})",
                    escape_controls(&ev.data)
                );
            }
            _ => {}
        }
        if !ev.id.is_empty() {
            self.cursor = ev.id;
        }
        Ok(())
    }
}

pub async fn logs(args: LogsArgs, flags: &ConnectFlags) -> Result<()> {
    let client = connect(flags)?;
    // The recent lines come from the plain route, with the cursor after the
    // last of them; following starts from that cursor, so nothing written in
    // between (or while reconnecting) is missed. One line is always fetched
    // so that the cursor is known even with -n 0.
    let mut lines = client.logs(&args.id, args.lines.max(1)).await?;
    let cursor = lines.last().map_or(0, |l| l.cursor).to_string();
    if args.lines == 0 {
        lines.clear();
    }
    let shown = LogText::for_stdout(args.raw);
    {
        let mut out = io::stdout().lock();
        for l in &lines {
            writeln!(out, "{}", shown.show(&l.text))?;
        }
        out.flush()?;
    }
    if !args.follow {
        return Ok(());
    }
    let mut f = FollowLogs {
        id: args.id.clone(),
        shown,
        cursor,
    };
    match follow(&client, &mut f).await {
        Err(Failure::Client(ClientError::NotFound(_))) => {
            Err(ClientError::NotFound(format!("no agent named {:?}", args.id)).into())
        }
        other => other,
    }
}

struct WatchStatus;

impl Follow for WatchStatus {
    fn request(&self) -> (String, Option<String>) {
        ("/sse/status".into(), None)
    }

    fn event(&mut self, ev: Event) -> Result<()> {
        let mut out = anstream::stdout().lock();
        match ev.name.as_str() {
            "snapshot" => {
                let agents: Vec<AgentSummary> = serde_json::from_str(&ev.data)
                    .map_err(|e| ClientError::Server(format!("unexpected snapshot: {e}")))?;
                output::agents_table(&mut out, &agents)?;
            }
            "status" => {
                let e: StatusEvent = serde_json::from_str(&ev.data)
                    .map_err(|e| ClientError::Server(format!("unexpected status event: {e}")))?;
                let (a, b) = (status_style(e.old_status), status_style(e.new_status));
                let pid = e.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                writeln!(
                    out,
                    "{} {}: {a}{}{a:#} -> {b}{}{b:#}{pid}",
                    e.at, e.agent_id, e.old_status, e.new_status
                )?;
            }
            _ => {}
        }
        out.flush()?;
        Ok(())
    }
}

pub async fn status(args: StatusArgs, flags: &ConnectFlags) -> Result<()> {
    let client = connect(flags)?;
    if args.watch {
        return follow(&client, &mut WatchStatus).await;
    }
    let health = client.health().await?;
    let agents = client.list().await?;
    let mut out = anstream::stdout().lock();
    writeln!(out, "agentsd {} at {}", health.version, client.url())?;
    writeln!(out, "{}", count_by_status(&agents))?;
    if let Some(e) = &health.config_error {
        writeln!(
            out,
            "config error (the previous config is still running):\n{}",
            escape_controls_but_newlines(e)
        )?;
    }
    if let Some(n) = health.dropped_log_lines.filter(|n| *n > 0) {
        writeln!(out, "log lines dropped: {n}")?;
    }
    for p in &health.problems {
        writeln!(out, "degraded: {}", escape_controls(p))?;
    }
    Ok(())
}

fn count_by_status(agents: &[AgentSummary]) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for a in agents {
        let s = a.status.to_string();
        match counts.iter_mut().find(|(k, _)| *k == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let total = agents.len();
    let noun = if total == 1 { "agent" } else { "agents" };
    if parts.is_empty() {
        format!("{total} {noun}")
    } else {
        format!("{total} {noun}: {}", parts.join(", "))
    }
}
