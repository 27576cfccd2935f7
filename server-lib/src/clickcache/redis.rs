//! The click cache on Redis (feature `redis`).
//!
//! Keys (under a prefix, `tm:` by default):
//! - `c:<click id>`: the touch as JSON, expiring after the longest attribution window;
//! - `d:<hash of a device id>`: a sorted set of click ids by time;
//! - `n:<hash of a network>` (IPv4 /24, IPv6 /48): a sorted set of click ids by time.
//!
//! Set keys are keyed HMAC-SHA256 digests (the instances share the key), so no device id or
//! address appears in a key name. Every write trims the set to the window and renews its
//! expiry, so a set lives as long as its newest touch. Deleting a touch removes it from the
//! sets it is in; an emptied set disappears.

use std::net::IpAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::{CacheError, CacheFuture, CachedTouch, CandidateQuery, ClickCache};
use crate::domain::attribution::index::prefix_of;

/// What one `c:` key holds: the touch and the set keys that name it.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    touch: CachedTouch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    net: Option<String>,
}

/// Touches most kept per `warm` pipeline.
const WARM_BATCH: usize = 1_000;

pub struct RedisClickCache {
    conn: ConnectionManager,
    prefix: String,
    key: Hmac<Sha256>,
    ttl_ms: i64,
}

fn unavailable(e: redis::RedisError) -> CacheError {
    metrics::counter!("trailmark_click_cache_errors_total").increment(1);
    CacheError::Unavailable(e.to_string())
}

impl RedisClickCache {
    /// Connects to `url` (`redis://host:port/db`). `secret` keys the hashes in key names (every
    /// instance must use the same); `ttl_ms` is the longest attribution window; `prefix`
    /// namespaces the keys.
    pub async fn connect(url: &str, secret: &[u8], ttl_ms: i64, prefix: &str) -> Result<Self, CacheError> {
        Self::connect_with(url, secret, ttl_ms, prefix, None).await
    }

    /// [`RedisClickCache::connect`]; a `rediss://` URL connects over TLS, verifying the
    /// server's certificate and host name against `ca_file` (PEM) when given, else the system's
    /// trust store. A CA file with a `redis://` URL is refused (it would not be used).
    pub async fn connect_with(
        url: &str,
        secret: &[u8],
        ttl_ms: i64,
        prefix: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, CacheError> {
        crate::tls::install_provider();
        let client = match ca_file {
            None => redis::Client::open(url).map_err(unavailable)?,
            Some(_) if !url.starts_with("rediss://") => {
                return Err(CacheError::Unavailable("a CA file is given but the URL is not rediss://".into()));
            }
            Some(path) => {
                // Checked here so that a bad file gets a clear error.
                crate::tls::read_ca_file(path).map_err(|e| CacheError::Unavailable(e.to_string()))?;
                let pem =
                    std::fs::read(path).map_err(|e| CacheError::Unavailable(format!("{}: {e}", path.display())))?;
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
                redis::Client::build_with_tls(url, certs).map_err(unavailable)?
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2);
        let conn = client.get_connection_manager_with_config(config).await.map_err(unavailable)?;
        let key = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| CacheError::Unavailable(e.to_string()))?;
        Ok(RedisClickCache { conn, prefix: prefix.to_owned(), key, ttl_ms: ttl_ms.max(1_000) })
    }

    fn digest(&self, kind: &str, value: &[u8]) -> String {
        let mut mac = self.key.clone();
        mac.update(kind.as_bytes());
        mac.update(b":");
        mac.update(value);
        let bytes = mac.finalize().into_bytes();
        format!("{}{kind}:{}", self.prefix, hex::encode(&bytes[..16]))
    }

    fn click_key(&self, id: &str) -> String {
        format!("{}c:{}", self.prefix, id.to_ascii_lowercase())
    }

    /// The set key of a device id (lower-cased; none for the all-zero id of limited tracking).
    fn device_key(&self, id: &str) -> Option<String> {
        let id = id.trim().to_ascii_lowercase();
        (!id.is_empty() && !id.chars().all(|c| c == '0' || c == '-')).then(|| self.digest("d", id.as_bytes()))
    }

    fn network_key(&self, ip: IpAddr) -> String {
        let bytes = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        self.digest("n", &prefix_of(&bytes))
    }

    fn ttl_secs(&self) -> u64 {
        (self.ttl_ms as u64).div_ceil(1_000)
    }

    /// Appends the commands that store one touch.
    /// `age_ms` is how old the touch is already (its keys expire that much sooner).
    fn add(&self, pipe: &mut redis::Pipeline, touch: CachedTouch, ip: Option<IpAddr>, age_ms: i64, nx: bool) {
        let ex = ((self.ttl_ms - age_ms.max(0)).max(1_000) as u64).div_ceil(1_000);
        let dev = touch.device_id.as_deref().and_then(|d| self.device_key(d));
        let net = ip.map(|ip| self.network_key(ip));
        let (id, ts) = (touch.click_id.to_ascii_lowercase(), touch.ts);
        let value = serde_json::to_string(&Stored { touch, dev: dev.clone(), net: net.clone() }).unwrap_or_default();
        let cmd = pipe.cmd("SET").arg(self.click_key(&id)).arg(value).arg("EX").arg(ex);
        if nx {
            cmd.arg("NX");
        }
        cmd.ignore();
        for set in [dev, net].into_iter().flatten() {
            pipe.cmd("ZADD").arg(&set).arg(ts).arg(&id).ignore();
            pipe.cmd("ZREMRANGEBYSCORE").arg(&set).arg("-inf").arg(format!("({}", ts - self.ttl_ms)).ignore();
            pipe.cmd("EXPIRE").arg(&set).arg(ex).arg("GT").ignore();
            // GT does not set an expiry on a key without one (a new set).
            pipe.cmd("EXPIRE").arg(&set).arg(ex).arg("NX").ignore();
        }
    }

    async fn fetch(&self, ids: &[String]) -> Result<Vec<Stored>, CacheError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.click_key(id)).collect();
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(keys).query_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        values
            .into_iter()
            .flatten()
            .map(|v| serde_json::from_str::<Stored>(&v).map_err(|e| CacheError::Corrupt(e.to_string())))
            .collect()
    }
}

