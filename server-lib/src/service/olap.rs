//! The ClickHouse loader (ADR 0018): copies what the primary store's OLAP outbox names —
//! facts, users and sessions in their current state, deletions' erasures and the retention
//! cut — into ClickHouse, page by page, and removes each page's entries once ClickHouse took
//! them. Nothing is lost while ClickHouse is down: the entries wait and the loader resumes
//! where it stopped. One loader at a time across instances (a lease in the primary store).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::{ServiceError, ServiceResult};
use crate::domain::config::{ClickHouseConfig, Clock};
use crate::domain::records::{OlapLease, ReportQuery, ReportRows};
use crate::domain::reports::CohortCount;
use crate::olap::OlapError;
use crate::olap::clickhouse::{ClickHouse, FunnelQuery};
use crate::storage::{Storage, StorageError};

/// How long a loader's lease lasts unless it loads again (ms).
const LEASE_TTL: i64 = 30_000;

impl From<OlapError> for ServiceError {
    fn from(e: OlapError) -> Self {
        match e {
            OlapError::Unreachable(_) => ServiceError::Unavailable(e.to_string()),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

/// What one load step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This many entries were loaded (fewer than a page: none is left).
    Loaded(usize),
    /// Another instance holds the lease: it loads.
    Elsewhere,
}

/// The loader and the reader of the ClickHouse copy.
pub struct OlapLoader {
    ch: ClickHouse,
    storage: Arc<dyn Storage>,
    clock: Clock,
    holder: i64,
    batch: usize,
    ready: tokio::sync::OnceCell<()>,
    running: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for OlapLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OlapLoader").field("ch", &self.ch).field("batch", &self.batch).finish_non_exhaustive()
    }
}

impl OlapLoader {
    pub fn new(config: &ClickHouseConfig, storage: Arc<dyn Storage>, clock: Clock) -> Result<Self, OlapError> {
        let ch = ClickHouse::new(&config.url, &config.database)?
            .with_credentials(config.user.as_deref(), config.password.as_deref());
        Ok(OlapLoader {
            ch,
            storage,
            clock,
            holder: (uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64,
            batch: config.batch_size.clamp(1, 1_000_000),
            ready: tokio::sync::OnceCell::new(),
            running: tokio::sync::Mutex::new(()),
        })
    }

    pub fn clickhouse(&self) -> &ClickHouse {
        &self.ch
    }

    /// The report tables exist and the primary store notes changes (once per process).
    async fn ready(&self) -> ServiceResult<()> {
        self.ready
            .get_or_try_init(|| async {
                self.ch.migrate().await?;
                self.storage.olap_switch(true).await?;
                Ok::<(), ServiceError>(())
            })
            .await?;
        Ok(())
    }

    /// Loads one page of the outbox.
    pub async fn step(&self) -> ServiceResult<Step> {
        self.ready().await?;
        let lease = OlapLease { holder: self.holder, now: self.clock.now(), ttl: LEASE_TTL };
        let Some(page) = self.storage.olap_page(lease, self.batch).await? else { return Ok(Step::Elsewhere) };
        let taken = page.seqs.len();
        if taken > 0 {
            if let Err(e) = self.ch.load(&page).await {
                metrics::counter!("trailmark_olap_load_failures_total").increment(1);
                return Err(e.into());
            }
            let rows = page.facts.len() + page.users.len() + page.sessions.len();
            self.storage.olap_done(page.seqs).await?;
            metrics::counter!("trailmark_olap_loaded_rows_total").increment(rows as u64);
            metrics::gauge!("trailmark_olap_last_load_ms").set(self.clock.now() as f64);
        }
        Ok(Step::Loaded(taken))
    }

    /// Loads until the outbox is empty (or another instance loads); reports the entries still
    /// pending as the loader's lag (`trailmark_olap_pending_entries`).
    pub async fn catch_up(&self) -> ServiceResult<usize> {
        let _one = self.running.lock().await;
        let mut loaded = 0;
        let outcome = loop {
            match self.step().await {
                Ok(Step::Loaded(n)) => {
                    loaded += n;
                    if n < self.batch {
                        break Ok(loaded);
                    }
                }
                Ok(Step::Elsewhere) => break Ok(loaded),
                Err(e) => break Err(e),
            }
        };
        match self.storage.olap_pending().await {
            Ok(n) => metrics::gauge!("trailmark_olap_pending_entries").set(n as f64),
            Err(StorageError::Busy) => {}
            Err(e) => tracing::debug!(error = %e, "OLAP lag not measured"),
        }
        outcome
    }

    /// The funnel computed in ClickHouse after loading what is pending; `None` when it cannot
    /// be pushed down there (the caller reads the rows).
    pub async fn funnel(&self, q: &FunnelQuery<'_>) -> ServiceResult<Option<Vec<u64>>> {
        self.catch_up().await?;
        Ok(self.ch.funnel(q).await?)
    }

    /// The retention cohorts' counts computed in ClickHouse after loading what is pending.
    pub async fn retention(
        &self,
        app_id: &str,
        range: (i64, i64),
        days: &[i64],
        links: &HashMap<String, String>,
    ) -> ServiceResult<Option<BTreeMap<i64, CohortCount>>> {
        self.catch_up().await?;
        Ok(self.ch.retention(app_id, range, days, links).await?)
    }

    /// The rows of a report from ClickHouse, after loading what is pending; `None` for the
    /// reports the primary store answers (campaign rollups, the live feed, alerts).
    pub async fn report(&self, query: &ReportQuery) -> ServiceResult<Option<ReportRows>> {
        if !matches!(query, ReportQuery::Events { .. } | ReportQuery::SessionsWith { .. } | ReportQuery::Cohorts { .. })
        {
            return Ok(None);
        }
        self.catch_up().await?;
        Ok(self.ch.report(query).await?)
    }
}
