//! The event validator (`domain::validate::Validators`: the JSON Schemas of the standard
//! types, the generic one and an app's own) and the normalisation after it, on arbitrary JSON
//! events and on well-formed events whose fields the fuzzer fills in.
//!
//! Properties: nothing panics; a refusal names where it is; an event the schema accepts has
//! the required fields with the required types, and normalises.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use trailmark_fuzz::{APP, validators};
use trailmark_server::domain::enrich::{Geo, UserAgent};
use trailmark_server::domain::events::normalise;

const TYPES: &[&str] = &[
    "install",
    "session_start",
    "screen_view",
    "page_view",
    "add_to_cart",
    "purchase",
    "logout",
    "unsubscribe",
    "level_up",
    "my_custom",
];

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    /// Any JSON text.
    Raw(&'a [u8]),
    /// A well-formed event with these fields.
    Fields {
        event_type: u8,
        event_id: Option<&'a str>,
        timestamp: Option<&'a str>,
        anonymous_id: &'a str,
        user_id: Option<&'a str>,
        /// JSON texts put in place when they parse.
        properties: &'a str,
        context: &'a str,
        revenue: Option<f64>,
        currency: Option<&'a str>,
        sent_at: Option<&'a str>,
    },
}

const EVENT_ID: &str = "6f1c2a8e-3b4d-4f6a-9c1e-2d3f4a5b6c7d";
const TIMESTAMP: &str = "2026-01-01T00:00:00.000Z";
const T0: i64 = 1_767_225_600_000;

fn event(input: Input) -> Option<(Value, Option<i64>)> {
    match input {
        Input::Raw(bytes) => {
            let value = trailmark_server::http::extract::parse_json(bytes, 40).ok()?;
            Some((value, None))
        }
        Input::Fields {
            event_type,
            event_id,
            timestamp,
            anonymous_id,
            user_id,
            properties,
            context,
            revenue,
            currency,
            sent_at,
        } => {
            let mut e = json!({
                "event_id": event_id.unwrap_or(EVENT_ID),
                "type": TYPES[usize::from(event_type) % TYPES.len()],
                "timestamp": timestamp.unwrap_or(TIMESTAMP),
                "anonymous_id": anonymous_id,
            });
            if let Some(user_id) = user_id {
                e["user_id"] = json!(user_id);
            }
            let mut props = serde_json::from_str::<Value>(properties).unwrap_or_else(|_| json!({}));
            if let Some(p) = props.as_object_mut() {
                if let Some(r) = revenue {
                    p.insert("revenue".into(), json!(r));
                }
                if let Some(c) = currency {
                    p.insert("currency".into(), json!(c));
                }
            }
            e["properties"] = props;
            if let Ok(c) = serde_json::from_str::<Value>(context) {
                e["context"] = c;
            }
            let sent_at = sent_at.and_then(trailmark_server::domain::events::parse_ms);
            Some((e, sent_at))
        }
    }
}

fuzz_target!(|input: Input| {
    let Some((event, sent_at)) = event(input) else { return };
    match validators().event(APP, &event) {
        Ok(()) => {
            for key in ["event_id", "type", "timestamp", "anonymous_id"] {
                assert!(event.get(key).is_some_and(Value::is_string), "accepted without a string {key}: {event}");
            }
            assert!(event.get("properties").is_none_or(Value::is_object), "{event}");
            assert!(event.get("context").is_none_or(Value::is_object), "{event}");
            let _ = normalise(APP, event, sent_at, T0, &UserAgent::default(), &Geo::default(), None);
        }
        Err(reason) => {
            assert!(reason.starts_with('/'), "a refusal names its place: {reason}");
        }
    }
});
