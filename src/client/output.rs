//! How client commands show things to people: aligned tables, statuses in
//! colour (only on a terminal; `NO_COLOR` and `--color` are honoured by
//! anstream), short relative times, and text from agents with its control
//! characters made visible.

use crate::wire::{AgentSummary, Status};
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
        Status::Starting | Status::Stopping | Status::Backoff => AnsiColor::Yellow,
        Status::Failed => AnsiColor::Red,
        Status::Stopped | Status::Exited => AnsiColor::BrightBlack,
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
    match (a.status, a.uptime_s, &a.last_exit, &a.reason) {
        (Status::Running | Status::Starting, Some(up), _, _) => format!("up {}", age(up)),
        (Status::Failed, _, _, Some(r)) => escape_controls(r).into_owned(),
        (_, _, Some(e), _) => match (&e.code, &e.signal) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(s)) => s.clone(),
            (None, None) => String::new(),
        },
        _ => String::new(),
    }
}

/// The agents as an aligned table.
pub fn agents_table(out: &mut dyn Write, agents: &[AgentSummary]) -> io::Result<()> {
    let rows: Vec<[String; 6]> = agents
        .iter()
        .map(|a| {
            [
                a.id.clone(),
                a.status.to_string(),
                a.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                a.restarts.to_string(),
                a.msg_count_24h
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                detail(a),
            ]
        })
        .collect();
    let header = ["AGENT", "STATUS", "PID", "RESTARTS", "MSGS/24H", "INFO"];
    let mut width = header.map(str::len);
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let bold = Style::new().bold();
    for (i, h) in header.iter().enumerate() {
        let sep = if i + 1 == header.len() { "\n" } else { "  " };
        let pad = if i + 1 == header.len() { 0 } else { width[i] };
        write!(out, "{bold}{h:<pad$}{bold:#}{sep}")?;
    }
    for (a, r) in agents.iter().zip(&rows) {
        let st = status_style(a.status);
        write!(
            out,
            "{:<w0$}  {st}{:<w1$}{st:#}  {:>w2$}  {:>w3$}  {:>w4$}  ",
            r[0],
            r[1],
            r[2],
            r[3],
            r[4],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3],
            w4 = width[4]
        )?;
        writeln!(out, "{}", r[5])?;
    }
    Ok(())
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

    #[test]
    fn table_is_aligned_and_plain_without_a_terminal() {
        let a = |id: &str, status, pid, up| AgentSummary {
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
        };
        let mut buf = anstream::StripStream::new(Vec::new());
        agents_table(
            &mut buf,
            &[
                a("bot", Status::Running, Some(42), Some(3600)),
                a("long-agent-name", Status::Stopped, None, None),
            ],
        )
        .unwrap();
        let text = String::from_utf8(buf.into_inner()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "AGENT            STATUS   PID  RESTARTS  MSGS/24H  INFO"
        );
        assert_eq!(
            lines[1],
            "bot              running   42         0         -  up 1h0m"
        );
        assert_eq!(lines[2], "long-agent-name  stopped    -         0         -  ");
    }
}
