//! Behaviour of the sans-IO engine on a fake clock and the in-memory store.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use trailmark_core::engine::{Action, ConsentUpdate, Engine, UploadOutcome};
use trailmark_core::protocol::{self, ValidationError};
use trailmark_core::{Config, MemoryStore, Policy};

fn upload(engine: &mut Engine<MemoryStore>, now: i64) -> trailmark_core::UploadTask {
    match engine.poll(now) {
        Action::Upload(task) => task,
        other => panic!("expected an upload, got {other:?}"),
    }
}

#[test]
fn first_open_records_install_and_session_start_and_identity_is_stable() {
    let store = MemoryStore::new();
    let mut engine = open(store.clone(), T0);
    let anon = engine.anonymous_id().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&anon).unwrap().get_version_num(), 4);
    engine.track(T0, "opened", Default::default()).unwrap();
    engine.flush(T0).unwrap();
    drop(engine);

    let mut engine = open(store.clone(), T0 + 1000);
    assert_eq!(engine.anonymous_id(), anon, "anonymous id survives a restart");
    let mut server = Collector::default();
    drive(&mut engine, T0 + 1000, 60_000, |t, now| server.accept(t, now, |_| false));
    assert_eq!(server.types(), ["session_start", "install", "opened"], "install only once");
    for event in &server.stored {
        assert_eq!(event["anonymous_id"], anon);
        assert!(event["session_id"].is_string());
        assert_eq!(event["context"]["sdk"]["name"], "trailmark-rust");
    }
    assert_eq!(server.stored[0]["timestamp"], "2026-01-01T00:00:00.000Z");

    engine.reset(T0 + 2000);
    assert_ne!(engine.anonymous_id(), anon, "reset rotates the anonymous id");
    assert!(engine.user_id().is_none());
}

#[test]
fn event_ids_are_version_7_uuids_carrying_the_event_time() {
    let mut engine = open(MemoryStore::new(), T0);
    // Two events in one millisecond, one later, and one from a clock set before 1970.
    for (now, name) in [(T0 + 5, "a"), (T0 + 5, "b"), (T0 + 90_000, "c"), (-1_000, "d")] {
        engine.track(now, name, Default::default()).unwrap();
    }
    engine.flush(T0 + 90_000).unwrap();
    let mut server = Collector::default();
    drive(&mut engine, T0 + 90_000, 60_000, |t, now| server.accept(t, now, |_| false));
    let ids: Vec<(String, uuid::Uuid)> = server
        .stored
        .iter()
        .map(|e| {
            let text = e["event_id"].as_str().unwrap().to_owned();
            let id = uuid::Uuid::parse_str(&text).unwrap();
            (e["type"].as_str().unwrap().to_owned(), id)
        })
        .collect();
    let ms = |id: &uuid::Uuid| {
        u64::from_be_bytes([
            0,
            0,
            id.as_bytes()[0],
            id.as_bytes()[1],
            id.as_bytes()[2],
            id.as_bytes()[3],
            id.as_bytes()[4],
            id.as_bytes()[5],
        ])
    };
    for (name, id) in &ids {
        assert_eq!(id.get_version_num(), 7, "{name}");
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{name}");
    }
    let by_name = |n: &str| ids.iter().find(|(name, _)| name == n).unwrap().1;
    assert_eq!(ms(&by_name("a")), (T0 + 5) as u64);
    assert_eq!(ms(&by_name("b")), (T0 + 5) as u64);
    assert_ne!(by_name("a"), by_name("b"), "the random part tells ids of one millisecond apart");
    assert_eq!(ms(&by_name("c")), (T0 + 90_000) as u64);
    assert!(by_name("a").to_string() < by_name("c").to_string(), "ids sort by time as text");
    assert_eq!(ms(&by_name("d")), 0, "a time before 1970 is clamped");
    // The anonymous and session ids stay random (version 4): they say nothing of when.
    assert_eq!(uuid::Uuid::parse_str(engine.session_id().unwrap()).unwrap().get_version_num(), 4);
}

#[test]
fn sessions_time_out_after_inactivity() {
    let mut engine = open(MemoryStore::new(), T0);
    let first = engine.session_id().unwrap().to_owned();
    engine.track(T0 + 29 * 60_000, "a", Default::default()).unwrap();
    assert_eq!(engine.session_id().unwrap(), first);
    // 29 min after the last activity: same session.
    engine.track(T0 + 58 * 60_000, "b", Default::default()).unwrap();
    assert_eq!(engine.session_id().unwrap(), first);
    // 31 min of inactivity: new session, announced by session_start.
    engine.track(T0 + 89 * 60_000, "c", Default::default()).unwrap();
    let second = engine.session_id().unwrap().to_owned();
    assert_ne!(second, first);
    engine.on_background(T0 + 90 * 60_000);
    engine.on_foreground(T0 + 200 * 60_000);
    assert_ne!(engine.session_id().unwrap(), second, "foreground after a long background starts a session");

    let mut server = Collector::default();
    drive(&mut engine, T0 + 200 * 60_000, 60_000, |t, now| server.accept(t, now, |_| false));
    let types =
        ["session_start", "install", "a", "b", "session_start", "c", "app_backgrounded", "session_start", "app_opened"];
    assert_eq!(server.types(), types);
    let session_of = |i: usize| server.stored[i]["session_id"].as_str().unwrap().to_owned();
    assert_eq!(session_of(3), first);
    assert_eq!(session_of(5), second);
}

#[test]
fn consent_required_holds_then_grant_releases() {
    let store = MemoryStore::new();
    let mut cfg = config();
    cfg.require_consent = true;
    cfg.device_id = Some("device-1".into());
    let mut engine = Engine::open(cfg.clone(), store.clone(), T0, seed(1)).unwrap();
    track_n(&mut engine, T0, 0, 30);
    assert_eq!(engine.poll(T0 + 3_600_000), Action::Idle, "nothing is uploaded before consent");
    assert_eq!(engine.stats().held, 32);
    drop(engine);

    // The held events and the undecided state survive a restart.
    let mut engine = Engine::open(cfg.clone(), store.clone(), T0 + 1, seed(2)).unwrap();
    assert_eq!(engine.stats().held, 32);
    assert_eq!(engine.poll(T0 + 2), Action::Idle);
    engine.set_consent(T0 + 3, ConsentUpdate { analytics: Some(true), attribution: Some(false), do_not_sell: None });
    let mut server = Collector::default();
    drive(&mut engine, T0 + 3, 60_000, |t, now| server.accept(t, now, |_| false));
    assert_eq!(server.numbers(), (0..30).collect::<Vec<_>>());
    assert_eq!(server.stored.len(), 32);
    // Held events were collected before the decision.
    assert_eq!(server.stored[0]["context"]["consent"]["analytics"], Value::Null);
    // After the decision: analytics yes, attribution no, so no device id.
    engine.track(T0 + 10, "after", Default::default()).unwrap();
    engine.flush(T0 + 10).unwrap();
    drive(&mut engine, T0 + 10, 60_000, |t, now| server.accept(t, now, |_| false));
    let last = server.stored.last().unwrap();
    assert_eq!(last["context"]["consent"], json!({"analytics": true, "attribution": false, "do_not_sell": false}));
    assert!(last.get("device_id").is_none());
}

