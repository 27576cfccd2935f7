//! SDK configuration and the one policy struct that holds every limit, with documented defaults.

#[allow(unused_imports)]
use crate::prelude::*;

use core::time::Duration;

use thiserror::Error;

use crate::json::{self, Object, Value};
use crate::protocol::{
    self, AppContext, CampaignContext, ConsentContext, ContextRef, DeviceContext, EventView, MAX_BATCH_EVENTS,
    MAX_EVENT_BYTES, MAX_ID_LEN, SdkContext, ValidationError,
};
use crate::urls::Url;

/// Longest value kept from a deep link's utm_* or click id parameter; longer ones are cut.
pub const MAX_CAMPAIGN_VALUE_LEN: usize = 256;
/// Longest string in the app/device context given in the configuration.
pub const MAX_CONTEXT_VALUE_LEN: usize = 256;

/// Everything a host passes at start. `app_id`, `app_secret` and `endpoint` are required.
#[derive(Debug, Clone)]
pub struct Config {
    /// The app's public id, sent as `X-Trailmark-App`.
    pub app_id: String,
    /// The app's signing secret (HMAC-SHA256 key).
    pub app_secret: String,
    /// Base URL of the collector, e.g. `https://collect.example.com`. Must be `https://`;
    /// `http://` is accepted only for loopback hosts (tests and local development).
    pub endpoint: String,
    /// When true, nothing is uploaded until `analytics` consent is granted; events wait in a
    /// capped pre-consent buffer. When false, consent is granted until the host says otherwise.
    pub require_consent: bool,
    /// Report every engine decision through the logger callback.
    pub debug: bool,
    /// A stable device identifier from the platform (IDFV, Android id); sent only with
    /// `attribution` consent.
    pub device_id: Option<String>,
    /// The advertising id (IDFA with ATT permission, GAID); sent only with the install
    /// request and only with `attribution` consent.
    pub advertising_id: Option<String>,
    /// The platform for install attribution; derived from `device.os` when `None`
    /// (`iOS`/`iPadOS` → iOS, `Android` → Android). Without one, no install request is sent.
    pub platform: Option<protocol::Platform>,
    /// Send the install request (`POST /v1/install`) on the first open. Default true; turn it
    /// off when the app's backend reports installs itself (server to server).
    pub install_request: bool,
    /// Lifecycle events (default true): `app_updated` when the app's version or build changed
    /// since the last start (with the previous ones), `app_opened` on every `on_foreground`
    /// (`from_background`: false on the first one of the process), `app_backgrounded` on
    /// every `on_background`. The first start's event is `install`.
    pub lifecycle_events: bool,
    /// The App Tracking Transparency status at the start (iOS), when the host knows it; later
    /// changes go through `Engine::set_tracking_authorization`.
    pub tracking_authorization: Option<crate::engine::TrackingAuthorization>,
    pub app: AppContext,
    pub device: DeviceContext,
    pub sdk: SdkContext,
    pub policy: Policy,
    /// `identify` traits replaced by their SHA-256 (`<name>_sha256`) before they are queued
    /// ([`crate::pii::hash_trait`]) besides [`crate::pii::DEFAULT_HASHED_TRAITS`], which are
    /// always hashed.
    pub hashed_traits: Option<Vec<String>>,
}

impl Config {
    /// A configuration with the given credentials and every other field at its default.
    pub fn new(app_id: impl Into<String>, app_secret: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Config {
            app_id: app_id.into(),
            app_secret: app_secret.into(),
            endpoint: endpoint.into(),
            require_consent: false,
            debug: false,
            device_id: None,
            advertising_id: None,
            platform: None,
            install_request: true,
            lifecycle_events: true,
            tracking_authorization: None,
            app: AppContext::default(),
            device: DeviceContext::default(),
            sdk: SdkContext { name: "trailmark-rust".into(), version: env!("CARGO_PKG_VERSION").into() },
            policy: Policy::default(),
            hashed_traits: None,
        }
    }
}

