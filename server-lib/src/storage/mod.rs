//! Storage behind a trait, with the embedded SQLite default.
//!
//! The SQLite store has one writer thread. Requests hand it their events through a bounded
//! queue and wait for the answer; the writer takes every request waiting, writes them in one
//! transaction and answers them all after the commit (group commit). A request is answered only
//! after its events are durable, and many requests share one fsync.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use thiserror::Error;
use tokio::sync::oneshot;

mod attr;
#[cfg(feature = "postgres")]
mod pg_star;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod star;

pub use crate::domain::records::*;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    /// The writer is behind; the client should retry (503).
    #[error("storage is busy")]
    Busy,
    #[error("storage failed: {0}")]
    Backend(String),
}

fn backend(e: rusqlite::Error) -> StorageError {
    StorageError::Backend(e.to_string())
}

pub type StorageFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StorageError>> + Send + 'a>>;

/// The event path: ingest with dedup, the event inspector, the writer's backlog.
pub trait EventStore: Send + Sync + 'static {
    /// Stores events durably, in order. For each event: `true` if it is new, `false` if
    /// `(app_id, event_id)` was already stored (a duplicate, left unchanged).
    fn insert(&self, events: Vec<NewEvent>) -> StorageFuture<'_, Vec<bool>>;
    /// The newest `limit` stored events of a subject (the event inspector), newest first.
    fn recent_events(&self, app_id: Option<String>, subject: Subject, limit: usize)
    -> StorageFuture<'_, Vec<NewEvent>>;
    /// Requests waiting for the writer (for metrics and back-pressure).
    fn backlog(&self) -> usize;
}

/// Campaigns, links with their audit log, and clicks (and impressions).
pub trait LinkStore: Send + Sync + 'static {
    /// Stores a new campaign.
    fn save_campaign(&self, campaign: Campaign) -> StorageFuture<'_, ()>;
    /// Creates or replaces a link and appends the audit entry, atomically.
    fn save_link(&self, link: LinkRecord, audit: LinkAudit) -> StorageFuture<'_, ()>;
    /// Every campaign and link (loaded once at start).
    fn load_links(&self) -> StorageFuture<'_, LinkCatalog>;
    /// A link's audit log, oldest first.
    fn link_audit(&self, link_id: String) -> StorageFuture<'_, Vec<LinkAudit>>;
    /// Queues a click or impression for storage without waiting for the commit (clicks are
    /// answered at once; the in-memory index has them already). `Busy` when the queue is full.
    fn record_touch(&self, touch: ClickRecord) -> Result<(), StorageError>;
    /// Clicks and impressions at or after `since`, oldest first (rebuilds the index).
    fn load_touches(&self, since: i64) -> StorageFuture<'_, Vec<ClickRecord>>;
    /// A click's ad-network ids and sub-parameters (JSON objects); `None` for an unknown click.
    /// Sees every click recorded before the call.
    fn click_params(&self, click_id: String) -> StorageFuture<'_, Option<ClickParams>>;
}

/// Installs with their attribution decision, and the lookups a new install needs.
pub trait InstallStore: Send + Sync + 'static {
    /// The install with this event id (any app when `app_id` is `None`).
    fn install_by_event(&self, app_id: Option<String>, event_id: String) -> StorageFuture<'_, Option<InstallRecord>>;
    /// The latest install that counted as new (not a reinstall) of this app on a device that
    /// shares any key.
    fn last_install(&self, app_id: String, keys: DeviceKeys) -> StorageFuture<'_, Option<InstallRecord>>;
    /// Both lookups an install needs, in one round trip where the store can: the install with
    /// this event id, and (only when there is none) the device's latest counted install.
    fn install_lookup(&self, app_id: String, event_id: String, keys: DeviceKeys) -> StorageFuture<'_, InstallLookup>;
    /// Stores an install with its touchpoint, alert and postbacks, atomically; returns the
    /// postbacks' ids. `None` when an install with the same event id exists (nothing is written).
    fn save_install(
        &self,
        install: InstallRecord,
        touchpoint: Option<Touchpoint>,
        alert: Option<FraudAlert>,
        postbacks: Vec<PostbackRecord>,
    ) -> StorageFuture<'_, Option<Vec<i64>>>;
    /// Hourly counts of attributed installs per campaign since `since` (the burst baseline),
    /// oldest hour first.
    fn install_counts(&self, since: i64) -> StorageFuture<'_, Vec<InstallCount>>;
}

