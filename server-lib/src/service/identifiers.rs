//! The identifier pass: brings every stored row to the current form of identifiers at rest
//! (`domain::identifiers`): raw user, device and advertising ids left by versions before they
//! were hashed are hashed and sealed; ciphertexts under an older key are sealed again under the
//! newest. Runs in the background at start when the store says the last complete pass was
//! under another key version (so after a key rotation, or once after the upgrade), in batches,
//! and records the version when done.

use std::time::Duration;

use super::Services;
use crate::domain::identifiers::is_hashed;
use crate::storage::{ID_TABLES, StorageError};

/// Rows read per batch.
const BATCH: usize = 500;

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Rows rewritten (hashed, sealed or sealed again).
    pub rows: u64,
    /// Raw user ids replaced in the tables derived from events.
    pub user_ids: u64,
    /// Rows whose ciphertext no listed key opens (sealed under a key this instance lacks).
    pub unreadable: u64,
}

/// Runs the pass if the store's rows are not all under the current key version; `None` when
/// there was nothing to do. The first pass on a store (after the upgrade that brought hashed
/// identifiers) runs before the attribution state loads, so no request matches or deletes
/// against raw rows (`service::tracking`); later passes (after a key rotation) only re-seal and
/// run in the background.
pub async fn renew(svc: &Services) -> Result<Option<PassReport>, StorageError> {
    let current = i64::from(svc.ids.current());
    if retry(|| svc.storage.identifiers_version()).await? == Some(current) {
        return Ok(None);
    }
    let mut report = PassReport::default();
    for table in ID_TABLES.iter() {
        let mut after = None;
        loop {
            let rows = retry(|| svc.storage.identifier_rows(table, after.clone(), BATCH)).await?;
            let Some(last) = rows.last() else { break };
            after = Some(last.key.clone());
            let mut changed = Vec::new();
            // Raw user ids of events: replaced in the tables derived from events as well (by
            // their user_id indexes), batch by batch.
            let mut users: Vec<(String, String)> = Vec::new();
            for mut row in rows {
                if table.ids.first() == Some(&"user_id")
                    && let Some(raw) = row.ids[0].as_deref().filter(|u| !is_hashed(u))
                {
                    users.push((raw.to_owned(), svc.ids.user(raw)));
                }
                if row.sealed.as_deref().is_some_and(|b| svc.ids.open(b).is_none()) {
                    report.unreadable += 1;
                } else if svc.ids.renew(table.ids, &mut row.ids, &mut row.sealed) {
                    changed.push(row);
                }
            }
            if !changed.is_empty() {
                report.rows += changed.len() as u64;
                metrics::counter!("trailmark_identifiers_renewed_total", "table" => table.table)
                    .increment(changed.len() as u64);
                retry(|| svc.storage.rewrite_identifiers(table, changed.clone())).await?;
            }
            users.sort();
            users.dedup();
            if !users.is_empty() {
                report.user_ids += users.len() as u64;
                retry(|| svc.storage.replace_user_ids(users.clone())).await?;
            }
        }
    }
    // What is left: derived rows whose events are gone (retention).
    loop {
        let mut raw = retry(|| svc.storage.raw_user_ids(BATCH)).await?;
        raw.sort();
        raw.dedup();
        if raw.is_empty() {
            break;
        }
        report.user_ids += raw.len() as u64;
        let pairs: Vec<(String, String)> = raw.into_iter().map(|u| (u.clone(), svc.ids.user(&u))).collect();
        retry(|| svc.storage.replace_user_ids(pairs.clone())).await?;
    }
    if report.unreadable > 0 {
        tracing::warn!(
            rows = report.unreadable,
            "identifier ciphertexts sealed under a key this instance does not have: give every instance the same key file"
        );
    } else {
        retry(|| svc.storage.set_identifiers_version(current)).await?;
    }
    Ok(Some(report))
}

/// A storage call, again after a pause while the SQLite writer is busy.
async fn retry<T, F, Fut>(mut call: F) -> Result<T, StorageError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StorageError>>,
{
    loop {
        match call().await {
            Err(StorageError::Busy) => tokio::time::sleep(Duration::from_millis(100)).await,
            other => return other,
        }
    }
}
