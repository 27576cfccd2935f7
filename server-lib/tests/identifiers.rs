//! Identifiers at rest (docs/privacy.md): after clicks, installs and events carrying
//! advertising, vendor, device and user ids, the SQLite file (and its WAL) holds none of them
//! raw; the admin views show them as sent. A store written before identifiers were hashed is
//! brought to the hashed form by the background pass, and a key rotation seals every row
//! again under the new key.

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use trailmark_core::protocol;
use trailmark_server::domain::identifiers::{IdKey, IdProtector};
use trailmark_server::storage::prelude::*;
use trailmark_server::storage::{ClickRecord, ConversionCredit, InstallRecord, NewEvent, SqliteStorage};
use trailmark_server::{ServerBuilder, ServerConfig};

const IDFA: &str = "6D92078A-8246-4BA4-AE5B-76104861E7DC";
const GAID: &str = "38400000-8CF0-11BD-B23E-10B96E40000D";
const IDFV: &str = "B1B2C3D4-0000-4000-8000-00000000000F";
const ANDROID_ID: &str = "9774D56D682E549C";
const EVENT_DEVICE: &str = "E7C1A2B3-4444-4555-8666-777788889999";
const USER: &str = "jane.doe@example.com";

fn config(id_keys: Vec<IdKey>) -> ServerConfig {
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.admin_key = Some("test-admin-key-0123456789".into());
    config.ip_key = [1; 32];
    config.audit_key = [2; 32];
    config.id_keys = id_keys;
    // Installs follow their clicks within milliseconds here.
    config.attribution.fraud.min_click_to_install = 0;
    config
}

/// Every byte of the database file and its write-ahead log.
fn file_bytes(db: &Path) -> Vec<u8> {
    let mut bytes = std::fs::read(db).unwrap();
    if let Ok(wal) = std::fs::read(format!("{}-wal", db.display())) {
        bytes.extend(wal);
    }
    bytes
}

