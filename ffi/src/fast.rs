//! The JVM's fast path for the recording calls that carry properties (`track`, `screen`,
//! `identify`): one JNI crossing with the name and the JSON properties in one byte array.
//!
//! UniFFI's Kotlin code passes each string as a JNA `RustBuffer` structure by value, which JNA
//! reads and writes by reflection (two strings and a handle clone: about 60 µs a `track` on
//! HotSpot). This path hands the same bytes to the same UniFFI methods ([`TrailmarkSdk::track`]
//! and friends), so validation, refusal counting and backpressure are the core's, unchanged.
//! There is no business logic here: only the look-up of the SDK and the byte checks that the
//! UniFFI path gets from its string types (valid UTF-8, in bounds), counted as refusals.
//!
//! Handles. Kotlin cannot give Rust a pointer it can trust, so the SDK is found by an id: the
//! UniFFI method [`TrailmarkSdk::fast_path_id`] registers a *weak* reference under a new id
//! (ids are never reused) and Kotlin passes that id with every call. A bogus, stale or released
//! id finds nothing and the call answers [`UNKNOWN_SDK`]; an SDK destroyed by `close()` or by the
//! garbage collector (UniFFI's cleaner) cannot be upgraded, so it is neither kept alive by the
//! registry nor reachable through it. A call that did upgrade holds the SDK until it returns, so
//! a concurrent `close()` only takes effect after it: in that rare race the call's thread drops
//! the last reference and runs the SDK's shutdown (a final commit and the worker's join, bounded
//! by the driver's reply timeout) before `track` returns. Dead entries are dropped when an SDK
//! registers and when Kotlin releases its id.
//!
//! The JNI entry points are behind the `jni` feature (the JVM/Android builds; the XCFramework
//! leaves it out). The registry and `fast_path_id` are always there, so every build has the same
//! UniFFI interface; Kotlin falls back to the UniFFI calls when the JNI symbols are missing.

#![cfg_attr(not(feature = "jni"), allow(dead_code))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};

use crate::TrailmarkSdk;

/// Answers of [`record`] (and of the JNI entry point), mirrored in Kotlin's `FastPath`.
pub const HANDED_OVER: i32 = 0;
/// No live SDK has this id (closed, collected, released, or never issued).
pub const UNKNOWN_SDK: i32 = 1;
/// The arguments were unusable (no array, out of bounds, invalid UTF-8, unknown kind); the
/// SDK counted a refusal, as it does for invalid input.
pub const REFUSED: i32 = 2;
/// Something panicked; nothing was recorded.
pub const PANICKED: i32 = 3;

/// The calls the fast path carries, mirrored in Kotlin's `FastPath`.
pub const TRACK: i32 = 0;
pub const SCREEN: i32 = 1;
pub const IDENTIFY: i32 = 2;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// Live registrations. A short list (one SDK per app, a few in tests), so a scan beats a hash.
static SDKS: RwLock<Vec<(u64, Weak<TrailmarkSdk>)>> = RwLock::new(Vec::new());

#[uniffi::export]
impl TrailmarkSdk {
    /// Internal, for the Kotlin fast path: an id under which this SDK can be reached without
    /// UniFFI, weakly (the id does not keep the SDK alive). Each call issues a new id.
    pub fn fast_path_id(self: Arc<Self>) -> u64 {
        register(&self)
    }
}

/// Registers `sdk` weakly under a new id, dropping entries whose SDK is gone.
pub fn register(sdk: &Arc<TrailmarkSdk>) -> u64 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let mut sdks = SDKS.write().unwrap_or_else(PoisonError::into_inner);
    sdks.retain(|(_, weak)| weak.strong_count() > 0);
    sdks.push((id, Arc::downgrade(sdk)));
    id
}

/// Forgets an id; unknown ids are ignored (releasing twice is harmless).
pub fn release(id: u64) {
    let mut sdks = SDKS.write().unwrap_or_else(PoisonError::into_inner);
    sdks.retain(|(i, weak)| *i != id && weak.strong_count() > 0);
}

