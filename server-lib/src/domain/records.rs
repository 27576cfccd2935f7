//! Rows of the attribution tables, as the storage trait passes them.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use trailmark_core::protocol::{AttributionResult, DeepLink};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    pub campaign_id: String,
    pub app_id: String,
    pub name: String,
    pub network: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Utm {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

impl Utm {
    /// `utm_*` pairs in a fixed order, present fields only.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("utm_source", &self.source),
            ("utm_medium", &self.medium),
            ("utm_campaign", &self.campaign),
            ("utm_term", &self.term),
            ("utm_content", &self.content),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destinations {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ios: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub android: Option<String>,
    pub web: String,
}

/// A tracking link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkRecord {
    pub link_id: String,
    pub code: String,
    pub campaign_id: String,
    pub app_id: String,
    pub network: String,
    pub utm: Utm,
    pub destinations: Destinations,
    pub deep_link: Option<DeepLink>,
    pub enabled: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One entry of a link's audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkAudit {
    pub link_id: String,
    pub at: i64,
    pub actor: String,
    /// `create`, `update`, `disable` or `enable`.
    pub action: String,
    pub before: Option<Value>,
    pub after: Value,
}

/// A click or an impression, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClickRecord {
    pub click_id: String,
    /// `click` or `impression`.
    pub kind: String,
    pub app_id: String,
    pub link_id: String,
    pub campaign_id: String,
    pub ts: i64,
    /// AES-256-GCM encrypted client address.
    #[serde(skip)]
    pub ip_enc: Option<Vec<u8>>,
    pub user_agent: Option<String>,
    pub referrer: Option<String>,
    pub accept_language: Option<String>,
    pub os: Option<String>,
    pub os_version: Option<String>,
    pub model: Option<String>,
    pub locale: Option<String>,
    pub timezone: Option<String>,
    pub screen: Option<String>,
    /// The device or advertising id on the click (lower-cased), and which kind it is.
    pub device_id: Option<String>,
    pub device_kind: Option<String>,
    /// Ad-network click ids (`gclid`, `fbclid`, `clickid`, …) as a JSON object.
    pub network_ids: Value,
    /// Sub-parameters (`sub1`…`sub5`, `site_id`, `creative_id`, …) as a JSON object.
    pub sub_params: Value,
    /// Index flags (click flooding).
    pub flags: u8,
    /// The raw device id sealed ([`crate::domain::identifiers`]); `device_id` holds its keyed hash.
    #[serde(skip)]
    pub device_enc: Option<Vec<u8>>,
    /// `redirect` (`/c/<code>`), `api` (`GET /v1/click`), `impression` or `s2s` (`POST /v1/click`).
    pub source: String,
}

/// An install (or reinstall) and its attribution decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallRecord {
    pub app_id: String,
    pub event_id: String,
    pub anonymous_id: String,
    pub platform: String,
    pub idfa: Option<String>,
    pub idfv: Option<String>,
    pub gaid: Option<String>,
    pub android_id: Option<String>,
    pub install_ts: i64,
    pub received_at: i64,
    /// `install` or `reinstall`.
    pub kind: String,
    pub result: AttributionResult,
    /// The decision's explanation: candidates, windows, rules.
    pub audit: Value,
    #[serde(skip)]
    pub ip_enc: Option<Vec<u8>>,
    /// The raw advertising and vendor ids sealed ([`crate::domain::identifiers`]); the id
    /// fields above hold their keyed hashes.
    #[serde(skip)]
    pub ids_enc: Option<Vec<u8>>,
    /// For an install rejected as fraud: the campaign, link and network of the click that would
    /// have won, stored in the row's columns (not in the answer, which stays organic; not the
    /// click id, which a deletion of this device would follow to a click that may be someone
    /// else's) so reports count the rejection against the campaign it came through. Not read
    /// back.
    #[serde(skip)]
    pub rejected_credit: Option<[String; 3]>,
}