/// The needles (in upper and lower case) found in the file.
fn raw_ids_in(db: &Path, needles: &[&str]) -> Vec<String> {
    let bytes = file_bytes(db);
    let mut found = Vec::new();
    for needle in needles {
        for form in [needle.to_uppercase(), needle.to_lowercase(), (*needle).to_owned()] {
            if bytes.windows(form.len()).any(|w| w == form.as_bytes()) {
                found.push(form);
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

async fn admin(client: &reqwest::Client, base: &str, path: &str) -> Value {
    let resp = client.get(format!("{base}{path}")).bearer_auth("test-admin-key-0123456789").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_raw_advertising_device_or_user_id_in_the_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ids.db");
    let base = common::serve(ServerBuilder::new(config(Vec::new())).sqlite(&db).unwrap()).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let post = |path: &str, body: Value| {
        let (client, base, path) = (client.clone(), base.clone(), path.to_owned());
        async move {
            let resp =
                common::signed_to(&client, &base, &path, serde_json::to_vec(&body).unwrap()).send().await.unwrap();
            let status = resp.status();
            let body: Value = resp.json().await.unwrap();
            assert_eq!(status, 200, "{path}: {body}");
            body
        }
    };
    // A campaign, a link, and clicks that carry advertising ids.
    let resp = client
        .post(format!("{base}/v1/campaigns"))
        .bearer_auth("test-admin-key-0123456789")
        .json(&json!({"name": "Spring", "network": "meta"}))
        .send()
        .await
        .unwrap();
    let campaign: Value = resp.json().await.unwrap();
    let resp = client
        .post(format!("{base}/v1/links"))
        .bearer_auth("test-admin-key-0123456789")
        .json(&json!({"campaign_id": campaign["campaign_id"], "destinations": {"web": "https://shop.example.com/"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let link: Value = resp.json().await.unwrap();
    let code = link["code"].as_str().unwrap();
    for query in [format!("gaid={GAID}"), format!("idfa={IDFA}")] {
        let resp =
            client.get(format!("{base}/c/{code}?{query}")).header("User-Agent", "Mozilla/5.0").send().await.unwrap();
        assert_eq!(resp.status(), 302);
    }
    // Installs with every kind of device id: the Android one matches its click by GAID.
    let now = protocol::format_millis(trailmark_server::now_ms());
    let android = json!({"event_id": uuid::Uuid::new_v4().to_string(), "anonymous_id": "anon-android", "timestamp": now,
        "platform": "android", "device": {"gaid": GAID, "android_id": ANDROID_ID}});
    assert_eq!(post("/v1/install", android).await["match_type"], "device_id", "matched by its hashed GAID");
    let ios = json!({"event_id": uuid::Uuid::new_v4().to_string(), "anonymous_id": "anon-ios", "timestamp": now,
        "platform": "ios", "device": {"idfa": IDFA, "idfv": IDFV}});
    let ios_event_id = ios["event_id"].as_str().unwrap().to_owned();
    assert_eq!(post("/v1/install", ios).await["match_type"], "device_id");
    // Events with a user id and a device id.
    let event = json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": "screen_view", "timestamp": now,
        "anonymous_id": "anon-ios", "user_id": USER, "device_id": EVENT_DEVICE});
    assert_eq!(post("/v1/event", event).await["accepted"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let raw = raw_ids_in(&db, &[IDFA, GAID, IDFV, ANDROID_ID, EVENT_DEVICE, USER]);
    assert_eq!(raw, Vec::<String>::new(), "raw identifiers in the SQLite file");
    // The admin views show them as sent.
    let events = admin(&client, &base, &format!("/v1/events?user_id={USER}")).await;
    assert_eq!(events["events"][0]["user_id"], USER, "{events}");
    assert_eq!(events["events"][0]["device_id"], EVENT_DEVICE.to_lowercase());
    let by_device = admin(&client, &base, &format!("/v1/events?device_id={EVENT_DEVICE}")).await;
    assert_eq!(by_device["events"].as_array().unwrap().len(), 1, "found by the raw device id");
    let audit = admin(&client, &base, &format!("/v1/attribution/{ios_event_id}")).await;
    assert_eq!(audit["device"], json!({"idfa": IDFA.to_lowercase(), "idfv": IDFV.to_lowercase()}), "{audit}");
}

/// Rows as a version without hashed identifiers wrote them.
async fn legacy_rows(db: &Path) {
    let store = SqliteStorage::open(db, Default::default(), 64, 100).unwrap();
    let event = |id: &str, user: Option<&str>, device: Option<&str>| NewEvent {
        app_id: "app".into(),
        event_id: id.into(),
        event_type: "screen_view".into(),
        anonymous_id: "anon-old".into(),
        user_id: user.map(Into::into),
        device_id: device.map(Into::into),
        client_ts: 1_767_225_600_000,
        corrected_ts: 1_767_225_600_000,
        received_at: 1_767_225_600_000,
        properties: "{}".into(),
        context: "{}".into(),
        enrichment: "{}".into(),
        ..Default::default()
    };
    let events: Vec<NewEvent> =
        (0..1200).map(|i| event(&format!("e{i:04}"), Some(USER), (i % 2 == 0).then_some("legacy-device"))).collect();
    store.insert(events).await.unwrap();
    let install = InstallRecord {
        app_id: "app".into(),
        event_id: "i-old".into(),
        anonymous_id: "anon-old".into(),
        platform: "android".into(),
        idfa: None,
        idfv: None,
        gaid: Some(GAID.to_lowercase()),
        android_id: Some(ANDROID_ID.to_lowercase()),
        install_ts: 1_767_225_600_000,
        received_at: 1_767_225_600_000,
        kind: "install".into(),
        result: protocol::AttributionResult::organic(Default::default()),
        audit: json!({}),
        ip_enc: None,
        ids_enc: None,
        rejected_credit: None,
    };
    store.save_install(install, None, None, Vec::new()).await.unwrap();
    store
        .record_touch(ClickRecord {
            click_id: "c-old".into(),
            kind: "click".into(),
            app_id: "app".into(),
            link_id: "l".into(),
            campaign_id: "c".into(),
            ts: 1_767_225_600_000,
            device_id: Some(IDFA.to_lowercase()),
            network_ids: json!({}),
            sub_params: json!({}),
            source: "redirect".into(),
            ..Default::default()
        })
        .unwrap();
    let credit = ConversionCredit {
        app_id: "app".into(),
        event_id: "e0000".into(),
        model: "last_touch".into(),
        click_id: None,
        anonymous_id: "anon-old".into(),
        user_id: Some(USER.into()),
        event_type: "purchase".into(),
        ts: 1_767_225_600_000,
        link_id: None,
        campaign_id: None,
        network: None,
        touch_ts: None,
        credit: 1.0,
        revenue: None,
        currency: None,
    };
    // A write after the click: its commit comes after the click buffer's.
    store.save_conversion(vec![credit]).await.unwrap();
}

/// Waits until `done` holds for the SQLite file (the pass runs in the background).
async fn until(db: &Path, what: &str, done: impl Fn(&rusqlite::Connection) -> bool) {
    let conn = rusqlite::Connection::open(db).unwrap();
    for _ in 0..200 {
        if done(&conn) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: not done in time");
}

fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pass_hashes_old_rows_and_a_rotation_seals_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    legacy_rows(&db).await;
    assert!(!raw_ids_in(&db, &[USER, GAID]).is_empty(), "the old rows hold raw ids");

    // Started with the key file as it was: the pass hashes and seals every old row.
    let client = reqwest::Client::new();
    let base = common::serve(ServerBuilder::new(config(Vec::new())).sqlite(&db).unwrap()).await;
    until(&db, "the first pass", |c| {
        count(c, "SELECT COUNT(*) FROM etl_state WHERE key = 'identifiers_version' AND value = 1") == 1
    })
    .await;
    let conn = rusqlite::Connection::open(&db).unwrap();
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM events WHERE user_id NOT LIKE 'h:%'"), 0);
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM events WHERE ids_enc IS NULL"), 0, "all 1200 sealed");
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM conversions WHERE user_id NOT LIKE 'h:%'"), 0);
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM clicks WHERE device_id NOT LIKE 'h:%' OR device_enc IS NULL"), 0);
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM installs WHERE gaid NOT LIKE 'h:%' OR ids_enc IS NULL"), 0);
    // Rewritten in place (secure_delete zeroes the old cells); what a page split freed
    // whole goes with VACUUM, as docs/privacy.md says.
    conn.execute_batch("VACUUM;").unwrap();
    let _: (i64, i64, i64) =
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
    assert_eq!(raw_ids_in(&db, &[USER, GAID, ANDROID_ID, IDFA, "legacy-device"]), Vec::<String>::new());
    let events = admin(&client, &base, &format!("/v1/events?user_id={USER}&limit=1000")).await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1000, "found by the raw user id");
    assert_eq!(events["events"][0]["user_id"], USER);
    let ids = IdProtector::new(&[2; 32], &[1; 32], &[]);
    let stored_user = ids.user(USER);
    let resp = client
        .post(format!("{base}/v1/test-devices"))
        .bearer_auth("test-admin-key-0123456789")
        .json(&json!({"device_id": GAID, "label": "QA"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // A new key (version 2): the next start seals every row again under it; hashes stay.
    let rotated = vec![IdKey { version: 2, key: [9; 32] }];
    let base = common::serve(ServerBuilder::new(config(rotated)).sqlite(&db).unwrap()).await;
    until(&db, "the pass after the rotation", |c| {
        count(c, "SELECT COUNT(*) FROM etl_state WHERE key = 'identifiers_version' AND value = 2") == 1
    })
    .await;
    for table in ["events", "installs"] {
        let old = count(
            &conn,
            &format!("SELECT COUNT(*) FROM {table} WHERE ids_enc IS NOT NULL AND substr(ids_enc, 1, 1) <> X'02'"),
        );
        assert_eq!(old, 0, "{table}: every row under key 2");
    }
    for table in ["clicks", "test_devices"] {
        let sql =
            format!("SELECT COUNT(*) FROM {table} WHERE device_enc IS NOT NULL AND substr(device_enc, 1, 1) <> X'02'");
        assert_eq!(count(&conn, &sql), 0, "{table}: every row under key 2");
    }
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM test_devices"), 1);
    let listed = admin(&client, &base, "/v1/test-devices").await;
    assert_eq!(listed["test_devices"][0]["device_id"], GAID.to_lowercase(), "opened with key 2: {listed}");
    let same: i64 =
        conn.query_row("SELECT COUNT(*) FROM events WHERE user_id = ?1", [&stored_user], |r| r.get(0)).unwrap();
    assert_eq!(same, 1200, "hashes do not change with the encryption key");
    let events = admin(&client, &base, &format!("/v1/events?user_id={USER}&limit=1")).await;
    assert_eq!(events["events"][0]["user_id"], USER, "opened with key 2");
}

/// A deletion right after the upgrade finds the old rows: the first pass runs before the
/// attribution state loads, and a deletion waits for that load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_right_after_the_upgrade_reaches_the_old_rows() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    legacy_rows(&db).await;
    let base = common::serve(ServerBuilder::new(config(Vec::new())).sqlite(&db).unwrap()).await;
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/user/delete"))
        .bearer_auth("test-admin-key-0123456789")
        .json(&json!({"user_id": USER}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let receipt: Value = resp.json().await.unwrap();
    assert!(receipt["rows_deleted"].as_u64().unwrap() >= 1201, "1200 events and the conversion: {receipt}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM events"), 0);
    assert_eq!(count(&conn, "SELECT COUNT(*) FROM conversions"), 0);
}

/// An IDFA learned after the install (the SDK's `advertising_id` event after an ATT grant) is
/// attached to the device's install in its hashed form, never stored raw, and a deletion by
/// that IDFA then finds the install; with attribution denied in the event, nothing is attached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_advertising_id_is_attached_to_the_install_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("late.db");
    let base = common::serve(ServerBuilder::new(config(Vec::new())).sqlite(&db).unwrap()).await;
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let (client, base, path) = (client.clone(), base.clone(), path.to_owned());
        async move {
            let resp =
                common::signed_to(&client, &base, &path, serde_json::to_vec(&body).unwrap()).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            resp.json::<Value>().await.unwrap()
        }
    };
    let now = protocol::format_millis(trailmark_server::now_ms());
    for anon in ["anon-late", "anon-denied"] {
        let install = json!({"event_id": uuid::Uuid::new_v4().to_string(), "anonymous_id": anon, "timestamp": now,
            "platform": "ios", "device": {"idfv": IDFV}});
        assert_eq!(post("/v1/install", install).await["match_type"], "organic");
    }
    let late = |anon: &str, idfa: &str, attribution: Value| {
        json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": "advertising_id", "timestamp": now,
            "anonymous_id": anon, "properties": {"idfa": idfa},
            "context": {"consent": {"analytics": true, "attribution": attribution, "do_not_sell": false}}})
    };
    assert_eq!(post("/v1/event", late("anon-late", IDFA, Value::Null)).await["accepted"], 1);
    assert_eq!(post("/v1/event", late("anon-denied", GAID, Value::Bool(false))).await["accepted"], 1);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let idfa_of = |anon: &str| -> Option<String> {
        conn.query_row("SELECT idfa FROM installs WHERE anonymous_id = ?1", [anon], |r| r.get(0)).unwrap()
    };
    let attached = idfa_of("anon-late").expect("attached");
    assert!(attached.starts_with("h:"), "{attached}");
    assert_eq!(idfa_of("anon-denied"), None, "attribution denied: not attached");
    assert_eq!(raw_ids_in(&db, &[IDFA, GAID]), Vec::<String>::new(), "no raw advertising id stored");
    // The IDFA now reaches the install through a deletion by device id.
    let resp = client
        .post(format!("{base}/v1/user/delete"))
        .bearer_auth("test-admin-key-0123456789")
        .json(&json!({"device_id": IDFA}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let left: i64 =
        conn.query_row("SELECT count(*) FROM installs WHERE anonymous_id = 'anon-late'", [], |r| r.get(0)).unwrap();
    assert_eq!(left, 0, "deleted by the late IDFA");
    // The deletion suppressed that IDFA: a new install cannot take it back through a late id.
    let install = json!({"event_id": uuid::Uuid::new_v4().to_string(), "anonymous_id": "anon-again", "timestamp": now,
        "platform": "ios", "device": {"idfv": "C1C2C3C4-0000-4000-8000-00000000000F"}});
    post("/v1/install", install).await;
    assert_eq!(post("/v1/event", late("anon-again", IDFA, Value::Null)).await["accepted"], 1);
    assert_eq!(idfa_of("anon-again"), None, "a suppressed IDFA is not attached");
}
