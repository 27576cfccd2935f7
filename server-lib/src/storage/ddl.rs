//! The tables both stores create, written once.
//!
//! A table (with its indexes) that is the same in both stores but for its column types is
//! written here with type tokens, which [`render`] replaces with each dialect's types:
//!
//! | token             | SQLite                | PostgreSQL                          |
//! |-------------------|-----------------------|-------------------------------------|
//! | `{i64}`           | `INTEGER`             | `BIGINT`                            |
//! | `{i16}`           | `INTEGER`             | `SMALLINT`                          |
//! | `{bool}`          | `INTEGER`             | `BOOLEAN`                           |
//! | `{f64}`           | `REAL`                | `DOUBLE PRECISION`                  |
//! | `{bytes}`         | `BLOB`                | `BYTEA`                             |
//! | `{id}`            | `INTEGER PRIMARY KEY` | `BIGSERIAL PRIMARY KEY`             |
//! | `{seq}`           | (nothing: `rowid`)    | `, seq BIGSERIAL` (insertion order) |
//! | `{seq_key}`       | (nothing: `rowid`)    | `seq BIGSERIAL PRIMARY KEY,`        |
//! | `{without_rowid}` | `WITHOUT ROWID`       | (nothing)                           |
//!
//! (`INTEGER` and `TEXT` columns are `INTEGER` and `TEXT` in both.) What truly differs stays
//! in each store's `schema.rs`: the report queue `etl_pending` (SQLite numbers it by `rowid`
//! and empties it by range; PostgreSQL keys it by event and removes entries by their own
//! numbers, as concurrent transactions may commit out of order), the triggers (SQLite's
//! `BEGIN … END` row triggers; PostgreSQL's PL/pgSQL functions, the queue and the dirty days
//! filled per statement), the index `sessions_user` (SQLite's leaves out `app_id`), and the
//! backfills that fill the report tables from existing rows (`INSERT OR IGNORE` against
//! `ON CONFLICT DO NOTHING`, `rowid` against `seq`, `rejected = 0` against `NOT rejected`).

/// Which store's SQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// `tables` in `dialect`, one after another.
pub fn render(tables: &[&str], dialect: Dialect) -> String {
    let tokens: &[(&str, &str)] = match dialect {
        Dialect::Sqlite => &[
            ("{i64}", "INTEGER"),
            ("{i16}", "INTEGER"),
            ("{bool}", "INTEGER"),
            ("{f64}", "REAL"),
            ("{bytes}", "BLOB"),
            ("{id}", "INTEGER PRIMARY KEY"),
            ("{seq}", ""),
            ("{seq_key}", ""),
            ("{without_rowid}", " WITHOUT ROWID"),
        ],
        Dialect::Postgres => &[
            ("{i64}", "BIGINT"),
            ("{i16}", "SMALLINT"),
            ("{bool}", "BOOLEAN"),
            ("{f64}", "DOUBLE PRECISION"),
            ("{bytes}", "BYTEA"),
            ("{id}", "BIGSERIAL PRIMARY KEY"),
            ("{seq}", ",\n    seq BIGSERIAL"),
            ("{seq_key}", "seq BIGSERIAL PRIMARY KEY,\n    "),
            ("{without_rowid}", ""),
        ],
    };
    let mut sql = tables.join("\n");
    for (token, text) in tokens {
        sql = sql.replace(token, text);
    }
    debug_assert!(!sql.contains('{'), "a token without a type: {sql}");
    sql
}

/// Floor division of a Unix-ms column (or expression) by a day, in SQL: the UTC day key. The
/// same expression in both dialects (their `/` and `%` truncate toward zero).
macro_rules! day_key {
    ($ms:literal) => {
        concat!("((", $ms, " - (((", $ms, ") % 86400000) + 86400000) % 86400000) / 86400000)")
    };
}
pub(crate) use day_key;

// ---------------------------------------------------------------------------------------------
// Events (schema version 1 in both stores).

