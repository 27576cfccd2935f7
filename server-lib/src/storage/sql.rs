//! SQL written once for both stores: the column lists, and every statement that is the same in
//! both dialects, so the two stores cannot drift apart on them.
//!
//! Statements are written with PostgreSQL's placeholders (`$1`). The SQLite store turns them
//! into SQLite's (`?1`) with [`sqlite!`], at compile time (a `const`, so running a statement
//! costs nothing more than before), or with [`to_sqlite`] for the few statements built at run
//! time (the delete path's table and column names, the rollups' column lists). A statement
//! that truly differs between the dialects stays in its store's file: PostgreSQL's `UNNEST`
//! batches, `RETURNING` where SQLite counts changes, casts of possibly-`NULL` parameters, `seq`
//! columns where SQLite orders by `rowid`, `INSERT OR IGNORE` against `ON CONFLICT`, and the
//! like. The tables both stores create are in [`super::ddl`].

/// `sql` with every placeholder `$n` turned into SQLite's `?n` (the same length, so the bytes
/// can be rewritten in place). A `$` not followed by a digit (as in `$$`) stays.
pub const fn sqlite_bytes<const N: usize>(sql: &str) -> [u8; N] {
    let bytes = sql.as_bytes();
    assert!(bytes.len() == N, "N is the statement's length");
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = if bytes[i] == b'$' && i + 1 < N && bytes[i + 1].is_ascii_digit() { b'?' } else { bytes[i] };
        i += 1;
    }
    out
}

/// A statement of this module (any `&'static str` constant expression) in SQLite's
/// placeholders, as a `&'static str` computed at compile time.
macro_rules! sqlite {
    ($sql:expr) => {{
        const SQL: &str = $sql;
        const BYTES: [u8; SQL.len()] = $crate::storage::sql::sqlite_bytes::<{ SQL.len() }>(SQL);
        const SQLITE: &str = match ::std::str::from_utf8(&BYTES) {
            Ok(s) => s,
            Err(_) => panic!("placeholders are ASCII"),
        };
        SQLITE
    }};
}
pub(crate) use sqlite;

/// [`sqlite!`] for a statement built at run time.
pub fn to_sqlite(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) { '?' } else { c });
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Column lists (macros, so statements can be put together with `concat!` at compile time).

/// The columns of a stored event that both stores read back, in the order of their
/// `event_row`.
macro_rules! event_columns {
    () => {
        "app_id, event_id, type, anonymous_id, user_id, device_id, session_id, client_ts, corrected_ts, \
         received_at, properties, context, enrichment, ids_enc"
    };
}
pub(crate) use event_columns;

/// [`event_columns!`] and the encrypted client address: what ingest writes.
macro_rules! event_insert_columns {
    () => {
        concat!($crate::storage::sql::event_columns!(), ", ip_enc")
    };
}
pub(crate) use event_insert_columns;

/// The columns of a click, as written and as read back by both stores' `click_row`.
macro_rules! click_columns {
    () => {
        "click_id, kind, app_id, link_id, campaign_id, ts, ip_enc, user_agent, referrer, accept_language, os, \
         os_version, model, locale, timezone, screen, device_id, device_kind, network_ids, sub_params, flags, source, \
         device_enc"
    };
}
pub(crate) use click_columns;

/// The columns of a campaign, as written and read back.
macro_rules! campaign_columns {
    () => {
        "campaign_id, app_id, name, network, created_at"
    };
}
pub(crate) use campaign_columns;

/// The columns of an install that both stores' `install_row` read, in its order.
pub const INSTALL_COLUMNS: &str = "app_id, event_id, anonymous_id, platform, idfa, idfv, gaid, android_id, install_ts, received_at, kind, result, \
     audit, ip_enc, ids_enc";

/// [`event_columns!`] as a constant, for statements built at run time.
pub const EVENT_COLUMNS: &str = event_columns!();

// ---------------------------------------------------------------------------------------------
// Campaigns, links, clicks.

pub const INSERT_CAMPAIGN: &str =
    concat!("INSERT INTO campaigns (", campaign_columns!(), ") VALUES ($1, $2, $3, $4, $5)");

/// Creates a link or replaces its state.
pub const UPSERT_LINK: &str = "INSERT INTO links (link_id, code, campaign_id, enabled, record, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6)
     ON CONFLICT (link_id) DO UPDATE SET enabled = excluded.enabled, record = excluded.record,
         updated_at = excluded.updated_at";

pub const INSERT_LINK_AUDIT: &str =
    "INSERT INTO link_audit (link_id, at, actor, action, before, after) VALUES ($1, $2, $3, $4, $5, $6)";

/// A link's audit log, oldest first.
pub const LINK_AUDIT: &str =
    "SELECT link_id, at, actor, action, before, after FROM link_audit WHERE link_id = $1 ORDER BY id";

/// A click or impression; one already stored (a retried write) is left as it is.
pub const INSERT_CLICK: &str = concat!(
    "INSERT INTO clicks (",
    click_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)
     ON CONFLICT (click_id) DO NOTHING"
);

pub const CLICK_PARAMS: &str = "SELECT network_ids, sub_params FROM clicks WHERE click_id = $1";

// ---------------------------------------------------------------------------------------------
// Installs.

/// An install; nothing when one with the same event id is stored.
pub const INSERT_INSTALL: &str =
    "INSERT INTO installs (app_id, event_id, anonymous_id, platform, idfa, idfv, gaid, android_id, install_ts,
         received_at, kind, match_type, campaign_id, link_id, click_id, network, rejected, result, audit, ip_enc, ids_enc)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)
     ON CONFLICT (app_id, event_id) DO NOTHING";

pub const SAVE_TEST_DEVICE: &str = "INSERT INTO test_devices (device_id, label, device_enc, created_at)
     VALUES ($1, $2, $3, $4) ON CONFLICT (device_id) DO UPDATE SET label = excluded.label";

pub const REMOVE_TEST_DEVICE: &str = "DELETE FROM test_devices WHERE device_id = $1";

pub const TEST_DEVICES: &str =
    "SELECT device_id, label, device_enc, created_at FROM test_devices ORDER BY created_at, device_id";

