//! The OLAP store for reports (issue 23, ADR 0018, proposed): ClickHouse over its HTTP
//! interface ([`clickhouse`]). A layer beside `storage`, `clickcache` and `sink`.
//!
//! First step only: the client and the schema of the tables the loader will fill first (facts,
//! users, sessions), tested against a private ClickHouse by the `services` suite. The loader,
//! the reports served from it, deletion and the `--clickhouse` option are not built yet;
//! nothing in the server uses this module so far.

pub mod clickhouse;

/// What can go wrong talking to the OLAP store.
#[derive(Debug, thiserror::Error)]
pub enum OlapError {
    /// Not reachable (connection refused, timeout): the loader retries later.
    #[error("ClickHouse is unreachable: {0}")]
    Unreachable(String),
    /// Reachable, and it refused the statement (its message).
    #[error("ClickHouse refused the statement: {0}")]
    Refused(String),
    /// A setting that cannot work (URL, database name).
    #[error("ClickHouse setting: {0}")]
    Config(String),
}
