//! The embedded SQLite store (the default).
//!
//! The SQLite store has one writer thread. Requests hand it their events through a bounded
//! queue and wait for the answer; the writer takes every request waiting, writes them in one
//! transaction and answers them all after the commit (group commit). A request is answered only
//! after its events are durable, and many requests share one fsync.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::oneshot;

mod conversions;
mod deletion;
mod events;
mod identifiers;
mod identity;
mod installs;
mod links;
mod olap;
mod reports;
mod schema;

pub use deletion::count_subject_rows;
pub use events::stored_type;

use crate::storage::{ClickRecord, StorageError, StorageFuture, backend};

/// A unit of work for the writer thread: runs inside the group's transaction, then hears
/// whether the transaction committed.
trait Work: Send {
    /// How many rows it writes (a group stops growing at `max_commit_events`).
    fn weight(&self) -> usize {
        1
    }
    fn run(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<(), StorageError>;
    fn finish(self: Box<Self>, outcome: Result<(), StorageError>);
}

struct Job<T, F> {
    weight: usize,
    f: Option<F>,
    out: Option<T>,
    reply: Option<oneshot::Sender<Result<T, StorageError>>>,
}

impl<T, F> Work for Job<T, F>
where
    T: Send,
    F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StorageError> + Send,
{
    fn weight(&self) -> usize {
        self.weight
    }
    fn run(&mut self, tx: &rusqlite::Transaction<'_>) -> Result<(), StorageError> {
        let f = self.f.take().expect("a job runs once");
        self.out = Some(f(tx)?);
        Ok(())
    }
    fn finish(mut self: Box<Self>, outcome: Result<(), StorageError>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(outcome.map(|()| self.out.take().expect("ran before a successful commit")));
        }
    }
}

/// Durability of SQLite commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every (group) commit: survives power loss. The default.
    #[default]
    Full,
    /// Survives a killed process; the last commits may be lost on power loss.
    Normal,
}

/// Most idle read connections kept.
const READERS: usize = 16;

/// The embedded default: one SQLite file, WAL, one writer thread with group commit, and a
/// small pool of read connections used from blocking tasks.
pub struct SqliteStorage {
    /// WAL checkpoints run on their own thread, never inside a group commit (the writer
    /// finishes one between two groups when the log passes its limit).
    _checkpointer: trailmark_core::store::sqlite::Checkpointer,
    tx: SyncSender<Box<dyn Work>>,
    backlog: Arc<AtomicUsize>,
    path: PathBuf,
    durability: Durability,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// Clicks waiting for the writer. One flush job at a time sits in the writer's queue and
    /// takes every click buffered when it runs, so a burst of clicks costs one queue slot.
    clicks: Arc<Mutex<ClickBuffer>>,
    /// Whether any deletion has left tombstones or suppressions in this file. Until one has,
    /// screening an ingest request reads nothing (this store is the file's only writer).
    pub(super) screening: Arc<AtomicBool>,
}

/// Most clicks buffered for the writer; past it a click stays in the index only.
const CLICK_BUFFER: usize = 100_000;

#[derive(Default)]
pub(super) struct ClickBuffer {
    rows: Vec<ClickRecord>,
    /// A flush job is in the writer's queue.
    scheduled: bool,
}

/// Opens a connection with the settings every connection of the store uses.
pub fn open_connection(path: &Path, durability: Durability) -> Result<Connection, StorageError> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
    let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).map_err(backend)?;
    let sync = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    // A 16 MiB page cache and memory-mapped reads keep the random-key primary index out of
    // pread(2) as the table grows (profiling showed 13 % of ingest CPU in pread without them).
    // secure_delete=FAST zeroes the space of deleted and rewritten rows when that costs no
    // extra I/O (a deletion, or the identifier pass, leaves no old values in the pages kept);
    // pages freed whole keep theirs until reused or `VACUUM` (docs/privacy.md).
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON; PRAGMA cache_size=-16384;
         PRAGMA mmap_size=268435456; PRAGMA temp_store=MEMORY; PRAGMA secure_delete=FAST;"
    ))
    .map_err(backend)?;
    Ok(conn)
}

