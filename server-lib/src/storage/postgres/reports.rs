//! The reporting side of the PostgreSQL store: the same star schema, sessions, rollups and
//! retention as the SQLite store's (`sqlite/reports.rs`), in PostgreSQL's dialect.
//!
//! Differences that come from several instances sharing the database:
//! - every refresh and purge takes one transaction-scoped advisory lock, so only one instance
//!   at a time turns pending events into facts (the others wait, then find the queue empty);
//! - the queue (`etl_pending`) is keyed by the event, filled by a statement-level trigger, and
//!   entries are removed by their own sequence numbers, never by a range (a concurrent ingest
//!   transaction may commit a lower number later);
//! - dirty rollup days are taken with `DELETE … RETURNING`, and marks are upserts that lock the
//!   row (`DO UPDATE`), so a day marked by a transaction still open while a refresh runs stays
//!   marked for the next one;
//! - a user deletion takes the same lock, so a refresh cannot write back what it deleted.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use deadpool_postgres::Transaction;
use serde_json::Value;

use super::events::event_row;
use super::{PostgresStorage, pool_error};
use crate::domain::reports::{MAX_REJECTED_READ, rejections_by_rule};
use crate::storage::sql::{self, FACT_ROWS, event_columns};
use crate::storage::star::{DAY_MS, StoredSession, day_of, link_stats, money, plan_sessions, session_windows, utm_key};
use crate::storage::{
    CampaignCost, CampaignDay, ConversionCredit, FactRow, FraudAlert, LinkStats, PurgeReport, RefreshReport,
    ReportQuery, ReportRows, ReportStore, RetentionCutoffs, StorageError, StorageFuture, TrendRow, TrendRows, UserRow,
    backend,
};
use tokio_postgres::types::ToSql;

impl ReportStore for PostgresStorage {
    fn refresh_step(&self, batch: usize, session_gap: i64, horizon: Option<i64>) -> StorageFuture<'_, RefreshReport> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            let report = refresh_step(&tx, batch, session_gap, horizon).await?;
            tx.commit().await.map_err(backend)?;
            Ok(report)
        })
    }

    fn purge(&self, cutoffs: RetentionCutoffs) -> StorageFuture<'_, PurgeReport> {
        // In steps, each its own transaction, so ingest and other instances keep going.
        const CHUNK: usize = 20_000;
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            purge_begin(&tx, &cutoffs).await?;
            tx.commit().await.map_err(backend)?;
            let (mut events, mut facts) = (0, 0);
            loop {
                let tx = client.transaction().await.map_err(backend)?;
                let (e, f) = purge_events(&tx, &cutoffs, CHUNK).await?;
                tx.commit().await.map_err(backend)?;
                events += e;
                facts += f;
                if f < CHUNK as u64 {
                    break;
                }
            }
            let tx = client.transaction().await.map_err(backend)?;
            let rest = purge_rest(&tx, &cutoffs).await?;
            tx.commit().await.map_err(backend)?;
            Ok(PurgeReport { events, facts, ..rest })
        })
    }

    fn save_cost(&self, cost: CampaignCost) -> StorageFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            let outcome = save_cost(&tx, &cost).await?;
            tx.commit().await.map_err(backend)?;
            Ok(outcome)
        })
    }

    fn report(&self, query: ReportQuery) -> StorageFuture<'_, ReportRows> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            report(&client, &query).await
        })
    }
}

/// Advisory lock key of the refresh and the purge (one at a time across instances).
const REPORT_LOCK: i64 = 1_952_543_340;

/// Takes the refresh/purge/deletion lock for the rest of the transaction.
pub async fn report_lock(tx: &Transaction<'_>) -> Result<(), StorageError> {
    lock(tx).await
}

async fn lock(tx: &Transaction<'_>) -> Result<(), StorageError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&REPORT_LOCK]).await.map_err(backend)?;
    Ok(())
}

async fn state_get(tx: &Transaction<'_>, key: &str) -> Result<Option<i64>, StorageError> {
    Ok(tx.query_opt(sql::ETL_STATE, &[&key]).await.map_err(backend)?.map(|r| r.get(0)))
}

struct Pending {
    seq: i64,
    event_id: String,
    event_type: String,
    user_id: Option<String>,
    ts: i64,
    properties: String,
    context: String,
}

/// Columns of the rows one batch writes, for `UNNEST` inserts.
#[derive(Default)]
struct Facts {
    app: Vec<String>,
    event: Vec<String>,
    day: Vec<i64>,
    ts: Vec<i64>,
    kind: Vec<String>,
    anon: Vec<String>,
    user: Vec<Option<String>>,
    session: Vec<String>,
    revenue: Vec<Option<f64>>,
    currency: Vec<Option<String>>,
}

