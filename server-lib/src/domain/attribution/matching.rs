//! The matching waterfall: click id / install referrer → device id → fingerprint →
//! view-through → organic, then the fraud rules on the winner. The decision carries every
//! candidate it weighed and every rule that fired, for the audit log.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use trailmark_core::protocol::{AttributionResult, DeepLink, FraudVerdict, MatchType};

use super::AttributionConfig;
use super::fraud::{BurstAlert, BurstTracker, FraudPolicy, is_emulator};
use super::index::{FLAG_FLOOD_DEVICE, FLAG_FLOOD_IP, Hasher, OsFamily, Touch, TouchIndex, TouchKind, prefix_of};

/// What the engine needs to know about a link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkInfo {
    pub link_id: String,
    pub campaign_id: String,
    pub app_id: String,
    pub network: String,
    pub deep_link: Option<DeepLink>,
}

/// Fingerprint fields as reported (by the click's user agent and headers, or by the SDK).
#[derive(Debug, Clone, Copy, Default)]
pub struct Fingerprint<'a> {
    pub os: Option<&'a str>,
    pub os_version: Option<&'a str>,
    pub model: Option<&'a str>,
    pub locale: Option<&'a str>,
    pub timezone: Option<&'a str>,
    /// `WIDTHxHEIGHT`.
    pub screen: Option<&'a str>,
}

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

/// `17.1.2` → `17.1`; `14` → `14`.
pub fn major_minor(version: &str) -> String {
    version.trim().split(['.', '_']).take(2).collect::<Vec<_>>().join(".")
}

/// `en_US`, `en-us`, `en-US,en;q=0.9` → `en-us`.
pub fn normalize_locale(locale: &str) -> String {
    locale.split([',', ';']).next().unwrap_or_default().trim().replace('_', "-").to_ascii_lowercase()
}

impl Fingerprint<'_> {
    pub fn hash(&self, h: &Hasher) -> FingerprintHash {
        FingerprintHash {
            os: OsFamily::of(self.os),
            os_version: h.h32(self.os_version.map(major_minor).as_deref()),
            model: h.h32(self.model),
            locale: h.h32(self.locale.map(normalize_locale).as_deref()),
            timezone: h.h32(self.timezone),
            screen: h.h32(self.screen),
        }
    }
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

/// Fingerprint weights; they sum to 1.
pub const W_IP: f64 = 0.35;
pub const W_PREFIX: f64 = 0.15;
pub const W_OS: f64 = 0.10;
pub const W_OS_VERSION: f64 = 0.15;
pub const W_MODEL: f64 = 0.15;
pub const W_LOCALE: f64 = 0.10;
pub const W_TIMEZONE: f64 = 0.10;
pub const W_SCREEN: f64 = 0.05;

/// The fingerprint score of a click for an install, or `None` when the operating systems
/// differ (a click from Android cannot install an iOS app).
pub fn score(touch: &Touch, ip: &[u8; 16], fp: &FingerprintHash) -> Option<f64> {
    if touch.os != OsFamily::Unknown && fp.os != OsFamily::Unknown && touch.os != fp.os {
        return None;
    }
    let same = |a: u32, b: u32| a != 0 && a == b;
    let mut s = 0.0;
    if touch.ip == *ip {
        s += W_IP;
    } else if prefix_of(&touch.ip) == prefix_of(ip) {
        s += W_PREFIX;
    }
    if touch.os != OsFamily::Unknown && touch.os == fp.os {
        s += W_OS;
    }
    for (a, b, w) in [
        (touch.os_version, fp.os_version, W_OS_VERSION),
        (touch.model, fp.model, W_MODEL),
        (touch.locale, fp.locale, W_LOCALE),
        (touch.timezone, fp.timezone, W_TIMEZONE),
        (touch.screen, fp.screen, W_SCREEN),
    ] {
        if same(a, b) {
            s += w;
        }
    }
    Some((s * 1000.0).round() / 1000.0)
}