pub const INSERT_FRAUD_ALERT: &str =
    "INSERT INTO fraud_alerts (rule, app_id, campaign_id, at, detail) VALUES ($1, $2, $3, $4, $5)";

// ---------------------------------------------------------------------------------------------
// Touchpoints, re-engagements, conversions, postbacks.

/// A touchpoint; nothing when the device has this click of this kind already.
pub const INSERT_TOUCHPOINT: &str =
    "INSERT INTO touchpoints (app_id, anonymous_id, ts, click_id, link_id, campaign_id, network, kind,
         source_event_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
     ON CONFLICT (app_id, anonymous_id, click_id, kind) DO NOTHING";

/// A re-engagement; nothing when one with the same event id is stored.
pub const INSERT_REENGAGEMENT: &str =
    "INSERT INTO reengagements (app_id, event_id, anonymous_id, click_id, link_id, campaign_id, network,
         click_ts, open_ts, inactive_ms)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (app_id, event_id) DO NOTHING";

/// Touchpoints of the anonymous id ($2) and of every anonymous id seen with the person of the
/// user id ($5) in the app ($1), in `[$3, $4]`, oldest first. The person is the user id, the
/// user id it became (`identity_links`) and that one's other aliases.
pub const CONVERSION_TOUCHPOINTS: &str =
    "SELECT app_id, anonymous_id, ts, click_id, link_id, campaign_id, network, kind, source_event_id
       FROM touchpoints
      WHERE app_id = $1 AND ts >= $3 AND ts <= $4
        AND (anonymous_id = $2 OR anonymous_id IN
             (SELECT DISTINCT anonymous_id FROM events WHERE app_id = $1 AND user_id IN
                 (SELECT p.id FROM (SELECT coalesce(
                          (SELECT l.user_id FROM identity_links l WHERE l.app_id = $1 AND l.alias_user_id = $5),
                          $5) AS id) p
                  UNION
                  SELECT l.alias_user_id FROM identity_links l WHERE l.app_id = $1 AND l.user_id =
                      coalesce((SELECT l2.user_id FROM identity_links l2
                                 WHERE l2.app_id = $1 AND l2.alias_user_id = $5), $5))))
      ORDER BY ts, id";

/// The user id a user id ($2) of the app ($1) became, when it is an alias.
pub const LINKED_USER: &str = "SELECT user_id FROM identity_links WHERE app_id = $1 AND alias_user_id = $2";

/// A new link ($2 became $3); nothing when $2 is linked already.
pub const INSERT_USER_LINK: &str = "INSERT INTO identity_links (app_id, alias_user_id, user_id, created_at)
     VALUES ($1, $2, $3, $4) ON CONFLICT (app_id, alias_user_id) DO NOTHING";

/// Links that named $2 as their user id name $3 instead (keeps the map flat).
pub const REPOINT_USER_LINKS: &str = "UPDATE identity_links SET user_id = $3 WHERE app_id = $1 AND user_id = $2";

/// Sets an advertising id column (`idfa` or `gaid`, never anything else) of the device's ($2)
/// install rows in the app ($1) that have none to $3.
pub fn attach_advertising_id(column: &'static str) -> String {
    assert!(matches!(column, "idfa" | "gaid"), "an advertising id column");
    format!("UPDATE installs SET {column} = $3 WHERE app_id = $1 AND anonymous_id = $2 AND {column} IS NULL")
}

/// Every link of the app ($1).
pub const IDENTITY_LINKS: &str = "SELECT alias_user_id, user_id FROM identity_links WHERE app_id = $1";

/// Whether the conversion (app, event id) was credited before.
pub const CONVERSION_CREDITED: &str = "SELECT EXISTS (SELECT 1 FROM conversions WHERE app_id = $1 AND event_id = $2)";

pub const INSERT_CONVERSION: &str =
    "INSERT INTO conversions (app_id, event_id, model, click_id, anonymous_id, user_id, event_type, ts,
         link_id, campaign_id, network, touch_ts, credit, revenue, currency)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)";

/// A new pending postback; answers its id.
pub const INSERT_POSTBACK: &str =
    "INSERT INTO postbacks (app_id, anonymous_id, event_id, network, event, url, state, attempts, created_at,
         updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7) RETURNING id";

pub const POSTBACK_PENDING: &str = "SELECT EXISTS (SELECT 1 FROM postbacks WHERE id = $1 AND state = 'pending')";

/// The tables whose rows hold user, device and advertising ids with their ciphertext.
pub static ID_TABLES: [crate::storage::IdTable; 4] = [
    crate::storage::IdTable {
        table: "events",
        key: &["app_id", "event_id"],
        ids: &["user_id", "device_id"],
        sealed: "ids_enc",
    },
    crate::storage::IdTable {
        table: "installs",
        key: &["app_id", "event_id"],
        ids: &["idfa", "idfv", "gaid", "android_id"],
        sealed: "ids_enc",
    },
    crate::storage::IdTable { table: "clicks", key: &["click_id"], ids: &["device_id"], sealed: "device_enc" },
    crate::storage::IdTable { table: "test_devices", key: &["device_id"], ids: &["device_id"], sealed: "device_enc" },
];

/// Tables derived from events that copy their (stored) user id.
pub const USER_ID_TABLES: [&str; 4] = ["conversions", "fact_events", "sessions", "dim_users"];

/// A batch of an [`crate::storage::IdTable`]'s rows that hold identifiers, after a key.
pub fn identifier_rows(t: &crate::storage::IdTable) -> String {
    let n = t.key.len();
    let after: Vec<String> = (1..=n).map(|i| format!("${i}")).collect();
    format!(
        "SELECT {key}, {ids}, {sealed} FROM {table}
          WHERE ({key}) > ({after}) AND ({any})
          ORDER BY {key} LIMIT ${limit}",
        key = t.key.join(", "),
        ids = t.ids.join(", "),
        sealed = t.sealed,
        table = t.table,
        after = after.join(", "),
        any = t.ids.iter().map(|c| format!("{c} IS NOT NULL")).collect::<Vec<_>>().join(" OR "),
        limit = n + 1,
    )
}

