//! The deep-link kit's association files: `GET /.well-known/apple-app-site-association` and
//! `GET /.well-known/assetlinks.json` answer the configured apps as JSON (iOS and Android fetch
//! them from the link domain to open the app for tracking links); 404 when none is configured;
//! a malformed app id stops the build.

mod common;

use serde_json::{Value, json};
use trailmark_server::domain::wellknown::{AndroidApp, DeepLinkApps};
use trailmark_server::{ServerBuilder, ServerConfig};

const FP: &str = "14:6D:E9:83:C5:73:06:50:D8:EE:B9:95:2F:34:FC:64:16:A0:83:42:E6:1D:BE:A8:8A:04:96:B2:3F:CF:44:E5";

async fn get(base: &str, path: &str) -> (u16, Option<String>, Value) {
    let resp = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = resp.status().as_u16();
    let kind = resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    (status, kind, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_domain_serves_the_association_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.deep_link_apps = DeepLinkApps {
        apple: vec!["ABCDE12345.com.example.shop".into()],
        android: vec![AndroidApp { package: "com.example.shop".into(), fingerprints: vec![FP.to_lowercase()] }],
    };
    let base = common::serve(ServerBuilder::new(config).sqlite(dir.path().join("d.db")).unwrap()).await;

    let (status, kind, aasa) = get(&base, "/.well-known/apple-app-site-association").await;
    assert_eq!((status, kind.as_deref()), (200, Some("application/json")));
    assert_eq!(
        aasa,
        json!({"applinks": {"apps": [], "details": [{
            "appID": "ABCDE12345.com.example.shop",
            "appIDs": ["ABCDE12345.com.example.shop"],
            "components": [{"/": "/c/*", "comment": "Trailmark tracking links"}],
            "paths": ["/c/*"],
        }]}})
    );
    let (status, kind, links) = get(&base, "/.well-known/assetlinks.json").await;
    assert_eq!((status, kind.as_deref()), (200, Some("application/json")));
    assert_eq!(
        links,
        json!([{
            "relation": ["delegate_permission/common.handle_all_urls"],
            "target": {"namespace": "android_app", "package_name": "com.example.shop", "sha256_cert_fingerprints": [FP]},
        }])
    );

    // Nothing configured: 404 with the protocol's error body.
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::new().with_app("app", "secret");
    let base = common::serve(ServerBuilder::new(config).sqlite(dir.path().join("e.db")).unwrap()).await;
    for path in ["/.well-known/apple-app-site-association", "/.well-known/assetlinks.json"] {
        let (status, _, body) = get(&base, path).await;
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{path}");
    }

    // A malformed app id is refused when the server is built.
    let mut config = ServerConfig::new().with_app("app", "secret");
    config.deep_link_apps.apple = vec!["com.example.shop".into()];
    let err = ServerBuilder::new(config).sqlite(dir.path().join("f.db")).unwrap().build().err().expect("refused");
    assert!(err.to_string().contains("team id"), "{err}");
}
