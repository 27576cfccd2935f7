//! The storage conformance suite: the same checks against every `Storage` implementation —
//! the embedded SQLite store always, PostgreSQL when `TM_POSTGRES_URL` names a server
//! (`./tests/run.sh services` starts one; with `TM_REQUIRE_SERVICES=1` a missing URL fails).

use std::sync::Arc;

use serde_json::json;
use trailmark_server::storage::{
    Campaign, ClickRecord, DeletionAudit, Destinations, LinkAudit, LinkRecord, NewEvent, Storage, Subject, Utm,
};

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

fn link(id: &str, code: &str, enabled: bool, at: i64) -> LinkRecord {
    LinkRecord {
        link_id: id.into(),
        code: code.into(),
        campaign_id: "cmp_1".into(),
        app_id: "a".into(),
        network: "meta".into(),
        utm: Utm { source: Some("meta".into()), ..Default::default() },
        destinations: Destinations { ios: None, android: None, web: "https://shop.example/".into() },
        deep_link: None,
        enabled,
        created_at: 1,
        updated_at: at,
    }
}

fn click(id: &str, device: Option<&str>, ts: i64) -> ClickRecord {
    ClickRecord {
        click_id: id.into(),
        kind: "click".into(),
        app_id: "a".into(),
        link_id: "lnk_1".into(),
        campaign_id: "cmp_1".into(),
        ts,
        ip_enc: Some(vec![9, 9]),
        user_agent: Some("UA".into()),
        os: Some("Android".into()),
        device_id: device.map(Into::into),
        device_kind: device.map(|_| "gaid".into()),
        network_ids: json!({"gclid": "G-1"}),
        sub_params: json!({"sub1": "x"}),
        flags: 2,
        source: "redirect".into(),
        ..Default::default()
    }
}

/// Campaigns, links with their audit log, and clicks.
async fn link_suite(store: Arc<dyn Storage>) {
    let campaign = Campaign {
        campaign_id: "cmp_1".into(),
        app_id: "a".into(),
        name: "Spring".into(),
        network: "meta".into(),
        created_at: 1,
    };
    store.save_campaign(campaign.clone()).await.unwrap();
    assert!(store.save_campaign(campaign.clone()).await.is_err(), "a campaign id is unique");
    let audit = |action: &str, at: i64, before: Option<serde_json::Value>| LinkAudit {
        link_id: "lnk_1".into(),
        at,
        actor: "admin-key".into(),
        action: action.into(),
        before,
        after: json!({"at": at}),
    };
    store.save_link(link("lnk_1", "AbC12345", true, 1), audit("create", 1, None)).await.unwrap();
    store
        .save_link(
            link("lnk_2", "ZZZ99999", true, 2),
            LinkAudit { link_id: "lnk_2".into(), ..audit("create", 2, None) },
        )
        .await
        .unwrap();
    store
        .save_link(link("lnk_1", "AbC12345", false, 3), audit("disable", 3, Some(json!({"enabled": true}))))
        .await
        .unwrap();
    let (campaigns, links) = store.load_links().await.unwrap();
    assert_eq!(campaigns, vec![campaign]);
    assert_eq!(
        links.iter().map(|l| (l.link_id.as_str(), l.enabled)).collect::<Vec<_>>(),
        [("lnk_1", false), ("lnk_2", true)]
    );
    assert_eq!(links[0], link("lnk_1", "AbC12345", false, 3));
    let log = store.link_audit("lnk_1".into()).await.unwrap();
    assert_eq!(log.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(), ["create", "disable"]);
    assert_eq!(log[1].before, Some(json!({"enabled": true})));

    // Clicks: written behind, read back whole, found by id, deleted with their device.
    store.record_touch(click("c1", Some("dev-1"), 100)).unwrap();
    store.record_touch(click("c2", None, 200)).unwrap();
    store.record_touch(click("c1", Some("dev-1"), 100)).unwrap();
    assert_eq!(store.click_params("c2".into()).await.unwrap(), Some((json!({"gclid": "G-1"}), json!({"sub1": "x"}))));
    assert_eq!(store.click_params("nope".into()).await.unwrap(), None);
    let touches = store.load_touches(0).await.unwrap();
    assert_eq!(touches, vec![click("c1", Some("dev-1"), 100), click("c2", None, 200)]);
    assert_eq!(store.load_touches(150).await.unwrap().len(), 1);
    let report = store.delete_subject(Subject::DeviceId("DEV-1".into()), audit_of("device_id")).await.unwrap();
    assert!(report.click_ids.contains(&"c1".to_owned()), "{report:?}");
    assert_eq!(store.load_touches(0).await.unwrap().len(), 1);
}

fn audit_of(kind: &'static str) -> DeletionAudit {
    audit(kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_passes_the_storage_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        Arc::new(trailmark_server::SqliteStorage::open(dir.path().join("s.db"), Default::default(), 64, 1000).unwrap());
    suite(store.clone()).await;
    link_suite(store).await;
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
    let store = Arc::new(store);
    suite(store.clone()).await;
    link_suite(store).await;
}