#[derive(Default)]
struct Sessions {
    app: Vec<String>,
    key: Vec<String>,
    anon: Vec<String>,
    user: Vec<Option<String>>,
    start: Vec<i64>,
    end: Vec<i64>,
    events: Vec<i64>,
}

#[derive(Default)]
struct Users {
    app: Vec<String>,
    anon: Vec<String>,
    user: Vec<Option<String>>,
    first: Vec<i64>,
    last: Vec<i64>,
    events: Vec<i64>,
    utm: Vec<Option<String>>,
}

/// One refresh step: an ETL batch, then (when the queue is drained to the horizon) the rollups.
pub async fn refresh_step(
    tx: &Transaction<'_>,
    batch: usize,
    gap: i64,
    horizon: Option<i64>,
) -> Result<RefreshReport, StorageError> {
    lock(tx).await?;
    let horizon = match horizon {
        Some(h) => h,
        None => tx.query_one(sql::QUEUE_HORIZON, &[]).await.map_err(backend)?.get(0),
    };
    let events = etl_batch(tx, batch, gap, horizon).await?;
    let done = events < batch;
    let rollups = if done { refresh_rollups(tx).await? } else { 0 };
    Ok(RefreshReport { events, rollups, done, horizon })
}

async fn etl_batch(tx: &Transaction<'_>, batch: usize, gap: i64, horizon: i64) -> Result<usize, StorageError> {
    let rows = tx.query(sql::PENDING_EVENTS, &[&(batch as i64), &horizon]).await.map_err(backend)?;
    let taken = rows.len();
    if taken == 0 {
        return Ok(0);
    }
    let mut seqs: Vec<i64> = Vec::with_capacity(taken);
    let mut devices: BTreeMap<(String, String), Vec<Pending>> = BTreeMap::new();
    for r in &rows {
        let seq: i64 = r.get(0);
        seqs.push(seq);
        // The event may have been deleted (a user deletion) before it was processed.
        let Some(event_id) = r.get::<_, Option<String>>(2) else { continue };
        devices.entry((r.get(1), r.get(4))).or_default().push(Pending {
            seq,
            event_id,
            event_type: r.get(3),
            user_id: r.get(5),
            ts: r.get(6),
            properties: r.get(7),
            context: r.get(8),
        });
    }
    // The sessions every device's events can reach, in one query: per window
    // (`session_windows`), the sessions starting in it and the last one starting before it if
    // it reaches into it.
    let (mut d_app, mut d_anon, mut d_lo, mut d_hi) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((app, anon), events) in devices.iter_mut() {
        events.sort_by_key(|e| (e.ts, e.seq));
        let times: Vec<i64> = events.iter().map(|e| e.ts).collect();
        for (lo, hi) in session_windows(&times, gap) {
            d_app.push(app.clone());
            d_anon.push(anon.clone());
            d_lo.push(lo);
            d_hi.push(hi);
        }
    }
    let mut stored: HashMap<(String, String), Vec<StoredSession>> = HashMap::new();
    for r in tx
        .query(
            "WITH d AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[])
                          AS d(app_id, anonymous_id, lo, hi))
             SELECT s.app_id, s.anonymous_id, s.session_key, s.start_ts, s.end_ts, s.events, s.user_id
               FROM d JOIN sessions s ON s.app_id = d.app_id AND s.anonymous_id = d.anonymous_id
                AND s.start_ts BETWEEN d.lo AND d.hi
             UNION
             SELECT p.app_id, p.anonymous_id, p.session_key, p.start_ts, p.end_ts, p.events, p.user_id
               FROM d CROSS JOIN LATERAL (
                    SELECT * FROM sessions s WHERE s.app_id = d.app_id AND s.anonymous_id = d.anonymous_id
                       AND s.start_ts < d.lo ORDER BY s.start_ts DESC LIMIT 1) p
              WHERE p.end_ts >= d.lo",
            &[&d_app, &d_anon, &d_lo, &d_hi],
        )
        .await
        .map_err(backend)?
    {
        stored.entry((r.get(0), r.get(1))).or_default().push(StoredSession {
            key: r.get(2),
            start: r.get(3),
            end: r.get(4),
            events: r.get(5),
            user_id: r.get(6),
        });
    }
    let events_cutoff = state_get(tx, "events_cutoff_day").await?.unwrap_or(i64::MIN);
    let (mut facts, mut sessions, mut users) = (Facts::default(), Sessions::default(), Users::default());
    let mut merged: Vec<(String, String, String)> = Vec::new();
    let mut utm: BTreeMap<String, (String, String, String, i64)> = BTreeMap::new();
    let mut days: BTreeSet<(String, i64)> = BTreeSet::new();
    for ((app, anon), events) in &devices {
        let input: Vec<(i64, &str, Option<&str>)> =
            events.iter().map(|e| (e.ts, e.event_id.as_str(), e.user_id.as_deref())).collect();
        let plan = plan_sessions(stored.remove(&(app.clone(), anon.clone())).unwrap_or_default(), &input, gap);
        merged.extend(plan.merged.into_iter().map(|(gone, keep)| (app.clone(), gone, keep)));
        for s in plan.upserts {
            sessions.app.push(app.clone());
            sessions.key.push(s.key);
            sessions.anon.push(anon.clone());
            sessions.user.push(s.user_id);
            sessions.start.push(s.start);
            sessions.end.push(s.end);
            sessions.events.push(s.events);
        }
        let (mut first, mut last, mut user_id, mut utm_key_of) = (i64::MAX, i64::MIN, None, None);
        for (e, session) in events.iter().zip(plan.assigned) {
            let day = day_of(e.ts);
            let (revenue, currency) = money(&e.properties);
            facts.app.push(app.clone());
            facts.event.push(e.event_id.clone());
            facts.day.push(day);
            facts.ts.push(e.ts);
            facts.kind.push(e.event_type.clone());
            facts.anon.push(anon.clone());
            facts.user.push(e.user_id.clone());
            facts.session.push(session);
            facts.revenue.push(revenue);
            facts.currency.push(currency);
            if utm_key_of.is_none() && e.context.contains("utm_campaign") {
                let context: Value = serde_json::from_str(&e.context).unwrap_or(Value::Null);
                if let Some((key, name, source)) = utm_key(&context) {
                    utm.entry(key.clone()).or_insert((app.clone(), name, source, e.ts));
                    utm_key_of = Some(key);
                }
            }
            first = first.min(e.ts);
            last = last.max(e.ts);
            if e.user_id.is_some() {
                user_id = e.user_id.clone();
            }
            days.insert((app.clone(), day));
        }
        users.app.push(app.clone());
        users.anon.push(anon.clone());
        users.user.push(user_id);
        users.first.push(first);
        users.last.push(last);
        users.events.push(events.len() as i64);
        users.utm.push(utm_key_of);
    }
    for (app, gone, keep) in &merged {
        tx.execute(sql::MOVE_SESSION_FACTS, &[keep, app, gone]).await.map_err(backend)?;
        tx.execute(sql::DELETE_SESSION, &[app, gone]).await.map_err(backend)?;
    }
    tx.execute(
        "INSERT INTO sessions (app_id, session_key, anonymous_id, user_id, start_ts, end_ts, events)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::bigint[])
         ON CONFLICT (app_id, session_key) DO UPDATE SET user_id = excluded.user_id,
             start_ts = excluded.start_ts, end_ts = excluded.end_ts, events = excluded.events",
        &[
            &sessions.app,
            &sessions.key,
            &sessions.anon,
            &sessions.user,
            &sessions.start,
            &sessions.end,
            &sessions.events,
        ],
    )
    .await
    .map_err(backend)?;
    tx.execute(
        "INSERT INTO fact_events (app_id, event_id, date_key, ts, event_type, anonymous_id, user_id, session_key,
             revenue, currency)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[],
             $8::text[], $9::float8[], $10::text[])",
        &[
            &facts.app,
            &facts.event,
            &facts.day,
            &facts.ts,
            &facts.kind,
            &facts.anon,
            &facts.user,
            &facts.session,
            &facts.revenue,
            &facts.currency,
        ],
    )
    .await
    .map_err(backend)?;
    for (key, (app, name, source, ts)) in &utm {
        tx.execute(
            "INSERT INTO dim_campaigns (campaign_key, app_id, campaign_id, kind, name, network, created_at)
             VALUES ($1, $2, NULL, 'utm', $3, $4, $5) ON CONFLICT DO NOTHING",
            &[key, app, name, source, ts],
        )
        .await
        .map_err(backend)?;
    }
    tx.execute(
        "INSERT INTO dim_users (app_id, anonymous_id, user_id, first_seen, last_seen, events, utm_campaign_key)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[])
         ON CONFLICT (app_id, anonymous_id) DO UPDATE SET
             user_id = coalesce(excluded.user_id, dim_users.user_id),
             first_seen = LEAST(dim_users.first_seen, excluded.first_seen),
             last_seen = GREATEST(dim_users.last_seen, excluded.last_seen),
             events = dim_users.events + excluded.events,
             utm_campaign_key = coalesce(dim_users.utm_campaign_key, excluded.utm_campaign_key)",
        &[&users.app, &users.anon, &users.user, &users.first, &users.last, &users.events, &users.utm],
    )
    .await
    .map_err(backend)?;
    for (app, day) in &days {
        if *day >= events_cutoff {
            tx.execute(
                "INSERT INTO rollup_dirty VALUES ($1, $2, 'events')
                 ON CONFLICT (app_id, date_key, source) DO UPDATE SET source = excluded.source",
                &[app, day],
            )
            .await
            .map_err(backend)?;
        }
        ensure_date(tx, *day).await?;
    }
    tx.execute("DELETE FROM etl_pending WHERE seq = ANY($1)", &[&seqs]).await.map_err(backend)?;
    Ok(taken)
}

