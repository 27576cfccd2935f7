//! Click URLs and their parameters, on both sides.
//!
//! Server: a visit to a tracking link (`ClickFacts::of_visit` on the URL's query and the
//! request's headers, then the pure part of `service::links::record`: user agent, OS family,
//! bot check, device model, locale), a server-to-server click body (`S2sClick`,
//! `ClickFacts::of_s2s`), and a link's redirect (`NewLink` checked by `check_link_parts`, then
//! `destination` for each platform). Bodies are raw bytes or the JSON of fuzzed fields (URLs
//! from fuzzed parts), so the checks behind the JSON parser are reached.
//!
//! SDK: the URL splitter and form codec (`urls`), the endpoint check (`Config::validate`),
//! and a deep link or page location read into an event's campaign (`handle_open_url`,
//! `page_view`).
//!
//! Properties: nothing panics; kept click parameters are short, trimmed, without control
//! characters; a redirect always has a valid `Location` that carries the click id; the form
//! codec round-trips; plain `http` endpoints are accepted only for hosts the `url` crate also
//! reads as loopback; every event the SDK records from a URL passes the server's schema.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value, json};
use trailmark_core::urls::{Url, form_decode, form_encode, with_query};
use trailmark_core::{Config, Engine, MemoryStore};
use trailmark_server::domain::attribution::OsFamily;
use trailmark_server::domain::attribution::matching::normalize_locale;
use trailmark_server::domain::enrich;
use trailmark_server::domain::links::{
    ClickFacts, DEVICE_PARAMS, MAX_CLICK_PARAMS, MAX_TEXT, NewLink, S2sClick, check_link_parts, destination,
};
use trailmark_server::domain::records::LinkRecord;
use trailmark_server::http::extract::{parse_as, query_param};

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    /// `GET /c/{code}?{query}` with these headers.
    Visit { target: &'a str, user_agent: Option<&'a str>, referrer: Option<&'a str>, language: Option<&'a str> },
    /// `POST /v1/click` body.
    S2s(Body<'a, S2sFields<'a>>),
    /// `POST /v1/links` body, then a visitor on each platform.
    Link { body: Body<'a, LinkFields<'a>>, click: Option<u128> },
    /// A deep link or a page location handed to the SDK.
    Sdk { url: &'a str, title: Option<&'a str>, referrer: Option<&'a str>, page: bool },
    /// An SDK endpoint.
    Endpoint(&'a str),
    /// The SDK's form codec.
    Form { base: &'a str, pairs: Vec<(&'a str, &'a str)> },
}

/// A JSON request body: any bytes, or the JSON of fields the fuzzer chose.
#[derive(Arbitrary, Debug)]
enum Body<'a, F> {
    Raw(&'a [u8]),
    Fields(F),
}

impl<F: ToJson> Body<'_, F> {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Raw(raw) => raw.to_vec(),
            Body::Fields(fields) => fields.to_json().to_string().into_bytes(),
        }
    }
}

trait ToJson {
    fn to_json(&self) -> Value;
}

#[derive(Arbitrary, Debug)]
struct S2sFields<'a> {
    link_id: &'a str,
    kind: Option<&'a str>,
    ip: Option<&'a str>,
    user_agent: Option<&'a str>,
    accept_language: Option<&'a str>,
    referrer: Option<&'a str>,
    /// Keys: an index into `DEVICE_PARAMS`, past it the text.
    device: Vec<(u8, &'a str, &'a str)>,
    network_ids: Vec<(&'a str, &'a str)>,
    sub_params: Vec<(&'a str, &'a str)>,
}

impl ToJson for S2sFields<'_> {
    fn to_json(&self) -> Value {
        let device: Map<String, Value> = self
            .device
            .iter()
            .map(|(i, k, v)| (DEVICE_PARAMS.get(usize::from(*i)).map_or(*k, |(p, _)| *p).to_owned(), json!(v)))
            .collect();
        let pairs = |p: &[(&str, &str)]| p.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<Map<_, _>>();
        let mut body = json!({"link_id": self.link_id, "device": device,
            "network_ids": pairs(&self.network_ids), "sub_params": pairs(&self.sub_params)});
        for (key, value) in [
            ("kind", self.kind),
            ("ip", self.ip),
            ("user_agent", self.user_agent),
            ("accept_language", self.accept_language),
            ("referrer", self.referrer),
        ] {
            if let Some(v) = value {
                body[key] = json!(v);
            }
        }
        body
    }
}

