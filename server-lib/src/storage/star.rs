//! What the two stores' report tables share: UTC day keys, the session planner, the campaign
//! key of `utm_*` context, the revenue of an event's properties, and the fact-row `SELECT`.
//! Pure: no store is touched here.

use serde_json::Value;

pub use crate::domain::reports::{DAY_MS, date_text, day_of};

/// The campaign key of a web or app event that carries `utm_*` context (first touch).
pub fn utm_key(context: &Value) -> Option<(String, String, String)> {
    let c = context.get("campaign")?;
    let name = c.get("utm_campaign").and_then(Value::as_str).filter(|s| !s.is_empty())?;
    let source = c.get("utm_source").and_then(Value::as_str).unwrap_or("");
    Some((format!("utm:{source}:{name}"), name.to_owned(), source.to_owned()))
}

/// Revenue and currency of an event's properties (JSON text).
pub fn money(properties: &str) -> (Option<f64>, Option<String>) {
    // Most events carry neither; parse only those that might.
    if !properties.contains("\"revenue\"") && !properties.contains("\"currency\"") {
        return (None, None);
    }
    let properties: Value = serde_json::from_str(properties).unwrap_or(Value::Null);
    (
        properties.get("revenue").and_then(Value::as_f64).filter(|r| r.is_finite()),
        properties.get("currency").and_then(Value::as_str).map(str::to_owned),
    )
}

/// A stored session of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSession {
    pub key: String,
    pub start: i64,
    pub end: i64,
    pub events: i64,
    pub user_id: Option<String>,
}

/// One device's session, as the batch changes it.
struct Session {
    s: StoredSession,
    /// Stored before this batch.
    stored: bool,
    /// Merged into another session (its key is then in `into`).
    into: Option<usize>,
}

/// What a batch does to one device's sessions.
#[derive(Debug, Default)]
pub struct SessionPlan {
    /// Each event's session key, in the order of the events.
    pub assigned: Vec<String>,
    /// Stored sessions merged into another: (merged key, kept key). Their facts move to the
    /// kept key and their row goes.
    pub merged: Vec<(String, String)>,
    /// Sessions to insert or update.
    pub upserts: Vec<StoredSession>,
}

/// Assigns one device's events (in time order: (time, event id, user id)) to sessions: an
/// event within `gap` of a session's bounds joins it, an event that bridges two sessions merges
/// them, any other starts one (keyed by its time and event id). `stored` are the device's
/// sessions that end at or after the first event − gap and start at or before the last + gap.
/// Pure: both stores read the sessions, plan, and write the plan.
pub fn plan_sessions(stored: Vec<StoredSession>, events: &[(i64, &str, Option<&str>)], gap: i64) -> SessionPlan {
    let mut sessions: Vec<Session> = stored.into_iter().map(|s| Session { s, stored: true, into: None }).collect();
    let mut assigned = Vec::with_capacity(events.len());
    for &(ts, event_id, user_id) in events {
        let near: Vec<usize> = (0..sessions.len())
            .filter(|&i| sessions[i].into.is_none() && sessions[i].s.end >= ts - gap && sessions[i].s.start <= ts + gap)
            .collect();
        let target = match near.first() {
            None => {
                sessions.push(Session {
                    s: StoredSession {
                        // Time first: new sessions land at the end of the key indexes.
                        key: format!("{:013}-{}", ts.max(0), event_id),
                        start: ts,
                        end: ts,
                        events: 0,
                        user_id: None,
                    },
                    stored: false,
                    into: None,
                });
                sessions.len() - 1
            }
            Some(&keep) => {
                for &other in &near[1..] {
                    let (start, end, n) = (sessions[other].s.start, sessions[other].s.end, sessions[other].s.events);
                    let user = sessions[other].s.user_id.take();
                    sessions[other].into = Some(keep);
                    let s = &mut sessions[keep].s;
                    s.start = s.start.min(start);
                    s.end = s.end.max(end);
                    s.events += n;
                    if s.user_id.is_none() {
                        s.user_id = user;
                    }
                }
                keep
            }
        };
        let s = &mut sessions[target].s;
        s.start = s.start.min(ts);
        s.end = s.end.max(ts);
        s.events += 1;
        if let Some(u) = user_id {
            s.user_id = Some(u.to_owned());
        }
        assigned.push(target);
    }
    // Where each session ended up, following merges.
    let root = |mut i: usize| {
        while let Some(j) = sessions[i].into {
            i = j;
        }
        i
    };
    let roots: Vec<usize> = (0..sessions.len()).map(root).collect();
    let mut plan = SessionPlan {
        assigned: assigned.into_iter().map(|i| sessions[roots[i]].s.key.clone()).collect(),
        ..Default::default()
    };
    for (i, s) in sessions.iter().enumerate() {
        if roots[i] != i {
            if s.stored {
                plan.merged.push((s.s.key.clone(), sessions[roots[i]].s.key.clone()));
            }
        } else {
            plan.upserts.push(s.s.clone());
        }
    }
    plan
}

/// The fact-row `SELECT` both stores' reports start from (written with the shared SQL).
pub use super::sql::FACT_ROWS;
