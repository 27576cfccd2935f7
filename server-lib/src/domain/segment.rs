//! Segment's HTTP tracking API (which RudderStack and Jitsu accept too) mapped onto Trailmark's
//! event model, so their SDKs can send to a Trailmark server unchanged (docs/segment.md). Pure:
//! a request body becomes its messages, and each message a Trailmark event (the protocol's
//! shape, validated and stored by the ingest service like an SDK's) or a reason it was refused.

use serde_json::{Map, Value, json};
use trailmark_core::pii;
use trailmark_core::protocol::{self, format_millis};
use uuid::Uuid;

use super::error::Refusal;
use super::events::parse_ms;

/// The namespace of the event ids made from messages (UUIDv5 of app and `messageId`).
const NAMESPACE: Uuid = Uuid::from_u128(0x5f0d_6c2e_8a4b_4c1e_9b7a_3d2e_1f00_7a11);

/// Longest event name after normalisation (the protocol's `type` pattern).
const MAX_TYPE_LEN: usize = 64;

/// One of Segment's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Track,
    Identify,
    Page,
    Screen,
    Group,
    Alias,
}

impl Call {
    fn parse(text: &str) -> Option<Call> {
        Some(match text {
            "track" => Call::Track,
            "identify" => Call::Identify,
            "page" => Call::Page,
            "screen" => Call::Screen,
            "group" => Call::Group,
            "alias" => Call::Alias,
            _ => return None,
        })
    }
}

/// What a route receives: a batch (`/v1/batch`, `/v1/b`, `/v1/import`, RudderStack's beacon),
/// each message naming its type, or one call (`/v1/track`, …), whose route is its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Batch,
    Call(Call),
}

/// A body's messages and the batch's `sentAt`.
#[derive(Debug, Default)]
pub struct Messages {
    pub messages: Vec<Value>,
    pub sent_at: Option<String>,
}

/// The messages of a body. Refused as a whole only when it is not a message or a batch, or the
/// batch holds more messages than an SDK batch may.
pub fn messages(route: Route, body: Value) -> Result<Messages, Refusal> {
    let Value::Object(mut map) = body else {
        return Err(Refusal::invalid("invalid_body", "the body must be a JSON object"));
    };
    let sent_at = map.get("sentAt").and_then(Value::as_str).map(str::to_owned);
    match route {
        Route::Call(_) => Ok(Messages { messages: vec![Value::Object(map)], sent_at }),
        Route::Batch => {
            let batch = match map.remove("batch") {
                Some(Value::Array(batch)) => batch,
                _ => return Err(Refusal::invalid("invalid_batch", "/batch: must be an array of messages")),
            };
            if batch.len() > protocol::MAX_BATCH_EVENTS {
                return Err(Refusal::too_large(format!(
                    "batch holds {} messages; the limit is {}",
                    batch.len(),
                    protocol::MAX_BATCH_EVENTS
                )));
            }
            Ok(Messages { messages: batch, sent_at })
        }
    }
}

/// The client's address and user agent as the message's `context` gives them (a server-side
/// SDK sends them for the person it reports on). Used for enrichment only when the app is a
/// `server` app; otherwise the request's own are.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A message as a Trailmark event.
#[derive(Debug)]
pub struct Translated {
    /// The event in the protocol's shape (`event_id`, `type`, `timestamp`, …). Its
    /// `timestamp` is already corrected for the device clock's skew, as Segment's is.
    pub event: Value,
    pub origin: Origin,
    /// `identify`/`group` traits that should have been hashed but could not be read as their
    /// kind (an e-mail without `@`): left out, never stored raw.
    pub traits_dropped: u32,
}