/// A host's settings as flat fields: what the SDK bindings fill (the wasm crate straight from the
/// page's JSON, `trailmark-ffi` from its UniFFI record) and turn into a [`Config`] with
/// [`HostConfig::into_config`]. `None` (or a missing JSON key) leaves a setting at its default.
/// The fields follow the FFI record's order; the web-only ones come last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize), serde(default))]
pub struct HostConfig {
    pub app_id: String,
    pub app_secret: String,
    /// Base URL of the collector, e.g. `https://collect.example.com`.
    pub endpoint: String,
    /// Hold events until consent is given ([`Config::require_consent`]).
    pub require_consent: bool,
    /// IDFV on Apple platforms, the Android id on Android ([`Config::device_id`]).
    pub device_id: Option<String>,
    /// IDFA (with ATT permission) or GAID ([`Config::advertising_id`]).
    pub advertising_id: Option<String>,
    /// `context.app.version`.
    pub app_version: Option<String>,
    /// `context.device.os`, `os_version`, `model`, `locale` and `timezone`.
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub model: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    /// The SDK's name and version on the wire (`trailmark-swift`, `trailmark-kotlin`,
    /// `trailmark-web`); when `None`, those of [`Config::new`] (the wasm crate names itself
    /// `trailmark-web` before converting).
    pub sdk_name: Option<String>,
    pub sdk_version: Option<String>,
    /// [`Policy::flush_at`].
    pub flush_at: Option<usize>,
    /// [`Policy::flush_interval`], in milliseconds.
    pub flush_interval_ms: Option<u64>,
    /// [`Policy::max_queue_events`].
    pub max_queue_events: Option<usize>,
    // The web SDK's options that the FFI record does not have.
    /// Report engine decisions to the logger ([`Config::debug`]).
    pub debug: bool,
    /// [`Policy::max_batch_events`].
    pub max_batch_events: Option<usize>,
    /// [`Config::hashed_traits`]: names hashed besides the defaults (e-mail and phone names).
    pub hashed_traits: Option<Vec<String>>,
    /// `context.app.build`, `context.device.manufacturer` and `context.device.screen`
    /// (both sides needed).
    pub app_build: Option<String>,
    pub manufacturer: Option<String>,
    pub screen_width: Option<u32>,
    pub screen_height: Option<u32>,
    /// [`Config::lifecycle_events`]; `None` is the default, on.
    pub lifecycle_events: Option<bool>,
    /// [`Policy::tracking_authorization_wait`], in milliseconds.
    pub tracking_authorization_wait_ms: Option<u64>,
    /// [`Config::tracking_authorization`]: `not_determined`, `restricted`, `denied` or
    /// `authorized`.
    pub tracking_authorization: Option<String>,
}

