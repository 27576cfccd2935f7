//! Enrichment and normalisation: user agent, GeoIP, channel, OS names, IP encryption.

use std::net::IpAddr;
use std::path::Path;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use serde::Serialize;
use serde_json::Value;

/// What the request's `User-Agent` says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UserAgent {
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub browser: Option<String>,
    pub browser_version: Option<String>,
    /// woothee's category: `pc`, `smartphone`, `mobilephone`, `appliance`, `crawler`, `misc`.
    pub device_class: Option<String>,
}

fn known(v: &str) -> Option<String> {
    (!v.is_empty() && v != "UNKNOWN").then(|| v.to_owned())
}

pub fn parse_user_agent(agent: &str) -> UserAgent {
    match woothee::parser::Parser::new().parse(agent) {
        Some(r) => UserAgent {
            os: known(r.os).map(|os| normalize_os(&os)),
            // Chrome's reduced agent ("Android 10; K") freezes the version: it says nothing.
            os_version: known(&r.os_version).filter(|_| !reduced_android(agent)),
            browser: known(r.name),
            browser_version: known(r.version),
            device_class: known(r.category),
        },
        None => UserAgent::default(),
    }
}

/// The device model in an Android user agent (`Linux; Android 14; Pixel 8 Build/…` →
/// `Pixel 8`), or `iPhone`/`iPad` on Apple devices. `None` when the agent hides it (Chrome's
/// reduced agent reports the model as `K`).
pub fn device_model(agent: &str) -> Option<String> {
    // Facebook's and Instagram's in-app browsers name the model (`FBDV/iPhone15,2;`).
    if let Some(rest) = agent.split_once("FBDV/").map(|(_, r)| r) {
        let model = rest.split([';', ']', ' ']).next().unwrap_or("").trim();
        if !model.is_empty() && model.len() <= 64 {
            return Some(model.to_owned());
        }
    }
    let inner = agent.split_once('(')?.1.split_once(')')?.0;
    let parts: Vec<&str> = inner.split(';').map(str::trim).collect();
    if let Some(pos) = parts.iter().position(|p| p.starts_with("Android")) {
        let model = parts.get(pos + 1)?.split(" Build/").next()?.trim();
        return (!model.is_empty() && model != "K" && model != "wv").then(|| model.to_owned());
    }
    ["iPhone", "iPad", "iPod"].iter().find(|m| parts.first() == Some(m)).map(|m| (*m).to_owned())
}

/// Chrome's reduced user agent on Android (`Linux; Android 10; K`): the version and model in it
/// are frozen placeholders.
pub fn reduced_android(agent: &str) -> bool {
    let Some(inner) = agent.split_once('(').and_then(|(_, r)| r.split_once(')')).map(|(i, _)| i) else {
        return false;
    };
    let parts: Vec<&str> = inner.split(';').map(str::trim).collect();
    parts.iter().position(|p| p.starts_with("Android")).is_some_and(|i| parts.get(i + 1) == Some(&"K"))
}

/// Crawlers, link previewers, headless browsers and HTTP libraries: their requests are never
/// counted as clicks. `parsed` is the agent already parsed by [`parse_user_agent`].
pub fn is_bot(agent: Option<&str>, parsed: &UserAgent) -> bool {
    let Some(agent) = agent.map(str::trim).filter(|a| !a.is_empty()) else { return true };
    let lower = agent.to_ascii_lowercase();
    const MARKERS: &[&str] = &[
        "bot",
        "crawl",
        "spider",
        "slurp",
        "facebookexternalhit",
        "preview",
        "headlesschrome",
        "phantomjs",
        "curl/",
        "wget/",
        "python-requests",
        "python-urllib",
        "go-http-client",
        "java/",
        "libwww",
        "httpclient",
        "scrapy",
        "lighthouse",
        "pingdom",
        "uptime",
        "monitor",
    ];
    MARKERS.iter().any(|m| lower.contains(m)) || parsed.device_class.as_deref() == Some("crawler")
}

/// One spelling per operating system, whatever the client sent.
pub fn normalize_os(os: &str) -> String {
    let lower = os.trim().to_ascii_lowercase();
    let canonical = match lower.as_str() {
        "ios" | "iphone os" | "iphone" | "ipad" | "ipados" | "ipod" => "iOS",
        "android" => "Android",
        "mac os x" | "macos" | "mac os" | "osx" | "os x" | "macosx" => "macOS",
        "linux" => "Linux",
        "chromeos" | "chrome os" | "cros" => "ChromeOS",
        "tvos" => "tvOS",
        "watchos" => "watchOS",
        "windows" => "Windows",
        l if l.starts_with("windows") => "Windows",
        _ => return os.trim().to_owned(),
    };
    canonical.to_owned()
}

/// GeoIP facts for an address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Geo {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_org: Option<String>,
    /// IANA time zone of the city (fingerprinting compares it with the device's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// MaxMind databases, when configured.
#[derive(Default)]
pub struct GeoIp {
    city: Option<maxminddb::Reader<Vec<u8>>>,
    asn: Option<maxminddb::Reader<Vec<u8>>>,
    anonymous: Option<maxminddb::Reader<Vec<u8>>>,
}

