//! Install requests: field checks, device-id normalisation, device times on the server's
//! clock, and the audit of a decision. Pure.

use serde_json::{Value, json};
use trailmark_core::protocol::{self, InstallRequest};

use crate::domain::attribution::matching::{Decision, InstallFacts, fingerprint_refusal};
use crate::domain::attribution::{AttributionConfig, DAY};
use crate::domain::config::AppKind;
use crate::domain::records::{DeviceKeys, InstallRecord, device_id_form};

use crate::domain::error::Refusal;

/// What an app of `kind` may post to `/v1/install`: a web app's secret is public and it has no
/// iOS or Android installs to report, so it may not post them (they would take clicks' credit).
pub fn check_kind(kind: AppKind, platform: protocol::Platform) -> Result<(), Refusal> {
    match (kind, platform) {
        (AppKind::Web, protocol::Platform::Ios | protocol::Platform::Android) => Err(Refusal::forbidden(
            "not_allowed_for_app_kind",
            "a web app may not post iOS or Android installs; send them with the mobile app's id",
        )),
        _ => Ok(()),
    }
}

/// Whether the request with `keys` comes from the device that made `stored`: the same
/// anonymous id, IDFV or Android id. An advertising id alone does not tell (it is readable by
/// every app on the device, reset by users, and known to ad networks), so a stored answer —
/// click id, deep-link parameters — is never handed out on it.
pub fn same_device(stored: &InstallRecord, keys: &DeviceKeys) -> bool {
    let same = |a: &Option<String>, b: &Option<String>| a.is_some() && a == b;
    stored.anonymous_id == keys.anonymous_id
        || same(&stored.idfv, &keys.idfv)
        || same(&stored.android_id, &keys.android_id)
}

/// A device field: absent, or 1 to `max` characters without controls.
fn check_field(name: &str, value: Option<&str>, max: usize) -> Result<(), Refusal> {
    match value {
        Some(v) if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) => {
            Err(Refusal::invalid("invalid_field", format!("{name} must be 1 to {max} characters without controls")))
        }
        _ => Ok(()),
    }
}

pub fn validate(req: &InstallRequest) -> Result<(), Refusal> {
    protocol::validate_id("anonymous_id", &req.anonymous_id)
        .map_err(|e| Refusal::invalid("invalid_field", e.to_string()))?;
    let d = &req.device;
    for (name, value) in [
        ("device.idfa", &d.idfa),
        ("device.idfv", &d.idfv),
        ("device.gaid", &d.gaid),
        ("device.android_id", &d.android_id),
        ("device.os", &d.os),
        ("device.os_version", &d.os_version),
        ("device.model", &d.model),
        ("device.locale", &d.locale),
        ("device.timezone", &d.timezone),
        ("click_id", &req.click_id),
    ] {
        check_field(name, value.as_deref(), 256)?;
    }
    check_field("install_referrer", req.install_referrer.as_deref(), 2048)
}

pub fn lower(v: &Option<String>) -> Option<String> {
    v.as_deref().map(device_id_form).filter(|s| !s.is_empty() && !s.chars().all(|c| c == '0' || c == '-'))
}

/// A device time (Unix ms) moved onto the server's clock by `skew` (server minus device, from
/// the signed timestamp; the signature check bounds it to 5 minutes), so click-to-install times
/// compare server time with server time. Never after `received_at`; refused when implausible.
pub fn device_time(ms: i64, field: &str, skew: i64, received_at: i64) -> Result<i64, Refusal> {
    const EARLIEST: i64 = 1_262_304_000_000; // 2010-01-01
    if !(EARLIEST..=received_at.saturating_add(DAY)).contains(&ms) {
        return Err(Refusal::invalid("invalid_field", format!("{field} is not a plausible Unix time in ms")));
    }
    Ok(ms.saturating_add(skew).min(received_at))
}

/// The Trailmark click id in a Play install referrer (`tm_click_id=…`).
pub fn referrer_click_id(referrer: &str) -> Option<uuid::Uuid> {
    url::form_urlencoded::parse(referrer.trim_start_matches('?').as_bytes())
        .find(|(k, _)| k == "tm_click_id")
        .and_then(|(_, v)| uuid::Uuid::parse_str(&v).ok())
}

