//! A ClickHouse client over its HTTP interface (statements in the body, results as text or
//! `JSONEachRow`), and the report tables' schema (ADR 0018). Kept to SQL that ClickHouse 18.16
//! (Debian's, used by the tests) and current releases both accept: `ReplacingMergeTree` with a
//! version column, custom partitioning (`PARTITION BY`), `Nullable`, `FINAL`.

use std::time::Duration;

use serde_json::{Value, json};

use super::OlapError;
use std::collections::BTreeMap;

use crate::domain::records::{CampaignDay, FactRow, OlapPage, ReportQuery, ReportRows};
use crate::domain::reports::{CohortCount, DAY_MS, date_text};

/// The version of [`TABLES`] and [`VIEWS`]: a copy made under another one is made again.
pub const SCHEMA_VERSION: u32 = 2;

/// The report tables, created in order by [`ClickHouse::migrate`]. Facts are partitioned by
/// month and ordered for the report queries with the event id last; every table is a
/// `ReplacingMergeTree` versioned by the loader's sequence number, so a row loaded again
/// (a retry, a newer state) replaces the older one, and `deleted` marks rows a deletion or a
/// session merge removed (read with `FINAL`).
pub const TABLES: &[(&str, &str)] = &[
    ("schema_version", "CREATE TABLE IF NOT EXISTS schema_version (version UInt32) ENGINE = TinyLog"),
    (
        "fact_events",
        "CREATE TABLE IF NOT EXISTS fact_events (
            app_id String, event_id String, date Date, date_key Int64, ts Int64, event_type String,
            anonymous_id String, erase_key String, user_id Nullable(String), session_key String,
            revenue Nullable(Float64), currency Nullable(String),
            ord Int64, version UInt64, deleted UInt8
         ) ENGINE = ReplacingMergeTree(version)
         PARTITION BY toYYYYMM(date)
         ORDER BY (app_id, event_type, ts, event_id)",
    ),
    (
        "dim_users",
        "CREATE TABLE IF NOT EXISTS dim_users (
            app_id String, anonymous_id String, erase_key String, user_id Nullable(String),
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
            app_id String, session_key String, anonymous_id String, erase_key String, user_id Nullable(String),
            start_ts Int64, end_ts Int64, events UInt64,
            version UInt64, deleted UInt8
         ) ENGINE = ReplacingMergeTree(version)
         ORDER BY (app_id, session_key)",
    ),
    (
        // Which days each device was active (filled by the view `device_days_of_facts` from
        // every fact inserted): retention reads it instead of every fact.
        "device_days",
        "CREATE TABLE IF NOT EXISTS device_days (
            app_id String, anonymous_id String, erase_key String, date_key Int64
         ) ENGINE = ReplacingMergeTree()
         ORDER BY (app_id, anonymous_id, date_key)",
    ),
    // The mirrored tables (`storage::sql::OLAP_MIRRORED`): ordered by the primary store's key.
    (
        "identity_links",
        "CREATE TABLE IF NOT EXISTS identity_links (
            app_id String, alias_user_id String, user_id String, created_at Int64, version UInt64, deleted UInt8
         ) ENGINE = ReplacingMergeTree(version)
         ORDER BY (app_id, alias_user_id)",
    ),
    (
        "dim_campaigns",
        "CREATE TABLE IF NOT EXISTS dim_campaigns (
            campaign_key String, app_id String, campaign_id Nullable(String), kind String, name String,
            network String, created_at Int64, version UInt64, deleted UInt8
         ) ENGINE = ReplacingMergeTree(version)
         ORDER BY campaign_key",
    ),
    (
        "campaign_costs",
        "CREATE TABLE IF NOT EXISTS campaign_costs (
            campaign_id String, app_id String, date_key Int64, amount Float64, currency String, updated_at Int64,
            version UInt64, deleted UInt8
         ) ENGINE = ReplacingMergeTree(version)
         ORDER BY (campaign_id, date_key)",
    ),
    (
        "rollup_daily",
        "CREATE TABLE IF NOT EXISTS rollup_daily (
            app_id String, date_key Int64, campaign_key String, event_type String, events Int64, users Int64,
            revenue Float64, version UInt64, deleted UInt8
         ) ENGINE = ReplacingMergeTree(version)
         ORDER BY (app_id, date_key, campaign_key, event_type)",
    ),
    (
        "rollup_campaign_daily",
        "CREATE TABLE IF NOT EXISTS rollup_campaign_daily (
            app_id String, date_key Int64, campaign_id String, impressions Int64, clicks Int64, installs Int64,
            rejected_installs Int64, version UInt64, deleted UInt8
         ) ENGINE = ReplacingMergeTree(version)
         ORDER BY (app_id, date_key, campaign_id)",
    ),
    (
        "rollup_conversions_daily",
        "CREATE TABLE IF NOT EXISTS rollup_conversions_daily (
            app_id String, date_key Int64, campaign_id String, model String, conversions Float64, revenue Float64,
            version UInt64, deleted UInt8
         ) ENGINE = ReplacingMergeTree(version)
         ORDER BY (app_id, date_key, campaign_id, model)",
    ),
    (
        "installs",
        "CREATE TABLE IF NOT EXISTS installs (
            app_id String, event_id String, anonymous_id String, erase_key String, platform String, install_ts Int64,
            received_at Int64, kind String, match_type String, campaign_id Nullable(String),
            link_id Nullable(String), network Nullable(String), rejected UInt8, version UInt64, deleted UInt8
         ) ENGINE = ReplacingMergeTree(version)
         ORDER BY (app_id, event_id)",
    ),
    (
        "conversions",
        "CREATE TABLE IF NOT EXISTS conversions (
            app_id String, event_id String, model String, click_id String, anonymous_id String,
            erase_key String, user_id Nullable(String), event_type String, ts Int64, link_id Nullable(String),
            campaign_id Nullable(String), network Nullable(String), touch_ts Nullable(Int64), credit Float64,
            revenue Nullable(Float64), currency Nullable(String), version UInt64, deleted UInt8
         ) ENGINE = ReplacingMergeTree(version)
         ORDER BY (app_id, event_id, model, click_id)",
    ),
];

