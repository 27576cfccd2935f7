//! The SQLite store's touchpoints, re-engagements, conversion credit and postbacks.

use rusqlite::{Connection, Transaction, params};

use super::SqliteStorage;
use crate::storage::sql::{self, sqlite};
use crate::storage::{
    ConversionCredit, ConversionStore, PendingPostback, PostbackAttempt, PostbackRecord, Reengagement,
    ReengagementFacts, StorageError, StorageFuture, Touchpoint, backend,
};

impl ConversionStore for SqliteStorage {
    fn reengagement_facts(
        &self,
        app_id: String,
        anonymous_id: String,
        before: i64,
    ) -> StorageFuture<'_, ReengagementFacts> {
        self.read(move |c| reengagement_facts(c, &app_id, &anonymous_id, before))
    }

    fn save_touchpoints(
        &self,
        touchpoints: Vec<Touchpoint>,
        reengagements: Vec<Reengagement>,
    ) -> StorageFuture<'_, Vec<bool>> {
        self.write(touchpoints.len() + reengagements.len(), move |tx| {
            save_touchpoints(tx, &touchpoints, &reengagements)
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
        self.read(move |c| conversion_touchpoints(c, &app_id, &anonymous_id, user_id.as_deref(), since, until))
    }

    fn save_conversion(&self, rows: Vec<ConversionCredit>) -> StorageFuture<'_, bool> {
        self.write(rows.len(), move |tx| save_conversion(tx, &rows))
    }

    fn save_postback(&self, postback: PostbackRecord) -> StorageFuture<'_, i64> {
        self.write(1, move |tx| save_postback(tx, &postback))
    }

    fn log_postback_attempt(&self, attempt: PostbackAttempt) -> StorageFuture<'_, ()> {
        self.write(2, move |tx| log_postback_attempt(tx, &attempt))
    }

    fn postback_pending(&self, id: i64) -> StorageFuture<'_, bool> {
        self.read(move |c| postback_pending(c, id))
    }

    fn latest_context(
        &self,
        app_id: String,
        anonymous_id: String,
        user_id: Option<String>,
    ) -> StorageFuture<'_, Vec<String>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(sqlite!(sql::LATEST_CONTEXT)).map_err(backend)?;
            let rows = stmt.query_map(params![app_id, anonymous_id, user_id], |r| r.get(0)).map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)
        })
    }

    fn pending_postbacks(&self) -> StorageFuture<'_, Vec<PendingPostback>> {
        self.read(pending_postbacks)
    }
}

pub fn insert_touchpoint(tx: &Transaction<'_>, t: &Touchpoint) -> Result<bool, StorageError> {
    let n = tx
        .prepare_cached(sqlite!(sql::INSERT_TOUCHPOINT))
        .map_err(backend)?
        .execute(params![
            t.app_id,
            t.anonymous_id,
            t.ts,
            t.click_id,
            t.link_id,
            t.campaign_id,
            t.network,
            t.kind,
            t.source_event_id
        ])
        .map_err(backend)?;
    Ok(n == 1)
}

/// The device's latest install time, and its latest before ?3. `install_ts + 0`: not through
/// the `installs_time (app_id, install_ts)` index, which would read every install of the app
/// (the key's own index holds its few rows).
pub(super) const INSTALLED_AT: &str =
    "SELECT MAX(install_ts + 0) FROM installs WHERE app_id = ?1 AND anonymous_id = ?2";
pub(super) const INSTALLED_BEFORE: &str =
    "SELECT MAX(install_ts + 0) FROM installs WHERE app_id = ?1 AND anonymous_id = ?2 AND install_ts + 0 < ?3";

/// Facts for the re-engagement rule: whether the device has an install of this app, and its
/// last activity (event or install) before `before`.
pub fn reengagement_facts(
    conn: &Connection,
    app_id: &str,
    anonymous_id: &str,
    before: i64,
) -> Result<ReengagementFacts, StorageError> {
    let installed: Option<i64> = conn
        .prepare_cached(INSTALLED_AT)
        .map_err(backend)?
        .query_row(params![app_id, anonymous_id], |r| r.get(0))
        .map_err(backend)?;
    let last_install: Option<i64> = conn
        .prepare_cached(INSTALLED_BEFORE)
        .map_err(backend)?
        .query_row(params![app_id, anonymous_id, before], |r| r.get(0))
        .map_err(backend)?;
    let last_event: Option<i64> = conn
        .prepare_cached(
            "SELECT MAX(corrected_ts) FROM events WHERE app_id = ?1 AND anonymous_id = ?2 AND corrected_ts < ?3",
        )
        .map_err(backend)?
        .query_row(params![app_id, anonymous_id, before], |r| r.get(0))
        .map_err(backend)?;
    Ok(ReengagementFacts { installed: installed.is_some(), last_activity: last_install.max(last_event) })
}

