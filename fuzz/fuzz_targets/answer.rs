//! The SDK reading the server's answers.
//!
//! * The core's JSON reader (`json::parse`) against serde_json, and the answers read from it:
//!   `IngestResponse::from_json`, `AttributionResult::is_valid` / `read`.
//! * What the server writes read back by the SDK (ingest responses, attribution results).
//! * `Retry-After` (`parse_retry_after`) and HTTP dates (`time::parse_http_date`, against
//!   chrono's RFC 2822 parser).
//! * The engine driven through upload cycles: each upload answered with an arbitrary status,
//!   `Retry-After` and body (raw bytes, ingest responses, `stale_timestamp` refusals with any
//!   `server_time`, attribution results), with tracking, consent changes, opt-out, beacons and
//!   restarts in between.
//!
//! Properties: nothing panics or overflows; the core accepts only JSON serde_json accepts and
//! reads it to the same value; what the server writes, the SDK reads unchanged; no event is
//! lost or counted twice (recorded = delivered + rejected + queued + held + dropped); a
//! restart keeps the counters, the queue and the attribution; an accepted install answer is
//! readable through `attribution()`.

#![no_main]

use std::collections::BTreeMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use trailmark_core::engine::{Action, ConsentUpdate, Stats, UploadOutcome, UploadTask, parse_retry_after};
use trailmark_core::json::{self, Object, Value};
use trailmark_core::protocol::{self, AttributionResult, DeepLink, FraudVerdict, IngestResponse, MatchType, Rejection};
use trailmark_core::{Config, Engine, MemoryStore};

/// Unix ms of 0000-01-01 and 9999-12-31: a device clock is somewhere in between.
const MIN_MS: i64 = -62_167_219_200_000;
const MAX_MS: i64 = 253_402_300_799_999;
const T0: i64 = 1_767_225_600_000;

#[derive(Arbitrary, Debug)]
struct Attribution<'a> {
    attributed: bool,
    match_type: u8,
    confidence: f64,
    campaign_id: Option<&'a str>,
    link_id: Option<&'a str>,
    click_id: Option<&'a str>,
    network: Option<&'a str>,
    deep_link: Option<(&'a str, Vec<(&'a str, &'a str)>)>,
    flags: Vec<&'a str>,
    rejected: bool,
    reinstall: bool,
}

const MATCH_TYPES: [MatchType; 6] = [
    MatchType::ClickId,
    MatchType::Referrer,
    MatchType::DeviceId,
    MatchType::Fingerprint,
    MatchType::ViewThrough,
    MatchType::Organic,
];