pub const EVENTS: &str = "CREATE TABLE events (
    app_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    user_id TEXT,
    device_id TEXT,
    session_id TEXT,
    client_ts {i64} NOT NULL,
    corrected_ts {i64} NOT NULL,
    received_at {i64} NOT NULL,
    properties TEXT NOT NULL,
    context TEXT NOT NULL,
    enrichment TEXT NOT NULL,
    ip_enc {bytes}{seq},
    PRIMARY KEY (app_id, event_id)
);
CREATE INDEX events_anonymous_id ON events (anonymous_id);
CREATE INDEX events_user_id ON events (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX events_device_id ON events (device_id) WHERE device_id IS NOT NULL;";

pub const DELETION_AUDIT: &str = "CREATE TABLE deletion_audit (
    receipt_id TEXT PRIMARY KEY,
    subject_kind TEXT NOT NULL,
    subject_hash TEXT NOT NULL,
    rows_deleted {i64} NOT NULL,
    requested_at {i64} NOT NULL,
    requested_by TEXT NOT NULL
);";

/// What keeps deleted data deleted (`domain::privacy`): keyed hashes of deleted events, and
/// of deleted people's identifiers with the deletion that suppressed them.
pub const TOMBSTONES: &str = "CREATE TABLE tombstones (
    app_id TEXT NOT NULL,
    event_hash TEXT NOT NULL,
    deleted_at {i64} NOT NULL,
    PRIMARY KEY (app_id, event_hash)
){without_rowid};
CREATE TABLE suppressions (
    id_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    receipt_id TEXT NOT NULL,
    created_at {i64} NOT NULL
);
CREATE INDEX suppressions_receipt ON suppressions (receipt_id);";

// ---------------------------------------------------------------------------------------------
// Attribution.

pub const CAMPAIGNS: &str = "CREATE TABLE campaigns (
    campaign_id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    name TEXT NOT NULL,
    network TEXT NOT NULL,
    created_at {i64} NOT NULL
);";

pub const LINKS: &str = "CREATE TABLE links (
    link_id TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    campaign_id TEXT NOT NULL REFERENCES campaigns (campaign_id),
    enabled {bool} NOT NULL,
    record TEXT NOT NULL,
    updated_at {i64} NOT NULL{seq}
);";

pub const LINK_AUDIT: &str = "CREATE TABLE link_audit (
    id {id},
    link_id TEXT NOT NULL,
    at {i64} NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    before TEXT,
    after TEXT NOT NULL
);
CREATE INDEX link_audit_link ON link_audit (link_id, id);";

pub const CLICKS: &str = "CREATE TABLE clicks (
    click_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    app_id TEXT NOT NULL,
    link_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    ts {i64} NOT NULL,
    ip_enc {bytes},
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
    flags {i16} NOT NULL,
    source TEXT NOT NULL{seq}
);
CREATE INDEX clicks_ts ON clicks (ts);
CREATE INDEX clicks_device ON clicks (device_id) WHERE device_id IS NOT NULL;";

/// Schema change of issue 20: the sealed raw identifiers next to their keyed hashes
/// (`domain::identifiers`). Added by migration (SQLite 6, PostgreSQL 8) to every database,
/// new ones included.
pub const SEALED_IDS: &str = "ALTER TABLE events ADD COLUMN ids_enc {bytes};
ALTER TABLE installs ADD COLUMN ids_enc {bytes};
ALTER TABLE clicks ADD COLUMN device_enc {bytes};";

/// Test devices (issue 21): installs from them are attributed afresh every time. The device id
/// in its stored form (a keyed hash), the raw id sealed for the admin list.
pub const TEST_DEVICES: &str = "CREATE TABLE test_devices (
    device_id TEXT PRIMARY KEY,
    label TEXT NOT NULL,
    device_enc {bytes},
    created_at {i64} NOT NULL
);";

