//! The storage conformance suite: the same checks against every `Storage` implementation —
//! the embedded SQLite store always, PostgreSQL when `TM_POSTGRES_URL` names a server
//! (`./tests/run.sh services` starts one; with `TM_REQUIRE_SERVICES=1` a missing URL fails).

use std::sync::Arc;

use serde_json::json;
use trailmark_core::protocol::{AttributionResult, MatchType};
use trailmark_server::storage::ConversionCredit;
use trailmark_server::storage::{
    Campaign, ClickParams, ClickRecord, DeletionAudit, Destinations, DeviceKeys, FraudAlert, InstallCount,
    InstallLookup, InstallRecord, LinkAudit, LinkCatalog, LinkRecord, NewEvent, PostbackAttempt, PostbackRecord,
    Reengagement, ReengagementFacts, Storage, Subject, Touchpoint, Utm,
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
    let LinkCatalog { campaigns, links } = store.load_links().await.unwrap();
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
    assert_eq!(
        store.click_params("c2".into()).await.unwrap(),
        Some(ClickParams { network_ids: json!({"gclid": "G-1"}), sub_params: json!({"sub1": "x"}) })
    );
    assert_eq!(store.click_params("nope".into()).await.unwrap(), None);
    let touches = store.load_touches(0).await.unwrap();
    assert_eq!(touches, vec![click("c1", Some("dev-1"), 100), click("c2", None, 200)]);
    assert_eq!(store.load_touches(150).await.unwrap().len(), 1);
    let report = store.delete_subject(Subject::DeviceId("DEV-1".into()), audit_of("device_id")).await.unwrap();
    assert!(report.click_ids.contains(&"c1".to_owned()), "{report:?}");
    assert_eq!(store.load_touches(0).await.unwrap().len(), 1);
}

fn install(event_id: &str, anon: &str, gaid: Option<&str>, ts: i64, kind: &str, click: Option<&str>) -> InstallRecord {
    let mut result = AttributionResult::organic(Default::default());
    if let Some(c) = click {
        result.attributed = true;
        result.match_type = MatchType::DeviceId;
        result.confidence = 1.0;
        result.campaign_id = Some("cmp_1".into());
        result.link_id = Some("lnk_1".into());
        result.click_id = Some(c.into());
        result.network = Some("meta".into());
    }
    InstallRecord {
        app_id: "a".into(),
        event_id: event_id.into(),
        anonymous_id: anon.into(),
        platform: "android".into(),
        idfa: None,
        idfv: None,
        gaid: gaid.map(Into::into),
        android_id: None,
        install_ts: ts,
        received_at: ts,
        kind: kind.into(),
        result,
        audit: json!({"candidates": []}),
        ip_enc: None,
    }
}

