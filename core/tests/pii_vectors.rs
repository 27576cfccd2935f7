//! The shared PII vectors (`tests/pii_vectors.json`) are what this core computes; the web SDK's
//! tests hold its wasm build to the same file.

use serde_json::Value;
use trailmark_core::pii;

#[test]
fn shared_vectors_match_the_core() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/pii_vectors.json");
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    for (kind, hash) in [("email", pii::hash_email as fn(&str) -> _), ("phone", pii::hash_phone)] {
        let cases = v[kind].as_array().unwrap();
        assert!(cases.len() >= 3);
        for case in cases {
            let got = hash(case["input"].as_str().unwrap()).unwrap();
            assert_eq!(got, case["sha256"].as_str().unwrap(), "{case}");
        }
        for bad in v[format!("invalid_{kind}")].as_array().unwrap() {
            assert!(hash(bad.as_str().unwrap()).is_err(), "{bad}");
        }
    }
}