/// The identity map (issue 21): `alias` events link a previous user id to the user id it
/// became. Kept flat (every alias names the final user id, never another alias), so one lookup
/// resolves a person. Both ids in their stored form (keyed hashes).
pub const IDENTITY_LINKS: &str = "CREATE TABLE identity_links (
    app_id TEXT NOT NULL,
    alias_user_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    created_at {i64} NOT NULL,
    PRIMARY KEY (app_id, alias_user_id)
);
CREATE INDEX identity_links_user ON identity_links (app_id, user_id);";

/// The OLAP outbox (ADR 0018): which report rows changed since the ClickHouse loader last
/// took them — `fact` (key: event id), `user` (anonymous id), `session` (session key), filled by
/// triggers — and what it must erase there: `erase` (an anonymous id of the app), `erase_user`
/// (a user id, any app), `purge` (facts of days before the key). Written only while
/// `etl_state` holds the key `olap` (a ClickHouse is configured); the loader removes entries
/// by their numbers once loaded.
pub const OLAP_OUTBOX: &str = "CREATE TABLE olap_outbox (
    seq {id},
    kind TEXT NOT NULL,
    app_id TEXT NOT NULL,
    key TEXT NOT NULL
);";

pub const INSTALLS: &str = "CREATE TABLE installs (
    app_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    platform TEXT NOT NULL,
    idfa TEXT,
    idfv TEXT,
    gaid TEXT,
    android_id TEXT,
    install_ts {i64} NOT NULL,
    received_at {i64} NOT NULL,
    kind TEXT NOT NULL,
    match_type TEXT NOT NULL,
    campaign_id TEXT,
    link_id TEXT,
    click_id TEXT,
    network TEXT,
    rejected {bool} NOT NULL,
    result TEXT NOT NULL,
    audit TEXT NOT NULL,
    ip_enc {bytes},
    PRIMARY KEY (app_id, event_id)
);
CREATE INDEX installs_event ON installs (event_id);
CREATE INDEX installs_anonymous_id ON installs (app_id, anonymous_id);
CREATE INDEX installs_idfa ON installs (app_id, idfa) WHERE idfa IS NOT NULL;
CREATE INDEX installs_idfv ON installs (app_id, idfv) WHERE idfv IS NOT NULL;
CREATE INDEX installs_gaid ON installs (app_id, gaid) WHERE gaid IS NOT NULL;
CREATE INDEX installs_android_id ON installs (app_id, android_id) WHERE android_id IS NOT NULL;
CREATE INDEX installs_campaign ON installs (campaign_id, install_ts) WHERE campaign_id IS NOT NULL;";

pub const TOUCHPOINTS: &str = "CREATE TABLE touchpoints (
    id {id},
    app_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    ts {i64} NOT NULL,
    click_id TEXT NOT NULL,
    link_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    network TEXT NOT NULL,
    kind TEXT NOT NULL,
    source_event_id TEXT NOT NULL,
    UNIQUE (app_id, anonymous_id, click_id, kind)
);
CREATE INDEX touchpoints_device ON touchpoints (app_id, anonymous_id, ts);";

pub const REENGAGEMENTS: &str = "CREATE TABLE reengagements (
    app_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    click_id TEXT NOT NULL,
    link_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    network TEXT NOT NULL,
    click_ts {i64} NOT NULL,
    open_ts {i64} NOT NULL,
    inactive_ms {i64},
    PRIMARY KEY (app_id, event_id)
);
CREATE INDEX reengagements_anonymous_id ON reengagements (app_id, anonymous_id);";

pub const CONVERSIONS: &str = "CREATE TABLE conversions (
    app_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    model TEXT NOT NULL,
    click_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    user_id TEXT,
    event_type TEXT NOT NULL,
    ts {i64} NOT NULL,
    link_id TEXT,
    campaign_id TEXT,
    network TEXT,
    touch_ts {i64},
    credit {f64} NOT NULL,
    revenue {f64},
    currency TEXT,
    PRIMARY KEY (app_id, event_id, model, click_id)
);
CREATE INDEX conversions_anonymous_id ON conversions (app_id, anonymous_id);
CREATE INDEX conversions_user_id ON conversions (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX conversions_campaign ON conversions (campaign_id, model, ts);";

pub const POSTBACKS: &str = "CREATE TABLE postbacks (
    id {id},
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
    created_at {i64} NOT NULL,
    updated_at {i64} NOT NULL
);
CREATE INDEX postbacks_pending ON postbacks (state) WHERE state = 'pending';
CREATE INDEX postbacks_anonymous_id ON postbacks (app_id, anonymous_id);";

