//! Tracking links and install attribution end to end over HTTP, on a manual clock.

use std::net::SocketAddr;

use serde_json::{Value, json};
use trailmark_core::protocol;
use trailmark_server::{Clock, ManualClock, ServerBuilder, ServerConfig};

mod common;

const ANDROID_UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A.240205.004) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";
const IPHONE_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
const DESKTOP_UA: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

struct Srv {
    base: String,
    clock: ManualClock,
    client: reqwest::Client,
    db: std::path::PathBuf,
    _dir: Option<tempfile::TempDir>,
}

fn config(clock: Clock) -> ServerConfig {
    let mut c = ServerConfig::new().with_app("app", "secret").with_network("applovin", "applovin-secret");
    c.admin_key = Some("test-admin-key-0123456789".into());
    c.clock = clock;
    c
}

async fn serve_config(config: ServerConfig, db: &std::path::Path) -> String {
    let (router, _tasks) = ServerBuilder::new(config).sqlite(db).unwrap().build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    base
}

async fn start(tune: impl FnOnce(&mut ServerConfig)) -> Srv {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let (clock, handle) = Clock::manual(trailmark_server::now_ms());
    let mut c = config(clock);
    tune(&mut c);
    let base = serve_config(c, &db).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    Srv { base, clock: handle, client, db, _dir: Some(dir) }
}

impl Srv {
    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req =
            self.client.request(method, format!("{}{path}", self.base)).bearer_auth("test-admin-key-0123456789");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn link(&self, network: &str) -> (String, String, String) {
        let (s, c) = self
            .admin(reqwest::Method::POST, "/v1/campaigns", Some(json!({"name": "Spring", "network": network})))
            .await;
        assert_eq!(s, 201, "{c}");
        let campaign = c["campaign_id"].as_str().unwrap().to_owned();
        let (s, l) = self
            .admin(
                reqwest::Method::POST,
                "/v1/links",
                Some(json!({
                    "campaign_id": campaign,
                    "utm": {"source": network, "medium": "cpc", "campaign": "spring"},
                    "destinations": {
                        "ios": "https://apps.apple.com/app/id123456",
                        "android": "https://play.google.com/store/apps/details?id=com.example.shop",
                        "web": "https://shop.example.com/landing?x=1"
                    },
                    "deep_link": {"path": "/product/42", "params": {"coupon": "SPRING"}}
                })),
            )
            .await;
        assert_eq!(s, 201, "{l}");
        assert_eq!(l["url"], format!("/c/{}", l["code"].as_str().unwrap()));
        (campaign, l["link_id"].as_str().unwrap().to_owned(), l["code"].as_str().unwrap().to_owned())
    }

    async fn click(&self, path: &str, ua: &str, headers: &[(&str, &str)]) -> reqwest::Response {
        let mut req = self.client.get(format!("{}{path}", self.base)).header("User-Agent", ua);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    fn signed(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> reqwest::RequestBuilder {
        self.signed_at(path, body, headers, self.clock.now() / 1000)
    }

    /// Signed with the sender's clock at `ts` (Unix seconds).
    fn signed_at(&self, path: &str, body: &Value, headers: &[(&str, &str)], ts: i64) -> reqwest::RequestBuilder {
        let body = serde_json::to_vec(body).unwrap();
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header(protocol::HEADER_APP, "app")
            .header(protocol::HEADER_TIMESTAMP, ts.to_string())
            .header(protocol::HEADER_SIGNATURE, protocol::sign(b"secret", ts, &body));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(body)
    }

    /// Signed by ad network `network` with its own secret (`<network>-secret`).
    fn network_signed(&self, network: &str, path: &str, body: &Value) -> reqwest::RequestBuilder {
        let ts = self.clock.now() / 1000;
        let body = serde_json::to_vec(body).unwrap();
        let secret = format!("{network}-secret");
        self.client
            .post(format!("{}{path}", self.base))
            .header(protocol::HEADER_NETWORK, network)
            .header(protocol::HEADER_TIMESTAMP, ts.to_string())
            .header(protocol::HEADER_SIGNATURE, protocol::sign(secret.as_bytes(), ts, &body))
            .body(body)
    }

    async fn install(&self, body: Value, headers: &[(&str, &str)]) -> Value {
        let resp = self.signed("/v1/install", &body, headers).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
        resp.json().await.unwrap()
    }

    fn install_body(&self, platform: &str, device: Value) -> Value {
        json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "anonymous_id": format!("anon-{}", uuid::Uuid::new_v4()),
            "timestamp": protocol::format_millis(self.clock.now()),
            "platform": platform,
            "device": device,
        })
    }
}

fn location(resp: &reqwest::Response) -> url::Url {
    assert_eq!(resp.status(), 302);
    url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap()
}

