//! The Trailmark SDK for Swift and Kotlin, through UniFFI.
//!
//! This crate only marshals: records in, records out, and the platform's HTTP stack adapted to
//! the core's [`Uploader`]. Every decision (validation, consent, queueing, retries, hashing)
//! is the core's; the native driver owns the worker thread, so no call blocks on disk or
//! network.

use std::collections::HashMap;
use std::sync::Arc;

use trailmark_core::engine::{UploadOutcome, UploadTask};
use trailmark_core::json::{Object, Writer};
use trailmark_core::native::{self, NativeOptions, Uploader};
use trailmark_core::{ConsentUpdate, HostConfig, protocol};

uniffi::setup_scaffolding!();

mod fast;

/// Why a call failed. `track` and the other recording calls never fail for bad input: the
/// core refuses and counts it (see [`SdkStats::refused_invalid`]).
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum TrailmarkError {
    #[error("invalid configuration: {reason}")]
    InvalidConfig { reason: String },
    #[error("invalid input: {reason}")]
    InvalidInput { reason: String },
    #[error("storage: {reason}")]
    Storage { reason: String },
    #[error("the SDK has shut down")]
    Closed,
    #[error("the SDK did not answer in time")]
    Timeout,
}

impl From<native::Error> for TrailmarkError {
    fn from(e: native::Error) -> Self {
        match e {
            native::Error::Open(e) => TrailmarkError::InvalidConfig { reason: e.to_string() },
            native::Error::Invalid(e) => TrailmarkError::InvalidInput { reason: e.to_string() },
            native::Error::Store(e) => TrailmarkError::Storage { reason: e.to_string() },
            native::Error::Start(reason) => TrailmarkError::Storage { reason },
            native::Error::Backpressure | native::Error::Closed => TrailmarkError::Closed,
            native::Error::Timeout(_) => TrailmarkError::Timeout,
        }
    }
}

/// What the host app configures.
#[derive(Debug, Clone, uniffi::Record)]
pub struct TrailmarkConfig {
    pub app_id: String,
    pub app_secret: String,
    /// Base URL of the collection server, e.g. `https://collect.example.com`.
    pub endpoint: String,
    /// Where the queue lives (a file in the app's private storage).
    pub db_path: String,
    /// Hold events until consent is given.
    #[uniffi(default = false)]
    pub require_consent: bool,
    /// IDFV on Apple platforms, the Android id on Android.
    #[uniffi(default = None)]
    pub device_id: Option<String>,
    /// IDFA (with ATT permission) or GAID; sent only in the install request, with attribution
    /// consent.
    #[uniffi(default = None)]
    pub advertising_id: Option<String>,
    #[uniffi(default = None)]
    pub app_version: Option<String>,
    #[uniffi(default = None)]
    pub os: Option<String>,
    #[uniffi(default = None)]
    pub os_version: Option<String>,
    #[uniffi(default = None)]
    pub model: Option<String>,
    #[uniffi(default = None)]
    pub locale: Option<String>,
    #[uniffi(default = None)]
    pub timezone: Option<String>,
    /// The SDK's name and version on the wire (`trailmark-swift`, `trailmark-kotlin`).
    #[uniffi(default = None)]
    pub sdk_name: Option<String>,
    #[uniffi(default = None)]
    pub sdk_version: Option<String>,
    /// Upload as soon as this many events are queued (default 20).
    #[uniffi(default = None)]
    pub flush_at: Option<u32>,
    /// Upload queued events at least this often, in milliseconds (default 30,000).
    #[uniffi(default = None)]
    pub flush_interval_ms: Option<u64>,
    /// Most events kept waiting for upload; past it the oldest are dropped (default 10,000).
    #[uniffi(default = None)]
    pub max_queue_events: Option<u32>,
    /// More `identify` traits sent only as SHA-256 (`<name>_sha256`), besides the e-mail and
    /// phone names always hashed. E-mail rules for names with `email`, phone rules for
    /// `phone`/`mobile`, trimmed and lower-cased otherwise.
    #[uniffi(default = None)]
    pub hashed_traits: Option<Vec<String>>,
    /// Debug lines from the core (one per decision) to the logger given with
    /// `set_debug_logger`; the Swift and Kotlin APIs send them to the platform log.
    #[uniffi(default = false)]
    pub debug: bool,
    /// `context.app.build` (CFBundleVersion, versionCode).
    #[uniffi(default = None)]
    pub app_build: Option<String>,
    /// `context.device.manufacturer` and `context.device.screen` (pixels; both sides needed).
    #[uniffi(default = None)]
    pub manufacturer: Option<String>,
    #[uniffi(default = None)]
    pub screen_width: Option<u32>,
    #[uniffi(default = None)]
    pub screen_height: Option<u32>,
    /// `app_opened`, `app_backgrounded` and `app_updated` events (default on).
    #[uniffi(default = true)]
    pub lifecycle_events: bool,
    /// How long after the start a pending ATT decision holds the install request (default
    /// 5,000 ms).
    #[uniffi(default = None)]
    pub tracking_authorization_wait_ms: Option<u64>,
    /// The ATT status at the start (iOS), so a pending decision holds the install request from
    /// the first moment; later changes go through `set_tracking_authorization`.
    #[uniffi(default = None)]
    pub tracking_authorization: Option<TrackingAuthorization>,
}

