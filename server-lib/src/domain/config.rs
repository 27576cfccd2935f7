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

/// What kind of client an app's secret lives in, which decides what the server believes from
/// it (`docs/protocol.md`, "Trust model"). A secret in an app or a web page is public; only a
/// `server` app's secret stays with its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppKind {
    /// An iOS or Android app (the default): events and installs for iOS and Android.
    #[default]
    Mobile,
    /// A web site: events only (no installs for iOS or Android).
    Web,
    /// The app owner's backend: everything, and its revenue is used in postbacks.
    Server,
}

impl AppKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AppKind::Mobile => "mobile",
            AppKind::Web => "web",
            AppKind::Server => "server",
        }
    }
}

impl std::str::FromStr for AppKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mobile" => Ok(AppKind::Mobile),
            "web" => Ok(AppKind::Web),
            "server" => Ok(AppKind::Server),
            other => Err(format!("app kind {other:?}: expected mobile, web or server")),
        }
    }
}

/// One app allowed to send events.
#[derive(Clone)]
pub struct AppConfig {
    /// HMAC-SHA256 signing secret shared with the SDK.
    pub secret: String,
    /// Where the secret lives, and so what the app may send. Default [`AppKind::Mobile`].
    pub kind: AppKind,
    /// Use the revenue of this app's (client-sent) conversion events in postbacks to ad
    /// networks. Off by default for mobile and web apps: their secret is public, so anyone could
    /// report any revenue for any click id. Always on for `server` apps.
    pub client_revenue_postbacks: bool,
    /// A second secret, kept by the app owner's backend: requests signed with it are trusted
    /// like a `server` app's (their revenue goes into postbacks) while the app's own `secret`
    /// stays in the client. This is how a mobile or web app reports store-validated purchases
    /// for its own users, touchpoints and links.
    pub server_secret: Option<String>,
    /// JSON Schemas for this app's own event types (`type` → schema of the whole event).
    pub schemas: HashMap<String, Value>,
    /// Web origins (`https://shop.example`, scheme://host[:port]) whose pages may send this
    /// app's events from a browser (CORS). Requests with another `Origin` are refused; requests
    /// without one (mobile SDKs, servers) are not affected. Empty: no browser origin at all.
    pub allowed_origins: Vec<String>,
    /// Write keys of the Segment-compatible API (docs/segment.md): HTTP Basic user name of
    /// Segment's and RudderStack's SDKs. Separate from the signing secrets; events sent with
    /// one are unsigned and are never installs. A revoked key stays listed so it is answered
    /// as revoked.
    pub write_keys: Vec<WriteKey>,
}

/// A write key of an app ([`AppConfig::write_keys`]).
#[derive(Clone, PartialEq, Eq)]
pub struct WriteKey {
    pub key: String,
    pub revoked: bool,
}

impl WriteKey {
    pub fn new(key: impl Into<String>) -> Self {
        WriteKey { key: key.into(), revoked: false }
    }
}

impl std::fmt::Debug for WriteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteKey").field("key", &"<redacted>").field("revoked", &self.revoked).finish()
    }
}

impl AppConfig {
    pub fn new(secret: impl Into<String>) -> Self {
        AppConfig {
            secret: secret.into(),
            kind: AppKind::Mobile,
            client_revenue_postbacks: false,
            server_secret: None,
            schemas: HashMap::new(),
            allowed_origins: Vec::new(),
            write_keys: Vec::new(),
        }
    }

    /// An app of `kind`.
    pub fn of_kind(secret: impl Into<String>, kind: AppKind) -> Self {
        AppConfig { kind, ..AppConfig::new(secret) }
    }

    /// Whether the revenue of this app's events goes into postbacks.
    pub fn revenue_in_postbacks(&self) -> bool {
        self.kind == AppKind::Server || self.client_revenue_postbacks
    }
}

// Secrets never reach a log through `{:?}`.
impl std::fmt::Debug for AppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppConfig")
            .field("secret", &"<redacted>")
            .field("kind", &self.kind)
            .field("client_revenue_postbacks", &self.client_revenue_postbacks)
            .field("server_secret", &self.server_secret.as_ref().map(|_| "<redacted>"))
            .field("schemas", &self.schemas.keys().collect::<Vec<_>>())
            .field("allowed_origins", &self.allowed_origins)
            .field("write_keys", &self.write_keys)
            .finish()
    }
}

