//! The SQLite store's event path: ingest with dedup on `(app_id, event_id)`, and the event
//! inspector.

use std::sync::atomic::Ordering;

use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStorage;
use crate::storage::sql::{EVENT_COLUMNS, event_insert_columns};
use crate::storage::{EventStore, NewEvent, StorageError, StorageFuture, Subject, backend};

impl EventStore for SqliteStorage {
    fn insert(&self, events: Vec<NewEvent>) -> StorageFuture<'_, Vec<bool>> {
        self.write(events.len(), move |tx| insert_events(tx, &events))
    }

    fn recent_events(
        &self,
        app_id: Option<String>,
        subject: Subject,
        limit: usize,
    ) -> StorageFuture<'_, Vec<NewEvent>> {
        self.read(move |conn| recent_events(conn, app_id.as_deref(), &subject, limit))
    }

    fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }
}

/// One event; a duplicate of a stored one changes nothing.
const INSERT_EVENT: &str = concat!(
    "INSERT INTO events (",
    event_insert_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
     ON CONFLICT (app_id, event_id) DO NOTHING"
);

fn insert_events(tx: &rusqlite::Transaction<'_>, batch: &[NewEvent]) -> Result<Vec<bool>, StorageError> {
    let mut stmt = tx.prepare_cached(INSERT_EVENT).map_err(backend)?;
    let mut fresh = Vec::with_capacity(batch.len());
    for e in batch {
        let changed = stmt
            .execute(params![
                e.app_id,
                e.event_id,
                e.event_type,
                e.anonymous_id,
                e.user_id,
                e.device_id,
                e.session_id,
                e.client_ts,
                e.corrected_ts,
                e.received_at,
                e.properties,
                e.context,
                e.enrichment,
                e.ids_enc,
                e.ip_enc,
            ])
            .map_err(backend)?;
        fresh.push(changed == 1);
    }
    Ok(fresh)
}

fn recent_events(
    conn: &Connection,
    app_id: Option<&str>,
    subject: &Subject,
    limit: usize,
) -> Result<Vec<NewEvent>, StorageError> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS}
           FROM events WHERE {} = ?1 AND (?2 IS NULL OR app_id = ?2)
          ORDER BY received_at DESC, client_ts DESC, rowid DESC LIMIT ?3",
        subject.kind()
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = stmt.query_map(params![subject.value(), app_id, limit as i64], event_row).map_err(backend)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(backend)
}

/// The columns of [`EVENT_COLUMNS`] as an event (without its encrypted address).
pub(super) fn event_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NewEvent> {
    Ok(NewEvent {
        app_id: r.get(0)?,
        event_id: r.get(1)?,
        event_type: r.get(2)?,
        anonymous_id: r.get(3)?,
        user_id: r.get(4)?,
        device_id: r.get(5)?,
        session_id: r.get(6)?,
        client_ts: r.get(7)?,
        corrected_ts: r.get(8)?,
        received_at: r.get(9)?,
        properties: r.get(10)?,
        context: r.get(11)?,
        enrichment: r.get(12)?,
        ids_enc: r.get(13)?,
        ip_enc: None,
    })
}

/// Reads one stored event's type by its key (tests and tools).
pub fn stored_type(conn: &Connection, app_id: &str, event_id: &str) -> Result<Option<String>, StorageError> {
    conn.query_row("SELECT type FROM events WHERE app_id = ?1 AND event_id = ?2", [app_id, event_id], |r| r.get(0))
        .optional()
        .map_err(backend)
}
