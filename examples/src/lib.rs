//! Shared code of the reference server, the quickstart and the load generator: settings from the
//! command line and a TOML file, key files, logging, and starting the server (HTTP or HTTPS).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;
use trailmark_server::domain::config::AppKind;
use trailmark_server::{ServerBuilder, ServerConfig};

pub mod conn;
pub mod journeys;

/// Command line of the reference server. Every option can also be set in the `--config` TOML
/// file under the same name (with `-` written as `_`, and `apps = ["id:secret", ...]`); the
/// command line wins.
// No Debug: secrets (apps, networks, the admin key) are fields; nothing prints them.
#[derive(Parser, Clone, Default)]
#[command(name = "trailmark-server", about = "Trailmark reference ingestion server")]
pub struct ServerArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// SQLite database file [default: trailmark.db].
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// An app allowed to send events, as ID:SECRET or ID:SECRET:KIND, KIND being mobile (iOS
    /// and Android; the default), web or server (see docs/protocol.md, "Trust model").
    /// Repeatable.
    #[arg(long = "app", value_name = "ID:SECRET[:KIND]")]
    pub apps: Vec<String>,
    /// An ad network allowed to send server-to-server clicks (POST /v1/click) on its own
    /// links, as NAME:SECRET (NAME is the campaigns' network). Repeatable.
    #[arg(long = "network", value_name = "NAME:SECRET")]
    pub networks: Vec<String>,
    /// A web origin whose pages may send events from a browser (CORS), as ORIGIN for every
    /// app or APP_ID=ORIGIN for one, e.g. https://shop.example. Repeatable.
    #[arg(long = "cors-origin", value_name = "[APP_ID=]ORIGIN")]
    pub cors_origins: Vec<String>,
    /// A write key of the Segment-compatible API (docs/segment.md), as APP_ID=KEY: Segment's
    /// and RudderStack's SDKs send with it. Repeatable (several keys per app: rotation).
    #[arg(long = "write-key", value_name = "APP_ID=KEY")]
    pub write_keys: Vec<String>,
    /// A revoked write key, as APP_ID=KEY: answered 401 revoked_write_key. Repeatable.
    #[arg(long = "revoked-write-key", value_name = "APP_ID=KEY")]
    pub revoked_write_keys: Vec<String>,
    /// An iOS app the link domain opens by universal link, as TEAM_ID.BUNDLE_ID (served in
    /// /.well-known/apple-app-site-association). Repeatable.
    #[arg(long = "apple-app", value_name = "TEAM_ID.BUNDLE_ID")]
    pub apple_apps: Vec<String>,
    /// An Android app the link domain opens by App Link, as PACKAGE=SHA256_FINGERPRINT[,…]
    /// (served in /.well-known/assetlinks.json). Repeatable.
    #[arg(long = "android-app", value_name = "PACKAGE=FINGERPRINT")]
    pub android_apps: Vec<String>,
    /// Bearer key for admin endpoints.
    #[arg(long)]
    pub admin_key: Option<String>,
    /// MaxMind City (or GeoLite2-City) database.
    #[arg(long)]
    pub geoip_city: Option<PathBuf>,
    /// MaxMind ASN database.
    #[arg(long)]
    pub geoip_asn: Option<PathBuf>,
    /// Take the client IP from X-Forwarded-For (only behind a proxy you control).
    #[arg(long)]
    pub trust_proxy: bool,
    /// With --trust-proxy: how many proxies of yours append to X-Forwarded-For [default: 1].
    #[arg(long)]
    pub proxy_hops: Option<usize>,
    /// Seconds a new connection has to deliver its first request's headers [default: 10].
    #[arg(long)]
    pub header_timeout: Option<f64>,
    /// Seconds a request's body may take once its headers arrived (408 after) [default: 30].
    #[arg(long)]
    pub body_timeout: Option<f64>,
    /// Seconds a connection waits for its next request after a response [default: 60].
    #[arg(long)]
    pub idle_timeout: Option<f64>,
    /// Most connections open at once; more are closed at once [default: 10000].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Most connections open at once from one client address (IPv6: its /64); 0 for no cap.
    /// Off behind --trust-proxy (every connection comes from the proxy) [default: 256].
    #[arg(long)]
    pub max_connections_per_ip: Option<usize>,
    /// PEM certificate chain; with --tls-key, serve HTTPS (TLS 1.2 and 1.3 only).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// TOML file with the same settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log format: text or json [default: text].
    #[arg(long)]
    pub log_format: Option<String>,
    /// Requests per second allowed per client IP [default: 100].
    #[arg(long)]
    pub ip_rate: Option<u32>,
    /// Requests per second allowed per app [default: 5000].
    #[arg(long)]
    pub app_rate: Option<u32>,
    /// Requests per second allowed per app with its write keys (the Segment-compatible API;
    /// a bucket apart from the signed SDKs') [default: 1000].
    #[arg(long)]
    pub write_key_rate: Option<u32>,
    /// SQLite durability: full (fsync every group commit; survives power loss) or normal
    /// (survives a killed process) [default: full].
    #[arg(long)]
    pub sync: Option<String>,
    /// Public base URL of tracking links, e.g. https://t.example.com (links are /c/<code>
    /// under it).
    #[arg(long)]
    pub public_url: Option<String>,
    /// MaxMind GeoIP2 Anonymous IP database (turns on the anonymous_ip fraud rule).
    #[arg(long)]
    pub geoip_anonymous: Option<PathBuf>,
    /// A network postback as NETWORK=URL_TEMPLATE, sent for every event type. Repeatable; the
    /// TOML file's [[postbacks]] tables can also limit the events.
    #[arg(long = "postback", value_name = "NETWORK=URL")]
    pub postbacks: Vec<String>,
    /// Store everything in PostgreSQL instead of SQLite, e.g.
    /// postgres://trailmark@db.internal/trailmark (several instances may share it). TLS with
    /// ?sslmode=require (or verify-ca, verify-full: the certificate and host name are verified).
    #[arg(long)]
    pub postgres: Option<String>,
    /// CA certificates (PEM) that sign the PostgreSQL server's certificate [default: the
    /// URL's sslrootcert, else the Mozilla roots].
    #[arg(long)]
    pub postgres_ca_file: Option<PathBuf>,
    /// Connections in the PostgreSQL pool [default: 16].
    #[arg(long)]
    pub postgres_pool: Option<usize>,
    /// PostgreSQL schema to use (created when missing) [default: the user's search_path].
    #[arg(long)]
    pub postgres_schema: Option<String>,
    /// Share recent clicks with other instances through Redis, e.g. redis://cache.internal:6379/0
    /// (rediss:// for TLS).
    #[arg(long)]
    pub redis: Option<String>,
    /// CA certificates (PEM) that sign the Redis server's certificate (rediss://) [default:
    /// the system's trust store].
    #[arg(long)]
    pub redis_ca_file: Option<PathBuf>,
    /// Key file (IP encryption and audit hashes) [default: <db>.keys]. Instances that share a
    /// PostgreSQL database must share this file.
    #[arg(long)]
    pub keys: Option<PathBuf>,
    /// Add a new identifier-encryption key to the key file and exit. Restart every instance
    /// with the new file: new rows are sealed under it, stored ones again in the background.
    #[arg(long)]
    pub rotate_id_key: bool,
    /// Publish accepted events, installs and deletions to Kafka, e.g. kafka1:9092,kafka2:9092
    /// (topics <prefix>.<family>; see docs/stream.md).
    #[arg(long)]
    pub kafka: Option<String>,
    /// Kafka topic prefix [default: trailmark].
    #[arg(long)]
    pub kafka_topic_prefix: Option<String>,
    /// Serve funnels, retention and paths from ClickHouse, loaded from this store's outbox:
    /// its HTTP interface, e.g. http://reporter:secret@olap.internal:8123 (https verifies
    /// the certificate). The TOML file's [clickhouse] table has the other settings
    /// (docs/clickhouse.md).
    #[arg(long)]
    pub clickhouse: Option<String>,
    /// How deletion records on the stream name people: clear, or hashed (keyed hashes, for a
    /// shared topic) [default: clear].
    #[arg(long)]
    pub stream_deletion_ids: Option<String>,
    /// Records of people who opted out of sharing (do-not-sell, attribution denied) on the
    /// event stream: tagged ("restricted": true) or strict (left out) [default: tagged].
    #[arg(long)]
    pub stream_consent: Option<String>,
    /// Export trace spans to an OpenTelemetry collector over OTLP/HTTP (JSON), e.g.
    /// http://otel-collector:4318 (spans go to <url>/v1/traces).
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
    #[command(flatten)]
    pub postback_delivery: PostbackDelivery,
}

