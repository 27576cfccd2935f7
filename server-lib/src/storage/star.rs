//! The reporting side of the SQLite store: a star schema kept from the raw `events` table,
//! server-side sessions, daily rollups, and the retention purge.
//!
//! Ingest stays as fast as before: a trigger only notes each new event in `etl_pending`. The
//! maintenance job ([`refresh`]) turns pending events into `fact_events` rows, updates
//! `dim_users`, `dim_date` and `dim_campaigns`, assigns sessions, and recomputes the rollups of
//! the days something changed on. Reports run a refresh first, so they never lag; the scheduler
//! runs it every few seconds so the work stays small.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::Value;

use super::{StorageError, backend};
use crate::domain::records::{
    CampaignCost, CampaignDay, FactRow, FraudAlert, PurgeReport, RefreshReport, ReportQuery, ReportRows,
    RetentionCutoffs, UserRow,
};

pub const DAY_MS: i64 = 86_400_000;

/// Tables, indexes and triggers of schema version 3.
pub const SCHEMA_V3: &str = "
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

/// The UTC day (days since 1970-01-01) of a Unix-ms time.
pub fn day_of(ts: i64) -> i64 {
    ts.div_euclid(DAY_MS)
}

/// `YYYY-MM-DD` of a day key.
pub fn date_text(day: i64) -> String {
    chrono::DateTime::from_timestamp_millis(day * DAY_MS).map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

fn state_get(tx: &Connection, key: &str) -> Result<Option<i64>, StorageError> {
    tx.query_row("SELECT value FROM etl_state WHERE key = ?1", [key], |r| r.get(0)).optional().map_err(backend)
}

fn state_set(tx: &Transaction<'_>, key: &str, value: i64) -> Result<(), StorageError> {
    tx.execute("INSERT OR REPLACE INTO etl_state (key, value) VALUES (?1, ?2)", params![key, value])
        .map_err(backend)?;
    Ok(())
}

struct Pending {
    event_id: String,
    event_type: String,
    anonymous_id: String,
    user_id: Option<String>,
    ts: i64,
    properties: String,
    context: String,
}

/// The campaign key of a web or app event that carries `utm_*` context (first touch).
pub fn utm_key(context: &Value) -> Option<(String, String, String)> {
    let c = context.get("campaign")?;
    let name = c.get("utm_campaign").and_then(Value::as_str).filter(|s| !s.is_empty())?;
    let source = c.get("utm_source").and_then(Value::as_str).unwrap_or("");
    Some((format!("utm:{source}:{name}"), name.to_owned(), source.to_owned()))
}

/// Revenue and currency of an event's properties (JSON text).
pub fn money(properties: &str) -> (Option<f64>, Option<String>) {
    // Most events carry neither; parse only those that might.
    if !properties.contains("\"revenue\"") && !properties.contains("\"currency\"") {
        return (None, None);
    }
    let properties: Value = serde_json::from_str(properties).unwrap_or(Value::Null);
    (
        properties.get("revenue").and_then(Value::as_f64).filter(|r| r.is_finite()),
        properties.get("currency").and_then(Value::as_str).map(str::to_owned),
    )
}

/// Turns up to `batch` pending events into facts, users and sessions; returns how many it took.
pub fn etl_batch(tx: &Transaction<'_>, batch: usize, session_gap: i64, horizon: i64) -> Result<usize, StorageError> {
    let mut rows: BTreeMap<(String, String), Vec<Pending>> = BTreeMap::new();
    let mut last_seq = None;
    let mut taken = 0;
    {
        let mut stmt = tx
            .prepare_cached(
                "SELECT p.seq, p.app_id, e.event_id, e.type, e.anonymous_id, e.user_id, e.corrected_ts, e.properties,
                        e.context
                   FROM etl_pending p LEFT JOIN events e ON e.app_id = p.app_id AND e.event_id = p.event_id
                  WHERE p.seq <= ?2 ORDER BY p.seq LIMIT ?1",
            )
            .map_err(backend)?;
        let mut q = stmt.query(params![batch as i64, horizon]).map_err(backend)?;
        while let Some(r) = q.next().map_err(backend)? {
            taken += 1;
            last_seq = Some(r.get::<_, i64>(0).map_err(backend)?);
            // The event may have been deleted (a user deletion) before it was processed.
            let Some(event_id) = r.get::<_, Option<String>>(2).map_err(backend)? else { continue };
            let app_id: String = r.get(1).map_err(backend)?;
            let p = Pending {
                event_id,
                event_type: r.get(3).map_err(backend)?,
                anonymous_id: r.get(4).map_err(backend)?,
                user_id: r.get(5).map_err(backend)?,
                ts: r.get(6).map_err(backend)?,
                properties: r.get(7).map_err(backend)?,
                context: r.get(8).map_err(backend)?,
            };
            rows.entry((app_id, p.anonymous_id.clone())).or_default().push(p);
        }
    }
    let Some(last_seq) = last_seq else { return Ok(0) };
    let events_cutoff = state_get(tx, "events_cutoff_day")?.unwrap_or(i64::MIN);
    let mut days: std::collections::BTreeSet<(String, i64)> = std::collections::BTreeSet::new();
    for ((app_id, anonymous_id), mut events) in rows {
        events.sort_by_key(|e| e.ts);
        let keys = sessionize(tx, &app_id, &anonymous_id, &events, session_gap)?;
        let mut user = UserFacts::default();
        for (e, session) in events.iter().zip(keys) {
            let day = day_of(e.ts);
            let (revenue, currency) = money(&e.properties);
            tx.prepare_cached(
                "INSERT INTO fact_events (app_id, event_id, date_key, ts, event_type, anonymous_id, user_id,
                         session_key, revenue, currency)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(backend)?
            .execute(params![
                app_id,
                e.event_id,
                day,
                e.ts,
                e.event_type,
                anonymous_id,
                e.user_id,
                session,
                revenue,
                currency
            ])
            .map_err(backend)?;
            if user.utm.is_none() && e.context.contains("utm_campaign") {
                let context: Value = serde_json::from_str(&e.context).unwrap_or(Value::Null);
                if let Some((key, name, source)) = utm_key(&context) {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO dim_campaigns (campaign_key, app_id, campaign_id, kind, name, network,
                             created_at) VALUES (?1, ?2, NULL, 'utm', ?3, ?4, ?5)",
                    )
                    .map_err(backend)?
                    .execute(params![key, app_id, name, source, e.ts])
                    .map_err(backend)?;
                    user.utm = Some(key);
                }
            }
            user.first = user.first.min(e.ts);
            user.last = user.last.max(e.ts);
            user.events += 1;
            if e.user_id.is_some() {
                user.user_id = e.user_id.clone();
            }
            days.insert((app_id.clone(), day));
        }
        if user.events == 0 {
            continue;
        }
        tx.prepare_cached(
            "INSERT INTO dim_users (app_id, anonymous_id, user_id, first_seen, last_seen, events, utm_campaign_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (app_id, anonymous_id) DO UPDATE SET
                 user_id = coalesce(excluded.user_id, user_id),
                 first_seen = min(first_seen, excluded.first_seen),
                 last_seen = max(last_seen, excluded.last_seen),
                 events = events + excluded.events,
                 utm_campaign_key = coalesce(utm_campaign_key, excluded.utm_campaign_key)",
        )
        .map_err(backend)?
        .execute(params![app_id, anonymous_id, user.user_id, user.first, user.last, user.events, user.utm])
        .map_err(backend)?;
    }
    for (app_id, day) in &days {
        if *day >= events_cutoff {
            tx.prepare_cached("INSERT OR IGNORE INTO rollup_dirty VALUES (?1, ?2, 'events')")
                .map_err(backend)?
                .execute(params![app_id, day])
                .map_err(backend)?;
        }
        ensure_date(tx, *day)?;
    }
    tx.execute("DELETE FROM etl_pending WHERE seq <= ?1", [last_seq]).map_err(backend)?;
    Ok(taken)
}

