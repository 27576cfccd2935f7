//! Storage behind traits, one per concern, and the two stores that implement them all.
//!
//! [`EventStore`] (ingest, inspector), [`LinkStore`] (campaigns, links, clicks), [`InstallStore`],
//! [`ConversionStore`] (touchpoints, re-engagements, credit, postbacks), [`ReportStore`] (star
//! schema, rollups, retention) and [`DeletionStore`] make up [`Storage`]. Each store lives in a
//! folder of its own with the same file per concern: [`sqlite`] (the embedded default: one
//! writer thread with group commit, a read pool) and `postgres` (feature `postgres`, several
//! instances on one database). This module holds what both share: the traits, the error, the
//! lists of tables, and the helpers in [`star`].

use std::future::Future;
use std::pin::Pin;

use thiserror::Error;

mod ddl;
#[cfg(feature = "postgres")]
pub mod postgres;
mod sql;
pub mod sqlite;
pub mod star;

pub use crate::domain::privacy::{Screened, Suppression, Tombstones, suppressed_ids};
pub use crate::domain::records::*;
pub use sql::ID_TABLES;
pub use sqlite::{Durability, SqliteStorage, count_subject_rows, open_connection, stored_type};

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    /// The writer is behind; the client should retry (503).
    #[error("storage is busy")]
    Busy,
    #[error("storage failed: {0}")]
    Backend(String),
}

/// A backend's error, as text.
pub(crate) fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

pub(crate) fn json_err(e: serde_json::Error) -> StorageError {
    StorageError::Backend(format!("stored JSON: {e}"))
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
    /// Whether other instances may write links to this store too (so a link unknown here may
    /// exist there). False for the embedded SQLite store: a miss is definitive.
    fn shared(&self) -> bool {
        false
    }
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
    /// Attaches an advertising id learned after the install (stored form) to the device's
    /// install rows that have none in that column (`update.column`: `idfa` or `gaid`);
    /// how many rows took it.
    fn attach_advertising_id(&self, update: AdIdUpdate) -> StorageFuture<'_, u64>;
    /// Adds a test device (or renames it); `true` when it is new.
    fn save_test_device(&self, device: TestDevice) -> StorageFuture<'_, bool>;
    /// Removes a test device by its stored device id; `true` when there was one.
    fn remove_test_device(&self, device_id: String) -> StorageFuture<'_, bool>;
    /// Every test device, oldest first.
    fn test_devices(&self) -> StorageFuture<'_, Vec<TestDevice>>;
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
    /// The `context`s (JSON text) of the newest stored events, by corrected time, newest first
    /// (at most 20), of the device `anonymous_id` or of `user_id` in the app, among those whose
    /// context mentions `consent`: where the latest consent state is read
    /// (`domain::conversions::latest_allows_postbacks`).
    fn latest_context(
        &self,
        app_id: String,
        anonymous_id: String,
        user_id: Option<String>,
    ) -> StorageFuture<'_, Vec<String>>;
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

/// Deletion of a data subject (`/v1/user/delete`), and what keeps it deleted.
pub trait DeletionStore: Send + Sync + 'static {
    /// Deletes every row that refers to the subject (and the anonymous ids seen with a user id),
    /// writes the audit record, leaves a tombstone for every deleted event and (when
    /// `tombstones.suppress`) a suppression for the subject and each anonymous id found with
    /// it, all in one transaction, and reports what was deleted.
    fn delete_subject(
        &self,
        subject: Subject,
        audit: DeletionAudit,
        tombstones: Tombstones,
    ) -> StorageFuture<'_, DeleteReport>;
    /// Which of `event_hashes` (of app `app_id`) are tombstoned and which of `id_hashes` are
    /// suppressed.
    fn screen(&self, app_id: String, event_hashes: Vec<String>, id_hashes: Vec<String>) -> StorageFuture<'_, Screened>;
    /// Suppressions, newest first, at most `limit`.
    fn suppressions(&self, limit: usize) -> StorageFuture<'_, Vec<Suppression>>;
    /// Lifts the suppressions a deletion made (by its receipt id) and those with these hashes;
    /// returns how many were lifted. Tombstones of deleted events stay.
    fn lift_suppressions(&self, receipt_id: Option<String>, id_hashes: Vec<String>) -> StorageFuture<'_, u64>;
}

/// The identity map (`alias`): which stored user ids are one person.
pub trait IdentityStore: Send + Sync + 'static {
    /// Records that each link's `alias_user_id` became its `user_id`, keeping the map flat:
    /// the link names the final user id of `user_id`, and links that named `alias_user_id`
    /// as their user id now name that one. A link that would close a cycle, or whose alias
    /// is linked already (the first link of an id wins), changes nothing. Returns how many
    /// links were new.
    fn link_users(&self, links: Vec<UserLink>) -> StorageFuture<'_, u64>;
    /// Every link of the app, as `(alias_user_id, user_id)`.
    fn identity_links(&self, app_id: String) -> StorageFuture<'_, Vec<(String, String)>>;
}

