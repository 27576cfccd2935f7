//! Events: a received event normalised into the stored row, and a stored event as JSON (the
//! inspector's and the event stream's shape). Pure.

use chrono::DateTime;
use serde_json::{Map, Value, json};
use trailmark_core::protocol::format_millis;

use crate::domain::enrich::{self, Geo};
use crate::domain::records::NewEvent;

/// An RFC 3339 time as Unix ms.
pub fn parse_ms(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text).ok().map(|d| d.timestamp_millis())
}

fn take_str(map: &mut Map<String, Value>, key: &str) -> Option<String> {
    match map.remove(key) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// Turns a schema-valid event into a row: times, lower-cased utm values, OS names, enrichment.
pub fn normalise(
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
    let enrichment = json!({"ua": ua, "geo": geo, "channel": channel});
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

/// The event's `properties.revenue`, if a number, must be finite and at most `max` in absolute
/// value (revenue feeds reports and network postbacks; an unbounded figure from a client would
/// poison both).
pub fn check_revenue(event: &Value, max: f64) -> Result<(), String> {
    match event.pointer("/properties/revenue").and_then(Value::as_f64) {
        Some(r) if !r.is_finite() || r.abs() > max => {
            Err(format!("/properties/revenue: {r} is beyond the server's limit of ±{max}"))
        }
        _ => Ok(()),
    }
}
