//! The upload cycle: `poll` hands out batches, `report` takes their results (acknowledge, split,
//! pause or retry with backoff), `beacon` sends a last batch from a page going away.

#[allow(unused_imports)]
use crate::prelude::*;

use core::time::Duration;

use super::install::InstallStep;
use super::log;
use super::{Action, Engine, Millis, UploadOutcome, UploadTask, ms};
use crate::json::{self, Fields, Value};
use crate::protocol::{self, DropReport, IngestResponse, MAX_BATCH_BYTES};
use crate::store::EventStore;

/// Bytes reserved in a batch for everything around the events (`sent_at`, `dropped`).
const ENVELOPE_RESERVE: usize = 1024;
/// Wait before retrying after a storage failure.
const STORE_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(super) struct InFlight {
    batch_id: u64,
    pub(super) seqs: Vec<u64>,
    reported: DropReport,
}

/// How the engine reads an upload result.
enum Verdict {
    /// Acknowledged with the answer's `status`: a 2xx read as an ingest response, or the 4xx
    /// refusing a lone event for good (then the drop report the request carried did not arrive).
    Ack {
        response: IngestResponse,
        status: u16,
    },
    Split,
    AuthPause,
    /// A 2xx that is not an ingest response: nothing is known to be stored.
    BadAnswer,
    Retry(Option<Duration>),
}

