//! The queue the review page shows in a running relay: the delivery manager's held messages
//! ([`Deliverer`]) and the campaign breaker's tripped keys.

use crate::breaker::Control;
use crate::delivery::Deliverer;
use crate::hold::{HeldMessage, HeldQueue, HeldSummary, HoldError, HoldOutcome, ReleaseAs, TrippedBreaker};
use crate::queue_id::QueueId;

/// Held messages from the manager, tripped breakers from the breaker.
#[derive(Clone)]
pub struct Live {
    deliverer: Deliverer,
    breaker: Control,
}

impl Live {
    /// The page's view of a running relay.
    pub fn new(deliverer: Deliverer, breaker: Control) -> Live {
        Live { deliverer, breaker }
    }
}

impl HeldQueue for Live {
    async fn held(&self) -> Result<Vec<HeldSummary>, HoldError> {
        self.deliverer.held().await
    }

    async fn held_message(&self, id: &QueueId) -> Result<Option<HeldMessage>, HoldError> {
        self.deliverer.held_message(id).await
    }

    async fn release(&self, id: &QueueId, how: ReleaseAs) -> Result<HoldOutcome, HoldError> {
        self.deliverer.release(id, how).await
    }

    async fn delete_held(&self, id: &QueueId) -> Result<HoldOutcome, HoldError> {
        self.deliverer.delete_held(id).await
    }

    async fn tripped_breakers(&self) -> Vec<TrippedBreaker> {
        let listing = self.breaker.listing(chrono::Utc::now().timestamp_millis()).await;
        let mut tripped: Vec<TrippedBreaker> = listing
            .keys
            .into_iter()
            .filter_map(|k| {
                let trip = k.trip?;
                let action = listing.action.clone();
                Some(TrippedBreaker { key: k.key, count: trip.count, at: trip.at, until: trip.until, action })
            })
            .collect();
        tripped.sort_by_key(|t| std::cmp::Reverse(t.at));
        tripped
    }
}