impl InstallRecord {
    /// The campaign, link, click and network the install's stored columns name: the answer's,
    /// or for an install rejected as fraud [`InstallRecord::rejected_credit`].
    pub fn credited(&self) -> [Option<String>; 4] {
        let r = &self.result;
        match &self.rejected_credit {
            Some([campaign, link, network]) if r.fraud.rejected && r.campaign_id.is_none() => {
                [Some(campaign.clone()), Some(link.clone()), None, Some(network.clone())]
            }
            _ => [r.campaign_id.clone(), r.link_id.clone(), r.click_id.clone(), r.network.clone()],
        }
    }
}

/// A device whose installs are attributed afresh every time (a QA phone), by the stored form
/// of its advertising or vendor id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestDevice {
    pub device_id: String,
    pub label: String,
    /// The raw id sealed (`domain::identifiers`), for the admin list.
    pub device_enc: Option<Vec<u8>>,
    pub created_at: i64,
}

/// The ids that identify a device across installs of one app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceKeys {
    pub anonymous_id: String,
    pub idfa: Option<String>,
    pub idfv: Option<String>,
    pub gaid: Option<String>,
    pub android_id: Option<String>,
}

/// A touchpoint credited to a device: the install's winning click, a re-engagement click, or
/// a click the SDK reported in an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Touchpoint {
    pub app_id: String,
    pub anonymous_id: String,
    pub ts: i64,
    pub click_id: String,
    pub link_id: String,
    pub campaign_id: String,
    pub network: String,
    /// `install`, `reengagement`, `click` or `impression`.
    pub kind: String,
    /// The install or event that tied the touchpoint to the device.
    pub source_event_id: String,
}

/// A fraud alert (install bursts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FraudAlert {
    pub rule: String,
    pub app_id: String,
    pub campaign_id: String,
    pub at: i64,
    pub detail: Value,
}

/// A device attributed before, inactive for a while, reopened through a campaign click.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reengagement {
    pub app_id: String,
    /// The event that opened the app (`deep_link_opened`).
    pub event_id: String,
    pub anonymous_id: String,
    pub click_id: String,
    pub link_id: String,
    pub campaign_id: String,
    pub network: String,
    pub click_ts: i64,
    pub open_ts: i64,
    /// Time without activity before the click; `None` when the device had none.
    pub inactive_ms: Option<i64>,
}

/// One touchpoint's share of one conversion under one model. A conversion without
/// touchpoints gets one organic row per model (no click, credit 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversionCredit {
    pub app_id: String,
    pub event_id: String,
    pub model: String,
    pub click_id: Option<String>,
    pub anonymous_id: String,
    pub user_id: Option<String>,
    pub event_type: String,
    pub ts: i64,
    pub link_id: Option<String>,
    pub campaign_id: Option<String>,
    pub network: Option<String>,
    pub touch_ts: Option<i64>,
    pub credit: f64,
    /// `credit` × the conversion's revenue.
    pub revenue: Option<f64>,
    pub currency: Option<String>,
}

/// A postback to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostbackRecord {
    pub app_id: String,
    pub anonymous_id: String,
    pub event_id: String,
    pub network: String,
    pub event: String,
    pub url: String,
    pub created_at: i64,
}

/// One delivery attempt of a postback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostbackAttempt {
    pub postback_id: i64,
    pub app_id: String,
    pub anonymous_id: String,
    pub attempt: u32,
    /// HTTP status, or `None` when no response came.
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration_ms: i64,
    pub at: i64,
    /// The postback's state after the attempt: `delivered`, `pending` or `failed`.
    pub state: String,
}

/// A postback still to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPostback {
    pub id: i64,
    /// The network it is for (its delivery queue).
    pub network: String,
    pub url: String,
    /// Delivery attempts so far.
    pub attempts: u32,
    pub app_id: String,
    pub anonymous_id: String,
}

/// Every campaign and link, as the server loads them at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkCatalog {
    pub campaigns: Vec<Campaign>,
    pub links: Vec<LinkRecord>,
}

/// The two lookups a new install needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstallLookup {
    /// The install with the request's event id, when one is stored (the request is a retry).
    pub existing: Option<InstallRecord>,
    /// The device's latest install that counted as new (not a reinstall); looked up only when
    /// `existing` is `None`.
    pub last_install: Option<InstallRecord>,
}

/// Facts for the re-engagement rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReengagementFacts {
    /// The device has an install of the app.
    pub installed: bool,
    /// Its last activity (event or install) before the time asked about.
    pub last_activity: Option<i64>,
}

