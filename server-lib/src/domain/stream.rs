//! The event stream's encoding: one JSON record per accepted event, install decision or
//! deletion request, keyed and grouped into topic families (`docs/stream.md`). Pure; the
//! sinks (`crate::sink`) deliver the records.

use serde_json::{Value, json};
use trailmark_core::protocol::format_millis;

use trailmark_core::protocol::ConsentContext;

use crate::domain::config::{StreamConsent, StreamIds};
use crate::domain::conversions::{consent_allows_postbacks, recorded_consent};
use crate::domain::events::event_json;
use crate::domain::identifiers::IdProtector;
use crate::domain::privacy::id_hash;
use crate::domain::records::{InstallRecord, NewEvent, Subject};

/// Version of the record encoding (`"schema"` in every record).
pub const EVENT_SCHEMA: &str = "trailmark.event/1";

pub const INSTALL_SCHEMA: &str = "trailmark.install/1";

pub const DELETION_SCHEMA: &str = "trailmark.deletion/1";

/// The topic families (topic = `<prefix>.<family>`).
pub const FAMILIES: &[&str] = &["track", "lifecycle", "views", "identity", "revenue", "installs", "deletions"];

/// The family of an event type: what a consumer usually subscribes to together.
pub fn family(event_type: &str, properties: &str) -> &'static str {
    match event_type {
        "identify" | "alias" | "group" | "advertising_id" => "identity",
        "page_view" | "screen_view" | "page" | "screen" => "views",
        "app_open" | "app_opened" | "app_background" | "app_backgrounded" | "app_install" | "app_installed"
        | "app_update" | "app_updated" | "session_start" | "session_end" | "deep_link_opened" => "lifecycle",
        _ if event_type == "purchase" || properties.contains("\"revenue\"") => "revenue",
        _ => "track",
    }
}

/// One record for the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkRecord {
    /// One of [`FAMILIES`].
    pub family: &'static str,
    pub key: String,
    /// JSON.
    pub payload: Vec<u8>,
}

/// The consent members every record carries: the state the SDK had (`null` when the sender
/// said nothing) and whether the person opted out of sharing (do-not-sell or attribution
/// denied, the rule postbacks follow).
fn consent_members(consent: Option<ConsentContext>) -> (Value, bool) {
    let restricted = consent.as_ref().is_some_and(|c| !consent_allows_postbacks(c));
    let shown = consent.map_or(
        Value::Null,
        |c| json!({"analytics": c.analytics, "attribution": c.attribution, "do_not_sell": c.do_not_sell}),
    );
    (shown, restricted)
}

/// The record of a stored event (its client address is never published); `None` when the
/// person opted out and the stream is [`StreamConsent::Strict`].
pub fn event_record(e: &NewEvent, policy: StreamConsent, ids: &IdProtector) -> Option<SinkRecord> {
    // Consumers get the ids as sent, not their stored form.
    let mut raw = e.clone();
    ids.reveal_event(&mut raw);
    let e = &raw;
    let mut payload = event_json(e);
    let (consent, restricted) = consent_members(recorded_consent(&payload["context"]));
    if restricted && policy == StreamConsent::Strict {
        return None;
    }
    payload["schema"] = json!(EVENT_SCHEMA);
    payload["consent"] = consent;
    payload["restricted"] = json!(restricted);
    Some(SinkRecord {
        family: family(&e.event_type, &e.properties),
        key: e.user_id.clone().unwrap_or_else(|| e.anonymous_id.clone()),
        payload: serde_json::to_vec(&payload).unwrap_or_default(),
    })
}

