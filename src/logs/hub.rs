use super::lines;
use crate::config::LogPolicy;
use crate::store::Store;
use crate::wire::LogLine;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Most bytes one read returns (lines are at most 64 KiB, so a read always
/// holds at least one whole line).
pub const READ_MAX: usize = 128 * 1024;

/// Most bytes `tail` reads, whatever `n` asks for.
const TAIL_MAX_BYTES: u64 = 8 * 1024 * 1024;

/// What a read from a cursor found.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Whole lines from `start` (empty at the end of the log).
    Data { start: u64, data: Vec<u8> },
    /// `[from, to)` was rotated away; the log goes on at `to`.
    Gap { from: u64, to: u64 },
}

/// The agents whose log lines are being dropped now (disk full,
/// permissions), with the lines lost since their last write that
/// succeeded, and the lines every log dropped since the daemon started:
/// written by the hubs, read by `/health` without asking the supervisor
/// or walking the agents.
#[derive(Default)]
pub struct Drops {
    total: AtomicU64,
    now: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Drops {
    /// Lines dropped by every log since the daemon started.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The agents dropping lines now, by id, with the lines lost since
    /// their last write that succeeded.
    pub fn now(&self) -> Vec<(String, u64)> {
        self.lock().iter().map(|(id, n)| (id.clone(), *n)).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, u64>> {
        self.now.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn dropped(&self, id: &str, lines: u64) {
        self.total.fetch_add(lines, Ordering::Relaxed);
        *self.lock().entry(id.to_string()).or_default() += lines;
    }

    fn writing(&self, id: &str) {
        self.lock().remove(id);
    }
}

pub struct LogHub {
    id: String,
    drops: Arc<Drops>,
    /// The files' state: held across file work only by the log writer
    /// thread and by readers on blocking threads, never by async code.
    writer: Mutex<Writer>,
    /// Read by the capture for every chunk: never held across file work.
    policy: Mutex<LogPolicy>,
    /// The agent was removed: its followers end.
    closed: AtomicBool,
    /// Where the current file starts in the log (the writer's `base`).
    base: AtomicU64,
    dropped: AtomicU64,
    /// Lines dropped since the last write that succeeded (0: writing).
    dropping: AtomicU64,
    /// `base + len` of the writer, readable without its lock, and announced
    /// to followers whenever it moves (they read what is new from the
    /// files, so a follower that falls behind costs no memory here).
    end: AtomicU64,
    /// How followers hear that `end` moved: made for the first of them,
    /// since most agents never have one and a watch channel costs more
    /// than the rest of the hub.
    moved: OnceLock<watch::Sender<u64>>,
    /// The last bytes written, kept only while the log has followers.
    recent: Mutex<Recent>,
    lines: AtomicU64,
    /// Bytes queued for the log writer thread and not written yet.
    pub(super) backlog: AtomicUsize,
    /// Told by the log writer thread when the backlog got small again.
    pub(super) drained: tokio::sync::Notify,
}

/// Most bytes a hub keeps of what it wrote last, for its followers.
pub const RECENT_MAX: usize = 16 * 1024;

/// The last bytes of the log, as written (whole chunks of whole lines,
/// contiguous, from `start`): a follower that keeps up takes new lines
/// from here rather than reading them back from the file on a blocking
/// thread. One window per log, whatever the number of followers; one that
/// falls behind it reads the files.
#[derive(Default)]
struct Recent {
    start: u64,
    data: Vec<u8>,
}

impl Recent {
    fn end(&self) -> u64 {
        self.start + self.data.len() as u64
    }

    /// `chunk` was written at `at`; nothing before `floor` can be read back.
    fn push(&mut self, at: u64, floor: u64, chunk: &[u8]) {
        if self.end() != at || chunk.len() > RECENT_MAX {
            self.data.clear();
            self.start = at;
        }
        if chunk.len() > RECENT_MAX {
            self.start = at + chunk.len() as u64;
            return;
        }
        self.data.extend_from_slice(chunk);
        let over = self.data.len() - RECENT_MAX.min(self.data.len());
        let below = floor.saturating_sub(self.start).min(self.data.len() as u64) as usize;
        let cut = over.max(below);
        if cut > 0 {
            self.data.drain(..cut);
            self.start += cut as u64;
        }
    }

    /// From `from` (a line boundary) to the end, if it is all here.
    fn read(&self, from: u64) -> Option<Vec<u8>> {
        (from >= self.start && from < self.end()).then(|| self.data[(from - self.start) as usize..].to_vec())
    }
}

struct Writer {
    /// Shared by every agent's hub.
    dir: Arc<Path>,
    file: Option<File>,
    /// Log offset of the first byte of the current file.
    base: u64,
    /// Bytes in the current file.
    len: u64,
    store: Option<Store>,
    last_error: Option<Instant>,
    /// Nothing before this offset can be read back: the files that held it
    /// were truncated or replaced from outside.
    floor: u64,
}

/// An open log file and where it sits in the log.
struct Segment {
    file: File,
    base: u64,
    len: u64,
}

impl LogHub {
    /// Opens (or creates) `dir/<id>.log`, continuing at log offset `base`.
    /// File work (one open, a stat, a byte read): the log's end must be
    /// known before anyone can ask for it.
    pub fn open(
        dir: impl Into<Arc<Path>>,
        id: &str,
        base: u64,
        policy: LogPolicy,
        store: Option<Store>,
        drops: Arc<Drops>,
    ) -> Arc<LogHub> {
        let mut w = Writer {
            dir: dir.into(),
            file: None,
            base,
            len: 0,
            store,
            last_error: None,
            floor: 0,
        };
        if let Err(e) = w.reopen(id) {
            tracing::warn!(
                agent = id,
                "cannot open log file: {e}; its output is dropped until it can be"
            );
        }
        // Opened again when the agent writes.
        w.file = None;
        Arc::new(LogHub {
            id: id.to_string(),
            drops,
            end: AtomicU64::new(w.base + w.len),
            base: AtomicU64::new(w.base),
            moved: OnceLock::new(),
            recent: Mutex::new(Recent::default()),
            writer: Mutex::new(w),
            policy: Mutex::new(policy),
            closed: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            dropping: AtomicU64::new(0),
            lines: AtomicU64::new(0),
            backlog: AtomicUsize::new(0),
            drained: tokio::sync::Notify::new(),
        })
    }

    /// Queues `data` (`lines` whole lines) for the log writer thread: the
    /// way async code writes. Dropped and counted when the writer is too
    /// far behind.
    pub fn write(self: &Arc<Self>, data: Vec<u8>, lines: u64) {
        if !data.is_empty() {
            super::writer::append(self, data, lines);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        // A panic while holding the lock cannot leave the writer in a state
        // worse than a failed write, so poisoning is ignored.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn set_policy(&self, policy: LogPolicy) {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    pub fn policy(&self) -> LogPolicy {
        *self.policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lines that could not be written since the daemon started.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Lines dropped since the last write that succeeded: not 0 while the
    /// log cannot be written (disk full, permissions).
    #[cfg(test)]
    pub fn dropping(&self) -> u64 {
        self.dropping.load(Ordering::Relaxed)
    }

    pub(super) fn drop_lines(&self, lines: u64) {
        self.dropped.fetch_add(lines, Ordering::Relaxed);
        self.dropping.fetch_add(lines, Ordering::Relaxed);
        self.drops.dropped(&self.id, lines);
    }

    /// Bytes queued for the log writer thread and not written yet.
    pub(super) fn backlog(&self) -> usize {
        self.backlog.load(Ordering::SeqCst)
    }

    /// Lines written since the daemon started.
    pub fn lines(&self) -> u64 {
        self.lines.load(Ordering::Relaxed)
    }

    /// Ends every follower: the agent is gone.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        // A removed agent drops nothing any more.
        self.drops.writing(&self.id);
        // A follower that subscribes after this finds the hub closed.
        if let Some(moved) = self.moved.get() {
            moved.send_modify(|_| {});
        }
    }

    /// Whether the agent was removed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// The log's end now, and every time it moves (or the hub closes).
    pub fn watch_end(&self) -> watch::Receiver<u64> {
        let moved = self
            .moved
            .get_or_init(|| watch::channel(self.end.load(Ordering::SeqCst)).0);
        // The end may have moved before the channel existed, unannounced:
        // either `publish` sees the channel or this sees its end (the
        // fences forbid both missing the other).
        std::sync::atomic::fence(Ordering::SeqCst);
        self.sync_end(moved);
        moved.subscribe()
    }

    /// Sets the channel to the end as it is now (read under the channel's
    /// lock, so that the last to set it sets the latest end).
    fn sync_end(&self, moved: &watch::Sender<u64>) {
        moved.send_if_modified(|e| {
            let now = self.end.load(Ordering::SeqCst);
            let changed = *e != now;
            *e = now;
            changed
        });
    }

    /// Closes the log file while the agent is not running (after the lines
    /// queued before); the next line written opens it again.
    pub fn release(self: &Arc<Self>) {
        super::writer::release(self.clone());
    }

    pub(super) fn release_now(&self) {
        self.lock().file = None;
    }

    /// Where the current file starts in the log.
    #[cfg(test)]
    pub fn base(&self) -> u64 {
        self.base.load(Ordering::SeqCst)
    }

    /// The log offset just past the last written line.
    pub fn end(&self) -> u64 {
        self.end.load(Ordering::SeqCst)
    }

    fn publish(&self, w: &Writer) {
        self.base.store(w.base, Ordering::SeqCst);
        self.end.store(w.base + w.len, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        if let Some(moved) = self.moved.get() {
            self.sync_end(moved);
        }
    }

    /// Appends `data` (`lines` whole lines) now: on the log writer thread
    /// (async code queues with [`LogHub::write`]). It is written before it
    /// is announced, so a follower that sees the end move can read it back.
    pub(super) fn append(&self, data: &[u8], lines: u64) {
        if data.is_empty() {
            return;
        }
        let policy = self.policy();
        let mut w = self.lock();
        if w.file.is_none()
            && w.may_retry()
            && let Err(e) = w.reopen(&self.id)
        {
            w.report(&self.id, "cannot open log file", &e);
        }
        w.sync_len(&self.id);
        if w.len > 0
            && w.len + data.len() as u64 > policy.max_size
            && let Err(e) = w.rotate(&self.id, policy.keep)
        {
            w.report(&self.id, "cannot rotate log file", &e);
        }
        let (at, floor) = (w.base + w.len, w.floor);
        let Some(file) = w.file.as_mut() else {
            self.drop_lines(lines);
            self.publish(&w);
            return;
        };
        match file.write_all(data) {
            Ok(()) => {
                w.len += data.len() as u64;
                self.keep_recent(at, floor, data);
                self.lines.fetch_add(lines, Ordering::Relaxed);
                if self.dropping.load(Ordering::Relaxed) != 0 {
                    self.dropping.store(0, Ordering::Relaxed);
                    self.drops.writing(&self.id);
                    tracing::info!(agent = self.id, "its log is written again");
                }
            }
            Err(e) => {
                self.drop_lines(lines);
                // Cut off whatever part of the chunk made it, so the file
                // keeps ending on a whole line.
                let len = w.len;
                if let Some(f) = w.file.as_mut() {
                    let _ = f.set_len(len);
                }
                w.report(&self.id, "cannot write log file", &e);
            }
        }
        self.publish(&w);
    }

    /// Keeps what was just written at `at` for the followers, while there
    /// are any (before they hear that the end moved).
    fn keep_recent(&self, at: u64, floor: u64, data: &[u8]) {
        let followed = self.moved.get().is_some_and(|m| m.receiver_count() > 0);
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if followed {
            recent.push(at, floor, data);
        } else if recent.data.capacity() > 0 {
            *recent = Recent::default();
        }
    }

    /// The whole lines from `from` on, when they were written since the
    /// log had followers and are among the last [`RECENT_MAX`] bytes: no
    /// file read (async code may ask; only a copy is made under the lock).
    pub fn read_recent(&self, from: u64) -> Option<Vec<u8>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner()).read(from)
    }

    /// The files of the log, oldest first, and the log's end. The files are
    /// opened under the writer's lock, so that a rotation cannot move them
    /// while they are being read; never through a symbolic link.
    fn segments(&self) -> (Vec<Segment>, u64) {
        let keep = self.policy().keep;
        let mut w = self.lock();
        w.sync_len(&self.id);
        self.publish(&w);
        let mut segs = Vec::new();
        let mut base = w.base;
        if let Ok(file) = open_read(&w.path(&self.id, 0)) {
            segs.push(Segment {
                file,
                base,
                len: w.len,
            });
        }
        for k in 1..=keep {
            let Ok(file) = open_read(&w.path(&self.id, k)) else {
                break;
            };
            let len = file.metadata().map(|m| m.len()).unwrap_or(0);
            if base < w.floor + len {
                // What it holds is from before the log was cut from outside.
                break;
            }
            base -= len;
            segs.push(Segment { file, base, len });
        }
        segs.reverse();
        (segs, w.base + w.len)
    }

    /// Reads from the file being written, when `from` is in it, through the
    /// writer's own descriptor (no open): on a blocking thread. `None` when
    /// the lines are elsewhere (a rotated file, or no file open): read those
    /// with [`LogHub::read_from`].
    pub fn read_live(&self, from: u64) -> Option<io::Result<Chunk>> {
        let mut w = self.lock();
        w.sync_len(&self.id);
        self.publish(&w);
        let end = w.base + w.len;
        if from >= end {
            return Some(Ok(Chunk::Data {
                start: from,
                data: Vec::new(),
            }));
        }
        if from < w.base {
            return None;
        }
        let file = w.file.as_ref()?;
        let off = from - w.base;
        let want = (w.len - off).min(READ_MAX as u64) as usize;
        let mut data = vec![0u8; want];
        Some(read_at(file, &mut data, off).map(|got| {
            if got < want {
                return Chunk::Gap { from, to: end };
            }
            if off + (want as u64) < w.len
                && let Some(i) = memchr::memrchr(b'\n', &data)
            {
                data.truncate(i + 1);
            }
            Chunk::Data { start: from, data }
        }))
    }

    /// Reads whole lines from cursor `from`, at most [`READ_MAX`] bytes.
    /// Every answer moves a reader forward: data, a gap to skip, or empty
    /// data once `from` is at (or past) the end.
    pub fn read_from(&self, from: u64) -> io::Result<Chunk> {
        let (segs, end) = self.segments();
        if from >= end {
            return Ok(Chunk::Data {
                start: from,
                data: Vec::new(),
            });
        }
        for seg in &segs {
            if from < seg.base {
                return Ok(Chunk::Gap { from, to: seg.base });
            }
            if from >= seg.base + seg.len {
                continue;
            }
            let off = from - seg.base;
            let want = (seg.len - off).min(READ_MAX as u64) as usize;
            let mut data = vec![0u8; want];
            let got = read_at(&seg.file, &mut data, off)?;
            if got < want {
                // Cut behind the daemon's back (copytruncate) since the
                // lock was let go: what was there is gone.
                return Ok(Chunk::Gap { from, to: end });
            }
            // Stop at the last whole line; lines are shorter than READ_MAX.
            if off + (want as u64) < seg.len
                && let Some(i) = memchr::memrchr(b'\n', &data)
            {
                data.truncate(i + 1);
            }
            return Ok(Chunk::Data { start: from, data });
        }
        // Files removed behind the daemon's back.
        Ok(Chunk::Gap { from, to: end })
    }

    /// A resume cursor as a client gives it: one inside a line moves on to
    /// the next whole line; one beyond the end is `Err(end)`.
    pub fn align(&self, cursor: u64) -> Result<u64, u64> {
        let (segs, end) = self.segments();
        if cursor > end {
            return Err(end);
        }
        if cursor == 0 || cursor == end {
            return Ok(cursor);
        }
        let Some(seg) = segs.iter().find(|s| cursor > s.base && cursor <= s.base + s.len) else {
            // In a hole: the follower reports it as a gap.
            return Ok(cursor);
        };
        let mut off = cursor - 1 - seg.base;
        let mut block = [0u8; 4096];
        loop {
            let n = match read_at(&seg.file, &mut block, off) {
                Ok(0) | Err(_) => return Ok(seg.base + seg.len),
                Ok(n) => n,
            };
            if let Some(i) = memchr::memchr(b'\n', &block[..n]) {
                return Ok(seg.base + off + i as u64 + 1);
            }
            off += n as u64;
        }
    }

    /// The last `n` lines (fewer when the log is shorter, or when they would
    /// take more than a few MiB).
    pub fn tail(&self, n: usize) -> io::Result<Vec<LogLine>> {
        if n == 0 {
            return Ok(Vec::new());
        }
        let start = self.tail_start(n)?;
        let stop = self.end();
        let mut out = Vec::new();
        let mut cursor = start;
        // Up to the end as it was: a flooding agent must not keep this going.
        while cursor < stop {
            match self.read_from(cursor)? {
                Chunk::Gap { to, .. } => cursor = to,
                Chunk::Data { data, .. } if data.is_empty() => break,
                Chunk::Data { start, data } => {
                    for (end, line) in lines::split(start, &data).take_while(|(end, _)| *end <= stop) {
                        out.push(LogLine {
                            cursor: end,
                            text: String::from_utf8_lossy(line).into_owned(),
                        });
                    }
                    cursor = start + data.len() as u64;
                }
            }
        }
        let skip = out.len().saturating_sub(n);
        out.drain(..skip);
        Ok(out)
    }

    /// The cursor where the last `n` lines begin (no further back than a
    /// few MiB from the end): a follower started there streams them.
    pub fn tail_start(&self, n: usize) -> io::Result<u64> {
        let (segs, end) = self.segments();
        if segs.is_empty() {
            return Ok(end);
        }
        // The final newline ends the last line; `n` more before it mark the start.
        let mut newlines = 0usize;
        let mut block = vec![0u8; 64 * 1024];
        for seg in segs.iter().rev() {
            let mut pos = seg.len;
            while pos > 0 {
                let len = pos.min(block.len() as u64);
                pos -= len;
                let buf = &mut block[..len as usize];
                if read_at(&seg.file, buf, pos)? < buf.len() {
                    // Cut from outside meanwhile: start after the cut.
                    return Ok(seg.base + seg.len);
                }
                for i in memchr::memrchr_iter(b'\n', buf) {
                    let at = seg.base + pos + i as u64;
                    if at + 1 == end {
                        continue;
                    }
                    newlines += 1;
                    if newlines == n || end.saturating_sub(at + 1) > TAIL_MAX_BYTES {
                        return Ok(at + 1);
                    }
                }
            }
        }
        Ok(segs[0].base)
    }
}

/// Opens a log file for reading, never through a symbolic link, never
/// waiting (a FIFO put in its place is refused, not waited on).
fn open_read(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)?;
    regular(path, file)
}

/// `file` if it is a regular file: a log is never written to (or read from)
/// a FIFO, a device or a socket put in its place.
fn regular(path: &Path, file: File) -> io::Result<File> {
    if file.metadata()?.is_file() {
        Ok(file)
    } else {
        Err(io::Error::other(format!(
            "{} is not a regular file; refusing to use it as a log (remove it)",
            path.display()
        )))
    }
}

/// Reads at `off` until `buf` is full or the file ends; returns how much.
fn read_at(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], off + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A log path that is a symbolic link is refused, and said so.
fn symlink_refused(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(nix::libc::ELOOP) {
        io::Error::other(format!(
            "{} is a symbolic link; refusing to write the log through it (remove it)",
            path.display()
        ))
    } else {
        e
    }
}

impl Writer {
    fn path(&self, id: &str, k: u32) -> PathBuf {
        if k == 0 {
            self.dir.join(format!("{id}.log"))
        } else {
            self.dir.join(format!("{id}.log.{k}"))
        }
    }

    fn reopen(&mut self, id: &str) -> io::Result<()> {
        self.last_error = None;
        let old_end = self.base + self.len;
        let path = self.path(id, 0);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o640)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| symlink_refused(&path, e))
            .and_then(|f| regular(&path, f))?;
        let len = file.metadata()?.len();
        // A crash can leave a partial line at the end; end it so that every
        // cursor stays on a line boundary.
        if len > 0 {
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(len - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        self.len = file.metadata()?.len();
        // The file was removed or replaced from outside: count it as a
        // rotation, so that the log's end (every follower's cursor) never
        // goes back.
        if self.base + self.len < old_end {
            self.base = old_end;
            self.floor = self.base;
            if let Some(store) = &self.store {
                store.set_log_base(id, self.base);
            }
        }
        self.file = Some(file);
        Ok(())
    }

    /// Notices a log file cut or grown from outside (logrotate's
    /// copytruncate, an editor): the offsets go on from where they were, so
    /// every follower sees a gap rather than an error, and what was before
    /// can no longer be read back.
    fn sync_len(&mut self, id: &str) {
        let size = match &self.file {
            Some(f) => f.metadata().map(|m| m.len()),
            None => std::fs::symlink_metadata(self.path(id, 0)).map(|m| m.len()),
        };
        let Ok(size) = size else { return };
        if size == self.len {
            return;
        }
        let end = self.base + self.len;
        tracing::warn!(
            agent = id,
            "the log file was changed from outside ({} bytes, expected {}); reading goes on after a gap",
            size,
            self.len
        );
        self.base = end.saturating_sub(size);
        self.len = size;
        self.floor = self.base;
        if let Some(store) = &self.store {
            store.set_log_base(id, self.base);
        }
    }

    /// `<id>.log` becomes `<id>.log.1`, `.1` becomes `.2`, and so on; the
    /// oldest beyond `keep` is removed.
    fn rotate(&mut self, id: &str, keep: u32) -> io::Result<()> {
        self.file = None;
        if keep == 0 {
            match std::fs::remove_file(self.path(id, 0)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        } else {
            let _ = std::fs::remove_file(self.path(id, keep));
            for k in (1..keep).rev() {
                let from = self.path(id, k);
                if from.exists() {
                    std::fs::rename(&from, self.path(id, k + 1))?;
                }
            }
            // Removed from outside meanwhile: nothing to move.
            match std::fs::rename(self.path(id, 0), self.path(id, 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.base += self.len;
        self.len = 0;
        if let Some(store) = &self.store {
            store.set_log_base(id, self.base);
        }
        self.reopen(id)
    }

    /// Failed opens are retried at most once a second, not on every line.
    fn may_retry(&self) -> bool {
        self.last_error
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
    }

    /// Logs a write failure at most once a second per agent.
    fn report(&mut self, id: &str, what: &str, e: &io::Error) {
        if self.may_retry() {
            tracing::error!(
                agent = id,
                "{what} in {}: {e}; lines are being dropped and counted",
                self.dir.display()
            );
        }
        self.last_error = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: u64, keep: u32) -> LogPolicy {
        LogPolicy {
            max_size: max,
            keep,
            timestamps: false,
        }
    }

    fn write_lines(hub: &LogHub, from: usize, to: usize) {
        for i in from..to {
            hub.append(format!("line {i:05}\n").as_bytes(), 1);
        }
    }

    fn read_all(hub: &LogHub, mut cursor: u64) -> (Vec<String>, Vec<(u64, u64)>) {
        let (mut lines, mut gaps) = (Vec::new(), Vec::new());
        loop {
            match hub.read_from(cursor).unwrap() {
                Chunk::Gap { from, to } => {
                    gaps.push((from, to));
                    cursor = to;
                }
                Chunk::Data { data, .. } if data.is_empty() => return (lines, gaps),
                Chunk::Data { start, data } => {
                    for (_, l) in lines::split(start, &data) {
                        lines.push(String::from_utf8(l.to_vec()).unwrap());
                    }
                    cursor = start + data.len() as u64;
                }
            }
        }
    }

    #[test]
    fn cursors_survive_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let hub = LogHub::open(dir.path(), "a", 0, policy(4096, 3), None, Default::default());
        write_lines(&hub, 0, 300); // 11 bytes a line: 3300 bytes, no rotation yet
        let mid = hub.tail(100).unwrap()[0].cursor; // just after line 200's predecessor
        write_lines(&hub, 300, 1000); // rotates twice
        assert!(dir.path().join("a.log.1").exists());
        let (lines, gaps) = read_all(&hub, mid);
        assert!(gaps.is_empty());
        assert_eq!(lines.first().unwrap(), "line 00201");
        assert_eq!(lines.len(), 799);
        assert_eq!(lines.last().unwrap(), "line 00999");
    }

    #[test]
    fn rotated_away_gives_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        let hub = LogHub::open(dir.path(), "a", 0, policy(4096, 1), None, Default::default());
        write_lines(&hub, 0, 2000);
        assert!(!dir.path().join("a.log.2").exists());
        let (lines, gaps) = read_all(&hub, 0);
        assert_eq!(gaps.len(), 1);
        assert_eq!(gaps[0].0, 0);
        assert_eq!(lines.last().unwrap(), "line 01999");
        // Every line after the gap is there, in order.
        let first: usize = lines[0][5..].parse().unwrap();
        assert_eq!(lines.len(), 2000 - first);
        assert_eq!(gaps[0].1, first as u64 * 11);
    }

    #[test]
    fn tail_spans_files() {
        let dir = tempfile::tempdir().unwrap();
        let hub = LogHub::open(dir.path(), "a", 0, policy(4096, 5), None, Default::default());
        write_lines(&hub, 0, 1000);
        let tail = hub.tail(500).unwrap();
        assert_eq!(tail.len(), 500);
        assert_eq!(tail[0].text, "line 00500");
        assert_eq!(tail[499].text, "line 00999");
        assert_eq!(tail[499].cursor, hub.end());
        assert_eq!(hub.tail(5000).unwrap().len(), 1000);
        assert!(hub.tail(0).unwrap().is_empty());
    }

    #[test]
    fn reopen_continues_offsets_and_ends_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.log"), b"old\npartial").unwrap();
        let hub = LogHub::open(
            dir.path(),
            "a",
            1000,
            policy(1 << 20, 2),
            None,
            Default::default(),
        );
        assert_eq!(hub.end(), 1000 + 12);
        hub.append(b"new\n", 1);
        let tail = hub.tail(3).unwrap();
        let texts: Vec<_> = tail.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["old", "partial", "new"]);
        assert_eq!(tail[2].cursor, 1016);
    }

    #[test]
    fn unwritable_dir_counts_dropped_lines() {
        let hub = LogHub::open(
            Path::new("/proc/agentsd-no-such-dir"),
            "a",
            0,
            policy(4096, 1),
            None,
            Default::default(),
        );
        hub.append(b"x\ny\n", 2);
        hub.append(b"z\n", 1);
        assert_eq!(hub.dropped(), 3);
        assert_eq!(hub.dropping(), 3);
        assert_eq!(hub.end(), 0);
    }

    #[test]
    fn dropping_lines_counts_until_a_write_succeeds_again() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let drops = Arc::new(Drops::default());
        let hub = LogHub::open(logs.as_path(), "a", 0, policy(4096, 1), None, drops.clone());
        let other = LogHub::open(logs.as_path(), "b", 0, policy(4096, 1), None, drops.clone());
        hub.append(b"x\ny\n", 2);
        other.append(b"w\n", 1);
        assert_eq!(hub.dropping(), 2);
        // What /health reads: both agents, and every line lost.
        assert_eq!(drops.now(), [("a".to_string(), 2), ("b".to_string(), 1)]);
        assert_eq!(drops.total(), 3);
        // A removed agent drops nothing any more.
        other.close();
        assert_eq!(drops.now(), [("a".to_string(), 2)]);
        std::fs::create_dir(&logs).unwrap();
        // Opening is retried at most once a second.
        let deadline = Instant::now() + Duration::from_secs(10);
        while hub.dropping() != 0 {
            assert!(Instant::now() < deadline, "never written again");
            hub.append(b"z\n", 1);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(hub.dropped() >= 3);
        assert!(hub.end() > 0);
        // Written again: no longer dropping, the total kept.
        assert_eq!(drops.now(), []);
        assert_eq!(drops.total(), 1 + hub.dropped());
    }

    #[test]
    fn the_end_is_announced_after_each_write() {
        let dir = tempfile::tempdir().unwrap();
        let hub = LogHub::open(dir.path(), "a", 0, policy(1 << 20, 2), None, Default::default());
        hub.append(b"before\n", 1);
        // No follower yet: no channel to announce on.
        assert!(hub.moved.get().is_none());
        let mut end = hub.watch_end();
        assert_eq!(*end.borrow_and_update(), 7);
        hub.append(b"after\n", 1);
        assert!(end.has_changed().unwrap());
        assert_eq!(*end.borrow_and_update(), 13);
        // A follower that comes later starts from the end as it is.
        hub.append(b"more\n", 1);
        let mut late = hub.watch_end();
        assert_eq!(*late.borrow_and_update(), 18);
        assert_eq!(*end.borrow_and_update(), 18);
        hub.close();
        assert!(late.has_changed().unwrap(), "closing is announced");
    }

    #[test]
    fn a_follower_subscribing_while_lines_are_written_misses_no_end() {
        // Subscribing races with appends from another thread: whatever the
        // interleaving, the channel ends at the hub's end.
        for _ in 0..200 {
            let dir = tempfile::tempdir().unwrap();
            let hub = LogHub::open(dir.path(), "a", 0, policy(1 << 20, 2), None, Default::default());
            let writer = {
                let hub = hub.clone();
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        hub.append(b"x\n", 1);
                    }
                })
            };
            let end = hub.watch_end();
            writer.join().unwrap();
            assert_eq!(*end.borrow(), 40);
            assert_eq!(hub.end(), 40);
        }
    }

    #[test]
    fn a_log_truncated_from_outside_reads_as_a_gap_never_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let hub = LogHub::open(dir.path(), "a", 0, policy(1 << 20, 2), None, Default::default());
        write_lines(&hub, 0, 100);
        std::fs::write(dir.path().join("a.log"), b"").unwrap();
        assert!(hub.tail(2).unwrap().is_empty());
        let (lines, gaps) = read_all(&hub, 0);
        assert!(lines.is_empty());
        assert_eq!(gaps, vec![(0, 1100)]);
        // Writing goes on after the cut, offsets never going back.
        write_lines(&hub, 100, 102);
        let tail = hub.tail(5).unwrap();
        assert_eq!(
            tail.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(),
            ["line 00100", "line 00101"]
        );
        assert_eq!(tail[1].cursor, 1122);
    }

    #[test]
    fn a_symlinked_log_is_refused_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, b"precious\n").unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.path().join("a.log")).unwrap();
        let hub = LogHub::open(dir.path(), "a", 0, policy(1 << 20, 2), None, Default::default());
        hub.append(b"x\n", 1);
        assert_eq!(std::fs::read(&elsewhere).unwrap(), b"precious\n");
        assert_eq!(hub.dropped(), 1);
        // Nor read through.
        std::fs::rename(dir.path().join("a.log"), dir.path().join("a.log.1")).unwrap();
        assert!(hub.tail(5).unwrap().iter().all(|l| l.text != "precious"));
    }

    #[test]
    fn a_fifo_in_place_of_the_log_is_refused_not_written_to() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("a.log"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let hub = LogHub::open(dir.path(), "a", 0, policy(1 << 20, 2), None, Default::default());
        // Written to, a FIFO would take 64 KiB and then stall the writer.
        hub.append(b"x\n", 1);
        assert_eq!(hub.dropped(), 1);
        assert_eq!(hub.end(), 0);
        // Nor read from (an open for reading would wait for a writer).
        std::fs::rename(dir.path().join("a.log"), dir.path().join("a.log.1")).unwrap();
        assert!(hub.tail(5).unwrap().is_empty());
    }

    #[test]
    fn resume_cursors_are_aligned_to_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let hub = LogHub::open(dir.path(), "a", 0, policy(1 << 20, 2), None, Default::default());
        write_lines(&hub, 0, 3); // lines end at 11, 22, 33
        assert_eq!(hub.align(0), Ok(0));
        assert_eq!(hub.align(11), Ok(11));
        assert_eq!(hub.align(12), Ok(22));
        assert_eq!(hub.align(21), Ok(22));
        assert_eq!(hub.align(33), Ok(33));
        assert_eq!(hub.align(34), Err(33));
    }

    #[test]
    fn the_recent_window_is_contiguous_bounded_and_above_the_floor() {
        let mut r = Recent::default();
        r.push(0, 0, b"a\nb\n");
        r.push(4, 0, b"c\n");
        assert_eq!(r.read(0).as_deref(), Some(&b"a\nb\nc\n"[..]));
        assert_eq!(r.read(4).as_deref(), Some(&b"c\n"[..]));
        // The end: nothing new here (the file says whether there is more).
        assert_eq!(r.read(6), None);
        // Not contiguous with what was kept (bytes dropped in between): anew.
        r.push(10, 0, b"d\n");
        assert_eq!((r.read(4), r.read(10).as_deref()), (None, Some(&b"d\n"[..])));
        // Cut from outside: nothing below the floor is given.
        r.push(12, 11, b"e\n");
        assert_eq!((r.read(10), r.read(12).as_deref()), (None, Some(&b"e\n"[..])));
        // Bounded: the oldest bytes go.
        let line = [b'x'; 1023];
        let mut at = r.end();
        for _ in 0..40 {
            r.push(at, 0, &[&line[..], b"\n"].concat());
            at += 1024;
        }
        assert_eq!(r.data.len(), RECENT_MAX);
        assert_eq!(r.end(), at);
        assert!(r.read(at - RECENT_MAX as u64 - 1024).is_none());
        assert_eq!(r.read(at - 1024).map(|d| d.len()), Some(1024));
        // A chunk larger than the window: not kept, and what was before it
        // is not contiguous with what comes after.
        r.push(at, 0, &vec![b'y'; RECENT_MAX + 1]);
        assert_eq!(r.read(at - 1024), None);
        assert_eq!(r.start, at + RECENT_MAX as u64 + 1);
    }

    #[tokio::test]
    async fn lines_are_kept_in_memory_only_while_followed() {
        let dir = tempfile::tempdir().unwrap();
        let hub = LogHub::open(dir.path(), "a", 0, policy(1 << 20, 2), None, Default::default());
        hub.append(b"one\n", 1);
        assert_eq!(hub.read_recent(0), None);
        let end = hub.watch_end();
        hub.append(b"two\n", 1);
        assert_eq!(hub.read_recent(4).as_deref(), Some(&b"two\n"[..]));
        // Across a rotation (offsets go on).
        hub.set_policy(policy(6, 2));
        hub.append(b"three\n", 1);
        assert_eq!(hub.read_recent(4).as_deref(), Some(&b"two\nthree\n"[..]));
        drop(end);
        hub.append(b"four\n", 1);
        assert_eq!(hub.read_recent(4), None);
        assert_eq!(hub.recent.lock().unwrap().data.capacity(), 0);
    }
}
