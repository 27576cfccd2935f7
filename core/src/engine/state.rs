//! What the engine persists besides the queue (one JSON document in the store).

use serde::{Deserialize, Serialize};

use super::{Millis, Stats};
use crate::protocol::{ConsentContext, DropReport};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Session {
    pub(super) id: String,
    pub(super) last_activity: Millis,
}

/// Everything the engine persists besides the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) anonymous_id: String,
    pub(super) user_id: Option<String>,
    pub(super) consent: ConsentContext,
    pub(super) opted_out: bool,
    pub(super) installed: bool,
    pub(super) session: Option<Session>,
    /// Local drops not yet reported to the server.
    pub(super) unreported: DropReport,
    pub(super) next_seq: u64,
    pub(super) stats: Stats,
    /// The install-attribution request not answered yet (created on the first open).
    #[serde(default)]
    pub(super) install_request: Option<PendingInstall>,
    /// The server's answer to it (`AttributionResult` JSON).
    #[serde(default)]
    pub(super) attribution: Option<String>,
}

/// What the install request (`POST /v1/install`) will carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct PendingInstall {
    pub(super) event_id: uuid::Uuid,
    /// First open (Unix ms): the install time.
    pub(super) created: Millis,
    pub(super) referrer: Option<String>,
    pub(super) referrer_click_ts: Option<i64>,
    pub(super) install_begin_ts: Option<i64>,
    /// The host reported the Play Install Referrer (possibly as unavailable).
    pub(super) referrer_given: bool,
    pub(super) click_id: Option<String>,
}