/// The columns that name a person in each table a deletion erases: (table, has `erase_key`
/// (of `app_id` and `anonymous_id`), its columns of stored user ids).
const ERASED: &[(&str, bool, &[&str])] = &[
    ("fact_events", true, &["user_id"]),
    ("device_days", true, &[]),
    ("dim_users", true, &["user_id"]),
    ("sessions", true, &["user_id"]),
    ("installs", true, &[]),
    ("conversions", true, &["user_id"]),
    ("identity_links", false, &["user_id", "alias_user_id"]),
];

/// Tables whose `deleted` rows (with every older version of them) go after an erasure or a
/// retention purge: (table, its order key, all text columns).
const SWEPT: &[(&str, &[&str])] = &[
    ("dim_users", &["app_id", "anonymous_id"]),
    ("sessions", &["app_id", "session_key"]),
    ("installs", &["app_id", "event_id"]),
    ("conversions", &["app_id", "event_id", "model", "click_id"]),
    ("identity_links", &["app_id", "alias_user_id"]),
];

/// The views, created after the tables: the one that fills `device_days`, and those for BI
/// tools (docs/clickhouse.md: the current rows only, days as dates).
pub const VIEWS: &[(&str, &str)] = &[
    (
        "device_days_of_facts",
        "CREATE MATERIALIZED VIEW IF NOT EXISTS device_days_of_facts TO device_days AS
         SELECT app_id, anonymous_id, erase_key, date_key FROM fact_events",
    ),
    (
        "daily_events",
        "CREATE VIEW IF NOT EXISTS daily_events AS
         SELECT app_id, toDate('1970-01-01') + date_key AS date, campaign_key, event_type, events, users, revenue
           FROM (SELECT * FROM rollup_daily FINAL) WHERE deleted = 0",
    ),
    (
        "installs_by_campaign",
        "CREATE VIEW IF NOT EXISTS installs_by_campaign AS
         SELECT app_id, toDate('1970-01-01') + date_key AS date, campaign_id, name, network, impressions, clicks,
                installs, rejected_installs
           FROM (SELECT * FROM (SELECT * FROM rollup_campaign_daily FINAL) WHERE deleted = 0)
           ANY LEFT JOIN (
                SELECT campaign_key AS campaign_id, name, network
                  FROM (SELECT * FROM dim_campaigns FINAL) WHERE deleted = 0) USING campaign_id",
    ),
    (
        "funnel_events",
        "CREATE VIEW IF NOT EXISTS funnel_events AS
         SELECT app_id, toDateTime(intDiv(ts, 1000)) AS time, ts, event_type, anonymous_id,
                if(uid = '', concat('a:', anonymous_id), concat('u:', if(linked = '', uid, linked))) AS person,
                session_key, campaign_key, revenue, currency
           FROM (SELECT app_id, ts, event_type, anonymous_id, session_key, revenue, currency
                   FROM fact_events FINAL WHERE deleted = 0)
           ANY LEFT JOIN (
                SELECT app_id, anonymous_id, uid, linked, campaign_key FROM (
                    SELECT app_id, anonymous_id, ifNull(user_id, '') AS uid,
                           ifNull(install_campaign_id, utm_campaign_key) AS campaign_key
                      FROM (SELECT * FROM dim_users FINAL) WHERE deleted = 0)
                ANY LEFT JOIN (
                    SELECT app_id, alias_user_id AS uid, user_id AS linked
                      FROM (SELECT * FROM identity_links FINAL) WHERE deleted = 0) USING (app_id, uid))
             USING (app_id, anonymous_id)",
    ),
];