pub const POSTBACK_ATTEMPTS: &str = "CREATE TABLE postback_attempts (
    id {id},
    postback_id {i64} NOT NULL,
    app_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status INTEGER,
    error TEXT,
    duration_ms {i64} NOT NULL,
    at {i64} NOT NULL
);
CREATE INDEX postback_attempts_anonymous_id ON postback_attempts (app_id, anonymous_id);";

pub const FRAUD_ALERTS: &str = "CREATE TABLE fraud_alerts (
    id {id},
    rule TEXT NOT NULL,
    app_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    at {i64} NOT NULL,
    detail TEXT NOT NULL
);";

// ---------------------------------------------------------------------------------------------
// Reports (the star schema, sessions, rollups).

pub const ETL_STATE: &str = "CREATE TABLE etl_state (key TEXT PRIMARY KEY, value {i64} NOT NULL);";

pub const DIM_DATE: &str = "CREATE TABLE dim_date (
    date_key {i64} PRIMARY KEY,
    date TEXT NOT NULL,
    year INTEGER NOT NULL,
    month INTEGER NOT NULL,
    day INTEGER NOT NULL,
    weekday INTEGER NOT NULL,
    iso_week INTEGER NOT NULL
);";

pub const DIM_CAMPAIGNS: &str = "CREATE TABLE dim_campaigns (
    campaign_key TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    campaign_id TEXT,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    network TEXT NOT NULL,
    created_at {i64} NOT NULL
);";

pub const DIM_USERS: &str = "CREATE TABLE dim_users (
    app_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    user_id TEXT,
    first_seen {i64} NOT NULL,
    last_seen {i64} NOT NULL,
    events {i64} NOT NULL DEFAULT 0,
    install_ts {i64},
    install_campaign_id TEXT,
    utm_campaign_key TEXT,
    PRIMARY KEY (app_id, anonymous_id)
);
CREATE INDEX dim_users_user_id ON dim_users (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX dim_users_anonymous_id ON dim_users (anonymous_id);";

pub const FACT_EVENTS: &str = "CREATE TABLE fact_events (
    {seq_key}app_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    date_key {i64} NOT NULL,
    ts {i64} NOT NULL,
    event_type TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    user_id TEXT,
    session_key TEXT NOT NULL,
    revenue {f64},
    currency TEXT
);
CREATE INDEX fact_events_user ON fact_events (anonymous_id, ts);
CREATE INDEX fact_events_type ON fact_events (app_id, event_type, ts);
CREATE INDEX fact_events_date ON fact_events (date_key, app_id);
CREATE INDEX fact_events_session ON fact_events (app_id, session_key);
CREATE INDEX fact_events_user_id ON fact_events (user_id) WHERE user_id IS NOT NULL;";

/// Without the index `sessions_user`, which differs (each store's `schema.rs` has it).
pub const SESSIONS: &str = "CREATE TABLE sessions (
    app_id TEXT NOT NULL,
    session_key TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    user_id TEXT,
    start_ts {i64} NOT NULL,
    end_ts {i64} NOT NULL,
    events {i64} NOT NULL,
    PRIMARY KEY (app_id, session_key)
);
CREATE INDEX sessions_user_id ON sessions (user_id) WHERE user_id IS NOT NULL;";

pub const CAMPAIGN_COSTS: &str = "CREATE TABLE campaign_costs (
    campaign_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    date_key {i64} NOT NULL,
    amount {f64} NOT NULL,
    currency TEXT NOT NULL,
    updated_at {i64} NOT NULL,
    PRIMARY KEY (campaign_id, date_key)
);";

