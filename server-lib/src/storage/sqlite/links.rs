//! The SQLite store's campaigns, links with their audit log, and clicks (written behind their
//! redirect through the writer's queue).

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use serde_json::Value;

use std::sync::Mutex;

use super::{CLICK_BUFFER, ClickBuffer, Job, SqliteStorage};
use crate::storage::sql::{self, campaign_columns, click_columns, sqlite};
use crate::storage::{
    Campaign, ClickParams, ClickRecord, LinkAudit, LinkCatalog, LinkRecord, LinkStore, StorageError, StorageFuture,
    backend, json_err,
};

impl LinkStore for SqliteStorage {
    fn save_campaign(&self, campaign: Campaign) -> StorageFuture<'_, ()> {
        self.write(1, move |tx| save_campaign(tx, &campaign))
    }

    fn save_link(&self, link: LinkRecord, audit: LinkAudit) -> StorageFuture<'_, ()> {
        self.write(2, move |tx| save_link(tx, &link, &audit))
    }

    fn load_links(&self) -> StorageFuture<'_, LinkCatalog> {
        self.read(load_links)
    }

    fn link_audit(&self, link_id: String) -> StorageFuture<'_, Vec<LinkAudit>> {
        self.read(move |c| link_audit(c, &link_id))
    }

    fn record_touch(&self, touch: ClickRecord) -> Result<(), StorageError> {
        let schedule = {
            let mut buffer = self.clicks.lock().unwrap_or_else(|p| p.into_inner());
            if buffer.rows.len() >= CLICK_BUFFER {
                return Err(StorageError::Busy);
            }
            buffer.rows.push(touch);
            !std::mem::replace(&mut buffer.scheduled, true)
        };
        if schedule {
            let clicks = self.clicks.clone();
            // Taken when the job runs, not when it was queued: every click buffered by then.
            let f = move |tx: &rusqlite::Transaction<'_>| flush_clicks(&clicks, tx);
            if let Err(e) = self.submit(Box::new(Job { weight: 1, f: Some(f), out: None, reply: None })) {
                // The click stays buffered; the next click schedules the flush again.
                self.clicks.lock().unwrap_or_else(|p| p.into_inner()).scheduled = false;
                return Err(e);
            }
        }
        Ok(())
    }

    fn load_touches(&self, since: i64) -> StorageFuture<'_, Vec<ClickRecord>> {
        self.read(move |c| load_touches(c, since))
    }

    fn click_params(&self, click_id: String) -> StorageFuture<'_, Option<ClickParams>> {
        // Through the writer's queue, not the read pool: clicks are written behind their
        // redirect, and the queue runs in order, so this sees every click queued before it.
        self.write(1, move |tx| click_params(tx, &click_id))
    }
}

/// Writes every click buffered for the writer (on the writer's transaction).
pub(super) fn flush_clicks(clicks: &Mutex<ClickBuffer>, tx: &Transaction<'_>) -> Result<(), StorageError> {
    let rows = {
        let mut buffer = clicks.lock().unwrap_or_else(|p| p.into_inner());
        buffer.scheduled = false;
        std::mem::take(&mut buffer.rows)
    };
    rows.iter().try_for_each(|c| insert_touch(tx, c))
}

pub fn save_campaign(tx: &Transaction<'_>, c: &Campaign) -> Result<(), StorageError> {
    tx.execute(sqlite!(sql::INSERT_CAMPAIGN), params![c.campaign_id, c.app_id, c.name, c.network, c.created_at])
        .map_err(backend)?;
    Ok(())
}

pub fn save_link(tx: &Transaction<'_>, link: &LinkRecord, audit: &LinkAudit) -> Result<(), StorageError> {
    let record = serde_json::to_string(link).map_err(json_err)?;
    tx.execute(
        sqlite!(sql::UPSERT_LINK),
        params![link.link_id, link.code, link.campaign_id, link.enabled, record, link.updated_at],
    )
    .map_err(backend)?;
    tx.execute(
        sqlite!(sql::INSERT_LINK_AUDIT),
        params![
            audit.link_id,
            audit.at,
            audit.actor,
            audit.action,
            audit.before.as_ref().map(Value::to_string),
            audit.after.to_string()
        ],
    )
    .map_err(backend)?;
    Ok(())
}

