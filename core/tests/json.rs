//! The core's own JSON (issue 18) against serde_json, on random input: what serde_json accepts
//! the core accepts (within the nesting limit) and reads to the same value; what it refuses the
//! core refuses; both write the same text for values without floats.

use proptest::prelude::*;
use serde_json::Value as Serde;
use trailmark_core::json;

/// Random JSON values (depth-limited), with numbers serde_json prints exactly as written.
fn value() -> impl Strategy<Value = Serde> {
    let leaf = prop_oneof![
        Just(Serde::Null),
        any::<bool>().prop_map(Serde::Bool),
        any::<i64>().prop_map(Serde::from),
        any::<u64>().prop_map(Serde::from),
        "\\PC*".prop_map(Serde::String),
        any::<String>().prop_map(Serde::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Serde::Array),
            prop::collection::vec((any::<String>(), inner), 0..8)
                .prop_map(|members| Serde::Object(members.into_iter().collect())),
        ]
    })
}

/// The same value as serde_json's `Value`, read back through the core's writer.
fn through_core(text: &str) -> Option<Serde> {
    let v = json::parse(text, 64).ok()?;
    Some(serde_json::from_str(&v.to_json()).expect("the core writes valid JSON"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn reads_and_writes_what_serde_json_writes(v in value()) {
        let text = serde_json::to_string(&v).unwrap();
        let parsed = json::parse(&text, 64).expect("serde_json's output parses");
        // Without floats both write byte-identical text (sorted keys, same escaping).
        prop_assert_eq!(parsed.to_json(), text);
        let pretty = serde_json::to_string_pretty(&v).unwrap();
        prop_assert_eq!(through_core(&pretty), Some(v));
    }

    #[test]
    fn floats_keep_their_value(x in any::<f64>().prop_filter("finite", |x| x.is_finite())) {
        for text in [serde_json::to_string(&x).unwrap(), format!("{x:e}"), format!("{x:?}")] {
            let ours = json::parse(&text, 4).expect("a finite number parses");
            let back: f64 = ours.to_json().parse().unwrap();
            prop_assert_eq!(back, x);
        }
    }

    #[test]
    fn accepts_and_refuses_as_serde_json_does(bytes in prop::collection::vec(prop_oneof![
        8 => prop::sample::select(b"{}[]\",:0123456789.eE+-truefalsnl \\u\t\n".to_vec()),
        1 => any::<u8>(),
    ], 0..40)) {
        let Ok(text) = std::str::from_utf8(&bytes) else { return Ok(()) };
        let theirs = serde_json::from_str::<Serde>(text).ok();
        let ours = json::parse(text, 128).ok();
        prop_assert_eq!(ours.is_some(), theirs.is_some(), "{:?}", text);
        if let (Some(ours), Some(theirs)) = (ours, theirs) {
            let ours: Serde = serde_json::from_str(&ours.to_json()).unwrap();
            prop_assert_eq!(ours, theirs);
        }
    }
}

/// The SDK must never accept a number the server's serde_json refuses (the event would block
/// the device's queue): near the top of a double's range serde_json is not correctly rounded.
#[test]
fn never_accepts_a_number_serde_json_refuses() {
    let mut cases = Vec::new();
    for mantissa in
        ["1.7976931348623", "1.79769313486231", "1.797693134862315", "1.7976931348623157", "1.79769313486231579"]
    {
        for tail in ["", "0", "1", "4", "5", "58", "6", "8", "9", "99999999999", "00000000001"] {
            for exp in ["e308", "E+308", "e307"] {
                cases.push(format!("{mantissa}{tail}{exp}"));
            }
        }
    }
    for digits in ["179769313486231", "1797693134862315", "17976931348623157", "17976931348623158"] {
        for pad in [291, 292, 293, 294] {
            cases.push(format!("{digits}{}", "0".repeat(pad)));
            cases.push(format!("{digits}{}", "9".repeat(pad)));
        }
    }
    for text in &cases {
        if json::parse(text, 2).is_ok() {
            assert!(serde_json::from_str::<Serde>(text).is_ok(), "the SDK accepts {text}, serde_json refuses it");
        }
    }
}

/// Size checks must count numbers as the server's serde_json will re-print them.
#[test]
fn size_checks_count_numbers_as_the_server_prints_them() {
    use trailmark_core::protocol::{json_len, reprint_excess};
    let texts = [
        r#"{"a":[1e15,1e15,1e15],"b":0.1,"c":-0,"d":1E2,"e":12345678901234567890123,"f":5e-324,"g":42,"h":-7}"#
            .to_owned(),
        format!(r#"{{"a":[{}1e15]}}"#, "1e15,".repeat(5000)),
    ];
    for text in texts {
        let ours = json::parse(&text, 8).unwrap();
        let ours = ours.as_object().unwrap();
        let server = serde_json::to_string(&serde_json::from_str::<Serde>(&text).unwrap()).unwrap().len();
        assert!(json_len(ours) + reprint_excess(ours) >= server, "{server} > {} for {}", json_len(ours), &text[..40]);
    }
}
