//! The PostgreSQL store's touchpoints, re-engagements, conversion credit and postbacks.

use super::{PostgresStorage, pool_error};
use crate::storage::sql;
use crate::storage::{
    ConversionCredit, ConversionStore, PendingPostback, PostbackAttempt, PostbackRecord, Reengagement,
    ReengagementFacts, StorageError, StorageFuture, Touchpoint, backend,
};

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
                    // `install_ts + 0`: through the device's index, never a backward walk of
                    // the app's installs on `installs_time` for the maximum.
                    "SELECT EXISTS (SELECT 1 FROM installs WHERE app_id = $1 AND anonymous_id = $2),
                            (SELECT MAX(install_ts + 0) FROM installs
                              WHERE app_id = $1 AND anonymous_id = $2 AND install_ts + 0 < $3),
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
                        sql::INSERT_REENGAGEMENT,
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
                .query(sql::CONVERSION_TOUCHPOINTS, &[&app_id, &anonymous_id, &since, &until, &user_id])
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
                .query_one(sql::CONVERSION_CREDITED, &[&first.app_id, &first.event_id])
                .await
                .map_err(backend)?
                .get(0);
            if done {
                return Ok(false);
            }
            for c in &rows {
                tx.execute(
                    sql::INSERT_CONVERSION,
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
            tx.execute(
                sql::INSERT_POSTBACK_ATTEMPT,
                &[&a.postback_id, &a.app_id, &a.anonymous_id, &attempt, &status, &a.error, &a.duration_ms, &a.at],
            )
            .await
            .map_err(backend)?;
            tx.execute(sql::UPDATE_POSTBACK, &[&a.postback_id, &a.state, &attempt, &status, &a.error, &a.at])
                .await
                .map_err(backend)?;
            tx.commit().await.map_err(backend)
        })
    }

    fn latest_context(
        &self,
        app_id: String,
        anonymous_id: String,
        user_id: Option<String>,
    ) -> StorageFuture<'_, Vec<String>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = client.query(sql::LATEST_CONTEXT, &[&app_id, &anonymous_id, &user_id]).await.map_err(backend)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn postback_pending(&self, id: i64) -> StorageFuture<'_, bool> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let row = client.query_one(sql::POSTBACK_PENDING, &[&id]).await.map_err(backend)?;
            Ok(row.get(0))
        })
    }

    fn pending_postbacks(&self) -> StorageFuture<'_, Vec<PendingPostback>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = client.query(sql::PENDING_POSTBACKS, &[]).await.map_err(backend)?;
            Ok(rows
                .iter()
                .map(|r| PendingPostback {
                    id: r.get(0),
                    url: r.get(1),
                    attempts: r.get::<_, i32>(2) as u32,
                    app_id: r.get(3),
                    anonymous_id: r.get(4),
                    network: r.get(5),
                })
                .collect())
        })
    }
}

pub(super) async fn insert_touchpoint(
    tx: &deadpool_postgres::Transaction<'_>,
    t: &Touchpoint,
) -> Result<bool, StorageError> {
    let insert = tx.prepare_cached(sql::INSERT_TOUCHPOINT).await.map_err(backend)?;
    let n = tx
        .execute(
            &insert,
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

pub(super) async fn insert_postback(
    tx: &deadpool_postgres::Transaction<'_>,
    p: &PostbackRecord,
) -> Result<i64, StorageError> {
    let insert = tx.prepare_cached(sql::INSERT_POSTBACK).await.map_err(backend)?;
    let row = tx
        .query_one(&insert, &[&p.app_id, &p.anonymous_id, &p.event_id, &p.network, &p.event, &p.url, &p.created_at])
        .await
        .map_err(backend)?;
    Ok(row.get(0))
}
