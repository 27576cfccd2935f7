//! The native driver end to end with a host-supplied uploader.
#![cfg(feature = "native")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Collector, config, props};
use serde_json::json;
use trailmark_core::engine::{UploadOutcome, UploadTask};
use trailmark_core::native::{Error, MiddlewareEvent, NativeOptions, Trailmark, Uploader};
use trailmark_core::protocol::ValidationError;

/// Panics on the first upload, then answers like the collector.
struct Flaky {
    calls: u32,
    server: Arc<Mutex<Collector>>,
}

impl Uploader for Flaky {
    fn upload(&mut self, task: &UploadTask) -> UploadOutcome {
        self.calls += 1;
        if self.calls == 1 {
            panic!("host HTTP stack blew up");
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        self.server.lock().unwrap().accept(task, now, |_| false)
    }
}

#[test]
fn delivers_through_a_host_uploader_and_survives_its_panic() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Mutex::new(Collector::default()));
    let mut opts = NativeOptions::new(dir.path().join("q.db"));
    opts.uploader = Some(Box::new(Flaky { calls: 0, server: server.clone() }));
    let mut cfg = config();
    cfg.policy.retry_base = Duration::from_millis(50);
    let tm = Trailmark::start(cfg, opts).unwrap();
    for n in 0..30 {
        tm.track("tick", props(json!({ "n": n }))).unwrap();
    }
    assert!(matches!(tm.track("Bad", Default::default()), Err(Error::Invalid(ValidationError::InvalidTypeChar(_)))));
    assert!(matches!(tm.track_bytes(b"ok", b"{\"x\": NaN}"), Err(Error::Invalid(ValidationError::InvalidJson(_)))));
    assert!(matches!(tm.identify("", Default::default()), Err(Error::Invalid(ValidationError::EmptyId { .. }))));
    tm.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tm.stats().unwrap().queued > 0 {
        assert!(Instant::now() < deadline, "not delivered: {:?}", tm.stats().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = tm.stats().unwrap();
    assert_eq!(stats.delivered, 32);
    assert_eq!(stats.refused_invalid, 3);
    assert!(stats.upload_failures >= 1, "the panic counted as a failed upload");
    assert_eq!(server.lock().unwrap().numbers(), (0..30).collect::<Vec<_>>());
    tm.shutdown();
}

/// Answers like the collector, every time.
struct Steady(Arc<Mutex<Collector>>);

impl Uploader for Steady {
    fn upload(&mut self, task: &UploadTask) -> UploadOutcome {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        self.0.lock().unwrap().accept(task, now, |_| false)
    }
}

/// Middleware runs in order on track, screen and page: it changes, enriches or drops events
/// before they are queued, sees the context (the group id after `group`), and one that fails
/// or panics drops the event (counted, never thrown); identify is not passed through it.
#[test]
fn middleware_changes_or_drops_events_before_they_are_queued() {
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(Mutex::new(Collector::default()));
    let mut opts = NativeOptions::new(dir.path().join("q.db"));
    opts.uploader = Some(Box::new(Steady(server.clone())));
    let tm = Trailmark::start(config(), opts).unwrap();
    tm.group("acme", Default::default()).unwrap();
    tm.add_middleware(Arc::new(|e: MiddlewareEvent| {
        if e.event_type == "secret" {
            return Ok(None);
        }
        if e.event_type == "boom" {
            return Err("no".into());
        }
        if e.event_type == "bang" {
            panic!("host middleware panicked");
        }
        Ok(Some(e))
    }));
    tm.add_middleware(Arc::new(|mut e: MiddlewareEvent| {
        e.properties.remove("password");
        let group = e.context.get("group_id").and_then(|g| g.as_str()).unwrap_or("none").to_owned();
        e.properties.insert("seen_group", group);
        if e.event_type == "old_name" {
            e.event_type = "new_name".into();
        }
        Ok(Some(e))
    }));
    // The middleware's context is the worker's snapshot: current after a call that waits.
    tm.stats().unwrap();
    tm.track("secret", props(json!({"x": 1}))).unwrap();
    tm.track("boom", Default::default()).unwrap();
    tm.track("bang", Default::default()).unwrap();
    tm.track("login", props(json!({"password": "hunter2", "ok": true}))).unwrap();
    tm.track("old_name", Default::default()).unwrap();
    tm.screen("Home", Default::default()).unwrap();
    tm.page("Pricing", Default::default()).unwrap();
    tm.identify("u1", Default::default()).unwrap();
    tm.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tm.stats().unwrap().queued > 0 || tm.stats().unwrap().delivered == 0 {
        assert!(Instant::now() < deadline, "not delivered: {:?}", tm.stats().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
    let stats = tm.stats().unwrap();
    assert_eq!((stats.dropped_by_middleware, stats.middleware_errors), (1, 2), "{stats:?}");
    let server = server.lock().unwrap();
    let kept: Vec<_> = server.stored.iter().filter(|e| e["properties"].get("seen_group").is_some()).collect();
    let types: Vec<_> = kept.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["login", "new_name", "screen_view", "page_view"]);
    assert_eq!(kept[0]["properties"], json!({"ok": true, "seen_group": "acme"}), "the password never left");
    assert_eq!(kept[2]["properties"]["name"], "Home");
    assert!(server.types().iter().all(|t| t != "secret" && t != "boom" && t != "bang"));
    assert!(server.types().contains(&"identify".to_owned()), "identify does not go through middleware");
    drop(server);
    tm.shutdown();
}
