//! `POST /v1/event`: authenticate, read, decompress, parse, validate, normalise, enrich, store.

use std::io::Read;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::DateTime;
use serde_json::{Map, Value};
use trailmark_core::protocol::{self, DropReport, IngestResponse, Rejection};

use crate::AppState;
use crate::conversions::{self, Followup};
use crate::domain::enrich::{self, Geo};
use crate::error::ApiError;
use crate::sink;
use crate::storage::{NewEvent, StorageError};

pub async fn handle(State(state): State<Arc<AppState>>, request: Request) -> Response {
    use tracing::Instrument;
    let started = Instant::now();
    let span = crate::trace::request_span("ingest", request.headers());
    let result = ingest(&state, request).instrument(span).await;
    measured("event", started, result)
}

/// Records a request's duration and status in the metrics and turns its result into a 200
/// JSON response or the error's response.
pub(crate) fn measured<T: serde::Serialize>(
    endpoint: &'static str,
    started: Instant,
    result: Result<T, ApiError>,
) -> Response {
    metrics::histogram!("trailmark_request_duration_seconds", "endpoint" => endpoint).record(started.elapsed());
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status,
    };
    metrics::counter!("trailmark_requests_total", "endpoint" => endpoint, "status" => status.as_str().to_owned())
        .increment(1);
    match result {
        Ok(body) => (StatusCode::OK, axum::Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

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
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::too_large(format!("request body exceeds {limit} bytes")))
}

