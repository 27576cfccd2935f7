//! The Segment-compatible API (docs/segment.md): a body's messages translated into Trailmark
//! events and ingested as an SDK's are (validation, dedup, enrichment, storage, the stream,
//! conversions), marked as sent with a write key. Each refused message is answered with its
//! reason; the others are kept.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::ingest::{Auth, ingest};
use super::{ServiceResult, Services};
use crate::domain::config::AppKind;
use crate::domain::segment::{Route, messages, translate};

/// A message refused, by its place in the request.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MessageRejection {
    pub index: usize,
    #[serde(rename = "messageId", skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub reason: String,
}

/// What became of a request's messages.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Answer {
    /// Messages in the request.
    pub messages: usize,
    pub accepted: u64,
    pub duplicates: u64,
    /// Kept out by a deletion (docs/privacy.md), as for an SDK's events.
    pub suppressed: u64,
    pub rejected: Vec<MessageRejection>,
}

/// Ingests a body that arrived on `route` with a write key of `app_id`, from `ip` with
/// `user_agent`, in one ingest call. A `server` app's messages are enriched with the address
/// and user agent their `context` names (a backend reports on other people's behalf; none
/// named: none used, not the backend's own); other apps' with the request's own, as an SDK's.
pub async fn receive(
    svc: &Services,
    app_id: &str,
    route: Route,
    ip: Option<IpAddr>,
    user_agent: Option<&str>,
    body: Value,
) -> ServiceResult<Answer> {
    let received_at = svc.config.clock.now();
    let batch = messages(route, body)?;
    let trusted = svc.config.apps.get(app_id).is_some_and(|a| a.kind == AppKind::Server);
    let mut answer = Answer { messages: batch.messages.len(), ..Answer::default() };
    let message_ids: Vec<Option<String>> = batch.messages.iter().map(message_id).collect();
    let mut indices = Vec::with_capacity(batch.messages.len());
    let mut events = Vec::with_capacity(batch.messages.len());
    let mut clients = Vec::new();
    let mut traits_dropped = 0;
    for (index, message) in batch.messages.into_iter().enumerate() {
        let translated = translate(
            app_id,
            route,
            message,
            batch.sent_at.as_deref(),
            received_at,
            |u| svc.ids.user(u),
            uuid::Uuid::new_v4,
        );
        match translated {
            Ok(t) => {
                traits_dropped += t.traits_dropped;
                if trusted {
                    clients.push((t.origin.ip.as_deref().and_then(|i| i.trim().parse().ok()), t.origin.user_agent));
                }
                indices.push(index);
                events.push(t.event);
            }
            Err(reason) => {
                answer.rejected.push(MessageRejection { index, message_id: message_ids[index].clone(), reason })
            }
        }
    }
    if traits_dropped > 0 {
        metrics::counter!("trailmark_segment_traits_dropped_total", "app" => app_id.to_owned())
            .increment(u64::from(traits_dropped));
    }
    if !answer.rejected.is_empty() {
        metrics::counter!("trailmark_events_rejected_total", "app" => app_id.to_owned())
            .increment(answer.rejected.len() as u64);
    }
    metrics::counter!("trailmark_segment_messages_total", "app" => app_id.to_owned()).increment(answer.messages as u64);
    if events.is_empty() {
        return Ok(answer);
    }
    let envelope = json!({ "batch": events });
    let r = ingest(svc, app_id.to_owned(), Auth::WriteKey, ip, user_agent, envelope, &clients).await?;
    answer.accepted = r.accepted;
    answer.duplicates = r.duplicates;
    answer.suppressed = r.suppressed;
    for rejection in r.rejected {
        let index = indices.get(rejection.index).copied().unwrap_or(rejection.index);
        let message_id = message_ids.get(index).cloned().flatten();
        answer.rejected.push(MessageRejection { index, message_id, reason: rejection.reason });
    }
    answer.rejected.sort_by_key(|r| r.index);
    Ok(answer)
}

/// A message's `messageId` as text (a string, or a number as some clients send it).
fn message_id(m: &Value) -> Option<String> {
    match m.get("messageId")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}
