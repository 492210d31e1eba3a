//! The dashboard's model: every agent as the daemon last told it, what is
//! shown of them (filter, sort, selection, scroll), the log pane, recent
//! status and health changes, and what each key does. No I/O and no clock of its own:
//! the event loop feeds it events, keys and the time, and carries out the
//! [`Effect`]s it asks for.

use crate::client::control::{Verdict, not_reached, verdict};
use crate::client::output::escape_controls;
use crate::client::{ClientError, Controlled, Identity};
pub use crate::wire::Role;
use crate::wire::{
    AgentSummary, HealthEvent, HealthState, Op, RemovedEvent, ResourcesEvent, Status, StatusEvent,
};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Status and health changes kept for the events pane.
pub const EVENTS_KEPT: usize = 200;
/// Lines kept in the log pane.
pub const LOG_KEPT: usize = 2000;
/// How many recent lines the log pane starts with.
pub const LOG_TAIL: u64 = 200;

/// One agent as the daemon last described it.
#[derive(Debug, Clone)]
pub struct Agent {
    pub summary: AgentSummary,
    /// When `summary.uptime_s` was current: the uptime shown ticks on from
    /// there, with no clock of the daemon's to compare with.
    pub since: Instant,
}

impl Agent {
    /// Seconds up, now; `None` when nothing runs.
    pub fn uptime(&self, now: Instant) -> Option<u64> {
        if !matches!(self.summary.status, Status::Running | Status::Starting) {
            return None;
        }
        let up = self.summary.uptime_s?;
        Some(up + now.saturating_duration_since(self.since).as_secs())
    }

    /// When it started, as an instant here (for sorting by uptime).
    fn started(&self) -> Option<Instant> {
        let up = self.summary.uptime_s?;
        self.since.checked_sub(Duration::from_secs(up))
    }
}

/// What the key may do, as `/whoami` said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    pub name: Option<String>,
    /// `None` until `/whoami` answered, from a daemon without roles (404),
    /// or for a role this client does not know: then every key is let try
    /// everything, and the daemon decides.
    pub role: Option<Role>,
}

impl Access {
    pub fn from_identity(id: Option<Identity>) -> Access {
        match id {
            None => Access::default(),
            Some(i) => Access {
                role: i.role.parse::<Role>().ok(),
                name: i.name,
            },
        }
    }

    /// Whether start, stop and restart are offered.
    pub fn can_control(&self) -> bool {
        self.role != Some(Role::Read)
    }

    /// The key's name and role, for the header.
    pub fn describe(&self) -> Option<String> {
        let role = self.role.map(|r| match r {
            Role::Read => "read-only",
            Role::Operate => "operate",
            Role::Admin => "admin",
        });
        match (&self.name, role) {
            (Some(n), Some(r)) => Some(format!("{} ({r})", escape_controls(n))),
            (Some(n), None) => Some(escape_controls(n).into_owned()),
            (None, Some(r)) => Some(r.to_string()),
            (None, None) => None,
        }
    }
}

/// The status stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Connecting,
    Live,
    /// Lost; why, as the follower said.
    Reconnecting(String),
    /// Ended for good (a refused key or certificate, a context without a
    /// key): with several hosts, that host's; one host's ends `top`.
    Failed(String),
}

/// With several contexts (`top --context all`), one host as the dashboard
/// follows it: its own stream and its own key's rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub link: Link,
    pub access: Access,
}

/// An agent's key in [`State::agents`] with several hosts: `host/id` (an
/// agent id has no `/`, so the last one splits it).
pub fn host_key(host: &str, id: &str) -> String {
    format!("{host}/{id}")
}

/// The host (with several) and the agent id of a key of [`State::agents`].
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.rsplit_once('/') {
        Some((host, id)) => (Some(host), id),
        None => (None, key),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Id,
    /// Trouble first: failed, backoff, starting, waiting, stopping, exited,
    /// stopped, running; within a status, unhealthy first, then starting.
    Status,
    Cpu,
    Mem,
    Restarts,
    /// Most recently started first.
    Uptime,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::Id => Sort::Status,
            Sort::Status => Sort::Cpu,
            Sort::Cpu => Sort::Mem,
            Sort::Mem => Sort::Restarts,
            Sort::Restarts => Sort::Uptime,
            Sort::Uptime => Sort::Id,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sort::Id => "id",
            Sort::Status => "status",
            Sort::Cpu => "cpu",
            Sort::Mem => "memory",
            Sort::Restarts => "restarts",
            Sort::Uptime => "uptime",
        }
    }
}

fn trouble(s: Status) -> u8 {
    match s {
        Status::Failed => 0,
        Status::Backoff => 1,
        Status::Starting => 2,
        Status::Waiting => 3,
        Status::Stopping => 4,
        Status::Exited => 5,
        Status::Stopped => 6,
        Status::Running => 7,
    }
}

/// Within a status: an agent whose probe fails before one still starting,
/// before one that is healthy or has no probe.
fn sickness(h: Option<HealthState>) -> u8 {
    match h {
        Some(HealthState::Unhealthy) => 0,
        Some(HealthState::Starting) => 1,
        Some(HealthState::Healthy) | None => 2,
    }
}

/// A line of the events pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Status(StatusEvent),
    /// Only to healthy or unhealthy: starting and none come with a status
    /// change (as in the agent's history).
    Health(HealthEvent),
}

/// What the screen shows besides the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing the filter.
    Filter,
    /// "Stop this agent?", waiting for y or n.
    Confirm(String),
    Help,
    /// Choosing a context; the index of the one under the cursor.
    Contexts(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Dashboard,
    /// The log pane, full screen.
    Log,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub text: String,
    pub error: bool,
}

/// The selected agent's log.
#[derive(Debug, Default)]
pub struct LogPane {
    /// The agent whose lines these are.
    pub agent: Option<String>,
    /// Escaped, tabs expanded: ready to show.
    pub lines: VecDeque<String>,
    /// Lines scrolled back from the end; 0 follows the end.
    pub back: usize,
    /// Loading, reconnecting, or why it stopped.
    pub note: Option<String>,
}

impl LogPane {
    fn push(&mut self, line: String) {
        if self.lines.len() == LOG_KEPT {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
        // Scrolled back, the same lines stay in view.
        if self.back > 0 {
            self.back = (self.back + 1).min(self.lines.len());
        }
    }
}

/// A log line made safe to show: control characters escaped, tabs expanded.
pub fn shown_line(text: &str) -> String {
    let s = escape_controls(text);
    if !s.contains('\t') {
        return s.into_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\t' {
            let pad = 8 - out.chars().count() % 8;
            out.extend(std::iter::repeat_n(' ', pad));
        } else {
            out.push(c);
        }
    }
    out
}