/// Inflates a gzip body, refusing to produce more than `limit` bytes (gzip bombs).
fn gunzip(body: &[u8], limit: usize) -> Result<Vec<u8>, ApiError> {
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

/// Who sent a signed request, and its raw body.
pub(crate) struct Signed {
    pub app_id: String,
    pub ip: Option<IpAddr>,
    pub body: bytes::Bytes,
    /// The signed `X-Trailmark-Timestamp` (the sender's clock, Unix seconds).
    pub sent_at_secs: i64,
}

/// Authenticates a signed request: app id, per-IP rate, body with `limit`, HMAC signature,
/// per-app rate. `per_ip_limit` is off for server-to-server endpoints, whose one address
/// speaks for many users. Shared by every SDK and server-to-server endpoint.
/// Who signed a request and how: the `X-Trailmark-*` headers, or, for a request that cannot
/// set headers (`navigator.sendBeacon`), the `tm_app`, `tm_ts` and `tm_sig` query parameters.
/// The two are never mixed: with the app header present, the query is not read.
pub(crate) struct Credentials {
    pub app: Option<String>,
    pub timestamp: Option<String>,
    pub signature: Option<String>,
    /// Read from the query string (a beacon).
    pub in_query: bool,
}

impl Credentials {
    pub(crate) fn of(parts: &axum::http::request::Parts) -> Self {
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

pub(crate) async fn read_signed(
    state: &AppState,
    parts: &axum::http::request::Parts,
    body: Body,
    limit: usize,
    per_ip_limit: bool,
) -> Result<Signed, ApiError> {
    let headers = &parts.headers;
    let peer = parts.extensions.get::<ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip());
    let ip = client_ip(headers, peer, state.config.trust_proxy);

    let credentials = Credentials::of(parts);
    let app_id = credentials.app.ok_or_else(|| {
        ApiError::unauthorized(
            "missing_app",
            format!("missing {} header (or {} query parameter)", protocol::HEADER_APP, protocol::QUERY_APP),
        )
    })?;
    let Some(app) = state.config.apps.get(&app_id) else {
        return Err(ApiError::unauthorized("unknown_app", "unknown app id"));
    };
    if per_ip_limit {
        state.check_ip_rate(ip)?;
    }
    let raw = read_body(body, limit).await?;
    protocol::verify_signature(
        app.secret.as_bytes(),
        credentials.timestamp.as_deref(),
        credentials.signature.as_deref(),
        &raw,
        state.config.clock.now() / 1000,
    )
    .map_err(|e| {
        metrics::counter!("trailmark_auth_failures_total", "app" => app_id.clone()).increment(1);
        ApiError::unauthorized("invalid_signature", e.to_string())
    })?;
    state.check_app_rate(&app_id)?;
    if credentials.in_query {
        metrics::counter!("trailmark_beacon_requests_total", "app" => app_id.clone()).increment(1);
    }
    let sent_at_secs = credentials.timestamp.and_then(|t| t.trim().parse().ok()).unwrap_or(0);
    Ok(Signed { app_id, ip, body: raw, sent_at_secs })
}

async fn ingest(state: &AppState, request: Request) -> Result<IngestResponse, ApiError> {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let limits = &state.config.limits;
    let Signed { app_id, ip, body: raw, .. } = read_signed(state, &parts, body, limits.max_body_bytes, true).await?;

    let decoded;
    let body: &[u8] = match header_str(headers, header::CONTENT_ENCODING.as_str()).map(str::trim) {
        None | Some("") | Some("identity") => &raw,
        Some(enc) if enc.eq_ignore_ascii_case("gzip") => {
            decoded = gunzip(&raw, limits.max_body_bytes)?;
            &decoded
        }
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding {other:?} is not supported; use gzip or none"),
            ));
        }
    };
    let value = parse_json(body, limits.max_json_depth)?;

    let received_at = state.config.clock.now();
    let is_batch = value.get("batch").is_some();
    if is_batch {
        state.validators.envelope(&value).map_err(|e| ApiError::bad_request("invalid_envelope", e))?;
    }
    let (events, sent_at, dropped) = match value {
        Value::Object(mut map) if is_batch => {
            let Some(Value::Array(batch)) = map.remove("batch") else { unreachable!("schema checked") };
            if batch.len() > protocol::MAX_BATCH_EVENTS {
                return Err(ApiError::too_large(format!(
                    "batch holds {} events; the limit is {}",
                    batch.len(),
                    protocol::MAX_BATCH_EVENTS
                )));
            }
            let sent_at = map.get("sent_at").and_then(Value::as_str).and_then(parse_ms);
            let dropped: DropReport =
                map.remove("dropped").and_then(|d| serde_json::from_value(d).ok()).unwrap_or_default();
            (batch, sent_at, dropped)
        }
        Value::Object(map) => (vec![Value::Object(map)], None, DropReport::default()),
        _ => return Err(ApiError::bad_request("invalid_body", "body must be an event object or a batch envelope")),
    };
    record_sdk_drops(&app_id, &dropped);

    // Per request, not per event: the same client sent them all.
    let ua = header_str(headers, header::USER_AGENT.as_str()).map(enrich::parse_user_agent).unwrap_or_default();
    let geo = ip.map(|ip| state.geo.lookup(ip)).unwrap_or_default();
    let ip_enc = ip.and_then(|ip| state.ip_cipher.encrypt(ip));

    let mut response = IngestResponse::default();
    let mut fresh = Vec::with_capacity(events.len());
    let mut followups = Vec::new();
    for (index, event) in events.into_iter().enumerate() {
        let size = protocol::serialized_len(&event);
        if size > protocol::MAX_EVENT_BYTES {
            let reason = format!("event is {size} bytes; the limit is {}", protocol::MAX_EVENT_BYTES);
            response.rejected.push(Rejection { index, reason });
            continue;
        }
        let follow = Followup::from_event(&event, &state.config.attribution.conversion_events);
        let revenue = follow.and_then(|_| event.pointer("/properties/revenue").and_then(Value::as_f64));
        let currency =
            follow.and_then(|_| event.pointer("/properties/currency").and_then(Value::as_str)).map(str::to_owned);
        match state
            .validators
            .event(&app_id, &event)
            .and_then(|_| normalise(&app_id, event, sent_at, received_at, &ua, &geo, ip_enc.clone()))
        {
            Ok(e) => {
                if let Some((click_id, _)) = follow {
                    followups.push(Followup {
                        event_id: e.event_id.clone(),
                        event_type: e.event_type.clone(),
                        anonymous_id: e.anonymous_id.clone(),
                        user_id: e.user_id.clone(),
                        ts: e.corrected_ts,
                        click_id,
                        revenue,
                        currency,
                    });
                }
                fresh.push(e)
            }
            Err(reason) => response.rejected.push(Rejection { index, reason }),
        }
    }
    let received = fresh.len() + response.rejected.len();
    metrics::counter!("trailmark_events_received_total", "app" => app_id.clone()).increment(received as u64);
    if !response.rejected.is_empty() {
        metrics::counter!("trailmark_events_rejected_total", "app" => app_id.clone())
            .increment(response.rejected.len() as u64);
    }
    if !fresh.is_empty() {
        let records: Option<Vec<_>> = state.event_sink.as_ref().map(|_| fresh.iter().map(sink::event_record).collect());
        let span = crate::trace::store_span("events", fresh.len());
        let outcome =
            tracing::Instrument::instrument(state.storage.insert(fresh), span).await.map_err(|e| match e {
                StorageError::Busy => {
                    metrics::counter!("trailmark_writer_busy_total").increment(1);
                    ApiError::unavailable(1, "the server is catching up; retry shortly")
                }
                other => ApiError::internal(other),
            })?;
        response.accepted = outcome.iter().filter(|new| **new).count() as u64;
        response.duplicates = outcome.len() as u64 - response.accepted;
        // Published once durable, and only the first time (a duplicate was published before).
        if let (Some(sink), Some(records)) = (&state.event_sink, records) {
            sink.publish(records.into_iter().zip(&outcome).filter(|(_, new)| **new).map(|(r, _)| r).collect());
        }
        // Duplicates too: a retried request finishes follow-ups a crash interrupted.
        conversions::process(state, &app_id, followups).await;
    }
    state.dashboard.live.events(response.accepted, response.rejected.len() as u64);
    metrics::counter!("trailmark_events_accepted_total", "app" => app_id.clone()).increment(response.accepted);
    metrics::counter!("trailmark_events_duplicate_total", "app" => app_id.clone()).increment(response.duplicates);
    Ok(response)
}

