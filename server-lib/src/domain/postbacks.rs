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

/// Delivery policy, with defaults. Each network has its own queue and its own requests in
/// flight, so a network that is down or slow only delays its own postbacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostbackPolicy {
    /// Attempts before a postback is marked failed. Default 8.
    pub max_attempts: u32,
    /// First retry delay ceiling; it doubles each time up to `max_delay`. Defaults 2 s, 10 min.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// Per-request timeout (connecting, sending and reading the answer). Default 10 s.
    pub timeout: Duration,
    /// Requests in flight at once, per network. Default 8.
    pub concurrency: usize,
    /// Postbacks one network may hold in memory (waiting, waiting for a retry, or in flight).
    /// A postback past it stays `pending` in storage, is counted
    /// (`trailmark_postbacks_overflow_total`) and logged, and is read again once the network's
    /// queue has drained. Default 10 000.
    pub queue: usize,
}

impl Default for PostbackPolicy {
    fn default() -> Self {
        PostbackPolicy {
            max_attempts: 8,
            min_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
            concurrency: 8,
            queue: 10_000,
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

/// Why a postback template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed macro in {template:?}")]
    Unclosed { template: String },
    #[error("unknown macro {{{name}}} in {template:?}; known: {known}", known = MACROS.join(", "))]
    UnknownMacro { name: String, template: String },
    #[error(
        "macro {{{name}}} is in the scheme, host or port of {template:?}: where a postback goes is fixed by the \
         template, so macros may only be in the path and the query"
    )]
    MacroInAuthority { name: String, template: String },
    #[error("{template:?} is not an absolute http(s) URL")]
    NotHttpUrl { template: String },
}

/// The macro names of a template, in order.
fn macro_names(template: &str) -> Result<Vec<&str>, TemplateError> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').ok_or_else(|| TemplateError::Unclosed { template: template.into() })? + open;
        names.push(&rest[open + 1..close]);
        rest = &rest[close + 1..];
    }
    Ok(names)
}

/// Where the scheme and authority (user info, host, port) of a URL text end: after the scheme's
/// `:`, any slashes (and backslashes, which browsers and the URL standard read as slashes), then
/// up to the first `/`, `\\`, `?` or `#`.
fn authority_end(template: &str) -> usize {
    let Some(colon) = template.find(':') else { return template.len() };
    let after = &template[colon + 1..];
    let skipped = after.len() - after.trim_start_matches(['/', '\\']).len();
    let start = colon + 1 + skipped;
    template[start..].find(['/', '\\', '?', '#']).map_or(template.len(), |i| start + i)
}

/// The parts of a URL that decide where a request goes.
fn destination(url: &url::Url) -> (String, String, Option<String>, Option<url::Host<&str>>, Option<u16>) {
    (url.scheme().to_owned(), url.username().to_owned(), url.password().map(str::to_owned), url.host(), url.port())
}

/// Checks a template: an absolute http(s) URL, only known macros, and none in the scheme, user
/// info, host or port (the operator's template decides where postbacks go, never a value).
pub fn check_template(template: &str) -> Result<(), TemplateError> {
    let names = macro_names(template)?;
    if let Some(name) = names.iter().find(|n| !MACROS.contains(n)) {
        return Err(TemplateError::UnknownMacro { name: (*name).into(), template: template.into() });
    }
    let end = authority_end(template);
    if let Some(open) = template[..end].find('{') {
        let name = macro_names(&template[open..]).ok().and_then(|n| n.first().map(|s| (*s).to_owned()));
        return Err(TemplateError::MacroInAuthority { name: name.unwrap_or_default(), template: template.into() });
    }
    let not_http = || TemplateError::NotHttpUrl { template: template.into() };
    let empty = url::Url::parse(&fill(template, &BTreeMap::new())).map_err(|_| not_http())?;
    if !matches!(empty.scheme(), "http" | "https") || empty.host().is_none() {
        return Err(not_http());
    }
    // Whatever a value holds, the request goes to the same place.
    for name in names {
        let probe = BTreeMap::from([(name, "x/@evil.example:1?#\\..".to_owned())]);
        let filled = url::Url::parse(&fill(template, &probe)).map_err(|_| not_http())?;
        if destination(&filled) != destination(&empty) {
            return Err(TemplateError::MacroInAuthority { name: name.into(), template: template.into() });
        }
    }
    Ok(())
}

