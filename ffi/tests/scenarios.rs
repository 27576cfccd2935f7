//! The shared scenarios (`tests/scenarios/*.json`) through the FFI surface from Rust. The
//! Kotlin and Swift harnesses run the same files through their bindings; the format is in
//! `tests/scenarios/README.md`.
//!
//! `TM_SCENARIO_DUMP=<dir>` writes what each scenario actually sent there (for writing new ones).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use trailmark_ffi::{
    Consent, EventMiddleware, HttpResponse, HttpTransport, MiddlewareError, SdkStats, TrackingAuthorization,
    TrailmarkConfig, TrailmarkError, TrailmarkSdk,
};

/// One request the SDK sent, as the platform transport saw it.
#[derive(Debug, Clone)]
struct Captured {
    url: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// Answers from the scenario's script, then as the server does when it takes everything.
struct Scripted {
    responses: Mutex<Vec<Value>>,
    captured: Mutex<Vec<Captured>>,
}

impl HttpTransport for Scripted {
    fn post(&self, url: String, headers: HashMap<String, String>, body: Vec<u8>) -> HttpResponse {
        let next = {
            let mut r = self.responses.lock().unwrap();
            if r.is_empty() { Value::Null } else { r.remove(0) }
        };
        let default = next.is_null().then(|| default_answer(&url, &body));
        self.captured.lock().unwrap().push(Captured { url, headers, body });
        let status = next.get("status").and_then(Value::as_u64).unwrap_or(200) as u16;
        let body = match next.get("body") {
            None | Some(Value::Null) => default.unwrap_or_default(),
            // A string is the body's raw text (a proxy's page).
            Some(Value::String(text)) => text.clone().into_bytes(),
            Some(v) => serde_json::to_vec(v).unwrap(),
        };
        HttpResponse {
            status,
            retry_after: next.get("retry_after").and_then(Value::as_str).map(str::to_owned),
            body,
            error: next.get("error").and_then(Value::as_str).map(str::to_owned),
        }
    }
}

/// The server's answer when the script has none left: an organic attribution for the install
/// request, every event of a batch accepted.
fn default_answer(url: &str, body: &[u8]) -> Vec<u8> {
    let answer = if url.ends_with("/v1/install") {
        serde_json::json!({"attributed": false, "match_type": "organic", "confidence": 0.0, "campaign_id": null,
            "link_id": null, "click_id": null, "network": null, "deep_link": null,
            "fraud": {"flags": [], "rejected": false}, "reinstall": false})
    } else {
        let sent: Value = serde_json::from_slice(body).unwrap_or_default();
        let n = sent["batch"].as_array().map_or(0, Vec::len);
        serde_json::json!({"accepted": n, "duplicates": 0, "rejected": []})
    };
    serde_json::to_vec(&answer).unwrap()
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn config(c: &Value, db: &Path) -> TrailmarkConfig {
    let defaults = TrailmarkConfig::new(
        &text(c, "app_id").unwrap_or_default(),
        &text(c, "app_secret").unwrap_or_default(),
        &text(c, "endpoint").unwrap_or_default(),
        &db.to_string_lossy(),
    );
    TrailmarkConfig {
        require_consent: c.get("require_consent").and_then(Value::as_bool).unwrap_or(false),
        device_id: text(c, "device_id"),
        advertising_id: text(c, "advertising_id"),
        app_version: text(c, "app_version"),
        os: text(c, "os"),
        os_version: text(c, "os_version"),
        model: text(c, "model"),
        locale: text(c, "locale"),
        timezone: text(c, "timezone"),
        sdk_name: text(c, "sdk_name"),
        sdk_version: text(c, "sdk_version"),
        flush_at: c.get("flush_at").and_then(Value::as_u64).map(|n| n as u32),
        flush_interval_ms: c.get("flush_interval_ms").and_then(Value::as_u64),
        max_queue_events: c.get("max_queue_events").and_then(Value::as_u64).map(|n| n as u32),
        hashed_traits: c
            .get("hashed_traits")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str().map(Into::into)).collect()),
        tracking_authorization_wait_ms: c.get("tracking_authorization_wait_ms").and_then(Value::as_u64),
        tracking_authorization: c.get("tracking_authorization").and_then(Value::as_str).map(tracking),
        ..defaults
    }
}

