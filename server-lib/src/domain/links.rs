//! Campaigns, links and clicks: what a link may point to, where a visitor goes, and what a click
//! request says. Pure; the service stores and indexes, the HTTP layer reads requests.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;
use trailmark_core::protocol::DeepLink;

use crate::domain::attribution::OsFamily;
use crate::domain::error::Refusal;
use crate::domain::records::{Destinations, LinkRecord, Utm, device_id_form};

/// Longest destination URL.
pub const MAX_URL: usize = 2048;

/// Longest name, utm value or click parameter.
pub const MAX_TEXT: usize = 256;

/// Most query parameters read from a click URL.
pub const MAX_CLICK_PARAMS: usize = 64;

pub fn check_text(field: &str, value: &str, max: usize) -> Result<(), Refusal> {
    if value.trim().is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(Refusal::invalid(
            "invalid_field",
            format!("{field} must be 1 to {max} characters without control characters"),
        ));
    }
    Ok(())
}

/// Destinations are absolute `http(s)` URLs or app schemes; never `javascript:`, `data:` and
/// the like.
pub fn check_url(field: &str, value: &str) -> Result<(), Refusal> {
    let bad = |why: &str| Refusal::invalid("invalid_destination", format!("{field}: {why}"));
    if value.len() > MAX_URL {
        return Err(bad(&format!("longer than {MAX_URL} bytes")));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("spaces and control characters are not allowed; percent-encode them"));
    }
    let url = url::Url::parse(value).map_err(|e| bad(&e.to_string()))?;
    match url.scheme() {
        "javascript" | "data" | "file" | "vbscript" | "blob" | "about" | "filesystem" => {
            Err(bad("this URL scheme is not allowed"))
        }
        "http" | "https" if url.host_str().is_none_or(str::is_empty) => Err(bad("the URL has no host")),
        _ => Ok(()),
    }
}

pub fn check_link_parts(utm: &Utm, destinations: &Destinations, deep_link: Option<&DeepLink>) -> Result<(), Refusal> {
    for (k, v) in utm.pairs() {
        check_text(k, v, MAX_TEXT)?;
    }
    check_url("destinations.web", &destinations.web)?;
    if let Some(ios) = &destinations.ios {
        check_url("destinations.ios", ios)?;
    }
    if let Some(android) = &destinations.android {
        check_url("destinations.android", android)?;
    }
    if let Some(d) = deep_link {
        check_text("deep_link.path", &d.path, 1024)?;
        if d.params.len() > 32 {
            return Err(Refusal::invalid("invalid_field", "deep_link.params holds at most 32 entries"));
        }
        for (k, v) in &d.params {
            check_text("deep_link.params key", k, MAX_TEXT)?;
            if v.chars().count() > MAX_TEXT {
                return Err(Refusal::invalid("invalid_field", format!("deep_link.params.{k} is too long")));
            }
        }
    }
    Ok(())
}

