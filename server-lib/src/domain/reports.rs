//! Reports over the star schema (`docs/reports.md`): the pure computations ([`funnel`],
//! [`retention`], [`paths`], [`campaign_metrics`]) over the rows a store returns, and the
//! parsing of report parameters. No I/O: `service::reports` reads the rows.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::domain::config::AppConfig;
use crate::domain::error::Refusal;
use crate::domain::records::{CampaignDay, FactRow, TrendRows, UserRow};

/// Milliseconds in a day; report days are UTC days numbered from the Unix epoch.
pub const DAY_MS: i64 = 86_400_000;

/// The UTC day (days since 1970-01-01) of a Unix-ms time.
pub fn day_of(ts: i64) -> i64 {
    ts.div_euclid(DAY_MS)
}

/// `YYYY-MM-DD` of a day key.
pub fn date_text(day: i64) -> String {
    chrono::DateTime::from_timestamp_millis(day * DAY_MS).map(|d| d.format("%Y-%m-%d").to_string()).unwrap_or_default()
}

/// Most funnel steps.
pub const MAX_STEPS: usize = 10;

/// Longest report range, in days.
pub const MAX_RANGE_DAYS: i64 = 366;

/// Default funnel conversion window: 30 days.
pub const DEFAULT_WITHIN: i64 = 30 * DAY_MS;

/// The person a row belongs to: the user id when one is known, else the device's anonymous id.
fn person(anonymous_id: &str, user_id: Option<&str>) -> String {
    match user_id {
        Some(u) => format!("u:{u}"),
        None => format!("a:{anonymous_id}"),
    }
}

/// Users who did `steps` in order, the first in `[from, to]` and each later one at most
/// `within` ms after the first. `rows` are in time order. Returns the count per step.
pub fn funnel(rows: &[FactRow], steps: &[String], from: i64, to: i64, within: i64) -> Vec<u64> {
    let mut by_person: BTreeMap<String, Vec<(i64, &str)>> = BTreeMap::new();
    for r in rows {
        by_person.entry(person(&r.anonymous_id, r.user_id.as_deref())).or_default().push((r.ts, &r.event_type));
    }
    let mut counts = vec![0u64; steps.len()];
    for events in by_person.values() {
        let mut best = 0;
        for (i, &(start, kind)) in events.iter().enumerate() {
            if best == steps.len() {
                break;
            }
            if kind != steps[0] || start < from || start > to {
                continue;
            }
            let mut depth = 1;
            for &(ts, kind) in &events[i + 1..] {
                if depth == steps.len() || ts - start > within {
                    break;
                }
                if kind == steps[depth] {
                    depth += 1;
                }
            }
            best = best.max(depth);
        }
        for c in counts.iter_mut().take(best) {
            *c += 1;
        }
    }
    counts
}

/// One install-day cohort.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cohort {
    pub date: String,
    pub users: u64,
    pub retention: Vec<RetentionCell>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetentionCell {
    pub day: i64,
    /// Users of the cohort active on that day; `None` when the day has not come yet.
    pub users: Option<u64>,
    pub share: Option<f64>,
}

/// Cohorts by install day (first-seen day for users without an install) in
/// `[from_day, to_day]`, with the share of each cohort active exactly `days` later. `today` is
/// the last day with data; later cells are `None`.
pub fn retention(users: &[UserRow], from_day: i64, to_day: i64, days: &[i64], today: i64) -> Vec<Cohort> {
    let mut people: HashMap<String, (i64, HashSet<i64>)> = HashMap::new();
    for u in users {
        let entry = people.entry(person(&u.anonymous_id, u.user_id.as_deref())).or_insert((u.start, HashSet::new()));
        entry.0 = entry.0.min(u.start);
        entry.1.extend(u.active_days.iter().copied());
    }
    let mut counts: BTreeMap<i64, CohortCount> = BTreeMap::new();
    for (start, active) in people.values() {
        let day = day_of(*start);
        if day < from_day || day > to_day {
            continue;
        }
        let c = counts.entry(day).or_insert_with(|| CohortCount { users: 0, active: vec![0; days.len()] });
        c.users += 1;
        for (k, d) in c.active.iter_mut().zip(days) {
            *k += u64::from(active.contains(&(day + d)));
        }
    }
    cohorts(&counts, from_day, to_day, days, today)
}

