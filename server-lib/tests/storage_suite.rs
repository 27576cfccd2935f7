//! The storage conformance suite: the same checks against every `Storage` implementation,
//! one named test per check and store (`sqlite::dedup_by_event_id`,
//! `postgres::dedup_by_event_id`, …), each on a fresh store. The PostgreSQL tests need
//! `TM_POSTGRES_URL` (`./tests/run.sh services` sets it); without it they pass with a note,
//! unless `TM_REQUIRE_SERVICES` is set.

use serde_json::json;
use trailmark_core::protocol::{AttributionResult, MatchType};
use trailmark_server::storage::{AdIdUpdate, OlapLease, OlapPage, RetentionCutoffs};
use trailmark_server::storage::{
    Campaign, ClickParams, ClickRecord, ConversionCredit, DeletionAudit, Destinations, DeviceKeys, FraudAlert,
    ID_TABLES, InstallCount, InstallLookup, InstallRecord, LinkAudit, LinkCatalog, LinkRecord, NewEvent,
    PostbackAttempt, PostbackRecord, Reengagement, ReengagementFacts, Screened, Storage, Subject, TestDevice,
    Tombstones, Touchpoint, UserLink, Utm,
};

mod stores;

use stores::Fixture;

/// Expands to a module named `$backend` with one `#[tokio::test]` per check, each running the
/// check (a function of this file taking a `&Fixture`) on a store from `$open` (an async
/// function answering `None` when the store is not available: the test passes with a note).
macro_rules! storage_suite {
    ($backend:ident, $open:path) => {
        storage_suite!(@module $backend, $open,
            dedup_by_event_id,
            recent_events_newest_first_per_app,
            deleting_a_user_takes_its_anonymous_ids_in_the_same_app,
            deleting_a_device_compares_its_stored_form,
            deleting_a_user_compares_exactly,
            deleting_nothing_is_fine,
            a_deletion_leaves_tombstones_and_suppressions,
            a_second_instance_starts_on_the_same_data,
            campaigns_and_links_with_their_audit_log,
            clicks_are_written_behind_and_read_back_whole,
            clicks_go_with_their_device,
            an_install_is_saved_once_with_its_touchpoint_alert_and_postbacks,
            the_last_counted_install_is_found_by_any_key,
            installs_saved_at_once_are_each_stored_once,
            install_counts_per_campaign_and_hour,
            deleting_a_device_takes_its_installs_and_their_clicks,
            touchpoints_across_a_users_devices,
            reengagement_facts_before_a_time,
            a_conversion_is_credited_once,
            postbacks_stay_pending_until_delivered,
            the_latest_context_is_the_newest_event_of_the_device_or_user,
            identifier_rows_are_read_in_key_order_and_rewritten,
            test_devices_are_added_renamed_listed_and_removed,
            deleting_a_user_takes_its_conversion_data,
            the_identity_map_stays_flat_and_first_links_win,
            conversion_touchpoints_cross_aliased_user_ids,
            deleting_a_user_takes_its_identity_links,
            a_late_advertising_id_is_attached_where_there_is_none,
            the_olap_outbox_notes_changes_while_on,
        );
    };
    (@module $backend:ident, $open:path, $($check:ident),+ $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $check() {
                    if let Some(fixture) = $open().await {
                        super::$check(&fixture).await;
                    }
                }
            )+
        }
    };
}

storage_suite!(sqlite, crate::stores::sqlite);
#[cfg(feature = "postgres")]
storage_suite!(postgres, crate::stores::postgres);

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
        ids_enc: None,
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

/// The key the suite's tombstones and suppressions are hashed with.
const TOMB_KEY: [u8; 32] = [7; 32];

fn tomb(suppress: bool) -> Tombstones {
    Tombstones { key: TOMB_KEY, suppress }
}

async fn count(store: &dyn Storage, subject: Subject) -> usize {
    store.recent_events(None, subject, 1000).await.unwrap().len()
}

/// Two events of anon-1 in app a (one with user u1), a duplicate in the batch, and app b's e1.
async fn first_events(store: &dyn Storage) -> Vec<bool> {
    store
        .insert(vec![
            event("a", "e1", "anon-1", None, None, 10),
            event("a", "e2", "anon-1", Some("u1"), None, 20),
            event("a", "e1", "anon-1", None, None, 10),
            event("b", "e1", "anon-9", None, None, 10),
        ])
        .await
        .unwrap()
}

/// Dedup: new, duplicate in the same batch, duplicate of a stored event, another app.
async fn dedup_by_event_id(f: &Fixture) {
    let store = &*f.store;
    assert_eq!(first_events(store).await, [true, true, false, true]);
    let again = store.insert(vec![event("a", "e2", "anon-1", Some("u1"), None, 20)]).await.unwrap();
    assert_eq!(again, [false]);
    assert_eq!(store.insert(Vec::new()).await.unwrap(), Vec::<bool>::new());
    assert_eq!(store.backlog(), 0);
}

