//! Test helpers: a simulated collector that checks signatures, dedups by event id and records
//! what it received, plus an engine harness with a fake clock.
#![allow(dead_code)]

use std::collections::HashSet;

use serde_json::{Value, json};
use trailmark_core::engine::{Action, Engine, Millis, UploadOutcome, UploadTask};
use trailmark_core::protocol::{self, BatchEnvelope, IngestResponse};
use trailmark_core::{Config, EventStore, MemoryStore};

pub const SECRET: &str = "test-secret";
pub const T0: Millis = 1_767_225_600_000; // 2026-01-01T00:00:00Z

pub fn config() -> Config {
    Config::new("test-app", SECRET, "http://127.0.0.1:9")
}

pub fn props(value: Value) -> trailmark_core::json::Object {
    value.as_object().cloned().expect("object").into()
}

pub fn seed(n: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&n.to_le_bytes());
    s
}

/// What the simulated collector received.
#[derive(Default)]
pub struct Collector {
    pub seen: HashSet<String>,
    /// Every newly stored event, in arrival order.
    pub stored: Vec<Value>,
    pub duplicates: u64,
    pub requests: u64,
    pub dropped_reported: u64,
}

impl Collector {
    /// Checks the request as the server would and answers 200 with the protocol's response.
    /// `reject` chooses events (by their properties) to reject as invalid.
    pub fn accept(&mut self, task: &UploadTask, now: Millis, reject: impl Fn(&Value) -> bool) -> UploadOutcome {
        self.requests += 1;
        let header = |name: &str| task.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
        assert_eq!(header(protocol::HEADER_APP), Some("test-app"));
        protocol::verify_signature(
            SECRET.as_bytes(),
            header(protocol::HEADER_TIMESTAMP),
            header(protocol::HEADER_SIGNATURE),
            &task.body,
            now / 1000,
        )
        .expect("signature verifies");
        assert!(task.body.len() <= protocol::MAX_BATCH_BYTES);
        let envelope: BatchEnvelope<Value> = serde_json::from_slice(&task.body).expect("valid envelope");
        assert!(envelope.batch.len() <= protocol::MAX_BATCH_EVENTS);
        assert_eq!(envelope.batch.len(), task.event_count);
        self.dropped_reported += envelope.dropped.total();
        let mut response = IngestResponse::default();
        for (index, event) in envelope.batch.into_iter().enumerate() {
            let parsed: protocol::Event = serde_json::from_value(event.clone()).expect("valid event");
            assert!(serde_json::to_vec(&event).unwrap().len() <= protocol::MAX_EVENT_BYTES);
            // Like the real server: a stored event is a duplicate before anything else.
            if self.seen.contains(&parsed.event_id.to_string()) {
                response.duplicates += 1;
                self.duplicates += 1;
            } else if reject(&event) {
                response.rejected.push(protocol::Rejection { index, reason: "rejected by test".into() });
            } else {
                self.seen.insert(parsed.event_id.to_string());
                response.accepted += 1;
                self.stored.push(event);
            }
        }
        UploadOutcome::Response { status: 200, retry_after: None, body: serde_json::to_vec(&response).unwrap() }
    }

    pub fn types(&self) -> Vec<String> {
        self.stored.iter().map(|e| e["type"].as_str().unwrap().to_owned()).collect()
    }

    /// The `n` property of every stored event that has one, in arrival order.
    pub fn numbers(&self) -> Vec<u64> {
        self.stored.iter().filter_map(|e| e["properties"]["n"].as_u64()).collect()
    }
}

pub fn error(status: u16) -> UploadOutcome {
    UploadOutcome::Response { status, retry_after: None, body: br#"{"error":{"code":"x","message":"y"}}"#.to_vec() }
}

/// Polls and answers every upload with `answer` until the engine is idle or waits for longer
/// than `max_wait` (the fake clock jumps over shorter waits). Returns the final clock.
pub fn drive<S: EventStore>(
    engine: &mut Engine<S>,
    mut now: Millis,
    max_wait_ms: Millis,
    mut answer: impl FnMut(&UploadTask, Millis) -> UploadOutcome,
) -> Millis {
    for _ in 0..100_000 {
        match engine.poll(now) {
            Action::Upload(task) => {
                let outcome = answer(&task, now);
                engine.report(now, task.batch_id, outcome);
            }
            Action::Wait(d) if (d.as_millis() as Millis) <= max_wait_ms => now += d.as_millis() as Millis,
            _ => return now,
        }
    }
    panic!("engine never settled");
}

pub fn open(store: MemoryStore, now: Millis) -> Engine<MemoryStore> {
    Engine::open(config(), store, now, seed(now as u64)).expect("engine opens")
}

pub fn track_n<S: EventStore>(engine: &mut Engine<S>, now: Millis, from: u64, count: u64) {
    for n in from..from + count {
        engine.track(now, "tick", props(json!({ "n": n }))).expect("valid event");
    }
}
