//! `trailmark-server`: the embeddable Trailmark ingestion server.
//!
//! [`ServerBuilder`] turns a [`ServerConfig`] and a [`Storage`] into an axum [`Router`] that a
//! host service mounts:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use trailmark_server::{ServerBuilder, ServerConfig};
//! let config = ServerConfig::new().with_app("com.example.shop", "app-secret");
//! let router = ServerBuilder::new(config).sqlite("trailmark.db")?.build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await?;
//! # Ok(()) }
//! ```
//!
//! Endpoints: `POST /v1/event` and `POST /v1/install` (signed), tracking links `GET /c/{code}`,
//! clicks `GET|POST /v1/click`, `GET /v1/impression`, the campaign manager (`POST /v1/campaigns`,
//! `POST /v1/links`, `GET|PATCH /v1/links/{id}`, `GET /v1/links/{id}/audit`,
//! `GET /v1/attribution/{event_id}`; admin), `POST /v1/user/delete` (admin), the event
//! inspector `GET /v1/events?anonymous_id=…` (admin), `GET /healthz`,
//! `GET /metrics` (Prometheus). Attribution is explained in `docs/attribution.md`.

pub mod clickcache;
pub mod conversions;
mod cors;
pub mod dashboard;
pub mod domain;
pub mod error;
pub mod ingest;
pub mod inspect;
pub mod install;
pub mod links;
pub mod postbacks;
pub mod reports;
pub mod sink;
pub mod storage;
pub mod trace;
pub mod tracking;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, Mac};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use sha2::Sha256;
use thiserror::Error;

pub use domain::attribution::{AttributionConfig, FraudConfig, FraudPolicy};
pub use domain::config::{
    AppConfig, Clock, JwtAlgorithm, JwtConfig, Limits, ManualClock, ReportConfig, ServerConfig, now_ms,
};
pub use error::ApiError;
pub use storage::{Durability, SqliteStorage, Storage, StorageError};

use crate::domain::enrich::{GeoIp, IpCipher};
use crate::domain::validate::Validators;
use crate::storage::{DeletionAudit, Subject};

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("no storage: call .sqlite(path) or .storage(...)")]
    NoStorage,
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("invalid schema: {0}")]
    Schema(String),
    #[error("GeoIP database: {0}")]
    GeoIp(String),
    #[error("JWT key: {0}")]
    Jwt(String),
    #[error("invalid limit: {0}")]
    Limit(&'static str),
    #[error("invalid attribution settings: {0}")]
    Attribution(String),
}

/// Shared state of a built server.
pub struct AppState {
    pub config: ServerConfig,
    pub storage: Arc<dyn Storage>,
    validators: Validators,
    geo: GeoIp,
    ip_cipher: IpCipher,
    app_limiter: DefaultKeyedRateLimiter<String>,
    ip_limiter: DefaultKeyedRateLimiter<IpAddr>,
    jwt: Option<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation)>,
    metrics: PrometheusHandle,
    /// The limiters' clock, built once (building one per request costs CPU-feature probing).
    clock: governor::clock::DefaultClock,
    checks: std::sync::atomic::AtomicU64,
    /// Links, the touch index and the fraud counters (loaded from storage on first use).
    pub tracking: tracking::Tracking,
    /// The postback sender task, started with the attribution state.
    pub postback_sender: OnceLock<postbacks::Sender>,
    /// Star schema refresh, rollups and retention (`reports`).
    pub maintenance: Arc<reports::Maintenance>,
    /// Live counters and login sessions of `/dashboard`.
    pub dashboard: dashboard::Dashboard,
    /// Recent touches shared by every instance (Redis); none: the in-process index alone.
    pub click_cache: Option<Arc<dyn clickcache::ClickCache>>,
    /// Where accepted events, installs and deletions are published (Kafka); none: nowhere.
    pub event_sink: Option<Arc<dyn sink::EventSink>>,
}

/// Limiter keys are pruned every this many checks, so rotating addresses cannot grow memory.
const PRUNE_EVERY: u64 = 10_000;

impl AppState {
    fn wait_secs(&self, not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
        use governor::clock::Clock;
        not_until.wait_time_from(self.clock.now()).as_secs_f64().ceil() as u64
    }