impl HostConfig {
    /// Reads the page's JSON (the web SDK's options, mapped to these keys by its TypeScript
    /// layer). Unknown keys are ignored; `null` or a missing key leaves a setting at its
    /// default. The error names the key whose value has the wrong type.
    pub fn from_json(config_json: &str) -> Result<HostConfig, &'static str> {
        let value = json::parse(config_json, 8).map_err(|_| "config")?;
        let o = value.as_object().ok_or("config")?;
        fn text(o: &Object, key: &'static str) -> Result<Option<String>, &'static str> {
            match o.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(key),
            }
        }
        fn flag(o: &Object, key: &'static str) -> Result<bool, &'static str> {
            match o.get(key) {
                None | Some(Value::Null) => Ok(false),
                Some(Value::Bool(b)) => Ok(*b),
                Some(_) => Err(key),
            }
        }
        fn count(o: &Object, key: &'static str) -> Result<Option<u64>, &'static str> {
            match o.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(v) => v.as_u64().map(Some).ok_or(key),
            }
        }
        let dimension = |o: &Object, key: &'static str| -> Result<Option<u32>, &'static str> {
            count(o, key)?.map(|n| u32::try_from(n).map_err(|_| key)).transpose()
        };
        let size = |key| count(o, key).and_then(|n| n.map(|n| usize::try_from(n).map_err(|_| key)).transpose());
        let names = |key: &'static str| -> Result<Option<Vec<String>>, &'static str> {
            match o.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Array(items)) => {
                    let mut names = Vec::with_capacity(items.len());
                    for item in items {
                        names.push(String::from(item.as_str().ok_or(key)?));
                    }
                    Ok(Some(names))
                }
                Some(_) => Err(key),
            }
        };
        Ok(HostConfig {
            app_id: text(o, "app_id")?.unwrap_or_default(),
            app_secret: text(o, "app_secret")?.unwrap_or_default(),
            endpoint: text(o, "endpoint")?.unwrap_or_default(),
            require_consent: flag(o, "require_consent")?,
            device_id: text(o, "device_id")?,
            advertising_id: text(o, "advertising_id")?,
            app_version: text(o, "app_version")?,
            os: text(o, "os")?,
            os_version: text(o, "os_version")?,
            model: text(o, "model")?,
            locale: text(o, "locale")?,
            timezone: text(o, "timezone")?,
            sdk_name: text(o, "sdk_name")?,
            sdk_version: text(o, "sdk_version")?,
            flush_at: size("flush_at")?,
            flush_interval_ms: count(o, "flush_interval_ms")?,
            max_queue_events: size("max_queue_events")?,
            debug: flag(o, "debug")?,
            max_batch_events: size("max_batch_events")?,
            hashed_traits: names("hashed_traits")?,
            app_build: text(o, "app_build")?,
            manufacturer: text(o, "manufacturer")?,
            screen_width: dimension(o, "screen_width")?,
            screen_height: dimension(o, "screen_height")?,
            tracking_authorization_wait_ms: count(o, "tracking_authorization_wait_ms")?,
            tracking_authorization: text(o, "tracking_authorization")?,
            lifecycle_events: match o.get("lifecycle_events") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => return Err("lifecycle_events"),
            },
        })
    }

    /// The engine's configuration: [`Config::new`] with every setting given here applied.
    pub fn into_config(self) -> Config {
        let mut c = Config::new(self.app_id, self.app_secret, self.endpoint);
        c.require_consent = self.require_consent;
        c.debug = self.debug;
        c.device_id = self.device_id;
        c.advertising_id = self.advertising_id;
        c.app.version = self.app_version;
        c.device.os = self.os;
        c.device.os_version = self.os_version;
        c.device.model = self.model;
        c.device.locale = self.locale;
        c.device.timezone = self.timezone;
        c.app.build = self.app_build;
        c.device.manufacturer = self.manufacturer;
        if let (Some(width), Some(height)) = (self.screen_width, self.screen_height) {
            c.device.screen = Some(protocol::Screen { width, height });
        }
        c.lifecycle_events = self.lifecycle_events.unwrap_or(true);
        c.tracking_authorization =
            self.tracking_authorization.as_deref().and_then(crate::engine::TrackingAuthorization::parse);
        if let Some(name) = self.sdk_name {
            c.sdk.name = name;
        }
        if let Some(version) = self.sdk_version {
            c.sdk.version = version;
        }
        let p = &mut c.policy;
        p.flush_at = self.flush_at.unwrap_or(p.flush_at);
        p.flush_interval = self.flush_interval_ms.map(Duration::from_millis).unwrap_or(p.flush_interval);
        p.max_queue_events = self.max_queue_events.unwrap_or(p.max_queue_events);
        p.max_batch_events = self.max_batch_events.unwrap_or(p.max_batch_events);
        p.tracking_authorization_wait =
            self.tracking_authorization_wait_ms.map(Duration::from_millis).unwrap_or(p.tracking_authorization_wait);
        c.hashed_traits = self.hashed_traits;
        c
    }
}