pub fn random_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// An 8-character base-62 code (about 2 × 10^14 values).
pub fn random_code() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut n = uuid::Uuid::new_v4().as_u128();
    (0..8)
        .map(|_| {
            let c = ALPHABET[(n % 62) as usize] as char;
            n /= 62;
            c
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewCampaign {
    pub name: String,
    pub network: String,
    #[serde(default)]
    pub app_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewLink {
    pub campaign_id: String,
    #[serde(default)]
    pub utm: Utm,
    pub destinations: Destinations,
    #[serde(default)]
    pub deep_link: Option<DeepLink>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkChange {
    #[serde(default)]
    pub utm: Option<Utm>,
    #[serde(default)]
    pub destinations: Option<Destinations>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// Ad-network click ids kept with a click.
pub const NETWORK_CLICK_IDS: &[&str] = &[
    "clickid",
    "click_id",
    "gclid",
    "gbraid",
    "wbraid",
    "fbclid",
    "ttclid",
    "msclkid",
    "twclid",
    "li_fat_id",
    "sccid",
    "irclickid",
    "dclid",
    "yclid",
];

/// Sub-parameters kept with a click.
pub const SUB_PARAMS: &[&str] = &[
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
    "sub_id",
    "site_id",
    "publisher_id",
    "creative_id",
    "creative",
    "adset_id",
    "adgroup_id",
    "ad_id",
    "placement",
    "keyword",
];

/// Device and advertising ids accepted on a click, with the kind they are stored as, in order of
/// preference.
pub const DEVICE_PARAMS: &[(&str, &str)] = &[
    ("idfa", "idfa"),
    ("gaid", "gaid"),
    ("adid", "gaid"),
    ("aaid", "gaid"),
    ("android_id", "android_id"),
    ("idfv", "idfv"),
];

/// What a click request says besides the link.
#[derive(Debug, Default)]
pub struct ClickFacts {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
    pub referrer: Option<String>,
    pub accept_language: Option<String>,
    /// (kind, id): the preferred device or advertising id given.
    pub device: Option<(String, String)>,
    pub network_ids: BTreeMap<String, String>,
    pub sub_params: BTreeMap<String, String>,
    pub timezone: Option<String>,
    pub screen: Option<String>,
}

fn clip(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty() && v.len() <= MAX_TEXT && !v.chars().any(char::is_control)).then(|| v.to_owned())
}

impl ClickFacts {
    /// The facts of a visit to a tracking link: the visitor's address, the request's
    /// `User-Agent`, `Referer` and `Accept-Language`, and the click URL's query parameters.
    pub fn of_visit(
        ip: Option<IpAddr>,
        user_agent: Option<&str>,
        referrer: Option<&str>,
        accept_language: Option<&str>,
        query: Option<&str>,
    ) -> Self {
        let mut facts = ClickFacts {
            ip,
            user_agent: user_agent.and_then(clip_long),
            referrer: referrer.and_then(clip_long),
            accept_language: accept_language.and_then(clip_long),
            ..Default::default()
        };
        let pairs = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()).take(MAX_CLICK_PARAMS);
        for (k, v) in pairs {
            facts.param(&k, &v);
        }
        facts
    }

    /// The facts of a server-to-server click.
    pub fn of_s2s(req: &S2sClick) -> Result<Self, Refusal> {
        let ip = match req.ip.as_deref() {
            Some(text) => Some(
                text.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| Refusal::invalid("invalid_field", format!("ip {text:?} is not an address")))?,
            ),
            None => None,
        };
        let mut facts = ClickFacts {
            ip,
            user_agent: req.user_agent.as_deref().and_then(clip_long),
            referrer: req.referrer.as_deref().and_then(clip_long),
            accept_language: req.accept_language.as_deref().and_then(clip),
            ..Default::default()
        };
        for (k, v) in &req.device {
            if !DEVICE_PARAMS.iter().any(|(p, _)| p == k) {
                return Err(Refusal::invalid("invalid_field", format!("device.{k} is not a known id")));
            }
            facts.param(k, v);
        }
        for (k, v) in req.network_ids.iter().chain(&req.sub_params).take(MAX_CLICK_PARAMS) {
            if let Some(v) = clip(v) {
                if req.network_ids.contains_key(k) {
                    facts.network_ids.insert(k.chars().take(64).collect(), v);
                } else {
                    facts.sub_params.insert(k.chars().take(64).collect(), v);
                }
            }
        }
        Ok(facts)
    }

    fn param(&mut self, key: &str, value: &str) {
        let Some(v) = clip(value) else { return };
        if let Some((_, kind)) = DEVICE_PARAMS.iter().find(|(k, _)| *k == key) {
            let rank = |kind: &str| DEVICE_PARAMS.iter().position(|(_, k)| *k == kind);
            if self.device.as_ref().is_none_or(|(have, _)| rank(kind) < rank(have)) {
                self.device = Some(((*kind).to_owned(), device_id_form(&v)));
            }
        } else if NETWORK_CLICK_IDS.contains(&key) {
            self.network_ids.insert(key.to_owned(), v);
        } else if SUB_PARAMS.contains(&key) {
            self.sub_params.insert(key.to_owned(), v);
        } else if key == "tz" {
            self.timezone = Some(v);
        } else if key == "screen" {
            self.screen = Some(v.to_ascii_lowercase());
        }
    }
}

fn clip_long(v: &str) -> Option<String> {
    let v = v.trim();
    (!v.is_empty()).then(|| v.chars().take(1024).collect())
}

/// Where a visitor on `os` goes: iOS to the App Store destination, Android to the Play
/// destination with the install referrer, everyone else to the web destination with
/// `tm_click_id`. Only the link record decides the destination.
pub fn destination(link: &LinkRecord, os: OsFamily, click_id: Option<&str>) -> String {
    let web = || match click_id {
        Some(id) => append_query(&link.destinations.web, &[("tm_click_id", id)]),
        None => link.destinations.web.clone(),
    };
    match os {
        OsFamily::Ios => link.destinations.ios.clone().unwrap_or_else(web),
        OsFamily::Android => match &link.destinations.android {
            Some(play) => {
                let mut referrer = url::form_urlencoded::Serializer::new(String::new());
                if let Some(id) = click_id {
                    referrer.append_pair("tm_click_id", id);
                }
                for (k, v) in link.utm.pairs() {
                    referrer.append_pair(k, v);
                }
                append_query(play, &[("referrer", &referrer.finish())])
            }
            None => web(),
        },
        _ => web(),
    }
}

/// Appends URL-encoded pairs to the query of a destination (validated as a URL when the link
/// was saved), before any fragment.
pub fn append_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let (head, fragment) = match base.find('#') {
        Some(i) => base.split_at(i),
        None => (base, ""),
    };
    let mut out = String::with_capacity(base.len() + 64);
    out.push_str(head);
    // The query starts at the first `?`; a later `?` is a character of it (`?ref=a?`).
    let mut sep = match head.split_once('?') {
        None => '?',
        Some((_, query)) if query.is_empty() || query.ends_with('&') => '\0',
        Some(_) => '&',
    };
    for (k, v) in pairs {
        if sep != '\0' {
            out.push(sep);
        }
        out.extend(url::form_urlencoded::byte_serialize(k.as_bytes()));
        out.push('=');
        out.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
        sep = '&';
    }
    out.push_str(fragment);
    out
}

#[cfg(test)]
mod tests {
    use super::append_query;

    #[test]
    fn query_pairs_are_appended_before_the_fragment() {
        let p = [("tm_click_id", "a b")];
        assert_eq!(append_query("https://x.example/l", &p), "https://x.example/l?tm_click_id=a+b");
        assert_eq!(append_query("https://x.example/l?y=1", &p), "https://x.example/l?y=1&tm_click_id=a+b");
        assert_eq!(append_query("https://x.example/l?", &p), "https://x.example/l?tm_click_id=a+b");
        assert_eq!(append_query("https://x.example/l?y=1#top", &p), "https://x.example/l?y=1&tm_click_id=a+b#top");
        assert_eq!(
            append_query("myapp://open", &[("r", "tm_click_id=1&utm_source=x")]),
            "myapp://open?r=tm_click_id%3D1%26utm_source%3Dx"
        );
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S2sClick {
    pub link_id: String,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
    #[serde(default)]
    pub accept_language: Option<String>,
    #[serde(default)]
    pub referrer: Option<String>,
    /// `idfa`, `gaid`, `android_id`, `idfv`.
    #[serde(default)]
    pub device: BTreeMap<String, String>,
    #[serde(default)]
    pub network_ids: BTreeMap<String, String>,
    #[serde(default)]
    pub sub_params: BTreeMap<String, String>,
}

impl S2sClick {
    /// `click` (the default) or `impression`.
    pub fn kind(&self) -> Result<&'static str, Refusal> {
        match self.kind.as_deref() {
            None | Some("click") => Ok("click"),
            Some("impression") => Ok("impression"),
            Some(other) => Err(Refusal::invalid("invalid_field", format!("kind {other:?}: use click or impression"))),
        }
    }
}
