//! agentsd: a process supervisor with a secure remote API.

pub mod api;
pub mod certs;
pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod logs;
pub mod memory;
pub mod paths;
pub mod provision;
pub mod secret;
pub mod server;
pub mod store;
pub mod supervisor;
pub mod wire;

use std::process::ExitCode;

/// Parses the command line, runs the command, and maps the outcome to an
/// exit code.
pub fn main() -> ExitCode {
    use clap::Parser;
    let cli = cli::Cli::parse();
    // The one TLS crypto provider, for the server and the client alike.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            let mut err = anstream::stderr();
            let _ = std::io::Write::write_fmt(&mut err, format_args!("agentsd: {e:#}\n"));
            ExitCode::FAILURE
        }
    }
}