/// Every limit of the engine in one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Most events kept in the upload queue; past it the oldest are dropped and counted.
    /// Default 10,000.
    pub max_queue_events: usize,
    /// Oldest age of a queued event; older ones are dropped and counted. Default 30 days.
    pub max_event_age: Duration,
    /// Most events held while waiting for consent; past it the oldest are dropped and counted.
    /// Default 1,000.
    pub max_pre_consent_events: usize,
    /// Upload as soon as this many events are queued. Default 20.
    pub flush_at: usize,
    /// Upload queued events at least this often. Default 30 s.
    pub flush_interval: Duration,
    /// Most events per upload (at most the protocol's 500). Default 500.
    pub max_batch_events: usize,
    /// Inactivity after which the next event starts a new session. Default 30 min.
    pub session_timeout: Duration,
    /// First retry delay of the exponential backoff (full jitter). Default 1 s.
    pub retry_base: Duration,
    /// Longest retry delay. Default 10 min.
    pub retry_cap: Duration,
    /// Longest `Retry-After` the engine honours. Default 24 h.
    pub max_retry_after: Duration,
    /// After a 401/403 uploads pause this long (events are kept). Default 1 h.
    pub auth_pause: Duration,
    /// On Android, how long the install request waits for the Play Install Referrer
    /// (`set_install_referrer`) before it goes without one. Default 10 s.
    pub install_referrer_wait: Duration,
    /// On iOS, how long after the start the install request waits for a pending App Tracking
    /// Transparency decision (`set_tracking_authorization(NotDetermined)`) before it goes with
    /// what is known. Default 5 s.
    pub tracking_authorization_wait: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_queue_events: 10_000,
            max_event_age: Duration::from_secs(30 * 24 * 3600),
            max_pre_consent_events: 1_000,
            flush_at: 20,
            flush_interval: Duration::from_secs(30),
            max_batch_events: MAX_BATCH_EVENTS,
            session_timeout: Duration::from_secs(30 * 60),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(600),
            max_retry_after: Duration::from_secs(24 * 3600),
            auth_pause: Duration::from_secs(3600),
            install_referrer_wait: Duration::from_secs(10),
            tracking_authorization_wait: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: &'static str },
    #[error("invalid {field}: {error}")]
    InvalidId { field: &'static str, error: ValidationError },
    #[error("endpoint {0:?} is not a valid URL")]
    InvalidEndpoint(String),
    #[error("endpoint {0:?} must use https:// (http:// is allowed only for loopback hosts)")]
    InsecureEndpoint(String),
}

fn invalid(field: &'static str, reason: &'static str) -> ConfigError {
    ConfigError::Invalid { field, reason }
}

impl ConfigError {
    /// The setting that is wrong (`endpoint` for the endpoint errors).
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::Invalid { field, .. } | ConfigError::InvalidId { field, .. } => field,
            ConfigError::InvalidEndpoint(_) | ConfigError::InsecureEndpoint(_) => "endpoint",
        }
    }
}

fn check_id(field: &'static str, id: &str) -> Result<(), ConfigError> {
    protocol::validate_id(field, id).map_err(|error| ConfigError::InvalidId { field, error })
}

impl Config {
    /// The platform install attribution reports: the configured one, or one read from the OS.
    pub fn install_platform(&self) -> Option<protocol::Platform> {
        self.platform.or_else(|| match self.device.os.as_deref().map(str::to_ascii_lowercase).as_deref() {
            Some("ios" | "ipados") => Some(protocol::Platform::Ios),
            Some("android") => Some(protocol::Platform::Android),
            _ => None,
        })
    }

    /// `endpoint` + [`protocol::INSTALL_PATH`] (call after [`Config::validate`]).
    pub fn install_url(&self) -> String {
        let mut url = String::from(self.endpoint.trim_end_matches('/'));
        url.push_str(protocol::INSTALL_PATH);
        url
    }

