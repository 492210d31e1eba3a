//! How client commands show things to people: aligned tables, statuses in
//! colour (only on a terminal; `NO_COLOR` and `--color` are honoured by
//! anstream), and short relative times.

use crate::wire::{AgentSummary, Status};
use anstyle::{AnsiColor, Style};
use std::io::{self, Write};

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
        (Status::Failed, _, _, Some(r)) => r.clone(),
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
