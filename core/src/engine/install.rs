//! The install-attribution request (`POST /v1/install`): when it goes, what it carries, and what
//! the engine keeps of the server's answer.

#[allow(unused_imports)]
use crate::prelude::*;

use super::consent::Collect;
use super::log;
use super::record::{MAX_URL_LEN, clean_value};
use super::state::PendingInstall;
use super::upload::{Subject, error_code, parse_retry_after};
use super::{Engine, Millis, TrackingAuthorization, UploadOutcome, UploadTask, ms};
use crate::json::{self, Value};

/// The members of the server's `AttributionResult`.
const ATTRIBUTION_MEMBERS: [&str; 11] = [
    "attributed",
    "match_type",
    "confidence",
    "campaign_id",
    "link_id",
    "click_id",
    "network",
    "deep_link",
    "fraud",
    "reinstall",
    "reason",
];
use crate::protocol::{self, AttributionResult, InstallDevice, InstallRequestView, Platform, ValidationError};
use crate::store::EventStore;

/// What the install request needs from [`Engine::poll`].
pub(super) enum InstallStep {
    Upload(UploadTask),
    WaitUntil(Millis),
    Nothing,
}

impl<S: EventStore> Engine<S> {
    /// The advertising id the install request and updates carry: the host's latest
    /// (`set_advertising_id`), else the configuration's; none while tracking is denied or
    /// restricted.
    pub fn advertising_id(&self) -> Option<&str> {
        if self.tracking_denied() {
            return None;
        }
        match &self.state.advertising_id {
            Some(set) => set.as_deref(),
            None => self.config.advertising_id.as_deref(),
        }
    }

    /// The App Tracking Transparency status (iOS). `NotDetermined` makes a pending install
    /// request wait (at most [`crate::config::Policy::tracking_authorization_wait`] after the
    /// start) for the answer; `Denied` and `Restricted` keep the advertising id off the wire.
    pub fn set_tracking_authorization(&mut self, now: Millis, status: TrackingAuthorization) {
        if self.state.tracking == Some(status) {
            return;
        }
        self.state.tracking = Some(status);
        self.state_dirty = true;
        log!(self, "tracking authorization: {}", status.as_str());
        self.sync_advertising_id(now);
    }

    /// The advertising id (IDFA, GAID) known after the start, or `None` when it is gone (ATT
    /// revoked, limit ad tracking). A pending install request carries the latest; once the
    /// install was reported, an id the server does not have goes to it as an `advertising_id`
    /// event (with attribution consent), which attaches it to the device's install.
    pub fn set_advertising_id(&mut self, now: Millis, id: Option<&str>) -> Result<(), ValidationError> {
        if let Some(id) = id {
            let checked = protocol::validate_id("advertising_id", id);
            self.guard(checked)?;
        }
        self.state.advertising_id = Some(id.map(str::to_owned));
        self.state_dirty = true;
        self.sync_advertising_id(now);
        Ok(())
    }

    pub(super) fn tracking_denied(&self) -> bool {
        matches!(self.state.tracking, Some(TrackingAuthorization::Denied | TrackingAuthorization::Restricted))
    }

    /// Sends the current advertising id as an `advertising_id` event when the install was
    /// reported and the server does not have this id yet (the install went without it, or with
    /// another; checked on every change, when the install is answered and at each start).
    pub(super) fn sync_advertising_id(&mut self, now: Millis) {
        let reported = self.state.installed && self.state.install_request.is_none() && self.config.install_request;
        let Some(current) = self.advertising_id().map(str::to_owned) else { return };
        if !reported || self.state.ad_id_reported.as_ref().is_some_and(|r| r.as_deref() == Some(current.as_str())) {
            return;
        }
        if self.state.ad_id_reported.is_none() {
            // An installation from before the server learned late ids: its install carried the
            // configured id.
            self.state.ad_id_reported = Some(Some(current));
            self.state_dirty = true;
            return;
        }
        let key = match self.config.install_platform() {
            Some(Platform::Ios) => "idfa",
            Some(Platform::Android) => "gaid",
            _ => return,
        };
        if !self.attribution_allowed() || !matches!(self.collection(), Collect::Queue | Collect::Hold) {
            return;
        }
        let mut props = crate::json::Object::new();
        props.insert(key, current.as_str());
        if self.record(now, "advertising_id", props, None).is_ok() {
            self.state.ad_id_reported = Some(Some(current));
            self.state_dirty = true;
        }
    }

