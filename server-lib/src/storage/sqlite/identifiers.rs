//! The SQLite store's side of the identifier pass (`IdentifierStore`): batches of rows that
//! hold identifiers, in key order, and their rewrite.

use rusqlite::{OptionalExtension, params_from_iter, types::Value as Sql};

use super::SqliteStorage;
use crate::storage::sql::{self, to_sqlite};
use crate::storage::{IdRow, IdTable, IdentifierStore, StorageError, StorageFuture, backend};

impl IdentifierStore for SqliteStorage {
    fn identifier_rows(
        &self,
        table: &'static IdTable,
        after: Option<Vec<String>>,
        limit: usize,
    ) -> StorageFuture<'_, Vec<IdRow>> {
        self.read(move |c| {
            let mut args: Vec<Sql> = Vec::new();
            let text = match after {
                Some(key) => {
                    args.extend(key.into_iter().map(Sql::Text));
                    sql::identifier_rows(table)
                }
                None => sql::identifier_rows_first(table),
            };
            args.push(Sql::Integer(limit as i64));
            let mut stmt = c.prepare_cached(&to_sqlite(&text)).map_err(backend)?;
            let (k, n) = (table.key.len(), table.ids.len());
            let rows = stmt
                .query_map(params_from_iter(args), |r| {
                    Ok(IdRow {
                        key: (0..k).map(|i| r.get(i)).collect::<Result<_, _>>()?,
                        ids: (k..k + n).map(|i| r.get(i)).collect::<Result<_, _>>()?,
                        sealed: r.get(k + n)?,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<_, _>>().map_err(backend)
        })
    }

    fn rewrite_identifiers(&self, table: &'static IdTable, rows: Vec<IdRow>) -> StorageFuture<'_, ()> {
        self.write(rows.len(), move |tx| {
            let mut stmt = tx.prepare_cached(&to_sqlite(&sql::rewrite_identifiers(table))).map_err(backend)?;
            for row in rows {
                let mut args: Vec<Sql> = row.ids.into_iter().map(|v| v.map_or(Sql::Null, Sql::Text)).collect();
                args.push(row.sealed.map_or(Sql::Null, Sql::Blob));
                args.extend(row.key.into_iter().map(Sql::Text));
                stmt.execute(params_from_iter(args)).map_err(backend)?;
            }
            Ok(())
        })
    }

    fn raw_user_ids(&self, limit: usize) -> StorageFuture<'_, Vec<String>> {
        self.read(move |c| {
            let mut found = Vec::new();
            for table in sql::USER_ID_TABLES {
                let mut stmt = c.prepare_cached(&to_sqlite(&sql::raw_user_ids(table))).map_err(backend)?;
                let rows = stmt.query_map([limit as i64], |r| r.get::<_, String>(0)).map_err(backend)?;
                found.extend(rows.collect::<Result<Vec<_>, _>>().map_err(backend)?);
            }
            Ok(found)
        })
    }

    fn replace_user_ids(&self, pairs: Vec<(String, String)>) -> StorageFuture<'_, ()> {
        self.write(pairs.len(), move |tx| {
            for table in sql::USER_ID_TABLES {
                let mut stmt = tx.prepare_cached(&to_sqlite(&sql::replace_user_id(table))).map_err(backend)?;
                for (raw, stored) in &pairs {
                    stmt.execute([stored, raw]).map_err(backend)?;
                }
            }
            Ok(())
        })
    }

    fn identifiers_version(&self) -> StorageFuture<'_, Option<i64>> {
        self.read(|c| {
            c.query_row(sql::IDENTIFIERS_VERSION, [], |r| r.get(0)).optional().map_err(|e: rusqlite::Error| backend(e))
        })
    }

    fn set_identifiers_version(&self, version: i64) -> StorageFuture<'_, ()> {
        self.write(1, move |tx| {
            tx.execute(&to_sqlite(sql::SET_IDENTIFIERS_VERSION), [version]).map_err(backend)?;
            Ok::<_, StorageError>(())
        })
    }
}