fn record_sdk_drops(app: &str, d: &DropReport) {
    for (reason, n) in [
        ("queue_full", d.queue_full),
        ("expired", d.expired),
        ("pre_consent_full", d.pre_consent_full),
        ("invalid", d.invalid),
        ("backpressure", d.backpressure),
    ] {
        if n > 0 {
            metrics::counter!("trailmark_sdk_dropped_events_total", "app" => app.to_owned(), "reason" => reason)
                .increment(n);
        }
    }
}

fn parse_ms(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text).ok().map(|d| d.timestamp_millis())
}

fn take_str(map: &mut Map<String, Value>, key: &str) -> Option<String> {
    match map.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// Turns a schema-valid event into a row: times, lower-cased utm values, OS names, enrichment.
fn normalise(
    app_id: &str,
    event: Value,
    sent_at: Option<i64>,
    received_at: i64,
    ua: &enrich::UserAgent,
    geo: &Geo,
    ip_enc: Option<Vec<u8>>,
) -> Result<NewEvent, String> {
    let Value::Object(mut map) = event else { return Err("event must be an object".into()) };
    let timestamp = map.get("timestamp").and_then(Value::as_str).unwrap_or_default().to_owned();
    let client_ts = parse_ms(&timestamp).ok_or_else(|| format!("/timestamp: {timestamp:?} is not an RFC 3339 time"))?;
    let corrected_ts = match sent_at {
        Some(sent) => received_at - (sent - client_ts),
        None => client_ts,
    };
    let mut context = match map.remove("context") {
        Some(Value::Object(c)) => c,
        _ => Map::new(),
    };
    if let Some(Value::Object(campaign)) = context.get_mut("campaign") {
        for (key, value) in campaign.iter_mut() {
            if key.starts_with("utm_")
                && let Value::String(s) = value
            {
                *s = s.to_lowercase();
            }
        }
    }
    if let Some(Value::Object(device)) = context.get_mut("device")
        && let Some(Value::String(os)) = device.get_mut("os")
    {
        *os = enrich::normalize_os(os);
    }
    let properties = match map.remove("properties") {
        Some(Value::Object(p)) => p,
        _ => Map::new(),
    };
    let referrer = properties.get("referrer").and_then(Value::as_str);
    let channel = enrich::channel(context.get("campaign"), referrer);
    let enrichment = serde_json::json!({"ua": ua, "geo": geo, "channel": channel});
    Ok(NewEvent {
        app_id: app_id.to_owned(),
        event_id: take_str(&mut map, "event_id").unwrap_or_default().to_ascii_lowercase(),
        event_type: take_str(&mut map, "type").unwrap_or_default(),
        anonymous_id: take_str(&mut map, "anonymous_id").unwrap_or_default(),
        user_id: take_str(&mut map, "user_id"),
        device_id: take_str(&mut map, "device_id"),
        session_id: take_str(&mut map, "session_id"),
        client_ts,
        corrected_ts,
        received_at,
        properties: Value::Object(properties).to_string(),
        context: Value::Object(context).to_string(),
        enrichment: enrichment.to_string(),
        ip_enc,
    })
}
