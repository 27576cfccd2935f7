//! The event validator (`domain::validate::Validators`: the JSON Schemas of the standard
//! types, the generic one and an app's own) and the normalisation after it, on arbitrary JSON
//! events and on well-formed events whose fields the fuzzer fills in.
//!
//! Properties: nothing panics; a refusal names where it is; an event the schema accepts has
//! the required fields with the required types, and normalises.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use trailmark_fuzz::{APP, EventFields, MAX_MS, MIN_MS, validators};
use trailmark_server::domain::enrich::{Geo, UserAgent};
use trailmark_server::domain::events::normalise;

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    /// Any JSON text.
    Raw(&'a [u8]),
    /// A well-formed event with fields chosen by the fuzzer, and the batch's `sent_at`.
    Fields { event: Box<EventFields<'a>>, sent_at: Option<i64> },
}

const T0: i64 = 1_767_225_600_000;

fn event(input: Input) -> Option<(Value, Option<i64>)> {
    match input {
        Input::Raw(bytes) => {
            let value = trailmark_server::http::extract::parse_json(bytes, 40).ok()?;
            Some((value, None))
        }
        Input::Fields { event, sent_at } => Some((event.to_value(), sent_at.map(|t| t.clamp(MIN_MS, MAX_MS)))),
    }
}

fuzz_target!(|input: Input| {
    let Some((event, sent_at)) = event(input) else { return };
    match validators().event(APP, &event) {
        Ok(()) => {
            for key in ["event_id", "type", "timestamp", "anonymous_id"] {
                assert!(event.get(key).is_some_and(Value::is_string), "accepted without a string {key}: {event}");
            }
            assert!(event.get("properties").is_none_or(Value::is_object), "{event}");
            assert!(event.get("context").is_none_or(Value::is_object), "{event}");
            if let Err(e) = normalise(APP, event, sent_at, T0, &UserAgent::default(), &Geo::default(), None) {
                panic!("the schema accepts an event that normalisation refuses: {e}");
            }
        }
        Err(reason) => {
            assert!(reason.starts_with('/'), "a refusal names its place: {reason}");
        }
    }
});
