//! The SQLite store's tables: the migrations up to schema version 3 (`PRAGMA user_version`).

use rusqlite::Connection;

use crate::storage::{StorageError, backend};

const SCHEMA_VERSION: i64 = 3;

pub(super) fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(backend)?;
    if version > SCHEMA_VERSION {
        return Err(StorageError::Backend(format!("schema version {version} is newer than {SCHEMA_VERSION}")));
    }
    let tx = conn.transaction().map_err(backend)?;
    if version < 1 {
        tx.execute_batch(
            "CREATE TABLE events (
                 app_id TEXT NOT NULL,
                 event_id TEXT NOT NULL,
                 type TEXT NOT NULL,
                 anonymous_id TEXT NOT NULL,
                 user_id TEXT,
                 device_id TEXT,
                 session_id TEXT,
                 client_ts INTEGER NOT NULL,
                 corrected_ts INTEGER NOT NULL,
                 received_at INTEGER NOT NULL,
                 properties TEXT NOT NULL,
                 context TEXT NOT NULL,
                 enrichment TEXT NOT NULL,
                 ip_enc BLOB,
                 PRIMARY KEY (app_id, event_id)
             );
             CREATE INDEX events_anonymous_id ON events (anonymous_id);
             CREATE INDEX events_user_id ON events (user_id) WHERE user_id IS NOT NULL;
             CREATE INDEX events_device_id ON events (device_id) WHERE device_id IS NOT NULL;
             CREATE TABLE deletion_audit (
                 receipt_id TEXT PRIMARY KEY,
                 subject_kind TEXT NOT NULL,
                 subject_hash TEXT NOT NULL,
                 rows_deleted INTEGER NOT NULL,
                 requested_at INTEGER NOT NULL,
                 requested_by TEXT NOT NULL
             );",
        )
        .map_err(backend)?;
    }
    if version < 2 {
        tx.execute_batch(SCHEMA_V2).map_err(backend)?;
    }
    if version < 3 {
        tx.execute_batch(SCHEMA_V3).map_err(backend)?;
    }
    tx.execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION};")).map_err(backend)?;
    tx.commit().map_err(backend)
}

