//! Drawing the dashboard: a pure function of the [`State`] and the time.
//! Only the agents in view are turned into lines, so a thousand agents cost
//! what a screenful does. Without colour (NO_COLOR, `--color never`) only
//! bold, reverse, dim and strike-through set things apart.

use super::state::{Link, Mode, Screen, State, Transition, split_key};
use crate::client::output::{self, escape_controls};
use crate::wire::{AgentSummary, HealthState, Status};
use ratatui::Frame;
use ratatui::layout::{Alignment, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph};
use std::time::Instant;

/// Below this, only a line that says so.
pub const MIN_WIDTH: u16 = 40;
pub const MIN_HEIGHT: u16 = 10;

/// Styles, with or without colour.
#[derive(Clone, Copy)]
struct Theme {
    color: bool,
}

impl Theme {
    fn fg(self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }

    fn status(self, s: Status) -> Style {
        self.fg(match s {
            Status::Running => Color::Green,
            Status::Starting | Status::Stopping | Status::Backoff | Status::Waiting => Color::Yellow,
            Status::Failed => Color::Red,
            Status::Stopped | Status::Exited => Color::DarkGray,
        })
    }

    /// Unhealthy is bold too: it stands out without colour.
    fn health(self, h: HealthState) -> Style {
        match h {
            HealthState::Healthy => self.fg(Color::Green),
            HealthState::Starting => self.fg(Color::Yellow),
            HealthState::Unhealthy => self.fg(Color::Red).add_modifier(Modifier::BOLD),
        }
    }

    fn bold(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }

    fn muted(self) -> Style {
        if self.color {
            Style::new().fg(Color::DarkGray)
        } else {
            Style::new().add_modifier(Modifier::DIM)
        }
    }

    fn error(self) -> Style {
        self.fg(Color::Red).add_modifier(Modifier::BOLD)
    }

    fn key(self) -> Style {
        self.fg(Color::Cyan).add_modifier(Modifier::BOLD)
    }

    fn disabled(self) -> Style {
        Style::new().add_modifier(Modifier::DIM | Modifier::CROSSED_OUT)
    }

    fn selected(self) -> Style {
        Style::new().add_modifier(Modifier::REVERSED)
    }
}

/// Where each part goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Areas {
    pub header: Rect,
    pub agents: Rect,
    /// One line about the selected agent.
    pub detail: Rect,
    pub log: Rect,
    pub events: Rect,
    pub status: Rect,
    pub footer: Rect,
}

fn line_at(area: Rect, y: u16) -> Rect {
    Rect {
        y: area.y + y,
        height: 1,
        ..area
    }
}

pub fn areas(area: Rect, screen: Screen) -> Areas {
    let h = area.height;
    let body = Rect {
        y: area.y + 1,
        height: h.saturating_sub(3),
        ..area
    };
    let none = Rect::new(area.x, area.y, 0, 0);
    let mut a = Areas {
        header: line_at(area, 0),
        agents: none,
        detail: none,
        log: body,
        events: none,
        status: line_at(area, h.saturating_sub(2)),
        footer: line_at(area, h.saturating_sub(1)),
    };
    if screen == Screen::Log {
        return a;
    }
    let agents_h = ((body.height.saturating_sub(1)) * 55 / 100).max(5);
    a.agents = Rect {
        height: agents_h,
        ..body
    };
    a.detail = line_at(body, agents_h);
    let bottom = Rect {
        y: body.y + agents_h + 1,
        height: body.height.saturating_sub(agents_h + 1),
        ..body
    };
    if area.width >= 70 {
        // Wide enough for "12:34:56 an-agent stopping→stopped".
        let ew = (area.width * 45 / 100).clamp(30, 64);
        let lw = area.width - ew;
        a.log = Rect { width: lw, ..bottom };
        a.events = Rect {
            x: bottom.x + lw,
            width: ew,
            ..bottom
        };
    } else {
        a.log = bottom;
    }
    a
}

/// How many agents the agents pane shows in `area` (its borders and
/// header row taken off).
pub fn page(area: Rect) -> usize {
    areas(area, Screen::Dashboard).agents.height.saturating_sub(3) as usize
}

pub fn draw(f: &mut Frame, s: &State, now: Instant) {
    let area = f.area();
    let t = Theme { color: s.color };
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "agentsd top needs {MIN_WIDTH}x{MIN_HEIGHT}; this terminal is {}x{}",
            area.width, area.height
        );
        f.render_widget(Paragraph::new(msg), area);
        return;
    }
    let a = areas(area, s.screen);
    header(f, a.header, s, t);
    if s.screen == Screen::Dashboard {
        agents(f, a.agents, s, t, now);
        detail(f, a.detail, s, t, now);
        if a.events.width > 0 {
            events(f, a.events, s, t);
        }
    }
    log(f, a.log, s, t);
    status_line(f, a.status, s, t);
    footer(f, a.footer, s, t);
    match s.mode {
        Mode::Help => help(f, area, t),
        Mode::Contexts(at) => contexts(f, area, s, t, at),
        _ => {}
    }
}