/// Everything about an install the engine matches on.
#[derive(Debug, Clone, Default)]
pub struct InstallFacts<'a> {
    pub app_id: &'a str,
    /// When the app first opened (device time moved onto the server clock, capped at the
    /// receive time).
    pub install_ts: i64,
    /// When the server received the install (the burst rule counts by it). 0: `install_ts`.
    pub received_at: i64,
    /// When the store download began (Play Install Referrer), if known.
    pub install_begin_ts: Option<i64>,
    pub click_id: Option<uuid::Uuid>,
    pub referrer_click_id: Option<uuid::Uuid>,
    /// Advertising and device ids (IDFA, IDFV, GAID, Android id).
    pub device_ids: Vec<&'a str>,
    pub ip: Option<IpAddr>,
    pub fingerprint: Fingerprint<'a>,
    /// The install's address is in the GeoIP2 Anonymous IP database.
    pub anonymous_ip: bool,
    /// The person denied attribution consent: no fingerprint matching (click ids, the install
    /// referrer and device ids the app was allowed to send still match).
    pub attribution_denied: bool,
}

/// One touch the engine looked at.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub match_type: MatchType,
    pub click_id: String,
    pub link_id: String,
    pub campaign_id: String,
    pub network: String,
    pub time: i64,
    /// 1 for deterministic matches, the fingerprint score otherwise.
    pub score: f64,
    /// Inside its window, for this app, above the threshold.
    pub eligible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub chosen: bool,
}

/// A fraud rule that fired.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleFired {
    pub rule: &'static str,
    pub policy: FraudPolicy,
    pub detail: String,
}

/// One touch the engine looked at. Kept compact while deciding; [`Decision::candidates`]
/// renders them for the audit log.
#[derive(Debug, Clone)]
pub struct Seen {
    pub match_type: MatchType,
    pub touch: Touch,
    pub link: Arc<LinkInfo>,
    pub score: f64,
    pub reason: Option<&'static str>,
    pub chosen: bool,
}

/// The outcome of one install, with its explanation.
#[derive(Debug, Clone)]
pub struct Decision {
    pub result: AttributionResult,
    /// Every candidate considered, in the order considered (at most [`MAX_AUDIT_CANDIDATES`]).
    pub seen: Vec<Seen>,
    /// Candidates considered but left out of `seen`.
    pub omitted_candidates: usize,
    pub rules: Vec<RuleFired>,
    /// The touch the install was credited to (before fraud rejection), and its link.
    pub winner: Option<(Touch, Arc<LinkInfo>)>,
    pub burst_alert: Option<BurstAlert>,
}

impl Decision {
    /// The candidates as the audit log shows them.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.seen
            .iter()
            .map(|s| Candidate {
                match_type: s.match_type,
                click_id: s.touch.click_id().to_string(),
                link_id: s.link.link_id.clone(),
                campaign_id: s.link.campaign_id.clone(),
                network: s.link.network.clone(),
                time: s.touch.ts,
                score: s.score,
                eligible: s.reason.is_none(),
                reason: s.reason,
                chosen: s.chosen,
            })
            .collect()
    }
}

/// Most candidates kept in an audit record.
pub const MAX_AUDIT_CANDIDATES: usize = 64;

