//! The little URL reading the SDK needs, without the `url` crate (its IDNA tables and
//! normaliser were 8 % of the web SDK's wasm): split a URL into scheme, host, path and query,
//! decode `application/x-www-form-urlencoded` query pairs, and encode them for beacons.
//!
//! It does not normalise (no percent-encoding of spaces, no dot-segment removal, no IDNA):
//! URLs come from the browser's `location` (already normalised) or from deep links, and the
//! engine only reads query parameters and the path from them.

#[allow(unused_imports)]
use crate::prelude::*;

/// The parts of an absolute URL: `scheme:[//authority]path[?query][#fragment]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Url<'a> {
    /// Lower case is not enforced; compare with `eq_ignore_ascii_case`.
    pub scheme: &'a str,
    /// The host without user info and port (`[::1]` keeps its brackets); `None` without an
    /// authority (`mailto:x`, `myapp:open`).
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// Why a text is not an absolute URL.
pub const NOT_ABSOLUTE: &str = "relative URL without a base";

impl<'a> Url<'a> {
    /// Splits an absolute URL. Leading and trailing white space and control characters are
    /// ignored, as browsers do.
    pub fn parse(text: &'a str) -> Result<Url<'a>, &'static str> {
        let text = text.trim_matches(|c: char| c <= ' ');
        let colon = text.find(':').ok_or(NOT_ABSOLUTE)?;
        let scheme = &text[..colon];
        let mut chars = scheme.chars();
        if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return Err(NOT_ABSOLUTE);
        }
        let rest = &text[colon + 1..];
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (rest, query) = match rest.split_once('?') {
            Some((before, q)) => (before, Some(q)),
            None => (rest, None),
        };
        let special = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
        let (host, path) = match rest.strip_prefix("//") {
            Some(after) => {
                // For http(s), WHATWG URL parsers (browsers, reqwest's url, OkHttp) treat `\`
                // as `/`: the authority ends there too, or `http://evil.com\@127.0.0.1/` would
                // read as a loopback host here and as evil.com to the HTTP client.
                let end = after.find(|c| c == '/' || (special && c == '\\')).unwrap_or(after.len());
                let authority = &after[..end];
                let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
                let host = if host_port.starts_with('[') {
                    let close = host_port.find(']').ok_or("invalid IPv6 address")?;
                    let port = &host_port[close + 1..];
                    check_port(port)?;
                    &host_port[..=close]
                } else {
                    let (host, port) = host_port.split_once(':').map_or((host_port, ""), |(h, p)| (h, p));
                    check_port(if host_port.contains(':') { port } else { "" })?;
                    host
                };
                if host.bytes().any(|b| b <= b' ' || matches!(b, b'<' | b'>' | b'\\' | b'^' | b'|' | b'%')) {
                    return Err("invalid host");
                }
                let path = if after[end..].is_empty() && special { "/" } else { &after[end..] };
                (Some(host), path)
            }
            None if special => return Err("empty host"),
            None => (None, rest),
        };
        if special && host.is_none_or(str::is_empty) {
            return Err("empty host");
        }
        Ok(Url { scheme, host, path, query })
    }

    /// The query's `application/x-www-form-urlencoded` pairs, decoded (`+` is a space, `%XX`
    /// a byte, invalid UTF-8 replaced).
    pub fn query_pairs(&self) -> impl Iterator<Item = (String, String)> + 'a {
        self.query.unwrap_or("").split('&').filter(|p| !p.is_empty()).map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k), form_decode(v))
        })
    }

    /// True for `localhost`, `127.x.x.x` and `[::1]` (the forms a developer writes; checked by
    /// hand, as std's address parsers weigh 4 KB of wasm).
    pub fn is_loopback(&self) -> bool {
        match self.host {
            Some(h) if h.eq_ignore_ascii_case("localhost") || h == "[::1]" => true,
            Some(h) => {
                let parts: Vec<&str> = h.split('.').collect();
                parts.len() == 4
                    && parts[0] == "127"
                    && parts.iter().all(|p| {
                        !p.is_empty()
                            && p.len() <= 3
                            && p.bytes().all(|b| b.is_ascii_digit())
                            && p.parse::<u16>().is_ok_and(|n| n < 256)
                    })
            }
            None => false,
        }
    }
}

