//! The SQLite store's deletion of a data subject (`/v1/user/delete`).

use std::sync::atomic::Ordering;

use rusqlite::{Connection, Transaction, params};

use super::SqliteStorage;
use super::links::flush_clicks;
use crate::storage::sql::{self, sqlite, to_sqlite};
use crate::storage::{
    DeleteReport, DeletionAudit, DeletionStore, SUBJECT_TABLES, Screened, StorageError, StorageFuture, Subject,
    Suppression, Tombstones, backend, suppressed_ids,
};

impl DeletionStore for SqliteStorage {
    fn delete_subject(
        &self,
        subject: Subject,
        audit: DeletionAudit,
        tombstones: Tombstones,
    ) -> StorageFuture<'_, DeleteReport> {
        // From now on ingest screens against the store (set before the deletion commits, so
        // no request stored after it goes unscreened).
        self.screening.store(true, Ordering::SeqCst);
        // Clicks still buffered for the writer go in first, so the deletion sees them.
        let clicks = self.clicks.clone();
        self.write(1, move |tx| {
            flush_clicks(&clicks, tx)?;
            delete_in(tx, &subject, &audit, &tombstones)
        })
    }

    fn screen(&self, app_id: String, event_hashes: Vec<String>, id_hashes: Vec<String>) -> StorageFuture<'_, Screened> {
        if !self.screening.load(Ordering::SeqCst) {
            return Box::pin(async { Ok(Screened::default()) });
        }
        self.read(move |conn| {
            let mut found = Screened::default();
            let mut tombstoned = conn
                .prepare_cached("SELECT 1 FROM tombstones WHERE app_id = ?1 AND event_hash = ?2")
                .map_err(backend)?;
            for h in event_hashes {
                if tombstoned.exists(params![app_id, h]).map_err(backend)? {
                    found.events.push(h);
                }
            }
            let mut suppressed =
                conn.prepare_cached("SELECT 1 FROM suppressions WHERE id_hash = ?1").map_err(backend)?;
            for h in id_hashes {
                if suppressed.exists([&h]).map_err(backend)? {
                    found.ids.push(h);
                }
            }
            Ok(found)
        })
    }

    fn suppressions(&self, limit: usize) -> StorageFuture<'_, Vec<Suppression>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(sqlite!(sql::SUPPRESSIONS)).map_err(backend)?;
            stmt.query_map([limit as i64], |r| {
                Ok(Suppression { id_hash: r.get(0)?, kind: r.get(1)?, receipt_id: r.get(2)?, created_at: r.get(3)? })
            })
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)
        })
    }

    fn lift_suppressions(&self, receipt_id: Option<String>, id_hashes: Vec<String>) -> StorageFuture<'_, u64> {
        self.write(1, move |tx| {
            let mut lifted = 0;
            if let Some(r) = receipt_id {
                lifted += tx.execute(sqlite!(sql::LIFT_BY_RECEIPT), [r]).map_err(backend)? as u64;
            }
            let mut by_hash = tx.prepare_cached(sqlite!(sql::LIFT_BY_HASH)).map_err(backend)?;
            for h in id_hashes {
                lifted += by_hash.execute([h]).map_err(backend)? as u64;
            }
            Ok(lifted)
        })
    }
}

fn delete_in(
    tx: &Transaction<'_>,
    subject: &Subject,
    audit: &DeletionAudit,
    tombstones: &Tombstones,
) -> Result<DeleteReport, StorageError> {
    // A user's anonymous ids, seen on events of the same app together with the user id, are the
    // same person. The pairing is per app: an anonymous id means nothing across apps.
    // A device's anonymous ids (on its events and installs) are the same device.
    let expansion = match subject {
        // dim_users keeps the pairing after the raw events are purged.
        Subject::UserId(_) => Some(sqlite!(sql::USER_ANONYMOUS_IDS)),
        Subject::DeviceId(_) => Some(sqlite!(sql::DEVICE_ANONYMOUS_IDS)),
        Subject::AnonymousId(_) => Some(sqlite!(sql::ANONYMOUS_ID_APPS)),
    };
    let mut anonymous_ids: Vec<(String, String)> = Vec::new();
    if let Some(query) = expansion {
        let mut stmt = tx.prepare(query).map_err(backend)?;
        anonymous_ids = stmt
            .query_map([subject.value()], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
    }
    leave_tombstones(tx, subject, &anonymous_ids, audit, tombstones)?;
    // Clicks tied to the subject through its installs and touchpoints go too.
    let click_ids = subject_click_ids(tx, subject, &anonymous_ids)?;
    let mut report = DeleteReport { rows: 0, click_ids, anonymous_ids: Vec::new() };
    for id in &report.click_ids {
        report.rows += tx.execute("DELETE FROM clicks WHERE click_id = ?1", [id]).map_err(backend)? as u64;
    }
    // Queue entries of the events about to go: an event deleted before the refresh took it
    // and then sent again must be taken once (the queue is short; this reads it once per
    // condition, and only on deletions).
    debug_assert_eq!(SUBJECT_TABLES[0].0, "events");
    for (kind, column) in SUBJECT_TABLES[0].1 {
        if *kind == subject.kind() {
            tx.execute(
                &format!(
                    "DELETE FROM etl_pending WHERE rowid IN (SELECT p.rowid FROM etl_pending p JOIN events e
                        ON e.app_id = p.app_id AND e.event_id = p.event_id WHERE e.{column} = ?1)"
                ),
                [subject.value()],
            )
            .map_err(backend)?;
        }
    }
    for (app, anon) in &anonymous_ids {
        tx.execute(
            "DELETE FROM etl_pending WHERE rowid IN (SELECT p.rowid FROM etl_pending p JOIN events e
                ON e.app_id = p.app_id AND e.event_id = p.event_id WHERE e.app_id = ?1 AND e.anonymous_id = ?2)",
            [app, anon],
        )
        .map_err(backend)?;
    }
    for (table, columns) in SUBJECT_TABLES {
        for (kind, column) in *columns {
            if *kind == subject.kind() {
                report.rows += tx
                    .execute(&to_sqlite(&sql::delete_by_subject(table, column)), [subject.value()])
                    .map_err(backend)? as u64;
            }
        }
        if columns.iter().any(|(kind, _)| *kind == "anonymous_id") {
            for (app, anon) in &anonymous_ids {
                report.rows +=
                    tx.execute(&to_sqlite(&sql::delete_by_anonymous_id(table)), [app, anon]).map_err(backend)? as u64;
            }
        }
    }
    // The OLAP copy is erased by the loader (ADR 0018; nothing is noted without one).
    let mut note = tx.prepare_cached(sqlite!(sql::OLAP_ENTRY)).map_err(backend)?;
    for (app, anon) in &anonymous_ids {
        note.execute(params!["erase", app, anon]).map_err(backend)?;
    }
    if subject.kind() == "user_id" {
        note.execute(params!["erase_user", "", subject.value()]).map_err(backend)?;
    }
    tx.execute(
        sqlite!(sql::INSERT_DELETION_AUDIT),
        params![
            audit.receipt_id,
            audit.subject_kind,
            audit.subject_hash,
            report.rows as i64,
            audit.requested_at,
            audit.requested_by
        ],
    )
    .map_err(backend)?;
    report.anonymous_ids = anonymous_ids;
    Ok(report)
}