async fn ensure_date(tx: &Transaction<'_>, day: i64) -> Result<(), StorageError> {
    use chrono::Datelike;
    let Some(d) = chrono::DateTime::from_timestamp_millis(day * DAY_MS) else { return Ok(()) };
    tx.execute(
        "INSERT INTO dim_date VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        &[
            &day,
            &d.format("%Y-%m-%d").to_string(),
            &d.year(),
            &(d.month() as i32),
            &(d.day() as i32),
            &(d.weekday().number_from_monday() as i32),
            &(d.iso_week().week() as i32),
        ],
    )
    .await
    .map_err(backend)?;
    Ok(())
}

/// Recomputes the rollups of every (app, day, source) marked dirty; returns how many.
async fn refresh_rollups(tx: &Transaction<'_>) -> Result<usize, StorageError> {
    let dirty = tx.query("DELETE FROM rollup_dirty RETURNING app_id, date_key, source", &[]).await.map_err(backend)?;
    let events_cutoff = state_get(tx, "events_cutoff_day").await?.unwrap_or(i64::MIN);
    let clicks_cutoff = state_get(tx, "clicks_cutoff_day").await?.unwrap_or(i64::MIN);
    for r in &dirty {
        let (app, day, source): (String, i64, String) = (r.get(0), r.get(1), r.get(2));
        let (from, to) = (day * DAY_MS, (day + 1) * DAY_MS);
        match source.as_str() {
            // Days already purged keep the rollup they had: recomputing would count nothing.
            "events" if day >= events_cutoff => {
                tx.execute(sql::DELETE_ROLLUP_DAILY, &[&app, &day]).await.map_err(backend)?;
                tx.execute(
                    "INSERT INTO rollup_daily (app_id, date_key, campaign_key, event_type, events, users, revenue)
                     SELECT f.app_id, f.date_key, coalesce(u.install_campaign_id, u.utm_campaign_key, ''),
                            f.event_type, count(*), count(DISTINCT f.anonymous_id), coalesce(sum(f.revenue), 0)
                       FROM fact_events f
                       LEFT JOIN dim_users u ON u.app_id = f.app_id AND u.anonymous_id = f.anonymous_id
                      WHERE f.app_id = $1 AND f.date_key = $2
                      GROUP BY f.app_id, f.date_key, 3, f.event_type",
                    &[&app, &day],
                )
                .await
                .map_err(backend)?;
            }
            "clicks" if day >= clicks_cutoff => {
                campaign_columns(
                    tx,
                    &app,
                    day,
                    &["impressions", "clicks"],
                    "SELECT campaign_id, count(*) FILTER (WHERE kind = 'impression'),
                            count(*) FILTER (WHERE kind = 'click' AND (flags & 3) = 0)
                       FROM clicks WHERE app_id = $1 AND ts >= $3 AND ts < $4 GROUP BY campaign_id",
                    from,
                    to,
                )
                .await?;
                tx.execute(sql::DELETE_ROLLUP_LINKS, &[&app, &day]).await.map_err(backend)?;
                tx.execute(sql::ROLLUP_LINK_DAY, &[&app, &day, &from, &to]).await.map_err(backend)?;
            }
            "installs" => {
                campaign_columns(
                    tx,
                    &app,
                    day,
                    &["installs", "rejected_installs"],
                    "SELECT campaign_id, count(*) FILTER (WHERE NOT rejected), count(*) FILTER (WHERE rejected)
                       FROM installs WHERE app_id = $1 AND install_ts >= $3 AND install_ts < $4 AND kind = 'install'
                        AND campaign_id IS NOT NULL GROUP BY campaign_id",
                    from,
                    to,
                )
                .await?;
            }
            "conversions" => {
                tx.execute(sql::DELETE_ROLLUP_CONVERSIONS, &[&app, &day]).await.map_err(backend)?;
                tx.execute(
                    "INSERT INTO rollup_conversions_daily (app_id, date_key, campaign_id, model, conversions, revenue)
                     SELECT app_id, $2, campaign_id, model, sum(credit), coalesce(sum(revenue), 0) FROM conversions
                      WHERE app_id = $1 AND ts >= $3 AND ts < $4 AND campaign_id IS NOT NULL
                      GROUP BY app_id, campaign_id, model",
                    &[&app, &day, &from, &to],
                )
                .await
                .map_err(backend)?;
            }
            _ => {}
        }
    }
    Ok(dirty.len())
}

