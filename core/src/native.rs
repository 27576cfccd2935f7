//! The native driver for Rust hosts: one worker thread owns the engine and its queue file,
//! one uploader thread performs HTTP. Calls on the host's threads only validate and enqueue a
//! message, so they never touch disk or network.
//!
//! ```no_run
//! use trailmark_core::native::{NativeOptions, Trailmark};
//! use trailmark_core::Config;
//!
//! let config = Config::new("my-app", "app-secret", "https://collect.example.com");
//! let tm = Trailmark::start(config, NativeOptions::new("/var/lib/my-app/trailmark.db")).unwrap();
//! let mut props = trailmark_core::json::Object::new();
//! props.insert("sku", "A-1");
//! props.insert("price", 9.99);
//! tm.track("add_to_cart", props).unwrap();
//! tm.flush().unwrap(); // durable now; uploaded as soon as the network allows
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use crate::config::{Config, TrackLimits};
use crate::engine::{Action, ConsentUpdate, Engine, Logger, Millis, OpenError, Stats, UploadOutcome, UploadTask};
use crate::json::Object;
use crate::protocol::ValidationError;
use crate::store::Durability;
use crate::store::{FileStore, StoreError};

/// Most commands, and longest time, the worker spends applying calls before it commits them.
/// Together they bound the time between a `track` and its commit under load.
const MAX_BURST: usize = 8192;
const MAX_BURST_TIME: Duration = Duration::from_millis(10);
/// Longest a `flush()` or `stats()` call waits for the worker.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the native driver's API.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the SDK's queue is full; the event was dropped and counted")]
    Backpressure,
    #[error("the SDK has shut down")]
    Closed,
    #[error("the SDK did not answer within {0:?}")]
    Timeout(Duration),
    #[error("could not start the SDK: {0}")]
    Start(String),
}

/// Performs one upload. The default is [`ReqwestUploader`]; platforms plug their own HTTP stack.
pub trait Uploader: Send + 'static {
    fn upload(&mut self, task: &UploadTask) -> UploadOutcome;
}

/// Blocking reqwest (rustls) uploader (feature `http`).
#[cfg(feature = "http")]
pub struct ReqwestUploader {
    client: reqwest::blocking::Client,
}

#[cfg(feature = "http")]
impl ReqwestUploader {
    pub fn new() -> Result<Self, Error> {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("trailmark-rust/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Start(e.to_string()))?;
        Ok(ReqwestUploader { client })
    }
}

#[cfg(feature = "http")]
impl Uploader for ReqwestUploader {
    fn upload(&mut self, task: &UploadTask) -> UploadOutcome {
        let mut request = self.client.post(&task.url).body(task.body.clone());
        for (name, value) in &task.headers {
            request = request.header(name, value);
        }
        match request.send() {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match response.bytes() {
                    Ok(body) => UploadOutcome::Response { status, retry_after, body: body.to_vec() },
                    // The status arrived but the body did not: we cannot know what was accepted.
                    Err(e) => UploadOutcome::NetworkError(format!("reading response body: {e}")),
                }
            }
            Err(e) => UploadOutcome::NetworkError(e.to_string()),
        }
    }
}

/// Options of the native driver besides the SDK [`Config`].
pub struct NativeOptions {
    /// Path of the queue file (created if missing; an SQLite queue of an earlier SDK there is
    /// imported).
    pub db_path: PathBuf,
    pub durability: Durability,
    /// HTTP stack; `None` uses `ReqwestUploader` (feature `http`; without it `None` is an error).
    pub uploader: Option<Box<dyn Uploader>>,
    /// Receives engine decisions when `config.debug` is set.
    pub logger: Option<Logger>,
    /// Most calls waiting for the worker; past it `track` drops and counts. Default 65,536.
    pub channel_capacity: usize,
}

impl NativeOptions {
    pub fn new(db_path: impl Into<PathBuf>) -> Self {
        NativeOptions {
            db_path: db_path.into(),
            durability: Durability::default(),
            uploader: None,
            logger: None,
            channel_capacity: 65_536,
        }
    }
}

