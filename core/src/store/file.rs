//! The native SDK's queue in one append-only file (ADR 0022): each [`WriteBatch`] is one
//! record, appended with its length and CRC-32. Opening replays the records and cuts a torn
//! tail (a write the process was killed in). Records that only hold dead events are dropped by
//! compaction: a new file with the live events, written and fsynced on a background thread,
//! put in place, with what was appended meanwhile, by the first commit after it finished (or
//! when the store is closed).
//!
//! Durability matches the SQLite queue it replaces (ADR 0003): a returned commit survives the
//! app being killed (the bytes are in the kernel's page cache); with [`Durability::Normal`] a
//! power cut can lose the commits of about the last second (the background thread fsyncs the
//! file once a second when it changed); with [`Durability::Full`] every commit is fsynced first.
//!
//! File format: the 8 bytes `TMQUEUE1`, then records `len: u32 LE, crc32(payload): u32 LE,
//! payload`. A payload is one batch: `flags: u8` (1 delete all, 2 delete held, 4 release held,
//! 8 a state follows), `deletes: u32` then that many `seq: u64`, `inserts: u32` then that many
//! `seq: u64, held: u8, created_at: i64, len: u32, body`, and the state as `len: u32, bytes`.
//! All integers little-endian. A queue file of the SQLite store (SDK versions before ADR 0022)
//! is imported on open ([`super::sqlite_file`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{Durability, EventStore, IndexEntry, Snapshot, StoreError, WriteBatch};

const MAGIC: &[u8; 8] = b"TMQUEUE1";
/// The first 7 bytes of every version of the format; the 8th is the version digit.
const MAGIC_FAMILY: &[u8; 7] = b"TMQUEUE";
const FORMAT_VERSION: i64 = 1;
const HEADER: u64 = MAGIC.len() as u64;
const RECORD_HEAD: usize = 8;
/// The longest record (its length is a `u32`); reads are bounded by the file's length.
const MAX_RECORD: usize = u32::MAX as usize;
/// Compaction starts once the file is at least this large and at least half of it is dead.
const COMPACT_MIN: u64 = 1 << 20;
/// The snapshot a compaction writes is split into records of about this size.
const SNAPSHOT_RECORD: usize = 1 << 20;
/// How often the background thread fsyncs a changed file ([`Durability::Normal`]).
const SYNC_EVERY: Duration = Duration::from_secs(1);
/// What an event costs in a record besides its body.
const INSERT_OVERHEAD: u64 = 21;

const F_DELETE_ALL: u8 = 1;
const F_DELETE_HELD: u8 = 2;
const F_RELEASE_HELD: u8 = 4;
const F_STATE: u8 = 8;

fn io_error(what: &str, e: io::Error) -> StoreError {
    StoreError::Backend(format!("{what}: {e}"))
}

/// Where one queued event's body is in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    seq: u64,
    held: bool,
    created_at: i64,
    offset: u64,
    len: u32,
}

/// The live contents: events by `seq` (a sorted vector: appends are the common case) and the
/// engine's state.
#[derive(Debug, Default)]
struct Index {
    slots: Vec<Slot>,
    state: Option<Vec<u8>>,
    /// What the live events and the state would take in a new file.
    live_bytes: u64,
    /// A `delete_all` or `delete_held` removed events (set by `apply`; taken by `open` and
    /// `commit`, which start a purge).
    purged: bool,
}

impl Index {
    fn find(&self, seq: u64) -> Result<usize, usize> {
        match self.slots.last() {
            Some(last) if last.seq < seq => Err(self.slots.len()),
            _ => self.slots.binary_search_by_key(&seq, |s| s.seq),
        }
    }

    /// Applies one batch, in [`WriteBatch`]'s order.
    fn apply(&mut self, flags: u8, deletes: &[u64], inserts: &[Slot], state: Option<Vec<u8>>) {
        let mut freed = 0u64;
        if flags & F_DELETE_ALL != 0 {
            self.purged |= !self.slots.is_empty();
            self.slots.clear();
            freed = self.live_bytes - self.state_bytes();
        }
        if flags & F_DELETE_HELD != 0 {
            self.slots.retain(|s| {
                if s.held {
                    freed += INSERT_OVERHEAD + u64::from(s.len);
                }
                !s.held
            });
            self.purged |= freed > 0;
        }
        if flags & F_RELEASE_HELD != 0 {
            self.slots.iter_mut().for_each(|s| s.held = false);
        }
        if !deletes.is_empty() {
            let mut sorted;
            let deletes = if deletes.windows(2).all(|w| w[0] < w[1]) {
                deletes
            } else {
                sorted = deletes.to_vec();
                sorted.sort_unstable();
                &sorted[..]
            };
            let mut next = 0;
            self.slots.retain(|s| {
                while next < deletes.len() && deletes[next] < s.seq {
                    next += 1;
                }
                let gone = next < deletes.len() && deletes[next] == s.seq;
                if gone {
                    freed += INSERT_OVERHEAD + u64::from(s.len);
                }
                !gone
            });
        }
        self.live_bytes -= freed;
        for slot in inserts {
            self.live_bytes += INSERT_OVERHEAD + u64::from(slot.len);
            match self.find(slot.seq) {
                Ok(i) => {
                    self.live_bytes -= INSERT_OVERHEAD + u64::from(self.slots[i].len);
                    self.slots[i] = *slot;
                }
                Err(i) => self.slots.insert(i, *slot),
            }
        }
        if let Some(state) = state {
            self.live_bytes -= self.state_bytes();
            self.state = Some(state);
            self.live_bytes += self.state_bytes();
        }
    }

    fn state_bytes(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.len() as u64 + 4)
    }
}