/// Turns one message of `app_id` into a Trailmark event, or says why it cannot be.
/// `pseudonym` gives the anonymous id of a message that names only its user (server-side SDKs
/// often do): the user id's stored (keyed-hash) form, so no raw user id is kept in the clear.
/// `received_at` (Unix ms) dates a message without a time. A message's time is corrected for
/// the sender's clock as Segment does: `received_at − (sentAt − timestamp)`, with the
/// message's `sentAt`, else the batch's. `random_id` names a message that has neither a
/// `messageId` nor a time.
pub fn translate(
    app_id: &str,
    route: Route,
    message: Value,
    batch_sent_at: Option<&str>,
    received_at: i64,
    pseudonym: impl Fn(&str) -> String,
    random_id: impl FnOnce() -> Uuid,
) -> Result<Translated, String> {
    let Value::Object(mut m) = message else { return Err("a message must be a JSON object".into()) };
    let call = match route {
        Route::Call(call) => call,
        Route::Batch => match m.get("type").and_then(Value::as_str) {
            Some(t) => Call::parse(t).ok_or_else(|| {
                format!("/type: {t:?} is not a call this API takes (track, identify, page, screen, group, alias)")
            })?,
            None => return Err("/type: missing".into()),
        },
    };
    // Before anything is taken out of the message: an id made from its content covers all of it.
    let event_id = event_id(app_id, &m, random_id);
    let id = |v: Option<Value>, field: &str| -> Result<Option<String>, String> {
        match v {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            // Segment's libraries accept numbers as ids and send them as they are.
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(_) => Err(format!("/{field}: must be a string")),
        }
    };
    let user_id = id(m.remove("userId"), "userId")?;
    let anonymous_id = match (id(m.remove("anonymousId"), "anonymousId")?, &user_id) {
        (Some(a), _) => a,
        (None, Some(u)) => format!("user:{}", pseudonym(u)),
        (None, None) => return Err("a message needs a userId or an anonymousId".into()),
    };
    let client_ts = match m.get("timestamp").or_else(|| m.get("originalTimestamp")) {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => match parse_ms(t) {
            Some(ms) => Some(ms),
            None => return Err(format!("/timestamp: {t:?} is not an ISO 8601 time with a time zone")),
        },
        Some(_) => return Err("/timestamp: must be a string".into()),
    };
    // A send time that is not a time only means no correction.
    let sent_at = m.get("sentAt").and_then(Value::as_str).or(batch_sent_at).and_then(parse_ms);
    let timestamp = format_millis(match (client_ts, sent_at) {
        (Some(ts), Some(sent)) => received_at.saturating_sub(sent.saturating_sub(ts)),
        (Some(ts), None) => ts,
        // No time: the message happened when it arrived (no correction to make).
        (None, _) => received_at,
    });
    let context = match m.remove("context") {
        Some(Value::Object(c)) => c,
        _ => Map::new(),
    };
    let origin = Origin {
        ip: context.get("ip").and_then(Value::as_str).map(str::to_owned),
        user_agent: context.get("userAgent").and_then(Value::as_str).map(str::to_owned),
    };
    let mut out_context = map_context(&context);
    let mut traits_dropped = 0;
    let (event_type, properties) = match call {
        Call::Track => {
            let name = match m.remove("event") {
                Some(Value::String(name)) => name,
                _ => return Err("/event: a track call needs the event's name".into()),
            };
            let (props, dropped) = hashed(object(m.remove("properties")), true);
            traits_dropped = dropped;
            track(&name, props)?
        }
        Call::Identify => {
            let (traits, dropped) = hashed(traits(m.remove("traits")), false);
            traits_dropped = dropped;
            ("identify".to_owned(), traits)
        }
        Call::Page | Call::Screen => {
            let (mut props, dropped) = hashed(object(m.remove("properties")), true);
            traits_dropped = dropped;
            let name = match (m.remove("category"), m.remove("name")) {
                (Some(Value::String(c)), Some(Value::String(n))) => Some(format!("{c} {n}")),
                (_, Some(Value::String(n))) => Some(n),
                _ => None,
            };
            if let Some(name) = name {
                props.insert("name".into(), Value::String(name));
            }
            let page = context.get("page").and_then(Value::as_object);
            for key in ["url", "referrer", "path", "title", "search"] {
                if !props.contains_key(key)
                    && let Some(v) = page.and_then(|p| p.get(key)).filter(|v| v.is_string())
                {
                    props.insert(key.into(), v.clone());
                }
            }
            (if call == Call::Page { "page_view" } else { "screen_view" }.to_owned(), props)
        }
        Call::Group => {
            let group_id = id(m.remove("groupId"), "groupId")?.ok_or("/groupId: a group call needs one")?;
            let (mut traits, dropped) = hashed(traits(m.remove("traits")), false);
            traits_dropped = dropped;
            traits.insert("group_id".into(), Value::String(group_id.clone()));
            out_context.insert("group_id".into(), Value::String(group_id));
            ("group".to_owned(), traits)
        }
        Call::Alias => {
            let previous = id(m.remove("previousId"), "previousId")?.ok_or("/previousId: an alias call needs one")?;
            if user_id.is_none() {
                return Err("/userId: an alias call needs the new user id".into());
            }
            let mut props = Map::new();
            props.insert("previous_id".into(), Value::String(previous));
            ("alias".to_owned(), props)
        }
    };
    let mut event = json!({
        "event_id": event_id,
        "type": event_type,
        "timestamp": timestamp,
        "anonymous_id": anonymous_id,
        "properties": properties,
        "context": out_context,
    });
    if let Some(u) = user_id {
        event["user_id"] = Value::String(u);
    }
    if let Some(d) = context.get("device").and_then(|d| d.get("id")).and_then(Value::as_str).filter(|d| !d.is_empty()) {
        event["device_id"] = Value::String(d.to_owned());
    }
    Ok(Translated { event, origin, traits_dropped })
}