impl Attribution<'_> {
    /// The result as the server builds it: a confidence from 0 to 1 (1 for deterministic
    /// matches, a fingerprint score otherwise; `matching::score` sums weights that add up to 1).
    /// Any value outside is folded into that range, keeping its digits varied.
    fn result(&self) -> AttributionResult {
        let s = |v: Option<&str>| v.map(str::to_owned);
        AttributionResult {
            attributed: self.attributed,
            match_type: MATCH_TYPES[usize::from(self.match_type) % MATCH_TYPES.len()],
            confidence: match self.confidence {
                c if (0.0..=1.0).contains(&c) => c,
                c if c.is_finite() => c.abs().fract(),
                _ => 0.0,
            },
            campaign_id: s(self.campaign_id),
            link_id: s(self.link_id),
            click_id: s(self.click_id),
            network: s(self.network),
            deep_link: self.deep_link.as_ref().map(|(path, params)| DeepLink {
                path: (*path).to_owned(),
                params: params.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
            }),
            fraud: FraudVerdict {
                flags: self.flags.iter().map(|f| (*f).to_owned()).collect(),
                rejected: self.rejected,
            },
            reinstall: self.reinstall,
            reason: (!self.attributed).then(|| "no_click_in_window".to_owned()),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Answer<'a> {
    NetworkError,
    Raw { status: u16, retry_after: Option<&'a str>, body: &'a [u8] },
    Ingest { status: u8, accepted: u64, duplicates: u64, rejected: Vec<(u16, &'a str)> },
    Stale { forbidden: bool, code: bool, server_time: i64 },
    Attribution { status: u8, result: Attribution<'a> },
}

impl Answer<'_> {
    fn outcome(&self) -> UploadOutcome {
        let response = |status: u16, body: Vec<u8>| UploadOutcome::Response { status, retry_after: None, body };
        match self {
            Answer::NetworkError => UploadOutcome::NetworkError("connection reset".into()),
            Answer::Raw { status, retry_after, body } => UploadOutcome::Response {
                status: *status,
                retry_after: retry_after.map(str::to_owned),
                body: body.to_vec(),
            },
            Answer::Ingest { status, accepted, duplicates, rejected } => {
                let body = IngestResponse {
                    accepted: *accepted,
                    duplicates: *duplicates,
                    suppressed: 0,
                    rejected: rejected
                        .iter()
                        .map(|(i, r)| Rejection { index: usize::from(*i), reason: (*r).to_owned() })
                        .collect(),
                };
                response(200 + u16::from(*status % 100), serde_json::to_vec(&body).expect("serialises"))
            }
            Answer::Stale { forbidden, code, server_time } => {
                let code = if *code { "stale_timestamp" } else { "invalid_signature" };
                let body = serde_json::json!({"error": {"code": code, "message": "m", "server_time": server_time}});
                response(if *forbidden { 403 } else { 401 }, body.to_string().into_bytes())
            }
            Answer::Attribution { status, result } => {
                response(200 + u16::from(*status % 100), serde_json::to_vec(&result.result()).expect("serialises"))
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Step<'a> {
    Poll { advance_ms: u32, answer: Answer<'a> },
    Track { count: u8, name: &'a str, properties: &'a str },
    Background,
    Foreground,
    Beacon { max_bytes: u16 },
    Consent { analytics: Option<bool>, attribution: Option<bool> },
    OptOut,
    OptIn,
    Referrer { referrer: Option<&'a str>, click_ts: Option<i64> },
    OpenUrl(&'a str),
    Restart,
}

#[derive(Arbitrary, Debug)]
struct Setup {
    platform: u8,
    require_consent: bool,
    max_queue_events: u8,
    max_batch_events: u8,
    max_pre_consent_events: u8,
    flush_at: u8,
}

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    Json { depth: u8, text: &'a [u8] },
    ServerWrites { ingest: (u64, u64, Vec<(u64, &'a str)>), attribution: Attribution<'a> },
    RetryAfter { value: &'a str, now: i64 },
    Engine { setup: Setup, steps: Vec<Step<'a>> },
}

fn json_mode(depth: u8, bytes: &[u8]) {
    let ingest = IngestResponse::from_json(bytes);
    let Ok(text) = std::str::from_utf8(bytes) else {
        assert!(ingest.is_none());
        return;
    };
    let depth = usize::from(depth % 65);
    let serde = serde_json::from_str::<serde_json::Value>(text);
    match json::parse(text, depth) {
        Ok(v) => {
            let theirs = serde.unwrap_or_else(|e| panic!("the core accepts what serde_json refuses ({e})"));
            let back: serde_json::Value = serde_json::from_str(&v.to_json()).expect("the core writes JSON");
            assert_eq!(back, theirs, "the core reads another value");
        }
        Err(json::ParseError::TooDeep) => {}
        // The top sliver of the double range, refused on purpose (see json::LIMIT_DIGITS).
        Err(json::ParseError::Syntax { what: "number out of range", .. }) => {}
        Err(e) => assert!(serde.is_err(), "the core refuses what serde_json accepts: {e:?}"),
    }
    // Answers: ours against the server's serde types, when both read them.
    if let (Some(ours), Ok(theirs)) = (&ingest, serde_json::from_slice::<IngestResponse>(bytes)) {
        assert_eq!(ours, &theirs);
    }
    let Some(Value::Object(o)) = json::parse(text, 16).ok() else { return };
    let read = AttributionResult::read(&o);
    assert_eq!(read.is_some(), AttributionResult::is_valid(&o));
    if let (Some(ours), Ok(theirs)) = (read, serde_json::from_slice::<AttributionResult>(bytes)) {
        assert_same_attribution(&ours, &theirs);
    }
}

/// Equal, the confidence within one unit in the last place (serde_json's float reading is not
/// always correctly rounded; the core's is).
fn assert_same_attribution(a: &AttributionResult, b: &AttributionResult) {
    let close = a.confidence == b.confidence || a.confidence.to_bits().abs_diff(b.confidence.to_bits()) <= 1;
    assert!(close, "confidence {} vs {}", a.confidence, b.confidence);
    assert_eq!(&AttributionResult { confidence: b.confidence, ..a.clone() }, b);
}

fn server_writes(ingest: &(u64, u64, Vec<(u64, &str)>), attribution: &Attribution) {
    let response = IngestResponse {
        accepted: ingest.0,
        duplicates: ingest.1,
        suppressed: ingest.0 / 3,
        rejected: ingest.2.iter().map(|(i, r)| Rejection { index: *i as usize, reason: (*r).to_owned() }).collect(),
    };
    let text = serde_json::to_vec(&response).expect("serialises");
    assert_eq!(IngestResponse::from_json(&text), Some(response));
    let result = attribution.result();
    let text = serde_json::to_string(&result).expect("serialises");
    let parsed = json::parse(&text, 16).expect("the SDK parses the server's answer");
    let read = AttributionResult::read(parsed.as_object().expect("an object")).expect("the SDK reads it");
    assert_same_attribution(&read, &result);
}

fn retry_after(value: &str, now: i64) {
    let now = now.clamp(MIN_MS, MAX_MS);
    let parsed = parse_retry_after(value, now);
    let trimmed = value.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        assert_eq!(parsed, trimmed.parse::<u64>().ok().map(Duration::from_secs));
        return;
    }
    let ours = trailmark_core::time::parse_http_date(value);
    assert_eq!(parsed.is_some(), ours.is_some());
    if let (Some(ours), Ok(theirs)) = (ours, chrono::DateTime::parse_from_rfc2822(value.trim())) {
        assert_eq!(ours, theirs.timestamp_millis(), "chrono reads another time");
    }
}

/// recorded = delivered + rejected (events only) + queued + held + every drop.
fn check_conservation(stats: &Stats, install_rejections: u64) {
    let out = stats.delivered
        + (stats.rejected_by_server - install_rejections)
        + stats.queued
        + stats.held
        + stats.dropped_queue_full
        + stats.dropped_expired
        + stats.dropped_pre_consent_full
        + stats.dropped_consent_denied
        + stats.dropped_opted_out;
    assert_eq!(stats.recorded, out, "events lost or counted twice: {stats:?}");
}

fn config(setup: &Setup) -> Config {
    let mut config = Config::new("app", "secret", "https://collect.example");
    match setup.platform % 3 {
        0 => {}
        1 => {
            config.device.os = Some("iOS".into());
            config.device_id = Some("IDFV-1".into());
        }
        _ => {
            config.device.os = Some("Android".into());
            config.device_id = Some("android-1".into());
        }
    }
    config.require_consent = setup.require_consent;
    let p = &mut config.policy;
    p.max_queue_events = usize::from(setup.max_queue_events).max(1);
    p.max_batch_events = usize::from(setup.max_batch_events % 32).max(1);
    p.max_pre_consent_events = usize::from(setup.max_pre_consent_events).max(1);
    p.flush_at = usize::from(setup.flush_at % 16).max(1);
    config
}

fn is_valid_attribution(body: &[u8]) -> bool {
    std::str::from_utf8(body)
        .ok()
        .and_then(|t| json::parse(t, 16).ok())
        .is_some_and(|v| v.as_object().is_some_and(AttributionResult::is_valid))
}

fn engine_mode(setup: &Setup, steps: &[Step]) {
    let config = config(setup);
    let mut engine = Engine::open(config.clone(), MemoryStore::new(), T0, [1; 32]).expect("opens");
    let mut now = T0;
    let mut install_rejections = 0;
    let mut restarts = 0u8;
    for step in steps.iter().take(64) {
        match step {
            Step::Poll { advance_ms, answer } => {
                now += i64::from(*advance_ms);
                let Action::Upload(task) = engine.poll(now) else { continue };
                let install = task.url.ends_with(protocol::INSTALL_PATH);
                check_task(&task, install);
                let before = engine.stats();
                let outcome = answer.outcome();
                let attributed = matches!(&outcome, UploadOutcome::Response { status: 200..=299, body, .. }
                    if install && is_valid_attribution(body));
                engine.report(now, task.batch_id, outcome);
                let after = engine.stats();
                if install {
                    install_rejections += after.rejected_by_server - before.rejected_by_server;
                    assert!(after.rejected_by_server - before.rejected_by_server <= 1);
                    if attributed {
                        assert!(engine.attribution().is_some(), "an accepted install answer reads back");
                    }
                } else {
                    let acked =
                        (after.delivered - before.delivered) + (after.rejected_by_server - before.rejected_by_server);
                    assert!(acked == 0 || acked == task.event_count as u64, "{acked} of {}", task.event_count);
                }
            }
            Step::Track { count, name, properties } => {
                let props = protocol::parse_properties(properties.as_bytes()).unwrap_or_default();
                for _ in 0..(count % 8) {
                    let _ = engine.track(now, name, props.clone());
                    let _ = engine.track(now, "tap", Object::new());
                }
            }
            Step::Background => engine.on_background(now),
            Step::Foreground => engine.on_foreground(now),
            Step::Beacon { max_bytes } => {
                if let Some(task) = engine.beacon(now, usize::from(*max_bytes)) {
                    assert!(task.url.contains("tm_sig=v1%3D"), "{}", task.url);
                    serde_json::from_slice::<serde_json::Value>(&task.body).expect("a beacon is JSON");
                }
            }
            Step::Consent { analytics, attribution } => engine.set_consent(
                now,
                ConsentUpdate { analytics: *analytics, attribution: *attribution, do_not_sell: None },
            ),
            Step::OptOut => engine.opt_out(now),
            Step::OptIn => engine.opt_in(now),
            Step::Referrer { referrer, click_ts } => {
                engine.set_install_referrer(now, *referrer, click_ts.map(|t| t.clamp(MIN_MS, MAX_MS)), Some(now), Some(now))
            }
            Step::OpenUrl(url) => {
                let _ = engine.handle_open_url(now, url);
            }
            Step::Restart if restarts < 4 => {
                restarts += 1;
                engine.persist().expect("memory store");
                let (stats, attribution, anonymous) =
                    (engine.stats(), engine.attribution(), engine.anonymous_id().to_owned());
                let store = engine.into_store();
                engine = Engine::open(config.clone(), store, now, [restarts; 32]).expect("reopens");
                let again = engine.stats();
                assert_eq!(
                    Stats { in_flight: 0, ..stats },
                    Stats { in_flight: 0, ..again },
                    "a restart changed the counters"
                );
                assert_eq!(engine.attribution(), attribution);
                assert_eq!(engine.anonymous_id(), anonymous);
            }
            Step::Restart => {}
        }
        check_conservation(&engine.stats(), install_rejections);
    }
}

/// An upload is signed and within the protocol's limits.
fn check_task(task: &UploadTask, install: bool) {
    let header = |name: &str| task.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let ts = header(protocol::HEADER_TIMESTAMP).and_then(json::parse_i64).expect("a timestamp");
    let signature = header(protocol::HEADER_SIGNATURE).expect("a signature");
    assert_eq!(signature, protocol::sign(b"secret", ts, &task.body));
    assert!(task.body.len() <= protocol::MAX_BATCH_BYTES);
    let body: serde_json::Value = serde_json::from_slice(&task.body).expect("uploads are JSON");
    if install {
        serde_json::from_value::<protocol::InstallRequest>(body).expect("the server's install request");
    } else {
        let batch = body["batch"].as_array().expect("a batch");
        assert_eq!(batch.len(), task.event_count);
        assert!(!batch.is_empty());
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Json { depth, text } => json_mode(depth, text),
        Input::ServerWrites { ingest, attribution } => server_writes(&ingest, &attribution),
        Input::RetryAfter { value, now } => retry_after(value, now),
        Input::Engine { setup, steps } => engine_mode(&setup, &steps),
    }
});
