//! SDK start time on the caller's thread and `track` latency through the FFI surface (the
//! calls Swift and Kotlin make, minus their own marshalling). `cargo bench -p trailmark-ffi`;
//! without `--bench` (as `cargo test` runs it) a quick smoke run. Figures: docs/BENCHMARKS.md.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use trailmark_ffi::{HttpResponse, HttpTransport, TrailmarkConfig, TrailmarkSdk};

/// Answers every upload at once as the server does when it takes everything (an organic
/// attribution for the install request), so the benchmark measures the SDK, not a network.
struct Accept;

impl HttpTransport for Accept {
    fn post(&self, url: String, _headers: HashMap<String, String>, body: Vec<u8>) -> HttpResponse {
        let answer = if url.ends_with("/v1/install") {
            serde_json::json!({"attributed": false, "match_type": "organic", "confidence": 0.0,
                "fraud": {"flags": [], "rejected": false}, "reinstall": false})
        } else {
            let sent: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let n = sent["batch"].as_array().map_or(0, Vec::len);
            serde_json::json!({"accepted": n, "duplicates": 0, "rejected": []})
        };
        HttpResponse { status: 200, retry_after: None, body: serde_json::to_vec(&answer).unwrap(), error: None }
    }
}

fn config(db: &std::path::Path) -> TrailmarkConfig {
    TrailmarkConfig {
        device_id: Some("vendor-1".into()),
        app_version: Some("1.0".into()),
        os: Some("iOS".into()),
        os_version: Some("17.4".into()),
        model: Some("iPhone15,2".into()),
        locale: Some("en-GB".into()),
        timezone: Some("Europe/London".into()),
        ..TrailmarkConfig::new("bench", "secret", "https://collect.example.test", &db.to_string_lossy())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what:<44} n={:<7} p50 {:>9.2?}  p90 {:>9.2?}  p99 {:>9.2?}  max {:>9.2?}",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.9),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (starts, rounds, per_round) = if full { (200, 20, 10_000) } else { (5, 2, 1000) };
    let dir = tempfile::tempdir().unwrap();
    let transport: Arc<dyn HttpTransport> = Arc::new(Accept);

    // First start of an installation: creates the queue file and records `install`.
    let mut first = Vec::new();
    for i in 0..starts {
        let db = dir.path().join(format!("fresh-{i}.db"));
        let t = Instant::now();
        let sdk = TrailmarkSdk::start(config(&db), Some(transport.clone())).unwrap();
        first.push(t.elapsed());
        drop(sdk);
    }
    report("start: first launch (new queue)", first);

    // Later starts, with 1,000 events waiting in the queue.
    let db = dir.path().join("queued.db");
    {
        let offline: Arc<dyn HttpTransport> = Arc::new(Offline);
        let sdk = TrailmarkSdk::start(config(&db), Some(offline)).unwrap();
        for i in 0..1000 {
            sdk.track("add_to_cart".into(), format!(r#"{{"sku": "A-{i}"}}"#));
        }
        sdk.flush().unwrap();
    }
    let mut again = Vec::new();
    for _ in 0..starts {
        let offline: Arc<dyn HttpTransport> = Arc::new(Offline);
        let t = Instant::now();
        let sdk = TrailmarkSdk::start(config(&db), Some(offline)).unwrap();
        again.push(t.elapsed());
        drop(sdk);
    }
    report("start: relaunch (1,000 events queued)", again);

    // track: the caller's cost (validate, enqueue). Rounds end with a flush (not timed) so the
    // worker's channel never fills and the figure is the steady state, not backpressure.
    let sdk = TrailmarkSdk::start(config(&dir.path().join("track.db")), Some(transport.clone())).unwrap();
    let props = r#"{"sku": "A-1", "price": 9.99, "currency": "EUR", "quantity": 2}"#.to_owned();
    let mut samples = Vec::with_capacity(rounds * per_round);
    for _ in 0..rounds {
        for _ in 0..per_round {
            let (name, p) = ("add_to_cart".to_owned(), props.clone());
            let t = Instant::now();
            sdk.track(name, p);
            samples.push(t.elapsed());
        }
        sdk.flush().unwrap();
    }
    let stats = sdk.stats().unwrap();
    assert_eq!(stats.dropped_backpressure, 0, "{stats:?}");
    report("track (FFI surface, 4 properties)", samples);
}

/// No network: uploads fail, so events stay queued.
struct Offline;

impl HttpTransport for Offline {
    fn post(&self, _url: String, _headers: HashMap<String, String>, _body: Vec<u8>) -> HttpResponse {
        HttpResponse { status: 0, retry_after: None, body: Vec::new(), error: Some("offline".into()) }
    }
}
