//! SQL of the attribution tables (schema version 2).

use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use serde_json::Value;

use super::{StorageError, Subject, backend};
use crate::domain::records::*;

pub const SCHEMA_V2: &str = "
CREATE TABLE campaigns (
    campaign_id TEXT PRIMARY KEY,
    app_id TEXT NOT NULL,
    name TEXT NOT NULL,
    network TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE links (
    link_id TEXT PRIMARY KEY,
    code TEXT NOT NULL UNIQUE,
    campaign_id TEXT NOT NULL REFERENCES campaigns (campaign_id),
    enabled INTEGER NOT NULL,
    record TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE link_audit (
    id INTEGER PRIMARY KEY,
    link_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    before TEXT,
    after TEXT NOT NULL
);
CREATE INDEX link_audit_link ON link_audit (link_id, id);
CREATE TABLE clicks (
    click_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    app_id TEXT NOT NULL,
    link_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    ip_enc BLOB,
    user_agent TEXT,
    referrer TEXT,
    accept_language TEXT,
    os TEXT,
    os_version TEXT,
    model TEXT,
    locale TEXT,
    timezone TEXT,
    screen TEXT,
    device_id TEXT,
    device_kind TEXT,
    network_ids TEXT NOT NULL,
    sub_params TEXT NOT NULL,
    flags INTEGER NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX clicks_ts ON clicks (ts);
CREATE INDEX clicks_device ON clicks (device_id) WHERE device_id IS NOT NULL;
CREATE TABLE installs (
    app_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    platform TEXT NOT NULL,
    idfa TEXT,
    idfv TEXT,
    gaid TEXT,
    android_id TEXT,
    install_ts INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    kind TEXT NOT NULL,
    match_type TEXT NOT NULL,
    campaign_id TEXT,
    link_id TEXT,
    click_id TEXT,
    network TEXT,
    rejected INTEGER NOT NULL,
    result TEXT NOT NULL,
    audit TEXT NOT NULL,
    ip_enc BLOB,
    PRIMARY KEY (app_id, event_id)
);
CREATE INDEX installs_event ON installs (event_id);
CREATE INDEX installs_anonymous_id ON installs (app_id, anonymous_id);
CREATE INDEX installs_idfa ON installs (app_id, idfa) WHERE idfa IS NOT NULL;
CREATE INDEX installs_idfv ON installs (app_id, idfv) WHERE idfv IS NOT NULL;
CREATE INDEX installs_gaid ON installs (app_id, gaid) WHERE gaid IS NOT NULL;
CREATE INDEX installs_android_id ON installs (app_id, android_id) WHERE android_id IS NOT NULL;
CREATE INDEX installs_campaign ON installs (campaign_id, install_ts) WHERE campaign_id IS NOT NULL;
CREATE TABLE touchpoints (
    id INTEGER PRIMARY KEY,
    app_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    click_id TEXT NOT NULL,
    link_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    network TEXT NOT NULL,
    kind TEXT NOT NULL,
    source_event_id TEXT NOT NULL,
    UNIQUE (app_id, anonymous_id, click_id, kind)
);
CREATE INDEX touchpoints_device ON touchpoints (app_id, anonymous_id, ts);
CREATE TABLE reengagements (
    app_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    click_id TEXT NOT NULL,
    link_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    network TEXT NOT NULL,
    click_ts INTEGER NOT NULL,
    open_ts INTEGER NOT NULL,
    inactive_ms INTEGER,
    PRIMARY KEY (app_id, event_id)
);
CREATE INDEX reengagements_anonymous_id ON reengagements (app_id, anonymous_id);
CREATE TABLE conversions (
    app_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    model TEXT NOT NULL,
    click_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    user_id TEXT,
    event_type TEXT NOT NULL,
    ts INTEGER NOT NULL,
    link_id TEXT,
    campaign_id TEXT,
    network TEXT,
    touch_ts INTEGER,
    credit REAL NOT NULL,
    revenue REAL,
    currency TEXT,
    PRIMARY KEY (app_id, event_id, model, click_id)
);
CREATE INDEX conversions_anonymous_id ON conversions (app_id, anonymous_id);
CREATE INDEX conversions_user_id ON conversions (user_id) WHERE user_id IS NOT NULL;
CREATE INDEX conversions_campaign ON conversions (campaign_id, model, ts);
CREATE TABLE postbacks (
    id INTEGER PRIMARY KEY,
    app_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    network TEXT NOT NULL,
    event TEXT NOT NULL,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX postbacks_pending ON postbacks (state) WHERE state = 'pending';
CREATE INDEX postbacks_anonymous_id ON postbacks (app_id, anonymous_id);
CREATE TABLE postback_attempts (
    id INTEGER PRIMARY KEY,
    postback_id INTEGER NOT NULL,
    app_id TEXT NOT NULL,
    anonymous_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    status INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX postback_attempts_anonymous_id ON postback_attempts (app_id, anonymous_id);
CREATE TABLE fraud_alerts (
    id INTEGER PRIMARY KEY,
    rule TEXT NOT NULL,
    app_id TEXT NOT NULL,
    campaign_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    detail TEXT NOT NULL
);
";

fn json_err(e: serde_json::Error) -> StorageError {
    StorageError::Backend(format!("stored JSON: {e}"))
}

pub fn save_campaign(tx: &Transaction<'_>, c: &Campaign) -> Result<(), StorageError> {
    tx.execute(
        "INSERT INTO campaigns (campaign_id, app_id, name, network, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![c.campaign_id, c.app_id, c.name, c.network, c.created_at],
    )
    .map_err(backend)?;
    Ok(())
}

pub fn save_link(tx: &Transaction<'_>, link: &LinkRecord, audit: &LinkAudit) -> Result<(), StorageError> {
    let record = serde_json::to_string(link).map_err(json_err)?;
    tx.execute(
        "INSERT INTO links (link_id, code, campaign_id, enabled, record, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (link_id) DO UPDATE SET enabled = excluded.enabled, record = excluded.record,
             updated_at = excluded.updated_at",
        params![link.link_id, link.code, link.campaign_id, link.enabled, record, link.updated_at],
    )
    .map_err(backend)?;
    tx.execute(
        "INSERT INTO link_audit (link_id, at, actor, action, before, after) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            audit.link_id,
            audit.at,
            audit.actor,
            audit.action,
            audit.before.as_ref().map(Value::to_string),
            audit.after.to_string()
        ],
    )
    .map_err(backend)?;
    Ok(())
}

pub fn load_links(conn: &Connection) -> Result<LinkCatalog, StorageError> {
    let mut stmt = conn
        .prepare("SELECT campaign_id, app_id, name, network, created_at FROM campaigns ORDER BY created_at")
        .map_err(backend)?;
    let campaigns = stmt
        .query_map([], |r| {
            Ok(Campaign {
                campaign_id: r.get(0)?,
                app_id: r.get(1)?,
                name: r.get(2)?,
                network: r.get(3)?,
                created_at: r.get(4)?,
            })
        })
        .map_err(backend)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(backend)?;
    let mut stmt = conn.prepare("SELECT record FROM links ORDER BY rowid").map_err(backend)?;
    let texts = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(backend)?;
    let mut links = Vec::new();
    for text in texts {
        links.push(serde_json::from_str(&text.map_err(backend)?).map_err(json_err)?);
    }
    Ok(LinkCatalog { campaigns, links })
}

pub fn link_audit(conn: &Connection, link_id: &str) -> Result<Vec<LinkAudit>, StorageError> {
    let mut stmt = conn
        .prepare("SELECT link_id, at, actor, action, before, after FROM link_audit WHERE link_id = ?1 ORDER BY id")
        .map_err(backend)?;
    let rows = stmt
        .query_map([link_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, String>(5)?,
            ))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (link_id, at, actor, action, before, after) = row.map_err(backend)?;
        out.push(LinkAudit {
            link_id,
            at,
            actor,
            action,
            before: before.map(|b| serde_json::from_str(&b)).transpose().map_err(json_err)?,
            after: serde_json::from_str(&after).map_err(json_err)?,
        });
    }
    Ok(out)
}

pub fn insert_touch(tx: &Transaction<'_>, c: &ClickRecord) -> Result<(), StorageError> {
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO clicks (click_id, kind, app_id, link_id, campaign_id, ts, ip_enc, user_agent, referrer,
                 accept_language, os, os_version, model, locale, timezone, screen, device_id, device_kind,
                 network_ids, sub_params, flags, source)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)
             ON CONFLICT (click_id) DO NOTHING",
        )
        .map_err(backend)?;
    stmt.execute(params![
        c.click_id,
        c.kind,
        c.app_id,
        c.link_id,
        c.campaign_id,
        c.ts,
        c.ip_enc,
        c.user_agent,
        c.referrer,
        c.accept_language,
        c.os,
        c.os_version,
        c.model,
        c.locale,
        c.timezone,
        c.screen,
        c.device_id,
        c.device_kind,
        c.network_ids.to_string(),
        c.sub_params.to_string(),
        c.flags,
        c.source,
    ])
    .map_err(backend)?;
    Ok(())
}

fn click_row(r: &Row<'_>) -> rusqlite::Result<(ClickRecord, String, String)> {
    Ok((
        ClickRecord {
            click_id: r.get(0)?,
            kind: r.get(1)?,
            app_id: r.get(2)?,
            link_id: r.get(3)?,
            campaign_id: r.get(4)?,
            ts: r.get(5)?,
            ip_enc: r.get(6)?,
            user_agent: r.get(7)?,
            referrer: r.get(8)?,
            accept_language: r.get(9)?,
            os: r.get(10)?,
            os_version: r.get(11)?,
            model: r.get(12)?,
            locale: r.get(13)?,
            timezone: r.get(14)?,
            screen: r.get(15)?,
            device_id: r.get(16)?,
            device_kind: r.get(17)?,
            network_ids: Value::Null,
            sub_params: Value::Null,
            flags: r.get(20)?,
            source: r.get(21)?,
        },
        r.get(18)?,
        r.get(19)?,
    ))
}

pub fn load_touches(conn: &Connection, since: i64) -> Result<Vec<ClickRecord>, StorageError> {
    let mut stmt = conn
        .prepare(
            "SELECT click_id, kind, app_id, link_id, campaign_id, ts, ip_enc, user_agent, referrer, accept_language,
                 os, os_version, model, locale, timezone, screen, device_id, device_kind, network_ids, sub_params,
                 flags, source
             FROM clicks WHERE ts >= ?1 ORDER BY ts, rowid",
        )
        .map_err(backend)?;
    let rows = stmt.query_map([since], click_row).map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (mut c, ids, subs) = row.map_err(backend)?;
        c.network_ids = serde_json::from_str(&ids).map_err(json_err)?;
        c.sub_params = serde_json::from_str(&subs).map_err(json_err)?;
        out.push(c);
    }
    Ok(out)
}

