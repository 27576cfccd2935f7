//! End to end over loopback HTTP: the core's native driver is the client.

use std::time::{Duration, Instant};

use serde_json::json;
use trailmark_core::native::{NativeOptions, Trailmark};
use trailmark_core::{Config, ConsentUpdate};
use trailmark_server::{ServerBuilder, ServerConfig};

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_sdk_delivers_to_the_server_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let base = common::serve(
        ServerBuilder::new(ServerConfig::new().with_app("shop", "s3cret").with_admin_key("adm1n-key-0123456789"))
            .sqlite(&db)
            .unwrap(),
    )
    .await;
    let inspect_base = base.clone();

    let sdk_dir = dir.path().to_owned();
    let (stats, anonymous_id) = tokio::task::spawn_blocking(move || {
        let config = Config::new("shop", "s3cret", base);
        let tm = Trailmark::start(config, NativeOptions::new(sdk_dir.join("sdk.db"))).unwrap();
        tm.set_consent(ConsentUpdate { analytics: Some(true), attribution: Some(true), do_not_sell: None }).unwrap();
        tm.handle_open_url("shop://p?tm_click_id=clk_1&utm_source=Newsletter&utm_medium=Email").unwrap();
        for i in 0..120 {
            let props = json!({"sku": format!("A-{i}"), "price": 1.5, "currency": "EUR"});
            tm.track("add_to_cart", props.as_object().unwrap().clone().into()).unwrap();
        }
        // Invalid for the server (purchase without currency): rejected alone, the rest kept.
        tm.track("purchase", json!({"revenue": 10}).as_object().unwrap().clone().into()).unwrap();
        tm.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stats = tm.stats().unwrap();
            if stats.queued == 0 || Instant::now() > deadline {
                return (stats, tm.anonymous_id().unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert_eq!(stats.queued, 0, "{stats:?}");
    assert_eq!(stats.rejected_by_server, 1, "{stats:?}");
    assert_eq!(stats.delivered, stats.recorded - 1);

    let conn = rusqlite::Connection::open(&db).unwrap();
    let count: i64 = conn.query_row("SELECT COUNT(*) FROM events WHERE app_id = 'shop'", [], |r| r.get(0)).unwrap();
    assert_eq!(count as u64, stats.delivered);
    let (context, enrichment): (String, String) = conn
        .query_row("SELECT context, enrichment FROM events WHERE type = 'deep_link_opened'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let context: serde_json::Value = serde_json::from_str(&context).unwrap();
    assert_eq!(context["campaign"]["utm_source"], "newsletter", "utm values are lower-cased");
    let enrichment: serde_json::Value = serde_json::from_str(&enrichment).unwrap();
    assert_eq!(enrichment["channel"], "email");
    let ip: Vec<u8> = conn.query_row("SELECT ip_enc FROM events LIMIT 1", [], |r| r.get(0)).unwrap();
    assert!(!ip.windows(9).any(|w| w == b"127.0.0.1"), "IPs are stored encrypted");

    // The event inspector shows the same events, newest first.
    let client = reqwest::Client::new();
    let url = format!("{inspect_base}/v1/events?anonymous_id={anonymous_id}&limit=1000");
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401, "admin only");
    let r = client.get(&url).bearer_auth("adm1n-key-0123456789").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len() as u64, stats.delivered);
    let carts: Vec<_> = events.iter().filter(|e| e["type"] == "add_to_cart").collect();
    assert_eq!(carts.len(), 120);
    assert_eq!(carts[0]["properties"]["sku"], "A-119", "newest first");
    assert_eq!(carts[0]["properties"]["currency"], "EUR");
    assert_eq!(carts[0]["anonymous_id"], anonymous_id.as_str());
    let r = client
        .get(format!("{inspect_base}/v1/events?limit=5"))
        .bearer_auth("adm1n-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a subject is required");
    let r = client.get(format!("{url}&user_id=u")).bearer_auth("adm1n-key-0123456789").send().await.unwrap();
    assert_eq!(r.status(), 400, "only one subject");
    let r = client
        .get(format!("{inspect_base}/v1/events?anonymous_id=x&limit=0"))
        .bearer_auth("adm1n-key-0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
