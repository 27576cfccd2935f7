//! The attribution state shared by the link, click and install endpoints: links by code and
//! id, the touch index, the flooding counters and the burst baseline. It is loaded from
//! storage on first use (so a restart rebuilds it) and lives behind one mutex; no critical
//! section does I/O.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{ServiceError, ServiceResult, Services};
use crate::clickcache::CachedTouch;
use crate::domain::attribution::HOUR;
use crate::domain::attribution::fraud::{BurstTracker, HourlyCounter};
use crate::domain::attribution::index::{FLAG_FLOOD_DEVICE, FLAG_FLOOD_IP, Touch, TouchIndex, TouchKind};
use crate::domain::attribution::matching::{Fingerprint, LinkInfo};
use crate::domain::enrich::IpCipher;
use crate::domain::records::{Campaign, ClickRecord, LinkCatalog, LinkRecord};
use crate::storage::StorageError;

pub struct TrackState {
    pub index: TouchIndex,
    pub links: Vec<Arc<LinkRecord>>,
    pub infos: Vec<Arc<LinkInfo>>,
    pub by_code: HashMap<String, u32>,
    pub by_id: HashMap<String, u32>,
    pub campaigns: HashMap<String, Campaign>,
    pub ip_clicks: HourlyCounter,
    /// Installs noted per address this hour (the crowd count's flood limit).
    pub noted_installs: HourlyCounter,
    pub device_clicks: HourlyCounter,
    pub burst: BurstTracker,
    /// Stored forms of the test devices' ids (reloaded with the links).
    pub test_devices: std::collections::HashSet<String>,
}

pub fn link_info(link: &LinkRecord) -> LinkInfo {
    LinkInfo {
        link_id: link.link_id.clone(),
        campaign_id: link.campaign_id.clone(),
        app_id: link.app_id.clone(),
        network: link.network.clone(),
        deep_link: link.deep_link.clone(),
    }
}

impl TrackState {
    fn new(ttl: i64, cap: usize) -> Self {
        TrackState {
            index: TouchIndex::new(ttl).with_cap(cap),
            links: Vec::new(),
            infos: Vec::new(),
            by_code: HashMap::new(),
            by_id: HashMap::new(),
            campaigns: HashMap::new(),
            ip_clicks: HourlyCounter::default(),
            noted_installs: HourlyCounter::default(),
            device_clicks: HourlyCounter::default(),
            burst: BurstTracker::default(),
            test_devices: Default::default(),
        }
    }

    /// Adds a new link or replaces one with the same id (keeping its index slot).
    pub fn put_link(&mut self, link: LinkRecord) {
        let info = Arc::new(link_info(&link));
        match self.by_id.get(&link.link_id) {
            Some(&i) => {
                self.infos[i as usize] = info;
                self.links[i as usize] = Arc::new(link);
            }
            None => {
                let i = self.links.len() as u32;
                self.by_code.insert(link.code.clone(), i);
                self.by_id.insert(link.link_id.clone(), i);
                self.infos.push(info);
                self.links.push(Arc::new(link));
            }
        }
    }

    /// Builds the compact touch of a stored click and indexes it. The click path and the
    /// rebuild both go through here, so both index the same facts.
    pub fn index_touch(&mut self, click: &ClickRecord, ip: Option<IpAddr>) -> Option<Touch> {
        let touch = self.touch_of(click, ip)?;
        self.index_pushed(touch, click.ts);
        Some(touch)
    }

    /// Expires what is older than the window at `now`, then indexes `touch` (counting what the
    /// cap evicts).
    pub fn index_pushed(&mut self, touch: Touch, now: i64) {
        self.index.expire(now);
        let evicted = self.index.push(touch);
        if evicted > 0 {
            metrics::counter!("trailmark_touch_index_evicted_total").increment(evicted as u64);
            tracing::warn!(evicted, "touch index full: the oldest touches were evicted");
        }
    }

