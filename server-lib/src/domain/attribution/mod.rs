//! Install attribution: the in-memory touch index, the matching waterfall, the fraud rules and
//! the conversion-credit models. Everything here is synchronous and clock-free: time comes in as
//! an argument, so the engine can be tested and benchmarked without HTTP or storage.

pub mod fingerprint;
pub mod fraud;
pub mod index;
pub mod matching;
pub mod models;

pub use fraud::{FraudConfig, FraudPolicy};
pub use index::{OsFamily, Touch, TouchIndex, TouchKind};
pub use matching::{Candidate, Decision, InstallFacts, LinkInfo, RuleFired, attribute};
pub use models::{Model, credit};

pub const SECOND: i64 = 1_000;
pub const MINUTE: i64 = 60 * SECOND;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;

/// Windows, thresholds and models of attribution, with their defaults. Every duration is in
/// milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributionConfig {
    /// How long after a click an install can be credited to it by click id, referrer or device
    /// id. Default 7 days.
    pub click_window: i64,
    /// How long after a click an install can be credited to it by fingerprint. Default 24 h.
    pub fingerprint_window: i64,
    /// Lowest fingerprint confidence (0–1, the calibrated probability that the match is right)
    /// that counts as a match. Default 0.8, chosen on the journey simulator for precision ≥ 0.95
    /// (docs/attribution.md). Above 1: no fingerprint matching at all.
    pub fingerprint_threshold: f64,
    /// Fingerprint iOS installs without an IDFA (the person did not allow tracking under App
    /// Tracking Transparency). Default off: Apple's rules forbid fingerprinting them.
    pub fingerprint_ios_without_att: bool,
    /// Most touches one lookup walks per device id or per network (newest first). Default 512.
    pub fingerprint_max_candidates: usize,
    /// How long after an impression an install can be credited to it (view-through, same
    /// device id). Default 24 h.
    pub view_through_window: i64,
    /// A device attributed before that clicks a link after this long without activity, and
    /// opens the app, is re-attributed (re-engagement). Default 7 days.
    pub reengagement_inactivity: i64,
    /// A reinstall this soon after the device's first install is not a new install: it keeps
    /// its original attribution. Default 90 days.
    pub reattribution_window: i64,
    /// Conversion lookback: touchpoints this old or newer share credit. Default 30 days.
    pub lookback_window: i64,
    /// Half-life of the time-decay model. Default 7 days.
    pub half_life: i64,
    /// Event types that are conversions. Default `purchase`, `order_completed`, `subscribe`,
    /// `start_trial`.
    pub conversion_events: Vec<String>,
    /// Networks in order of priority, for candidates with the same time. Networks not listed
    /// come after, in name order.
    pub network_priority: Vec<String>,
    pub fraud: FraudConfig,
    /// Most touches the in-memory index holds (about 125 bytes each); past it the oldest are
    /// evicted first, a chunk of up to 65,536 at a time, and counted in
    /// `trailmark_touch_index_evicted_total`. Default 10,000,000 (about 1.2 GB).
    pub max_indexed_touches: usize,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            click_window: 7 * DAY,
            fingerprint_window: DAY,
            fingerprint_threshold: 0.8,
            fingerprint_ios_without_att: false,
            fingerprint_max_candidates: 512,
            view_through_window: DAY,
            reengagement_inactivity: 7 * DAY,
            reattribution_window: 90 * DAY,
            lookback_window: 30 * DAY,
            half_life: 7 * DAY,
            conversion_events: ["purchase", "order_completed", "subscribe", "start_trial"].map(String::from).to_vec(),
            network_priority: Vec::new(),
            fraud: FraudConfig::default(),
            max_indexed_touches: 10_000_000,
        }
    }
}

impl AttributionConfig {
    /// How long touches stay in memory: the longest window that reads them.
    pub fn index_ttl(&self) -> i64 {
        self.click_window.max(self.fingerprint_window).max(self.view_through_window)
    }

    /// Checks the values make sense (positive windows, a threshold in 0–1).
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("click_window", self.click_window),
            ("fingerprint_window", self.fingerprint_window),
            ("view_through_window", self.view_through_window),
            ("reengagement_inactivity", self.reengagement_inactivity),
            ("reattribution_window", self.reattribution_window),
            ("lookback_window", self.lookback_window),
            ("half_life", self.half_life),
        ] {
            if v <= 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if !(self.fingerprint_threshold.is_finite() && self.fingerprint_threshold >= 0.0) {
            return Err("fingerprint_threshold must be 0 or more (above 1 turns fingerprinting off)".into());
        }
        if self.max_indexed_touches == 0 {
            return Err("max_indexed_touches must be at least 1".into());
        }
        if self.fingerprint_max_candidates == 0 {
            return Err("fingerprint_max_candidates must be at least 1".into());
        }
        self.fraud.validate()
    }

    /// Rank of a network for tie-breaks: lower wins.
    pub fn network_rank(&self, network: &str) -> usize {
        self.network_priority.iter().position(|n| n.eq_ignore_ascii_case(network)).unwrap_or(usize::MAX)
    }
}