/// Touchpoints, re-engagements, conversion credit and postback delivery.
pub trait ConversionStore: Send + Sync + 'static {
    /// Whether the device has an install of the app, and its last activity before `before`.
    fn reengagement_facts(
        &self,
        app_id: String,
        anonymous_id: String,
        before: i64,
    ) -> StorageFuture<'_, ReengagementFacts>;
    /// Stores touchpoints and re-engagements (each idempotent); for each re-engagement,
    /// whether it is new.
    fn save_touchpoints(
        &self,
        touchpoints: Vec<Touchpoint>,
        reengagements: Vec<Reengagement>,
    ) -> StorageFuture<'_, Vec<bool>>;
    /// Touchpoints of the anonymous id and of every device linked to `user_id`, in
    /// `[since, until]`, oldest first, one per click.
    fn conversion_touchpoints(
        &self,
        app_id: String,
        anonymous_id: String,
        user_id: Option<String>,
        since: i64,
        until: i64,
    ) -> StorageFuture<'_, Vec<Touchpoint>>;
    /// Stores one conversion's credit rows unless it was credited before; `true` if written.
    fn save_conversion(&self, rows: Vec<ConversionCredit>) -> StorageFuture<'_, bool>;
    /// Stores a pending postback; returns its id.
    fn save_postback(&self, postback: PostbackRecord) -> StorageFuture<'_, i64>;
    /// Appends a delivery attempt to the log and updates the postback's state.
    fn log_postback_attempt(&self, attempt: PostbackAttempt) -> StorageFuture<'_, ()>;
    /// Whether the postback still waits to be sent (not delivered, failed or deleted).
    fn postback_pending(&self, id: i64) -> StorageFuture<'_, bool>;
    /// Postbacks still pending, oldest first.
    fn pending_postbacks(&self) -> StorageFuture<'_, Vec<PendingPostback>>;
}

/// The report tables: star schema, sessions, rollups, costs, retention.
pub trait ReportStore: Send + Sync + 'static {
    /// One step of the reporting refresh: up to `batch` new events, queued at or before
    /// `horizon` (`None`: the newest now; the answer names it for the next step), into the star
    /// schema (facts, users, sessions split after `session_gap` ms of inactivity); once none is
    /// left, the rollups of every day that changed.
    fn refresh_step(&self, batch: usize, session_gap: i64, horizon: Option<i64>) -> StorageFuture<'_, RefreshReport>;
    /// Deletes what the retention policy no longer keeps (after a full refresh).
    fn purge(&self, cutoffs: RetentionCutoffs) -> StorageFuture<'_, PurgeReport>;
    /// Stores one day's cost of a campaign; `Ok(Err(why))` when the request cannot be applied
    /// (unknown campaign, another currency).
    fn save_cost(&self, cost: CampaignCost) -> StorageFuture<'_, Result<(), String>>;
    /// Rows for a report.
    fn report(&self, query: ReportQuery) -> StorageFuture<'_, ReportRows>;
}

/// Deletion of a data subject (`/v1/user/delete`).
pub trait DeletionStore: Send + Sync + 'static {
    /// Deletes every row that refers to the subject (and the anonymous ids seen with a user id),
    /// writes the audit record, and reports what was deleted.
    fn delete_subject(&self, subject: Subject, audit: DeletionAudit) -> StorageFuture<'_, DeleteReport>;
}

/// What the server needs from storage: every concern's trait. Implemented for any type that
/// implements them all; a store implements each of them fully (there are no defaults).
pub trait Storage: EventStore + LinkStore + InstallStore + ConversionStore + ReportStore + DeletionStore {}

impl<T> Storage for T where T: EventStore + LinkStore + InstallStore + ConversionStore + ReportStore + DeletionStore {}

/// The storage traits, for calling their methods (on `dyn Storage` too): `use
/// crate::storage::prelude::*;`.
pub mod prelude {
    pub use super::{ConversionStore, DeletionStore, EventStore, InstallStore, LinkStore, ReportStore, Storage};
}

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
    /// WAL checkpoints run on their own thread, never inside a group commit.
    _checkpointer: trailmark_core::store::sqlite::Checkpointer,
    tx: SyncSender<Box<dyn Work>>,
    backlog: Arc<AtomicUsize>,
    path: PathBuf,
    durability: Durability,
    readers: Arc<Mutex<Vec<Connection>>>,
    /// Clicks waiting for the writer. One flush job at a time sits in the writer's queue and
    /// takes every click buffered when it runs, so a burst of clicks costs one queue slot.
    clicks: Arc<Mutex<ClickBuffer>>,
}

