//! The server's lifecycle: `build()` starts the background tasks (nothing waits for a first
//! request), the handle names them, and `shutdown()` stops them and drains the writer.

use std::sync::Arc;
use std::time::Duration;

use trailmark_server::domain::records::{NewEvent, PostbackRecord};
use trailmark_server::storage::prelude::*;
use trailmark_server::{Durability, ServerBuilder, ServerConfig, SqliteStorage};

mod common;

use common::receiver;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_start_with_the_server_and_stop_with_its_handle() {
    let dir = tempfile::tempdir().unwrap();
    let (network, hits) = receiver().await;
    // A postback a previous run stored and did not send.
    let store = Arc::new(SqliteStorage::open(dir.path().join("l.db"), Durability::Normal, 1024, 1000).unwrap());
    store
        .save_postback(PostbackRecord {
            app_id: "app".into(),
            anonymous_id: "anon-1".into(),
            event_id: "ev-1".into(),
            network: "alpha".into(),
            event: "install".into(),
            url: format!("{network}/pb?left=over"),
            created_at: trailmark_server::now_ms(),
        })
        .await
        .unwrap();

    let mut config = ServerConfig::new().with_app("app", "secret");
    config.postbacks = vec![trailmark_server::domain::postbacks::PostbackConfig {
        network: "alpha".into(),
        url: format!("{network}/pb?e={{event}}"),
        events: vec![],
    }];
    let builder = ServerBuilder::new(config).storage(store.clone());
    let state = builder.build_state().unwrap();
    let handle = trailmark_server::start_tasks(&state).unwrap();
    assert_eq!(
        handle.task_names(),
        [
            "attribution state",
            "identifier pass",
            "postback sender",
            "report scheduler",
            "OLAP outbox switch",
            "link reloader"
        ]
    );

    // No request is ever sent: the attribution state loads and the pending postback goes out.
    for _ in 0..2000 {
        if state.tracking.lock_loaded().is_some() && !hits.lock().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(state.tracking.lock_loaded().is_some(), "the attribution state was not loaded at start");
    assert_eq!(*hits.lock().unwrap(), ["left=over"]);

    tokio::time::timeout(Duration::from_secs(20), handle.shutdown()).await.expect("shutdown finishes");
    assert_eq!(store.backlog(), 0, "the writer has nothing left");
    // After the shutdown the sender takes nothing more: a postback dispatched now stays
    // pending in storage for the next start.
    let late = PostbackRecord {
        app_id: "app".into(),
        anonymous_id: "anon-2".into(),
        event_id: "ev-2".into(),
        network: "alpha".into(),
        event: "install".into(),
        url: format!("{network}/pb?too=late"),
        created_at: trailmark_server::now_ms(),
    };
    let id = store.save_postback(late.clone()).await.unwrap();
    trailmark_server::service::postbacks::dispatch(&state, &[late], &[id]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(*hits.lock().unwrap(), ["left=over"]);
    assert!(store.postback_pending(id).await.unwrap());
}

fn event(n: u32) -> NewEvent {
    let now = trailmark_server::now_ms();
    NewEvent {
        app_id: "app".into(),
        event_id: format!("00000000-0000-4000-8000-{n:012}"),
        event_type: "app_open".into(),
        anonymous_id: format!("anon-{n}"),
        client_ts: now,
        corrected_ts: now,
        received_at: now,
        properties: "{}".into(),
        context: "{}".into(),
        enrichment: "{}".into(),
        ..Default::default()
    }
}

fn facts(db: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT COUNT(*) FROM fact_events", [], |r| r.get(0)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_scheduler_runs_without_requests_and_stops_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let store = Arc::new(SqliteStorage::open(&db, Durability::Normal, 1024, 1000).unwrap());
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.reports.refresh_interval = 100;
    let (_router, handle) = ServerBuilder::new(config).storage(store.clone()).build().unwrap();
    assert!(handle.task_names().contains(&"report scheduler"));

    store.insert(vec![event(1), event(2)]).await.unwrap();
    for _ in 0..2000 {
        if facts(&db) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(facts(&db), 2, "the scheduler refreshed the star schema on its own");

    tokio::time::timeout(Duration::from_secs(20), handle.shutdown()).await.expect("shutdown finishes");
    store.insert(vec![event(3)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(facts(&db), 2, "no refresh after the shutdown");
}

#[tokio::test]
async fn tasks_start_once() {
    let dir = tempfile::tempdir().unwrap();
    let state = ServerBuilder::new(ServerConfig::new().with_app("app", "secret"))
        .sqlite(dir.path().join("o.db"))
        .unwrap()
        .build_state()
        .unwrap();
    let first = trailmark_server::start_tasks(&state).unwrap();
    let second = trailmark_server::start_tasks(&state).err().expect("a second start is refused");
    assert!(second.to_string().contains("started already"), "{second}");
    first.shutdown().await;
}

#[test]
fn build_outside_a_runtime_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let builder = ServerBuilder::new(ServerConfig::new().with_app("app", "secret")).sqlite(dir.path().join("x.db"));
    let err = builder.unwrap().build().err().expect("no runtime, no server");
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}

/// A postback made while the person allowed sharing, still pending when their newer event says
/// do-not-sell, is not sent: the sender reads the latest consent before every attempt and marks
/// it withheld (logged as an attempt with the reason). Another person's pending postback goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_postback_of_someone_who_opted_out_since_is_withheld() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("w.db");
    let (network, hits) = receiver().await;
    let store = Arc::new(SqliteStorage::open(&db, Durability::Normal, 1024, 1000).unwrap());
    for anon in ["anon-out", "anon-in"] {
        store
            .save_postback(PostbackRecord {
                app_id: "app".into(),
                anonymous_id: anon.into(),
                event_id: format!("ev-{anon}"),
                network: "alpha".into(),
                event: "purchase".into(),
                url: format!("{network}/pb?who={anon}"),
                created_at: trailmark_server::now_ms(),
            })
            .await
            .unwrap();
    }
    let said = |dns: bool| format!(r#"{{"consent":{{"analytics":true,"attribution":true,"do_not_sell":{dns}}}}}"#);
    store
        .insert(vec![
            NewEvent { context: said(true), ..event(1) },
            NewEvent { anonymous_id: "anon-in".into(), context: said(false), ..event(2) },
        ])
        .await
        .unwrap();
    store.insert(vec![NewEvent { anonymous_id: "anon-out".into(), context: said(true), ..event(3) }]).await.unwrap();

    let mut config = ServerConfig::new().with_app("app", "secret");
    config.postbacks = vec![trailmark_server::domain::postbacks::PostbackConfig {
        network: "alpha".into(),
        url: format!("{network}/pb?e={{event}}"),
        events: vec![],
    }];
    let (_router, handle) = ServerBuilder::new(config).storage(store.clone()).build().unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let states = || -> Vec<(String, String)> {
        let mut stmt = conn.prepare("SELECT anonymous_id, state FROM postbacks ORDER BY anonymous_id").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().collect::<Result<_, _>>().unwrap()
    };
    for _ in 0..2000 {
        if states().iter().all(|(_, s)| s != "pending") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(states(), [("anon-in".to_owned(), "delivered".to_owned()), ("anon-out".into(), "withheld".into())]);
    assert_eq!(*hits.lock().unwrap(), ["who=anon-in"]);
    let why: String = conn
        .query_row("SELECT error FROM postback_attempts WHERE anonymous_id = 'anon-out'", [], |r| r.get(0))
        .unwrap();
    assert!(why.contains("do-not-sell"), "{why}");
    handle.shutdown().await;
}
