//! PostgreSQL storage (feature `postgres`): `tokio-postgres` with a `deadpool` pool, for several
//! stateless server instances sharing one database.
//!
//! Everything the SQLite store does: the event path (ingest with dedup on `(app_id, event_id)`,
//! the event inspector, `/v1/user/delete` with its audit record), campaigns, links and their
//! audit log, clicks (written behind their redirect by one task, in batches), installs with
//! their touchpoint, fraud alert and postbacks, re-engagements, conversion credit, postback
//! delivery, and the report tables (star schema, sessions, rollups, retention: `reports.rs`).
//! One file per concern, as in the SQLite store. The storage conformance suite (`tests/storage_suite.rs`) runs against both stores.

use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::NoTls;

mod conversions;
mod deletion;
mod events;
mod installs;
mod links;
mod reports;
mod schema;

use crate::storage::{ClickRecord, StorageError, backend, json_err, sql};

fn pool_error(e: deadpool_postgres::PoolError) -> StorageError {
    match e {
        deadpool_postgres::PoolError::Timeout(_) => StorageError::Busy,
        other => backend(other),
    }
}

/// Most clicks waiting for the click writer; past it a click stays in the index only (`Busy`).
const CLICK_QUEUE: usize = 100_000;

enum ClickJob {
    Click(Box<ClickRecord>),
    /// Answered once every click queued before it is committed.
    Barrier(oneshot::Sender<()>),
}

/// The PostgreSQL store.
pub struct PostgresStorage {
    pool: Pool,
    /// Clicks are written behind their redirect by one task, in batches.
    clicks: mpsc::Sender<ClickJob>,
}

impl PostgresStorage {
    /// Connects to `url` (`postgres://user@host:port/db`), with at most `max_connections`
    /// pooled connections, in `schema` (created if missing; `public` when `None`), and applies
    /// the migrations.
    pub async fn connect(url: &str, max_connections: usize, schema: Option<&str>) -> Result<Self, StorageError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| backend(format!("PostgreSQL URL: {e}")))?;
        if let Some(schema) = schema {
            if !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || schema.is_empty() {
                return Err(StorageError::Backend(format!("schema name {schema:?}: letters, digits and _ only")));
            }
            // Create it with a plain connection first, then let every pooled one use it.
            let (client, connection) = config.connect(NoTls).await.map_err(backend)?;
            let task = tokio::spawn(connection);
            client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await.map_err(backend)?;
            drop(client);
            let _ = task.await;
            config.options(format!("-c search_path={schema}"));
        }
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .wait_timeout(Some(std::time::Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(backend)?;
        let (clicks, queue) = mpsc::channel(CLICK_QUEUE);
        let store = PostgresStorage { pool: pool.clone(), clicks };
        schema::migrate(&mut pool.get().await.map_err(pool_error)?).await?;
        tokio::spawn(click_writer(pool, queue));
        Ok(store)
    }
}

/// Takes every queued click, writes them in one transaction, answers barriers; a failed batch
/// is logged and counted (the clicks stay in the index, as with SQLite's write-behind).
async fn click_writer(pool: Pool, mut queue: mpsc::Receiver<ClickJob>) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < 1000 {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let clicks: Vec<&ClickRecord> = jobs
            .iter()
            .filter_map(|j| match j {
                ClickJob::Click(c) => Some(&**c),
                ClickJob::Barrier(_) => None,
            })
            .collect();
        if !clicks.is_empty()
            && let Err(e) = insert_clicks(&pool, &clicks).await
        {
            metrics::counter!("trailmark_clicks_unpersisted_total").increment(clicks.len() as u64);
            tracing::error!(error = %e, clicks = clicks.len(), "click batch not stored");
        }
        for job in jobs {
            if let ClickJob::Barrier(done) = job {
                let _ = done.send(());
            }
        }
    }
}

async fn insert_clicks(pool: &Pool, clicks: &[&ClickRecord]) -> Result<(), StorageError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(backend)?;
    let stmt = tx.prepare_cached(sql::INSERT_CLICK).await.map_err(backend)?;
    for c in clicks {
        let flags = i16::from(c.flags);
        tx.execute(
            &stmt,
            &[
                &c.click_id,
                &c.kind,
                &c.app_id,
                &c.link_id,
                &c.campaign_id,
                &c.ts,
                &c.ip_enc,
                &c.user_agent,
                &c.referrer,
                &c.accept_language,
                &c.os,
                &c.os_version,
                &c.model,
                &c.locale,
                &c.timezone,
                &c.screen,
                &c.device_id,
                &c.device_kind,
                &c.network_ids.to_string(),
                &c.sub_params.to_string(),
                &flags,
                &c.source,
            ],
        )
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)
}

/// A stored JSON text, parsed.
fn json(text: &str) -> Result<Value, StorageError> {
    serde_json::from_str(text).map_err(json_err)
}
