//! `gen-key` (in every build) and `install-unit` (with the daemon: the
//! unit runs `agentsd serve`, and the config is checked as `serve` would).

use super::say;
use crate::cli::GenKeyArgs;
use crate::{certs, secret};
use anyhow::bail;
#[cfg(feature = "server")]
pub use install::install_unit;
use std::process::ExitCode;

pub fn gen_key(args: GenKeyArgs) -> anyhow::Result<ExitCode> {
    // Refuse before writing anything, so that a refusal leaves no half set.
    if !args.force {
        let tls = args
            .tls_dir
            .iter()
            .flat_map(|d| [d.join("cert.pem"), d.join("key.pem")]);
        if let Some(existing) = args.out.iter().cloned().chain(tls).find(|p| p.exists()) {
            bail!(
                "{} already exists (use --force to replace it)",
                existing.display()
            );
        }
    }
    let entry = match (&args.name, &args.role) {
        (Some(name), Some(role)) => {
            if !secret::is_key_name(name) {
                bail!("invalid --name {name:?}: expected 1 to 64 letters, digits, '-', '_' or '.'");
            }
            if name == secret::FILE_KEY_NAME || name == secret::ENV_KEY_NAME {
                bail!("the key name {name:?} is reserved for the daemon's own key: choose another");
            }
            Some((
                name.clone(),
                role.parse::<crate::wire::Role>().map_err(anyhow::Error::msg)?,
            ))
        }
        _ => None,
    };
    let key = secret::generate()?;
    match &args.out {
        Some(path) => {
            secret::write_private(path, format!("{key}\n").as_bytes(), args.force)?;
            say!("wrote a new API key to {} (mode 0600)", path.display())?;
        }
        None => say!("{key}")?,
    }
    if let Some((name, role)) = entry {
        let digest = secret::digest_text(&secret::digest(&key));
        say!(
            "\n# The key is shown only this once. Paste these lines into the daemon's config:\n[keys.{}]\ndigest = \"{digest}\"\nrole = \"{role}\"",
            toml_key(&name)
        )?;
    }
    if let Some(dir) = &args.tls_dir {
        let names = if args.san.is_empty() {
            certs::default_names()
        } else {
            args.san.clone()
        };
        let (files, fp) = certs::write_self_signed(dir, &names, args.force)?;
        say!(
            "wrote a self-signed certificate for {} to {} and its key to {}",
            names.join(", "),
            files.cert.display(),
            files.key.display()
        )?;
        say!("certificate fingerprint (pin it in a client context): {fp}")?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A TOML bare key as is, anything else quoted.
fn toml_key(name: &str) -> String {
    if name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        name.to_string()
    } else {
        format!("\"{name}\"")
    }
}

#[cfg(feature = "server")]
mod install {
    use super::secret;
    use crate::cli::InstallUnitArgs;
    use crate::commands::say;
    use crate::provision::unit;
    use anyhow::{Context, bail};
    use std::path::{Path, PathBuf};
    use std::process::{Command, ExitCode};

    pub fn install_unit(args: InstallUnitArgs) -> anyhow::Result<ExitCode> {
        let bin = match &args.bin {
            Some(b) => b.clone(),
            None => std::env::current_exe().context("cannot tell where this binary is; pass --bin")?,
        };
        if !bin.is_absolute() {
            bail!("--bin must be an absolute path, got {}", bin.display());
        }
        let config = std::path::absolute(&args.config).unwrap_or_else(|_| args.config.clone());
        // With `api_edits`, the daemon writes its config file; a config not
        // there yet (or invalid: refused below) has none.
        let edits = crate::config::load(Some(&config)).is_ok_and(|c| c.server.api_edits);
        let text = unit::render(&bin, &config, args.user.as_deref(), edits);
        if args.dry_run {
            std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes())
                .map_err(crate::commands::OutputError)?;
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(root) = &args.root {
            let path = root.join(unit::UNIT_PATH);
            write_unit(&path, &text)?;
            say!("wrote {}", path.display())?;
            return Ok(ExitCode::SUCCESS);
        }
        if !nix::unistd::geteuid().is_root() {
            bail!(
                "install-unit writes /{} and runs systemctl: run it as root (or use --dry-run, or --root DIR)",
                unit::UNIT_PATH
            );
        }
        if !Path::new("/run/systemd/system").exists() {
            bail!(
                "systemd is not running on this host (no /run/systemd/system); use --dry-run to see the unit"
            );
        }
        // A unit whose config does not load would only restart in a loop.
        match crate::config::load(Some(&config)) {
            Err(e) => bail!("not installing: the config the unit would run is invalid:\n{e}"),
            Ok(cfg) => crate::host::check(&cfg).map_err(|e| {
                anyhow::anyhow!("not installing: `agentsd serve` would refuse its config: {e:#}")
            })?,
        }
        let path = PathBuf::from("/").join(unit::UNIT_PATH);
        if path.exists() {
            say!("replacing the existing {}", path.display())?;
        }
        write_unit(&path, &text)?;
        say!("wrote {}", path.display())?;
        systemctl(&["daemon-reload"])?;
        if args.no_enable {
            say!("not enabled (--no-enable): start it with systemctl enable --now agentsd")?;
        } else {
            systemctl(&["enable", "--now", "agentsd.service"])?;
            say!("agentsd.service is enabled and started; follow it with journalctl -u agentsd -f")?;
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Writes the unit atomically: a reader sees the old file or the new one.
    fn write_unit(path: &Path, text: &str) -> anyhow::Result<()> {
        secret::write_atomic(path, text.as_bytes(), 0o644, true)
    }

    fn systemctl(args: &[&str]) -> anyhow::Result<()> {
        let status = Command::new("systemctl")
            .args(args)
            .status()
            .context("cannot run systemctl")?;
        if !status.success() {
            bail!("systemctl {} failed ({status})", args.join(" "));
        }
        Ok(())
    }
}
