//! Admin and operations routes: the event inspector (`GET /v1/events?anonymous_id=…`, or
//! `user_id`, `device_id`; optional `app_id`, `limit`: what the server stored for one device or
//! user, newest first — what an SDK integrator checks while wiring up an app, like Adjust's
//! testing console or Segment's debugger), a person's deletion (`POST /v1/user/delete`), the
//! health check, and the answers for unknown paths and methods.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{AdminAuth, Limited, parse_json};
use crate::domain::events::event_json;
use crate::domain::records::Subject;
use crate::service::deletion;

/// Largest body of an admin request.
const MAX_ADMIN_BODY: usize = 4096;

/// Events returned when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// Most events one request returns.
pub const MAX_LIMIT: usize = 1000;

fn subject(query: &HashMap<String, String>) -> Result<Subject, ApiError> {
    let given: Vec<Subject> = [
        query.get("anonymous_id").map(|v| Subject::AnonymousId(v.clone())),
        query.get("user_id").map(|v| Subject::UserId(v.clone())),
        query.get("device_id").map(|v| Subject::device(v)),
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

/// `GET /v1/events` → `{"events": [...]}`.
pub async fn events(
    State(state): State<Arc<AppState>>,
    _admin: AdminAuth,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let subject = subject(&query)?;
    let limit = limit(&query)?;
    let rows = state.storage.recent_events(query.get("app_id").cloned(), subject, limit).await?;
    let events: Vec<Value> = rows.iter().map(event_json).collect();
    Ok(Json(json!({ "events": events })))
}

/// `POST /v1/user/delete` `{"user_id" | "anonymous_id" | "device_id": "…"}` → `{"receipt_id",
/// "rows_deleted", "warnings"?}`.
pub async fn delete_user(
    State(state): State<Arc<AppState>>,
    AdminAuth(requested_by): AdminAuth,
    Limited(body): Limited<MAX_ADMIN_BODY>,
) -> Result<Json<Value>, ApiError> {
    let value = parse_json(&body, 4)?;
    let Value::Object(map) = value else {
        return Err(ApiError::bad_request("invalid_body", "expected a JSON object"));
    };
    let mut subjects = Vec::new();
    for (key, value) in &map {
        let Value::String(id) = value else {
            return Err(ApiError::bad_request("invalid_body", format!("{key} must be a string")));
        };
        // As permissive as ingest (any non-empty id of at most 256 characters), so every
        // stored subject can be deleted.
        if id.is_empty() || id.chars().count() > 256 {
            return Err(ApiError::bad_request("invalid_body", format!("{key} must be 1 to 256 characters")));
        }
        subjects.push(match key.as_str() {
            "user_id" => Subject::UserId(id.clone()),
            "anonymous_id" => Subject::AnonymousId(id.clone()),
            "device_id" => Subject::device(id),
            other => return Err(ApiError::bad_request("invalid_body", format!("unknown field {other:?}"))),
        });
    }
    let [subject] = <[Subject; 1]>::try_from(subjects)
        .map_err(|_| ApiError::bad_request("invalid_body", "give exactly one of user_id, anonymous_id, device_id"))?;
    let done = deletion::delete(&state, subject, requested_by).await?;
    let mut body = json!({"receipt_id": done.receipt_id, "rows_deleted": done.rows_deleted});
    if !done.warnings.is_empty() {
        body["warnings"] = json!(done.warnings);
    }
    Ok(Json(body))
}

/// `GET /healthz`.
pub async fn healthz(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"status": "ok", "writer_backlog": state.storage.backlog()}))
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no endpoint at {}", uri.path()))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
