//! Two reference-server processes share one PostgreSQL database and one Redis: a click answered
//! by instance A attributes an install posted to instance B, the same event sent to both is
//! stored once, and a deletion through one leaves nothing of the subject in either store.
//!
//! Instance B reaches both over TLS when `TM_POSTGRES_TLS_URL`, `TM_REDIS_TLS_URL` and
//! `TM_SERVICES_CA` name them (as a PostgreSQL user that is refused without TLS, and a
//! TLS-only Redis port, so B works only if TLS does).
//!
//! Needs `TM_POSTGRES_URL` and `TM_REDIS_URL` (`./tests/run.sh services` starts both); skipped
//! without them unless `TM_REQUIRE_SERVICES=1`.

mod common;

use common::spawn;
use serde_json::{Value, json};
use trailmark_core::protocol;

const ANDROID_UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A.240205.004) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";

fn services() -> Option<(String, String)> {
    match (std::env::var("TM_POSTGRES_URL"), std::env::var("TM_REDIS_URL")) {
        (Ok(pg), Ok(redis)) => Some((pg, redis)),
        _ => {
            assert!(
                std::env::var("TM_REQUIRE_SERVICES").is_err(),
                "TM_REQUIRE_SERVICES is set but TM_POSTGRES_URL or TM_REDIS_URL is missing"
            );
            eprintln!("skipped: set TM_POSTGRES_URL and TM_REDIS_URL (./tests/run.sh services does)");
            None
        }
    }
}

struct Client {
    http: reqwest::Client,
}

impl Client {
    async fn admin(&self, base: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{base}{path}")).bearer_auth("test-admin-key-0123456789");
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
    }

    async fn signed(&self, base: &str, path: &str, body: &Value) -> (u16, Value) {
        common::signed(&self.http, base, path, body, &[]).await
    }

    /// Follows a tracking link and returns the click id from the redirect.
    async fn click(&self, base: &str, path: &str) -> String {
        let resp = self.http.get(format!("{base}{path}")).header("User-Agent", ANDROID_UA).send().await.unwrap();
        assert_eq!(resp.status(), 302);
        let to = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
        let referrer = to.query_pairs().find(|(k, _)| k == "referrer").unwrap().1.into_owned();
        url::form_urlencoded::parse(referrer.as_bytes()).find(|(k, _)| k == "tm_click_id").unwrap().1.into_owned()
    }
}

async fn link(client: &Client, base: &str) -> (String, String) {
    let (s, c) = client
        .admin(base, reqwest::Method::POST, "/v1/campaigns", Some(json!({"name": "Spring", "network": "meta"})))
        .await;
    assert_eq!(s, 201, "{c}");
    let (s, l) = client
        .admin(
            base,
            reqwest::Method::POST,
            "/v1/links",
            Some(json!({
                "campaign_id": c["campaign_id"],
                "destinations": {
                    "android": "https://play.google.com/store/apps/details?id=com.example.shop",
                    "web": "https://shop.example.com/landing"
                }
            })),
        )
        .await;
    assert_eq!(s, 201, "{l}");
    (c["campaign_id"].as_str().unwrap().to_owned(), l["code"].as_str().unwrap().to_owned())
}

