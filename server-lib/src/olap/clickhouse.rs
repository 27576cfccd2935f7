//! A ClickHouse client over its HTTP interface (statements in the body, results as text or
//! `JSONEachRow`), and the report tables' schema (ADR 0018). Kept to SQL that ClickHouse 18.16
//! (Debian's, used by the tests) and current releases both accept: `ReplacingMergeTree` with a
//! version column, custom partitioning (`PARTITION BY`), `Nullable`, `FINAL`.

use std::time::Duration;

use serde_json::{Value, json};

use super::OlapError;
use std::collections::{BTreeMap, HashMap};

use crate::domain::records::{FactRow, OlapPage, ReportQuery, ReportRows, UserRow};
use crate::domain::reports::{CohortCount, DAY_MS, date_text};

/// The report tables, created in order by [`ClickHouse::migrate`]. Facts are partitioned by
/// month and ordered for the report queries with the event id last; every table is a
/// `ReplacingMergeTree` versioned by the loader's sequence number, so a row loaded again
/// (a retry, a newer state) replaces the older one, and `deleted` marks rows a deletion or a
/// session merge removed (read with `FINAL`).
pub const TABLES: &[(&str, &str)] = &[
    (
        "fact_events",
        "CREATE TABLE IF NOT EXISTS fact_events (
            app_id String, event_id String, date Date, date_key Int64, ts Int64, event_type String,
            anonymous_id String, user_id Nullable(String), session_key String,
            revenue Nullable(Float64), currency Nullable(String),
            ord Int64, version UInt64, deleted UInt8
         ) ENGINE = ReplacingMergeTree(version)
         PARTITION BY toYYYYMM(date)
         ORDER BY (app_id, event_type, ts, event_id)",
    ),
    (
        "dim_users",
        "CREATE TABLE IF NOT EXISTS dim_users (
            app_id String, anonymous_id String, user_id Nullable(String),
            first_seen Int64, last_seen Int64, events UInt64,
            install_ts Nullable(Int64), install_campaign_id Nullable(String), utm_campaign_key Nullable(String),
            version UInt64, deleted UInt8
         ) ENGINE = ReplacingMergeTree(version)
         ORDER BY (app_id, anonymous_id)",
    ),
    (
        // Not partitioned: a session merge can move a session's start to an earlier month, and
        // rows replace each other only within a partition.
        "sessions",
        "CREATE TABLE IF NOT EXISTS sessions (
            app_id String, session_key String, anonymous_id String, user_id Nullable(String),
            start_ts Int64, end_ts Int64, events UInt64,
            version UInt64, deleted UInt8
         ) ENGINE = ReplacingMergeTree(version)
         ORDER BY (app_id, session_key)",
    ),
];

/// A ClickHouse server and the database the report tables live in.
pub struct ClickHouse {
    http: reqwest::Client,
    /// `scheme://host:port/`, without credentials.
    base: String,
    database: String,
    user: Option<String>,
    password: Option<String>,
}

impl std::fmt::Debug for ClickHouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouse").field("base", &self.base).field("database", &self.database).finish_non_exhaustive()
    }
}

impl ClickHouse {
    /// `url` is the HTTP interface, `http(s)://[user[:password]@]host:port`; `database` is
    /// created by [`ClickHouse::migrate`] (letters, digits and `_`: it is written into SQL).
    pub fn new(url: &str, database: &str) -> Result<Self, OlapError> {
        let mut parsed = url::Url::parse(url).map_err(|e| OlapError::Config(format!("URL {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(OlapError::Config("the URL must be http(s)://host:port of the HTTP interface".into()));
        }
        if database.is_empty()
            || database.len() > 64
            || !database.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || database.as_bytes()[0].is_ascii_digit()
        {
            return Err(OlapError::Config(format!(
                "database {database:?}: letters, digits and _, not starting with a digit"
            )));
        }
        let decode =
            |s: &str| url::form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned());
        let user = Some(parsed.username()).filter(|u| !u.is_empty()).and_then(decode);
        let password = parsed.password().and_then(decode);
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        parsed.set_path("/");
        parsed.set_query(None);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| OlapError::Config(e.to_string()))?;
        Ok(ClickHouse { http, base: parsed.to_string(), database: database.to_owned(), user, password })
    }

    /// Replaces the URL's user and password with these, where given.
    pub fn with_credentials(mut self, user: Option<&str>, password: Option<&str>) -> Self {
        if let Some(u) = user {
            self.user = Some(u.to_owned());
        }
        if let Some(p) = password {
            self.password = Some(p.to_owned());
        }
        self
    }