/// The inspector: newest first, per app when asked.
async fn recent_events_newest_first_per_app(f: &Fixture) {
    let store = &*f.store;
    first_events(store).await;
    let seen = store.recent_events(None, Subject::AnonymousId("anon-1".into()), 10).await.unwrap();
    assert_eq!(seen.iter().map(|e| e.event_id.as_str()).collect::<Vec<_>>(), ["e2", "e1"]);
    assert_eq!(seen[0].user_id.as_deref(), Some("u1"));
    assert_eq!(seen[1].properties, r#"{"n":1}"#);
    let in_b = store.recent_events(Some("b".into()), Subject::AnonymousId("anon-9".into()), 10).await.unwrap();
    assert_eq!(in_b.len(), 1);
}

/// The events after [`first_events`]: anon-2 on device DEV-1, anon-1 in app b, user u2.
async fn more_events(store: &dyn Storage) {
    store
        .insert(vec![
            event("a", "e3", "anon-2", None, Some("dev-1"), 30),
            event("b", "e4", "anon-1", None, None, 40),
            event("a", "e5", "anon-3", Some("u2"), None, 50),
        ])
        .await
        .unwrap();
}

/// Deleting a user id takes the anonymous ids seen with it in the same app, not elsewhere.
async fn deleting_a_user_takes_its_anonymous_ids_in_the_same_app(f: &Fixture) {
    let store = &*f.store;
    first_events(store).await;
    more_events(store).await;
    let report = store.delete_subject(Subject::UserId("u1".into()), audit("user_id"), tomb(true)).await.unwrap();
    assert_eq!(report.rows, 2, "e1 and e2 (anon-1 in app a)");
    assert_eq!(count(store, Subject::AnonymousId("anon-1".into())).await, 1, "app b's anon-1 stays");
    assert_eq!(count(store, Subject::UserId("u2".into())).await, 1, "another user stays");
}

/// Device ids are stored in one form (the domain writes them so) and compared exactly: a
/// subject built with `Subject::device` from any case finds them; an id not in that form
/// finds nothing.
async fn deleting_a_device_compares_its_stored_form(f: &Fixture) {
    let store = &*f.store;
    first_events(store).await;
    more_events(store).await;
    let raw = store.delete_subject(Subject::DeviceId("DEV-1".into()), audit("device_id"), tomb(true)).await.unwrap();
    assert_eq!(raw.rows, 0, "compared exactly: {raw:?}");
    let report = store.delete_subject(Subject::device(" DEV-1\n"), audit("device_id"), tomb(true)).await.unwrap();
    assert_eq!(report.rows, 1);
    assert_eq!(count(store, Subject::AnonymousId("anon-2".into())).await, 0);
}

/// User ids are compared exactly: deleting "Alice" leaves "alice" (another person).
async fn deleting_a_user_compares_exactly(f: &Fixture) {
    let store = &*f.store;
    store
        .insert(vec![
            event("a", "e1", "anon-1", Some("Alice"), None, 10),
            event("a", "e2", "anon-2", Some("alice"), None, 20),
            event("a", "e3", "anon-3", Some("ALICE"), None, 30),
        ])
        .await
        .unwrap();
    let report = store.delete_subject(Subject::UserId("Alice".into()), audit("user_id"), tomb(true)).await.unwrap();
    assert_eq!(report.rows, 1, "{report:?}");
    assert_eq!(count(store, Subject::UserId("Alice".into())).await, 0);
    assert_eq!(count(store, Subject::UserId("alice".into())).await, 1);
    assert_eq!(count(store, Subject::UserId("ALICE".into())).await, 1);
    assert_eq!(count(store, Subject::AnonymousId("anon-2".into())).await, 1);
}

/// A deletion tombstones the deleted events (keyed hashes) and suppresses the subject and the
/// anonymous ids found with it; suppressions are listed and lifted (by receipt or identifier),
/// tombstones stay; `suppress: false` leaves tombstones only.
async fn a_deletion_leaves_tombstones_and_suppressions(f: &Fixture) {
    let store = &*f.store;
    first_events(store).await;
    more_events(store).await;
    let audit_u1 = audit("user_id");
    let receipt = audit_u1.receipt_id.clone();
    store.delete_subject(Subject::UserId("u1".into()), audit_u1, tomb(true)).await.unwrap();
    let t = tomb(true);
    let events = vec![t.event("a", "e1"), t.event("a", "E2"), t.event("a", "e3"), t.event("b", "e1")];
    let ids = vec![
        t.suppression("user_id", "a", "u1"),
        t.suppression("anonymous_id", "a", "anon-1"),
        t.suppression("user_id", "a", "u2"),
        t.suppression("user_id", "a", "U1"),
        t.suppression("user_id", "b", "u1"),
    ];
    let screened = store.screen("a".into(), events.clone(), ids.clone()).await.unwrap();
    let mut tombstoned = screened.events.clone();
    tombstoned.sort();
    let mut expected = vec![events[0].clone(), events[1].clone()];
    expected.sort();
    assert_eq!(tombstoned, expected, "e1 and e2 of app a, not e3, not app b's e1");
    let mut suppressed = screened.ids.clone();
    suppressed.sort();
    let mut expected = vec![ids[0].clone(), ids[1].clone()];
    expected.sort();
    assert_eq!(suppressed, expected, "u1 and anon-1 in app a; not u2, not U1, not u1 in app b");
    let listed = store.suppressions(10).await.unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.iter().all(|s| s.receipt_id == receipt && s.created_at == 1));
    assert_eq!(store.lift_suppressions(None, vec![ids[1].clone(), ids[2].clone()]).await.unwrap(), 1);
    assert_eq!(store.lift_suppressions(Some(receipt), vec![]).await.unwrap(), 1);
    assert_eq!(store.lift_suppressions(Some("nope".into()), vec![]).await.unwrap(), 0);
    let screened = store.screen("a".into(), events.clone(), ids.clone()).await.unwrap();
    assert!(screened.ids.is_empty(), "{screened:?}");
    assert_eq!(screened.events.len(), 2, "tombstones stay: {screened:?}");
    // Without suppression: the events are tombstoned, the identifiers free.
    store.delete_subject(Subject::UserId("u2".into()), audit("user_id"), tomb(false)).await.unwrap();
    let screened =
        store.screen("a".into(), vec![t.event("a", "e5")], vec![t.suppression("user_id", "a", "u2")]).await.unwrap();
    assert_eq!(screened, Screened { events: vec![t.event("a", "e5")], ids: vec![] });
    assert!(store.suppressions(10).await.unwrap().is_empty());
    // A store opened later on the same data screens against them too.
    let again = f.open_again().await;
    let screened = again.screen("a".into(), vec![t.event("a", "e5")], vec![]).await.unwrap();
    assert_eq!(screened.events, vec![t.event("a", "e5")]);
}