/// The first batch (no key before it).
pub fn identifier_rows_first(t: &crate::storage::IdTable) -> String {
    format!(
        "SELECT {key}, {ids}, {sealed} FROM {table} WHERE {any} ORDER BY {key} LIMIT $1",
        key = t.key.join(", "),
        ids = t.ids.join(", "),
        sealed = t.sealed,
        table = t.table,
        any = t.ids.iter().map(|c| format!("{c} IS NOT NULL")).collect::<Vec<_>>().join(" OR "),
    )
}

/// One row's identifier columns and ciphertext: `$1…` the ids, then the ciphertext, then the key.
pub fn rewrite_identifiers(t: &crate::storage::IdTable) -> String {
    let ids = t.ids.len();
    let sets: Vec<String> = t.ids.iter().enumerate().map(|(i, c)| format!("{c} = ${}", i + 1)).collect();
    let keys: Vec<String> = t.key.iter().enumerate().map(|(i, c)| format!("{c} = ${}", ids + 2 + i)).collect();
    format!(
        "UPDATE {table} SET {sets}, {sealed} = ${s} WHERE {keys}",
        table = t.table,
        sets = sets.join(", "),
        sealed = t.sealed,
        s = ids + 1,
        keys = keys.join(" AND "),
    )
}

/// Distinct user ids of a derived table not in hashed form (`h:` and 32 hex digits).
pub fn raw_user_ids(table: &str) -> String {
    format!(
        "SELECT DISTINCT user_id FROM {table}
          WHERE user_id IS NOT NULL AND NOT (length(user_id) = 34 AND substr(user_id, 1, 2) = 'h:') LIMIT $1"
    )
}

pub fn replace_user_id(table: &str) -> String {
    format!("UPDATE {table} SET user_id = $1 WHERE user_id = $2")
}

pub const IDENTIFIERS_VERSION: &str = "SELECT value FROM etl_state WHERE key = 'identifiers_version'";

pub const SET_IDENTIFIERS_VERSION: &str = "INSERT INTO etl_state (key, value) VALUES ('identifiers_version', $1)
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// The contexts of the newest stored events (by corrected time) of a device or of a user that
/// may say what the person's consent was, newest first: where the latest consent state is
/// read. `"consent":{` in the compact JSON is a key (a quote inside a string value is
/// escaped), though perhaps a nested one: the caller takes the first with a top-level
/// `consent`. Events without one (a server's own events) do not count.
pub const LATEST_CONTEXT: &str = "SELECT context FROM events WHERE app_id = $1 AND (anonymous_id = $2 OR user_id = $3)
       AND context LIKE '%\"consent\":{%'
     ORDER BY corrected_ts DESC LIMIT 20";

/// A delivery attempt, only while the postback exists: a deletion in the meantime leaves no
/// new trace.
pub const INSERT_POSTBACK_ATTEMPT: &str =
    "INSERT INTO postback_attempts (postback_id, app_id, anonymous_id, attempt, status, error, duration_ms, at)
     SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM postbacks WHERE id = $1)";

/// A postback's state after an attempt.
pub const UPDATE_POSTBACK: &str =
    "UPDATE postbacks SET state = $2, attempts = $3, last_status = $4, last_error = $5, updated_at = $6
      WHERE id = $1";

/// Pending postbacks, oldest first.
pub const PENDING_POSTBACKS: &str =
    "SELECT id, url, attempts, app_id, anonymous_id, network FROM postbacks WHERE state = 'pending' ORDER BY id";

// ---------------------------------------------------------------------------------------------
// Deletion.

/// A user's anonymous ids, per app: seen on its events, or kept in `dim_users` after the raw
/// events are purged.
pub const USER_ANONYMOUS_IDS: &str = "SELECT DISTINCT app_id, anonymous_id FROM events WHERE user_id = $1
     UNION SELECT app_id, anonymous_id FROM dim_users WHERE user_id = $1";

/// The apps an anonymous id ($1) was seen in (as `(app_id, anonymous_id)` pairs), so its
/// suppressions are per app like every other.
pub const ANONYMOUS_ID_APPS: &str = "SELECT DISTINCT app_id, anonymous_id FROM events WHERE anonymous_id = $1
     UNION SELECT app_id, anonymous_id FROM installs WHERE anonymous_id = $1
     UNION SELECT app_id, anonymous_id FROM dim_users WHERE anonymous_id = $1";

/// A device's anonymous ids, per app: on its events and on its installs. Device ids are
/// stored in one form (`domain::records::device_id_form`), and $1 is in it.
pub const DEVICE_ANONYMOUS_IDS: &str = "SELECT DISTINCT app_id, anonymous_id FROM events WHERE device_id = $1
     UNION SELECT app_id, anonymous_id FROM installs WHERE idfa = $1 OR idfv = $1 OR gaid = $1 OR android_id = $1";

/// Click ids tied to a device ($1): the installs it was attributed with and its own clicks.
pub const DEVICE_CLICK_IDS: &str = "SELECT click_id FROM installs WHERE click_id IS NOT NULL
        AND (idfa = $1 OR idfv = $1 OR gaid = $1 OR android_id = $1)
     UNION SELECT click_id FROM clicks WHERE device_id = $1";

/// Click ids tied to one anonymous id ($2) in one app ($1): its installs' click, its
/// touchpoints, and the clicks that carry one of its installs' device ids.
pub const ANONYMOUS_CLICK_IDS: &str =
    "SELECT click_id FROM installs WHERE app_id = $1 AND anonymous_id = $2 AND click_id IS NOT NULL
     UNION SELECT click_id FROM touchpoints WHERE app_id = $1 AND anonymous_id = $2
     UNION SELECT c.click_id FROM clicks c JOIN installs i ON c.app_id = i.app_id
        AND c.device_id IN (i.idfa, i.idfv, i.gaid, i.android_id) WHERE i.app_id = $1 AND i.anonymous_id = $2";

