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
