//! The wire contract shared by every SDK and the server.
//!
//! Everything that crosses the network is defined here: the event, the batch envelope, the
//! ingest and error responses, the limits and the request signature. `docs/protocol.md`
//! documents the same contract with JSON examples; keep the two in step.

use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;
use thiserror::Error;

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
/// W3C Trace Context header: every upload carries a fresh trace id, so the server's spans of
/// that request (ingest, store) share it with the SDK's upload.
pub const HEADER_TRACEPARENT: &str = "traceparent";

/// A `traceparent` value (version 00, sampled).
pub fn traceparent(trace_id: [u8; 16], span_id: [u8; 8]) -> String {
    format!("00-{}-{}-01", hex::encode(trace_id), hex::encode(span_id))
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event_id: uuid::Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    #[serde(with = "rfc3339_ms")]
    pub timestamp: DateTime<Utc>,
    pub anonymous_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default)]
    pub properties: Map<String, Value>,
    #[serde(default)]
    pub context: Context,
}

/// A borrowed view of an [`Event`] that serialises to exactly the same JSON, so an SDK can
/// write an event without cloning its identity and context for every call.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct EventRef<'a> {
    pub event_id: uuid::Uuid,
    #[serde(rename = "type")]
    pub event_type: &'a str,
    #[serde(with = "rfc3339_ms")]
    pub timestamp: DateTime<Utc>,
    pub anonymous_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<&'a str>,
    pub properties: &'a Map<String, Value>,
    pub context: ContextRef<'a>,
}

/// Borrowed [`Context`].
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ContextRef<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<&'a AppContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<&'a DeviceContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<&'a CampaignContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consent: Option<&'a ConsentContext>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sdk: Option<&'a SdkContext>,
}

impl<'a> EventRef<'a> {
    pub fn of(event: &'a Event) -> Self {
        let c = &event.context;
        EventRef {
            event_id: event.event_id,
            event_type: &event.event_type,
            timestamp: event.timestamp,
            anonymous_id: &event.anonymous_id,
            user_id: event.user_id.as_deref(),
            device_id: event.device_id.as_deref(),
            session_id: event.session_id.as_deref(),
            properties: &event.properties,
            context: ContextRef {
                app: c.app.as_ref(),
                device: c.device.as_ref(),
                campaign: c.campaign.as_ref(),
                consent: c.consent.as_ref(),
                sdk: c.sdk.as_ref(),
            },
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<CampaignContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent: Option<ConsentContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdk: Option<SdkContext>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<Screen>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Screen {
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CampaignContext {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_term: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utm_content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_id: Option<String>,
}

impl CampaignContext {
    pub fn is_empty(&self) -> bool {
        *self == CampaignContext::default()
    }
}

/// Consent state at the moment the event was collected. `None` means "not decided yet".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentContext {
    pub analytics: Option<bool>,
    pub attribution: Option<bool>,
    pub do_not_sell: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SdkContext {
    pub name: String,
    pub version: String,
}

/// Events the SDK had to drop locally since the last acknowledged batch, by reason.
/// Sent in the envelope so the server can count losses it never saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropReport {
    /// Oldest events dropped because the queue reached its count cap.
    #[serde(default)]
    pub queue_full: u64,
    /// Events dropped because they outlived the queue's age cap.
    #[serde(default)]
    pub expired: u64,
    /// Events dropped because the pre-consent buffer was full.
    #[serde(default)]
    pub pre_consent_full: u64,
    /// Events refused at `track` (invalid type, too large, too deep...).
    #[serde(default)]
    pub invalid: u64,
    /// Events the host tracked faster than the SDK could queue them.
    #[serde(default)]
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

/// `{"sent_at": ..., "batch": [Event, ...]}`. `E` is [`Event`] when parsing strictly, or
/// `serde_json::Value` when a server validates events one by one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchEnvelope<E> {
    #[serde(with = "rfc3339_ms")]
    pub sent_at: DateTime<Utc>,
    pub batch: Vec<E>,
    #[serde(default, skip_serializing_if = "DropReport::is_empty")]
    pub dropped: DropReport,
}

/// Body of a successful ingest response.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResponse {
    pub accepted: u64,
    pub duplicates: u64,
    #[serde(default)]
    pub rejected: Vec<Rejection>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Position of the event in the request's `batch` array.
    pub index: usize,
    pub reason: String,
}

/// Body of every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
}

impl ErrorResponse {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        ErrorResponse { error: ErrorBody { code: code.into(), message: message.into() } }
    }
}

/// Path of the install-attribution endpoint (signed like [`EVENT_PATH`]).
pub const INSTALL_PATH: &str = "/v1/install";

/// Platforms an install can come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallDevice {
    /// Apple advertising id (only with ATT permission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idfa: Option<String>,
    /// Apple identifier for vendor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idfv: Option<String>,
    /// Google advertising id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gaid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub android_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// BCP 47, e.g. `en-US`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// IANA name, e.g. `Europe/Berlin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<Screen>,
}

/// `POST /v1/install`: the first launch of an app, sent once per install.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallRequest {
    pub event_id: uuid::Uuid,
    pub anonymous_id: String,
    #[serde(with = "rfc3339_ms")]
    pub timestamp: DateTime<Utc>,
    pub platform: Platform,
    #[serde(default)]
    pub device: InstallDevice,
    /// The Play Install Referrer string (Android), e.g. `tm_click_id=…&utm_source=…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_referrer: Option<String>,
    /// Play Install Referrer's `referrerClickTimestampSeconds`, in Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer_click_ts: Option<i64>,
    /// Play Install Referrer's `installBeginTimestampSeconds`, in Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_begin_ts: Option<i64>,
    /// A Trailmark click id the app already knows (from a deep link or the web).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub click_id: Option<String>,
}

