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

/// The client address: the socket peer or, behind `trusted_hops` proxies of yours (0: none),
/// the `X-Forwarded-For` entry that many from the end (each proxy appends the address it was
/// reached from; entries before those are whatever the client wrote). A shorter header than
/// the proxies would write is not trusted: the peer is used.
pub fn client_ip(headers: &HeaderMap, peer: Option<IpAddr>, trusted_hops: usize) -> Option<IpAddr> {
    if trusted_hops > 0 {
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        if let Some(ip) = entries.len().checked_sub(trusted_hops).and_then(|i| forwarded_ip(entries[i])) {
            return Some(ip);
        }
    }
    peer
}

/// An `X-Forwarded-For` entry's address: `198.51.100.7`, `2001:db8::1`, or with a port as some
/// load balancers write it (`198.51.100.7:4711`, `[2001:db8::1]:443`).
fn forwarded_ip(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry.parse().ok().or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

/// Reads at most `limit` bytes of body within `timeout`; more is a 413, slower a 408.
pub async fn read_body(body: Body, limit: usize, timeout: std::time::Duration) -> Result<bytes::Bytes, ApiError> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) if is_length_limit(&e) => Err(ApiError::too_large(format!("request body exceeds {limit} bytes"))),
        Ok(Err(_)) => Err(ApiError::bad_request("invalid_body", "the request body could not be read")),
        Err(_) => Err(ApiError::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!("the request body did not arrive within {} s", timeout.as_secs()),
        )),
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
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

/// The body as sent (`Content-Encoding` none or `identity`) or inflated (`gzip`, at most
/// `limit` bytes); another encoding is a 415.
pub fn decode_body(headers: &HeaderMap, raw: bytes::Bytes, limit: usize) -> Result<bytes::Bytes, ApiError> {
    match header_str(headers, header::CONTENT_ENCODING.as_str()).map(str::trim) {
        None | Some("") | Some("identity") => Ok(raw),
        Some(enc) if enc.eq_ignore_ascii_case("gzip") => Ok(gunzip(&raw, limit)?.into()),
        Some(other) => Err(Refusal::new(
            RefusalKind::Unsupported,
            "unsupported_encoding",
            format!("Content-Encoding {other:?} is not supported; use gzip or none"),
        )
        .into()),
    }
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
    /// The app id, or for a network-signed request the network's name.
    pub app: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    /// Read from the query string (a beacon).
    pub in_query: bool,
}

impl Credentials {
    /// The credentials of an ad network's request: `X-Trailmark-Network` and the signature
    /// headers (never the query string).
    pub fn of_network(parts: &axum::http::request::Parts) -> Self {
        let headers = &parts.headers;
        Credentials {
            app: header_str(headers, protocol::HEADER_NETWORK).map(str::to_owned),
            timestamp: header_str(headers, protocol::HEADER_TIMESTAMP).map(str::to_owned),
            signature: header_str(headers, protocol::HEADER_SIGNATURE).map(str::to_owned),
            in_query: false,
        }
    }

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

/// The socket peer's address.
pub(crate) fn peer(parts: &Parts) -> Option<IpAddr> {
    parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
}

impl FromRequestParts<Arc<AppState>> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        Ok(ClientIp(client_ip(&parts.headers, peer(parts), state.config.trusted_hops())))
    }
}

/// An admin caller: `Authorization: Bearer <admin key or JWT>`; holds who it is, for audit logs.
/// An address that failed too often in the current window is refused with 429 before its
/// token is looked at.
pub struct AdminAuth(pub String);

impl FromRequestParts<Arc<AppState>> for AdminAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, ApiError> {
        let ip = client_ip(&parts.headers, peer(parts), state.config.trusted_hops());
        let now = state.config.clock.now();
        state.limits.admin.check(ip, now)?;
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::unauthorized("missing_credentials", "admin endpoints need Authorization: Bearer <token>")
            })?;
        state.check_admin_token(token).map(AdminAuth).inspect_err(|_| state.limits.admin.failed(ip, now))
    }
}

/// What a signed endpoint accepts.
pub trait SignedPolicy: Send + Sync + 'static {
    /// Largest body, as sent.
    fn limit(state: &AppState) -> usize;
    /// Whether the sender's address is rate-limited (before the signature check).
    const PER_IP: bool = true;
    /// Whether a gzip `Content-Encoding` is inflated (capped at the same limit).
    const GZIP: bool = false;
    /// Signed by an ad network (`X-Trailmark-Network`, its own secret and rate bucket) rather
    /// than an app.
    const NETWORK: bool = false;
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

