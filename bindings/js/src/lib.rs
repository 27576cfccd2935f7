//! The Trailmark web SDK's Rust side: the core engine compiled to wasm, with a store that keeps
//! the queue in memory and hands every committed change to the page (which writes it to
//! IndexedDB or localStorage). Calls and answers cross the boundary as strings and numbers;
//! JSON for anything structured. Every decision is the core's; this crate only marshals.

#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use trailmark_core::engine::{Action, TrackingAuthorization, UploadOutcome};
use trailmark_core::json::{self, Fields, Object, Value, Writer};
use trailmark_core::store::{EventStore, Snapshot, StoreError, StoredEvent, WriteBatch};
use trailmark_core::{ConsentUpdate, Engine, HostConfig, MemoryStore, Millis, pii, protocol};
use wasm_bindgen::prelude::*;

/// The queue in memory (reads never wait for the page's asynchronous storage) plus the
/// committed changes the page has not taken yet (JSON objects, written as they happen).
struct WebStore {
    memory: MemoryStore,
    outbox: Vec<Vec<u8>>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// One committed change as the page applies it:
/// `{"delete_all", "delete_held", "release_held", "deletes", "inserts", "state"}`.
fn write_json(batch: &WriteBatch) -> Vec<u8> {
    let mut w = Writer::with_capacity(256 + batch.inserts.iter().map(|e| e.body.len() + 64).sum::<usize>());
    let mut o = w.begin();
    o.bool("delete_all", batch.delete_all);
    o.bool("delete_held", batch.delete_held);
    o.bool("release_held", batch.release_held);
    o.key("deletes");
    o.w.byte(b'[');
    for (i, seq) in batch.deletes.iter().enumerate() {
        if i > 0 {
            o.w.byte(b',');
        }
        o.w.u64(*seq);
    }
    o.w.byte(b']');
    o.key("inserts");
    o.w.byte(b'[');
    for (i, e) in batch.inserts.iter().enumerate() {
        if i > 0 {
            o.w.byte(b',');
        }
        let mut io = o.w.begin();
        io.u64("seq", e.seq);
        io.bool("held", e.held);
        io.i64("created_at", e.created_at);
        io.str("body", &json::lossy(&e.body));
        io.end();
    }
    o.w.byte(b']');
    o.str_or_null("state", batch.state.as_deref().map(json::lossy).as_deref());
    o.end();
    w.into_bytes()
}

/// What the page read from its storage at start: `{"events": [{"seq", "held", "created_at",
/// "body"}...], "state"}`. Entries that do not read are skipped (the page's storage is
/// untrusted); an unreadable snapshot is an empty one.
fn read_snapshot(snapshot_json: &str) -> WriteBatch {
    let parsed = json::parse(snapshot_json, 8).unwrap_or_default();
    let o = parsed.as_object().cloned().unwrap_or_default();
    let inserts = o
        .get("events")
        .and_then(Value::as_array)
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            let e = e.as_object()?;
            Some(StoredEvent {
                seq: e.field_u64("seq")?,
                held: e.field_bool("held")?,
                created_at: e.field_i64("created_at")?,
                body: e.field_str("body")?.into_bytes(),
            })
        })
        .collect();
    WriteBatch { inserts, state: o.field_str("state").map(String::into_bytes), ..WriteBatch::default() }
}

impl EventStore for WebStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.memory.load()
    }
    fn read(&mut self, seqs: &[u64]) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        self.memory.read(seqs)
    }
    fn commit(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.memory.commit(batch)?;
        self.outbox.push(write_json(batch));
        Ok(())
    }
}

/// The answer of a recording call: `undefined` when taken, else the refusal's code
/// (`invalid_type_char`, `empty_id:user_id`...; the refusal is already counted in
/// `refused_invalid`). The page words the codes.
fn refusal(result: Result<(), protocol::ValidationError>) -> Option<String> {
    result.err().map(|e| e.code_text())
}

