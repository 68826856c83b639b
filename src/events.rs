//! Internal events: one struct per event, emitting both its log line (addresses redacted
//! unless `log.redact_addresses = false`) and its metrics.

use std::net::SocketAddr;

use tracing::info;

use crate::message::address;
use crate::message::decide::Decision;
use crate::metrics::{MessageLabels, OutcomeLabels, metrics};
use crate::queue_id::QueueId;

/// How addresses appear in logs.
#[derive(Clone, Copy, Debug)]
pub struct Redaction(pub bool);

impl Redaction {
    /// Free text (a reply, an error) as it may be logged: addresses in it redacted.
    pub fn text(self, t: &str) -> String {
        if self.0 { address::redact_in_text(t) } else { t.to_string() }
    }

    /// The address as it may be logged.
    pub fn address(self, a: &str) -> String {
        if self.0 {
            address::redact(a)
        } else if a.is_empty() {
            "<>".into()
        } else {
            a.to_string()
        }
    }
}

/// A message was decided: accepted (the client got 250), held (250 too), or rejected as a
/// leak.
#[derive(Debug)]
pub struct MessageDecided<'a> {
    /// Queue id.
    pub id: &'a QueueId,
    /// Client address.
    pub client: SocketAddr,
    /// Envelope sender.
    pub sender: &'a str,
    /// Number of envelope recipients.
    pub recipients: usize,
    /// Message size in bytes, trace field included.
    pub size: usize,
    /// The leak decision.
    pub decision: &'a Decision,
    /// Upstream transactions planned (0 when rejected).
    pub transactions: usize,
    /// Of those, the ones with a rewritten copy (explode, undisclose).
    pub copies: usize,
}

impl MessageDecided<'_> {
    /// Write the log line and count the message.
    pub fn emit(&self, redaction: Redaction) {
        let d = self.decision;
        let m = metrics();
        let labels = MessageLabels { action: d.action.as_str().into(), leak: d.leak.to_string() };
        m.messages.get_or_create(&labels).inc();
        m.exposure.observe(d.exposure as f64);
        m.copies.inc_by(self.copies as u64);
        let outcome = match (d.action, self.transactions) {
            (crate::config::Action::Hold, _) => "message held for review (bccguard queue list --held)",
            (_, 0) => "message rejected",
            _ => "message accepted",
        };
        info!(
            queue_id = %self.id,
            client = %self.client.ip().to_canonical(),
            sender = %redaction.address(self.sender),
            recipients = self.recipients,
            size = self.size,
            exposure = d.exposure,
            leak = d.leak,
            action = d.action.as_str(),
            monitor = d.monitor,
            transactions = self.transactions,
            reason = %d,
            "{outcome}"
        );
    }
}

/// One recipient's outcome in one delivery attempt.
#[derive(Debug)]
pub struct DeliveryAttempt<'a> {
    /// Queue id.
    pub id: &'a QueueId,
    /// The recipient.
    pub recipient: &'a str,
    /// What happened.
    pub outcome: &'a crate::delivery::Outcome,
    /// Attempts so far, this one included.
    pub attempts: u32,
}

impl DeliveryAttempt<'_> {
    /// Write the log line (warn for failures) and count the attempt.
    pub fn emit(&self, redaction: Redaction) {
        use crate::delivery::Outcome;
        let outcome = match self.outcome {
            Outcome::Delivered(_) => "delivered",
            Outcome::Deferred(_) => "deferred",
            Outcome::Failed(_) => "failed",
        };
        metrics().deliveries.get_or_create(&OutcomeLabels { outcome: outcome.into() }).inc();
        let to = redaction.address(self.recipient);
        let reply = redaction.text(&self.outcome.to_string());
        match self.outcome {
            Outcome::Delivered(_) => {
                info!(queue_id = %self.id, to = %to, attempts = self.attempts, reply = %reply, "delivered")
            }
            Outcome::Deferred(_) => {
                info!(queue_id = %self.id, to = %to, attempts = self.attempts, reply = %reply, "deferred")
            }
            Outcome::Failed(_) => {
                tracing::warn!(queue_id = %self.id, to = %to, attempts = self.attempts, reply = %reply, "failed")
            }
        }
    }
}

/// A delivery status notification was queued to the sender.
#[derive(Debug)]
pub struct BounceQueued<'a> {
    /// The original message.
    pub id: &'a QueueId,
    /// The notification's queue id.
    pub dsn: &'a QueueId,
    /// Failed recipients it names.
    pub failed: usize,
    /// Who it goes to.
    pub sender: &'a str,
}

impl BounceQueued<'_> {
    /// Write the log line and count the bounce.
    pub fn emit(&self, redaction: Redaction) {
        metrics().bounces.inc();
        info!(
            queue_id = %self.id,
            dsn = %self.dsn,
            failed = self.failed,
            to = %redaction.address(self.sender),
            "bounce queued"
        );
    }
}