/// Appends one batch's payload to `buf`; returns the offsets in `buf` of the inserts' bodies.
fn encode(batch: &WriteBatch, buf: &mut Vec<u8>) -> Vec<u64> {
    let mut flags = 0;
    for (set, flag) in [
        (batch.delete_all, F_DELETE_ALL),
        (batch.delete_held, F_DELETE_HELD),
        (batch.release_held, F_RELEASE_HELD),
        (batch.state.is_some(), F_STATE),
    ] {
        if set {
            flags |= flag;
        }
    }
    buf.push(flags);
    buf.extend_from_slice(&(batch.deletes.len() as u32).to_le_bytes());
    for seq in &batch.deletes {
        buf.extend_from_slice(&seq.to_le_bytes());
    }
    buf.extend_from_slice(&(batch.inserts.len() as u32).to_le_bytes());
    let mut offsets = Vec::with_capacity(batch.inserts.len());
    for e in &batch.inserts {
        put_insert(buf, e.seq, e.held, e.created_at, &e.body);
        offsets.push((buf.len() - e.body.len()) as u64);
    }
    if let Some(state) = &batch.state {
        buf.extend_from_slice(&(state.len() as u32).to_le_bytes());
        buf.extend_from_slice(state);
    }
    offsets
}

fn put_insert(buf: &mut Vec<u8>, seq: u64, held: bool, created_at: i64, body: &[u8]) {
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.push(u8::from(held));
    buf.extend_from_slice(&created_at.to_le_bytes());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(body);
}

/// Fills in a record's head (the first [`RECORD_HEAD`] bytes of `buf`, the payload after them).
fn seal(buf: &mut [u8]) {
    let len = (buf.len() - RECORD_HEAD) as u32;
    let crc = crc32fast::hash(&buf[RECORD_HEAD..]);
    buf[..4].copy_from_slice(&len.to_le_bytes());
    buf[4..RECORD_HEAD].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded payload; the inserts' offsets relative to the payload's start.
struct Decoded {
    flags: u8,
    deletes: Vec<u64>,
    inserts: Vec<Slot>,
    state: Option<Vec<u8>>,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
}

fn decode(payload: &[u8]) -> Option<Decoded> {
    let mut c = Cursor { bytes: payload, at: 0 };
    let flags = c.u8()?;
    let n = c.u32()? as usize;
    // Counts are checked against what is left before anything is reserved.
    if n > payload.len() / 8 {
        return None;
    }
    let deletes = (0..n).map(|_| c.u64()).collect::<Option<Vec<_>>>()?;
    let n = c.u32()? as usize;
    if n > payload.len() / INSERT_OVERHEAD as usize {
        return None;
    }
    let mut inserts = Vec::with_capacity(n);
    for _ in 0..n {
        let seq = c.u64()?;
        let held = c.u8()? != 0;
        let created_at = c.u64()? as i64;
        let len = c.u32()?;
        let offset = c.at as u64;
        c.take(len as usize)?;
        inserts.push(Slot { seq, held, created_at, offset, len });
    }
    let state = if flags & F_STATE != 0 {
        let len = c.u32()? as usize;
        Some(c.take(len)?.to_vec())
    } else {
        None
    };
    (c.at == payload.len()).then_some(Decoded { flags, deletes, inserts, state })
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, buf, offset)
}

#[cfg(windows)]
fn read_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_read(buf, offset)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => {
                buf = &mut buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

#[cfg(windows)]
fn write_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::windows::fs::FileExt;
    while !buf.is_empty() {
        match file.seek_write(buf, offset)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => {
                buf = &buf[n..];
                offset += n as u64;
            }
        }
    }
    Ok(())
}

/// Replays a queue file's records into an index. Returns the index and where the valid
/// records end: a torn or damaged record and everything after it are to be cut there.
fn replay(file: &File, len: u64) -> Result<(Index, u64), StoreError> {
    let mut index = Index::default();
    // The file's cursor is used here only (every other read and write is positional; on
    // Windows those move the cursor, so it is set first).
    let mut cursor = file;
    cursor.seek(SeekFrom::Start(HEADER)).map_err(|e| io_error("reading the queue file", e))?;
    let mut reader = io::BufReader::with_capacity(1 << 16, cursor);
    let mut at = HEADER;
    let mut payload = Vec::new();
    loop {
        if len - at < RECORD_HEAD as u64 {
            break;
        }
        let mut head = [0u8; RECORD_HEAD];
        if reader.read_exact(&mut head).is_err() {
            break;
        }
        let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if n as u64 > len - at - RECORD_HEAD as u64 {
            break;
        }
        payload.clear();
        payload.resize(n, 0);
        if reader.read_exact(&mut payload).is_err() || crc32fast::hash(&payload) != crc {
            break;
        }
        let Some(mut d) = decode(&payload) else { break };
        let base = at + RECORD_HEAD as u64;
        d.inserts.iter_mut().for_each(|s| s.offset += base);
        index.apply(d.flags, &d.deletes, &d.inserts, d.state);
        at = base + n as u64;
    }
    Ok((index, at))
}

/// The path of a compaction's (or an import's) new file before it replaces the queue file.
fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".compact");
    path.with_file_name(name)
}

/// Writes `MAGIC`, the given state in a record of its own (so that damage to the events'
/// records cannot take it), and the events in records of about [`SNAPSHOT_RECORD`] bytes to a
/// new file; returns each event's body offset (in the events' order) and the file's length.
fn write_snapshot(
    out: &File,
    state: Option<&[u8]>,
    events: impl Iterator<Item = io::Result<(Slot, Vec<u8>)>>,
) -> io::Result<(Vec<u64>, u64)> {
    write_at(out, MAGIC, 0)?;
    let mut w = SnapshotWriter {
        out,
        end: HEADER,
        buf: Vec::with_capacity(SNAPSHOT_RECORD + 4096),
        count: 0,
        pending: Vec::new(),
        offsets: Vec::new(),
    };
    if let Some(state) = state {
        let mut buf = vec![0u8; RECORD_HEAD];
        buf.push(F_STATE);
        buf.extend_from_slice(&0u32.to_le_bytes()); // no deletes
        buf.extend_from_slice(&0u32.to_le_bytes()); // no inserts
        buf.extend_from_slice(&(state.len() as u32).to_le_bytes());
        buf.extend_from_slice(state);
        seal(&mut buf);
        write_at(out, &buf, w.end)?;
        w.end += buf.len() as u64;
    }
    w.start();
    for event in events {
        let (slot, body) = event?;
        if w.count > 0 && w.buf.len() + body.len() > SNAPSHOT_RECORD {
            w.flush()?;
            w.start();
        }
        put_insert(&mut w.buf, slot.seq, slot.held, slot.created_at, &body);
        w.pending.push((w.buf.len() - body.len()) as u64);
        w.count += 1;
    }
    if w.count > 0 {
        w.flush()?;
    }
    Ok((w.offsets, w.end))
}