impl ClickCache for RedisClickCache {
    fn record(&self, touch: CachedTouch, ip: Option<IpAddr>) -> CacheFuture<'_, ()> {
        Box::pin(async move {
            let mut pipe = redis::pipe();
            self.add(&mut pipe, touch, ip, 0, false);
            pipe.query_async::<()>(&mut self.conn.clone()).await.map_err(unavailable)
        })
    }

    fn candidates(&self, query: CandidateQuery) -> CacheFuture<'_, Vec<CachedTouch>> {
        Box::pin(async move {
            let limit = query.limit.max(1);
            let mut pipe = redis::pipe();
            let mut sets = 0;
            let device_keys: Vec<String> = query.device_ids.iter().filter_map(|d| self.device_key(d)).collect();
            for key in &device_keys {
                pipe.cmd("ZREVRANGEBYSCORE")
                    .arg(key)
                    .arg("+inf")
                    .arg(query.device_since)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit);
                sets += 1;
            }
            if let Some(ip) = query.ip {
                pipe.cmd("ZREVRANGEBYSCORE")
                    .arg(self.network_key(ip))
                    .arg("+inf")
                    .arg(query.network_since)
                    .arg("LIMIT")
                    .arg(0)
                    .arg(limit);
                sets += 1;
            }
            let mut ids: Vec<String> = query.click_ids.iter().map(|c| c.to_ascii_lowercase()).collect();
            if sets > 0 {
                let found: Vec<Vec<String>> = pipe.query_async(&mut self.conn.clone()).await.map_err(unavailable)?;
                ids.extend(found.into_iter().flatten());
            }
            ids.sort_unstable();
            ids.dedup();
            Ok(self.fetch(&ids).await?.into_iter().map(|s| s.touch).collect())
        })
    }

    fn forget(&self, click_ids: Vec<String>) -> CacheFuture<'_, usize> {
        Box::pin(async move {
            let ids: Vec<String> = click_ids.iter().map(|c| c.to_ascii_lowercase()).collect();
            let mut found = 0;
            for chunk in ids.chunks(WARM_BATCH) {
                let stored = self.fetch(chunk).await?;
                found += stored.len();
                let mut pipe = redis::pipe();
                for s in &stored {
                    let id = s.touch.click_id.to_ascii_lowercase();
                    for set in [&s.dev, &s.net].into_iter().flatten() {
                        pipe.cmd("ZREM").arg(set).arg(&id).ignore();
                    }
                }
                for id in chunk {
                    pipe.cmd("DEL").arg(self.click_key(id)).ignore();
                }
                pipe.query_async::<()>(&mut self.conn.clone()).await.map_err(unavailable)?;
            }
            Ok(found)
        })
    }

    fn warm(&self, touches: Vec<(CachedTouch, Option<IpAddr>)>) -> CacheFuture<'_, bool> {
        Box::pin(async move {
            let marker = format!("{}warm", self.prefix);
            let mut conn = self.conn.clone();
            // The marker lives a window: a cache that lost its data is warmed again by the next
            // instance that starts.
            let fresh: Option<String> = redis::cmd("SET")
                .arg(&marker)
                .arg(crate::domain::config::now_ms())
                .arg("NX")
                .arg("EX")
                .arg(self.ttl_secs())
                .query_async(&mut conn)
                .await
                .map_err(unavailable)?;
            if fresh.is_none() {
                return Ok(false);
            }
            let newest = touches.iter().map(|(t, _)| t.ts).max().unwrap_or(0);
            let mut touches = touches.into_iter().peekable();
            while touches.peek().is_some() {
                let mut pipe = redis::pipe();
                for (touch, ip) in touches.by_ref().take(WARM_BATCH) {
                    // NX: a touch another instance wrote meanwhile is not overwritten.
                    let age = newest - touch.ts;
                    self.add(&mut pipe, touch, ip, age, true);
                }
                pipe.query_async::<()>(&mut conn).await.map_err(unavailable)?;
            }
            Ok(true)
        })
    }
}
