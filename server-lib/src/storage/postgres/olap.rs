//! The PostgreSQL store's OLAP outbox (`OlapOutboxStore`, ADR 0018). Entries are removed by
//! their own numbers, as transactions may commit them out of order (ADR 0008); one page reader
//! at a time (an advisory lock of its own), and a lease in `etl_state` keeps one loader across
//! instances.

use std::collections::HashMap;

use super::{PostgresStorage, pool_error};
use crate::storage::sql;
use crate::storage::star::{mirrored_key, outbox_entries};
use crate::storage::{
    OlapFact, OlapLease, OlapOutboxStore, OlapPage, OlapRow, OlapSession, OlapSessionRow, OlapUser, OlapUserRow,
    StorageError, StorageFuture, backend,
};

/// The class of the page reader's advisory lock (two-key form; see `identity.rs`).
const PAGE_LOCK: i32 = 22;

impl OlapOutboxStore for PostgresStorage {
    fn olap_switch(&self, on: bool, refill: bool) -> StorageFuture<'_, ()> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&PAGE_LOCK]).await.map_err(backend)?;
            let was_on = tx.query_opt(sql::ETL_STATE, &[&"olap"]).await.map_err(backend)?.is_some();
            match (on, was_on) {
                (true, _) if refill || !was_on => {
                    // Writers that began before the switch either commit before the backfill
                    // reads (and are in it) or after it (and their triggers see the switch):
                    // none falls between (READ COMMITTED would let it).
                    let tables: Vec<&str> = ["fact_events", "dim_users", "sessions"]
                        .into_iter()
                        .chain(sql::OLAP_MIRRORED.iter().map(|m| m.table))
                        .collect();
                    tx.batch_execute(&format!("LOCK TABLE {} IN SHARE MODE", tables.join(", ")))
                        .await
                        .map_err(backend)?;
                    tx.execute(
                        "INSERT INTO etl_state (key, value) VALUES ('olap', 1) ON CONFLICT (key) DO NOTHING",
                        &[],
                    )
                    .await
                    .map_err(backend)?;
                    tx.batch_execute(&sql::OLAP_BACKFILL.replace("{ord}", "seq")).await.map_err(backend)?;
                    for m in sql::OLAP_MIRRORED {
                        tx.batch_execute(&m.backfill("jsonb_build_array", "::text")).await.map_err(backend)?;
                    }
                }
                (false, true) => {
                    tx.batch_execute("DELETE FROM etl_state WHERE key = 'olap'; DELETE FROM olap_outbox;")
                        .await
                        .map_err(backend)?;
                }
                _ => {}
            }
            tx.commit().await.map_err(backend)
        })
    }

    fn olap_page(&self, lease: OlapLease, limit: usize) -> StorageFuture<'_, Option<OlapPage>> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&PAGE_LOCK]).await.map_err(backend)?;
            let mut state: HashMap<String, i64> = HashMap::new();
            for r in tx
                .query(
                    "SELECT key, value FROM etl_state
                      WHERE key IN ('olap', 'olap_holder', 'olap_lease_until', 'olap_version')",
                    &[],
                )
                .await
                .map_err(backend)?
            {
                state.insert(r.get(0), r.get(1));
            }
            if !state.contains_key("olap") {
                return Ok(Some(OlapPage { switched_off: true, ..Default::default() }));
            }
            let holder = state.get("olap_holder").copied();
            let until = state.get("olap_lease_until").copied().unwrap_or(i64::MIN);
            if holder.is_some_and(|h| h != lease.holder) && until > lease.now {
                return Ok(None);
            }
            let version = state.get("olap_version").copied().unwrap_or(0) + 1;
            let set = tx
                .prepare("INSERT INTO etl_state (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
                .await
                .map_err(backend)?;
            for (key, value) in [
                ("olap_holder", lease.holder),
                ("olap_lease_until", lease.now.saturating_add(lease.ttl)),
                ("olap_version", version),
            ] {
                tx.execute(&set, &[&key, &value]).await.map_err(backend)?;
            }
            let rows: Vec<(i64, String, String, String)> = tx
                .query(sql::OLAP_PAGE, &[&(limit as i64)])
                .await
                .map_err(backend)?
                .iter()
                .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
                .collect();
            let full = rows.len() >= limit;
            let (mut page, (facts, users, sessions, mirrored)) = outbox_entries(rows).into_page(version);
            page.more |= full;
            let (apps, events): (Vec<String>, Vec<String>) = facts.into_iter().unzip();
            let facts = tx
                .query(
                    "SELECT f.seq, f.app_id, f.event_id, f.date_key, f.ts, f.event_type, f.anonymous_id, f.user_id,
                            f.session_key, f.revenue, f.currency
                       FROM fact_events f JOIN unnest($1::text[], $2::text[]) AS k (app_id, event_id)
                         ON f.app_id = k.app_id AND f.event_id = k.event_id",
                    &[&apps, &events],
                )
                .await
                .map_err(backend)?;
            // A fact deleted since is erased in ClickHouse by its deletion's or purge's entry.
            page.facts = facts
                .iter()
                .map(|r| OlapFact {
                    ord: r.get(0),
                    app_id: r.get(1),
                    event_id: r.get(2),
                    date_key: r.get(3),
                    ts: r.get(4),
                    event_type: r.get(5),
                    anonymous_id: r.get(6),
                    user_id: r.get(7),
                    session_key: r.get(8),
                    revenue: r.get(9),
                    currency: r.get(10),
                })
                .collect();
            let mut found = by_key(
                &tx,
                "SELECT u.app_id, u.anonymous_id, u.user_id, u.first_seen, u.last_seen, u.events, u.install_ts,
                        u.install_campaign_id, u.utm_campaign_key
                   FROM dim_users u JOIN unnest($1::text[], $2::text[]) AS k (app_id, anonymous_id)
                     ON u.app_id = k.app_id AND u.anonymous_id = k.anonymous_id",
                &users,
                |r| OlapUserRow {
                    user_id: r.get(2),
                    first_seen: r.get(3),
                    last_seen: r.get(4),
                    events: r.get(5),
                    install_ts: r.get(6),
                    install_campaign_id: r.get(7),
                    utm_campaign_key: r.get(8),
                },
            )
            .await?;
            for (app_id, anonymous_id) in users {
                let row = found.remove(&(app_id.clone(), anonymous_id.clone()));
                page.users.push(OlapUser { app_id, anonymous_id, row });
            }
            let mut found = by_key(
                &tx,
                "SELECT s.app_id, s.session_key, s.anonymous_id, s.user_id, s.start_ts, s.end_ts, s.events
                   FROM sessions s JOIN unnest($1::text[], $2::text[]) AS k (app_id, session_key)
                     ON s.app_id = k.app_id AND s.session_key = k.session_key",
                &sessions,
                |r| OlapSessionRow {
                    anonymous_id: r.get(2),
                    user_id: r.get(3),
                    start_ts: r.get(4),
                    end_ts: r.get(5),
                    events: r.get(6),
                },
            )
            .await?;
            for (app_id, session_key) in sessions {
                let row = found.remove(&(app_id.clone(), session_key.clone()));
                page.sessions.push(OlapSession { app_id, session_key, row });
            }
            for (table, key) in mirrored {
                let Some((mirror, key)) = mirrored_key(&table, &key) else { continue };
                let stmt = tx.prepare_cached(&mirror.row_json("json_build_object", "::text")).await.map_err(backend)?;
                let texts: Vec<Option<String>> = key.iter().map(|(_, v)| v.as_str().map(str::to_owned)).collect();
                let ints: Vec<Option<i64>> = key.iter().map(|(_, v)| v.as_i64()).collect();
                let args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = texts
                    .iter()
                    .zip(&ints)
                    .map(|(t, i)| match t {
                        Some(_) => t as &(dyn tokio_postgres::types::ToSql + Sync),
                        None => i as &(dyn tokio_postgres::types::ToSql + Sync),
                    })
                    .collect();
                let row: Option<String> = tx.query_opt(&stmt, &args).await.map_err(backend)?.map(|r| r.get(0));
                let row = row.and_then(|text| serde_json::from_str(&text).ok());
                page.mirrored.push(OlapRow { table, key, row });
            }
            tx.commit().await.map_err(backend)?;
            Ok(Some(page))
        })
    }

    fn olap_renew(&self, lease: OlapLease) -> StorageFuture<'_, bool> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            // Under the page lock, as a takeover in `olap_page` is.
            tx.execute("SELECT pg_advisory_xact_lock($1, 0)", &[&PAGE_LOCK]).await.map_err(backend)?;
            let mut state: HashMap<String, i64> = HashMap::new();
            for r in tx
                .query("SELECT key, value FROM etl_state WHERE key IN ('olap_holder', 'olap_lease_until')", &[])
                .await
                .map_err(backend)?
            {
                state.insert(r.get(0), r.get(1));
            }
            // Expired: another loader may have taken it since.
            let until = state.get("olap_lease_until").copied().unwrap_or(i64::MIN);
            if state.get("olap_holder") != Some(&lease.holder) || until < lease.now {
                return Ok(false);
            }
            tx.execute(
                "UPDATE etl_state SET value = $1 WHERE key = 'olap_lease_until'",
                &[&lease.now.saturating_add(lease.ttl)],
            )
            .await
            .map_err(backend)?;
            tx.commit().await.map_err(backend)?;
            Ok(true)
        })
    }

    fn olap_done(&self, seqs: Vec<i64>) -> StorageFuture<'_, ()> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            client.execute("DELETE FROM olap_outbox WHERE seq = ANY($1)", &[&seqs]).await.map_err(backend)?;
            Ok(())
        })
    }

    fn olap_pending(&self) -> StorageFuture<'_, u64> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let n: i64 = client.query_one(sql::OLAP_PENDING, &[]).await.map_err(backend)?.get(0);
            Ok(n as u64)
        })
    }
}

/// The rows of `sql` (its first two columns the app and the key, `$1` and `$2` the arrays of
/// `keys`' apps and keys), by (app, key).
async fn by_key<T>(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    keys: &[(String, String)],
    row: impl Fn(&tokio_postgres::Row) -> T,
) -> Result<HashMap<(String, String), T>, StorageError> {
    let (apps, keys): (Vec<String>, Vec<String>) = keys.iter().cloned().unzip();
    let rows = tx.query(sql, &[&apps, &keys]).await.map_err(backend)?;
    Ok(rows.iter().map(|r| ((r.get(0), r.get(1)), row(r))).collect())
}
