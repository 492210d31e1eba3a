//! Following one agent's log from a cursor: whatever is on disk past the
//! cursor, then every new line as the log's end moves. A follower that
//! keeps up takes new lines from the hub's small window of what was just
//! written; any other reads the files (the page cache, for what was just
//! written), so one that falls behind costs only its read buffer, never a
//! backlog in memory.

use super::hub::{Chunk, LogHub};
use super::lines;
use std::sync::Arc;
use tokio::sync::watch;

/// What a follower gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    /// One line, and the cursor just past it (where to resume after it).
    Line { cursor: u64, text: String },
    /// `[from, to)` is gone (rotated away, or cut from outside); the log
    /// goes on at `to`. Consecutive holes come as one.
    Gap { from: u64, to: u64 },
}

pub struct Follower {
    hub: Arc<LogHub>,
    end: watch::Receiver<u64>,
    /// Everything before this has been given (or is in `buf`).
    cursor: u64,
    /// Whole lines read and not given yet, starting at log offset `buf_start`.
    buf: Vec<u8>,
    buf_start: u64,
    pos: usize,
    gap: Option<(u64, u64)>,
}

impl Follower {
    /// Follows `hub` from `cursor` (a line boundary).
    pub fn new(hub: Arc<LogHub>, cursor: u64) -> Follower {
        let end = hub.watch_end();
        Follower {
            hub,
            end,
            cursor,
            buf: Vec::new(),
            buf_start: cursor,
            pos: 0,
            gap: None,
        }
    }

    /// The agent followed.
    pub fn agent(&self) -> &str {
        self.hub.id()
    }

    /// The follower as a stream of its items, each with the agent's id.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = (String, Item)> + Send + 'static {
        futures_util::stream::unfold(self, |mut f| async move {
            let item = f.next().await?;
            Some(((f.hub.id().to_string(), item), f))
        })
    }

    /// The next line or gap; `None` once the agent was removed (or the log
    /// cannot be read).
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            if self.pos < self.buf.len() {
                // A hole before this data is told first.
                if let Some((from, to)) = self.gap.take() {
                    return Some(Item::Gap { from, to });
                }
                let rest = &self.buf[self.pos..];
                let (cursor, line) = lines::split(self.buf_start + self.pos as u64, rest).next()?;
                let text = String::from_utf8_lossy(line).into_owned();
                self.pos = (cursor - self.buf_start) as usize;
                if self.pos >= self.buf.len() {
                    // Read buffers do not outlive a burst.
                    self.buf = Vec::new();
                    self.pos = 0;
                }
                return Some(Item::Line { cursor, text });
            }
            let end = *self.end.borrow_and_update();
            if self.cursor < end {
                self.read().await?;
                continue;
            }
            if let Some((from, to)) = self.gap.take() {
                return Some(Item::Gap { from, to });
            }
            if self.hub.is_closed() {
                return None;
            }
            self.end.changed().await.ok()?;
        }
    }

    /// Reads the next piece of the log past the cursor.
    async fn read(&mut self) -> Option<()> {
        let from = self.cursor;
        if let Some(data) = self.hub.read_recent(from) {
            self.cursor = from + data.len() as u64;
            self.buf_start = from;
            self.buf = data;
            self.pos = 0;
            return Some(());
        }
        // Off the async workers: the writer may be stalled on a slow disk
        // (it holds the files while it works), older files may be cold.
        let hub = self.hub.clone();
        let read =
            tokio::task::spawn_blocking(move || hub.read_live(from).unwrap_or_else(|| hub.read_from(from)))
                .await
                .ok()?;
        match read {
            Ok(Chunk::Gap { from, to }) => {
                let start = self.gap.map_or(from, |(f, _)| f);
                self.gap = Some((start, to));
                self.cursor = to;
            }
            Ok(Chunk::Data { data, .. }) if data.is_empty() => {
                // The end moved past what the files hold (cut meanwhile):
                // wait for the next move.
                self.end.changed().await.ok()?;
            }
            Ok(Chunk::Data { start, data }) => {
                self.cursor = start + data.len() as u64;
                self.buf_start = start;
                self.buf = data;
                self.pos = 0;
            }
            Err(e) => {
                tracing::warn!(agent = self.hub.id(), "cannot read the log for a follower: {e}");
                return None;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LogPolicy;
    use std::time::Duration;

    fn hub(dir: &std::path::Path, max: u64, keep: u32) -> Arc<LogHub> {
        LogHub::open(
            dir,
            "a",
            0,
            LogPolicy {
                max_size: max,
                keep,
                timestamps: false,
            },
            None,
            Default::default(),
        )
    }

    async fn next(f: &mut Follower) -> Item {
        tokio::time::timeout(Duration::from_secs(5), f.next())
            .await
            .expect("no item within 5 s")
            .expect("the follower ended")
    }

    fn line(cursor: u64, text: &str) -> Item {
        Item::Line {
            cursor,
            text: text.into(),
        }
    }

    #[tokio::test]
    async fn follows_from_the_files_then_live() {
        let dir = tempfile::tempdir().unwrap();
        let h = hub(dir.path(), 1 << 20, 2);
        h.append(b"one\ntwo\n", 2);
        let mut f = Follower::new(h.clone(), 4);
        assert_eq!(next(&mut f).await, line(8, "two"));
        h.append(b"three\n", 1);
        assert_eq!(next(&mut f).await, line(14, "three"));
        h.close();
        assert_eq!(f.next().await, None);
    }

    #[tokio::test]
    async fn holes_in_a_row_are_one_gap() {
        let dir = tempfile::tempdir().unwrap();
        let h = hub(dir.path(), 4096, 1);
        for i in 0..3000 {
            h.append(format!("line {i:05}\n").as_bytes(), 1);
        }
        // Many rotated-away files lie between 0 and what is left; one gap.
        let mut f = Follower::new(h.clone(), 0);
        let Item::Gap { from, to } = next(&mut f).await else {
            panic!("expected a gap first")
        };
        assert_eq!(from, 0);
        assert_eq!(next(&mut f).await, line(to + 11, &format!("line {:05}", to / 11)));
    }

    #[tokio::test]
    async fn a_file_cut_from_outside_is_a_gap_then_the_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let h = hub(dir.path(), 1 << 20, 2);
        h.append(b"old 1\nold 2\n", 2);
        let mut f = Follower::new(h.clone(), 0);
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("a.log"))
            .unwrap()
            .set_len(0)
            .unwrap();
        h.append(b"new\n", 1);
        assert_eq!(next(&mut f).await, Item::Gap { from: 0, to: 12 });
        assert_eq!(next(&mut f).await, line(16, "new"));
    }
}