/// The longest a request to ClickHouse may take.
pub const REQUEST_TIMEOUT_SECS: u64 = 30;

/// A ClickHouse server and the database the report tables live in.
pub struct ClickHouse {
    http: reqwest::Client,
    /// `scheme://host:port/`, without credentials.
    base: String,
    database: String,
    user: Option<String>,
    password: Option<String>,
    /// Keys the erasure hashes ([`ClickHouse::with_erase_key`]).
    key: [u8; 32],
}

/// One step of loading a page ([`ClickHouse::plan`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// Rows (JSON objects) into a report table, one request.
    Insert { table: &'static str, rows: Vec<Value> },
    /// A mutation.
    Sql(String),
    /// Every version of the rows whose newest is a `deleted` row goes: their keys are read
    /// first (as hashes, so the mutations' texts name nothing), then deleted by that fixed list
    /// (a mutation reading the table itself would see some parts after others changed).
    Sweep { table: &'static str, key: &'static [&'static str] },
}

/// Statement texts stay under this many bytes (ClickHouse parses 256 KiB by default).
const MAX_LIST_BYTES: usize = 64 * 1024;

/// `items` as comma-separated lists of at most [`MAX_LIST_BYTES`].
fn chunks(items: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for item in items {
        if !current.is_empty() && current.len() + item.len() + 2 > MAX_LIST_BYTES {
            out.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push_str(", ");
        }
        current.push_str(item);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
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
        // The URL may carry a password: the message names only what is wrong.
        let mut parsed = url::Url::parse(url).map_err(|e| OlapError::Config(format!("the ClickHouse URL: {e}")))?;
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
            // Below the loader's lease (service::olap), so a statement never outlives it.
            .timeout(Duration::from_secs(REQUEST_TIMEOUT_SECS))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| OlapError::Config(e.to_string()))?;
        Ok(ClickHouse { http, base: parsed.to_string(), database: database.to_owned(), user, password, key: [0; 32] })
    }

    /// The key of the erasure hashes (the server's audit key): rows carry a keyed hash of
    /// their anonymous id, which a deletion's mutation names.
    pub fn with_erase_key(mut self, key: [u8; 32]) -> Self {
        self.key = key;
        self
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
        for (_, ddl) in TABLES.iter().chain(VIEWS) {
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

    /// What loading one outbox page takes, in order: a reset first (tables emptied), then the
    /// rows (users and sessions no longer in the primary store as `deleted` rows; facts one
    /// insert per month, as ClickHouse caps the partitions one insert may touch), then the
    /// erasures (by keyed hashes of anonymous ids and by stored user ids, in statements of
    /// bounded size) and the retention cut as mutations. Loading a page again changes nothing.
    /// The caller runs the statements one by one ([`ClickHouse::apply`]), checking its lease
    /// before each.
    pub fn plan(&self, page: &OlapPage) -> Vec<Statement> {
        let mut plan = Vec::new();
        if page.reset {
            // One statement per table, each under a renewed lease.
            for (table, _) in VIEWS.iter().chain(TABLES) {
                plan.push(Statement::Sql(format!("DROP TABLE IF EXISTS {table}")));
            }
            for (_, ddl) in TABLES.iter().chain(VIEWS) {
                plan.push(Statement::Sql((*ddl).to_owned()));
            }
            plan.push(Statement::Sql(format!("INSERT INTO schema_version (version) VALUES ({SCHEMA_VERSION})")));
        }
        let v = page.version;
        let mut months: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for f in &page.facts {
            let date = date_text(f.date_key);
            let month = date.get(..7).unwrap_or_default().to_owned();
            months.entry(month).or_default().push(json!({
                "app_id": f.app_id, "event_id": f.event_id, "date": date, "date_key": f.date_key, "ts": f.ts,
                "event_type": f.event_type, "anonymous_id": f.anonymous_id,
                "erase_key": self.erase_key(&f.app_id, &f.anonymous_id), "user_id": f.user_id,
                "session_key": f.session_key, "revenue": f.revenue, "currency": f.currency, "ord": f.ord,
                "version": v, "deleted": 0}));
        }
        for rows in months.into_values() {
            plan.push(Statement::Insert { table: "fact_events", rows });
        }
        let users: Vec<Value> = page
            .users
            .iter()
            .map(|u| {
                let erase_key = self.erase_key(&u.app_id, &u.anonymous_id);
                match &u.row {
                    Some(r) => json!({"app_id": u.app_id, "anonymous_id": u.anonymous_id, "erase_key": erase_key,
                        "user_id": r.user_id, "first_seen": r.first_seen, "last_seen": r.last_seen,
                        "events": r.events.max(0), "install_ts": r.install_ts,
                        "install_campaign_id": r.install_campaign_id, "utm_campaign_key": r.utm_campaign_key,
                        "version": v, "deleted": 0}),
                    None => json!({"app_id": u.app_id, "anonymous_id": u.anonymous_id, "erase_key": erase_key,
                        "user_id": null, "first_seen": 0, "last_seen": 0, "events": 0, "install_ts": null,
                        "install_campaign_id": null, "utm_campaign_key": null, "version": v, "deleted": 1}),
                }
            })
            .collect();
        plan.push(Statement::Insert { table: "dim_users", rows: users });
        let sessions: Vec<Value> = page
            .sessions
            .iter()
            .map(|s| match &s.row {
                Some(r) => json!({"app_id": s.app_id, "session_key": s.session_key, "anonymous_id": r.anonymous_id,
                    "erase_key": self.erase_key(&s.app_id, &r.anonymous_id), "user_id": r.user_id,
                    "start_ts": r.start_ts, "end_ts": r.end_ts, "events": r.events.max(0), "version": v,
                    "deleted": 0}),
                None => json!({"app_id": s.app_id, "session_key": s.session_key, "anonymous_id": "",
                    "erase_key": "", "user_id": null, "start_ts": 0, "end_ts": 0, "events": 0, "version": v,
                    "deleted": 1}),
            })
            .collect();
        plan.push(Statement::Insert { table: "sessions", rows: sessions });
        let mut mirrored: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        for r in &page.mirrored {
            let Some(table) = TABLES.iter().map(|(t, _)| *t).find(|t| *t == r.table) else { continue };
            let mut row = match &r.row {
                Some(columns) => columns.clone(),
                None => r.key.iter().cloned().collect(),
            };
            for value in row.values_mut() {
                // PostgreSQL's booleans; ClickHouse has UInt8.
                if let Value::Bool(b) = value {
                    *value = json!(u8::from(*b));
                }
            }
            if ERASED.iter().any(|(t, anonymous, _)| *t == table && *anonymous) {
                let (app, anon) =
                    (row.get("app_id").and_then(Value::as_str), row.get("anonymous_id").and_then(Value::as_str));
                let key = match (app, anon) {
                    (Some(app), Some(anon)) => self.erase_key(app, anon),
                    _ => String::new(),
                };
                row.insert("erase_key".into(), json!(key));
            }
            row.insert("version".into(), json!(v));
            row.insert("deleted".into(), json!(u8::from(r.row.is_none())));
            mirrored.entry(table.to_owned()).or_default().push(Value::Object(row));
        }
        for (table, rows) in mirrored {
            if let Some(table) = TABLES.iter().map(|(t, _)| *t).find(|t| *t == table) {
                plan.push(Statement::Insert { table, rows });
            }
        }
        let keys: Vec<String> =
            page.erase_anonymous.iter().map(|(app, anon)| quote(&self.erase_key(app, anon))).collect();
        let users: Vec<String> = page.erase_users.iter().map(|u| quote(u)).collect();
        for (table, anonymous, user_columns) in ERASED {
            if *anonymous {
                for chunk in chunks(&keys) {
                    plan.push(Statement::Sql(format!("ALTER TABLE {table} DELETE WHERE erase_key IN ({chunk})")));
                }
            }
            for column in *user_columns {
                for chunk in chunks(&users) {
                    plan.push(Statement::Sql(format!("ALTER TABLE {table} DELETE WHERE {column} IN ({chunk})")));
                }
            }
        }
        if let Some(day) = page.purge_before_day {
            for table in ["fact_events", "device_days"] {
                plan.push(Statement::Sql(format!("ALTER TABLE {table} DELETE WHERE date_key < {day}")));
            }
        }
        if page.purge_before_day.is_some() || !page.erase_anonymous.is_empty() || !page.erase_users.is_empty() {
            // Rows the primary store deleted (a person's installs, conversions, links and
            // sessions; users and sessions the purge removed) are `deleted` rows here, which
            // still hold their keys: every version of them goes.
            for (table, key) in SWEPT {
                plan.push(Statement::Sweep { table, key });
            }
        }
        plan.retain(|s| !matches!(s, Statement::Insert { rows, .. } if rows.is_empty()));
        plan
    }

    /// Runs one statement of a [`ClickHouse::plan`].
    pub async fn apply(&self, statement: &Statement) -> Result<(), OlapError> {
        match statement {
            Statement::Insert { table, rows } => self.insert(table, rows).await,
            Statement::Sql(sql) => self.execute(sql).await.map(|_| ()),
            Statement::Sweep { table, key } => {
                let hash = format!("hex(sipHash128(concat({})))", key.join(", '\\0', "));
                let rows = self
                    .select(&format!("SELECT {hash} AS h FROM (SELECT * FROM {table} FINAL WHERE deleted = 1)"))
                    .await?;
                let hashes: Vec<String> = rows.iter().map(|r| quote(&text(&r["h"]))).collect();
                for chunk in chunks(&hashes) {
                    self.execute(&format!("ALTER TABLE {table} DELETE WHERE {hash} IN ({chunk})")).await?;
                }
                Ok(())
            }
        }
    }

    /// Loads one outbox page: every statement of its [`ClickHouse::plan`] (tests and tools; the
    /// loader checks its lease between statements).
    pub async fn load(&self, page: &OlapPage) -> Result<(), OlapError> {
        for statement in self.plan(page) {
            self.apply(&statement).await?;
        }
        Ok(())
    }

    /// The copy must be filled again from the primary store: it was never filled (a new or
    /// emptied ClickHouse) or under another version of this schema (only a reset writes the
    /// version, after creating every table afresh).
    pub async fn needs_refill(&self) -> Result<bool, OlapError> {
        let rows = self.select("SELECT max(version) AS v, count() AS n FROM schema_version").await?;
        Ok(rows.first().is_none_or(|r| int(&r["n"]) == 0 || int(&r["v"]) != i64::from(SCHEMA_VERSION)))
    }

    /// The keyed hash that finds an anonymous id's rows for an erasure: a deletion's mutations
    /// (kept in `system.mutations` after they ran) then name no identifier in clear.
    fn erase_key(&self, app_id: &str, anonymous_id: &str) -> String {
        use hmac::{Hmac, Mac};
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&self.key) else { return String::new() };
        mac.update(b"olap-erase\0");
        mac.update(app_id.as_bytes());
        mac.update(b"\0");
        mac.update(anonymous_id.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }

    /// Mutations (erasures, retention) not finished yet.
    pub async fn pending_mutations(&self) -> Result<u64, OlapError> {
        let rows = self
            .select("SELECT count() AS n FROM system.mutations WHERE database = currentDatabase() AND is_done = 0")
            .await?;
        Ok(rows.first().map_or(0, |r| int(&r["n"]) as u64))
    }

    /// Rows for the paths and campaign reports (`SessionsWith`, `Campaigns`), as the primary
    /// store answers them; `None` for the others (funnels and retention are computed here by
    /// [`ClickHouse::funnel`] and [`ClickHouse::retention`]; the live feed and alerts are the
    /// primary store's).
    pub async fn report(&self, query: &ReportQuery) -> Result<Option<ReportRows>, OlapError> {
        match query {
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
            ReportQuery::Campaigns { app_id, from_day, to_day, model } => {
                let app = quote(app_id);
                let (f, t) = (from_day, to_day);
                // A deleted row holds only its key: the app is filtered after `FINAL`.
                let campaigns = format!(
                    "SELECT campaign_key, name, network, created_at FROM (
                        SELECT * FROM dim_campaigns FINAL) WHERE deleted = 0 AND app_id = {app} AND kind = 'link'"
                );
                let installs = format!(
                    "SELECT campaign_id AS campaign_key, sum(impressions) AS impressions, sum(clicks) AS clicks,
                            sum(installs) AS installs, sum(rejected_installs) AS rejected_installs
                       FROM (SELECT * FROM rollup_campaign_daily FINAL
                              WHERE app_id = {app} AND date_key >= {f} AND date_key <= {t})
                      WHERE deleted = 0 GROUP BY campaign_id"
                );
                let conversions = format!(
                    "SELECT campaign_id AS campaign_key, sum(conversions) AS conversions, sum(revenue) AS revenue
                       FROM (SELECT * FROM rollup_conversions_daily FINAL
                              WHERE app_id = {app} AND model = {model} AND date_key >= {f} AND date_key <= {t})
                      WHERE deleted = 0 GROUP BY campaign_id",
                    model = quote(model)
                );
                let costs = format!(
                    "SELECT campaign_id AS campaign_key, sumIf(amount, date_key >= {f} AND date_key <= {t}) AS cost,
                            countIf(date_key >= {f} AND date_key <= {t}) AS cost_days, max(currency) AS currency
                       FROM (SELECT * FROM campaign_costs FINAL)
                      WHERE deleted = 0 AND app_id = {app} GROUP BY campaign_id"
                );
                let sql = format!(
                    "SELECT * FROM (
                        SELECT * FROM (
                            SELECT * FROM ({campaigns}) ANY LEFT JOIN ({installs}) USING campaign_key)
                        ANY LEFT JOIN ({conversions}) USING campaign_key)
                     ANY LEFT JOIN ({costs}) USING campaign_key
                     ORDER BY created_at, campaign_key"
                );
                let rows = self.select(&sql).await?;
                let number = |v: &Value| v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or(0.0);
                Ok(Some(ReportRows::Campaigns(
                    rows.iter()
                        .map(|r| {
                            let costed = int(&r["cost_days"]) > 0;
                            CampaignDay {
                                campaign_id: text(&r["campaign_key"]),
                                name: text(&r["name"]),
                                network: text(&r["network"]),
                                impressions: int(&r["impressions"]),
                                clicks: int(&r["clicks"]),
                                installs: int(&r["installs"]),
                                rejected_installs: int(&r["rejected_installs"]),
                                conversions: number(&r["conversions"]),
                                revenue: number(&r["revenue"]),
                                cost: costed.then(|| number(&r["cost"])),
                                currency: Some(text(&r["currency"])).filter(|c| !c.is_empty()),
                            }
                        })
                        .collect(),
                )))
            }
            _ => Ok(None),
        }
    }

    /// The funnel computed in ClickHouse: per step, the people who reached it (after the
    /// identity map, copied too), exactly as [`crate::domain::reports::funnel`] counts them over
    /// the same rows (the oracle the tests compare with).
    ///
    /// Per person, the step events in the primary store's order `(ts, ord)`; then, level by
    /// level, the events that reach it and the latest start each can have (the last qualifying
    /// event before it carries the latest start, as starts only grow along the events), with
    /// array functions in one pass over each person. (`windowFunnel` would do on current
    /// releases, but 18.16's takes whole seconds only, and orders events of one millisecond by
    /// step, not as stored.)
    pub async fn funnel(&self, f: &FunnelQuery<'_>) -> Result<Vec<u64>, OlapError> {
        let app = quote(f.app_id);
        let types: Vec<String> = f.steps.iter().map(|s| quote(s)).collect();
        let campaign = f.campaign.map(|c| format!("WHERE campaign_key = {}", quote(c))).unwrap_or_default();
        // Each step as the number of its type among the steps (a repeated type: its first).
        let index = |m: usize| f.steps.iter().position(|s| *s == f.steps[m - 1]).unwrap_or(0) + 1;
        let repeated = (1..=f.steps.len()).any(|m| index(m) != m);
        // A device's step events (versions of a fact share these columns: no `FINAL`), then a
        // person's, in the primary store's order `(ts, ord)`.
        let people = format!(
            "SELECT arrayMap((a, b) -> (a, b), t0, o0) AS key0, arraySort((x, key) -> key, t0, key0) AS t,
                    arraySort((x, key) -> key, o0, key0) AS o, arraySort((x, key) -> key, k0, key0) AS k
               FROM (SELECT person, groupArrayArray(t0) AS t0, groupArrayArray(o0) AS o0, groupArrayArray(k0) AS k0
                       FROM (SELECT {PERSON} AS person, t0, o0, k0 FROM (
                                SELECT anonymous_id, groupArray(ts) AS t0, groupArray(ord) AS o0,
                                       groupArray(toUInt8(indexOf([{types}], event_type))) AS k0
                                  FROM fact_events {final}
                                 WHERE app_id = {app} AND ts >= {from} AND ts <= {last} AND event_type IN ({types})
                                 GROUP BY anonymous_id)
                            ANY LEFT JOIN ({users}) USING anonymous_id
                            {campaign})
                      GROUP BY person)",
            from = f.from,
            last = f.to.saturating_add(f.within),
            types = types.join(", "),
            users = users_with_links(&app, "ifNull(install_campaign_id, utm_campaign_key) AS campaign_key", ""),
            // Repeated steps: a fact's copies not merged yet (versions) must not stand for two
            // steps, so they are collapsed; otherwise a copy changes nothing and is left.
            final = if repeated { "FINAL" } else { "" },
        );
        // Each level is a query over the previous one's columns: 18.16 expands aliases into
        // their expressions, which across levels would grow without bound (and a lambda's
        // parameter must not share an alias's name, or the alias replaces it).
        // Level 1: the first step's events in [from, to] (their positions p1, their starts s1:
        // their own times).
        let mut q = format!(
            "SELECT tt, kk, pos, p1, s1, notEmpty(p1) AS level1 FROM (
                SELECT tt, kk, arrayEnumerate(tt) AS pos,
                       arrayFilter((i, x, y) -> y = 1 AND x >= {from} AND x <= {to}, pos, tt, kk) AS p1,
                       arrayFilter((x, y) -> y = 1 AND x >= {from} AND x <= {to}, tt, kk) AS s1
                  FROM (SELECT t AS tt, k AS kk FROM ({people})))",
            from = f.from,
            to = f.to
        );
        // Level m: an event of step m whose latest level m-1 event before it started at most
        // `within` before it; it keeps that start. Starts only grow along the level's events,
        // so the latest start before an event is a running sum of the starts' increments: the
        // increments and the step's events are merged in order (one sort of both, keys 2i+1
        // and 2i, so an event never precedes itself) and summed. 18.16's lambdas cannot read
        // other arrays by index, hence no lookups.
        for m in 2..=f.steps.len() {
            let p = m - 1;
            let kind = index(m);
            let within = f.within;
            q = format!(
                "SELECT tt, kk, pos, p{m}, s{m}, level{p} + notEmpty(p{m}) AS level{m} FROM (
                    SELECT tt, kk, pos, level{p},
                           arrayFilter((i, y) -> y = {kind}, pos, kk) AS q,
                           arrayConcat(arrayMap(i -> i * 2 + 1, p{p}), arrayMap(i -> i * 2, q)) AS merge_order,
                           arraySort((v, w) -> w,
                               arrayConcat(arrayMap((a, b) -> a - b, s{p}, arrayPopBack(arrayPushFront(s{p}, toInt64(0)))),
                                           arrayMap(i -> toInt64(0), q)), merge_order) AS increments,
                           arraySort((v, w) -> w, arrayConcat(arrayMap(i -> 0, p{p}), arrayMap(i -> 1, q)), merge_order)
                               AS is_q,
                           arrayFilter((x, b) -> b = 1, arrayCumSum(increments), is_q) AS latest,
                           arrayFilter((x, b) -> b = 1, arrayCumSum(arrayMap(b -> 1 - b, is_q)), is_q) AS earlier,
                           arrayMap((x, s, n) -> n > 0 AND x - s <= {within},
                                    arrayFilter((x, y) -> y = {kind}, tt, kk), latest, earlier) AS reached,
                           arrayFilter((i, v) -> v, q, reached) AS p{m},
                           arrayFilter((s, v) -> v, latest, reached) AS s{m}
                      FROM ({q}))"
            );
        }
        let q = format!("SELECT level{n} AS level FROM ({q})", n = f.steps.len());
        let sql = format!("SELECT level, count() AS n FROM ({q}) GROUP BY level");
        let mut counts = vec![0u64; f.steps.len()];
        for r in self.select(&sql).await? {
            let (level, n) = (int(&r["level"]).max(0) as usize, int(&r["n"]).max(0) as u64);
            for c in counts.iter_mut().take(level) {
                *c += n;
            }
        }
        Ok(counts)
    }

    /// The retention cohorts' counts computed in ClickHouse, exactly as
    /// [`crate::domain::reports::retention`] counts them.
    pub async fn retention(
        &self,
        app_id: &str,
        (from_day, to_day): (i64, i64),
        days: &[i64],
    ) -> Result<BTreeMap<i64, CohortCount>, OlapError> {
        let app = quote(app_id);
        let max_offset = days.iter().copied().max().unwrap_or(0);
        let active: Vec<String> = days.iter().map(|d| format!("countIf(has(active, cohort + {d}))")).collect();
        let sql = format!(
            "SELECT cohort, count() AS users, [{active}] AS active FROM (
                SELECT person, toInt64(floor(min(start) / {DAY_MS})) AS cohort, groupUniqArrayArray(days) AS active FROM (
                    SELECT {PERSON} AS person, start, days FROM ({users})
                    ANY LEFT JOIN (
                        SELECT anonymous_id, groupUniqArray(date_key) AS days FROM device_days
                         WHERE app_id = {app} AND date_key >= {from_day} AND date_key <= {last}
                         GROUP BY anonymous_id) USING anonymous_id)
                GROUP BY person)
              WHERE cohort >= {from_day} AND cohort <= {to_day}
              GROUP BY cohort",
            active = if active.is_empty() { "toUInt64(0)".to_owned() } else { active.join(", ") },
            users = users_with_links(
                &app,
                "ifNull(install_ts, first_seen) AS start",
                &format!("AND start < {}", (to_day + 1) * DAY_MS)
            ),
            last = to_day + max_offset,
        );
        let mut counts = BTreeMap::new();
        for r in self.select(&sql).await? {
            let active: Vec<u64> =
                r["active"].as_array().map(|a| a.iter().map(|v| int(v) as u64).collect()).unwrap_or_default();
            let active = if days.is_empty() { Vec::new() } else { active };
            counts.insert(int(&r["cohort"]), CohortCount { users: int(&r["users"]) as u64, active });
        }
        Ok(counts)
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
}

