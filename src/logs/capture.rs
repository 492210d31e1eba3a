//! Reads an agent's stdout and stderr for as long as they are open and hands
//! whole lines to its [`LogHub`]. Both pipes are always being read, so an
//! agent never blocks on a full pipe because of the daemon.

use super::LogHub;
use super::lines;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Buffers start small (most agents are quiet: a hundred idle agents should
/// not cost a megabyte) and grow while a pipe keeps filling them.
const START_BUF: usize = 512;
const MAX_BUF: usize = 256 * 1024;

struct Stream<R> {
    reader: R,
    pending: Vec<u8>,
    open: bool,
}

impl<R: AsyncRead + Unpin> Stream<R> {
    fn new(reader: R) -> Self {
        Stream {
            reader,
            pending: Vec::new(),
            open: true,
        }
    }

    async fn read(&mut self) -> std::io::Result<usize> {
        let spare = self.pending.capacity() - self.pending.len();
        if spare < 1024 {
            let grow = self.pending.capacity().clamp(1024, MAX_BUF);
            self.pending.reserve(grow);
        }
        self.reader.read_buf(&mut self.pending).await
    }
}

/// Captures until both pipes are closed (the agent and everything it started
/// have exited or closed them).
pub async fn capture<O, E>(hub: Arc<LogHub>, stdout: O, stderr: E)
where
    O: AsyncRead + Unpin,
    E: AsyncRead + Unpin,
{
    let mut out = Stream::new(stdout);
    let mut err = Stream::new(stderr);
    let mut written = Vec::new();
    while out.open || err.open {
        tokio::select! {
            r = out.read(), if out.open => out.consume(&hub, r, &mut written),
            r = err.read(), if err.open => err.consume(&hub, r, &mut written),
        }
    }
}

impl<R> Stream<R> {
    /// Handles the outcome of one read: writes the complete lines, keeps the
    /// rest, and notes the end of the stream.
    fn consume(&mut self, hub: &LogHub, res: std::io::Result<usize>, written: &mut Vec<u8>) {
        let (eof, n) = match res {
            Ok(0) => (true, 0),
            Ok(n) => (false, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return,
            Err(e) => {
                tracing::warn!(agent = hub.id(), "reading agent output failed: {e}");
                (true, 0)
            }
        };
        if eof {
            self.open = false;
        }
        flush(hub, &mut self.pending, eof, written);
        // Give back a big buffer once the flood that grew it is over.
        let cap = self.pending.capacity();
        if eof || (cap > 4 * START_BUF && n < cap / 8 && self.pending.len() < START_BUF) {
            self.pending.shrink_to(START_BUF);
        }
    }
}

fn flush(hub: &LogHub, pending: &mut Vec<u8>, eof: bool, written: &mut Vec<u8>) {
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