impl GeoIp {
    pub fn open(city: Option<&Path>, asn: Option<&Path>) -> Result<Self, String> {
        let open = |p: &Path| maxminddb::Reader::open_readfile(p).map_err(|e| format!("{}: {e}", p.display()));
        Ok(GeoIp { city: city.map(open).transpose()?, asn: asn.map(open).transpose()?, anonymous: None })
    }

    /// Adds a GeoIP2 Anonymous IP database.
    pub fn with_anonymous(mut self, path: Option<&Path>) -> Result<Self, String> {
        if let Some(p) = path {
            self.anonymous = Some(maxminddb::Reader::open_readfile(p).map_err(|e| format!("{}: {e}", p.display()))?);
        }
        Ok(self)
    }

    /// True when the Anonymous IP database lists the address as anonymous, a VPN, a hosting
    /// provider, a public proxy, a residential proxy or a Tor exit.
    pub fn is_anonymous(&self, ip: IpAddr) -> bool {
        let Some(reader) = &self.anonymous else { return false };
        match reader.lookup(ip).and_then(|r| r.decode::<maxminddb::geoip2::AnonymousIp>()) {
            Ok(Some(a)) => [
                a.is_anonymous,
                a.is_anonymous_vpn,
                a.is_hosting_provider,
                a.is_public_proxy,
                a.is_residential_proxy,
                a.is_tor_exit_node,
            ]
            .into_iter()
            .any(|f| f == Some(true)),
            _ => false,
        }
    }

    pub fn lookup(&self, ip: IpAddr) -> Geo {
        let mut geo = Geo::default();
        if let Some(reader) = &self.city
            && let Ok(Some(city)) = reader.lookup(ip).and_then(|r| r.decode::<maxminddb::geoip2::City>())
        {
            geo.country = city.country.iso_code.map(str::to_owned);
            geo.region = city.subdivisions.first().and_then(|s| s.iso_code).map(str::to_owned);
            geo.city = city.city.names.english.map(str::to_owned);
            geo.time_zone = city.location.time_zone.map(str::to_owned);
        }
        if let Some(reader) = &self.asn
            && let Ok(Some(asn)) = reader.lookup(ip).and_then(|r| r.decode::<maxminddb::geoip2::Asn>())
        {
            geo.asn = asn.autonomous_system_number;
            geo.as_org = asn.autonomous_system_organization.map(str::to_owned);
        }
        geo
    }
}

/// The marketing channel of an event, from its campaign fields and referrer.
pub fn channel(campaign: Option<&Value>, referrer: Option<&str>) -> &'static str {
    let field = |k: &str| campaign.and_then(|c| c.get(k)).and_then(Value::as_str).map(str::to_ascii_lowercase);
    let medium = field("utm_medium").unwrap_or_default();
    let source = field("utm_source").unwrap_or_default();
    const SOCIAL: &[&str] =
        &["facebook", "instagram", "twitter", "x", "tiktok", "linkedin", "reddit", "pinterest", "snapchat", "youtube"];
    const SEARCH: &[&str] = &["google", "bing", "duckduckgo", "yahoo", "baidu", "yandex", "ecosia"];
    if ["cpc", "ppc", "paid", "paidsearch", "paid_search", "cpm", "display", "paid_social"].contains(&medium.as_str()) {
        return if SOCIAL.contains(&source.as_str()) || medium == "paid_social" { "paid_social" } else { "paid" };
    }
    if medium == "email" || source == "newsletter" {
        return "email";
    }
    if medium == "social" || SOCIAL.contains(&source.as_str()) {
        return "social";
    }
    if medium == "affiliate" {
        return "affiliate";
    }
    if medium == "referral" {
        return "referral";
    }
    if field("click_id").is_some() {
        return "paid";
    }
    if !medium.is_empty() || !source.is_empty() {
        return "campaign";
    }
    if let Some(host) =
        referrer.and_then(|r| url::Url::parse(r).ok()).and_then(|u| u.host_str().map(str::to_ascii_lowercase))
    {
        if SEARCH.iter().any(|s| host.split('.').any(|part| part == *s)) {
            return "organic_search";
        }
        if SOCIAL.iter().any(|s| host.split('.').any(|part| part == *s)) {
            return "social";
        }
        return "referral";
    }
    "direct"
}

/// AES-256-GCM for IP addresses at rest: `nonce (12 bytes) ‖ ciphertext+tag`.
///
/// Nonces follow NIST SP 800-38D's deterministic construction: a 32-bit field random per
/// process, then a 64-bit counter that starts at a random value. That keeps them unique
/// without a `getrandom` system call per address.
pub struct IpCipher {
    cipher: Aes256Gcm,
    field: [u8; 4],
    counter: std::sync::atomic::AtomicU64,
}

