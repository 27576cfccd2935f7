//! The SQLite store's identity map (`IdentityStore`).

use rusqlite::{OptionalExtension, Transaction, params};

use super::SqliteStorage;
use crate::storage::sql::{self, sqlite};
use crate::storage::{IdentityStore, StorageError, StorageFuture, UserLink, backend};

impl IdentityStore for SqliteStorage {
    fn link_users(&self, links: Vec<UserLink>) -> StorageFuture<'_, u64> {
        self.write(links.len(), move |tx| {
            let mut added = 0;
            for link in &links {
                added += link_user(tx, link)?;
            }
            Ok(added)
        })
    }

    fn identity_links(&self, app_id: String) -> StorageFuture<'_, Vec<(String, String)>> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached(sqlite!(sql::IDENTITY_LINKS)).map_err(backend)?;
            let rows = stmt.query_map([app_id], |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)
        })
    }
}

fn link_user(tx: &Transaction<'_>, link: &UserLink) -> Result<u64, StorageError> {
    let root: Option<String> = tx
        .prepare_cached(sqlite!(sql::LINKED_USER))
        .map_err(backend)?
        .query_row(params![link.app_id, link.user_id], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    let root = root.unwrap_or_else(|| link.user_id.clone());
    if root == link.alias_user_id {
        return Ok(0);
    }
    let inserted = tx
        .prepare_cached(sqlite!(sql::INSERT_USER_LINK))
        .map_err(backend)?
        .execute(params![link.app_id, link.alias_user_id, root, link.created_at])
        .map_err(backend)?;
    if inserted == 0 {
        return Ok(0);
    }
    tx.prepare_cached(sqlite!(sql::REPOINT_USER_LINKS))
        .map_err(backend)?
        .execute(params![link.app_id, link.alias_user_id, root])
        .map_err(backend)?;
    Ok(1)
}
