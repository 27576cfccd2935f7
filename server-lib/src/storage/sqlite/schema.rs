//! The SQLite store's tables: the migrations up to schema version 11 (`PRAGMA user_version`).
//! The tables both stores share are in [`ddl`]; what is SQLite's own is here: the report
//! queue numbered by `rowid`, the row triggers, one index, and the backfill of the report
//! tables.

use rusqlite::Connection;

use crate::storage::ddl::{self, Dialect, day_key};
use crate::storage::{StorageError, backend, sql};

const SCHEMA_VERSION: i64 = 11;

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
    if version > SCHEMA_VERSION {
        return Err(StorageError::Backend(format!("schema version {version} is newer than {SCHEMA_VERSION}")));
    }
    let tx = conn.transaction().map_err(backend)?;
    if version < 1 {
        tx.execute_batch(&ddl::render(&[ddl::EVENTS, ddl::DELETION_AUDIT], Dialect::Sqlite)).map_err(backend)?;
    }
    if version < 2 {
        tx.execute_batch(&schema_v2()).map_err(backend)?;
    }
    if version < 3 {
        tx.execute_batch(&schema_v3()).map_err(backend)?;
    }
    if version < 4 {
        tx.execute_batch(DEVICE_ID_FORM).map_err(backend)?;
    }
    if version < 5 {
        tx.execute_batch(&ddl::render(&[ddl::TOMBSTONES], Dialect::Sqlite)).map_err(backend)?;
    }
    if version < 6 {
        tx.execute_batch(&ddl::render(&[ddl::SEALED_IDS], Dialect::Sqlite)).map_err(backend)?;
    }
    if version < 7 {
        tx.execute_batch(&ddl::render(&[ddl::TEST_DEVICES], Dialect::Sqlite)).map_err(backend)?;
    }
    if version < 8 {
        tx.execute_batch(&ddl::render(&[ddl::IDENTITY_LINKS], Dialect::Sqlite)).map_err(backend)?;
    }
    if version < 9 {
        tx.execute_batch(&ddl::render(&[ddl::OLAP_OUTBOX], Dialect::Sqlite)).map_err(backend)?;
        tx.execute_batch(sql::FACT_EVENTS_EVENT).map_err(backend)?;
        tx.execute_batch(&olap_triggers()).map_err(backend)?;
    }
    if version < 10 {
        tx.execute_batch(&ddl::dashboard_tables(Dialect::Sqlite)).map_err(backend)?;
    }
    if version < 11 {
        // The report queue is written by the event insert itself (storage/sqlite/events.rs).
        tx.execute_batch("DROP TRIGGER IF EXISTS events_etl;").map_err(backend)?;
    }
    tx.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION};")).map_err(backend)?;
    tx.commit().map_err(backend)
}

/// Schema version 9: row triggers that note changed report rows in the OLAP outbox while a
/// ClickHouse is configured (`etl_state` key `olap`; ADR 0018).
fn olap_triggers() -> String {
    let mut sql = String::new();
    for (table, kind, key, deletes) in sql::OLAP_NOTED {
        let ops: &[(&str, &str)] = if *deletes {
            &[("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")]
        } else {
            &[("INSERT", "NEW"), ("UPDATE", "NEW")]
        };
        for (op, row) in ops {
            sql.push_str(&format!(
                "CREATE TRIGGER {table}_olap_{name} AFTER {op} ON {table}
    WHEN EXISTS (SELECT 1 FROM etl_state WHERE key = 'olap') BEGIN
    INSERT INTO olap_outbox (kind, app_id, key) VALUES ('{kind}', {row}.app_id, {row}.{key});
END;
",
                name = op.to_lowercase()
            ));
        }
    }
    for m in sql::OLAP_MIRRORED {
        for (op, row) in [("INSERT", "NEW."), ("UPDATE", "NEW."), ("DELETE", "OLD.")] {
            sql.push_str(&format!(
                "CREATE TRIGGER {table}_olap_{name} AFTER {op} ON {table}
    WHEN EXISTS (SELECT 1 FROM etl_state WHERE key = 'olap') BEGIN
    INSERT INTO olap_outbox (kind, app_id, key) VALUES ('{table}', '', {key});
END;
",
                table = m.table,
                key = m.key_json("json_array", row, ""),
                name = op.to_lowercase()
            ));
        }
    }
    sql
}

/// Tables and indexes of schema version 2: the attribution tables.
fn schema_v2() -> String {
    ddl::render(
        &[
            ddl::CAMPAIGNS,
            ddl::LINKS,
            ddl::LINK_AUDIT,
            ddl::CLICKS,
            ddl::INSTALLS,
            ddl::TOUCHPOINTS,
            ddl::REENGAGEMENTS,
            ddl::CONVERSIONS,
            ddl::POSTBACKS,
            ddl::POSTBACK_ATTEMPTS,
            ddl::FRAUD_ALERTS,
        ],
        Dialect::Sqlite,
    )
}