/// A click's ad-network ids and sub-parameters (for postback macros).
#[derive(Debug, Clone, PartialEq)]
pub struct ClickParams {
    /// Ad-network click ids (`gclid`, `fbclid`, `clickid`, …) as a JSON object.
    pub network_ids: Value,
    /// Sub-parameters (`sub1`…`sub5`, …) as a JSON object.
    pub sub_params: Value,
}

/// Attributed installs of one campaign in one hour (the burst baseline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallCount {
    pub campaign_id: String,
    /// The hour's start (Unix ms).
    pub hour: i64,
    pub installs: u32,
}

/// One day's advertising cost of a campaign (`POST /v1/campaigns/{id}/cost`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CampaignCost {
    pub campaign_id: String,
    /// UTC day (days since 1970-01-01).
    pub date_key: i64,
    pub amount: f64,
    /// ISO 4217 code, upper case.
    pub currency: String,
    pub updated_at: i64,
}

/// What one refresh step did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RefreshReport {
    /// Pending events taken into the star schema.
    pub events: usize,
    /// (app, day, source) rollups recomputed.
    pub rollups: usize,
    /// Nothing is left pending up to the horizon.
    pub done: bool,
    /// The queue position this refresh stops at.
    pub horizon: i64,
}

/// Where the retention purge cuts (Unix ms; rounded down to the UTC day).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionCutoffs {
    /// Raw events, facts and sessions before this go.
    pub events: i64,
    /// Clicks and impressions before this go.
    pub clicks: i64,
}

/// Rows the retention purge deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    pub events: u64,
    pub facts: u64,
    pub sessions: u64,
    pub clicks: u64,
    pub orphans: u64,
}

/// A report's question to the store.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportQuery {
    /// Facts of an app in `[from, to]` (Unix ms), of these types (all when empty), oldest first.
    Events { app_id: String, types: Vec<String>, from: i64, to: i64 },
    /// Every fact of the sessions that hold an `event_type` in `[from, to]`, by session then time.
    SessionsWith { app_id: String, event_type: String, from: i64, to: i64 },
    /// Users with their start (install, else first seen) and their active days in
    /// `[from_day, to_day + max_offset]`.
    Cohorts { app_id: String, from_day: i64, to_day: i64, max_offset: i64 },
    /// Per campaign, the sums of its daily rollups over `[from_day, to_day]` under `model`.
    Campaigns { app_id: String, from_day: i64, to_day: i64, model: String },
    /// The newest `limit` raw events of any user (the dashboard's live feed).
    RecentEvents { limit: usize },
    /// The newest `limit` fraud alerts at or after `since`.
    Alerts { since: i64, limit: usize },
    /// Trend series of buckets `first..=last` of `width` ms (a day or an hour): events by type
    /// with their revenue, installs by match type (`rejected` apart), conversions credited under
    /// `model`. Daily buckets read the rollups, hourly ones the facts. `campaign_id` and
    /// `network` (empty: any) keep the rows of one campaign or network (events and revenue by
    /// the user's campaign, installs and conversions by the one they were credited to).
    Trend { app_id: String, width: i64, first: i64, last: i64, campaign_id: String, network: String, model: String },
    /// One campaign's links (clicks, impressions, installs, rejected installs in `[from, to]`)
    /// and its rejected installs counted by fraud rule.
    CampaignLinks { app_id: String, campaign_id: String, from: i64, to: i64 },
    /// Conversion credit rows of an event (`event_id`) or of a device (`anonymous_id`), newest
    /// first, at most `limit`.
    Credits { app_id: String, event_id: Option<String>, anonymous_id: Option<String>, limit: usize },
}

/// One number of a trend: a series' `key` (an event type, a match type) in a bucket (its
/// index: start / width), with a count and, where the series has one, revenue.
#[derive(Debug, Clone, PartialEq)]
pub struct TrendRow {
    pub bucket: i64,
    pub key: String,
    pub count: f64,
    pub revenue: f64,
}

