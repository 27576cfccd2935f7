//! Rate limits (429 + Retry-After), a writer that falls behind (503 + Retry-After) through a
//! custom `Storage`, JWT admin auth, and clock-skew correction.

use std::sync::Arc;

use serde_json::{Value, json};
use trailmark_core::protocol;
use trailmark_server::storage::*;
use trailmark_server::{JwtAlgorithm, JwtConfig, ServerBuilder, ServerConfig};

mod common;

use common::serve;

async fn post(base: &str, body: &Value) -> reqwest::Response {
    common::signed(&reqwest::Client::new(), base, serde_json::to_vec(body).unwrap()).send().await.unwrap()
}

fn event_at(ms: i64) -> Value {
    json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": "x", "timestamp": protocol::format_millis(ms), "anonymous_id": "a"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_rate_limit_answers_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.limits.ip_rate_per_sec = 1;
    config.limits.ip_burst = 3;
    let base = serve(ServerBuilder::new(config).sqlite(dir.path().join("s.db")).unwrap()).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let resp = post(&base, &event_at(trailmark_server::now_ms())).await;
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            assert!(resp.headers().get("retry-after").is_some());
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(&statuses[..3], &[200, 200, 200], "{statuses:?}");
    assert!(statuses[3..].contains(&429), "{statuses:?}");
}

/// A store whose writer is always behind.
struct Behind;

fn busy<'a, T: Send + 'a>() -> StorageFuture<'a, T> {
    Box::pin(async { Err(StorageError::Busy) })
}

impl EventStore for Behind {
    fn insert(&self, _events: Vec<NewEvent>) -> StorageFuture<'_, Vec<bool>> {
        busy()
    }
    fn recent_events(&self, _app: Option<String>, _s: Subject, _limit: usize) -> StorageFuture<'_, Vec<NewEvent>> {
        busy()
    }
    fn backlog(&self) -> usize {
        1_000_000
    }
}

impl DeletionStore for Behind {
    fn delete_subject(&self, _s: Subject, _a: DeletionAudit, _t: Tombstones) -> StorageFuture<'_, DeleteReport> {
        busy()
    }
    /// Reads answer (nothing is tombstoned): only the writer is behind.
    fn screen(&self, _app: String, _events: Vec<String>, _ids: Vec<String>) -> StorageFuture<'_, Screened> {
        Box::pin(async { Ok(Screened::default()) })
    }
    fn suppressions(&self, _limit: usize) -> StorageFuture<'_, Vec<Suppression>> {
        busy()
    }
    fn lift_suppressions(&self, _r: Option<String>, _h: Vec<String>) -> StorageFuture<'_, u64> {
        busy()
    }
}

impl LinkStore for Behind {
    fn save_campaign(&self, _c: Campaign) -> StorageFuture<'_, ()> {
        busy()
    }
    fn save_link(&self, _l: LinkRecord, _a: LinkAudit) -> StorageFuture<'_, ()> {
        busy()
    }
    fn load_links(&self) -> StorageFuture<'_, LinkCatalog> {
        busy()
    }
    fn link_audit(&self, _id: String) -> StorageFuture<'_, Vec<LinkAudit>> {
        busy()
    }
    fn record_touch(&self, _t: ClickRecord) -> Result<(), StorageError> {
        Err(StorageError::Busy)
    }
    fn load_touches(&self, _since: i64) -> StorageFuture<'_, Vec<ClickRecord>> {
        busy()
    }
    fn click_params(&self, _id: String) -> StorageFuture<'_, Option<ClickParams>> {
        busy()
    }
}