fn header(f: &mut Frame, area: Rect, s: &State, t: Theme) {
    let (word, style) = match &s.link {
        Link::Live => ("● live", t.fg(Color::Green)),
        Link::Connecting => ("connecting…", t.fg(Color::Yellow)),
        Link::Reconnecting(_) => ("reconnecting…", t.fg(Color::Yellow).add_modifier(Modifier::BOLD)),
        Link::Failed(_) => ("stopped", t.error()),
    };
    let right = word.chars().count() as u16 + 1;
    let mut left = vec![Span::styled(" agentsd top ", t.bold())];
    if let Some(hosts) = &s.hosts {
        // Each host's URL and key are its context's: the count says enough.
        let live = hosts.values().filter(|h| h.link == Link::Live).count();
        left.push(Span::raw(format!("{} contexts, {live} live", hosts.len())));
    } else {
        left.push(Span::raw(s.url.clone()));
    }
    if let Some(c) = &s.context {
        left.push(Span::raw(format!(" ({c})")));
    }
    if let Some(who) = s.access.describe().filter(|_| s.hosts.is_none()) {
        left.push(Span::raw("  key "));
        left.push(Span::styled(who, t.bold()));
    }
    let total = s.agents.len();
    let mut counts = format!("  {total} agent{}", if total == 1 { "" } else { "s" });
    for (i, (st, n)) in s.counts().iter().enumerate() {
        counts.push_str(if i == 0 { ": " } else { ", " });
        counts.push_str(&format!("{n} {st}"));
    }
    left.push(Span::raw(counts));
    match s.unhealthy() {
        0 => {}
        n => left.push(Span::styled(
            format!(" · {n} unhealthy"),
            t.health(HealthState::Unhealthy),
        )),
    }
    let l = Rect {
        width: area.width.saturating_sub(right),
        ..area
    };
    f.render_widget(Paragraph::new(Line::from(left)), l);
    let r = Rect {
        x: area.x + area.width.saturating_sub(right),
        width: right.min(area.width),
        ..area
    };
    f.render_widget(
        Paragraph::new(Span::styled(word, style)).alignment(Alignment::Right),
        r,
    );
}

/// `s` cut to `w` characters (the last one an ellipsis when cut), padded.
fn fit(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        format!("{s:<w$}")
    } else if w == 0 {
        String::new()
    } else {
        let mut out: String = s.chars().take(w - 1).collect();
        out.push('…');
        out
    }
}

/// A count in at most `w` characters: 12345 as `12k` when it does not fit.
fn count(n: i64, w: usize) -> String {
    let s = n.to_string();
    if s.len() <= w {
        return s;
    }
    let (v, unit) = if n.abs() < 1_000_000 {
        (n as f64 / 1e3, "k")
    } else if n.abs() < 1_000_000_000 {
        (n as f64 / 1e6, "M")
    } else {
        (n as f64 / 1e9, "G")
    };
    format!("{v:.0}{unit}")
}

/// The columns after AGENT, in order; `drop` ranks which go first when the
/// pane is narrow (1 first, 0 never).
struct Col {
    title: &'static str,
    width: usize,
    drop: u8,
}

const COLS: [Col; 8] = [
    Col {
        title: "STATUS",
        width: 8,
        drop: 0,
    },
    // Blank for an agent without a probe, or when nothing runs.
    Col {
        title: "HEALTH",
        width: 9,
        drop: 7,
    },
    Col {
        title: "PID",
        width: 7,
        drop: 6,
    },
    Col {
        title: "UPTIME",
        width: 6,
        drop: 5,
    },
    Col {
        title: "RST",
        width: 4,
        drop: 2,
    },
    Col {
        title: "MSGS",
        width: 6,
        drop: 1,
    },
    Col {
        title: "CPU",
        width: 6,
        drop: 4,
    },
    Col {
        title: "MEM",
        width: 7,
        drop: 3,
    },
];

/// Column widths for an inner width `w`: which of [`COLS`] are shown, the
/// AGENT width and the INFO width (0: no INFO column).
fn widths(w: usize, longest_id: usize) -> ([bool; COLS.len()], usize, usize) {
    let mut shown = [true; COLS.len()];
    // The mark column, then a space before each column but the first.
    let need = |shown: &[bool; COLS.len()]| {
        1 + COLS
            .iter()
            .zip(shown)
            .filter(|(_, on)| **on)
            .map(|(c, _)| c.width + 1)
            .sum::<usize>()
    };
    for rank in 1..COLS.len() as u8 {
        if w.saturating_sub(need(&shown)) >= 12 {
            break;
        }
        if let Some(i) = COLS.iter().position(|c| c.drop == rank) {
            shown[i] = false;
        }
    }
    let spare = w.saturating_sub(need(&shown));
    if spare >= 16 + 1 + 20 {
        let agent = longest_id.clamp(10, 40).min(spare - 21);
        (shown, agent, spare - agent - 1)
    } else {
        (shown, spare, 0)
    }
}

