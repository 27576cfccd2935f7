//! Ingest: a signed request's events validated one by one, normalised, enriched, stored
//! (deduplicated by event id), published to the stream once durable, and followed up
//! (touchpoints, re-engagements, conversion credit).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use serde_json::Value;
use trailmark_core::protocol::{DropReport, IngestResponse};

use super::trace::store_span;
use super::{ServiceError, ServiceResult, Services, conversions};
use crate::domain::conversions::Followup;
use crate::domain::identity::{advertising_id_update, alias_link};
use crate::domain::ingest::{Client, IngestRules, Prepared, Sender, prepare};
use crate::domain::privacy::{event_hash, suppression_hash};
use crate::domain::records::{AdIdUpdate, NewEvent};
use crate::domain::stream::event_record;
use crate::storage::StorageError;

/// How a request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Signed with the app's secret (an SDK).
    Signed,
    /// Signed with the app's server secret (its owner's backend).
    ServerSigned,
    /// A write key of the Segment-compatible API: not signed at all.
    WriteKey,
}

/// Ingests a parsed body (one event or a batch envelope) from `app_id`: what was accepted,
/// what was a duplicate, and which events were rejected and why. The request is refused as a
/// whole only when the body itself is wrong (not an event or envelope, too many events). Each
/// event is enriched with the request's client (`ip`, `user_agent`), or with its own by index
/// when `clients` has one: a backend's request about several people.
pub async fn ingest(
    svc: &Services,
    app_id: String,
    auth: Auth,
    ip: Option<IpAddr>,
    user_agent: Option<&str>,
    value: Value,
    clients: &[(Option<IpAddr>, Option<String>)],
) -> ServiceResult<IngestResponse> {
    let received_at = svc.config.clock.now();
    // Each distinct client is parsed, located and sealed once.
    let mut seen: HashMap<&(Option<IpAddr>, Option<String>), Client> = HashMap::new();
    let clients: Vec<Client> = clients
        .iter()
        .map(|key| {
            seen.entry(key)
                .or_insert_with(|| Client {
                    ua: key.1.as_deref().map(|ua| svc.agents.parse(ua)).unwrap_or_default(),
                    geo: key.0.map(|ip| svc.geo.lookup(ip)).unwrap_or_default(),
                    ip_enc: key.0.and_then(|ip| svc.ip_cipher.encrypt(ip)),
                })
                .clone()
        })
        .collect();
    // Whether this request's revenue may go into network postbacks (docs/protocol.md, "Trust
    // model"): a server secret's, or as the app's kind says.
    let revenue_trusted =
        auth == Auth::ServerSigned || svc.config.apps.get(&app_id).is_some_and(|a| a.revenue_in_postbacks());
    // Per request, not per event: the same client sent them all.
    let ua = user_agent.map(|ua| svc.agents.parse(ua)).unwrap_or_default();
    let geo = ip.map(|ip| svc.geo.lookup(ip)).unwrap_or_default();
    let rules = IngestRules {
        validators: &svc.validators,
        conversion_events: &svc.config.attribution.conversion_events,
        max_revenue: svc.config.limits.max_revenue,
    };
    let sender = Sender {
        app_id: &app_id,
        revenue_trusted,
        received_at,
        ua: &ua,
        geo: &geo,
        ip_enc: ip.and_then(|ip| svc.ip_cipher.encrypt(ip)),
        unsigned: auth == Auth::WriteKey,
        clients: &clients,
    };
    let Prepared { mut fresh, mut followups, rejected, dropped, clamped } = prepare(&rules, &sender, value)?;
    // From here on user and device ids are in their stored (hashed) form, the raw values
    // sealed with the event (docs/privacy.md, "Identifiers at rest").
    // A batch is usually one device's: its ids are hashed and sealed once, and the rows share
    // that ciphertext (it tells no more than their equal hashes already do).
    let mut done: HashMap<(Option<String>, Option<String>), NewEvent> = HashMap::new();
    for e in &mut fresh {
        if e.user_id.is_none() && e.device_id.is_none() {
            continue;
        }
        let key = (e.user_id.take(), e.device_id.take());
        let protected = done.entry(key.clone()).or_insert_with(|| {
            let mut p = NewEvent { user_id: key.0, device_id: key.1, ..NewEvent::default() };
            svc.ids.protect_event(&mut p);
            p
        });
        e.user_id.clone_from(&protected.user_id);
        e.device_id.clone_from(&protected.device_id);
        e.ids_enc.clone_from(&protected.ids_enc);
    }
    for f in &mut followups {
        f.user_id = f.user_id.as_deref().map(|u| svc.ids.user(u));
    }
    let suppressed = screen(svc, &app_id, &mut fresh, &mut followups).await?;
    // `alias` events link their previous user id to the new one (the identity map); the
    // previous id is stored in its hashed form like every user id.
    let links: Vec<_> = fresh.iter_mut().filter_map(|e| alias_link(e, |raw| svc.ids.user(raw))).collect();
    // A late advertising id (after an ATT grant) goes to the device's install, hashed.
    let ad_ids: Vec<_> = fresh.iter_mut().filter_map(|e| advertising_id_update(e, |raw| svc.ids.device(raw))).collect();
    record_sdk_drops(&app_id, &dropped);
    if clamped > 0 {
        metrics::counter!("trailmark_events_time_clamped_total", "app" => app_id.clone()).increment(clamped as u64);
    }
    let mut response = IngestResponse { rejected, suppressed, ..IngestResponse::default() };
    if suppressed > 0 {
        metrics::counter!("trailmark_events_suppressed_total", "app" => app_id.clone()).increment(suppressed);
    }
    let received = fresh.len() + response.rejected.len() + suppressed as usize;
    metrics::counter!("trailmark_events_received_total", "app" => app_id.clone()).increment(received as u64);
    if !response.rejected.is_empty() {
        metrics::counter!("trailmark_events_rejected_total", "app" => app_id.clone())
            .increment(response.rejected.len() as u64);
    }
    if !fresh.is_empty() {
        let policy = svc.config.stream.consent;
        let records: Option<Vec<_>> =
            svc.event_sink.as_ref().map(|_| fresh.iter().map(|e| event_record(e, policy, &svc.ids)).collect());
        let span = store_span("events", fresh.len());
        let outcome = match tracing::Instrument::instrument(svc.storage.insert(fresh), span).await {
            Ok(outcome) => outcome,
            Err(StorageError::Busy) => {
                metrics::counter!("trailmark_writer_busy_total").increment(1);
                return Err(ServiceError::Unavailable("the server is catching up; retry shortly".into()));
            }
            Err(e) => return Err(e.into()),
        };
        response.accepted = outcome.iter().filter(|new| **new).count() as u64;
        response.duplicates = outcome.len() as u64 - response.accepted;
        // Published once durable, and only the first time (a duplicate was published before).
        if let (Some(sink), Some(records)) = (&svc.event_sink, records) {
            sink.publish(records.into_iter().zip(&outcome).filter(|(_, new)| **new).filter_map(|(r, _)| r).collect());
        }
        // Duplicates too: a retried request finishes what a crash interrupted (both are
        // idempotent).
        // The events are stored: a failure here must not fail the request (nor skip the
        // follow-ups below); the link is lost then, logged and counted.
        if !links.is_empty() {
            match svc.storage.link_users(links).await {
                Ok(added) => {
                    metrics::counter!("trailmark_identity_links_total", "app" => app_id.clone()).increment(added);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "identity links not stored");
                    metrics::counter!("trailmark_identity_link_errors_total").increment(1);
                }
            }
        }
        attach_advertising_ids(svc, &app_id, ad_ids).await;
        conversions::process(svc, &app_id, followups).await;
    }
    svc.live.events(response.accepted, response.rejected.len() as u64);
    metrics::counter!("trailmark_events_accepted_total", "app" => app_id.clone()).increment(response.accepted);
    metrics::counter!("trailmark_events_duplicate_total", "app" => app_id.clone()).increment(response.duplicates);
    Ok(response)
}

