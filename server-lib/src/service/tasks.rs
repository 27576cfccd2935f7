//! The server's background work, started explicitly and owned by a [`ServerHandle`]: the
//! attribution state load, the postback sender, the report scheduler and the link reloader.
//! Nothing starts as a side effect of a request. [`ServerHandle::shutdown`] stops them, lets
//! the work in flight finish, and waits for the store's writer to commit what it was handed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::tracking::LINK_REFRESH;
use super::{Services, Stop};
use crate::storage::StorageError;

/// The background tasks of one server. Keep it for as long as the server runs; call
/// [`ServerHandle::shutdown`] to stop cleanly.
pub struct ServerHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    services: Arc<Services>,
}

/// Longest wait for the store's writer to empty its queue at shutdown.
const WRITER_DRAIN: Duration = Duration::from_secs(10);

/// Starts the background tasks of `services` (inside a Tokio runtime).
pub fn start(services: &Arc<Services>) -> ServerHandle {
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = Stop(stop_rx);
    let mut tasks = Vec::new();

    // The attribution state (links, touch index, burst baseline) loads now, not on the first
    // request; a request arriving meanwhile waits for the same load.
    let svc = services.clone();
    tasks.push((
        "attribution state",
        tokio::spawn(async move {
            let _ = svc.tracking.ready(&svc).await;
        }),
    ));

    if !services.config.postbacks.is_empty() {
        let (sender, task) =
            super::postbacks::start(services.storage.clone(), services.config.postback_policy.clone(), stop.clone());
        let _ = services.postback_sender.set(sender);
        tasks.push(("postback sender", task));
    }

    if services.config.reports.scheduler {
        let maintenance = services.maintenance.clone();
        let tick = Duration::from_millis(services.config.reports.refresh_interval.clamp(100, 60_000) as u64);
        let mut stop = stop.clone();
        tasks.push((
            "report scheduler",
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.stopped() => break,
                        _ = tokio::time::sleep(tick) => {}
                    }
                    match maintenance.run_due().await {
                        Ok(r) if r.purged.is_some() => tracing::info!(?r, "retention applied"),
                        Ok(_) | Err(StorageError::Busy) => {}
                        Err(e) => tracing::warn!(error = %e, "report maintenance failed"),
                    }
                }
            }),
        ));
    }

    // Links edited through another instance sharing the store (disabled, say) take effect
    // here within LINK_REFRESH; misses reload at once (links::find_link).
    let svc = services.clone();
    let mut link_stop = stop;
    tasks.push((
        "link reloader",
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = link_stop.stopped() => break,
                    _ = tokio::time::sleep(LINK_REFRESH) => {}
                }
                if svc.tracking.lock_loaded().is_some()
                    && let Err(e) = svc.tracking.reload_links(&svc, LINK_REFRESH / 2).await
                {
                    tracing::warn!(error = %e, "links not reloaded");
                }
            }
        }),
    ));

    ServerHandle { stop: stop_tx, tasks, services: services.clone() }
}

impl ServerHandle {
    /// Stops the background tasks and waits for them: a report refresh in progress finishes,
    /// postback deliveries in flight get their request timeout (undelivered ones stay pending
    /// for the next start), and the store's writer commits what it was handed (up to 10 s).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for (name, task) in self.tasks {
            if let Err(e) = task.await
                && !e.is_cancelled()
            {
                tracing::error!(task = name, error = %e, "background task failed");
            }
        }
        let deadline = tokio::time::Instant::now() + WRITER_DRAIN;
        while self.services.storage.backlog() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(backlog = self.services.storage.backlog(), "server stopped");
    }

    /// Names of the tasks this handle owns (for logs and tests).
    pub fn task_names(&self) -> Vec<&'static str> {
        self.tasks.iter().map(|(name, _)| *name).collect()
    }
}
