//! `POST /v1/event`: the signed body (app, rates, limit, signature, gzip), parsed as JSON with
//! the depth cap, handed to the ingest service.

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequest, Request, State};
use axum::http::header;
use tracing::Instrument;
use trailmark_core::protocol::{self, IngestResponse};

use super::AppState;
use super::error::ApiError;
use super::extract::{EventPolicy, SignedBody, parse_json};
use crate::service::{ingest, trace};

/// `POST /v1/event` → `{"accepted", "duplicates", "rejected": [...]}`.
pub async fn event(State(state): State<Arc<AppState>>, request: Request) -> Result<Json<IngestResponse>, ApiError> {
    // The span covers the whole request, authentication and body included.
    let headers = request.headers();
    let span = trace::request_span("ingest", headers.get(protocol::HEADER_TRACEPARENT).and_then(|v| v.to_str().ok()));
    let user_agent = headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
    async {
        let signed = SignedBody::<EventPolicy>::from_request(request, &state).await?;
        let value = parse_json(&signed.body, state.config.limits.max_json_depth)?;
        let auth = if signed.server_signed { ingest::Auth::ServerSigned } else { ingest::Auth::Signed };
        Ok(Json(ingest::ingest(&state, signed.app_id, auth, signed.ip, user_agent.as_deref(), value, &[]).await?))
    }
    .instrument(span)
    .await
}
