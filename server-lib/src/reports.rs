//! Reports over the star schema (`docs/reports.md`): funnels, retention cohorts, campaign
//! performance, paths to conversion, campaign costs, and the maintenance that keeps the schema
//! fresh and applies retention.
//!
//! The computations are pure functions over rows ([`funnel`], [`retention`], [`paths`],
//! [`campaign_metrics`]); the handlers parse, refresh, read and call them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::domain::attribution::Model;
use crate::domain::config::{Clock, ReportConfig};
use crate::storage::star::{DAY_MS, date_text, day_of};
use crate::storage::{
    CampaignCost, CampaignDay, FactRow, PurgeReport, ReportQuery, ReportRows, RetentionCutoffs, Storage, StorageError,
    UserRow,
};
use crate::{ApiError, AppState, admin_auth, ingest};

/// Most funnel steps.
pub const MAX_STEPS: usize = 10;
/// Longest report range, in days.
pub const MAX_RANGE_DAYS: i64 = 366;
/// Default funnel conversion window: 30 days.
pub const DEFAULT_WITHIN: i64 = 30 * DAY_MS;

// ---------------------------------------------------------------------------------------------
// Maintenance: refresh on a schedule, retention and purge.

/// The scheduler's state: what it ran last, on the server's clock.
#[derive(Debug, Default, Clone, Copy)]
struct Schedule {
    last_refresh: Option<i64>,
    last_purge: Option<i64>,
}

/// What one maintenance run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MaintenanceReport {
    pub refreshed_events: usize,
    pub rollups: usize,
    pub purged: Option<PurgeReport>,
}

/// Keeps the star schema, rollups and retention up to date. The server's clock decides what is
/// due, so a test on a manual clock runs a year of retention in a moment.
pub struct Maintenance {
    storage: Arc<dyn Storage>,
    config: ReportConfig,
    clock: Clock,
    /// How long the attribution index keeps a click; clicks older than this plus
    /// `click_retention_extra` are expired.
    click_ttl: i64,
    schedule: Mutex<Schedule>,
    /// Serialises refreshes, so two callers do not interleave ETL batches.
    running: tokio::sync::Mutex<()>,
    started: OnceLock<()>,
}

impl Maintenance {
    pub fn new(storage: Arc<dyn Storage>, config: ReportConfig, clock: Clock, click_ttl: i64) -> Self {
        Maintenance {
            storage,
            config,
            clock,
            click_ttl,
            schedule: Mutex::new(Schedule::default()),
            running: tokio::sync::Mutex::new(()),
            started: OnceLock::new(),
        }
    }

    /// Takes every pending event into the star schema and recomputes the changed rollups.
    pub async fn refresh(&self) -> Result<(usize, usize), StorageError> {
        let _one = self.running.lock().await;
        self.refresh_locked().await
    }

    async fn refresh_locked(&self) -> Result<(usize, usize), StorageError> {
        let (mut events, mut rollups) = (0, 0);
        // Up to what is queued now: events ingested meanwhile wait for the next refresh, so a
        // refresh (and the purge after it) ends even under sustained ingest.
        let mut horizon = None;
        loop {
            let step =
                self.storage.refresh_step(self.config.refresh_batch.max(1), self.config.session_gap, horizon).await?;
            events += step.events;
            rollups += step.rollups;
            horizon = Some(step.horizon);
            if step.done {
                break;
            }
        }
        self.schedule.lock().unwrap_or_else(|p| p.into_inner()).last_refresh = Some(self.clock.now());
        metrics::counter!("trailmark_report_refreshed_events_total").increment(events as u64);
        Ok((events, rollups))
    }

    /// Where retention cuts at `now`.
    pub fn cutoffs(&self, now: i64) -> RetentionCutoffs {
        RetentionCutoffs {
            events: now - i64::from(self.config.raw_retention_days) * DAY_MS,
            clicks: now - self.click_ttl - self.config.click_retention_extra,
        }
    }

