//! Install attribution: one install decided (retry, reinstall or the waterfall), audited,
//! stored with its touchpoint, fraud alert and postbacks in one commit, published, counted.

use std::net::IpAddr;

use serde_json::{Value, json};
use trailmark_core::protocol::{self, AttributionResult, ConsentContext, InstallRequest};

use super::trace::store_span;
use super::{ServiceError, ServiceResult, Services, postbacks};
use crate::domain::attribution::matching::{Fingerprint, InstallFacts};
use crate::domain::conversions::consent_allows_postbacks;
use crate::domain::error::Refusal;
use crate::domain::install::{
    AuditFacts, check_kind, decision_audit, device_time, lower, referrer_click_id, same_device, validate,
};
use crate::domain::privacy::{event_hash, install_touch_id, suppression_hash};
use crate::domain::records::{
    DeviceKeys, FraudAlert, InstallLookup, InstallRecord, ReportQuery, ReportRows, Touchpoint,
};
use crate::domain::stream::install_record;

/// Decides an install of `app_id` (signed at `sent_at_secs` on the device's clock, from `ip`):
/// a retry gets the stored answer, a reinstall inside the re-attribution window keeps the
/// device's first attribution, anything else runs the waterfall. Stored with its audit,
/// touchpoint, fraud alert and postbacks in one commit, then published.
pub async fn install(
    svc: &Services,
    app_id: String,
    ip: Option<IpAddr>,
    sent_at_secs: i64,
    req: InstallRequest,
) -> ServiceResult<AttributionResult> {
    validate(&req)?;
    if let Some(app) = svc.config.apps.get(&app_id) {
        check_kind(app.kind, req.platform)?;
    }
    let cfg = &svc.config.attribution;
    let received_at = svc.config.clock.now();
    // Device times are moved onto the server's clock by the skew the signed timestamp header
    // shows (seconds; the signature check bounds it to 5 minutes), so click-to-install times
    // compare server time with server time. An install is never after its receipt.
    let skew = received_at - sent_at_secs.saturating_mul(1000);
    let device_time = |ms: i64, field: &str| device_time(ms, field, skew, received_at);
    let install_ts = device_time(req.timestamp.timestamp_millis(), "timestamp")?;
    // The Play client's times are 0 when it has none, and other stores' odd: an implausible one
    // is ignored, not refused (they only add fraud checks and the audit).
    let install_begin_ts = req.install_begin_ts.and_then(|t| device_time(t, "install_begin_ts").ok());
    // Preinstalled apps report 2009.
    let installed_at = req.installed_at.and_then(|t| device_time(t, "installed_at").ok());

    let event_id = req.event_id.to_string();
    // The consent the SDK had when it sent the request; none from senders that do not say.
    let sent_consent = req.consent;
    let consent = sent_consent.unwrap_or_default();
    svc.tracking.ready(svc).await?;

    // Advertising and vendor ids in their stored form (keyed hashes, docs/privacy.md): what
    // lookups, matching and suppressions compare. The raw ids are sealed with the record.
    let stored = |id: &Option<String>| lower(id).and_then(|d| svc.ids.device(&d));
    let keys = DeviceKeys {
        anonymous_id: req.anonymous_id.clone(),
        idfa: stored(&req.device.idfa),
        idfv: stored(&req.device.idfv),
        gaid: stored(&req.device.gaid),
        android_id: stored(&req.device.android_id),
    };
    let ids_enc = svc.ids.seal_ids(&[
        ("idfa", lower(&req.device.idfa).as_deref()),
        ("idfv", lower(&req.device.idfv).as_deref()),
        ("gaid", lower(&req.device.gaid).as_deref()),
        ("android_id", lower(&req.device.android_id).as_deref()),
    ]);
    // A deleted person's device (or a deleted install sent again) is answered as organic and
    // stored nowhere, attributed to nothing, posted back nowhere (docs/privacy.md).
    // The deletion screen and the install lookups are independent reads: asked at once.
    let (suppressed, lookup) = tokio::try_join!(suppressed(svc, &app_id, &event_id, &keys), async {
        svc.storage.install_lookup(app_id.clone(), event_id.clone(), keys.clone()).await.map_err(ServiceError::from)
    })?;
    if suppressed {
        metrics::counter!("trailmark_installs_suppressed_total", "app" => app_id.clone()).increment(1);
        // The same answer as any organic install: it must not tell who asked for deletion.
        return Ok(AttributionResult {
            reason: Some("no_click_in_window".into()),
            ..AttributionResult::organic(Default::default())
        });
    }
    let InstallLookup { existing: done, last_install: first } = lookup;
    // A test device (admin API) is attributed afresh on every install: its earlier installs
    // do not make this one a reinstall.
    let test_device = {
        let t = svc.tracking.lock()?;
        [&keys.idfa, &keys.idfv, &keys.gaid, &keys.android_id].into_iter().flatten().any(|d| t.test_devices.contains(d))
    };
    let first = first.filter(|_| !test_device);
    // A retry of an install already decided gets the same answer, if it comes from the same
    // device (an event id seen in a postback or log is no key to another device's answer).
    if let Some(done) = done {
        if !same_device(&done, &keys) {
            return Err(Refusal::conflict("event_id_conflict", "another device's install has this event id").into());
        }
        return Ok(done.result);
    }
    let mut record = InstallRecord {
        app_id: app_id.clone(),
        event_id: event_id.clone(),
        anonymous_id: req.anonymous_id.clone(),
        platform: req.platform.as_str().to_owned(),
        idfa: keys.idfa.clone(),
        idfv: keys.idfv.clone(),
        gaid: keys.gaid.clone(),
        android_id: keys.android_id.clone(),
        install_ts,
        received_at,
        kind: "install".into(),
        result: AttributionResult::organic(Default::default()),
        audit: Value::Null,
        ip_enc: ip.and_then(|ip| svc.ip_cipher.encrypt(ip)),
        ids_enc,
        rejected_credit: None,
    };

    if let Some(first) = &first
        && install_ts.saturating_sub(first.install_ts) <= cfg.reattribution_window
    {
        // A reinstall inside the re-attribution window of the device's last new install. Matched
        // by an advertising id alone, it is still not a new install, but the original answer
        // (click id, deep link) stays with the device that got it.
        record.kind = "reinstall".into();
        let same = same_device(first, &keys);
        record.result = if same {
            AttributionResult { reinstall: true, ..first.result.clone() }
        } else {
            AttributionResult {
                reinstall: true,
                reason: Some("reinstall".into()),
                ..AttributionResult::organic(Default::default())
            }
        };
        record.audit = json!({
            "decided_at": received_at,
            "install_ts": install_ts,
            "reinstall_of": first.event_id,
            "install_counted_ts": first.install_ts,
            "reattribution_window_ms": cfg.reattribution_window,
            "choice": if same {
                "the original attribution of the device's first install"
            } else {
                "a reinstall seen by advertising id only: the original attribution is not answered"
            },
        });
        metrics::counter!("trailmark_installs_total", "app" => app_id.clone(), "match_type" => "reinstall")
            .increment(1);
        return save(svc, record, None, None, sent_consent).await;
    }

    let referrer_click_id = req.install_referrer.as_deref().and_then(referrer_click_id);
    let click_id = req.click_id.as_deref().and_then(|c| uuid::Uuid::parse_str(c.trim()).ok());
    let device_ids: Vec<&str> =
        [&keys.idfa, &keys.gaid, &keys.android_id, &keys.idfv].into_iter().filter_map(|d| d.as_deref()).collect();
    let screen = req.device.screen.map(|s| format!("{}x{}", s.width, s.height));
    let anonymous_ip = ip.is_some_and(|ip| svc.geo.is_anonymous(ip));
    let facts = InstallFacts {
        app_id: &app_id,
        install_ts,
        received_at,
        install_begin_ts,
        installed_at,
        click_id,
        referrer_click_id,
        device_ids,
        ip,
        fingerprint: Fingerprint {
            os: req.device.os.as_deref().or(Some(match req.platform {
                protocol::Platform::Ios => "iOS",
                protocol::Platform::Android => "Android",
                protocol::Platform::Web => "",
            })),
            os_version: req.device.os_version.as_deref(),
            model: req.device.model.as_deref(),
            locale: req.device.locale.as_deref(),
            timezone: req.device.timezone.as_deref(),
            screen: screen.as_deref(),
        },
        anonymous_ip,
        attribution_denied: consent.attribution == Some(false),
        // The store said where the install came from (a Trailmark click found above, one expired
        // or unknown, or none): never fingerprinted.
        store_referrer: req.install_referrer.as_deref().is_some_and(|r| !r.trim().is_empty()),
        tracking_authorized: keys.idfa.is_some(),
    };
    let decision = svc.clicks.decide(svc, &facts).await?;
    record.result = decision.result.clone();
    if decision.result.fraud.rejected {
        // Not the click id: a deletion of this device removes the clicks its installs name, and
        // the click that would have won may be someone else's (a fingerprint candidate).
        record.rejected_credit = decision
            .winner
            .as_ref()
            .map(|(_, link)| [link.campaign_id.clone(), link.link_id.clone(), link.network.clone()]);
    }
    record.audit = decision_audit(&AuditFacts {
        req: &req,
        facts: &facts,
        cfg,
        anonymous_db: svc.config.geoip_anonymous.is_some(),
        decision: &decision,
        previous: first.as_ref(),
        decided_at: received_at,
    });
    if test_device {
        record.audit["test_device"] = json!(true);
    }
    for rule in &decision.rules {
        metrics::counter!("trailmark_fraud_rules_fired_total", "rule" => rule.rule, "policy" => rule.policy.as_str())
            .increment(1);
    }
    metrics::counter!("trailmark_installs_total", "app" => app_id.clone(), "match_type" => decision.result.match_type.as_str())
        .increment(1);
    svc.live.install(decision.result.attributed, decision.result.fraud.rejected);
    let touchpoint = match (&decision.winner, decision.result.attributed) {
        (Some((touch, link)), true) => Some(Touchpoint {
            app_id: app_id.clone(),
            anonymous_id: req.anonymous_id.clone(),
            ts: touch.ts,
            click_id: touch.click_id().to_string(),
            link_id: link.link_id.clone(),
            campaign_id: link.campaign_id.clone(),
            network: link.network.clone(),
            kind: if touch.kind == crate::domain::attribution::TouchKind::Impression { "impression" } else { "click" }
                .into(),
            source_event_id: event_id.clone(),
        }),
        _ => None,
    };
    let alert = decision.burst_alert.map(|a| {
        metrics::counter!("trailmark_fraud_alerts_total", "rule" => "install_burst").increment(1);
        svc.live.burst_alert();
        tracing::warn!(campaign = %a.campaign_id, installs = a.installs, baseline = a.baseline_per_hour, "install burst");
        FraudAlert {
            rule: "install_burst".into(),
            app_id: app_id.clone(),
            campaign_id: a.campaign_id.clone(),
            at: received_at,
            detail: serde_json::to_value(&a).unwrap_or_default(),
        }
    });
    let answer = save(svc, record, touchpoint, alert, sent_consent).await?;
    // Once stored (so a deletion of the person finds it), the install is noted on its address
    // for the fingerprint step's crowd count: at its receipt time (a device time may be days
    // old), and not when the person denied attribution.
    if !test_device && !facts.attribution_denied {
        let id = install_touch_id(&svc.config.audit_key, &app_id, &req.anonymous_id);
        svc.clicks.note_install(svc, &facts, id, received_at).await;
    }
    Ok(answer)
}