    pub fn database(&self) -> &str {
        &self.database
    }

    /// Runs one statement (in `database` unless `in_database` is false) and returns what the
    /// server answered (text).
    async fn run(&self, sql: &str, in_database: bool, body: Option<String>) -> Result<String, OlapError> {
        let mut request = self.http.post(&self.base);
        if in_database {
            request = request.query(&[("database", self.database.as_str())]);
        }
        // Whole numbers as JSON numbers; no condition moved before `FINAL` collapses versions
        // (PREWHERE on a column that changes between versions would read an old one).
        request =
            request.query(&[("output_format_json_quote_64bit_integers", "0"), ("optimize_move_to_prewhere", "0")]);
        if let Some(user) = &self.user {
            request = request.header("X-ClickHouse-User", user);
        }
        if let Some(password) = &self.password {
            request = request.header("X-ClickHouse-Key", password);
        }
        // A statement with data goes in the query string, the data in the body.
        let request = match body {
            Some(data) => request.query(&[("query", sql)]).body(data),
            None => request.body(sql.to_owned()),
        };
        let response = request.send().await.map_err(|e| OlapError::Unreachable(e.to_string()))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| OlapError::Unreachable(e.to_string()))?;
        if status.is_success() { Ok(text) } else { Err(OlapError::Refused(text.trim().chars().take(2000).collect())) }
    }

    /// Runs a statement in the database; its text answer.
    pub async fn execute(&self, sql: &str) -> Result<String, OlapError> {
        self.run(sql, true, None).await
    }

    /// The server's version, e.g. `18.16.1`.
    pub async fn version(&self) -> Result<String, OlapError> {
        Ok(self.run("SELECT version()", false, None).await?.trim().to_owned())
    }

    /// Creates the database and the report tables that are missing. Running it again changes
    /// nothing.
    pub async fn migrate(&self) -> Result<(), OlapError> {
        self.run(&format!("CREATE DATABASE IF NOT EXISTS {}", self.database), false, None).await?;
        for (_, ddl) in TABLES {
            self.execute(ddl).await?;
        }
        Ok(())
    }

    /// Inserts `rows` (JSON objects, one per row) into `table` in one request.
    pub async fn insert(&self, table: &str, rows: &[Value]) -> Result<(), OlapError> {
        if !TABLES.iter().any(|(t, _)| *t == table) {
            return Err(OlapError::Config(format!("no report table {table:?}")));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let mut data = String::new();
        for row in rows {
            data.push_str(&row.to_string());
            data.push('\n');
        }
        self.run(&format!("INSERT INTO {table} FORMAT JSONEachRow"), true, Some(data)).await.map(|_| ())
    }

    /// The rows of a `SELECT` (written without a `FORMAT`), as JSON objects.
    pub async fn select(&self, sql: &str) -> Result<Vec<Value>, OlapError> {
        let text = self.execute(&format!("{sql} FORMAT JSONEachRow")).await?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| OlapError::Refused(format!("unreadable row {l:?}: {e}"))))
            .collect()
    }

    /// Loads one outbox page: a reset first (tables emptied), then the rows (users and
    /// sessions no longer in the primary store as `deleted` rows), then the erasures and the
    /// retention cut as mutations. Loading a page again changes nothing.
    pub async fn load(&self, page: &OlapPage) -> Result<(), OlapError> {
        if page.reset {
            for (table, _) in TABLES {
                self.execute(&format!("DROP TABLE IF EXISTS {table}")).await?;
            }
            self.migrate().await?;
        }
        let v = page.version;
        let facts: Vec<Value> = page
            .facts
            .iter()
            .map(|f| {
                json!({"app_id": f.app_id, "event_id": f.event_id, "date": date_text(f.date_key),
                       "date_key": f.date_key, "ts": f.ts, "event_type": f.event_type,
                       "anonymous_id": f.anonymous_id, "user_id": f.user_id, "session_key": f.session_key,
                       "revenue": f.revenue, "currency": f.currency, "ord": f.ord, "version": v, "deleted": 0})
            })
            .collect();
        self.insert("fact_events", &facts).await?;
        let users: Vec<Value> = page
            .users
            .iter()
            .map(|u| match &u.row {
                Some(r) => json!({"app_id": u.app_id, "anonymous_id": u.anonymous_id, "user_id": r.user_id,
                    "first_seen": r.first_seen, "last_seen": r.last_seen, "events": r.events.max(0),
                    "install_ts": r.install_ts, "install_campaign_id": r.install_campaign_id,
                    "utm_campaign_key": r.utm_campaign_key, "version": v, "deleted": 0}),
                None => json!({"app_id": u.app_id, "anonymous_id": u.anonymous_id, "user_id": null,
                    "first_seen": 0, "last_seen": 0, "events": 0, "install_ts": null, "install_campaign_id": null,
                    "utm_campaign_key": null, "version": v, "deleted": 1}),
            })
            .collect();
        self.insert("dim_users", &users).await?;
        let sessions: Vec<Value> = page
            .sessions
            .iter()
            .map(|s| match &s.row {
                Some(r) => json!({"app_id": s.app_id, "session_key": s.session_key, "anonymous_id": r.anonymous_id,
                    "user_id": r.user_id, "start_ts": r.start_ts, "end_ts": r.end_ts, "events": r.events.max(0),
                    "version": v, "deleted": 0}),
                None => json!({"app_id": s.app_id, "session_key": s.session_key, "anonymous_id": "",
                    "user_id": null, "start_ts": 0, "end_ts": 0, "events": 0, "version": v, "deleted": 1}),
            })
            .collect();
        self.insert("sessions", &sessions).await?;
        if let Some(erase) = erasure(&page.erase_anonymous, &page.erase_users) {
            for (table, _) in TABLES {
                self.execute(&format!("ALTER TABLE {table} DELETE WHERE {erase}")).await?;
            }
        }
        if let Some(day) = page.purge_before_day {
            self.execute(&format!("ALTER TABLE fact_events DELETE WHERE date_key < {day}")).await?;
        }
        Ok(())
    }

    /// Mutations (erasures, retention) not finished yet.
    pub async fn pending_mutations(&self) -> Result<u64, OlapError> {
        let rows = self
            .select("SELECT count() AS n FROM system.mutations WHERE database = currentDatabase() AND is_done = 0")
            .await?;
        Ok(rows.first().map_or(0, |r| int(&r["n"]) as u64))
    }

    /// Rows for a report that reads facts or users (`Events`, `SessionsWith`, `Cohorts`), as the
    /// primary store answers them; `None` for the others, which the primary store answers.
    pub async fn report(&self, query: &ReportQuery) -> Result<Option<ReportRows>, OlapError> {
        match query {
            ReportQuery::Events { app_id, types, from, to } => {
                let types = if types.is_empty() {
                    String::new()
                } else {
                    format!("AND event_type IN ({})", types.iter().map(|t| quote(t)).collect::<Vec<_>>().join(", "))
                };
                let facts = format!(
                    "SELECT anonymous_id, event_type, ts, session_key, ord FROM fact_events FINAL
                      WHERE app_id = {app} AND ts >= {from} AND ts <= {to} {types}",
                    app = quote(app_id)
                );
                let rows = self.select(&fact_rows(app_id, &facts, "ts, ord")).await?;
                Ok(Some(ReportRows::Events(rows.iter().map(fact_row).collect())))
            }
            ReportQuery::SessionsWith { app_id, event_type, from, to } => {
                let app = quote(app_id);
                // Session keys change when sessions merge: filtered after `FINAL` collapsed them.
                let facts = format!(
                    "SELECT anonymous_id, event_type, ts, session_key, ord FROM (
                        SELECT anonymous_id, event_type, ts, session_key, ord FROM fact_events FINAL WHERE app_id = {app})
                      WHERE session_key IN (
                        SELECT session_key FROM (
                            SELECT session_key FROM fact_events FINAL
                             WHERE app_id = {app} AND event_type = {kind} AND ts >= {from} AND ts <= {to}))",
                    kind = quote(event_type)
                );
                let rows = self.select(&fact_rows(app_id, &facts, "session_key, ts, ord")).await?;
                Ok(Some(ReportRows::Events(rows.iter().map(fact_row).collect())))
            }
            ReportQuery::Cohorts { app_id, from_day, to_day, max_offset } => {
                let app = quote(app_id);
                let users = self
                    .select(&format!(
                        "SELECT anonymous_id, user_id, start FROM (
                            SELECT anonymous_id, user_id, ifNull(install_ts, first_seen) AS start, deleted
                              FROM dim_users FINAL WHERE app_id = {app})
                          WHERE deleted = 0 AND start < {before} ORDER BY anonymous_id",
                        before = (to_day + 1) * DAY_MS
                    ))
                    .await?;
                let mut users: Vec<UserRow> = users
                    .iter()
                    .map(|r| UserRow {
                        anonymous_id: text(&r["anonymous_id"]),
                        user_id: r["user_id"].as_str().map(str::to_owned),
                        start: int(&r["start"]),
                        active_days: Vec::new(),
                    })
                    .collect();
                // Versions of a fact share its device and day: no `FINAL` needed for these.
                let days = self
                    .select(&format!(
                        "SELECT anonymous_id, groupUniqArray(date_key) AS days FROM fact_events
                          WHERE app_id = {app} AND date_key >= {from_day} AND date_key <= {last}
                          GROUP BY anonymous_id",
                        last = to_day + max_offset
                    ))
                    .await?;
                let days: std::collections::HashMap<String, Vec<i64>> = days
                    .iter()
                    .map(|r| {
                        let mut d: Vec<i64> =
                            r["days"].as_array().map(|a| a.iter().map(int).collect()).unwrap_or_default();
                        d.sort_unstable();
                        (text(&r["anonymous_id"]), d)
                    })
                    .collect();
                for u in &mut users {
                    u.active_days = days.get(&u.anonymous_id).cloned().unwrap_or_default();
                }
                Ok(Some(ReportRows::Users(users)))
            }
            _ => Ok(None),
        }
    }

    /// The funnel computed in ClickHouse: per step, the people who reached it, exactly as
    /// [`crate::domain::reports::funnel`] counts them over the same rows (the oracle the tests
    /// compare with). `None` when the identity map is too large to send with the query (the
    /// caller reads the rows instead).
    ///
    /// Per person, the step events in the primary store's order `(ts, ord)`; then, level by
    /// level, the events that reach it and the latest start each can have (the last qualifying
    /// event before it carries the latest start, as starts only grow along the events): linear
    /// in the events. (`windowFunnel` would do on current releases, but 18.16's takes whole
    /// seconds only, and orders events of one millisecond by step, not as stored.)
    pub async fn funnel(&self, f: &FunnelQuery<'_>) -> Result<Option<Vec<u64>>, OlapError> {
        let Some(person) = person_expr(f.links) else { return Ok(None) };
        let app = quote(f.app_id);
        let types: Vec<String> = f.steps.iter().map(|s| quote(s)).collect();
        let campaign = f.campaign.map(|c| format!("WHERE campaign_key = {}", quote(c))).unwrap_or_default();
        // Versions of a fact share these columns: unique tuples, no `FINAL` needed.
        let people = format!(
            "SELECT {person} AS person, arraySort(groupUniqArray((ts, ord, event_type))) AS ev FROM (
                SELECT anonymous_id, user_id, ts, ord, event_type FROM (
                    SELECT anonymous_id, ts, ord, event_type FROM fact_events
                     WHERE app_id = {app} AND ts >= {from} AND ts <= {last} AND event_type IN ({types}))
                ANY LEFT JOIN (
                    SELECT anonymous_id, user_id, campaign_key FROM (
                        SELECT anonymous_id, user_id, ifNull(install_campaign_id, utm_campaign_key) AS campaign_key,
                               deleted FROM dim_users FINAL WHERE app_id = {app})
                     WHERE deleted = 0) USING anonymous_id
                {campaign})
             GROUP BY person",
            from = f.from,
            last = f.to.saturating_add(f.within),
            types = types.join(", "),
        );
        // Level 1: the first step's events in [from, to]; their starts are their times.
        let mut q = format!(
            "SELECT person, t1, k1, v1, arrayFilter((x, v) -> v, t1, v1) AS s1, arrayExists(x -> x = 1, v1) AS level1
               FROM (SELECT person, arrayMap(e -> tupleElement(e, 1), ev) AS t1, arrayMap(e -> tupleElement(e, 3), ev) AS k1,
                            arrayMap((x, y) -> y = {first} AND x >= {from} AND x <= {to}, t1, k1) AS v1
                       FROM ({people}))",
            first = types[0],
            from = f.from,
            to = f.to,
        );
        // Level m: an event of step m with a level m-1 event before it (in order) whose start
        // is within the window; its start is the last such event's. 18.16's lambdas cannot
        // read other columns, so each level looks starts up row by row (ARRAY JOIN) and
        // gathers the person's events again in their order.
        for m in 2..=f.steps.len() {
            let p = m - 1;
            q = format!(
                "SELECT person, any(t{p}) AS t{m}, any(k{p}) AS k{m}, any(level{p}) + max(w) AS level{m},
                        arrayMap(e -> tupleElement(e, 2), arraySort(groupArray((i, w)))) AS v{m},
                        arrayMap(e -> tupleElement(e, 3),
                                 arrayFilter(e -> tupleElement(e, 2) = 1, arraySort(groupArray((i, w, st))))) AS s{m}
                   FROM (SELECT person, t{p}, k{p}, level{p}, i,
                                y = {kind} AND c > 0 AND x - arrayElement(s{p}, c) <= {within} AS w,
                                arrayElement(s{p}, c) AS st
                           FROM (SELECT person, t{p}, k{p}, level{p}, s{p},
                                        arrayMap((c, v) -> c - v, arrayCumSum(v{p}), v{p}) AS cs
                                   FROM ({q}))
                          ARRAY JOIN t{p} AS x, k{p} AS y, cs AS c, arrayEnumerate(t{p}) AS i)
                  GROUP BY person",
                kind = types[m - 1],
                within = f.within
            );
        }
        let sql = format!("SELECT level{n} AS level, count() AS n FROM ({q}) GROUP BY level{n}", n = f.steps.len());
        let mut counts = vec![0u64; f.steps.len()];
        for r in self.select(&sql).await? {
            let (level, n) = (int(&r["level"]).max(0) as usize, int(&r["n"]).max(0) as u64);
            for c in counts.iter_mut().take(level) {
                *c += n;
            }
        }
        Ok(Some(counts))
    }

    /// The retention cohorts' counts computed in ClickHouse, exactly as
    /// [`crate::domain::reports::retention`] counts them; `None` when the identity map is too
    /// large to send with the query.
    pub async fn retention(
        &self,
        app_id: &str,
        (from_day, to_day): (i64, i64),
        days: &[i64],
        links: &HashMap<String, String>,
    ) -> Result<Option<BTreeMap<i64, CohortCount>>, OlapError> {
        let Some(person) = person_expr(links) else { return Ok(None) };
        let app = quote(app_id);
        let max_offset = days.iter().copied().max().unwrap_or(0);
        let active: Vec<String> = days.iter().map(|d| format!("countIf(has(active, cohort + {d}))")).collect();
        let sql = format!(
            "SELECT cohort, count() AS users, [{active}] AS active FROM (
                SELECT person, intDiv(min(start), {DAY_MS}) AS cohort, groupUniqArrayArray(days) AS active FROM (
                    SELECT {person} AS person, start, days FROM (
                        SELECT anonymous_id, user_id, start FROM (
                            SELECT anonymous_id, user_id, ifNull(install_ts, first_seen) AS start, deleted
                              FROM dim_users FINAL WHERE app_id = {app})
                         WHERE deleted = 0 AND start < {before})
                    ANY LEFT JOIN (
                        SELECT anonymous_id, groupUniqArray(date_key) AS days FROM fact_events
                         WHERE app_id = {app} AND date_key >= {from_day} AND date_key <= {last}
                         GROUP BY anonymous_id) USING anonymous_id)
                GROUP BY person)
              WHERE cohort >= {from_day} AND cohort <= {to_day}
              GROUP BY cohort",
            active = if active.is_empty() { "toUInt64(0)".to_owned() } else { active.join(", ") },
            before = (to_day + 1) * DAY_MS,
            last = to_day + max_offset,
        );
        let mut counts = BTreeMap::new();
        for r in self.select(&sql).await? {
            let active: Vec<u64> =
                r["active"].as_array().map(|a| a.iter().map(|v| int(v) as u64).collect()).unwrap_or_default();
            let active = if days.is_empty() { Vec::new() } else { active };
            counts.insert(int(&r["cohort"]), CohortCount { users: int(&r["users"]) as u64, active });
        }
        Ok(Some(counts))
    }

    /// Drops the database and everything in it (tests).
    pub async fn drop_database(&self) -> Result<(), OlapError> {
        self.run(&format!("DROP DATABASE IF EXISTS {}", self.database), false, None).await.map(|_| ())
    }
}