const INSTALL_COLUMNS: &str = "app_id, event_id, anonymous_id, platform, idfa, idfv, gaid, android_id, install_ts,
    received_at, kind, result, audit, ip_enc";

fn install_row(r: &Row<'_>) -> rusqlite::Result<(InstallRecord, String, String)> {
    Ok((
        InstallRecord {
            app_id: r.get(0)?,
            event_id: r.get(1)?,
            anonymous_id: r.get(2)?,
            platform: r.get(3)?,
            idfa: r.get(4)?,
            idfv: r.get(5)?,
            gaid: r.get(6)?,
            android_id: r.get(7)?,
            install_ts: r.get(8)?,
            received_at: r.get(9)?,
            kind: r.get(10)?,
            result: trailmark_core::protocol::AttributionResult::organic(Default::default()),
            audit: Value::Null,
            ip_enc: r.get(13)?,
        },
        r.get(11)?,
        r.get(12)?,
    ))
}

fn finish_install(row: Option<(InstallRecord, String, String)>) -> Result<Option<InstallRecord>, StorageError> {
    let Some((mut install, result, audit)) = row else { return Ok(None) };
    install.result = serde_json::from_str(&result).map_err(json_err)?;
    install.audit = serde_json::from_str(&audit).map_err(json_err)?;
    Ok(Some(install))
}

