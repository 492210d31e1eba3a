//! The client commands: `agents`, `logs`, `status` and `history`, all over the API.

use crate::cli::ConnectFlags;
use crate::cli::{AgentsCommand, AuditArgs, HistoryArgs, LogsArgs, StatusArgs};
use crate::client::control::{Verdict, not_reached, verdict};
use crate::client::cursors::{self, Cursors, parse_event_id};
use crate::client::follow::{Follow, LogCursor, LogItem, follow};
use crate::client::output::{
    self, LogMode, LogPrinter, LogText, escape_controls, escape_controls_but_newlines, status_style,
};
use crate::client::several::{self, Answer};
use crate::client::target::ClientFile;
use crate::client::{Client, ClientError, Controlled, ListFilter, SseFrame, local, target, top};
use crate::wire::{AgentLine, AgentSummary, Op, RemovedEvent, Status, StatusEvent};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::ops::ControlFlow;
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
    connect_named(flags).map(|(client, _)| client)
}

/// Connects, and names the context that chose the daemon, if one did.
fn connect_named(flags: &ConnectFlags) -> std::result::Result<(Client, Option<String>), ClientError> {
    // Several contexts (`--context all`, `AGENTSD_CONTEXT=a,b`) are refused
    // by `resolve`, with a usage error.
    // The client file only matters when no URL is given outright.
    let file = match target::client_file_path() {
        Some(p) if flags.url.is_none() => target::load_client_file(&p)?,
        _ => Default::default(),
    };
    let resolved = target::resolve(flags, &env, &file, &local::local_daemon)?;
    if let Some(note) = &resolved.note {
        let _ = writeln!(anstream::stderr(), "agentsd: {note}");
    }
    Ok((Client::new(resolved.target)?, resolved.context))
}

/// The environment as the client reads it: an empty variable is unset.
fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// The client file and the contexts of `--context all` or `--context a,b`
/// (or `AGENTSD_CONTEXT` set so, when no flag names a daemon); `None` for
/// one context (or none).
fn several_contexts(
    flags: &ConnectFlags,
) -> std::result::Result<Option<(ClientFile, Vec<String>)>, ClientError> {
    let Some(several) = target::several(flags, &env) else {
        return Ok(None);
    };
    // Each context is asked with its own URL, key and trust: one given
    // here would go to every host.
    if flags.url.is_some() || flags.api_key_file.is_some() || flags.ca_cert.is_some() {
        return Err(ClientError::Usage(format!(
            "{several} asks each context with its own URL, key and trust: --url, --api-key-file and --ca-cert do not go with it"
        )));
    }
    let path = target::client_file_path()
        .ok_or_else(|| ClientError::Usage("no config directory to find client.toml in (set HOME)".into()))?;
    let file = target::load_client_file(&path)?;
    let names = several::select(&file, &several.to_string(), &several.spec)?;
    Ok(Some((file, names)))
}

/// One line on stderr for each host that did not answer.
fn report_failed_hosts<T>(answers: &[Answer<T>]) {
    for a in answers {
        if let Err(e) = &a.result {
            say_host_failed(&a.host, e);
        }
    }
}

fn say_host_failed(host: &str, e: &ClientError) {
    let _ = writeln!(
        anstream::stderr(),
        "agentsd: context {}: {e}",
        escape_controls(host)
    );
}

/// `agents list --context all`: every host's agents in one table (or one
/// JSON array, each agent with its `host`), sorted by host, then id.
async fn list_several(file: &ClientFile, names: &[String], filter: &ListFilter, json: bool) -> Result<()> {
    let targets = several::targets(file, names);
    let answers = several::ask_all(
        targets,
        several::PER_HOST,
        |c| async move { c.list(filter).await },
    )
    .await;
    report_failed_hosts(&answers);
    let code = several::exit_code(&answers);
    let answered = answers.iter().any(|a| a.result.is_ok());
    let lists = answers
        .into_iter()
        .filter_map(|a| a.result.ok().map(|l| (a.host, l)))
        .collect();
    let merged = several::merge(lists);
    if json {
        print_json(&merged)?;
    } else if answered {
        let rows: Vec<(&str, &AgentSummary)> = merged.iter().map(|h| (h.host.as_str(), &h.agent)).collect();
        let mut out = buffered_stdout();
        output::host_agents_table(&mut out, &rows)?;
        out.flush()?;
    }
    code.map_or(Ok(()), |c| Err(Failure::Reported(c)))
}

pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}