/// Most clicks buffered for the writer; past it a click stays in the index only.
const CLICK_BUFFER: usize = 100_000;

#[derive(Default)]
struct ClickBuffer {
    rows: Vec<ClickRecord>,
    /// A flush job is in the writer's queue.
    scheduled: bool,
}

const SCHEMA_VERSION: i64 = 3;

/// Every table that holds per-subject rows, with `(subject kind, column)` pairs naming a
/// subject. Every such table has an `app_id` column. The delete path and its test both read
/// this list, so a new table cannot be forgotten.
pub const SUBJECT_TABLES: &[(&str, &[(&str, &str)])] = &[
    ("events", &[("user_id", "user_id"), ("anonymous_id", "anonymous_id"), ("device_id", "device_id")]),
    ("clicks", &[("device_id", "device_id")]),
    (
        "installs",
        &[
            ("anonymous_id", "anonymous_id"),
            ("device_id", "idfa"),
            ("device_id", "idfv"),
            ("device_id", "gaid"),
            ("device_id", "android_id"),
        ],
    ),
    ("touchpoints", &[("anonymous_id", "anonymous_id")]),
    ("reengagements", &[("anonymous_id", "anonymous_id")]),
    ("conversions", &[("anonymous_id", "anonymous_id"), ("user_id", "user_id")]),
    ("postbacks", &[("anonymous_id", "anonymous_id")]),
    ("postback_attempts", &[("anonymous_id", "anonymous_id")]),
    ("fact_events", &[("user_id", "user_id"), ("anonymous_id", "anonymous_id")]),
    ("dim_users", &[("user_id", "user_id"), ("anonymous_id", "anonymous_id")]),
    ("sessions", &[("user_id", "user_id"), ("anonymous_id", "anonymous_id")]),
];

/// Tables that hold no per-subject data (configuration, audit logs keyed by hashes).
/// The rollups hold counts per day, campaign and event type, never a row per user; `etl_pending`
/// holds event keys only (a deleted event's entry is skipped, then purged).
pub const NON_SUBJECT_TABLES: &[&str] = &[
    "deletion_audit",
    "campaigns",
    "links",
    "link_audit",
    "fraud_alerts",
    "etl_pending",
    "etl_state",
    "dim_date",
    "dim_campaigns",
    "campaign_costs",
    "rollup_dirty",
    "rollup_daily",
    "rollup_campaign_daily",
    "rollup_conversions_daily",
];

fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
    if version > SCHEMA_VERSION {
        return Err(StorageError::Backend(format!("schema version {version} is newer than {SCHEMA_VERSION}")));
    }
    let tx = conn.transaction().map_err(backend)?;
    if version < 1 {
        tx.execute_batch(
            "CREATE TABLE events (
                 app_id TEXT NOT NULL,
                 event_id TEXT NOT NULL,
                 type TEXT NOT NULL,
                 anonymous_id TEXT NOT NULL,
                 user_id TEXT,
                 device_id TEXT,
                 session_id TEXT,
                 client_ts INTEGER NOT NULL,
                 corrected_ts INTEGER NOT NULL,
                 received_at INTEGER NOT NULL,
                 properties TEXT NOT NULL,
                 context TEXT NOT NULL,
                 enrichment TEXT NOT NULL,
                 ip_enc BLOB,
                 PRIMARY KEY (app_id, event_id)
             );
             CREATE INDEX events_anonymous_id ON events (anonymous_id);
             CREATE INDEX events_user_id ON events (user_id) WHERE user_id IS NOT NULL;
             CREATE INDEX events_device_id ON events (device_id) WHERE device_id IS NOT NULL;
             CREATE TABLE deletion_audit (
                 receipt_id TEXT PRIMARY KEY,
                 subject_kind TEXT NOT NULL,
                 subject_hash TEXT NOT NULL,
                 rows_deleted INTEGER NOT NULL,
                 requested_at INTEGER NOT NULL,
                 requested_by TEXT NOT NULL
             );",
        )
        .map_err(backend)?;
    }
    if version < 2 {
        tx.execute_batch(attr::SCHEMA_V2).map_err(backend)?;
    }
    if version < 3 {
        tx.execute_batch(star::SCHEMA_V3).map_err(backend)?;
    }
    tx.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION};")).map_err(backend)?;
    tx.commit().map_err(backend)
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
    conn.execute_batch(&format!(
        "PRAGMA synchronous={sync}; PRAGMA foreign_keys=ON; PRAGMA cache_size=-16384;
         PRAGMA mmap_size=268435456; PRAGMA temp_store=MEMORY;"
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
        let mut conn = open_connection(path.as_ref(), durability)?;
        migrate(&mut conn)?;
        conn.execute_batch("PRAGMA wal_autocheckpoint=0;").map_err(backend)?;
        let checkpointer = trailmark_core::store::sqlite::Checkpointer::start(path.as_ref())
            .map_err(|e| StorageError::Backend(e.to_string()))?;
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let backlog = Arc::new(AtomicUsize::new(0));
        let writer_backlog = backlog.clone();
        std::thread::Builder::new()
            .name("trailmark-writer".into())
            .spawn(move || writer(conn, rx, writer_backlog, max_commit_events.max(1)))
            .map_err(|e| StorageError::Backend(e.to_string()))?;
        Ok(SqliteStorage {
            _checkpointer: checkpointer,
            tx,
            backlog,
            path: path.as_ref().to_owned(),
            durability,
            readers: Arc::new(Mutex::new(Vec::new())),
            clicks: Arc::new(Mutex::new(ClickBuffer::default())),
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

impl EventStore for SqliteStorage {
    fn insert(&self, events: Vec<NewEvent>) -> StorageFuture<'_, Vec<bool>> {
        self.write(events.len(), move |tx| insert_events(tx, &events))
    }

    fn recent_events(
        &self,
        app_id: Option<String>,
        subject: Subject,
        limit: usize,
    ) -> StorageFuture<'_, Vec<NewEvent>> {
        self.read(move |conn| recent_events(conn, app_id.as_deref(), &subject, limit))
    }

    fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }
}

impl DeletionStore for SqliteStorage {
    fn delete_subject(&self, subject: Subject, audit: DeletionAudit) -> StorageFuture<'_, DeleteReport> {
        self.write(1, move |tx| delete_in(tx, &subject, &audit))
    }
}

impl LinkStore for SqliteStorage {
    fn save_campaign(&self, campaign: Campaign) -> StorageFuture<'_, ()> {
        self.write(1, move |tx| attr::save_campaign(tx, &campaign))
    }

    fn save_link(&self, link: LinkRecord, audit: LinkAudit) -> StorageFuture<'_, ()> {
        self.write(2, move |tx| attr::save_link(tx, &link, &audit))
    }

    fn load_links(&self) -> StorageFuture<'_, LinkCatalog> {
        self.read(attr::load_links)
    }

    fn link_audit(&self, link_id: String) -> StorageFuture<'_, Vec<LinkAudit>> {
        self.read(move |c| attr::link_audit(c, &link_id))
    }

    fn record_touch(&self, touch: ClickRecord) -> Result<(), StorageError> {
        let schedule = {
            let mut buffer = self.clicks.lock().unwrap_or_else(|p| p.into_inner());
            if buffer.rows.len() >= CLICK_BUFFER {
                return Err(StorageError::Busy);
            }
            buffer.rows.push(touch);
            !std::mem::replace(&mut buffer.scheduled, true)
        };
        if schedule {
            let clicks = self.clicks.clone();
            let f = move |tx: &rusqlite::Transaction<'_>| {
                // Taken when the job runs, not when it was queued: every click buffered by then.
                let rows = {
                    let mut buffer = clicks.lock().unwrap_or_else(|p| p.into_inner());
                    buffer.scheduled = false;
                    std::mem::take(&mut buffer.rows)
                };
                rows.iter().try_for_each(|c| attr::insert_touch(tx, c))
            };
            if let Err(e) = self.submit(Box::new(Job { weight: 1, f: Some(f), out: None, reply: None })) {
                // The click stays buffered; the next click schedules the flush again.
                self.clicks.lock().unwrap_or_else(|p| p.into_inner()).scheduled = false;
                return Err(e);
            }
        }
        Ok(())
    }

    fn load_touches(&self, since: i64) -> StorageFuture<'_, Vec<ClickRecord>> {
        self.read(move |c| attr::load_touches(c, since))
    }

    fn click_params(&self, click_id: String) -> StorageFuture<'_, Option<ClickParams>> {
        // Through the writer's queue, not the read pool: clicks are written behind their
        // redirect, and the queue runs in order, so this sees every click queued before it.
        self.write(1, move |tx| attr::click_params(tx, &click_id))
    }
}

