//! The PostgreSQL store's tables: the migrations, applied in order under an advisory lock.

use std::collections::HashSet;

use crate::storage::{StorageError, backend};

/// Floor division of a Unix-ms column by a day, in SQL.
macro_rules! day_sql {
    ($col:literal) => {
        concat!("((", $col, " - (((", $col, ") % 86400000) + 86400000) % 86400000) / 86400000)")
    };
}

/// A statement-level trigger that marks the days of new `$table` rows (by `$ts`) dirty.
macro_rules! dirty_trigger {
    ($table:literal, $ts:literal) => {
        concat!(
            "CREATE FUNCTION tm_",
            $table,
            "_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO rollup_dirty SELECT DISTINCT app_id, ",
            day_sql!($ts),
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

/// Migrations, applied in order inside one transaction under an advisory lock, so instances
/// starting together do not race.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE events (
         app_id TEXT NOT NULL,
         event_id TEXT NOT NULL,
         type TEXT NOT NULL,
         anonymous_id TEXT NOT NULL,
         user_id TEXT,
         device_id TEXT,
         session_id TEXT,
         client_ts BIGINT NOT NULL,
         corrected_ts BIGINT NOT NULL,
         received_at BIGINT NOT NULL,
         properties TEXT NOT NULL,
         context TEXT NOT NULL,
         enrichment TEXT NOT NULL,
         ip_enc BYTEA,
         seq BIGSERIAL,
         PRIMARY KEY (app_id, event_id)
     );
     CREATE INDEX events_anonymous_id ON events (anonymous_id);
     CREATE INDEX events_user_id ON events (user_id) WHERE user_id IS NOT NULL;
     CREATE INDEX events_device_id ON events (device_id) WHERE device_id IS NOT NULL;
     CREATE TABLE deletion_audit (
         receipt_id TEXT PRIMARY KEY,
         subject_kind TEXT NOT NULL,
         subject_hash TEXT NOT NULL,
         rows_deleted BIGINT NOT NULL,
         requested_at BIGINT NOT NULL,
         requested_by TEXT NOT NULL
     );",
    ),
    (
        2,
        "CREATE TABLE campaigns (
             campaign_id TEXT PRIMARY KEY,
             app_id TEXT NOT NULL,
             name TEXT NOT NULL,
             network TEXT NOT NULL,
             created_at BIGINT NOT NULL
         );
         CREATE TABLE links (
             link_id TEXT PRIMARY KEY,
             code TEXT NOT NULL UNIQUE,
             campaign_id TEXT NOT NULL REFERENCES campaigns (campaign_id),
             enabled BOOLEAN NOT NULL,
             record TEXT NOT NULL,
             updated_at BIGINT NOT NULL,
             seq BIGSERIAL
         );
         CREATE TABLE link_audit (
             id BIGSERIAL PRIMARY KEY,
             link_id TEXT NOT NULL,
             at BIGINT NOT NULL,
             actor TEXT NOT NULL,
             action TEXT NOT NULL,
             before TEXT,
             after TEXT NOT NULL
         );
         CREATE INDEX link_audit_link ON link_audit (link_id, id);
         CREATE TABLE clicks (
             click_id TEXT PRIMARY KEY,
             kind TEXT NOT NULL,
             app_id TEXT NOT NULL,
             link_id TEXT NOT NULL,
             campaign_id TEXT NOT NULL,
             ts BIGINT NOT NULL,
             ip_enc BYTEA,
             user_agent TEXT,
             referrer TEXT,
             accept_language TEXT,
             os TEXT,
             os_version TEXT,
             model TEXT,
             locale TEXT,
             timezone TEXT,
             screen TEXT,
             device_id TEXT,
             device_kind TEXT,
             network_ids TEXT NOT NULL,
             sub_params TEXT NOT NULL,
             flags SMALLINT NOT NULL,
             source TEXT NOT NULL,
             seq BIGSERIAL
         );
         CREATE INDEX clicks_ts ON clicks (ts);
         CREATE INDEX clicks_device ON clicks (device_id) WHERE device_id IS NOT NULL;",
    ),
    (
        3,
        "CREATE TABLE installs (
             app_id TEXT NOT NULL,
             event_id TEXT NOT NULL,
             anonymous_id TEXT NOT NULL,
             platform TEXT NOT NULL,
             idfa TEXT,
             idfv TEXT,
             gaid TEXT,
             android_id TEXT,
             install_ts BIGINT NOT NULL,
             received_at BIGINT NOT NULL,
             kind TEXT NOT NULL,
             match_type TEXT NOT NULL,
             campaign_id TEXT,
             link_id TEXT,
             click_id TEXT,
             network TEXT,
             rejected BOOLEAN NOT NULL,
             result TEXT NOT NULL,
             audit TEXT NOT NULL,
             ip_enc BYTEA,
             PRIMARY KEY (app_id, event_id)
         );
         CREATE INDEX installs_event ON installs (event_id);
         CREATE INDEX installs_anonymous_id ON installs (app_id, anonymous_id);
         CREATE INDEX installs_idfa ON installs (app_id, idfa) WHERE idfa IS NOT NULL;
         CREATE INDEX installs_idfv ON installs (app_id, idfv) WHERE idfv IS NOT NULL;
         CREATE INDEX installs_gaid ON installs (app_id, gaid) WHERE gaid IS NOT NULL;
         CREATE INDEX installs_android_id ON installs (app_id, android_id) WHERE android_id IS NOT NULL;
         CREATE INDEX installs_campaign ON installs (campaign_id, install_ts) WHERE campaign_id IS NOT NULL;
         CREATE TABLE touchpoints (
             id BIGSERIAL PRIMARY KEY,
             app_id TEXT NOT NULL,
             anonymous_id TEXT NOT NULL,
             ts BIGINT NOT NULL,
             click_id TEXT NOT NULL,
             link_id TEXT NOT NULL,
             campaign_id TEXT NOT NULL,
             network TEXT NOT NULL,
             kind TEXT NOT NULL,
             source_event_id TEXT NOT NULL,
             UNIQUE (app_id, anonymous_id, click_id, kind)
         );
         CREATE INDEX touchpoints_device ON touchpoints (app_id, anonymous_id, ts);
         CREATE TABLE fraud_alerts (
             id BIGSERIAL PRIMARY KEY,
             rule TEXT NOT NULL,
             app_id TEXT NOT NULL,
             campaign_id TEXT NOT NULL,
             at BIGINT NOT NULL,
             detail TEXT NOT NULL
         );
         CREATE TABLE postbacks (
             id BIGSERIAL PRIMARY KEY,
             app_id TEXT NOT NULL,
             anonymous_id TEXT NOT NULL,
             event_id TEXT NOT NULL,
             network TEXT NOT NULL,
             event TEXT NOT NULL,
             url TEXT NOT NULL,
             state TEXT NOT NULL,
             attempts INTEGER NOT NULL,
             last_status INTEGER,
             last_error TEXT,
             created_at BIGINT NOT NULL,
             updated_at BIGINT NOT NULL
         );
         CREATE INDEX postbacks_pending ON postbacks (state) WHERE state = 'pending';
         CREATE INDEX postbacks_anonymous_id ON postbacks (app_id, anonymous_id);",
    ),
    (
        4,
        "CREATE TABLE reengagements (
             app_id TEXT NOT NULL,
             event_id TEXT NOT NULL,
             anonymous_id TEXT NOT NULL,
             click_id TEXT NOT NULL,
             link_id TEXT NOT NULL,
             campaign_id TEXT NOT NULL,
             network TEXT NOT NULL,
             click_ts BIGINT NOT NULL,
             open_ts BIGINT NOT NULL,
             inactive_ms BIGINT,
             PRIMARY KEY (app_id, event_id)
         );
         CREATE INDEX reengagements_anonymous_id ON reengagements (app_id, anonymous_id);
         CREATE TABLE conversions (
             app_id TEXT NOT NULL,
             event_id TEXT NOT NULL,
             model TEXT NOT NULL,
             click_id TEXT NOT NULL,
             anonymous_id TEXT NOT NULL,
             user_id TEXT,
             event_type TEXT NOT NULL,
             ts BIGINT NOT NULL,
             link_id TEXT,
             campaign_id TEXT,
             network TEXT,
             touch_ts BIGINT,
             credit DOUBLE PRECISION NOT NULL,
             revenue DOUBLE PRECISION,
             currency TEXT,
             PRIMARY KEY (app_id, event_id, model, click_id)
         );
         CREATE INDEX conversions_anonymous_id ON conversions (app_id, anonymous_id);
         CREATE INDEX conversions_user_id ON conversions (user_id) WHERE user_id IS NOT NULL;
         CREATE INDEX conversions_campaign ON conversions (campaign_id, model, ts);
         CREATE TABLE postback_attempts (
             id BIGSERIAL PRIMARY KEY,
             postback_id BIGINT NOT NULL,
             app_id TEXT NOT NULL,
             anonymous_id TEXT NOT NULL,
             attempt INTEGER NOT NULL,
             status INTEGER,
             error TEXT,
             duration_ms BIGINT NOT NULL,
             at BIGINT NOT NULL
         );
         CREATE INDEX postback_attempts_anonymous_id ON postback_attempts (app_id, anonymous_id);",
    ),
    (5, REPORT_TABLES),
];