/// Sets `columns` of one app's day from `select` (campaign id, then one count per column;
/// parameters $1 app, $3 from, $4 to), zeroing campaigns that no longer appear.
async fn campaign_columns(
    tx: &Transaction<'_>,
    app: &str,
    day: i64,
    columns: &[&str],
    select: &str,
    from: i64,
    to: i64,
) -> Result<(), StorageError> {
    tx.execute(&sql::zero_campaign_columns(columns), &[&app, &day]).await.map_err(backend)?;
    let names = columns.join(", ");
    let on_conflict = sql::campaign_columns_on_conflict(columns);
    let values = (0..columns.len()).map(|i| format!("s.v{i}")).collect::<Vec<_>>().join(", ");
    let aliases = (0..columns.len()).map(|i| format!("v{i}")).collect::<Vec<_>>().join(", ");
    tx.execute(
        &format!(
            "INSERT INTO rollup_campaign_daily (app_id, date_key, campaign_id, {names})
             SELECT $1, $2, s.campaign_id, {values} FROM ({select}) AS s(campaign_id, {aliases})
             {on_conflict}"
        ),
        &[&app, &day, &from, &to],
    )
    .await
    .map_err(backend)?;
    tx.execute(sql::DELETE_EMPTY_CAMPAIGN_DAYS, &[&app, &day]).await.map_err(backend)?;
    Ok(())
}

