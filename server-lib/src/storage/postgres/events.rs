//! The PostgreSQL store's event path: ingest with dedup on `(app_id, event_id)` (one `UNNEST`
//! statement per batch), and the event inspector.

use std::collections::HashSet;

use super::{PostgresStorage, pool_error};
use crate::storage::sql::{EVENT_COLUMNS, event_insert_columns};
use crate::storage::{EventStore, NewEvent, StorageFuture, Subject, backend};

/// A batch of events, one array per column; answers the keys of the new ones (a duplicate
/// of a stored event changes nothing).
const INSERT_EVENTS: &str = concat!(
    "INSERT INTO events (",
    event_insert_columns!(),
    ")
     SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
         $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], $11::text[], $12::text[], $13::text[], $14::bytea[], $15::bytea[])
     ON CONFLICT (app_id, event_id) DO NOTHING
     RETURNING app_id, event_id"
);

impl EventStore for PostgresStorage {
    fn insert(&self, events: Vec<NewEvent>) -> StorageFuture<'_, Vec<bool>> {
        Box::pin(async move {
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let client = self.pool.get().await.map_err(pool_error)?;
            // One statement for the whole batch: arrays of each column, unnested.
            let col = |f: fn(&NewEvent) -> Option<String>| events.iter().map(f).collect::<Vec<_>>();
            let apps = col(|e| Some(e.app_id.clone()));
            let ids = col(|e| Some(e.event_id.clone()));
            let types = col(|e| Some(e.event_type.clone()));
            let anons = col(|e| Some(e.anonymous_id.clone()));
            let users = col(|e| e.user_id.clone());
            let devices = col(|e| e.device_id.clone());
            let sessions = col(|e| e.session_id.clone());
            let props = col(|e| Some(e.properties.clone()));
            let contexts = col(|e| Some(e.context.clone()));
            let enrichments = col(|e| Some(e.enrichment.clone()));
            let client_ts: Vec<i64> = events.iter().map(|e| e.client_ts).collect();
            let corrected: Vec<i64> = events.iter().map(|e| e.corrected_ts).collect();
            let received: Vec<i64> = events.iter().map(|e| e.received_at).collect();
            let ips: Vec<Option<Vec<u8>>> = events.iter().map(|e| e.ip_enc.clone()).collect();
            let sealed: Vec<Option<Vec<u8>>> = events.iter().map(|e| e.ids_enc.clone()).collect();
            let rows = client
                .query(
                    INSERT_EVENTS,
                    &[
                        &apps,
                        &ids,
                        &types,
                        &anons,
                        &users,
                        &devices,
                        &sessions,
                        &client_ts,
                        &corrected,
                        &received,
                        &props,
                        &contexts,
                        &enrichments,
                        &sealed,
                        &ips,
                    ],
                )
                .await
                .map_err(backend)?;
            let mut inserted: HashSet<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            // The first of two equal ids in one batch is the new one; `remove` marks it taken.
            Ok(events.iter().map(|e| inserted.remove(&(e.app_id.clone(), e.event_id.clone()))).collect())
        })
    }

    fn recent_events(
        &self,
        app_id: Option<String>,
        subject: Subject,
        limit: usize,
    ) -> StorageFuture<'_, Vec<NewEvent>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM events WHERE {} = $1 AND ($2::text IS NULL OR app_id = $2)
                  ORDER BY received_at DESC, client_ts DESC, seq DESC LIMIT $3",
                subject.kind()
            );
            let rows = client.query(&sql, &[&subject.value(), &app_id, &(limit as i64)]).await.map_err(backend)?;
            Ok(rows.iter().map(event_row).collect())
        })
    }

    fn backlog(&self) -> usize {
        self.pool.status().waiting
    }
}

/// The columns of [`EVENT_COLUMNS`] as an event (without its encrypted address).
pub(super) fn event_row(r: &tokio_postgres::Row) -> NewEvent {
    NewEvent {
        app_id: r.get(0),
        event_id: r.get(1),
        event_type: r.get(2),
        anonymous_id: r.get(3),
        user_id: r.get(4),
        device_id: r.get(5),
        session_id: r.get(6),
        client_ts: r.get(7),
        corrected_ts: r.get(8),
        received_at: r.get(9),
        properties: r.get(10),
        context: r.get(11),
        enrichment: r.get(12),
        ids_enc: r.get(13),
        ip_enc: None,
    }
}