type Call = Box<dyn FnOnce(&mut Engine<FileStore>, Millis) + Send>;

enum Command {
    Track { now: Millis, event_type: String, properties: Object },
    Call { now: Millis, call: Call },
    Flush { now: Millis, done: SyncSender<Reply> },
    Stats { reply: SyncSender<Reply> },
    Uploaded { batch_id: u64, outcome: UploadOutcome },
    Shutdown,
}

/// The worker's answers. One type for every question: each distinct payload type of a std
/// channel adds about 10 KB of channel code to the mobile library.
enum Reply {
    Done(Result<(), StoreError>),
    Id(String),
    Attribution(Option<crate::protocol::AttributionResult>),
    Stats(Stats),
    Registered(Object),
}

/// Waits for the worker's answer.
fn answer(wait: &Receiver<Reply>) -> Result<Reply, Error> {
    match wait.recv_timeout(REPLY_TIMEOUT) {
        Ok(reply) => Ok(reply),
        Err(RecvTimeoutError::Timeout) => Err(Error::Timeout(REPLY_TIMEOUT)),
        Err(RecvTimeoutError::Disconnected) => Err(Error::Closed),
    }
}

/// An event as a middleware sees it (see [`Trailmark::add_middleware`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MiddlewareEvent {
    pub event_type: String,
    pub properties: Object,
    /// The context the event will carry (app, device, SDK, consent, group id); read-only:
    /// changes to it are not recorded.
    pub context: Object,
}

/// A host's middleware: gets each event of `track`, `screen` and `page` before it is queued
/// and returns it (changed or not), `Ok(None)` to drop it, or an error (a failure: the event
/// is dropped, never sent unfiltered).
pub type Middleware = Arc<dyn Fn(MiddlewareEvent) -> Result<Option<MiddlewareEvent>, String> + Send + Sync>;

/// The context for middleware, kept by the worker (after each burst that made a call, once a
/// middleware is installed) so the caller's thread never waits for it.
#[derive(Default)]
struct ContextShare {
    wanted: std::sync::atomic::AtomicBool,
    current: std::sync::RwLock<Object>,
}

impl ContextShare {
    fn set(&self, engine: &Engine<FileStore>) {
        let parsed = crate::json::parse(&engine.context_json(), 8).ok().and_then(|v| v.as_object().cloned());
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = parsed.unwrap_or_default();
    }
}

/// A running SDK. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Trailmark {
    tx: SyncSender<Command>,
    middleware: std::sync::RwLock<Vec<Middleware>>,
    context: Arc<ContextShare>,
    limits: TrackLimits,
    /// Calls dropped because the channel was full, not yet handed to the engine.
    overflow: Arc<AtomicU64>,
    worker: Option<JoinHandle<()>>,
}

#[cfg(feature = "http")]
fn default_uploader() -> Result<Box<dyn Uploader>, Error> {
    Ok(Box::new(ReqwestUploader::new()?))
}

#[cfg(not(feature = "http"))]
fn default_uploader() -> Result<Box<dyn Uploader>, Error> {
    Err(Error::Start("this build has no built-in HTTP client (feature `http`); pass an uploader".into()))
}

fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0)
}

impl Trailmark {
    /// Validates the configuration, opens the queue and starts the worker and uploader threads.
    pub fn start(config: Config, options: NativeOptions) -> Result<Trailmark, Error> {
        let store = FileStore::open_with(&options.db_path, options.durability).map_err(OpenError::from)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| Error::Start(e.to_string()))?;
        let mut engine = Engine::open(config, store, now_ms(), seed)?;
        engine.set_logger(options.logger);
        let limits = engine.limits();
        let mut uploader = match options.uploader {
            Some(u) => u,
            None => default_uploader()?,
        };
        let (tx, rx) = mpsc::sync_channel(options.channel_capacity.max(16));
        let overflow = Arc::new(AtomicU64::new(0));

