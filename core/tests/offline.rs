//! Long offline runs on a fake clock: the caps hold while every upload fails, and everything
//! kept is delivered exactly once, oldest first, when the network returns.

mod common;

use std::time::Duration;

use common::*;
use trailmark_core::engine::{Action, Engine, UploadOutcome};
use trailmark_core::{EventStore, MemoryStore};

/// Tracks one event every `every_ms` for `hours`, answering every upload with a failure, the
/// way a driver would: poll, upload, report, sleep until the engine asks to be woken.
fn offline<S: EventStore>(engine: &mut Engine<S>, start: i64, hours: i64, every_ms: i64, cap: u64) -> (i64, u64, u64) {
    let mut now = start;
    let mut attempts = 0u64;
    let mut n = 0u64;
    let end = start + hours * 3_600_000;
    let mut wake = start;
    while now < end {
        engine.track(now, "tick", props(serde_json::json!({ "n": n }))).unwrap();
        n += 1;
        if now >= wake {
            loop {
                match engine.poll(now) {
                    Action::Upload(task) => {
                        attempts += 1;
                        let outcome = if attempts.is_multiple_of(2) {
                            UploadOutcome::NetworkError("offline".into())
                        } else {
                            error(503)
                        };
                        engine.report(now, task.batch_id, outcome);
                    }
                    Action::Wait(d) => {
                        wake = now + d.as_millis() as i64;
                        break;
                    }
                    Action::Idle => break,
                }
            }
        }
        engine.persist().unwrap();
        assert!(engine.stats().queued <= cap, "queue above its cap");
        now += every_ms;
    }
    (now, n, attempts)
}

#[test]
fn seventy_two_hours_offline_keeps_the_cap_then_delivers_once_oldest_first() {
    let store = MemoryStore::new();
    let mut engine = open(store.clone(), T0);
    let (now, tracked, attempts) = offline(&mut engine, T0, 72, 10_000, 10_000);
    assert_eq!(tracked, 25_920);
    let stats = engine.stats();
    // install + one session_start (activity every 10 s keeps the session) + the ticks.
    assert_eq!(stats.recorded, tracked + 2);
    assert_eq!(stats.queued, 10_000);
    assert_eq!(stats.dropped_queue_full, tracked + 2 - 10_000);
    // Backoff capped at 10 min with full jitter: on average one attempt per 5 min, at least.
    assert!(attempts >= 72 * 6, "only {attempts} attempts in 72 h");
    assert!(attempts < 72 * 3600, "{attempts} attempts: backoff not applied");
    assert_eq!(store.events().len(), 10_000, "the cap holds on disk too");

    // Back online (after a restart, for good measure).
    drop(engine);
    let mut engine = open(store.clone(), now);
    let mut server = Collector::default();
    drive(&mut engine, now, 600_000, |t, n| server.accept(t, n, |_| false));
    assert_eq!(server.duplicates, 0);
    assert_eq!(server.numbers(), (tracked - 10_000..tracked).collect::<Vec<_>>());
    assert_eq!(server.dropped_reported, tracked + 2 - 10_000, "the drops reach the server");
    let stats = engine.stats();
    assert_eq!(stats.delivered, 10_000);
    assert_eq!(stats.queued, 0);
    assert!(store.events().is_empty());
}

#[test]
fn age_cap_expires_old_events_while_offline() {
    let store = MemoryStore::new();
    let mut cfg = config();
    cfg.policy.max_event_age = Duration::from_secs(3600);
    let mut engine = Engine::open(cfg, store.clone(), T0, seed(7)).unwrap();
    // One event a minute for 3 h, offline: only the last hour survives.
    let (now, tracked, _) = offline(&mut engine, T0, 3, 60_000, 10_000);
    assert_eq!(tracked, 180);
    let mut server = Collector::default();
    drive(&mut engine, now, 600_000, |t, n| server.accept(t, n, |_| false));
    let delivered = server.numbers();
    let first = *delivered.first().unwrap();
    // The first upload after reconnecting waits out the backoff pending then (full jitter under
    // the 10-minute cap), during which up to 10 more minutes of events expire.
    assert!((118..=131).contains(&first), "oldest delivered event is {first} min old");
    assert_eq!(delivered, (first..180).collect::<Vec<_>>());
    let stats = engine.stats();
    assert_eq!(stats.dropped_expired + stats.delivered, stats.recorded);
    assert!(server.dropped_reported >= first);
}
