//! What the web SDK needs from the server: CORS for each app's configured origins, and beacons
//! signed in the query string (navigator.sendBeacon cannot set headers).

use serde_json::{Value, json};
use trailmark_core::engine::Engine;
use trailmark_core::protocol;
use trailmark_core::{Config, MemoryStore};
use trailmark_server::{ServerBuilder, ServerConfig};

mod common;

const SHOP: &str = "https://shop.example";

async fn server(dir: &tempfile::TempDir) -> String {
    let config = ServerConfig::new()
        .with_app("app", "secret")
        .with_app("other", "other-secret")
        .with_admin_key("adm1n-key-0123456789")
        .with_cors_origin("app", "https://SHOP.example:443/")
        .unwrap()
        .with_cors_origin("other", "http://localhost:5173")
        .unwrap();
    common::serve(ServerBuilder::new(config).sqlite(dir.path().join("s.db")).unwrap()).await
}

fn batch() -> Vec<u8> {
    let mut engine =
        Engine::open(Config::new("app", "secret", "http://127.0.0.1:9"), MemoryStore::new(), 0, [7; 32]).unwrap();
    engine.track(trailmark_server::now_ms(), "opened", Default::default()).unwrap();
    let task = engine.beacon(trailmark_server::now_ms(), 60_000).unwrap();
    task.body
}

#[test]
fn origins_are_validated_and_normalised() {
    use trailmark_server::domain::config::normalize_origin;
    assert_eq!(normalize_origin("https://Shop.Example:443").unwrap(), SHOP);
    assert_eq!(normalize_origin("http://localhost:8080/").unwrap(), "http://localhost:8080");
    for bad in ["shop.example", "https://shop.example/path", "ftp://x.example", "*"] {
        assert!(normalize_origin(bad).is_err(), "{bad}");
    }
    assert!(ServerConfig::new().with_cors_origin("nope", SHOP).is_err(), "unknown app");
}

#[tokio::test]
async fn preflight_is_answered_for_configured_origins_only() {
    let dir = tempfile::tempdir().unwrap();
    let base = server(&dir).await;
    let client = reqwest::Client::new();
    let preflight = |origin: &str| {
        client
            .request(reqwest::Method::OPTIONS, format!("{base}/v1/event"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type,x-trailmark-app,x-trailmark-signature")
            .send()
    };
    for origin in [SHOP, "http://localhost:5173"] {
        let r = preflight(origin).await.unwrap();
        assert_eq!(r.status(), 204, "{origin}");
        let h = r.headers();
        assert_eq!(h["access-control-allow-origin"], origin);
        assert_eq!(h["access-control-allow-methods"], "POST");
        let allowed = h["access-control-allow-headers"].to_str().unwrap();
        for name in ["content-type", "x-trailmark-app", "x-trailmark-timestamp", "x-trailmark-signature"] {
            assert!(allowed.contains(name), "{allowed}");
        }
        assert_eq!(h["vary"], "Origin");
    }
    let r = preflight("https://evil.example").await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["code"], "origin_not_allowed");
}

#[tokio::test]
async fn requests_are_checked_against_their_apps_origins() {
    let dir = tempfile::tempdir().unwrap();
    let base = server(&dir).await;
    let client = reqwest::Client::new();
    // The app's own origin: accepted, and the browser may read the answer.
    let r = common::signed(&client, &base, batch()).header("Origin", SHOP).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], SHOP);
    assert_eq!(r.headers()["access-control-expose-headers"], "Retry-After");
    // Another app's origin is not this app's.
    let r = common::signed(&client, &base, batch()).header("Origin", "http://localhost:5173").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    // No Origin: not a browser; unaffected.
    let r = common::signed(&client, &base, batch()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn beacons_are_signed_in_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let base = server(&dir).await;
    let client = reqwest::Client::new();
    let now = trailmark_server::now_ms();
    let mut engine =
        Engine::open(Config::new("app", "secret", base.clone()), MemoryStore::new(), now, [9; 32]).unwrap();
    engine.track(now, "checkout_started", Default::default()).unwrap();
    let task = engine.beacon(now, 60_000).unwrap();
    assert!(task.url.contains("tm_sig=v1%3D"), "{}", task.url);
    let send = |url: String, body: Vec<u8>| {
        client.post(url).header("Content-Type", "text/plain;charset=UTF-8").header("Origin", SHOP).body(body).send()
    };
    let r = send(task.url.clone(), task.body.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer, json!({"accepted": 3, "duplicates": 0, "suppressed": 0, "rejected": []}));
    // The same beacon again is a duplicate, stored once.
    let answer: Value = send(task.url.clone(), task.body.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(answer["duplicates"], 3);
    // A tampered body or a signature from another secret is refused.
    let mut tampered = task.body.clone();
    let at = tampered.iter().position(|b| *b == b'{').unwrap();
    tampered.insert(at + 1, b' ');
    let r = send(task.url.clone(), tampered).await.unwrap();
    assert_eq!(r.status(), 401);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_signature");
    let ts = now / 1000;
    let forged = protocol::sign(b"other-secret", ts, &task.body);
    let url = url::Url::parse_with_params(
        &format!("{base}/v1/event"),
        [("tm_app", "app"), ("tm_ts", &ts.to_string()), ("tm_sig", &forged)],
    )
    .unwrap();
    assert_eq!(send(url.to_string(), task.body.clone()).await.unwrap().status(), 401);
    // Missing credentials say which ones.
    let r = send(format!("{base}/v1/event"), task.body.clone()).await.unwrap();
    assert_eq!(r.status(), 401);
    let error: Value = r.json().await.unwrap();
    assert!(error["error"]["message"].as_str().unwrap().contains("tm_app"));

    let url = format!("{base}/v1/events?app_id=app&anonymous_id={}", engine.anonymous_id());
    let r = client.get(url).bearer_auth("adm1n-key-0123456789").send().await.unwrap();
    let events: Value = r.json().await.unwrap();
    let types: Vec<&str> = events["events"].as_array().unwrap().iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.iter().filter(|t| **t == "checkout_started").count(), 1, "{types:?}");
}
