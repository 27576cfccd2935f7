//! `POST /v1/install` (install attribution) and `GET /v1/attribution/{event_id}` (its audit).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde_json::Value;
use tracing::Instrument;
use trailmark_core::protocol::{self, AttributionResult, InstallRequest};

use super::AppState;
use super::error::ApiError;
use super::extract::{AdminAuth, InstallPolicy, SignedBody, parse_as};
use crate::service::{install as service, trace};

/// `POST /v1/install` → the attribution result.
pub async fn install(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    signed: SignedBody<InstallPolicy>,
) -> Result<Json<AttributionResult>, ApiError> {
    let traceparent = headers.get(protocol::HEADER_TRACEPARENT).and_then(|v| v.to_str().ok());
    async {
        let req: InstallRequest = parse_as(&signed.body)?;
        Ok(Json(service::install(&state, signed.app_id, signed.ip, signed.sent_at_secs, req).await?))
    }
    .instrument(trace::request_span("install", traceparent))
    .await
}

/// `GET /v1/attribution/{event_id}[?app=…]` (admin): the decision and its explanation.
pub async fn audit(
    State(state): State<Arc<AppState>>,
    _admin: AdminAuth,
    Path(event_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(service::audit(&state, query.get("app").cloned(), &event_id).await?))
}
