//! A device whose clock is hours off (issue 19): the server refuses its signature as
//! `stale_timestamp` with the server's time; the engine learns the offset, signs again at once,
//! delivers everything and gets its install request through, with the install's times on the
//! server's clock.

mod common;

use common::*;
use serde_json::{Value, json};
use trailmark_core::engine::{Action, Engine, UploadOutcome, UploadTask};
use trailmark_core::protocol::{self, SignatureError};
use trailmark_core::{Config, MemoryStore};

const TWO_HOURS: i64 = 2 * 3600 * 1000;

/// The server's answer to a task signed on the device's clock, judged on the server's clock.
fn answer(collector: &mut Collector, task: &UploadTask, server_now: i64, installs: &mut Vec<Value>) -> UploadOutcome {
    let header = |name: &str| task.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let verdict = protocol::verify_signature(
        SECRET.as_bytes(),
        header(protocol::HEADER_TIMESTAMP),
        header(protocol::HEADER_SIGNATURE),
        &task.body,
        server_now / 1000,
    );
    match verdict {
        Err(SignatureError::Stale { .. }) => UploadOutcome::Response {
            status: 401,
            retry_after: None,
            body: serde_json::to_vec(
                &json!({"error": {"code": "stale_timestamp", "message": "old", "server_time": server_now}}),
            )
            .unwrap(),
        },
        Err(e) => panic!("signature refused: {e}"),
        Ok(()) if task.url.ends_with(protocol::INSTALL_PATH) => {
            installs.push(serde_json::from_slice(&task.body).unwrap());
            let result = protocol::AttributionResult::organic(Default::default());
            UploadOutcome::Response { status: 200, retry_after: None, body: serde_json::to_vec(&result).unwrap() }
        }
        Ok(()) => collector.accept(task, server_now, |_| false),
    }
}

#[test]
fn a_device_two_hours_off_delivers_everything_and_its_install() {
    for skew in [-TWO_HOURS, TWO_HOURS] {
        let mut config: Config = config();
        config.device.os = Some("iOS".into());
        config.device_id = Some("IDFV-1".into());
        let device_t0 = T0 - skew; // the device's clock: the server's minus `skew`
        let mut engine = Engine::open(config, MemoryStore::new(), device_t0, seed(3)).unwrap();
        track_n(&mut engine, device_t0, 0, 30);
        let (mut collector, mut installs) = (Collector::default(), Vec::new());
        let mut refusals = 0;
        let mut now = device_t0;
        for _ in 0..100 {
            match engine.poll(now) {
                Action::Upload(task) => {
                    let outcome = answer(&mut collector, &task, now + skew, &mut installs);
                    refusals += matches!(outcome, UploadOutcome::Response { status: 401, .. }) as u32;
                    engine.report(now, task.batch_id, outcome);
                }
                // Only the flush interval may pass (never the hour's credentials pause).
                Action::Wait(d) if d.as_millis() <= 30_000 => now += d.as_millis() as i64,
                _ => break,
            }
        }
        assert_eq!(refusals, 1, "one refusal teaches the offset ({skew})");
        assert!(now - device_t0 <= 30_000, "no pause: {} ms", now - device_t0);
        assert!(engine.attribution().is_some(), "the install was attributed");
        assert_eq!(collector.numbers(), (0..30).collect::<Vec<_>>(), "every event, once");
        // The install's time is the first open on the server's clock.
        let sent = protocol::format_millis(T0);
        assert_eq!(installs.len(), 1);
        assert_eq!(installs[0]["timestamp"], sent.as_str());
        let stats = engine.stats();
        assert_eq!((stats.queued, stats.delivered), (0, 32), "{stats:?}");

        // The offset is kept: after a restart the first request is signed right.
        let store = engine.into_store();
        let mut engine = Engine::open(common::config(), store, now, seed(4)).unwrap();
        engine.track(now, "later", Default::default()).unwrap();
        engine.flush(now).unwrap();
        let Action::Upload(task) = engine.poll(now) else { panic!("an upload") };
        let outcome = answer(&mut collector, &task, now + skew, &mut installs);
        assert!(matches!(outcome, UploadOutcome::Response { status: 200, .. }), "{outcome:?}");
    }
}

#[test]
fn a_refusal_that_is_not_about_the_clock_still_pauses() {
    let mut engine = open(MemoryStore::new(), T0);
    track_n(&mut engine, T0, 0, 3);
    engine.flush(T0).unwrap();
    let mut now = T0;
    for body in [
        json!({"error": {"code": "invalid_signature", "message": "no", "server_time": T0 + TWO_HOURS}}),
        json!({"error": {"code": "stale_timestamp", "message": "no"}}),
    ] {
        let Action::Upload(task) = engine.poll(now) else { panic!("an upload") };
        let outcome =
            UploadOutcome::Response { status: 401, retry_after: None, body: serde_json::to_vec(&body).unwrap() };
        engine.report(now, task.batch_id, outcome);
        assert!(matches!(engine.poll(now), Action::Wait(d) if d.as_secs() >= 3000), "the credentials pause applies");
        now += 3_600_001; // past the pause, for the next round
    }
}
