//! kill -9 test of the native driver: a child process tracks events and is killed at random
//! moments. Every event whose `track` returned more than 50 ms before the kill, and every event
//! tracked before a completed `flush()`, must be in the store when it is reopened — except the
//! oldest ones the queue's cap (`Policy::max_queue_events`, [`QUEUE_CAP`] here) evicted by
//! design: nothing is uploaded here, and the child tracks more than the cap in one round.
//!
//! The child is this test binary itself, re-run with `TM_KILL_CHILD` set.
#![cfg(feature = "native")]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use trailmark_core::native::{NativeOptions, Trailmark};
use trailmark_core::store::FileStore;
use trailmark_core::{Config, EventStore};

const KILLS: usize = 60;
/// The child's queue cap: small, so that a round fills it and the queue file is compacted
/// several times (ADR 0022), and kills also land during compactions.
const QUEUE_CAP: usize = 2_000;
const DURABLE_WITHIN: Duration = Duration::from_millis(50);

/// The child: tracks numbered events, printing `t <n>` after each `track` returns and
/// `f <n>` after each completed `flush()`.
#[test]
fn kill_child() {
    let Ok(db) = std::env::var("TM_KILL_CHILD") else { return };
    // Nothing listens on port 9: every upload fails and the events stay queued.
    let mut config = Config::new("kill-test", "secret", "http://127.0.0.1:9");
    config.policy.max_queue_events = QUEUE_CAP;
    let tm = Trailmark::start(config, NativeOptions::new(db)).expect("start");
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    let mut n: u64 = 0;
    loop {
        let props = serde_json::json!({ "n": n, "payload": "some typical event properties" });
        if tm.track("tick", props.as_object().unwrap().clone().into()).is_ok() {
            writeln!(out, "t {n}").unwrap();
            out.flush().unwrap();
        }
        if n % 97 == 96 {
            tm.flush().expect("flush");
            writeln!(out, "f {n}").unwrap();
            out.flush().unwrap();
        }
        if n % 25 == 24 {
            std::thread::sleep(Duration::from_micros(500));
        }
        n += 1;
    }
}

#[test]
fn events_survive_kill_9() {
    if std::env::var("TM_KILL_CHILD").is_ok() {
        return;
    }
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("kill test seed {seed}");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut total_required = 0usize;
    for round in 0..KILLS {
        let db = dir.path().join(format!("round-{round}.db"));
        let mut child = Command::new(&exe)
            .args(["--exact", "kill_child", "--nocapture", "--test-threads=1"])
            .env("TM_KILL_CHILD", &db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<(Instant, String)>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        // Wait until the child runs, then let it work a random while.
        let mut lines = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(Instant::now() < deadline, "the child never said ready");
            let (at, line) = rx.recv_timeout(Duration::from_secs(30)).expect("child starts");
            let ready = line.ends_with("ready"); // libtest may prefix "test kill_child ... "
            lines.push((at, line));
            if ready {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20 + rng.next_u64() % 400));
        let killed_at = Instant::now();
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());

        let mut required = BTreeSet::new();
        let mut tracked = BTreeSet::new();
        let mut flushed_up_to = None;
        for (at, line) in &lines {
            if let Some(n) = line.strip_prefix("t ").and_then(|n| n.parse::<u64>().ok()) {
                tracked.insert(n);
                if *at + DURABLE_WITHIN < killed_at {
                    required.insert(n);
                }
            } else if let Some(n) = line.strip_prefix("f ").and_then(|n| n.parse::<u64>().ok()) {
                flushed_up_to = Some(n);
            }
        }
        if let Some(f) = flushed_up_to {
            required.extend(tracked.iter().copied().filter(|n| *n <= f));
        }
        let mut store = FileStore::open(&db).unwrap();
        let snapshot = store.load().unwrap();
        let seqs: Vec<u64> = snapshot.entries.iter().map(|e| e.seq).collect();
        let stored: BTreeSet<u64> = store
            .read(&seqs)
            .unwrap()
            .into_iter()
            .filter_map(|(_, body)| serde_json::from_slice::<serde_json::Value>(&body).ok())
            .filter_map(|e| e["properties"]["n"].as_u64())
            .collect();
        // The queue keeps the newest `max_queue_events`; older events are dropped (and counted)
        // when it is full — but never the batch in flight (no server answers here, so the
        // oldest batch stays in flight and keeps its slots). Events are numbered in order, so
        // the kept ones are the top of `tracked` less up to one batch (and a few: an event
        // tracked just before the kill may not have been printed, automatic events count too).
        let policy = trailmark_core::Policy::default();
        let kept_at_least = QUEUE_CAP - policy.max_batch_events - 16;
        if tracked.len() > kept_at_least
            && let Some(&oldest_kept) = tracked.iter().rev().nth(kept_at_least)
        {
            required.retain(|n| *n >= oldest_kept);
        }
        let lost: Vec<u64> = required.difference(&stored).copied().collect();
        let oldest_lost_age = lines
            .iter()
            .filter_map(|(at, l)| Some((at, l.strip_prefix("t ")?.parse::<u64>().ok()?)))
            .find(|(_, n)| lost.first() == Some(n))
            .map(|(at, _)| killed_at.duration_since(*at));
        assert!(
            lost.is_empty(),
            "round {round} (seed {seed}): lost {} events, first {:?}; tracked {}, stored {}, flushed up to {:?}, \
             oldest lost tracked {:?} before the kill",
            lost.len(),
            &lost[..lost.len().min(10)],
            tracked.len(),
            stored.len(),
            flushed_up_to,
            oldest_lost_age
        );
        total_required += required.len();
    }
    eprintln!("{KILLS} kills, {total_required} events checked durable");
    assert!(total_required > KILLS * 100, "the child tracked too little to test anything");
}