/// A cohort's size and, per asked day offset, how many of it were active that day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CohortCount {
    pub users: u64,
    pub active: Vec<u64>,
}

/// The retention report's cohorts, one per day in `[from_day, to_day]` (empty ones too), from
/// the counts of each cohort that has people (`active` in the order of `days`); cells after
/// `today` are `None`.
pub fn cohorts(
    counts: &BTreeMap<i64, CohortCount>,
    from_day: i64,
    to_day: i64,
    days: &[i64],
    today: i64,
) -> Vec<Cohort> {
    (from_day..=to_day)
        .map(|day| {
            let c = counts.get(&day);
            let n = c.map_or(0, |c| c.users);
            let retention = days
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if day + d > today {
                        return RetentionCell { day: d, users: None, share: None };
                    }
                    let k = c.and_then(|c| c.active.get(i).copied()).unwrap_or(0);
                    RetentionCell { day: d, users: Some(k), share: (n > 0).then(|| k as f64 / n as f64) }
                })
                .collect();
            Cohort { date: date_text(day), users: n, retention }
        })
        .collect()
}

/// A path to a conversion and how often it was taken.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathCount {
    pub path: Vec<String>,
    pub conversions: u64,
    pub share: f64,
}

/// The most common event paths to `conversion`: for each conversion in `[from, to]`, the event
/// types before it in its session (since the session's previous conversion), repeats of one
/// type in a row collapsed, the last `max_steps` kept (the conversion included). `rows` are
/// ordered by session, then time. Returns the top `limit` and the number of conversions.
pub fn paths(
    rows: &[FactRow],
    conversion: &str,
    from: i64,
    to: i64,
    max_steps: usize,
    limit: usize,
) -> (Vec<PathCount>, u64) {
    let mut counts: HashMap<Vec<String>, u64> = HashMap::new();
    let mut total = 0u64;
    let mut current: Option<&str> = None;
    let mut trail: Vec<&str> = Vec::new();
    for r in rows {
        if current != Some(r.session_key.as_str()) {
            current = Some(&r.session_key);
            trail.clear();
        }
        if trail.last() != Some(&r.event_type.as_str()) {
            trail.push(&r.event_type);
        }
        if r.event_type == conversion {
            if r.ts >= from && r.ts <= to {
                let keep = trail.len().saturating_sub(max_steps.max(1));
                *counts.entry(trail[keep..].iter().map(|s| s.to_string()).collect()).or_default() += 1;
                total += 1;
            }
            trail.clear();
        }
    }
    let mut list: Vec<(Vec<String>, u64)> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let out = list
        .into_iter()
        .take(limit)
        .map(|(path, n)| PathCount { path, conversions: n, share: n as f64 / total as f64 })
        .collect();
    (out, total)
}

/// A campaign's performance over a report's days: its sums, and the ratios between them
/// (`null` where the divisor is zero or the cost unknown).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignMetrics {
    /// Impressions, clicks, installs, conversions credited under the report's model (fractional
    /// under the linear and time-decay models), revenue and cost.
    #[serde(flatten)]
    pub sums: CampaignDay,
    /// clicks / impressions.
    pub ctr: Option<f64>,
    /// installs / clicks.
    pub install_rate: Option<f64>,
    /// cost / installs.
    pub cpi: Option<f64>,
    /// cost / conversions.
    pub cpa: Option<f64>,
    /// revenue / cost.
    pub roas: Option<f64>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

pub fn campaign_metrics(day: &CampaignDay) -> CampaignMetrics {
    let cost = day.cost;
    CampaignMetrics {
        sums: day.clone(),
        ctr: ratio(day.clicks as f64, day.impressions as f64),
        install_rate: ratio(day.installs as f64, day.clicks as f64),
        cpi: cost.and_then(|c| ratio(c, day.installs as f64)),
        cpa: cost.and_then(|c| ratio(c, day.conversions)),
        roas: cost.and_then(|c| ratio(day.revenue, c)),
    }
}

