//! PostgreSQL storage (feature `postgres`): `tokio-postgres` with a `deadpool` pool, for several
//! stateless server instances sharing one database.
//!
//! Everything the SQLite store does: the event path (ingest with dedup on `(app_id, event_id)`,
//! the event inspector, `/v1/user/delete` with its audit record), campaigns, links and their
//! audit log, clicks (written behind their redirect by one task, in batches), installs with
//! their touchpoint, fraud alert and postbacks, re-engagements, conversion credit, postback
//! delivery, and the report tables (star schema, sessions, rollups, retention: `pg_star.rs`).
//! The storage conformance suite (`tests/storage_suite.rs`) runs against both stores.

use std::collections::HashSet;
use std::str::FromStr;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{
    ConversionStore, DeletionStore, EventStore, InstallStore, LinkStore, ReportStore, StorageError, StorageFuture,
};
use crate::domain::records::*;

/// Migrations, applied in order inside one transaction under an advisory lock, so instances
/// starting together do not race.
const MIGRATIONS: &[(i32, &str)] = &[
    (
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
    ),
    (
        2,
        "CREATE TABLE campaigns (
             campaign_id TEXT PRIMARY KEY,
             app_id TEXT NOT NULL,
             name TEXT NOT NULL,
             network TEXT NOT NULL,
             created_at BIGINT NOT NULL
         );
         CREATE TABLE links (
             link_id TEXT PRIMARY KEY,
             code TEXT NOT NULL UNIQUE,
             campaign_id TEXT NOT NULL REFERENCES campaigns (campaign_id),
             enabled BOOLEAN NOT NULL,
             record TEXT NOT NULL,
             updated_at BIGINT NOT NULL,
             seq BIGSERIAL
         );
         CREATE TABLE link_audit (
             id BIGSERIAL PRIMARY KEY,
             link_id TEXT NOT NULL,
             at BIGINT NOT NULL,
             actor TEXT NOT NULL,
             action TEXT NOT NULL,
             before TEXT,
             after TEXT NOT NULL
         );
         CREATE INDEX link_audit_link ON link_audit (link_id, id);
         CREATE TABLE clicks (
             click_id TEXT PRIMARY KEY,
             kind TEXT NOT NULL,
             app_id TEXT NOT NULL,
             link_id TEXT NOT NULL,
             campaign_id TEXT NOT NULL,
             ts BIGINT NOT NULL,
             ip_enc BYTEA,
             user_agent TEXT,
             referrer TEXT,
             accept_language TEXT,
             os TEXT,
             os_version TEXT,
             model TEXT,
             locale TEXT,
             timezone TEXT,
             screen TEXT,
             device_id TEXT,
             device_kind TEXT,
             network_ids TEXT NOT NULL,
             sub_params TEXT NOT NULL,
             flags SMALLINT NOT NULL,
             source TEXT NOT NULL,
             seq BIGSERIAL
         );
         CREATE INDEX clicks_ts ON clicks (ts);
         CREATE INDEX clicks_device ON clicks (device_id) WHERE device_id IS NOT NULL;",
    ),
    (
        3,
        "CREATE TABLE installs (
             app_id TEXT NOT NULL,
             event_id TEXT NOT NULL,
             anonymous_id TEXT NOT NULL,
             platform TEXT NOT NULL,
             idfa TEXT,
             idfv TEXT,
             gaid TEXT,
             android_id TEXT,
             install_ts BIGINT NOT NULL,
             received_at BIGINT NOT NULL,
             kind TEXT NOT NULL,
             match_type TEXT NOT NULL,
             campaign_id TEXT,
             link_id TEXT,
             click_id TEXT,
             network TEXT,
             rejected BOOLEAN NOT NULL,
             result TEXT NOT NULL,
             audit TEXT NOT NULL,
             ip_enc BYTEA,
             PRIMARY KEY (app_id, event_id)
         );
         CREATE INDEX installs_event ON installs (event_id);
         CREATE INDEX installs_anonymous_id ON installs (app_id, anonymous_id);
         CREATE INDEX installs_idfa ON installs (app_id, idfa) WHERE idfa IS NOT NULL;
         CREATE INDEX installs_idfv ON installs (app_id, idfv) WHERE idfv IS NOT NULL;
         CREATE INDEX installs_gaid ON installs (app_id, gaid) WHERE gaid IS NOT NULL;
         CREATE INDEX installs_android_id ON installs (app_id, android_id) WHERE android_id IS NOT NULL;
         CREATE INDEX installs_campaign ON installs (campaign_id, install_ts) WHERE campaign_id IS NOT NULL;
         CREATE TABLE touchpoints (
             id BIGSERIAL PRIMARY KEY,
             app_id TEXT NOT NULL,
             anonymous_id TEXT NOT NULL,
             ts BIGINT NOT NULL,
             click_id TEXT NOT NULL,
             link_id TEXT NOT NULL,
             campaign_id TEXT NOT NULL,
             network TEXT NOT NULL,
             kind TEXT NOT NULL,
             source_event_id TEXT NOT NULL,
             UNIQUE (app_id, anonymous_id, click_id, kind)
         );
         CREATE INDEX touchpoints_device ON touchpoints (app_id, anonymous_id, ts);
         CREATE TABLE fraud_alerts (
             id BIGSERIAL PRIMARY KEY,
             rule TEXT NOT NULL,
             app_id TEXT NOT NULL,
             campaign_id TEXT NOT NULL,
             at BIGINT NOT NULL,
             detail TEXT NOT NULL
         );
         CREATE TABLE postbacks (
             id BIGSERIAL PRIMARY KEY,
             app_id TEXT NOT NULL,
             anonymous_id TEXT NOT NULL,
             event_id TEXT NOT NULL,
             network TEXT NOT NULL,
             event TEXT NOT NULL,
             url TEXT NOT NULL,
             state TEXT NOT NULL,
             attempts INTEGER NOT NULL,
             last_status INTEGER,
             last_error TEXT,
             created_at BIGINT NOT NULL,
             updated_at BIGINT NOT NULL
         );
         CREATE INDEX postbacks_pending ON postbacks (state) WHERE state = 'pending';
         CREATE INDEX postbacks_anonymous_id ON postbacks (app_id, anonymous_id);",
    ),
    (
        4,
        "CREATE TABLE reengagements (
             app_id TEXT NOT NULL,
             event_id TEXT NOT NULL,
             anonymous_id TEXT NOT NULL,
             click_id TEXT NOT NULL,
             link_id TEXT NOT NULL,
             campaign_id TEXT NOT NULL,
             network TEXT NOT NULL,
             click_ts BIGINT NOT NULL,
             open_ts BIGINT NOT NULL,
             inactive_ms BIGINT,
             PRIMARY KEY (app_id, event_id)
         );
         CREATE INDEX reengagements_anonymous_id ON reengagements (app_id, anonymous_id);
         CREATE TABLE conversions (
             app_id TEXT NOT NULL,
             event_id TEXT NOT NULL,
             model TEXT NOT NULL,
             click_id TEXT NOT NULL,
             anonymous_id TEXT NOT NULL,
             user_id TEXT,
             event_type TEXT NOT NULL,
             ts BIGINT NOT NULL,
             link_id TEXT,
             campaign_id TEXT,
             network TEXT,
             touch_ts BIGINT,
             credit DOUBLE PRECISION NOT NULL,
             revenue DOUBLE PRECISION,
             currency TEXT,
             PRIMARY KEY (app_id, event_id, model, click_id)
         );
         CREATE INDEX conversions_anonymous_id ON conversions (app_id, anonymous_id);
         CREATE INDEX conversions_user_id ON conversions (user_id) WHERE user_id IS NOT NULL;
         CREATE INDEX conversions_campaign ON conversions (campaign_id, model, ts);
         CREATE TABLE postback_attempts (
             id BIGSERIAL PRIMARY KEY,
             postback_id BIGINT NOT NULL,
             app_id TEXT NOT NULL,
             anonymous_id TEXT NOT NULL,
             attempt INTEGER NOT NULL,
             status INTEGER,
             error TEXT,
             duration_ms BIGINT NOT NULL,
             at BIGINT NOT NULL
         );
         CREATE INDEX postback_attempts_anonymous_id ON postback_attempts (app_id, anonymous_id);",
    ),
    (5, super::pg_star::SCHEMA),
];