fn query(url: &url::Url, key: &str) -> Option<String> {
    url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn android_click_to_install_via_play_referrer_with_deferred_deep_link() {
    let srv = start(|_| {}).await;
    let (campaign, link, code) = srv.link("meta").await;
    let resp = srv.click(&format!("/c/{code}?gclid=G-1&sub1=creative7"), ANDROID_UA, &[]).await;
    let to = location(&resp);
    assert_eq!(to.host_str(), Some("play.google.com"));
    assert_eq!(query(&to, "id").as_deref(), Some("com.example.shop"));
    let referrer = query(&to, "referrer").expect("referrer parameter");
    let inner: Vec<(String, String)> = url::form_urlencoded::parse(referrer.as_bytes()).into_owned().collect();
    let click_id = inner.iter().find(|(k, _)| k == "tm_click_id").map(|(_, v)| v.clone()).unwrap();
    assert!(inner.contains(&("utm_source".into(), "meta".into())), "{inner:?}");
    assert!(inner.contains(&("utm_campaign".into(), "spring".into())), "{inner:?}");

    srv.clock.advance(3 * MINUTE);
    let mut body = srv.install_body("android", json!({"gaid": "5f1c0f3e-aaaa-4bbb-8ccc-123456789abc", "os": "Android", "os_version": "14", "model": "Pixel 8"}));
    body["install_referrer"] = json!(referrer);
    body["install_begin_ts"] = json!(srv.clock.now() - MINUTE);
    let event_id = body["event_id"].as_str().unwrap().to_owned();
    let result = srv.install(body.clone(), &[]).await;
    assert_eq!(result["attributed"], true, "{result}");
    assert_eq!(result["match_type"], "referrer");
    assert_eq!(result["confidence"], 1.0);
    assert_eq!(result["campaign_id"], campaign);
    assert_eq!(result["link_id"], link);
    assert_eq!(result["click_id"], click_id);
    assert_eq!(result["network"], "meta");
    assert_eq!(result["deep_link"], json!({"path": "/product/42", "params": {"coupon": "SPRING"}}));
    assert_eq!(result["fraud"], json!({"flags": [], "rejected": false}));

    // A retry of the same install gets the same answer.
    assert_eq!(srv.install(body, &[]).await, result);

    // The decision is explained.
    let (s, audit) = srv.admin(reqwest::Method::GET, &format!("/v1/attribution/{event_id}"), None).await;
    assert_eq!(s, 200, "{audit}");
    assert_eq!(audit["result"], result);
    let candidates = audit["audit"]["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 1);
    assert_eq!(candidates[0]["match_type"], "referrer");
    assert_eq!(candidates[0]["chosen"], true);
    assert_eq!(audit["audit"]["windows_ms"]["click"], 7 * DAY);
    assert_eq!(audit["audit"]["fraud_rules"]["click_injection"]["min_click_to_install_ms"], 10_000);

    // The click row holds what the issue lists.
    let conn = rusqlite::Connection::open(&srv.db).unwrap();
    let (os, model, ids, subs): (String, String, String, String) = conn
        .query_row("SELECT os, model, network_ids, sub_params FROM clicks WHERE click_id = ?1", [&click_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .unwrap();
    assert_eq!((os.as_str(), model.as_str()), ("Android", "Pixel 8"));
    assert_eq!(ids, r#"{"gclid":"G-1"}"#);
    assert_eq!(subs, r#"{"sub1":"creative7"}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ios_click_to_install_via_fingerprint_behind_a_trusted_proxy() {
    let srv = start(|c| c.trust_proxy = true).await;
    let (campaign, _, code) = srv.link("tiktok").await;
    let xff = [("X-Forwarded-For", "10.9.9.9, 203.0.113.77"), ("Accept-Language", "en-US,en;q=0.9")];
    let to = location(&srv.click(&format!("/c/{code}"), IPHONE_UA, &xff).await);
    assert_eq!(to.as_str(), "https://apps.apple.com/app/id123456", "the App Store URL as configured");
    // Someone else on the same network clicked too, from Android: never an iOS match.
    srv.click(&format!("/c/{code}"), ANDROID_UA, &[("X-Forwarded-For", "203.0.113.78")]).await;

    srv.clock.advance(20 * MINUTE);
    // Without an IDFA (tracking not allowed under ATT) an iPhone is not fingerprinted by default.
    let no_att = srv.install_body("ios", json!({"idfv": "AAAA-CCCC", "os": "iOS", "os_version": "17.1.1", "model": "iPhone15,2", "locale": "en_US", "timezone": "America/New_York"}));
    let result = srv.install(no_att.clone(), &[("X-Forwarded-For", "203.0.113.77")]).await;
    assert_eq!(result["match_type"], "organic", "{result}");
    let path = format!("/v1/attribution/{}", no_att["event_id"].as_str().unwrap());
    let (_, audit) = srv.admin(reqwest::Method::GET, &path, None).await;
    assert_eq!(
        audit["audit"]["signals"]["fingerprinting"],
        "not used: iOS without tracking permission (fingerprint_ios_without_att is off)",
        "{audit}"
    );
    let body = srv.install_body("ios", json!({"idfa": "6D92078A-8246-4BA4-AE5B-76104861E7DC", "idfv": "AAAA-BBBB", "os": "iOS", "os_version": "17.1.1", "model": "iPhone15,2", "locale": "en_US", "timezone": "America/New_York"}));
    let result = srv.install(body.clone(), &[("X-Forwarded-For", "203.0.113.77")]).await;
    assert_eq!(result["match_type"], "fingerprint", "{result}");
    assert_eq!(result["campaign_id"], campaign);
    let confidence = result["confidence"].as_f64().unwrap();
    assert!((0.6..1.0).contains(&confidence), "{confidence}");

    // Without the proxy header the install comes from 127.0.0.1: no fingerprint match.
    let other = srv.install_body("ios", json!({"os": "iOS", "os_version": "17.1", "locale": "en_US"}));
    let result = srv.install(other, &[]).await;
    assert_eq!(result["match_type"], "organic", "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impression_then_install_is_view_through() {
    let srv = start(|_| {}).await;
    let (_, link, _) = srv.link("unity").await;
    let resp = srv
        .click(&format!("/v1/impression?link={link}&idfa=6D92078A-8246-4BA4-AE5B-76104861E7DC"), IPHONE_UA, &[])
        .await;
    assert_eq!(resp.status(), 204);
    srv.clock.advance(5 * HOUR);
    let body = srv.install_body("ios", json!({"idfa": "6d92078a-8246-4ba4-ae5b-76104861e7dc", "os": "iOS"}));
    let result = srv.install(body, &[]).await;
    assert_eq!(result["match_type"], "view_through", "{result}");
    assert_eq!(result["link_id"], link);

    // 25 hours after an impression: organic.
    srv.click(&format!("/v1/impression?link={link}&idfa=11111111-2222-3333-4444-555555555555"), IPHONE_UA, &[]).await;
    srv.clock.advance(25 * HOUR);
    let body = srv.install_body("ios", json!({"idfa": "11111111-2222-3333-4444-555555555555"}));
    assert_eq!(srv.install(body, &[]).await["match_type"], "organic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_id_match_inside_the_window_and_organic_after_it() {
    let srv = start(|_| {}).await;
    let (_, _, code) = srv.link("google").await;
    srv.click(&format!("/c/{code}?gaid=38400000-8cf0-11bd-b23e-10b96e40000d"), ANDROID_UA, &[]).await;
    srv.click(&format!("/c/{code}?gaid=38400000-8cf0-11bd-b23e-10b96e40000e"), ANDROID_UA, &[]).await;
    srv.clock.advance(6 * DAY);
    let body = srv.install_body("android", json!({"gaid": "38400000-8CF0-11BD-B23E-10B96E40000D"}));
    assert_eq!(srv.install(body, &[]).await["match_type"], "device_id");
    srv.clock.advance(2 * DAY);
    let body = srv.install_body("android", json!({"gaid": "38400000-8cf0-11bd-b23e-10b96e40000e"}));
    let result = srv.install(body, &[]).await;
    assert_eq!(result["match_type"], "organic", "8 days after the click: {result}");
    assert_eq!(result["attributed"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn click_injection_is_rejected_with_its_reason() {
    let srv = start(|_| {}).await;
    let (campaign, _, code) = srv.link("shady").await;
    let to = location(&srv.click(&format!("/c/{code}"), ANDROID_UA, &[]).await);
    let referrer = query(&to, "referrer").unwrap();
    srv.clock.advance(4_000);
    let mut body = srv.install_body("android", json!({}));
    body["install_referrer"] = json!(referrer);
    let event_id = body["event_id"].as_str().unwrap().to_owned();
    let result = srv.install(body, &[]).await;
    assert_eq!(result["attributed"], false, "{result}");
    assert_eq!(result["match_type"], "organic");
    assert_eq!(result["fraud"], json!({"flags": ["click_injection"], "rejected": true}));
    let (_, audit) = srv.admin(reqwest::Method::GET, &format!("/v1/attribution/{event_id}"), None).await;
    let rule = &audit["audit"]["rules_fired"][0];
    assert_eq!(rule["rule"], "click_injection");
    assert_eq!(rule["policy"], "reject");
    assert!(rule["detail"].as_str().unwrap().contains("4000 ms < 10000 ms"), "{rule}");
    assert_eq!(audit["audit"]["choice"], "organic: rejected by fraud rules");

    // Install begun before the click (the Play referrer's install_begin_ts): rejected too.
    let to = location(&srv.click(&format!("/c/{code}"), ANDROID_UA, &[]).await);
    srv.clock.advance(HOUR);
    let mut body = srv.install_body("android", json!({}));
    body["install_referrer"] = json!(query(&to, "referrer").unwrap());
    body["install_begin_ts"] = json!(srv.clock.now() - 2 * HOUR);
    let result = srv.install(body, &[]).await;
    assert_eq!(result["fraud"]["rejected"], true, "{result}");

    // The answers stay organic, but reports count both rejections against the campaign they
    // came through: its rejected installs, its page's rules, the trend's `rejected` series.
    let (_, report) = srv.admin(reqwest::Method::GET, "/v1/reports/campaigns", None).await;
    let row = report["campaigns"].as_array().unwrap().iter().find(|c| c["campaign_id"] == campaign.as_str()).unwrap();
    assert_eq!((&row["installs"], &row["rejected_installs"]), (&json!(0), &json!(2)), "{row}");
    let (_, page) = srv.admin(reqwest::Method::GET, &format!("/v1/reports/campaigns/{campaign}"), None).await;
    assert_eq!(page["rejections"], json!([{"rule": "click_injection", "installs": 2}]), "{page}");
    assert_eq!(page["links"][0]["rejected_installs"], 2, "{page}");
    let (_, trend) = srv.admin(reqwest::Method::GET, &format!("/v1/reports/trends?campaign_id={campaign}"), None).await;
    let rejected = trend["installs"].as_array().unwrap().iter().find(|s| s["key"] == "rejected").unwrap();
    assert_eq!(rejected["total"], 2, "{trend}");
    let (_, lookup) =
        srv.admin(reqwest::Method::GET, &format!("/v1/attribution/lookup?event_id={event_id}"), None).await;
    assert_eq!(lookup["install"]["result"]["campaign_id"], Value::Null, "the answer stays organic: {lookup}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn click_flooding_is_flagged() {
    let srv = start(|c| c.attribution.fraud.max_clicks_per_ip_hour = 3).await;
    let (_, _, code) = srv.link("floody").await;
    let mut last = None;
    for _ in 0..5 {
        last = Some(location(&srv.click(&format!("/c/{code}"), DESKTOP_UA, &[]).await));
    }
    let click_id = query(&last.unwrap(), "tm_click_id").unwrap();
    srv.clock.advance(HOUR);
    let mut body = srv.install_body("web", json!({}));
    body["click_id"] = json!(click_id);
    let result = srv.install(body, &[]).await;
    assert_eq!(result["match_type"], "click_id");
    assert_eq!(result["attributed"], true, "flag is not reject");
    assert_eq!(result["fraud"], json!({"flags": ["click_flooding"], "rejected": false}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulators_are_rejected_and_bursts_alert() {
    let srv = start(|c| {
        c.attribution.fraud.burst_min_installs = 2;
        c.attribution.fraud.burst_factor = 1.0;
    })
    .await;
    let (campaign, _, code) = srv.link("bursty").await;
    for i in 0..4 {
        srv.click(&format!("/c/{code}?gaid=00000000-0000-4000-8000-00000000000{i}"), ANDROID_UA, &[]).await;
    }
    srv.clock.advance(MINUTE);
    let body = srv.install_body(
        "android",
        json!({"gaid": "00000000-0000-4000-8000-000000000000", "model": "sdk_gphone64_x86_64"}),
    );
    let result = srv.install(body, &[]).await;
    assert_eq!(result["fraud"], json!({"flags": ["emulator"], "rejected": true}), "{result}");
    let mut flags = Vec::new();
    for i in 1..4 {
        let body = srv.install_body("android", json!({"gaid": format!("00000000-0000-4000-8000-00000000000{i}")}));
        flags.push(srv.install(body, &[]).await["fraud"]["flags"].clone());
    }
    assert_eq!(flags, vec![json!([]), json!([]), json!(["install_burst"])]);
    let conn = rusqlite::Connection::open(&srv.db).unwrap();
    let (rule, alerted): (String, String) =
        conn.query_row("SELECT rule, campaign_id FROM fraud_alerts", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert_eq!((rule.as_str(), alerted.as_str()), ("install_burst", campaign.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_query_strings_never_leave_the_links_destinations() {
    let srv = start(|_| {}).await;
    let (_, _, code) = srv.link("meta").await;
    let evil = [
        "?url=https://evil.example/",
        "?redirect=https%3A%2F%2Fevil.example&destination=https://evil.example&next=//evil.example",
        "?tm_click_id=x&referrer=https://evil.example/&utm_source=x%26tm_click_id%3Devil",
        "?web=javascript:alert(1)&ios=https://evil.example&android=https://evil.example",
        "?%0d%0aLocation:%20https://evil.example",
    ];
    for q in evil {
        for (ua, host) in
            [(ANDROID_UA, "play.google.com"), (IPHONE_UA, "apps.apple.com"), (DESKTOP_UA, "shop.example.com")]
        {
            let resp = srv.click(&format!("/c/{code}{q}"), ua, &[]).await;
            let to = location(&resp);
            assert_eq!(to.host_str(), Some(host), "{q}");
            assert!(!to.as_str().contains("evil"), "{to}");
            if host == "play.google.com" {
                let referrer = query(&to, "referrer").unwrap();
                let inner: Vec<(String, String)> =
                    url::form_urlencoded::parse(referrer.as_bytes()).into_owned().collect();
                assert_eq!(inner.iter().filter(|(k, _)| k == "tm_click_id").count(), 1, "{inner:?}");
                assert!(inner.iter().all(|(_, v)| !v.contains("evil")), "{inner:?}");
            }
        }
    }
    // Unknown codes and path tricks: 404, never a redirect.
    for path in ["/c/nope", "/c/..%2F..%2Fevil", &format!("/c/{code}x")] {
        assert_eq!(srv.click(path, DESKTOP_UA, &[]).await.status(), 404, "{path}");
    }
    // Destinations themselves are validated.
    let (_, c) = srv.admin(reqwest::Method::POST, "/v1/campaigns", Some(json!({"name": "x", "network": "y"}))).await;
    let (s, e) = srv
        .admin(
            reqwest::Method::POST,
            "/v1/links",
            Some(json!({"campaign_id": c["campaign_id"], "destinations": {"web": "javascript:alert(1)"}})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(e["error"]["code"], "invalid_destination");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_changes_are_audited_and_disabled_links_404() {
    let srv = start(|_| {}).await;
    let (_, link, code) = srv.link("meta").await;
    let (s, changed) = srv
        .admin(
            reqwest::Method::PATCH,
            &format!("/v1/links/{link}"),
            Some(json!({"destinations": {"web": "https://shop.example.com/new"}})),
        )
        .await;
    assert_eq!(s, 200, "{changed}");
    let to = location(&srv.click(&format!("/c/{code}"), DESKTOP_UA, &[]).await);
    assert_eq!(to.path(), "/new");
    let (s, changed) =
        srv.admin(reqwest::Method::PATCH, &format!("/v1/links/{link}"), Some(json!({"deep_link": null}))).await;
    assert_eq!(s, 200, "{changed}");
    assert_eq!(changed["deep_link"], Value::Null, "null removes the deep link");
    let (s, _) = srv.admin(reqwest::Method::PATCH, &format!("/v1/links/{link}"), Some(json!({"enabled": false}))).await;
    assert_eq!(s, 200);
    assert_eq!(srv.click(&format!("/c/{code}"), DESKTOP_UA, &[]).await.status(), 404);
    assert_eq!(srv.click(&format!("/v1/click?link={link}"), DESKTOP_UA, &[]).await.status(), 404);
    let (s, audit) = srv.admin(reqwest::Method::GET, &format!("/v1/links/{link}/audit"), None).await;
    assert_eq!(s, 200);
    let actions: Vec<&str> =
        audit["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["create", "update", "update", "disable"]);
    assert!(audit["entries"][1]["after"]["deep_link"].is_object());
    assert_eq!(audit["entries"][2]["after"]["deep_link"], Value::Null);
    assert_eq!(audit["entries"][1]["before"]["destinations"]["web"], "https://shop.example.com/landing?x=1");
    assert_eq!(audit["entries"][1]["after"]["destinations"]["web"], "https://shop.example.com/new");
    assert_eq!(audit["entries"][0]["actor"], "admin-key");
    // Without admin credentials: 401.
    let resp = srv.client.get(format!("{}/v1/links/{link}/audit", srv.base)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_are_redirected_but_never_counted() {
    let srv = start(|_| {}).await;
    let (_, _, code) = srv.link("meta").await;
    for ua in
        ["Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "facebookexternalhit/1.1", ""]
    {
        let to = location(&srv.click(&format!("/c/{code}"), ua, &[]).await);
        assert_eq!(to.host_str(), Some("shop.example.com"));
        assert_eq!(query(&to, "tm_click_id"), None, "no click id for a bot");
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let conn = rusqlite::Connection::open(&srv.db).unwrap();
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM clicks", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_to_server_clicks_and_reinstalls() {
    let srv = start(|_| {}).await;
    let (_, link, _) = srv.link("applovin").await;
    let click = json!({"link_id": link, "ip": "198.51.100.20", "user_agent": ANDROID_UA,
        "device": {"gaid": "aaaaaaaa-1111-4222-8333-bbbbbbbbbbbb"}, "network_ids": {"clickid": "net-77"}});
    let resp = srv.network_signed("applovin", "/v1/click", &click).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let click_id = resp.json::<Value>().await.unwrap()["click_id"].as_str().unwrap().to_owned();
    // Unknown link, bad address: 4xx with a message.
    let resp = srv.network_signed("applovin", "/v1/click", &json!({"link_id": "lnk_nope"})).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp =
        srv.network_signed("applovin", "/v1/click", &json!({"link_id": link, "ip": "not-an-ip"})).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // The app's secret cannot report clicks.
    let resp = srv.signed("/v1/click", &click, &[]).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    srv.clock.advance(HOUR);
    let body = srv.install_body("android", json!({"gaid": "AAAAAAAA-1111-4222-8333-BBBBBBBBBBBB"}));
    let first = srv.install(body.clone(), &[]).await;
    assert_eq!(first["match_type"], "device_id");
    assert_eq!(first["click_id"], click_id);

    // The same device installs again 30 days later: a reinstall, with the original attribution.
    srv.clock.advance(30 * DAY);
    let mut again = body.clone();
    again["event_id"] = json!(uuid::Uuid::new_v4().to_string());
    again["timestamp"] = json!(protocol::format_millis(srv.clock.now()));
    let second = srv.install(again, &[]).await;
    assert_eq!(second["reinstall"], true, "{second}");
    assert_eq!(second["click_id"], click_id);
    // After the 90-day re-attribution window it is a new install (organic here).
    srv.clock.advance(91 * DAY);
    let mut late = body.clone();
    late["event_id"] = json!(uuid::Uuid::new_v4().to_string());
    late["timestamp"] = json!(protocol::format_millis(srv.clock.now()));
    let third = srv.install(late, &[]).await;
    assert_eq!(third["reinstall"], false);
    assert_eq!(third["match_type"], "organic");
    // One day after that new install: a reinstall again (measured from the latest counted
    // install, not the first one).
    srv.clock.advance(DAY);
    let mut fourth = body.clone();
    fourth["event_id"] = json!(uuid::Uuid::new_v4().to_string());
    fourth["timestamp"] = json!(protocol::format_millis(srv.clock.now()));
    let fourth = srv.install(fourth, &[]).await;
    assert_eq!(fourth["reinstall"], true, "{fourth}");
    assert_eq!(fourth["match_type"], "organic", "the attribution of the install it repeats");

    // A network's S2S click without a user agent still counts.
    let resp = srv
        .network_signed("applovin", "/v1/click", &json!({"link_id": link, "device": {"idfa": "X-1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let start_ms = trailmark_server::now_ms();
    let ip_key = [9u8; 32];
    let (clock, handle) = Clock::manual(start_ms);
    let mut c = config(clock);
    c.ip_key = ip_key;
    c.trust_proxy = true;
    let base = serve_config(c, &db).await;
    let srv = Srv {
        base,
        clock: handle,
        client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
        db: db.clone(),
        _dir: None,
    };
    let (_, _, code) = srv.link("meta").await;
    let to = location(&srv.click(&format!("/c/{code}"), DESKTOP_UA, &[]).await);
    let click_id = query(&to, "tm_click_id").unwrap();
    srv.click(&format!("/c/{code}"), IPHONE_UA, &[("X-Forwarded-For", "203.0.113.9"), ("Accept-Language", "de-DE")])
        .await;
    // Clicks are written behind the redirect; wait until both rows are committed.
    let conn = rusqlite::Connection::open(&db).unwrap();
    for _ in 0..1000 {
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM clicks", [], |r| r.get(0)).unwrap();
        if n == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM clicks", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 2, "both clicks committed within 20 s");

    // A second server on the same database (same keys) has the clicks in its index.
    let (clock, handle) = Clock::manual(start_ms + HOUR);
    let mut c = config(clock);
    c.ip_key = ip_key;
    c.trust_proxy = true;
    let restarted = Srv { base: serve_config(c, &db).await, clock: handle, ..srv };
    let mut body = restarted.install_body("web", json!({}));
    body["click_id"] = json!(click_id);
    assert_eq!(restarted.install(body, &[]).await["match_type"], "click_id");
    // The fingerprint survives too: the stored address is decrypted on reload.
    let body = restarted.install_body(
        "ios",
        json!({"idfa": "1E2DFA89-496A-47FD-9941-DF1FC4E6484A", "os": "iOS", "os_version": "17.1", "locale": "de_DE"}),
    );
    let result = restarted.install(body, &[("X-Forwarded-For", "203.0.113.9")]).await;
    assert_eq!(result["match_type"], "fingerprint", "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_install_requests_get_clear_errors() {
    let srv = start(|_| {}).await;
    for (body, needle) in [
        (
            json!({"event_id": "not-a-uuid", "anonymous_id": "a", "timestamp": "2026-01-01T00:00:00Z", "platform": "ios"}),
            "UUID",
        ),
        (
            json!({"event_id": uuid::Uuid::new_v4(), "anonymous_id": "a", "timestamp": "2026-01-01T00:00:00Z", "platform": "symbian"}),
            "unknown variant",
        ),
        (
            json!({"event_id": uuid::Uuid::new_v4(), "anonymous_id": "", "timestamp": "2026-01-01T00:00:00Z", "platform": "ios"}),
            "anonymous_id",
        ),
        (
            json!({"event_id": uuid::Uuid::new_v4(), "anonymous_id": "a", "timestamp": "2026-01-01T00:00:00Z", "platform": "ios", "extra": 1}),
            "unknown field",
        ),
        (
            json!({"event_id": uuid::Uuid::new_v4(), "anonymous_id": "a", "timestamp": "2026-01-01T00:00:00Z", "platform": "ios", "device": {"idfa": "x".repeat(300)}}),
            "device.idfa",
        ),
    ] {
        let resp = srv.signed("/v1/install", &body, &[]).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let e: Value = resp.json().await.unwrap();
        assert!(e["error"]["message"].as_str().unwrap().contains(needle), "{e}");
    }
    // Unsigned: 401.
    let resp = srv.client.post(format!("{}/v1/install", srv.base)).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

impl Srv {
    async fn event(&self, event: Value) {
        let resp = self.signed("/v1/event", &event, &[]).send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(status == 200 && body["accepted"] == 1, "{status} {body}");
    }

    fn event_body(&self, kind: &str, anon: &str, user: Option<&str>, click: Option<&str>, props: Value) -> Value {
        let mut e = json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "type": kind,
            "timestamp": protocol::format_millis(self.clock.now()),
            "anonymous_id": anon,
            "properties": props,
        });
        if let Some(u) = user {
            e["user_id"] = json!(u);
        }
        if let Some(c) = click {
            e["context"] = json!({"campaign": {"click_id": c}});
        }
        e
    }

    async fn web_click(&self, code: &str, query_string: &str) -> String {
        let to = location(&self.click(&format!("/c/{code}{query_string}"), DESKTOP_UA, &[]).await);
        query(&to, "tm_click_id").unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversions_credit_cross_device_touchpoints_under_four_models_then_delete_purges_it_all() {
    let srv = start(|_| {}).await;
    let t0 = srv.clock.now();
    let (_, _, alpha) = srv.link("alpha").await;
    let (_, _, beta) = srv.link("beta").await;
    let (_, _, gamma) = srv.link("gamma").await;

    // Day 0: a click on alpha, then the app install on device A, matched by click id.
    let c1 = srv.web_click(&alpha, "").await;
    srv.clock.advance(MINUTE);
    let mut install = srv.install_body("ios", json!({"idfv": "DEVICE-A"}));
    install["anonymous_id"] = json!("anon-a");
    install["click_id"] = json!(c1);
    assert_eq!(srv.install(install, &[]).await["match_type"], "click_id");
    srv.event(srv.event_body("login", "anon-a", Some("u1"), None, json!({}))).await;

    // Day 7: the same user on the web (device B) lands from beta.
    srv.clock.set(t0 + 7 * DAY);
    let c2 = srv.web_click(&beta, "").await;
    srv.event(srv.event_body("page_view", "anon-b", Some("u1"), Some(&c2), json!({}))).await;

    // Day 14: device A, idle for two weeks, opens the app through a gamma link: a re-engagement.
    srv.clock.set(t0 + 14 * DAY);
    let c3 = srv.web_click(&gamma, "").await;
    let open = srv.event_body("deep_link_opened", "anon-a", Some("u1"), Some(&c3), json!({"url": "shop://x"}));
    let open_id = open["event_id"].as_str().unwrap().to_owned();
    srv.event(open).await;
    // ... and buys.
    let purchase = srv.event_body("purchase", "anon-a", Some("u1"), None, json!({"revenue": 70.0, "currency": "EUR"}));
    let purchase_id = purchase["event_id"].as_str().unwrap().to_owned();
    srv.event(purchase.clone()).await;
    // A retried request does not credit twice.
    let resp = srv.signed("/v1/event", &purchase, &[]).send().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(resp["duplicates"], 1);

    let conn = rusqlite::Connection::open(&srv.db).unwrap();
    let (click, inactive): (String, i64) = conn
        .query_row("SELECT click_id, inactive_ms FROM reengagements WHERE event_id = ?1", [&open_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(click, c3);
    assert_eq!(inactive, 14 * DAY - MINUTE);

    let mut stmt = conn
        .prepare(
            "SELECT model, click_id, credit, revenue FROM conversions WHERE event_id = ?1 ORDER BY model, touch_ts",
        )
        .unwrap();
    let rows: Vec<(String, String, f64, f64)> = stmt
        .query_map([&purchase_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<(&str, &str, f64)> = vec![
        ("first_touch", &c1, 1.0),
        ("last_touch", &c3, 1.0),
        ("linear", &c1, 1.0 / 3.0),
        ("linear", &c2, 1.0 / 3.0),
        ("linear", &c3, 1.0 / 3.0),
        ("time_decay", &c1, 1.0 / 7.0),
        ("time_decay", &c2, 2.0 / 7.0),
        ("time_decay", &c3, 4.0 / 7.0),
    ];
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    for ((model, click, credit, revenue), (m, c, want)) in rows.iter().zip(&expected) {
        assert_eq!((model.as_str(), click.as_str()), (*m, *c));
        assert!((credit - want).abs() < 1e-12, "{model} {credit} != {want}");
        assert!((revenue - 70.0 * want).abs() < 1e-9, "{model} revenue {revenue}");
    }

    // Deleting the user removes the installs, clicks, touchpoints, re-engagements and
    // conversions of both devices, and the index forgets the clicks.
    let (s, receipt) = srv.admin(reqwest::Method::POST, "/v1/user/delete", Some(json!({"user_id": "u1"}))).await;
    assert_eq!(s, 200, "{receipt}");
    for (table, column, value) in [
        ("installs", "anonymous_id", "anon-a"),
        ("touchpoints", "anonymous_id", "anon-a"),
        ("touchpoints", "anonymous_id", "anon-b"),
        ("reengagements", "anonymous_id", "anon-a"),
        ("conversions", "user_id", "u1"),
        ("events", "user_id", "u1"),
    ] {
        let n: i64 = conn
            .query_row(&format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?1"), [value], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "{table} still holds {value}");
    }
    for c in [&c1, &c2, &c3] {
        let n: i64 = conn.query_row("SELECT COUNT(*) FROM clicks WHERE click_id = ?1", [c], |r| r.get(0)).unwrap();
        assert_eq!(n, 0, "click {c} survived");
    }
    let mut body = srv.install_body("web", json!({}));
    body["click_id"] = json!(c3);
    assert_eq!(srv.install(body, &[]).await["match_type"], "organic", "the index forgot the click");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recent_user_opening_a_link_is_not_a_reengagement() {
    let srv = start(|_| {}).await;
    let (_, _, code) = srv.link("alpha").await;
    let c1 = srv.web_click(&code, "").await;
    srv.clock.advance(MINUTE);
    let mut install = srv.install_body("ios", json!({}));
    install["anonymous_id"] = json!("anon-r");
    install["click_id"] = json!(c1);
    srv.install(install, &[]).await;
    srv.clock.advance(2 * DAY);
    let c2 = srv.web_click(&code, "").await;
    srv.event(srv.event_body("deep_link_opened", "anon-r", None, Some(&c2), json!({"url": "shop://x"}))).await;
    let conn = rusqlite::Connection::open(&srv.db).unwrap();
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM reengagements", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0, "active two days ago: inside the 7-day inactivity window");
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM touchpoints WHERE click_id = ?1", [&c2], |r| r.get(0)).unwrap();
    assert_eq!(n, 1, "still a touchpoint");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postbacks_are_retried_with_backoff_and_logged() {
    use std::sync::{Arc, Mutex};
    // A network endpoint that fails twice, then accepts; and one that is gone.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let hits = seen.clone();
    let app = axum::Router::new()
        .route(
            "/pb",
            axum::routing::get(move |uri: axum::http::Uri| {
                let hits = hits.clone();
                async move {
                    let mut h = hits.lock().unwrap();
                    h.push(uri.query().unwrap_or_default().to_owned());
                    if h.len() <= 2 {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::OK
                    }
                }
            }),
        )
        .route("/gone", axum::routing::get(|| async { axum::http::StatusCode::NOT_FOUND }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let network = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let srv = start(|c| {
        c.postbacks = vec![
            trailmark_server::domain::postbacks::PostbackConfig {
                network: "alpha".into(),
                url: format!(
                    "{network}/pb?click={{network_click_id}}&ev={{event}}&rev={{revenue}}&cur={{currency}}&s={{sub1}}"
                ),
                events: vec!["install".into(), "purchase".into()],
            },
            trailmark_server::domain::postbacks::PostbackConfig {
                network: "beta".into(),
                url: format!("{network}/gone?e={{event}}"),
                events: vec![],
            },
        ];
        c.postback_policy.min_delay = std::time::Duration::from_millis(10);
        c.postback_policy.max_delay = std::time::Duration::from_millis(40);
        // The app opts in to client revenue in postbacks (tested on its own below).
        c.apps.get_mut("app").unwrap().client_revenue_postbacks = true;
    })
    .await;
    let (_, _, alpha) = srv.link("alpha").await;
    let (_, _, beta) = srv.link("beta").await;
    let c1 = srv.web_click(&alpha, "?clickid=NET%201&sub1=pub-9").await;
    srv.clock.advance(MINUTE);
    let mut install = srv.install_body("web", json!({}));
    install["anonymous_id"] = json!("anon-p");
    install["click_id"] = json!(c1);
    srv.install(install, &[]).await;
    srv.event(srv.event_body("purchase", "anon-p", None, None, json!({"revenue": 9.99, "currency": "USD"}))).await;
    let c2 = srv.web_click(&beta, "").await;
    srv.clock.advance(MINUTE);
    let mut other = srv.install_body("web", json!({}));
    other["click_id"] = json!(c2);
    srv.install(other, &[]).await;

    let conn = rusqlite::Connection::open(&srv.db).unwrap();
    let mut states = Vec::new();
    for _ in 0..200 {
        let mut stmt = conn.prepare("SELECT network, event, state, attempts FROM postbacks ORDER BY id").unwrap();
        states = stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, i64>(3)?))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        if states.len() == 3 && states.iter().all(|s| s.2 != "pending") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let by = |event: &str, net: &str| states.iter().find(|s| s.1 == event && s.0 == net).cloned().unwrap();
    let install_pb = by("install", "alpha");
    let purchase_pb = by("purchase", "alpha");
    assert_eq!(install_pb.2, "delivered", "{states:?}");
    assert_eq!(purchase_pb.2, "delivered", "{states:?}");
    assert_eq!(install_pb.3 + purchase_pb.3, 4, "two failures, then both delivered: {states:?}");
    assert_eq!(by("install", "beta").2, "failed", "404 is permanent");
    assert_eq!(by("install", "beta").3, 1);
    let log: i64 = conn.query_row("SELECT COUNT(*) FROM postback_attempts", [], |r| r.get(0)).unwrap();
    assert_eq!(log, 5);
    let seen = seen.lock().unwrap().clone();
    assert!(seen.contains(&"click=NET+1&ev=install&rev=&cur=&s=pub-9".to_owned()), "{seen:?}");
    assert!(seen.contains(&"click=NET+1&ev=purchase&rev=9.99&cur=USD&s=pub-9".to_owned()), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_device_clock_is_corrected_by_the_signed_timestamp() {
    let srv = start(|_| {}).await;
    let (_, _, code) = srv.link("meta").await;
    let to = location(&srv.click(&format!("/c/{code}"), ANDROID_UA, &[]).await);
    let referrer = query(&to, "referrer").unwrap();
    srv.clock.advance(20_000);
    // The device clock is 30 s behind the server: it says it opened 10 s before the click.
    let device_now = srv.clock.now() - 30_000;
    let mut body = srv.install_body("android", json!({}));
    body["timestamp"] = json!(protocol::format_millis(device_now));
    body["install_referrer"] = json!(referrer);
    let result: Value =
        srv.signed_at("/v1/install", &body, &[], device_now / 1000).send().await.unwrap().json().await.unwrap();
    assert_eq!(result["match_type"], "referrer", "20 s after the click on the server's clock: {result}");
    assert_eq!(result["fraud"]["rejected"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_upper_case_device_id_removes_its_clicks_installs_and_credit() {
    let srv = start(|_| {}).await;
    let (_, _, code) = srv.link("meta").await;
    let idfa = "6D92078A-8246-4BA4-AE5B-76104861E7DC";
    let other = srv.web_click(&code, "").await;
    srv.click(&format!("/c/{code}?idfa={idfa}"), IPHONE_UA, &[]).await;
    srv.clock.advance(MINUTE);
    let mut install = srv.install_body("ios", json!({"idfa": idfa}));
    install["anonymous_id"] = json!("anon-d");
    assert_eq!(srv.install(install, &[]).await["match_type"], "device_id");
    srv.event(srv.event_body("purchase", "anon-d", None, None, json!({"revenue": 5.0, "currency": "EUR"}))).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let (s, receipt) = srv.admin(reqwest::Method::POST, "/v1/user/delete", Some(json!({"device_id": idfa}))).await;
    assert_eq!(s, 200, "{receipt}");
    let conn = rusqlite::Connection::open(&srv.db).unwrap();
    for (table, column) in [
        ("clicks", "device_id"),
        ("installs", "anonymous_id"),
        ("touchpoints", "anonymous_id"),
        ("conversions", "anonymous_id"),
        ("events", "anonymous_id"),
    ] {
        let value = if column == "device_id" { idfa.to_ascii_lowercase() } else { "anon-d".into() };
        let n: i64 = conn
            .query_row(&format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?1"), [&value], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0, "{table} still holds the device");
    }
    let n: i64 = conn.query_row("SELECT COUNT(*) FROM clicks WHERE click_id = ?1", [&other], |r| r.get(0)).unwrap();
    assert_eq!(n, 1, "someone else's click stays");
    // The index forgot the device's click too.
    let body = srv.install_body("ios", json!({"idfa": idfa}));
    assert_eq!(srv.install(body, &[]).await["match_type"], "organic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinstall_matched_by_advertising_id_alone_gets_no_one_elses_attribution() {
    let srv = start(|_| {}).await;
    let (_, link, _) = srv.link("applovin").await;
    let gaid = "cccccccc-1111-4222-8333-dddddddddddd";
    let click = json!({"link_id": link, "user_agent": ANDROID_UA, "device": {"gaid": gaid}});
    let resp = srv.network_signed("applovin", "/v1/click", &click).send().await.unwrap();
    assert_eq!(resp.status(), 201);
    let click_id = resp.json::<Value>().await.unwrap()["click_id"].as_str().unwrap().to_owned();
    srv.clock.advance(HOUR);

    // Device A installs: attributed, with the link's deep link.
    let a = srv.install_body("android", json!({"gaid": gaid, "android_id": "a1b2c3d4e5f60708"}));
    let first = srv.install(a.clone(), &[]).await;
    assert_eq!(
        (first["click_id"].as_str(), first["deep_link"]["params"]["coupon"].as_str()),
        (Some(&*click_id), Some("SPRING"))
    );

    // Someone else presents A's advertising id: still a reinstall (not a new install to pay
    // for), but nothing of A's answer.
    srv.clock.advance(MINUTE);
    let other = srv.install_body("android", json!({"gaid": gaid}));
    let answer = srv.install(other.clone(), &[]).await;
    assert_eq!(answer["reinstall"], true, "{answer}");
    assert_eq!(answer["attributed"], false, "{answer}");
    for field in ["click_id", "link_id", "campaign_id", "network", "deep_link"] {
        assert_eq!(answer[field], Value::Null, "{field}: {answer}");
    }
    // Its retry gets the same (empty) answer.
    assert_eq!(srv.install(other, &[]).await, answer);

    // Device A itself, reinstalled (new anonymous id, same Android id): its own attribution.
    let mut again = srv.install_body("android", json!({"gaid": gaid, "android_id": "A1B2C3D4E5F60708"}));
    again["anonymous_id"] = json!("anon-after-reinstall");
    let own = srv.install(again, &[]).await;
    assert_eq!((own["reinstall"].as_bool(), own["click_id"].as_str()), (Some(true), Some(&*click_id)), "{own}");

    // A's install retried by A: A's answer. A's event id from another device: refused.
    assert_eq!(srv.install(a.clone(), &[]).await["click_id"], click_id);
    let mut stolen = a.clone();
    stolen["anonymous_id"] = json!("anon-thief");
    stolen["device"] = json!({"gaid": gaid});
    let resp = srv.signed("/v1/install", &stolen, &[]).send().await.unwrap();
    assert_eq!(resp.status(), 409);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "event_id_conflict", "{body}");
    assert!(body.to_string().find(&click_id).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_kinds_and_network_keys_decide_who_may_send_what() {
    let srv = start(|c| {
        c.apps
            .insert("site".into(), trailmark_server::AppConfig::of_kind("site-secret", trailmark_server::AppKind::Web));
        c.networks.insert("other".into(), trailmark_server::NetworkConfig { secret: "other-secret".into() });
    })
    .await;
    let signed_as = |app: &str, secret: &str, path: &str, body: &Value| {
        let ts = srv.clock.now() / 1000;
        let body = serde_json::to_vec(body).unwrap();
        srv.client
            .post(format!("{}{path}", srv.base))
            .header(protocol::HEADER_APP, app)
            .header(protocol::HEADER_TIMESTAMP, ts.to_string())
            .header(protocol::HEADER_SIGNATURE, protocol::sign(secret.as_bytes(), ts, &body))
            .body(body)
    };
    // A web app posts no iOS or Android install; a web one is fine.
    for (platform, status) in [("ios", 403), ("android", 403), ("web", 200)] {
        let body = srv.install_body(platform, json!({}));
        let resp = signed_as("site", "site-secret", "/v1/install", &body).send().await.unwrap();
        assert_eq!(resp.status(), status, "{platform}");
        if status == 403 {
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "not_allowed_for_app_kind", "{body}");
        }
    }
    // The mobile app (no kind given) still posts mobile installs.
    srv.install(srv.install_body("ios", json!({"idfv": "E1D2C3B4-0000-4000-8000-000000000001"})), &[]).await;

    // Server-to-server clicks: only networks, each on its own links.
    let (s, c) = srv
        .admin(
            reqwest::Method::POST,
            "/v1/campaigns",
            Some(json!({"name": "S", "network": "applovin", "app_id": "app"})),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let (s, l) = srv
        .admin(
            reqwest::Method::POST,
            "/v1/links",
            Some(json!({"campaign_id": c["campaign_id"], "destinations": {"web": "https://shop.example.com/"}})),
        )
        .await;
    assert_eq!(s, 201, "{l}");
    let link = l["link_id"].as_str().unwrap().to_owned();
    let click = json!({"link_id": link, "device": {"gaid": "eeeeeeee-1111-4222-8333-ffffffffffff"}});
    let code = |resp: reqwest::Response| async move {
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().await.unwrap()["error"]["code"].as_str().unwrap_or_default().to_owned())
    };
    assert_eq!(code(srv.network_signed("applovin", "/v1/click", &click).send().await.unwrap()).await.0, 201);
    assert_eq!(
        code(srv.network_signed("other", "/v1/click", &click).send().await.unwrap()).await,
        (404, "not_found".to_owned()),
        "another network's link"
    );
    assert_eq!(
        code(srv.network_signed("nobody", "/v1/click", &click).send().await.unwrap()).await,
        (401, "unknown_network".to_owned())
    );
    assert_eq!(
        code(signed_as("site", "site-secret", "/v1/click", &click).send().await.unwrap()).await,
        (401, "missing_network".to_owned()),
        "an app's secret signs no click"
    );
    // A network's secret signs nothing else.
    let event = srv.event_body("app_open", "anon-n", None, None, json!({}));
    assert_eq!(signed_as("applovin", "applovin-secret", "/v1/event", &event).send().await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revenue_reaches_postbacks_only_from_trusted_senders_and_within_bounds() {
    let (network, seen) = common::receiver().await;

    // (app kind, opted in, sent with: 0 the app's secret, 1 its server secret, 2 a write key of
    // the Segment-compatible API; what the network sees)
    let cases = [
        (trailmark_server::AppKind::Mobile, false, 0, "o=ORDER&rev=&cur="),
        (trailmark_server::AppKind::Web, false, 0, "o=ORDER&rev=&cur="),
        (trailmark_server::AppKind::Mobile, true, 0, "o=ORDER&rev=9.99&cur=USD"),
        (trailmark_server::AppKind::Server, false, 0, "o=ORDER&rev=9.99&cur=USD"),
        (trailmark_server::AppKind::Mobile, false, 1, "o=ORDER&rev=9.99&cur=USD"),
        (trailmark_server::AppKind::Web, false, 2, "o=ORDER&rev=&cur="),
        (trailmark_server::AppKind::Server, false, 2, "o=ORDER&rev=9.99&cur=USD"),
    ];
    for (n, (kind, opt_in, sender, expected)) in cases.into_iter().enumerate() {
        let network = network.clone();
        let srv = start(move |c| {
            let app = c.apps.get_mut("app").unwrap();
            app.kind = kind;
            app.client_revenue_postbacks = opt_in;
            app.server_secret = Some("server-secret".into());
            app.write_keys = vec![trailmark_server::domain::config::WriteKey::new("wk_revenue_0123456789")];
            c.postbacks = vec![trailmark_server::domain::postbacks::PostbackConfig {
                network: "alpha".into(),
                url: format!("{network}/pb?o={{event}}{n}&rev={{revenue}}&cur={{currency}}"),
                events: vec!["purchase".into()],
            }];
        })
        .await;
        let (_, _, alpha) = srv.link("alpha").await;
        let click = srv.web_click(&alpha, "").await;
        let purchase = json!({"revenue": 9.99, "currency": "USD"});
        let event = srv.event_body("purchase", "anon-r", None, Some(&click), purchase);
        if sender == 2 {
            // A Segment SDK, with the app's write key.
            let message = json!({"type": "track", "event": "Order Completed", "anonymousId": "anon-r",
                                 "context": {"campaign": {"click_id": click}},
                                 "properties": {"revenue": 9.99, "currency": "USD"}});
            let resp = srv
                .client
                .post(format!("{}/v1/track", srv.base))
                .basic_auth("wk_revenue_0123456789", Some(""))
                .json(&message)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        } else if sender == 1 {
            // The app owner's backend, with the app's second secret.
            let ts = srv.clock.now() / 1000;
            let body = serde_json::to_vec(&event).unwrap();
            let resp = srv
                .client
                .post(format!("{}/v1/event", srv.base))
                .header(protocol::HEADER_APP, "app")
                .header(protocol::HEADER_TIMESTAMP, ts.to_string())
                .header(protocol::HEADER_SIGNATURE, protocol::sign(b"server-secret", ts, &body))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        } else {
            srv.event(event).await;
        }
        let want = expected.replace("ORDER", &format!("purchase{n}"));
        let mut found = false;
        for _ in 0..200 {
            if seen.lock().unwrap().iter().any(|q| q.starts_with(&format!("o=purchase{n}&"))) {
                found = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        assert!(found, "case {n}: no postback: {:?}", seen.lock().unwrap());
        assert!(seen.lock().unwrap().contains(&want), "case {n}: {want} not in {:?}", seen.lock().unwrap());

        // Revenue beyond the bound is refused, event by event, for every sender.
        if n == 0 {
            let too_much = srv.event_body("purchase", "anon-r", None, None, json!({"revenue": 1e8, "currency": "USD"}));
            let negative = srv.event_body("refund", "anon-r", None, None, json!({"revenue": -2e7}));
            let fine = srv.event_body("purchase", "anon-r", None, None, json!({"revenue": 1e7, "currency": "USD"}));
            let resp =
                srv.signed("/v1/event", &json!({"batch": [too_much, negative, fine]}), &[]).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["accepted"], 1, "{body}");
            let rejected: Vec<u64> =
                body["rejected"].as_array().unwrap().iter().map(|r| r["index"].as_u64().unwrap()).collect();
            assert_eq!(rejected, [0, 1], "{body}");
            assert!(body["rejected"][1]["reason"].as_str().unwrap().contains("revenue"), "{body}");
        }
    }
}

/// A stored postback: (network, state, attempts, last status, last error).
type PostbackRow = (String, String, i64, Option<i64>, Option<String>);
/// What a network endpoint received: (path, query pairs).
type Hit = (String, Vec<(String, String)>);

/// Serves `app` on a free loopback port, as a network's postback endpoint: its base URL.
async fn network_endpoint(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// An endpoint that counts the requests it gets and answers each with `answer()`: its base URL
/// and the count.
async fn counting_endpoint<F>(answer: fn() -> F) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>)
where
    F: std::future::Future<Output = axum::http::StatusCode> + Send + 'static,
{
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = count.clone();
    let app = axum::Router::new().fallback(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        answer()
    });
    (network_endpoint(app).await, count)
}

impl Srv {
    /// An install attributed to a fresh web click on `code` (with `query_string` on the click).
    async fn attributed_install(&self, code: &str, query_string: &str) {
        let click = self.web_click(code, query_string).await;
        self.clock.advance(MINUTE);
        let mut install = self.install_body("web", json!({}));
        install["click_id"] = json!(click);
        assert_eq!(self.install(install, &[]).await["match_type"], "click_id");
    }

    /// Every postback as (network, state, attempts, last status, last error), oldest first.
    fn postbacks(&self) -> Vec<PostbackRow> {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        let mut stmt = conn
            .prepare("SELECT network, state, attempts, last_status, last_error FROM postbacks ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Waits (up to 20 s) until `done` holds for the postbacks; returns them.
    async fn postbacks_until(&self, done: impl Fn(&[PostbackRow]) -> bool) -> Vec<PostbackRow> {
        for _ in 0..800 {
            let rows = self.postbacks();
            if done(&rows) {
                return rows;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        self.postbacks()
    }
}

fn postback(network: &str, url: String) -> trailmark_server::domain::postbacks::PostbackConfig {
    trailmark_server::domain::postbacks::PostbackConfig { network: network.into(), url, events: vec![] }
}

#[tokio::test]
async fn a_template_with_a_macro_in_its_host_is_refused_at_start_naming_the_network() {
    let dir = tempfile::tempdir().unwrap();
    for url in ["https://{sub1}.net.example/pb", "https://net.example:{sub2}/pb", "https://{click_id}/pb"] {
        let mut c = ServerConfig::new().with_app("app", "secret");
        c.postbacks = vec![postback("good", "https://ok.example/pb?c={click_id}".into()), postback("meta", url.into())];
        let err = ServerBuilder::new(c).sqlite(dir.path().join("t.db")).unwrap().build_state().err().unwrap();
        let message = err.to_string();
        assert!(message.contains("network \"meta\""), "{message}");
        assert!(message.contains("scheme, host or port"), "{message}");
        assert!(matches!(err, trailmark_server::BuildError::Postback { .. }), "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_click_parameter_cannot_move_a_postback_to_another_host() {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<Hit>>> = Arc::default();
    let hits = seen.clone();
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let hits = hits.clone();
        async move {
            let query = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes()).into_owned().collect();
            hits.lock().unwrap().push((uri.path().to_owned(), query));
            axum::http::StatusCode::OK
        }
    });
    let network = network_endpoint(app).await;
    let srv = start(|c| {
        c.postbacks =
            vec![postback("alpha", format!("{network}/pb/{{network_click_id}}/end?c={{network_click_id}}&s={{sub1}}"))];
    })
    .await;
    let (_, _, code) = srv.link("alpha").await;
    // The click's own parameters, as an attacker would write them into a tracking link.
    let evil =
        [("@evil.example/", "//evil.example:1/x?y=1#z"), ("..", "\\\\evil.example"), ("evil.example%2F", "a&s=b")];
    for (clickid, sub1) in evil {
        let q: String = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("clickid", clickid)
            .append_pair("sub1", sub1)
            .finish();
        srv.attributed_install(&code, &format!("?{q}")).await;
    }
    let rows = srv.postbacks_until(|r| r.len() == 3 && r.iter().all(|p| p.1 != "pending")).await;
    assert!(rows.iter().all(|p| p.1 == "delivered"), "{rows:?}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "every postback reached the template's host: {seen:?}");
    for (clickid, sub1) in evil {
        let hit = seen.iter().find(|(_, q)| q.first().is_some_and(|(_, v)| v == clickid)).expect(clickid);
        // The value stays one path segment (a dot segment is left out), and whole in the query.
        let expected_path = match clickid {
            ".." => "/pb//end".to_owned(),
            _ => format!("/pb/{}/end", url::form_urlencoded::byte_serialize(clickid.as_bytes()).collect::<String>()),
        };
        assert_eq!(hit.0, expected_path);
        assert_eq!(hit.1, [("c".to_owned(), clickid.to_owned()), ("s".to_owned(), sub1.to_owned())]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postbacks_do_not_follow_redirects() {
    use std::sync::atomic::Ordering;
    // Where a redirect would lead: it counts every request it gets.
    let (elsewhere, landed) = counting_endpoint(|| async { axum::http::StatusCode::OK }).await;
    let target = format!("{elsewhere}/hit");
    let redirecting = network_endpoint(axum::Router::new().fallback(move || {
        let target = target.clone();
        async move { (axum::http::StatusCode::FOUND, [(axum::http::header::LOCATION, target)]) }
    }))
    .await;
    let srv = start(|c| {
        c.postbacks = vec![postback("alpha", format!("{redirecting}/pb?e={{event}}"))];
        c.postback_policy.min_delay = std::time::Duration::from_millis(10);
        c.postback_policy.max_delay = std::time::Duration::from_millis(40);
    })
    .await;
    let (_, _, code) = srv.link("alpha").await;
    srv.attributed_install(&code, "").await;
    let rows = srv.postbacks_until(|r| r.len() == 1 && r[0].1 != "pending").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (_, state, attempts, status, error) = &rows[0];
    assert_eq!((state.as_str(), *attempts, *status), ("failed", 1, Some(302)), "a 3xx is final: {rows:?}");
    assert_eq!(error.as_deref(), Some("redirect not followed"));
    assert_eq!(landed.load(Ordering::SeqCst), 0, "the redirect was not followed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_that_never_answers_does_not_hold_up_the_others() {
    use std::sync::atomic::Ordering;
    // "dead" takes every request and never answers; "alive" answers at once.
    let (dead, dead_requests) = counting_endpoint(std::future::pending::<axum::http::StatusCode>).await;
    let (alive, _) = counting_endpoint(|| async { axum::http::StatusCode::OK }).await;
    let srv = start(|c| {
        c.postbacks = vec![
            postback("dead", format!("{dead}/pb?c={{click_id}}")),
            postback("alive", format!("{alive}/pb?c={{click_id}}")),
        ];
        // Far longer than the test: every request to "dead" is still hanging at its end.
        c.postback_policy.timeout = std::time::Duration::from_secs(600);
        c.postback_policy.concurrency = 2;
    })
    .await;
    let (_, _, dead_code) = srv.link("dead").await;
    let (_, _, alive_code) = srv.link("alive").await;
    // The dead network's postbacks are decided first, more of them than it may have in flight.
    for _ in 0..6 {
        srv.attributed_install(&dead_code, "").await;
    }
    for _ in 0..6 {
        srv.attributed_install(&alive_code, "").await;
    }
    let rows = srv.postbacks_until(|r| r.iter().filter(|p| p.0 == "alive" && p.1 == "delivered").count() == 6).await;
    let alive_delivered = rows.iter().filter(|p| p.0 == "alive" && p.1 == "delivered").count();
    assert_eq!(alive_delivered, 6, "{rows:?}");
    // Meanwhile not one request to "dead" has ended, and it never had more than its own two.
    assert!(rows.iter().filter(|p| p.0 == "dead").all(|p| p.1 == "pending" && p.2 == 0), "{rows:?}");
    let conn = rusqlite::Connection::open(&srv.db).unwrap();
    let logged: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM postback_attempts a JOIN postbacks p ON p.id = a.postback_id WHERE p.network = 'dead'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(logged, 0);
    assert!(dead_requests.load(Ordering::SeqCst) <= 2, "{}", dead_requests.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_network_queue_leaves_postbacks_pending_and_sends_them_once_it_drains() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    // The network answers 503 until `up` is set.
    let up = Arc::new(AtomicBool::new(false));
    let state = up.clone();
    let network = network_endpoint(axum::Router::new().fallback(move || {
        let up = state.load(Ordering::SeqCst);
        async move { if up { axum::http::StatusCode::OK } else { axum::http::StatusCode::SERVICE_UNAVAILABLE } }
    }))
    .await;
    let srv = start(|c| {
        c.postbacks = vec![postback("alpha", format!("{network}/pb?c={{click_id}}"))];
        c.postback_policy.queue = 2;
        c.postback_policy.concurrency = 1;
        c.postback_policy.max_attempts = 10_000;
        c.postback_policy.min_delay = std::time::Duration::from_millis(5);
        c.postback_policy.max_delay = std::time::Duration::from_millis(20);
    })
    .await;
    let (_, _, code) = srv.link("alpha").await;
    for _ in 0..5 {
        srv.attributed_install(&code, "").await;
    }
    // The two the queue holds are retried; the other three wait in storage, untried.
    let rows = srv.postbacks_until(|r| r.len() == 5 && r.iter().filter(|p| p.2 >= 3).count() == 2).await;
    assert_eq!(rows.iter().filter(|p| p.2 >= 3).count(), 2, "{rows:?}");
    assert_eq!(rows.iter().filter(|p| p.2 == 0).count(), 3, "{rows:?}");
    assert!(rows.iter().all(|p| p.1 == "pending"), "{rows:?}");
    // Once the network answers, the queue drains and the stored ones are read and sent too.
    up.store(true, Ordering::SeqCst);
    let rows = srv.postbacks_until(|r| r.iter().all(|p| p.1 == "delivered")).await;
    assert!(rows.len() == 5 && rows.iter().all(|p| p.1 == "delivered"), "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postback_request_without_an_answer_ends_at_the_timeout_and_is_retried() {
    let (silent, requests) = counting_endpoint(std::future::pending::<axum::http::StatusCode>).await;
    let srv = start(|c| {
        c.postbacks = vec![postback("alpha", format!("{silent}/pb?c={{click_id}}"))];
        c.postback_policy.timeout = std::time::Duration::from_millis(200);
        c.postback_policy.max_attempts = 2;
        c.postback_policy.min_delay = std::time::Duration::from_millis(10);
        c.postback_policy.max_delay = std::time::Duration::from_millis(20);
    })
    .await;
    let (_, _, code) = srv.link("alpha").await;
    srv.attributed_install(&code, "").await;
    let rows = srv.postbacks_until(|r| r.len() == 1 && r[0].1 == "failed").await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let (_, state, attempts, status, error) = &rows[0];
    assert_eq!((state.as_str(), *attempts, *status), ("failed", 2, None), "{rows:?}");
    assert_eq!(error.as_deref(), Some("no answer within 200ms"));
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// After a deletion, a replay of the person's batch (an SDK retry, a replayed request) stores
/// nothing and posts nothing back: the deleted events are tombstoned and the person's
/// identifiers suppressed; the answer counts them as `suppressed`. `"suppress": false` keeps
/// only the tombstones; a lifted suppression lets the person's new events in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_persons_replayed_batch_is_stored_nowhere_and_posted_back_nowhere() {
    let (network, seen) = common::receiver().await;
    let srv = start(move |c| {
        c.postbacks = vec![trailmark_server::domain::postbacks::PostbackConfig {
            network: "alpha".into(),
            url: format!("{network}/pb?o={{event}}"),
            events: vec!["purchase".into()],
        }];
    })
    .await;
    let (_, _, alpha) = srv.link("alpha").await;
    let click = srv.web_click(&alpha, "").await;
    let purchase =
        srv.event_body("purchase", "anon-jane", Some("jane"), Some(&click), json!({"revenue": 5, "currency": "USD"}));
    let view = srv.event_body("screen_view", "anon-jane", Some("jane"), None, json!({}));
    let batch = json!({"batch": [purchase, view]});
    let answer = |batch: Value| {
        let srv = &srv;
        async move {
            let resp = srv.signed("/v1/event", &batch, &[]).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            resp.json::<Value>().await.unwrap()
        }
    };
    let first = answer(batch.clone()).await;
    assert_eq!(first["accepted"], 2, "{first}");
    first_postback(&seen).await;
    assert_eq!(seen.lock().unwrap().len(), 1, "the purchase's postback");

    let (status, receipt) = srv.admin(reqwest::Method::POST, "/v1/user/delete", Some(json!({"user_id": "jane"}))).await;
    assert_eq!(status, 200, "{receipt}");
    let conn = rusqlite::Connection::open(&srv.db).unwrap();
    let rows = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(rows("SELECT COUNT(*) FROM events"), 0);
    assert_eq!(rows("SELECT COUNT(*) FROM postbacks"), 0);

    // The replay, and a new event from her anonymous id: accepted, suppressed, stored nowhere.
    let again = answer(batch.clone()).await;
    assert_eq!((again["accepted"].as_u64(), again["suppressed"].as_u64()), (Some(0), Some(2)), "{again}");
    let new = srv.event_body("screen_view", "anon-jane", None, None, json!({}));
    assert_eq!(answer(new).await["suppressed"], 1);
    let mut purchase_again = srv.event_body("purchase", "anon-other", Some("jane"), Some(&click), json!({}));
    purchase_again["properties"] = json!({"revenue": 7, "currency": "USD"});
    assert_eq!(answer(purchase_again).await["suppressed"], 1, "her user id on a new device");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(rows("SELECT COUNT(*) FROM events"), 0);
    assert_eq!(rows("SELECT COUNT(*) FROM postbacks") + rows("SELECT COUNT(*) FROM conversions"), 0);
    assert_eq!(seen.lock().unwrap().len(), 1, "no postback after the deletion: {:?}", seen.lock().unwrap());

    // An install from her anonymous id: answered as organic, stored nowhere, not matched to
    // her click.
    let mut install = srv.install_body("web", json!({}));
    install["anonymous_id"] = json!("anon-jane");
    install["click_id"] = json!(click);
    assert_eq!(srv.install(install, &[]).await["match_type"], "organic");
    assert_eq!(rows("SELECT COUNT(*) FROM installs"), 0);

    // The suppressions are listed by keyed hash only, and lifted by identifier or receipt.
    let (status, listed) = srv.admin(reqwest::Method::GET, "/v1/suppressions", None).await;
    assert_eq!(status, 200);
    let listed = listed["suppressions"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 2, "jane and anon-jane: {listed:?}");
    assert!(listed.iter().all(|s| s["receipt_id"] == receipt["receipt_id"]), "{listed:?}");
    assert!(!format!("{listed:?}").contains("jane"), "{listed:?}");
    let (status, lifted) =
        srv.admin(reqwest::Method::POST, "/v1/suppressions/lift", Some(json!({"user_id": "jane"}))).await;
    assert_eq!((status, lifted["lifted"].as_u64()), (200, Some(1)));
    let back = srv.event_body("screen_view", "anon-new", Some("jane"), None, json!({}));
    assert_eq!(answer(back).await["accepted"], 1, "a lifted suppression lets new events in");
    assert_eq!(answer(batch).await["suppressed"], 2, "the deleted events stay deleted");
    let (status, lifted) = srv
        .admin(reqwest::Method::POST, "/v1/suppressions/lift", Some(json!({"receipt_id": receipt["receipt_id"]})))
        .await;
    assert_eq!((status, lifted["lifted"].as_u64()), (200, Some(1)), "anon-jane's");
    for bad in [
        json!({}),
        json!({"receipt_id": "r", "user_id": "u"}),
        json!({"user_id": 5}),
        json!({"x": "y"}),
        json!({"device_id": "00000000-0000-0000-0000-000000000000"}),
        json!({"device_id": "  "}),
    ] {
        let (status, body) = srv.admin(reqwest::Method::POST, "/v1/suppressions/lift", Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Without suppression: the deleted event stays deleted, the person may come back.
    let joe = srv.event_body("screen_view", "anon-joe", Some("joe"), None, json!({}));
    assert_eq!(answer(joe.clone()).await["accepted"], 1);
    let (status, _) =
        srv.admin(reqwest::Method::POST, "/v1/user/delete", Some(json!({"user_id": "joe", "suppress": false}))).await;
    assert_eq!(status, 200);
    assert_eq!(answer(joe).await["suppressed"], 1);
    let later = srv.event_body("screen_view", "anon-joe", Some("joe"), None, json!({}));
    assert_eq!(answer(later).await["accepted"], 1);
    let (status, body) =
        srv.admin(reqwest::Method::POST, "/v1/user/delete", Some(json!({"user_id": "x", "suppress": "no"}))).await;
    assert_eq!(status, 400, "{body}");
}

/// An event's recorded consent decides whether an ad network hears of it: a purchase made
/// under do-not-sell, or with attribution denied, is credited to its campaign but sent to no
/// network; one with consent is posted back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_do_not_sell_or_attribution_denied_purchase_is_credited_but_posted_back_nowhere() {
    let (network, seen) = common::receiver().await;
    let srv = start(move |c| {
        c.apps.get_mut("app").unwrap().client_revenue_postbacks = true;
        c.postbacks = vec![trailmark_server::domain::postbacks::PostbackConfig {
            network: "alpha".into(),
            url: format!("{network}/pb?rev={{revenue}}"),
            events: vec!["purchase".into()],
        }];
    })
    .await;
    let (_, _, alpha) = srv.link("alpha").await;
    let click = srv.web_click(&alpha, "").await;
    let consents = [
        json!({"analytics": true, "attribution": true, "do_not_sell": true}),
        json!({"analytics": true, "attribution": false, "do_not_sell": false}),
        json!({"analytics": true, "attribution": true, "do_not_sell": false}),
    ];
    for (n, consent) in consents.into_iter().enumerate() {
        let props = json!({"revenue": n + 1, "currency": "USD"});
        let mut purchase = srv.event_body("purchase", "anon-c", None, Some(&click), props);
        purchase["context"]["consent"] = consent;
        srv.event(purchase).await;
        srv.clock.advance(MINUTE);
    }
    settle(&seen).await;
    assert_eq!(*seen.lock().unwrap(), ["rev=3"], "only the purchase with consent is posted back");
    let conn = rusqlite::Connection::open(&srv.db).unwrap();
    let credited: i64 = conn.query_row("SELECT COUNT(DISTINCT event_id) FROM conversions", [], |r| r.get(0)).unwrap();
    assert_eq!(credited, 3, "all three are credited to the campaign");
}

/// An install's consent (sent with the request, as events carry it): under do-not-sell it is
/// attributed but posted back to no network (receiver on loopback); with attribution denied it
/// is not fingerprinted, though its click id still matches; with consent it is posted back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_do_not_sell_install_sends_no_postback_and_attribution_denied_is_not_fingerprinted() {
    let (network, seen) = common::receiver().await;
    let srv = start(move |c| {
        c.trust_proxy = true;
        c.postbacks = vec![trailmark_server::domain::postbacks::PostbackConfig {
            network: "alpha".into(),
            url: format!("{network}/pb?ev={{event}}&c={{click_id}}"),
            events: vec!["install".into()],
        }];
    })
    .await;
    let (_, _, alpha) = srv.link("alpha").await;
    let dns = json!({"analytics": true, "attribution": true, "do_not_sell": true});
    let denied = json!({"analytics": true, "attribution": false, "do_not_sell": false});
    let granted = json!({"analytics": true, "attribution": true, "do_not_sell": false});
    let mut clicks = Vec::new();
    for (consent, n) in [(&dns, 1), (&denied, 2), (&granted, 3)] {
        let click = srv.web_click(&alpha, "").await;
        srv.clock.advance(MINUTE);
        let mut install = srv.install_body("web", json!({}));
        install["click_id"] = json!(click);
        install["consent"] = consent.clone();
        let result = srv.install(install, &[]).await;
        assert_eq!(
            (result["match_type"].as_str(), result["attributed"].as_bool()),
            (Some("click_id"), Some(true)),
            "{n}"
        );
        clicks.push(click);
    }
    settle(&seen).await;
    assert_eq!(*seen.lock().unwrap(), [format!("ev=install&c={}", clicks[2])], "only the install with consent");
    let conn = rusqlite::Connection::open(&srv.db).unwrap();
    let postbacks: i64 = conn.query_row("SELECT COUNT(*) FROM postbacks", [], |r| r.get(0)).unwrap();
    assert_eq!(postbacks, 1, "withheld postbacks are not stored either");

    // Fingerprinting: the same iPhone on the same address matches with consent, not without.
    let (_, _, code) = srv.link("alpha").await;
    for (consent, expected, idfa) in [
        (&denied, "organic", "5B1E3C4D-2A6F-4E8B-9C0D-1F2A3B4C5D6E"),
        (&granted, "fingerprint", "7C2F4D5E-3B70-4F9C-8D1E-2A3B4C5D6E7F"),
    ] {
        let device = json!({"idfa": idfa, "os": "iOS", "os_version": "17.1.1", "locale": "en_US"});
        let xff = [("X-Forwarded-For", "203.0.113.90"), ("Accept-Language", "en-US,en;q=0.9")];
        srv.click(&format!("/c/{code}"), IPHONE_UA, &xff).await;
        srv.clock.advance(MINUTE);
        let mut install = srv.install_body("ios", device.clone());
        install["consent"] = consent.clone();
        let result = srv.install(install.clone(), &[("X-Forwarded-For", "203.0.113.90")]).await;
        assert_eq!(result["match_type"], expected, "{consent}: {result}");
        if expected == "organic" {
            assert_eq!(result["reason"], "consent_denied", "{result}");
            let path = format!("/v1/attribution/{}", install["event_id"].as_str().unwrap());
            let (_, audit) = srv.admin(reqwest::Method::GET, &path, None).await;
            assert_eq!(audit["audit"]["signals"]["fingerprinting"], "not used: attribution consent denied", "{audit}");
        }
    }
}

/// The latest consent state decides: a purchase recorded (offline) before the person chose
/// do-not-sell, arriving after, is credited but not posted back, and so is a newer purchase
/// that says nothing about consent; once a newer event says the person allows sharing again,
/// the next purchase is posted back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_latest_consent_state_decides_postbacks() {
    let (network, seen) = common::receiver().await;
    let srv = start(move |c| {
        c.postbacks = vec![trailmark_server::domain::postbacks::PostbackConfig {
            network: "alpha".into(),
            url: format!("{network}/pb?e={{event_id}}"),
            events: vec!["purchase".into()],
        }];
    })
    .await;
    let (_, _, alpha) = srv.link("alpha").await;
    let click = srv.web_click(&alpha, "").await;
    let granted = json!({"analytics": true, "attribution": true, "do_not_sell": false});
    let dns = json!({"analytics": true, "attribution": true, "do_not_sell": true});
    let event = |kind: &str, consent: &Value, at: i64| {
        let props = if kind == "purchase" { json!({"revenue": 1, "currency": "USD"}) } else { json!({}) };
        let mut e = srv.event_body(kind, "anon-l", None, Some(&click), props);
        e["context"]["consent"] = consent.clone();
        e["timestamp"] = json!(protocol::format_millis(at));
        e
    };
    let t0 = srv.clock.now();
    srv.clock.advance(10 * MINUTE);
    srv.event(event("screen_view", &dns, t0 + 5 * MINUTE)).await;
    // A purchase that says nothing about consent (as a server reports one), newer than the
    // do-not-sell: it does not count as the latest state, so it is not posted back either.
    let mut silent = srv.event_body("purchase", "anon-l", None, Some(&click), json!({"revenue": 2, "currency": "USD"}));
    silent["timestamp"] = json!(protocol::format_millis(t0 + 6 * MINUTE));
    srv.event(silent).await;
    let early = event("purchase", &granted, t0 + MINUTE);
    srv.event(early.clone()).await;
    srv.event(event("screen_view", &granted, t0 + 8 * MINUTE)).await;
    let late = event("purchase", &granted, t0 + 9 * MINUTE);
    srv.event(late.clone()).await;
    settle(&seen).await;
    assert_eq!(*seen.lock().unwrap(), [format!("e={}", late["event_id"].as_str().unwrap())]);
    let conn = rusqlite::Connection::open(&srv.db).unwrap();
    let credited: i64 = conn.query_row("SELECT COUNT(DISTINCT event_id) FROM conversions", [], |r| r.get(0)).unwrap();
    assert_eq!(credited, 3, "every purchase is credited");
}

/// A test device (admin API) is attributed afresh on every install: a QA phone reinstalling
/// the app after a new click gets the new click, where any other device's reinstall keeps its
/// first attribution. Listed with its id and label; removed, it is an ordinary device again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_device_is_attributed_afresh_on_every_install() {
    let srv = start(|_| {}).await;
    let (_, _, code) = srv.link("google").await;
    const QA: &str = "38400000-8CF0-11BD-B23E-10B96E40AAAA";
    let install = |n: u32| {
        let mut body = srv.install_body("android", json!({"gaid": QA}));
        body["anonymous_id"] = json!(format!("anon-qa-{n}"));
        body
    };
    // Bad requests first.
    for bad in [
        json!({}),
        json!({"device_id": ""}),
        json!({"device_id": 5}),
        json!({"device_id": QA, "x": 1}),
        json!({"device_id": "00000000-0000-0000-0000-000000000000"}),
        json!({"device_id": QA, "label": "x".repeat(101)}),
    ] {
        let (status, body) = srv.admin(reqwest::Method::POST, "/v1/test-devices", Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, body) =
        srv.admin(reqwest::Method::POST, "/v1/test-devices", Some(json!({"device_id": QA, "label": "QA Pixel"}))).await;
    assert_eq!(status, 201, "{body}");
    let (status, listed) = srv.admin(reqwest::Method::GET, "/v1/test-devices", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["test_devices"][0]["device_id"], QA.to_lowercase(), "{listed}");
    assert_eq!(listed["test_devices"][0]["label"], "QA Pixel");

    let mut clicks = Vec::new();
    for n in 0..2 {
        let to = location(&srv.click(&format!("/c/{code}?gaid={QA}"), ANDROID_UA, &[]).await);
        clicks.push(query(&to, "referrer").unwrap());
        srv.clock.advance(HOUR);
        let result = srv.install(install(n), &[]).await;
        assert_eq!(
            (result["match_type"].as_str(), result["reinstall"].as_bool()),
            (Some("device_id"), Some(false)),
            "{n}: {result}"
        );
        assert!(clicks[n as usize].contains(result["click_id"].as_str().unwrap()), "the newest click: {result}");
    }
    let (_, removed) =
        srv.admin(reqwest::Method::POST, "/v1/test-devices/remove", Some(json!({"device_id": QA}))).await;
    assert_eq!(removed["removed"], true);
    srv.clock.advance(HOUR);
    let result = srv.install(install(2), &[]).await;
    assert_eq!(result["reinstall"], true, "an ordinary device again: {result}");
}

/// Waits (up to 5 s) until the loopback receiver got a postback.
async fn first_postback(seen: &std::sync::Mutex<Vec<String>>) {
    for _ in 0..200 {
        if !seen.lock().unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Waits for the first postback, then a while longer, so any postback that should not come
/// would have come.
async fn settle(seen: &std::sync::Mutex<Vec<String>>) {
    first_postback(seen).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_purchase_carrying_a_click_id_is_credited_like_an_sdks() {
    // A web shop on Segment's analytics.js forwards the Trailmark click id in its campaign
    // context (docs/segment.md): the purchase is credited under every model.
    let srv = start(|c| {
        c.apps.get_mut("app").unwrap().write_keys =
            vec![trailmark_server::domain::config::WriteKey::new("wk_shop_0123456789")];
    })
    .await;
    let (_, _, code) = srv.link("alpha").await;
    let click = srv.web_click(&code, "").await;
    srv.clock.advance(MINUTE);
    let message = json!({"type": "track", "event": "Order Completed", "messageId": "order-1", "anonymousId": "anon-s",
                         "timestamp": protocol::format_millis(srv.clock.now()),
                         "context": {"campaign": {"click_id": click}},
                         "properties": {"total": 30, "currency": "eur"}});
    for _ in 0..2 {
        let resp = srv
            .client
            .post(format!("{}/v1/batch", srv.base))
            .basic_auth("wk_shop_0123456789", Some(""))
            .json(&json!({"batch": [message]}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let conn = rusqlite::Connection::open(&srv.db).unwrap();
    let rows: Vec<(String, String, f64)> = conn
        .prepare("SELECT model, click_id, revenue FROM conversions ORDER BY model")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let models: Vec<&str> = rows.iter().map(|(m, _, _)| m.as_str()).collect();
    assert_eq!(
        models,
        ["first_touch", "last_touch", "linear", "time_decay"],
        "credited once (the retry is a duplicate)"
    );
    assert!(rows.iter().all(|(_, c, revenue)| *c == click && (*revenue - 30.0).abs() < 1e-9), "{rows:?}");
}

/// Decided installs are noted on their address: a later install from it meets them as
/// look-alikes (the audit counts them), and a deletion of the person forgets the noted install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_are_noted_on_their_address_and_forgotten_with_the_person() {
    let srv = start(|c| c.trust_proxy = true).await;
    let srv = &srv;
    let (_, _, code) = srv.link("tiktok").await;
    let from = [("X-Forwarded-For", "203.0.113.50")];
    srv.click(&format!("/c/{code}"), IPHONE_UA, &[from[0], ("Accept-Language", "en-US")]).await;
    srv.clock.advance(5 * MINUTE);
    let install = |idfa: &str, model: Option<&str>| {
        let mut device = json!({"idfa": idfa, "os": "iOS", "os_version": "17.1", "locale": "en_US"});
        if let Some(m) = model {
            device["model"] = json!(m);
        }
        srv.install_body("ios", device)
    };
    let lookalikes = |body: Value| async move {
        srv.install(body.clone(), &from).await;
        let path = format!("/v1/attribution/{}", body["event_id"].as_str().unwrap());
        let (_, audit) = srv.admin(reqwest::Method::GET, &path, None).await;
        audit["audit"]["fingerprint"]["lookalikes"].as_f64().unwrap_or(-1.0)
    };
    let a = "11111111-2222-4333-8444-555555555555";
    assert_eq!(lookalikes(install(a, Some("iPhone15,2"))).await, 1.0, "the click's profile");
    // Another model: the first install is no look-alike of it.
    assert_eq!(lookalikes(install("21111111-2222-4333-8444-555555555555", Some("iPhone14,5"))).await, 1.0);
    // A phone that tells no model looks like all three.
    assert_eq!(lookalikes(install("31111111-2222-4333-8444-555555555555", None)).await, 3.0);
    let (s, _) = srv.admin(reqwest::Method::POST, "/v1/user/delete", Some(json!({"device_id": a}))).await;
    assert_eq!(s, 200);
    assert_eq!(
        lookalikes(install("41111111-2222-4333-8444-555555555555", None)).await,
        2.0,
        "the deleted person's install is forgotten"
    );
}

/// An install dated days back (a signed request with an old device time, or an SDK that queued
/// it offline) is noted at its receipt: it does not hide the network's clicks from the next
/// install. A preinstalled app's `installed_at` (2009) is ignored, not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_install_hides_no_clicks_and_odd_install_times_are_ignored() {
    let srv = start(|c| c.trust_proxy = true).await;
    let (campaign, _, code) = srv.link("tiktok").await;
    srv.click(&format!("/c/{code}"), IPHONE_UA, &[("X-Forwarded-For", "203.0.113.60"), ("Accept-Language", "en-US")])
        .await;
    srv.clock.advance(5 * MINUTE);
    let mut old = srv.install_body("android", json!({"os": "Android", "os_version": "14", "locale": "en_US"}));
    old["timestamp"] = json!(protocol::format_millis(srv.clock.now() - 2 * DAY));
    old["installed_at"] = json!(1_230_768_000_000i64); // 2009-01-01
    let resp = srv.signed("/v1/install", &old, &[("X-Forwarded-For", "203.0.113.61")]).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let body = srv.install_body(
        "ios",
        json!({"idfa": "51111111-2222-4333-8444-555555555555", "os": "iOS", "os_version": "17.1", "locale": "en_US"}),
    );
    let result = srv.install(body, &[("X-Forwarded-For", "203.0.113.60")]).await;
    assert_eq!(result["match_type"], "fingerprint", "{result}");
    assert_eq!(result["campaign_id"], campaign);
}
