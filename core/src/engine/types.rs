//! The engine's public data: what goes in (consent changes, upload outcomes) and what comes out
//! (actions, upload tasks, counters).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::ConfigError;
use crate::store::StoreError;

/// Unix time in milliseconds, as the driver reads it from its clock.
pub type Millis = i64;

/// Receives one line per engine decision when `Config::debug` is set.
pub type Logger = Box<dyn FnMut(&str) + Send>;

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this request and report the result with [`Engine::report`](super::Engine::report).
    Upload(UploadTask),
    /// Call [`Engine::poll`](super::Engine::poll) again after this long, or sooner when a call comes in.
    Wait(Duration),
    /// Nothing to do until the next call (or upload report).
    Idle,
}

/// One upload request, ready to send: a POST of `body` to `url` with `headers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTask {
    pub batch_id: u64,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Number of events in `body`.
    pub event_count: usize,
}

/// What happened to an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The server answered. `retry_after` is the raw `Retry-After` header, if any.
    Response { status: u16, retry_after: Option<String>, body: Vec<u8> },
    /// No HTTP answer: DNS, connect, TLS, timeout, or the connection dropped.
    NetworkError(String),
}

/// A consent change; `None` leaves a purpose as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentUpdate {
    pub analytics: Option<bool>,
    pub attribution: Option<bool>,
    pub do_not_sell: Option<bool>,
}

/// Counters over the life of the installation (persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Events queued (including `session_start`, `install`...).
    pub recorded: u64,
    /// Events the server acknowledged as accepted or duplicate.
    pub delivered: u64,
    /// Events the server rejected as invalid (dropped).
    pub rejected_by_server: u64,
    /// Oldest events dropped at the queue's count cap.
    pub dropped_queue_full: u64,
    /// Events dropped at the queue's age cap.
    pub dropped_expired: u64,
    /// Oldest events dropped at the pre-consent buffer's cap.
    pub dropped_pre_consent_full: u64,
    /// Held events dropped because analytics consent was denied.
    pub dropped_consent_denied: u64,
    /// Queued events purged by `opt_out`.
    pub dropped_opted_out: u64,
    /// Calls refused as invalid (bad type, too large, too deep, bad id...).
    pub refused_invalid: u64,
    /// Events a driver could not hand to the engine in time (its channel was full).
    pub dropped_backpressure: u64,
    /// Calls ignored because collection is off (analytics denied or opted out).
    pub ignored_no_consent: u64,
    /// Upload attempts and the ones that will be retried.
    pub uploads: u64,
    pub upload_failures: u64,
    /// Storage failures (not persisted while the store fails, obviously).
    pub store_errors: u64,
    /// Events waiting in the upload queue / the pre-consent buffer right now.
    pub queued: u64,
    pub held: u64,
    /// Beacons handed out (`Engine::beacon`; their answer is never known).
    pub beacons: u64,
    /// Events in the upload handed out and not yet reported (not persisted).
    #[serde(skip)]
    pub in_flight: u64,
}

/// Why the engine could not open.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
