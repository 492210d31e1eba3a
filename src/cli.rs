//! The command line: every subcommand and flag, in one place, so that the
//! man pages and completions can be generated from it.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "agentsd",
    version,
    about = "Supervise long-running agents and control them over a secure HTTPS API"
)]
#[command(propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon: supervise the agents of the config file and serve the API.
    Serve(ServeArgs),
    /// Work with the config file.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The config file [default: /etc/agentsd/agentsd.toml, else a built-in default].
    #[arg(long, env = "AGENTSD_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Listen on this address instead of the config's `server.listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a config file; exits non-zero and prints every error found.
    Check {
        /// The config file [default: /etc/agentsd/agentsd.toml].
        #[arg(long, env = "AGENTSD_CONFIG", value_name = "PATH")]
        config: Option<PathBuf>,
    },
}
