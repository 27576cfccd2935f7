//! The wire contract shared by every SDK and the server.
//!
//! Everything that crosses the network is defined here: the event, the batch envelope, the
//! ingest and error responses, the limits and the request signature. `docs/protocol.md`
//! documents the same contract with JSON examples; keep the two in step.

#[allow(unused_imports)]
use crate::prelude::*;

#[cfg(feature = "serde")]
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

use crate::json::{self, Object, Value};

mod codec;
pub use codec::*;

/// Largest serialised event, in bytes.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Most events in one batch envelope.
pub const MAX_BATCH_EVENTS: usize = 500;
/// Largest serialised batch envelope, in bytes.
pub const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Longest event type name.
pub const MAX_TYPE_LEN: usize = 64;
/// Longest user id, anonymous id or device id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Deepest nesting of objects and arrays inside `properties`.
pub const MAX_PROPERTY_DEPTH: usize = 32;
/// How far (seconds) a request timestamp may be from the server clock.
pub const SIGNATURE_TOLERANCE_SECS: i64 = 300;

/// Path of the ingest endpoint, relative to the configured endpoint.
pub const EVENT_PATH: &str = "/v1/event";
pub const HEADER_APP: &str = "X-Trailmark-App";
pub const HEADER_TIMESTAMP: &str = "X-Trailmark-Timestamp";
pub const HEADER_SIGNATURE: &str = "X-Trailmark-Signature";
/// Who signs a server-to-server click (`POST /v1/click`): an ad network, with its own secret,
/// in place of [`HEADER_APP`].
pub const HEADER_NETWORK: &str = "X-Trailmark-Network";
/// W3C Trace Context header: every upload carries a fresh trace id, so the server's spans of
/// that request (ingest, store) share it with the SDK's upload.
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// A `traceparent` value (version 00, sampled).
pub fn traceparent(trace_id: [u8; 16], span_id: [u8; 8]) -> String {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    s.push_str(&hex::encode(trace_id));
    s.push('-');
    s.push_str(&hex::encode(span_id));
    s.push_str("-01");
    s
}

/// The trace id and parent span id of a version-00 `traceparent`; `None` when malformed or
/// all-zero (which the specification makes invalid).
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = value.trim().split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || flags.len() != 2 || hex::decode(flags).is_err() {
        return None;
    }
    let trace: [u8; 16] = hex::decode(trace).ok()?.try_into().ok()?;
    let span: [u8; 8] = hex::decode(span).ok()?.try_into().ok()?;
    (trace != [0; 16] && span != [0; 8]).then_some((trace, span))
}

/// Prefix of the signature header value for the current scheme.
pub const SIGNATURE_VERSION: &str = "v1";
/// Query parameters that carry the app id, timestamp and signature when the request cannot
/// carry headers (`navigator.sendBeacon`). They sign the body exactly as the headers do.
pub const QUERY_APP: &str = "tm_app";
pub const QUERY_TIMESTAMP: &str = "tm_ts";
pub const QUERY_SIGNATURE: &str = "tm_sig";

/// One tracked event. `event_id` is the idempotency key: the server stores `(app, event_id)` once.
/// The server's typed form (feature `serde`); the SDK writes events with [`EventView`].
#[cfg(feature = "serde")]
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Event {
    pub event_id: uuid::Uuid,
    #[cfg_attr(feature = "serde", serde(rename = "type"))]
    pub event_type: String,
    #[cfg_attr(feature = "serde", serde(with = "rfc3339_ms"))]
    pub timestamp: DateTime<Utc>,
    pub anonymous_id: String,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub user_id: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub device_id: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub session_id: Option<String>,
    #[cfg_attr(feature = "serde", serde(default))]
    pub properties: serde_json::Map<String, serde_json::Value>,
    #[cfg_attr(feature = "serde", serde(default))]
    pub context: Context,
}

/// Borrowed [`Context`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ContextRef<'a> {
    pub app: Option<&'a AppContext>,
    pub device: Option<&'a DeviceContext>,
    pub campaign: Option<&'a CampaignContext>,
    pub consent: Option<&'a ConsentContext>,
    pub sdk: Option<&'a SdkContext>,
    pub group_id: Option<&'a str>,
}

