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
    let base =
        common::serve(ServerBuilder::new(ServerConfig::new().with_app("shop", "s3cret")).sqlite(&db).unwrap()).await;

    let sdk_dir = dir.path().to_owned();
    let stats = tokio::task::spawn_blocking(move || {
        let config = Config::new("shop", "s3cret", base);
        let tm = Trailmark::start(config, NativeOptions::new(sdk_dir.join("sdk.db"))).unwrap();
        tm.set_consent(ConsentUpdate { analytics: Some(true), attribution: Some(true), do_not_sell: None }).unwrap();
        tm.handle_open_url("shop://p?tm_click_id=clk_1&utm_source=Newsletter&utm_medium=Email").unwrap();
        for i in 0..120 {
            let props = json!({"sku": format!("A-{i}"), "price": 1.5, "currency": "EUR"});
            tm.track("add_to_cart", props.as_object().unwrap().clone()).unwrap();
        }
        // Invalid for the server (purchase without currency): rejected alone, the rest kept.
        tm.track("purchase", json!({"revenue": 10}).as_object().unwrap().clone()).unwrap();
        tm.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let stats = tm.stats().unwrap();
            if stats.queued == 0 || Instant::now() > deadline {
                return stats;
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
}
