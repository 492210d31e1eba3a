//! Reads an agent's output (stdout and stderr share one pipe) for as long
//! as it is open and hands whole lines to its [`LogHub`]. The pipe is always
//! being read, so an agent never blocks on a full pipe because of the
//! daemon.

use super::LogHub;
use super::lines;
use super::writer;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

/// Buffers start small (most agents are quiet: a hundred idle agents should
/// not cost a megabyte) and grow while the pipe keeps filling them.
const START_BUF: usize = 512;
const MAX_BUF: usize = 256 * 1024;

/// Ends the capture when dropped: what is in the pipe then is still read,
/// then the pipe is closed even if a process that escaped the agent holds
/// its other end.
pub struct Capture {
    finish: Option<oneshot::Sender<HandBack>>,
}

/// Where a capture handed over gives its pipe back.
type HandBack = oneshot::Sender<Handed>;

/// A capture stopped to be handed to the next image of the daemon: the
/// pipe, still open, and the start of a line not ended yet.
pub struct Handed {
    pub output: OwnedFd,
    pub partial: Vec<u8>,
}

impl Capture {
    /// Stops reading (every whole line read so far goes to the log) and
    /// gives back the pipe with what was read of the next line; `None`
    /// when the capture had ended already. What the agent writes from now
    /// on waits in the pipe.
    pub async fn hand_over(mut self) -> Option<Handed> {
        let (tx, rx) = oneshot::channel();
        self.finish.take()?.send(tx).ok()?;
        rx.await.ok()
    }
}

/// Starts capturing `output` into `hub`.
pub fn start(hub: Arc<LogHub>, output: OwnedFd) -> std::io::Result<Capture> {
    resume(hub, output, Vec::new())
}

/// Starts capturing `output` into `hub`, after `partial` (the start of a
/// line an earlier image of the daemon read).
pub fn resume(hub: Arc<LogHub>, output: OwnedFd, partial: Vec<u8>) -> std::io::Result<Capture> {
    let reader = pipe::Receiver::from_owned_fd(output)?;
    let (finish, finished) = oneshot::channel();
    tokio::spawn(capture(hub, reader, finished, partial));
    Ok(Capture { finish: Some(finish) })
}

async fn capture(
    hub: Arc<LogHub>,
    reader: pipe::Receiver,
    mut finish: oneshot::Receiver<HandBack>,
    mut pending: Vec<u8>,
) {
    let mut written = Vec::new();
    // Whether to wait for a writer that is behind (no longer once a wait
    // ran out, until it caught up).
    let mut patient = true;
    loop {
        tokio::select! {
            // The end comes first: a pipe that never runs dry (a process
            // that escaped the agent floods it) must not keep a stopped
            // agent's capture alive.
            biased;
            end = &mut finish => {
                if let Ok(back) = end {
                    // Handed over: the whole lines are logged, the rest
                    // of the pipe is the next image's to read.
                    flush(&hub, &mut pending, false, &mut written);
                    match reader.into_nonblocking_fd() {
                        Ok(output) => {
                            let _ = back.send(Handed { output, partial: pending });
                        }
                        Err(e) => tracing::error!(agent = hub.id(), "cannot hand the agent's output over: {e}"),
                    }
                    return;
                }
                drain(&hub, &reader, &mut pending, &mut written);
                break;
            }
            r = reader.readable() => {
                if let Err(e) = r {
                    tracing::warn!(agent = hub.id(), "reading agent output failed: {e}");
                    break;
                }
                // Only an agent that writes gets a buffer.
                grow(&mut pending);
                match read_some(&reader, &mut pending) {
                    Some(0) => break,
                    Some(n) => {
                        flush(&hub, &mut pending, false, &mut written);
                        let backlog = hub.backlog();
                        if backlog <= writer::PAUSE / 2 {
                            patient = true;
                        } else if backlog > writer::PAUSE && patient {
                            patient = writer::drained(&hub).await;
                        }
                        // Give back a big buffer once the flood that grew it is over.
                        let cap = pending.capacity();
                        if cap > 4 * START_BUF && n < cap / 8 && pending.len() < START_BUF {
                            pending.shrink_to(START_BUF);
                        }
                    }
                    None => {}
                }
                // A pipe that never runs dry keeps `readable` ready, and
                // that readiness takes nothing from the task's budget: give
                // the worker (the API, the other agents, the end above) its
                // turn once the budget is spent.
                tokio::task::consume_budget().await;
            }
        }
    }
    flush(&hub, &mut pending, true, &mut written);
    drop(reader);
    hub.release();
}