/// Retention, first step: from now on the rollups of days before the cut-offs are final.
pub async fn purge_begin(tx: &Transaction<'_>, cutoffs: &RetentionCutoffs) -> Result<(), StorageError> {
    lock(tx).await?;
    for (key, day) in [("events_cutoff_day", day_of(cutoffs.events)), ("clicks_cutoff_day", day_of(cutoffs.clicks))] {
        // Only forward (see the SQLite store).
        tx.execute(
            "INSERT INTO etl_state (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = GREATEST(etl_state.value, excluded.value)",
            &[&key, &day],
        )
        .await
        .map_err(backend)?;
    }
    Ok(())
}

/// Retention, repeated step: up to `limit` facts of days before the cut-off and their raw
/// events. Returns (events, facts) deleted.
pub async fn purge_events(
    tx: &Transaction<'_>,
    cutoffs: &RetentionCutoffs,
    limit: usize,
) -> Result<(u64, u64), StorageError> {
    lock(tx).await?;
    let row = tx
        .query_one(
            "WITH f AS (DELETE FROM fact_events WHERE seq IN (
                         SELECT seq FROM fact_events WHERE date_key < $1 LIMIT $2)
                        RETURNING app_id, event_id),
                  e AS (DELETE FROM events e USING f WHERE e.app_id = f.app_id AND e.event_id = f.event_id
                        RETURNING 1)
             SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM f)",
            &[&day_of(cutoffs.events), &(limit as i64)],
        )
        .await
        .map_err(backend)?;
    Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
}

