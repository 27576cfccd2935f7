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
    /// Further SQLite instances on the same file ([`Fixture::open_again`]).
    again: std::sync::Mutex<Vec<Arc<dyn Storage>>>,
}

impl Drop for Fixture {
    /// SQLite stores are never closed. The bundled SQLite (3.51.1) can deadlock when two
    /// connections to one file close at once (the writer thread's and the read pool's, as a
    /// dropped store closes them; fixed in SQLite 3.51.2, see
    /// <https://github.com/rusqlite/rusqlite/issues/1860>), and with one test per check the
    /// suite drops many stores. The test process ends soon after; the files go with the
    /// temporary directory.
    fn drop(&mut self) {
        if let Place::Sqlite(_) = self.place {
            std::mem::forget(self.store.clone());
            std::mem::forget(std::mem::take(&mut *self.again.lock().unwrap()));
        }
    }
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
            Place::Sqlite(dir) => {
                let store: Arc<dyn Storage> = Arc::new(
                    trailmark_server::SqliteStorage::open(dir.path().join("s.db"), Default::default(), 64, 1000)
                        .unwrap(),
                );
                self.again.lock().unwrap().push(store.clone());
                store
            }
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
    Some(Fixture { store: Arc::new(store), place: Place::Sqlite(dir), again: Default::default() })
}

/// A new PostgreSQL store in a schema of its own; `None` without a server.
#[cfg(feature = "postgres")]
pub async fn postgres() -> Option<Fixture> {
    let url = postgres_url()?;
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let store = trailmark_server::storage::postgres::PostgresStorage::connect(&url, 8, Some(&schema)).await.unwrap();
    Some(Fixture { store: Arc::new(store), place: Place::Postgres { url, schema }, again: Default::default() })
}
