//! GeoIP and ASN enrichment with MaxMind's test databases. `tests/fixtures.sh` provides them
//! (from ../shared or from the PyPI package maxminddb==3.2.0) and `tests/run.sh` passes the
//! folder in `TM_GEOIP_DIR`.

mod common;

use std::path::PathBuf;

use serde_json::{Value, json};
use trailmark_server::domain::enrich::GeoIp;
use trailmark_server::{ServerBuilder, ServerConfig};

fn fixtures() -> PathBuf {
    if let Ok(dir) = std::env::var("TM_GEOIP_DIR") {
        return PathBuf::from(dir);
    }
    let shared = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/geoip");
    assert!(
        shared.join("GeoIP2-City-Test.mmdb").exists(),
        "GeoIP test databases not found: run ./tests/run.sh (it fetches them) or set TM_GEOIP_DIR"
    );
    shared
}

#[test]
fn lookups_in_the_test_databases() {
    let dir = fixtures();
    let geo = GeoIp::open(Some(&dir.join("GeoIP2-City-Test.mmdb")), Some(&dir.join("GeoLite2-ASN-Test.mmdb"))).unwrap();
    let london = geo.lookup("81.2.69.142".parse().unwrap());
    assert_eq!(london.country.as_deref(), Some("GB"));
    assert_eq!(london.city.as_deref(), Some("London"));
    assert_eq!(london.region.as_deref(), Some("ENG"));
    let asn = geo.lookup("1.128.0.0".parse().unwrap());
    assert_eq!(asn.asn, Some(1221));
    assert_eq!(asn.as_org.as_deref(), Some("Telstra Pty Ltd"));
    let nowhere = geo.lookup("127.0.0.1".parse().unwrap());
    assert_eq!(nowhere, Default::default());
    assert!(GeoIp::open(Some(&dir.join("missing.mmdb")), None).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_enriches_from_the_forwarded_client_address() {
    let dir = fixtures();
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("s.db");
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.geoip_city = Some(dir.join("GeoIP2-City-Test.mmdb"));
    config.geoip_asn = Some(dir.join("GeoLite2-ASN-Test.mmdb"));
    config.trust_proxy = true;
    let base = common::serve(ServerBuilder::new(config).sqlite(&db).unwrap()).await;
    let body = serde_json::to_vec(&json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": "page_view",
        "timestamp": "2026-01-01T00:00:00.000Z", "anonymous_id": "a",
        "properties": {"referrer": "https://www.google.co.uk/search?q=shoes"}}))
    .unwrap();
    let answer: Value = common::signed(&reqwest::Client::new(), &base, body)
        // The client wrote the first entry; the trusted proxy appended the last, which counts.
        .header("X-Forwarded-For", "203.0.113.50, 81.2.69.142")
        .header(
            "User-Agent",
            "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["accepted"], 1, "{answer}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let enrichment: String = conn.query_row("SELECT enrichment FROM events", [], |r| r.get(0)).unwrap();
    let e: Value = serde_json::from_str(&enrichment).unwrap();
    assert_eq!(
        e["geo"],
        json!({"country": "GB", "region": "ENG", "city": "London", "time_zone": "Europe/London"}),
        "{e}"
    );
    assert_eq!(e["ua"]["os"], "Android");
    assert_eq!(e["ua"]["device_class"], "smartphone");
    assert_eq!(e["channel"], "organic_search");
}

#[test]
fn anonymous_ip_database() {
    let dir = fixtures();
    let geo =
        GeoIp::open(None, None).unwrap().with_anonymous(Some(&dir.join("GeoIP2-Anonymous-IP-Test.mmdb"))).unwrap();
    let flagged: Vec<&str> = ["1.2.0.1", "81.2.69.1", "186.30.236.1", "65.0.0.1", "8.8.8.8", "127.0.0.1"]
        .into_iter()
        .filter(|ip| geo.is_anonymous(ip.parse().unwrap()))
        .collect();
    assert_eq!(flagged, ["1.2.0.1", "81.2.69.1", "186.30.236.1", "65.0.0.1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installs_from_anonymous_addresses_are_flagged() {
    use trailmark_core::protocol;
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.geoip_anonymous = Some(fixtures().join("GeoIP2-Anonymous-IP-Test.mmdb"));
    config.trust_proxy = true;
    config.admin_key = Some("test-admin-key-0123456789".into());
    let base = common::serve(ServerBuilder::new(config).sqlite(dir.path().join("s.db")).unwrap()).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let admin = |path: &str, body: Value| {
        client.post(format!("{base}{path}")).bearer_auth("test-admin-key-0123456789").json(&body).send()
    };
    let campaign: Value =
        admin("/v1/campaigns", json!({"name": "c", "network": "n"})).await.unwrap().json().await.unwrap();
    let link: Value = admin(
        "/v1/links",
        json!({"campaign_id": campaign["campaign_id"], "destinations": {"web": "https://example.com/"}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let resp = client
        .get(format!("{base}/c/{}", link["code"].as_str().unwrap()))
        .header(
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
        )
        .send()
        .await
        .unwrap();
    let to = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let click_id = to.query_pairs().find(|(k, _)| k == "tm_click_id").unwrap().1.into_owned();
    let body = serde_json::to_vec(&json!({
        "event_id": uuid::Uuid::new_v4(), "anonymous_id": "a", "platform": "web", "click_id": click_id,
        "timestamp": protocol::format_millis(trailmark_server::now_ms()),
    }))
    .unwrap();
    let ts = trailmark_server::now_ms() / 1000;
    let result: Value = client
        .post(format!("{base}/v1/install"))
        .header(protocol::HEADER_APP, "app")
        .header(protocol::HEADER_TIMESTAMP, ts.to_string())
        .header(protocol::HEADER_SIGNATURE, protocol::sign(b"secret", ts, &body))
        .header("X-Forwarded-For", "81.2.69.1")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Both rules fire: the click came under 10 s ago (reject) and the address is anonymous
    // (flag); the reject wins.
    assert_eq!(result["fraud"], json!({"flags": ["click_injection", "anonymous_ip"], "rejected": true}), "{result}");
    assert_eq!(result["match_type"], "organic");
}