#[test]
fn consent_denied_drops_the_buffer_and_stops_collection() {
    let store = MemoryStore::new();
    let mut cfg = config();
    cfg.require_consent = true;
    cfg.policy.max_pre_consent_events = 10;
    let mut engine = Engine::open(cfg.clone(), store.clone(), T0, seed(1)).unwrap();
    track_n(&mut engine, T0, 0, 20);
    let stats = engine.stats();
    assert_eq!(stats.held, 10, "pre-consent buffer is capped");
    assert_eq!(stats.dropped_pre_consent_full, 12);
    engine.set_consent(T0, ConsentUpdate { analytics: Some(false), ..Default::default() });
    assert_eq!(engine.stats().dropped_consent_denied, 10);
    track_n(&mut engine, T0, 100, 5);
    assert_eq!(engine.stats().ignored_no_consent, 5);
    assert!(store.events().is_empty());
    drop(engine);
    let mut engine = Engine::open(cfg, store.clone(), T0 + 1, seed(2)).unwrap();
    track_n(&mut engine, T0 + 1, 200, 5);
    engine.flush(T0 + 1).unwrap();
    assert!(store.events().is_empty(), "denial persists across restarts");
    assert_eq!(engine.poll(T0 + 100_000), Action::Idle);
}

#[test]
fn withdrawing_analytics_consent_drops_everything_undelivered() {
    let store = MemoryStore::new();
    let mut engine = open(store.clone(), T0);
    track_n(&mut engine, T0, 0, 5);
    engine.flush(T0).unwrap();
    let queued = store.events().len() as u64;
    assert!(queued >= 5, "{queued}");
    let task = upload(&mut engine, T0);
    engine.set_consent(T0, ConsentUpdate { analytics: Some(false), ..Default::default() });
    assert!(store.events().is_empty(), "the queue is gone, in flight or not");
    assert_eq!(engine.stats().dropped_consent_denied, queued);
    assert_eq!(engine.stats().queued, 0);
    // The answer to the batch that was in flight is ignored; nothing new is collected.
    engine.report(T0, task.batch_id, error(500));
    track_n(&mut engine, T0, 10, 3);
    assert_eq!(engine.poll(T0 + 100_000), Action::Idle);
    assert!(!engine.is_opted_out(), "consent, not opt-out");
    // Granted again: new events flow, the dropped ones never come back.
    engine.set_consent(T0 + 1, ConsentUpdate { analytics: Some(true), ..Default::default() });
    track_n(&mut engine, T0 + 1, 30, 1);
    let mut server = Collector::default();
    drive(&mut engine, T0 + 1, 60_000, |t, now| server.accept(t, now, |_| false));
    assert_eq!(server.numbers(), [30]);
}

#[test]
fn opt_out_purges_and_persists_until_opt_in() {
    let store = MemoryStore::new();
    let mut engine = open(store.clone(), T0);
    track_n(&mut engine, T0, 0, 5);
    engine.flush(T0).unwrap();
    assert_eq!(store.events().len(), 7);
    let task = upload(&mut engine, T0);
    engine.opt_out(T0);
    assert!(store.events().is_empty());
    assert_eq!(engine.stats().dropped_opted_out, 7);
    // The answer to the batch that was in flight is ignored.
    engine.report(T0, task.batch_id, error(500));
    track_n(&mut engine, T0, 10, 3);
    drop(engine);
    let mut engine = open(store.clone(), T0 + 1);
    assert!(engine.is_opted_out());
    track_n(&mut engine, T0 + 1, 20, 3);
    engine.flush(T0 + 1).unwrap();
    assert!(store.events().is_empty());
    engine.opt_in(T0 + 2);
    track_n(&mut engine, T0 + 2, 30, 1);
    let mut server = Collector::default();
    drive(&mut engine, T0 + 2, 60_000, |t, now| server.accept(t, now, |_| false));
    assert_eq!(server.numbers(), [30]);
}

#[test]
fn identify_hashes_email_and_phone_and_never_stores_them_raw() {
    let store = MemoryStore::new();
    let mut engine = open(store.clone(), T0);
    let traits = props(json!({"email": "  Jane.Doe@Example.com ", "phone": "+1 (650) 555-1234", "plan": "pro"}));
    engine.identify(T0, "user-42", traits).unwrap();
    engine.identify(T0, "user-42", props(json!({"email": "not-an-email"}))).unwrap();
    engine.flush(T0).unwrap();
    for e in store.events() {
        let text = String::from_utf8(e.body).unwrap();
        assert!(!text.to_lowercase().contains("jane.doe"), "{text}");
        assert!(!text.contains("555"), "{text}");
        assert!(!text.contains("not-an-email"), "{text}");
    }
    assert_eq!(engine.stats().refused_invalid, 1, "the unusable trait is counted");
    let mut server = Collector::default();
    drive(&mut engine, T0, 60_000, |t, now| server.accept(t, now, |_| false));
    let identify = &server.stored[2];
    assert_eq!(identify["type"], "identify");
    assert_eq!(identify["user_id"], "user-42");
    assert_eq!(
        identify["properties"]["email_sha256"],
        trailmark_core::pii::hash_email("jane.doe@example.com").unwrap()
    );
    assert_eq!(
        identify["properties"]["phone_sha256"],
        "6069d14bf122fdfd931dc7beb58e5dfbba395b1faf05bdcd42d12358d63d8599"
    );
    assert_eq!(identify["properties"]["plan"], "pro");

    engine.alias(T0, "user-43").unwrap();
    engine.flush(T0).unwrap();
    drive(&mut engine, T0, 60_000, |t, now| server.accept(t, now, |_| false));
    let alias = server.stored.last().unwrap();
    assert_eq!(alias["properties"]["previous_id"], "user-42");
    assert_eq!(alias["user_id"], "user-43");
}

#[test]
fn flush_triggers_count_timer_background_and_flush() {
    let mut engine = open(MemoryStore::new(), T0);
    // install + session_start = 2; 17 more stay below flush_at (20).
    track_n(&mut engine, T0, 0, 17);
    assert_eq!(engine.poll(T0), Action::Wait(Duration::from_secs(30)));
    track_n(&mut engine, T0 + 1000, 17, 1);
    assert!(matches!(engine.poll(T0 + 1000), Action::Upload(t) if t.event_count == 20));

    let mut engine = open(MemoryStore::new(), T0);
    assert_eq!(engine.poll(T0 + 29_999), Action::Wait(Duration::from_millis(1)));
    assert!(matches!(engine.poll(T0 + 30_000), Action::Upload(t) if t.event_count == 2), "30 s timer");

    let mut engine = open(MemoryStore::new(), T0);
    engine.on_background(T0 + 10);
    assert!(matches!(engine.poll(T0 + 10), Action::Upload(_)), "background flushes");

    let mut engine = open(MemoryStore::new(), T0);
    engine.flush(T0 + 10).unwrap();
    assert!(matches!(engine.poll(T0 + 10), Action::Upload(_)), "flush() flushes");
}

#[test]
fn batches_respect_protocol_limits_and_go_oldest_first() {
    let mut engine = open(MemoryStore::new(), T0);
    track_n(&mut engine, T0, 0, 1200);
    let mut server = Collector::default();
    let mut sizes = Vec::new();
    drive(&mut engine, T0, 60_000, |t, now| {
        sizes.push(t.event_count);
        server.accept(t, now, |_| false)
    });
    assert_eq!(sizes, [500, 500, 202]);
    assert_eq!(server.numbers(), (0..1200).collect::<Vec<_>>());

    // ~20 KB events: 512 KB holds at most 25 of them (the collector checks every body's size).
    let mut engine = open(MemoryStore::new(), T0);
    let blob = "x".repeat(20_000);
    for n in 0..60 {
        engine.track(T0, "big", props(json!({"n": n, "blob": blob}))).unwrap();
    }
    let mut server = Collector::default();
    let mut sizes = Vec::new();
    drive(&mut engine, T0, 60_000, |t, now| {
        sizes.push(t.event_count);
        server.accept(t, now, |_| false)
    });
    // Two small events (session_start, install) ride along in the first batch.
    assert!(sizes.len() >= 3 && sizes.iter().all(|n| *n <= 27), "{sizes:?}");
    assert_eq!(server.numbers(), (0..60).collect::<Vec<_>>());
}

