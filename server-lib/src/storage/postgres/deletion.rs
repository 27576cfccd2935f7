//! The PostgreSQL store's deletion of a data subject (`/v1/user/delete`).

use super::reports::report_lock;
use super::{PostgresStorage, pool_error};
use crate::storage::sql;
use crate::storage::{DeleteReport, DeletionAudit, DeletionStore, SUBJECT_TABLES, StorageFuture, Subject, backend};

impl DeletionStore for PostgresStorage {
    fn delete_subject(&self, subject: Subject, audit: DeletionAudit) -> StorageFuture<'_, DeleteReport> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            // Not while a report refresh runs: it could write back facts, sessions and users
            // of events this deletion removes.
            report_lock(&tx).await?;
            let expansion = match subject {
                // dim_users keeps the pairing after the raw events are purged.
                Subject::UserId(_) => Some(sql::USER_ANONYMOUS_IDS),
                Subject::DeviceId(_) => Some(sql::DEVICE_ANONYMOUS_IDS),
                Subject::AnonymousId(_) => None,
            };
            let value = subject.value().to_owned();
            let mut anonymous_ids: Vec<(String, String)> = Vec::new();
            if let Some(query) = expansion {
                anonymous_ids =
                    tx.query(query, &[&value]).await.map_err(backend)?.iter().map(|r| (r.get(0), r.get(1))).collect();
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
            for (table, columns) in SUBJECT_TABLES {
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
            Ok(report)
        })
    }
}