pub(super) fn backend(e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(e.to_string())
}

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
        store.migrate().await?;
        tokio::spawn(click_writer(pool, queue));
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
                &[version, &crate::domain::config::now_ms()],
            )
            .await
            .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }
}

const CLICK_COLUMNS: &str = "click_id, kind, app_id, link_id, campaign_id, ts, ip_enc, user_agent, referrer, \
    accept_language, os, os_version, model, locale, timezone, screen, device_id, device_kind, network_ids, sub_params, \
    flags, source";

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
    let stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO clicks ({CLICK_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                 $15, $16, $17, $18, $19, $20, $21, $22) ON CONFLICT (click_id) DO NOTHING"
        ))
        .await
        .map_err(backend)?;
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

fn json(text: &str) -> Result<Value, StorageError> {
    serde_json::from_str(text).map_err(|e| StorageError::Backend(format!("stored JSON: {e}")))
}

fn click_row(r: &tokio_postgres::Row) -> Result<ClickRecord, StorageError> {
    Ok(ClickRecord {
        click_id: r.get(0),
        kind: r.get(1),
        app_id: r.get(2),
        link_id: r.get(3),
        campaign_id: r.get(4),
        ts: r.get(5),
        ip_enc: r.get(6),
        user_agent: r.get(7),
        referrer: r.get(8),
        accept_language: r.get(9),
        os: r.get(10),
        os_version: r.get(11),
        model: r.get(12),
        locale: r.get(13),
        timezone: r.get(14),
        screen: r.get(15),
        device_id: r.get(16),
        device_kind: r.get(17),
        network_ids: json(r.get(18))?,
        sub_params: json(r.get(19))?,
        flags: r.get::<_, i16>(20) as u8,
        source: r.get(21),
    })
}