/// The insert-only record [`write_snapshot`] is filling.
struct SnapshotWriter<'a> {
    out: &'a File,
    end: u64,
    buf: Vec<u8>,
    count: u32,
    /// The bodies' offsets in `buf`.
    pending: Vec<u64>,
    offsets: Vec<u64>,
}

impl SnapshotWriter<'_> {
    /// Where the inserts' count is: after the record's head, the flags and the (empty) deletes.
    const COUNT_AT: usize = RECORD_HEAD + 1 + 4;

    fn start(&mut self) {
        self.buf.clear();
        self.buf.resize(RECORD_HEAD, 0);
        self.buf.push(0);
        self.buf.extend_from_slice(&0u32.to_le_bytes()); // no deletes
        self.buf.extend_from_slice(&0u32.to_le_bytes()); // the inserts, counted at the end
    }

    fn flush(&mut self) -> io::Result<()> {
        self.buf[Self::COUNT_AT..Self::COUNT_AT + 4].copy_from_slice(&self.count.to_le_bytes());
        seal(&mut self.buf);
        write_at(self.out, &self.buf, self.end)?;
        let end = self.end;
        self.offsets.extend(self.pending.drain(..).map(|o| o + end));
        self.end += self.buf.len() as u64;
        self.count = 0;
        Ok(())
    }
}