    fn prune_limiters(&self) {
        if self.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.ip_limiter.retain_recent();
            self.ip_limiter.shrink_to_fit();
            self.app_limiter.retain_recent();
            self.app_limiter.shrink_to_fit();
        }
    }

    /// Per client address; runs before the signature check, so unsigned floods are cut early.
    fn check_ip_rate(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        self.prune_limiters();
        if let Some(ip) = ip
            && let Err(n) = self.ip_limiter.check_key(&ip)
        {
            metrics::counter!("trailmark_rate_limited_total", "scope" => "ip").increment(1);
            return Err(ApiError::rate_limited(self.wait_secs(n), "too many requests from this address"));
        }
        Ok(())
    }

    /// Per app; runs after the signature check, so nobody can spend an app's quota without its
    /// secret.
    fn check_app_rate(&self, app: &str) -> Result<(), ApiError> {
        if let Err(n) = self.app_limiter.check_key(&app.to_owned()) {
            metrics::counter!("trailmark_rate_limited_total", "scope" => "app").increment(1);
            return Err(ApiError::rate_limited(self.wait_secs(n), "too many requests for this app"));
        }
        Ok(())
    }
}

/// The process-wide Prometheus recorder. The first server built installs it; when the host
/// already installed another recorder, our metrics go to that one and `/metrics` stays empty.
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
                .expect("static buckets are valid");
            match builder.install_recorder() {
                Ok(handle) => handle,
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Builds the server's [`Router`].
pub struct ServerBuilder {
    config: ServerConfig,
    storage: Option<Arc<dyn Storage>>,
    click_cache: Option<Arc<dyn clickcache::ClickCache>>,
    event_sink: Option<Arc<dyn sink::EventSink>>,
}

impl ServerBuilder {
    pub fn new(config: ServerConfig) -> Self {
        ServerBuilder { config, storage: None, click_cache: None, event_sink: None }
    }

    /// Publishes accepted events, attribution decisions and deletion requests to `sink` (for
    /// example [`sink::kafka::KafkaSink`]).
    pub fn event_sink(mut self, sink: Arc<dyn sink::EventSink>) -> Self {
        self.event_sink = Some(sink);
        self
    }

    /// Shares recent clicks with other instances through `cache` (for example
    /// [`clickcache::redis::RedisClickCache`]); installs are matched against it.
    pub fn click_cache(mut self, cache: Arc<dyn clickcache::ClickCache>) -> Self {
        self.click_cache = Some(cache);
        self
    }

    /// Uses the embedded SQLite store at `path` (created if missing), fsync on every commit.
    pub fn sqlite(self, path: impl AsRef<Path>) -> Result<Self, BuildError> {
        self.sqlite_with(path, Durability::Full)
    }

    pub fn sqlite_with(mut self, path: impl AsRef<Path>, durability: Durability) -> Result<Self, BuildError> {
        let limits = &self.config.limits;
        let store = SqliteStorage::open(path, durability, limits.writer_queue, limits.max_commit_events)?;
        self.storage = Some(Arc::new(store));
        Ok(self)
    }

    /// Uses another [`Storage`] implementation.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The shared state, for hosts that compose their own routes.
    pub fn build_state(self) -> Result<Arc<AppState>, BuildError> {
        let storage = self.storage.ok_or(BuildError::NoStorage)?;
        let config = self.config;
        let l = &config.limits;
        let quota = |rate: u32, burst: u32, name| {
            let rate = NonZeroU32::new(rate).ok_or(BuildError::Limit(name))?;
            let burst = NonZeroU32::new(burst).ok_or(BuildError::Limit(name))?;
            Ok::<_, BuildError>(Quota::per_second(rate).allow_burst(burst))
        };
        let app_limiter = RateLimiter::keyed(quota(l.app_rate_per_sec, l.app_burst, "app rate")?);
        let ip_limiter = RateLimiter::keyed(quota(l.ip_rate_per_sec, l.ip_burst, "ip rate")?);
        let validators = Validators::new(&config.apps).map_err(BuildError::Schema)?;
        let geo = GeoIp::open(config.geoip_city.as_deref(), config.geoip_asn.as_deref())
            .and_then(|g| g.with_anonymous(config.geoip_anonymous.as_deref()))
            .map_err(BuildError::GeoIp)?;
        config.attribution.validate().map_err(BuildError::Attribution)?;
        for p in &config.postbacks {
            postbacks::check_template(&p.url).map_err(BuildError::Attribution)?;
        }
        let jwt = config.jwt.as_ref().map(jwt_verifier).transpose()?;
        let maintenance = Arc::new(reports::Maintenance::new(
            storage.clone(),
            config.reports.clone(),
            config.clock.clone(),
            config.attribution.index_ttl(),
        ));
        Ok(Arc::new(AppState {
            maintenance,
            dashboard: Default::default(),
            ip_cipher: IpCipher::new(&config.ip_key),
            config,
            storage,
            validators,
            geo,
            app_limiter,
            ip_limiter,
            jwt,
            metrics: prometheus(),
            clock: governor::clock::DefaultClock::default(),
            checks: std::sync::atomic::AtomicU64::new(0),
            tracking: Default::default(),
            postback_sender: OnceLock::new(),
            click_cache: self.click_cache,
            event_sink: self.event_sink,
        }))
    }

    pub fn build(self) -> Result<Router, BuildError> {
        Ok(router(self.build_state()?))
    }
}

/// The routes over a built state.
pub fn router(state: Arc<AppState>) -> Router {
    state.maintenance.ensure_started();
    Router::new()
        .route("/v1/event", post(ingest::handle))
        .route("/v1/user/delete", post(delete_user))
        .route("/v1/events", get(inspect::events))
        .route("/v1/install", post(install::handle))
        .route("/v1/attribution/{event_id}", get(install::audit))
        .route("/v1/campaigns", post(links::create_campaign))
        .route("/v1/campaigns/{campaign_id}/cost", post(reports::cost_handler))
        .route("/v1/reports/funnel", get(reports::funnel_handler))
        .route("/v1/reports/retention", get(reports::retention_handler))
        .route("/v1/reports/campaigns", get(reports::campaigns_handler))
        .route("/v1/reports/paths", get(reports::paths_handler))
        .route("/v1/links", post(links::create_link))
        .route("/v1/links/{link_id}", get(links::get_link).merge(patch(links::update_link)))
        .route("/v1/links/{link_id}/audit", get(links::link_audit))
        .route("/c/{code}", get(links::click_by_code))
        .route("/v1/click", get(links::click_by_link).merge(post(links::s2s_click)))
        .route("/v1/impression", get(links::impression))
        .route("/dashboard", get(dashboard::index))
        .route("/dashboard/login", get(dashboard::login_page).merge(post(dashboard::login)))
        .route("/dashboard/logout", post(dashboard::logout))
        .route("/dashboard/live", get(dashboard::live))
        .route("/dashboard/campaigns", post(dashboard::create_campaign))
        .route("/dashboard/links", post(dashboard::create_link))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/style.css", get(dashboard::style))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are read with our own limit so the 413 has the protocol's error shape.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors::layer))
        .with_state(state)
}

fn jwt_verifier(c: &JwtConfig) -> Result<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation), BuildError> {
    let (key, alg) = match c.algorithm {
        JwtAlgorithm::Hs256 => {
            (jsonwebtoken::DecodingKey::from_secret(c.key.as_bytes()), jsonwebtoken::Algorithm::HS256)
        }
        JwtAlgorithm::Rs256 => (
            jsonwebtoken::DecodingKey::from_rsa_pem(c.key.as_bytes()).map_err(|e| BuildError::Jwt(e.to_string()))?,
            jsonwebtoken::Algorithm::RS256,
        ),
    };
    let mut validation = jsonwebtoken::Validation::new(alg);
    match &c.audience {
        Some(aud) => validation.set_audience(&[aud]),
        None => validation.validate_aud = false,
    }
    if let Some(iss) = &c.issuer {
        validation.set_issuer(&[iss]);
    }
    Ok((key, validation))
}