/// The SDK registered under `id`, if it is still alive.
pub fn lookup(id: u64) -> Option<Arc<TrailmarkSdk>> {
    let sdks = SDKS.read().unwrap_or_else(PoisonError::into_inner);
    sdks.iter().find(|(i, _)| *i == id).and_then(|(_, weak)| weak.upgrade())
}

/// Bytes of one call: the name's UTF-8 and the properties' JSON text, as read from the host.
pub struct Call {
    pub name: Vec<u8>,
    pub properties: Vec<u8>,
}

/// Hands one call to the SDK registered under `id`. `call` is `None` when the host's arguments
/// could not be read (no array, bounds outside it): a refusal, like invalid UTF-8.
pub fn record(id: u64, kind: i32, call: Option<Call>) -> i32 {
    let Some(sdk) = lookup(id) else { return UNKNOWN_SDK };
    let texts = call.and_then(|c| Some((String::from_utf8(c.name).ok()?, String::from_utf8(c.properties).ok()?)));
    let Some((name, properties)) = texts else {
        sdk.inner.count_refusal();
        return REFUSED;
    };
    match kind {
        TRACK => sdk.track(name, properties),
        SCREEN => sdk.screen(name, properties),
        IDENTIFY => sdk.identify(name, properties),
        _ => {
            sdk.inner.count_refusal();
            return REFUSED;
        }
    }
    HANDED_OVER
}

/// The JNI entry points of `dev.trailmark.FastPath` (Kotlin). Nothing here may unwind into the
/// JVM: every body runs under `catch_unwind`.
#[cfg(feature = "jni")]
mod jvm {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    use jni::JNIEnv;
    use jni::objects::{JByteArray, JClass};
    use jni::sys::{jboolean, jint, jlong};

    use super::{Call, PANICKED, record};

    /// Bumped when the entry points change; Kotlin uses the fast path only for the version it
    /// was written for.
    const VERSION: jint = 1;

    #[unsafe(no_mangle)]
    pub extern "system" fn Java_dev_trailmark_FastPath_version(_env: JNIEnv, _class: JClass) -> jint {
        VERSION
    }

