//! Server configuration: apps and their secrets, admin auth, keys, limits. Every limit has a
//! documented default in [`Limits`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde_json::Value;

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// One app allowed to send events.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// HMAC-SHA256 signing secret shared with the SDK.
    pub secret: String,
    /// JSON Schemas for this app's own event types (`type` → schema of the whole event).
    pub schemas: HashMap<String, Value>,
    /// Web origins (`https://shop.example`, scheme://host[:port]) whose pages may send this
    /// app's events from a browser (CORS). Requests with another `Origin` are refused; requests
    /// without one (mobile SDKs, servers) are not affected. Empty: no browser origin at all.
    pub allowed_origins: Vec<String>,
}

impl AppConfig {
    pub fn new(secret: impl Into<String>) -> Self {
        AppConfig { secret: secret.into(), schemas: HashMap::new(), allowed_origins: Vec::new() }
    }
}

/// Reduces a configured origin to the form browsers send in `Origin`: lower-case
/// `scheme://host[:port]`, without a default port, path or trailing slash.
pub fn normalize_origin(origin: &str) -> Result<String, String> {
    let url = url::Url::parse(origin.trim()).map_err(|e| format!("origin {origin:?}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("origin {origin:?}: expected http(s)://host[:port]"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(format!("origin {origin:?}: an origin has no path, query or user"));
    }
    Ok(url.origin().ascii_serialization())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Hs256,
    Rs256,
}

/// OAuth2 bearer tokens accepted on admin endpoints besides the admin key.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    /// The HS256 secret, or the RS256 public key in PEM.
    pub key: String,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// Every limit of the server, with its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body after decompression. Default 512 KiB (the protocol's batch limit).
    pub max_body_bytes: usize,
    /// Deepest JSON nesting of a request. Default 40 (the protocol allows 32 inside properties).
    pub max_json_depth: usize,
    /// Requests per second per app, and the burst. Default 5,000 / 10,000.
    pub app_rate_per_sec: u32,
    pub app_burst: u32,
    /// Requests per second per client IP, and the burst. Default 100 / 200.
    pub ip_rate_per_sec: u32,
    pub ip_burst: u32,
    /// Requests waiting for the storage writer; past it ingest answers 503. Default 1,024.
    pub writer_queue: usize,
    /// Most events one group commit takes. Default 20,000.
    pub max_commit_events: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: trailmark_core::protocol::MAX_BATCH_BYTES,
            max_json_depth: 40,
            app_rate_per_sec: 5_000,
            app_burst: 10_000,
            ip_rate_per_sec: 100,
            ip_burst: 200,
            writer_queue: 1_024,
            max_commit_events: 20_000,
        }
    }
}

/// Everything the server is built from.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub apps: HashMap<String, AppConfig>,
    /// `Authorization: Bearer <admin key>` on admin endpoints. No key and no JWT: admin
    /// endpoints answer 401 to everyone.
    pub admin_key: Option<String>,
    pub jwt: Option<JwtConfig>,
    /// AES-256-GCM key for IP addresses at rest.
    pub ip_key: [u8; 32],
    /// Key for the keyed hashes in the deletion audit log (so it holds no raw identifier).
    pub audit_key: [u8; 32],
    pub geoip_city: Option<PathBuf>,
    pub geoip_asn: Option<PathBuf>,
    /// MaxMind GeoIP2 Anonymous IP database: installs from anonymous, VPN, hosting or Tor
    /// addresses fire the `anonymous_ip` fraud rule.
    pub geoip_anonymous: Option<PathBuf>,
    /// Take the client IP from `X-Forwarded-For` (only behind a proxy you control).
    pub trust_proxy: bool,
    pub limits: Limits,
    /// Windows, models and fraud rules of install attribution.
    pub attribution: crate::domain::attribution::AttributionConfig,
    /// Public base URL of tracking links (`{base}/c/<code>`), e.g. `https://t.example.com`.
    /// Default: none, and link URLs are relative (`/c/<code>`).
    pub public_url: Option<String>,
    /// Per-network postbacks, and how they are delivered.
    pub postbacks: Vec<crate::domain::postbacks::PostbackConfig>,
    pub postback_policy: crate::domain::postbacks::PostbackPolicy,
    /// Sessions, retention and the maintenance schedule of the reports.
    pub reports: ReportConfig,
    /// The server's clock. [`Clock::system`] unless a test drives time.
    pub clock: Clock,
}

