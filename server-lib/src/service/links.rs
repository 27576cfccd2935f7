//! Campaigns, links and clicks: creating and editing them (audited), following a link
//! (flood flags, the touch index or shared cache, write-behind storage), and finding a link by
//! code or id across instances.

use std::sync::Arc;

use serde_json::{Value, json};

use super::tracking::TrackState;
use super::{ServiceResult, Services};
use crate::domain::attribution::OsFamily;
use crate::domain::attribution::index::{FLAG_FLOOD_DEVICE, FLAG_FLOOD_IP, FLAG_TZ_GUESSED};
use crate::domain::attribution::matching::normalize_locale;
use crate::domain::enrich;
use crate::domain::error::Refusal;
use crate::domain::links::{
    ClickFacts, LinkChange, MAX_TEXT, NewCampaign, NewLink, check_link_parts, check_text, random_code, random_id,
};
use crate::domain::records::{Campaign, ClickRecord, LinkAudit, LinkRecord};

/// The public URL of a link code.
pub fn link_url(svc: &Services, code: &str) -> String {
    match &svc.config.public_url {
        Some(base) => format!("{}/c/{code}", base.trim_end_matches('/')),
        None => format!("/c/{code}"),
    }
}

/// Creates a campaign (the API and the dashboard); returns its id.
pub async fn new_campaign(svc: &Services, req: NewCampaign) -> ServiceResult<String> {
    check_text("name", &req.name, MAX_TEXT)?;
    check_text("network", &req.network, 64)?;
    let app_id = match req.app_id {
        Some(app) if svc.config.apps.contains_key(&app) => app,
        Some(app) => return Err(Refusal::invalid("unknown_app", format!("no app {app:?} is configured")).into()),
        None if svc.config.apps.len() == 1 => svc.config.apps.keys().next().cloned().unwrap_or_default(),
        None => {
            return Err(Refusal::invalid("invalid_body", "app_id is required when several apps exist").into());
        }
    };
    let campaign = Campaign {
        campaign_id: random_id("cmp"),
        app_id,
        name: req.name.trim().to_owned(),
        network: req.network.trim().to_owned(),
        created_at: svc.config.clock.now(),
    };
    svc.tracking.ready(svc).await?;
    let id = campaign.campaign_id.clone();
    svc.storage.save_campaign(campaign.clone()).await?;
    svc.tracking.lock()?.campaigns.insert(id.clone(), campaign);
    Ok(id)
}

/// Creates a link and its audit entry (the API and the dashboard); returns
/// `{"link_id", "code", "url"}`.
pub async fn new_link(svc: &Services, actor: String, req: NewLink) -> ServiceResult<Value> {
    check_link_parts(&req.utm, &req.destinations, req.deep_link.as_ref())?;
    svc.tracking.ready(svc).await?;
    // The campaign may have been made through another instance sharing the store.
    svc.tracking.reload_links(svc, std::time::Duration::ZERO).await?;
    let _serial = svc.tracking.link_changes.lock().await;
    let now = svc.config.clock.now();
    let link = {
        let tracking = svc.tracking.lock()?;
        let Some(campaign) = tracking.campaigns.get(&req.campaign_id) else {
            return Err(Refusal::invalid("unknown_campaign", "no campaign with this id").into());
        };
        let mut code = random_code();
        while tracking.by_code.contains_key(&code) {
            code = random_code();
        }
        LinkRecord {
            link_id: random_id("lnk"),
            code,
            campaign_id: campaign.campaign_id.clone(),
            app_id: campaign.app_id.clone(),
            network: campaign.network.clone(),
            utm: req.utm,
            destinations: req.destinations,
            deep_link: req.deep_link,
            enabled: true,
            created_at: now,
            updated_at: now,
        }
    };
    let audit = LinkAudit {
        link_id: link.link_id.clone(),
        at: now,
        actor,
        action: "create".into(),
        before: None,
        after: serde_json::to_value(&link).unwrap_or_default(),
    };
    svc.storage.save_link(link.clone(), audit).await?;
    let body = json!({"link_id": link.link_id, "code": link.code, "url": link_url(svc, &link.code)});
    svc.tracking.lock()?.put_link(link);
    Ok(body)
}

/// The refusal for a link id nobody knows (or that another app owns).
pub fn link_not_found() -> Refusal {
    Refusal::not_found("not_found", "no link with this id")
}

/// Why a click was not recorded (the visitor is redirected all the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotRecorded {
    Bot,
    RateLimited,
}

