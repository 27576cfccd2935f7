//! Reports on a fixed fixture with exact expected numbers, sessionization, and the maintenance
//! scheduler's retention and purge on a manual clock.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{Value, json};
use trailmark_core::protocol;
use trailmark_server::{AppState, Clock, ManualClock, ServerBuilder, ServerConfig};

const ANDROID_UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A.240205.004) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";
const SECOND: i64 = 1000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// 2026-11-02T08:00:00Z.
const T0: i64 = 1_793_577_600_000 + 8 * HOUR;

/// Where a test's server stores: the SQLite file, or a PostgreSQL schema of its own.
enum Db {
    Sqlite(std::path::PathBuf),
    Postgres(tokio_postgres::Client),
}

struct Srv {
    base: String,
    clock: ManualClock,
    client: reqwest::Client,
    db: Db,
    state: Arc<AppState>,
    _dir: tempfile::TempDir,
}

/// The PostgreSQL URL of `./tests/run.sh services`; `None` (the test is skipped) without one,
/// unless `TM_REQUIRE_SERVICES` is set.
fn postgres_url() -> Option<String> {
    let url = std::env::var("TM_POSTGRES_URL").ok();
    if url.is_none() {
        assert!(std::env::var("TM_REQUIRE_SERVICES").is_err(), "TM_REQUIRE_SERVICES is set but TM_POSTGRES_URL is not");
        eprintln!("TM_POSTGRES_URL not set: the PostgreSQL run is skipped (./tests/run.sh services runs it)");
    }
    url
}

/// The ClickHouse URL of `./tests/run.sh services`; `None` (the test is skipped) without one,
/// unless `TM_REQUIRE_SERVICES` is set.
fn clickhouse_url() -> Option<String> {
    let url = std::env::var("TM_CLICKHOUSE_URL").ok();
    if url.is_none() {
        assert!(
            std::env::var("TM_REQUIRE_SERVICES").is_err(),
            "TM_REQUIRE_SERVICES is set but TM_CLICKHOUSE_URL is not"
        );
        eprintln!("TM_CLICKHOUSE_URL not set: the ClickHouse run is skipped (./tests/run.sh services runs it)");
    }
    url
}

/// Where a test's server keeps its data: SQLite, PostgreSQL (a fresh schema), or SQLite with
/// the reports in ClickHouse (a fresh database).
#[derive(Clone, Copy)]
enum On<'a> {
    Sqlite,
    Postgres(&'a str),
    ClickHouse(&'a str),
}

/// A server on `on`.
async fn start_on(on: On<'_>, tune: impl FnOnce(&mut ServerConfig)) -> Srv {
    let dir = tempfile::tempdir().unwrap();
    let (clock, handle) = Clock::manual(T0);
    let mut c = ServerConfig::new()
        .with_app("app", "secret")
        .with_admin_key("test-admin-key-0123456789")
        .with_network("meta", "meta-secret")
        .with_network("tiktok", "tiktok-secret");
    c.clock = clock;
    // The test runs maintenance itself, on its own clock.
    c.reports.scheduler = false;
    if let On::ClickHouse(url) = on {
        let mut ch = trailmark_server::domain::config::ClickHouseConfig::new(url);
        ch.database = format!("r_{}", uuid::Uuid::new_v4().simple());
        // Small pages, so a test crosses page boundaries.
        ch.batch_size = 13;
        c.clickhouse = Some(ch);
    }
    tune(&mut c);
    let postgres = match on {
        On::Postgres(url) => Some(url),
        _ => None,
    };
    let (builder, db) = match postgres {
        None => {
            let db = dir.path().join("r.db");
            (ServerBuilder::new(c).sqlite(&db).unwrap(), Db::Sqlite(db))
        }
        Some(url) => {
            let schema = format!("r_{}", uuid::Uuid::new_v4().simple());
            let store =
                trailmark_server::storage::postgres::PostgresStorage::connect(url, 4, Some(&schema)).await.unwrap();
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.batch_execute(&format!("SET search_path = {schema}")).await.unwrap();
            (ServerBuilder::new(c).storage(Arc::new(store)), Db::Postgres(client))
        }
    };
    let state = builder.build_state().unwrap();
    let router = trailmark_server::router(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    Srv { base, clock: handle, client, db, state, _dir: dir }
}

impl Srv {
    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req =
            self.client.request(method, format!("{}{path}", self.base)).bearer_auth("test-admin-key-0123456789");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> Value {
        let (s, v) = self.admin(reqwest::Method::GET, path, None).await;
        assert_eq!(s, 200, "{path}: {v}");
        v
    }

    async fn campaign(&self, name: &str, network: &str) -> (String, String) {
        let (s, c) =
            self.admin(reqwest::Method::POST, "/v1/campaigns", Some(json!({"name": name, "network": network}))).await;
        assert_eq!(s, 201, "{c}");
        let campaign = c["campaign_id"].as_str().unwrap().to_owned();
        let (s, l) = self
            .admin(
                reqwest::Method::POST,
                "/v1/links",
                Some(json!({"campaign_id": campaign, "destinations": {"web": "https://shop.example.com/"}})),
            )
            .await;
        assert_eq!(s, 201, "{l}");
        (campaign, l["link_id"].as_str().unwrap().to_owned())
    }

    fn signed(&self, path: &str, body: &Value) -> reqwest::RequestBuilder {
        let ts = self.clock.now() / 1000;
        let body = serde_json::to_vec(body).unwrap();
        self.client
            .post(format!("{}{path}", self.base))
            .header(protocol::HEADER_APP, "app")
            .header(protocol::HEADER_TIMESTAMP, ts.to_string())
            .header(protocol::HEADER_SIGNATURE, protocol::sign(b"secret", ts, &body))
            .body(body)
    }

    /// A server-to-server click reported by `network` (signed with its own secret).
    async fn s2s_click(&self, network: &str, link: &str, gaid: &str) {
        let click = json!({"link_id": link, "user_agent": ANDROID_UA, "device": {"gaid": gaid}});
        let ts = self.clock.now() / 1000;
        let body = serde_json::to_vec(&click).unwrap();
        let secret = format!("{network}-secret");
        let resp = self
            .client
            .post(format!("{}/v1/click", self.base))
            .header(protocol::HEADER_NETWORK, network)
            .header(protocol::HEADER_TIMESTAMP, ts.to_string())
            .header(protocol::HEADER_SIGNATURE, protocol::sign(secret.as_bytes(), ts, &body))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{:?}", resp.text().await);
    }

    async fn impression(&self, link: &str) {
        let resp = self
            .client
            .get(format!("{}/v1/impression?link={link}", self.base))
            .header("User-Agent", ANDROID_UA)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 204);
    }

    async fn install(&self, anon: &str, gaid: &str) -> Value {
        let body = json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "anonymous_id": anon,
            "timestamp": protocol::format_millis(self.clock.now()),
            "platform": "android",
            "device": {"gaid": gaid},
        });
        let resp = self.signed("/v1/install", &body).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    }

    /// One event at `at` (client time, no clock skew), sent when it happens: the server's clock
    /// is moved to `at` first if it is behind (the server sets times more than 24 h ahead of its
    /// own back to its own).
    async fn event_at(&self, at: i64, kind: &str, anon: &str, props: Value) {
        if self.clock.now() < at {
            self.clock.set(at);
        }
        let e = json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "type": kind,
            "timestamp": protocol::format_millis(at),
            "anonymous_id": anon,
            "properties": props,
        });
        self.accepted(&e).await;
    }

    /// Sends one event, which must be accepted.
    async fn accepted(&self, e: &Value) {
        let resp = self.signed("/v1/event", e).send().await.unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(status == 200 && body["accepted"] == 1, "{status} {body}");
    }

    /// An event with a user id (and more properties) at the clock's time.
    async fn user_event(&self, kind: &str, anon: &str, user: &str, props: Value) {
        let e = json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "type": kind,
            "timestamp": protocol::format_millis(self.clock.now()),
            "anonymous_id": anon,
            "user_id": user,
            "properties": props,
        });
        self.accepted(&e).await;
    }

    async fn cost(&self, campaign: &str, date: &str, amount: f64) -> (u16, Value) {
        self.admin(
            reqwest::Method::POST,
            &format!("/v1/campaigns/{campaign}/cost"),
            Some(json!({"date": date, "amount": amount, "currency": "usd"})),
        )
        .await
    }

    /// One integer from ClickHouse once the loader has loaded what is pending and ClickHouse
    /// has applied its erasures; `None` when the reports are not in ClickHouse.
    async fn olap_count(&self, sql: &str) -> Option<i64> {
        let olap = self.state.olap.as_ref()?;
        olap.catch_up(None).await.unwrap();
        let ch = olap.clickhouse();
        for _ in 0..600 {
            if ch.pending_mutations().await.unwrap() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let rows = ch.select(&format!("SELECT toInt64(({sql})) AS n")).await.unwrap();
        Some(rows[0]["n"].as_i64().unwrap())
    }

    /// One integer from the store (the same SQL on both).
    async fn count(&self, sql: &str) -> i64 {
        let sql = format!("SELECT CAST(({sql}) AS BIGINT)");
        match &self.db {
            Db::Sqlite(path) => rusqlite::Connection::open(path).unwrap().query_row(&sql, [], |r| r.get(0)).unwrap(),
            Db::Postgres(client) => client.query_one(&sql, &[]).await.unwrap().get(0),
        }
    }
}

