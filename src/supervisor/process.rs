//! The process table: signalling groups and processes, the scans that find
//! every process of an agent (descendants that left its process group
//! included), and killing what a crashed daemon left behind.
//!
//! The daemon is the child subreaper of everything its agents start, so
//! every agent process stays in the daemon's subtree: a process that left
//! its agent's group still descends from the agent's leader, or, once the
//! leader is gone, is a child of the daemon and carries the agent's id in
//! its environment. Scans run on their own thread, only when an event asks
//! for one (a stop, a process of a stopping agent exiting, a timeout, the
//! sampler's tick). A stop's scan reads the whole table; a sample's reads
//! only the processes that are, or may be, in the daemon's subtree, and
//! samples keep to a share of one core ([`SAMPLER_SHARE`]).

use super::spawn::{AGENT_ID_VAR, INSTANCE_VAR};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Sends `sig` to the whole process group; a group that is already gone is
/// not an error.
pub fn signal_group(pgid: u32, sig: Signal) {
    match killpg(Pid::from_raw(pgid as i32), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!("cannot send {sig} to process group {pgid}: {e}"),
    }
}

/// Sends `sig` to one process; one that is already gone is not an error.
pub fn signal(pid: u32, sig: Signal) {
    match kill(Pid::from_raw(pid as i32), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!("cannot send {sig} to process {pid}: {e}"),
    }
}

/// Sends `sig` to the process a scan found as `m`, and never to another
/// that got its pid since: through a pidfd (Linux 5.3), which holds the
/// process that has the pid when it is opened, checked to be the one that
/// started when `m` did. Without pidfds, the same check comes before a
/// plain kill (a narrower window, not none).
pub fn signal_member(m: &Member, sig: Signal) {
    use rustix::process::{PidfdFlags, pidfd_open, pidfd_send_signal};
    let same = || stat(m.pid).is_some_and(|s| s.start == m.start && s.state != 'Z');
    let Some(pid) = rustix::process::Pid::from_raw(m.pid as i32) else {
        return;
    };
    match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => {
            if !same() {
                return;
            }
            let Some(rsig) = rustix::process::Signal::from_named_raw(sig as i32) else {
                return signal(m.pid, sig);
            };
            match pidfd_send_signal(&fd, rsig) {
                Ok(()) | Err(rustix::io::Errno::SRCH) => {}
                Err(e) => tracing::warn!("cannot send {sig} to process {}: {e}", m.pid),
            }
        }
        Err(rustix::io::Errno::SRCH) => {}
        Err(_) => {
            if same() {
                signal(m.pid, sig);
            }
        }
    }
}

/// One line of `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    pid: u32,
    ppid: u32,
    pgrp: u32,
    state: char,
    /// CPU time of the process and of the children it reaped, in clock ticks.
    ticks: u64,
    /// Resident pages.
    rss: u64,
    /// When it started, in clock ticks after boot: with the pid, who it is.
    start: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    read_stat(pid, &mut Vec::new())
}

/// Reads `/proc/<pid>/stat` into `buf` (one open, one read: no metadata
/// call for a size hint) and parses it.
fn read_stat(pid: u32, buf: &mut Vec<u8>) -> Option<Stat> {
    use std::io::Read;
    buf.clear();
    let mut f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    // A stat line is a few hundred bytes; `read_to_end` stops at the end.
    buf.reserve(512);
    f.read_to_end(buf).ok()?;
    parse_stat(pid, std::str::from_utf8(buf).ok()?)
}

fn parse_stat(pid: u32, text: &str) -> Option<Stat> {
    // The command name may contain anything, so parse after its ')'.
    let rest = text.get(text.rfind(')')? + 2..)?;
    // Fields counted from the state (field 3 of proc(5)); none past 22.
    let mut fields = [""; 23];
    let mut n = 0;
    for (slot, f) in fields.iter_mut().zip(rest.split(' ')) {
        *slot = f;
        n += 1;
    }
    let num = |i: usize| (i < n).then(|| fields[i].parse::<u64>().ok()).flatten();
    Some(Stat {
        pid,
        ppid: num(1)? as u32,
        pgrp: num(2)? as u32,
        state: fields[0].chars().next()?,
        ticks: num(11)? + num(12)? + num(13)? + num(14)?,
        rss: num(21).unwrap_or(0),
        start: num(19).unwrap_or(0),
    })
}