async fn save(
    svc: &Services,
    record: InstallRecord,
    touchpoint: Option<Touchpoint>,
    alert: Option<FraudAlert>,
    sent_consent: Option<ConsentContext>,
) -> ServiceResult<AttributionResult> {
    let (app_id, event_id) = (record.app_id.clone(), record.event_id.clone());
    let keys = DeviceKeys {
        anonymous_id: record.anonymous_id.clone(),
        idfa: record.idfa.clone(),
        idfv: record.idfv.clone(),
        gaid: record.gaid.clone(),
        android_id: record.android_id.clone(),
    };
    let result = record.result.clone();
    // Postbacks are stored in the install's own commit, so a crash cannot keep one and lose
    // the other.
    // Do-not-sell or attribution denied: attributed all the same, told to no ad network.
    let postbacks = if consent_allows_postbacks(&sent_consent.unwrap_or_default()) {
        postbacks::install(svc, &record).await
    } else {
        if record.result.attributed && record.result.network.is_some() {
            metrics::counter!("trailmark_postbacks_withheld_total", "reason" => "consent").increment(1);
        }
        Vec::new()
    };
    let published =
        svc.event_sink.as_ref().and_then(|_| install_record(&record, sent_consent, svc.config.stream.consent));
    if let Some(ids) = tracing::Instrument::instrument(
        svc.storage.save_install(record, touchpoint, alert, postbacks.clone()),
        store_span("install", 1),
    )
    .await?
    {
        postbacks::dispatch(svc, &postbacks, &ids);
        if let (Some(sink), Some(r)) = (&svc.event_sink, published) {
            sink.publish(vec![r]);
        }
        return Ok(result);
    }
    // The same install raced in twice; the first decision stands (for the same device only).
    match svc.storage.install_by_event(Some(app_id), event_id).await? {
        Some(done) if same_device(&done, &keys) => Ok(done.result),
        Some(_) => Err(Refusal::conflict("event_id_conflict", "another device's install has this event id").into()),
        None => Err(ServiceError::Internal("install vanished after a conflict".into())),
    }
}

