//! What keeps deleted data deleted: keyed hashes (HMAC-SHA256 under the server's audit key,
//! never the raw ids) of deleted events (tombstones) and of deleted people's identifiers
//! (suppressions). An event whose id is tombstoned, or that carries a suppressed identifier,
//! is answered as accepted but not stored, credited, posted back or streamed.

use hmac::Mac;

use super::enrich::keyed_hash;
use super::records::Subject;

/// What a deletion leaves behind: tombstones of the deleted events always, and suppressions of
/// the subject's identifiers (its own and the anonymous ids found with it) unless `suppress`
/// is false.
#[derive(Clone)]
pub struct Tombstones {
    pub key: [u8; 32],
    pub suppress: bool,
}

impl std::fmt::Debug for Tombstones {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tombstones").field("key", &"<redacted>").field("suppress", &self.suppress).finish()
    }
}

impl Tombstones {
    /// The tombstone of event `event_id` of `app_id`.
    pub fn event(&self, app_id: &str, event_id: &str) -> String {
        event_hash(&self.key, app_id, event_id)
    }
    /// The suppression of an identifier of kind `kind` in app `app_id` ([`suppression_hash`]).
    pub fn suppression(&self, kind: &str, app_id: &str, value: &str) -> String {
        suppression_hash(&self.key, kind, app_id, value)
    }
}

/// How suppressions key an identifier: user ids and anonymous ids per app (an app chooses its
/// user ids, so user "1" of one app is not user "1" of another), device ids across apps (an
/// advertising or vendor id names one device). Hex HMAC of `<kind>:<app>\x1f<value>`, or of
/// `device_id:<value>`.
pub fn suppression_hash(key: &[u8; 32], kind: &str, app_id: &str, value: &str) -> String {
    match kind {
        "device_id" => id_hash(key, kind, value),
        _ => id_hash(key, kind, &format!("{app_id}\u{1f}{value}")),
    }
}

/// The identifiers a deletion suppresses, as `(kind, app, value)`: the subject's own (a user id
/// in each app it was seen in, a device id once) and every anonymous id found with it. An
/// identifier never seen in any app has nothing to suppress.
pub fn suppressed_ids<'a>(
    subject: &'a Subject,
    anonymous_ids: &'a [(String, String)],
) -> Vec<(&'a str, &'a str, &'a str)> {
    let mut ids: Vec<(&str, &str, &str)> = match subject {
        Subject::DeviceId(d) => vec![("device_id", "", d.as_str())],
        Subject::UserId(u) => anonymous_ids.iter().map(|(app, _)| ("user_id", app.as_str(), u.as_str())).collect(),
        Subject::AnonymousId(_) => Vec::new(),
    };
    ids.extend(anonymous_ids.iter().map(|(app, anon)| ("anonymous_id", app.as_str(), anon.as_str())));
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Hex HMAC of `event:<app>:<event id>` (event ids are stored lower-cased).
pub fn event_hash(key: &[u8; 32], app_id: &str, event_id: &str) -> String {
    hex::encode(keyed_hash(key, &format!("event:{app_id}:{}", event_id.to_ascii_lowercase())).finalize().into_bytes())
}

/// The id under which an install is noted on its address in the touch index or click cache
/// (keyed by app and anonymous id, so a deletion of the person finds it).
pub fn install_touch_id(key: &[u8; 32], app_id: &str, anonymous_id: &str) -> uuid::Uuid {
    let mac = keyed_hash(key, &format!("install-touch:{app_id}\u{1f}{anonymous_id}")).finalize().into_bytes();
    let mut b = [0u8; 16];
    b.copy_from_slice(&mac[..16]);
    uuid::Uuid::from_bytes(b)
}

/// Hex HMAC of `<kind>:<value>`: the subject hash of the deletion audit, and a suppression.
pub fn id_hash(key: &[u8; 32], kind: &str, value: &str) -> String {
    hex::encode(keyed_hash(key, &format!("{kind}:{value}")).finalize().into_bytes())
}

/// The keyed hash of a subject (its kind and value).
pub fn subject_hash(key: &[u8; 32], subject: &Subject) -> String {
    id_hash(key, subject.kind(), subject.value())
}

/// A stored suppression: which identifier (by hash and kind), since when, by which deletion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    pub id_hash: String,
    pub kind: String,
    pub receipt_id: String,
    pub created_at: i64,
}

/// What screening a request's events against the tombstones and suppressions found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Screened {
    /// Event hashes that are tombstoned.
    pub events: Vec<String>,
    /// Identifier hashes that are suppressed.
    pub ids: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_and_distinguish_kinds_apps_and_keys() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(id_hash(&a, "user_id", "alice"), subject_hash(&a, &Subject::UserId("alice".into())));
        assert_ne!(id_hash(&a, "user_id", "alice"), id_hash(&a, "anonymous_id", "alice"));
        assert_ne!(id_hash(&a, "user_id", "alice"), id_hash(&a, "user_id", "Alice"));
        assert_ne!(id_hash(&a, "user_id", "alice"), id_hash(&b, "user_id", "alice"));
        assert_ne!(event_hash(&a, "app1", "e"), event_hash(&a, "app2", "e"));
        assert_eq!(event_hash(&a, "app1", "ABC"), event_hash(&a, "app1", "abc"));
        assert_eq!(id_hash(&a, "user_id", "alice").len(), 64);
        assert!(!format!("{:?}", Tombstones { key: a, suppress: true }).contains("1, 1"));
        assert_ne!(suppression_hash(&a, "user_id", "app1", "1"), suppression_hash(&a, "user_id", "app2", "1"));
        assert_eq!(suppression_hash(&a, "device_id", "app1", "d"), suppression_hash(&a, "device_id", "app2", "d"));
        assert_ne!(suppression_hash(&a, "user_id", "a:b", "c"), suppression_hash(&a, "user_id", "a", "b:c"));
    }

    #[test]
    fn a_deletion_suppresses_user_ids_per_app_and_device_ids_once() {
        let anons = vec![("a".to_owned(), "x".to_owned()), ("b".to_owned(), "y".to_owned())];
        let user = Subject::UserId("u".into());
        assert_eq!(
            suppressed_ids(&user, &anons),
            [("anonymous_id", "a", "x"), ("anonymous_id", "b", "y"), ("user_id", "a", "u"), ("user_id", "b", "u")]
        );
        let device = Subject::DeviceId("d".into());
        assert_eq!(suppressed_ids(&device, &anons[..1]), [("anonymous_id", "a", "x"), ("device_id", "", "d")]);
        assert!(suppressed_ids(&user, &[]).is_empty(), "never seen: nothing to suppress");
    }
}
