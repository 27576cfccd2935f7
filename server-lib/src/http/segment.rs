//! The Segment-compatible API (docs/segment.md): Segment's tracking routes (`/v1/batch`,
//! `/v1/track`, … and analytics.js's short `/v1/t`, …, the mobile SDKs' `/v1/b`), the settings
//! document Segment's SDKs fetch at start, RudderStack's `/sourceConfig` and beacon route.
//! Authenticated by an app's write key: the HTTP Basic user name (Segment's and RudderStack's
//! SDKs), else a `writeKey` query parameter or body field (beacons, analytics.js).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{client_ip, decode_body, parse_json, peer, query_param, read_body};
use crate::domain::segment::Route;
use crate::service::segment;

/// The app of a write key, or 401.
fn app_of(state: &AppState, key: &str) -> Result<String, ApiError> {
    match state.write_keys.get(key) {
        Some((app, false)) => Ok(app.clone()),
        Some((app, true)) => {
            metrics::counter!("trailmark_auth_failures_total", "app" => app.clone()).increment(1);
            Err(ApiError::unauthorized("revoked_write_key", "this write key was revoked"))
        }
        None => Err(ApiError::unauthorized("invalid_write_key", "unknown write key")),
    }
}

/// The write key of `Authorization: Basic base64(key:)`, else of the `writeKey` query parameter.
fn key_of(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("Basic "))
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(|user_pass| user_pass.split_once(':').map_or(user_pass.clone(), |(user, _)| user.to_owned()));
    basic.filter(|k| !k.is_empty()).or_else(|| query_param(query, "writeKey").filter(|k| !k.is_empty()))
}

/// 403 for a browser page (`Origin`) the write key's app does not allow. Requests without an
/// `Origin` (servers, mobile SDKs) are not CORS. The headers themselves come from [`cors_layer`].
fn check_origin(state: &AppState, app: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return Ok(()) };
    if state.config.apps.get(app).is_some_and(|a| a.allowed_origins.iter().any(|o| o == origin)) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            format!("origin {origin:?} is not allowed for this app"),
        ))
    }
}

/// CORS for the Segment routes. A preflight cannot say which app it is for, so it is answered
/// for an origin any app allows (403 otherwise); every answer to such an origin, errors
/// included, carries `Access-Control-Allow-Origin` so a browser SDK can read its status; the
/// handlers refuse an origin the write key's own app does not allow.
pub(crate) async fn cors_layer(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(origin) = request.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_owned) else {
        return next.run(request).await;
    };
    let allowed = state.config.apps.values().any(|a| a.allowed_origins.contains(&origin));
    let value = HeaderValue::from_str(&origin).ok().filter(|_| allowed);
    if request.method() == Method::OPTIONS {
        let Some(value) = value else {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "origin_not_allowed",
                format!("origin {origin:?} is not allowed for any app"),
            )
            .into_response();
        };
        let mut response = StatusCode::NO_CONTENT.into_response();
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, content-encoding, anonymousid"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("7200"));
        return response;
    }
    let mut response = next.run(request).await;
    if let Some(value) = value {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("retry-after"));
    }
    response
}