/// Attaches late advertising ids to their devices' installs: the last per device and kind, and
/// none that a deletion suppressed (as an install carrying it would be refused). A failure is
/// logged and counted; the events are stored already.
async fn attach_advertising_ids(svc: &Services, app_id: &str, updates: Vec<AdIdUpdate>) {
    if updates.is_empty() {
        return;
    }
    let mut last: HashMap<(String, &'static str), AdIdUpdate> = HashMap::new();
    for u in updates {
        last.insert((u.anonymous_id.clone(), u.column), u);
    }
    let updates: Vec<AdIdUpdate> = last.into_values().collect();
    let key = &svc.config.audit_key;
    let hashes: Vec<String> = updates.iter().map(|u| suppression_hash(key, "device_id", app_id, &u.value)).collect();
    let suppressed = match svc.storage.screen(app_id.to_owned(), Vec::new(), hashes.clone()).await {
        Ok(found) => found.ids,
        Err(e) => {
            tracing::warn!(error = %e, "advertising ids not screened; not attached");
            metrics::counter!("trailmark_advertising_id_errors_total").increment(1);
            return;
        }
    };
    for (u, hash) in updates.into_iter().zip(hashes) {
        if suppressed.contains(&hash) {
            metrics::counter!("trailmark_advertising_ids_suppressed_total").increment(1);
            continue;
        }
        if let Err(e) = svc.storage.attach_advertising_id(u).await {
            tracing::warn!(error = %e, "advertising id not attached to the install");
            metrics::counter!("trailmark_advertising_id_errors_total").increment(1);
        }
    }
}

fn record_sdk_drops(app: &str, d: &DropReport) {
    for (reason, n) in [
        ("queue_full", d.queue_full),
        ("expired", d.expired),
        ("pre_consent_full", d.pre_consent_full),
        ("invalid", d.invalid),
        ("backpressure", d.backpressure),
    ] {
        if n > 0 {
            metrics::counter!("trailmark_sdk_dropped_events_total", "app" => app.to_owned(), "reason" => reason)
                .increment(n);
        }
    }
}

/// Takes out the events a deletion keeps out (docs/privacy.md): those whose id is tombstoned
/// and those that carry a suppressed identifier, with their follow-ups. Returns how many.
async fn screen(
    svc: &Services,
    app_id: &str,
    fresh: &mut Vec<NewEvent>,
    followups: &mut Vec<Followup>,
) -> ServiceResult<u64> {
    if fresh.is_empty() {
        return Ok(0);
    }
    let key = &svc.config.audit_key;
    let event_hashes: Vec<String> = fresh.iter().map(|e| event_hash(key, app_id, &e.event_id)).collect();
    // A request's events usually share their identifiers: each is hashed once.
    let mut id_hashes: HashMap<(&str, &str), String> = HashMap::new();
    for e in fresh.iter() {
        for (kind, value) in event_ids(e) {
            id_hashes.entry((kind, value)).or_insert_with(|| suppression_hash(key, kind, app_id, value));
        }
    }
    let found =
        svc.storage.screen(app_id.to_owned(), event_hashes.clone(), id_hashes.values().cloned().collect()).await?;
    if found.events.is_empty() && found.ids.is_empty() {
        return Ok(0);
    }
    let tombstoned: HashSet<&str> = found.events.iter().map(String::as_str).collect();
    let suppressed: HashSet<&str> = found.ids.iter().map(String::as_str).collect();
    let keep: Vec<bool> = fresh
        .iter()
        .zip(&event_hashes)
        .map(|(e, h)| {
            !tombstoned.contains(h.as_str())
                && !event_ids(e).any(|id| id_hashes.get(&id).is_some_and(|h| suppressed.contains(h.as_str())))
        })
        .collect();
    let dropped = keep.iter().filter(|k| !**k).count() as u64;
    let mut gone = HashSet::new();
    let mut keep = keep.into_iter();
    fresh.retain(|e| {
        let kept = keep.next().unwrap_or(true);
        if !kept {
            gone.insert(e.event_id.clone());
        }
        kept
    });
    followups.retain(|f| !gone.contains(&f.event_id));
    Ok(dropped)
}

/// The identifiers of a stored event, by kind.
fn event_ids(e: &NewEvent) -> impl Iterator<Item = (&'static str, &str)> {
    [
        ("anonymous_id", Some(e.anonymous_id.as_str())),
        ("user_id", e.user_id.as_deref()),
        ("device_id", e.device_id.as_deref()),
    ]
    .into_iter()
    .filter_map(|(kind, v)| v.map(|v| (kind, v)))
}
