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
    /// The suppression of an identifier of kind `kind` (`user_id`, `anonymous_id`, `device_id`).
    pub fn id(&self, kind: &str, value: &str) -> String {
        id_hash(&self.key, kind, value)
    }
}

/// Hex HMAC of `event:<app>:<event id>` (event ids are stored lower-cased).
pub fn event_hash(key: &[u8; 32], app_id: &str, event_id: &str) -> String {
    hex::encode(keyed_hash(key, &format!("event:{app_id}:{}", event_id.to_ascii_lowercase())).finalize().into_bytes())
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
    }
}
