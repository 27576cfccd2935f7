//! The event inspector: `GET /v1/events?anonymous_id=…` (or `user_id`, `device_id`; optional
//! `app_id`, `limit`) returns what the server stored for one device or user, newest first —
//! what an SDK integrator checks while wiring up an app (Adjust's testing console, Segment's
//! debugger). Admin only.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use trailmark_core::protocol::format_millis;

use crate::error::ApiError;
use crate::links::storage_error;
use crate::storage::{NewEvent, Subject};
use crate::{AppState, admin_auth};

/// Events returned when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Most events one request returns.
pub const MAX_LIMIT: usize = 1000;

fn subject(query: &HashMap<String, String>) -> Result<Subject, ApiError> {
    let given: Vec<Subject> = [
        query.get("anonymous_id").map(|v| Subject::AnonymousId(v.clone())),
        query.get("user_id").map(|v| Subject::UserId(v.clone())),
        query.get("device_id").map(|v| Subject::DeviceId(v.clone())),
    ]
    .into_iter()
    .flatten()
    .collect();
    match <[Subject; 1]>::try_from(given) {
        Ok([s]) if !s.value().is_empty() && s.value().len() <= 256 => Ok(s),
        Ok(_) => Err(ApiError::bad_request("invalid_query", "the id must be 1 to 256 characters")),
        Err(_) => Err(ApiError::bad_request("invalid_query", "give exactly one of anonymous_id, user_id or device_id")),
    }
}

fn limit(query: &HashMap<String, String>) -> Result<usize, ApiError> {
    match query.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request("invalid_query", format!("limit must be 1 to {MAX_LIMIT}"))),
        },
    }
}

fn object(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// A stored event as JSON (the inspector's and the event stream's shape; no client address).
pub fn event_json(e: &NewEvent) -> Value {
    json!({
        "app_id": e.app_id,
        "event_id": e.event_id,
        "type": e.event_type,
        "anonymous_id": e.anonymous_id,
        "user_id": e.user_id,
        "device_id": e.device_id,
        "session_id": e.session_id,
        "timestamp": format_millis(e.client_ts),
        "corrected_timestamp": format_millis(e.corrected_ts),
        "received_at": format_millis(e.received_at),
        "properties": object(&e.properties),
        "context": object(&e.context),
        "enrichment": object(&e.enrichment),
    })
}

/// `GET /v1/events` → `{"events": [...]}`.
pub async fn events(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let result = async {
        admin_auth(&state, &headers)?;
        let subject = subject(&query)?;
        let limit = limit(&query)?;
        let rows =
            state.storage.recent_events(query.get("app_id").cloned(), subject, limit).await.map_err(storage_error)?;
        let events: Vec<Value> = rows.iter().map(event_json).collect();
        Ok::<_, ApiError>(json!({ "events": events }))
    }
    .await;
    match result {
        Ok(body) => (StatusCode::OK, axum::Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}
