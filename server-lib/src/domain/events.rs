//! Events: a received event normalised into the stored row, and a stored event as JSON (the
//! inspector's and the event stream's shape). Pure.

use chrono::DateTime;
use serde_json::{Map, Value, json};
use trailmark_core::protocol::format_millis;

use crate::domain::enrich::{self, Geo};
use crate::domain::records::{NewEvent, device_id_form};

/// How far ahead of the server's clock an event's (clock-corrected) time may be: 24 hours.
/// A later time is set to the time the server received the event, and the event is flagged
/// (`enrichment.time`): a device cannot date events into the future, where sessions, reports
/// and retention would never reach them.
pub const MAX_FUTURE_MS: i64 = 24 * 3_600_000;

/// The stored time of an event whose clock-corrected time is `corrected`, received at
/// `received_at`: itself, or `received_at` with the flag to store when it is more than
/// [`MAX_FUTURE_MS`] ahead. Times in the past are kept as they are (retention deletes those
/// older than it keeps at its next run).
pub fn bound_time(corrected: i64, received_at: i64) -> (i64, Option<Value>) {
    if corrected > received_at.saturating_add(MAX_FUTURE_MS) {
        (received_at, Some(json!({"clamped_from": corrected, "reason": "future"})))
    } else {
        (corrected, None)
    }
}

/// Whether a normalised event's time was set back to the server's ([`bound_time`]).
pub fn time_clamped(e: &NewEvent) -> bool {
    e.corrected_ts == e.received_at
        && serde_json::from_str::<Value>(&e.enrichment).is_ok_and(|v| v.pointer("/time/clamped_from").is_some())
}

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

/// What the stored enrichment of every event of one client (a request's sender, or one event's
/// own client) shares, serialised once per client instead of once per event.
#[derive(Debug, Clone)]
pub struct ClientEnrichment {
    ua: String,
    geo: String,
    /// Sent with a write key, unsigned (`"auth": "write_key"`).
    unsigned: bool,
}

impl ClientEnrichment {
    pub fn new(ua: &enrich::UserAgent, geo: &Geo, unsigned: bool) -> Self {
        // Through `Value`, as the objects were printed before: keys sorted.
        let text = |v: Result<Value, serde_json::Error>| v.map_or_else(|_| "{}".into(), |v| v.to_string());
        ClientEnrichment { ua: text(serde_json::to_value(ua)), geo: text(serde_json::to_value(geo)), unsigned }
    }

