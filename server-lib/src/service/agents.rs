//! User-agent strings parsed once: clicks and ingest requests mostly come from a few thousand
//! browsers and app builds, and woothee's parse allocates and scans the whole string each time.
//! A bounded least-recently-used map keeps the parsed form (issue 24).

use std::sync::Mutex;

use hashlink::LruCache;

use crate::domain::enrich::{self, UserAgent};

/// Distinct user agents kept.
const CAPACITY: usize = 4096;
/// Longer strings are parsed every time and never kept (memory stays bounded: at most
/// `CAPACITY` × this many bytes of keys).
const MAX_KEY_LEN: usize = 512;

/// The parsed form of user-agent strings, remembered for the most recent ones.
pub struct UserAgents {
    cache: Mutex<LruCache<String, UserAgent>>,
}

impl Default for UserAgents {
    fn default() -> Self {
        UserAgents { cache: Mutex::new(LruCache::new(CAPACITY)) }
    }
}

impl UserAgents {
    /// [`enrich::parse_user_agent`], from memory when this string was parsed recently.
    pub fn parse(&self, ua: &str) -> UserAgent {
        if ua.len() > MAX_KEY_LEN {
            return enrich::parse_user_agent(ua);
        }
        if let Some(hit) = self.cache.lock().ok().and_then(|mut c| c.get(ua).cloned()) {
            return hit;
        }
        // Parsed without the lock held.
        let parsed = enrich::parse_user_agent(ua);
        if let Ok(mut c) = self.cache.lock() {
            c.insert(ua.to_owned(), parsed.clone());
        }
        parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_parse_is_the_parse() {
        let agents = UserAgents::default();
        let ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1";
        let first = agents.parse(ua);
        assert_eq!(first, enrich::parse_user_agent(ua));
        assert_eq!(agents.parse(ua), first, "from the cache");
        let long = format!("{ua} {}", "x".repeat(MAX_KEY_LEN));
        assert_eq!(agents.parse(&long), enrich::parse_user_agent(&long));
        assert_eq!(agents.cache.lock().unwrap().len(), 1, "a long string is not kept");
        for i in 0..CAPACITY + 10 {
            agents.parse(&format!("agent/{i}"));
        }
        assert_eq!(agents.cache.lock().unwrap().len(), CAPACITY, "bounded");
    }
}
