//! Request rates per app, per network and per client address (governor), with keys pruned as
//! they age so rotating addresses cannot grow memory; the failed admin sign-ins per address.
//! Addresses are counted by [`limit_key`]: an IPv6 client by its /64 (one subscriber's
//! network hands out endless addresses inside it).

use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rustc_hash::FxHashMap;

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

/// The key an address is limited by: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64.
pub fn limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
        },
    }
}

pub struct Limiters {
    app: DefaultKeyedRateLimiter<String>,
    network: DefaultKeyedRateLimiter<String>,
    write_key: DefaultKeyedRateLimiter<String>,
    ip: DefaultKeyedRateLimiter<IpAddr>,
    click_ip: DefaultKeyedRateLimiter<(String, IpAddr)>,
    /// The limiters' clock, built once (building one per request costs CPU-feature probing).
    clock: governor::clock::DefaultClock,
    checks: AtomicU64,
    pub admin: FailureGate,
}

impl Limiters {
    /// The limiters of `limits`; names the setting that is zero.
    pub fn new(limits: &Limits) -> Result<Self, &'static str> {
        let quota = |rate: u32, burst: u32, name| {
            let rate = NonZeroU32::new(rate).ok_or(name)?;
            let burst = NonZeroU32::new(burst).ok_or(name)?;
            Ok::<_, &'static str>(Quota::per_second(rate).allow_burst(burst))
        };
        if limits.admin_failures == 0 || limits.admin_failure_window_ms <= 0 {
            return Err("admin failures");
        }
        Ok(Limiters {
            app: RateLimiter::keyed(quota(limits.app_rate_per_sec, limits.app_burst, "app rate")?),
            network: RateLimiter::keyed(quota(limits.network_rate_per_sec, limits.network_burst, "network rate")?),
            write_key: RateLimiter::keyed(quota(
                limits.write_key_rate_per_sec,
                limits.write_key_burst,
                "write key rate",
            )?),
            ip: RateLimiter::keyed(quota(limits.ip_rate_per_sec, limits.ip_burst, "ip rate")?),
            click_ip: RateLimiter::keyed(quota(limits.click_ip_rate_per_sec, limits.click_ip_burst, "click ip rate")?),
            clock: governor::clock::DefaultClock::default(),
            checks: AtomicU64::new(0),
            admin: FailureGate::new(limits.admin_failures, limits.admin_failure_window_ms),
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
            self.click_ip.retain_recent();
            self.click_ip.shrink_to_fit();
            for limiter in [&self.app, &self.network, &self.write_key] {
                limiter.retain_recent();
                limiter.shrink_to_fit();
            }
        }
    }

    fn refuse(
        &self,
        scope: &'static str,
        n: governor::NotUntil<governor::clock::QuantaInstant>,
        message: &'static str,
    ) -> RateLimited {
        metrics::counter!("trailmark_rate_limited_total", "scope" => scope).increment(1);
        RateLimited { retry_after: self.wait_secs(n).max(1), message }
    }

    /// Per client address; runs before the signature check, so unsigned floods are cut early.
    pub fn check_ip(&self, ip: Option<IpAddr>) -> Result<(), RateLimited> {
        self.prune();
        match ip.map(|ip| self.ip.check_key(&limit_key(ip))) {
            Some(Err(n)) => Err(self.refuse("ip", n, "too many requests from this address")),
            _ => Ok(()),
        }
    }

    /// Server-to-server clicks of `network` naming visitor address `ip` (a bucket per network
    /// and address: a network can neither spend a visitor's request quota nor another
    /// network's clicks from that address).
    pub fn check_click_ip(&self, network: &str, ip: Option<IpAddr>) -> Result<(), RateLimited> {
        match ip.map(|ip| self.click_ip.check_key(&(network.to_owned(), limit_key(ip)))) {
            Some(Err(n)) => Err(self.refuse("click_ip", n, "too many clicks naming this address")),
            _ => Ok(()),
        }
    }

    /// Per app; runs after the signature check, so nobody can spend an app's quota without its
    /// secret.
    pub fn check_app(&self, app: &str) -> Result<(), RateLimited> {
        match self.app.check_key(&app.to_owned()) {
            Err(n) => Err(self.refuse("app", n, "too many requests for this app")),
            Ok(()) => Ok(()),
        }
    }

    /// Per app, for requests with one of its write keys (the Segment-compatible API): a bucket
    /// apart from the signed SDKs', so a public write key cannot spend the SDKs' quota.
    pub fn check_write_key(&self, app: &str) -> Result<(), RateLimited> {
        match self.write_key.check_key(&app.to_owned()) {
            Err(n) => Err(self.refuse("write_key", n, "too many requests with this app's write keys")),
            Ok(()) => Ok(()),
        }
    }

