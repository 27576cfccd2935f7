//! The FFI surface end to end, from Rust: the same calls Swift and Kotlin make, against the
//! real server (`trailmark-server`), with the built-in uploader and with a host transport.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use trailmark_ffi::{Consent, HttpResponse, HttpTransport, TrailmarkConfig, TrailmarkError, TrailmarkSdk};
use trailmark_server::{ServerBuilder, ServerConfig};

fn serve(db: &std::path::Path) -> (String, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    // The server's background tasks start on this runtime.
    let (router, _tasks) = {
        let _in_runtime = rt.enter();
        ServerBuilder::new(ServerConfig::new().with_app("app", "secret")).sqlite(db).unwrap().build().unwrap()
    };
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    (base, rt)
}

fn config(endpoint: &str, db: &std::path::Path) -> TrailmarkConfig {
    TrailmarkConfig {
        app_version: Some("1.0".into()),
        os: Some("Android".into()),
        os_version: Some("14".into()),
        sdk_name: Some("trailmark-test".into()),
        sdk_version: Some("0.0.1".into()),
        ..TrailmarkConfig::new("app", "secret", endpoint, &db.to_string_lossy())
    }
}

/// A host logger that keeps the lines.
#[derive(Default)]
struct Lines(std::sync::Mutex<Vec<String>>);

impl trailmark_ffi::DebugLogger for Lines {
    fn log(&self, line: String) {
        self.0.lock().unwrap().push(line);
    }
}

