//! A person's deletion (`/v1/user/delete`): every stored row that refers to the subject, the
//! copies of their clicks in the touch index or the shared click cache, an audit record that
//! holds only a keyed hash of the subject, and a deletion record on the event stream.

use super::{ServiceResult, Services};
use crate::domain::privacy::{Suppression, Tombstones, install_touch_id, subject_hash, suppression_hash};
use crate::domain::records::{DeletionAudit, Subject};
use crate::domain::stream::deletion_record;

/// What a deletion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    pub receipt_id: String,
    pub rows_deleted: u64,
    /// Parts that could not be cleaned now, for the caller to report.
    pub warnings: Vec<&'static str>,
    /// With reports in ClickHouse: `erasing` (the erasure was handed to ClickHouse, which
    /// applies it in the background) or `queued` (ClickHouse could not be reached: the loader
    /// hands it over when it can; the entry is in the primary store).
    pub clickhouse: Option<&'static str>,
}

/// Deletes `subject`'s data, audited as requested by `requested_by`; tombstones keep the
/// deleted events from coming back, and with `suppress` the subject's identifiers too.
pub async fn delete(svc: &Services, subject: Subject, requested_by: String, suppress: bool) -> ServiceResult<Deletion> {
    let receipt_id = uuid::Uuid::new_v4().to_string();
    let audit = DeletionAudit {
        receipt_id: receipt_id.clone(),
        subject_kind: subject.kind(),
        subject_hash: subject_hash(&svc.config.audit_key, &subject),
        requested_at: svc.config.clock.now(),
        requested_by,
    };
    let tombstones = Tombstones { key: svc.config.audit_key, suppress };
    // Rows hold user and device ids in their stored form (the attribution state load first
    // brings the rows of earlier versions to it).
    svc.tracking.ready(svc).await?;
    let stored = svc.ids.subject(&subject);
    let report = svc.storage.delete_subject(stored, audit, tombstones).await?;
    let mut warnings = Vec::new();
    // The subject's clicks, and its installs as noted on their addresses.
    let mut touch_ids = report.click_ids.clone();
    touch_ids.extend(
        report.anonymous_ids.iter().map(|(app, anon)| install_touch_id(&svc.config.audit_key, app, anon).to_string()),
    );
    if let Err(e) = svc.clicks.forget(svc, &touch_ids).await {
        // Storage is clean (a retry would find nothing to forget); the cached touches
        // expire with the attribution window.
        tracing::error!(error = %e, receipt = %receipt_id, "deleted touches stay in the click cache until they expire");
        warnings.push("the click cache could not be reached: its copies of the subject's clicks expire within the attribution window");
    }
    // The erasure was noted in the outbox in the deletion's transaction; hand it over now.
    let clickhouse = match &svc.olap {
        None => None,
        Some(olap) => Some(olap.hand_over().await),
    };
    metrics::counter!("trailmark_user_deletions_total").increment(1);
    if let Some(sink) = &svc.event_sink {
        let at = svc.config.clock.now();
        let ids = svc.config.stream.deletion_ids;
        let record = deletion_record(&receipt_id, &subject, &report.anonymous_ids, at, ids, &svc.config.audit_key);
        sink.publish(vec![record]);
    }
    Ok(Deletion { receipt_id, rows_deleted: report.rows, warnings, clickhouse })
}

/// Suppressions, newest first.
pub async fn suppressions(svc: &Services, limit: usize) -> ServiceResult<Vec<Suppression>> {
    Ok(svc.storage.suppressions(limit).await?)
}

/// Lifts the suppressions of a deletion (by receipt id) or of one identifier (a user or
/// anonymous id in every app of the server).
pub async fn lift(svc: &Services, receipt_id: Option<String>, subject: Option<Subject>) -> ServiceResult<u64> {
    let key = &svc.config.audit_key;
    let subject = subject.map(|s| svc.ids.subject(&s));
    let hashes: Vec<String> = match &subject {
        None => Vec::new(),
        Some(s @ Subject::DeviceId(_)) => vec![suppression_hash(key, s.kind(), "", s.value())],
        Some(s) => svc.config.apps.keys().map(|app| suppression_hash(key, s.kind(), app, s.value())).collect(),
    };
    let lifted = svc.storage.lift_suppressions(receipt_id, hashes).await?;
    metrics::counter!("trailmark_suppressions_lifted_total").increment(lifted);
    Ok(lifted)
}
