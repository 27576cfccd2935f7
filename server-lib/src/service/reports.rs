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
    CampaignMetrics, CostBody, DAY_MS, DEFAULT_WITHIN, HOUR_MS, MAX_HOURLY_BUCKETS, MAX_STEPS, Params,
    campaign_metrics, check_type, cohorts, date_text, day_of, funnel, parse_duration, parse_time, paths, retention,
    trend,
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
    let model = model_param(p)?;
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

fn model_param(p: &Params) -> Result<&str, Refusal> {
    let model = p.get("model").unwrap_or("last_touch");
    if !Model::ALL.iter().any(|m| m.as_str() == model) {
        return Err(Refusal::invalid(
            "invalid_parameter",
            "model is one of last_touch, first_touch, linear, time_decay",
        ));
    }
    Ok(model)
}

/// A campaign or network filter: at most 200 characters (an empty one: any).
fn filter_param<'a>(p: &'a Params, key: &str) -> Result<&'a str, Refusal> {
    let v = p.get(key).unwrap_or("");
    if v.chars().count() > 200 {
        return Err(Refusal::invalid("invalid_parameter", format!("{key} is longer than 200 characters")));
    }
    Ok(v)
}

/// The trend report as JSON: events by type, installs by match type, revenue and conversions,
/// by day (the rollups) or by hour (the facts; the last 48 hours unless a range is given, at
/// most two weeks), optionally of one campaign or network.
pub async fn trend_report(svc: &Services, p: &Params) -> ServiceResult<Value> {
    let app_id = p.app(&svc.config.apps)?;
    let now = svc.config.clock.now();
    let model = model_param(p)?;
    let (campaign_id, network) = (filter_param(p, "campaign_id")?, filter_param(p, "network")?);
    let (width, first, last) = match p.get("bucket").unwrap_or("day") {
        "day" => {
            let (from, to) = p.range(now)?;
            (DAY_MS, day_of(from), day_of(to))
        }
        "hour" => {
            let to = p.get("to").map(|t| parse_time("to", t, true)).transpose()?.unwrap_or(now);
            let from = match p.get("from") {
                Some(f) => parse_time("from", f, false)?,
                None => (to.div_euclid(HOUR_MS) - 47) * HOUR_MS,
            };
            let (first, last) = (from.div_euclid(HOUR_MS), to.div_euclid(HOUR_MS));
            if first > last {
                return Err(Refusal::invalid("invalid_parameter", "from is after to").into());
            }
            if last - first >= MAX_HOURLY_BUCKETS {
                return Err(Refusal::invalid(
                    "invalid_parameter",
                    format!("an hourly trend covers at most {MAX_HOURLY_BUCKETS} hours; use bucket=day"),
                )
                .into());
            }
            (HOUR_MS, first, last)
        }
        _ => return Err(Refusal::invalid("invalid_parameter", "bucket is day or hour").into()),
    };
    let query = ReportQuery::Trend {
        app_id: app_id.clone(),
        width,
        first,
        last,
        campaign_id: campaign_id.to_owned(),
        network: network.to_owned(),
        model: model.to_owned(),
    };
    let ReportRows::Trend(rows) = read(svc, query).await? else {
        return Err(unexpected());
    };
    let mut out = json!({
        "app_id": app_id, "from": first * width, "to": (last + 1) * width - 1, "model": model,
        "campaign_id": (!campaign_id.is_empty()).then_some(campaign_id),
        "network": (!network.is_empty()).then_some(network),
    });
    if let (Value::Object(o), Ok(Value::Object(t))) = (&mut out, serde_json::to_value(trend(&rows, width, first, last)))
    {
        o.extend(t);
    }
    Ok(out)
}

/// One campaign's page as JSON: the campaign, its links with their clicks and installs, its
/// metrics under every attribution model (CPI, CPA, ROAS), and its rejected installs by fraud
/// rule, over a report's range (the last 30 days by default).
pub async fn campaign_detail(svc: &Services, campaign_id: &str, p: &Params) -> ServiceResult<Value> {
    svc.tracking.ready(svc).await?;
    let (campaign, links) = {
        let t = svc.tracking.lock()?;
        let Some(c) = t.campaigns.get(campaign_id) else {
            return Err(Refusal::not_found("unknown_campaign", "no campaign with this id").into());
        };
        let mut links: Vec<_> =
            t.links.iter().filter(|l| l.campaign_id == campaign_id).map(|l| (**l).clone()).collect();
        links.sort_by(|a, b| a.created_at.cmp(&b.created_at).then_with(|| a.link_id.cmp(&b.link_id)));
        (c.clone(), links)
    };
    let app_id = campaign.app_id.clone();
    let (from, to) = p.range(svc.config.clock.now())?;
    let (from_day, to_day) = (day_of(from), day_of(to));
    let mut models = serde_json::Map::new();
    for model in Model::ALL {
        let query =
            ReportQuery::Campaigns { app_id: app_id.clone(), from_day, to_day, model: model.as_str().to_owned() };
        let ReportRows::Campaigns(days) = read(svc, query).await? else {
            return Err(unexpected());
        };
        if let Some(day) = days.iter().find(|d| d.campaign_id == campaign_id) {
            models.insert(model.as_str().to_owned(), serde_json::to_value(campaign_metrics(day)).unwrap_or_default());
        }
    }
    // Whole days, as the rollups behind the metrics count them.
    let (from_ms, to_ms) = (from_day * DAY_MS, (to_day + 1) * DAY_MS - 1);
    let query = ReportQuery::CampaignLinks {
        app_id: app_id.clone(),
        campaign_id: campaign_id.to_owned(),
        from: from_ms,
        to: to_ms,
    };
    let ReportRows::CampaignLinks(stats, rejections) = svc.storage.report(query).await? else {
        return Err(unexpected());
    };
    let links: Vec<Value> = links
        .iter()
        .map(|l| {
            let s = stats.iter().find(|s| s.link_id == l.link_id);
            json!({
                "link_id": l.link_id, "url": crate::service::links::link_url(svc, &l.code), "enabled": l.enabled,
                "destinations": l.destinations, "utm": l.utm, "created_at": l.created_at,
                "clicks": s.map_or(0, |s| s.clicks), "impressions": s.map_or(0, |s| s.impressions),
                "installs": s.map_or(0, |s| s.installs), "rejected_installs": s.map_or(0, |s| s.rejected_installs),
            })
        })
        .collect();
    let rejections: Vec<Value> = rejections.iter().map(|(rule, n)| json!({"rule": rule, "installs": n})).collect();
    Ok(json!({
        "campaign_id": campaign_id, "app_id": app_id, "name": campaign.name, "network": campaign.network,
        "from": date_text(from_day), "to": date_text(to_day), "models": models, "links": links,
        "rejections": rejections,
    }))
}
