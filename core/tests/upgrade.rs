//! An SDK upgraded with events still queued (issue 18): the queue and the state document as the
//! serde-based core (before the core diet) wrote them, in the SQLite queue file of the SDK
//! before ADR 0022, are read by this core (the queue file imports them), and every queued
//! event is delivered once, unchanged, with the identity the old SDK kept.

mod common;

use common::*;
use serde_json::{Value, json};
use trailmark_core::engine::Engine;
use trailmark_core::protocol::{self, Event};
use trailmark_core::store::{EventStore, FileStore, SqliteStore, StoredEvent, WriteBatch};

const ANON: &str = "0b9a7c64-1d2e-4f3a-8b5c-6d7e8f9a0b1c";

/// The state document of an installation that queued 5 events (seq 1..=5), as serde wrote it.
fn old_state() -> String {
    format!(
        r#"{{"anonymous_id":"{ANON}","user_id":"u-1","consent":{{"analytics":true,"attribution":true,"do_not_sell":false}},"opted_out":false,"installed":true,"session":{{"id":"s-old","last_activity":{}}},"unreported":{{"queue_full":0,"expired":0,"pre_consent_full":0,"invalid":1,"backpressure":0}},"next_seq":6,"stats":{{"recorded":5,"delivered":0,"rejected_by_server":0,"dropped_queue_full":0,"dropped_expired":0,"dropped_pre_consent_full":0,"dropped_consent_denied":0,"dropped_opted_out":0,"refused_invalid":1,"dropped_backpressure":0,"ignored_no_consent":0,"uploads":2,"upload_failures":2,"store_errors":0,"queued":5,"held":0,"beacons":0}},"install_request":null,"attribution":null}}"#,
        T0 - 60_000
    )
}

/// Events as the serde-based core wrote them: serde_json's `Event`, floats printed by ryu.
fn old_events() -> Vec<Event> {
    (1..=5u64)
        .map(|n| {
            let text = json!({
                "event_id": format!("6f1c2a8e-3b4d-4f6a-9c1e-2d3f4a5b6c{n:02}"),
                "type": "add_to_cart",
                "timestamp": protocol::format_millis(T0 - 120_000 + n as i64),
                "anonymous_id": ANON,
                "user_id": "u-1",
                "session_id": "s-old",
                "properties": {"n": n, "price": 19.99, "big": 1e21, "tiny": 5e-7, "nested": {"a": [1, {"b": null}]}, "text": "é \"q\"\n"},
                "context": {"device": {"os": "iOS", "os_version": "18.1"}, "consent": {"analytics": true, "attribution": true, "do_not_sell": false},
                            "sdk": {"name": "trailmark-swift", "version": "0.1.0"}},
            });
            serde_json::from_value(text).unwrap()
        })
        .collect()
}

#[test]
fn events_queued_by_the_serde_core_are_delivered_once_and_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.db");
    let events = old_events();
    {
        // What the old SDK left on disk: its rows and its state document.
        let mut store = SqliteStore::open(&path).unwrap();
        let inserts = events
            .iter()
            .enumerate()
            .map(|(i, e)| StoredEvent {
                seq: i as u64 + 1,
                held: false,
                created_at: T0 - 120_000,
                body: serde_json::to_vec(e).unwrap(),
            })
            .collect();
        store.commit(&WriteBatch { inserts, state: Some(old_state().into_bytes()), ..WriteBatch::default() }).unwrap();
    }

    // The new SDK opens its queue file where the old one kept its database.
    let store = FileStore::open(&path).unwrap();
    assert_eq!(&std::fs::read(&path).unwrap()[..8], b"TMQUEUE1", "the SQLite file was replaced");
    let mut engine = Engine::open(config(), store, T0, seed(1)).unwrap();
    assert_eq!(engine.anonymous_id(), ANON, "the old identity is kept");
    assert_eq!(engine.user_id(), Some("u-1"));
    assert!(!engine.install_pending(), "an upgrade is not a new install");
    let stats = engine.stats();
    assert_eq!((stats.queued, stats.recorded, stats.store_errors), (5, 5, 0), "{stats:?}");

    let mut server = Collector::default();
    drive(&mut engine, T0, 600_000, |t, now| server.accept(t, now, |_| false));
    assert_eq!(server.duplicates, 0);
    assert_eq!(server.stored.len(), 5, "every queued event, once");
    for (sent, original) in server.stored.iter().zip(&events) {
        let original: Value = serde_json::to_value(original).unwrap();
        assert_eq!(sent, &original, "delivered as it was queued");
    }
    assert_eq!(server.dropped_reported, 1, "the old drop count reaches the server");
    let stats = engine.stats();
    assert_eq!((stats.delivered, stats.queued), (5, 0));

    // New events continue the old sequence and the old session's identity.
    engine.track(T0 + 1, "after_upgrade", Default::default()).unwrap();
    drive(&mut engine, T0 + 1, 600_000, |t, now| server.accept(t, now, |_| false));
    let last = server.stored.last().unwrap();
    assert_eq!(last["type"], "after_upgrade");
    assert_eq!(last["anonymous_id"], ANON);

    // Imported once: opened again, the queue file holds what the engine left (nothing queued).
    drop(engine);
    let engine = Engine::open(config(), FileStore::open(&path).unwrap(), T0 + 2, seed(2)).unwrap();
    assert_eq!(engine.anonymous_id(), ANON);
    assert_eq!(engine.stats().queued, 0);
}