const INSTALL_COLUMNS: &str = "app_id, event_id, anonymous_id, platform, idfa, idfv, gaid, android_id, install_ts, \
    received_at, kind, result, audit, ip_enc";

fn install_row(r: &tokio_postgres::Row) -> Result<InstallRecord, StorageError> {
    Ok(InstallRecord {
        app_id: r.get(0),
        event_id: r.get(1),
        anonymous_id: r.get(2),
        platform: r.get(3),
        idfa: r.get(4),
        idfv: r.get(5),
        gaid: r.get(6),
        android_id: r.get(7),
        install_ts: r.get(8),
        received_at: r.get(9),
        kind: r.get(10),
        result: serde_json::from_str(r.get(11)).map_err(backend)?,
        audit: json(r.get(12))?,
        ip_enc: r.get(13),
    })
}

async fn install_by_event(
    client: &deadpool_postgres::Client,
    app_id: Option<&str>,
    event_id: &str,
) -> Result<Option<InstallRecord>, StorageError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {INSTALL_COLUMNS} FROM installs WHERE event_id = $1 AND ($2::text IS NULL OR app_id = $2)
                  ORDER BY received_at LIMIT 1"
            ),
            &[&event_id, &app_id],
        )
        .await
        .map_err(backend)?;
    row.as_ref().map(install_row).transpose()
}

/// The device's latest install that counted as new (`kind = 'install'`), by any of its keys.
async fn last_install(
    client: &deadpool_postgres::Client,
    app_id: &str,
    keys: &DeviceKeys,
) -> Result<Option<InstallRecord>, StorageError> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {INSTALL_COLUMNS} FROM installs WHERE app_id = $1 AND kind = 'install' AND (anonymous_id = $2
                    OR idfa = $3 OR idfv = $4 OR gaid = $5 OR android_id = $6)
                  ORDER BY install_ts DESC LIMIT 1"
            ),
            &[&app_id, &keys.anonymous_id, &keys.idfa, &keys.idfv, &keys.gaid, &keys.android_id],
        )
        .await
        .map_err(backend)?;
    row.as_ref().map(install_row).transpose()
}

async fn insert_touchpoint(tx: &deadpool_postgres::Transaction<'_>, t: &Touchpoint) -> Result<bool, StorageError> {
    let n = tx
        .execute(
            "INSERT INTO touchpoints (app_id, anonymous_id, ts, click_id, link_id, campaign_id, network, kind,
                 source_event_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (app_id, anonymous_id, click_id, kind) DO NOTHING",
            &[
                &t.app_id,
                &t.anonymous_id,
                &t.ts,
                &t.click_id,
                &t.link_id,
                &t.campaign_id,
                &t.network,
                &t.kind,
                &t.source_event_id,
            ],
        )
        .await
        .map_err(backend)?;
    Ok(n == 1)
}

