//! The log lines and metrics of notices and the webhook, one struct per event (as
//! [`crate::events`]); addresses are redacted unless `log.redact_addresses = false`.

use tracing::{info, warn};

use crate::events::Redaction;
use crate::metrics::{KindLabels, metrics};
use crate::queue_id::QueueId;

/// A notice was spooled for one recipient.
pub(super) struct NoticeQueued<'a> {
    /// The message it is about.
    pub id: &'a QueueId,
    /// The notice's own queue id.
    pub notice: &'a QueueId,
    /// The event's name.
    pub kind: &'static str,
    /// Its recipient.
    pub to: &'a str,
}

impl NoticeQueued<'_> {
    /// Log and count it.
    pub fn emit(&self, redaction: Redaction) {
        metrics().notices.get_or_create(&KindLabels { kind: self.kind.into() }).inc();
        info!(queue_id = %self.id, notice = %self.notice, kind = self.kind, to = %redaction.address(self.to), "notice queued");
    }
}

/// An event's notices were not spooled.
pub(super) struct NoticeDropped<'a> {
    /// The message it was about.
    pub id: &'a QueueId,
    /// Why (holds no address).
    pub reason: &'a str,
}

impl NoticeDropped<'_> {
    /// Log and count it.
    pub fn emit(&self) {
        metrics().notices_dropped.inc();
        warn!(queue_id = %self.id, reason = self.reason, "notice dropped");
    }
}

/// The webhook endpoint accepted an event.
pub(super) struct WebhookDelivered<'a> {
    /// The event's message.
    pub id: &'a str,
    /// Attempts it took.
    pub attempts: u32,
}

impl WebhookDelivered<'_> {
    /// Log and count it.
    pub fn emit(&self) {
        metrics().webhook_deliveries.inc();
        tracing::debug!(queue_id = %self.id, attempts = self.attempts, "webhook event delivered");
    }
}

/// A webhook attempt failed and will be tried again.
pub(super) struct WebhookRetry<'a> {
    /// The event's message.
    pub id: &'a str,
    /// Attempts so far.
    pub attempts: u32,
    /// What went wrong.
    pub error: &'a str,
}

impl WebhookRetry<'_> {
    /// Log and count it.
    pub fn emit(&self) {
        metrics().webhook_retries.inc();
        info!(queue_id = %self.id, attempts = self.attempts, error = %self.error, "webhook attempt failed; retrying");
    }
}

/// A webhook event was given up: refused, out of attempts, or cut short by shutdown.
pub(super) struct WebhookFailed<'a> {
    /// The event's message.
    pub id: &'a str,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: &'a str,
}

impl WebhookFailed<'_> {
    /// Log and count it.
    pub fn emit(&self) {
        metrics().webhook_failures.inc();
        warn!(queue_id = %self.id, attempts = self.attempts, error = %self.error, "webhook event given up");
    }
}

/// A webhook event found the queue full. Only the first drop of a run is logged; the rest
/// are counted.
pub(super) struct WebhookDropped<'a> {
    /// The event's message.
    pub id: &'a QueueId,
    /// Whether the previous event was queued (so this drop starts a run).
    pub first: bool,
}

impl WebhookDropped<'_> {
    /// Log and count it.
    pub fn emit(&self) {
        metrics().webhook_dropped.inc();
        if self.first {
            warn!(
                queue_id = %self.id,
                "webhook queue full: events are dropped (counted in bccguard_webhook_dropped_total) until it has room"
            );
        }
    }
}