/// A middleware doing what an `add_middleware` step says (see tests/scenarios/README.md).
struct ScriptedMiddleware(Value);

impl EventMiddleware for ScriptedMiddleware {
    fn process(&self, event_json: String) -> Result<Option<String>, MiddlewareError> {
        let rule = &self.0;
        let mut e: Value = serde_json::from_str(&event_json).expect("the SDK sends JSON");
        let kind = e["type"].as_str().unwrap_or_default().to_owned();
        if rule["drop_type"].as_str() == Some(kind.as_str()) {
            return Ok(None);
        }
        if rule["fail_type"].as_str() == Some(kind.as_str()) {
            return Err(MiddlewareError::Failed { reason: "scripted failure".into() });
        }
        if rule["rename"]["from"].as_str() == Some(kind.as_str()) {
            e["type"] = rule["rename"]["to"].clone();
        }
        let context = e["context"].clone();
        let props = e["properties"].as_object_mut().expect("properties");
        for key in rule["remove"].as_array().into_iter().flatten() {
            props.remove(key.as_str().unwrap_or_default());
        }
        for (k, v) in rule["set"].as_object().into_iter().flatten() {
            props.insert(k.clone(), v.clone());
        }
        for (k, from) in rule["copy_context"].as_object().into_iter().flatten() {
            props.insert(k.clone(), context[from.as_str().unwrap_or_default()].clone());
        }
        Ok(Some(e.to_string()))
    }
}

fn tracking(status: &str) -> TrackingAuthorization {
    match status {
        "not_determined" => TrackingAuthorization::NotDetermined,
        "restricted" => TrackingAuthorization::Restricted,
        "denied" => TrackingAuthorization::Denied,
        _ => TrackingAuthorization::Authorized,
    }
}

fn stats_map(s: &SdkStats) -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        ("recorded", s.recorded.into()),
        ("delivered", s.delivered.into()),
        ("queued", s.queued.into()),
        ("held", s.held.into()),
        ("rejected_by_server", s.rejected_by_server.into()),
        ("refused_invalid", s.refused_invalid.into()),
        ("dropped_queue_full", s.dropped_queue_full.into()),
        ("dropped_expired", s.dropped_expired.into()),
        ("dropped_consent_denied", s.dropped_consent_denied.into()),
        ("dropped_opted_out", s.dropped_opted_out.into()),
        ("dropped_backpressure", s.dropped_backpressure.into()),
        ("uploads", s.uploads.into()),
        ("upload_failures", s.upload_failures.into()),
        ("bad_answers", s.bad_answers.into()),
        ("dropped_by_middleware", s.dropped_by_middleware.into()),
        ("middleware_errors", s.middleware_errors.into()),
        ("last_rejection_status", s.last_rejection_status.into()),
        ("last_rejection_reason", s.last_rejection_reason.clone().into()),
        ("in_flight", s.in_flight.into()),
    ])
}

fn error_name(e: &TrailmarkError) -> &'static str {
    match e {
        TrailmarkError::InvalidConfig { .. } => "InvalidConfig",
        TrailmarkError::InvalidInput { .. } => "InvalidInput",
        TrailmarkError::Storage { .. } => "Storage",
        TrailmarkError::Closed => "Closed",
        TrailmarkError::Timeout => "Timeout",
    }
}

fn props(step: &Value, key: &str) -> String {
    step.get(key).map(|v| v.to_string()).unwrap_or_default()
}