/// The click id of a recorded touch, or why none was recorded; with the visitor's OS family.
pub type Recorded = Result<(String, OsFamily), (NotRecorded, OsFamily)>;

/// Records a click or impression on link `link_id`: flooding flags, the index, storage.
/// Returns the click id, or why nothing was recorded; with the visitor's OS family either way.
pub async fn record(
    svc: &Services,
    link_id: &str,
    kind: &str,
    source: &str,
    facts: ClickFacts,
) -> ServiceResult<Recorded> {
    let ip = facts.ip;
    let ua = facts.user_agent.as_deref();
    let parsed = ua.map(|ua| svc.agents.parse(ua)).unwrap_or_default();
    let os = OsFamily::of(parsed.os.as_deref());
    // A network's server-to-server click often has no user agent; that alone is not a bot.
    let bot = !(ua.is_none() && source == "s2s") && enrich::is_bot(ua, &parsed);
    if bot {
        metrics::counter!("trailmark_bot_clicks_total", "kind" => kind.to_owned()).increment(1);
        return Ok(Err((NotRecorded::Bot, os)));
    }
    // A visitor's own click pays its address's request bucket; a network's report of a click
    // pays the visitor address's click bucket (a network cannot lock an address out of ingest).
    let limited = if source == "s2s" {
        let network = {
            let t = svc.tracking.lock()?;
            t.by_id.get(link_id).map(|&i| t.links[i as usize].network.clone()).unwrap_or_default()
        };
        svc.limits.check_click_ip(&network, facts.ip)
    } else {
        svc.limits.check_ip(facts.ip)
    };
    if limited.is_err() {
        metrics::counter!("trailmark_clicks_rate_limited_total").increment(1);
        return Ok(Err((NotRecorded::RateLimited, os)));
    }
    let now = svc.config.clock.now();
    let geo_tz = facts.ip.and_then(|ip| svc.geo.lookup(ip).time_zone);
    let f = &svc.config.attribution.fraud;
    let mut click = ClickRecord {
        click_id: uuid::Uuid::new_v4().to_string(),
        kind: kind.to_owned(),
        ts: now,
        ip_enc: facts.ip.and_then(|ip| svc.ip_cipher.encrypt(ip)),
        model: ua.and_then(enrich::device_model),
        os: parsed.os,
        os_version: parsed.os_version,
        locale: facts.accept_language.as_deref().map(normalize_locale),
        timezone: facts.timezone.clone().or(geo_tz.clone()),
        screen: facts.screen,
        device_kind: facts.device.as_ref().map(|(k, _)| k.clone()),
        device_id: facts.device.map(|(_, v)| v),
        network_ids: json!(facts.network_ids),
        sub_params: json!(facts.sub_params),
        user_agent: facts.user_agent,
        referrer: facts.referrer,
        accept_language: facts.accept_language,
        source: source.to_owned(),
        ..Default::default()
    };
    if facts.timezone.is_none() && geo_tz.is_some() {
        click.flags |= FLAG_TZ_GUESSED;
    }
    // The device id in its stored form from here on (index, cache, store), the raw id sealed.
    svc.ids.protect_click(&mut click);
    {
        let mut tracking = svc.tracking.lock()?;
        let i = tracking.by_id.get(link_id).copied().ok_or_else(link_not_found)?;
        let link = tracking.links[i as usize].clone();
        if !link.enabled {
            return Err(link_not_found().into());
        }
        click.app_id = link.app_id.clone();
        click.link_id = link.link_id.clone();
        click.campaign_id = link.campaign_id.clone();
        if kind == "click" {
            click.flags |= tracking.flood_flags(
                facts.ip,
                click.device_id.as_deref(),
                now,
                f.max_clicks_per_ip_hour,
                f.max_clicks_per_device_hour,
            );
        }
        svc.clicks.index(&mut tracking, &click, facts.ip);
    }
    if click.flags & (FLAG_FLOOD_IP | FLAG_FLOOD_DEVICE) != 0 {
        metrics::counter!("trailmark_flooding_clicks_total").increment(1);
    }
    metrics::counter!("trailmark_clicks_total", "kind" => kind.to_owned(), "source" => source.to_owned()).increment(1);
    let id = click.click_id.clone();
    svc.clicks.share(&click, ip).await;
    if let Err(e) = svc.storage.record_touch(click) {
        // The click is in the index and the visitor is redirected; only its row is missing.
        metrics::counter!("trailmark_clicks_unpersisted_total").increment(1);
        tracing::warn!(error = %e, "click not persisted");
    }
    Ok(Ok((id, os)))
}