/// Identifiers at rest (`domain::identifiers`): the pass that brings rows written before
/// identifiers were hashed, or sealed under an older key, to the current form.
pub trait IdentifierStore: Send + Sync + 'static {
    /// Up to `limit` rows of `table` that hold identifiers, after `after` (the key of the last
    /// row of the previous batch; `None`: from the start), in key order.
    fn identifier_rows(
        &self,
        table: &'static IdTable,
        after: Option<Vec<String>>,
        limit: usize,
    ) -> StorageFuture<'_, Vec<IdRow>>;
    /// Writes rows' new identifier columns and ciphertexts, in one transaction.
    fn rewrite_identifiers(&self, table: &'static IdTable, rows: Vec<IdRow>) -> StorageFuture<'_, ()>;
    /// User ids not in hashed form in the tables derived from events ([`sql::USER_ID_TABLES`]):
    /// up to `limit` distinct ones per table (the same id may come from several tables).
    fn raw_user_ids(&self, limit: usize) -> StorageFuture<'_, Vec<String>>;
    /// Replaces each `(raw, stored)` user id in those tables.
    fn replace_user_ids(&self, pairs: Vec<(String, String)>) -> StorageFuture<'_, ()>;
    /// The key version the last complete pass left every row under (`None`: never ran).
    fn identifiers_version(&self) -> StorageFuture<'_, Option<i64>>;
    fn set_identifiers_version(&self, version: i64) -> StorageFuture<'_, ()>;
}

/// A table whose rows hold identifiers: its key columns, its identifier columns (as the
/// sealed JSON names them) and the column of their ciphertext.
#[derive(Debug)]
pub struct IdTable {
    pub table: &'static str,
    pub key: &'static [&'static str],
    pub ids: &'static [&'static str],
    pub sealed: &'static str,
}

/// One row of an [`IdTable`]: key values, identifier values (in `IdTable::ids` order), the
/// ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRow {
    pub key: Vec<String>,
    pub ids: Vec<Option<String>>,
    pub sealed: Option<Vec<u8>>,
}

/// What the server needs from storage: every concern's trait. Implemented for any type that
/// implements them all; a store implements each of them fully (there are no defaults).
pub trait Storage:
    EventStore
    + LinkStore
    + InstallStore
    + ConversionStore
    + ReportStore
    + DeletionStore
    + IdentifierStore
    + IdentityStore
    + OlapOutboxStore
{
}

impl<T> Storage for T where
    T: EventStore
        + LinkStore
        + InstallStore
        + ConversionStore
        + ReportStore
        + DeletionStore
        + IdentifierStore
        + IdentityStore
        + OlapOutboxStore
{
}

/// The storage traits, for calling their methods (on `dyn Storage` too): `use
/// crate::storage::prelude::*;`.
pub mod prelude {
    pub use super::{
        ConversionStore, DeletionStore, EventStore, IdentifierStore, IdentityStore, InstallStore, LinkStore,
        OlapOutboxStore, ReportStore, Storage,
    };
}

/// The OLAP outbox (ADR 0018): what the ClickHouse loader has still to copy or erase.
pub trait OlapOutboxStore: Send + Sync + 'static {
    /// Turns the outbox on (when it was off, or with `refill`: a `reset` entry, then every
    /// current row of the copied tables, so the OLAP copy starts complete) or off (emptied;
    /// nothing is noted).
    fn olap_switch(&self, on: bool, refill: bool) -> StorageFuture<'_, ()>;
    /// Takes the loader's lease (`None` while another loader holds it) and reads the oldest
    /// `limit` entries with the current rows they name, under a version larger than any
    /// earlier page's.
    fn olap_page(&self, lease: OlapLease, limit: usize) -> StorageFuture<'_, Option<OlapPage>>;
    /// Renews the lease when `lease.holder` still holds it (`false`: another loader took it;
    /// this one must stop writing to the OLAP store).
    fn olap_renew(&self, lease: OlapLease) -> StorageFuture<'_, bool>;
    /// Removes loaded entries.
    fn olap_done(&self, seqs: Vec<i64>) -> StorageFuture<'_, ()>;
    /// Entries not loaded yet.
    fn olap_pending(&self) -> StorageFuture<'_, u64>;
}

/// Every table that holds per-subject rows, with `(subject kind, column)` pairs naming a
/// subject. Every such table has an `app_id` column but `test_devices` (device ids only,
/// across apps). The delete path and its test both read this list, so a new table cannot be
/// forgotten.
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
    ("test_devices", &[("device_id", "device_id")]),
    ("identity_links", &[("user_id", "alias_user_id"), ("user_id", "user_id")]),
];

/// Tables that hold no per-subject data (configuration, audit logs keyed by hashes).
/// The rollups hold counts per day, campaign and event type, never a row per user; `etl_pending`
/// holds event keys only (a deleted event's entry is skipped, then purged).
pub const NON_SUBJECT_TABLES: &[&str] = &[
    "deletion_audit",
    "tombstones",
    "suppressions",
    "campaigns",
    "links",
    "link_audit",
    "fraud_alerts",
    "etl_pending",
    "etl_state",
    // Entries name report rows by their stored keys, and a deletion's `erase` entries the
    // subject's stored ids, only until the ClickHouse loader takes them (ADR 0018).
    "olap_outbox",
    "dim_date",
    "dim_campaigns",
    "campaign_costs",
    "rollup_dirty",
    "rollup_daily",
    "rollup_campaign_daily",
    "rollup_conversions_daily",
    "rollup_link_daily",
];
