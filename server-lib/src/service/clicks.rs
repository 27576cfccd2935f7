//! Where recent touches live: the one place that decides between this instance's touch index
//! (the embedded default) and a click cache shared by every instance (Redis). A click is indexed
//! or shared here, an install's candidates come from here, touchpoints resolve click ids here,
//! the start loads stored touches here, and a deletion forgets them here.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::tracking::TrackState;
use super::{ServiceResult, Services};
use crate::clickcache::{CacheError, CachedTouch, CandidateQuery, ClickCache, INSTALL_KIND};
use crate::domain::attribution::matching::{InstallFacts, attribute};
use crate::domain::attribution::{Decision, Touch, TouchIndex, TouchKind};
use crate::domain::records::ClickRecord;

/// Most installs noted on one address (IPv6: its /64) per clock hour.
pub const MAX_NOTED_INSTALLS_PER_ADDRESS_HOUR: u32 = 20;

/// This instance's index, or a cache every instance shares.
pub enum Clicks {
    Local,
    Shared(Arc<dyn ClickCache>),
}

/// Touches fetched from the shared cache for a set of click ids (empty with the local index).
#[derive(Default)]
pub struct ClickLookup(HashMap<String, CachedTouch>);

impl ClickLookup {
    /// The touch of a click id: from the fetched cache entries, else from the local index.
    pub fn touch(&self, t: &TrackState, id: &uuid::Uuid, svc: &Services) -> Option<Touch> {
        match self.0.get(&id.to_string()) {
            Some(cached) => t.touch_of_cached(cached, &svc.ip_cipher),
            None => t.index.by_click_id(id).copied(),
        }
    }
}

impl Clicks {
    pub fn new(cache: Option<Arc<dyn ClickCache>>) -> Self {
        match cache {
            Some(c) => Clicks::Shared(c),
            None => Clicks::Local,
        }
    }