impl InstallStore for SqliteStorage {
    fn install_by_event(&self, app_id: Option<String>, event_id: String) -> StorageFuture<'_, Option<InstallRecord>> {
        self.read(move |c| attr::install_by_event(c, app_id.as_deref(), &event_id))
    }

    fn last_install(&self, app_id: String, keys: DeviceKeys) -> StorageFuture<'_, Option<InstallRecord>> {
        self.read(move |c| attr::last_install(c, &app_id, &keys))
    }

    fn install_lookup(&self, app_id: String, event_id: String, keys: DeviceKeys) -> StorageFuture<'_, InstallLookup> {
        self.read(move |c| {
            if let Some(done) = attr::install_by_event(c, Some(&app_id), &event_id)? {
                return Ok(InstallLookup { existing: Some(done), last_install: None });
            }
            Ok(InstallLookup { existing: None, last_install: attr::last_install(c, &app_id, &keys)? })
        })
    }

    fn save_install(
        &self,
        install: InstallRecord,
        touchpoint: Option<Touchpoint>,
        alert: Option<FraudAlert>,
        postbacks: Vec<PostbackRecord>,
    ) -> StorageFuture<'_, Option<Vec<i64>>> {
        self.write(2 + postbacks.len(), move |tx| {
            if !attr::save_install(tx, &install, touchpoint.as_ref(), alert.as_ref())? {
                return Ok(None);
            }
            postbacks.iter().map(|p| attr::save_postback(tx, p)).collect::<Result<Vec<_>, _>>().map(Some)
        })
    }

    fn install_counts(&self, since: i64) -> StorageFuture<'_, Vec<InstallCount>> {
        self.read(move |c| attr::install_counts(c, since))
    }
}

impl ReportStore for SqliteStorage {
    fn refresh_step(&self, batch: usize, session_gap: i64, horizon: Option<i64>) -> StorageFuture<'_, RefreshReport> {
        self.write(batch, move |tx| star::refresh_step(tx, batch, session_gap, horizon))
    }

    fn purge(&self, cutoffs: RetentionCutoffs) -> StorageFuture<'_, PurgeReport> {
        // In steps, each its own writer transaction, so ingest keeps going between them.
        const CHUNK: usize = 20_000;
        Box::pin(async move {
            self.write(1, move |tx| star::purge_begin(tx, &cutoffs)).await?;
            let (mut events, mut facts) = (0, 0);
            loop {
                let (e, f) = self.write(CHUNK, move |tx| star::purge_events(tx, &cutoffs, CHUNK)).await?;
                events += e;
                facts += f;
                if f < CHUNK as u64 {
                    break;
                }
            }
            let rest = self.write(1, move |tx| star::purge_rest(tx, &cutoffs)).await?;
            Ok(PurgeReport { events, facts, ..rest })
        })
    }

    fn save_cost(&self, cost: CampaignCost) -> StorageFuture<'_, Result<(), String>> {
        self.write(1, move |tx| star::save_cost(tx, &cost))
    }

    fn report(&self, query: ReportQuery) -> StorageFuture<'_, ReportRows> {
        self.read(move |c| star::report(c, &query))
    }
}

