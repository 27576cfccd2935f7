//! The live dashboard at `/dashboard`: server-rendered HTML (maud escapes every value), one
//! small script for the live counters (server-sent events), no inline script or style (a strict
//! Content-Security-Policy backs the escaping).
//!
//! Login takes the admin key (or an admin JWT) and sets an `HttpOnly`, `SameSite=Strict`
//! session cookie; every form carries the session's CSRF token and must come from the
//! dashboard's own origin.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

mod charts;
mod pages;

use super::AppState;
use super::error::ApiError;
use super::extract::{client_ip, read_body};
use crate::domain::enrich::keyed_hash;
use crate::domain::links::{NewCampaign, NewLink};
use crate::domain::records::{Destinations, Utm};
use crate::service::links::{new_campaign, new_link};

const SESSION_COOKIE: &str = "tm_dash";
const LOGIN_COOKIE: &str = "tm_login";
/// A dashboard session lasts this long.
const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Most dashboard sessions at once (the oldest go first).
const MAX_SESSIONS: usize = 1000;
const MAX_FORM: usize = 8192;

const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

// ---------------------------------------------------------------------------------------------
// Sessions.

struct DashSession {
    csrf: String,
    actor: String,
    expires: Instant,
    /// A message for the next page (the outcome of a form).
    flash: Option<(bool, String)>,
}

/// The dashboard's login sessions (in memory; a restart logs out).
#[derive(Default)]
pub(crate) struct Sessions {
    sessions: Mutex<HashMap<String, DashSession>>,
}

fn random_token() -> String {
    use aes_gcm::aead::{OsRng, rand_core::RngCore};
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Equal in constant time (both sides go through one HMAC).
fn same(state: &AppState, a: &str, b: &str) -> bool {
    use hmac::Mac;
    let expected = keyed_hash(&state.config.audit_key, b).finalize().into_bytes();
    keyed_hash(&state.config.audit_key, a).verify_slice(&expected).is_ok()
}

fn secure(state: &AppState) -> &'static str {
    match &state.config.public_url {
        Some(u) if u.starts_with("https://") => "; Secure",
        _ => "",
    }
}

/// The session of a request: (id, csrf, actor).
fn session(state: &AppState, headers: &HeaderMap) -> Option<(String, String, String)> {
    let id = cookie(headers, SESSION_COOKIE)?;
    let mut sessions = state.dashboard.sessions.lock().unwrap_or_else(|p| p.into_inner());
    let s = sessions.get(id)?;
    if s.expires <= Instant::now() {
        sessions.remove(id);
        return None;
    }
    Some((id.to_owned(), s.csrf.clone(), s.actor.clone()))
}

fn set_flash(state: &AppState, id: &str, ok: bool, message: String) {
    if let Some(s) = state.dashboard.sessions.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id) {
        s.flash = Some((ok, message));
    }
}

fn take_flash(state: &AppState, id: &str) -> Option<(bool, String)> {
    state.dashboard.sessions.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id).and_then(|s| s.flash.take())
}

/// The headers every dashboard page carries.
fn protect(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn redirect(to: &str) -> Response {
    protect((StatusCode::SEE_OTHER, [(header::LOCATION, to.to_owned())]).into_response())
}

fn page(status: StatusCode, markup: Markup) -> Response {
    protect((status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], markup.into_string()).into_response())
}

fn error_page(e: &ApiError) -> Response {
    page(
        e.status,
        html! { (DOCTYPE) html lang="en" { head { title { "Trailmark" } link rel="stylesheet" href="/dashboard/style.css"; }
        body { main { h1 { "Trailmark" } p.error { (e.message) } p { a href="/dashboard" { "Back" } } } } } },
    )
}

