//! `agentsd doctor`: the checks of `provision/doctor.rs`, one line each.

use crate::cli::DoctorArgs;
use crate::provision::doctor::{self, Check, Level};
use anstyle::{AnsiColor, Style};
use std::io::Write;
use std::process::ExitCode;

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let checks = doctor::run(&doctor::Options {
        config: args.config,
        unit: args.unit,
    });
    let failed = checks.iter().any(|c| c.status == Level::Fail);
    let mut out = std::io::BufWriter::new(anstream::stdout().lock());
    if args.json {
        #[derive(serde::Serialize)]
        struct Report<'a> {
            ok: bool,
            checks: &'a [Check],
        }
        serde_json::to_writer(
            &mut out,
            &Report {
                ok: !failed,
                checks: &checks,
            },
        )
        .map_err(std::io::Error::from)
        .map_err(super::OutputError)?;
        writeln!(out).map_err(super::OutputError)?;
    } else {
        for c in &checks {
            print(&mut out, c).map_err(super::OutputError)?;
        }
    }
    out.flush().map_err(super::OutputError)?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `ok   name: detail`, `warn name: detail (hint: ...)`, then a diff
/// indented below its line.
fn print(out: &mut impl Write, c: &Check) -> std::io::Result<()> {
    let color = match c.status {
        Level::Ok => Some(AnsiColor::Green),
        Level::Warn => Some(AnsiColor::Yellow),
        Level::Fail => Some(AnsiColor::Red),
        Level::Skip => None,
    };
    let style = Style::new().fg_color(color.map(Into::into)).bold();
    let status = format!("{:<4}", c.status.as_str());
    write!(out, "{style}{status}{style:#} {}: {}", c.name, c.detail)?;
    match &c.hint {
        Some(h) if c.status >= Level::Warn => writeln!(out, " (hint: {h})")?,
        _ => writeln!(out)?,
    }
    if let Some(diff) = &c.diff {
        for line in diff.lines() {
            let style = match line.as_bytes().first() {
                Some(b'+') if !line.starts_with("+++") => {
                    Style::new().fg_color(Some(AnsiColor::Green.into()))
                }
                Some(b'-') if !line.starts_with("---") => Style::new().fg_color(Some(AnsiColor::Red.into())),
                Some(b'@') => Style::new().fg_color(Some(AnsiColor::Cyan.into())),
                _ => Style::new(),
            };
            writeln!(out, "     {style}{line}{style:#}")?;
        }
    }
    Ok(())
}
