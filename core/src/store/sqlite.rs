//! SQLite implementation of [`EventStore`]: bundled SQLite, WAL journal, versioned schema.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::{EventStore, IndexEntry, Snapshot, StoreError, WriteBatch};

/// Schema version this SDK writes. Each migration step below moves one version up.
const SCHEMA_VERSION: i64 = 1;

pub use super::Durability;

/// A queue in one SQLite file.
///
/// WAL checkpoints (which copy the log into the database and fsync it) run on a background
/// thread with its own connection, never inside a commit: a checkpoint can stall for tens of
/// milliseconds, and the driver promises durability within 50 ms of `track`.
pub struct SqliteStore {
    conn: Connection,
    checkpointer: Option<Checkpointer>,
}

/// Runs `PRAGMA wal_checkpoint(PASSIVE)` about once a second until dropped, on a thread with
/// its own connection, so that commits (with `wal_autocheckpoint=0`) never wait for a
/// checkpoint's writes and fsync. A passive checkpoint never blocks the writer. The SDK store
/// and the server's storage both use it; under commits that never pause the log cannot start
/// over after it, so the server's writer also finishes a checkpoint between two groups once
/// its log is long (`server-lib/src/storage/sqlite/mod.rs`).
pub struct Checkpointer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub fn start(path: &Path) -> Result<Self, StoreError> {
        use std::sync::atomic::Ordering;
        let conn = Connection::open(path).map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
        // A flag and park/unpark rather than a channel: every channel payload type costs about
        // 10 KB of std's channel code in the mobile library.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("trailmark-checkpoint".into())
            .spawn(move || {
                let mut next = std::time::Instant::now() + std::time::Duration::from_secs(1);
                while !stopped.load(Ordering::Acquire) {
                    let now = std::time::Instant::now();
                    if now < next {
                        // Wakes early on unpark (the stop) or spuriously; the loop rechecks.
                        std::thread::park_timeout(next - now);
                        continue;
                    }
                    // Failures are harmless: the log just grows until the next attempt.
                    let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
                    next = std::time::Instant::now() + std::time::Duration::from_secs(1);
                }
            })
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(Checkpointer { stop, thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    /// Opens (creating or migrating) the queue database at `path` with the default durability.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::default())
    }

    pub fn open_with(path: impl AsRef<Path>, durability: Durability) -> Result<Self, StoreError> {
        let conn = Connection::open(path.as_ref()).map_err(backend)?;
        let mut store = Self::init(conn, durability)?;
        // Commits never checkpoint; the background thread does.
        store.conn.execute_batch("PRAGMA wal_autocheckpoint=0;").map_err(backend)?;
        store.checkpointer = Some(Checkpointer::start(path.as_ref())?);
        Ok(store)
    }

    /// An in-memory database (for tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(backend)?, Durability::Full)
    }

    fn init(conn: Connection, durability: Durability) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
        // journal_mode returns a row; query it rather than execute it.
        let _mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(backend)?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.execute_batch(&format!("PRAGMA synchronous={sync};")).map_err(backend)?;
        let mut store = SqliteStore { conn, checkpointer: None };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::UnsupportedSchema { found: version, supported: SCHEMA_VERSION });
        }
        let tx = self.conn.transaction().map_err(backend)?;
        if version < 1 {
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS events (
                     seq INTEGER PRIMARY KEY,
                     held INTEGER NOT NULL,
                     created_at INTEGER NOT NULL,
                     body BLOB NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS meta (
                     key TEXT PRIMARY KEY,
                     value BLOB NOT NULL
                 );",
            )
            .map_err(backend)?;
        }
        // Future steps: `if version < 2 { ... }`.
        tx.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION};")).map_err(backend)?;
        tx.commit().map_err(backend)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)
    }
}