    /// Runs what is due at the clock's time: a refresh every `refresh_interval`, retention
    /// and purge every `purge_interval` (always after a full refresh, so nothing is deleted
    /// before it is rolled up).
    pub async fn run_due(&self) -> Result<MaintenanceReport, StorageError> {
        let _one = self.running.lock().await;
        let now = self.clock.now();
        let schedule = *self.schedule.lock().unwrap_or_else(|p| p.into_inner());
        let mut report = MaintenanceReport::default();
        let refresh_due = schedule.last_refresh.is_none_or(|t| now - t >= self.config.refresh_interval);
        let purge_due = schedule.last_purge.is_none_or(|t| now - t >= self.config.purge_interval);
        if refresh_due || purge_due {
            (report.refreshed_events, report.rollups) = self.refresh_locked().await?;
        }
        if purge_due {
            let purged = self.storage.purge(self.cutoffs(now)).await?;
            metrics::counter!("trailmark_retention_deleted_total", "kind" => "events").increment(purged.events);
            metrics::counter!("trailmark_retention_deleted_total", "kind" => "clicks").increment(purged.clicks);
            metrics::counter!("trailmark_retention_deleted_total", "kind" => "orphans").increment(purged.orphans);
            self.schedule.lock().unwrap_or_else(|p| p.into_inner()).last_purge = Some(now);
            report.purged = Some(purged);
        }
        Ok(report)
    }

