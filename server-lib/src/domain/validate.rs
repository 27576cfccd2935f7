//! JSON Schema validation of the envelope and of each event. Standard event types get their own
//! schema; other types pass the generic event schema unless the app registered one.

use std::collections::HashMap;

use jsonschema::Validator;
use serde_json::{Value, json};

use crate::domain::config::AppConfig;

/// ISO 4217 alphabetic codes (active, funds and precious-metal codes, plus a few recently
/// withdrawn ones still sent by old app versions).
pub const ISO_4217: &[&str] = &[
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BHD", "BIF",
    "BMD", "BND", "BOB", "BOV", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHE", "CHF", "CHW", "CLF",
    "CLP", "CNY", "COP", "COU", "CRC", "CUC", "CUP", "CVE", "CZK", "DJF", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB",
    "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HRK", "HTG", "HUF",
    "IDR", "ILS", "INR", "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW", "KWD",
    "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP", "MRU",
    "MUR", "MVR", "MWK", "MXN", "MXV", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN",
    "PGK", "PHP", "PKR", "PLN", "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD",
    "SHP", "SLE", "SLL", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TND", "TOP", "TRY",
    "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "USN", "UYI", "UYU", "UYW", "UZS", "VED", "VES", "VND", "VUV", "WST",
    "XAF", "XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XCD", "XCG", "XDR", "XOF", "XPD", "XPF", "XPT", "XSU", "XTS",
    "XUA", "YER", "ZAR", "ZMW", "ZWG", "ZWL",
];

/// The standard event types with a schema of their own.
pub const STANDARD_TYPES: &[&str] =
    &["install", "session_start", "screen_view", "page_view", "add_to_cart", "purchase", "logout", "unsubscribe"];

fn id() -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": 256})
}

fn text() -> Value {
    json!({"type": "string", "maxLength": 1024})
}

fn strings(fields: &[&str]) -> Value {
    Value::Object(fields.iter().map(|f| (f.to_string(), text())).collect())
}

/// The schema every event satisfies.
pub fn event_schema() -> Value {
    json!({
        "type": "object",
        "required": ["event_id", "type", "timestamp", "anonymous_id"],
        "properties": {
            "event_id": {"type": "string", "format": "uuid"},
            "type": {"type": "string", "pattern": "^[a-z0-9_]{1,64}$"},
            "timestamp": {"type": "string", "format": "date-time"},
            "anonymous_id": id(),
            "user_id": id(),
            "device_id": id(),
            "session_id": id(),
            "properties": {"type": "object"},
            "context": {
                "type": "object",
                "properties": {
                    "app": {"type": "object", "properties": strings(&["id", "version", "build"])},
                    "device": {"type": "object", "properties": {
                        "os": text(), "os_version": text(), "model": text(), "manufacturer": text(),
                        "locale": text(), "timezone": text(),
                        "screen": {"type": "object", "properties": {
                            "width": {"type": "integer", "minimum": 0, "maximum": 100000},
                            "height": {"type": "integer", "minimum": 0, "maximum": 100000}
                        }}
                    }},
                    "campaign": {"type": "object", "properties":
                        strings(&["utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content", "click_id"])},
                    "consent": {"type": "object", "properties": {
                        "analytics": {"type": ["boolean", "null"]},
                        "attribution": {"type": ["boolean", "null"]},
                        "do_not_sell": {"type": "boolean"}
                    }},
                    "sdk": {"type": "object", "properties": strings(&["name", "version"])},
                    "group_id": id()
                }
            }
        }
    })
}

/// The extra rules of a standard type, applied to the event's `properties`.
fn standard_properties(event_type: &str) -> Value {
    let money = json!({"type": "number", "minimum": 0});
    let currency = json!({"type": "string", "enum": ISO_4217});
    match event_type {
        "purchase" => json!({
            "type": "object",
            "required": ["revenue", "currency"],
            "properties": {"revenue": money, "currency": currency, "order_id": text(), "quantity": {"type": "integer", "minimum": 0}}
        }),
        "add_to_cart" => json!({
            "type": "object",
            "properties": {"price": money, "currency": currency, "sku": text(), "quantity": {"type": "integer", "minimum": 1}}
        }),
        "screen_view" | "page_view" => json!({
            "type": "object",
            "properties": {"name": text(), "url": {"type": "string", "maxLength": 4096}, "referrer": {"type": "string", "maxLength": 4096}}
        }),
        _ => json!({"type": "object"}),
    }
}

/// The batch envelope. Events are validated one by one afterwards.
pub fn envelope_schema() -> Value {
    json!({
        "type": "object",
        "required": ["batch"],
        "properties": {
            "sent_at": {"type": "string", "format": "date-time"},
            "batch": {"type": "array"},
            "dropped": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}
        }
    })
}

fn compile(schema: &Value) -> Result<Validator, String> {
    jsonschema::options().should_validate_formats(true).build(schema).map_err(|e| e.to_string())
}

