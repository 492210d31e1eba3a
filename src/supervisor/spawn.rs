//! Spawning agents in two steps. Preparation (the working directory, the
//! env_file, the user lookup: anything that can be slow or hang, like a
//! FIFO, an NFS mount or NSS) runs on the blocking pool, one task per
//! agent, in parallel. Only the fork and exec run on the few long-lived
//! fork threads: each agent's PR_SET_PDEATHSIG is tied to the thread that
//! forked it, so those threads live as long as the daemon.
//!
//! stdout and stderr share one pipe, so the order of their lines is kept
//! and a running agent costs the daemon one pipe end (and its log file).

use super::lifecycle::SpawnError;
use crate::config::AgentConfig;
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid};
use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

/// Set in every agent's environment; also how an agent's processes are
/// recognised once they left its process group.
pub const AGENT_ID_VAR: &str = "AGENTSD_AGENT_ID";
/// The daemon's state dir, in every agent's environment: how what an
/// earlier daemon left behind is recognised.
pub const INSTANCE_VAR: &str = "AGENTSD_INSTANCE";

/// Everything the fork needs, worked out beforehand.
pub struct Prepared {
    /// As configured: what the agent sees as its name (argv[0]).
    program: String,
    /// Where it was found (PATH searched, relative to `cwd`).
    path: PathBuf,
    args: Vec<String>,
    env: Vec<(OsString, OsString)>,
    cwd: PathBuf,
    creds: Option<Creds>,
}

#[derive(Clone)]
struct Creds {
    uid: Uid,
    gid: Gid,
    /// Supplementary groups (initgroups), looked up here: NSS cannot run
    /// in a forked child.
    groups: Vec<Gid>,
}

/// A process just forked, with the reading end of its output pipe.
pub struct Forked {
    pub pid: u32,
    pub output: OwnedFd,
    /// Taken before the fork: an exit reaped before this cannot be this
    /// process's.
    pub before: Instant,
}

/// The daemon's environment as every agent inherits it: without the
/// daemon's own settings and secrets (`AGENTSD_*`).
pub fn base_env() -> Arc<Vec<(OsString, OsString)>> {
    Arc::new(
        std::env::vars_os()
            .filter(|(k, _)| !k.to_string_lossy().starts_with("AGENTSD_"))
            .collect(),
    )
}

/// Checks the working directory, reads the env_file and looks up the user.
/// Blocking: runs on the blocking pool.
pub fn prepare(
    cfg: &AgentConfig,
    base_env: &[(OsString, OsString)],
    instance: &str,
) -> Result<Prepared, SpawnError> {
    let permanent = SpawnError::Permanent;
    if !cfg.cwd.is_dir() {
        return Err(permanent(format!(
            "working directory {} does not exist or is not a directory",
            cfg.cwd.display()
        )));
    }
    let mut env: Vec<(OsString, OsString)> = base_env.to_vec();
    let mut set = |k: OsString, v: OsString| match env.iter_mut().find(|(n, _)| *n == k) {
        Some(e) => e.1 = v,
        None => env.push((k, v)),
    };
    if let Some(path) = &cfg.env_file {
        let iter = dotenvy::from_path_iter(path)
            .map_err(|e| permanent(format!("cannot read env_file {}: {e}", path.display())))?;
        for item in iter {
            let (k, v) = item.map_err(|e| permanent(format!("invalid env_file {}: {e}", path.display())))?;
            set(k.into(), v.into());
        }
    }
    let mut creds = None;
    if let Some(name) = &cfg.user {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| permanent(format!("cannot look up user {name:?}: {e}")))?
            .ok_or_else(|| permanent(format!("unknown user {name:?}")))?;
        let euid = nix::unistd::geteuid();
        if euid != user.uid {
            if !euid.is_root() {
                return Err(permanent(format!(
                    "user = {name:?} needs the daemon to run as root (it runs as uid {euid})"
                )));
            }
            creds = Some(Creds {
                uid: user.uid,
                gid: user.gid,
                groups: groups_of(name, user.gid),
            });
        }
        set("HOME".into(), user.dir.into_os_string());
        set("USER".into(), name.into());
        set("LOGNAME".into(), name.into());
    }
    for (k, v) in &cfg.env {
        set(k.into(), v.into());
    }
    set(AGENT_ID_VAR.into(), cfg.id.clone().into());
    set(INSTANCE_VAR.into(), instance.into());
    let program = cfg.command[0].clone();
    let search = env.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone());
    let path = find_program(&program, search.as_deref(), &cfg.cwd)?;
    Ok(Prepared {
        program,
        path,
        args: cfg.command[1..].to_vec(),
        env,
        cwd: cfg.cwd.clone(),
        creds,
    })
}