fn install_body(anonymous_id: &str, gaid: Option<&str>, click_id: Option<&str>) -> Value {
    let mut body = json!({
        "event_id": uuid::Uuid::new_v4().to_string(),
        "anonymous_id": anonymous_id,
        "timestamp": protocol::format_millis(trailmark_server::now_ms()),
        "platform": "android",
        "device": {"os": "Android", "os_version": "14", "model": "Pixel 8"},
    });
    if let Some(g) = gaid {
        body["device"]["gaid"] = json!(g);
    }
    if let Some(c) = click_id {
        body["click_id"] = json!(c);
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_postgres_and_redis() {
    let Some((pg_url, redis_url)) = services() else { return };
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("shared.keys");
    // Installs follow their clicks within milliseconds here; the click-injection rule would
    // reject them.
    let config = dir.path().join("server.toml");
    std::fs::write(&config, "[attribution]\nmin_click_to_install_secs = 0\n").unwrap();
    let schema = format!("mi_{}_{}", std::process::id(), trailmark_server::now_ms());
    let prefix_args = |db: &str| {
        vec![
            "--db".to_owned(),
            dir.path().join(db).display().to_string(),
            "--postgres".to_owned(),
            pg_url.clone(),
            "--postgres-schema".to_owned(),
            schema.clone(),
            "--redis".to_owned(),
            redis_url.clone(),
            "--keys".to_owned(),
            keys.display().to_string(),
            "--config".to_owned(),
            config.display().to_string(),
        ]
    };
    let args_a = prefix_args("a.db");
    let a = spawn(&args_a.iter().map(String::as_str).collect::<Vec<_>>());
    let mut args_b = prefix_args("b.db");
    match (std::env::var("TM_POSTGRES_TLS_URL"), std::env::var("TM_REDIS_TLS_URL"), std::env::var("TM_SERVICES_CA")) {
        (Ok(pg_tls), Ok(redis_tls), Ok(ca)) => {
            let swap = |args: &mut Vec<String>, flag: &str, value: &str| {
                let i = args.iter().position(|a| a == flag).unwrap();
                args[i + 1] = value.to_owned();
            };
            swap(&mut args_b, "--postgres", &pg_tls);
            swap(&mut args_b, "--redis", &redis_tls);
            args_b.extend(["--postgres-ca-file".into(), ca.clone(), "--redis-ca-file".into(), ca]);
        }
        _ => assert!(
            std::env::var("TM_REQUIRE_SERVICES").is_err(),
            "TM_REQUIRE_SERVICES is set but the TLS services are not"
        ),
    }
    let b = spawn(&args_b.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!dir.path().join("a.db").exists(), "with --postgres no SQLite file is made");
    let client =
        Client { http: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap() };

    // Installs noted on their address (the fingerprint step's crowd count) already in Redis
    // from earlier runs on the same server.
    let mut redis = redis::Client::open(redis_url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let noted = r#""kind":"install""#;
    let noted_before = redis_entries_with(&mut redis, &[noted]).await.len();

    // A click through A (on a link made through A) attributes an install posted to B: by
    // device id, which only the shared click cache can tell B about.
    let (campaign, code) = link(&client, &a.base).await;
    let gaid = uuid::Uuid::new_v4().to_string();
    let click_a = client.click(&a.base, &format!("/c/{code}?gaid={gaid}")).await;
    let anon = format!("anon-{}", uuid::Uuid::new_v4());
    let install = install_body(&anon, Some(&gaid), None);
    let (s, result) = client.signed(&b.base, "/v1/install", &install).await;
    assert_eq!(s, 200, "{result}");
    assert_eq!(result["attributed"], true, "{result}");
    assert_eq!(result["match_type"], "device_id", "{result}");
    assert_eq!(result["click_id"], click_a.as_str(), "{result}");
    assert_eq!(result["campaign_id"], campaign.as_str());
    // The same install posted to A gets the same answer and is stored once.
    let (s, again) = client.signed(&a.base, "/v1/install", &install).await;
    assert_eq!((s, &again), (200, &result));

    // A link made through A, clicked through B (B loads it on the miss), installed through A
    // by click id.
    let (_, code2) = link(&client, &a.base).await;
    let click_b = client.click(&b.base, &format!("/c/{code2}")).await;
    let (s, by_id) = client.signed(&a.base, "/v1/install", &install_body("anon-other", None, Some(&click_b))).await;
    assert_eq!(s, 200, "{by_id}");
    assert_eq!((by_id["match_type"].as_str(), by_id["click_id"].as_str()), (Some("click_id"), Some(click_b.as_str())));

    // A web visit through B's click, sent to A, becomes a touchpoint there.
    let visit = json!({"sent_at": protocol::format_millis(trailmark_server::now_ms()), "batch": [{
        "event_id": uuid::Uuid::new_v4().to_string(), "type": "page_view",
        "timestamp": protocol::format_millis(trailmark_server::now_ms()), "anonymous_id": "anon-web",
        "context": {"campaign": {"click_id": click_b}}}]});
    let (s, body) = client.signed(&a.base, "/v1/event", &visit).await;
    assert_eq!(s, 200, "{body}");

    // The same event sent to both instances is stored once.
    let event_id = uuid::Uuid::new_v4().to_string();
    let user = format!("mi-user-{}", uuid::Uuid::new_v4());
    let event_device = format!("{}", uuid::Uuid::new_v4()).to_uppercase();
    let batch = json!({"sent_at": protocol::format_millis(trailmark_server::now_ms()), "batch": [{
        "event_id": event_id, "type": "purchase", "timestamp": protocol::format_millis(trailmark_server::now_ms()),
        "anonymous_id": anon, "user_id": user, "device_id": event_device,
        "properties": {"revenue": 9.5, "currency": "EUR"}}]});
    for base in [&a.base, &b.base] {
        let (s, body) = client.signed(base, "/v1/event", &batch).await;
        assert_eq!(s, 200, "{body}");
    }
    for base in [&a.base, &b.base] {
        let (s, events) =
            client.admin(base, reqwest::Method::GET, &format!("/v1/events?anonymous_id={anon}"), None).await;
        assert_eq!(s, 200);
        let ids: Vec<&str> =
            events["events"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap()).collect();
        assert_eq!(ids, vec![event_id.as_str()], "one copy, seen from either instance");
    }

    // The subject is in both stores before the deletion…
    let (pg, conn) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    pg.batch_execute(&format!("SET search_path = {schema}")).await.unwrap();
    let web: i64 = pg
        .query_one("SELECT count(*) FROM touchpoints WHERE anonymous_id = 'anon-web' AND click_id = $1", &[&click_b])
        .await
        .unwrap()
        .get(0);
    assert_eq!(web, 1, "a click answered by B is found by A for a touchpoint");
    let needles = [gaid.as_str(), anon.as_str(), click_a.as_str()];
    assert!(!pg_rows_with(&pg, &schema, &needles).await.is_empty(), "the subject is stored");
    // …but its advertising id only as a keyed hash and a ciphertext: not in a dump of the
    // database, in any case, nor in Redis.
    let dump = pg_dump(&pg_url, &schema);
    for id in [&gaid, &user, &event_device] {
        for form in [id.to_lowercase(), id.to_uppercase(), id.to_string()] {
            assert!(!dump.contains(&form), "a raw identifier ({id}) is in the PostgreSQL dump");
        }
    }
    assert!(dump.contains("COPY") && dump.contains(&anon), "the dump holds the data");
    assert_eq!(redis_entries_with(&mut redis, &[gaid.as_str()]).await, Vec::<String>::new(), "the raw GAID in Redis");
    assert!(!redis_entries_with(&mut redis, &needles).await.is_empty(), "the click is cached");
    // Both decided installs are noted on their address.
    assert_eq!(redis_entries_with(&mut redis, &[noted]).await.len(), noted_before + 2, "installs noted in Redis");

    // …and in neither after `/v1/user/delete` through B.
    let (s, receipt) =
        client.admin(&b.base, reqwest::Method::POST, "/v1/user/delete", Some(json!({"device_id": gaid}))).await;
    assert_eq!(s, 200, "{receipt}");
    assert!(receipt["rows_deleted"].as_u64().unwrap() >= 3, "{receipt}");
    assert!(receipt.get("warnings").is_none(), "{receipt}");
    assert_eq!(pg_rows_with(&pg, &schema, &needles).await, Vec::<String>::new(), "left in PostgreSQL");
    assert_eq!(redis_entries_with(&mut redis, &needles).await, Vec::<String>::new(), "left in Redis");
    assert_eq!(
        redis_entries_with(&mut redis, &[noted]).await.len(),
        noted_before + 1,
        "the subject's noted install is gone"
    );
    // The other click (another subject) is still matchable through either instance.
    assert!(!redis_entries_with(&mut redis, &[click_b.as_str()]).await.is_empty());
    let (s, _) = client.admin(&a.base, reqwest::Method::GET, "/v1/events?anonymous_id=anon-other", None).await;
    assert_eq!(s, 200);

    drop((a, b));
    pg.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
}

/// `pg_dump` of one schema (data and definitions) as text.
fn pg_dump(url: &str, schema: &str) -> String {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|d| d.filter_map(Result::ok).map(|e| e.path().join("bin/pg_dump")).filter(|p| p.exists()).max())
        .unwrap_or_else(|| "pg_dump".into());
    let out = std::process::Command::new(bin).args(["--schema", schema, "--dbname", url]).output().unwrap();
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every row of every table in `schema` whose text holds one of `needles` (as `table: row`).
async fn pg_rows_with(pg: &tokio_postgres::Client, schema: &str, needles: &[&str]) -> Vec<String> {
    let tables = pg
        .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1", &[&schema])
        .await
        .unwrap();
    let mut found = Vec::new();
    for t in tables {
        let table: String = t.get(0);
        let rows = pg.query(&format!("SELECT t::text FROM {table} t"), &[]).await.unwrap();
        for row in rows {
            let text: String = row.get(0);
            let lower = text.to_ascii_lowercase();
            if needles.iter().any(|n| lower.contains(&n.to_ascii_lowercase())) {
                found.push(format!("{table}: {text}"));
            }
        }
    }
    found
}

/// Every Redis key whose name or content (string or sorted set) holds one of `needles`.
async fn redis_entries_with(redis: &mut redis::aio::MultiplexedConnection, needles: &[&str]) -> Vec<String> {
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(redis).await.unwrap();
    let mut found = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(redis).await.unwrap();
        let content: Vec<String> = match kind.as_str() {
            "string" => vec![redis::cmd("GET").arg(&key).query_async(redis).await.unwrap()],
            "zset" => redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).query_async(redis).await.unwrap(),
            _ => vec![],
        };
        let hit = |s: &str| needles.iter().any(|n| s.to_ascii_lowercase().contains(&n.to_ascii_lowercase()));
        if hit(&key) || content.iter().any(|c| hit(c)) {
            found.push(format!("{key} ({kind}): {content:?}"));
        }
    }
    found
}