    /// Checks the configuration and returns the upload URL.
    /// Checks the configuration; returns the upload URL (the endpoint with `/v1/event`).
    pub fn validate(&self) -> Result<String, ConfigError> {
        check_id("app_id", &self.app_id)?;
        if self.app_secret.is_empty() {
            return Err(invalid("app_secret", "is empty"));
        }
        if let Some(id) = &self.device_id {
            check_id("device_id", id)?;
        }
        if let Some(id) = &self.advertising_id {
            check_id("advertising_id", id)?;
        }
        let endpoint = self.endpoint.as_str();
        if endpoint.bytes().any(|b| b <= b' ' || b == b'\\') {
            return Err(ConfigError::InvalidEndpoint(self.endpoint.clone()));
        }
        let base = Url::parse(endpoint).map_err(|_| ConfigError::InvalidEndpoint(self.endpoint.clone()))?;
        let scheme = base.scheme.to_ascii_lowercase();
        match scheme.as_str() {
            "https" => {}
            "http" if base.is_loopback() => {}
            _ => return Err(ConfigError::InsecureEndpoint(self.endpoint.clone())),
        }
        if base.query.is_some() || endpoint.contains('#') {
            return Err(ConfigError::InvalidEndpoint(self.endpoint.clone()));
        }
        let mut upload = String::from(endpoint.trim_end_matches('/'));
        upload.push_str(protocol::EVENT_PATH);

        let strings = [
            &self.app.id,
            &self.app.version,
            &self.app.build,
            &self.device.os,
            &self.device.os_version,
            &self.device.model,
            &self.device.manufacturer,
            &self.device.locale,
            &self.device.timezone,
        ];
        if strings.iter().any(|s| s.as_ref().is_some_and(|s| s.len() > MAX_CONTEXT_VALUE_LEN)) {
            return Err(invalid("context", "values are limited to 256 bytes"));
        }
        if self.sdk.name.len() > MAX_CONTEXT_VALUE_LEN || self.sdk.version.len() > MAX_CONTEXT_VALUE_LEN {
            return Err(invalid("sdk", "values are limited to 256 bytes"));
        }
        self.policy.validate()?;
        Ok(upload)
    }
}

impl Policy {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_queue_events == 0 {
            return Err(invalid("max_queue_events", "must be at least 1"));
        }
        if self.max_pre_consent_events == 0 {
            return Err(invalid("max_pre_consent_events", "must be at least 1"));
        }
        if !(1..=MAX_BATCH_EVENTS).contains(&self.max_batch_events) {
            return Err(invalid("max_batch_events", "must be 1..=500"));
        }
        if self.flush_at == 0 {
            return Err(invalid("flush_at", "must be at least 1"));
        }
        for (field, d) in [
            ("max_event_age", self.max_event_age),
            ("flush_interval", self.flush_interval),
            ("session_timeout", self.session_timeout),
            ("retry_base", self.retry_base),
            ("retry_cap", self.retry_cap),
            ("auth_pause", self.auth_pause),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be greater than zero"));
            }
        }
        if self.retry_base > self.retry_cap {
            return Err(invalid("retry_base", "must not exceed retry_cap"));
        }
        Ok(())
    }
}

/// The checks `track` runs before an event is built, as plain data so a driver can run them on
/// the caller's thread and return a typed error at once. The engine runs the same checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackLimits {
    /// Largest serialised `properties` object that still fits an event under
    /// [`MAX_EVENT_BYTES`] with the largest context this configuration can produce.
    pub max_properties_bytes: usize,
}