/// An ad network allowed to report server-to-server clicks and impressions (`POST
/// /v1/click`), signed with its own secret: an app's secret never can. A network reports
/// clicks on its own links only (links whose campaign names this network).
#[derive(Clone)]
pub struct NetworkConfig {
    /// HMAC-SHA256 signing secret shared with the network.
    pub secret: String,
}

impl std::fmt::Debug for NetworkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkConfig").field("secret", &"<redacted>").finish()
    }
}

/// The shortest admin key accepted (a bearer key is guessed online; 16 random characters are
/// out of reach, and failures are rate-limited per address).
pub const MIN_ADMIN_KEY_LEN: usize = 16;

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
#[derive(Clone)]
pub struct JwtConfig {
    pub algorithm: JwtAlgorithm,
    /// The HS256 secret, or the RS256 public key in PEM.
    pub key: String,
    /// When set, a token must carry exactly this `iss` (a token without one is refused).
    pub issuer: Option<String>,
    /// When set, a token's `aud` must name this audience (a token without one is refused).
    pub audience: Option<String>,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.algorithm == JwtAlgorithm::Hs256 { "<redacted>" } else { "<public key>" };
        f.debug_struct("JwtConfig")
            .field("algorithm", &self.algorithm)
            .field("key", &key)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// Every limit of the server, with its default.
#[derive(Debug, Clone, PartialEq)]
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
    /// Server-to-server clicks per second per network, and the burst (their own bucket, apart
    /// from the apps'). Default 1,000 / 2,000.
    pub network_rate_per_sec: u32,
    pub network_burst: u32,
    /// Server-to-server clicks per second naming one visitor address (a bucket apart from the
    /// requests' per-address one, so a network cannot lock an address out of ingest). Default
    /// 100 / 200.
    pub click_ip_rate_per_sec: u32,
    pub click_ip_burst: u32,
    /// Requests per second per app through the Segment-compatible API (write keys; a bucket
    /// apart from the signed SDKs'), and the burst. Default 1,000 / 2,000.
    pub write_key_rate_per_sec: u32,
    pub write_key_burst: u32,
    /// Failed admin authentications (bearer tokens, dashboard sign-ins) one client address
    /// (IPv6: its /64) may make per window; past them it gets 429 without its token being
    /// checked until the window ends. Default 20 per 10 minutes.
    pub admin_failures: u32,
    pub admin_failure_window_ms: i64,
    /// Largest `revenue` (absolute value) an event may carry; larger is a per-event rejection.
    /// Default 10,000,000.
    pub max_revenue: f64,
    /// Longest time to receive a request body once its headers are in (ms); slower is a 408.
    /// Default 30 s.
    pub body_timeout_ms: u64,
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
            network_rate_per_sec: 1_000,
            network_burst: 2_000,
            click_ip_rate_per_sec: 100,
            click_ip_burst: 200,
            write_key_rate_per_sec: 1_000,
            write_key_burst: 2_000,
            admin_failures: 20,
            admin_failure_window_ms: 600_000,
            max_revenue: 10_000_000.0,
            body_timeout_ms: 30_000,
        }
    }
}