/// The pids in /proc.
fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .collect()
}

/// Every process in /proc.
fn all() -> impl Iterator<Item = Stat> {
    let mut buf = Vec::new();
    pids().into_iter().filter_map(move |p| read_stat(p, &mut buf))
}

fn environ_has(pid: u32, kv: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == kv.as_bytes()))
}

/// The value of `var` in a process's environment.
fn environ_var(pid: u32, var: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{var}=");
    env.split(|b| *b == 0)
        .find_map(|e| e.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// A live process that belongs to some agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub pid: u32,
    pub ppid: u32,
    pub pgrp: u32,
    pub state: char,
    /// CPU time (own and reaped children's) in clock ticks.
    pub ticks: u64,
    /// Resident memory in bytes.
    pub rss_bytes: u64,
    /// Its ancestor that is a child of the daemon (an agent's leader, or a
    /// process the daemon adopted).
    pub top: u32,
    /// For a process whose `top` is not a leader: the agent id that `top`
    /// carries in its environment.
    pub mark: Option<String>,
    /// The agent whose cgroup it is in: known for sure.
    pub owner: Option<String>,
    /// When it started (with the pid, who it is).
    pub start: u64,
}

impl Member {
    /// Process `pid` as it is now, with `top` as its ancestor below the
    /// daemon (`None` once it has exited or is a zombie).
    pub(super) fn now(pid: u32, top: u32) -> Option<Member> {
        let s = stat(pid).filter(|s| s.state != 'Z')?;
        Some(Member {
            pid,
            ppid: s.ppid,
            pgrp: s.pgrp,
            state: s.state,
            ticks: s.ticks,
            rss_bytes: s.rss * page_size(),
            top,
            mark: None,
            owner: None,
            start: s.start,
        })
    }
}

/// The agent id process `pid` carries in its environment.
pub(super) fn agent_mark(pid: u32) -> Option<String> {
    environ_var(pid, AGENT_ID_VAR)
}

/// What a scan is asked to look at.
pub struct ScanRequest {
    /// The agents' leaders: adopted processes are every other child.
    pub leaders: Vec<u32>,
    /// Process groups whose members count even outside the subtree.
    pub groups: Vec<u32>,
    /// A resource sample asked for it.
    pub sample: bool,
    /// With cgroups: the agents whose cgroups to read.
    pub cgroups: Option<(std::sync::Arc<super::cgroup::Cgroups>, Vec<String>)>,
    /// At shutdown: every process left in the daemon's subtree is wanted.
    pub everything: bool,
}

/// A scan's answer.
pub struct Scan {
    pub members: Vec<Member>,
    /// What each agent's cgroup accounts for.
    pub usage: HashMap<String, super::cgroup::Usage>,
}

/// How much of the process table a scan reads afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Depth {
    /// Every process: a stop's scan (its groups may hold processes outside
    /// the daemon's subtree), and the last one at shutdown.
    Full,
    /// Every process that is, or may be, in the daemon's subtree:
    /// processes known to be outside it are not read again.
    Subtree,
    /// A sample put off (see [`SAMPLER_SHARE`]): processes the last scan
    /// read are taken as it read them; only pids handed out since, and
    /// processes whose parent is gone, are read.
    Light,
}

/// The share of one core the resource sampler may take: a sample that
/// comes sooner than its last one's CPU time allows is put off (the scan
/// still answers, lightly, and the resources stay as of the last sample).
/// With a few hundred agents this never happens at the default 5 s; with
/// thousands, samples come less often than `sample_interval`.
const SAMPLER_SHARE: f64 = 0.005;

/// Every this many scans, nothing known from before is trusted (a bound on
/// what a pid counter that went round unseen could hide).
const FORGET_EVERY: u64 = 64;