fn agents(f: &mut Frame, area: Rect, s: &State, t: Theme, now: Instant) {
    let mut title = vec![Span::styled(" Agents ", t.bold())];
    let total = s.agents.len();
    let shown = s.rows().len();
    title.push(Span::raw(if shown == total {
        format!("{total} ")
    } else {
        format!("{shown} of {total} ")
    }));
    if !s.filter.is_empty() {
        title.push(Span::raw("· filter "));
        title.push(Span::styled(format!("{} ", escape_controls(&s.filter)), t.bold()));
    }
    title.push(Span::raw(format!("· sort {} ", s.sort.name())));
    let down = s.hosts_down();
    if matches!(s.link, Link::Reconnecting(_)) {
        title.push(Span::styled("· as last seen ", t.muted()));
    } else if !down.is_empty() {
        let n = down.len();
        let hosts = if n == 1 { "host" } else { "hosts" };
        title.push(Span::styled(format!("· {n} {hosts} not live "), t.muted()));
    }
    let block = Block::bordered().title(Line::from(title));
    let inner = block.inner(area);
    f.render_widget(block, area);
    // With several hosts, a HOST column first (as wide as the longest
    // name, within bounds).
    let hw = s.hosts.as_ref().map_or(0, |hosts| {
        hosts
            .keys()
            .map(|h| h.chars().count())
            .max()
            .unwrap_or(0)
            .clamp(4, 16)
            + 1
    });
    let w = (inner.width as usize).saturating_sub(hw);
    let longest = s.agents.keys().map(|k| split_key(k).1.len()).max().unwrap_or(0);
    let (on, aw, iw) = widths(w, longest);
    let mut lines = Vec::with_capacity(inner.height as usize);
    // The header.
    let mut head = if hw > 0 {
        format!(" {}{}", fit("HOST", hw), fit("AGENT", aw))
    } else {
        format!(" {}", fit("AGENT", aw))
    };
    for (c, _) in COLS.iter().zip(on).filter(|(_, on)| *on) {
        if matches!(c.title, "STATUS" | "HEALTH") {
            head.push_str(&format!(" {:<w$}", c.title, w = c.width));
        } else {
            head.push_str(&format!(" {:>w$}", c.title, w = c.width));
        }
    }
    if iw > 0 {
        head.push_str(" INFO");
    }
    lines.push(Line::styled(head, t.bold()));
    // A host not live: one line, why, before the agents.
    for (host, link) in &down {
        let (why, style) = match link {
            Link::Connecting => ("connecting…".to_string(), t.muted()),
            Link::Reconnecting(why) => (format!("unreachable, retrying: {why}"), t.error()),
            Link::Failed(why) => (format!("stopped: {why}"), t.error()),
            Link::Live => continue,
        };
        let host = fit(&escape_controls(host), hw);
        let why = fit(&escape_controls(&why), w.saturating_sub(1));
        lines.push(Line::from(vec![
            Span::raw(" "),
            Span::styled(host, t.bold()),
            Span::styled(why, style),
        ]));
    }
    let (first, visible) = s.visible();
    for (i, id) in visible.iter().enumerate() {
        let Some(a) = s.agents.get(id) else { continue };
        let sum = &a.summary;
        let dash = || "-".to_string();
        let cell = |col: usize| -> String {
            match col {
                2 => sum.pid.map_or_else(dash, |p| p.to_string()),
                3 => a.uptime(now).map_or_else(dash, output::age),
                4 => count(sum.restarts.into(), 4),
                5 => sum.msg_count_24h.map_or_else(dash, |n| count(n, 6)),
                6 => sum.resources.map_or_else(dash, |r| {
                    let c = output::cpu(r.cpu_pct);
                    if c.len() > 6 {
                        format!("{:.0}%", r.cpu_pct)
                    } else {
                        c
                    }
                }),
                7 => sum.resources.map_or_else(dash, |r| output::mem(r.rss_bytes)),
                _ => String::new(),
            }
        };
        let mark = if s.inflight.contains_key(id) { "*" } else { " " };
        let (host, agent) = split_key(id);
        let mut spans = vec![Span::raw(mark)];
        if hw > 0 {
            spans.push(Span::raw(fit(&escape_controls(host.unwrap_or("")), hw)));
        }
        spans.push(Span::raw(fit(&escape_controls(agent), aw)));
        for (col, (c, _)) in COLS.iter().zip(on).enumerate().filter(|(_, (_, on))| *on) {
            if col == 0 {
                spans.push(Span::raw(" "));
                spans.push(Span::styled(
                    fit(sum.status.as_str(), c.width),
                    t.status(sum.status),
                ));
            } else if col == 1 {
                spans.push(Span::raw(" "));
                spans.push(match sum.health {
                    Some(h) => Span::styled(fit(h.as_str(), c.width), t.health(h)),
                    None => Span::raw(fit("", c.width)),
                });
            } else {
                spans.push(Span::raw(format!(" {:>w$}", cell(col), w = c.width)));
            }
        }
        let mut used: usize = spans.iter().map(|s| s.content.chars().count()).sum();
        if iw > 0 {
            let (text, style) = info(sum, t, true);
            let text = fit(&text, iw);
            used += 1 + text.chars().count();
            spans.push(Span::raw(" "));
            spans.push(Span::styled(text, style));
        }
        let mut line = Line::from(spans);
        if first + i == s.cursor() {
            // Reverse video across the whole row.
            line.spans.push(Span::raw(" ".repeat(w.saturating_sub(used))));
            line = line.style(t.selected());
        }
        lines.push(line);
    }
    if s.rows().is_empty() {
        let why = match (&s.link, s.agents.is_empty(), s.filter.is_empty()) {
            (Link::Connecting, ..) if s.hosts.is_some() => "waiting for the hosts…",
            (Link::Connecting, ..) => "waiting for the daemon…",
            (_, true, _) => "no agents",
            (_, false, false) => "no agent matches the filter",
            _ => "",
        };
        lines.push(Line::styled(format!(" {why}"), t.muted()));
    }
    f.render_widget(Paragraph::new(lines), inner);
}

/// Why its probe does not pass: the last failed probe's answer, while it
/// runs and is not (yet) healthy.
fn health_detail(a: &AgentSummary) -> Option<String> {
    match a.health {
        Some(HealthState::Unhealthy | HealthState::Starting) => a
            .health_detail
            .as_deref()
            .map(|d| escape_controls(d).into_owned()),
        Some(HealthState::Healthy) | None => None,
    }
}

/// What the INFO column and the detail line say beyond the status: why it
/// failed or waits, (with `health`) why its probe does not pass, or how it
/// last ended.
fn info(a: &AgentSummary, t: Theme, health: bool) -> (String, Style) {
    if let Some(r) = &a.reason {
        let style = if a.status == Status::Failed {
            t.error()
        } else {
            Style::new()
        };
        return (escape_controls(r).into_owned(), style);
    }
    if health && let Some(d) = health_detail(a) {
        let style = if a.health == Some(HealthState::Unhealthy) {
            t.error()
        } else {
            Style::new()
        };
        return (d, style);
    }
    if !a.status.is_live()
        && let Some(e) = &a.last_exit
    {
        let how = match (&e.code, &e.signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(sig)) => escape_controls(sig).into_owned(),
            (None, None) => String::new(),
        };
        return (how, Style::new());
    }
    (String::new(), Style::new())
}