/// A report's query string.
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parameters given by the server itself (the dashboard).
    pub fn of(pairs: &[(&str, String)]) -> Self {
        Params(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    /// Parses a query string, refusing parameters not in `allowed` and repeated ones.
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Self, Refusal> {
        let mut map = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                return Err(Refusal::invalid(
                    "invalid_parameter",
                    format!("unknown parameter {k:?}; this report takes {}", allowed.join(", ")),
                ));
            }
            if map.insert(k.to_string(), v.to_string()).is_some() {
                return Err(Refusal::invalid("invalid_parameter", format!("{k} is given twice")));
            }
        }
        Ok(Params(map))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// `from`/`to` as Unix ms: `to` defaults to now, `from` to 30 days before `to`. A date
    /// (`YYYY-MM-DD`, UTC) means the whole day: `from` its start, `to` its end.
    pub fn range(&self, now: i64) -> Result<(i64, i64), Refusal> {
        let to = match self.get("to") {
            Some(t) => parse_time("to", t, true)?,
            None => now,
        };
        let from = match self.get("from") {
            Some(f) => parse_time("from", f, false)?,
            // The 30 UTC days ending with `to`'s day.
            None => (day_of(to) - 29) * DAY_MS,
        };
        if from > to {
            return Err(Refusal::invalid("invalid_parameter", "from is after to"));
        }
        if day_of(to) - day_of(from) >= MAX_RANGE_DAYS {
            return Err(Refusal::invalid(
                "invalid_parameter",
                format!("the range is longer than {MAX_RANGE_DAYS} days"),
            ));
        }
        Ok((from, to))
    }

    /// The app: `app_id` when given (it must exist), else the only configured app.
    pub fn app(&self, apps: &HashMap<String, AppConfig>) -> Result<String, Refusal> {
        match self.get("app_id") {
            Some(app) if apps.contains_key(app) => Ok(app.to_owned()),
            Some(app) => Err(Refusal::invalid("unknown_app", format!("no app {app:?} is configured"))),
            None if apps.len() == 1 => Ok(apps.keys().next().cloned().unwrap_or_default()),
            None => Err(Refusal::invalid("invalid_parameter", "app_id is required when several apps exist")),
        }
    }

    pub fn number(&self, key: &str, default: usize, max: usize) -> Result<usize, Refusal> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(Refusal::invalid("invalid_parameter", format!("{key} must be an integer from 1 to {max}"))),
            },
        }
    }
}

/// A time parameter: Unix ms, RFC 3339, or a UTC date (`YYYY-MM-DD`; its last millisecond
/// when `end`).
pub fn parse_time(name: &str, text: &str, end: bool) -> Result<i64, Refusal> {
    let bad = || {
        Refusal::invalid(
            "invalid_parameter",
            format!("{name} must be a date (YYYY-MM-DD), an RFC 3339 time or Unix milliseconds"),
        )
    };
    if let Ok(ms) = text.parse::<i64>() {
        return (0..=253_402_300_799_999).contains(&ms).then_some(ms).ok_or_else(bad);
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let start = date.and_hms_opt(0, 0, 0).ok_or_else(bad)?.and_utc().timestamp_millis();
        return Ok(if end { start + DAY_MS - 1 } else { start });
    }
    chrono::DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis()).map_err(|_| bad())
}

/// A duration: `90s`, `30m`, `24h`, `7d`, or milliseconds.
pub fn parse_duration(name: &str, text: &str) -> Result<i64, Refusal> {
    let bad = || Refusal::invalid("invalid_parameter", format!("{name} must be a duration such as 30m, 24h or 7d"));
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: i64 = number.parse().map_err(|_| bad())?;
    let unit = match unit {
        "" | "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => DAY_MS,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).filter(|d| *d > 0 && *d <= 366 * DAY_MS).ok_or_else(bad)
}

/// An event type given as a parameter.
pub fn check_type(name: &str, t: &str) -> Result<String, Refusal> {
    let t = t.trim();
    if t.is_empty() || t.chars().count() > 128 || t.chars().any(char::is_control) {
        return Err(Refusal::invalid(
            "invalid_parameter",
            format!("{name}: event types are 1 to 128 characters without control characters"),
        ));
    }
    Ok(t.to_owned())
}

/// `POST /v1/campaigns/{id}/cost` `{"date", "amount", "currency"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostBody {
    pub date: String,
    pub amount: f64,
    pub currency: String,
}

