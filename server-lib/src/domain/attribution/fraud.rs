//! Fraud rules. Each rule has a published threshold and a policy: `reject` (the install counts
//! as organic, with the reason), `flag` (attributed, marked) or `allow` (not evaluated).

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use super::HOUR;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FraudPolicy {
    Reject,
    Flag,
    Allow,
}

impl FraudPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            FraudPolicy::Reject => "reject",
            FraudPolicy::Flag => "flag",
            FraudPolicy::Allow => "allow",
        }
    }
}

/// The fraud rules' thresholds and policies, with their defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct FraudConfig {
    /// Click injection: an install this soon after its click (ms), or an install that began
    /// before the click. Default 10 s, `reject`.
    pub min_click_to_install: i64,
    pub click_injection: FraudPolicy,
    /// Click flooding: more clicks than this from one IP address in one clock hour. Default 50.
    pub max_clicks_per_ip_hour: u32,
    /// Click flooding: more clicks than this carrying one device id in one clock hour.
    /// Default 20.
    pub max_clicks_per_device_hour: u32,
    /// Policy for installs matched to a flooding click. Default `flag`.
    pub click_flooding: FraudPolicy,
    /// Install burst: a campaign's attributed installs in the current hour exceed both
    /// `burst_min_installs` and `burst_factor` × its hourly average over the previous
    /// `burst_baseline_hours`. Defaults 50, 5.0, 24; `flag`.
    pub burst_min_installs: u32,
    pub burst_factor: f64,
    pub burst_baseline_hours: u32,
    pub install_burst: FraudPolicy,
    /// Emulators and generic device models (see [`is_emulator`]). Default `reject`.
    pub emulator: FraudPolicy,
    /// Installs from anonymous, VPN, hosting or Tor addresses, when a GeoIP2 Anonymous IP
    /// database is configured. Default `flag`.
    pub anonymous_ip: FraudPolicy,
}

impl Default for FraudConfig {
    fn default() -> Self {
        FraudConfig {
            min_click_to_install: 10_000,
            click_injection: FraudPolicy::Reject,
            max_clicks_per_ip_hour: 50,
            max_clicks_per_device_hour: 20,
            click_flooding: FraudPolicy::Flag,
            burst_min_installs: 50,
            burst_factor: 5.0,
            burst_baseline_hours: 24,
            install_burst: FraudPolicy::Flag,
            emulator: FraudPolicy::Reject,
            anonymous_ip: FraudPolicy::Flag,
        }
    }
}

impl FraudConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.min_click_to_install < 0 {
            return Err("min_click_to_install must not be negative".into());
        }
        if self.max_clicks_per_ip_hour == 0 || self.max_clicks_per_device_hour == 0 {
            return Err("click limits per hour must be at least 1".into());
        }
        if !(self.burst_factor.is_finite() && self.burst_factor >= 1.0) || self.burst_baseline_hours == 0 {
            return Err("burst_factor must be at least 1 and burst_baseline_hours at least 1".into());
        }
        Ok(())
    }
}

/// Model names of emulators and generic builds (lower-case substrings).
const EMULATOR_MODELS: &[&str] = &[
    "sdk_gphone",
    "android sdk built for",
    "google_sdk",
    "emulator",
    "simulator",
    "genymotion",
    "vbox86",
    "goldfish",
    "ranchu",
    "generic_x86",
    "generic x86",
    "bluestacks",
    "nox",
    "ldplayer",
    "memu",
];

/// True for emulator and generic device models, and for the bare architecture names
/// simulators report (`x86_64`, `i386`, `arm64`).
pub fn is_emulator(model: Option<&str>) -> bool {
    let Some(model) = model.map(|m| m.trim().to_ascii_lowercase()) else { return false };
    if matches!(model.as_str(), "x86_64" | "i386" | "x86" | "arm64" | "generic" | "sdk") {
        return true;
    }
    EMULATOR_MODELS.iter().any(|m| model.contains(m))
}

/// Counts events per key in fixed clock hours (click flooding).
#[derive(Default)]
pub struct HourlyCounter {
    hour: i64,
    counts: FxHashMap<u64, u32>,
}

