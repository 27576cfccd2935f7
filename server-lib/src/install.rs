//! `POST /v1/install` (install attribution) and `GET /v1/attribution/{event_id}` (its audit).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use trailmark_core::protocol::{self, AttributionResult, InstallRequest};

use crate::clickcache::{CandidateQuery, ClickCache};
use crate::domain::attribution::matching::{Fingerprint, InstallFacts, attribute};
use crate::domain::attribution::{DAY, TouchIndex};
use crate::error::ApiError;
use crate::ingest;
use crate::links::{parse_as, storage_error};
use crate::storage::{DeviceKeys, FraudAlert, InstallRecord, Touchpoint};
use crate::tracking::TrackState;
use crate::{AppState, admin_auth};

/// Largest install body.
const MAX_INSTALL_BODY: usize = 16 * 1024;

pub async fn handle(State(state): State<Arc<AppState>>, request: Request) -> Response {
    use tracing::Instrument;
    let started = Instant::now();
    let span = crate::trace::request_span("install", request.headers());
    let result = install(&state, request).instrument(span).await;
    ingest::measured("install", started, result)
}

fn check_field(name: &str, value: Option<&str>, max: usize) -> Result<(), ApiError> {
    match value {
        Some(v) if v.is_empty() || v.chars().count() > max || v.chars().any(char::is_control) => Err(
            ApiError::bad_request("invalid_field", format!("{name} must be 1 to {max} characters without controls")),
        ),
        _ => Ok(()),
    }
}

fn validate(req: &InstallRequest) -> Result<(), ApiError> {
    protocol::validate_id("anonymous_id", &req.anonymous_id)
        .map_err(|e| ApiError::bad_request("invalid_field", e.to_string()))?;
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

fn lower(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty() && !s.chars().all(|c| c == '0' || c == '-'))
}