/// Forms must come from the dashboard's own origin: a browser sends `Origin` on every POST (or at
/// least `Referer`), and it must name the host the request went to (`X-Forwarded-Host` behind a
/// trusted proxy). A POST with neither is refused.
fn same_origin(headers: &HeaderMap, trust_proxy: bool) -> bool {
    let forwarded = trust_proxy
        .then(|| headers.get("x-forwarded-host").and_then(|v| v.to_str().ok()))
        .flatten()
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    let host = forwarded.or_else(|| headers.get(header::HOST).and_then(|v| v.to_str().ok()));
    let host_of = |url: &str| url.split_once("://").map(|(_, rest)| rest.split('/').next().unwrap_or(rest).to_owned());
    let origins: Vec<Option<String>> =
        headers.get_all(header::ORIGIN).iter().map(|o| o.to_str().ok().and_then(host_of)).collect();
    let claimed = if origins.is_empty() {
        match headers.get(header::REFERER).and_then(|v| v.to_str().ok()) {
            Some(referer) => vec![host_of(referer)],
            None => return false,
        }
    } else {
        origins
    };
    claimed.iter().all(|o| o.is_some() && o.as_deref() == host)
}

async fn read_form(state: &AppState, body: axum::body::Body) -> Result<HashMap<String, String>, ApiError> {
    let bytes = read_body(body, MAX_FORM, state.config.body_timeout()).await?;
    Ok(url::form_urlencoded::parse(&bytes).into_owned().collect())
}

/// A POSTed form of a logged-in session with a valid CSRF token: (session id, actor, fields).
async fn checked_form(
    state: &AppState,
    request: Request,
) -> Result<(String, String, HashMap<String, String>), Response> {
    let (parts, body) = request.into_parts();
    let Some((id, csrf, actor)) = session(state, &parts.headers) else {
        return Err(redirect("/dashboard/login"));
    };
    if !same_origin(&parts.headers, state.config.trust_proxy) {
        return Err(error_page(&ApiError::new(StatusCode::FORBIDDEN, "csrf", "this form came from another site")));
    }
    let form = read_form(state, body).await.map_err(|e| error_page(&e))?;
    if !form.get("csrf").is_some_and(|t| same(state, t, &csrf)) {
        metrics::counter!("trailmark_dashboard_csrf_refused_total").increment(1);
        return Err(error_page(&ApiError::new(
            StatusCode::FORBIDDEN,
            "csrf",
            "the form's CSRF token is missing or stale",
        )));
    }
    Ok((id, actor, form))
}

// ---------------------------------------------------------------------------------------------
// Handlers.

pub async fn script() -> Response {
    protect(([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT).into_response())
}

pub async fn style() -> Response {
    protect(([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response())
}

/// `GET /dashboard/login`.
pub async fn login_page(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if session(&state, &headers).is_some() {
        return redirect("/dashboard");
    }
    login_form(&state, None)
}

fn login_form(state: &AppState, error: Option<&str>) -> Response {
    // Login CSRF: the form's token must match a cookie only this origin could set.
    let token = random_token();
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { "Trailmark — sign in" } link rel="stylesheet" href="/dashboard/style.css"; }
            body {
                main.login {
                    h1 { "Trailmark" }
                    @if let Some(e) = error { p.error role="alert" { (e) } }
                    form method="post" action="/dashboard/login" {
                        input type="hidden" name="csrf" value=(token);
                        label { "Admin key " input type="password" name="key" id="key" autocomplete="current-password" required; }
                        button type="submit" id="login" { "Sign in" }
                    }
                }
            }
        }
    };
    let mut response = page(if error.is_some() { StatusCode::UNAUTHORIZED } else { StatusCode::OK }, markup);
    let cookie =
        format!("{LOGIN_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/dashboard; Max-Age=3600{}", secure(state));
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, v);
    }
    response
}