impl ConversionStore for SqliteStorage {
    fn reengagement_facts(
        &self,
        app_id: String,
        anonymous_id: String,
        before: i64,
    ) -> StorageFuture<'_, ReengagementFacts> {
        self.read(move |c| attr::reengagement_facts(c, &app_id, &anonymous_id, before))
    }

    fn save_touchpoints(
        &self,
        touchpoints: Vec<Touchpoint>,
        reengagements: Vec<Reengagement>,
    ) -> StorageFuture<'_, Vec<bool>> {
        self.write(touchpoints.len() + reengagements.len(), move |tx| {
            attr::save_touchpoints(tx, &touchpoints, &reengagements)
        })
    }

    fn conversion_touchpoints(
        &self,
        app_id: String,
        anonymous_id: String,
        user_id: Option<String>,
        since: i64,
        until: i64,
    ) -> StorageFuture<'_, Vec<Touchpoint>> {
        self.read(move |c| attr::conversion_touchpoints(c, &app_id, &anonymous_id, user_id.as_deref(), since, until))
    }

    fn save_conversion(&self, rows: Vec<ConversionCredit>) -> StorageFuture<'_, bool> {
        self.write(rows.len(), move |tx| attr::save_conversion(tx, &rows))
    }

    fn save_postback(&self, postback: PostbackRecord) -> StorageFuture<'_, i64> {
        self.write(1, move |tx| attr::save_postback(tx, &postback))
    }

    fn log_postback_attempt(&self, attempt: PostbackAttempt) -> StorageFuture<'_, ()> {
        self.write(2, move |tx| attr::log_postback_attempt(tx, &attempt))
    }

    fn postback_pending(&self, id: i64) -> StorageFuture<'_, bool> {
        self.read(move |c| attr::postback_pending(c, id))
    }

    fn pending_postbacks(&self) -> StorageFuture<'_, Vec<PendingPostback>> {
        self.read(attr::pending_postbacks)
    }
}

fn writer(mut conn: Connection, rx: Receiver<Box<dyn Work>>, backlog: Arc<AtomicUsize>, max_events: usize) {
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

fn insert_events(tx: &rusqlite::Transaction<'_>, batch: &[NewEvent]) -> Result<Vec<bool>, StorageError> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO events (app_id, event_id, type, anonymous_id, user_id, device_id, session_id,
                 client_ts, corrected_ts, received_at, properties, context, enrichment, ip_enc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
             ON CONFLICT (app_id, event_id) DO NOTHING",
        )
        .map_err(backend)?;
    let mut fresh = Vec::with_capacity(batch.len());
    for e in batch {
        let changed = stmt
            .execute(params![
                e.app_id,
                e.event_id,
                e.event_type,
                e.anonymous_id,
                e.user_id,
                e.device_id,
                e.session_id,
                e.client_ts,
                e.corrected_ts,
                e.received_at,
                e.properties,
                e.context,
                e.enrichment,
                e.ip_enc,
            ])
            .map_err(backend)?;
        fresh.push(changed == 1);
    }
    Ok(fresh)
}

fn delete_in(
    tx: &rusqlite::Transaction<'_>,
    subject: &Subject,
    audit: &DeletionAudit,
) -> Result<DeleteReport, StorageError> {
    // A user's anonymous ids, seen on events of the same app together with the user id, are the
    // same person. The pairing is per app: an anonymous id means nothing across apps.
    // A device's anonymous ids (on its events and installs) are the same device.
    let expansion = match subject {
        // dim_users keeps the pairing after the raw events are purged.
        Subject::UserId(_) => Some(
            "SELECT DISTINCT app_id, anonymous_id FROM events WHERE user_id = ?1
             UNION SELECT app_id, anonymous_id FROM dim_users WHERE user_id = ?1",
        ),
        Subject::DeviceId(_) => Some(
            "SELECT DISTINCT app_id, anonymous_id FROM events WHERE device_id IN (?1, lower(?1))
             UNION SELECT app_id, anonymous_id FROM installs
             WHERE idfa = lower(?1) OR idfv = lower(?1) OR gaid = lower(?1) OR android_id = lower(?1)",
        ),
        Subject::AnonymousId(_) => None,
    };
    let mut anonymous_ids: Vec<(String, String)> = Vec::new();
    if let Some(sql) = expansion {
        let mut stmt = tx.prepare(sql).map_err(backend)?;
        anonymous_ids = stmt
            .query_map([subject.value()], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
    }
    // Clicks tied to the subject through its installs and touchpoints go too.
    let mut report = DeleteReport { rows: 0, click_ids: attr::subject_click_ids(tx, subject, &anonymous_ids)? };
    for id in &report.click_ids {
        report.rows += tx.execute("DELETE FROM clicks WHERE click_id = ?1", [id]).map_err(backend)? as u64;
    }
    // Queue entries of the events about to go: an event deleted before the refresh took it
    // and then sent again must be taken once (the queue is short; this reads it once per
    // condition, and only on deletions).
    debug_assert_eq!(SUBJECT_TABLES[0].0, "events");
    for (kind, column) in SUBJECT_TABLES[0].1 {
        if *kind == subject.kind() {
            tx.execute(
                &format!(
                    "DELETE FROM etl_pending WHERE rowid IN (SELECT p.rowid FROM etl_pending p JOIN events e
                        ON e.app_id = p.app_id AND e.event_id = p.event_id WHERE e.{column} IN (?1, lower(?1)))"
                ),
                [subject.value()],
            )
            .map_err(backend)?;
        }
    }
    for (app, anon) in &anonymous_ids {
        tx.execute(
            "DELETE FROM etl_pending WHERE rowid IN (SELECT p.rowid FROM etl_pending p JOIN events e
                ON e.app_id = p.app_id AND e.event_id = p.event_id WHERE e.app_id = ?1 AND e.anonymous_id = ?2)",
            [app, anon],
        )
        .map_err(backend)?;
    }
    for (table, columns) in SUBJECT_TABLES {
        for (kind, column) in *columns {
            if *kind == subject.kind() {
                // Device ids: as sent, and lower-cased as clicks and installs store them.
                report.rows += tx
                    .execute(&format!("DELETE FROM {table} WHERE {column} IN (?1, lower(?1))"), [subject.value()])
                    .map_err(backend)? as u64;
            }
        }
        if columns.iter().any(|(kind, _)| *kind == "anonymous_id") {
            for (app, anon) in &anonymous_ids {
                report.rows += tx
                    .execute(&format!("DELETE FROM {table} WHERE app_id = ?1 AND anonymous_id = ?2"), [app, anon])
                    .map_err(backend)? as u64;
            }
        }
    }
    tx.execute(
        "INSERT INTO deletion_audit (receipt_id, subject_kind, subject_hash, rows_deleted, requested_at, requested_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            audit.receipt_id,
            audit.subject_kind,
            audit.subject_hash,
            report.rows as i64,
            audit.requested_at,
            audit.requested_by
        ],
    )
    .map_err(backend)?;
    Ok(report)
}