impl InstallStore for Behind {
    fn install_by_event(&self, _app: Option<String>, _id: String) -> StorageFuture<'_, Option<InstallRecord>> {
        busy()
    }
    fn last_install(&self, _app: String, _k: DeviceKeys) -> StorageFuture<'_, Option<InstallRecord>> {
        busy()
    }
    fn install_lookup(&self, _app: String, _id: String, _k: DeviceKeys) -> StorageFuture<'_, InstallLookup> {
        busy()
    }
    fn save_install(
        &self,
        _i: InstallRecord,
        _t: Option<Touchpoint>,
        _a: Option<FraudAlert>,
        _p: Vec<PostbackRecord>,
    ) -> StorageFuture<'_, Option<Vec<i64>>> {
        busy()
    }
    fn install_counts(&self, _since: i64) -> StorageFuture<'_, Vec<InstallCount>> {
        busy()
    }
    fn attach_advertising_id(&self, _u: AdIdUpdate) -> StorageFuture<'_, u64> {
        busy()
    }
    fn save_test_device(&self, _d: TestDevice) -> StorageFuture<'_, bool> {
        busy()
    }
    fn remove_test_device(&self, _id: String) -> StorageFuture<'_, bool> {
        busy()
    }
    fn test_devices(&self) -> StorageFuture<'_, Vec<TestDevice>> {
        busy()
    }
}

impl ConversionStore for Behind {
    fn reengagement_facts(&self, _app: String, _anon: String, _before: i64) -> StorageFuture<'_, ReengagementFacts> {
        busy()
    }
    fn save_touchpoints(&self, _t: Vec<Touchpoint>, _r: Vec<Reengagement>) -> StorageFuture<'_, Vec<bool>> {
        busy()
    }
    fn conversion_touchpoints(
        &self,
        _app: String,
        _anon: String,
        _user: Option<String>,
        _since: i64,
        _until: i64,
    ) -> StorageFuture<'_, Vec<Touchpoint>> {
        busy()
    }
    fn save_conversion(&self, _rows: Vec<ConversionCredit>) -> StorageFuture<'_, bool> {
        busy()
    }
    fn save_postback(&self, _p: PostbackRecord) -> StorageFuture<'_, i64> {
        busy()
    }
    fn log_postback_attempt(&self, _a: PostbackAttempt) -> StorageFuture<'_, ()> {
        busy()
    }
    fn postback_pending(&self, _id: i64) -> StorageFuture<'_, bool> {
        busy()
    }
    fn latest_context(&self, _app: String, _anon: String, _user: Option<String>) -> StorageFuture<'_, Vec<String>> {
        busy()
    }
    fn pending_postbacks(&self) -> StorageFuture<'_, Vec<PendingPostback>> {
        busy()
    }
}

impl IdentifierStore for Behind {
    fn identifier_rows(
        &self,
        _t: &'static IdTable,
        _a: Option<Vec<String>>,
        _l: usize,
    ) -> StorageFuture<'_, Vec<IdRow>> {
        busy()
    }
    fn rewrite_identifiers(&self, _t: &'static IdTable, _rows: Vec<IdRow>) -> StorageFuture<'_, ()> {
        busy()
    }
    fn raw_user_ids(&self, _limit: usize) -> StorageFuture<'_, Vec<String>> {
        busy()
    }
    fn replace_user_ids(&self, _pairs: Vec<(String, String)>) -> StorageFuture<'_, ()> {
        busy()
    }
    fn identifiers_version(&self) -> StorageFuture<'_, Option<i64>> {
        busy()
    }
    fn set_identifiers_version(&self, _v: i64) -> StorageFuture<'_, ()> {
        busy()
    }
}

impl IdentityStore for Behind {
    fn link_users(&self, _links: Vec<UserLink>) -> StorageFuture<'_, u64> {
        busy()
    }
    fn identity_links(&self, _app: String) -> StorageFuture<'_, Vec<(String, String)>> {
        busy()
    }
}

impl OlapOutboxStore for Behind {
    fn olap_switch(&self, _on: bool, _refill: bool) -> StorageFuture<'_, ()> {
        busy()
    }
    fn olap_renew(&self, _lease: OlapLease) -> StorageFuture<'_, bool> {
        busy()
    }
    fn olap_page(&self, _lease: OlapLease, _limit: usize) -> StorageFuture<'_, Option<OlapPage>> {
        busy()
    }
    fn olap_done(&self, _seqs: Vec<i64>) -> StorageFuture<'_, ()> {
        busy()
    }
    fn olap_pending(&self) -> StorageFuture<'_, u64> {
        busy()
    }
}