/// `POST` of messages on `route`: 200 `{"success": true, "accepted", "duplicates",
/// "suppressed", "rejected": [{index, messageId, reason}]}` when any message was kept (Segment's
/// SDKs read only the status, and a 400 would make them drop the whole batch); 400 with the
/// same list when every message was refused.
pub async fn receive(state: Arc<AppState>, route: Route, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let ip = client_ip(&parts.headers, peer(&parts), state.config.trusted_hops());
    state.limits.check_ip(ip)?;
    // A key in the header or query is checked, with its origin and rate, before the body is read.
    let early = key_of(&parts.headers, parts.uri.query()).map(|k| app_of(&state, &k)).transpose()?;
    if let Some(app) = &early {
        check_origin(&state, app, &parts.headers)?;
        state.limits.check_write_key(app)?;
    }
    let limit = state.config.limits.max_body_bytes;
    let raw = read_body(body, limit, state.config.body_timeout()).await?;
    let raw = decode_body(&parts.headers, raw, limit)?;
    let value = parse_json(&raw, state.config.limits.max_json_depth)?;
    let app = match early {
        Some(app) => app,
        None => {
            let app = match value.get("writeKey").and_then(Value::as_str) {
                Some(key) if !key.is_empty() => app_of(&state, key)?,
                _ => {
                    return Err(ApiError::unauthorized(
                        "missing_write_key",
                        "send the write key as the HTTP Basic user name (or writeKey in the query or body)",
                    ));
                }
            };
            check_origin(&state, &app, &parts.headers)?;
            state.limits.check_write_key(&app)?;
            app
        }
    };
    let user_agent = parts.headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok());
    let answer = segment::receive(&state, &app, route, ip, user_agent, value).await?;
    let all_refused = answer.messages > 0 && answer.rejected.len() == answer.messages;
    Ok(if all_refused {
        let first = answer.rejected.first().map(|r| r.reason.as_str()).unwrap_or_default();
        let body = json!({
            "success": false,
            "error": {"code": "invalid_messages", "message": format!("every message was refused; the first: {first}")},
            "rejected": answer.rejected,
        });
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    } else {
        let mut body = serde_json::to_value(&answer).unwrap_or_default();
        body["success"] = Value::Bool(true);
        (StatusCode::OK, Json(body)).into_response()
    })
}

/// `GET /v1/projects/{writeKey}/settings`: the settings document Segment's SDKs fetch at start
/// (from Segment's CDN; point the SDK's CDN host here), minimal: the Segment.io destination
/// with this server as its API host, no device-mode integrations, every event enabled.
pub async fn settings(
    State(state): State<Arc<AppState>>,
    Path(key): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let headers = &parts.headers;
    state.limits.check_ip(client_ip(headers, peer(&parts), state.config.trusted_hops()))?;
    let app = app_of(&state, &key)?;
    check_origin(&state, &app, headers)?;
    // The configured public address (what clients reach behind proxies), else the Host asked.
    let host = match &state.config.public_url {
        Some(url) => url.split_once("://").map_or(url.as_str(), |(_, rest)| rest).trim_end_matches('/').to_owned(),
        None => headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default(),
    };
    let body = json!({
        "integrations": {"Segment.io": {"apiKey": key, "apiHost": format!("{host}/v1"), "unbundledIntegrations": [],
                                         "addBundledMetadata": false, "maybeBundledConfigIds": {}}},
        "plan": {"track": {"__default": {"enabled": true, "integrations": {}}},
                 "identify": {"__default": {"enabled": true}}, "group": {"__default": {"enabled": true}}},
        "edgeFunction": {},
        "analyticsNextEnabled": true,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": false,
        "remotePlugins": []
    });
    Ok(Json(body).into_response())
}

/// `GET /sourceConfig`: RudderStack's source configuration (its SDKs fetch it at start, with the
/// write key as the Basic user name or `writeKey` in the query): the source enabled, no
/// destinations.
pub async fn source_config(State(state): State<Arc<AppState>>, request: Request) -> Result<Response, ApiError> {
    let (parts, _) = request.into_parts();
    let headers = &parts.headers;
    state.limits.check_ip(client_ip(headers, peer(&parts), state.config.trusted_hops()))?;
    let key = key_of(headers, parts.uri.query())
        .ok_or_else(|| ApiError::unauthorized("missing_write_key", "send the write key as the HTTP Basic user name"))?;
    let app = app_of(&state, &key)?;
    check_origin(&state, &app, headers)?;
    let body = json!({
        "isHosted": false,
        "source": {"id": app, "name": app, "writeKey": key, "enabled": true, "config": {},
                   "workspaceId": "trailmark", "destinations": [],
                   "sourceDefinition": {"name": "Trailmark", "category": null}}
    });
    Ok(Json(body).into_response())
}