/// Tables, indexes and triggers of schema version 3: the report tables, filled from the rows
/// stored before.
fn schema_v3() -> String {
    [
        ETL_QUEUE,
        &ddl::render(&[ddl::ETL_STATE, ddl::DIM_DATE, ddl::DIM_CAMPAIGNS], Dialect::Sqlite),
        CAMPAIGNS_DIM,
        &ddl::render(&[ddl::DIM_USERS], Dialect::Sqlite),
        INSTALLS_DIM_USERS,
        &ddl::render(&[ddl::FACT_EVENTS, ddl::SESSIONS], Dialect::Sqlite),
        SESSIONS_USER,
        &ddl::render(&[ddl::CAMPAIGN_COSTS, ddl::ROLLUP_DIRTY], Dialect::Sqlite),
        DIRTY_TRIGGERS,
        &ddl::render(&[ddl::ROLLUP_DAILY, ddl::ROLLUP_CAMPAIGN_DAILY, ddl::ROLLUP_CONVERSIONS_DAILY], Dialect::Sqlite),
        BACKFILL,
    ]
    .join("\n")
}

/// Schema version 4: events' device ids in the form every device id is stored in
/// (`domain::records::device_id_form`: ASCII whitespace trimmed, ASCII letters lower-cased;
/// SQLite's `lower` is ASCII-only), so a deletion compares them exactly.
const DEVICE_ID_FORM: &str = "UPDATE events
    SET device_id = nullif(lower(trim(device_id, ' ' || char(9, 10, 12, 13))), '')
    WHERE device_id IS NOT NULL AND device_id IS NOT nullif(lower(trim(device_id, ' ' || char(9, 10, 12, 13))), '');";

/// The report queue: every new event, numbered by `rowid`. The trigger is schema 3's; schema 11
/// drops it (the event insert queues the event itself).
const ETL_QUEUE: &str = "CREATE TABLE etl_pending (
    seq INTEGER PRIMARY KEY,
    app_id TEXT NOT NULL,
    event_id TEXT NOT NULL
);
CREATE TRIGGER events_etl AFTER INSERT ON events BEGIN
    INSERT INTO etl_pending (app_id, event_id) VALUES (NEW.app_id, NEW.event_id);
END;";

const CAMPAIGNS_DIM: &str = "CREATE TRIGGER campaigns_dim AFTER INSERT ON campaigns BEGIN
    INSERT OR REPLACE INTO dim_campaigns (campaign_key, app_id, campaign_id, kind, name, network, created_at)
    VALUES (NEW.campaign_id, NEW.app_id, NEW.campaign_id, 'link', NEW.name, NEW.network, NEW.created_at);
END;";

const INSTALLS_DIM_USERS: &str =
    "CREATE TRIGGER installs_dim_users AFTER INSERT ON installs WHEN NEW.kind = 'install' BEGIN
    INSERT INTO dim_users (app_id, anonymous_id, first_seen, last_seen, install_ts, install_campaign_id)
    VALUES (NEW.app_id, NEW.anonymous_id, NEW.install_ts, NEW.install_ts, NEW.install_ts,
            CASE WHEN NEW.rejected = 0 THEN NEW.campaign_id END)
    ON CONFLICT (app_id, anonymous_id) DO UPDATE SET
        install_ts = min(coalesce(install_ts, excluded.install_ts), excluded.install_ts),
        install_campaign_id = coalesce(install_campaign_id, excluded.install_campaign_id),
        first_seen = min(first_seen, excluded.first_seen);
END;";

/// PostgreSQL's has `app_id` first.
const SESSIONS_USER: &str = "CREATE INDEX sessions_user ON sessions (anonymous_id, start_ts);";

/// A row trigger that marks the day (by `$ts`) of each new `$table` row dirty.
macro_rules! dirty_trigger {
    ($table:literal, $ts:literal) => {
        concat!(
            "CREATE TRIGGER ",
            $table,
            "_dirty AFTER INSERT ON ",
            $table,
            " BEGIN\n    INSERT OR IGNORE INTO rollup_dirty VALUES (NEW.app_id, ",
            day_key!($ts),
            ", '",
            $table,
            "');\nEND;\n"
        )
    };
}

const DIRTY_TRIGGERS: &str = concat!(
    dirty_trigger!("clicks", "NEW.ts"),
    dirty_trigger!("installs", "NEW.install_ts"),
    dirty_trigger!("conversions", "NEW.ts")
);

/// The report tables filled from the rows stored before version 3.
const BACKFILL: &str = concat!(
    "INSERT INTO etl_pending (app_id, event_id) SELECT app_id, event_id FROM events ORDER BY rowid;
INSERT OR IGNORE INTO dim_campaigns (campaign_key, app_id, campaign_id, kind, name, network, created_at)
    SELECT campaign_id, app_id, campaign_id, 'link', name, network, created_at FROM campaigns;
INSERT OR IGNORE INTO rollup_dirty SELECT DISTINCT app_id, ",
    day_key!("ts"),
    ", 'clicks' FROM clicks;
INSERT OR IGNORE INTO rollup_dirty SELECT DISTINCT app_id, ",
    day_key!("install_ts"),
    ", 'installs' FROM installs;
INSERT OR IGNORE INTO rollup_dirty SELECT DISTINCT app_id, ",
    day_key!("ts"),
    ", 'conversions' FROM conversions;
INSERT INTO dim_users (app_id, anonymous_id, first_seen, last_seen, install_ts, install_campaign_id)
    SELECT app_id, anonymous_id, min(install_ts), min(install_ts), min(install_ts),
           max(CASE WHEN rejected = 0 THEN campaign_id END)
      FROM installs WHERE kind = 'install' GROUP BY app_id, anonymous_id;"
);
