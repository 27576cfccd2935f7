//! Campaign manager (admin), tracking-link redirects, clicks and impressions.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use trailmark_core::protocol::DeepLink;

use crate::domain::attribution::OsFamily;
use crate::domain::enrich;
use crate::error::ApiError;
use crate::ingest::{self, client_ip};
use crate::storage::{Campaign, ClickRecord, Destinations, LinkAudit, LinkRecord, StorageError, Utm};
use crate::{AppState, admin_auth};

/// Largest body of a campaign or link request.
const MAX_LINK_BODY: usize = 16 * 1024;
/// Longest destination URL.
const MAX_URL: usize = 2048;
/// Longest name, utm value or click parameter.
const MAX_TEXT: usize = 256;
/// Most query parameters read from a click URL.
const MAX_CLICK_PARAMS: usize = 64;

pub(crate) fn storage_error(e: StorageError) -> ApiError {
    match e {
        StorageError::Busy => ApiError::unavailable(1, "the server is busy; retry shortly"),
        other => ApiError::internal(other),
    }
}

/// Parses a JSON body into `T`, with serde's message on failure.
pub(crate) fn parse_as<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value = ingest::parse_json(body, 8)?;
    serde_json::from_value(value).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

fn respond(result: Result<(StatusCode, Value), ApiError>) -> Response {
    match result {
        Ok((status, body)) => (status, axum::Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.trim().is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("{field} must be 1 to {max} characters without control characters"),
        ));
    }
    Ok(())
}

/// Destinations are absolute `http(s)` URLs or app schemes; never `javascript:`, `data:` and
/// the like.
fn check_url(field: &str, value: &str) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::bad_request("invalid_destination", format!("{field}: {why}"));
    if value.len() > MAX_URL {
        return Err(bad(&format!("longer than {MAX_URL} bytes")));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("spaces and control characters are not allowed; percent-encode them"));
    }
    let url = url::Url::parse(value).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "javascript" | "data" | "file" | "vbscript" | "blob" | "about" | "filesystem" => {
            Err(bad("this URL scheme is not allowed"))
        }
        "http" | "https" if url.host_str().is_none_or(str::is_empty) => Err(bad("the URL has no host")),
        _ => Ok(()),
    }
}

fn check_link_parts(utm: &Utm, destinations: &Destinations, deep_link: Option<&DeepLink>) -> Result<(), ApiError> {
    for (k, v) in utm.pairs() {
        check_text(k, v, MAX_TEXT)?;
    }
    check_url("destinations.web", &destinations.web)?;
    if let Some(ios) = &destinations.ios {
        check_url("destinations.ios", ios)?;
    }
    if let Some(android) = &destinations.android {
        check_url("destinations.android", android)?;
    }
    if let Some(d) = deep_link {
        check_text("deep_link.path", &d.path, 1024)?;
        if d.params.len() > 32 {
            return Err(ApiError::bad_request("invalid_field", "deep_link.params holds at most 32 entries"));
        }
        for (k, v) in &d.params {
            check_text("deep_link.params key", k, MAX_TEXT)?;
            if v.chars().count() > MAX_TEXT {
                return Err(ApiError::bad_request("invalid_field", format!("deep_link.params.{k} is too long")));
            }
        }
    }
    Ok(())
}

fn random_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// An 8-character base-62 code (about 2 × 10^14 values).
fn random_code() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut n = uuid::Uuid::new_v4().as_u128();
    (0..8)
        .map(|_| {
            let c = ALPHABET[(n % 62) as usize] as char;
            n /= 62;
            c
        })
        .collect()
}

