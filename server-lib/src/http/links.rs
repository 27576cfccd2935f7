//! The campaign manager (admin: campaigns, links, their audit log), tracking-link redirects,
//! clicks and impressions.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::extract::{AdminAuth, ClientIp, Limited, S2sPolicy, SignedBody, parse_as, query_param};
use crate::domain::links::{ClickFacts, LinkChange, NewCampaign, NewLink, S2sClick, destination};
use crate::domain::records::LinkRecord;
use crate::service::links::{self as service, LinkKey, NotRecorded};

/// Largest body of a campaign or link request.
const MAX_LINK_BODY: usize = 16 * 1024;

/// `POST /v1/campaigns` `{"name", "network", "app_id"?}` → 201 `{"campaign_id"}`. `app_id`
/// may be left out when the server has exactly one app.
pub async fn create_campaign(
    State(state): State<Arc<AppState>>,
    _admin: AdminAuth,
    Limited(body): Limited<MAX_LINK_BODY>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: NewCampaign = parse_as(&body)?;
    let id = service::new_campaign(&state, req).await?;
    Ok((StatusCode::CREATED, Json(json!({"campaign_id": id}))))
}

/// `POST /v1/links` → 201 `{"link_id", "code", "url"}`.
pub async fn create_link(
    State(state): State<Arc<AppState>>,
    AdminAuth(actor): AdminAuth,
    Limited(body): Limited<MAX_LINK_BODY>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: NewLink = parse_as(&body)?;
    Ok((StatusCode::CREATED, Json(service::new_link(&state, actor, req).await?)))
}

/// `PATCH /v1/links/{link_id}`: change utm, destinations, deep link, or `enabled`.
pub async fn update_link(
    State(state): State<Arc<AppState>>,
    AdminAuth(actor): AdminAuth,
    Path(link_id): Path<String>,
    Limited(body): Limited<MAX_LINK_BODY>,
) -> Result<Json<Value>, ApiError> {
    let mut fields: serde_json::Map<String, Value> = parse_as(&body)?;
    // `"deep_link": null` removes it; serde alone would read null as "absent".
    let deep_link = fields.remove("deep_link");
    let change: LinkChange = serde_json::from_value(Value::Object(fields))
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    Ok(Json(service::update_link(&state, actor, &link_id, change, deep_link).await?))
}

/// `GET /v1/links/{link_id}`.
pub async fn get_link(
    State(state): State<Arc<AppState>>,
    _admin: AdminAuth,
    Path(link_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(service::get_link(&state, &link_id).await?))
}

/// `GET /v1/links/{link_id}/audit` → `{"link_id", "entries": [...]}`, oldest first.
pub async fn link_audit(
    State(state): State<Arc<AppState>>,
    _admin: AdminAuth,
    Path(link_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let entries = service::link_audit(&state, &link_id).await?;
    Ok(Json(json!({"link_id": link_id, "entries": entries})))
}

// ------------------------------------------------------------------------------------------
// Clicks and impressions

fn redirect(location: &str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// What a visit to a tracking link says: address, headers, the URL's query.
fn visit(ip: Option<std::net::IpAddr>, headers: &HeaderMap, query: Option<&str>) -> ClickFacts {
    let h = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    ClickFacts::of_visit(ip, h(header::USER_AGENT), h(header::REFERER), h(header::ACCEPT_LANGUAGE), query)
}

fn no_active_link() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no active link here")
}

/// Follows a link: records the click and redirects.
async fn follow(
    state: &AppState,
    link: Arc<LinkRecord>,
    source: &str,
    facts: ClickFacts,
) -> Result<Response, ApiError> {
    Ok(match service::record(state, &link.link_id, "click", source, facts).await? {
        Ok((id, os)) => redirect(&destination(&link, os, Some(&id))),
        Err((_, os)) => redirect(&destination(&link, os, None)),
    })
}

/// `GET /c/{code}`.
pub async fn click_by_code(
    State(state): State<Arc<AppState>>,
    Path(code): Path<String>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let link = service::active_link(&state, LinkKey::Code(&code)).await?.ok_or_else(no_active_link)?;
    follow(&state, link, "redirect", visit(ip, &headers, uri.query())).await
}

/// `GET /v1/click?link=<link_id>`.
pub async fn click_by_link(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let id = query_param(uri.query(), "link").unwrap_or_default();
    let link = service::active_link(&state, LinkKey::Id(&id)).await?.ok_or_else(no_active_link)?;
    follow(&state, link, "api", visit(ip, &headers, uri.query())).await
}

/// `GET /v1/impression?link=<link_id>` → 204: a view-through touchpoint (with the device id
/// from `idfa`/`gaid`/… when the ad server fills it in).
pub async fn impression(
    State(state): State<Arc<AppState>>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Result<StatusCode, ApiError> {
    let link_id = query_param(uri.query(), "link")
        .ok_or_else(|| ApiError::bad_request("invalid_query", "the link query parameter is required"))?;
    service::find_link(&state, |t| t.by_id.get(&link_id).map(|&i| t.links[i as usize].clone())).await?;
    let facts = visit(ip, &headers, uri.query());
    let _not_counted = service::record(&state, &link_id, "impression", "impression", facts).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/click` (signed by an ad network's own secret, `X-Trailmark-Network`): a
/// server-to-server click or impression on one of that network's links. → 201 `{"click_id"}`,
/// or 200 `{"click_id": null, "reason"}` when not counted.
pub async fn s2s_click(
    State(state): State<Arc<AppState>>,
    signed: SignedBody<S2sPolicy>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req: S2sClick = parse_as(&signed.body)?;
    let kind = req.kind()?;
    let link = service::active_link(&state, LinkKey::Id(&req.link_id)).await?;
    // A network reports clicks on its own links only; another network's link is as unknown.
    if link.is_none_or(|l| l.network != signed.app_id) {
        return Err(service::link_not_found().into());
    }
    let facts = ClickFacts::of_s2s(&req)?;
    // The sender paid its address's and its network's request buckets; the visitor's address
    // named in the body is counted in a bucket of its own.
    Ok(match service::record(&state, &req.link_id, kind, "s2s", facts).await? {
        Ok((id, _)) => (StatusCode::CREATED, Json(json!({"click_id": id}))),
        Err((NotRecorded::Bot, _)) => (StatusCode::OK, Json(json!({"click_id": null, "reason": "bot user agent"}))),
        Err((NotRecorded::RateLimited, _)) => {
            (StatusCode::OK, Json(json!({"click_id": null, "reason": "too many clicks from this address"})))
        }
    })
}