#[wasm_bindgen(inline_js = "export function to_lower(s) { return s.toLowerCase(); }")]
extern "C" {
    /// `String.prototype.toLowerCase`: the Unicode lower-casing email normalisation needs
    /// (Unicode's Default Case Conversion, as `str::to_lowercase`), without std's case tables
    /// in the wasm (7.7 KB gzip).
    fn to_lower(s: &str) -> String;
}

/// Hands the page's lower-casing to the core (before anything may hash an email).
fn use_page_lowercase() {
    pii::set_host_lowercase(to_lower);
}

/// `kind` or `kind:detail`, for errors thrown at the page.
fn js_error(kind: &str, detail: &str) -> JsError {
    let mut message = String::from(kind);
    if !detail.is_empty() {
        message.push(':');
        message.push_str(detail);
    }
    JsError::new(&message)
}

/// The engine for one page.
#[wasm_bindgen]
pub struct Core {
    engine: Engine<WebStore>,
}

impl Core {
    /// Parses a properties object and hands it to `call`; JSON that is not an object is refused
    /// and counted like any invalid call.
    fn with_properties(
        &mut self,
        json: &str,
        call: impl FnOnce(&mut Engine<WebStore>, Object) -> Result<(), protocol::ValidationError>,
    ) -> Option<String> {
        match protocol::parse_properties(json.as_bytes()) {
            Ok(p) => refusal(call(&mut self.engine, p)),
            Err(e) => {
                self.engine.record_refusal();
                refusal(Err(e))
            }
        }
    }
}

#[wasm_bindgen]
impl Core {
    /// Opens the engine on what the page read from storage (`{"events": [...], "state"}`).
    /// `seed` is 32 bytes from `crypto.getRandomValues`. Throws `InvalidConfig:<setting>` or
    /// `Storage`.
    #[wasm_bindgen(constructor)]
    pub fn new(config_json: &str, snapshot_json: &str, now: f64, seed: &[u8]) -> Result<Core, JsError> {
        use_page_lowercase();
        // The page's configuration: the TypeScript layer maps its camelCase options to these keys.
        let mut config = HostConfig::from_json(config_json).map_err(|field| js_error("InvalidConfig", field))?;
        config.sdk_name.get_or_insert_with(|| "trailmark-web".into());
        let seed: [u8; 32] = seed.try_into().map_err(|_| js_error("InvalidConfig", "seed"))?;
        let mut memory = MemoryStore::new();
        memory.commit(&read_snapshot(snapshot_json)).map_err(|_| js_error("Storage", ""))?;
        let store = WebStore { memory, outbox: Vec::new() };
        let engine = Engine::open(config.into_config(), store, now as Millis, seed).map_err(|e| match e {
            trailmark_core::OpenError::Config(e) => js_error("InvalidConfig", e.field()),
            trailmark_core::OpenError::Store(_) => js_error("Storage", ""),
        })?;
        Ok(Core { engine })
    }

    pub fn track(&mut self, now: f64, event_type: &str, properties_json: &str) -> Option<String> {
        refusal(self.engine.track_bytes(now as Millis, event_type.as_bytes(), properties_json.as_bytes()))
    }

    /// A `screen_view` (hybrid apps that have screens rather than pages).
    pub fn screen(&mut self, now: f64, name: &str, properties_json: &str) -> Option<String> {
        self.with_properties(properties_json, |e, p| e.screen(now as Millis, name, p))
    }

    /// Counts a call the page refused before it got here (properties that are not JSON).
    pub fn refuse(&mut self) {
        self.engine.record_refusal();
    }

    /// A named page view (the host's own name).
    pub fn page(&mut self, now: f64, name: &str, properties_json: &str) -> Option<String> {
        self.with_properties(properties_json, |e, p| e.page(now as Millis, name, p))
    }

    /// A page view read from the location (`url`), with the document's title and referrer.
    pub fn page_view(
        &mut self,
        now: f64,
        url: &str,
        title: Option<String>,
        referrer: Option<String>,
        properties_json: &str,
    ) -> Option<String> {
        self.with_properties(properties_json, |e, p| {
            e.page_view(now as Millis, url, title.as_deref(), referrer.as_deref(), p)
        })
    }

    pub fn identify(&mut self, now: f64, user_id: &str, traits_json: &str) -> Option<String> {
        self.with_properties(traits_json, |e, p| e.identify(now as Millis, user_id, p))
    }

