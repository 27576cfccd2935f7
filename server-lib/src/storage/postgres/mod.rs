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
mod identifiers;
mod identity;
mod installs;
mod links;
mod olap;
mod reports;
mod schema;

/// The statement behind an install's "last install of this device" (its plan is tested).
#[doc(hidden)]
pub use installs::LAST_INSTALL_SQL;

use crate::storage::{ClickRecord, StorageError, backend, json_err, sql};

fn pool_error(e: deadpool_postgres::PoolError) -> StorageError {
    match e {
        deadpool_postgres::PoolError::Timeout(_) => StorageError::Busy,
        other => backend(other),
    }
}

/// Most clicks waiting for the click writer; past it a click stays in the index only (`Busy`).
const CLICK_QUEUE: usize = 100_000;

/// Most installs waiting for the install writer; past it a request is answered `Busy` (503).
const INSTALL_QUEUE: usize = 1024;

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
    /// Installs are stored by one task, those waiting together in one transaction.
    installs: mpsc::Sender<installs::InstallJob>,
}

/// A connection error with its causes (tokio-postgres says "error performing TLS handshake";
/// the cause says which certificate was refused and why).
fn connect_error(e: &(dyn std::error::Error + 'static)) -> StorageError {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    StorageError::Backend(text)
}

/// How a PostgreSQL URL asks for TLS (`sslmode`, libpq's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SslMode {
    /// `disable`, `allow`, or no `sslmode`: a plain connection.
    Off,
    /// `prefer`: TLS when the server offers it (verified), plain otherwise.
    Prefer,
    /// `require`, `verify-ca`, `verify-full`: TLS, certificate and host name verified.
    Require,
}

/// The URL without its `sslmode` and `sslrootcert` parameters (tokio-postgres knows neither
/// `verify-ca`/`verify-full` nor `sslrootcert`), and what they said. A key=value connection
/// string is passed on as it is (its `sslmode` is tokio-postgres's: `disable`, `prefer`,
/// `require`).
fn split_tls(url: &str) -> Result<(String, SslMode, Option<String>), StorageError> {
    let bad = |m: String| StorageError::Backend(format!("PostgreSQL URL: {m}"));
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        let config = tokio_postgres::Config::from_str(url).map_err(|e| bad(e.to_string()))?;
        // tokio-postgres's default is `prefer`: a string that does not ask stays plain.
        let asked = url.split_ascii_whitespace().any(|kv| kv.trim_start().starts_with("sslmode"));
        let mode = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => SslMode::Require,
            tokio_postgres::config::SslMode::Prefer if asked => SslMode::Prefer,
            _ => SslMode::Off,
        };
        return Ok((url.to_owned(), mode, None));
    }
    let mut parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
    let (mut mode, mut root) = (SslMode::Off, None);
    let mut kept = Vec::new();
    for (k, v) in parsed.query_pairs() {
        match &*k {
            "sslmode" => {
                mode = match &*v {
                    "disable" | "allow" => SslMode::Off,
                    "prefer" => SslMode::Prefer,
                    "require" | "verify-ca" | "verify-full" => SslMode::Require,
                    other => {
                        return Err(bad(format!(
                            "sslmode {other:?} is not disable, allow, prefer, require, verify-ca or verify-full"
                        )));
                    }
                }
            }
            "sslrootcert" => root = Some(v.into_owned()),
            _ => kept.push((k.into_owned(), v.into_owned())),
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.into(), mode, root))
}

impl PostgresStorage {
    /// Connects to `url` (`postgres://user@host:port/db`), with at most `max_connections`
    /// pooled connections, in `schema` (created if missing; `public` when `None`), and applies
    /// the migrations. TLS as the URL's `sslmode` asks, trusting the Mozilla roots or the URL's
    /// `sslrootcert`; see [`PostgresStorage::connect_with`].
    pub async fn connect(url: &str, max_connections: usize, schema: Option<&str>) -> Result<Self, StorageError> {
        Self::connect_with(url, max_connections, schema, None).await
    }

