//! The engine's storage contract and its in-memory implementation.
//!
//! The engine keeps a small index of the queue in memory and describes every change as one
//! [`WriteBatch`], which a store must apply atomically: after a crash either all of it or none
//! of it is visible. That single rule is what makes "no event lost, none sent after its
//! acknowledgement" hold across restarts.

#[allow(unused_imports)]
use crate::prelude::*;

/// Shared contents: a mutex with std, a `RefCell` in the single-threaded `no_std` (web) build.
#[cfg(feature = "std")]
type Shared<T> = std::sync::Arc<std::sync::Mutex<T>>;
#[cfg(not(feature = "std"))]
type Shared<T> = alloc::rc::Rc<core::cell::RefCell<T>>;

use thiserror::Error;

#[cfg(feature = "file-store")]
pub mod file;
#[cfg(feature = "file-store")]
pub use file::FileStore;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;
#[cfg(feature = "file-store")]
pub mod sqlite_file;

/// Durability of a commit of a native store. A killed process never loses a committed batch
/// either way; the choice is about power loss.
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit is fsynced before it returns; survives power loss. Costs an fsync per
    /// commit, whose latency spikes (tens of ms on virtual and flash disks) then delay
    /// durability.
    Full,
    /// Survives a killed or crashed app; after a power cut the commits of about the last
    /// second may be lost. The default for the SDK, as for every mobile analytics SDK.
    #[default]
    Normal,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    #[error("storage backend failed: {0}")]
    Backend(String),
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("storage schema version {found} is newer than this SDK understands ({supported})")]
    UnsupportedSchema { found: i64, supported: i64 },
}

/// One queued event: its serialised JSON and the metadata the engine indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// Queue position, unique and increasing; delivery follows it.
    pub seq: u64,
    /// True while the event waits in the pre-consent buffer.
    pub held: bool,
    /// Engine time (Unix ms) when it was queued; the age cap reads it.
    pub created_at: i64,
    /// The event as JSON, exactly as it will be sent.
    pub body: Vec<u8>,
}

/// What the engine keeps in memory for each queued event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub seq: u64,
    pub held: bool,
    pub created_at: i64,
    pub size: u32,
}

impl StoredEvent {
    pub fn index_entry(&self) -> IndexEntry {
        IndexEntry { seq: self.seq, held: self.held, created_at: self.created_at, size: self.body.len() as u32 }
    }
}

/// Everything a store holds, as read at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every queued event, ordered by `seq`.
    pub entries: Vec<IndexEntry>,
    /// The engine's persisted state (identity, consent, session, counters), opaque to the store.
    pub state: Option<Vec<u8>>,
}

/// A set of changes applied atomically, in this order: `delete_all`, `delete_held`,
/// `release_held`, `deletes`, `inserts`, `state`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// Remove every queued event (opt-out).
    pub delete_all: bool,
    /// Remove every event in the pre-consent buffer (consent denied).
    pub delete_held: bool,
    /// Move every held event into the upload queue (consent granted).
    pub release_held: bool,
    /// Remove these events (acknowledged, rejected, or dropped by a cap).
    pub deletes: Vec<u64>,
    /// Add these events.
    pub inserts: Vec<StoredEvent>,
    /// Replace the engine state.
    pub state: Option<Vec<u8>>,
}

impl WriteBatch {
    pub fn is_empty(&self) -> bool {
        !self.delete_all
            && !self.delete_held
            && !self.release_held
            && self.deletes.is_empty()
            && self.inserts.is_empty()
            && self.state.is_none()
    }
}

/// Durable storage for the engine. Implementations: [`MemoryStore`] (tests, the web build's copy
/// of its storage), `FileStore` (the native driver's queue file, feature `file-store`) and
/// `SqliteStore` (feature `sqlite`).
pub trait EventStore {
    /// Reads the whole index and the state; called once when the engine opens.
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Reads the bodies of the given events, in `seq` order. Missing ones are left out.
    fn read(&mut self, seqs: &[u64]) -> Result<Vec<(u64, Vec<u8>)>, StoreError>;
    /// Applies a batch atomically and durably.
    fn commit(&mut self, batch: &WriteBatch) -> Result<(), StoreError>;
}

impl<S: EventStore + ?Sized> EventStore for Box<S> {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        (**self).load()
    }
    fn read(&mut self, seqs: &[u64]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        (**self).read(seqs)
    }
    fn commit(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        (**self).commit(batch)
    }
}

/// An in-memory store. Clones share the same contents, so a test can drop an engine (a crash)
/// and open a new one on what it left behind.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Shared<MemoryInner>,
}

impl MemoryInner {
    fn find(&self, seq: u64) -> Result<usize, usize> {
        // Appends are the common case: check the end first.
        match self.events.last() {
            Some(last) if last.seq < seq => Err(self.events.len()),
            _ => self.events.binary_search_by_key(&seq, |e| e.seq),
        }
    }
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// Ordered by `seq` (a sorted vector: lighter in the web build than a B-tree).
    events: Vec<StoredEvent>,
    state: Option<Vec<u8>>,
    /// When set, commits fail (to test storage errors).
    fail_commits: bool,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(feature = "std")]
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // A panic while holding the lock cannot leave the map half-written (every update is a
        // single call), so a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(not(feature = "std"))]
    fn lock(&self) -> core::cell::RefMut<'_, MemoryInner> {
        self.inner.borrow_mut()
    }

    /// Every stored event, in `seq` order (for tests and inspection).
    pub fn events(&self) -> Vec<StoredEvent> {
        self.lock().events.clone()
    }

    /// Makes every following commit fail until called with `false`.
    pub fn set_fail_commits(&self, fail: bool) {
        self.lock().fail_commits = fail;
    }
}

impl EventStore for MemoryStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let inner = self.lock();
        Ok(Snapshot {
            entries: inner.events.iter().map(StoredEvent::index_entry).collect(),
            state: inner.state.clone(),
        })
    }

    fn read(&mut self, seqs: &[u64]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let inner = self.lock();
        Ok(seqs.iter().filter_map(|s| inner.find(*s).ok().map(|i| (*s, inner.events[i].body.clone()))).collect())
    }

    fn commit(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.fail_commits {
            return Err(StoreError::Backend("commit refused (simulated failure)".into()));
        }
        if batch.delete_all {
            inner.events.clear();
        }
        if batch.delete_held {
            inner.events.retain(|e| !e.held);
        }
        if batch.release_held {
            inner.events.iter_mut().for_each(|e| e.held = false);
        }
        if !batch.deletes.is_empty() {
            // One merge pass over the (sorted) deletes: usually they are ascending already
            // (acknowledged prefixes, expired heads).
            let mut deletes = batch.deletes.clone();
            if !deletes.windows(2).all(|w| w[0] < w[1]) {
                crate::json::heap_sort(&mut deletes, |a, b| a < b);
            }
            let mut next = 0;
            inner.events.retain(|e| {
                while next < deletes.len() && deletes[next] < e.seq {
                    next += 1;
                }
                !(next < deletes.len() && deletes[next] == e.seq)
            });
        }
        for e in &batch.inserts {
            match inner.find(e.seq) {
                Ok(i) => inner.events[i] = e.clone(),
                Err(i) => inner.events.insert(i, e.clone()),
            }
        }
        if let Some(state) = &batch.state {
            inner.state = Some(state.clone());
        }
        Ok(())
    }
}
