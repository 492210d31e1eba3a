//! Reads an agent's output (stdout and stderr share one pipe) for as long
//! as it is open and hands whole lines to its [`LogHub`]. The pipe is always
//! being read, so an agent never blocks on a full pipe because of the
//! daemon.

use super::LogHub;
use super::lines;
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
    _finish: oneshot::Sender<()>,
}

/// Starts capturing `output` into `hub`.
pub fn start(hub: Arc<LogHub>, output: OwnedFd) -> std::io::Result<Capture> {
    let reader = pipe::Receiver::from_owned_fd(output)?;
    let (finish, finished) = oneshot::channel();
    tokio::spawn(capture(hub, reader, finished));
    Ok(Capture { _finish: finish })
}

async fn capture(hub: Arc<LogHub>, reader: pipe::Receiver, mut finish: oneshot::Receiver<()>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut written = Vec::new();
    loop {
        tokio::select! {
            biased;
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
                        // Give back a big buffer once the flood that grew it is over.
                        let cap = pending.capacity();
                        if cap > 4 * START_BUF && n < cap / 8 && pending.len() < START_BUF {
                            pending.shrink_to(START_BUF);
                        }
                    }
                    None => {}
                }
            }
            _ = &mut finish => {
                // Whatever is in the pipe now was written before the agent
                // stopped: read it, then stop reading.
                // Straight from the pipe: tokio's try_read would skip a
                // read it has no readiness event for yet.
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = nix::unistd::read(&reader, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    flush(&hub, &mut pending, false, &mut written);
                }
                break;
            }
        }
    }
    flush(&hub, &mut pending, true, &mut written);
    drop(reader);
    hub.release();
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

fn flush(hub: &LogHub, pending: &mut Vec<u8>, eof: bool, written: &mut Vec<u8>) {
    if pending.is_empty() {
        return;
    }
    let prefix = hub
        .policy()
        .timestamps
        .then(|| format!("{} ", crate::wire::rfc3339(std::time::SystemTime::now())));
    let (used, n) = lines::normalize(pending, eof, prefix.as_deref(), written);
    if n > 0 {
        hub.append(written, n);
    }
    pending.drain(..used);
    written.clear();
    if written.capacity() > MAX_BUF * 2 {
        written.shrink_to(START_BUF);
    }
}
