//! The pure part of ingesting a request: a parsed body (one event or a batch envelope) checked
//! and turned into rows and follow-ups, before anything is stored. `service::ingest` stores
//! what this returns; the fuzz target `body` runs exactly this.

use serde_json::Value;
use trailmark_core::protocol::{self, DropReport, Rejection};

use super::conversions::{Followup, postbacks_allowed};
use super::enrich::{Geo, UserAgent};
use super::error::Refusal;
use super::events::{ClientEnrichment, check_revenue, normalise_for, parse_ms, time_clamped};
use super::records::NewEvent;
use super::validate::Validators;

/// What applies to every request of a server: its validators, the event types that are
/// conversions, and the largest revenue an event may carry.
pub struct IngestRules<'a> {
    pub validators: &'a Validators,
    pub conversion_events: &'a [String],
    pub max_revenue: f64,
}

/// Who sent the request and how it arrived.
pub struct Sender<'a> {
    pub app_id: &'a str,
    /// Whether its revenue may go into network postbacks (docs/protocol.md, "Trust model").
    pub revenue_trusted: bool,
    /// Server time of arrival, Unix ms.
    pub received_at: i64,
    pub ua: &'a UserAgent,
    pub geo: &'a Geo,
    pub ip_enc: Option<Vec<u8>>,
    /// Sent with a write key (the Segment-compatible API), not signed: marked so in the
    /// stored enrichment (`"auth": "write_key"`).
    pub unsigned: bool,
    /// Each event's own client, by index, when a backend reports for several people in one
    /// request (a `server` app's Segment messages); empty: every event is the request's.
    pub clients: &'a [Client],
}

/// The client an event describes: its user agent, location and sealed address.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub ua: UserAgent,
    pub geo: Geo,
    pub ip_enc: Option<Vec<u8>>,
}

/// A body made ready to store.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Accepted events, in the order sent.
    pub fresh: Vec<NewEvent>,
    /// Follow-ups of the accepted conversion events.
    pub followups: Vec<Followup>,
    /// Events refused one by one, with their index in the body.
    pub rejected: Vec<Rejection>,
    /// What the SDK reported it dropped before sending.
    pub dropped: DropReport,
    /// How many accepted events had a time too far ahead, clamped.
    pub clamped: usize,
}

/// Checks a body and normalises its events. The body as a whole is refused only when it is
/// not an event or an envelope, or holds too many events; otherwise each event is accepted or
/// rejected on its own (size, schema, revenue bound, times).
pub fn prepare(rules: &IngestRules<'_>, sender: &Sender<'_>, value: Value) -> Result<Prepared, Refusal> {
    let is_batch = value.get("batch").is_some();
    if is_batch {
        rules.validators.envelope(&value).map_err(|e| Refusal::invalid("invalid_envelope", e))?;
    }
    let (events, sent_at, dropped) = match value {
        Value::Object(mut map) if is_batch => {
            let Some(Value::Array(batch)) = map.remove("batch") else {
                return Err(Refusal::invalid("invalid_envelope", "/batch: must be an array"));
            };
            if batch.len() > protocol::MAX_BATCH_EVENTS {
                return Err(Refusal::too_large(format!(
                    "batch holds {} events; the limit is {}",
                    batch.len(),
                    protocol::MAX_BATCH_EVENTS
                )));
            }
            let sent_at = map.get("sent_at").and_then(Value::as_str).and_then(parse_ms);
            let dropped: DropReport =
                map.remove("dropped").and_then(|d| serde_json::from_value(d).ok()).unwrap_or_default();
            (batch, sent_at, dropped)
        }
        Value::Object(map) => (vec![Value::Object(map)], None, DropReport::default()),
        _ => return Err(Refusal::invalid("invalid_body", "body must be an event object or a batch envelope")),
    };

    let mut out = Prepared { dropped, ..Prepared::default() };
    out.fresh.reserve(events.len());
    // The request's client, serialised once for all its events.
    let request_client = ClientEnrichment::new(sender.ua, sender.geo, sender.unsigned);
    for (index, event) in events.into_iter().enumerate() {
        let size = protocol::serialized_len(&event);
        if size > protocol::MAX_EVENT_BYTES {
            let reason = format!("event is {size} bytes; the limit is {}", protocol::MAX_EVENT_BYTES);
            out.rejected.push(Rejection { index, reason });
            continue;
        }
        let follow = Followup::from_event(&event, rules.conversion_events);
        let postbacks = postbacks_allowed(&event);
        let revenue = follow.and_then(|_| event.pointer("/properties/revenue").and_then(Value::as_f64));
        let currency =
            follow.and_then(|_| event.pointer("/properties/currency").and_then(Value::as_str)).map(str::to_owned);
        // Given per event, an event without one has no client (never the request's: that is a
        // backend reporting for others).
        let no_client = Client::default();
        let own;
        let (client, ip_enc) = match (sender.clients.is_empty(), sender.clients.get(index)) {
            (true, _) => (&request_client, &sender.ip_enc),
            (false, found) => {
                let c = found.unwrap_or(&no_client);
                own = ClientEnrichment::new(&c.ua, &c.geo, sender.unsigned);
                (&own, &c.ip_enc)
            }
        };
        let checked = rules
            .validators
            .event(sender.app_id, &event)
            .and_then(|_| check_revenue(&event, rules.max_revenue))
            .and_then(|_| normalise_for(sender.app_id, event, sent_at, sender.received_at, client, ip_enc.clone()));
        match checked {
            Ok(e) => {
                out.clamped += usize::from(time_clamped(&e));
                if let Some((click_id, _)) = follow {
                    out.followups.push(Followup {
                        event_id: e.event_id.clone(),
                        event_type: e.event_type.clone(),
                        anonymous_id: e.anonymous_id.clone(),
                        user_id: e.user_id.clone(),
                        ts: e.corrected_ts,
                        click_id,
                        revenue,
                        currency,
                        revenue_trusted: sender.revenue_trusted,
                        postbacks_allowed: postbacks,
                    });
                }
                out.fresh.push(e)
            }
            Err(reason) => out.rejected.push(Rejection { index, reason }),
        }
    }
    Ok(out)
}