/// What one batch learned about one device, written as one `dim_users` upsert.
struct UserFacts {
    user_id: Option<String>,
    first: i64,
    last: i64,
    events: i64,
    utm: Option<String>,
}

impl Default for UserFacts {
    fn default() -> Self {
        UserFacts { user_id: None, first: i64::MAX, last: i64::MIN, events: 0, utm: None }
    }
}

fn ensure_date(tx: &Transaction<'_>, day: i64) -> Result<(), StorageError> {
    use chrono::Datelike;
    let Some(d) = chrono::DateTime::from_timestamp_millis(day * DAY_MS) else { return Ok(()) };
    tx.prepare_cached("INSERT OR IGNORE INTO dim_date VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
        .map_err(backend)?
        .execute(params![
            day,
            d.format("%Y-%m-%d").to_string(),
            d.year(),
            d.month(),
            d.day(),
            d.weekday().number_from_monday(),
            d.iso_week().week()
        ])
        .map_err(backend)?;
    Ok(())
}

/// A stored session of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    pub key: String,
    pub start: i64,
    pub end: i64,
    pub events: i64,
    pub user_id: Option<String>,
}

/// One device's session, as the batch changes it.
struct Session {
    s: StoredSession,
    /// Stored before this batch.
    stored: bool,
    /// Merged into another session (its key is then in `into`).
    into: Option<usize>,
}

