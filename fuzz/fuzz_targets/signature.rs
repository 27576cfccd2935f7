//! The request signature as the server checks it: credentials read from arbitrary headers or
//! a beacon's query string (`Credentials::of`), the client address (`client_ip`), then
//! `verify_signature` with arbitrary timestamps, signatures, bodies and server clocks.
//!
//! Properties: nothing panics; a signature is accepted only when it is the HMAC of the body
//! under the secret for a timestamp within the tolerance; a fresh signature by `sign` is
//! accepted, the same one over a changed body or out of tolerance is refused; the timestamp
//! the server keeps (`sent_at_secs`) is the one that was verified.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use trailmark_core::protocol::{self, SIGNATURE_TOLERANCE_SECS, SignatureError};
use trailmark_server::http::extract::{Credentials, client_ip};

#[derive(Arbitrary, Debug)]
enum Signer {
    /// The signature header as given.
    AsGiven,
    /// A correct signature for a timestamp `skew` seconds from the server's clock.
    Fresh { skew: i16 },
    /// A correct signature over the body with one byte changed.
    Tampered { skew: i8, at: u16 },
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    secret: &'a [u8],
    now_secs: i64,
    app: Option<&'a [u8]>,
    timestamp: Option<&'a [u8]>,
    signature: Option<&'a [u8]>,
    forwarded: Option<&'a [u8]>,
    query: &'a str,
    trusted_hops: u8,
    signer: Signer,
    body: &'a [u8],
}

fn request(input: &Input, timestamp: Option<&[u8]>, signature: Option<&[u8]>) -> http::request::Parts {
    // The query as a client could send it; a target the URI parser refuses has no query.
    let uri = format!("/v1/event?{}", input.query);
    let mut builder =
        http::Request::builder().uri(uri.parse::<http::Uri>().unwrap_or_else(|_| "/v1/event".parse().unwrap()));
    for (name, value) in [
        (protocol::HEADER_APP, input.app),
        (protocol::HEADER_TIMESTAMP, timestamp),
        (protocol::HEADER_SIGNATURE, signature),
        ("x-forwarded-for", input.forwarded),
    ] {
        if let Some(value) = value.and_then(|v| http::HeaderValue::from_bytes(v).ok()) {
            builder = builder.header(name, value);
        }
    }
    builder.body(()).expect("valid request").into_parts().0
}

fuzz_target!(|input: Input| {
    let now = input.now_secs;
    // What the signer puts in the headers, and whether the check must pass (`None`: unknown).
    let signed = |skew: i64| {
        let ts = now.saturating_add(skew);
        (ts, Some(ts.to_string().into_bytes()), Some(protocol::sign(input.secret, ts, input.body).into_bytes()))
    };
    let mut body = input.body.to_vec();
    let (timestamp, signature, expect) = match input.signer {
        Signer::AsGiven => (input.timestamp.map(<[u8]>::to_vec), input.signature.map(<[u8]>::to_vec), None),
        Signer::Fresh { skew } => {
            let (ts, timestamp, signature) = signed(i64::from(skew));
            (timestamp, signature, Some(now.abs_diff(ts) <= SIGNATURE_TOLERANCE_SECS as u64))
        }
        Signer::Tampered { skew, at } => {
            let (_, timestamp, signature) = signed(i64::from(skew));
            match body.get_mut(usize::from(at) % input.body.len().max(1)) {
                Some(b) => *b ^= 0x01,
                None => body.push(b'x'),
            }
            (timestamp, signature, Some(false))
        }
    };
    let parts = request(&input, timestamp.as_deref(), signature.as_deref());
    let _ = client_ip(&parts.headers, Some([10, 0, 0, 1].into()), usize::from(input.trusted_hops % 4));
    let credentials = Credentials::of(&parts);
    let header_app = parts.headers.get(protocol::HEADER_APP).and_then(|v| v.to_str().ok());
    assert_eq!(credentials.in_query, header_app.is_none());
    let verdict = protocol::verify_signature(
        input.secret,
        credentials.timestamp.as_deref(),
        credentials.signature.as_deref(),
        &body,
        now,
    );
    if let Ok(()) = verdict {
        let ts_text = credentials.timestamp.as_deref().expect("verified with a timestamp").trim();
        let ts: i64 = ts_text.parse().expect("a verified timestamp reads as the server keeps it");
        assert!(now.abs_diff(ts) <= SIGNATURE_TOLERANCE_SECS as u64, "accepted {ts} at {now}");
        let sig = credentials.signature.as_deref().expect("verified with a signature").trim();
        assert!(sig.eq_ignore_ascii_case(&protocol::sign(input.secret, ts, &body)), "accepted a wrong signature");
    }
    // With the headers present the header values were read; a beacon's query may bring others.
    if let (Some(expect), false) = (expect, credentials.in_query) {
        match verdict {
            Ok(()) => assert!(expect, "accepted a changed body or a stale timestamp"),
            Err(SignatureError::Stale { .. }) | Err(SignatureError::Mismatch) => {
                assert!(!expect, "refused {verdict:?}")
            }
            Err(e) => panic!("a signature made by sign() is malformed: {e:?}"),
        }
    }
});
