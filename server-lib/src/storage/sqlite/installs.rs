//! The SQLite store's installs: the lookups a new install needs, the install with its
//! touchpoint, fraud alert and postbacks, and the burst baseline.

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use serde_json::Value;

use super::SqliteStorage;
use super::conversions::{insert_touchpoint, save_postback};
use crate::storage::sql::{self, INSTALL_COLUMNS, sqlite};
use crate::storage::{
    AdIdUpdate, DeviceKeys, FraudAlert, InstallCount, InstallLookup, InstallRecord, InstallStore, PostbackRecord,
    StorageError, StorageFuture, TestDevice, Touchpoint, backend, json_err,
};

impl InstallStore for SqliteStorage {
    fn install_by_event(&self, app_id: Option<String>, event_id: String) -> StorageFuture<'_, Option<InstallRecord>> {
        self.read(move |c| install_by_event(c, app_id.as_deref(), &event_id))
    }

    fn last_install(&self, app_id: String, keys: DeviceKeys) -> StorageFuture<'_, Option<InstallRecord>> {
        self.read(move |c| last_install(c, &app_id, &keys))
    }

    fn install_lookup(&self, app_id: String, event_id: String, keys: DeviceKeys) -> StorageFuture<'_, InstallLookup> {
        self.read(move |c| {
            if let Some(done) = install_by_event(c, Some(&app_id), &event_id)? {
                return Ok(InstallLookup { existing: Some(done), last_install: None });
            }
            Ok(InstallLookup { existing: None, last_install: last_install(c, &app_id, &keys)? })
        })
    }

    fn save_install(
        &self,
        install: InstallRecord,
        touchpoint: Option<Touchpoint>,
        alert: Option<FraudAlert>,
        postbacks: Vec<PostbackRecord>,
    ) -> StorageFuture<'_, Option<Vec<i64>>> {
        self.write(2 + postbacks.len(), move |tx| {
            if !save_install(tx, &install, touchpoint.as_ref(), alert.as_ref())? {
                return Ok(None);
            }
            postbacks.iter().map(|p| save_postback(tx, p)).collect::<Result<Vec<_>, _>>().map(Some)
        })
    }

    fn install_counts(&self, since: i64) -> StorageFuture<'_, Vec<InstallCount>> {
        self.read(move |c| install_counts(c, since))
    }

    fn attach_advertising_id(&self, u: AdIdUpdate) -> StorageFuture<'_, u64> {
        self.write(1, move |tx| {
            let sql = sql::to_sqlite(&sql::attach_advertising_id(u.column));
            let n = tx.execute(&sql, params![u.app_id, u.anonymous_id, u.value]).map_err(backend)?;
            Ok(n as u64)
        })
    }

    fn save_test_device(&self, d: TestDevice) -> StorageFuture<'_, bool> {
        self.write(1, move |tx| {
            let existed: bool = tx
                .query_row("SELECT EXISTS (SELECT 1 FROM test_devices WHERE device_id = ?1)", [&d.device_id], |r| {
                    r.get(0)
                })
                .map_err(backend)?;
            tx.execute(sqlite!(sql::SAVE_TEST_DEVICE), params![d.device_id, d.label, d.device_enc, d.created_at])
                .map_err(backend)?;
            Ok(!existed)
        })
    }

    fn remove_test_device(&self, device_id: String) -> StorageFuture<'_, bool> {
        self.write(1, move |tx| Ok(tx.execute(sqlite!(sql::REMOVE_TEST_DEVICE), [device_id]).map_err(backend)? == 1))
    }

    fn test_devices(&self) -> StorageFuture<'_, Vec<TestDevice>> {
        self.read(|c| {
            let mut stmt = c.prepare_cached(sql::TEST_DEVICES).map_err(backend)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(TestDevice {
                        device_id: r.get(0)?,
                        label: r.get(1)?,
                        device_enc: r.get(2)?,
                        created_at: r.get(3)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)
        })
    }
}

fn install_row(r: &Row<'_>) -> rusqlite::Result<(InstallRecord, String, String)> {
    Ok((
        InstallRecord {
            app_id: r.get(0)?,
            event_id: r.get(1)?,
            anonymous_id: r.get(2)?,
            platform: r.get(3)?,
            idfa: r.get(4)?,
            idfv: r.get(5)?,
            gaid: r.get(6)?,
            android_id: r.get(7)?,
            install_ts: r.get(8)?,
            received_at: r.get(9)?,
            kind: r.get(10)?,
            result: trailmark_core::protocol::AttributionResult::organic(Default::default()),
            audit: Value::Null,
            ip_enc: r.get(13)?,
            ids_enc: r.get(14)?,
            rejected_credit: None,
        },
        r.get(11)?,
        r.get(12)?,
    ))
}

fn finish_install(row: Option<(InstallRecord, String, String)>) -> Result<Option<InstallRecord>, StorageError> {
    let Some((mut install, result, audit)) = row else { return Ok(None) };
    install.result = serde_json::from_str(&result).map_err(json_err)?;
    install.audit = serde_json::from_str(&audit).map_err(json_err)?;
    Ok(Some(install))
}

pub fn install_by_event(
    conn: &Connection,
    app_id: Option<&str>,
    event_id: &str,
) -> Result<Option<InstallRecord>, StorageError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {INSTALL_COLUMNS} FROM installs WHERE event_id = ?1 AND (?2 IS NULL OR app_id = ?2)
             ORDER BY received_at LIMIT 1"
        ))
        .map_err(backend)?
        .query_row(params![event_id, app_id], install_row)
        .optional()
        .map_err(backend)?;
    finish_install(row)
}

