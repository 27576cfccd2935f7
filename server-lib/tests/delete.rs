//! `/v1/user/delete` leaves nothing for the subject in any table, and its audit record holds no
//! raw identifier.

mod common;

use serde_json::{Value, json};
use trailmark_server::domain::identifiers::IdProtector;
use trailmark_server::storage::{NON_SUBJECT_TABLES, SUBJECT_TABLES, Subject, count_subject_rows};
use trailmark_server::{ServerBuilder, ServerConfig};

/// A server with app `app` and an admin key, on a SQLite file in `dir`: its URL, the file, and
/// the stored form of its identifiers (user and device ids are stored as keyed hashes).
async fn server(dir: &std::path::Path) -> (String, std::path::PathBuf, IdProtector) {
    let db = dir.join("s.db");
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.admin_key = Some("test-admin-key-0123456789".into());
    let ids = IdProtector::new(&config.audit_key, &config.ip_key, &config.id_keys);
    (common::serve(ServerBuilder::new(config).sqlite(&db).unwrap()).await, db, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_purges_every_table_and_audits_without_raw_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (base, db, ids) = server(dir.path()).await;
    let client = reqwest::Client::new();
    let event = |anon: &str, user: Option<&str>, device: &str| {
        let mut e = json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": "x",
            "timestamp": "2026-01-01T00:00:00.000Z", "anonymous_id": anon, "device_id": device});
        if let Some(u) = user {
            e["user_id"] = json!(u);
        }
        e
    };
    // The subject: anonymous before login, then identified; plus someone else.
    let batch = json!({"batch": [
        event("anon-jane", None, "dev-jane"),
        event("anon-jane", Some("jane"), "dev-jane"),
        event("anon-jane-2", Some("jane"), "dev-jane-2"),
        event("anon-bob", Some("bob"), "dev-bob"),
    ]});
    let body = serde_json::to_vec(&batch).unwrap();
    let resp: Value = common::signed(&client, &base, body).send().await.unwrap().json().await.unwrap();
    assert_eq!(resp["accepted"], 4, "{resp}");

    let resp = client
        .post(format!("{base}/v1/user/delete"))
        .header("Authorization", "Bearer test-admin-key-0123456789")
        .body(r#"{"user_id": "jane"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let receipt: Value = resp.json().await.unwrap();
    assert_eq!(receipt["rows_deleted"], 3, "{receipt}");
    let receipt_id = receipt["receipt_id"].as_str().unwrap().to_owned();

    let conn = rusqlite::Connection::open(&db).unwrap();
    for subject in [
        Subject::UserId("jane".into()),
        Subject::AnonymousId("anon-jane".into()),
        Subject::AnonymousId("anon-jane-2".into()),
        Subject::DeviceId("dev-jane".into()),
    ] {
        assert_eq!(count_subject_rows(&conn, &ids.subject(&subject)).unwrap(), 0, "{subject:?} left behind");
    }
    let bob = ids.subject(&Subject::UserId("bob".into()));
    assert_eq!(count_subject_rows(&conn, &bob).unwrap(), 1, "others untouched");
    // Every table of the schema is either listed as a subject table or holds no identifiers.
    let tables = table_names(&conn);
    for table in &tables {
        let listed = SUBJECT_TABLES.iter().any(|(t, _)| t == table);
        assert!(
            listed || NON_SUBJECT_TABLES.contains(&table.as_str()),
            "table {table} is not covered by the delete path"
        );
    }
    // The audit record: present, and no raw id in any column.
    let row: (String, String, String, i64) = conn
        .query_row(
            "SELECT subject_kind, subject_hash, requested_by, rows_deleted FROM deletion_audit WHERE receipt_id = ?1",
            [&receipt_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(row.0, "user_id");
    assert_eq!(row.1.len(), 64);
    assert!(!format!("{row:?}").contains("jane"), "{row:?}");
    assert_eq!(row.3, 3);
}

/// Every table of the SQLite file.
fn table_names(conn: &rusqlite::Connection) -> Vec<String> {
    conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Rows of every table of the SQLite file `conn` in which some column holds `needle`
/// (case-sensitive, or in any case), found without the server's own list of subject tables or
/// its comparisons: every column of every table, as text.
fn rows_holding(conn: &rusqlite::Connection, needle: &str, any_case: bool) -> Vec<String> {
    let tables = table_names(conn);
    let mut found = Vec::new();
    for table in tables {
        let columns: Vec<String> = conn
            .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for column in columns {
            let test = if any_case {
                format!("instr(lower(CAST(\"{column}\" AS TEXT)), lower(?1)) > 0")
            } else {
                format!("instr(CAST(\"{column}\" AS TEXT), ?1) > 0")
            };
            let n: i64 = conn
                .query_row(&format!("SELECT COUNT(*) FROM \"{table}\" WHERE {test}"), [needle], |r| r.get(0))
                .unwrap();
            if n > 0 {
                found.push(format!("{table}.{column}: {n}"));
            }
        }
    }
    found
}

/// Identifiers are compared exactly: deleting user "Alice" leaves user "alice" (another
/// person). Device ids are stored in one form, so an IDFA sent in upper case on events and an
/// install is deleted by a request in lower case. Counted by scanning every column of every
/// table, not with the server's own queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_compares_user_ids_exactly_and_device_ids_in_any_case() {
    let dir = tempfile::tempdir().unwrap();
    let (base, db, ids) = server(dir.path()).await;
    let client = reqwest::Client::new();
    const IDFA: &str = "6D92078A-8246-4BA4-AE5B-76104861E7DC";
    let now = trailmark_server::now_ms();
    let event = |anon: &str, user: Option<&str>, device: Option<&str>| {
        let mut e = json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": "screen_view",
            "timestamp": trailmark_core::protocol::format_millis(now), "anonymous_id": anon});
        if let Some(u) = user {
            e["user_id"] = json!(u);
        }
        if let Some(d) = device {
            e["device_id"] = json!(d);
        }
        e
    };
    let batch = json!({"batch": [
        event("anon-upper", Some("Alice"), None),
        event("anon-lower", Some("alice"), None),
        event("anon-phone", None, Some(IDFA)),
        event("anon-phone", None, Some(IDFA)),
    ]});
    let resp: Value =
        common::signed(&client, &base, serde_json::to_vec(&batch).unwrap()).send().await.unwrap().json().await.unwrap();
    assert_eq!(resp["accepted"], 4, "{resp}");
    let install = json!({"event_id": uuid::Uuid::new_v4().to_string(), "anonymous_id": "anon-phone",
        "timestamp": trailmark_core::protocol::format_millis(now), "platform": "ios",
        "device": {"idfa": IDFA, "idfv": "B1B2C3D4-0000-4000-8000-00000000000F"}});
    let resp =
        common::signed_to(&client, &base, "/v1/install", serde_json::to_vec(&install).unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);

    let conn = rusqlite::Connection::open(&db).unwrap();
    // Stored as a keyed hash of its one form (lower case), never raw.
    let stored_idfa = ids.device(IDFA).unwrap();
    assert_eq!(Some(stored_idfa.clone()), ids.device(&IDFA.to_lowercase()));
    assert!(!rows_holding(&conn, &stored_idfa, false).is_empty(), "the IDFA is stored (hashed)");
    assert_eq!(rows_holding(&conn, IDFA, true), Vec::<String>::new(), "and nowhere raw, in any case");
    let (upper, lower) = (ids.user("Alice"), ids.user("alice"));
    assert_ne!(upper, lower, "user ids are not folded");
    assert!(!rows_holding(&conn, &upper, false).is_empty());
    let delete = |body: Value| {
        client
            .post(format!("{base}/v1/user/delete"))
            .header("Authorization", "Bearer test-admin-key-0123456789")
            .json(&body)
            .send()
    };

    let resp = delete(json!({"user_id": "Alice"})).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(rows_holding(&conn, &upper, false), Vec::<String>::new(), "Alice is gone");
    assert_eq!(rows_holding(&conn, "anon-upper", false), Vec::<String>::new(), "with her anonymous id");
    let alice: i64 = conn.query_row("SELECT COUNT(*) FROM events WHERE user_id = ?1", [&lower], |r| r.get(0)).unwrap();
    assert_eq!(alice, 1, "alice is someone else and stays");
    assert!(!rows_holding(&conn, "anon-lower", false).is_empty());

    let resp = delete(json!({"device_id": IDFA.to_lowercase()})).await.unwrap();
    assert_eq!(resp.status(), 200);
    let receipt: Value = resp.json().await.unwrap();
    assert_eq!(rows_holding(&conn, &stored_idfa, false), Vec::<String>::new(), "no trace of the IDFA: {receipt}");
    assert_eq!(rows_holding(&conn, "anon-phone", false), Vec::<String>::new(), "nor of its anonymous id");
    assert!(receipt["rows_deleted"].as_u64().unwrap() >= 3, "2 events and the install: {receipt}");
    assert!(!rows_holding(&conn, "anon-lower", false).is_empty(), "others untouched");
}
