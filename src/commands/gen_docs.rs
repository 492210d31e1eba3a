//! `agentsd generate-docs`: man pages and shell completions from the clap
//! definitions, written byte for byte the same on every run.

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
    for (shell, file) in [
        (Shell::Bash, "agentsd.bash"),
        (Shell::Zsh, "_agentsd"),
        (Shell::Fish, "agentsd.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "agentsd", &mut buf);
        write(&completions.join(file), &buf)?;
    }
    println!("wrote {} and {}", man.display(), completions.display());
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

fn write(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}