/// The device's latest install that counted as new (`kind = 'install'`); reinstalls are
/// measured from it.
pub fn last_install(conn: &Connection, app_id: &str, keys: &DeviceKeys) -> Result<Option<InstallRecord>, StorageError> {
    let mut best: Option<(InstallRecord, String, String)> = None;
    for (column, value) in [
        ("anonymous_id", Some(&keys.anonymous_id)),
        ("idfa", keys.idfa.as_ref()),
        ("idfv", keys.idfv.as_ref()),
        ("gaid", keys.gaid.as_ref()),
        ("android_id", keys.android_id.as_ref()),
    ] {
        let Some(value) = value else { continue };
        let row = conn
            .prepare_cached(&last_install_sql(column))
            .map_err(backend)?
            .query_row(params![app_id, value], install_row)
            .optional()
            .map_err(backend)?;
        if let Some(row) = row
            && best.as_ref().is_none_or(|b| row.0.install_ts > b.0.install_ts)
        {
            best = Some(row);
        }
    }
    finish_install(best)
}

/// The device's latest counted install by one key. `install_ts + 0`: the ordering must not
/// tempt the planner into the `installs_time (app_id, install_ts)` index, which would walk
/// every install of the app newest first instead of the few rows of the key's own index.
fn last_install_sql(column: &str) -> String {
    format!(
        "SELECT {INSTALL_COLUMNS} FROM installs WHERE app_id = ?1 AND {column} = ?2 AND kind = 'install'
         ORDER BY install_ts + 0 DESC LIMIT 1"
    )
}

pub fn save_install(
    tx: &Transaction<'_>,
    i: &InstallRecord,
    touchpoint: Option<&Touchpoint>,
    alert: Option<&FraudAlert>,
) -> Result<bool, StorageError> {
    let r = &i.result;
    let [campaign_id, link_id, click_id, network] = i.credited();
    // Cached: compiling the 21-column insert (with its trigger) was 8 % of an install's CPU.
    let changed = tx
        .prepare_cached(sqlite!(sql::INSERT_INSTALL))
        .map_err(backend)?
        .execute(params![
            i.app_id,
            i.event_id,
            i.anonymous_id,
            i.platform,
            i.idfa,
            i.idfv,
            i.gaid,
            i.android_id,
            i.install_ts,
            i.received_at,
            i.kind,
            r.match_type.as_str(),
            campaign_id,
            link_id,
            click_id,
            network,
            r.fraud.rejected,
            serde_json::to_string(r).map_err(json_err)?,
            i.audit.to_string(),
            i.ip_enc,
            i.ids_enc,
        ])
        .map_err(backend)?;
    if changed == 0 {
        return Ok(false);
    }
    if let Some(t) = touchpoint {
        insert_touchpoint(tx, t)?;
    }
    if let Some(a) = alert {
        tx.execute(
            sqlite!(sql::INSERT_FRAUD_ALERT),
            params![a.rule, a.app_id, a.campaign_id, a.at, a.detail.to_string()],
        )
        .map_err(backend)?;
    }
    Ok(true)
}

pub fn install_counts(conn: &Connection, since: i64) -> Result<Vec<InstallCount>, StorageError> {
    let hour = crate::domain::attribution::HOUR;
    let mut stmt = conn
        .prepare(
            "SELECT campaign_id, (install_ts / ?2) * ?2 AS hour, COUNT(*) FROM installs
             WHERE campaign_id IS NOT NULL AND install_ts >= ?1 AND kind = 'install' AND rejected = 0
             GROUP BY campaign_id, hour ORDER BY hour",
        )
        .map_err(backend)?;
    stmt.query_map(params![since, hour], |r| {
        Ok(InstallCount { campaign_id: r.get(0)?, hour: r.get(1)?, installs: r.get(2)? })
    })
    .map_err(backend)?
    .collect::<Result<_, _>>()
    .map_err(backend)
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::super::conversions::{INSTALLED_AT, INSTALLED_BEFORE};
    use super::super::schema::migrate;
    use super::last_install_sql;

    /// The index each lookup an install or a conversion makes per request must search, by
    /// SQLite's query plan: never the app's whole install history (issue 24 found the lookups
    /// walking `installs_time`, added for the dashboard, at 170 installs/s).
    #[test]
    fn per_request_install_lookups_search_their_own_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        let plan = |sql: &str| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(3)).unwrap();
            rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
        };
        for (column, index) in [
            ("anonymous_id", "installs_anonymous_id"),
            ("idfa", "installs_idfa"),
            ("idfv", "installs_idfv"),
            ("gaid", "installs_gaid"),
            ("android_id", "installs_android_id"),
        ] {
            let sql = last_install_sql(column).replace("?1", "'app'").replace("?2", "'x'");
            let p = plan(&sql);
            assert!(p.contains(&format!("USING INDEX {index} (app_id=? AND {column}=?)")), "{column}: {p}");
        }
        for sql in [INSTALLED_AT, INSTALLED_BEFORE] {
            let p = plan(&sql.replace("?1", "'app'").replace("?2", "'a'").replace("?3", "0"));
            assert!(p.contains("USING INDEX installs_anonymous_id (app_id=? AND anonymous_id=?)"), "{sql}: {p}");
        }
    }
}
