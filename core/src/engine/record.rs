//! Recording calls: `track`, `screen`, `page`, `identify`, `alias`, deep links and web page
//! views, and how an event that passed validation is built, sessioned and queued.

#[allow(unused_imports)]
use crate::prelude::*;

use super::consent::Collect;
use super::log;
use super::state::Session;
use super::{Engine, Millis, ms, new_event_id, new_uuid};
use crate::config::MAX_CAMPAIGN_VALUE_LEN;
use crate::json::Object;
use crate::pii;
use crate::protocol::{self, CampaignContext, ContextRef, EventView, MAX_EVENT_BYTES, ValidationError};
use crate::store::{EventStore, StoredEvent};
use crate::urls::Url;

/// Longest deep-link URL kept in a `deep_link_opened` event.
pub(super) const MAX_URL_LEN: usize = 2048;

/// Most bytes the super properties may take, serialised (they ride on every event).
pub const MAX_REGISTERED_BYTES: usize = 4096;

impl<S: EventStore> Engine<S> {
    /// Tracks a custom event. The size limit is checked exactly on the built event; drivers
    /// that refuse early use the (slightly stricter) [`TrackLimits`](crate::config::TrackLimits).
    pub fn track(&mut self, now: Millis, event_type: &str, properties: Object) -> Result<(), ValidationError> {
        let checked = protocol::validate_event_type(event_type).and_then(|_| protocol::validate_depth(&properties));
        self.guard(checked)?;
        let recorded = self.record(now, event_type, properties, None);
        self.guard(recorded)
    }

    /// Tracks from untrusted bytes (the FFI and wasm path): the type and properties must be UTF-8,
    /// the properties a JSON object.
    pub fn track_bytes(
        &mut self,
        now: Millis,
        event_type: &[u8],
        properties_json: &[u8],
    ) -> Result<(), ValidationError> {
        let parsed = core::str::from_utf8(event_type)
            .map_err(|_| ValidationError::InvalidUtf8)
            .and_then(|t| protocol::parse_properties(properties_json).map(|p| (t, p)));
        let (event_type, properties) = self.guard(parsed)?;
        self.track(now, event_type, properties)
    }

    /// Counts a call a driver refused before it reached the engine (same counters as `track`).
    pub fn record_refusal(&mut self) {
        self.state.stats.refused_invalid += 1;
        self.state.unreported.invalid += 1;
        self.state_dirty = true;
    }

    /// A debug line from a driver (about a call it refused, say), to the host's logger when
    /// debugging is on.
    pub fn debug_line(&mut self, _line: &str) {
        log!(self, "{_line}");
    }

    /// Counts events a driver had to drop because the engine could not keep up.
    pub fn record_backpressure(&mut self, count: u64) {
        self.state.stats.dropped_backpressure += count;
        self.state.unreported.backpressure += count;
        self.state_dirty = true;
    }

    pub(super) fn guard<T>(&mut self, result: Result<T, ValidationError>) -> Result<T, ValidationError> {
        if let Err(_e) = &result {
            self.record_refusal();
            log!(self, "refused call: {_e}");
        }
        result
    }

    /// A `screen_view` with the screen's name in `properties.name`.
    pub fn screen(&mut self, now: Millis, name: &str, properties: Object) -> Result<(), ValidationError> {
        self.named_view(now, "screen_view", "screen name", name, properties)
    }

    /// A `page_view` with the page's name in `properties.name`.
    pub fn page(&mut self, now: Millis, name: &str, properties: Object) -> Result<(), ValidationError> {
        self.named_view(now, "page_view", "page name", name, properties)
    }

    fn named_view(
        &mut self,
        now: Millis,
        event_type: &str,
        field: &'static str,
        name: &str,
        mut properties: Object,
    ) -> Result<(), ValidationError> {
        let checked = protocol::validate_id(field, name);
        self.guard(checked)?;
        properties.insert("name", name);
        self.track(now, event_type, properties)
    }

