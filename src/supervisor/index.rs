//! Which agents have each status, and which have a stats query: kept by
//! the supervisor where agents are added and removed and where it takes
//! their transitions, so that a list filtered by status, and the stats
//! beat, look at the agents they need and not at every one.

use crate::wire::Status;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound::{Excluded, Unbounded};

/// What a list asks for: agents with this status, whose id contains this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub status: Option<Status>,
    pub q: Option<String>,
}

impl Filter {
    fn ids<'a, A>(
        &'a self,
        index: &'a Index,
        agents: &'a BTreeMap<String, A>,
    ) -> Box<dyn Iterator<Item = &'a str> + 'a> {
        let q = self.q.as_deref();
        let matches = move |id: &&str| q.is_none_or(|q| id.contains(q));
        match self.status {
            Some(s) => Box::new(index.with_status(s).filter(matches)),
            None => Box::new(agents.keys().map(String::as_str).filter(matches)),
        }
    }
}

#[derive(Default)]
pub(super) struct Index {
    /// By [`Status`] as a number (its place in [`Status::ALL`]).
    by_status: [BTreeSet<String>; Status::ALL.len()],
    /// The agents that have a stats query.
    stats: BTreeSet<String>,
}

impl Index {
    /// A new agent (or one whose config changed: it is put where it
    /// belongs now).
    pub fn insert(&mut self, id: &str, status: Status, has_stats: bool) {
        self.remove(id);
        self.by_status[status as usize].insert(id.to_string());
        if has_stats {
            self.stats.insert(id.to_string());
        }
    }

    /// A transition the supervisor took.
    pub fn moved(&mut self, id: &str, old: Status, new: Status) {
        if old == new {
            return;
        }
        let taken = self.by_status[old as usize].take(id);
        debug_assert!(taken.is_some(), "{id} was not {old}");
        self.by_status[new as usize].insert(taken.unwrap_or_else(|| id.to_string()));
    }

    /// An agent that is gone.
    pub fn remove(&mut self, id: &str) {
        for s in &mut self.by_status {
            if s.remove(id) {
                break;
            }
        }
        self.stats.remove(id);
    }

    /// How many agents have each status, in [`Status::ALL`]'s order.
    pub fn counts(&self) -> Vec<(Status, usize)> {
        Status::ALL
            .iter()
            .map(|s| (*s, self.by_status[*s as usize].len()))
            .collect()
    }

    /// The agents with this status, in id order.
    pub fn with_status(&self, s: Status) -> impl Iterator<Item = &str> {
        self.by_status[s as usize].iter().map(String::as_str)
    }

    /// The agents that have a stats query, in id order.
    pub fn with_stats(&self) -> impl Iterator<Item = &str> {
        self.stats.iter().map(String::as_str)
    }

    /// The agents `filter` asks for, in id order, after the one named
    /// `after`, at most `limit`: those of one status are found without a
    /// look at any other agent.
    pub fn select<'a, A>(
        &'a self,
        agents: &'a BTreeMap<String, Box<A>>,
        filter: &'a Filter,
        after: Option<&'a str>,
        limit: usize,
    ) -> impl Iterator<Item = &'a A> + 'a {
        // Without a filter, straight from the agents (no lookups).
        let plain = (filter.status.is_none() && filter.q.is_none()).then(|| {
            let from = after.map_or(Unbounded, |a| Excluded(a.to_string()));
            agents.range::<String, _>((from, Unbounded)).map(|(_, a)| &**a)
        });
        let filtered = plain.is_none().then(|| {
            filter
                .ids(self, agents)
                .filter(move |id| after.is_none_or(|a| *id > a))
                .filter_map(|id| agents.get(id).map(|a| &**a))
        });
        plain
            .into_iter()
            .flatten()
            .chain(filtered.into_iter().flatten())
            .take(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Agents = BTreeMap<String, Box<&'static str>>;

    fn agents(ids: &[&'static str]) -> Agents {
        ids.iter().map(|i| (i.to_string(), Box::new(*i))).collect()
    }

    fn picked(index: &Index, all: &Agents, f: &Filter, after: Option<&str>) -> Vec<&'static str> {
        index.select(all, f, after, usize::MAX).copied().collect()
    }

    #[test]
    fn a_status_lists_only_its_agents_and_follows_transitions() {
        let all = agents(&["a", "b", "c", "d"]);
        let mut index = Index::default();
        for id in ["a", "b", "c", "d"] {
            index.insert(id, Status::Stopped, id == "c");
        }
        index.moved("b", Status::Stopped, Status::Starting);
        index.moved("b", Status::Starting, Status::Running);
        index.moved("d", Status::Stopped, Status::Starting);
        let running = Filter {
            status: Some(Status::Running),
            q: None,
        };
        assert_eq!(picked(&index, &all, &running, None), ["b"]);
        let stopped = Filter {
            status: Some(Status::Stopped),
            q: None,
        };
        assert_eq!(picked(&index, &all, &stopped, None), ["a", "c"]);
        assert_eq!(picked(&index, &all, &stopped, Some("a")), ["c"]);
        assert!(index.with_status(Status::Failed).next().is_none());
        assert_eq!(index.with_stats().collect::<Vec<_>>(), ["c"]);
        index.remove("c");
        assert_eq!(picked(&index, &all, &stopped, None), ["a"]);
        assert!(index.with_stats().next().is_none());
        // Added again with its config changed: one place only.
        index.insert("b", Status::Running, true);
        index.insert("b", Status::Running, false);
        assert_eq!(picked(&index, &all, &running, None), ["b"]);
        assert!(index.with_stats().next().is_none());
    }

    #[test]
    fn no_filter_pages_through_every_agent_and_q_matches_part_of_the_id() {
        let all = agents(&["bot-1", "bot-2", "web", "worker"]);
        let mut index = Index::default();
        for id in all.keys() {
            index.insert(id, Status::Stopped, false);
        }
        let every = Filter::default();
        assert_eq!(
            picked(&index, &all, &every, None),
            ["bot-1", "bot-2", "web", "worker"]
        );
        assert_eq!(
            index
                .select(&all, &every, Some("bot-2"), 1)
                .copied()
                .collect::<Vec<_>>(),
            ["web"]
        );
        let q = Filter {
            status: None,
            q: Some("bo".into()),
        };
        assert_eq!(picked(&index, &all, &q, None), ["bot-1", "bot-2"]);
        let both = Filter {
            status: Some(Status::Stopped),
            q: Some("w".into()),
        };
        assert_eq!(picked(&index, &all, &both, None), ["web", "worker"]);
    }
}