/// What a batch does to one device's sessions.
#[derive(Debug, Default)]
pub struct SessionPlan {
    /// Each event's session key, in the order of the events.
    pub assigned: Vec<String>,
    /// Stored sessions merged into another: (merged key, kept key). Their facts move to the
    /// kept key and their row goes.
    pub merged: Vec<(String, String)>,
    /// Sessions to insert or update.
    pub upserts: Vec<StoredSession>,
}

/// Assigns one device's events (in time order: (time, event id, user id)) to sessions: an
/// event within `gap` of a session's bounds joins it, an event that bridges two sessions merges
/// them, any other starts one (keyed by its time and event id). `stored` are the device's
/// sessions that end at or after the first event − gap and start at or before the last + gap.
/// Pure: both stores read the sessions, plan, and write the plan.
pub fn plan_sessions(stored: Vec<StoredSession>, events: &[(i64, &str, Option<&str>)], gap: i64) -> SessionPlan {
    let mut sessions: Vec<Session> = stored.into_iter().map(|s| Session { s, stored: true, into: None }).collect();
    let mut assigned = Vec::with_capacity(events.len());
    for &(ts, event_id, user_id) in events {
        let near: Vec<usize> = (0..sessions.len())
            .filter(|&i| sessions[i].into.is_none() && sessions[i].s.end >= ts - gap && sessions[i].s.start <= ts + gap)
            .collect();
        let target = match near.first() {
            None => {
                sessions.push(Session {
                    s: StoredSession {
                        // Time first: new sessions land at the end of the key indexes.
                        key: format!("{:013}-{}", ts.max(0), event_id),
                        start: ts,
                        end: ts,
                        events: 0,
                        user_id: None,
                    },
                    stored: false,
                    into: None,
                });
                sessions.len() - 1
            }
            Some(&keep) => {
                for &other in &near[1..] {
                    let (start, end, n) = (sessions[other].s.start, sessions[other].s.end, sessions[other].s.events);
                    let user = sessions[other].s.user_id.take();
                    sessions[other].into = Some(keep);
                    let s = &mut sessions[keep].s;
                    s.start = s.start.min(start);
                    s.end = s.end.max(end);
                    s.events += n;
                    if s.user_id.is_none() {
                        s.user_id = user;
                    }
                }
                keep
            }
        };
        let s = &mut sessions[target].s;
        s.start = s.start.min(ts);
        s.end = s.end.max(ts);
        s.events += 1;
        if let Some(u) = user_id {
            s.user_id = Some(u.to_owned());
        }
        assigned.push(target);
    }
    // Where each session ended up, following merges.
    let root = |mut i: usize| {
        while let Some(j) = sessions[i].into {
            i = j;
        }
        i
    };
    let roots: Vec<usize> = (0..sessions.len()).map(root).collect();
    let mut plan = SessionPlan {
        assigned: assigned.into_iter().map(|i| sessions[roots[i]].s.key.clone()).collect(),
        ..Default::default()
    };
    for (i, s) in sessions.iter().enumerate() {
        if roots[i] != i {
            if s.stored {
                plan.merged.push((s.s.key.clone(), sessions[roots[i]].s.key.clone()));
            }
        } else {
            plan.upserts.push(s.s.clone());
        }
    }
    plan
}