type HmacSha256 = Hmac<Sha256>;

fn keyed_hash(key: &[u8; 32], text: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(text.as_bytes());
    mac
}

/// Checks `Authorization: Bearer …` against the admin key (constant time) or the JWT
/// configuration; returns who is calling, for the audit log.
pub fn admin_auth(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::unauthorized("missing_credentials", "admin endpoints need Authorization: Bearer <token>")
        })?;
    check_admin_token(state, token)
}

/// Checks an admin key or JWT (constant time for the key); returns who it is, for audit logs.
pub fn check_admin_token(state: &AppState, token: &str) -> Result<String, ApiError> {
    verify_admin_token(state, token).map(|(actor, _)| actor)
}

/// [`check_admin_token`], with the JWT's expiry (Unix seconds) when the token is a JWT that has
/// one, so a session opened with it can end when the token does.
pub fn verify_admin_token(state: &AppState, token: &str) -> Result<(String, Option<i64>), ApiError> {
    if let Some(key) = &state.config.admin_key {
        let expected = keyed_hash(&state.config.audit_key, key).finalize().into_bytes();
        if keyed_hash(&state.config.audit_key, token).verify_slice(&expected).is_ok() {
            return Ok(("admin-key".into(), None));
        }
    }
    if let Some((key, validation)) = &state.jwt {
        #[derive(serde::Deserialize)]
        struct Claims {
            sub: Option<String>,
            exp: Option<i64>,
        }
        return match jsonwebtoken::decode::<Claims>(token, key, validation) {
            Ok(data) => Ok((format!("jwt:{}", data.claims.sub.unwrap_or_default()), data.claims.exp)),
            Err(e) => Err(ApiError::unauthorized("invalid_token", format!("bearer token refused: {e}"))),
        };
    }
    Err(ApiError::unauthorized("invalid_credentials", "bearer token refused"))
}

