//! Postbacks: per-network URL templates filled with macros and sent asynchronously, with
//! retries on backon's exponential schedule (with jitter) and a delivery log.
//!
//! A postback is stored (`postbacks`, status `pending`) in the same request that decided the
//! install, re-engagement or conversion, then handed to its network's queue. Every attempt is
//! appended to `postback_attempts`. Pending postbacks are picked up again after a restart.
//!
//! Each configured network has its own queue and worker: at most `PostbackPolicy::concurrency`
//! requests in flight and `PostbackPolicy::queue` postbacks held in memory. A retry waits in
//! its network's timer list, not in a request slot, so a network that is down (or answers
//! after the timeout) only delays its own postbacks. Past the cap a postback stays `pending` in
//! storage, is counted and logged, and is read again once the network's queue has drained.
//! Postbacks of networks no longer configured (left pending by an earlier run) share one more
//! queue. Redirects are never followed: a 3xx is a final failure. Logs show URLs without their
//! query values ([`redact_url`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::{Services, Stop};
use crate::domain::conversions::{Followup, latest_allows_postbacks};
use crate::domain::postbacks::{PostbackConfig, PostbackPolicy, base_values, fill, redact_url};
use crate::domain::records::{
    ClickParams, ConversionCredit, InstallRecord, PendingPostback, PostbackAttempt, PostbackRecord, Reengagement,
};
use crate::storage::Storage;

/// A postback ready to send.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    /// The network it is for: which queue it waits in.
    pub network: String,
    pub url: String,
    pub attempts: u32,
    pub app_id: String,
    pub anonymous_id: String,
}

impl From<PendingPostback> for Pending {
    fn from(p: PendingPostback) -> Self {
        Pending {
            id: p.id,
            network: p.network,
            url: p.url,
            attempts: p.attempts,
            app_id: p.app_id,
            anonymous_id: p.anonymous_id,
        }
    }
}

/// The name of the queue shared by networks that are not configured.
const OTHER: &str = "(other)";

/// The state one network's queue shares between the sender and its worker.
struct Queue {
    /// The network (lower case), or [`OTHER`].
    name: String,
    /// Postbacks this network holds: handed to the worker and not finished yet.
    held: AtomicUsize,
    cap: usize,
    /// A postback was turned away (or the stored ones were never read): the worker reads
    /// storage again once it has room.
    overflowed: AtomicBool,
}

impl Queue {
    /// Holds one more postback if there is room.
    fn reserve(&self) -> bool {
        let ok =
            self.held.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < self.cap).then_some(n + 1)).is_ok();
        if ok {
            self.gauge();
        } else {
            metrics::counter!("trailmark_postbacks_overflow_total", "network" => self.name.clone()).increment(1);
            if !self.overflowed.swap(true, Ordering::SeqCst) {
                tracing::warn!(
                    network = %self.name,
                    cap = self.cap,
                    "postback queue full: new postbacks stay pending in storage until it drains"
                );
            }
        }
        ok
    }

    fn release(&self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
        self.gauge();
    }

    fn gauge(&self) {
        metrics::gauge!("trailmark_postback_queue", "network" => self.name.clone())
            .set(self.held.load(Ordering::SeqCst) as f64);
    }

    /// Room for a read of the stored postbacks to be worth it.
    fn has_room(&self) -> bool {
        self.held.load(Ordering::SeqCst) <= self.cap / 2
    }
}

/// One network's way in: its channel to the worker (only the sender holds it, so the worker
/// ends when the server's state is dropped) and the shared counters.
struct Lane {
    tx: mpsc::UnboundedSender<Pending>,
    queue: Arc<Queue>,
}

impl Lane {
    /// Hands `p` to the worker if there is room; false when it stays pending in storage only.
    fn push(&self, p: Pending) -> bool {
        if !self.queue.reserve() {
            return false;
        }
        if self.tx.send(p).is_err() {
            // The sender has stopped: the postback stays pending for the next start.
            self.queue.release();
            return false;
        }
        true
    }
}

/// Handle of the sender: where decided postbacks are handed to their network's queue.
pub struct Sender {
    lanes: HashMap<String, Lane>,
    other: Lane,
}

impl Sender {
    /// Queues a stored postback for delivery. False when its network's queue is full (it stays
    /// pending in storage and is read again once the queue drains) or the sender has stopped.
    pub fn send(&self, p: Pending) -> bool {
        self.lanes.get(&p.network.to_ascii_lowercase()).unwrap_or(&self.other).push(p)
    }
}