impl SqliteStorage {
    /// Opens (creating or migrating) the database and starts the writer thread.
    pub fn open(
        path: impl AsRef<Path>,
        durability: Durability,
        queue: usize,
        max_commit_events: usize,
    ) -> Result<Self, StorageError> {
        Self::open_with_wal_limit(path, durability, queue, max_commit_events, WAL_LIMIT)
    }

    fn open_with_wal_limit(
        path: impl AsRef<Path>,
        durability: Durability,
        queue: usize,
        max_commit_events: usize,
        wal_limit: u64,
    ) -> Result<Self, StorageError> {
        let mut conn = open_connection(path.as_ref(), durability)?;
        // Every statement the writer runs stays compiled (rusqlite keeps 16 by default, and a
        // report refresh alone uses more, evicting ingest's and the install's).
        conn.set_prepared_statement_cache_capacity(128);
        schema::migrate(&mut conn)?;
        let screening: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM tombstones) OR EXISTS (SELECT 1 FROM suppressions)", [], |r| {
                r.get(0)
            })
            .map_err(backend)?;
        // No checkpoint inside a commit (the checkpointer thread does them; the writer between
        // groups when the log is long, below); a log that starts over is cut back to the
        // limit, so the file grows past it only when the log does (what the writer watches).
        conn.execute_batch(&format!("PRAGMA wal_autocheckpoint=0; PRAGMA journal_size_limit={wal_limit};"))
            .map_err(backend)?;
        // SQLite's own name for the database (links resolved), so the log's name is right.
        let wal = PathBuf::from(format!("{}-wal", conn.path().unwrap_or_default()));
        let checkpointer = trailmark_core::store::sqlite::Checkpointer::start(path.as_ref())
            .map_err(|e| StorageError::Backend(e.to_string()))?;
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let backlog = Arc::new(AtomicUsize::new(0));
        let writer_backlog = backlog.clone();
        std::thread::Builder::new()
            .name("trailmark-writer".into())
            .spawn(move || writer(conn, (wal, wal_limit), rx, writer_backlog, max_commit_events.max(1)))
            .map_err(|e| StorageError::Backend(e.to_string()))?;
        Ok(SqliteStorage {
            _checkpointer: checkpointer,
            tx,
            backlog,
            path: path.as_ref().to_owned(),
            durability,
            readers: Arc::new(Mutex::new(Vec::new())),
            clicks: Arc::new(Mutex::new(ClickBuffer::default())),
            screening: Arc::new(AtomicBool::new(screening)),
        })
    }

    fn submit(&self, work: Box<dyn Work>) -> Result<(), StorageError> {
        // Count before sending: the writer may take the work (and decrement) at once.
        self.backlog.fetch_add(1, Ordering::Relaxed);
        let sent = self.tx.try_send(work);
        if sent.is_err() {
            self.backlog.fetch_sub(1, Ordering::Relaxed);
        }
        match sent {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(StorageError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(StorageError::Backend("writer stopped".into())),
        }
    }

    /// Runs `f` in the writer's next group commit and answers after the commit.
    fn write<T, F>(&self, weight: usize, f: F) -> StorageFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StorageError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let submitted = self.submit(Box::new(Job { weight, f: Some(f), out: None, reply: Some(reply) }));
        Box::pin(async move {
            submitted?;
            answer.await.map_err(|_| StorageError::Backend("writer stopped".into()))?
        })
    }

    /// Runs `f` on a read connection in a blocking task.
    fn read<T, F>(&self, f: F) -> StorageFuture<'_, T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StorageError> + Send + 'static,
    {
        let readers = self.readers.clone();
        let path = self.path.clone();
        let durability = self.durability;
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let pooled = readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
                let conn = match pooled {
                    Some(c) => c,
                    None => {
                        let c = open_connection(&path, durability)?;
                        // A reader's page cache is dropped whole whenever the writer has
                        // committed since its last read, and dropping costs time in proportion
                        // to the cache size; reads go through mmap instead.
                        c.execute_batch("PRAGMA cache_size=-512;").map_err(backend)?;
                        c
                    }
                };
                let out = f(&conn);
                let mut pool = readers.lock().unwrap_or_else(|p| p.into_inner());
                if pool.len() < READERS {
                    pool.push(conn);
                }
                out
            })
            .await
            .map_err(|e| StorageError::Backend(e.to_string()))?
        })
    }
}

