//! The daemon's open files: a reserve kept for the operator.
//!
//! Agents cost the daemon descriptors (an output pipe, a log file). Were
//! agents allowed to take the last ones, the daemon could no longer accept
//! a connection, read its config on a reload or open its database: the
//! operator would be locked out exactly when they need to step in. So a
//! spawn is refused (a transient error: the agent waits in backoff) while
//! fewer than [`reserve`] descriptors are free, and the listener keeps one
//! spare descriptor that it gives up to accept a connection when the limit
//! is reached anyway (the classic EMFILE trick).

use std::io;
use std::time::{Duration, Instant};

/// Descriptors kept free for the API's connections and event streams, a
/// config reload and the state database: an eighth of the limit, between
/// 16 and 128.
pub fn reserve(limit: u64) -> u64 {
    (limit / 8).clamp(16, 128)
}

/// Open files each running agent costs the daemon: its output pipe and its
/// log file (and the writing end of its stdin, with `stdin = "pipe"`).
pub const PER_AGENT: u64 = 2;

/// Open files the daemon holds without agents when /proc cannot say (or
/// before it runs): its database, listener, runtime (24), then the config
/// watcher and the listener's spare (4).
pub const OWN_WITHOUT_AGENTS: u64 = 28;

/// Open files a daemon with `agents` agents (`stdins` of them with a stdin
/// pipe) holds, `own` of them its own: what `serve` warns about and
/// `doctor` checks, before [`reserve`] is added.
pub fn needed(agents: u64, stdins: u64, own: u64) -> u64 {
    agents * PER_AGENT + stdins + own
}

/// The open-file soft limit in force now, if it can be read.
pub fn limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// How many descriptors the daemon holds now. Reading the list takes a
/// descriptor itself: at the limit this fails with EMFILE.
pub fn in_use() -> io::Result<u64> {
    let mut n: u64 = 0;
    for entry in std::fs::read_dir("/proc/self/fd")? {
        entry?;
        n += 1;
    }
    // The directory's own descriptor, open while it was listed.
    Ok(n.saturating_sub(1))
}

/// Whether an agent may be started: `Err` with the reason when that would
/// eat into the reserve.
pub fn room_for_an_agent() -> Result<(), String> {
    let Some(limit) = limit() else { return Ok(()) };
    // Listing /proc/self/fd costs as much as the daemon holds: far from the
    // limit, a count taken a moment ago (plus what spawns since can have
    // opened) answers.
    static LAST: std::sync::Mutex<Option<Counted>> = std::sync::Mutex::new(None);
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    if let Some(c) = last.as_mut()
        && c.still_far(now, limit)
    {
        c.spawns += 1;
        return Ok(());
    }
    let used = match in_use() {
        Ok(n) => n,
        Err(e) if is_out_of_files(&e) => limit,
        // No /proc: nothing to go by; the spawn itself says when it fails.
        Err(_) => return Ok(()),
    };
    *last = Some(Counted {
        used,
        at: now,
        spawns: 1,
    });
    check_room(used, limit)
}

/// Descriptors a spawn can add at most (the output pipe, the log file, and
/// room for one more).
const PER_SPAWN: u64 = 4;
/// How long a count of descriptors is trusted (connections open files too).
const COUNT_FRESH: Duration = Duration::from_secs(1);

struct Counted {
    used: u64,
    at: Instant,
    spawns: u64,
}

impl Counted {
    /// Whether even one more spawn after those since the count leaves the
    /// reserve whole.
    fn still_far(&self, now: Instant, limit: u64) -> bool {
        now.duration_since(self.at) < COUNT_FRESH
            && self.used + PER_SPAWN * (self.spawns + 1) + reserve(limit) < limit
    }
}

fn check_room(used: u64, limit: u64) -> Result<(), String> {
    let reserve = reserve(limit);
    if used + reserve < limit {
        Ok(())
    } else {
        Err(format!(
            "Too many open files: {used} of {limit} in use, {reserve} kept for the API"
        ))
    }
}

