//! Reports: the maintenance that keeps the star schema fresh and applies retention (on the
//! server's clock, so a test runs a year of retention in a moment), and the report queries —
//! refresh, read the rows, compute with the pure `domain::reports` functions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Value, json};

use super::{ServiceError, ServiceResult, Services};
use crate::domain::attribution::Model;
use crate::domain::config::{Clock, ReportConfig};
use crate::domain::error::Refusal;
use crate::domain::identity::resolve_people;
use crate::domain::records::{CampaignCost, PurgeReport, ReportQuery, ReportRows, RetentionCutoffs};
use crate::domain::reports::{
    CampaignMetrics, CostBody, DAY_MS, DEFAULT_WITHIN, MAX_STEPS, Params, campaign_metrics, check_type, cohorts,
    date_text, day_of, funnel, parse_duration, paths, retention,
};
use crate::olap::clickhouse::FunnelQuery;
use crate::storage::{Storage, StorageError};

fn unexpected() -> ServiceError {
    ServiceError::Internal("the store answered a report query with rows of another report".into())
}

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
}

async fn read(svc: &Services, query: ReportQuery) -> ServiceResult<ReportRows> {
    svc.maintenance.refresh().await?;
    if let Some(olap) = &svc.olap
        && let Some(rows) = olap.report(&query).await?
    {
        return Ok(rows);
    }
    Ok(svc.storage.report(query).await?)
}

/// The app's identity map (`alias → user id`), for counting people.
async fn identity_links(svc: &Services, app_id: &str) -> ServiceResult<HashMap<String, String>> {
    Ok(svc.storage.identity_links(app_id.to_owned()).await?.into_iter().collect())
}

fn too_many(svc: &Services, n: usize) -> Result<(), Refusal> {
    if n > svc.config.reports.max_report_rows {
        return Err(Refusal::invalid("range_too_large", "the report would read too many events; shorten the range"));
    }
    Ok(())
}

/// The funnel report as JSON (also used by the dashboard).
pub async fn funnel_report(svc: &Services, p: &Params) -> ServiceResult<Value> {
    let app_id = p.app(&svc.config.apps)?;
    let steps: Vec<String> = p
        .get("steps")
        .ok_or_else(|| Refusal::invalid("invalid_parameter", "steps is required, e.g. steps=app_opened,purchase"))?
        .split(',')
        .map(|s| check_type("steps", s))
        .collect::<Result<_, _>>()?;
    if steps.len() > MAX_STEPS {
        return Err(Refusal::invalid("invalid_parameter", format!("at most {MAX_STEPS} steps")).into());
    }
    let (from, to) = p.range(svc.config.clock.now())?;
    let within = p.get("within").map(|w| parse_duration("within", w)).transpose()?.unwrap_or(DEFAULT_WITHIN);
    let campaign = p.get("campaign_id");
    let counts = match &svc.olap {
        Some(olap) => {
            svc.maintenance.refresh().await?;
            olap.funnel(&FunnelQuery { app_id: &app_id, steps: &steps, from, to, within, campaign }).await?
        }
        None => {
            let types: Vec<String> =
                steps.iter().cloned().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
            let query = ReportQuery::Events { app_id: app_id.clone(), types, from, to: to.saturating_add(within) };
            let ReportRows::Events(mut rows) = read(svc, query).await? else {
                return Err(unexpected());
            };
            too_many(svc, rows.len())?;
            if let Some(c) = campaign {
                rows.retain(|r| r.campaign_key.as_deref() == Some(c));
            }
            resolve_people(rows.iter_mut().map(|r| &mut r.user_id), &identity_links(svc, &app_id).await?);
            funnel(&rows, &steps, from, to, within)
        }
    };
    let first = counts.first().copied().unwrap_or(0);
    let steps: Vec<Value> = steps
        .iter()
        .zip(&counts)
        .map(|(t, n)| json!({"type": t, "users": n, "share": (first > 0).then(|| *n as f64 / first as f64)}))
        .collect();
    Ok(json!({"app_id": app_id, "from": from, "to": to, "within": within, "campaign_id": campaign, "steps": steps}))
}