/// The stored install with this event id (any app when `app_id` is `None`), as the audit shows
/// it.
pub async fn audit(svc: &Services, app_id: Option<String>, event_id: &str) -> ServiceResult<Value> {
    let install = svc
        .storage
        .install_by_event(app_id, event_id.to_ascii_lowercase())
        .await?
        .ok_or_else(|| crate::domain::error::Refusal::not_found("not_found", "no install with this event id"))?;
    Ok(audit_view(svc, &install))
}

/// An install as the audit endpoint and the attribution explorer show it.
fn audit_view(svc: &Services, install: &InstallRecord) -> Value {
    json!({
        "event_id": install.event_id,
        "app_id": install.app_id,
        "anonymous_id": install.anonymous_id,
        "platform": install.platform,
        // The advertising and vendor ids as sent (stored hashed, the raw values sealed).
        "device": svc.ids.open_ids(install.ids_enc.as_deref()),
        "kind": install.kind,
        "install_ts": install.install_ts,
        "received_at": install.received_at,
        "result": install.result,
        "audit": install.audit,
    })
}

/// Most conversion credit rows the explorer shows.
pub const MAX_EXPLORED_CREDITS: usize = 200;

/// The attribution explorer (`GET /v1/attribution/lookup`): the install found by its event id,
/// the device's anonymous id or an advertising/vendor id (its last first install), with its
/// decision audit; and the conversion credit rows of the same event (a conversion's event id)
/// or of the install's device, newest first.
pub async fn explore(svc: &Services, app_id: &str, by: &str, value: &str) -> ServiceResult<Value> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > 200 {
        return Err(Refusal::invalid("invalid_parameter", "the value looked up is 1 to 200 characters").into());
    }
    let (install, credits_of) = match by {
        "event_id" => {
            let event_id = value.to_ascii_lowercase();
            let install = svc.storage.install_by_event(Some(app_id.to_owned()), event_id.clone()).await?;
            let credits = match &install {
                Some(i) => (None, Some(i.anonymous_id.clone())),
                None => (Some(event_id), None),
            };
            (install, credits)
        }
        "anonymous_id" => {
            let keys = DeviceKeys { anonymous_id: value.to_owned(), ..Default::default() };
            (svc.storage.last_install(app_id.to_owned(), keys).await?, (None, Some(value.to_owned())))
        }
        "device_id" => {
            let Some(stored) = svc.ids.device(value) else {
                return Err(Refusal::invalid("invalid_parameter", "this device id is empty or all zeros").into());
            };
            let keys = DeviceKeys {
                // No anonymous id is empty: the lookup goes by the device ids alone.
                anonymous_id: String::new(),
                idfa: Some(stored.clone()),
                idfv: Some(stored.clone()),
                gaid: Some(stored.clone()),
                android_id: Some(stored),
            };
            let install = svc.storage.last_install(app_id.to_owned(), keys).await?;
            let anonymous_id = install.as_ref().map(|i| i.anonymous_id.clone());
            (install, (None, anonymous_id))
        }
        _ => {
            return Err(Refusal::invalid("invalid_parameter", "look up by event_id, anonymous_id or device_id").into());
        }
    };
    let credits = match credits_of {
        (None, None) => Vec::new(),
        (event_id, anonymous_id) => {
            let query =
                ReportQuery::Credits { app_id: app_id.to_owned(), event_id, anonymous_id, limit: MAX_EXPLORED_CREDITS };
            match svc.storage.report(query).await? {
                ReportRows::Credits(rows) => rows,
                _ => Vec::new(),
            }
        }
    };
    let credits: Vec<Value> = credits
        .iter()
        .map(|c| {
            json!({
                "event_id": c.event_id, "event_type": c.event_type, "ts": c.ts, "model": c.model,
                "click_id": c.click_id, "link_id": c.link_id, "campaign_id": c.campaign_id, "network": c.network,
                "touch_ts": c.touch_ts, "credit": c.credit, "revenue": c.revenue, "currency": c.currency,
            })
        })
        .collect();
    Ok(json!({
        "app_id": app_id, "by": by, "value": value,
        "install": install.as_ref().map(|i| audit_view(svc, i)),
        "credits": credits,
    }))
}

