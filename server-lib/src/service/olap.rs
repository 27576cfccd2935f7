//! The ClickHouse loader (ADR 0018): copies what the primary store's OLAP outbox names —
//! facts, users and sessions in their current state, deletions' erasures and the retention
//! cut — into ClickHouse, page by page, and removes each page's entries once ClickHouse took
//! them. Nothing is lost while ClickHouse is down: the entries wait and the loader resumes
//! where it stopped. One loader at a time across instances (a lease in the primary store).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{ServiceError, ServiceResult};
use crate::domain::config::{ClickHouseConfig, Clock};
use crate::domain::records::{OlapLease, ReportQuery, ReportRows};
use crate::domain::reports::CohortCount;
use crate::olap::OlapError;
use crate::olap::clickhouse::{ClickHouse, FunnelQuery};
use crate::storage::{Storage, StorageError};

/// How long a loader's lease lasts unless renewed (ms): well above the longest ClickHouse
/// request, as the lease is renewed before each statement of a page.
const LEASE_TTL: i64 = 4 * crate::olap::clickhouse::REQUEST_TIMEOUT_SECS as i64 * 1000;

/// Most outbox entries a report or a deletion loads itself before it answers; beyond it the
/// background loader goes on and a report answers 503 (ClickHouse is catching up).
const REQUEST_BUDGET: usize = 200_000;