    /// The compact touch of a click (hashed with this instance's keys); none when its link is
    /// unknown here.
    pub fn touch_of(&self, click: &ClickRecord, ip: Option<IpAddr>) -> Option<Touch> {
        let kind = match click.kind.as_str() {
            "impression" => TouchKind::Impression,
            crate::clickcache::INSTALL_KIND => TouchKind::Install,
            _ => TouchKind::Click,
        };
        // A noted install has no link.
        let link = if kind == TouchKind::Install { u32::MAX } else { *self.by_id.get(&click.link_id)? };
        let id = uuid::Uuid::parse_str(&click.click_id).ok()?;
        let mut touch = Touch::new(id, kind, click.ts, link);
        touch.set_ip(ip);
        touch.device = self.index.hasher.device(click.device_id.as_deref());
        touch.flags = click.flags;
        Fingerprint {
            os: click.os.as_deref(),
            os_version: click.os_version.as_deref(),
            model: click.model.as_deref(),
            locale: click.locale.as_deref(),
            timezone: click.timezone.as_deref(),
            screen: click.screen.as_deref(),
        }
        .hash(&self.index.hasher)
        .apply(&mut touch);
        Some(touch)
    }

    /// The compact touch of a touch from the shared click cache: the one way a cached click
    /// becomes an index entry (its address decrypted with the instances' shared key).
    pub fn touch_of_cached(&self, cached: &CachedTouch, cipher: &IpCipher) -> Option<Touch> {
        let record = cached.to_record();
        let ip = record.ip_enc.as_deref().and_then(|b| cipher.decrypt(b));
        self.touch_of(&record, ip)
    }

    /// Replaces campaigns and links with what storage holds (another instance may have
    /// created or changed them).
    fn replace_links(&mut self, campaigns: Vec<Campaign>, links: Vec<LinkRecord>) {
        for c in campaigns {
            self.campaigns.insert(c.campaign_id.clone(), c);
        }
        for l in links {
            self.put_link(l);
        }
    }

    /// Counts a click against the flooding limits; returns the flags it earns.
    pub fn flood_flags(&mut self, ip: Option<IpAddr>, device: Option<&str>, now: i64, max_ip: u32, max_dev: u32) -> u8 {
        let mut flags = 0;
        if let Some(ip) = ip {
            // IPv6 by its /64: a subscriber's network hands out endless addresses inside it.
            let key = self.index.hasher.h64(super::limits::limit_key(ip));
            if self.ip_clicks.hit(key, now) > max_ip {
                flags |= FLAG_FLOOD_IP;
            }
        }
        let dev = self.index.hasher.device(device);
        if dev != 0 && self.device_clicks.hit(dev, now) > max_dev {
            flags |= FLAG_FLOOD_DEVICE;
        }
        flags
    }
}

/// Lazily loaded attribution state.
#[derive(Default)]
pub struct Tracking {
    cell: tokio::sync::OnceCell<Mutex<TrackState>>,
    /// Serialises link changes (read, modify, store, publish) so concurrent edits cannot
    /// undo each other.
    pub link_changes: tokio::sync::Mutex<()>,
    /// When links were last reloaded from storage (see [`Tracking::reload_links`]).
    last_reload: Mutex<Option<std::time::Instant>>,
    /// Reloads after misses in the last second.
    miss_reloads: Mutex<std::collections::VecDeque<std::time::Instant>>,
}

/// Most link reloads a second after misses (shared stores only).
pub const MISS_RELOADS_PER_SEC: usize = 2;
/// Links are reloaded this often on the click path, so a link edited through another instance
/// sharing the store (disabled, say) takes effect here too.
pub const LINK_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

impl Tracking {
    /// Loads the state from storage the first time; then [`Tracking::lock`] works.
    /// A failed load is not kept: the next request tries again.
    pub async fn ready(&self, svc: &Services) -> ServiceResult<()> {
        match self.cell.get_or_try_init(|| load(svc)).await {
            Ok(_) => Ok(()),
            Err(e) => {
                // The next request tries again; the client sees a busy store's 503 or a
                // generic 500, never the store's message.
                tracing::warn!(error = %e, "attribution state not loaded");
                Err(ServiceError::Storage(e))
            }
        }
    }
}