impl ReportStore for Behind {
    fn refresh_step(&self, _batch: usize, _gap: i64, _horizon: Option<i64>) -> StorageFuture<'_, RefreshReport> {
        busy()
    }
    fn purge(&self, _c: RetentionCutoffs) -> StorageFuture<'_, PurgeReport> {
        busy()
    }
    fn save_cost(&self, _c: CampaignCost) -> StorageFuture<'_, Result<(), String>> {
        busy()
    }
    fn report(&self, _q: ReportQuery) -> StorageFuture<'_, ReportRows> {
        busy()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_falls_behind_answers_503_with_retry_after() {
    let config = ServerConfig::new().with_app("app", "secret");
    let base = serve(ServerBuilder::new(config).storage(Arc::new(Behind))).await;
    let resp = post(&base, &event_at(trailmark_server::now_ms())).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unavailable");
    let health: Value = reqwest::get(format!("{base}/healthz")).await.unwrap().json().await.unwrap();
    assert_eq!(health["writer_backlog"], 1_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_accepts_a_valid_hs256_jwt_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.jwt = Some(JwtConfig {
        algorithm: JwtAlgorithm::Hs256,
        key: "jwt-key".into(),
        issuer: Some("https://idp.example".into()),
        audience: None,
    });
    let base = serve(ServerBuilder::new(config).sqlite(dir.path().join("s.db")).unwrap()).await;
    let token = |key: &str, iss: &str, exp: i64| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": "ops@example", "iss": iss, "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .unwrap()
    };
    let later = trailmark_server::now_ms() / 1000 + 600;
    let delete = |t: String| {
        reqwest::Client::new()
            .post(format!("{base}/v1/user/delete"))
            .header("Authorization", format!("Bearer {t}"))
            .body(r#"{"user_id": "u1"}"#)
            .send()
    };
    assert_eq!(delete(token("jwt-key", "https://idp.example", later)).await.unwrap().status(), 200);
    assert_eq!(delete(token("other-key", "https://idp.example", later)).await.unwrap().status(), 401);
    assert_eq!(delete(token("jwt-key", "https://evil.example", later)).await.unwrap().status(), 401);
    assert_eq!(delete(token("jwt-key", "https://idp.example", later - 7200)).await.unwrap().status(), 401);
    // A configured issuer must be in the token; and a refusal tells nothing about which check
    // failed.
    let no_iss = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "ops@example", "exp": later}),
        &jsonwebtoken::EncodingKey::from_secret(b"jwt-key"),
    )
    .unwrap();
    let resp = delete(no_iss).await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["message"], "bearer token refused", "{body}");
    let resp = delete(token("jwt-key", "https://evil.example", later)).await.unwrap();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["message"], "bearer token refused", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_clock_skew_is_corrected_beside_the_raw_time() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let base = serve(ServerBuilder::new(ServerConfig::new().with_app("app", "secret")).sqlite(&db).unwrap()).await;
    // A device whose clock is one hour behind: the event happened 5 s before it was sent.
    let device_now = trailmark_server::now_ms() - 3_600_000;
    let event = event_at(device_now - 5_000);
    let body = json!({"sent_at": protocol::format_millis(device_now), "batch": [event]});
    assert_eq!(post(&base, &body).await.status(), 200);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (client_ts, corrected, received): (i64, i64, i64) = conn
        .query_row("SELECT client_ts, corrected_ts, received_at FROM events", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(client_ts, device_now - 5_000);
    assert_eq!(received - corrected, 5_000, "corrected = received_at - (sent_at - timestamp)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_accepts_an_rs256_jwt_signed_by_the_configured_key() {
    // A throwaway key pair made for this test (openssl genrsa 2048).
    let private = include_str!("fixtures/jwt-test-private.pem");
    let public = include_str!("fixtures/jwt-test-public.pem");
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.jwt = Some(JwtConfig {
        algorithm: JwtAlgorithm::Rs256,
        key: public.into(),
        issuer: None,
        audience: Some("trailmark".into()),
    });
    let base = serve(ServerBuilder::new(config).sqlite(dir.path().join("s.db")).unwrap()).await;
    let exp = trailmark_server::now_ms() / 1000 + 600;
    let sign = |aud: &str, alg: jsonwebtoken::Algorithm, key: jsonwebtoken::EncodingKey| {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &json!({"sub": "ops", "aud": aud, "exp": exp}), &key)
            .unwrap()
    };
    let rsa = || jsonwebtoken::EncodingKey::from_rsa_pem(private.as_bytes()).unwrap();
    let delete = |t: String| {
        reqwest::Client::new()
            .post(format!("{base}/v1/user/delete"))
            .header("Authorization", format!("Bearer {t}"))
            .body(r#"{"device_id": "d1"}"#)
            .send()
    };
    assert_eq!(delete(sign("trailmark", jsonwebtoken::Algorithm::RS256, rsa())).await.unwrap().status(), 200);
    assert_eq!(delete(sign("other", jsonwebtoken::Algorithm::RS256, rsa())).await.unwrap().status(), 401);
    // A configured audience must be in the token.
    let no_aud = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"sub": "ops", "exp": exp}),
        &rsa(),
    )
    .unwrap();
    assert_eq!(delete(no_aud).await.unwrap().status(), 401);
    // An HS256 token keyed with the public key text (algorithm confusion) is refused.
    let confused = jsonwebtoken::EncodingKey::from_secret(public.as_bytes());
    assert_eq!(delete(sign("trailmark", jsonwebtoken::Algorithm::HS256, confused)).await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_requests_do_not_spend_the_apps_quota() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.limits.app_rate_per_sec = 1;
    config.limits.app_burst = 2;
    let base = serve(ServerBuilder::new(config).sqlite(dir.path().join("s.db")).unwrap()).await;
    for _ in 0..10 {
        let resp = reqwest::Client::new()
            .post(format!("{base}/v1/event"))
            .header(protocol::HEADER_APP, "app")
            .header(protocol::HEADER_TIMESTAMP, "1")
            .header(protocol::HEADER_SIGNATURE, format!("v1={}", "0".repeat(64)))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
    }
    assert_eq!(post(&base, &event_at(trailmark_server::now_ms())).await.status(), 200, "the app's quota is intact");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bodies_are_read_only_after_auth_and_only_up_to_4_kb() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.admin_key = Some("adm-key-0123456789ab".into());
    let base = serve(ServerBuilder::new(config).sqlite(dir.path().join("s.db")).unwrap()).await;
    let client = reqwest::Client::new();
    // 8 MB without credentials: refused without reading the body. The server may close the
    // connection while the client is still sending, which the client sees as an error.
    let resp = client.post(format!("{base}/v1/user/delete")).body(vec![b' '; 8 << 20]).send().await;
    if let Ok(resp) = resp {
        assert_eq!(resp.status(), 401);
    }
    // Each request on a fresh client: the server closes connections whose body it refused.
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/user/delete"))
        .header("Authorization", "Bearer adm-key-0123456789ab")
        .body(vec![b' '; 200 << 10])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    // A fresh connection: the server closes the ones whose bodies it refused to read.
    let health: Value = reqwest::get(format!("{base}/healthz")).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_id_ingest_accepts_can_be_deleted_and_oversized_events_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("s.db");
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.admin_key = Some("adm-key-0123456789ab".into());
    let base = serve(ServerBuilder::new(config).sqlite(&db).unwrap()).await;
    let user = "用".repeat(100); // 100 characters, 300 bytes
    let mut e = event_at(trailmark_server::now_ms());
    e["user_id"] = json!(user);
    let mut huge = event_at(trailmark_server::now_ms());
    huge["properties"] = json!({"blob": "x".repeat(40_000)});
    let answer: Value = post(&base, &json!({"batch": [e, huge]})).await.json().await.unwrap();
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(answer["rejected"][0]["index"], 1, "{answer}");
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/user/delete"))
        .header("Authorization", "Bearer adm-key-0123456789ab")
        .body(json!({ "user_id": user }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let receipt: Value = resp.json().await.unwrap();
    assert_eq!(receipt["rows_deleted"], 1);
}

/// A signed request from `app` (or, with `network`, from that ad network) through a trusted
/// proxy that saw the client at `client`.
fn signed_from(
    base: &str,
    path: &str,
    client: &str,
    signer: (&str, &str, bool),
    body: &Value,
) -> reqwest::RequestBuilder {
    let (name, secret, network) = signer;
    let ts = trailmark_server::now_ms() / 1000;
    let body = serde_json::to_vec(body).unwrap();
    let header = if network { protocol::HEADER_NETWORK } else { protocol::HEADER_APP };
    reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("X-Forwarded-For", client)
        .header(header, name)
        .header(protocol::HEADER_TIMESTAMP, ts.to_string())
        .header(protocol::HEADER_SIGNATURE, protocol::sign(secret.as_bytes(), ts, &body))
        .body(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_to_server_clicks_pay_their_sender_and_their_network_not_the_visitor_or_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new().with_app("app", "secret").with_network("net", "net-secret");
    config.admin_key = Some("adm-key-0123456789ab".into());
    config.trust_proxy = true;
    config.limits.ip_rate_per_sec = 1;
    config.limits.ip_burst = 4;
    config.limits.network_rate_per_sec = 1;
    config.limits.network_burst = 3;
    config.limits.app_rate_per_sec = 1;
    config.limits.app_burst = 1;
    let base = serve(ServerBuilder::new(config).sqlite(dir.path().join("s.db")).unwrap()).await;
    let admin = |path: &str, body: Value| {
        reqwest::Client::new()
            .post(format!("{base}{path}"))
            .header("X-Forwarded-For", "192.0.2.200")
            .bearer_auth("adm-key-0123456789ab")
            .json(&body)
            .send()
    };
    let campaign: Value =
        admin("/v1/campaigns", json!({"name": "c", "network": "net"})).await.unwrap().json().await.unwrap();
    let link: Value = admin(
        "/v1/links",
        json!({"campaign_id": campaign["campaign_id"], "destinations": {"web": "https://x.example/"}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let link = link["link_id"].as_str().unwrap().to_owned();
    let visitor = "198.51.100.50";
    // The app spends its only request: its bucket is empty from here on.
    let event = event_at(trailmark_server::now_ms());
    assert_eq!(
        signed_from(&base, "/v1/event", "192.0.2.1", ("app", "secret", false), &event).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        signed_from(&base, "/v1/event", "192.0.2.1", ("app", "secret", false), &event).send().await.unwrap().status(),
        429
    );
    // The network's clicks, from three sender addresses, naming one visitor: its own bucket
    // of 3, not the app's.
    let click = json!({"link_id": link, "ip": visitor, "device": {"gaid": "abababab-1111-4222-8333-cdcdcdcdcdcd"}});
    let mut statuses = Vec::new();
    for sender in ["192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13"] {
        statuses.push(
            signed_from(&base, "/v1/click", sender, ("net", "net-secret", true), &click)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [201, 201, 201, 429], "the network's bucket");
    // The visitor's own address still has its whole request bucket (4): its own clicks through
    // the link are all recorded.
    for _ in 0..4 {
        let resp = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
            .get(format!("{base}/v1/click?link={link}"))
            .header("X-Forwarded-For", visitor)
            .header("User-Agent", "Mozilla/5.0 (Linux; Android 14) Mobile")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 302);
        let to = resp.headers()["location"].to_str().unwrap();
        assert!(to.contains("tm_click_id="), "the visitor's click is recorded: {to}");
    }
    // A sender address pays its own request bucket (4 here) for clicks too.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(
            signed_from(&base, "/v1/click", "192.0.2.99", ("net", "wrong-secret", true), &click)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [401, 401, 401, 401, 429], "unsigned floods are cut by their address");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_clients_are_limited_by_their_64_and_proxy_hops_pick_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.trust_proxy = true;
    config.proxy_hops = 2;
    config.limits.ip_rate_per_sec = 1;
    config.limits.ip_burst = 2;
    let base = serve(ServerBuilder::new(config).sqlite(dir.path().join("s.db")).unwrap()).await;
    let send = |xff: String| {
        signed_from(&base, "/v1/event", &xff, ("app", "secret", false), &event_at(trailmark_server::now_ms())).send()
    };
    // Two proxies: the client is the second entry from the end; what it wrote itself before
    // that does not count.
    let mut statuses = Vec::new();
    for i in 1..=3 {
        statuses.push(send(format!("10.9.9.{i}, 2001:db8:5:6::{i}, 203.0.113.7")).await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429], "three addresses of one /64 share a bucket");
    assert_eq!(send("2001:db8:5:7::1, 203.0.113.7".into()).await.unwrap().status(), 200, "another /64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_admin_sign_ins_close_the_gate_for_that_address_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.admin_key = Some("adm-key-0123456789ab".into());
    config.trust_proxy = true;
    config.limits.admin_failures = 5;
    let base = serve(ServerBuilder::new(config).sqlite(dir.path().join("s.db")).unwrap()).await;
    let get = |from: &str, key: &str| {
        reqwest::Client::new()
            .get(format!("{base}/v1/events?anonymous_id=a"))
            .header("X-Forwarded-For", from)
            .bearer_auth(key)
            .send()
    };
    assert_eq!(get("198.51.100.1", "adm-key-0123456789ab").await.unwrap().status(), 200);
    for _ in 0..5 {
        assert_eq!(get("198.51.100.1", "guess").await.unwrap().status(), 401);
    }
    // The gate is shut for that address, even for the right key (a guess cannot be confirmed).
    let resp = get("198.51.100.1", "adm-key-0123456789ab").await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    assert_eq!(get("198.51.100.2", "adm-key-0123456789ab").await.unwrap().status(), 200, "another address");
}

#[test]
fn short_admin_keys_and_shared_secrets_are_refused_at_build_time() {
    let dir = tempfile::tempdir().unwrap();
    let build =
        |config: ServerConfig| ServerBuilder::new(config).sqlite(dir.path().join("s.db")).unwrap().build_state().err();
    let short = ServerConfig::new().with_app("app", "secret").with_admin_key("fifteen-chars..");
    assert!(build(short).unwrap().to_string().contains("at least 16 characters"));
    let shared = ServerConfig::new().with_app("app", "secret").with_network("net", "secret");
    assert!(build(shared).unwrap().to_string().contains("same secret"));
    // Two apps with one secret: a public web secret would sign as the other app.
    let twins =
        ServerConfig::new().with_app("web", "one").with_app_kind("api", "one", trailmark_server::AppKind::Server);
    assert!(build(twins).unwrap().to_string().contains("same secret"));
    let ok = ServerConfig::new().with_app("app", "secret").with_admin_key("sixteen-chars...");
    assert!(build(ok).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_in_gets_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.limits.body_timeout_ms = 300;
    let base = serve(ServerBuilder::new(config).sqlite(dir.path().join("s.db")).unwrap()).await;
    let mut tcp = tokio::net::TcpStream::connect(base.trim_start_matches("http://")).await.unwrap();
    let ts = trailmark_server::now_ms() / 1000;
    let head = format!(
        "POST /v1/event HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n{}: app\r\n{}: {ts}\r\n{}: v1=00\r\n\r\n{{\"ev",
        protocol::HEADER_APP,
        protocol::HEADER_TIMESTAMP,
        protocol::HEADER_SIGNATURE
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read_to_string(&mut answer)).await;
    assert!(read.is_ok(), "the server answered and closed");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
}
