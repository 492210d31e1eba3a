//! The one thread that touches the log files for writing: every agent's
//! appends, rotations (renames, unlinks), opens and closes go through it in
//! the order the captures gave them, so that a slow or stalled disk never
//! holds an async worker (the API, the supervisor, the other captures).
//!
//! What waits for it is bounded in bytes, per log and all logs together.
//! A capture more than [`PAUSE`] ahead of the writer waits for it (as it
//! did when it wrote itself: a flood goes at the disk's pace, losing
//! nothing), but not for long: once a wait ran out (a stalled disk) it
//! reads the pipe on, and lines that do not fit are dropped and counted,
//! as for a write that failed (an agent never blocks on a stalled daemon).

use super::LogHub;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// Bytes of log lines waiting for the writer, all agents together, beyond
/// which new lines are dropped and counted.
pub const QUEUE_MAX: usize = 16 << 20;

/// Bytes one log may have waiting before its capture waits for the writer
/// (a capture reads at most 256 KiB at a time).
pub const PAUSE: usize = 1 << 20;

/// Bytes one log may have waiting at most: beyond, its lines are dropped
/// and counted.
pub const LOG_MAX: usize = 4 << 20;

/// How long a capture waits for the writer before it reads on.
pub const PATIENCE: Duration = Duration::from_secs(1);

/// What a waiting chunk costs beyond its bytes (the job, the hub's count).
const JOB_COST: usize = 64;

enum Job {
    Append {
        hub: Arc<LogHub>,
        data: Vec<u8>,
        lines: u64,
    },
    /// The agent's output ended: close the file until it writes again.
    Release(Arc<LogHub>),
    /// Everything queued before this is done.
    Flush(mpsc::SyncSender<()>),
}

/// Bytes waiting, counted as the captures queue them and the writer takes them.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// The way to the writer thread, started with the first log; `None` when
/// the thread could not be started (the jobs are then done in place).
static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();

fn queue() -> Option<&'static mpsc::Sender<Job>> {
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            match std::thread::Builder::new()
                .name("agentsd-logs".into())
                .spawn(move || run(rx))
            {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::error!("cannot start the log writer thread ({e}); logs are written in place");
                    None
                }
            }
        })
        .as_ref()
}

fn run(jobs: mpsc::Receiver<Job>) {
    for job in jobs {
        work(job);
    }
}

fn work(job: Job) {
    match job {
        Job::Append { hub, data, lines } => {
            hub.append(&data, lines);
            let cost = data.len() + JOB_COST;
            WAITING.fetch_sub(cost, Ordering::Relaxed);
            let was = hub.backlog.fetch_sub(cost, Ordering::SeqCst);
            if was > PAUSE / 2 && was - cost <= PAUSE / 2 {
                hub.drained.notify_waiters();
            }
        }
        Job::Release(hub) => hub.release_now(),
        Job::Flush(done) => {
            let _ = done.send(());
        }
    }
}

fn send(job: Job) {
    match queue() {
        Some(tx) => {
            if let Err(mpsc::SendError(job)) = tx.send(job) {
                // The thread ended (it only does if it panicked): in place.
                work(job);
            }
        }
        None => work(job),
    }
}

pub(super) fn release(hub: Arc<LogHub>) {
    send(Job::Release(hub));
}

/// Queues `data` (`lines` whole lines) for `hub`; when the writer is that
/// far behind, the lines are dropped and counted instead.
pub(super) fn append(hub: &Arc<LogHub>, data: Vec<u8>, lines: u64) {
    let cost = data.len() + JOB_COST;
    let full = hub.backlog.load(Ordering::SeqCst) + cost > LOG_MAX
        || if WAITING.fetch_add(cost, Ordering::Relaxed) + cost > QUEUE_MAX {
            WAITING.fetch_sub(cost, Ordering::Relaxed);
            true
        } else {
            false
        };
    if full {
        hub.drop_lines(lines);
        report_full(hub.id());
        return;
    }
    hub.backlog.fetch_add(cost, Ordering::SeqCst);
    send(Job::Append {
        hub: hub.clone(),
        data,
        lines,
    });
}

/// Waits until `hub`'s backlog is small again, at most [`PATIENCE`]; false
/// when the writer did not get there in time.
pub(super) async fn drained(hub: &LogHub) -> bool {
    let notified = hub.drained.notified();
    tokio::pin!(notified);
    // Registered before the backlog is looked at: a drain in between is not missed.
    notified.as_mut().enable();
    if hub.backlog.load(Ordering::SeqCst) <= PAUSE / 2 {
        return true;
    }
    tokio::time::timeout(PATIENCE, notified).await.is_ok()
}

/// Says at most once a second that the writer is behind.
fn report_full(id: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = START.get_or_init(Instant::now).elapsed().as_secs() + 1;
    if LAST.swap(now, Ordering::Relaxed) != now {
        tracing::error!(
            agent = id,
            "the log writer is too far behind (a stalled disk?); lines are being dropped and counted"
        );
    }
}

/// Waits (at most `within`) until every line queued so far is written;
/// false when the writer did not get there in time.
pub fn flush(within: Duration) -> bool {
    let Some(tx) = QUEUE.get().and_then(Option::as_ref) else {
        return true;
    };
    let (done, wait) = mpsc::sync_channel(1);
    if tx.send(Job::Flush(done)).is_err() {
        return true;
    }
    wait.recv_timeout(within).is_ok()
}