fn detail(f: &mut Frame, area: Rect, s: &State, t: Theme, now: Instant) {
    let Some(a) = s.selected_agent() else {
        return;
    };
    let sum = &a.summary;
    let mut spans = vec![
        Span::styled(format!(" {}", escape_controls(&sum.id)), t.bold()),
        Span::raw(" "),
        Span::styled(sum.status.as_str(), t.status(sum.status)),
    ];
    let (why, style) = info(sum, t, false);
    if !why.is_empty() {
        spans.push(Span::styled(format!(": {why}"), style));
    }
    if let Some(h) = sum.health {
        spans.push(Span::raw(", "));
        spans.push(Span::styled(h.as_str(), t.health(h)));
        if let Some(d) = health_detail(sum) {
            let style = if h == HealthState::Unhealthy {
                t.error()
            } else {
                Style::new()
            };
            spans.push(Span::styled(format!(": {d}"), style));
        }
    }
    if let Some(p) = sum.pid {
        spans.push(Span::raw(format!("  pid {p}")));
    }
    if let Some(up) = a.uptime(now) {
        spans.push(Span::raw(format!("  up {}", output::age(up))));
    }
    if sum.desired.as_str() != sum.status.as_str() && !matches!(sum.status, Status::Exited | Status::Failed) {
        spans.push(Span::raw(format!("  (wanted {})", sum.desired.as_str())));
    }
    if sum.dropped_log_lines > 0 {
        spans.push(Span::styled(
            format!("  {} log lines dropped", sum.dropped_log_lines),
            t.error(),
        ));
    }
    let cmd: Vec<String> = sum
        .command
        .iter()
        .map(|w| escape_controls(w).into_owned())
        .collect();
    spans.push(Span::styled(format!("  $ {}", cmd.join(" ")), t.muted()));
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn log(f: &mut Frame, area: Rect, s: &State, t: Theme) {
    let mut title = vec![Span::styled(" Log ", t.bold())];
    if let Some(id) = &s.log.agent {
        title.push(Span::raw(format!("{} ", escape_controls(id))));
    }
    if let Some(n) = &s.log.note {
        title.push(Span::styled(format!("· {n} "), t.muted()));
    }
    if s.log.back > 0 {
        title.push(Span::raw(format!("· {} lines back ", s.log.back)));
    }
    if s.screen == Screen::Log {
        title.push(Span::styled("· Esc back ", t.muted()));
    }
    let block = Block::bordered().title(Line::from(title));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let h = inner.height as usize;
    let end = s.log.lines.len().saturating_sub(s.log.back);
    let start = end.saturating_sub(h);
    let lines: Vec<Line> = s
        .log
        .lines
        .range(start..end)
        .map(|l| Line::raw(l.as_str()))
        .collect();
    if lines.is_empty() {
        let what = if s.log.agent.is_none() {
            " no agent selected"
        } else {
            " no lines yet"
        };
        f.render_widget(Paragraph::new(Line::styled(what, t.muted())), inner);
    } else {
        f.render_widget(Paragraph::new(lines), inner);
    }
}

fn events(f: &mut Frame, area: Rect, s: &State, t: Theme) {
    let block = Block::bordered().title(Span::styled(" Status changes ", t.bold()));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let lines: Vec<Line> = s
        .events
        .iter()
        .take(inner.height as usize)
        .map(|e| {
            let (at, id) = match e {
                Transition::Status(e) => (&e.at, &e.agent_id),
                Transition::Health(e) => (&e.at, &e.agent_id),
            };
            // 2026-01-01T12:34:56.789Z: the time of day is enough here.
            let day = at.get(11..19).filter(|_| at.as_bytes().get(10) == Some(&b'T'));
            let at = day.map_or_else(|| escape_controls(at).into_owned(), str::to_string);
            let mut spans = vec![
                Span::styled(at, t.muted()),
                Span::raw(format!(" {} ", escape_controls(id))),
            ];
            match e {
                Transition::Status(e) => spans.extend([
                    Span::styled(e.old_status.as_str(), t.status(e.old_status)),
                    Span::raw("→"),
                    Span::styled(e.new_status.as_str(), t.status(e.new_status)),
                ]),
                // Only to healthy or unhealthy: the new verdict is enough.
                Transition::Health(e) => {
                    spans.push(Span::raw("health→"));
                    if let Some(new) = e.new_health {
                        spans.push(Span::styled(new.as_str(), t.health(new)));
                    }
                }
            }
            Line::from(spans)
        })
        .collect();
    if lines.is_empty() {
        let none = Line::styled(" none since top started", t.muted());
        f.render_widget(Paragraph::new(none), inner);
    } else {
        f.render_widget(Paragraph::new(lines), inner);
    }
}

fn status_line(f: &mut Frame, area: Rect, s: &State, t: Theme) {
    let line = if let Mode::Confirm(id) = &s.mode {
        Line::from(vec![
            Span::styled(format!(" Stop {id}? "), t.error()),
            Span::styled("y", t.key()),
            Span::raw(" stop  "),
            Span::styled("n", t.key()),
            Span::raw(" keep it"),
        ])
    } else if let Some(m) = &s.message {
        let style = if m.error { t.error() } else { Style::new() };
        Line::styled(format!(" {}", m.text), style)
    } else if let Link::Reconnecting(why) = &s.link {
        Line::styled(format!(" reconnecting: {why}"), t.muted())
    } else if !s.inflight.is_empty() {
        let mut under_way: Vec<String> = s
            .inflight
            .iter()
            .map(|(id, op)| format!("{} {id}", op.as_str()))
            .collect();
        under_way.sort();
        Line::styled(format!(" under way: {}", under_way.join(", ")), t.muted())
    } else {
        Line::raw("")
    };
    f.render_widget(Paragraph::new(line), area);
}

fn footer(f: &mut Frame, area: Rect, s: &State, t: Theme) {
    let items: Vec<(&str, &str, bool)> = match &s.mode {
        Mode::Filter => {
            let line = Line::from(vec![
                Span::styled(" / ", t.key()),
                Span::raw(escape_controls(&s.filter).into_owned()),
                Span::styled("█", t.muted()),
                Span::raw("  "),
                Span::styled("Enter", t.key()),
                Span::raw(" keep  "),
                Span::styled("Esc", t.key()),
                Span::raw(" clear"),
            ]);
            f.render_widget(Paragraph::new(line), area);
            return;
        }
        Mode::Confirm(_) => vec![("y", "stop", true), ("n", "cancel", true)],
        Mode::Contexts(_) => vec![
            ("↑↓", "choose", true),
            ("Enter", "connect", true),
            ("Esc", "cancel", true),
        ],
        Mode::Help => vec![("any key", "close", true)],
        Mode::Normal => {
            let ctl = s.selected_access().can_control();
            let log = s.screen == Screen::Log;
            vec![
                ("↑↓/jk", if log { "scroll" } else { "move" }, true),
                ("⏎", if log { "back" } else { "log" }, true),
                ("s", "start", ctl),
                ("x", "stop", ctl),
                ("r", "restart", ctl),
                ("/", "filter", true),
                ("c", "context", true),
                ("?", "help", true),
                ("q", "quit", true),
            ]
        }
    };
    let width: usize = items
        .iter()
        .map(|(k, l, _)| k.chars().count() + 1 + l.chars().count())
        .sum();
    // Two spaces between items when they fit, else one.
    let gap = if 1 + width + 2 * items.len() <= area.width as usize {
        "  "
    } else {
        " "
    };
    let mut spans = vec![Span::raw(" ")];
    for (i, (k, l, on)) in items.iter().enumerate() {
        if i > 0 {
            spans.push(Span::raw(gap));
        }
        let (ks, ls) = if *on {
            (t.key(), Style::new())
        } else {
            (t.disabled(), t.disabled())
        };
        spans.push(Span::styled(*k, ks));
        spans.push(Span::styled(format!(" {l}"), ls));
    }
    if !s.selected_access().can_control() && s.mode == Mode::Normal {
        spans.push(Span::styled("  read-only", t.muted()));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// A box of `w` x `h` in the middle of `area`, cleared.
fn popup(f: &mut Frame, area: Rect, w: u16, h: u16, title: &str, t: Theme) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    let r = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    f.render_widget(Clear, r);
    let block = Block::bordered().title(Span::styled(format!(" {title} "), t.bold()));
    let inner = block.inner(r);
    f.render_widget(block, r);
    inner
}

const HELP: [(&str, &str); 11] = [
    ("↑↓ j k", "move; in the full-screen log, scroll"),
    ("PgUp PgDn", "a page up or down"),
    ("g G Home End", "first, last"),
    ("Enter", "the selected agent's log, full screen"),
    ("s x r", "start, stop (asks y/n), restart"),
    ("/", "filter by id, status or health"),
    ("o", "sort: id, status, cpu, memory, restarts, uptime"),
    ("c", "another context of the client file"),
    ("Esc", "back; clear the filter"),
    ("q Ctrl-C", "quit"),
    ("*", "marks an agent with a request under way"),
];

fn help(f: &mut Frame, area: Rect, t: Theme) {
    let inner = popup(f, area, 66, HELP.len() as u16 + 2, "Keys", t);
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| Line::from(vec![Span::styled(format!(" {k:<13}"), t.key()), Span::raw(*what)]))
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
}

fn contexts(f: &mut Frame, area: Rect, s: &State, t: Theme, at: usize) {
    let h = (s.contexts.len() as u16 + 2).min(area.height.saturating_sub(2));
    let inner = popup(f, area, 70, h, "Contexts", t);
    let first = at.saturating_sub(inner.height.saturating_sub(1) as usize);
    let lines: Vec<Line> = s
        .contexts
        .iter()
        .enumerate()
        .skip(first)
        .take(inner.height as usize)
        .map(|(i, c)| {
            let here = if s.context.as_deref() == Some(&c.name) {
                "•"
            } else {
                " "
            };
            let text = format!(
                "{here} {:<16} {}",
                escape_controls(&c.name),
                escape_controls(&c.url)
            );
            if i == at {
                Line::styled(format!("{text:<w$}", w = inner.width as usize), t.selected())
            } else {
                Line::raw(text)
            }
        })
        .collect();
    f.render_widget(Paragraph::new(lines), inner);
}

#[cfg(test)]
mod tests {
    use super::super::state::tests::{key, state, summary};
    use super::super::state::{Access, Message};
    use super::*;
    use crate::client::Identity;
    use crate::wire::{HealthEvent, LastExit, Resources, StatusEvent};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;
    use ratatui::crossterm::event::KeyCode;

    fn render(s: &mut State, w: u16, h: u16, now: Instant) -> Buffer {
        s.set_page(page(Rect::new(0, 0, w, h)));
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| draw(f, s, now)).unwrap();
        term.backend().buffer().clone()
    }

    fn lines(b: &Buffer) -> Vec<String> {
        (0..b.area.height)
            .map(|y| (0..b.area.width).map(|x| b[(x, y)].symbol()).collect::<String>())
            .collect()
    }

    fn screen(b: &Buffer) -> String {
        lines(b).join("\n")
    }

    /// The row holding `text`, and where in it.
    fn find(b: &Buffer, text: &str) -> Option<(u16, u16)> {
        lines(b).iter().enumerate().find_map(|(y, l)| {
            l.find(text)
                .map(|byte| (l[..byte].chars().count() as u16, y as u16))
        })
    }

    fn busy_state() -> (State, Instant) {
        let (mut s, now) = state(&[
            ("web", Status::Running),
            ("api", Status::Running),
            ("crashy", Status::Failed),
            ("idle", Status::Stopped),
        ]);
        let mut web = summary("web", Status::Running);
        web.resources = Some(Resources {
            cpu_pct: 12.46,
            rss_bytes: 50_541_363,
            processes: 2,
        });
        web.msg_count_24h = Some(1234);
        web.restarts = 2;
        s.summary(web, now);
        let mut crashy = summary("crashy", Status::Failed);
        crashy.reason = Some("gave up after 3 starts in a row ended within the start window".into());
        crashy.last_exit = Some(LastExit {
            code: Some(3),
            signal: None,
            at: String::new(),
        });
        s.summary(crashy, now);
        s.status(
            StatusEvent {
                agent_id: "idle".into(),
                old_status: Status::Running,
                new_status: Status::Stopped,
                pid: Some(4242),
                at: "2026-01-01T12:34:56.789Z".into(),
            },
            now,
        );
        s.link = Link::Live;
        s.log_for(Some("api".into()));
        s.log_note(None);
        s.log_lines(["api listening on :8080".to_string()]);
        (s, now)
    }

    #[test]
    fn every_pane_fits_80x24() {
        let (mut s, now) = busy_state();
        let b = render(&mut s, 80, 24, now);
        let text = screen(&b);
        let l = lines(&b);
        assert!(l[0].starts_with(" agentsd top https://127.0.0.1:8487"), "{text}");
        assert!(l[0].trim_end().ends_with("● live"), "{text}");
        assert!(l[1].contains("Agents 4 · sort id"), "{text}");
        assert!(
            l[2].contains("AGENT") && l[2].contains("STATUS") && l[2].contains("MEM"),
            "{text}"
        );
        // Sorted by id, api selected first; every column there.
        let row = l.iter().find(|l| l.contains("web ")).unwrap();
        for cell in ["running", "4242", "1m15s", "2", "1234", "12.5%", "48.2M"] {
            assert!(row.contains(cell), "{cell} missing from {row:?}");
        }
        assert!(text.contains("Log api"), "{text}");
        assert!(text.contains("api listening on :8080"), "{text}");
        assert!(text.contains("Status changes"), "{text}");
        assert!(text.contains("12:34:56 idle running→stopped"), "{text}");
        assert!(l[23].contains("s start") && l[23].contains("q quit"), "{text}");
        assert!(l[23].contains("? help") && l[23].contains("c context"), "{text}");
        // The selected row is in reverse video, across the pane.
        let (x, y) = find(&b, "api ").unwrap();
        assert!(b[(x, y)].modifier.contains(Modifier::REVERSED));
        assert!(b[(77, y)].modifier.contains(Modifier::REVERSED));
        let (x, y) = find(&b, "web ").unwrap();
        assert!(!b[(x, y)].modifier.contains(Modifier::REVERSED));
        // Colour: a running status is green.
        let (x, y) = find(&b, "running").unwrap();
        assert_eq!(b[(x, y)].fg, Color::Green);
        // Nothing written past the right edge of the panes.
        for line in &l {
            assert_eq!(line.chars().count(), 80);
        }
    }

    #[test]
    fn a_big_terminal_shows_more_rows_and_an_info_column() {
        let ids: Vec<String> = (0..100).map(|i| format!("agent-{i:03}")).collect();
        let now = Instant::now();
        let mut s = State::new("https://h:1".into(), Some("prod".into()), vec![], true);
        s.snapshot(ids.iter().map(|id| summary(id, Status::Running)).collect(), now);
        let mut failed = summary("agent-005", Status::Failed);
        failed.reason = Some("cannot spawn: no such file or directory".into());
        s.summary(failed, now);
        let b = render(&mut s, 200, 50, now);
        let text = screen(&b);
        assert!(text.contains("https://h:1 (prod)"), "{text}");
        assert!(text.contains(" INFO"), "{text}");
        let shown = lines(&b).iter().filter(|l| l.starts_with("│ agent-0")).count();
        assert_eq!(shown, page(Rect::new(0, 0, 200, 50)), "{text}");
        assert!(shown >= 20, "{shown}");
        let row = lines(&b).into_iter().find(|l| l.contains("agent-005 ")).unwrap();
        assert!(row.contains("cannot spawn: no such file or directory"), "{row}");
        // Only the rows in view were drawn: the last agents are not.
        assert!(!text.contains("agent-099"), "{text}");
        // Scrolled to the end, they are.
        s.key(key(KeyCode::End));
        let b = render(&mut s, 200, 50, now);
        assert!(screen(&b).contains("agent-099"));
        assert!(!screen(&b).contains("agent-000 "));
    }

    #[test]
    fn a_long_agent_id_is_cut_and_the_columns_stay_in_place() {
        let long = "a-very-long-agent-name-that-goes-on-and-on-and-on-for-63-chars-x";
        let long = &long[..63];
        let (mut s, now) = state(&[(long, Status::Running), ("b", Status::Stopped)]);
        for (w, h) in [(80, 24), (200, 50), (50, 12)] {
            let b = render(&mut s, w, h, now);
            let l = lines(&b);
            let header = l.iter().position(|l| l.contains("STATUS")).unwrap();
            let status_x = find(&b, "STATUS").unwrap().0 as usize;
            let row = &l[header + 1];
            assert!(row.contains('…'), "{w}x{h}: {row}");
            assert!(!row.contains(long), "{w}x{h}: {row}");
            // The status sits under its header, in both rows.
            let chars: Vec<char> = row.chars().collect();
            let at: String = chars[status_x..status_x + 7].iter().collect();
            assert_eq!(at, "running", "{w}x{h}: {row}");
            let chars: Vec<char> = l[header + 2].chars().collect();
            let at: String = chars[status_x..status_x + 7].iter().collect();
            assert_eq!(at, "stopped", "{w}x{h}");
            for line in &l {
                assert_eq!(line.chars().count(), w as usize);
            }
        }
    }

    #[test]
    fn a_failed_agents_reason_is_shown_at_80_columns() {
        let (mut s, now) = busy_state();
        // Select crashy (api, crashy, idle, web).
        s.key(key(KeyCode::Down));
        assert_eq!(s.selected(), Some("crashy"));
        let b = render(&mut s, 80, 24, now);
        let text = screen(&b);
        let (x, y) = find(&b, "crashy failed: gave up after 3 starts").unwrap_or_else(|| panic!("{text}"));
        assert_eq!(b[(x + 7, y)].fg, Color::Red, "{text}");
        assert!(b[(x + 15, y)].modifier.contains(Modifier::BOLD));
    }

    /// web healthy, api unhealthy (selected: first by id), db waiting for
    /// api, idle without a probe.
    fn health_state() -> (State, Instant) {
        let (mut s, now) = state(&[
            ("api", Status::Running),
            ("db", Status::Waiting),
            ("idle", Status::Running),
            ("web", Status::Running),
        ]);
        let mut web = summary("web", Status::Running);
        web.health = Some(HealthState::Healthy);
        // A failure earlier in this run: not shown once healthy.
        web.health_detail = Some("connect to 127.0.0.1:8080: Connection refused (os error 111)".into());
        s.summary(web, now);
        let mut api = summary("api", Status::Running);
        api.health = Some(HealthState::Unhealthy);
        api.health_detail = Some("HTTP 503 Service Unavailable".into());
        s.summary(api, now);
        let mut db = summary("db", Status::Waiting);
        db.reason = Some("waiting for api (healthy)".into());
        s.summary(db, now);
        s.health(HealthEvent {
            agent_id: "api".into(),
            old_health: Some(HealthState::Healthy),
            new_health: Some(HealthState::Unhealthy),
            detail: Some("HTTP 503 Service Unavailable".into()),
            at: "2026-01-01T12:34:56.789Z".into(),
        });
        (s, now)
    }

    #[test]
    fn health_has_a_column_the_detail_line_says_why_and_the_events_pane_the_verdict() {
        let (mut s, now) = health_state();
        let b = render(&mut s, 120, 24, now);
        let l = lines(&b);
        assert!(
            l[0].contains("4 agents: 1 waiting, 3 running · 1 unhealthy"),
            "{}",
            l[0]
        );
        let (x, _) = find(&b, "· 1 unhealthy").unwrap();
        assert_eq!(b[(x + 2, 0)].fg, Color::Red);
        let b = render(&mut s, 80, 24, now);
        let text = screen(&b);
        let l = lines(&b);
        let (hx, hy) = find(&b, "HEALTH").unwrap_or_else(|| panic!("{text}"));
        let (sx, _) = find(&b, "STATUS").unwrap();
        assert!(hx > sx, "{text}");
        // Each verdict under its header, in its colour; none without a probe.
        let cell_at = |x: u16, id: &str, w: usize| -> (String, u16) {
            let y = l.iter().position(|r| r.starts_with(&format!("│ {id} "))).unwrap();
            let row: Vec<char> = l[y].chars().collect();
            (row[x as usize..x as usize + w].iter().collect(), y as u16)
        };
        let cell = |id: &str, w: usize| cell_at(hx, id, w);
        let (api, y) = cell("api", 9);
        assert_eq!(api, "unhealthy", "{text}");
        assert_eq!(b[(hx, y)].fg, Color::Red);
        assert!(b[(hx, y)].modifier.contains(Modifier::BOLD));
        let (web, y) = cell("web", 9);
        assert_eq!(web, "healthy  ", "{text}");
        assert_eq!(b[(hx, y)].fg, Color::Green);
        assert_eq!(cell("idle", 9).0, "         ", "{text}");
        assert_eq!(cell("db", 9).0, "         ", "{text}");
        assert!(hy < y);
        // Waiting: yellow, like the other statuses on their way.
        let (db, y) = cell_at(sx, "db", 8);
        assert_eq!(db, "waiting ", "{text}");
        assert_eq!(b[(sx, y)].fg, Color::Yellow);
        // The detail line of the selected agent (api) says why.
        let (x, y) = find(&b, "api running, unhealthy: HTTP 503 Service Unavailable")
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(b[(x + 13, y)].fg, Color::Red, "{text}");
        assert!(text.contains("12:34:56 api health→unhealthy"), "{text}");
        // db's: why it waits. web's: healthy, its old failure not shown.
        s.key(key(KeyCode::Down));
        let text = screen(&render(&mut s, 80, 24, now));
        assert!(text.contains("db waiting: waiting for api (healthy)"), "{text}");
        s.key(key(KeyCode::End));
        let text = screen(&render(&mut s, 80, 24, now));
        assert!(text.contains(" web running, healthy  pid 4242"), "{text}");
        assert!(!text.contains("Connection refused"), "{text}");
        // Wide: the INFO column has the why of each.
        let b = render(&mut s, 200, 50, now);
        let l = lines(&b);
        let row = |id: &str| {
            l.iter()
                .find(|r| r.contains(&format!("│ {id} ")))
                .unwrap()
                .clone()
        };
        assert!(row("api").contains("unhealthy") && row("api").contains("HTTP 503 Service Unavailable"));
        assert!(row("db").contains("waiting for api (healthy)"), "{}", row("db"));
        assert!(!row("web").contains("Connection refused"), "{}", row("web"));
        // Narrow: HEALTH is among the last columns to go.
        s.key(key(KeyCode::Home));
        let b = render(&mut s, 40, 12, now);
        let text = screen(&b);
        assert!(text.contains("HEALTH") && text.contains("unhealthy"), "{text}");
        assert!(!text.contains("PID"), "{text}");
    }

    #[test]
    fn health_detail_is_shown_only_while_not_healthy_and_escaped() {
        let mut a = summary("api", Status::Running);
        a.health_detail = Some("exit code 3: not\x1b[2J ready".into());
        assert_eq!(health_detail(&a), None, "no health, no detail");
        a.health = Some(HealthState::Healthy);
        assert_eq!(health_detail(&a), None);
        a.health = Some(HealthState::Starting);
        assert_eq!(
            health_detail(&a).as_deref(),
            Some("exit code 3: not\\x1b[2J ready")
        );
        a.health = Some(HealthState::Unhealthy);
        assert_eq!(
            health_detail(&a).as_deref(),
            Some("exit code 3: not\\x1b[2J ready")
        );
        a.health_detail = None;
        assert_eq!(health_detail(&a), None);
    }

    #[test]
    fn no_color_leaves_no_colour_in_the_buffer() {
        let (mut s, now) = busy_state();
        s.color = false;
        s.message = Some(Message {
            text: "web: stop failed: boom".into(),
            error: true,
        });
        s.link = Link::Reconnecting("connection refused".into());
        for (w, h) in [(80, 24), (200, 50)] {
            let b = render(&mut s, w, h, now);
            for cell in &b.content {
                assert_eq!(cell.fg, Color::Reset, "{cell:?}");
                assert_eq!(cell.bg, Color::Reset, "{cell:?}");
            }
            let text = screen(&b);
            // What colour said is said otherwise: words, bold, reverse.
            assert!(text.contains("reconnecting…"), "{text}");
            let (x, y) = find(&b, "web: stop failed: boom").unwrap();
            assert!(b[(x, y)].modifier.contains(Modifier::BOLD));
            let (x, y) = find(&b, "api ").unwrap();
            assert!(b[(x, y)].modifier.contains(Modifier::REVERSED));
        }
        s.mode = Mode::Help;
        let b = render(&mut s, 80, 24, now);
        assert!(
            b.content
                .iter()
                .all(|c| c.fg == Color::Reset && c.bg == Color::Reset)
        );
    }

    #[test]
    fn the_filter_shows_in_the_title_and_narrows_the_rows() {
        let (mut s, now) = busy_state();
        s.key(key(KeyCode::Char('/')));
        s.key(key(KeyCode::Char('w')));
        let b = render(&mut s, 80, 24, now);
        let text = screen(&b);
        assert!(text.contains("Agents 1 of 4 · filter w"), "{text}");
        assert!(text.contains("web "), "{text}");
        assert!(!text.contains("crashy "), "{text}");
        let l = lines(&b);
        assert!(l[23].starts_with(" / w█"), "{text}");
        assert!(l[23].contains("Esc clear"), "{text}");
        // A filter matching nothing says so.
        s.key(key(KeyCode::Char('z')));
        let text = screen(&render(&mut s, 80, 24, now));
        assert!(text.contains("no agent matches the filter"), "{text}");
    }

    #[test]
    fn a_read_only_key_sees_start_stop_restart_disabled() {
        let (mut s, now) = busy_state();
        s.access = Access::from_identity(Some(Identity {
            name: Some("viewer".into()),
            role: "read".into(),
        }));
        let b = render(&mut s, 80, 24, now);
        let text = screen(&b);
        assert!(text.contains("key viewer (read-only)"), "{text}");
        for item in ["s start", "x stop", "r restart"] {
            let (x, y) = find(&b, item).unwrap_or_else(|| panic!("{item}: {text}"));
            assert_eq!(y, 23);
            for dx in 0..item.len() as u16 {
                let m = b[(x + dx, y)].modifier;
                assert!(m.contains(Modifier::CROSSED_OUT | Modifier::DIM), "{item}");
            }
        }
        let (x, y) = find(&b, "/ filter").unwrap();
        assert!(!b[(x, y)].modifier.contains(Modifier::CROSSED_OUT));
        // Pressing one says why, on the status line.
        s.key(key(KeyCode::Char('x')));
        let b = render(&mut s, 80, 24, now);
        let (_, y) = find(&b, "read-only: the key \"viewer\" has the role read").unwrap();
        assert_eq!(y, 22);
        // An operator's footer has them enabled.
        s.access = Access::from_identity(Some(Identity {
            name: Some("ops".into()),
            role: "operate".into(),
        }));
        let b = render(&mut s, 80, 24, now);
        let (x, y) = find(&b, "x stop").unwrap();
        assert!(!b[(x, y)].modifier.contains(Modifier::CROSSED_OUT));
    }

    #[test]
    fn confirm_help_log_and_a_small_terminal() {
        let (mut s, now) = busy_state();
        s.key(key(KeyCode::Char('x')));
        let b = render(&mut s, 80, 24, now);
        assert!(
            lines(&b)[22].starts_with(" Stop api? y stop  n keep it"),
            "{}",
            screen(&b)
        );
        s.key(key(KeyCode::Char('n')));
        s.key(key(KeyCode::Char('?')));
        let text = screen(&render(&mut s, 80, 24, now));
        assert!(
            text.contains("Keys") && text.contains("start, stop (asks y/n), restart"),
            "{text}"
        );
        s.key(key(KeyCode::Char(' ')));
        s.key(key(KeyCode::Enter));
        let b = render(&mut s, 80, 24, now);
        let text = screen(&b);
        assert!(lines(&b)[1].contains("Log api"), "{text}");
        assert!(!text.contains("Status changes"), "{text}");
        assert!(lines(&b)[23].contains("⏎ back"), "{text}");
        let text = screen(&render(&mut s, 30, 8, now));
        assert!(text.starts_with("agentsd top needs 40x10"), "{text}");
    }

    #[test]
    fn several_hosts_have_a_host_column_and_a_line_for_each_down() {
        let now = Instant::now();
        let mut s = State::several(["lab".to_string(), "prod".into(), "gone".into()], true);
        s.host_link("lab", Link::Live);
        s.host_link("prod", Link::Live);
        s.host_link(
            "gone",
            Link::Reconnecting("cannot reach https://gone:8487".into()),
        );
        s.host_snapshot("prod", vec![summary("api", Status::Running)], now);
        s.host_snapshot(
            "lab",
            vec![summary("api", Status::Stopped), summary("web", Status::Running)],
            now,
        );
        let b = render(&mut s, 100, 24, now);
        let text = screen(&b);
        assert!(text.contains("3 contexts, 2 live"), "{text}");
        let rows: Vec<Vec<String>> = lines(&b)
            .iter()
            .map(|l| {
                l.trim_matches(|c| c == '│' || c == ' ')
                    .split_whitespace()
                    .take(3)
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        let at = rows
            .iter()
            .position(|r| r.first().map(String::as_str) == Some("HOST"))
            .unwrap();
        assert_eq!(rows[at], ["HOST", "AGENT", "STATUS"], "{text}");
        assert_eq!(rows[at + 1], ["gone", "unreachable,", "retrying:"], "{text}");
        assert!(
            lines(&b)[at + 1].contains("cannot reach https://gone:8487"),
            "{text}"
        );
        assert_eq!(rows[at + 2], ["lab", "api", "stopped"], "{text}");
        assert_eq!(rows[at + 3], ["lab", "web", "running"], "{text}");
        assert_eq!(rows[at + 4], ["prod", "api", "running"], "{text}");
        assert!(text.contains("· 1 host not live"), "{text}");
        // The selection (on the first agent seen, it stays on it), its
        // detail line names its host.
        assert_eq!(s.selected(), Some("prod/api"));
        assert!(text.contains(" prod/api running  pid 4242"), "{text}");
    }
}