/// Installs with their touchpoint, alert and postbacks; lookups; the burst baseline; deletion.
async fn install_suite(store: Arc<dyn Storage>) {
    const HOUR: i64 = 3_600_000;
    store.record_touch(click("c9", Some("gaid-9"), 5 * HOUR)).unwrap();
    let first = install("i1", "anon-9", Some("gaid-9"), 5 * HOUR + 60_000, "install", Some("c9"));
    let touchpoint = Touchpoint {
        app_id: "a".into(),
        anonymous_id: "anon-9".into(),
        ts: 5 * HOUR,
        click_id: "c9".into(),
        link_id: "lnk_1".into(),
        campaign_id: "cmp_1".into(),
        network: "meta".into(),
        kind: "install".into(),
        source_event_id: "i1".into(),
    };
    let alert = FraudAlert {
        rule: "install_burst".into(),
        app_id: "a".into(),
        campaign_id: "cmp_1".into(),
        at: 5 * HOUR,
        detail: json!({"installs": 9}),
    };
    let postback = PostbackRecord {
        app_id: "a".into(),
        anonymous_id: "anon-9".into(),
        event_id: "i1".into(),
        network: "meta".into(),
        event: "install".into(),
        url: "https://pb.example/?c=c9".into(),
        created_at: 5 * HOUR,
    };
    let ids = store
        .save_install(first.clone(), Some(touchpoint.clone()), Some(alert), vec![postback.clone(), postback])
        .await
        .unwrap()
        .expect("new");
    assert_eq!(ids.len(), 2);
    assert!(ids[1] > ids[0]);
    // The same install again (a retry, or another instance): nothing is written.
    assert_eq!(store.save_install(first.clone(), Some(touchpoint), None, Vec::new()).await.unwrap(), None);
    assert_eq!(store.install_by_event(Some("a".into()), "i1".into()).await.unwrap(), Some(first.clone()));
    assert_eq!(store.install_by_event(None, "i1".into()).await.unwrap(), Some(first.clone()));
    assert_eq!(store.install_by_event(Some("b".into()), "i1".into()).await.unwrap(), None);
    // A reinstall is not a counted install; the latest counted one is found by any key.
    let again = install("i2", "anon-10", Some("gaid-9"), 9 * HOUR, "reinstall", None);
    store.save_install(again, None, None, Vec::new()).await.unwrap().expect("new");
    let keys = DeviceKeys { anonymous_id: "anon-new".into(), gaid: Some("gaid-9".into()), ..Default::default() };
    assert_eq!(store.last_install("a".into(), keys.clone()).await.unwrap(), Some(first.clone()));
    let lookup = store.install_lookup("a".into(), "i3".into(), keys).await.unwrap();
    assert_eq!(lookup, InstallLookup { existing: None, last_install: Some(first.clone()) });
    let lookup = store.install_lookup("a".into(), "i2".into(), DeviceKeys::default()).await.unwrap();
    assert_eq!(lookup.existing.map(|d| d.kind), Some("reinstall".into()));
    assert_eq!(
        store.install_counts(0).await.unwrap(),
        vec![InstallCount { campaign_id: "cmp_1".into(), hour: 5 * HOUR, installs: 1 }]
    );
    // Deleting the device: its installs, and the click its install was matched to.
    let report = store.delete_subject(Subject::DeviceId("GAID-9".into()), audit("device_id")).await.unwrap();
    assert!(report.click_ids.contains(&"c9".to_owned()), "{report:?}");
    assert_eq!(store.install_by_event(None, "i1".into()).await.unwrap(), None);
    assert_eq!(store.install_by_event(None, "i2".into()).await.unwrap(), None);
    assert!(report.rows >= 6, "2 installs, a touchpoint, 2 postbacks, a click: {report:?}");
}

fn touch(anon: &str, click: &str, ts: i64, kind: &str) -> Touchpoint {
    Touchpoint {
        app_id: "c".into(),
        anonymous_id: anon.into(),
        ts,
        click_id: click.into(),
        link_id: "lnk_1".into(),
        campaign_id: "cmp_1".into(),
        network: "meta".into(),
        kind: kind.into(),
        source_event_id: format!("src-{click}"),
    }
}

