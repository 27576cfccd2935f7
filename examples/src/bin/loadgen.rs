//! Load generator for docs/BENCHMARKS.md:
//! `cargo run --release -p trailmark-examples --bin loadgen [-- --seconds 10 --concurrency 32]`
//!
//! In one process it starts the reference server (SQLite, fsync on every group commit, every
//! check on) and a plain axum hello-world. It then drives three workloads for the same time and
//! concurrency: batched ingest (500 events per request), single-event ingest, and hello-world
//! GETs; then click redirects through a tracking link, and install attribution with `--cached`
//! clicks in the index. Every ingest request is signed with HMAC at send time, as an SDK would sign it. Bodies
//! are built before the clock starts, so the client spends its CPU on HTTP and signing.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;
use trailmark_core::protocol;
use trailmark_examples::{ServerArgs, start};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
struct Args {
    /// Seconds per workload.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Run only this workload: batched (with the report timings), single, hello, clicks,
    /// installs, or one not part of the default run: segment (Segment batches with a write key)
    /// or refresh.
    #[arg(long)]
    only: Option<String>,
    /// Clicks put in the attribution index before the installs workload.
    #[arg(long, default_value_t = 1_000_000)]
    cached: u64,
    /// Server durability: full (default) or normal.
    #[arg(long, default_value = "full")]
    sync: String,
    /// Store in PostgreSQL (a fresh schema) instead of SQLite.
    #[arg(long)]
    postgres: Option<String>,
    /// Match installs against a Redis click cache (filled with `--cached` clicks).
    #[arg(long)]
    redis: Option<String>,
    /// `--only refresh`: events per run, spread over `--refresh-devices` devices (each run of
    /// the refresh workload is done once with 1 device and once with this many).
    #[arg(long, default_value_t = 100_000)]
    refresh_events: usize,
    #[arg(long, default_value_t = 100)]
    refresh_devices: usize,
    /// Events of the batched and single workloads carry a `user_id` and a `device_id` (as a
    /// signed-in app's events with attribution consent do).
    #[arg(long)]
    ids: bool,
    /// Event ids of the batched and single workloads: v7 (time-ordered, what the SDKs send;
    /// ADR 0023) or v4 (random, what Segment's libraries send).
    #[arg(long, default_value = "v7")]
    event_ids: String,
    /// Spread the events' times (and so their v7 ids) over this many seconds before their
    /// batch was made, as events queued on devices between uploads are.
    #[arg(long, default_value_t = 0.0)]
    spread_secs: f64,
    /// `--only clickhouse`: the ClickHouse HTTP interface (reports there; issue 23).
    #[arg(long)]
    clickhouse: Option<String>,
    /// `--only clickhouse`: events stored before the report timings, over `--olap-days` days.
    #[arg(long, default_value_t = 10_000_000)]
    olap_events: usize,
    #[arg(long, default_value_t = 60)]
    olap_days: i64,
    /// Seconds between the server's scheduled report refreshes (its default: 10). A refresh
    /// shares the one SQLite writer with ingest. The scheduler looks at most once a minute
    /// (its first look, at the start, finds nothing to do), so any value above 60 keeps
    /// refreshes out of a workload that ends within a minute of the server's start; the report
    /// timings after the batched run still load everything.
    #[arg(long)]
    refresh_secs: Option<f64>,
}

const APP: &str = "bench";
const SECRET: &str = "bench-secret";
/// The app's write key for the Segment-compatible API (`--only segment`).
const WRITE_KEY: &str = "bench-write-key-0001";

/// How the batched and single workloads' events are made.
#[derive(Clone, Copy)]
struct Shape {
    /// A user id and a device id on each event.
    ids: bool,
    /// Version 7 event ids carrying the event's time, as the SDKs make them (ADR 0023);
    /// otherwise random version 4 ids, as Segment's libraries make their message ids.
    v7: bool,
    /// Each event's time is up to this many milliseconds before its batch was made (an SDK
    /// sends what it queued since its last upload).
    spread_ms: i64,
}

