//! A ClickHouse client over its HTTP interface (statements in the body, results as text or
//! `JSONEachRow`), and the report tables' schema (ADR 0018). Kept to SQL that ClickHouse 18.16
//! (Debian's, used by the tests) and current releases both accept: `ReplacingMergeTree` with a
//! version column, custom partitioning (`PARTITION BY`), `Nullable`, `FINAL`.

use std::time::Duration;

use serde_json::Value;

use super::OlapError;

/// The report tables, created in order by [`ClickHouse::migrate`]. Facts are partitioned by
/// month and ordered for the report queries with the event id last; every table is a
/// `ReplacingMergeTree` versioned by the loader's sequence number, so a row loaded again
/// (a retry, a newer state) replaces the older one, and `deleted` marks rows a deletion or a
/// session merge removed (read with `FINAL`).
pub const TABLES: &[(&str, &str)] = &[
    (
        "fact_events",
        "CREATE TABLE IF NOT EXISTS fact_events (
            app_id String, event_id String, date Date, ts Int64, event_type String,
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

    /// Drops the database and everything in it (tests).
    pub async fn drop_database(&self) -> Result<(), OlapError> {
        self.run(&format!("DROP DATABASE IF EXISTS {}", self.database), false, None).await.map(|_| ())
    }
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
}
