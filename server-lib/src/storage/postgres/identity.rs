//! The PostgreSQL store's identity map (`IdentityStore`).

use super::{PostgresStorage, pool_error};
use crate::storage::sql;
use crate::storage::{IdentityStore, StorageFuture, UserLink, backend};

impl IdentityStore for PostgresStorage {
    fn link_users(&self, links: Vec<UserLink>) -> StorageFuture<'_, u64> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            // One writer of an app's map at a time across instances, so two links cannot both
            // read a root the other is changing (which could leave a link naming an alias). A
            // lock of its own: the two-key form (class 21, the app) never meets the one-key
            // locks of reports, deletions and migrations.
            for app in links.iter().map(|l| l.app_id.as_str()).collect::<std::collections::BTreeSet<_>>() {
                tx.execute("SELECT pg_advisory_xact_lock(21, hashtext($1))", &[&app]).await.map_err(backend)?;
            }
            let mut added = 0;
            for link in &links {
                let root: Option<String> = tx
                    .query_opt(sql::LINKED_USER, &[&link.app_id, &link.user_id])
                    .await
                    .map_err(backend)?
                    .map(|r| r.get(0));
                let root = root.unwrap_or_else(|| link.user_id.clone());
                if root == link.alias_user_id {
                    continue;
                }
                let inserted = tx
                    .execute(sql::INSERT_USER_LINK, &[&link.app_id, &link.alias_user_id, &root, &link.created_at])
                    .await
                    .map_err(backend)?;
                if inserted == 0 {
                    continue;
                }
                tx.execute(sql::REPOINT_USER_LINKS, &[&link.app_id, &link.alias_user_id, &root])
                    .await
                    .map_err(backend)?;
                added += 1;
            }
            tx.commit().await.map_err(backend)?;
            Ok(added)
        })
    }

    fn identity_links(&self, app_id: String) -> StorageFuture<'_, Vec<(String, String)>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let rows = client.query(sql::IDENTITY_LINKS, &[&app_id]).await.map_err(backend)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }
}