/// How postbacks are delivered (`--postback-timeout-secs`, `--postback-concurrency`,
/// `--postback-queue`; the same names in the TOML file). Each network has its own queue and
/// requests in flight, so one that is down only delays its own postbacks.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct PostbackDelivery {
    /// Seconds one postback request may take: connecting, sending and the answer [default: 10].
    #[arg(long)]
    pub postback_timeout_secs: Option<f64>,
    /// Postback requests in flight at once, per network [default: 8].
    #[arg(long)]
    pub postback_concurrency: Option<usize>,
    /// Postbacks one network may hold in memory; past it they stay pending in storage until its
    /// queue drains [default: 10000].
    #[arg(long)]
    pub postback_queue: Option<usize>,
}

impl PostbackDelivery {
    /// These values over `file`'s.
    fn or(&self, file: &PostbackDelivery) -> PostbackDelivery {
        PostbackDelivery {
            postback_timeout_secs: self.postback_timeout_secs.or(file.postback_timeout_secs),
            postback_concurrency: self.postback_concurrency.or(file.postback_concurrency),
            postback_queue: self.postback_queue.or(file.postback_queue),
        }
    }

    /// Applies the values that are set over `policy`; refuses a zero or negative one.
    pub fn apply(&self, policy: &mut trailmark_server::domain::postbacks::PostbackPolicy) -> Result<(), String> {
        if let Some(secs) = self.postback_timeout_secs {
            if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
                return Err(format!("--postback-timeout-secs {secs}: expected more than 0 and at most 3600"));
            }
            policy.timeout = std::time::Duration::from_secs_f64(secs);
        }
        for (name, value, slot) in [
            ("--postback-concurrency", self.postback_concurrency, &mut policy.concurrency),
            ("--postback-queue", self.postback_queue, &mut policy.queue),
        ] {
            match value {
                Some(0) => return Err(format!("{name} must be at least 1")),
                Some(n) => *slot = n,
                None => {}
            }
        }
        Ok(())
    }
}

/// An entry of `apps` in the TOML file: `"id:secret[:kind]"` or a table.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum AppEntry {
    Spec(String),
    Table(AppFile),
}

/// `apps = [{ id = "...", secret = "...", kind = "web", client_revenue_postbacks = false }]`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct AppFile {
    id: String,
    secret: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    client_revenue_postbacks: bool,
    /// A second secret for the app owner's backend (its revenue goes into postbacks).
    #[serde(default)]
    server_secret: Option<String>,
}

/// `[[networks]]` in the TOML file.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct NetworkFile {
    name: String,
    secret: String,
}

/// One app of the resolved settings.
#[derive(Clone)]
pub struct AppSetting {
    pub id: String,
    pub secret: String,
    pub kind: AppKind,
    pub client_revenue_postbacks: bool,
    pub server_secret: Option<String>,
}

impl std::fmt::Debug for AppSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppSetting").field("id", &self.id).field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl AppSetting {
    /// `ID:SECRET` or `ID:SECRET:KIND`. A secret may itself contain `:`; only a last part that
    /// names a kind (`mobile`, `web`, `server`) is read as one.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (id, rest) =
            spec.split_once(':').ok_or_else(|| format!("--app {:?}: expected ID:SECRET[:KIND]", redact(spec)))?;
        let (secret, kind) = match rest.rsplit_once(':').map(|(s, k)| (s, k.parse::<AppKind>())) {
            Some((secret, Ok(kind))) => (secret, kind),
            _ => (rest, AppKind::Mobile),
        };
        AppSetting::new(id, secret, kind, false)
    }

    fn new(id: &str, secret: &str, kind: AppKind, client_revenue_postbacks: bool) -> Result<Self, String> {
        if id.is_empty() || secret.is_empty() {
            return Err(format!("app {id:?}: the id and the secret must not be empty"));
        }
        Ok(AppSetting {
            id: id.to_owned(),
            secret: secret.to_owned(),
            kind,
            client_revenue_postbacks,
            server_secret: None,
        })
    }
}

/// A write key spec for an error message: the part before the first `=` only.
fn redact_key(spec: &str) -> String {
    match spec.split_once('=') {
        Some((app, _)) => format!("{app}=…"),
        None => "…".to_owned(),
    }
}

/// A credential spec for an error message: the part before the first `:` only.
fn redact(spec: &str) -> String {
    match spec.split_once(':') {
        Some((id, _)) => format!("{id}:…"),
        None => spec.to_owned(),
    }
}

/// `[[postbacks]]` in the TOML file.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct PostbackFile {
    pub network: String,
    pub url: String,
    #[serde(default)]
    pub events: Vec<String>,
}

