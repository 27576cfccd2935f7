//! Hand-written JSON encoders and decoders of the wire types, for the SDK's path: devices and
//! the browser carry no serde code (issue 18). The server keeps the serde derives (feature
//! `serde`); the tests below check that both produce and accept the same JSON.

#[allow(unused_imports)]
use crate::prelude::*;

use super::{
    AttributionResult, ConsentContext, ContextRef, DeepLink, DropReport, FraudVerdict, IngestResponse, InstallDevice,
    MatchType, Platform, Rejection, Screen,
};
use crate::json::{Fields, Object, Value, Writer};

/// A borrowed event as the SDK writes it; the same JSON as the server's `Event`.
#[derive(Debug, Clone, Copy)]
pub struct EventView<'a> {
    pub event_id: &'a str,
    pub event_type: &'a str,
    /// Unix ms, written as RFC 3339 UTC with milliseconds.
    pub timestamp_ms: i64,
    pub anonymous_id: &'a str,
    pub user_id: Option<&'a str>,
    pub device_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub properties: &'a Object,
    pub context: ContextRef<'a>,
}

impl EventView<'_> {
    pub fn write(&self, w: &mut Writer) {
        let mut o = w.begin();
        o.str("event_id", self.event_id);
        o.str("type", self.event_type);
        o.str("timestamp", &super::format_millis(self.timestamp_ms));
        o.str("anonymous_id", self.anonymous_id);
        o.opt_str("user_id", self.user_id);
        o.opt_str("device_id", self.device_id);
        o.opt_str("session_id", self.session_id);
        o.key("properties");
        o.w.object(self.properties);
        o.key("context");
        self.context.write(o.w);
        o.end();
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(512);
        self.write(&mut w);
        w.into_bytes()
    }
}

impl ContextRef<'_> {
    pub fn write(&self, w: &mut Writer) {
        let mut o = w.begin();
        if let Some(app) = self.app {
            o.key("app");
            let mut a = o.w.begin();
            a.opt_str("id", app.id.as_deref());
            a.opt_str("version", app.version.as_deref());
            a.opt_str("build", app.build.as_deref());
            a.end();
        }
        if let Some(d) = self.device {
            o.key("device");
            let mut a = o.w.begin();
            a.opt_str("os", d.os.as_deref());
            a.opt_str("os_version", d.os_version.as_deref());
            a.opt_str("model", d.model.as_deref());
            a.opt_str("manufacturer", d.manufacturer.as_deref());
            a.opt_str("locale", d.locale.as_deref());
            a.opt_str("timezone", d.timezone.as_deref());
            if let Some(s) = d.screen {
                a.key("screen");
                s.write(a.w);
            }
            a.end();
        }
        if let Some(c) = self.campaign {
            o.key("campaign");
            let mut a = o.w.begin();
            a.opt_str("utm_source", c.utm_source.as_deref());
            a.opt_str("utm_medium", c.utm_medium.as_deref());
            a.opt_str("utm_campaign", c.utm_campaign.as_deref());
            a.opt_str("utm_term", c.utm_term.as_deref());
            a.opt_str("utm_content", c.utm_content.as_deref());
            a.opt_str("click_id", c.click_id.as_deref());
            a.end();
        }
        if let Some(c) = self.consent {
            o.key("consent");
            c.write(o.w);
        }
        if let Some(s) = self.sdk {
            o.key("sdk");
            let mut a = o.w.begin();
            a.str("name", &s.name);
            a.str("version", &s.version);
            a.end();
        }
        o.opt_str("group_id", self.group_id);
        o.end();
    }
}

impl Screen {
    pub fn write(&self, w: &mut Writer) {
        let mut o = w.begin();
        o.u64("width", u64::from(self.width));
        o.u64("height", u64::from(self.height));
        o.end();
    }
}

impl ConsentContext {
    pub fn write(&self, w: &mut Writer) {
        let mut o = w.begin();
        o.opt_bool_or_null("analytics", self.analytics);
        o.opt_bool_or_null("attribution", self.attribution);
        o.bool("do_not_sell", self.do_not_sell);
        o.end();
    }