/// A store's rows for [`ReportQuery::Trend`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TrendRows {
    /// By event type: events and their revenue.
    pub events: Vec<TrendRow>,
    /// By match type, or `rejected`.
    pub installs: Vec<TrendRow>,
    /// Key empty: credit summed (conversions) and credited revenue.
    pub conversions: Vec<TrendRow>,
}

/// A link of a campaign with its counts over a report's range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkStats {
    pub link_id: String,
    pub clicks: i64,
    pub impressions: i64,
    pub installs: i64,
    pub rejected_installs: i64,
}

/// A row of `fact_events` with its user's dimensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactRow {
    pub anonymous_id: String,
    /// The user id known for the anonymous id (from any of its events).
    pub user_id: Option<String>,
    pub event_type: String,
    pub ts: i64,
    pub session_key: String,
    /// The user's campaign: the attributed install's, else the first `utm_*` campaign seen.
    pub campaign_key: Option<String>,
}

/// A user for cohort reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub anonymous_id: String,
    pub user_id: Option<String>,
    /// Install time, else first event time.
    pub start: i64,
    /// UTC days with any event.
    pub active_days: Vec<i64>,
}

/// A campaign's sums over a report's days.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignDay {
    pub campaign_id: String,
    pub name: String,
    pub network: String,
    pub impressions: i64,
    pub clicks: i64,
    pub installs: i64,
    pub rejected_installs: i64,
    pub conversions: f64,
    pub revenue: f64,
    pub cost: Option<f64>,
    pub currency: Option<String>,
}

/// A store's answer to a [`ReportQuery`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReportRows {
    Events(Vec<FactRow>),
    Users(Vec<UserRow>),
    Campaigns(Vec<CampaignDay>),
    Recent(Vec<NewEvent>),
    Alerts(Vec<FraudAlert>),
    Trend(TrendRows),
    /// Links with their counts, and (fraud rule, rejected installs) pairs.
    CampaignLinks(Vec<LinkStats>, Vec<(String, i64)>),
    Credits(Vec<ConversionCredit>),
}

/// A validated, normalised, enriched event ready to store.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewEvent {
    pub app_id: String,
    pub event_id: String,
    pub event_type: String,
    pub anonymous_id: String,
    pub user_id: Option<String>,
    pub device_id: Option<String>,
    pub session_id: Option<String>,
    /// Client time (Unix ms) as sent.
    pub client_ts: i64,
    /// `received_at − (sent_at − timestamp)`: client time corrected for device clock skew; at
    /// most 24 h after `received_at` (a later time is set to `received_at` and flagged in
    /// `enrichment.time`).
    pub corrected_ts: i64,
    pub received_at: i64,
    /// JSON object texts.
    pub properties: String,
    pub context: String,
    pub enrichment: String,
    /// The raw `user_id` and `device_id` sealed ([`crate::domain::identifiers`]); the columns
    /// above hold their keyed hashes.
    pub ids_enc: Option<Vec<u8>>,
    /// Client IP, AES-256-GCM encrypted (nonce ‖ ciphertext).
    pub ip_enc: Option<Vec<u8>>,
}

/// The one form in which device ids (advertising ids, IDFV, Android id, an event's `device_id`,
/// a click's device parameter) are stored, hashed and compared: ASCII whitespace trimmed,
/// ASCII letters lower-cased (SDKs and networks send the same hexadecimal id in either case).
pub fn device_id_form(raw: &str) -> String {
    raw.trim_matches(|c: char| c.is_ascii_whitespace()).to_ascii_lowercase()
}

/// Whose data to delete. Identifiers are compared exactly; build a device subject with
/// [`Subject::device`], which puts the id in its stored form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    UserId(String),
    AnonymousId(String),
    DeviceId(String),
}

impl Subject {
    /// A device id subject, in the form device ids are stored in ([`device_id_form`]).
    pub fn device(raw: &str) -> Subject {
        Subject::DeviceId(device_id_form(raw))
    }
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::UserId(_) => "user_id",
            Subject::AnonymousId(_) => "anonymous_id",
            Subject::DeviceId(_) => "device_id",
        }
    }
    pub fn value(&self) -> &str {
        match self {
            Subject::UserId(v) | Subject::AnonymousId(v) | Subject::DeviceId(v) => v,
        }
    }
}