        let (task_tx, task_rx) = mpsc::channel::<UploadTask>();
        let results = tx.clone();
        std::thread::Builder::new()
            .name("trailmark-upload".into())
            .spawn(move || {
                for task in task_rx {
                    // A host-supplied uploader that panics must not leave the batch in flight
                    // forever: it counts as a network failure and is retried.
                    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| uploader.upload(&task)))
                        .unwrap_or_else(|_| UploadOutcome::NetworkError("uploader panicked".into()));
                    if results.send(Command::Uploaded { batch_id: task.batch_id, outcome }).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Error::Start(e.to_string()))?;

        let worker_overflow = overflow.clone();
        let context = Arc::new(ContextShare::default());
        context.set(&engine);
        let worker_context = context.clone();
        let worker = std::thread::Builder::new()
            .name("trailmark-worker".into())
            .spawn(move || run_worker(engine, rx, task_tx, worker_overflow, &worker_context))
            .map_err(|e| Error::Start(e.to_string()))?;
        Ok(Trailmark { tx, middleware: Default::default(), context, limits, overflow, worker: Some(worker) })
    }

    fn send(&self, command: Command) -> Result<(), Error> {
        match self.tx.try_send(command) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.overflow.fetch_add(1, Ordering::Relaxed);
                Err(Error::Backpressure)
            }
            Err(TrySendError::Disconnected(_)) => Err(Error::Closed),
        }
    }

    /// Counts a call refused on the caller's thread (best effort) and returns its error.
    fn refused(&self, e: ValidationError) -> Error {
        let why = e.to_string();
        let _ = self.tx.try_send(Command::Call {
            now: now_ms(),
            call: Box::new(move |engine, _| {
                engine.record_refusal();
                engine.debug_line(&format!("refused call: {why}"));
            }),
        });
        e.into()
    }

    /// Counts a call a binding refused before it reached the driver (say, properties that are
    /// not a JSON object), with the same counter as the driver's own refusals.
    pub fn count_refusal(&self) {
        let _ = self.tx.try_send(Command::Call { now: now_ms(), call: Box::new(|engine, _| engine.record_refusal()) });
    }

    fn call(&self, call: impl FnOnce(&mut Engine<FileStore>, Millis) + Send + 'static) -> Result<(), Error> {
        self.send(Command::Call { now: now_ms(), call: Box::new(call) })
    }

    /// For calls that must not be lost (consent, opt-out, identity, lifecycle): waits for room
    /// in the channel instead of dropping. They are rare, so the wait is too.
    fn control(&self, call: impl FnOnce(&mut Engine<FileStore>, Millis) + Send + 'static) -> Result<(), Error> {
        self.tx.send(Command::Call { now: now_ms(), call: Box::new(call) }).map_err(|_| Error::Closed)
    }

    /// Tracks an event. Checks run here, on the caller's thread, so misuse is reported at once;
    /// the event is durable within milliseconds and at once after [`Trailmark::flush`].
    pub fn track(&self, event_type: &str, properties: Object) -> Result<(), Error> {
        let Some((event_type, properties)) = self.through_middleware(event_type, properties)? else {
            return Ok(());
        };
        if let Err(e) = self.limits.check_track(&event_type, &properties) {
            return Err(self.refused(e));
        }
        self.send(Command::Track { now: now_ms(), event_type, properties })
    }

    /// The advertising id known after the start (IDFA after an ATT grant, GAID), or `None`
    /// when it is gone: see [`Engine::set_advertising_id`].
    pub fn set_advertising_id(&self, id: Option<&str>) -> Result<(), Error> {
        if let Some(id) = id {
            crate::protocol::validate_id("advertising_id", id).map_err(|e| self.refused(e))?;
        }
        let id = id.map(str::to_owned);
        self.control(move |e, now| {
            let _ = e.set_advertising_id(now, id.as_deref());
        })
    }

    /// The App Tracking Transparency status: see [`Engine::set_tracking_authorization`].
    pub fn set_tracking_authorization(&self, status: crate::engine::TrackingAuthorization) -> Result<(), Error> {
        self.control(move |e, now| e.set_tracking_authorization(now, status))
    }

    /// Sends the engine's debug lines (one per decision: queued or held, dropped and why, batch
    /// sent, answer, retry, consent changes) to `logger`, on the worker thread, when the
    /// configuration has `debug` set; replaces the logger given at start.
    pub fn set_logger(&self, logger: crate::engine::Logger) -> Result<(), Error> {
        self.control(move |e, _| e.set_logger(Some(logger)))
    }

    /// Adds a middleware, run after those added before on every later `track`, `screen` and
    /// `page`, on the caller's thread. A middleware that panics or fails drops the event and
    /// is counted in `middleware_errors`; one that drops it, in `dropped_by_middleware`.
    /// The context a middleware sees is the worker's snapshot: calls that change it (consent,
    /// `group`, `reset`) show in it once the worker has taken them (at once after any call that
    /// waits for the worker, such as [`Trailmark::stats`] or [`Trailmark::flush`]).
    pub fn add_middleware(&self, middleware: Middleware) {
        self.middleware.write().unwrap_or_else(|p| p.into_inner()).push(middleware);
        self.context.wanted.store(true, Ordering::Relaxed);
        // Calls sent before this one may have changed it since the start.
        let _ = self.call(|_, _| {});
    }

    /// Runs the middleware on an event: what to record, or `None` when it was dropped
    /// (counted). Without middleware, the event as it is (no context is read).
    fn through_middleware(&self, event_type: &str, properties: Object) -> Result<Option<(String, Object)>, Error> {
        let chain = self.middleware.read().unwrap_or_else(|p| p.into_inner()).clone();
        if chain.is_empty() {
            return Ok(Some((event_type.to_owned(), properties)));
        }
        let context = self.context.current.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut event = MiddlewareEvent { event_type: event_type.to_owned(), properties, context };
        for m in chain {
            let failed = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m(event))) {
                Ok(Ok(Some(next))) => {
                    event = next;
                    continue;
                }
                Ok(Ok(None)) => false,
                Ok(Err(_)) | Err(_) => true,
            };
            self.call(move |e, _| e.note_middleware_drop(failed))?;
            return Ok(None);
        }
        Ok(Some((event.event_type, event.properties)))
    }

    /// Tracks from untrusted bytes (UTF-8 type, JSON object properties).
    pub fn track_bytes(&self, event_type: &[u8], properties_json: &[u8]) -> Result<(), Error> {
        let checked = std::str::from_utf8(event_type)
            .map_err(|_| ValidationError::InvalidUtf8)
            .and_then(|t| crate::protocol::parse_properties(properties_json).map(|p| (t, p)));
        match checked {
            Ok((event_type, properties)) => self.track(event_type, properties),
            Err(e) => Err(self.refused(e)),
        }
    }

    /// A `screen_view` named `name`.
    pub fn screen(&self, name: &str, properties: Object) -> Result<(), Error> {
        self.view("screen_view", "screen name", name, properties)
    }

    /// A `page_view` named `name`.
    pub fn page(&self, name: &str, properties: Object) -> Result<(), Error> {
        self.view("page_view", "page name", name, properties)
    }

    /// A view event: `name` in `properties.name`, through the middleware.
    fn view(&self, event_type: &str, field: &'static str, name: &str, mut properties: Object) -> Result<(), Error> {
        self.check_view(field, name, &properties)?;
        properties.insert("name", name);
        self.track(event_type, properties)
    }

    fn check_view(&self, field: &'static str, name: &str, properties: &Object) -> Result<(), Error> {
        let checked = crate::protocol::validate_id(field, name)
            .and_then(|_| crate::protocol::validate_properties(properties, self.limits.max_properties_bytes));
        checked.map_err(|e| self.refused(e))
    }

    pub fn identify(&self, user_id: &str, traits: Object) -> Result<(), Error> {
        crate::protocol::validate_id("user_id", user_id).map_err(|e| self.refused(e))?;
        let user_id = user_id.to_owned();
        self.control(move |e, now| {
            let _ = e.identify(now, &user_id, traits);
        })
    }

    /// Puts the user in a group: a `group` event, and the group id on every later event.
    pub fn group(&self, group_id: &str, traits: Object) -> Result<(), Error> {
        crate::protocol::validate_id("group_id", group_id).map_err(|e| self.refused(e))?;
        let id = group_id.to_owned();
        self.control(move |e, now| {
            let _ = e.group(now, &id, traits);
        })
    }

    pub fn alias(&self, new_user_id: &str) -> Result<(), Error> {
        crate::protocol::validate_id("user_id", new_user_id).map_err(|e| self.refused(e))?;
        let id = new_user_id.to_owned();
        self.control(move |e, now| {
            let _ = e.alias(now, &id);
        })
    }

    /// Registers super properties, merged into every later event (the event's own values
    /// win); persisted, cleared by [`Trailmark::reset`].
    pub fn register(&self, properties: Object) -> Result<(), Error> {
        crate::protocol::validate_properties(&properties, crate::engine::MAX_REGISTERED_BYTES)
            .map_err(|e| self.refused(e))?;
        self.control(move |e, _| {
            let _ = e.register(properties);
        })
    }

    /// Removes one super property.
    pub fn unregister(&self, key: &str) -> Result<(), Error> {
        let key = key.to_owned();
        self.control(move |e, _| e.unregister(&key))
    }

    /// The super properties registered, after every earlier call.
    pub fn registered_properties(&self) -> Result<Object, Error> {
        match self.ask(|e| Reply::Registered(e.registered_properties()))? {
            Reply::Registered(p) => Ok(p),
            _ => Err(Error::Closed),
        }
    }

    /// A question for the worker, answered after every earlier call: `make` builds the answer
    /// there.
    fn ask(&self, make: impl FnOnce(&mut Engine<FileStore>) -> Reply + Send + 'static) -> Result<Reply, Error> {
        let (reply, wait) = mpsc::sync_channel(1);
        self.call(move |e, _| {
            let _ = reply.send(make(e));
        })?;
        answer(&wait)
    }

    pub fn reset(&self) -> Result<(), Error> {
        self.control(|e, now| e.reset(now))
    }

    pub fn set_consent(&self, update: ConsentUpdate) -> Result<(), Error> {
        self.control(move |e, now| e.set_consent(now, update))
    }

    pub fn opt_out(&self) -> Result<(), Error> {
        self.control(|e, now| e.opt_out(now))
    }

    pub fn opt_in(&self) -> Result<(), Error> {
        self.control(|e, now| e.opt_in(now))
    }

    pub fn on_foreground(&self) -> Result<(), Error> {
        self.control(|e, now| e.on_foreground(now))
    }

    pub fn on_background(&self) -> Result<(), Error> {
        self.control(|e, now| e.on_background(now))
    }

    pub fn handle_open_url(&self, url: &str) -> Result<(), Error> {
        let url = url.to_owned();
        self.call(move |e, now| {
            let _ = e.handle_open_url(now, &url);
        })
    }

    /// Blocks until every earlier call is durable, and asks for an upload of everything queued.
    pub fn flush(&self) -> Result<(), Error> {
        let (done, wait) = mpsc::sync_channel(1);
        self.tx.send(Command::Flush { now: now_ms(), done }).map_err(|_| Error::Closed)?;
        match answer(&wait)? {
            Reply::Done(result) => result.map_err(Error::from),
            _ => Err(Error::Closed),
        }
    }

    /// The anonymous id the SDK's events carry now (a new one after `reset`). Send it with the
    /// install (`POST /v1/install`) so install attribution and later events meet.
    pub fn anonymous_id(&self) -> Result<String, Error> {
        match self.ask(|e| Reply::Id(e.anonymous_id().to_owned()))? {
            Reply::Id(id) => Ok(id),
            _ => Err(Error::Closed),
        }
    }

    /// The Play Install Referrer for the install request (`None`: the platform has none).
    pub fn set_install_referrer(
        &self,
        referrer: Option<&str>,
        click_ts: Option<Millis>,
        install_begin_ts: Option<Millis>,
        installed_at: Option<Millis>,
    ) -> Result<(), Error> {
        let referrer = referrer.map(str::to_owned);
        self.control(move |e, now| {
            e.set_install_referrer(now, referrer.as_deref(), click_ts, install_begin_ts, installed_at)
        })
    }

    /// The install's attribution once the server answered the install request; `None` before
    /// (or when the platform sends no install request).
    pub fn attribution(&self) -> Result<Option<crate::protocol::AttributionResult>, Error> {
        match self.ask(|e| Reply::Attribution(e.attribution()))? {
            Reply::Attribution(a) => Ok(a),
            _ => Err(Error::Closed),
        }
    }

    /// The engine's counters, after every earlier call.
    pub fn stats(&self) -> Result<Stats, Error> {
        let (reply, wait) = mpsc::sync_channel(1);
        self.tx.send(Command::Stats { reply }).map_err(|_| Error::Closed)?;
        match answer(&wait)? {
            Reply::Stats(stats) => Ok(stats),
            _ => Err(Error::Closed),
        }
    }

    /// Commits everything and stops the worker. An upload in progress is abandoned; its events
    /// stay queued for the next start.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(worker) = self.worker.take() {
            let _ = self.tx.send(Command::Shutdown);
            let _ = worker.join();
        }
    }
}

