//! Follow-ups of stored events: which events need attribution work after they are stored
//! (a Trailmark click id, a conversion), and the credit a conversion gives its touchpoints under
//! every model. Pure.

use serde_json::Value;
use trailmark_core::protocol::ConsentContext;

use crate::domain::attribution::{Model, credit};
use crate::domain::records::{ConversionCredit, Touchpoint};

/// Event types that mean "the app was opened through a link".
pub const OPEN_EVENTS: &[&str] = &["deep_link_opened"];

/// What the follow-up needs to know about one stored event.
#[derive(Debug, Clone)]
pub struct Followup {
    pub event_id: String,
    pub event_type: String,
    pub anonymous_id: String,
    pub user_id: Option<String>,
    /// Clock-corrected event time.
    pub ts: i64,
    /// `context.campaign.click_id`, when it is a Trailmark click id.
    pub click_id: Option<uuid::Uuid>,
    pub revenue: Option<f64>,
    pub currency: Option<String>,
    /// The sender may put revenue into network postbacks (a server app, the app's server
    /// secret, or an app that opted in).
    pub revenue_trusted: bool,
    /// The event's consent state allows postbacks to ad networks: not `do_not_sell`, and
    /// attribution not denied ([`postbacks_allowed`]). Credit is kept either way.
    pub postbacks_allowed: bool,
}

/// Whether an event's recorded consent (`context.consent`, the state the SDK had when it
/// recorded the event) lets the server tell an ad network about it: no when the person chose
/// do-not-sell (CCPA) or denied attribution; undecided attribution is not a denial.
pub fn postbacks_allowed(event: &Value) -> bool {
    event.get("context").and_then(recorded_consent).is_none_or(|c| consent_allows_postbacks(&c))
}

/// The same rule for a typed consent state (an install's `consent`).
pub fn consent_allows_postbacks(c: &ConsentContext) -> bool {
    !c.do_not_sell && c.attribution != Some(false)
}

/// The consent an event's `context` records (`context.consent`), if it says; missing members
/// are undecided (and `do_not_sell` false).
pub fn recorded_consent(context: &Value) -> Option<ConsentContext> {
    let c = context.get("consent")?.as_object()?;
    Some(ConsentContext {
        analytics: c.get("analytics").and_then(Value::as_bool),
        attribution: c.get("attribution").and_then(Value::as_bool),
        do_not_sell: c.get("do_not_sell").and_then(Value::as_bool).unwrap_or(false),
    })
}

/// Whether the latest state the server knows for a person lets postbacks go: the consent of
/// the first of `contexts` (their newest stored events, newest first, as
/// [`crate::storage::ConversionStore::latest_context`] reads them) that carries a top-level
/// `consent`; yes when none does.
pub fn latest_allows_postbacks(contexts: &[String]) -> bool {
    contexts
        .iter()
        .find_map(|t| serde_json::from_str::<Value>(t).ok().and_then(|v| recorded_consent(&v)))
        .is_none_or(|c| consent_allows_postbacks(&c))
}

impl Followup {
    /// Extracts the follow-up facts from an event as received; `None` when the event needs no
    /// follow-up (no click id, not a conversion).
    pub fn from_event(event: &Value, conversion_events: &[String]) -> Option<(Option<uuid::Uuid>, bool)> {
        let click_id = event
            .pointer("/context/campaign/click_id")
            .and_then(Value::as_str)
            .and_then(|c| uuid::Uuid::parse_str(c.trim()).ok());
        let kind = event.get("type").and_then(Value::as_str).unwrap_or_default();
        let conversion = conversion_events.iter().any(|c| c == kind);
        (click_id.is_some() || conversion).then_some((click_id, conversion))
    }

    pub fn is_conversion(&self, conversion_events: &[String]) -> bool {
        conversion_events.contains(&self.event_type)
    }
}

/// The credit rows of one conversion under every model.
pub fn credit_rows(app_id: &str, item: &Followup, touches: &[Touchpoint], half_life: i64) -> Vec<ConversionCredit> {
    let times: Vec<i64> = touches.iter().map(|t| t.ts).collect();
    let mut rows = Vec::new();
    for model in Model::ALL {
        let shares = credit(model, &times, item.ts, half_life);
        let base = ConversionCredit {
            app_id: app_id.to_owned(),
            event_id: item.event_id.clone(),
            model: model.as_str().to_owned(),
            click_id: None,
            anonymous_id: item.anonymous_id.clone(),
            user_id: item.user_id.clone(),
            event_type: item.event_type.clone(),
            ts: item.ts,
            link_id: None,
            campaign_id: None,
            network: None,
            touch_ts: None,
            credit: 1.0,
            revenue: item.revenue,
            currency: item.currency.clone(),
        };
        if shares.is_empty() {
            rows.push(base);
            continue;
        }
        for (t, share) in touches.iter().zip(shares) {
            if share > 0.0 {
                rows.push(ConversionCredit {
                    click_id: Some(t.click_id.clone()),
                    link_id: Some(t.link_id.clone()),
                    campaign_id: Some(t.campaign_id.clone()),
                    network: Some(t.network.clone()),
                    touch_ts: Some(t.ts),
                    credit: share,
                    revenue: item.revenue.map(|r| r * share),
                    ..base.clone()
                });
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_state_is_the_first_top_level_consent() {
        let nested = r#"{"x":{"consent":{"do_not_sell":false}}}"#.to_owned();
        let dns = r#"{"consent":{"attribution":true,"do_not_sell":true}}"#.to_owned();
        let granted = r#"{"consent":{"attribution":true,"do_not_sell":false}}"#.to_owned();
        assert!(
            !latest_allows_postbacks(&[nested.clone(), dns.clone(), granted.clone()]),
            "a nested consent is no state"
        );
        assert!(latest_allows_postbacks(&[granted, dns]));
        assert!(latest_allows_postbacks(&[nested]), "nothing known");
        assert!(latest_allows_postbacks(&[]));
    }
}