/// Click ids tied to an anonymous id ($1) in any app (a deletion by anonymous id).
pub const ANONYMOUS_CLICK_IDS_ANY_APP: &str =
    "SELECT click_id FROM installs WHERE anonymous_id = $1 AND click_id IS NOT NULL
     UNION SELECT click_id FROM touchpoints WHERE anonymous_id = $1
     UNION SELECT c.click_id FROM clicks c JOIN installs i ON c.app_id = i.app_id
        AND c.device_id IN (i.idfa, i.idfv, i.gaid, i.android_id) WHERE i.anonymous_id = $1";

/// Tables whose rows are events a deletion tombstones (by `(app_id, event_id)`).
pub const TOMBSTONED_TABLES: [&str; 2] = ["events", "installs"];

/// The keys of `table`'s rows of an anonymous id ($2) in one app ($1), for tombstones.
pub fn anonymous_events(table: &str) -> String {
    format!("SELECT app_id, event_id FROM {table} WHERE app_id = $1 AND anonymous_id = $2")
}

/// The keys of `table`'s rows whose `column` holds the subject ($1), for tombstones.
pub fn subject_events(table: &str, column: &str) -> String {
    format!("SELECT app_id, event_id FROM {table} WHERE {column} = $1")
}

pub const INSERT_TOMBSTONE: &str =
    "INSERT INTO tombstones (app_id, event_hash, deleted_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";

/// A suppression; an identifier suppressed again keeps its first deletion's receipt.
pub const INSERT_SUPPRESSION: &str =
    "INSERT INTO suppressions (id_hash, kind, receipt_id, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING";

pub const SUPPRESSIONS: &str =
    "SELECT id_hash, kind, receipt_id, created_at FROM suppressions ORDER BY created_at DESC, id_hash LIMIT $1";

pub const LIFT_BY_RECEIPT: &str = "DELETE FROM suppressions WHERE receipt_id = $1";

pub const LIFT_BY_HASH: &str = "DELETE FROM suppressions WHERE id_hash = $1";

pub const INSERT_DELETION_AUDIT: &str =
    "INSERT INTO deletion_audit (receipt_id, subject_kind, subject_hash, rows_deleted, requested_at, requested_by)
     VALUES ($1, $2, $3, $4, $5, $6)";

/// Deletes the rows of `table` whose `column` holds the subject ($1), compared exactly (user
/// "Alice" is not user "alice"; device ids are stored and asked for in one form).
pub fn delete_by_subject(table: &str, column: &str) -> String {
    format!("DELETE FROM {table} WHERE {column} = $1")
}

/// Deletes the rows of `table` of one anonymous id ($2) in one app ($1).
pub fn delete_by_anonymous_id(table: &str) -> String {
    format!("DELETE FROM {table} WHERE app_id = $1 AND anonymous_id = $2")
}

// ---------------------------------------------------------------------------------------------
// Reports.

/// The columns of a [`FactRow`](crate::domain::records::FactRow) (the device's campaign from
/// `dim_users`); a query adds its `WHERE` and `ORDER BY`.
pub const FACT_ROWS: &str = "SELECT f.anonymous_id, u.user_id, f.event_type, f.ts, f.session_key,
        coalesce(u.install_campaign_id, u.utm_campaign_key)
   FROM fact_events f
   LEFT JOIN dim_users u ON u.app_id = f.app_id AND u.anonymous_id = f.anonymous_id";

/// Up to $1 queued events at or before queue position $2, oldest first, with the event (its
/// columns `NULL` when it was deleted before the refresh took it).
pub const PENDING_EVENTS: &str =
    "SELECT p.seq, p.app_id, e.event_id, e.type, e.anonymous_id, e.user_id, e.corrected_ts, e.properties,
            e.context
       FROM etl_pending p LEFT JOIN events e ON e.app_id = p.app_id AND e.event_id = p.event_id
      WHERE p.seq <= $2 ORDER BY p.seq LIMIT $1";

/// The newest queue position (0 when the queue is empty).
pub const QUEUE_HORIZON: &str = "SELECT coalesce(max(seq), 0) FROM etl_pending";

pub const ETL_STATE: &str = "SELECT value FROM etl_state WHERE key = $1";

/// Moves the facts of a merged session ($3) to the session kept ($1).
/// A device's sessions that start in a window `[$3, $4]` (`star::session_windows`).
pub const SESSIONS_STARTING_IN: &str = "SELECT session_key, start_ts, end_ts, events, user_id FROM sessions
     WHERE app_id = $1 AND anonymous_id = $2 AND start_ts BETWEEN $3 AND $4";

/// A device's last session that starts before `$3` (it overlaps the window if it ends at or
/// after `$3`).
pub const SESSION_BEFORE: &str = "SELECT session_key, start_ts, end_ts, events, user_id FROM sessions
     WHERE app_id = $1 AND anonymous_id = $2 AND start_ts < $3 ORDER BY start_ts DESC LIMIT 1";

pub const MOVE_SESSION_FACTS: &str = "UPDATE fact_events SET session_key = $1 WHERE app_id = $2 AND session_key = $3";

pub const DELETE_SESSION: &str = "DELETE FROM sessions WHERE app_id = $1 AND session_key = $2";

pub const DELETE_ROLLUP_DAILY: &str = "DELETE FROM rollup_daily WHERE app_id = $1 AND date_key = $2";

pub const DELETE_ROLLUP_CONVERSIONS: &str = "DELETE FROM rollup_conversions_daily WHERE app_id = $1 AND date_key = $2";

/// Zeroes `columns` of every campaign of one app ($1) and day ($2) before they are recounted.
pub fn zero_campaign_columns(columns: &[&str]) -> String {
    let zero = columns.iter().map(|c| format!("{c} = 0")).collect::<Vec<_>>().join(", ");
    format!("UPDATE rollup_campaign_daily SET {zero} WHERE app_id = $1 AND date_key = $2")
}

/// The end of an insert into the campaign rollup: a row already there gets the new row's
/// `columns`.
pub fn campaign_columns_on_conflict(columns: &[&str]) -> String {
    let set = columns.iter().map(|c| format!("{c} = excluded.{c}")).collect::<Vec<_>>().join(", ");
    format!("ON CONFLICT (app_id, date_key, campaign_id) DO UPDATE SET {set}")
}

