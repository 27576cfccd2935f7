//! Normalisation and hashing of personal identifiers.
//!
//! `identify` traits `email` and `phone` never leave the engine raw: they are normalised and
//! replaced by `email_sha256` / `phone_sha256` (lowercase hex SHA-256 of the normalised value).
//! The normalisation follows what ad networks expect for hashed matching, so the same person
//! hashes the same on every platform and on the server.

#[allow(unused_imports)]
use crate::prelude::*;

use sha2::{Digest, Sha256};
use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PiiError {
    #[error("not an email address")]
    InvalidEmail,
    #[error("a phone number needs 8 to 15 digits including the country code, got {0}")]
    InvalidPhone(usize),
    #[error("an empty value")]
    Empty,
}

/// Trims surrounding white space and lower-cases; requires one `@` with text on both sides.
pub fn normalize_email(raw: &str) -> Result<String, PiiError> {
    let email = lowercase(raw.trim());
    let (local, domain) = email.split_once('@').ok_or(PiiError::InvalidEmail)?;
    if local.is_empty() || domain.is_empty() || domain.contains('@') || email.chars().any(char::is_whitespace) {
        return Err(PiiError::InvalidEmail);
    }
    Ok(email)
}

/// `str::to_lowercase`. Without feature `unicode-case` (the web build) non-ASCII text goes to the
/// host's lower-casing (set with [`set_host_lowercase`]; the page's `String.toLowerCase`, the
/// same Unicode Default Case Conversion), which keeps Unicode's case tables out of the wasm.
#[cfg(feature = "unicode-case")]
fn lowercase(s: &str) -> String {
    s.to_lowercase()
}

#[cfg(not(feature = "unicode-case"))]
static HOST_LOWERCASE: core::sync::atomic::AtomicPtr<()> = core::sync::atomic::AtomicPtr::new(core::ptr::null_mut());

/// The host's Unicode lower-casing, for builds without feature `unicode-case`.
#[cfg(not(feature = "unicode-case"))]
pub fn set_host_lowercase(f: fn(&str) -> String) {
    HOST_LOWERCASE.store(f as *mut (), core::sync::atomic::Ordering::Relaxed);
}

#[cfg(not(feature = "unicode-case"))]
fn lowercase(s: &str) -> String {
    let f = HOST_LOWERCASE.load(core::sync::atomic::Ordering::Relaxed);
    if s.is_ascii() || f.is_null() {
        // Without a host function non-ASCII letters keep their case (ASCII is exact).
        return s.to_ascii_lowercase();
    }
    // SAFETY: only `set_host_lowercase` stores into it, always a `fn(&str) -> String`.
    let f: fn(&str) -> String = unsafe { core::mem::transmute(f) };
    f(s)
}

/// Reduces a phone number to its E.164 digits (country code + subscriber number, no `+`):
/// every non-digit is removed, then an international `00` prefix or other leading zeros.
/// `+44 (0)20 7946-0958` is not rewritten for the trunk `(0)`; callers pass numbers with a
/// country code, as E.164 requires.
pub fn normalize_phone(raw: &str) -> Result<String, PiiError> {
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_start_matches('0').to_owned();
    if !(8..=15).contains(&digits.len()) {
        return Err(PiiError::InvalidPhone(digits.len()));
    }
    Ok(digits)
}

/// `identify` traits hashed when the host does not say otherwise: e-mail addresses and phone
/// numbers under their common names. Names compare ignoring ASCII case and `_`, `-`, `.` and
/// spaces, so `emailAddress`, `Email-Address` and `email_address` are one name.
pub const DEFAULT_HASHED_TRAITS: &[&str] = &[
    "email",
    "email_address",
    "e_mail",
    "user_email",
    "phone",
    "phone_number",
    "mobile",
    "mobile_number",
    "mobile_phone",
    "telephone",
];

/// A trait name as names are compared: ASCII lower case, without `_`, `-`, `.` and spaces.
/// (Plain loops: iterator adapters cost the web build more code.)
fn name_form(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    for &b in name.as_bytes() {
        if !matches!(b, b'_' | b'-' | b'.' | b' ') {
            out.push(b.to_ascii_lowercase());
        }
    }
    out
}