impl EventStore for SqliteStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, held, created_at, length(body) FROM events ORDER BY seq")
            .map_err(backend)?;
        let entries = stmt
            .query_map([], |r| {
                Ok(IndexEntry {
                    seq: r.get::<_, i64>(0)? as u64,
                    held: r.get(1)?,
                    created_at: r.get(2)?,
                    size: r.get::<_, i64>(3)? as u32,
                })
            })
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?;
        let state = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'state'", [], |r| r.get::<_, Vec<u8>>(0))
            .optional()
            .map_err(backend)?;
        Ok(Snapshot { entries, state })
    }

    fn read(&mut self, seqs: &[u64]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let (Some(min), Some(max)) = (seqs.iter().min(), seqs.iter().max()) else {
            return Ok(Vec::new());
        };
        let wanted: std::collections::HashSet<u64> = seqs.iter().copied().collect();
        let mut stmt = self
            .conn
            .prepare_cached("SELECT seq, body FROM events WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq")
            .map_err(backend)?;
        let rows = stmt
            .query_map(params![*min as i64, *max as i64], |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?)))
            .map_err(backend)?;
        let mut out = Vec::with_capacity(seqs.len());
        for row in rows {
            let (seq, body) = row.map_err(backend)?;
            if wanted.contains(&seq) {
                out.push((seq, body));
            }
        }
        Ok(out)
    }

    fn commit(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction().map_err(backend)?;
        if batch.delete_all {
            tx.execute("DELETE FROM events", []).map_err(backend)?;
        }
        if batch.delete_held {
            tx.execute("DELETE FROM events WHERE held = 1", []).map_err(backend)?;
        }
        if batch.release_held {
            tx.execute("UPDATE events SET held = 0 WHERE held = 1", []).map_err(backend)?;
        }
        if !batch.deletes.is_empty() {
            let mut del = tx.prepare_cached("DELETE FROM events WHERE seq = ?1").map_err(backend)?;
            for seq in &batch.deletes {
                del.execute([*seq as i64]).map_err(backend)?;
            }
        }
        if !batch.inserts.is_empty() {
            let mut ins = tx
                .prepare_cached("INSERT OR REPLACE INTO events (seq, held, created_at, body) VALUES (?1, ?2, ?3, ?4)")
                .map_err(backend)?;
            for e in &batch.inserts {
                ins.execute(params![e.seq as i64, e.held, e.created_at, e.body]).map_err(backend)?;
            }
        }
        if let Some(state) = &batch.state {
            tx.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('state', ?1)", [state]).map_err(backend)?;
        }
        tx.commit().map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoredEvent;

    fn ev(seq: u64, held: bool) -> StoredEvent {
        StoredEvent { seq, held, created_at: seq as i64 * 10, body: format!("{{\"n\":{seq}}}").into_bytes() }
    }

    #[test]
    fn commit_load_read_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        {
            let mut s = SqliteStore::open(&path).unwrap();
            assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
            let batch = WriteBatch {
                inserts: vec![ev(1, true), ev(2, true), ev(3, false)],
                state: Some(b"state-1".to_vec()),
                ..Default::default()
            };
            s.commit(&batch).unwrap();
            s.commit(&WriteBatch { release_held: true, deletes: vec![2], ..Default::default() }).unwrap();
        }
        let mut s = SqliteStore::open(&path).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.state.as_deref(), Some(&b"state-1"[..]));
        let seqs: Vec<_> = snap.entries.iter().map(|e| (e.seq, e.held, e.size)).collect();
        assert_eq!(seqs, vec![(1, false, 7), (3, false, 7)]);
        let bodies = s.read(&[3, 1, 99]).unwrap();
        assert_eq!(bodies, vec![(1, b"{\"n\":1}".to_vec()), (3, b"{\"n\":3}".to_vec())]);
        s.commit(&WriteBatch { delete_all: true, ..Default::default() }).unwrap();
        assert!(s.load().unwrap().entries.is_empty());
    }

    #[test]
    fn the_log_is_checkpointed_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        let mut s = SqliteStore::open(&path).unwrap();
        for chunk in 0..20u64 {
            let inserts = (0..100)
                .map(|i| StoredEvent { seq: chunk * 100 + i + 1, held: false, created_at: 0, body: vec![b'x'; 1000] })
                .collect();
            s.commit(&WriteBatch { inserts, ..Default::default() }).unwrap();
        }
        // Commits only append to the log; the database file grows when the background thread
        // copies the log into it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::metadata(&path).unwrap().len() < 1_000_000 {
            assert!(std::time::Instant::now() < deadline, "the log was never checkpointed");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path).unwrap().execute_batch("PRAGMA user_version=99;").unwrap();
        assert!(matches!(
            SqliteStore::open(&path),
            Err(StoreError::UnsupportedSchema { found: 99, supported: SCHEMA_VERSION })
        ));
    }
}
