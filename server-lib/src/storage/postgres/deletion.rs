//! The PostgreSQL store's deletion of a data subject (`/v1/user/delete`).

use super::reports::report_lock;
use tokio::sync::oneshot;
use tokio_postgres::types::ToSql;

use super::installs::InstallJob;
use super::{ClickJob, PostgresStorage, pool_error};
use crate::storage::sql;
use crate::storage::{
    DeleteReport, DeletionAudit, DeletionStore, SUBJECT_TABLES, Screened, StorageFuture, Subject, Suppression,
    Tombstones, backend, suppressed_ids,
};

impl DeletionStore for PostgresStorage {
    fn delete_subject(
        &self,
        subject: Subject,
        audit: DeletionAudit,
        tombstones: Tombstones,
    ) -> StorageFuture<'_, DeleteReport> {
        Box::pin(async move {
            // Clicks are written behind their redirect: wait for those queued before this call,
            // so the deletion sees them.
            let (done, wait) = oneshot::channel();
            if self.clicks.send(ClickJob::Barrier(done)).await.is_ok() {
                let _ = wait.await;
            }
            // Installs wait in the install writer's queue: those queued before this call are
            // committed first, so the deletion sees them (and their touchpoints and postbacks).
            let (done, wait) = oneshot::channel();
            if self.installs.send(InstallJob::Barrier(done)).await.is_ok() {
                let _ = wait.await;
            }
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            // Not while a report refresh runs: it could write back facts, sessions and users
            // of events this deletion removes.
            report_lock(&tx).await?;
            let expansion = match subject {
                // dim_users keeps the pairing after the raw events are purged.
                Subject::UserId(_) => Some(sql::USER_ANONYMOUS_IDS),
                Subject::DeviceId(_) => Some(sql::DEVICE_ANONYMOUS_IDS),
                Subject::AnonymousId(_) => Some(sql::ANONYMOUS_ID_APPS),
            };
            let value = subject.value().to_owned();
            let mut anonymous_ids: Vec<(String, String)> = Vec::new();
            if let Some(query) = expansion {
                anonymous_ids =
                    tx.query(query, &[&value]).await.map_err(backend)?.iter().map(|r| (r.get(0), r.get(1))).collect();
            }
            // Tombstones of the events about to go, and the suppressions.
            let mut keys: Vec<(String, String)> = Vec::new();
            for (table, columns) in SUBJECT_TABLES.iter().filter(|(t, _)| sql::TOMBSTONED_TABLES.contains(t)) {
                for (kind, column) in *columns {
                    if *kind == subject.kind() {
                        keys.extend(pairs_of(&tx, &sql::subject_events(table, column), &[&value]).await?);
                    }
                }
                for (app, anon) in &anonymous_ids {
                    keys.extend(pairs_of(&tx, &sql::anonymous_events(table), &[app, anon]).await?);
                }
            }
            keys.sort_unstable();
            keys.dedup();
            let insert = tx.prepare_cached(sql::INSERT_TOMBSTONE).await.map_err(backend)?;
            for (app, event_id) in &keys {
                tx.execute(&insert, &[app, &tombstones.event(app, event_id), &audit.requested_at])
                    .await
                    .map_err(backend)?;
            }
            if tombstones.suppress {
                let insert = tx.prepare_cached(sql::INSERT_SUPPRESSION).await.map_err(backend)?;
                for (kind, app, id) in suppressed_ids(&subject, &anonymous_ids) {
                    let hash = tombstones.suppression(kind, app, id);
                    tx.execute(&insert, &[&hash, &kind, &audit.receipt_id, &audit.requested_at])
                        .await
                        .map_err(backend)?;
                }
            }
            // Clicks tied to the subject (its own, its installs' and touchpoints', and those that
            // carry its installs' device ids) go first, the same set as SQLite's.
            let mut click_ids: Vec<String> = Vec::new();
            match &subject {
                Subject::AnonymousId(a) => {
                    click_ids.extend(rows_of(&tx, sql::ANONYMOUS_CLICK_IDS_ANY_APP, &[a]).await?);
                }
                Subject::DeviceId(d) => click_ids.extend(rows_of(&tx, sql::DEVICE_CLICK_IDS, &[d]).await?),
                Subject::UserId(_) => {}
            }
            for (app, anon) in &anonymous_ids {
                click_ids.extend(rows_of(&tx, sql::ANONYMOUS_CLICK_IDS, &[app, anon]).await?);
            }
            click_ids.sort();
            click_ids.dedup();
            let mut report = DeleteReport::default();
            let gone = tx
                .query("DELETE FROM clicks WHERE click_id = ANY($1) RETURNING click_id", &[&click_ids])
                .await
                .map_err(backend)?;
            report.rows += gone.len() as u64;
            report.click_ids = click_ids;
            for (table, columns) in SUBJECT_TABLES {
                for (kind, column) in *columns {
                    if *kind != subject.kind() {
                        continue;
                    }
                    report.rows +=
                        tx.execute(&sql::delete_by_subject(table, column), &[&value]).await.map_err(backend)?;
                }
                if columns.iter().any(|(kind, _)| *kind == "anonymous_id") {
                    for (app, anon) in &anonymous_ids {
                        report.rows +=
                            tx.execute(&sql::delete_by_anonymous_id(table), &[app, anon]).await.map_err(backend)?;
                    }
                }
            }
            // The OLAP copy is erased by the loader (ADR 0018; nothing is noted without one).
            for (app, anon) in &anonymous_ids {
                tx.execute(sql::OLAP_ENTRY, &[&"erase", app, anon]).await.map_err(backend)?;
            }
            if subject.kind() == "user_id" {
                tx.execute(sql::OLAP_ENTRY, &[&"erase_user", &"", &value]).await.map_err(backend)?;
            }
            tx.execute(
                sql::INSERT_DELETION_AUDIT,
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
            report.anonymous_ids = anonymous_ids;
            Ok(report)
        })
    }