fn check_port(port: &str) -> Result<(), &'static str> {
    let digits = port.strip_prefix(':').unwrap_or(port);
    if port.is_empty() || digits.is_empty() {
        return Ok(());
    }
    if digits.len() > 5
        || !digits.bytes().all(|b| b.is_ascii_digit())
        || digits.parse::<u32>().map_or(true, |p| p > 65_535)
    {
        return Err("invalid port number");
    }
    Ok(())
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes one `application/x-www-form-urlencoded` component.
pub fn form_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (bytes.get(i + 1).and_then(|b| hex_value(*b)), bytes.get(i + 2).and_then(|b| hex_value(*b))) {
                    (Some(h), Some(l)) => {
                        out.push(h << 4 | l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Appends `text` `application/x-www-form-urlencoded` (as `URLSearchParams` writes it).
pub fn form_encode(out: &mut String, text: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in text.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => out.push(b as char),
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 0xf)] as char);
            }
        }
    }
}

/// `base` with `pairs` appended as its query (after `?`, or `&` when it has one).
pub fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(base.len() + 128);
    out.push_str(base);
    let mut sep = if base.contains('?') { '&' } else { '?' };
    for (k, v) in pairs {
        out.push(sep);
        form_encode(&mut out, k);
        out.push('=');
        form_encode(&mut out, v);
        sep = '&';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_urls() {
        let u = Url::parse(" https://user:pw@Example.com:8443/a/b?x=1&y=%C3%A9+z#frag ").unwrap();
        assert_eq!((u.scheme, u.host, u.path, u.query), ("https", Some("Example.com"), "/a/b", Some("x=1&y=%C3%A9+z")));
        let pairs: Vec<_> = u.query_pairs().collect();
        assert_eq!(pairs, [("x".into(), "1".into()), ("y".into(), "é z".into())]);
        let u = Url::parse("https://example.com").unwrap();
        assert_eq!((u.path, u.query), ("/", None));
        let u = Url::parse("myapp://open/product?tm_click_id=abc").unwrap();
        assert_eq!((u.host, u.path), (Some("open"), "/product"));
        let u = Url::parse("myapp:open?a=1").unwrap();
        assert_eq!((u.host, u.path, u.query), (None, "open", Some("a=1")));
        let u = Url::parse("http://[::1]:8080/x").unwrap();
        assert_eq!(u.host, Some("[::1]"));
        assert!(u.is_loopback());
        assert!(Url::parse("http://127.0.0.1:1").unwrap().is_loopback());
        assert!(Url::parse("http://LOCALHOST").unwrap().is_loopback());
        assert!(!Url::parse("http://example.com").unwrap().is_loopback());
    }

    #[test]
    fn refuses_what_is_not_an_absolute_url() {
        for bad in [
            "not a url",
            "",
            "/path?x=1",
            "1http://x",
            "https://",
            "http:///x",
            "https://x:99999/",
            "https://x:ab/",
            "https:foo",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn form_encoding_round_trips() {
        let mut s = String::new();
        form_encode(&mut s, "a b&c=d/é*~");
        assert_eq!(s, "a+b%26c%3Dd%2F%C3%A9*%7E");
        assert_eq!(form_decode(&s), "a b&c=d/é*~");
        assert_eq!(form_decode("100%"), "100%");
        assert_eq!(form_decode("%ff"), "\u{fffd}");
        assert_eq!(
            with_query("https://x/v1/event", &[("tm_app", "my app"), ("tm_ts", "1")]),
            "https://x/v1/event?tm_app=my+app&tm_ts=1"
        );
    }
}