impl Tracking {
    /// Reloads campaigns and links from storage unless that happened less than `min_age` ago
    /// (with a shared click cache, so links edited through another instance take effect here).
    pub async fn reload_links(&self, svc: &Services, min_age: std::time::Duration) -> ServiceResult<bool> {
        {
            let mut last = self.last_reload.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < min_age) {
                return Ok(false);
            }
            *last = Some(std::time::Instant::now());
        }
        self.load_links_now(svc).await?;
        Ok(true)
    }

    async fn load_links_now(&self, svc: &Services) -> ServiceResult<()> {
        let _changes = self.link_changes.lock().await;
        let LinkCatalog { campaigns, links } = svc.storage.load_links().await?;
        let test_devices = svc.storage.test_devices().await?;
        let mut state = self.lock()?;
        state.replace_links(campaigns, links);
        state.test_devices = test_devices.into_iter().map(|d| d.device_id).collect();
        Ok(())
    }

    /// After a link or campaign miss on a shared store (another instance may have created
    /// it): reloads them, at most [`MISS_RELOADS_PER_SEC`] times a second so unknown codes
    /// cannot hammer storage. On a store of its own a miss is definitive: no reload. Tells
    /// whether it reloaded.
    pub async fn reload_after_miss(&self, svc: &Services) -> bool {
        if !svc.storage.shared() {
            return false;
        }
        {
            let mut recent = self.miss_reloads.lock().unwrap_or_else(|p| p.into_inner());
            let now = std::time::Instant::now();
            while recent.front().is_some_and(|t| now.duration_since(*t) >= std::time::Duration::from_secs(1)) {
                recent.pop_front();
            }
            if recent.len() >= MISS_RELOADS_PER_SEC {
                return false;
            }
            recent.push_back(now);
        }
        self.load_links_now(svc).await.is_ok()
    }

    /// The state if it is loaded (callers that ran [`Tracking::ready`] earlier in the request).
    pub fn lock_loaded(&self) -> Option<MutexGuard<'_, TrackState>> {
        self.cell.get().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The loaded state; unavailable before [`Tracking::ready`] succeeded.
    pub fn lock(&self) -> ServiceResult<MutexGuard<'_, TrackState>> {
        self.lock_loaded().ok_or_else(|| ServiceError::Unavailable("attribution state is loading".into()))
    }
}

async fn load(svc: &Services) -> Result<Mutex<TrackState>, StorageError> {
    let cfg = &svc.config.attribution;
    let now = svc.config.clock.now();
    let started = std::time::Instant::now();
    // A store never passed (rows of a version before identifiers were hashed) is brought to
    // the hashed form first: the touches loaded next, and every request that waits for this
    // load, then only meet hashed identifiers.
    if svc.storage.identifiers_version().await?.is_none() {
        super::identifiers::renew(svc).await?;
    }
    let LinkCatalog { campaigns, links } = svc.storage.load_links().await?;
    let touches = svc.storage.load_touches(now - cfg.index_ttl()).await?;
    let baseline_from = now - (cfg.fraud.burst_baseline_hours as i64 + 1) * HOUR;
    let counts = svc.storage.install_counts(baseline_from).await?;
    let mut s = TrackState::new(cfg.index_ttl(), cfg.max_indexed_touches);
    s.replace_links(campaigns, links);
    s.test_devices = svc.storage.test_devices().await?.into_iter().map(|d| d.device_id).collect();
    let indexed = svc.clicks.load(svc, &mut s, &touches).await;
    s.burst.seed(counts.into_iter().map(|c| (c.campaign_id, c.hour, c.installs)).collect());
    tracing::info!(
        links = s.links.len(),
        touches = indexed,
        ms = started.elapsed().as_millis() as u64,
        "attribution state loaded"
    );
    metrics::gauge!("trailmark_touch_index_entries").set(s.index.len() as f64);
    Ok(Mutex::new(s))
}