/// `POST /dashboard/login` (`key`, `csrf`).
pub async fn login(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let peer = request.extensions().get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let (parts, body) = request.into_parts();
    let ip = client_ip(&parts.headers, peer, state.config.trusted_hops());
    let now = state.config.clock.now();
    if let Err(e) = state.limits.check_ip(ip).and_then(|_| state.limits.admin.check(ip, now)) {
        return error_page(&e.into());
    }
    if !same_origin(&parts.headers, state.config.trust_proxy) {
        return error_page(&ApiError::new(StatusCode::FORBIDDEN, "csrf", "this form came from another site"));
    }
    let form = match read_form(&state, body).await {
        Ok(f) => f,
        Err(e) => return error_page(&e),
    };
    let csrf_ok = match (form.get("csrf"), cookie(&parts.headers, LOGIN_COOKIE)) {
        (Some(field), Some(cookie)) => same(&state, field, cookie),
        _ => false,
    };
    if !csrf_ok {
        return login_form(&state, Some("The sign-in form expired; try again."));
    }
    let key = form.get("key").map(String::as_str).unwrap_or_default();
    let (actor, token_expiry) = match state.verify_admin_token(key) {
        Ok(found) if !key.is_empty() => found,
        _ => {
            state.limits.admin.failed(ip, now);
            metrics::counter!("trailmark_dashboard_logins_total", "result" => "refused").increment(1);
            return login_form(&state, Some("Wrong key."));
        }
    };
    metrics::counter!("trailmark_dashboard_logins_total", "result" => "ok").increment(1);
    let id = random_token();
    // A session opened with a JWT ends when the token does (12 hours at most).
    let ttl = match token_expiry {
        Some(exp) => SESSION_TTL.min(Duration::from_secs((exp - crate::domain::config::now_ms() / 1000).max(0) as u64)),
        None => SESSION_TTL,
    };
    {
        let mut sessions = state.dashboard.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            id.clone(),
            DashSession { csrf: random_token(), actor: format!("dashboard:{actor}"), expires: now + ttl, flash: None },
        );
    }
    let mut response = redirect("/dashboard");
    let h = response.headers_mut();
    let session = format!(
        "{SESSION_COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/dashboard; Max-Age={}{}",
        ttl.as_secs(),
        secure(&state)
    );
    for c in [session, format!("{LOGIN_COOKIE}=; HttpOnly; SameSite=Strict; Path=/dashboard; Max-Age=0")] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    response
}

/// `POST /dashboard/logout`.
pub async fn logout(State(state): State<Arc<AppState>>, request: Request) -> Response {
    match checked_form(&state, request).await {
        Ok((id, _, _)) => {
            state.dashboard.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            let mut response = redirect("/dashboard/login");
            let clear = format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/dashboard; Max-Age=0");
            if let Ok(v) = HeaderValue::from_str(&clear) {
                response.headers_mut().append(header::SET_COOKIE, v);
            }
            response
        }
        Err(r) => r,
    }
}