/// The fixture, on 2026-11-02 (and a few days after):
/// - campaign A (meta): 10 impressions, 4 clicks (g1–g4), 3 installs (g1–g3), cost 60 USD;
/// - campaign B (tiktok): 2 clicks (h1, h2), 1 install (h1), cost 25 USD;
/// - one organic install (o1);
/// - g1: open, view, purchase 30 within 20 s; g2: open, view; g3: open, purchase 20;
///   h1: open, view after 30 s, purchase 50 after 2 min; o1: open;
/// - back the next day: g1, h1; a week later: g1.
struct Fixture {
    a: String,
    b: String,
}

async fn fixture(srv: &Srv) -> Fixture {
    // The organic install first, before any touch it could be matched to.
    assert_eq!(srv.install("o1", "00000000-0000-4000-8000-000000000001").await["match_type"], "organic");
    let (a, link_a) = srv.campaign("Spring <b>sale</b>", "meta").await;
    let (b, link_b) = srv.campaign("Launch", "tiktok").await;
    for _ in 0..10 {
        srv.impression(&link_a).await;
    }
    let gaid = |p: &str, n: u32| format!("{p}0000000-0000-4000-8000-00000000000{n}");
    for n in 1..=4 {
        srv.s2s_click("meta", &link_a, &gaid("a", n)).await;
    }
    for n in 1..=2 {
        srv.s2s_click("tiktok", &link_b, &gaid("b", n)).await;
    }
    srv.clock.advance(3 * MINUTE);
    for n in 1..=3 {
        let r = srv.install(&format!("g{n}"), &gaid("a", n)).await;
        assert_eq!(r["campaign_id"], a, "{r}");
    }
    let r = srv.install("h1", &gaid("b", 1)).await;
    assert_eq!(r["campaign_id"], b, "{r}");

    let t = srv.clock.now();
    srv.event_at(t, "app_open", "g1", json!({})).await;
    srv.event_at(t + 10 * SECOND, "view_item", "g1", json!({})).await;
    srv.event_at(t + 20 * SECOND, "purchase", "g1", json!({"revenue": 30.0, "currency": "USD"})).await;
    srv.event_at(t, "app_open", "g2", json!({})).await;
    srv.event_at(t + 5 * SECOND, "view_item", "g2", json!({})).await;
    srv.event_at(t, "app_open", "g3", json!({})).await;
    srv.event_at(t + 5 * SECOND, "purchase", "g3", json!({"revenue": 20.0, "currency": "USD"})).await;
    srv.event_at(t, "app_open", "h1", json!({})).await;
    srv.event_at(t + 30 * SECOND, "view_item", "h1", json!({})).await;
    srv.event_at(t + 2 * MINUTE, "purchase", "h1", json!({"revenue": 50.0, "currency": "USD"})).await;
    srv.event_at(t, "app_open", "o1", json!({})).await;
    // g1 again 45 minutes later: a second session.
    srv.event_at(t + 45 * MINUTE, "app_open", "g1", json!({})).await;
    // The next day, and a week later.
    srv.event_at(t + DAY, "app_open", "g1", json!({})).await;
    srv.event_at(t + DAY + HOUR, "app_open", "h1", json!({})).await;
    srv.event_at(t + 7 * DAY, "app_open", "g1", json!({})).await;

    assert_eq!(srv.cost(&a, "2026-11-02", 60.0).await.0, 200);
    assert_eq!(srv.cost(&b, "2026-11-02", 40.0).await.0, 200);
    // Posting a day again replaces it.
    assert_eq!(srv.cost(&b, "2026-11-02", 25.0).await.0, 200);
    srv.clock.set(T0 + 9 * DAY);
    Fixture { a, b }
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> &'a Value {
    list.as_array().unwrap().iter().find(|c| c[key] == value).unwrap_or_else(|| panic!("no {key}={value} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_on_a_fixed_fixture() {
    reports_on(On::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_on_a_fixed_fixture_postgres() {
    if let Some(url) = postgres_url() {
        reports_on(On::Postgres(&url)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_on_a_fixed_fixture_clickhouse() {
    if let Some(url) = clickhouse_url() {
        reports_on(On::ClickHouse(&url)).await;
    }
}

async fn reports_on(on: On<'_>) {
    let srv = start_on(on, |_| {}).await;
    let f = fixture(&srv).await;

    // Campaign performance.
    let r = srv.get("/v1/reports/campaigns?from=2026-11-02&to=2026-11-02").await;
    let a = find(&r["campaigns"], "campaign_id", &f.a);
    assert_eq!(a["name"], "Spring <b>sale</b>");
    assert_eq!((&a["impressions"], &a["clicks"], &a["installs"]), (&json!(10), &json!(4), &json!(3)), "{a}");
    assert_eq!(a["ctr"], 0.4);
    assert_eq!(a["install_rate"], 0.75);
    assert_eq!(a["cost"], 60.0);
    assert_eq!(a["currency"], "USD");
    assert_eq!(a["cpi"], 20.0);
    assert_eq!(a["conversions"], 2.0);
    assert_eq!(a["cpa"], 30.0);
    assert_eq!(a["revenue"], 50.0);
    assert_eq!(a["roas"], 50.0 / 60.0);
    let b = find(&r["campaigns"], "campaign_id", &f.b);
    assert_eq!((&b["impressions"], &b["clicks"], &b["installs"]), (&json!(0), &json!(2), &json!(1)), "{b}");
    assert_eq!(b["ctr"], Value::Null, "no impressions: no CTR");
    assert_eq!(b["install_rate"], 0.5);
    assert_eq!((&b["cost"], &b["cpi"], &b["cpa"]), (&json!(25.0), &json!(25.0), &json!(25.0)));
    assert_eq!((&b["revenue"], &b["roas"]), (&json!(50.0), &json!(2.0)));
    // Another day: nothing.
    let r = srv.get("/v1/reports/campaigns?from=2026-11-03&to=2026-11-05").await;
    let a = find(&r["campaigns"], "campaign_id", &f.a);
    assert_eq!(
        (&a["clicks"], &a["installs"], &a["cost"], &a["cpi"]),
        (&json!(0), &json!(0), &Value::Null, &Value::Null)
    );

    // Funnel.
    let r = srv.get("/v1/reports/funnel?steps=app_open,view_item,purchase&from=2026-11-02&to=2026-11-02").await;
    let users: Vec<i64> = r["steps"].as_array().unwrap().iter().map(|s| s["users"].as_i64().unwrap()).collect();
    assert_eq!(users, [5, 3, 2], "{r}");
    assert_eq!(r["steps"][2]["type"], "purchase");
    assert_eq!(r["steps"][1]["share"], 0.6);
    let r =
        srv.get("/v1/reports/funnel?steps=app_open,view_item,purchase&from=2026-11-02&to=2026-11-02&within=1m").await;
    let users: Vec<i64> = r["steps"].as_array().unwrap().iter().map(|s| s["users"].as_i64().unwrap()).collect();
    assert_eq!(users, [5, 3, 1], "h1's purchase came 2 minutes after its first step: {r}");
    let r = srv
        .get(&format!(
            "/v1/reports/funnel?steps=app_open,view_item,purchase&from=2026-11-02&to=2026-11-02&campaign_id={}",
            f.a
        ))
        .await;
    let users: Vec<i64> = r["steps"].as_array().unwrap().iter().map(|s| s["users"].as_i64().unwrap()).collect();
    assert_eq!(users, [3, 2, 1], "{r}");

    // Retention: five users installed on 2026-11-02; two came back the next day, one a week later.
    let r = srv.get("/v1/reports/retention?from=2026-11-02&to=2026-11-03&days=1,7,30").await;
    let day1 = find(&r["cohorts"], "date", "2026-11-02");
    assert_eq!(day1["users"], 5, "{r}");
    assert_eq!(day1["retention"][0], json!({"day": 1, "users": 2, "share": 0.4}));
    assert_eq!(day1["retention"][1], json!({"day": 7, "users": 1, "share": 0.2}));
    assert_eq!(day1["retention"][2], json!({"day": 30, "users": null, "share": null}), "not reached yet");
    let day2 = find(&r["cohorts"], "date", "2026-11-03");
    assert_eq!(day2["users"], 0);

    // Paths to purchase.
    let r = srv.get("/v1/reports/paths?conversion=purchase&from=2026-11-01&to=2026-11-10&limit=5").await;
    assert_eq!(r["conversions"], 3, "{r}");
    assert_eq!(
        r["paths"][0],
        json!({"path": ["app_open", "view_item", "purchase"], "conversions": 2, "share": 2.0 / 3.0})
    );
    assert_eq!(r["paths"][1], json!({"path": ["app_open", "purchase"], "conversions": 1, "share": 1.0 / 3.0}));
    assert_eq!(r["paths"].as_array().unwrap().len(), 2);

    // Trends by day (issue 26): events by type, installs by match type, revenue, conversions.
    let r = srv.get("/v1/reports/trends?from=2026-11-01&to=2026-11-10").await;
    assert_eq!(r["bucket"], "day");
    assert_eq!(r["labels"].as_array().unwrap().len(), 10, "{r}");
    assert_eq!((&r["labels"][0], &r["labels"][9]), (&json!("2026-11-01"), &json!("2026-11-10")));
    assert_eq!(r["starts"][1], T0 - 8 * HOUR);
    let series = |r: &Value, list: &str, key: &str| -> Value { find(&r[list], "key", key)["values"].clone() };
    assert_eq!(series(&r, "events", "app_open"), json!([0, 6, 2, 0, 0, 0, 0, 0, 1, 0]), "{r}");
    assert_eq!(series(&r, "events", "view_item"), json!([0, 3, 0, 0, 0, 0, 0, 0, 0, 0]));
    let types: Vec<&str> = r["events"].as_array().unwrap().iter().map(|s| s["key"].as_str().unwrap()).collect();
    assert_eq!(types, ["app_open", "purchase", "view_item"], "the most frequent first, ties by name");
    assert_eq!(series(&r, "installs", "device_id"), json!([0, 4, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(series(&r, "installs", "organic"), json!([0, 1, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(find(&r["installs"], "key", "fingerprint")["total"], 0);
    assert_eq!(r["installs"].as_array().unwrap().len(), 7, "every match type, and rejected");
    assert_eq!((&r["revenue"]["values"][1], &r["revenue"]["total"]), (&json!(100.0), &json!(100.0)));
    assert_eq!((&r["conversions"]["values"][1], &r["conversions"]["total"]), (&json!(3.0), &json!(3.0)));
    assert_eq!(r["conversion_revenue"]["total"], 100.0);
    // One campaign: its users' events, its installs and conversions.
    let r = srv.get(&format!("/v1/reports/trends?from=2026-11-01&to=2026-11-10&campaign_id={}", f.a)).await;
    assert_eq!(series(&r, "events", "app_open"), json!([0, 4, 1, 0, 0, 0, 0, 0, 1, 0]), "{r}");
    assert_eq!(series(&r, "installs", "device_id"), json!([0, 3, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(find(&r["installs"], "key", "organic")["total"], 0);
    assert_eq!((&r["revenue"]["total"], &r["conversions"]["total"]), (&json!(50.0), &json!(2.0)));
    // One network.
    let r = srv.get("/v1/reports/trends?from=2026-11-01&to=2026-11-10&network=tiktok&model=linear").await;
    assert_eq!(series(&r, "events", "app_open"), json!([0, 1, 1, 0, 0, 0, 0, 0, 0, 0]), "{r}");
    assert_eq!(find(&r["installs"], "key", "device_id")["total"], 1);
    assert_eq!((&r["conversions"]["total"], &r["conversion_revenue"]["total"]), (&json!(1.0), &json!(50.0)));
    // By hour, from the facts: everything happened between 08:00 and 08:50.
    let r = srv.get("/v1/reports/trends?bucket=hour&from=2026-11-02T07:00:00Z&to=2026-11-02T09:59:59Z").await;
    assert_eq!(r["labels"], json!(["2026-11-02 07:00", "2026-11-02 08:00", "2026-11-02 09:00"]), "{r}");
    assert_eq!(series(&r, "events", "app_open"), json!([0, 6, 0]));
    assert_eq!(series(&r, "events", "purchase"), json!([0, 3, 0]));
    assert_eq!(series(&r, "installs", "device_id"), json!([0, 4, 0]));
    assert_eq!(series(&r, "installs", "organic"), json!([0, 1, 0]));
    assert_eq!(
        (&r["revenue"]["values"], &r["conversions"]["values"]),
        (&json!([0.0, 100.0, 0.0]), &json!([0.0, 3.0, 0.0]))
    );
    let r = srv
        .get(&format!(
            "/v1/reports/trends?bucket=hour&from=2026-11-02T07:00:00Z&to=2026-11-02T09:59:59Z&campaign_id={}",
            f.b
        ))
        .await;
    assert_eq!(series(&r, "events", "app_open"), json!([0, 1, 0]), "{r}");
    assert_eq!((&r["revenue"]["total"], &r["conversions"]["total"]), (&json!(50.0), &json!(1.0)));
    let r = srv
        .get("/v1/reports/trends?bucket=hour&from=2026-11-02T07:00:00Z&to=2026-11-02T09:59:59Z&network=meta&model=linear")
        .await;
    assert_eq!(series(&r, "events", "app_open"), json!([0, 4, 0]), "{r}");
    assert_eq!(series(&r, "installs", "device_id"), json!([0, 3, 0]));
    assert_eq!(
        (&r["conversions"]["values"], &r["conversion_revenue"]["total"]),
        (&json!([0.0, 2.0, 0.0]), &json!(50.0))
    );

    // A campaign's page: its link's clicks and installs, its metrics under every model.
    let r = srv.get(&format!("/v1/reports/campaigns/{}?from=2026-11-02&to=2026-11-02", f.a)).await;
    assert_eq!((&r["name"], &r["network"]), (&json!("Spring <b>sale</b>"), &json!("meta")));
    assert_eq!(r["links"].as_array().unwrap().len(), 1, "{r}");
    let link = &r["links"][0];
    assert_eq!(
        (&link["clicks"], &link["impressions"], &link["installs"], &link["rejected_installs"]),
        (&json!(4), &json!(10), &json!(3), &json!(0)),
        "{link}"
    );
    for model in ["last_touch", "first_touch", "linear", "time_decay"] {
        assert_eq!(r["models"][model]["cpi"], 20.0, "{model}: {r}");
        assert_eq!(r["models"][model]["conversions"], 2.0, "{model}: one touch each, all the credit");
    }
    assert_eq!(r["rejections"], json!([]));

    // The attribution explorer: g1's install by its anonymous id and by its advertising id,
    // with its purchase's credit under every model; the purchase by its event id.
    let r = srv.get("/v1/attribution/lookup?anonymous_id=g1").await;
    assert_eq!(r["install"]["result"]["match_type"], "device_id", "{r}");
    assert_eq!(r["install"]["result"]["campaign_id"], f.a.as_str());
    let chosen: Vec<&Value> =
        r["install"]["audit"]["candidates"].as_array().unwrap().iter().filter(|c| c["chosen"] == true).collect();
    assert_eq!(chosen.len(), 1, "{r}");
    let credits = r["credits"].as_array().unwrap();
    assert_eq!(credits.len(), 4, "one row per model: {r}");
    assert!(credits.iter().all(|c| c["campaign_id"] == f.a.as_str() && c["credit"] == 1.0 && c["revenue"] == 30.0));
    let purchase = credits[0]["event_id"].as_str().unwrap().to_owned();
    let by_device = srv.get("/v1/attribution/lookup?device_id=A0000000-0000-4000-8000-000000000001").await;
    assert_eq!(by_device["install"]["event_id"], r["install"]["event_id"], "{by_device}");
    let by_event = srv.get(&format!("/v1/attribution/lookup?event_id={purchase}")).await;
    assert_eq!((&by_event["install"], by_event["credits"].as_array().unwrap().len()), (&Value::Null, 4), "{by_event}");
    let none = srv.get("/v1/attribution/lookup?anonymous_id=nobody").await;
    assert_eq!((&none["install"], &none["credits"]), (&Value::Null, &json!([])));

    // Star schema and sessions.
    assert_eq!(srv.count("SELECT count(*) FROM fact_events").await, 15);
    assert_eq!(srv.count("SELECT count(*) FROM dim_users").await, 5);
    assert_eq!(srv.count("SELECT count(*) FROM dim_campaigns WHERE kind = 'link'").await, 2);
    assert_eq!(
        srv.count("SELECT count(*) FROM sessions WHERE anonymous_id = 'g1'").await,
        4,
        "open+view+buy, +45 min, +1 d, +7 d"
    );
    assert_eq!(srv.count("SELECT sum(events) FROM rollup_daily WHERE date_key = 20759").await, 12);
    assert_eq!(
        srv.count(&format!(
            "SELECT events FROM rollup_daily WHERE date_key = 20759 AND campaign_key = '{}' AND event_type = 'app_open'",
            f.a
        )).await,
        4,
        "g1 twice, g2, g3"
    );
    if let On::ClickHouse(_) = on {
        // The BI views read the copy: installs by campaign, daily events, funnel-ready events.
        let q = format!("SELECT sum(installs) FROM installs_by_campaign WHERE campaign_id = '{}'", f.a);
        assert_eq!(srv.olap_count(&q).await, Some(3));
        let q = format!(
            "SELECT count() FROM installs_by_campaign WHERE campaign_id = '{}' AND name = 'Spring <b>sale</b>'",
            f.a
        );
        assert_eq!(srv.olap_count(&q).await, Some(1));
        assert_eq!(
            srv.olap_count("SELECT sum(events) FROM daily_events WHERE date = toDate('2026-11-02')").await,
            Some(12)
        );
        let q = "SELECT count() FROM funnel_events WHERE anonymous_id = 'g1' AND event_type = 'purchase' AND person = 'a:g1'";
        assert_eq!(srv.olap_count(q).await, Some(1));
        let q = "SELECT count() FROM (SELECT deleted FROM installs FINAL WHERE app_id = 'app') WHERE deleted = 0";
        assert_eq!(srv.olap_count(q).await, Some(5), "4 attributed and one organic install");
    }
    // A late event at +25 min bridges g1's first two sessions into one.
    let t = T0 + 3 * MINUTE;
    srv.event_at(t + 25 * MINUTE, "view_item", "g1", json!({})).await;
    srv.state.maintenance.refresh().await.unwrap();
    assert_eq!(srv.count("SELECT count(*) FROM sessions WHERE anonymous_id = 'g1'").await, 3);
    assert_eq!(srv.count("SELECT events FROM sessions WHERE anonymous_id = 'g1' ORDER BY start_ts LIMIT 1").await, 5);
    assert_eq!(
        srv.count("SELECT count(DISTINCT session_key) FROM fact_events WHERE anonymous_id = 'g1' AND date_key = 20759")
            .await,
        1
    );

    // An event deleted before the refresh took it, then sent again: the resend is suppressed
    // (tombstoned), and the refresh makes no fact of its queue entry (SQLite deletes the entry
    // with the event; PostgreSQL's is skipped, then purged).
    let e = json!({
        "event_id": "7d1f0a52-6a4e-4d4e-9c3e-2f1b0c9d8e71", "type": "app_open", "timestamp": protocol::format_millis(T0), "anonymous_id": "z1",
        "properties": {},
    });
    assert_eq!(srv.signed("/v1/event", &e).send().await.unwrap().status(), 200);
    let (s, _) = srv
        .admin(reqwest::Method::POST, "/v1/user/delete", Some(json!({"anonymous_id": "z1", "suppress": false})))
        .await;
    assert_eq!(s, 200);
    let resent: Value = srv.signed("/v1/event", &e).send().await.unwrap().json().await.unwrap();
    assert_eq!((resent["accepted"].as_u64(), resent["suppressed"].as_u64()), (Some(0), Some(1)), "{resent}");
    let r = srv.state.maintenance.refresh().await.unwrap();
    assert_eq!(srv.count("SELECT count(*) FROM events WHERE anonymous_id = 'z1'").await, 0, "{r:?}");
    assert_eq!(srv.count("SELECT count(*) FROM fact_events WHERE anonymous_id = 'z1'").await, 0, "{r:?}");

    // Deleting a user reaches the tables this issue adds.
    let (s, d) = srv.admin(reqwest::Method::POST, "/v1/user/delete", Some(json!({"anonymous_id": "g1"}))).await;
    assert_eq!(s, 200, "{d}");
    for table in ["fact_events", "dim_users", "sessions"] {
        assert_eq!(srv.count(&format!("SELECT count(*) FROM {table} WHERE anonymous_id = 'g1'")).await, 0, "{table}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_report_requests_get_clear_errors() {
    bad_requests_on(On::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_report_requests_get_clear_errors_postgres() {
    if let Some(url) = postgres_url() {
        bad_requests_on(On::Postgres(&url)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_report_requests_get_clear_errors_clickhouse() {
    if let Some(url) = clickhouse_url() {
        bad_requests_on(On::ClickHouse(&url)).await;
    }
}

async fn bad_requests_on(on: On<'_>) {
    let srv = start_on(on, |_| {}).await;
    let (a, _) = srv.campaign("A", "meta").await;
    for (path, needle) in [
        ("/v1/reports/funnel?from=2026-11-01", "steps is required"),
        ("/v1/reports/funnel?steps=a,,b", "steps"),
        ("/v1/reports/funnel?steps=a&within=3 weeks", "within"),
        ("/v1/reports/funnel?steps=a&from=yesterday", "from must be"),
        ("/v1/reports/funnel?steps=a&from=2026-11-05&to=2026-11-01", "from is after to"),
        ("/v1/reports/funnel?steps=a&from=2020-01-01&to=2026-11-01", "longer than"),
        ("/v1/reports/funnel?steps=a&stpes=b", "unknown parameter"),
        ("/v1/reports/retention?days=1,x", "days"),
        ("/v1/reports/campaigns?model=best", "model"),
        ("/v1/reports/paths", "conversion is required"),
        ("/v1/reports/paths?conversion=purchase&limit=0", "limit"),
        ("/v1/reports/campaigns?app_id=other", "no app"),
        ("/v1/reports/trends?bucket=week", "bucket is day or hour"),
        ("/v1/reports/trends?bucket=hour&from=2026-10-01&to=2026-11-01", "at most 336 hours"),
        ("/v1/reports/trends?model=best", "model"),
        ("/v1/attribution/lookup", "give one of"),
        ("/v1/attribution/lookup?anonymous_id=a&event_id=b", "give one of"),
        ("/v1/attribution/lookup?device_id=00000000-0000-0000-0000-000000000000", "all zeros"),
        ("/v1/attribution/lookup?ip=1.2.3.4", "unknown parameter"),
    ] {
        let (s, e) = srv.admin(reqwest::Method::GET, path, None).await;
        assert_eq!(s, 400, "{path}: {e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(needle), "{path}: {e}");
    }
    for path in [
        "/v1/reports/campaigns",
        "/v1/reports/trends",
        &format!("/v1/reports/campaigns/{a}"),
        "/v1/attribution/lookup?anonymous_id=a",
    ] {
        let resp = srv.client.get(format!("{}{path}", srv.base)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
    }
    let (s, e) = srv.admin(reqwest::Method::GET, "/v1/reports/campaigns/cmp_nope", None).await;
    assert_eq!(s, 404, "{e}");
    let long = "x".repeat(201);
    let (s, e) = srv.admin(reqwest::Method::GET, &format!("/v1/reports/trends?network={long}"), None).await;
    assert!(s == 400 && e["error"]["message"].as_str().unwrap().contains("200 characters"), "{e}");
    let (s, e) = srv.admin(reqwest::Method::GET, &format!("/v1/attribution/lookup?anonymous_id={long}"), None).await;
    assert_eq!(s, 400, "{e}");
    // Costs.
    for (body, status) in [
        (json!({"date": "2026-11-02", "amount": -1, "currency": "USD"}), 400),
        (json!({"date": "02/11/2026", "amount": 1, "currency": "USD"}), 400),
        (json!({"date": "2026-11-02", "amount": 1, "currency": "dollars"}), 400),
        (json!({"date": "2026-11-02", "amount": 1}), 400),
        (json!({"date": "2026-11-02", "amount": 1, "currency": "USD", "extra": 1}), 400),
        (json!({"date": "2026-11-02", "amount": 1, "currency": "USD"}), 200),
        (json!({"date": "2026-11-03", "amount": 1, "currency": "EUR"}), 409),
    ] {
        let (s, e) = srv.admin(reqwest::Method::POST, &format!("/v1/campaigns/{a}/cost"), Some(body.clone())).await;
        assert_eq!(s, status, "{body}: {e}");
    }
    let (s, _) = srv
        .admin(
            reqwest::Method::POST,
            "/v1/campaigns/cmp_nope/cost",
            Some(json!({"date": "2026-11-02", "amount": 1, "currency": "USD"})),
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_purge_on_a_simulated_clock() {
    retention_on(On::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_purge_on_a_simulated_clock_postgres() {
    if let Some(url) = postgres_url() {
        retention_on(On::Postgres(&url)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_purge_on_a_simulated_clock_clickhouse() {
    if let Some(url) = clickhouse_url() {
        retention_on(On::ClickHouse(&url)).await;
    }
}

async fn retention_on(on: On<'_>) {
    let srv = start_on(on, |c| {
        c.reports.raw_retention_days = 30;
        c.reports.refresh_interval = 10 * SECOND;
        c.reports.purge_interval = DAY;
    })
    .await;
    let f = fixture(&srv).await;
    // A web visitor with a utm campaign and no install.
    let e = json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "type": "page_view",
        "timestamp": protocol::format_millis(T0),
        "anonymous_id": "w1",
        "context": {"campaign": {"utm_source": "news", "utm_campaign": "Autumn"}},
    });
    assert_eq!(srv.signed("/v1/event", &e).send().await.unwrap().status(), 200);

    // Two days after the campaign, the first run refreshes and purges (nothing is old yet).
    srv.clock.set(T0 + 2 * DAY);
    let m = &srv.state.maintenance;
    let first = m.run_due().await.unwrap();
    assert_eq!(first.refreshed_events, 16);
    let purged = first.purged.expect("the first run purges");
    assert_eq!((purged.events, purged.clicks), (0, 0));
    assert_eq!(srv.count("SELECT count(*) FROM dim_campaigns WHERE campaign_key = 'utm:news:autumn'").await, 1);
    let before = srv.get("/v1/reports/campaigns?from=2026-11-02&to=2026-11-02").await;

    // 5 seconds later nothing is due; 10 seconds later only a refresh.
    srv.clock.advance(5 * SECOND);
    assert_eq!(m.run_due().await.unwrap(), Default::default());
    srv.clock.advance(5 * SECOND);
    let r = m.run_due().await.unwrap();
    assert!(r.purged.is_none());

    // Eight days after the campaign the clicks have left the 7-day attribution window: expired.
    srv.clock.set(T0 + 8 * DAY + HOUR);
    let r = m.run_due().await.unwrap();
    assert_eq!(r.purged.unwrap().clicks, 16, "10 impressions and 6 clicks");
    assert_eq!(srv.count("SELECT count(*) FROM clicks").await, 0);
    assert_eq!(srv.count("SELECT count(*) FROM events").await, 16, "raw events are kept 30 days");

    // 40 days after the campaign: raw events, facts and sessions of 2026-11-02 … 2026-11-09 go.
    srv.clock.set(T0 + 40 * DAY);
    let r = m.run_due().await.unwrap();
    let purged = r.purged.unwrap();
    assert_eq!((purged.events, purged.facts), (16, 16), "{purged:?}");
    assert_eq!(srv.count("SELECT count(*) FROM events").await, 0);
    assert_eq!(srv.count("SELECT count(*) FROM fact_events").await, 0);
    assert_eq!(srv.count("SELECT count(*) FROM sessions").await, 0);
    // The web visitor had nothing else: an orphan, deleted. Installed users stay.
    assert_eq!(srv.count("SELECT count(*) FROM dim_users WHERE anonymous_id = 'w1'").await, 0);
    assert_eq!(srv.count("SELECT count(*) FROM dim_users").await, 5);
    if let On::ClickHouse(_) = on {
        // The ClickHouse copy lost the same rows.
        assert_eq!(srv.olap_count("SELECT count() FROM fact_events").await, Some(0));
        let live =
            |t: &str, w: &str| format!("SELECT count() FROM (SELECT deleted {w} FROM {t} FINAL) WHERE deleted = 0");
        assert_eq!(srv.olap_count(&live("sessions", "")).await, Some(0));
        assert_eq!(srv.olap_count(&live("dim_users", "")).await, Some(5));
        let w1 =
            "SELECT count() FROM (SELECT deleted FROM dim_users FINAL WHERE anonymous_id = 'w1') WHERE deleted = 0";
        assert_eq!(srv.olap_count(w1).await, Some(0));
    }
    // The rollups keep the numbers: the campaign report is unchanged.
    let after = srv.get("/v1/reports/campaigns?from=2026-11-02&to=2026-11-02").await;
    assert_eq!(after["campaigns"], before["campaigns"]);
    assert_eq!(find(&after["campaigns"], "campaign_id", &f.a)["clicks"], 4);
    // So does the link rollup behind a campaign's page.
    let page = srv.get(&format!("/v1/reports/campaigns/{}?from=2026-11-02&to=2026-11-02", f.a)).await;
    assert_eq!((&page["links"][0]["clicks"], &page["links"][0]["impressions"]), (&json!(4), &json!(10)), "{page}");
    assert_eq!(srv.count("SELECT sum(events) FROM rollup_daily WHERE date_key = 20759").await, 13);
    // A late event for a purged day is stored, but cannot change that day's rollup.
    srv.event_at(T0 + HOUR, "app_open", "g2", json!({})).await;
    srv.state.maintenance.refresh().await.unwrap();
    assert_eq!(srv.count("SELECT sum(events) FROM rollup_daily WHERE date_key = 20759").await, 13);
    // Nor after a purge with an earlier cut-off (a longer retention set later, a clock set
    // back): cut-offs only move forward.
    let earlier = trailmark_server::storage::RetentionCutoffs { events: T0 - 100 * DAY, clicks: T0 - 100 * DAY };
    srv.state.storage.purge(earlier).await.unwrap();
    srv.event_at(T0 + 2 * HOUR, "app_open", "g3", json!({})).await;
    srv.state.maintenance.refresh().await.unwrap();
    assert_eq!(srv.count("SELECT sum(events) FROM rollup_daily WHERE date_key = 20759").await, 13);
    let _ = f.b;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_times_far_ahead_are_set_to_the_server_time_and_old_ones_go_with_retention() {
    time_bounds_on(On::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_times_far_ahead_are_set_to_the_server_time_and_old_ones_go_with_retention_postgres() {
    if let Some(url) = postgres_url() {
        time_bounds_on(On::Postgres(&url)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_times_far_ahead_are_set_to_the_server_time_and_old_ones_go_with_retention_clickhouse() {
    if let Some(url) = clickhouse_url() {
        time_bounds_on(On::ClickHouse(&url)).await;
    }
}

async fn time_bounds_on(on: On<'_>) {
    let srv = start_on(on, |c| c.reports.raw_retention_days = 30).await;
    // Sent now (the clock stays at T0): one dated 30 days ahead, one from 2001, one an hour ago.
    let old = 978_307_200_000; // 2001-01-01T00:00:00Z
    for (anon, at) in [("future", T0 + 30 * DAY), ("ancient", old), ("recent", T0 - HOUR)] {
        let e = json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "type": "app_open",
            "timestamp": protocol::format_millis(at),
            "anonymous_id": anon,
        });
        let resp = srv.signed("/v1/event", &e).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.json::<Value>().await.unwrap()["accepted"], 1, "{anon}");
    }
    // The future one is stored at the server's time, flagged with the time it claimed.
    let inspected = srv.get("/v1/events?anonymous_id=future").await;
    let event = &inspected["events"][0];
    assert_eq!(event["timestamp"], protocol::format_millis(T0 + 30 * DAY), "the device's time is kept");
    assert_eq!(event["corrected_timestamp"], protocol::format_millis(T0));
    assert_eq!(event["enrichment"]["time"], json!({"clamped_from": T0 + 30 * DAY, "reason": "future"}));
    assert_eq!(srv.get("/v1/events?anonymous_id=recent").await["events"][0]["enrichment"]["time"], Value::Null);

    // The first maintenance run: every event becomes a fact; the one from 2001 is older than
    // the retention and goes at once, with its fact.
    let m = &srv.state.maintenance;
    let r = m.run_due().await.unwrap();
    assert_eq!(r.refreshed_events, 3);
    assert_eq!(r.purged.map(|p| (p.events, p.facts)), Some((1, 1)));
    assert_eq!(srv.count("SELECT count(*) FROM events WHERE anonymous_id = 'ancient'").await, 0);
    let today = T0.div_euclid(DAY);
    assert_eq!(srv.count(&format!("SELECT count(*) FROM fact_events WHERE date_key = {today}")).await, 2);
    // 31 days on, retention reaches the clamped event like any other of its day.
    srv.clock.set(T0 + 31 * DAY);
    let purged = m.run_due().await.unwrap().purged.unwrap();
    assert_eq!((purged.events, purged.facts), (2, 2));
    assert_eq!(srv.count("SELECT count(*) FROM events").await, 0);
    assert_eq!(srv.count("SELECT count(*) FROM sessions").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_the_same_whatever_order_the_events_arrive_in() {
    sessions_on(On::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_the_same_whatever_order_the_events_arrive_in_postgres() {
    if let Some(url) = postgres_url() {
        sessions_on(On::Postgres(&url)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_the_same_whatever_order_the_events_arrive_in_clickhouse() {
    if let Some(url) = clickhouse_url() {
        sessions_on(On::ClickHouse(&url)).await;
    }
}

async fn sessions_on(on: On<'_>) {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    // Small refresh batches: the events reach the star schema in many steps, each meeting the
    // sessions the earlier ones stored.
    let srv = start_on(on, |c| c.reports.refresh_batch = 7).await;
    // 12 sessions of 5 events (0, 10, 20, 25, 28 minutes in), 90 minutes apart, two days ago.
    let base = T0 - 2 * DAY;
    let times: Vec<i64> =
        (0..12).flat_map(|k| [0, 10, 20, 25, 28].map(|m| base + k * 90 * MINUTE + m * MINUTE)).collect();
    let mut shuffled = times.clone();
    shuffled.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    for (n, (a, b)) in times.iter().zip(&shuffled).enumerate() {
        srv.event_at(*a, "tick", "in-order", json!({})).await;
        srv.event_at(*b, "tick", "shuffled", json!({})).await;
        if n % 10 == 9 {
            srv.state.maintenance.refresh().await.unwrap();
        }
    }
    srv.state.maintenance.refresh().await.unwrap();
    for anon in ["in-order", "shuffled"] {
        let of = |sql: &str| sql.replace("$ANON", anon);
        assert_eq!(srv.count(&of("SELECT count(*) FROM sessions WHERE anonymous_id = '$ANON'")).await, 12, "{anon}");
        let q =
            "SELECT count(*) FROM sessions WHERE anonymous_id = '$ANON' AND events = 5 AND end_ts - start_ts = 1680000";
        assert_eq!(srv.count(&of(q)).await, 12, "{anon}: every session has its 5 events over 28 minutes");
        let q = format!("SELECT min(start_ts) - {base} FROM sessions WHERE anonymous_id = '$ANON'");
        assert_eq!(srv.count(&of(&q)).await, 0, "{anon}");
        let q = "SELECT count(DISTINCT session_key) FROM fact_events WHERE anonymous_id = '$ANON'";
        assert_eq!(srv.count(&of(q)).await, 12, "{anon}: the facts moved with their sessions' merges");
        let q = "SELECT count(*) FROM fact_events f WHERE anonymous_id = '$ANON' AND NOT EXISTS
                 (SELECT 1 FROM sessions s WHERE s.app_id = f.app_id AND s.session_key = f.session_key)";
        assert_eq!(srv.count(&of(q)).await, 0, "{anon}: no fact points at a merged session");
        if let On::ClickHouse(_) = on {
            // The ClickHouse copy followed every merge.
            let q = "SELECT count(DISTINCT session_key) FROM fact_events FINAL WHERE anonymous_id = '$ANON'";
            assert_eq!(srv.olap_count(&of(q)).await, Some(12), "{anon}");
            let q = "SELECT count() FROM (SELECT events, start_ts, end_ts, deleted FROM sessions FINAL
                      WHERE anonymous_id = '$ANON') WHERE deleted = 0 AND events = 5 AND end_ts - start_ts = 1680000";
            assert_eq!(srv.olap_count(&of(q)).await, Some(12), "{anon}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_makes_one_person_of_two_user_ids() {
    aliases_on(On::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_makes_one_person_of_two_user_ids_postgres() {
    if let Some(url) = postgres_url() {
        aliases_on(On::Postgres(&url)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_makes_one_person_of_two_user_ids_clickhouse() {
    if let Some(url) = clickhouse_url() {
        aliases_on(On::ClickHouse(&url)).await;
    }
}

/// u1 opens the app on one device; on another, u1 becomes u2 (`alias`) and buys. The funnel
/// counts one person who did both once the alias arrived, and retention one cohort member; no
/// raw user id is stored in the map or in the alias event; deleting u2 takes the link.
async fn aliases_on(on: On<'_>) {
    let srv = start_on(on, |_| {}).await;
    async fn funnel(srv: &Srv) -> Vec<i64> {
        let r = srv.get("/v1/reports/funnel?steps=app_open,purchase&from=2026-11-02&to=2026-11-02").await;
        r["steps"].as_array().unwrap().iter().map(|s| s["users"].as_i64().unwrap()).collect()
    }
    srv.user_event("app_open", "dev-1", "user-one@example.com", json!({})).await;
    srv.clock.advance(MINUTE);
    srv.user_event("purchase", "dev-2", "user-two", json!({"revenue": 5.0, "currency": "EUR"})).await;
    assert_eq!(funnel(&srv).await, [1, 0], "two people before the alias");
    srv.user_event("alias", "dev-2", "user-two", json!({"previous_id": "user-one@example.com"})).await;
    assert_eq!(funnel(&srv).await, [1, 1], "one person after it");
    let r = srv.get("/v1/reports/retention?from=2026-11-02&to=2026-11-02&days=0").await;
    assert_eq!(r["cohorts"][0]["users"], 1, "{r}");
    // Stored forms only: the map and the alias event hold hashes.
    assert_eq!(srv.count("SELECT count(*) FROM identity_links").await, 1);
    assert_eq!(
        srv.count("SELECT count(*) FROM identity_links WHERE alias_user_id LIKE 'h:%' AND user_id LIKE 'h:%'").await,
        1
    );
    assert_eq!(srv.count("SELECT count(*) FROM events WHERE properties LIKE '%user-one%'").await, 0);
    // Deleting the person's final user id takes the link: the first device counts alone again.
    let (s, v) = srv.admin(reqwest::Method::POST, "/v1/user/delete", Some(json!({"user_id": "user-two"}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(srv.count("SELECT count(*) FROM identity_links").await, 0);
    assert_eq!(funnel(&srv).await, [1, 0]);
}

/// A loopback TCP proxy to ClickHouse that can be cut: while cut, open connections are closed
/// and new ones closed at once (what the loader meets when ClickHouse is down).
struct Cuttable {
    url: String,
    up: tokio::sync::watch::Sender<bool>,
}

impl Cuttable {
    async fn to(url: &str) -> Cuttable {
        let target = url.trim_start_matches("http://").trim_end_matches('/').to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (up, watch) = tokio::sync::watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !*watch.borrow() {
                    continue;
                }
                let target = target.clone();
                let mut cut = watch.clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.wait_for(|up| !*up) => {}
                        }
                    }
                });
            }
        });
        Cuttable { url, up }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }
}

/// ClickHouse down for a while under ingest: reports answer 503 meanwhile, nothing is lost
/// (the outbox keeps what changed), and once it is back every event is there once — also
/// those sent twice — and the funnel is the embedded store's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clickhouse_loader_resumes_after_an_outage_and_loads_every_event_once() {
    let Some(url) = clickhouse_url() else { return };
    let proxy = Cuttable::to(&url).await;
    let srv = start_on(On::ClickHouse(&proxy.url), |_| {}).await;
    let olap = srv.state.olap.clone().unwrap();
    let mut sent = Vec::new();
    let event = |n: usize| {
        json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": if n.is_multiple_of(3) { "purchase" } else { "app_open" },
               "timestamp": protocol::format_millis(T0 + n as i64 * SECOND), "anonymous_id": format!("d{}", n % 40)})
    };
    for n in 0..60 {
        let e = event(n);
        srv.accepted(&e).await;
        sent.push(e);
    }
    srv.state.maintenance.refresh().await.unwrap();
    olap.catch_up(None).await.unwrap();

    proxy.set(false);
    for n in 60..150 {
        let e = event(n);
        srv.accepted(&e).await;
        sent.push(e);
        if n % 20 == 0 {
            srv.state.maintenance.refresh().await.unwrap();
        }
    }
    // Re-sent (a client retrying): stored once.
    for e in &sent[50..70] {
        let resp = srv.signed("/v1/event", e).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    srv.state.maintenance.refresh().await.unwrap();
    let down = olap.catch_up(None).await.unwrap_err();
    assert!(down.to_string().contains("unreachable"), "{down}");
    let (status, body) = srv
        .admin(reqwest::Method::GET, "/v1/reports/funnel?steps=app_open,purchase&from=2026-11-02&to=2026-11-02", None)
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("ClickHouse"), "{body}");
    assert!(srv.state.storage.olap_pending().await.unwrap() > 0, "the changes wait in the outbox");

    proxy.set(true);
    assert_eq!(srv.olap_count("SELECT count() FROM fact_events FINAL").await, Some(150));
    assert_eq!(srv.olap_count("SELECT uniqExact(event_id) FROM fact_events").await, Some(150));
    assert_eq!(srv.state.storage.olap_pending().await.unwrap(), 0);
    let users = "SELECT count() FROM (SELECT deleted FROM dim_users FINAL) WHERE deleted = 0";
    assert_eq!(srv.olap_count(users).await, Some(40));
    let from_clickhouse = srv.get("/v1/reports/funnel?steps=app_open,purchase&from=2026-11-02&to=2026-11-02").await;
    // The same funnel from the embedded store's rows, by the domain's function.
    let (from, to, within) = (
        from_clickhouse["from"].as_i64().unwrap(),
        from_clickhouse["to"].as_i64().unwrap(),
        from_clickhouse["within"].as_i64().unwrap(),
    );
    let rows = srv
        .state
        .storage
        .report(trailmark_server::storage::ReportQuery::Events {
            app_id: "app".into(),
            types: vec!["app_open".into(), "purchase".into()],
            from,
            to: to + within,
        })
        .await
        .unwrap();
    let trailmark_server::storage::ReportRows::Events(rows) = rows else { panic!("fact rows") };
    assert_eq!(rows.len(), 150);
    let steps = ["app_open".to_owned(), "purchase".to_owned()];
    let want = trailmark_server::domain::reports::funnel(&rows, &steps, from, to, within);
    let got: Vec<u64> =
        from_clickhouse["steps"].as_array().unwrap().iter().map(|s| s["users"].as_u64().unwrap()).collect();
    assert_eq!(got, want, "the embedded store's answer");
    assert_eq!(got, [40, 36], "{from_clickhouse}");
}

/// A deletion reaches ClickHouse: its receipt says so, and no table there holds anything of
/// the subject (its anonymous ids, its stored user id, its aliased id, its install's and
/// conversions' event ids) once ClickHouse applied the erasure; another person's rows stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_reaches_clickhouse() {
    let Some(url) = clickhouse_url() else { return };
    let srv = start_on(On::ClickHouse(&url), |_| {}).await;
    srv.clock.set(T0);
    // Jane's phone installed from a campaign's click; her purchases are credited to it; her
    // old user id became "jane" (an alias).
    let (_, link) = srv.campaign("Jane's campaign", "meta").await;
    srv.s2s_click("meta", &link, "jane-gaid-0001").await;
    srv.clock.advance(MINUTE);
    srv.install("jane-phone", "jane-gaid-0001").await;
    for anon in ["jane-phone", "jane-laptop"] {
        srv.user_event("app_open", anon, "jane", json!({})).await;
        srv.event_at(srv.clock.now() + MINUTE, "purchase", anon, json!({"revenue": 5, "currency": "EUR"})).await;
    }
    srv.user_event("alias", "jane-phone", "jane", json!({"previous_id": "jane-before"})).await;
    srv.user_event("app_open", "joe-phone", "joe", json!({})).await;
    let funnel = srv.get("/v1/reports/funnel?steps=app_open,purchase&from=2026-11-02&to=2026-11-02").await;
    assert_eq!(funnel["steps"][0]["users"], 2, "{funnel}");
    let ch = srv.state.olap.as_ref().unwrap().clickhouse();
    let stored = ch
        .select("SELECT DISTINCT assumeNotNull(user_id) AS u FROM dim_users FINAL WHERE anonymous_id = 'jane-phone'")
        .await
        .unwrap();
    let jane = stored[0]["u"].as_str().unwrap().to_owned();
    assert_ne!(jane, "jane", "stored as a keyed hash");
    // What else names her: her install's and conversions' event ids, her old (aliased) id.
    let mut hers = vec!["jane-phone".to_owned(), "jane-laptop".to_owned(), jane.clone()];
    let installs = ch.select("SELECT DISTINCT event_id FROM installs WHERE anonymous_id = 'jane-phone'").await.unwrap();
    assert_eq!(installs.len(), 1, "the install is copied");
    let conversions =
        ch.select("SELECT DISTINCT event_id FROM conversions WHERE anonymous_id = 'jane-phone'").await.unwrap();
    assert!(!conversions.is_empty(), "the purchase was credited and copied");
    let aliases = ch
        .select(&format!("SELECT DISTINCT alias_user_id AS a FROM identity_links WHERE user_id = '{jane}'"))
        .await
        .unwrap();
    assert_eq!(aliases.len(), 1, "the identity map is copied");
    for r in installs.iter().chain(&conversions) {
        hers.push(r["event_id"].as_str().unwrap().to_owned());
    }
    hers.push(aliases[0]["a"].as_str().unwrap().to_owned());

    let (s, receipt) = srv.admin(reqwest::Method::POST, "/v1/user/delete", Some(json!({"user_id": "jane"}))).await;
    assert_eq!(s, 200, "{receipt}");
    assert_eq!(receipt["clickhouse"], "erasing", "{receipt}");
    // Every text column of every table, for every value of the subject.
    let columns = ch
        .select(
            "SELECT table, name FROM system.columns WHERE database = currentDatabase()
              AND (type = 'String' OR type = 'Nullable(String)')",
        )
        .await
        .unwrap();
    assert!(columns.len() >= 10, "{columns:?}");
    for value in &hers {
        for c in &columns {
            let (table, column) = (c["table"].as_str().unwrap(), c["name"].as_str().unwrap());
            let n = srv.olap_count(&format!("SELECT count() FROM {table} WHERE {column} = '{value}'")).await;
            assert_eq!(n, Some(0), "{table}.{column} still holds {value}");
        }
    }
    assert_eq!(srv.olap_count("SELECT count() FROM fact_events WHERE anonymous_id = 'joe-phone'").await, Some(1));
    let funnel = srv.get("/v1/reports/funnel?steps=app_open,purchase&from=2026-11-02&to=2026-11-02").await;
    assert_eq!(funnel["steps"][0]["users"], 1, "{funnel}");
}

/// The funnel and retention computed in ClickHouse are the domain's (the oracle) over the
/// embedded store's rows, on random data: ties in time (ordered as stored), repeated steps,
/// several devices of one user, an alias, steps outside the range, windows from minutes to
/// weeks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn funnels_and_retention_in_clickhouse_are_the_domains_on_random_data() {
    use rand::{Rng, SeedableRng};
    use trailmark_server::domain::identity::resolve_people;
    use trailmark_server::domain::reports::{day_of, funnel, retention};
    use trailmark_server::storage::{ReportQuery, ReportRows};
    let Some(url) = clickhouse_url() else { return };
    let srv = start_on(On::ClickHouse(&url), |c| {
        c.reports.refresh_batch = 50;
        c.limits.ip_burst = 10_000;
    })
    .await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let end = T0 + 12 * DAY;
    srv.clock.set(end);
    let kinds = ["a", "b", "c", "x"];
    for n in 0..600 {
        let device = rng.random_range(0..40);
        // A coarse grid of times: many ties.
        let at = T0 - 3 * DAY + rng.random_range(0..(14 * 24 * 6)) * 10 * MINUTE;
        let mut e = json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": kinds[rng.random_range(0..4)],
                           "timestamp": protocol::format_millis(at.min(end)), "anonymous_id": format!("d{device}")});
        if device < 12 {
            e["user_id"] = json!(format!("u{}", device / 3));
        }
        srv.accepted(&e).await;
        if n % 150 == 149 {
            srv.state.maintenance.refresh().await.unwrap();
        }
    }
    srv.user_event("alias", "d0", "u1", json!({"previous_id": "u0"})).await;
    let links: std::collections::HashMap<String, String> =
        srv.state.storage.identity_links("app".into()).await.unwrap().into_iter().collect();
    assert_eq!(links.len(), 1);

    let cases = [
        ("a,b", "1h", "2026-11-02", "2026-11-05"),
        ("a,b,c", "1d", "2026-10-30", "2026-11-12"),
        ("a,a", "30m", "2026-11-01", "2026-11-10"),
        ("a,b,a,c", "7d", "2026-11-03", "2026-11-03"),
        ("c", "1h", "2026-11-02", "2026-11-08"),
        ("x,b,x", "90m", "2026-10-30", "2026-11-14"),
    ];
    for (steps, within, from, to) in cases {
        let path = format!("/v1/reports/funnel?steps={steps}&within={within}&from={from}&to={to}");
        let r = srv.get(&path).await;
        let got: Vec<u64> = r["steps"].as_array().unwrap().iter().map(|s| s["users"].as_u64().unwrap()).collect();
        let (from, to, within) =
            (r["from"].as_i64().unwrap(), r["to"].as_i64().unwrap(), r["within"].as_i64().unwrap());
        let steps: Vec<String> = steps.split(',').map(str::to_owned).collect();
        let mut types = steps.clone();
        types.sort();
        types.dedup();
        let query = ReportQuery::Events { app_id: "app".into(), types, from, to: to + within };
        let ReportRows::Events(mut rows) = srv.state.storage.report(query).await.unwrap() else { panic!() };
        resolve_people(rows.iter_mut().map(|r| &mut r.user_id), &links);
        assert_eq!(got, funnel(&rows, &steps, from, to, within), "{path}");
        assert!(got[0] > 0, "{path}: the case counts someone");
    }
    // (days, from, to, and the same as day keys: T0's day is 2026-11-02)
    let t0 = day_of(T0);
    for (days, from, to, range) in [
        ("0,1,2,7", "2026-10-30", "2026-11-12", (t0 - 3, t0 + 10)),
        ("1,3", "2026-10-30", "2026-11-01", (t0 - 3, t0 - 1)),
    ] {
        let path = format!("/v1/reports/retention?days={days}&from={from}&to={to}");
        let r = srv.get(&path).await;
        let days: Vec<i64> = days.split(',').map(|d| d.parse().unwrap()).collect();
        let (from_day, to_day) = range;
        let max_offset = *days.iter().max().unwrap();
        let query = ReportQuery::Cohorts { app_id: "app".into(), from_day, to_day, max_offset };
        let ReportRows::Users(mut users) = srv.state.storage.report(query).await.unwrap() else { panic!() };
        resolve_people(users.iter_mut().map(|u| &mut u.user_id), &links);
        let want = serde_json::to_value(retention(&users, from_day, to_day, &days, day_of(end))).unwrap();
        assert_eq!(r["cohorts"], want, "{path}");
        assert!(r["cohorts"].as_array().unwrap().iter().any(|c| c["users"].as_u64().unwrap() > 1), "{path}");
    }
}