pub fn install_by_event(
    conn: &Connection,
    app_id: Option<&str>,
    event_id: &str,
) -> Result<Option<InstallRecord>, StorageError> {
    let row = conn
        .prepare_cached(&format!(
            "SELECT {INSTALL_COLUMNS} FROM installs WHERE event_id = ?1 AND (?2 IS NULL OR app_id = ?2)
             ORDER BY received_at LIMIT 1"
        ))
        .map_err(backend)?
        .query_row(params![event_id, app_id], install_row)
        .optional()
        .map_err(backend)?;
    finish_install(row)
}

/// The device's latest install that counted as new (`kind = 'install'`); reinstalls are
/// measured from it.
pub fn last_install(conn: &Connection, app_id: &str, keys: &DeviceKeys) -> Result<Option<InstallRecord>, StorageError> {
    let mut best: Option<(InstallRecord, String, String)> = None;
    for (column, value) in [
        ("anonymous_id", Some(&keys.anonymous_id)),
        ("idfa", keys.idfa.as_ref()),
        ("idfv", keys.idfv.as_ref()),
        ("gaid", keys.gaid.as_ref()),
        ("android_id", keys.android_id.as_ref()),
    ] {
        let Some(value) = value else { continue };
        let row = conn
            .prepare_cached(&format!(
                "SELECT {INSTALL_COLUMNS} FROM installs WHERE app_id = ?1 AND {column} = ?2 AND kind = 'install'
                 ORDER BY install_ts DESC LIMIT 1"
            ))
            .map_err(backend)?
            .query_row(params![app_id, value], install_row)
            .optional()
            .map_err(backend)?;
        if let Some(row) = row
            && best.as_ref().is_none_or(|b| row.0.install_ts > b.0.install_ts)
        {
            best = Some(row);
        }
    }
    finish_install(best)
}