    /// Sets the user id and sends an `identify` event with `traits`. Traits named in
    /// [`crate::config::Config::hashed_traits`] (e-mail and phone by default) are replaced by
    /// `<name>_sha256`; one that cannot be normalised is dropped (never sent raw) and counted
    /// as refused.
    pub fn identify(&mut self, now: Millis, user_id: &str, mut traits: Object) -> Result<(), ValidationError> {
        let checked = protocol::validate_id("user_id", user_id);
        self.guard(checked)?;
        let mut keys: Vec<String> = Vec::new();
        for (k, _) in traits.iter() {
            if pii::is_hashed_trait(k, self.config.hashed_traits.as_deref()) {
                keys.push(k.into());
            }
        }
        for key in keys {
            let Some(raw) = traits.remove(&key) else { continue };
            match raw.as_str().map(|s| pii::hash_trait(&key, s)) {
                Some(Ok(h)) => {
                    let mut name = key;
                    name.push_str("_sha256");
                    traits.insert(name, h);
                }
                Some(Err(_e)) => {
                    self.record_refusal();
                    log!(self, "identify: dropped trait {key}: {_e}");
                }
                None => {
                    self.record_refusal();
                    log!(self, "identify: dropped trait {key}: not a string");
                }
            }
        }
        let checked = protocol::validate_depth(&traits);
        self.guard(checked)?;
        if self.collection() == Collect::Ignore {
            // Without consent the identity is not even remembered.
            self.ignore("identify");
            return Ok(());
        }
        let previous = self.state.user_id.replace(user_id.to_owned());
        self.state_dirty = true;
        let recorded = self.record(now, "identify", traits, None);
        if recorded.is_err() {
            self.state.user_id = previous;
        }
        self.guard(recorded)
    }

    /// Registers super properties: merged into every later event's properties (the event's own
    /// values win), persisted with the state, cleared by `reset`. At most
    /// [`MAX_REGISTERED_BYTES`] serialised, every value at most as deep as event properties;
    /// a call beyond that changes nothing and is refused (counted, never thrown).
    pub fn register(&mut self, properties: Object) -> Result<(), ValidationError> {
        let mut merged = self.state.registered.clone();
        for (key, value) in properties.iter() {
            merged.insert(key, value.clone());
        }
        let checked = protocol::validate_properties(&merged, MAX_REGISTERED_BYTES);
        self.guard(checked)?;
        self.state.registered = merged;
        self.state_dirty = true;
        Ok(())
    }

    /// Removes one super property.
    pub fn unregister(&mut self, key: &str) {
        if self.state.registered.remove(key).is_some() {
            self.state_dirty = true;
        }
    }

    /// The super properties now registered.
    pub fn registered_properties(&self) -> Object {
        self.state.registered.clone()
    }

    /// Puts the user in a group (an account, a company): sends a `group` event whose properties
    /// are `traits` plus `group_id`, and the group id rides on every later event's
    /// `context.group_id` (persisted; cleared by `reset`).
    pub fn group(&mut self, now: Millis, group_id: &str, mut traits: Object) -> Result<(), ValidationError> {
        let checked = protocol::validate_id("group_id", group_id);
        self.guard(checked)?;
        let checked = protocol::validate_depth(&traits);
        self.guard(checked)?;
        if self.collection() == Collect::Ignore {
            self.ignore("group");
            return Ok(());
        }
        traits.insert("group_id", group_id);
        let previous = self.state.group_id.replace(group_id.to_owned());
        self.state_dirty = true;
        let recorded = self.record(now, "group", traits, None);
        if recorded.is_err() {
            self.state.group_id = previous;
        }
        self.guard(recorded)
    }

    /// Counts an event a host's middleware dropped: it returned nothing, or failed (`failed`;
    /// the event is dropped then too, never sent unfiltered).
    pub fn note_middleware_drop(&mut self, failed: bool) {
        if failed {
            self.state.stats.middleware_errors += 1;
            log!(self, "middleware failed: event dropped");
        } else {
            self.state.stats.dropped_by_middleware += 1;
            log!(self, "middleware dropped an event");
        }
        self.state_dirty = true;
    }

    /// The context the next event will carry, as JSON (for middleware to read): app, device,
    /// SDK, consent and group id.
    pub fn context_json(&self) -> String {
        let mut w = crate::json::Writer::with_capacity(256);
        ContextRef {
            app: self.base_context.app.as_ref(),
            device: self.base_context.device.as_ref(),
            campaign: None,
            consent: Some(&self.state.consent),
            sdk: self.base_context.sdk.as_ref(),
            group_id: self.state.group_id.as_deref(),
        }
        .write(&mut w);
        w.into_string()
    }