/// `[attribution]` in the TOML file: every window, threshold and fraud policy (see
/// docs/attribution.md for their meaning and defaults).
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct AttributionFile {
    pub click_window_hours: Option<f64>,
    pub fingerprint_window_hours: Option<f64>,
    pub fingerprint_threshold: Option<f64>,
    pub fingerprint_ios_without_att: Option<bool>,
    pub view_through_window_hours: Option<f64>,
    pub reengagement_inactivity_days: Option<f64>,
    pub reattribution_window_days: Option<f64>,
    pub lookback_days: Option<f64>,
    pub half_life_days: Option<f64>,
    pub conversion_events: Option<Vec<String>>,
    pub network_priority: Option<Vec<String>>,
    pub min_click_to_install_secs: Option<f64>,
    pub max_indexed_touches: Option<usize>,
    pub click_injection: Option<trailmark_server::FraudPolicy>,
    pub max_clicks_per_ip_hour: Option<u32>,
    pub max_clicks_per_device_hour: Option<u32>,
    pub click_flooding: Option<trailmark_server::FraudPolicy>,
    pub burst_min_installs: Option<u32>,
    pub burst_factor: Option<f64>,
    pub burst_baseline_hours: Option<u32>,
    pub install_burst: Option<trailmark_server::FraudPolicy>,
    pub emulator: Option<trailmark_server::FraudPolicy>,
    pub anonymous_ip: Option<trailmark_server::FraudPolicy>,
}

impl AttributionFile {
    /// Applies the values that are set over `c`.
    pub fn apply(&self, c: &mut trailmark_server::AttributionConfig) {
        let ms = |v: f64, unit: f64| (v * unit) as i64;
        const H: f64 = 3_600_000.0;
        const D: f64 = 24.0 * H;
        let set = |slot: &mut i64, v: Option<f64>, unit: f64| {
            if let Some(v) = v {
                *slot = ms(v, unit);
            }
        };
        set(&mut c.click_window, self.click_window_hours, H);
        set(&mut c.fingerprint_window, self.fingerprint_window_hours, H);
        set(&mut c.view_through_window, self.view_through_window_hours, H);
        set(&mut c.reengagement_inactivity, self.reengagement_inactivity_days, D);
        set(&mut c.reattribution_window, self.reattribution_window_days, D);
        set(&mut c.lookback_window, self.lookback_days, D);
        set(&mut c.half_life, self.half_life_days, D);
        set(&mut c.fraud.min_click_to_install, self.min_click_to_install_secs, 1_000.0);
        if let Some(v) = self.fingerprint_threshold {
            c.fingerprint_threshold = v;
        }
        if let Some(v) = self.fingerprint_ios_without_att {
            c.fingerprint_ios_without_att = v;
        }
        if let Some(v) = self.max_indexed_touches {
            c.max_indexed_touches = v;
        }
        if let Some(v) = &self.conversion_events {
            c.conversion_events = v.clone();
        }
        if let Some(v) = &self.network_priority {
            c.network_priority = v.clone();
        }
        let f = &mut c.fraud;
        for (slot, v) in [
            (&mut f.click_injection, self.click_injection),
            (&mut f.click_flooding, self.click_flooding),
            (&mut f.install_burst, self.install_burst),
            (&mut f.emulator, self.emulator),
            (&mut f.anonymous_ip, self.anonymous_ip),
        ] {
            if let Some(v) = v {
                *slot = v;
            }
        }
        for (slot, v) in [
            (&mut f.max_clicks_per_ip_hour, self.max_clicks_per_ip_hour),
            (&mut f.max_clicks_per_device_hour, self.max_clicks_per_device_hour),
            (&mut f.burst_min_installs, self.burst_min_installs),
            (&mut f.burst_baseline_hours, self.burst_baseline_hours),
        ] {
            if let Some(v) = v {
                *slot = v;
            }
        }
        if let Some(v) = self.burst_factor {
            f.burst_factor = v;
        }
    }
}

/// `[reports]` in the TOML file: sessions, retention and the maintenance schedule (see
/// docs/reports.md).
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct ReportsFile {
    pub session_gap_minutes: Option<f64>,
    pub raw_retention_days: Option<u32>,
    pub click_retention_extra_days: Option<f64>,
    pub refresh_interval_secs: Option<f64>,
    pub purge_interval_minutes: Option<f64>,
}

/// The TOML file's `[clickhouse]` table (docs/clickhouse.md).
#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields)]
pub struct ClickHouseFile {
    pub url: Option<String>,
    pub database: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub batch_size: Option<usize>,
    pub interval_secs: Option<f64>,
}

impl ClickHouseFile {
    /// The settings, with `url` (the command line's) over the file's.
    fn resolve(
        self,
        url: Option<String>,
    ) -> Result<Option<trailmark_server::domain::config::ClickHouseConfig>, String> {
        let Some(url) = url.or(self.url) else {
            return if self.database.is_some() || self.user.is_some() || self.password.is_some() {
                Err("[clickhouse] needs a url (or --clickhouse)".into())
            } else {
                Ok(None)
            };
        };
        let mut c = trailmark_server::domain::config::ClickHouseConfig::new(url);
        if let Some(d) = self.database {
            c.database = d;
        }
        c.user = self.user;
        c.password = self.password;
        if let Some(b) = self.batch_size {
            if b == 0 || b > 1_000_000 {
                return Err("[clickhouse] batch_size is 1 to 1000000".into());
            }
            c.batch_size = b;
        }
        if let Some(s) = self.interval_secs {
            if !(s.is_finite() && (0.05..=60.0).contains(&s)) {
                return Err("[clickhouse] interval_secs is 0.05 to 60".into());
            }
            c.interval = (s * 1000.0) as i64;
        }
        Ok(Some(c))
    }
}

