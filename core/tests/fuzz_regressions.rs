//! Inputs that broke the core while its fuzz targets were written or run (`fuzz/`,
//! `docs/fuzzing.md`), kept as plain tests so they stay fixed without the fuzzer.

use trailmark_core::protocol::{SignatureError, verify_signature};

/// A server clock one second before 1970 against the largest timestamp: the skew is exactly
/// i64::MIN, whose `abs()` overflowed (a panic in debug builds; in release the wrapped value
/// passed the tolerance check and only the HMAC refused the request).
#[test]
fn signature_skew_of_i64_min_is_stale() {
    let signature = format!("v1={}", "00".repeat(32));
    let verdict = verify_signature(b"secret", Some("9223372036854775807"), Some(&signature), b"", -1);
    assert_eq!(verdict, Err(SignatureError::Stale { skew_secs: i64::MIN }));
}