impl HourlyCounter {
    /// Counts one event for `key` at `now` and returns the count in the current hour.
    pub fn hit(&mut self, key: u64, now: i64) -> u32 {
        let hour = now.div_euclid(HOUR);
        if hour != self.hour {
            self.hour = hour;
            self.counts.clear();
            self.counts.shrink_to(1024);
        }
        let n = self.counts.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }
}

/// Attributed installs per campaign and hour, and the burst check against the campaign's own
/// rolling baseline.
#[derive(Default)]
pub struct BurstTracker {
    /// campaign → (hour, installs) for the recent hours, oldest first.
    hours: FxHashMap<String, VecDeque<(i64, u32)>>,
}

/// A campaign's install rate crossed its baseline.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BurstAlert {
    pub campaign_id: String,
    pub hour_start: i64,
    pub installs: u32,
    pub baseline_per_hour: f64,
}

impl BurstTracker {
    /// Loads past hourly counts `(campaign, hour start ms, installs)` (after a restart).
    pub fn seed(&mut self, counts: Vec<(String, i64, u32)>) {
        for (campaign, hour_start, n) in counts {
            let hour = hour_start.div_euclid(HOUR);
            let hours = self.hours.entry(campaign).or_default();
            match hours.back_mut() {
                Some((h, c)) if *h == hour => *c += n,
                _ => hours.push_back((hour, n)),
            }
        }
    }

    /// Counts an install for `campaign` at `now`. Returns `(in burst, alert)`: the alert is
    /// returned once, when the hour first crosses the threshold.
    pub fn record(&mut self, campaign: &str, now: i64, cfg: &FraudConfig) -> (bool, Option<BurstAlert>) {
        let hour = now.div_euclid(HOUR);
        let keep = cfg.burst_baseline_hours as i64;
        let hours = self.hours.entry(campaign.to_owned()).or_default();
        while hours.front().is_some_and(|&(h, _)| h < hour - keep) {
            hours.pop_front();
        }
        match hours.back_mut() {
            Some((h, n)) if *h == hour => *n += 1,
            _ => hours.push_back((hour, 1)),
        }
        let current = hours.back().map_or(0, |&(_, n)| n);
        let previous: u32 = hours.iter().filter(|&&(h, _)| h < hour).map(|&(_, n)| n).sum();
        let baseline = previous as f64 / keep as f64;
        let limit = (cfg.burst_min_installs as f64).max(cfg.burst_factor * baseline);
        let burst = current as f64 > limit;
        let first = burst && (current as f64 - 1.0) <= limit;
        let alert = first.then(|| BurstAlert {
            campaign_id: campaign.to_owned(),
            hour_start: hour * HOUR,
            installs: current,
            baseline_per_hour: baseline,
        });
        (burst, alert)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulators() {
        assert!(is_emulator(Some("sdk_gphone64_x86_64")));
        assert!(is_emulator(Some("Android SDK built for x86")));
        assert!(is_emulator(Some("x86_64")));
        assert!(!is_emulator(Some("Pixel 8")));
        assert!(!is_emulator(Some("iPhone15,2")));
        assert!(!is_emulator(None));
    }

    #[test]
    fn hourly_counter_resets_each_hour() {
        let mut c = HourlyCounter::default();
        assert_eq!(c.hit(1, 0), 1);
        assert_eq!(c.hit(1, HOUR - 1), 2);
        assert_eq!(c.hit(1, HOUR), 1);
    }

    #[test]
    fn burst_against_own_baseline() {
        let cfg =
            FraudConfig { burst_min_installs: 10, burst_factor: 3.0, burst_baseline_hours: 4, ..Default::default() };
        let mut t = BurstTracker::default();
        // 8 installs an hour for four hours: baseline 8, limit max(10, 24) = 24.
        for h in 0..4 {
            for _ in 0..8 {
                assert!(!t.record("c", h * HOUR, &cfg).0);
            }
        }
        let mut alerts = 0;
        let mut last = (false, None);
        for _ in 0..25 {
            last = t.record("c", 4 * HOUR, &cfg);
            alerts += last.1.is_some() as u32;
        }
        assert!(last.0, "25 > 24");
        assert_eq!(alerts, 1, "one alert per crossing");
        assert!(!t.record("other", 4 * HOUR, &cfg).0, "per campaign");
    }
}
