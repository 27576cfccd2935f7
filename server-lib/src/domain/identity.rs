//! The identity map (issue 21, ADR 0015): an `alias` event says that its `properties.previous_id`
//! became its `user_id`, so reports count both as one person and conversion credit crosses
//! their devices. Pure: the links are stored by `storage::IdentityStore`.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::domain::records::{AdIdUpdate, NewEvent, UserLink};

/// The link an `alias` event makes, with `previous_id` in the event's properties replaced by
/// its stored form (`stored_id`: the keyed hash, as user ids are stored) whenever it is a
/// string or a number that is not the event's own anonymous id — also when no link is made,
/// so no raw user id is stored. `None` for other events, for an alias without a user id, and
/// when `previous_id` is the event's own anonymous id (the device's events name their user
/// already: reports join them through the device).
pub fn alias_link(e: &mut NewEvent, stored_id: impl Fn(&str) -> String) -> Option<UserLink> {
    if e.event_type != "alias" {
        return None;
    }
    let mut properties: Map<String, Value> = serde_json::from_str(&e.properties).ok()?;
    let previous = match properties.get("previous_id") {
        Some(Value::String(p)) if !p.is_empty() && *p != e.anonymous_id => stored_id(p),
        Some(Value::Number(n)) => stored_id(&n.to_string()),
        _ => return None,
    };
    properties.insert("previous_id".into(), Value::String(previous.clone()));
    e.properties = Value::Object(properties).to_string();
    let user_id = e.user_id.clone()?;
    (previous != user_id).then(|| UserLink {
        app_id: e.app_id.clone(),
        alias_user_id: previous,
        user_id,
        created_at: e.received_at,
    })
}

/// What an `advertising_id` event (an IDFA after an ATT grant, a GAID fetched late: the SDK
/// sends one when the id arrives after the install was reported) attaches to the device's
/// install: the id in its stored form (`stored_id`: the keyed hash of device ids; `None` for an
/// all-zero id). The id is taken out of the event's properties: it is kept with the install
/// only, where a deletion by that id finds it. Nothing is attached when the event says
/// attribution consent was denied, or for other events.
pub fn advertising_id_update(e: &mut NewEvent, stored_id: impl Fn(&str) -> Option<String>) -> Option<AdIdUpdate> {
    if e.event_type != "advertising_id" {
        return None;
    }
    let mut properties: Map<String, Value> = serde_json::from_str(&e.properties).ok()?;
    let mut update = None;
    for column in ["idfa", "gaid"] {
        let Some(raw) = properties.remove(column) else { continue };
        if let Some(value) = raw.as_str().and_then(&stored_id) {
            update.get_or_insert(AdIdUpdate {
                app_id: e.app_id.clone(),
                anonymous_id: e.anonymous_id.clone(),
                column,
                value,
            });
        }
    }
    e.properties = Value::Object(properties).to_string();
    let context: Value = serde_json::from_str(&e.context).unwrap_or(Value::Null);
    let denied = context["consent"]["attribution"] == Value::Bool(false);
    update.filter(|_| !denied)
}