/// `GET /dashboard/live`: the live counters as server-sent events, one `counters` event a
/// second.
pub async fn live(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some((id, _, _)) = session(&state, &headers) else {
        return ApiError::unauthorized("not_signed_in", "sign in at /dashboard/login").into_response();
    };
    let stream = futures_util::stream::unfold((state, id, true), |(state, id, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // The stream ends with the session.
        let alive = state
            .dashboard
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .is_some_and(|s| s.expires > Instant::now());
        if !alive {
            return None;
        }
        let event = Event::default().event("counters").data(state.live.snapshot().to_string());
        Some((Ok::<_, Infallible>(event), (state, id, false)))
    });
    protect(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

/// `POST /dashboard/campaigns` (`name`, `network`, `app_id`).
pub async fn create_campaign(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (id, _, form) = match checked_form(&state, request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let field = |k: &str| form.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let req = NewCampaign { name: field("name"), network: field("network"), app_id: form.get("app_id").cloned() };
    match new_campaign(&state, req).await {
        Ok(campaign) => set_flash(&state, &id, true, format!("Campaign {campaign} created.")),
        Err(e) => set_flash(&state, &id, false, format!("Campaign not created: {}", ApiError::from(e).message)),
    }
    redirect("/dashboard#links")
}

/// `POST /dashboard/links`: the link generator. Creates the link through the same code as
/// `POST /v1/links`, audited as the dashboard session's actor.
pub async fn create_link(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let (id, actor, form) = match checked_form(&state, request).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let field = |k: &str| form.get(k).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let req = NewLink {
        campaign_id: field("campaign_id").unwrap_or_default(),
        utm: Utm {
            source: field("utm_source"),
            medium: field("utm_medium"),
            campaign: field("utm_campaign"),
            term: None,
            content: None,
        },
        destinations: Destinations {
            ios: field("ios"),
            android: field("android"),
            web: field("web").unwrap_or_default(),
        },
        deep_link: None,
    };
    match new_link(&state, actor, req).await {
        Ok(link) => set_flash(
            &state,
            &id,
            true,
            format!("Link {} created: {}", link["link_id"].as_str().unwrap_or(""), link["url"].as_str().unwrap_or("")),
        ),
        Err(e) => set_flash(&state, &id, false, format!("Link not created: {}", ApiError::from(e).message)),
    }
    redirect("/dashboard#links")
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.1}%", v * 100.0)).unwrap_or_else(|| "—".into())
}

fn money(v: &Value) -> String {
    v.as_f64().map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into())
}

fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

/// The funnel as an SVG bar chart: one bar per step, its height the share of the first step.
fn funnel_chart(steps: &[Value]) -> Markup {
    let (h, bar, gap) = (240i64, 80i64, 40i64);
    let w = (20 + steps.len() as i64 * (bar + gap)).max(640);
    let first = steps.first().and_then(|s| s["users"].as_u64()).unwrap_or(0).max(1) as f64;
    let desc: Vec<String> = steps
        .iter()
        .map(|s| {
            let share = s["share"].as_f64().map(|v| format!(" ({:.1}%)", v * 100.0)).unwrap_or_default();
            format!("{}: {}{share}", s["type"].as_str().unwrap_or(""), s["users"])
        })
        .collect();
    html! {
        svg id="funnel-chart" class="chart funnel" xmlns="http://www.w3.org/2000/svg" viewBox=(format!("0 0 {w} {}", h + 40))
            role="img" aria-labelledby="funnel-chart-title funnel-chart-desc" {
            title id="funnel-chart-title" { "Funnel: people who did each step in order" }
            desc id="funnel-chart-desc" { (desc.join("; ")) "." }
            @for (i, s) in steps.iter().enumerate() {
                @let users = s["users"].as_u64().unwrap_or(0);
                @let bh = ((users as f64 / first) * (h - 30) as f64).round() as i64;
                @let x = 20 + i as i64 * (bar + gap);
                rect.bar x=(x) y=(h - bh) width=(bar) height=(bh) { title { (desc[i]) } }
                text x=(x + bar / 2) y=(h - bh - 6) text-anchor="middle" { (users) }
                text x=(x + bar / 2) y=(h + 18) text-anchor="middle" { (charts::clip(s["type"].as_str().unwrap_or(""), 16)) }
            }
        }
    }
}

/// `GET /dashboard[?app_id=…][&from=…][&to=…][&bucket=…][&campaign_id=…][&network=…][&model=…]`:
/// the overview.
pub async fn index(State(state): State<Arc<AppState>>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let Some((id, csrf, actor)) = session(&state, &headers) else {
        return redirect("/dashboard/login");
    };
    respond(pages::overview(&state, &uri, &id, &csrf, &actor).await)
}

/// `GET /dashboard/campaign/{campaign_id}[?from=…&to=…]`.
pub async fn campaign(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(campaign_id): axum::extract::Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let Some((_, csrf, actor)) = session(&state, &headers) else {
        return redirect("/dashboard/login");
    };
    respond(pages::campaign(&state, &campaign_id, &uri, &csrf, &actor).await)
}

/// `GET /dashboard/journeys[?app_id=…][&from=…&to=…][&steps=…][&within=…][&conversion=…][&max_steps=…]`.
pub async fn journeys(State(state): State<Arc<AppState>>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let Some((_, csrf, actor)) = session(&state, &headers) else {
        return redirect("/dashboard/login");
    };
    respond(pages::journeys(&state, &uri, &csrf, &actor).await)
}

/// `GET /dashboard/attribution[?app_id=…][&by=…&q=…]`: the attribution explorer.
pub async fn attribution(State(state): State<Arc<AppState>>, uri: axum::http::Uri, headers: HeaderMap) -> Response {
    let Some((_, csrf, actor)) = session(&state, &headers) else {
        return redirect("/dashboard/login");
    };
    respond(pages::explorer(&state, &uri, &csrf, &actor).await)
}

fn respond(result: Result<Markup, ApiError>) -> Response {
    match result {
        Ok(markup) => page(StatusCode::OK, markup),
        Err(e) => error_page(&e),
    }
}