pub fn link_url(state: &AppState, code: &str) -> String {
    match &state.config.public_url {
        Some(base) => format!("{}/c/{code}", base.trim_end_matches('/')),
        None => format!("/c/{code}"),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCampaign {
    pub name: String,
    pub network: String,
    #[serde(default)]
    pub app_id: Option<String>,
}

/// `POST /v1/campaigns` `{"name", "network", "app_id"?}` → 201 `{"campaign_id"}`. `app_id`
/// may be left out when the server has exactly one app.
pub async fn create_campaign(State(state): State<Arc<AppState>>, request: Request) -> Response {
    respond(
        async {
            let (parts, body) = request.into_parts();
            admin_auth(&state, &parts.headers)?;
            let body = ingest::read_body(body, MAX_LINK_BODY).await?;
            let req: NewCampaign = parse_as(&body)?;
            let id = new_campaign(&state, req).await?;
            Ok((StatusCode::CREATED, json!({"campaign_id": id})))
        }
        .await,
    )
}

/// Creates a campaign (the API and the dashboard); returns its id.
pub async fn new_campaign(state: &AppState, req: NewCampaign) -> Result<String, ApiError> {
    check_text("name", &req.name, MAX_TEXT)?;
    check_text("network", &req.network, 64)?;
    let app_id = match req.app_id {
        Some(app) if state.config.apps.contains_key(&app) => app,
        Some(app) => return Err(ApiError::bad_request("unknown_app", format!("no app {app:?} is configured"))),
        None if state.config.apps.len() == 1 => state.config.apps.keys().next().cloned().unwrap_or_default(),
        None => {
            return Err(ApiError::bad_request("invalid_body", "app_id is required when several apps exist"));
        }
    };
    let campaign = Campaign {
        campaign_id: random_id("cmp"),
        app_id,
        name: req.name.trim().to_owned(),
        network: req.network.trim().to_owned(),
        created_at: state.config.clock.now(),
    };
    state.tracking.ready(state).await?;
    let id = campaign.campaign_id.clone();
    state.storage.save_campaign(campaign.clone()).await.map_err(storage_error)?;
    state.tracking.lock()?.campaigns.insert(id.clone(), campaign);
    Ok(id)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLink {
    pub campaign_id: String,
    #[serde(default)]
    pub utm: Utm,
    pub destinations: Destinations,
    #[serde(default)]
    pub deep_link: Option<DeepLink>,
}

/// `POST /v1/links` → 201 `{"link_id", "code", "url"}`.
pub async fn create_link(State(state): State<Arc<AppState>>, request: Request) -> Response {
    respond(
        async {
            let (parts, body) = request.into_parts();
            let actor = admin_auth(&state, &parts.headers)?;
            let body = ingest::read_body(body, MAX_LINK_BODY).await?;
            let req: NewLink = parse_as(&body)?;
            Ok((StatusCode::CREATED, new_link(&state, actor, req).await?))
        }
        .await,
    )
}

/// Creates a link and its audit entry (the API and the dashboard); returns
/// `{"link_id", "code", "url"}`.
pub async fn new_link(state: &AppState, actor: String, req: NewLink) -> Result<Value, ApiError> {
    check_link_parts(&req.utm, &req.destinations, req.deep_link.as_ref())?;
    state.tracking.ready(state).await?;
    // The campaign may have been made through another instance sharing the store.
    state.tracking.reload_links(state, std::time::Duration::ZERO).await?;
    let _serial = state.tracking.link_changes.lock().await;
    let now = state.config.clock.now();
    let link = {
        let tracking = state.tracking.lock()?;
        let Some(campaign) = tracking.campaigns.get(&req.campaign_id) else {
            return Err(ApiError::bad_request("unknown_campaign", "no campaign with this id"));
        };
        let mut code = random_code();
        while tracking.by_code.contains_key(&code) {
            code = random_code();
        }
        LinkRecord {
            link_id: random_id("lnk"),
            code,
            campaign_id: campaign.campaign_id.clone(),
            app_id: campaign.app_id.clone(),
            network: campaign.network.clone(),
            utm: req.utm,
            destinations: req.destinations,
            deep_link: req.deep_link,
            enabled: true,
            created_at: now,
            updated_at: now,
        }
    };
    let audit = LinkAudit {
        link_id: link.link_id.clone(),
        at: now,
        actor,
        action: "create".into(),
        before: None,
        after: serde_json::to_value(&link).unwrap_or_default(),
    };
    state.storage.save_link(link.clone(), audit).await.map_err(storage_error)?;
    let body = json!({"link_id": link.link_id, "code": link.code, "url": link_url(state, &link.code)});
    state.tracking.lock()?.put_link(link);
    Ok(body)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkChange {
    #[serde(default)]
    utm: Option<Utm>,
    #[serde(default)]
    destinations: Option<Destinations>,
    #[serde(default)]
    enabled: Option<bool>,
}

/// `PATCH /v1/links/{link_id}`: change utm, destinations, deep link, or `enabled`.
pub async fn update_link(
    State(state): State<Arc<AppState>>,
    Path(link_id): Path<String>,
    request: Request,
) -> Response {
    respond(
        async {
            let (parts, body) = request.into_parts();
            let actor = admin_auth(&state, &parts.headers)?;
            let body = ingest::read_body(body, MAX_LINK_BODY).await?;
            let mut fields: serde_json::Map<String, Value> = parse_as(&body)?;
            // `"deep_link": null` removes it; serde alone would read null as "absent".
            let deep_link = fields.remove("deep_link");
            let change: LinkChange = serde_json::from_value(Value::Object(fields))
                .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
            state.tracking.ready(&state).await?;
            // Edit the stored link, not a copy another instance may have changed since.
            state.tracking.reload_links(&state, std::time::Duration::ZERO).await?;
            let _serial = state.tracking.link_changes.lock().await;
            let before = {
                let tracking = state.tracking.lock()?;
                let i = tracking.by_id.get(&link_id).copied().ok_or_else(link_not_found)?;
                tracking.links[i as usize].clone()
            };
            let mut after = (*before).clone();
            let only_enabled = change.utm.is_none() && change.destinations.is_none() && deep_link.is_none();
            if let Some(utm) = change.utm {
                after.utm = utm;
            }
            if let Some(d) = change.destinations {
                after.destinations = d;
            }
            match deep_link {
                None => {}
                Some(Value::Null) => after.deep_link = None,
                Some(v) => {
                    after.deep_link = Some(
                        serde_json::from_value(v)
                            .map_err(|e| ApiError::bad_request("invalid_body", format!("deep_link: {e}")))?,
                    )
                }
            }
            if let Some(enabled) = change.enabled {
                after.enabled = enabled;
            }
            check_link_parts(&after.utm, &after.destinations, after.deep_link.as_ref())?;
            after.updated_at = state.config.clock.now();
            let action = match (only_enabled, change.enabled) {
                (true, Some(false)) => "disable",
                (true, Some(true)) => "enable",
                _ => "update",
            };
            let audit = LinkAudit {
                link_id: link_id.clone(),
                at: after.updated_at,
                actor,
                action: action.into(),
                before: Some(serde_json::to_value(&*before).unwrap_or_default()),
                after: serde_json::to_value(&after).unwrap_or_default(),
            };
            state.storage.save_link(after.clone(), audit).await.map_err(storage_error)?;
            let body = serde_json::to_value(&after).unwrap_or_default();
            state.tracking.lock()?.put_link(after);
            Ok((StatusCode::OK, body))
        }
        .await,
    )
}

fn link_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no link with this id")
}

/// `GET /v1/links/{link_id}`.
pub async fn get_link(State(state): State<Arc<AppState>>, Path(link_id): Path<String>, headers: HeaderMap) -> Response {
    respond(
        async {
            admin_auth(&state, &headers)?;
            state.tracking.ready(&state).await?;
            let tracking = state.tracking.lock()?;
            let i = tracking.by_id.get(&link_id).copied().ok_or_else(link_not_found)?;
            let link = &tracking.links[i as usize];
            let mut body = serde_json::to_value(&**link).unwrap_or_default();
            body["url"] = json!(link_url(&state, &link.code));
            Ok((StatusCode::OK, body))
        }
        .await,
    )
}

/// `GET /v1/links/{link_id}/audit` → `{"link_id", "entries": [...]}`, oldest first.
pub async fn link_audit(
    State(state): State<Arc<AppState>>,
    Path(link_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    respond(
        async {
            admin_auth(&state, &headers)?;
            state.tracking.ready(&state).await?;
            if !state.tracking.lock()?.by_id.contains_key(&link_id) {
                return Err(link_not_found());
            }
            let entries = state.storage.link_audit(link_id.clone()).await.map_err(storage_error)?;
            Ok((StatusCode::OK, json!({"link_id": link_id, "entries": entries})))
        }
        .await,
    )
}

// ------------------------------------------------------------------------------------------
// Clicks and impressions

/// Ad-network click ids kept with a click.
const NETWORK_CLICK_IDS: &[&str] = &[
    "clickid",
    "click_id",
    "gclid",
    "gbraid",
    "wbraid",
    "fbclid",
    "ttclid",
    "msclkid",
    "twclid",
    "li_fat_id",
    "sccid",
    "irclickid",
    "dclid",
    "yclid",
];
/// Sub-parameters kept with a click.
const SUB_PARAMS: &[&str] = &[
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
    "sub_id",
    "site_id",
    "publisher_id",
    "creative_id",
    "creative",
    "adset_id",
    "adgroup_id",
    "ad_id",
    "placement",
    "keyword",
];
/// Device and advertising ids accepted on a click, with the kind they are stored as, in order of
/// preference.
const DEVICE_PARAMS: &[(&str, &str)] = &[
    ("idfa", "idfa"),
    ("gaid", "gaid"),
    ("adid", "gaid"),
    ("aaid", "gaid"),
    ("android_id", "android_id"),
    ("idfv", "idfv"),
];

/// What a click request says besides the link.
#[derive(Default)]
struct ClickFacts {
    ip: Option<IpAddr>,
    user_agent: Option<String>,
    referrer: Option<String>,
    accept_language: Option<String>,
    device: Option<(String, String)>,
    network_ids: BTreeMap<String, String>,
    sub_params: BTreeMap<String, String>,
    timezone: Option<String>,
    screen: Option<String>,
}

fn clip(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty() && v.len() <= MAX_TEXT && !v.chars().any(char::is_control)).then(|| v.to_owned())
}

impl ClickFacts {
    fn from_request(state: &AppState, headers: &HeaderMap, peer: Option<IpAddr>, query: Option<&str>) -> Self {
        let h = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).and_then(clip_long);
        let mut facts = ClickFacts {
            ip: client_ip(headers, peer, state.config.trust_proxy),
            user_agent: h(header::USER_AGENT),
            referrer: h(header::REFERER),
            accept_language: h(header::ACCEPT_LANGUAGE),
            ..Default::default()
        };
        let pairs = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).take(MAX_CLICK_PARAMS);
        for (k, v) in pairs {
            facts.param(&k, &v);
        }
        facts
    }

    fn param(&mut self, key: &str, value: &str) {
        let Some(v) = clip(value) else { return };
        if let Some((_, kind)) = DEVICE_PARAMS.iter().find(|(k, _)| *k == key) {
            let rank = |kind: &str| DEVICE_PARAMS.iter().position(|(_, k)| *k == kind);
            if self.device.as_ref().is_none_or(|(have, _)| rank(kind) < rank(have)) {
                self.device = Some(((*kind).to_owned(), v.to_ascii_lowercase()));
            }
        } else if NETWORK_CLICK_IDS.contains(&key) {
            self.network_ids.insert(key.to_owned(), v);
        } else if SUB_PARAMS.contains(&key) {
            self.sub_params.insert(key.to_owned(), v);
        } else if key == "tz" {
            self.timezone = Some(v);
        } else if key == "screen" {
            self.screen = Some(v.to_ascii_lowercase());
        }
    }
}

fn clip_long(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.chars().take(1024).collect())
}