    pub fn to_json(&self) -> String {
        let mut w = Writer::new();
        self.write(&mut w);
        w.into_string()
    }

    /// Reads `{"analytics", "attribution", "do_not_sell"}`; missing members are undecided.
    pub fn read(o: &Object) -> ConsentContext {
        ConsentContext {
            analytics: o.field_bool("analytics"),
            attribution: o.field_bool("attribution"),
            do_not_sell: o.field_bool("do_not_sell").unwrap_or(false),
        }
    }
}

impl DropReport {
    pub fn write(&self, w: &mut Writer) {
        let mut o = w.begin();
        o.u64("queue_full", self.queue_full);
        o.u64("expired", self.expired);
        o.u64("pre_consent_full", self.pre_consent_full);
        o.u64("invalid", self.invalid);
        o.u64("backpressure", self.backpressure);
        o.end();
    }

    pub fn read(o: &Object) -> DropReport {
        let n = |k| o.field_u64(k).unwrap_or(0);
        DropReport {
            queue_full: n("queue_full"),
            expired: n("expired"),
            pre_consent_full: n("pre_consent_full"),
            invalid: n("invalid"),
            backpressure: n("backpressure"),
        }
    }
}

impl IngestResponse {
    /// Reads an ingest response (`accepted` and `duplicates` are required, `suppressed` and
    /// `rejected` may be missing); `None` when the text is not one.
    pub fn from_json(body: &[u8]) -> Option<IngestResponse> {
        let text = core::str::from_utf8(body).ok()?;
        let value = crate::json::parse(text, 64).ok()?;
        let o = value.as_object()?;
        let rejected = match o.get("rejected") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|r| {
                    let r = r.as_object()?;
                    Some(Rejection {
                        index: usize::try_from(r.field_u64("index")?).ok()?,
                        reason: r.field_str("reason")?,
                    })
                })
                .collect::<Option<Vec<_>>>()?,
            Some(_) => return None,
        };
        let suppressed = match o.get("suppressed") {
            None => 0,
            Some(_) => o.field_u64("suppressed")?,
        };
        Some(IngestResponse {
            accepted: o.field_u64("accepted")?,
            duplicates: o.field_u64("duplicates")?,
            suppressed,
            rejected,
        })
    }
}

impl Platform {
    pub fn parse(text: &str) -> Option<Platform> {
        match text {
            "ios" => Some(Platform::Ios),
            "android" => Some(Platform::Android),
            "web" => Some(Platform::Web),
            _ => None,
        }
    }
}

impl MatchType {
    pub fn parse(text: &str) -> Option<MatchType> {
        Some(match text {
            "click_id" => MatchType::ClickId,
            "referrer" => MatchType::Referrer,
            "device_id" => MatchType::DeviceId,
            "fingerprint" => MatchType::Fingerprint,
            "view_through" => MatchType::ViewThrough,
            "organic" => MatchType::Organic,
            _ => return None,
        })
    }
}

/// A member that may be absent or `null`, else must be a string.
fn opt_string(o: &Object, key: &str) -> Result<Option<String>, ()> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(()),
    }
}

const OPTIONAL_STRINGS: [&str; 5] = ["campaign_id", "link_id", "click_id", "network", "reason"];

impl AttributionResult {
    /// True when `o` is an attribution result as the server's serde types require it (checked
    /// without building one, so the web build carries no map or float code for it).
    pub fn is_valid(o: &Object) -> bool {
        let fraud = o.get("fraud").and_then(Value::as_object).is_some_and(|f| {
            f.get("flags").and_then(Value::as_array).is_some_and(|a| a.iter().all(|x| x.as_str().is_some()))
                && f.field_bool("rejected").is_some()
        });
        let deep_link = match o.get("deep_link") {
            None | Some(Value::Null) => true,
            Some(Value::Object(d)) => {
                d.str("path").is_some()
                    && match d.get("params") {
                        None => true,
                        Some(Value::Object(p)) => p.values().all(|v| v.as_str().is_some()),
                        Some(_) => false,
                    }
            }
            Some(_) => false,
        };
        fraud
            && deep_link
            && o.field_bool("attributed").is_some()
            && o.str("match_type").and_then(MatchType::parse).is_some()
            && matches!(o.get("confidence"), Some(Value::Number(_)))
            && OPTIONAL_STRINGS.iter().all(|k| opt_string(o, k).is_ok())
            && matches!(o.get("reinstall"), None | Some(Value::Bool(_)))
    }

