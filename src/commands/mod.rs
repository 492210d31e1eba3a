//! One module per subcommand.

mod config_check;
mod serve;

use crate::cli::{Cli, Command, ConfigCommand};
use std::process::ExitCode;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Config(ConfigCommand::Check { config }) => config_check::run(config.as_deref()),
    }
}
