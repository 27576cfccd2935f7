//! Extractors: what every handler needs from a request, read once and refused with the
//! protocol's error shape. [`AdminAuth`] (bearer admin key or JWT), [`SignedBody`] (app id,
//! per-IP rate, body limit, HMAC signature, per-app rate, gzip), [`ClientIp`] (trust-proxy
//! aware), and the JSON body readers.

use std::io::Read;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;
use serde_json::Value;
use trailmark_core::protocol;

use super::AppState;
use super::error::ApiError;
use crate::domain::error::{Refusal, RefusalKind};

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The client address: the socket peer or, behind a trusted proxy, the last `X-Forwarded-For`
/// entry (the one the proxy appended; earlier entries are whatever the client wrote).
pub fn client_ip(headers: &HeaderMap, peer: Option<IpAddr>, trust_proxy: bool) -> Option<IpAddr> {
    if trust_proxy {
        let forwarded = header_str(headers, "x-forwarded-for")
            .and_then(|v| v.rsplit(',').next())
            .and_then(|last| last.trim().parse().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer
}

/// Reads at most `limit` bytes of body; more is a 413.
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(format!("request body exceeds {limit} bytes")))
}

/// Inflates a gzip body, refusing to produce more than `limit` bytes (gzip bombs).
pub fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut out = Vec::with_capacity((body.len() * 4).min(limit + 1));
    let mut decoder = flate2::read::GzDecoder::new(body).take(limit as u64 + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(|e| ApiError::bad_request("invalid_encoding", format!("body is not valid gzip: {e}")))?;
    if out.len() > limit {
        return Err(ApiError::too_large(format!("decompressed body exceeds {limit} bytes")));
    }
    Ok(out)
}

/// Parses the body into JSON with the protocol's error codes.
pub fn parse_json(body: &[u8], max_depth: usize) -> Result<Value, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        ApiError::bad_request("invalid_utf8", format!("body is not valid UTF-8 (at byte {})", e.valid_up_to()))
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| {
        if e.to_string().contains("recursion limit") {
            ApiError::bad_request("too_deep", format!("JSON nests deeper than {max_depth} levels"))
        } else {
            ApiError::bad_request("invalid_json", format!("body is not valid JSON: {e}"))
        }
    })?;
    if protocol::nesting_exceeds(&value, max_depth) {
        return Err(ApiError::bad_request("too_deep", format!("JSON nests deeper than {max_depth} levels")));
    }
    Ok(value)
}

/// Who signed a request and how: the `X-Trailmark-*` headers, or, for a request that cannot
/// set headers (`navigator.sendBeacon`), the `tm_app`, `tm_ts` and `tm_sig` query parameters.
/// The two are never mixed: with the app header present, the query is not read.
pub struct Credentials {
    pub app: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    /// Read from the query string (a beacon).
    pub in_query: bool,
}

impl Credentials {
    pub fn of(parts: &axum::http::request::Parts) -> Self {
        let headers = &parts.headers;
        if let Some(app) = header_str(headers, protocol::HEADER_APP) {
            return Credentials {
                app: Some(app.to_owned()),
                timestamp: header_str(headers, protocol::HEADER_TIMESTAMP).map(str::to_owned),
                signature: header_str(headers, protocol::HEADER_SIGNATURE).map(str::to_owned),
                in_query: false,
            };
        }
        let mut found = Credentials { app: None, timestamp: None, signature: None, in_query: true };
        let query = parts.uri.query().unwrap_or("");
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                protocol::QUERY_APP => &mut found.app,
                protocol::QUERY_TIMESTAMP => &mut found.timestamp,
                protocol::QUERY_SIGNATURE => &mut found.signature,
                _ => continue,
            };
            slot.get_or_insert_with(|| value.into_owned());
        }
        found
    }
}

/// Parses a JSON body into `T`, with serde's message on failure (nesting capped at 8 levels).
pub fn parse_as<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value = parse_json(body, 8)?;
    serde_json::from_value(value).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

/// The first value of a query parameter (later repeats are ignored).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// The client's address (see [`client_ip`]).
pub struct ClientIp(pub Option<IpAddr>);

fn peer(parts: &Parts) -> Option<IpAddr> {
    parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
}

impl FromRequestParts<Arc<AppState>> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        Ok(ClientIp(client_ip(&parts.headers, peer(parts), state.config.trust_proxy)))
    }
}

/// An admin caller: `Authorization: Bearer <admin key or JWT>`; holds who it is, for audit logs.
pub struct AdminAuth(pub String);

impl FromRequestParts<Arc<AppState>> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("missing_credentials", "admin endpoints need Authorization: Bearer <token>")
            })?;
        state.check_admin_token(token).map(AdminAuth)
    }
}