    /// At start: the stored touches go into this instance's index, or, with a shared cache, into
    /// the cache when it lost its data (a restarted Redis). Returns how many were indexed here.
    pub async fn load(&self, svc: &Services, s: &mut TrackState, touches: &[ClickRecord]) -> usize {
        let ip_of = |t: &ClickRecord| t.ip_enc.as_deref().and_then(|b| svc.ip_cipher.decrypt(b));
        match self {
            Clicks::Local => touches.iter().map(|t| s.index_touch(t, ip_of(t)).is_some() as usize).sum(),
            Clicks::Shared(cache) => {
                let shared = touches.iter().map(|t| (CachedTouch::of(t), ip_of(t))).collect();
                match cache.warm(shared).await {
                    Ok(true) => tracing::info!(touches = touches.len(), "click cache warmed from storage"),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "click cache not warmed"),
                }
                0
            }
        }
    }

    /// A new click, under the tracking lock: indexed here unless the decisions read a shared
    /// cache ([`Clicks::share`] puts it there after the lock is released).
    pub fn index(&self, t: &mut TrackState, click: &ClickRecord, ip: Option<IpAddr>) {
        if let Clicks::Local = self {
            t.index_touch(click, ip);
            metrics::gauge!("trailmark_touch_index_entries").set(t.index.len() as f64);
        }
    }

    /// A new click into the shared cache (nothing with the local index).
    pub async fn share(&self, click: &ClickRecord, ip: Option<IpAddr>) {
        if let Clicks::Shared(cache) = self
            && let Err(e) = cache.record(CachedTouch::of(click), ip).await
        {
            // Stored all the same; other instances cannot match it.
            tracing::warn!(error = %e, "click not in the shared click cache");
        }
    }

    /// The attribution decision of an install: the waterfall over this instance's index, or
    /// over the candidates fetched from the shared cache, indexed in a small index with this
    /// instance's hashes and decided exactly as the local index would be.
    pub async fn decide(&self, svc: &Services, facts: &InstallFacts<'_>) -> ServiceResult<Decision> {
        let cfg = &svc.config.attribution;
        let cache = match self {
            Clicks::Local => {
                let mut guard = svc.tracking.lock()?;
                let TrackState { index, infos, burst, .. } = &mut *guard;
                return Ok(attribute(facts, index, infos, cfg, burst));
            }
            Clicks::Shared(cache) => cache,
        };
        let at = facts.install_ts;
        let query = CandidateQuery {
            click_ids: [facts.click_id, facts.referrer_click_id].into_iter().flatten().map(|u| u.to_string()).collect(),
            device_ids: facts.device_ids.iter().map(|d| d.to_string()).collect(),
            device_since: at.saturating_sub(cfg.click_window.max(cfg.view_through_window)),
            ip: facts.ip,
            network_since: at.saturating_sub(cfg.fingerprint_window),
            limit: cfg.fingerprint_max_candidates,
        };
        let mut touches = cache.candidates(query).await.inspect_err(|e| {
            tracing::warn!(error = %e, "click cache unavailable for an install");
        })?;
        touches.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.click_id.cmp(&b.click_id)));
        let unknown_link = {
            let guard = svc.tracking.lock()?;
            touches.iter().any(|t| t.kind != INSTALL_KIND && !guard.by_id.contains_key(&t.link_id))
        };
        if unknown_link {
            // A link created through another instance.
            svc.tracking.reload_after_miss(svc).await;
        }
        let mut guard = svc.tracking.lock()?;
        let mut index = TouchIndex::with_hasher(cfg.index_ttl(), guard.index.hasher.clone(), touches.len());
        for t in &touches {
            if let Some(touch) = guard.touch_of_cached(t, &svc.ip_cipher) {
                index.push(touch);
            }
        }
        let TrackState { infos, burst, .. } = &mut *guard;
        Ok(attribute(facts, &index, infos, cfg, burst))
    }

    /// Notes a decided install on its address (this instance's index, or the shared cache), so
    /// the fingerprint step of later installs counts the devices the address is shared by.
    /// `id` is [`install_touch_id`]: a deletion of the person forgets it.
    /// `at` is the server's receipt time (the index walks touches in time order). At most
    /// [`MAX_NOTED_INSTALLS_PER_ADDRESS_HOUR`] installs per address and hour are noted, so a
    /// client cannot flood an address's crowd.
    pub async fn note_install(&self, svc: &Services, facts: &InstallFacts<'_>, id: uuid::Uuid, at: i64) {
        let Some(ip) = facts.ip else { return };
        {
            let Ok(mut t) = svc.tracking.lock() else { return };
            let key = t.index.hasher.h64(super::limits::limit_key(ip));
            if t.noted_installs.hit(key, at) > MAX_NOTED_INSTALLS_PER_ADDRESS_HOUR {
                metrics::counter!("trailmark_installs_not_noted_total").increment(1);
                return;
            }
            if let Clicks::Local = self {
                let mut touch = Touch::new(id, TouchKind::Install, at, u32::MAX);
                touch.set_ip(Some(ip));
                facts.fingerprint.hash(&t.index.hasher).apply(&mut touch);
                t.index_pushed(touch, at);
                return;
            }
        }
        match self {
            Clicks::Local => {}
            Clicks::Shared(cache) => {
                let f = &facts.fingerprint;
                let own = |v: Option<&str>| v.map(str::to_owned);
                let touch = CachedTouch {
                    click_id: id.to_string(),
                    kind: INSTALL_KIND.into(),
                    ts: at,
                    ip_enc: svc.ip_cipher.encrypt(ip).as_deref().map(hex::encode),
                    os: own(f.os),
                    os_version: own(f.os_version),
                    model: own(f.model),
                    locale: own(f.locale),
                    timezone: own(f.timezone),
                    screen: own(f.screen),
                    ..Default::default()
                };
                if let Err(e) = cache.record(touch, Some(ip)).await {
                    tracing::warn!(error = %e, "install not noted in the shared click cache");
                }
            }
        }
    }

    /// Fetches the touches of click ids that another instance may have answered (shared cache
    /// only; a failure is logged and leaves the lookup empty).
    pub async fn lookup(&self, svc: &Services, click_ids: Vec<String>) -> ClickLookup {
        let Clicks::Shared(cache) = self else { return ClickLookup::default() };
        if click_ids.is_empty() {
            return ClickLookup::default();
        }
        let mut found = HashMap::new();
        let query = CandidateQuery { click_ids, limit: 1, ..Default::default() };
        match cache.candidates(query).await {
            Ok(touches) => found.extend(
                touches.into_iter().filter(|t| t.kind != INSTALL_KIND).map(|t| (t.click_id.to_ascii_lowercase(), t)),
            ),
            Err(e) => tracing::warn!(error = %e, "click cache unavailable for touchpoints"),
        }
        let unknown_link = svc.tracking.lock().is_ok_and(|g| found.values().any(|t| !g.by_id.contains_key(&t.link_id)));
        if unknown_link {
            svc.tracking.reload_after_miss(svc).await;
        }
        ClickLookup(found)
    }

    /// Forgets deleted clicks: from this instance's index (when loaded) and the shared cache.
    pub async fn forget(&self, svc: &Services, click_ids: &[String]) -> Result<(), CacheError> {
        if click_ids.is_empty() {
            return Ok(());
        }
        if let Some(mut tracking) = svc.tracking.lock_loaded() {
            let ids: Vec<uuid::Uuid> = click_ids.iter().filter_map(|c| uuid::Uuid::parse_str(c).ok()).collect();
            tracking.index.forget(&ids);
        }
        match self {
            Clicks::Local => Ok(()),
            Clicks::Shared(cache) => cache.forget(click_ids.to_vec()).await.map(|_| ()),
        }
    }
}