async fn install(state: &AppState, request: Request) -> Result<AttributionResult, ApiError> {
    let (parts, body) = request.into_parts();
    let signed = ingest::read_signed(state, &parts, body, MAX_INSTALL_BODY, true).await?;
    let req: InstallRequest = parse_as(&signed.body)?;
    validate(&req)?;
    let app_id = signed.app_id;
    let cfg = &state.config.attribution;
    let received_at = state.config.clock.now();
    // Device times are moved onto the server's clock by the skew the signed timestamp header
    // shows (seconds; the signature check bounds it to 5 minutes), so click-to-install times
    // compare server time with server time. An install is never after its receipt.
    let skew = received_at - signed.sent_at_secs.saturating_mul(1000);
    let device_time = |ms: i64, field: &str| -> Result<i64, ApiError> {
        const EARLIEST: i64 = 1_262_304_000_000; // 2010-01-01
        if !(EARLIEST..=received_at.saturating_add(DAY)).contains(&ms) {
            return Err(ApiError::bad_request("invalid_field", format!("{field} is not a plausible Unix time in ms")));
        }
        Ok(ms.saturating_add(skew).min(received_at))
    };
    let install_ts = device_time(req.timestamp.timestamp_millis(), "timestamp")?;
    let install_begin_ts = req.install_begin_ts.map(|t| device_time(t, "install_begin_ts")).transpose()?;
    if let Some(t) = req.referrer_click_ts {
        device_time(t, "referrer_click_ts")?;
    }
    let event_id = req.event_id.to_string();
    state.tracking.ready(state).await?;

    let keys = DeviceKeys {
        anonymous_id: req.anonymous_id.clone(),
        idfa: lower(&req.device.idfa),
        idfv: lower(&req.device.idfv),
        gaid: lower(&req.device.gaid),
        android_id: lower(&req.device.android_id),
    };
    let crate::storage::InstallLookup { existing: done, last_install: first } =
        state.storage.install_lookup(app_id.clone(), event_id.clone(), keys.clone()).await.map_err(storage_error)?;
    // A retry of an install already decided gets the same answer.
    if let Some(done) = done {
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
        ip_enc: signed.ip.and_then(|ip| state.ip_cipher.encrypt(ip)),
    };

    if let Some(first) = &first
        && install_ts.saturating_sub(first.install_ts) <= cfg.reattribution_window
    {
        // A reinstall inside the re-attribution window of the device's last new install.
        record.kind = "reinstall".into();
        record.result = AttributionResult { reinstall: true, ..first.result.clone() };
        record.audit = json!({
            "decided_at": received_at,
            "install_ts": install_ts,
            "reinstall_of": first.event_id,
            "install_counted_ts": first.install_ts,
            "reattribution_window_ms": cfg.reattribution_window,
            "choice": "the original attribution of the device's first install",
        });
        metrics::counter!("trailmark_installs_total", "app" => app_id.clone(), "match_type" => "reinstall")
            .increment(1);
        return save(state, record, None, None).await;
    }

    let referrer_click_id = req.install_referrer.as_deref().and_then(|r| {
        url::form_urlencoded::parse(r.trim_start_matches('?').as_bytes())
            .find(|(k, _)| k == "tm_click_id")
            .and_then(|(_, v)| uuid::Uuid::parse_str(&v).ok())
    });
    let click_id = req.click_id.as_deref().and_then(|c| uuid::Uuid::parse_str(c.trim()).ok());
    let device_ids: Vec<&str> =
        [&keys.idfa, &keys.gaid, &keys.android_id, &keys.idfv].into_iter().filter_map(|d| d.as_deref()).collect();
    let screen = req.device.screen.map(|s| format!("{}x{}", s.width, s.height));
    let anonymous_ip = signed.ip.is_some_and(|ip| state.geo.is_anonymous(ip));
    let facts = InstallFacts {
        app_id: &app_id,
        install_ts,
        received_at,
        install_begin_ts,
        click_id,
        referrer_click_id,
        device_ids,
        ip: signed.ip,
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
    };
    let decision = match &state.click_cache {
        None => {
            let mut guard = state.tracking.lock()?;
            let TrackState { index, infos, burst, .. } = &mut *guard;
            attribute(&facts, index, infos, cfg, burst)
        }
        Some(cache) => shared_decision(state, cache.as_ref(), &facts).await?,
    };
    let f = &cfg.fraud;
    record.result = decision.result.clone();
    record.audit = json!({
        "decided_at": received_at,
        "install_ts": install_ts,
        "install_begin_ts": req.install_begin_ts,
        "referrer_click_ts": req.referrer_click_ts,
        "platform": req.platform.as_str(),
        "signals": {
            "click_id": req.click_id,
            "referrer_click_id": referrer_click_id.map(|u| u.to_string()),
            "device_ids": facts.device_ids.len(),
            "ip_known": signed.ip.is_some(),
            "anonymous_ip": anonymous_ip,
        },
        "windows_ms": {
            "click": cfg.click_window,
            "fingerprint": cfg.fingerprint_window,
            "view_through": cfg.view_through_window,
            "reattribution": cfg.reattribution_window,
        },
        "fingerprint_threshold": cfg.fingerprint_threshold,
        "network_priority": cfg.network_priority,
        "fraud_rules": {
            "click_injection": {"policy": f.click_injection, "min_click_to_install_ms": f.min_click_to_install},
            "click_flooding": {"policy": f.click_flooding, "max_clicks_per_ip_hour": f.max_clicks_per_ip_hour,
                "max_clicks_per_device_hour": f.max_clicks_per_device_hour},
            "install_burst": {"policy": f.install_burst, "factor": f.burst_factor, "min_installs": f.burst_min_installs,
                "baseline_hours": f.burst_baseline_hours},
            "emulator": {"policy": f.emulator},
            "anonymous_ip": {"policy": f.anonymous_ip, "database": state.config.geoip_anonymous.is_some()},
        },
        "candidates": decision.candidates(),
        "omitted_candidates": decision.omitted_candidates,
        "rules_fired": decision.rules,
        "previous_install": first.as_ref().map(|p| json!({"event_id": p.event_id, "install_ts": p.install_ts,
            "outside_reattribution_window": true})),
        "choice": if decision.result.attributed {
            json!({"match_type": decision.result.match_type, "click_id": decision.result.click_id,
                "campaign_id": decision.result.campaign_id})
        } else if decision.result.fraud.rejected {
            json!("organic: rejected by fraud rules")
        } else {
            json!("organic: no eligible touchpoint")
        },
    });
    for rule in &decision.rules {
        metrics::counter!("trailmark_fraud_rules_fired_total", "rule" => rule.rule, "policy" => rule.policy.as_str())
            .increment(1);
    }
    metrics::counter!("trailmark_installs_total", "app" => app_id.clone(), "match_type" => decision.result.match_type.as_str())
        .increment(1);
    state.dashboard.live.install(decision.result.attributed, decision.result.fraud.rejected);
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
        state.dashboard.live.burst_alert();
        tracing::warn!(campaign = %a.campaign_id, installs = a.installs, baseline = a.baseline_per_hour, "install burst");
        FraudAlert {
            rule: "install_burst".into(),
            app_id: app_id.clone(),
            campaign_id: a.campaign_id.clone(),
            at: received_at,
            detail: serde_json::to_value(&a).unwrap_or_default(),
        }
    });
    save(state, record, touchpoint, alert).await
}

