//! Property tests: random interleavings of track / persist / flush / upload outcomes / time /
//! crash-and-reopen. Checked: no durable event is lost except by a cap or a server rejection
//! (both counted), no event is handed out again after it was acknowledged, and first
//! deliveries arrive oldest first.

mod common;

use std::collections::{BTreeSet, HashSet};

use common::*;
use proptest::prelude::*;
use serde_json::Value;
use trailmark_core::engine::{Action, Engine, Stats, UploadOutcome};
use trailmark_core::protocol::IngestResponse;
use trailmark_core::{EventStore, MemoryStore};

#[derive(Debug, Clone, Copy)]
enum Answer {
    Ok,
    /// 200, with every event whose n % 5 == k rejected as invalid.
    Reject(u8),
    /// The server stores the batch but the response is lost.
    Lost,
    Status(u16),
    /// 200 with a body that is not the protocol's (a captive portal's page, or empty).
    Foreign(bool),
    Network,
}

#[derive(Debug, Clone)]
enum Op {
    Track(u8),
    Persist,
    Flush,
    Poll(Answer),
    Advance(u32),
    Crash,
}

fn answer() -> impl Strategy<Value = Answer> {
    prop_oneof![
        4 => Just(Answer::Ok),
        1 => (0u8..5).prop_map(Answer::Reject),
        1 => Just(Answer::Lost),
        1 => prop::sample::select(vec![500u16, 503, 429, 408, 413, 400, 401, 404]).prop_map(Answer::Status),
        1 => any::<bool>().prop_map(Answer::Foreign),
        1 => Just(Answer::Network),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..30).prop_map(Op::Track),
        1 => Just(Op::Persist),
        1 => Just(Op::Flush),
        6 => answer().prop_map(Op::Poll),
        2 => (0u32..4_000_000).prop_map(Op::Advance),
        1 => Just(Op::Crash),
    ]
}

fn n_of(event: &Value) -> Option<u64> {
    event["properties"]["n"].as_u64()
}

/// Every recorded event is delivered, rejected, dropped (counted) or still queued.
fn conservation(s: &Stats) -> bool {
    s.recorded
        == s.delivered
            + s.rejected_by_server
            + s.dropped_queue_full
            + s.dropped_expired
            + s.dropped_pre_consent_full
            + s.dropped_consent_denied
            + s.dropped_opted_out
            + s.queued
            + s.held
}

struct Model {
    next_n: u64,
    pending: Vec<u64>,
    durable: BTreeSet<u64>,
    acked_ids: HashSet<String>,
    rejected: BTreeSet<u64>,
    server: Collector,
    now: i64,
    opens: u64,
}

impl Model {
    fn make_durable(&mut self) {
        self.durable.extend(self.pending.drain(..));
    }

    /// Answers one upload task the way `answer` says and checks it against the acknowledged set.
    fn answer<S: EventStore>(&mut self, engine: &mut Engine<S>, task: trailmark_core::UploadTask, answer: Answer) {
        let envelope: Value = serde_json::from_slice(&task.body).unwrap();
        let events = envelope["batch"].as_array().unwrap().clone();
        let ids: Vec<String> = events.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect();
        for id in &ids {
            assert!(!self.acked_ids.contains(id), "event {id} handed out again after its acknowledgement");
        }
        let now = self.now;
        let outcome = match answer {
            Answer::Ok => self.server.accept(&task, now, |_| false),
            Answer::Reject(k) => self.server.accept(&task, now, move |e| n_of(e).is_some_and(|n| n % 5 == k as u64)),
            Answer::Lost => {
                let _ = self.server.accept(&task, now, |_| false);
                UploadOutcome::NetworkError("response lost".into())
            }
            Answer::Status(s) => error(s),
            Answer::Foreign(html) => {
                let body = if html { b"<html>Sign in</html>".to_vec() } else { Vec::new() };
                UploadOutcome::Response { status: 200, retry_after: None, body }
            }
            Answer::Network => UploadOutcome::NetworkError("unreachable".into()),
        };
        // Refused for good (413, or a permanent 4xx) with the event alone: dropped.
        let refused_alone = task.event_count == 1
            && matches!(answer, Answer::Status(s) if (400..500).contains(&s) && !matches!(s, 401 | 408 | 409 | 429));
        let acked = matches!(answer, Answer::Ok | Answer::Reject(_)) || refused_alone;
        if acked {
            if let UploadOutcome::Response { status: 200, body, .. } = &outcome {
                let response: IngestResponse = serde_json::from_slice(body).unwrap();
                self.rejected.extend(response.rejected.iter().filter_map(|r| n_of(&events[r.index])));
            } else {
                // A refusal of an event alone. A real server would not refuse a body it already
                // stored (an earlier attempt whose answer was lost): it would answer "duplicate".
                // The model's server can; such an event counts as delivered, not rejected.
                let stored: BTreeSet<u64> = self.server.numbers().into_iter().collect();
                self.rejected.extend(events.iter().filter_map(n_of).filter(|n| !stored.contains(n)));
            }
            self.acked_ids.extend(ids);
        }
        engine.report(now, task.batch_id, outcome);
    }
}