/// Compares an actual value with an expected one: `"<uuid>"`, `"<timestamp>"`, `"<digits>"`,
/// `"<signature>"`, `"<traceparent>"` and `"<any>"` match shapes; `"$name"` binds a value on first sight and must
/// match it afterwards (distinct names, distinct values). Objects must have exactly the
/// expected keys; numbers compare by value.
fn matches(expected: &Value, actual: &Value, vars: &mut BTreeMap<String, Value>, path: &str) -> Result<(), String> {
    let fail = || Err(format!("{path}: expected {expected}, got {actual}"));
    match expected {
        Value::String(p) if p.starts_with('$') => {
            if let Some(bound) = vars.get(p) {
                return if bound == actual { Ok(()) } else { Err(format!("{path}: {p} was {bound}, now {actual}")) };
            }
            if let Some((other, _)) = vars.iter().find(|(_, v)| *v == actual) {
                return Err(format!("{path}: {p} would equal {other} ({actual})"));
            }
            vars.insert(p.clone(), actual.clone());
            Ok(())
        }
        Value::String(p) if p.starts_with('<') && p.ends_with('>') => {
            let Some(a) = actual.as_str() else { return fail() };
            let ok = match p.as_str() {
                "<any>" => true,
                "<uuid>" => {
                    a.len() == 36
                        && a.char_indices().all(|(i, c)| {
                            if [8, 13, 18, 23].contains(&i) {
                                c == '-'
                            } else {
                                c.is_ascii_hexdigit() && !c.is_ascii_uppercase()
                            }
                        })
                }
                "<timestamp>" => {
                    let shape = "dddd-dd-ddTdd:dd:dd.dddZ";
                    a.len() == shape.len()
                        && a.chars().zip(shape.chars()).all(|(c, s)| if s == 'd' { c.is_ascii_digit() } else { c == s })
                }
                "<digits>" => !a.is_empty() && a.chars().all(|c| c.is_ascii_digit()),
                "<signature>" => {
                    a.strip_prefix("v1=").is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
                }
                "<traceparent>" => trailmark_core::protocol::parse_traceparent(a).is_some() && a.ends_with("-01"),
                other => return Err(format!("{path}: unknown pattern {other}")),
            };
            if ok { Ok(()) } else { fail() }
        }
        Value::Number(e) => match actual.as_f64() {
            Some(a) if e.as_f64() == Some(a) => Ok(()),
            _ => fail(),
        },
        Value::Object(e) => {
            let Some(a) = actual.as_object() else { return fail() };
            let mut ek: Vec<_> = e.keys().collect();
            let mut ak: Vec<_> = a.keys().collect();
            ek.sort();
            ak.sort();
            if ek != ak {
                return Err(format!("{path}: keys {ek:?} expected, got {ak:?}"));
            }
            for (k, v) in e {
                matches(v, &a[k], vars, &format!("{path}.{k}"))?;
            }
            Ok(())
        }
        Value::Array(e) => {
            let Some(a) = actual.as_array() else { return fail() };
            if e.len() != a.len() {
                return Err(format!("{path}: {} items expected, got {}", e.len(), a.len()));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                matches(ev, av, vars, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ => {
            if expected == actual {
                Ok(())
            } else {
                fail()
            }
        }
    }
}

/// Replaces every `"@name"` string with `defs.name` (shared pieces such as the context).
fn expand(v: &Value, defs: &Value) -> Value {
    match v {
        Value::String(s) if s.starts_with('@') => match defs.get(&s[1..]) {
            Some(d) => expand(d, defs),
            None => panic!("undefined {s}"),
        },
        Value::Array(a) => Value::Array(a.iter().map(|x| expand(x, defs)).collect()),
        Value::Object(o) => Value::Object(o.iter().map(|(k, x)| (k.clone(), expand(x, defs))).collect()),
        other => other.clone(),
    }
}

fn request_json(c: &Captured) -> Value {
    let path = c.url.find("://").and_then(|i| c.url[i + 3..].find('/').map(|j| &c.url[i + 3 + j..])).unwrap_or("");
    let headers: Map<String, Value> =
        c.headers.iter().map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v.clone()))).collect();
    let body =
        serde_json::from_slice(&c.body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&c.body).into()));
    serde_json::json!({"path": path, "headers": headers, "body": body})
}