impl ReportsFile {
    /// Applies the values that are set over `c`.
    pub fn apply(&self, c: &mut trailmark_server::ReportConfig) {
        let set = |slot: &mut i64, v: Option<f64>, unit: f64| {
            if let Some(v) = v {
                *slot = (v * unit) as i64;
            }
        };
        set(&mut c.session_gap, self.session_gap_minutes, 60_000.0);
        set(&mut c.click_retention_extra, self.click_retention_extra_days, 86_400_000.0);
        set(&mut c.refresh_interval, self.refresh_interval_secs, 1_000.0);
        set(&mut c.purge_interval, self.purge_interval_minutes, 60_000.0);
        if let Some(d) = self.raw_retention_days {
            c.raw_retention_days = d;
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    db: Option<PathBuf>,
    apps: Option<Vec<AppEntry>>,
    networks: Option<Vec<NetworkFile>>,
    proxy_hops: Option<usize>,
    header_timeout: Option<f64>,
    body_timeout: Option<f64>,
    idle_timeout: Option<f64>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    /// Largest |revenue| an event may carry [default: 10000000].
    max_revenue: Option<f64>,
    cors_origins: Option<Vec<String>>,
    write_keys: Option<Vec<String>>,
    revoked_write_keys: Option<Vec<String>>,
    apple_apps: Option<Vec<String>>,
    android_apps: Option<Vec<String>>,
    admin_key: Option<String>,
    geoip_city: Option<PathBuf>,
    geoip_asn: Option<PathBuf>,
    trust_proxy: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    log_format: Option<String>,
    ip_rate: Option<u32>,
    app_rate: Option<u32>,
    write_key_rate: Option<u32>,
    sync: Option<String>,
    public_url: Option<String>,
    geoip_anonymous: Option<PathBuf>,
    postbacks: Option<Vec<PostbackFile>>,
    attribution: Option<AttributionFile>,
    reports: Option<ReportsFile>,
    clickhouse: Option<ClickHouseFile>,
    postgres: Option<String>,
    postgres_pool: Option<usize>,
    postgres_schema: Option<String>,
    postgres_ca_file: Option<PathBuf>,
    redis: Option<String>,
    redis_ca_file: Option<PathBuf>,
    keys: Option<PathBuf>,
    kafka: Option<String>,
    kafka_topic_prefix: Option<String>,
    stream_deletion_ids: Option<String>,
    stream_consent: Option<String>,
    /// Extra librdkafka producer properties, e.g. { "compression.type" = "lz4" }.
    kafka_properties: Option<std::collections::BTreeMap<String, String>>,
    otlp_endpoint: Option<String>,
    postback_timeout_secs: Option<f64>,
    postback_concurrency: Option<usize>,
    postback_queue: Option<usize>,
}

/// Resolved settings (`{:?}` shows no secret).
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub apps: Vec<AppSetting>,
    /// Ad networks' (name, secret) for server-to-server clicks.
    pub networks: Vec<(String, String)>,
    pub proxy_hops: usize,
    /// Connection limits (header and idle timeouts, the connection cap).
    pub conn: conn::ConnLimits,
    pub body_timeout: std::time::Duration,
    pub max_revenue: Option<f64>,
    /// CORS origins: `(None, origin)` for every app, `(Some(app), origin)` for one.
    pub cors_origins: Vec<(Option<String>, String)>,
    /// Write keys: (app, key, revoked).
    pub write_keys: Vec<(String, String, bool)>,
    /// Apps opened by universal links / App Links (the well-known files).
    pub deep_link_apps: trailmark_server::domain::wellknown::DeepLinkApps,
    pub admin_key: Option<String>,
    pub geoip_city: Option<PathBuf>,
    pub geoip_asn: Option<PathBuf>,
    pub trust_proxy: bool,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub json_logs: bool,
    pub ip_rate: u32,
    pub app_rate: u32,
    pub write_key_rate: u32,
    pub durability: trailmark_server::Durability,
    pub public_url: Option<String>,
    pub geoip_anonymous: Option<PathBuf>,
    pub postbacks: Vec<PostbackFile>,
    pub attribution: AttributionFile,
    pub reports: ReportsFile,
    /// Reports from ClickHouse.
    pub clickhouse: Option<trailmark_server::domain::config::ClickHouseConfig>,
    /// PostgreSQL URL (instead of the SQLite file `db`).
    pub postgres: Option<String>,
    pub postgres_pool: usize,
    pub postgres_schema: Option<String>,
    /// CA file for PostgreSQL's TLS.
    pub postgres_ca_file: Option<PathBuf>,
    /// Redis URL of the shared click cache.
    pub redis: Option<String>,
    /// CA file for Redis's TLS.
    pub redis_ca_file: Option<PathBuf>,
    /// The key file.
    pub keys: PathBuf,
    /// Kafka brokers, topic prefix and producer properties.
    pub kafka: Option<String>,
    pub kafka_topic_prefix: String,
    pub kafka_properties: Vec<(String, String)>,
    /// How deletion records on the stream name people.
    pub stream_deletion_ids: trailmark_server::domain::config::StreamIds,
    /// Opted-out people's records on the stream: tagged or left out.
    pub stream_consent: trailmark_server::domain::config::StreamConsent,
    /// OTLP/HTTP collector base URL.
    pub otlp_endpoint: Option<String>,
    /// Postback timeout, requests in flight and queue size per network.
    pub postback_delivery: PostbackDelivery,
}

impl ServerArgs {
    /// Merges the TOML file (if any) under the command line.
    pub fn settings(&self) -> Result<Settings, String> {
        let file: FileConfig = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
                toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let mut apps = Vec::new();
        for entry in file.apps.unwrap_or_default() {
            apps.push(match entry {
                AppEntry::Spec(spec) => AppSetting::parse(&spec)?,
                AppEntry::Table(t) => {
                    let kind = match &t.kind {
                        None => AppKind::Mobile,
                        Some(k) => k.parse().map_err(|e| format!("app {}: {e}", t.id))?,
                    };
                    AppSetting {
                        server_secret: t.server_secret,
                        ..AppSetting::new(&t.id, &t.secret, kind, t.client_revenue_postbacks)?
                    }
                }
            });
        }
        for spec in &self.apps {
            apps.push(AppSetting::parse(spec)?);
        }
        let mut networks: Vec<(String, String)> =
            file.networks.unwrap_or_default().into_iter().map(|n| (n.name, n.secret)).collect();
        for spec in &self.networks {
            let (name, secret) =
                spec.split_once(':').ok_or_else(|| format!("--network {:?}: expected NAME:SECRET", redact(spec)))?;
            networks.push((name.to_owned(), secret.to_owned()));
        }
        if let Some((name, _)) = networks.iter().find(|(n, s)| n.is_empty() || s.is_empty()) {
            return Err(format!("--network {name:?}: name and secret must not be empty"));
        }
        let secs = |v: Option<f64>, default: u64, name: &str| -> Result<std::time::Duration, String> {
            match v {
                None => Ok(std::time::Duration::from_secs(default)),
                Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(std::time::Duration::from_secs_f64(s)),
                Some(s) => Err(format!("--{name} {s}: expected seconds between 0 and 86400")),
            }
        };
        let conn = conn::ConnLimits {
            header: secs(self.header_timeout.or(file.header_timeout), 10, "header-timeout")?,
            idle: secs(self.idle_timeout.or(file.idle_timeout), 60, "idle-timeout")?,
            max_connections: match self.max_connections.or(file.max_connections).unwrap_or(10_000) {
                0 => return Err("--max-connections must be at least 1".into()),
                n => n,
            },
            max_per_address: if self.trust_proxy || file.trust_proxy.unwrap_or(false) {
                0
            } else {
                self.max_connections_per_ip.or(file.max_connections_per_ip).unwrap_or(256)
            },
        };
        let body_timeout = secs(self.body_timeout.or(file.body_timeout), 30, "body-timeout")?;
        let proxy_hops = match self.proxy_hops.or(file.proxy_hops).unwrap_or(1) {
            0 => return Err("--proxy-hops must be at least 1".into()),
            n => n,
        };
        let mut cors_origins = Vec::new();
        for spec in file.cors_origins.unwrap_or_default().iter().chain(&self.cors_origins) {
            // An origin has "://" and no "="; APP_ID=ORIGIN names the app first.
            let (app, origin) = match spec.split_once('=') {
                Some((app, origin)) if !app.contains("://") => (Some(app.to_owned()), origin),
                _ => (None, spec.as_str()),
            };
            let origin = trailmark_server::domain::config::normalize_origin(origin)
                .map_err(|e| format!("--cors-origin: {e}"))?;
            if let Some(app) = app.as_ref().filter(|a| !apps.iter().any(|s| s.id == **a)) {
                return Err(format!("--cors-origin {spec:?}: no app {app:?} (give it with --app)"));
            }
            cors_origins.push((app, origin));
        }
        let mut write_keys = Vec::new();
        let revoked = file.revoked_write_keys.unwrap_or_default().into_iter().chain(self.revoked_write_keys.clone());
        let keys = file.write_keys.unwrap_or_default().into_iter().chain(self.write_keys.clone()).map(|k| (k, false));
        for (spec, is_revoked) in keys.chain(revoked.map(|k| (k, true))) {
            let (app, key) = spec
                .split_once('=')
                .filter(|(a, k)| !a.is_empty() && !k.is_empty())
                .ok_or_else(|| format!("--write-key {:?}: expected APP_ID=KEY", redact_key(&spec)))?;
            if !apps.iter().any(|s| s.id == app) {
                return Err(format!("--write-key {app}=…: no app {app:?} (give it with --app)"));
            }
            write_keys.push((app.to_owned(), key.to_owned(), is_revoked));
        }
        let mut deep_link_apps = trailmark_server::domain::wellknown::DeepLinkApps {
            apple: file.apple_apps.unwrap_or_default().into_iter().chain(self.apple_apps.iter().cloned()).collect(),
            android: Vec::new(),
        };
        for spec in file.android_apps.unwrap_or_default().iter().chain(&self.android_apps) {
            let (package, fingerprints) =
                spec.split_once('=').ok_or_else(|| format!("--android-app {spec:?}: expected PACKAGE=FINGERPRINT"))?;
            deep_link_apps.android.push(trailmark_server::domain::wellknown::AndroidApp {
                package: package.trim().to_owned(),
                fingerprints: fingerprints.split(',').map(|f| f.trim().to_owned()).collect(),
            });
        }
        deep_link_apps.check().map_err(|e| format!("--apple-app/--android-app: {e}"))?;
        let tls = match (self.tls_cert.clone().or(file.tls_cert), self.tls_key.clone().or(file.tls_key)) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        let log_format = self.log_format.clone().or(file.log_format).unwrap_or_else(|| "text".into());
        if log_format != "text" && log_format != "json" {
            return Err(format!("--log-format {log_format:?}: expected text or json"));
        }
        let durability = match self.sync.clone().or(file.sync).as_deref() {
            None | Some("full") => trailmark_server::Durability::Full,
            Some("normal") => trailmark_server::Durability::Normal,
            Some(other) => return Err(format!("--sync {other:?}: expected full or normal")),
        };
        let mut postbacks = file.postbacks.unwrap_or_default();
        for spec in &self.postbacks {
            let (network, url) =
                spec.split_once('=').ok_or_else(|| format!("--postback {spec:?}: expected NETWORK=URL"))?;
            postbacks.push(PostbackFile { network: network.to_owned(), url: url.to_owned(), events: Vec::new() });
        }
        let db = self.db.clone().or(file.db).unwrap_or_else(|| "trailmark.db".into());
        let postgres_pool = self.postgres_pool.or(file.postgres_pool).unwrap_or(16);
        if postgres_pool == 0 {
            return Err("--postgres-pool must be at least 1".into());
        }
        let postback_delivery = self.postback_delivery.or(&PostbackDelivery {
            postback_timeout_secs: file.postback_timeout_secs,
            postback_concurrency: file.postback_concurrency,
            postback_queue: file.postback_queue,
        });
        let admin_key = self.admin_key.clone().or(file.admin_key);
        if let Some(key) = &admin_key
            && key.chars().count() < trailmark_server::domain::config::MIN_ADMIN_KEY_LEN
        {
            return Err(format!(
                "--admin-key: at least {} characters (e.g. `openssl rand -hex 16`)",
                trailmark_server::domain::config::MIN_ADMIN_KEY_LEN
            ));
        }
        Ok(Settings {
            postback_delivery,
            networks,
            proxy_hops,
            conn,
            body_timeout,
            max_revenue: file.max_revenue,
            clickhouse: file.clickhouse.unwrap_or_default().resolve(self.clickhouse.clone())?,
            kafka: self.kafka.clone().or(file.kafka),
            kafka_topic_prefix: self
                .kafka_topic_prefix
                .clone()
                .or(file.kafka_topic_prefix)
                .unwrap_or_else(|| "trailmark".into()),
            kafka_properties: file.kafka_properties.unwrap_or_default().into_iter().collect(),
            stream_deletion_ids: match self.stream_deletion_ids.clone().or(file.stream_deletion_ids) {
                None => Default::default(),
                Some(v) => trailmark_server::domain::config::StreamIds::parse(&v)
                    .ok_or_else(|| format!("--stream-deletion-ids: {v:?} is not clear or hashed"))?,
            },
            stream_consent: match self.stream_consent.clone().or(file.stream_consent) {
                None => Default::default(),
                Some(v) => trailmark_server::domain::config::StreamConsent::parse(&v)
                    .ok_or_else(|| format!("--stream-consent: {v:?} is not strict or tagged"))?,
            },
            otlp_endpoint: self.otlp_endpoint.clone().or(file.otlp_endpoint),
            keys: match self.keys.clone().or(file.keys) {
                Some(k) => k,
                // Instances that share a store must share keys: a default per working
                // directory would silently give each its own.
                None if self.postgres.is_some()
                    || file.postgres.is_some()
                    || self.redis.is_some()
                    || file.redis.is_some() =>
                {
                    return Err(
                        "--keys FILE is required with --postgres or --redis (every instance uses the same file)".into(),
                    );
                }
                None => format!("{}.keys", db.display()).into(),
            },
            postgres: self.postgres.clone().or(file.postgres),
            postgres_pool,
            postgres_schema: self.postgres_schema.clone().or(file.postgres_schema),
            postgres_ca_file: self.postgres_ca_file.clone().or(file.postgres_ca_file),
            redis: self.redis.clone().or(file.redis),
            redis_ca_file: self.redis_ca_file.clone().or(file.redis_ca_file),
            durability,
            public_url: self.public_url.clone().or(file.public_url),
            geoip_anonymous: self.geoip_anonymous.clone().or(file.geoip_anonymous),
            postbacks,
            attribution: file.attribution.unwrap_or_default(),
            reports: file.reports.unwrap_or_default(),
            listen: self.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:8080".parse().expect("valid")),
            db,
            apps,
            cors_origins,
            write_keys,
            deep_link_apps,
            admin_key,
            geoip_city: self.geoip_city.clone().or(file.geoip_city),
            geoip_asn: self.geoip_asn.clone().or(file.geoip_asn),
            trust_proxy: self.trust_proxy || file.trust_proxy.unwrap_or(false),
            tls,
            json_logs: log_format == "json",
            ip_rate: self.ip_rate.or(file.ip_rate).unwrap_or(100),
            app_rate: self.app_rate.or(file.app_rate).unwrap_or(5_000),
            write_key_rate: self.write_key_rate.or(file.write_key_rate).unwrap_or(1_000),
        })
    }
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("db", &self.db)
            .field("apps", &self.apps)
            .field("networks", &self.networks.iter().map(|(name, _)| name).collect::<Vec<_>>())
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

/// The keys for IP encryption and the audit hashes live in a key file (by default next to the
/// database, `<db>.keys`, mode 0600), created on first start, so stored IPs stay readable across
/// restarts. `db` is the SQLite file whose existence means keys should exist already.
///
/// A key file that others may read (any group or other permission bit) is refused: the keys
/// protect every stored IP and audit hash. A new file is written whole under a private
/// temporary name and linked into place only if no file is there yet (create-exclusive), then
/// read back: instances that start at once on a shared file all end up with the first one's
/// keys, and a crash never leaves half a key.
pub fn load_or_create_keys(path: &Path, db: Option<&Path>) -> Result<([u8; 32], [u8; 32]), String> {
    load_or_create_key_file(path, db).map(|k| (k.ip, k.audit))
}

/// What a key file holds: the first line, 64 hex-encoded bytes (the IP key, then the audit
/// key); then optionally `id <version> <64 hex digits>` lines, the identifier-encryption keys
/// added by [`rotate_id_key`] (version 1 is derived from the IP key and needs no line).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub ip: [u8; 32],
    pub audit: [u8; 32],
    pub id: Vec<trailmark_server::domain::identifiers::IdKey>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyFile").field("id", &self.id).finish_non_exhaustive()
    }
}

