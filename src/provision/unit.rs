//! The systemd unit that runs `agentsd serve`.

use std::path::Path;

pub const UNIT_PATH: &str = "etc/systemd/system/agentsd.service";

/// The unit text. Hardening is limited to what cannot break an agent: the
/// kernel is off limits, /usr and /etc are read-only, but agents keep
/// their network, /tmp, home directories, /opt and /srv. The unit's
/// cgroup is delegated to the daemon (`Delegate=yes`): each agent gets a
/// cgroup of its own under it (so `ProtectControlGroups`, which would make
/// it read-only, is not set). `edits`: the config has `api_edits = true`,
/// so the daemon writes its config file: the file's directory is made
/// writable to the unit (and only then).
pub fn render(bin: &Path, config: &Path, user: Option<&str>, edits: bool) -> String {
    // The user's primary group applies; a group of the same name may not exist.
    let user = match user {
        Some(u) => format!("User={u}\n"),
        None => String::new(),
    };
    let writable = match config.parent().filter(|_| edits) {
        Some(dir) => format!(
            "# api_edits = true: the daemon writes its config file (beside it, then renamed).\nReadWritePaths={}\n",
            exec_arg(dir)
        ),
        None => String::new(),
    };
    format!(
        "\
# Written by `agentsd install-unit`.
[Unit]
Description=agentsd: supervisor of long-running agents
Documentation=man:agentsd(1) man:agentsd-serve(1)
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
ExecStart={bin} serve --config {config}
ExecReload=/bin/kill -HUP $MAINPID
# In-place upgrade (the agents keep running): `agentsd upgrade`, or
# `systemctl kill --kill-whom=main -s USR2 agentsd`; RELOADING=1, then READY=1.
EnvironmentFile=-/etc/agentsd/agentsd.env
{user}Restart=always
RestartSec=2s
# The daemon stops every agent itself (each within its stop_timeout); the
# control-group kill after that leaves no agent process behind.
KillMode=mixed
# Each agent runs in a cgroup of its own below the unit's: nothing an agent
# starts escapes a stop, whatever it does to its group, session or
# environment.
Delegate=yes
TimeoutStopSec=5min
LimitNOFILE=1048576
StateDirectory=agentsd
StateDirectoryMode=0700
LogsDirectory=agentsd
ConfigurationDirectory=agentsd
ProtectSystem=full
{writable}ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
LockPersonality=yes
RestrictRealtime=yes

[Install]
WantedBy=multi-user.target
",
        bin = exec_arg(bin),
        config = exec_arg(config),
    )
}

/// A path as one argument of ExecStart: `%` and `$` escaped, and quoted when
/// it holds spaces, quotes or backslashes.
fn exec_arg(p: &Path) -> String {
    let s = p.display().to_string().replace('%', "%%").replace('$', "$$");
    if s.chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '\\' || c == '\'')
    {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_args_are_escaped() {
        assert_eq!(exec_arg(Path::new("/usr/bin/agentsd")), "/usr/bin/agentsd");
        assert_eq!(
            exec_arg(Path::new("/opt/my bots/agentsd")),
            "\"/opt/my bots/agentsd\""
        );
        assert_eq!(exec_arg(Path::new("/srv/100%/$x.toml")), "/srv/100%%/$$x.toml");
    }

    #[test]
    fn the_config_directory_is_writable_only_with_api_edits() {
        let config = Path::new("/etc/agentsd/agentsd.toml");
        let bin = Path::new("/usr/bin/agentsd");
        assert!(!render(bin, config, None, false).contains("ReadWritePaths"));
        let unit = render(bin, config, None, true);
        assert!(
            unit.contains("ProtectSystem=full\n# api_edits = true: the daemon writes its config file (beside it, then renamed).\nReadWritePaths=/etc/agentsd\n"),
            "{unit}"
        );
    }
}
