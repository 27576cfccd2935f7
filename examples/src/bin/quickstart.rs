//! `cargo run --release --bin quickstart [-- --once]`
//!
//! Starts the reference server on a fresh SQLite file and runs a simulated campaign against it
//! over real HTTP with the SDK core's native driver:
//! - one device tracks while the server is still down, then delivers when it comes up;
//! - six devices open campaign deep links, sign in, browse and buy;
//! - some events are invalid (a purchase without a currency) and are rejected one by one;
//! - one batch is replayed and comes back as duplicates;
//! - one user denies consent and sends nothing;
//! - before that, the marketing side: campaigns and tracking links are created through the
//!   admin API, visitors click them (Android through the Play referrer, iPhones by advertising
//!   id or fingerprint, a crawler that is not counted), the apps report their installs, and the
//!   server attributes each one (one is click injection and is rejected). Purchases are then
//!   credited to the campaigns.
//!
//! Then it prints a summary and keeps serving until Ctrl-C (`--once` exits after the summary).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;

// Small JSON values are allocated and freed by the million; mimalloc handles that far better
// than glibc malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use serde_json::{Value, json};
use trailmark_core::native::{NativeOptions, Trailmark};
use trailmark_core::{Config, ConsentUpdate, Stats, protocol};
use trailmark_examples::{ServerArgs, Settings, start};

const APP: &str = "com.example.shop";
const SECRET: &str = "quickstart-secret";
const ADMIN: &str = "quickstart-admin-key";

#[derive(Parser)]
#[command(about = "Trailmark quickstart: reference server + simulated campaign")]
struct Args {
    /// Exit after the summary instead of serving until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// Address for the server [default: 127.0.0.1:8080, or any free port if taken].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where to put the server database and the simulated devices' queues.
    #[arg(long, default_value = "quickstart-data")]
    data: PathBuf,
}

fn props(v: Value) -> trailmark_core::json::Object {
    match v {
        Value::Object(map) => map.into(),
        _ => Default::default(),
    }
}

struct Device {
    name: &'static str,
    tm: Trailmark,
}

fn device(name: &'static str, endpoint: &str, data: &Path, require_consent: bool) -> Device {
    let mut config = Config::new(APP, SECRET, endpoint);
    config.require_consent = require_consent;
    config.device_id = Some(format!("device-{name}"));
    config.app.id = Some(APP.into());
    config.app.version = Some("3.2.0".into());
    config.device.os = Some(if name.len().is_multiple_of(2) { "iOS" } else { "android" }.into());
    config.policy.retry_cap = Duration::from_secs(2);
    // The campaign step reports these devices' installs itself (POST /v1/install with the
    // referrer, IDFA or fingerprint it simulates), as an app's backend would server to server.
    config.install_request = false;
    let tm = Trailmark::start(config, NativeOptions::new(data.join(format!("device-{name}.db")))).expect("SDK starts");
    Device { name, tm }
}

/// One user's visit: a campaign deep link, sign-in, browsing, a cart, maybe a purchase.
fn visit(
    d: &Device,
    campaign: Option<(&str, &str, &str)>,
    click: Option<&str>,
    items: usize,
    buy: bool,
    bad_purchase: bool,
) {
    let tm = &d.tm;
    // The app comes to the foreground (the platform glue reports it): `app_opened`.
    tm.on_foreground().unwrap();
    if let Some((source, medium, name)) = campaign {
        let click = click.map(str::to_owned).unwrap_or_else(|| format!("clk_{}", d.name));
        let url = format!(
            "shop://product/42?tm_click_id={click}&utm_source={source}&utm_medium={medium}&utm_campaign={name}"
        );
        tm.handle_open_url(&url).unwrap();
    }
    tm.identify(
        &format!("user-{}", d.name),
        props(json!({"email": format!("{}@Example.com", d.name), "plan": "free"})),
    )
    .unwrap();
    for i in 0..items {
        tm.screen("product", props(json!({"sku": format!("SKU-{i}")}))).unwrap();
        tm.track(
            "add_to_cart",
            props(json!({"sku": format!("SKU-{i}"), "price": 19.99, "currency": "EUR", "quantity": 1})),
        )
        .unwrap();
    }
    if buy {
        tm.track(
            "purchase",
            props(json!({"revenue": 19.99 * items as f64, "currency": "EUR", "order_id": format!("o-{}", d.name)})),
        )
        .unwrap();
    }
    if bad_purchase {
        // The SDK cannot know the server's schema: the server rejects this one alone.
        tm.track("purchase", props(json!({"revenue": 5}))).unwrap();
    }
    // Misuse the SDK refuses at once, with a typed error.
    let _ = tm.track("Checkout Started", Default::default());
    tm.on_background().unwrap();
}

