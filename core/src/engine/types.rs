//! The engine's public data: what goes in (consent changes, upload outcomes) and what comes out
//! (actions, upload tasks, counters).

#[allow(unused_imports)]
use crate::prelude::*;

use core::time::Duration;

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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ConsentUpdate {
    pub analytics: Option<bool>,
    pub attribution: Option<bool>,
    pub do_not_sell: Option<bool>,
}

/// Counters over the life of the installation (persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(default))]
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
    #[cfg_attr(feature = "serde", serde(skip))]
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

impl Stats {
    /// The persisted counters, in declaration order (`in_flight` is not persisted).
    fn fields(&mut self) -> [(&'static str, &mut u64); 18] {
        [
            ("recorded", &mut self.recorded),
            ("delivered", &mut self.delivered),
            ("rejected_by_server", &mut self.rejected_by_server),
            ("dropped_queue_full", &mut self.dropped_queue_full),
            ("dropped_expired", &mut self.dropped_expired),
            ("dropped_pre_consent_full", &mut self.dropped_pre_consent_full),
            ("dropped_consent_denied", &mut self.dropped_consent_denied),
            ("dropped_opted_out", &mut self.dropped_opted_out),
            ("refused_invalid", &mut self.refused_invalid),
            ("dropped_backpressure", &mut self.dropped_backpressure),
            ("ignored_no_consent", &mut self.ignored_no_consent),
            ("uploads", &mut self.uploads),
            ("upload_failures", &mut self.upload_failures),
            ("store_errors", &mut self.store_errors),
            ("queued", &mut self.queued),
            ("held", &mut self.held),
            ("beacons", &mut self.beacons),
            ("in_flight", &mut self.in_flight),
        ]
    }

    /// Writes the counters as a JSON object with snake_case keys; `in_flight` only when
    /// `with_in_flight` (it is not persisted).
    pub fn write(&self, w: &mut crate::json::Writer, with_in_flight: bool) {
        let mut copy = *self;
        let mut o = w.begin();
        for (key, value) in copy.fields() {
            if key != "in_flight" || with_in_flight {
                o.u64(key, *value);
            }
        }
        o.end();
    }

    /// Reads counters written by [`Stats::write`] (missing ones are zero).
    pub fn read(o: &crate::json::Object) -> Stats {
        let mut stats = Stats::default();
        for (key, value) in stats.fields() {
            if key != "in_flight" {
                *value = o.get(key).and_then(crate::json::Value::as_u64).unwrap_or(0);
            }
        }
        stats
    }
}