/// [`load_or_create_keys`], with the identifier keys.
pub fn load_or_create_key_file(path: &Path, db: Option<&Path>) -> Result<KeyFile, String> {
    match read_keys(path) {
        Ok(keys) => return Ok(keys),
        Err(KeyFileError::Missing) => {}
        Err(KeyFileError::Refused(message)) => return Err(message),
    }
    if db.is_some_and(Path::exists) {
        tracing::warn!(keys = %path.display(), "key file missing for an existing database: new keys are made; IPs and audit hashes stored before cannot be read or matched");
    }
    let mut bytes = [0u8; 64];
    getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
    let tmp = PathBuf::from(format!("{}.{}.tmp", path.display(), hex::encode(nonce)));
    write_private(&tmp, hex::encode(bytes).as_bytes()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    // A hard link fails when the name exists: only one instance's keys take the name.
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            // The new name is durable before the keys are used.
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    match read_keys(path) {
        Ok(keys) => Ok(keys),
        Err(KeyFileError::Missing) => Err(format!("{}: vanished right after it was created", path.display())),
        Err(KeyFileError::Refused(message)) => Err(message),
    }
}

/// Adds a new identifier-encryption key to the key file (`id <next version> <hex>`), written
/// whole to a private temporary file and renamed over the old one. Returns the new version.
/// Every instance must be restarted with the new file; each then seals new rows under the new
/// key and the identifier pass seals the stored ones again in the background.
pub fn rotate_id_key(path: &Path) -> Result<u8, String> {
    let keys = match read_keys(path) {
        Ok(keys) => keys,
        Err(KeyFileError::Missing) => return Err(format!("{}: no key file to rotate", path.display())),
        Err(KeyFileError::Refused(message)) => return Err(message),
    };
    let version = keys.id.iter().map(|k| k.version).max().unwrap_or(1).checked_add(1).ok_or("255 key versions used")?;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).map_err(|e| e.to_string())?;
    let mut text = format!("{}{}\n", hex::encode(keys.ip), hex::encode(keys.audit));
    for k in &keys.id {
        text.push_str(&format!("id {} {}\n", k.version, hex::encode(k.key)));
    }
    text.push_str(&format!("id {version} {}\n", hex::encode(key)));
    let mut nonce = [0u8; 8];
    getrandom::fill(&mut nonce).map_err(|e| e.to_string())?;
    let tmp = PathBuf::from(format!("{}.{}.tmp", path.display(), hex::encode(nonce)));
    write_private(&tmp, text.as_bytes()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("{}: {e}", path.display())
    })?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(version)
}

