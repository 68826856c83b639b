//! What the spool keeps for a message: the envelope and plan (first line of its file), and
//! the journal of delivery events from which its state is rebuilt.

use serde::{Deserialize, Serialize};

use crate::addresses::Addresses;
use crate::config::Action;
use crate::hold::ReleaseAs;
use crate::plan::Plan;
use crate::queue_id::QueueId;

/// Spool format version written in every message file (2: with `size` and `crc32`).
pub const FORMAT_VERSION: u32 = 2;

/// The first line of a message file (JSON): everything but the message bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Spool format version.
    pub version: u32,
    /// Queue id.
    pub id: QueueId,
    /// When the message was accepted, Unix milliseconds.
    pub received_at: i64,
    /// The client's IP address.
    pub client: String,
    /// Envelope sender; empty for the null sender.
    pub sender: String,
    /// Envelope recipients; plan transactions refer to them by index.
    pub recipients: Addresses,
    /// The leak decision in short.
    pub decision: DecisionSummary,
    /// The upstream transactions.
    pub plan: Plan,
    /// True for a delivery status notification bccguard generated (never bounced itself).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dsn: bool,
    /// Length of the message bytes after this line; set by the spool when it stores the
    /// message (absent in version 1 files, which are not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// CRC-32 (IEEE) of those bytes, likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<u32>,
}

impl Meta {
    /// The envelope of a message bccguard generates (a bounce or a notice) to `to`: the null
    /// sender, one unchanged transaction, flagged so that it is never bounced or notified
    /// about.
    pub fn generated(id: QueueId, to: &str, received_at: i64) -> Meta {
        Meta {
            version: FORMAT_VERSION,
            id,
            received_at,
            client: "local".into(),
            sender: String::new(),
            recipients: [to].into_iter().collect(),
            decision: DecisionSummary::default(),
            plan: Plan {
                transactions: vec![crate::plan::Transaction {
                    recipients: smallvec::smallvec![0],
                    rewrite: crate::plan::Rewrite::Original,
                }],
                ..Plan::default()
            },
            dsn: true,
            size: None,
            crc32: None,
        }
    }
}

/// The parts of the decision worth keeping with the message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionSummary {
    /// Whether it leaked.
    pub leak: bool,
    /// The action taken.
    pub action: Action,
    /// Distinct external visible addresses.
    pub exposure: usize,
    /// The policy rule that decided (SPEC §9): `default` for the top-level `[policy]`,
    /// `breaker` for the campaign breaker; absent in files written before rules existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The broadcast signals seen (`reply`, `bulk`, ..., `external_domains=2`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<String>,
}

/// One journal line: something that happened to some recipients of one transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    /// The upstream accepted these recipients.
    Delivered {
        /// Transaction index.
        txn: usize,
        /// Recipient indexes.
        rcpts: Vec<usize>,
        /// Unix milliseconds.
        at: i64,
        /// The upstream's reply.
        reply: String,
    },
    /// A temporary failure; try again at `next`.
    Deferred {
        /// Transaction index.
        txn: usize,
        /// Recipient indexes.
        rcpts: Vec<usize>,
        /// Unix milliseconds.
        at: i64,
        /// The upstream's reply or the error.
        reply: String,
        /// Attempts made so far for this transaction.
        attempts: u32,
        /// Next attempt, Unix milliseconds.
        next: i64,
    },
    /// A permanent failure (or out of time): these recipients will not get the message.
    Failed {
        /// Transaction index.
        txn: usize,
        /// Recipient indexes.
        rcpts: Vec<usize>,
        /// Unix milliseconds.
        at: i64,
        /// The upstream's reply, or the last one before it expired.
        reply: String,
        /// True when it failed by running out of `spool.max_age`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        expired: bool,
    },
    /// A delivery status notification was queued for these failed recipients (or none was due).
    Bounced {
        /// Recipient indexes.
        rcpts: Vec<usize>,
        /// Unix milliseconds.
        at: i64,
        /// The DSN's queue id, if one was sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        dsn: Option<QueueId>,
    },
    /// An operator asked for every pending transaction to be tried now.
    Retry {
        /// Unix milliseconds.
        at: i64,
    },
    /// An operator retried a failed bounce: these failed recipients are pending again.
    Requeued {
        /// Recipient indexes.
        rcpts: Vec<usize>,
        /// Unix milliseconds.
        at: i64,
    },
    /// A person released a held message: from here on it is delivered by `plan`, made at
    /// release with the policy then in force. Written once, before any delivery event; the
    /// message's envelope line (which never changes) still says `hold` with an empty plan.
    Released {
        /// Unix milliseconds.
        at: i64,
        /// What the person asked for.
        how: ReleaseAs,
        /// The action the plan carries out (`pass` when the message no longer leaks).
        action: Action,
        /// The delivery plan.
        plan: Plan,
    },
}