/// Whether the install's event id is tombstoned or one of its identifiers suppressed.
async fn suppressed(svc: &Services, app_id: &str, event_id: &str, keys: &DeviceKeys) -> ServiceResult<bool> {
    let key = &svc.config.audit_key;
    let mut ids = vec![suppression_hash(key, "anonymous_id", app_id, &keys.anonymous_id)];
    for device in [&keys.idfa, &keys.idfv, &keys.gaid, &keys.android_id].into_iter().flatten() {
        ids.push(suppression_hash(key, "device_id", app_id, device));
    }
    let found = svc.storage.screen(app_id.to_owned(), vec![event_hash(key, app_id, event_id)], ids).await?;
    Ok(!found.events.is_empty() || !found.ids.is_empty())
}

/// A test device as the admin API lists it: its id as given (or its stored form when it does
/// not open), its label, when it was added.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TestDeviceView {
    pub device_id: String,
    pub label: String,
    pub created_at: i64,
}

/// Adds (or renames) a test device by its advertising or vendor id; `true` when it is new.
/// Installs from it are attributed afresh on this instance at once, on the others within the
/// link reload interval.
pub async fn add_test_device(svc: &Services, raw: &str, label: String) -> ServiceResult<bool> {
    let stored = svc
        .ids
        .device(raw)
        .ok_or_else(|| Refusal::invalid("invalid_body", "device_id is a placeholder, not an identifier"))?;
    svc.tracking.ready(svc).await?;
    let device = crate::domain::records::TestDevice {
        device_id: stored.clone(),
        label,
        device_enc: svc.ids.seal_ids(&[("device_id", Some(&crate::domain::records::device_id_form(raw)))]),
        created_at: svc.config.clock.now(),
    };
    let new = svc.storage.save_test_device(device).await?;
    svc.tracking.lock()?.test_devices.insert(stored);
    Ok(new)
}

/// Removes a test device; `true` when there was one.
pub async fn remove_test_device(svc: &Services, raw: &str) -> ServiceResult<bool> {
    let Some(stored) = svc.ids.device(raw) else { return Ok(false) };
    svc.tracking.ready(svc).await?;
    let removed = svc.storage.remove_test_device(stored.clone()).await?;
    svc.tracking.lock()?.test_devices.remove(&stored);
    Ok(removed)
}

/// Every test device, oldest first.
pub async fn test_devices(svc: &Services) -> ServiceResult<Vec<TestDeviceView>> {
    Ok(svc
        .storage
        .test_devices()
        .await?
        .into_iter()
        .map(|d| TestDeviceView {
            device_id: svc
                .ids
                .open_ids(d.device_enc.as_deref())
                .get("device_id")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or(d.device_id),
            label: d.label,
            created_at: d.created_at,
        })
        .collect())
}