/// A funnel's question (see [`crate::domain::reports::funnel`]).
#[derive(Debug, Clone, Copy)]
pub struct FunnelQuery<'a> {
    pub app_id: &'a str,
    pub steps: &'a [String],
    pub from: i64,
    pub to: i64,
    pub within: i64,
    /// Only people of this campaign (their install's, else their first `utm_*` one).
    pub campaign: Option<&'a str>,
    /// The app's identity map (`alias → user id`).
    pub links: &'a HashMap<String, String>,
}

/// Most identity links sent along with a query (ClickHouse parses at most 256 KiB of query
/// text by default); an app with more gets its funnels and retention from the rows.
pub const MAX_QUERY_LINKS: usize = 1_000;

/// The person of a row with `anonymous_id` and its user's `user_id` (after the identity map),
/// as the domain's `person`; `None` when the map is too large.
fn person_expr(links: &HashMap<String, String>) -> Option<String> {
    if links.len() > MAX_QUERY_LINKS {
        return None;
    }
    let user = if links.is_empty() {
        "assumeNotNull(user_id)".to_owned()
    } else {
        let (from, to): (Vec<String>, Vec<String>) = links.iter().map(|(a, u)| (quote(a), quote(u))).unzip();
        format!("transform(assumeNotNull(user_id), [{}], [{}], assumeNotNull(user_id))", from.join(", "), to.join(", "))
    };
    Some(format!("if(isNull(user_id), concat('a:', anonymous_id), concat('u:', {user}))"))
}