/// Why a click was not recorded (the visitor is redirected all the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotRecorded {
    Bot,
    RateLimited,
}

/// The click id of a recorded touch, or why none was recorded; with the visitor's OS family.
type Recorded = Result<(String, OsFamily), (NotRecorded, OsFamily)>;

/// Records a click or impression on link `link_id`: flooding flags, the index, storage.
/// Returns the click id, or why nothing was recorded; with the visitor's OS family either way.
async fn record(
    state: &AppState,
    link_id: &str,
    kind: &str,
    source: &str,
    facts: ClickFacts,
) -> Result<Recorded, ApiError> {
    let ip = facts.ip;
    let ua = facts.user_agent.as_deref();
    let parsed = ua.map(enrich::parse_user_agent).unwrap_or_default();
    let os = OsFamily::of(parsed.os.as_deref());
    // A network's server-to-server click often has no user agent; that alone is not a bot.
    let bot = !(ua.is_none() && source == "s2s") && enrich::is_bot(ua, &parsed);
    if bot {
        metrics::counter!("trailmark_bot_clicks_total", "kind" => kind.to_owned()).increment(1);
        return Ok(Err((NotRecorded::Bot, os)));
    }
    if state.check_ip_rate(facts.ip).is_err() {
        metrics::counter!("trailmark_clicks_rate_limited_total").increment(1);
        return Ok(Err((NotRecorded::RateLimited, os)));
    }
    let now = state.config.clock.now();
    let geo_tz = facts.ip.and_then(|ip| state.geo.lookup(ip).time_zone);
    let f = &state.config.attribution.fraud;
    let mut click = ClickRecord {
        click_id: uuid::Uuid::new_v4().to_string(),
        kind: kind.to_owned(),
        ts: now,
        ip_enc: facts.ip.and_then(|ip| state.ip_cipher.encrypt(ip)),
        model: ua.and_then(enrich::device_model),
        os: parsed.os,
        os_version: parsed.os_version,
        locale: facts.accept_language.as_deref().map(crate::domain::attribution::matching::normalize_locale),
        timezone: facts.timezone.or(geo_tz),
        screen: facts.screen,
        device_kind: facts.device.as_ref().map(|(k, _)| k.clone()),
        device_id: facts.device.map(|(_, v)| v),
        network_ids: json!(facts.network_ids),
        sub_params: json!(facts.sub_params),
        user_agent: facts.user_agent,
        referrer: facts.referrer,
        accept_language: facts.accept_language,
        source: source.to_owned(),
        ..Default::default()
    };
    {
        let mut tracking = state.tracking.lock()?;
        let i = tracking.by_id.get(link_id).copied().ok_or_else(link_not_found)?;
        let link = tracking.links[i as usize].clone();
        if !link.enabled {
            return Err(link_not_found());
        }
        click.app_id = link.app_id.clone();
        click.link_id = link.link_id.clone();
        click.campaign_id = link.campaign_id.clone();
        if kind == "click" {
            click.flags = tracking.flood_flags(
                facts.ip,
                click.device_id.as_deref(),
                now,
                f.max_clicks_per_ip_hour,
                f.max_clicks_per_device_hour,
            );
        }
        // With a shared click cache the decisions read it, not this instance's index.
        if state.click_cache.is_none() {
            tracking.index_touch(&click, facts.ip);
            metrics::gauge!("trailmark_touch_index_entries").set(tracking.index.len() as f64);
        }
    }
    if click.flags != 0 {
        metrics::counter!("trailmark_flooding_clicks_total").increment(1);
    }
    metrics::counter!("trailmark_clicks_total", "kind" => kind.to_owned(), "source" => source.to_owned()).increment(1);
    let id = click.click_id.clone();
    if let Some(cache) = &state.click_cache
        && let Err(e) = cache.record(crate::clickcache::CachedTouch::of(&click), ip).await
    {
        // Stored and indexed here all the same; other instances cannot match it.
        tracing::warn!(error = %e, "click not in the shared click cache");
    }
    if let Err(e) = state.storage.record_touch(click) {
        // The click is in the index and the visitor is redirected; only its row is missing.
        metrics::counter!("trailmark_clicks_unpersisted_total").increment(1);
        tracing::warn!(error = %e, "click not persisted");
    }
    Ok(Ok((id, os)))
}