    /// The enrichment object's text: the same text (keys in order) as building it as a JSON
    /// object and printing it.
    fn text(&self, channel: &str, time: Option<&Value>) -> String {
        let mut out = String::with_capacity(self.ua.len() + self.geo.len() + 64);
        out.push('{');
        if self.unsigned {
            out.push_str(r#""auth":"write_key","#);
        }
        out.push_str(r#""channel":"#);
        out.push_str(&Value::from(channel).to_string());
        out.push_str(r#","geo":"#);
        out.push_str(&self.geo);
        if let Some(time) = time {
            out.push_str(r#","time":"#);
            out.push_str(&time.to_string());
        }
        out.push_str(r#","ua":"#);
        out.push_str(&self.ua);
        out.push('}');
        out
    }
}

/// Turns a schema-valid event into a row: times (corrected for the device's clock skew with
/// `sent_at`, at most [`MAX_FUTURE_MS`] ahead of `received_at`), lower-cased utm values, OS
/// names, enrichment.
pub fn normalise(
    app_id: &str,
    event: Value,
    sent_at: Option<i64>,
    received_at: i64,
    ua: &enrich::UserAgent,
    geo: &Geo,
    ip_enc: Option<Vec<u8>>,
) -> Result<NewEvent, String> {
    normalise_for(app_id, event, sent_at, received_at, &ClientEnrichment::new(ua, geo, false), ip_enc)
}

/// [`normalise`] with the client's part of the enrichment serialised already.
pub fn normalise_for(
    app_id: &str,
    event: Value,
    sent_at: Option<i64>,
    received_at: i64,
    client: &ClientEnrichment,
    ip_enc: Option<Vec<u8>>,
) -> Result<NewEvent, String> {
    let Value::Object(mut map) = event else { return Err("event must be an object".into()) };
    let timestamp = map.get("timestamp").and_then(Value::as_str).unwrap_or_default().to_owned();
    let client_ts = parse_ms(&timestamp).ok_or_else(|| format!("/timestamp: {timestamp:?} is not an RFC 3339 time"))?;
    let corrected_ts = match sent_at {
        Some(sent) => received_at.saturating_sub(sent.saturating_sub(client_ts)),
        None => client_ts,
    };
    let (corrected_ts, clamped) = bound_time(corrected_ts, received_at);
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
    let enrichment = client.text(channel, clamped.as_ref());
    Ok(NewEvent {
        app_id: app_id.to_owned(),
        event_id: take_str(&mut map, "event_id").unwrap_or_default().to_ascii_lowercase(),
        event_type: take_str(&mut map, "type").unwrap_or_default(),
        anonymous_id: take_str(&mut map, "anonymous_id").unwrap_or_default(),
        user_id: take_str(&mut map, "user_id"),
        device_id: take_str(&mut map, "device_id").map(|d| device_id_form(&d)).filter(|d| !d.is_empty()),
        session_id: take_str(&mut map, "session_id"),
        client_ts,
        corrected_ts,
        received_at,
        properties: Value::Object(properties).to_string(),
        context: Value::Object(context).to_string(),
        enrichment,
        ids_enc: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    const HOUR: i64 = 3_600_000;

    fn at(timestamp: i64, sent_at: Option<i64>) -> NewEvent {
        let event = json!({
            "event_id": "6f1c2a8e-3b4d-4f6a-9c1e-2d3f4a5b6c7d",
            "type": "app_open",
            "timestamp": format_millis(timestamp),
            "anonymous_id": "a",
        });
        normalise("app", event, sent_at, NOW, &Default::default(), &Default::default(), None).unwrap()
    }

    fn flag(e: &NewEvent) -> Value {
        serde_json::from_str::<Value>(&e.enrichment).unwrap()["time"].clone()
    }

    #[test]
    fn times_more_than_a_day_ahead_are_set_to_the_server_time_and_flagged() {
        // A week ahead, no sent_at to correct it: the server's time, flagged with the original.
        let e = at(NOW + 7 * 24 * HOUR, None);
        assert_eq!((e.client_ts, e.corrected_ts), (NOW + 7 * 24 * HOUR, NOW));
        assert_eq!(flag(&e), json!({"clamped_from": NOW + 7 * 24 * HOUR, "reason": "future"}));
        assert!(time_clamped(&e));
        // 24 h ahead is still accepted as it is (a device clock off by a time zone).
        let e = at(NOW + 24 * HOUR, None);
        assert_eq!(e.corrected_ts, NOW + 24 * HOUR);
        assert_eq!(flag(&e), Value::Null);
        assert!(!time_clamped(&e));
        // An event dated after its own batch was sent: corrected to after the server's time.
        let e = at(NOW + 30 * 24 * HOUR, Some(NOW));
        assert_eq!(e.corrected_ts, NOW);
        assert_eq!(flag(&e)["clamped_from"], NOW + 30 * 24 * HOUR);
        // The year 9999 in the event and the year 0000 in sent_at: no overflow, clamped.
        let e = at(253_402_300_799_999, Some(-62_167_219_200_000));
        assert_eq!(e.corrected_ts, NOW);
        assert!(time_clamped(&e));
    }

    #[test]
    fn the_enrichment_text_is_the_json_object_printed() {
        let ua = enrich::UserAgent {
            browser: Some("Chrome \"x\"".into()),
            os: Some("Android".into()),
            device_class: Some("smartphone".into()),
            ..Default::default()
        };
        let geo = Geo { country: Some("DE".into()), ..Default::default() };
        let time = json!({"clamped_from": 5, "reason": "future"});
        for (unsigned, time) in [(false, None), (true, None), (false, Some(&time)), (true, Some(&time))] {
            let mut expected = json!({"ua": ua, "geo": geo, "channel": "paid_social"});
            if let Some(t) = time {
                expected["time"] = t.clone();
            }
            if unsigned {
                expected["auth"] = json!("write_key");
            }
            let text = ClientEnrichment::new(&ua, &geo, unsigned).text("paid_social", time);
            assert_eq!(text, expected.to_string());
        }
    }

    #[test]
    fn a_device_clock_ahead_is_corrected_not_clamped() {
        // The device clock is 3 days ahead: the event and sent_at both are, and the skew
        // correction puts the event 10 s before the server received the batch.
        let skew = 3 * 24 * HOUR;
        let e = at(NOW + skew - 10_000, Some(NOW + skew));
        assert_eq!(e.corrected_ts, NOW - 10_000);
        assert!(!time_clamped(&e));
    }

    #[test]
    fn times_in_the_past_are_kept() {
        for ts in [NOW - 400 * 24 * HOUR, 0, -62_167_219_200_000] {
            let e = at(ts, None);
            assert_eq!(e.corrected_ts, ts);
            assert!(!time_clamped(&e));
        }
        // sent_at far ahead of the event: a time long before the server's, kept.
        let e = at(NOW, Some(253_402_300_799_999));
        assert_eq!(e.corrected_ts, NOW - (253_402_300_799_999 - NOW));
    }
}
