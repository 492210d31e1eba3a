use super::{OutputError, say, warn_user};
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
                warn_user!("{}: {e:#}", path.display());
                return Ok(ExitCode::FAILURE);
            }
            say!(
                "{}: ok ({} agent{}, listening on {})",
                path.display(),
                cfg.agents.len(),
                if cfg.agents.len() == 1 { "" } else { "s" },
                cfg.server.listen
            )?;
            print_keys(&cfg)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            warn_user!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The keys the daemon would accept, by name and role; of a digest only
/// its first characters.
fn print_keys(cfg: &config::Config) -> Result<(), OutputError> {
    let own = match &cfg.server.api_key_file {
        Some(p) => Some((config::FILE_KEY_NAME, p.display().to_string())),
        None if std::env::var_os(config::ENV_KEY_NAME).is_some() => {
            Some((config::ENV_KEY_NAME, "from the environment".to_string()))
        }
        None => None,
    };
    let mut rows: Vec<(String, String, String)> = own
        .map(|(name, from)| (name.to_string(), "admin".to_string(), from))
        .into_iter()
        .collect();
    rows.extend(cfg.keys.iter().map(|k| {
        (
            k.name.clone(),
            k.role.to_string(),
            crate::secret::digest_short(&k.digest),
        )
    }));
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    say!("keys:")?;
    for (name, role, from) in rows {
        say!("  {name:<width$}  {role:<7}  {from}")?;
    }
    Ok(())
}