/// Retention, last step: expired clicks and orphaned rows.
pub async fn purge_rest(tx: &Transaction<'_>, cutoffs: &RetentionCutoffs) -> Result<PurgeReport, StorageError> {
    lock(tx).await?;
    let ms = day_of(cutoffs.events) * DAY_MS;
    let clicks_ms = day_of(cutoffs.clicks) * DAY_MS;
    let run = |sql: &'static str, ts: Option<i64>| async move {
        match ts {
            Some(ts) => tx.execute(sql, &[&ts]).await,
            None => tx.execute(sql, &[]).await,
        }
        .map_err(backend)
    };
    let mut report = PurgeReport {
        clicks: run(sql::PURGE_CLICKS, Some(clicks_ms)).await?,
        sessions: run(
            "DELETE FROM sessions s WHERE NOT EXISTS (SELECT 1 FROM fact_events f
                WHERE f.app_id = s.app_id AND f.session_key = s.session_key)",
            None,
        )
        .await?,
        ..Default::default()
    };
    report.orphans += run(
        "DELETE FROM dim_users u WHERE install_ts IS NULL AND last_seen < $1
            AND NOT EXISTS (SELECT 1 FROM fact_events f WHERE f.app_id = u.app_id AND f.anonymous_id = u.anonymous_id)",
        Some(ms),
    )
    .await?;
    report.orphans += run(
        "DELETE FROM etl_pending p WHERE NOT EXISTS (SELECT 1 FROM events e
            WHERE e.app_id = p.app_id AND e.event_id = p.event_id)",
        None,
    )
    .await?;
    report.orphans += run(
        "DELETE FROM postback_attempts a WHERE NOT EXISTS (SELECT 1 FROM postbacks p WHERE p.id = a.postback_id)",
        None,
    )
    .await?;
    // The OLAP copy's facts of those days go too, after the users and sessions deleted here
    // (ADR 0018; nothing is noted without one).
    tx.execute(sql::OLAP_ENTRY, &[&"purge", &"", &day_of(cutoffs.events).to_string()]).await.map_err(backend)?;
    Ok(report)
}

/// Stores (or replaces) one day's cost of a campaign. Errors name what is wrong.
pub async fn save_cost(tx: &Transaction<'_>, cost: &CampaignCost) -> Result<Result<(), String>, StorageError> {
    let app = tx.query_opt(sql::CAMPAIGN_APP, &[&cost.campaign_id]).await.map_err(backend)?;
    let Some(app) = app.map(|r| r.get::<_, String>(0)) else { return Ok(Err("no campaign with this id".into())) };
    // One currency per campaign: concurrent first costs in two currencies serialize here.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&cost.campaign_id]).await.map_err(backend)?;
    let other = tx
        .query_opt(sql::OTHER_COST_CURRENCY, &[&cost.campaign_id, &cost.currency, &cost.date_key])
        .await
        .map_err(backend)?;
    if let Some(other) = other.map(|r| r.get::<_, String>(0)) {
        return Ok(Err(format!("this campaign's costs are in {other}; post every cost in one currency")));
    }
    tx.execute(
        "INSERT INTO campaign_costs (campaign_id, app_id, date_key, amount, currency, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (campaign_id, date_key) DO UPDATE SET amount = excluded.amount, currency = excluded.currency,
             updated_at = excluded.updated_at",
        &[&cost.campaign_id, &app, &cost.date_key, &cost.amount, &cost.currency, &cost.updated_at],
    )
    .await
    .map_err(backend)?;
    Ok(Ok(()))
}

fn fact_row(r: &tokio_postgres::Row) -> FactRow {
    FactRow {
        anonymous_id: r.get(0),
        user_id: r.get(1),
        event_type: r.get(2),
        ts: r.get(3),
        session_key: r.get(4),
        campaign_key: r.get(5),
    }
}

/// Trend rows of `sql`, whose columns are the bucket, the key when `keyed`, the count and,
/// when there is one, revenue.
async fn trend_rows(
    client: &tokio_postgres::Client,
    sql: &str,
    args: &[&(dyn ToSql + Sync)],
    keyed: bool,
) -> Result<Vec<TrendRow>, StorageError> {
    let count = 1 + usize::from(keyed);
    let rows = client.query(sql, args).await.map_err(backend)?;
    Ok(rows
        .iter()
        .map(|r| TrendRow {
            bucket: r.get(0),
            key: if keyed { r.get(1) } else { String::new() },
            count: r.get::<_, Option<f64>>(count).unwrap_or(0.0),
            revenue: if r.len() > count + 1 { r.get::<_, Option<f64>>(count + 1).unwrap_or(0.0) } else { 0.0 },
        })
        .collect())
}

