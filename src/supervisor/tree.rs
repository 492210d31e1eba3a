//! An agent's processes found from its own tree, in O(its processes)
//! instead of a scan of the whole process table: the stop signals at once
//! with it, and tells at once whether a stopped agent is gone.
//!
//! The daemon is the child subreaper of everything its agents start, so a
//! process of an agent is below the agent's leader while the leader lives,
//! and below one of the daemon's adopted children once its parent is gone.
//! Each thread's `/proc/PID/task/TID/children` names the children it
//! forked (or was given as subreaper).

use super::process::Member;
use std::collections::HashMap;

/// At most this many processes per walk: a fork bomb is a scan's to find.
const LIMIT: usize = 4096;

/// The children of process `pid`, of every one of its threads.
pub(super) fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        if let Ok(text) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(parse_children(&text));
        }
    }
    out
}

fn parse_children(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.split_ascii_whitespace().filter_map(|p| p.parse().ok())
}

/// Every live process below `root`, `root` included (none if it is gone),
/// each with `top` as its ancestor below the daemon; appended to `out`.
pub(super) fn subtree(root: u32, top: u32, out: &mut Vec<Member>) {
    let mut todo = vec![root];
    let mut walked = 0;
    while let Some(pid) = todo.pop() {
        walked += 1;
        if walked > LIMIT {
            return;
        }
        if let Some(m) = Member::now(pid, top) {
            out.push(m);
            todo.extend(children(pid));
        }
    }
}

/// What says whose an adopted process (a child of the daemon that is no
/// agent's leader) is, in the order a scan asks too.
pub(super) struct Clues<'a> {
    /// Process group -> the agent whose run it is.
    pub groups: &'a HashMap<u32, String>,
    /// pid -> (its start, the agent) as last seen.
    pub lineage: &'a HashMap<u32, (u64, String)>,
}

impl Clues<'_> {
    /// Whose `m` is: its group's agent, the agent id it carries (`mark`,
    /// read only when needed), or whose it was when last seen.
    pub(super) fn owner(&self, m: &Member, mark: impl FnOnce() -> Option<String>) -> Option<String> {
        self.groups.get(&m.pgrp).cloned().or_else(mark).or_else(|| {
            self.lineage
                .get(&m.pid)
                .filter(|(start, _)| *start == m.start)
                .map(|(_, id)| id.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(pid: u32, pgrp: u32, start: u64) -> Member {
        Member {
            pid,
            ppid: 1,
            pgrp,
            state: 'S',
            ticks: 0,
            rss_bytes: 0,
            top: pid,
            mark: None,
            owner: None,
            start,
        }
    }

    #[test]
    fn children_lists_parse() {
        assert_eq!(parse_children("12 345 \n").collect::<Vec<_>>(), [12, 345]);
        assert_eq!(parse_children("").count(), 0);
    }

    #[test]
    fn an_adopted_process_is_known_by_its_group_then_its_mark_then_its_lineage() {
        let groups = HashMap::from([(100, "a".to_string())]);
        let lineage = HashMap::from([(7, (55, "b".to_string()))]);
        let clues = Clues {
            groups: &groups,
            lineage: &lineage,
        };
        let no_mark = || None;
        assert_eq!(clues.owner(&member(7, 100, 55), no_mark).as_deref(), Some("a"));
        assert_eq!(clues.owner(&member(7, 9, 55), no_mark).as_deref(), Some("b"));
        // The pid was reused: its lineage is not this process's.
        assert_eq!(clues.owner(&member(7, 9, 56), no_mark), None);
        let mark = || Some("c".to_string());
        assert_eq!(clues.owner(&member(7, 9, 56), mark).as_deref(), Some("c"));
        assert_eq!(clues.owner(&member(7, 9, 55), mark).as_deref(), Some("c"));
        assert_eq!(clues.owner(&member(7, 100, 55), mark).as_deref(), Some("a"));
    }

    #[test]
    fn a_subtree_holds_the_root_and_its_descendants() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            let mut found = vec![];
            subtree(pid, pid, &mut found);
            if found.len() >= 2 || std::time::Instant::now() > deadline {
                break found;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        for m in found.iter().rev() {
            super::super::process::signal(m.pid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = child.wait();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].pid, pid);
        assert!(found.iter().all(|m| m.top == pid));
        let mut gone = vec![];
        subtree(pid, pid, &mut gone);
        assert!(gone.is_empty(), "{gone:?}");
    }
}