/// The waterfall over the touches of the shared click cache (every instance's clicks): the
/// candidates are fetched, indexed in a small index with this instance's hashes, and decided
/// exactly as the local index would be.
async fn shared_decision(
    state: &AppState,
    cache: &dyn ClickCache,
    facts: &InstallFacts<'_>,
) -> Result<crate::domain::attribution::Decision, ApiError> {
    let cfg = &state.config.attribution;
    let at = facts.install_ts;
    let query = CandidateQuery {
        click_ids: [facts.click_id, facts.referrer_click_id].into_iter().flatten().map(|u| u.to_string()).collect(),
        device_ids: facts.device_ids.iter().map(|d| d.to_string()).collect(),
        device_since: at.saturating_sub(cfg.click_window.max(cfg.view_through_window)),
        ip: facts.ip,
        network_since: at.saturating_sub(cfg.fingerprint_window),
        limit: cfg.fingerprint_max_candidates,
    };
    let mut touches = cache.candidates(query).await.map_err(|e| {
        tracing::warn!(error = %e, "click cache unavailable for an install");
        ApiError::unavailable(1, "the click cache is unavailable; retry shortly")
    })?;
    touches.sort_by(|a, b| a.ts.cmp(&b.ts).then_with(|| a.click_id.cmp(&b.click_id)));
    let unknown_link = {
        let guard = state.tracking.lock()?;
        touches.iter().any(|t| !guard.by_id.contains_key(&t.link_id))
    };
    if unknown_link {
        // A link created through another instance.
        state.tracking.reload_after_miss(state).await;
    }
    let mut guard = state.tracking.lock()?;
    let mut index = TouchIndex::with_hasher(cfg.index_ttl(), guard.index.hasher.clone(), touches.len());
    for t in &touches {
        let record = t.to_record();
        let ip = record.ip_enc.as_deref().and_then(|b| state.ip_cipher.decrypt(b));
        if let Some(touch) = guard.touch_of(&record, ip) {
            index.push(touch);
        }
    }
    let TrackState { infos, burst, .. } = &mut *guard;
    Ok(attribute(facts, &index, infos, cfg, burst))
}

async fn save(
    state: &AppState,
    record: InstallRecord,
    touchpoint: Option<Touchpoint>,
    alert: Option<FraudAlert>,
) -> Result<AttributionResult, ApiError> {
    let (app_id, event_id) = (record.app_id.clone(), record.event_id.clone());
    let result = record.result.clone();
    // Postbacks are stored in the install's own commit, so a crash cannot keep one and lose
    // the other.
    let postbacks = crate::postbacks::install(state, &record).await;
    let published = state.event_sink.as_ref().map(|_| crate::sink::install_record(&record));
    if let Some(ids) = tracing::Instrument::instrument(
        state.storage.save_install(record, touchpoint, alert, postbacks.clone()),
        crate::trace::store_span("install", 1),
    )
    .await
    .map_err(storage_error)?
    {
        crate::postbacks::dispatch(state, &postbacks, &ids);
        if let (Some(sink), Some(r)) = (&state.event_sink, published) {
            sink.publish(vec![r]);
        }
        return Ok(result);
    }
    // The same install raced in twice; the first decision stands.
    match state.storage.install_by_event(Some(app_id), event_id).await.map_err(storage_error)? {
        Some(done) => Ok(done.result),
        None => Err(ApiError::internal("install vanished after a conflict")),
    }
}

/// `GET /v1/attribution/{event_id}[?app=…]` (admin): the decision and its explanation.
pub async fn audit(
    State(state): State<Arc<AppState>>,
    Path(event_id): Path<String>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response {
    let result = async {
        admin_auth(&state, &headers)?;
        let app = url::form_urlencoded::parse(uri.query().unwrap_or_default().as_bytes())
            .find(|(k, _)| k == "app")
            .map(|(_, v)| v.into_owned());
        let install = state
            .storage
            .install_by_event(app, event_id.to_ascii_lowercase())
            .await
            .map_err(storage_error)?
            .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_found", "no install with this event id"))?;
        Ok::<_, ApiError>(json!({
            "event_id": install.event_id,
            "app_id": install.app_id,
            "anonymous_id": install.anonymous_id,
            "platform": install.platform,
            "kind": install.kind,
            "install_ts": install.install_ts,
            "received_at": install.received_at,
            "result": install.result,
            "audit": install.audit,
        }))
    }
    .await;
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(e) => e.into_response(),
    }
}
