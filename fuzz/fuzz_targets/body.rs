//! The ingest body after the signature, in the server's order: gzip inflated with the cap
//! (`gunzip`), UTF-8 and JSON with the depth cap (`parse_json`), the batch envelope, each
//! event's schema, normalisation and enrichment (`trailmark_fuzz::ingest_steps`).
//!
//! The JSON is raw bytes, or a batch envelope (or a lone event) of well-formed events with
//! fuzzed fields, written by the harness and optionally with raw bytes spliced in, so the
//! schemas and normalisation are reached too. Bodies go as they are (identity), as an
//! arbitrary gzip stream, or wrapped in gzip by the harness (so the JSON behind a valid gzip
//! header is reached). Properties: nothing panics or allocates without bound; a valid gzip body
//! inflates to exactly its content when that fits the cap and is refused as too large when not;
//! an accepted JSON body is within the depth cap.

#![no_main]

use std::io::Write;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::json;
use trailmark_core::protocol::format_millis;
use trailmark_fuzz::EventFields;
use trailmark_server::http::extract::{gunzip, parse_json};

#[derive(Arbitrary, Debug)]
enum Encoding {
    Identity,
    /// The bytes as a gzip stream, as sent with `Content-Encoding: gzip`.
    Gzip,
    /// The bytes compressed by the harness, then inflated by the server.
    Wrapped {
        level: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum Payload<'a> {
    Raw(&'a [u8]),
    Batch {
        /// A lone event instead of an envelope (the first event).
        lone: bool,
        sent_at: Option<&'a str>,
        sent_at_ms: i64,
        dropped: Option<(u64, u64)>,
        events: Vec<EventFields<'a>>,
        /// Raw bytes inserted at this offset of the JSON text.
        splice: Option<(u16, &'a [u8])>,
    },
}

impl Payload<'_> {
    fn bytes(&self) -> Vec<u8> {
        let (lone, sent_at, sent_at_ms, dropped, events, splice) = match self {
            Payload::Raw(raw) => return raw.to_vec(),
            Payload::Batch { lone, sent_at, sent_at_ms, dropped, events, splice } => {
                (lone, sent_at, sent_at_ms, dropped, events, splice)
            }
        };
        // A few events: enough for the batch paths; longer batches cost time, not coverage.
        let events: Vec<_> = events.iter().take(MAX_EVENTS).map(EventFields::to_value).collect();
        let mut text = match (lone, events.first()) {
            (true, Some(event)) => serde_json::to_vec(event),
            _ => {
                let sent_at = sent_at.map_or_else(|| format_millis(*sent_at_ms), str::to_owned);
                let mut envelope = json!({"sent_at": sent_at, "batch": events});
                if let Some((queue_full, expired)) = dropped {
                    envelope["dropped"] = json!({"queue_full": queue_full, "expired": expired});
                }
                serde_json::to_vec(&envelope)
            }
        }
        .expect("serialises");
        if let Some((at, bytes)) = splice {
            let at = usize::from(*at).min(text.len());
            text.splice(at..at, bytes.iter().copied());
        }
        text
    }
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    encoding: Encoding,
    /// Selects the body cap: small caps make the gzip cap reachable with short inputs.
    limit: u8,
    /// Selects the JSON depth cap (the default, 40, most of the time).
    depth: u8,
    user_agent: Option<&'a str>,
    payload: Payload<'a>,
}

const T0: i64 = 1_767_225_600_000;
const MAX_EVENTS: usize = 16;

fuzz_target!(|input: Input| {
    let limit = match input.limit % 4 {
        0 => 256,
        1 => 4096,
        2 => 64 * 1024,
        _ => trailmark_core::protocol::MAX_BATCH_BYTES,
    };
    let depth = if input.depth < 200 { 40 } else { usize::from(input.depth - 199) };
    let payload = input.payload.bytes();
    let body = match input.encoding {
        Encoding::Identity if payload.len() > limit => return, // a 413 before anything else
        Encoding::Identity => payload,
        Encoding::Gzip if payload.len() > limit => return,
        Encoding::Gzip => match gunzip(&payload, limit) {
            Ok(inflated) => {
                assert!(inflated.len() <= limit);
                inflated
            }
            Err(e) => {
                assert!(e.status == 400 || e.status == 413, "{e:?}");
                return;
            }
        },
        Encoding::Wrapped { level } => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(u32::from(level % 10)));
            encoder.write_all(&payload).expect("in memory");
            let compressed = encoder.finish().expect("in memory");
            match gunzip(&compressed, limit) {
                Ok(inflated) => {
                    assert!(payload.len() <= limit, "inflated past the cap");
                    assert_eq!(inflated, payload, "gzip round trip");
                    inflated
                }
                Err(e) => {
                    assert!(payload.len() > limit, "refused a valid gzip body within the cap: {e:?}");
                    assert_eq!(e.status, 413);
                    return;
                }
            }
        }
    };
    let value = match parse_json(&body, depth) {
        Ok(value) => value,
        Err(e) => {
            assert_eq!(e.status, 400);
            return;
        }
    };
    assert!(!trailmark_core::protocol::nesting_exceeds(&value, depth));
    let _ = trailmark_fuzz::ingest_steps(value, input.user_agent, T0);
});