impl Meta {
    /// Whether the message is held: its action is `hold` and it has not been released (a
    /// meta read through [`resolve_release`] carries the released plan and action).
    pub fn is_held(&self) -> bool {
        self.decision.action == Action::Hold
    }
}

/// Apply a release recorded in a held message's journal to its envelope: the released plan
/// and action become the message's. Returns the records that count for its delivery state:
/// from the release on (before it, the message had no transactions). Without a release,
/// `records` as they are.
pub fn resolve_release(meta: &mut Meta, mut records: Vec<Record>) -> Vec<Record> {
    if meta.decision.action != Action::Hold {
        return records;
    }
    let Some(at) = records.iter().position(|r| matches!(r, Record::Released { .. })) else {
        return records;
    };
    records.drain(..at);
    if let Record::Released { action, plan, .. } = &records[0] {
        meta.plan = plan.clone();
        meta.decision.action = *action;
    }
    records
}

/// Where one recipient stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RcptState {
    /// Not yet delivered.
    Pending,
    /// Accepted upstream.
    Delivered,
    /// Will not be delivered; `bounced` once its DSN is queued.
    Failed {
        /// Why: one string shared by every recipient the same record failed (a campaign's
        /// 100,000 failures hold one copy of the reply, not 100,000).
        reply: std::sync::Arc<str>,
        /// Whether it ran out of time.
        expired: bool,
        /// Whether the sender has been told.
        bounced: bool,
    },
}

impl RcptState {
    /// Delivered or failed.
    pub fn is_final(&self) -> bool {
        !matches!(self, RcptState::Pending)
    }
}

/// Retry bookkeeping of one transaction: 16 bytes, since an exploded message has one per
/// recipient (its replies are the journal's and the recipients' business).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnState {
    /// Attempts that failed temporarily.
    pub attempts: u32,
    /// Earliest next attempt, Unix milliseconds (0: now).
    pub next: i64,
}

/// A message's delivery state, rebuilt from its journal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// Per envelope recipient.
    pub rcpts: Vec<RcptState>,
    /// Per plan transaction.
    pub txns: Vec<TxnState>,
    /// The most recent reply or error of any attempt.
    pub last_reply: Option<String>,
    /// When a held message was released (its `spool.max_age` counts from then).
    pub released_at: Option<i64>,
}

/// How a transaction stands, for listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnStatus {
    /// Some recipient still to deliver.
    Pending,
    /// Every recipient delivered.
    Delivered,
    /// Done, and some recipient failed.
    Failed,
}

impl State {
    /// The state of a message nothing has happened to yet.
    pub fn new(meta: &Meta) -> State {
        State {
            rcpts: vec![RcptState::Pending; meta.recipients.len()],
            txns: vec![TxnState::default(); meta.plan.transactions.len()],
            last_reply: None,
            released_at: None,
        }
    }

    /// Rebuild from journal records (unknown indexes are ignored).
    pub fn replay(meta: &Meta, records: &[Record]) -> State {
        let mut state = State::new(meta);
        for r in records {
            state.apply(r);
        }
        state
    }

    /// Apply one event.
    pub fn apply(&mut self, record: &Record) {
        let set = |rcpts: &mut Vec<RcptState>, which: &[usize], to: RcptState| {
            for &i in which {
                if let Some(r) = rcpts.get_mut(i) {
                    *r = to.clone();
                }
            }
        };
        match record {
            Record::Delivered { rcpts, .. } => set(&mut self.rcpts, rcpts, RcptState::Delivered),
            Record::Failed { rcpts, reply, expired, .. } => {
                let failed = RcptState::Failed { reply: reply.as_str().into(), expired: *expired, bounced: false };
                set(&mut self.rcpts, rcpts, failed);
            }
            Record::Deferred { txn, attempts, next, .. } => {
                if let Some(t) = self.txns.get_mut(*txn) {
                    *t = TxnState { attempts: *attempts, next: *next };
                }
            }
            Record::Bounced { rcpts, .. } => {
                for &i in rcpts {
                    if let Some(RcptState::Failed { bounced, .. }) = self.rcpts.get_mut(i) {
                        *bounced = true;
                    }
                }
            }
            Record::Retry { at } => self.txns.iter_mut().for_each(|t| t.next = t.next.min(*at)),
            Record::Requeued { rcpts, at } => {
                for &i in rcpts {
                    if let Some(r @ RcptState::Failed { bounced: false, .. }) = self.rcpts.get_mut(i) {
                        *r = RcptState::Pending;
                    }
                }
                self.txns.iter_mut().for_each(|t| t.next = t.next.min(*at));
            }
            // Its plan is the message's (see [`resolve_release`]); the state starts here.
            Record::Released { at, .. } => self.released_at = Some(*at),
        }
        if let Record::Delivered { reply, .. } | Record::Failed { reply, .. } | Record::Deferred { reply, .. } = record
        {
            self.last_reply = Some(reply.clone());
        }
    }