/// Drops the campaign rows of one app ($1) and day ($2) left with nothing to count.
pub const DELETE_EMPTY_CAMPAIGN_DAYS: &str = "DELETE FROM rollup_campaign_daily WHERE app_id = $1 AND date_key = $2
    AND impressions = 0 AND clicks = 0 AND installs = 0 AND rejected_installs = 0";

/// Clicks and impressions before $1.
pub const PURGE_CLICKS: &str = "DELETE FROM clicks WHERE ts < $1";

pub const CAMPAIGN_APP: &str = "SELECT app_id FROM campaigns WHERE campaign_id = $1";

/// A currency of the campaign's ($1) costs other than $2, on a day other than $3.
pub const OTHER_COST_CURRENCY: &str =
    "SELECT currency FROM campaign_costs WHERE campaign_id = $1 AND currency <> $2 AND date_key <> $3 LIMIT 1";

/// The app's ($1) devices that started (installed, else were first seen) before $2.
pub const COHORT_USERS: &str = "SELECT anonymous_id, user_id, coalesce(install_ts, first_seen) FROM dim_users
      WHERE app_id = $1 AND coalesce(install_ts, first_seen) < $2";

/// The days in `[$2, $3]` each device of the app ($1) had an event on.
pub const COHORT_ACTIVE_DAYS: &str = "SELECT DISTINCT anonymous_id, date_key FROM fact_events
      WHERE app_id = $1 AND date_key >= $2 AND date_key <= $3";

/// Notes one change in the OLAP outbox ($1 kind, $2 app, $3 key) while a ClickHouse is
/// configured (`etl_state` key `olap`); otherwise writes nothing.
pub const OLAP_ENTRY: &str = "INSERT INTO olap_outbox (kind, app_id, key)
      SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM etl_state WHERE key = 'olap')";

/// Turning the outbox on: a `reset` first (the loader empties the ClickHouse tables, which may
/// hold rows from an earlier time the outbox was on), then every current fact, user and session.
/// `{ord}`: the facts' own numbering (`rowid`, `seq`).
pub const OLAP_BACKFILL: &str = "INSERT INTO olap_outbox (kind, app_id, key) VALUES ('reset', '', '');
INSERT INTO olap_outbox (kind, app_id, key) SELECT 'user', app_id, anonymous_id FROM dim_users;
INSERT INTO olap_outbox (kind, app_id, key) SELECT 'session', app_id, session_key FROM sessions;
INSERT INTO olap_outbox (kind, app_id, key) SELECT 'fact', app_id, event_id FROM fact_events ORDER BY {ord};";

/// The oldest $1 outbox entries.
pub const OLAP_PAGE: &str = "SELECT seq, kind, app_id, key FROM olap_outbox ORDER BY seq LIMIT $1";

pub const OLAP_PENDING: &str = "SELECT count(*) FROM olap_outbox";

/// The current row of a user ($1 app, $2 anonymous id) for the loader.
pub const OLAP_USER: &str = "SELECT user_id, first_seen, last_seen, events, install_ts, install_campaign_id,
        utm_campaign_key FROM dim_users WHERE app_id = $1 AND anonymous_id = $2";

/// The current row of a session ($1 app, $2 session key) for the loader.
pub const OLAP_SESSION: &str = "SELECT anonymous_id, user_id, start_ts, end_ts, events FROM sessions
      WHERE app_id = $1 AND session_key = $2";

/// The current row of a fact ($1 app, $2 event id) for the loader, with its store's order
/// (`{ord}`: `rowid`, `seq`).
pub const OLAP_FACT: &str = "SELECT {ord}, date_key, ts, event_type, anonymous_id, user_id, session_key, revenue,
        currency FROM fact_events WHERE app_id = $1 AND event_id = $2";

/// Finds a fact by its event (the OLAP outbox names facts so: SQLite's `rowid` may change in a
/// `VACUUM`).
pub const FACT_EVENTS_EVENT: &str = "CREATE INDEX fact_events_event ON fact_events (app_id, event_id);";

/// The report tables whose changes the outbox triggers note: (table, entry kind, key column,
/// whether deletions are noted too). Facts are removed from ClickHouse by `erase` and `purge`
/// entries instead (a retention purge would otherwise note every fact it deletes).
pub const OLAP_NOTED: &[(&str, &str, &str, bool)] = &[
    ("fact_events", "fact", "event_id", false),
    ("dim_users", "user", "anonymous_id", true),
    ("sessions", "session", "session_key", true),
];

/// A key column of a mirrored table: text or a whole number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Text,
    Int,
}

/// A table the ClickHouse copy mirrors row by row (ADR 0018): its primary key and the columns
/// copied (no advertising or device ids, no IPs, no audit texts). Triggers note each change as
/// an outbox entry of kind `table` whose key is the row's key values as a JSON array.
#[derive(Debug)]
pub struct Mirror {
    pub table: &'static str,
    pub key: &'static [(&'static str, KeyType)],
    pub columns: &'static [&'static str],
}