async fn insert_postback(tx: &deadpool_postgres::Transaction<'_>, p: &PostbackRecord) -> Result<i64, StorageError> {
    let row = tx
        .query_one(
            "INSERT INTO postbacks (app_id, anonymous_id, event_id, network, event, url, state, attempts, created_at,
                 updated_at) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7) RETURNING id",
            &[&p.app_id, &p.anonymous_id, &p.event_id, &p.network, &p.event, &p.url, &p.created_at],
        )
        .await
        .map_err(backend)?;
    Ok(row.get(0))
}

pub(super) const EVENT_COLUMNS: &str = "app_id, event_id, type, anonymous_id, user_id, device_id, session_id, client_ts, \
    corrected_ts, received_at, properties, context, enrichment";

pub(super) fn event_row(r: &tokio_postgres::Row) -> NewEvent {
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

impl EventStore for PostgresStorage {
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

    fn backlog(&self) -> usize {
        self.pool.status().waiting
    }
}

impl DeletionStore for PostgresStorage {
    fn delete_subject(&self, subject: Subject, audit: DeletionAudit) -> StorageFuture<'_, DeleteReport> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            // Not while a report refresh runs: it could write back facts, sessions and users
            // of events this deletion removes.
            super::pg_star::report_lock(&tx).await?;
            let expansion = match subject {
                // dim_users keeps the pairing after the raw events are purged.
                Subject::UserId(_) => Some(
                    "SELECT DISTINCT app_id, anonymous_id FROM events WHERE user_id = $1
                     UNION SELECT app_id, anonymous_id FROM dim_users WHERE user_id = $1",
                ),
                Subject::DeviceId(_) => Some(
                    "SELECT DISTINCT app_id, anonymous_id FROM events WHERE device_id IN ($1, lower($1))
                     UNION SELECT app_id, anonymous_id FROM installs
                      WHERE idfa = lower($1) OR idfv = lower($1) OR gaid = lower($1) OR android_id = lower($1)",
                ),
                Subject::AnonymousId(_) => None,
            };
            let value = subject.value().to_owned();
            let mut anonymous_ids: Vec<(String, String)> = Vec::new();
            if let Some(sql) = expansion {
                anonymous_ids =
                    tx.query(sql, &[&value]).await.map_err(backend)?.iter().map(|r| (r.get(0), r.get(1))).collect();
            }
            let mut report = DeleteReport::default();
            // Clicks tied to the subject through its installs and touchpoints go first.
            let mut linked: Vec<(Option<String>, String)> =
                anonymous_ids.iter().map(|(app, anon)| (Some(app.clone()), anon.clone())).collect();
            if let Subject::AnonymousId(anon) = &subject {
                linked.push((None, anon.clone()));
            }
            for (app, anon) in &linked {
                let gone = tx
                    .query(
                        "DELETE FROM clicks WHERE click_id IN (
                             SELECT click_id FROM installs
                              WHERE anonymous_id = $1 AND ($2::text IS NULL OR app_id = $2) AND click_id IS NOT NULL
                             UNION SELECT click_id FROM touchpoints
                              WHERE anonymous_id = $1 AND ($2::text IS NULL OR app_id = $2))
                         RETURNING click_id",
                        &[anon, app],
                    )
                    .await
                    .map_err(backend)?;
                report.rows += gone.len() as u64;
                report.click_ids.extend(gone.iter().map(|r| r.get::<_, String>(0)));
            }
            for (table, columns) in super::SUBJECT_TABLES {
                for (kind, column) in *columns {
                    if *kind != subject.kind() {
                        continue;
                    }
                    if *table == "clicks" {
                        // The index forgets deleted clicks too.
                        let gone = tx
                            .query(
                                "DELETE FROM clicks WHERE device_id IN ($1, lower($1)) RETURNING click_id",
                                &[&value],
                            )
                            .await
                            .map_err(backend)?;
                        report.rows += gone.len() as u64;
                        report.click_ids.extend(gone.iter().map(|r| r.get::<_, String>(0)));
                        continue;
                    }
                    report.rows += tx
                        .execute(&format!("DELETE FROM {table} WHERE {column} IN ($1, lower($1))"), &[&value])
                        .await
                        .map_err(backend)?;
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
}

impl LinkStore for PostgresStorage {
    fn save_campaign(&self, c: Campaign) -> StorageFuture<'_, ()> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            client
                .execute(
                    "INSERT INTO campaigns (campaign_id, app_id, name, network, created_at) VALUES ($1, $2, $3, $4, $5)",
                    &[&c.campaign_id, &c.app_id, &c.name, &c.network, &c.created_at],
                )
                .await
                .map_err(backend)?;
            Ok(())
        })
    }

    fn save_link(&self, link: LinkRecord, audit: LinkAudit) -> StorageFuture<'_, ()> {
        Box::pin(async move {
            let record = serde_json::to_string(&link).map_err(backend)?;
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            tx.execute(
                "INSERT INTO links (link_id, code, campaign_id, enabled, record, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (link_id) DO UPDATE SET enabled = excluded.enabled, record = excluded.record,
                     updated_at = excluded.updated_at",
                &[&link.link_id, &link.code, &link.campaign_id, &link.enabled, &record, &link.updated_at],
            )
            .await
            .map_err(backend)?;
            tx.execute(
                "INSERT INTO link_audit (link_id, at, actor, action, before, after) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &audit.link_id,
                    &audit.at,
                    &audit.actor,
                    &audit.action,
                    &audit.before.as_ref().map(Value::to_string),
                    &audit.after.to_string(),
                ],
            )
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)
        })
    }

    fn load_links(&self) -> StorageFuture<'_, LinkCatalog> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let campaigns = client
                .query("SELECT campaign_id, app_id, name, network, created_at FROM campaigns ORDER BY created_at, campaign_id", &[])
                .await
                .map_err(backend)?
                .iter()
                .map(|r| Campaign {
                    campaign_id: r.get(0),
                    app_id: r.get(1),
                    name: r.get(2),
                    network: r.get(3),
                    created_at: r.get(4),
                })
                .collect();
            let mut links = Vec::new();
            for r in client.query("SELECT record FROM links ORDER BY seq", &[]).await.map_err(backend)? {
                links.push(serde_json::from_str(r.get(0)).map_err(backend)?);
            }
            Ok(LinkCatalog { campaigns, links })
        })
    }

    fn link_audit(&self, link_id: String) -> StorageFuture<'_, Vec<LinkAudit>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT link_id, at, actor, action, before, after FROM link_audit WHERE link_id = $1 ORDER BY id",
                    &[&link_id],
                )
                .await
                .map_err(backend)?;
            rows.iter()
                .map(|r| {
                    Ok(LinkAudit {
                        link_id: r.get(0),
                        at: r.get(1),
                        actor: r.get(2),
                        action: r.get(3),
                        before: r.get::<_, Option<&str>>(4).map(json).transpose()?,
                        after: json(r.get(5))?,
                    })
                })
                .collect()
        })
    }

    fn record_touch(&self, touch: ClickRecord) -> Result<(), StorageError> {
        self.clicks.try_send(ClickJob::Click(Box::new(touch))).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StorageError::Busy,
            mpsc::error::TrySendError::Closed(_) => StorageError::Backend("click writer stopped".into()),
        })
    }

    fn load_touches(&self, since: i64) -> StorageFuture<'_, Vec<ClickRecord>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(&format!("SELECT {CLICK_COLUMNS} FROM clicks WHERE ts >= $1 ORDER BY ts, seq"), &[&since])
                .await
                .map_err(backend)?;
            rows.iter().map(click_row).collect()
        })
    }

    fn click_params(&self, click_id: String) -> StorageFuture<'_, Option<ClickParams>> {
        Box::pin(async move {
            // Clicks are written behind their redirect: wait for those queued before this call.
            let (done, wait) = oneshot::channel();
            if self.clicks.send(ClickJob::Barrier(done)).await.is_ok() {
                let _ = wait.await;
            }
            let client = self.pool.get().await.map_err(pool_error)?;
            let row = client
                .query_opt("SELECT network_ids, sub_params FROM clicks WHERE click_id = $1", &[&click_id])
                .await
                .map_err(backend)?;
            row.map(|r| Ok(ClickParams { network_ids: json(r.get(0))?, sub_params: json(r.get(1))? })).transpose()
        })
    }
}

