//! The matching waterfall: click id / install referrer → device id → fingerprint →
//! view-through → organic, then the fraud rules on the winner. The decision carries every
//! candidate it weighed and every rule that fired, for the audit log.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use trailmark_core::protocol::{AttributionResult, DeepLink, FraudVerdict, MatchType};

use super::AttributionConfig;
pub use super::fingerprint::FingerprintHash;
use super::fingerprint::{
    AMBIGUITY_RATIO, CampaignShare, Crowd, Evidence, FingerprintSummary, calibrate, campaign_weights, evidence,
    organic_weight, profile_key, shared_range,
};
use super::fraud::{BurstAlert, BurstTracker, FraudPolicy, is_emulator};
use super::index::{FLAG_FLOOD_DEVICE, FLAG_FLOOD_IP, Hasher, OsFamily, Touch, TouchIndex, TouchKind};

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
            // Safari names only the family: no model at all.
            model: h.h32(self.model.filter(|m| !matches!(m.trim(), "iPhone" | "iPad" | "iPod"))),
            locale: h.h32(self.locale.map(normalize_locale).as_deref()),
            timezone: h.h32(self.timezone),
            screen: h.h32(self.screen),
        }
    }
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
    /// When the package was installed on the device (Android's `firstInstallTime`), if known.
    pub installed_at: Option<i64>,
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
    /// The app store's install referrer was sent: the store says where the install came from
    /// (a Trailmark click, expired or not, or none), so it is never fingerprinted.
    pub store_referrer: bool,
    /// iOS: the install carries an IDFA, so the person allowed tracking (App Tracking
    /// Transparency). Without it an iOS install is fingerprinted only when
    /// [`AttributionConfig::fingerprint_ios_without_att`] allows.
    pub tracking_authorized: bool,
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
    /// 1 for deterministic matches; for a fingerprint candidate its share of the weight (the
    /// campaign's share, calibrated, is the answer's confidence).
    pub score: f64,
    /// Inside its window, for this app, above the threshold.
    pub eligible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub chosen: bool,
    /// A fingerprint candidate's score components.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
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
    /// How a fingerprint candidate compared with the install.
    pub evidence: Option<Evidence>,
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
    /// What the fingerprint step concluded, when it ran.
    pub fingerprint: Option<FingerprintSummary>,
    /// Why the fingerprint step did not run, when it was reached and did not.
    pub fingerprint_off: Option<&'static str>,
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
                evidence: s.evidence,
            })
            .collect()
    }
}

/// Why a click after the download began or the app was installed is not a candidate.
pub const AFTER_INSTALLED: &str = "after the app was installed";