/// What the event loop is asked to do after a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Quit,
    Control { id: String, op: Op },
    SwitchContext(String),
}

/// A context of the client file, as the switcher lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEntry {
    pub name: String,
    pub url: String,
}

pub struct State {
    pub url: String,
    /// With several contexts: every host by name; the agents are keyed
    /// `host/id` ([`host_key`]). `None`: one daemon, agents keyed by id.
    pub hosts: Option<std::collections::BTreeMap<String, Host>>,
    /// The context that chose the daemon, if one did.
    pub context: Option<String>,
    pub contexts: Vec<ContextEntry>,
    pub access: Access,
    pub link: Link,
    pub agents: HashMap<String, Agent>,
    /// The ids shown, filtered and sorted.
    rows: Vec<String>,
    /// Index in `rows` of the selected agent.
    cursor: usize,
    /// The selected agent: the selection follows it when rows move.
    selected: Option<String>,
    /// First row in view, and how many fit.
    offset: usize,
    page: usize,
    pub filter: String,
    pub sort: Sort,
    /// Newest first.
    pub events: VecDeque<Transition>,
    pub log: LogPane,
    /// Start, stop or restart under way, by agent.
    pub inflight: HashMap<String, Op>,
    pub message: Option<Message>,
    pub mode: Mode,
    pub screen: Screen,
    /// Whether to use colour (NO_COLOR, `--color`).
    pub color: bool,
}

impl State {
    pub fn new(url: String, context: Option<String>, contexts: Vec<ContextEntry>, color: bool) -> State {
        State {
            url,
            hosts: None,
            context,
            contexts,
            access: Access::default(),
            link: Link::Connecting,
            agents: HashMap::new(),
            rows: Vec::new(),
            cursor: 0,
            selected: None,
            offset: 0,
            page: 1,
            filter: String::new(),
            sort: Sort::Id,
            events: VecDeque::new(),
            log: LogPane::default(),
            inflight: HashMap::new(),
            message: None,
            mode: Mode::Normal,
            screen: Screen::Dashboard,
            color,
        }
    }

    /// A dashboard over several hosts (the contexts `names`), each
    /// connecting.
    pub fn several(names: impl IntoIterator<Item = String>, color: bool) -> State {
        let mut s = State::new(String::new(), None, Vec::new(), color);
        s.hosts = Some(
            names
                .into_iter()
                .map(|n| {
                    let host = Host {
                        link: Link::Connecting,
                        access: Access::default(),
                    };
                    (n, host)
                })
                .collect(),
        );
        s
    }

    /// With several hosts, the hosts not live now (connecting, reconnecting
    /// or failed), in name order: each is a line of the agents pane.
    pub fn hosts_down(&self) -> Vec<(&str, &Link)> {
        self.hosts
            .iter()
            .flatten()
            .filter(|(_, h)| h.link != Link::Live)
            .map(|(n, h)| (n.as_str(), &h.link))
            .collect()
    }

    /// With several hosts, the stream of `host` is now `link`. The
    /// dashboard as a whole is live while any host is.
    pub fn host_link(&mut self, host: &str, link: Link) {
        let Some(hosts) = &mut self.hosts else { return };
        if let Some(h) = hosts.get_mut(host) {
            h.link = link;
        }
        let links: Vec<&Link> = hosts.values().map(|h| &h.link).collect();
        self.link = if links.contains(&&Link::Live) {
            Link::Live
        } else if links.contains(&&Link::Connecting) {
            Link::Connecting
        } else {
            match links.first() {
                Some(Link::Reconnecting(why) | Link::Failed(why)) => Link::Reconnecting(why.clone()),
                _ => Link::Connecting,
            }
        };
        // Fewer or more lines for the hosts down: the page changes.
        self.fit();
    }

    /// With several hosts, what the key of `host` may do.
    pub fn host_access(&mut self, host: &str, access: Access) {
        if let Some(h) = self.hosts.as_mut().and_then(|hs| hs.get_mut(host)) {
            h.access = access;
        }
    }

    /// The rights of the key that would act on the selected agent.
    pub fn selected_access(&self) -> &Access {
        self.selected
            .as_deref()
            .map_or(&self.access, |k| self.access_of(k))
    }

    /// The rights of the key that acts on agent `key`: its host's, with
    /// several hosts.
    fn access_of(&self, key: &str) -> &Access {
        match (&self.hosts, split_key(key)) {
            (Some(hosts), (Some(host), _)) => hosts.get(host).map_or(&self.access, |h| &h.access),
            _ => &self.access,
        }
    }

    /// With several hosts, the agents of `host` (its stream's snapshot):
    /// they replace that host's, the others' stay.
    pub fn host_snapshot(&mut self, host: &str, agents: Vec<AgentSummary>, now: Instant) {
        self.agents.retain(|k, _| split_key(k).0 != Some(host));
        for mut summary in agents {
            summary.id = host_key(host, &summary.id);
            self.agents
                .insert(summary.id.clone(), Agent { summary, since: now });
        }
        let agents = &self.agents;
        self.inflight.retain(|id, _| agents.contains_key(id));
        self.rebuild();
    }

    /// With several hosts, a resources sample of `host`: its agents only.
    pub fn host_resources(&mut self, host: &str, r: &ResourcesEvent) {
        for (key, a) in &mut self.agents {
            if let (Some(h), id) = split_key(key)
                && h == host
            {
                a.summary.resources = r.agents.get(id).copied();
            }
        }
        if matches!(self.sort, Sort::Cpu | Sort::Mem) {
            self.rebuild();
        }
    }

    /// Everything of the previous daemon forgotten, for another one.
    pub fn switched(&mut self, url: String, context: Option<String>, access: Access) {
        let fresh = State::new(url, context, std::mem::take(&mut self.contexts), self.color);
        *self = State {
            access,
            sort: self.sort,
            ..fresh
        };
    }

    // What is shown.

    pub fn rows(&self) -> &[String] {
        &self.rows
    }

    /// The rows in view, from the first one's index.
    pub fn visible(&self) -> (usize, &[String]) {
        let end = (self.offset + self.page_rows()).min(self.rows.len());
        (self.offset, &self.rows[self.offset.min(end)..end])
    }

    pub fn cursor(&self) -> usize {
        self.cursor
    }