    /// Starts the background scheduler once (inside a Tokio runtime; a no-op elsewhere or when
    /// `ReportConfig::scheduler` is off).
    pub fn ensure_started(self: &Arc<Self>) {
        if !self.config.scheduler || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.started.set(()).is_err() {
            return;
        }
        let this = Arc::downgrade(self);
        let tick = std::time::Duration::from_millis(self.config.refresh_interval.clamp(100, 60_000) as u64);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                let Some(m) = this.upgrade() else { break };
                match m.run_due().await {
                    Ok(r) if r.purged.is_some() => tracing::info!(?r, "retention applied"),
                    Ok(_) | Err(StorageError::Busy) => {}
                    Err(e) => tracing::warn!(error = %e, "report maintenance failed"),
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Pure computations.

/// The person a row belongs to: the user id when one is known, else the device's anonymous id.
fn person(anonymous_id: &str, user_id: Option<&str>) -> String {
    match user_id {
        Some(u) => format!("u:{u}"),
        None => format!("a:{anonymous_id}"),
    }
}

/// Users who did `steps` in order, the first in `[from, to]` and each later one at most
/// `within` ms after the first. `rows` are in time order. Returns the count per step.
pub fn funnel(rows: &[FactRow], steps: &[String], from: i64, to: i64, within: i64) -> Vec<u64> {
    let mut by_person: BTreeMap<String, Vec<(i64, &str)>> = BTreeMap::new();
    for r in rows {
        by_person.entry(person(&r.anonymous_id, r.user_id.as_deref())).or_default().push((r.ts, &r.event_type));
    }
    let mut counts = vec![0u64; steps.len()];
    for events in by_person.values() {
        let mut best = 0;
        for (i, &(start, kind)) in events.iter().enumerate() {
            if best == steps.len() {
                break;
            }
            if kind != steps[0] || start < from || start > to {
                continue;
            }
            let mut depth = 1;
            for &(ts, kind) in &events[i + 1..] {
                if depth == steps.len() || ts - start > within {
                    break;
                }
                if kind == steps[depth] {
                    depth += 1;
                }
            }
            best = best.max(depth);
        }
        for c in counts.iter_mut().take(best) {
            *c += 1;
        }
    }
    counts
}

/// One install-day cohort.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cohort {
    pub date: String,
    pub users: u64,
    pub retention: Vec<RetentionCell>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionCell {
    pub day: i64,
    /// Users of the cohort active on that day; `None` when the day has not come yet.
    pub users: Option<u64>,
    pub share: Option<f64>,
}

/// Cohorts by install day (first-seen day for users without an install) in
/// `[from_day, to_day]`, with the share of each cohort active exactly `days` later. `today` is
/// the last day with data; later cells are `None`.
pub fn retention(users: &[UserRow], from_day: i64, to_day: i64, days: &[i64], today: i64) -> Vec<Cohort> {
    let mut people: HashMap<String, (i64, HashSet<i64>)> = HashMap::new();
    for u in users {
        let entry = people.entry(person(&u.anonymous_id, u.user_id.as_deref())).or_insert((u.start, HashSet::new()));
        entry.0 = entry.0.min(u.start);
        entry.1.extend(u.active_days.iter().copied());
    }
    let mut cohorts: BTreeMap<i64, Vec<&HashSet<i64>>> = (from_day..=to_day).map(|d| (d, Vec::new())).collect();
    for (start, active) in people.values() {
        if let Some(c) = cohorts.get_mut(&day_of(*start)) {
            c.push(active);
        }
    }
    cohorts
        .into_iter()
        .map(|(day, members)| {
            let n = members.len() as u64;
            let retention = days
                .iter()
                .map(|&d| {
                    if day + d > today {
                        return RetentionCell { day: d, users: None, share: None };
                    }
                    let k = members.iter().filter(|a| a.contains(&(day + d))).count() as u64;
                    RetentionCell { day: d, users: Some(k), share: (n > 0).then(|| k as f64 / n as f64) }
                })
                .collect();
            Cohort { date: date_text(day), users: n, retention }
        })
        .collect()
}

/// A path to a conversion and how often it was taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathCount {
    pub path: Vec<String>,
    pub conversions: u64,
    pub share: f64,
}

/// The most common event paths to `conversion`: for each conversion in `[from, to]`, the event
/// types before it in its session (since the session's previous conversion), repeats of one
/// type in a row collapsed, the last `max_steps` kept (the conversion included). `rows` are
/// ordered by session, then time. Returns the top `limit` and the number of conversions.
pub fn paths(
    rows: &[FactRow],
    conversion: &str,
    from: i64,
    to: i64,
    max_steps: usize,
    limit: usize,
) -> (Vec<PathCount>, u64) {
    let mut counts: HashMap<Vec<String>, u64> = HashMap::new();
    let mut total = 0u64;
    let mut current: Option<&str> = None;
    let mut trail: Vec<&str> = Vec::new();
    for r in rows {
        if current != Some(r.session_key.as_str()) {
            current = Some(&r.session_key);
            trail.clear();
        }
        if trail.last() != Some(&r.event_type.as_str()) {
            trail.push(&r.event_type);
        }
        if r.event_type == conversion {
            if r.ts >= from && r.ts <= to {
                let keep = trail.len().saturating_sub(max_steps.max(1));
                *counts.entry(trail[keep..].iter().map(|s| s.to_string()).collect()).or_default() += 1;
                total += 1;
            }
            trail.clear();
        }
    }
    let mut list: Vec<(Vec<String>, u64)> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let out = list
        .into_iter()
        .take(limit)
        .map(|(path, n)| PathCount { path, conversions: n, share: n as f64 / total as f64 })
        .collect();
    (out, total)
}

/// A campaign's performance over a report's days.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignMetrics {
    pub campaign_id: String,
    pub name: String,
    pub network: String,
    pub impressions: i64,
    pub clicks: i64,
    pub installs: i64,
    pub rejected_installs: i64,
    /// clicks / impressions.
    pub ctr: Option<f64>,
    /// installs / clicks.
    pub install_rate: Option<f64>,
    pub cost: Option<f64>,
    pub currency: Option<String>,
    /// cost / installs.
    pub cpi: Option<f64>,
    /// Conversions credited to the campaign under the report's model (fractional under the
    /// linear and time-decay models).
    pub conversions: f64,
    /// cost / conversions.
    pub cpa: Option<f64>,
    pub revenue: f64,
    /// revenue / cost.
    pub roas: Option<f64>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

pub fn campaign_metrics(day: &CampaignDay) -> CampaignMetrics {
    let cost = day.cost;
    CampaignMetrics {
        campaign_id: day.campaign_id.clone(),
        name: day.name.clone(),
        network: day.network.clone(),
        impressions: day.impressions,
        clicks: day.clicks,
        installs: day.installs,
        rejected_installs: day.rejected_installs,
        ctr: ratio(day.clicks as f64, day.impressions as f64),
        install_rate: ratio(day.installs as f64, day.clicks as f64),
        cost,
        currency: day.currency.clone(),
        cpi: cost.and_then(|c| ratio(c, day.installs as f64)),
        conversions: day.conversions,
        cpa: cost.and_then(|c| ratio(c, day.conversions)),
        revenue: day.revenue,
        roas: cost.and_then(|c| ratio(day.revenue, c)),
    }
}

// ---------------------------------------------------------------------------------------------
// Parameters.

/// A report's query string.
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parameters given by the server itself (the dashboard).
    pub fn of(pairs: &[(&str, String)]) -> Self {
        Params(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    pub fn parse(uri: &Uri, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut map = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("unknown parameter {k:?}; this report takes {}", allowed.join(", ")),
                ));
            }
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(ApiError::bad_request("invalid_parameter", format!("{k} is given twice")));
            }
        }
        Ok(Params(map))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// `from`/`to` as Unix ms: `to` defaults to now, `from` to 30 days before `to`. A date
    /// (`YYYY-MM-DD`, UTC) means the whole day: `from` its start, `to` its end.
    pub fn range(&self, now: i64) -> Result<(i64, i64), ApiError> {
        let to = match self.get("to") {
            Some(t) => parse_time("to", t, true)?,
            None => now,
        };
        let from = match self.get("from") {
            Some(f) => parse_time("from", f, false)?,
            // The 30 UTC days ending with `to`'s day.
            None => (day_of(to) - 29) * DAY_MS,
        };
        if from > to {
            return Err(ApiError::bad_request("invalid_parameter", "from is after to"));
        }
        if day_of(to) - day_of(from) >= MAX_RANGE_DAYS {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("the range is longer than {MAX_RANGE_DAYS} days"),
            ));
        }
        Ok((from, to))
    }

    /// The app: `app_id` when given (it must exist), else the only configured app.
    pub fn app(&self, state: &AppState) -> Result<String, ApiError> {
        match self.get("app_id") {
            Some(app) if state.config.apps.contains_key(app) => Ok(app.to_owned()),
            Some(app) => Err(ApiError::bad_request("unknown_app", format!("no app {app:?} is configured"))),
            None if state.config.apps.len() == 1 => Ok(state.config.apps.keys().next().cloned().unwrap_or_default()),
            None => Err(ApiError::bad_request("invalid_parameter", "app_id is required when several apps exist")),
        }
    }

    pub fn number(&self, key: &str, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => {
                    Err(ApiError::bad_request("invalid_parameter", format!("{key} must be an integer from 1 to {max}")))
                }
            },
        }
    }
}

