//! The sans-IO engine: every SDK call goes in with the current time, every upload comes out as a
//! task, every upload result goes back in. No threads, clocks, sockets or files in here.

#[allow(unused_imports)]
use crate::prelude::*;

mod consent;
mod install;
mod queue;
mod record;
mod rng;
mod state;
mod types;
mod upload;

use alloc::collections::VecDeque;
use core::time::Duration;

pub use record::MAX_REGISTERED_BYTES;
pub use types::{
    Action, ConsentUpdate, Logger, MAX_REASON_BYTES, Millis, OpenError, Reason, Stats, TrackingAuthorization,
    UploadOutcome, UploadTask,
};
pub use upload::parse_retry_after;

use self::consent::Collect;
use self::rng::Rng;
use self::state::{PendingInstall, State};
use self::upload::InFlight;
use crate::config::{Config, TrackLimits};
use crate::json::Object;
use crate::protocol::{ConsentContext, Context, DropReport};
use crate::store::{EventStore, IndexEntry, StoreError, WriteBatch};

/// The SDK engine over a store `S`.
pub struct Engine<S: EventStore> {
    config: Config,
    upload_url: String,
    install_url: String,
    limits: TrackLimits,
    base_context: Context,
    store: S,
    rng: Rng,
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
    retry: Option<Duration>,
    not_before: Option<Millis>,
    batch_limit: usize,
    flush_deadline: Option<Millis>,
    draining: bool,
    /// The newest event sent in a beacon (beacons never repeat an event).
    beaconed_through: u64,
    logger: Option<Logger>,
    /// `on_background` came since the last `on_foreground` (`app_opened.from_background`).
    backgrounded: bool,
    /// When this engine opened (the start the ATT wait counts from).
    started_at: Millis,
    /// The advertising id of the install request out (what the server has once it answers).
    install_sent_ad: Option<String>,
    /// `on_foreground` came before in this process (`app_opened` once per open, not on every
    /// return from an inactive state).
    opened: bool,
    /// The deep link that is opening the app (`handle_open_url` before the foreground), for
    /// the next `app_opened`.
    open_url: Option<String>,
}

/// A random (version 4) UUID, hyphenated lower-case hex.
fn new_uuid(rng: &mut Rng) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    hyphenated(&b)
}

/// An event's id: a version 7 UUID (RFC 9562), the event's time in milliseconds by the device
/// clock (clamped to the 48 bits the layout has) followed by 74 random bits. The ids of events
/// recorded in the same minutes sort together, so the server's dedup index on `(app, event_id)`
/// takes a batch's ids near one another instead of at as many random places (ADR 0023).
fn new_event_id(rng: &mut Rng, now: Millis) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b[6..]);
    let ms = now.clamp(0, (1 << 48) - 1) as u64;
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = (b[6] & 0x0f) | 0x70;
    b[8] = (b[8] & 0x3f) | 0x80;
    hyphenated(&b)
}

fn hyphenated(b: &[u8; 16]) -> String {
    let hex = hex::encode(b);
    let mut s = String::with_capacity(36);
    for (i, range) in [0..8, 8..12, 12..16, 16..20, 20..32].into_iter().enumerate() {
        if i > 0 {
            s.push('-');
        }
        s.push_str(&hex[range]);
    }
    s
}

