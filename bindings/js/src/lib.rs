//! The Trailmark web SDK's Rust side: the core engine compiled to wasm, with a store that keeps
//! the queue in memory and hands every committed change to the page (which writes it to
//! IndexedDB or localStorage). Calls and answers cross the boundary as strings and numbers;
//! JSON for anything structured. Every decision is the core's; this crate only marshals.

use serde::Deserialize;
use serde_json::{Map, Value, json};
use trailmark_core::engine::{Action, UploadOutcome};
use trailmark_core::store::{EventStore, Snapshot, StoreError, StoredEvent, WriteBatch};
use trailmark_core::{ConsentUpdate, Engine, HostConfig, MemoryStore, Millis, pii, protocol};
use wasm_bindgen::prelude::*;

/// One stored event as the page keeps it: the body is the event's JSON text.
#[derive(Deserialize)]
struct PageEvent {
    seq: u64,
    held: bool,
    created_at: i64,
    body: String,
}

/// What the page read from its storage at start.
#[derive(Deserialize, Default)]
#[serde(default)]
struct PageSnapshot {
    events: Vec<PageEvent>,
    state: Option<String>,
}

/// The queue in memory (reads never wait for the page's asynchronous storage) plus the
/// committed changes the page has not taken yet.
struct WebStore {
    memory: MemoryStore,
    outbox: Vec<Value>,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_json(batch: &WriteBatch) -> Value {
    let inserts: Vec<Value> = batch
        .inserts
        .iter()
        .map(|e| json!({"seq": e.seq, "held": e.held, "created_at": e.created_at, "body": text(&e.body)}))
        .collect();
    json!({
        "delete_all": batch.delete_all,
        "delete_held": batch.delete_held,
        "release_held": batch.release_held,
        "deletes": batch.deletes,
        "inserts": inserts,
        "state": batch.state.as_deref().map(text),
    })
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

/// The answer of a recording call: `undefined` when taken, else why it was refused (the
/// refusal is already counted in `refused_invalid`).
fn refusal<E: ToString>(result: Result<(), E>) -> Option<String> {
    result.err().map(|e| e.to_string())
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
        call: impl FnOnce(&mut Engine<WebStore>, Map<String, Value>) -> Result<(), protocol::ValidationError>,
    ) -> Option<String> {
        match protocol::parse_properties(json.as_bytes()) {
            Ok(p) => refusal(call(&mut self.engine, p)),
            Err(e) => {
                self.engine.record_refusal();
                Some(e.to_string())
            }
        }
    }
}

#[wasm_bindgen]
impl Core {
    /// Opens the engine on what the page read from storage (`{"events": [...], "state"}`).
    /// `seed` is 32 bytes from `crypto.getRandomValues`. Throws `InvalidConfig: ...` or
    /// `Storage: ...`.
    #[wasm_bindgen(constructor)]
    pub fn new(config_json: &str, snapshot_json: &str, now: f64, seed: &[u8]) -> Result<Core, JsError> {
        // The page's configuration: the TypeScript layer maps its camelCase options to these keys.
        let mut config: HostConfig =
            serde_json::from_str(config_json).map_err(|e| JsError::new(&format!("InvalidConfig: {e}")))?;
        config.sdk_name.get_or_insert_with(|| "trailmark-web".into());
        let snapshot: PageSnapshot = serde_json::from_str(snapshot_json).unwrap_or_default();
        let seed: [u8; 32] = seed.try_into().map_err(|_| JsError::new("InvalidConfig: the seed must be 32 bytes"))?;
        let mut memory = MemoryStore::new();
        let loaded = WriteBatch {
            inserts: snapshot
                .events
                .into_iter()
                .map(|e| StoredEvent { seq: e.seq, held: e.held, created_at: e.created_at, body: e.body.into_bytes() })
                .collect(),
            state: snapshot.state.map(String::into_bytes),
            ..WriteBatch::default()
        };
        memory.commit(&loaded).map_err(|e| JsError::new(&format!("Storage: {e}")))?;
        let store = WebStore { memory, outbox: Vec::new() };
        let engine = Engine::open(config.into_config(), store, now as Millis, seed).map_err(|e| {
            let kind = if matches!(e, trailmark_core::OpenError::Config(_)) { "InvalidConfig" } else { "Storage" };
            JsError::new(&format!("{kind}: {e}"))
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
        let action = match self.engine.poll(now as Millis) {
            Action::Upload(t) => json!({"upload": {
                "id": t.batch_id, "url": t.url, "headers": t.headers, "body": text(&t.body), "events": t.event_count,
            }}),
            Action::Wait(d) => json!({"wait": d.as_millis() as u64}),
            Action::Idle => json!({"idle": true}),
        };
        action.to_string()
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
        Some(json!({"url": t.url, "body": text(&t.body), "events": t.event_count}).to_string())
    }

    /// The committed changes since the last call, oldest first, as a JSON array of
    /// `{"delete_all", "delete_held", "release_held", "deletes", "inserts", "state"}`; the page
    /// applies them to its storage in order. `undefined` when there are none.
    pub fn take_writes(&mut self) -> Option<String> {
        let _ = self.engine.persist();
        let outbox = &mut self.engine.store_mut().outbox;
        if outbox.is_empty() {
            return None;
        }
        Some(Value::Array(std::mem::take(outbox)).to_string())
    }

    /// The counters, snake_case JSON (with `in_flight`, which is not persisted).
    pub fn stats(&self) -> String {
        let stats = self.engine.stats();
        let mut value = serde_json::to_value(stats).unwrap_or_default();
        value["in_flight"] = json!(stats.in_flight);
        value.to_string()
    }

    pub fn anonymous_id(&self) -> String {
        self.engine.anonymous_id().to_owned()
    }

    pub fn user_id(&self) -> Option<String> {
        self.engine.user_id().map(str::to_owned)
    }

    /// `{"analytics", "attribution", "do_not_sell"}`.
    pub fn consent(&self) -> String {
        serde_json::to_string(&self.engine.consent()).unwrap_or_default()
    }

    pub fn opted_out(&self) -> bool {
        self.engine.is_opted_out()
    }

    /// The install's attribution (the server's answer, JSON) once it came.
    pub fn attribution(&self) -> Option<String> {
        self.engine.attribution().and_then(|a| serde_json::to_string(&a).ok())
    }
}

/// The SHA-256 (hex) of a normalised email address, as `identify` sends it.
#[wasm_bindgen]
pub fn hash_email(email: &str) -> Result<String, JsError> {
    pii::hash_email(email).map_err(|e| JsError::new(&format!("InvalidInput: {e}")))
}

/// The SHA-256 (hex) of a phone number's E.164 digits, as `identify` sends it.
#[wasm_bindgen]
pub fn hash_phone(phone: &str) -> Result<String, JsError> {
    pii::hash_phone(phone).map_err(|e| JsError::new(&format!("InvalidInput: {e}")))
}
