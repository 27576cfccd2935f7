//! `/v1/user/delete` leaves nothing for the subject in any table, and its audit record holds no
//! raw identifier.

mod common;

use serde_json::{Value, json};
use trailmark_server::storage::{NON_SUBJECT_TABLES, SUBJECT_TABLES, Subject, count_subject_rows};
use trailmark_server::{ServerBuilder, ServerConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_purges_every_table_and_audits_without_raw_ids() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.admin_key = Some("test-admin-key-0123456789".into());
    let base = common::serve(ServerBuilder::new(config).sqlite(&db).unwrap()).await;
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
        assert_eq!(count_subject_rows(&conn, &subject).unwrap(), 0, "{subject:?} left behind");
    }
    assert_eq!(count_subject_rows(&conn, &Subject::UserId("bob".into())).unwrap(), 1, "others untouched");
    // Every table of the schema is either listed as a subject table or holds no identifiers.
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
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