/// Tombstones for the events about to be deleted and, when asked, suppressions of the
/// subject's identifiers.
fn leave_tombstones(
    tx: &Transaction<'_>,
    subject: &Subject,
    anonymous_ids: &[(String, String)],
    audit: &DeletionAudit,
    tombstones: &Tombstones,
) -> Result<(), StorageError> {
    let mut keys: Vec<(String, String)> = Vec::new();
    let mut collect = |query: &str, args: &[&dyn rusqlite::ToSql]| -> Result<(), StorageError> {
        let mut stmt = tx.prepare_cached(&to_sqlite(query)).map_err(backend)?;
        let rows = stmt.query_map(args, |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
        for row in rows {
            keys.push(row.map_err(backend)?);
        }
        Ok(())
    };
    for (table, columns) in SUBJECT_TABLES.iter().filter(|(t, _)| sql::TOMBSTONED_TABLES.contains(t)) {
        for (kind, column) in *columns {
            if *kind == subject.kind() {
                collect(&sql::subject_events(table, column), &[&subject.value()])?;
            }
        }
        for (app, anon) in anonymous_ids {
            collect(&sql::anonymous_events(table), &[app, anon])?;
        }
    }
    keys.sort_unstable();
    keys.dedup();
    let mut insert = tx.prepare_cached(sqlite!(sql::INSERT_TOMBSTONE)).map_err(backend)?;
    for (app, event_id) in &keys {
        insert.execute(params![app, tombstones.event(app, event_id), audit.requested_at]).map_err(backend)?;
    }
    if tombstones.suppress {
        let mut insert = tx.prepare_cached(sqlite!(sql::INSERT_SUPPRESSION)).map_err(backend)?;
        for (kind, app, value) in suppressed_ids(subject, anonymous_ids) {
            insert
                .execute(params![tombstones.suppression(kind, app, value), kind, audit.receipt_id, audit.requested_at])
                .map_err(backend)?;
        }
    }
    Ok(())
}

/// Click ids tied to the subject through its installs and touchpoints.
fn subject_click_ids(
    tx: &Transaction<'_>,
    subject: &Subject,
    anonymous_ids: &[(String, String)],
) -> Result<Vec<String>, StorageError> {
    let mut ids = Vec::new();
    let mut collect = |query: &str, args: &[&dyn rusqlite::ToSql]| -> Result<(), StorageError> {
        let mut stmt = tx.prepare(&to_sqlite(query)).map_err(backend)?;
        let rows = stmt.query_map(args, |r| r.get::<_, String>(0)).map_err(backend)?;
        for row in rows {
            ids.push(row.map_err(backend)?);
        }
        Ok(())
    };
    match subject {
        Subject::AnonymousId(a) => collect(sql::ANONYMOUS_CLICK_IDS_ANY_APP, &[a])?,
        Subject::DeviceId(d) => collect(sql::DEVICE_CLICK_IDS, &[d])?,
        Subject::UserId(_) => {}
    }
    for (app, anon) in anonymous_ids {
        collect(sql::ANONYMOUS_CLICK_IDS, &[app, anon])?;
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Counts the rows in every subject table that still refer to `subject` (for tests and audits).
pub fn count_subject_rows(conn: &Connection, subject: &Subject) -> Result<u64, StorageError> {
    let mut total = 0u64;
    for (table, columns) in SUBJECT_TABLES {
        for (kind, column) in *columns {
            if *kind != subject.kind() {
                continue;
            }
            let n: i64 = conn
                .query_row(&format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?1"), [subject.value()], |r| {
                    r.get(0)
                })
                .map_err(backend)?;
            total += n as u64;
        }
    }
    Ok(total)
}