/// The retention report as JSON.
pub async fn retention_report(svc: &Services, p: &Params) -> ServiceResult<Value> {
    let app_id = p.app(&svc.config.apps)?;
    let now = svc.config.clock.now();
    let (from, to) = p.range(now)?;
    let days: Vec<i64> = p
        .get("days")
        .unwrap_or("1,7,30")
        .split(',')
        .map(|d| match d.trim().parse::<i64>() {
            Ok(n) if (0..=366).contains(&n) => Ok(n),
            _ => Err(Refusal::invalid("invalid_parameter", "days are integers from 0 to 366, e.g. days=1,7,30")),
        })
        .collect::<Result<_, _>>()?;
    if days.len() > 32 {
        return Err(Refusal::invalid("invalid_parameter", "at most 32 days").into());
    }
    let (from_day, to_day) = (day_of(from), day_of(to));
    let max_offset = days.iter().copied().max().unwrap_or(0);
    let cohorts = match &svc.olap {
        Some(olap) => {
            svc.maintenance.refresh().await?;
            let counts = olap.retention(&app_id, (from_day, to_day), &days).await?;
            cohorts(&counts, from_day, to_day, &days, day_of(now))
        }
        None => {
            let query = ReportQuery::Cohorts { app_id: app_id.clone(), from_day, to_day, max_offset };
            let ReportRows::Users(mut users) = read(svc, query).await? else {
                return Err(unexpected());
            };
            too_many(svc, users.len())?;
            resolve_people(users.iter_mut().map(|u| &mut u.user_id), &identity_links(svc, &app_id).await?);
            retention(&users, from_day, to_day, &days, day_of(now))
        }
    };
    Ok(
        json!({"app_id": app_id, "from": date_text(from_day), "to": date_text(to_day), "days": days, "cohorts": cohorts}),
    )
}

/// The campaign report as JSON.
pub async fn campaigns_report(svc: &Services, p: &Params) -> ServiceResult<Value> {
    let app_id = p.app(&svc.config.apps)?;
    let (from, to) = p.range(svc.config.clock.now())?;
    let model = p.get("model").unwrap_or("last_touch");
    if !Model::ALL.iter().any(|m| m.as_str() == model) {
        return Err(Refusal::invalid(
            "invalid_parameter",
            "model is one of last_touch, first_touch, linear, time_decay",
        )
        .into());
    }
    let (from_day, to_day) = (day_of(from), day_of(to));
    let query = ReportQuery::Campaigns { app_id: app_id.clone(), from_day, to_day, model: model.to_owned() };
    let ReportRows::Campaigns(days) = read(svc, query).await? else {
        return Err(unexpected());
    };
    let campaigns: Vec<CampaignMetrics> = days.iter().map(campaign_metrics).collect();
    Ok(json!({
        "app_id": app_id, "from": date_text(from_day), "to": date_text(to_day), "model": model,
        "campaigns": campaigns,
    }))
}

/// The paths report as JSON.
pub async fn paths_report(svc: &Services, p: &Params) -> ServiceResult<Value> {
    let app_id = p.app(&svc.config.apps)?;
    let conversion = check_type(
        "conversion",
        p.get("conversion")
            .ok_or_else(|| Refusal::invalid("invalid_parameter", "conversion is required, e.g. conversion=purchase"))?,
    )?;
    let limit = p.number("limit", 10, 100)?;
    let max_steps = p.number("max_steps", 5, 20)?;
    let (from, to) = p.range(svc.config.clock.now())?;
    let query = ReportQuery::SessionsWith { app_id: app_id.clone(), event_type: conversion.clone(), from, to };
    let ReportRows::Events(rows) = read(svc, query).await? else {
        return Err(unexpected());
    };
    too_many(svc, rows.len())?;
    let (list, total) = paths(&rows, &conversion, from, to, max_steps, limit);
    Ok(json!({"app_id": app_id, "conversion": conversion, "from": from, "to": to, "conversions": total, "paths": list}))
}

/// Stores a day's cost of a campaign (posting the same day again replaces it).
pub async fn save_cost(svc: &Services, campaign_id: &str, req: CostBody) -> ServiceResult<Value> {
    let (day, currency) = req.checked()?;
    let cost = CampaignCost {
        campaign_id: campaign_id.to_owned(),
        date_key: day,
        amount: req.amount,
        currency: currency.clone(),
        updated_at: svc.config.clock.now(),
    };
    match svc.storage.save_cost(cost).await? {
        Ok(()) => Ok(json!({"campaign_id": campaign_id, "date": req.date, "amount": req.amount, "currency": currency})),
        Err(why) if why.starts_with("no campaign") => Err(Refusal::not_found("unknown_campaign", why).into()),
        Err(why) => Err(Refusal::conflict("currency_mismatch", why).into()),
    }
}
