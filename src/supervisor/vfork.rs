//! Starting a process without copying the daemon, with one exec:
//! `clone(CLONE_VM | CLONE_VFORK)`, as glibc's posix_spawn does, plus what
//! posix_spawn cannot do (the parent-death signal, another user) done in
//! the child before its exec.
//!
//! Why not the alternatives: `fork` copies the daemon's page tables and
//! makes every page the daemon writes afterwards fault, a cost that grows
//! with the daemon (8,000 agents took 56.5 s); `posix_spawn` cannot set
//! `PR_SET_PDEATHSIG` nor change the user, which took a second exec, of the
//! daemon's own binary as a shim (about 1 ms per exec on a small VM: 15 s
//! for 8,000 agents).
//!
//! This is the crate's one unsafe island for processes. The child shares
//! the daemon's memory until it execs, and the thread that cloned it waits
//! meanwhile. So the child runs on a stack of its own, and it allocates
//! nothing, takes no lock, touches no thread-local but `errno`, and makes
//! only system calls through thin libc wrappers. The credentials change
//! through raw `syscall`s: glibc's `setuid`/`setgid`/`setgroups` signal
//! every thread of the process, which in this child would be the
//! daemon's. Everything the child needs (C strings, pointer arrays, file
//! descriptors) is made beforehand by the parent, and the child reports a
//! failure by writing into the parent's memory before it exits.
//!
//! What an agent must not inherit from the daemon is undone in the child:
//! the daemon's raised open-file soft limit (back to the one the daemon
//! was started with) and every descriptor above 2 (a descriptor the daemon
//! was given without close-on-exec would otherwise reach every agent).
//! The child joins its cgroup itself, by writing "0" (itself) to the
//! cgroup's `cgroup.procs`, opened by the parent: it is a member before it
//! execs, so nothing it starts can be outside it. (clone3 with
//! CLONE_INTO_CGROUP would do the same in the clone, but has no libc
//! wrapper that runs a function on a stack of its own.)
#![allow(unsafe_code)]

use nix::libc::{self, c_char, c_int, c_void, gid_t, pid_t, uid_t};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr;
use std::sync::atomic::{AtomicI32, Ordering};

// The 32-bit targets keep 16-bit ids in the plain calls.
#[cfg(not(any(target_arch = "x86", target_arch = "arm")))]
use libc::{SYS_setgid as SYS_SETGID, SYS_setgroups as SYS_SETGROUPS, SYS_setuid as SYS_SETUID};
#[cfg(any(target_arch = "x86", target_arch = "arm"))]
use libc::{SYS_setgid32 as SYS_SETGID, SYS_setgroups32 as SYS_SETGROUPS, SYS_setuid32 as SYS_SETUID};

/// The child's stack: it makes a few system calls and nothing else.
const STACK: usize = 64 * 1024;

/// Signals are numbered below this on Linux (`_NSIG`).
const NSIG: c_int = 65;

/// What the child does, in order: a failure names its step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The clone itself (in the parent).
    Clone = 1,
    /// Its own process group.
    Group,
    /// Joining its cgroup.
    Cgroup,
    /// The open-file limit the daemon was started with.
    Limits,
    /// stdin from the parent's descriptor, stdout and stderr to the other.
    Stdio,
    /// setgroups, setgid, setuid.
    Credentials,
    /// The working directory.
    Cwd,
    /// PR_SET_PDEATHSIG.
    DeathSignal,
    /// The daemon died before the parent-death signal was set.
    Orphaned,
    /// execve.
    Exec,
}

impl Step {
    fn from_raw(n: i32) -> Step {
        [
            Step::Clone,
            Step::Group,
            Step::Cgroup,
            Step::Limits,
            Step::Stdio,
            Step::Credentials,
            Step::Cwd,
            Step::DeathSignal,
            Step::Orphaned,
            Step::Exec,
        ]
        .into_iter()
        .find(|s| *s as i32 == n)
        .unwrap_or(Step::Exec)
    }
}

/// Another user to become, with its supplementary groups.
#[derive(Clone, Debug)]
pub struct Creds {
    pub uid: uid_t,
    pub gid: gid_t,
    pub groups: Vec<gid_t>,
}