    pub fn selected(&self) -> Option<&str> {
        self.selected.as_deref()
    }

    pub fn selected_agent(&self) -> Option<&Agent> {
        self.agents.get(self.selected.as_deref()?)
    }

    /// How many rows the agents pane shows (the view measures it).
    pub fn set_page(&mut self, rows: usize) {
        self.page = rows.max(1);
        self.fit();
    }

    /// Whether the screen shows an uptime that a second will change.
    pub fn ticks(&self, now: Instant) -> bool {
        // While reconnecting, the agents are shown as last seen.
        self.link == Link::Live
            && self.screen == Screen::Dashboard
            && self
                .visible()
                .1
                .iter()
                .any(|id| self.agents.get(id).is_some_and(|a| a.uptime(now).is_some()))
    }

    /// Agents by status, in the order of [`Status`] (all agents, filter or not).
    pub fn counts(&self) -> Vec<(Status, usize)> {
        let mut counts: Vec<(Status, usize)> = Vec::new();
        for a in self.agents.values() {
            match counts.iter_mut().find(|(s, _)| *s == a.summary.status) {
                Some((_, n)) => *n += 1,
                None => counts.push((a.summary.status, 1)),
            }
        }
        counts.sort_by_key(|(s, _)| trouble(*s));
        counts
    }

    /// How many agents their probe finds unhealthy (all agents, filter or not).
    pub fn unhealthy(&self) -> usize {
        self.agents
            .values()
            .filter(|a| a.summary.health == Some(HealthState::Unhealthy))
            .count()
    }

    fn keeps(&self, a: &AgentSummary) -> bool {
        self.filter.is_empty()
            || a.id.contains(&self.filter)
            || a.status.as_str().contains(&self.filter)
            || a.health.is_some_and(|h| h.as_str().contains(&self.filter))
    }

    /// Filters and sorts again, keeping the selection on its agent.
    fn rebuild(&mut self) {
        let mut rows: Vec<&Agent> = self.agents.values().filter(|a| self.keeps(&a.summary)).collect();
        // With several hosts, by host, then id.
        let by_id = |a: &&Agent, b: &&Agent| split_key(&a.summary.id).cmp(&split_key(&b.summary.id));
        let most = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        match self.sort {
            Sort::Id => rows.sort_by(by_id),
            Sort::Status => rows.sort_by(|a, b| {
                trouble(a.summary.status)
                    .cmp(&trouble(b.summary.status))
                    .then(sickness(a.summary.health).cmp(&sickness(b.summary.health)))
                    .then(by_id(a, b))
            }),
            Sort::Cpu => rows.sort_by(|a, b| {
                let cpu = |x: &Agent| x.summary.resources.map(|r| r.cpu_pct);
                most(cpu(a), cpu(b)).then(by_id(a, b))
            }),
            Sort::Mem => rows.sort_by(|a, b| {
                let mem = |x: &Agent| x.summary.resources.map(|r| r.rss_bytes as f64);
                most(mem(a), mem(b)).then(by_id(a, b))
            }),
            Sort::Restarts => {
                rows.sort_by(|a, b| b.summary.restarts.cmp(&a.summary.restarts).then(by_id(a, b)))
            }
            Sort::Uptime => rows.sort_by(|a, b| match (a.started(), b.started()) {
                (Some(x), Some(y)) => y.cmp(&x).then(by_id(a, b)),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => by_id(a, b),
            }),
        }
        self.rows = rows.into_iter().map(|a| a.summary.id.clone()).collect();
        let at = self
            .selected
            .as_ref()
            .and_then(|id| self.rows.iter().position(|r| r == id));
        match at {
            Some(i) => self.cursor = i,
            None => self.select(self.cursor),
        }
        self.fit();
    }

    fn select(&mut self, i: usize) {
        if self.rows.is_empty() {
            self.cursor = 0;
            self.selected = None;
        } else {
            self.cursor = i.min(self.rows.len() - 1);
            self.selected = Some(self.rows[self.cursor].clone());
        }
        self.fit();
    }

    /// How many agents fit in the pane: with several hosts, each host
    /// down takes a line of it.
    fn page_rows(&self) -> usize {
        self.page.saturating_sub(self.hosts_down().len()).max(1)
    }

    /// Scrolls so that the cursor is in view.
    fn fit(&mut self) {
        let page = self.page_rows();
        if self.cursor < self.offset {
            self.offset = self.cursor;
        } else if self.cursor >= self.offset + page {
            self.offset = self.cursor + 1 - page;
        }
        self.offset = self.offset.min(self.rows.len().saturating_sub(page));
    }

    // What the daemon says.

    pub fn snapshot(&mut self, agents: Vec<AgentSummary>, now: Instant) {
        self.agents = agents
            .into_iter()
            .map(|s| {
                (
                    s.id.clone(),
                    Agent {
                        summary: s,
                        since: now,
                    },
                )
            })
            .collect();
        self.inflight.retain(|id, _| self.agents.contains_key(id));
        self.rebuild();
    }

    pub fn summary(&mut self, s: AgentSummary, now: Instant) {
        self.agents.insert(
            s.id.clone(),
            Agent {
                summary: s,
                since: now,
            },
        );
        self.rebuild();
    }

    pub fn status(&mut self, e: StatusEvent, now: Instant) {
        if let Some(a) = self.agents.get_mut(&e.agent_id) {
            let s = &mut a.summary;
            s.status = e.new_status;
            if e.new_status.is_live() {
                s.pid = e.pid;
                if !e.old_status.is_live() {
                    // Just spawned; the summary that follows has the rest.
                    s.uptime_s = Some(0);
                    a.since = now;
                }
            } else {
                s.pid = None;
                s.uptime_s = None;
                s.resources = None;
                // Nothing runs, nothing is probed.
                s.health = None;
            }
        }
        self.event(Transition::Status(e));
        self.rebuild();
    }

    /// The probe's new verdict on an agent (its summary follows too).
    pub fn health(&mut self, e: HealthEvent) {
        if let Some(a) = self.agents.get_mut(&e.agent_id) {
            a.summary.health = e.new_health;
            a.summary.health_detail = e.detail.clone();
        }
        if matches!(e.new_health, Some(HealthState::Healthy | HealthState::Unhealthy)) {
            self.event(Transition::Health(e));
        }
        self.rebuild();
    }

    fn event(&mut self, t: Transition) {
        if self.events.len() == EVENTS_KEPT {
            self.events.pop_back();
        }
        self.events.push_front(t);
    }