/// What the audit of a decided install records.
pub struct AuditFacts<'a> {
    pub req: &'a InstallRequest,
    pub facts: &'a InstallFacts<'a>,
    pub cfg: &'a AttributionConfig,
    /// Whether an anonymous-IP database is configured.
    pub anonymous_db: bool,
    pub decision: &'a Decision,
    /// The device's previous counted install, outside the re-attribution window.
    pub previous: Option<&'a InstallRecord>,
    pub decided_at: i64,
}

/// The audit of a decision: signals, windows, rules, candidates and the choice, as stored with
/// the install and shown by `GET /v1/attribution/{event_id}`.
pub fn decision_audit(a: &AuditFacts<'_>) -> Value {
    let AuditFacts { req, facts, cfg, anonymous_db, decision, previous, decided_at } = *a;
    let f = &cfg.fraud;
    json!({
        "decided_at": decided_at,
        "install_ts": facts.install_ts,
        "install_begin_ts": req.install_begin_ts,
        "installed_at": req.installed_at,
        // The times the checks used (on the server's clock; none when implausible).
        "install_begin_ts_used": facts.install_begin_ts,
        "installed_at_used": facts.installed_at,
        "referrer_click_ts": req.referrer_click_ts,
        "platform": req.platform.as_str(),
        "signals": {
            "click_id": req.click_id,
            "referrer_click_id": facts.referrer_click_id.map(|u| u.to_string()),
            "device_ids": facts.device_ids.len(),
            "ip_known": facts.ip.is_some(),
            "anonymous_ip": facts.anonymous_ip,
            "consent": req.consent.map(|c| json!({"attribution": c.attribution, "do_not_sell": c.do_not_sell})),
            "fingerprinting": match fingerprint_refusal(facts, cfg) {
                None => "allowed",
                Some("consent_denied") => "not used: attribution consent denied",
                Some("fingerprinting_off") => "not used: fingerprint_threshold is above 1",
                Some("store_referrer") => "not used: the store's install referrer says where the install came from",
                Some("ios_tracking_not_authorized") =>
                    "not used: iOS without tracking permission (fingerprint_ios_without_att is off)",
                Some(_) => "not used: the install's address is unknown",
            },
        },
        "windows_ms": {
            "click": cfg.click_window,
            "fingerprint": cfg.fingerprint_window,
            "view_through": cfg.view_through_window,
            "reattribution": cfg.reattribution_window,
        },
        "fingerprint_threshold": cfg.fingerprint_threshold,
        "fingerprint_ios_without_att": cfg.fingerprint_ios_without_att,
        "fingerprint": decision.fingerprint,
        "network_priority": cfg.network_priority,
        "fraud_rules": {
            "click_injection": {"policy": f.click_injection, "min_click_to_install_ms": f.min_click_to_install},
            "click_flooding": {"policy": f.click_flooding, "max_clicks_per_ip_hour": f.max_clicks_per_ip_hour,
                "max_clicks_per_device_hour": f.max_clicks_per_device_hour},
            "install_burst": {"policy": f.install_burst, "factor": f.burst_factor, "min_installs": f.burst_min_installs,
                "baseline_hours": f.burst_baseline_hours},
            "emulator": {"policy": f.emulator},
            "anonymous_ip": {"policy": f.anonymous_ip, "database": anonymous_db},
        },
        "candidates": decision.candidates(),
        "omitted_candidates": decision.omitted_candidates,
        "rules_fired": decision.rules,
        "previous_install": previous.map(|p| json!({"event_id": p.event_id, "install_ts": p.install_ts,
            "outside_reattribution_window": true})),
        "choice": if decision.result.attributed {
            json!({"match_type": decision.result.match_type, "click_id": decision.result.click_id,
                "campaign_id": decision.result.campaign_id})
        } else if decision.result.fraud.rejected {
            json!("organic: rejected by fraud rules")
        } else if decision.fingerprint.as_ref().is_some_and(|f| f.verdict == "ambiguous") {
            json!("organic: ambiguous, campaigns on the same network share the weight and none is clearly the one")
        } else if decision.fingerprint.as_ref().is_some_and(|f| f.verdict == "below_threshold") {
            json!("organic: the best campaign's confidence is below the threshold")
        } else {
            json!("organic: no eligible touchpoint")
        },
    })
}
