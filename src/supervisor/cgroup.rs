//! One cgroup (v2) per agent, where the daemon can have one: membership
//! the kernel keeps, whatever a process does to its group, session or
//! environment. Every process an agent starts is in its cgroup from
//! before its exec (the child joins it itself, see `vfork`); a stop ends
//! with `cgroup.kill`; resources come from `cpu.stat` (and `memory.current`
//! when the memory controller is enabled above).
//!
//! Where the cgroups go: under the daemon's own cgroup (under systemd with
//! `Delegate=yes`, the unit's, which is the daemon's to manage), else
//! under the root of a writable cgroup v2 mount. The daemon makes one dir
//! there, named after its state dir (two daemons on one host do not meet),
//! with one `agent-ID` dir per agent; they go when the agent is removed
//! and at shutdown. Where neither is writable, the daemon tracks processes
//! by group and as their subreaper, and says so in `/health`.
//!
//! These are reads and writes of kernfs files (no disk, no blocking).

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// The daemon's cgroup for its agents.
#[derive(Debug)]
pub struct Cgroups {
    root: PathBuf,
}

/// Resources a cgroup accounts for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// CPU time of every process that was ever in it.
    pub cpu_usec: u64,
    /// `memory.current`, where the memory controller is enabled.
    pub memory: Option<u64>,
}

/// Why the daemon gives its agents no cgroup.
#[derive(Debug, thiserror::Error)]
pub enum NoCgroups {
    #[error("cannot read /proc/self/mountinfo: {0}")]
    Mounts(#[source] io::Error),
    #[error("no cgroup v2 hierarchy is mounted")]
    NotMounted,
    /// Each place tried, and why it would not do.
    #[error("no writable cgroup v2 dir ({})", .0.iter().map(|(p, e)| format!("{}: {e}", p.display())).collect::<Vec<_>>().join("; "))]
    NotWritable(Vec<(PathBuf, io::Error)>),
}

impl Cgroups {
    /// Finds where the daemon may make cgroups, makes its own dir there
    /// (named after `instance`), and kills what agents of an earlier run
    /// left in it. Returns why not when there is no such place.
    /// `fresh`: a daemon starting anew kills and removes what an earlier
    /// run left in them (not one that took the agents over in place).
    pub fn discover(instance: &str, fresh: bool) -> Result<Cgroups, NoCgroups> {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").map_err(NoCgroups::Mounts)?;
        let mount = cgroup2_mount(&mounts).ok_or(NoCgroups::NotMounted)?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|t| own_cgroup(&t))
            .map(|p| mount.join(p.trim_start_matches('/')));
        let digest = ring::digest::digest(&ring::digest::SHA256, instance.as_bytes());
        let name: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("agentsd-{name}");
        let mut tried = Vec::new();
        for base in own.into_iter().chain([mount.clone()]) {
            let root = base.join(&name);
            match std::fs::create_dir(&root) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    tried.push((base, e));
                    continue;
                }
            }
            let cg = Cgroups { root };
            if fresh {
                cg.clear_leftovers();
            }
            return Ok(cg);
        }
        Err(NoCgroups::NotWritable(tried))
    }

    /// Where the agents' cgroups are.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, agent: &str) -> PathBuf {
        // Prefixed: an agent id must never name one of the cgroup's own
        // files ("cgroup.procs", "cpu.stat").
        self.root.join(format!("agent-{agent}"))
    }

    /// Makes the agent's cgroup (if needed) and opens its `cgroup.procs`
    /// for the child to join it with.
    pub fn prepare(&self, agent: &str) -> io::Result<OwnedFd> {
        let dir = self.path(agent);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))?;
        Ok(f.into())
    }

    /// The processes in the agent's cgroup (none when it has none).
    pub fn procs(&self, agent: &str) -> Vec<u32> {
        std::fs::read_to_string(self.path(agent).join("cgroup.procs"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// SIGKILL to every process in the agent's cgroup, at once
    /// (`cgroup.kill`, Linux 5.14), or one by one where it is missing.
    pub fn kill(&self, agent: &str) {
        let dir = self.path(agent);
        let done = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.kill"))
            .and_then(|mut f| f.write_all(b"1"));
        match done {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => {}
            Err(_) => {
                for pid in self.procs(agent) {
                    super::process::signal(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }

    /// Whether the agents' cgroups have `memory.current`: the memory
    /// controller is enabled for them (one read, instead of a failed open
    /// per agent where it is not).
    pub fn memory_accounted(&self) -> bool {
        std::fs::read_to_string(self.root.join("cgroup.subtree_control"))
            .is_ok_and(|t| t.split_whitespace().any(|c| c == "memory"))
    }

    /// What the agent's cgroup accounts for; `memory.current` is read only
    /// when `memory` ([`Cgroups::memory_accounted`]) says it is there.
    pub fn usage(&self, agent: &str, memory: bool) -> Option<Usage> {
        let dir = self.path(agent);
        let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
        let cpu_usec = stat
            .lines()
            .find_map(|l| l.strip_prefix("usage_usec "))
            .and_then(|v| v.trim().parse().ok())?;
        let memory = memory
            .then(|| std::fs::read_to_string(dir.join("memory.current")).ok())
            .flatten()
            .and_then(|v| v.trim().parse().ok());
        Some(Usage { cpu_usec, memory })
    }

    /// The agent whose cgroup the process is in, from its
    /// `/proc/<pid>/cgroup` (one read, where listing every agent's
    /// `cgroup.procs` would be one per agent).
    pub fn agent_of(&self, pid: u32) -> Option<String> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        self.agent_in(&own_cgroup(&text)?)
    }

    /// The agent whose cgroup `path` (as /proc/<pid>/cgroup shows it, from
    /// the reader's cgroup namespace) is.
    fn agent_in(&self, path: &str) -> Option<String> {
        let (parent, last) = path.rsplit_once('/')?;
        let ours = self.root.file_name()?.to_str()?;
        (parent.rsplit('/').next()? == ours)
            .then(|| last.strip_prefix("agent-"))
            .flatten()
            .filter(|id| crate::wire::is_agent_id(id))
            .map(str::to_string)
    }

    /// Removes the agent's cgroup (of an agent removed from the config,
    /// once it is down). Nothing in it is killed: should the agent be back
    /// already, its new run is left alone (and so is its cgroup).
    pub fn remove(&self, agent: &str) {
        let dir = self.path(agent);
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::debug!("cannot remove the cgroup {}: {e}", dir.display()),
        }
    }

    /// Removes every agent's cgroup and the daemon's own dir (at shutdown).
    pub fn remove_all(&self) {
        self.clear_leftovers();
        if let Err(e) = std::fs::remove_dir(&self.root) {
            tracing::debug!("cannot remove {}: {e}", self.root.display());
        }
    }

    /// Kills what is left in any agent's cgroup and removes them.
    fn clear_leftovers(&self) {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_dir(&e.path());
            }
        }
    }
}

/// Kills what is in a cgroup, waits (briefly) for it to be empty, and
/// removes it.
fn remove_dir(dir: &Path) {
    let populated = || {
        std::fs::read_to_string(dir.join("cgroup.events"))
            .map(|t| t.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    };
    if populated() {
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.kill"))
            .and_then(|mut f| f.write_all(b"1"));
        tracing::warn!("killed the processes left in {}", dir.display());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while populated() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove the cgroup {}: {e}", dir.display()),
    }
}

/// The mount point of the cgroup v2 hierarchy, from /proc/self/mountinfo.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(unescape_mount))
            .flatten()
    })
}