impl CostBody {
    /// The day key and the upper-case currency, or why the cost is refused.
    pub fn checked(&self) -> Result<(i64, String), Refusal> {
        let date = chrono::NaiveDate::parse_from_str(&self.date, "%Y-%m-%d")
            .map_err(|_| Refusal::invalid("invalid_field", "date must be YYYY-MM-DD"))?;
        let day = date.and_hms_opt(0, 0, 0).map(|d| day_of(d.and_utc().timestamp_millis())).unwrap_or_default();
        if !self.amount.is_finite() || self.amount < 0.0 || self.amount > 1e12 {
            return Err(Refusal::invalid("invalid_field", "amount must be a number from 0 to 10^12"));
        }
        let currency = self.currency.trim().to_ascii_uppercase();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Refusal::invalid("invalid_field", "currency must be an ISO 4217 code such as USD"));
        }
        Ok((day, currency))
    }
}

// ---------------------------------------------------------------------------------------------
// Trends (issue 26): series over days or hours.

/// Milliseconds in an hour: the hourly trend's bucket.
pub const HOUR_MS: i64 = 3_600_000;

/// Most hourly buckets in one trend (two weeks).
pub const MAX_HOURLY_BUCKETS: i64 = 14 * 24;

/// Most event types drawn as their own series; the rest are summed as `(other)`.
pub const MAX_EVENT_SERIES: usize = 8;

/// The install series, in the order they are drawn: the match types, then rejected installs.
pub const INSTALL_SERIES: [&str; 7] =
    ["click_id", "referrer", "device_id", "fingerprint", "view_through", "organic", "rejected"];

/// One series of a trend: a key (an event type, a match type) and one value per bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series<T> {
    pub key: String,
    pub values: Vec<T>,
    pub total: T,
}

/// A trend: the buckets' start times and labels, and the series over them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    /// `day` or `hour`.
    pub bucket: &'static str,
    /// Each bucket's start (Unix ms).
    pub starts: Vec<i64>,
    /// `YYYY-MM-DD` (days) or `YYYY-MM-DD HH:00` (hours, UTC).
    pub labels: Vec<String>,
    /// Events by type, the most frequent first (at most [`MAX_EVENT_SERIES`], then `(other)`).
    pub events: Vec<Series<i64>>,
    /// Installs by match type ([`INSTALL_SERIES`]), every one present.
    pub installs: Vec<Series<i64>>,
    /// Revenue of the events (their `revenue` property), by the user's campaign.
    pub revenue: Series<f64>,
    /// Conversions credited to campaigns under the report's model (fractional under linear
    /// and time-decay).
    pub conversions: Series<f64>,
    /// The revenue those conversions carried, by credit.
    pub conversion_revenue: Series<f64>,
}

/// Rounds money and credit to the cent, as the campaign report does.
fn cents(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn series<T: Copy + Default + std::ops::AddAssign>(key: &str, values: Vec<T>) -> Series<T> {
    let mut total = T::default();
    for v in &values {
        total += *v;
    }
    Series { key: key.to_owned(), values, total }
}

/// The trend of buckets `first..=last` of `width` ms from a store's rows.
pub fn trend(rows: &TrendRows, width: i64, first: i64, last: i64) -> Trend {
    let n = (last - first + 1).max(0) as usize;
    let slot = |bucket: i64| (first..=last).contains(&bucket).then(|| (bucket - first) as usize);
    let daily = width == DAY_MS;
    let starts: Vec<i64> = (first..=last).map(|b| b * width).collect();
    let labels = starts
        .iter()
        .map(|&t| match chrono::DateTime::from_timestamp_millis(t) {
            Some(d) if daily => d.format("%Y-%m-%d").to_string(),
            Some(d) => d.format("%Y-%m-%d %H:00").to_string(),
            None => String::new(),
        })
        .collect();

    let mut by_type: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut revenue = vec![0.0; n];
    for r in &rows.events {
        if let Some(i) = slot(r.bucket) {
            by_type.entry(r.key.as_str()).or_insert_with(|| vec![0; n])[i] += r.count.round() as i64;
            revenue[i] += r.revenue;
        }
    }
    let mut events: Vec<Series<i64>> = by_type.into_iter().map(|(k, v)| series(k, v)).collect();
    // The most frequent first; ties by name, so the order is stable.
    events.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.key.cmp(&b.key)));
    if events.len() > MAX_EVENT_SERIES {
        let rest = events.split_off(MAX_EVENT_SERIES - 1);
        let mut other = vec![0; n];
        for s in &rest {
            for (o, v) in other.iter_mut().zip(&s.values) {
                *o += v;
            }
        }
        events.push(series("(other)", other));
    }

    let mut installs: Vec<Series<i64>> = INSTALL_SERIES.iter().map(|k| series(k, vec![0; n])).collect();
    for r in &rows.installs {
        if let (Some(i), Some(s)) = (slot(r.bucket), installs.iter_mut().find(|s| s.key == r.key)) {
            s.values[i] += r.count.round() as i64;
            s.total += r.count.round() as i64;
        }
    }

    let (mut conversions, mut conversion_revenue) = (vec![0.0; n], vec![0.0; n]);
    for r in &rows.conversions {
        if let Some(i) = slot(r.bucket) {
            conversions[i] += r.count;
            conversion_revenue[i] += r.revenue;
        }
    }
    let rounded = |key: &str, v: Vec<f64>| {
        let mut s = series(key, v.into_iter().map(cents).collect());
        s.total = cents(s.total);
        s
    };
    Trend {
        bucket: if daily { "day" } else { "hour" },
        starts,
        labels,
        events,
        installs,
        revenue: rounded("revenue", revenue),
        conversions: rounded("conversions", conversions),
        conversion_revenue: rounded("conversion_revenue", conversion_revenue),
    }
}