impl TrailmarkConfig {
    /// The required fields, every other one at its default (for Rust hosts and tests:
    /// `TrailmarkConfig { os: Some("iOS".into()), ..TrailmarkConfig::new(…) }`).
    pub fn new(app_id: &str, app_secret: &str, endpoint: &str, db_path: &str) -> Self {
        TrailmarkConfig {
            app_id: app_id.into(),
            app_secret: app_secret.into(),
            endpoint: endpoint.into(),
            db_path: db_path.into(),
            require_consent: false,
            device_id: None,
            advertising_id: None,
            app_version: None,
            os: None,
            os_version: None,
            model: None,
            locale: None,
            timezone: None,
            sdk_name: None,
            sdk_version: None,
            flush_at: None,
            flush_interval_ms: None,
            max_queue_events: None,
            hashed_traits: None,
            debug: false,
            app_build: None,
            manufacturer: None,
            screen_width: None,
            screen_height: None,
            lifecycle_events: true,
            tracking_authorization_wait_ms: None,
            tracking_authorization: None,
        }
    }
}

/// The App Tracking Transparency status (iOS), as `ATTrackingManager` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum TrackingAuthorization {
    NotDetermined,
    Restricted,
    Denied,
    Authorized,
}

impl From<TrackingAuthorization> for trailmark_core::engine::TrackingAuthorization {
    fn from(t: TrackingAuthorization) -> Self {
        use trailmark_core::engine::TrackingAuthorization as Core;
        match t {
            TrackingAuthorization::NotDetermined => Core::NotDetermined,
            TrackingAuthorization::Restricted => Core::Restricted,
            TrackingAuthorization::Denied => Core::Denied,
            TrackingAuthorization::Authorized => Core::Authorized,
        }
    }
}

/// Field by field; what the record does not offer (`max_batch_events`) stays at its default,
/// and `db_path` is the driver's, not the engine's.
impl From<TrailmarkConfig> for HostConfig {
    fn from(c: TrailmarkConfig) -> Self {
        HostConfig {
            app_id: c.app_id,
            app_secret: c.app_secret,
            endpoint: c.endpoint,
            require_consent: c.require_consent,
            device_id: c.device_id,
            advertising_id: c.advertising_id,
            app_version: c.app_version,
            os: c.os,
            os_version: c.os_version,
            model: c.model,
            locale: c.locale,
            timezone: c.timezone,
            sdk_name: c.sdk_name,
            sdk_version: c.sdk_version,
            flush_at: c.flush_at.map(|n| n as usize),
            flush_interval_ms: c.flush_interval_ms,
            max_queue_events: c.max_queue_events.map(|n| n as usize),
            debug: c.debug,
            max_batch_events: None,
            hashed_traits: c.hashed_traits,
            app_build: c.app_build,
            manufacturer: c.manufacturer,
            screen_width: c.screen_width,
            screen_height: c.screen_height,
            lifecycle_events: Some(c.lifecycle_events),
            tracking_authorization_wait_ms: c.tracking_authorization_wait_ms,
            tracking_authorization: c
                .tracking_authorization
                .map(|t| trailmark_core::engine::TrackingAuthorization::from(t).as_str().to_owned()),
        }
    }
}