/// Reads what is in the pipe as the capture ends (it was written before
/// the agent stopped), at most what the pipe can hold: whatever a process
/// that escaped the agent writes after that is not waited for.
fn drain(hub: &Arc<LogHub>, reader: &pipe::Receiver, pending: &mut Vec<u8>, written: &mut Vec<u8>) {
    let mut left = pipe_size(reader);
    // Straight from the pipe: tokio's try_read would skip a read it has
    // no readiness event for yet.
    let mut buf = [0u8; 16 * 1024];
    while left > 0 {
        let want = buf.len().min(left);
        match nix::unistd::read(reader, &mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                left -= n;
                pending.extend_from_slice(&buf[..n]);
                flush(hub, pending, false, written);
            }
        }
    }
}

/// What the pipe holds at most (64 KiB unless changed; 1 MiB when unknown,
/// Linux's largest for an unprivileged process).
fn pipe_size(reader: &pipe::Receiver) -> usize {
    nix::fcntl::fcntl(reader, nix::fcntl::FcntlArg::F_GETPIPE_SZ)
        .ok()
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(1 << 20)
}

fn grow(pending: &mut Vec<u8>) {
    let spare = pending.capacity() - pending.len();
    if spare < 1024 {
        let grow = pending.capacity().clamp(1024, MAX_BUF);
        pending.reserve(grow);
    }
}

/// One non-blocking read into the spare capacity: `Some(0)` at the end,
/// `None` when nothing is there now.
fn read_some(reader: &pipe::Receiver, pending: &mut Vec<u8>) -> Option<usize> {
    match reader.try_read_buf(pending) {
        Ok(n) => Some(n),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) =>
        {
            None
        }
        Err(e) => {
            tracing::warn!("reading agent output failed: {e}");
            Some(0)
        }
    }
}

fn flush(hub: &Arc<LogHub>, pending: &mut Vec<u8>, eof: bool, written: &mut Vec<u8>) {
    if pending.is_empty() {
        return;
    }
    let prefix = hub
        .policy()
        .timestamps
        .then(|| format!("{} ", crate::wire::rfc3339(std::time::SystemTime::now())));
    let (used, n) = lines::normalize(pending, eof, prefix.as_deref(), written);
    pending.drain(..used);
    if n > 0 {
        // The lines go to the log writer thread as they are.
        hub.write(std::mem::take(written), n);
    }
    written.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogPolicy;
    use std::time::{Duration, Instant};

    /// A process that escaped its agent keeps the pipe full: once the
    /// capture is told to end, it closes the pipe anyway (the writer gets
    /// EPIPE) and the lines written before the end are kept.
    #[tokio::test]
    async fn the_end_wins_over_a_pipe_that_never_runs_dry() {
        let dir = tempfile::tempdir().unwrap();
        let policy = LogPolicy {
            // Small files and a stamp on each line: a slow reader.
            max_size: 64 << 10,
            keep: 1,
            timestamps: true,
        };
        let hub = LogHub::open(dir.path(), "a", 0, policy, None, Default::default());
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        // A big pipe that the reader cannot empty in one read.
        let _ = nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETPIPE_SZ(1 << 20));
        let capture = start(hub.clone(), read).unwrap();
        // Several writers with big writes stay ahead of the reader: the
        // pipe is never empty when it is read.
        let write = Arc::new(std::fs::File::from(write));
        let flooders: Vec<_> = (0..8)
            .map(|_| {
                let out = write.clone();
                std::thread::spawn(move || {
                    let chunk = [b"x".repeat(1023), b"\n".to_vec()].concat().repeat(64);
                    let deadline = Instant::now() + Duration::from_secs(20);
                    while Instant::now() < deadline {
                        if let Err(e) = std::io::Write::write_all(&mut &*out, &chunk) {
                            return Some(e.kind());
                        }
                    }
                    None
                })
            })
            .collect();
        drop(write);
        // The flood is being read.
        let deadline = Instant::now() + Duration::from_secs(10);
        while hub.end() < 256 << 10 {
            assert!(Instant::now() < deadline, "nothing read");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // What was taken: written, or queued for the writer.
        let at_end = hub.end() + hub.backlog() as u64;
        drop(capture);
        let ended = tokio::task::spawn_blocking(move || {
            flooders
                .into_iter()
                .map(|f| f.join().unwrap())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        assert!(
            tokio::task::spawn_blocking(|| crate::logs::flush(Duration::from_secs(10)))
                .await
                .unwrap()
        );
        assert!(
            ended.iter().all(|e| *e == Some(std::io::ErrorKind::BrokenPipe)),
            "the capture never let go of the pipe: {ended:?}"
        );
        // After the end, only what the pipe held then (1 MiB) and a line
        // being read were taken, not what the flood went on writing.
        let after = hub.end() - at_end;
        assert!(
            after <= (1 << 20) + MAX_BUF as u64,
            "{after} bytes read after the end"
        );
    }
}