    /// [`PostgresStorage::connect`], trusting the certificates of `ca_file` for TLS (else the
    /// URL's `sslrootcert`, else the Mozilla roots). With `sslmode=require`, `verify-ca` or
    /// `verify-full` the connection is TLS and the server's certificate and host name are
    /// verified (stricter than libpq's `require`, which checks nothing without a root
    /// certificate); `prefer` uses TLS when the server offers it; no `sslmode` or `disable`:
    /// plain.
    pub async fn connect_with(
        url: &str,
        max_connections: usize,
        schema: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, StorageError> {
        let (url, mode, root) = split_tls(url)?;
        let mut config = tokio_postgres::Config::from_str(&url).map_err(|e| backend(format!("PostgreSQL URL: {e}")))?;
        let tls = match mode {
            SslMode::Off => None,
            SslMode::Prefer | SslMode::Require => {
                config.ssl_mode(if mode == SslMode::Require {
                    tokio_postgres::config::SslMode::Require
                } else {
                    tokio_postgres::config::SslMode::Prefer
                });
                let root = root.filter(|r| r != "system").map(std::path::PathBuf::from);
                let ca = ca_file.map(std::path::Path::to_path_buf).or(root);
                let client =
                    crate::tls::client_config(ca.as_deref()).map_err(|e| backend(format!("PostgreSQL {e}")))?;
                Some(tokio_postgres_rustls::MakeRustlsConnect::new(client))
            }
        };
        if let Some(schema) = schema {
            if !schema.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || schema.is_empty() {
                return Err(StorageError::Backend(format!("schema name {schema:?}: letters, digits and _ only")));
            }
            // Create it with a plain connection first, then let every pooled one use it.
            let client = match &tls {
                Some(tls) => {
                    let (client, connection) = config.connect(tls.clone()).await.map_err(|e| connect_error(&e))?;
                    tokio::spawn(connection);
                    client
                }
                None => {
                    let (client, connection) = config.connect(NoTls).await.map_err(|e| connect_error(&e))?;
                    tokio::spawn(connection);
                    client
                }
            };
            client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}")).await.map_err(backend)?;
            drop(client);
            config.options(format!("-c search_path={schema}"));
        }
        let manager_config = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match tls {
            Some(tls) => Manager::from_config(config, tls, manager_config),
            None => Manager::from_config(config, NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(1))
            .wait_timeout(Some(std::time::Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(backend)?;
        let (clicks, queue) = mpsc::channel(CLICK_QUEUE);
        let (installs, install_queue) = mpsc::channel(INSTALL_QUEUE);
        let store = PostgresStorage { pool: pool.clone(), clicks, installs };
        let mut first = pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => connect_error(&e),
            other => pool_error(other),
        })?;
        schema::migrate(&mut first).await?;
        drop(first);
        tokio::spawn(installs::install_writer(pool.clone(), install_queue));
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
                &c.device_enc,
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

#[cfg(test)]
mod tls_tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_read_from_the_url() {
        let (url, mode, root) =
            split_tls("postgres://u:p@db:5432/x?sslmode=verify-full&application_name=tm&sslrootcert=/ca.pem").unwrap();
        assert_eq!(
            (url.as_str(), mode, root.as_deref()),
            ("postgres://u:p@db:5432/x?application_name=tm", SslMode::Require, Some("/ca.pem"))
        );
        assert_eq!(split_tls("postgres://db/x").unwrap(), ("postgres://db/x".into(), SslMode::Off, None));
        assert_eq!(split_tls("postgres://db/x?sslmode=require").unwrap().0, "postgres://db/x");
        assert_eq!(split_tls("postgresql://db/x?sslmode=prefer").unwrap().1, SslMode::Prefer);
        assert_eq!(split_tls("postgres://db/x?sslmode=disable").unwrap().1, SslMode::Off);
        assert!(split_tls("postgres://db/x?sslmode=sometimes").unwrap_err().to_string().contains("sometimes"));
        assert_eq!(split_tls("host=db user=u sslmode=require").unwrap().1, SslMode::Require);
        assert_eq!(split_tls("host=db user=u").unwrap().1, SslMode::Off);
        assert_eq!(split_tls("host=db application_name=sslmode_fan").unwrap().1, SslMode::Off);
        assert_eq!(split_tls("host=db sslmode=prefer").unwrap().1, SslMode::Prefer);
    }
}
