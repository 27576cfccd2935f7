//! OpenTelemetry: the reference server exports its request spans over OTLP/HTTP; the ingest
//! and install spans of a request that carries a W3C `traceparent` (as every SDK upload does)
//! are its children, and the store spans are theirs, all under the SDK's trace id.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post;
use serde_json::{Value, json};
use trailmark_core::protocol;

/// Every span the collector received: (trace id, span id, parent span id, name).
type Spans = Arc<Mutex<Vec<(String, String, String, String)>>>;

async fn collector() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let sink = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                let v: Value = serde_json::from_slice(&body).expect("OTLP/HTTP JSON");
                let mut out = sink.lock().unwrap();
                for rs in v["resourceSpans"].as_array().into_iter().flatten() {
                    let attributes = rs["resource"]["attributes"].as_array().cloned().unwrap_or_default();
                    let service = attributes.iter().find(|a| a["key"] == "service.name");
                    assert_eq!(service.map(|a| &a["value"]["stringValue"]), Some(&json!("trailmark-server")));
                    for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                        for s in ss["spans"].as_array().into_iter().flatten() {
                            let text = |k: &str| s[k].as_str().unwrap_or_default().to_ascii_lowercase();
                            out.push((text("traceId"), text("spanId"), text("parentSpanId"), text("name")));
                        }
                    }
                }
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, spans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_join_the_sdk_trace() {
    let (url, spans) = collector().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("o.db");
    let server = common::spawn(&["--db", db.to_str().unwrap(), "--otlp-endpoint", &url]);
    let http = reqwest::Client::new();

    let (trace, parent) = ([0x4b; 16], [0x21; 8]);
    let traceparent = protocol::traceparent(trace, parent);
    let now = protocol::format_millis(trailmark_server::now_ms());
    let batch = json!({"sent_at": now, "batch": [{"event_id": uuid::Uuid::new_v4().to_string(), "type": "app_open",
        "timestamp": now, "anonymous_id": "a1"}]});
    let (s, body) = common::signed(&http, &server.base, "/v1/event", &batch, &[("traceparent", &traceparent)]).await;
    assert_eq!(s, 200, "{body}");
    let (install_trace, install_parent) = ([0x7c; 16], [0x05; 8]);
    let install = json!({"event_id": uuid::Uuid::new_v4().to_string(), "anonymous_id": "a1", "timestamp": now,
        "platform": "ios", "device": {}});
    let tp = protocol::traceparent(install_trace, install_parent);
    let (s, body) = common::signed(&http, &server.base, "/v1/install", &install, &[("traceparent", &tp)]).await;
    assert_eq!(s, 200, "{body}");
    // A request without a traceparent gets a trace of its own.
    let (s, _) = common::signed(&http, &server.base, "/v1/event", &batch, &[]).await;
    assert_eq!(s, 200);

    let find = |trace: &[u8; 16], name: &str| {
        let trace = hex(trace);
        spans.lock().unwrap().iter().find(|s| s.0 == trace && s.3 == name).cloned()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    // Every span asserted below: a parent can end in a later export batch than its child.
    let ingest_spans = || spans.lock().unwrap().iter().filter(|s| s.3 == "ingest").count();
    while find(&install_trace, "store").is_none()
        || find(&trace, "store").is_none()
        || find(&trace, "ingest").is_none()
        || find(&install_trace, "install").is_none()
        || ingest_spans() < 2
    {
        assert!(Instant::now() < deadline, "spans did not arrive: {:?}", spans.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ingest = find(&trace, "ingest").expect("the ingest span is in the SDK's trace");
    assert_eq!(ingest.2, hex(&parent), "its parent is the SDK's upload span");
    let store = find(&trace, "store").unwrap();
    assert_eq!(store.2, ingest.1, "the store span is a child of the ingest span");
    let install = find(&install_trace, "install").expect("the install span is in its trace");
    assert_eq!(install.2, hex(&install_parent));
    assert_eq!(find(&install_trace, "store").unwrap().2, install.1);
    assert!(ingest_spans() >= 2, "the request without a traceparent has an ingest span too");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
