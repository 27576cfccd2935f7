//! Identifiers at rest: advertising ids (IDFA, GAID), vendor and device ids (IDFV, Android id,
//! an event's `device_id`, a click's device parameter) are stored as a **keyed hash** — what
//! matching, lookups and deletions compare — plus an **AES-256-GCM ciphertext** of the raw
//! values, which only the admin views decrypt. Pure.
//!
//! The hash (`h:` and 32 hex digits of HMAC-SHA256 under a key derived from the audit key) is
//! stable: the same device gives the same stored form on every instance and after every key
//! rotation. The ciphertext carries the version of the key that sealed it; the newest key
//! seals, every listed key opens, and the re-encryption job (`service::identifiers`) moves old
//! rows to the newest key (docs/privacy.md, "Identifiers at rest").

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hmac::Mac;

use super::enrich::keyed_hash;
use super::records::{ClickRecord, InstallRecord, NewEvent, Subject, device_id_form};

/// The prefix of a stored identifier hash.
pub const HASH_PREFIX: &str = "h:";

/// Whether a stored identifier is already in hashed form (rows written before identifiers were
/// hashed hold the raw id).
pub fn is_hashed(stored: &str) -> bool {
    stored.len() == HASH_PREFIX.len() + 32
        && stored.starts_with(HASH_PREFIX)
        && stored[HASH_PREFIX.len()..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// One identifier-encryption key and its version (1–255).
#[derive(Clone, PartialEq, Eq)]
pub struct IdKey {
    pub version: u8,
    pub key: [u8; 32],
}

impl std::fmt::Debug for IdKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdKey").field("version", &self.version).field("key", &"<redacted>").finish()
    }
}

/// Hashes and seals identifiers.
pub struct IdProtector {
    /// HMAC-SHA256 keyed with the hash key, ready to be cloned (the key schedule once).
    hasher: hmac::Hmac<sha2::Sha256>,
    /// Newest first.
    keys: Vec<(u8, Aes256Gcm)>,
    /// Nonces: 4 random bytes for this process, then a counter from a random start (no system
    /// call per seal; unique per key while fewer than 2^64 values are sealed by one process).
    nonce_field: [u8; 4],
    nonce_counter: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for IdProtector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdProtector").field("versions", &self.versions()).finish()
    }
}