/// The mirrored tables: the identity map (funnels and retention count people), the campaign
/// report's dimensions, costs and rollups (so it runs in ClickHouse too), and installs and
/// conversions (for BI tools).
pub const OLAP_MIRRORED: &[Mirror] = &[
    Mirror {
        table: "identity_links",
        key: &[("app_id", KeyType::Text), ("alias_user_id", KeyType::Text)],
        columns: &["app_id", "alias_user_id", "user_id", "created_at"],
    },
    Mirror {
        table: "dim_campaigns",
        key: &[("campaign_key", KeyType::Text)],
        columns: &["campaign_key", "app_id", "campaign_id", "kind", "name", "network", "created_at"],
    },
    Mirror {
        table: "campaign_costs",
        key: &[("campaign_id", KeyType::Text), ("date_key", KeyType::Int)],
        columns: &["campaign_id", "app_id", "date_key", "amount", "currency", "updated_at"],
    },
    Mirror {
        table: "rollup_daily",
        key: &[
            ("app_id", KeyType::Text),
            ("date_key", KeyType::Int),
            ("campaign_key", KeyType::Text),
            ("event_type", KeyType::Text),
        ],
        columns: &["app_id", "date_key", "campaign_key", "event_type", "events", "users", "revenue"],
    },
    Mirror {
        table: "rollup_campaign_daily",
        key: &[("app_id", KeyType::Text), ("date_key", KeyType::Int), ("campaign_id", KeyType::Text)],
        columns: &["app_id", "date_key", "campaign_id", "impressions", "clicks", "installs", "rejected_installs"],
    },
    Mirror {
        table: "rollup_conversions_daily",
        key: &[
            ("app_id", KeyType::Text),
            ("date_key", KeyType::Int),
            ("campaign_id", KeyType::Text),
            ("model", KeyType::Text),
        ],
        columns: &["app_id", "date_key", "campaign_id", "model", "conversions", "revenue"],
    },
    Mirror {
        table: "installs",
        key: &[("app_id", KeyType::Text), ("event_id", KeyType::Text)],
        columns: &[
            "app_id",
            "event_id",
            "anonymous_id",
            "platform",
            "install_ts",
            "received_at",
            "kind",
            "match_type",
            "campaign_id",
            "link_id",
            "network",
            "rejected",
        ],
    },
    Mirror {
        table: "conversions",
        key: &[
            ("app_id", KeyType::Text),
            ("event_id", KeyType::Text),
            ("model", KeyType::Text),
            ("click_id", KeyType::Text),
        ],
        columns: &[
            "app_id",
            "event_id",
            "model",
            "click_id",
            "anonymous_id",
            "user_id",
            "event_type",
            "ts",
            "link_id",
            "campaign_id",
            "network",
            "touch_ts",
            "credit",
            "revenue",
            "currency",
        ],
    },
];

impl Mirror {
    /// The current row as one JSON object text, by its key (`$1`, `$2`, …): `object` is the
    /// dialect's JSON object function, `cast` what makes its value text.
    pub fn row_json(&self, object: &str, cast: &str) -> String {
        let fields: Vec<String> = self.columns.iter().map(|c| format!("'{c}', {c}")).collect();
        let filter: Vec<String> = self.key.iter().enumerate().map(|(i, (k, _))| format!("{k} = ${}", i + 1)).collect();
        format!("SELECT {object}({}){cast} FROM {} WHERE {}", fields.join(", "), self.table, filter.join(" AND "))
    }

    /// The row's key as the JSON array text the outbox holds: `array` is the dialect's JSON
    /// array function, `row` the trigger's row (`NEW`, `OLD`) or empty.
    pub fn key_json(&self, array: &str, row: &str, cast: &str) -> String {
        let parts: Vec<String> = self.key.iter().map(|(k, _)| format!("{row}{k}")).collect();
        format!("{array}({}){cast}", parts.join(", "))
    }

    /// Turning the outbox on: every current row.
    pub fn backfill(&self, array: &str, cast: &str) -> String {
        format!(
            "INSERT INTO olap_outbox (kind, app_id, key) SELECT '{}', '', {} FROM {};",
            self.table,
            self.key_json(array, "", cast),
            self.table
        )
    }
}

/// The newest $2 fraud alerts at or after $1.
pub const RECENT_ALERTS: &str = "SELECT rule, app_id, campaign_id, at, detail FROM fraud_alerts WHERE at >= $1
      ORDER BY at DESC, id DESC LIMIT $2";

// ---------------------------------------------------------------------------------------------
// The dashboard's trends, campaign pages and attribution explorer (issue 26).

/// Keeps a row when $n (empty: any) is the campaign in `column`.
macro_rules! of_campaign {
    ($n:literal, $column:literal) => {
        concat!("(CAST($", $n, " AS TEXT) = '' OR ", $column, " = $", $n, ")")
    };
}

/// Keeps a row when $n (empty: any) is the network of the campaign in `column` (app $1).
macro_rules! of_network {
    ($n:literal, $column:literal) => {
        concat!(
            "(CAST($",
            $n,
            " AS TEXT) = '' OR ",
            $column,
            " IN (SELECT campaign_key FROM dim_campaigns WHERE app_id = $1 AND network = $",
            $n,
            "))"
        )
    };
}

/// Events by day and type from the rollup, by the user's campaign: $1 app, $2..=$3 days,
/// $4 campaign, $5 network.
pub const TREND_EVENTS_DAILY: &str = concat!(
    "SELECT date_key, event_type, CAST(sum(events) AS DOUBLE PRECISION), CAST(sum(revenue) AS DOUBLE PRECISION)
       FROM rollup_daily WHERE app_id = $1 AND date_key >= $2 AND date_key <= $3 AND ",
    of_campaign!("4", "campaign_key"),
    " AND ",
    of_network!("5", "campaign_key"),
    " GROUP BY date_key, event_type"
);

/// Events by bucket ($4 ms) and type from the facts, of any campaign: $1 app, $2..$3 (ms, end
/// excluded), $5..=$6 the days they fall on.
pub const TREND_EVENTS_FACTS: &str = "SELECT ts / $4, event_type, CAST(count(*) AS DOUBLE PRECISION),
        CAST(coalesce(sum(revenue), 0) AS DOUBLE PRECISION)
   FROM fact_events WHERE app_id = $1 AND date_key >= $5 AND date_key <= $6 AND ts >= $2 AND ts < $3
  GROUP BY 1, 2";

/// [`TREND_EVENTS_FACTS`] of one campaign ($7) or network ($8) by the user's campaign.
pub const TREND_EVENTS_FACTS_OF: &str = concat!(
    "SELECT f.ts / $4, f.event_type, CAST(count(*) AS DOUBLE PRECISION),
            CAST(coalesce(sum(f.revenue), 0) AS DOUBLE PRECISION)
       FROM fact_events f LEFT JOIN dim_users u ON u.app_id = f.app_id AND u.anonymous_id = f.anonymous_id
      WHERE f.app_id = $1 AND f.date_key >= $5 AND f.date_key <= $6 AND f.ts >= $2 AND f.ts < $3 AND ",
    of_campaign!("7", "coalesce(u.install_campaign_id, u.utm_campaign_key, '')"),
    " AND ",
    of_network!("8", "coalesce(u.install_campaign_id, u.utm_campaign_key, '')"),
    " GROUP BY 1, 2"
);