/// Compiled validators for one server.
pub struct Validators {
    envelope: Validator,
    generic: Validator,
    standard: HashMap<&'static str, Validator>,
    /// app id → type → validator, from the apps' registered schemas.
    custom: HashMap<String, HashMap<String, Validator>>,
}

impl Validators {
    pub fn new(apps: &HashMap<String, AppConfig>) -> Result<Self, String> {
        let base = event_schema();
        let mut standard = HashMap::new();
        for t in STANDARD_TYPES {
            let schema = json!({"allOf": [base, {"properties": {"properties": standard_properties(t)}}]});
            standard.insert(*t, compile(&schema)?);
        }
        let mut custom = HashMap::new();
        for (app, config) in apps {
            let mut by_type = HashMap::new();
            for (t, schema) in &config.schemas {
                let combined = json!({"allOf": [base, schema]});
                by_type.insert(t.clone(), compile(&combined).map_err(|e| format!("schema of {app}/{t}: {e}"))?);
            }
            custom.insert(app.clone(), by_type);
        }
        Ok(Validators { envelope: compile(&envelope_schema())?, generic: compile(&base)?, standard, custom })
    }

    /// Checks the envelope; the error names the offending location.
    pub fn envelope(&self, value: &Value) -> Result<(), String> {
        check(&self.envelope, value)
    }

    /// Checks one event against its type's schema.
    pub fn event(&self, app: &str, value: &Value) -> Result<(), String> {
        let event_type = value.get("type").and_then(Value::as_str).unwrap_or("");
        let validator = self
            .custom
            .get(app)
            .and_then(|m| m.get(event_type))
            .or_else(|| self.standard.get(event_type))
            .unwrap_or(&self.generic);
        check(validator, value)
    }
}

fn check(validator: &Validator, value: &Value) -> Result<(), String> {
    validator.validate(value).map_err(|e| {
        let path = e.instance_path().to_string();
        let path = if path.is_empty() { "/".to_owned() } else { path };
        let message = e.to_string();
        // Cap the echo of client input in the message.
        let message: String = message.chars().take(300).collect();
        format!("{path}: {message}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(t: &str, props: Value) -> Value {
        json!({"event_id": "6f1c2a8e-3b4d-4f6a-9c1e-2d3f4a5b6c7d", "type": t, "timestamp": "2026-01-01T00:00:00.000Z",
               "anonymous_id": "a", "properties": props})
    }

    #[test]
    fn purchase_needs_revenue_and_iso_currency() {
        let v = Validators::new(&HashMap::new()).unwrap();
        assert!(v.event("app", &event("purchase", json!({"revenue": 9.5, "currency": "EUR"}))).is_ok());
        let e = v.event("app", &event("purchase", json!({"currency": "EUR"}))).unwrap_err();
        assert!(e.contains("revenue"), "{e}");
        let e = v.event("app", &event("purchase", json!({"revenue": 1, "currency": "EURO"}))).unwrap_err();
        assert!(e.starts_with("/properties/currency"), "{e}");
        assert!(v.event("app", &event("purchase", json!({"revenue": -1, "currency": "EUR"}))).is_err());
        assert!(v.event("app", &event("my_custom", json!({"anything": [1, 2]}))).is_ok());
    }

    #[test]
    fn base_rules() {
        let v = Validators::new(&HashMap::new()).unwrap();
        let mut e = event("x", json!({}));
        e["event_id"] = json!("not-a-uuid");
        assert!(v.event("app", &e).unwrap_err().starts_with("/event_id"));
        // The SDKs' ids are version 7 (ADR 0023); other clients' (Segment's) version 4.
        e["event_id"] = json!("019af3c2-5e10-7b3d-8c4e-2d3f4a5b6c7d");
        assert!(v.event("app", &e).is_ok());
        let mut e = event("x", json!({}));
        e["timestamp"] = json!("yesterday");
        assert!(v.event("app", &e).is_err());
        let e = event("Bad Type", json!({}));
        assert!(v.event("app", &e).is_err());
        let mut e = event("x", json!({}));
        e.as_object_mut().unwrap().remove("anonymous_id");
        assert!(v.event("app", &e).unwrap_err().contains("anonymous_id"));
    }

    #[test]
    fn apps_register_their_own_schemas() {
        let mut app = AppConfig::new("s");
        app.schemas.insert(
            "level_up".into(),
            json!({"properties": {"properties": {"type": "object", "required": ["level"]}}}),
        );
        let apps = HashMap::from([("game".to_string(), app)]);
        let v = Validators::new(&apps).unwrap();
        assert!(v.event("game", &event("level_up", json!({"level": 3}))).is_ok());
        assert!(v.event("game", &event("level_up", json!({}))).is_err());
        assert!(v.event("other", &event("level_up", json!({}))).is_ok());
    }
}