    /// The install request goes first, once collection, uploads and attribution are allowed
    /// (and, on Android, once the Play Install Referrer came or its wait ran out).
    pub(super) fn poll_install(&mut self, now: Millis) -> InstallStep {
        let Some((created, referrer_given)) =
            self.state.install_request.as_ref().map(|p| (p.created, p.referrer_given))
        else {
            return InstallStep::Nothing;
        };
        let Some(platform) = self.config.install_platform() else { return InstallStep::Nothing };
        let allowed =
            self.uploads_allowed() && matches!(self.collection(), Collect::Queue) && self.attribution_allowed();
        if !allowed || self.inflight.is_some() || self.install_inflight.is_some() {
            return InstallStep::Nothing;
        }
        if let Some(t) = self.not_before.filter(|t| now < *t) {
            return InstallStep::WaitUntil(t);
        }
        if platform == Platform::Android && !referrer_given {
            let until = created + ms(self.config.policy.install_referrer_wait);
            if now < until {
                return InstallStep::WaitUntil(until);
            }
        }
        if platform == Platform::Ios && self.state.tracking == Some(TrackingAuthorization::NotDetermined) {
            let until = self.started_at + ms(self.config.policy.tracking_authorization_wait);
            if now < until {
                return InstallStep::WaitUntil(until);
            }
        }
        match self.state.install_request.clone() {
            Some(pending) => InstallStep::Upload(self.build_install(now, platform, pending)),
            None => InstallStep::Nothing,
        }
    }

    fn build_install(&mut self, now: Millis, platform: Platform, pending: PendingInstall) -> UploadTask {
        let id = self.config.device_id.clone();
        let ad = self.advertising_id().map(str::to_owned);
        self.install_sent_ad.clone_from(&ad);
        let (idfa, idfv, gaid, android_id) = match platform {
            Platform::Ios => (ad, id, None, None),
            Platform::Android => (None, None, ad, id),
            Platform::Web => (None, None, None, None),
        };
        let d = &self.config.device;
        let device = InstallDevice {
            idfa,
            idfv,
            gaid,
            android_id,
            os: d.os.clone(),
            os_version: d.os_version.clone(),
            model: d.model.clone(),
            locale: d.locale.clone(),
            timezone: d.timezone.clone(),
            screen: d.screen,
        };
        let body = InstallRequestView {
            event_id: &pending.event_id,
            anonymous_id: &self.state.anonymous_id,
            // Device times on the server's clock (the server takes the signed timestamp as
            // this request's device clock, and that is on the server's clock too).
            timestamp_ms: self.server_now(pending.created),
            platform,
            device: &device,
            install_referrer: pending.referrer.as_deref(),
            referrer_click_ts: pending.referrer_click_ts.map(|t| self.server_now(t)),
            install_begin_ts: pending.install_begin_ts.map(|t| self.server_now(t)),
            installed_at: pending.installed_at.map(|t| self.server_now(t)),
            click_id: pending.click_id.as_deref(),
            consent: Some(&self.state.consent),
        }
        .to_json();
        let headers = self.signed_headers(now, &body);
        let batch_id = self.next_batch_id;
        self.next_batch_id += 1;
        self.install_inflight = Some(batch_id);
        self.state.stats.uploads += 1;
        self.state_dirty = true;
        log!(self, "install request {batch_id} ({} bytes)", body.len());
        UploadTask { batch_id, url: self.install_url.clone(), headers, body, event_count: 0 }
    }