/// Tables and indexes of schema version 2: the attribution tables.
const SCHEMA_V2: &str = "
CREATE TABLE campaigns (
    campaign_id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    name TEXT NOT NULL,
    network TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE links (
    link_id TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    campaign_id TEXT NOT NULL REFERENCES campaigns (campaign_id),
    enabled INTEGER NOT NULL,
    record TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE link_audit (
    id INTEGER PRIMARY KEY,
    link_id TEXT NOT NULL,
    at INTEGER NOT NULL,
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
    ts INTEGER NOT NULL,
    ip_enc BLOB,
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
    flags INTEGER NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX clicks_ts ON clicks (ts);
CREATE INDEX clicks_device ON clicks (device_id) WHERE device_id IS NOT NULL;
CREATE TABLE installs (
    app_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    platform TEXT NOT NULL,
    idfa TEXT,
    idfv TEXT,
    gaid TEXT,
    android_id TEXT,
    install_ts INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    match_type TEXT NOT NULL,
    campaign_id TEXT,
    link_id TEXT,
    click_id TEXT,
    network TEXT,
    rejected INTEGER NOT NULL,
    result TEXT NOT NULL,
    audit TEXT NOT NULL,
    ip_enc BLOB,
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
    id INTEGER PRIMARY KEY,
    app_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    click_id TEXT NOT NULL,
    link_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    network TEXT NOT NULL,
    kind TEXT NOT NULL,
    source_event_id TEXT NOT NULL,
    UNIQUE (app_id, anonymous_id, click_id, kind)
);
CREATE INDEX touchpoints_device ON touchpoints (app_id, anonymous_id, ts);
CREATE TABLE reengagements (
    app_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    click_id TEXT NOT NULL,
    link_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    network TEXT NOT NULL,
    click_ts INTEGER NOT NULL,
    open_ts INTEGER NOT NULL,
    inactive_ms INTEGER,
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
    ts INTEGER NOT NULL,
    link_id TEXT,
    campaign_id TEXT,
    network TEXT,
    touch_ts INTEGER,
    credit REAL NOT NULL,
    revenue REAL,
    currency TEXT,
    PRIMARY KEY (app_id, event_id, model, click_id)
);
CREATE INDEX conversions_anonymous_id ON conversions (app_id, anonymous_id);
CREATE INDEX conversions_user_id ON conversions (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX conversions_campaign ON conversions (campaign_id, model, ts);
CREATE TABLE postbacks (
    id INTEGER PRIMARY KEY,
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
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX postbacks_pending ON postbacks (state) WHERE state = 'pending';
CREATE INDEX postbacks_anonymous_id ON postbacks (app_id, anonymous_id);
CREATE TABLE postback_attempts (
    id INTEGER PRIMARY KEY,
    postback_id INTEGER NOT NULL,
    app_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX postback_attempts_anonymous_id ON postback_attempts (app_id, anonymous_id);
CREATE TABLE fraud_alerts (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL,
    app_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    detail TEXT NOT NULL
);
";

/// Tables, indexes and triggers of schema version 3.
const SCHEMA_V3: &str = "
CREATE TABLE etl_pending (
    seq INTEGER PRIMARY KEY,
    app_id TEXT NOT NULL,
    event_id TEXT NOT NULL
);
CREATE TRIGGER events_etl AFTER INSERT ON events BEGIN
    INSERT INTO etl_pending (app_id, event_id) VALUES (NEW.app_id, NEW.event_id);
END;
CREATE TABLE etl_state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE dim_date (
    date_key INTEGER PRIMARY KEY,
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
    created_at INTEGER NOT NULL
);
CREATE TRIGGER campaigns_dim AFTER INSERT ON campaigns BEGIN
    INSERT OR REPLACE INTO dim_campaigns (campaign_key, app_id, campaign_id, kind, name, network, created_at)
    VALUES (NEW.campaign_id, NEW.app_id, NEW.campaign_id, 'link', NEW.name, NEW.network, NEW.created_at);
END;
CREATE TABLE dim_users (
    app_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    user_id TEXT,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    events INTEGER NOT NULL DEFAULT 0,
    install_ts INTEGER,
    install_campaign_id TEXT,
    utm_campaign_key TEXT,
    PRIMARY KEY (app_id, anonymous_id)
);
CREATE INDEX dim_users_user_id ON dim_users (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX dim_users_anonymous_id ON dim_users (anonymous_id);
CREATE TRIGGER installs_dim_users AFTER INSERT ON installs WHEN NEW.kind = 'install' BEGIN
    INSERT INTO dim_users (app_id, anonymous_id, first_seen, last_seen, install_ts, install_campaign_id)
    VALUES (NEW.app_id, NEW.anonymous_id, NEW.install_ts, NEW.install_ts, NEW.install_ts,
            CASE WHEN NEW.rejected = 0 THEN NEW.campaign_id END)
    ON CONFLICT (app_id, anonymous_id) DO UPDATE SET
        install_ts = min(coalesce(install_ts, excluded.install_ts), excluded.install_ts),
        install_campaign_id = coalesce(install_campaign_id, excluded.install_campaign_id),
        first_seen = min(first_seen, excluded.first_seen);
END;
CREATE TABLE fact_events (
    app_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    date_key INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    user_id TEXT,
    session_key TEXT NOT NULL,
    revenue REAL,
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
    start_ts INTEGER NOT NULL,
    end_ts INTEGER NOT NULL,
    events INTEGER NOT NULL,
    PRIMARY KEY (app_id, session_key)
);
CREATE INDEX sessions_user ON sessions (anonymous_id, start_ts);
CREATE INDEX sessions_user_id ON sessions (user_id) WHERE user_id IS NOT NULL;
CREATE TABLE campaign_costs (
    campaign_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    date_key INTEGER NOT NULL,
    amount REAL NOT NULL,
    currency TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (campaign_id, date_key)
);
CREATE TABLE rollup_dirty (
    app_id TEXT NOT NULL,
    date_key INTEGER NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (app_id, date_key, source)
) WITHOUT ROWID;
CREATE TRIGGER clicks_dirty AFTER INSERT ON clicks BEGIN
    INSERT OR IGNORE INTO rollup_dirty VALUES (NEW.app_id, ((NEW.ts - (((NEW.ts) % 86400000) + 86400000) % 86400000) / 86400000), 'clicks');
END;
CREATE TRIGGER installs_dirty AFTER INSERT ON installs BEGIN
    INSERT OR IGNORE INTO rollup_dirty VALUES (NEW.app_id, ((NEW.install_ts - (((NEW.install_ts) % 86400000) + 86400000) % 86400000) / 86400000), 'installs');
END;
CREATE TRIGGER conversions_dirty AFTER INSERT ON conversions BEGIN
    INSERT OR IGNORE INTO rollup_dirty VALUES (NEW.app_id, ((NEW.ts - (((NEW.ts) % 86400000) + 86400000) % 86400000) / 86400000), 'conversions');
END;
CREATE TABLE rollup_daily (
    app_id TEXT NOT NULL,
    date_key INTEGER NOT NULL,
    campaign_key TEXT NOT NULL,
    event_type TEXT NOT NULL,
    events INTEGER NOT NULL,
    users INTEGER NOT NULL,
    revenue REAL NOT NULL,
    PRIMARY KEY (app_id, date_key, campaign_key, event_type)
);
CREATE TABLE rollup_campaign_daily (
    app_id TEXT NOT NULL,
    date_key INTEGER NOT NULL,
    campaign_id TEXT NOT NULL,
    impressions INTEGER NOT NULL DEFAULT 0,
    clicks INTEGER NOT NULL DEFAULT 0,
    installs INTEGER NOT NULL DEFAULT 0,
    rejected_installs INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, date_key, campaign_id)
);
CREATE TABLE rollup_conversions_daily (
    app_id TEXT NOT NULL,
    date_key INTEGER NOT NULL,
    campaign_id TEXT NOT NULL,
    model TEXT NOT NULL,
    conversions REAL NOT NULL,
    revenue REAL NOT NULL,
    PRIMARY KEY (app_id, date_key, campaign_id, model)
);
INSERT INTO etl_pending (app_id, event_id) SELECT app_id, event_id FROM events ORDER BY rowid;
INSERT OR IGNORE INTO dim_campaigns (campaign_key, app_id, campaign_id, kind, name, network, created_at)
    SELECT campaign_id, app_id, campaign_id, 'link', name, network, created_at FROM campaigns;
INSERT OR IGNORE INTO rollup_dirty SELECT DISTINCT app_id, ((ts - (((ts) % 86400000) + 86400000) % 86400000) / 86400000), 'clicks' FROM clicks;
INSERT OR IGNORE INTO rollup_dirty SELECT DISTINCT app_id, ((install_ts - (((install_ts) % 86400000) + 86400000) % 86400000) / 86400000), 'installs' FROM installs;
INSERT OR IGNORE INTO rollup_dirty SELECT DISTINCT app_id, ((ts - (((ts) % 86400000) + 86400000) % 86400000) / 86400000), 'conversions' FROM conversions;
INSERT INTO dim_users (app_id, anonymous_id, first_seen, last_seen, install_ts, install_campaign_id)
    SELECT app_id, anonymous_id, min(install_ts), min(install_ts), min(install_ts),
           max(CASE WHEN rejected = 0 THEN campaign_id END)
      FROM installs WHERE kind = 'install' GROUP BY app_id, anonymous_id;
";