/// A row's person, as the domain's `person`: its user's id after the identity map (`uid`, and
/// `linked` where the map names another), else its anonymous id. Over [`users_with_links`]'
/// columns (a row without a user joined has `uid` empty).
const PERSON: &str = "if(uid = '', concat('a:', anonymous_id), concat('u:', if(linked = '', uid, linked)))";

/// The app's current users (`anonymous_id`, `uid`: the user id or empty, `linked`: what the
/// identity map makes of it or empty, and `columns` of `dim_users`), `filter` appended to
/// their conditions.
fn users_with_links(app: &str, columns: &str, filter: &str) -> String {
    format!(
        "SELECT * FROM (
            SELECT anonymous_id, ifNull(user_id, '') AS uid, {columns} FROM (
                SELECT * FROM dim_users FINAL WHERE app_id = {app}) WHERE deleted = 0 {filter})
         ANY LEFT JOIN (
            SELECT alias_user_id AS uid, user_id AS linked FROM (
                SELECT * FROM identity_links FINAL WHERE app_id = {app}) WHERE deleted = 0) USING uid"
    )
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
        assert!(chunks(&[]).is_empty());
        let items: Vec<String> = (0..10_000).map(|i| quote(&format!("{i:032}"))).collect();
        let lists = chunks(&items);
        assert!(lists.len() > 1 && lists.iter().all(|l| l.len() <= MAX_LIST_BYTES), "bounded statements");
        assert_eq!(lists.join(", "), items.join(", "), "every item once, in order");
        assert_eq!(int(&json!("12")), 12);
        assert_eq!(int(&json!(12)), 12);
    }
}