fn wait_delivered(sdk: &TrailmarkSdk, n: u64) -> trailmark_ffi::SdkStats {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = sdk.stats().unwrap();
        if s.delivered >= n || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stored(db: &std::path::Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn built_in_uploader_delivers_and_pii_is_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _rt) = serve(&dir.path().join("server.db"));
    let sdk = TrailmarkSdk::start(TrailmarkConfig { debug: true, ..config(&base, &dir.path().join("sdk.db")) }, None)
        .unwrap();
    let lines = Arc::new(Lines::default());
    sdk.set_debug_logger(lines.clone());
    // Android without a Play referrer: the install request goes at once to the real engine.
    sdk.set_install_referrer(None, None, None, None);
    sdk.identify("user-1".into(), r#"{"email": " Jane@Example.com "}"#.into());
    // A super property rides on the events after it.
    sdk.register(r#"{"plan": "pro", "gone": 1}"#.into());
    sdk.unregister("gone".into());
    assert_eq!(sdk.registered_properties().unwrap(), r#"{"plan":"pro"}"#);
    sdk.track("add_to_cart".into(), r#"{"sku": "A-1", "price": 9.5, "currency": "EUR"}"#.into());
    // Misuse never throws: refused and counted.
    sdk.track("Not A Type".into(), "{}".into());
    sdk.track("ok_type".into(), "[1, 2]".into());
    sdk.flush().unwrap();
    let stats = wait_delivered(&sdk, 2);
    assert!(stats.delivered >= 2, "{stats:?}");
    // debug: the core's decisions reached the host's logger, on the worker thread.
    let log = lines.0.lock().unwrap().clone();
    assert!(log.iter().any(|l| l == "add_to_cart queued"), "{log:?}");
    assert!(log.iter().any(|l| l.starts_with("refused call: ")), "{log:?}");
    assert!(log.iter().any(|l| l.contains("acknowledged")), "{log:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let attribution = loop {
        match sdk.attribution().unwrap() {
            Some(a) => break a,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            None => panic!("no attribution from the server"),
        }
    };
    assert_eq!(attribution.match_type, "organic");
    assert!(!attribution.attributed);
    assert_eq!(attribution.reason.as_deref(), Some("no_click_in_window"), "the server's reason reaches the app");
    let installs = stored(&dir.path().join("server.db"), "SELECT COUNT(*) FROM installs WHERE platform = 'android'");
    assert_eq!(installs, 1, "the install request reached the attribution engine");
    assert_eq!(stats.refused_invalid, 2, "a bad type and non-object properties: {stats:?}");
    let server = dir.path().join("server.db");
    assert_eq!(stored(&server, "SELECT COUNT(*) FROM events WHERE type = 'add_to_cart'"), 1);
    let with_plan = "SELECT COUNT(*) FROM events WHERE type = 'add_to_cart' AND properties LIKE '%\"plan\":\"pro\"%'";
    assert_eq!(stored(&server, with_plan), 1, "the super property arrived with the event");
    let hash = trailmark_ffi::hash_email("jane@example.com".into()).unwrap();
    let with_hash: i64 = rusqlite::Connection::open(&server)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM events WHERE properties LIKE ?1", [format!("%{hash}%")], |r| r.get(0))
        .unwrap();
    assert_eq!(with_hash, 1, "the identify traits carry the hash");
    let raw: i64 =
        stored(&server, "SELECT COUNT(*) FROM events WHERE properties LIKE '%Jane@%' OR properties LIKE '%jane@%'");
    assert_eq!(raw, 0, "no clear email leaves the device");
    assert!(matches!(trailmark_ffi::hash_email("not an email".into()), Err(TrailmarkError::InvalidInput { .. })));
}

/// A host transport (what URLSession / HttpURLConnection do), failing its first call.
struct Flaky {
    calls: AtomicUsize,
    client: reqwest::blocking::Client,
    seen: Mutex<Vec<HashMap<String, String>>>,
}

impl HttpTransport for Flaky {
    fn post(&self, url: String, headers: HashMap<String, String>, body: Vec<u8>) -> HttpResponse {
        self.seen.lock().unwrap().push(headers.clone());
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return HttpResponse { status: 0, retry_after: None, body: Vec::new(), error: Some("offline".into()) };
        }
        let mut req = self.client.post(url).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        match req.send() {
            Ok(r) => HttpResponse {
                status: r.status().as_u16(),
                retry_after: None,
                body: r.bytes().unwrap().to_vec(),
                error: None,
            },
            Err(e) => HttpResponse { status: 0, retry_after: None, body: Vec::new(), error: Some(e.to_string()) },
        }
    }
}

#[test]
fn host_transport_consent_and_persistence_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let server_db = dir.path().join("server.db");
    let (base, _rt) = serve(&server_db);
    let sdk_db = dir.path().join("sdk.db");
    let transport = Arc::new(Flaky {
        calls: AtomicUsize::new(0),
        client: reqwest::blocking::Client::new(),
        seen: Mutex::default(),
    });
    let mut c = config(&base, &sdk_db);
    c.require_consent = true;
    // Held until consent, then the SDK is closed before anything could be sent.
    let sdk = TrailmarkSdk::start(c.clone(), Some(transport.clone())).unwrap();
    sdk.track("screen_view".into(), r#"{"name": "home"}"#.into());
    sdk.flush().unwrap();
    let held = sdk.stats().unwrap().held;
    assert!(held >= 1, "install, session start and the screen view wait for consent: {held}");
    let anon = sdk.anonymous_id().unwrap();
    drop(sdk);

    // Re-created: same anonymous id, the held event still there; consent releases it and the
    // transport's first failure is retried.
    let sdk = TrailmarkSdk::start(c.clone(), Some(transport.clone())).unwrap();
    assert_eq!(sdk.anonymous_id().unwrap(), anon);
    sdk.set_consent(Consent { analytics: Some(true), attribution: Some(true), do_not_sell: None });
    sdk.flush().unwrap();
    let stats = wait_delivered(&sdk, held);
    assert!(stats.delivered >= held, "{stats:?}");
    assert!(transport.calls.load(Ordering::SeqCst) >= 2, "the failed upload was retried");
    let headers = transport.seen.lock().unwrap()[0].clone();
    assert!(headers.keys().any(|k| k.eq_ignore_ascii_case("x-trailmark-signature")), "{headers:?}");
    assert!(stored(&server_db, "SELECT COUNT(*) FROM events WHERE type = 'screen_view'") == 1);

    // Opted out: nothing more is sent.
    sdk.opt_out();
    sdk.track("purchase".into(), r#"{"revenue": 1, "currency": "EUR"}"#.into());
    sdk.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(stored(&server_db, "SELECT COUNT(*) FROM events WHERE type = 'purchase'"), 0);

    // A bad configuration is a typed error.
    let mut bad = c;
    bad.endpoint = "not a url".into();
    assert!(matches!(TrailmarkSdk::start(bad, None), Err(TrailmarkError::InvalidConfig { .. })));
}