/// Where a process's line of descent leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Descent {
    /// To this child of the daemon.
    Below(u32),
    /// To init or the kernel: outside the daemon's subtree, for good (an
    /// orphan goes to a subreaper above it, or to init, never below).
    Outside,
    /// A link was missing (a parent exited while the table was read).
    Unknown,
}

/// What the scan thread keeps from one scan to the next.
struct Table {
    me: u32,
    /// Whether /proc shows the daemon's own pids (its pid namespace's):
    /// without that, nothing is carried over.
    own_pids: bool,
    /// The last scan's reading of each live process it kept.
    seen: HashMap<u32, Stat>,
    /// Pids of processes outside the daemon's subtree: not read again
    /// until the kernel may have handed the pid out anew.
    outside: HashSet<u32>,
    /// The last pid handed out, read before the last scan listed /proc.
    last_pid: Option<u32>,
    scans: u64,
    /// Whose cgroup each process (pid, start) was in at the last read.
    owners: HashMap<u32, (u64, String)>,
    /// One buffer for every stat line.
    buf: Vec<u8>,
    /// A sample before then is put off.
    next_sample: Option<Instant>,
    /// The last scan read every process (nothing was carried over).
    read_all: bool,
}

/// The last pid the kernel handed out (in the pid namespace of /proc).
fn last_pid() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    text.split_whitespace().nth(4)?.parse().ok()
}

impl Table {
    fn new() -> Table {
        let me = std::process::id();
        let own_pids = std::fs::read_link("/proc/self")
            .ok()
            .and_then(|p| p.to_str()?.parse::<u32>().ok())
            == Some(me);
        Table {
            me,
            own_pids,
            seen: HashMap::new(),
            outside: HashSet::new(),
            last_pid: None,
            scans: 0,
            owners: HashMap::new(),
            buf: Vec::with_capacity(512),
            next_sample: None,
            read_all: true,
        }
    }

    /// How deep the scan for `req` reads; a sample that comes too soon is
    /// put off (`req.sample` cleared).
    fn depth(&self, req: &mut ScanRequest, now: Instant) -> Depth {
        if req.everything || !req.groups.is_empty() {
            Depth::Full
        } else if req.sample && self.next_sample.is_some_and(|t| now < t) {
            req.sample = false;
            Depth::Light
        } else {
            Depth::Subtree
        }
    }

    /// A sample's scan took `cost` of CPU: the next one waits long enough
    /// for the sampler to stay within [`SAMPLER_SHARE`]. A scan that read
    /// every process (nothing carried over) says little of a sample's cost.
    fn sampled(&mut self, cost: Duration, now: Instant) {
        if !self.read_all {
            self.next_sample = Some(now + cost.div_f64(SAMPLER_SHARE));
        }
    }

    /// Whether the kernel may have handed `pid` out between the last
    /// scan's start and `now` (the last pid then): pids go up, and wrap.
    fn maybe_new(last_pid: Option<u32>, pid: u32, now: u32) -> bool {
        match last_pid {
            Some(before) if now >= before => pid > before && pid <= now,
            Some(before) => pid > before || pid <= now,
            None => true,
        }
    }

