//! `cargo bench -p trailmark-core --bench track`: caller-thread latency of `track` and durable
//! throughput of the native driver (its queue file, with and without an fsync per commit), plus
//! the engine alone on each store (the queue file, and the SQLite store it replaced).
//! Figures go to docs/BENCHMARKS.md.

use std::time::{Duration, Instant};

use serde_json::json;
use trailmark_core::engine::{Engine, UploadOutcome, UploadTask};
use trailmark_core::native::{Error, NativeOptions, Trailmark, Uploader};
use trailmark_core::store::{Durability, FileStore, SqliteStore};
use trailmark_core::{Config, EventStore, MemoryStore};

/// Keeps everything local: every upload fails, so events stay queued and the engine backs off.
struct Offline;
impl Uploader for Offline {
    fn upload(&mut self, _task: &UploadTask) -> UploadOutcome {
        UploadOutcome::NetworkError("benchmark runs offline".into())
    }
}

fn config() -> Config {
    let mut c = Config::new("bench-app", "bench-secret", "https://collect.example.com");
    c.policy.max_queue_events = 10_000_000;
    c
}

fn props(i: u64) -> trailmark_core::json::Object {
    json!({"sku": format!("SKU-{}", i % 1000), "price": 19.99, "currency": "EUR", "quantity": 1 + i % 3, "category": "shoes"})
        .as_object()
        .unwrap()
        .clone()
        .into()
}

fn start(dir: &std::path::Path, name: &str, durability: Durability) -> Trailmark {
    let mut opts = NativeOptions::new(dir.join(name));
    opts.durability = durability;
    opts.uploader = Some(Box::new(Offline));
    Trailmark::start(config(), opts).unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    // `cargo test --benches` runs this binary with `--bench`-less args; keep it short then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let scale = if quick { 20 } else { 1 };
    let dir = tempfile::tempdir().unwrap();
    println!(
        "machine: {} logical CPUs, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu_model()
    );

    // 1. Caller-thread latency: rounds of 1,000 calls, flushed between rounds (untimed) so the
    //    worker is never behind by more than one round.
    let tm = start(dir.path(), "latency.queue", Durability::Full);
    let rounds = 300 / scale;
    let mut lat = Vec::with_capacity(rounds * 1000);
    let mut i = 0u64;
    for _ in 0..rounds {
        let batch: Vec<_> = (0..1000)
            .map(|_| {
                i += 1;
                props(i)
            })
            .collect();
        for p in batch {
            let t = Instant::now();
            tm.track("add_to_cart", p).unwrap();
            lat.push(t.elapsed());
        }
        tm.flush().unwrap();
    }
    lat.sort();
    println!(
        "track latency (caller thread, {} calls): p50 {:?}  p90 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 0.999),
        lat[lat.len() - 1]
    );
    drop(tm);

    // 2. Durable throughput: track as fast as the worker absorbs, then flush(); every event is
    //    committed when flush returns.
    for (durability, label) in [(Durability::Full, "Full"), (Durability::Normal, "Normal")] {
        let name = format!("throughput-{label}.queue");
        let tm = start(dir.path(), &name, durability);
        let n = 500_000 / scale as u64;
        let payloads: Vec<_> = (0..n).map(props).collect();
        let t = Instant::now();
        let mut waited = 0u64;
        for p in payloads {
            let mut p = Some(p);
            loop {
                match tm.track("add_to_cart", p.take().unwrap()) {
                    Ok(()) => break,
                    Err(Error::Backpressure) => {
                        waited += 1;
                        std::thread::sleep(Duration::from_micros(200));
                        p = Some(props(0));
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }
        tm.flush().unwrap();
        let elapsed = t.elapsed();
        let stats = tm.stats().unwrap();
        drop(tm);
        let snapshot = FileStore::open(dir.path().join(&name)).unwrap().load().unwrap();
        let mean = snapshot.entries.iter().map(|e| e.size as u64).sum::<u64>() / snapshot.entries.len() as u64;
        println!(
            "durable throughput (native driver, queue file, {label}): {n} events in {:.3} s = {:.0} events/s \
             (queued {}, mean event {mean} bytes, caller backed off {waited} times)",
            elapsed.as_secs_f64(),
            n as f64 / elapsed.as_secs_f64(),
            stats.queued
        );
    }

    // 3. The engine alone on one thread: build + serialise + commit every 1,000 events.
    let engine_run = |name: &str, store: Box<dyn EventStore + Send>| {
        let mut engine = Engine::open(config(), store, 1_767_225_600_000, [7; 32]).unwrap();
        let n = 300_000 / scale as u64;
        let payloads: Vec<_> = (0..n).map(props).collect();
        let t = Instant::now();
        for (i, p) in payloads.into_iter().enumerate() {
            engine.track(1_767_225_600_000 + i as i64, "add_to_cart", p).unwrap();
            if i % 1000 == 999 {
                engine.persist().unwrap();
            }
        }
        engine.persist().unwrap();
        let e = t.elapsed();
        println!(
            "engine alone ({name}): {n} events in {:.3} s = {:.0} events/s",
            e.as_secs_f64(),
            n as f64 / e.as_secs_f64()
        );
    };
    engine_run("MemoryStore", Box::new(MemoryStore::new()));
    for (durability, label) in [(Durability::Full, "Full"), (Durability::Normal, "Normal")] {
        let file = FileStore::open_with(dir.path().join(format!("engine-{label}.queue")), durability).unwrap();
        engine_run(&format!("FileStore {label}"), Box::new(file));
        let sqlite = SqliteStore::open_with(dir.path().join(format!("engine-{label}.db")), durability).unwrap();
        engine_run(&format!("SqliteStore {label}"), Box::new(sqlite));
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
