//! What the fuzz targets share: well-formed events with fuzzed fields ([`EventFields`]), and
//! the pure steps of `service::ingest::ingest` on a parsed body, in the server's order, up to
//! the point where the events would be stored.

use std::collections::HashMap;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use serde_json::{Map, Value, json};
use trailmark_core::protocol::{self, DropReport};
use trailmark_server::domain::config::AppConfig;
use trailmark_server::domain::conversions::Followup;
use trailmark_server::domain::enrich::{self, Geo, UserAgent};
use trailmark_server::domain::events::{event_json, normalise, parse_ms};
use trailmark_server::domain::validate::Validators;

/// The app every target sends as; it registers one schema of its own (`level_up`).
pub const APP: &str = "com.example.app";

/// Unix ms of 0000-01-01 and 9999-12-31, the range of an RFC 3339 time: every time the server
/// reads from a request is within it.
pub const MIN_MS: i64 = -62_167_219_200_000;
pub const MAX_MS: i64 = 253_402_300_799_999;

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

/// Event types: the standard ones, the app's own (`level_up`) and one without a schema.
pub const TYPES: &[&str] = &[
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

/// A property value.
#[derive(Arbitrary, Debug)]
pub enum Scalar<'a> {
    Str(&'a str),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

/// An event as an SDK sends it, its fields chosen by the fuzzer: valid ids and times unless the
/// fuzzer supplies its own text, so the schema and normalisation are reached.
#[derive(Arbitrary, Debug)]
pub struct EventFields<'a> {
    /// An index into [`TYPES`]; past it, `custom_type`.
    pub event_type: u8,
    pub custom_type: &'a str,
    pub event_id: Option<&'a str>,
    pub id: u128,
    pub timestamp: Option<&'a str>,
    pub ts_ms: i64,
    pub anonymous_id: &'a str,
    pub user_id: Option<&'a str>,
    pub properties: Vec<(&'a str, Scalar<'a>)>,
    pub revenue: Option<Scalar<'a>>,
    pub currency: Option<&'a str>,
    pub utm_source: Option<&'a str>,
    pub click_id: Option<u128>,
    pub os: Option<&'a str>,
    pub screen: Option<(i64, i64)>,
    /// Merged into the event when it parses as a JSON object.
    pub extra: &'a str,
}

/// A UUID's text (any version) from 128 bits.
pub fn uuid_text(n: u128) -> String {
    let h = format!("{n:032x}");
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

fn scalar(v: &Scalar) -> Value {
    match v {
        Scalar::Str(s) => json!(s),
        Scalar::Int(n) => json!(n),
        Scalar::Float(x) => json!(x),
        Scalar::Bool(b) => json!(b),
        Scalar::Null => Value::Null,
    }
}

impl EventFields<'_> {
    pub fn to_value(&self) -> Value {
        let event_type = TYPES.get(usize::from(self.event_type)).copied().unwrap_or(self.custom_type);
        let timestamp = match self.timestamp {
            Some(t) => t.to_owned(),
            None => protocol::format_millis(self.ts_ms),
        };
        let mut properties: Map<String, Value> =
            self.properties.iter().map(|(k, v)| ((*k).to_owned(), scalar(v))).collect();
        if let Some(r) = &self.revenue {
            properties.insert("revenue".into(), scalar(r));
        }
        if let Some(c) = self.currency {
            properties.insert("currency".into(), json!(c));
        }
        let mut e = json!({
            "event_id": self.event_id.map_or_else(|| uuid_text(self.id), str::to_owned),
            "type": event_type,
            "timestamp": timestamp,
            "anonymous_id": self.anonymous_id,
            "properties": properties,
        });
        if let Some(u) = self.user_id {
            e["user_id"] = json!(u);
        }
        let mut context = Map::new();
        let mut campaign = Map::new();
        if let Some(s) = self.utm_source {
            campaign.insert("utm_source".into(), json!(s));
        }
        if let Some(c) = self.click_id {
            campaign.insert("click_id".into(), json!(uuid_text(c)));
        }
        if !campaign.is_empty() {
            context.insert("campaign".into(), Value::Object(campaign));
        }
        let mut device = Map::new();
        if let Some(os) = self.os {
            device.insert("os".into(), json!(os));
        }
        if let Some((w, h)) = self.screen {
            device.insert("screen".into(), json!({"width": w, "height": h}));
        }
        if !device.is_empty() {
            context.insert("device".into(), Value::Object(device));
        }
        if !context.is_empty() {
            e["context"] = Value::Object(context);
        }
        if let (Ok(Value::Object(extra)), Some(map)) = (serde_json::from_str::<Value>(self.extra), e.as_object_mut()) {
            map.extend(extra);
        }
        e
    }
}
