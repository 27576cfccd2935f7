//! GeoIP and ASN enrichment with MaxMind's test databases. `tests/fixtures.sh` provides them
//! (from ../shared or from the PyPI package maxminddb==3.2.0) and `tests/run.sh` passes the
//! folder in `TM_GEOIP_DIR`.

mod common;

use std::path::PathBuf;

use serde_json::{Value, json};
use trailmark_server::enrich::GeoIp;
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