/// Runs the waterfall for one install. `links[i]` is the link of touches with `link == i`.
/// `burst` counts attributed installs per campaign (the burst rule's state).
pub fn attribute(
    facts: &InstallFacts<'_>,
    index: &TouchIndex,
    links: &[Arc<LinkInfo>],
    cfg: &AttributionConfig,
    burst: &mut BurstTracker,
) -> Decision {
    let at = facts.install_ts;
    let mut seen: Vec<Seen> = Vec::new();
    let mut omitted = 0usize;
    // Eligible candidates of the first level that has any: (position in `seen` or none, touch).
    let mut hits: Vec<(Option<usize>, Touch, f64, MatchType)> = Vec::new();
    // Checks one touch against a window and records it; keeps it when eligible.
    let mut consider = |t: &Touch, m: MatchType, window: i64, score: f64, hits: &mut Vec<_>| {
        let Some(link) = links.get(t.link as usize).filter(|l| l.app_id == facts.app_id) else { return };
        let reason = if t.ts > at {
            Some("after the install")
        } else if at.saturating_sub(t.ts) > window {
            Some("outside the window")
        } else if score < cfg.fingerprint_threshold && m == MatchType::Fingerprint {
            Some("score below the threshold")
        } else {
            None
        };
        let slot = if seen.len() < MAX_AUDIT_CANDIDATES {
            seen.push(Seen { match_type: m, touch: *t, link: link.clone(), score, reason, chosen: false });
            Some(seen.len() - 1)
        } else {
            omitted += 1;
            None
        };
        if reason.is_none() {
            hits.push((slot, *t, score, m));
        }
    };

    // 1. Click id from the app, then from the install referrer.
    for (id, m) in [(facts.click_id, MatchType::ClickId), (facts.referrer_click_id, MatchType::Referrer)] {
        let Some(id) = id else { continue };
        if let Some(t) = index.by_click_id(&id).filter(|t| t.kind == TouchKind::Click) {
            consider(t, m, cfg.click_window, 1.0, &mut hits);
            if !hits.is_empty() {
                break;
            }
        }
    }
    // 2. Device and advertising ids seen on clicks.
    let devices: Vec<u64> = facts.device_ids.iter().map(|d| index.hasher.device(Some(d))).filter(|&h| h != 0).collect();
    let cap = cfg.fingerprint_max_candidates;
    if hits.is_empty() {
        for &d in &devices {
            for t in index.by_device(d, at.saturating_sub(cfg.click_window)).take(cap) {
                if t.kind == TouchKind::Click {
                    consider(t, MatchType::DeviceId, cfg.click_window, 1.0, &mut hits);
                }
            }
        }
    }
    // 3. Probabilistic fingerprint over clicks from the same network.
    if hits.is_empty() && facts.ip.is_some() && !facts.attribution_denied && cfg.fingerprint_threshold <= 1.0 {
        let fp = facts.fingerprint.hash(&index.hasher);
        let mut probe = Touch::new(uuid::Uuid::nil(), TouchKind::Click, 0, 0);
        probe.set_ip(facts.ip);
        let mut scanned = 0;
        for t in index.by_network(facts.ip, at.saturating_sub(cfg.fingerprint_window)) {
            scanned += 1;
            if scanned > cap {
                break;
            }
            if t.kind != TouchKind::Click {
                continue;
            }
            let Some(s) = score(t, &probe.ip, &fp) else { continue };
            consider(t, MatchType::Fingerprint, cfg.fingerprint_window, s, &mut hits);
        }
    }
    // 4. View-through: an impression on the same device.
    if hits.is_empty() {
        for &d in &devices {
            for t in index.by_device(d, at.saturating_sub(cfg.view_through_window)).take(cap) {
                if t.kind == TouchKind::Impression {
                    consider(t, MatchType::ViewThrough, cfg.view_through_window, 1.0, &mut hits);
                }
            }
        }
    }

    // Most recent wins; ties go to the network listed first in the priority, then by name.
    let network = |t: &Touch| links[t.link as usize].network.as_str();
    let best = hits.into_iter().min_by(|(_, a, ..), (_, b, ..)| {
        b.ts.cmp(&a.ts)
            .then(cfg.network_rank(network(a)).cmp(&cfg.network_rank(network(b))))
            .then(network(a).cmp(network(b)))
    });
    if let Some((Some(slot), ..)) = best {
        seen[slot].chosen = true;
    }
    let winner = best.map(|(_, t, score, m)| (t, links[t.link as usize].clone(), score, m));

    // Fraud rules.
    let f = &cfg.fraud;
    let mut rules = Vec::new();
    fn fire(rules: &mut Vec<RuleFired>, rule: &'static str, policy: FraudPolicy, detail: String) {
        if policy != FraudPolicy::Allow {
            rules.push(RuleFired { rule, policy, detail });
        }
    }
    if let Some((t, ..)) = &winner
        && t.kind == TouchKind::Click
    {
        if let Some(begin) = facts.install_begin_ts
            && begin < t.ts
        {
            fire(
                &mut rules,
                "click_injection",
                f.click_injection,
                format!("install began {} ms before the click", t.ts.saturating_sub(begin)),
            );
        } else if at.saturating_sub(t.ts) < f.min_click_to_install {
            fire(
                &mut rules,
                "click_injection",
                f.click_injection,
                format!("click to install {} ms < {} ms", at.saturating_sub(t.ts), f.min_click_to_install),
            );
        }
        if t.flags & (FLAG_FLOOD_IP | FLAG_FLOOD_DEVICE) != 0 {
            let what = if t.flags & FLAG_FLOOD_IP != 0 { "IP address" } else { "device" };
            fire(
                &mut rules,
                "click_flooding",
                f.click_flooding,
                format!(
                    "click {} came from a {what} over the hourly click limit ({} per IP, {} per device)",
                    t.click_id(),
                    f.max_clicks_per_ip_hour,
                    f.max_clicks_per_device_hour
                ),
            );
        }
    }
    if is_emulator(facts.fingerprint.model) {
        fire(
            &mut rules,
            "emulator",
            f.emulator,
            format!("device model {:?} is an emulator", facts.fingerprint.model.unwrap_or("")),
        );
    }
    if facts.anonymous_ip {
        fire(
            &mut rules,
            "anonymous_ip",
            f.anonymous_ip,
            "the install came from an anonymous, VPN or hosting address".into(),
        );
    }
    let mut burst_alert = None;
    let rejected_so_far = rules.iter().any(|r| r.policy == FraudPolicy::Reject);
    if let Some((_, link, ..)) = &winner
        && !rejected_so_far
        && f.install_burst != FraudPolicy::Allow
    {
        let now = if facts.received_at > 0 { facts.received_at } else { at };
        let (in_burst, alert) = burst.record(&link.campaign_id, now, f);
        if in_burst {
            fire(
                &mut rules,
                "install_burst",
                f.install_burst,
                format!(
                    "campaign {} is above {}× its hourly baseline (and {} installs)",
                    link.campaign_id, f.burst_factor, f.burst_min_installs
                ),
            );
        }
        burst_alert = alert;
    }
    let rejected = rules.iter().any(|r| r.policy == FraudPolicy::Reject);
    let fraud = FraudVerdict { flags: rules.iter().map(|r| r.rule.to_owned()).collect(), rejected };

    let result = match (&winner, rejected) {
        (Some((t, link, score, m)), false) => AttributionResult {
            attributed: true,
            match_type: *m,
            confidence: *score,
            campaign_id: Some(link.campaign_id.clone()),
            link_id: Some(link.link_id.clone()),
            click_id: Some(t.click_id().to_string()),
            network: Some(link.network.clone()),
            deep_link: link.deep_link.clone(),
            fraud,
            reinstall: false,
            reason: None,
        },
        _ => {
            let reason = if rejected {
                "rejected_fraud"
            } else if seen.iter().any(|s| s.reason == Some("score below the threshold")) {
                "below_threshold"
            } else if !seen.is_empty() {
                "outside_window"
            } else if facts.attribution_denied {
                "consent_denied"
            } else {
                "no_click_in_window"
            };
            AttributionResult { reason: Some(reason.into()), ..AttributionResult::organic(fraud) }
        }
    };
    Decision { result, seen, omitted_candidates: omitted, rules, winner: winner.map(|(t, l, ..)| (t, l)), burst_alert }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::attribution::{DAY, HOUR, SECOND};

    fn links() -> Vec<Arc<LinkInfo>> {
        ["net_a", "net_b"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                Arc::new(LinkInfo {
                    link_id: format!("l{i}"),
                    campaign_id: format!("c{i}"),
                    app_id: "app".into(),
                    network: (*n).into(),
                    deep_link: Some(DeepLink { path: format!("/p{i}"), params: Default::default() }),
                })
            })
            .collect()
    }

    fn click(index: &mut TouchIndex, n: u128, ts: i64, link: u32, device: Option<&str>, ip: &str, fp: Fingerprint<'_>) {
        let mut t = Touch::new(uuid::Uuid::from_u128(n), TouchKind::Click, ts, link);
        t.device = index.hasher.device(device);
        t.set_ip(Some(ip.parse().unwrap()));
        fp.hash(&index.hasher).apply(&mut t);
        index.push(t);
    }

    fn run(index: &TouchIndex, facts: &InstallFacts<'_>) -> Decision {
        attribute(facts, index, &links(), &AttributionConfig::default(), &mut BurstTracker::default())
    }

    const IPHONE: Fingerprint<'static> = Fingerprint {
        os: Some("iOS"),
        os_version: Some("17.1"),
        model: None,
        locale: Some("en-US,en;q=0.9"),
        timezone: None,
        screen: None,
    };

    #[test]
    fn waterfall_order_and_windows() {
        let mut index = TouchIndex::new(7 * DAY);
        click(&mut index, 1, 0, 0, Some("AD-1"), "198.51.100.7", IPHONE);
        click(&mut index, 2, HOUR, 1, None, "198.51.100.7", IPHONE);
        let base = InstallFacts { app_id: "app", install_ts: 2 * HOUR, ..Default::default() };

        // Click id beats everything.
        let d = run(
            &index,
            &InstallFacts { click_id: Some(uuid::Uuid::from_u128(1)), device_ids: vec!["ad-1"], ..base.clone() },
        );
        assert_eq!(d.result.match_type, MatchType::ClickId);
        assert_eq!(d.result.link_id.as_deref(), Some("l0"));
        assert_eq!(d.result.deep_link.as_ref().map(|d| d.path.as_str()), Some("/p0"));

        // Device id (case-insensitive).
        let d = run(&index, &InstallFacts { device_ids: vec!["ad-1"], ..base.clone() });
        assert_eq!(d.result.match_type, MatchType::DeviceId);
        assert_eq!(d.result.confidence, 1.0);

        // Fingerprint: same IP, OS, version, locale → 0.70; newest eligible click wins.
        let install_fp =
            Fingerprint { os: Some("iOS"), os_version: Some("17.1.2"), locale: Some("en_US"), ..Default::default() };
        let d = run(
            &index,
            &InstallFacts { ip: Some("198.51.100.7".parse().unwrap()), fingerprint: install_fp, ..base.clone() },
        );
        assert_eq!(d.result.match_type, MatchType::Fingerprint);
        assert_eq!(d.result.click_id, Some(uuid::Uuid::from_u128(2).to_string()));
        assert!((d.result.confidence - 0.70).abs() < 1e-9, "{}", d.result.confidence);
        assert_eq!(d.candidates().len(), 2);
        assert!(d.candidates().iter().all(|c| c.eligible));
        assert_eq!(d.result.reason, None, "attributed: no reason");
        // The same install under a threshold above its score.
        let strict = AttributionConfig { fingerprint_threshold: 0.9, ..AttributionConfig::default() };
        let fp_facts =
            InstallFacts { ip: Some("198.51.100.7".parse().unwrap()), fingerprint: install_fp, ..base.clone() };
        let d = attribute(&fp_facts, &index, &links(), &strict, &mut BurstTracker::default());
        assert_eq!(d.result.reason.as_deref(), Some("below_threshold"));
        // Attribution consent denied: the same install is not fingerprinted, its device id
        // still matches.
        let denied = InstallFacts {
            ip: Some("198.51.100.7".parse().unwrap()),
            fingerprint: install_fp,
            attribution_denied: true,
            ..base.clone()
        };
        let d = run(&index, &denied);
        assert_eq!(d.result.match_type, MatchType::Organic);
        assert_eq!(d.result.reason.as_deref(), Some("consent_denied"));
        assert!(d.candidates().is_empty());
        let d = run(&index, &InstallFacts { device_ids: vec!["AD-1"], ..denied });
        assert_eq!(d.result.match_type, MatchType::DeviceId);

        // An Android install never matches an iOS click by fingerprint.
        let android = Fingerprint { os: Some("Android"), ..install_fp };
        let d = run(
            &index,
            &InstallFacts { ip: Some("198.51.100.7".parse().unwrap()), fingerprint: android, ..base.clone() },
        );
        assert_eq!(d.result.match_type, MatchType::Organic);

        // Past the 24 h fingerprint window, but the device id still matches within 7 days.
        let late = InstallFacts {
            install_ts: 3 * DAY,
            ip: Some("198.51.100.7".parse().unwrap()),
            fingerprint: install_fp,
            ..base.clone()
        };
        let d = run(&index, &late);
        assert_eq!(d.result.match_type, MatchType::Organic);
        assert_eq!(d.result.reason.as_deref(), Some("no_click_in_window"), "the index is walked by window");
        assert!(d.candidates().iter().all(|c| !c.eligible));
        let d = run(&index, &InstallFacts { device_ids: vec!["AD-1"], ..late.clone() });
        assert_eq!(d.result.match_type, MatchType::DeviceId);
        // Past 7 days: organic.
        let d = run(&index, &InstallFacts { install_ts: 8 * DAY, device_ids: vec!["AD-1"], ..base.clone() });
        assert_eq!(d.result.match_type, MatchType::Organic);
        assert_eq!(d.result.reason.as_deref(), Some("no_click_in_window"));
        assert!(d.seen.is_empty(), "the walk stops at the window: {:?}", d.candidates());
    }

    #[test]
    fn ties_go_by_network_priority() {
        let mut index = TouchIndex::new(7 * DAY);
        click(&mut index, 1, 0, 0, Some("dev"), "10.0.0.1", IPHONE);
        click(&mut index, 2, 0, 1, Some("dev"), "10.0.0.1", IPHONE);
        let facts = InstallFacts { app_id: "app", install_ts: HOUR, device_ids: vec!["dev"], ..Default::default() };
        let mut cfg = AttributionConfig::default();
        let d = attribute(&facts, &index, &links(), &cfg, &mut BurstTracker::default());
        assert_eq!(d.result.network.as_deref(), Some("net_a"), "by name without a priority list");
        cfg.network_priority = vec!["net_b".into()];
        let d = attribute(&facts, &index, &links(), &cfg, &mut BurstTracker::default());
        assert_eq!(d.result.network.as_deref(), Some("net_b"));
        assert_eq!(d.candidates().iter().filter(|c| c.chosen).count(), 1);
    }

    #[test]
    fn click_injection_rejects_to_organic_with_reason() {
        let mut index = TouchIndex::new(7 * DAY);
        click(&mut index, 1, 100 * SECOND, 0, None, "10.0.0.1", IPHONE);
        let id = Some(uuid::Uuid::from_u128(1));
        let facts =
            InstallFacts { app_id: "app", install_ts: 105 * SECOND, referrer_click_id: id, ..Default::default() };
        let d = run(&index, &facts);
        assert!(!d.result.attributed);
        assert_eq!(d.result.match_type, MatchType::Organic);
        assert!(d.result.fraud.rejected);
        assert_eq!(d.result.reason.as_deref(), Some("rejected_fraud"));
        assert_eq!(d.result.fraud.flags, vec!["click_injection"]);
        assert!(d.winner.is_some(), "the audit keeps what it would have been");
        let begun_before = InstallFacts { install_ts: 200 * SECOND, install_begin_ts: Some(90 * SECOND), ..facts };
        let d = run(&index, &begun_before);
        assert!(d.result.fraud.rejected);
        assert!(d.rules[0].detail.contains("before the click"), "{:?}", d.rules);
    }

    #[test]
    fn other_apps_links_never_match() {
        let mut index = TouchIndex::new(7 * DAY);
        click(&mut index, 1, 0, 0, Some("dev"), "10.0.0.1", IPHONE);
        let facts = InstallFacts { app_id: "other", install_ts: HOUR, device_ids: vec!["dev"], ..Default::default() };
        assert_eq!(run(&index, &facts).result.match_type, MatchType::Organic);
    }
}