pub fn save_install(
    tx: &Transaction<'_>,
    i: &InstallRecord,
    touchpoint: Option<&Touchpoint>,
    alert: Option<&FraudAlert>,
) -> Result<bool, StorageError> {
    let r = &i.result;
    let changed = tx
        .execute(
            "INSERT INTO installs (app_id, event_id, anonymous_id, platform, idfa, idfv, gaid, android_id, install_ts,
                 received_at, kind, match_type, campaign_id, link_id, click_id, network, rejected, result, audit, ip_enc)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)
             ON CONFLICT (app_id, event_id) DO NOTHING",
            params![
                i.app_id,
                i.event_id,
                i.anonymous_id,
                i.platform,
                i.idfa,
                i.idfv,
                i.gaid,
                i.android_id,
                i.install_ts,
                i.received_at,
                i.kind,
                r.match_type.as_str(),
                r.campaign_id,
                r.link_id,
                r.click_id,
                r.network,
                r.fraud.rejected,
                serde_json::to_string(r).map_err(json_err)?,
                i.audit.to_string(),
                i.ip_enc,
            ],
        )
        .map_err(backend)?;
    if changed == 0 {
        return Ok(false);
    }
    if let Some(t) = touchpoint {
        insert_touchpoint(tx, t)?;
    }
    if let Some(a) = alert {
        tx.execute(
            "INSERT INTO fraud_alerts (rule, app_id, campaign_id, at, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![a.rule, a.app_id, a.campaign_id, a.at, a.detail.to_string()],
        )
        .map_err(backend)?;
    }
    Ok(true)
}

pub fn insert_touchpoint(tx: &Transaction<'_>, t: &Touchpoint) -> Result<bool, StorageError> {
    let n = tx
        .prepare_cached(
            "INSERT INTO touchpoints (app_id, anonymous_id, ts, click_id, link_id, campaign_id, network, kind,
                 source_event_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (app_id, anonymous_id, click_id, kind) DO NOTHING",
        )
        .map_err(backend)?
        .execute(params![
            t.app_id,
            t.anonymous_id,
            t.ts,
            t.click_id,
            t.link_id,
            t.campaign_id,
            t.network,
            t.kind,
            t.source_event_id
        ])
        .map_err(backend)?;
    Ok(n == 1)
}

