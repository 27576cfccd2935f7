//! The ClickHouse client and the report tables' schema (issue 23, first step) against a private
//! ClickHouse on loopback (`TM_CLICKHOUSE_URL`; `./tests/run.sh services` starts Debian's
//! clickhouse-server): the schema is created and created again without change, a row loaded
//! twice is one row (the newer) under `FINAL`, and the report functions the ClickHouse reports
//! will use (`windowFunnel`, `retention`) answer on this server version. Skipped without a
//! server unless `TM_REQUIRE_SERVICES` is set.

use serde_json::json;
use trailmark_server::olap::OlapError;
use trailmark_server::olap::clickhouse::{ClickHouse, TABLES, VIEWS};

fn server() -> Option<String> {
    match std::env::var("TM_CLICKHOUSE_URL") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var("TM_REQUIRE_SERVICES").is_err(),
                "TM_REQUIRE_SERVICES is set but TM_CLICKHOUSE_URL is not"
            );
            eprintln!("TM_CLICKHOUSE_URL not set: skipped (./tests/run.sh services starts ClickHouse)");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_schema_is_created_and_replaces_rows_by_version() {
    let Some(url) = server() else { return };
    let ch = ClickHouse::new(&url, &format!("t_{}", uuid::Uuid::new_v4().simple())).unwrap();
    let version = ch.version().await.unwrap();
    assert!(version.split('.').next().unwrap().parse::<u32>().unwrap() >= 18, "{version}");
    ch.migrate().await.unwrap();
    ch.migrate().await.expect("a second migration changes nothing");
    let tables =
        ch.select("SELECT name FROM system.tables WHERE database = currentDatabase() ORDER BY name").await.unwrap();
    let mut want: Vec<&str> = TABLES.iter().chain(VIEWS).map(|(t, _)| *t).collect();
    want.sort();
    assert_eq!(tables.iter().map(|t| t["name"].as_str().unwrap()).collect::<Vec<_>>(), want);

    // One fact loaded twice (a retry, then a newer state of its session): one row, the newer.
    let fact = |version: u64, session: &str| {
        json!({"app_id": "app", "event_id": "e-1", "date": "2026-12-07", "ts": 1_796_637_600_000_i64,
               "event_type": "purchase", "anonymous_id": "a-1", "user_id": null, "session_key": session,
               "revenue": 9.5, "currency": "EUR", "ord": 1, "version": version, "deleted": 0})
    };
    ch.insert("fact_events", &[fact(1, "s-1")]).await.unwrap();
    ch.insert("fact_events", &[fact(1, "s-1"), fact(2, "s-merged")]).await.unwrap();
    let rows =
        ch.select("SELECT session_key, revenue, user_id FROM fact_events FINAL WHERE app_id = 'app'").await.unwrap();
    assert_eq!(rows, vec![json!({"session_key": "s-merged", "revenue": 9.5, "user_id": null})]);
    assert!(matches!(ch.insert("no_such_table", &[fact(1, "s")]).await, Err(OlapError::Config(_))));
    let refused = ch.execute("SELECT no_such_column FROM fact_events").await.unwrap_err();
    assert!(matches!(refused, OlapError::Refused(ref m) if m.contains("no_such_column")), "{refused}");

    // The aggregate functions the reports will push down exist on this version.
    let funnel = ch
        .select(
            "SELECT windowFunnel(3600)(t, e = 'open', e = 'view', e = 'buy') AS steps
             FROM (SELECT arrayJoin([(1, 'open'), (5, 'view'), (9, 'buy')]) AS p, toDateTime(p.1) AS t, p.2 AS e)",
        )
        .await
        .unwrap();
    assert_eq!(funnel[0]["steps"], 3);
    let retention = ch
        .select(
            "SELECT retention(d = 1, d = 2, d = 3) AS r
             FROM (SELECT arrayJoin([1, 3]) AS d)",
        )
        .await
        .unwrap();
    assert_eq!(retention[0]["r"], json!([1, 0, 1]));
    ch.drop_database().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_told_apart_from_a_refusal() {
    // A port nothing listens on (bound, then closed).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let ch = ClickHouse::new(&format!("http://127.0.0.1:{port}"), "trailmark").unwrap();
    assert!(matches!(ch.version().await, Err(OlapError::Unreachable(_))));
}