/// `s` as a ClickHouse string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The condition that finds a deletion's rows: its anonymous ids per app and its user ids.
fn erasure(anonymous: &[(String, String)], users: &[String]) -> Option<String> {
    let mut by_app: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for (app, anon) in anonymous {
        by_app.entry(app).or_default().push(quote(anon));
    }
    let mut parts: Vec<String> = by_app
        .into_iter()
        .map(|(app, anons)| format!("(app_id = {} AND anonymous_id IN ({}))", quote(app), anons.join(", ")))
        .collect();
    if !users.is_empty() {
        parts.push(format!("user_id IN ({})", users.iter().map(|u| quote(u)).collect::<Vec<_>>().join(", ")));
    }
    (!parts.is_empty()).then(|| parts.join(" OR "))
}

/// Fact rows with their user's dimensions, as the primary store's `FACT_ROWS`: `facts` selects
/// `anonymous_id, event_type, ts, session_key, ord`.
fn fact_rows(app_id: &str, facts: &str, order: &str) -> String {
    format!(
        "SELECT anonymous_id, user_id, event_type, ts, session_key, campaign_key FROM ({facts})
         ANY LEFT JOIN (
            SELECT anonymous_id, user_id, campaign_key FROM (
                SELECT anonymous_id, user_id, ifNull(install_campaign_id, utm_campaign_key) AS campaign_key, deleted
                  FROM dim_users FINAL WHERE app_id = {app})
             WHERE deleted = 0) USING anonymous_id
         ORDER BY {order}",
        app = quote(app_id)
    )
}