/// Puts every row under its person's final user id: a user id that is an alias in `links`
/// (`alias → user id`, flat) is replaced by the user id it became. `user_ids` are the rows'
/// user id fields.
pub fn resolve_people<'a>(user_ids: impl IntoIterator<Item = &'a mut Option<String>>, links: &HashMap<String, String>) {
    if links.is_empty() {
        return;
    }
    for user_id in user_ids {
        if let Some(u) = user_id.as_ref().and_then(|u| links.get(u)) {
            *user_id = Some(u.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::records::FactRow;
    use serde_json::json;

    fn alias(previous: Value, user: Option<&str>) -> NewEvent {
        NewEvent {
            app_id: "app".into(),
            event_type: "alias".into(),
            anonymous_id: "anon-1".into(),
            user_id: user.map(str::to_owned),
            properties: serde_json::json!({"previous_id": previous, "x": 1}).to_string(),
            received_at: 7,
            ..NewEvent::default()
        }
    }

    fn h(raw: &str) -> String {
        format!("h:{raw}")
    }

    #[test]
    fn an_alias_links_the_previous_user_id_in_stored_form() {
        let mut e = alias("u1".into(), Some("h:u2"));
        let link = alias_link(&mut e, h).expect("a link");
        assert_eq!(
            link,
            UserLink { app_id: "app".into(), alias_user_id: "h:u1".into(), user_id: "h:u2".into(), created_at: 7 }
        );
        let props: Value = serde_json::from_str(&e.properties).unwrap();
        assert_eq!(props, serde_json::json!({"previous_id": "h:u1", "x": 1}), "no raw previous id is stored");
    }

    #[test]
    fn no_link_without_a_user_id_or_from_the_devices_own_anonymous_id() {
        let mut no_user = alias("u1".into(), None);
        assert_eq!(alias_link(&mut no_user, h), None);
        assert!(no_user.properties.contains("\"h:u1\""), "hashed all the same: {}", no_user.properties);
        let mut numeric = alias(42.into(), Some("h:u2"));
        assert_eq!(alias_link(&mut numeric, h).map(|l| l.alias_user_id), Some("h:42".into()));
        assert_eq!(alias_link(&mut alias("anon-1".into(), Some("h:u2")), h), None);
        assert_eq!(alias_link(&mut alias(json!([1]), Some("h:u2")), h), None);
        assert_eq!(alias_link(&mut alias("".into(), Some("h:u2")), h), None);
        assert_eq!(alias_link(&mut alias("u2".into(), Some("h:u2")), h), None, "an alias to itself");
        let mut track = alias("u1".into(), Some("h:u2"));
        track.event_type = "track".into();
        assert_eq!(alias_link(&mut track, h), None);
    }

    #[test]
    fn a_late_advertising_id_is_attached_hashed_and_never_kept_in_the_event() {
        let event = |props: Value, context: Value| NewEvent {
            app_id: "app".into(),
            event_type: "advertising_id".into(),
            anonymous_id: "anon-1".into(),
            properties: props.to_string(),
            context: context.to_string(),
            ..NewEvent::default()
        };
        let stored = |raw: &str| (!raw.starts_with("0000")).then(|| format!("h:{raw}"));
        let mut e = event(json!({"idfa": "ABC"}), json!({}));
        let u = advertising_id_update(&mut e, stored).expect("an update");
        assert_eq!((u.column, u.value.as_str(), u.anonymous_id.as_str()), ("idfa", "h:ABC", "anon-1"));
        assert_eq!(e.properties, "{}", "the id is kept with the install only");
        let mut denied = event(json!({"gaid": "G", "n": 1}), json!({"consent": {"attribution": false}}));
        assert_eq!(advertising_id_update(&mut denied, stored), None);
        assert_eq!(denied.properties, r#"{"n":1}"#, "not stored at all");
        let mut zeros = event(json!({"idfa": "00000000-0000"}), json!({}));
        assert_eq!(advertising_id_update(&mut zeros, stored), None);
        assert_eq!(zeros.properties, "{}");
    }

    #[test]
    fn rows_of_an_alias_count_under_the_user_id_it_became() {
        let row = |u: Option<&str>| FactRow {
            anonymous_id: "a".into(),
            user_id: u.map(str::to_owned),
            event_type: "x".into(),
            ts: 0,
            session_key: String::new(),
            campaign_key: None,
        };
        let mut rows = [row(Some("u1")), row(Some("u2")), row(None), row(Some("u3"))];
        let links = HashMap::from([("u1".to_owned(), "u2".to_owned())]);
        resolve_people(rows.iter_mut().map(|r| &mut r.user_id), &links);
        let users: Vec<_> = rows.iter().map(|r| r.user_id.as_deref()).collect();
        assert_eq!(users, [Some("u2"), Some("u2"), None, Some("u3")]);
    }
}
