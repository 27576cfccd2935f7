//! The SQLite store's OLAP outbox (`OlapOutboxStore`, ADR 0018).

use rusqlite::{Connection, OptionalExtension, params};

use super::SqliteStorage;
use crate::storage::sql::{self, sqlite};
use crate::storage::star::{mirrored_key, outbox_entries};
use crate::storage::{
    OlapFact, OlapLease, OlapOutboxStore, OlapPage, OlapRow, OlapSession, OlapSessionRow, OlapUser, OlapUserRow,
    StorageError, StorageFuture, backend,
};

impl OlapOutboxStore for SqliteStorage {
    fn olap_switch(&self, on: bool, refill: bool) -> StorageFuture<'_, ()> {
        self.write(1, move |tx| {
            let was_on = tx.query_row(sqlite!(sql::ETL_STATE), ["olap"], |_| Ok(())).optional().map_err(backend)?;
            match (on, was_on.is_some()) {
                (true, was) if refill || !was => {
                    tx.execute("INSERT OR REPLACE INTO etl_state (key, value) VALUES ('olap', 1)", [])
                        .map_err(backend)?;
                    tx.execute_batch(&sql::OLAP_BACKFILL.replace("{ord}", "rowid")).map_err(backend)?;
                    for m in sql::OLAP_MIRRORED {
                        tx.execute_batch(&m.backfill("json_array", "")).map_err(backend)?;
                    }
                }
                (false, true) => {
                    tx.execute("DELETE FROM etl_state WHERE key = 'olap'", []).map_err(backend)?;
                    tx.execute("DELETE FROM olap_outbox", []).map_err(backend)?;
                }
                _ => {}
            }
            Ok(())
        })
    }

    fn olap_page(&self, lease: OlapLease, limit: usize) -> StorageFuture<'_, Option<OlapPage>> {
        self.write(1, move |tx| {
            let state = |key: &str| tx.query_row(sqlite!(sql::ETL_STATE), [key], |r| r.get::<_, i64>(0)).optional();
            if state("olap").map_err(backend)?.is_none() {
                return Ok(Some(OlapPage { switched_off: true, ..Default::default() }));
            }
            let holder = state("olap_holder").map_err(backend)?;
            let until = state("olap_lease_until").map_err(backend)?.unwrap_or(i64::MIN);
            if holder.is_some_and(|h| h != lease.holder) && until > lease.now {
                return Ok(None);
            }
            let version = state("olap_version").map_err(backend)?.unwrap_or(0) + 1;
            let mut set =
                tx.prepare_cached("INSERT OR REPLACE INTO etl_state (key, value) VALUES (?1, ?2)").map_err(backend)?;
            set.execute(params!["olap_holder", lease.holder]).map_err(backend)?;
            set.execute(params!["olap_lease_until", lease.now.saturating_add(lease.ttl)]).map_err(backend)?;
            set.execute(params!["olap_version", version]).map_err(backend)?;
            read_page(tx, version, limit).map(Some)
        })
    }

    fn olap_renew(&self, lease: OlapLease) -> StorageFuture<'_, bool> {
        self.write(1, move |tx| {
            let state = |key: &str| tx.query_row(sqlite!(sql::ETL_STATE), [key], |r| r.get::<_, i64>(0)).optional();
            let holder = state("olap_holder").map_err(backend)?;
            let until = state("olap_lease_until").map_err(backend)?.unwrap_or(i64::MIN);
            // Expired: another loader may have taken it since.
            if holder != Some(lease.holder) || until < lease.now {
                return Ok(false);
            }
            tx.execute(
                "INSERT OR REPLACE INTO etl_state (key, value) VALUES ('olap_lease_until', ?1)",
                [lease.now.saturating_add(lease.ttl)],
            )
            .map_err(backend)?;
            Ok(true)
        })
    }

    fn olap_done(&self, seqs: Vec<i64>) -> StorageFuture<'_, ()> {
        self.write(seqs.len().max(1), move |tx| {
            let mut delete = tx.prepare_cached("DELETE FROM olap_outbox WHERE seq = ?1").map_err(backend)?;
            for seq in seqs {
                delete.execute([seq]).map_err(backend)?;
            }
            Ok(())
        })
    }

    fn olap_pending(&self) -> StorageFuture<'_, u64> {
        self.read(|c| {
            c.query_row(sqlite!(sql::OLAP_PENDING), [], |r| r.get::<_, i64>(0)).map(|n| n as u64).map_err(backend)
        })
    }
}

