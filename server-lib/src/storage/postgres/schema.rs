//! The PostgreSQL store's tables: the migrations, applied in order under an advisory lock.
//! The tables both stores share are in [`ddl`]; what is PostgreSQL's own is here: the report
//! queue keyed by event, the PL/pgSQL triggers (the queue and the dirty days filled per
//! statement), one index, and the backfill of the report tables.

use std::collections::HashSet;

use crate::storage::ddl::{self, Dialect, day_key};
use crate::storage::{StorageError, backend, sql};

/// Migrations, applied in order inside one transaction under an advisory lock, so instances
/// starting together do not race.
fn migrations() -> [(i32, String); 12] {
    let shared = |tables: &[&str]| ddl::render(tables, Dialect::Postgres);
    [
        (1, shared(&[ddl::EVENTS, ddl::DELETION_AUDIT])),
        (2, shared(&[ddl::CAMPAIGNS, ddl::LINKS, ddl::LINK_AUDIT, ddl::CLICKS])),
        (3, shared(&[ddl::INSTALLS, ddl::TOUCHPOINTS, ddl::FRAUD_ALERTS, ddl::POSTBACKS])),
        (4, shared(&[ddl::REENGAGEMENTS, ddl::CONVERSIONS, ddl::POSTBACK_ATTEMPTS])),
        (5, report_tables()),
        (6, DEVICE_ID_FORM.to_owned()),
        (7, shared(&[ddl::TOMBSTONES])),
        (8, shared(&[ddl::SEALED_IDS])),
        (9, shared(&[ddl::TEST_DEVICES])),
        (10, shared(&[ddl::IDENTITY_LINKS])),
        (11, [shared(&[ddl::OLAP_OUTBOX]), sql::FACT_EVENTS_EVENT.to_owned(), olap_triggers()].join("\n")),
        (12, ddl::dashboard_tables(Dialect::Postgres)),
    ]
}

/// Schema version 11: row triggers that note changed report rows in the OLAP outbox while a
/// ClickHouse is configured (`etl_state` key `olap`; ADR 0018). One function for every table:
/// the entry kind and the key column are the trigger's arguments.
fn olap_triggers() -> String {
    let mut sql = String::from(
        "CREATE FUNCTION tm_olap_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE r jsonb;
BEGIN
    IF EXISTS (SELECT 1 FROM etl_state WHERE key = 'olap') THEN
        IF TG_OP = 'DELETE' THEN r := to_jsonb(OLD); ELSE r := to_jsonb(NEW); END IF;
        INSERT INTO olap_outbox (kind, app_id, key) VALUES (TG_ARGV[0], r ->> 'app_id', r ->> TG_ARGV[1]);
    END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION tm_olap_mirror() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE r jsonb; k jsonb := '[]'::jsonb;
BEGIN
    IF EXISTS (SELECT 1 FROM etl_state WHERE key = 'olap') THEN
        IF TG_OP = 'DELETE' THEN r := to_jsonb(OLD); ELSE r := to_jsonb(NEW); END IF;
        FOR i IN 0 .. TG_NARGS - 1 LOOP
            k := k || jsonb_build_array(r -> TG_ARGV[i]);
        END LOOP;
        INSERT INTO olap_outbox (kind, app_id, key) VALUES (TG_TABLE_NAME, '', k::text);
    END IF;
    RETURN NULL;
END $$;
",
    );
    for m in sql::OLAP_MIRRORED {
        let args: Vec<String> = m.key.iter().map(|(k, _)| format!("'{k}'")).collect();
        for op in ["INSERT", "UPDATE", "DELETE"] {
            sql.push_str(&format!(
                "CREATE TRIGGER {table}_olap_{name} AFTER {op} ON {table} FOR EACH ROW
    EXECUTE FUNCTION tm_olap_mirror({args});
",
                table = m.table,
                args = args.join(", "),
                name = op.to_lowercase()
            ));
        }
    }
    for (table, kind, key, deletes) in sql::OLAP_NOTED {
        let ops: &[&str] = if *deletes { &["INSERT", "UPDATE", "DELETE"] } else { &["INSERT", "UPDATE"] };
        for op in ops {
            sql.push_str(&format!(
                "CREATE TRIGGER {table}_olap_{name} AFTER {op} ON {table} FOR EACH ROW
    EXECUTE FUNCTION tm_olap_outbox('{kind}', '{key}');
",
                name = op.to_lowercase()
            ));
        }
    }
    sql
}