impl From<OlapError> for ServiceError {
    fn from(e: OlapError) -> Self {
        match e {
            OlapError::Unreachable(_) => ServiceError::Unavailable(e.to_string()),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

fn behind() -> ServiceError {
    ServiceError::Unavailable(
        "ClickHouse is catching up with the primary store (many changes to load); try again shortly".into(),
    )
}

/// What one load step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This many entries were loaded; `more`: others may be waiting.
    Loaded { entries: usize, more: bool },
    /// Another instance holds the lease: it loads.
    Elsewhere,
}

/// Where a catch-up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaughtUp {
    /// Nothing was pending any more.
    Done,
    /// Another instance holds the lease and loads (within its interval).
    Elsewhere,
    /// The budget was spent with entries still waiting.
    Behind,
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
    /// `erase_key`: the server's audit key (keys the hashes erasures find rows by).
    pub fn new(
        config: &ClickHouseConfig,
        storage: Arc<dyn Storage>,
        clock: Clock,
        erase_key: [u8; 32],
    ) -> Result<Self, OlapError> {
        let ch = ClickHouse::new(&config.url, &config.database)?
            .with_credentials(config.user.as_deref(), config.password.as_deref())
            .with_erase_key(erase_key);
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

    /// The report tables exist and the primary store notes changes (once per process). A
    /// ClickHouse never filled (new, or its database dropped) or filled under another version
    /// of the schema is filled again from the primary store.
    async fn ready(&self) -> ServiceResult<()> {
        self.ready
            .get_or_try_init(|| async {
                self.ch.migrate().await?;
                let refill = self.ch.needs_refill().await?;
                self.storage.olap_switch(true, refill).await?;
                Ok::<(), ServiceError>(())
            })
            .await?;
        Ok(())
    }

    fn lease(&self) -> OlapLease {
        OlapLease { holder: self.holder, now: self.clock.now(), ttl: LEASE_TTL }
    }

    /// Loads one page of the outbox. The lease is renewed before each statement sent to
    /// ClickHouse (each ends within its request timeout, well inside the lease), so a loader
    /// that lost it — stalled past its lease while another took over — writes nothing more.
    pub async fn step(&self) -> ServiceResult<Step> {
        self.ready().await?;
        let Some(page) = self.storage.olap_page(self.lease(), self.batch).await? else { return Ok(Step::Elsewhere) };
        if page.switched_off {
            // An instance started without ClickHouse switched the outbox off (and emptied it):
            // whatever it held is lost, so the copy is made again.
            tracing::warn!(
                "the OLAP outbox was switched off (an instance without --clickhouse?): refilling ClickHouse"
            );
            self.storage.olap_switch(true, true).await?;
            return Ok(Step::Loaded { entries: 0, more: true });
        }
        let entries = page.seqs.len();
        if entries == 0 {
            return Ok(Step::Loaded { entries, more: false });
        }
        for statement in self.ch.plan(&page) {
            if !self.storage.olap_renew(self.lease()).await? {
                return Ok(Step::Elsewhere);
            }
            if let Err(e) = self.ch.apply(&statement).await {
                metrics::counter!("trailmark_olap_load_failures_total").increment(1);
                return Err(e.into());
            }
        }
        if !self.storage.olap_renew(self.lease()).await? {
            return Ok(Step::Elsewhere);
        }
        let rows = page.facts.len() + page.users.len() + page.sessions.len() + page.mirrored.len();
        self.storage.olap_done(page.seqs).await?;
        metrics::counter!("trailmark_olap_loaded_rows_total").increment(rows as u64);
        metrics::gauge!("trailmark_olap_last_load_ms").set(self.clock.now() as f64);
        Ok(Step::Loaded { entries, more: page.more })
    }

    /// Loads until the outbox is empty, another instance loads, or `budget` entries were
    /// loaded; reports the entries still pending as the loader's lag
    /// (`trailmark_olap_pending_entries`). Runs as a task of its own, so a caller that goes
    /// away (a client closing its report request) never stops a page half-loaded.
    pub async fn catch_up(self: &Arc<Self>, budget: Option<usize>) -> ServiceResult<CaughtUp> {
        let this = self.clone();
        let task = tokio::spawn(async move { this.catch_up_here(budget).await });
        task.await.map_err(|e| ServiceError::Internal(format!("the ClickHouse loader stopped: {e}")))?
    }

    async fn catch_up_here(&self, budget: Option<usize>) -> ServiceResult<CaughtUp> {
        let mut loaded = 0;
        let outcome = loop {
            // One page at a time in this process; callers take turns between pages.
            let step = {
                let _one = self.running.lock().await;
                self.step().await
            };
            match step {
                Ok(Step::Loaded { entries, more }) => {
                    loaded += entries;
                    if !more {
                        break Ok(CaughtUp::Done);
                    }
                    if budget.is_some_and(|b| loaded >= b) {
                        break Ok(CaughtUp::Behind);
                    }
                }
                Ok(Step::Elsewhere) => break Ok(CaughtUp::Elsewhere),
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

    /// Before a report: what is pending is loaded (up to [`REQUEST_BUDGET`] entries); more than
    /// that answers 503 while the background loader catches up.
    async fn fresh(self: &Arc<Self>) -> ServiceResult<()> {
        if self.storage.olap_pending().await? > REQUEST_BUDGET as u64 {
            return Err(behind());
        }
        match self.catch_up(Some(REQUEST_BUDGET)).await? {
            CaughtUp::Done | CaughtUp::Elsewhere => Ok(()),
            CaughtUp::Behind => Err(behind()),
        }
    }

    /// Before a deletion's receipt: `erasing` once its erasure went to ClickHouse, `queued`
    /// while it waits in the outbox (ClickHouse unreachable, another instance loading, a
    /// backlog ahead of it).
    pub async fn hand_over(self: &Arc<Self>) -> &'static str {
        if self.storage.olap_pending().await.map_or(true, |n| n > REQUEST_BUDGET as u64) {
            return "queued";
        }
        match self.catch_up(Some(REQUEST_BUDGET)).await {
            Ok(CaughtUp::Done) => "erasing",
            Ok(_) => "queued",
            Err(e) => {
                tracing::warn!(error = %e, "the ClickHouse erasure waits for the loader");
                "queued"
            }
        }
    }

    /// The funnel computed in ClickHouse after loading what is pending.
    pub async fn funnel(self: &Arc<Self>, q: &FunnelQuery<'_>) -> ServiceResult<Vec<u64>> {
        self.fresh().await?;
        Ok(self.ch.funnel(q).await?)
    }

    /// The retention cohorts' counts computed in ClickHouse after loading what is pending.
    pub async fn retention(
        self: &Arc<Self>,
        app_id: &str,
        range: (i64, i64),
        days: &[i64],
    ) -> ServiceResult<BTreeMap<i64, CohortCount>> {
        self.fresh().await?;
        Ok(self.ch.retention(app_id, range, days).await?)
    }

    /// The rows of the paths or campaign report from ClickHouse, after loading what is pending;
    /// `None` for the others (funnels and retention have their own calls; the live feed and
    /// alerts are the primary store's).
    pub async fn report(self: &Arc<Self>, query: &ReportQuery) -> ServiceResult<Option<ReportRows>> {
        if !matches!(query, ReportQuery::SessionsWith { .. } | ReportQuery::Campaigns { .. }) {
            return Ok(None);
        }
        self.fresh().await?;
        Ok(self.ch.report(query).await?)
    }
}
