//! The reporting side of the SQLite store: a star schema kept from the raw `events` table,
//! server-side sessions, daily rollups, and the retention purge.
//!
//! Ingest stays as fast as before: it only notes each new event in `etl_pending`. The
//! maintenance job ([`refresh_step`]) turns pending events into `fact_events` rows, updates
//! `dim_users`, `dim_date` and `dim_campaigns`, assigns sessions, and recomputes the rollups of
//! the days something changed on. Reports run a refresh first, so they never lag; the scheduler
//! runs it every few seconds so the work stays small.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::Value;

use super::SqliteStorage;
use super::events::event_row;
use crate::domain::reports::{MAX_REJECTED_READ, rejections_by_rule};
use crate::storage::sql::{self, FACT_ROWS, event_columns, sqlite, to_sqlite};
use crate::storage::star::{DAY_MS, StoredSession, day_of, link_stats, money, plan_sessions, session_windows, utm_key};
use crate::storage::{
    CampaignCost, CampaignDay, ConversionCredit, FactRow, FraudAlert, LinkStats, PurgeReport, RefreshReport,
    ReportQuery, ReportRows, ReportStore, RetentionCutoffs, StorageError, StorageFuture, TrendRow, TrendRows, UserRow,
    backend,
};

impl ReportStore for SqliteStorage {
    fn refresh_step(&self, batch: usize, session_gap: i64, horizon: Option<i64>) -> StorageFuture<'_, RefreshReport> {
        self.write(batch, move |tx| refresh_step(tx, batch, session_gap, horizon))
    }

    fn purge(&self, cutoffs: RetentionCutoffs) -> StorageFuture<'_, PurgeReport> {
        // In steps, each its own writer transaction, so ingest keeps going between them.
        const CHUNK: usize = 20_000;
        Box::pin(async move {
            self.write(1, move |tx| purge_begin(tx, &cutoffs)).await?;
            let (mut events, mut facts) = (0, 0);
            loop {
                let (e, f) = self.write(CHUNK, move |tx| purge_events(tx, &cutoffs, CHUNK)).await?;
                events += e;
                facts += f;
                if f < CHUNK as u64 {
                    break;
                }
            }
            let rest = self.write(1, move |tx| purge_rest(tx, &cutoffs)).await?;
            Ok(PurgeReport { events, facts, ..rest })
        })
    }

    fn save_cost(&self, cost: CampaignCost) -> StorageFuture<'_, Result<(), String>> {
        self.write(1, move |tx| save_cost(tx, &cost))
    }

    fn report(&self, query: ReportQuery) -> StorageFuture<'_, ReportRows> {
        self.read(move |c| report(c, &query))
    }
}

