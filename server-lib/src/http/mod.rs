//! The HTTP layer: the axum [`Router`], its extractors, the one error type and its
//! `IntoResponse`, middleware (metrics on every route, CORS), and one file per route group. A
//! handler reads the request through extractors, calls the service layer, and answers; every
//! error reaches the client through [`ApiError`]'s `From` conversions.

pub mod admin;
mod cors;
pub mod dashboard;
pub mod error;
pub mod extract;
pub mod ingest;
pub mod install;
pub mod links;
pub mod metrics;
pub mod reports;
pub mod segment;
pub mod wellknown;

use std::ops::Deref;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, patch, post};
use hmac::Mac;
use metrics_exporter_prometheus::PrometheusHandle;

pub use error::ApiError;

use crate::domain::config::{JwtAlgorithm, JwtConfig};
use crate::domain::enrich::keyed_hash;
use crate::service::Services;

/// The state of the HTTP layer: the services, plus what only HTTP needs (admin token
/// verification, the Prometheus handle, dashboard sessions). It dereferences to [`Services`].
pub struct AppState {
    pub services: Arc<Services>,
    jwt: Option<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation)>,
    metrics: PrometheusHandle,
    /// Login sessions of `/dashboard`.
    pub(crate) dashboard: dashboard::Sessions,
    /// Write keys of the Segment-compatible API: key → (app, revoked).
    pub(crate) write_keys: std::collections::HashMap<String, (String, bool)>,
}

impl Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.services
    }
}

impl AppState {
    /// The HTTP state over `services`; fails on an unusable JWT key.
    pub fn new(services: Arc<Services>) -> Result<Self, String> {
        let jwt = services.config.jwt.as_ref().map(jwt_verifier).transpose()?;
        let write_keys = write_keys(&services.config)?;
        Ok(AppState { services, jwt, metrics: metrics::prometheus(), dashboard: Default::default(), write_keys })
    }

    /// Checks an admin key or JWT (constant time for the key); returns who it is, for audit logs.
    pub fn check_admin_token(&self, token: &str) -> Result<String, ApiError> {
        self.verify_admin_token(token).map(|(actor, _)| actor)
    }

    /// [`AppState::check_admin_token`], with the JWT's expiry (Unix seconds) when the token is
    /// a JWT that has one, so a session opened with it can end when the token does.
    pub fn verify_admin_token(&self, token: &str) -> Result<(String, Option<i64>), ApiError> {
        if let Some(key) = &self.config.admin_key {
            let expected = keyed_hash(&self.config.audit_key, key).finalize().into_bytes();
            if keyed_hash(&self.config.audit_key, token).verify_slice(&expected).is_ok() {
                return Ok(("admin-key".into(), None));
            }
        }
        if let Some((key, validation)) = &self.jwt {
            #[derive(serde::Deserialize)]
            struct Claims {
                sub: Option<String>,
                exp: Option<i64>,
            }
            return match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) => Ok((format!("jwt:{}", data.claims.sub.unwrap_or_default()), data.claims.exp)),
                Err(e) => {
                    // The reason stays in the server's log: a caller learns nothing about which
                    // check its token failed.
                    tracing::info!(reason = %e, "admin bearer token refused");
                    Err(ApiError::unauthorized("invalid_credentials", "bearer token refused"))
                }
            };
        }
        Err(ApiError::unauthorized("invalid_credentials", "bearer token refused"))
    }
}

/// The write keys of every app (key → app, revoked), checked: at least
/// [`MIN_WRITE_KEY_LEN`] characters, each listed once (active or revoked), none shared by two
/// apps or equal to any secret of the server (apps', networks', the admin key).
fn write_keys(
    config: &crate::domain::config::ServerConfig,
) -> Result<std::collections::HashMap<String, (String, bool)>, String> {
    let secrets: Vec<&str> = config
        .apps
        .values()
        .flat_map(|a| std::iter::once(a.secret.as_str()).chain(a.server_secret.as_deref()))
        .chain(config.networks.values().map(|n| n.secret.as_str()))
        .chain(config.admin_key.as_deref())
        .chain(config.jwt.as_ref().filter(|j| j.algorithm == JwtAlgorithm::Hs256).map(|j| j.key.as_str()))
        .collect();
    let mut keys = std::collections::HashMap::new();
    for (app, c) in &config.apps {
        for k in &c.write_keys {
            if k.key.chars().count() < MIN_WRITE_KEY_LEN || k.key.trim() != k.key {
                return Err(format!(
                    "app {app}: a write key needs at least {MIN_WRITE_KEY_LEN} characters, without spaces at its ends"
                ));
            }
            if secrets.contains(&k.key.as_str()) {
                return Err(format!("app {app}: a write key must not be one of the server's secrets"));
            }
            if let Some((other, _)) = keys.insert(k.key.clone(), (app.clone(), k.revoked)) {
                return Err(if other == *app {
                    format!("app {app}: a write key is listed twice (to revoke one, list it as revoked only)")
                } else {
                    format!("apps {other} and {app} share a write key; each app needs its own")
                });
            }
        }
    }
    Ok(keys)
}

/// The shortest write key accepted (Segment's are 32 characters).
pub const MIN_WRITE_KEY_LEN: usize = 16;

