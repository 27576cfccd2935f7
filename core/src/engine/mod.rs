//! The sans-IO engine: every SDK call goes in with the current time, every upload comes out as a
//! task, every upload result goes back in. No threads, clocks, sockets or files in here.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use backon::BackoffBuilder;
use chrono::DateTime;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;

use crate::config::{Config, ConfigError, MAX_CAMPAIGN_VALUE_LEN, TrackLimits};
use crate::pii;
use crate::protocol::{
    self, AttributionResult, CampaignContext, ConsentContext, Context, ContextRef, DropReport, EventRef,
    IngestResponse, InstallDevice, InstallRequest, MAX_BATCH_BYTES, MAX_EVENT_BYTES, Platform, ValidationError,
};
use crate::store::{EventStore, IndexEntry, StoreError, StoredEvent, WriteBatch};

/// Unix time in milliseconds, as the driver reads it from its clock.
pub type Millis = i64;

/// Receives one line per engine decision when `Config::debug` is set.
pub type Logger = Box<dyn FnMut(&str) + Send>;

/// Longest deep-link URL kept in a `deep_link_opened` event.
const MAX_URL_LEN: usize = 2048;
/// Bytes reserved in a batch for everything around the events (`sent_at`, `dropped`).
const ENVELOPE_RESERVE: usize = 1024;
/// Wait before retrying after a storage failure.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// What the driver should do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this request and report the result with [`Engine::report`].
    Upload(UploadTask),
    /// Call [`Engine::poll`] again after this long, or sooner when a call comes in.
    Wait(Duration),
    /// Nothing to do until the next call (or upload report).
    Idle,
}

/// One upload request, ready to send: a POST of `body` to `url` with `headers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTask {
    pub batch_id: u64,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Number of events in `body`.
    pub event_count: usize,
}

/// What happened to an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The server answered. `retry_after` is the raw `Retry-After` header, if any.
    Response { status: u16, retry_after: Option<String>, body: Vec<u8> },
    /// No HTTP answer: DNS, connect, TLS, timeout, or the connection dropped.
    NetworkError(String),
}

/// A consent change; `None` leaves a purpose as it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentUpdate {
    pub analytics: Option<bool>,
    pub attribution: Option<bool>,
    pub do_not_sell: Option<bool>,
}

/// Counters over the life of the installation (persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Events queued (including `session_start`, `install`...).
    pub recorded: u64,
    /// Events the server acknowledged as accepted or duplicate.
    pub delivered: u64,
    /// Events the server rejected as invalid (dropped).
    pub rejected_by_server: u64,
    /// Oldest events dropped at the queue's count cap.
    pub dropped_queue_full: u64,
    /// Events dropped at the queue's age cap.
    pub dropped_expired: u64,
    /// Oldest events dropped at the pre-consent buffer's cap.
    pub dropped_pre_consent_full: u64,
    /// Held events dropped because analytics consent was denied.
    pub dropped_consent_denied: u64,
    /// Queued events purged by `opt_out`.
    pub dropped_opted_out: u64,
    /// Calls refused as invalid (bad type, too large, too deep, bad id...).
    pub refused_invalid: u64,
    /// Events a driver could not hand to the engine in time (its channel was full).
    pub dropped_backpressure: u64,
    /// Calls ignored because collection is off (analytics denied or opted out).
    pub ignored_no_consent: u64,
    /// Upload attempts and the ones that will be retried.
    pub uploads: u64,
    pub upload_failures: u64,
    /// Storage failures (not persisted while the store fails, obviously).
    pub store_errors: u64,
    /// Events waiting in the upload queue / the pre-consent buffer right now.
    pub queued: u64,
    pub held: u64,
    /// Beacons handed out (`Engine::beacon`; their answer is never known).
    pub beacons: u64,
    /// Events in the upload handed out and not yet reported (not persisted).
    #[serde(skip)]
    pub in_flight: u64,
}

/// Why the engine could not open.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OpenError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    id: String,
    last_activity: Millis,
}

/// Everything the engine persists besides the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    anonymous_id: String,
    user_id: Option<String>,
    consent: ConsentContext,
    opted_out: bool,
    installed: bool,
    session: Option<Session>,
    /// Local drops not yet reported to the server.
    unreported: DropReport,
    next_seq: u64,
    stats: Stats,
    /// The install-attribution request not answered yet (created on the first open).
    #[serde(default)]
    install_request: Option<PendingInstall>,
    /// The server's answer to it (`AttributionResult` JSON).
    #[serde(default)]
    attribution: Option<String>,
}

/// What the install request (`POST /v1/install`) will carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PendingInstall {
    event_id: uuid::Uuid,
    /// First open (Unix ms): the install time.
    created: Millis,
    referrer: Option<String>,
    referrer_click_ts: Option<i64>,
    install_begin_ts: Option<i64>,
    /// The host reported the Play Install Referrer (possibly as unavailable).
    referrer_given: bool,
    click_id: Option<String>,
}

/// What the install request needs from [`Engine::poll`].
enum InstallStep {
    Upload(UploadTask),
    WaitUntil(Millis),
    Nothing,
}

#[derive(Debug)]
struct InFlight {
    batch_id: u64,
    seqs: Vec<u64>,
    reported: DropReport,
}

/// Where a new event goes.
enum Collect {
    Queue,
    Hold,
    Ignore,
}