fn state_get(tx: &Connection, key: &str) -> Result<Option<i64>, StorageError> {
    tx.query_row(sqlite!(sql::ETL_STATE), [key], |r| r.get(0)).optional().map_err(backend)
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

/// Turns up to `batch` pending events into facts, users and sessions; returns how many it took.
pub fn etl_batch(tx: &Transaction<'_>, batch: usize, session_gap: i64, horizon: i64) -> Result<usize, StorageError> {
    let mut rows: BTreeMap<(String, String), Vec<Pending>> = BTreeMap::new();
    let mut last_seq = None;
    let mut taken = 0;
    {
        let mut stmt = tx.prepare_cached(sqlite!(sql::PENDING_EVENTS)).map_err(backend)?;
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

/// Reads the device's sessions the batch's events can reach ([`session_windows`]), plans the
/// events into them and writes the plan; returns each event's session key.
fn sessionize(
    tx: &Transaction<'_>,
    app_id: &str,
    anonymous_id: &str,
    events: &[Pending],
    gap: i64,
) -> Result<Vec<String>, StorageError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let times: Vec<i64> = events.iter().map(|e| e.ts).collect();
    let mut stored: Vec<StoredSession> = Vec::new();
    {
        let session = |r: &rusqlite::Row<'_>| {
            Ok(StoredSession {
                key: r.get(0)?,
                start: r.get(1)?,
                end: r.get(2)?,
                events: r.get(3)?,
                user_id: r.get(4)?,
            })
        };
        let mut starting = tx.prepare_cached(sqlite!(sql::SESSIONS_STARTING_IN)).map_err(backend)?;
        let mut before = tx.prepare_cached(sqlite!(sql::SESSION_BEFORE)).map_err(backend)?;
        for (lo, hi) in session_windows(&times, gap) {
            let rows = starting.query_map(params![app_id, anonymous_id, lo, hi], session).map_err(backend)?;
            for s in rows {
                stored.push(s.map_err(backend)?);
            }
            let last = before.query_row(params![app_id, anonymous_id, lo], session).optional().map_err(backend)?;
            stored.extend(last.filter(|s| s.end >= lo));
        }
    }
    let input: Vec<(i64, &str, Option<&str>)> =
        events.iter().map(|e| (e.ts, e.event_id.as_str(), e.user_id.as_deref())).collect();
    let plan = plan_sessions(stored, &input, gap);
    for (gone, keep) in &plan.merged {
        tx.execute(sqlite!(sql::MOVE_SESSION_FACTS), params![keep, app_id, gone]).map_err(backend)?;
        tx.execute(sqlite!(sql::DELETE_SESSION), params![app_id, gone]).map_err(backend)?;
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
                tx.execute(sqlite!(sql::DELETE_ROLLUP_DAILY), params![app, day]).map_err(backend)?;
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
                tx.execute(sqlite!(sql::DELETE_ROLLUP_LINKS), params![app, day]).map_err(backend)?;
                tx.execute(sqlite!(sql::ROLLUP_LINK_DAY), params![app, day, from, to]).map_err(backend)?;
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
                tx.execute(sqlite!(sql::DELETE_ROLLUP_CONVERSIONS), params![app, day]).map_err(backend)?;
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
    tx.execute(&to_sqlite(&sql::zero_campaign_columns(columns)), params![app, day]).map_err(backend)?;
    let names = columns.join(", ");
    let values = (0..columns.len()).map(|i| format!("?{}", i + 4)).collect::<Vec<_>>().join(", ");
    let on_conflict = sql::campaign_columns_on_conflict(columns);
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
             {on_conflict}"
        ))
        .map_err(backend)?;
    for (campaign, vals) in rows {
        let mut args: Vec<&dyn rusqlite::ToSql> = vec![&app, &day, &campaign];
        for v in &vals {
            args.push(v);
        }
        write.execute(args.as_slice()).map_err(backend)?;
    }
    tx.execute(sqlite!(sql::DELETE_EMPTY_CAMPAIGN_DAYS), params![app, day]).map_err(backend)?;
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
        None => tx.query_row(sql::QUEUE_HORIZON, [], |r| r.get(0)).map_err(backend)?,
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
        clicks: tx.execute(sqlite!(sql::PURGE_CLICKS), [clicks_ms]).map_err(backend)? as u64,
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
    // The OLAP copy's facts of those days go too, after the users and sessions deleted here
    // (ADR 0018; nothing is noted without one).
    tx.execute(sqlite!(sql::OLAP_ENTRY), params!["purge", "", day_of(cutoffs.events).to_string()]).map_err(backend)?;
    Ok(report)
}

