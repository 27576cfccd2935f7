//! Server configuration: apps and their secrets, admin auth, keys, limits. Every limit has a
//! documented default in [`Limits`].

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;

/// One app allowed to send events.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// HMAC-SHA256 signing secret shared with the SDK.
    pub secret: String,
    /// JSON Schemas for this app's own event types (`type` → schema of the whole event).
    pub schemas: HashMap<String, Value>,
}

impl AppConfig {
    pub fn new(secret: impl Into<String>) -> Self {
        AppConfig { secret: secret.into(), schemas: HashMap::new() }
    }
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
    /// Take the client IP from `X-Forwarded-For` (only behind a proxy you control).
    pub trust_proxy: bool,
    pub limits: Limits,
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
            trust_proxy: false,
            limits: Limits::default(),
        }
    }

    pub fn with_app(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.apps.insert(id.into(), AppConfig::new(secret));
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