    /// The server's answer to the install request: kept when it is an attribution result;
    /// dropped when the server refuses it as invalid; retried with the events' backoff
    /// otherwise (a 2xx that is not an attribution result is also counted in `bad_answers`).
    pub(super) fn install_reported(&mut self, now: Millis, outcome: UploadOutcome) {
        // The answer is kept as the server wrote it (compacted), once it reads as an
        // attribution result.
        let parsed = match &outcome {
            UploadOutcome::Response { status: 200..=299, body, .. } => core::str::from_utf8(body)
                .ok()
                .and_then(|t| json::parse(t, 16).ok())
                .filter(|v| v.as_object().is_some_and(AttributionResult::is_valid)),
            _ => None,
        };
        if let Some(Value::Object(mut answer)) = parsed {
            // Only the members of an attribution result are kept: a proxy or a newer server
            // adding members must not grow the state document rewritten on every commit.
            let mut result = json::Object::new();
            for key in ATTRIBUTION_MEMBERS {
                if let Some(v) = answer.remove(key) {
                    result.insert(key, v);
                }
            }
            let _match_type = result.str("match_type").unwrap_or_default().to_owned();
            self.state.attribution = Some(result.to_json());
            self.state.install_request = None;
            // What the server has now; a newer id (set while the request was out) goes next.
            self.state.ad_id_reported = Some(self.install_sent_ad.take());
            self.sync_advertising_id(now);
            self.retry = None;
            self.not_before = None;
            self.state_dirty = true;
            log!(self, "install attributed: {_match_type}");
            let _ = self.persist();
            return;
        }
        match &outcome {
            UploadOutcome::Response { status: 401 | 403, body, .. } => {
                if !self.learn_clock(now, body) {
                    self.pause_for_auth(now, Subject::Install);
                }
            }
            UploadOutcome::Response { status: status @ 400..=499, body, .. } if !matches!(status, 408 | 429) => {
                let status = *status;
                self.state.install_request = None;
                self.state.stats.rejected_by_server += 1;
                self.state.stats.note_rejection(status, &error_code(body).0);
                self.state_dirty = true;
                log!(self, "install request refused with HTTP {status}; not retried");
                let _ = self.persist();
            }
            UploadOutcome::Response { status, retry_after, .. } => {
                // A 2xx here did not read as an attribution result: not the protocol's answer.
                self.state.stats.bad_answers += u64::from((200..300).contains(status));
                let after = retry_after.as_deref().and_then(|v| parse_retry_after(v, now));
                self.schedule_retry(now, after, Subject::Install, &outcome);
            }
            UploadOutcome::NetworkError(_) => self.schedule_retry(now, None, Subject::Install, &outcome),
        }
    }

    /// The Play Install Referrer (Android) for the install request, or `None` when the
    /// platform said it is unavailable; the request then goes without waiting. `installed_at`:
    /// when the package was installed (Android's `firstInstallTime`, known whatever the store),
    /// which lets the server tell a click reported after it (click injection).
    pub fn set_install_referrer(
        &mut self,
        _now: Millis,
        referrer: Option<&str>,
        click_ts: Option<Millis>,
        install_begin_ts: Option<Millis>,
        installed_at: Option<Millis>,
    ) {
        let Some(pending) = self.state.install_request.as_mut() else { return };
        pending.referrer = referrer.map(|r| clean_value(r, MAX_URL_LEN)).filter(|r| !r.is_empty());
        pending.referrer_click_ts = click_ts;
        pending.install_begin_ts = install_begin_ts;
        pending.installed_at = installed_at;
        pending.referrer_given = true;
        self.state_dirty = true;
    }

    /// The install's attribution, once the server answered the install request.
    pub fn attribution(&self) -> Option<AttributionResult> {
        let text = self.state.attribution.as_deref()?;
        let value = json::parse(text, 16).ok()?;
        AttributionResult::read(value.as_object()?)
    }

    /// The install's attribution as the server's JSON, once it answered.
    pub fn attribution_json(&self) -> Option<&str> {
        self.state.attribution.as_deref()
    }

    /// True while the install request waits to be sent or answered.
    pub fn install_pending(&self) -> bool {
        self.state.install_request.is_some()
    }
}
