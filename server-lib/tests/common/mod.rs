//! Helpers shared by the server's integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;

use trailmark_core::protocol;
use trailmark_server::ServerBuilder;

/// Serves the built router on a free loopback port (with peer addresses, as a host would) and
/// returns its base URL.
pub async fn serve(builder: ServerBuilder) -> String {
    let (router, _tasks) = builder.build().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
    });
    base
}

/// A `POST /v1/event` of `body`, signed now as the tests' app `app` with secret `secret`.
pub fn signed(client: &reqwest::Client, base: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    signed_to(client, base, "/v1/event", body)
}

/// A `POST` of `body` to `path`, signed now as the tests' app `app` with secret `secret`.
pub fn signed_to(client: &reqwest::Client, base: &str, path: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    let ts = trailmark_server::now_ms() / 1000;
    client
        .post(format!("{base}{path}"))
        .header(protocol::HEADER_APP, "app")
        .header(protocol::HEADER_TIMESTAMP, ts.to_string())
        .header(protocol::HEADER_SIGNATURE, protocol::sign(b"secret", ts, &body))
        .body(body)
}

/// A loopback receiver that records the query of every postback it gets.
pub async fn receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let hits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = hits.clone();
    let app = axum::Router::new().route(
        "/pb",
        axum::routing::get(move |uri: axum::http::Uri| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push(uri.query().unwrap_or_default().to_owned());
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, hits)
}