/// Touchpoints across a user's devices, re-engagements, conversion credit once, postbacks.
async fn conversion_suite(store: Arc<dyn Storage>) {
    // Two devices of user u7 (paired by an event), a third device of someone else.
    store
        .insert(vec![
            event("c", "ev-1", "dev-a", Some("u7"), None, 50),
            event("c", "ev-2", "dev-b", Some("u7"), None, 60),
        ])
        .await
        .unwrap();
    let fresh = store
        .save_touchpoints(
            vec![
                touch("dev-a", "k1", 10, "click"),
                touch("dev-b", "k2", 20, "click"),
                touch("dev-a", "k1", 30, "install"),
                touch("dev-z", "k3", 25, "click"),
                touch("dev-a", "k1", 10, "click"),
            ],
            vec![Reengagement {
                app_id: "c".into(),
                event_id: "open-1".into(),
                anonymous_id: "dev-a".into(),
                click_id: "k1".into(),
                link_id: "lnk_1".into(),
                campaign_id: "cmp_1".into(),
                network: "meta".into(),
                click_ts: 10,
                open_ts: 40,
                inactive_ms: Some(1000),
            }],
        )
        .await
        .unwrap();
    assert_eq!(fresh, [true]);
    let again = store.save_touchpoints(Vec::new(), vec![]).await.unwrap();
    assert!(again.is_empty());
    let tps = store.conversion_touchpoints("c".into(), "dev-a".into(), Some("u7".into()), 0, 100).await.unwrap();
    assert_eq!(tps.iter().map(|t| (t.click_id.as_str(), t.ts)).collect::<Vec<_>>(), [("k1", 10), ("k2", 20)]);
    let alone = store.conversion_touchpoints("c".into(), "dev-a".into(), None, 15, 100).await.unwrap();
    assert_eq!(alone.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>(), ["install"], "in the window only");
    // Re-engagement facts: no install here; the last activity before 55 is ev-1 at 50.
    let facts = |installed, last_activity| ReengagementFacts { installed, last_activity };
    assert_eq!(store.reengagement_facts("c".into(), "dev-a".into(), 55).await.unwrap(), facts(false, Some(50)));
    assert_eq!(store.reengagement_facts("c".into(), "dev-a".into(), 50).await.unwrap(), facts(false, None));
    // Credit is written once per conversion.
    let credit = |model: &str, click: &str, share: f64| ConversionCredit {
        app_id: "c".into(),
        event_id: "buy-1".into(),
        model: model.into(),
        click_id: Some(click.into()),
        anonymous_id: "dev-a".into(),
        user_id: Some("u7".into()),
        event_type: "purchase".into(),
        ts: 70,
        link_id: Some("lnk_1".into()),
        campaign_id: Some("cmp_1".into()),
        network: Some("meta".into()),
        touch_ts: Some(10),
        credit: share,
        revenue: Some(10.0 * share),
        currency: Some("EUR".into()),
    };
    let rows = vec![credit("last_touch", "k2", 1.0), credit("linear", "k1", 0.5), credit("linear", "k2", 0.5)];
    assert!(store.save_conversion(rows.clone()).await.unwrap());
    assert!(!store.save_conversion(rows).await.unwrap(), "credited before");
    assert!(!store.save_conversion(Vec::new()).await.unwrap());
    // Postbacks: pending until delivered; attempts logged; a deleted postback takes no attempt.
    let pb = |event: &str| PostbackRecord {
        app_id: "c".into(),
        anonymous_id: "dev-a".into(),
        event_id: "buy-1".into(),
        network: "meta".into(),
        event: event.into(),
        url: format!("https://pb.example/{event}"),
        created_at: 70,
    };
    let p1 = store.save_postback(pb("purchase")).await.unwrap();
    let p2 = store.save_postback(pb("install")).await.unwrap();
    let pending = store.pending_postbacks().await.unwrap();
    let mine: Vec<_> = pending.iter().filter(|p| p.app_id == "c").collect();
    assert_eq!(mine.len(), 2);
    assert_eq!((mine[0].id, mine[0].url.as_str(), mine[0].attempts), (p1, "https://pb.example/purchase", 0));
    let attempt = |id: i64, n: u32, status: Option<u16>, state: &str| PostbackAttempt {
        postback_id: id,
        app_id: "c".into(),
        anonymous_id: "dev-a".into(),
        attempt: n,
        status,
        error: status.is_none().then(|| "timeout".into()),
        duration_ms: 5,
        at: 80,
        state: state.into(),
    };
    store.log_postback_attempt(attempt(p1, 1, None, "pending")).await.unwrap();
    assert!(store.postback_pending(p1).await.unwrap());
    store.log_postback_attempt(attempt(p1, 2, Some(200), "delivered")).await.unwrap();
    assert!(!store.postback_pending(p1).await.unwrap());
    assert!(store.postback_pending(p2).await.unwrap());
    // Deleting the user removes credit, touchpoints, re-engagements, postbacks and attempts.
    let report = store.delete_subject(Subject::UserId("u7".into()), audit("user_id")).await.unwrap();
    assert!(report.rows >= 2 + 3 + 1 + 3 + 2 + 2, "{report:?}");
    assert!(!store.postback_pending(p2).await.unwrap());
    store.log_postback_attempt(attempt(p2, 1, Some(500), "pending")).await.unwrap();
    assert!(store.pending_postbacks().await.unwrap().iter().all(|p| p.app_id != "c"));
    assert!(store.conversion_touchpoints("c".into(), "dev-a".into(), None, 0, 100).await.unwrap().is_empty());
    assert_eq!(store.conversion_touchpoints("c".into(), "dev-z".into(), None, 0, 100).await.unwrap().len(), 1);
    let rows = vec![credit("last_touch", "k2", 1.0)];
    assert!(store.save_conversion(rows).await.unwrap(), "the credit is gone with the user");
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
    link_suite(store.clone()).await;
    install_suite(store.clone()).await;
    conversion_suite(store).await;
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
    link_suite(store.clone()).await;
    install_suite(store.clone()).await;
    conversion_suite(store).await;
}
