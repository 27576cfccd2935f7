//! Admin and operations routes: the event inspector (`GET /v1/events?anonymous_id=…`, or
//! `user_id`, `device_id`; optional `app_id`, `limit`: what the server stored for one device or
//! user, newest first — what an SDK integrator checks while wiring up an app, like Adjust's
//! testing console or Segment's debugger), a person's deletion (`POST /v1/user/delete`) and the
//! suppressions it leaves (`GET /v1/suppressions`, `POST /v1/suppressions/lift`), the health
//! check, and the answers for unknown paths and methods.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{AdminAuth, Limited, parse_json};
use trailmark_core::protocol::format_millis;

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
    let subject = state.ids.subject(&subject(&query)?);
    let limit = limit(&query)?;
    let mut rows = state.storage.recent_events(query.get("app_id").cloned(), subject, limit).await?;
    // The inspector shows user and device ids as sent (stored hashed, with the raw values sealed).
    for e in &mut rows {
        state.ids.reveal_event(e);
    }
    let events: Vec<Value> = rows.iter().map(event_json).collect();
    Ok(Json(json!({ "events": events })))
}

/// `POST /v1/user/delete` `{"user_id" | "anonymous_id" | "device_id": "…", "suppress"?: bool}`
/// → `{"receipt_id", "rows_deleted", "clickhouse"?, "warnings"?}` (`clickhouse`: `erasing` or
/// `queued`, with reports in ClickHouse). The deleted events are tombstoned; unless
/// `"suppress": false`, later events from the subject's identifiers are answered as accepted
/// but suppressed (not stored).
pub async fn delete_user(
    State(state): State<Arc<AppState>>,
    AdminAuth(requested_by): AdminAuth,
    Limited(body): Limited<MAX_ADMIN_BODY>,
) -> Result<Json<Value>, ApiError> {
    let map = object_body(&body)?;
    let suppress = match map.get("suppress") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("invalid_body", "suppress must be true or false")),
    };
    let subject = body_subject(&map, &["suppress"])?
        .ok_or_else(|| ApiError::bad_request("invalid_body", "give exactly one of user_id, anonymous_id, device_id"))?;
    let done = deletion::delete(&state, subject, requested_by, suppress).await?;
    let mut body = json!({"receipt_id": done.receipt_id, "rows_deleted": done.rows_deleted});
    if let Some(state) = done.clickhouse {
        body["clickhouse"] = json!(state);
    }
    if !done.warnings.is_empty() {
        body["warnings"] = json!(done.warnings);
    }
    Ok(Json(body))
}

/// `GET /v1/suppressions?limit=` → `{"suppressions": [{"id_hash", "kind", "receipt_id",
/// "created_at"}]}`, newest first (identifiers as keyed hashes only).
pub async fn suppressions(
    State(state): State<Arc<AppState>>,
    _admin: AdminAuth,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v.parse::<usize>().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
            ApiError::bad_request("invalid_query", format!("limit must be a number from 1 to {MAX_LIMIT}"))
        })?,
    };
    let rows = deletion::suppressions(&state, limit).await?;
    let rows: Vec<Value> = rows
        .into_iter()
        .map(|s| {
            json!({"id_hash": s.id_hash, "kind": s.kind, "receipt_id": s.receipt_id,
            "created_at": format_millis(s.created_at)})
        })
        .collect();
    Ok(Json(json!({"suppressions": rows})))
}

/// `POST /v1/suppressions/lift` `{"receipt_id": "…"}` (every suppression of that deletion) or
/// `{"user_id" | "anonymous_id" | "device_id": "…"}` (that identifier) → `{"lifted": n}`.
/// Tombstones of deleted events stay.
pub async fn lift_suppressions(
    State(state): State<Arc<AppState>>,
    _admin: AdminAuth,
    Limited(body): Limited<MAX_ADMIN_BODY>,
) -> Result<Json<Value>, ApiError> {
    let map = object_body(&body)?;
    let receipt = match map.get("receipt_id") {
        None => None,
        Some(Value::String(r)) if !r.is_empty() && r.len() <= 64 => Some(r.clone()),
        Some(_) => return Err(ApiError::bad_request("invalid_body", "receipt_id must be a deletion's receipt id")),
    };
    let subject = body_subject(&map, &["receipt_id"])?;
    if receipt.is_some() == subject.is_some() {
        return Err(ApiError::bad_request(
            "invalid_body",
            "give exactly one of receipt_id, user_id, anonymous_id, device_id",
        ));
    }
    let lifted = deletion::lift(&state, receipt, subject).await?;
    Ok(Json(json!({"lifted": lifted})))
}

