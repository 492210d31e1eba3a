//! Spawning agents in two steps. Preparation (the working directory, the
//! env_file, the user lookup: anything that can be slow or hang, like a
//! FIFO, an NFS mount or NSS) runs on the blocking pool, one task per
//! agent, in parallel. Only the fork and exec run on the one fork thread,
//! the process's main thread: each agent's PR_SET_PDEATHSIG is tied to
//! the thread that forked it, so that thread lives as long as the daemon,
//! and it is the one that calls `execve` at an in-place upgrade (the
//! only thread whose children outlive it).
//!
//! stdout and stderr share one pipe, so the order of their lines is kept
//! and a running agent costs the daemon one pipe end (and its log file).

use super::lifecycle::{SpawnError, Why};
use super::vfork::{self, Creds, Spawner, Spec, Step};
use crate::config::AgentConfig;
use nix::unistd::Gid;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Instant;

/// Set in every agent's environment; also how an agent's processes are
/// recognised once they left its process group.
pub const AGENT_ID_VAR: &str = "AGENTSD_AGENT_ID";
/// The daemon's state dir, in every agent's environment: how what an
/// earlier daemon left behind is recognised.
pub const INSTANCE_VAR: &str = "AGENTSD_INSTANCE";

/// The open-file soft limit the daemon was started with, before it
/// raised its own: what agents get.
static AGENT_NOFILE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Remembers the open-file soft limit the daemon was started with (call it
/// before raising the daemon's own): agents are started with it.
pub fn keep_nofile_for_agents(soft: u64) {
    let _ = AGENT_NOFILE.set(soft);
}

/// The open-file soft limit agents are started with, as kept (an in-place
/// upgrade hands it to the next image, which starts with the raised one).
pub fn agents_nofile() -> Option<u64> {
    AGENT_NOFILE.get().copied()
}

/// The open-file limit (soft, hard) for an agent: the soft limit the
/// daemon was started with, under the hard limit in force.
fn agent_nofile() -> Option<(u64, u64)> {
    let soft = *AGENT_NOFILE.get()?;
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    Some((soft.min(hard), hard))
}

/// Everything the clone needs, worked out beforehand (as C strings: the
/// child cannot allocate).
pub struct Prepared {
    /// As configured: what the agent sees as its name (argv[0]).
    program: String,
    cwd: PathBuf,
    spec: Spec,
    /// Its stdin is a pipe the daemon keeps the writing end of.
    pub stdin_pipe: bool,
}

/// A process just forked, with the reading end of its output pipe.
pub struct Forked {
    pub pid: u32,
    pub output: OwnedFd,
    /// The writing end of its stdin (`stdin = "pipe"`), non-blocking.
    pub stdin: Option<OwnedFd>,
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
    cgroups: Option<&super::cgroup::Cgroups>,
) -> Result<Prepared, SpawnError> {
    let permanent = |what: String| SpawnError::Permanent(Why::Invalid(what));
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
        let iter = dotenvy::from_path_iter(path).map_err(|source| {
            SpawnError::Permanent(Why::EnvFile {
                what: "cannot read env_file",
                path: path.clone(),
                source,
            })
        })?;
        for item in iter {
            let (k, v) = item.map_err(|source| {
                SpawnError::Permanent(Why::EnvFile {
                    what: "invalid env_file",
                    path: path.clone(),
                    source,
                })
            })?;
            set(k.into(), v.into());
        }
    }
    let mut creds = None;
    if let Some(name) = &cfg.user {
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| {
                SpawnError::Permanent(Why::Io {
                    what: format!("cannot look up user {name:?}"),
                    source: e.into(),
                })
            })?
            .ok_or_else(|| permanent(format!("unknown user {name:?}")))?;
        let euid = nix::unistd::geteuid();
        if euid != user.uid {
            if !euid.is_root() {
                return Err(permanent(format!(
                    "user = {name:?} needs the daemon to run as root (it runs as uid {euid})"
                )));
            }
            // Supplementary groups (initgroups) are looked up here: NSS
            // cannot run in the child.
            creds = Some(Creds {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                groups: groups_of(name, user.gid).into_iter().map(Gid::as_raw).collect(),
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
    let c = |what: &str, bytes: Vec<u8>| {
        CString::new(bytes).map_err(|_| permanent(format!("{what} contains a NUL byte")))
    };
    let spec = Spec {
        path: c("the command's path", path.into_os_string().into_vec())?,
        argv: cfg
            .command
            .iter()
            .map(|a| c("an argument of the command", a.clone().into_bytes()))
            .collect::<Result<_, _>>()?,
        envp: env
            .into_iter()
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                c("the environment", kv)
            })
            .collect::<Result<_, _>>()?,
        cwd: c("the working directory", cfg.cwd.as_os_str().as_bytes().to_vec())?,
        creds,
        nofile: agent_nofile(),
        cgroup: match cgroups {
            None => None,
            Some(c) => Some(c.prepare(&cfg.id).map_err(|e| {
                let what = format!("cannot make the agent's cgroup {}", c.path(&cfg.id).display());
                io_failure(what, e)
            })?),
        },
    };
    Ok(Prepared {
        program,
        cwd: cfg.cwd.clone(),
        spec,
        stdin_pipe: cfg.stdin_pipe,
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
            Err(_) => Err(SpawnError::Permanent(Why::NoSuchFile(program.into()))),
            Ok(_) if !executable(&p) => Err(SpawnError::Permanent(Why::NotExecutable(program.into()))),
            Ok(_) => Ok(p),
        };
    }
    let dirs = path.map(std::env::split_paths).into_iter().flatten();
    dirs.map(|d| cwd.join(d).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| SpawnError::Permanent(Why::NotInPath(program.into())))
}

/// The supplementary groups of a user.
fn groups_of(name: &str, gid: Gid) -> Vec<Gid> {
    std::ffi::CString::new(name)
        .ok()
        .and_then(|c| nix::unistd::getgrouplist(&c, gid).ok())
        .unwrap_or_else(|| vec![gid])
}

/// A spawn that failed: why, and the child that failed before its exec
/// (exited, for the reaper to collect), if there was one.
#[derive(Debug)]
pub struct Failed {
    pub error: SpawnError,
    pub child: Option<u32>,
}

impl From<SpawnError> for Failed {
    fn from(error: SpawnError) -> Failed {
        Failed { error, child: None }
    }
}

/// A spawn for the fork thread: what to run, and where to say how it went.
pub struct Job {
    pub prepared: Prepared,
    pub done: Box<dyn FnOnce(Result<Forked, Failed>) + Send>,
}

/// The daemon's image replaced by another in the same process (an
/// in-place upgrade): on the fork thread, the only thread whose children
/// outlive an exec (their parent-death signal follows the thread that
/// forked them, and an exec ends every other thread).
pub struct Exec {
    pub path: std::ffi::CString,
    pub argv: Vec<std::ffi::CString>,
    pub envp: Vec<std::ffi::CString>,
    /// Told when the exec failed (on success nothing returns).
    pub failed: std::sync::mpsc::Sender<io::Error>,
}

enum Order {
    Spawn(Job),
    Exec(Exec),
    /// The daemon is done: the fork loop returns.
    Quit,
}

/// The way to the fork thread (cloneable).
#[derive(Clone)]
pub struct Forker(mpsc::Sender<Order>);

/// The loop that forks every agent: run it on the thread that will call
/// `execve` at an in-place upgrade (the process's main thread), for as
/// long as the daemon lives.
pub struct ForkLoop(mpsc::Receiver<Order>);

impl Forker {
    /// A forker, and the loop to run on the fork thread.
    pub fn new() -> (Forker, ForkLoop) {
        let (tx, rx) = mpsc::channel();
        (Forker(tx), ForkLoop(rx))
    }

    /// A forker with a thread of its own (where no exec is ever made:
    /// tests).
    #[cfg(test)]
    pub fn thread() -> io::Result<Forker> {
        let (forker, fork_loop) = Forker::new();
        std::thread::Builder::new()
            .name("agentsd-fork".into())
            .spawn(move || fork_loop.run())?;
        Ok(forker)
    }

    /// Hands a spawn to the fork thread (an error when that thread is gone).
    pub fn spawn(&self, job: Job) -> io::Result<()> {
        self.0
            .send(Order::Spawn(job))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the fork thread is gone"))
    }

    /// Asks the fork thread to exec; whether it failed comes on `failed`.
    pub fn exec(&self, exec: Exec) -> io::Result<()> {
        self.0
            .send(Order::Exec(exec))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the fork thread is gone"))
    }

    /// Ends the fork loop once the jobs before are done.
    pub fn quit(&self) {
        let _ = self.0.send(Order::Quit);
    }
}

impl ForkLoop {
    /// Forks what comes until [`Forker::quit`] (or every forker is gone).
    pub fn run(self) {
        let mut spawner = Spawner::new();
        if let Err(e) = &spawner {
            tracing::error!("the fork thread cannot map its children's stack: {e}");
        }
        for order in self.0 {
            match order {
                Order::Spawn(job) => {
                    let result = match &mut spawner {
                        Ok(s) => fork(s, &job.prepared),
                        Err(e) => {
                            // The same error again (io::Error is not Clone), its code kept.
                            let again = e.raw_os_error().map_or_else(
                                || io::Error::new(e.kind(), e.to_string()),
                                io::Error::from_raw_os_error,
                            );
                            Err(classify(&job.prepared.program, again).into())
                        }
                    };
                    (job.done)(result);
                }
                Order::Exec(x) => {
                    let err = match nix::unistd::execve(&x.path, &x.argv, &x.envp) {
                        Err(e) => io::Error::from(e),
                        Ok(never) => match never {},
                    };
                    let _ = x.failed.send(err);
                }
                Order::Quit => break,
            }
        }
    }
}

/// Starts the agent in a new process group, stdin from /dev/null (or a
/// pipe, `stdin = "pipe"`), its stdout and stderr on one pipe, tied to the daemon's life, as its user.
/// The daemon does not fork itself (that copies its page tables and makes
/// its own pages fault, a cost that grows with the daemon): see `vfork`.
fn fork(spawner: &mut Spawner, p: &Prepared) -> Result<Forked, Failed> {
    let before = Instant::now();
    let io_error = |e: nix::errno::Errno| classify(&p.program, io::Error::from(e));
    // The last descriptors are the operator's (see `fds`): wait in backoff.
    crate::fds::room_for_an_agent().map_err(|why| {
        SpawnError::Transient(Why::Invalid(format!(
            "cannot start {:?} for now: {why}",
            p.program
        )))
    })?;
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io_error)?;
    // Its stdin: the reading end of a pipe whose writing end the daemon
    // keeps (never blocking on it), or /dev/null.
    let (null, stdin) = if p.stdin_pipe {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io_error)?;
        nix::fcntl::fcntl(&w, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
            .map_err(io_error)?;
        (r, Some(w))
    } else {
        let null = std::fs::File::open("/dev/null").map_err(|e| classify(&p.program, e))?;
        (OwnedFd::from(null), None)
    };
    // The child's 0, 1 and 2 are made from these: none may be one of them
    // (a daemon started with a standard descriptor closed). A duplicate
    // from std is never below 3.
    let above_stdio = |fd: OwnedFd| -> Result<OwnedFd, SpawnError> {
        use std::os::fd::AsRawFd;
        if fd.as_raw_fd() > 2 {
            return Ok(fd);
        }
        fd.try_clone().map_err(|e| classify(&p.program, e))
    };
    let (write, null) = (above_stdio(write)?, above_stdio(null)?);
    let pid = spawner
        .spawn(&p.spec, null.as_fd(), write.as_fd())
        .map_err(|f| Failed {
            child: f.pid,
            error: failure(p, f),
        })?;
    // Only the agent holds the writing end of its output, and the
    // reading end of its stdin, now.
    drop((write, null));
    Ok(Forked {
        pid,
        output: read,
        stdin,
        before,
    })
}