/// Deleting what is not there is fine.
async fn deleting_nothing_is_fine(f: &Fixture) {
    let store = &*f.store;
    first_events(store).await;
    let report =
        store.delete_subject(Subject::AnonymousId("nobody".into()), audit("anonymous_id"), tomb(true)).await.unwrap();
    assert_eq!(report.rows, 0);
    assert_eq!(store.backlog(), 0);
}

/// A second instance on the migrated data applies nothing, starts, and sees the first's rows.
async fn a_second_instance_starts_on_the_same_data(f: &Fixture) {
    first_events(&*f.store).await;
    let again = f.open_again().await;
    assert_eq!(count(&*again, Subject::AnonymousId("anon-1".into())).await, 2);
    assert_eq!(again.insert(vec![event("a", "e1", "anon-1", None, None, 10)]).await.unwrap(), [false]);
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
        device_enc: device.map(|_| vec![4, 2]),
        ..Default::default()
    }
}

/// Campaigns (ids unique), links created and replaced, and the links' audit log.
async fn campaigns_and_links_with_their_audit_log(f: &Fixture) {
    let store = &*f.store;
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
}

/// Two clicks (c1 twice: stored once), on dev-1 at 100 and on no device at 200.
fn record_clicks(store: &dyn Storage) {
    store.record_touch(click("c1", Some("dev-1"), 100)).unwrap();
    store.record_touch(click("c2", None, 200)).unwrap();
    store.record_touch(click("c1", Some("dev-1"), 100)).unwrap();
}

/// Clicks: written behind, found by id, read back whole.
async fn clicks_are_written_behind_and_read_back_whole(f: &Fixture) {
    let store = &*f.store;
    record_clicks(store);
    assert_eq!(
        store.click_params("c2".into()).await.unwrap(),
        Some(ClickParams { network_ids: json!({"gclid": "G-1"}), sub_params: json!({"sub1": "x"}) })
    );
    assert_eq!(store.click_params("nope".into()).await.unwrap(), None);
    let touches = store.load_touches(0).await.unwrap();
    assert_eq!(touches, vec![click("c1", Some("dev-1"), 100), click("c2", None, 200)]);
    assert_eq!(store.load_touches(150).await.unwrap().len(), 1);
}

/// Clicks are deleted with their device, including clicks still being written behind their
/// redirect when the deletion arrives.
async fn clicks_go_with_their_device(f: &Fixture) {
    let store = &*f.store;
    record_clicks(store);
    let report = store.delete_subject(Subject::device("DEV-1"), audit("device_id"), tomb(true)).await.unwrap();
    assert!(report.click_ids.contains(&"c1".to_owned()), "{report:?}");
    assert_eq!(store.load_touches(0).await.unwrap().len(), 1);
}

const HOUR: i64 = 3_600_000;

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
        ids_enc: Some(vec![1, 9, 9]),
        rejected_credit: None,
    }
}

/// The install i1 of anon-9 (gaid-9), attributed to click c9, with its touchpoint, an alert and
/// two postbacks; then the reinstall i2 of anon-10 on the same gaid. Returns i1.
async fn installs(store: &dyn Storage) -> InstallRecord {
    store.record_touch(click("c9", Some("gaid-9"), 5 * HOUR)).unwrap();
    // The click is written behind; a click lookup answers once it is stored.
    store.click_params("c9".into()).await.unwrap().expect("stored");
    let first = install("i1", "anon-9", Some("gaid-9"), 5 * HOUR + 60_000, "install", Some("c9"));
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
        .save_install(first.clone(), Some(install_touchpoint()), Some(alert), vec![postback.clone(), postback])
        .await
        .unwrap()
        .expect("new");
    assert_eq!(ids.len(), 2);
    assert!(ids[1] > ids[0]);
    let again = install("i2", "anon-10", Some("gaid-9"), 9 * HOUR, "reinstall", None);
    store.save_install(again, None, None, Vec::new()).await.unwrap().expect("new");
    first
}

fn install_touchpoint() -> Touchpoint {
    Touchpoint {
        app_id: "a".into(),
        anonymous_id: "anon-9".into(),
        ts: 5 * HOUR,
        click_id: "c9".into(),
        link_id: "lnk_1".into(),
        campaign_id: "cmp_1".into(),
        network: "meta".into(),
        kind: "install".into(),
        source_event_id: "i1".into(),
    }
}

/// An install is stored with its touchpoint, alert and postbacks; a retry writes nothing.
async fn an_install_is_saved_once_with_its_touchpoint_alert_and_postbacks(f: &Fixture) {
    let store = &*f.store;
    let first = installs(store).await;
    // The same install again (a retry, or another instance): nothing is written.
    assert_eq!(store.save_install(first.clone(), Some(install_touchpoint()), None, Vec::new()).await.unwrap(), None);
    assert_eq!(store.install_by_event(Some("a".into()), "i1".into()).await.unwrap(), Some(first.clone()));
    assert_eq!(store.install_by_event(None, "i1".into()).await.unwrap(), Some(first.clone()));
    assert_eq!(store.install_by_event(Some("b".into()), "i1".into()).await.unwrap(), None);
}