    /// Reads an attribution result as the server writes it.
    pub fn read(o: &Object) -> Option<AttributionResult> {
        if !Self::is_valid(o) {
            return None;
        }
        let fraud = o.get("fraud")?.as_object()?;
        let deep_link = match o.get("deep_link") {
            Some(Value::Object(d)) => Some(DeepLink {
                path: d.field_str("path")?,
                params: d
                    .get("params")
                    .and_then(Value::as_object)
                    .map(|p| p.iter().filter_map(|(k, v)| Some((k.to_owned(), v.as_str()?.to_owned()))).collect())
                    .unwrap_or_default(),
            }),
            _ => None,
        };
        let confidence = match o.get("confidence") {
            Some(Value::Number(n)) => n.as_str().parse().ok()?,
            _ => return None,
        };
        Some(AttributionResult {
            attributed: o.field_bool("attributed")?,
            match_type: MatchType::parse(o.str("match_type")?)?,
            confidence,
            campaign_id: opt_string(o, "campaign_id").ok()?,
            link_id: opt_string(o, "link_id").ok()?,
            click_id: opt_string(o, "click_id").ok()?,
            network: opt_string(o, "network").ok()?,
            deep_link,
            fraud: FraudVerdict {
                flags: fraud.get("flags")?.as_array()?.iter().filter_map(|f| f.as_str().map(str::to_owned)).collect(),
                rejected: fraud.field_bool("rejected")?,
            },
            reinstall: o.field_bool("reinstall").unwrap_or(false),
            reason: opt_string(o, "reason").ok()?,
        })
    }
}

/// The install request the SDK sends (`POST /v1/install`), borrowed; the same JSON as the
/// server's `InstallRequest`.
#[derive(Debug, Clone, Copy)]
pub struct InstallRequestView<'a> {
    pub event_id: &'a str,
    pub anonymous_id: &'a str,
    pub timestamp_ms: i64,
    pub platform: Platform,
    pub device: &'a InstallDevice,
    pub install_referrer: Option<&'a str>,
    pub referrer_click_ts: Option<i64>,
    pub install_begin_ts: Option<i64>,
    pub installed_at: Option<i64>,
    pub click_id: Option<&'a str>,
    pub consent: Option<&'a ConsentContext>,
}

impl InstallRequestView<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(512);
        let mut o = w.begin();
        o.str("event_id", self.event_id);
        o.str("anonymous_id", self.anonymous_id);
        o.str("timestamp", &super::format_millis(self.timestamp_ms));
        o.str("platform", self.platform.as_str());
        o.key("device");
        let d = self.device;
        let mut a = o.w.begin();
        for (k, v) in [
            ("idfa", &d.idfa),
            ("idfv", &d.idfv),
            ("gaid", &d.gaid),
            ("android_id", &d.android_id),
            ("os", &d.os),
            ("os_version", &d.os_version),
            ("model", &d.model),
            ("locale", &d.locale),
            ("timezone", &d.timezone),
        ] {
            a.opt_str(k, v.as_deref());
        }
        if let Some(s) = d.screen {
            a.key("screen");
            s.write(a.w);
        }
        a.end();
        o.opt_str("install_referrer", self.install_referrer);
        o.opt_i64("referrer_click_ts", self.referrer_click_ts);
        o.opt_i64("install_begin_ts", self.install_begin_ts);
        o.opt_i64("installed_at", self.installed_at);
        o.opt_str("click_id", self.click_id);
        if let Some(c) = self.consent {
            o.key("consent");
            c.write(o.w);
        }
        o.end();
        w.into_bytes()
    }
}

