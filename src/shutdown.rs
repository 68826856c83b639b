//! The two phases of shutdown, shared by the front door and delivery: stop taking new work,
//! then, once the grace period is over, stop the work in flight.

use tokio_util::sync::CancellationToken;

/// The two phases of shutdown.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    /// Stop accepting; idle sessions get 421, sessions in a transaction finish it first; no
    /// new delivery passes start.
    pub soft: CancellationToken,
    /// The grace period is over: every session gets 421 now, deliveries in flight stop (their
    /// messages stay spooled).
    pub hard: CancellationToken,
}
