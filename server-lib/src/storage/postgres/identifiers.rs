//! The PostgreSQL store's side of the identifier pass (`IdentifierStore`): batches of rows that
//! hold identifiers, in key order, and their rewrite.

use tokio_postgres::types::ToSql;

use super::{PostgresStorage, pool_error};
use crate::storage::sql;
use crate::storage::{IdRow, IdTable, IdentifierStore, StorageFuture, backend};

impl IdentifierStore for PostgresStorage {
    fn identifier_rows(
        &self,
        table: &'static IdTable,
        after: Option<Vec<String>>,
        limit: usize,
    ) -> StorageFuture<'_, Vec<IdRow>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let limit = limit as i64;
            let key = after.unwrap_or_default();
            let mut args: Vec<&(dyn ToSql + Sync)> = key.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
            args.push(&limit);
            let text = if key.is_empty() { sql::identifier_rows_first(table) } else { sql::identifier_rows(table) };
            let rows = client.query(&text, &args).await.map_err(backend)?;
            let (k, n) = (table.key.len(), table.ids.len());
            Ok(rows
                .iter()
                .map(|r| IdRow {
                    key: (0..k).map(|i| r.get(i)).collect(),
                    ids: (k..k + n).map(|i| r.get(i)).collect(),
                    sealed: r.get(k + n),
                })
                .collect())
        })
    }

    fn rewrite_identifiers(&self, table: &'static IdTable, rows: Vec<IdRow>) -> StorageFuture<'_, ()> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            let stmt = tx.prepare(&sql::rewrite_identifiers(table)).await.map_err(backend)?;
            for row in &rows {
                let mut args: Vec<&(dyn ToSql + Sync)> = row.ids.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
                args.push(&row.sealed);
                args.extend(row.key.iter().map(|k| k as &(dyn ToSql + Sync)));
                tx.execute(&stmt, &args).await.map_err(backend)?;
            }
            tx.commit().await.map_err(backend)
        })
    }

    fn raw_user_ids(&self, limit: usize) -> StorageFuture<'_, Vec<String>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            let mut found = Vec::new();
            for table in sql::USER_ID_TABLES {
                let rows = client.query(&sql::raw_user_ids(table), &[&(limit as i64)]).await.map_err(backend)?;
                found.extend(rows.iter().map(|r| r.get::<_, String>(0)));
            }
            Ok(found)
        })
    }

    fn replace_user_ids(&self, pairs: Vec<(String, String)>) -> StorageFuture<'_, ()> {
        Box::pin(async move {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(backend)?;
            for table in sql::USER_ID_TABLES {
                let stmt = tx.prepare(&sql::replace_user_id(table)).await.map_err(backend)?;
                for (raw, stored) in &pairs {
                    tx.execute(&stmt, &[stored, raw]).await.map_err(backend)?;
                }
            }
            tx.commit().await.map_err(backend)
        })
    }

    fn identifiers_version(&self) -> StorageFuture<'_, Option<i64>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            Ok(client.query_opt(sql::IDENTIFIERS_VERSION, &[]).await.map_err(backend)?.map(|r| r.get(0)))
        })
    }

    fn set_identifiers_version(&self, version: i64) -> StorageFuture<'_, ()> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(pool_error)?;
            client.execute(sql::SET_IDENTIFIERS_VERSION, &[&version]).await.map_err(backend)?;
            Ok(())
        })
    }
}