pub const ROLLUP_DIRTY: &str = "CREATE TABLE rollup_dirty (
    app_id TEXT NOT NULL,
    date_key {i64} NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (app_id, date_key, source)
){without_rowid};";

pub const ROLLUP_DAILY: &str = "CREATE TABLE rollup_daily (
    app_id TEXT NOT NULL,
    date_key {i64} NOT NULL,
    campaign_key TEXT NOT NULL,
    event_type TEXT NOT NULL,
    events {i64} NOT NULL,
    users {i64} NOT NULL,
    revenue {f64} NOT NULL,
    PRIMARY KEY (app_id, date_key, campaign_key, event_type)
);";

pub const ROLLUP_CAMPAIGN_DAILY: &str = "CREATE TABLE rollup_campaign_daily (
    app_id TEXT NOT NULL,
    date_key {i64} NOT NULL,
    campaign_id TEXT NOT NULL,
    impressions {i64} NOT NULL DEFAULT 0,
    clicks {i64} NOT NULL DEFAULT 0,
    installs {i64} NOT NULL DEFAULT 0,
    rejected_installs {i64} NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, date_key, campaign_id)
);";

/// The schema change of issue 26 (SQLite 10, PostgreSQL 12): installs by time, the link rollup
/// filled from the clicks a database has.
pub fn dashboard_tables(dialect: Dialect) -> String {
    [
        super::sql::INSTALLS_TIME.to_owned(),
        render(&[ROLLUP_LINK_DAILY], dialect),
        super::sql::ROLLUP_LINK_BACKFILL.to_owned(),
    ]
    .join("\n")
}

/// Clicks and impressions by link and day (issue 26: a campaign page's link table), kept like
/// the other rollups after raw clicks are purged.
pub const ROLLUP_LINK_DAILY: &str = "CREATE TABLE rollup_link_daily (
    app_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    date_key {i64} NOT NULL,
    link_id TEXT NOT NULL,
    impressions {i64} NOT NULL,
    clicks {i64} NOT NULL,
    PRIMARY KEY (app_id, date_key, campaign_id, link_id)
);";

pub const ROLLUP_CONVERSIONS_DAILY: &str = "CREATE TABLE rollup_conversions_daily (
    app_id TEXT NOT NULL,
    date_key {i64} NOT NULL,
    campaign_id TEXT NOT NULL,
    model TEXT NOT NULL,
    conversions {f64} NOT NULL,
    revenue {f64} NOT NULL,
    PRIMARY KEY (app_id, date_key, campaign_id, model)
);";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_become_each_dialects_types() {
        let sqlite = render(&[EVENTS, LINK_AUDIT, FACT_EVENTS, ROLLUP_DIRTY], Dialect::Sqlite);
        let postgres = render(&[EVENTS, LINK_AUDIT, FACT_EVENTS, ROLLUP_DIRTY], Dialect::Postgres);
        assert!(sqlite.contains("ip_enc BLOB,\n    PRIMARY KEY"), "{sqlite}");
        assert!(postgres.contains("ip_enc BYTEA,\n    seq BIGSERIAL,\n    PRIMARY KEY"), "{postgres}");
        assert!(sqlite.contains("id INTEGER PRIMARY KEY,") && postgres.contains("id BIGSERIAL PRIMARY KEY,"));
        assert!(sqlite.contains("fact_events (\n    app_id TEXT"), "{sqlite}");
        assert!(postgres.contains("fact_events (\n    seq BIGSERIAL PRIMARY KEY,\n    app_id TEXT"), "{postgres}");
        assert!(sqlite.contains(") WITHOUT ROWID;") && postgres.contains("source)\n);"));
        for sql in [sqlite, postgres] {
            assert!(!sql.contains('{') && !sql.contains('}'), "{sql}");
        }
    }

    #[test]
    fn the_day_key_floors() {
        assert_eq!(day_key!("ts"), "((ts - (((ts) % 86400000) + 86400000) % 86400000) / 86400000)");
    }
}