/// Everything the server is built from.
#[derive(Clone)]
pub struct ServerConfig {
    pub apps: HashMap<String, AppConfig>,
    /// Ad networks that may send server-to-server clicks, by network name (the `network` of
    /// their campaigns).
    pub networks: HashMap<String, NetworkConfig>,
    /// `Authorization: Bearer <admin key>` on admin endpoints. No key and no JWT: admin
    /// endpoints answer 401 to everyone.
    pub admin_key: Option<String>,
    pub jwt: Option<JwtConfig>,
    /// AES-256-GCM key for IP addresses at rest.
    pub ip_key: [u8; 32],
    /// Key for the keyed hashes in the deletion audit log (so it holds no raw identifier), and
    /// (derived from it) for the stored form of user and device ids.
    pub audit_key: [u8; 32],
    /// AES-256-GCM keys for user and device ids at rest, by version: the highest seals, all
    /// open (`domain::identifiers`). Empty: one derived from `ip_key`.
    pub id_keys: Vec<crate::domain::identifiers::IdKey>,
    /// Apps the link domain opens by universal link / App Link: served as
    /// `/.well-known/apple-app-site-association` and `/.well-known/assetlinks.json`.
    pub deep_link_apps: crate::domain::wellknown::DeepLinkApps,
    pub geoip_city: Option<PathBuf>,
    pub geoip_asn: Option<PathBuf>,
    /// MaxMind GeoIP2 Anonymous IP database: installs from anonymous, VPN, hosting or Tor
    /// addresses fire the `anonymous_ip` fraud rule.
    pub geoip_anonymous: Option<PathBuf>,
    /// Take the client IP from `X-Forwarded-For` (only behind a proxy you control).
    pub trust_proxy: bool,
    /// With `trust_proxy`: how many proxies of yours append to `X-Forwarded-For` (the client
    /// is that many entries from the end). Default 1.
    pub proxy_hops: usize,
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
    /// Reports from ClickHouse, loaded from the primary store's outbox (ADR 0018); `None`:
    /// reports run in the primary store.
    pub clickhouse: Option<ClickHouseConfig>,
    /// What the event stream (Kafka) carries about people.
    pub stream: StreamPolicy,
    /// The server's clock. [`Clock::system`] unless a test drives time.
    pub clock: Clock,
}

/// How the deletion records of the event stream name people (docs/stream.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StreamIds {
    /// In clear, so any consumer can find its copies (keep the topic's readers few).
    #[default]
    Clear,
    /// As keyed hashes (HMAC-SHA256 under the audit key, `<kind>:<value>`), for a topic that
    /// is shared: consumers that keep the same hashes find their copies, others learn nothing.
    Hashed,
}

impl StreamIds {
    pub fn parse(text: &str) -> Option<StreamIds> {
        match text {
            "clear" => Some(StreamIds::Clear),
            "hashed" => Some(StreamIds::Hashed),
            _ => None,
        }
    }
}

/// What the event stream does with records of people who opted out of sharing (do-not-sell,
/// or attribution consent denied) (docs/stream.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StreamConsent {
    /// Published, with `"restricted": true` next to the consent state every record carries.
    #[default]
    Tagged,
    /// Not published at all.
    Strict,
}

impl StreamConsent {
    pub fn parse(text: &str) -> Option<StreamConsent> {
        match text {
            "tagged" => Some(StreamConsent::Tagged),
            "strict" => Some(StreamConsent::Strict),
            _ => None,
        }
    }
}

/// What the event stream carries about people.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamPolicy {
    /// How deletion records name the subject and the identifiers it expanded to.
    pub deletion_ids: StreamIds,
    /// Records of people who opted out: tagged or left out.
    pub consent: StreamConsent,
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

/// Where reports run when they run in ClickHouse (`--clickhouse`, `[clickhouse]`).
#[derive(Clone, PartialEq, Eq)]
pub struct ClickHouseConfig {
    /// The HTTP interface: `http(s)://[user[:password]@]host:port` (https verifies the
    /// server's certificate against the Mozilla roots).
    pub url: String,
    /// Created when missing. Default `trailmark`.
    pub database: String,
    /// Override the URL's user and password.
    pub user: Option<String>,
    pub password: Option<String>,
    /// Outbox entries per load (one insert per table). Default 10 000.
    pub batch_size: usize,
    /// How often the background loader looks for new entries (ms). Default 1 s.
    pub interval: i64,
}