/// How the engine reads an upload result.
enum Verdict {
    /// Acknowledged. `read` is false when the server refused the request without reading it
    /// (a lone event too large), so the drop report it carried did not arrive.
    Ack {
        response: IngestResponse,
        read: bool,
    },
    Split,
    AuthPause,
    Retry(Option<Duration>),
}

/// The SDK engine over a store `S`.
pub struct Engine<S: EventStore> {
    config: Config,
    upload_url: String,
    install_url: String,
    limits: TrackLimits,
    base_context: Context,
    store: S,
    rng: ChaCha20Rng,
    state: State,
    state_dirty: bool,
    /// The upload queue, oldest first. While a batch is in flight it is this queue's prefix.
    queue: VecDeque<IndexEntry>,
    /// The pre-consent buffer, oldest first.
    held: VecDeque<IndexEntry>,
    /// Changes not committed yet; `inserts` stay ordered by `seq`.
    pending: WriteBatch,
    inflight: Option<InFlight>,
    /// The batch id of the install request in flight.
    install_inflight: Option<u64>,
    next_batch_id: u64,
    retry: Option<backon::ExponentialBackoff>,
    not_before: Option<Millis>,
    batch_limit: usize,
    flush_deadline: Option<Millis>,
    draining: bool,
    /// The newest event sent in a beacon (beacons never repeat an event).
    beaconed_through: u64,
    logger: Option<Logger>,
}