/// Reads one device's nearby sessions, plans the batch's events into them and writes the plan;
/// returns each event's session key.
fn sessionize(
    tx: &Transaction<'_>,
    app_id: &str,
    anonymous_id: &str,
    events: &[Pending],
    gap: i64,
) -> Result<Vec<String>, StorageError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else { return Ok(Vec::new()) };
    let stored: Vec<StoredSession> = {
        let mut stmt = tx
            .prepare_cached(
                "SELECT session_key, start_ts, end_ts, events, user_id FROM sessions
                  WHERE app_id = ?1 AND anonymous_id = ?2 AND end_ts >= ?3 AND start_ts <= ?4
                  ORDER BY start_ts, session_key",
            )
            .map_err(backend)?;
        stmt.query_map(params![app_id, anonymous_id, first.ts - gap, last.ts + gap], |r| {
            Ok(StoredSession {
                key: r.get(0)?,
                start: r.get(1)?,
                end: r.get(2)?,
                events: r.get(3)?,
                user_id: r.get(4)?,
            })
        })
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)?
    };
    let input: Vec<(i64, &str, Option<&str>)> =
        events.iter().map(|e| (e.ts, e.event_id.as_str(), e.user_id.as_deref())).collect();
    let plan = plan_sessions(stored, &input, gap);
    for (gone, keep) in &plan.merged {
        tx.execute(
            "UPDATE fact_events SET session_key = ?1 WHERE app_id = ?2 AND session_key = ?3",
            params![keep, app_id, gone],
        )
        .map_err(backend)?;
        tx.execute("DELETE FROM sessions WHERE app_id = ?1 AND session_key = ?2", params![app_id, gone])
            .map_err(backend)?;
    }
    for s in &plan.upserts {
        tx.prepare_cached(
            "INSERT INTO sessions (app_id, session_key, anonymous_id, user_id, start_ts, end_ts, events)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (app_id, session_key) DO UPDATE SET user_id = excluded.user_id,
                 start_ts = excluded.start_ts, end_ts = excluded.end_ts, events = excluded.events",
        )
        .map_err(backend)?
        .execute(params![app_id, s.key, anonymous_id, s.user_id, s.start, s.end, s.events])
        .map_err(backend)?;
    }
    Ok(plan.assigned)
}

/// Recomputes the rollups of every (app, day, source) marked dirty; returns how many.
pub fn refresh_rollups(tx: &Transaction<'_>) -> Result<usize, StorageError> {
    let dirty: Vec<(String, i64, String)> = {
        let mut stmt = tx.prepare("SELECT app_id, date_key, source FROM rollup_dirty").map_err(backend)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?
    };
    let events_cutoff = state_get(tx, "events_cutoff_day")?.unwrap_or(i64::MIN);
    let clicks_cutoff = state_get(tx, "clicks_cutoff_day")?.unwrap_or(i64::MIN);
    for (app, day, source) in &dirty {
        let (from, to) = (day * DAY_MS, (day + 1) * DAY_MS);
        match source.as_str() {
            // Days already purged keep the rollup they had: recomputing would count nothing.
            "events" if *day >= events_cutoff => {
                tx.execute("DELETE FROM rollup_daily WHERE app_id = ?1 AND date_key = ?2", params![app, day])
                    .map_err(backend)?;
                tx.execute(
                    "INSERT INTO rollup_daily (app_id, date_key, campaign_key, event_type, events, users, revenue)
                     SELECT f.app_id, f.date_key, coalesce(u.install_campaign_id, u.utm_campaign_key, ''),
                            f.event_type, count(*), count(DISTINCT f.anonymous_id), coalesce(sum(f.revenue), 0)
                       FROM fact_events f
                       LEFT JOIN dim_users u ON u.app_id = f.app_id AND u.anonymous_id = f.anonymous_id
                      WHERE f.app_id = ?1 AND f.date_key = ?2
                      GROUP BY 3, 4",
                    params![app, day],
                )
                .map_err(backend)?;
            }
            "clicks" if *day >= clicks_cutoff => {
                upsert_campaign_columns(
                    tx,
                    app,
                    *day,
                    &["impressions", "clicks"],
                    "SELECT campaign_id, sum(kind = 'impression'), sum(kind = 'click' AND (flags & 3) = 0) FROM clicks
                      WHERE app_id = ?1 AND ts >= ?2 AND ts < ?3 GROUP BY campaign_id",
                    from,
                    to,
                )?;
            }
            "installs" => {
                upsert_campaign_columns(
                    tx,
                    app,
                    *day,
                    &["installs", "rejected_installs"],
                    "SELECT campaign_id, sum(rejected = 0), sum(rejected <> 0) FROM installs
                      WHERE app_id = ?1 AND install_ts >= ?2 AND install_ts < ?3 AND kind = 'install'
                        AND campaign_id IS NOT NULL GROUP BY campaign_id",
                    from,
                    to,
                )?;
            }
            "conversions" => {
                tx.execute(
                    "DELETE FROM rollup_conversions_daily WHERE app_id = ?1 AND date_key = ?2",
                    params![app, day],
                )
                .map_err(backend)?;
                tx.execute(
                    "INSERT INTO rollup_conversions_daily (app_id, date_key, campaign_id, model, conversions, revenue)
                     SELECT app_id, ?2, campaign_id, model, sum(credit), coalesce(sum(revenue), 0) FROM conversions
                      WHERE app_id = ?1 AND ts >= ?3 AND ts < ?4 AND campaign_id IS NOT NULL
                      GROUP BY campaign_id, model",
                    params![app, day, from, to],
                )
                .map_err(backend)?;
            }
            _ => {}
        }
    }
    tx.execute("DELETE FROM rollup_dirty", []).map_err(backend)?;
    Ok(dirty.len())
}