/// A failure in the child, as the reason an operator reads.
fn failure(p: &Prepared, f: vfork::Failure) -> SpawnError {
    let what = match f.step {
        Step::Clone | Step::Exec => return classify(&p.program, f.error),
        Step::Cwd => format!("cannot enter the working directory {}", p.cwd.display()),
        Step::Credentials => match &p.spec.creds {
            Some(c) => format!("cannot become uid {} gid {}", c.uid, c.gid),
            None => "cannot change user".into(),
        },
        Step::Group => "cannot make a process group".into(),
        Step::Cgroup => "cannot join the agent's cgroup".into(),
        Step::Limits => "cannot set the open-file limit".into(),
        Step::Stdio => "cannot set up stdin, stdout and stderr".into(),
        Step::DeathSignal => "cannot tie the agent to the daemon".into(),
        Step::Orphaned => "the daemon exited during the spawn".into(),
    };
    io_failure(what, f.error)
}

/// A failed system call made for `what`: transient when the host ran out of
/// a resource (said "for now").
fn io_failure(what: String, source: io::Error) -> SpawnError {
    if transient(&source) {
        SpawnError::Transient(Why::Io {
            what: format!("{what} for now"),
            source,
        })
    } else {
        SpawnError::Permanent(Why::Io { what, source })
    }
}