    /// `record(id, kind, buf, nameLen, len)`: `buf[0, nameLen)` is the name, `buf[nameLen, len)`
    /// the properties' JSON.
    #[unsafe(no_mangle)]
    pub extern "system" fn Java_dev_trailmark_FastPath_record<'l>(
        env: JNIEnv<'l>,
        _class: JClass<'l>,
        id: jlong,
        kind: jint,
        buf: JByteArray<'l>,
        name_len: jint,
        len: jint,
    ) -> jint {
        catch_unwind(AssertUnwindSafe(|| record(id as u64, kind, read(&env, &buf, name_len, len)))).unwrap_or(PANICKED)
    }

    #[unsafe(no_mangle)]
    pub extern "system" fn Java_dev_trailmark_FastPath_release(_env: JNIEnv, _class: JClass, id: jlong) {
        let _ = catch_unwind(|| super::release(id as u64));
    }

    /// Whether `id` names a live SDK in *this* library (Kotlin checks that the library it
    /// loaded for JNI is the one UniFFI uses).
    #[unsafe(no_mangle)]
    pub extern "system" fn Java_dev_trailmark_FastPath_isLive(_env: JNIEnv, _class: JClass, id: jlong) -> jboolean {
        catch_unwind(|| super::lookup(id as u64).is_some()).unwrap_or(false) as jboolean
    }

    /// Copies the two parts out of the Java array; `None` for a null array or bounds outside it.
    fn read(env: &JNIEnv, buf: &JByteArray, name_len: jint, len: jint) -> Option<Call> {
        if buf.is_null() || name_len < 0 || len < name_len {
            return None;
        }
        if env.get_array_length(buf).ok()? < len {
            return None;
        }
        let mut name = vec![0u8; name_len as usize];
        let mut properties = vec![0u8; (len - name_len) as usize];
        env.get_byte_array_region(buf, 0, as_jbytes(&mut name)).ok()?;
        env.get_byte_array_region(buf, name_len, as_jbytes(&mut properties)).ok()?;
        Some(Call { name, properties })
    }

    fn as_jbytes(bytes: &mut [u8]) -> &mut [i8] {
        // SAFETY: u8 and i8 have the same size and alignment and every bit pattern is valid
        // for both; the slice keeps the borrow of `bytes`.
        unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<i8>(), bytes.len()) }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::{HttpResponse, HttpTransport, TrailmarkConfig};

    /// Never answers usefully; these tests only count.
    struct Offline;

    impl HttpTransport for Offline {
        fn post(&self, _url: String, _headers: HashMap<String, String>, _body: Vec<u8>) -> HttpResponse {
            HttpResponse { status: 0, retry_after: None, body: Vec::new(), error: Some("offline".into()) }
        }
    }

    fn start(dir: &std::path::Path) -> Arc<TrailmarkSdk> {
        let db = dir.join("sdk.db").to_string_lossy().into_owned();
        let config = TrailmarkConfig {
            os: Some("Android".into()),
            ..TrailmarkConfig::new("app", "secret", "https://collect.example.test", &db)
        };
        TrailmarkSdk::start(config, Some(Arc::new(Offline))).unwrap()
    }

    fn call(name: &[u8], properties: &[u8]) -> Option<Call> {
        Some(Call { name: name.to_vec(), properties: properties.to_vec() })
    }

    #[test]
    fn records_like_uniffi_and_counts_misuse() {
        let dir = tempfile::tempdir().unwrap();
        let sdk = start(dir.path());
        let id = sdk.clone().fast_path_id();
        sdk.flush().unwrap();
        let before = sdk.stats().unwrap();
        assert_eq!(record(id, TRACK, call(b"add_to_cart", br#"{"sku":"A-1"}"#)), HANDED_OVER);
        assert_eq!(record(id, SCREEN, call(b"Home", b"")), HANDED_OVER);
        assert_eq!(record(id, TRACK, None), REFUSED);
        assert_eq!(record(id, TRACK, call(b"add\xff", b"{}")), REFUSED);
        assert_eq!(record(id, TRACK, call(b"add", b"{\"a\":\"\xc3\"}")), REFUSED);
        assert_eq!(record(id, 99, call(b"add", b"{}")), REFUSED);
        // Handed over, and refused by the core itself (as through UniFFI).
        assert_eq!(record(id, TRACK, call(b"Not A Type", b"{}")), HANDED_OVER);
        assert_eq!(record(id, TRACK, call(b"add", b"[1]")), HANDED_OVER);
        for bogus in [0, u64::MAX, id + 1_000_000] {
            assert_eq!(record(bogus, TRACK, call(b"add", b"{}")), UNKNOWN_SDK);
        }
        sdk.flush().unwrap();
        let after = sdk.stats().unwrap();
        assert_eq!(after.refused_invalid - before.refused_invalid, 6, "{after:?}");
        assert_eq!(after.recorded - before.recorded, 2, "{after:?}");
    }

    #[test]
    fn ids_hold_the_sdk_weakly() {
        let dir = tempfile::tempdir().unwrap();
        let sdk = start(dir.path());
        let (a, b) = (sdk.clone().fast_path_id(), sdk.clone().fast_path_id());
        assert_ne!(a, b, "ids are never reused");
        assert!(lookup(a).is_some() && lookup(b).is_some());
        release(a);
        release(a);
        assert!(lookup(a).is_none());
        assert_eq!(record(a, TRACK, call(b"add", b"{}")), UNKNOWN_SDK);
        assert_eq!(Arc::strong_count(&sdk), 1, "the registry keeps no strong reference");
        drop(sdk); // stops the SDK; its id finds nothing
        assert!(lookup(b).is_none());
        assert_eq!(record(b, TRACK, call(b"add", b"{}")), UNKNOWN_SDK);
        let other = start(dir.path());
        let c = other.clone().fast_path_id();
        assert!(SDKS.read().unwrap().iter().all(|(i, _)| *i != b), "dead entries go when an SDK registers");
        release(c);
    }
}