impl<S: EventStore> Engine<S> {
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
                log!(self, "store read failed: {e}");
                return Action::Wait(STORE_RETRY);
            }
        };
        if bodies.len() != seqs.len() {
            // Rows vanished under us (external tampering): forget them so the queue moves on.
            let found: Vec<u64> = bodies.iter().map(|(s, _)| *s).collect();
            let missing = seqs.len() - found.len();
            self.queue.retain(|e| !seqs.contains(&e.seq) || found.contains(&e.seq));
            self.state.stats.store_errors += missing as u64;
            self.state_dirty = true;
            log!(self, "{missing} queued events missing from the store");
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
        log!(self, "upload batch {batch_id}: {event_count} events, {} bytes", body.len());
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
        // A late advertising id leaves only while tracking is allowed now (ATT can be revoked
        // after the event was recorded).
        let strip_ids = strip || self.tracking_denied();
        let sent_at = protocol::format_millis(now);
        let mut body = Vec::with_capacity(capacity);
        body.extend_from_slice(b"{\"sent_at\":\"");
        body.extend_from_slice(sent_at.as_bytes());
        body.extend_from_slice(b"\",\"batch\":[");
        for (i, (_, event)) in bodies.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            if strip || (strip_ids && is_advertising_id(event)) {
                body.extend_from_slice(&strip_attribution(event));
            } else {
                body.extend_from_slice(event);
            }
        }
        body.push(b']');
        if let Some(reported) = dropped.filter(|r| !r.is_empty()) {
            body.extend_from_slice(b",\"dropped\":");
            let mut w = json::Writer::with_capacity(128);
            reported.write(&mut w);
            body.extend_from_slice(&w.into_bytes());
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
        let ts = self.server_now(now).div_euclid(1000);
        let signature = protocol::sign(self.config.app_secret.as_bytes(), ts, &body);
        let url = crate::urls::with_query(
            &self.upload_url,
            &[
                (protocol::QUERY_APP, self.config.app_id.as_str()),
                (protocol::QUERY_TIMESTAMP, json::i64_text(ts).as_str()),
                (protocol::QUERY_SIGNATURE, signature.as_str()),
            ],
        );
        self.beaconed_through = last;
        self.state.stats.beacons += 1;
        self.state_dirty = true;
        let batch_id = self.next_batch_id;
        self.next_batch_id += 1;
        let event_count = bodies.len();
        log!(self, "beacon {batch_id}: {event_count} events, {} bytes", body.len());
        // A string body: sendBeacon sends it as text/plain, which needs no CORS preflight.
        let headers = vec![("Content-Type".to_owned(), "text/plain;charset=UTF-8".to_owned())];
        Some(UploadTask { batch_id, url, headers, body, event_count })
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
            log!(self, "report for unknown batch {batch_id} ignored");
            return;
        };
        let n = flight.seqs.len();
        match self.verdict(now, &outcome, n) {
            Verdict::Ack { response, status } => self.acknowledge(now, flight, response, status),
            Verdict::Split => {
                self.batch_limit = (n / 2).max(1);
                log!(
                    self,
                    "batch {batch_id} refused as a whole ({}); retrying {} at a time",
                    Brief(&outcome),
                    (n / 2).max(1)
                );
            }
            Verdict::AuthPause => {
                let fresh = matches!(&outcome, UploadOutcome::Response { body, .. } if self.learn_clock(now, body));
                if !fresh {
                    self.pause_for_auth(now, Subject::Batch(batch_id));
                }
            }
            Verdict::BadAnswer => {
                self.state.stats.bad_answers += 1;
                self.schedule_retry(now, None, Subject::Batch(batch_id), &outcome);
            }
            Verdict::Retry(retry_after) => self.schedule_retry(now, retry_after, Subject::Batch(batch_id), &outcome),
        }
    }

    fn verdict(&self, now: Millis, outcome: &UploadOutcome, n: usize) -> Verdict {
        match outcome {
            UploadOutcome::NetworkError(_) => Verdict::Retry(None),
            UploadOutcome::Response { status, retry_after, body } => match *status {
                // Only the protocol's answer acknowledges. Any other 2xx (an empty body, a
                // captive portal's or a misrouted proxy's page) says nothing was stored: keep
                // the events and retry.
                200..=299 => match IngestResponse::from_json(body) {
                    Some(response) => Verdict::Ack { response, status: *status },
                    None => Verdict::BadAnswer,
                },
                401 => Verdict::AuthPause,
                // Refused for good as a whole (too large, or a permanent 4xx: 400, 403, 404, 415,
                // 422... from the server or a proxy/WAF before it): halve until the culprit is
                // alone, deliver the rest, then drop it and count it. Waiting would not change
                // the answer, and the newer events behind it would be dropped at the queue's cap.
                400..=499 if !matches!(*status, 408 | 409 | 429) && n > 1 => Verdict::Split,
                400..=499 if !matches!(*status, 408 | 409 | 429) => Verdict::Ack {
                    response: IngestResponse {
                        accepted: 0,
                        duplicates: 0,
                        suppressed: 0,
                        rejected: vec![protocol::Rejection { index: 0, reason: error_code(body).0 }],
                    },
                    status: *status,
                },
                // 408, 409, 429, 5xx, anything else: the request may be fine and the server (or
                // a proxy before it) busy or wrong. Nothing is dropped for it; retry with backoff.
                _ => Verdict::Retry(retry_after.as_deref().and_then(|v| parse_retry_after(v, now))),
            },
        }
    }

    fn acknowledge(&mut self, now: Millis, flight: InFlight, response: IngestResponse, status: u16) {
        let n = flight.seqs.len();
        // Distinct in-range indexes (a server could repeat one).
        let mut marked = vec![false; n];
        for r in response.rejected.iter().filter(|r| r.index < n) {
            marked[r.index] = true;
            // Why, for stats(): the last one's reason.
            self.state.stats.note_rejection(status, &r.reason);
        }
        let rejected = marked.iter().filter(|m| **m).count();
        for seq in &flight.seqs {
            let front = self.queue.pop_front();
            debug_assert_eq!(front.map(|e| e.seq), Some(*seq), "in-flight batch must be the queue's prefix");
            self.pending.deletes.push(*seq);
        }
        let stats = &mut self.state.stats;
        stats.delivered += (n - rejected) as u64;
        stats.rejected_by_server += rejected as u64;
        if (200..300).contains(&status) {
            self.state.unreported.subtract(&flight.reported);
        }
        self.state_dirty = true;
        self.retry = None;
        self.not_before = None;
        self.batch_limit = (self.batch_limit * 2).min(self.config.policy.max_batch_events);
        self.flush_deadline = (!self.queue.is_empty()).then(|| now + ms(self.config.policy.flush_interval));
        let (batch_id, r) = (flight.batch_id, rejected);
        log!(self, "batch {batch_id} acknowledged: {} delivered, {r} rejected", n - r);
        // An acknowledgement is committed at once so a crash cannot resend it.
        let _ = self.persist();
    }

    /// The server's clock as the engine knows it: the device's plus the learned offset.
    pub(super) fn server_now(&self, now: Millis) -> Millis {
        now.saturating_add(self.state.clock_offset)
    }

    /// Learns the clock offset from a `stale_timestamp` refusal (`{"error": {"code":
    /// "stale_timestamp", "server_time": ms}}`). True when the offset changed, so signing
    /// again at once can succeed; false for any other answer, or when the offset was already
    /// applied (then the refusal is something else and the usual pause applies).
    pub(super) fn learn_clock(&mut self, now: Millis, body: &[u8]) -> bool {
        let (code, Some(server_time)) = error_code(body) else { return false };
        if code != "stale_timestamp" {
            return false;
        }
        let offset = server_time.saturating_sub(now);
        // Within a second of what is applied: the clock is not the problem.
        if offset.abs_diff(self.state.clock_offset) <= 1000 {
            return false;
        }
        self.state.clock_offset = offset;
        self.state_dirty = true;
        self.retry = None;
        self.not_before = None;
        log!(self, "device clock is {offset} ms off the server's: signing with the server's time");
        true
    }

    pub(super) fn signed_headers(&mut self, now: Millis, body: &[u8]) -> Vec<(String, String)> {
        let ts = self.server_now(now).div_euclid(1000);
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
            (protocol::HEADER_TIMESTAMP.to_owned(), json::i64_text(ts)),
            (protocol::HEADER_SIGNATURE.to_owned(), protocol::sign(self.config.app_secret.as_bytes(), ts, body)),
        ]
    }

    pub(super) fn pause_for_auth(&mut self, now: Millis, _what: Subject) {
        let pause = ms(self.config.policy.auth_pause);
        self.not_before = Some(now + pause);
        self.state.stats.upload_failures += 1;
        self.state_dirty = true;
        log!(self, "{_what}: credentials refused; uploads paused {pause} ms, events kept");
    }

    pub(super) fn schedule_retry(
        &mut self,
        now: Millis,
        retry_after: Option<Duration>,
        _what: Subject,
        _outcome: &UploadOutcome,
    ) {
        let policy = &self.config.policy;
        // Exponential backoff: `retry_base`, then doubling, capped at `retry_cap`.
        let ceiling = match self.retry {
            None => policy.retry_base,
            Some(last) => last.saturating_mul(2).min(policy.retry_cap),
        };
        self.retry = Some(ceiling);
        let ceiling = ms(ceiling);
        // Full jitter: uniformly random in [0, ceiling].
        let jittered = (self.rng.next_u64() % (ceiling as u64 + 1)) as Millis;
        // Retry-After is a floor: the schedule still advances under it.
        let floor = retry_after.map(|d| ms(d.min(policy.max_retry_after))).unwrap_or(0);
        let delay = jittered.max(floor);
        self.not_before = Some(now + delay);
        self.state.stats.upload_failures += 1;
        self.state_dirty = true;
        log!(self, "{_what} failed ({}); retry in {delay} ms", Brief(_outcome));
    }
}

