//! The report API (admin): funnels, retention cohorts, campaign performance, paths to
//! conversion, and campaign costs. Parameters are parsed strictly (unknown or repeated ones are
//! refused); the service refreshes the star schema and computes.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::Uri;
use serde_json::Value;

use super::AppState;
use super::error::ApiError;
use super::extract::{AdminAuth, Limited, parse_json};
use crate::domain::reports::{CostBody, Params};
use crate::service::reports as service;

fn params(uri: &Uri, allowed: &[&str]) -> Result<Params, ApiError> {
    Ok(Params::parse(uri.query(), allowed)?)
}

/// `GET /v1/reports/funnel?steps=a,b,c&from=…&to=…[&within=…][&campaign_id=…][&app_id=…]`.
pub async fn funnel(State(state): State<Arc<AppState>>, _admin: AdminAuth, uri: Uri) -> Result<Json<Value>, ApiError> {
    let p = params(&uri, &["steps", "from", "to", "within", "campaign_id", "app_id"])?;
    Ok(Json(service::funnel_report(&state, &p).await?))
}

/// `GET /v1/reports/retention?from=…&to=…&days=1,7,30[&app_id=…]`.
pub async fn retention(
    State(state): State<Arc<AppState>>,
    _admin: AdminAuth,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let p = params(&uri, &["from", "to", "days", "app_id"])?;
    Ok(Json(service::retention_report(&state, &p).await?))
}

/// `GET /v1/reports/campaigns?from=…&to=…[&model=last_touch][&app_id=…]`.
pub async fn campaigns(
    State(state): State<Arc<AppState>>,
    _admin: AdminAuth,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let p = params(&uri, &["from", "to", "model", "app_id"])?;
    Ok(Json(service::campaigns_report(&state, &p).await?))
}

/// `GET /v1/reports/paths?conversion=purchase[&limit=10][&max_steps=5][&from=…&to=…][&app_id=…]`.
pub async fn paths(State(state): State<Arc<AppState>>, _admin: AdminAuth, uri: Uri) -> Result<Json<Value>, ApiError> {
    let p = params(&uri, &["conversion", "limit", "max_steps", "from", "to", "app_id"])?;
    Ok(Json(service::paths_report(&state, &p).await?))
}

/// `GET /v1/reports/trends?[bucket=day|hour][&from=…&to=…][&campaign_id=…][&network=…][&model=…][&app_id=…]`.
pub async fn trends(State(state): State<Arc<AppState>>, _admin: AdminAuth, uri: Uri) -> Result<Json<Value>, ApiError> {
    let p = params(&uri, &["bucket", "from", "to", "campaign_id", "network", "model", "app_id"])?;
    Ok(Json(service::trend_report(&state, &p).await?))
}

/// `GET /v1/reports/campaigns/{campaign_id}?[from=…&to=…]`: one campaign's links, metrics under
/// every model and fraud rejections by rule.
pub async fn campaign(
    State(state): State<Arc<AppState>>,
    _admin: AdminAuth,
    Path(campaign_id): Path<String>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    let p = params(&uri, &["from", "to"])?;
    Ok(Json(service::campaign_detail(&state, &campaign_id, &p).await?))
}

/// Parses a cost body.
pub(crate) fn cost_body(body: &[u8]) -> Result<CostBody, ApiError> {
    let value = parse_json(body, 4)?;
    serde_json::from_value(value).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("expected {{\"date\", \"amount\", \"currency\"}}: {e}"))
    })
}

/// `POST /v1/campaigns/{campaign_id}/cost` `{"date", "amount", "currency"}`: one day's cost
/// (posting the same day again replaces it).
pub async fn cost(
    State(state): State<Arc<AppState>>,
    _admin: AdminAuth,
    Path(campaign_id): Path<String>,
    Limited(body): Limited<4096>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(service::save_cost(&state, &campaign_id, cost_body(&body)?).await?))
}