impl InstallStore for PostgresStorage {
    fn install_by_event(&self, app_id: Option<String>, event_id: String) -> StorageFuture<'_, Option<InstallRecord>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            install_by_event(&client, app_id.as_deref(), &event_id).await
        })
    }

    fn last_install(&self, app_id: String, keys: DeviceKeys) -> StorageFuture<'_, Option<InstallRecord>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            last_install(&client, &app_id, &keys).await
        })
    }

    fn install_lookup(&self, app_id: String, event_id: String, keys: DeviceKeys) -> StorageFuture<'_, InstallLookup> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            if let Some(done) = install_by_event(&client, Some(&app_id), &event_id).await? {
                return Ok(InstallLookup { existing: Some(done), last_install: None });
            }
            Ok(InstallLookup { existing: None, last_install: last_install(&client, &app_id, &keys).await? })
        })
    }

    fn save_install(
        &self,
        i: InstallRecord,
        touchpoint: Option<Touchpoint>,
        alert: Option<FraudAlert>,
        postbacks: Vec<PostbackRecord>,
    ) -> StorageFuture<'_, Option<Vec<i64>>> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            let r = &i.result;
            let result = serde_json::to_string(r).map_err(backend)?;
            let changed = tx
                .execute(
                    "INSERT INTO installs (app_id, event_id, anonymous_id, platform, idfa, idfv, gaid, android_id,
                         install_ts, received_at, kind, match_type, campaign_id, link_id, click_id, network, rejected,
                         result, audit, ip_enc)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
                     ON CONFLICT (app_id, event_id) DO NOTHING",
                    &[
                        &i.app_id,
                        &i.event_id,
                        &i.anonymous_id,
                        &i.platform,
                        &i.idfa,
                        &i.idfv,
                        &i.gaid,
                        &i.android_id,
                        &i.install_ts,
                        &i.received_at,
                        &i.kind,
                        &r.match_type.as_str(),
                        &r.campaign_id,
                        &r.link_id,
                        &r.click_id,
                        &r.network,
                        &r.fraud.rejected,
                        &result,
                        &i.audit.to_string(),
                        &i.ip_enc,
                    ],
                )
                .await
                .map_err(backend)?;
            // Another instance stored this install first: nothing is written.
            if changed == 0 {
                return Ok(None);
            }
            if let Some(t) = &touchpoint {
                insert_touchpoint(&tx, t).await?;
            }
            if let Some(a) = &alert {
                tx.execute(
                    "INSERT INTO fraud_alerts (rule, app_id, campaign_id, at, detail) VALUES ($1, $2, $3, $4, $5)",
                    &[&a.rule, &a.app_id, &a.campaign_id, &a.at, &a.detail.to_string()],
                )
                .await
                .map_err(backend)?;
            }
            let mut ids = Vec::with_capacity(postbacks.len());
            for p in &postbacks {
                ids.push(insert_postback(&tx, p).await?);
            }
            tx.commit().await.map_err(backend)?;
            Ok(Some(ids))
        })
    }

    fn install_counts(&self, since: i64) -> StorageFuture<'_, Vec<InstallCount>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let hour = crate::domain::attribution::HOUR;
            let rows = client
                .query(
                    "SELECT campaign_id, (install_ts / $2) * $2 AS hour, COUNT(*) FROM installs
                      WHERE campaign_id IS NOT NULL AND install_ts >= $1 AND kind = 'install' AND NOT rejected
                      GROUP BY campaign_id, hour ORDER BY hour",
                    &[&since, &hour],
                )
                .await
                .map_err(backend)?;
            Ok(rows
                .iter()
                .map(|r| InstallCount { campaign_id: r.get(0), hour: r.get(1), installs: r.get::<_, i64>(2) as u32 })
                .collect())
        })
    }
}

