//! Request rates per app and per client address (governor), with keys pruned as they age so
//! rotating addresses cannot grow memory.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::domain::config::Limits;

/// A refused request rate: when to come back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RateLimited {
    /// Seconds until a request would be allowed.
    pub retry_after: u64,
    pub message: &'static str,
}

/// Limiter keys are pruned every this many checks.
const PRUNE_EVERY: u64 = 10_000;

pub struct Limiters {
    app: DefaultKeyedRateLimiter<String>,
    ip: DefaultKeyedRateLimiter<IpAddr>,
    /// The limiters' clock, built once (building one per request costs CPU-feature probing).
    clock: governor::clock::DefaultClock,
    checks: AtomicU64,
}

impl Limiters {
    /// The limiters of `limits`; names the setting that is zero.
    pub fn new(limits: &Limits) -> Result<Self, &'static str> {
        let quota = |rate: u32, burst: u32, name| {
            let rate = NonZeroU32::new(rate).ok_or(name)?;
            let burst = NonZeroU32::new(burst).ok_or(name)?;
            Ok::<_, &'static str>(Quota::per_second(rate).allow_burst(burst))
        };
        Ok(Limiters {
            app: RateLimiter::keyed(quota(limits.app_rate_per_sec, limits.app_burst, "app rate")?),
            ip: RateLimiter::keyed(quota(limits.ip_rate_per_sec, limits.ip_burst, "ip rate")?),
            clock: governor::clock::DefaultClock::default(),
            checks: AtomicU64::new(0),
        })
    }

    fn wait_secs(&self, not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
        use governor::clock::Clock;
        not_until.wait_time_from(self.clock.now()).as_secs_f64().ceil() as u64
    }

    fn prune(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.ip.retain_recent();
            self.ip.shrink_to_fit();
            self.app.retain_recent();
            self.app.shrink_to_fit();
        }
    }

    /// Per client address; runs before the signature check, so unsigned floods are cut early.
    pub fn check_ip(&self, ip: Option<IpAddr>) -> Result<(), RateLimited> {
        self.prune();
        if let Some(ip) = ip
            && let Err(n) = self.ip.check_key(&ip)
        {
            metrics::counter!("trailmark_rate_limited_total", "scope" => "ip").increment(1);
            return Err(RateLimited {
                retry_after: self.wait_secs(n).max(1),
                message: "too many requests from this address",
            });
        }
        Ok(())
    }

    /// Per app; runs after the signature check, so nobody can spend an app's quota without its
    /// secret.
    pub fn check_app(&self, app: &str) -> Result<(), RateLimited> {
        if let Err(n) = self.app.check_key(&app.to_owned()) {
            metrics::counter!("trailmark_rate_limited_total", "scope" => "app").increment(1);
            return Err(RateLimited {
                retry_after: self.wait_secs(n).max(1),
                message: "too many requests for this app",
            });
        }
        Ok(())
    }
}