/// Whether `hay` holds `needle` (a byte scan: `str::contains` brings a string searcher the web
/// build does not need).
fn holds(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether trait `key` is hashed: one of [`DEFAULT_HASHED_TRAITS`] (always) or of the host's
/// `extra` names, compared as that list says.
pub fn is_hashed_trait(key: &str, extra: Option<&[String]>) -> bool {
    let key = name_form(key);
    for h in DEFAULT_HASHED_TRAITS {
        if name_form(h) == key {
            return true;
        }
    }
    for h in extra.unwrap_or_default() {
        if name_form(h) == key {
            return true;
        }
    }
    false
}

/// The hash of a trait's value by its name: e-mail rules for names with `email` in them (or
/// `mail`), phone rules for names with `phone` or `mobile` in them (or `tel`, `telephone`),
/// else trimmed and lower-cased (the normalisation ad networks use for names, cities and the
/// like; empty is refused).
pub fn hash_trait(key: &str, raw: &str) -> Result<String, PiiError> {
    let name = name_form(key);
    if holds(&name, b"email") || name == b"mail" {
        hash_email(raw)
    } else if holds(&name, b"phone") || holds(&name, b"mobile") || name == b"tel" || name == b"telephone" {
        hash_phone(raw)
    } else {
        let text = lowercase(raw.trim());
        if text.is_empty() {
            return Err(PiiError::Empty);
        }
        Ok(sha256_hex(&text))
    }
}

/// Lowercase hex SHA-256 of `value`.
pub fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

/// `sha256_hex(normalize_email(raw))`.
pub fn hash_email(raw: &str) -> Result<String, PiiError> {
    normalize_email(raw).map(|e| sha256_hex(&e))
}

/// `sha256_hex(normalize_phone(raw))`.
pub fn hash_phone(raw: &str) -> Result<String, PiiError> {
    normalize_phone(raw).map(|p| sha256_hex(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_normalisation() {
        assert_eq!(normalize_email("  Jane.Doe@Example.COM \n").unwrap(), "jane.doe@example.com");
        assert_eq!(normalize_email("nope"), Err(PiiError::InvalidEmail));
        assert_eq!(normalize_email("@x.com"), Err(PiiError::InvalidEmail));
        assert_eq!(normalize_email("a b@x.com"), Err(PiiError::InvalidEmail));
    }

    #[test]
    fn phone_normalisation() {
        assert_eq!(normalize_phone("+1 (650) 555-1234").unwrap(), "16505551234");
        assert_eq!(normalize_phone("0044 20 7946 0958").unwrap(), "442079460958");
        assert_eq!(normalize_phone("12"), Err(PiiError::InvalidPhone(2)));
    }

    #[test]
    fn trait_names_and_their_rules() {
        for key in ["email", "Email", "emailAddress", "E-Mail", "phone_number", "phoneNumber", "Mobile"] {
            assert!(is_hashed_trait(key, None), "{key}");
        }
        for key in ["plan", "name", "emails_sent"] {
            assert!(!is_hashed_trait(key, None), "{key}");
        }
        let own = ["First Name".to_owned()];
        assert!(
            is_hashed_trait("first_name", Some(&own)) && is_hashed_trait("email", Some(&own)),
            "added to the defaults"
        );
        assert!(is_hashed_trait("email", Some(&[])), "an empty list turns nothing off");
        // Names are routed by whole words, not any substring.
        assert_eq!(hash_trait("hotel", "Ritz"), Ok(sha256_hex("ritz")));
        assert_eq!(hash_trait("mailing_address", "1 Main St"), Ok(sha256_hex("1 main st")));
        assert_eq!(hash_trait("emailAddress", " Jane.Doe@Example.com"), hash_email("jane.doe@example.com"));
        assert_eq!(hash_trait("mobile", "+1 650-555-1234"), hash_phone("16505551234"));
        // echo -n 'jane' | sha256sum
        assert_eq!(
            hash_trait("first_name", "  Jane ").unwrap(),
            "81f8f6dde88365f3928796ec7aa53f72820b06db8664f5fe76a7eb13e24546a2"
        );
        assert_eq!(hash_trait("first_name", "  "), Err(PiiError::Empty));
        assert_eq!(hash_trait("email", "nope"), Err(PiiError::InvalidEmail));
    }

    #[test]
    fn known_hashes() {
        // echo -n 'jane.doe@example.com' | sha256sum
        assert_eq!(
            hash_email(" Jane.Doe@example.com").unwrap(),
            "86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d"
        );
        // echo -n '16505551234' | sha256sum
        assert_eq!(
            hash_phone("+1 650-555-1234").unwrap(),
            "6069d14bf122fdfd931dc7beb58e5dfbba395b1faf05bdcd42d12358d63d8599"
        );
    }
}