/// Finds the program the way exec would (a name without '/' in PATH, a
/// path relative to the working directory), so that a missing or
/// non-executable program is reported here rather than by a failed exec.
fn find_program(
    program: &str,
    path: Option<&std::ffi::OsStr>,
    cwd: &std::path::Path,
) -> Result<PathBuf, SpawnError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = cwd.join(program);
        return match std::fs::metadata(&p) {
            Err(_) => Err(SpawnError::Permanent(format!(
                "command not found: {program:?} does not exist"
            ))),
            Ok(_) if !executable(&p) => Err(SpawnError::Permanent(format!(
                "permission denied: cannot execute {program:?}"
            ))),
            Ok(_) => Ok(p),
        };
    }
    let dirs = path.map(std::env::split_paths).into_iter().flatten();
    dirs.map(|d| cwd.join(d).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| SpawnError::Permanent(format!("command not found: {program:?} is not in PATH")))
}

/// The supplementary groups of a user.
fn groups_of(name: &str, gid: Gid) -> Vec<Gid> {
    std::ffi::CString::new(name)
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, gid).ok())
        .unwrap_or_else(|| vec![gid])
}

/// A job for the fork threads: what to run, and where to say how it went.
pub struct Job {
    pub prepared: Prepared,
    pub done: Box<dyn FnOnce(Result<Forked, SpawnError>) + Send>,
}

/// Starts `threads` fork threads; jobs go to whichever is free.
pub fn fork_threads(threads: usize) -> io::Result<mpsc::Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..threads.max(1) {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("agentsd-fork-{i}"))
            .spawn(move || {
                loop {
                    let job = {
                        let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                        rx.recv()
                    };
                    let Ok(job) = job else { break };
                    // std waits for a child whose exec failed; should the
                    // daemon's reaper have collected it first, std panics.
                    // That must cost the spawn, not the thread.
                    let result =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fork(&job.prepared)))
                            .unwrap_or_else(|_| {
                                Err(SpawnError::Permanent(format!(
                                    "cannot start {:?}: its exec failed",
                                    job.prepared.program
                                )))
                            });
                    (job.done)(result);
                }
            })?;
    }
    Ok(tx)
}

/// The first argument that makes the binary the exec shim.
pub const SHIM: &str = "__agentsd-exec";

/// Starts the agent in a new process group, its stdout and stderr on one
/// pipe. The daemon does not fork itself (that copies its page tables and
/// file table, a cost that grows with the daemon): it posix_spawns (vfork)
/// its own binary as a shim that ties its life to the daemon's, becomes
/// the agent's user, and execs the agent.
fn fork(p: &Prepared) -> Result<Forked, SpawnError> {
    let before = Instant::now();
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| classify(&p.program, &io::Error::from(e)))?;
    let write2 = write.try_clone().map_err(|e| classify(&p.program, &e))?;
    let creds = match &p.creds {
        None => "-".to_string(),
        Some(c) => {
            let groups: Vec<String> = c.groups.iter().map(|g| g.to_string()).collect();
            format!("{}:{}:{}", c.uid, c.gid, groups.join(","))
        }
    };
    let mut cmd = shim_command(creds, p);
    cmd.env_clear()
        .envs(p.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&p.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(write2))
        .process_group(0);
    let child = cmd.spawn().map_err(|e| classify(&p.program, &e))?;
    // The writing ends went with `cmd`; only the agent holds them now. The
    // child is reaped by the supervisor, not through `Child`.
    drop(cmd);
    Ok(Forked {
        pid: child.id(),
        output: read,
        before,
    })
}