pub fn install_counts(conn: &Connection, since: i64) -> Result<Vec<InstallCount>, StorageError> {
    let hour = crate::domain::attribution::HOUR;
    let mut stmt = conn
        .prepare(
            "SELECT campaign_id, (install_ts / ?2) * ?2 AS hour, COUNT(*) FROM installs
             WHERE campaign_id IS NOT NULL AND install_ts >= ?1 AND kind = 'install' AND rejected = 0
             GROUP BY campaign_id, hour ORDER BY hour",
        )
        .map_err(backend)?;
    stmt.query_map(params![since, hour], |r| {
        Ok(InstallCount { campaign_id: r.get(0)?, hour: r.get(1)?, installs: r.get(2)? })
    })
    .map_err(backend)?
    .collect::<Result<_, _>>()
    .map_err(backend)
}

/// Click ids tied to the subject through its installs and touchpoints.
pub fn subject_click_ids(
    tx: &Transaction<'_>,
    subject: &Subject,
    anonymous_ids: &[(String, String)],
) -> Result<Vec<String>, StorageError> {
    let mut ids = Vec::new();
    let mut collect = |sql: &str, args: &[&dyn rusqlite::ToSql]| -> Result<(), StorageError> {
        let mut stmt = tx.prepare(sql).map_err(backend)?;
        let rows = stmt.query_map(args, |r| r.get::<_, String>(0)).map_err(backend)?;
        for row in rows {
            ids.push(row.map_err(backend)?);
        }
        Ok(())
    };
    // Device ids are stored lower-cased on clicks and installs.
    const INSTALL_DEVICES: &str =
        "SELECT idfa FROM installs WHERE app_id = ?1 AND anonymous_id = ?2 AND idfa IS NOT NULL
         UNION SELECT idfv FROM installs WHERE app_id = ?1 AND anonymous_id = ?2 AND idfv IS NOT NULL
         UNION SELECT gaid FROM installs WHERE app_id = ?1 AND anonymous_id = ?2 AND gaid IS NOT NULL
         UNION SELECT android_id FROM installs WHERE app_id = ?1 AND anonymous_id = ?2 AND android_id IS NOT NULL";
    match subject {
        Subject::AnonymousId(a) => {
            collect("SELECT click_id FROM installs WHERE anonymous_id = ?1 AND click_id IS NOT NULL", &[a])?;
            collect("SELECT click_id FROM touchpoints WHERE anonymous_id = ?1", &[a])?;
            collect(
                "SELECT c.click_id FROM clicks c JOIN installs i ON c.app_id = i.app_id
                 AND c.device_id IN (i.idfa, i.idfv, i.gaid, i.android_id) WHERE i.anonymous_id = ?1",
                &[a],
            )?;
        }
        Subject::DeviceId(d) => {
            collect(
                "SELECT click_id FROM installs WHERE click_id IS NOT NULL
                 AND (idfa = lower(?1) OR idfv = lower(?1) OR gaid = lower(?1) OR android_id = lower(?1))",
                &[d],
            )?;
            collect("SELECT click_id FROM clicks WHERE device_id = lower(?1)", &[d])?;
        }
        Subject::UserId(_) => {}
    }
    for (app, anon) in anonymous_ids {
        collect(
            "SELECT click_id FROM installs WHERE app_id = ?1 AND anonymous_id = ?2 AND click_id IS NOT NULL",
            &[app, anon],
        )?;
        collect("SELECT click_id FROM touchpoints WHERE app_id = ?1 AND anonymous_id = ?2", &[app, anon])?;
        collect(
            &format!("SELECT click_id FROM clicks WHERE app_id = ?1 AND device_id IN ({INSTALL_DEVICES})"),
            &[app, anon],
        )?;
    }
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Facts for the re-engagement rule: whether the device has an install of this app, and its
/// last activity (event or install) before `before`.
pub fn reengagement_facts(
    conn: &Connection,
    app_id: &str,
    anonymous_id: &str,
    before: i64,
) -> Result<ReengagementFacts, StorageError> {
    let installed: Option<i64> = conn
        .prepare_cached("SELECT MAX(install_ts) FROM installs WHERE app_id = ?1 AND anonymous_id = ?2")
        .map_err(backend)?
        .query_row(params![app_id, anonymous_id], |r| r.get(0))
        .map_err(backend)?;
    let last_install: Option<i64> = conn
        .prepare_cached(
            "SELECT MAX(install_ts) FROM installs WHERE app_id = ?1 AND anonymous_id = ?2 AND install_ts < ?3",
        )
        .map_err(backend)?
        .query_row(params![app_id, anonymous_id, before], |r| r.get(0))
        .map_err(backend)?;
    let last_event: Option<i64> = conn
        .prepare_cached(
            "SELECT MAX(corrected_ts) FROM events WHERE app_id = ?1 AND anonymous_id = ?2 AND corrected_ts < ?3",
        )
        .map_err(backend)?
        .query_row(params![app_id, anonymous_id, before], |r| r.get(0))
        .map_err(backend)?;
    Ok(ReengagementFacts { installed: installed.is_some(), last_activity: last_install.max(last_event) })
}

pub fn save_touchpoints(
    tx: &Transaction<'_>,
    touchpoints: &[Touchpoint],
    reengagements: &[Reengagement],
) -> Result<Vec<bool>, StorageError> {
    for t in touchpoints {
        insert_touchpoint(tx, t)?;
    }
    let mut fresh = Vec::with_capacity(reengagements.len());
    for r in reengagements {
        let n = tx
            .execute(
                "INSERT INTO reengagements (app_id, event_id, anonymous_id, click_id, link_id, campaign_id, network,
                     click_ts, open_ts, inactive_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT (app_id, event_id) DO NOTHING",
                params![
                    r.app_id,
                    r.event_id,
                    r.anonymous_id,
                    r.click_id,
                    r.link_id,
                    r.campaign_id,
                    r.network,
                    r.click_ts,
                    r.open_ts,
                    r.inactive_ms
                ],
            )
            .map_err(backend)?;
        fresh.push(n == 1);
    }
    Ok(fresh)
}

/// Touchpoints of every device of the user (the anonymous id itself, and every anonymous id
/// seen with `user_id` in this app) in `[since, until]`, oldest first, one per click.
pub fn conversion_touchpoints(
    conn: &Connection,
    app_id: &str,
    anonymous_id: &str,
    user_id: Option<&str>,
    since: i64,
    until: i64,
) -> Result<Vec<Touchpoint>, StorageError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT app_id, anonymous_id, ts, click_id, link_id, campaign_id, network, kind, source_event_id
             FROM touchpoints
             WHERE app_id = ?1 AND ts >= ?3 AND ts <= ?4
               AND (anonymous_id = ?2 OR anonymous_id IN
                    (SELECT DISTINCT anonymous_id FROM events WHERE app_id = ?1 AND user_id = ?5))
             ORDER BY ts, id",
        )
        .map_err(backend)?;
    let rows = stmt
        .query_map(params![app_id, anonymous_id, since, until, user_id], |r| {
            Ok(Touchpoint {
                app_id: r.get(0)?,
                anonymous_id: r.get(1)?,
                ts: r.get(2)?,
                click_id: r.get(3)?,
                link_id: r.get(4)?,
                campaign_id: r.get(5)?,
                network: r.get(6)?,
                kind: r.get(7)?,
                source_event_id: r.get(8)?,
            })
        })
        .map_err(backend)?;
    let mut out: Vec<Touchpoint> = Vec::new();
    for row in rows {
        let t = row.map_err(backend)?;
        if !out.iter().any(|o| o.click_id == t.click_id) {
            out.push(t);
        }
    }
    Ok(out)
}