/// Where a visitor on `os` goes: iOS to the App Store destination, Android to the Play
/// destination with the install referrer, everyone else to the web destination with
/// `tm_click_id`. Only the link record decides the destination.
pub fn destination(link: &LinkRecord, os: OsFamily, click_id: Option<&str>) -> String {
    let web = || match click_id {
        Some(id) => append_query(&link.destinations.web, &[("tm_click_id", id)]),
        None => link.destinations.web.clone(),
    };
    match os {
        OsFamily::Ios => link.destinations.ios.clone().unwrap_or_else(web),
        OsFamily::Android => match &link.destinations.android {
            Some(play) => {
                let mut referrer = url::form_urlencoded::Serializer::new(String::new());
                if let Some(id) = click_id {
                    referrer.append_pair("tm_click_id", id);
                }
                for (k, v) in link.utm.pairs() {
                    referrer.append_pair(k, v);
                }
                append_query(play, &[("referrer", &referrer.finish())])
            }
            None => web(),
        },
        _ => web(),
    }
}

/// Appends URL-encoded pairs to the query of a destination (validated as a URL when the link
/// was saved), before any fragment.
fn append_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let (head, fragment) = match base.find('#') {
        Some(i) => base.split_at(i),
        None => (base, ""),
    };
    let mut out = String::with_capacity(base.len() + 64);
    out.push_str(head);
    let mut sep = if !head.contains('?') {
        '?'
    } else if head.ends_with('?') || head.ends_with('&') {
        '\0'
    } else {
        '&'
    };
    for (k, v) in pairs {
        if sep != '\0' {
            out.push(sep);
        }
        out.extend(url::form_urlencoded::byte_serialize(k.as_bytes()));
        out.push('=');
        out.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
        sep = '&';
    }
    out.push_str(fragment);
    out
}