/// Standard output with anstream's choice of colors, buffered: a table or
/// a JSON document goes out in a few writes, not one a line (standard
/// output flushes at every newline).
fn buffered_stdout() -> io::BufWriter<anstream::AutoStream<io::StdoutLock<'static>>> {
    io::BufWriter::with_capacity(64 * 1024, anstream::stdout().lock())
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    let mut out = buffered_stdout();
    serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::from)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

pub async fn agents(cmd: AgentsCommand, flags: &ConnectFlags) -> Result<()> {
    if let AgentsCommand::List { json, status, filter } = &cmd
        && let Some((file, names)) = several_contexts(flags)?
    {
        let filter = ListFilter {
            status: status.clone(),
            text: filter.clone(),
        };
        return list_several(&file, &names, &filter, *json).await;
    }
    let client = connect(flags)?;
    match cmd {
        AgentsCommand::List { json, status, filter } => {
            let filter = ListFilter { status, text: filter };
            let agents = client.list(&filter).await?;
            if json {
                print_json(&agents)?;
            } else {
                let mut out = buffered_stdout();
                output::agents_table(&mut out, &agents)?;
                out.flush()?;
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
                if let Some(h) = &d.config.health {
                    writeln!(out, "health: {}", esc(h))?;
                }
                if let Some(detail) = &d.summary.health_detail {
                    writeln!(out, "last failed probe: {}", esc(detail))?;
                }
                if !d.config.depends_on.is_empty() {
                    let deps: Vec<String> = d
                        .config
                        .depends_on
                        .iter()
                        .map(|(id, cond)| format!("{id} ({cond})"))
                        .collect();
                    writeln!(out, "depends on: {}", esc(&deps.join(", ")))?;
                }
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
        AgentsCommand::Start(args) => control(&client, Op::Start, args.ids, args.all).await?,
        AgentsCommand::Stop(args) => control(&client, Op::Stop, args.ids, args.all).await?,
        AgentsCommand::Restart(args) => control(&client, Op::Restart, args.ids, args.all).await?,
        AgentsCommand::Add(args) => super::edits::add(&client, args).await?,
        AgentsCommand::Edit { id } => super::edits::edit(&client, &id).await?,
        AgentsCommand::Rm { id } => super::edits::rm(&client, &id).await?,
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

/// Whether an agent that just changed to `s` may have settled (then its
/// summary tells): a status event has no desired state, and only that tells
/// a restart between its stop and its start from an agent that a later
/// request stopped.
fn may_settle(op: Op, s: Status) -> bool {
    match op {
        Op::Start | Op::Restart => {
            matches!(
                s,
                Status::Running | Status::Failed | Status::Exited | Status::Stopped
            )
        }
        Op::Stop => s != Status::Stopping,
    }
}

fn print_reached(id: &str, a: &AgentSummary) -> Result<()> {
    let mut out = anstream::stdout().lock();
    let st = status_style(a.status);
    let pid = a.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
    writeln!(out, "{id}: {st}{}{st:#}{pid}", a.status)?;
    Ok(())
}

fn print_failure(id: &str, e: &ClientError) {
    let _ = writeln!(anstream::stderr(), "agentsd: {id}: {e}");
}

/// Runs `op` on every agent named (or on all), concurrently over one
/// connection; reports each result on its own line, follows `/sse/status`
/// for the agents the daemon could not wait for, and fails with the code of
/// the first failure (in the order the ids were given).
async fn control(client: &Client, op: Op, ids: Vec<String>, all: bool) -> Result<()> {
    let ids = if all {
        client
            .list(&ListFilter::default())
            .await?
            .into_iter()
            .map(|a| a.id)
            .collect()
    } else {
        // Connect once first: HTTP/2 then carries every request below over
        // this one connection, instead of one TLS handshake per agent.
        if ids.len() > 1 {
            client.health().await?;
        }
        ids
    };
    let answers = futures_util::future::join_all(ids.iter().map(|id| client.control(id, op))).await;
    let mut failures: Vec<Option<u8>> = vec![None; ids.len()];
    let mut pending = BTreeMap::new();
    for (i, (id, answer)) in ids.iter().zip(answers).enumerate() {
        let failed = match answer {
            Ok(Controlled {
                summary,
                pending: true,
            }) => {
                let _ = writeln!(
                    anstream::stderr(),
                    "agentsd: {id}: still {} when the daemon answered; waiting",
                    summary.status
                );
                pending.insert(id.clone(), i);
                None
            }
            Ok(Controlled { summary, .. }) => match verdict(op, &summary) {
                Verdict::Reached => {
                    print_reached(id, &summary)?;
                    None
                }
                _ => Some(not_reached(op, &summary)),
            },
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            print_failure(id, &e);
            failures[i] = Some(e.exit_code());
        }
    }
    if !pending.is_empty() {
        let mut wait = AwaitStates {
            op,
            pending,
            failures: &mut failures,
        };
        follow(client, &mut wait).await?;
    }
    match failures.into_iter().flatten().next() {
        Some(code) => Err(Failure::Reported(code)),
        None => Ok(()),
    }
}

/// Follows `/sse/status` until every pending agent got where it was asked
/// to be, or settled elsewhere.
struct AwaitStates<'a> {
    op: Op,
    /// Agent id -> its place in the command line.
    pending: BTreeMap<String, usize>,
    failures: &'a mut Vec<Option<u8>>,
}

impl AwaitStates<'_> {
    fn settle(&mut self, id: &str, outcome: std::result::Result<&AgentSummary, ClientError>) -> Result<()> {
        let Some(i) = self.pending.remove(id) else {
            return Ok(());
        };
        match outcome {
            Ok(a) => match verdict(self.op, a) {
                Verdict::Reached => print_reached(id, a)?,
                _ => {
                    let e = not_reached(self.op, a);
                    print_failure(id, &e);
                    self.failures[i] = Some(e.exit_code());
                }
            },
            Err(e) => {
                print_failure(id, &e);
                self.failures[i] = Some(e.exit_code());
            }
        }
        Ok(())
    }

    fn judge(&mut self, a: &AgentSummary) -> Result<()> {
        if self.pending.contains_key(&a.id) && verdict(self.op, a) != Verdict::Underway {
            self.settle(&a.id.clone(), Ok(a))?;
        }
        Ok(())
    }
}

impl Follow for AwaitStates<'_> {
    type Error = Failure;

    fn reconnecting(&mut self, e: &ClientError, delay: Duration) {
        say_reconnecting(e, delay);
    }

    fn request(&self) -> (String, Option<String>) {
        ("/sse/status".into(), None)
    }

    async fn event(&mut self, client: &Client, ev: SseFrame) -> Result<ControlFlow<()>> {
        let unexpected =
            |e: serde_json::Error| ClientError::Server(format!("unexpected {} event: {e}", ev.name));
        match ev.name.as_str() {
            "snapshot" => {
                let agents: Vec<AgentSummary> = serde_json::from_str(&ev.data).map_err(unexpected)?;
                for a in &agents {
                    self.judge(a)?;
                }
                let gone: Vec<String> = self
                    .pending
                    .keys()
                    .filter(|id| !agents.iter().any(|a| &a.id == *id))
                    .cloned()
                    .collect();
                for id in gone {
                    let e = ClientError::NotFound(format!("no agent named {id:?} any more"));
                    self.settle(&id, Err(e))?;
                }
            }
            "summary" => {
                let a: AgentSummary = serde_json::from_str(&ev.data).map_err(unexpected)?;
                self.judge(&a)?;
            }
            "status" => {
                let e: StatusEvent = serde_json::from_str(&ev.data).map_err(unexpected)?;
                if self.pending.contains_key(&e.agent_id) && may_settle(self.op, e.new_status) {
                    match client.show(&e.agent_id).await {
                        Ok(d) => self.judge(&d.summary)?,
                        Err(err) => self.settle(&e.agent_id, Err(err))?,
                    }
                }
            }
            "removed" => {
                let r: RemovedEvent = serde_json::from_str(&ev.data).map_err(unexpected)?;
                if self.pending.contains_key(&r.agent_id) {
                    let e = ClientError::NotFound(format!("no agent named {:?} any more", r.agent_id));
                    self.settle(&r.agent_id, Err(e))?;
                }
            }
            _ => {}
        }
        Ok(if self.pending.is_empty() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    }
}

/// Says on stderr that a stream broke and when it is opened again.
fn say_reconnecting(e: &ClientError, delay: Duration) {
    let _ = writeln!(
        anstream::stderr(),
        "agentsd: {e}; reconnecting in {}ms",
        delay.as_millis()
    );
}

struct FollowLogs {
    printer: LogPrinter,
    /// Every (re)connection resumes right after the last line printed.
    at: LogCursor,
}

impl Follow for FollowLogs {
    type Error = Failure;

    fn request(&self) -> (String, Option<String>) {
        self.at.request()
    }

    async fn event(&mut self, _: &Client, ev: SseFrame) -> Result<ControlFlow<()>> {
        match self.at.take(ev) {
            Some(LogItem::Line { cursor, text }) => {
                print_lines(&[self.printer.line(self.at.id(), cursor, &text)])?;
            }
            Some(LogItem::Gap(data)) => {
                let _ = writeln!(
                    anstream::stderr(),
                    "agentsd: some lines were rotated away before they could be shown ({})",
                    escape_controls(&data)
                );
            }
            None => {}
        }
        Ok(ControlFlow::Continue(()))
    }

    fn reconnecting(&mut self, e: &ClientError, delay: Duration) {
        say_reconnecting(e, delay);
    }
}

/// Writes lines made by a `LogPrinter`. Not through anstream: it would
/// strip escape sequences from log lines when stdout is not a terminal.
fn print_lines(lines: &[String]) -> Result<()> {
    let mut out = io::stdout().lock();
    for l in lines {
        out.write_all(l.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

pub async fn logs(args: LogsArgs, flags: &ConnectFlags) -> Result<()> {
    let client = connect(flags)?;
    match args.ids.as_slice() {
        [id] if !args.all => one_log(&client, id, &args).await,
        _ => several_logs(&client, &args).await,
    }
}

/// One agent: its own routes, lines without a prefix.
async fn one_log(client: &Client, id: &str, args: &LogsArgs) -> Result<()> {
    // The recent lines come from the plain route, with the cursor after the
    // last of them; following starts from that cursor, so nothing written in
    // between (or while reconnecting) is missed.
    let (lines, at) = LogCursor::tail(client, id, args.lines).await?;
    let mode = if args.json { LogMode::Json } else { LogMode::Bare };
    let mut printer = LogPrinter::for_stdout(mode, args.raw);
    let shown: Vec<String> = lines
        .iter()
        .map(|l| printer.line(id, l.cursor, &l.text))
        .collect();
    print_lines(&shown)?;
    if !args.follow {
        return Ok(());
    }
    let mut f = FollowLogs { printer, at };
    match follow(client, &mut f).await {
        Err(Failure::Client(ClientError::NotFound(_))) => {
            Err(ClientError::NotFound(format!("no agent named {id:?}")).into())
        }
        other => other,
    }
}

/// Several agents (or all): each one's recent lines, fetched over one
/// connection, then with -f one `/sse/logs` stream for all of them that
/// resumes each agent from its own cursor after a reconnection.
async fn several_logs(client: &Client, args: &LogsArgs) -> Result<()> {
    let ids: Vec<String> = if args.all {
        client
            .list(&ListFilter::default())
            .await?
            .into_iter()
            .map(|a| a.id)
            .collect()
    } else {
        // Connect once first: HTTP/2 then carries every request below over
        // this one connection, instead of one TLS handshake per agent.
        client.health().await?;
        let mut seen = std::collections::BTreeSet::new();
        args.ids
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .cloned()
            .collect()
    };
    let mode = if args.json {
        LogMode::Json
    } else {
        LogMode::Prefixed
    };
    let mut printer = LogPrinter::for_stdout(mode, args.raw);
    printer.width = ids.iter().map(String::len).max().unwrap_or(0);
    let mut cursors = Cursors::default();
    let mut followed = Vec::new();
    let mut failures: Vec<u8> = Vec::new();
    // In the order given, a few requests at a time; each agent's lines are
    // printed as its answer comes, so that memory holds a few agents' lines,
    // not all of them. One line is always fetched for the cursor.
    let n = args.lines.max(1);
    let mut tails =
        futures_util::stream::iter(ids.iter().map(|id| async move { (id, client.logs(id, n).await) }))
            .buffered(16);
    while let Some((id, tail)) = tails.next().await {
        match tail {
            Ok(mut lines) => {
                cursors.set(id, lines.last().map_or(0, |l| l.cursor));
                followed.push(id.clone());
                if args.lines == 0 {
                    lines.clear();
                }
                let shown: Vec<String> = lines
                    .iter()
                    .map(|l| printer.line(id, l.cursor, &l.text))
                    .collect();
                print_lines(&shown)?;
            }
            // Removed since the list was read.
            Err(ClientError::NotFound(_)) if args.all => {}
            Err(e) => {
                print_failure(id, &e);
                failures.push(e.exit_code());
            }
        }
    }
    if let Some(code) = failures.first() {
        return Err(Failure::Reported(*code));
    }
    if !args.follow {
        return Ok(());
    }
    let mut f = FollowMany {
        ids: (!args.all).then_some(followed),
        n: args.lines,
        cursors,
        printer,
    };
    follow(client, &mut f).await
}

/// Follows `/sse/logs`: every agent's lines in one stream.
struct FollowMany {
    /// The agents named; `None` for every agent, those added later too.
    ids: Option<Vec<String>>,
    /// How many recent lines an agent the stream has no cursor for starts with.
    n: u64,
    /// Where each agent stands: a reconnection resumes each from there.
    cursors: Cursors,
    printer: LogPrinter,
}

impl FollowMany {
    /// `/sse/logs?` with the agents or `n`, ready for `after=`.
    fn base(&self) -> String {
        let mut path = String::from("/sse/logs?");
        match &self.ids {
            Some(ids) => {
                for id in ids {
                    path.push_str(&format!("agent={id}&"));
                }
            }
            None => path.push_str(&format!("n={}&", self.n)),
        }
        path
    }

    /// `after=` for every cursor, if they fit in one request line
    /// (`None`: they go in a POST's body).
    fn after(&self, base: &str) -> Option<String> {
        let budget = cursors::MAX_TARGET.saturating_sub(base.len() + "after=".len());
        let (after, left_out) = self.cursors.after(budget);
        (left_out == 0).then_some(after)
    }
}

impl Follow for FollowMany {
    type Error = Failure;

    fn reconnecting(&mut self, e: &ClientError, delay: Duration) {
        say_reconnecting(e, delay);
    }

    fn request(&self) -> (String, Option<String>) {
        let mut path = self.base();
        // Ids are [a-z0-9_-] and cursors digits: nothing to escape.
        match self.after(&path) {
            Some(after) if !after.is_empty() => {
                path.push_str("after=");
                path.push_str(&after);
            }
            _ => {
                path.pop();
            }
        }
        (path, None)
    }

    /// Cursors that do not fit in the request line go in a POST's body.
    fn body(&self) -> Option<String> {
        self.after(&self.base()).is_none().then(|| self.cursors.body())
    }

    async fn event(&mut self, _: &Client, ev: SseFrame) -> Result<ControlFlow<()>> {
        let unexpected = |what: String| ClientError::Server(format!("unexpected {} event: {what}", ev.name));
        match ev.name.as_str() {
            "line" => {
                let l: AgentLine = serde_json::from_str(&ev.data).map_err(|e| unexpected(e.to_string()))?;
                let (agent, cursor) =
                    parse_event_id(&ev.id).ok_or_else(|| unexpected(format!("id {:?}", ev.id)))?;
                print_lines(&[self.printer.line(&l.agent, cursor, &l.line)])?;
                self.cursors.set(agent, cursor);
            }
            "gap" => {
                #[derive(serde::Deserialize)]
                struct Gap {
                    agent: String,
                    from: u64,
                    to: u64,
                }
                let g: Gap = serde_json::from_str(&ev.data).map_err(|e| unexpected(e.to_string()))?;
                let _ = writeln!(
                    anstream::stderr(),
                    "agentsd: {}: some lines were rotated away before they could be shown (cursor {} to {})",
                    escape_controls(&g.agent),
                    g.from,
                    g.to
                );
                let (agent, cursor) = parse_event_id(&ev.id).unwrap_or((&g.agent, g.to));
                self.cursors.set(agent, cursor);
            }
            _ => {}
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// `top`: the dashboard, once the daemon answered (so that an unreachable
/// daemon, a refused key or certificate are one line with their exit code,
/// as with every command, before the screen is taken).
pub async fn top(flags: &ConnectFlags) -> Result<()> {
    use std::io::IsTerminal;
    // Several contexts: checked (and their keys read) before the screen is
    // taken, as one context's connection is.
    let several = several_contexts(flags)?;
    if !io::stdin().is_terminal() || !io::stdout().is_terminal() {
        let watch = match &several {
            Some(_) => " --context ...",
            None => "",
        };
        return Err(ClientError::Usage(format!(
            "agentsd top needs a terminal; in a script, use `agentsd status --watch{watch} --json`"
        ))
        .into());
    }
    let color = anstream::AutoStream::choice(&io::stdout()) != anstream::ColorChoice::Never;
    let daemons = match several {
        // Each host with its own client; one that cannot have one (no key,
        // an invalid URL) is shown failed, the others followed.
        Some((file, names)) => top::Daemons::Several(
            several::targets(&file, &names)
                .into_iter()
                .map(|(host, target)| (host, target.and_then(Client::new)))
                .collect(),
        ),
        None => {
            let (client, context) = connect_named(flags)?;
            let identity = client.whoami().await?;
            top::Daemons::One {
                client,
                identity,
                context,
            }
        }
    };
    // The contexts `c` offers. A client file that cannot be read offers
    // none (connecting above said why, if it mattered).
    let contexts = target::client_file_path()
        .and_then(|p| target::load_client_file(&p).ok())
        .map(|f| {
            f.contexts
                .into_iter()
                .map(|(name, c)| top::ContextEntry { name, url: c.url })
                .collect()
        })
        .unwrap_or_default();
    let start = top::Start {
        daemons,
        contexts,
        color,
    };
    top::run(start).await.map_err(|e| match e {
        top::Error::Client(e) => Failure::Client(e),
        top::Error::Io(e) => Failure::Io(e),
    })
}

pub async fn history(args: HistoryArgs, flags: &ConnectFlags) -> Result<()> {
    let client = connect(flags)?;
    let entries = client.history(&args.id, args.lines).await?;
    journal(entries, args.json, "-- no status changes --", output::history)
}

/// How often `upgrade` asks whether the new image answers.
const UPGRADE_POLL: Duration = Duration::from_millis(20);

pub async fn upgrade(args: crate::cli::UpgradeArgs, flags: &ConnectFlags) -> Result<()> {
    let client = connect(flags)?;
    let before = client.health().await?;
    let t0 = std::time::Instant::now();
    let started = client.upgrade().await?;
    // The new image answers on the same socket; until then connections
    // wait (an error meanwhile is tried again until the deadline).
    let deadline = t0 + Duration::from_secs(args.timeout);
    let after = loop {
        let last = match client.health().await {
            Ok(h) if h.upgraded_at.is_some() && h.upgraded_at != before.upgraded_at => break h,
            Ok(_) => "the daemon still answers as before".to_string(),
            Err(e) => e.to_string(),
        };
        if std::time::Instant::now() >= deadline {
            return Err(ClientError::NotReached(format!(
                "the upgrade to agentsd {} did not answer within {} s ({last}); see the daemon's log",
                started.to, args.timeout
            ))
            .into());
        }
        tokio::time::sleep(UPGRADE_POLL).await;
    };
    let away_ms = t0.elapsed().as_millis() as u64;
    if after.pid != Some(started.pid) {
        return Err(ClientError::Server(format!(
            "the daemon answers with pid {:?}, not {}: it was restarted, not upgraded in place",
            after.pid, started.pid
        ))
        .into());
    }
    let mut out = anstream::stdout();
    if args.json {
        let v = serde_json::json!({"from": started.from, "to": after.version, "pid": started.pid, "away_ms": away_ms});
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "agentsd {} -> {} upgraded in place (pid {}); answering again after {away_ms} ms",
            started.from, after.version, started.pid
        )?;
    }
    Ok(())
}

pub async fn audit(args: AuditArgs, flags: &ConnectFlags) -> Result<()> {
    let client = connect(flags)?;
    let entries = client.audit(args.lines).await?;
    journal(entries, args.json, "-- no audit entries --", output::audit)
}

/// Entries the API answered newest first, printed oldest first like
/// journalctl (the latest ends up next to the prompt, and `tail` keeps
/// it): one JSON object a line, or a table.
fn journal<T: serde::Serialize>(
    mut entries: Vec<T>,
    json: bool,
    none: &str,
    table: fn(&mut dyn Write, &[T]) -> io::Result<()>,
) -> Result<()> {
    entries.reverse();
    if json {
        json_lines(&entries)?;
    } else if entries.is_empty() {
        writeln!(anstream::stdout(), "{none}")?;
    } else {
        let mut out = buffered_stdout();
        table(&mut out, &entries)?;
        out.flush()?;
    }
    Ok(())
}

/// One JSON object a line, as the API sent each.
fn json_lines<T: serde::Serialize>(items: &[T]) -> io::Result<()> {
    let mut out = io::BufWriter::new(io::stdout().lock());
    for e in items {
        serde_json::to_writer(&mut out, e).map_err(io::Error::from)?;
        writeln!(out)?;
    }
    out.flush()
}

struct WatchStatus {
    json: bool,
    /// With several contexts, the context whose stream this is: it leads
    /// every line (a `host` field in JSON).
    host: Option<String>,
}

impl Follow for WatchStatus {
    type Error = Failure;

    fn reconnecting(&mut self, e: &ClientError, delay: Duration) {
        match &self.host {
            Some(host) => {
                let _ = writeln!(
                    anstream::stderr(),
                    "agentsd: context {}: {e}; reconnecting in {}ms",
                    escape_controls(host),
                    delay.as_millis()
                );
            }
            None => say_reconnecting(e, delay),
        }
    }

    fn request(&self) -> (String, Option<String>) {
        ("/sse/status".into(), None)
    }

    /// With several hosts, one that accepts and never answers is said and
    /// tried again, while the others follow on.
    fn retry_unanswered(&self) -> bool {
        self.host.is_some()
    }

    async fn event(&mut self, _: &Client, ev: SseFrame) -> Result<ControlFlow<()>> {
        let unexpected =
            |e: serde_json::Error| ClientError::Server(format!("unexpected {} event: {e}", ev.name));
        if self.json {
            // The status events as the API sends them, one a line (parsed
            // and written again, so that each is one line of valid JSON).
            let mut v = match ev.name.as_str() {
                // Told apart from a status event by `new_health`.
                "status" | "health" => {
                    serde_json::from_str::<serde_json::Value>(&ev.data).map_err(unexpected)?
                }
                // Told apart from a status event by `removed`.
                "removed" => {
                    let r: RemovedEvent = serde_json::from_str(&ev.data).map_err(unexpected)?;
                    serde_json::json!({"agent_id": r.agent_id, "removed": true, "at": r.at})
                }
                _ => return Ok(ControlFlow::Continue(())),
            };
            if let (Some(host), Some(obj)) = (&self.host, v.as_object_mut()) {
                obj.insert("host".into(), host.as_str().into());
            }
            let mut out = io::stdout().lock();
            writeln!(out, "{v}")?;
            out.flush()?;
            return Ok(ControlFlow::Continue(()));
        }
        // With several contexts, each line is led by its host.
        let lead = self
            .host
            .as_deref()
            .map(|h| format!("{} ", escape_controls(h)))
            .unwrap_or_default();
        let mut out = anstream::stdout().lock();
        match ev.name.as_str() {
            "snapshot" => {
                let agents: Vec<AgentSummary> = serde_json::from_str(&ev.data).map_err(unexpected)?;
                match &self.host {
                    Some(host) => {
                        let rows: Vec<_> = agents.iter().map(|a| (host.as_str(), a)).collect();
                        output::host_agents_table(&mut out, &rows)?;
                    }
                    None => output::agents_table(&mut out, &agents)?,
                }
            }
            "status" => {
                let e: StatusEvent = serde_json::from_str(&ev.data).map_err(unexpected)?;
                let (a, b) = (status_style(e.old_status), status_style(e.new_status));
                let pid = e.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                writeln!(
                    out,
                    "{lead}{} {}: {a}{}{a:#} -> {b}{}{b:#}{pid}",
                    e.at, e.agent_id, e.old_status, e.new_status
                )?;
            }
            "removed" => {
                let r: RemovedEvent = serde_json::from_str(&ev.data).map_err(unexpected)?;
                writeln!(out, "{lead}{} {}: removed from the config", r.at, r.agent_id)?;
            }
            "health" => {
                let e: crate::wire::HealthEvent = serde_json::from_str(&ev.data).map_err(unexpected)?;
                let name = |h: Option<crate::wire::HealthState>| h.map_or("none", |h| h.as_str());
                let b = output::health_style(e.new_health);
                // A failure says why; a pass has nothing to add.
                let detail = match (e.new_health, &e.detail) {
                    (Some(crate::wire::HealthState::Healthy) | None, _) | (_, None) => String::new(),
                    (_, Some(d)) => format!(": {}", escape_controls(d)),
                };
                writeln!(
                    out,
                    "{lead}{} {}: health {} -> {b}{}{b:#}{detail}",
                    e.at,
                    e.agent_id,
                    name(e.old_health),
                    name(e.new_health)
                )?;
            }
            _ => {}
        }
        out.flush()?;
        Ok(ControlFlow::Continue(()))
    }
}

/// `status --json`: one daemon's health and its agents counted by status
/// (with `host` when several contexts are asked).
#[derive(serde::Serialize)]
struct StatusJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    url: &'a str,
    health: &'a crate::wire::Health,
    agents: usize,
    by_status: BTreeMap<&'a str, usize>,
}

impl<'a> StatusJson<'a> {
    fn new(
        host: Option<&'a str>,
        url: &'a str,
        health: &'a crate::wire::Health,
        agents: &[AgentSummary],
    ) -> Self {
        // Every status named, 0 included.
        let mut by_status: BTreeMap<&str, usize> = Status::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for a in agents {
            *by_status.entry(a.status.as_str()).or_default() += 1;
        }
        StatusJson {
            host,
            url,
            health,
            agents: agents.len(),
            by_status,
        }
    }
}

/// `status --context all`: one line per host (or one JSON object a line),
/// in name order.
async fn status_several(file: &ClientFile, names: &[String], json: bool) -> Result<()> {
    let targets = several::targets(file, names);
    let answers = several::ask_all(targets, several::PER_HOST, |c| async move {
        let all = ListFilter::default();
        let (health, agents) = tokio::join!(c.health(), c.list(&all));
        Ok((c.url().to_string(), health?, agents?))
    })
    .await;
    report_failed_hosts(&answers);
    let code = several::exit_code(&answers);
    let answered: Vec<_> = answers
        .iter()
        .filter_map(|a| a.result.as_ref().ok().map(|r| (a.host.as_str(), r)))
        .collect();
    if json {
        let mut out = io::BufWriter::new(io::stdout().lock());
        for (host, (url, health, agents)) in &answered {
            let v = StatusJson::new(Some(host), url, health, agents);
            serde_json::to_writer(&mut out, &v).map_err(io::Error::from)?;
            writeln!(out)?;
        }
        out.flush()?;
    } else if !answered.is_empty() {
        let rows: Vec<output::HostStatusRow> = answered
            .iter()
            .map(|(host, (url, health, agents))| output::HostStatusRow {
                host: host.to_string(),
                health: health.status.clone(),
                version: health.version.clone(),
                url: url.clone(),
                agents: count_by_status(agents),
            })
            .collect();
        let mut out = buffered_stdout();
        output::host_status_table(&mut out, &rows)?;
        out.flush()?;
    }
    code.map_or(Ok(()), |c| Err(Failure::Reported(c)))
}

/// `status --watch --context all`: every host's stream at once, each event
/// led by its host. A host that fails is one line on stderr; the others
/// follow on. Ends when every host's stream ended, with the first failed
/// host's code.
async fn watch_several(file: &ClientFile, names: &[String], json: bool) -> Result<()> {
    use futures_util::stream::FuturesUnordered;
    let mut follows: FuturesUnordered<_> = several::targets(file, names)
        .into_iter()
        .enumerate()
        .map(|(i, (host, target))| async move {
            let mut watch = WatchStatus {
                json,
                host: Some(host),
            };
            let ended = match target.and_then(Client::new) {
                Ok(client) => follow(&client, &mut watch).await,
                Err(e) => Err(Failure::Client(e)),
            };
            (i, watch.host.unwrap_or_default(), ended)
        })
        .collect();
    let mut codes: Vec<Option<u8>> = vec![None; names.len()];
    while let Some((i, host, ended)) = follows.next().await {
        match ended {
            Ok(()) => {}
            // Standard output is gone: nothing more to show.
            Err(Failure::Io(e)) => return Err(Failure::Io(e)),
            Err(Failure::Client(e)) => {
                say_host_failed(&host, &e);
                codes[i] = Some(e.exit_code());
            }
            Err(Failure::Reported(c)) => codes[i] = Some(c),
        }
    }
    codes
        .into_iter()
        .flatten()
        .next()
        .map_or(Ok(()), |c| Err(Failure::Reported(c)))
}

pub async fn status(args: StatusArgs, flags: &ConnectFlags) -> Result<()> {
    if let Some((file, names)) = several_contexts(flags)? {
        return if args.watch {
            watch_several(&file, &names, args.json).await
        } else {
            status_several(&file, &names, args.json).await
        };
    }
    let client = connect(flags)?;
    if args.watch {
        return follow(
            &client,
            &mut WatchStatus {
                json: args.json,
                host: None,
            },
        )
        .await;
    }
    let health = client.health().await?;
    let agents = client.list(&ListFilter::default()).await?;
    if args.json {
        let v = StatusJson::new(None, client.url(), &health, &agents);
        let mut out = io::stdout().lock();
        serde_json::to_writer(&mut out, &v).map_err(io::Error::from)?;
        writeln!(out)?;
        out.flush()?;
        return Ok(());
    }
    let mut out = anstream::stdout().lock();
    write!(out, "agentsd {} at {}", health.version, client.url())?;
    match (health.pid, &health.started_at) {
        (Some(pid), Some(at)) => {
            write!(out, " (pid {pid}, serving since {}", escape_controls(at))?;
            if let Some(Some(up)) = &health.upgraded_at {
                write!(out, ", upgraded in place {}", escape_controls(up))?;
            }
            writeln!(out, ")")?
        }
        _ => writeln!(out)?,
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_event_may_settle_a_request() {
        assert!(!may_settle(Op::Stop, Status::Stopping));
        assert!(may_settle(Op::Stop, Status::Stopped));
        assert!(!may_settle(Op::Start, Status::Starting));
        assert!(may_settle(Op::Restart, Status::Stopped));
    }
}