/// `GET /v1/test-devices` → `{"test_devices": [{"device_id", "label", "created_at"}]}`.
pub async fn test_devices(State(state): State<Arc<AppState>>, _admin: AdminAuth) -> Result<Json<Value>, ApiError> {
    let devices = crate::service::install::test_devices(&state).await?;
    Ok(Json(json!({ "test_devices": devices })))
}

/// The device id (an advertising or vendor id, 1 to 256 characters) of a test-device body.
fn test_device_id(map: &serde_json::Map<String, Value>) -> Result<String, ApiError> {
    match map.get("device_id") {
        Some(Value::String(id)) if !id.trim().is_empty() && id.chars().count() <= 256 => Ok(id.clone()),
        _ => Err(ApiError::bad_request(
            "invalid_body",
            "device_id must be an advertising or vendor id (1 to 256 characters)",
        )),
    }
}

/// `POST /v1/test-devices` `{"device_id": "…", "label": "…"}` → 201 (new) or 200 (renamed):
/// installs from that device are attributed afresh every time.
pub async fn add_test_device(
    State(state): State<Arc<AppState>>,
    _admin: AdminAuth,
    Limited(body): Limited<MAX_ADMIN_BODY>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let map = object_body(&body)?;
    if let Some(key) = map.keys().find(|k| !matches!(k.as_str(), "device_id" | "label")) {
        return Err(ApiError::bad_request("invalid_body", format!("unknown field {key:?}")));
    }
    let id = test_device_id(&map)?;
    let label = match map.get("label") {
        None => String::new(),
        Some(Value::String(l)) if l.chars().count() <= 100 => l.clone(),
        Some(_) => {
            return Err(ApiError::bad_request("invalid_body", "label must be a string of at most 100 characters"));
        }
    };
    let new = crate::service::install::add_test_device(&state, &id, label.clone()).await?;
    let status = if new { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(json!({"device_id": id, "label": label}))))
}

/// `POST /v1/test-devices/remove` `{"device_id": "…"}` → `{"removed": true|false}`.
pub async fn remove_test_device(
    State(state): State<Arc<AppState>>,
    _admin: AdminAuth,
    Limited(body): Limited<MAX_ADMIN_BODY>,
) -> Result<Json<Value>, ApiError> {
    let map = object_body(&body)?;
    let id = test_device_id(&map)?;
    let removed = crate::service::install::remove_test_device(&state, &id).await?;
    Ok(Json(json!({"removed": removed})))
}

fn object_body(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match parse_json(body, 4)? {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::bad_request("invalid_body", "expected a JSON object")),
    }
}

/// The subject a body names with `user_id`, `anonymous_id` or `device_id` (at most one);
/// `allowed` names the body's other fields.
fn body_subject(map: &serde_json::Map<String, Value>, allowed: &[&str]) -> Result<Option<Subject>, ApiError> {
    let mut subjects = Vec::new();
    for (key, value) in map {
        if allowed.contains(&key.as_str()) {
            continue;
        }
        let Value::String(id) = value else {
            return Err(ApiError::bad_request("invalid_body", format!("{key} must be a string")));
        };
        // As permissive as ingest (any non-empty id of at most 256 characters), so every
        // stored subject can be deleted.
        if id.is_empty() || id.chars().count() > 256 {
            return Err(ApiError::bad_request("invalid_body", format!("{key} must be 1 to 256 characters")));
        }
        let subject = match key.as_str() {
            "user_id" => Subject::UserId(id.clone()),
            "anonymous_id" => Subject::AnonymousId(id.clone()),
            "device_id" => Subject::device(id),
            other => return Err(ApiError::bad_request("invalid_body", format!("unknown field {other:?}"))),
        };
        // A device id of blanks, zeros and dashes is a placeholder (limit-ad-tracking), not one
        // device: it would match every such row.
        if subject.value().is_empty() || (key == "device_id" && subject.value().chars().all(|c| c == '0' || c == '-')) {
            return Err(ApiError::bad_request("invalid_body", format!("{key} is a placeholder, not an identifier")));
        }
        subjects.push(subject);
    }
    match <[Subject; 1]>::try_from(subjects) {
        Ok([s]) => Ok(Some(s)),
        Err(v) if v.is_empty() => Ok(None),
        Err(_) => Err(ApiError::bad_request("invalid_body", "give only one of user_id, anonymous_id, device_id")),
    }
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