    /// An agent left the config: its row goes (the selection moves to the
    /// row that takes its place).
    pub fn removed(&mut self, r: &RemovedEvent) {
        if self.agents.remove(&r.agent_id).is_some() {
            self.inflight.remove(&r.agent_id);
            self.rebuild();
        }
    }

    pub fn resources(&mut self, r: &ResourcesEvent) {
        for (id, a) in &mut self.agents {
            a.summary.resources = r.agents.get(id).copied();
        }
        if matches!(self.sort, Sort::Cpu | Sort::Mem) {
            self.rebuild();
        }
    }

    // The log pane.

    /// The pane now shows `agent` (or nothing), waiting for its lines.
    pub fn log_for(&mut self, agent: Option<String>) {
        self.log = LogPane {
            note: agent.as_ref().map(|_| "loading…".to_string()),
            agent,
            ..LogPane::default()
        };
    }

    pub fn log_lines(&mut self, lines: impl IntoIterator<Item = String>) {
        for l in lines {
            self.log.push(shown_line(&l));
        }
    }

    pub fn log_gap(&mut self) {
        self.log
            .push("-- lines rotated away before they could be shown --".into());
    }

    pub fn log_note(&mut self, note: Option<String>) {
        self.log.note = note;
    }

    // Start, stop and restart.

    /// The daemon answered a start, stop or restart.
    pub fn done(&mut self, id: &str, op: Op, result: Result<Controlled, ClientError>) {
        self.inflight.remove(id);
        let (text, error) = match result {
            Ok(Controlled {
                summary,
                pending: true,
            }) => (
                format!(
                    "{id}: still {} when the daemon answered; the list shows where it ends up",
                    summary.status
                ),
                false,
            ),
            Ok(Controlled { summary, .. }) => match verdict(op, &summary) {
                Verdict::Reached => {
                    let pid = summary.pid.map(|p| format!(" (pid {p})")).unwrap_or_default();
                    (format!("{id}: {}{pid}", summary.status), false)
                }
                _ => (format!("{id}: {}", not_reached(op, &summary)), true),
            },
            Err(e) => (format!("{id}: {} failed: {e}", op.as_str()), true),
        };
        self.message = Some(Message { text, error });
    }

    fn say(&mut self, text: impl Into<String>, error: bool) {
        self.message = Some(Message {
            text: text.into(),
            error,
        });
    }

    /// Asks for `op` on the selected agent, if it may be.
    fn control(&mut self, op: Op) -> Option<Effect> {
        let Some(id) = self.selected.clone() else {
            self.say("no agent selected", true);
            return None;
        };
        let access = self.access_of(&id);
        if !access.can_control() {
            let who = access
                .name
                .as_deref()
                .map(|n| format!("the key {:?}", escape_controls(n)))
                .unwrap_or_else(|| "this key".into());
            self.say(
                format!("read-only: {who} has the role read; start, stop and restart need operate"),
                true,
            );
            return None;
        }
        if let Some(under_way) = self.inflight.get(&id) {
            self.say(
                format!("{id}: a {} is already under way", under_way.as_str()),
                true,
            );
            return None;
        }
        if op == Op::Stop && self.mode != Mode::Confirm(id.clone()) {
            self.mode = Mode::Confirm(id);
            return None;
        }
        self.mode = Mode::Normal;
        self.inflight.insert(id.clone(), op);
        let doing = match op {
            Op::Start => "starting",
            Op::Stop => "stopping",
            Op::Restart => "restarting",
        };
        self.say(format!("{doing} {id}…"), false);
        Some(Effect::Control { id, op })
    }

    // Keys.