/// Largest body of an admin request.
const MAX_ADMIN_BODY: usize = 4096;

async fn delete_user(State(state): State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    let result = async {
        let (parts, body) = request.into_parts();
        let requested_by = admin_auth(&state, &parts.headers)?;
        let body = ingest::read_body(body, MAX_ADMIN_BODY).await?;
        let value = ingest::parse_json(&body, 4)?;
        let Value::Object(map) = value else {
            return Err(ApiError::bad_request("invalid_body", "expected a JSON object"));
        };
        let mut subjects = Vec::new();
        for (key, value) in &map {
            let Value::String(id) = value else {
                return Err(ApiError::bad_request("invalid_body", format!("{key} must be a string")));
            };
            // As permissive as ingest (any non-empty id of at most 256 characters), so every
            // stored subject can be deleted.
            if id.is_empty() || id.chars().count() > 256 {
                return Err(ApiError::bad_request("invalid_body", format!("{key} must be 1 to 256 characters")));
            }
            subjects.push(match key.as_str() {
                "user_id" => Subject::UserId(id.clone()),
                "anonymous_id" => Subject::AnonymousId(id.clone()),
                "device_id" => Subject::DeviceId(id.clone()),
                other => return Err(ApiError::bad_request("invalid_body", format!("unknown field {other:?}"))),
            });
        }
        let [subject] = <[Subject; 1]>::try_from(subjects).map_err(|_| {
            ApiError::bad_request("invalid_body", "give exactly one of user_id, anonymous_id, device_id")
        })?;
        let receipt_id = uuid::Uuid::new_v4().to_string();
        let hash = keyed_hash(&state.config.audit_key, &format!("{}:{}", subject.kind(), subject.value())).finalize();
        let audit = DeletionAudit {
            receipt_id: receipt_id.clone(),
            subject_kind: subject.kind(),
            subject_hash: hex::encode(hash.into_bytes()),
            requested_at: state.config.clock.now(),
            requested_by,
        };
        let (subject_kind, subject_value) = (subject.kind(), subject.value().to_owned());
        let report = state.storage.delete_subject(subject, audit).await.map_err(|e| match e {
            StorageError::Busy => ApiError::unavailable(1, "the server is busy; retry shortly"),
            other => ApiError::internal(other),
        })?;
        let rows = report.rows;
        if !report.click_ids.is_empty()
            && let Some(mut tracking) = state.tracking.lock_loaded()
        {
            let ids: Vec<uuid::Uuid> = report.click_ids.iter().filter_map(|c| uuid::Uuid::parse_str(c).ok()).collect();
            tracking.index.forget(&ids);
        }
        let mut warnings = Vec::new();
        if let Some(cache) = &state.click_cache
            && !report.click_ids.is_empty()
            && let Err(e) = cache.forget(report.click_ids.clone()).await
        {
            // Storage is clean (a retry would find nothing to forget); the cached touches
            // expire with the attribution window.
            tracing::error!(error = %e, receipt = %receipt_id, "deleted touches stay in the click cache until they expire");
            warnings.push("the click cache could not be reached: its copies of the subject's clicks expire within the attribution window");
        }
        metrics::counter!("trailmark_user_deletions_total").increment(1);
        if let Some(sink) = &state.event_sink {
            let at = state.config.clock.now();
            sink.publish(vec![sink::deletion_record(&receipt_id, subject_kind, &subject_value, at)]);
        }
        let mut body = json!({"receipt_id": receipt_id, "rows_deleted": rows});
        if !warnings.is_empty() {
            body["warnings"] = json!(warnings);
        }
        Ok(body)
    }
    .await;
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", format!("no endpoint at {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({"status": "ok", "writer_backlog": state.storage.backlog()})).into_response()
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    metrics::gauge!("trailmark_writer_backlog").set(state.storage.backlog() as f64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}