    /// Every live process in the daemon's subtree, in `groups`, and in the
    /// agents' cgroups.
    fn scan(&mut self, req: &ScanRequest, depth: Depth) -> Scan {
        let me = self.me;
        let now_pid = last_pid();
        // Read before the listing: a process started since is either
        // listed now or has a pid past `now_pid`.
        let listed = pids();
        let trusted = self.own_pids
            && now_pid.is_some()
            && self.last_pid.is_some()
            && !self.scans.is_multiple_of(FORGET_EVERY);
        let depth = if trusted { depth } else { Depth::Full };
        let now_pid = now_pid.unwrap_or(0);
        let before = self.last_pid;
        let known = |pid: u32| trusted && !Table::maybe_new(before, pid, now_pid);
        let live: HashSet<u32> = if depth == Depth::Light {
            listed.iter().copied().collect()
        } else {
            HashSet::new()
        };
        let mut procs: HashMap<u32, Stat> = HashMap::with_capacity(listed.len().min(1 << 16));
        let mut outside = HashSet::new();
        for &pid in &listed {
            if pid == me {
                continue;
            }
            if depth != Depth::Full && known(pid) && self.outside.contains(&pid) {
                outside.insert(pid);
                continue;
            }
            let kept = (depth == Depth::Light && known(pid))
                .then(|| self.seen.get(&pid).copied())
                .flatten()
                // Its parent is gone (it has another now), or the parent's
                // pid is another process's: read it again.
                .filter(|s| s.ppid == me || s.ppid <= 1 || (live.contains(&s.ppid) && known(s.ppid)));
            let s = match kept {
                Some(s) => Some(s),
                None => read_stat(pid, &mut self.buf),
            };
            if let Some(s) = s.filter(|s| s.state != 'Z') {
                procs.insert(pid, s);
            }
        }
        let leaders: HashSet<u32> = req.leaders.iter().copied().collect();
        let groups: HashSet<u32> = req.groups.iter().copied().collect();
        let mut tops: HashMap<u32, Descent> = HashMap::new();
        let mut marks: HashMap<u32, Option<String>> = HashMap::new();
        let mut out = Vec::new();
        for s in procs.values() {
            let top = match descent(s.pid, &procs, &outside, me, &mut tops) {
                Descent::Below(top) => top,
                Descent::Outside | Descent::Unknown if groups.contains(&s.pgrp) => 0,
                _ => continue,
            };
            let mark = if top != 0 && !leaders.contains(&top) {
                marks
                    .entry(top)
                    .or_insert_with(|| environ_var(top, AGENT_ID_VAR))
                    .clone()
            } else {
                None
            };
            out.push(Member {
                pid: s.pid,
                ppid: s.ppid,
                pgrp: s.pgrp,
                state: s.state,
                ticks: s.ticks,
                rss_bytes: s.rss * page_size(),
                top,
                mark,
                owner: None,
                start: s.start,
            });
        }
        outside.extend(
            tops.iter()
                .filter(|(_, d)| **d == Descent::Outside)
                .map(|(pid, _)| *pid),
        );
        let mut usage = HashMap::new();
        if let Some((cgroups, agents)) = &req.cgroups {
            if depth == Depth::Full {
                // Every agent's member list: a stop's scan must find what
                // was moved into an agent's cgroup from outside the subtree.
                self.owners.clear();
                let at: HashMap<u32, usize> = out.iter().enumerate().map(|(i, m)| (m.pid, i)).collect();
                for agent in agents {
                    for pid in cgroups.procs(agent) {
                        match at.get(&pid) {
                            Some(i) => out[*i].owner = Some(agent.clone()),
                            // In the cgroup but not below the daemon: moved there.
                            None => {
                                if let Some(s) = read_stat(pid, &mut self.buf).filter(|s| s.state != 'Z') {
                                    out.push(Member {
                                        pid,
                                        ppid: s.ppid,
                                        pgrp: s.pgrp,
                                        state: s.state,
                                        ticks: s.ticks,
                                        rss_bytes: s.rss * page_size(),
                                        top: 0,
                                        mark: None,
                                        owner: Some(agent.clone()),
                                        start: s.start,
                                    });
                                }
                            }
                        }
                    }
                }
                for m in &out {
                    if let Some(id) = &m.owner {
                        self.owners.insert(m.pid, (m.start, id.clone()));
                    }
                }
            } else {
                // A process below an agent's leader is in the agent's
                // cgroup (its first process joined before its exec): the
                // leader says whose it is. Any other (adopted) says in its
                // own /proc/<pid>/cgroup, read once per process.
                let mut owners = HashMap::new();
                for m in out.iter_mut().filter(|m| !leaders.contains(&m.top)) {
                    let id = match self.owners.remove(&m.pid) {
                        Some((start, id)) if start == m.start => Some(id),
                        _ => cgroups.agent_of(m.pid),
                    };
                    if let Some(id) = id {
                        owners.insert(m.pid, (m.start, id.clone()));
                        m.owner = Some(id);
                    }
                }
                self.owners = owners;
            }
            if req.sample {
                let memory = cgroups.memory_accounted();
                for agent in agents {
                    if let Some(u) = cgroups.usage(agent, memory) {
                        usage.insert(agent.clone(), u);
                    }
                }
            }
        }
        self.seen = procs;
        self.outside = outside;
        self.last_pid = self.own_pids.then_some(now_pid).filter(|p| *p != 0);
        self.scans += 1;
        self.read_all = !trusted;
        Scan { members: out, usage }
    }
}