/// What a signed endpoint accepts.
pub trait SignedPolicy: Send + Sync + 'static {
    /// Largest body, as sent.
    fn limit(state: &AppState) -> usize;
    /// Whether the sender's address is rate-limited. Off for server-to-server endpoints, whose
    /// one address speaks for many users.
    const PER_IP: bool = true;
    /// Whether a gzip `Content-Encoding` is inflated (capped at the same limit).
    const GZIP: bool = false;
}

/// `POST /v1/event`: the configured body limit, gzip.
pub struct EventPolicy;
impl SignedPolicy for EventPolicy {
    fn limit(state: &AppState) -> usize {
        state.config.limits.max_body_bytes
    }
    const GZIP: bool = true;
}

/// `POST /v1/install`: 16 KB.
pub struct InstallPolicy;
impl SignedPolicy for InstallPolicy {
    fn limit(_: &AppState) -> usize {
        16 * 1024
    }
}

/// `POST /v1/click` from an ad network's server: 16 KB, no per-address limit.
pub struct S2sPolicy;
impl SignedPolicy for S2sPolicy {
    fn limit(_: &AppState) -> usize {
        16 * 1024
    }
    const PER_IP: bool = false;
}

/// A request signed with an app's secret, authenticated in order: app id, per-IP rate, body
/// within the limit, HMAC signature over the raw bytes, per-app rate; then inflated when
/// gzip. Shared by every SDK and server-to-server endpoint.
pub struct SignedBody<P> {
    pub app_id: String,
    pub ip: Option<IpAddr>,
    /// The body, inflated when it was gzip.
    pub body: bytes::Bytes,
    /// The signed `X-Trailmark-Timestamp` (the sender's clock, Unix seconds).
    pub sent_at_secs: i64,
    _policy: PhantomData<P>,
}

impl<P: SignedPolicy> FromRequest<Arc<AppState>> for SignedBody<P> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let (parts, body) = request.into_parts();
        let headers = &parts.headers;
        let ip = client_ip(headers, peer(&parts), state.config.trust_proxy);
        let credentials = Credentials::of(&parts);
        let app_id = credentials.app.ok_or_else(|| {
            ApiError::unauthorized(
                "missing_app",
                format!("missing {} header (or {} query parameter)", protocol::HEADER_APP, protocol::QUERY_APP),
            )
        })?;
        let Some(app) = state.config.apps.get(&app_id) else {
            return Err(ApiError::unauthorized("unknown_app", "unknown app id"));
        };
        if P::PER_IP {
            state.limits.check_ip(ip)?;
        }
        let limit = P::limit(state);
        let raw = read_body(body, limit).await?;
        let now_ms = state.config.clock.now();
        protocol::verify_signature(
            app.secret.as_bytes(),
            credentials.timestamp.as_deref(),
            credentials.signature.as_deref(),
            &raw,
            now_ms.div_euclid(1000),
        )
        .map_err(|e| {
            metrics::counter!("trailmark_auth_failures_total", "app" => app_id.clone()).increment(1);
            // A stale timestamp is a wrong device clock, not wrong credentials: its own code,
            // and the server's time, so the SDK can correct its clock and sign again at once.
            let code = match e {
                protocol::SignatureError::Stale { .. } => "stale_timestamp",
                _ => "invalid_signature",
            };
            ApiError::unauthorized(code, e.to_string()).with_server_time(now_ms)
        })?;
        state.limits.check_app(&app_id)?;
        if credentials.in_query {
            metrics::counter!("trailmark_beacon_requests_total", "app" => app_id.clone()).increment(1);
        }
        let body = if P::GZIP {
            match header_str(headers, header::CONTENT_ENCODING.as_str()).map(str::trim) {
                None | Some("") | Some("identity") => raw,
                Some(enc) if enc.eq_ignore_ascii_case("gzip") => gunzip(&raw, limit)?.into(),
                Some(other) => {
                    return Err(Refusal::new(
                        RefusalKind::Unsupported,
                        "unsupported_encoding",
                        format!("Content-Encoding {other:?} is not supported; use gzip or none"),
                    )
                    .into());
                }
            }
        } else {
            raw
        };
        let sent_at_secs = credentials.timestamp.and_then(|t| t.trim().parse().ok()).unwrap_or(0);
        Ok(SignedBody { app_id, ip, body, sent_at_secs, _policy: PhantomData })
    }
}

/// A body read with a limit, for admin and form endpoints.
pub struct Limited<const N: usize>(pub bytes::Bytes);

impl<const N: usize> FromRequest<Arc<AppState>> for Limited<N> {
    type Rejection = ApiError;

    async fn from_request(request: Request, _: &Arc<AppState>) -> Result<Self, ApiError> {
        read_body(request.into_body(), N).await.map(Limited)
    }
}