fn run(file: &Path) -> Result<(), String> {
    let scenario: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sdk.db");
    let transport = Arc::new(Scripted {
        responses: Mutex::new(scenario["responses"].as_array().cloned().unwrap_or_default()),
        captured: Mutex::new(Vec::new()),
    });
    let cfg = &scenario["config"];
    let start = || TrailmarkSdk::start(config(cfg, &db), Some(transport.clone() as Arc<dyn HttpTransport>));
    let mut sdk = Some(start().map_err(|e| format!("start: {e}"))?);
    let mut vars = BTreeMap::new();
    for (i, step) in scenario["steps"].as_array().into_iter().flatten().enumerate() {
        let at = format!("step {i} ({step})");
        let s = sdk.as_ref().ok_or_else(|| format!("{at}: the SDK is not running"))?;
        match step["call"].as_str().unwrap_or("") {
            "track" => s.track(text(step, "type").unwrap_or_default(), props(step, "properties")),
            "screen" => s.screen(text(step, "name").unwrap_or_default(), props(step, "properties")),
            "identify" => s.identify(text(step, "user_id").unwrap_or_default(), props(step, "traits")),
            "register" => s.register(props(step, "properties")),
            "unregister" => s.unregister(text(step, "key").unwrap_or_default()),
            "group" => s.group(text(step, "group_id").unwrap_or_default(), props(step, "traits")),
            "alias" => s.alias(text(step, "user_id").unwrap_or_default()),
            "set_advertising_id" => s.set_advertising_id(text(step, "id")),
            "set_tracking_authorization" => {
                s.set_tracking_authorization(tracking(step["status"].as_str().unwrap_or("")))
            }
            "add_middleware" => s.add_middleware(Arc::new(ScriptedMiddleware(step.clone()))),
            "set_consent" => s.set_consent(Consent {
                analytics: step["analytics"].as_bool(),
                attribution: step["attribution"].as_bool(),
                do_not_sell: step["do_not_sell"].as_bool(),
            }),
            "opt_out" => s.opt_out(),
            "opt_in" => s.opt_in(),
            "reset" => s.reset(),
            "on_foreground" => s.on_foreground(),
            "on_background" => s.on_background(),
            "handle_open_url" => s.handle_open_url(text(step, "url").unwrap_or_default()),
            "flush" => s.flush().map_err(|e| format!("{at}: {e}"))?,
            "restart" => {
                drop(sdk.take());
                sdk = Some(start().map_err(|e| format!("{at}: {e}"))?);
            }
            "wait_requests" => {
                let want = step["count"].as_u64().unwrap_or(0) as usize;
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let have = transport.captured.lock().unwrap().len();
                    if have >= want && s.stats().map_err(|e| e.to_string())?.in_flight == 0 {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(format!("{at}: {have} requests after 20 s"));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            "expect_stats" => {
                let actual = stats_map(&s.stats().map_err(|e| e.to_string())?);
                for (k, v) in step["stats"].as_object().into_iter().flatten() {
                    let a = actual.get(k.as_str()).ok_or_else(|| format!("{at}: unknown stat {k}"))?;
                    if a != v {
                        return Err(format!("{at}: stat {k} is {a}, expected {v}; all: {actual:?}"));
                    }
                }
            }
            "attribution" => {
                let got = match s.attribution().map_err(|e| e.to_string())? {
                    None => Value::Null,
                    Some(a) => serde_json::json!({
                        "attributed": a.attributed, "match_type": a.match_type, "confidence": a.confidence,
                        "campaign_id": a.campaign_id, "link_id": a.link_id, "click_id": a.click_id,
                        "network": a.network, "deep_link_path": a.deep_link_path,
                        "deep_link_params": a.deep_link_params, "fraud_flags": a.fraud_flags,
                        "fraud_rejected": a.fraud_rejected, "reinstall": a.reinstall, "reason": a.reason,
                    }),
                };
                matches(&step["expect"], &got, &mut vars, &at)?;
            }
            "anonymous_id" => {
                let id = Value::String(s.anonymous_id().map_err(|e| e.to_string())?);
                matches(&step["expect"], &id, &mut vars, &at)?;
            }
            "hash_email" => {
                let got = trailmark_ffi::hash_email(text(step, "email").unwrap_or_default());
                match (got, step.get("expect"), text(step, "error")) {
                    (Ok(h), Some(e), None) if e.as_str() == Some(h.as_str()) => {}
                    (Err(e), None, Some(name)) if error_name(&e) == name => {}
                    (got, _, _) => return Err(format!("{at}: got {got:?}")),
                }
            }
            "start_error" => {
                let mut c = cfg.clone();
                for (k, v) in step["config"].as_object().into_iter().flatten() {
                    c[k] = v.clone();
                }
                let other = dir.path().join(format!("other-{i}.db"));
                match TrailmarkSdk::start(config(&c, &other), None) {
                    Err(e) if Some(error_name(&e)) == step["error"].as_str() => {}
                    Err(e) => return Err(format!("{at}: wrong error {e:?}")),
                    Ok(_) => return Err(format!("{at}: started")),
                }
            }
            other => return Err(format!("{at}: unknown call {other:?}")),
        }
    }
    let captured: Vec<Value> = transport.captured.lock().unwrap().iter().map(request_json).collect();
    if let Some(dir) = std::env::var_os("TM_SCENARIO_DUMP") {
        let name = file.file_name().unwrap();
        std::fs::write(Path::new(&dir).join(name), serde_json::to_vec_pretty(&captured).unwrap()).unwrap();
    }
    let expected = expand(&scenario["requests"], &scenario["defs"]);
    matches(&expected, &Value::Array(captured), &mut vars, "requests")
}

fn scenario_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/scenarios");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn shared_scenarios() {
    let files = scenario_files();
    assert!(!files.is_empty(), "scenarios missing: {files:?}");
    let mut failures = Vec::new();
    for f in &files {
        match run(f) {
            Ok(()) => println!("scenario {} ok", f.file_name().unwrap().to_string_lossy()),
            Err(e) => failures.push(format!("{}: {e}", f.display())),
        }
    }
    assert!(failures.is_empty(), "{} of {} scenarios failed:\n{}", failures.len(), files.len(), failures.join("\n"));
}

#[test]
fn the_matcher_is_strict() {
    let mut vars = BTreeMap::new();
    let e = serde_json::json!({"id": "$a", "n": 1, "t": "<timestamp>", "u": "<uuid>"});
    let good = serde_json::json!({"id": "x", "n": 1.0, "t": "2026-01-02T03:04:05.678Z", "u": "0b5e2c4e-8f43-4c8e-9a55-0e6a1b3c2d4f"});
    assert!(matches(&e, &good, &mut vars, "").is_ok());
    let extra = serde_json::json!({"id": "x", "n": 1, "t": "2026-01-02T03:04:05.678Z", "u": "0b5e2c4e-8f43-4c8e-9a55-0e6a1b3c2d4f", "z": 0});
    assert!(matches(&e, &extra, &mut vars, "").is_err(), "extra keys fail");
    let rebound = serde_json::json!({"id": "y", "n": 1, "t": "2026-01-02T03:04:05.678Z", "u": "0b5e2c4e-8f43-4c8e-9a55-0e6a1b3c2d4f"});
    assert!(matches(&e, &rebound, &mut vars, "").is_err(), "a variable keeps its value");
    assert!(matches(&serde_json::json!("$b"), &serde_json::json!("x"), &mut vars, "").is_err(), "distinct variables");
    assert!(matches(&serde_json::json!("<uuid>"), &serde_json::json!("not-a-uuid"), &mut vars, "").is_err());
}