#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Context {
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub app: Option<AppContext>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub device: Option<DeviceContext>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub campaign: Option<CampaignContext>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub consent: Option<ConsentContext>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub sdk: Option<SdkContext>,
    /// The group (account, organisation) the user joined last with `group()`.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub group_id: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AppContext {
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub id: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub version: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub build: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DeviceContext {
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub os: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub os_version: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub model: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub manufacturer: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub locale: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub timezone: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub screen: Option<Screen>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Screen {
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct CampaignContext {
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub utm_source: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub utm_medium: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub utm_campaign: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub utm_term: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub utm_content: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub click_id: Option<String>,
}

impl CampaignContext {
    pub fn is_empty(&self) -> bool {
        *self == CampaignContext::default()
    }
}

/// Consent state at the moment the event was collected. `None` means "not decided yet".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ConsentContext {
    pub analytics: Option<bool>,
    pub attribution: Option<bool>,
    /// Missing: false (a sender that only says `attribution`).
    #[cfg_attr(feature = "serde", serde(default))]
    pub do_not_sell: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SdkContext {
    pub name: String,
    pub version: String,
}

/// Events the SDK had to drop locally since the last acknowledged batch, by reason.
/// Sent in the envelope so the server can count losses it never saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DropReport {
    /// Oldest events dropped because the queue reached its count cap.
    #[cfg_attr(feature = "serde", serde(default))]
    pub queue_full: u64,
    /// Events dropped because they outlived the queue's age cap.
    #[cfg_attr(feature = "serde", serde(default))]
    pub expired: u64,
    /// Events dropped because the pre-consent buffer was full.
    #[cfg_attr(feature = "serde", serde(default))]
    pub pre_consent_full: u64,
    /// Events refused at `track` (invalid type, too large, too deep...).
    #[cfg_attr(feature = "serde", serde(default))]
    pub invalid: u64,
    /// Events the host tracked faster than the SDK could queue them.
    #[cfg_attr(feature = "serde", serde(default))]
    pub backpressure: u64,
}

impl DropReport {
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }
    pub fn total(&self) -> u64 {
        self.queue_full + self.expired + self.pre_consent_full + self.invalid + self.backpressure
    }
    /// Subtracts what an acknowledged batch reported, leaving drops that happened since.
    pub fn subtract(&mut self, sent: &DropReport) {
        self.queue_full = self.queue_full.saturating_sub(sent.queue_full);
        self.expired = self.expired.saturating_sub(sent.expired);
        self.pre_consent_full = self.pre_consent_full.saturating_sub(sent.pre_consent_full);
        self.invalid = self.invalid.saturating_sub(sent.invalid);
        self.backpressure = self.backpressure.saturating_sub(sent.backpressure);
    }
}

/// `{"sent_at": ..., "batch": [Event, ...]}` (the server's typed form, feature `serde`). `E` is [`Event`] when parsing strictly, or
/// `serde_json::Value` when a server validates events one by one.
#[cfg(feature = "serde")]
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchEnvelope<E> {
    #[cfg_attr(feature = "serde", serde(with = "rfc3339_ms"))]
    pub sent_at: DateTime<Utc>,
    pub batch: Vec<E>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "DropReport::is_empty"))]
    pub dropped: DropReport,
}

/// Body of a successful ingest response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct IngestResponse {
    pub accepted: u64,
    pub duplicates: u64,
    /// Events accepted but not stored: from a deleted person (or a deleted event sent again),
    /// see docs/privacy.md. An SDK treats them as delivered.
    #[cfg_attr(feature = "serde", serde(default))]
    pub suppressed: u64,
    #[cfg_attr(feature = "serde", serde(default))]
    pub rejected: Vec<Rejection>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Rejection {
    /// Position of the event in the request's `batch` array.
    pub index: usize,
    pub reason: String,
}

/// Body of every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    /// The server's clock (Unix ms) when it answered: an SDK whose signature was refused as
    /// `stale_timestamp` learns its clock's offset from it.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub server_time: Option<i64>,
}

impl ErrorResponse {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorResponse { error: ErrorBody { code: code.into(), message: message.into(), server_time: None } }
    }
}