/// A consent change; `None` leaves a purpose as it is.
#[derive(Debug, Clone, Copy, Default, uniffi::Record)]
pub struct Consent {
    #[uniffi(default = None)]
    pub analytics: Option<bool>,
    #[uniffi(default = None)]
    pub attribution: Option<bool>,
    #[uniffi(default = None)]
    pub do_not_sell: Option<bool>,
}

/// The SDK's counters.
#[derive(Debug, Clone, uniffi::Record)]
pub struct SdkStats {
    pub recorded: u64,
    pub delivered: u64,
    pub queued: u64,
    pub held: u64,
    pub rejected_by_server: u64,
    pub refused_invalid: u64,
    pub dropped_queue_full: u64,
    pub dropped_expired: u64,
    pub dropped_consent_denied: u64,
    pub dropped_opted_out: u64,
    pub dropped_backpressure: u64,
    pub uploads: u64,
    pub upload_failures: u64,
    /// 2xx answers that were not the protocol's (a captive portal's or a proxy's page, an empty
    /// body): not an acknowledgement, retried.
    pub bad_answers: u64,
    /// Events a middleware dropped, and events dropped because a middleware failed.
    pub dropped_by_middleware: u64,
    pub middleware_errors: u64,
    /// Why the server last refused something counted in `rejected_by_server`: the answer's HTTP
    /// status (200 for events rejected in a batch it took, the 4xx of a request refused for
    /// good; 0 before any refusal)...
    pub last_rejection_status: u16,
    /// ...and its reason: the rejected event's `reason`, or the refusal's error `code`
    /// (`payload_too_large`, `invalid_field`...); empty when the answer was not the protocol's.
    pub last_rejection_reason: String,
    /// Events in the upload under way (sent, answer not yet handled).
    pub in_flight: u64,
}

/// How the server attributed this install (the answer to the SDK's install request).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Attribution {
    pub attributed: bool,
    /// `click_id`, `referrer`, `device_id`, `fingerprint`, `view_through` or `organic`.
    pub match_type: String,
    /// 1.0 for deterministic matches, the score for a fingerprint, 0 for organic.
    pub confidence: f64,
    pub campaign_id: Option<String>,
    pub link_id: Option<String>,
    pub click_id: Option<String>,
    pub network: Option<String>,
    /// The deferred deep link's path, and its parameters.
    pub deep_link_path: Option<String>,
    pub deep_link_params: HashMap<String, String>,
    /// Fraud rules that fired; `fraud_rejected` means the install counts as organic.
    pub fraud_flags: Vec<String>,
    pub fraud_rejected: bool,
    /// This device installed before, inside the re-attribution window.
    pub reinstall: bool,
    /// Why the install is not attributed (`no_click_in_window`, `outside_window`,
    /// `below_threshold`, `consent_denied`, `rejected_fraud`, `reinstall`).
    pub reason: Option<String>,
}

impl From<trailmark_core::protocol::AttributionResult> for Attribution {
    fn from(a: trailmark_core::protocol::AttributionResult) -> Self {
        let (deep_link_path, deep_link_params) = match a.deep_link {
            Some(d) => (Some(d.path), d.params.into_iter().collect()),
            None => (None, HashMap::new()),
        };
        Attribution {
            attributed: a.attributed,
            match_type: a.match_type.as_str().to_owned(),
            confidence: a.confidence,
            campaign_id: a.campaign_id,
            link_id: a.link_id,
            click_id: a.click_id,
            network: a.network,
            deep_link_path,
            deep_link_params,
            fraud_flags: a.fraud.flags,
            fraud_rejected: a.fraud.rejected,
            reinstall: a.reinstall,
            reason: a.reason,
        }
    }
}