    /// What a key does; the effect is the event loop's to carry out.
    pub fn key(&mut self, k: KeyEvent) -> Option<Effect> {
        if k.kind != KeyEventKind::Press {
            return None;
        }
        if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
            return Some(Effect::Quit);
        }
        match self.mode.clone() {
            Mode::Normal => self.normal_key(k),
            Mode::Filter => {
                match k.code {
                    KeyCode::Enter => self.mode = Mode::Normal,
                    KeyCode::Esc => {
                        self.mode = Mode::Normal;
                        self.set_filter(String::new());
                    }
                    KeyCode::Backspace => {
                        let mut f = self.filter.clone();
                        f.pop();
                        self.set_filter(f);
                    }
                    KeyCode::Char(c) if !c.is_control() && self.filter.len() < 64 => {
                        let mut f = self.filter.clone();
                        f.extend(c.to_lowercase());
                        self.set_filter(f);
                    }
                    KeyCode::Up | KeyCode::Down => {
                        self.mode = Mode::Normal;
                        return self.normal_key(k);
                    }
                    _ => {}
                }
                None
            }
            Mode::Confirm(id) => {
                self.mode = Mode::Normal;
                if matches!(k.code, KeyCode::Char('y' | 'Y')) && self.selected.as_deref() == Some(&id) {
                    self.mode = Mode::Confirm(id);
                    return self.control(Op::Stop);
                }
                self.say(format!("{id}: not stopped"), false);
                None
            }
            Mode::Help => {
                self.mode = Mode::Normal;
                None
            }
            Mode::Contexts(i) => {
                let n = self.contexts.len();
                match k.code {
                    KeyCode::Up | KeyCode::Char('k') => self.mode = Mode::Contexts(i.saturating_sub(1)),
                    KeyCode::Down | KeyCode::Char('j') => {
                        self.mode = Mode::Contexts((i + 1).min(n.saturating_sub(1)))
                    }
                    KeyCode::Enter => {
                        self.mode = Mode::Normal;
                        if let Some(c) = self.contexts.get(i) {
                            if self.context.as_deref() == Some(&c.name) {
                                return None;
                            }
                            let name = c.name.clone();
                            self.say(format!("connecting to context {name}…"), false);
                            return Some(Effect::SwitchContext(name));
                        }
                    }
                    KeyCode::Esc | KeyCode::Char('q' | 'c') => self.mode = Mode::Normal,
                    _ => {}
                }
                None
            }
        }
    }

    fn set_filter(&mut self, f: String) {
        self.filter = f;
        self.rebuild();
    }

    fn normal_key(&mut self, k: KeyEvent) -> Option<Effect> {
        let page = self.page.max(1);
        let log = self.screen == Screen::Log;
        match k.code {
            KeyCode::Char('q') => return Some(Effect::Quit),
            KeyCode::Up | KeyCode::Char('k') if log => self.scroll_log(1),
            KeyCode::Down | KeyCode::Char('j') if log => self.scroll_log(-1),
            KeyCode::PageUp if log => self.scroll_log(page as isize),
            KeyCode::PageDown if log => self.scroll_log(-(page as isize)),
            KeyCode::Home | KeyCode::Char('g') if log => self.scroll_log(isize::MAX),
            KeyCode::End | KeyCode::Char('G') if log => self.log.back = 0,
            KeyCode::Up | KeyCode::Char('k') => self.select(self.cursor.saturating_sub(1)),
            KeyCode::Down | KeyCode::Char('j') => self.select(self.cursor + 1),
            KeyCode::PageUp => self.select(self.cursor.saturating_sub(page)),
            KeyCode::PageDown => self.select(self.cursor + page),
            KeyCode::Home | KeyCode::Char('g') => self.select(0),
            KeyCode::End | KeyCode::Char('G') => self.select(usize::MAX),
            KeyCode::Enter => {
                self.screen = if log { Screen::Dashboard } else { Screen::Log };
                self.log.back = 0;
            }
            KeyCode::Esc if log => self.screen = Screen::Dashboard,
            KeyCode::Esc => {
                self.message = None;
                if !self.filter.is_empty() {
                    self.set_filter(String::new());
                }
            }
            KeyCode::Char('s') => return self.control(Op::Start),
            KeyCode::Char('x') => return self.control(Op::Stop),
            KeyCode::Char('r') => return self.control(Op::Restart),
            KeyCode::Char('/') => {
                self.screen = Screen::Dashboard;
                self.mode = Mode::Filter;
            }
            KeyCode::Char('o') => {
                self.sort = self.sort.next();
                self.rebuild();
                self.say(format!("sorted by {}", self.sort.name()), false);
            }
            KeyCode::Char('c') => {
                if self.hosts.is_some() {
                    self.say(
                        "every context of the selection is shown; c switches context in a top of one (top --context NAME)",
                        true,
                    );
                } else if self.contexts.is_empty() {
                    self.say(
                        "no contexts to switch to: the client file (~/.config/agentsd/client.toml) names none",
                        true,
                    );
                } else {
                    let at = self
                        .contexts
                        .iter()
                        .position(|c| Some(&c.name) == self.context.as_ref())
                        .unwrap_or(0);
                    self.mode = Mode::Contexts(at);
                }
            }
            KeyCode::Char('?') => self.mode = Mode::Help,
            _ => {}
        }
        None
    }

    fn scroll_log(&mut self, by: isize) {
        let max = self.log.lines.len().saturating_sub(1);
        self.log.back = self.log.back.saturating_add_signed(by).min(max);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::{Desired, Resources};

    pub fn summary(id: &str, status: Status) -> AgentSummary {
        let live = status.is_live();
        AgentSummary {
            id: id.into(),
            status,
            desired: if live || status == Status::Failed {
                Desired::Running
            } else {
                Desired::Stopped
            },
            pid: live.then_some(4242),
            started_at: None,
            uptime_s: live.then_some(75),
            restarts: 0,
            last_exit: None,
            msg_count_24h: None,
            command: vec!["sleep".into(), "1000".into()],
            reason: None,
            dropped_log_lines: 0,
            resources: None,
            health: None,
            health_detail: None,
        }
    }

    pub fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    pub fn state(ids: &[(&str, Status)]) -> (State, Instant) {
        let now = Instant::now();
        let mut s = State::new("https://127.0.0.1:8487".into(), None, vec![], true);
        s.snapshot(ids.iter().map(|(id, st)| summary(id, *st)).collect(), now);
        s.set_page(10);
        s.link = Link::Live;
        (s, now)
    }

    #[test]
    fn a_removed_agent_leaves_the_rows_and_one_added_again_comes_back() {
        let (mut s, now) = state(&[
            ("api", Status::Running),
            ("db", Status::Stopped),
            ("web", Status::Running),
        ]);
        s.key(key(KeyCode::Down));
        assert_eq!(s.selected(), Some("db"));
        s.removed(&RemovedEvent {
            agent_id: "db".into(),
            at: "2026-01-01T00:00:00Z".into(),
        });
        assert_eq!(s.rows(), ["api", "web"]);
        assert!(!s.agents.contains_key("db"));
        assert_eq!(s.selected(), Some("web"), "the row that took its place");
        // Unknown: nothing changes.
        s.removed(&RemovedEvent {
            agent_id: "nope".into(),
            at: "2026-01-01T00:00:00Z".into(),
        });
        assert_eq!(s.rows(), ["api", "web"]);
        s.summary(summary("db", Status::Starting), now);
        assert_eq!(s.rows(), ["api", "db", "web"]);
    }

    #[test]
    fn rows_are_sorted_and_the_selection_follows_its_agent() {
        let (mut s, now) = state(&[
            ("web", Status::Running),
            ("api", Status::Failed),
            ("db", Status::Stopped),
        ]);
        assert_eq!(s.rows(), ["api", "db", "web"]);
        assert_eq!(s.selected(), Some("api"));
        s.key(key(KeyCode::Down));
        s.key(key(KeyCode::Char('j')));
        assert_eq!(s.selected(), Some("web"));
        s.key(key(KeyCode::Down));
        assert_eq!(s.selected(), Some("web"), "stays on the last row");
        s.key(key(KeyCode::Char('k')));
        assert_eq!(s.selected(), Some("db"));
        // Sorted by status: trouble first; the selection stays on db.
        s.key(key(KeyCode::Char('o')));
        assert_eq!(s.sort, Sort::Status);
        assert_eq!(s.rows(), ["api", "db", "web"]);
        s.status(
            StatusEvent {
                agent_id: "web".into(),
                old_status: Status::Running,
                new_status: Status::Backoff,
                pid: Some(4242),
                at: "2026-01-01T00:00:00.000Z".into(),
            },
            now,
        );
        assert_eq!(s.rows(), ["api", "web", "db"]);
        assert_eq!(s.selected(), Some("db"));
        assert_eq!(s.cursor(), 2);
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.agents["web"].summary.pid, None, "nothing runs in backoff");
    }

    fn health(
        id: &str,
        old: Option<HealthState>,
        new: Option<HealthState>,
        detail: Option<&str>,
    ) -> HealthEvent {
        HealthEvent {
            agent_id: id.into(),
            old_health: old,
            new_health: new,
            detail: detail.map(Into::into),
            at: "2026-01-01T00:00:00.000Z".into(),
        }
    }

    #[test]
    fn health_events_update_the_agent_and_only_verdicts_reach_the_events_pane() {
        let (mut s, now) = state(&[("api", Status::Running), ("web", Status::Running)]);
        // Starting comes with a start: not a line of its own.
        s.health(health("web", None, Some(HealthState::Starting), None));
        assert_eq!(s.agents["web"].summary.health, Some(HealthState::Starting));
        assert!(s.events.is_empty());
        s.health(health(
            "web",
            Some(HealthState::Starting),
            Some(HealthState::Unhealthy),
            Some("HTTP 503 Service Unavailable"),
        ));
        let web = &s.agents["web"].summary;
        assert_eq!(web.health, Some(HealthState::Unhealthy));
        assert_eq!(web.health_detail.as_deref(), Some("HTTP 503 Service Unavailable"));
        assert_eq!(s.unhealthy(), 1);
        assert!(matches!(
            s.events.front(),
            Some(Transition::Health(HealthEvent {
                new_health: Some(HealthState::Unhealthy),
                ..
            }))
        ));
        // An agent not (or no longer) known: only the line.
        s.health(health("gone", None, Some(HealthState::Healthy), None));
        assert_eq!(s.events.len(), 2);
        assert!(!s.agents.contains_key("gone"));
        // Stopped: nothing runs, nothing is probed.
        s.status(
            StatusEvent {
                agent_id: "web".into(),
                old_status: Status::Running,
                new_status: Status::Stopping,
                pid: Some(4242),
                at: String::new(),
            },
            now,
        );
        assert_eq!(
            s.agents["web"].summary.health,
            Some(HealthState::Unhealthy),
            "still runs"
        );
        s.status(
            StatusEvent {
                agent_id: "web".into(),
                old_status: Status::Stopping,
                new_status: Status::Stopped,
                pid: Some(4242),
                at: String::new(),
            },
            now,
        );
        assert_eq!(s.agents["web"].summary.health, None);
        assert_eq!(s.unhealthy(), 0);
        assert!(matches!(s.events.front(), Some(Transition::Status(_))));
        assert_eq!(s.events.len(), 4);
    }

    #[test]
    fn by_status_waiting_comes_after_starting_and_the_unhealthy_lead_their_status() {
        let (mut s, now) = state(&[
            ("a-ok", Status::Running),
            ("b-sick", Status::Running),
            ("c-new", Status::Running),
            ("d-wait", Status::Waiting),
            ("e-boot", Status::Starting),
            ("f-idle", Status::Stopped),
        ]);
        for (id, h) in [
            ("a-ok", HealthState::Healthy),
            ("b-sick", HealthState::Unhealthy),
            ("c-new", HealthState::Starting),
        ] {
            let mut a = summary(id, Status::Running);
            a.health = Some(h);
            s.summary(a, now);
        }
        s.key(key(KeyCode::Char('o')));
        assert_eq!(s.sort, Sort::Status);
        assert_eq!(
            s.rows(),
            ["e-boot", "d-wait", "f-idle", "b-sick", "c-new", "a-ok"]
        );
        assert_eq!(
            s.counts(),
            [
                (Status::Starting, 1),
                (Status::Waiting, 1),
                (Status::Stopped, 1),
                (Status::Running, 3)
            ]
        );
        // Healthy again: back among the others, by id.
        s.health(health(
            "b-sick",
            Some(HealthState::Unhealthy),
            Some(HealthState::Healthy),
            Some("HTTP 503 Service Unavailable"),
        ));
        assert_eq!(
            s.rows(),
            ["e-boot", "d-wait", "f-idle", "c-new", "a-ok", "b-sick"]
        );
    }

    #[test]
    fn the_filter_matches_a_health_word_too() {
        let (mut s, now) = state(&[
            ("api", Status::Running),
            ("db", Status::Waiting),
            ("web", Status::Running),
        ]);
        let mut web = summary("web", Status::Running);
        web.health = Some(HealthState::Unhealthy);
        s.summary(web, now);
        s.key(key(KeyCode::Char('/')));
        for c in "unhealthy".chars() {
            s.key(key(KeyCode::Char(c)));
        }
        assert_eq!(s.rows(), ["web"]);
        s.key(key(KeyCode::Esc));
        s.key(key(KeyCode::Char('/')));
        for c in "wait".chars() {
            s.key(key(KeyCode::Char(c)));
        }
        assert_eq!(s.rows(), ["db"]);
    }

    #[test]
    fn the_filter_narrows_by_id_or_status_and_esc_clears_it() {
        let (mut s, _) = state(&[
            ("bot-1", Status::Running),
            ("bot-2", Status::Failed),
            ("web", Status::Running),
        ]);
        s.key(key(KeyCode::Char('/')));
        assert_eq!(s.mode, Mode::Filter);
        for c in "BOT".chars() {
            s.key(key(KeyCode::Char(c)));
        }
        assert_eq!(s.filter, "bot");
        assert_eq!(s.rows(), ["bot-1", "bot-2"]);
        // q is text while typing the filter, not quit.
        assert_eq!(s.key(key(KeyCode::Char('q'))), None);
        assert!(s.rows().is_empty());
        assert_eq!(s.selected(), None);
        s.key(key(KeyCode::Backspace));
        s.key(key(KeyCode::Enter));
        assert_eq!(s.mode, Mode::Normal);
        assert_eq!(s.rows(), ["bot-1", "bot-2"]);
        s.key(key(KeyCode::Char('/')));
        s.key(key(KeyCode::Backspace));
        s.key(key(KeyCode::Backspace));
        s.key(key(KeyCode::Backspace));
        for c in "fail".chars() {
            s.key(key(KeyCode::Char(c)));
        }
        assert_eq!(s.rows(), ["bot-2"], "a status word matches too");
        s.key(key(KeyCode::Esc));
        assert_eq!(s.filter, "");
        assert_eq!(s.rows().len(), 3);
    }

    #[test]
    fn stop_asks_first_and_runs_as_an_effect() {
        let (mut s, _) = state(&[("web", Status::Running)]);
        assert_eq!(s.key(key(KeyCode::Char('x'))), None);
        assert_eq!(s.mode, Mode::Confirm("web".into()));
        assert_eq!(s.key(key(KeyCode::Char('n'))), None);
        assert_eq!(s.mode, Mode::Normal);
        assert!(s.inflight.is_empty());
        s.key(key(KeyCode::Char('x')));
        assert_eq!(
            s.key(key(KeyCode::Char('y'))),
            Some(Effect::Control {
                id: "web".into(),
                op: Op::Stop
            })
        );
        assert_eq!(s.inflight.get("web"), Some(&Op::Stop));
        // Another action on it waits for the answer.
        assert_eq!(s.key(key(KeyCode::Char('s'))), None);
        assert!(s.message.as_ref().unwrap().text.contains("already under way"));
        let mut answer = summary("web", Status::Stopped);
        answer.desired = Desired::Stopped;
        s.done(
            "web",
            Op::Stop,
            Ok(Controlled {
                summary: answer,
                pending: false,
            }),
        );
        assert!(s.inflight.is_empty());
        assert_eq!(
            s.message,
            Some(Message {
                text: "web: stopped".into(),
                error: false
            })
        );
        assert_eq!(
            s.key(key(KeyCode::Char('r'))),
            Some(Effect::Control {
                id: "web".into(),
                op: Op::Restart
            })
        );
        s.done(
            "web",
            Op::Restart,
            Err(ClientError::NotReached("overtaken by a stop".into())),
        );
        assert_eq!(
            s.message,
            Some(Message {
                text: "web: restart failed: overtaken by a stop".into(),
                error: true
            })
        );
    }

    #[test]
    fn a_start_that_ends_failed_says_why() {
        let (mut s, _) = state(&[("web", Status::Stopped)]);
        assert!(s.key(key(KeyCode::Char('s'))).is_some());
        let mut answer = summary("web", Status::Failed);
        answer.reason = Some("cannot spawn: no such file".into());
        s.done(
            "web",
            Op::Start,
            Ok(Controlled {
                summary: answer,
                pending: false,
            }),
        );
        let m = s.message.clone().unwrap();
        assert!(m.error);
        assert_eq!(
            m.text,
            "web: failed instead of running: cannot spawn: no such file"
        );
    }

    #[test]
    fn a_read_only_key_cannot_start_stop_or_restart() {
        let (mut s, _) = state(&[("web", Status::Running)]);
        s.access = Access::from_identity(Some(Identity {
            name: Some("viewer".into()),
            role: "read".into(),
        }));
        for c in ['s', 'x', 'r'] {
            assert_eq!(s.key(key(KeyCode::Char(c))), None);
            assert_eq!(s.mode, Mode::Normal);
            let m = s.message.take().unwrap();
            assert!(m.error);
            assert!(m.text.contains("read-only"), "{}", m.text);
        }
        assert!(s.inflight.is_empty());
        // A daemon without roles, or an unknown role: the daemon decides.
        assert!(Access::from_identity(None).can_control());
        let future = Access::from_identity(Some(Identity {
            name: None,
            role: "auditor".into(),
        }));
        assert!(future.can_control());
    }

    #[test]
    fn scrolling_keeps_the_cursor_in_view_with_many_agents() {
        let ids: Vec<String> = (0..1000).map(|i| format!("agent-{i:04}")).collect();
        let now = Instant::now();
        let mut s = State::new("u".into(), None, vec![], false);
        s.snapshot(ids.iter().map(|id| summary(id, Status::Running)).collect(), now);
        s.set_page(20);
        assert_eq!(s.visible().1.len(), 20);
        s.key(key(KeyCode::End));
        assert_eq!(s.selected(), Some("agent-0999"));
        assert_eq!(s.visible().0, 980);
        s.key(key(KeyCode::PageUp));
        assert_eq!(s.cursor(), 979);
        assert_eq!(s.visible().0, 979);
        s.key(key(KeyCode::Home));
        assert_eq!(s.visible(), (0, &s.rows()[..20]));
        // A smaller window keeps the cursor in view.
        for _ in 0..15 {
            s.key(key(KeyCode::Down));
        }
        s.set_page(5);
        assert_eq!(s.visible().0, 11);
        assert!(!s.ticks(now), "not before the stream is live");
        s.link = Link::Live;
        assert!(s.ticks(now), "running agents show a ticking uptime");
        s.link = Link::Reconnecting("gone".into());
        assert!(!s.ticks(now), "as last seen, while reconnecting");
    }

    #[test]
    fn uptime_ticks_on_from_the_summary_and_resources_update() {
        let (mut s, now) = state(&[("web", Status::Running), ("db", Status::Stopped)]);
        let later = now + Duration::from_secs(10);
        assert_eq!(s.agents["web"].uptime(later), Some(85));
        assert_eq!(s.agents["db"].uptime(later), None);
        let mut r = ResourcesEvent {
            at: String::new(),
            agents: Default::default(),
        };
        r.agents.insert(
            "web".into(),
            Resources {
                cpu_pct: 1.5,
                rss_bytes: 1 << 20,
                processes: 1,
            },
        );
        s.resources(&r);
        assert_eq!(s.agents["web"].summary.resources.unwrap().cpu_pct, 1.5);
        let (mut s, _) = state(&[("db", Status::Stopped)]);
        assert!(!s.ticks(now), "nothing to tick");
        s.status(
            StatusEvent {
                agent_id: "db".into(),
                old_status: Status::Stopped,
                new_status: Status::Running,
                pid: Some(7),
                at: String::new(),
            },
            later,
        );
        assert_eq!(s.agents["db"].uptime(later + Duration::from_secs(3)), Some(3));
        assert_eq!(s.agents["db"].summary.pid, Some(7));
    }

    #[test]
    fn log_lines_are_escaped_kept_bounded_and_scroll() {
        let (mut s, _) = state(&[("web", Status::Running)]);
        s.log_for(Some("web".into()));
        assert_eq!(s.log.note.as_deref(), Some("loading…"));
        s.log_lines(["a\tb".to_string(), "x\x1b[2Jy".to_string()]);
        assert_eq!(s.log.lines, ["a       b", "x\\x1b[2Jy"]);
        s.log_lines((0..LOG_KEPT).map(|i| i.to_string()));
        assert_eq!(s.log.lines.len(), LOG_KEPT);
        assert_eq!(s.log.lines.front().map(String::as_str), Some("0"));
        s.key(key(KeyCode::Enter));
        assert_eq!(s.screen, Screen::Log);
        s.key(key(KeyCode::Up));
        s.key(key(KeyCode::Up));
        assert_eq!(s.log.back, 2);
        s.log_lines(["new".to_string()]);
        assert_eq!(s.log.back, 3, "scrolled back, the view stays put");
        s.key(key(KeyCode::End));
        assert_eq!(s.log.back, 0);
        s.key(key(KeyCode::Esc));
        assert_eq!(s.screen, Screen::Dashboard);
    }

    #[test]
    fn contexts_are_chosen_from_the_client_file() {
        let (mut s, _) = state(&[]);
        s.key(key(KeyCode::Char('c')));
        assert!(s.message.take().unwrap().text.contains("names none"));
        s.contexts = vec![
            ContextEntry {
                name: "lab".into(),
                url: "https://lab:8487".into(),
            },
            ContextEntry {
                name: "prod".into(),
                url: "https://prod:8487".into(),
            },
        ];
        s.context = Some("lab".into());
        s.key(key(KeyCode::Char('c')));
        assert_eq!(s.mode, Mode::Contexts(0));
        assert_eq!(s.key(key(KeyCode::Enter)), None, "already there");
        s.key(key(KeyCode::Char('c')));
        s.key(key(KeyCode::Down));
        assert_eq!(
            s.key(key(KeyCode::Enter)),
            Some(Effect::SwitchContext("prod".into()))
        );
    }

    #[test]
    fn q_and_ctrl_c_quit() {
        let (mut s, _) = state(&[]);
        assert_eq!(s.key(key(KeyCode::Char('q'))), Some(Effect::Quit));
        s.mode = Mode::Filter;
        assert_eq!(
            s.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Effect::Quit)
        );
    }

    /// Hosts a, b and c (c down), a's agents web and api, b's api.
    fn several() -> (State, Instant) {
        let now = Instant::now();
        let mut s = State::several(["a".to_string(), "b".into(), "c".into()], true);
        s.set_page(10);
        s.host_link("a", Link::Live);
        s.host_link("b", Link::Live);
        s.host_link("c", Link::Reconnecting("cannot reach https://c:8487".into()));
        s.host_snapshot("b", vec![summary("api", Status::Running)], now);
        s.host_snapshot(
            "a",
            vec![summary("web", Status::Running), summary("api", Status::Stopped)],
            now,
        );
        (s, now)
    }

    #[test]
    fn several_hosts_are_one_table_by_host_then_id_with_the_down_ones_apart() {
        let (mut s, now) = several();
        assert_eq!(s.rows(), ["a/api", "a/web", "b/api"]);
        assert_eq!(s.link, Link::Live, "live while any host is");
        assert_eq!(
            s.hosts_down(),
            [("c", &Link::Reconnecting("cannot reach https://c:8487".into()))]
        );
        // A snapshot of one host replaces its agents only.
        s.host_snapshot("a", vec![summary("db", Status::Failed)], now);
        assert_eq!(s.rows(), ["a/db", "b/api"]);
        assert_eq!(s.agents["a/db"].summary.id, "a/db");
        // The same id on two hosts is two agents; an event names its host.
        s.status(
            StatusEvent {
                agent_id: "b/api".into(),
                old_status: Status::Running,
                new_status: Status::Stopped,
                pid: None,
                at: "2026-01-01T00:00:00.000Z".into(),
            },
            now,
        );
        assert_eq!(s.agents["b/api"].summary.status, Status::Stopped);
        assert_eq!(s.agents["a/db"].summary.status, Status::Failed);
        // A resources sample of b leaves a's alone.
        s.host_snapshot("a", vec![summary("api", Status::Running)], now);
        s.agents.get_mut("a/api").unwrap().summary.resources = Some(Resources {
            cpu_pct: 5.0,
            rss_bytes: 1,
            processes: 1,
        });
        s.host_resources(
            "b",
            &ResourcesEvent {
                at: "2026-01-01T00:00:00.000Z".into(),
                agents: [(
                    "api".to_string(),
                    Resources {
                        cpu_pct: 50.0,
                        rss_bytes: 2,
                        processes: 1,
                    },
                )]
                .into(),
            },
        );
        assert_eq!(s.agents["a/api"].summary.resources.unwrap().cpu_pct, 5.0);
        assert_eq!(s.agents["b/api"].summary.resources.unwrap().cpu_pct, 50.0);
        // A host back: no longer a line apart; every host down: reconnecting.
        s.host_link("c", Link::Live);
        assert!(s.hosts_down().is_empty());
        for h in ["a", "b", "c"] {
            s.host_link(h, Link::Failed(format!("{h} refused the key")));
        }
        assert_eq!(s.link, Link::Reconnecting("a refused the key".into()));
        assert_eq!(s.hosts_down().len(), 3);
    }

    #[test]
    fn with_several_hosts_an_action_goes_to_the_selected_rows_host_with_its_keys_rights() {
        let (mut s, _) = several();
        s.host_access(
            "a",
            Access::from_identity(Some(Identity {
                name: Some("viewer".into()),
                role: "read".into(),
            })),
        );
        // b/api: b's key may act.
        s.key(key(KeyCode::End));
        assert_eq!(s.selected(), Some("b/api"));
        assert_eq!(
            s.key(key(KeyCode::Char('r'))),
            Some(Effect::Control {
                id: "b/api".into(),
                op: Op::Restart
            })
        );
        assert_eq!(split_key("b/api"), (Some("b"), "api"));
        s.done(
            "b/api",
            Op::Restart,
            Ok(Controlled {
                summary: summary("api", Status::Running),
                pending: false,
            }),
        );
        assert_eq!(s.message.as_ref().unwrap().text, "b/api: running (pid 4242)");
        // a/web: a's key is read-only there.
        s.key(key(KeyCode::Up));
        assert_eq!(s.selected(), Some("a/web"));
        assert!(!s.selected_access().can_control());
        assert_eq!(s.key(key(KeyCode::Char('s'))), None);
        assert!(
            s.message
                .as_ref()
                .unwrap()
                .text
                .starts_with("read-only: the key \"viewer\""),
            "{:?}",
            s.message
        );
        // c does not switch context here.
        assert_eq!(s.key(key(KeyCode::Char('c'))), None);
        assert_eq!(s.mode, Mode::Normal);
        assert!(s.message.as_ref().unwrap().error);
    }

    #[test]
    fn the_hosts_down_take_lines_of_the_page() {
        let now = Instant::now();
        let mut s = State::several(["a".to_string(), "b".into(), "c".into()], true);
        s.host_link("a", Link::Live);
        let ids: Vec<String> = (0..10).map(|i| format!("x{i}")).collect();
        s.host_snapshot(
            "a",
            ids.iter().map(|i| summary(i, Status::Running)).collect(),
            now,
        );
        s.set_page(5);
        // b and c still connecting: three agents fit.
        assert_eq!(s.visible().1.len(), 3);
        s.key(key(KeyCode::Char('G')));
        assert_eq!(s.visible(), (7, &s.rows()[7..10]));
        s.host_link("b", Link::Live);
        s.host_link("c", Link::Live);
        assert_eq!(s.visible().1.len(), 5);
    }
}