pub fn load_links(conn: &Connection) -> Result<LinkCatalog, StorageError> {
    let mut stmt = conn
        .prepare(concat!("SELECT ", campaign_columns!(), " FROM campaigns ORDER BY created_at"))
        .map_err(backend)?;
    let campaigns = stmt
        .query_map([], |r| {
            Ok(Campaign {
                campaign_id: r.get(0)?,
                app_id: r.get(1)?,
                name: r.get(2)?,
                network: r.get(3)?,
                created_at: r.get(4)?,
            })
        })
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    let mut stmt = conn.prepare("SELECT record FROM links ORDER BY rowid").map_err(backend)?;
    let texts = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(backend)?;
    let mut links = Vec::new();
    for text in texts {
        links.push(serde_json::from_str(&text.map_err(backend)?).map_err(json_err)?);
    }
    Ok(LinkCatalog { campaigns, links })
}

pub fn link_audit(conn: &Connection, link_id: &str) -> Result<Vec<LinkAudit>, StorageError> {
    let mut stmt = conn.prepare(sqlite!(sql::LINK_AUDIT)).map_err(backend)?;
    let rows = stmt
        .query_map([link_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (link_id, at, actor, action, before, after) = row.map_err(backend)?;
        out.push(LinkAudit {
            link_id,
            at,
            actor,
            action,
            before: before.map(|b| serde_json::from_str(&b)).transpose().map_err(json_err)?,
            after: serde_json::from_str(&after).map_err(json_err)?,
        });
    }
    Ok(out)
}

pub fn insert_touch(tx: &Transaction<'_>, c: &ClickRecord) -> Result<(), StorageError> {
    let mut stmt = tx.prepare_cached(sqlite!(sql::INSERT_CLICK)).map_err(backend)?;
    stmt.execute(params![
        c.click_id,
        c.kind,
        c.app_id,
        c.link_id,
        c.campaign_id,
        c.ts,
        c.ip_enc,
        c.user_agent,
        c.referrer,
        c.accept_language,
        c.os,
        c.os_version,
        c.model,
        c.locale,
        c.timezone,
        c.screen,
        c.device_id,
        c.device_kind,
        c.network_ids.to_string(),
        c.sub_params.to_string(),
        c.flags,
        c.source,
        c.device_enc,
    ])
    .map_err(backend)?;
    Ok(())
}

fn click_row(r: &Row<'_>) -> rusqlite::Result<(ClickRecord, String, String)> {
    Ok((
        ClickRecord {
            click_id: r.get(0)?,
            kind: r.get(1)?,
            app_id: r.get(2)?,
            link_id: r.get(3)?,
            campaign_id: r.get(4)?,
            ts: r.get(5)?,
            ip_enc: r.get(6)?,
            user_agent: r.get(7)?,
            referrer: r.get(8)?,
            accept_language: r.get(9)?,
            os: r.get(10)?,
            os_version: r.get(11)?,
            model: r.get(12)?,
            locale: r.get(13)?,
            timezone: r.get(14)?,
            screen: r.get(15)?,
            device_id: r.get(16)?,
            device_kind: r.get(17)?,
            network_ids: Value::Null,
            sub_params: Value::Null,
            flags: r.get(20)?,
            source: r.get(21)?,
            device_enc: r.get(22)?,
        },
        r.get(18)?,
        r.get(19)?,
    ))
}

pub fn load_touches(conn: &Connection, since: i64) -> Result<Vec<ClickRecord>, StorageError> {
    let mut stmt = conn
        .prepare(concat!("SELECT ", click_columns!(), " FROM clicks WHERE ts >= ?1 ORDER BY ts, rowid"))
        .map_err(backend)?;
    let rows = stmt.query_map([since], click_row).map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (mut c, ids, subs) = row.map_err(backend)?;
        c.network_ids = serde_json::from_str(&ids).map_err(json_err)?;
        c.sub_params = serde_json::from_str(&subs).map_err(json_err)?;
        out.push(c);
    }
    Ok(out)
}

/// A click's ad-network ids and sub-parameters (for postback macros).
pub fn click_params(conn: &Connection, click_id: &str) -> Result<Option<ClickParams>, StorageError> {
    let row: Option<(String, String)> = conn
        .prepare_cached(sqlite!(sql::CLICK_PARAMS))
        .map_err(backend)?
        .query_row([click_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(backend)?;
    match row {
        Some((ids, subs)) => Ok(Some(ClickParams {
            network_ids: serde_json::from_str(&ids).map_err(json_err)?,
            sub_params: serde_json::from_str(&subs).map_err(json_err)?,
        })),
        None => Ok(None),
    }
}
