//! One module per subcommand.

mod client;
#[cfg(feature = "server")]
mod config_check;
#[cfg(feature = "server")]
mod doctor;
mod edits;
mod gen_docs;
mod provision;
#[cfg(feature = "server")]
mod serve;

#[cfg(feature = "server")]
use crate::cli::ConfigCommand;
use crate::cli::{Cli, ColorWhen, Command};
use std::process::ExitCode;

/// Writing a command's own output failed. A closed pipe (`agentsd config
/// check | head`) ends the command quietly and successfully, as the client
/// commands do; [`crate::main`] tells it apart from other failures.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the output: {0}")]
pub struct OutputError(#[from] pub std::io::Error);

impl OutputError {
    pub fn is_closed_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

/// `println!` that returns an [`OutputError`] instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::commands::OutputError)
    }};
}

/// `eprintln!` that never panics: a message nobody can read is dropped.
#[cfg(feature = "server")]
macro_rules! warn_user {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($arg)*);
    }};
}
pub(crate) use say;
#[cfg(feature = "server")]
pub(crate) use warn_user;

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.color {
        ColorWhen::Auto => {}
        ColorWhen::Always => anstream::ColorChoice::Always.write_global(),
        ColorWhen::Never => anstream::ColorChoice::Never.write_global(),
    }
    let client_result = match cli.command {
        #[cfg(feature = "server")]
        Command::Serve(args) => return serve::run(args),
        #[cfg(feature = "server")]
        Command::Config(ConfigCommand::Check { config }) => return config_check::run(config.as_deref()),
        Command::GenKey(args) => return provision::gen_key(args),
        #[cfg(feature = "server")]
        Command::UpgradeCheck(args) => return serve::upgrade_check(args),
        #[cfg(feature = "server")]
        Command::InstallUnit(args) => return provision::install_unit(args),
        #[cfg(feature = "server")]
        Command::Doctor(args) => return doctor::run(args),
        Command::GenerateDocs { out } => return gen_docs::run(&out),
        Command::Agents { connect, command } => {
            client::runtime()?.block_on(client::agents(command, &connect))
        }
        Command::Logs { connect, args } => client::runtime()?.block_on(client::logs(args, &connect)),
        Command::Status { connect, args } => client::runtime()?.block_on(client::status(args, &connect)),
        Command::History { connect, args } => client::runtime()?.block_on(client::history(args, &connect)),
        Command::Send { connect, args } => client::runtime()?.block_on(edits::send(args, &connect)),
        Command::Audit { connect, args } => client::runtime()?.block_on(client::audit(args, &connect)),
        Command::Top { connect } => client::runtime()?.block_on(client::top(&connect)),
        Command::Upgrade { connect, args } => client::runtime()?.block_on(client::upgrade(args, &connect)),
    };
    Ok(match client_result {
        Ok(()) => ExitCode::SUCCESS,
        // `agentsd agents list | head` is not an error.
        Err(client::Failure::Io(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(client::Failure::Io(e)) => {
            let _ = std::io::Write::write_fmt(&mut anstream::stderr(), format_args!("agentsd: {e}\n"));
            ExitCode::from(crate::client::exit::ERROR)
        }
        Err(client::Failure::Reported(code)) => ExitCode::from(code),
        Err(client::Failure::Client(e)) => {
            let _ = std::io::Write::write_fmt(&mut anstream::stderr(), format_args!("agentsd: {e}\n"));
            ExitCode::from(e.exit_code())
        }
    })
}