    /// Super properties (`register`), merged into every later event.
    pub fn register(&mut self, _now: f64, properties_json: &str) -> Option<String> {
        self.with_properties(properties_json, |e, p| e.register(p))
    }

    pub fn unregister(&mut self, _now: f64, key: &str) {
        self.engine.unregister(key);
    }

    /// The super properties registered, as a JSON object.
    pub fn registered_properties(&self) -> String {
        self.engine.registered_properties().to_json()
    }

    /// A `group` event; the group id rides on later events' context.
    pub fn group(&mut self, now: f64, group_id: &str, traits_json: &str) -> Option<String> {
        self.with_properties(traits_json, |e, p| e.group(now as Millis, group_id, p))
    }

    /// The advertising id known after the start (hybrid apps), or none when it is gone.
    pub fn set_advertising_id(&mut self, now: f64, id: Option<String>) -> Option<String> {
        refusal(self.engine.set_advertising_id(now as Millis, id.as_deref()))
    }

    /// The App Tracking Transparency status (`not_determined`, `restricted`, `denied`,
    /// `authorized`); anything else is refused.
    pub fn set_tracking_authorization(&mut self, now: f64, status: &str) -> Option<String> {
        match TrackingAuthorization::parse(status) {
            Some(s) => {
                self.engine.set_tracking_authorization(now as Millis, s);
                None
            }
            None => {
                self.engine.record_refusal();
                Some("tracking_authorization".into())
            }
        }
    }

    /// Counts an event the page's middleware dropped (`failed`: it threw).
    pub fn note_middleware(&mut self, _now: f64, failed: bool) {
        self.engine.note_middleware_drop(failed);
    }

    /// The context the next event will carry, as JSON (for middleware).
    pub fn context_json(&self) -> String {
        self.engine.context_json()
    }

    pub fn alias(&mut self, now: f64, new_user_id: &str) -> Option<String> {
        refusal(self.engine.alias(now as Millis, new_user_id))
    }

    pub fn handle_open_url(&mut self, now: f64, url: &str) -> Option<String> {
        refusal(self.engine.handle_open_url(now as Millis, url))
    }

    pub fn reset(&mut self, now: f64) {
        self.engine.reset(now as Millis);
    }

    pub fn set_consent(
        &mut self,
        now: f64,
        analytics: Option<bool>,
        attribution: Option<bool>,
        do_not_sell: Option<bool>,
    ) {
        self.engine.set_consent(now as Millis, ConsentUpdate { analytics, attribution, do_not_sell });
    }

    pub fn opt_out(&mut self, now: f64) {
        self.engine.opt_out(now as Millis);
    }

    pub fn opt_in(&mut self, now: f64) {
        self.engine.opt_in(now as Millis);
    }

    pub fn flush(&mut self, now: f64) {
        let _ = self.engine.flush(now as Millis);
    }

    pub fn on_foreground(&mut self, now: f64) {
        self.engine.on_foreground(now as Millis);
    }

    pub fn on_background(&mut self, now: f64) {
        self.engine.on_background(now as Millis);
    }

