//! Summaries written as JSON by hand: the same bytes as serde_json writes
//! for [`AgentSummary`] (a test compares), at a fraction of the cost. A
//! list is mostly keys and short strings, and serde_json writes each key
//! as a string to escape, a piece at a time (built for size, that costs
//! more than everything else a list does: half the daemon's time on a
//! `GET /agents` of 1,000 agents). Here a key and its punctuation are one
//! constant, and a string with nothing to escape is copied whole.

use crate::wire::{AgentSummary, LastExit, Resources};

/// About what one summary takes (the buffer of a list is sized by it).
pub const SUMMARY_SIZE: usize = 320;

/// Appends `s` as a JSON string.
fn string(out: &mut Vec<u8>, s: &str) {
    let plain = s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
    if plain {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends an integer.
fn int(out: &mut Vec<u8>, n: impl itoa_like::Int) {
    n.write(out);
}

fn opt_int(out: &mut Vec<u8>, n: Option<impl itoa_like::Int>) {
    match n {
        Some(n) => int(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// Integers written with a stack buffer (no formatter).
mod itoa_like {
    pub trait Int: Copy {
        fn write(self, out: &mut Vec<u8>);
    }

    fn unsigned(mut n: u64, negative: bool, out: &mut Vec<u8>) {
        let mut buf = [0u8; 21];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if negative {
            i -= 1;
            buf[i] = b'-';
        }
        out.extend_from_slice(&buf[i..]);
    }

    impl Int for u64 {
        fn write(self, out: &mut Vec<u8>) {
            unsigned(self, false, out);
        }
    }
    impl Int for u32 {
        fn write(self, out: &mut Vec<u8>) {
            unsigned(u64::from(self), false, out);
        }
    }
    impl Int for i64 {
        fn write(self, out: &mut Vec<u8>) {
            unsigned(self.unsigned_abs(), self < 0, out);
        }
    }
    impl Int for i32 {
        fn write(self, out: &mut Vec<u8>) {
            i64::from(self).write(out);
        }
    }
}

fn last_exit(out: &mut Vec<u8>, e: &LastExit) {
    out.extend_from_slice(b"{\"code\":");
    opt_int(out, e.code);
    out.extend_from_slice(b",\"signal\":");
    opt_string(out, e.signal.as_deref());
    out.extend_from_slice(b",\"at\":");
    string(out, &e.at);
    out.push(b'}');
}

fn resources(out: &mut Vec<u8>, r: &Resources) {
    out.extend_from_slice(b"{\"cpu_pct\":");
    // A float as serde_json writes it (shortest form; null if not finite).
    let _ = serde_json::to_writer(&mut *out, &r.cpu_pct);
    out.extend_from_slice(b",\"rss_bytes\":");
    int(out, r.rss_bytes);
    out.extend_from_slice(b",\"processes\":");
    int(out, r.processes);
    out.push(b'}');
}

/// Appends one summary, as `serde_json::to_writer` would.
pub fn summary(out: &mut Vec<u8>, s: &AgentSummary) {
    out.extend_from_slice(b"{\"id\":");
    string(out, &s.id);
    out.extend_from_slice(b",\"status\":\"");
    out.extend_from_slice(s.status.as_str().as_bytes());
    out.extend_from_slice(b"\",\"desired\":\"");
    out.extend_from_slice(s.desired.as_str().as_bytes());
    out.extend_from_slice(b"\",\"pid\":");
    opt_int(out, s.pid);
    out.extend_from_slice(b",\"started_at\":");
    opt_string(out, s.started_at.as_deref());
    out.extend_from_slice(b",\"uptime_s\":");
    opt_int(out, s.uptime_s);
    out.extend_from_slice(b",\"restarts\":");
    int(out, s.restarts);
    out.extend_from_slice(b",\"last_exit\":");
    match &s.last_exit {
        Some(e) => last_exit(out, e),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"msg_count_24h\":");
    opt_int(out, s.msg_count_24h);
    out.extend_from_slice(b",\"command\":[");
    for (i, c) in s.command.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        string(out, c);
    }
    out.extend_from_slice(b"],\"reason\":");
    opt_string(out, s.reason.as_deref());
    out.extend_from_slice(b",\"dropped_log_lines\":");
    int(out, s.dropped_log_lines);
    out.extend_from_slice(b",\"resources\":");
    match &s.resources {
        Some(r) => resources(out, r),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"health\":");
    opt_string(out, s.health.map(|h| h.as_str()));
    out.extend_from_slice(b",\"health_detail\":");
    opt_string(out, s.health_detail.as_deref());
    out.push(b'}');
}

/// A JSON array of summaries.
pub fn summaries<'a>(list: impl ExactSizeIterator<Item = &'a AgentSummary>) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + list.len() * SUMMARY_SIZE);
    out.push(b'[');
    for (i, s) in list.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        summary(&mut out, s);
    }
    out.push(b']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Desired, Status};

    fn cases() -> Vec<AgentSummary> {
        let plain = AgentSummary {
            id: "bot-1".into(),
            status: Status::Running,
            desired: Desired::Running,
            pid: Some(4_294_967_295),
            started_at: Some("2026-12-03T20:22:36.093Z".into()),
            uptime_s: Some(u64::MAX),
            restarts: 7,
            last_exit: Some(LastExit {
                code: Some(-1),
                signal: None,
                at: "2026-12-03T20:00:00.000Z".into(),
            }),
            msg_count_24h: Some(i64::MIN),
            command: vec!["sleep".into(), "100000".into()],
            reason: None,
            dropped_log_lines: 0,
            resources: Some(Resources {
                cpu_pct: 12.345678901234,
                rss_bytes: 1 << 40,
                processes: 3,
            }),
            health: Some(crate::wire::HealthState::Healthy),
            health_detail: Some("HTTP 503 \"x\"".into()),
        };
        let mut odd = plain.clone();
        odd.status = Status::Failed;
        odd.desired = Desired::Stopped;
        odd.pid = None;
        odd.started_at = None;
        odd.uptime_s = None;
        odd.last_exit = Some(LastExit {
            code: None,
            signal: Some("SIGKILL".into()),
            at: "t".into(),
        });
        odd.msg_count_24h = None;
        odd.command = vec![
            "sh".into(),
            "-c".into(),
            "echo \"hi\" \\ \n\t\u{1} é 日本 </script>".into(),
            String::new(),
        ];
        odd.reason = Some("cannot exec: \"x\"\r\n".into());
        odd.resources = Some(Resources {
            cpu_pct: f64::NAN,
            rss_bytes: 0,
            processes: 0,
        });
        let mut none = odd.clone();
        none.command = vec![];
        none.last_exit = None;
        none.resources = None;
        none.pid = Some(0);
        none.health = None;
        none.health_detail = None;
        let mut zero = plain.clone();
        zero.resources = Some(Resources {
            cpu_pct: 0.0,
            rss_bytes: 1,
            processes: 1,
        });
        zero.msg_count_24h = Some(0);
        vec![plain, odd, none, zero]
    }

    #[test]
    fn a_summary_is_the_json_serde_writes() {
        for s in cases() {
            let mut mine = Vec::new();
            summary(&mut mine, &s);
            let theirs = serde_json::to_vec(&s).unwrap();
            assert_eq!(String::from_utf8_lossy(&mine), String::from_utf8_lossy(&theirs));
        }
        let all = cases();
        assert_eq!(summaries(all.iter()), serde_json::to_vec(&all).unwrap());
        assert_eq!(summaries([].iter()), b"[]");
    }
}