fn fact_row(r: &Value) -> FactRow {
    FactRow {
        anonymous_id: text(&r["anonymous_id"]),
        user_id: r["user_id"].as_str().map(str::to_owned),
        event_type: text(&r["event_type"]),
        ts: int(&r["ts"]),
        session_key: text(&r["session_key"]),
        campaign_key: r["campaign_key"].as_str().map(str::to_owned),
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// A whole number, sent as a number or (64-bit integers, by default) as text.
fn int(v: &Value) -> i64 {
    v.as_i64().or_else(|| v.as_u64().map(|n| n as i64)).or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let ch = ClickHouse::new("http://reporter:s%3Acret@127.0.0.1:8123/ignored?x=1", "trailmark").unwrap();
        assert_eq!(ch.base, "http://127.0.0.1:8123/");
        assert_eq!((ch.user.as_deref(), ch.password.as_deref()), (Some("reporter"), Some("s:cret")));
        assert!(!format!("{ch:?}").contains("cret"), "no password in Debug");
        for (url, db) in [
            ("ftp://h:1", "d"),
            ("not a url", "d"),
            ("http://h:1", ""),
            ("http://h:1", "x; DROP TABLE y"),
            ("http://h:1", "1abc"),
        ] {
            assert!(matches!(ClickHouse::new(url, db), Err(OlapError::Config(_))), "{url} {db}");
        }
    }

    #[test]
    fn literals_and_erasures_are_quoted() {
        assert_eq!(quote("it's a \\ test"), "'it\\'s a \\\\ test'");
        assert_eq!(erasure(&[], &[]), None);
        let e = erasure(&[("a".into(), "x'".into()), ("a".into(), "y".into())], &["u".into()]).unwrap();
        assert_eq!(e, "(app_id = 'a' AND anonymous_id IN ('x\\'', 'y')) OR user_id IN ('u')");
        assert_eq!(int(&json!("12")), 12);
        assert_eq!(int(&json!(12)), 12);
    }
}
