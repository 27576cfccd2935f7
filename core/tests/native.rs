//! The native driver end to end with a host-supplied uploader.
#![cfg(feature = "native")]

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Collector, config, props};
use serde_json::json;
use trailmark_core::engine::{UploadOutcome, UploadTask};
use trailmark_core::native::{Error, NativeOptions, Trailmark, Uploader};
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