/// A time parameter: Unix ms, RFC 3339, or a UTC date (`YYYY-MM-DD`; its last millisecond
/// when `end`).
pub fn parse_time(name: &str, text: &str, end: bool) -> Result<i64, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_parameter",
            format!("{name} must be a date (YYYY-MM-DD), an RFC 3339 time or Unix milliseconds"),
        )
    };
    if let Ok(ms) = text.parse::<i64>() {
        return (0..=253_402_300_799_999).contains(&ms).then_some(ms).ok_or_else(bad);
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let start = date.and_hms_opt(0, 0, 0).ok_or_else(bad)?.and_utc().timestamp_millis();
        return Ok(if end { start + DAY_MS - 1 } else { start });
    }
    chrono::DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis()).map_err(|_| bad())
}

/// A duration: `90s`, `30m`, `24h`, `7d`, or milliseconds.
pub fn parse_duration(name: &str, text: &str) -> Result<i64, ApiError> {
    let bad =
        || ApiError::bad_request("invalid_parameter", format!("{name} must be a duration such as 30m, 24h or 7d"));
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: i64 = number.parse().map_err(|_| bad())?;
    let unit = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => DAY_MS,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).filter(|d| *d > 0 && *d <= 366 * DAY_MS).ok_or_else(bad)
}

fn check_type(name: &str, t: &str) -> Result<String, ApiError> {
    let t = t.trim();
    if t.is_empty() || t.chars().count() > 128 || t.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!("{name}: event types are 1 to 128 characters without control characters"),
        ));
    }
    Ok(t.to_owned())
}

fn storage_error(e: StorageError) -> ApiError {
    match e {
        StorageError::Busy => ApiError::unavailable(1, "the server is busy; retry shortly"),
        other => ApiError::internal(other),
    }
}

async fn read(state: &AppState, query: ReportQuery) -> Result<ReportRows, ApiError> {
    state.maintenance.refresh().await.map_err(storage_error)?;
    state.storage.report(query).await.map_err(storage_error)
}

/// What every report endpoint checks first: the admin credentials, then its parameters.
fn authorized(
    state: &AppState,
    headers: &axum::http::HeaderMap,
    uri: &Uri,
    allowed: &[&str],
) -> Result<Params, ApiError> {
    admin_auth(state, headers)?;
    Params::parse(uri, allowed)
}

fn respond(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}