/// An HTTP answer from the platform's stack. `status` 0 with `error` set: no answer (DNS,
/// TLS, timeout, connection lost).
#[derive(Debug, Clone, uniffi::Record)]
pub struct HttpResponse {
    pub status: u16,
    #[uniffi(default = None)]
    pub retry_after: Option<String>,
    pub body: Vec<u8>,
    #[uniffi(default = None)]
    pub error: Option<String>,
}

/// The platform's HTTP stack (URLSession, HttpURLConnection). Called on the SDK's uploader
/// thread, never on the app's; it may block.
#[uniffi::export(with_foreign)]
pub trait HttpTransport: Send + Sync {
    fn post(&self, url: String, headers: HashMap<String, String>, body: Vec<u8>) -> HttpResponse;
}

/// Where the core's debug lines go (`os_log`, `android.util.Log`, stderr): called on the
/// SDK's worker thread, one line per decision, only when the configuration has `debug` set.
#[uniffi::export(with_foreign)]
pub trait DebugLogger: Send + Sync {
    fn log(&self, line: String);
}

/// A host's middleware (see [`TrailmarkSdk::add_middleware`]): `process` gets each `track`,
/// `screen` and `page` event as JSON `{"type": …, "properties": {…}, "context": {…}}` before it
/// is queued, on the caller's thread, and returns it (changed or not) as JSON of that shape
/// (`context` may be left out: it is read-only), or nothing to drop it. An error (a thrown
/// exception), or an answer that is not an event, drops the event: counted in
/// `middleware_errors`, never thrown at the app.
#[uniffi::export(with_foreign)]
pub trait EventMiddleware: Send + Sync {
    fn process(&self, event_json: String) -> Result<Option<String>, MiddlewareError>;
}

/// A middleware's failure (whatever it threw).
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum MiddlewareError {
    #[error("middleware failed: {reason}")]
    Failed { reason: String },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for MiddlewareError {
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        MiddlewareError::Failed { reason: e.reason }
    }
}

/// The event as the host's middleware reads it.
fn middleware_json(e: &native::MiddlewareEvent) -> String {
    let mut w = Writer::with_capacity(256);
    let mut o = w.begin();
    o.str("type", &e.event_type);
    o.key("properties");
    o.w.object(&e.properties);
    o.key("context");
    o.w.object(&e.context);
    o.end();
    w.into_string()
}

/// The host middleware's answer back as an event (its type and properties; the context stays
/// the SDK's); `None` when it is not one.
fn middleware_answer(text: &str, context: Object) -> Option<native::MiddlewareEvent> {
    let value = trailmark_core::json::parse(text, protocol::MAX_PROPERTY_DEPTH + 2).ok()?;
    let o = value.as_object()?;
    let event_type = o.str("type")?.to_owned();
    let properties = o.get("properties")?.as_object()?.clone();
    Some(native::MiddlewareEvent { event_type, properties, context })
}

struct ForeignUploader(Arc<dyn HttpTransport>);

impl Uploader for ForeignUploader {
    fn upload(&mut self, task: &UploadTask) -> UploadOutcome {
        let headers = task.headers.iter().cloned().collect();
        let r = self.0.post(task.url.clone(), headers, task.body.clone());
        match (r.status, r.error) {
            (0, error) => UploadOutcome::NetworkError(error.unwrap_or_else(|| "no response".into())),
            (status, _) => UploadOutcome::Response { status, retry_after: r.retry_after, body: r.body },
        }
    }
}

/// A running SDK.
#[derive(uniffi::Object)]
pub struct TrailmarkSdk {
    inner: native::Trailmark,
}

impl TrailmarkSdk {
    /// Parses properties for a recording call with the core's parser (empty text is an empty
    /// object); a bad value is counted as refused.
    fn parsed(&self, json: &str) -> Option<Object> {
        match protocol::parse_properties(json.as_bytes()) {
            Ok(p) => Some(p),
            Err(_) => {
                self.inner.count_refusal();
                None
            }
        }
    }
}

