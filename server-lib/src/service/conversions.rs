//! After events are stored: touchpoints from click ids the SDKs report, re-engagements, and
//! conversion credit under every model.

use super::Services;
use crate::domain::attribution::TouchKind;
use crate::domain::conversions::{Followup, OPEN_EVENTS, credit_rows};
use crate::domain::records::{Reengagement, ReengagementFacts, Touchpoint};
use crate::storage::StorageError;

/// Runs the follow-ups of one request's stored events, in order. Failures are logged and
/// counted: the events are stored already, and a retried request runs its follow-ups again
/// (every step is idempotent).
pub async fn process(svc: &Services, app_id: &str, items: Vec<Followup>) {
    if items.is_empty() || svc.tracking.ready(svc).await.is_err() {
        return;
    }
    if let Err(e) = run(svc, app_id, items).await {
        metrics::counter!("trailmark_followup_failures_total").increment(1);
        tracing::warn!(error = %e, "attribution follow-up failed");
    }
}

async fn run(svc: &Services, app_id: &str, items: Vec<Followup>) -> Result<(), StorageError> {
    let cfg = &svc.config.attribution;
    // Resolve click ids against the index (clicks of this app only).
    let mut touchpoints = Vec::new();
    let mut opens = Vec::new();
    // With a shared click cache (several instances) the click may have been answered by
    // another instance: look it up there.
    let click_ids = items.iter().filter_map(|i| i.click_id.map(|c| c.to_string())).collect();
    let lookup = svc.clicks.lookup(svc, click_ids).await;
    {
        let Ok(tracking) = svc.tracking.lock() else { return Ok(()) };
        for item in &items {
            let Some(id) = item.click_id else { continue };
            let Some(touch) = lookup.touch(&tracking, &id, svc) else { continue };
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
        let ReengagementFacts { installed, last_activity: last } =
            svc.storage.reengagement_facts(app_id.to_owned(), open.anonymous_id.clone(), tp.ts).await?;
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
        let fresh = svc.storage.save_touchpoints(touchpoints, reengagements.clone()).await?;
        for (r, _) in reengagements.iter().zip(fresh).filter(|(_, new)| *new) {
            metrics::counter!("trailmark_reengagements_total").increment(1);
            let allowed = items.iter().find(|i| i.event_id == r.event_id).is_none_or(|i| i.postbacks_allowed);
            if allowed {
                super::postbacks::reengagement(svc, r).await;
            } else {
                metrics::counter!("trailmark_postbacks_withheld_total", "reason" => "consent").increment(1);
            }
        }
    }
    for item in items.iter().filter(|i| i.is_conversion(&cfg.conversion_events)) {
        let touches = svc
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
        if svc.storage.save_conversion(rows.clone()).await? {
            metrics::counter!("trailmark_conversions_total", "attributed" => (!touches.is_empty()).to_string())
                .increment(1);
            if item.postbacks_allowed {
                super::postbacks::conversion(svc, item, &rows).await;
            } else {
                metrics::counter!("trailmark_postbacks_withheld_total", "reason" => "consent").increment(1);
            }
        }
    }
    Ok(())
}