/// Stores (or replaces) one day's cost of a campaign. Errors name what is wrong.
pub fn save_cost(tx: &Transaction<'_>, cost: &CampaignCost) -> Result<Result<(), String>, StorageError> {
    let app: Option<String> =
        tx.query_row(sqlite!(sql::CAMPAIGN_APP), [&cost.campaign_id], |r| r.get(0)).optional().map_err(backend)?;
    let Some(app) = app else { return Ok(Err("no campaign with this id".into())) };
    let other: Option<String> = tx
        .query_row(sqlite!(sql::OTHER_COST_CURRENCY), params![cost.campaign_id, cost.currency, cost.date_key], |r| {
            r.get(0)
        })
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

/// Trend rows of `sql`, whose columns are the bucket, the key when `keyed`, the count and,
/// when there is one, revenue.
fn trend_rows(
    conn: &Connection,
    sql: &str,
    args: &[&dyn rusqlite::ToSql],
    keyed: bool,
) -> Result<Vec<TrendRow>, StorageError> {
    let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
    let count = 1 + usize::from(keyed);
    let has_revenue = stmt.column_count() > count + 1;
    let rows = stmt
        .query_map(args, |r| {
            Ok(TrendRow {
                bucket: r.get(0)?,
                key: if keyed { r.get(1)? } else { String::new() },
                count: r.get(count)?,
                revenue: if has_revenue { r.get(count + 1)? } else { 0.0 },
            })
        })
        .map_err(backend)?
        .collect::<Result<_, _>>()
        .map_err(backend)?;
    Ok(rows)
}

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
            let mut stmt = conn.prepare(sqlite!(sql::COHORT_USERS)).map_err(backend)?;
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
            let mut stmt = conn.prepare(sqlite!(sql::COHORT_ACTIVE_DAYS)).map_err(backend)?;
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
            let mut stmt = conn
                .prepare(concat!("SELECT ", event_columns!(), " FROM events ORDER BY rowid DESC LIMIT ?1"))
                .map_err(backend)?;
            let rows = stmt
                .query_map([*limit as i64], event_row)
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(ReportRows::Recent(rows))
        }
        ReportQuery::Trend { app_id, width, first, last, campaign_id, network, model } => {
            let (from, to) = (first * width, (last + 1) * width);
            let daily = *width == DAY_MS;
            let events = if daily {
                trend_rows(
                    conn,
                    sqlite!(sql::TREND_EVENTS_DAILY),
                    params![app_id, first, last, campaign_id, network],
                    true,
                )?
            } else {
                let (first_day, last_day) = (day_of(from), day_of(to - 1));
                if campaign_id.is_empty() && network.is_empty() {
                    let args = params![app_id, from, to, width, first_day, last_day];
                    trend_rows(conn, sqlite!(sql::TREND_EVENTS_FACTS), args, true)?
                } else {
                    let args = params![app_id, from, to, width, first_day, last_day, campaign_id, network];
                    trend_rows(conn, sqlite!(sql::TREND_EVENTS_FACTS_OF), args, true)?
                }
            };
            let args = params![app_id, from, to, campaign_id, network, width];
            let installs = trend_rows(conn, sqlite!(sql::TREND_INSTALLS), args, true)?;
            let conversions = if daily {
                let args = params![app_id, first, last, campaign_id, network, model];
                trend_rows(conn, sqlite!(sql::TREND_CONVERSIONS_DAILY), args, false)?
            } else {
                let args = params![app_id, from, to, campaign_id, network, width, model];
                trend_rows(conn, sqlite!(sql::TREND_CONVERSIONS_FACTS), args, false)?
            };
            Ok(ReportRows::Trend(TrendRows { events, installs, conversions }))
        }
        ReportQuery::CampaignLinks { app_id, campaign_id, from, to } => {
            let mut links: BTreeMap<String, LinkStats> = BTreeMap::new();
            let mut stmt = conn.prepare_cached(sqlite!(sql::CAMPAIGN_LINK_CLICKS)).map_err(backend)?;
            let mut q = stmt.query(params![app_id, campaign_id, day_of(*from), day_of(*to)]).map_err(backend)?;
            while let Some(r) = q.next().map_err(backend)? {
                let l = link_stats(&mut links, r.get(0).map_err(backend)?);
                (l.clicks, l.impressions) = (r.get(1).map_err(backend)?, r.get(2).map_err(backend)?);
            }
            let mut stmt = conn.prepare_cached(sqlite!(sql::CAMPAIGN_LINK_INSTALLS)).map_err(backend)?;
            let mut q = stmt.query(params![app_id, campaign_id, from, to]).map_err(backend)?;
            while let Some(r) = q.next().map_err(backend)? {
                let l = link_stats(&mut links, r.get(0).map_err(backend)?);
                (l.installs, l.rejected_installs) = (r.get(1).map_err(backend)?, r.get(2).map_err(backend)?);
            }
            let mut stmt = conn.prepare_cached(sqlite!(sql::CAMPAIGN_REJECTED)).map_err(backend)?;
            let results: Vec<String> = stmt
                .query_map(params![app_id, campaign_id, from, to, MAX_REJECTED_READ], |r| r.get(0))
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(ReportRows::CampaignLinks(links.into_values().collect(), rejections_by_rule(&results)))
        }
        ReportQuery::Credits { app_id, event_id, anonymous_id, limit } => {
            let (sql, key) = match (event_id, anonymous_id) {
                (Some(e), _) => (sqlite!(sql::CREDITS_OF_EVENT), e),
                (None, Some(a)) => (sqlite!(sql::CREDITS_OF_DEVICE), a),
                (None, None) => return Ok(ReportRows::Credits(Vec::new())),
            };
            let mut stmt = conn.prepare_cached(sql).map_err(backend)?;
            let rows = stmt
                .query_map(params![app_id, key, *limit as i64], |r| {
                    Ok(ConversionCredit {
                        app_id: r.get(0)?,
                        event_id: r.get(1)?,
                        model: r.get(2)?,
                        click_id: r.get(3)?,
                        anonymous_id: r.get(4)?,
                        user_id: r.get(5)?,
                        event_type: r.get(6)?,
                        ts: r.get(7)?,
                        link_id: r.get(8)?,
                        campaign_id: r.get(9)?,
                        network: r.get(10)?,
                        touch_ts: r.get(11)?,
                        credit: r.get(12)?,
                        revenue: r.get(13)?,
                        currency: r.get(14)?,
                    })
                })
                .map_err(backend)?
                .collect::<Result<_, _>>()
                .map_err(backend)?;
            Ok(ReportRows::Credits(rows))
        }
        ReportQuery::Alerts { since, limit } => {
            let mut stmt = conn.prepare(sqlite!(sql::RECENT_ALERTS)).map_err(backend)?;
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