/// `POST /v1/click` from an ad network's server, signed with the network's secret: 16 KB.
pub struct S2sPolicy;
impl SignedPolicy for S2sPolicy {
    fn limit(_: &AppState) -> usize {
        16 * 1024
    }
    const NETWORK: bool = true;
}

/// A request signed with an app's (or, for [`SignedPolicy::NETWORK`], a network's) secret,
/// authenticated in order: app id, per-IP rate, body within the limit, HMAC signature over the
/// raw bytes, per-app (per-network) rate; then inflated when gzip. Shared by every SDK and
/// server-to-server endpoint.
pub struct SignedBody<P> {
    /// The app id, or the network's name for a network-signed request.
    pub app_id: String,
    /// Signed with the app's server secret (its owner's backend), not the client secret.
    pub server_signed: bool,
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
        let ip = client_ip(headers, peer(&parts), state.config.trusted_hops());
        let (credentials, secret, server_secret) = if P::NETWORK {
            let credentials = Credentials::of_network(&parts);
            let name = credentials.app.as_deref().ok_or_else(|| {
                ApiError::unauthorized(
                    "missing_network",
                    format!("server-to-server clicks are signed by a network: missing {}", protocol::HEADER_NETWORK),
                )
            })?;
            let Some(network) = state.config.networks.get(name) else {
                return Err(ApiError::unauthorized("unknown_network", "unknown network"));
            };
            (credentials, network.secret.as_bytes(), None)
        } else {
            let credentials = Credentials::of(&parts);
            let app_id = credentials.app.as_deref().ok_or_else(|| {
                ApiError::unauthorized(
                    "missing_app",
                    format!("missing {} header (or {} query parameter)", protocol::HEADER_APP, protocol::QUERY_APP),
                )
            })?;
            let Some(app) = state.config.apps.get(app_id) else {
                return Err(ApiError::unauthorized("unknown_app", "unknown app id"));
            };
            (credentials, app.secret.as_bytes(), app.server_secret.as_deref().map(str::as_bytes))
        };
        let app_id = credentials.app.clone().unwrap_or_default();
        if P::PER_IP {
            state.limits.check_ip(ip)?;
        }
        let limit = P::limit(state);
        let raw = read_body(body, limit, state.config.body_timeout()).await?;
        let now_ms = state.config.clock.now();
        let verify = |secret: &[u8]| {
            protocol::verify_signature(
                secret,
                credentials.timestamp.as_deref(),
                credentials.signature.as_deref(),
                &raw,
                now_ms.div_euclid(1000),
            )
        };
        let mut server_signed = false;
        verify(secret)
            .or_else(|e| match (e, server_secret) {
                (protocol::SignatureError::Mismatch, Some(server)) => {
                    server_signed = true;
                    verify(server)
                }
                (e, _) => Err(e),
            })
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
        if P::NETWORK {
            state.limits.check_network(&app_id)?;
        } else {
            state.limits.check_app(&app_id)?;
        }
        if credentials.in_query {
            metrics::counter!("trailmark_beacon_requests_total", "app" => app_id.clone()).increment(1);
        }
        let body = if P::GZIP { decode_body(headers, raw, limit)? } else { raw };
        let sent_at_secs = credentials.timestamp.and_then(|t| t.trim().parse().ok()).unwrap_or(0);
        Ok(SignedBody { app_id, server_signed, ip, body, sent_at_secs, _policy: PhantomData })
    }
}

/// A body read with a limit, for admin and form endpoints.
pub struct Limited<const N: usize>(pub bytes::Bytes);

impl<const N: usize> FromRequest<Arc<AppState>> for Limited<N> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, ApiError> {
        read_body(request.into_body(), N, state.config.body_timeout()).await.map(Limited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_entry_the_trusted_proxies_wrote() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "6.6.6.6, 198.51.100.7:4711, 10.0.0.1".parse().unwrap());
        headers.append("x-forwarded-for", "[2001:db8::1]:443".parse().unwrap());
        let peer = Some("192.0.2.1".parse().unwrap());
        assert_eq!(client_ip(&headers, peer, 0), peer, "no proxy trusted");
        assert_eq!(client_ip(&headers, peer, 1), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(client_ip(&headers, peer, 2), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(client_ip(&headers, peer, 3), Some("198.51.100.7".parse().unwrap()));
        assert_eq!(client_ip(&headers, peer, 9), peer, "a shorter chain than the proxies write");
        let mut junk = HeaderMap::new();
        junk.insert("x-forwarded-for", "unknown".parse().unwrap());
        assert_eq!(client_ip(&junk, peer, 1), peer);
    }
}