fn wait_delivered(devices: &[Device], timeout: Duration) -> Vec<Stats> {
    let deadline = Instant::now() + timeout;
    loop {
        let stats: Vec<Stats> = devices.iter().map(|d| d.tm.stats().unwrap()).collect();
        if stats.iter().all(|s| s.queued == 0) || Instant::now() > deadline {
            return stats;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends one signed batch twice: the second answer is all duplicates.
fn replay(endpoint: &str) -> (Value, Value) {
    let events: Vec<Value> = (0..20)
        .map(|i| {
            json!({"event_id": uuid::Uuid::new_v4().to_string(), "type": "server_import", "timestamp": protocol::format_millis(trailmark_server::now_ms()),
                   "anonymous_id": "importer", "properties": {"row": i}})
        })
        .collect();
    let body =
        serde_json::to_vec(&json!({"sent_at": protocol::format_millis(trailmark_server::now_ms()), "batch": events}))
            .unwrap();
    let client = reqwest::blocking::Client::new();
    let send = || -> Value {
        let ts = trailmark_server::now_ms() / 1000;
        client
            .post(format!("{endpoint}/v1/event"))
            .header(protocol::HEADER_APP, APP)
            .header(protocol::HEADER_TIMESTAMP, ts.to_string())
            .header(protocol::HEADER_SIGNATURE, protocol::sign(SECRET.as_bytes(), ts, &body))
            .body(body.clone())
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| json!({"error": e.to_string()}))
    };
    (send(), send())
}

fn query_pairs(db: &Path, sql: &str) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(db).expect("open db");
    let mut stmt = conn.prepare(sql).expect("query");
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .expect("rows")
        .map(|r| r.expect("row"))
        .collect()
}

struct AttributionRun {
    links: usize,
    /// (device name, click id) of every counted click.
    clicks: Vec<(&'static str, String)>,
    /// (device name, answer of POST /v1/install).
    installs: Vec<(&'static str, Value)>,
    sample_link: String,
}

const ANDROID_UA: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8 Build/UQ1A.240205.004) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";
const IPHONE_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
const IPHONE_18_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.6 Mobile/15E148 Safari/604.1";

/// The marketing side: campaigns and links, clicks, installs, attribution.
fn simulate_attribution(
    endpoint: &str,
    anonymous_ids: &std::collections::HashMap<&'static str, String>,
) -> AttributionRun {
    let client = reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let admin = |path: &str, body: Value| -> Value {
        client.post(format!("{endpoint}{path}")).bearer_auth(ADMIN).json(&body).send().and_then(|r| r.json()).unwrap()
    };
    let mut codes = std::collections::HashMap::new();
    use trailmark_server::storage::star::{date_text, day_of};
    let today = date_text(day_of(trailmark_server::now_ms()));
    for (network, campaign, utm_medium, cost) in [
        ("google", "brand_search", "cpc", 120.0),
        ("meta", "summer_video", "paid_social", 300.0),
        ("tiktok", "ugc", "social", 80.0),
    ] {
        let c = admin("/v1/campaigns", json!({"name": campaign, "network": network}));
        // Today's spend, as an ad network's cost API would report it.
        let cost_path = format!("/v1/campaigns/{}/cost", c["campaign_id"].as_str().unwrap_or_default());
        admin(&cost_path, json!({"date": today, "amount": cost, "currency": "EUR"}));
        let link = admin(
            "/v1/links",
            json!({
                "campaign_id": c["campaign_id"],
                "utm": {"source": network, "medium": utm_medium, "campaign": campaign},
                "destinations": {
                    "ios": "https://apps.apple.com/app/id1234567890",
                    "android": format!("https://play.google.com/store/apps/details?id={APP}"),
                    "web": "https://shop.example.com/landing"
                },
                "deep_link": {"path": "/product/42", "params": {"campaign": campaign}}
            }),
        );
        codes.insert(network, link["code"].as_str().unwrap().to_owned());
    }
    let click = |network: &str, ua: &str, query: &str| -> reqwest::blocking::Response {
        client
            .get(format!("{endpoint}/c/{}{query}", codes[network]))
            .header("User-Agent", ua)
            .header("Accept-Language", "en-US,en;q=0.9")
            .send()
            .unwrap()
    };
    let location =
        |r: &reqwest::blocking::Response| url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let param = |u: &url::Url, k: &str| u.query_pairs().find(|(n, _)| n == k).map(|(_, v)| v.into_owned());
    // Android visitors: the Play Store URL carries the install referrer.
    let mut referrers = Vec::new();
    let mut clicks = Vec::new();
    for (name, network) in [("ivy", "google"), ("kim", "google"), ("gus", "google"), ("zed", "meta")] {
        let referrer = param(&location(&click(network, ANDROID_UA, "?gclid=demo")), "referrer").unwrap();
        let id =
            url::form_urlencoded::parse(referrer.as_bytes()).find(|(k, _)| k == "tm_click_id").unwrap().1.into_owned();
        clicks.push((name, id));
        referrers.push((name, referrer));
    }
    // iPhone visitors: two (on iOS 18) with the advertising id the ad network passes on, one
    // (on iOS 17) without: only a fingerprint can find its install.
    for (name, network) in [("jo", "meta"), ("hana", "meta")] {
        let r = click(network, IPHONE_18_UA, &format!("?idfa=AAAAAAAA-0000-4000-8000-{:012}", name.len()));
        assert_eq!(location(&r).host_str(), Some("apps.apple.com"));
    }
    std::thread::sleep(Duration::from_millis(20));
    click("tiktok", IPHONE_UA, "");
    // A crawler previewing the link is redirected but never counted.
    click("tiktok", "facebookexternalhit/1.1", "");

    let install = |name: &'static str, device: Value, referrer: Option<&str>| -> (&'static str, Value) {
        let mut body = json!({
            "event_id": uuid::Uuid::new_v4().to_string(),
            "anonymous_id": anonymous_ids.get(name).cloned().unwrap_or_else(|| format!("install-{name}")),
            "timestamp": protocol::format_millis(trailmark_server::now_ms()),
            "platform": if device["os"] == "iOS" { "ios" } else { "android" },
            "device": device,
        });
        if let Some(r) = referrer {
            body["install_referrer"] = json!(r);
        }
        let body = serde_json::to_vec(&body).unwrap();
        let ts = trailmark_server::now_ms() / 1000;
        let answer = client
            .post(format!("{endpoint}/v1/install"))
            .header(protocol::HEADER_APP, APP)
            .header(protocol::HEADER_TIMESTAMP, ts.to_string())
            .header(protocol::HEADER_SIGNATURE, protocol::sign(SECRET.as_bytes(), ts, &body))
            .body(body)
            .send()
            .and_then(|r| r.json())
            .unwrap();
        (name, answer)
    };
    let android = json!({"os": "Android", "os_version": "14", "model": "Pixel 8", "locale": "en_US"});
    let mut installs = Vec::new();
    // Installed four seconds after its click: click injection, rejected.
    std::thread::sleep(Duration::from_secs(4));
    installs.push(install("zed", android.clone(), Some(&referrers[3].1)));
    // Real installs take longer than the 10-second click-to-install minimum.
    std::thread::sleep(Duration::from_secs(7));
    for (name, referrer) in &referrers[..3] {
        installs.push(install(name, android.clone(), Some(referrer)));
    }
    for name in ["jo", "hana"] {
        let idfa = format!("aaaaaaaa-0000-4000-8000-{:012}", name.len());
        installs.push(install(name, json!({"os": "iOS", "os_version": "18.6", "idfa": idfa, "locale": "en_US"}), None));
    }
    // Anna allowed tracking (App Tracking Transparency: her install carries an IDFA, her click did
    // not): her iPhone may be fingerprinted.
    installs.push(install(
        "anna",
        json!({"os": "iOS", "os_version": "17.1.2", "locale": "en_US", "model": "iPhone15,2",
            "idfa": "bbbbbbbb-0000-4000-8000-000000000004"}),
        None,
    ));
    installs.push(install("cleo", json!({"os": "iOS", "os_version": "16.6", "locale": "fr_FR"}), None));
    AttributionRun { links: codes.len(), clicks, installs, sample_link: format!("/c/{}", codes["google"]) }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let _ = trailmark_examples::init_logging(false, None);
    let _ = std::fs::remove_dir_all(&args.data);
    std::fs::create_dir_all(&args.data).expect("create the data folder");
    let db = args.data.join("trailmark.db");

    // Find the address first: one device starts tracking while the server is not up yet.
    let wanted = args.listen.unwrap_or_else(|| "127.0.0.1:8080".parse().unwrap());
    let addr = match std::net::TcpListener::bind(wanted) {
        Ok(l) => l.local_addr().unwrap(),
        Err(_) => std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap(),
    };
    let endpoint = format!("http://{addr}");
    println!("Trailmark quickstart");
    println!("  server   {endpoint}  (SQLite: {})", db.display());

    let data = args.data.clone();
    let ep = endpoint.clone();
    let offline = tokio::task::spawn_blocking(move || {
        let d = device("offline", &ep, &data, false);
        visit(&d, Some(("newsletter", "email", "spring_sale")), None, 20, true, false);
        d
    })
    .await
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let queued_offline = offline.tm.stats().unwrap().queued;
    println!(
        "  step 1   device 'offline' tracked {queued_offline} events while the server was down (kept on disk, retrying)"
    );

    let mut args_server = ServerArgs { listen: Some(addr), db: Some(db.clone()), ..Default::default() };
    args_server.apps = vec![format!("{APP}:{SECRET}")];
    args_server.admin_key = Some(ADMIN.into());
    args_server.ip_rate = Some(10_000);
    let settings: Settings = args_server.settings().unwrap();
    let running = start(&settings).await.unwrap_or_else(|e| {
        eprintln!("quickstart: could not start the server: {e}");
        std::process::exit(1);
    });
    println!("  step 2   server up; the offline device delivers on its next retry");

    let data = args.data.clone();
    let ep = endpoint.clone();
    let (devices, denied_stats, replay_answers, attribution) = tokio::task::spawn_blocking(move || {
        let campaigns = [
            ("ivy", Some(("google", "cpc", "brand_search")), 12, true, false),
            ("anna", Some(("facebook", "paid_social", "summer_video")), 8, true, true),
            ("bob", Some(("newsletter", "email", "spring_sale")), 6, false, false),
            ("cleo", None, 4, true, true),
            ("dan", Some(("partner_blog", "referral", "review")), 10, true, false),
            ("eve", Some(("tiktok", "social", "ugc")), 3, false, false),
            ("gus", Some(("google", "cpc", "generic_shoes")), 9, true, false),
            ("hana", Some(("instagram", "paid_social", "summer_video")), 7, false, false),
            ("ivan", None, 5, false, false),
            ("jo", Some(("newsletter", "email", "spring_sale")), 11, true, false),
            ("kim", Some(("bing", "cpc", "brand_search")), 2, false, false),
        ];
        // The apps are installed: each reports its install with the SDK's anonymous id.
        let started: Vec<Device> = campaigns.iter().map(|c| device(c.0, &ep, &data, false)).collect();
        let mut anonymous_ids: std::collections::HashMap<&'static str, String> =
            started.iter().map(|d| (d.name, d.tm.anonymous_id().unwrap())).collect();
        anonymous_ids.insert("zed", "install-zed".into());
        let attribution = simulate_attribution(&ep, &anonymous_ids);
        let mut devices = vec![offline];
        for (d, (_, campaign, items, buy, bad)) in started.into_iter().zip(campaigns) {
            let click = attribution.clicks.iter().find(|(n, _)| *n == d.name).map(|(_, c)| c.as_str());
            visit(&d, campaign, click, items, buy, bad);
            devices.push(d);
        }
        // A user who is asked for consent and declines: nothing leaves the device.
        let denied = device("fay", &ep, &data, true);
        visit(&denied, Some(("google", "cpc", "brand_search")), None, 3, true, false);
        denied
            .tm
            .set_consent(ConsentUpdate { analytics: Some(false), attribution: Some(false), do_not_sell: Some(true) })
            .unwrap();
        for d in &devices {
            d.tm.flush().unwrap();
        }
        let replay_answers = replay(&ep);
        (devices, denied.tm.stats().unwrap(), replay_answers, attribution)
    })
    .await
    .unwrap();

    let stats = tokio::task::spawn_blocking({
        let devices_ref: Vec<Device> = devices;
        move || {
            let stats = wait_delivered(&devices_ref, Duration::from_secs(60));
            drop(devices_ref);
            stats
        }
    })
    .await
    .unwrap();

    let recorded: u64 = stats.iter().map(|s| s.recorded).sum();
    let delivered: u64 = stats.iter().map(|s| s.delivered).sum();
    let rejected: u64 = stats.iter().map(|s| s.rejected_by_server).sum();
    let refused: u64 = stats.iter().map(|s| s.refused_invalid).sum();
    let queued: u64 = stats.iter().map(|s| s.queued).sum();
    println!(
        "  step 3   {} tracking links clicked {} times (+1 crawler, not counted); {} installs reported",
        attribution.links,
        attribution.clicks.len() + 3,
        attribution.installs.len()
    );
    println!(
        "  step 4   {} devices browsed and bought, most arriving through a campaign link; 1 more declined consent",
        stats.len() - 1
    );
    println!();
    println!("SDK side");
    println!(
        "  recorded {recorded} events, delivered {delivered}, rejected by the server {rejected}, still queued {queued}"
    );
    println!("  refused at the call with a typed error: {refused} (bad event type names)");
    println!(
        "  consent declined: {} events held then dropped on the device, 0 sent",
        denied_stats.dropped_consent_denied
    );
    println!("  replayed batch: first answer {}, second answer {}", replay_answers.0, replay_answers.1);

    let by_type = query_pairs(&db, "SELECT type, COUNT(*) FROM events GROUP BY type ORDER BY COUNT(*) DESC");
    let by_channel = query_pairs(
        &db,
        "SELECT json_extract(enrichment, '$.channel') || ' / ' || json_extract(context, '$.campaign.utm_campaign'), COUNT(*)
         FROM events WHERE type = 'deep_link_opened' GROUP BY 1 ORDER BY 2 DESC, 1",
    );
    let stored: i64 = by_type.iter().map(|(_, n)| n).sum();
    println!();
    println!("Server side (SQLite)");
    println!("  stored {stored} events (20 of them from the replayed import batch)");
    for (t, n) in &by_type {
        println!("    {t:<18} {n}");
    }
    println!("  campaign touchpoints (deep links opened) by channel / campaign:");
    for (c, n) in &by_channel {
        println!("    {c:<32} {n}");
    }
    println!();
    println!("Attribution");
    for (name, result) in &attribution.installs {
        let fraud = &result["fraud"];
        println!(
            "    install {name:<6} {:<12} {:<10} confidence {:<5} {}",
            result["match_type"].as_str().unwrap_or("?"),
            result["network"].as_str().unwrap_or("-"),
            result["confidence"],
            if fraud["rejected"] == true { format!("rejected: {}", fraud["flags"]) } else { String::new() }
        );
    }
    let revenue = query_pairs(
        &db,
        "SELECT COALESCE(network, 'organic') || ' / ' || model, CAST(ROUND(SUM(revenue) * 100) AS INTEGER)
         FROM conversions WHERE model IN ('last_touch', 'linear') GROUP BY 1 ORDER BY 1",
    );
    println!("  purchase revenue credited (EUR) by network / model:");
    for (k, cents) in &revenue {
        println!("    {k:<28} {:.2}", *cents as f64 / 100.0);
    }
    // The campaign report (reports refresh the star schema first, so it is current).
    let report: Value = reqwest::Client::new()
        .get(format!("{endpoint}/v1/reports/campaigns"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap_or_default();
    println!("  campaign report (today, last touch): campaign / clicks / installs / CPI / conversions / ROAS");
    let mut reported_installs = 0;
    for c in report["campaigns"].as_array().into_iter().flatten() {
        reported_installs += c["installs"].as_i64().unwrap_or(0);
        let num = |v: &Value| v.as_f64().map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
        println!(
            "    {:<14} {:>3} {:>3} {:>8} {:>5} {:>6}",
            c["name"].as_str().unwrap_or("?"),
            c["clicks"],
            c["installs"],
            num(&c["cpi"]),
            num(&c["conversions"]),
            num(&c["roas"])
        );
    }
    let attributed = attribution.installs.iter().filter(|(_, r)| r["attributed"] == true).count() as i64;
    let expected = [
        ("ivy", "referrer"),
        ("kim", "referrer"),
        ("gus", "referrer"),
        ("jo", "device_id"),
        ("hana", "device_id"),
        ("anna", "fingerprint"),
        ("cleo", "organic"),
        ("zed", "organic"),
    ];
    let attribution_ok =
        expected.iter().all(|(n, m)| attribution.installs.iter().any(|(name, r)| name == n && r["match_type"] == *m))
            && attribution.installs.iter().any(|(n, r)| *n == "zed" && r["fraud"]["rejected"] == true)
            && !revenue.is_empty()
            && reported_installs == attributed;
    let ok = attribution_ok
        && queued == 0
        && delivered + 20 == stored as u64
        && rejected == 2
        && refused == stats.len() as u64
        && replay_answers.1["duplicates"] == 20
        && denied_stats.dropped_consent_denied > 0;
    println!();
    if ok {
        println!(
            "OK: every tracked event arrived exactly once; invalid ones were rejected one by one; the replay was all duplicates; every install was attributed as expected."
        );
    } else {
        println!("MISMATCH: see the numbers above.");
    }
    if args.once {
        running.handle.graceful_shutdown(Some(Duration::from_secs(2)));
        std::process::exit(if ok { 0 } else { 1 });
    }
    println!();
    println!("Still serving. Try:");
    println!("  open {endpoint}/dashboard  (admin key: {ADMIN})");
    println!("  curl -H 'Authorization: Bearer {ADMIN}' '{endpoint}/v1/reports/campaigns'");
    println!("  curl -H 'Authorization: Bearer {ADMIN}' '{endpoint}/v1/reports/funnel?steps=app_opened,purchase'");
    println!("  curl {endpoint}/healthz");
    println!("  curl {endpoint}/metrics | grep trailmark_");
    println!("  curl -H 'Authorization: Bearer {ADMIN}' {endpoint}/v1/attribution/<install event id>");
    println!("  curl -i {endpoint}{}", attribution.sample_link);
    println!(
        "  curl -X POST -H 'Authorization: Bearer {ADMIN}' -d '{{\"user_id\":\"user-anna\"}}' {endpoint}/v1/user/delete"
    );
    println!("Ctrl-C to stop.");
    let _ = tokio::signal::ctrl_c().await;
    running.handle.graceful_shutdown(Some(Duration::from_secs(5)));
}
