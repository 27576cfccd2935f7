//! The Kafka event sink against a real Kafka-protocol broker on loopback (`TM_KAFKA_BROKERS`;
//! `./tests/run.sh services` starts one): accepted events are published once, to the topic of
//! their family, keyed by user or anonymous id and in order per key; installs and deletions
//! have their own topics. Skipped without a broker unless `TM_REQUIRE_SERVICES` is set.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::{Value, json};
use trailmark_core::protocol;
use trailmark_server::sink::kafka::{KafkaConfig, KafkaSink};
use trailmark_server::{ServerBuilder, ServerConfig};

fn event(kind: &str, anon: &str, props: Value) -> Value {
    json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": kind, "timestamp": protocol::format_millis(trailmark_server::now_ms()),
           "anonymous_id": anon, "properties": props})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_events_are_published_once_by_family_in_order() {
    let Ok(brokers) = std::env::var("TM_KAFKA_BROKERS") else {
        assert!(
            std::env::var("TM_REQUIRE_SERVICES").is_err(),
            "TM_REQUIRE_SERVICES is set but TM_KAFKA_BROKERS is not"
        );
        eprintln!("TM_KAFKA_BROKERS not set: skipped (./tests/run.sh services starts a broker)");
        return;
    };
    let mut config = KafkaConfig::new(&brokers);
    config.topic_prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    config.partitions = 3;
    let sink = Arc::new(KafkaSink::connect(config.clone()).await.expect("topics are created"));
    // Connecting again finds the topics there and starts all the same.
    KafkaSink::connect(config.clone()).await.expect("existing topics are fine");

    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerConfig::new().with_app("app", "secret").with_admin_key("test-admin-key-0123456789");
    // Opted-out people's records are left out of the stream.
    server.stream.consent = trailmark_server::domain::config::StreamConsent::Strict;
    // A write key of the Segment-compatible API: its events reach the stream like an SDK's.
    server.apps.get_mut("app").unwrap().write_keys =
        vec![trailmark_server::domain::config::WriteKey::new("wk_kafka_0123456789")];
    let base =
        common::serve(ServerBuilder::new(server).sqlite(dir.path().join("k.db")).unwrap().event_sink(sink.clone()))
            .await;
    let client = reqwest::Client::new();

    // Ten ordinary events of one device, a purchase, a screen view, and an identified user.
    let mut batch: Vec<Value> = (0..10).map(|i| event("level_up", "a1", json!({"level": i}))).collect();
    batch.push(event("purchase", "a1", json!({"revenue": 9.5, "currency": "EUR"})));
    batch.push(event("screen_view", "a1", json!({"name": "Home"})));
    let mut identified = event("level_up", "a2", json!({}));
    identified["user_id"] = json!("user-7");
    batch.push(identified);
    // One event under do-not-sell (stored, not published) and one with consent (published).
    for (anon, do_not_sell) in [("a3", true), ("a4", false)] {
        let mut e = event("level_up", anon, json!({}));
        e["context"] = json!({"consent": {"analytics": true, "attribution": true, "do_not_sell": do_not_sell}});
        batch.push(e);
    }
    let body =
        serde_json::to_vec(&json!({"sent_at": protocol::format_millis(trailmark_server::now_ms()), "batch": batch}))
            .unwrap();
    for expected in [15, 0] {
        // The second time everything is a duplicate: stored once, published once.
        let resp: Value = common::signed(&client, &base, body.clone()).send().await.unwrap().json().await.unwrap();
        assert_eq!(resp["accepted"], expected, "{resp}");
    }
    // A Segment message, sent with the app's write key.
    let segment =
        json!({"batch": [{"type": "track", "event": "Video Played", "anonymousId": "seg-1", "messageId": "s-1"}]});
    let resp = client
        .post(format!("{base}/v1/batch"))
        .basic_auth("wk_kafka_0123456789", Some(""))
        .json(&segment)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // An install and a deletion request.
    let install = serde_json::to_vec(&json!({"event_id": uuid::Uuid::new_v4().to_string(), "anonymous_id": "a1",
        "timestamp": protocol::format_millis(trailmark_server::now_ms()), "platform": "android", "device": {}}))
    .unwrap();
    let ts = trailmark_server::now_ms() / 1000;
    let resp = client
        .post(format!("{base}/v1/install"))
        .header(protocol::HEADER_APP, "app")
        .header(protocol::HEADER_TIMESTAMP, ts.to_string())
        .header(protocol::HEADER_SIGNATURE, protocol::sign(b"secret", ts, &install))
        .body(install)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = client
        .post(format!("{base}/v1/user/delete"))
        .bearer_auth("test-admin-key-0123456789")
        .json(&json!({"user_id": "user-7"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    sink.flush(Duration::from_secs(20)).expect("everything is delivered");

    // Read every topic back.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("g{}", uuid::Uuid::new_v4().simple()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let topics: Vec<String> = trailmark_server::sink::FAMILIES.iter().map(|f| config.topic(f)).collect();
    consumer.subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let mut got: HashMap<String, Vec<(String, Value)>> = HashMap::new();
    let total = |g: &HashMap<String, Vec<(String, Value)>>| g.values().map(Vec::len).sum::<usize>();
    while total(&got) < 17 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of 17 records arrived: {got:?}", total(&got)))
            .unwrap();
        let family = m.topic().rsplit('.').next().unwrap().to_owned();
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        got.entry(family).or_default().push((key, serde_json::from_slice(m.payload().unwrap()).unwrap()));
    }
    // Nothing more (the duplicates were not published again).
    assert!(tokio::time::timeout(Duration::from_secs(2), consumer.recv()).await.is_err(), "an extra record arrived");

    let track = &got["track"];
    let a1: Vec<&Value> = track.iter().filter(|(k, _)| k == "a1").map(|(_, v)| v).collect();
    let levels: Vec<i64> = a1.iter().map(|v| v["properties"]["level"].as_i64().unwrap()).collect();
    assert_eq!(levels, (0..10).collect::<Vec<_>>(), "one key's events arrive in order");
    assert_eq!(a1[0]["schema"], "trailmark.event/1");
    assert_eq!(a1[0]["anonymous_id"], "a1");
    assert!(a1[0]["enrichment"].is_object() && a1[0].get("ip_enc").is_none());
    let user: Vec<&(String, Value)> = track.iter().filter(|(k, _)| k == "user-7").collect();
    assert_eq!(user.len(), 1, "keyed by the user id when there is one");
    assert_eq!(user[0].1["user_id"], "user-7");
    assert!(track.iter().all(|(k, _)| k != "a3"), "the do-not-sell event is not published (strict)");
    let a4: Vec<&Value> = track.iter().filter(|(k, _)| k == "a4").map(|(_, v)| v).collect();
    assert_eq!((a4.len(), &a4[0]["restricted"]), (1, &json!(false)));
    assert_eq!(a4[0]["consent"], json!({"analytics": true, "attribution": true, "do_not_sell": false}));
    assert_eq!((&a1[0]["consent"], &a1[0]["restricted"]), (&Value::Null, &json!(false)), "a sender that said nothing");
    let seg: Vec<&Value> = track.iter().filter(|(k, _)| k == "seg-1").map(|(_, v)| v).collect();
    assert_eq!((seg.len(), &seg[0]["type"]), (1, &json!("video_played")), "the Segment message is streamed");
    assert_eq!(seg[0]["enrichment"]["auth"], "write_key");
    assert_eq!(got["revenue"].len(), 1);
    assert_eq!(got["revenue"][0].1["properties"]["revenue"], 9.5);
    assert_eq!(got["views"][0].1["type"], "screen_view");
    assert_eq!(got["installs"][0].1["schema"], "trailmark.install/1");
    assert_eq!(got["installs"][0].1["result"]["match_type"], "organic");
    // The deletion names the subject and every anonymous id it expanded to (in clear: the
    // default; `StreamIds::Hashed` is unit-tested in domain::stream).
    assert_eq!(got["deletions"][0].0, "user-7");
    assert_eq!(got["deletions"][0].1["subject_kind"], "user_id");
    assert_eq!(got["deletions"][0].1["identifiers"], json!([{"kind": "anonymous_id", "app_id": "app", "value": "a2"}]));
}

/// The bundled librdkafka is built with SSL and SASL (PLAIN, SCRAM): a client configured for
/// `SASL_SSL` is created (librdkafka refuses these values when it was built without OpenSSL).
/// No broker here speaks TLS or SASL (tansu 0.6 has neither), so the handshake itself is not
/// tested (docs/stream.md).
#[test]
fn librdkafka_has_ssl_and_sasl_built_in() {
    for mechanism in ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] {
        let created = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", mechanism)
            .set("sasl.username", "u")
            .set("sasl.password", "p")
            .create::<rdkafka::producer::BaseProducer>();
        assert!(created.is_ok(), "{mechanism}: {:?}", created.err());
    }
    let ssl = ClientConfig::new()
        .set("bootstrap.servers", "127.0.0.1:1")
        .set("security.protocol", "SSL")
        .set("ssl.endpoint.identification.algorithm", "https")
        .create::<rdkafka::producer::BaseProducer>();
    assert!(ssl.is_ok(), "{:?}", ssl.err());
    // The sink's admin client gets the same properties: a bad one is an error at connect.
    let mut config = KafkaConfig::new("127.0.0.1:1");
    config.properties.push(("security.protocol".into(), "NOT_A_PROTOCOL".into()));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let err = runtime.block_on(KafkaSink::connect(config)).err().expect("refused");
    assert!(err.to_string().contains("security.protocol"), "{err}");
}