/// The `code` and `server_time` of an answer in the protocol's error shape (`{"error":
/// {"code", "message", "server_time"?}}`); empty and `None` for any other answer (a proxy's or
/// a WAF's page).
pub(super) fn error_code(body: &[u8]) -> (String, Option<i64>) {
    let parsed = core::str::from_utf8(body).ok().and_then(|t| json::parse(t, 4).ok());
    let error = parsed.as_ref().and_then(Value::as_object).and_then(|o| o.get("error")?.as_object());
    (error.and_then(|e| e.field_str("code")).unwrap_or_default(), error.and_then(|e| e.get("server_time")?.as_i64()))
}

/// Whether a stored event is a late advertising id (`advertising_id`).
fn is_advertising_id(event: &[u8]) -> bool {
    const TYPE: &[u8] = b"\"type\":\"advertising_id\"";
    let mut i = 0;
    while i + TYPE.len() <= event.len() {
        if &event[i..i + TYPE.len()] == TYPE {
            return true;
        }
        i += 1;
    }
    false
}

/// Removes what only attribution consent allows to leave the device: `device_id`,
/// `context.campaign`, and the id of a late advertising id event.
fn strip_attribution(event: &[u8]) -> Vec<u8> {
    // serde_json's own limit (128), as before: events the engine wrote nest at most 34 levels.
    let parsed = core::str::from_utf8(event).ok().and_then(|t| json::parse(t, 128).ok());
    match parsed {
        Some(Value::Object(mut map)) => {
            map.remove("device_id");
            if let Some(Value::Object(context)) = map.get_mut("context") {
                context.remove("campaign");
            }
            if map.str("type") == Some("advertising_id")
                && let Some(Value::Object(properties)) = map.get_mut("properties")
            {
                properties.remove("idfa");
                properties.remove("gaid");
            }
            let mut w = json::Writer::with_capacity(event.len());
            w.object(&map);
            w.into_bytes()
        }
        _ => event.to_vec(),
    }
}

/// An upload's outcome in a log line: the status, or the network error (not the body).
struct Brief<'a>(&'a UploadOutcome);

impl core::fmt::Display for Brief<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.0 {
            UploadOutcome::Response { status, .. } => write!(f, "HTTP {status}"),
            UploadOutcome::NetworkError(e) => write!(f, "network error: {e}"),
        }
    }
}

/// What an upload was, for log lines.
#[derive(Debug, Clone, Copy)]
pub(super) enum Subject {
    Batch(u64),
    Install,
}

impl core::fmt::Display for Subject {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Subject::Batch(id) => write!(f, "batch {id}"),
            Subject::Install => f.write_str("install request"),
        }
    }
}

/// Parses a `Retry-After` value: delay seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: Millis) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.bytes().try_fold(0u64, |n, b| n.checked_mul(10)?.checked_add(u64::from(b - b'0')))?;
        return Some(Duration::from_secs(secs));
    }
    #[cfg(feature = "http-date")]
    {
        let date = crate::time::parse_http_date(value)?;
        let delta = date - now;
        Some(Duration::from_millis(delta.max(0) as u64))
    }
    // Without `http-date` (the web build) the page turns an HTTP-date into seconds first.
    #[cfg(not(feature = "http-date"))]
    {
        let _ = now;
        None
    }
}