fn redirect(location: &str) -> Response {
    let mut response = StatusCode::FOUND.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn peer(request: &Request) -> Option<IpAddr> {
    request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
}

/// Follows a link: records the click and redirects.
async fn follow(state: &AppState, link: Option<Arc<LinkRecord>>, source: &str, request: Request) -> Response {
    let Some(link) = link.filter(|l| l.enabled) else {
        return ApiError::new(StatusCode::NOT_FOUND, "not_found", "no active link here").into_response();
    };
    let facts = ClickFacts::from_request(state, request.headers(), peer(&request), request.uri().query());
    match record(state, &link.link_id, "click", source, facts).await {
        Ok(Ok((id, os))) => redirect(&destination(&link, os, Some(&id))),
        Ok(Err((_, os))) => redirect(&destination(&link, os, None)),
        Err(e) => e.into_response(),
    }
}

/// `GET /c/{code}`.
pub async fn click_by_code(State(state): State<Arc<AppState>>, Path(code): Path<String>, request: Request) -> Response {
    if let Err(e) = state.tracking.ready(&state).await {
        return e.into_response();
    }
    let link = match find_link(&state, |t| t.by_code.get(&code).map(|&i| t.links[i as usize].clone())).await {
        Ok(link) => link,
        Err(e) => return e.into_response(),
    };
    follow(&state, link, "redirect", request).await
}

/// A link looked up in the loaded state; on a miss the links are reloaded from storage (another
/// instance may have created it) and looked up again. Links are also reloaded every
/// [`LINK_REFRESH`](crate::tracking::LINK_REFRESH).
async fn find_link(
    state: &AppState,
    by: impl Fn(&crate::tracking::TrackState) -> Option<Arc<LinkRecord>>,
) -> Result<Option<Arc<LinkRecord>>, ApiError> {
    // Another instance (or process) sharing the store may have changed links.
    state.tracking.reload_links(state, crate::tracking::LINK_REFRESH).await?;
    let found = by(&*state.tracking.lock()?);
    if found.is_some() || !state.tracking.reload_after_miss(state).await {
        return Ok(found);
    }
    Ok(by(&*state.tracking.lock()?))
}

fn query_param(request: &Request, name: &str) -> Option<String> {
    url::form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `GET /v1/click?link=<link_id>`.
pub async fn click_by_link(State(state): State<Arc<AppState>>, request: Request) -> Response {
    if let Err(e) = state.tracking.ready(&state).await {
        return e.into_response();
    }
    let id = query_param(&request, "link").unwrap_or_default();
    let link = match find_link(&state, |t| t.by_id.get(&id).map(|&i| t.links[i as usize].clone())).await {
        Ok(link) => link,
        Err(e) => return e.into_response(),
    };
    follow(&state, link, "api", request).await
}

/// `GET /v1/impression?link=<link_id>` → 204: a view-through touchpoint (with the device id
/// from `idfa`/`gaid`/… when the ad server fills it in).
pub async fn impression(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let link_id = query_param(&request, "link");
    let peer = peer(&request);
    let (parts, _) = request.into_parts();
    let result = async {
        let link_id =
            link_id.ok_or_else(|| ApiError::bad_request("invalid_query", "the link query parameter is required"))?;
        state.tracking.ready(&state).await?;
        find_link(&state, |t| t.by_id.get(&link_id).map(|&i| t.links[i as usize].clone())).await?;
        let facts = ClickFacts::from_request(&state, &parts.headers, peer, parts.uri.query());
        let _not_counted = record(&state, &link_id, "impression", "impression", facts).await?;
        Ok::<_, ApiError>(())
    }
    .await;
    match result {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::append_query;

    #[test]
    fn query_pairs_are_appended_before_the_fragment() {
        let p = [("tm_click_id", "a b")];
        assert_eq!(append_query("https://x.example/l", &p), "https://x.example/l?tm_click_id=a+b");
        assert_eq!(append_query("https://x.example/l?y=1", &p), "https://x.example/l?y=1&tm_click_id=a+b");
        assert_eq!(append_query("https://x.example/l?", &p), "https://x.example/l?tm_click_id=a+b");
        assert_eq!(append_query("https://x.example/l?y=1#top", &p), "https://x.example/l?y=1&tm_click_id=a+b#top");
        assert_eq!(
            append_query("myapp://open", &[("r", "tm_click_id=1&utm_source=x")]),
            "myapp://open?r=tm_click_id%3D1%26utm_source%3Dx"
        );
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct S2sClick {
    link_id: String,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    accept_language: Option<String>,
    #[serde(default)]
    referrer: Option<String>,
    /// `idfa`, `gaid`, `android_id`, `idfv`.
    #[serde(default)]
    device: BTreeMap<String, String>,
    #[serde(default)]
    network_ids: BTreeMap<String, String>,
    #[serde(default)]
    sub_params: BTreeMap<String, String>,
}

/// `POST /v1/click` (signed by the app's secret): a server-to-server click or impression
/// from an ad network. → 201 `{"click_id"}`, or 200 `{"click_id": null, "reason"}` when not
/// counted.
pub async fn s2s_click(State(state): State<Arc<AppState>>, request: Request) -> Response {
    respond(
        async {
            let (parts, body): (_, Body) = request.into_parts();
            let signed = ingest::read_signed(&state, &parts, body, MAX_LINK_BODY, false).await?;
            let req: S2sClick = parse_as(&signed.body)?;
            let kind = match req.kind.as_deref() {
                None | Some("click") => "click",
                Some("impression") => "impression",
                Some(other) => {
                    return Err(ApiError::bad_request(
                        "invalid_field",
                        format!("kind {other:?}: use click or impression"),
                    ));
                }
            };
            state.tracking.ready(&state).await?;
            let link = find_link(&state, |t| t.by_id.get(&req.link_id).map(|&i| t.links[i as usize].clone())).await?;
            if link.is_none_or(|l| l.app_id != signed.app_id) {
                return Err(link_not_found());
            }
            let ip =
                match req.ip.as_deref() {
                    Some(text) => Some(text.trim().parse::<IpAddr>().map_err(|_| {
                        ApiError::bad_request("invalid_field", format!("ip {text:?} is not an address"))
                    })?),
                    None => None,
                };
            let mut facts = ClickFacts {
                ip,
                user_agent: req.user_agent.as_deref().and_then(clip_long),
                referrer: req.referrer.as_deref().and_then(clip_long),
                accept_language: req.accept_language.as_deref().and_then(clip),
                ..Default::default()
            };
            for (k, v) in &req.device {
                if !DEVICE_PARAMS.iter().any(|(p, _)| p == k) {
                    return Err(ApiError::bad_request("invalid_field", format!("device.{k} is not a known id")));
                }
                facts.param(k, v);
            }
            for (k, v) in req.network_ids.iter().chain(&req.sub_params).take(MAX_CLICK_PARAMS) {
                if let Some(v) = clip(v) {
                    if req.network_ids.contains_key(k) {
                        facts.network_ids.insert(k.chars().take(64).collect(), v);
                    } else {
                        facts.sub_params.insert(k.chars().take(64).collect(), v);
                    }
                }
            }
            // The network's server is the client here: rate-limit by the visitor's address only.
            Ok(match record(&state, &req.link_id, kind, "s2s", facts).await? {
                Ok((id, _)) => (StatusCode::CREATED, json!({"click_id": id})),
                Err((NotRecorded::Bot, _)) => (StatusCode::OK, json!({"click_id": null, "reason": "bot user agent"})),
                Err((NotRecorded::RateLimited, _)) => {
                    (StatusCode::OK, json!({"click_id": null, "reason": "too many clicks from this address"}))
                }
            })
        }
        .await,
    )
}
