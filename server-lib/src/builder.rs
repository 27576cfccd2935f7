//! The top of the crate: [`ServerBuilder`] composes the layers (a store, an optional shared click
//! cache and event sink, the services, the HTTP state) into a [`Router`] and a [`ServerHandle`].
//! It is the only module that may import every layer.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use thiserror::Error;

use crate::clickcache::ClickCache;
use crate::domain::config::ServerConfig;
use crate::domain::enrich::{GeoIp, IpCipher};
use crate::domain::postbacks::{TemplateError, check_template};
use crate::domain::validate::Validators;
use crate::http::{AppState, router};
use crate::service::clicks::Clicks;
use crate::service::limits::Limiters;
use crate::service::olap::OlapLoader;
use crate::service::reports::Maintenance;
use crate::service::tasks::{self, ServerHandle};
use crate::service::{Services, tracking};
use crate::sink::EventSink;
use crate::storage::{Durability, SqliteStorage, Storage, StorageError};

#[derive(Debug, Error)]
pub enum BuildError {
    #[error("no storage: call .sqlite(path) or .storage(...)")]
    NoStorage,
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("invalid schema: {0}")]
    Schema(String),
    #[error("GeoIP database: {0}")]
    GeoIp(String),
    #[error("JWT key: {0}")]
    Jwt(String),
    #[error("invalid limit: {0}")]
    Limit(&'static str),
    #[error("invalid credentials: {0}")]
    Credentials(String),
    #[error("invalid attribution settings: {0}")]
    Attribution(String),
    #[error("deep-link app: {0}")]
    DeepLinkApp(#[from] crate::domain::wellknown::DeepLinkAppError),
    #[error("postback template of network {network:?}: {source}")]
    Postback {
        network: String,
        #[source]
        source: TemplateError,
    },
    #[error(transparent)]
    Start(#[from] tasks::StartError),
    #[error(transparent)]
    ClickHouse(#[from] crate::olap::OlapError),
}

/// Builds the server's [`Router`] and the [`ServerHandle`] of its background tasks.
pub struct ServerBuilder {
    config: ServerConfig,
    storage: Option<Arc<dyn Storage>>,
    click_cache: Option<Arc<dyn ClickCache>>,
    event_sink: Option<Arc<dyn EventSink>>,
}

impl ServerBuilder {
    pub fn new(config: ServerConfig) -> Self {
        ServerBuilder { config, storage: None, click_cache: None, event_sink: None }
    }

    /// Publishes accepted events, attribution decisions and deletion requests to `sink` (for
    /// example [`crate::sink::kafka::KafkaSink`]).
    pub fn event_sink(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.event_sink = Some(sink);
        self
    }

    /// Shares recent clicks with other instances through `cache` (for example
    /// [`crate::clickcache::redis::RedisClickCache`]); installs are matched against it.
    pub fn click_cache(mut self, cache: Arc<dyn ClickCache>) -> Self {
        self.click_cache = Some(cache);
        self
    }

    /// Uses the embedded SQLite store at `path` (created if missing), fsync on every commit.
    pub fn sqlite(self, path: impl AsRef<Path>) -> Result<Self, BuildError> {
        self.sqlite_with(path, Durability::Full)
    }

    pub fn sqlite_with(mut self, path: impl AsRef<Path>, durability: Durability) -> Result<Self, BuildError> {
        let limits = &self.config.limits;
        let store = SqliteStorage::open(path, durability, limits.writer_queue, limits.max_commit_events)?;
        self.storage = Some(Arc::new(store));
        Ok(self)
    }

    /// Uses another [`Storage`] implementation.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// The shared state, for hosts that compose their own routes: mount [`router`] over it and
    /// start its tasks with [`start_tasks`]. Starts nothing itself.
    pub fn build_state(self) -> Result<Arc<AppState>, BuildError> {
        let storage = self.storage.ok_or(BuildError::NoStorage)?;
        let mut config = self.config;
        config.check_credentials().map_err(BuildError::Credentials)?;
        let limits = Limiters::new(&config.limits).map_err(BuildError::Limit)?;
        let validators = Validators::new(&config.apps).map_err(BuildError::Schema)?;
        let geo = GeoIp::open(config.geoip_city.as_deref(), config.geoip_asn.as_deref())
            .and_then(|g| g.with_anonymous(config.geoip_anonymous.as_deref()))
            .map_err(BuildError::GeoIp)?;
        config.attribution.validate().map_err(BuildError::Attribution)?;
        config.deep_link_apps.check()?;
        for p in &config.postbacks {
            check_template(&p.url).map_err(|source| BuildError::Postback { network: p.network.clone(), source })?;
        }
        let maintenance = Arc::new(Maintenance::new(
            storage.clone(),
            config.reports.clone(),
            config.clock.clone(),
            config.attribution.index_ttl(),
        ));
        let olap = match &config.clickhouse {
            Some(c) => Some(Arc::new(OlapLoader::new(c, storage.clone(), config.clock.clone(), config.audit_key)?)),
            None => None,
        };
        let services = Services {
            maintenance,
            olap,
            live: Default::default(),
            agents: Default::default(),
            ip_cipher: IpCipher::new(&config.ip_key),
            ids: crate::domain::identifiers::IdProtector::new(&config.audit_key, &config.ip_key, &config.id_keys),
            limits,
            config,
            storage,
            validators,
            geo,
            tracking: tracking::Tracking::default(),
            clicks: Clicks::new(self.click_cache),
            postback_sender: Default::default(),
            event_sink: self.event_sink,
            tasks_started: Default::default(),
        };
        Ok(Arc::new(AppState::new(Arc::new(services)).map_err(BuildError::Jwt)?))
    }

    /// The routes and the handle of the background tasks, started now (inside a Tokio
    /// runtime). Keep the handle while the server runs; `handle.shutdown().await` stops it.
    pub fn build(self) -> Result<(Router, ServerHandle), BuildError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(tasks::StartError::NoRuntime.into());
        }
        let state = self.build_state()?;
        let handle = start_tasks(&state)?;
        Ok((router(state), handle))
    }
}

/// Starts the background tasks of a built state (attribution state load, identifier pass,
/// postback sender, report scheduler, link reloader), once, inside a Tokio runtime.
pub fn start_tasks(state: &Arc<AppState>) -> Result<ServerHandle, BuildError> {
    Ok(tasks::start(&state.services)?)
}
