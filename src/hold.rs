//! Held messages (SPEC §10): what a person sees of them and what they can do. This is the
//! interface the queue CLI, the control socket and the review page share; the delivery
//! manager implements [`HeldQueue`] (a live relay), and tests may implement it in memory.

use std::future::Future;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::queue_id::QueueId;

/// How a held message is delivered when a person releases it. The plan is made at release,
/// with the policy in force then, as if the message had just arrived with this action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseAs {
    /// Each external recipient gets a copy addressed to them alone (the default).
    #[default]
    Explode,
    /// One copy for everyone with `To: undisclosed-recipients:;`.
    Undisclose,
    /// As it is: the message unchanged (the person judged it no leak).
    Pass,
}

impl ReleaseAs {
    /// The lowercase name used on the command line, in forms, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseAs::Explode => "explode",
            ReleaseAs::Undisclose => "undisclose",
            ReleaseAs::Pass => "pass",
        }
    }
}

impl FromStr for ReleaseAs {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "explode" => Ok(ReleaseAs::Explode),
            "undisclose" => Ok(ReleaseAs::Undisclose),
            "pass" => Ok(ReleaseAs::Pass),
            _ => Err(format!("{s:?} is not one of explode, undisclose, pass")),
        }
    }
}

/// One held message as a list shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSummary {
    /// Queue id.
    pub id: QueueId,
    /// When it was accepted, Unix milliseconds.
    pub received_at: i64,
    /// When it will be deleted (with a DSN to the sender) unless released, Unix milliseconds.
    pub expires_at: i64,
    /// Envelope sender; empty for the null sender.
    pub sender: String,
    /// The `Subject:` field, decoded (RFC 2047) and with control characters removed; empty
    /// when there is none.
    pub subject: String,
    /// Envelope recipients.
    pub recipients: usize,
    /// Distinct external visible addresses.
    pub exposure: usize,
    /// The policy rule that decided to hold it (SPEC §9), when rules exist.
    pub rule: Option<String>,
}

/// One held message as its own page shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldMessage {
    /// What the list shows.
    pub summary: HeldSummary,
    /// The header block as received (after bccguard's `Received:` field), lossy UTF-8.
    pub header: String,
    /// The envelope recipients.
    pub recipients: Vec<String>,
    /// The decision in words, e.g. "leak: 1000 external addresses visible (max 1); action hold".
    pub decision: String,
    /// The broadcast signals seen (SPEC §9), when they exist.
    pub signals: Vec<String>,
    /// What each release would deliver, e.g. ("explode", "1000 transactions: one per external
    /// recipient, internal recipients together").
    pub plans: Vec<(ReleaseAs, String)>,
}

/// What a release or delete found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldOutcome {
    /// Done now.
    Done,
    /// The message is in the queue but not held (already released): nothing done.
    NotHeld,
    /// No such message (delivered, deleted, or never there): nothing done.
    NotFound,
}

/// The campaign breaker tripped for one key (SPEC §9), as the review page lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrippedBreaker {
    /// What it counts by: a sender, an AUTH user or a client address.
    pub key: String,
    /// Leaking messages counted when it tripped.
    pub count: u64,
    /// When it tripped, Unix milliseconds.
    pub at: i64,
    /// When it closes by itself, Unix milliseconds.
    pub until: i64,
    /// What it does meanwhile: `hold` or `tempfail`.
    pub action: String,
}

/// Why a held-queue request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    /// The relay is shutting down.
    #[error("the relay is shutting down")]
    Stopped,
    /// The spool could not be read or written.
    #[error("spool: {0}")]
    Spool(String),
}

/// The held messages of a spool, and the two things a person can do with one. Release and
/// delete are idempotent and race-safe: however often and from however many places a message
/// is released, it is delivered at most once.
pub trait HeldQueue: Send + Sync + 'static {
    /// Every held message, oldest first.
    fn held(&self) -> impl Future<Output = Result<Vec<HeldSummary>, HoldError>> + Send;
    /// One held message; `None` when it is not held (or not there).
    fn held_message(&self, id: &QueueId) -> impl Future<Output = Result<Option<HeldMessage>, HoldError>> + Send;
    /// Deliver a held message as `how`.
    fn release(&self, id: &QueueId, how: ReleaseAs) -> impl Future<Output = Result<HoldOutcome, HoldError>> + Send;
    /// Drop a held message without delivering it and without a DSN.
    fn delete_held(&self, id: &QueueId) -> impl Future<Output = Result<HoldOutcome, HoldError>> + Send;
    /// The campaign breakers tripped now, the latest first (none where there is no breaker).
    fn tripped_breakers(&self) -> impl Future<Output = Vec<TrippedBreaker>> + Send {
        std::future::ready(Vec::new())
    }
}