/// Sets `columns` of one app's day from `select` (campaign id, then one value per column),
/// zeroing campaigns that no longer appear.
fn upsert_campaign_columns(
    tx: &Transaction<'_>,
    app: &str,
    day: i64,
    columns: &[&str],
    select: &str,
    from: i64,
    to: i64,
) -> Result<(), StorageError> {
    let zero = columns.iter().map(|c| format!("{c} = 0")).collect::<Vec<_>>().join(", ");
    tx.execute(
        &format!("UPDATE rollup_campaign_daily SET {zero} WHERE app_id = ?1 AND date_key = ?2"),
        params![app, day],
    )
    .map_err(backend)?;
    let names = columns.join(", ");
    let values = (0..columns.len()).map(|i| format!("?{}", i + 4)).collect::<Vec<_>>().join(", ");
    let set = columns.iter().map(|c| format!("{c} = excluded.{c}")).collect::<Vec<_>>().join(", ");
    let mut read = tx.prepare(select).map_err(backend)?;
    let rows: Vec<(String, Vec<i64>)> = read
        .query_map(params![app, from, to], |r| {
            let mut values = Vec::with_capacity(columns.len());
            for i in 0..columns.len() {
                values.push(r.get::<_, i64>(i + 1)?);
            }
            Ok((r.get(0)?, values))
        })
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    let mut write = tx
        .prepare(&format!(
            "INSERT INTO rollup_campaign_daily (app_id, date_key, campaign_id, {names}) VALUES (?1, ?2, ?3, {values})
             ON CONFLICT (app_id, date_key, campaign_id) DO UPDATE SET {set}"
        ))
        .map_err(backend)?;
    for (campaign, vals) in rows {
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&app, &day, &campaign];
        for v in &vals {
            args.push(v);
        }
        write.execute(args.as_slice()).map_err(backend)?;
    }
    tx.execute(
        "DELETE FROM rollup_campaign_daily WHERE app_id = ?1 AND date_key = ?2
            AND impressions = 0 AND clicks = 0 AND installs = 0 AND rejected_installs = 0",
        params![app, day],
    )
    .map_err(backend)?;
    Ok(())
}

/// One refresh step: an ETL batch, then (when the pending queue is empty) the rollups.
/// `horizon`: the queue position to stop at (`None`: the newest entry now), so a refresh ends
/// even while ingest keeps adding to the queue; the report says which horizon it used.
pub fn refresh_step(
    tx: &Transaction<'_>,
    batch: usize,
    session_gap: i64,
    horizon: Option<i64>,
) -> Result<RefreshReport, StorageError> {
    let horizon = match horizon {
        Some(h) => h,
        None => tx.query_row("SELECT coalesce(max(seq), 0) FROM etl_pending", [], |r| r.get(0)).map_err(backend)?,
    };
    let events = etl_batch(tx, batch, session_gap, horizon)?;
    let done = events < batch;
    let rollups = if done { refresh_rollups(tx)? } else { 0 };
    Ok(RefreshReport { events, rollups, done, horizon })
}