fn too_many(state: &AppState, n: usize) -> Result<(), ApiError> {
    if n > state.config.reports.max_report_rows {
        return Err(ApiError::bad_request(
            "range_too_large",
            "the report would read too many events; shorten the range",
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Handlers.

/// The funnel report as JSON (also used by the dashboard).
pub async fn funnel_report(state: &AppState, p: &Params) -> Result<Value, ApiError> {
    let app_id = p.app(state)?;
    let steps: Vec<String> = p
        .get("steps")
        .ok_or_else(|| ApiError::bad_request("invalid_parameter", "steps is required, e.g. steps=app_open,purchase"))?
        .split(',')
        .map(|s| check_type("steps", s))
        .collect::<Result<_, _>>()?;
    if steps.len() > MAX_STEPS {
        return Err(ApiError::bad_request("invalid_parameter", format!("at most {MAX_STEPS} steps")));
    }
    let (from, to) = p.range(state.config.clock.now())?;
    let within = p.get("within").map(|w| parse_duration("within", w)).transpose()?.unwrap_or(DEFAULT_WITHIN);
    let campaign = p.get("campaign_id");
    let types: Vec<String> = steps.iter().cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    let ReportRows::Events(mut rows) =
        read(state, ReportQuery::Events { app_id: app_id.clone(), types, from, to: to.saturating_add(within) }).await?
    else {
        return Err(ApiError::internal("unexpected report rows"));
    };
    too_many(state, rows.len())?;
    if let Some(c) = campaign {
        rows.retain(|r| r.campaign_key.as_deref() == Some(c));
    }
    let counts = funnel(&rows, &steps, from, to, within);
    let first = counts.first().copied().unwrap_or(0);
    let steps: Vec<Value> = steps
        .iter()
        .zip(&counts)
        .map(|(t, n)| json!({"type": t, "users": n, "share": (first > 0).then(|| *n as f64 / first as f64)}))
        .collect();
    Ok(json!({"app_id": app_id, "from": from, "to": to, "within": within, "campaign_id": campaign, "steps": steps}))
}

/// `GET /v1/reports/funnel?steps=a,b,c&from=…&to=…[&within=…][&campaign_id=…][&app_id=…]`.
pub async fn funnel_handler(State(state): State<Arc<AppState>>, uri: Uri, headers: axum::http::HeaderMap) -> Response {
    respond(
        async {
            let p = authorized(&state, &headers, &uri, &["steps", "from", "to", "within", "campaign_id", "app_id"])?;
            funnel_report(&state, &p).await
        }
        .await,
    )
}

/// The retention report as JSON.
pub async fn retention_report(state: &AppState, p: &Params) -> Result<Value, ApiError> {
    let app_id = p.app(state)?;
    let now = state.config.clock.now();
    let (from, to) = p.range(now)?;
    let days: Vec<i64> = p
        .get("days")
        .unwrap_or("1,7,30")
        .split(',')
        .map(|d| match d.trim().parse::<i64>() {
            Ok(n) if (0..=366).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request("invalid_parameter", "days are integers from 0 to 366, e.g. days=1,7,30")),
        })
        .collect::<Result<_, _>>()?;
    if days.len() > 32 {
        return Err(ApiError::bad_request("invalid_parameter", "at most 32 days"));
    }
    let (from_day, to_day) = (day_of(from), day_of(to));
    let max_offset = days.iter().copied().max().unwrap_or(0);
    let ReportRows::Users(users) =
        read(state, ReportQuery::Cohorts { app_id: app_id.clone(), from_day, to_day, max_offset }).await?
    else {
        return Err(ApiError::internal("unexpected report rows"));
    };
    too_many(state, users.len())?;
    let cohorts = retention(&users, from_day, to_day, &days, day_of(now));
    Ok(
        json!({"app_id": app_id, "from": date_text(from_day), "to": date_text(to_day), "days": days, "cohorts": cohorts}),
    )
}

/// `GET /v1/reports/retention?from=…&to=…&days=1,7,30[&app_id=…]`.
pub async fn retention_handler(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    respond(
        async {
            let p = authorized(&state, &headers, &uri, &["from", "to", "days", "app_id"])?;
            retention_report(&state, &p).await
        }
        .await,
    )
}

/// The campaign report as JSON.
pub async fn campaigns_report(state: &AppState, p: &Params) -> Result<Value, ApiError> {
    let app_id = p.app(state)?;
    let (from, to) = p.range(state.config.clock.now())?;
    let model = p.get("model").unwrap_or("last_touch");
    if !Model::ALL.iter().any(|m| m.as_str() == model) {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "model is one of last_touch, first_touch, linear, time_decay",
        ));
    }
    let (from_day, to_day) = (day_of(from), day_of(to));
    let query = ReportQuery::Campaigns { app_id: app_id.clone(), from_day, to_day, model: model.to_owned() };
    let ReportRows::Campaigns(days) = read(state, query).await? else {
        return Err(ApiError::internal("unexpected report rows"));
    };
    let campaigns: Vec<CampaignMetrics> = days.iter().map(campaign_metrics).collect();
    Ok(json!({
        "app_id": app_id, "from": date_text(from_day), "to": date_text(to_day), "model": model,
        "campaigns": campaigns,
    }))
}

/// `GET /v1/reports/campaigns?from=…&to=…[&model=last_touch][&app_id=…]`.
pub async fn campaigns_handler(
    State(state): State<Arc<AppState>>,
    uri: Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    respond(
        async {
            let p = authorized(&state, &headers, &uri, &["from", "to", "model", "app_id"])?;
            campaigns_report(&state, &p).await
        }
        .await,
    )
}

/// The paths report as JSON.
pub async fn paths_report(state: &AppState, p: &Params) -> Result<Value, ApiError> {
    let app_id = p.app(state)?;
    let conversion = check_type(
        "conversion",
        p.get("conversion").ok_or_else(|| {
            ApiError::bad_request("invalid_parameter", "conversion is required, e.g. conversion=purchase")
        })?,
    )?;
    let limit = p.number("limit", 10, 100)?;
    let max_steps = p.number("max_steps", 5, 20)?;
    let (from, to) = p.range(state.config.clock.now())?;
    let query = ReportQuery::SessionsWith { app_id: app_id.clone(), event_type: conversion.clone(), from, to };
    let ReportRows::Events(rows) = read(state, query).await? else {
        return Err(ApiError::internal("unexpected report rows"));
    };
    too_many(state, rows.len())?;
    let (list, total) = paths(&rows, &conversion, from, to, max_steps, limit);
    Ok(json!({"app_id": app_id, "conversion": conversion, "from": from, "to": to, "conversions": total, "paths": list}))
}

/// `GET /v1/reports/paths?conversion=purchase[&limit=10][&max_steps=5][&from=…&to=…][&app_id=…]`.
pub async fn paths_handler(State(state): State<Arc<AppState>>, uri: Uri, headers: axum::http::HeaderMap) -> Response {
    respond(
        async {
            let p = authorized(&state, &headers, &uri, &["conversion", "limit", "max_steps", "from", "to", "app_id"])?;
            paths_report(&state, &p).await
        }
        .await,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CostBody {
    date: String,
    amount: f64,
    currency: String,
}

/// Stores a day's cost; shared by the API and the dashboard.
pub async fn save_cost(state: &AppState, campaign_id: &str, body: &[u8]) -> Result<Value, ApiError> {
    let value = ingest::parse_json(body, 4)?;
    let req: CostBody = serde_json::from_value(value).map_err(|e| {
        ApiError::bad_request("invalid_body", format!("expected {{\"date\", \"amount\", \"currency\"}}: {e}"))
    })?;
    let date = chrono::NaiveDate::parse_from_str(&req.date, "%Y-%m-%d")
        .map_err(|_| ApiError::bad_request("invalid_field", "date must be YYYY-MM-DD"))?;
    let day = date.and_hms_opt(0, 0, 0).map(|d| day_of(d.and_utc().timestamp_millis())).unwrap_or_default();
    if !req.amount.is_finite() || req.amount < 0.0 || req.amount > 1e12 {
        return Err(ApiError::bad_request("invalid_field", "amount must be a number from 0 to 10^12"));
    }
    let currency = req.currency.trim().to_ascii_uppercase();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ApiError::bad_request("invalid_field", "currency must be an ISO 4217 code such as USD"));
    }
    let cost = CampaignCost {
        campaign_id: campaign_id.to_owned(),
        date_key: day,
        amount: req.amount,
        currency: currency.clone(),
        updated_at: state.config.clock.now(),
    };
    match state.storage.save_cost(cost).await.map_err(storage_error)? {
        Ok(()) => Ok(json!({"campaign_id": campaign_id, "date": req.date, "amount": req.amount, "currency": currency})),
        Err(why) if why.starts_with("no campaign") => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_campaign", why))
        }
        Err(why) => Err(ApiError::new(StatusCode::CONFLICT, "currency_mismatch", why)),
    }
}

