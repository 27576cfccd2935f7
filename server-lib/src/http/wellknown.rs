//! `GET /.well-known/apple-app-site-association` and `GET /.well-known/assetlinks.json`: the
//! files iOS and Android fetch from the link domain to open the app for its tracking links
//! (docs/attribution.md, "Deep links"). Public, cacheable; 404 when no app of that platform is
//! configured.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::ApiError;

fn json_file(value: Option<serde_json::Value>) -> Result<Response, ApiError> {
    let value = value
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no app is configured for this platform"))?;
    Ok((
        [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "public, max-age=3600")],
        value.to_string(),
    )
        .into_response())
}

pub async fn apple_app_site_association(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    json_file(state.config.deep_link_apps.apple_app_site_association())
}

pub async fn asset_links(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    json_file(state.config.deep_link_apps.asset_links())
}
