//! The domain layer: pure decisions and data. No network, storage, HTTP or async runtime; time
//! comes in as an argument (the system clock is only the default [`config::Clock`]); the GeoIP
//! databases are read once when the server is built; ids are random UUIDs. `tests/layers.rs`
//! fails if a domain file names an I/O, HTTP, runtime or store crate.
//!
//! Attribution (touch index, matching waterfall, fraud rules, credit models), enrichment (user
//! agents, GeoIP lookups, IP encryption), validation (JSON Schemas), events (normalisation, the
//! stored event as JSON), links and clicks, install checks and the decision audit, conversion
//! credit, report computations, the stream's record encoding, postback templates, the records
//! the stores keep, the server's configuration, and [`error::Refusal`] (a client's mistake).
//! Everything above this layer (`storage`, `clickcache`, `sink`, `service`, `http`) may import
//! it; it imports none of them.

pub mod attribution;
pub mod config;
pub mod conversions;
pub mod enrich;
pub mod error;
pub mod events;
pub mod identifiers;
pub mod identity;
pub mod ingest;
pub mod install;
pub mod links;
pub mod postbacks;
pub mod privacy;
pub mod records;
pub mod reports;
pub mod segment;
pub mod stream;
pub mod validate;
pub mod wellknown;