/// One line per engine decision to the host's logger, when `Config::debug` is set. Without
/// the `log` feature (the web build) the message is never formatted, so no formatting code is
/// linked for it.
macro_rules! log {
    ($engine:expr, $($arg:tt)*) => {{
        #[cfg(feature = "log")]
        {
            if $engine.logging() {
                let message = format!($($arg)*);
                $engine.emit(&message);
            }
        }
        #[cfg(not(feature = "log"))]
        {
            let _ = || format!($($arg)*);
        }
    }};
}
pub(crate) use log;

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
        let mut rng = Rng::new(seed);
        let mut state_dirty = false;
        let stored_state = snapshot.state.as_deref().and_then(State::from_json);
        let corrupt_state = snapshot.state.is_some() && stored_state.is_none();
        let mut state = stored_state.unwrap_or_else(|| {
            state_dirty = true;
            State {
                anonymous_id: new_uuid(&mut rng),
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
                clock_offset: 0,
                registered: Object::new(),
                group_id: None,
                app_version: None,
                app_build: None,
                advertising_id: None,
                tracking: None,
                ad_id_reported: Some(None),
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
            group_id: None,
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
            backgrounded: false,
            started_at: now,
            install_sent_ad: None,
            opened: false,
            open_url: None,
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
        if let Some(t) = engine.config.tracking_authorization {
            engine.state.tracking = Some(t);
        }
        let installed_before = engine.state.installed;
        if !engine.state.installed && !engine.state.opted_out {
            engine.state.installed = true;
            engine.state_dirty = true;
            let _ = engine.record(now, "install", Object::new(), None);
            if engine.config.install_request && engine.config.install_platform().is_some() {
                let event_id = new_event_id(&mut engine.rng, now);
                engine.state.install_request = Some(PendingInstall {
                    event_id,
                    created: now,
                    referrer: None,
                    referrer_click_ts: None,
                    install_begin_ts: None,
                    installed_at: None,
                    referrer_given: false,
                    click_id: None,
                });
            }
        }
        engine.note_app_version(now, installed_before);
        engine.sync_advertising_id(now);
        Ok(engine)
    }

    /// Receives a line for every engine decision when `config.debug` is set.
    pub fn set_logger(&mut self, logger: Option<Logger>) {
        self.logger = logger;
    }

    #[cfg(feature = "log")]
    fn logging(&self) -> bool {
        self.config.debug && self.logger.is_some()
    }

    #[cfg(feature = "log")]
    fn emit(&mut self, message: &str) {
        if let Some(logger) = self.logger.as_mut() {
            logger(message);
        }
    }

    /// The checks `track` runs, for drivers that want to refuse on the caller's thread.
    pub fn limits(&self) -> TrackLimits {
        self.limits
    }

    pub fn config(&self) -> &Config {
        &self.config
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
            // Once per open: the first foreground of the process, or after a background (iOS
            // also reports the return from an alert, the ATT prompt or Control Center).
            if self.config.lifecycle_events && (!self.opened || self.backgrounded) {
                let mut props = Object::new();
                props.insert("from_background", self.backgrounded);
                if let Some(url) = self.open_url.take() {
                    props.insert("url", url);
                }
                let _ = self.record(now, "app_opened", props, None);
            }
        }
        self.opened = true;
        self.backgrounded = false;
        self.open_url = None;
    }

    /// At start: `app_updated` when the configured version or build differs from the last
    /// start's (only for an installation that started before, and only once both are known),
    /// then remembers them.
    fn note_app_version(&mut self, now: Millis, installed_before: bool) {
        let (version, build) = (self.config.app.version.clone(), self.config.app.build.clone());
        if self.state.app_version == version && self.state.app_build == build {
            return;
        }
        let changed =
            |before: &Option<String>, now: &Option<String>| before.is_some() && now.is_some() && before != now;
        if installed_before
            && self.config.lifecycle_events
            && (changed(&self.state.app_version, &version) || changed(&self.state.app_build, &build))
            && matches!(self.collection(), Collect::Queue | Collect::Hold)
        {
            let mut props = Object::new();
            for (key, value) in [
                ("version", &version),
                ("previous_version", &self.state.app_version),
                ("build", &build),
                ("previous_build", &self.state.app_build),
            ] {
                if let Some(v) = value {
                    props.insert(key, v.as_str());
                }
            }
            let _ = self.record(now, "app_updated", props, None);
        }
        self.state.app_version = version;
        self.state.app_build = build;
        self.state_dirty = true;
    }

    /// The app went to the background: marks the session's last activity and flushes.
    pub fn on_background(&mut self, now: Millis) {
        if self.config.lifecycle_events && matches!(self.collection(), Collect::Queue | Collect::Hold) {
            let _ = self.record(now, "app_backgrounded", Object::new(), None);
        }
        self.backgrounded = true;
        self.open_url = None;
        if let Some(s) = self.state.session.as_mut() {
            s.last_activity = s.last_activity.max(now);
            self.state_dirty = true;
        }
        self.draining = true;
        let _ = self.persist();
    }

    /// Commits every pending change in one atomic write. Drivers call it after each burst of
    /// calls; `poll`, `flush` and acknowledgements call it themselves.
    pub fn persist(&mut self) -> Result<(), StoreError> {
        if self.state_dirty {
            self.pending.state = Some(self.state.to_json());
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
                log!(self, "commit failed, will retry: {e}");
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
