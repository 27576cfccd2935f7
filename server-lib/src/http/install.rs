//! `POST /v1/install` (install attribution) and `GET /v1/attribution/{event_id}` (its audit).

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
