//! What the fuzz targets share: well-formed events with fuzzed fields ([`EventFields`]), and
//! the pure steps of `service::ingest::ingest` on a parsed body, in the server's order, up to
//! the point where the events would be stored.

use std::collections::HashMap;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use serde_json::{Map, Value, json};
use trailmark_core::protocol;
use trailmark_server::Limits;
use trailmark_server::domain::config::AppConfig;
use trailmark_server::domain::enrich::{self, Geo, UserAgent};
use trailmark_server::domain::events::event_json;
use trailmark_server::domain::ingest::{IngestRules, Sender, prepare};
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

/// The server's own pure ingest steps (`domain::ingest::prepare`, whose result
/// `service::ingest` stores), with the properties every outcome must have: the envelope schema
/// lets only an array `batch` through; each event is accepted or rejected once, in order; an
/// accepted event shows object properties and context; follow-up revenue is within the bound;
/// every refusal has a reason.
pub fn ingest_steps(value: Value, user_agent: Option<&str>, received_at: i64) -> Outcome {
    let validators = validators();
    if value.get("batch").is_some() && validators.envelope(&value).is_ok() {
        assert!(value["batch"].is_array(), "the envelope schema let a batch through that is not an array");
    }
    let sent = match &value {
        Value::Object(map) => match map.get("batch") {
            Some(Value::Array(batch)) => batch.len(),
            _ => 1,
        },
        _ => 0,
    };
    let ua: UserAgent = user_agent.map(enrich::parse_user_agent).unwrap_or_default();
    let geo = Geo::default();
    let conversions: Vec<String> = CONVERSIONS.iter().map(|c| (*c).to_owned()).collect();
    let max_revenue = Limits::default().max_revenue;
    let rules = IngestRules { validators, conversion_events: &conversions, max_revenue };
    let sender = Sender { app_id: APP, revenue_trusted: false, received_at, ua: &ua, geo: &geo, ip_enc: None, unsigned: false, clients: &[] };
    let prepared = match prepare(&rules, &sender, value) {
        Ok(p) => p,
        Err(refusal) => {
            assert!(!refusal.message.is_empty(), "{refusal:?}");
            return Outcome { refused: true, ..Outcome::default() };
        }
    };
    assert_eq!(prepared.fresh.len() + prepared.rejected.len(), sent, "every event accepted or rejected once");
    assert!(prepared.rejected.windows(2).all(|w| w[0].index < w[1].index), "rejections in order");
    assert!(prepared.rejected.iter().all(|r| r.index < sent && !r.reason.is_empty()), "{:?}", prepared.rejected);
    assert!(prepared.followups.len() <= prepared.fresh.len() && prepared.clamped <= prepared.fresh.len());
    for f in &prepared.followups {
        assert!(f.revenue.is_none_or(|r| r.abs() <= max_revenue), "revenue past the bound: {f:?}");
    }
    for stored in &prepared.fresh {
        let shown = event_json(stored);
        assert!(shown["properties"].is_object() && shown["context"].is_object(), "{shown}");
    }
    Outcome { refused: false, accepted: prepared.fresh.len(), rejected: prepared.rejected.len() }
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
