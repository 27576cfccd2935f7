//! The service layer: what the server does, without HTTP. It runs an ingest, an install
//! decision, a conversion's follow-ups, a deletion, a click, a report; it owns the shared
//! in-memory state (links and the touch index, live counters, rate limiters) and the
//! background tasks. It reads and writes through the `storage`, `clickcache` and `sink` traits
//! and decides with the pure `domain`; the `http` layer above it only translates requests and
//! answers.

pub mod agents;
pub mod clicks;
pub mod conversions;
pub mod deletion;
pub mod identifiers;
pub mod ingest;
pub mod install;
pub mod limits;
pub mod links;
pub mod live;
pub mod olap;
pub mod postbacks;
pub mod reports;
pub mod segment;
pub mod tasks;
pub mod trace;
pub mod tracking;

use std::sync::{Arc, OnceLock};

use crate::clickcache::CacheError;
use crate::domain::config::ServerConfig;
use crate::domain::enrich::{GeoIp, IpCipher};
use crate::domain::error::Refusal;
use crate::domain::validate::Validators;
use crate::sink::EventSink;
use crate::storage::{Storage, StorageError};

/// Everything a running server shares: configuration, the stores behind their traits, and the
/// in-memory state of this instance.
pub struct Services {
    pub config: ServerConfig,
    pub storage: Arc<dyn Storage>,
    pub validators: Validators,
    pub geo: GeoIp,
    pub ip_cipher: IpCipher,
    /// User and device ids: their stored (hashed) form and sealed raw values.
    pub ids: crate::domain::identifiers::IdProtector,
    /// Per-app and per-address request rates.
    pub limits: limits::Limiters,
    /// Links, the touch index and the fraud counters (loaded from storage at start).
    pub tracking: tracking::Tracking,
    /// Where recent touches live: this instance's index, or a cache shared by every instance.
    pub clicks: clicks::Clicks,
    /// The postback sender, started with the server's tasks when postbacks are configured.
    pub postback_sender: OnceLock<postbacks::Sender>,
    /// Star schema refresh, rollups and retention.
    pub maintenance: Arc<reports::Maintenance>,
    /// The ClickHouse loader and reader, when reports run there.
    pub olap: Option<Arc<olap::OlapLoader>>,
    /// Live counters of the dashboard.
    pub live: live::Live,
    /// Parsed user agents of recent clients.
    pub agents: agents::UserAgents,
    /// Where accepted events, installs and deletions are published (Kafka); none: nowhere.
    pub event_sink: Option<Arc<dyn EventSink>>,
    /// The background tasks were started ([`tasks::start`] runs once).
    pub tasks_started: std::sync::atomic::AtomicBool,
}

/// Why a service call failed: the client's mistake, a rate limit, or a backing service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    RateLimited(#[from] limits::RateLimited),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Not ready yet or briefly unable; the client should retry shortly.
    #[error("{0}")]
    Unavailable(String),
    /// A server-side fault that is nobody's input.
    #[error("{0}")]
    Internal(String),
}

pub type ServiceResult<T> = Result<T, ServiceError>;

/// Fires once when the server shuts down. Dropping the [`ServerHandle`] without calling
/// `shutdown` never fires it: the tasks then run as long as the runtime does.
#[derive(Clone)]
pub struct Stop(pub(crate) tokio::sync::watch::Receiver<bool>);

impl Stop {
    /// Resolves when shutdown begins.
    pub async fn stopped(&mut self) {
        if self.0.wait_for(|stop| *stop).await.is_err() {
            // The handle was dropped without a shutdown: run on.
            std::future::pending::<()>().await;
        }
    }
}
