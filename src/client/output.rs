//! How client commands show things to people: aligned tables, statuses in
//! colour (only on a terminal; `NO_COLOR` and `--color` are honoured by
//! anstream), short relative times, and text from agents with its control
//! characters made visible.

use crate::wire::{AgentSummary, AuditEntry, ExitInfo, HealthState, HistoryEntry, Status};
use anstyle::{AnsiColor, Style};
use std::borrow::Cow;
use std::io::{self, Write};

/// Control characters made visible, so that text from an agent cannot drive
/// the terminal (set its title, clear it, move the cursor): ESC shows as
/// `\x1b`, BEL as `\x07`, a C1 control as `\u{9b}`. Tab is kept.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    escape_except(s, &['\t'])
}

/// The same, keeping line breaks too (for multi-line text such as a
/// config error).
pub fn escape_controls_but_newlines(s: &str) -> Cow<'_, str> {
    escape_except(s, &['\t', '\n'])
}

fn escape_except<'a>(s: &'a str, keep: &[char]) -> Cow<'a, str> {
    let shown = |c: char| !c.is_control() || keep.contains(&c);
    if s.chars().all(shown) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            c if shown(c) => out.push(c),
            c if (c as u32) < 0x80 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

/// How log lines go to stdout: exactly as the agent wrote them, or with
/// control characters made visible (on a terminal, unless `--raw`).
#[derive(Debug, Clone, Copy)]
pub struct LogText {
    pub escape: bool,
}

impl LogText {
    /// Escapes on a terminal, unless `raw`.
    pub fn for_stdout(raw: bool) -> LogText {
        use std::io::IsTerminal;
        LogText {
            escape: !raw && io::stdout().is_terminal(),
        }
    }

    pub fn show<'a>(&self, line: &'a str) -> Cow<'a, str> {
        if self.escape {
            escape_controls(line)
        } else {
            Cow::Borrowed(line)
        }
    }
}

pub fn status_style(s: Status) -> Style {
    let color = match s {
        Status::Running => AnsiColor::Green,
        Status::Starting | Status::Stopping | Status::Backoff | Status::Waiting => AnsiColor::Yellow,
        Status::Failed => AnsiColor::Red,
        Status::Stopped | Status::Exited => AnsiColor::BrightBlack,
    };
    Style::new().fg_color(Some(color.into()))
}

pub fn health_style(h: Option<HealthState>) -> Style {
    let color = match h {
        Some(HealthState::Healthy) => AnsiColor::Green,
        Some(HealthState::Starting) => AnsiColor::Yellow,
        Some(HealthState::Unhealthy) => AnsiColor::Red,
        None => return Style::new(),
    };
    Style::new().fg_color(Some(color.into()))
}