/// Copies `len` bytes at `from` in `src` to `to` in `dst`, a MiB at a time.
fn copy_range(src: &File, from: u64, dst: &File, to: u64, len: u64) -> io::Result<()> {
    let mut chunk = vec![0u8; len.min(SNAPSHOT_RECORD as u64) as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(chunk.len() as u64) as usize;
        read_at(src, &mut chunk[..n], from + done)?;
        write_at(dst, &chunk[..n], to + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Fsyncs the directory holding `path`, so that a rename into it survives a power cut (a
/// no-op where directories cannot be opened).
fn sync_dir(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

/// A compaction handed to the background thread: the live events as they were when the file
/// ended at `end`.
struct Job {
    source: Arc<File>,
    end: u64,
    /// The worker's current end of the file: what was appended when the snapshot is written
    /// is copied after it (and fsynced with it); what comes later, by the swap.
    published: Arc<AtomicU64>,
    slots: Vec<Slot>,
    state: Option<Vec<u8>>,
    tmp: PathBuf,
}

/// A compaction's new file, fsynced, not yet in place.
struct Done {
    file: File,
    /// The old file's length when the job started: what was appended after it is copied over.
    end: u64,
    /// The new file's length without the records appended after `end`.
    len: u64,
    /// How many of the bytes appended after `end` are copied (and fsynced) already.
    copied: u64,
    /// The job's events with their bodies' offsets in the new file, in `seq` order.
    moved: Vec<(u64, u64)>,
}

#[derive(Default)]
struct Shared {
    job: Option<Job>,
    done: Option<io::Result<Done>>,
    /// The file the periodic fsync is for (the queue file, or the new one after a compaction).
    sync: Option<Arc<File>>,
    /// A directory whose rename (a compaction's) is to be fsynced at the next period.
    sync_dir: Option<PathBuf>,
    stop: bool,
}

/// The background thread: runs compactions and, with [`Durability::Normal`], fsyncs the
/// file about once a second when it changed. Stopped and joined on drop.
struct Background {
    shared: Arc<Mutex<Shared>>,
    dirty: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Every update is an assignment of fields that do not depend on each other: a poisoned
    // lock is still consistent.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl Background {
    fn start(file: Arc<File>, periodic_sync: bool) -> Result<Self, StoreError> {
        let shared = Arc::new(Mutex::new(Shared { sync: Some(file), ..Shared::default() }));
        let dirty = Arc::new(AtomicBool::new(false));
        let (s, d) = (shared.clone(), dirty.clone());
        let thread = std::thread::Builder::new()
            .name("trailmark-queue".into())
            .spawn(move || {
                let mut next_sync = Instant::now() + SYNC_EVERY;
                loop {
                    let (job, stop) = {
                        let mut g = lock(&s);
                        (g.job.take(), g.stop)
                    };
                    if let Some(job) = job {
                        let result = compact(job);
                        lock(&s).done = Some(result);
                        continue;
                    }
                    let now = Instant::now();
                    if now >= next_sync || stop {
                        // The flag is cleared before the file is fetched: a compaction swapped
                        // in between marks the new file dirty after the swap.
                        if periodic_sync && d.swap(false, Ordering::AcqRel) {
                            let file = lock(&s).sync.clone();
                            if let Some(f) = file
                                && f.sync_data().is_err()
                            {
                                // Tried again at the next period.
                                d.store(true, Ordering::Release);
                            }
                        }
                        let dir = lock(&s).sync_dir.take();
                        if let Some(path) = dir {
                            let _ = sync_dir(&path);
                        }
                        if stop {
                            return;
                        }
                        next_sync = Instant::now() + SYNC_EVERY;
                        continue;
                    }
                    // Woken early by a job or the stop (or spuriously: the loop rechecks).
                    std::thread::park_timeout(next_sync - now);
                }
            })
            .map_err(|e| io_error("starting the queue thread", e))?;
        Ok(Background { shared, dirty, thread: Some(thread) })
    }

    fn wake(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        lock(&self.shared).stop = true;
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes a job's events into its new file, then what the worker appended meanwhile, and
/// fsyncs it (on the background thread).
fn compact(job: Job) -> io::Result<Done> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&job.tmp)?;
    let events = job.slots.iter().map(|s| {
        let mut body = vec![0u8; s.len as usize];
        read_at(&job.source, &mut body, s.offset).map(|()| (*s, body))
    });
    let result = write_snapshot(&file, job.state.as_deref(), events).and_then(|(offsets, len)| {
        // Whole records only: the worker publishes its end after each write.
        let copied = job.published.load(Ordering::Acquire).saturating_sub(job.end);
        copy_range(&job.source, job.end, &file, len, copied)?;
        file.sync_all()?;
        Ok((offsets, len, copied))
    });
    match result {
        Ok((offsets, len, copied)) => {
            let moved = job.slots.iter().map(|s| s.seq).zip(offsets).collect();
            Ok(Done { file, end: job.end, len, copied, moved })
        }
        Err(e) => {
            drop(file);
            let _ = fs::remove_file(&job.tmp);
            Err(e)
        }
    }
}

/// The native SDK's queue: one append-only file. See the module documentation.
pub struct FileStore {
    path: PathBuf,
    file: Arc<File>,
    /// Where the next record goes: the end of the valid records.
    end: u64,
    /// `end`, for a running compaction to copy what was appended.
    published: Arc<AtomicU64>,
    index: Index,
    durability: Durability,
    background: Background,
    /// A compaction is running on the background thread.
    compacting: bool,
    /// No compaction is started before the file reaches this length (after a failed one).
    compact_after: u64,
    /// Events were deleted for privacy (opt-out, consent withdrawn): their bytes leave the
    /// file with the next compaction, started at once.
    purge: bool,
    /// The running compaction is such a purge (set again if it fails).
    purging: bool,
    /// A compaction's rename whose directory fsync failed ([`Durability::Full`]): retried
    /// before a commit returns.
    dir_unsynced: bool,
    /// A failed write could not be cut off: it is cut before anything else is written.
    cut_to: Option<u64>,
    /// Bytes of a torn or damaged tail cut when the file was opened.
    cut: u64,
    /// Compactions put in place since the store was opened.
    compactions: u64,
    max_record: usize,
    buf: Vec<u8>,
}

/// Takes the file's exclusive advisory lock (`flock`): one store per file, across processes
/// (two would write over each other's records). With `flock` itself rather than std's
/// `File::try_lock`, which is not implemented for Android before Rust 1.98. Elsewhere than
/// Unix there is no lock (not an SDK target; Windows' locks are mandatory and would keep the
/// compaction's own reads out).
#[cfg(unix)]
fn lock_file(file: &File, path: &Path) -> Result<(), StoreError> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this `File` owns and keeps open; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        return Err(StoreError::Backend(format!(
            "{} is in use by another Trailmark instance (one per queue file, also across processes)",
            path.display()
        )));
    }
    Err(io_error("locking the queue file", e))
}

#[cfg(not(unix))]
fn lock_file(_: &File, _: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Whether `file` is the file at `path` now (not one a compaction of another instance
/// replaced after it was opened).
#[cfg(unix)]
fn is_at(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn is_at(_: &File, _: &Path) -> bool {
    true
}

/// Opens the file at `path`, created if missing, and locks it; again if another instance's
/// compaction replaced it between the two.
fn open_locked(path: &Path) -> Result<File, StoreError> {
    for _ in 0..100 {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| io_error("opening the queue file", e))?;
        lock_file(&file, path)?;
        if is_at(&file, path) {
            return Ok(file);
        }
    }
    Err(StoreError::Backend(format!("{} keeps being replaced", path.display())))
}

/// Removes `path` + `suffix` if it is there.
fn remove_beside(path: &Path, suffix: &str) {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    let _ = fs::remove_file(PathBuf::from(name));
}

impl FileStore {
    /// Opens (creating, or importing an SQLite queue of an earlier SDK at the same path) the
    /// queue file at `path` with the default durability.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::default())
    }

    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let file = open_locked(&path)?;
        // A compaction or an import a kill interrupted: the queue file is whole without it.
        match fs::remove_file(tmp_path(&path)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_error("removing a stale compaction", e)),
            _ => {}
        }
        let mut len = file.metadata().map_err(|e| io_error("reading the queue file", e))?.len();
        let mut head = [0u8; 16];
        let n = len.min(head.len() as u64) as usize;
        read_at(&file, &mut head[..n], 0).map_err(|e| io_error("reading the queue file", e))?;
        let created = n == 0;
        let file = if n == 16 && head == *super::sqlite_file::MAGIC {
            // Locked until the imported file (locked too) has replaced it.
            let imported = import(&path)?;
            drop(file);
            len = imported.metadata().map_err(|e| io_error("reading the queue file", e))?.len();
            imported
        } else if n < MAGIC.len() && MAGIC.starts_with(&head[..n]) {
            // New, or a kill while it was created.
            write_at(&file, MAGIC, 0).map_err(|e| io_error("writing the queue file", e))?;
            file.set_len(HEADER).map_err(|e| io_error("writing the queue file", e))?;
            if durability == Durability::Full {
                // Its name must survive a power cut as the first commits will.
                file.sync_all().and_then(|()| sync_dir(&path)).map_err(|e| io_error("creating the queue file", e))?;
            }
            len = HEADER;
            file
        } else if n >= MAGIC.len() && head[..MAGIC_FAMILY.len()] == *MAGIC_FAMILY && head[7] != MAGIC[7] {
            let found = i64::from(head[7].wrapping_sub(b'0'));
            return Err(StoreError::UnsupportedSchema { found, supported: FORMAT_VERSION });
        } else if n >= MAGIC.len() && head[..MAGIC.len()] == *MAGIC {
            // An import a kill interrupted after its rename leaves the SQLite log behind.
            remove_beside(&path, "-wal");
            remove_beside(&path, "-shm");
            file
        } else {
            return Err(StoreError::Corrupt(format!("{} is not a Trailmark queue file", path.display())));
        };
        let (mut index, end) = replay(&file, len)?;
        // Events deleted for privacy are still in the file (a purge that never got in place).
        let purge = std::mem::take(&mut index.purged);
        if end < len {
            // A torn or damaged tail: cut, so that new records follow the valid ones.
            file.set_len(end).map_err(|e| io_error("cutting a torn record", e))?;
        }
        let file = Arc::new(file);
        let background = Background::start(file.clone(), durability == Durability::Normal)?;
        if created && durability == Durability::Normal {
            // The new file's name reaches the disk with the first periodic sync (`Full` did it
            // above).
            lock(&background.shared).sync_dir = Some(path.clone());
            background.dirty.store(true, Ordering::Release);
        }
        let mut store = FileStore {
            path,
            file,
            end,
            published: Arc::new(AtomicU64::new(end)),
            index,
            durability,
            background,
            compacting: false,
            compact_after: 0,
            purge,
            purging: false,
            dir_unsynced: false,
            cut_to: None,
            cut: len - end,
            compactions: 0,
            max_record: MAX_RECORD,
            buf: Vec::new(),
        };
        if store.should_compact() {
            store.start_compaction();
        }
        Ok(store)
    }

    /// The file's current length.
    pub fn file_len(&self) -> u64 {
        self.end
    }

    /// Bytes of a torn or damaged tail cut when the file was opened (0 after a clean stop).
    pub fn cut_at_open(&self) -> u64 {
        self.cut
    }

    /// Compactions put in place since the store was opened.
    pub fn compactions(&self) -> u64 {
        self.compactions
    }

    /// Waits (up to `timeout`) for a running compaction to finish and puts its file in place;
    /// whether one was finished. Closing the store uses it, and tests.
    pub fn finish_compaction(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.compacting {
            if self.take_compaction() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    fn should_compact(&self) -> bool {
        !self.compacting
            && (self.purge
                || (self.end >= COMPACT_MIN.max(self.compact_after) && self.end - HEADER >= 2 * self.index.live_bytes))
    }

    fn start_compaction(&mut self) {
        let job = Job {
            source: self.file.clone(),
            end: self.end,
            published: self.published.clone(),
            slots: self.index.slots.clone(),
            state: self.index.state.clone(),
            tmp: tmp_path(&self.path),
        };
        lock(&self.background.shared).job = Some(job);
        self.compacting = true;
        self.purging = std::mem::take(&mut self.purge);
        self.background.wake();
    }

    /// Puts a finished compaction's file in place: what was appended since it started is
    /// copied after it, then it replaces the queue file. Whether one was taken (a failed one
    /// counts: it is dropped and retried after another [`COMPACT_MIN`] bytes).
    fn take_compaction(&mut self) -> bool {
        let Some(result) = lock(&self.background.shared).done.take() else { return false };
        self.compacting = false;
        let tmp = tmp_path(&self.path);
        // A failed write not yet cut off is where the old file ends: no swap before it is.
        let result = match self.cut_to {
            Some(_) => Err(io::Error::other("a failed write is not cut off yet")),
            None => result,
        };
        match result.and_then(|done| self.swap(done, &tmp)) {
            Ok(()) => self.compactions += 1,
            Err(_) => {
                let _ = fs::remove_file(&tmp);
                self.compact_after = self.end + COMPACT_MIN;
                // A purge is tried again at the next commit.
                self.purge |= self.purging;
            }
        }
        true
    }

    fn swap(&mut self, done: Done, tmp: &Path) -> io::Result<()> {
        let mismatch = || io::Error::other("a compaction missed a queued event");
        // The new offsets, all checked before anything is replaced.
        let shift = |offset: u64| offset - done.end + done.len;
        let mut moved = done.moved.iter().peekable();
        let mut offsets = Vec::with_capacity(self.index.slots.len());
        for slot in &self.index.slots {
            if slot.offset >= done.end {
                offsets.push(shift(slot.offset));
            } else {
                // Live when the job started, so in it; both lists are in `seq` order.
                while moved.peek().is_some_and(|(seq, _)| *seq < slot.seq) {
                    moved.next();
                }
                match moved.peek() {
                    Some((seq, offset)) if *seq == slot.seq => offsets.push(*offset),
                    _ => return Err(mismatch()),
                }
            }
        }
        // What was appended since the background thread's copy (usually the last commit or
        // nothing).
        let tail = self.end - done.end;
        let rest = tail.checked_sub(done.copied).ok_or_else(mismatch)?;
        copy_range(&self.file, done.end + done.copied, &done.file, done.len + done.copied, rest)?;
        if self.durability == Durability::Full && rest > 0 {
            // Those commits were fsynced in the old file: so they are in the new one.
            done.file.sync_data()?;
        }
        lock_file(&done.file, &self.path).map_err(|e| io::Error::other(e.to_string()))?;
        if let Ok(meta) = self.file.metadata() {
            let _ = done.file.set_permissions(meta.permissions());
        }
        fs::rename(tmp, &self.path)?;
        // In place: from here the old file is gone, whatever fails.
        for (slot, offset) in self.index.slots.iter_mut().zip(offsets) {
            slot.offset = offset;
        }
        self.end = done.len + tail;
        self.file = Arc::new(done.file);
        {
            let mut shared = lock(&self.background.shared);
            shared.sync = Some(self.file.clone());
            if self.durability == Durability::Normal {
                shared.sync_dir = Some(self.path.clone());
            }
        }
        self.background.dirty.store(true, Ordering::Release);
        if self.durability == Durability::Full {
            // The commits after this one go to the new file: its name must survive a power cut
            // (retried before the next commit returns if this fails).
            self.dir_unsynced = sync_dir(&self.path).is_err();
        }
        Ok(())
    }
}

impl Drop for FileStore {
    /// A running compaction is put in place if it finishes within 5 s, then a pending purge is
    /// run and put in place the same way (no commit may follow an opt-out). A compaction not
    /// finished in time still runs to its end on the background thread, which closing waits
    /// for; its file is then dropped (removed at the next open, which purges again).
    fn drop(&mut self) {
        if self.compacting {
            self.finish_compaction(Duration::from_secs(5));
        }
        if self.purge && !self.compacting && self.cut_to.is_none() {
            self.start_compaction();
            self.finish_compaction(Duration::from_secs(5));
        }
    }
}

/// Replaces an SQLite queue file at `path` (SDK versions before ADR 0022) with a queue file
/// holding the same events and state; returns it open and locked. A kill before the rename
/// leaves the SQLite file, imported again at the next open; after it, the new file is complete.
fn import(path: &Path) -> Result<File, StoreError> {
    let legacy = super::sqlite_file::read_queue(path)?;
    let tmp = tmp_path(path);
    let fail = |e: io::Error| {
        let _ = fs::remove_file(&tmp);
        io_error("importing the SQLite queue", e)
    };
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(fail)?;
    lock_file(&file, path)?;
    if let Ok(meta) = fs::metadata(path) {
        let _ = file.set_permissions(meta.permissions());
    }
    let events = legacy.events.into_iter().map(|e| {
        let slot = Slot { seq: e.seq, held: e.held, created_at: e.created_at, offset: 0, len: e.body.len() as u32 };
        Ok((slot, e.body))
    });
    write_snapshot(&file, legacy.state.as_deref(), events)
        .and_then(|_| file.sync_all())
        .and_then(|()| fs::rename(&tmp, path))
        .and_then(|()| sync_dir(path))
        .map_err(fail)?;
    // SQLite's log and shared-memory files belong to the replaced database (read above; the
    // rename is durable).
    remove_beside(path, "-wal");
    remove_beside(path, "-shm");
    Ok(file)
}

impl EventStore for FileStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let entries = self
            .index
            .slots
            .iter()
            .map(|s| IndexEntry { seq: s.seq, held: s.held, created_at: s.created_at, size: s.len })
            .collect();
        Ok(Snapshot { entries, state: self.index.state.clone() })
    }

    fn read(&mut self, seqs: &[u64]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut wanted: Vec<u64> = seqs.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let mut out = Vec::with_capacity(wanted.len());
        for seq in wanted {
            let Ok(i) = self.index.find(seq) else { continue };
            let slot = self.index.slots[i];
            let mut body = vec![0u8; slot.len as usize];
            read_at(&self.file, &mut body, slot.offset).map_err(|e| io_error("reading a queued event", e))?;
            out.push((seq, body));
        }
        Ok(out)
    }

    fn commit(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(at) = self.cut_to {
            self.file.set_len(at).map_err(|e| io_error("cutting a failed write", e))?;
            self.cut_to = None;
        }
        if self.compacting {
            self.take_compaction();
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.resize(RECORD_HEAD, 0);
        let offsets = encode(batch, &mut buf);
        let too_long = buf.len() - RECORD_HEAD > self.max_record;
        let start = self.end;
        let written = if too_long {
            Err(io::Error::other(format!("a write of more than {} bytes", self.max_record)))
        } else {
            seal(&mut buf);
            write_at(&self.file, &buf, start).and_then(|()| match self.durability {
                Durability::Full => self.file.sync_data(),
                Durability::Normal => Ok(()),
            })
        };
        let len = buf.len() as u64;
        // A large batch's buffer is not kept.
        self.buf = if buf.capacity() > SNAPSHOT_RECORD { Vec::new() } else { buf };
        if let Err(e) = written {
            // Nothing of a failed write may stay: the next record goes where this one started
            // (if the file cannot be cut now, it is before the next write).
            if !too_long && self.file.set_len(start).is_err() {
                self.cut_to = Some(start);
            }
            return Err(io_error("writing to the queue file", e));
        }
        self.end += len;
        self.published.store(self.end, Ordering::Release);
        let mut dir_error = None;
        if self.dir_unsynced {
            // The record is in the file; a retry of this batch (the engine retries a failed
            // commit as it was) writes the same again.
            match sync_dir(&self.path) {
                Ok(()) => self.dir_unsynced = false,
                Err(e) => dir_error = Some(io_error("syncing the queue's directory", e)),
            }
        }
        self.background.dirty.store(true, Ordering::Release);
        let inserts: Vec<Slot> = batch
            .inserts
            .iter()
            .zip(offsets)
            .map(|(e, o)| Slot {
                seq: e.seq,
                held: e.held,
                created_at: e.created_at,
                offset: start + o,
                len: e.body.len() as u32,
            })
            .collect();
        let mut flags = 0;
        if batch.delete_all {
            flags |= F_DELETE_ALL;
        }
        if batch.delete_held {
            flags |= F_DELETE_HELD;
        }
        if batch.release_held {
            flags |= F_RELEASE_HELD;
        }
        self.index.apply(flags, &batch.deletes, &inserts, batch.state.clone());
        // A compaction running now copies what it started with, the deleted events too: the
        // purge waits for the next one.
        self.purge |= std::mem::take(&mut self.index.purged);
        if self.should_compact() {
            self.start_compaction();
        }
        match dir_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredEvent;

    fn ev(seq: u64, held: bool, body: &str) -> StoredEvent {
        StoredEvent { seq, held, created_at: seq as i64 * 10, body: body.as_bytes().to_vec() }
    }

    /// A queued event as `(seq, held, created_at, body)`.
    type Row = (u64, bool, i64, Vec<u8>);

    fn contents(s: &mut FileStore) -> (Vec<Row>, Option<Vec<u8>>) {
        let snap = s.load().unwrap();
        let seqs: Vec<u64> = snap.entries.iter().map(|e| e.seq).collect();
        let bodies = s.read(&seqs).unwrap();
        assert_eq!(bodies.len(), seqs.len());
        let events = snap
            .entries
            .iter()
            .zip(bodies)
            .map(|(e, (seq, body))| {
                assert_eq!((e.seq, e.size as usize), (seq, body.len()));
                (e.seq, e.held, e.created_at, body)
            })
            .collect();
        (events, snap.state)
    }

    /// The queued seqs of the file at `path`, opened again (with nothing to cut).
    fn reopened(path: &Path) -> Vec<u64> {
        let mut s = FileStore::open(path).unwrap();
        assert_eq!(s.cut_at_open(), 0);
        contents(&mut s).0.iter().map(|e| e.0).collect()
    }

    /// Waits until the running compaction's file is written (not put in place).
    fn compaction_written(s: &FileStore) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while lock(&s.background.shared).done.is_none() {
            assert!(Instant::now() < deadline, "the compaction never finished");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn commits_are_replayed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        {
            let mut s = FileStore::open(&path).unwrap();
            let batch = WriteBatch {
                inserts: vec![ev(1, true, "{\"n\":1}"), ev(2, true, "{\"n\":2}"), ev(3, false, "{\"n\":3}")],
                state: Some(b"state-1".to_vec()),
                ..Default::default()
            };
            s.commit(&batch).unwrap();
            s.commit(&WriteBatch { release_held: true, deletes: vec![2], ..Default::default() }).unwrap();
            s.commit(&WriteBatch { inserts: vec![ev(3, true, "three"), ev(4, true, "")], ..Default::default() })
                .unwrap();
            s.commit(&WriteBatch { delete_held: true, inserts: vec![ev(5, true, "5")], ..Default::default() }).unwrap();
        }
        let mut s = FileStore::open(&path).unwrap();
        assert_eq!(s.cut_at_open(), 0);
        let (events, state) = contents(&mut s);
        assert_eq!(state.as_deref(), Some(&b"state-1"[..]));
        // 3 was replaced (held) and then deleted with the held ones; 5 came after that.
        assert_eq!(events, vec![(1, false, 10, b"{\"n\":1}".to_vec()), (5, true, 50, b"5".to_vec())]);
        assert_eq!(s.read(&[5, 1, 99, 1]).unwrap(), vec![(1, b"{\"n\":1}".to_vec()), (5, b"5".to_vec())]);
        s.commit(&WriteBatch { delete_all: true, state: Some(b"s2".to_vec()), ..Default::default() }).unwrap();
        drop(s);
        let mut s = FileStore::open(&path).unwrap();
        assert_eq!(contents(&mut s), (vec![], Some(b"s2".to_vec())));
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_next_commit_follows_the_valid_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let mut s = FileStore::open(&path).unwrap();
        s.commit(&WriteBatch { inserts: vec![ev(1, false, "one")], ..Default::default() }).unwrap();
        let whole = s.file_len();
        s.commit(&WriteBatch { inserts: vec![ev(2, false, "two")], ..Default::default() }).unwrap();
        let full = s.file_len();
        drop(s);
        let bytes = fs::read(&path).unwrap();
        // Every cut inside the second record (as a kill during its write leaves it), and the
        // record whole but with a flipped bit: the first record is kept, the second dropped.
        let mut damaged: Vec<Vec<u8>> = (whole as usize + 1..full as usize).map(|n| bytes[..n].to_vec()).collect();
        let mut flipped = bytes.clone();
        flipped[full as usize - 2] ^= 0x10;
        damaged.push(flipped);
        for case in damaged {
            fs::write(&path, &case).unwrap();
            let mut s = FileStore::open(&path).unwrap();
            assert_eq!(s.cut_at_open(), case.len() as u64 - whole, "{} bytes", case.len());
            assert_eq!(contents(&mut s).0, vec![(1, false, 10, b"one".to_vec())]);
            s.commit(&WriteBatch { inserts: vec![ev(3, false, "three")], ..Default::default() }).unwrap();
            drop(s);
            assert_eq!(reopened(&path), vec![1, 3]);
        }
    }

    #[test]
    fn files_of_other_kinds_or_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        fs::write(&path, b"TMQUEUE2 and more").unwrap();
        assert!(matches!(
            FileStore::open(&path),
            Err(StoreError::UnsupportedSchema { found: 2, supported: FORMAT_VERSION })
        ));
        fs::write(&path, b"{\"not\": \"a queue\"}").unwrap();
        assert!(matches!(FileStore::open(&path), Err(StoreError::Corrupt(_))));
        // A kill while the file was created: started again.
        fs::write(&path, b"TMQ").unwrap();
        let mut s = FileStore::open(&path).unwrap();
        assert_eq!(contents(&mut s), (vec![], None));
    }

    #[test]
    fn compaction_keeps_the_live_events_and_what_was_written_while_it_ran() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let mut s = FileStore::open(&path).unwrap();
        let body = |seq: u64| format!("{{\"n\":{seq},\"pad\":\"{}\"}}", "x".repeat(200)).into_bytes();
        let mut seq = 0u64;
        let mut compactions = 0;
        // Events queued and delivered (deleted) in order, the oldest 50 held throughout.
        for round in 0..400u64 {
            let inserts: Vec<StoredEvent> = (0..50)
                .map(|_| {
                    seq += 1;
                    StoredEvent { seq, held: seq <= 50, created_at: seq as i64, body: body(seq) }
                })
                .collect();
            // The round before is delivered, but for the held ones (round 0).
            let deletes =
                if round > 0 { ((round - 1) * 50 + 1..=round * 50).filter(|s| *s > 50).collect() } else { vec![] };
            let state = Some(format!("state {round}").into_bytes());
            s.commit(&WriteBatch { inserts, deletes, state, ..Default::default() }).unwrap();
            if s.compacting {
                // A commit while the compaction runs goes into its file too.
                s.commit(&WriteBatch { deletes: vec![seq], ..Default::default() }).unwrap();
                assert!(s.finish_compaction(Duration::from_secs(10)), "the compaction never finished");
                compactions += 1;
            }
        }
        assert!(compactions >= 2, "{compactions} compactions");
        assert_eq!(s.compactions(), compactions, "each was put in place");
        assert!(s.file_len() < 4 * COMPACT_MIN, "the file stays small: {} bytes", s.file_len());
        let expected = contents(&mut s);
        drop(s);
        let mut s = FileStore::open(&path).unwrap();
        assert_eq!(contents(&mut s), expected, "the compacted file replays to the same contents");
        assert!(!tmp_path(&path).exists());
        let (events, state) = expected;
        assert_eq!(state, Some(b"state 399".to_vec()));
        assert!(events.iter().filter(|e| e.0 <= 50).all(|e| e.1), "held events stay held");
        for (seq, _, _, b) in &events {
            assert_eq!(b, &body(*seq));
        }
    }

    #[test]
    fn a_failed_write_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let mut s = FileStore::open(&path).unwrap();
        s.commit(&WriteBatch { inserts: vec![ev(1, false, "one")], ..Default::default() }).unwrap();
        let len = s.file_len();
        s.max_record = 1_000;
        let too_big = WriteBatch {
            inserts: vec![StoredEvent { seq: 2, held: false, created_at: 0, body: vec![b'x'; 2_000] }],
            ..Default::default()
        };
        assert!(matches!(s.commit(&too_big), Err(StoreError::Backend(_))));
        assert_eq!(s.file_len(), len);
        assert_eq!(fs::metadata(&path).unwrap().len(), len);
        s.commit(&WriteBatch { inserts: vec![ev(3, false, "three")], ..Default::default() }).unwrap();
        drop(s);
        assert_eq!(reopened(&path), vec![1, 3]);
    }

    #[test]
    fn a_second_store_on_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let mut s = FileStore::open(&path).unwrap();
        s.commit(&WriteBatch { inserts: vec![ev(1, false, "one")], ..Default::default() }).unwrap();
        match FileStore::open(&path) {
            Err(StoreError::Backend(m)) => assert!(m.contains("in use"), "{m}"),
            other => panic!("a second store opened: {:?}", other.map(|s| s.file_len())),
        }
        // The first is untouched, and the file is free once it is closed.
        s.commit(&WriteBatch { inserts: vec![ev(2, false, "two")], ..Default::default() }).unwrap();
        drop(s);
        let mut s = FileStore::open(&path).unwrap();
        assert_eq!(contents(&mut s).0.len(), 2);
    }

    #[test]
    fn a_compaction_cut_short_by_a_kill_leaves_the_file_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let mut s = FileStore::open(&path).unwrap();
        let mut seq = 0;
        while !s.compacting {
            seq += 1;
            let body = vec![b'x'; 4_000];
            s.commit(&WriteBatch {
                inserts: vec![StoredEvent { seq, held: false, created_at: 0, body }],
                deletes: if seq > 2 { vec![seq - 2] } else { vec![] },
                ..Default::default()
            })
            .unwrap();
        }
        // The compaction's file is written but never put in place: as after a kill between
        // the two.
        let before = contents(&mut s);
        compaction_written(&s);
        s.compacting = false;
        drop(s);
        assert!(tmp_path(&path).exists());
        let mut s = FileStore::open(&path).unwrap();
        // The file is still half dead, so opening starts a compaction of its own at once (its
        // file may appear before any check here could see the leftover gone): wait for it.
        assert!(s.compacting, "opening a half-dead file compacts it");
        assert!(s.finish_compaction(Duration::from_secs(10)), "the compaction never finished");
        assert_eq!(s.compactions(), 1);
        assert!(!tmp_path(&path).exists());
        assert_eq!(contents(&mut s), before);
        assert_eq!(contents(&mut s).0.iter().map(|e| e.0).collect::<Vec<_>>(), vec![seq - 1, seq]);
        drop(s);
        // A leftover beside a file that does not need compacting is removed by opening alone.
        fs::write(tmp_path(&path), b"a leftover").unwrap();
        let mut s = FileStore::open(&path).unwrap();
        assert!(!s.compacting);
        assert!(!tmp_path(&path).exists(), "the leftover is removed");
        assert_eq!(contents(&mut s), before);
    }

    #[test]
    fn damaged_files_never_panic_and_stay_usable() {
        use rand_chacha::ChaCha8Rng;
        use rand_core::{RngCore, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let mut s = FileStore::open(&path).unwrap();
        for seq in 1..=40u64 {
            let batch = WriteBatch {
                inserts: vec![ev(seq, seq % 4 == 0, &"y".repeat(seq as usize * 3))],
                deletes: if seq % 5 == 0 { vec![seq - 3] } else { vec![] },
                release_held: seq % 9 == 0,
                state: (seq % 3 == 0).then(|| format!("state {seq}").into_bytes()),
                ..Default::default()
            };
            s.commit(&batch).unwrap();
        }
        drop(s);
        let whole = fs::read(&path).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(18);
        for _ in 0..500 {
            let mut bytes = whole.clone();
            for _ in 0..1 + rng.next_u32() % 4 {
                let i = rng.next_u32() as usize % bytes.len();
                bytes[i] = rng.next_u32() as u8;
            }
            if rng.next_u32() % 4 == 0 {
                bytes.truncate(rng.next_u32() as usize % bytes.len());
            }
            fs::write(&path, &bytes).unwrap();
            // Refused (a damaged magic) or opened with a prefix of the records; then usable.
            if let Ok(mut s) = FileStore::open(&path) {
                let (events, _) = contents(&mut s);
                s.commit(&WriteBatch { inserts: vec![ev(1_000, false, "after")], ..Default::default() }).unwrap();
                drop(s);
                let mut s = FileStore::open(&path).unwrap();
                assert_eq!(contents(&mut s).0.len(), events.len() + 1);
            }
        }
    }

    #[test]
    fn an_opt_out_leaves_no_event_bytes_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q");
        let mut s = FileStore::open(&path).unwrap();
        let secret = "jane@example.com-properties";
        s.commit(&WriteBatch { inserts: vec![ev(1, false, secret), ev(2, true, secret)], ..Default::default() })
            .unwrap();
        s.commit(&WriteBatch { delete_all: true, state: Some(b"opted out".to_vec()), ..Default::default() }).unwrap();
        // No commit follows an opt-out: closing the store puts the purge in place.
        drop(s);
        let bytes = fs::read(&path).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "the deleted events are gone");
        // The same with a compaction running when the opt-out comes: the purge runs after it.
        let mut s = FileStore::open(&path).unwrap();
        s.commit(&WriteBatch { inserts: vec![ev(7, false, secret)], ..Default::default() }).unwrap();
        s.start_compaction();
        s.commit(&WriteBatch { delete_all: true, state: Some(b"opted out".to_vec()), ..Default::default() }).unwrap();
        drop(s);
        let bytes = fs::read(&path).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "the deleted events are gone");
        let mut s = FileStore::open(&path).unwrap();
        assert_eq!(contents(&mut s), (vec![], Some(b"opted out".to_vec())));
        // A purge that never got in place (a kill) is done at the next open.
        s.commit(&WriteBatch { inserts: vec![ev(5, false, secret)], ..Default::default() }).unwrap();
        s.commit(&WriteBatch { delete_all: true, ..Default::default() }).unwrap();
        compaction_written(&s);
        s.compacting = false; // killed before the swap
        drop(s);
        assert!(fs::read(&path).unwrap().windows(secret.len()).any(|w| w == secret.as_bytes()));
        let mut s = FileStore::open(&path).unwrap();
        assert!(s.finish_compaction(Duration::from_secs(10)), "a purge started at open");
        assert!(!fs::read(&path).unwrap().windows(secret.len()).any(|w| w == secret.as_bytes()));
        // The pre-consent buffer dropped: the held events go the same way.
        s.commit(&WriteBatch { inserts: vec![ev(3, true, secret), ev(4, false, "kept")], ..Default::default() })
            .unwrap();
        s.commit(&WriteBatch { delete_held: true, ..Default::default() }).unwrap();
        assert!(s.finish_compaction(Duration::from_secs(10)));
        let bytes = fs::read(&path).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        assert_eq!(contents(&mut s).0.len(), 1);
    }
}
