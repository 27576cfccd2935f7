//! The probabilistic step: how likely it is that an install came from one of the clicks seen on
//! its network, when nothing deterministic names the click.
//!
//! Every click on the install's network (IPv4 /24, IPv6 /48) inside the fingerprint window is
//! weighed:
//! - the facts a device cannot change between a click and its install (operating system and its
//!   major.minor version, model, locale, time zone, screen) must not contradict the install's:
//!   one that differs rules the click out, and at least two must agree (an address and an OS
//!   family never carry a match on their own);
//! - a click that agrees gets a weight: 1 on the install's own address (a third on another
//!   address of the network), times more for a model or a screen that agrees (rare facts), less
//!   for facts the click did not reveal, times the likelihood of its click-to-install time (most
//!   installs follow their click within the hour);
//! - clicks with the same device facts and campaign are one candidate (a person clicking twice);
//! - an install nobody clicked for is always possible: its weight (the organic weight) grows
//!   with the number of distinct look-alike devices seen on the address and network (clicks and
//!   installs of the window), so a crowded address — a carrier NAT, an office, a family of
//!   iPhones — asks for more evidence, and RFC 6598 shared addresses count as crowded;
//! - look-alikes are distinct device profiles *as seen* (a phone seen by Safari, which hides the
//!   model, and by its install, which tells it, is two), agreeing on two facts at least;
//! - each campaign's share of the total weight is the probability it is the right one; the
//!   calibration maps it onto the rate at which such matches were right on the journey
//!   simulator (`docs/attribution.md`), and that is the answer's `confidence`.
//!
//! Two campaigns that both carry weight but neither reaches the threshold make the install
//! organic with reason `ambiguous`: precision comes first.

use serde::Serialize;

use super::index::{FLAG_TZ_GUESSED, OsFamily, Touch, prefix_of};
use super::{HOUR, MINUTE};

/// A fingerprint reduced to keyed hashes (0 = unknown).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FingerprintHash {
    pub os: OsFamily,
    pub os_version: u32,
    pub model: u32,
    pub locale: u32,
    pub timezone: u32,
    pub screen: u32,
}

impl FingerprintHash {
    pub fn apply(&self, touch: &mut Touch) {
        touch.os = self.os;
        touch.os_version = self.os_version;
        touch.model = self.model;
        touch.locale = self.locale;
        touch.timezone = self.timezone;
        touch.screen = self.screen;
    }
}

/// Facts compared between a click and an install, as bits.
pub const F_VERSION: u8 = 1;
pub const F_MODEL: u8 = 2;
pub const F_LOCALE: u8 = 4;
pub const F_TIMEZONE: u8 = 8;
pub const F_SCREEN: u8 = 16;

const FACTS: [(u8, &str); 5] = [
    (F_VERSION, "os_version"),
    (F_MODEL, "model"),
    (F_LOCALE, "locale"),
    (F_TIMEZONE, "timezone"),
    (F_SCREEN, "screen"),
];

/// Weight of a click seen on another address of the install's network (on the same address: 1).
pub const NETWORK_FACTOR: f64 = 0.3;
/// Factors of facts that agree (only rare ones add: the others are required anyway).
pub const MODEL_FACTOR: f64 = 4.0;
pub const SCREEN_FACTOR: f64 = 2.0;
/// Factors of facts the click did not reveal.
pub const UNKNOWN_VERSION: f64 = 0.35;
pub const UNKNOWN_LOCALE: f64 = 0.5;
pub const UNKNOWN_TIMEZONE: f64 = 0.8;
/// Factor of a click whose GeoIP time zone is not the install's (GeoIP places some addresses,
/// carrier ones most, in a neighbouring zone).
pub const GUESSED_TIMEZONE_DIFFERS: f64 = 0.3;
/// Click-to-install time: likelihood `(1 + t / TIME_SCALE) ^ -TIME_POWER` (1 at once, 0.54 at
/// 10 minutes, 0.125 at an hour, 0.0016 at a day).
pub const TIME_SCALE: i64 = 20 * MINUTE;
pub const TIME_POWER: f64 = 1.5;
/// The organic weight per look-alike device seen (and for the install's own chance of being
/// organic: one more).
pub const ORGANIC_WEIGHT: f64 = 0.012;
/// Look-alikes assumed on an RFC 6598 shared (carrier NAT) address.
pub const SHARED_RANGE_LOOKALIKES: f64 = 20.0;
/// Calibration `confidence = σ(CAL_SLOPE · logit(share) + CAL_OFFSET)`, fitted on the journey
/// simulator.
pub const CAL_SLOPE: f64 = 1.39;
pub const CAL_OFFSET: f64 = -0.23;
/// Two campaigns with shares within this ratio of each other are ambiguous whatever the
/// threshold (matters only for thresholds under 0.5).
pub const AMBIGUITY_RATIO: f64 = 0.5;