    /// Per ad network (server-to-server clicks), after its signature check.
    pub fn check_network(&self, network: &str) -> Result<(), RateLimited> {
        match self.network.check_key(&network.to_owned()) {
            Err(n) => Err(self.refuse("network", n, "too many clicks from this network")),
            Ok(()) => Ok(()),
        }
    }
}

/// Most addresses the admin failure gate remembers; past it, expired windows and then addresses
/// that are not shut out are forgotten (never a shut-out one).
const GATE_KEYS: usize = 100_000;

/// Failed admin authentications per client address in fixed windows: at `max` failures an
/// address is refused until its window ends, without its token being checked (an online guess
/// of the admin key gets `max` tries per window). Successes cost nothing.
pub struct FailureGate {
    max: u32,
    window: i64,
    /// address key → (window start, failures).
    seen: Mutex<FxHashMap<IpAddr, (i64, u32)>>,
}

impl FailureGate {
    pub fn new(max: u32, window_ms: i64) -> Self {
        FailureGate { max, window: window_ms.max(1), seen: Mutex::new(FxHashMap::default()) }
    }

    /// Refuses an address that used up its failures in the current window (`now`, Unix ms).
    pub fn check(&self, ip: Option<IpAddr>, now: i64) -> Result<(), RateLimited> {
        let Some(ip) = ip else { return Ok(()) };
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        match seen.get(&limit_key(ip)) {
            Some(&(start, n)) if n >= self.max && now - start < self.window => {
                metrics::counter!("trailmark_rate_limited_total", "scope" => "admin_auth").increment(1);
                let left = (start + self.window - now).max(1000);
                Err(RateLimited {
                    retry_after: (left as u64).div_ceil(1000),
                    message: "too many failed sign-ins from this address",
                })
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed authentication from `ip`.
    pub fn failed(&self, ip: Option<IpAddr>, now: i64) {
        let Some(ip) = ip else { return };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= GATE_KEYS && !seen.contains_key(&limit_key(ip)) {
            let (window, max) = (self.window, self.max);
            seen.retain(|_, (start, _)| now - *start < window);
            if seen.len() >= GATE_KEYS {
                seen.retain(|_, (_, n)| *n >= max);
            }
        }
        let entry = seen.entry(limit_key(ip)).or_insert((now, 0));
        if now - entry.0 >= self.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_limited_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limit_key(a), limit_key(b));
        assert_ne!(limit_key(a), limit_key(other));
        let mapped: IpAddr = "::ffff:198.51.100.7".parse().unwrap();
        assert_eq!(limit_key(mapped), "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(limit_key("198.51.100.7".parse().unwrap()), "198.51.100.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn one_64_shares_one_request_bucket() {
        let limits = Limits { ip_rate_per_sec: 1, ip_burst: 3, ..Limits::default() };
        let l = Limiters::new(&limits).unwrap();
        for i in 1..=3u16 {
            let ip: IpAddr = format!("2001:db8::{i}").parse().unwrap();
            assert!(l.check_ip(Some(ip)).is_ok());
        }
        assert!(l.check_ip(Some("2001:db8::ffff:4".parse().unwrap())).is_err(), "a fresh address in the same /64");
        assert!(l.check_ip(Some("2001:db8:0:1::1".parse().unwrap())).is_ok(), "another /64");
        // Click counts naming an address do not spend its request bucket.
        let l = Limiters::new(&limits).unwrap();
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        for _ in 0..200 {
            let _ = l.check_click_ip("net", Some(ip));
        }
        assert!(l.check_ip(Some(ip)).is_ok());
    }

    #[test]
    fn the_failure_gate_closes_after_max_failures_until_the_window_ends() {
        let gate = FailureGate::new(3, 60_000);
        let ip: Option<IpAddr> = Some("2001:db8::1".parse().unwrap());
        let neighbour: Option<IpAddr> = Some("2001:db8::2".parse().unwrap());
        let stranger: Option<IpAddr> = Some("198.51.100.1".parse().unwrap());
        for _ in 0..3 {
            assert!(gate.check(ip, 1_000).is_ok());
            gate.failed(ip, 1_000);
        }
        let refused = gate.check(neighbour, 2_000).unwrap_err();
        assert_eq!(refused.retry_after, 59);
        assert!(gate.check(stranger, 2_000).is_ok());
        assert!(gate.check(ip, 60_999).is_err());
        assert!(gate.check(ip, 61_000).is_ok(), "a new window");
        gate.failed(ip, 61_000);
        assert!(gate.check(ip, 61_001).is_ok(), "one failure in the new window");
        assert!(gate.check(None, 0).is_ok());
    }
}