/// Stores a conversion's credit rows, unless the conversion was credited before. Returns
/// whether it wrote them.
pub fn save_conversion(tx: &Transaction<'_>, rows: &[ConversionCredit]) -> Result<bool, StorageError> {
    let Some(first) = rows.first() else { return Ok(false) };
    let done: bool = tx
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM conversions WHERE app_id = ?1 AND event_id = ?2)",
            params![first.app_id, first.event_id],
            |r| r.get(0),
        )
        .map_err(backend)?;
    if done {
        return Ok(false);
    }
    let mut stmt = tx
        .prepare_cached(
            "INSERT INTO conversions (app_id, event_id, model, click_id, anonymous_id, user_id, event_type, ts,
                 link_id, campaign_id, network, touch_ts, credit, revenue, currency)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
        )
        .map_err(backend)?;
    for c in rows {
        stmt.execute(params![
            c.app_id,
            c.event_id,
            c.model,
            c.click_id.clone().unwrap_or_default(),
            c.anonymous_id,
            c.user_id,
            c.event_type,
            c.ts,
            c.link_id,
            c.campaign_id,
            c.network,
            c.touch_ts,
            c.credit,
            c.revenue,
            c.currency
        ])
        .map_err(backend)?;
    }
    Ok(true)
}

pub fn save_postback(tx: &Transaction<'_>, p: &PostbackRecord) -> Result<i64, StorageError> {
    tx.execute(
        "INSERT INTO postbacks (app_id, anonymous_id, event_id, network, event, url, state, attempts, created_at,
             updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7, ?7)",
        params![p.app_id, p.anonymous_id, p.event_id, p.network, p.event, p.url, p.created_at],
    )
    .map_err(backend)?;
    Ok(tx.last_insert_rowid())
}