fn run(ops: Vec<Op>, max_queue: usize) {
    let store = MemoryStore::new();
    let mut cfg = config();
    cfg.policy.max_queue_events = max_queue;
    cfg.policy.auth_pause = std::time::Duration::from_secs(120);
    let open = |store: &MemoryStore, now: i64, n: u64| Engine::open(cfg.clone(), store.clone(), now, seed(n)).unwrap();
    let mut m = Model {
        next_n: 0,
        pending: vec![],
        durable: BTreeSet::new(),
        acked_ids: HashSet::new(),
        rejected: BTreeSet::new(),
        server: Collector::default(),
        now: T0,
        opens: 1,
    };
    let mut engine = open(&store, m.now, 1);
    for op in ops {
        match op {
            Op::Track(k) => {
                for _ in 0..k {
                    track_n(&mut engine, m.now, m.next_n, 1);
                    m.pending.push(m.next_n);
                    m.next_n += 1;
                }
            }
            Op::Persist => {
                engine.persist().unwrap();
                m.make_durable();
            }
            Op::Flush => {
                engine.flush(m.now).unwrap();
                m.make_durable();
            }
            Op::Poll(answer) => {
                let action = engine.poll(m.now);
                m.make_durable();
                match action {
                    Action::Upload(task) => m.answer(&mut engine, task, answer),
                    Action::Wait(d) => m.now += d.as_millis() as i64,
                    Action::Idle => {}
                }
            }
            Op::Advance(ms) => m.now += ms as i64,
            Op::Crash => {
                // Whatever was not committed is gone, as in a killed process.
                drop(engine);
                m.pending.clear();
                m.opens += 1;
                engine = open(&store, m.now, m.opens);
            }
        }
        engine.persist().unwrap();
        m.make_durable();
        let stats = engine.stats();
        assert!(conservation(&stats), "{stats:?}");
        assert!(stats.queued <= max_queue as u64);
    }
    // Drain: the network recovers.
    for _ in 0..10_000 {
        match engine.poll(m.now) {
            Action::Upload(task) => m.answer(&mut engine, task, Answer::Ok),
            Action::Wait(d) => m.now += d.as_millis() as i64,
            Action::Idle => break,
        }
    }
    let stats = engine.stats();
    assert_eq!(stats.queued, 0, "{stats:?}");
    assert!(conservation(&stats), "{stats:?}");

    let delivered: Vec<u64> = m.server.numbers();
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "first deliveries out of order: {delivered:?}");
    let delivered: BTreeSet<u64> = delivered.into_iter().collect();
    assert!(delivered.is_disjoint(&m.rejected));
    let missing: Vec<u64> =
        m.durable.iter().copied().filter(|n| !delivered.contains(n) && !m.rejected.contains(n)).collect();
    let dropped = stats.dropped_queue_full + stats.dropped_expired;
    assert!(missing.len() as u64 <= dropped, "lost without a count: {missing:?} (dropped {dropped})");
    if dropped == 0 {
        assert!(missing.is_empty());
    }
    assert!(stats.rejected_by_server as usize >= m.rejected.len());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Caps never bind: every durable event is delivered or rejected, exactly.
    #[test]
    fn no_loss_no_redelivery_oldest_first(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, 100_000);
    }

    /// A small queue: losses happen, but only at the cap and always counted.
    #[test]
    fn losses_only_at_caps_and_counted(ops in prop::collection::vec(op(), 1..120)) {
        run(ops, 40);
    }
}

/// Found by CI (2026-11-29): a single event stored by the server, its answer lost, then a 413
/// for the retry. The model counted it rejected although the server had it.
#[test]
fn lost_answer_then_413_alone_counts_as_delivered() {
    use Answer::{Lost, Ok, Status};
    run(
        vec![
            Op::Flush,
            Op::Poll(Lost),
            Op::Poll(Ok),
            Op::Poll(Ok),
            Op::Track(1),
            Op::Poll(Lost),
            Op::Poll(Ok),
            Op::Poll(Status(413)),
        ],
        40,
    );
}
