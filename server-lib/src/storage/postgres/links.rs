//! The PostgreSQL store's campaigns, links with their audit log, and clicks (written behind
//! their redirect by the click writer).

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::{ClickJob, PostgresStorage, json, pool_error};
use crate::storage::sql::{self, campaign_columns, click_columns};
use crate::storage::{
    Campaign, ClickParams, ClickRecord, LinkAudit, LinkCatalog, LinkRecord, LinkStore, StorageError, StorageFuture,
    backend,
};

impl LinkStore for PostgresStorage {
    fn shared(&self) -> bool {
        true
    }

    fn save_campaign(&self, c: Campaign) -> StorageFuture<'_, ()> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            client
                .execute(sql::INSERT_CAMPAIGN, &[&c.campaign_id, &c.app_id, &c.name, &c.network, &c.created_at])
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
                sql::UPSERT_LINK,
                &[&link.link_id, &link.code, &link.campaign_id, &link.enabled, &record, &link.updated_at],
            )
            .await
            .map_err(backend)?;
            tx.execute(
                sql::INSERT_LINK_AUDIT,
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
                .query(concat!("SELECT ", campaign_columns!(), " FROM campaigns ORDER BY created_at, campaign_id"), &[])
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
            let rows = client.query(sql::LINK_AUDIT, &[&link_id]).await.map_err(backend)?;
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
                .query(concat!("SELECT ", click_columns!(), " FROM clicks WHERE ts >= $1 ORDER BY ts, seq"), &[&since])
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
            let row = client.query_opt(sql::CLICK_PARAMS, &[&click_id]).await.map_err(backend)?;
            row.map(|r| Ok(ClickParams { network_ids: json(r.get(0))?, sub_params: json(r.get(1))? })).transpose()
        })
    }
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
        device_enc: r.get(22),
    })
}