/// How an install was matched to a touchpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeepLink {
    pub path: String,
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
}

/// The fraud rules' verdict on an install.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
        }
    }
}

/// The answer to `POST /v1/install`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(default)]
    pub reinstall: bool,
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
pub fn validate_properties(props: &Map<String, Value>, max_bytes: usize) -> Result<(), ValidationError> {
    validate_depth(props)?;
    let size = serialized_len(props);
    if size > max_bytes {
        return Err(ValidationError::TooLarge { size, limit: max_bytes });
    }
    Ok(())
}

/// Checks that properties nest at most [`MAX_PROPERTY_DEPTH`] levels, iteratively.
pub fn validate_depth(props: &Map<String, Value>) -> Result<(), ValidationError> {
    // The properties object itself is level 1, its values level 2.
    if nesting_exceeds_from(props.values(), 2, MAX_PROPERTY_DEPTH) {
        return Err(ValidationError::TooDeep);
    }
    Ok(())
}

/// True when `value` holds an array or object nested deeper than `max` levels (`value` itself
/// is level 1). Walks iteratively, so hostile nesting cannot overflow the stack.
pub fn nesting_exceeds(value: &Value, max: usize) -> bool {
    nesting_exceeds_from(std::iter::once(value), 1, max)
}

fn nesting_exceeds_from<'a>(start: impl Iterator<Item = &'a Value>, level: usize, max: usize) -> bool {
    let mut stack: Vec<(&Value, usize)> = start.map(|v| (v, level)).collect();
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
/// JSON has no NaN or Infinity; literals such as `NaN` or `1e999` are refused here.
pub fn parse_properties(bytes: &[u8]) -> Result<Map<String, Value>, ValidationError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ValidationError::InvalidUtf8)?;
    if text.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ValidationError::NotAnObject),
        Err(e) if e.to_string().contains("recursion limit") => Err(ValidationError::TooDeep),
        Err(e) => Err(ValidationError::InvalidJson(e.to_string())),
    }
}

/// Length of the compact JSON serialisation of `value`, without allocating it.
pub fn serialized_len<T: Serialize + ?Sized>(value: &T) -> usize {
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
    let dt = DateTime::<Utc>::from_timestamp_millis(unix_ms).unwrap_or_default();
    dt.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Serde helper: RFC 3339 UTC timestamps written with millisecond precision (`...T12:00:00.000Z`).
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
    format!("{SIGNATURE_VERSION}={}", hex::encode(tag.into_bytes()))
}

fn signing_mac(secret: &[u8], timestamp_secs: i64, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp_secs.to_string().as_bytes());
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
    let ts: i64 = ts_text.trim().parse().map_err(|_| SignatureError::Malformed(HEADER_TIMESTAMP))?;
    let hex_sig = sig_text.trim().strip_prefix("v1=").ok_or(SignatureError::Malformed(HEADER_SIGNATURE))?;
    let tag = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed(HEADER_SIGNATURE))?;
    if tag.len() != 32 {
        return Err(SignatureError::Malformed(HEADER_SIGNATURE));
    }
    let skew = now_secs.saturating_sub(ts);
    if skew.abs() > SIGNATURE_TOLERANCE_SECS {
        return Err(SignatureError::Stale { skew_secs: skew });
    }
    signing_mac(secret, ts, body).verify_slice(&tag).map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    #[test]
    fn event_serialises_with_millisecond_utc_timestamp() {
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
    fn borrowed_event_serialises_identically() {
        let text = r#"{"event_id":"6f1c2a8e-3b4d-4f6a-9c1e-2d3f4a5b6c7d","type":"add_to_cart",
            "timestamp":"2026-01-01T12:00:00.123Z","anonymous_id":"a","user_id":"u","device_id":"d",
            "session_id":"s","properties":{"sku":"A-1","n":[1,{"x":null}]},
            "context":{"app":{"id":"com.example","version":"1","build":"2"},
            "device":{"os":"iOS","os_version":"18","model":"m","manufacturer":"Apple","locale":"de-DE",
            "timezone":"Europe/Berlin","screen":{"width":1,"height":2}},
            "campaign":{"utm_source":"s","utm_medium":"m","utm_campaign":"c","utm_term":"t","utm_content":"x","click_id":"k"},
            "consent":{"analytics":true,"attribution":null,"do_not_sell":false},"sdk":{"name":"n","version":"v"}}}"#;
        let event: Event = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&EventRef::of(&event)).unwrap(), serde_json::to_string(&event).unwrap());
        let mut sparse = event.clone();
        sparse.user_id = None;
        sparse.context = Context::default();
        assert_eq!(serde_json::to_string(&EventRef::of(&sparse)).unwrap(), serde_json::to_string(&sparse).unwrap());
    }

    #[test]
    fn empty_properties_text_is_an_empty_object() {
        // The bindings send "{}", but a host calling the FFI or wasm layer directly may send
        // nothing at all: empty text (or only white space) means no properties, not a refusal.
        for text in ["", " ", "\n\t \r", "{}", " {} "] {
            assert_eq!(parse_properties(text.as_bytes()), Ok(Map::new()), "{text:?}");
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
        let map = parse_properties(deep.as_bytes()).unwrap();
        assert_eq!(validate_properties(&map, MAX_EVENT_BYTES), Err(ValidationError::TooDeep));
        let big = json!({"blob": "x".repeat(40_000)});
        assert!(matches!(
            validate_properties(big.as_object().unwrap(), MAX_EVENT_BYTES),
            Err(ValidationError::TooLarge { .. })
        ));
    }
}