/// A process to start, in the form the child needs.
#[derive(Debug)]
pub struct Spec {
    /// What to execute (found beforehand: no PATH search in the child).
    pub path: CString,
    /// argv, argv[0] first.
    pub argv: Vec<CString>,
    /// `NAME=value`.
    pub envp: Vec<CString>,
    pub cwd: CString,
    pub creds: Option<Creds>,
    /// The open-file limit (soft, hard) to set: the daemon's own raised
    /// one is not for agents.
    pub nofile: Option<(u64, u64)>,
    /// `cgroup.procs` of the cgroup to join, open for writing.
    pub cgroup: Option<std::os::fd::OwnedFd>,
}

/// Why a start failed, and where.
#[derive(Debug)]
pub struct Failure {
    pub step: Step,
    pub error: io::Error,
    /// The child that failed before its exec, when there was one: it has
    /// exited and is left for the daemon's reaper (a wait here would race
    /// it, and could take the exit of another child that got the pid).
    pub pid: Option<u32>,
}

/// What the child reads (and writes its failure into), in the parent's
/// memory.
struct Child {
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    /// `groups` is null when the user stays the same.
    uid: uid_t,
    gid: gid_t,
    groups: *const gid_t,
    ngroups: usize,
    stdin: c_int,
    out: c_int,
    /// -1: stays in the daemon's cgroup.
    cgroup: c_int,
    /// `set_nofile` false: the limit stays as it is.
    set_nofile: bool,
    nofile: libc::rlimit,
    parent: pid_t,
    failed_step: AtomicI32,
    errno: AtomicI32,
}

/// Starts processes from one thread, reusing one stack for its children.
pub struct Spawner {
    /// `guard` bytes that no one may touch (an overflow faults there
    /// instead of writing over the daemon's heap), then `STACK` bytes.
    map: std::ptr::NonNull<c_void>,
    guard: usize,
}

impl Drop for Spawner {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, used by no child any more
        // (a spawn returns once its child has exec'd or exited).
        let _ = unsafe { nix::sys::mman::munmap(self.map, self.guard + STACK) };
    }
}

impl Spawner {
    /// Maps the children's stack, with a guard page below it. Never read
    /// by Rust: only the child's frames live in it, and only the pages it
    /// touches become resident.
    pub fn new() -> io::Result<Spawner> {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, mprotect};
        let guard = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |p| p as usize);
        let len = std::num::NonZeroUsize::new(guard + STACK).ok_or(io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh private anonymous mapping, aliased by nothing.
        let map = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK | MapFlags::MAP_NORESERVE,
            )
        }?;
        let spawner = Spawner { map, guard };
        // SAFETY: the first page of the mapping just made.
        unsafe { mprotect(map, guard, ProtFlags::PROT_NONE) }?;
        Ok(spawner)
    }

    /// Starts `spec` in a process group of its own, stdin from `stdin`,
    /// stdout and stderr to `out`, with SIGKILL as its parent-death signal
    /// (tied to the calling thread, which must outlive it), default
    /// signal dispositions and an empty signal mask. Returns its pid once
    /// it has exec'd. A child that failed before its exec is not waited
    /// for: the daemon's reaper collects it (its pid is in the failure).
    ///
    /// `stdin` and `out` must not be 0, 1 or 2.
    pub fn spawn(&mut self, spec: &Spec, stdin: BorrowedFd, out: BorrowedFd) -> Result<u32, Failure> {
        let (stdin, out) = (stdin.as_raw_fd(), out.as_raw_fd());
        if stdin <= 2 || out <= 2 {
            return Err(Failure {
                step: Step::Stdio,
                error: io::Error::from_raw_os_error(libc::EBADF),
                pid: None,
            });
        }
        let argv: Vec<*const c_char> = spec
            .argv
            .iter()
            .map(|a| a.as_ptr())
            .chain([ptr::null()])
            .collect();
        let envp: Vec<*const c_char> = spec
            .envp
            .iter()
            .map(|a| a.as_ptr())
            .chain([ptr::null()])
            .collect();
        let child = Child {
            path: spec.path.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: spec.cwd.as_ptr(),
            uid: spec.creds.as_ref().map_or(0, |c| c.uid),
            gid: spec.creds.as_ref().map_or(0, |c| c.gid),
            groups: spec.creds.as_ref().map_or(ptr::null(), |c| c.groups.as_ptr()),
            ngroups: spec.creds.as_ref().map_or(0, |c| c.groups.len()),
            stdin,
            out,
            cgroup: spec.cgroup.as_ref().map_or(-1, |f| f.as_raw_fd()),
            set_nofile: spec.nofile.is_some(),
            nofile: libc::rlimit {
                rlim_cur: spec.nofile.map_or(0, |n| n.0),
                rlim_max: spec.nofile.map_or(0, |n| n.1),
            },
            parent: std::process::id() as pid_t,
            failed_step: AtomicI32::new(0),
            errno: AtomicI32::new(0),
        };
        // The stack grows down on every Linux target this builds for; the
        // top is aligned as the ABIs want.
        let top = self.map.as_ptr().cast::<u8>().wrapping_add(self.guard + STACK);
        let top = top.wrapping_sub(top as usize % 16);
        // SAFETY: the signal sets are plain values filled by libc. Every
        // signal is blocked around the clone so that no handler of the
        // daemon runs in the child (sharing the daemon's memory) before
        // the child has reset them; the calling thread's mask is restored
        // right after.
        let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
        let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
        unsafe {
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        }
        // SAFETY: `child_main` gets a pointer to `child`, which outlives the
        // child's use of it: with CLONE_VFORK this thread is suspended until
        // the child has exec'd or exited. The stack is `STACK` bytes mapped
        // by `self` (above its guard page) and used by no one else meanwhile. The child honours
        // the rules in the module's documentation.
        let pid = unsafe {
            libc::clone(
                child_main,
                top.cast::<c_void>(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                (&child as *const Child).cast_mut().cast::<c_void>(),
            )
        };
        let clone_error = io::Error::last_os_error();
        // SAFETY: restores the mask saved above.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, ptr::null_mut());
        }
        if pid < 0 {
            return Err(Failure {
                step: Step::Clone,
                error: clone_error,
                pid: None,
            });
        }
        match child.failed_step.load(Ordering::Acquire) {
            0 => Ok(pid as u32),
            // It has exited (that is what woke this thread); the reaper
            // collects it.
            step => Err(Failure {
                step: Step::from_raw(step),
                error: io::Error::from_raw_os_error(child.errno.load(Ordering::Relaxed)),
                pid: Some(pid as u32),
            }),
        }
    }
}