/// Schema version 5: the report tables.
const REPORT_TABLES: &str = concat!(
    "CREATE TABLE etl_pending (
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
         FOR EACH STATEMENT EXECUTE FUNCTION tm_events_etl();
     CREATE TABLE etl_state (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
     CREATE TABLE dim_date (
         date_key BIGINT PRIMARY KEY,
         date TEXT NOT NULL,
         year INTEGER NOT NULL,
         month INTEGER NOT NULL,
         day INTEGER NOT NULL,
         weekday INTEGER NOT NULL,
         iso_week INTEGER NOT NULL
     );
     CREATE TABLE dim_campaigns (
         campaign_key TEXT PRIMARY KEY,
         app_id TEXT NOT NULL,
         campaign_id TEXT,
         kind TEXT NOT NULL,
         name TEXT NOT NULL,
         network TEXT NOT NULL,
         created_at BIGINT NOT NULL
     );
     CREATE FUNCTION tm_campaigns_dim() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
         INSERT INTO dim_campaigns (campaign_key, app_id, campaign_id, kind, name, network, created_at)
         VALUES (NEW.campaign_id, NEW.app_id, NEW.campaign_id, 'link', NEW.name, NEW.network, NEW.created_at)
         ON CONFLICT (campaign_key) DO UPDATE SET name = excluded.name, network = excluded.network;
         RETURN NULL;
     END $$;
     CREATE TRIGGER campaigns_dim AFTER INSERT ON campaigns FOR EACH ROW EXECUTE FUNCTION tm_campaigns_dim();
     CREATE TABLE dim_users (
         app_id TEXT NOT NULL,
         anonymous_id TEXT NOT NULL,
         user_id TEXT,
         first_seen BIGINT NOT NULL,
         last_seen BIGINT NOT NULL,
         events BIGINT NOT NULL DEFAULT 0,
         install_ts BIGINT,
         install_campaign_id TEXT,
         utm_campaign_key TEXT,
         PRIMARY KEY (app_id, anonymous_id)
     );
     CREATE INDEX dim_users_user_id ON dim_users (user_id) WHERE user_id IS NOT NULL;
     CREATE INDEX dim_users_anonymous_id ON dim_users (anonymous_id);
     CREATE FUNCTION tm_installs_dim_users() RETURNS trigger LANGUAGE plpgsql AS $$
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
         EXECUTE FUNCTION tm_installs_dim_users();
     CREATE TABLE fact_events (
         seq BIGSERIAL PRIMARY KEY,
         app_id TEXT NOT NULL,
         event_id TEXT NOT NULL,
         date_key BIGINT NOT NULL,
         ts BIGINT NOT NULL,
         event_type TEXT NOT NULL,
         anonymous_id TEXT NOT NULL,
         user_id TEXT,
         session_key TEXT NOT NULL,
         revenue DOUBLE PRECISION,
         currency TEXT
     );
     CREATE INDEX fact_events_user ON fact_events (anonymous_id, ts);
     CREATE INDEX fact_events_type ON fact_events (app_id, event_type, ts);
     CREATE INDEX fact_events_date ON fact_events (date_key, app_id);
     CREATE INDEX fact_events_session ON fact_events (app_id, session_key);
     CREATE INDEX fact_events_user_id ON fact_events (user_id) WHERE user_id IS NOT NULL;
     CREATE TABLE sessions (
         app_id TEXT NOT NULL,
         session_key TEXT NOT NULL,
         anonymous_id TEXT NOT NULL,
         user_id TEXT,
         start_ts BIGINT NOT NULL,
         end_ts BIGINT NOT NULL,
         events BIGINT NOT NULL,
         PRIMARY KEY (app_id, session_key)
     );
     CREATE INDEX sessions_user ON sessions (app_id, anonymous_id, start_ts);
     CREATE INDEX sessions_user_id ON sessions (user_id) WHERE user_id IS NOT NULL;
     CREATE TABLE campaign_costs (
         campaign_id TEXT NOT NULL,
         app_id TEXT NOT NULL,
         date_key BIGINT NOT NULL,
         amount DOUBLE PRECISION NOT NULL,
         currency TEXT NOT NULL,
         updated_at BIGINT NOT NULL,
         PRIMARY KEY (campaign_id, date_key)
     );
     CREATE TABLE rollup_dirty (
         app_id TEXT NOT NULL,
         date_key BIGINT NOT NULL,
         source TEXT NOT NULL,
         PRIMARY KEY (app_id, date_key, source)
     );",
    dirty_trigger!("clicks", "ts"),
    dirty_trigger!("installs", "install_ts"),
    dirty_trigger!("conversions", "ts"),
    "
     CREATE TABLE rollup_daily (
         app_id TEXT NOT NULL,
         date_key BIGINT NOT NULL,
         campaign_key TEXT NOT NULL,
         event_type TEXT NOT NULL,
         events BIGINT NOT NULL,
         users BIGINT NOT NULL,
         revenue DOUBLE PRECISION NOT NULL,
         PRIMARY KEY (app_id, date_key, campaign_key, event_type)
     );
     CREATE TABLE rollup_campaign_daily (
         app_id TEXT NOT NULL,
         date_key BIGINT NOT NULL,
         campaign_id TEXT NOT NULL,
         impressions BIGINT NOT NULL DEFAULT 0,
         clicks BIGINT NOT NULL DEFAULT 0,
         installs BIGINT NOT NULL DEFAULT 0,
         rejected_installs BIGINT NOT NULL DEFAULT 0,
         PRIMARY KEY (app_id, date_key, campaign_id)
     );
     CREATE TABLE rollup_conversions_daily (
         app_id TEXT NOT NULL,
         date_key BIGINT NOT NULL,
         campaign_id TEXT NOT NULL,
         model TEXT NOT NULL,
         conversions DOUBLE PRECISION NOT NULL,
         revenue DOUBLE PRECISION NOT NULL,
         PRIMARY KEY (app_id, date_key, campaign_id, model)
     );
     INSERT INTO etl_pending (app_id, event_id) SELECT app_id, event_id FROM events ORDER BY seq;
     INSERT INTO dim_campaigns (campaign_key, app_id, campaign_id, kind, name, network, created_at)
         SELECT campaign_id, app_id, campaign_id, 'link', name, network, created_at FROM campaigns
         ON CONFLICT DO NOTHING;
     INSERT INTO rollup_dirty SELECT DISTINCT app_id, ",
    day_sql!("ts"),
    ", 'clicks' FROM clicks ON CONFLICT DO NOTHING;
     INSERT INTO rollup_dirty SELECT DISTINCT app_id, ",
    day_sql!("install_ts"),
    ", 'installs' FROM installs ON CONFLICT DO NOTHING;
     INSERT INTO rollup_dirty SELECT DISTINCT app_id, ",
    day_sql!("ts"),
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
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await.map_err(backend)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[version, &crate::domain::config::now_ms()],
        )
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)
}
