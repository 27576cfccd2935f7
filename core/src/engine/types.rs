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

/// Counters over the life of the installation (persisted), and why the server last refused
/// something.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize), serde(default))]
pub struct Stats {
    /// Events queued (including `session_start`, `install`...).
    pub recorded: u64,
    /// Events the server acknowledged as accepted or duplicate.
    pub delivered: u64,
    /// Events the server rejected as invalid, or refused for good alone (dropped), and install
    /// requests it refused. Why: `last_rejection_status` and `last_rejection_reason`.
    pub rejected_by_server: u64,
    /// Oldest events dropped at the queue's count cap.
    pub dropped_queue_full: u64,
    /// Events dropped at the queue's age cap.
    pub dropped_expired: u64,
    /// Oldest events dropped at the pre-consent buffer's cap.
    pub dropped_pre_consent_full: u64,
    /// Events not yet delivered (held or queued) dropped because analytics consent was denied
    /// or withdrawn.
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
    /// Events a host's middleware dropped (returned nothing for).
    pub dropped_by_middleware: u64,
    /// Events dropped because a middleware failed (threw, panicked) on them: never sent
    /// unfiltered.
    pub middleware_errors: u64,
    /// 2xx answers that were not the protocol's (an empty body, a captive portal's or a proxy's
    /// page): not an acknowledgement; the request is retried (and counted in `upload_failures`).
    pub bad_answers: u64,
    /// The HTTP status of the answer behind the last `rejected_by_server`: 200 when the server
    /// rejected events of a batch it took, the 4xx of a request refused for good; 0 until then.
    pub last_rejection_status: u64,
    /// The server's reason for it: the `reason` of a rejected event, or the error `code` of a
    /// refused request (`payload_too_large`, `invalid_field`...); empty when the answer was not
    /// the protocol's (a proxy's 403 page).
    pub last_rejection_reason: Reason,
    /// Events in the upload handed out and not yet reported (not persisted).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub in_flight: u64,
}

/// The App Tracking Transparency status (iOS), as the host reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackingAuthorization {
    /// The prompt has not been answered yet: the install request waits for it (bounded).
    NotDetermined,
    Restricted,
    Denied,
    Authorized,
}

impl TrackingAuthorization {
    pub fn as_str(self) -> &'static str {
        match self {
            TrackingAuthorization::NotDetermined => "not_determined",
            TrackingAuthorization::Restricted => "restricted",
            TrackingAuthorization::Denied => "denied",
            TrackingAuthorization::Authorized => "authorized",
        }
    }

    pub fn parse(text: &str) -> Option<TrackingAuthorization> {
        Some(match text {
            "not_determined" => TrackingAuthorization::NotDetermined,
            "restricted" => TrackingAuthorization::Restricted,
            "denied" => TrackingAuthorization::Denied,
            "authorized" => TrackingAuthorization::Authorized,
            _ => return None,
        })
    }
}

/// Why the engine could not open.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The longest `last_rejection_reason` kept, in bytes.
pub const MAX_REASON_BYTES: usize = 128;

/// A server's reason for a refusal, kept inline (no allocation) so that [`Stats`] stays `Copy`:
/// at most [`MAX_REASON_BYTES`] of the text, cut on a character boundary.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Reason {
    len: u8,
    bytes: [u8; MAX_REASON_BYTES],
}

impl Reason {
    pub fn new(text: &str) -> Reason {
        let mut len = text.len().min(MAX_REASON_BYTES);
        while !text.is_char_boundary(len) {
            len -= 1;
        }
        let mut bytes = [0; MAX_REASON_BYTES];
        for (to, from) in bytes.iter_mut().zip(text.as_bytes()).take(len) {
            *to = *from;
        }
        Reason { len: len as u8, bytes }
    }

    pub fn as_str(&self) -> &str {
        // SAFETY: `new`, the only constructor, keeps `len` <= MAX_REASON_BYTES and copies a prefix
        // of a `&str` that ends on a character boundary, so these bytes are in range and UTF-8
        // (checking again would cost the web build about 100 bytes).
        unsafe { core::str::from_utf8_unchecked(self.bytes.get_unchecked(..usize::from(self.len))) }
    }
}

impl Default for Reason {
    fn default() -> Self {
        Reason::new("")
    }
}

impl core::fmt::Debug for Reason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl core::fmt::Display for Reason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        Ok(Reason::new(&text))
    }
}

impl Stats {
    /// Notes why the server refused what was just counted in `rejected_by_server`.
    pub(super) fn note_rejection(&mut self, status: u16, reason: &str) {
        self.last_rejection_status = status.into();
        self.last_rejection_reason = Reason::new(reason);
    }

    /// The persisted counters, in declaration order.
    fn fields(&mut self) -> [(&'static str, &mut u64); 21] {
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
            ("bad_answers", &mut self.bad_answers),
            ("last_rejection_status", &mut self.last_rejection_status),
            ("dropped_by_middleware", &mut self.dropped_by_middleware),
            ("middleware_errors", &mut self.middleware_errors),
        ]
    }

    /// Writes the stats as a JSON object with snake_case keys; `in_flight` only when
    /// `with_in_flight` (it is not persisted).
    pub fn write(&self, w: &mut crate::json::Writer, with_in_flight: bool) {
        let mut copy = *self;
        let mut o = w.begin();
        for (key, value) in copy.fields() {
            o.u64(key, *value);
        }
        o.str("last_rejection_reason", self.last_rejection_reason.as_str());
        if with_in_flight {
            o.u64("in_flight", self.in_flight);
        }
        o.end();
    }

    /// Reads stats written by [`Stats::write`] (missing ones are zero or empty).
    pub fn read(o: &crate::json::Object) -> Stats {
        use crate::json::Value;
        let mut stats = Stats::default();
        for (key, value) in stats.fields() {
            *value = o.get(key).and_then(Value::as_u64).unwrap_or(0);
        }
        stats.last_rejection_reason = Reason::new(o.str("last_rejection_reason").unwrap_or_default());
        stats
    }
}