/// A spooled message failed its checks and was set aside in `damaged/`.
#[derive(Debug)]
pub struct SpoolDamaged<'a> {
    /// The message.
    pub id: &'a QueueId,
    /// What was wrong (holds no address).
    pub reason: &'a str,
}

impl SpoolDamaged<'_> {
    /// Write the log line and count it.
    pub fn emit(&self) {
        metrics().spool_damaged.inc();
        tracing::error!(queue_id = %self.id, reason = %self.reason, "damaged message set aside in damaged/, not delivered");
    }
}

/// An upstream attempt was refused because of the relay itself (credentials, TLS, policy).
#[derive(Debug)]
pub struct UpstreamRefuses<'a> {
    /// The refusal.
    pub refusal: &'a crate::delivery::reply::Refusal,
    /// Whether this differs from the refusal already in force (logged only then).
    pub changed: bool,
}

impl UpstreamRefuses<'_> {
    /// Count the refusal; log it when the state changed.
    pub fn emit(&self) {
        let m = metrics();
        let stage = self.refusal.stage.as_str().to_ascii_lowercase();
        m.upstream_refusals.get_or_create(&crate::metrics::StageLabels { stage }).inc();
        m.upstream_refusing.set(1);
        if self.changed {
            tracing::error!(
                stage = self.refusal.stage.as_str(),
                reply = %address::redact_in_text(&self.refusal.text),
                "the upstream refuses the relay; every copy is deferred until it accepts again"
            );
        }
    }
}

/// The upstream accepts the relay again after refusing it.
#[derive(Debug)]
pub struct UpstreamAcceptsAgain<'a> {
    /// The refusal that ended.
    pub was: &'a crate::delivery::reply::Refusal,
}

impl UpstreamAcceptsAgain<'_> {
    /// Log it and clear the gauge.
    pub fn emit(&self) {
        metrics().upstream_refusing.set(0);
        info!(stage = self.was.stage.as_str(), "the upstream accepts the relay again");
    }
}

/// A bounce (or another message with the null sender) failed permanently: it stays in the
/// queue as a failed bounce until an operator retries or deletes it.
#[derive(Debug)]
pub struct BounceFailed<'a> {
    /// The message.
    pub id: &'a QueueId,
    /// Recipients that failed.
    pub failed: usize,
    /// The last reply.
    pub reply: &'a str,
}

impl BounceFailed<'_> {
    /// Log at ERROR and count it.
    pub fn emit(&self, redaction: Redaction) {
        metrics().failed_bounces.inc();
        tracing::error!(
            queue_id = %self.id,
            failed = self.failed,
            reply = %redaction.text(self.reply),
            "a bounce cannot be delivered; it stays in the queue until an operator retries or deletes it"
        );
    }
}

/// What a person (or the clock) did to a held message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeldChange {
    /// Released, to be delivered as this plan's action.
    Released {
        /// What the person asked for.
        how: crate::hold::ReleaseAs,
        /// The action of the plan made (`pass` when the message no longer leaks).
        action: crate::config::Action,
        /// Transactions planned.
        transactions: usize,
    },
    /// Deleted by a person, without a DSN.
    Deleted,
    /// Deleted after `hold.max_age`; `dsn` tells whether the sender got a DSN.
    Expired {
        /// Whether a DSN was queued (none for the null sender).
        dsn: bool,
    },
}

/// A held message was released, deleted, or expired.
#[derive(Debug)]
pub struct HeldChanged<'a> {
    /// Queue id.
    pub id: &'a QueueId,
    /// Envelope sender.
    pub sender: &'a str,
    /// Envelope recipients.
    pub recipients: usize,
    /// What happened.
    pub change: HeldChange,
}

impl HeldChanged<'_> {
    /// Write the log line and count it.
    pub fn emit(&self, redaction: Redaction) {
        let m = &metrics().hold;
        let (id, sender, recipients) = (self.id, redaction.address(self.sender), self.recipients);
        match self.change {
            HeldChange::Released { how, action, transactions } => {
                m.releases.get_or_create(&crate::metrics::ReleaseLabels { r#as: how.as_str().into() }).inc();
                info!(
                    queue_id = %id, sender = %sender, recipients, release_as = how.as_str(),
                    action = action.as_str(), transactions, "held message released"
                );
            }
            HeldChange::Deleted => {
                m.deletes.inc();
                info!(queue_id = %id, sender = %sender, recipients, "held message deleted");
            }
            HeldChange::Expired { dsn } => {
                m.expiries.inc();
                info!(
                    queue_id = %id, sender = %sender, recipients, dsn,
                    "held message expired (hold.max_age) and deleted"
                );
            }
        }
    }
}
