//! After events are stored: touchpoints from click ids the SDKs report, re-engagements, and
//! conversion credit under every model.

use serde_json::Value;

use crate::AppState;
use crate::domain::attribution::{Model, TouchKind, credit};
use crate::storage::{ConversionCredit, Reengagement, Touchpoint};

/// Event types that mean "the app was opened through a link".
pub const OPEN_EVENTS: &[&str] = &["deep_link_opened"];

/// What the follow-up needs to know about one stored event.
#[derive(Debug, Clone)]
pub struct Followup {
    pub event_id: String,
    pub event_type: String,
    pub anonymous_id: String,
    pub user_id: Option<String>,
    /// Clock-corrected event time.
    pub ts: i64,
    /// `context.campaign.click_id`, when it is a Trailmark click id.
    pub click_id: Option<uuid::Uuid>,
    pub revenue: Option<f64>,
    pub currency: Option<String>,
}

impl Followup {
    /// Extracts the follow-up facts from an event as received; `None` when the event needs no
    /// follow-up (no click id, not a conversion).
    pub fn from_event(event: &Value, conversion_events: &[String]) -> Option<(Option<uuid::Uuid>, bool)> {
        let click_id = event
            .pointer("/context/campaign/click_id")
            .and_then(Value::as_str)
            .and_then(|c| uuid::Uuid::parse_str(c.trim()).ok());
        let kind = event.get("type").and_then(Value::as_str).unwrap_or_default();
        let conversion = conversion_events.iter().any(|c| c == kind);
        (click_id.is_some() || conversion).then_some((click_id, conversion))
    }

    pub fn is_conversion(&self, state: &AppState) -> bool {
        state.config.attribution.conversion_events.contains(&self.event_type)
    }
}

/// Runs the follow-ups of one request's stored events, in order. Failures are logged and
/// counted: the events are stored already, and a retried request runs its follow-ups again
/// (every step is idempotent).
pub async fn process(state: &AppState, app_id: &str, items: Vec<Followup>) {
    if items.is_empty() || state.tracking.ready(state).await.is_err() {
        return;
    }
    if let Err(e) = run(state, app_id, items).await {
        metrics::counter!("trailmark_followup_failures_total").increment(1);
        tracing::warn!(error = %e, "attribution follow-up failed");
    }
}