impl TrackLimits {
    pub fn for_config(config: &Config) -> TrackLimits {
        let long_id = "x".repeat(MAX_ID_LEN);
        let long_value = Some("\"".repeat(MAX_CAMPAIGN_VALUE_LEN));
        // The largest envelope of metadata this configuration can put around properties:
        // every optional id at its longest, the campaign at its longest (each value made of
        // characters JSON escapes), consent fully set.
        let campaign = CampaignContext {
            utm_source: long_value.clone(),
            utm_medium: long_value.clone(),
            utm_campaign: long_value.clone(),
            utm_term: long_value.clone(),
            utm_content: long_value.clone(),
            click_id: long_value,
        };
        let consent = ConsentContext { analytics: Some(false), attribution: Some(false), do_not_sell: false };
        let empty = Object::new();
        let template = EventView {
            event_id: "00000000-0000-0000-0000-000000000000",
            event_type: &"x".repeat(protocol::MAX_TYPE_LEN),
            timestamp_ms: 253_402_300_799_999,
            anonymous_id: &long_id,
            user_id: Some(&long_id),
            device_id: config.device_id.as_deref(),
            session_id: Some(&long_id),
            properties: &empty,
            context: ContextRef {
                app: Some(&config.app),
                device: Some(&config.device),
                campaign: Some(&campaign),
                consent: Some(&consent),
                sdk: Some(&config.sdk),
                group_id: Some(&long_id),
            },
        };
        let overhead = template.to_json().len();
        TrackLimits { max_properties_bytes: MAX_EVENT_BYTES.saturating_sub(overhead) }
    }

    /// Checks a `track` call: event type and properties.
    pub fn check_track(&self, event_type: &str, properties: &Object) -> Result<(), ValidationError> {
        protocol::validate_event_type(event_type)?;
        protocol::validate_properties(properties, self.max_properties_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_rules() {
        let ok = |e: &str| Config::new("app", "s", e).validate();
        assert_eq!(ok("https://collect.example.com").unwrap().as_str(), "https://collect.example.com/v1/event");
        assert_eq!(ok("https://example.com/base/").unwrap().as_str(), "https://example.com/base/v1/event");
        assert!(ok("http://127.0.0.1:8080").is_ok());
        assert!(ok("http://localhost:8080").is_ok());
        assert!(ok("http://[::1]:8080").is_ok());
        assert_eq!(ok("http://example.com"), Err(ConfigError::InsecureEndpoint("http://example.com".into())));
        assert!(matches!(ok("ftp://example.com"), Err(ConfigError::InsecureEndpoint(_))));
        assert!(matches!(ok("not a url"), Err(ConfigError::InvalidEndpoint(_))));
    }

    #[test]
    fn policy_rules() {
        let mut c = Config::new("app", "s", "https://x.example");
        c.policy.flush_at = 0;
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "flush_at", .. })));
        c.policy = Policy { max_batch_events: 501, ..Policy::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid { field: "max_batch_events", .. })));
        c.policy = Policy { retry_base: Duration::from_secs(700), ..Policy::default() };
        assert!(c.validate().is_err());
        let c = Config::new("", "s", "https://x.example");
        assert!(matches!(c.validate(), Err(ConfigError::InvalidId { field: "app_id", .. })));
    }

    #[test]
    fn host_config_fills_what_it_names() {
        let json = r#"{"app_id": "app", "app_secret": "s", "endpoint": "https://x.example", "debug": true,
            "os": "iOS", "sdk_version": "9", "flush_at": 5, "flush_interval_ms": 250, "max_batch_events": 50,
            "not_a_setting": 1}"#;
        let c = HostConfig::from_json(json).unwrap().into_config();
        assert!(c.debug && !c.require_consent);
        assert_eq!((c.device.os.as_deref(), c.device.model.as_deref()), (Some("iOS"), None));
        assert_eq!((c.sdk.name.as_str(), c.sdk.version.as_str()), ("trailmark-rust", "9"));
        let policy = Policy {
            flush_at: 5,
            flush_interval: Duration::from_millis(250),
            max_batch_events: 50,
            ..Policy::default()
        };
        assert_eq!(c.policy, policy);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn property_budget_leaves_room_for_context() {
        let limits = TrackLimits::for_config(&Config::new("app", "s", "https://x.example"));
        assert!(limits.max_properties_bytes > 24 * 1024, "{limits:?}");
        assert!(limits.max_properties_bytes < MAX_EVENT_BYTES);
    }
}
