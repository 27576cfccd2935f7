//! PostgreSQL storage (feature `postgres`): `tokio-postgres` with a `deadpool` pool, for several
//! stateless server instances sharing one database.
//!
//! This first step covers the event path: the schema and its migrations, ingest with dedup
//! (`(app_id, event_id)`), the event inspector and `/v1/user/delete` with its audit record. The
//! attribution and report methods still answer [`StorageError::Unsupported`] here (issue 8
//! continues); the storage conformance suite (`tests/storage_suite.rs`) runs against both stores.

use std::collections::HashSet;
use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::{DeleteReport, DeletionAudit, NewEvent, Storage, StorageError, StorageFuture, Subject};

/// Migrations, applied in order inside one transaction under an advisory lock, so instances
/// starting together do not race.
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    "CREATE TABLE events (
         app_id TEXT NOT NULL,
         event_id TEXT NOT NULL,
         type TEXT NOT NULL,
         anonymous_id TEXT NOT NULL,
         user_id TEXT,
         device_id TEXT,
         session_id TEXT,
         client_ts BIGINT NOT NULL,
         corrected_ts BIGINT NOT NULL,
         received_at BIGINT NOT NULL,
         properties TEXT NOT NULL,
         context TEXT NOT NULL,
         enrichment TEXT NOT NULL,
         ip_enc BYTEA,
         seq BIGSERIAL,
         PRIMARY KEY (app_id, event_id)
     );
     CREATE INDEX events_anonymous_id ON events (anonymous_id);
     CREATE INDEX events_user_id ON events (user_id) WHERE user_id IS NOT NULL;
     CREATE INDEX events_device_id ON events (device_id) WHERE device_id IS NOT NULL;
     CREATE TABLE deletion_audit (
         receipt_id TEXT PRIMARY KEY,
         subject_kind TEXT NOT NULL,
         subject_hash TEXT NOT NULL,
         rows_deleted BIGINT NOT NULL,
         requested_at BIGINT NOT NULL,
         requested_by TEXT NOT NULL
     );",
)];

/// Tables of the PostgreSQL schema that hold per-subject rows (the same rule as SQLite's
/// [`super::SUBJECT_TABLES`]).
pub const PG_SUBJECT_TABLES: &[(&str, &[(&str, &str)])] =
    &[("events", &[("user_id", "user_id"), ("anonymous_id", "anonymous_id"), ("device_id", "device_id")])];

fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

fn pool_error(e: deadpool_postgres::PoolError) -> StorageError {
    match e {
        deadpool_postgres::PoolError::Timeout(_) => StorageError::Busy,
        other => backend(other),
    }
}

/// The PostgreSQL store.
pub struct PostgresStorage {
    pool: Pool,
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
        let store = PostgresStorage { pool };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StorageError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let tx = client.transaction().await.map_err(backend)?;
        // One migrator at a time across instances.
        tx.batch_execute(
            "SELECT pg_advisory_xact_lock(1952543339);
             CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .await
        .map_err(backend)?;
        let done: HashSet<i32> = tx
            .query("SELECT version FROM schema_migrations", &[])
            .await
            .map_err(backend)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for (version, sql) in MIGRATIONS {
            if done.contains(version) {
                continue;
            }
            tx.batch_execute(sql).await.map_err(backend)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                &[version, &crate::now_ms()],
            )
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }
}

const EVENT_COLUMNS: &str = "app_id, event_id, type, anonymous_id, user_id, device_id, session_id, client_ts, \
    corrected_ts, received_at, properties, context, enrichment";

fn event_row(r: &tokio_postgres::Row) -> NewEvent {
    NewEvent {
        app_id: r.get(0),
        event_id: r.get(1),
        event_type: r.get(2),
        anonymous_id: r.get(3),
        user_id: r.get(4),
        device_id: r.get(5),
        session_id: r.get(6),
        client_ts: r.get(7),
        corrected_ts: r.get(8),
        received_at: r.get(9),
        properties: r.get(10),
        context: r.get(11),
        enrichment: r.get(12),
        ip_enc: None,
    }
}

