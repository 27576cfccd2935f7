//! Consent, opt-out and reset, and the rules that follow from them: whether events are
//! collected, held or ignored, and whether uploads and attribution data may leave the device.

#[allow(unused_imports)]
use crate::prelude::*;

use super::log;
use super::{ConsentUpdate, Engine, Millis, new_uuid};
use crate::protocol::DropReport;
use crate::store::EventStore;

/// Where a new event goes.
pub(super) enum Collect {
    Queue,
    Hold,
    Ignore,
}

impl PartialEq for Collect {
    fn eq(&self, other: &Self) -> bool {
        core::mem::discriminant(self) == core::mem::discriminant(other)
    }
}

impl<S: EventStore> Engine<S> {
    /// Forgets the user: a new anonymous id, no user id, and the next event starts a new
    /// session. Queued events keep the ids they were recorded with.
    pub fn reset(&mut self, _now: Millis) {
        self.state.anonymous_id = new_uuid(&mut self.rng);
        self.state.user_id = None;
        self.state.session = None;
        self.state.registered = crate::json::Object::new();
        self.state.group_id = None;
        self.state_dirty = true;
        log!(self, "reset: new anonymous id");
    }

    /// Changes consent. Granting analytics releases the pre-consent buffer into the upload
    /// queue; denying or withdrawing it drops everything not yet delivered (the buffer and the
    /// upload queue, as `opt_out` does) and stops collection.
    pub fn set_consent(&mut self, now: Millis, update: ConsentUpdate) {
        let consent = &mut self.state.consent;
        if let Some(a) = update.attribution {
            consent.attribution = Some(a);
        }
        if let Some(d) = update.do_not_sell {
            consent.do_not_sell = d;
        }
        if let Some(a) = update.analytics {
            consent.analytics = Some(a);
        }
        self.state_dirty = true;
        match update.analytics {
            Some(true) if !self.held.is_empty() => {
                let n = self.held.len();
                self.queue.extend(self.held.drain(..));
                debug_assert!(self.queue.iter().zip(self.queue.iter().skip(1)).all(|(a, b)| a.seq < b.seq));
                self.pending.inserts.iter_mut().for_each(|e| e.held = false);
                self.pending.release_held = true;
                self.flush_deadline.get_or_insert(now);
                self.enforce_caps();
                log!(self, "consent granted: {n} held events released");
            }
            Some(false) if !self.held.is_empty() || !self.queue.is_empty() => {
                let n = self.drop_undelivered();
                self.state.stats.dropped_consent_denied += n;
                log!(self, "consent denied: {n} undelivered events dropped");
            }
            _ => {}
        }
        let _ = self.persist();
    }

    /// Stops collection and purges everything queued (CCPA "do not sell", GDPR withdrawal).
    /// Persists across restarts until [`Engine::opt_in`].
    pub fn opt_out(&mut self, _now: Millis) {
        let n = self.drop_undelivered();
        self.install_inflight = None;
        self.state.install_request = None;
        self.state.opted_out = true;
        self.state.session = None;
        self.state.unreported = DropReport::default();
        self.state.stats.dropped_opted_out += n;
        self.state_dirty = true;
        log!(self, "opted out: {n} queued events purged");
        let _ = self.persist();
    }

    /// Drops every event not yet delivered (queued, held, in flight: the answer to a batch on
    /// its way changes nothing now); returns how many.
    fn drop_undelivered(&mut self) -> u64 {
        let n = (self.queue.len() + self.held.len()) as u64;
        self.queue.clear();
        self.held.clear();
        self.pending.inserts.clear();
        self.pending.deletes.clear();
        self.pending.delete_all = true;
        self.inflight = None;
        self.flush_deadline = None;
        self.draining = false;
        n
    }

    /// Resumes collection after [`Engine::opt_out`].
    pub fn opt_in(&mut self, _now: Millis) {
        self.state.opted_out = false;
        self.state_dirty = true;
        let _ = self.persist();
    }

    pub(super) fn uploads_allowed(&self) -> bool {
        let waiting_for_consent = self.config.require_consent && self.state.consent.analytics.is_none();
        !self.state.opted_out && !waiting_for_consent
    }

    pub(super) fn collection(&self) -> Collect {
        if self.state.opted_out {
            return Collect::Ignore;
        }
        match self.state.consent.analytics {
            Some(true) => Collect::Queue,
            Some(false) => Collect::Ignore,
            None if self.config.require_consent => Collect::Hold,
            None => Collect::Queue,
        }
    }

    pub(super) fn attribution_allowed(&self) -> bool {
        match self.state.consent.attribution {
            Some(a) => a,
            None => !self.config.require_consent,
        }
    }

    pub(super) fn ignore(&mut self, what: &str) {
        self.state.stats.ignored_no_consent += 1;
        self.state_dirty = true;
        log!(self, "{what} ignored: collection is off");
    }
}