    /// Recipients of transaction `txn` (in `plan`) still to deliver.
    pub fn pending_in(&self, plan: &Plan, txn: usize) -> Vec<usize> {
        plan.transactions[txn].recipients.iter().copied().filter(|&i| !self.rcpts[i].is_final()).collect()
    }

    /// Transactions with pending recipients whose next attempt is due at `now`.
    pub fn due(&self, plan: &Plan, now: i64) -> Vec<usize> {
        (0..plan.transactions.len())
            .filter(|&t| self.txns[t].next <= now && !self.pending_in(plan, t).is_empty())
            .collect()
    }

    /// The earliest next attempt of any transaction with pending recipients.
    pub fn next_attempt(&self, plan: &Plan) -> Option<i64> {
        (0..plan.transactions.len()).filter(|&t| !self.pending_in(plan, t).is_empty()).map(|t| self.txns[t].next).min()
    }

    /// Failed recipients the sender has not been told about.
    pub fn unbounced(&self) -> Vec<usize> {
        (0..self.rcpts.len()).filter(|&i| matches!(self.rcpts[i], RcptState::Failed { bounced: false, .. })).collect()
    }

    /// Failed recipients kept without a bounce and nothing left to try: a failed bounce
    /// (when the message is one; see the delivery manager).
    pub fn is_failed_bounce(&self) -> bool {
        self.rcpts.iter().all(RcptState::is_final) && !self.unbounced().is_empty()
    }

    /// Every recipient delivered or failed, and every failure reported.
    pub fn is_done(&self) -> bool {
        self.rcpts.iter().all(|r| matches!(r, RcptState::Delivered | RcptState::Failed { bounced: true, .. }))
    }

    /// How transaction `txn` stands.
    pub fn txn_status(&self, plan: &Plan, txn: usize) -> TxnStatus {
        let rcpts = &plan.transactions[txn].recipients;
        if rcpts.iter().any(|&i| !self.rcpts[i].is_final()) {
            TxnStatus::Pending
        } else if rcpts.iter().all(|&i| self.rcpts[i] == RcptState::Delivered) {
            TxnStatus::Delivered
        } else {
            TxnStatus::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Rewrite, Transaction};

    fn meta() -> Meta {
        let txn = |recipients: Vec<usize>| Transaction { recipients: recipients.into(), rewrite: Rewrite::Original };
        Meta {
            version: FORMAT_VERSION,
            id: QueueId::generate(),
            received_at: 1000,
            client: "127.0.0.1".into(),
            sender: "s@x.test".into(),
            recipients: ["a@x.test", "b@x.test", "c@x.test"].iter().collect(),
            decision: DecisionSummary::default(),
            plan: Plan { transactions: vec![txn(vec![0, 1]), txn(vec![2])], ..Plan::default() },
            dsn: false,
            size: None,
            crc32: None,
        }
    }

    #[test]
    fn the_journal_rebuilds_the_state() {
        let meta = meta();
        let records = [
            Record::Delivered { txn: 0, rcpts: vec![0], at: 1001, reply: "250 ok".into() },
            Record::Failed { txn: 0, rcpts: vec![1], at: 1001, reply: "550 no".into(), expired: false },
            Record::Deferred { txn: 1, rcpts: vec![2], at: 1001, reply: "451 later".into(), attempts: 1, next: 1061 },
        ];
        let state = State::replay(&meta, &records);
        assert_eq!(state.rcpts[0], RcptState::Delivered);
        assert_eq!(state.unbounced(), [1]);
        assert_eq!(state.due(&meta.plan, 1060), Vec::<usize>::new());
        assert_eq!(state.due(&meta.plan, 1061), [1]);
        assert_eq!(state.next_attempt(&meta.plan), Some(1061));
        assert_eq!(state.txn_status(&meta.plan, 0), TxnStatus::Failed);
        assert_eq!(state.txn_status(&meta.plan, 1), TxnStatus::Pending);
        assert!(!state.is_done());

        let mut state = state;
        state.apply(&Record::Retry { at: 1010 });
        assert_eq!(state.due(&meta.plan, 1010), [1]);
        state.apply(&Record::Bounced { rcpts: vec![1], at: 1011, dsn: None });
        state.apply(&Record::Delivered { txn: 1, rcpts: vec![2], at: 1012, reply: "250".into() });
        assert!(state.is_done());
    }

    #[test]
    fn records_are_json_lines() {
        let r = Record::Deferred { txn: 1, rcpts: vec![2], at: 5, reply: "451 x".into(), attempts: 1, next: 65 };
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(line, r#"{"event":"deferred","txn":1,"rcpts":[2],"at":5,"reply":"451 x","attempts":1,"next":65}"#);
        assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), r);
    }
}