/// Most rejected installs of a campaign whose fraud flags are read for the campaign page.
pub const MAX_REJECTED_READ: i64 = 100_000;

/// Rejected installs counted by the fraud rules that fired on them (the `fraud.flags` of each
/// stored answer), the most frequent first.
pub fn rejections_by_rule(results: &[String]) -> Vec<(String, i64)> {
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for r in results {
        let flags = serde_json::from_str::<serde_json::Value>(r).ok();
        let flags = flags.as_ref().and_then(|v| v["fraud"]["flags"].as_array()).cloned().unwrap_or_default();
        if flags.is_empty() {
            *counts.entry("(unknown)".into()).or_default() += 1;
        }
        for f in flags.iter().filter_map(|f| f.as_str()) {
            *counts.entry(f.to_owned()).or_default() += 1;
        }
    }
    let mut list: Vec<(String, i64)> = counts.into_iter().collect();
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(anon: &str, kind: &str, ts: i64, session: &str) -> FactRow {
        FactRow {
            anonymous_id: anon.into(),
            user_id: None,
            event_type: kind.into(),
            ts,
            session_key: session.into(),
            campaign_key: None,
        }
    }

    #[test]
    fn funnel_counts_ordered_steps_within_the_window() {
        let steps: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let rows = vec![
            row("u1", "a", 10, "s"),
            row("u1", "b", 20, "s"),
            row("u1", "c", 30, "s"),
            // out of order: c before b
            row("u2", "a", 10, "s"),
            row("u2", "c", 15, "s"),
            row("u2", "b", 20, "s"),
            // too slow for the window from its first a, but a later a completes it
            row("u3", "a", 10, "s"),
            row("u3", "a", 200, "s"),
            row("u3", "b", 210, "s"),
            row("u3", "c", 220, "s"),
            // starts before the range
            row("u4", "a", 1, "s"),
            row("u4", "b", 12, "s"),
        ];
        assert_eq!(funnel(&rows, &steps, 5, 300, 100), vec![3, 3, 2]);
        assert_eq!(funnel(&rows, &steps, 5, 100, 100), vec![3, 2, 1], "u3 has only its first a in range, too slow");
    }

    #[test]
    fn retention_shares_per_cohort() {
        let user = |a: &str, start: i64, days: &[i64]| UserRow {
            anonymous_id: a.into(),
            user_id: None,
            start,
            active_days: days.to_vec(),
        };
        let users =
            vec![user("a", 0, &[0, 1, 7]), user("b", 5, &[0, 1]), user("c", 100, &[0]), user("d", DAY_MS, &[1, 2])];
        let c = retention(&users, 0, 1, &[1, 7], 5);
        assert_eq!(c[0].users, 3);
        assert_eq!(c[0].retention[0].share, Some(2.0 / 3.0));
        assert_eq!(c[0].retention[1], RetentionCell { day: 7, users: None, share: None });
        assert_eq!(c[1].users, 1);
        assert_eq!(c[1].retention[0].share, Some(1.0));
    }

    #[test]
    fn paths_collapse_repeats_and_split_at_conversions() {
        let rows = vec![
            row("u", "open", 1, "s1"),
            row("u", "view", 2, "s1"),
            row("u", "view", 3, "s1"),
            row("u", "buy", 4, "s1"),
            row("u", "view", 5, "s1"),
            row("u", "buy", 6, "s1"),
            row("v", "open", 1, "s2"),
            row("v", "view", 2, "s2"),
            row("v", "buy", 3, "s2"),
        ];
        let (list, total) = paths(&rows, "buy", 0, 10, 5, 10);
        assert_eq!(total, 3);
        assert_eq!(list[0].path, ["open", "view", "buy"]);
        assert_eq!(list[0].conversions, 2);
        assert_eq!(list[1].path, ["view", "buy"]);
    }

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_duration("w", "30m").unwrap(), 1_800_000);
        assert_eq!(parse_duration("w", "7d").unwrap(), 7 * DAY_MS);
        assert!(parse_duration("w", "7x").is_err());
        assert!(parse_duration("w", "0").is_err());
        assert_eq!(parse_time("t", "1970-01-02", false).unwrap(), DAY_MS);
        assert_eq!(parse_time("t", "1970-01-02", true).unwrap(), 2 * DAY_MS - 1);
        assert_eq!(parse_time("t", "1970-01-01T00:00:01Z", false).unwrap(), 1000);
        assert!(parse_time("t", "yesterday", false).is_err());
    }

    #[test]
    fn a_trend_has_every_bucket_the_top_event_types_and_every_install_series() {
        use crate::domain::records::{TrendRow, TrendRows};
        let row = |bucket, key: &str, count, revenue| TrendRow { bucket, key: key.into(), count, revenue };
        let mut events: Vec<TrendRow> =
            (0..10).map(|k| row(100, &format!("type_{k}"), f64::from(k + 1), 0.0)).collect();
        events.push(row(101, "type_9", 5.0, 12.5));
        events.push(row(99, "type_9", 50.0, 0.0)); // before the range: ignored
        let rows = TrendRows {
            events,
            installs: vec![
                row(101, "organic", 3.0, 0.0),
                row(101, "rejected", 1.0, 0.0),
                row(100, "unknown", 9.0, 0.0),
            ],
            conversions: vec![row(101, "", 0.5, 10.004)],
        };
        let t = trend(&rows, DAY_MS, 100, 102);
        assert_eq!(t.labels, ["1970-04-11", "1970-04-12", "1970-04-13"]);
        assert_eq!(t.starts, [100 * DAY_MS, 101 * DAY_MS, 102 * DAY_MS]);
        let keys: Vec<&str> = t.events.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["type_9", "type_8", "type_7", "type_6", "type_5", "type_4", "type_3", "(other)"]);
        assert_eq!(t.events[0].values, [10, 5, 0]);
        assert_eq!(t.events[7].values, [1 + 2 + 3, 0, 0], "type_0 to type_2 summed");
        assert_eq!(t.installs.len(), INSTALL_SERIES.len());
        assert_eq!(t.installs.iter().map(|s| s.total).sum::<i64>(), 4, "an unknown match type is not drawn");
        assert_eq!(t.revenue.values, [0.0, 12.5, 0.0]);
        assert_eq!((t.conversions.total, t.conversion_revenue.total), (0.5, 10.0));
        let hourly = trend(&TrendRows::default(), HOUR_MS, 10, 11);
        assert_eq!((hourly.bucket, hourly.labels[1].as_str()), ("hour", "1970-01-01 11:00"));
    }

    #[test]
    fn rejected_installs_are_counted_by_rule() {
        let results = [
            r#"{"fraud":{"flags":["click_injection"],"rejected":true}}"#,
            r#"{"fraud":{"flags":["click_injection","emulator"],"rejected":true}}"#,
            r#"{"fraud":{"flags":[],"rejected":true}}"#,
            "not json",
        ]
        .map(String::from);
        assert_eq!(
            rejections_by_rule(&results),
            [("(unknown)".into(), 2), ("click_injection".into(), 2), ("emulator".into(), 1)],
            "the most frequent first, ties by name"
        );
    }
}