/// The record of an install's attribution decision, under the consent its request carried;
/// `None` when the person opted out and the stream is [`StreamConsent::Strict`].
pub fn install_record(i: &InstallRecord, consent: Option<ConsentContext>, policy: StreamConsent) -> Option<SinkRecord> {
    let (consent, restricted) = consent_members(consent);
    if restricted && policy == StreamConsent::Strict {
        return None;
    }
    let payload = json!({
        "schema": INSTALL_SCHEMA,
        "app_id": i.app_id,
        "event_id": i.event_id,
        "anonymous_id": i.anonymous_id,
        "platform": i.platform,
        "kind": i.kind,
        "install_ts": format_millis(i.install_ts),
        "received_at": format_millis(i.received_at),
        "result": i.result,
        "consent": consent,
        "restricted": restricted,
    });
    Some(SinkRecord {
        family: "installs",
        key: i.anonymous_id.clone(),
        payload: serde_json::to_vec(&payload).unwrap_or_default(),
    })
}

/// The record of a `/v1/user/delete` request, so downstream copies can be deleted too: the
/// subject and every anonymous id it expanded to (per app). With [`StreamIds::Clear`] they are
/// in clear (a consumer must find its rows: keep the topic's retention short and its access
/// narrow); with [`StreamIds::Hashed`] as keyed hashes (`<kind>:<value>` under `key`).
pub fn deletion_record(
    receipt_id: &str,
    subject: &Subject,
    anonymous_ids: &[(String, String)],
    requested_at: i64,
    ids: StreamIds,
    key: &[u8; 32],
) -> SinkRecord {
    let shown = |kind: &str, value: &str| match ids {
        StreamIds::Clear => value.to_owned(),
        StreamIds::Hashed => id_hash(key, kind, value),
    };
    let subject_shown = shown(subject.kind(), subject.value());
    let identifiers: Vec<Value> = anonymous_ids
        .iter()
        .map(|(app, anon)| json!({"kind": "anonymous_id", "app_id": app, "value": shown("anonymous_id", anon)}))
        .collect();
    let payload = json!({
        "schema": DELETION_SCHEMA,
        "receipt_id": receipt_id,
        "subject_kind": subject.kind(),
        "subject": subject_shown,
        "identifiers": identifiers,
        "hashed": ids == StreamIds::Hashed,
        "requested_at": format_millis(requested_at),
    });
    SinkRecord { family: "deletions", key: subject_shown, payload: serde_json::to_vec(&payload).unwrap_or_default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn ids() -> IdProtector {
        IdProtector::new(&[1; 32], &[2; 32], &[])
    }

    #[test]
    fn deletion_records_name_every_expanded_identifier_in_clear_or_hashed() {
        let anons = vec![("app".to_owned(), "anon-1".to_owned()), ("web".to_owned(), "anon-2".to_owned())];
        let subject = Subject::UserId("jane".into());
        let clear = deletion_record("r1", &subject, &anons, 0, StreamIds::Clear, &[3; 32]);
        let body: Value = serde_json::from_slice(&clear.payload).unwrap();
        assert_eq!((clear.family, clear.key.as_str()), ("deletions", "jane"));
        assert_eq!(body["subject"], "jane");
        assert_eq!(body["hashed"], false);
        assert_eq!(body["identifiers"][1], json!({"kind": "anonymous_id", "app_id": "web", "value": "anon-2"}));
        let hashed = deletion_record("r1", &subject, &anons, 0, StreamIds::Hashed, &[3; 32]);
        let text = String::from_utf8(hashed.payload.clone()).unwrap();
        assert!(!text.contains("jane") && !text.contains("anon-"), "{text}");
        let body: Value = serde_json::from_slice(&hashed.payload).unwrap();
        assert_eq!(body["subject"], id_hash(&[3; 32], "user_id", "jane"));
        assert_eq!(hashed.key, id_hash(&[3; 32], "user_id", "jane"));
        assert_eq!(body["identifiers"][0]["value"], id_hash(&[3; 32], "anonymous_id", "anon-1"));
        assert_eq!(body["hashed"], true);
    }

    #[test]
    fn families_and_keys() {
        assert_eq!(family("identify", "{}"), "identity");
        assert_eq!(family("screen_view", "{}"), "views");
        assert_eq!(family("app_open", "{}"), "lifecycle");
        assert_eq!(family("purchase", "{}"), "revenue");
        assert_eq!(family("subscribe", r#"{"revenue": 4.99}"#), "revenue");
        assert_eq!(family("level_up", "{}"), "track");
        for f in ["track", "lifecycle", "views", "identity", "revenue"] {
            assert!(FAMILIES.contains(&f));
        }
        let mut e = NewEvent {
            app_id: "app".into(),
            event_id: "e1".into(),
            event_type: "purchase".into(),
            anonymous_id: "anon".into(),
            client_ts: 1_700_000_000_000,
            corrected_ts: 1_700_000_000_500,
            received_at: 1_700_000_001_000,
            properties: r#"{"revenue":9.5}"#.into(),
            context: "{}".into(),
            enrichment: r#"{"geo":{"country":"DE"}}"#.into(),
            ip_enc: Some(vec![1, 2, 3]),
            ..Default::default()
        };
        let r = event_record(&e, StreamConsent::Strict, &ids()).unwrap();
        assert_eq!((r.family, r.key.as_str()), ("revenue", "anon"));
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!(v["schema"], EVENT_SCHEMA);
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["properties"]["revenue"], 9.5);
        assert_eq!(v["enrichment"]["geo"]["country"], "DE");
        assert!(v.get("ip_enc").is_none() && v.get("ip").is_none(), "no client address");
        assert_eq!((&v["consent"], &v["restricted"]), (&Value::Null, &json!(false)), "a sender that did not say");
        e.user_id = Some("u1".into());
        assert_eq!(
            event_record(&e, StreamConsent::Tagged, &ids()).unwrap().key,
            "u1",
            "a user's events share a key across devices"
        );
    }

    #[test]
    fn opted_out_people_are_tagged_or_left_out() {
        let mut e = NewEvent {
            app_id: "app".into(),
            event_id: "e1".into(),
            event_type: "level_up".into(),
            anonymous_id: "anon".into(),
            properties: "{}".into(),
            enrichment: "{}".into(),
            ..Default::default()
        };
        for (consent, restricted) in [
            (r#"{"analytics":true,"attribution":true,"do_not_sell":false}"#, false),
            (r#"{"analytics":true,"attribution":null,"do_not_sell":false}"#, false),
            (r#"{"analytics":true,"attribution":true,"do_not_sell":true}"#, true),
            (r#"{"analytics":true,"attribution":false,"do_not_sell":false}"#, true),
        ] {
            e.context = format!(r#"{{"consent":{consent}}}"#);
            let tagged = event_record(&e, StreamConsent::Tagged, &ids()).unwrap();
            let v: Value = serde_json::from_slice(&tagged.payload).unwrap();
            assert_eq!(v["restricted"], restricted, "{consent}");
            assert_eq!(v["consent"], serde_json::from_str::<Value>(consent).unwrap());
            assert_eq!(event_record(&e, StreamConsent::Strict, &ids()).is_none(), restricted, "{consent}");
        }
        let install = InstallRecord {
            app_id: "app".into(),
            event_id: "i1".into(),
            anonymous_id: "anon".into(),
            platform: "ios".into(),
            idfa: None,
            idfv: None,
            gaid: None,
            android_id: None,
            install_ts: 0,
            received_at: 0,
            kind: "install".into(),
            result: trailmark_core::protocol::AttributionResult::organic(Default::default()),
            audit: Value::Null,
            ip_enc: None,
            ids_enc: None,
            rejected_credit: None,
        };
        let dns = ConsentContext { analytics: Some(true), attribution: None, do_not_sell: true };
        assert!(install_record(&install, Some(dns), StreamConsent::Strict).is_none());
        let r = install_record(&install, Some(dns), StreamConsent::Tagged).unwrap();
        let v: Value = serde_json::from_slice(&r.payload).unwrap();
        assert_eq!((v["restricted"].as_bool(), v["consent"]["do_not_sell"].as_bool()), (Some(true), Some(true)));
        assert!(install_record(&install, None, StreamConsent::Strict).is_some());
    }
}