/// The child, between the clone and its exec.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Child` the parent passed, alive while the
    // parent waits; what this reads and calls follows the rules in the
    // module's documentation.
    unsafe {
        let c = &*arg.cast::<Child>();
        let fail = |step: Step| {
            c.errno.store(*libc::__errno_location(), Ordering::Relaxed);
            c.failed_step.store(step as i32, Ordering::Release);
            libc::_exit(127)
        };
        // Every signal back to its default, as systemd starts a service:
        // handlers are the daemon's code, and what the daemon ignores
        // (SIGPIPE; SIGHUP when it was started under nohup) is not the
        // agent's to inherit.
        let mut sa: libc::sigaction = std::mem::zeroed();
        for sig in 1..NSIG {
            if sig == libc::SIGKILL || sig == libc::SIGSTOP {
                continue;
            }
            if libc::sigaction(sig, ptr::null(), &mut sa) != 0 {
                continue;
            }
            if sa.sa_sigaction != libc::SIG_DFL {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, ptr::null_mut());
            }
        }
        // Before the credentials change: the daemon may move it, the
        // agent's user may not. "0" is the writer itself.
        if c.cgroup >= 0 && libc::write(c.cgroup, b"0".as_ptr().cast(), 1) != 1 {
            fail(Step::Cgroup);
        }
        if libc::setpgid(0, 0) != 0 {
            fail(Step::Group);
        }
        if libc::dup2(c.stdin, 0) < 0 || libc::dup2(c.out, 1) < 0 || libc::dup2(c.out, 2) < 0 {
            fail(Step::Stdio);
        }
        // This child has a copy of the daemon's descriptor table: none of
        // it but 0, 1 and 2 is the agent's.
        if libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        ) != 0
            && (*libc::__errno_location() != libc::ENOSYS || !close_listed())
        {
            fail(Step::Stdio);
        }
        if c.set_nofile && libc::setrlimit(libc::RLIMIT_NOFILE, &c.nofile) != 0 {
            fail(Step::Limits);
        }
        if !c.groups.is_null()
            && (libc::syscall(SYS_SETGROUPS, c.ngroups, c.groups) != 0
                || libc::syscall(SYS_SETGID, c.gid) != 0
                || libc::syscall(SYS_SETUID, c.uid) != 0)
        {
            fail(Step::Credentials);
        }
        // As the agent's user, as a login would.
        if libc::chdir(c.cwd) != 0 {
            fail(Step::Cwd);
        }
        // After the credentials: changing them clears it.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
            fail(Step::DeathSignal);
        }
        // The daemon may have died before the parent-death signal was set.
        if libc::getppid() != c.parent {
            *libc::__errno_location() = libc::ESRCH;
            fail(Step::Orphaned);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut());
        libc::execve(c.path, c.argv, c.envp);
        fail(Step::Exec);
        127
    }
}