/// Settings of the reporting side (`docs/reports.md`).
#[derive(Debug, Clone, PartialEq)]
pub struct ReportConfig {
    /// A session ends after this much inactivity (ms). Default 30 minutes.
    pub session_gap: i64,
    /// Raw events (and their facts and sessions) are kept this many days, then deleted once
    /// rolled up. Default 90.
    pub raw_retention_days: u32,
    /// Clicks and impressions are kept this long after the attribution index lets them go
    /// (ms). Default 0: deleted as soon as no window can match them.
    pub click_retention_extra: i64,
    /// How often the scheduler refreshes the star schema and rollups (ms). Default 10 s.
    pub refresh_interval: i64,
    /// How often it applies retention and purges expired and orphaned rows (ms). Default 1 h.
    pub purge_interval: i64,
    /// Events taken into the star schema per writer transaction. Default 20 000 (about a third
    /// of a second of the writer on a 2-core machine).
    pub refresh_batch: usize,
    /// Run the maintenance scheduler in the background (default on). Tests that drive
    /// [`crate::reports::Maintenance::run_due`] themselves turn it off.
    pub scheduler: bool,
    /// Most fact rows one report reads; larger ranges answer 400 asking for a shorter one.
    /// Default 2 000 000.
    pub max_report_rows: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        ReportConfig {
            session_gap: 30 * 60_000,
            raw_retention_days: 90,
            click_retention_extra: 0,
            refresh_interval: 10_000,
            purge_interval: 3_600_000,
            refresh_batch: 20_000,
            max_report_rows: 2_000_000,
            scheduler: true,
        }
    }
}

/// Where the server reads the time (Unix ms). Signatures, windows and stored times all use it,
/// so a test can move a whole server through days in an instant.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    pub fn system() -> Self {
        Clock(Arc::new(now_ms))
    }

    /// A clock that only moves when told to, starting at `start` (Unix ms).
    pub fn manual(start: i64) -> (Self, ManualClock) {
        let time = Arc::new(AtomicI64::new(start));
        let reader = time.clone();
        (Clock(Arc::new(move || reader.load(Ordering::SeqCst))), ManualClock(time))
    }

    pub fn now(&self) -> i64 {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// The handle that moves a [`Clock::manual`] clock.
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn now(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
}

impl ServerConfig {
    /// A configuration with no apps, random keys (fine for tests; persist keys in production or
    /// stored IPs become unreadable after a restart) and default limits.
    pub fn new() -> Self {
        ServerConfig {
            apps: HashMap::new(),
            admin_key: None,
            jwt: None,
            ip_key: random_key(),
            audit_key: random_key(),
            geoip_city: None,
            geoip_asn: None,
            geoip_anonymous: None,
            trust_proxy: false,
            limits: Limits::default(),
            attribution: Default::default(),
            public_url: None,
            postbacks: Vec::new(),
            postback_policy: Default::default(),
            reports: ReportConfig::default(),
            clock: Clock::system(),
        }
    }

    pub fn with_app(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.apps.insert(id.into(), AppConfig::new(secret));
        self
    }

    /// Lets pages on `origin` send app `app_id`'s events from a browser (see
    /// [`AppConfig::allowed_origins`]). Fails for an unknown app or a malformed origin.
    pub fn with_cors_origin(mut self, app_id: &str, origin: &str) -> Result<Self, String> {
        let origin = normalize_origin(origin)?;
        let app = self.apps.get_mut(app_id).ok_or_else(|| format!("CORS origin for unknown app {app_id:?}"))?;
        if !app.allowed_origins.contains(&origin) {
            app.allowed_origins.push(origin);
        }
        Ok(self)
    }

    /// Sets the admin key (`Authorization: Bearer <key>` on admin endpoints).
    pub fn with_admin_key(mut self, key: impl Into<String>) -> Self {
        self.admin_key = Some(key.into());
        self
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self::new()
    }
}

fn random_key() -> [u8; 32] {
    use aes_gcm::aead::{OsRng, rand_core::RngCore};
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    key
}

/// Derives a 32-byte key from a passphrase (SHA-256), for keys given on a command line.
pub fn key_from_passphrase(passphrase: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(passphrase.as_bytes()).into()
}
