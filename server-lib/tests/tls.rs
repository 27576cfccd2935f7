//! TLS to PostgreSQL and Redis, against the private instances `./tests/run.sh services` starts
//! (`TM_POSTGRES_TLS_URL`: a user refused without TLS; `TM_REDIS_TLS_URL`: a TLS-only port;
//! `TM_SERVICES_CA`: the throwaway CA that signed both servers' certificates). Skipped without
//! them unless `TM_REQUIRE_SERVICES` is set.

#![cfg(all(feature = "postgres", feature = "redis"))]

use std::path::PathBuf;

use trailmark_server::clickcache::ClickCache;
use trailmark_server::clickcache::redis::RedisClickCache;
use trailmark_server::storage::postgres::PostgresStorage;
use trailmark_server::storage::prelude::*;
use trailmark_server::storage::{NewEvent, Subject};

fn services() -> Option<(String, String, PathBuf)> {
    match (std::env::var("TM_POSTGRES_TLS_URL"), std::env::var("TM_REDIS_TLS_URL"), std::env::var("TM_SERVICES_CA")) {
        (Ok(pg), Ok(redis), Ok(ca)) => Some((pg, redis, ca.into())),
        _ => {
            assert!(
                std::env::var("TM_REQUIRE_SERVICES").is_err(),
                "TM_REQUIRE_SERVICES is set but the TLS services are not"
            );
            eprintln!("skipped: TM_POSTGRES_TLS_URL, TM_REDIS_TLS_URL and TM_SERVICES_CA are not set");
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_over_tls_verified_against_the_ca() {
    let Some((url, _, ca)) = services() else { return };
    let schema = format!("tls_{}_{}", std::process::id(), trailmark_server::now_ms());
    let store = PostgresStorage::connect_with(&url, 2, Some(&schema), Some(&ca)).await.expect("TLS with the CA");
    let event = NewEvent {
        app_id: "app".into(),
        event_id: "e1".into(),
        event_type: "screen".into(),
        anonymous_id: "anon".into(),
        properties: "{}".into(),
        context: "{}".into(),
        enrichment: "{}".into(),
        ..Default::default()
    };
    assert_eq!(store.insert(vec![event]).await.unwrap(), vec![true]);
    let stored = store.recent_events(None, Subject::AnonymousId("anon".into()), 10).await.unwrap();
    assert_eq!(stored.len(), 1, "written and read back over TLS");

    // The same URL with `sslrootcert` instead of the option.
    let with_root = format!("{url}&sslrootcert={}", ca.display());
    PostgresStorage::connect(&with_root, 1, Some(&schema)).await.expect("sslrootcert in the URL");

    // Not trusting the test CA (the Mozilla roots): the certificate is refused.
    let err = PostgresStorage::connect(&url, 1, Some(&schema)).await.err().expect("an unknown issuer");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    // Without TLS this user is refused by the server (so the connections above were TLS).
    let plain = url.replace("sslmode=verify-full", "sslmode=disable");
    let err = PostgresStorage::connect(&plain, 1, Some(&schema)).await.err().expect("refused without TLS");
    assert!(err.to_string().contains("no encryption"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_verified_against_the_ca() {
    let Some((_, url, ca)) = services() else { return };
    let cache =
        RedisClickCache::connect_with(&url, &[7; 32], 60_000, "tls:", Some(&ca)).await.expect("TLS with the CA");
    assert_eq!(cache.forget(vec!["no-such-click".into()]).await.unwrap(), 0, "a round trip over TLS");

    let err = RedisClickCache::connect_with(&url, &[7; 32], 60_000, "tls:", None).await.err().expect("unknown issuer");
    assert!(err.to_string().to_lowercase().contains("certificate"), "{err}");
    let plain = url.replace("rediss://", "redis://");
    let err = RedisClickCache::connect_with(&plain, &[7; 32], 60_000, "tls:", Some(&ca)).await.err().expect("refused");
    assert!(err.to_string().contains("not rediss://"), "{err}");
    // The port speaks TLS only: a plain connection to it gets nowhere.
    assert!(RedisClickCache::connect(&plain, &[7; 32], 60_000, "tls:").await.is_err(), "plain to the TLS port");
    let bad = std::env::temp_dir().join(format!("tm-not-a-ca-{}.pem", std::process::id()));
    std::fs::write(&bad, "nothing").unwrap();
    let err = RedisClickCache::connect_with(&url, &[7; 32], 60_000, "tls:", Some(&bad)).await.err().expect("bad CA");
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
    std::fs::remove_file(bad).unwrap();
}