/// First installs by bucket ($6 ms) and match type, rejected ones as `rejected`, by the
/// campaign credited (or that a rejected one would have been): $1 app, $2..$3 (ms, end
/// excluded), $4 campaign, $5 network.
pub const TREND_INSTALLS: &str = concat!(
    "SELECT install_ts / $6, CASE WHEN rejected THEN 'rejected' ELSE match_type END, CAST(count(*) AS DOUBLE PRECISION)
       FROM installs WHERE app_id = $1 AND install_ts >= $2 AND install_ts < $3 AND kind = 'install' AND ",
    of_campaign!("4", "campaign_id"),
    " AND (CAST($5 AS TEXT) = '' OR network = $5)
      GROUP BY 1, 2"
);

/// Conversions credited under model $6, by day, from the rollup: $1 app, $2..=$3 days,
/// $4 campaign, $5 network.
pub const TREND_CONVERSIONS_DAILY: &str = concat!(
    "SELECT date_key, CAST(sum(conversions) AS DOUBLE PRECISION), CAST(sum(revenue) AS DOUBLE PRECISION)
       FROM rollup_conversions_daily WHERE app_id = $1 AND date_key >= $2 AND date_key <= $3 AND model = $6 AND ",
    of_campaign!("4", "campaign_id"),
    " AND ",
    of_network!("5", "campaign_id"),
    " GROUP BY date_key"
);

/// Conversions credited under model $7, by bucket ($6 ms): $1 app, $2..$3 (ms, end excluded),
/// $4 campaign, $5 network.
pub const TREND_CONVERSIONS_FACTS: &str = concat!(
    "SELECT ts / $6, CAST(sum(credit) AS DOUBLE PRECISION), CAST(coalesce(sum(revenue), 0) AS DOUBLE PRECISION)
       FROM conversions WHERE app_id = $1 AND ts >= $2 AND ts < $3 AND model = $7 AND campaign_id IS NOT NULL AND ",
    of_campaign!("4", "campaign_id"),
    " AND (CAST($5 AS TEXT) = '' OR network = $5) GROUP BY 1"
);

/// A campaign's ($2) clicks and impressions by link on days $3..=$4 of app $1, from the link
/// rollup (clicks flagged as bots or duplicates are not counted, as in the campaign rollup).
pub const CAMPAIGN_LINK_CLICKS: &str = "SELECT link_id, CAST(sum(clicks) AS BIGINT), CAST(sum(impressions) AS BIGINT)
   FROM rollup_link_daily WHERE app_id = $1 AND campaign_id = $2 AND date_key >= $3 AND date_key <= $4
  GROUP BY link_id";

/// One app's ($1) day ($2) of the link rollup, recounted from the clicks in $3..$4 (ms, end
/// excluded); the day's rows are deleted first ([`DELETE_ROLLUP_LINKS`]).
pub const ROLLUP_LINK_DAY: &str =
    "INSERT INTO rollup_link_daily (app_id, campaign_id, date_key, link_id, impressions, clicks)
     SELECT app_id, campaign_id, $2, link_id, sum(CASE WHEN kind = 'impression' THEN 1 ELSE 0 END),
            sum(CASE WHEN kind = 'click' AND (flags & 3) = 0 THEN 1 ELSE 0 END)
       FROM clicks WHERE app_id = $1 AND ts >= $3 AND ts < $4 GROUP BY app_id, campaign_id, link_id";

pub const DELETE_ROLLUP_LINKS: &str = "DELETE FROM rollup_link_daily WHERE app_id = $1 AND date_key = $2";

/// The link rollup filled from the clicks a database already has (schema 10 / 12).
pub const ROLLUP_LINK_BACKFILL: &str =
    "INSERT INTO rollup_link_daily (app_id, campaign_id, date_key, link_id, impressions, clicks)
     SELECT app_id, campaign_id, ts / 86400000, link_id, sum(CASE WHEN kind = 'impression' THEN 1 ELSE 0 END),
            sum(CASE WHEN kind = 'click' AND (flags & 3) = 0 THEN 1 ELSE 0 END)
       FROM clicks GROUP BY 1, 2, 3, 4;";

/// A campaign's ($2) first installs and rejected ones by link in $3..=$4 (ms) of app $1.
pub const CAMPAIGN_LINK_INSTALLS: &str = "SELECT link_id,
        CAST(sum(CASE WHEN rejected THEN 0 ELSE 1 END) AS BIGINT),
        CAST(sum(CASE WHEN rejected THEN 1 ELSE 0 END) AS BIGINT)
   FROM installs WHERE app_id = $1 AND campaign_id = $2 AND install_ts >= $3 AND install_ts <= $4
    AND kind = 'install' AND link_id IS NOT NULL GROUP BY link_id";

/// The answers of a campaign's ($2) rejected first installs in $3..=$4 (ms) of app $1, at most
/// $5 (their fraud flags are counted by rule).
pub const CAMPAIGN_REJECTED: &str = "SELECT result FROM installs WHERE app_id = $1 AND campaign_id = $2
    AND install_ts >= $3 AND install_ts <= $4 AND kind = 'install' AND rejected LIMIT $5";

/// The credit rows of a conversion event ($2) of app $1.
pub const CREDITS_OF_EVENT: &str = concat!(
    "SELECT app_id, event_id, model, click_id, anonymous_id, user_id, event_type, ts, link_id, ",
    "campaign_id, network, touch_ts, credit, revenue, currency FROM conversions WHERE app_id = $1 AND event_id = $2
      ORDER BY model, touch_ts, click_id LIMIT $3"
);

/// The credit rows of a device's ($2) conversions in app $1, newest first.
pub const CREDITS_OF_DEVICE: &str = concat!(
    "SELECT app_id, event_id, model, click_id, anonymous_id, user_id, event_type, ts, link_id, ",
    "campaign_id, network, touch_ts, credit, revenue, currency FROM conversions WHERE app_id = $1 AND anonymous_id = $2
      ORDER BY ts DESC, event_id, model, touch_ts, click_id LIMIT $3"
);