#[uniffi::export]
impl TrailmarkSdk {
    /// Opens the queue and starts the worker. `transport` is the platform's HTTP stack; without
    /// one the SDK uses its built-in Rust client.
    #[uniffi::constructor]
    pub fn start(
        config: TrailmarkConfig,
        transport: Option<Arc<dyn HttpTransport>>,
    ) -> Result<Arc<Self>, TrailmarkError> {
        let mut options = NativeOptions::new(&config.db_path);
        options.uploader = transport.map(|t| Box::new(ForeignUploader(t)) as Box<dyn Uploader>);
        let c = HostConfig::from(config).into_config();
        Ok(Arc::new(TrailmarkSdk { inner: native::Trailmark::start(c, options)? }))
    }

    /// Records an event. `properties_json` is a JSON object (or empty). Never throws: invalid
    /// input is refused and counted.
    pub fn track(&self, event_type: String, properties_json: String) {
        if let Some(p) = self.parsed(&properties_json) {
            let _ = self.inner.track(&event_type, p);
        }
    }

    pub fn screen(&self, name: String, properties_json: String) {
        if let Some(p) = self.parsed(&properties_json) {
            let _ = self.inner.screen(&name, p);
        }
    }

    /// Sets the user id; `traits_json` may carry `email`/`phone`, which the core hashes.
    pub fn identify(&self, user_id: String, traits_json: String) {
        if let Some(p) = self.parsed(&traits_json) {
            let _ = self.inner.identify(&user_id, p);
        }
    }

    /// Puts the user in a group: a `group` event with `traits` (JSON object) and the group id,
    /// which rides on every later event's `context.group_id`.
    pub fn group(&self, group_id: String, traits_json: String) {
        if let Some(t) = self.parsed(&traits_json) {
            let _ = self.inner.group(&group_id, t);
        }
    }

    /// Links the current identity (user id, or the anonymous id) to `new_user_id` with an
    /// `alias` event; later events carry `new_user_id`.
    pub fn alias(&self, new_user_id: String) {
        let _ = self.inner.alias(&new_user_id);
    }

    /// The advertising id known after the start (the IDFA after an ATT grant, the GAID once
    /// fetched), or nothing when it is gone (ATT revoked, limit ad tracking). A pending install
    /// request carries the latest; after the install, a new id is sent as an update the server
    /// attaches to the device.
    pub fn set_advertising_id(&self, id: Option<String>) {
        let _ = self.inner.set_advertising_id(id.as_deref());
    }

    /// The App Tracking Transparency status. `NotDetermined` holds a pending install request
    /// (at most `tracking_authorization_wait_ms` after the start) for the answer; `Denied` and
    /// `Restricted` keep the advertising id off the wire.
    pub fn set_tracking_authorization(&self, status: TrackingAuthorization) {
        let _ = self.inner.set_tracking_authorization(status.into());
    }