async fn run(state: &AppState, app_id: &str, items: Vec<Followup>) -> Result<(), crate::StorageError> {
    let cfg = &state.config.attribution;
    // Resolve click ids against the index (clicks of this app only).
    let mut touchpoints = Vec::new();
    let mut opens = Vec::new();
    // With a shared click cache (several instances) the click may have been answered by
    // another instance: look it up there.
    let mut shared: std::collections::HashMap<String, crate::clickcache::CachedTouch> = Default::default();
    if let Some(cache) = &state.click_cache {
        let click_ids: Vec<String> = items.iter().filter_map(|i| i.click_id.map(|c| c.to_string())).collect();
        if !click_ids.is_empty() {
            let query = crate::clickcache::CandidateQuery { click_ids, limit: 1, ..Default::default() };
            match cache.candidates(query).await {
                Ok(found) => shared.extend(found.into_iter().map(|t| (t.click_id.to_ascii_lowercase(), t))),
                Err(e) => tracing::warn!(error = %e, "click cache unavailable for touchpoints"),
            }
            let unknown_link =
                state.tracking.lock().is_ok_and(|g| shared.values().any(|t| !g.by_id.contains_key(&t.link_id)));
            if unknown_link {
                state.tracking.reload_after_miss(state).await;
            }
        }
    }
    {
        let Ok(tracking) = state.tracking.lock() else { return Ok(()) };
        for item in &items {
            let Some(id) = item.click_id else { continue };
            let touch = match shared.get(&id.to_string()) {
                Some(t) => {
                    let ip = t.ip_enc.as_deref().and_then(|h| hex::decode(h).ok());
                    let ip = ip.and_then(|b| state.ip_cipher.decrypt(&b));
                    tracking.touch_of(&t.to_record(), ip)
                }
                // Without a click cache; with one, the local index is empty.
                None => tracking.index.by_click_id(&id).copied(),
            };
            let Some(touch) = touch else { continue };
            let Some(link) = tracking.infos.get(touch.link as usize).filter(|l| l.app_id == app_id) else {
                continue;
            };
            let tp = Touchpoint {
                app_id: app_id.to_owned(),
                anonymous_id: item.anonymous_id.clone(),
                ts: touch.ts,
                click_id: id.to_string(),
                link_id: link.link_id.clone(),
                campaign_id: link.campaign_id.clone(),
                network: link.network.clone(),
                kind: if touch.kind == TouchKind::Impression { "impression" } else { "click" }.into(),
                source_event_id: item.event_id.clone(),
            };
            if OPEN_EVENTS.contains(&item.event_type.as_str())
                && touch.kind == TouchKind::Click
                && (0..=cfg.click_window).contains(&(item.ts - touch.ts))
            {
                opens.push((item.clone(), tp.clone()));
            }
            touchpoints.push(tp);
        }
    }
    let mut reengagements = Vec::new();
    for (open, tp) in opens {
        let crate::storage::ReengagementFacts { installed, last_activity: last } =
            state.storage.reengagement_facts(app_id.to_owned(), open.anonymous_id.clone(), tp.ts).await?;
        let inactive = last.map(|l| tp.ts - l);
        if installed && inactive.is_none_or(|i| i >= cfg.reengagement_inactivity) {
            reengagements.push(Reengagement {
                app_id: app_id.to_owned(),
                event_id: open.event_id.clone(),
                anonymous_id: open.anonymous_id.clone(),
                click_id: tp.click_id.clone(),
                link_id: tp.link_id.clone(),
                campaign_id: tp.campaign_id.clone(),
                network: tp.network.clone(),
                click_ts: tp.ts,
                open_ts: open.ts,
                inactive_ms: inactive,
            });
            touchpoints.push(Touchpoint { kind: "reengagement".into(), ..tp });
        }
    }
    if !touchpoints.is_empty() || !reengagements.is_empty() {
        let fresh = state.storage.save_touchpoints(touchpoints, reengagements.clone()).await?;
        for (r, _) in reengagements.iter().zip(fresh).filter(|(_, new)| *new) {
            metrics::counter!("trailmark_reengagements_total").increment(1);
            crate::postbacks::reengagement(state, r).await;
        }
    }
    for item in items.iter().filter(|i| i.is_conversion(state)) {
        let touches = state
            .storage
            .conversion_touchpoints(
                app_id.to_owned(),
                item.anonymous_id.clone(),
                item.user_id.clone(),
                item.ts - cfg.lookback_window,
                item.ts,
            )
            .await?;
        let rows = credit_rows(app_id, item, &touches, cfg.half_life);
        if state.storage.save_conversion(rows.clone()).await? {
            metrics::counter!("trailmark_conversions_total", "attributed" => (!touches.is_empty()).to_string())
                .increment(1);
            crate::postbacks::conversion(state, item, &rows).await;
        }
    }
    Ok(())
}

/// The credit rows of one conversion under every model.
pub fn credit_rows(app_id: &str, item: &Followup, touches: &[Touchpoint], half_life: i64) -> Vec<ConversionCredit> {
    let times: Vec<i64> = touches.iter().map(|t| t.ts).collect();
    let mut rows = Vec::new();
    for model in Model::ALL {
        let shares = credit(model, &times, item.ts, half_life);
        let base = ConversionCredit {
            app_id: app_id.to_owned(),
            event_id: item.event_id.clone(),
            model: model.as_str().to_owned(),
            click_id: None,
            anonymous_id: item.anonymous_id.clone(),
            user_id: item.user_id.clone(),
            event_type: item.event_type.clone(),
            ts: item.ts,
            link_id: None,
            campaign_id: None,
            network: None,
            touch_ts: None,
            credit: 1.0,
            revenue: item.revenue,
            currency: item.currency.clone(),
        };
        if shares.is_empty() {
            rows.push(base);
            continue;
        }
        for (t, share) in touches.iter().zip(shares) {
            if share > 0.0 {
                rows.push(ConversionCredit {
                    click_id: Some(t.click_id.clone()),
                    link_id: Some(t.link_id.clone()),
                    campaign_id: Some(t.campaign_id.clone()),
                    network: Some(t.network.clone()),
                    touch_ts: Some(t.ts),
                    credit: share,
                    revenue: item.revenue.map(|r| r * share),
                    ..base.clone()
                });
            }
        }
    }
    rows
}
