//! The SDK end to end on one machine: a Rust host tracks events while its collector is down,
//! the collector comes up, and every event arrives exactly once, signed and oldest first.
//!
//! `cargo run -p trailmark-core --example offline_demo`
//!
//! The collector here is a few lines of tiny_http that verify the signature and dedup by
//! `event_id` with the `protocol` module; the real one is `server-lib`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use trailmark_core::native::{NativeOptions, Trailmark};
use trailmark_core::protocol::{self, BatchEnvelope, IngestResponse};
use trailmark_core::{Config, ConsentUpdate};

const SECRET: &str = "demo-secret";

#[derive(Default)]
struct Received {
    ids: HashSet<String>,
    types: Vec<String>,
    duplicates: u64,
    refused_while_down: u64,
}

fn main() {
    let server = tiny_http::Server::http("127.0.0.1:0").expect("bind");
    let port = server.server_addr().to_ip().expect("ip").port();
    let up = Arc::new(AtomicBool::new(false));
    let received = Arc::new(Mutex::new(Received::default()));
    {
        let (up, received) = (up.clone(), received.clone());
        std::thread::spawn(move || collector(server, up, received));
    }

    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::new("demo-app", SECRET, format!("http://127.0.0.1:{port}"));
    config.app.id = Some("com.example.demo".into());
    config.app.version = Some("1.0.0".into());
    let tm = Trailmark::start(config, NativeOptions::new(dir.path().join("queue.db"))).expect("start");
    println!("collector on port {port} is DOWN; tracking while offline");

    let props = |v: Value| trailmark_core::json::Object::from(v.as_object().cloned().unwrap_or_default());
    tm.set_consent(ConsentUpdate { analytics: Some(true), attribution: Some(true), do_not_sell: None }).unwrap();
    tm.handle_open_url("demo://product/42?tm_click_id=clk_demo&utm_source=newsletter&utm_campaign=spring").unwrap();
    tm.identify("user-42", props(json!({"email": "Jane.Doe@Example.com", "plan": "pro"}))).unwrap();
    tm.screen("product", props(json!({"sku": "A-42"}))).unwrap();
    for i in 0..50 {
        tm.track("add_to_cart", props(json!({"sku": format!("A-{i}"), "price": 9.99, "currency": "EUR"}))).unwrap();
    }
    tm.track("purchase", props(json!({"revenue": 499.5, "currency": "EUR"}))).unwrap();
    if let Err(e) = tm.track("Not A Valid Type", Default::default()) {
        println!("refused at once with a typed error: {e}");
    }
    tm.flush().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let stats = tm.stats().unwrap();
    println!(
        "after 3 s offline: {} queued on disk, {} upload attempts refused by the collector",
        stats.queued,
        received.lock().unwrap().refused_while_down
    );

    up.store(true, Ordering::SeqCst);
    println!("collector is UP");
    let deadline = Instant::now() + Duration::from_secs(60);
    let stats = loop {
        let stats = tm.stats().unwrap();
        if stats.queued == 0 || Instant::now() > deadline {
            break stats;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let r = received.lock().unwrap();
    println!(
        "delivered {} events ({} stored by the collector, {} duplicates), refused {} call(s) as invalid",
        stats.delivered,
        r.ids.len(),
        r.duplicates,
        stats.refused_invalid
    );
    println!("first events: {:?}", &r.types[..5.min(r.types.len())]);
    let ok = stats.queued == 0 && stats.delivered == stats.recorded && r.ids.len() as u64 == stats.recorded;
    if !ok {
        eprintln!("demo FAILED: {stats:?}");
        std::process::exit(1);
    }
    println!("demo OK: every event arrived exactly once");
}

fn collector(server: tiny_http::Server, up: Arc<AtomicBool>, received: Arc<Mutex<Received>>) {
    for mut request in server.incoming_requests() {
        let mut body = Vec::new();
        let _ = request.as_reader().read_to_end(&mut body);
        let header = |name: &str| {
            request
                .headers()
                .iter()
                .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
                .map(|h| h.value.as_str().to_owned())
        };
        let reply = |status: u16, json: Value| {
            tiny_http::Response::from_string(json.to_string())
                .with_status_code(status)
                .with_header("Content-Type: application/json".parse::<tiny_http::Header>().unwrap())
                .with_header("Retry-After: 1".parse::<tiny_http::Header>().unwrap())
        };
        if !up.load(Ordering::SeqCst) {
            received.lock().unwrap().refused_while_down += 1;
            let _ = request.respond(reply(503, json!({"error": {"code": "unavailable", "message": "down"}})));
            continue;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let ts = header(protocol::HEADER_TIMESTAMP);
        let sig = header(protocol::HEADER_SIGNATURE);
        if let Err(e) = protocol::verify_signature(SECRET.as_bytes(), ts.as_deref(), sig.as_deref(), &body, now) {
            let _ =
                request.respond(reply(401, json!({"error": {"code": "invalid_signature", "message": e.to_string()}})));
            continue;
        }
        let Ok(envelope) = serde_json::from_slice::<BatchEnvelope<protocol::Event>>(&body) else {
            let _ = request.respond(reply(400, json!({"error": {"code": "invalid_body", "message": "bad envelope"}})));
            continue;
        };
        let mut response = IngestResponse::default();
        let mut r = received.lock().unwrap();
        for event in envelope.batch {
            if r.ids.insert(event.event_id.to_string()) {
                r.types.push(event.event_type);
                response.accepted += 1;
            } else {
                r.duplicates += 1;
                response.duplicates += 1;
            }
        }
        drop(r);
        let _ = request.respond(reply(200, serde_json::to_value(&response).unwrap()));
    }
}
