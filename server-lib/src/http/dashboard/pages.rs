//! The dashboard's pages: the overview (live counters, trends, campaigns, alerts, links, recent
//! events), a page per campaign, journeys (funnel, retention heatmap, paths) and the
//! attribution explorer. Every number comes from the report API's service functions (the same
//! code `GET /v1/reports/*` and `GET /v1/attribution/lookup` run); maud escapes every value.

use std::collections::HashMap;

use maud::{DOCTYPE, Markup, html};
use serde_json::Value;

use super::charts::{self, Format, Line};
use super::{AppState, funnel_chart, money, pct, when};
use crate::domain::records::{LinkRecord, ReportQuery, ReportRows};
use crate::domain::reports::{Params, date_text, day_of, parse_time};
use crate::http::error::ApiError;
use crate::service::links::link_url;
use crate::service::{install, reports};

/// What every page's frame needs.
pub(super) struct Frame<'a> {
    pub actor: &'a str,
    pub csrf: &'a str,
    pub app: &'a str,
    pub apps: &'a [String],
    /// The page's path (the app switcher submits to it) and its name in the navigation.
    pub path: &'a str,
    pub active: &'static str,
}

fn encode(v: &str) -> String {
    url::form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// The page around `body`: head, navigation, app switcher, sign-out.
pub(super) fn layout(f: &Frame<'_>, title: &str, body: Markup) -> Markup {
    let app = encode(f.app);
    let nav = [
        ("overview", "Overview", format!("/dashboard?app_id={app}")),
        ("journeys", "Journeys", format!("/dashboard/journeys?app_id={app}")),
        ("attribution", "Attribution explorer", format!("/dashboard/attribution?app_id={app}")),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Trailmark" }
                link rel="stylesheet" href="/dashboard/style.css";
                script src="/dashboard/app.js" defer {}
            }
            body {
                header {
                    h1 { "Trailmark" }
                    nav aria-label="Dashboard" {
                        @for (key, label, href) in &nav {
                            a href=(href) aria-current=[(f.active == *key).then_some("page")] { (label) }
                        }
                    }
                    form.inline method="get" action=(f.path) {
                        label { "App " select name="app_id" {
                            @for a in f.apps { option value=(a) selected[*a == f.app] { (a) } }
                        } }
                        button type="submit" { "Show" }
                    }
                    span.who { "Signed in as " (f.actor) }
                    form.inline method="post" action="/dashboard/logout" {
                        input type="hidden" name="csrf" value=(f.csrf);
                        button type="submit" id="logout" { "Sign out" }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// The app a page shows: the one asked for (it must exist), else the first.
pub(super) fn pick_app(state: &AppState, q: &Params) -> Result<(String, Vec<String>), ApiError> {
    let mut apps: Vec<String> = state.config.apps.keys().cloned().collect();
    apps.sort();
    let app = match q.get("app_id") {
        Some(a) if apps.iter().any(|x| x == a) => a.to_owned(),
        Some(a) => return Err(ApiError::bad_request("unknown_app", format!("no app {a:?} is configured"))),
        None => apps.first().cloned().unwrap_or_default(),
    };
    Ok((app, apps))
}

/// The (key, value) pairs of `q` among `keys` that are set, plus the app.
fn pass(q: &Params, app: &str, keys: &[&'static str]) -> Vec<(&'static str, String)> {
    let mut out = vec![("app_id", app.to_owned())];
    for k in keys {
        if let Some(v) = q.get(k).filter(|v| !v.is_empty()) {
            out.push((k, v.to_owned()));
        }
    }
    out
}

fn date_input(name: &str, label: &str, q: &Params) -> Markup {
    html! { label { (label) " " input type="date" name=(name) value=(q.get(name).unwrap_or("")); } }
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array().into_iter().flatten().map(|x| x.as_f64().unwrap_or(0.0)).collect()
}

fn labels(t: &Value) -> Vec<String> {
    t["labels"].as_array().into_iter().flatten().map(|l| l.as_str().unwrap_or("").to_owned()).collect()
}

/// A tile of the key figures.
fn tile(id: &str, label: &str, value: String) -> Markup {
    html! { div { dt { (label) } dd id=(id) { (value) } } }
}

/// The trend charts of a trend report (`t`): installs by match type, events by type, revenue,
/// conversions; `prefix` keeps ids apart on one page.
fn trend_charts(t: &Value, prefix: &str, with_events: bool) -> Markup {
    let labels = labels(t);
    let unit = if t["bucket"] == "hour" { "hour" } else { "day" };
    let installs: Vec<Line<'_>> = t["installs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["total"].as_f64().unwrap_or(0.0) > 0.0)
        .map(|s| Line { name: s["key"].as_str().unwrap_or(""), values: numbers(&s["values"]) })
        .collect();
    let events: Vec<Line<'_>> = t["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| Line { name: s["key"].as_str().unwrap_or(""), values: numbers(&s["values"]) })
        .collect();
    let model = t["model"].as_str().unwrap_or("last_touch");
    let revenue = [
        Line { name: "revenue of events", values: numbers(&t["revenue"]["values"]) },
        Line { name: "revenue credited to campaigns", values: numbers(&t["conversion_revenue"]["values"]) },
    ];
    let conversions = [Line { name: "conversions credited", values: numbers(&t["conversions"]["values"]) }];
    html! {
        div.charts {
            div.chartbox {
                h3 { "Installs by match type, per " (unit) }
                @if installs.is_empty() { p.muted { "No installs in this range." } }
                @else { (charts::stacked(&format!("{prefix}installs"), &format!("Installs by match type per {unit}"), &labels, &installs, Format::Count)) }
            }
            @if with_events {
                div.chartbox {
                    h3 { "Events by type, per " (unit) }
                    @if events.is_empty() { p.muted { "No events in this range." } }
                    @else { (charts::lines(&format!("{prefix}events"), &format!("Events by type per {unit}"), &labels, &events, Format::Count)) }
                }
            }
            div.chartbox {
                h3 { "Revenue, per " (unit) }
                (charts::lines(&format!("{prefix}revenue"), &format!("Revenue per {unit}"), &labels, &revenue, Format::Decimal))
            }
            div.chartbox {
                h3 { "Conversions credited (" (model) "), per " (unit) }
                (charts::lines(&format!("{prefix}conversions"), &format!("Conversions credited per {unit}"), &labels, &conversions, Format::Decimal))
            }
        }
    }
}

/// The overview: live counters, trends with their filters, campaigns, alerts, tracking links,
/// recent events.
pub(super) async fn overview(
    state: &AppState,
    uri: &axum::http::Uri,
    id: &str,
    csrf: &str,
    actor: &str,
) -> Result<Markup, ApiError> {
    let q = Params::parse(uri.query(), &["app_id", "from", "to", "bucket", "campaign_id", "network", "model"])?;
    let (app, apps) = pick_app(state, &q)?;
    let now = state.config.clock.now();
    let trend = reports::trend_report(
        state,
        &Params::of(&pass(&q, &app, &["from", "to", "bucket", "campaign_id", "network", "model"])),
    )
    .await
    .map_err(ApiError::from);
    let mut campaign_params = pass(&q, &app, &["model"]);
    if q.get("bucket") != Some("hour") {
        campaign_params.extend(pass(&q, &app, &["from", "to"]).into_iter().skip(1));
    }
    let campaigns = reports::campaigns_report(state, &Params::of(&campaign_params)).await.map_err(ApiError::from);
    let alerts = match state.storage.report(ReportQuery::Alerts { since: now - 7 * 86_400_000, limit: 20 }).await {
        Ok(ReportRows::Alerts(a)) => a,
        Ok(_) => Vec::new(),
        Err(e) => return Err(ApiError::from(e)),
    };
    let recent = match state.storage.report(ReportQuery::RecentEvents { limit: 25 }).await {
        Ok(ReportRows::Recent(mut r)) => {
            // User ids as the app sent them (stored hashed, the raw value sealed).
            for e in &mut r {
                state.ids.reveal_event(e);
            }
            r
        }
        Ok(_) => Vec::new(),
        Err(e) => return Err(ApiError::from(e)),
    };
    state.tracking.ready(state).await?;
    let (campaign_list, mut links) = {
        let t = state.tracking.lock()?;
        let mut c: Vec<(String, String, String)> = t
            .campaigns
            .values()
            .filter(|c| c.app_id == app)
            .map(|c| (c.campaign_id.clone(), c.name.clone(), c.network.clone()))
            .collect();
        c.sort();
        let links: Vec<LinkRecord> = t.links.iter().filter(|l| l.app_id == app).map(|l| (**l).clone()).collect();
        (c, links)
    };
    let mut networks: Vec<&str> = campaign_list.iter().map(|c| c.2.as_str()).collect();
    networks.sort();
    networks.dedup();
    links.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.link_id.cmp(&b.link_id)));
    links.truncate(20);
    let mut audits = Vec::new();
    for l in &links {
        audits.push(state.storage.link_audit(l.link_id.clone()).await.map_err(ApiError::from)?);
    }
    let flash = super::take_flash(state, id);
    let live = state.live.snapshot();
    let counters = [
        ("events_per_min", "Events / min"),
        ("events", "Events accepted"),
        ("installs", "Installs"),
        ("match_rate", "Attribution match rate"),
        ("rejected_events", "Rejected events"),
        ("fraud_rejected", "Installs rejected as fraud"),
        ("burst_alerts", "Install-burst alerts"),
    ];
    let shown = |k: &str| match k {
        "match_rate" => pct(live[k].as_f64()),
        _ => live[k].to_string(),
    };
    let selected = |k: &str, v: &str| q.get(k) == Some(v);
    let filtered =
        q.get("campaign_id").is_some_and(|v| !v.is_empty()) || q.get("network").is_some_and(|v| !v.is_empty());
    let models = ["last_touch", "first_touch", "linear", "time_decay"];
    let frame = Frame { actor, csrf, app: &app, apps: &apps, path: "/dashboard", active: "overview" };
    let body = html! {
        @if let Some((ok, message)) = &flash {
            p id="flash" class=(if *ok { "ok" } else { "error" }) role="status" { (message) }
        }
        section id="live-section" {
            h2 { "Live" span id="live-state" { " (connecting…)" } }
            dl.counters {
                @for (key, label) in counters {
                    div { dt { (label) } dd id=(format!("c-{key}")) data-kind=(key) { (shown(key)) } }
                }
            }
        }
        section id="trends" {
            h2 { "Trends" }
            form.filters method="get" action="/dashboard#trends" id="trend-form" {
                input type="hidden" name="app_id" value=(app);
                (date_input("from", "From", &q))
                (date_input("to", "To", &q))
                label { "Per " select name="bucket" id="bucket" {
                    option value="day" selected[!selected("bucket", "hour")] { "day" }
                    option value="hour" selected[selected("bucket", "hour")] { "hour" }
                } }
                label { "Campaign " select name="campaign_id" id="trend-campaign" {
                    option value="" { "all" }
                    @for (cid, name, network) in &campaign_list {
                        option value=(cid) selected[selected("campaign_id", cid)] { (name) " (" (network) ")" }
                    }
                } }
                label { "Network " select name="network" id="trend-network" {
                    option value="" { "all" }
                    @for n in &networks { option value=(n) selected[selected("network", n)] { (n) } }
                } }
                label { "Model " select name="model" {
                    @for m in models { option value=(m) selected[q.get("model").unwrap_or("last_touch") == m] { (m) } }
                } }
                button type="submit" id="trend-go" { "Show" }
            }
            p.muted.hint { "Per hour: the last 48 hours unless From and To are set (two weeks at most). Events and revenue follow the user's campaign (its install's, else its first utm campaign); installs and conversions the campaign credited." }
            @match &trend {
                Ok(t) => {
                    @let total = |k: &str| t[k]["total"].as_f64().unwrap_or(0.0);
                    @let installs: i64 = t["installs"].as_array().into_iter().flatten()
                        .filter(|s| s["key"] != "rejected").map(|s| s["total"].as_i64().unwrap_or(0)).sum();
                    @let organic = t["installs"].as_array().into_iter().flatten()
                        .find(|s| s["key"] == "organic").and_then(|s| s["total"].as_i64()).unwrap_or(0);
                    @let events: i64 = t["events"].as_array().into_iter().flatten().map(|s| s["total"].as_i64().unwrap_or(0)).sum();
                    p.muted id="trend-range" { (t["labels"][0].as_str().unwrap_or("")) " – " (t["labels"].as_array().and_then(|l| l.last()).and_then(Value::as_str).unwrap_or("")) " (UTC)" }
                    dl.counters.kpis {
                        (tile("k-installs", "Installs", charts::thousands(installs)))
                        @if !filtered { (tile("k-attributed", "Attributed", pct((installs > 0).then(|| (installs - organic) as f64 / installs as f64)))) }
                        (tile("k-events", "Events", charts::thousands(events)))
                        (tile("k-revenue", "Revenue (currencies as sent)", Format::Decimal.show(total("revenue"))))
                        (tile("k-conversions", "Conversions credited", Format::Decimal.show(total("conversions"))))
                    }
                    (trend_charts(t, "trend-", true))
                }
                Err(e) => { p.error { (e.message) } }
            }
        }
        section id="campaigns" {
            @match &campaigns {
                Ok(campaigns) => {
                    h2 { "Campaigns (" (campaigns["from"].as_str().unwrap_or("")) " – " (campaigns["to"].as_str().unwrap_or("")) ", " (campaigns["model"].as_str().unwrap_or("")) ")" }
                    (campaign_table(campaigns))
                }
                Err(e) => { h2 { "Campaigns" } p.error { (e.message) } }
            }
        }
        section id="alerts" {
            h2 { "Install-burst alerts (7 days)" }
            @if alerts.is_empty() { p.muted { "None." } } @else {
                div.scroll { table { thead { tr { th { "At" } th { "Campaign" } th { "Detail" } } }
                    tbody { @for a in &alerts { tr.alert {
                        td { (when(a.at)) } td { a href=(format!("/dashboard/campaign/{}", encode(&a.campaign_id))) { (a.campaign_id) } } td { code { (a.detail.to_string()) } }
                    } } } } }
            }
        }
        section id="links" {
            h2 { "Tracking links" }
            div.forms {
                form method="post" action="/dashboard/campaigns" id="campaign-form" {
                    h3 { "New campaign" }
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="app_id" value=(app);
                    label { "Name " input type="text" name="name" required; }
                    label { "Network " input type="text" name="network" required; }
                    button type="submit" { "Create campaign" }
                }
                form method="post" action="/dashboard/links" id="link-form" {
                    h3 { "New link" }
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Campaign " select name="campaign_id" required {
                        @for (cid, name, network) in &campaign_list { option value=(cid) { (name) " (" (network) ")" } }
                    } }
                    label { "Web URL " input type="url" name="web" required placeholder="https://example.com/landing"; }
                    label { "iOS store URL " input type="url" name="ios"; }
                    label { "Android store URL " input type="url" name="android"; }
                    label { "utm_source " input type="text" name="utm_source"; }
                    label { "utm_medium " input type="text" name="utm_medium"; }
                    label { "utm_campaign " input type="text" name="utm_campaign"; }
                    button type="submit" { "Create link" }
                }
            }
            @for (l, audit) in links.iter().zip(&audits) {
                article.link data-link-id=(l.link_id) {
                    h3 { code { (link_url(state, &l.code)) } " → " (l.destinations.web) }
                    p.muted { (l.link_id) " · campaign " a href=(format!("/dashboard/campaign/{}", encode(&l.campaign_id))) { (l.campaign_id) } " · " (if l.enabled { "enabled" } else { "disabled" }) }
                    details open {
                        summary { "Audit log (" (audit.len()) ")" }
                        div.scroll { table.audit { thead { tr { th { "At" } th { "Actor" } th { "Action" } } }
                            tbody { @for a in audit { tr { td { (when(a.at)) } td { (a.actor) } td { (a.action) } } } } } }
                    }
                }
            }
        }
        section id="events" {
            h2 { "Recent events" }
            div.scroll { table id="recent-events" {
                thead { tr { th { "Received" } th { "App" } th { "Type" } th { "Anonymous id" } th { "User id" } th { "Properties" } } }
                tbody {
                    @for e in &recent {
                        tr {
                            td { (when(e.received_at)) } td { (e.app_id) } td { (e.event_type) }
                            td { (e.anonymous_id) } td { (e.user_id.as_deref().unwrap_or("")) }
                            td { code.props { (e.properties) } }
                        }
                    }
                }
            } }
        }
    };
    Ok(layout(&frame, "Overview", body))
}

fn roas(v: &Value) -> String {
    v.as_f64().map(|r| format!("{r:.2}×")).unwrap_or_else(|| "—".into())
}

/// The campaign report's table, each campaign linking to its page.
fn campaign_table(campaigns: &Value) -> Markup {
    html! {
        div.scroll { table id="campaign-table" {
            thead { tr {
                th { "Campaign" } th { "Network" } th { "Impr." } th { "Clicks" } th { "CTR" } th { "Installs" }
                th { "Install rate" } th { "Rejected" } th { "Cost" } th { "CPI" } th { "Conv." } th { "CPA" } th { "Revenue" } th { "ROAS" }
            } }
            tbody {
                @for c in campaigns["campaigns"].as_array().into_iter().flatten() {
                    @let cid = c["campaign_id"].as_str().unwrap_or("");
                    tr data-campaign-id=(cid) {
                        td { a href=(format!("/dashboard/campaign/{}", encode(cid))) { (c["name"].as_str().unwrap_or("")) } br; small { (cid) } }
                        td { (c["network"].as_str().unwrap_or("")) }
                        td.n { (c["impressions"]) } td.n { (c["clicks"]) } td.n { (pct(c["ctr"].as_f64())) }
                        td.n { (c["installs"]) } td.n { (pct(c["install_rate"].as_f64())) } td.n { (c["rejected_installs"]) }
                        td.n { (money(&c["cost"])) " " (c["currency"].as_str().unwrap_or("")) }
                        td.n.cpi { (money(&c["cpi"])) } td.n { (money(&c["conversions"])) } td.n { (money(&c["cpa"])) }
                        td.n { (money(&c["revenue"])) } td.n { (roas(&c["roas"])) }
                    }
                }
            }
        } }
    }
}

/// `GET /dashboard/campaign/{id}[?from=…&to=…]`: one campaign — its figures, trend, links,
/// metrics under every model, fraud rejections by rule.
pub(super) async fn campaign(
    state: &AppState,
    campaign_id: &str,
    uri: &axum::http::Uri,
    csrf: &str,
    actor: &str,
) -> Result<Markup, ApiError> {
    let q = Params::parse(uri.query(), &["from", "to"])?;
    let range = pass(&q, "", &["from", "to"]).into_iter().skip(1).collect::<Vec<_>>();
    let detail = reports::campaign_detail(state, campaign_id, &Params::of(&range)).await?;
    let app = detail["app_id"].as_str().unwrap_or("").to_owned();
    let mut trend_params = range.clone();
    trend_params.push(("app_id", app.clone()));
    trend_params.push(("campaign_id", campaign_id.to_owned()));
    let trend = reports::trend_report(state, &Params::of(&trend_params)).await.map_err(ApiError::from);
    let (_, apps) = pick_app(state, &Params::of(&[("app_id", app.clone())]))?;
    let last = &detail["models"]["last_touch"];
    let currency = last["currency"].as_str().unwrap_or("");
    let name = detail["name"].as_str().unwrap_or("");
    let models = ["last_touch", "first_touch", "linear", "time_decay"];
    let rejections: Vec<(String, f64, String)> = detail["rejections"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let n = r["installs"].as_f64().unwrap_or(0.0);
            (r["rule"].as_str().unwrap_or("").to_owned(), n, if n == 1.0 { "install" } else { "installs" }.to_owned())
        })
        .collect();
    let frame = Frame { actor, csrf, app: &app, apps: &apps, path: "/dashboard", active: "overview" };
    let body = html! {
        section id="campaign" data-campaign-id=(campaign_id) {
            p.crumbs { a href=(format!("/dashboard?app_id={}", encode(&app))) { "Overview" } " › Campaign" }
            h2 id="campaign-name" { (name) " " small.muted { (detail["network"].as_str().unwrap_or("")) " · " (campaign_id) } }
            form.filters method="get" action=(format!("/dashboard/campaign/{}", encode(campaign_id))) {
                (date_input("from", "From", &q))
                (date_input("to", "To", &q))
                button type="submit" { "Show" }
            }
            p.muted { (detail["from"].as_str().unwrap_or("")) " – " (detail["to"].as_str().unwrap_or("")) " (UTC days)" }
            @if last.is_null() { p.muted { "No activity in this range yet." } }
            dl.counters.kpis {
                (tile("k-clicks", "Clicks", last["clicks"].as_i64().map(charts::thousands).unwrap_or_else(|| "0".into())))
                (tile("k-installs", "Installs", last["installs"].as_i64().map(charts::thousands).unwrap_or_else(|| "0".into())))
                (tile("k-rejected", "Rejected as fraud", last["rejected_installs"].as_i64().map(charts::thousands).unwrap_or_else(|| "0".into())))
                (tile("k-cost", "Cost", format!("{} {currency}", money(&last["cost"]))))
                (tile("k-cpi", "CPI", format!("{} {currency}", money(&last["cpi"]))))
                (tile("k-roas", "ROAS (last touch)", roas(&last["roas"])))
            }
        }
        section id="campaign-trend" {
            h2 { "Trend" }
            @match &trend {
                Ok(t) => { (trend_charts(t, "campaign-", false)) }
                Err(e) => { p.error { (e.message) } }
            }
        }
        section id="campaign-models" {
            h2 { "Under each attribution model" }
            div.scroll { table id="model-table" {
                thead { tr { th { "Model" } th { "Installs" } th { "Cost" } th { "CPI" } th { "Conversions" } th { "CPA" } th { "Revenue" } th { "ROAS" } } }
                tbody {
                    @for m in models {
                        @let r = &detail["models"][m];
                        tr data-model=(m) {
                            th { (m) } td.n { (r["installs"]) } td.n { (money(&r["cost"])) } td.n.cpi { (money(&r["cpi"])) }
                            td.n { (money(&r["conversions"])) } td.n { (money(&r["cpa"])) } td.n { (money(&r["revenue"])) } td.n { (roas(&r["roas"])) }
                        }
                    }
                }
            } }
            p.muted { "CPI is the same under every model (installs are credited by the attribution waterfall); conversions, CPA, revenue and ROAS follow the model." }
        }
        section id="campaign-links" {
            h2 { "Links" }
            div.scroll { table id="link-table" {
                thead { tr { th { "Link" } th { "Destination" } th { "State" } th { "Impr." } th { "Clicks" } th { "Installs" } th { "Install rate" } th { "Rejected" } } }
                tbody {
                    @for l in detail["links"].as_array().into_iter().flatten() {
                        @let (clicks, installs) = (l["clicks"].as_f64().unwrap_or(0.0), l["installs"].as_f64().unwrap_or(0.0));
                        tr data-link-id=(l["link_id"].as_str().unwrap_or("")) {
                            td { code { (l["url"].as_str().unwrap_or("")) } br; small { (l["link_id"].as_str().unwrap_or("")) } }
                            td { (l["destinations"]["web"].as_str().unwrap_or("")) }
                            td { (if l["enabled"] == true { "enabled" } else { "disabled" }) }
                            td.n { (l["impressions"]) } td.n.clicks { (l["clicks"]) } td.n.installs { (l["installs"]) }
                            td.n { (pct((clicks > 0.0).then(|| installs / clicks))) } td.n { (l["rejected_installs"]) }
                        }
                    }
                }
            } }
        }
        section id="campaign-fraud" {
            h2 { "Rules that fired on installs rejected as fraud" }
            @if rejections.is_empty() { p.muted { "None in this range." } } @else {
                (charts::bars("fraud-chart", "Rules that fired on rejected installs", &rejections, Format::Count))
                div.scroll { table id="fraud-table" { thead { tr { th { "Rule" } th { "Rejected installs" } } }
                    tbody { @for (rule, n, _) in &rejections { tr { td { (rule) } td.n { (Format::Count.show(*n)) } } } } } }
                p.muted { "An install can trip several rules; each rule that fired on it (rejecting or only flagging) counts it. Installs rejected before this version of the server name no campaign and are not counted here." }
            }
        }
    };
    Ok(layout(&frame, &format!("Campaign {name}"), body))
}

/// `GET /dashboard/journeys`: the funnel, the retention heatmap and the paths to a conversion
/// over one range.
pub(super) async fn journeys(
    state: &AppState,
    uri: &axum::http::Uri,
    csrf: &str,
    actor: &str,
) -> Result<Markup, ApiError> {
    let q = Params::parse(uri.query(), &["app_id", "steps", "from", "to", "within", "conversion", "max_steps"])?;
    let (app, apps) = pick_app(state, &q)?;
    let now = state.config.clock.now();
    let steps = q.get("steps").unwrap_or("app_opened,purchase").to_owned();
    let mut funnel_params = pass(&q, &app, &["from", "to", "within"]);
    funnel_params.push(("steps", steps.clone()));
    let funnel = reports::funnel_report(state, &Params::of(&funnel_params)).await.map_err(ApiError::from);
    // Cohorts of the range (the last 14 days by default), days 1 to 14 after.
    let mut retention_params = pass(&q, &app, &["from", "to"]);
    if q.get("from").is_none() {
        retention_params.push((
            "from",
            date_text(day_of(q.get("to").and_then(|t| parse_time("to", t, true).ok()).unwrap_or(now)) - 13),
        ));
    }
    retention_params.push(("days", (1..=14).map(|d| d.to_string()).collect::<Vec<_>>().join(",")));
    let retention = reports::retention_report(state, &Params::of(&retention_params)).await.map_err(ApiError::from);
    let conversion = q.get("conversion").unwrap_or("purchase").to_owned();
    let mut path_params = pass(&q, &app, &["from", "to", "max_steps"]);
    path_params.push(("conversion", conversion.clone()));
    let paths = reports::paths_report(state, &Params::of(&path_params)).await.map_err(ApiError::from);
    let frame = Frame { actor, csrf, app: &app, apps: &apps, path: "/dashboard/journeys", active: "journeys" };
    let body = html! {
        section id="journey-range" {
            h2 { "Journeys" }
            form.filters method="get" action="/dashboard/journeys" id="journey-form" {
                input type="hidden" name="app_id" value=(app);
                (date_input("from", "From", &q))
                (date_input("to", "To", &q))
                label { "Funnel steps " input type="text" name="steps" id="steps" value=(steps) size="36"; }
                label { "Within " input type="text" name="within" placeholder="30d" value=(q.get("within").unwrap_or("")) size="6"; }
                label { "Paths to " input type="text" name="conversion" id="conversion" value=(conversion) size="14"; }
                label { "Steps " input type="number" name="max_steps" min="1" max="20" value=(q.get("max_steps").unwrap_or("5")); }
                button type="submit" id="funnel-go" { "Show" }
            }
        }
        section id="funnel" {
            h2 { "Funnel" }
            @match &funnel {
                Ok(f) => {
                    @let list = f["steps"].as_array().cloned().unwrap_or_default();
                    (funnel_chart(&list))
                    div.scroll { table id="funnel-table" { thead { tr { th { "Step" } th { "Users" } th { "Of first step" } } }
                        tbody { @for s in &list { tr {
                            td { (s["type"].as_str().unwrap_or("")) } td.n { (s["users"]) } td.n { (pct(s["share"].as_f64())) }
                        } } } } }
                }
                Err(e) => { p.error { (e.message) } }
            }
        }
        section id="retention" {
            h2 { "Retention by install day" }
            @match &retention {
                Ok(r) => { (heatmap(r)) }
                Err(e) => { p.error { (e.message) } }
            }
        }
        section id="paths" {
            h2 { "Most common paths to " (conversion) }
            @match &paths {
                Ok(p) => { (path_list(p)) }
                Err(e) => { p.error { (e.message) } }
            }
        }
    };
    Ok(layout(&frame, "Journeys", body))
}

/// Cohort × day, each cell coloured by its share (classes `shade0`–`shade10`), its numbers in
/// the cell and its tooltip; a table, so screen readers read it as one.
fn heatmap(r: &Value) -> Markup {
    let days: Vec<i64> = r["days"].as_array().into_iter().flatten().filter_map(Value::as_i64).collect();
    html! {
        p.muted { "Share of each install-day cohort active on day N after. Empty cells: that day has not come yet." }
        div.scroll {
            table.heatmap id="retention-heatmap" {
                caption.sr { "Retention: rows are install-day cohorts, columns days after install, cells the share of the cohort active that day." }
                thead { tr { th scope="col" { "Cohort" } th scope="col" { "Users" } @for d in &days { th scope="col" { "Day " (d) } } } }
                tbody {
                    @for c in r["cohorts"].as_array().into_iter().flatten() {
                        @let date = c["date"].as_str().unwrap_or("");
                        tr {
                            th scope="row" { (date) } td.n { (c["users"]) }
                            @for cell in c["retention"].as_array().into_iter().flatten() {
                                @let share = cell["share"].as_f64();
                                @let shade = share.map(|s| (s * 10.0).round() as i64).unwrap_or(-1).clamp(-1, 10);
                                td class=(format!("n cell shade{shade}")) data-day=(cell["day"]) data-share=(share.map(|s| format!("{s:.4}")).unwrap_or_default())
                                    title=(match share { Some(s) => format!("{date}, day {}: {} of {} ({:.1}%)", cell["day"], cell["users"], c["users"], s * 100.0), None => format!("{date}, day {}: not yet", cell["day"]) }) {
                                    @if share.is_some() { (pct(share)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The paths report as a ranked list: each path as steps with arrows, a bar of its share.
fn path_list(p: &Value) -> Markup {
    let total = p["conversions"].as_u64().unwrap_or(0);
    let list: Vec<&Value> = p["paths"].as_array().into_iter().flatten().collect();
    html! {
        p.muted { (charts::thousands(total as i64)) " conversions in the range; the steps before each in its session." }
        @if list.is_empty() { p.muted { "No conversions of this type in the range." } } @else {
            ol.paths id="path-list" {
                @for (i, path) in list.iter().enumerate() {
                    @let share = path["share"].as_f64().unwrap_or(0.0);
                    li data-rank=(i + 1) data-share=(format!("{share:.4}")) {
                        span.steps {
                            @for (j, step) in path["path"].as_array().into_iter().flatten().enumerate() {
                                @if j > 0 { span.arrow aria-hidden="true" { " → " } }
                                span.step { (step.as_str().unwrap_or("")) }
                            }
                        }
                        span.share {
                            meter min="0" max="1" value=(format!("{share:.4}")) { (pct(Some(share))) }
                            " " (pct(Some(share))) " · " (path["conversions"])
                        }
                    }
                }
            }
        }
    }
}

/// `GET /dashboard/attribution[?by=…&q=…]`: an install's decision as the audit stores it, and
/// conversion credit.
pub(super) async fn explorer(
    state: &AppState,
    uri: &axum::http::Uri,
    csrf: &str,
    actor: &str,
) -> Result<Markup, ApiError> {
    let q = Params::parse(uri.query(), &["app_id", "by", "q"])?;
    let (app, apps) = pick_app(state, &q)?;
    let by = q.get("by").unwrap_or("anonymous_id");
    let value = q.get("q").unwrap_or("").trim();
    let found = if value.is_empty() {
        None
    } else {
        Some(install::explore(state, &app, by, value).await.map_err(ApiError::from))
    };
    state.tracking.ready(state).await?;
    let names: HashMap<String, String> = {
        let t = state.tracking.lock()?;
        t.campaigns.values().filter(|c| c.app_id == app).map(|c| (c.campaign_id.clone(), c.name.clone())).collect()
    };
    let kinds = [
        ("anonymous_id", "Anonymous id"),
        ("event_id", "Event id (install or conversion)"),
        ("device_id", "Device id (IDFA, GAID, IDFV, Android id)"),
    ];
    let frame = Frame { actor, csrf, app: &app, apps: &apps, path: "/dashboard/attribution", active: "attribution" };
    let body = html! {
        section id="explorer" {
            h2 { "Attribution explorer" }
            p.muted { "Why was an install attributed, and who got the credit for a conversion? The decision as it was recorded: every candidate click, its score and evidence, the rules that fired." }
            form.filters method="get" action="/dashboard/attribution" id="explore-form" {
                input type="hidden" name="app_id" value=(app);
                label { "Look up by " select name="by" id="explore-by" {
                    @for (k, label) in kinds { option value=(k) selected[by == k] { (label) } }
                } }
                label { "Value " input type="text" name="q" id="explore-q" value=(value) size="40" required; }
                button type="submit" id="explore-go" { "Look up" }
            }
        }
        @match &found {
            None => {}
            Some(Err(e)) => { section { p.error { (e.message) } } }
            Some(Ok(v)) => {
                @match v.get("install").filter(|i| !i.is_null()) {
                    Some(i) => { (install_view(i, &names)) }
                    None => { section id="decision" { p.muted { "No install found for this " (by) "." } } }
                }
                (credit_view(&v["credits"], &names))
            }
        }
    };
    Ok(layout(&frame, "Attribution explorer", body))
}

/// A JSON value as text for a table cell.
fn text(v: &Value) -> String {
    match v {
        Value::Null => "—".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.3}"),
            _ => n.to_string(),
        },
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(", "),
        Value::Object(_) => v.to_string(),
    }
}

/// An object as a definition list (nested objects as their JSON).
fn facts(id: &str, v: &Value) -> Markup {
    html! {
        dl.facts id=(id) {
            @for (k, x) in v.as_object().into_iter().flatten() {
                div { dt { (k.replace('_', " ")) } dd { (text(x)) } }
            }
        }
    }
}

/// A campaign by its name, its id under it.
fn campaign_cell(names: &HashMap<String, String>, id: &Value) -> Markup {
    let id = id.as_str().unwrap_or("");
    html! {
        @match names.get(id) {
            Some(name) => { (name) br; small.muted { (id) } }
            None => { (if id.is_empty() { "—" } else { id }) }
        }
    }
}

fn install_view(i: &Value, names: &HashMap<String, String>) -> Markup {
    let result = &i["result"];
    let audit = &i["audit"];
    let install_ts = i["install_ts"].as_i64().unwrap_or(0);
    let verdict = if result["attributed"] == true {
        format!(
            "Attributed to {} ({}) by {}{}",
            {
                let id = result["campaign_id"].as_str().unwrap_or("");
                match names.get(id) {
                    Some(name) => format!("{name} [{id}]"),
                    None => format!("campaign {id}"),
                }
            },
            result["network"].as_str().unwrap_or(""),
            result["match_type"].as_str().unwrap_or(""),
            match result["match_type"].as_str() {
                Some("fingerprint") => format!(", confidence {:.2}", result["confidence"].as_f64().unwrap_or(0.0)),
                _ => String::new(),
            }
        )
    } else {
        audit["choice"].as_str().unwrap_or("organic").to_owned()
    };
    let candidates: Vec<&Value> = audit["candidates"].as_array().into_iter().flatten().collect();
    html! {
        section id="decision" data-event-id=(i["event_id"].as_str().unwrap_or("")) {
            h2 { "Install " code { (i["event_id"].as_str().unwrap_or("")) } }
            p.verdict id="verdict" class=(if result["attributed"] == true { "ok" } else { "muted" }) { (verdict) }
            @if let Some(reason) = result["reason"].as_str() { p.muted { "Reason: " (reason) } }
            dl.facts id="install-facts" {
                div { dt { "Anonymous id" } dd { (text(&i["anonymous_id"])) } }
                div { dt { "Platform" } dd { (text(&i["platform"])) } }
                div { dt { "Kind" } dd { (text(&i["kind"])) } }
                div { dt { "Installed" } dd { (when(install_ts)) " UTC" } }
                div { dt { "Received" } dd { (when(i["received_at"].as_i64().unwrap_or(0))) " UTC" } }
                div { dt { "Fraud flags" } dd { @if result["fraud"]["flags"].as_array().is_none_or(|f| f.is_empty()) { "none" } @else { (text(&result["fraud"]["flags"])) } @if result["fraud"]["rejected"] == true { " (rejected)" } } }
            }
            h3 { "Signals" }
            (facts("signals", &audit["signals"]))
            @if let Some(fp) = audit.get("fingerprint").filter(|f| !f.is_null()) {
                h3 { "Fingerprint step" }
                dl.facts id="fingerprint-summary" {
                    div { dt { "verdict" } dd { (text(&fp["verdict"])) } }
                    div { dt { "confidence" } dd { (text(&fp["confidence"])) } }
                    div { dt { "threshold" } dd { (text(&audit["fingerprint_threshold"])) } }
                    div { dt { "look-alike devices on the network" } dd { (text(&fp["lookalikes"])) } }
                    div { dt { "organic weight" } dd { (text(&fp["organic_weight"])) } }
                    div { dt { "campaign shares" } dd {
                        @for (k, c) in fp["campaigns"].as_array().into_iter().flatten().enumerate() {
                            @if k > 0 { "; " }
                            @let id = c["campaign_id"].as_str().unwrap_or("");
                            (names.get(id).map_or(id, String::as_str)) " " (pct(c["share"].as_f64()))
                        }
                    } }
                }
            }
            h3 { "Candidates (" (candidates.len()) ")" }
            @if candidates.is_empty() { p.muted { "No click or impression was in a window for this install." } } @else {
                div.scroll { table id="candidates" {
                    thead { tr {
                        th { "" } th { "Match" } th { "Campaign" } th { "Network" } th { "Touch" } th { "Before install" }
                        th { "Score" } th { "Eligible" } th { "Evidence" }
                    } }
                    tbody {
                        @for c in &candidates {
                            tr class=(if c["chosen"] == true { "chosen" } else { "" }) data-click-id=(c["click_id"].as_str().unwrap_or("")) data-match=(c["match_type"].as_str().unwrap_or("")) {
                                td { @if c["chosen"] == true { span title="chosen" { "★" } span.sr { "chosen" } } }
                                td { (text(&c["match_type"])) }
                                td { (campaign_cell(names, &c["campaign_id"])) }
                                td { (text(&c["network"])) }
                                td { (when(c["time"].as_i64().unwrap_or(0))) }
                                td.n { (duration(install_ts - c["time"].as_i64().unwrap_or(install_ts))) }
                                td.n { (text(&c["score"])) }
                                td { @if c["eligible"] == true { "yes" } @else { "no: " (c["reason"].as_str().unwrap_or("")) } }
                                td { @if let Some(e) = c.get("evidence").filter(|e| !e.is_null()) { (facts("evidence", e)) } }
                            }
                        }
                    }
                } }
                @if audit["omitted_candidates"].as_u64().unwrap_or(0) > 0 {
                    p.muted { (text(&audit["omitted_candidates"])) " more candidates were not kept in the audit." }
                }
            }
            h3 { "Rules that fired" }
            @let rules: Vec<&Value> = audit["rules_fired"].as_array().into_iter().flatten().collect();
            @if rules.is_empty() { p.muted { "None." } } @else {
                ul id="rules" { @for r in &rules { li { strong { (text(&r["rule"])) } " (" (text(&r["policy"])) "): " (text(&r["detail"])) } } }
            }
            details {
                summary { "Windows and fraud settings used" }
                (facts("windows", &audit["windows_ms"]))
                code.props { (audit["fraud_rules"].to_string()) }
            }
        }
    }
}

/// `3h 05m`, `42s`.
fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

fn credit_view(credits: &Value, names: &HashMap<String, String>) -> Markup {
    let rows: Vec<&Value> = credits.as_array().into_iter().flatten().collect();
    html! {
        section id="credit" {
            h2 { "Conversion credit" }
            @if rows.is_empty() { p.muted { "No conversion of this device or event was credited to a campaign." } } @else {
                p.muted { "Each conversion's credit split between the campaigns that touched the person, under each model." }
                div.scroll { table id="credit-table" {
                    thead { tr { th { "Conversion" } th { "Type" } th { "At" } th { "Model" } th { "Campaign" } th { "Network" } th { "Touch" } th { "Credit" } th { "Revenue" } } }
                    tbody {
                        @for c in &rows {
                            tr data-model=(c["model"].as_str().unwrap_or("")) {
                                td { code { (text(&c["event_id"])) } } td { (text(&c["event_type"])) } td { (when(c["ts"].as_i64().unwrap_or(0))) }
                                td { (text(&c["model"])) } td { (campaign_cell(names, &c["campaign_id"])) } td { (text(&c["network"])) }
                                td { (c["touch_ts"].as_i64().map(when).unwrap_or_default()) }
                                td.n { (pct(c["credit"].as_f64())) } td.n { (money(&c["revenue"])) " " (c["currency"].as_str().unwrap_or("")) }
                            }
                        }
                    }
                } }
            }
        }
    }
}
