//! The server's background work, started explicitly and owned by a [`ServerHandle`]: the
//! attribution state load, the postback sender, the report scheduler and the link reloader.
//! No background task starts as a side effect of a request. [`ServerHandle::shutdown`] stops
//! them, lets the work in flight finish (within bounds), and waits for the store's writer to
//! commit what it was handed.
//!
//! The tasks hold the services weakly (the postback sender holds only the store and its queue),
//! so when the server's state is dropped they end by themselves; dropping the handle without
//! `shutdown` leaves them running as long as the server is.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::tracking::LINK_REFRESH;
use super::{Services, Stop};
use crate::storage::StorageError;

/// Why the tasks could not start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("the server's background tasks must start inside a Tokio runtime")]
    NoRuntime,
    #[error("the server's background tasks were started already")]
    AlreadyStarted,
    /// The TLS backend of the postback client could not be set up.
    #[error("the postback HTTP client could not be built")]
    PostbackClient,
}

/// The background tasks of one server. Keep it for as long as the server runs; call
/// [`ServerHandle::shutdown`] to stop cleanly.
#[must_use = "the handle is how the server's background tasks are shut down"]
pub struct ServerHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    services: Weak<Services>,
}

/// Longest wait for the tasks to finish at shutdown; what is left then is aborted.
const TASKS_DRAIN: Duration = Duration::from_secs(30);
/// Longest wait for the store's writer to empty its queue at shutdown.
const WRITER_DRAIN: Duration = Duration::from_secs(10);

/// A task that runs `tick` every `every` while the services exist, until `stop`.
fn every<F, Fut>(services: &Arc<Services>, mut stop: Stop, every: Duration, tick: F) -> JoinHandle<()>
where
    F: Fn(Arc<Services>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let weak = Arc::downgrade(services);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.stopped() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let Some(svc) = weak.upgrade() else { break };
            tokio::select! {
                _ = stop.stopped() => break,
                _ = tick(svc) => {}
            }
        }
    })
}

/// Starts the background tasks of `services`, once, inside a Tokio runtime.
pub fn start(services: &Arc<Services>) -> Result<ServerHandle, StartError> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(StartError::NoRuntime);
    }
    let postback_client = super::postbacks::client(&services.config.postback_policy).map_err(|e| {
        tracing::error!(error = %e, "postbacks cannot be sent");
        StartError::PostbackClient
    })?;
    if services.tasks_started.swap(true, Ordering::SeqCst) {
        return Err(StartError::AlreadyStarted);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Stop(stop_rx);
    let mut tasks = Vec::new();

    // The attribution state (links, touch index, burst baseline) loads now; a request arriving
    // meanwhile waits for the same load, and a failed load is tried again by the next request.
    let weak = Arc::downgrade(services);
    let mut load_stop = stop.clone();
    tasks.push((
        "attribution state",
        tokio::spawn(async move {
            let Some(svc) = weak.upgrade() else { return };
            tokio::select! {
                _ = load_stop.stopped() => {}
                _ = svc.tracking.ready(&svc) => {}
            }
        }),
    ));

    // Stored identifiers brought to the current key (after a rotation or an upgrade).
    let weak = Arc::downgrade(services);
    let mut pass_stop = stop.clone();
    tasks.push((
        "identifier pass",
        tokio::spawn(async move {
            let Some(svc) = weak.upgrade() else { return };
            // After the attribution state load, which runs a never-passed store's first pass.
            tokio::select! {
                _ = pass_stop.stopped() => return,
                _ = svc.tracking.ready(&svc) => {}
            }
            tokio::select! {
                _ = pass_stop.stopped() => {}
                done = super::identifiers::renew(&svc) => match done {
                    Ok(Some(report)) => tracing::info!(?report, key_version = svc.ids.current(), "identifier pass done"),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "identifier pass stopped; it runs again at the next start"),
                },
            }
        }),
    ));

    if !services.config.postbacks.is_empty() {
        let (sender, task) = super::postbacks::start(
            services.storage.clone(),
            postback_client.clone(),
            services.config.postback_policy.clone(),
            &services.config.postbacks,
            stop.clone(),
        );
        let _ = services.postback_sender.set(sender);
        tasks.push(("postback sender", task));
    }

    if services.config.reports.scheduler {
        let tick = Duration::from_millis(services.config.reports.refresh_interval.clamp(100, 60_000) as u64);
        tasks.push((
            "report scheduler",
            every(services, stop.clone(), tick, |svc| async move {
                match svc.maintenance.run_due().await {
                    Ok(r) if r.purged.is_some() => tracing::info!(?r, "retention applied"),
                    Ok(_) | Err(StorageError::Busy) => {}
                    Err(e) => tracing::warn!(error = %e, "report maintenance failed"),
                }
            }),
        ));
    }

    if services.olap.is_none() {
        // Started without ClickHouse: the outbox stops filling (and is emptied) if an earlier
        // run had one.
        let storage = services.storage.clone();
        tasks.push((
            "OLAP outbox switch",
            tokio::spawn(async move {
                if let Err(e) = storage.olap_switch(false, false).await {
                    tracing::warn!(error = %e, "the OLAP outbox could not be switched off");
                }
            }),
        ));
    }
    if let Some(olap) = &services.olap {
        let tick = Duration::from_millis(
            services.config.clickhouse.as_ref().map_or(1_000, |c| c.interval).clamp(50, 60_000) as u64,
        );
        let olap = olap.clone();
        tasks.push((
            "ClickHouse loader",
            every(services, stop.clone(), tick, move |_svc| {
                let olap = olap.clone();
                async move {
                    if let Err(e) = olap.catch_up(None).await {
                        tracing::warn!(error = %e, "ClickHouse load failed; the outbox keeps the entries");
                    }
                }
            }),
        ));
    }

    // Links edited through another instance sharing the store (disabled, say) take effect
    // here within LINK_REFRESH; a miss reloads at once (`links::find_link`).
    tasks.push((
        "link reloader",
        every(services, stop, LINK_REFRESH, |svc| async move {
            if svc.tracking.lock_loaded().is_some()
                && let Err(e) = svc.tracking.reload_links(&svc, LINK_REFRESH / 2).await
            {
                tracing::warn!(error = %e, "links not reloaded");
            }
        }),
    ));

    Ok(ServerHandle { stop: stop_tx, tasks, services: Arc::downgrade(services) })
}

impl ServerHandle {
    /// Stops the background tasks and waits for them: a report refresh in progress finishes,
    /// postback deliveries in flight get their request timeout (undelivered ones stay pending
    /// for the next start), anything still running after 30 s is aborted, and the store's
    /// writer commits what it was handed (up to 10 s).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + TASKS_DRAIN;
        for (name, mut task) in self.tasks {
            match tokio::time::timeout_at(deadline, &mut task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_cancelled() => {}
                Ok(Err(e)) => tracing::error!(task = name, error = %e, "background task failed"),
                Err(_) => {
                    tracing::warn!(task = name, "background task did not stop in time; aborted");
                    task.abort();
                }
            }
        }
        let Some(services) = self.services.upgrade() else { return };
        let deadline = tokio::time::Instant::now() + WRITER_DRAIN;
        while services.storage.backlog() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(backlog = services.storage.backlog(), "server stopped");
    }

    /// Names of the tasks this handle owns (for logs and tests).
    pub fn task_names(&self) -> Vec<&'static str> {
        self.tasks.iter().map(|(name, _)| *name).collect()
    }
}