impl ConversionStore for PostgresStorage {
    fn reengagement_facts(
        &self,
        app_id: String,
        anonymous_id: String,
        before: i64,
    ) -> StorageFuture<'_, ReengagementFacts> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM installs WHERE app_id = $1 AND anonymous_id = $2),
                            (SELECT MAX(install_ts) FROM installs
                              WHERE app_id = $1 AND anonymous_id = $2 AND install_ts < $3),
                            (SELECT MAX(corrected_ts) FROM events
                              WHERE app_id = $1 AND anonymous_id = $2 AND corrected_ts < $3)",
                    &[&app_id, &anonymous_id, &before],
                )
                .await
                .map_err(backend)?;
            let (installed, last_install, last_event): (bool, Option<i64>, Option<i64>) =
                (row.get(0), row.get(1), row.get(2));
            Ok(ReengagementFacts { installed, last_activity: last_install.max(last_event) })
        })
    }

    fn save_touchpoints(
        &self,
        touchpoints: Vec<Touchpoint>,
        reengagements: Vec<Reengagement>,
    ) -> StorageFuture<'_, Vec<bool>> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            for t in &touchpoints {
                insert_touchpoint(&tx, t).await?;
            }
            let mut fresh = Vec::with_capacity(reengagements.len());
            for r in &reengagements {
                let n = tx
                    .execute(
                        "INSERT INTO reengagements (app_id, event_id, anonymous_id, click_id, link_id, campaign_id,
                             network, click_ts, open_ts, inactive_ms)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (app_id, event_id) DO NOTHING",
                        &[
                            &r.app_id,
                            &r.event_id,
                            &r.anonymous_id,
                            &r.click_id,
                            &r.link_id,
                            &r.campaign_id,
                            &r.network,
                            &r.click_ts,
                            &r.open_ts,
                            &r.inactive_ms,
                        ],
                    )
                    .await
                    .map_err(backend)?;
                fresh.push(n == 1);
            }
            tx.commit().await.map_err(backend)?;
            Ok(fresh)
        })
    }

    fn conversion_touchpoints(
        &self,
        app_id: String,
        anonymous_id: String,
        user_id: Option<String>,
        since: i64,
        until: i64,
    ) -> StorageFuture<'_, Vec<Touchpoint>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT app_id, anonymous_id, ts, click_id, link_id, campaign_id, network, kind, source_event_id
                       FROM touchpoints
                      WHERE app_id = $1 AND ts >= $3 AND ts <= $4
                        AND (anonymous_id = $2 OR anonymous_id IN
                             (SELECT DISTINCT anonymous_id FROM events WHERE app_id = $1 AND user_id = $5))
                      ORDER BY ts, id",
                    &[&app_id, &anonymous_id, &since, &until, &user_id],
                )
                .await
                .map_err(backend)?;
            let mut out: Vec<Touchpoint> = Vec::new();
            for r in &rows {
                let t = Touchpoint {
                    app_id: r.get(0),
                    anonymous_id: r.get(1),
                    ts: r.get(2),
                    click_id: r.get(3),
                    link_id: r.get(4),
                    campaign_id: r.get(5),
                    network: r.get(6),
                    kind: r.get(7),
                    source_event_id: r.get(8),
                };
                // One per click: the oldest tie to it.
                if !out.iter().any(|o| o.click_id == t.click_id) {
                    out.push(t);
                }
            }
            Ok(out)
        })
    }

    fn save_conversion(&self, rows: Vec<ConversionCredit>) -> StorageFuture<'_, bool> {
        Box::pin(async move {
            let Some(first) = rows.first() else { return Ok(false) };
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            // Two instances crediting one conversion at once: the lock makes the second see the first.
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1 || ':' || $2))", &[&first.app_id, &first.event_id])
                .await
                .map_err(backend)?;
            let done: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM conversions WHERE app_id = $1 AND event_id = $2)",
                    &[&first.app_id, &first.event_id],
                )
                .await
                .map_err(backend)?
                .get(0);
            if done {
                return Ok(false);
            }
            for c in &rows {
                tx.execute(
                    "INSERT INTO conversions (app_id, event_id, model, click_id, anonymous_id, user_id, event_type, ts,
                         link_id, campaign_id, network, touch_ts, credit, revenue, currency)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                    &[
                        &c.app_id,
                        &c.event_id,
                        &c.model,
                        &c.click_id.clone().unwrap_or_default(),
                        &c.anonymous_id,
                        &c.user_id,
                        &c.event_type,
                        &c.ts,
                        &c.link_id,
                        &c.campaign_id,
                        &c.network,
                        &c.touch_ts,
                        &c.credit,
                        &c.revenue,
                        &c.currency,
                    ],
                )
                .await
                .map_err(backend)?;
            }
            tx.commit().await.map_err(backend)?;
            Ok(true)
        })
    }

    fn save_postback(&self, postback: PostbackRecord) -> StorageFuture<'_, i64> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            let id = insert_postback(&tx, &postback).await?;
            tx.commit().await.map_err(backend)?;
            Ok(id)
        })
    }

    fn log_postback_attempt(&self, a: PostbackAttempt) -> StorageFuture<'_, ()> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            let attempt = a.attempt as i32;
            let status = a.status.map(i32::from);
            // Only while the postback exists: a deletion in the meantime leaves no new trace.
            tx.execute(
                "INSERT INTO postback_attempts (postback_id, app_id, anonymous_id, attempt, status, error, duration_ms, at)
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM postbacks WHERE id = $1)",
                &[&a.postback_id, &a.app_id, &a.anonymous_id, &attempt, &status, &a.error, &a.duration_ms, &a.at],
            )
            .await
            .map_err(backend)?;
            tx.execute(
                "UPDATE postbacks SET state = $2, attempts = $3, last_status = $4, last_error = $5, updated_at = $6
                  WHERE id = $1",
                &[&a.postback_id, &a.state, &attempt, &status, &a.error, &a.at],
            )
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)
        })
    }

    fn postback_pending(&self, id: i64) -> StorageFuture<'_, bool> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let row = client
                .query_one("SELECT EXISTS (SELECT 1 FROM postbacks WHERE id = $1 AND state = 'pending')", &[&id])
                .await
                .map_err(backend)?;
            Ok(row.get(0))
        })
    }

    fn pending_postbacks(&self) -> StorageFuture<'_, Vec<PendingPostback>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = client
                .query(
                    "SELECT id, url, attempts, app_id, anonymous_id FROM postbacks WHERE state = 'pending' ORDER BY id",
                    &[],
                )
                .await
                .map_err(backend)?;
            Ok(rows
                .iter()
                .map(|r| PendingPostback {
                    id: r.get(0),
                    url: r.get(1),
                    attempts: r.get::<_, i32>(2) as u32,
                    app_id: r.get(3),
                    anonymous_id: r.get(4),
                })
                .collect())
        })
    }
}

