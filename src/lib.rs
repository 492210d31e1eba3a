//! agentsd: a process supervisor with a secure remote API.
//!
//! The binary calls [`main`]; the integration tests also use the protocol
//! ([`wire`]), API keys ([`secret`]) and certificates ([`certs`]). Everything
//! else is the crate's own (see ARCHITECTURE.md for the rooms).

#[cfg(feature = "server")]
mod acme;
#[cfg(feature = "server")]
mod api;
pub mod certs;
mod cli;
mod client;
mod commands;
// The daemon's modules exist only in the `server` build: the client-only
// build (`cargo check --no-default-features`, in CI) is the check that
// `client/` and `wire` use none of them.
#[cfg(feature = "server")]
mod config;
#[cfg(feature = "server")]
mod fds;
#[cfg(feature = "server")]
mod fleet;
#[cfg(feature = "server")]
mod host;
#[cfg(feature = "server")]
mod logs;
#[cfg(feature = "server")]
mod memory;
mod paths;
#[cfg(feature = "server")]
mod provision;
pub mod secret;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod store;
#[cfg(feature = "server")]
mod supervisor;
#[cfg(feature = "server")]
mod upgrade;
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
        // `agentsd config check | head` is not an error.
        Err(e)
            if e.downcast_ref::<commands::OutputError>()
                .is_some_and(|o| o.is_closed_pipe()) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut err = anstream::stderr();
            let _ = std::io::Write::write_fmt(&mut err, format_args!("agentsd: {e:#}\n"));
            ExitCode::FAILURE
        }
    }
}
