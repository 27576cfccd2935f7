//! Live counters the ingest and install paths bump and the dashboard streams: since the process
//! started (per instance), with an events-per-minute rate over the last 60 seconds.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{Value, json};

/// Counters the ingest and install handlers bump, read by the live view. Since the process
/// started; the events-per-minute rate over the last 60 seconds of wall time.
#[derive(Default)]
pub struct Live {
    events: AtomicU64,
    rejected_events: AtomicU64,
    installs: AtomicU64,
    attributed: AtomicU64,
    fraud_rejected: AtomicU64,
    burst_alerts: AtomicU64,
    /// (second, events accepted in it), newest last.
    per_second: Mutex<VecDeque<(u64, u64)>>,
    epoch: std::sync::OnceLock<Instant>,
}

impl Live {
    fn second(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_secs()
    }

    pub fn events(&self, accepted: u64, rejected: u64) {
        self.events.fetch_add(accepted, Ordering::Relaxed);
        self.rejected_events.fetch_add(rejected, Ordering::Relaxed);
        if accepted == 0 {
            return;
        }
        let now = self.second();
        let mut q = self.per_second.lock().unwrap_or_else(|p| p.into_inner());
        match q.back_mut() {
            Some((s, n)) if *s == now => *n += accepted,
            _ => q.push_back((now, accepted)),
        }
        while q.front().is_some_and(|(s, _)| s + 60 <= now) {
            q.pop_front();
        }
    }

    pub fn install(&self, attributed: bool, rejected: bool) {
        self.installs.fetch_add(1, Ordering::Relaxed);
        if attributed {
            self.attributed.fetch_add(1, Ordering::Relaxed);
        }
        if rejected {
            self.fraud_rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn burst_alert(&self) {
        self.burst_alerts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Value {
        let now = self.second();
        let per_min: u64 = {
            let q = self.per_second.lock().unwrap_or_else(|p| p.into_inner());
            q.iter().filter(|(s, _)| s + 60 > now).map(|(_, n)| n).sum()
        };
        let installs = self.installs.load(Ordering::Relaxed);
        let attributed = self.attributed.load(Ordering::Relaxed);
        json!({
            "events_per_min": per_min,
            "events": self.events.load(Ordering::Relaxed),
            "rejected_events": self.rejected_events.load(Ordering::Relaxed),
            "installs": installs,
            "attributed": attributed,
            "match_rate": (installs > 0).then(|| attributed as f64 / installs as f64),
            "fraud_rejected": self.fraud_rejected.load(Ordering::Relaxed),
            "burst_alerts": self.burst_alerts.load(Ordering::Relaxed),
        })
    }
}
