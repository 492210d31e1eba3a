//! Giving memory back to the system. glibc's allocator keeps what it freed
//! (in one arena per thread that ever allocated) for later, so after a burst
//! (thousands of event streams, a round of restarts) the daemon's resident
//! memory would stay at its peak. The daemon limits the arenas at start, and
//! trims the heap once things have been quiet for a moment after an event
//! that freed a lot: never on a timer.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How long things must be quiet before the heap is trimmed: longer than
/// an idle blocking thread lives (2 s), so that what they held is free.
const QUIET: Duration = Duration::from_secs(3);

/// One arena for every thread: a burst handled by many threads cannot
/// leave memory spread over many heaps (the daemon allocates little, so
/// the lock is not contended).
#[allow(unsafe_code)]
pub fn limit_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before the
    // daemon starts its threads.
    unsafe {
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, 1);
    }
}

#[allow(unsafe_code)]
fn trim() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim takes the allocator's own locks; it is safe to
    // call from any thread at any time.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}

/// Where events that free memory are reported.
#[derive(Clone, Default)]
pub struct Trimmer {
    freed: Arc<Notify>,
}

impl Trimmer {
    /// Something sizeable was freed (an event stream ended, an agent
    /// stopped): trim once things are quiet.
    pub fn freed(&self) {
        self.freed.notify_one();
    }

    /// Runs the trimming task (inside the runtime).
    pub fn spawn(&self) {
        let freed = self.freed.clone();
        tokio::spawn(async move {
            loop {
                freed.notified().await;
                // Wait for the burst to end.
                while tokio::time::timeout(QUIET, freed.notified()).await.is_ok() {}
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        });
    }
}