/// One event as JSON text (built with `format!`, so preparing the bodies stays cheap).
fn event(i: u64, now_ms: i64, shape: Shape) -> String {
    let at = now_ms - if shape.spread_ms > 0 { rand::random_range(0..=shape.spread_ms) } else { 0 };
    let id = if shape.v7 {
        let t = uuid::Timestamp::from_unix(uuid::NoContext, (at / 1000) as u64, (at % 1000) as u32 * 1_000_000);
        uuid::Uuid::new_v7(t)
    } else {
        uuid::Uuid::new_v4()
    };
    let text = format!(
        concat!(
            r#"{{"event_id":"{}","type":"add_to_cart","timestamp":"{}","anonymous_id":"anon-{}","session_id":"s-1","#,
            r#""properties":{{"sku":"SKU-{}","price":19.99,"currency":"EUR","quantity":1}},"#,
            r#""context":{{"app":{{"id":"com.example","version":"1.0"}},"device":{{"os":"iOS","os_version":"18.1","model":"iPhone15,2"}},"#,
            r#""sdk":{{"name":"trailmark-swift","version":"0.1.0"}}}}}}"#
        ),
        id,
        protocol::format_millis(at),
        i % 5000,
        i % 1000
    );
    if !shape.ids {
        return text;
    }
    let n = i % 5000;
    format!(r#"{{"user_id":"user-{n}","device_id":"5D1E0C{n:06X}-8246-4BA4-AE5B-76104861E7DC",{}"#, &text[1..])
}

/// One Segment `track` message carrying what [`event`] does.
fn segment_message(i: u64, ts: &str) -> String {
    format!(
        concat!(
            r#"{{"type":"track","messageId":"{}","event":"Product Added","timestamp":"{}","anonymousId":"anon-{}","#,
            r#""properties":{{"sku":"SKU-{}","price":19.99,"currency":"EUR","quantity":1}},"#,
            r#""context":{{"app":{{"namespace":"com.example","version":"1.0"}},"os":{{"name":"iOS","version":"18.1"}},"#,
            r#""device":{{"model":"iPhone15,2"}},"library":{{"name":"analytics-swift","version":"1.5.0"}}}}}}"#
        ),
        uuid::Uuid::new_v4(),
        ts,
        i % 5000,
        i % 1000
    )
}

struct Result {
    requests: u64,
    items: u64,
    errors: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

/// Runs `concurrency` loops for `seconds`; each loop takes bodies from `bodies` (if any) and
/// sends them with `send`, which returns the number of items the answer confirmed.
async fn drive<F, Fut>(args: &Args, bodies: Arc<Vec<Vec<u8>>>, send: F) -> Result
where
    F: Fn(Option<Vec<u8>>) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Option<u64>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (send, bodies, next) = (send.clone(), bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let (mut requests, mut items, mut errors, mut lat) = (0u64, 0u64, 0u64, Vec::new());
            while Instant::now() < deadline {
                let body = if bodies.is_empty() {
                    None
                } else {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    match bodies.get(i) {
                        Some(b) => Some(b.clone()),
                        None => break,
                    }
                };
                let t = Instant::now();
                match send(body).await {
                    Some(n) => {
                        items += n;
                        requests += 1;
                        lat.push(t.elapsed());
                    }
                    None => errors += 1,
                }
            }
            (requests, items, errors, lat)
        }));
    }
    let mut r = Result { requests: 0, items: 0, errors: 0, latencies: Vec::new(), elapsed: Duration::ZERO };
    for t in tasks {
        let (req, items, errors, lat) = t.await.unwrap();
        r.requests += req;
        r.items += items;
        r.errors += errors;
        r.latencies.extend(lat);
    }
    r.elapsed = started.elapsed();
    r.latencies.sort();
    r
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

/// Prints a workload's figures for people, then one line for scripts comparing runs:
/// `loadgen: workload=<name> rate=<items per second> p50_ms=<x> p99_ms=<y>` (issue 24).
fn report(name: &str, workload: &str, unit: &str, r: &Result) {
    let secs = r.elapsed.as_secs_f64();
    let (rate, p50, p99) = (r.items as f64 / secs, pct(&r.latencies, 0.5), pct(&r.latencies, 0.99));
    println!(
        "{name:<34} {rate:>10.0} {unit}/s  {:>8.0} req/s  p50 {p50:>8.2?}  p99 {p99:>8.2?}  errors {}",
        r.requests as f64 / secs,
        r.errors
    );
    println!("{}", summary_line(workload, rate, p50, p99));
}

fn summary_line(workload: &str, rate: f64, p50: Duration, p99: Duration) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!("loadgen: workload={workload} rate={rate:.0} p50_ms={:.3} p99_ms={:.3}", ms(p50), ms(p99))
}

