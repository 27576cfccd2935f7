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

/// A new event queued for the report refresh. Written here rather than by a row trigger on
/// `events` (schema 11 dropped `events_etl`): a statement with a trigger keeps a statement
/// journal of every page it changes, which cost the writer about 5 % of an ingest.
const QUEUE_EVENT: &str = "INSERT INTO etl_pending (app_id, event_id) VALUES (?1, ?2)";

fn insert_events(tx: &rusqlite::Transaction<'_>, batch: &[NewEvent]) -> Result<Vec<bool>, StorageError> {
    let mut stmt = tx.prepare_cached(INSERT_EVENT).map_err(backend)?;
    let mut queue = tx.prepare_cached(QUEUE_EVENT).map_err(backend)?;
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
        if changed == 1 {
            queue.execute(params![e.app_id, e.event_id]).map_err(backend)?;
        }
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

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::super::schema::migrate;
    use super::insert_events;
    use crate::domain::records::NewEvent;

    /// Schema 11: no row trigger on `events`; the insert queues exactly its new events for the
    /// report refresh, in its own transaction (a duplicate queues nothing).
    #[test]
    fn the_insert_queues_its_new_events_without_a_trigger() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let triggers: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(triggers, 0);
        let event = |id: &str| NewEvent {
            app_id: "app".into(),
            event_id: id.into(),
            event_type: "app_opened".into(),
            anonymous_id: "a".into(),
            properties: "{}".into(),
            context: "{}".into(),
            enrichment: "{}".into(),
            ..NewEvent::default()
        };
        let tx = conn.transaction().unwrap();
        let fresh = insert_events(&tx, &[event("e1"), event("e2"), event("e1")]).unwrap();
        assert_eq!(fresh, [true, true, false]);
        let fresh = insert_events(&tx, &[event("e2"), event("e3")]).unwrap();
        assert_eq!(fresh, [false, true]);
        tx.commit().unwrap();
        let mut stmt = conn.prepare("SELECT event_id FROM etl_pending ORDER BY seq").unwrap();
        let queued: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        assert_eq!(queued, ["e1", "e2", "e3"]);
    }
}
