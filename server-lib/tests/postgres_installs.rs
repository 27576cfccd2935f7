//! PostgreSQL's install path: the plan of the lookup every install makes, and installs
//! stored together in shared commits. Needs PostgreSQL (`TM_POSTGRES_URL`,
//! as `./tests/run.sh services` sets it); without it the test passes with a note, unless
//! `TM_REQUIRE_SERVICES` is set.
#![cfg(feature = "postgres")]

use std::time::{Duration, Instant};

use trailmark_core::protocol::AttributionResult;
use trailmark_server::storage::postgres::{LAST_INSTALL_SQL, PostgresStorage};
use trailmark_server::storage::{
    DeletionAudit, DeviceKeys, InstallRecord, InstallStore, PostbackRecord, Subject, Tombstones, Touchpoint,
};

mod stores;

/// The plan of the device's last install, planned with its values as the store sends it (an
/// unnamed statement), for a device with an anonymous id and an advertising id.
async fn last_install_plan(client: &tokio_postgres::Client) -> String {
    let sql = LAST_INSTALL_SQL
        .replace("$1", "'app'")
        .replace("$2", "'a17'")
        .replace("$3", "NULL")
        .replace("$4", "NULL")
        .replace("$5", "'g17'")
        .replace("$6", "NULL");
    let rows = client.query(&format!("EXPLAIN {sql}"), &[]).await.unwrap();
    rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
}