fn new_uuid(rng: &mut ChaCha20Rng) -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    rng.fill_bytes(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn ms(d: Duration) -> Millis {
    d.as_millis().min(i64::MAX as u128) as Millis
}

impl<S: EventStore> Engine<S> {
    /// Opens the engine on `store`. `seed` must be fresh randomness on every open (ids and retry
    /// jitter derive from it); tests pass fixed seeds for reproducible runs. Records the
    /// `install` event on the first open of an installation.
    pub fn open(config: Config, mut store: S, now: Millis, seed: [u8; 32]) -> Result<Self, OpenError> {
        let upload_url = config.validate()?.to_string();
        let limits = TrackLimits::for_config(&config);
        let snapshot = store.load()?;
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut state_dirty = false;
        let stored_state = snapshot.state.as_deref().and_then(|b| serde_json::from_slice::<State>(b).ok());
        let corrupt_state = snapshot.state.is_some() && stored_state.is_none();
        let mut state = stored_state.unwrap_or_else(|| {
            state_dirty = true;
            State {
                anonymous_id: new_uuid(&mut rng).to_string(),
                user_id: None,
                consent: ConsentContext::default(),
                opted_out: false,
                installed: false,
                session: None,
                unreported: DropReport::default(),
                next_seq: 1,
                stats: Stats::default(),
                install_request: None,
                attribution: None,
            }
        });
        let max_seq = snapshot.entries.iter().map(|e| e.seq).max().unwrap_or(0);
        state.next_seq = state.next_seq.max(max_seq + 1);
        let (held, queue): (Vec<_>, Vec<_>) = snapshot.entries.into_iter().partition(|e| e.held);
        let base_context = Context {
            app: Some(config.app.clone()).filter(|a| *a != Default::default()),
            device: Some(config.device.clone()).filter(|d| *d != Default::default()),
            campaign: None,
            consent: None,
            sdk: Some(config.sdk.clone()),
        };
        let install_url = config.install_url();
        let mut engine = Engine {
            batch_limit: config.policy.max_batch_events,
            config,
            upload_url,
            install_url,
            limits,
            base_context,
            store,
            rng,
            state,
            state_dirty,
            queue: queue.into(),
            held: held.into(),
            pending: WriteBatch::default(),
            inflight: None,
            install_inflight: None,
            next_batch_id: 1,
            retry: None,
            not_before: None,
            flush_deadline: None,
            draining: false,
            beaconed_through: 0,
            logger: None,
        };
        if !engine.queue.is_empty() {
            // Whatever survived a restart goes out on the first poll.
            engine.flush_deadline = Some(now);
        }
        if corrupt_state {
            // The queue exists, so this installation did start before: no second install.
            engine.state.installed = true;
            engine.state.stats.store_errors += 1;
        }
        // A cap lowered in the configuration applies at once.
        engine.enforce_caps();
        if !engine.state.installed && !engine.state.opted_out {
            engine.state.installed = true;
            engine.state_dirty = true;
            let _ = engine.record(now, "install", Map::new(), None);
            if engine.config.install_request && engine.config.install_platform().is_some() {
                let event_id = new_uuid(&mut engine.rng);
                engine.state.install_request = Some(PendingInstall {
                    event_id,
                    created: now,
                    referrer: None,
                    referrer_click_ts: None,
                    install_begin_ts: None,
                    referrer_given: false,
                    click_id: None,
                });
            }
        }
        Ok(engine)
    }

    /// Receives a line for every engine decision when `config.debug` is set.
    pub fn set_logger(&mut self, logger: Option<Logger>) {
        self.logger = logger;
    }

    fn log(&mut self, message: impl FnOnce() -> String) {
        if let Some(logger) = self.logger.as_mut().filter(|_| self.config.debug) {
            logger(&message());
        }
    }

    /// The checks `track` runs, for drivers that want to refuse on the caller's thread.
    pub fn limits(&self) -> TrackLimits {
        self.limits
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----------------------------------------------------------------------------------------
    // Public calls
    // ----------------------------------------------------------------------------------------

    /// Tracks a custom event. The size limit is checked exactly on the built event; drivers
    /// that refuse early use the (slightly stricter) [`TrackLimits`].
    pub fn track(
        &mut self,
        now: Millis,
        event_type: &str,
        properties: Map<String, Value>,
    ) -> Result<(), ValidationError> {
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
        let parsed = std::str::from_utf8(event_type)
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

    /// Counts events a driver had to drop because the engine could not keep up.
    pub fn record_backpressure(&mut self, count: u64) {
        self.state.stats.dropped_backpressure += count;
        self.state.unreported.backpressure += count;
        self.state_dirty = true;
    }

    fn guard<T>(&mut self, result: Result<T, ValidationError>) -> Result<T, ValidationError> {
        if let Err(e) = &result {
            self.record_refusal();
            let e = e.to_string();
            self.log(|| format!("refused call: {e}"));
        }
        result
    }

    /// A `screen_view` with the screen's name in `properties.name`.
    pub fn screen(&mut self, now: Millis, name: &str, properties: Map<String, Value>) -> Result<(), ValidationError> {
        self.named_view(now, "screen_view", "screen name", name, properties)
    }

    /// A `page_view` with the page's name in `properties.name`.
    pub fn page(&mut self, now: Millis, name: &str, properties: Map<String, Value>) -> Result<(), ValidationError> {
        self.named_view(now, "page_view", "page name", name, properties)
    }

    fn named_view(
        &mut self,
        now: Millis,
        event_type: &str,
        field: &'static str,
        name: &str,
        mut properties: Map<String, Value>,
    ) -> Result<(), ValidationError> {
        let checked = protocol::validate_id(field, name);
        self.guard(checked)?;
        properties.insert("name".into(), Value::String(name.to_owned()));
        self.track(now, event_type, properties)
    }

    /// Sets the user id and sends an `identify` event with `traits`. Traits `email` and `phone`
    /// are replaced by `email_sha256` / `phone_sha256`; one that cannot be normalised is dropped
    /// (never sent raw) and counted as refused.
    pub fn identify(
        &mut self,
        now: Millis,
        user_id: &str,
        mut traits: Map<String, Value>,
    ) -> Result<(), ValidationError> {
        let checked = protocol::validate_id("user_id", user_id);
        self.guard(checked)?;
        for (key, hash) in [("email", pii::hash_email as fn(&str) -> _), ("phone", pii::hash_phone)] {
            let Some(raw) = traits.remove(key) else { continue };
            let hashed = match &raw {
                Value::String(s) => hash(s).map_err(|e| e.to_string()),
                _ => Err("not a string".to_owned()),
            };
            match hashed {
                Ok(h) => {
                    traits.insert(format!("{key}_sha256"), Value::String(h));
                }
                Err(reason) => {
                    self.record_refusal();
                    self.log(|| format!("identify: dropped trait {key}: {reason}"));
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
        let mut props = Map::new();
        props.insert("previous_id".into(), Value::String(previous));
        self.state.user_id = Some(new_user_id.to_owned());
        self.state_dirty = true;
        let _ = self.record(now, "alias", props, None);
        Ok(())
    }

    /// Forgets the user: a new anonymous id, no user id, and the next event starts a new
    /// session. Queued events keep the ids they were recorded with.
    pub fn reset(&mut self, _now: Millis) {
        self.state.anonymous_id = new_uuid(&mut self.rng).to_string();
        self.state.user_id = None;
        self.state.session = None;
        self.state_dirty = true;
        self.log(|| "reset: new anonymous id".into());
    }

    /// Changes consent. Granting analytics releases the pre-consent buffer into the upload
    /// queue; denying it drops the buffer and stops collection.
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
                self.log(|| format!("consent granted: {n} held events released"));
            }
            Some(false) if !self.held.is_empty() => {
                let n = self.held.len() as u64;
                self.held.clear();
                self.pending.inserts.retain(|e| !e.held);
                self.pending.delete_held = true;
                self.state.stats.dropped_consent_denied += n;
                self.log(|| format!("consent denied: {n} held events dropped"));
            }
            _ => {}
        }
        let _ = self.persist();
    }

    /// Stops collection and purges everything queued (CCPA "do not sell", GDPR withdrawal).
    /// Persists across restarts until [`Engine::opt_in`].
    pub fn opt_out(&mut self, _now: Millis) {
        let n = (self.queue.len() + self.held.len()) as u64;
        self.queue.clear();
        self.held.clear();
        self.pending.inserts.clear();
        self.pending.deletes.clear();
        self.pending.delete_all = true;
        self.inflight = None;
        self.install_inflight = None;
        self.state.install_request = None;
        self.flush_deadline = None;
        self.draining = false;
        self.state.opted_out = true;
        self.state.session = None;
        self.state.unreported = DropReport::default();
        self.state.stats.dropped_opted_out += n;
        self.state_dirty = true;
        self.log(|| format!("opted out: {n} queued events purged"));
        let _ = self.persist();
    }

    /// Resumes collection after [`Engine::opt_out`].
    pub fn opt_in(&mut self, _now: Millis) {
        self.state.opted_out = false;
        self.state_dirty = true;
        let _ = self.persist();
    }

    /// Uploads everything queued as soon as possible and makes every recorded event durable.
    pub fn flush(&mut self, _now: Millis) -> Result<(), StoreError> {
        self.draining = true;
        self.persist()
    }

    /// The app came to the foreground: starts a new session if the last one timed out.
    pub fn on_foreground(&mut self, now: Millis) {
        if matches!(self.collection(), Collect::Queue | Collect::Hold) {
            self.ensure_session(now);
        }
    }

    /// The app went to the background: marks the session's last activity and flushes.
    pub fn on_background(&mut self, now: Millis) {
        if let Some(s) = self.state.session.as_mut() {
            s.last_activity = s.last_activity.max(now);
            self.state_dirty = true;
        }
        self.draining = true;
        let _ = self.persist();
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
        let mut props = Map::new();
        props.insert("url".into(), Value::String(clean_value(url, MAX_URL_LEN)));
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
        properties: Map<String, Value>,
    ) -> Result<(), ValidationError> {
        let parsed = self.parse_url(url)?;
        let checked = protocol::validate_depth(&properties);
        self.guard(checked)?;
        let campaign = campaign_from_url(&parsed);
        let path = clean_value(parsed.path(), protocol::MAX_ID_LEN);
        let mut props = Map::new();
        props.insert("name".into(), Value::String(path.clone()));
        props.insert("path".into(), Value::String(path));
        props.insert("url".into(), Value::String(clean_value(url, MAX_URL_LEN)));
        let search = parsed.query().map(|q| format!("?{q}")).unwrap_or_default();
        props.insert("search".into(), Value::String(clean_value(&search, MAX_URL_LEN)));
        if let Some(title) = title.map(|t| clean_value(t, MAX_URL_LEN)).filter(|t| !t.is_empty()) {
            props.insert("title".into(), Value::String(title));
        }
        if let Some(referrer) = referrer.map(|r| clean_value(r, MAX_URL_LEN)).filter(|r| !r.is_empty()) {
            props.insert("referrer".into(), Value::String(referrer));
        }
        props.extend(properties);
        let campaign = (!campaign.is_empty()).then_some(campaign);
        let recorded = self.record(now, "page_view", props, campaign);
        self.guard(recorded)
    }

    fn parse_url(&mut self, url: &str) -> Result<url::Url, ValidationError> {
        let parsed =
            url::Url::parse(url).map_err(|e| ValidationError::InvalidField { field: "url", reason: e.to_string() });
        self.guard(parsed)
    }

    // ----------------------------------------------------------------------------------------
    // Upload cycle
    // ----------------------------------------------------------------------------------------

    /// Persists what is pending and says what the driver should do next.
    pub fn poll(&mut self, now: Millis) -> Action {
        self.expire(now);
        if self.persist().is_err() {
            return Action::Wait(STORE_RETRY);
        }
        let wake = match self.poll_install(now) {
            InstallStep::Upload(task) => return Action::Upload(task),
            InstallStep::WaitUntil(t) => Some(Duration::from_millis((t - now).max(0) as u64)),
            InstallStep::Nothing => None,
        };
        match (self.poll_events(now), wake) {
            (Action::Idle, Some(d)) => Action::Wait(d),
            (Action::Wait(d), Some(w)) => Action::Wait(d.min(w)),
            (action, _) => action,
        }
    }

    /// The install request goes first, once collection, uploads and attribution are allowed
    /// (and, on Android, once the Play Install Referrer came or its wait ran out).
    fn poll_install(&mut self, now: Millis) -> InstallStep {
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
        match self.state.install_request.clone() {
            Some(pending) => InstallStep::Upload(self.build_install(now, platform, pending)),
            None => InstallStep::Nothing,
        }
    }

    fn build_install(&mut self, now: Millis, platform: Platform, pending: PendingInstall) -> UploadTask {
        let id = self.config.device_id.clone();
        let ad = self.config.advertising_id.clone();
        let (idfa, idfv, gaid, android_id) = match platform {
            Platform::Ios => (ad, id, None, None),
            Platform::Android => (None, None, ad, id),
            Platform::Web => (None, None, None, None),
        };
        let d = &self.config.device;
        let request = InstallRequest {
            event_id: pending.event_id,
            anonymous_id: self.state.anonymous_id.clone(),
            timestamp: DateTime::from_timestamp_millis(pending.created).unwrap_or_default(),
            platform,
            device: InstallDevice {
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
            },
            install_referrer: pending.referrer,
            referrer_click_ts: pending.referrer_click_ts,
            install_begin_ts: pending.install_begin_ts,
            click_id: pending.click_id,
        };
        // Serialising plain data cannot fail.
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let headers = self.signed_headers(now, &body);
        let batch_id = self.next_batch_id;
        self.next_batch_id += 1;
        self.install_inflight = Some(batch_id);
        self.state.stats.uploads += 1;
        self.state_dirty = true;
        self.log(|| format!("install request {batch_id} ({} bytes)", body.len()));
        UploadTask { batch_id, url: self.install_url.clone(), headers, body, event_count: 0 }
    }

    fn signed_headers(&mut self, now: Millis, body: &[u8]) -> Vec<(String, String)> {
        let ts = now.div_euclid(1000);
        let (mut trace, mut span) = ([0u8; 16], [0u8; 8]);
        self.rng.fill_bytes(&mut trace);
        self.rng.fill_bytes(&mut span);
        // All-zero ids are invalid; one in 2^64 draws would be.
        trace[0] |= 1;
        span[0] |= 1;
        vec![
            (protocol::HEADER_TRACEPARENT.to_owned(), protocol::traceparent(trace, span)),
            ("Content-Type".to_owned(), "application/json".to_owned()),
            (protocol::HEADER_APP.to_owned(), self.config.app_id.clone()),
            (protocol::HEADER_TIMESTAMP.to_owned(), ts.to_string()),
            (protocol::HEADER_SIGNATURE.to_owned(), protocol::sign(self.config.app_secret.as_bytes(), ts, body)),
        ]
    }

    /// The server's answer to the install request: kept on success; dropped when the server
    /// refuses it as invalid; retried with the events' backoff otherwise.
    fn install_reported(&mut self, now: Millis, outcome: UploadOutcome) {
        let parsed = match &outcome {
            UploadOutcome::Response { status: 200..=299, body, .. } => {
                serde_json::from_slice::<AttributionResult>(body).ok()
            }
            _ => None,
        };
        if let Some(result) = parsed {
            self.state.attribution = serde_json::to_string(&result).ok();
            self.state.install_request = None;
            self.retry = None;
            self.not_before = None;
            self.state_dirty = true;
            self.log(|| format!("install attributed: {}", result.match_type.as_str()));
            let _ = self.persist();
            return;
        }
        match &outcome {
            UploadOutcome::Response { status: 401 | 403, .. } => self.pause_for_auth(now, "install request"),
            UploadOutcome::Response { status: status @ 400..=499, .. } if !matches!(status, 408 | 429) => {
                let status = *status;
                self.state.install_request = None;
                self.state.stats.rejected_by_server += 1;
                self.state_dirty = true;
                self.log(|| format!("install request refused with HTTP {status}; not retried"));
                let _ = self.persist();
            }
            UploadOutcome::Response { retry_after, .. } => {
                let after = retry_after.as_deref().and_then(|v| parse_retry_after(v, now));
                self.schedule_retry(now, after, &format!("install request failed ({outcome:?})"));
            }
            UploadOutcome::NetworkError(e) => self.schedule_retry(now, None, &format!("install request failed: {e}")),
        }
    }

    fn pause_for_auth(&mut self, now: Millis, what: &str) {
        let pause = ms(self.config.policy.auth_pause);
        self.not_before = Some(now + pause);
        self.state.stats.upload_failures += 1;
        self.state_dirty = true;
        let what = what.to_owned();
        self.log(|| format!("{what}: credentials refused; uploads paused {pause} ms, events kept"));
    }

    fn schedule_retry(&mut self, now: Millis, retry_after: Option<Duration>, what: &str) {
        let policy = &self.config.policy;
        let schedule = self.retry.get_or_insert_with(|| {
            backon::ExponentialBuilder::default()
                .with_min_delay(policy.retry_base)
                .with_max_delay(policy.retry_cap)
                .with_factor(2.0)
                .without_max_times()
                .build()
        });
        let ceiling = ms(schedule.next().unwrap_or(policy.retry_cap));
        // Full jitter: uniformly random in [0, ceiling].
        let jittered = (self.rng.next_u64() % (ceiling as u64 + 1)) as Millis;
        // Retry-After is a floor: the schedule still advances under it.
        let floor = retry_after.map(|d| ms(d.min(policy.max_retry_after))).unwrap_or(0);
        let delay = jittered.max(floor);
        self.not_before = Some(now + delay);
        self.state.stats.upload_failures += 1;
        self.state_dirty = true;
        let what = what.to_owned();
        self.log(|| format!("{what}; retry in {delay} ms"));
    }

    /// The Play Install Referrer (Android) for the install request, or `None` when the
    /// platform said it is unavailable; the request then goes without waiting.
    pub fn set_install_referrer(
        &mut self,
        _now: Millis,
        referrer: Option<&str>,
        click_ts: Option<Millis>,
        install_begin_ts: Option<Millis>,
    ) {
        let Some(pending) = self.state.install_request.as_mut() else { return };
        pending.referrer = referrer.map(|r| clean_value(r, MAX_URL_LEN)).filter(|r| !r.is_empty());
        pending.referrer_click_ts = click_ts;
        pending.install_begin_ts = install_begin_ts;
        pending.referrer_given = true;
        self.state_dirty = true;
    }

    /// The install's attribution, once the server answered the install request.
    pub fn attribution(&self) -> Option<AttributionResult> {
        self.state.attribution.as_deref().and_then(|a| serde_json::from_str(a).ok())
    }

    /// True while the install request waits to be sent or answered.
    pub fn install_pending(&self) -> bool {
        self.state.install_request.is_some()
    }

    fn poll_events(&mut self, now: Millis) -> Action {
        if self.queue.is_empty() {
            self.draining = false;
            self.flush_deadline = None;
            return Action::Idle;
        }
        if self.inflight.is_some() || self.install_inflight.is_some() || !self.uploads_allowed() {
            return Action::Idle;
        }
        if let Some(t) = self.not_before {
            if now < t {
                return Action::Wait(Duration::from_millis((t - now) as u64));
            }
            self.not_before = None;
        }
        let deadline = *self.flush_deadline.get_or_insert(now + ms(self.config.policy.flush_interval));
        let due = self.draining || self.queue.len() >= self.config.policy.flush_at || now >= deadline;
        if !due {
            return Action::Wait(Duration::from_millis((deadline - now) as u64));
        }
        self.build_upload(now)
    }

    fn build_upload(&mut self, now: Millis) -> Action {
        let limit = self.batch_limit.min(self.config.policy.max_batch_events);
        let mut bytes = ENVELOPE_RESERVE;
        let mut seqs = Vec::new();
        for e in self.queue.iter().take(limit) {
            if !seqs.is_empty() && bytes + e.size as usize + 1 > MAX_BATCH_BYTES {
                break;
            }
            bytes += e.size as usize + 1;
            seqs.push(e.seq);
        }
        let bodies = match self.store.read(&seqs) {
            Ok(b) => b,
            Err(e) => {
                self.state.stats.store_errors += 1;
                self.log(|| format!("store read failed: {e}"));
                return Action::Wait(STORE_RETRY);
            }
        };
        if bodies.len() != seqs.len() {
            // Rows vanished under us (external tampering): forget them so the queue moves on.
            let found: BTreeSet<u64> = bodies.iter().map(|(s, _)| *s).collect();
            let missing = seqs.len() - found.len();
            self.queue.retain(|e| !seqs.contains(&e.seq) || found.contains(&e.seq));
            self.state.stats.store_errors += missing as u64;
            self.state_dirty = true;
            self.log(|| format!("{missing} queued events missing from the store"));
            return Action::Wait(Duration::ZERO);
        }
        let reported = self.state.unreported;
        let body = self.batch_body(now, &bodies, bytes, Some(reported));
        let headers = self.signed_headers(now, &body);
        let batch_id = self.next_batch_id;
        self.next_batch_id += 1;
        let event_count = seqs.len();
        self.inflight = Some(InFlight { batch_id, seqs, reported });
        self.state.stats.uploads += 1;
        self.state_dirty = true;
        self.log(|| format!("upload batch {batch_id}: {event_count} events, {} bytes", body.len()));
        Action::Upload(UploadTask { batch_id, url: self.upload_url.clone(), headers, body, event_count })
    }

    /// The batch envelope: `{"sent_at", "batch": [...], "dropped"?}`. Events leave the device
    /// without `device_id` and `context.campaign` unless attribution consent allows them.
    fn batch_body(
        &self,
        now: Millis,
        bodies: &[(u64, Vec<u8>)],
        capacity: usize,
        dropped: Option<DropReport>,
    ) -> Vec<u8> {
        let strip = !self.attribution_allowed();
        let sent_at = protocol::format_millis(now);
        let mut body = Vec::with_capacity(capacity);
        body.extend_from_slice(b"{\"sent_at\":\"");
        body.extend_from_slice(sent_at.as_bytes());
        body.extend_from_slice(b"\",\"batch\":[");
        for (i, (_, event)) in bodies.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            if strip {
                body.extend_from_slice(&strip_attribution(event));
            } else {
                body.extend_from_slice(event);
            }
        }
        body.push(b']');
        if let Some(reported) = dropped.filter(|r| !r.is_empty()) {
            body.extend_from_slice(b",\"dropped\":");
            body.extend_from_slice(&serde_json::to_vec(&reported).unwrap_or_else(|_| b"{}".to_vec()));
        }
        body.push(b'}');
        body
    }

    /// A last-chance upload for a page that is going away (`navigator.sendBeacon`): the queued
    /// events not in flight and not in an earlier beacon, up to `max_bytes` of body, signed in
    /// the URL's query (`tm_app`, `tm_ts`, `tm_sig`) because a beacon cannot carry headers.
    /// Its answer is never seen, so the events stay queued: if the page comes back they go
    /// out again and the server keeps one copy of each (it dedups on `event_id`). Drop counts
    /// wait for a normal upload. `None` when there is nothing to send or uploads are not allowed.
    pub fn beacon(&mut self, now: Millis, max_bytes: usize) -> Option<UploadTask> {
        if !self.uploads_allowed() || self.persist().is_err() {
            return None;
        }
        let skip = self.inflight_len();
        let limit = max_bytes.min(MAX_BATCH_BYTES);
        let mut bytes = ENVELOPE_RESERVE;
        let mut seqs = Vec::new();
        for e in self.queue.iter().skip(skip).filter(|e| e.seq > self.beaconed_through) {
            if seqs.len() == self.config.policy.max_batch_events || bytes + e.size as usize + 1 > limit {
                break;
            }
            bytes += e.size as usize + 1;
            seqs.push(e.seq);
        }
        let last = *seqs.last()?;
        let bodies = match self.store.read(&seqs) {
            Ok(b) => b,
            Err(_) => {
                self.state.stats.store_errors += 1;
                return None;
            }
        };
        let body = self.batch_body(now, &bodies, bytes, None);
        let ts = now.div_euclid(1000);
        let signature = protocol::sign(self.config.app_secret.as_bytes(), ts, &body);
        let url = url::Url::parse_with_params(
            &self.upload_url,
            [
                (protocol::QUERY_APP, self.config.app_id.as_str()),
                (protocol::QUERY_TIMESTAMP, ts.to_string().as_str()),
                (protocol::QUERY_SIGNATURE, signature.as_str()),
            ],
        )
        .ok()?;
        self.beaconed_through = last;
        self.state.stats.beacons += 1;
        self.state_dirty = true;
        let batch_id = self.next_batch_id;
        self.next_batch_id += 1;
        let event_count = bodies.len();
        self.log(|| format!("beacon {batch_id}: {event_count} events, {} bytes", body.len()));
        // A string body: sendBeacon sends it as text/plain, which needs no CORS preflight.
        let headers = vec![("Content-Type".to_owned(), "text/plain;charset=UTF-8".to_owned())];
        Some(UploadTask { batch_id, url: url.into(), headers, body, event_count })
    }

    /// Reports the result of the upload `batch_id`. Events leave the queue only when the server
    /// acknowledged them (accepted, duplicate, or rejected as invalid).
    pub fn report(&mut self, now: Millis, batch_id: u64, outcome: UploadOutcome) {
        if self.install_inflight == Some(batch_id) {
            self.install_inflight = None;
            self.install_reported(now, outcome);
            return;
        }
        let Some(flight) = self.inflight.take_if(|f| f.batch_id == batch_id) else {
            self.log(|| format!("report for unknown batch {batch_id} ignored"));
            return;
        };
        let n = flight.seqs.len();
        match self.verdict(now, &outcome, n) {
            Verdict::Ack { response, read } => self.acknowledge(now, flight, response, read),
            Verdict::Split => {
                self.batch_limit = (n / 2).max(1);
                self.log(|| {
                    format!("batch {batch_id} refused as a whole ({outcome:?}); retrying {} at a time", (n / 2).max(1))
                });
            }
            Verdict::AuthPause => self.pause_for_auth(now, &format!("batch {batch_id}")),
            Verdict::Retry(retry_after) => {
                self.schedule_retry(now, retry_after, &format!("batch {batch_id} failed ({outcome:?})"))
            }
        }
    }

    fn verdict(&self, now: Millis, outcome: &UploadOutcome, n: usize) -> Verdict {
        match outcome {
            UploadOutcome::NetworkError(_) => Verdict::Retry(None),
            UploadOutcome::Response { status, retry_after, body } => match *status {
                200..=299 if body.iter().all(u8::is_ascii_whitespace) => {
                    Verdict::Ack { response: IngestResponse::default(), read: true }
                }
                200..=299 => match serde_json::from_slice::<IngestResponse>(body) {
                    Ok(response) => Verdict::Ack { response, read: true },
                    // A 2xx that is not our protocol (a captive portal, a misrouted proxy) did
                    // not store anything: keep the events and retry.
                    Err(_) => Verdict::Retry(None),
                },
                // Too large as a whole: halve until the culprit is alone, then drop it.
                413 if n > 1 => Verdict::Split,
                413 => Verdict::Ack {
                    response: IngestResponse {
                        accepted: 0,
                        duplicates: 0,
                        rejected: vec![protocol::Rejection { index: 0, reason: "HTTP 413".into() }],
                    },
                    read: false,
                },
                401 | 403 => Verdict::AuthPause,
                // 400 and every other status: the request may be fine and the server (or a proxy
                // before it) wrong. Nothing is dropped for it; retry with backoff.
                _ => Verdict::Retry(retry_after.as_deref().and_then(|v| parse_retry_after(v, now))),
            },
        }
    }

    fn acknowledge(&mut self, now: Millis, flight: InFlight, response: IngestResponse, read: bool) {
        let n = flight.seqs.len();
        let rejected: BTreeSet<usize> = response.rejected.iter().map(|r| r.index).filter(|i| *i < n).collect();
        for seq in &flight.seqs {
            let front = self.queue.pop_front();
            debug_assert_eq!(front.map(|e| e.seq), Some(*seq), "in-flight batch must be the queue's prefix");
            self.pending.deletes.push(*seq);
        }
        let stats = &mut self.state.stats;
        stats.delivered += (n - rejected.len()) as u64;
        stats.rejected_by_server += rejected.len() as u64;
        if read {
            self.state.unreported.subtract(&flight.reported);
        }
        self.state_dirty = true;
        self.retry = None;
        self.not_before = None;
        self.batch_limit = (self.batch_limit * 2).min(self.config.policy.max_batch_events);
        self.flush_deadline = (!self.queue.is_empty()).then(|| now + ms(self.config.policy.flush_interval));
        let (batch_id, r) = (flight.batch_id, rejected.len());
        self.log(|| format!("batch {batch_id} acknowledged: {} delivered, {r} rejected", n - r));
        // An acknowledgement is committed at once so a crash cannot resend it.
        let _ = self.persist();
    }

    // ----------------------------------------------------------------------------------------
    // Recording
    // ----------------------------------------------------------------------------------------

    fn uploads_allowed(&self) -> bool {
        let waiting_for_consent = self.config.require_consent && self.state.consent.analytics.is_none();
        !self.state.opted_out && !waiting_for_consent
    }

    fn collection(&self) -> Collect {
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

    fn attribution_allowed(&self) -> bool {
        match self.state.consent.attribution {
            Some(a) => a,
            None => !self.config.require_consent,
        }
    }

    fn ignore(&mut self, what: &str) {
        self.state.stats.ignored_no_consent += 1;
        self.state_dirty = true;
        let what = what.to_owned();
        self.log(|| format!("{what} ignored: collection is off"));
    }

    /// Records an event that passed validation, starting a session first when needed. Fails
    /// only when the built event exceeds the size limit (nothing is recorded then).
    fn record(
        &mut self,
        now: Millis,
        event_type: &str,
        properties: Map<String, Value>,
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

    fn ensure_session(&mut self, now: Millis) {
        let timeout = ms(self.config.policy.session_timeout);
        match self.state.session.as_mut() {
            Some(s) if now.saturating_sub(s.last_activity) <= timeout => {
                s.last_activity = s.last_activity.max(now);
            }
            _ => {
                let id = new_uuid(&mut self.rng).to_string();
                self.state.session = Some(Session { id, last_activity: now });
                let held = matches!(self.collection(), Collect::Hold);
                let _ = self.push_event(now, "session_start", Map::new(), None, held);
            }
        }
        self.state_dirty = true;
    }

    fn push_event(
        &mut self,
        now: Millis,
        event_type: &str,
        properties: Map<String, Value>,
        campaign: Option<CampaignContext>,
        held: bool,
    ) -> Result<(), ValidationError> {
        // Attribution data is always kept on the device; whether it leaves the device is decided
        // at upload time by the consent in force then (see `build_upload`).
        let consent = self.state.consent;
        let event = EventRef {
            event_id: new_uuid(&mut self.rng),
            event_type,
            timestamp: DateTime::from_timestamp_millis(now).unwrap_or_default(),
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
            },
        };
        // Serialising a map of JSON values and plain strings cannot fail.
        let body = serde_json::to_vec(&event).unwrap_or_default();
        if body.len() > MAX_EVENT_BYTES {
            return Err(ValidationError::TooLarge { size: body.len(), limit: MAX_EVENT_BYTES });
        }
        let seq = self.state.next_seq;
        self.state.next_seq += 1;
        let stored = StoredEvent { seq, held, created_at: now, body };
        let entry = stored.index_entry();
        self.pending.inserts.push(stored);
        self.state.stats.recorded += 1;
        self.state_dirty = true;
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

    fn inflight_len(&self) -> usize {
        self.inflight.as_ref().map_or(0, |f| f.seqs.len())
    }

    fn enforce_caps(&mut self) {
        let skip = self.inflight_len();
        while self.queue.len() > self.config.policy.max_queue_events && self.queue.len() > skip {
            if let Some(e) = self.queue.remove(skip) {
                self.discard(e.seq);
                self.state.stats.dropped_queue_full += 1;
                self.state.unreported.queue_full += 1;
            }
        }
        while self.held.len() > self.config.policy.max_pre_consent_events {
            if let Some(e) = self.held.pop_front() {
                self.discard(e.seq);
                self.state.stats.dropped_pre_consent_full += 1;
                self.state.unreported.pre_consent_full += 1;
            }
        }
    }

    /// Drops events older than the age cap (never the in-flight batch).
    fn expire(&mut self, now: Millis) {
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
            self.log(|| format!("{n} events expired"));
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

    /// Commits every pending change in one atomic write. Drivers call it after each burst of
    /// calls; `poll`, `flush` and acknowledgements call it themselves.
    pub fn persist(&mut self) -> Result<(), StoreError> {
        if self.state_dirty {
            self.pending.state = Some(serde_json::to_vec(&self.state).unwrap_or_default());
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        match self.store.commit(&self.pending) {
            Ok(()) => {
                self.pending = WriteBatch::default();
                self.state_dirty = false;
                Ok(())
            }
            Err(e) => {
                self.state.stats.store_errors += 1;
                let text = e.to_string();
                self.log(|| format!("commit failed, will retry: {text}"));
                Err(e)
            }
        }
    }

    // ----------------------------------------------------------------------------------------
    // Inspection
    // ----------------------------------------------------------------------------------------

    pub fn stats(&self) -> Stats {
        Stats {
            queued: self.queue.len() as u64,
            held: self.held.len() as u64,
            in_flight: self.inflight.as_ref().map_or(0, |f| f.seqs.len() as u64)
                + self.install_inflight.is_some() as u64,
            ..self.state.stats
        }
    }

    pub fn anonymous_id(&self) -> &str {
        &self.state.anonymous_id
    }

    pub fn user_id(&self) -> Option<&str> {
        self.state.user_id.as_deref()
    }

    pub fn session_id(&self) -> Option<&str> {
        self.state.session.as_ref().map(|s| s.id.as_str())
    }

    pub fn consent(&self) -> ConsentContext {
        self.state.consent
    }

    pub fn is_opted_out(&self) -> bool {
        self.state.opted_out
    }

    /// Local drops that the next batch will report.
    pub fn unreported_drops(&self) -> DropReport {
        self.state.unreported
    }

    /// The store, for drivers whose store collects side effects (the web store's outbox).
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Gives the store back (tests use it to simulate a crash: pending changes are lost).
    pub fn into_store(self) -> S {
        self.store
    }
}

impl PartialEq for Collect {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// Removes what only attribution consent allows to leave the device: `device_id` and
/// `context.campaign`.
fn strip_attribution(event: &[u8]) -> Vec<u8> {
    match serde_json::from_slice::<Value>(event) {
        Ok(Value::Object(mut map)) => {
            map.remove("device_id");
            if let Some(Value::Object(context)) = map.get_mut("context") {
                context.remove("campaign");
            }
            serde_json::to_vec(&map).unwrap_or_else(|_| event.to_vec())
        }
        _ => event.to_vec(),
    }
}

/// The `tm_click_id` and `utm_*` parameters of a URL (cleaned and cut to
/// [`MAX_CAMPAIGN_VALUE_LEN`]).
fn campaign_from_url(url: &url::Url) -> CampaignContext {
    let mut campaign = CampaignContext::default();
    for (key, value) in url.query_pairs() {
        let slot = match key.as_ref() {
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
fn clean_value(value: &str, max: usize) -> String {
    let mut out = String::with_capacity(value.len().min(max));
    for c in value.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// Parses a `Retry-After` value: delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: Millis) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let date = DateTime::parse_from_rfc2822(value).ok()?;
    let delta = date.timestamp_millis() - now;
    Some(Duration::from_millis(delta.max(0) as u64))
}
