//! Where a stream of several agents' logs (`/sse/logs`) stands for each
//! agent: the cursor just past the last line shown. A reconnection sends
//! them all (`after=a:123,b:456`, or, when they do not fit in a request
//! line, a `POST /sse/logs` with them in its body), so every agent resumes
//! exactly where it was, whatever the others did.

use std::collections::BTreeMap;

/// The longest request target a reconnection sends. nginx's default
/// `large_client_header_buffers` (8k) bounds the request line, and HTTP/2
/// servers (hyper: 16 KiB) bound the headers: with the key and the rest,
/// 8,000 bytes pass both.
pub const MAX_TARGET: usize = 8000;

#[derive(Debug, Default)]
pub struct Cursors {
    at: BTreeMap<String, Mark>,
    /// Counts moves, to tell which agents moved last.
    clock: u64,
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    cursor: u64,
    moved: u64,
}

impl Cursors {
    /// `agent`'s lines up to `cursor` have been shown (or were skipped by a gap).
    pub fn set(&mut self, agent: &str, cursor: u64) {
        self.clock += 1;
        let mark = Mark {
            cursor,
            moved: self.clock,
        };
        match self.at.get_mut(agent) {
            Some(m) => *m = mark,
            None => {
                self.at.insert(agent.to_string(), mark);
            }
        }
    }

    /// Every cursor, as the body of `POST /sse/logs`.
    pub fn body(&self) -> String {
        let resume = crate::wire::LogResume {
            after: self.at.iter().map(|(a, m)| (a.clone(), m.cursor)).collect(),
        };
        serde_json::to_string(&resume).unwrap_or_default()
    }

    /// The value of `after=`: `a:123,b:456`, at most `budget` bytes. When
    /// every agent does not fit, those whose lines came last go first (the
    /// quiet ones are the least likely to write while reconnecting); the
    /// second value is how many were left out (they start at their end).
    pub fn after(&self, budget: usize) -> (String, usize) {
        let mut marks: Vec<(&String, &Mark)> = self.at.iter().collect();
        marks.sort_by(|(a, x), (b, y)| y.moved.cmp(&x.moved).then(a.cmp(b)));
        let mut out = String::new();
        let mut left_out = 0;
        for (agent, m) in marks {
            let item = format!("{agent}:{}", m.cursor);
            let sep = usize::from(!out.is_empty());
            if out.len() + sep + item.len() > budget {
                left_out += 1;
                continue;
            }
            if sep == 1 {
                out.push(',');
            }
            out.push_str(&item);
        }
        (out, left_out)
    }
}

/// The agent and cursor of an `/sse/logs` event id: `<agent>:<cursor>`.
pub fn parse_event_id(id: &str) -> Option<(&str, u64)> {
    let (agent, cursor) = id.rsplit_once(':')?;
    let cursor = cursor.parse().ok()?;
    crate::wire::is_agent_id(agent).then_some((agent, cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids() {
        assert_eq!(parse_event_id("bot-1:123"), Some(("bot-1", 123)));
        assert_eq!(parse_event_id("a:0"), Some(("a", 0)));
        assert_eq!(parse_event_id("123"), None);
        assert_eq!(parse_event_id("a:"), None);
        assert_eq!(parse_event_id("a:-1"), None);
        assert_eq!(parse_event_id("A/b:1"), None);
        assert_eq!(parse_event_id(":1"), None);
    }

    #[test]
    fn every_agent_resumes_from_its_own_cursor() {
        let mut c = Cursors::default();
        assert_eq!(c.after(100), (String::new(), 0));
        c.set("b", 10);
        c.set("a", 5);
        c.set("b", 20);
        // Latest move first.
        assert_eq!(c.after(100), ("b:20,a:5".to_string(), 0));
    }

    #[test]
    fn the_body_has_every_cursor() {
        let mut c = Cursors::default();
        c.set("b", 10);
        c.set("a", 5);
        assert_eq!(c.body(), r#"{"after":{"a":5,"b":10}}"#);
    }

    #[test]
    fn what_does_not_fit_leaves_out_the_quiet_agents() {
        let mut c = Cursors::default();
        c.set("quiet", 1);
        c.set("busy", 123456);
        c.set("other", 7);
        // "other:7,busy:123456" is 19 bytes; "quiet:1" does not fit after it.
        assert_eq!(c.after(19), ("other:7,busy:123456".to_string(), 1));
        assert_eq!(c.after(6), (String::new(), 3));
        let (s, out) = c.after(usize::MAX);
        assert_eq!((s.as_str(), out), ("other:7,busy:123456,quiet:1", 0));
    }
}
