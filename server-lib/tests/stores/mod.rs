//! The stores the storage tests run against: the embedded SQLite store always, PostgreSQL
//! when `TM_POSTGRES_URL` names a server (`./tests/run.sh services` starts one). Without a URL
//! the PostgreSQL tests pass with a note, unless `TM_REQUIRE_SERVICES` is set: then they fail.
#![allow(dead_code)]

use std::sync::Arc;

use trailmark_server::storage::Storage;

/// The PostgreSQL URL to test against; `None` (skip) without one.
pub fn postgres_url() -> Option<String> {
    let url = std::env::var("TM_POSTGRES_URL").ok();
    if url.is_none() {
        assert!(std::env::var("TM_REQUIRE_SERVICES").is_err(), "TM_REQUIRE_SERVICES is set but TM_POSTGRES_URL is not");
        eprintln!("TM_POSTGRES_URL not set: the PostgreSQL test is skipped (./tests/run.sh services runs it)");
    }
    url
}

/// Where a store under test keeps its data.
pub enum Place {
    /// A SQLite file in a directory removed with the fixture.
    Sqlite(tempfile::TempDir),
    /// A PostgreSQL schema of its own, so runs never see each other's rows.
    #[cfg(feature = "postgres")]
    Postgres { url: String, schema: String },
}

/// A freshly migrated store.
pub struct Fixture {
    pub store: Arc<dyn Storage>,
    pub place: Place,
}

impl Fixture {
    /// The SQLite file of a SQLite fixture.
    pub fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        match &self.place {
            Place::Sqlite(dir) => Some(dir.path().join("s.db")),
            #[cfg(feature = "postgres")]
            Place::Postgres { .. } => None,
        }
    }

    /// Another instance on the same data (it applies no migration twice).
    pub async fn open_again(&self) -> Arc<dyn Storage> {
        match &self.place {
            Place::Sqlite(dir) => Arc::new(
                trailmark_server::SqliteStorage::open(dir.path().join("s.db"), Default::default(), 64, 1000).unwrap(),
            ),
            #[cfg(feature = "postgres")]
            Place::Postgres { url, schema } => Arc::new(
                trailmark_server::storage::postgres::PostgresStorage::connect(url, 2, Some(schema)).await.unwrap(),
            ),
        }
    }
}

/// A new SQLite store in a temporary directory.
pub async fn sqlite() -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let store = trailmark_server::SqliteStorage::open(dir.path().join("s.db"), Default::default(), 64, 1000).unwrap();
    Some(Fixture { store: Arc::new(store), place: Place::Sqlite(dir) })
}

/// A new PostgreSQL store in a schema of its own; `None` without a server.
#[cfg(feature = "postgres")]
pub async fn postgres() -> Option<Fixture> {
    let url = postgres_url()?;
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let store = trailmark_server::storage::postgres::PostgresStorage::connect(&url, 8, Some(&schema)).await.unwrap();
    Some(Fixture { store: Arc::new(store), place: Place::Postgres { url, schema } })
}