/// Path of the install-attribution endpoint (signed like [`EVENT_PATH`]).
pub const INSTALL_PATH: &str = "/v1/install";

/// Platforms an install can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Platform {
    Ios,
    Android,
    Web,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Ios => "ios",
            Platform::Android => "android",
            Platform::Web => "web",
        }
    }
}

/// The device facts an install reports. Every field is optional; the more there are, the more
/// ways the server has to match the install to a click.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct InstallDevice {
    /// Apple advertising id (only with ATT permission).
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub idfa: Option<String>,
    /// Apple identifier for vendor.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub idfv: Option<String>,
    /// Google advertising id.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub gaid: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub android_id: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub os: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub os_version: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub model: Option<String>,
    /// BCP 47, e.g. `en-US`.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub locale: Option<String>,
    /// IANA name, e.g. `Europe/Berlin`.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub timezone: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub screen: Option<Screen>,
}

/// `POST /v1/install`: the first launch of an app, sent once per install. The server's typed
/// form (feature `serde`); the SDK writes it with [`InstallRequestView`].
#[cfg(feature = "serde")]
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct InstallRequest {
    pub event_id: uuid::Uuid,
    pub anonymous_id: String,
    #[cfg_attr(feature = "serde", serde(with = "rfc3339_ms"))]
    pub timestamp: DateTime<Utc>,
    pub platform: Platform,
    #[cfg_attr(feature = "serde", serde(default))]
    pub device: InstallDevice,
    /// The Play Install Referrer string (Android), e.g. `tm_click_id=…&utm_source=…`.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub install_referrer: Option<String>,
    /// Play Install Referrer's `referrerClickTimestampSeconds`, in Unix ms.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub referrer_click_ts: Option<i64>,
    /// Play Install Referrer's `installBeginTimestampSeconds`, in Unix ms.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub install_begin_ts: Option<i64>,
    /// When the package was installed on the device (Android's `firstInstallTime`, from any
    /// store), in Unix ms: a click reported after it was injected. A server older than this
    /// field refuses it: upgrade servers before SDKs.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub installed_at: Option<i64>,
    /// A Trailmark click id the app already knows (from a deep link or the web).
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub click_id: Option<String>,
    /// The consent state the SDK had when it sent the request (as events carry it in
    /// `context.consent`). Absent from older SDKs and from server-side senders: the server then
    /// applies no consent restriction of its own. A server older than this field refuses it
    /// (unknown fields are refused): upgrade servers before SDKs.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub consent: Option<ConsentContext>,
}

/// How an install was matched to a touchpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum MatchType {
    ClickId,
    Referrer,
    DeviceId,
    Fingerprint,
    ViewThrough,
    Organic,
}

impl MatchType {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchType::ClickId => "click_id",
            MatchType::Referrer => "referrer",
            MatchType::DeviceId => "device_id",
            MatchType::Fingerprint => "fingerprint",
            MatchType::ViewThrough => "view_through",
            MatchType::Organic => "organic",
        }
    }
}

/// A deferred deep link: where the app should take the user on first launch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct DeepLink {
    pub path: String,
    #[cfg_attr(feature = "serde", serde(default))]
    pub params: alloc::collections::BTreeMap<String, String>,
}

/// The fraud rules' verdict on an install.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct FraudVerdict {
    /// Names of the rules that fired (flagged or rejected).
    pub flags: Vec<String>,
    /// True when a rule with the `reject` policy fired: the install counts as organic.
    pub rejected: bool,
}

impl AttributionResult {
    /// An organic install: no campaign, with the fraud verdict that may have made it so.
    pub fn organic(fraud: FraudVerdict) -> Self {
        AttributionResult {
            attributed: false,
            match_type: MatchType::Organic,
            confidence: 0.0,
            campaign_id: None,
            link_id: None,
            click_id: None,
            network: None,
            deep_link: None,
            fraud,
            reinstall: false,
            reason: None,
        }
    }
}