/// Mount points escape space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> PathBuf {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if b[i] == b'\\'
            && let Some(d) = octal
        {
            out.push(
                d.iter()
                    .fold(0u8, |v, c| v.wrapping_mul(8).wrapping_add(c - b'0')),
            );
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(
        out,
    ))
}

/// The daemon's cgroup v2 path (the "0::" line of /proc/self/cgroup).
fn own_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end_matches(" (deleted)").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_mount_and_own_cgroup_are_read_from_proc() {
        let mountinfo = "24 1 0:22 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n\
            30 24 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
            35 24 0:31 / /sys/fs/cgroup/unified\\040x rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified x"))
        );
        assert_eq!(cgroup2_mount("24 1 0:22 / /sys rw - sysfs sysfs rw\n"), None);
        let cgroup =
            "4:memory:/x\n1:name=systemd:/system.slice/agentsd.service\n0::/system.slice/agentsd.service\n";
        assert_eq!(
            own_cgroup(cgroup).as_deref(),
            Some("/system.slice/agentsd.service")
        );
        assert_eq!(own_cgroup("1:cpu:/\n"), None);
    }

    #[test]
    fn a_process_cgroup_path_names_its_agent_only_under_this_daemon() {
        let cg = Cgroups {
            root: PathBuf::from("/sys/fs/cgroup/system.slice/agentsd.service/agentsd-0123abcd"),
        };
        let agent = |p: &str| cg.agent_in(p);
        assert_eq!(
            agent("/system.slice/agentsd.service/agentsd-0123abcd/agent-web_1").as_deref(),
            Some("web_1")
        );
        // Seen from inside a cgroup namespace: the path is shorter.
        assert_eq!(agent("/agentsd-0123abcd/agent-bot").as_deref(), Some("bot"));
        // Another daemon's agents, the daemon's own dir, anything else.
        assert_eq!(agent("/agentsd-ffffffff/agent-bot"), None);
        assert_eq!(agent("/system.slice/agentsd.service/agentsd-0123abcd"), None);
        assert_eq!(agent("/agentsd-0123abcd/other"), None);
        assert_eq!(agent("/"), None);
    }
}
