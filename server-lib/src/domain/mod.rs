//! The domain layer: pure decisions and data, no I/O, no HTTP.
//!
//! Attribution (touch index, matching waterfall, fraud rules, credit models), enrichment (user
//! agents, GeoIP lookups, IP encryption), validation (JSON Schemas), the records the stores
//! keep, postback templates, and the server's configuration. Everything above this layer
//! (`storage`, `clickcache`, `sink`, `service`, `http`) may import it; it imports none of them.

pub mod attribution;
pub mod config;
pub mod enrich;
pub mod postbacks;
pub mod records;
pub mod validate;