/// Retention, first step: from now on the rollups of days before the cut-offs are final.
pub fn purge_begin(tx: &Transaction<'_>, cutoffs: &RetentionCutoffs) -> Result<(), StorageError> {
    // Only forward: a longer retention set later (or a clock set back) must not reopen days
    // whose raw data is gone, or their rollups would be recomputed from nothing.
    for (key, day) in [("events_cutoff_day", day_of(cutoffs.events)), ("clicks_cutoff_day", day_of(cutoffs.clicks))] {
        let old = state_get(tx, key)?.unwrap_or(i64::MIN);
        state_set(tx, key, old.max(day))?;
    }
    Ok(())
}

/// Retention, repeated step: deletes up to `limit` facts of days before the events cut-off and
/// their raw events (found through the facts' day index, so no step scans the events table).
/// Returns (events, facts) deleted; fewer facts than `limit` means none is left.
pub fn purge_events(
    tx: &Transaction<'_>,
    cutoffs: &RetentionCutoffs,
    limit: usize,
) -> Result<(u64, u64), StorageError> {
    let rows: Vec<(i64, String, String)> = {
        let mut stmt = tx
            .prepare_cached("SELECT rowid, app_id, event_id FROM fact_events WHERE date_key < ?1 LIMIT ?2")
            .map_err(backend)?;
        stmt.query_map(params![day_of(cutoffs.events), limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?
    };
    let mut events = 0;
    for (rowid, app_id, event_id) in &rows {
        events += tx
            .prepare_cached("DELETE FROM events WHERE app_id = ?1 AND event_id = ?2")
            .map_err(backend)?
            .execute(params![app_id, event_id])
            .map_err(backend)? as u64;
        tx.prepare_cached("DELETE FROM fact_events WHERE rowid = ?1")
            .map_err(backend)?
            .execute([rowid])
            .map_err(backend)?;
    }
    Ok((events, rows.len() as u64))
}

/// Retention, last step: expired clicks and impressions, and orphaned rows. The caller
/// refreshes first, so everything deleted is rolled up.
pub fn purge_rest(tx: &Transaction<'_>, cutoffs: &RetentionCutoffs) -> Result<PurgeReport, StorageError> {
    let ms = day_of(cutoffs.events) * DAY_MS;
    let clicks_ms = day_of(cutoffs.clicks) * DAY_MS;
    let mut report = PurgeReport {
        clicks: tx.execute("DELETE FROM clicks WHERE ts < ?1", [clicks_ms]).map_err(backend)? as u64,
        // A session goes with its last fact.
        sessions: tx
            .execute(
                "DELETE FROM sessions WHERE NOT EXISTS (SELECT 1 FROM fact_events f
                    WHERE f.app_id = sessions.app_id AND f.session_key = sessions.session_key)",
                [],
            )
            .map_err(backend)? as u64,
        ..Default::default()
    };
    // Orphans: users with no event left and no install, queue entries for deleted events,
    // delivery attempts of deleted postbacks.
    report.orphans += tx
        .execute(
            "DELETE FROM dim_users WHERE install_ts IS NULL AND last_seen < ?1
                AND NOT EXISTS (SELECT 1 FROM fact_events f
                                 WHERE f.app_id = dim_users.app_id AND f.anonymous_id = dim_users.anonymous_id)",
            [ms],
        )
        .map_err(backend)? as u64;
    report.orphans += tx
        .execute(
            "DELETE FROM etl_pending WHERE NOT EXISTS (SELECT 1 FROM events e
                WHERE e.app_id = etl_pending.app_id AND e.event_id = etl_pending.event_id)",
            [],
        )
        .map_err(backend)? as u64;
    report.orphans += tx
        .execute(
            "DELETE FROM postback_attempts WHERE NOT EXISTS (SELECT 1 FROM postbacks p
                WHERE p.id = postback_attempts.postback_id)",
            [],
        )
        .map_err(backend)? as u64;
    Ok(report)
}