/// The answer to `POST /v1/install`.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct AttributionResult {
    pub attributed: bool,
    pub match_type: MatchType,
    /// 1.0 for deterministic matches, the score for a fingerprint, 0 for organic.
    pub confidence: f64,
    pub campaign_id: Option<String>,
    pub link_id: Option<String>,
    pub click_id: Option<String>,
    pub network: Option<String>,
    pub deep_link: Option<DeepLink>,
    pub fraud: FraudVerdict,
    /// True when this device installed before, inside the re-attribution window: not a new
    /// install; the original attribution is returned.
    #[cfg_attr(feature = "serde", serde(default))]
    pub reinstall: bool,
    /// Why an install is not attributed (`no_click_in_window`, `outside_window`,
    /// `below_threshold`, `ambiguous`, `consent_denied`, `rejected_fraud`, `reinstall`);
    /// `None` when attributed.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub reason: Option<String>,
}

/// Why an event (or a call that would produce one) is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ValidationError {
    #[error("event type is empty")]
    EmptyType,
    #[error("event type is {len} bytes long; the limit is {MAX_TYPE_LEN}")]
    TypeTooLong { len: usize },
    #[error("event type {0:?} may only contain a-z, 0-9 and _")]
    InvalidTypeChar(String),
    #[error("{field} is empty")]
    EmptyId { field: &'static str },
    #[error("{field} is {len} bytes long; the limit is {MAX_ID_LEN}")]
    IdTooLong { field: &'static str, len: usize },
    #[error("properties nest deeper than {MAX_PROPERTY_DEPTH} levels")]
    TooDeep,
    #[error("event would be {size} bytes serialised; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("input is not valid UTF-8")]
    InvalidUtf8,
    #[error("input is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("properties must be a JSON object")]
    NotAnObject,
    #[error("invalid {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
}

impl ValidationError {
    /// A stable code for the refusal (`invalid_type_char`...). The web SDK passes codes across
    /// the wasm boundary and words them in JavaScript, so no formatting code ships in the wasm.
    pub fn code(&self) -> &'static str {
        match self {
            ValidationError::EmptyType => "empty_type",
            ValidationError::TypeTooLong { .. } => "type_too_long",
            ValidationError::InvalidTypeChar(_) => "invalid_type_char",
            ValidationError::EmptyId { .. } => "empty_id",
            ValidationError::IdTooLong { .. } => "id_too_long",
            ValidationError::TooDeep => "too_deep",
            ValidationError::TooLarge { .. } => "too_large",
            ValidationError::InvalidUtf8 => "invalid_utf8",
            ValidationError::InvalidJson(_) => "invalid_json",
            ValidationError::NotAnObject => "not_an_object",
            ValidationError::InvalidField { .. } => "invalid_field",
        }
    }

    /// The field a refusal is about, when it names one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ValidationError::EmptyId { field }
            | ValidationError::IdTooLong { field, .. }
            | ValidationError::InvalidField { field, .. } => Some(field),
            _ => None,
        }
    }

    /// `code` or `code:field`.
    pub fn code_text(&self) -> String {
        let mut s = String::from(self.code());
        if let Some(field) = self.field() {
            s.push(':');
            s.push_str(field);
        }
        s
    }
}

/// Checks an event type against `[a-z0-9_]{1,64}`.
pub fn validate_event_type(name: &str) -> Result<(), ValidationError> {
    if name.is_empty() {
        return Err(ValidationError::EmptyType);
    }
    if name.len() > MAX_TYPE_LEN {
        return Err(ValidationError::TypeTooLong { len: name.len() });
    }
    if !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return Err(ValidationError::InvalidTypeChar(name.to_owned()));
    }
    Ok(())
}

/// Checks an identifier (user id, anonymous id, device id): non-empty and at most
/// [`MAX_ID_LEN`] bytes, without control characters.
pub fn validate_id(field: &'static str, id: &str) -> Result<(), ValidationError> {
    if id.trim().is_empty() {
        return Err(ValidationError::EmptyId { field });
    }
    if id.len() > MAX_ID_LEN {
        return Err(ValidationError::IdTooLong { field, len: id.len() });
    }
    if id.chars().any(char::is_control) {
        return Err(ValidationError::InvalidField { field, reason: "contains control characters".into() });
    }
    Ok(())
}

