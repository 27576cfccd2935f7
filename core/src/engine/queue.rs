//! The queue's caps: count caps, the age cap, and how a dropped event leaves the pending write.

#[allow(unused_imports)]
use crate::prelude::*;

use super::log;
use super::{Engine, Millis, ms};
use crate::store::EventStore;

impl<S: EventStore> Engine<S> {
    pub(super) fn inflight_len(&self) -> usize {
        self.inflight.as_ref().map_or(0, |f| f.seqs.len())
    }

    pub(super) fn enforce_caps(&mut self) {
        let skip = self.inflight_len();
        while self.queue.len() > self.config.policy.max_queue_events && self.queue.len() > skip {
            if let Some(e) = self.queue.remove(skip) {
                self.discard(e.seq);
                self.state.stats.dropped_queue_full += 1;
                self.state.unreported.queue_full += 1;
                log!(self, "queue full: oldest event dropped");
            }
        }
        while self.held.len() > self.config.policy.max_pre_consent_events {
            if let Some(e) = self.held.pop_front() {
                self.discard(e.seq);
                self.state.stats.dropped_pre_consent_full += 1;
                self.state.unreported.pre_consent_full += 1;
                log!(self, "pre-consent buffer full: oldest held event dropped");
            }
        }
    }

    /// Drops events older than the age cap (never the in-flight batch).
    pub(super) fn expire(&mut self, now: Millis) {
        let cutoff = now.saturating_sub(ms(self.config.policy.max_event_age));
        let skip = self.inflight_len();
        let mut n = 0;
        while self.queue.get(skip).is_some_and(|e| e.created_at < cutoff) {
            if let Some(e) = self.queue.remove(skip) {
                self.discard(e.seq);
                n += 1;
            }
        }
        while self.held.front().is_some_and(|e| e.created_at < cutoff) {
            if let Some(e) = self.held.pop_front() {
                self.discard(e.seq);
                n += 1;
            }
        }
        if n > 0 {
            self.state.stats.dropped_expired += n;
            self.state.unreported.expired += n;
            self.state_dirty = true;
            log!(self, "{n} events expired");
        }
    }

    fn discard(&mut self, seq: u64) {
        match self.pending.inserts.binary_search_by_key(&seq, |e| e.seq) {
            Ok(i) => {
                self.pending.inserts.remove(i);
            }
            Err(_) => self.pending.deletes.push(seq),
        }
    }
}