/// A link looked up in the loaded state; on a miss the links are reloaded from storage (another
/// instance may have created it) and looked up again. Links are also reloaded every
/// [`LINK_REFRESH`](super::tracking::LINK_REFRESH) by the link reloader task.
pub async fn find_link(
    svc: &Services,
    by: impl Fn(&TrackState) -> Option<Arc<LinkRecord>>,
) -> ServiceResult<Option<Arc<LinkRecord>>> {
    svc.tracking.ready(svc).await?;
    let found = by(&*svc.tracking.lock()?);
    if found.is_some() || !svc.tracking.reload_after_miss(svc).await {
        return Ok(found);
    }
    Ok(by(&*svc.tracking.lock()?))
}

/// Changes a link (utm, destinations, deep link, `enabled`); `deep_link` is the raw field
/// (`null` removes it, absent leaves it). Audited as `actor`; returns the link as stored.
pub async fn update_link(
    svc: &Services,
    actor: String,
    link_id: &str,
    change: LinkChange,
    deep_link: Option<Value>,
) -> ServiceResult<Value> {
    svc.tracking.ready(svc).await?;
    // Edit the stored link, not a copy another instance may have changed since.
    svc.tracking.reload_links(svc, std::time::Duration::ZERO).await?;
    let _serial = svc.tracking.link_changes.lock().await;
    let before = {
        let tracking = svc.tracking.lock()?;
        let i = tracking.by_id.get(link_id).copied().ok_or_else(link_not_found)?;
        tracking.links[i as usize].clone()
    };
    let mut after = (*before).clone();
    let only_enabled = change.utm.is_none() && change.destinations.is_none() && deep_link.is_none();
    if let Some(utm) = change.utm {
        after.utm = utm;
    }
    if let Some(d) = change.destinations {
        after.destinations = d;
    }
    match deep_link {
        None => {}
        Some(Value::Null) => after.deep_link = None,
        Some(v) => {
            after.deep_link = Some(
                serde_json::from_value(v).map_err(|e| Refusal::invalid("invalid_body", format!("deep_link: {e}")))?,
            )
        }
    }
    if let Some(enabled) = change.enabled {
        after.enabled = enabled;
    }
    check_link_parts(&after.utm, &after.destinations, after.deep_link.as_ref())?;
    after.updated_at = svc.config.clock.now();
    let action = match (only_enabled, change.enabled) {
        (true, Some(false)) => "disable",
        (true, Some(true)) => "enable",
        _ => "update",
    };
    let audit = LinkAudit {
        link_id: link_id.to_owned(),
        at: after.updated_at,
        actor,
        action: action.into(),
        before: Some(serde_json::to_value(&*before).unwrap_or_default()),
        after: serde_json::to_value(&after).unwrap_or_default(),
    };
    svc.storage.save_link(after.clone(), audit).await?;
    let body = serde_json::to_value(&after).unwrap_or_default();
    svc.tracking.lock()?.put_link(after);
    Ok(body)
}

/// A link as JSON, with its public URL.
pub async fn get_link(svc: &Services, link_id: &str) -> ServiceResult<Value> {
    svc.tracking.ready(svc).await?;
    let tracking = svc.tracking.lock()?;
    let i = tracking.by_id.get(link_id).copied().ok_or_else(link_not_found)?;
    let link = &tracking.links[i as usize];
    let mut body = serde_json::to_value(&**link).unwrap_or_default();
    body["url"] = json!(link_url(svc, &link.code));
    Ok(body)
}

/// A link's audit log, oldest first.
pub async fn link_audit(svc: &Services, link_id: &str) -> ServiceResult<Vec<LinkAudit>> {
    svc.tracking.ready(svc).await?;
    if !svc.tracking.lock()?.by_id.contains_key(link_id) {
        return Err(link_not_found().into());
    }
    Ok(svc.storage.link_audit(link_id.to_owned()).await?)
}

/// The link with this code or id, when it exists and is enabled.
pub async fn active_link(svc: &Services, by: LinkKey<'_>) -> ServiceResult<Option<Arc<LinkRecord>>> {
    let link = match by {
        LinkKey::Code(code) => find_link(svc, |t| t.by_code.get(code).map(|&i| t.links[i as usize].clone())).await?,
        LinkKey::Id(id) => find_link(svc, |t| t.by_id.get(id).map(|&i| t.links[i as usize].clone())).await?,
    };
    Ok(link.filter(|l| l.enabled))
}

/// How a link is named in a request.
#[derive(Debug, Clone, Copy)]
pub enum LinkKey<'a> {
    Code(&'a str),
    Id(&'a str),
}