/// The lookup searches the keys' own indexes, not `installs_time (app_id, install_ts)` (every
/// install of the app): before the table's first `ANALYZE` (a new deployment's first minute,
/// when PostgreSQL has no statistics to tell the `app_id` indexes apart) and after it.
#[tokio::test]
async fn the_last_install_lookup_searches_the_keys_indexes() {
    let Some(url) = stores::postgres_url() else { return };
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let store = PostgresStorage::connect(&url, 1, Some(&schema)).await.unwrap();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    // No statistics until the test asks for them (DDL later would also drop cached plans).
    client.batch_execute(&format!("ALTER TABLE {schema}.installs SET (autovacuum_enabled = false)")).await.unwrap();
    // The first lookups while the table is empty: PostgreSQL plans a prepared statement with
    // its values five times, then may settle on a generic plan made now, without statistics.
    let keys = |n: u32| DeviceKeys {
        anonymous_id: format!("a{n}"),
        idfa: None,
        idfv: None,
        gaid: Some(format!("g{n}")),
        android_id: None,
    };
    for n in 1..=8 {
        assert!(store.last_install("app".into(), keys(n)).await.unwrap().is_none());
    }
    let organic = serde_json::to_string(&AttributionResult::organic(Default::default())).unwrap().replace('\'', "''");
    client
        .batch_execute(&format!(
            "SET search_path = {schema};
             INSERT INTO installs (app_id, event_id, anonymous_id, platform, gaid, install_ts, received_at, kind,
                                   match_type, rejected, result, audit)
             SELECT 'app', 'e' || n, 'a' || n, 'android', 'g' || n, n, n, 'install', 'organic', false, '{organic}', '{{}}'
               FROM generate_series(1, 3000) AS n;"
        ))
        .await
        .unwrap();
    let before = last_install_plan(&client).await;

    // Then on 3,000 installs: no lookup may read the installs of installs_time.
    for n in 1..=12 {
        let found = store.last_install("app".into(), keys(n)).await.unwrap().expect("the device's install");
        assert_eq!(found.event_id, format!("e{n}"));
        let lookup = store.install_lookup("app".into(), "new".into(), keys(n)).await.unwrap();
        assert_eq!(lookup.last_install.map(|i| i.event_id), Some(format!("e{n}")));
    }
    drop(store);
    let stat = |column: &'static str, index: &'static str| {
        let (client, schema) = (&client, &schema);
        async move {
            let row = client
                .query_one(
                    &format!(
                        "SELECT coalesce(sum({column}), 0)::bigint FROM pg_stat_user_indexes
                          WHERE schemaname = $1 AND relname = 'installs' AND indexrelname LIKE $2"
                    ),
                    &[schema, &index],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    // The store's connection is closed: its backend reports its statistics as it exits.
    // 8 lookups, then 12 lookups and 12 of both lookups: 44 index scans whichever the plan.
    while stat("idx_scan", "%").await < 44 {
        if Instant::now() > deadline {
            // (A sequential scan of the table would also end here: no index scans counted.)
            let rows = client
                .query(
                    "SELECT indexrelname::text, idx_scan, idx_tup_read FROM pg_stat_user_indexes WHERE schemaname = $1",
                    &[&schema],
                )
                .await
                .unwrap();
            let seen: Vec<(String, i64, i64)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
            panic!("no index statistics of the lookups after 15 s: {seen:?}");
        }
        client.batch_execute("SELECT pg_stat_clear_snapshot()").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stat("idx_tup_read", "installs_time").await, 0, "a lookup walked installs_time (the app's installs)");
    client.batch_execute("ANALYZE installs").await.unwrap();
    let after = last_install_plan(&client).await;
    for (when, plan) in [("before ANALYZE", &before), ("after ANALYZE", &after)] {
        assert!(!plan.contains("installs_time"), "{when}: the lookup walks installs_time:\n{plan}");
        assert!(!plan.contains("Seq Scan"), "{when}: the lookup scans the table:\n{plan}");
        for index in ["installs_anonymous_id", "installs_gaid"] {
            assert!(plan.contains(index), "{when}: the lookup does not search {index}:\n{plan}");
        }
        // The absent keys' arms are dropped.
        assert!(!plan.contains("installs_idfa"), "{when}: {plan}");
    }
    client.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

/// An install of device `n` with its touchpoint and a postback.
fn install(n: u32, event_id: &str) -> (InstallRecord, Touchpoint, PostbackRecord) {
    let install = InstallRecord {
        app_id: "app".into(),
        event_id: event_id.into(),
        anonymous_id: format!("a{n}"),
        platform: "android".into(),
        idfa: None,
        idfv: None,
        gaid: Some(format!("g{n}")),
        android_id: None,
        install_ts: 1_000 + i64::from(n),
        received_at: 1_000 + i64::from(n),
        kind: "install".into(),
        result: AttributionResult::organic(Default::default()),
        audit: serde_json::json!({}),
        ip_enc: None,
        ids_enc: None,
        rejected_credit: None,
    };
    let touch = Touchpoint {
        app_id: "app".into(),
        anonymous_id: format!("a{n}"),
        ts: 900,
        click_id: format!("c{n}"),
        link_id: "l".into(),
        campaign_id: "cmp".into(),
        network: "meta".into(),
        kind: "install".into(),
        source_event_id: event_id.into(),
    };
    let postback = PostbackRecord {
        app_id: "app".into(),
        anonymous_id: format!("a{n}"),
        event_id: event_id.into(),
        network: "meta".into(),
        event: "install".into(),
        url: format!("https://pb.example/{n}"),
        created_at: 1_000,
    };
    (install, touch, postback)
}

/// Installs arriving together share a transaction; one that PostgreSQL refuses (text with a
/// NUL byte) fails alone: the others of its batch are stored, each once, with their rows.
/// One thread: every save is queued before the writer runs, so they form one batch.
#[tokio::test(flavor = "current_thread")]
async fn one_refused_install_does_not_fail_the_others_of_its_commit() {
    let Some(f) = stores::postgres().await else { return };
    let store = &*f.store;
    let saves = (1..=24u32).map(|n| {
        let event_id = if n == 12 { "bad\0id".to_owned() } else { format!("e{n}") };
        let (i, t, p) = install(n, &event_id);
        store.save_install(i, Some(t), None, vec![p])
    });
    let answers = futures_util::future::join_all(saves).await;
    for (n, answer) in (1..=24u32).zip(answers) {
        if n == 12 {
            assert!(answer.is_err(), "the install with a NUL byte was stored: {answer:?}");
            continue;
        }
        let ids = answer.unwrap().expect("a new install");
        assert_eq!(ids.len(), 1);
        let stored = store.install_by_event(Some("app".into()), format!("e{n}")).await.unwrap();
        assert_eq!(stored.map(|i| i.anonymous_id), Some(format!("a{n}")));
        let touches = store.conversion_touchpoints("app".into(), format!("a{n}"), None, 0, i64::MAX).await.unwrap();
        assert_eq!(touches.len(), 1, "device a{n}'s touchpoint");
    }
}

/// Saves of one event id in one batch (one thread: all queued before the writer runs): the
/// first queued writes it, whichever device it is from and wherever the batch's order puts it.
#[tokio::test(flavor = "current_thread")]
async fn of_two_saves_of_one_install_in_a_batch_the_first_writes_it() {
    let Some(f) = stores::postgres().await else { return };
    let store = &*f.store;
    // e30 from device a30 first, then again from a30 and from a1 (sorted before a30).
    let order = (1..=24u32).chain([30, 1, 30]).chain(25..=29);
    let saves = order.enumerate().map(|(k, n)| {
        let event_id = if n == 30 || k == 25 { "e30".to_owned() } else { format!("e{n}") };
        let (mut i, t, p) = install(n, &event_id);
        i.received_at = k as i64;
        store.save_install(i, Some(t), None, vec![p])
    });
    let answers: Vec<Option<Vec<i64>>> =
        futures_util::future::join_all(saves).await.into_iter().map(|a| a.unwrap()).collect();
    // Each written install's postback has an id of its own; its touchpoint is stored.
    let ids: std::collections::BTreeSet<i64> = answers.iter().flatten().flatten().copied().collect();
    assert_eq!(ids.len(), 30);
    for n in 1..=30 {
        let touches = store.conversion_touchpoints("app".into(), format!("a{n}"), None, 0, i64::MAX).await.unwrap();
        assert_eq!(touches.len(), 1, "device a{n}'s touchpoint");
    }
    let answers: Vec<bool> = answers.iter().map(Option::is_some).collect();
    let mut expected = vec![true; 32];
    (expected[25], expected[26]) = (false, false);
    assert_eq!(answers, expected);
    let stored = store.install_by_event(Some("app".into()), "e30".into()).await.unwrap().unwrap();
    assert_eq!((stored.anonymous_id.as_str(), stored.received_at), ("a30", 24), "the first save of e30 is stored");
}

/// A deletion waits for the installs queued before it: they are committed, then deleted with
/// their touchpoints and postbacks. One thread: the saves are queued before the deletion's
/// barrier. Another session holds the row the batch's trigger writes for device a3
/// (`dim_users`) until the batch waits for it and the deletion has had half a second: a
/// deletion that did not wait would finish meanwhile, finding nothing of a3.
#[tokio::test(flavor = "current_thread")]
async fn a_deletion_sees_the_installs_queued_before_it() {
    let Some(f) = stores::postgres().await else { return };
    let store = &*f.store;
    let stores::Place::Postgres { url, schema } = &f.place else { unreachable!() };
    let (blocker, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    blocker
        .batch_execute(&format!(
            "SET search_path = {schema}; BEGIN;
             INSERT INTO dim_users (app_id, anonymous_id, first_seen, last_seen) VALUES ('app', 'a3', 0, 0);"
        ))
        .await
        .unwrap();
    let saves = (1..=5u32).map(|n| {
        let (i, t, p) = install(n, &format!("e{n}"));
        store.save_install(i, Some(t), None, vec![p])
    });
    let audit = DeletionAudit {
        receipt_id: uuid::Uuid::new_v4().to_string(),
        subject_kind: "anonymous_id",
        subject_hash: "h".into(),
        requested_at: 1,
        requested_by: "test".into(),
    };
    let delete =
        store.delete_subject(Subject::AnonymousId("a3".into()), audit, Tombstones { key: [7; 32], suppress: false });
    let mut saves = std::pin::pin!(futures_util::future::join_all(saves));
    let mut delete = std::pin::pin!(delete);
    // Until the batch waits for the blocker's transaction, nothing may finish.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        tokio::select! {
            _ = &mut saves => panic!("the installs were stored while their row was held"),
            r = &mut delete => panic!("the deletion finished before the installs queued before it: {r:?}"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        let waiting: i64 = blocker
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype = 'transactionid'
                   AND transactionid::text = txid_current()::text",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the install batch never waited for the held row");
    }
    // The batch is held: the deletion must be waiting for it, not deleting without it.
    tokio::select! {
        r = &mut delete => panic!("the deletion did not wait for the installs queued before it: {r:?}"),
        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
    blocker.batch_execute("ROLLBACK").await.unwrap();
    let (answers, report) = tokio::join!(saves, delete);
    assert!(answers.into_iter().all(|a| a.unwrap().is_some()));
    report.unwrap();
    assert_eq!(store.install_by_event(Some("app".into()), "e3".into()).await.unwrap(), None);
    assert!(store.conversion_touchpoints("app".into(), "a3".into(), None, 0, i64::MAX).await.unwrap().is_empty());
    assert!(store.install_by_event(Some("app".into()), "e2".into()).await.unwrap().is_some());
}

/// A batch with an install another instance (or an earlier request) stored already: that one
/// writes nothing — neither the install again nor its touchpoint or postback — and the others
/// of the batch are stored with theirs (one thread: one batch).
#[tokio::test(flavor = "current_thread")]
async fn an_install_stored_before_writes_nothing_in_a_batch() {
    let Some(f) = stores::postgres().await else { return };
    let store = &*f.store;
    let (i, t, p) = install(5, "e5");
    assert!(store.save_install(i, Some(t), None, vec![p]).await.unwrap().is_some());
    let saves = (1..=8u32).map(|n| {
        let (mut i, mut t, p) = install(n, &format!("e{n}"));
        if n == 5 {
            // The same install again, with a touchpoint of another click.
            i.received_at = 99;
            t.click_id = "c-other".into();
        }
        store.save_install(i, Some(t), None, vec![p])
    });
    let answers: Vec<Option<Vec<i64>>> =
        futures_util::future::join_all(saves).await.into_iter().map(|a| a.unwrap()).collect();
    for (n, answer) in (1..=8u32).zip(&answers) {
        assert_eq!(answer.is_some(), n != 5, "e{n}: {answer:?}");
    }
    let stored = store.install_by_event(Some("app".into()), "e5".into()).await.unwrap().unwrap();
    assert_eq!(stored.received_at, 1_005, "the first e5 stays");
    let touches = store.conversion_touchpoints("app".into(), "a5".into(), None, 0, i64::MAX).await.unwrap();
    assert_eq!(touches.iter().map(|t| t.click_id.as_str()).collect::<Vec<_>>(), ["c5"]);
    for n in [1u32, 8] {
        let touches = store.conversion_touchpoints("app".into(), format!("a{n}"), None, 0, i64::MAX).await.unwrap();
        assert_eq!(touches.len(), 1, "device a{n}'s touchpoint");
    }
}