/// Bytes of write-ahead log past which the writer checkpoints it between groups.
const WAL_LIMIT: u64 = 64 << 20;

fn writer(
    mut conn: Connection,
    (wal, wal_limit): (PathBuf, u64),
    rx: Receiver<Box<dyn Work>>,
    backlog: Arc<AtomicUsize>,
    max_events: usize,
) {
    let mut next_checkpoint = wal_limit;
    while let Ok(first) = rx.recv() {
        let mut group = Vec::new();
        let mut weight = 0;
        let mut next = Some(first);
        while let Some(work) = next.take() {
            backlog.fetch_sub(1, Ordering::Relaxed);
            weight += work.weight();
            group.push(work);
            if weight < max_events {
                next = rx.try_recv().ok();
            }
        }
        let outcome = write_group(&mut conn, &mut group);
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "group commit failed");
        }
        for work in group {
            work.finish(outcome.clone());
        }
        // The checkpointer thread copies the log into the database, but the log only starts
        // over when a write begins after a checkpoint that copied all of it, which never
        // happens while commits keep coming: under steady ingest it grew without end (4 GB
        // in 40 s of `loadgen --only batched`, every commit slower). Past the limit, the
        // writer copies what is left itself, after answering the group and with no commit in
        // between; the next commit then starts the log over. A checkpoint that could not copy
        // everything (a reader still on an older snapshot, or the checkpointer thread busy)
        // is tried again only once the log has grown by another limit, not after every group.
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > next_checkpoint) {
            match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
            }) {
                Ok((0, log, copied)) if copied >= log => next_checkpoint = wal_limit,
                Ok(_) => {
                    next_checkpoint = std::fs::metadata(&wal).map_or(wal_limit, |m| m.len()).saturating_add(wal_limit);
                    metrics::counter!("trailmark_wal_checkpoints_incomplete_total").increment(1);
                }
                Err(e) => {
                    next_checkpoint = next_checkpoint.saturating_add(wal_limit);
                    tracing::warn!(error = %e, "checkpoint failed");
                }
            }
        }
    }
}

/// Runs a group of works in the order they were queued, in one transaction.
fn write_group(conn: &mut Connection, group: &mut [Box<dyn Work>]) -> Result<(), StorageError> {
    let tx = conn.transaction().map_err(backend)?;
    for work in group.iter_mut() {
        work.run(&tx)?;
    }
    tx.commit().map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::records::NewEvent;
    use crate::storage::EventStore;

    /// Under steady ingest (a commit always coming) the log starts over once it passes the
    /// limit, instead of growing with every byte written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_stays_near_its_limit_under_steady_ingest() {
        const LIMIT: u64 = 256 << 10;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStorage::open_with_wal_limit(&path, Durability::Normal, 64, 1_000, LIMIT).unwrap();
        let wal = dir.path().join("t.db-wal");
        let mut largest = 0;
        let mut written = 0;
        for batch in 0..400 {
            let events: Vec<NewEvent> = (0..20)
                .map(|i| NewEvent {
                    app_id: "app".into(),
                    event_id: format!("{batch}-{i}"),
                    event_type: "add_to_cart".into(),
                    anonymous_id: format!("anon-{i}"),
                    properties: format!("{{\"pad\":\"{}\"}}", "x".repeat(1_000)),
                    context: "{}".into(),
                    enrichment: "{}".into(),
                    ..NewEvent::default()
                })
                .collect();
            written += events.iter().map(|e| e.properties.len() as u64).sum::<u64>();
            assert!(store.insert(events).await.unwrap().iter().all(|new| *new));
            largest = largest.max(std::fs::metadata(&wal).unwrap().len());
        }
        assert!(written > 10 * LIMIT, "enough written to pass the limit many times: {written}");
        // Some groups past the limit at most (a group here is 20 events, some 30 pages; one
        // the checkpointer thread's own checkpoint kept from starting over adds another).
        // Without the writer's checkpoint the log holds everything written.
        assert!(largest < 4 * LIMIT, "the log grew to {largest} bytes");
    }
}