pub fn save_touchpoints(
    tx: &Transaction<'_>,
    touchpoints: &[Touchpoint],
    reengagements: &[Reengagement],
) -> Result<Vec<bool>, StorageError> {
    for t in touchpoints {
        insert_touchpoint(tx, t)?;
    }
    let mut fresh = Vec::with_capacity(reengagements.len());
    for r in reengagements {
        let n = tx
            .execute(
                sqlite!(sql::INSERT_REENGAGEMENT),
                params![
                    r.app_id,
                    r.event_id,
                    r.anonymous_id,
                    r.click_id,
                    r.link_id,
                    r.campaign_id,
                    r.network,
                    r.click_ts,
                    r.open_ts,
                    r.inactive_ms
                ],
            )
            .map_err(backend)?;
        fresh.push(n == 1);
    }
    Ok(fresh)
}

/// Touchpoints of every device of the user (the anonymous id itself, and every anonymous id
/// seen with `user_id` in this app) in `[since, until]`, oldest first, one per click.
pub fn conversion_touchpoints(
    conn: &Connection,
    app_id: &str,
    anonymous_id: &str,
    user_id: Option<&str>,
    since: i64,
    until: i64,
) -> Result<Vec<Touchpoint>, StorageError> {
    let mut stmt = conn.prepare_cached(sqlite!(sql::CONVERSION_TOUCHPOINTS)).map_err(backend)?;
    let rows = stmt
        .query_map(params![app_id, anonymous_id, since, until, user_id], |r| {
            Ok(Touchpoint {
                app_id: r.get(0)?,
                anonymous_id: r.get(1)?,
                ts: r.get(2)?,
                click_id: r.get(3)?,
                link_id: r.get(4)?,
                campaign_id: r.get(5)?,
                network: r.get(6)?,
                kind: r.get(7)?,
                source_event_id: r.get(8)?,
            })
        })
        .map_err(backend)?;
    let mut out: Vec<Touchpoint> = Vec::new();
    for row in rows {
        let t = row.map_err(backend)?;
        if !out.iter().any(|o| o.click_id == t.click_id) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Stores a conversion's credit rows, unless the conversion was credited before. Returns
/// whether it wrote them.
pub fn save_conversion(tx: &Transaction<'_>, rows: &[ConversionCredit]) -> Result<bool, StorageError> {
    let Some(first) = rows.first() else { return Ok(false) };
    let done: bool = tx
        .query_row(sqlite!(sql::CONVERSION_CREDITED), params![first.app_id, first.event_id], |r| r.get(0))
        .map_err(backend)?;
    if done {
        return Ok(false);
    }
    let mut stmt = tx.prepare_cached(sqlite!(sql::INSERT_CONVERSION)).map_err(backend)?;
    for c in rows {
        stmt.execute(params![
            c.app_id,
            c.event_id,
            c.model,
            c.click_id.clone().unwrap_or_default(),
            c.anonymous_id,
            c.user_id,
            c.event_type,
            c.ts,
            c.link_id,
            c.campaign_id,
            c.network,
            c.touch_ts,
            c.credit,
            c.revenue,
            c.currency
        ])
        .map_err(backend)?;
    }
    Ok(true)
}

pub fn save_postback(tx: &Transaction<'_>, p: &PostbackRecord) -> Result<i64, StorageError> {
    tx.query_row(
        sqlite!(sql::INSERT_POSTBACK),
        params![p.app_id, p.anonymous_id, p.event_id, p.network, p.event, p.url, p.created_at],
        |r| r.get(0),
    )
    .map_err(backend)
}

/// Whether a postback still waits to be sent (a deletion removes it).
pub fn postback_pending(conn: &Connection, id: i64) -> Result<bool, StorageError> {
    conn.prepare_cached(sqlite!(sql::POSTBACK_PENDING)).map_err(backend)?.query_row([id], |r| r.get(0)).map_err(backend)
}

pub fn log_postback_attempt(tx: &Transaction<'_>, a: &PostbackAttempt) -> Result<(), StorageError> {
    tx.execute(
        sqlite!(sql::INSERT_POSTBACK_ATTEMPT),
        params![a.postback_id, a.app_id, a.anonymous_id, a.attempt, a.status, a.error, a.duration_ms, a.at],
    )
    .map_err(backend)?;
    tx.execute(sqlite!(sql::UPDATE_POSTBACK), params![a.postback_id, a.state, a.attempt, a.status, a.error, a.at])
        .map_err(backend)?;
    Ok(())
}

/// Pending postbacks, oldest first.
pub fn pending_postbacks(conn: &Connection) -> Result<Vec<PendingPostback>, StorageError> {
    let mut stmt = conn.prepare(sqlite!(sql::PENDING_POSTBACKS)).map_err(backend)?;
    stmt.query_map([], |r| {
        Ok(PendingPostback {
            id: r.get(0)?,
            url: r.get(1)?,
            attempts: r.get(2)?,
            app_id: r.get(3)?,
            anonymous_id: r.get(4)?,
            network: r.get(5)?,
        })
    })
    .map_err(backend)?
    .collect::<Result<_, _>>()
    .map_err(backend)
}
