//! What the engine persists besides the queue (one JSON document in the store).
//!
//! The document's format is the one earlier versions wrote with serde (field names, `null` for
//! absent values), so an upgraded SDK reads the state it left; the tests check both ways.

#[allow(unused_imports)]
use crate::prelude::*;

use super::{Millis, Stats};
use crate::json::{self, Fields, Object, Value, Writer};
use crate::protocol::{ConsentContext, DropReport};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Session {
    pub(super) id: String,
    pub(super) last_activity: Millis,
}

/// Everything the engine persists besides the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct State {
    pub(super) anonymous_id: String,
    pub(super) user_id: Option<String>,
    pub(super) consent: ConsentContext,
    pub(super) opted_out: bool,
    pub(super) installed: bool,
    pub(super) session: Option<Session>,
    /// Local drops not yet reported to the server.
    pub(super) unreported: DropReport,
    pub(super) next_seq: u64,
    pub(super) stats: Stats,
    /// The install-attribution request not answered yet (created on the first open).
    pub(super) install_request: Option<PendingInstall>,
    /// The server's answer to it (`AttributionResult` JSON).
    pub(super) attribution: Option<String>,
    /// Server clock minus device clock (ms), learned from a `stale_timestamp` refusal; added
    /// to the times the SDK signs and to the install request's times. 0 until one came.
    pub(super) clock_offset: i64,
    /// Super properties (`register`): merged into every event's properties, the event's own
    /// values winning. Written only when there are some (older documents have none).
    pub(super) registered: Object,
    /// The group joined last (`group`): on every later event's `context.group_id`.
    pub(super) group_id: Option<String>,
    /// The app's version and build at the last start (`app_updated` when they change).
    pub(super) app_version: Option<String>,
    pub(super) app_build: Option<String>,
    /// The advertising id the host set after the start (`set_advertising_id`): `None` when it
    /// never did (the configuration's counts), `Some(None)` when it cleared it.
    pub(super) advertising_id: Option<Option<String>>,
    /// The App Tracking Transparency status the host reported.
    pub(super) tracking: Option<super::TrackingAuthorization>,
    /// The advertising id the server has for the install (sent in the install request or an
    /// `advertising_id` event); `None` in states from before late ids were sent.
    pub(super) ad_id_reported: Option<Option<String>>,
}

/// What the install request (`POST /v1/install`) will carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PendingInstall {
    /// A UUID, hyphenated.
    pub(super) event_id: String,
    /// First open (Unix ms): the install time.
    pub(super) created: Millis,
    pub(super) referrer: Option<String>,
    pub(super) referrer_click_ts: Option<i64>,
    pub(super) install_begin_ts: Option<i64>,
    /// When the package was installed (Android's `firstInstallTime`), if the host said.
    pub(super) installed_at: Option<i64>,
    /// The host reported the Play Install Referrer (possibly as unavailable).
    pub(super) referrer_given: bool,
    pub(super) click_id: Option<String>,
}

/// A member that may be missing (then `None`), `null`, or of the right type.
fn optional<T>(o: &Object, key: &str, read: impl Fn(&Value) -> Option<T>) -> Option<Option<T>> {
    match o.get(key) {
        None | Some(Value::Null) => Some(None),
        Some(v) => read(v).map(Some),
    }
}

fn string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