impl Storage for PostgresStorage {
    fn insert(&self, events: Vec<NewEvent>) -> StorageFuture<'_, Vec<bool>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let client = self.pool.get().await.map_err(pool_error)?;
            // One statement for the whole batch: arrays of each column, unnested.
            let col = |f: fn(&NewEvent) -> Option<String>| events.iter().map(f).collect::<Vec<_>>();
            let apps = col(|e| Some(e.app_id.clone()));
            let ids = col(|e| Some(e.event_id.clone()));
            let types = col(|e| Some(e.event_type.clone()));
            let anons = col(|e| Some(e.anonymous_id.clone()));
            let users = col(|e| e.user_id.clone());
            let devices = col(|e| e.device_id.clone());
            let sessions = col(|e| e.session_id.clone());
            let props = col(|e| Some(e.properties.clone()));
            let contexts = col(|e| Some(e.context.clone()));
            let enrichments = col(|e| Some(e.enrichment.clone()));
            let client_ts: Vec<i64> = events.iter().map(|e| e.client_ts).collect();
            let corrected: Vec<i64> = events.iter().map(|e| e.corrected_ts).collect();
            let received: Vec<i64> = events.iter().map(|e| e.received_at).collect();
            let ips: Vec<Option<Vec<u8>>> = events.iter().map(|e| e.ip_enc.clone()).collect();
            let rows = client
                .query(
                    "INSERT INTO events (app_id, event_id, type, anonymous_id, user_id, device_id, session_id,
                         client_ts, corrected_ts, received_at, properties, context, enrichment, ip_enc)
                     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                         $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::text[], $12::text[],
                         $13::text[], $14::bytea[])
                     ON CONFLICT (app_id, event_id) DO NOTHING
                     RETURNING app_id, event_id",
                    &[
                        &apps,
                        &ids,
                        &types,
                        &anons,
                        &users,
                        &devices,
                        &sessions,
                        &client_ts,
                        &corrected,
                        &received,
                        &props,
                        &contexts,
                        &enrichments,
                        &ips,
                    ],
                )
                .await
                .map_err(backend)?;
            let mut inserted: HashSet<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            // The first of two equal ids in one batch is the new one; `remove` marks it taken.
            Ok(events.iter().map(|e| inserted.remove(&(e.app_id.clone(), e.event_id.clone()))).collect())
        })
    }

    fn delete_subject(&self, subject: Subject, audit: DeletionAudit) -> StorageFuture<'_, DeleteReport> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            let expansion = match subject {
                Subject::UserId(_) => Some("SELECT DISTINCT app_id, anonymous_id FROM events WHERE user_id = $1"),
                Subject::DeviceId(_) => {
                    Some("SELECT DISTINCT app_id, anonymous_id FROM events WHERE device_id IN ($1, lower($1))")
                }
                Subject::AnonymousId(_) => None,
            };
            let value = subject.value().to_owned();
            let mut anonymous_ids: Vec<(String, String)> = Vec::new();
            if let Some(sql) = expansion {
                anonymous_ids =
                    tx.query(sql, &[&value]).await.map_err(backend)?.iter().map(|r| (r.get(0), r.get(1))).collect();
            }
            let mut report = DeleteReport::default();
            for (table, columns) in PG_SUBJECT_TABLES {
                for (kind, column) in *columns {
                    if *kind == subject.kind() {
                        report.rows += tx
                            .execute(&format!("DELETE FROM {table} WHERE {column} IN ($1, lower($1))"), &[&value])
                            .await
                            .map_err(backend)?;
                    }
                }
                if columns.iter().any(|(kind, _)| *kind == "anonymous_id") {
                    for (app, anon) in &anonymous_ids {
                        report.rows += tx
                            .execute(
                                &format!("DELETE FROM {table} WHERE app_id = $1 AND anonymous_id = $2"),
                                &[app, anon],
                            )
                            .await
                            .map_err(backend)?;
                    }
                }
            }
            tx.execute(
                "INSERT INTO deletion_audit (receipt_id, subject_kind, subject_hash, rows_deleted, requested_at,
                     requested_by) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &audit.receipt_id,
                    &audit.subject_kind,
                    &audit.subject_hash,
                    &(report.rows as i64),
                    &audit.requested_at,
                    &audit.requested_by,
                ],
            )
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(report)
        })
    }

    fn backlog(&self) -> usize {
        self.pool.status().waiting
    }

    fn recent_events(
        &self,
        app_id: Option<String>,
        subject: Subject,
        limit: usize,
    ) -> StorageFuture<'_, Vec<NewEvent>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE {} = $1 AND ($2::text IS NULL OR app_id = $2)
                  ORDER BY received_at DESC, client_ts DESC, seq DESC LIMIT $3",
                subject.kind()
            );
            let rows = client.query(&sql, &[&subject.value(), &app_id, &(limit as i64)]).await.map_err(backend)?;
            Ok(rows.iter().map(event_row).collect())
        })
    }
}