/// Installs saved at the same moment (a PostgreSQL store commits them together): each is
/// stored once with its touchpoint and postback, and of two saves of one install exactly one
/// writes it.
async fn installs_saved_at_once_are_each_stored_once(f: &Fixture) {
    let store = &*f.store;
    let saves = (0..40u32).map(|k| {
        let n = k % 30;
        let mut i = install(
            &format!("m{n}"),
            &format!("anon-m{n}"),
            Some(&format!("gaid-m{n}")),
            HOUR + i64::from(n),
            "install",
            None,
        );
        i.received_at += i64::from(k);
        let mut t = install_touchpoint();
        t.anonymous_id = i.anonymous_id.clone();
        t.source_event_id = i.event_id.clone();
        let mut p = postback("install");
        p.event_id = i.event_id.clone();
        store.save_install(i, Some(t), None, vec![p])
    });
    let answers = futures_util::future::join_all(saves).await;
    let mut written = vec![0; 30];
    let mut ids = std::collections::BTreeSet::new();
    for (k, answer) in answers.into_iter().enumerate() {
        if let Some(postbacks) = answer.unwrap() {
            written[k % 30] += 1;
            assert_eq!(postbacks.len(), 1);
            assert!(ids.insert(postbacks[0]), "postback id {} given twice", postbacks[0]);
        }
    }
    assert_eq!(written, vec![1; 30], "each install written exactly once");
    for n in 0..30 {
        let stored = store.install_by_event(Some("a".into()), format!("m{n}")).await.unwrap().expect("stored");
        assert_eq!(stored.anonymous_id, format!("anon-m{n}"));
        let touches = store.conversion_touchpoints("a".into(), format!("anon-m{n}"), None, 0, i64::MAX).await.unwrap();
        assert_eq!(touches.len(), 1, "anon-m{n}'s touchpoint");
    }
}

/// A reinstall is not a counted install; the latest counted one is found by any key.
async fn the_last_counted_install_is_found_by_any_key(f: &Fixture) {
    let store = &*f.store;
    let first = installs(store).await;
    let keys = DeviceKeys { anonymous_id: "anon-new".into(), gaid: Some("gaid-9".into()), ..Default::default() };
    assert_eq!(store.last_install("a".into(), keys.clone()).await.unwrap(), Some(first.clone()));
    let lookup = store.install_lookup("a".into(), "i3".into(), keys).await.unwrap();
    assert_eq!(lookup, InstallLookup { existing: None, last_install: Some(first.clone()) });
    let lookup = store.install_lookup("a".into(), "i2".into(), DeviceKeys::default()).await.unwrap();
    assert_eq!(lookup.existing.map(|d| d.kind), Some("reinstall".into()));
}

/// The burst baseline: attributed, counted installs per campaign and hour.
async fn install_counts_per_campaign_and_hour(f: &Fixture) {
    let store = &*f.store;
    installs(store).await;
    assert_eq!(
        store.install_counts(0).await.unwrap(),
        vec![InstallCount { campaign_id: "cmp_1".into(), hour: 5 * HOUR, installs: 1 }]
    );
}