/// Where the line of descent of `pid` leads (memoized in `tops`); pids in
/// `outside` were not read, and are outside.
fn descent(
    pid: u32,
    procs: &HashMap<u32, Stat>,
    outside: &HashSet<u32>,
    me: u32,
    tops: &mut HashMap<u32, Descent>,
) -> Descent {
    let mut chain = Vec::new();
    let mut cur = pid;
    let found = loop {
        if let Some(t) = tops.get(&cur) {
            break *t;
        }
        let Some(s) = procs.get(&cur) else {
            break if outside.contains(&cur) {
                Descent::Outside
            } else {
                Descent::Unknown
            };
        };
        chain.push(cur);
        if s.ppid == me {
            break Descent::Below(cur);
        }
        if s.ppid <= 1 {
            break Descent::Outside;
        }
        if chain.len() > 4096 {
            break Descent::Unknown;
        }
        cur = s.ppid;
    };
    for p in chain {
        tops.insert(p, found);
    }
    found
}

/// The CPU time the calling thread has used.
fn thread_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    getrusage(UsageWho::RUSAGE_THREAD).map_or(Duration::ZERO, |u| {
        let t = |v: nix::sys::time::TimeVal| {
            Duration::from_secs(v.tv_sec().max(0) as u64) + Duration::from_micros(v.tv_usec().max(0) as u64)
        };
        t(u.user_time()) + t(u.system_time())
    })
}

/// The scan thread: takes requests, answers each with one scan. Requests
/// that queue up while it scans are answered together by the next one. A
/// sample that comes sooner than [`SAMPLER_SHARE`] allows is answered as a
/// scan without one.
pub fn scanner(
    answer: impl Fn(Scan, bool, bool) -> bool + Send + 'static,
) -> std::io::Result<mpsc::Sender<ScanRequest>> {
    let (tx, rx) = mpsc::channel::<ScanRequest>();
    std::thread::Builder::new()
        .name("agentsd-scan".into())
        .spawn(move || {
            let mut table = Table::new();
            while let Ok(mut req) = rx.recv() {
                while let Ok(newer) = rx.try_recv() {
                    let (sample, everything) =
                        (req.sample || newer.sample, req.everything || newer.everything);
                    req = newer;
                    req.sample = sample;
                    req.everything = everything;
                }
                let depth = table.depth(&mut req, Instant::now());
                let began = thread_cpu();
                let found = table.scan(&req, depth);
                if req.sample {
                    table.sampled(thread_cpu().saturating_sub(began), Instant::now());
                }
                if !answer(found, req.sample, req.everything) {
                    break;
                }
            }
        })?;
    Ok(tx)
}

fn page_size() -> u64 {
    static SIZE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |v| v as u64)
    })
}

/// Clock ticks per second, the unit of [`Member::ticks`].
pub fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .map_or(100.0, |v| v as f64)
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
    let me = std::process::id();
    let by_group = by_group(groups);
    for p in all() {
        if p.state == 'Z' || p.pid == me {
            continue;
        }
        let in_group = by_group.get(&p.pgrp).is_some_and(|agents| {
            agents
                .iter()
                .any(|agent| environ_has(p.pid, &format!("{AGENT_ID_VAR}={agent}")))
        });
        if in_group || environ_has(p.pid, &mark) {
            tracing::warn!(
                pid = p.pid,
                pgrp = p.pgrp,
                "killing a process left behind by an earlier run of the daemon"
            );
            if kill(Pid::from_raw(p.pid as i32), Signal::SIGKILL).is_ok() {
                killed.push(p.pid);
            }
        }
    }
    // Wait (briefly) until they are gone, so nothing old overlaps a new start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while killed.iter().any(|p| stat(*p).is_some_and(|s| s.state != 'Z'))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    killed.len()
}