enum KeyFileError {
    Missing,
    Refused(String),
}

fn read_keys(path: &Path) -> Result<KeyFile, KeyFileError> {
    let refused = |why: String| KeyFileError::Refused(format!("{}: {why}", path.display()));
    // The mode is checked on the file that is then read (not on the path again).
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(KeyFileError::Missing),
        Err(e) => return Err(refused(e.to_string())),
    };
    let meta = file.metadata().map_err(|e| refused(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(refused(format!(
                "the key file is readable or writable by others (mode {mode:o}); it holds the keys \
                 that protect stored IPs and audit hashes: `chmod 600` it, then start again"
            )));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut file, &mut text).map_err(|e| refused(e.to_string()))?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    let bytes = hex::decode(first).map_err(|_| refused("not 64 hex-encoded bytes".into()))?;
    let (ip, audit) = match bytes.split_at_checked(32) {
        Some((a, b)) if b.len() == 32 => (a.try_into().expect("32 bytes"), b.try_into().expect("32 bytes")),
        _ => return Err(refused("not 64 hex-encoded bytes".into())),
    };
    let mut id = Vec::new();
    for line in lines {
        let bad = || refused(format!("{line:?} is not `id <version 1-255> <64 hex digits>`"));
        let mut parts = line.split_ascii_whitespace();
        let (Some("id"), Some(version), Some(key), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let version: u8 = version.parse().ok().filter(|v| *v >= 1).ok_or_else(bad)?;
        let key: [u8; 32] = hex::decode(key).ok().and_then(|k| k.try_into().ok()).ok_or_else(bad)?;
        if id.iter().any(|k: &trailmark_server::domain::identifiers::IdKey| k.version == version) {
            return Err(refused(format!("identifier key version {version} is listed twice")));
        }
        id.push(trailmark_server::domain::identifiers::IdKey { version, key });
    }
    Ok(KeyFile { ip, audit, id })
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] sends what is buffered.
#[derive(Default)]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.provider {
            let _ = p.shutdown();
        }
    }
}