/// Checks that properties nest at most [`MAX_PROPERTY_DEPTH`] levels and serialise to at most
/// `max_bytes`. Walks iteratively, so hostile nesting cannot overflow the stack.
pub fn validate_properties(props: &Object, max_bytes: usize) -> Result<(), ValidationError> {
    validate_depth(props)?;
    let size = json_len(props) + reprint_excess(props);
    if size > max_bytes {
        return Err(ValidationError::TooLarge { size, limit: max_bytes });
    }
    Ok(())
}

/// Checks that properties nest at most [`MAX_PROPERTY_DEPTH`] levels, iteratively.
pub fn validate_depth(props: &Object) -> Result<(), ValidationError> {
    // The properties object itself is level 1, its values level 2.
    let mut stack: Vec<(&Value, usize)> = props.values().map(|v| (v, 2)).collect();
    while let Some((value, level)) = stack.pop() {
        let children: &mut dyn Iterator<Item = &Value> = match value {
            Value::Array(items) => &mut items.iter(),
            Value::Object(map) => &mut map.values(),
            _ => continue,
        };
        if level > MAX_PROPERTY_DEPTH {
            return Err(ValidationError::TooDeep);
        }
        stack.extend(children.map(|v| (v, level + 1)));
    }
    Ok(())
}

/// How much longer the server's serde_json may write `props` than their text: it re-prints
/// every number that is not a plain integer (`1e15` becomes `1000000000000000.0`), in at most
/// 24 characters (the longest shortest-round-trip form of a double). Size checks add this, so
/// the SDK never accepts an event that the server then measures as too large. Iterative.
pub fn reprint_excess(props: &Object) -> usize {
    const LONGEST_DOUBLE: usize = 24;
    let mut excess = 0;
    let mut stack: Vec<&Value> = props.values().collect();
    while let Some(value) = stack.pop() {
        match value {
            Value::Number(n) => {
                let text = n.as_str();
                let plain = !text.starts_with("-0") && (n.as_i64().is_some() || n.as_u64().is_some());
                if !plain {
                    excess += LONGEST_DOUBLE.saturating_sub(text.len());
                }
            }
            Value::Array(items) => stack.extend(items.iter()),
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    excess
}

/// Length of the compact JSON text of `props`.
pub fn json_len(props: &Object) -> usize {
    let mut w = json::Writer::new();
    w.object(props);
    w.len()
}

/// True when `value` holds an array or object nested deeper than `max` levels (`value` itself
/// is level 1). Walks iteratively, so hostile nesting cannot overflow the stack. (The server's
/// check on serde_json values.)
#[cfg(feature = "serde")]
pub fn nesting_exceeds(value: &serde_json::Value, max: usize) -> bool {
    use serde_json::Value;
    let mut stack: Vec<(&Value, usize)> = vec![(value, 1)];
    while let Some((value, level)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match value {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if level > max {
            return true;
        }
        stack.extend(children.map(|v| (v, level + 1)));
    }
    false
}

/// Parses properties handed over as bytes (the FFI and wasm path): UTF-8, JSON, an object.
/// JSON has no NaN or Infinity; literals such as `NaN` or `1e999` are refused here. Empty text
/// (or only white space) means no properties.
pub fn parse_properties(bytes: &[u8]) -> Result<Object, ValidationError> {
    let text = core::str::from_utf8(bytes).map_err(|_| ValidationError::InvalidUtf8)?;
    if text.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r')).is_empty() {
        return Ok(Object::new());
    }
    match json::parse(text, MAX_PROPERTY_DEPTH) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ValidationError::NotAnObject),
        Err(json::ParseError::TooDeep) => Err(ValidationError::TooDeep),
        Err(e) => Err(ValidationError::InvalidJson(e.describe())),
    }
}

/// Length of the compact JSON serialisation of `value`, without allocating it (the server's).
#[cfg(feature = "serde")]
pub fn serialized_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Serialising a Map or our own structs into an infallible writer cannot fail.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Formats a Unix time in milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_millis(unix_ms: i64) -> String {
    crate::time::format_millis(unix_ms)
}