/// Stores (or replaces) one day's cost of a campaign. Errors name what is wrong.
pub fn save_cost(tx: &Transaction<'_>, cost: &CampaignCost) -> Result<Result<(), String>, StorageError> {
    let app: Option<String> = tx
        .query_row("SELECT app_id FROM campaigns WHERE campaign_id = ?1", [&cost.campaign_id], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    let Some(app) = app else { return Ok(Err("no campaign with this id".into())) };
    let other: Option<String> = tx
        .query_row(
            "SELECT currency FROM campaign_costs WHERE campaign_id = ?1 AND currency <> ?2 AND date_key <> ?3 LIMIT 1",
            params![cost.campaign_id, cost.currency, cost.date_key],
            |r| r.get(0),
        )
        .optional()
        .map_err(backend)?;
    if let Some(other) = other {
        return Ok(Err(format!("this campaign's costs are in {other}; post every cost in one currency")));
    }
    tx.execute(
        "INSERT OR REPLACE INTO campaign_costs (campaign_id, app_id, date_key, amount, currency, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![cost.campaign_id, app, cost.date_key, cost.amount, cost.currency, cost.updated_at],
    )
    .map_err(backend)?;
    Ok(Ok(()))
}

fn fact_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<FactRow> {
    Ok(FactRow {
        anonymous_id: r.get(0)?,
        user_id: r.get(1)?,
        event_type: r.get(2)?,
        ts: r.get(3)?,
        session_key: r.get(4)?,
        campaign_key: r.get(5)?,
    })
}

/// The columns of a [`FactRow`] (the device's campaign from `dim_users`), the same SQL in both
/// stores; a query adds its `WHERE` and `ORDER BY`.
pub const FACT_ROWS: &str = "SELECT f.anonymous_id, u.user_id, f.event_type, f.ts, f.session_key,
        coalesce(u.install_campaign_id, u.utm_campaign_key)
   FROM fact_events f
   LEFT JOIN dim_users u ON u.app_id = f.app_id AND u.anonymous_id = f.anonymous_id";

/// Rows for a report, read from the star schema.
pub fn report(conn: &Connection, query: &ReportQuery) -> Result<ReportRows, StorageError> {
    match query {
        ReportQuery::Events { app_id, types, from, to } => {
            let placeholders = (0..types.len()).map(|i| format!("?{}", i + 4)).collect::<Vec<_>>().join(", ");
            let filter = if types.is_empty() { String::new() } else { format!("AND f.event_type IN ({placeholders})") };
            let sql = format!(
                "{FACT_ROWS} WHERE f.app_id = ?1 AND f.ts >= ?2 AND f.ts <= ?3 {filter} ORDER BY f.ts, f.rowid"
            );
            let mut stmt = conn.prepare(&sql).map_err(backend)?;
            let mut args: Vec<&dyn rusqlite::ToSql> = vec![app_id, from, to];
            for t in types {
                args.push(t);
            }
            let rows = stmt
                .query_map(args.as_slice(), fact_row)
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(ReportRows::Events(rows))
        }
        ReportQuery::SessionsWith { app_id, event_type, from, to } => {
            let mut stmt = conn
                .prepare(&format!(
                    "{FACT_ROWS} WHERE f.app_id = ?1 AND f.session_key IN (
                            SELECT session_key FROM fact_events
                             WHERE app_id = ?1 AND event_type = ?2 AND ts >= ?3 AND ts <= ?4)
                      ORDER BY f.session_key, f.ts, f.rowid"
                ))
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![app_id, event_type, from, to], fact_row)
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(ReportRows::Events(rows))
        }
        ReportQuery::Cohorts { app_id, from_day, to_day, max_offset } => {
            let mut stmt = conn
                .prepare(
                    "SELECT anonymous_id, user_id, coalesce(install_ts, first_seen) FROM dim_users
                      WHERE app_id = ?1 AND coalesce(install_ts, first_seen) < ?2",
                )
                .map_err(backend)?;
            // Devices that started after the last cohort day cannot be in any cohort.
            let users: Vec<UserRow> = stmt
                .query_map(params![app_id, (to_day + 1) * DAY_MS], |r| {
                    Ok(UserRow { anonymous_id: r.get(0)?, user_id: r.get(1)?, start: r.get(2)?, active_days: vec![] })
                })
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            let mut by_anon: std::collections::HashMap<String, UserRow> =
                users.into_iter().map(|u| (u.anonymous_id.clone(), u)).collect();
            let mut stmt = conn
                .prepare(
                    "SELECT DISTINCT anonymous_id, date_key FROM fact_events
                      WHERE app_id = ?1 AND date_key >= ?2 AND date_key <= ?3",
                )
                .map_err(backend)?;
            let mut q = stmt.query(params![app_id, from_day, to_day + max_offset]).map_err(backend)?;
            while let Some(r) = q.next().map_err(backend)? {
                let anon: String = r.get(0).map_err(backend)?;
                if let Some(u) = by_anon.get_mut(&anon) {
                    u.active_days.push(r.get(1).map_err(backend)?);
                }
            }
            let mut users: Vec<UserRow> = by_anon.into_values().collect();
            users.sort_by(|a, b| a.anonymous_id.cmp(&b.anonymous_id));
            Ok(ReportRows::Users(users))
        }
        ReportQuery::Campaigns { app_id, from_day, to_day, model } => {
            let mut stmt = conn
                .prepare(
                    "SELECT d.campaign_key, d.name, d.network,
                            coalesce((SELECT sum(impressions) FROM rollup_campaign_daily r WHERE r.app_id = ?1
                                AND r.campaign_id = d.campaign_key AND r.date_key BETWEEN ?2 AND ?3), 0),
                            coalesce((SELECT sum(clicks) FROM rollup_campaign_daily r WHERE r.app_id = ?1
                                AND r.campaign_id = d.campaign_key AND r.date_key BETWEEN ?2 AND ?3), 0),
                            coalesce((SELECT sum(installs) FROM rollup_campaign_daily r WHERE r.app_id = ?1
                                AND r.campaign_id = d.campaign_key AND r.date_key BETWEEN ?2 AND ?3), 0),
                            coalesce((SELECT sum(rejected_installs) FROM rollup_campaign_daily r WHERE r.app_id = ?1
                                AND r.campaign_id = d.campaign_key AND r.date_key BETWEEN ?2 AND ?3), 0),
                            coalesce((SELECT sum(conversions) FROM rollup_conversions_daily r WHERE r.app_id = ?1
                                AND r.campaign_id = d.campaign_key AND r.model = ?4
                                AND r.date_key BETWEEN ?2 AND ?3), 0),
                            coalesce((SELECT sum(revenue) FROM rollup_conversions_daily r WHERE r.app_id = ?1
                                AND r.campaign_id = d.campaign_key AND r.model = ?4
                                AND r.date_key BETWEEN ?2 AND ?3), 0),
                            (SELECT sum(amount) FROM campaign_costs c WHERE c.campaign_id = d.campaign_key
                                AND c.date_key BETWEEN ?2 AND ?3),
                            (SELECT max(currency) FROM campaign_costs c WHERE c.campaign_id = d.campaign_key)
                       FROM dim_campaigns d WHERE d.app_id = ?1 AND d.kind = 'link'
                      ORDER BY d.created_at, d.campaign_key",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![app_id, from_day, to_day, model], |r| {
                    Ok(CampaignDay {
                        campaign_id: r.get(0)?,
                        name: r.get(1)?,
                        network: r.get(2)?,
                        impressions: r.get(3)?,
                        clicks: r.get(4)?,
                        installs: r.get(5)?,
                        rejected_installs: r.get(6)?,
                        conversions: r.get(7)?,
                        revenue: r.get(8)?,
                        cost: r.get(9)?,
                        currency: r.get(10)?,
                    })
                })
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(ReportRows::Campaigns(rows))
        }
        ReportQuery::RecentEvents { limit } => {
            let sql = format!("SELECT {} FROM events ORDER BY rowid DESC LIMIT ?1", super::EVENT_COLUMNS);
            let mut stmt = conn.prepare(&sql).map_err(backend)?;
            let rows = stmt
                .query_map([*limit as i64], super::event_row)
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(ReportRows::Recent(rows))
        }
        ReportQuery::Alerts { since, limit } => {
            let mut stmt = conn
                .prepare(
                    "SELECT rule, app_id, campaign_id, at, detail FROM fraud_alerts WHERE at >= ?1
                      ORDER BY at DESC, id DESC LIMIT ?2",
                )
                .map_err(backend)?;
            let rows = stmt
                .query_map(params![since, *limit as i64], |r| {
                    let detail: String = r.get(4)?;
                    Ok(FraudAlert {
                        rule: r.get(0)?,
                        app_id: r.get(1)?,
                        campaign_id: r.get(2)?,
                        at: r.get(3)?,
                        detail: serde_json::from_str(&detail).unwrap_or(Value::Null),
                    })
                })
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(ReportRows::Alerts(rows))
        }
    }
}