/// How one click compares with the install.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Evidence {
    /// The click came from the install's own address (else another address of its network).
    pub same_address: bool,
    /// Facts that agree, as `F_*` bits.
    #[serde(serialize_with = "fact_names")]
    pub agree: u8,
    /// Facts the click or the install did not reveal.
    #[serde(serialize_with = "fact_names")]
    pub unknown: u8,
    /// The first fact that differs (the click is then ruled out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub differs: Option<&'static str>,
    /// Likelihood of the click-to-install time (1 at once).
    pub time_factor: f64,
    /// The click's weight (0 when ruled out).
    pub weight: f64,
}

fn fact_names<S: serde::Serializer>(bits: &u8, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(FACTS.iter().filter(|(b, _)| bits & b != 0).map(|(_, n)| *n))
}

impl Evidence {
    pub fn agreeing(&self) -> u32 {
        self.agree.count_ones()
    }
    /// At least two facts agree and none differs.
    pub fn enough(&self) -> bool {
        self.differs.is_none() && self.agreeing() >= 2
    }
}

/// Likelihood of a click-to-install time of `age` ms.
pub fn time_factor(age: i64) -> f64 {
    (1.0 + age.max(0) as f64 / TIME_SCALE as f64).powf(-TIME_POWER)
}

/// The evidence of a click for an install, or `None` when their operating systems are not the
/// same known family.
pub fn evidence(touch: &Touch, ip: &[u8; 16], fp: &FingerprintHash, age: i64) -> Option<Evidence> {
    if touch.os == OsFamily::Unknown || fp.os == OsFamily::Unknown || touch.os != fp.os {
        return None;
    }
    let (mut agree, mut unknown, mut differs) = (0u8, 0u8, None);
    let mut guessed_tz_differs = false;
    for ((bit, name), (a, b)) in FACTS.iter().zip([
        (touch.os_version, fp.os_version),
        (touch.model, fp.model),
        (touch.locale, fp.locale),
        (touch.timezone, fp.timezone),
        (touch.screen, fp.screen),
    ]) {
        if a == 0 || b == 0 {
            unknown |= bit;
        } else if a == b {
            agree |= bit;
        } else if *bit == F_TIMEZONE && touch.flags & FLAG_TZ_GUESSED != 0 {
            // A GeoIP guess from the click's address, not the device's setting.
            guessed_tz_differs = true;
        } else if differs.is_none() {
            differs = Some(*name);
        }
    }
    let same_address = touch.ip == *ip;
    let mut e = Evidence { same_address, agree, unknown, differs, time_factor: time_factor(age), weight: 0.0 };
    if e.enough() {
        let mut w = if same_address { 1.0 } else { NETWORK_FACTOR } * e.time_factor;
        for (bit, yes, missing) in [
            (F_VERSION, 1.0, UNKNOWN_VERSION),
            (F_MODEL, MODEL_FACTOR, 1.0),
            (F_LOCALE, 1.0, UNKNOWN_LOCALE),
            (F_TIMEZONE, 1.0, UNKNOWN_TIMEZONE),
            (F_SCREEN, SCREEN_FACTOR, 1.0),
        ] {
            if agree & bit != 0 {
                w *= yes;
            } else if unknown & bit != 0 {
                w *= missing;
            }
        }
        if guessed_tz_differs {
            w *= GUESSED_TIMEZONE_DIFFERS;
        }
        e.weight = w;
    }
    Some(e)
}