/// UUIDv5 of the app and the message's `messageId`, so a retried batch is deduplicated; for a
/// message without one, of its content (everything but `sentAt`, which a retry changes) when
/// it has a time; else `random_id` (two identical messages without a time are two events, and
/// a retry of one cannot be told from a second one).
fn event_id(app_id: &str, m: &Map<String, Value>, random_id: impl FnOnce() -> Uuid) -> String {
    let timed = ["timestamp", "originalTimestamp"].iter().any(|k| m.get(*k).is_some_and(|v| !v.is_null()));
    let name = match m.get("messageId") {
        Some(Value::String(id)) if !id.is_empty() => format!("{app_id}\nmessageId\n{id}"),
        Some(Value::Number(n)) => format!("{app_id}\nmessageId\n{n}"),
        _ if !timed => return random_id().to_string(),
        _ => {
            let mut content = m.clone();
            content.remove("sentAt");
            // Without serde_json's `preserve_order` a map's text is in key order: the same
            // message gives the same text.
            format!("{app_id}\ncontent\n{}", Value::Object(content))
        }
    };
    Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

fn object(v: Option<Value>) -> Map<String, Value> {
    match v {
        Some(Value::Object(o)) => o,
        _ => Map::new(),
    }
}

/// `identify`/`group` traits without `id`, Segment's reserved trait for the user's (or group's)
/// own id: the message's `userId`/`groupId` carry it, and a raw user id is never stored.
fn traits(v: Option<Value>) -> Map<String, Value> {
    let mut traits = object(v);
    traits.remove("id");
    traits
}

/// Traits (or an event's properties: Segment's spec puts `email` in some events' properties)
/// with e-mail, phone and their common variants replaced by `<name>_sha256` (the SDKs' rules:
/// `trailmark_core::pii`); a text (or number) that cannot be normalised is left out, and so is
/// any other value unless `keep_non_text` (properties: `"email": true` is a setting, not an
/// address). Returns how many were left out. Only top-level names are looked at.
fn hashed(traits: Map<String, Value>, keep_non_text: bool) -> (Map<String, Value>, u32) {
    let mut out = Map::new();
    let mut hashes = Vec::new();
    let mut dropped = 0;
    for (key, value) in traits {
        if !pii::is_hashed_trait(&key, None) {
            out.insert(key, value);
            continue;
        }
        let raw = match &value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        match raw.map(|raw| pii::hash_trait(&key, &raw)) {
            Some(Ok(hash)) => hashes.push((format!("{key}_sha256"), Value::String(hash))),
            // A flag such as `"email": true` in an event's properties is no address.
            None if keep_non_text => {
                out.insert(key, value);
            }
            _ => dropped += 1,
        }
    }
    // The hashes made here win over a sender's own `<name>_sha256` (which could hold anything).
    for (key, hash) in hashes {
        out.insert(key, hash);
    }
    (out, dropped)
}

/// Event types of Trailmark's own that a `track` call may not claim: an install is reported
/// only by the SDK's signed install request, and the others are calls of their own.
const RESERVED: &[&str] = &["install", "identify", "alias", "group", "advertising_id"];

/// A `track` call's type and properties: Segment's e-commerce and lifecycle events onto
/// Trailmark's standard types, other names in snake case.
fn track(name: &str, mut props: Map<String, Value>) -> Result<(String, Map<String, Value>), String> {
    let event_type = match name {
        "Order Completed" => {
            // Segment's revenue is `revenue`, else `total`, else `value`; its currency defaults
            // to US dollars. Without any figure it is an ordinary event (`order_completed`).
            let revenue = ["revenue", "total", "value"].iter().find_map(|k| props.get(*k).and_then(number));
            match revenue {
                Some(revenue) => {
                    props.insert("revenue".into(), json!(revenue));
                    // Absent: Segment's default. Not text: left for validation to refuse.
                    match props.get("currency") {
                        None | Some(Value::Null) => {
                            props.insert("currency".into(), Value::String("USD".into()));
                        }
                        Some(Value::String(c)) => {
                            let c = c.to_ascii_uppercase();
                            props.insert("currency".into(), Value::String(c));
                        }
                        Some(_) => {}
                    }
                    "purchase".to_owned()
                }
                None => "order_completed".to_owned(),
            }
        }
        "Product Added" => {
            if let Some(c) = props.get("currency").and_then(Value::as_str).map(str::to_ascii_uppercase) {
                props.insert("currency".into(), Value::String(c));
            }
            if let Some(price) = props.get("price").filter(|p| p.is_string()).and_then(number) {
                props.insert("price".into(), json!(price));
            }
            "add_to_cart".to_owned()
        }
        "Application Installed" => "app_installed".to_owned(),
        "Application Opened" => "app_opened".to_owned(),
        "Application Backgrounded" => "app_backgrounded".to_owned(),
        "Application Updated" => "app_updated".to_owned(),
        other => {
            if other.chars().any(|c| !c.is_ascii() && !c.is_whitespace() && !is_punctuation(c)) {
                return Err(format!(
                    "/event: {other:?} has characters outside ASCII; event names are ASCII letters, digits and _"
                ));
            }
            let t = snake_case(other);
            if t.is_empty() {
                return Err(format!("/event: {other:?} has no letters or digits to make an event name of"));
            }
            if t.len() > MAX_TYPE_LEN {
                return Err(format!("/event: {other:?} is longer than {MAX_TYPE_LEN} characters as {t:?}"));
            }
            if RESERVED.contains(&t.as_str()) {
                return Err(format!("/event: {other:?} names Trailmark's own {t:?} event, which track cannot send"));
            }
            t
        }
    };
    Ok((event_type, props))
}

/// Punctuation outside ASCII that a name may hold as a separator (Latin-1 signs such as `·`,
/// General Punctuation such as `–` and `…`): it becomes `_` like ASCII punctuation. Letters,
/// marks, digits and symbols outside ASCII refuse the name, so none is silently lost.
fn is_punctuation(c: char) -> bool {
    matches!(c, '\u{a0}'..='\u{bf}' | '\u{d7}' | '\u{f7}' | '\u{2000}'..='\u{206f}')
}

/// A number, or a number written as text (`"19.99"`, as some clients send prices).
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

/// `Order Completed` → `order_completed`, `iOS App Opened` → `ios_app_opened`, `signedUp` →
/// `signed_up`: ASCII letters lower-cased, every run of other characters one `_`, none at the
/// ends; a name written as one camel-case word (no separators: `signedUp`, `OrderCompleted`)
/// also breaks before an upper-case letter that follows a lower-case letter or a digit.
pub fn snake_case(name: &str) -> String {
    let camel = name.trim().chars().all(|c| c.is_ascii_alphanumeric());
    let mut out = String::with_capacity(name.len() + 4);
    let mut prev: Option<char> = None;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            let boundary =
                camel && c.is_ascii_uppercase() && prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit());
            if boundary && !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else if !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
        prev = Some(c);
    }
    while out.ends_with('_') {
        out.pop();
    }
    out
}

