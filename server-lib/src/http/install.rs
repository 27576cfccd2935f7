//! `POST /v1/install` (install attribution), `GET /v1/attribution/{event_id}` (its audit) and
//! `GET /v1/attribution/lookup` (the attribution explorer).

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::Uri;
use serde_json::Value;
use tracing::Instrument;
use trailmark_core::protocol::{self, AttributionResult, InstallRequest};

use super::AppState;
use super::error::ApiError;
use super::extract::{AdminAuth, InstallPolicy, SignedBody, parse_as, query_param};
use crate::domain::reports::Params;
use crate::service::{install as service, trace};

/// `POST /v1/install` → the attribution result.
pub async fn install(
    State(state): State<Arc<AppState>>,
    request: Request,
) -> Result<Json<AttributionResult>, ApiError> {
    // The span covers the whole request, authentication and body included.
    let traceparent = request.headers().get(protocol::HEADER_TRACEPARENT).and_then(|v| v.to_str().ok());
    let span = trace::request_span("install", traceparent);
    async {
        let signed = SignedBody::<InstallPolicy>::from_request(request, &state).await?;
        let req: InstallRequest = parse_as(&signed.body)?;
        Ok(Json(service::install(&state, signed.app_id, signed.ip, signed.sent_at_secs, req).await?))
    }
    .instrument(span)
    .await
}

/// `GET /v1/attribution/{event_id}[?app=…]` (admin): the decision and its explanation.
pub async fn audit(
    State(state): State<Arc<AppState>>,
    _admin: AdminAuth,
    Path(event_id): Path<String>,
    uri: Uri,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(service::audit(&state, query_param(uri.query(), "app"), &event_id).await?))
}

/// `GET /v1/attribution/lookup?(event_id|anonymous_id|device_id)=…[&app_id=…]` (admin): the
/// attribution explorer's question — an install's decision audit and the conversion credit
/// found by one of its ids.
pub async fn lookup(State(state): State<Arc<AppState>>, _admin: AdminAuth, uri: Uri) -> Result<Json<Value>, ApiError> {
    let p = Params::parse(uri.query(), &["event_id", "anonymous_id", "device_id", "app_id"])?;
    let app_id = p.app(&state.config.apps)?;
    let found: Vec<&str> =
        ["event_id", "anonymous_id", "device_id"].into_iter().filter(|k| p.get(k).is_some()).collect();
    let [by] = found.as_slice() else {
        return Err(ApiError::bad_request("invalid_parameter", "give one of event_id, anonymous_id, device_id"));
    };
    Ok(Json(service::explore(&state, &app_id, by, p.get(by).unwrap_or_default()).await?))
}