/// A device's facts as one key (look-alikes and repeated clicks are told apart by it).
pub fn profile_key(t: &Touch) -> u64 {
    let mut k = t.os as u64;
    for v in [t.os_version, t.model, t.locale, t.timezone, t.screen] {
        k = (k ^ v as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
    k
}

/// An RFC 6598 shared address (carrier-grade NAT, `100.64.0.0/10`), IPv4-mapped.
pub fn shared_range(ip: &[u8; 16]) -> bool {
    ip[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] && ip[12] == 100 && (ip[13] & 0xc0) == 64
}

/// The organic weight for `lookalikes` look-alike devices seen.
pub fn organic_weight(lookalikes: f64) -> f64 {
    ORGANIC_WEIGHT * (1.0 + lookalikes)
}

/// A share (0–1) of the weight as a calibrated probability.
pub fn calibrate(share: f64) -> f64 {
    let p = share.clamp(1e-9, 1.0 - 1e-9);
    let z = CAL_SLOPE * (p / (1.0 - p)).ln() + CAL_OFFSET;
    let c = 1.0 / (1.0 + (-z).exp());
    (c * 1000.0).round() / 1000.0
}

/// Look-alike devices seen on the network: distinct device facts that agree with the install's
/// (clicks of any app and installs), one on its own address, [`NETWORK_FACTOR`] elsewhere.
#[derive(Debug, Default)]
pub struct Crowd {
    /// (profile key, on the install's address).
    keys: Vec<(u64, bool)>,
    pub shared_range: bool,
}

impl Crowd {
    /// An empty crowd; `shared_range`: the install's address is an RFC 6598 one.
    pub fn new(shared_range: bool) -> Self {
        Crowd { keys: Vec::new(), shared_range }
    }

    pub fn see(&mut self, t: &Touch, same_address: bool) {
        self.keys.push((profile_key(t), same_address));
    }

    /// Look-alikes, weighted (an RFC 6598 address counts as [`SHARED_RANGE_LOOKALIKES`] more).
    pub fn lookalikes(&mut self) -> f64 {
        // A profile seen on the address counts once, as on the address.
        self.keys.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        self.keys.dedup_by_key(|k| k.0);
        let seen: f64 = self.keys.iter().map(|&(_, here)| if here { 1.0 } else { NETWORK_FACTOR }).sum();
        seen + if self.shared_range { SHARED_RANGE_LOOKALIKES } else { 0.0 }
    }
}

/// What the fingerprint step concluded, for the audit and the simulator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FingerprintSummary {
    /// Distinct look-alike devices seen on the network (weighted, see [`Crowd`]).
    pub lookalikes: f64,
    /// The weight of "nobody here clicked for this install".
    pub organic_weight: f64,
    /// Each campaign's share of the weight, largest first (at most 8).
    pub campaigns: Vec<CampaignShare>,
    /// The best campaign's calibrated confidence (0 without candidates).
    pub confidence: f64,
    /// `matched`, `below_threshold`, `ambiguous` or `no_candidate`.
    pub verdict: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignShare {
    pub campaign_id: String,
    pub share: f64,
}

/// Sums candidate weights by campaign, one weight per device profile (its best click).
/// `cands` is (campaign index, profile key, weight); returns (campaign index, weight) sorted by
/// weight, largest first.
pub fn campaign_weights(cands: &mut [(u32, u64, f64)]) -> Vec<(u32, f64)> {
    cands.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(b.2.total_cmp(&a.2)));
    let mut out: Vec<(u32, f64)> = Vec::new();
    let mut last: Option<(u32, u64)> = None;
    for &(c, p, w) in cands.iter() {
        if last == Some((c, p)) {
            continue;
        }
        last = Some((c, p));
        match out.last_mut() {
            Some((lc, lw)) if *lc == c => *lw += w,
            _ => out.push((c, w)),
        }
    }
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// Whether `ip` and `other` are on the same network.
pub fn same_network(ip: &[u8; 16], other: &[u8; 16]) -> bool {
    prefix_of(ip) == prefix_of(other)
}

/// Used by docs and tests: the time factor at a few ages.
pub fn time_factor_table() -> Vec<(i64, f64)> {
    [0, 10 * MINUTE, HOUR, 6 * HOUR, 24 * HOUR].into_iter().map(|a| (a, time_factor(a))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6598_is_shared() {
        let mut t = Touch::new(uuid::Uuid::nil(), super::super::TouchKind::Click, 0, 0);
        for (ip, shared) in
            [("100.64.0.1", true), ("100.127.255.255", true), ("100.128.0.1", false), ("10.0.0.1", false)]
        {
            t.set_ip(Some(ip.parse().unwrap()));
            assert_eq!(shared_range(&t.ip), shared, "{ip}");
        }
        t.set_ip(Some("::ffff:100.64.0.1".parse().unwrap()));
        assert!(shared_range(&t.ip));
    }

    #[test]
    fn time_decays() {
        let t = time_factor_table();
        assert_eq!(t[0].1, 1.0);
        assert!(t.windows(2).all(|w| w[1].1 < w[0].1));
        assert!((t[2].1 - 0.125).abs() < 1e-9, "an hour: {t:?}");
        assert!(t[4].1 < 0.002, "a day: {t:?}");
    }

    #[test]
    fn a_profile_counts_once_per_campaign() {
        let mut c = vec![(0, 7, 0.5), (0, 7, 0.2), (0, 8, 0.1), (1, 7, 0.4)];
        let w = campaign_weights(&mut c);
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].0, 0);
        assert!((w[0].1 - 0.6).abs() < 1e-12);
        assert!((w[1].1 - 0.4).abs() < 1e-12);
    }

    #[test]
    fn calibration_is_monotone_and_bounded() {
        let mut last = 0.0;
        for i in 0..=100 {
            let c = calibrate(i as f64 / 100.0);
            assert!((0.0..=1.0).contains(&c));
            assert!(c >= last);
            last = c;
        }
    }
}
