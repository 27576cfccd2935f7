//! The storage conformance suite: the same checks against every `Storage` implementation —
//! the embedded SQLite store always, PostgreSQL when `TM_POSTGRES_URL` names a server
//! (`./tests/run.sh services` starts one; with `TM_REQUIRE_SERVICES=1` a missing URL fails).

use std::sync::Arc;

use trailmark_server::storage::{DeletionAudit, NewEvent, Storage, Subject};

fn event(app: &str, id: &str, anon: &str, user: Option<&str>, device: Option<&str>, at: i64) -> NewEvent {
    NewEvent {
        app_id: app.into(),
        event_id: id.into(),
        event_type: "screen".into(),
        anonymous_id: anon.into(),
        user_id: user.map(Into::into),
        device_id: device.map(Into::into),
        session_id: None,
        client_ts: at,
        corrected_ts: at,
        received_at: at,
        properties: r#"{"n":1}"#.into(),
        context: "{}".into(),
        enrichment: "{}".into(),
        ip_enc: Some(vec![1, 2, 3]),
    }
}

fn audit(kind: &'static str) -> DeletionAudit {
    DeletionAudit {
        receipt_id: uuid::Uuid::new_v4().to_string(),
        subject_kind: kind,
        subject_hash: "h".into(),
        requested_at: 1,
        requested_by: "test".into(),
    }
}

async fn count(store: &dyn Storage, subject: Subject) -> usize {
    store.recent_events(None, subject, 1000).await.unwrap().len()
}

/// Everything a store must do for the event path.
async fn suite(store: Arc<dyn Storage>) {
    // Dedup: new, duplicate in the same batch, duplicate of a stored event, another app.
    let fresh = store
        .insert(vec![
            event("a", "e1", "anon-1", None, None, 10),
            event("a", "e2", "anon-1", Some("u1"), None, 20),
            event("a", "e1", "anon-1", None, None, 10),
            event("b", "e1", "anon-9", None, None, 10),
        ])
        .await
        .unwrap();
    assert_eq!(fresh, [true, true, false, true]);
    let again = store.insert(vec![event("a", "e2", "anon-1", Some("u1"), None, 20)]).await.unwrap();
    assert_eq!(again, [false]);
    assert_eq!(store.insert(Vec::new()).await.unwrap(), Vec::<bool>::new());

    // The inspector: newest first, per app when asked.
    let seen = store.recent_events(None, Subject::AnonymousId("anon-1".into()), 10).await.unwrap();
    assert_eq!(seen.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(), ["e2", "e1"]);
    assert_eq!(seen[0].user_id.as_deref(), Some("u1"));
    assert_eq!(seen[1].properties, r#"{"n":1}"#);
    let in_b = store.recent_events(Some("b".into()), Subject::AnonymousId("anon-9".into()), 10).await.unwrap();
    assert_eq!(in_b.len(), 1);

    // Deleting a user id takes the anonymous ids seen with it in the same app, not elsewhere.
    store
        .insert(vec![
            event("a", "e3", "anon-2", None, Some("DEV-1"), 30),
            event("b", "e4", "anon-1", None, None, 40),
            event("a", "e5", "anon-3", Some("u2"), None, 50),
        ])
        .await
        .unwrap();
    let report = store.delete_subject(Subject::UserId("u1".into()), audit("user_id")).await.unwrap();
    assert_eq!(report.rows, 2, "e1 and e2 (anon-1 in app a)");
    assert_eq!(count(&*store, Subject::AnonymousId("anon-1".into())).await, 1, "app b's anon-1 stays");
    assert_eq!(count(&*store, Subject::UserId("u2".into())).await, 1, "another user stays");
    // A device id matches as sent (and lower-cased, as clicks and installs store it).
    let report = store.delete_subject(Subject::DeviceId("DEV-1".into()), audit("device_id")).await.unwrap();
    assert_eq!(report.rows, 1);
    assert_eq!(count(&*store, Subject::AnonymousId("anon-2".into())).await, 0);
    // Deleting what is not there is fine.
    let report = store.delete_subject(Subject::AnonymousId("nobody".into()), audit("anonymous_id")).await.unwrap();
    assert_eq!(report.rows, 0);
    assert_eq!(store.backlog(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_storage_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = trailmark_server::SqliteStorage::open(dir.path().join("s.db"), Default::default(), 64, 1000).unwrap();
    suite(Arc::new(store)).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_passes_the_storage_suite() {
    let Ok(url) = std::env::var("TM_POSTGRES_URL") else {
        assert!(std::env::var("TM_REQUIRE_SERVICES").is_err(), "TM_REQUIRE_SERVICES is set but TM_POSTGRES_URL is not");
        eprintln!("TM_POSTGRES_URL not set: PostgreSQL part skipped (./tests/run.sh services runs it)");
        return;
    };
    // A schema of its own, so runs never see each other's rows.
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let store = trailmark_server::storage::postgres::PostgresStorage::connect(&url, 8, Some(&schema)).await.unwrap();
    // A second instance on the migrated schema applies nothing and starts.
    let again = trailmark_server::storage::postgres::PostgresStorage::connect(&url, 2, Some(&schema));
    again.await.unwrap();
    suite(Arc::new(store)).await;
}
