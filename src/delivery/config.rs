//! Delivery settings, read once from the configuration: shared by the manager, its passes
//! and the scheduler.

use std::time::Duration;

use crate::config::Config;
use crate::events::Redaction;

/// Passes running at once, per upstream connection: a pass holds its message's header block
/// and the copies being written, so the messages in delivery follow the upstream's
/// connection cap, not the length of the queue (which is kept as ids and times only).
const PASSES_PER_CONNECTION: usize = 2;

/// Delivery settings.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// Our host name (for bounces).
    pub hostname: String,
    /// `spool.retry`.
    pub retry: Vec<Duration>,
    /// `spool.max_age`.
    pub max_age: Duration,
    /// `hold.max_age`: a held message not released by then is deleted, with a DSN.
    pub hold_max_age: Duration,
    /// `log.redact_addresses`.
    pub redaction: Redaction,
    /// Delivery passes running at once.
    pub max_passes: usize,
    /// Copies one pass sends at once (`upstream.max_connections`): the next copy is built
    /// only when a send finishes, so a pass holds as many copies as the upstream has
    /// connections, however many recipients the message has.
    pub sends_per_pass: usize,
}

impl DeliveryConfig {
    /// The settings in `config`.
    pub fn from_config(config: &Config) -> DeliveryConfig {
        DeliveryConfig {
            hostname: config.server.hostname.clone(),
            retry: config.spool.retry.iter().map(|d| d.0).collect(),
            max_age: config.spool.max_age.0,
            hold_max_age: config.hold.max_age.0,
            redaction: Redaction(config.log.redact_addresses),
            max_passes: config.upstream.max_connections.max(1) * PASSES_PER_CONNECTION,
            sends_per_pass: config.upstream.max_connections.max(1),
        }
    }

    /// When a held message that arrived at `received_at` (Unix ms) expires.
    pub fn hold_expires(&self, received_at: i64) -> i64 {
        received_at.saturating_add(self.hold_max_age.as_millis() as i64)
    }
}
