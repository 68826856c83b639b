//! What `bccguard breaker list|reset` get through the control socket: the breaker's settings
//! in force, where its counts are, and the keys tripped or counting.

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::{Breaker, KeyStatus, StoreState, limits};
use crate::message::decide::Policy;

/// How often `bccguard_breaker_tripped` is refreshed.
const GAUGE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The breaker of a running relay with the policy in force (replaced on reload).
#[derive(Clone)]
pub struct Control {
    /// The counts.
    pub breaker: Breaker,
    /// The policy in force.
    pub policy: Arc<ArcSwap<Policy>>,
}

/// `breaker list`: settings, store, keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// Whether the breaker is on (`policy.breaker.leaks` set).
    pub enabled: bool,
    /// What it counts by: sender, auth_user or client.
    pub key: String,
    /// Leaks that trip it.
    pub leaks: Option<u64>,
    /// The window, seconds.
    pub window_secs: u64,
    /// How long a trip lasts, seconds.
    pub duration_secs: u64,
    /// hold or tempfail.
    pub action: String,
    /// Where the counts are.
    pub store: StoreState,
    /// Keys tripped (first) or counting.
    pub keys: Vec<KeyStatus>,
}

impl Control {
    /// The listing at `now` (Unix milliseconds).
    pub async fn listing(&self, now: i64) -> Listing {
        let b = self.policy.load().breaker.clone();
        let keys = match limits(&b) {
            Some(l) => self.breaker.list(now, l).await,
            None => Vec::new(),
        };
        Listing {
            enabled: b.leaks.is_some(),
            key: b.key.as_str().into(),
            leaks: b.leaks,
            window_secs: b.window.0.as_secs(),
            duration_secs: b.duration.0.as_secs(),
            action: b.action.as_str().into(),
            store: self.breaker.state(),
            keys,
        }
    }

    /// Keep `bccguard_breaker_tripped` (keys tripped now) current until `stop`: trips end by
    /// themselves, and in Redis other relays trip keys too.
    pub async fn watch_tripped(self, stop: tokio_util::sync::CancellationToken) {
        loop {
            self.refresh_tripped().await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(GAUGE_EVERY) => {}
            }
        }
    }

    /// Set `bccguard_breaker_tripped` from the counts now.
    pub async fn refresh_tripped(&self) {
        let now = chrono::Utc::now().timestamp_millis();
        let tripped = match limits(&self.policy.load().breaker) {
            Some(l) => self.breaker.list(now, l).await.iter().filter(|k| k.trip.is_some()).count(),
            None => 0,
        };
        crate::metrics::metrics().rules.breaker_tripped.set(i64::try_from(tripped).unwrap_or(i64::MAX));
    }

    /// Close one key; whether it was tripped or counted.
    pub async fn reset(&self, key: &str) -> bool {
        let reset = self.breaker.reset(key).await;
        self.refresh_tripped().await;
        if reset {
            tracing::info!(key = %crate::message::address::redact_in_text(key), "campaign breaker reset by an operator");
        }
        reset
    }
}