/// Whether a postback still waits to be sent (a deletion removes it).
pub fn postback_pending(conn: &Connection, id: i64) -> Result<bool, StorageError> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM postbacks WHERE id = ?1 AND state = 'pending')")
        .map_err(backend)?
        .query_row([id], |r| r.get(0))
        .map_err(backend)
}

pub fn log_postback_attempt(tx: &Transaction<'_>, a: &PostbackAttempt) -> Result<(), StorageError> {
    // Only while the postback exists: a deletion in the meantime leaves no new trace.
    tx.execute(
        "INSERT INTO postback_attempts (postback_id, app_id, anonymous_id, attempt, status, error, duration_ms, at)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 WHERE EXISTS (SELECT 1 FROM postbacks WHERE id = ?1)",
        params![a.postback_id, a.app_id, a.anonymous_id, a.attempt, a.status, a.error, a.duration_ms, a.at],
    )
    .map_err(backend)?;
    tx.execute(
        "UPDATE postbacks SET state = ?2, attempts = ?3, last_status = ?4, last_error = ?5, updated_at = ?6
         WHERE id = ?1",
        params![a.postback_id, a.state, a.attempt, a.status, a.error, a.at],
    )
    .map_err(backend)?;
    Ok(())
}

/// Pending postbacks, oldest first.
pub fn pending_postbacks(conn: &Connection) -> Result<Vec<PendingPostback>, StorageError> {
    let mut stmt = conn
        .prepare("SELECT id, url, attempts, app_id, anonymous_id FROM postbacks WHERE state = 'pending' ORDER BY id")
        .map_err(backend)?;
    stmt.query_map([], |r| {
        Ok(PendingPostback {
            id: r.get(0)?,
            url: r.get(1)?,
            attempts: r.get(2)?,
            app_id: r.get(3)?,
            anonymous_id: r.get(4)?,
        })
    })
    .map_err(backend)?
    .collect::<Result<_, _>>()
    .map_err(backend)
}

/// A click's ad-network ids and sub-parameters (for postback macros).
pub fn click_params(conn: &Connection, click_id: &str) -> Result<Option<ClickParams>, StorageError> {
    let row: Option<(String, String)> = conn
        .prepare_cached("SELECT network_ids, sub_params FROM clicks WHERE click_id = ?1")
        .map_err(backend)?
        .query_row([click_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(backend)?;
    match row {
        Some((ids, subs)) => Ok(Some(ClickParams {
            network_ids: serde_json::from_str(&ids).map_err(json_err)?,
            sub_params: serde_json::from_str(&subs).map_err(json_err)?,
        })),
        None => Ok(None),
    }
}