fn read_page(c: &Connection, version: i64, limit: usize) -> Result<OlapPage, StorageError> {
    let rows: Vec<(i64, String, String, String)> = {
        let mut stmt = c.prepare_cached(sqlite!(sql::OLAP_PAGE)).map_err(backend)?;
        stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?
    };
    let full = rows.len() >= limit;
    let (mut page, (facts, users, sessions, mirrored)) = outbox_entries(rows).into_page(version);
    page.more |= full;
    let mut fact = c.prepare_cached(&sql::to_sqlite(&sql::OLAP_FACT.replace("{ord}", "rowid"))).map_err(backend)?;
    for (app_id, event_id) in facts {
        let row = fact
            .query_row(params![app_id, event_id], |r| {
                Ok(OlapFact {
                    app_id: app_id.clone(),
                    event_id: event_id.clone(),
                    ord: r.get(0)?,
                    date_key: r.get(1)?,
                    ts: r.get(2)?,
                    event_type: r.get(3)?,
                    anonymous_id: r.get(4)?,
                    user_id: r.get(5)?,
                    session_key: r.get(6)?,
                    revenue: r.get(7)?,
                    currency: r.get(8)?,
                })
            })
            .optional()
            .map_err(backend)?;
        // A fact deleted since is erased in ClickHouse by its deletion's or purge's entry.
        page.facts.extend(row);
    }
    let mut user = c.prepare_cached(sqlite!(sql::OLAP_USER)).map_err(backend)?;
    for (app_id, anonymous_id) in users {
        let row = user
            .query_row(params![app_id, anonymous_id], |r| {
                Ok(OlapUserRow {
                    user_id: r.get(0)?,
                    first_seen: r.get(1)?,
                    last_seen: r.get(2)?,
                    events: r.get(3)?,
                    install_ts: r.get(4)?,
                    install_campaign_id: r.get(5)?,
                    utm_campaign_key: r.get(6)?,
                })
            })
            .optional()
            .map_err(backend)?;
        page.users.push(OlapUser { app_id, anonymous_id, row });
    }
    let mut session = c.prepare_cached(sqlite!(sql::OLAP_SESSION)).map_err(backend)?;
    for (app_id, session_key) in sessions {
        let row = session
            .query_row(params![app_id, session_key], |r| {
                Ok(OlapSessionRow {
                    anonymous_id: r.get(0)?,
                    user_id: r.get(1)?,
                    start_ts: r.get(2)?,
                    end_ts: r.get(3)?,
                    events: r.get(4)?,
                })
            })
            .optional()
            .map_err(backend)?;
        page.sessions.push(OlapSession { app_id, session_key, row });
    }
    for (table, key) in mirrored {
        let Some((mirror, key)) = mirrored_key(&table, &key) else { continue };
        let mut stmt = c.prepare_cached(&sql::to_sqlite(&mirror.row_json("json_object", ""))).map_err(backend)?;
        let args: Vec<rusqlite::types::Value> = key
            .iter()
            .map(|(_, v)| match v {
                serde_json::Value::String(s) => rusqlite::types::Value::Text(s.clone()),
                v => rusqlite::types::Value::Integer(v.as_i64().unwrap_or_default()),
            })
            .collect();
        let row: Option<String> =
            stmt.query_row(rusqlite::params_from_iter(args), |r| r.get(0)).optional().map_err(backend)?;
        let row = row.and_then(|text| serde_json::from_str(&text).ok());
        page.mirrored.push(OlapRow { table, key, row });
    }
    Ok(page)
}