pub fn is_out_of_files(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(c) if c == nix::errno::Errno::EMFILE as i32 || c == nix::errno::Errno::ENFILE as i32
    )
}

/// Says a repeated condition at most once per `every`, with how many times
/// it happened since it was last said.
pub struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    count: u64,
}

impl RateLimited {
    pub fn new(every: Duration) -> RateLimited {
        RateLimited {
            every,
            last: None,
            count: 0,
        }
    }

    /// Counts one occurrence at `now`; `Some(n)` when it is time to say
    /// that it happened `n` times.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        match self.last {
            Some(last) if now.duration_since(last) < self.every => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.count))
            }
        }
    }
}

/// One descriptor held in reserve (`/dev/null`), given up when the limit is
/// reached so that one more file can be opened, and taken again after.
pub struct Spare(Option<std::fs::File>);

impl Spare {
    pub fn new() -> Spare {
        let mut s = Spare(None);
        s.take();
        s
    }

    /// Gives the descriptor up; `false` if none was held.
    pub fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    /// Takes a descriptor again if none is held (it may fail while the
    /// daemon is at its limit: then it is tried again next time).
    pub fn take(&mut self) {
        if self.0.is_none() {
            self.0 = std::fs::File::open("/dev/null").ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_grows_with_the_limit_within_bounds() {
        assert_eq!(reserve(64), 16);
        assert_eq!(reserve(256), 32);
        assert_eq!(reserve(1024), 128);
        assert_eq!(reserve(1 << 20), 128);
    }

    #[test]
    fn an_agent_is_refused_before_the_reserve() {
        assert!(check_room(100, 256).is_ok());
        assert!(check_room(223, 256).is_ok());
        let why = check_room(224, 256).unwrap_err();
        assert_eq!(why, "Too many open files: 224 of 256 in use, 32 kept for the API");
        assert!(check_room(256, 256).is_err());
    }

    #[test]
    fn a_recent_count_answers_only_far_from_the_limit() {
        let t = Instant::now();
        let c = Counted {
            used: 100,
            at: t,
            spawns: 10,
        };
        assert!(c.still_far(t, 1 << 20));
        // 100 + 4 * 11 + 32 kept = 176 < 256; 100 + 44 + 20 kept = 164 >= 160.
        assert!(c.still_far(t, 256));
        assert!(!c.still_far(t, 160));
        assert!(!c.still_far(t + COUNT_FRESH, 1 << 20));
    }

    #[test]
    fn descriptors_in_use_are_counted() {
        let held: Vec<_> = (0..50)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        // Other tests open and close files meanwhile: only a lower bound.
        assert!(in_use().unwrap() >= 50);
        drop(held);
    }

    #[test]
    fn a_repeated_condition_is_said_once_per_period_with_a_count() {
        let mut r = RateLimited::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.note(t0), Some(1));
        for i in 1..=85 {
            assert_eq!(r.note(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(r.note(t0 + Duration::from_secs(10)), Some(86));
        assert_eq!(r.note(t0 + Duration::from_secs(11)), None);
        assert_eq!(r.note(t0 + Duration::from_secs(21)), Some(2));
    }

    #[test]
    fn a_spare_descriptor_is_given_up_and_taken_again() {
        let mut s = Spare::new();
        assert!(s.release());
        assert!(!s.release());
        s.take();
        assert!(s.release());
    }

    #[test]
    fn out_of_files_errors_are_told_apart() {
        assert!(is_out_of_files(&io::Error::from_raw_os_error(
            nix::errno::Errno::EMFILE as i32
        )));
        assert!(is_out_of_files(&io::Error::from_raw_os_error(
            nix::errno::Errno::ENFILE as i32
        )));
        assert!(!is_out_of_files(&io::Error::from(io::ErrorKind::ConnectionReset)));
    }
}