/// How long after the app was installed (`installed_at`) a click counts as injected; later ones
/// are only after the install (an update brought the SDK, the app's data were cleared).
pub const INJECTION_WINDOW: i64 = super::HOUR;

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
    let mut audit = Audit::default();
    // Eligible candidates of the first level that has any.
    let mut hits: Vec<Hit> = Vec::new();
    // Clicks after the download began or the app was installed: they cannot have caused the
    // install. With the click injection rule rejecting they are set aside (the waterfall goes
    // on without them) and only decide when nothing else matched.
    let mut set_aside: Vec<Hit> = Vec::new();
    let after_install = |t: &Touch| {
        cfg.fraud.click_injection == FraudPolicy::Reject
            && t.kind == TouchKind::Click
            && (facts.install_begin_ts.is_some_and(|b| b < t.ts) || facts.installed_at.is_some_and(|d| d < t.ts))
    };
    // Checks one touch against a window and records it; keeps it when eligible.
    let consider = |audit: &mut Audit, t: &Touch, m: MatchType, window: i64, hits: &mut Vec<_>, aside: &mut Vec<_>| {
        let Some(link) = links.get(t.link as usize).filter(|l| l.app_id == facts.app_id) else { return };
        let reason = if t.ts > at {
            Some("after the install")
        } else if at.saturating_sub(t.ts) > window {
            Some("outside the window")
        } else if after_install(t) {
            Some(AFTER_INSTALLED)
        } else {
            None
        };
        let slot = audit.add(Seen {
            match_type: m,
            touch: *t,
            link: link.clone(),
            score: 1.0,
            reason,
            chosen: false,
            evidence: None,
        });
        match reason {
            None => hits.push((slot, *t, 1.0, m)),
            Some(AFTER_INSTALLED) => aside.push((slot, *t, 1.0, m)),
            Some(_) => {}
        }
    };

    // 1. Click id from the app, then from the install referrer.
    for (id, m) in [(facts.click_id, MatchType::ClickId), (facts.referrer_click_id, MatchType::Referrer)] {
        let Some(id) = id else { continue };
        if let Some(t) = index.by_click_id(&id).filter(|t| t.kind == TouchKind::Click) {
            consider(&mut audit, t, m, cfg.click_window, &mut hits, &mut set_aside);
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
                    consider(&mut audit, t, MatchType::DeviceId, cfg.click_window, &mut hits, &mut set_aside);
                }
            }
        }
    }
    // 3. Probabilistic fingerprint over clicks from the same network.
    let mut summary = None;
    let mut fingerprint_off = None;
    if hits.is_empty() {
        fingerprint_off = fingerprint_refusal(facts, cfg);
        if fingerprint_off.is_none() {
            let (s, hit) = fingerprint_step(facts, index, links, cfg, &mut audit, &after_install);
            summary = Some(s);
            hits.extend(hit);
        }
    }
    // 4. View-through: an impression on the same device.
    if hits.is_empty() {
        for &d in &devices {
            for t in index.by_device(d, at.saturating_sub(cfg.view_through_window)).take(cap) {
                if t.kind == TouchKind::Impression {
                    consider(&mut audit, t, MatchType::ViewThrough, cfg.view_through_window, &mut hits, &mut set_aside);
                }
            }
        }
    }
    let Audit { mut seen, omitted } = audit;
    let mut rules = Vec::new();
    if hits.is_empty() {
        // Nothing else matched: a click reported while the download ran or just after the app
        // was installed (within [`INJECTION_WINDOW`]) is injected — the winner among them is
        // rejected below. One long after the app was installed (an update brought the SDK,
        // data were cleared) is only after the install.
        hits = set_aside
            .into_iter()
            .filter(|h| {
                facts.install_begin_ts.is_some_and(|b| b < h.1.ts)
                    || facts.installed_at.is_some_and(|d| h.1.ts.saturating_sub(d) <= INJECTION_WINDOW)
            })
            .collect();
        for i in hits.iter().filter_map(|h| h.0) {
            seen[i].reason = None;
        }
    } else if !set_aside.is_empty() {
        rules.push(RuleFired {
            rule: "click_injection",
            policy: FraudPolicy::Flag,
            detail: format!("{} click(s) after the download began or the app was installed set aside", set_aside.len()),
        });
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
        } else if let Some(done) = facts.installed_at
            && done < t.ts
        {
            fire(
                &mut rules,
                "click_injection",
                f.click_injection,
                format!("the app was installed {} ms before the click", t.ts.saturating_sub(done)),
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
            } else if let Some(s) = summary.as_ref().filter(|s| matches!(s.verdict, "ambiguous" | "below_threshold")) {
                s.verdict
            } else if seen.iter().any(|s| s.evidence.is_some()) {
                // Clicks on the network whose facts differ or say too little.
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
    Decision {
        result,
        seen,
        omitted_candidates: omitted,
        rules,
        winner: winner.map(|(t, l, ..)| (t, l)),
        burst_alert,
        fingerprint: summary,
        fingerprint_off,
    }
}

/// An eligible candidate: its position in the audit (none past [`MAX_AUDIT_CANDIDATES`]), the
/// touch, its confidence and how it matched.
type Hit = (Option<usize>, Touch, f64, MatchType);

/// Candidates as the audit keeps them (the first [`MAX_AUDIT_CANDIDATES`]).
#[derive(Default)]
struct Audit {
    seen: Vec<Seen>,
    omitted: usize,
}

impl Audit {
    fn add(&mut self, s: Seen) -> Option<usize> {
        if self.seen.len() < MAX_AUDIT_CANDIDATES {
            self.seen.push(s);
            Some(self.seen.len() - 1)
        } else {
            self.omitted += 1;
            None
        }
    }
}

/// Why the fingerprint step does not run for an install (its reason when nothing else
/// matched), or `None` when it runs.
pub fn fingerprint_refusal(facts: &InstallFacts<'_>, cfg: &AttributionConfig) -> Option<&'static str> {
    if facts.attribution_denied {
        Some("consent_denied")
    } else if cfg.fingerprint_threshold > 1.0 {
        Some("fingerprinting_off")
    } else if facts.ip.is_none() {
        Some("no_click_in_window")
    } else if facts.store_referrer {
        Some("store_referrer")
    } else if OsFamily::of(facts.fingerprint.os) == OsFamily::Ios
        && !facts.tracking_authorized
        && !cfg.fingerprint_ios_without_att
    {
        Some("ios_tracking_not_authorized")
    } else {
        None
    }
}

/// The fingerprint step (see [`super::fingerprint`]): weighs the clicks of the install's network,
/// records them for the audit, and returns its summary and the winning click, if any.
fn fingerprint_step(
    facts: &InstallFacts<'_>,
    index: &TouchIndex,
    links: &[Arc<LinkInfo>],
    cfg: &AttributionConfig,
    audit: &mut Audit,
    after_install: &dyn Fn(&Touch) -> bool,
) -> (FingerprintSummary, Option<Hit>) {
    let at = facts.install_ts;
    let fp = facts.fingerprint.hash(&index.hasher);
    let mut probe = Touch::new(uuid::Uuid::nil(), TouchKind::Click, 0, 0);
    probe.set_ip(facts.ip);
    let mut crowd = Crowd::new(shared_range(&probe.ip));
    // Clicks with enough evidence: (slot, touch, weight, campaign number).
    let mut cands: Vec<(Option<usize>, Touch, f64, u32)> = Vec::new();
    let mut campaigns: Vec<&str> = Vec::new();
    // Clicks weighed count against `fingerprint_max_candidates`; the walk itself (noted
    // installs, impressions) is bounded at four times that.
    let mut clicks = 0;
    for (n, t) in index.by_network(facts.ip, at.saturating_sub(cfg.fingerprint_window)).enumerate() {
        if clicks >= cfg.fingerprint_max_candidates || n >= 4 * cfg.fingerprint_max_candidates {
            break;
        }
        if t.kind == TouchKind::Impression || t.ts > at || after_install(t) {
            continue;
        }
        clicks += (t.kind == TouchKind::Click) as usize;
        let Some(e) = evidence(t, &probe.ip, &fp, at.saturating_sub(t.ts)) else { continue };
        // A look-alike agrees on two facts at least and contradicts none.
        if e.enough() {
            crowd.see(t, e.same_address);
        }
        if t.kind != TouchKind::Click {
            continue;
        }
        let Some(link) = links.get(t.link as usize).filter(|l| l.app_id == facts.app_id) else { continue };
        let reason = match e.differs {
            Some("os_version") => Some("os version differs"),
            Some("model") => Some("model differs"),
            Some("locale") => Some("locale differs"),
            Some("timezone") => Some("time zone differs"),
            Some(_) => Some("screen differs"),
            None if !e.enough() => Some("too little evidence"),
            None => None,
        };
        let slot = audit.add(Seen {
            match_type: MatchType::Fingerprint,
            touch: *t,
            link: link.clone(),
            score: 0.0,
            reason,
            chosen: false,
            evidence: Some(e),
        });
        if reason.is_none() {
            let c = match campaigns.iter().position(|c| *c == link.campaign_id) {
                Some(i) => i,
                None => {
                    campaigns.push(&link.campaign_id);
                    campaigns.len() - 1
                }
            };
            cands.push((slot, *t, e.weight, c as u32));
        }
    }
    let lookalikes = crowd.lookalikes();
    let organic = organic_weight(lookalikes);
    let mut keyed: Vec<(u32, u64, f64)> = cands.iter().map(|(_, t, w, c)| (*c, profile_key(t), *w)).collect();
    let by_campaign = campaign_weights(&mut keyed);
    let total = organic + by_campaign.iter().map(|(_, w)| w).sum::<f64>();
    let share = |w: f64| w / total;
    for (slot, _, w, _) in &cands {
        if let Some(i) = slot {
            audit.seen[*i].score = (share(*w) * 1000.0).round() / 1000.0;
        }
    }
    let best = by_campaign.first().copied();
    let confidence = best.map(|(_, w)| calibrate(share(w))).unwrap_or(0.0);
    let second = by_campaign.get(1).map(|(_, w)| share(*w)).unwrap_or(0.0);
    let verdict = match best {
        None => "no_candidate",
        Some((_, w)) if confidence >= cfg.fingerprint_threshold && second < share(w) * AMBIGUITY_RATIO => "matched",
        // Two campaigns carry the weight between them: neither is clearly the one.
        Some((_, w))
            if second >= share(w) * AMBIGUITY_RATIO
                && calibrate(by_campaign.iter().map(|(_, w)| share(*w)).sum::<f64>().min(1.0))
                    >= cfg.fingerprint_threshold =>
        {
            "ambiguous"
        }
        Some(_) => "below_threshold",
    };
    let mut hit = None;
    if let (Some((c, _)), "matched") = (best, verdict) {
        // The campaign's most likely click (its newest among equals).
        hit = cands
            .iter()
            .filter(|x| x.3 == c)
            .max_by(|a, b| a.2.total_cmp(&b.2).then(a.1.ts.cmp(&b.1.ts)))
            .map(|(slot, t, _, _)| (*slot, *t, confidence, MatchType::Fingerprint));
    }
    if hit.is_none() {
        let why = if verdict == "ambiguous" { "ambiguous" } else { "below the threshold" };
        for i in cands.iter().filter_map(|c| c.0) {
            audit.seen[i].reason = Some(why);
        }
    }
    let summary = FingerprintSummary {
        lookalikes: (lookalikes * 100.0).round() / 100.0,
        organic_weight: organic,
        campaigns: by_campaign
            .iter()
            .take(8)
            .map(|(c, w)| CampaignShare {
                campaign_id: campaigns[*c as usize].to_owned(),
                share: (share(*w) * 1000.0).round() / 1000.0,
            })
            .collect(),
        confidence,
        verdict,
    };
    (summary, hit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::attribution::{DAY, HOUR, MINUTE, SECOND};

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

        // Fingerprint: both clicks came from the same iPhone profile on the install's address,
        // for two campaigns, one and two hours before: the newer carries more weight, but not
        // enough to be sure.
        let install_fp =
            Fingerprint { os: Some("iOS"), os_version: Some("17.1.2"), locale: Some("en_US"), ..Default::default() };
        let d = run(
            &index,
            &InstallFacts {
                ip: Some("198.51.100.7".parse().unwrap()),
                fingerprint: install_fp,
                tracking_authorized: true,
                ..base.clone()
            },
        );
        assert_eq!(d.result.match_type, MatchType::Organic);
        assert_eq!(d.result.reason.as_deref(), Some("below_threshold"), "{:?}", d.fingerprint);
        assert_eq!(d.candidates().len(), 2);
        assert!(d.candidates().iter().all(|c| c.reason == Some("below the threshold")));
        let summary = d.fingerprint.as_ref().unwrap();
        assert_eq!(summary.campaigns[0].campaign_id, "c1", "the newer click carries more weight");
        assert!(summary.campaigns[0].share > summary.campaigns[1].share);
        // Attribution consent denied: the same install is not fingerprinted, its device id
        // still matches.
        let denied = InstallFacts {
            ip: Some("198.51.100.7".parse().unwrap()),
            fingerprint: install_fp,
            attribution_denied: true,
            tracking_authorized: true,
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
            tracking_authorized: true,
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
        let begun_before =
            InstallFacts { install_ts: 200 * SECOND, install_begin_ts: Some(90 * SECOND), ..facts.clone() };
        let d = run(&index, &begun_before);
        assert!(d.result.fraud.rejected);
        assert!(d.rules[0].detail.contains("before the click"), "{:?}", d.rules);
        // Without the store's times: the package installed before the click (Android's
        // firstInstallTime) gives it away as well.
        let installed_before = InstallFacts {
            install_ts: 200 * SECOND,
            referrer_click_id: None,
            device_ids: vec![],
            installed_at: Some(95 * SECOND),
            ..facts.clone()
        };
        let mut index2 = TouchIndex::new(7 * DAY);
        click(&mut index2, 1, 100 * SECOND, 0, Some("gaid-1"), "10.0.0.1", IPHONE);
        let d = run(&index2, &InstallFacts { device_ids: vec!["gaid-1"], ..installed_before.clone() });
        assert_eq!(d.result.match_type, MatchType::Organic);
        assert!(d.result.fraud.rejected);
        assert!(d.rules[0].detail.contains("installed 5000 ms before the click"), "{:?}", d.rules);
        // An earlier, legitimate click of the device: the injected one steps aside for it.
        click(&mut index2, 2, 20 * SECOND, 1, Some("gaid-1"), "10.0.0.1", IPHONE);
        let d = run(&index2, &InstallFacts { device_ids: vec!["gaid-1"], ..installed_before.clone() });
        assert_eq!(d.result.match_type, MatchType::DeviceId, "{:?}", d.rules);
        assert_eq!(d.result.click_id, Some(uuid::Uuid::from_u128(2).to_string()));
        assert!(!d.result.fraud.rejected);
        let injected = d.candidates().into_iter().find(|c| c.click_id == uuid::Uuid::from_u128(1).to_string()).unwrap();
        assert_eq!(injected.reason, Some(AFTER_INSTALLED));
        assert_eq!(d.result.fraud.flags, vec!["click_injection"], "flagged, not rejected");
        assert!(d.rules.iter().all(|r| r.policy == FraudPolicy::Flag));
        // A click long after the app was installed (an update brought the SDK): no injection,
        // just after the install.
        let updated = InstallFacts {
            install_ts: 10 * DAY,
            installed_at: Some(95 * SECOND - 2 * DAY),
            device_ids: vec!["gaid-1"],
            ..installed_before.clone()
        };
        let mut late = TouchIndex::new(7 * DAY);
        click(&mut late, 3, 9 * DAY, 0, Some("gaid-1"), "10.0.0.1", IPHONE);
        let d = run(&late, &updated);
        assert_eq!(d.result.match_type, MatchType::Organic);
        assert!(!d.result.fraud.rejected, "{:?}", d.rules);
        assert_eq!(d.result.reason.as_deref(), Some("outside_window"));
        // Installed after the click: no rule.
        let d = run(
            &index2,
            &InstallFacts { device_ids: vec!["gaid-1"], installed_at: Some(150 * SECOND), ..installed_before },
        );
        assert_eq!(d.result.match_type, MatchType::DeviceId);
        assert!(d.rules.is_empty(), "{:?}", d.rules);
    }

    #[test]
    fn other_apps_links_never_match() {
        let mut index = TouchIndex::new(7 * DAY);
        click(&mut index, 1, 0, 0, Some("dev"), "10.0.0.1", IPHONE);
        let facts = InstallFacts { app_id: "other", install_ts: HOUR, device_ids: vec!["dev"], ..Default::default() };
        assert_eq!(run(&index, &facts).result.match_type, MatchType::Organic);
    }
    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    const SAFARI_CLICK: Fingerprint<'static> = Fingerprint {
        os: Some("iOS"),
        os_version: Some("17.1"),
        model: Some("iPhone"),
        locale: Some("en-US,en;q=0.9"),
        timezone: Some("America/New_York"),
        screen: None,
    };
    const INSTALL: Fingerprint<'static> = Fingerprint {
        os: Some("iOS"),
        os_version: Some("17.1.2"),
        model: Some("iPhone15,2"),
        locale: Some("en_US"),
        timezone: Some("America/New_York"),
        screen: Some("1179x2556"),
    };

    fn fp_install(at: i64, addr: &str) -> InstallFacts<'static> {
        InstallFacts {
            app_id: "app",
            install_ts: at,
            ip: ip(addr),
            fingerprint: INSTALL,
            tracking_authorized: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_lone_recent_click_matches_with_a_calibrated_confidence() {
        let mut index = TouchIndex::new(7 * DAY);
        click(&mut index, 1, 0, 0, None, "198.51.100.7", SAFARI_CLICK);
        let d = run(&index, &fp_install(10 * MINUTE, "198.51.100.7"));
        assert_eq!(d.result.match_type, MatchType::Fingerprint, "{:?}", d.fingerprint);
        assert!(d.result.confidence >= 0.8 && d.result.confidence < 1.0, "{}", d.result.confidence);
        let c = &d.candidates()[0];
        assert!(c.chosen);
        let e = c.evidence.unwrap();
        assert!(e.same_address);
        assert_eq!(
            e.agree,
            super::super::fingerprint::F_VERSION
                | super::super::fingerprint::F_LOCALE
                | super::super::fingerprint::F_TIMEZONE
        );
        assert_ne!(e.unknown & super::super::fingerprint::F_MODEL, 0, "Safari's \"iPhone\" is no model");
        // The same click 20 hours earlier: the time since the click weighs against it.
        let d = run(&index, &fp_install(20 * HOUR, "198.51.100.7"));
        assert_eq!(d.result.match_type, MatchType::Organic);
        assert_eq!(d.result.reason.as_deref(), Some("below_threshold"));
        // From another address of the network: less likely than from the same one.
        let near = run(&index, &fp_install(10 * MINUTE, "198.51.100.8"));
        let same = run(&index, &fp_install(10 * MINUTE, "198.51.100.7"));
        assert!(near.fingerprint.as_ref().unwrap().confidence < same.fingerprint.as_ref().unwrap().confidence);
        // On an RFC 6598 shared address the same evidence is not enough.
        let mut shared = TouchIndex::new(7 * DAY);
        click(&mut shared, 1, 0, 0, None, "100.64.3.4", SAFARI_CLICK);
        let d = run(&shared, &fp_install(10 * MINUTE, "100.64.3.4"));
        assert_eq!(d.result.match_type, MatchType::Organic, "{:?}", d.fingerprint);
        assert!(d.fingerprint.as_ref().unwrap().lookalikes > 20.0);
    }

    #[test]
    fn the_address_alone_never_matches_and_a_differing_fact_rules_out() {
        let mut index = TouchIndex::new(7 * DAY);
        // Same address and OS family, nothing else known.
        click(&mut index, 1, 0, 0, None, "198.51.100.7", Fingerprint { os: Some("iOS"), ..Default::default() });
        let d = run(&index, &fp_install(MINUTE, "198.51.100.7"));
        assert_eq!(d.result.match_type, MatchType::Organic);
        assert_eq!(d.candidates()[0].reason, Some("too little evidence"));
        // Another language: ruled out, however recent.
        let mut index = TouchIndex::new(7 * DAY);
        click(&mut index, 1, 0, 0, None, "198.51.100.7", Fingerprint { locale: Some("de-DE"), ..SAFARI_CLICK });
        let d = run(&index, &fp_install(MINUTE, "198.51.100.7"));
        assert_eq!(d.result.match_type, MatchType::Organic);
        assert_eq!(d.candidates()[0].reason, Some("locale differs"));
        assert_eq!(d.candidates()[0].evidence.unwrap().differs, Some("locale"));
        // A time zone GeoIP guessed for the click's address may be wrong: weaker, not ruled out.
        let mut index = TouchIndex::new(7 * DAY);
        let mut t = Touch::new(uuid::Uuid::from_u128(1), TouchKind::Click, 0, 0);
        t.set_ip(ip("198.51.100.7"));
        Fingerprint { timezone: Some("America/Chicago"), ..SAFARI_CLICK }.hash(&index.hasher).apply(&mut t);
        t.flags |= crate::domain::attribution::index::FLAG_TZ_GUESSED;
        index.push(t);
        let d = run(&index, &fp_install(MINUTE, "198.51.100.7"));
        assert_eq!(d.result.match_type, MatchType::Fingerprint, "{:?}", d.fingerprint);
        assert!(d.candidates()[0].evidence.unwrap().differs.is_none());
        let mut agreeing = TouchIndex::new(7 * DAY);
        click(&mut agreeing, 1, 0, 0, None, "198.51.100.7", SAFARI_CLICK);
        let full = run(&agreeing, &fp_install(MINUTE, "198.51.100.7"));
        assert!(d.candidates()[0].score < full.candidates()[0].score, "a wrong guess weighs less");
    }

    /// Eight profiles that agree with [`INSTALL`] on all they reveal, told apart by what they
    /// reveal (model, screen, time zone known or not).
    fn look_alike(n: u128) -> Fingerprint<'static> {
        Fingerprint {
            model: (n & 1 != 0).then_some("iPhone15,2"),
            screen: (n & 2 != 0).then_some("1179x2556"),
            timezone: (n & 4 != 0).then_some("America/New_York"),
            ..SAFARI_CLICK
        }
    }

    #[test]
    fn a_crowd_of_look_alikes_makes_it_organic() {
        // Eight look-alike phones on one carrier address clicked campaign c0 in the last hours;
        // the installer clicked c1 ten minutes ago.
        let mut index = TouchIndex::new(7 * DAY);
        for n in 0..8 {
            click(&mut index, 100 + n, n as i64 * 10 * MINUTE, 0, None, "203.0.113.9", look_alike(n));
        }
        click(&mut index, 1, 3 * HOUR - 10 * MINUTE, 1, None, "203.0.113.9", SAFARI_CLICK);
        let d = run(&index, &fp_install(3 * HOUR, "203.0.113.9"));
        assert_eq!(d.result.match_type, MatchType::Organic, "{:?}", d.fingerprint);
        assert!(d.fingerprint.as_ref().unwrap().lookalikes >= 8.0, "{:?}", d.fingerprint);
        // Alone on the address, the same click matches.
        let mut alone = TouchIndex::new(7 * DAY);
        click(&mut alone, 1, 3 * HOUR - 10 * MINUTE, 1, None, "203.0.113.9", SAFARI_CLICK);
        let lone = run(&alone, &fp_install(3 * HOUR, "203.0.113.9"));
        assert_eq!(lone.result.match_type, MatchType::Fingerprint);
        // Installs of look-alikes seen on the address make a crowd too.
        for n in 0..8 {
            let mut t = Touch::new(uuid::Uuid::from_u128(500 + n), TouchKind::Install, HOUR + n as i64, u32::MAX);
            t.set_ip(ip("203.0.113.9"));
            look_alike(n).hash(&alone.hasher).apply(&mut t);
            alone.push(t);
        }
        let crowded = run(&alone, &fp_install(3 * HOUR, "203.0.113.9"));
        assert!(crowded.fingerprint.as_ref().unwrap().lookalikes >= 8.0, "{:?}", crowded.fingerprint);
        assert!(crowded.result.confidence < lone.result.confidence - 0.05, "{:?}", crowded.fingerprint);
        assert!(alone.by_click_id(&uuid::Uuid::from_u128(500)).is_none(), "an install is no click");
    }

    #[test]
    fn look_alike_clicks_for_two_campaigns_are_ambiguous() {
        // Two phones with the same facts on one Wi-Fi clicked two campaigns a minute apart.
        let mut index = TouchIndex::new(7 * DAY);
        click(&mut index, 1, 0, 0, None, "198.51.100.7", SAFARI_CLICK);
        click(&mut index, 2, MINUTE, 1, None, "198.51.100.7", SAFARI_CLICK);
        let d = run(&index, &fp_install(5 * MINUTE, "198.51.100.7"));
        assert_eq!(d.result.match_type, MatchType::Organic, "{:?}", d.fingerprint);
        assert_eq!(d.result.reason.as_deref(), Some("ambiguous"));
        assert!(d.candidates().iter().all(|c| c.reason == Some("ambiguous") && !c.chosen));
        let s = d.fingerprint.unwrap();
        assert_eq!((s.verdict, s.campaigns.len()), ("ambiguous", 2));
        // Two clicks of one campaign: not ambiguous, the campaign is matched.
        let mut same = TouchIndex::new(7 * DAY);
        click(&mut same, 1, 0, 0, None, "198.51.100.7", SAFARI_CLICK);
        click(&mut same, 2, MINUTE, 0, None, "198.51.100.7", SAFARI_CLICK);
        let d = run(&same, &fp_install(5 * MINUTE, "198.51.100.7"));
        assert_eq!(d.result.match_type, MatchType::Fingerprint, "{:?}", d.fingerprint);
        assert_eq!(d.result.click_id, Some(uuid::Uuid::from_u128(2).to_string()), "the newer click");
    }

    #[test]
    fn store_referrers_and_ios_without_tracking_are_not_fingerprinted() {
        let mut index = TouchIndex::new(7 * DAY);
        click(&mut index, 1, 0, 0, None, "198.51.100.7", SAFARI_CLICK);
        let at = 10 * MINUTE;
        let d = run(&index, &InstallFacts { tracking_authorized: false, ..fp_install(at, "198.51.100.7") });
        assert_eq!(d.result.match_type, MatchType::Organic);
        assert_eq!(d.fingerprint_off, Some("ios_tracking_not_authorized"));
        assert!(d.candidates().is_empty());
        let allow = AttributionConfig { fingerprint_ios_without_att: true, ..AttributionConfig::default() };
        let d = attribute(
            &InstallFacts { tracking_authorized: false, ..fp_install(at, "198.51.100.7") },
            &index,
            &links(),
            &allow,
            &mut BurstTracker::default(),
        );
        assert_eq!(d.result.match_type, MatchType::Fingerprint);
        let d = run(&index, &InstallFacts { store_referrer: true, ..fp_install(at, "198.51.100.7") });
        assert_eq!(d.result.match_type, MatchType::Organic);
        assert_eq!(d.fingerprint_off, Some("store_referrer"));
    }
}
