//! Postbacks: per-network URL templates filled with macros and sent asynchronously, with
//! retries on backon's exponential schedule (full jitter) and a delivery log.
//!
//! A postback is stored (`postbacks`, status `pending`) in the same request that decided the
//! install, re-engagement or conversion, then handed to the sender task. Every attempt is
//! appended to `postback_attempts`. Pending postbacks are picked up again after a restart.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

use super::{Services, Stop};
use crate::domain::conversions::Followup;
use crate::domain::postbacks::{PostbackConfig, PostbackPolicy, base_values, fill};
use crate::domain::records::{
    ClickParams, ConversionCredit, InstallRecord, PendingPostback, PostbackAttempt, PostbackRecord, Reengagement,
};
use crate::storage::Storage;

/// A postback ready to send.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    pub url: String,
    pub attempts: u32,
    pub app_id: String,
    pub anonymous_id: String,
}

/// Handle of the sender task: where decided postbacks are handed to it.
pub struct Sender {
    tx: mpsc::UnboundedSender<Pending>,
}

/// Longest wait between two tries to load the postbacks a previous run left pending.
const RELOAD_MAX: Duration = Duration::from_secs(60);

/// Starts the sender task. It first queues the postbacks a previous run left pending (retrying
/// the load until it succeeds), then delivers what is dispatched until `stop` fires; then it
/// waits up to the policy's request timeout for deliveries in flight. A postback not delivered
/// by then stays pending in storage and is sent after the next start. A postback that reaches
/// the queue twice (dispatched while the pending ones were loading) is delivered once.
pub fn start(storage: Arc<dyn Storage>, policy: PostbackPolicy, mut stop: Stop) -> (Sender, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
    let client = reqwest::Client::builder()
        .timeout(policy.timeout)
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("trailmark-postbacks/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default();
    let permits = Arc::new(Semaphore::new(policy.concurrency.max(1)));
    let requeue = tx.clone();
    let task = tokio::spawn(async move {
        let mut wait = Duration::from_millis(500);
        loop {
            let loaded = tokio::select! {
                _ = stop.stopped() => return,
                loaded = storage.pending_postbacks() => loaded,
            };
            match loaded {
                Ok(pending) => {
                    for PendingPostback { id, url, attempts, app_id, anonymous_id } in pending {
                        let _ = requeue.send(Pending { id, url, attempts, app_id, anonymous_id });
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "pending postbacks not loaded");
                    tokio::select! {
                        _ = stop.stopped() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(RELOAD_MAX);
                }
            }
        }
        drop(requeue);
        // Ids queued for delivery or being delivered.
        let active: Arc<Mutex<HashSet<i64>>> = Default::default();
        let mut inflight = JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.stopped() => break,
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
                p = rx.recv() => {
                    let Some(p) = p else { break };
                    if !active.lock().unwrap_or_else(|e| e.into_inner()).insert(p.id) {
                        continue;
                    }
                    let permit = tokio::select! {
                        _ = stop.stopped() => break,
                        permit = permits.clone().acquire_owned() => permit,
                    };
                    let Ok(permit) = permit else { break };
                    let (storage, client, policy, active) = (storage.clone(), client.clone(), policy.clone(), active.clone());
                    inflight.spawn(async move {
                        let id = p.id;
                        deliver(&*storage, &client, &policy, p).await;
                        active.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                        drop(permit);
                    });
                }
            }
        }
        let drained =
            tokio::time::timeout(policy.timeout, async { while inflight.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::info!(left = inflight.len(), "postbacks still retrying stay pending until the next start");
            inflight.abort_all();
        }
    });
    (Sender { tx }, task)
}

/// What an attempt's outcome means.
fn retryable(status: Option<u16>) -> bool {
    match status {
        None => true,
        Some(s) => s == 408 || s == 429 || s >= 500,
    }
}

async fn deliver(storage: &dyn Storage, client: &reqwest::Client, policy: &PostbackPolicy, p: Pending) {
    use backon::BackoffBuilder;
    let mut schedule = backon::ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build();
    let mut attempts = p.attempts;
    loop {
        // Delivered elsewhere, failed, or deleted with its user in the meantime: stop.
        if !matches!(storage.postback_pending(p.id).await, Ok(true)) {
            return;
        }
        attempts += 1;
        let started = Instant::now();
        let (status, error) = match client.get(&p.url).send().await {
            Ok(r) => (Some(r.status().as_u16()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let ok = status.is_some_and(|s| (200..300).contains(&s));
        let done = ok || !retryable(status) || attempts >= policy.max_attempts;
        let state = if ok {
            "delivered"
        } else if done {
            "failed"
        } else {
            "pending"
        };
        let attempt = PostbackAttempt {
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
        if let Err(e) = storage.log_postback_attempt(attempt).await {
            tracing::warn!(error = %e, "postback log not written");
        }
        metrics::counter!("trailmark_postback_attempts_total", "outcome" => state).increment(1);
        if done {
            if !ok {
                tracing::warn!(id = p.id, ?status, ?error, attempts, "postback failed");
            }
            return;
        }
        tokio::time::sleep(schedule.next().unwrap_or(policy.max_delay)).await;
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
            let _ = sender.tx.send(Pending {
                id,
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

/// The postbacks of an attributed install, to store in the install's own commit.
pub async fn install(svc: &Services, record: &InstallRecord) -> Vec<PostbackRecord> {
    let r = &record.result;
    let (Some(network), true, false) = (&r.network, r.attributed, r.reinstall) else { return Vec::new() };
    if configs(svc, network, "install").next().is_none() {
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
    if configs(svc, &r.network, "reengagement").next().is_none() {
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
    if configs(svc, &network, &item.event_type).next().is_none() {
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
