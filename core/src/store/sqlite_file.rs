//! Reads the queue that SDK versions before ADR 0022 kept in SQLite (`SqliteStore`: tables
//! `events (seq INTEGER PRIMARY KEY, held, created_at, body)` and `meta (key, value)`), without
//! linking SQLite: [`super::file::FileStore`] imports it once when it finds such a file at its
//! path. Read-only and only what those two tables need, from SQLite's documented file format
//! (<https://www.sqlite.org/fileformat2.html>): the database header, table B-trees, overflow
//! pages, records, and the write-ahead log's committed frames (an app killed with commits not
//! yet checkpointed leaves them only there).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;

use super::StoreError;

/// The first 16 bytes of every SQLite database file.
pub(crate) const MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// The schema version (`PRAGMA user_version`) `SqliteStore` wrote.
const SCHEMA_VERSION: i64 = 1;
const WAL_HEADER: usize = 32;
const FRAME_HEADER: usize = 24;

/// One queued event as the SQLite store kept it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    pub seq: u64,
    pub held: bool,
    pub created_at: i64,
    pub body: Vec<u8>,
}

/// What an SQLite queue file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queue {
    /// In `seq` order.
    pub events: Vec<QueuedEvent>,
    pub state: Option<Vec<u8>>,
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("SQLite queue file: {what}"))
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    b.get(at..at + 2).map(|s| usize::from(u16::from_be_bytes([s[0], s[1]])))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4).map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// SQLite's variable-length integer: 1 to 9 bytes, big-endian, 7 bits a byte (8 in the 9th).
fn varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..9 {
        let byte = *b.get(*at)?;
        *at += 1;
        if i == 8 {
            return Some((v << 8) | u64::from(byte));
        }
        v = (v << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Null,
    Int(i64),
    Bytes(Vec<u8>),
}

/// A record's columns (floats are read as `Null`: the queue has none).
fn record(payload: &[u8]) -> Option<Vec<Value>> {
    let mut at = 0;
    let header_len = usize::try_from(varint(payload, &mut at)?).ok()?;
    let mut body = header_len;
    let mut values = Vec::new();
    while at < header_len {
        let serial = varint(payload, &mut at)?;
        let (len, value) = match serial {
            0 => (0, Some(Value::Null)),
            1..=4 => (serial as usize, None),
            5 => (6, None),
            6 | 7 => (8, None),
            8 => (0, Some(Value::Int(0))),
            9 => (0, Some(Value::Int(1))),
            10 | 11 => return None,
            n => (usize::try_from((n - 12) / 2).ok()?, None),
        };
        let bytes = payload.get(body..body.checked_add(len)?)?;
        body += len;
        values.push(match (value, serial) {
            (Some(v), _) => v,
            (None, 1..=6) => {
                // Big-endian two's complement of `len` bytes.
                let mut v = if bytes[0] & 0x80 != 0 { -1i64 } else { 0 };
                for b in bytes {
                    v = (v << 8) | i64::from(*b);
                }
                Value::Int(v)
            }
            (None, 7) => Value::Null,
            (None, _) => Value::Bytes(bytes.to_vec()),
        });
    }
    Some(values)
}

/// The database's pages: the file's, with the write-ahead log's committed frames over them.
struct Pages {
    db: Vec<u8>,
    page_size: usize,
    usable: usize,
    /// Page number → offset of its newest committed copy in `wal`.
    frames: HashMap<u32, usize>,
    wal: Vec<u8>,
    /// Pages read so far: a page belongs to one B-tree node or overflow chain, so one read
    /// twice is a loop (or a crafted file), refused.
    used: RefCell<HashSet<u32>>,
    /// Payload bytes read so far: never more than the files hold (cells can point at one
    /// another's bytes).
    read: std::cell::Cell<usize>,
}

impl Pages {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let read_error = |e: std::io::Error| StoreError::Backend(format!("reading the SQLite queue: {e}"));
        let db = fs::read(path).map_err(read_error)?;
        let mut wal_path = path.as_os_str().to_os_string();
        wal_path.push("-wal");
        // Only a missing log is an empty one: its commits would be lost with it.
        let wal = match fs::read(&wal_path) {
            Ok(wal) => wal,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(read_error(e)),
        };
        Self::from_bytes(db, wal)
    }

    fn from_bytes(db: Vec<u8>, wal: Vec<u8>) -> Result<Self, StoreError> {
        if db.len() < 100 || db[..16] != *MAGIC {
            return Err(corrupt("no database header"));
        }
        let page_size = match be16(&db, 16) {
            Some(1) => 65_536,
            Some(n) if n >= 512 && n.is_power_of_two() => n,
            _ => return Err(corrupt("bad page size")),
        };
        let usable = page_size - usize::from(db[20]);
        if usable < 480 {
            return Err(corrupt("bad reserved space"));
        }
        let mut pages = Pages {
            db,
            page_size,
            usable,
            frames: HashMap::new(),
            wal,
            used: RefCell::default(),
            read: Default::default(),
        };
        pages.read_wal();
        Ok(pages)
    }

    /// Indexes the log's frames up to its last valid commit (a frame is valid when its salts
    /// are the header's and the running checksum matches; the first invalid one ends the log).
    fn read_wal(&mut self) {
        let wal = &self.wal;
        if wal.len() < WAL_HEADER {
            return;
        }
        let big_endian = match be32(wal, 0) {
            Some(0x377f_0682) => false,
            Some(0x377f_0683) => true,
            _ => return,
        };
        if be32(wal, 8) != Some(self.page_size as u32) {
            return;
        }
        let sum = |seed: (u32, u32), bytes: &[u8]| {
            let (mut s0, mut s1) = seed;
            for pair in bytes.chunks_exact(8) {
                let word = |b: &[u8]| {
                    let a = [b[0], b[1], b[2], b[3]];
                    if big_endian { u32::from_be_bytes(a) } else { u32::from_le_bytes(a) }
                };
                s0 = s0.wrapping_add(word(&pair[..4])).wrapping_add(s1);
                s1 = s1.wrapping_add(word(&pair[4..])).wrapping_add(s0);
            }
            (s0, s1)
        };
        let mut check = sum((0, 0), &wal[..24]);
        if (be32(wal, 24), be32(wal, 28)) != (Some(check.0), Some(check.1)) {
            return;
        }
        let salts = &wal[16..24];
        let mut pending = Vec::new();
        let mut at = WAL_HEADER;
        while at + FRAME_HEADER + self.page_size <= wal.len() {
            let frame = &wal[at..at + FRAME_HEADER];
            if frame[8..16] != *salts {
                break;
            }
            check = sum(check, &frame[..8]);
            check = sum(check, &wal[at + FRAME_HEADER..at + FRAME_HEADER + self.page_size]);
            if (be32(frame, 16), be32(frame, 20)) != (Some(check.0), Some(check.1)) {
                break;
            }
            pending.push((be32(frame, 0).unwrap_or(0), at + FRAME_HEADER));
            if be32(frame, 4).unwrap_or(0) != 0 {
                // A commit frame: its transaction's pages are in.
                self.frames.extend(pending.drain(..));
            }
            at += FRAME_HEADER + self.page_size;
        }
    }

    /// Page `n`, read once: a second read of a page is refused (see `used`).
    fn page(&self, n: u32) -> Result<&[u8], StoreError> {
        if !self.used.borrow_mut().insert(n) {
            return Err(corrupt("a page used twice"));
        }
        if let Some(at) = self.frames.get(&n) {
            return self.wal.get(*at..at.saturating_add(self.page_size)).ok_or_else(|| corrupt("a log frame"));
        }
        let start = u64::from(n).checked_sub(1).ok_or_else(|| corrupt("page 0"))? * self.page_size as u64;
        let end = start + self.page_size as u64;
        if end > self.db.len() as u64 {
            return Err(corrupt("a page past the end"));
        }
        Ok(&self.db[start as usize..end as usize])
    }

    /// Calls `row` with each row (rowid, columns) of the table B-tree rooted at `root`.
    fn scan(&self, root: u32, row: &mut dyn FnMut(i64, Vec<Value>)) -> Result<(), StoreError> {
        let mut stack = vec![root];
        while let Some(n) = stack.pop() {
            let page = self.page(n)?;
            let h = if n == 1 { 100 } else { 0 };
            let kind = *page.get(h).ok_or_else(|| corrupt("short page"))?;
            let cells = be16(page, h + 3).ok_or_else(|| corrupt("short page"))?;
            match kind {
                // Interior: children left to right, then the right-most; pushed in reverse
                // so rows come out in rowid order.
                0x05 => {
                    let mut children = Vec::with_capacity(cells + 1);
                    for i in 0..cells {
                        let cell = be16(page, h + 12 + 2 * i).ok_or_else(|| corrupt("cell pointer"))?;
                        children.push(be32(page, cell).ok_or_else(|| corrupt("child pointer"))?);
                    }
                    children.push(be32(page, h + 8).ok_or_else(|| corrupt("right-most pointer"))?);
                    stack.extend(children.into_iter().rev());
                }
                0x0d => {
                    for i in 0..cells {
                        let cell = be16(page, h + 8 + 2 * i).ok_or_else(|| corrupt("cell pointer"))?;
                        let (rowid, payload) = self.leaf_cell(page, cell)?;
                        row(rowid, record(&payload).ok_or_else(|| corrupt("a record"))?);
                    }
                }
                _ => return Err(corrupt("not a table B-tree page")),
            }
        }
        Ok(())
    }

    /// A table leaf cell's rowid and whole payload (following its overflow pages).
    fn leaf_cell(&self, page: &[u8], cell: usize) -> Result<(i64, Vec<u8>), StoreError> {
        let bad = || corrupt("a cell");
        let mut at = cell;
        let size = usize::try_from(varint(page, &mut at).ok_or_else(bad)?).map_err(|_| bad())?;
        // No payload, nor all of them together, is longer than the files they are read from.
        let total = self.read.get().saturating_add(size);
        if total > self.db.len() + self.wal.len() {
            return Err(corrupt("more payload than the files hold"));
        }
        self.read.set(total);
        let rowid = varint(page, &mut at).ok_or_else(bad)? as i64;
        let u = self.usable;
        let max_local = u - 35;
        let local = if size <= max_local {
            size
        } else {
            let min_local = (u - 12) * 32 / 255 - 23;
            let k = min_local + (size - min_local) % (u - 4);
            if k <= max_local { k } else { min_local }
        };
        let mut payload = Vec::new();
        payload.extend_from_slice(page.get(at..at + local).ok_or_else(bad)?);
        let mut next = if local < size { be32(page, at + local).ok_or_else(bad)? } else { 0 };
        while payload.len() < size {
            if next == 0 {
                return Err(corrupt("an overflow chain"));
            }
            let overflow = self.page(next)?;
            let take = (size - payload.len()).min(u - 4);
            payload.extend_from_slice(overflow.get(4..4 + take).ok_or_else(bad)?);
            next = be32(overflow, 0).ok_or_else(bad)?;
        }
        Ok((rowid, payload))
    }
}

