//! The Segment-compatible API (docs/segment.md): a body's messages translated into Trailmark
//! events and ingested as an SDK's are (validation, dedup, enrichment, storage, the stream,
//! conversions), marked as sent with a write key. Each refused message is answered with its
//! reason; the others are kept.

use std::net::IpAddr;

use serde_json::{Value, json};

use super::ingest::{Auth, ingest};
use super::{ServiceResult, Services};
use crate::domain::config::AppKind;
use crate::domain::events::parse_ms;
use crate::domain::segment::{Origin, Route, messages, translate};

/// What a group of messages sent to ingest together shares: the client (for a `server` app)
/// and the send time.
type GroupKey = (Origin, Option<String>);

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
/// `user_agent`. A `server` app's messages are enriched with the address and user agent their
/// `context` names (a backend reports on other people's behalf); other apps' with the
/// request's own, as an SDK's.
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
    // Messages go to ingest in groups that share their client and send time (usually one).
    let mut groups: Vec<(GroupKey, Vec<(usize, Value)>)> = Vec::new();
    let mut traits_dropped = 0;
    let message_ids: Vec<Option<String>> =
        batch.messages.iter().map(|m| m.get("messageId").and_then(Value::as_str).map(str::to_owned)).collect();
    for (index, message) in batch.messages.into_iter().enumerate() {
        let message_id = message_ids[index].clone();
        match translate(app_id, route, message, batch.sent_at.as_deref(), received_at, |u| svc.ids.user(u)) {
            Ok(t) => {
                traits_dropped += t.traits_dropped;
                let origin = if trusted { t.origin } else { Origin::default() };
                // A send time that is not a time does not refuse the group: no skew correction.
                let key = (origin, t.sent_at.filter(|s| parse_ms(s).is_some()));
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, events)) => events.push((index, t.event)),
                    None => groups.push((key, vec![(index, t.event)])),
                }
            }
            Err(reason) => answer.rejected.push(MessageRejection { index, message_id, reason }),
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
    for ((origin, sent_at), events) in groups {
        let (indices, events): (Vec<usize>, Vec<Value>) = events.into_iter().unzip();
        let mut envelope = json!({ "batch": events });
        if let Some(s) = sent_at {
            envelope["sent_at"] = Value::String(s);
        }
        let group_ip = origin.ip.as_deref().and_then(|i| i.trim().parse().ok()).or(ip);
        let group_ua = origin.user_agent.as_deref().or(user_agent);
        let r = ingest(svc, app_id.to_owned(), Auth::WriteKey, group_ip, group_ua, envelope).await?;
        answer.accepted += r.accepted;
        answer.duplicates += r.duplicates;
        answer.suppressed += r.suppressed;
        for rejection in r.rejected {
            let index = indices.get(rejection.index).copied().unwrap_or(rejection.index);
            let message_id = message_ids.get(index).cloned().flatten();
            answer.rejected.push(MessageRejection { index, message_id, reason: rejection.reason });
        }
    }
    answer.rejected.sort_by_key(|r| r.index);
    metrics::counter!("trailmark_segment_messages_total", "app" => app_id.to_owned()).increment(answer.messages as u64);
    Ok(answer)
}
