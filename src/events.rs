//! Internal events: one struct per event, emitting both its log line (addresses redacted
//! unless `log.redact_addresses = false`) and its metrics.

use std::net::SocketAddr;

use tracing::info;

use crate::message::address;
use crate::message::decide::Decision;
use crate::metrics::{DecisionLabels, MessageLabels, SignalLabels, metrics};
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
    /// The broadcast signals seen (SPEC §9).
    pub signals: &'a [String],
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
        let rule = DecisionLabels { rule: d.rule.clone(), action: d.action.as_str().into() };
        m.rules.decisions.get_or_create(&rule).inc();
        for signal in self.signals.iter().filter(|s| !s.contains('=')) {
            m.rules.signals.get_or_create(&SignalLabels { signal: signal.clone() }).inc();
        }
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
            rule = %d.rule,
            signals = %self.signals.join(","),
            transactions = self.transactions,
            reason = %d,
            dkim = d.dkim.summary(),
            attendees = d.attendees,
            "{outcome}"
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