/// Replaces each `{macro}` with its percent-encoded value (empty when unknown). Every byte but
/// ASCII letters, digits and `*-._` is encoded, so a value cannot add a `/`, `?`, `#`, `@` or
/// `:`; in the path, a value that is only `.` or `..` (a dot segment, which URL parsers resolve)
/// is left out. A value can therefore change neither the host nor the path's segments.
pub fn fill(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    let mut in_path = true;
    while let Some(open) = rest.find('{') {
        let literal = &rest[..open];
        in_path &= !literal.contains(['?', '#']);
        out.push_str(literal);
        let Some(close) = rest[open..].find('}').map(|c| c + open) else { break };
        let name = &rest[open + 1..close];
        if let Some(v) = values.get(name).filter(|v| !(in_path && matches!(v.as_str(), "." | ".."))) {
            out.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// A postback URL as logs show it: scheme, host, port and path, and the query's keys with
/// their values left out (`https://host/pb?click=…&rev=…`); no user info, no fragment.
pub fn redact_url(url: &str) -> String {
    let Ok(parsed) = url::Url::parse(url) else { return "(not a URL)".into() };
    let mut out = format!("{}://{}", parsed.scheme(), parsed.host_str().unwrap_or_default());
    if let Some(port) = parsed.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(parsed.path());
    if let Some(query) = parsed.query() {
        let pairs: Vec<String> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}=…"),
                None => "…".to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
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
        assert!(matches!(check_template("https://x.example/{nope}"), Err(TemplateError::UnknownMacro { .. })));
        assert!(check_template("https://x.example/{nope}").unwrap_err().to_string().contains("known: app_id"));
        assert!(matches!(check_template("ftp://x.example/{event}"), Err(TemplateError::NotHttpUrl { .. })));
        assert!(matches!(check_template("https://x.example/{event"), Err(TemplateError::Unclosed { .. })));
    }

    #[test]
    fn macros_in_the_scheme_host_port_or_user_info_are_refused() {
        for t in [
            "https://{sub1}.net.example/pb",
            "https://net.example{sub1}/pb",
            "https://net.example:{sub1}/pb",
            "https://{sub1}@net.example/pb",
            "https://user:{sub1}@net.example/pb",
            "{sub1}://net.example/pb",
            "https:{sub1}/pb",
            "https:\\\\{sub1}/pb",
            "https:///{sub1}/pb",
        ] {
            match check_template(t) {
                Err(TemplateError::MacroInAuthority { name, .. }) => assert_eq!(name, "sub1", "{t}"),
                other => panic!("{t}: {other:?}"),
            }
        }
        let message = check_template("https://{click_id}.example/").unwrap_err().to_string();
        assert!(message.contains("{click_id}") && message.contains("path and the query"), "{message}");
        // Path and query are fine, and so is a literal port or user.
        check_template("https://user@net.example:8443/pb/{sub1}/x?c={click_id}#{event}").unwrap();
    }

    /// What a value does to the request, whatever it holds: the host, port and path segments stay
    /// the template's, and the value comes back whole from the query.
    #[test]
    fn a_value_cannot_move_a_postback_to_another_host_or_path() {
        let t = "https://net.example:8443/pb/{network_click_id}/x?c={click_id}&s={sub1}";
        check_template(t).unwrap();
        for evil in [
            "evil.com/",
            "@evil.com",
            "//evil.com",
            "evil.com:80",
            "\\\\evil.com\\x",
            "https://evil.com/",
            "..",
            ".",
            "%2e%2e",
            "a?b=c#d",
            "x&c=overwritten",
            "\r\nHost: evil.com",
            "é/ü",
        ] {
            let values = BTreeMap::from([
                ("network_click_id", evil.to_owned()),
                ("click_id", evil.to_owned()),
                ("sub1", evil.to_owned()),
            ]);
            let filled = fill(t, &values);
            let url = url::Url::parse(&filled).unwrap();
            assert_eq!(url.host_str(), Some("net.example"), "{evil:?} → {filled}");
            assert_eq!(url.port(), Some(8443), "{evil:?} → {filled}");
            assert_eq!(url.username(), "", "{evil:?} → {filled}");
            let segments: Vec<&str> = url.path_segments().unwrap().collect();
            assert_eq!(segments.len(), 3, "{evil:?} → {filled}");
            assert_eq!((segments[0], segments[2]), ("pb", "x"), "{evil:?} → {filled}");
            assert_eq!(url.fragment(), None, "{evil:?} → {filled}");
            let query: Vec<(String, String)> = url.query_pairs().into_owned().collect();
            assert_eq!(query, [("c".into(), evil.into()), ("s".into(), evil.into())], "{evil:?} → {filled}");
        }
    }

    #[test]
    fn logged_urls_keep_keys_but_not_values() {
        assert_eq!(
            redact_url("https://net.example/pb/install?click_id=abc123&revenue=9.99&currency=EUR"),
            "https://net.example/pb/install?click_id=…&revenue=…&currency=…"
        );
        assert_eq!(
            redact_url("http://user:secret@127.0.0.1:8080/pb?token=s3cr3t&flag#frag"),
            "http://127.0.0.1:8080/pb?token=…&…"
        );
        assert_eq!(redact_url("https://net.example/pb"), "https://net.example/pb");
        assert_eq!(redact_url("https://net.example/pb?"), "https://net.example/pb?");
        assert_eq!(redact_url("not a url ?secret=1"), "(not a URL)");
        for url in ["https://n.example/p?c=SECRET1&r=SECRET2", "https://n.example/p?a=b=SECRET1&SECRET2"] {
            assert!(!redact_url(url).contains("SECRET"), "{}", redact_url(url));
        }
    }
}