impl IpCipher {
    pub fn new(key: &[u8; 32]) -> Self {
        let seed = Aes256Gcm::generate_nonce(&mut OsRng);
        let field: [u8; 4] = seed[..4].try_into().expect("4 bytes");
        let start = u64::from_le_bytes(seed[4..].try_into().expect("8 bytes"));
        IpCipher {
            cipher: Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)),
            field,
            counter: std::sync::atomic::AtomicU64::new(start),
        }
    }

    /// `None` only if the cipher fails, which it does not for inputs this small; then no IP
    /// is stored rather than a clear one.
    pub fn encrypt(&self, ip: IpAddr) -> Option<Vec<u8>> {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&self.field);
        let n = self.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        nonce[4..].copy_from_slice(&n.to_le_bytes());
        let nonce = Nonce::from(nonce);
        let sealed = self.cipher.encrypt(&nonce, ip.to_string().as_bytes()).ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Some(out)
    }

    pub fn decrypt(&self, blob: &[u8]) -> Option<IpAddr> {
        if blob.len() < 12 {
            return None;
        }
        let (nonce, sealed) = blob.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().ok()?;
        let plain = self.cipher.decrypt(&Nonce::from(nonce), sealed).ok()?;
        String::from_utf8(plain).ok()?.parse().ok()
    }
}

/// HMAC-SHA256 of `text` under `key`: the keyed hashes of the deletion audit and the
/// constant-time comparisons of admin keys and CSRF tokens.
pub fn keyed_hash(key: &[u8; 32], text: &str) -> hmac::Hmac<sha2::Sha256> {
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(text.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_agents() {
        let ua = parse_user_agent(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1",
        );
        assert_eq!(ua.os.as_deref(), Some("iOS"));
        assert_eq!(ua.device_class.as_deref(), Some("smartphone"));
        assert_eq!(ua.browser.as_deref(), Some("Safari"));
        let ua = parse_user_agent(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        );
        assert_eq!(ua.os.as_deref(), Some("Windows"));
        assert_eq!(ua.device_class.as_deref(), Some("pc"));
        assert_eq!(parse_user_agent("trailmark-rust/0.1.0"), UserAgent::default());
    }

    #[test]
    fn models_and_bots() {
        let pixel = "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A.240205.004) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";
        assert_eq!(device_model(pixel).as_deref(), Some("Pixel 8"));
        let reduced = "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";
        assert_eq!(device_model(reduced), None);
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
        assert_eq!(device_model(iphone).as_deref(), Some("iPhone"));
        assert_eq!(parse_user_agent(iphone).os_version.as_deref(), Some("17.1"));
        assert_eq!(parse_user_agent(pixel).os_version.as_deref(), Some("14"));
        assert_eq!(parse_user_agent(reduced).os_version, None, "a frozen version says nothing");
        assert_eq!(parse_user_agent(reduced).os.as_deref(), Some("Android"));
        let facebook = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/440.0.0;FBBV/1;FBDV/iPhone15,2;FBMD/iPhone;FBSN/iOS;FBSV/17.1;FBSS/3;FBCR/;FBID/phone;FBLC/en_US;FBOP/5]";
        assert_eq!(device_model(facebook).as_deref(), Some("iPhone15,2"));
        let bot = |ua: Option<&str>| is_bot(ua, &ua.map(parse_user_agent).unwrap_or_default());
        assert!(!bot(Some(iphone)));
        assert!(bot(Some("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)")));
        assert!(bot(Some("Mozilla/5.0 (compatible; bingpreview/2.0)")));
        assert!(bot(Some("facebookexternalhit/1.1")));
        assert!(bot(Some("curl/8.5.0")));
        assert!(bot(Some("Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)")));
        assert!(bot(None));
    }

    #[test]
    fn os_names() {
        assert_eq!(normalize_os("iPhone OS"), "iOS");
        assert_eq!(normalize_os("android"), "Android");
        assert_eq!(normalize_os("Mac OS X"), "macOS");
        assert_eq!(normalize_os("Windows 10"), "Windows");
        assert_eq!(normalize_os("HarmonyOS"), "HarmonyOS");
    }

    #[test]
    fn channels() {
        let c = json!({"utm_source": "google", "utm_medium": "CPC"});
        assert_eq!(channel(Some(&c), None), "paid");
        assert_eq!(channel(Some(&json!({"utm_source": "facebook", "utm_medium": "cpc"})), None), "paid_social");
        assert_eq!(channel(Some(&json!({"utm_medium": "email"})), None), "email");
        assert_eq!(channel(Some(&json!({"click_id": "x"})), None), "paid");
        assert_eq!(channel(None, Some("https://www.google.com/search?q=x")), "organic_search");
        assert_eq!(channel(None, Some("https://blog.example.org/post")), "referral");
        assert_eq!(channel(None, None), "direct");
    }

    #[test]
    fn ip_round_trip_and_no_clear_text() {
        let cipher = IpCipher::new(&[7; 32]);
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let blob = cipher.encrypt(ip).unwrap();
        assert!(!blob.windows(11).any(|w| w == b"203.0.113.9"));
        assert_ne!(blob, cipher.encrypt(ip).unwrap(), "fresh nonce each time");
        assert_eq!(cipher.decrypt(&blob), Some(ip));
        assert_eq!(IpCipher::new(&[8; 32]).decrypt(&blob), None);
    }
}
