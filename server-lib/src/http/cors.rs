//! CORS for the SDK endpoints (`/v1/event`, `/v1/install`): the web SDK posts cross-origin with
//! signature headers, so browsers ask first (a preflight). Each app lists the origins its pages
//! run on ([`crate::domain::config::AppConfig::allowed_origins`]).
//!
//! * A preflight cannot say which app it is for (it carries header names, not values), so it is
//!   answered for an origin that any app allows, and refused (403) for every other origin.
//! * The request itself names its app: with an `Origin` that app does not allow it is refused
//!   (403) before its body is read; an allowed one gets `Access-Control-Allow-Origin`.
//! * Requests without `Origin` (mobile SDKs, servers, `curl`) are not CORS and pass unchanged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use trailmark_core::protocol;

use super::AppState;
use super::error::ApiError;
use super::extract::Credentials;

/// Paths the SDKs post to, the only ones that answer browsers.
const SDK_PATHS: [&str; 2] = [protocol::EVENT_PATH, protocol::INSTALL_PATH];
/// How long a browser may cache a preflight answer (seconds).
const PREFLIGHT_MAX_AGE: &str = "7200";

fn origin(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
}

fn refuse(origin: &str) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, "origin_not_allowed", format!("origin {origin:?} is not allowed for this app"))
        .into_response()
}

pub(crate) async fn layer(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if !SDK_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let Some(origin) = origin(request.headers()).map(str::to_owned) else {
        return next.run(request).await;
    };
    let allowed_by = |app: &crate::domain::config::AppConfig| app.allowed_origins.contains(&origin);
    if request.method() == Method::OPTIONS {
        if !state.config.apps.values().any(allowed_by) {
            return refuse(&origin);
        }
        let mut response = StatusCode::NO_CONTENT.into_response();
        let h = response.headers_mut();
        allow(h, &origin);
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(
                "content-type, content-encoding, x-trailmark-app, x-trailmark-timestamp, x-trailmark-signature, traceparent",
            ),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(PREFLIGHT_MAX_AGE));
        return response;
    }
    let (parts, body) = request.into_parts();
    let app = Credentials::of(&parts).app.and_then(|id| state.config.apps.get(&id));
    match app {
        // An unknown or missing app gets its 401 from the handler, without CORS headers.
        None => next.run(Request::from_parts(parts, body)).await,
        Some(app) if !allowed_by(app) => {
            metrics::counter!("trailmark_cors_refused_total").increment(1);
            refuse(&origin)
        }
        Some(_) => {
            let mut response = next.run(Request::from_parts(parts, body)).await;
            allow(response.headers_mut(), &origin);
            response
        }
    }
}

fn allow(h: &mut HeaderMap, origin: &str) {
    if let Ok(value) = HeaderValue::from_str(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    }
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("Retry-After"));
}