impl Drop for Trailmark {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_worker(
    mut engine: Engine<FileStore>,
    rx: Receiver<Command>,
    uploads: mpsc::Sender<UploadTask>,
    overflow: Arc<AtomicU64>,
    context: &ContextShare,
) {
    let mut next = Action::Wait(Duration::ZERO);
    let mut flush_waiters = Vec::new();
    let mut stats_waiters: Vec<SyncSender<Reply>> = Vec::new();
    loop {
        let first = match next {
            Action::Idle => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Action::Wait(d) => rx.recv_timeout(d),
            Action::Upload(_) => unreachable!("uploads are dispatched below"),
        };
        let mut shutdown = false;
        let mut called = false;
        let mut burst = 0;
        let burst_started = std::time::Instant::now();
        let mut command = match first {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                shutdown = true;
                None
            }
        };
        while let Some(c) = command.take() {
            match c {
                Command::Track { now, event_type, properties } => {
                    let _ = engine.track(now, &event_type, properties);
                }
                Command::Call { now, call } => {
                    call(&mut engine, now);
                    called = true;
                }
                Command::Flush { now, done } => {
                    let _ = engine.flush(now);
                    flush_waiters.push(done);
                }
                Command::Stats { reply } => stats_waiters.push(reply),
                Command::Uploaded { batch_id, outcome } => engine.report(now_ms(), batch_id, outcome),
                Command::Shutdown => shutdown = true,
            }
            burst += 1;
            if shutdown || burst >= MAX_BURST || (burst % 64 == 0 && burst_started.elapsed() >= MAX_BURST_TIME) {
                break;
            }
            command = rx.try_recv().ok();
        }
        let dropped = overflow.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            engine.record_backpressure(dropped);
        }
        if called && context.wanted.load(Ordering::Relaxed) {
            context.set(&engine);
        }
        let persisted = engine.persist();
        for done in flush_waiters.drain(..) {
            let _ = done.send(Reply::Done(persisted.clone()));
        }
        for reply in stats_waiters.drain(..) {
            let _ = reply.send(Reply::Stats(engine.stats()));
        }
        if shutdown {
            return;
        }
        next = match engine.poll(now_ms()) {
            Action::Upload(task) => {
                if uploads.send(task).is_err() {
                    return;
                }
                // The engine waits for the outcome; the next command wakes us.
                Action::Idle
            }
            other => other,
        };
    }
}
