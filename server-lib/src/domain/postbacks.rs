//! Postback templates: which macros a network's URL may use, how they are filled, and the
//! delivery policy. Pure; the sender lives in `service::postbacks`.

use std::collections::BTreeMap;
use std::time::Duration;

/// A network's postback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostbackConfig {
    /// The campaign network it is for (case-insensitive).
    pub network: String,
    /// URL template, e.g. `https://net.example/pb?click={network_click_id}&ev={event}&rev={revenue}`.
    pub url: String,
    /// Events that trigger it: `install`, `reengagement`, or conversion event types. Empty:
    /// every one.
    pub events: Vec<String>,
}

/// Delivery policy, with defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostbackPolicy {
    /// Attempts before a postback is marked failed. Default 8.
    pub max_attempts: u32,
    /// First retry delay ceiling; it doubles each time up to `max_delay`. Defaults 2 s, 10 min.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Per-request timeout. Default 10 s.
    pub timeout: Duration,
    /// Deliveries in flight at once. Default 32.
    pub concurrency: usize,
}

impl Default for PostbackPolicy {
    fn default() -> Self {
        PostbackPolicy {
            max_attempts: 8,
            min_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
            concurrency: 32,
        }
    }
}

/// The macros a template may use.
pub const MACROS: &[&str] = &[
    "app_id",
    "event",
    "event_id",
    "event_ts",
    "install_ts",
    "click_id",
    "network_click_id",
    "campaign_id",
    "link_id",
    "network",
    "platform",
    "match_type",
    "revenue",
    "currency",
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
];

/// Checks a template: absolute http(s) URL, only known macros.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').ok_or_else(|| format!("unclosed macro in {template:?}"))? + open;
        let name = &rest[open + 1..close];
        if !MACROS.contains(&name) {
            return Err(format!("unknown macro {{{name}}} in {template:?}; known: {}", MACROS.join(", ")));
        }
        rest = &rest[close + 1..];
    }
    let filled = fill(template, &BTreeMap::new());
    match url::Url::parse(&filled) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        _ => Err(format!("{template:?} is not an absolute http(s) URL")),
    }
}

/// Replaces each `{macro}` with its URL-encoded value (empty when unknown).
pub fn fill(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}').map(|c| c + open) else { break };
        let name = &rest[open + 1..close];
        if let Some(v) = values.get(name) {
            out.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// The macros every postback has.
pub fn base_values(app_id: &str, event: &str, event_id: &str, ts: i64) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        ("app_id", app_id.to_owned()),
        ("event", event.to_owned()),
        ("event_id", event_id.to_owned()),
        ("event_ts", (ts / 1000).to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill_and_encode() {
        let t = "https://net.example/pb?c={network_click_id}&e={event}&r={revenue}&x={sub1}";
        check_template(t).unwrap();
        let values = BTreeMap::from([
            ("network_click_id", "a b&c=d".to_owned()),
            ("event", "purchase".to_owned()),
            ("revenue", "9.5".to_owned()),
        ]);
        assert_eq!(fill(t, &values), "https://net.example/pb?c=a+b%26c%3Dd&e=purchase&r=9.5&x=");
        assert!(check_template("https://x.example/{nope}").unwrap_err().contains("unknown macro"));
        assert!(check_template("ftp://x.example/{event}").is_err());
        assert!(check_template("https://x.example/{event").is_err());
    }
}