#[test]
fn per_event_rejections_drop_only_those_events() {
    let mut engine = open(MemoryStore::new(), T0);
    track_n(&mut engine, T0, 0, 10);
    let mut server = Collector::default();
    drive(&mut engine, T0, 60_000, |t, now| {
        server.accept(t, now, |e| e["properties"]["n"].as_u64().is_some_and(|n| n % 3 == 0))
    });
    assert_eq!(server.numbers(), [1, 2, 4, 5, 7, 8]);
    let stats = engine.stats();
    assert_eq!(stats.rejected_by_server, 4);
    assert_eq!(stats.delivered, 8);
    assert_eq!(stats.queued, 0);
    // Why: the answer's status and the last rejected event's reason.
    assert_eq!((stats.last_rejection_status, stats.last_rejection_reason.as_str()), (200, "rejected by test"));
}

#[test]
fn auth_failures_pause_uploads_and_keep_events() {
    let mut engine = open(MemoryStore::new(), T0);
    track_n(&mut engine, T0, 0, 30);
    let task = upload(&mut engine, T0);
    engine.report(T0, task.batch_id, error(401));
    assert_eq!(engine.poll(T0 + 1), Action::Wait(Duration::from_millis(3_600_000 - 1)));
    assert_eq!(engine.stats().queued, 32);
    let task = upload(&mut engine, T0 + 3_600_000);
    engine.report(T0 + 3_600_000, task.batch_id, error(401));
    assert_eq!(engine.stats().queued, 32);
    let mut server = Collector::default();
    drive(&mut engine, T0 + 7_200_000, 60_000, |t, now| server.accept(t, now, |_| false));
    assert_eq!(server.numbers(), (0..30).collect::<Vec<_>>());
}