/// Closes every descriptor above 2 that /proc/self/fd lists, for kernels
/// without `close_range` (before 5.9). Reads the directory into a buffer
/// on the stack: no allocation. False when /proc cannot be read.
///
/// # Safety
/// Only in the child, between the clone and its exec.
unsafe fn close_listed() -> bool {
    // SAFETY: raw system calls on a buffer of this frame; the records are
    // read within what getdents64 said it wrote.
    unsafe {
        let dir = libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dir < 0 {
            return false;
        }
        let mut buf = [0u8; 2048];
        loop {
            let n = libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len());
            if n <= 0 {
                break;
            }
            let mut at = 0usize;
            while at + 19 < n as usize {
                // struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name.
                let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
                if reclen == 0 {
                    break;
                }
                let mut fd: c_int = 0;
                let mut digits = 0;
                for &b in &buf[at + 19..(at + reclen).min(n as usize)] {
                    if !b.is_ascii_digit() {
                        break;
                    }
                    fd = fd.saturating_mul(10).saturating_add((b - b'0') as c_int);
                    digits += 1;
                }
                if digits > 0 && fd > 2 && fd != dir {
                    libc::close(fd);
                }
                at += reclen;
            }
        }
        libc::close(dir);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::OwnedFd;

    fn c(s: &str) -> CString {
        CString::new(s).expect("no NUL")
    }

    fn spec(argv: &[&str], cwd: &str) -> Spec {
        Spec {
            path: c(argv[0]),
            argv: argv.iter().map(|a| c(a)).collect(),
            envp: vec![c("PATH=/usr/bin:/bin"), c("FROM_SPEC=yes")],
            cwd: c(cwd),
            creds: None,
            nofile: None,
            cgroup: None,
        }
    }

    /// Runs `spec` and returns its pid and what it wrote (until it exits).
    fn run(spec: &Spec) -> Result<(u32, String), Failure> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        let null: OwnedFd = std::fs::File::open("/dev/null").expect("/dev/null").into();
        let pid = Spawner::new()
            .expect("stack")
            .spawn(spec, null.as_fd(), write.as_fd())
            .inspect_err(|f| {
                // Left for the caller to reap.
                let pid = f.pid.expect("a failed child");
                let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
            })?;
        drop(write);
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out).expect("read");
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
        Ok((pid, out))
    }

    use std::os::fd::AsFd;

    #[test]
    fn the_child_gets_its_env_cwd_stdin_and_output() {
        let script = "echo $FROM_SPEC $(pwd) >&2; read x || echo stdin-empty";
        let (_, out) = run(&spec(&["/bin/sh", "-c", script], "/tmp"))
            .map_err(|f| f.error)
            .expect("spawn");
        assert_eq!(out, "yes /tmp\nstdin-empty\n");
    }

    #[test]
    fn the_child_has_its_own_group_default_signals_and_no_blocked_one() {
        // The test harness ignores SIGPIPE, SIGHUP is ignored here as under
        // nohup, and the spawn blocks every signal around the clone: none
        // of it may reach the program.
        // SAFETY: SIG_IGN for SIGHUP, which nothing in this test binary
        // handles.
        unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
        let argv = [
            "/usr/bin/grep",
            "-E",
            "^(Pid|NSpgid|SigBlk|SigIgn):",
            "/proc/self/status",
        ];
        let (pid, out) = run(&spec(&argv, "/")).map_err(|f| f.error).expect("spawn");
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in {out:?}"))
        };
        assert_eq!(field("Pid:"), pid.to_string());
        assert_eq!(field("NSpgid:"), pid.to_string(), "its own process group");
        assert_eq!(field("SigBlk:"), "0000000000000000", "blocked signals");
        // Standard signals (1 to 31) at their default; glibc's internal
        // real-time ones may be ignored, as after posix_spawn.
        let ignored = u64::from_str_radix(&field("SigIgn:"), 16).expect("hex");
        assert_eq!(ignored & 0x7fff_ffff, 0, "ignored signals: {ignored:x}");
    }

    #[test]
    fn the_child_dies_with_the_thread_that_started_it() {
        let s = spec(&["/bin/sh", "-c", "echo up; exec sleep 1000"], "/");
        let pid = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
                    let null: OwnedFd = std::fs::File::open("/dev/null").expect("/dev/null").into();
                    let pid = Spawner::new()
                        .expect("stack")
                        .spawn(&s, null.as_fd(), write.as_fd());
                    drop(write);
                    // Up and running before this thread ends.
                    let mut up = [0u8; 3];
                    std::fs::File::from(read).read_exact(&mut up).expect("read");
                    assert_eq!(&up, b"up\n");
                    pid
                })
                .join()
                .expect("thread")
        })
        .map_err(|f| f.error)
        .expect("spawn");
        // It ends (SIGKILL) without anyone signalling it: the thread is gone.
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None).expect("wait");
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Signaled(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
                false
            )
        );
    }

    #[test]
    fn the_childrens_stack_has_a_guard_page_below_it() {
        let spawner = Spawner::new().expect("stack");
        let base = spawner.map.as_ptr() as usize;
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        // Each line: "start-end perms ...", in hex.
        let perms_at = |addr: usize| {
            maps.lines().find_map(|l| {
                let (range, rest) = l.split_once(' ')?;
                let (a, b) = range.split_once('-')?;
                let (a, b) = (
                    usize::from_str_radix(a, 16).ok()?,
                    usize::from_str_radix(b, 16).ok()?,
                );
                (a <= addr && addr < b).then(|| rest[..4].to_string())
            })
        };
        assert_eq!(perms_at(base).as_deref(), Some("---p"), "the guard page");
        assert_eq!(perms_at(base + spawner.guard - 1).as_deref(), Some("---p"));
        assert_eq!(
            perms_at(base + spawner.guard).as_deref(),
            Some("rw-p"),
            "the stack"
        );
        assert_eq!(
            perms_at(base + spawner.guard + STACK - 1).as_deref(),
            Some("rw-p")
        );
    }

    #[test]
    fn a_failed_child_is_left_for_the_reaper() {
        let f = Spawner::new()
            .expect("stack")
            .spawn(
                &spec(&["/nonexistent/program"], "/"),
                std::fs::File::open("/dev/null").expect("null").as_fd(),
                std::fs::File::open("/dev/null").expect("null").as_fd(),
            )
            .expect_err("no such program");
        let pid = nix::unistd::Pid::from_raw(f.pid.expect("its pid") as i32);
        // Not waited for by the spawn: its exit is still there to collect.
        assert_eq!(
            nix::sys::wait::waitpid(pid, None).expect("wait"),
            nix::sys::wait::WaitStatus::Exited(pid, 127)
        );
    }

    #[test]
    fn a_failure_in_the_child_names_its_step_and_errno() {
        let f = run(&spec(&["/nonexistent/program"], "/")).expect_err("no such program");
        assert_eq!(f.step, Step::Exec);
        assert_eq!(f.error.raw_os_error(), Some(libc::ENOENT));
        let f = run(&spec(&["/bin/true"], "/nonexistent/dir")).expect_err("no such cwd");
        assert_eq!(f.step, Step::Cwd);
        assert_eq!(f.error.raw_os_error(), Some(libc::ENOENT));
        let plain = tempfile::NamedTempFile::new().expect("temp file");
        let path = plain.path().to_str().expect("UTF-8 path");
        let f = run(&spec(&[path], "/")).expect_err("not executable");
        assert_eq!(f.step, Step::Exec);
        assert_eq!(f.error.raw_os_error(), Some(libc::EACCES));
    }

    #[test]
    fn changing_user_needs_root_and_says_so() {
        let mut s = spec(&["/bin/sh", "-c", "id -u; id -g; id -G"], "/");
        s.creds = Some(Creds {
            uid: 65534,
            gid: 65534,
            groups: vec![65534, 4242],
        });
        match run(&s) {
            Ok((_, out)) => {
                assert!(
                    nix::unistd::geteuid().is_root(),
                    "became another user without root"
                );
                assert_eq!(out, "65534\n65534\n65534 4242\n");
            }
            Err(f) => {
                assert!(
                    !nix::unistd::geteuid().is_root(),
                    "root could not change user: {f:?}"
                );
                assert_eq!(f.step, Step::Credentials);
                assert_eq!(f.error.raw_os_error(), Some(libc::EPERM));
            }
        }
        // The daemon itself is still who it was.
        assert_eq!(
            std::fs::read_to_string("/proc/self/status")
                .expect("status")
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some(&nix::unistd::getuid().to_string())),
            Some(true)
        );
    }
}