#[cfg(all(test, feature = "serde"))]
mod serde_agreement {
    use super::*;
    use crate::protocol::{Context, Event, InstallRequest};

    fn sample_event() -> Event {
        let text = r#"{"event_id":"6f1c2a8e-3b4d-4f6a-9c1e-2d3f4a5b6c7d","type":"add_to_cart",
            "timestamp":"2026-01-01T12:00:00.123Z","anonymous_id":"a","user_id":"u\"\n","device_id":"d",
            "session_id":"s","properties":{"sku":"A-1","n":[1,{"x":null}],"b":true,"z":"é\u0001"},
            "context":{"app":{"id":"com.example","version":"1","build":"2"},
            "device":{"os":"iOS","os_version":"18","model":"m","manufacturer":"Apple","locale":"de-DE",
            "timezone":"Europe/Berlin","screen":{"width":1,"height":2}},
            "campaign":{"utm_source":"s","utm_medium":"m","utm_campaign":"c","utm_term":"t","utm_content":"x","click_id":"k"},
            "consent":{"analytics":true,"attribution":null,"do_not_sell":false},"sdk":{"name":"n","version":"v"}}}"#;
        serde_json::from_str(text).unwrap()
    }

    fn view_json(event: &Event) -> String {
        let props: Object = crate::json::parse(&serde_json::to_string(&event.properties).unwrap(), 64)
            .unwrap()
            .as_object()
            .unwrap()
            .clone();
        let id = event.event_id.to_string();
        let c = &event.context;
        let view = EventView {
            event_id: &id,
            event_type: &event.event_type,
            timestamp_ms: event.timestamp.timestamp_millis(),
            anonymous_id: &event.anonymous_id,
            user_id: event.user_id.as_deref(),
            device_id: event.device_id.as_deref(),
            session_id: event.session_id.as_deref(),
            properties: &props,
            context: ContextRef {
                app: c.app.as_ref(),
                device: c.device.as_ref(),
                campaign: c.campaign.as_ref(),
                consent: c.consent.as_ref(),
                sdk: c.sdk.as_ref(),
                group_id: c.group_id.as_deref(),
            },
        };
        String::from_utf8(view.to_json()).unwrap()
    }

    #[test]
    fn events_write_as_serde_writes_them() {
        let event = sample_event();
        assert_eq!(view_json(&event), serde_json::to_string(&event).unwrap());
        let mut sparse = event.clone();
        sparse.user_id = None;
        sparse.device_id = None;
        sparse.context = Context::default();
        assert_eq!(view_json(&sparse), serde_json::to_string(&sparse).unwrap());
        let mut partial = event;
        partial.context.device.as_mut().unwrap().screen = None;
        partial.context.app.as_mut().unwrap().build = None;
        partial.context.consent = Some(ConsentContext { analytics: None, attribution: Some(false), do_not_sell: true });
        assert_eq!(view_json(&partial), serde_json::to_string(&partial).unwrap());
    }

    #[test]
    fn install_requests_write_as_serde_writes_them() {
        let device = InstallDevice {
            idfa: Some("A".into()),
            idfv: None,
            gaid: None,
            android_id: Some("x".into()),
            os: Some("Android".into()),
            os_version: Some("15".into()),
            model: None,
            locale: Some("de-DE".into()),
            timezone: Some("Europe/Berlin".into()),
            screen: Some(Screen { width: 1080, height: 2400 }),
        };
        for (device, referrer, ts) in
            [(device, Some("tm_click_id=k&x=1"), Some(1_700_000_000_000)), (InstallDevice::default(), None, None)]
        {
            let view = InstallRequestView {
                event_id: "6f1c2a8e-3b4d-4f6a-9c1e-2d3f4a5b6c7d",
                anonymous_id: "anon",
                timestamp_ms: 1_767_225_600_123,
                platform: Platform::Android,
                device: &device,
                install_referrer: referrer,
                referrer_click_ts: ts,
                install_begin_ts: ts.map(|t| t + 5),
                installed_at: ts.map(|t| t + 9),
                click_id: referrer.map(|_| "k"),
                consent: referrer.map(|_| &ConsentContext {
                    analytics: None,
                    attribution: Some(true),
                    do_not_sell: true,
                }),
            };
            let ours = view.to_json();
            let theirs: InstallRequest = serde_json::from_slice(&ours).unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), serde_json::to_string(&theirs).unwrap());
        }
    }

    #[test]
    fn responses_read_as_serde_reads_them() {
        let ingest = IngestResponse {
            accepted: 3,
            duplicates: 1,
            suppressed: 2,
            rejected: vec![Rejection { index: 2, reason: "bad \"x\"".into() }],
        };
        let text = serde_json::to_vec(&ingest).unwrap();
        assert_eq!(IngestResponse::from_json(&text), Some(ingest));
        assert_eq!(
            IngestResponse::from_json(br#"{"accepted":1,"duplicates":0}"#),
            Some(IngestResponse { accepted: 1, duplicates: 0, suppressed: 0, rejected: vec![] })
        );
        for bad in [
            &b"<html>"[..],
            b"{}",
            br#"{"accepted":-1,"duplicates":0}"#,
            br#"{"accepted":1,"duplicates":0,"rejected":{}}"#,
            br#"{"accepted":1,"duplicates":0,"suppressed":-1}"#,
        ] {
            assert_eq!(IngestResponse::from_json(bad), None);
            assert!(serde_json::from_slice::<IngestResponse>(bad).is_err());
        }
        let result = AttributionResult {
            attributed: true,
            match_type: MatchType::Fingerprint,
            confidence: 0.625,
            campaign_id: Some("c".into()),
            link_id: None,
            click_id: Some("k".into()),
            network: None,
            deep_link: Some(DeepLink { path: "/p".into(), params: [("a".to_owned(), "b".to_owned())].into() }),
            fraud: FraudVerdict { flags: vec!["ctit".into()], rejected: false },
            reinstall: true,
            reason: None,
        };
        let text = serde_json::to_string(&result).unwrap();
        let parsed = crate::json::parse(&text, 64).unwrap();
        assert_eq!(AttributionResult::read(parsed.as_object().unwrap()), Some(result.clone()));
        let organic = serde_json::to_string(&AttributionResult::organic(FraudVerdict::default())).unwrap();
        let parsed = crate::json::parse(&organic, 64).unwrap();
        assert!(AttributionResult::is_valid(parsed.as_object().unwrap()));
        let parsed = crate::json::parse(r#"{"attributed":true}"#, 64).unwrap();
        assert!(!AttributionResult::is_valid(parsed.as_object().unwrap()));
    }

    #[test]
    fn drop_reports_and_consent_write_as_serde_writes_them() {
        let d = DropReport { queue_full: 1, expired: 2, pre_consent_full: 3, invalid: 4, backpressure: 5 };
        let mut w = Writer::new();
        d.write(&mut w);
        assert_eq!(w.into_string(), serde_json::to_string(&d).unwrap());
        let c = ConsentContext { analytics: Some(true), attribution: None, do_not_sell: true };
        assert_eq!(c.to_json(), serde_json::to_string(&c).unwrap());
    }

    #[test]
    fn timestamps_format_as_chrono_formats_them() {
        use chrono::{DateTime, SecondsFormat};
        let mut x: i64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = x.rem_euclid(253_402_300_800_000 + 62_167_219_200_000) - 62_167_219_200_000;
            let chrono = DateTime::from_timestamp_millis(ms).unwrap().to_rfc3339_opts(SecondsFormat::Millis, true);
            assert_eq!(crate::time::format_millis(ms), chrono, "{ms}");
        }
        for date in
            ["Sun, 06 Nov 1994 08:49:37 GMT", "Wed, 01 Jan 2031 00:00:00 GMT", "Tue, 29 Feb 2028 23:59:59 +0130"]
        {
            let chrono = DateTime::parse_from_rfc2822(date).unwrap().timestamp_millis();
            assert_eq!(crate::time::parse_http_date(date), Some(chrono), "{date}");
        }
    }
}
