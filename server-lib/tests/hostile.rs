//! Hostile input: every case gets its 4xx (or a per-event rejection) with a clear message in the
//! protocol's error shape, the server stays healthy, and no other data is lost.

use std::io::Write;
mod common;

use serde_json::{Value, json};
use trailmark_core::protocol;
use trailmark_server::{ServerBuilder, ServerConfig};

const APP: &str = "app";
const SECRET: &str = "secret";

struct Server {
    base: String,
    client: reqwest::Client,
    db: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let mut config = ServerConfig::new().with_app(APP, SECRET);
    config.admin_key = Some("admin-key-0123456789".into());
    config.limits.ip_rate_per_sec = 100_000;
    config.limits.ip_burst = 100_000;
    let base = common::serve(ServerBuilder::new(config).sqlite(&db).unwrap()).await;
    Server { base, client: reqwest::Client::new(), db, _dir: dir }
}

fn now() -> i64 {
    trailmark_server::now_ms() / 1000
}

fn event(t: &str, props: Value) -> Value {
    json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": t, "timestamp": "2026-01-01T00:00:00.000Z",
           "anonymous_id": "anon-1", "properties": props})
}

fn batch(events: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({"sent_at": "2026-01-01T00:00:01.000Z", "batch": events})).unwrap()
}

/// How to mangle a request.
#[derive(Clone, Default)]
struct Req {
    body: Vec<u8>,
    app: Option<&'static str>,
    secret: Option<&'static str>,
    ts: Option<String>,
    sig: Option<String>,
    no_ts: bool,
    no_sig: bool,
    no_app: bool,
    encoding: Option<&'static str>,
    tamper: bool,
}