/// Rows for a report, read from the star schema.
pub async fn report(client: &tokio_postgres::Client, query: &ReportQuery) -> Result<ReportRows, StorageError> {
    match query {
        ReportQuery::Events { app_id, types, from, to } => {
            let rows = client
                .query(
                    &format!(
                        "{FACT_ROWS} WHERE f.app_id = $1 AND f.ts >= $2 AND f.ts <= $3
                            AND (cardinality($4::text[]) = 0 OR f.event_type = ANY($4)) ORDER BY f.ts, f.seq"
                    ),
                    &[app_id, from, to, types],
                )
                .await
                .map_err(backend)?;
            Ok(ReportRows::Events(rows.iter().map(fact_row).collect()))
        }
        ReportQuery::SessionsWith { app_id, event_type, from, to } => {
            let rows = client
                .query(
                    &format!(
                        "{FACT_ROWS} WHERE f.app_id = $1 AND f.session_key IN (
                                SELECT session_key FROM fact_events
                                 WHERE app_id = $1 AND event_type = $2 AND ts >= $3 AND ts <= $4)
                          ORDER BY f.session_key, f.ts, f.seq"
                    ),
                    &[app_id, event_type, from, to],
                )
                .await
                .map_err(backend)?;
            Ok(ReportRows::Events(rows.iter().map(fact_row).collect()))
        }
        ReportQuery::Cohorts { app_id, from_day, to_day, max_offset } => {
            let users = client.query(sql::COHORT_USERS, &[app_id, &((to_day + 1) * DAY_MS)]).await.map_err(backend)?;
            let mut by_anon: HashMap<String, UserRow> = users
                .iter()
                .map(|r| {
                    let anonymous_id: String = r.get(0);
                    (
                        anonymous_id.clone(),
                        UserRow { anonymous_id, user_id: r.get(1), start: r.get(2), active_days: vec![] },
                    )
                })
                .collect();
            for r in client
                .query(sql::COHORT_ACTIVE_DAYS, &[app_id, from_day, &(to_day + max_offset)])
                .await
                .map_err(backend)?
            {
                if let Some(u) = by_anon.get_mut(r.get::<_, &str>(0)) {
                    u.active_days.push(r.get(1));
                }
            }
            let mut users: Vec<UserRow> = by_anon.into_values().collect();
            users.sort_by(|a, b| a.anonymous_id.cmp(&b.anonymous_id));
            for u in &mut users {
                u.active_days.sort_unstable();
            }
            Ok(ReportRows::Users(users))
        }
        ReportQuery::Campaigns { app_id, from_day, to_day, model } => {
            let rows = client
                .query(
                    "SELECT d.campaign_key, d.name, d.network,
                            coalesce(r.impressions, 0), coalesce(r.clicks, 0), coalesce(r.installs, 0),
                            coalesce(r.rejected, 0), coalesce(v.conversions, 0), coalesce(v.revenue, 0),
                            (SELECT sum(amount) FROM campaign_costs c WHERE c.campaign_id = d.campaign_key
                                AND c.date_key BETWEEN $2 AND $3),
                            (SELECT max(currency) FROM campaign_costs c WHERE c.campaign_id = d.campaign_key)
                       FROM dim_campaigns d
                       LEFT JOIN LATERAL (
                            SELECT sum(impressions)::bigint AS impressions, sum(clicks)::bigint AS clicks,
                                   sum(installs)::bigint AS installs, sum(rejected_installs)::bigint AS rejected
                              FROM rollup_campaign_daily r
                             WHERE r.app_id = $1 AND r.campaign_id = d.campaign_key AND r.date_key BETWEEN $2 AND $3
                       ) r ON true
                       LEFT JOIN LATERAL (
                            SELECT sum(conversions) AS conversions, sum(revenue) AS revenue
                              FROM rollup_conversions_daily r
                             WHERE r.app_id = $1 AND r.campaign_id = d.campaign_key AND r.model = $4
                               AND r.date_key BETWEEN $2 AND $3
                       ) v ON true
                      WHERE d.app_id = $1 AND d.kind = 'link'
                      ORDER BY d.created_at, d.campaign_key",
                    &[app_id, from_day, to_day, model],
                )
                .await
                .map_err(backend)?;
            Ok(ReportRows::Campaigns(
                rows.iter()
                    .map(|r| CampaignDay {
                        campaign_id: r.get(0),
                        name: r.get(1),
                        network: r.get(2),
                        impressions: r.get(3),
                        clicks: r.get(4),
                        installs: r.get(5),
                        rejected_installs: r.get(6),
                        conversions: r.get(7),
                        revenue: r.get(8),
                        cost: r.get(9),
                        currency: r.get(10),
                    })
                    .collect(),
            ))
        }
        ReportQuery::RecentEvents { limit } => {
            let rows = client
                .query(
                    concat!("SELECT ", event_columns!(), " FROM events ORDER BY seq DESC LIMIT $1"),
                    &[&(*limit as i64)],
                )
                .await
                .map_err(backend)?;
            Ok(ReportRows::Recent(rows.iter().map(event_row).collect()))
        }
        ReportQuery::Trend { app_id, width, first, last, campaign_id, network, model } => {
            let (from, to) = (first * width, (last + 1) * width);
            let daily = *width == DAY_MS;
            let (first_day, last_day) = (day_of(from), day_of(to - 1));
            let events = if daily {
                trend_rows(client, sql::TREND_EVENTS_DAILY, &[app_id, first, last, campaign_id, network], true).await?
            } else {
                if campaign_id.is_empty() && network.is_empty() {
                    let args: [&(dyn ToSql + Sync); 6] = [app_id, &from, &to, width, &first_day, &last_day];
                    trend_rows(client, sql::TREND_EVENTS_FACTS, &args, true).await?
                } else {
                    let args: [&(dyn ToSql + Sync); 8] =
                        [app_id, &from, &to, width, &first_day, &last_day, campaign_id, network];
                    trend_rows(client, sql::TREND_EVENTS_FACTS_OF, &args, true).await?
                }
            };
            let args: [&(dyn ToSql + Sync); 6] = [app_id, &from, &to, campaign_id, network, width];
            let installs = trend_rows(client, sql::TREND_INSTALLS, &args, true).await?;
            let conversions = if daily {
                let args: [&(dyn ToSql + Sync); 6] = [app_id, first, last, campaign_id, network, model];
                trend_rows(client, sql::TREND_CONVERSIONS_DAILY, &args, false).await?
            } else {
                let args: [&(dyn ToSql + Sync); 7] = [app_id, &from, &to, campaign_id, network, width, model];
                trend_rows(client, sql::TREND_CONVERSIONS_FACTS, &args, false).await?
            };
            Ok(ReportRows::Trend(TrendRows { events, installs, conversions }))
        }
        ReportQuery::CampaignLinks { app_id, campaign_id, from, to } => {
            let args: [&(dyn ToSql + Sync); 4] = [app_id, campaign_id, from, to];
            let days: [&(dyn ToSql + Sync); 4] = [app_id, campaign_id, &day_of(*from), &day_of(*to)];
            let mut links: BTreeMap<String, LinkStats> = BTreeMap::new();
            for r in client.query(sql::CAMPAIGN_LINK_CLICKS, &days).await.map_err(backend)? {
                let l = link_stats(&mut links, r.get(0));
                (l.clicks, l.impressions) = (r.get(1), r.get(2));
            }
            for r in client.query(sql::CAMPAIGN_LINK_INSTALLS, &args).await.map_err(backend)? {
                let l = link_stats(&mut links, r.get(0));
                (l.installs, l.rejected_installs) = (r.get(1), r.get(2));
            }
            let results: Vec<String> = client
                .query(sql::CAMPAIGN_REJECTED, &[app_id, campaign_id, from, to, &MAX_REJECTED_READ])
                .await
                .map_err(backend)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok(ReportRows::CampaignLinks(links.into_values().collect(), rejections_by_rule(&results)))
        }
        ReportQuery::Credits { app_id, event_id, anonymous_id, limit } => {
            let (sql, key) = match (event_id, anonymous_id) {
                (Some(e), _) => (sql::CREDITS_OF_EVENT, e),
                (None, Some(a)) => (sql::CREDITS_OF_DEVICE, a),
                (None, None) => return Ok(ReportRows::Credits(Vec::new())),
            };
            let rows = client.query(sql, &[app_id, key, &(*limit as i64)]).await.map_err(backend)?;
            Ok(ReportRows::Credits(
                rows.iter()
                    .map(|r| ConversionCredit {
                        app_id: r.get(0),
                        event_id: r.get(1),
                        model: r.get(2),
                        click_id: r.get(3),
                        anonymous_id: r.get(4),
                        user_id: r.get(5),
                        event_type: r.get(6),
                        ts: r.get(7),
                        link_id: r.get(8),
                        campaign_id: r.get(9),
                        network: r.get(10),
                        touch_ts: r.get(11),
                        credit: r.get(12),
                        revenue: r.get(13),
                        currency: r.get(14),
                    })
                    .collect(),
            ))
        }
        ReportQuery::Alerts { since, limit } => {
            let rows = client.query(sql::RECENT_ALERTS, &[since, &(*limit as i64)]).await.map_err(backend)?;
            Ok(ReportRows::Alerts(
                rows.iter()
                    .map(|r| FraudAlert {
                        rule: r.get(0),
                        app_id: r.get(1),
                        campaign_id: r.get(2),
                        at: r.get(3),
                        detail: serde_json::from_str(r.get::<_, &str>(4)).unwrap_or(Value::Null),
                    })
                    .collect(),
            ))
        }
    }
}