/// Deleting the device: its installs, and the click its install was matched to.
async fn deleting_a_device_takes_its_installs_and_their_clicks(f: &Fixture) {
    let store = &*f.store;
    installs(store).await;
    let report = store.delete_subject(Subject::device("GAID-9"), audit("device_id"), tomb(true)).await.unwrap();
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

/// Two devices of user u7 in app c (paired by events at 50 and 60), their touchpoints (k1 on
/// dev-a, also as its install touchpoint; k2 on dev-b), a third device's (k3 on dev-z), and a
/// re-engagement of dev-a through k1.
async fn user_touchpoints(store: &dyn Storage) {
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
}

/// Touchpoints of every device of the user, in the window, one per click.
async fn touchpoints_across_a_users_devices(f: &Fixture) {
    let store = &*f.store;
    user_touchpoints(store).await;
    let again = store.save_touchpoints(Vec::new(), vec![]).await.unwrap();
    assert!(again.is_empty());
    let tps = store.conversion_touchpoints("c".into(), "dev-a".into(), Some("u7".into()), 0, 100).await.unwrap();
    assert_eq!(tps.iter().map(|t| (t.click_id.as_str(), t.ts)).collect::<Vec<_>>(), [("k1", 10), ("k2", 20)]);
    let alone = store.conversion_touchpoints("c".into(), "dev-a".into(), None, 15, 100).await.unwrap();
    assert_eq!(alone.iter().map(|t| t.kind.as_str()).collect::<Vec<_>>(), ["install"], "in the window only");
}

/// Whether the device has an install, and its last activity (event or install) before a time.
async fn reengagement_facts_before_a_time(f: &Fixture) {
    let store = &*f.store;
    user_touchpoints(store).await;
    let facts = |installed, last_activity| ReengagementFacts { installed, last_activity };
    // No install here; the last activity before 55 is ev-1 at 50.
    assert_eq!(store.reengagement_facts("c".into(), "dev-a".into(), 55).await.unwrap(), facts(false, Some(50)));
    assert_eq!(store.reengagement_facts("c".into(), "dev-a".into(), 50).await.unwrap(), facts(false, None));
    // An install at 45: installed, and the install counts as activity.
    let mut installed = install("inst-a", "dev-a", None, 45, "install", None);
    installed.app_id = "c".into();
    store.save_install(installed, None, None, Vec::new()).await.unwrap().expect("new");
    assert_eq!(store.reengagement_facts("c".into(), "dev-a".into(), 55).await.unwrap(), facts(true, Some(50)));
    assert_eq!(store.reengagement_facts("c".into(), "dev-a".into(), 48).await.unwrap(), facts(true, Some(45)));
    assert_eq!(store.reengagement_facts("c".into(), "dev-b".into(), 55).await.unwrap(), facts(false, None));
}

fn credit(model: &str, click: &str, share: f64) -> ConversionCredit {
    ConversionCredit {
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
    }
}

fn credits() -> Vec<ConversionCredit> {
    vec![credit("last_touch", "k2", 1.0), credit("linear", "k1", 0.5), credit("linear", "k2", 0.5)]
}

/// Credit is written once per conversion.
async fn a_conversion_is_credited_once(f: &Fixture) {
    let store = &*f.store;
    user_touchpoints(store).await;
    assert!(store.save_conversion(credits()).await.unwrap());
    assert!(!store.save_conversion(credits()).await.unwrap(), "credited before");
    assert!(!store.save_conversion(Vec::new()).await.unwrap());
}

fn postback(event: &str) -> PostbackRecord {
    PostbackRecord {
        app_id: "c".into(),
        anonymous_id: "dev-a".into(),
        event_id: "buy-1".into(),
        network: "meta".into(),
        event: event.into(),
        url: format!("https://pb.example/{event}"),
        created_at: 70,
    }
}

fn attempt(id: i64, n: u32, status: Option<u16>, state: &str) -> PostbackAttempt {
    PostbackAttempt {
        postback_id: id,
        app_id: "c".into(),
        anonymous_id: "dev-a".into(),
        attempt: n,
        status,
        error: status.is_none().then(|| "timeout".into()),
        duration_ms: 5,
        at: 80,
        state: state.into(),
    }
}

/// Two postbacks of dev-a; the first failed once, then was delivered. Returns their ids.
async fn postbacks(store: &dyn Storage) -> (i64, i64) {
    let p1 = store.save_postback(postback("purchase")).await.unwrap();
    let p2 = store.save_postback(postback("install")).await.unwrap();
    let pending = store.pending_postbacks().await.unwrap();
    let mine: Vec<_> = pending.iter().filter(|p| p.app_id == "c").collect();
    assert_eq!(mine.len(), 2);
    assert_eq!((mine[0].id, mine[0].url.as_str(), mine[0].attempts), (p1, "https://pb.example/purchase", 0));
    store.log_postback_attempt(attempt(p1, 1, None, "pending")).await.unwrap();
    assert!(store.postback_pending(p1).await.unwrap());
    store.log_postback_attempt(attempt(p1, 2, Some(200), "delivered")).await.unwrap();
    (p1, p2)
}

/// Postbacks: pending until delivered; attempts logged.
async fn postbacks_stay_pending_until_delivered(f: &Fixture) {
    let store = &*f.store;
    let (p1, p2) = postbacks(store).await;
    assert!(!store.postback_pending(p1).await.unwrap());
    assert!(store.postback_pending(p2).await.unwrap());
}

/// Where the latest consent state is read: the newest event (by corrected time, not by
/// arrival) of the device or of the user, in that app only.
async fn the_latest_context_is_the_newest_event_of_the_device_or_user(f: &Fixture) {
    let store = &*f.store;
    let with = |id: &str, anon: &str, user: Option<&str>, at: i64, context: &str| NewEvent {
        context: context.into(),
        ..event("lc", id, anon, user, None, at)
    };
    let latest = |anon: &str, user: Option<&str>| store.latest_context("lc".into(), anon.into(), user.map(Into::into));
    assert!(latest("phone", None).await.unwrap().is_empty());
    let said = |n: i64| format!(r#"{{"consent":{{"do_not_sell":false}},"n":{n}}}"#);
    store
        .insert(vec![
            with("e1", "phone", None, 30, &said(30)),
            with("e2", "phone", None, 10, &said(10)),
            with("e3", "tablet", Some("kim"), 40, &said(40)),
            NewEvent { app_id: "other".into(), ..with("e4", "phone", None, 99, &said(99)) },
            // Newer, but says nothing about consent (a server's own event): not counted.
            with("e5", "phone", Some("kim"), 120, r#"{"app":{"id":"consent"}}"#),
        ])
        .await
        .unwrap();
    assert_eq!(latest("phone", None).await.unwrap(), [said(30), said(10)], "newest first, not last arrived");
    assert_eq!(latest("phone", Some("kim")).await.unwrap(), [said(40), said(30), said(10)], "her other device too");
    assert_eq!(latest("laptop", Some("kim")).await.unwrap(), [said(40)]);
    assert!(latest("laptop", None).await.unwrap().is_empty());
}

/// The identifier pass's storage side: rows that hold identifiers in key order, batch by
/// batch; their rewrite; raw user ids of derived tables found and replaced; the version mark.
async fn identifier_rows_are_read_in_key_order_and_rewritten(f: &Fixture) {
    let store = &*f.store;
    let events = &ID_TABLES[0];
    assert_eq!(events.table, "events");
    store
        .insert(vec![
            event("a", "e2", "anon-1", Some("u-2"), Some("dev-2"), 20),
            event("a", "e1", "anon-1", Some("u-1"), None, 10),
            event("a", "e3", "anon-1", None, None, 30),
            event("b", "e1", "anon-9", None, Some("dev-9"), 40),
        ])
        .await
        .unwrap();
    let first = store.identifier_rows(events, None, 2).await.unwrap();
    let keys: Vec<Vec<String>> = first.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys, vec![vec!["a".to_owned(), "e1".to_owned()], vec!["a".into(), "e2".into()]]);
    assert_eq!(first[1].ids, vec![Some("u-2".into()), Some("dev-2".into())]);
    let rest = store.identifier_rows(events, Some(first[1].key.clone()), 2).await.unwrap();
    assert_eq!(rest.len(), 1, "e3 holds no identifier: {rest:?}");
    assert_eq!(
        (rest[0].key.clone(), rest[0].ids.clone()),
        (vec!["b".into(), "e1".into()], vec![None, Some("dev-9".into())])
    );
    assert!(store.identifier_rows(events, Some(rest[0].key.clone()), 2).await.unwrap().is_empty());
    let mut row = first[1].clone();
    row.ids = vec![Some("h:u2".into()), None];
    row.sealed = Some(vec![2, 7]);
    store.rewrite_identifiers(events, vec![row.clone()]).await.unwrap();
    let again = store.identifier_rows(events, Some(first[0].key.clone()), 1).await.unwrap();
    assert_eq!(again, vec![row]);

    store.save_conversion(credits()).await.unwrap();
    let mut raw = store.raw_user_ids(10).await.unwrap();
    raw.dedup();
    assert_eq!(raw, vec!["u7".to_owned()]);
    let stored = format!("h:{}", "7".repeat(32));
    store.replace_user_ids(vec![("u7".into(), stored.clone())]).await.unwrap();
    assert!(store.raw_user_ids(10).await.unwrap().is_empty());

    assert_eq!(store.identifiers_version().await.unwrap(), None);
    store.set_identifiers_version(3).await.unwrap();
    store.set_identifiers_version(4).await.unwrap();
    assert_eq!(store.identifiers_version().await.unwrap(), Some(4));
}

/// Test devices: added once (a second save renames), listed oldest first, removed.
async fn test_devices_are_added_renamed_listed_and_removed(f: &Fixture) {
    let store = &*f.store;
    let device = |id: &str, label: &str, at: i64| TestDevice {
        device_id: id.into(),
        label: label.into(),
        device_enc: Some(vec![1, 2]),
        created_at: at,
    };
    assert!(store.test_devices().await.unwrap().is_empty());
    assert!(store.save_test_device(device("h:b", "Pixel", 20)).await.unwrap());
    assert!(store.save_test_device(device("h:a", "iPhone", 10)).await.unwrap());
    assert!(!store.save_test_device(device("h:b", "Pixel 8", 30)).await.unwrap(), "renamed, not new");
    let all = store.test_devices().await.unwrap();
    assert_eq!(all, vec![device("h:a", "iPhone", 10), device("h:b", "Pixel 8", 20)]);
    assert!(store.remove_test_device("h:a".into()).await.unwrap());
    assert!(!store.remove_test_device("h:a".into()).await.unwrap());
    assert_eq!(store.test_devices().await.unwrap().len(), 1);
}

/// Deleting the user removes credit, touchpoints, re-engagements, postbacks and attempts; a
/// deleted postback takes no attempt.
async fn deleting_a_user_takes_its_conversion_data(f: &Fixture) {
    let store = &*f.store;
    user_touchpoints(store).await;
    assert!(store.save_conversion(credits()).await.unwrap());
    let (_, p2) = postbacks(store).await;
    let report = store.delete_subject(Subject::UserId("u7".into()), audit("user_id"), tomb(true)).await.unwrap();
    assert!(report.rows >= 2 + 3 + 1 + 3 + 2 + 2, "{report:?}");
    assert!(!store.postback_pending(p2).await.unwrap());
    store.log_postback_attempt(attempt(p2, 1, Some(500), "pending")).await.unwrap();
    assert!(store.pending_postbacks().await.unwrap().iter().all(|p| p.app_id != "c"));
    assert!(store.conversion_touchpoints("c".into(), "dev-a".into(), None, 0, 100).await.unwrap().is_empty());
    assert_eq!(store.conversion_touchpoints("c".into(), "dev-z".into(), None, 0, 100).await.unwrap().len(), 1);
    let rows = vec![credit("last_touch", "k2", 1.0)];
    assert!(store.save_conversion(rows).await.unwrap(), "the credit is gone with the user");
}

fn user_link(app: &str, alias: &str, user: &str) -> UserLink {
    UserLink { app_id: app.into(), alias_user_id: alias.into(), user_id: user.into(), created_at: 1 }
}

async fn sorted_links(store: &dyn Storage, app: &str) -> Vec<(String, String)> {
    let mut links = store.identity_links(app.into()).await.unwrap();
    links.sort();
    links
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
}

/// Links name the final user id: u1 → u2, then u2 → u3 makes u1 → u3; a link to an alias
/// names its user id; a cycle and a second link of the same alias change nothing; per app.
async fn the_identity_map_stays_flat_and_first_links_win(f: &Fixture) {
    let store = &*f.store;
    assert_eq!(store.link_users(vec![user_link("c", "u1", "u2")]).await.unwrap(), 1);
    assert_eq!(store.link_users(vec![user_link("c", "u2", "u3")]).await.unwrap(), 1);
    assert_eq!(sorted_links(store, "c").await, pairs(&[("u1", "u3"), ("u2", "u3")]));
    // u4 → u1 (an alias): names u1's user id.
    assert_eq!(store.link_users(vec![user_link("c", "u4", "u1")]).await.unwrap(), 1);
    // A cycle (u3 → u1, whose user id is u3) and a second link of u1 change nothing.
    let again = vec![user_link("c", "u3", "u1"), user_link("c", "u1", "u9"), user_link("c", "u2", "u3")];
    assert_eq!(store.link_users(again).await.unwrap(), 0);
    assert_eq!(sorted_links(store, "c").await, pairs(&[("u1", "u3"), ("u2", "u3"), ("u4", "u3")]));
    assert!(store.identity_links("other".into()).await.unwrap().is_empty(), "per app");
    // In one call, in order.
    let chain = vec![user_link("d", "x1", "x2"), user_link("d", "x2", "x3")];
    assert_eq!(store.link_users(chain).await.unwrap(), 2);
    assert_eq!(sorted_links(store, "d").await, pairs(&[("x1", "x3"), ("x2", "x3")]));
}

/// A conversion of u8, which u7 became, is credited with the touchpoints of u7's devices; one
/// of u7 with those of u8's (the person is the user id, its final one and that one's aliases).
async fn conversion_touchpoints_cross_aliased_user_ids(f: &Fixture) {
    let store = &*f.store;
    user_touchpoints(store).await;
    store.insert(vec![event("c", "ev-3", "dev-z", Some("u8"), None, 70)]).await.unwrap();
    let clicks = |tps: Vec<Touchpoint>| tps.into_iter().map(|t| t.click_id).collect::<Vec<_>>();
    let before = store.conversion_touchpoints("c".into(), "dev-q".into(), Some("u8".into()), 0, 100).await.unwrap();
    assert_eq!(clicks(before), ["k3"]);
    store.link_users(vec![user_link("c", "u7", "u8")]).await.unwrap();
    let of_u8 = store.conversion_touchpoints("c".into(), "dev-q".into(), Some("u8".into()), 0, 100).await.unwrap();
    assert_eq!(clicks(of_u8), ["k1", "k2", "k3"]);
    let of_u7 = store.conversion_touchpoints("c".into(), "dev-q".into(), Some("u7".into()), 0, 100).await.unwrap();
    assert_eq!(clicks(of_u7), ["k1", "k2", "k3"]);
    let other_app = store.conversion_touchpoints("d".into(), "dev-q".into(), Some("u8".into()), 0, 100).await.unwrap();
    assert!(other_app.is_empty());
}

/// A deleted user leaves no link naming it, as alias or as user id; other links stay.
async fn deleting_a_user_takes_its_identity_links(f: &Fixture) {
    let store = &*f.store;
    let links = vec![user_link("c", "u1", "u2"), user_link("c", "u3", "u2"), user_link("c", "u5", "u6")];
    store.link_users(links).await.unwrap();
    store.delete_subject(Subject::UserId("u1".into()), audit("user_id"), tomb(false)).await.unwrap();
    assert_eq!(sorted_links(store, "c").await, pairs(&[("u3", "u2"), ("u5", "u6")]));
    store.delete_subject(Subject::UserId("u2".into()), audit("user_id"), tomb(false)).await.unwrap();
    assert_eq!(sorted_links(store, "c").await, pairs(&[("u5", "u6")]));
}

/// An advertising id learned after the install goes to the device's install rows that have
/// none in that column (per app), and the install is then found by it.
async fn a_late_advertising_id_is_attached_where_there_is_none(f: &Fixture) {
    let store = &*f.store;
    installs(store).await;
    let update = |app: &str, anon: &str, column: &'static str, value: &str| AdIdUpdate {
        app_id: app.into(),
        anonymous_id: anon.into(),
        column,
        value: value.into(),
    };
    assert_eq!(store.attach_advertising_id(update("a", "anon-9", "idfa", "idfa-9")).await.unwrap(), 1);
    assert_eq!(store.attach_advertising_id(update("a", "anon-9", "idfa", "idfa-other")).await.unwrap(), 0, "kept");
    assert_eq!(store.attach_advertising_id(update("a", "anon-9", "gaid", "gaid-other")).await.unwrap(), 0, "had one");
    assert_eq!(store.attach_advertising_id(update("b", "anon-9", "idfa", "idfa-9")).await.unwrap(), 0, "per app");
    let keys = DeviceKeys { anonymous_id: "anon-x".into(), idfa: Some("idfa-9".into()), ..Default::default() };
    let found = store.last_install("a".into(), keys).await.unwrap().expect("found by the late IDFA");
    assert_eq!(found.event_id, "i1");
}

/// The OLAP outbox (ADR 0018): nothing is noted while off; turning it on notes a reset and
/// every current fact, user and session; later facts, user changes and merged or deleted rows
/// are noted by the store itself, a deletion notes its erasures and the retention purge its
/// cut; one lease holder at a time; pages carry growing versions; turning it off empties it.
async fn the_olap_outbox_notes_changes_while_on(f: &Fixture) {
    let store = &*f.store;
    first_events(store).await;
    store.refresh_step(100, 30 * 60_000, None).await.unwrap();
    assert_eq!(store.olap_pending().await.unwrap(), 0, "off: nothing noted");

    store.olap_switch(true, false).await.unwrap();
    store.olap_switch(true, false).await.unwrap();
    let lease = |holder: i64, now: i64| OlapLease { holder, now, ttl: 1_000 };
    let page: OlapPage = store.olap_page(lease(1, 0), 1_000).await.unwrap().unwrap();
    assert!(page.reset, "turning on starts with a reset");
    let mut facts: Vec<(&str, &str, &str)> =
        page.facts.iter().map(|f| (f.app_id.as_str(), f.event_id.as_str(), f.anonymous_id.as_str())).collect();
    facts.sort_unstable();
    assert_eq!(facts, [("a", "e1", "anon-1"), ("a", "e2", "anon-1"), ("b", "e1", "anon-9")], "each fact once");
    let e2 = page.facts.iter().find(|f| f.event_id == "e2").unwrap();
    assert_eq!((e2.ts, e2.date_key, e2.event_type.as_str()), (20, 0, "screen"));
    let anon1 = page.users.iter().find(|u| u.anonymous_id == "anon-1").expect("the user");
    assert_eq!(anon1.row.as_ref().unwrap().user_id.as_deref(), Some("u1"));
    assert_eq!(anon1.row.as_ref().unwrap().events, 2);
    assert_eq!(page.sessions.len(), 2);
    assert!(page.sessions.iter().all(|s| s.row.is_some()));
    // The mirrored tables' rows: here the refresh's daily rollup, keyed as in the store.
    let rollups: Vec<_> = page.mirrored.iter().filter(|r| r.table == "rollup_daily").collect();
    assert_eq!(rollups.len(), 2, "{:?}", page.mirrored);
    let a = rollups.iter().find(|r| r.key[0].1 == "a").unwrap();
    assert_eq!(
        a.key.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["app_id", "date_key", "campaign_key", "event_type"]
    );
    let row = a.row.as_ref().unwrap();
    assert_eq!((&row["events"], &row["users"], &row["event_type"]), (&json!(2), &json!(1), &json!("screen")));
    assert_eq!(store.olap_pending().await.unwrap(), page.seqs.len() as u64);

    // Another loader waits for the lease to run out; its page carries a newer version.
    assert_eq!(store.olap_page(lease(2, 500), 1_000).await.unwrap(), None, "the lease is held");
    let again = store.olap_page(lease(2, 1_001), 1_000).await.unwrap().expect("the lease ran out");
    assert!(again.version > page.version);
    assert_eq!(again.seqs, page.seqs, "nothing was taken yet");
    store.olap_done(again.seqs).await.unwrap();
    assert_eq!(store.olap_pending().await.unwrap(), 0);

    // A new fact of a known user: the fact, its user and its session.
    store.insert(vec![event("a", "e3", "anon-1", None, None, 30)]).await.unwrap();
    store.refresh_step(100, 30 * 60_000, None).await.unwrap();
    let page = store.olap_page(lease(2, 1_002), 1_000).await.unwrap().unwrap();
    assert!(!page.reset);
    assert_eq!(page.facts.iter().map(|f| f.event_id.as_str()).collect::<Vec<_>>(), ["e3"]);
    assert_eq!(page.users.len(), 1);
    assert_eq!(page.users[0].row.as_ref().unwrap().events, 3);
    assert_eq!(page.sessions.len(), 1);
    store.olap_done(page.seqs).await.unwrap();

    // Only the holder renews, and only before its lease ran out.
    assert!(store.olap_renew(lease(2, 1_002)).await.unwrap());
    assert!(!store.olap_renew(lease(1, 1_002)).await.unwrap());
    assert!(!store.olap_renew(lease(2, 9_999)).await.unwrap(), "expired at 2_002");
    assert!(store.olap_page(lease(2, 1_002), 1).await.unwrap().is_some(), "taken again by a page read");

    // A deletion: its erasures, and the user and session rows gone. A row noted after the
    // deletion waits for the next page (it must reach ClickHouse after the erasure).
    store.delete_subject(Subject::UserId("u1".into()), audit("user_id"), tomb(true)).await.unwrap();
    store.insert(vec![event("b", "e7", "anon-7", None, None, 40)]).await.unwrap();
    store.refresh_step(100, 30 * 60_000, None).await.unwrap();
    let page = store.olap_page(lease(2, 1_003), 1_000).await.unwrap().unwrap();
    assert!(page.more, "the page ends where the erasures end");
    assert_eq!(page.erase_anonymous, [("a".to_owned(), "anon-1".to_owned())]);
    assert_eq!(page.erase_users, ["u1"]);
    assert!(page.users.iter().any(|u| u.anonymous_id == "anon-1" && u.row.is_none()), "{page:?}");
    assert!(page.sessions.iter().all(|s| s.row.is_none()), "{page:?}");
    assert!(page.facts.is_empty());
    assert!(page.mirrored.is_empty(), "{:?}", page.mirrored);
    store.olap_done(page.seqs).await.unwrap();
    let page = store.olap_page(lease(2, 1_003), 1_000).await.unwrap().unwrap();
    assert_eq!(page.facts.iter().map(|f| f.event_id.as_str()).collect::<Vec<_>>(), ["e7"]);
    assert!(!page.more);
    store.olap_done(page.seqs).await.unwrap();

    // A refill (ClickHouse found empty) while on: a reset and every row again.
    store.olap_switch(true, true).await.unwrap();
    let page = store.olap_page(lease(2, 1_003), 1_000).await.unwrap().unwrap();
    assert!(page.reset);
    assert_eq!(page.facts.len(), 2, "b/e1 and b/e7 are left");
    store.olap_done(page.seqs).await.unwrap();

    // The retention purge: its cut.
    let day = 86_400_000;
    store.purge(RetentionCutoffs { events: 3 * day, clicks: 3 * day }).await.unwrap();
    let page = store.olap_page(lease(2, 1_004), 1_000).await.unwrap().unwrap();
    assert_eq!(page.purge_before_day, Some(3));
    store.olap_done(page.seqs).await.unwrap();

    // Off: emptied, and nothing more is noted.
    store.insert(vec![event("b", "e9", "anon-9", None, None, 4 * day)]).await.unwrap();
    store.refresh_step(100, 30 * 60_000, None).await.unwrap();
    assert!(store.olap_pending().await.unwrap() > 0);
    store.olap_switch(false, false).await.unwrap();
    assert_eq!(store.olap_pending().await.unwrap(), 0);
    let page = store.olap_page(lease(2, 1_005), 1_000).await.unwrap().unwrap();
    assert!(page.switched_off && page.seqs.is_empty(), "a loader learns the outbox is off");
    store.insert(vec![event("b", "e10", "anon-9", None, None, 4 * day + 1)]).await.unwrap();
    store.refresh_step(100, 30 * 60_000, None).await.unwrap();
    assert_eq!(store.olap_pending().await.unwrap(), 0);
}
