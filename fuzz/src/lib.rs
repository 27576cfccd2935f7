//! What the fuzz targets share: the pure steps of `service::ingest::ingest` on a parsed body,
//! in the server's order, up to the point where the events would be stored.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Value, json};
use trailmark_core::protocol::{self, DropReport};
use trailmark_server::domain::config::AppConfig;
use trailmark_server::domain::conversions::Followup;
use trailmark_server::domain::enrich::{self, Geo, UserAgent};
use trailmark_server::domain::events::{event_json, normalise, parse_ms};
use trailmark_server::domain::validate::Validators;

/// The app every target sends as; it registers one schema of its own (`level_up`).
pub const APP: &str = "com.example.app";

/// Event types a conversion follow-up is made for (the server's default).
pub const CONVERSIONS: &[&str] = &["purchase"];

/// The validators of a server with [`APP`], compiled once.
pub fn validators() -> &'static Validators {
    static VALIDATORS: OnceLock<Validators> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        let mut app = AppConfig::new("secret");
        app.schemas.insert(
            "level_up".into(),
            json!({"properties": {"properties": {"type": "object", "required": ["level"],
                "properties": {"level": {"type": "integer", "minimum": 1}}}}}),
        );
        Validators::new(&HashMap::from([(APP.to_owned(), app)])).expect("the schemas compile")
    })
}

/// What the ingest steps made of a body.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The body as a whole was refused.
    pub refused: bool,
    pub accepted: usize,
    pub rejected: usize,
}

/// `service::ingest::ingest` up to storage: the envelope schema, the batch limit, `sent_at`,
/// the drop report, then per event its size, the follow-up facts, the event schema and the
/// normalisation and enrichment; then the stored event as the inspector shows it.
pub fn ingest_steps(value: Value, user_agent: Option<&str>, received_at: i64) -> Outcome {
    let validators = validators();
    let is_batch = value.get("batch").is_some();
    if is_batch && validators.envelope(&value).is_err() {
        return Outcome { refused: true, ..Outcome::default() };
    }
    let (events, sent_at) = match value {
        Value::Object(mut map) if is_batch => {
            // The service relies on the envelope schema here (`unreachable!`).
            let Some(Value::Array(batch)) = map.remove("batch") else {
                panic!("the envelope schema let a batch through that is not an array")
            };
            if batch.len() > protocol::MAX_BATCH_EVENTS {
                return Outcome { refused: true, ..Outcome::default() };
            }
            let sent_at = map.get("sent_at").and_then(Value::as_str).and_then(parse_ms);
            let _dropped: DropReport =
                map.remove("dropped").and_then(|d| serde_json::from_value(d).ok()).unwrap_or_default();
            (batch, sent_at)
        }
        Value::Object(map) => (vec![Value::Object(map)], None),
        _ => return Outcome { refused: true, ..Outcome::default() },
    };
    let ua: UserAgent = user_agent.map(enrich::parse_user_agent).unwrap_or_default();
    let geo = Geo::default();
    let conversions: Vec<String> = CONVERSIONS.iter().map(|c| (*c).to_owned()).collect();
    let mut outcome = Outcome::default();
    for event in events {
        if protocol::serialized_len(&event) > protocol::MAX_EVENT_BYTES {
            outcome.rejected += 1;
            continue;
        }
        let follow = Followup::from_event(&event, &conversions);
        let _revenue = follow.and_then(|_| event.pointer("/properties/revenue").and_then(Value::as_f64));
        let _currency = follow.and_then(|_| event.pointer("/properties/currency").and_then(Value::as_str));
        match validators.event(APP, &event).and_then(|_| normalise(APP, event, sent_at, received_at, &ua, &geo, None)) {
            Ok(stored) => {
                outcome.accepted += 1;
                let shown = event_json(&stored);
                assert!(shown["properties"].is_object() && shown["context"].is_object(), "{shown}");
            }
            Err(reason) => {
                assert!(!reason.is_empty());
                outcome.rejected += 1;
            }
        }
    }
    outcome
}