/// Why the sender could not start.
#[derive(Debug, thiserror::Error)]
#[error("postback HTTP client: {0}")]
pub struct ClientError(#[from] reqwest::Error);

/// The HTTP client of postbacks: the policy's timeout on every request, no redirects followed
/// (the template alone decides where a postback goes).
pub fn client(policy: &PostbackPolicy) -> Result<reqwest::Client, ClientError> {
    Ok(reqwest::Client::builder()
        .timeout(policy.timeout)
        .connect_timeout(policy.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("trailmark-postbacks/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Longest wait between two tries to read the pending postbacks from storage.
const RELOAD_MAX: Duration = Duration::from_secs(60);

/// Starts the sender (with a [`client`]): one worker per configured network and one for the
/// others. Each worker first reads its network's pending postbacks (a previous run left them;
/// the read is retried until it succeeds), then delivers what is queued until `stop` fires;
/// then it gives the requests in flight up to the policy's timeout. A postback not delivered by then stays
/// pending in storage and is sent after the next start. A postback that reaches a queue twice
/// (dispatched while the pending ones were being read) is delivered once.
pub fn start(
    storage: Arc<dyn Storage>,
    client: reqwest::Client,
    policy: PostbackPolicy,
    networks: &[PostbackConfig],
    stop: Stop,
) -> (Sender, JoinHandle<()>) {
    let mut names: Vec<String> = networks.iter().map(|c| c.network.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    let configured: Arc<HashSet<String>> = Arc::new(names.iter().cloned().collect());
    let mut workers = JoinSet::new();
    let mut open = |name: String| {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(Queue {
            name,
            held: AtomicUsize::new(0),
            cap: policy.queue.max(1),
            overflowed: AtomicBool::new(true),
        });
        let worker = Worker {
            queue: queue.clone(),
            storage: storage.clone(),
            client: client.clone(),
            policy: policy.clone(),
            configured: configured.clone(),
        };
        workers.spawn(worker.run(rx, stop.clone()));
        Lane { tx, queue }
    };
    let lanes = names.iter().map(|n| (n.clone(), open(n.clone()))).collect();
    let other = open(OTHER.to_owned());
    let task = tokio::spawn(async move { while workers.join_next().await.is_some() {} });
    (Sender { lanes, other }, task)
}

/// A postback in a worker's hands.
struct Item {
    p: Pending,
    schedule: backon::ExponentialBackoff,
}

/// What one attempt came to.
enum Outcome {
    /// Delivered, failed for good, or no longer pending (deleted with its user, sent by another
    /// instance): it leaves the queue.
    Done,
    /// Try again after the next delay of its schedule.
    Retry,
}

struct Worker {
    queue: Arc<Queue>,
    storage: Arc<dyn Storage>,
    client: reqwest::Client,
    policy: PostbackPolicy,
    /// Lower-case names of the configured networks (the [`OTHER`] worker takes the rest).
    configured: Arc<HashSet<String>>,
}

impl Worker {
    fn item(&self, p: Pending) -> Item {
        use backon::BackoffBuilder;
        let schedule = backon::ExponentialBuilder::default()
            .with_min_delay(self.policy.min_delay)
            .with_max_delay(self.policy.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        Item { p, schedule }
    }

    fn mine(&self, network: &str) -> bool {
        let network = network.to_ascii_lowercase();
        if self.queue.name == OTHER { !self.configured.contains(&network) } else { network == self.queue.name }
    }

    async fn run(self, mut rx: mpsc::UnboundedReceiver<Pending>, mut stop: Stop) {
        let mut ready: VecDeque<Item> = VecDeque::new();
        // Retries by due time (and a sequence number, so equal times do not collide).
        let mut waiting: BTreeMap<(tokio::time::Instant, u64), Item> = BTreeMap::new();
        let mut seq = 0u64;
        let mut inflight: JoinSet<(Item, Outcome)> = JoinSet::new();
        // Ids queued, waiting or in flight here.
        let mut active: HashSet<i64> = HashSet::new();
        let mut reload_wait = Duration::from_millis(500);
        loop {
            while inflight.len() < self.policy.concurrency.max(1) {
                let Some(item) = ready.pop_front() else { break };
                let (storage, client, policy) = (self.storage.clone(), self.client.clone(), self.policy.clone());
                inflight.spawn(async move {
                    let mut item = item;
                    let outcome = attempt(&*storage, &client, &policy, &mut item.p).await;
                    (item, outcome)
                });
            }
            // Stored postbacks that never made it into the queue (left by an earlier run, or
            // turned away when it was full) are read once the queue has caught up and has room.
            if ready.is_empty() && self.queue.has_room() && self.queue.overflowed.swap(false, Ordering::SeqCst) {
                let loaded = tokio::select! {
                    _ = stop.stopped() => break,
                    loaded = self.storage.pending_postbacks() => loaded,
                };
                match loaded {
                    Ok(pending) => {
                        reload_wait = Duration::from_millis(500);
                        for p in pending.into_iter().filter(|p| self.mine(&p.network)) {
                            if active.contains(&p.id) {
                                continue;
                            }
                            if !self.queue.reserve() {
                                break;
                            }
                            active.insert(p.id);
                            ready.push_back(self.item(p.into()));
                        }
                    }
                    Err(e) => {
                        let retry_in_ms = reload_wait.as_millis() as u64;
                        let network = &self.queue.name;
                        tracing::warn!(%network, error = %e, retry_in_ms, "pending postbacks not loaded");
                        self.queue.overflowed.store(true, Ordering::SeqCst);
                        tokio::select! {
                            _ = stop.stopped() => break,
                            _ = tokio::time::sleep(reload_wait) => {}
                        }
                        reload_wait = (reload_wait * 2).min(RELOAD_MAX);
                    }
                }
                continue;
            }
            let next_due = waiting.first_key_value().map(|(k, _)| k.0);
            let due = tokio::time::sleep_until(next_due.unwrap_or_else(tokio::time::Instant::now));
            tokio::select! {
                _ = stop.stopped() => break,
                Some(joined) = inflight.join_next(), if !inflight.is_empty() => match joined {
                    Ok((mut item, Outcome::Retry)) => {
                        let delay = item.schedule.next().unwrap_or(self.policy.max_delay);
                        seq += 1;
                        waiting.insert((tokio::time::Instant::now() + delay, seq), item);
                    }
                    Ok((item, Outcome::Done)) => {
                        active.remove(&item.p.id);
                        self.queue.release();
                    }
                    Err(e) => {
                        // Not expected (an attempt does not panic); the postback stays pending
                        // in storage for the next start.
                        tracing::error!(network = %self.queue.name, error = %e, "postback delivery task failed");
                        self.queue.release();
                    }
                },
                p = rx.recv() => {
                    let Some(p) = p else { break };
                    if active.insert(p.id) {
                        ready.push_back(self.item(p));
                    } else {
                        self.queue.release();
                    }
                }
                _ = due, if next_due.is_some() => {
                    let now = tokio::time::Instant::now();
                    while let Some(entry) = waiting.first_entry() {
                        if entry.key().0 > now {
                            break;
                        }
                        ready.push_back(entry.remove());
                    }
                }
            }
        }
        let drained =
            tokio::time::timeout(self.policy.timeout, async { while inflight.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            let left = inflight.len();
            tracing::info!(network = %self.queue.name, left, "postbacks in flight stay pending until the next start");
            inflight.abort_all();
        }
    }
}

/// What an answer means: `Ok(true)` delivered, `Ok(false)` retry, `Err(why)` failed for good.
fn verdict(status: Option<u16>) -> Result<bool, &'static str> {
    match status {
        Some(200..=299) => Ok(true),
        // Not followed: where a postback goes is the template's, never the network's answer's.
        Some(300..=399) => Err("redirect not followed"),
        None | Some(408) | Some(429) | Some(500..) => Ok(false),
        Some(_) => Err("refused"),
    }
}

/// A request's error with its causes, without the URL (errors are stored and logged, and a
/// postback URL's query holds identifiers).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// One delivery attempt of `p` (counted in `p.attempts`), logged.
async fn attempt(storage: &dyn Storage, client: &reqwest::Client, policy: &PostbackPolicy, p: &mut Pending) -> Outcome {
    // Delivered elsewhere, failed, or deleted with its user in the meantime: stop. A store
    // that cannot answer now is asked again later.
    match storage.postback_pending(p.id).await {
        Ok(true) => {}
        Ok(false) => return Outcome::Done,
        Err(e) => {
            tracing::warn!(id = p.id, error = %e, "postback state not read; retrying later");
            return Outcome::Retry;
        }
    }
    // The person opted out (do-not-sell, attribution denied) after the postback was made:
    // it is not sent (the latest state the server knows decides).
    match storage.latest_context(p.app_id.clone(), p.anonymous_id.clone(), None).await {
        Ok(contexts) if !latest_allows_postbacks(&contexts) => {
            let record = PostbackAttempt {
                postback_id: p.id,
                app_id: p.app_id.clone(),
                anonymous_id: p.anonymous_id.clone(),
                attempt: p.attempts,
                status: None,
                error: Some("withheld: the person's latest consent is do-not-sell or attribution denied".into()),
                duration_ms: 0,
                at: crate::domain::config::now_ms(),
                state: "withheld".into(),
            };
            if let Err(e) = storage.log_postback_attempt(record).await {
                tracing::warn!(error = %e, "postback log not written");
            }
            metrics::counter!("trailmark_postbacks_withheld_total", "reason" => "consent").increment(1);
            return Outcome::Done;
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(id = p.id, error = %e, "consent state not read; retrying later");
            return Outcome::Retry;
        }
    }
    p.attempts += 1;
    let attempts = p.attempts;
    let started = Instant::now();
    let (status, mut error) = match client.get(&p.url).send().await {
        Ok(r) => (Some(r.status().as_u16()), None),
        Err(e) if e.is_timeout() => (None, Some(format!("no answer within {:?}", policy.timeout))),
        Err(e) => (None, Some(describe(e))),
    };
    let verdict = verdict(status);
    if let Err(why) = verdict {
        error.get_or_insert_with(|| why.to_owned());
    }
    let ok = verdict == Ok(true);
    let done = verdict.is_err() || ok || attempts >= policy.max_attempts;
    let state = if ok {
        "delivered"
    } else if done {
        "failed"
    } else {
        "pending"
    };
    let record = PostbackAttempt {
        postback_id: p.id,
        app_id: p.app_id.clone(),
        anonymous_id: p.anonymous_id.clone(),
        attempt: attempts,
        status,
        error: error.clone(),
        duration_ms: started.elapsed().as_millis() as i64,
        at: crate::domain::config::now_ms(),
        state: state.into(),
    };
    if let Err(e) = storage.log_postback_attempt(record).await {
        tracing::warn!(error = %e, "postback log not written");
    }
    metrics::counter!("trailmark_postback_attempts_total", "outcome" => state).increment(1);
    if done {
        if !ok {
            let url = redact_url(&p.url);
            tracing::warn!(id = p.id, network = %p.network, %url, ?status, ?error, attempts, "postback failed");
        }
        Outcome::Done
    } else {
        Outcome::Retry
    }
}

fn configs<'a>(svc: &'a Services, network: &str, event: &str) -> impl Iterator<Item = &'a PostbackConfig> + 'a {
    let network = network.to_ascii_lowercase();
    let event = event.to_owned();
    svc.config
        .postbacks
        .iter()
        .filter(move |c| c.network.eq_ignore_ascii_case(&network) && (c.events.is_empty() || c.events.contains(&event)))
}

/// Macro values of a click (network click id, sub-parameters), read from storage.
async fn click_values(svc: &Services, click_id: Option<&str>, values: &mut BTreeMap<&'static str, String>) {
    let Some(id) = click_id else { return };
    values.insert("click_id", id.to_owned());
    if let Ok(Some(ClickParams { network_ids: ids, sub_params: subs })) = svc.storage.click_params(id.to_owned()).await
    {
        const PREFERRED: &[&str] = &["clickid", "click_id", "gclid", "fbclid", "ttclid", "msclkid"];
        if let Some(v) = PREFERRED.iter().find_map(|k| ids.get(*k).and_then(|v| v.as_str())) {
            values.insert("network_click_id", v.to_owned());
        }
        for name in ["sub1", "sub2", "sub3", "sub4", "sub5"] {
            if let Some(v) = subs.get(name).and_then(|v| v.as_str()) {
                values.insert(name, v.to_owned());
            }
        }
    }
}

/// The postback rows `values` produce for the network's templates that want `event`.
fn records(
    svc: &Services,
    network: &str,
    event: &str,
    values: &BTreeMap<&'static str, String>,
    who: (&str, &str),
) -> Vec<PostbackRecord> {
    configs(svc, network, event)
        .map(|config| PostbackRecord {
            app_id: who.0.to_owned(),
            anonymous_id: who.1.to_owned(),
            event_id: values.get("event_id").cloned().unwrap_or_default(),
            network: config.network.clone(),
            event: event.to_owned(),
            url: fill(&config.url, values),
            created_at: svc.config.clock.now(),
        })
        .collect()
}

/// Hands stored postbacks (`ids[i]` is the row of `records[i]`) to the sender task.
pub fn dispatch(svc: &Services, records: &[PostbackRecord], ids: &[i64]) {
    for (record, &id) in records.iter().zip(ids) {
        metrics::counter!("trailmark_postbacks_total", "event" => record.event.clone()).increment(1);
        if let Some(sender) = svc.postback_sender.get() {
            sender.send(Pending {
                id,
                network: record.network.clone(),
                url: record.url.clone(),
                attempts: 0,
                app_id: record.app_id.clone(),
                anonymous_id: record.anonymous_id.clone(),
            });
        }
    }
}

/// Stores postbacks in a commit of their own and sends them.
async fn enqueue(svc: &Services, records: Vec<PostbackRecord>) {
    for record in records {
        match svc.storage.save_postback(record.clone()).await {
            Ok(id) => dispatch(svc, std::slice::from_ref(&record), &[id]),
            Err(e) => tracing::warn!(error = %e, "postback not stored"),
        }
    }
}

/// Whether the latest consent the server knows for the device (or user) lets a postback be
/// made. A store that cannot answer now does not stop it: the sender asks again before
/// every attempt.
async fn latest_allows(svc: &Services, app_id: &str, anonymous_id: &str, user_id: Option<&str>) -> bool {
    let context =
        svc.storage.latest_context(app_id.to_owned(), anonymous_id.to_owned(), user_id.map(str::to_owned)).await;
    match context {
        Ok(contexts) if !latest_allows_postbacks(&contexts) => {
            metrics::counter!("trailmark_postbacks_withheld_total", "reason" => "consent").increment(1);
            false
        }
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "consent state not read; the sender checks it again");
            true
        }
    }
}

/// The postbacks of an attributed install, to store in the install's own commit.
pub async fn install(svc: &Services, record: &InstallRecord) -> Vec<PostbackRecord> {
    let r = &record.result;
    let (Some(network), true, false) = (&r.network, r.attributed, r.reinstall) else { return Vec::new() };
    if configs(svc, network, "install").next().is_none()
        || !latest_allows(svc, &record.app_id, &record.anonymous_id, None).await
    {
        return Vec::new();
    }
    let mut values = base_values(&record.app_id, "install", &record.event_id, record.install_ts);
    values.insert("install_ts", (record.install_ts / 1000).to_string());
    values.insert("platform", record.platform.clone());
    values.insert("match_type", r.match_type.as_str().to_owned());
    values.insert("network", network.clone());
    for (k, v) in [("campaign_id", &r.campaign_id), ("link_id", &r.link_id)] {
        if let Some(v) = v {
            values.insert(k, v.clone());
        }
    }
    click_values(svc, r.click_id.as_deref(), &mut values).await;
    records(svc, network, "install", &values, (&record.app_id, &record.anonymous_id))
}

/// Postbacks of a re-engagement.
pub async fn reengagement(svc: &Services, r: &Reengagement) {
    if configs(svc, &r.network, "reengagement").next().is_none()
        || !latest_allows(svc, &r.app_id, &r.anonymous_id, None).await
    {
        return;
    }
    let mut values = base_values(&r.app_id, "reengagement", &r.event_id, r.open_ts);
    values.insert("network", r.network.clone());
    values.insert("campaign_id", r.campaign_id.clone());
    values.insert("link_id", r.link_id.clone());
    click_values(svc, Some(&r.click_id), &mut values).await;
    enqueue(svc, records(svc, &r.network, "reengagement", &values, (&r.app_id, &r.anonymous_id))).await;
}

/// Postbacks of a conversion, to the network of its last touch.
pub async fn conversion(svc: &Services, item: &Followup, rows: &[ConversionCredit]) {
    let Some(last) = rows.iter().find(|r| r.model == "last_touch" && r.network.is_some()) else { return };
    let network = last.network.clone().unwrap_or_default();
    if configs(svc, &network, &item.event_type).next().is_none()
        || !latest_allows(svc, &last.app_id, &item.anonymous_id, item.user_id.as_deref()).await
    {
        return;
    }
    let mut values = base_values(&last.app_id, &item.event_type, &item.event_id, item.ts);
    values.insert("network", network.clone());
    for (k, v) in [("campaign_id", &last.campaign_id), ("link_id", &last.link_id), ("currency", &item.currency)] {
        if let Some(v) = v {
            values.insert(k, v.clone());
        }
    }
    // Revenue only from senders whose secret is not public (server apps, an app's server
    // secret) or apps that opted in: otherwise anyone could report any revenue for any click id
    // to the network.
    if let Some(rev) = item.revenue.filter(|_| item.revenue_trusted) {
        values.insert("revenue", rev.to_string());
    } else {
        values.remove("currency");
    }
    click_values(svc, last.click_id.as_deref(), &mut values).await;
    enqueue(svc, records(svc, &network, &item.event_type, &values, (&last.app_id, &item.anonymous_id))).await;
}