impl State {
    pub(super) fn to_json(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(1024);
        let mut o = w.begin();
        o.str("anonymous_id", &self.anonymous_id);
        o.str_or_null("user_id", self.user_id.as_deref());
        o.key("consent");
        self.consent.write(o.w);
        o.bool("opted_out", self.opted_out);
        o.bool("installed", self.installed);
        o.key("session");
        match &self.session {
            Some(s) => {
                let mut so = o.w.begin();
                so.str("id", &s.id);
                so.i64("last_activity", s.last_activity);
                so.end();
            }
            None => o.w.null(),
        }
        o.key("unreported");
        self.unreported.write(o.w);
        o.u64("next_seq", self.next_seq);
        o.key("stats");
        self.stats.write(o.w, false);
        o.key("install_request");
        match &self.install_request {
            Some(p) => {
                let mut po = o.w.begin();
                po.str("event_id", &p.event_id);
                po.i64("created", p.created);
                po.str_or_null("referrer", p.referrer.as_deref());
                po.key("referrer_click_ts");
                match p.referrer_click_ts {
                    Some(t) => po.w.i64(t),
                    None => po.w.null(),
                }
                po.key("install_begin_ts");
                match p.install_begin_ts {
                    Some(t) => po.w.i64(t),
                    None => po.w.null(),
                }
                if let Some(t) = p.installed_at {
                    po.i64("installed_at", t);
                }
                po.bool("referrer_given", p.referrer_given);
                po.str_or_null("click_id", p.click_id.as_deref());
                po.end();
            }
            None => o.w.null(),
        }
        o.str_or_null("attribution", self.attribution.as_deref());
        if self.clock_offset != 0 {
            o.i64("clock_offset", self.clock_offset);
        }
        if !self.registered.is_empty() {
            o.key("registered");
            o.w.object(&self.registered);
        }
        if let Some(g) = &self.group_id {
            o.str("group_id", g);
        }
        o.opt_str("app_version", self.app_version.as_deref());
        o.opt_str("app_build", self.app_build.as_deref());
        if let Some(ad) = &self.advertising_id {
            o.str_or_null("advertising_id", ad.as_deref());
        }
        o.opt_str("tracking", self.tracking.map(super::TrackingAuthorization::as_str));
        if let Some(reported) = &self.ad_id_reported {
            o.str_or_null("ad_id_reported", reported.as_deref());
        }
        o.end();
        w.into_bytes()
    }