#[test]
fn payload_too_large_splits_the_batch_until_the_culprit_is_alone() {
    let mut engine = open(MemoryStore::new(), T0);
    track_n(&mut engine, T0, 0, 40);
    let mut server = Collector::default();
    let mut sizes = Vec::new();
    // The server refuses any request that holds event n=17 (or more than 10 events).
    drive(&mut engine, T0, 60_000, |t, now| {
        sizes.push(t.event_count);
        let body = String::from_utf8_lossy(&t.body);
        if t.event_count > 10 || body.contains(r#""n":17"#) { error(413) } else { server.accept(t, now, |_| false) }
    });
    assert_eq!(server.numbers(), (0..40).filter(|n| *n != 17).collect::<Vec<_>>());
    let stats = engine.stats();
    assert_eq!(stats.rejected_by_server, 1);
    assert_eq!((stats.last_rejection_status, stats.last_rejection_reason.as_str()), (413, "x"), "the error's code");
    assert_eq!(sizes[..3], [42, 21, 10]);
}

#[test]
fn transient_failures_back_off_with_full_jitter_and_honour_retry_after() {
    let mut engine = open(MemoryStore::new(), T0);
    track_n(&mut engine, T0, 0, 25);
    let mut now = T0;
    let mut ceilings = Vec::new();
    for attempt in 0..14 {
        let task = upload(&mut engine, now);
        let outcome = match attempt % 3 {
            0 => error(503),
            1 => UploadOutcome::NetworkError("connection refused".into()),
            _ => error(429),
        };
        engine.report(now, task.batch_id, outcome);
        let Action::Wait(d) = engine.poll(now) else { panic!("expected a wait") };
        let ceiling = (1000u64 << attempt.min(20)).min(600_000);
        assert!(d.as_millis() as u64 <= ceiling, "attempt {attempt}: {d:?} > {ceiling}");
        ceilings.push(ceiling);
        now += d.as_millis() as i64;
        assert_eq!(engine.stats().queued, 27, "failures never drop events");
    }
    assert_eq!(*ceilings.last().unwrap(), 600_000, "the cap is 10 min");

    // Retry-After (seconds and HTTP date) is a floor under the schedule.
    let task = upload(&mut engine, now);
    engine.report(
        now,
        task.batch_id,
        UploadOutcome::Response { status: 503, retry_after: Some("120".into()), body: vec![] },
    );
    let Action::Wait(d) = engine.poll(now) else { panic!("expected a wait") };
    assert!(d >= Duration::from_secs(120) && d <= Duration::from_secs(600), "{d:?}");
    now += d.as_millis() as i64;
    let task = upload(&mut engine, now);
    let date = chrono::DateTime::from_timestamp_millis(now + 45_000).unwrap().to_rfc2822().replace("+0000", "GMT");
    engine.report(now, task.batch_id, UploadOutcome::Response { status: 429, retry_after: Some(date), body: vec![] });
    // HTTP dates have whole seconds.
    let Action::Wait(d) = engine.poll(now) else { panic!("expected a wait") };
    assert!(d > Duration::from_secs(44), "{d:?}");

    // Success resets the schedule and delivers everything.
    let mut server = Collector::default();
    now = drive(&mut engine, now + d.as_millis() as i64, 60_000, |t, n| server.accept(t, n, |_| false));
    assert_eq!(server.numbers(), (0..25).collect::<Vec<_>>());
    track_n(&mut engine, now, 100, 1);
    engine.flush(now).unwrap();
    let task = upload(&mut engine, now);
    engine.report(now, task.batch_id, error(500));
    let Action::Wait(d) = engine.poll(now) else { panic!() };
    assert!(d <= Duration::from_secs(1), "schedule restarts at the base after a success: {d:?}");

    // A Retry-After of 0 does not turn off the backoff.
    let now = now + 1000;
    let task = upload(&mut engine, now);
    engine.report(
        now,
        task.batch_id,
        UploadOutcome::Response { status: 429, retry_after: Some("0".into()), body: vec![] },
    );
    let task = upload(&mut engine, now + 2000);
    engine.report(
        now + 2000,
        task.batch_id,
        UploadOutcome::Response { status: 429, retry_after: Some("0".into()), body: vec![] },
    );
    let Action::Wait(_) = engine.poll(now + 2000) else { panic!("still backing off") };
}

/// 2xx answers that are not the protocol's ingest response: a captive portal's or a proxy's
/// page, an empty body, JSON of another shape.
fn foreign_2xx() -> Vec<UploadOutcome> {
    let answer = |status: u16, body: &[u8]| UploadOutcome::Response { status, retry_after: None, body: body.to_vec() };
    vec![
        answer(200, b"<html>Sign in to Wi-Fi</html>"),
        answer(200, b""),
        answer(200, b" \n"),
        answer(204, b""),
        answer(200, b"{}"),
        answer(200, br#"{"ok":true}"#),
        answer(202, br#"{"accepted":"all","duplicates":0}"#),
    ]
}

#[test]
fn busy_answers_and_foreign_2xx_keep_every_event() {
    let mut engine = open(MemoryStore::new(), T0);
    track_n(&mut engine, T0, 0, 30);
    let mut now = T0;
    let busy = [error(408), error(409), error(429), error(500), error(503)];
    let foreign = foreign_2xx();
    for outcome in busy.iter().chain(&foreign) {
        let task = upload(&mut engine, now);
        assert_eq!(task.event_count, 32, "no splitting for these");
        engine.report(now, task.batch_id, outcome.clone());
        let Action::Wait(d) = engine.poll(now) else { panic!("expected a backoff after {outcome:?}") };
        now += d.as_millis() as i64;
        assert_eq!(engine.stats().queued, 32, "kept after {outcome:?}");
    }
    let stats = engine.stats();
    assert_eq!(stats.bad_answers, foreign.len() as u64, "{stats:?}");
    assert_eq!(stats.upload_failures, (busy.len() + foreign.len()) as u64, "every one is retried");
    assert_eq!((stats.delivered, stats.rejected_by_server), (0, 0));
    let mut server = Collector::default();
    drive(&mut engine, now, 600_000, |t, now| server.accept(t, now, |_| false));
    assert_eq!(server.numbers(), (0..30).collect::<Vec<_>>());
    assert_eq!(engine.stats().delivered, 32, "acknowledged by the protocol's answer");
}

#[test]
fn a_batch_refused_for_good_is_split_the_rest_delivered_the_culprit_dropped() {
    for status in [400u16, 403, 404, 415, 422] {
        let mut engine = open(MemoryStore::new(), T0);
        track_n(&mut engine, T0, 0, 30);
        let mut server = Collector::default();
        // A proxy or WAF refuses every request that carries event 17; the server takes the rest.
        drive(&mut engine, T0, 60_000, |t, now| {
            let body = String::from_utf8_lossy(&t.body);
            if body.contains(r#""n":17"#) { error(status) } else { server.accept(t, now, |_| false) }
        });
        let expected: Vec<u64> = (0..30).filter(|n| *n != 17).collect();
        assert_eq!(server.numbers(), expected, "HTTP {status}: every other event, once");
        let stats = engine.stats();
        assert_eq!((stats.queued, stats.rejected_by_server), (0, 1), "HTTP {status}: {stats:?}");
        assert_eq!(stats.delivered, 31, "session_start, install and 29 ticks");
        assert_eq!((stats.last_rejection_status, stats.last_rejection_reason.as_str()), (u64::from(status), "x"));
    }
}

#[test]
fn a_refusal_that_is_not_the_protocols_is_counted_without_a_reason_and_reasons_are_capped() {
    let mut engine = open(MemoryStore::new(), T0);
    track_n(&mut engine, T0, 0, 5);
    let mut server = Collector::default();
    // A WAF's page refuses event 3: dropped alone, with the status and no code.
    drive(&mut engine, T0, 60_000, |t, now| {
        if String::from_utf8_lossy(&t.body).contains(r#""n":3"#) {
            UploadOutcome::Response { status: 403, retry_after: None, body: b"<html>Forbidden</html>".to_vec() }
        } else {
            server.accept(t, now, |_| false)
        }
    });
    let stats = engine.stats();
    assert_eq!((stats.rejected_by_server, stats.last_rejection_status), (1, 403));
    assert_eq!(stats.last_rejection_reason, "");
    // A long reason is cut to MAX_REASON_BYTES on a character boundary; kept across restarts.
    let store = MemoryStore::new();
    let mut engine = open(store.clone(), T0);
    engine.flush(T0).unwrap();
    let task = upload(&mut engine, T0);
    let reason = "é".repeat(200);
    let body = json!({"accepted": task.event_count - 1, "duplicates": 0, "rejected": [{"index": 0, "reason": reason}]});
    engine.report(
        T0,
        task.batch_id,
        UploadOutcome::Response { status: 200, retry_after: None, body: body.to_string().into_bytes() },
    );
    let kept = engine.stats().last_rejection_reason;
    assert_eq!(kept.as_str(), "é".repeat(trailmark_core::engine::MAX_REASON_BYTES / 2));
    drop(engine);
    let engine = open(store, T0 + 1000);
    assert_eq!((engine.stats().last_rejection_status, engine.stats().last_rejection_reason), (200, kept));
}

#[test]
fn attribution_data_leaves_the_device_only_with_attribution_consent_at_upload() {
    let mut cfg = config();
    cfg.require_consent = true;
    cfg.device_id = Some("idfv-1".into());
    let mut engine = Engine::open(cfg, MemoryStore::new(), T0, seed(3)).unwrap();
    // The deep link arrives before the consent dialog is answered.
    engine.handle_open_url(T0, "app://x?tm_click_id=clk_9&utm_source=ads").unwrap();
    engine.set_consent(T0 + 1, ConsentUpdate { analytics: Some(true), attribution: Some(true), do_not_sell: None });
    let mut server = Collector::default();
    drive(&mut engine, T0 + 1, 60_000, |t, n| server.accept(t, n, |_| false));
    let touch = server.stored.iter().find(|e| e["type"] == "deep_link_opened").unwrap();
    assert_eq!(touch["context"]["campaign"]["click_id"], "clk_9", "granted later: the touchpoint keeps its click id");
    assert_eq!(touch["device_id"], "idfv-1");
    // Revoked before upload: queued events go out without attribution data.
    engine.handle_open_url(T0 + 2, "app://x?tm_click_id=clk_10").unwrap();
    engine.set_consent(T0 + 3, ConsentUpdate { attribution: Some(false), ..Default::default() });
    engine.flush(T0 + 3).unwrap();
    drive(&mut engine, T0 + 3, 60_000, |t, n| server.accept(t, n, |_| false));
    let last = server.stored.last().unwrap();
    assert_eq!(last["type"], "deep_link_opened");
    assert!(last.get("device_id").is_none() && last["context"].get("campaign").is_none(), "{last}");
}

#[test]
fn jitter_is_spread_not_constant() {
    let mut delays = std::collections::HashSet::new();
    for s in 0..20 {
        let mut engine = Engine::open(config(), MemoryStore::new(), T0, seed(s)).unwrap();
        engine.flush(T0).unwrap();
        let task = upload(&mut engine, T0);
        engine.report(T0, task.batch_id, error(500));
        let task = upload(&mut engine, T0 + 1000);
        engine.report(T0 + 1000, task.batch_id, error(500));
        if let Action::Wait(d) = engine.poll(T0 + 1000) {
            delays.insert(d);
        }
    }
    assert!(delays.len() > 10, "{delays:?}");
}

#[test]
fn deep_link_records_a_touchpoint_with_campaign() {
    let mut engine = open(MemoryStore::new(), T0);
    engine
        .handle_open_url(
            T0,
            "myapp://product/42?tm_click_id=clk_123&utm_source=Newsletter&utm_campaign=spring%20sale&other=1",
        )
        .unwrap();
    assert!(matches!(engine.handle_open_url(T0, "not a url"), Err(ValidationError::InvalidField { field: "url", .. })));
    engine.flush(T0).unwrap();
    let mut server = Collector::default();
    drive(&mut engine, T0, 60_000, |t, now| server.accept(t, now, |_| false));
    let touch = server.stored.iter().find(|e| e["type"] == "deep_link_opened").unwrap();
    assert_eq!(
        touch["context"]["campaign"],
        json!({"click_id": "clk_123", "utm_source": "Newsletter", "utm_campaign": "spring sale"})
    );
    assert!(touch["properties"]["url"].as_str().unwrap().starts_with("myapp://product/42"));
}

#[test]
fn page_view_reads_the_location_and_campaign() {
    let mut engine = open(MemoryStore::new(), T0);
    let url = "https://shop.example/spring/sale?utm_source=news&utm_medium=email&tm_click_id=clk_9&x=1#top";
    engine
        .page_view(T0, url, Some("Spring sale"), Some("https://news.example/"), props(json!({"section": "shoes"})))
        .unwrap();
    engine.page_view(T0, "https://shop.example/", None, Some(""), props(json!({"path": "/custom"}))).unwrap();
    assert!(matches!(
        engine.page_view(T0, "/relative", None, None, Default::default()),
        Err(ValidationError::InvalidField { field: "url", .. })
    ));
    assert_eq!(engine.stats().refused_invalid, 1);
    engine.flush(T0).unwrap();
    let mut server = Collector::default();
    drive(&mut engine, T0, 60_000, |t, now| server.accept(t, now, |_| false));
    let views: Vec<&Value> = server.stored.iter().filter(|e| e["type"] == "page_view").collect();
    assert_eq!(views.len(), 2);
    assert_eq!(
        views[0]["properties"],
        json!({"name": "/spring/sale", "path": "/spring/sale", "url": url, "title": "Spring sale",
               "search": "?utm_source=news&utm_medium=email&tm_click_id=clk_9&x=1",
               "referrer": "https://news.example/", "section": "shoes"})
    );
    assert_eq!(
        views[0]["context"]["campaign"],
        json!({"click_id": "clk_9", "utm_source": "news", "utm_medium": "email"})
    );
    // The host's properties win; an empty referrer is left out; no campaign, no context.campaign.
    assert_eq!(
        views[1]["properties"],
        json!({"name": "/", "path": "/custom", "url": "https://shop.example/", "search": ""})
    );
    assert!(views[1]["context"].get("campaign").is_none());
}

#[test]
fn beacon_signs_in_the_query_and_never_repeats_an_event() {
    let mut engine = open(MemoryStore::new(), T0);
    track_n(&mut engine, T0, 0, 3);
    // One batch in flight (the first five events: session_start, install, three ticks).
    let task = upload(&mut engine, T0 + 30_000);
    track_n(&mut engine, T0 + 30_000, 3, 4);
    let beacon = engine.beacon(T0 + 30_000, 60_000).expect("events to send");
    assert_eq!(beacon.event_count, 4, "only what is not in flight");
    let url = url::Url::parse(&beacon.url).unwrap();
    assert_eq!(url.path(), protocol::EVENT_PATH);
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q[protocol::QUERY_APP], "test-app");
    protocol::verify_signature(
        SECRET.as_bytes(),
        Some(&q[protocol::QUERY_TIMESTAMP]),
        Some(&q[protocol::QUERY_SIGNATURE]),
        &beacon.body,
        (T0 + 30_000) / 1000,
    )
    .expect("the query signature verifies");
    let body: Value = serde_json::from_slice(&beacon.body).unwrap();
    let ns: Vec<u64> =
        body["batch"].as_array().unwrap().iter().map(|e| e["properties"]["n"].as_u64().unwrap()).collect();
    assert_eq!(ns, [3, 4, 5, 6]);
    assert!(engine.beacon(T0 + 30_000, 60_000).is_none(), "nothing new: no second beacon");
    track_n(&mut engine, T0 + 30_000, 7, 1);
    assert_eq!(engine.beacon(T0 + 30_000, 60_000).unwrap().event_count, 1);
    assert_eq!(engine.stats().beacons, 2);
    // The size limit holds: one event at a time when only one fits.
    track_n(&mut engine, T0 + 30_000, 8, 2);
    let one = engine.beacon(T0 + 30_000, 1024 + 400).unwrap();
    assert_eq!(one.event_count, 1);
    assert!(one.body.len() <= 1024 + 400);

    // Beaconed events stay queued: if the page lives on, the normal upload resends them and the
    // server keeps one copy.
    let mut server = Collector::default();
    let body: Value = serde_json::from_slice(&beacon.body).unwrap();
    for e in body["batch"].as_array().unwrap() {
        server.seen.insert(e["event_id"].as_str().unwrap().to_owned());
    }
    let outcome = server.accept(&task, T0 + 30_000, |_| false);
    engine.report(T0 + 30_000, task.batch_id, outcome);
    engine.flush(T0 + 30_000).unwrap();
    // Only a read answer acknowledges them: not a page that is not the protocol's.
    let resend = upload(&mut engine, T0 + 30_000);
    let portal = UploadOutcome::Response { status: 200, retry_after: None, body: b"<html>Wi-Fi</html>".to_vec() };
    engine.report(T0 + 30_000, resend.batch_id, portal);
    assert_eq!(engine.stats().queued, 7, "the beaconed events and the rest are kept");
    drive(&mut engine, T0 + 30_000, 60_000, |t, now| server.accept(t, now, |_| false));
    assert_eq!(server.duplicates, 4);
    assert_eq!(server.numbers(), [0, 1, 2, 7, 8, 9]);
    assert_eq!(engine.stats().queued, 0);
}

#[test]
fn no_beacon_without_consent_or_after_opt_out() {
    let mut cfg = config();
    cfg.require_consent = true;
    let mut engine = Engine::open(cfg, MemoryStore::new(), T0, seed(3)).unwrap();
    track_n(&mut engine, T0, 0, 2);
    assert!(engine.beacon(T0, 60_000).is_none(), "held events never leave in a beacon");
    engine.set_consent(T0, ConsentUpdate { analytics: Some(true), attribution: Some(false), ..Default::default() });
    engine.handle_open_url(T0, "app://x?tm_click_id=c1").unwrap();
    let beacon = engine.beacon(T0, 60_000).unwrap();
    let body: Value = serde_json::from_slice(&beacon.body).unwrap();
    assert!(body["batch"].as_array().unwrap().iter().all(|e| e["context"].get("campaign").is_none()));
    engine.opt_out(T0);
    track_n(&mut engine, T0, 2, 1);
    assert!(engine.beacon(T0, 60_000).is_none());
}

#[test]
fn config_is_validated_at_start() {
    let bad = Config::new("app", "secret", "http://collect.example.com");
    assert!(matches!(
        Engine::open(bad, MemoryStore::new(), T0, seed(0)),
        Err(trailmark_core::OpenError::Config(trailmark_core::ConfigError::InsecureEndpoint(_)))
    ));
    let mut bad = config();
    bad.policy = Policy { flush_interval: Duration::ZERO, ..Policy::default() };
    assert!(Engine::open(bad, MemoryStore::new(), T0, seed(0)).is_err());
}

#[test]
fn debug_logger_reports_decisions() {
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let mut cfg = config();
    cfg.debug = true;
    let mut engine = Engine::open(cfg, MemoryStore::new(), T0, seed(0)).unwrap();
    engine.set_logger(Some(Box::new(move |l: &str| sink.lock().unwrap().push(l.to_owned()))));
    let _ = engine.track(T0, "Bad Type", Default::default());
    engine.flush(T0).unwrap();
    let task = upload(&mut engine, T0);
    engine.report(T0, task.batch_id, error(503));
    let lines = lines.lock().unwrap();
    assert!(lines.iter().any(|l| l.contains("refused call")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("upload batch 1")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("retry in")), "{lines:?}");
}

#[test]
fn drops_are_reported_in_the_next_batch_until_acknowledged() {
    let mut cfg = config();
    cfg.policy.max_queue_events = 50;
    let mut engine = Engine::open(cfg, MemoryStore::new(), T0, seed(0)).unwrap();
    track_n(&mut engine, T0, 0, 100);
    let _ = engine.track(T0, "", Default::default());
    assert_eq!(engine.unreported_drops().queue_full, 52);
    assert_eq!(engine.unreported_drops().invalid, 1);
    let task = upload(&mut engine, T0);
    let body: Value = serde_json::from_slice(&task.body).unwrap();
    assert_eq!(body["dropped"]["queue_full"], 52);
    engine.report(T0, task.batch_id, error(500));
    assert_eq!(engine.unreported_drops().queue_full, 52, "kept until a batch carrying it is acknowledged");
    let mut server = Collector::default();
    drive(&mut engine, T0 + 1, 600_000, |t, now| server.accept(t, now, |_| false));
    assert_eq!(server.dropped_reported, 53);
    assert!(engine.unreported_drops().is_empty());
    assert_eq!(server.numbers(), (50..100).collect::<Vec<_>>(), "the oldest were dropped");
}

#[test]
fn hostile_input_returns_typed_errors() {
    let mut engine = open(MemoryStore::new(), T0);
    let e = |r: Result<(), ValidationError>| r.unwrap_err();
    assert_eq!(e(engine.track(T0, "", Default::default())), ValidationError::EmptyType);
    assert!(matches!(e(engine.track(T0, &"a".repeat(65), Default::default())), ValidationError::TypeTooLong { .. }));
    assert!(matches!(
        e(engine.track(T0, &"a".repeat(1 << 20), Default::default())),
        ValidationError::TypeTooLong { .. }
    ));
    assert!(matches!(e(engine.track(T0, "DROP TABLE;", Default::default())), ValidationError::InvalidTypeChar(_)));
    let huge = props(json!({"blob": "x".repeat(10 << 20)}));
    assert!(matches!(e(engine.track(T0, "huge", huge)), ValidationError::TooLarge { .. }));
    let mut wide = serde_json::Map::new();
    for i in 0..100_000 {
        wide.insert(format!("k{i}"), json!(i));
    }
    assert!(matches!(e(engine.track(T0, "wide", wide.into())), ValidationError::TooLarge { .. }));
    // Short number text the server re-prints long (1e15 -> 1000000000000000.0): counted as the
    // server will measure it, so the event is refused here rather than lost there.
    let floats = format!(r#"{{"a":[{}1e15]}}"#, "1e15,".repeat(5000));
    let floats = protocol::parse_properties(floats.as_bytes()).unwrap();
    assert!(matches!(e(engine.track(T0, "floats", floats)), ValidationError::TooLarge { .. }));
    // Deep nesting built in Rust (no parser limit involved).
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    let result = engine.track(T0, "deep", props(json!({ "d": deep })));
    assert_eq!(result, Err(ValidationError::TooDeep));
    // Bytes from FFI: invalid UTF-8, NaN, Infinity, overflow, not an object, deep nesting.
    assert_eq!(e(engine.track_bytes(T0, b"ok", b"\xc3\x28")), ValidationError::InvalidUtf8);
    assert_eq!(e(engine.track_bytes(T0, b"\xff", b"{}")), ValidationError::InvalidUtf8);
    for bad in [&br#"{"x": NaN}"#[..], br#"{"x": -Infinity}"#, br#"{"x": 1e400}"#, b"{", b"{\"a\":1,}"] {
        assert!(matches!(e(engine.track_bytes(T0, b"ok", bad)), ValidationError::InvalidJson(_)), "{bad:?}");
    }
    assert_eq!(e(engine.track_bytes(T0, b"ok", b"42")), ValidationError::NotAnObject);
    let nested = format!("{{\"a\":{}{}}}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
    assert_eq!(e(engine.track_bytes(T0, b"ok", nested.as_bytes())), ValidationError::TooDeep);
    assert!(matches!(e(engine.identify(T0, "", Default::default())), ValidationError::EmptyId { .. }));
    assert!(matches!(e(engine.identify(T0, &"u".repeat(300), Default::default())), ValidationError::IdTooLong { .. }));
    assert!(matches!(e(engine.identify(T0, "a\u{0}b", Default::default())), ValidationError::InvalidField { .. }));
    assert!(matches!(e(engine.screen(T0, "", Default::default())), ValidationError::EmptyId { .. }));
    // Unicode in values is fine and round-trips.
    engine.track(T0, "ok", props(json!({"name": "Zoë 🚀 \u{0}"}))).unwrap();
    let stats = engine.stats();
    assert_eq!(stats.refused_invalid, 21);
    assert_eq!(stats.queued, 3, "refused calls queue nothing");
    engine.flush(T0).unwrap();
    let mut server = Collector::default();
    drive(&mut engine, T0, 60_000, |t, now| server.accept(t, now, |_| false));
    assert_eq!(server.stored[2]["properties"]["name"], "Zoë 🚀 \u{0}");
    let _ = protocol::MAX_EVENT_BYTES;
}

#[test]
fn storage_failures_keep_events_in_memory_and_retry() {
    let store = MemoryStore::new();
    let mut engine = open(store.clone(), T0);
    store.set_fail_commits(true);
    track_n(&mut engine, T0, 0, 5);
    assert!(engine.flush(T0).is_err());
    assert_eq!(engine.poll(T0), Action::Wait(Duration::from_secs(1)));
    store.set_fail_commits(false);
    let mut server = Collector::default();
    drive(&mut engine, T0 + 1000, 60_000, |t, now| server.accept(t, now, |_| false));
    assert_eq!(server.numbers(), [0, 1, 2, 3, 4]);
    assert!(engine.stats().store_errors >= 2);
}

#[test]
fn a_lost_response_is_resent_and_counted_as_duplicate_by_the_server() {
    let store = MemoryStore::new();
    let mut engine = open(store.clone(), T0);
    track_n(&mut engine, T0, 0, 3);
    engine.flush(T0).unwrap();
    let mut server = Collector::default();
    let task = upload(&mut engine, T0);
    let _ = server.accept(&task, T0, |_| false); // stored, but the response never arrives
    engine.report(T0, task.batch_id, UploadOutcome::NetworkError("connection reset".into()));
    drop(engine); // and the app is killed
    let mut engine = open(store, T0 + 5000);
    drive(&mut engine, T0 + 5000, 600_000, |t, now| server.accept(t, now, |_| false));
    assert_eq!(server.numbers(), [0, 1, 2]);
    assert_eq!(server.duplicates, 5);
}

fn mobile(os: &str) -> Config {
    let mut c = config();
    c.device.os = Some(os.into());
    c.device_id = Some("vendor-id-1".into());
    c.advertising_id = Some("ad-id-1".into());
    c
}

fn attribution_answer() -> UploadOutcome {
    let body = json!({"attributed": true, "match_type": "referrer", "confidence": 1.0, "campaign_id": "cmp_1",
        "link_id": "lnk_1", "click_id": "clk_1", "network": "meta", "deep_link": {"path": "/p/42", "params": {}},
        "fraud": {"flags": [], "rejected": false}, "reinstall": false});
    UploadOutcome::Response { status: 200, retry_after: None, body: serde_json::to_vec(&body).unwrap() }
}

#[test]
fn ios_install_request_goes_first_and_its_answer_is_kept_across_restarts() {
    let store = MemoryStore::new();
    let mut engine = Engine::open(mobile("iOS"), store.clone(), T0, seed(7)).unwrap();
    assert!(engine.install_pending());
    engine.handle_open_url(T0 + 5, "shop://p?tm_click_id=clk_1").unwrap();
    let task = upload(&mut engine, T0 + 10);
    assert!(task.url.ends_with(protocol::INSTALL_PATH), "{}", task.url);
    let body: Value = serde_json::from_slice(&task.body).unwrap();
    assert_eq!(body["platform"], "ios");
    assert_eq!(body["device"]["idfv"], "vendor-id-1");
    assert_eq!(body["device"]["idfa"], "ad-id-1");
    assert_eq!(body["click_id"], "clk_1", "a deep link before the install names the click");
    assert_eq!(body["timestamp"], "2026-01-01T00:00:00.000Z", "the install time is the first open");
    assert_eq!(body["anonymous_id"], engine.anonymous_id());
    // The server checks this signature like an event batch's.
    let header = |name: &str| task.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    protocol::verify_signature(
        SECRET.as_bytes(),
        header(protocol::HEADER_TIMESTAMP),
        header(protocol::HEADER_SIGNATURE),
        &task.body,
        (T0 + 10) / 1000,
    )
    .unwrap();
    // Nothing else goes while it is in flight, even a flush.
    engine.flush(T0 + 20).unwrap();
    assert_eq!(engine.poll(T0 + 20), Action::Idle);
    assert_eq!(engine.stats().in_flight, 1);
    engine.report(T0 + 30, task.batch_id, error(503));
    assert!(engine.attribution().is_none());
    let mut now = T0 + 30;
    // A 2xx that is not an attribution result is not one: nothing kept, retried, counted.
    for foreign in foreign_2xx() {
        let retry = loop_until_upload(&mut engine, now);
        assert_eq!(retry.1.url, task.url, "retried");
        engine.report(retry.0, retry.1.batch_id, foreign);
        assert!(engine.attribution().is_none() && engine.install_pending());
        now = retry.0;
    }
    assert_eq!(engine.stats().bad_answers, foreign_2xx().len() as u64);
    let retry = loop_until_upload(&mut engine, now);
    assert_eq!(retry.1.url, task.url, "retried after a 503 and the foreign answers");
    engine.report(retry.0, retry.1.batch_id, attribution_answer());
    let result = engine.attribution().unwrap();
    assert_eq!(result.network.as_deref(), Some("meta"));
    assert!(!engine.install_pending());
    // Then the events.
    let events = upload(&mut engine, retry.0 + 1);
    assert!(events.url.ends_with(protocol::EVENT_PATH));
    drop(engine);
    let engine = Engine::open(mobile("iOS"), store, T0 + 60_000, seed(8)).unwrap();
    assert_eq!(engine.attribution().unwrap().campaign_id.as_deref(), Some("cmp_1"), "kept across restarts");
    assert!(!engine.install_pending(), "one install request per install");
}

/// Polls (advancing the fake clock through waits) until an upload comes out.
fn loop_until_upload(engine: &mut Engine<MemoryStore>, mut now: i64) -> (i64, trailmark_core::UploadTask) {
    for _ in 0..100 {
        match engine.poll(now) {
            Action::Upload(t) => return (now, t),
            Action::Wait(d) => now += d.as_millis() as i64,
            Action::Idle => panic!("idle while waiting for an upload"),
        }
    }
    panic!("no upload");
}

#[test]
fn android_install_request_waits_for_the_play_referrer_then_goes_without_it() {
    let mut engine = Engine::open(mobile("Android"), MemoryStore::new(), T0, seed(9)).unwrap();
    match engine.poll(T0 + 100) {
        Action::Wait(d) => assert!(d <= Duration::from_secs(10), "{d:?}"),
        other => panic!("the request waits for the referrer, got {other:?}"),
    }
    engine.set_install_referrer(
        T0 + 200,
        Some("tm_click_id=clk_9&utm_source=google"),
        Some(T0 - 60_000),
        Some(T0 - 30_000),
        Some(T0 - 5_000),
    );
    let task = upload(&mut engine, T0 + 300);
    let body: Value = serde_json::from_slice(&task.body).unwrap();
    assert_eq!(body["platform"], "android");
    assert_eq!(body["install_referrer"], "tm_click_id=clk_9&utm_source=google");
    assert_eq!(body["referrer_click_ts"], T0 - 60_000);
    assert_eq!(body["installed_at"], T0 - 5_000, "the package's install time goes along");
    assert_eq!(body["device"]["gaid"], "ad-id-1");
    assert_eq!(body["device"]["android_id"], "vendor-id-1");

    // Without a referrer, the wait runs out and the request goes anyway.
    let mut other = Engine::open(mobile("Android"), MemoryStore::new(), T0, seed(10)).unwrap();
    let (at, task) = loop_until_upload(&mut other, T0 + 100);
    assert!(at >= T0 + 10_000, "waited the referrer wait");
    assert!(task.url.ends_with(protocol::INSTALL_PATH));
    let body: Value = serde_json::from_slice(&task.body).unwrap();
    assert!(body.get("install_referrer").is_none());
    // A 400 is not retried: the request is dropped and counted.
    other.report(at, task.batch_id, error(400));
    assert!(!other.install_pending());
    let stats = other.stats();
    assert_eq!((stats.rejected_by_server, stats.last_rejection_status), (1, 400));
    assert_eq!(stats.last_rejection_reason, "x");
}

#[test]
fn install_request_waits_for_attribution_consent_and_is_dropped_by_opt_out() {
    let mut c = mobile("iOS");
    c.require_consent = true;
    let mut engine = Engine::open(c.clone(), MemoryStore::new(), T0, seed(11)).unwrap();
    assert_eq!(engine.poll(T0 + 10), Action::Idle, "nothing before consent");
    engine.set_consent(T0 + 20, ConsentUpdate { analytics: Some(true), attribution: Some(false), do_not_sell: None });
    let task = upload(&mut engine, T0 + 30);
    assert!(task.url.ends_with(protocol::EVENT_PATH), "events go; the install request needs attribution consent");
    let body = format!(r#"{{"accepted":{},"duplicates":0}}"#, task.event_count).into_bytes();
    engine.report(T0 + 40, task.batch_id, UploadOutcome::Response { status: 200, retry_after: None, body });
    assert!(engine.install_pending());
    engine.set_consent(T0 + 50, ConsentUpdate { analytics: None, attribution: Some(true), do_not_sell: None });
    let task = upload(&mut engine, T0 + 60);
    assert!(task.url.ends_with(protocol::INSTALL_PATH));

    let mut engine = Engine::open(mobile("iOS"), MemoryStore::new(), T0, seed(12)).unwrap();
    engine.opt_out(T0 + 1);
    assert!(!engine.install_pending(), "opting out withdraws the install request");
    // No platform, no install request (a backend or a desktop app); none when turned off.
    let engine = Engine::open(config(), MemoryStore::new(), T0, seed(13)).unwrap();
    assert!(!engine.install_pending());
    let mut off = mobile("iOS");
    off.install_request = false;
    let engine = Engine::open(off, MemoryStore::new(), T0, seed(14)).unwrap();
    assert!(!engine.install_pending());
}

#[test]
fn every_upload_carries_a_fresh_traceparent() {
    let mut engine = open(MemoryStore::new(), T0);
    engine.flush(T0).unwrap();
    let first = upload(&mut engine, T0);
    let header = |t: &trailmark_core::UploadTask| {
        t.headers.iter().find(|(k, _)| k == protocol::HEADER_TRACEPARENT).map(|(_, v)| v.clone()).unwrap()
    };
    let (trace, span) = protocol::parse_traceparent(&header(&first)).expect("a valid W3C traceparent");
    // The server answers 503: the retry is a new request with a new trace.
    engine.report(
        T0,
        first.batch_id,
        UploadOutcome::Response { status: 503, retry_after: Some("1".into()), body: vec![] },
    );
    let retry = upload(&mut engine, T0 + 60_000);
    let (trace2, span2) = protocol::parse_traceparent(&header(&retry)).unwrap();
    assert!(trace != trace2 && span != span2);
}

/// Super properties: registered once, on every later event under the event's own values,
/// kept across a restart, removed one by one, cleared by reset; a registration past the size
/// limit changes nothing and is counted.
#[test]
fn registered_properties_ride_on_every_event_until_removed() {
    let store = MemoryStore::new();
    let mut engine = open(store.clone(), T0);
    engine.register(props(json!({"plan": "pro", "n": 1, "ab": {"variant": "b"}}))).unwrap();
    engine.track(T0, "x", props(json!({"n": 2}))).unwrap();
    engine.flush(T0).unwrap();
    drop(engine);

    let mut engine = open(store.clone(), T0 + 1000);
    let kept: Value = serde_json::from_str(&engine.registered_properties().to_json()).unwrap();
    assert_eq!(kept, json!({"plan": "pro", "n": 1, "ab": {"variant": "b"}}), "persisted");
    engine.unregister("n");
    engine.track(T0 + 1000, "y", Default::default()).unwrap();
    let big = "x".repeat(trailmark_core::engine::MAX_REGISTERED_BYTES);
    let refused = engine.register(props(json!({"blob": big})));
    assert!(refused.is_err());
    assert_eq!(engine.stats().refused_invalid, 1);
    assert!(engine.registered_properties().get("blob").is_none(), "nothing of a refused call is kept");
    engine.reset(T0 + 2000);
    assert!(engine.registered_properties().is_empty(), "reset clears them");
    engine.track(T0 + 2000, "z", Default::default()).unwrap();
    let mut server = Collector::default();
    drive(&mut engine, T0 + 2000, 60_000, |t, now| server.accept(t, now, |_| false));
    let by_type = |t: &str| server.stored.iter().find(|e| e["type"] == t).unwrap().clone();
    assert_eq!(
        by_type("x")["properties"],
        json!({"n": 2, "plan": "pro", "ab": {"variant": "b"}}),
        "the event's n wins"
    );
    assert_eq!(by_type("y")["properties"], json!({"plan": "pro", "ab": {"variant": "b"}}));
    assert_eq!(by_type("z")["properties"], json!({}));
    assert_eq!(server.stored[0]["properties"], json!({}), "the session_start recorded before registering");
}

/// `group`: a `group` event with the traits and the group id, the group id on every later
/// event's context across a restart, a bad group id refused (nothing changes), reset clears it.
#[test]
fn the_group_id_rides_on_later_events_until_reset() {
    let store = MemoryStore::new();
    let mut engine = open(store.clone(), T0);
    engine.group(T0, "acme", props(json!({"seats": 40, "group_id": "spoofed"}))).unwrap();
    engine.flush(T0).unwrap();
    drop(engine);

    let mut engine = open(store.clone(), T0 + 1000);
    engine.track(T0 + 1000, "x", Default::default()).unwrap();
    assert!(engine.group(T0 + 1000, "", Default::default()).is_err());
    assert_eq!(engine.stats().refused_invalid, 1);
    engine.track(T0 + 1000, "y", Default::default()).unwrap();
    let context: Value = serde_json::from_str(&engine.context_json()).unwrap();
    assert_eq!(context["group_id"], "acme");
    engine.reset(T0 + 2000);
    engine.track(T0 + 2000, "z", Default::default()).unwrap();
    let mut server = Collector::default();
    drive(&mut engine, T0 + 2000, 60_000, |t, now| server.accept(t, now, |_| false));
    let by_type = |t: &str| server.stored.iter().find(|e| e["type"] == t).unwrap().clone();
    assert_eq!(by_type("group")["properties"], json!({"seats": 40, "group_id": "acme"}), "the argument wins");
    assert_eq!(by_type("group")["context"]["group_id"], "acme");
    assert_eq!(by_type("x")["context"]["group_id"], "acme", "persisted");
    assert_eq!(by_type("y")["context"]["group_id"], "acme", "a refused call changes nothing");
    assert!(by_type("z")["context"].get("group_id").is_none(), "reset clears it");
}

/// Lifecycle events: `app_opened` on every foreground (`from_background` false on the first of
/// the process), `app_backgrounded`, and `app_updated` with the previous version and build
/// when a later start runs a different one; none of them with `lifecycle_events` off, and
/// none while collection is off.
#[test]
fn lifecycle_events_follow_the_app() {
    let store = MemoryStore::new();
    let versioned = |version: &str, build: &str, lifecycle: bool| {
        let mut c = config();
        c.app.version = Some(version.into());
        c.app.build = Some(build.into());
        c.lifecycle_events = lifecycle;
        c
    };
    let mut server = Collector::default();
    let mut engine = Engine::open(versioned("1.0", "10", true), store.clone(), T0, seed(1)).unwrap();
    engine.on_foreground(T0);
    engine.on_background(T0 + 1000);
    // Opened again by a deep link: app_opened carries it (a link while in the foreground does
    // not ride on a later open).
    engine.handle_open_url(T0 + 1500, "shop://product/7").unwrap();
    engine.on_foreground(T0 + 2000);
    engine.handle_open_url(T0 + 2500, "shop://product/8").unwrap();
    engine.on_background(T0 + 2600);
    engine.on_foreground(T0 + 2700);
    drive(&mut engine, T0 + 2700, 60_000, |t, now| server.accept(t, now, |_| false));
    drop(engine);
    // The same version again: no update; then 1.1 (build 11): one.
    let engine = Engine::open(versioned("1.0", "10", true), store.clone(), T0 + 3000, seed(2)).unwrap();
    drop(engine);
    let mut engine = Engine::open(versioned("1.1", "11", true), store.clone(), T0 + 4000, seed(3)).unwrap();
    drive(&mut engine, T0 + 4000, 60_000, |t, now| server.accept(t, now, |_| false));
    // Nothing while collection is off.
    engine.opt_out(T0 + 5000);
    engine.on_foreground(T0 + 5000);
    engine.on_background(T0 + 5000);
    engine.opt_in(T0 + 6000);
    drop(engine);
    // Nothing with lifecycle events off (1.2 is remembered all the same).
    let mut engine = Engine::open(versioned("1.2", "12", false), store.clone(), T0 + 7000, seed(4)).unwrap();
    engine.on_foreground(T0 + 7000);
    engine.on_background(T0 + 8000);
    drive(&mut engine, T0 + 8000, 60_000, |t, now| server.accept(t, now, |_| false));
    let lifecycle: Vec<_> = server
        .stored
        .iter()
        .filter(|e| e["type"].as_str().unwrap().starts_with("app_"))
        .map(|e| (e["type"].as_str().unwrap().to_owned(), e["properties"].clone()))
        .collect();
    assert_eq!(
        lifecycle,
        [
            ("app_opened".to_owned(), json!({"from_background": false})),
            ("app_backgrounded".to_owned(), json!({})),
            ("app_opened".to_owned(), json!({"from_background": true, "url": "shop://product/7"})),
            ("app_backgrounded".to_owned(), json!({})),
            ("app_opened".to_owned(), json!({"from_background": true})),
            (
                "app_updated".to_owned(),
                json!({"version": "1.1", "previous_version": "1.0", "build": "11", "previous_build": "10"})
            ),
        ]
    );
    assert_eq!(server.types().iter().filter(|t| *t == "install").count(), 1);
    let mut engine = Engine::open(versioned("1.3", "13", true), store.clone(), T0 + 9000, seed(5)).unwrap();
    let mut server = Collector::default();
    drive(&mut engine, T0 + 9000, 60_000, |t, now| server.accept(t, now, |_| false));
    let updated = server.stored.iter().find(|e| e["type"] == "app_updated").expect("an update from 1.2");
    assert_eq!(updated["properties"]["previous_version"], "1.2");
}

/// Late advertising ids: an id set while the install request is out goes as an
/// `advertising_id` event once the install is answered; one recorded while tracking was allowed
/// leaves without its id if tracking is denied before the upload; `app_opened` is once per
/// open (a second foreground without a background records none).
#[test]
fn late_advertising_ids_follow_consent_at_upload_and_the_install_answer() {
    let store = MemoryStore::new();
    let mut c = config();
    c.device.os = Some("iOS".into());
    c.advertising_id = Some("IDFA-0".into());
    let mut engine = Engine::open(c, store, T0, seed(7)).unwrap();
    engine.on_foreground(T0);
    engine.on_foreground(T0 + 10);
    // The install request goes out with IDFA-0; IDFA-1 comes while it is out.
    let Action::Upload(install) = engine.poll(T0 + 20) else { panic!("the install request first") };
    assert!(install.url.ends_with("/v1/install"));
    assert!(String::from_utf8_lossy(&install.body).contains("IDFA-0"));
    engine.set_advertising_id(T0 + 30, Some("IDFA-1")).unwrap();
    let organic = serde_json::to_vec(&json!({"attributed": false, "match_type": "organic", "confidence": 0.0,
        "campaign_id": null, "link_id": null, "click_id": null, "network": null, "deep_link": null,
        "fraud": {"flags": [], "rejected": false}, "reinstall": false}))
    .unwrap();
    engine.report(T0 + 40, install.batch_id, UploadOutcome::Response { status: 200, retry_after: None, body: organic });
    let mut server = Collector::default();
    drive(&mut engine, T0 + 45, 60_000, |t, now| server.accept(t, now, |_| false));
    // IDFA-2 recorded while allowed, then tracking denied before the upload.
    engine.set_advertising_id(T0 + 70_000, Some("IDFA-2")).unwrap();
    engine.set_tracking_authorization(T0 + 70_010, trailmark_core::engine::TrackingAuthorization::Denied);
    drive(&mut engine, T0 + 70_020, 60_000, |t, now| server.accept(t, now, |_| false));
    let late: Vec<_> =
        server.stored.iter().filter(|e| e["type"] == "advertising_id").map(|e| e["properties"].clone()).collect();
    assert_eq!(late, [json!({"idfa": "IDFA-1"}), json!({})], "IDFA-2 left without its id");
    assert_eq!(server.types().iter().filter(|t| *t == "app_opened").count(), 1);
}
