//! `POST /v1/event`: the signed body (app, rates, limit, signature, gzip), parsed as JSON with
//! the depth cap, handed to the ingest service.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use tracing::Instrument;
use trailmark_core::protocol::{self, IngestResponse};

use super::AppState;
use super::error::ApiError;
use super::extract::{EventPolicy, SignedBody, parse_json};
use crate::service::{ingest, trace};

/// `POST /v1/event` → `{"accepted", "duplicates", "rejected": [...]}`.
pub async fn event(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    signed: SignedBody<EventPolicy>,
) -> Result<Json<IngestResponse>, ApiError> {
    let traceparent = headers.get(protocol::HEADER_TRACEPARENT).and_then(|v| v.to_str().ok());
    let span = trace::request_span("ingest", traceparent);
    async {
        let value = parse_json(&signed.body, state.config.limits.max_json_depth)?;
        let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
        Ok(Json(ingest::ingest(&state, signed.app_id, signed.ip, user_agent, value).await?))
    }
    .instrument(span)
    .await
}