/// The audit record of a deletion. It holds a keyed hash of the subject, never the id itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionAudit {
    pub receipt_id: String,
    pub subject_kind: &'static str,
    pub subject_hash: String,
    pub requested_at: i64,
    pub requested_by: String,
}

/// What a deletion removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteReport {
    pub rows: u64,
    /// Clicks and impressions deleted, so the in-memory index can forget them too.
    pub click_ids: Vec<String>,
    /// The anonymous ids the subject expanded to, as `(app_id, anonymous_id)`, for the
    /// deletion record downstream consumers act on.
    pub anonymous_ids: Vec<(String, String)>,
}

/// One link of the identity map: the stored user id `alias_user_id` became `user_id` (an
/// `alias` event's `previous_id` and `user_id`, both in stored form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserLink {
    pub app_id: String,
    pub alias_user_id: String,
    pub user_id: String,
    pub created_at: i64,
}

/// An advertising id a device learned after its install (an `advertising_id` event), in stored
/// form, for that device's install rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdIdUpdate {
    pub app_id: String,
    pub anonymous_id: String,
    /// `idfa` or `gaid`.
    pub column: &'static str,
    pub value: String,
}

/// Who holds the OLAP loader's lease, and until when: one loader at a time across instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OlapLease {
    /// This loader's random id.
    pub holder: i64,
    /// The server's clock (Unix ms).
    pub now: i64,
    /// How long the lease lasts unless renewed (ms).
    pub ttl: i64,
}

/// A page of the OLAP outbox with the current state of the rows it names (ADR 0018).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OlapPage {
    /// Larger than every earlier page's: the version the loaded rows carry.
    pub version: i64,
    /// The entries taken (removed by [`crate::storage::OlapOutboxStore::olap_done`] once loaded).
    pub seqs: Vec<i64>,
    /// The ClickHouse tables are to be emptied before anything else of this page is loaded.
    pub reset: bool,
    /// More entries may be waiting (the page is full, or ends where erasures end).
    pub more: bool,
    /// The outbox is off (an instance without ClickHouse switched it off): nothing was taken.
    pub switched_off: bool,
    pub facts: Vec<OlapFact>,
    pub users: Vec<OlapUser>,
    pub sessions: Vec<OlapSession>,
    /// Rows of the mirrored tables (campaigns, costs, rollups, installs, conversions).
    pub mirrored: Vec<OlapRow>,
    /// (app, anonymous id) pairs to erase (a deletion).
    pub erase_anonymous: Vec<(String, String)>,
    /// User ids to erase in every app (a deletion).
    pub erase_users: Vec<String>,
    /// Facts of days before this go (the retention purge).
    pub purge_before_day: Option<i64>,
}

/// A fact as the loader copies it (its store's insertion order in `ord`, for ties in time).
#[derive(Debug, Clone, PartialEq)]
pub struct OlapFact {
    pub app_id: String,
    pub event_id: String,
    pub ord: i64,
    pub date_key: i64,
    pub ts: i64,
    pub event_type: String,
    pub anonymous_id: String,
    pub user_id: Option<String>,
    pub session_key: String,
    pub revenue: Option<f64>,
    pub currency: Option<String>,
}

/// A user row, or (`row: None`) a user no longer in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OlapUser {
    pub app_id: String,
    pub anonymous_id: String,
    pub row: Option<OlapUserRow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OlapUserRow {
    pub user_id: Option<String>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub events: i64,
    pub install_ts: Option<i64>,
    pub install_campaign_id: Option<String>,
    pub utm_campaign_key: Option<String>,
}

/// A row of a mirrored table as a JSON object of its copied columns, or (`row: None`) a row
/// no longer in the store; `key` holds its key columns' values.
#[derive(Debug, Clone, PartialEq)]
pub struct OlapRow {
    pub table: String,
    pub key: Vec<(String, serde_json::Value)>,
    pub row: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A session row, or (`row: None`) a session no longer in the store (merged or purged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OlapSession {
    pub app_id: String,
    pub session_key: String,
    pub row: Option<OlapSessionRow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OlapSessionRow {
    pub anonymous_id: String,
    pub user_id: Option<String>,
    pub start_ts: i64,
    pub end_ts: i64,
    pub events: i64,
}