/// `3h12m`, `45s`, `2d4h`: the two largest units.
pub fn age(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// What the STATUS column says beyond the status: uptime, or why it ended.
fn detail(a: &AgentSummary) -> String {
    let sick = match (a.health, &a.health_detail) {
        (Some(HealthState::Unhealthy), Some(d)) => format!(", {}", escape_controls(d)),
        _ => String::new(),
    };
    match (a.status, a.uptime_s, &a.last_exit, &a.reason) {
        (Status::Running | Status::Starting, Some(up), _, _) => format!("up {}{sick}", age(up)),
        (Status::Failed | Status::Waiting, _, _, Some(r)) => escape_controls(r).into_owned(),
        (_, _, Some(e), _) => match (&e.code, &e.signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => s.clone(),
            (None, None) => String::new(),
        },
        _ => String::new(),
    }
}

/// `12.5%`: percent of one core, so a process on two cores shows up to 200%.
pub fn cpu(pct: f64) -> String {
    format!("{pct:.1}%")
}

/// `48.2M`: bytes in binary units (K is 1024), one decimal; below 1 KiB,
/// whole bytes (`512B`).
pub fn mem(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["K", "M", "G", "T", "P", "E"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    // 1023.96 would print as `1024.0`: that is the next unit already.
    while v >= 1023.95 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

/// Writes `rows` as columns separated by two spaces, each padded to its
/// widest cell (right-aligned where `right` says), the last one unpadded;
/// `style` colours a cell (its padding stays outside the colour codes).
fn columns<const N: usize>(
    out: &mut dyn Write,
    header: Option<[&str; N]>,
    rows: &[[String; N]],
    right: [bool; N],
    style: impl Fn(usize, usize) -> Style,
) -> io::Result<()> {
    let mut width = [0; N];
    for r in header
        .iter()
        .map(|h| h.map(str::to_string))
        .chain(rows.iter().cloned())
    {
        for (w, c) in width.iter_mut().zip(&r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cells: &[String; N], styles: &dyn Fn(usize) -> Style| -> io::Result<()> {
        // Trailing empty cells add no padding.
        let last = cells.iter().rposition(|c| !c.is_empty()).unwrap_or(0);
        for (i, c) in cells.iter().enumerate().take(last + 1) {
            let pad = width[i] - c.chars().count();
            let st = styles(i);
            if right[i] {
                write!(out, "{:pad$}{st}{c}{st:#}", "")?;
            } else if i == last {
                write!(out, "{st}{c}{st:#}")?;
            } else {
                write!(out, "{st}{c}{st:#}{:pad$}", "")?;
            }
            if i != last {
                write!(out, "  ")?;
            }
        }
        writeln!(out)
    };
    if let Some(h) = header {
        let bold = Style::new().bold();
        line(&h.map(str::to_string), &|_| bold)?;
    }
    for (r, cells) in rows.iter().enumerate() {
        line(cells, &|c| style(r, c))?;
    }
    Ok(())
}

/// One agent's cells of the agents table.
fn agent_cells(a: &AgentSummary) -> [String; 9] {
    let dash = || "-".to_string();
    [
        a.id.clone(),
        a.status.to_string(),
        a.health.map_or_else(dash, |h| h.to_string()),
        a.pid.map_or_else(dash, |p| p.to_string()),
        a.resources.map_or_else(dash, |r| cpu(r.cpu_pct)),
        a.resources.map_or_else(dash, |r| mem(r.rss_bytes)),
        a.restarts.to_string(),
        a.msg_count_24h.map_or_else(dash, |n| n.to_string()),
        detail(a),
    ]
}

const AGENT_HEADER: [&str; 9] = [
    "AGENT", "STATUS", "HEALTH", "PID", "CPU", "MEM", "RESTARTS", "MSGS/24H", "INFO",
];
const AGENT_RIGHT: [bool; 9] = [false, false, false, true, true, true, true, true, false];

/// The agents as an aligned table.
pub fn agents_table(out: &mut dyn Write, agents: &[AgentSummary]) -> io::Result<()> {
    let rows: Vec<[String; 9]> = agents.iter().map(agent_cells).collect();
    columns(out, Some(AGENT_HEADER), &rows, AGENT_RIGHT, |r, c| match c {
        1 => status_style(agents[r].status),
        2 => health_style(agents[r].health),
        _ => Style::new(),
    })
}

/// The agents of several hosts as one table, each row led by its host
/// (the context's name), in the order given.
pub fn host_agents_table(out: &mut dyn Write, agents: &[(&str, &AgentSummary)]) -> io::Result<()> {
    let rows: Vec<[String; 10]> = agents
        .iter()
        .map(|(host, a)| {
            let mut row: [String; 10] = Default::default();
            row[0] = escape_controls(host).into_owned();
            for (cell, c) in row[1..].iter_mut().zip(agent_cells(a)) {
                *cell = c;
            }
            row
        })
        .collect();
    let mut header = ["HOST"; 10];
    header[1..].copy_from_slice(&AGENT_HEADER);
    let mut right = [false; 10];
    right[1..].copy_from_slice(&AGENT_RIGHT);
    columns(out, Some(header), &rows, right, |r, c| match c {
        2 => status_style(agents[r].1.status),
        3 => health_style(agents[r].1.health),
        _ => Style::new(),
    })
}

/// One host of `status --context all`: its name, health (`ok`,
/// `degraded`), version, URL and its agents counted by status.
pub struct HostStatusRow {
    pub host: String,
    pub health: String,
    pub version: String,
    pub url: String,
    pub agents: String,
}

/// Several hosts' status, one line each.
pub fn host_status_table(out: &mut dyn Write, hosts: &[HostStatusRow]) -> io::Result<()> {
    let rows: Vec<[String; 5]> = hosts
        .iter()
        .map(|h| [&h.host, &h.health, &h.version, &h.url, &h.agents].map(|s| escape_controls(s).into_owned()))
        .collect();
    let header = ["HOST", "HEALTH", "VERSION", "URL", "AGENTS"];
    columns(out, Some(header), &rows, [false; 5], |r, c| {
        if c == 1 && hosts[r].health != "ok" {
            Style::new().fg_color(Some(AnsiColor::Yellow.into()))
        } else {
            Style::new()
        }
    })
}

/// How a process ended, as a history line says it.
fn exit_text(e: &ExitInfo) -> String {
    match (&e.code, &e.signal) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {}", escape_controls(s)),
        (None, None) => String::new(),
    }
}

/// An agent's history, one change a line in the order given, like
/// journalctl: time, transition, pid, exit code or signal, reason.
pub fn history(out: &mut dyn Write, entries: &[HistoryEntry]) -> io::Result<()> {
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            [
                escape_controls(&e.at).into_owned(),
                match e.health {
                    // A change of health: the status stays.
                    Some(h) => format!("{} ({h})", e.new_status),
                    None => format!("{} -> {}", e.old_status, e.new_status),
                },
                e.pid.map(|p| format!("pid {p}")).unwrap_or_default(),
                e.exit.as_ref().map(exit_text).unwrap_or_default(),
                e.reason
                    .as_deref()
                    .map(|r| escape_controls(r).into_owned())
                    .unwrap_or_default(),
            ]
        })
        .collect();
    let right = [false; 5];
    columns(out, None, &rows, right, |r, c| {
        if c == 1 {
            status_style(entries[r].new_status)
        } else {
            Style::new()
        }
    })
}

/// The audit trail, one entry a line in the order given: time, key
/// (role), client address, request, status and outcome (and what it
/// changed, where the entry says).
pub fn audit(out: &mut dyn Write, entries: &[AuditEntry]) -> io::Result<()> {
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            [
                escape_controls(&e.at).into_owned(),
                format!("{} ({})", escape_controls(&e.key), e.role),
                escape_controls(&e.remote).into_owned(),
                format!("{} {}", escape_controls(&e.method), escape_controls(&e.path)),
                match (e.count, &e.last_at) {
                    (1, _) | (_, None) => format!("{} {}", e.status, escape_controls(&e.outcome)),
                    (n, Some(last)) => format!(
                        "{} {} x{n} (last {})",
                        e.status,
                        escape_controls(&e.outcome),
                        escape_controls(last)
                    ),
                } + &e
                    .detail
                    .as_deref()
                    .map(|d| format!(": {}", escape_controls(d)))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    columns(out, None, &rows, [false; 5], |r, c| {
        let ok = (200..300).contains(&entries[r].status);
        match c {
            4 if ok => Style::new().fg_color(Some(AnsiColor::Green.into())),
            4 => Style::new().fg_color(Some(AnsiColor::Red.into())),
            _ => Style::new(),
        }
    })
}

/// A colour per agent, the same for an id in every run and on every host
/// (FNV-1a of the id picks it), so that one agent's lines are easy to follow
/// among others'.
pub fn agent_style(id: &str) -> Style {
    const PALETTE: [AnsiColor; 10] = [
        AnsiColor::Cyan,
        AnsiColor::Yellow,
        AnsiColor::Green,
        AnsiColor::Magenta,
        AnsiColor::Blue,
        AnsiColor::BrightCyan,
        AnsiColor::BrightYellow,
        AnsiColor::BrightGreen,
        AnsiColor::BrightMagenta,
        AnsiColor::BrightBlue,
    ];
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    Style::new().fg_color(Some(PALETTE[h as usize % PALETTE.len()].into()))
}

/// How `logs` prints a line: bare (one agent), prefixed with its agent
/// (several), or as a JSON object.
#[derive(Debug, Clone)]
pub struct LogPrinter {
    pub text: LogText,
    pub mode: LogMode,
    /// Colour the agent prefix (a terminal, and colour not turned off).
    pub color: bool,
    /// The prefix is padded to this width (the longest id seen so far).
    pub width: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    Bare,
    Prefixed,
    Json,
}

impl LogPrinter {
    /// For stdout: escaped on a terminal unless `raw`, the prefix coloured
    /// as `--color`, `NO_COLOR` and the terminal say.
    pub fn for_stdout(mode: LogMode, raw: bool) -> LogPrinter {
        let color = anstream::AutoStream::choice(&io::stdout()) != anstream::ColorChoice::Never;
        LogPrinter {
            text: LogText::for_stdout(raw),
            mode,
            color,
            width: 0,
        }
    }

    /// One line of output, its newline included.
    pub fn line(&mut self, agent: &str, cursor: u64, line: &str) -> String {
        match self.mode {
            LogMode::Bare => format!("{}\n", self.text.show(line)),
            LogMode::Prefixed => {
                // The daemon checks ids; what it relays is still escaped.
                let agent = escape_controls(agent);
                self.width = self.width.max(agent.chars().count());
                let st = if self.color {
                    agent_style(&agent)
                } else {
                    Style::new()
                };
                format!(
                    "{st}{agent:<w$}{st:#} | {}\n",
                    self.text.show(line),
                    w = self.width
                )
            }
            LogMode::Json => {
                let v = serde_json::json!({"agent": agent, "cursor": cursor, "line": line});
                format!("{v}\n")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(
            escape_controls("a\x1b]0;title\x07b\x1b[2J\tc"),
            "a\\x1b]0;title\\x07b\\x1b[2J\tc"
        );
        assert_eq!(
            escape_controls("cr\rnl\ndel\x7fc1\u{9b}"),
            "cr\\x0dnl\\x0adel\\x7fc1\\u{9b}"
        );
        assert_eq!(escape_controls_but_newlines("x\ny\x1b"), "x\ny\\x1b");
        assert!(matches!(escape_controls("plain, ünïcode ✓"), Cow::Borrowed(_)));
        assert_eq!(LogText { escape: false }.show("\x1b[2J"), "\x1b[2J");
    }

    #[test]
    fn ages() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(125), "2m5s");
        assert_eq!(age(3 * 3600 + 12 * 60 + 9), "3h12m");
        assert_eq!(age(2 * 86_400 + 4 * 3600), "2d4h");
    }

    fn summary(id: &str, status: Status, pid: Option<u32>, up: Option<u64>) -> AgentSummary {
        AgentSummary {
            id: id.into(),
            status,
            desired: crate::wire::Desired::Running,
            pid,
            started_at: None,
            uptime_s: up,
            restarts: 0,
            last_exit: None,
            msg_count_24h: None,
            command: vec![],
            reason: None,
            dropped_log_lines: 0,
            resources: None,
            health: None,
            health_detail: None,
        }
    }

    /// What `f` writes, colour codes stripped as on a pipe.
    fn plain(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> String {
        let mut buf = anstream::StripStream::new(Vec::new());
        f(&mut buf).unwrap();
        String::from_utf8(buf.into_inner()).unwrap()
    }

    #[test]
    fn table_is_aligned_and_plain_without_a_terminal() {
        let mut bot = summary("bot", Status::Running, Some(42), Some(3600));
        bot.health = Some(HealthState::Unhealthy);
        bot.health_detail = Some("HTTP 503".into());
        bot.resources = Some(crate::wire::Resources {
            cpu_pct: 12.46,
            rss_bytes: 50_541_363,
            processes: 2,
        });
        let text = plain(|out| {
            let mut waiting = summary("long-agent-name", Status::Waiting, None, None);
            waiting.reason = Some("waiting for bot (healthy)".into());
            agents_table(out, &[bot, waiting])
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "AGENT            STATUS   HEALTH     PID    CPU    MEM  RESTARTS  MSGS/24H  INFO",
                "bot              running  unhealthy   42  12.5%  48.2M         0         -  up 1h0m, HTTP 503",
                "long-agent-name  waiting  -            -      -      -         0         -  waiting for bot (healthy)",
            ]
        );
    }

    #[test]
    fn host_tables_lead_with_the_host() {
        let (web, api) = (
            summary("web", Status::Running, Some(7), Some(5)),
            summary("api", Status::Stopped, None, None),
        );
        let text = plain(|out| host_agents_table(out, &[("db-1", &api), ("web-12", &web)]));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "HOST    AGENT  STATUS   HEALTH  PID  CPU  MEM  RESTARTS  MSGS/24H  INFO",
                "db-1    api    stopped  -         -    -    -         0         -",
                "web-12  web    running  -         7    -    -         0         -  up 5s",
            ]
        );
        let text = plain(|out| {
            host_status_table(
                out,
                &[HostStatusRow {
                    host: "db-1".into(),
                    health: "degraded".into(),
                    version: "0.1.0".into(),
                    url: "https://db-1:8487".into(),
                    agents: "1 agent: 1 stopped".into(),
                }],
            )
        });
        assert_eq!(
            text,
            "HOST  HEALTH    VERSION  URL                AGENTS\ndb-1  degraded  0.1.0    https://db-1:8487  1 agent: 1 stopped\n"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(cpu(0.0), "0.0%");
        assert_eq!(cpu(12.46), "12.5%");
        assert_eq!(cpu(187.0), "187.0%");
        assert_eq!(mem(0), "0B");
        assert_eq!(mem(1023), "1023B");
        assert_eq!(mem(1024), "1.0K");
        assert_eq!(mem(1536), "1.5K");
        assert_eq!(mem(48 * 1024 * 1024 + 200 * 1024), "48.2M");
        assert_eq!(mem(1024 * 1024 - 1), "1.0M");
        assert_eq!(mem(3 << 30), "3.0G");
        assert_eq!(mem(u64::MAX), "16.0E");
    }

    #[test]
    fn audit_lines_say_who_did_what() {
        let e = |key: &str, role, path: &str, status, outcome: &str| AuditEntry {
            id: 0,
            at: "2026-01-01T00:00:00.000Z".into(),
            key: key.into(),
            role,
            remote: "192.0.2.7".into(),
            method: "POST".into(),
            path: path.into(),
            agent: None,
            status,
            outcome: outcome.into(),
            count: 1,
            last_at: None,
            detail: None,
        };
        use crate::wire::Role;
        let text = plain(|out| {
            audit(
                out,
                &[
                    e("oncall", Role::Operate, "/agents/bot/stop", 200, "ok"),
                    e("wall\x1b[2J", Role::Read, "/agents/bot/stop", 403, "forbidden"),
                ],
            )
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("oncall (operate)")
                && lines[0].contains("POST /agents/bot/stop")
                && lines[0].ends_with("200 ok"),
            "{text}"
        );
        assert!(
            lines[1].contains("wall\\x1b[2J (read)") && lines[1].ends_with("403 forbidden"),
            "{text}"
        );
        // Columns line up.
        assert_eq!(lines[0].find("192.0.2.7"), lines[1].find("192.0.2.7"));
        // A refusal counted many times says how often and when last.
        let mut many = e("wall", Role::Read, "/agents/bot/stop", 403, "forbidden");
        many.count = 5;
        many.last_at = Some("2026-01-01T00:01:00.000Z".into());
        let text = plain(|out| audit(out, &[many.clone()]));
        assert!(
            text.trim_end()
                .ends_with("403 forbidden x5 (last 2026-01-01T00:01:00.000Z)"),
            "{text}"
        );
    }

    #[test]
    fn history_reads_like_a_journal() {
        use crate::wire::{ExitInfo, HistoryEntry};
        let e = |at: &str, old, new, pid, exit: Option<(Option<i32>, Option<&str>)>, reason: Option<&str>| {
            HistoryEntry {
                id: 0,
                at: at.into(),
                old_status: old,
                new_status: new,
                pid,
                exit: exit.map(|(code, signal)| ExitInfo {
                    code,
                    signal: signal.map(Into::into),
                }),
                reason: reason.map(Into::into),
                health: None,
            }
        };
        let text = plain(|out| {
            history(
                out,
                &[
                    e(
                        "2026-01-01T00:00:00.000Z",
                        Status::Stopped,
                        Status::Starting,
                        None,
                        None,
                        None,
                    ),
                    e(
                        "2026-01-01T00:00:00.010Z",
                        Status::Starting,
                        Status::Running,
                        Some(7),
                        None,
                        None,
                    ),
                    e(
                        "2026-01-01T00:00:01.000Z",
                        Status::Running,
                        Status::Backoff,
                        Some(7),
                        Some((Some(3), None)),
                        None,
                    ),
                    e(
                        "2026-01-01T00:00:02.000Z",
                        Status::Running,
                        Status::Failed,
                        Some(12345),
                        Some((None, Some("SIGKILL"))),
                        Some("gave up\x1b[2J"),
                    ),
                ],
            )
        });
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "2026-01-01T00:00:00.000Z  stopped -> starting",
                "2026-01-01T00:00:00.010Z  starting -> running  pid 7",
                "2026-01-01T00:00:01.000Z  running -> backoff   pid 7      exit 3",
                "2026-01-01T00:00:02.000Z  running -> failed    pid 12345  signal SIGKILL  gave up\\x1b[2J",
            ]
        );
    }

    #[test]
    fn each_agent_keeps_its_colour() {
        // Fixed by the id alone: the same in every run, on every host.
        assert_eq!(agent_style("bot"), agent_style("bot"));
        let styles: std::collections::BTreeSet<String> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|id| agent_style(id).render().to_string())
            .collect();
        assert!(styles.len() > 3, "{styles:?}");
    }

    #[test]
    fn log_lines_bare_prefixed_or_json() {
        let mut p = LogPrinter {
            text: LogText { escape: true },
            mode: LogMode::Bare,
            color: false,
            width: 0,
        };
        assert_eq!(p.line("a", 5, "x\x1by"), "x\\x1by\n");
        p.mode = LogMode::Prefixed;
        p.width = 3;
        assert_eq!(p.line("a", 5, "hi"), "a   | hi\n");
        assert_eq!(p.line("long", 5, "hi"), "long | hi\n");
        assert_eq!(
            p.line("a", 6, "hi"),
            "a    | hi\n",
            "the widest id so far sets the width"
        );
        p.color = true;
        let st = agent_style("a");
        assert_eq!(p.line("a", 7, "hi"), format!("{st}a   {st:#} | hi\n"));
        p.mode = LogMode::Json;
        let v: serde_json::Value = serde_json::from_str(&p.line("a", 8, "x\x1by")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"agent": "a", "cursor": 8, "line": "x\x1by"})
        );
        assert!(p.line("a", 8, "x\ny").ends_with("}\n") && p.line("a", 8, "x\ny").lines().count() == 1);
    }
}
