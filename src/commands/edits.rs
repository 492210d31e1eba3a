//! `agents add`, `agents edit` and `agents rm`: the daemon's config file
//! changed over the API (`PUT` / `DELETE /agents/{id}/config`), each edit
//! made on the version of the file it read (`If-Match`); and `send`, a
//! message to an agent's stdin.

use super::client::Failure;
use crate::cli::AddArgs;
use crate::client::{Client, ClientError};
use crate::wire::ConfigEdit;
use std::io::Write as _;
use std::path::Path;

/// How often an edit that does not depend on the rest of the file (an
/// add, a remove) is tried again after the file changed under it.
const TRIES: usize = 3;

type Result<T> = std::result::Result<T, Failure>;

pub async fn add(client: &Client, args: AddArgs) -> Result<()> {
    let mut table = toml::Table::new();
    table.insert(
        "command".into(),
        toml::Value::Array(args.command.into_iter().map(toml::Value::String).collect()),
    );
    if let Some(cwd) = args.cwd {
        table.insert("cwd".into(), cwd.into());
    }
    if !args.env.is_empty() {
        let env: toml::Table = args.env.into_iter().map(|(k, v)| (k, v.into())).collect();
        table.insert("env".into(), env.into());
    }
    if args.no_autostart {
        table.insert("autostart".into(), false.into());
    }
    let mut tries = 0;
    loop {
        tries += 1;
        let (existing, etag) = client.agent_config(&args.id).await?;
        if existing.is_some() {
            return Err(ClientError::Usage(format!(
                "an agent named {:?} is in the config already: change it with `agentsd agents edit {}`",
                args.id, args.id
            ))
            .into());
        }
        match client.put_agent_config(&args.id, &table, &etag).await {
            Err(ClientError::Conflict(_)) if tries < TRIES => continue,
            done => return said(done?),
        }
    }
}

pub async fn rm(client: &Client, id: &str) -> Result<()> {
    let mut tries = 0;
    loop {
        tries += 1;
        let (existing, etag) = client.agent_config(id).await?;
        if existing.is_none() {
            return Err(ClientError::NotFound(format!("no agent named {id:?} in the config file")).into());
        }
        match client.delete_agent_config(id, &etag).await {
            Err(ClientError::Conflict(_)) if tries < TRIES => continue,
            Ok((done, true)) => {
                let mut out = anstream::stdout().lock();
                writeln!(
                    out,
                    "{}: removed from the config; still stopping (it goes once stopped)",
                    done.agent_id
                )?;
                return Ok(());
            }
            done => return said(done?.0),
        }
    }
}

/// The comment above the table in the editor.
fn header(id: &str) -> String {
    format!(
        "# The table [agents.{id}] of the daemon's config file. Save to apply it;\n\
         # save it unchanged, or empty, to change nothing. See agentsd.toml(5).\n"
    )
}

pub async fn edit(client: &Client, id: &str) -> Result<()> {
    let (existing, etag) = client.agent_config(id).await?;
    let table =
        existing.ok_or_else(|| ClientError::NotFound(format!("no agent named {id:?} in the config file")))?;
    let before = format!(
        "{}\n{}",
        header(id),
        toml::to_string(&table).map_err(|e| ClientError::Server(format!("cannot show the table: {e}")))?
    );
    let file = tempfile::Builder::new()
        .prefix(&format!("agentsd-edit-{id}-"))
        .suffix(".toml")
        .tempfile()?;
    std::fs::write(file.path(), &before)?;
    let path = file.into_temp_path();
    run_editor(&path)?;
    let after = std::fs::read_to_string(&path)?;
    let body: String = after
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    if after == before || body.trim().is_empty() {
        let mut out = anstream::stdout().lock();
        writeln!(out, "{id}: not changed")?;
        return Ok(());
    }
    // From here on a failed edit is kept, and where is said.
    let kept = |e: ClientError| -> Failure {
        let why = e.to_string();
        let code = e.exit_code();
        let place = match path.keep() {
            Ok(p) => p.display().to_string(),
            Err(_) => "(cannot keep it)".into(),
        };
        let mut err = anstream::stderr();
        let _ = writeln!(err, "agentsd: {why}");
        let _ = writeln!(err, "agentsd: your edit is kept in {place}");
        Failure::Reported(code)
    };
    let new: toml::Table = match toml::from_str(&after) {
        Ok(t) => t,
        Err(e) => {
            return Err(kept(ClientError::Invalid(format!(
                "the edited table is not valid TOML: {}",
                e.message()
            ))));
        }
    };
    match client.put_agent_config(id, &new, &etag).await {
        Ok(done) => said(done),
        Err(e @ ClientError::Conflict(_)) => Err(kept(ClientError::Conflict(format!(
            "{e}; run `agentsd agents edit {id}` again and make your change there"
        )))),
        Err(e) => Err(kept(e)),
    }
}

/// Runs `$VISUAL`, else `$EDITOR`, else `vi` on `path`, through the shell
/// as git does (so that `EDITOR="code --wait"` works).
fn run_editor(path: &Path) -> Result<()> {
    let editor = ["VISUAL", "EDITOR"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "vi".into());
    let status = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(format!("{editor} \"$@\""))
        .arg(&editor)
        .arg(path)
        .status()
        .map_err(|e| ClientError::Usage(format!("cannot run the editor {editor:?}: {e}")))?;
    if !status.success() {
        return Err(ClientError::Usage(format!(
            "the editor {editor:?} failed ({status}); nothing was changed"
        ))
        .into());
    }
    Ok(())
}

pub async fn send(args: crate::cli::SendArgs, flags: &crate::cli::ConnectFlags) -> Result<()> {
    let text = if args.text == "-" {
        let mut all = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut all)?;
        if all.ends_with('\n') {
            all.pop();
            if all.ends_with('\r') {
                all.pop();
            }
        }
        all
    } else {
        args.text
    };
    let client = super::client::connect(flags)?;
    let sent = client.message(&args.id, &text).await?;
    let mut out = anstream::stdout().lock();
    writeln!(
        out,
        "{}: {} bytes written to its stdin",
        sent.agent_id, sent.bytes
    )?;
    Ok(())
}

/// One line: the agent, what happened and the keys it touched.
fn said(e: ConfigEdit) -> Result<()> {
    let mut out = anstream::stdout().lock();
    if e.changed.is_empty() {
        writeln!(out, "{}: {}", e.agent_id, e.action)?;
    } else {
        writeln!(out, "{}: {} ({})", e.agent_id, e.action, e.changed.join(", "))?;
    }
    Ok(())
}