/// Logs to stderr (text or JSON lines) filtered by `RUST_LOG` (default `info`); with
/// `otlp_endpoint`, spans are also exported to that OpenTelemetry collector.
pub fn init_logging(json: bool, otlp_endpoint: Option<&str>) -> Result<Telemetry, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = if json {
        tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed()
    };
    let registry = tracing_subscriber::registry().with(fmt.with_filter(filter));
    let Some(endpoint) = otlp_endpoint else {
        let _ = registry.try_init();
        return Ok(Telemetry::default());
    };
    #[cfg(feature = "otel")]
    {
        let (layer, provider) = otel_layer(endpoint)?;
        let _ = registry.with(layer).try_init();
        Ok(Telemetry { provider: Some(provider) })
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (registry, endpoint);
        Err("--otlp-endpoint: this build has no OpenTelemetry support (build with the otel feature)".into())
    }
}

/// Spans of the `trailmark_server` crate (requests and store writes, whatever the log level),
/// exported in batches to `<endpoint>/v1/traces` as OTLP/HTTP JSON.
#[cfg(feature = "otel")]
fn otel_layer<S>(
    endpoint: &str,
) -> Result<(impl tracing_subscriber::Layer<S>, opentelemetry_sdk::trace::SdkTracerProvider), String>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use tracing_subscriber::Layer;
    let url = match endpoint.trim_end_matches('/') {
        e if e.ends_with("/v1/traces") => e.to_owned(),
        e => format!("{e}/v1/traces"),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(url)
        .build()
        .map_err(|e| format!("--otlp-endpoint: {e}"))?;
    let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_scheduled_delay(std::time::Duration::from_secs(1))
                .build(),
        )
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_span_processor(batch)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("trailmark-server").build())
        .build();
    let layer = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("trailmark"))
        .with_filter(tracing_subscriber::filter::Targets::new().with_target("trailmark_server", tracing::Level::INFO));
    Ok((layer, provider))
}

/// The server's configuration from settings.
pub fn server_config(settings: &Settings) -> Result<ServerConfig, String> {
    let db = settings.postgres.is_none().then_some(settings.db.as_path());
    let keys = load_or_create_key_file(&settings.keys, db)?;
    let mut config = ServerConfig::new();
    let (ip_key, audit_key) = (keys.ip, keys.audit);
    config.id_keys = keys.id;
    for app in &settings.apps {
        config = config.with_app_kind(app.id.clone(), app.secret.clone(), app.kind);
        if let Some(a) = config.apps.get_mut(&app.id) {
            a.client_revenue_postbacks = app.client_revenue_postbacks;
            a.server_secret = app.server_secret.clone();
        }
    }
    for (name, secret) in &settings.networks {
        config = config.with_network(name.clone(), secret.clone());
    }
    config.proxy_hops = settings.proxy_hops;
    config.stream.deletion_ids = settings.stream_deletion_ids;
    config.stream.consent = settings.stream_consent;
    config.limits.body_timeout_ms = settings.body_timeout.as_millis() as u64;
    if let Some(max) = settings.max_revenue {
        config.limits.max_revenue = max;
    }
    for (app, origin) in &settings.cors_origins {
        let ids: Vec<String> = match app {
            Some(app) => vec![app.clone()],
            None => settings.apps.iter().map(|a| a.id.clone()).collect(),
        };
        for id in ids {
            config = config.with_cors_origin(&id, origin)?;
        }
    }
    for (app, key, revoked) in &settings.write_keys {
        if let Some(a) = config.apps.get_mut(app) {
            a.write_keys.push(trailmark_server::domain::config::WriteKey { key: key.clone(), revoked: *revoked });
        }
    }
    config.admin_key = settings.admin_key.clone();
    config.deep_link_apps = settings.deep_link_apps.clone();
    config.ip_key = ip_key;
    config.audit_key = audit_key;
    config.geoip_city = settings.geoip_city.clone();
    config.geoip_asn = settings.geoip_asn.clone();
    config.trust_proxy = settings.trust_proxy;
    config.limits.ip_rate_per_sec = settings.ip_rate;
    config.limits.ip_burst = settings.ip_rate.saturating_mul(2);
    config.limits.app_rate_per_sec = settings.app_rate;
    config.limits.app_burst = settings.app_rate.saturating_mul(2);
    config.limits.write_key_rate_per_sec = settings.write_key_rate;
    config.limits.write_key_burst = settings.write_key_rate.saturating_mul(2);
    config.public_url = settings.public_url.clone();
    config.geoip_anonymous = settings.geoip_anonymous.clone();
    config.postbacks = settings
        .postbacks
        .iter()
        .map(|p| trailmark_server::domain::postbacks::PostbackConfig {
            network: p.network.clone(),
            url: p.url.clone(),
            events: p.events.clone(),
        })
        .collect();
    settings.postback_delivery.apply(&mut config.postback_policy)?;
    settings.attribution.apply(&mut config.attribution);
    settings.reports.apply(&mut config.reports);
    config.clickhouse = settings.clickhouse.clone();
    if config.reports.session_gap <= 0 || config.reports.refresh_interval <= 0 || config.reports.purge_interval <= 0 {
        return Err("[reports] intervals and the session gap must be positive".into());
    }
    config.check_credentials()?;
    Ok(config)
}

#[cfg(feature = "kafka")]
async fn with_kafka(builder: ServerBuilder, brokers: &str, settings: &Settings) -> Result<ServerBuilder, String> {
    use trailmark_server::sink::kafka::{KafkaConfig, KafkaSink};
    let mut config = KafkaConfig::new(brokers);
    config.topic_prefix = settings.kafka_topic_prefix.clone();
    config.properties = settings.kafka_properties.clone();
    let sink = KafkaSink::connect(config).await.map_err(|e| e.to_string())?;
    Ok(builder.event_sink(std::sync::Arc::new(sink)))
}

#[cfg(not(feature = "kafka"))]
async fn with_kafka(_: ServerBuilder, _: &str, _: &Settings) -> Result<ServerBuilder, String> {
    Err("--kafka: this build has no Kafka support (build with the kafka feature)".into())
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub https: bool,
    pub handle: axum_server::Handle,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// The server's shared state (for benchmarks and tools in the same process).
    pub state: std::sync::Arc<trailmark_server::AppState>,
    /// The background tasks (postback sender, report scheduler, link reloader); shut down
    /// after the listener stops.
    pub background: trailmark_server::ServerHandle,
}