/// The agents recorded for each process group: one look-up per process
/// instead of a pass over every group.
fn by_group(groups: &[(String, i32)]) -> HashMap<u32, Vec<&str>> {
    let mut map: HashMap<u32, Vec<&str>> = HashMap::with_capacity(groups.len());
    for (agent, g) in groups {
        map.entry(*g as u32).or_default().push(agent);
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_groups_are_looked_up_by_number() {
        let groups: Vec<(String, i32)> = (0..10_000).map(|i| (format!("a{i}"), 1000 + i)).collect();
        let mut reused = groups.clone();
        reused.push(("b".into(), 1000));
        let map = by_group(&reused);
        assert_eq!(map.len(), 10_000);
        assert_eq!(map[&1000], ["a0", "b"]);
        assert_eq!(map[&10_999], ["a9999"]);
        assert!(!map.contains_key(&999));
    }

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        let line = "42 (a) b (c)) S 7 42 42 0 -1 4194304 100 0 0 0 11 22 33 44 20 0 1 0 500 1000000 256 rest";
        let s = parse_stat(42, line).unwrap();
        assert_eq!((s.ppid, s.pgrp, s.state), (7, 42, 'S'));
        assert_eq!((s.ticks, s.rss), (11 + 22 + 33 + 44, 256));
        assert_eq!(parse_stat(1, "garbage"), None);
    }

    use nix::libc;

    #[test]
    fn a_kill_from_a_scan_never_hits_another_process_with_the_pid() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let s = stat(pid).unwrap();
        let seen = Member {
            pid,
            ppid: s.ppid,
            pgrp: s.pgrp,
            state: s.state,
            ticks: 0,
            rss_bytes: 0,
            top: pid,
            mark: None,
            owner: None,
            start: s.start,
        };
        // The pid now names a process that started at another time: not
        // the one the scan saw.
        let reused = Member {
            start: s.start + 1,
            ..seen.clone()
        };
        // A SIGSTOP sent shows at once: pending, or stopped.
        let stopped = || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap()
                    .trim()
                    .to_string()
            };
            let pending = u64::from_str_radix(&field("ShdPnd:"), 16).unwrap()
                | u64::from_str_radix(&field("SigPnd:"), 16).unwrap();
            field("State:").starts_with('T') || pending & (1 << (libc::SIGSTOP - 1)) != 0
        };
        signal_member(&reused, Signal::SIGSTOP);
        assert!(!stopped(), "another process got the signal");
        signal_member(&seen, Signal::SIGSTOP);
        // Delivered, it can be neither pending nor shown stopped for an
        // instant: wait for the state, within a bound.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !stopped() {
            assert!(
                std::time::Instant::now() < deadline,
                "the process the scan saw did not get it"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        signal_member(&seen, Signal::SIGKILL);
        let status = child.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    }

    fn sample_request(leaders: Vec<u32>) -> ScanRequest {
        ScanRequest {
            leaders,
            groups: vec![],
            sample: true,
            cgroups: None,
            everything: false,
        }
    }

    #[test]
    fn pids_handed_out_since_the_last_scan_are_new_also_across_a_wrap() {
        let new = |before, pid, now| Table::maybe_new(before, pid, now);
        assert!(new(Some(100), 101, 150) && new(Some(100), 150, 150));
        assert!(!new(Some(100), 100, 150) && !new(Some(100), 151, 150) && !new(Some(100), 5, 150));
        // The counter wrapped: past the old last pid, or up to the new one.
        assert!(new(Some(32000), 32500, 400) && new(Some(32000), 300, 400));
        assert!(!new(Some(32000), 500, 400) && !new(Some(32000), 32000, 400));
        // Nothing known from before: everything is new.
        assert!(new(None, 1, 1));
    }

    #[test]
    fn a_sample_too_soon_after_a_costly_one_is_put_off_but_a_stop_scan_never_is() {
        let now = Instant::now();
        let mut table = Table::new();
        // A sample that read every process sets no pace.
        table.sampled(Duration::from_secs(1), now);
        let mut req = sample_request(vec![]);
        assert_eq!(table.depth(&mut req, now), Depth::Subtree);
        assert!(req.sample);
        // 25 ms of CPU at 0.5 % of a core: the next sample 5 s later.
        table.read_all = false;
        table.sampled(Duration::from_millis(25), now);
        assert_eq!(
            table.depth(&mut req, now + Duration::from_millis(4900)),
            Depth::Light
        );
        assert!(!req.sample, "a put-off sample is answered as none");
        let mut req = sample_request(vec![]);
        assert_eq!(
            table.depth(&mut req, now + Duration::from_millis(5100)),
            Depth::Subtree
        );
        assert!(req.sample);
        // A stop's scan (its groups) and the last one read everything.
        let mut stop = ScanRequest {
            groups: vec![42],
            ..sample_request(vec![])
        };
        assert_eq!(table.depth(&mut stop, now), Depth::Full);
        assert!(stop.sample);
    }

    #[test]
    fn scans_that_carry_the_table_over_still_find_new_and_gone_processes() {
        let spawn = || {
            std::process::Command::new("sh")
                .args(["-c", "sleep 30 & wait"])
                .spawn()
                .unwrap()
        };
        let mut table = Table::new();
        let mut first = spawn();
        let a = first.id();
        let of = |table: &mut Table, depth: Depth, leaders: Vec<u32>, top: u32| -> Vec<u32> {
            let mut pids: Vec<u32> = table
                .scan(&sample_request(leaders), depth)
                .members
                .into_iter()
                .filter(|m| m.top == top)
                .map(|m| m.pid)
                .collect();
            pids.sort();
            pids
        };
        // Until the shell has forked its sleep (a 5 s bound).
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = of(&mut table, Depth::Subtree, vec![a], a);
        while found.len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            found = of(&mut table, Depth::Subtree, vec![a], a);
        }
        assert_eq!(found.len(), 2, "{found:?}");
        // What is outside the subtree is known, and not taken for ours.
        assert!(table.outside.contains(&1) || !table.own_pids);
        // A process started since the last scan: found by a scan that
        // reads only what is new, and by one that skips what is outside.
        let mut second = spawn();
        let b = second.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut light = of(&mut table, Depth::Light, vec![a, b], b);
        while light.len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
            light = of(&mut table, Depth::Light, vec![a, b], b);
        }
        assert_eq!(light.len(), 2, "{light:?}");
        assert_eq!(of(&mut table, Depth::Subtree, vec![a, b], b), light);
        // Gone: in neither kind of scan.
        let _ = kill(Pid::from_raw(a as i32), Signal::SIGKILL);
        let _ = first.wait();
        assert!(!of(&mut table, Depth::Light, vec![b], a).contains(&a));
        assert!(!of(&mut table, Depth::Subtree, vec![b], a).contains(&a));
        for pid in found.iter().chain(&light) {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        let _ = second.wait();
    }

    #[test]
    fn a_scan_finds_a_child_and_its_descendants_by_their_top() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            let found: Vec<Member> = Table::new()
                .scan(
                    &ScanRequest {
                        leaders: vec![pid],
                        groups: vec![],
                        sample: false,
                        cgroups: None,
                        everything: false,
                    },
                    Depth::Subtree,
                )
                .members
                .into_iter()
                .filter(|m| m.top == pid)
                .collect();
            if found.len() >= 2 || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        for m in &found {
            let _ = kill(Pid::from_raw(m.pid as i32), Signal::SIGKILL);
        }
        let _ = child.wait();
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found.iter().all(|m| m.mark.is_none()),
            "a leader's tree needs no mark"
        );
    }
}