impl Server {
    async fn send(&self, r: Req) -> (u16, Value) {
        let ts = r.ts.clone().unwrap_or_else(|| now().to_string());
        let sig = r
            .sig
            .clone()
            .unwrap_or_else(|| protocol::sign(r.secret.unwrap_or(SECRET).as_bytes(), ts.parse().unwrap_or(0), &r.body));
        let mut body = r.body.clone();
        if r.tamper {
            body.push(b' ');
        }
        let mut req = self.client.post(format!("{}/v1/event", self.base)).body(body);
        if !r.no_app {
            req = req.header(protocol::HEADER_APP, r.app.unwrap_or(APP));
        }
        if !r.no_ts {
            req = req.header(protocol::HEADER_TIMESTAMP, ts);
        }
        if !r.no_sig {
            req = req.header(protocol::HEADER_SIGNATURE, sig);
        }
        if let Some(enc) = r.encoding {
            req = req.header("Content-Encoding", enc);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("body is not JSON: {text:?}")))
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clear_4xx_and_lose_nothing() {
    let s = start().await;
    let good = || batch(vec![event("screen_view", json!({"name": "home"}))]);
    let mut deep = String::new();
    for _ in 0..100 {
        deep.push('[');
    }
    let deep_body = format!("{{\"batch\": {deep}{}}}", "]".repeat(100));
    let very_deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let big = vec![b' '; 600 * 1024];
    let bomb = gzip(&vec![b' '; 20 * 1024 * 1024]);
    let too_many = batch((0..501).map(|_| event("x", json!({}))).collect());

    // (name, request, expected status, expected error code)
    let cases: Vec<(&str, Req, u16, &str)> = vec![
        ("missing app header", Req { body: good(), no_app: true, ..Default::default() }, 401, "missing_app"),
        ("unknown app", Req { body: good(), app: Some("nope"), ..Default::default() }, 401, "unknown_app"),
        ("missing timestamp", Req { body: good(), no_ts: true, ..Default::default() }, 401, "invalid_signature"),
        ("missing signature", Req { body: good(), no_sig: true, ..Default::default() }, 401, "invalid_signature"),
        (
            "malformed timestamp",
            Req { body: good(), ts: Some("abc".into()), ..Default::default() },
            401,
            "invalid_signature",
        ),
        (
            "signature wrong version",
            Req { body: good(), sig: Some(format!("v2={}", "0".repeat(64))), ..Default::default() },
            401,
            "invalid_signature",
        ),
        (
            "signature not hex",
            Req { body: good(), sig: Some(format!("v1={}", "z".repeat(64))), ..Default::default() },
            401,
            "invalid_signature",
        ),
        (
            "signature short",
            Req { body: good(), sig: Some("v1=abcd".into()), ..Default::default() },
            401,
            "invalid_signature",
        ),
        ("wrong secret", Req { body: good(), secret: Some("other"), ..Default::default() }, 401, "invalid_signature"),
        (
            "stale timestamp",
            Req { body: good(), ts: Some((now() - 301).to_string()), ..Default::default() },
            401,
            "stale_timestamp",
        ),
        // Well past the 5-minute window: the cases are built before any is sent, and a loaded
        // machine takes seconds to reach this one (+301 s once passed as +300 s).
        (
            "future timestamp",
            Req { body: good(), ts: Some((now() + 900).to_string()), ..Default::default() },
            401,
            "stale_timestamp",
        ),
        (
            "body tampered after signing",
            Req { body: good(), tamper: true, ..Default::default() },
            401,
            "invalid_signature",
        ),
        ("empty body", Req::default(), 400, "invalid_json"),
        ("not JSON", Req { body: b"hello".to_vec(), ..Default::default() }, 400, "invalid_json"),
        ("truncated JSON", Req { body: b"{\"batch\": [".to_vec(), ..Default::default() }, 400, "invalid_json"),
        ("NaN literal", Req { body: b"{\"batch\": [NaN]}".to_vec(), ..Default::default() }, 400, "invalid_json"),
        (
            "invalid UTF-8",
            Req { body: b"{\"batch\": [\"\xff\xfe\"]}".to_vec(), ..Default::default() },
            400,
            "invalid_utf8",
        ),
        ("top-level array", Req { body: b"[1,2,3]".to_vec(), ..Default::default() }, 400, "invalid_body"),
        ("top-level string", Req { body: b"\"event\"".to_vec(), ..Default::default() }, 400, "invalid_body"),
        ("nesting 100 deep", Req { body: deep_body.into_bytes(), ..Default::default() }, 400, "too_deep"),
        ("nesting 100,000 deep", Req { body: very_deep.into_bytes(), ..Default::default() }, 400, "too_deep"),
        ("body over 512 KB", Req { body: big, ..Default::default() }, 413, "payload_too_large"),
        ("gzip bomb", Req { body: bomb, encoding: Some("gzip"), ..Default::default() }, 413, "payload_too_large"),
        (
            "gzip header, not gzip",
            Req { body: b"plain".to_vec(), encoding: Some("gzip"), ..Default::default() },
            400,
            "invalid_encoding",
        ),
        (
            "unsupported encoding",
            Req { body: good(), encoding: Some("br"), ..Default::default() },
            415,
            "unsupported_encoding",
        ),
        ("batch not an array", Req { body: b"{\"batch\": 5}".to_vec(), ..Default::default() }, 400, "invalid_envelope"),
        (
            "sent_at not a time",
            Req { body: b"{\"sent_at\": \"soon\", \"batch\": []}".to_vec(), ..Default::default() },
            400,
            "invalid_envelope",
        ),
        (
            "dropped counts negative",
            Req { body: b"{\"batch\": [], \"dropped\": {\"queue_full\": -1}}".to_vec(), ..Default::default() },
            400,
            "invalid_envelope",
        ),
        ("501 events", Req { body: too_many, ..Default::default() }, 413, "payload_too_large"),
    ];
    let n_whole = cases.len();
    for (name, req, status, code) in cases {
        let (got, body) = s.send(req).await;
        assert_eq!(got, status, "{name}: {body}");
        assert_eq!(body["error"]["code"], code, "{name}: {body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.len() > 5), "{name}: {body}");
    }

    // Per-event rejections: each bad event is refused by index, with a reason; good ones stay.
    let mut no_id = event("x", json!({}));
    no_id.as_object_mut().unwrap().remove("event_id");
    let mut bad_uuid = event("x", json!({}));
    bad_uuid["event_id"] = json!("not-a-uuid");
    let mut bad_ts = event("x", json!({}));
    bad_ts["timestamp"] = json!("yesterday");
    let mut empty_anon = event("x", json!({}));
    empty_anon["anonymous_id"] = json!("");
    let mut number_anon = event("x", json!({}));
    number_anon["anonymous_id"] = json!(42);
    let mut long_user = event("x", json!({}));
    long_user["user_id"] = json!("u".repeat(300));
    let mut screen = event("x", json!({}));
    screen["context"] = json!({"device": {"screen": {"width": "wide"}}});
    let mut props_array = event("x", json!({}));
    props_array["properties"] = json!([1, 2]);
    let bad_events: Vec<(&str, Value)> = vec![
        ("no event_id", no_id),
        ("event_id not a UUID", bad_uuid),
        ("type with capitals", event("Add To Cart", json!({}))),
        ("type too long", event(&"a".repeat(65), json!({}))),
        ("timestamp not a time", bad_ts),
        ("empty anonymous_id", empty_anon),
        ("anonymous_id a number", number_anon),
        ("user_id too long", long_user),
        ("screen width a string", screen),
        ("properties an array", props_array),
        ("purchase without revenue", event("purchase", json!({"currency": "EUR"}))),
        ("purchase with currency EURO", event("purchase", json!({"revenue": 5, "currency": "EURO"}))),
        ("purchase with negative revenue", event("purchase", json!({"revenue": -5, "currency": "EUR"}))),
        ("add_to_cart quantity zero", event("add_to_cart", json!({"quantity": 0}))),
        ("event not an object", json!("event")),
    ];
    let n_events = bad_events.len();
    let sql = event("search", json!({"q": "'; DROP TABLE events; --", "r": "\" OR 1=1 --"}));
    let html = event("comment", json!({"text": "<script>alert('x')</script><img src=x onerror=alert(1)>"}));
    let mut events = vec![sql.clone(), html.clone()];
    let mut names = Vec::new();
    for (name, e) in bad_events {
        events.push(e);
        names.push(name);
        events.push(event("filler", json!({})));
    }
    let (status, body) = s.send(Req { body: batch(events.clone()), ..Default::default() }).await;
    assert_eq!(status, 200, "{body}");
    let rejected = body["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), n_events, "{body}");
    for (k, r) in rejected.iter().enumerate() {
        assert_eq!(r["index"], 2 + 2 * k, "{}: {r}", names[k]);
        assert!(r["reason"].as_str().unwrap().len() > 5, "{}: {r}", names[k]);
    }
    assert_eq!(body["accepted"], 2 + n_events, "valid events in the same batch are kept: {body}");

    // Replays are duplicates; a duplicate inside one batch too.
    let (_, body) = s.send(Req { body: batch(events), ..Default::default() }).await;
    assert_eq!(body["accepted"], 0);
    assert_eq!(body["duplicates"], 2 + n_events);
    let twin = event("x", json!({}));
    let (_, body) = s.send(Req { body: batch(vec![twin.clone(), twin]), ..Default::default() }).await;
    assert_eq!((body["accepted"].as_u64(), body["duplicates"].as_u64()), (Some(1), Some(1)));

    // gzip works when it is honest; a single event (no envelope) works.
    let (status, body) = s.send(Req { body: gzip(&good()), encoding: Some("gzip"), ..Default::default() }).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(1)), "{body}");
    let single = serde_json::to_vec(&event("logout", json!({}))).unwrap();
    let (status, body) = s.send(Req { body: single, ..Default::default() }).await;
    assert_eq!((status, body["accepted"].as_u64()), (200, Some(1)), "{body}");

    // Admin endpoint.
    let del = |auth: Option<&str>, body: &str| {
        let mut r = s.client.post(format!("{}/v1/user/delete", s.base)).body(body.to_owned());
        if let Some(a) = auth {
            r = r.header("Authorization", a);
        }
        r.send()
    };
    for (auth, body, status) in [
        (None, r#"{"user_id":"u"}"#, 401),
        (Some("Bearer wrong"), r#"{"user_id":"u"}"#, 401),
        (Some("Basic YWRtaW4="), r#"{"user_id":"u"}"#, 401),
        (Some("Bearer admin-key-0123456789"), r#"{}"#, 400),
        (Some("Bearer admin-key-0123456789"), r#"{"user_id":"u","device_id":"d"}"#, 400),
        (Some("Bearer admin-key-0123456789"), r#"{"email":"a@b.c"}"#, 400),
        (Some("Bearer admin-key-0123456789"), r#"{"user_id":42}"#, 400),
        (Some("Bearer admin-key-0123456789"), r#"not json"#, 400),
    ] {
        let resp = del(auth, body).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{auth:?} {body}");
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"]["code"].is_string(), "{v}");
    }

    // Unknown routes and methods answer in the protocol's error shape too.
    for (method, path, status) in [("GET", "/v1/nope", 404), ("GET", "/v1/event", 405), ("PUT", "/healthz", 405)] {
        let resp = s.client.request(method.parse().unwrap(), format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{method} {path}");
        let v: Value = resp.json().await.unwrap();
        assert!(v["error"]["message"].as_str().is_some(), "{v}");
    }

    // Still healthy, nothing lost: the stored payloads are intact.
    let health: Value = s.client.get(format!("{}/healthz", s.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    let conn = rusqlite::Connection::open(&s.db).unwrap();
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0)).unwrap();
    assert_eq!(count as usize, 2 + n_events + 1 + 2, "stored rows");
    let stored: String = conn
        .query_row("SELECT properties FROM events WHERE event_id = ?1", [sql["event_id"].as_str().unwrap()], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&stored).unwrap(), sql["properties"]);
    let stored: String = conn
        .query_row("SELECT properties FROM events WHERE event_id = ?1", [html["event_id"].as_str().unwrap()], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&stored).unwrap(), html["properties"]);
    let metrics = s.client.get(format!("{}/metrics", s.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("trailmark_events_rejected_total"), "{metrics}");
    eprintln!("{} whole-request cases, {} per-event cases, 8 admin cases", n_whole, n_events);
}