/// Builds the router and serves it on `settings.listen` (HTTPS when TLS files are set).
pub async fn start(settings: &Settings) -> Result<Running, String> {
    if settings.apps.is_empty() {
        return Err("no app configured: pass --app ID:SECRET".into());
    }
    let config = server_config(settings)?;
    let secret = config.audit_key;
    let ttl = config.attribution.index_ttl();
    let mut builder = ServerBuilder::new(config);
    builder = match &settings.postgres {
        Some(url) => {
            let store = trailmark_server::storage::postgres::PostgresStorage::connect_with(
                url,
                settings.postgres_pool,
                settings.postgres_schema.as_deref(),
                settings.postgres_ca_file.as_deref(),
            )
            .await
            .map_err(|e| format!("PostgreSQL: {e}"))?;
            builder.storage(std::sync::Arc::new(store))
        }
        None => builder.sqlite_with(&settings.db, settings.durability).map_err(|e| e.to_string())?,
    };
    if let Some(url) = &settings.redis {
        let ca = settings.redis_ca_file.as_deref();
        let cache = trailmark_server::clickcache::redis::RedisClickCache::connect_with(url, &secret, ttl, "tm:", ca)
            .await
            .map_err(|e| format!("Redis: {e}"))?;
        builder = builder.click_cache(std::sync::Arc::new(cache));
    }
    if let Some(brokers) = &settings.kafka {
        builder = with_kafka(builder, brokers, settings).await?;
    }
    let state = builder.build_state().map_err(|e| e.to_string())?;
    // Links and recent clicks are loaded before the server listens.
    state.tracking.ready(&state).await.map_err(|e| e.to_string())?;
    let background = trailmark_server::start_tasks(&state).map_err(|e| e.to_string())?;
    let app = trailmark_server::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let listener = std::net::TcpListener::bind(settings.listen).map_err(|e| format!("{}: {e}", settings.listen))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let handle = axum_server::Handle::new();
    let guard = conn::Guard::new(settings.conn);
    let task = match &settings.tls {
        Some((cert, key)) => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| format!("TLS certificate or key: {e}"))?;
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls).acceptor(guard);
            let server = axum_server::from_tcp(listener).acceptor(acceptor).handle(handle.clone());
            tokio::spawn(async move { server.serve(app).await })
        }
        None => {
            let server = axum_server::from_tcp(listener).acceptor(guard).handle(handle.clone());
            tokio::spawn(async move { server.serve(app).await })
        }
    };
    Ok(Running { addr, https: settings.tls.is_some(), handle, task, state, background })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_specs_read_a_kind_only_when_the_last_part_names_one() {
        let a = AppSetting::parse("shop:s3cret").unwrap();
        assert_eq!((a.id.as_str(), a.secret.as_str(), a.kind), ("shop", "s3cret", AppKind::Mobile));
        let a = AppSetting::parse("site:pub:lic:web").unwrap();
        assert_eq!((a.secret.as_str(), a.kind), ("pub:lic", AppKind::Web));
        let a = AppSetting::parse("api:s3cret:server").unwrap();
        assert_eq!((a.secret.as_str(), a.kind), ("s3cret", AppKind::Server));
        // A secret with a colon (older configurations) stays whole.
        let a = AppSetting::parse("old:abc:def").unwrap();
        assert_eq!((a.secret.as_str(), a.kind), ("abc:def", AppKind::Mobile));
        let e = AppSetting::parse("nocolon").unwrap_err();
        assert!(e.contains("ID:SECRET"));
        assert!(AppSetting::parse("x::web").is_err(), "an empty secret");
        let e = AppSetting::parse(":topsecret").unwrap_err();
        assert!(!e.contains("topsecret"), "no secret in messages: {e}");
    }

    #[test]
    fn write_keys_come_from_the_command_line_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "apps = [\"shop:s3cret\"]\nwrite_keys = [\"shop=wk_file\"]\nrevoked_write_keys = [\"shop=wk_old\"]\n",
        )
        .unwrap();
        let args = ServerArgs::parse_from([
            "trailmark-server",
            "--config",
            file.to_str().unwrap(),
            "--write-key",
            "shop=wk_cli",
        ]);
        let settings = args.settings().unwrap();
        let mut keys = settings.write_keys.clone();
        keys.sort();
        assert_eq!(
            keys,
            [
                ("shop".to_owned(), "wk_cli".to_owned(), false),
                ("shop".to_owned(), "wk_file".to_owned(), false),
                ("shop".to_owned(), "wk_old".to_owned(), true)
            ]
        );
        for (spec, part) in [("nokey", "APP_ID=KEY"), ("shop=", "APP_ID=KEY"), ("blog=wk_x", "no app \"blog\"")] {
            let args = ServerArgs::parse_from(["trailmark-server", "--app", "shop:s", "--write-key", spec]);
            let e = args.settings().expect_err("refused");
            assert!(e.contains(part), "{spec}: {e}");
            assert!(!e.contains("wk_x"), "no key in messages: {e}");
        }
    }

    #[test]
    fn clickhouse_comes_from_the_command_line_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.toml");
        std::fs::write(
            &file,
            "apps = [\"shop:s3cret\"]\n[clickhouse]\nurl = \"http://olap:8123\"\ndatabase = \"reports\"\n\
             user = \"reporter\"\npassword = \"pw-secret\"\nbatch_size = 5000\ninterval_secs = 0.5\n",
        )
        .unwrap();
        let args = ServerArgs::parse_from(["trailmark-server", "--config", file.to_str().unwrap()]);
        let c = args.settings().unwrap().clickhouse.expect("from the file");
        assert_eq!(
            (c.url.as_str(), c.database.as_str(), c.batch_size, c.interval),
            ("http://olap:8123", "reports", 5000, 500)
        );
        assert_eq!((c.user.as_deref(), c.password.as_deref()), (Some("reporter"), Some("pw-secret")));
        assert!(!format!("{c:?}").contains("pw-secret"), "no password in Debug");
        let args = ServerArgs::parse_from([
            "trailmark-server",
            "--config",
            file.to_str().unwrap(),
            "--clickhouse",
            "http://u:url-secret@other:8123",
        ]);
        let c = args.settings().unwrap().clickhouse.unwrap();
        assert_eq!((c.url.as_str(), c.database.as_str()), ("http://u:url-secret@other:8123", "reports"));
        assert!(!format!("{c:?}").contains("url-secret"), "no password in Debug");
        let none = ServerArgs::parse_from(["trailmark-server", "--app", "shop:s"]);
        assert!(none.settings().unwrap().clickhouse.is_none(), "reports stay in the primary store");
        for (toml, part) in [
            ("[clickhouse]\ndatabase = \"x\"\n", "needs a url"),
            ("[clickhouse]\nurl = \"http://h:1\"\nbatch_size = 0\n", "batch_size"),
            ("[clickhouse]\nurl = \"http://h:1\"\ninterval_secs = 0\n", "interval_secs"),
        ] {
            std::fs::write(&file, format!("apps = [\"shop:s3cret\"]\n{toml}")).unwrap();
            let args = ServerArgs::parse_from(["trailmark-server", "--config", file.to_str().unwrap()]);
            let e = args.settings().expect_err("refused");
            assert!(e.contains(part), "{toml}: {e}");
        }
    }
}