/// A URL from parts (a scheme from a list, or any text), or any text.
#[derive(Arbitrary, Debug)]
enum UrlText<'a> {
    Parts {
        scheme: u8,
        host: &'a str,
        port: Option<u16>,
        path: &'a str,
        query: Option<&'a str>,
        fragment: Option<&'a str>,
    },
    Text(&'a str),
}

const SCHEMES: &[&str] = &["https", "http", "myapp", "intent", "market", "javascript", "data", "HTTPS"];

impl UrlText<'_> {
    fn text(&self) -> String {
        match self {
            UrlText::Text(t) => (*t).to_owned(),
            UrlText::Parts { scheme, host, port, path, query, fragment } => {
                let mut url = format!("{}://{host}", SCHEMES[usize::from(*scheme) % SCHEMES.len()]);
                if let Some(p) = port {
                    url.push_str(&format!(":{p}"));
                }
                url.push('/');
                url.push_str(path);
                if let Some(q) = query {
                    url.push('?');
                    url.push_str(q);
                }
                if let Some(f) = fragment {
                    url.push('#');
                    url.push_str(f);
                }
                url
            }
        }
    }
}

#[derive(Arbitrary, Debug)]
struct LinkFields<'a> {
    web: UrlText<'a>,
    ios: Option<UrlText<'a>>,
    android: Option<UrlText<'a>>,
    utm: [Option<&'a str>; 5],
    deep_link: Option<(&'a str, Vec<(&'a str, &'a str)>)>,
}

impl ToJson for LinkFields<'_> {
    fn to_json(&self) -> Value {
        let mut destinations = json!({"web": self.web.text()});
        if let Some(ios) = &self.ios {
            destinations["ios"] = json!(ios.text());
        }
        if let Some(android) = &self.android {
            destinations["android"] = json!(android.text());
        }
        let utm: Map<String, Value> = ["source", "medium", "campaign", "term", "content"]
            .iter()
            .zip(&self.utm)
            .filter_map(|(k, v)| v.map(|v| ((*k).to_owned(), json!(v))))
            .collect();
        let mut body = json!({"campaign_id": "cmp_1", "destinations": destinations, "utm": utm});
        if let Some((path, params)) = &self.deep_link {
            let params: Map<String, Value> = params.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
            body["deep_link"] = json!({"path": path, "params": params});
        }
        body
    }
}

const T0: i64 = 1_767_225_600_000;

fn check_kept(value: &str) {
    assert!(!value.is_empty() && value.len() <= MAX_TEXT, "{value:?}");
    assert_eq!(value, value.trim());
    assert!(!value.chars().any(char::is_control), "{value:?}");
}

/// The pure part of `service::links::record`.
fn record_steps(facts: &ClickFacts, s2s: bool) {
    for v in facts.network_ids.values().chain(facts.sub_params.values()) {
        check_kept(v);
    }
    assert!(facts.network_ids.len() + facts.sub_params.len() <= MAX_CLICK_PARAMS);
    if let Some((_, id)) = &facts.device {
        check_kept(id);
    }
    let ua = facts.user_agent.as_deref();
    let parsed = ua.map(enrich::parse_user_agent).unwrap_or_default();
    let _os = OsFamily::of(parsed.os.as_deref());
    let _bot = !(ua.is_none() && s2s) && enrich::is_bot(ua, &parsed);
    let _model = ua.and_then(enrich::device_model);
    let _locale = facts.accept_language.as_deref().map(normalize_locale);
    let _ = serde_json::json!({"n": facts.network_ids, "s": facts.sub_params}).to_string();
}

fn visit(target: &str, user_agent: Option<&str>, referrer: Option<&str>, language: Option<&str>) {
    // The router's view of the request target.
    let Ok(uri) = format!("/c/{target}").parse::<http::Uri>() else { return };
    let facts = ClickFacts::of_visit(Some([192, 0, 2, 1].into()), user_agent, referrer, language, uri.query());
    for v in [&facts.user_agent, &facts.referrer, &facts.accept_language].into_iter().flatten() {
        assert!(!v.is_empty() && v.chars().count() <= 1024);
    }
    let _ = query_param(uri.query(), "link");
    record_steps(&facts, false);
}

fn s2s(body: &[u8]) {
    let Ok(req) = parse_as::<S2sClick>(body) else { return };
    let _ = req.kind();
    if let Ok(facts) = ClickFacts::of_s2s(&req) {
        record_steps(&facts, true);
    }
}

