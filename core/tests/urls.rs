//! The core's URL splitter (issue 18) against the `url` crate (WHATWG, as browsers and reqwest
//! parse): the same host for the inputs an attacker would try, and the endpoint check refuses
//! plain http to anything but loopback however the URL is spelled.

use trailmark_core::Config;
use trailmark_core::urls::Url;

const TRICKY: &[&str] = &[
    "http://127.0.0.1:8080/x",
    "http://localhost/",
    "http://[::1]:9/",
    "http://evil.com\\@127.0.0.1/",
    "http://evil.com\\@localhost",
    "http://127.0.0.1@evil.com/",
    "http://127.0.0.1:80@evil.com/",
    "http://evil.com:80@127.0.0.1/",
    "http://localhost.evil.com/",
    "http://evil.com?@127.0.0.1/",
    "http://evil.com#@127.0.0.1/",
    "http://evil.com%2f@127.0.0.1/",
    "http://evil.com;@127.0.0.1/",
    "http://a:b@c:d@127.0.0.1/",
    "https://Example.COM/path?q=1",
    "https://x.example\\path",
];

#[test]
fn hosts_agree_with_the_url_crate() {
    for text in TRICKY {
        let theirs = url::Url::parse(text).ok().and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        let ours = Url::parse(text).ok().and_then(|u| u.host.map(str::to_ascii_lowercase));
        if let (Some(theirs), Some(ours)) = (&theirs, &ours) {
            assert_eq!(ours, theirs, "{text}");
        }
    }
}

#[test]
fn plain_http_only_to_loopback() {
    for text in TRICKY {
        let ours = Config::new("app", "s", *text).validate().is_ok();
        let http = text.starts_with("http://");
        let loopback = url::Url::parse(text).ok().is_some_and(|u| match u.host() {
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        });
        if ours && http {
            assert!(loopback, "{text} accepted as an http endpoint but its host is not loopback");
        }
    }
    assert!(Config::new("app", "s", "http://127.0.0.1:8080").validate().is_ok());
    assert!(Config::new("app", "s", "http://evil.com\\@127.0.0.1/").validate().is_err());
}
