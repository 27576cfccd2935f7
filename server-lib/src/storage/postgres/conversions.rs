//! The PostgreSQL store's touchpoints, re-engagements, conversion credit and postbacks.

use super::{PostgresStorage, pool_error};
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

pub(super) async fn insert_touchpoint(
    tx: &deadpool_postgres::Transaction<'_>,
    t: &Touchpoint,
) -> Result<bool, StorageError> {
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

pub(super) async fn insert_postback(
    tx: &deadpool_postgres::Transaction<'_>,
    p: &PostbackRecord,
) -> Result<i64, StorageError> {
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
