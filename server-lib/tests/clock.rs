//! Device clocks (issue 19): a stale signature is refused with its own code and the server's
//! time, and the core's engine on a device whose clock is 2 h off delivers everything to the
//! real server and gets its install attributed.

use trailmark_core::engine::{Action, Engine, UploadOutcome};
use trailmark_core::protocol;
use trailmark_core::{Config, MemoryStore};
use trailmark_server::{ServerBuilder, ServerConfig};

mod common;

#[tokio::test]
async fn a_stale_signature_gets_stale_timestamp_and_the_server_time() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::serve(
        ServerBuilder::new(ServerConfig::new().with_app("app", "secret")).sqlite(dir.path().join("s.db")).unwrap(),
    )
    .await;
    let body = br#"{"sent_at":"2026-01-01T00:00:00.000Z","batch":[]}"#.to_vec();
    let ts = trailmark_server::now_ms() / 1000 - 900;
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/event"))
        .header(protocol::HEADER_APP, "app")
        .header(protocol::HEADER_TIMESTAMP, ts.to_string())
        .header(protocol::HEADER_SIGNATURE, protocol::sign(b"secret", ts, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("date").is_some(), "every answer carries Date");
    let error: protocol::ErrorResponse = response.json().await.unwrap();
    assert_eq!(error.error.code, "stale_timestamp");
    let server_time = error.error.server_time.expect("server_time in the answer");
    assert!((server_time - trailmark_server::now_ms()).abs() < 5_000, "{server_time}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_two_hours_off_delivers_everything_and_gets_its_install_attributed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("server.db");
    let base =
        common::serve(ServerBuilder::new(ServerConfig::new().with_app("shop", "s3cret")).sqlite(&db).unwrap()).await;
    let client = reqwest::Client::new();
    for (name, skew) in [("behind", -2 * 3_600_000i64), ("ahead", 2 * 3_600_000)] {
        let mut config = Config::new("shop", "s3cret", base.clone());
        config.device.os = Some("iOS".into());
        config.device_id = Some(format!("IDFV-{name}"));
        let device_now = || trailmark_server::now_ms() + skew;
        let seed = if skew < 0 { [7; 32] } else { [8; 32] };
        let mut engine = Engine::open(config, MemoryStore::new(), device_now(), seed).unwrap();
        for n in 0..25 {
            let mut props = trailmark_core::json::Object::new();
            props.insert("n", n as i64);
            engine.track(device_now(), "tick", props).unwrap();
        }
        engine.flush(device_now()).unwrap();
        let mut refusals = 0;
        for _ in 0..50 {
            match engine.poll(device_now()) {
                Action::Upload(task) => {
                    let mut request = client.post(&task.url).body(task.body.clone());
                    for (k, v) in &task.headers {
                        request = request.header(k, v);
                    }
                    let response = request.send().await.unwrap();
                    let status = response.status().as_u16();
                    refusals += (status == 401) as u32;
                    let retry_after =
                        response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    let body = response.bytes().await.unwrap().to_vec();
                    engine.report(device_now(), task.batch_id, UploadOutcome::Response { status, retry_after, body });
                }
                Action::Wait(d) if d.as_millis() < 1000 => tokio::time::sleep(d).await,
                _ => break,
            }
        }
        assert!(refusals <= 2, "{name}: the offset is learned at the first refusal ({refusals})");
        let stats = engine.stats();
        assert_eq!(stats.queued, 0, "{name}: everything delivered: {stats:?}");
        assert!(engine.attribution().is_some(), "{name}: the install was attributed");
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let ticks: i64 = conn.query_row("SELECT COUNT(*) FROM events WHERE type = 'tick'", [], |r| r.get(0)).unwrap();
    assert_eq!(ticks, 50);
    let installs: i64 = conn.query_row("SELECT COUNT(*) FROM installs", [], |r| r.get(0)).unwrap();
    assert_eq!(installs, 2);
}
