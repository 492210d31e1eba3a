//! The process table: signalling groups and processes, the scans that find
//! every process of an agent (descendants that left its process group
//! included), and killing what a crashed daemon left behind.
//!
//! The daemon is the child subreaper of everything its agents start, so
//! every agent process stays in the daemon's subtree: a process that left
//! its agent's group still descends from the agent's leader, or, once the
//! leader is gone, is a child of the daemon and carries the agent's id in
//! its environment. Scans run on their own thread, only when an event asks
//! for one (a stop, a process of a stopping agent exiting, a timeout).

use super::spawn::{AGENT_ID_VAR, INSTANCE_VAR};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::sync::mpsc;

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
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

fn parse_stat(pid: u32, text: &str) -> Option<Stat> {
    // The command name may contain anything, so parse after its ')'.
    let rest = text.get(text.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split(' ').collect();
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // Fields counted from the state (field 3 of proc(5)).
    Some(Stat {
        pid,
        ppid: num(1)? as u32,
        pgrp: num(2)? as u32,
        state: fields.first()?.chars().next()?,
        ticks: num(11)? + num(12)? + num(13)? + num(14)?,
        rss: num(21).unwrap_or(0),
        start: num(19).unwrap_or(0),
    })
}

/// Every process in /proc.
fn all() -> impl Iterator<Item = Stat> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
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

/// Every live process in the daemon's subtree, in `groups`, and in the
/// agents' cgroups.
fn scan(req: &ScanRequest) -> Scan {
    let me = std::process::id();
    let procs: HashMap<u32, Stat> = all()
        .filter(|s| s.state != 'Z' && s.pid != me)
        .map(|s| (s.pid, s))
        .collect();
    let leaders: std::collections::HashSet<u32> = req.leaders.iter().copied().collect();
    let groups: std::collections::HashSet<u32> = req.groups.iter().copied().collect();
    let mut tops: HashMap<u32, Option<u32>> = HashMap::new();
    let mut marks: HashMap<u32, Option<String>> = HashMap::new();
    let mut out = Vec::new();
    for s in procs.values() {
        let top = top_of(s.pid, &procs, me, &mut tops);
        if top.is_none() && !groups.contains(&s.pgrp) {
            continue;
        }
        let top = top.unwrap_or(0);
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
    let mut usage = HashMap::new();
    if let Some((cgroups, agents)) = &req.cgroups {
        let at: HashMap<u32, usize> = out.iter().enumerate().map(|(i, m)| (m.pid, i)).collect();
        for agent in agents {
            for pid in cgroups.procs(agent) {
                match at.get(&pid) {
                    Some(i) => out[*i].owner = Some(agent.clone()),
                    // In the cgroup but not below the daemon: moved there.
                    None => {
                        if let Some(s) = stat(pid).filter(|s| s.state != 'Z') {
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
            if req.sample
                && let Some(u) = cgroups.usage(agent)
            {
                usage.insert(agent.clone(), u);
            }
        }
    }
    Scan { members: out, usage }
}

/// The ancestor of `pid` whose parent is the daemon, if it descends from
/// the daemon at all (memoized in `tops`).
fn top_of(
    pid: u32,
    procs: &HashMap<u32, Stat>,
    me: u32,
    tops: &mut HashMap<u32, Option<u32>>,
) -> Option<u32> {
    let mut chain = Vec::new();
    let mut cur = pid;
    let found = loop {
        if let Some(t) = tops.get(&cur) {
            break *t;
        }
        let Some(s) = procs.get(&cur) else { break None };
        chain.push(cur);
        if s.ppid == me {
            break Some(cur);
        }
        if s.ppid <= 1 || chain.len() > 4096 {
            break None;
        }
        cur = s.ppid;
    };
    for p in chain {
        tops.insert(p, found);
    }
    found
}

/// The scan thread: takes requests, answers each with one scan. Requests
/// that queue up while it scans are answered together by the next one.
pub fn scanner(
    answer: impl Fn(Scan, bool, bool) -> bool + Send + 'static,
) -> std::io::Result<mpsc::Sender<ScanRequest>> {
    let (tx, rx) = mpsc::channel::<ScanRequest>();
    std::thread::Builder::new()
        .name("agentsd-scan".into())
        .spawn(move || {
            while let Ok(mut req) = rx.recv() {
                while let Ok(newer) = rx.try_recv() {
                    let (sample, everything) =
                        (req.sample || newer.sample, req.everything || newer.everything);
                    req = newer;
                    req.sample = sample;
                    req.everything = everything;
                }
                if !answer(scan(&req), req.sample, req.everything) {
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

    #[test]
    fn a_scan_finds_a_child_and_its_descendants_by_their_top() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            let found: Vec<Member> = scan(&ScanRequest {
                leaders: vec![pid],
                groups: vec![],
                sample: false,
                cgroups: None,
                everything: false,
            })
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
