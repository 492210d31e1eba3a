use crate::config;
use std::path::Path;
use std::process::ExitCode;

/// Validates the file and prints what it defines, or every error found.
pub fn run(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let path = path.unwrap_or(Path::new(config::DEFAULT_PATH));
    match config::load(Some(path)) {
        Ok(cfg) => {
            // What `serve` would refuse beyond the file itself: plain HTTP
            // off loopback, the key file, the certificate.
            if let Err(e) = crate::host::check(&cfg) {
                eprintln!("{}: {e:#}", path.display());
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "{}: ok ({} agent{}, listening on {})",
                path.display(),
                cfg.agents.len(),
                if cfg.agents.len() == 1 { "" } else { "s" },
                cfg.server.listen
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}