fn transient(e: &io::Error) -> bool {
    use nix::errno::Errno;
    let transient = [Errno::EMFILE, Errno::ENFILE, Errno::EAGAIN, Errno::ENOMEM];
    e.raw_os_error()
        .is_some_and(|code| transient.iter().any(|t| *t as i32 == code))
}

/// A spawn error as the reason an operator reads; running out of a
/// resource is transient.
fn classify(program: &str, e: io::Error) -> SpawnError {
    if transient(&e) {
        return io_failure(format!("cannot start {program:?}"), e);
    }
    SpawnError::Permanent(match e.kind() {
        io::ErrorKind::NotFound if !program.contains('/') => Why::NotInPath(program.into()),
        io::ErrorKind::NotFound => Why::NoSuchFile(program.into()),
        io::ErrorKind::PermissionDenied => Why::NotExecutable(program.into()),
        _ => Why::Io {
            what: format!("cannot start {program:?}"),
            source: e,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_errors_are_clear_and_resource_errors_transient() {
        let e = || io::Error::from(io::ErrorKind::NotFound);
        assert!(matches!(classify("nope", e()), SpawnError::Permanent(Why::NotInPath(p)) if p == "nope"));
        assert!(
            matches!(classify("/x/nope", e()), SpawnError::Permanent(Why::NoSuchFile(p)) if p == "/x/nope")
        );
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert!(matches!(
            classify("x", denied),
            SpawnError::Permanent(Why::NotExecutable(_))
        ));
        // The system's error stays under it, as its source.
        let emfile = io::Error::from_raw_os_error(nix::errno::Errno::EMFILE as i32);
        let err = classify("x", emfile);
        let SpawnError::Transient(Why::Io { source, .. }) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(source.raw_os_error(), Some(nix::errno::Errno::EMFILE as i32));
        assert!(std::error::Error::source(&err).is_some());
        let eagain = io::Error::from_raw_os_error(nix::errno::Errno::EAGAIN as i32);
        assert!(matches!(classify("x", eagain), SpawnError::Transient(_)));
    }
}
