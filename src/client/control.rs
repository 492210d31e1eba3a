//! How the answer to a start, stop or restart reads: whether the agent got
//! where it was asked to be, and if not, why, in one line.

use super::ClientError;
use super::output::escape_controls;
use crate::wire::{AgentSummary, Desired, Op, Status};

/// Where an agent stands after a start, stop or restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It is where it was asked to be.
    Reached,
    /// It settled somewhere else: the start ended, or a later request
    /// overtook this one.
    Elsewhere,
    /// Still on its way.
    Underway,
}

/// Judges `a` against what `op` asked for. Only a summary says what is
/// desired now, so only a summary can tell a restart between its stop and its
/// start from an agent a later request stopped.
pub fn verdict(op: Op, a: &AgentSummary) -> Verdict {
    match (op, a.status, a.desired) {
        (Op::Start | Op::Restart, Status::Running, _) => Verdict::Reached,
        (Op::Start | Op::Restart, Status::Failed | Status::Exited, _) => Verdict::Elsewhere,
        (Op::Start | Op::Restart, Status::Stopped, Desired::Stopped) => Verdict::Elsewhere,
        (Op::Stop, Status::Stopped | Status::Exited, _) => Verdict::Reached,
        (Op::Stop, Status::Failed, _) => Verdict::Elsewhere,
        (Op::Stop, Status::Starting | Status::Running | Status::Backoff, Desired::Running) => {
            Verdict::Elsewhere
        }
        _ => Verdict::Underway,
    }
}

/// Why an agent is not where `op` wanted it, as one line.
pub fn not_reached(op: Op, a: &AgentSummary) -> ClientError {
    let wanted = if op == Op::Stop { "stopped" } else { "running" };
    let mut why = format!("{} instead of {wanted}", a.status);
    if a.desired.as_str() != wanted {
        why.push_str(&format!(" (a later request asked for {})", a.desired.as_str()));
    }
    if let Some(r) = &a.reason {
        why.push_str(&format!(": {}", escape_controls(r)));
    } else if let Some(e) = &a.last_exit {
        match (&e.code, &e.signal) {
            (Some(c), _) => why.push_str(&format!(": exit code {c}")),
            (None, Some(s)) => why.push_str(&format!(": killed by {}", escape_controls(s))),
            (None, None) => {}
        }
    }
    ClientError::NotReached(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(status: Status, desired: Desired) -> AgentSummary {
        AgentSummary {
            id: "a".into(),
            status,
            desired,
            pid: None,
            started_at: None,
            uptime_s: None,
            restarts: 0,
            last_exit: None,
            msg_count_24h: None,
            command: vec![],
            reason: None,
            dropped_log_lines: 0,
            resources: None,
            health: None,
            health_detail: None,
        }
    }

    #[test]
    fn verdicts() {
        use Desired::{Running as Up, Stopped as Down};
        use Verdict::*;
        let cases = [
            (Op::Start, Status::Running, Up, Reached),
            (Op::Start, Status::Failed, Up, Elsewhere),
            (Op::Start, Status::Exited, Up, Elsewhere),
            (Op::Start, Status::Backoff, Up, Underway),
            (Op::Start, Status::Starting, Up, Underway),
            (Op::Start, Status::Stopped, Down, Elsewhere),
            // A restart between its stop and its start.
            (Op::Restart, Status::Stopped, Up, Underway),
            (Op::Restart, Status::Stopping, Up, Underway),
            (Op::Restart, Status::Running, Up, Reached),
            (Op::Stop, Status::Stopped, Down, Reached),
            (Op::Stop, Status::Exited, Down, Reached),
            (Op::Stop, Status::Stopping, Down, Underway),
            (Op::Stop, Status::Failed, Down, Elsewhere),
            (Op::Stop, Status::Running, Up, Elsewhere),
            (Op::Stop, Status::Starting, Up, Elsewhere),
        ];
        for (op, status, desired, want) in cases {
            assert_eq!(
                verdict(op, &agent(status, desired)),
                want,
                "{op:?} {status} {desired:?}"
            );
        }
    }

    #[test]
    fn why_an_agent_did_not_get_there() {
        let mut a = agent(Status::Exited, Desired::Running);
        a.last_exit = Some(crate::wire::LastExit {
            code: Some(3),
            signal: None,
            at: String::new(),
        });
        assert_eq!(
            not_reached(Op::Start, &a).to_string(),
            "exited instead of running: exit code 3"
        );
        let mut a = agent(Status::Failed, Desired::Running);
        a.reason = Some("cannot spawn \u{1b}[2J".into());
        assert_eq!(
            not_reached(Op::Restart, &a).to_string(),
            "failed instead of running: cannot spawn \\x1b[2J"
        );
        let a = agent(Status::Running, Desired::Running);
        assert_eq!(
            not_reached(Op::Stop, &a).to_string(),
            "running instead of stopped (a later request asked for running)"
        );
    }
}