    /// Links the current identity to `new_user_id` and sends an `alias` event carrying
    /// `previous_id` (the former user id, or the anonymous id).
    pub fn alias(&mut self, now: Millis, new_user_id: &str) -> Result<(), ValidationError> {
        let checked = protocol::validate_id("user_id", new_user_id);
        self.guard(checked)?;
        if self.collection() == Collect::Ignore {
            self.ignore("alias");
            return Ok(());
        }
        let previous = self.state.user_id.clone().unwrap_or_else(|| self.state.anonymous_id.clone());
        let mut props = Object::new();
        props.insert("previous_id", previous);
        self.state.user_id = Some(new_user_id.to_owned());
        self.state_dirty = true;
        let _ = self.record(now, "alias", props, None);
        Ok(())
    }

    /// Handles a deep link that opened the app: captures `tm_click_id` and `utm_*` and records a
    /// `deep_link_opened` re-engagement touchpoint carrying them in `context.campaign`.
    pub fn handle_open_url(&mut self, now: Millis, url: &str) -> Result<(), ValidationError> {
        let parsed = self.parse_url(url)?;
        let campaign = campaign_from_url(&parsed);
        if let (Some(pending), Some(click)) = (self.state.install_request.as_mut(), &campaign.click_id) {
            // A deep link that opened the app before its install was reported names the click.
            if pending.click_id.is_none() {
                pending.click_id = Some(click.clone());
                self.state_dirty = true;
            }
        }
        let mut props = Object::new();
        let url = clean_value(url, MAX_URL_LEN);
        // The app is being opened by this link: the next `app_opened` carries it.
        self.open_url = Some(url.clone());
        props.insert("url", url);
        let campaign = (!campaign.is_empty()).then_some(campaign);
        let _ = self.record(now, "deep_link_opened", props, campaign);
        Ok(())
    }

    /// A web page view read from the page's location: a `page_view` whose properties hold `url`,
    /// `path`, `search`, `title` and `referrer` (as Segment's `page` does) plus `properties`,
    /// which win on a clash; `name` is the path. The location's `utm_*` and `tm_click_id` go in
    /// `context.campaign` (sent only with attribution consent, like a deep link's).
    pub fn page_view(
        &mut self,
        now: Millis,
        url: &str,
        title: Option<&str>,
        referrer: Option<&str>,
        properties: Object,
    ) -> Result<(), ValidationError> {
        let parsed = self.parse_url(url)?;
        let checked = protocol::validate_depth(&properties);
        self.guard(checked)?;
        let campaign = campaign_from_url(&parsed);
        let path = clean_value(parsed.path, protocol::MAX_ID_LEN);
        let mut props = Object::new();
        props.insert("name", path.clone());
        props.insert("path", path);
        props.insert("url", clean_value(url, MAX_URL_LEN));
        let mut search = String::new();
        if let Some(q) = parsed.query {
            search.push('?');
            search.push_str(q);
        }
        props.insert("search", clean_value(&search, MAX_URL_LEN));
        if let Some(title) = title.map(|t| clean_value(t, MAX_URL_LEN)).filter(|t| !t.is_empty()) {
            props.insert("title", title);
        }
        if let Some(referrer) = referrer.map(|r| clean_value(r, MAX_URL_LEN)).filter(|r| !r.is_empty()) {
            props.insert("referrer", referrer);
        }
        props.extend(properties);
        let campaign = (!campaign.is_empty()).then_some(campaign);
        let recorded = self.record(now, "page_view", props, campaign);
        self.guard(recorded)
    }