impl IdProtector {
    /// Hashes under a key derived from `audit_key`; seals with the highest-versioned key of
    /// `keys`, opens with any. Version 1, unless `keys` lists one, is derived from `ip_key`, so
    /// a key file written before identifiers were encrypted needs no new line, and rows sealed
    /// before the first rotation stay readable after it.
    pub fn new(audit_key: &[u8; 32], ip_key: &[u8; 32], keys: &[IdKey]) -> IdProtector {
        let derive =
            |key: &[u8; 32], label: &str| -> [u8; 32] { keyed_hash(key, label).finalize().into_bytes().into() };
        let mut keys: Vec<IdKey> = keys.to_vec();
        if !keys.iter().any(|k| k.version == 1) {
            keys.push(IdKey { version: 1, key: derive(ip_key, "trailmark identifier encryption v1") });
        }
        keys.sort_by_key(|k| std::cmp::Reverse(k.version));
        keys.dedup_by_key(|k| k.version);
        let seed = Aes256Gcm::generate_nonce(&mut OsRng);
        let hash_key = derive(audit_key, "trailmark identifier hash v1");
        IdProtector {
            hasher: <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&hash_key).expect("HMAC takes any key length"),
            keys: keys.iter().map(|k| (k.version, Aes256Gcm::new(&Key::<Aes256Gcm>::from(k.key)))).collect(),
            nonce_field: seed[..4].try_into().expect("4 bytes"),
            nonce_counter: std::sync::atomic::AtomicU64::new(u64::from_le_bytes(
                seed[4..].try_into().expect("8 bytes"),
            )),
        }
    }

    /// The key versions, newest first.
    pub fn versions(&self) -> Vec<u8> {
        self.keys.iter().map(|(v, _)| *v).collect()
    }

    /// The version new ciphertexts are sealed with.
    pub fn current(&self) -> u8 {
        self.keys[0].0
    }

    /// The stored form of a device or advertising id: [`device_id_form`], then hashed; `None`
    /// for an id that is empty or all zeros once normalised (limited ad tracking). Whatever a
    /// client sends is hashed, a value shaped like a stored form too (else anyone who saw a
    /// stored hash could act as that device).
    pub fn device(&self, raw: &str) -> Option<String> {
        let id = device_id_form(raw);
        if id.is_empty() || id.bytes().all(|b| b == b'0' || b == b'-') {
            return None;
        }
        Some(self.hash("device", &id))
    }

    /// The stored form of a user id: hashed as given (user ids are compared exactly), whatever
    /// its shape.
    pub fn user(&self, raw: &str) -> String {
        self.hash("user", raw)
    }

    /// A deletion subject in stored form: user and device ids hashed (anonymous ids are stored
    /// as sent).
    pub fn subject(&self, subject: &Subject) -> Subject {
        match subject {
            Subject::UserId(u) => Subject::UserId(self.user(u)),
            Subject::DeviceId(d) => Subject::DeviceId(self.device(d).unwrap_or_else(|| d.clone())),
            Subject::AnonymousId(a) => Subject::AnonymousId(a.clone()),
        }
    }

    /// An event about to be stored: `user_id` and `device_id` replaced by their stored forms,
    /// the raw values sealed in `ids_enc`.
    pub fn protect_event(&self, e: &mut NewEvent) {
        if e.user_id.is_none() && e.device_id.is_none() {
            return;
        }
        e.ids_enc = self.seal_ids(&[("user_id", e.user_id.as_deref()), ("device_id", e.device_id.as_deref())]);
        e.user_id = e.user_id.as_deref().map(|u| self.user(u));
        e.device_id = e.device_id.as_deref().and_then(|d| self.device(d));
    }

    /// A stored event with its raw `user_id` and `device_id` back (for the inspector and the
    /// stream); ids that do not open stay in stored form.
    pub fn reveal_event(&self, e: &mut NewEvent) {
        let ids = self.open_ids(e.ids_enc.as_deref());
        if let Some(u) = ids.get("user_id").and_then(|v| v.as_str()) {
            e.user_id = Some(u.to_owned());
        }
        if let Some(d) = ids.get("device_id").and_then(|v| v.as_str()) {
            e.device_id = Some(d.to_owned());
        }
    }

    /// A click about to be stored and indexed: its device id in stored form, the raw id sealed.
    pub fn protect_click(&self, c: &mut ClickRecord) {
        if let Some(raw) = c.device_id.take() {
            c.device_id = self.device(&raw);
            let normal = device_id_form(&raw);
            c.device_enc = c.device_id.as_ref().and_then(|_| self.seal_ids(&[("device_id", Some(&normal))]));
        }
    }

    /// An install's raw advertising and vendor ids (as sent, normalised) sealed; the record's
    /// id fields are set to their stored forms.
    pub fn protect_install(&self, i: &mut InstallRecord) {
        i.ids_enc = self.seal_ids(&[
            ("idfa", i.idfa.as_deref()),
            ("idfv", i.idfv.as_deref()),
            ("gaid", i.gaid.as_deref()),
            ("android_id", i.android_id.as_deref()),
        ]);
        for id in [&mut i.idfa, &mut i.idfv, &mut i.gaid, &mut i.android_id] {
            *id = id.as_deref().and_then(|d| self.device(d));
        }
    }

    /// Brings one stored row to the current form: raw identifiers (rows written before
    /// identifiers were hashed; told apart by [`is_hashed`]) hashed and sealed, a ciphertext under an older key sealed again
    /// under the newest. `names` are the JSON names of `ids` in the ciphertext (`user_id` is a
    /// user id; any other name a device or advertising id). Returns whether the row changed;
    /// a ciphertext that no listed key opens is left as it is.
    pub fn renew(&self, names: &[&str], ids: &mut [Option<String>], sealed: &mut Option<Vec<u8>>) -> bool {
        let opened = sealed.as_deref().map(|b| self.open(b));
        if matches!(opened, Some(None)) {
            return false;
        }
        let mut raw = self.open_ids(sealed.as_deref());
        let mut changed = false;
        for (name, id) in names.iter().zip(ids.iter_mut()) {
            let Some(value) = id.as_deref().filter(|v| !is_hashed(v)) else { continue };
            let value = value.to_owned();
            if *name == "user_id" {
                raw.insert((*name).to_owned(), value.clone().into());
                *id = Some(self.user(&value));
            } else {
                let stored = self.device(&value);
                if stored.is_some() {
                    raw.insert((*name).to_owned(), device_id_form(&value).into());
                }
                *id = stored;
            }
            changed = true;
        }
        if changed || sealed.as_deref().is_some_and(|b| self.is_stale(b)) {
            *sealed = if raw.is_empty() { None } else { self.seal(&serde_json::Value::Object(raw).to_string()) };
            changed = true;
        }
        changed
    }

    fn hash(&self, kind: &str, value: &str) -> String {
        let mut mac = self.hasher.clone();
        mac.update(kind.as_bytes());
        mac.update(b"\x1f");
        mac.update(value.as_bytes());
        let bytes = mac.finalize().into_bytes();
        format!("{HASH_PREFIX}{}", hex::encode(&bytes[..16]))
    }

    /// `version ‖ nonce ‖ AES-256-GCM(plain)` under the newest key.
    pub fn seal(&self, plain: &str) -> Option<Vec<u8>> {
        let (version, cipher) = &self.keys[0];
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&self.nonce_field);
        let n = self.nonce_counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        let nonce = Nonce::from(nonce);
        let sealed = cipher.encrypt(&nonce, plain.as_bytes()).ok()?;
        let mut out = Vec::with_capacity(1 + 12 + sealed.len());
        out.push(*version);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Some(out)
    }

    /// The plain text of a [`IdProtector::seal`]ed value; `None` when no listed key opens it.
    pub fn open(&self, blob: &[u8]) -> Option<String> {
        let (&version, rest) = blob.split_first()?;
        let (_, cipher) = self.keys.iter().find(|(v, _)| *v == version)?;
        if rest.len() < 12 {
            return None;
        }
        let (nonce, sealed) = rest.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().ok()?;
        String::from_utf8(cipher.decrypt(&Nonce::from(nonce), sealed).ok()?).ok()
    }

    /// Whether a sealed value should be sealed again under the newest key.
    pub fn is_stale(&self, blob: &[u8]) -> bool {
        blob.first() != Some(&self.current())
    }

    /// The ciphertext of named raw ids (a JSON object of the present ones); `None` when there
    /// are none.
    pub fn seal_ids(&self, ids: &[(&str, Option<&str>)]) -> Option<Vec<u8>> {
        let present: serde_json::Map<String, serde_json::Value> =
            ids.iter().filter_map(|(k, v)| v.map(|v| ((*k).to_owned(), serde_json::Value::from(v)))).collect();
        if present.is_empty() {
            return None;
        }
        self.seal(&serde_json::Value::Object(present).to_string())
    }

    /// The raw ids of a [`IdProtector::seal_ids`] ciphertext (empty when it does not open).
    pub fn open_ids(&self, blob: Option<&[u8]>) -> serde_json::Map<String, serde_json::Value> {
        blob.and_then(|b| self.open(b))
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| match v {
                serde_json::Value::Object(m) => Some(m),
                _ => None,
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_hash_to_one_stable_form() {
        let p = IdProtector::new(&[1; 32], &[2; 32], &[]);
        let a = p.device(" 6D92078A-8246-4BA4-AE5B-76104861E7DC ").unwrap();
        assert_eq!(Some(a.clone()), p.device("6d92078a-8246-4ba4-ae5b-76104861e7dc"), "one case, trimmed");
        assert!(is_hashed(&a) && !a.contains("6d92"), "{a}");
        assert_ne!(p.device(&a), Some(a.clone()), "a value shaped like a stored form is hashed too");
        assert_ne!(p.user(&p.user("jane")), p.user("jane"));
        assert_eq!(p.device("00000000-0000-0000-0000-000000000000"), None, "limited ad tracking");
        assert_eq!(p.device("  "), None);
        // Another audit key: another hash; another encryption key: the same hash.
        assert_ne!(IdProtector::new(&[9; 32], &[2; 32], &[]).device("x"), p.device("x"));
        let rotated = IdProtector::new(&[1; 32], &[2; 32], &[IdKey { version: 7, key: [5; 32] }]);
        assert_eq!(rotated.device("x"), p.device("x"));
        assert!(!is_hashed("h:XYZ") && !is_hashed("6d92078a-8246-4ba4-ae5b-76104861e7dc"));
    }

    #[test]
    fn the_newest_key_seals_and_every_listed_key_opens() {
        let old = IdKey { version: 1, key: [3; 32] };
        let new = IdKey { version: 2, key: [4; 32] };
        let before = IdProtector::new(&[1; 32], &[2; 32], std::slice::from_ref(&old));
        let sealed = before.seal("gaid-1").unwrap();
        assert_eq!(sealed[0], 1);
        assert!(!sealed.windows(6).any(|w| w == b"gaid-1"));
        let after = IdProtector::new(&[1; 32], &[2; 32], &[new.clone(), old]);
        assert_eq!(after.current(), 2);
        assert_eq!(after.open(&sealed).as_deref(), Some("gaid-1"), "an old key still opens");
        assert!(after.is_stale(&sealed) && !before.is_stale(&sealed));
        let resealed = after.seal("gaid-1").unwrap();
        assert_eq!(resealed[0], 2);
        assert_eq!(before.open(&resealed), None, "an instance without the new key cannot open it");
        let only_new = IdProtector::new(&[1; 32], &[2; 32], &[new]);
        assert_eq!(only_new.open(&sealed), None, "a retired key's rows no longer open");
        // The derived version 1 stays next to listed newer keys.
        let derived = IdProtector::new(&[1; 32], &[2; 32], &[]).seal("x").unwrap();
        assert_eq!(only_new.versions(), vec![2, 1]);
        assert_eq!(only_new.open(&derived).as_deref(), Some("x"));
        let mut tampered = resealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(after.open(&tampered), None);
        assert_eq!(after.open(&[]), None);
        assert_eq!(after.open(&[2, 0, 0]), None);
        let ids = after.seal_ids(&[("idfa", Some("A")), ("gaid", None)]).unwrap();
        assert_eq!(serde_json::Value::Object(after.open_ids(Some(&ids))), serde_json::json!({"idfa": "A"}));
        assert_eq!(after.seal_ids(&[("idfa", None)]), None);
        assert!(after.open_ids(None).is_empty());
    }

    #[test]
    fn renewing_hashes_raw_rows_and_reseals_old_ones() {
        let old = IdKey { version: 1, key: [3; 32] };
        let v1 = IdProtector::new(&[1; 32], &[2; 32], std::slice::from_ref(&old));
        let v2 = IdProtector::new(&[1; 32], &[2; 32], &[IdKey { version: 2, key: [4; 32] }, old]);
        let names = ["user_id", "device_id"];
        // A row from before identifiers were hashed.
        let mut ids = vec![Some("Jane".to_owned()), Some(" AB-CD ".to_owned())];
        let mut sealed = None;
        assert!(v2.renew(&names, &mut ids, &mut sealed));
        assert_eq!(ids, vec![Some(v2.user("Jane")), v2.device("ab-cd")]);
        assert_eq!(sealed.as_ref().unwrap()[0], 2);
        assert_eq!(
            serde_json::Value::Object(v2.open_ids(sealed.as_deref())),
            serde_json::json!({"user_id": "Jane", "device_id": "ab-cd"})
        );
        assert!(!v2.renew(&names, &mut ids, &mut sealed), "current rows stay");
        // A row sealed under version 1: sealed again under 2, its hashes unchanged.
        let mut e = NewEvent { user_id: Some("kim".into()), ..Default::default() };
        v1.protect_event(&mut e);
        let mut ids = vec![e.user_id.clone(), None];
        let mut sealed = e.ids_enc.clone();
        assert!(v2.renew(&names, &mut ids, &mut sealed));
        assert_eq!(ids[0], e.user_id);
        assert_eq!(sealed.as_ref().unwrap()[0], 2);
        assert_eq!(v2.open_ids(sealed.as_deref())["user_id"], "kim");
        // A ciphertext no listed key opens is left alone; a placeholder device id goes.
        let stranger = IdProtector::new(&[1; 32], &[2; 32], &[IdKey { version: 9, key: [8; 32] }]);
        let mut kept = sealed.clone();
        assert!(!stranger.renew(&names, &mut ids, &mut kept));
        assert_eq!(kept, sealed);
        let mut zeros = vec![Some("00000000-0000-0000-0000-000000000000".to_owned())];
        let mut none = None;
        assert!(v2.renew(&["idfa"], &mut zeros, &mut none));
        assert_eq!((zeros, none), (vec![None], None));
    }
}