/// Reads the queue and state of an SQLite queue file (and its `-wal`) at `path`.
pub fn read_queue(path: &Path) -> Result<Queue, StoreError> {
    read(Pages::open(path)?)
}

/// [`read_queue`] of a database file's and its log's bytes (the fuzz target's entry).
pub fn read_queue_bytes(db: Vec<u8>, wal: Vec<u8>) -> Result<Queue, StoreError> {
    read(Pages::from_bytes(db, wal)?)
}

fn read(pages: Pages) -> Result<Queue, StoreError> {
    let page1 = pages.db.get(..100).ok_or_else(|| corrupt("no database header"))?;
    let page1 = match pages.frames.get(&1) {
        Some(at) => pages.wal.get(*at..*at + 100).ok_or_else(|| corrupt("a log frame"))?,
        None => page1,
    };
    let version = i64::from(be32(page1, 60).unwrap_or(0));
    if version > SCHEMA_VERSION {
        return Err(StoreError::UnsupportedSchema { found: version, supported: SCHEMA_VERSION });
    }
    // The schema table: (type, name, tbl_name, rootpage, sql).
    let mut roots: HashMap<Vec<u8>, u32> = HashMap::new();
    pages.scan(1, &mut |_, cols| {
        if let [Value::Bytes(kind), Value::Bytes(name), _, Value::Int(root), ..] = &cols[..]
            && kind == b"table"
        {
            roots.insert(name.clone(), *root as u32);
        }
    })?;
    // The SDK's own file holds these two tables and nothing else; another application's
    // database at the queue's path is not replaced.
    if let Some(other) = roots.keys().find(|name| !matches!(name.as_slice(), b"events" | b"meta")) {
        return Err(StoreError::Corrupt(format!(
            "the SQLite database at the queue's path holds a table `{}`: not a Trailmark queue",
            String::from_utf8_lossy(other)
        )));
    }
    let mut queue = Queue::default();
    if let Some(root) = roots.get(&b"events"[..]) {
        let mut bad = false;
        pages.scan(*root, &mut |rowid, cols| match &cols[..] {
            [_, Value::Int(held), Value::Int(created_at), Value::Bytes(body)] => queue.events.push(QueuedEvent {
                seq: rowid as u64,
                held: *held != 0,
                created_at: *created_at,
                body: body.clone(),
            }),
            // An empty body is stored as a zero-length blob; anything else is not the queue.
            _ => bad = true,
        })?;
        if bad {
            return Err(corrupt("an events row of another shape"));
        }
    }
    if let Some(root) = roots.get(&b"meta"[..]) {
        pages.scan(*root, &mut |_, cols| {
            if let [Value::Bytes(key), Value::Bytes(value)] = &cols[..]
                && key == b"state"
            {
                queue.state = Some(value.clone());
            }
        })?;
    }
    Ok(queue)
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use super::*;
    use crate::store::{EventStore, SqliteStore, StoredEvent, WriteBatch};

    fn body(seq: u64) -> Vec<u8> {
        // Sizes from a few bytes to several pages (overflow chains of 0 to 5 pages).
        let pad = (seq as usize * 7919) % 20_000;
        format!("{{\"n\":{seq},\"pad\":\"{}\"}}", "é".repeat(pad / 2)).into_bytes()
    }

    fn expected(seqs: impl Iterator<Item = u64>) -> Vec<QueuedEvent> {
        seqs.map(|seq| QueuedEvent { seq, held: seq % 3 == 0, created_at: -(seq as i64) * 1000, body: body(seq) })
            .collect()
    }

    /// Copies the database and its log as a killed app leaves them.
    fn snapshot(from: &Path, to: &Path) {
        fs::copy(from, to).unwrap();
        if wal_of(from).exists() {
            fs::copy(wal_of(from), wal_of(to)).unwrap();
        }
    }

    #[test]
    fn the_sqlite_queue_is_read_from_the_database_and_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let mut store = SqliteStore::open(&path).unwrap();
        let batch = |range: std::ops::RangeInclusive<u64>| WriteBatch {
            inserts: expected(range)
                .into_iter()
                .map(|e| StoredEvent { seq: e.seq, held: e.held, created_at: e.created_at, body: e.body })
                .collect(),
            state: Some(b"{\"anonymous_id\":\"a\"}".to_vec()),
            ..WriteBatch::default()
        };
        store.commit(&batch(1..=400)).unwrap();
        // Into the database file, then more commits only in the log.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        store.commit(&WriteBatch { deletes: (1..=100).collect(), ..WriteBatch::default() }).unwrap();
        store.commit(&batch(401..=450)).unwrap();
        store.commit(&WriteBatch { state: Some(b"newer".to_vec()), ..WriteBatch::default() }).unwrap();
        let copy = dir.path().join("killed.db");
        snapshot(&path, &copy);
        let queue = read_queue(&copy).unwrap();
        assert_eq!(queue.state.as_deref(), Some(&b"newer"[..]));
        assert_eq!(queue.events.len(), 350);
        assert_eq!(queue.events, expected(101..=450), "every row, in order, from both files");

        assert_eq!(queue, sqlite_reads(&copy), "what SQLite itself reads from the same files");

        // A log whose last frames are torn (cut 100 bytes short, then 5,000): the commits
        // before the torn frame are read, as SQLite reads them.
        for cut in [100, 5_000] {
            let torn = dir.path().join(format!("torn-{cut}.db"));
            snapshot(&path, &torn);
            let wal = wal_of(&torn);
            let bytes = fs::read(&wal).unwrap();
            fs::write(&wal, &bytes[..bytes.len() - cut]).unwrap();
            let ours = read_queue(&torn).unwrap();
            assert_eq!(ours, sqlite_reads(&torn), "cut {cut}");
        }
    }

    fn wal_of(p: &Path) -> std::path::PathBuf {
        let mut s = p.as_os_str().to_os_string();
        s.push("-wal");
        std::path::PathBuf::from(s)
    }

    /// The queue as SQLite reads it (which may checkpoint the log: read ours first).
    fn sqlite_reads(path: &Path) -> Queue {
        let conn = rusqlite::Connection::open(path).unwrap();
        let mut stmt = conn.prepare("SELECT seq, held, created_at, body FROM events ORDER BY seq").unwrap();
        let events = stmt
            .query_map([], |r| {
                Ok(QueuedEvent {
                    seq: r.get::<_, i64>(0)? as u64,
                    held: r.get(1)?,
                    created_at: r.get(2)?,
                    body: r.get(3)?,
                })
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let state = conn.query_row("SELECT value FROM meta WHERE key = 'state'", [], |r| r.get(0)).ok();
        Queue { events, state }
    }

    #[test]
    fn an_empty_or_newer_sqlite_queue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        drop(SqliteStore::open(&path).unwrap());
        assert_eq!(read_queue(&path).unwrap(), Queue::default());
        rusqlite::Connection::open(&path).unwrap().execute_batch("PRAGMA user_version=7;").unwrap();
        assert!(matches!(read_queue(&path), Err(StoreError::UnsupportedSchema { found: 7, .. })));
        fs::write(&path, b"SQLite format 3\0 but nothing else").unwrap();
        assert!(matches!(read_queue(&path), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn another_applications_database_is_not_imported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO users VALUES (1, 'a');",
        )
        .unwrap();
        drop(conn);
        let before = fs::read(&path).unwrap();
        assert!(matches!(read_queue(&path), Err(StoreError::Corrupt(m)) if m.contains("users")));
        assert!(crate::store::FileStore::open(&path).is_err());
        assert_eq!(fs::read(&path).unwrap(), before, "left as it was");
    }

    #[test]
    fn damaged_sqlite_files_never_panic() {
        use rand_chacha::ChaCha8Rng;
        use rand_core::{RngCore, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.db");
        let mut store = SqliteStore::open(&path).unwrap();
        let inserts = expected(1..=60)
            .into_iter()
            .map(|e| StoredEvent { seq: e.seq, held: e.held, created_at: e.created_at, body: e.body })
            .collect();
        store.commit(&WriteBatch { inserts, state: Some(b"s".to_vec()), ..WriteBatch::default() }).unwrap();
        let copy = dir.path().join("copy.db");
        snapshot(&path, &copy);
        let db = fs::read(&copy).unwrap();
        let wal = fs::read(wal_of(&copy)).unwrap_or_default();
        assert_eq!(read_queue_bytes(db.clone(), wal.clone()).unwrap().events.len(), 60);
        let mut rng = ChaCha8Rng::seed_from_u64(22);
        for round in 0..400 {
            let (mut d, mut w) = (db.clone(), wal.clone());
            let target = if round % 2 == 0 || w.is_empty() { &mut d } else { &mut w };
            for _ in 0..1 + rng.next_u32() % 6 {
                let i = rng.next_u32() as usize % target.len();
                target[i] = rng.next_u32() as u8;
            }
            // Ok or an error; never a panic, never more than the files hold.
            if let Ok(q) = read_queue_bytes(d.clone(), w.clone()) {
                let total: usize = q.events.iter().map(|e| e.body.len()).sum();
                assert!(total <= d.len() + w.len());
            }
        }
    }
}
