//! Agent processes: spawning each in its own process group, signalling and
//! inspecting groups, and killing what a crashed daemon left behind.

use crate::config::AgentConfig;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::io;
use std::process::Stdio;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// Set in every agent's environment; also how leftovers of an agent are
/// recognised after a daemon crash.
pub const AGENT_ID_VAR: &str = "AGENTSD_AGENT_ID";
/// The daemon's state dir, in every agent's environment: what a descendant
/// that left the agent's process group still carries.
pub const INSTANCE_VAR: &str = "AGENTSD_INSTANCE";

pub struct Spawned {
    pub child: Child,
    pub pid: u32,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

/// Starts the agent's command in a new process group. The error is the
/// reason reported with status `failed`.
pub fn spawn(cfg: &AgentConfig, instance: &str) -> Result<Spawned, String> {
    let program = &cfg.command[0];
    let mut cmd = Command::new(program);
    cmd.args(&cfg.command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(cwd) = &cfg.cwd {
        if !cwd.is_dir() {
            return Err(format!(
                "working directory {} does not exist or is not a directory",
                cwd.display()
            ));
        }
        cmd.current_dir(cwd);
    }
    // The daemon's own secrets and settings are not the agent's business.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AGENTSD_") {
            cmd.env_remove(&k);
        }
    }
    if let Some(path) = &cfg.env_file {
        let iter = dotenvy::from_path_iter(path)
            .map_err(|e| format!("cannot read env_file {}: {e}", path.display()))?;
        for item in iter {
            let (k, v) = item.map_err(|e| format!("invalid env_file {}: {e}", path.display()))?;
            cmd.env(k, v);
        }
    }
    if let Some(name) = &cfg.user {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| format!("cannot look up user {name:?}: {e}"))?
            .ok_or_else(|| format!("unknown user {name:?}"))?;
        let euid = nix::unistd::geteuid();
        if euid != user.uid {
            if !euid.is_root() {
                return Err(format!(
                    "user = {name:?} needs the daemon to run as root (it runs as uid {euid})"
                ));
            }
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        cmd.env("HOME", &user.dir).env("USER", name).env("LOGNAME", name);
    }
    cmd.envs(&cfg.env)
        .env(AGENT_ID_VAR, &cfg.id)
        .env(INSTANCE_VAR, instance);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().map_err(|e| spawn_error(program, &e))?;
    let pid = child
        .id()
        .ok_or("the process exited before it could be watched")?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("the output pipes could not be set up".into());
    };
    Ok(Spawned {
        child,
        pid,
        stdout,
        stderr,
    })
}

/// The agent's direct process is killed by the kernel the moment the daemon
/// dies, however it dies.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe system calls (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)?;
            // The daemon may have died between fork and prctl.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(io::Error::other("the daemon exited during spawn"));
            }
            Ok(())
        });
    }
}

fn spawn_error(program: &str, e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::NotFound if !program.contains('/') => {
            format!("command not found: {program:?} is not in PATH")
        }
        io::ErrorKind::NotFound => format!("command not found: {program:?} does not exist"),
        io::ErrorKind::PermissionDenied => format!("permission denied: cannot execute {program:?}"),
        _ => format!("cannot start {program:?}: {e}"),
    }
}

/// Sends `sig` to the whole process group; a group that is already gone is
/// not an error.
pub fn signal_group(pgid: u32, sig: Signal) {
    match killpg(Pid::from_raw(pgid as i32), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!("cannot send {sig} to process group {pgid}: {e}"),
    }
}

/// Whether any process of the group is still alive. Zombies do not count:
/// they are dead, only not yet reaped by whoever adopted them.
pub fn group_alive(pgid: u32) -> bool {
    // EPERM means it exists (a member changed user); only ESRCH means gone.
    if killpg(Pid::from_raw(pgid as i32), None) == Err(nix::errno::Errno::ESRCH) {
        return false;
    }
    proc_entries().any(|p| p.pgrp == pgid && p.state != 'Z')
}

struct ProcEntry {
    pid: u32,
    pgrp: u32,
    state: char,
}

/// Every process in /proc, with its state and process group.
fn proc_entries() -> impl Iterator<Item = ProcEntry> {
    std::fs::read_dir("/proc").into_iter().flatten().filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may contain anything, so parse after its ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut fields = rest.split(' ');
        let state = fields.next()?.chars().next()?;
        let _ppid = fields.next()?;
        let pgrp = fields.next()?.parse().ok()?;
        Some(ProcEntry { pid, pgrp, state })
    })
}

/// Kills what agents of an earlier daemon (with the same state dir) left
/// behind: every process that carries this daemon's instance mark in its
/// environment, wherever its process group, and processes still in a
/// recorded group that carry their agent's id (the mark or id check keeps a
/// reused group number from being mistaken for ours). Runs before any agent
/// starts; returns how many processes were killed.
pub fn kill_leftovers(groups: &[(String, i32)], instance: &str) -> usize {
    let mut killed = Vec::new();
    let mark = format!("{INSTANCE_VAR}={instance}");
    for p in proc_entries() {
        if p.state == 'Z' || p.pid == std::process::id() {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{}/environ", p.pid)) else {
            continue;
        };
        let has = |kv: &str| env.split(|b| *b == 0).any(|e| e == kv.as_bytes());
        let in_group = groups
            .iter()
            .any(|(agent, g)| *g as u32 == p.pgrp && has(&format!("{AGENT_ID_VAR}={agent}")));
        if has(&mark) || in_group {
            tracing::warn!(
                pid = p.pid,
                pgrp = p.pgrp,
                "killing a process left behind by an earlier run of the daemon"
            );
            if kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL).is_ok() {
                killed.push(p.pgrp);
            }
        }
    }
    // Wait (briefly) until they are gone, so nothing old overlaps a new start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while killed.iter().any(|g| group_alive(*g)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    killed.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_errors_are_clear() {
        let e = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(
            spawn_error("nope", &e),
            "command not found: \"nope\" is not in PATH"
        );
        assert_eq!(
            spawn_error("/x/nope", &e),
            "command not found: \"/x/nope\" does not exist"
        );
    }

    #[test]
    fn own_group_is_alive_and_a_free_one_is_not() {
        let own = nix::unistd::getpgrp().as_raw() as u32;
        assert!(group_alive(own));
        // pid_max is at most 2^22; a group above it cannot exist.
        assert!(!group_alive(5_000_000));
    }
}
