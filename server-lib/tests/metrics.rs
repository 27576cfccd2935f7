//! Metrics on every route: after a click, a report call and a refused admin call, `/metrics`
//! shows `trailmark_http_requests_total` under the matched route templates with their statuses,
//! and the duration histogram beside it.

use serde_json::{Value, json};
use trailmark_server::{ServerBuilder, ServerConfig};

mod common;

const ADMIN: &str = "admin-key-0123456789";

/// The value of the series with exactly these labels (in Prometheus' text format).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().filter(|l| l.starts_with(&format!("{name}{{"))).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let inside = series.strip_prefix(name)?.trim_start_matches('{').trim_end_matches('}');
        let mut have: Vec<(String, String)> = inside
            .split("\",")
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
            .collect();
        have.sort();
        let mut want: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        want.sort();
        (have == want).then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_counted_under_its_template() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::new().with_app("app", "secret").with_admin_key(ADMIN);
    let base = common::serve(ServerBuilder::new(config).sqlite(dir.path().join("m.db")).unwrap()).await;
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let admin = |r: reqwest::RequestBuilder| r.header("authorization", format!("Bearer {ADMIN}"));

    let create = |path: &str, body: Value| {
        let request = admin(client.post(format!("{base}{path}"))).json(&body);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let campaign = create("/v1/campaigns", json!({"name": "Spring", "network": "meta"})).await;
    let link = create(
        "/v1/links",
        json!({"campaign_id": campaign["campaign_id"], "destinations": {"web": "https://shop.example/"}}),
    )
    .await;
    let code = link["code"].as_str().unwrap();

    let click = client.get(format!("{base}/c/{code}")).header("user-agent", "Mozilla/5.0").send().await.unwrap();
    assert_eq!(click.status(), 302);
    let funnel = admin(client.get(format!("{base}/v1/reports/funnel?steps=app_open,purchase"))).send().await.unwrap();
    assert_eq!(funnel.status(), 200);
    let refused = client
        .get(format!("{base}/v1/reports/funnel?steps=app_open"))
        .header("authorization", "Bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let unknown = client.get(format!("{base}/wp-login.php")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);

    let text = client.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let count = |route: &str, method: &str, status: &str| {
        sample(&text, "trailmark_http_requests_total", &[("route", route), ("method", method), ("status", status)])
    };
    assert_eq!(count("/c/{code}", "GET", "302"), Some(1.0), "{text}");
    assert_eq!(count("/v1/reports/funnel", "GET", "200"), Some(1.0), "{text}");
    assert_eq!(count("/v1/reports/funnel", "GET", "401"), Some(1.0), "{text}");
    assert_eq!(count("/v1/campaigns", "POST", "201"), Some(1.0), "{text}");
    // Paths no route knows share one series, so scanners cannot mint new ones.
    assert_eq!(count("unmatched", "GET", "404"), Some(1.0), "{text}");
    assert!(!text.contains("wp-login"), "{text}");
    let timed = sample(
        &text,
        "trailmark_http_request_duration_seconds_count",
        &[("route", "/v1/reports/funnel"), ("method", "GET")],
    );
    assert_eq!(timed, Some(2.0), "{text}");
}