async fn signed_post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Option<u64> {
    signed_request(client, url, body).await?["accepted"].as_u64()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if args.only.as_deref() == Some("refresh") {
        refresh_bench(&args).await;
        return;
    }
    if args.only.as_deref() == Some("clickhouse") {
        olap_bench(&args).await;
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server_args = ServerArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        db: Some(dir.path().join("bench.db")),
        apps: vec![format!("{APP}:{SECRET}")],
        ip_rate: Some(1_000_000),
        app_rate: Some(1_000_000),
        write_keys: vec![format!("{APP}={WRITE_KEY}")],
        write_key_rate: Some(1_000_000),
        sync: Some(args.sync.clone()),
        admin_key: Some("bench-admin-key-0001".into()),
        postgres: args.postgres.clone(),
        postgres_schema: args.postgres.as_ref().map(|_| format!("bench_{}", uuid::Uuid::new_v4().simple())),
        redis: args.redis.clone(),
        keys: Some(dir.path().join("bench.keys")),
        ..Default::default()
    };
    let mut settings = server_args.settings().unwrap();
    settings.reports.refresh_interval_secs = args.refresh_secs.or(settings.reports.refresh_interval_secs);
    let running = start(&settings).await.unwrap();
    let ingest = format!("http://{}/v1/event", running.addr);

    let hello = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hello_url = format!("http://{}/", hello.local_addr().unwrap());
    tokio::spawn(async move {
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hello, world" }));
        axum::serve(hello, app).await.unwrap();
    });

    println!(
        "machine: {} logical CPUs; {} s per workload, {} requests in flight; server and client share the machine; store: {}; click index: {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        args.seconds,
        args.concurrency,
        if args.postgres.is_some() { "PostgreSQL" } else { "SQLite" },
        if args.redis.is_some() { "Redis" } else { "in process" },
    );
    let client = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build().unwrap();

    let run = |name: &str| args.only.as_deref().is_none_or(|o| o == name);
    let shape = Shape {
        ids: args.ids,
        v7: match args.event_ids.as_str() {
            "v7" => true,
            "v4" => false,
            other => panic!("--event-ids {other}: v7 or v4"),
        },
        spread_ms: (args.spread_secs * 1000.0) as i64,
    };
    let mut single_rps = 0.0;
    if run("batched") {
        // Enough unique batches for up to 100k events/s; if they run out first, the rate is still
        // events over the time it took.
        let batches: Vec<Vec<u8>> = (0..(args.seconds * 200))
            .map(|b| {
                let now = trailmark_server::now_ms();
                let ts = protocol::format_millis(now);
                let events: Vec<String> = (0..500).map(|i| event(b * 500 + i, now, shape)).collect();
                format!(r#"{{"sent_at":"{ts}","batch":[{}]}}"#, events.join(",")).into_bytes()
            })
            .collect();
        let size = batches[0].len();
        let (c, u) = (client.clone(), ingest.clone());
        let r = drive(&args, Arc::new(batches), move |body| {
            let (c, u) = (c.clone(), u.clone());
            async move { signed_post(&c, &u, body.unwrap()).await }
        })
        .await;
        report(&format!("batched ingest (500 ev, {} KB)", size / 1024), "batched", "events", &r);
        {
            // The star schema is refreshed by the scheduler every 10 s while ingest runs; a
            // report first takes whatever is still pending, then queries.
            let base = format!("http://{}", running.addr);
            for (name, path) in [
                ("funnel report (first: ETL backlog)", "/v1/reports/funnel?steps=add_to_cart,add_to_cart"),
                ("funnel report (again)", "/v1/reports/funnel?steps=add_to_cart,add_to_cart"),
                ("campaign report", "/v1/reports/campaigns"),
                ("retention report (30 cohorts)", "/v1/reports/retention"),
            ] {
                let t = std::time::Instant::now();
                let resp =
                    client.get(format!("{base}{path}")).bearer_auth("bench-admin-key-0001").send().await.unwrap();
                let status = resp.status();
                let _ = resp.bytes().await;
                println!("{name:<34} {:>10.2?}  ({status}) over {} stored events", t.elapsed(), r.items);
            }
        }
    }
    if run("single") {
        let now = trailmark_server::now_ms();
        // One event per request: each a 15th of a millisecond after the one before (the
        // prepared rate), so v7 ids come in the order sent rather than all in one millisecond.
        let singles: Vec<Vec<u8>> =
            (0..(args.seconds * 15_000)).map(|i| event(i, now + (i / 15) as i64, shape).into_bytes()).collect();
        let (c, u) = (client.clone(), ingest.clone());
        let r = drive(&args, Arc::new(singles), move |body| {
            let (c, u) = (c.clone(), u.clone());
            async move { signed_post(&c, &u, body.unwrap()).await }
        })
        .await;
        report("single-event ingest", "single", "events", &r);
        single_rps = r.requests as f64 / r.elapsed.as_secs_f64();
    }
    if args.only.as_deref() == Some("segment") {
        // The batched workload's events as Segment messages (500 per batch, the same properties
        // and context), posted with the write key to /v1/batch.
        let batches: Vec<Vec<u8>> = (0..(args.seconds * 200))
            .map(|b| {
                let ts = protocol::format_millis(trailmark_server::now_ms());
                let messages: Vec<String> = (0..500).map(|i| segment_message(b * 500 + i, &ts)).collect();
                format!(r#"{{"sentAt":"{ts}","batch":[{}]}}"#, messages.join(",")).into_bytes()
            })
            .collect();
        let size = batches[0].len();
        let (c, u) = (client.clone(), format!("http://{}/v1/batch", running.addr));
        let r = drive(&args, Arc::new(batches), move |body| {
            let (c, u) = (c.clone(), u.clone());
            async move {
                let resp = c.post(&u).basic_auth(WRITE_KEY, Some("")).body(body.unwrap()).send().await.ok()?;
                resp.json::<Value>().await.ok()?["accepted"].as_u64()
            }
        })
        .await;
        report(&format!("segment batches (500 msg, {} KB)", size / 1024), "segment", "events", &r);
    }
    if run("hello") {
        let (c, u) = (client.clone(), hello_url.clone());
        let r = drive(&args, Arc::new(Vec::new()), move |_| {
            let (c, u) = (c.clone(), u.clone());
            async move {
                let resp = c.get(&u).send().await.ok()?;
                resp.bytes().await.ok().map(|_| 1)
            }
        })
        .await;
        report("axum hello-world GET", "hello", "resp", &r);
        let hello_rps = r.requests as f64 / r.elapsed.as_secs_f64();
        if single_rps > 0.0 {
            println!("single-event ingest = {:.0} % of hello-world requests/s", 100.0 * single_rps / hello_rps);
        }
    }
    if run("clicks") || run("installs") {
        let base = format!("http://{}", running.addr);
        let (link_id, code) = make_link(&client, &base).await;
        if run("clicks") {
            let no_redirects = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(args.concurrency)
                .build()
                .unwrap();
            let url = format!("{base}/c/{code}?gaid=38400000-8cf0-11bd-b23e-10b96e40000d&sub1=bench");
            let r = drive(&args, Arc::new(Vec::new()), move |_| {
                let (c, u) = (no_redirects.clone(), url.clone());
                async move {
                    let resp = c.get(&u).header("User-Agent", ANDROID_UA).send().await.ok()?;
                    (resp.status() == 302).then_some(1)
                }
            })
            .await;
            report("click redirects /c/<code>", "clicks", "clicks", &r);
        }
        if run("installs") {
            let started = Instant::now();
            match &running.state.clicks {
                trailmark_server::service::clicks::Clicks::Shared(cache) => {
                    fill_cache(cache.clone(), running.state.services.clone(), &link_id, args.cached).await
                }
                trailmark_server::service::clicks::Clicks::Local => fill_index(&running.state, &link_id, args.cached),
            }
            println!("{} clicks cached in {:.1} s", args.cached, started.elapsed().as_secs_f64());
            let bodies: Vec<Vec<u8>> = (0..(args.seconds * 20_000))
                .map(|i| {
                    let device = (i * 7_919) % args.cached.max(1);
                    format!(
                        r#"{{"event_id":"{}","anonymous_id":"anon-{i}","timestamp":"{}","platform":"android","device":{{"gaid":"gaid-{device}","os":"Android","os_version":"14","model":"Pixel 8","locale":"en-US"}}}}"#,
                        uuid::Uuid::new_v4(),
                        protocol::format_millis(trailmark_server::now_ms())
                    )
                    .into_bytes()
                })
                .collect();
            let (c, u) = (client.clone(), format!("{base}/v1/install"));
            let r = drive(&args, Arc::new(bodies), move |body| {
                let (c, u) = (c.clone(), u.clone());
                async move {
                    let answer = signed_request(&c, &u, body.unwrap()).await?;
                    (answer["match_type"] == "device_id").then_some(1)
                }
            })
            .await;
            report(&format!("installs, {} clicks cached", args.cached), "installs", "installs", &r);
        }
    }
    running.handle.shutdown();
}

const ANDROID_UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A.240205.004) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";

/// A campaign and a link through the admin API: `(link_id, code)`.
async fn make_link(client: &reqwest::Client, base: &str) -> (String, String) {
    let post = |path: &str, body: Value| {
        client.post(format!("{base}{path}")).bearer_auth("bench-admin-key-0001").json(&body).send()
    };
    let campaign: Value = post("/v1/campaigns", serde_json::json!({"name": "bench", "network": "benchnet"}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let link: Value = post(
        "/v1/links",
        serde_json::json!({"campaign_id": campaign["campaign_id"], "utm": {"source": "benchnet"},
            "destinations": {"android": "https://play.google.com/store/apps/details?id=com.example",
                "ios": "https://apps.apple.com/app/id1", "web": "https://example.com/"}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    (link["link_id"].as_str().unwrap().to_owned(), link["code"].as_str().unwrap().to_owned())
}

/// Puts `n` synthetic clicks (each with advertising id `gaid-<i>` in its stored form — a keyed
/// hash, as the click path stores it — spread over the last six days) straight into the
/// server's index, as a restart would load them from storage.
fn fill_index(state: &trailmark_server::AppState, link_id: &str, n: u64) {
    use trailmark_server::domain::attribution::{DAY, Touch, TouchKind};
    let ids = &state.ids;
    let mut tracking = state.tracking.lock().unwrap();
    let link = tracking.by_id[link_id];
    let now = trailmark_server::now_ms();
    for i in 0..n {
        let ts = now - 6 * DAY + (i as i128 * 6 * DAY as i128 / n.max(1) as i128) as i64;
        let mut t = Touch::new(uuid::Uuid::new_v4(), TouchKind::Click, ts, link);
        t.device = tracking.index.hasher.device(ids.device(&format!("gaid-{i}")).as_deref());
        t.set_ip(Some(std::net::IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8])));
        tracking.index.push(t);
    }
}

/// The same clicks as [`fill_index`], written to the shared click cache (32 writers).
async fn fill_cache(
    cache: Arc<dyn trailmark_server::clickcache::ClickCache>,
    svc: Arc<trailmark_server::service::Services>,
    link_id: &str,
    n: u64,
) {
    use trailmark_server::clickcache::CachedTouch;
    use trailmark_server::domain::attribution::DAY;
    let now = trailmark_server::now_ms();
    let writers: Vec<_> = (0..32u64)
        .map(|w| {
            let (cache, link_id, svc) = (cache.clone(), link_id.to_owned(), svc.clone());
            tokio::spawn(async move {
                for i in (w..n).step_by(32) {
                    let touch = CachedTouch {
                        click_id: uuid::Uuid::new_v4().to_string(),
                        kind: "click".into(),
                        link_id: link_id.clone(),
                        ts: now - 6 * DAY + (i as i128 * 6 * DAY as i128 / n.max(1) as i128) as i64,
                        device_id: svc.ids.device(&format!("gaid-{i}")),
                        ..Default::default()
                    };
                    let ip = std::net::IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
                    cache.record(touch, Some(ip)).await.expect("Redis takes the click");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
}

async fn signed_request(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Option<Value> {
    let ts = trailmark_server::now_ms() / 1000;
    let sig = protocol::sign(SECRET.as_bytes(), ts, &body);
    let resp = client
        .post(url)
        .header(protocol::HEADER_APP, APP)
        .header(protocol::HEADER_TIMESTAMP, ts.to_string())
        .header(protocol::HEADER_SIGNATURE, sig)
        .body(body)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// The times of `n` events of one device, in time order: sessions of 1–8 events 1–3 minutes
/// apart, starting 31–180 minutes after the previous one ended, the last one ending about now.
fn device_times(rng: &mut u64, n: usize, now: i64) -> Vec<i64> {
    let mut next = |below: u64| {
        // xorshift64*: reproducible without another dependency.
        *rng ^= *rng >> 12;
        *rng ^= *rng << 25;
        *rng ^= *rng >> 27;
        (rng.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) % below
    };
    let mut times = Vec::with_capacity(n);
    let mut t = 0i64;
    while times.len() < n {
        for _ in 0..(1 + next(8)) {
            if times.len() == n {
                break;
            }
            times.push(t);
            t += (1 + next(3) as i64) * 60_000;
        }
        t += (31 + next(150) as i64) * 60_000;
    }
    times.iter().map(|x| now - t + x).collect()
}

/// Stores `args.refresh_events` events for 1 and for `args.refresh_devices` devices, once in
/// time order and once shuffled, each time in a fresh store, and times the refresh that takes
/// them all into the star schema (facts, users, sessions, rollups).
async fn refresh_bench(args: &Args) {
    use trailmark_server::storage::NewEvent;
    let n = args.refresh_events;
    println!(
        "machine: {} logical CPUs; refresh of {n} events stored directly (no HTTP), store: {}, refresh batches of {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        if args.postgres.is_some() { "PostgreSQL" } else { "SQLite (synchronous=FULL)" },
        trailmark_server::ReportConfig::default().refresh_batch,
    );
    let now = trailmark_server::now_ms();
    let mut layouts = vec![1, args.refresh_devices.max(1)];
    layouts.dedup();
    for devices in layouts {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut events: Vec<NewEvent> = Vec::with_capacity(n);
        for d in 0..devices {
            let count = n / devices + usize::from(d < n % devices);
            for (i, ts) in device_times(&mut seed, count, now).into_iter().enumerate() {
                events.push(NewEvent {
                    app_id: APP.into(),
                    event_id: format!("{d:08x}-0000-4000-8000-{i:012x}"),
                    event_type: if i % 10 == 0 { "app_open" } else { "screen_view" }.into(),
                    anonymous_id: format!("device-{d}"),
                    client_ts: ts,
                    corrected_ts: ts,
                    received_at: now,
                    properties: "{}".into(),
                    context: "{}".into(),
                    enrichment: "{}".into(),
                    ..Default::default()
                });
            }
        }
        // Time order across every device, as a steady stream of live traffic arrives.
        events.sort_by_key(|e| e.corrected_ts);
        for order in ["ordered", "shuffled"] {
            if order == "shuffled" {
                // Fisher–Yates with the same generator.
                for i in (1..events.len()).rev() {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    events.swap(i, (seed % (i as u64 + 1)) as usize);
                }
            }
            let dir = tempfile::tempdir().unwrap();
            let mut config = trailmark_server::ServerConfig::new().with_app(APP, SECRET);
            config.reports.scheduler = false;
            let builder = trailmark_server::ServerBuilder::new(config);
            let builder = match &args.postgres {
                Some(url) => {
                    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
                    let store = trailmark_server::storage::postgres::PostgresStorage::connect(url, 16, Some(&schema))
                        .await
                        .unwrap();
                    builder.storage(Arc::new(store))
                }
                None => builder.sqlite(dir.path().join("refresh.db")).unwrap(),
            };
            let state = builder.build_state().unwrap();
            for chunk in events.chunks(5_000) {
                state.storage.insert(chunk.to_vec()).await.unwrap();
            }
            let started = Instant::now();
            let (refreshed, rollups) = state.maintenance.refresh().await.unwrap();
            let took = started.elapsed();
            // The same sessions either way (counted in the SQLite file).
            let sessions = match &args.postgres {
                Some(_) => "-".to_owned(),
                None => rusqlite::Connection::open(dir.path().join("refresh.db"))
                    .and_then(|c| c.query_row("SELECT count(*) FROM sessions", [], |r| r.get::<_, i64>(0)))
                    .map_or_else(|e| e.to_string(), |n| n.to_string()),
            };
            println!(
                "refresh, {devices:>3} device(s), {order:<8}: {refreshed} events, {sessions} sessions, {rollups} rollups in {:>7.2?} ({:.0} events/s)",
                took,
                refreshed as f64 / took.as_secs_f64()
            );
        }
    }
}

/// `--only clickhouse` (issue 23): (1) `--olap-events` events over `--olap-days` days stored
/// directly (no HTTP) in steps of a million, each step refreshed into the star schema and loaded
/// into ClickHouse, timing the three; (2) a 3-step funnel over the last 30 days and retention
/// (30 daily cohorts, days 1, 7, 30) over HTTP, computed in ClickHouse, five times each;
/// (3) batched HTTP ingest for `--seconds` with the scheduler and the loader running, then how
/// long until a report (which loads everything pending first) answers: the lag after a burst.
async fn olap_bench(args: &Args) {
    use trailmark_server::storage::NewEvent;
    let url = args.clickhouse.clone().expect("--only clickhouse needs --clickhouse URL");
    let n = args.olap_events;
    let days = args.olap_days.max(31);
    let admin = "bench-admin-key-0001";
    println!(
        "machine: {} logical CPUs; {n} events over {days} days, SQLite (synchronous=NORMAL) + ClickHouse {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        trailmark_server::olap::clickhouse::ClickHouse::new(&url, "default").unwrap().version().await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = trailmark_server::ServerConfig::new().with_app(APP, SECRET).with_admin_key(admin);
    config.reports.scheduler = false;
    config.reports.raw_retention_days = 400;
    let mut ch = trailmark_server::domain::config::ClickHouseConfig::new(&url);
    ch.database = format!("bench_{}", uuid::Uuid::new_v4().simple());
    config.clickhouse = Some(ch.clone());
    let state = trailmark_server::ServerBuilder::new(config)
        .sqlite_with(dir.path().join("olap.db"), trailmark_server::Durability::Normal)
        .unwrap()
        .build_state()
        .unwrap();
    let olap = state.olap.clone().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = trailmark_server::router(state.clone());
    tokio::spawn(async move {
        axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap();
    });

    // Sessions of 5 events 30 s apart, in time order over the span (live traffic's order), of
    // devices picked at random (n / 50 devices; a third signed in); each session opens the app
    // and views something, 30 % add to the cart, a third of those buy.
    let now = trailmark_server::now_ms();
    let (span, devices) = (days * 86_400_000, (n / 50).max(1) as u64);
    let first_ts = now - span;
    let sessions = n.div_ceil(5);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rng = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut stored, mut t_insert, mut t_refresh, mut t_load) =
        (0usize, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let mut batch: Vec<NewEvent> = Vec::with_capacity(5_000);
    for s in 0..sessions {
        let ts = first_ts + (s as i64) * (span - 3_600_000) / sessions as i64;
        let device = rng() % devices;
        let r = rng() % 100;
        let kinds = [
            "app_open",
            "screen_view",
            "view_item",
            if r < 30 { "add_to_cart" } else { "screen_view" },
            if r < 10 { "purchase" } else { "screen_view" },
        ];
        for (k, kind) in kinds.iter().enumerate() {
            if stored + batch.len() >= n {
                break;
            }
            let at = ts + k as i64 * 30_000;
            batch.push(NewEvent {
                app_id: APP.into(),
                event_id: format!("{s:016x}-{k}"),
                event_type: (*kind).into(),
                anonymous_id: format!("device-{device}"),
                user_id: (device % 3 == 0).then(|| format!("user-{}", device / 3)),
                client_ts: at,
                corrected_ts: at,
                received_at: at,
                properties: if *kind == "purchase" { r#"{"revenue":9.99,"currency":"EUR"}"# } else { "{}" }.into(),
                context: "{}".into(),
                enrichment: "{}".into(),
                ..Default::default()
            });
        }
        if batch.len() >= 5_000 || s + 1 == sessions || stored + batch.len() >= n {
            let t = Instant::now();
            stored += batch.len();
            state.storage.insert(std::mem::take(&mut batch)).await.unwrap();
            t_insert += t.elapsed();
            if stored % 1_000_000 < 5_000 || stored >= n {
                let t = Instant::now();
                state.maintenance.refresh().await.unwrap();
                t_refresh += t.elapsed();
                let t = Instant::now();
                olap.catch_up(None).await.unwrap();
                t_load += t.elapsed();
                println!(
                    "  {stored:>9} events: stored {:>7.1?}, star schema {:>7.1?}, ClickHouse {:>7.1?} (cumulative)",
                    t_insert, t_refresh, t_load
                );
            }
            if stored >= n {
                break;
            }
        }
    }
    let rate = |d: Duration| stored as f64 / d.as_secs_f64();
    println!("store {:>10.0} events/s (direct, no HTTP)", rate(t_insert));
    println!("star schema refresh {:>10.0} events/s", rate(t_refresh));
    println!("ClickHouse loader {:>10.0} events/s (their facts, users and sessions)", rate(t_load));
    println!("{}", summary_line("clickhouse-loader", rate(t_load), Duration::ZERO, Duration::ZERO));
    let facts = olap.clickhouse().select("SELECT count() AS n FROM fact_events").await.unwrap();
    println!("facts in ClickHouse: {}", facts[0]["n"]);
    // Timings in ClickHouse's steady state: the background merges of the freshly loaded parts
    // done (as in a store loaded over days), not forced (no OPTIMIZE).
    let t = Instant::now();
    loop {
        let busy = olap
            .clickhouse()
            .select("SELECT count() AS n FROM system.merges WHERE database = currentDatabase()")
            .await
            .unwrap();
        if busy[0]["n"].as_i64().or_else(|| busy[0]["n"].as_str().and_then(|s| s.parse().ok())) == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let parts = olap
        .clickhouse()
        .select("SELECT count() AS n FROM system.parts WHERE database = currentDatabase() AND table = 'fact_events' AND active")
        .await
        .unwrap();
    println!("background merges done after {:.1?}; fact_events in {} parts", t.elapsed(), parts[0]["n"]);

    let client = reqwest::Client::new();
    let day = |ms: i64| protocol::format_millis(ms)[..10].to_owned();
    let (from, to) = (day(now - 30 * 86_400_000), day(now));
    for (name, path) in [
        (
            "funnel app_open>add_to_cart>purchase, 30 days",
            format!("/v1/reports/funnel?steps=app_open,add_to_cart,purchase&from={from}&to={to}"),
        ),
        ("retention, 30 cohorts, days 1,7,30", format!("/v1/reports/retention?days=1,7,30&from={from}&to={to}")),
    ] {
        let mut times = Vec::new();
        let mut answer = Value::Null;
        for _ in 0..5 {
            let t = Instant::now();
            let resp = client.get(format!("{base}{path}")).bearer_auth(admin).send().await.unwrap();
            assert!(resp.status().is_success(), "{path}: {}", resp.status());
            answer = resp.json().await.unwrap();
            times.push(t.elapsed());
        }
        times.sort();
        let summary = match answer.get("steps") {
            Some(steps) => {
                steps.as_array().unwrap().iter().map(|s| s["users"].to_string()).collect::<Vec<_>>().join(" > ")
            }
            None => format!("{} cohorts", answer["cohorts"].as_array().map_or(0, Vec::len)),
        };
        println!("{name:<48} median {:>8.1?}  max {:>8.1?}  ({summary})", times[2], times[4]);
        println!(
            "{}",
            summary_line(
                if name.starts_with("funnel") { "clickhouse-funnel" } else { "clickhouse-retention" },
                0.0,
                times[2],
                times[4]
            )
        );
    }

    // A burst of batched HTTP ingest with the scheduler and the loader in the background.
    let server_args = ServerArgs {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        db: Some(dir.path().join("burst.db")),
        apps: vec![format!("{APP}:{SECRET}")],
        ip_rate: Some(1_000_000),
        app_rate: Some(1_000_000),
        sync: Some(args.sync.clone()),
        admin_key: Some(admin.into()),
        keys: Some(dir.path().join("burst.keys")),
        clickhouse: Some(url.clone()),
        ..Default::default()
    };
    let mut settings = server_args.settings().unwrap();
    if let Some(c) = settings.clickhouse.as_mut() {
        c.database = format!("burst_{}", uuid::Uuid::new_v4().simple());
    }
    let running = start(&settings).await.unwrap();
    let batches: Vec<Vec<u8>> = (0..(args.seconds * 200))
        .map(|b| {
            let now = trailmark_server::now_ms();
            let ts = protocol::format_millis(now);
            let shape = Shape { ids: false, v7: true, spread_ms: 0 };
            let events: Vec<String> = (0..500).map(|i| event(b * 500 + i, now, shape)).collect();
            format!(r#"{{"sent_at":"{ts}","batch":[{}]}}"#, events.join(",")).into_bytes()
        })
        .collect();
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build().unwrap();
    let u = format!("http://{}/v1/event", running.addr);
    let c = http.clone();
    let r = drive(args, Arc::new(batches), move |body| {
        let (c, u) = (c.clone(), u.clone());
        async move { signed_post(&c, &u, body.unwrap()).await }
    })
    .await;
    report("batched ingest with ClickHouse loading", "batched", "events", &r);
    let pending = running.state.storage.olap_pending().await.unwrap();
    // A report first loads what is pending; with a large backlog it answers 503 ("catching
    // up") while the background loader works: asked again until it answers.
    let t = Instant::now();
    let mut unavailable = 0;
    loop {
        let resp = http
            .get(format!("http://{}/v1/reports/funnel?steps=add_to_cart,add_to_cart", running.addr))
            .bearer_auth(admin)
            .send()
            .await
            .unwrap();
        if resp.status().is_success() {
            break;
        }
        assert_eq!(resp.status(), 503, "{:?}", resp.text().await);
        unavailable += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "after the burst: {pending} outbox entries pending (the star schema had the rest still to take); \
         a report had everything in ClickHouse after {:.2?} ({unavailable} answers 503 'catching up' first)",
        t.elapsed()
    );
    let ch = trailmark_server::olap::clickhouse::ClickHouse::new(&url, &settings.clickhouse.as_ref().unwrap().database)
        .unwrap();
    let facts = ch.select("SELECT count() AS n FROM fact_events").await.unwrap();
    println!("facts in ClickHouse after the burst: {} of {} events accepted", facts[0]["n"], r.items);
    let _ = ch.drop_database().await;
    if std::env::var_os("TM_BENCH_KEEP").is_some() {
        println!("kept: ClickHouse database {} (TM_BENCH_KEEP)", olap.clickhouse().database());
    } else {
        let _ = olap.clickhouse().drop_database().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_has_the_form_scripts_read() {
        let line = summary_line("batched", 56_140.4, Duration::from_micros(283_650), Duration::from_micros(466_990));
        assert_eq!(line, "loadgen: workload=batched rate=56140 p50_ms=283.650 p99_ms=466.990");
    }
}