impl ReportStore for PostgresStorage {
    fn refresh_step(&self, batch: usize, session_gap: i64, horizon: Option<i64>) -> StorageFuture<'_, RefreshReport> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            let report = super::pg_star::refresh_step(&tx, batch, session_gap, horizon).await?;
            tx.commit().await.map_err(backend)?;
            Ok(report)
        })
    }

    fn purge(&self, cutoffs: RetentionCutoffs) -> StorageFuture<'_, PurgeReport> {
        // In steps, each its own transaction, so ingest and other instances keep going.
        const CHUNK: usize = 20_000;
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            super::pg_star::purge_begin(&tx, &cutoffs).await?;
            tx.commit().await.map_err(backend)?;
            let (mut events, mut facts) = (0, 0);
            loop {
                let tx = client.transaction().await.map_err(backend)?;
                let (e, f) = super::pg_star::purge_events(&tx, &cutoffs, CHUNK).await?;
                tx.commit().await.map_err(backend)?;
                events += e;
                facts += f;
                if f < CHUNK as u64 {
                    break;
                }
            }
            let tx = client.transaction().await.map_err(backend)?;
            let rest = super::pg_star::purge_rest(&tx, &cutoffs).await?;
            tx.commit().await.map_err(backend)?;
            Ok(PurgeReport { events, facts, ..rest })
        })
    }

    fn save_cost(&self, cost: CampaignCost) -> StorageFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            let outcome = super::pg_star::save_cost(&tx, &cost).await?;
            tx.commit().await.map_err(backend)?;
            Ok(outcome)
        })
    }

    fn report(&self, query: ReportQuery) -> StorageFuture<'_, ReportRows> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            super::pg_star::report(&client, &query).await
        })
    }
}