    /// What to do next: `{"upload": {"id", "url", "headers": [[name, value]...], "body",
    /// "events"}}`, `{"wait": ms}` or `{"idle": true}`.
    pub fn poll(&mut self, now: f64) -> String {
        let mut w = Writer::with_capacity(1024);
        let mut o = w.begin();
        match self.engine.poll(now as Millis) {
            Action::Upload(t) => {
                o.key("upload");
                let mut u = o.w.begin();
                u.u64("id", t.batch_id);
                u.str("url", &t.url);
                u.key("headers");
                u.w.byte(b'[');
                for (i, (name, value)) in t.headers.iter().enumerate() {
                    if i > 0 {
                        u.w.byte(b',');
                    }
                    u.w.byte(b'[');
                    u.w.string(name);
                    u.w.byte(b',');
                    u.w.string(value);
                    u.w.byte(b']');
                }
                u.w.byte(b']');
                u.str("body", &json::lossy(&t.body));
                u.u64("events", t.event_count as u64);
                u.end();
            }
            Action::Wait(d) => o.u64("wait", u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Action::Idle => o.bool("idle", true),
        }
        o.end();
        w.into_string()
    }

    /// The server's answer to upload `id`.
    pub fn report(&mut self, now: f64, id: f64, status: u16, retry_after: Option<String>, body: &str) {
        let outcome = UploadOutcome::Response { status, retry_after, body: body.as_bytes().to_vec() };
        self.engine.report(now as Millis, id as u64, outcome);
    }

    /// Upload `id` got no HTTP answer (offline, DNS, CORS refusal, aborted).
    pub fn report_network_error(&mut self, now: f64, id: f64, message: &str) {
        self.engine.report(now as Millis, id as u64, UploadOutcome::NetworkError(message.to_owned()));
    }

    /// A beacon for a page going away: `{"url", "body"}`, or `undefined` when there is nothing
    /// to send.
    pub fn beacon(&mut self, now: f64, max_bytes: usize) -> Option<String> {
        let t = self.engine.beacon(now as Millis, max_bytes)?;
        let mut w = Writer::with_capacity(t.body.len() + 256);
        let mut o = w.begin();
        o.str("url", &t.url);
        o.str("body", &json::lossy(&t.body));
        o.u64("events", t.event_count as u64);
        o.end();
        Some(w.into_string())
    }

    /// The committed changes since the last call, oldest first, as a JSON array of
    /// `{"delete_all", "delete_held", "release_held", "deletes", "inserts", "state"}`; the page
    /// applies them to its storage in order. `undefined` when there are none.
    pub fn take_writes(&mut self) -> Option<String> {
        let _ = self.engine.persist();
        let outbox = core::mem::take(&mut self.engine.store_mut().outbox);
        if outbox.is_empty() {
            return None;
        }
        let mut all = Vec::with_capacity(outbox.iter().map(|w| w.len() + 1).sum::<usize>() + 2);
        all.push(b'[');
        for (i, write) in outbox.iter().enumerate() {
            if i > 0 {
                all.push(b',');
            }
            all.extend_from_slice(write);
        }
        all.push(b']');
        Some(text(&all))
    }

    /// The counters, snake_case JSON (with `in_flight`, which is not persisted).
    pub fn stats(&self) -> String {
        let mut w = Writer::with_capacity(512);
        self.engine.stats().write(&mut w, true);
        w.into_string()
    }

    pub fn anonymous_id(&self) -> String {
        self.engine.anonymous_id().to_owned()
    }

    pub fn user_id(&self) -> Option<String> {
        self.engine.user_id().map(str::to_owned)
    }

    /// `{"analytics", "attribution", "do_not_sell"}`.
    pub fn consent(&self) -> String {
        self.engine.consent().to_json()
    }

    pub fn opted_out(&self) -> bool {
        self.engine.is_opted_out()
    }

    /// The install's attribution (the server's answer, JSON) once it came.
    pub fn attribution(&self) -> Option<String> {
        self.engine.attribution_json().map(str::to_owned)
    }
}

/// The SHA-256 (hex) of a normalised email address, as `identify` sends it.
#[wasm_bindgen]
pub fn hash_email(email: &str) -> Result<String, JsError> {
    use_page_lowercase();
    pii::hash_email(email).map_err(|_| js_error("InvalidInput", ""))
}

/// The SHA-256 (hex) of a phone number's E.164 digits, as `identify` sends it.
#[wasm_bindgen]
pub fn hash_phone(phone: &str) -> Result<String, JsError> {
    pii::hash_phone(phone).map_err(|_| js_error("InvalidInput", ""))
}

/// No unwinding and no messages: a panic (a bug) traps.
#[cfg(all(target_arch = "wasm32", not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

/// talc: a maintained free-list allocator for wasm that reuses and merges freed memory (a page
/// lives long). Measured against std's dlmalloc (+1.6 KB gzip) and lol_alloc (-0.6 KB, less
/// maintained): see docs/BENCHMARKS.md.
#[cfg(target_arch = "wasm32")]
#[global_allocator]
static ALLOC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();