/// Segment's `context` in Trailmark's: app, device (with OS, locale, time zone and screen),
/// campaign (UTM names), library as `sdk`, `groupId`. Nothing else is kept (traits in the
/// context, for one, would be raw e-mails).
fn map_context(c: &Map<String, Value>) -> Map<String, Value> {
    let text = |v: Option<&Value>| -> Option<Value> {
        match v? {
            Value::String(s) if !s.is_empty() => Some(Value::String(s.clone())),
            Value::Number(n) => Some(Value::String(n.to_string())),
            _ => None,
        }
    };
    let at = |path: &str| c.get(path);
    let sub = |outer: &str, inner: &str| c.get(outer).and_then(|o| o.get(inner));
    let mut out = Map::new();
    let put = |target: &mut Map<String, Value>, key: &str, v: Option<Value>| {
        if let Some(v) = v {
            target.insert(key.into(), v);
        }
    };
    let mut app = Map::new();
    put(&mut app, "id", text(sub("app", "namespace")));
    put(&mut app, "version", text(sub("app", "version")));
    put(&mut app, "build", text(sub("app", "build")));
    let mut device = Map::new();
    put(&mut device, "os", text(sub("os", "name")));
    put(&mut device, "os_version", text(sub("os", "version")));
    put(&mut device, "model", text(sub("device", "model")));
    put(&mut device, "manufacturer", text(sub("device", "manufacturer")));
    put(&mut device, "locale", text(at("locale")));
    put(&mut device, "timezone", text(at("timezone")));
    let size = |k: &str| sub("screen", k).and_then(Value::as_u64).filter(|n| *n <= 100_000);
    if let (Some(w), Some(h)) = (size("width"), size("height")) {
        device.insert("screen".into(), json!({"width": w, "height": h}));
    }
    let mut campaign = Map::new();
    for (from, to) in [
        ("source", "utm_source"),
        ("medium", "utm_medium"),
        ("name", "utm_campaign"),
        ("term", "utm_term"),
        ("content", "utm_content"),
    ] {
        put(&mut campaign, to, text(sub("campaign", from).or_else(|| sub("campaign", to))));
    }
    // A tracking link's click id, for conversion credit (Trailmark's name, or in camel case).
    put(&mut campaign, "click_id", text(sub("campaign", "click_id").or_else(|| sub("campaign", "clickId"))));
    let mut sdk = Map::new();
    put(&mut sdk, "name", text(sub("library", "name")));
    put(&mut sdk, "version", text(sub("library", "version")));
    for (key, part) in [("app", app), ("device", device), ("campaign", campaign), ("sdk", sdk)] {
        if !part.is_empty() {
            out.insert(key.into(), Value::Object(part));
        }
    }
    put(&mut out, "group_id", text(at("groupId")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07T10:00:10Z: five seconds after the batches' `sentAt`.
    const T_RECEIVED: i64 = 1_796_637_610_000;

    fn one(route: Route, message: Value) -> Result<Translated, String> {
        translate(
            "shop",
            route,
            message,
            Some("2026-12-07T10:00:05Z"),
            T_RECEIVED,
            |u| format!("h({u})"),
            || Uuid::from_u128(7),
        )
    }

    #[test]
    fn names_become_snake_case() {
        for (name, want) in [
            ("Order Completed", "order_completed"),
            ("signedUp", "signed_up"),
            ("SignedUp", "signed_up"),
            ("API Call", "api_call"),
            ("  Video -- Played!  ", "video_played"),
            ("level2Complete", "level2_complete"),
            ("already_snake", "already_snake"),
            ("iOS App Opened", "ios_app_opened"),
            ("!!", ""),
        ] {
            assert_eq!(snake_case(name), want, "{name}");
        }
    }

    #[test]
    fn a_track_call_maps_commerce_and_lifecycle_names() {
        let t = one(
            Route::Batch,
            json!({"type": "track", "event": "Order Completed", "messageId": "m1", "anonymousId": "a1",
                   "timestamp": "2026-12-07T10:00:00.000Z",
                   "properties": {"total": "19.90", "currency": "eur", "order_id": "o-1"}}),
        )
        .unwrap();
        assert_eq!(t.event["type"], "purchase");
        assert_eq!(t.event["properties"]["revenue"], 19.9);
        assert_eq!(t.event["properties"]["currency"], "EUR");
        assert_eq!(t.event["properties"]["order_id"], "o-1");
        // Sent 5 s after it happened, received 5 s after that: the clock is right.
        assert_eq!(t.event["timestamp"], "2026-12-07T10:00:05.000Z");
        let free = one(Route::Batch, json!({"type": "track", "event": "Order Completed", "anonymousId": "a"})).unwrap();
        assert_eq!(free.event["type"], "order_completed", "no figure: not a purchase");
        let usd = one(
            Route::Batch,
            json!({"type": "track", "event": "Order Completed", "anonymousId": "a",
                                           "properties": {"revenue": 5}}),
        )
        .unwrap();
        assert_eq!(usd.event["properties"]["currency"], "USD", "Segment's default currency");
        let opened = one(Route::Call(Call::Track), json!({"event": "Application Opened", "anonymousId": "a"})).unwrap();
        assert_eq!(opened.event["type"], "app_opened");
        let cart = one(
            Route::Batch,
            json!({"type": "track", "event": "Product Added", "anonymousId": "a",
                                            "properties": {"price": 3, "currency": "gbp", "sku": "s"}}),
        )
        .unwrap();
        assert_eq!(
            (cart.event["type"].as_str(), cart.event["properties"]["currency"].as_str()),
            (Some("add_to_cart"), Some("GBP"))
        );
    }

    #[test]
    fn track_cannot_claim_trailmarks_own_events() {
        for name in ["Install", "install", "Identify", "alias", "Advertising ID", "advertisingId"] {
            let r = one(Route::Batch, json!({"type": "track", "event": name, "anonymousId": "a"}));
            assert!(r.unwrap_err().contains("track cannot send"), "{name}");
        }
        let r = one(Route::Batch, json!({"type": "track", "event": "購入", "anonymousId": "a"}));
        assert!(r.unwrap_err().contains("outside ASCII"));
        let r = one(Route::Batch, json!({"type": "track", "event": "Überraschung", "anonymousId": "a"}));
        assert!(r.unwrap_err().contains("outside ASCII"), "no letter silently lost");
        for name in ["Cafe\u{301}", "Played \u{1f3ae}"] {
            let r = one(Route::Batch, json!({"type": "track", "event": name, "anonymousId": "a"}));
            assert!(r.unwrap_err().contains("outside ASCII"), "{name}: a mark or an emoji is not dropped");
        }
        let dash = one(Route::Batch, json!({"type": "track", "event": "Page \u{2013} Viewed", "anonymousId": "a"}));
        assert_eq!(dash.unwrap().event["type"], "page_viewed", "punctuation is a separator");
        let r = one(Route::Batch, json!({"type": "track", "event": "--", "anonymousId": "a"}));
        assert!(r.unwrap_err().contains("no letters or digits"));
        let long = "x".repeat(65);
        assert!(one(Route::Batch, json!({"type": "track", "event": long, "anonymousId": "a"})).is_err());
    }

    #[test]
    fn identify_hashes_email_and_phone_and_keeps_the_rest() {
        let t = one(
            Route::Call(Call::Identify),
            json!({"userId": "u1", "anonymousId": "a1",
                   "traits": {"email": " Ada@Example.com ", "phone": "+1 (555) 010-9999", "plan": "pro", "Email Address": "not an e-mail"},
                   "context": {"traits": {"email": "ada@example.com"}}}),
        )
        .unwrap();
        let props = &t.event["properties"];
        assert_eq!(props["email_sha256"], pii::hash_email("ada@example.com").unwrap().as_str());
        assert!(props["phone_sha256"].is_string());
        assert_eq!(props["plan"], "pro");
        assert!(props.get("email").is_none() && props.get("Email Address").is_none());
        assert_eq!(t.traits_dropped, 1);
        assert_eq!(t.event["user_id"], "u1");
        let text = t.event.to_string();
        assert!(!text.contains("xample.com"), "no raw e-mail anywhere: {text}");
    }

    #[test]
    fn pii_in_properties_and_the_id_trait_are_not_stored_raw() {
        let t = one(
            Route::Batch,
            json!({"type": "track", "event": "Signed Up", "anonymousId": "a",
                   "properties": {"email": "ada@example.com", "plan": "pro"}}),
        )
        .unwrap();
        assert_eq!(t.event["properties"]["email_sha256"], pii::hash_email("ada@example.com").unwrap().as_str());
        assert!(!t.event.to_string().contains("ada@"));
        let i = one(Route::Batch, json!({"type": "identify", "userId": "u-1", "traits": {"id": "u-1", "name": "Ada"}}))
            .unwrap();
        assert_eq!(i.event["properties"], json!({"name": "Ada"}), "the id trait is the user id: not kept");
        let cart = one(
            Route::Batch,
            json!({"type": "track", "event": "Product Added", "anonymousId": "a",
                                            "properties": {"price": "3.50"}}),
        )
        .unwrap();
        assert_eq!(cart.event["properties"]["price"], 3.5);
        let odd = one(
            Route::Batch,
            json!({"type": "track", "event": "Order Completed", "anonymousId": "a",
                                           "properties": {"revenue": 1, "currency": 978}}),
        )
        .unwrap();
        assert_eq!(odd.event["properties"]["currency"], 978, "left for validation to refuse, not turned into USD");
        let settings = one(
            Route::Batch,
            json!({"type": "track", "event": "Settings Changed", "anonymousId": "a",
                                                "properties": {"email": true, "mobile": false, "phone": null}}),
        )
        .unwrap();
        assert_eq!(settings.event["properties"], json!({"email": true, "mobile": false, "phone": null}), "flags kept");
        let forged = one(
            Route::Batch,
            json!({"type": "identify", "userId": "u", "traits": {"email": "a@b.co",
                                              "email_sha256": "raw@example.com"}}),
        )
        .unwrap();
        assert_eq!(forged.event["properties"]["email_sha256"], pii::hash_email("a@b.co").unwrap().as_str());
    }

    #[test]
    fn a_wrong_clock_is_corrected_by_sent_at() {
        // The device is two hours behind: it dated the event a minute before it sent it.
        let msg = json!({"type": "track", "event": "x", "anonymousId": "a",
                         "timestamp": "2026-12-07T07:59:10Z", "sentAt": "2026-12-07T08:00:10Z"});
        assert_eq!(one(Route::Batch, msg).unwrap().event["timestamp"], "2026-12-07T09:59:10.000Z");
        // RudderStack's originalTimestamp counts as the time; a sentAt that is no time, none.
        let msg = json!({"type": "track", "event": "x", "anonymousId": "a",
                         "originalTimestamp": "2026-12-07T07:59:10Z", "sentAt": "soon"});
        let t = translate("shop", Route::Batch, msg, None, T_RECEIVED, |u| u.into(), || Uuid::from_u128(1)).unwrap();
        assert_eq!(t.event["timestamp"], "2026-12-07T07:59:10.000Z");
    }

    #[test]
    fn page_screen_group_alias() {
        let page = one(
            Route::Batch,
            json!({"type": "page", "name": "Pricing", "category": "Docs", "anonymousId": "a",
                   "context": {"page": {"url": "https://shop.example/p", "referrer": "https://search.example/"},
                               "campaign": {"source": "News", "medium": "email", "name": "Spring"}}}),
        )
        .unwrap();
        assert_eq!(page.event["type"], "page_view");
        assert_eq!(page.event["properties"]["name"], "Docs Pricing");
        assert_eq!(page.event["properties"]["url"], "https://shop.example/p");
        assert_eq!(page.event["context"]["campaign"]["utm_source"], "News");
        assert_eq!(page.event["context"]["campaign"]["utm_campaign"], "Spring");
        let screen = one(Route::Call(Call::Screen), json!({"name": "Home", "userId": "u"})).unwrap();
        assert_eq!(
            (screen.event["type"].as_str(), screen.event["properties"]["name"].as_str()),
            (Some("screen_view"), Some("Home"))
        );
        assert_eq!(screen.event["anonymous_id"], "user:h(u)", "a user-only message gets a pseudonym");
        let group =
            one(Route::Batch, json!({"type": "group", "groupId": "acme", "userId": "u", "traits": {"name": "Acme"}}))
                .unwrap();
        assert_eq!(group.event["context"]["group_id"], "acme");
        assert_eq!(group.event["properties"]["group_id"], "acme");
        assert_eq!(group.event["properties"]["name"], "Acme");
        let alias = one(Route::Batch, json!({"type": "alias", "previousId": "u1", "userId": "u2"})).unwrap();
        assert_eq!((alias.event["type"].as_str(), alias.event["user_id"].as_str()), (Some("alias"), Some("u2")));
        assert_eq!(alias.event["properties"]["previous_id"], "u1");
        assert!(one(Route::Batch, json!({"type": "alias", "previousId": "u1", "anonymousId": "a"})).is_err());
        assert!(one(Route::Batch, json!({"type": "group", "userId": "u"})).is_err());
    }

    #[test]
    fn context_maps_onto_trailmarks_and_drops_the_rest() {
        let t = one(
            Route::Batch,
            json!({"type": "track", "event": "x", "anonymousId": "a",
                   "context": {"app": {"version": "2.1", "build": 310, "namespace": "com.shop"},
                               "os": {"name": "iOS", "version": "18.1"},
                               "device": {"id": "IDFV-1", "model": "iPhone16,1", "manufacturer": "Apple", "advertisingId": "AAAA"},
                               "screen": {"width": 390, "height": 844}, "locale": "en-US", "timezone": "Europe/Berlin",
                               "library": {"name": "analytics-node", "version": "3.1.0"},
                               "ip": "203.0.113.9", "userAgent": "ua/1", "groupId": "g",
                               "traits": {"email": "x@y.z"}}}),
        )
        .unwrap();
        let c = &t.event["context"];
        assert_eq!(c["app"], json!({"id": "com.shop", "version": "2.1", "build": "310"}));
        assert_eq!(c["device"]["os"], "iOS");
        assert_eq!(c["device"]["screen"], json!({"width": 390, "height": 844}));
        assert_eq!(c["sdk"]["name"], "analytics-node");
        assert_eq!(c["group_id"], "g");
        assert_eq!(t.event["device_id"], "IDFV-1");
        assert_eq!(t.origin, Origin { ip: Some("203.0.113.9".into()), user_agent: Some("ua/1".into()) });
        let text = t.event.to_string();
        assert!(!text.contains("AAAA") && !text.contains("x@y.z") && !text.contains("203.0.113.9"), "{text}");
    }

    #[test]
    fn event_ids_come_from_the_message_id_or_the_content() {
        let msg = json!({"type": "track", "event": "x", "anonymousId": "a", "messageId": "m-1", "timestamp": "2026-12-07T10:00:00Z"});
        let a = one(Route::Batch, msg.clone()).unwrap();
        let mut again = msg.clone();
        again["sentAt"] = json!("2026-12-07T11:00:00Z");
        again["properties"] = json!({"changed": true});
        assert_eq!(a.event["event_id"], one(Route::Batch, again).unwrap().event["event_id"], "same messageId");
        let other_app = translate("blog", Route::Batch, msg, None, 0, |u| u.into(), || Uuid::from_u128(7)).unwrap();
        assert_ne!(a.event["event_id"], other_app.event["event_id"], "ids are per app");
        let untimed = one(Route::Batch, json!({"type": "track", "event": "x", "anonymousId": "a"})).unwrap();
        assert_eq!(untimed.event["event_id"], Uuid::from_u128(7).to_string(), "no messageId, no time: a fresh id");
        assert_eq!(untimed.event["timestamp"], "2026-12-07T10:00:10.000Z", "no time: its arrival, uncorrected");
        let bare = json!({"type": "track", "event": "x", "anonymousId": "a", "timestamp": "2026-12-07T10:00:00Z"});
        let first = one(Route::Batch, bare.clone()).unwrap();
        let mut retried = bare.clone();
        retried["sentAt"] = json!("2026-12-07T12:00:00Z");
        assert_eq!(first.event["event_id"], one(Route::Batch, retried).unwrap().event["event_id"]);
        assert!(Uuid::parse_str(first.event["event_id"].as_str().unwrap()).is_ok());
    }

    #[test]
    fn bad_messages_are_refused_with_a_reason() {
        for (msg, part) in [
            (json!({"type": "track", "event": "x"}), "userId or an anonymousId"),
            (json!({"type": "launch", "anonymousId": "a"}), "/type"),
            (json!({"anonymousId": "a"}), "/type: missing"),
            (json!({"type": "track", "anonymousId": "a"}), "/event"),
            (json!({"type": "track", "event": "x", "anonymousId": "a", "timestamp": "yesterday"}), "/timestamp"),
            (json!({"type": "track", "event": "x", "anonymousId": {"a": 1}}), "/anonymousId"),
            (json!("track"), "object"),
        ] {
            let err = one(Route::Batch, msg.clone()).unwrap_err();
            assert!(err.contains(part), "{msg}: {err}");
        }
        assert!(messages(Route::Batch, json!({"batch": {}})).is_err());
        assert!(messages(Route::Batch, json!([1])).is_err());
        let many = json!({"batch": vec![json!({}); protocol::MAX_BATCH_EVENTS + 1]});
        assert!(messages(Route::Batch, many).is_err());
        let ok = messages(Route::Batch, json!({"batch": [{}, {}], "sentAt": "2026-12-07T10:00:00Z"})).unwrap();
        assert_eq!((ok.messages.len(), ok.sent_at.as_deref()), (2, Some("2026-12-07T10:00:00Z")));
    }
}