fn link(body: &[u8], click: Option<u128>) {
    let Ok(req) = parse_as::<NewLink>(body) else { return };
    if check_link_parts(&req.utm, &req.destinations, req.deep_link.as_ref()).is_err() {
        return;
    }
    let link = LinkRecord {
        link_id: "lnk_1".into(),
        code: "AbCd1234".into(),
        campaign_id: "cmp_1".into(),
        app_id: trailmark_fuzz::APP.into(),
        network: "net".into(),
        utm: req.utm,
        destinations: req.destinations,
        deep_link: req.deep_link,
        enabled: true,
        created_at: T0,
        updated_at: T0,
    };
    let click_id = click.map(|c| format!("{c:032x}"));
    for os in [OsFamily::Ios, OsFamily::Android, OsFamily::Other, OsFamily::Unknown] {
        let to = destination(&link, os, click_id.as_deref());
        // `redirect` drops a Location the header type refuses: the visitor would be stranded.
        assert!(http::HeaderValue::from_str(&to).is_ok(), "no Location for {to:?}");
        let Some(id) = &click_id else { continue };
        let parsed = url::Url::parse(&to).unwrap_or_else(|e| panic!("redirect to {to:?}: {e}"));
        let carried = match (os, &link.destinations.ios, &link.destinations.android) {
            (OsFamily::Ios, Some(_), _) => continue, // the App Store URL as configured
            (OsFamily::Android, _, Some(_)) => parsed
                .query_pairs()
                .filter(|(k, _)| k == "referrer")
                .any(|(_, r)| url::form_urlencoded::parse(r.as_bytes()).any(|(k, v)| k == "tm_click_id" && v == *id)),
            _ => parsed.query_pairs().any(|(k, v)| k == "tm_click_id" && v == *id),
        };
        assert!(carried, "{to:?} lost the click id");
    }
}

fn sdk(url: &str, title: Option<&str>, referrer: Option<&str>, page: bool) {
    if let Ok(parsed) = Url::parse(url) {
        let _ = parsed.query_pairs().count();
        let _ = parsed.is_loopback();
    }
    let config = Config::new("app", "secret", "https://collect.example");
    let mut engine = Engine::open(config, MemoryStore::new(), T0, [7; 32]).expect("opens");
    let recorded = if page {
        engine.page_view(T0, url, title, referrer, Default::default())
    } else {
        engine.handle_open_url(T0, url)
    };
    assert_eq!(recorded.is_ok(), Url::parse(url).is_ok());
    engine.persist().expect("memory store");
    for stored in engine.store_mut().events() {
        let event: serde_json::Value = serde_json::from_slice(&stored.body).expect("the SDK writes JSON");
        if let Err(e) = trailmark_fuzz::validators().event(trailmark_fuzz::APP, &event) {
            panic!("the server refuses an event the SDK recorded: {e}\n{event}");
        }
    }
}

fn endpoint(text: &str) {
    let ours = Config::new("app", "secret", text).validate();
    let Ok(upload) = ours else { return };
    assert!(upload.ends_with("/v1/event"));
    if text.get(..5).is_some_and(|s| s.eq_ignore_ascii_case("http:")) {
        let loopback = url::Url::parse(text).ok().is_some_and(|u| match u.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        });
        assert!(loopback, "plain http accepted for {text:?}, whose host is not loopback");
    }
}

fn form(base: &str, pairs: &[(&str, &str)]) {
    for (k, v) in pairs {
        let mut encoded = String::new();
        form_encode(&mut encoded, k);
        assert_eq!(form_decode(&encoded), *k);
        encoded.clear();
        form_encode(&mut encoded, v);
        assert_eq!(form_decode(&encoded), *v);
        let _ = form_decode(v);
    }
    let url = with_query(base, pairs);
    if base.contains('#') || pairs.is_empty() {
        return;
    }
    // The pairs come back last, in order, from the query they were appended to.
    if let Ok(parsed) = Url::parse(&url) {
        let back: Vec<(String, String)> = parsed.query_pairs().collect();
        let tail = &back[back.len().saturating_sub(pairs.len())..];
        let expected: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(tail, &expected[..], "{url}");
    }
}

fuzz_target!(|input: Input| {
    match input {
        Input::Visit { target, user_agent, referrer, language } => visit(target, user_agent, referrer, language),
        Input::S2s(body) => s2s(&body.bytes()),
        Input::Link { body, click } => link(&body.bytes(), click),
        Input::Sdk { url, title, referrer, page } => sdk(url, title, referrer, page),
        Input::Endpoint(text) => endpoint(text),
        Input::Form { base, pairs } => form(base, &pairs),
    }
});
