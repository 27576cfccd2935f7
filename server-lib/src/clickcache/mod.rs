//! The shared click index: recent clicks and impressions that every server instance can see.
//!
//! One instance keeps its own touches in the in-process [`TouchIndex`](crate::domain::attribution::TouchIndex)
//! (the embedded default). Behind a load balancer a click answered by instance A must be found by an
//! install posted to instance B, so a [`ClickCache`] (Redis: [`redis::RedisClickCache`]) holds
//! the touches of the attribution windows for all instances. An install asks it for the touches
//! that could match (by click id, by device id, by network) and runs the same waterfall over
//! them; the instance's own index then stays empty (clicks, startup loads and touchpoint
//! lookups go through the cache).

#[cfg(feature = "redis")]
pub mod redis;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::domain::records::ClickRecord;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("click cache unavailable: {0}")]
    Unavailable(String),
    #[error("click cache entry is corrupt: {0}")]
    Corrupt(String),
}

/// The `kind` of an install noted on its address (beside `click` and `impression`).
pub const INSTALL_KIND: &str = "install";

pub type CacheFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CacheError>> + Send + 'a>>;

/// What the cache keeps of one touch: the fields the waterfall matches and scores on. The
/// client address stays encrypted with the instances' shared IP key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CachedTouch {
    pub click_id: String,
    /// `click` or `impression`.
    pub kind: String,
    pub link_id: String,
    pub ts: i64,
    /// AES-GCM encrypted address, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_enc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub screen: Option<String>,
    #[serde(default)]
    pub flags: u8,
}

impl CachedTouch {
    pub fn of(click: &ClickRecord) -> Self {
        CachedTouch {
            click_id: click.click_id.clone(),
            kind: click.kind.clone(),
            link_id: click.link_id.clone(),
            ts: click.ts,
            ip_enc: click.ip_enc.as_deref().map(hex::encode),
            device_id: click.device_id.clone(),
            os: click.os.clone(),
            os_version: click.os_version.clone(),
            model: click.model.clone(),
            locale: click.locale.clone(),
            timezone: click.timezone.clone(),
            screen: click.screen.clone(),
            flags: click.flags,
        }
    }

    /// The click record the index builds a touch from (fields the cache does not keep are empty).
    pub fn to_record(&self) -> ClickRecord {
        ClickRecord {
            click_id: self.click_id.clone(),
            kind: self.kind.clone(),
            link_id: self.link_id.clone(),
            ts: self.ts,
            ip_enc: self.ip_enc.as_deref().and_then(|h| hex::decode(h).ok()),
            device_id: self.device_id.clone(),
            os: self.os.clone(),
            os_version: self.os_version.clone(),
            model: self.model.clone(),
            locale: self.locale.clone(),
            timezone: self.timezone.clone(),
            screen: self.screen.clone(),
            flags: self.flags,
            ..Default::default()
        }
    }
}

/// The touches an install could match: its click ids, its device ids (back to `device_since`)
/// and its network (back to `network_since`), at most `limit` per device and per network,
/// newest first.
#[derive(Debug, Clone, Default)]
pub struct CandidateQuery {
    pub click_ids: Vec<String>,
    pub device_ids: Vec<String>,
    pub device_since: i64,
    pub ip: Option<IpAddr>,
    pub network_since: i64,
    pub limit: usize,
}

/// A store of recent touches shared by every server instance. Entries expire after the longest
/// attribution window.
pub trait ClickCache: Send + Sync + 'static {
    /// Adds a touch; `ip` is its client address in clear (the network key is derived from it).
    fn record(&self, touch: CachedTouch, ip: Option<IpAddr>) -> CacheFuture<'_, ()>;
    /// Touches that could match an install, in no particular order, without duplicates.
    fn candidates(&self, query: CandidateQuery) -> CacheFuture<'_, Vec<CachedTouch>>;
    /// Removes touches and every key that points at them (a user's deletion). Returns how many
    /// were found.
    fn forget(&self, click_ids: Vec<String>) -> CacheFuture<'_, usize>;
    /// Loads touches read from storage into an empty cache (after the cache lost its data).
    /// Returns `false`, doing nothing, when the cache was warmed already within a window.
    fn warm(&self, touches: Vec<(CachedTouch, Option<IpAddr>)>) -> CacheFuture<'_, bool>;
}