/// Installs by time (issue 26: the trend of installs by match type reads a range of them).
pub const INSTALLS_TIME: &str = "CREATE INDEX installs_time ON installs (app_id, install_ts);";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement of this module.
    const ALL: &[&str] = &[
        INSERT_CAMPAIGN,
        UPSERT_LINK,
        INSERT_LINK_AUDIT,
        LINK_AUDIT,
        INSERT_CLICK,
        CLICK_PARAMS,
        INSERT_INSTALL,
        SAVE_TEST_DEVICE,
        REMOVE_TEST_DEVICE,
        TEST_DEVICES,
        INSERT_FRAUD_ALERT,
        INSERT_TOUCHPOINT,
        INSERT_REENGAGEMENT,
        CONVERSION_TOUCHPOINTS,
        CONVERSION_CREDITED,
        INSERT_CONVERSION,
        INSERT_POSTBACK,
        POSTBACK_PENDING,
        LATEST_CONTEXT,
        INSERT_POSTBACK_ATTEMPT,
        UPDATE_POSTBACK,
        PENDING_POSTBACKS,
        USER_ANONYMOUS_IDS,
        DEVICE_ANONYMOUS_IDS,
        INSERT_DELETION_AUDIT,
        FACT_ROWS,
        PENDING_EVENTS,
        QUEUE_HORIZON,
        ETL_STATE,
        SESSIONS_STARTING_IN,
        SESSION_BEFORE,
        MOVE_SESSION_FACTS,
        DELETE_SESSION,
        DELETE_ROLLUP_DAILY,
        DELETE_ROLLUP_CONVERSIONS,
        DELETE_EMPTY_CAMPAIGN_DAYS,
        PURGE_CLICKS,
        CAMPAIGN_APP,
        OTHER_COST_CURRENCY,
        COHORT_USERS,
        COHORT_ACTIVE_DAYS,
        RECENT_ALERTS,
        TREND_EVENTS_DAILY,
        TREND_EVENTS_FACTS,
        TREND_EVENTS_FACTS_OF,
        ROLLUP_LINK_DAY,
        DELETE_ROLLUP_LINKS,
        TREND_INSTALLS,
        TREND_CONVERSIONS_DAILY,
        TREND_CONVERSIONS_FACTS,
        CAMPAIGN_LINK_CLICKS,
        CAMPAIGN_LINK_INSTALLS,
        CAMPAIGN_REJECTED,
        CREDITS_OF_EVENT,
        CREDITS_OF_DEVICE,
        LINKED_USER,
        INSERT_USER_LINK,
        REPOINT_USER_LINKS,
        IDENTITY_LINKS,
        OLAP_ENTRY,
        OLAP_PAGE,
        OLAP_PENDING,
        OLAP_USER,
        OLAP_SESSION,
    ];

    #[test]
    fn placeholders_become_sqlites() {
        assert_eq!(to_sqlite("a = $1 AND b IN ($2, lower($2)) LIMIT $10"), "a = ?1 AND b IN (?2, lower(?2)) LIMIT ?10");
        // Not a placeholder: dollar quoting, a `$` before a letter or at the end, other text.
        assert_eq!(to_sqlite("AS $$ BEGIN END $$; $x $"), "AS $$ BEGIN END $$; $x $");
        assert_eq!(to_sqlite("'€' = $1"), "'€' = ?1");
        assert_eq!(to_sqlite(""), "");
    }

    #[test]
    fn the_compile_time_rewrite_is_the_run_time_one() {
        const INSERT: &str = sqlite!(INSERT_CLICK);
        assert_eq!(INSERT, to_sqlite(INSERT_CLICK));
        assert!(INSERT.contains("VALUES (?1, ?2,") && INSERT.contains("?23)"), "{INSERT}");
        assert_eq!(sqlite!("SELECT $1, '$', $$, $12"), "SELECT ?1, '$', $$, ?12");
        const BYTES: [u8; 4] = sqlite_bytes::<4>("$1$2");
        assert_eq!(&BYTES, b"?1?2");
    }

    #[test]
    fn every_statement_is_valid_sqlite_once_rewritten() {
        // Against the SQLite store's real schema: each statement prepares.
        let dir = tempfile::tempdir().unwrap();
        let _store = crate::storage::SqliteStorage::open(dir.path().join("s.db"), Default::default(), 4, 10).unwrap();
        let conn = rusqlite::Connection::open(dir.path().join("s.db")).unwrap();
        let built = [
            delete_by_subject("events", "user_id"),
            delete_by_anonymous_id("touchpoints"),
            OLAP_FACT.replace("{ord}", "rowid"),
            OLAP_MIRRORED[2].row_json("json_object", ""),
            OLAP_MIRRORED[2].backfill("json_array", ""),
            OLAP_BACKFILL.split(';').next().unwrap().to_owned(),
            zero_campaign_columns(&["installs", "rejected_installs"]),
            format!(
                "INSERT INTO rollup_campaign_daily (app_id, date_key, campaign_id, clicks) VALUES ($1, $2, $3, $4) {}",
                campaign_columns_on_conflict(&["clicks"])
            ),
        ];
        let identifiers = ID_TABLES
            .iter()
            .flat_map(|t| [identifier_rows(t), identifier_rows_first(t), rewrite_identifiers(t)])
            .chain(USER_ID_TABLES.iter().flat_map(|t| [raw_user_ids(t), replace_user_id(t)]));
        let built: Vec<String> = built.into_iter().chain(identifiers).collect();
        for sql in ALL
            .iter()
            .copied()
            .chain([IDENTIFIERS_VERSION, SET_IDENTIFIERS_VERSION])
            .chain(built.iter().map(String::as_str))
        {
            let sqlite = to_sqlite(sql);
            assert!(!sqlite.as_bytes().windows(2).any(|w| w[0] == b'$' && w[1].is_ascii_digit()), "{sqlite}");
            conn.prepare(&sqlite).unwrap_or_else(|e| panic!("{e}: {sqlite}"));
        }
    }
}