/// The Segment-compatible API's routes (docs/segment.md).
fn segment_routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    use crate::domain::segment::{Call, Route};
    use axum::extract::{Request, State};
    // OPTIONS is routed so that `segment::cors_layer` sees preflights (it answers them).
    let preflight = || async { axum::http::StatusCode::NO_CONTENT };
    let messages = |route: Route| {
        post(move |State(state): State<Arc<AppState>>, request: Request| segment::receive(state, route, request))
            .options(preflight)
    };
    let mut router = Router::new();
    for path in ["/v1/batch", "/v1/b", "/v1/import", "/beacon/v1/batch"] {
        router = router.route(path, messages(Route::Batch));
    }
    for (call, paths) in [
        (Call::Track, ["/v1/track", "/v1/t"]),
        (Call::Identify, ["/v1/identify", "/v1/i"]),
        (Call::Page, ["/v1/page", "/v1/p"]),
        (Call::Screen, ["/v1/screen", "/v1/s"]),
        (Call::Group, ["/v1/group", "/v1/g"]),
        (Call::Alias, ["/v1/alias", "/v1/a"]),
    ] {
        for path in paths {
            router = router.route(path, messages(Route::Call(call)));
        }
    }
    router
        .route("/v1/projects/{write_key}/settings", get(segment::settings).options(preflight))
        .route("/sourceConfig", get(segment::source_config).options(preflight))
        .route("/sourceConfig/", get(segment::source_config).options(preflight))
        .layer(axum::middleware::from_fn_with_state(state, segment::cors_layer))
}

fn jwt_verifier(c: &JwtConfig) -> Result<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation), String> {
    let (key, alg) = match c.algorithm {
        JwtAlgorithm::Hs256 => {
            (jsonwebtoken::DecodingKey::from_secret(c.key.as_bytes()), jsonwebtoken::Algorithm::HS256)
        }
        JwtAlgorithm::Rs256 => (
            jsonwebtoken::DecodingKey::from_rsa_pem(c.key.as_bytes()).map_err(|e| e.to_string())?,
            jsonwebtoken::Algorithm::RS256,
        ),
    };
    let mut validation = jsonwebtoken::Validation::new(alg);
    // A configured audience or issuer must be present in the token, not merely unequal when
    // present.
    let mut required = vec!["exp"];
    match &c.audience {
        Some(aud) => {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        None => validation.validate_aud = false,
    }
    if let Some(iss) = &c.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    Ok((key, validation))
}

/// The routes over a built state. Starts nothing: the background tasks belong to the
/// [`ServerHandle`](crate::ServerHandle) that [`crate::start_tasks`] returns.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/event", post(ingest::event))
        .route("/v1/user/delete", post(admin::delete_user))
        .route("/v1/suppressions", get(admin::suppressions))
        .route("/v1/suppressions/lift", post(admin::lift_suppressions))
        .route("/v1/test-devices", get(admin::test_devices).merge(post(admin::add_test_device)))
        .route("/v1/test-devices/remove", post(admin::remove_test_device))
        .route("/v1/events", get(admin::events))
        .route("/v1/install", post(install::install))
        .route("/v1/attribution/lookup", get(install::lookup))
        .route("/v1/attribution/{event_id}", get(install::audit))
        .route("/v1/campaigns", post(links::create_campaign))
        .route("/v1/campaigns/{campaign_id}/cost", post(reports::cost))
        .route("/v1/reports/funnel", get(reports::funnel))
        .route("/v1/reports/retention", get(reports::retention))
        .route("/v1/reports/campaigns", get(reports::campaigns))
        .route("/v1/reports/campaigns/{campaign_id}", get(reports::campaign))
        .route("/v1/reports/trends", get(reports::trends))
        .route("/v1/reports/paths", get(reports::paths))
        .route("/v1/links", post(links::create_link))
        .route("/v1/links/{link_id}", get(links::get_link).merge(patch(links::update_link)))
        .route("/v1/links/{link_id}/audit", get(links::link_audit))
        .route("/c/{code}", get(links::click_by_code))
        .route("/v1/click", get(links::click_by_link).merge(post(links::s2s_click)))
        .route("/v1/impression", get(links::impression))
        .merge(segment_routes(state.clone()))
        .route("/dashboard", get(dashboard::index))
        .route("/dashboard/login", get(dashboard::login_page).merge(post(dashboard::login)))
        .route("/dashboard/logout", post(dashboard::logout))
        .route("/dashboard/live", get(dashboard::live))
        .route("/dashboard/campaign/{campaign_id}", get(dashboard::campaign))
        .route("/dashboard/journeys", get(dashboard::journeys))
        .route("/dashboard/attribution", get(dashboard::attribution))
        .route("/dashboard/campaigns", post(dashboard::create_campaign))
        .route("/dashboard/links", post(dashboard::create_link))
        .route("/dashboard/app.js", get(dashboard::script))
        .route("/dashboard/style.css", get(dashboard::style))
        .route("/.well-known/apple-app-site-association", get(wellknown::apple_app_site_association))
        .route("/.well-known/assetlinks.json", get(wellknown::asset_links))
        .route("/healthz", get(admin::healthz))
        .route("/metrics", get(metrics::render))
        .fallback(admin::not_found)
        .method_not_allowed_fallback(admin::method_not_allowed)
        // Bodies are read with our own limit so the 413 has the protocol's error shape.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors::layer))
        // Outermost: every request is counted and timed, CORS refusals included.
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}