impl ClickHouseConfig {
    pub fn new(url: impl Into<String>) -> Self {
        ClickHouseConfig {
            url: url.into(),
            database: "trailmark".into(),
            user: None,
            password: None,
            batch_size: 10_000,
            interval: 1_000,
        }
    }
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        let url = match url::Url::parse(&self.url) {
            Ok(mut u) => {
                if u.password().is_some() {
                    let _ = u.set_password(Some("***"));
                }
                u.to_string()
            }
            Err(_) => "(unparsable)".into(),
        };
        f.debug_struct("ClickHouseConfig")
            .field("url", &url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("batch_size", &self.batch_size)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
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
            networks: HashMap::new(),
            admin_key: None,
            jwt: None,
            ip_key: random_key(),
            audit_key: random_key(),
            id_keys: Vec::new(),
            deep_link_apps: Default::default(),
            geoip_city: None,
            geoip_asn: None,
            geoip_anonymous: None,
            trust_proxy: false,
            proxy_hops: 1,
            limits: Limits::default(),
            attribution: Default::default(),
            public_url: None,
            postbacks: Vec::new(),
            postback_policy: Default::default(),
            reports: ReportConfig::default(),
            clickhouse: None,
            stream: StreamPolicy::default(),
            clock: Clock::system(),
        }
    }

    pub fn with_app(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.apps.insert(id.into(), AppConfig::new(secret));
        self
    }

    /// Adds an app of `kind` (see [`AppKind`]).
    pub fn with_app_kind(mut self, id: impl Into<String>, secret: impl Into<String>, kind: AppKind) -> Self {
        self.apps.insert(id.into(), AppConfig::of_kind(secret, kind));
        self
    }

    /// Lets ad network `network` send server-to-server clicks signed with `secret`.
    pub fn with_network(mut self, network: impl Into<String>, secret: impl Into<String>) -> Self {
        self.networks.insert(network.into(), NetworkConfig { secret: secret.into() });
        self
    }

    /// How many `X-Forwarded-For` entries are trusted: `proxy_hops` behind a trusted proxy,
    /// else none.
    pub fn trusted_hops(&self) -> usize {
        if self.trust_proxy { self.proxy_hops } else { 0 }
    }

    /// [`Limits::body_timeout_ms`] as a duration.
    pub fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.limits.body_timeout_ms.max(1))
    }

    /// What is wrong with the apps, networks and admin credentials, if anything.
    pub fn check_credentials(&self) -> Result<(), String> {
        if let Some(key) = &self.admin_key
            && key.chars().count() < MIN_ADMIN_KEY_LEN
        {
            return Err(format!("the admin key must be at least {MIN_ADMIN_KEY_LEN} characters long"));
        }
        // A signature says which secret made it, not which app id was claimed: every secret
        // must be one sender's only.
        let mut secrets: HashMap<String, String> = HashMap::new();
        let mut claim = |secret: &str, owner: String| match secrets.insert(secret.to_owned(), owner.clone()) {
            _ if secret.is_empty() => Err(format!("{owner}: the secret must not be empty")),
            Some(other) => Err(format!("{owner} uses the same secret as {other}; give each its own")),
            None => Ok(()),
        };
        for (id, app) in &self.apps {
            if id.is_empty() {
                return Err("an app id must not be empty".into());
            }
            claim(&app.secret, format!("app {id:?}"))?;
            if let Some(server) = &app.server_secret {
                claim(server, format!("app {id:?} (server secret)"))?;
            }
        }
        for (name, network) in &self.networks {
            if name.is_empty() {
                return Err("a network name must not be empty".into());
            }
            claim(&network.secret, format!("network {name:?}"))?;
        }
        if !(self.limits.max_revenue.is_finite() && self.limits.max_revenue >= 0.0) {
            return Err("max_revenue must be a finite, non-negative number".into());
        }
        if self.proxy_hops == 0 {
            return Err("proxy_hops must be at least 1".into());
        }
        Ok(())
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

// Keys and secrets never reach a log through `{:?}`.
impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("apps", &self.apps)
            .field("networks", &self.networks)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<redacted>"))
            .field("jwt", &self.jwt)
            .field("ip_key", &"<redacted>")
            .field("audit_key", &"<redacted>")
            .field("id_keys", &self.id_keys)
            .field("deep_link_apps", &self.deep_link_apps)
            .field("geoip_city", &self.geoip_city)
            .field("geoip_asn", &self.geoip_asn)
            .field("geoip_anonymous", &self.geoip_anonymous)
            .field("trust_proxy", &self.trust_proxy)
            .field("proxy_hops", &self.proxy_hops)
            .field("limits", &self.limits)
            .field("attribution", &self.attribution)
            .field("public_url", &self.public_url)
            .field("postbacks", &self.postbacks)
            .field("postback_policy", &self.postback_policy)
            .field("reports", &self.reports)
            .field("stream", &self.stream)
            .field("clock", &self.clock)
            .finish()
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