    /// Sends the core's debug lines to `logger` (with `debug` set in the configuration).
    pub fn set_debug_logger(&self, logger: Arc<dyn DebugLogger>) {
        // A host logger that fails must not take the worker with it: its line is lost.
        let _ = self.inner.set_logger(Box::new(move |line: &str| {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| logger.log(line.to_owned())));
        }));
    }

    /// Adds a middleware, run after those added before on every later `track`, `screen` and
    /// `page` (see [`EventMiddleware`]).
    pub fn add_middleware(&self, middleware: Arc<dyn EventMiddleware>) {
        self.inner.add_middleware(Arc::new(move |e: native::MiddlewareEvent| {
            match middleware.process(middleware_json(&e)) {
                Ok(None) => Ok(None),
                Ok(Some(text)) => match middleware_answer(&text, e.context) {
                    Some(event) => Ok(Some(event)),
                    None => Err("the middleware's answer is not an event".into()),
                },
                Err(err) => Err(err.to_string()),
            }
        }));
    }

    /// Super properties (a JSON object), merged into every later event; the event's own values
    /// win. Persisted; `reset` clears them.
    pub fn register(&self, properties_json: String) {
        if let Some(p) = self.parsed(&properties_json) {
            let _ = self.inner.register(p);
        }
    }

    pub fn unregister(&self, key: String) {
        let _ = self.inner.unregister(&key);
    }

    /// The super properties registered, as a JSON object.
    pub fn registered_properties(&self) -> Result<String, TrailmarkError> {
        Ok(self.inner.registered_properties()?.to_json())
    }

    pub fn reset(&self) {
        let _ = self.inner.reset();
    }

    pub fn set_consent(&self, consent: Consent) {
        let _ = self.inner.set_consent(ConsentUpdate {
            analytics: consent.analytics,
            attribution: consent.attribution,
            do_not_sell: consent.do_not_sell,
        });
    }

    pub fn opt_out(&self) {
        let _ = self.inner.opt_out();
    }

    pub fn opt_in(&self) {
        let _ = self.inner.opt_in();
    }

    pub fn handle_open_url(&self, url: String) {
        let _ = self.inner.handle_open_url(&url);
    }

    pub fn on_foreground(&self) {
        let _ = self.inner.on_foreground();
    }

    pub fn on_background(&self) {
        let _ = self.inner.on_background();
    }

    /// Blocks until every earlier call is on disk and asks for an upload. Call it off the
    /// main thread (the Swift and Kotlin wrappers do).
    pub fn flush(&self) -> Result<(), TrailmarkError> {
        Ok(self.inner.flush()?)
    }

    /// The Play Install Referrer (Android), from the Install Referrer client; `None` when the
    /// store has none. The install request waits for it (10 s at most). `installed_at_ms`: the
    /// package's `firstInstallTime` (known whatever the store), for the click injection check.
    pub fn set_install_referrer(
        &self,
        referrer: Option<String>,
        referrer_click_ts_ms: Option<i64>,
        install_begin_ts_ms: Option<i64>,
        installed_at_ms: Option<i64>,
    ) {
        let _ = self.inner.set_install_referrer(
            referrer.as_deref(),
            referrer_click_ts_ms,
            install_begin_ts_ms,
            installed_at_ms,
        );
    }

    /// The install's attribution, once the server answered; `None` until then (the Swift and
    /// Kotlin wrappers wait for it asynchronously).
    pub fn attribution(&self) -> Result<Option<Attribution>, TrailmarkError> {
        Ok(self.inner.attribution()?.map(Attribution::from))
    }

    pub fn anonymous_id(&self) -> Result<String, TrailmarkError> {
        Ok(self.inner.anonymous_id()?)
    }

    pub fn stats(&self) -> Result<SdkStats, TrailmarkError> {
        let s = self.inner.stats()?;
        Ok(SdkStats {
            recorded: s.recorded,
            delivered: s.delivered,
            queued: s.queued,
            held: s.held,
            rejected_by_server: s.rejected_by_server,
            refused_invalid: s.refused_invalid,
            dropped_queue_full: s.dropped_queue_full,
            dropped_expired: s.dropped_expired,
            dropped_consent_denied: s.dropped_consent_denied,
            dropped_opted_out: s.dropped_opted_out,
            dropped_backpressure: s.dropped_backpressure,
            uploads: s.uploads,
            upload_failures: s.upload_failures,
            bad_answers: s.bad_answers,
            dropped_by_middleware: s.dropped_by_middleware,
            middleware_errors: s.middleware_errors,
            last_rejection_status: u16::try_from(s.last_rejection_status).unwrap_or(0),
            last_rejection_reason: s.last_rejection_reason.as_str().to_owned(),
            in_flight: s.in_flight,
        })
    }
}

/// Hashes an email the way the core does before it leaves the device (for hosts that match
/// audiences themselves). Throws for something that is not an email address.
#[uniffi::export]
pub fn hash_email(email: String) -> Result<String, TrailmarkError> {
    trailmark_core::pii::hash_email(&email).map_err(|e| TrailmarkError::InvalidInput { reason: e.to_string() })
}