/// `agentsd __agentsd-exec PARENT CREDS PATH ARGV0 ARGS...`
#[cfg(not(test))]
fn shim_command(creds: String, p: &Prepared) -> Command {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("agentsd-exec")
        .arg(SHIM)
        .arg(std::process::id().to_string())
        .arg(creds)
        .arg(&p.path)
        .arg(&p.program)
        .args(&p.args);
    cmd
}

/// In the crate's own tests the binary is the test harness, which has no
/// shim: agents are started directly (and not tied to the test process).
#[cfg(test)]
fn shim_command(_creds: String, p: &Prepared) -> Command {
    let mut cmd = Command::new(&p.path);
    cmd.arg0(&p.program).args(&p.args);
    cmd
}

/// The exec shim (`agentsd __agentsd-exec PARENT CREDS PATH ARGV0 ARGS...`),
/// a fresh process: become the user (with its groups), tie its life to the
/// daemon's (the parent-death signal comes after the credentials, whose
/// change clears it), then exec the agent. What goes wrong is written to
/// the agent's log, and the exit code says which step failed.
pub fn exec_shim(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    use std::process::ExitCode;
    let fail = |what: String, code: u8| {
        eprintln!("agentsd: {what}");
        ExitCode::from(code)
    };
    let [parent, creds, path, argv0, rest @ ..] = args else {
        return fail("the exec shim is for the daemon's own use".into(), 2);
    };
    if creds != "-" {
        let parsed = creds.to_str().and_then(|c| {
            let mut it = c.splitn(3, ':');
            let uid = it.next()?.parse().ok()?;
            let gid = it.next()?.parse().ok()?;
            let groups: Option<Vec<Gid>> = it
                .next()?
                .split(',')
                .filter(|g| !g.is_empty())
                .map(|g| g.parse().ok().map(Gid::from_raw))
                .collect();
            Some((Uid::from_raw(uid), Gid::from_raw(gid), groups?))
        });
        let Some((uid, gid, groups)) = parsed else {
            return fail(format!("invalid credentials {creds:?}"), 126);
        };
        let become_user = nix::unistd::setgroups(&groups)
            .and_then(|_| nix::unistd::setgid(gid))
            .and_then(|_| nix::unistd::setuid(uid));
        if let Err(e) = become_user {
            return fail(format!("cannot become uid {uid} gid {gid}: {e}"), 126);
        }
    }
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
        return fail(format!("cannot tie the agent to the daemon: {e}"), 126);
    }
    // The daemon may have died before the parent-death signal was set.
    if parent.to_str() != Some(&nix::unistd::getppid().to_string()) {
        return fail("the daemon exited during the spawn".into(), 126);
    }
    let err = Command::new(path).arg0(argv0).args(rest).exec();
    fail(format!("cannot start {:?}: {err}", argv0), 127)
}

/// A spawn error as the reason an operator reads; running out of a
/// resource is transient.
fn classify(program: &str, e: &io::Error) -> SpawnError {
    use nix::errno::Errno;
    let transient = [Errno::EMFILE, Errno::ENFILE, Errno::EAGAIN, Errno::ENOMEM];
    if let Some(code) = e.raw_os_error()
        && transient.iter().any(|t| *t as i32 == code)
    {
        return SpawnError::Transient(format!("cannot start {program:?} for now: {e}"));
    }
    SpawnError::Permanent(match e.kind() {
        io::ErrorKind::NotFound if !program.contains('/') => {
            format!("command not found: {program:?} is not in PATH")
        }
        io::ErrorKind::NotFound => format!("command not found: {program:?} does not exist"),
        io::ErrorKind::PermissionDenied => format!("permission denied: cannot execute {program:?}"),
        _ => format!("cannot start {program:?}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_errors_are_clear_and_resource_errors_transient() {
        let e = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(
            classify("nope", &e),
            SpawnError::Permanent("command not found: \"nope\" is not in PATH".into())
        );
        assert_eq!(
            classify("/x/nope", &e),
            SpawnError::Permanent("command not found: \"/x/nope\" does not exist".into())
        );
        let emfile = io::Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32);
        assert!(matches!(classify("x", &emfile), SpawnError::Transient(_)));
        let eagain = io::Error::from_raw_os_error(nix::errno::Errno::EAGAIN as i32);
        assert!(matches!(classify("x", &eagain), SpawnError::Transient(_)));
    }
}
