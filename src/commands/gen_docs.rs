//! `agentsd generate-docs`: man pages and shell completions from the clap
//! definitions, and `agentsd.toml(5)` from its source beside this file,
//! written byte for byte the same on every run.

use crate::cli::Cli;
use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;
use std::path::Path;

pub fn run(out: &Path) -> anyhow::Result<std::process::ExitCode> {
    let man = out.join("man");
    let completions = out.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let mut cmd = Cli::command();
    // Propagates global flags and the version into every subcommand.
    cmd.build();
    write_man(&man, &cmd, "agentsd")?;
    write(&man.join("agentsd.toml.5"), config_page().as_bytes())?;
    for (shell, file) in [
        (Shell::Bash, "agentsd.bash"),
        (Shell::Zsh, "_agentsd"),
        (Shell::Fish, "agentsd.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "agentsd", &mut buf);
        write(&completions.join(file), &buf)?;
    }
    super::say!("wrote {} and {}", man.display(), completions.display())?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// One page per command: `agentsd.1`, `agentsd-agents.1`, `agentsd-agents-list.1`, ...
fn write_man(dir: &Path, cmd: &clap::Command, name: &str) -> anyhow::Result<()> {
    let page = cmd
        .clone()
        .name(name.to_string())
        .bin_name(name.replace('-', " "));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page).render(&mut buf)?;
    write(&dir.join(format!("{name}.1")), &buf)?;
    // clap's own `help` subcommands need no pages.
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_man(dir, sub, &format!("{name}-{}", sub.get_name()))?;
    }
    Ok(())
}

/// The source of `agentsd.toml(5)`: `# SECTION`, `## Subsection`, `: tag`
/// then its paragraph, lines indented by four spaces as an example, blank
/// lines between paragraphs.
const CONFIG_PAGE: &str = include_str!("agentsd.toml.5.txt");

/// `agentsd.toml(5)` in roff.
fn config_page() -> String {
    use clap_mangen::roff::{Roff, bold, roman};
    let mut page = Roff::new();
    let title = format!("agentsd {}", env!("CARGO_PKG_VERSION"));
    page.control("TH", ["agentsd.toml", "5", "", title.as_str()]);
    let mut para: Vec<&str> = Vec::new();
    let mut in_example = false;
    // Whether a .PP is needed before the next paragraph.
    let mut needs_break = false;
    let flush = |page: &mut Roff, para: &mut Vec<&str>, needs_break: &mut bool| {
        if !para.is_empty() {
            if *needs_break {
                page.control("PP", []);
            }
            page.text([roman(para.join(" "))]);
            para.clear();
            *needs_break = true;
        }
    };
    for line in CONFIG_PAGE.lines() {
        if let Some(code) = line.strip_prefix("    ") {
            flush(&mut page, &mut para, &mut needs_break);
            if !in_example {
                page.control("PP", []).control("nf", []).control("RS", ["4"]);
                in_example = true;
            }
            page.text([roman(code)]);
            continue;
        }
        if in_example {
            if line.is_empty() {
                page.text([roman("")]);
                continue;
            }
            page.control("RE", []).control("fi", []);
            in_example = false;
            needs_break = true;
        }
        if let Some(h) = line.strip_prefix("## ") {
            flush(&mut page, &mut para, &mut needs_break);
            page.control("SS", [h]);
            needs_break = false;
        } else if let Some(h) = line.strip_prefix("# ") {
            flush(&mut page, &mut para, &mut needs_break);
            page.control("SH", [h]);
            needs_break = false;
        } else if let Some(tag) = line.strip_prefix(": ") {
            flush(&mut page, &mut para, &mut needs_break);
            page.control("TP", []).text([bold(tag)]);
            needs_break = false;
        } else if line.trim().is_empty() {
            flush(&mut page, &mut para, &mut needs_break);
        } else {
            para.push(line.trim());
        }
    }
    flush(&mut page, &mut para, &mut needs_break);
    if in_example {
        page.control("RE", []).control("fi", []);
    }
    page.render()
}

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