/// Schema version 6: events' device ids in the form every device id is stored in
/// (`domain::records::device_id_form`: ASCII whitespace trimmed, ASCII letters lower-cased;
/// `translate`, not `lower`, which would also fold non-ASCII letters).
const DEVICE_ID_FORM: &str = "UPDATE events
    SET device_id = nullif(translate(btrim(device_id, E' \\t\\n\\f\\r'), 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'), '')
    WHERE device_id IS DISTINCT FROM nullif(translate(btrim(device_id, E' \\t\\n\\f\\r'), 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'), '');";

/// Schema version 5: the report tables, filled from the rows stored before.
fn report_tables() -> String {
    let shared = |tables: &[&str]| ddl::render(tables, Dialect::Postgres);
    [
        ETL_QUEUE,
        &shared(&[ddl::ETL_STATE, ddl::DIM_DATE, ddl::DIM_CAMPAIGNS]),
        CAMPAIGNS_DIM,
        &shared(&[ddl::DIM_USERS]),
        INSTALLS_DIM_USERS,
        &shared(&[ddl::FACT_EVENTS, ddl::SESSIONS]),
        SESSIONS_USER,
        &shared(&[ddl::CAMPAIGN_COSTS, ddl::ROLLUP_DIRTY]),
        DIRTY_TRIGGERS,
        &shared(&[ddl::ROLLUP_DAILY, ddl::ROLLUP_CAMPAIGN_DAILY, ddl::ROLLUP_CONVERSIONS_DAILY]),
        BACKFILL,
    ]
    .join("\n")
}

/// The report queue: keyed by the event, filled per statement, numbered by `seq`.
const ETL_QUEUE: &str = "CREATE TABLE etl_pending (
    seq BIGSERIAL NOT NULL,
    app_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (app_id, event_id)
);
CREATE INDEX etl_pending_seq ON etl_pending (seq);
CREATE FUNCTION tm_events_etl() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO etl_pending (app_id, event_id) SELECT app_id, event_id FROM new_rows ORDER BY seq
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER events_etl AFTER INSERT ON events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tm_events_etl();";

const CAMPAIGNS_DIM: &str = "CREATE FUNCTION tm_campaigns_dim() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dim_campaigns (campaign_key, app_id, campaign_id, kind, name, network, created_at)
    VALUES (NEW.campaign_id, NEW.app_id, NEW.campaign_id, 'link', NEW.name, NEW.network, NEW.created_at)
    ON CONFLICT (campaign_key) DO UPDATE SET name = excluded.name, network = excluded.network;
    RETURN NULL;
END $$;
CREATE TRIGGER campaigns_dim AFTER INSERT ON campaigns FOR EACH ROW EXECUTE FUNCTION tm_campaigns_dim();";

const INSTALLS_DIM_USERS: &str = "CREATE FUNCTION tm_installs_dim_users() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dim_users (app_id, anonymous_id, first_seen, last_seen, install_ts, install_campaign_id)
    VALUES (NEW.app_id, NEW.anonymous_id, NEW.install_ts, NEW.install_ts, NEW.install_ts,
            CASE WHEN NOT NEW.rejected THEN NEW.campaign_id END)
    ON CONFLICT (app_id, anonymous_id) DO UPDATE SET
        install_ts = LEAST(coalesce(dim_users.install_ts, excluded.install_ts), excluded.install_ts),
        install_campaign_id = coalesce(dim_users.install_campaign_id, excluded.install_campaign_id),
        first_seen = LEAST(dim_users.first_seen, excluded.first_seen);
    RETURN NULL;
END $$;
CREATE TRIGGER installs_dim_users AFTER INSERT ON installs FOR EACH ROW WHEN (NEW.kind = 'install')
    EXECUTE FUNCTION tm_installs_dim_users();";

/// SQLite's leaves out `app_id`.
const SESSIONS_USER: &str = "CREATE INDEX sessions_user ON sessions (app_id, anonymous_id, start_ts);";

/// A statement-level trigger that marks the days of new `$table` rows (by `$ts`) dirty.
macro_rules! dirty_trigger {
    ($table:literal, $ts:literal) => {
        concat!(
            "CREATE FUNCTION tm_",
            $table,
            "_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rollup_dirty SELECT DISTINCT app_id, ",
            day_key!($ts),
            ", '",
            $table,
            "' FROM new_rows
        ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
CREATE TRIGGER ",
            $table,
            "_dirty AFTER INSERT ON ",
            $table,
            " REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION tm_",
            $table,
            "_dirty();\n"
        )
    };
}

const DIRTY_TRIGGERS: &str = concat!(
    dirty_trigger!("clicks", "ts"),
    dirty_trigger!("installs", "install_ts"),
    dirty_trigger!("conversions", "ts")
);

/// The report tables filled from the rows stored before version 5.
const BACKFILL: &str = concat!(
    "INSERT INTO etl_pending (app_id, event_id) SELECT app_id, event_id FROM events ORDER BY seq;
INSERT INTO dim_campaigns (campaign_key, app_id, campaign_id, kind, name, network, created_at)
    SELECT campaign_id, app_id, campaign_id, 'link', name, network, created_at FROM campaigns
    ON CONFLICT DO NOTHING;
INSERT INTO rollup_dirty SELECT DISTINCT app_id, ",
    day_key!("ts"),
    ", 'clicks' FROM clicks ON CONFLICT DO NOTHING;
INSERT INTO rollup_dirty SELECT DISTINCT app_id, ",
    day_key!("install_ts"),
    ", 'installs' FROM installs ON CONFLICT DO NOTHING;
INSERT INTO rollup_dirty SELECT DISTINCT app_id, ",
    day_key!("ts"),
    ", 'conversions' FROM conversions ON CONFLICT DO NOTHING;
INSERT INTO dim_users (app_id, anonymous_id, first_seen, last_seen, install_ts, install_campaign_id)
    SELECT app_id, anonymous_id, min(install_ts), min(install_ts), min(install_ts),
           max(CASE WHEN NOT rejected THEN campaign_id END)
      FROM installs WHERE kind = 'install' GROUP BY app_id, anonymous_id;"
);

/// Applies the migrations not applied yet, in one transaction, one migrator at a time.
pub(super) async fn migrate(client: &mut deadpool_postgres::Client) -> Result<(), StorageError> {
    let tx = client.transaction().await.map_err(backend)?;
    // One migrator at a time across instances.
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(1952543339);
         CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await
    .map_err(backend)?;
    let done: HashSet<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .await
        .map_err(backend)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (version, sql) in migrations() {
        if done.contains(&version) {
            continue;
        }
        tx.batch_execute(&sql).await.map_err(backend)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&version, &crate::domain::config::now_ms()],
        )
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)
}