    fn screen(&self, app_id: String, event_hashes: Vec<String>, id_hashes: Vec<String>) -> StorageFuture<'_, Screened> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            // Prepared once per connection and sent together (pipelined): one round trip for
            // both, on every install and ingest request.
            let (tombstoned, suppressed) = tokio::try_join!(
                client.prepare_cached("SELECT event_hash FROM tombstones WHERE app_id = $1 AND event_hash = ANY($2)"),
                client.prepare_cached("SELECT id_hash FROM suppressions WHERE id_hash = ANY($1)")
            )
            .map_err(backend)?;
            let (event_params, id_params): ([&(dyn ToSql + Sync); 2], [&(dyn ToSql + Sync); 1]) =
                ([&app_id, &event_hashes], [&id_hashes]);
            let (events, ids) =
                tokio::try_join!(client.query(&tombstoned, &event_params), client.query(&suppressed, &id_params))
                    .map_err(backend)?;
            Ok(Screened {
                events: events.iter().map(|r| r.get(0)).collect(),
                ids: ids.iter().map(|r| r.get(0)).collect(),
            })
        })
    }

    fn suppressions(&self, limit: usize) -> StorageFuture<'_, Vec<Suppression>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = client.query(sql::SUPPRESSIONS, &[&(limit as i64)]).await.map_err(backend)?;
            Ok(rows
                .iter()
                .map(|r| Suppression { id_hash: r.get(0), kind: r.get(1), receipt_id: r.get(2), created_at: r.get(3) })
                .collect())
        })
    }

    fn lift_suppressions(&self, receipt_id: Option<String>, id_hashes: Vec<String>) -> StorageFuture<'_, u64> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let mut lifted = 0;
            if let Some(r) = receipt_id {
                lifted += client.execute(sql::LIFT_BY_RECEIPT, &[&r]).await.map_err(backend)?;
            }
            if !id_hashes.is_empty() {
                lifted += client
                    .execute("DELETE FROM suppressions WHERE id_hash = ANY($1)", &[&id_hashes])
                    .await
                    .map_err(backend)?;
            }
            Ok(lifted)
        })
    }
}

/// The first two columns of every row of `query`, as text.
async fn pairs_of(
    tx: &tokio_postgres::Transaction<'_>,
    query: &str,
    args: &[&(dyn ToSql + Sync)],
) -> Result<Vec<(String, String)>, crate::storage::StorageError> {
    Ok(tx.query(query, args).await.map_err(backend)?.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The first column of every row of `query`, as text.
async fn rows_of(
    tx: &tokio_postgres::Transaction<'_>,
    query: &str,
    args: &[&(dyn ToSql + Sync)],
) -> Result<Vec<String>, crate::storage::StorageError> {
    Ok(tx.query(query, args).await.map_err(backend)?.iter().map(|r| r.get::<_, String>(0)).collect())
}
