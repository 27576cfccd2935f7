//! The Segment-compatible API over HTTP: messages of every call arrive as Trailmark events
//! (names, properties, hashed e-mail, user ids), a retried batch is deduplicated, a refused
//! message is answered with its reason while the rest are kept, write keys authenticate only
//! this API (wrong, revoked or missing: 401; never `/v1/install` or `/v1/click`), gzip bodies,
//! the settings documents, an alias joins two user ids in the funnel, and a deletion reaches
//! the events. The real Segment and RudderStack SDKs are run against the reference server by
//! `./tests/run.sh compat` (tests/compat).

mod common;

use std::io::Write;

use serde_json::{Value, json};
use trailmark_server::domain::config::{AppKind, WriteKey};
use trailmark_server::{ServerBuilder, ServerConfig};

const ADMIN: &str = "admin-key-0123456789";

struct Srv {
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Srv {
    async fn start(tune: impl FnOnce(&mut ServerConfig)) -> Srv {
        let dir = tempfile::tempdir().unwrap();
        let mut config =
            ServerConfig::new().with_app("app", "secret").with_app_kind("api", "api-secret", AppKind::Server);
        config.admin_key = Some(ADMIN.into());
        let app = config.apps.get_mut("app").unwrap();
        app.write_keys =
            vec![WriteKey::new("wk_live_0123456789"), WriteKey { key: "wk_old_0123456789a".into(), revoked: true }];
        config.apps.get_mut("api").unwrap().write_keys = vec![WriteKey::new("wk_backend_0123456")];
        tune(&mut config);
        let base = common::serve(ServerBuilder::new(config).sqlite(dir.path().join("s.db")).unwrap()).await;
        Srv { base, http: reqwest::Client::new(), _dir: dir }
    }

    async fn post(&self, path: &str, key: Option<&str>, body: &Value) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(body);
        if let Some(key) = key {
            req = req.basic_auth(key, Some(""));
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(key) = key {
            req = req.basic_auth(key, None::<&str>);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(ADMIN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    async fn events(&self, query: &str) -> Vec<Value> {
        let v = self.admin(reqwest::Method::GET, &format!("/v1/events?{query}&limit=1000"), None).await;
        v["events"].as_array().unwrap().clone()
    }
}

fn now_iso(offset_ms: i64) -> String {
    trailmark_core::protocol::format_millis(trailmark_server::now_ms() + offset_ms)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_arrives_as_a_trailmark_event_and_a_retry_counts_once() {
    let srv = Srv::start(|_| {}).await;
    let ts = now_iso(-60_000);
    let batch = json!({
        "sentAt": now_iso(0),
        "batch": [
            {"type": "identify", "messageId": "m-1", "userId": "u-1", "anonymousId": "anon-1", "timestamp": ts,
             "traits": {"email": "Ada@Example.com", "plan": "pro"},
             "context": {"traits": {"email": "Ada@Example.com"}, "library": {"name": "analytics-node", "version": "3.1.0"}}},
            {"type": "track", "messageId": "m-2", "userId": "u-1", "anonymousId": "anon-1", "timestamp": ts,
             "event": "Order Completed", "properties": {"revenue": 42.5, "currency": "eur", "order_id": "o-9"}},
            {"type": "track", "messageId": "m-3", "anonymousId": "anon-1", "timestamp": ts, "event": "Signed Up",
             "properties": {"plan": "pro"}},
            {"type": "page", "messageId": "m-4", "anonymousId": "anon-1", "timestamp": ts, "name": "Pricing",
             "context": {"page": {"url": "https://shop.example/pricing"}}},
            {"type": "screen", "messageId": "m-5", "anonymousId": "anon-1", "timestamp": ts, "name": "Home"},
            {"type": "group", "messageId": "m-6", "userId": "u-1", "anonymousId": "anon-1", "timestamp": ts,
             "groupId": "acme", "traits": {"name": "Acme"}},
            {"type": "alias", "messageId": "m-7", "userId": "u-2", "previousId": "u-1", "anonymousId": "anon-1", "timestamp": ts},
            {"type": "track", "messageId": "m-8", "timestamp": ts, "event": "No one"},
            {"type": "track", "messageId": "m-9", "anonymousId": "anon-1", "timestamp": ts, "event": "Purchase",
             "properties": {"revenue": -1, "currency": "EUR"}}
        ]
    });
    let (status, answer) = srv.post("/v1/batch", Some("wk_live_0123456789"), &batch).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!((answer["success"].as_bool(), answer["accepted"].as_u64()), (Some(true), Some(7)), "{answer}");
    let rejected = answer["rejected"].as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{answer}");
    assert_eq!((rejected[0]["index"].as_u64(), rejected[0]["messageId"].as_str()), (Some(7), Some("m-8")));
    assert!(rejected[0]["reason"].as_str().unwrap().contains("anonymousId"), "{answer}");
    assert_eq!((rejected[1]["index"].as_u64(), rejected[1]["messageId"].as_str()), (Some(8), Some("m-9")));
    assert!(rejected[1]["reason"].as_str().unwrap().contains("revenue"), "{answer}");

    let events = srv.events("app_id=app&anonymous_id=anon-1").await;
    let of = |t: &str| events.iter().find(|e| e["type"] == t).unwrap_or_else(|| panic!("no {t}: {events:?}")).clone();
    let identify = of("identify");
    assert_eq!(identify["user_id"], "u-1");
    assert_eq!(identify["properties"]["email_sha256"], trailmark_core::pii::hash_email("ada@example.com").unwrap());
    assert_eq!(identify["properties"]["plan"], "pro");
    assert_eq!(identify["context"]["sdk"]["name"], "analytics-node");
    assert_eq!(identify["enrichment"]["auth"], "write_key", "marked as unsigned");
    let purchase = of("purchase");
    assert_eq!(purchase["properties"]["revenue"], 42.5);
    assert_eq!(purchase["properties"]["currency"], "EUR");
    assert_eq!(of("signed_up")["properties"]["plan"], "pro");
    assert_eq!(of("page_view")["properties"]["url"], "https://shop.example/pricing");
    assert_eq!(of("screen_view")["properties"]["name"], "Home");
    assert_eq!(of("group")["context"]["group_id"], "acme");
    assert_eq!(of("alias")["user_id"], "u-2");
    assert_eq!(events.len(), 7);
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.to_lowercase().contains("ada@example.com"), "no raw e-mail stored: {text}");

    // The SDK retries the same batch (a timeout on its side): nothing is stored twice.
    let mut retry = batch.clone();
    retry["sentAt"] = json!(now_iso(5_000));
    let (status, answer) = srv.post("/v1/batch", Some("wk_live_0123456789"), &retry).await;
    assert_eq!(
        (status, answer["accepted"].as_u64(), answer["duplicates"].as_u64()),
        (200, Some(0), Some(7)),
        "{answer}"
    );
    assert_eq!(srv.events("app_id=app&anonymous_id=anon-1").await.len(), 7);

    // The mobile SDKs' and the import route take batches too.
    for path in ["/v1/b", "/v1/import"] {
        let batch = json!({"batch": [{"type": "track", "event": format!("Via {path}"), "anonymousId": "anon-2"}]});
        let (status, answer) = srv.post(path, Some("wk_live_0123456789"), &batch).await;
        assert_eq!((status, answer["accepted"].as_u64()), (200, Some(1)), "{path}: {answer}");
    }
    // One call per route, and analytics.js's short routes.
    for (path, msg) in [
        ("/v1/track", json!({"event": "Clicked", "anonymousId": "anon-2"})),
        ("/v1/t", json!({"event": "Clicked Short", "anonymousId": "anon-2"})),
        ("/v1/identify", json!({"userId": "u-3", "traits": {"phone": "+1 555 010 9999"}})),
        ("/v1/page", json!({"anonymousId": "anon-2", "name": "Home"})),
        ("/v1/screen", json!({"anonymousId": "anon-2", "name": "Cart"})),
        ("/v1/group", json!({"anonymousId": "anon-2", "groupId": "g-2"})),
        ("/v1/alias", json!({"userId": "u-4", "previousId": "u-3"})),
        ("/v1/i", json!({"userId": "u-5", "traits": {"plan": "free"}})),
        ("/v1/p", json!({"anonymousId": "anon-2", "name": "Short Page"})),
        ("/v1/s", json!({"anonymousId": "anon-2", "name": "Short Screen"})),
        ("/v1/g", json!({"anonymousId": "anon-2", "groupId": "g-3"})),
        ("/v1/a", json!({"userId": "u-6", "previousId": "u-5"})),
    ] {
        let (status, answer) = srv.post(path, Some("wk_live_0123456789"), &msg).await;
        assert_eq!((status, answer["accepted"].as_u64()), (200, Some(1)), "{path}: {answer}");
    }
    let events = srv.events("app_id=app&anonymous_id=anon-2").await;
    for t in ["clicked_short", "via_v1_b", "via_v1_import"] {
        assert!(events.iter().any(|e| e["type"] == t), "{t}");
    }
    let phone = srv.events("user_id=u-3").await;
    let phone = phone.iter().find(|e| e["type"] == "identify").unwrap();
    assert!(phone["properties"]["phone_sha256"].is_string() && phone["properties"].get("phone").is_none());
    let anon = phone["anonymous_id"].as_str().unwrap();
    assert!(anon.starts_with("user:") && !anon.contains("u-3"), "a pseudonym, not the user id: {anon}");

    // A call whose only message is refused: 400, with the reason.
    let (status, answer) = srv.post("/v1/track", Some("wk_live_0123456789"), &json!({"anonymousId": "a"})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_messages");
    assert!(answer["rejected"][0]["reason"].as_str().unwrap().contains("/event"), "{answer}");
    let (status, answer) = srv.post("/v1/batch", Some("wk_live_0123456789"), &json!({"batch": "no"})).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_batch")), "{answer}");

    // A gzip body (RudderStack's SDK sends one), and the write key in the body (beacons).
    let body = json!({"batch": [{"type": "track", "event": "Zipped", "anonymousId": "anon-3", "messageId": "z-1"}]});
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.to_string().as_bytes()).unwrap();
    let resp = srv
        .http
        .post(format!("{}/v1/batch", srv.base))
        .basic_auth("wk_live_0123456789", Some(""))
        .header("content-encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let beacon = json!({"writeKey": "wk_live_0123456789", "batch": [{"type": "track", "event": "Beacon", "anonymousId": "anon-3"}]});
    let (status, answer) = srv.post("/beacon/v1/batch", None, &beacon).await;
    assert_eq!((status, answer["accepted"].as_u64()), (200, Some(1)), "{answer}");
    let (status, _) = srv.post("/beacon/v1/batch?writeKey=wk_live_0123456789", None, &json!({"batch": []})).await;
    assert_eq!(status, 200, "an empty batch is fine");
    let events = srv.events("app_id=app&anonymous_id=anon-3").await;
    assert!(events.iter().any(|e| e["type"] == "zipped") && events.iter().any(|e| e["type"] == "beacon"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_keys_authenticate_this_api_only() {
    let srv = Srv::start(|_| {}).await;
    let msg = json!({"batch": [{"type": "track", "event": "x", "anonymousId": "a"}]});
    for (key, code) in [
        (Some("wk_nope"), "invalid_write_key"),
        (Some("wk_old_0123456789a"), "revoked_write_key"),
        (Some("secret"), "invalid_write_key"),
        (None, "missing_write_key"),
    ] {
        let (status, answer) = srv.post("/v1/batch", key, &msg).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (401, Some(code)), "{key:?}: {answer}");
    }
    let (status, _) = srv.post("/v1/batch", None, &json!({"writeKey": "wk_old_0123456789a", "batch": []})).await;
    assert_eq!(status, 401, "revoked in the body too");
    // A write key is not a signature: the SDK-only routes refuse it.
    let install = json!({"event_id": "4d7c9d35-2f1e-4d9f-8a0c-3b2e1f000001", "platform": "ios",
                         "anonymous_id": "a", "timestamp": now_iso(0), "idfa": "00000000-0000-0000-0000-000000000001"});
    for path in ["/v1/install", "/v1/click", "/v1/event"] {
        let (status, answer) = srv.post(path, Some("wk_live_0123456789"), &install).await;
        assert_eq!(status, 401, "{path}: {answer}");
    }
    // The documents SDKs fetch at start.
    let (status, settings) = srv.get("/v1/projects/wk_live_0123456789/settings", None).await;
    assert_eq!(status, 200);
    assert_eq!(settings["integrations"]["Segment.io"]["apiKey"], "wk_live_0123456789");
    let host = srv.base.trim_start_matches("http://");
    assert_eq!(settings["integrations"]["Segment.io"]["apiHost"], format!("{host}/v1"), "the Host asked");
    let behind_proxy = Srv::start(|c| c.public_url = Some("https://t.shop.example/".into())).await;
    let (_, settings) = behind_proxy.get("/v1/projects/wk_live_0123456789/settings", None).await;
    assert_eq!(settings["integrations"]["Segment.io"]["apiHost"], "t.shop.example/v1", "the public address");
    let (status, _) = srv.get("/v1/projects/wk_old_0123456789a/settings", None).await;
    assert_eq!(status, 401);
    let (status, config) = srv.get("/sourceConfig/?p=npm&v=3.0.0", Some("wk_live_0123456789")).await;
    assert_eq!((status, config["source"]["enabled"].as_bool()), (200, Some(true)), "{config}");
    let (status, _) = srv.get("/sourceConfig", Some("wk_nope")).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_keys_have_their_own_rate_and_browsers_their_origins() {
    let srv = Srv::start(|c| {
        c.limits.write_key_rate_per_sec = 1;
        c.limits.write_key_burst = 1;
        c.apps.get_mut("app").unwrap().allowed_origins = vec!["https://shop.example".into()];
    })
    .await;
    let msg = json!({"batch": []});
    assert_eq!(srv.post("/v1/batch", Some("wk_live_0123456789"), &msg).await.0, 200);
    let (status, answer) = srv.post("/v1/batch", Some("wk_live_0123456789"), &msg).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (429, Some("rate_limited")), "{answer}");
    // The signed SDK path of the same app is not held up by it.
    let event = json!({"event_id": "4d7c9d35-2f1e-4d9f-8a0c-3b2e1f000002", "type": "x", "anonymous_id": "a",
                       "timestamp": now_iso(0)});
    let resp = common::signed(&srv.http, &srv.base, event.to_string().into_bytes()).send().await.unwrap();
    assert_eq!(resp.status(), 200);

    let srv =
        Srv::start(|c| c.apps.get_mut("app").unwrap().allowed_origins = vec!["https://shop.example".into()]).await;
    let send = |origin: &'static str| {
        srv.http
            .post(format!("{}/v1/t", srv.base))
            .header("origin", origin)
            .header("content-type", "text/plain")
            .body(json!({"writeKey": "wk_live_0123456789", "event": "x", "anonymousId": "a"}).to_string())
            .send()
    };
    let ok = send("https://shop.example").await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.headers()["access-control-allow-origin"], "https://shop.example");
    assert_eq!(send("https://evil.example").await.unwrap().status(), 403);
    // With the key in the header, the origin is refused before the body is read or judged.
    let early = srv
        .http
        .post(format!("{}/v1/batch", srv.base))
        .header("origin", "https://evil.example")
        .basic_auth("wk_live_0123456789", Some(""))
        .body("this is not JSON")
        .send()
        .await
        .unwrap();
    assert_eq!(early.status(), 403);
    // A preflight (RudderStack's browser SDK sends Authorization) for an allowed origin; none
    // for another; an error answer still readable by the allowed page.
    let preflight = |origin: &'static str| {
        srv.http
            .request(reqwest::Method::OPTIONS, format!("{}/v1/batch", srv.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let ok = preflight("https://shop.example").await.unwrap();
    assert_eq!(ok.status(), 204);
    assert!(ok.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    assert_eq!(preflight("https://evil.example").await.unwrap().status(), 403);
    let refused = srv
        .http
        .post(format!("{}/v1/batch", srv.base))
        .header("origin", "https://shop.example")
        .basic_auth("wk_nope", Some(""))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["access-control-allow-origin"], "https://shop.example");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_keys_are_checked_when_the_server_is_built() {
    for (key, part) in
        [("short", "at least 16"), (" wk_padded_0123456789", "spaces"), ("api-secret-0123456789", "secrets")]
    {
        let mut config = ServerConfig::new().with_app("app", "secret").with_app_kind(
            "api",
            "api-secret-0123456789",
            AppKind::Server,
        );
        config.apps.get_mut("app").unwrap().write_keys = vec![WriteKey::new(key)];
        let dir = tempfile::tempdir().unwrap();
        let err = ServerBuilder::new(config).sqlite(dir.path().join("x.db")).unwrap().build().err().expect("refused");
        assert!(err.to_string().contains(part), "{key}: {err}");
    }
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.apps.get_mut("app").unwrap().write_keys =
        vec![WriteKey::new("wk_twice_0123456789"), WriteKey { key: "wk_twice_0123456789".into(), revoked: true }];
    let dir = tempfile::tempdir().unwrap();
    let err = ServerBuilder::new(config).sqlite(dir.path().join("y.db")).unwrap().build().err().expect("refused");
    assert!(err.to_string().contains("listed twice"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_events_reach_reports_and_deletion() {
    let srv = Srv::start(|_| {}).await;
    let today = &now_iso(0)[..10];
    let funnel = || async {
        let r = srv
            .admin(
                reqwest::Method::GET,
                &format!("/v1/reports/funnel?app_id=app&steps=app_opened,purchase&from={today}&to={today}"),
                None,
            )
            .await;
        r["steps"].as_array().unwrap().iter().map(|s| s["users"].as_i64().unwrap()).collect::<Vec<_>>()
    };
    let ts = now_iso(-120_000);
    let opened = json!({"batch": [
        {"type": "track", "event": "Application Opened", "userId": "u1", "anonymousId": "d1", "timestamp": ts},
    ]});
    assert_eq!(srv.post("/v1/batch", Some("wk_live_0123456789"), &opened).await.0, 200);
    let bought = json!({"batch": [
        {"type": "track", "event": "Order Completed", "userId": "u2", "anonymousId": "d2", "timestamp": now_iso(-60_000),
         "properties": {"total": 10, "currency": "USD"}},
    ]});
    assert_eq!(srv.post("/v1/batch", Some("wk_live_0123456789"), &bought).await.0, 200);
    assert_eq!(funnel().await, [1, 0], "two people");
    let alias = json!({"userId": "u2", "previousId": "u1", "anonymousId": "d2"});
    assert_eq!(srv.post("/v1/alias", Some("wk_live_0123456789"), &alias).await.0, 200);
    assert_eq!(funnel().await, [1, 1], "one person after the alias");

    // A server app's messages: its events are stored like the others'.
    // A server app's messages are enriched with the client their context names; another app's
    // with the request's own (a public write key's context could say anything).
    const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
    const WINDOWS: &str =
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36";
    let renewed = |who: &str| {
        json!({"batch": [{"type": "track", "event": "Subscription Renewed", "userId": who,
                          "context": {"ip": "203.0.113.7", "userAgent": IPHONE}},
                         {"type": "track", "event": "Subscription Renewed", "userId": format!("{who}-other"),
                          "context": {"ip": "198.51.100.4", "userAgent": WINDOWS}}]})
    };
    let (status, answer) = srv.post("/v1/batch", Some("wk_backend_0123456"), &renewed("u2")).await;
    assert_eq!((status, answer["accepted"].as_u64()), (200, Some(2)), "{answer}");
    let other = &srv.events("user_id=u2-other").await[0];
    assert_eq!(other["enrichment"]["ua"]["os"], "Windows", "each message its own client: {other}");
    // A server app's message that names no client gets none: not the backend's own.
    let bare = json!({"type": "track", "event": "Nightly Sync", "userId": "u8"});
    let resp = srv
        .http
        .post(format!("{}/v1/track", srv.base))
        .basic_auth("wk_backend_0123456", Some(""))
        .header("user-agent", IPHONE)
        .json(&bare)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let synced = &srv.events("user_id=u8").await[0];
    assert!(synced["enrichment"]["ua"].get("os").is_none_or(Value::is_null), "{synced}");
    assert_eq!(srv.post("/v1/batch", Some("wk_live_0123456789"), &renewed("u9")).await.0, 200);
    let renewals = srv.events("user_id=u2").await;
    let backend = renewals.iter().find(|e| e["type"] == "subscription_renewed").unwrap();
    assert_eq!(backend["enrichment"]["ua"]["os"], "iOS", "{backend}");
    let client = &srv.events("user_id=u9").await[0];
    assert_ne!(client["enrichment"]["ua"]["os"], "iOS", "{client}");

    let deleted = srv.admin(reqwest::Method::POST, "/v1/user/delete", Some(json!({"user_id": "u2"}))).await;
    assert!(deleted["rows_deleted"].as_u64().unwrap() >= 2, "{deleted}");
    assert!(srv.events("user_id=u2").await.is_empty());
    // And a replay of the deleted person's batch is kept out.
    let (status, answer) = srv.post("/v1/batch", Some("wk_live_0123456789"), &bought).await;
    assert_eq!((status, answer["suppressed"].as_u64()), (200, Some(1)), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_device_clock_is_corrected_from_sent_at() {
    let srv = Srv::start(|_| {}).await;
    // The device's clock is two hours behind: it dated the event a minute before it sent it.
    let skew = -2 * 3_600_000;
    let msg = json!({"batch": [{"type": "track", "event": "Late Clock", "anonymousId": "a", "timestamp": now_iso(skew - 60_000)}],
                     "sentAt": now_iso(skew)});
    assert_eq!(srv.post("/v1/batch", Some("wk_live_0123456789"), &msg).await.0, 200);
    let e = &srv.events("anonymous_id=a").await[0];
    let corrected = chrono::DateTime::parse_from_rfc3339(e["corrected_timestamp"].as_str().unwrap()).unwrap();
    let off = trailmark_server::now_ms() - 60_000 - corrected.timestamp_millis();
    assert!(off.abs() < 30_000, "corrected to about a minute ago, {off} ms off: {e}");
}