    /// Reads the document; `None` when it is not one (the engine then counts a store error and
    /// starts a new state).
    pub(super) fn from_json(bytes: &[u8]) -> Option<State> {
        let text = core::str::from_utf8(bytes).ok()?;
        let value = json::parse(text, 16).ok()?;
        let o = value.as_object()?;
        let session = optional(o, "session", |v| {
            let s = v.as_object()?;
            Some(Session { id: s.field_str("id")?, last_activity: s.field_i64("last_activity")? })
        })?;
        let install_request = optional(o, "install_request", |v| {
            let p = v.as_object()?;
            Some(PendingInstall {
                event_id: p.field_str("event_id")?,
                created: p.field_i64("created")?,
                referrer: optional(p, "referrer", string)?,
                referrer_click_ts: optional(p, "referrer_click_ts", Value::as_i64)?,
                install_begin_ts: optional(p, "install_begin_ts", Value::as_i64)?,
                installed_at: optional(p, "installed_at", Value::as_i64)?,
                referrer_given: p.field_bool("referrer_given")?,
                click_id: optional(p, "click_id", string)?,
            })
        })?;
        Some(State {
            anonymous_id: o.field_str("anonymous_id")?,
            user_id: optional(o, "user_id", string)?,
            consent: ConsentContext::read(o.get("consent")?.as_object()?),
            opted_out: o.field_bool("opted_out")?,
            installed: o.field_bool("installed")?,
            session,
            unreported: DropReport::read(o.get("unreported")?.as_object()?),
            next_seq: o.field_u64("next_seq")?,
            stats: Stats::read(o.get("stats")?.as_object()?),
            install_request,
            attribution: optional(o, "attribution", string)?,
            clock_offset: optional(o, "clock_offset", Value::as_i64)?.unwrap_or(0),
            registered: optional(o, "registered", |v| v.as_object().cloned())?.unwrap_or_default(),
            group_id: optional(o, "group_id", string)?,
            app_version: optional(o, "app_version", string)?,
            app_build: optional(o, "app_build", string)?,
            // Values this version cannot read are ignored (never a reason to start afresh).
            advertising_id: o.get("advertising_id").map(string),
            tracking: o.get("tracking").and_then(Value::as_str).and_then(super::TrackingAuthorization::parse),
            ad_id_reported: o.get("ad_id_reported").map(string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state document as the serde-based SDK (before issue 18) wrote it.
    const WRITTEN_BY_SERDE: &str = r#"{"anonymous_id":"0b9a7c64-1d2e-4f3a-8b5c-6d7e8f9a0b1c","user_id":"u1","consent":{"analytics":true,"attribution":null,"do_not_sell":false},"opted_out":false,"installed":true,"session":{"id":"s-1","last_activity":1767225600123},"unreported":{"queue_full":1,"expired":0,"pre_consent_full":0,"invalid":2,"backpressure":0},"next_seq":42,"stats":{"recorded":41,"delivered":30,"rejected_by_server":0,"dropped_queue_full":1,"dropped_expired":0,"dropped_pre_consent_full":0,"dropped_consent_denied":0,"dropped_opted_out":0,"refused_invalid":2,"dropped_backpressure":0,"ignored_no_consent":0,"uploads":3,"upload_failures":1,"store_errors":0,"queued":10,"held":0,"beacons":0},"install_request":{"event_id":"6f1c2a8e-3b4d-4f6a-9c1e-2d3f4a5b6c7d","created":1767225600000,"referrer":null,"referrer_click_ts":null,"install_begin_ts":null,"referrer_given":false,"click_id":"k"},"attribution":null}"#;

    #[test]
    fn reads_what_the_serde_sdk_wrote_and_writes_it_back_with_the_later_stats() {
        let state = State::from_json(WRITTEN_BY_SERDE.as_bytes()).expect("old state reads");
        assert_eq!(state.next_seq, 42);
        assert_eq!(state.user_id.as_deref(), Some("u1"));
        assert_eq!(state.consent.analytics, Some(true));
        assert_eq!(state.stats.delivered, 30);
        assert_eq!(state.install_request.as_ref().and_then(|p| p.click_id.as_deref()), Some("k"));
        // The same document, with the stats added since (issues 19 and 21) at their zero values.
        let later = r#""beacons":0,"bad_answers":0,"last_rejection_status":0,"dropped_by_middleware":0,"middleware_errors":0,"last_rejection_reason":""}"#;
        let expected = WRITTEN_BY_SERDE.replace(r#""beacons":0}"#, later);
        assert_eq!(String::from_utf8(state.to_json()).unwrap(), expected);
    }

    #[test]
    fn the_later_stats_are_kept_and_read_back() {
        let mut state = State::from_json(WRITTEN_BY_SERDE.as_bytes()).unwrap();
        state.stats.bad_answers = 2;
        state.stats.in_flight = 9;
        state.stats.note_rejection(422, "invalid_field \"x\"");
        state.stats.middleware_errors = 3;
        let text = String::from_utf8(state.to_json()).unwrap();
        let kept = r#""bad_answers":2,"last_rejection_status":422,"dropped_by_middleware":0,"middleware_errors":3,"last_rejection_reason":"invalid_field \"x\""}"#;
        assert!(text.contains(kept), "{text}");
        assert!(!text.contains("in_flight"), "not persisted");
        let back = State::from_json(text.as_bytes()).unwrap();
        assert_eq!(back.stats, Stats { in_flight: 0, ..state.stats });
        // What a host reads has every field, in_flight included.
        let mut w = Writer::with_capacity(512);
        state.stats.write(&mut w, true);
        assert!(w.into_string().ends_with(r#""invalid_field \"x\"","in_flight":9}"#));
    }

    #[test]
    fn a_reason_keeps_whole_characters_up_to_its_limit() {
        use super::super::types::{MAX_REASON_BYTES, Reason};
        assert_eq!(Reason::default().as_str(), "");
        assert_eq!(Reason::new("payload_too_large").as_str(), "payload_too_large");
        let long = "é".repeat(MAX_REASON_BYTES);
        assert_eq!(Reason::new(&long).as_str(), "é".repeat(MAX_REASON_BYTES / 2));
        // A cut inside a character keeps the characters before it.
        let odd = format!("a{long}");
        assert_eq!(Reason::new(&odd).as_str(), format!("a{}", "é".repeat(MAX_REASON_BYTES / 2 - 1)));
        assert_eq!(Reason::new(&"€".repeat(100)).as_str(), "€".repeat(MAX_REASON_BYTES / 3));
    }

    #[test]
    fn older_documents_without_install_fields_still_read() {
        // Documents from before the install request had no `install_request`/`attribution`.
        let mut value = json::parse(WRITTEN_BY_SERDE, 16).unwrap();
        if let Value::Object(o) = &mut value {
            o.remove("install_request");
            o.remove("attribution");
        }
        let state = State::from_json(value.to_json().as_bytes()).unwrap();
        assert_eq!((state.install_request, state.attribution), (None, None));
    }

    #[test]
    fn refuses_what_is_not_a_state() {
        for bad in ["", "{}", "[]", r#"{"anonymous_id":1}"#, "\u{0}"] {
            assert_eq!(State::from_json(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