/// Serde helper: RFC 3339 UTC timestamps written with millisecond precision (`...T12:00:00.000Z`).
#[cfg(feature = "serde")]
pub mod rfc3339_ms {
    use chrono::{DateTime, SecondsFormat, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(dt: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&dt.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text).map(|dt| dt.with_timezone(&Utc)).map_err(serde::de::Error::custom)
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Value of the `X-Trailmark-Signature` header:
/// `v1=<lowercase hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`.
pub fn sign(secret: &[u8], timestamp_secs: i64, body: &[u8]) -> String {
    let tag = signing_mac(secret, timestamp_secs, body).finalize();
    let mut s = String::with_capacity(3 + 64);
    s.push_str(SIGNATURE_VERSION);
    s.push('=');
    s.push_str(&hex::encode(tag.into_bytes()));
    s
}

fn signing_mac(secret: &[u8], timestamp_secs: i64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(json::i64_text(timestamp_secs).as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Why a request signature is refused. Every variant maps to HTTP 401.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("malformed {0} header")]
    Malformed(&'static str),
    #[error("request timestamp is {skew_secs} s away from server time; the limit is {SIGNATURE_TOLERANCE_SECS} s")]
    Stale { skew_secs: i64 },
    #[error("signature does not match")]
    Mismatch,
}

/// Verifies the signature headers of a request against `secret` in constant time.
pub fn verify_signature(
    secret: &[u8],
    timestamp_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), SignatureError> {
    let ts_text = timestamp_header.ok_or(SignatureError::Missing(HEADER_TIMESTAMP))?;
    let sig_text = signature_header.ok_or(SignatureError::Missing(HEADER_SIGNATURE))?;
    let ts = json::parse_i64(ts_text.trim()).ok_or(SignatureError::Malformed(HEADER_TIMESTAMP))?;
    let hex_sig = sig_text.trim().strip_prefix("v1=").ok_or(SignatureError::Malformed(HEADER_SIGNATURE))?;
    let tag = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed(HEADER_SIGNATURE))?;
    if tag.len() != 32 {
        return Err(SignatureError::Malformed(HEADER_SIGNATURE));
    }
    let skew = now_secs.saturating_sub(ts);
    // `unsigned_abs`: the skew can be i64::MIN (a clock before 1970 against i64::MAX).
    if skew.unsigned_abs() > SIGNATURE_TOLERANCE_SECS as u64 {
        return Err(SignatureError::Stale { skew_secs: skew });
    }
    signing_mac(secret, ts, body).verify_slice(&tag).map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trip() {
        let v = traceparent([0xab; 16], [0x01; 8]);
        assert_eq!(v, "00-abababababababababababababababab-0101010101010101-01");
        assert_eq!(parse_traceparent(&v), Some(([0xab; 16], [0x01; 8])));
        for bad in [
            "",
            "01-abababababababababababababababab-0101010101010101-01",
            "00-00000000000000000000000000000000-0101010101010101-01",
            "00-abab-0101010101010101-01",
            "00-abababababababababababababababab-0101010101010101-01-x",
            "00-abababababababababababababababab-0101010101010101-zz",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn event_type_rules() {
        assert_eq!(validate_event_type("purchase"), Ok(()));
        assert_eq!(validate_event_type("a_1"), Ok(()));
        assert_eq!(validate_event_type(""), Err(ValidationError::EmptyType));
        assert_eq!(validate_event_type(&"a".repeat(64)), Ok(()));
        assert_eq!(validate_event_type(&"a".repeat(65)), Err(ValidationError::TypeTooLong { len: 65 }));
        assert!(matches!(validate_event_type("Add To Cart"), Err(ValidationError::InvalidTypeChar(_))));
        assert!(matches!(validate_event_type("café"), Err(ValidationError::InvalidTypeChar(_))));
    }

    #[test]
    fn signature_round_trip_and_failures() {
        let body = br#"{"sent_at":"2026-01-01T00:00:00.000Z","batch":[]}"#;
        let sig = sign(b"secret", 1_700_000_000, body);
        assert!(sig.starts_with("v1="));
        assert_eq!(sig.len(), 3 + 64);
        assert_eq!(sig, sig.to_lowercase());
        let ok = verify_signature(b"secret", Some("1700000000"), Some(&sig), body, 1_700_000_100);
        assert_eq!(ok, Ok(()));
        assert_eq!(
            verify_signature(b"other", Some("1700000000"), Some(&sig), body, 1_700_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"secret", Some("1700000000"), Some(&sig), b"tampered", 1_700_000_000),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"secret", Some("1700000000"), Some(&sig), body, 1_700_000_301),
            Err(SignatureError::Stale { skew_secs: 301 })
        );
        assert_eq!(
            verify_signature(b"secret", None, Some(&sig), body, 1_700_000_000),
            Err(SignatureError::Missing(HEADER_TIMESTAMP))
        );
        assert_eq!(
            verify_signature(b"secret", Some("x"), Some(&sig), body, 1_700_000_000),
            Err(SignatureError::Malformed(HEADER_TIMESTAMP))
        );
        assert_eq!(
            verify_signature(b"secret", Some("1700000000"), Some("v1=zz"), body, 1_700_000_000),
            Err(SignatureError::Malformed(HEADER_SIGNATURE))
        );
    }

    #[test]
    fn known_signature_vector() {
        // Computed independently: printf '1700000000.{}' | openssl dgst -sha256 -hmac secret
        let sig = sign(b"secret", 1_700_000_000, b"{}");
        assert_eq!(sig, "v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163");
    }

    #[cfg(feature = "serde")]
    #[test]
    fn event_serialises_with_millisecond_utc_timestamp() {
        use serde_json::json;
        let event = Event {
            event_id: uuid::Uuid::nil(),
            event_type: "purchase".into(),
            timestamp: DateTime::from_timestamp_millis(1_767_225_600_123).unwrap(),
            anonymous_id: "anon".into(),
            user_id: None,
            device_id: None,
            session_id: Some("s".into()),
            properties: json!({"revenue": 9.99}).as_object().unwrap().clone(),
            context: Context::default(),
        };
        let text = serde_json::to_string(&event).unwrap();
        assert!(text.contains(r#""timestamp":"2026-01-01T00:00:00.123Z""#), "{text}");
        assert!(text.contains(r#""type":"purchase""#));
        assert!(!text.contains("user_id"));
        let back: Event = serde_json::from_str(&text).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn empty_properties_text_is_an_empty_object() {
        // The bindings send "{}", but a host calling the FFI or wasm layer directly may send
        // nothing at all: empty text (or only white space) means no properties, not a refusal.
        for text in ["", " ", "\n\t \r", "{}", " {} "] {
            assert_eq!(parse_properties(text.as_bytes()), Ok(Object::new()), "{text:?}");
        }
    }

    #[test]
    fn hostile_properties() {
        assert_eq!(parse_properties(b"\xff\xfe"), Err(ValidationError::InvalidUtf8));
        assert!(matches!(parse_properties(br#"{"x": NaN}"#), Err(ValidationError::InvalidJson(_))));
        assert!(matches!(parse_properties(br#"{"x": Infinity}"#), Err(ValidationError::InvalidJson(_))));
        assert!(matches!(parse_properties(br#"{"x": 1e999}"#), Err(ValidationError::InvalidJson(_))));
        assert_eq!(parse_properties(b"[1,2]"), Err(ValidationError::NotAnObject));
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_properties(deep.as_bytes()), Err(ValidationError::TooDeep));
        // Within serde's recursion limit but past ours.
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(40), "]".repeat(40));
        assert_eq!(parse_properties(deep.as_bytes()), Err(ValidationError::TooDeep));
        // Exactly at the limit: the object is level 1, 31 arrays inside it.
        let edge = format!("{{\"a\":{}1{}}}", "[".repeat(31), "]".repeat(31));
        let map = parse_properties(edge.as_bytes()).unwrap();
        assert_eq!(validate_properties(&map, MAX_EVENT_BYTES), Ok(()));
        let mut big = Object::new();
        big.insert("blob", "x".repeat(40_000));
        assert!(matches!(validate_properties(&big, MAX_EVENT_BYTES), Err(ValidationError::TooLarge { .. })));
        let mut nested = Value::from("leaf");
        for _ in 0..40 {
            nested = Value::Array(vec![nested]);
        }
        let mut deep = Object::new();
        deep.insert("a", nested);
        assert_eq!(validate_depth(&deep), Err(ValidationError::TooDeep));
    }
}
