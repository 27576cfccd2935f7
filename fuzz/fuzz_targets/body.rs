//! The ingest body after the signature, in the server's order: gzip inflated with the cap
//! (`gunzip`), UTF-8 and JSON with the depth cap (`parse_json`), the batch envelope, each
//! event's schema, normalisation and enrichment (`trailmark_fuzz::ingest_steps`).
//!
//! Bodies come raw (identity), as an arbitrary gzip stream, or wrapped in gzip by the harness
//! (so the JSON behind a valid gzip header is reached). Properties: nothing panics or
//! allocates without bound; a valid gzip body inflates to exactly its content when that fits
//! the cap and is refused as too large when not; an accepted JSON body is within the depth cap.

#![no_main]

use std::io::Write;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
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
struct Input<'a> {
    encoding: Encoding,
    /// Selects the body cap: small caps make the gzip cap reachable with short inputs.
    limit: u8,
    /// Selects the JSON depth cap (the default, 40, most of the time).
    depth: u8,
    user_agent: Option<&'a str>,
    body: &'a [u8],
}

const T0: i64 = 1_767_225_600_000;

fuzz_target!(|input: Input| {
    let limit = match input.limit % 4 {
        0 => 256,
        1 => 4096,
        2 => 64 * 1024,
        _ => trailmark_core::protocol::MAX_BATCH_BYTES,
    };
    let depth = if input.depth < 200 { 40 } else { usize::from(input.depth - 199) };
    let body = match input.encoding {
        Encoding::Identity if input.body.len() > limit => return, // a 413 before anything else
        Encoding::Identity => input.body.to_vec(),
        Encoding::Gzip if input.body.len() > limit => return,
        Encoding::Gzip => match gunzip(input.body, limit) {
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
            encoder.write_all(input.body).expect("in memory");
            let compressed = encoder.finish().expect("in memory");
            match gunzip(&compressed, limit) {
                Ok(inflated) => {
                    assert!(input.body.len() <= limit, "inflated past the cap");
                    assert_eq!(inflated, input.body, "gzip round trip");
                    inflated
                }
                Err(e) => {
                    assert!(input.body.len() > limit, "refused a valid gzip body within the cap: {e:?}");
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
