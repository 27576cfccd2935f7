//! `trailmark-server`: the embeddable Trailmark ingestion server.
//!
//! [`ServerBuilder`] turns a [`ServerConfig`] and a [`Storage`] into an axum [`Router`] that a
//! host service mounts, and a [`ServerHandle`] that owns the background tasks:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use trailmark_server::{ServerBuilder, ServerConfig};
//! let config = ServerConfig::new().with_app("com.example.shop", "app-secret");
//! let (router, handle) = ServerBuilder::new(config).sqlite("trailmark.db")?.build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>())
//!     .with_graceful_shutdown(async { let _ = tokio::signal::ctrl_c().await; })
//!     .await?;
//! handle.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Endpoints: `POST /v1/event` and `POST /v1/install` (signed), tracking links `GET /c/{code}`,
//! clicks `GET /v1/click` and `POST /v1/click` (server-to-server, signed by an ad network's own
//! key), `GET /v1/impression`, the campaign manager (`POST /v1/campaigns`,
//! `POST /v1/links`, `GET|PATCH /v1/links/{id}`, `GET /v1/links/{id}/audit`,
//! `GET /v1/attribution/{event_id}`; admin), reports (`GET /v1/reports/*`, admin),
//! `POST /v1/user/delete` (admin), the event inspector `GET /v1/events?anonymous_id=…` (admin),
//! the dashboard `/dashboard`, `GET /healthz`, `GET /metrics` (Prometheus). Attribution is
//! explained in `docs/attribution.md`; who may send what (app kinds, network keys) in
//! `docs/protocol.md`, "Trust model". Segment's and RudderStack's SDKs send to the
//! Segment-compatible routes (`POST /v1/batch`, `/v1/track`, …) with an app's write key
//! (`docs/segment.md`).
//!
//! The crate is layered (`ARCHITECTURE.md`, ADR 0009); imports only flow downward:
//! [`http`] → [`service`] → [`storage`] | [`clickcache`] | [`sink`] → [`domain`] (pure). The
//! builder at the top composes them. [`tls`] (features `postgres`/`redis`) is the TLS client
//! setup the PostgreSQL store and the Redis cache share.

mod builder;
pub mod clickcache;
pub mod domain;
pub mod http;
pub mod olap;
pub mod service;
pub mod sink;
pub mod storage;
#[cfg(feature = "tls")]
pub mod tls;

pub use axum::Router;
pub use builder::{BuildError, ServerBuilder, start_tasks};
pub use domain::attribution::{AttributionConfig, FraudConfig, FraudPolicy};
pub use domain::config::{
    AppConfig, AppKind, Clock, JwtAlgorithm, JwtConfig, Limits, ManualClock, NetworkConfig, ReportConfig, ServerConfig,
    now_ms,
};
pub use http::{ApiError, AppState, router};
pub use service::tasks::ServerHandle;
pub use storage::{Durability, SqliteStorage, Storage, StorageError};