/// Counts the rows in every subject table that still refer to `subject` (for tests and audits).
fn recent_events(
    conn: &Connection,
    app_id: Option<&str>,
    subject: &Subject,
    limit: usize,
) -> Result<Vec<NewEvent>, StorageError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS}
           FROM events WHERE {} = ?1 AND (?2 IS NULL OR app_id = ?2)
          ORDER BY received_at DESC, client_ts DESC, rowid DESC LIMIT ?3",
        subject.kind()
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = stmt.query_map(params![subject.value(), app_id, limit as i64], event_row).map_err(backend)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(backend)
}

/// The columns of [`EVENT_COLUMNS`] as an event (without its encrypted address).
pub(crate) fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NewEvent> {
    Ok(NewEvent {
        app_id: r.get(0)?,
        event_id: r.get(1)?,
        event_type: r.get(2)?,
        anonymous_id: r.get(3)?,
        user_id: r.get(4)?,
        device_id: r.get(5)?,
        session_id: r.get(6)?,
        client_ts: r.get(7)?,
        corrected_ts: r.get(8)?,
        received_at: r.get(9)?,
        properties: r.get(10)?,
        context: r.get(11)?,
        enrichment: r.get(12)?,
        ip_enc: None,
    })
}

/// The columns [`event_row`] reads, in its order.
pub(crate) const EVENT_COLUMNS: &str = "app_id, event_id, type, anonymous_id, user_id, device_id, session_id, \
    client_ts, corrected_ts, received_at, properties, context, enrichment";

pub fn count_subject_rows(conn: &Connection, subject: &Subject) -> Result<u64, StorageError> {
    let mut total = 0u64;
    for (table, columns) in SUBJECT_TABLES {
        for (kind, column) in *columns {
            if *kind != subject.kind() {
                continue;
            }
            let n: i64 = conn
                .query_row(
                    &format!("SELECT COUNT(*) FROM {table} WHERE {column} IN (?1, lower(?1))"),
                    [subject.value()],
                    |r| r.get(0),
                )
                .map_err(backend)?;
            total += n as u64;
        }
    }
    Ok(total)
}

/// Reads one stored event's type by its key (tests and tools).
pub fn stored_type(conn: &Connection, app_id: &str, event_id: &str) -> Result<Option<String>, StorageError> {
    conn.query_row("SELECT type FROM events WHERE app_id = ?1 AND event_id = ?2", [app_id, event_id], |r| r.get(0))
        .optional()
        .map_err(backend)
}