/// `POST /v1/campaigns/{campaign_id}/cost` `{"date", "amount", "currency"}`: one day's cost
/// (posting the same day again replaces it).
pub async fn cost_handler(
    State(state): State<Arc<AppState>>,
    Path(campaign_id): Path<String>,
    request: axum::extract::Request,
) -> Response {
    respond(
        async {
            let (parts, body) = request.into_parts();
            admin_auth(&state, &parts.headers)?;
            let body = ingest::read_body(body, 4096).await?;
            save_cost(&state, &campaign_id, &body).await
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(anon: &str, kind: &str, ts: i64, session: &str) -> FactRow {
        FactRow {
            anonymous_id: anon.into(),
            user_id: None,
            event_type: kind.into(),
            ts,
            session_key: session.into(),
            campaign_key: None,
        }
    }

    #[test]
    fn funnel_counts_ordered_steps_within_the_window() {
        let steps: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let rows = vec![
            row("u1", "a", 10, "s"),
            row("u1", "b", 20, "s"),
            row("u1", "c", 30, "s"),
            // out of order: c before b
            row("u2", "a", 10, "s"),
            row("u2", "c", 15, "s"),
            row("u2", "b", 20, "s"),
            // too slow for the window from its first a, but a later a completes it
            row("u3", "a", 10, "s"),
            row("u3", "a", 200, "s"),
            row("u3", "b", 210, "s"),
            row("u3", "c", 220, "s"),
            // starts before the range
            row("u4", "a", 1, "s"),
            row("u4", "b", 12, "s"),
        ];
        assert_eq!(funnel(&rows, &steps, 5, 300, 100), vec![3, 3, 2]);
        assert_eq!(funnel(&rows, &steps, 5, 100, 100), vec![3, 2, 1], "u3 has only its first a in range, too slow");
    }

    #[test]
    fn retention_shares_per_cohort() {
        let user = |a: &str, start: i64, days: &[i64]| UserRow {
            anonymous_id: a.into(),
            user_id: None,
            start,
            active_days: days.to_vec(),
        };
        let users =
            vec![user("a", 0, &[0, 1, 7]), user("b", 5, &[0, 1]), user("c", 100, &[0]), user("d", DAY_MS, &[1, 2])];
        let c = retention(&users, 0, 1, &[1, 7], 5);
        assert_eq!(c[0].users, 3);
        assert_eq!(c[0].retention[0].share, Some(2.0 / 3.0));
        assert_eq!(c[0].retention[1], RetentionCell { day: 7, users: None, share: None });
        assert_eq!(c[1].users, 1);
        assert_eq!(c[1].retention[0].share, Some(1.0));
    }

    #[test]
    fn paths_collapse_repeats_and_split_at_conversions() {
        let rows = vec![
            row("u", "open", 1, "s1"),
            row("u", "view", 2, "s1"),
            row("u", "view", 3, "s1"),
            row("u", "buy", 4, "s1"),
            row("u", "view", 5, "s1"),
            row("u", "buy", 6, "s1"),
            row("v", "open", 1, "s2"),
            row("v", "view", 2, "s2"),
            row("v", "buy", 3, "s2"),
        ];
        let (list, total) = paths(&rows, "buy", 0, 10, 5, 10);
        assert_eq!(total, 3);
        assert_eq!(list[0].path, ["open", "view", "buy"]);
        assert_eq!(list[0].conversions, 2);
        assert_eq!(list[1].path, ["view", "buy"]);
    }

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_duration("w", "30m").unwrap(), 1_800_000);
        assert_eq!(parse_duration("w", "7d").unwrap(), 7 * DAY_MS);
        assert!(parse_duration("w", "7x").is_err());
        assert!(parse_duration("w", "0").is_err());
        assert_eq!(parse_time("t", "1970-01-02", false).unwrap(), DAY_MS);
        assert_eq!(parse_time("t", "1970-01-02", true).unwrap(), 2 * DAY_MS - 1);
        assert_eq!(parse_time("t", "1970-01-01T00:00:01Z", false).unwrap(), 1000);
        assert!(parse_time("t", "yesterday", false).is_err());
    }
}