    fn parse_url<'u>(&mut self, url: &'u str) -> Result<Url<'u>, ValidationError> {
        let parsed = Url::parse(url).map_err(|e| ValidationError::InvalidField { field: "url", reason: e.into() });
        self.guard(parsed)
    }

    /// Records an event that passed validation, starting a session first when needed. Fails
    /// only when the built event exceeds the size limit (nothing is recorded then).
    pub(super) fn record(
        &mut self,
        now: Millis,
        event_type: &str,
        properties: Object,
        campaign: Option<CampaignContext>,
    ) -> Result<(), ValidationError> {
        let held = match self.collection() {
            Collect::Queue => false,
            Collect::Hold => true,
            Collect::Ignore => {
                self.ignore(event_type);
                return Ok(());
            }
        };
        self.ensure_session(now);
        self.push_event(now, event_type, properties, campaign, held)
    }

    pub(super) fn ensure_session(&mut self, now: Millis) {
        let timeout = ms(self.config.policy.session_timeout);
        match self.state.session.as_mut() {
            Some(s) if now.saturating_sub(s.last_activity) <= timeout => {
                s.last_activity = s.last_activity.max(now);
            }
            _ => {
                let id = new_uuid(&mut self.rng);
                self.state.session = Some(Session { id, last_activity: now });
                let held = matches!(self.collection(), Collect::Hold);
                let _ = self.push_event(now, "session_start", Object::new(), None, held);
            }
        }
        self.state_dirty = true;
    }

    fn push_event(
        &mut self,
        now: Millis,
        event_type: &str,
        mut properties: Object,
        campaign: Option<CampaignContext>,
        held: bool,
    ) -> Result<(), ValidationError> {
        // Super properties, under the event's own.
        for (key, value) in self.state.registered.iter() {
            if !properties.contains_key(key) {
                properties.insert(key, value.clone());
            }
        }
        // Attribution data is always kept on the device; whether it leaves the device is decided
        // at upload time by the consent in force then (see `build_upload`).
        let consent = self.state.consent;
        let event_id = new_event_id(&mut self.rng, now);
        let event = EventView {
            event_id: &event_id,
            event_type,
            timestamp_ms: now,
            anonymous_id: &self.state.anonymous_id,
            user_id: self.state.user_id.as_deref(),
            device_id: self.config.device_id.as_deref(),
            session_id: self.state.session.as_ref().map(|s| s.id.as_str()),
            properties: &properties,
            context: ContextRef {
                app: self.base_context.app.as_ref(),
                device: self.base_context.device.as_ref(),
                campaign: campaign.as_ref(),
                consent: Some(&consent),
                sdk: self.base_context.sdk.as_ref(),
                group_id: self.state.group_id.as_deref(),
            },
        };
        let body = event.to_json();
        // As the server will measure it (it re-prints numbers: see `reprint_excess`).
        let size = body.len() + protocol::reprint_excess(&properties);
        if size > MAX_EVENT_BYTES {
            return Err(ValidationError::TooLarge { size, limit: MAX_EVENT_BYTES });
        }
        let seq = self.state.next_seq;
        self.state.next_seq += 1;
        let stored = StoredEvent { seq, held, created_at: now, body };
        let entry = stored.index_entry();
        self.pending.inserts.push(stored);
        self.state.stats.recorded += 1;
        self.state_dirty = true;
        log!(self, "{event_type} {}", if held { "held until analytics consent" } else { "queued" });
        if held {
            self.held.push_back(entry);
        } else {
            if self.queue.is_empty() {
                self.flush_deadline = Some(now + ms(self.config.policy.flush_interval));
            }
            self.queue.push_back(entry);
        }
        self.enforce_caps();
        Ok(())
    }
}

/// The `tm_click_id` and `utm_*` parameters of a URL (cleaned and cut to
/// [`MAX_CAMPAIGN_VALUE_LEN`]).
fn campaign_from_url(url: &Url<'_>) -> CampaignContext {
    let mut campaign = CampaignContext::default();
    for (key, value) in url.query_pairs() {
        let slot = match key.as_str() {
            "tm_click_id" => &mut campaign.click_id,
            "utm_source" => &mut campaign.utm_source,
            "utm_medium" => &mut campaign.utm_medium,
            "utm_campaign" => &mut campaign.utm_campaign,
            "utm_term" => &mut campaign.utm_term,
            "utm_content" => &mut campaign.utm_content,
            _ => continue,
        };
        let clean = clean_value(&value, MAX_CAMPAIGN_VALUE_LEN);
        if !clean.is_empty() {
            *slot = Some(clean);
        }
    }
    campaign
}

/// Trims to `max` bytes at a character boundary and removes control characters.
pub(super) fn clean_value(value: &str, max: usize) -> String {
    let mut out = String::with_capacity(value.len().min(max));
    for c in value.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}
