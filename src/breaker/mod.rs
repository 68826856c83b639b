//! The campaign breaker (SPEC §9): when one key (a sender, an AUTH user or a client) has sent
//! `leaks` leaking messages within `window`, it trips, and for `duration` every later message
//! from that key gets the breaker's action (`hold`, or `tempfail`: 451 4.7.1).
//!
//! - [`counts`]: the counting, pure, time as a value.
//! - `shared`: the counts in Redis (one Lua script per message: atomic, so every relay
//!   sharing the Redis trips together), at the edge.
//! - [`Breaker`]: the relay's handle: Redis when `redis_url` is set and reachable, otherwise
//!   the counts in this process; Redis trouble is logged, counted and shown in `/readyz`,
//!   and never refuses mail.

mod control;
pub mod counts;
mod shared;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

pub use control::{Control, Listing};
pub use counts::{KeyStatus, Limits, Trip, Verdict};

use crate::config::{BreakerConfig, BreakerKey};
use crate::message::address;
use crate::smtp::reply::{Reply, Status};

/// The reply to a message from a key whose breaker is tripped, under `action = "tempfail"`.
pub const TEMPFAIL: Reply = Reply::new(
    451,
    Status(4, 7, 1),
    "Campaign breaker tripped: too many messages from this sender showed their recipients to each other; try again later",
);

/// The rule name a decision carries when the breaker made it.
pub const RULE: &str = "breaker";

/// The limits of a breaker configuration; `None` when it is off.
pub fn limits(c: &BreakerConfig) -> Option<Limits> {
    let ms = |d: crate::config::Duration| i64::try_from(d.0.as_millis()).unwrap_or(i64::MAX);
    c.leaks.map(|leaks| Limits { leaks, window_ms: ms(c.window), duration_ms: ms(c.duration) })
}

/// The key a message is counted by; `None` when it has none (the null sender, a client that
/// did not authenticate under `key = "auth_user"`).
pub fn key(kind: BreakerKey, sender: &str, auth_user: Option<&str>, client: std::net::IpAddr) -> Option<String> {
    match kind {
        BreakerKey::Sender if sender.is_empty() => None,
        BreakerKey::Sender => {
            let (local, _) = address::split(sender);
            Some(format!("{local}@{}", address::domain_key(sender)))
        }
        BreakerKey::AuthUser => auth_user.map(str::to_string),
        BreakerKey::Client => Some(client.to_canonical().to_string()),
    }
}

/// Where the counts are, as `breaker list` and `/readyz` tell it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreState {
    /// `local` or `redis`.
    pub store: String,
    /// Why the shared store is not used now (Redis unreachable), if so.
    pub degraded: Option<String>,
}

/// The relay's breaker; cheap to clone. The counts survive a reload (only the settings,
/// passed with each call, change).
#[derive(Clone, Default)]
pub struct Breaker {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    local: Mutex<counts::Counts>,
    shared: Option<shared::Shared>,
    /// Whether the last use of the shared store failed.
    degraded: AtomicBool,
    last_error: Mutex<Option<String>>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("state", &self.state()).finish()
    }
}

impl Breaker {
    /// A breaker counting in this process, or in Redis at `redis_url` (connected lazily).
    pub fn new(redis_url: Option<&str>) -> Breaker {
        let shared = redis_url.and_then(|url| match shared::Shared::new(url) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "breaker: bad redis_url; counting in this relay");
                None
            }
        });
        Breaker { inner: Arc::new(Inner { shared, ..Inner::default() }) }
    }

    /// Judge one message from `key` at `now` (Unix milliseconds).
    pub async fn judge(&self, key: &str, leak: bool, member: &str, now: i64, limits: Limits) -> Verdict {
        if let Some(shared) = &self.inner.shared {
            match shared.judge(key, leak, member, now, limits).await {
                Ok(verdict) => {
                    self.store_ok();
                    if let Verdict::Tripped(trip) | Verdict::JustTripped(trip) = verdict {
                        self.local().set_trip(key, trip);
                    }
                    return verdict;
                }
                Err(e) => self.store_failed(&e),
            }
        }
        self.local().judge(key, leak, now, limits)
    }

    /// Keys tripped or counting now.
    pub async fn list(&self, now: i64, limits: Limits) -> Vec<KeyStatus> {
        if let Some(shared) = &self.inner.shared {
            match shared.list(now, limits).await {
                Ok(list) => {
                    self.store_ok();
                    return list;
                }
                Err(e) => self.store_failed(&e),
            }
        }
        self.local().list(now, limits)
    }

    /// Close `key`'s breaker and forget its count (in Redis too, when it is reachable);
    /// whether there was anything to reset.
    pub async fn reset(&self, key: &str) -> bool {
        let local = self.local().reset(key);
        let shared = match &self.inner.shared {
            Some(shared) => match shared.reset(key).await {
                Ok(found) => {
                    self.store_ok();
                    found
                }
                Err(e) => {
                    self.store_failed(&e);
                    false
                }
            },
            None => false,
        };
        local || shared
    }

    /// Where the counts are now.
    pub fn state(&self) -> StoreState {
        let store = if self.inner.shared.is_some() { "redis" } else { "local" };
        let degraded = if self.inner.degraded.load(Ordering::Relaxed) {
            self.inner.last_error.lock().expect("not poisoned").clone()
        } else {
            None
        };
        StoreState { store: store.into(), degraded }
    }

    /// What `/readyz` shows about the counts (never failing readiness: mail is accepted on
    /// local counts while Redis is unreachable).
    pub fn readiness_notes(&self) -> Vec<String> {
        let state = self.state();
        match (state.store.as_str(), state.degraded) {
            ("redis", None) => vec!["breaker counts: ok (redis)".into()],
            ("redis", Some(why)) => vec![format!(
                "breaker counts: DEGRADED: {}; counting in this relay until it is back (mail is accepted)",
                address::redact_in_text(&why)
            )],
            _ => Vec::new(),
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, counts::Counts> {
        self.inner.local.lock().expect("not poisoned")
    }

    fn store_ok(&self) {
        if self.inner.degraded.swap(false, Ordering::Relaxed) {
            crate::metrics::metrics().rules.breaker_redis_down.set(0);
            info!("breaker: redis reachable again; counts are shared again");
        }
    }

    fn store_failed(&self, e: &shared::SharedError) {
        let m = crate::metrics::metrics();
        m.rules.breaker_redis_errors.inc();
        m.rules.breaker_redis_down.set(1);
        *self.inner.last_error.lock().expect("not poisoned") = Some(e.to_string());
        if !self.inner.degraded.swap(true, Ordering::Relaxed) {
            warn!(error = %e, "breaker: redis unreachable; counting in this relay until it is back (mail is accepted as usual)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        let ip = "::ffff:10.0.0.7".parse().unwrap();
        assert_eq!(
            key(BreakerKey::Sender, "News@Shop.EXAMPLE.com", None, ip).as_deref(),
            Some("News@shop.example.com")
        );
        assert_eq!(key(BreakerKey::Sender, "", None, ip), None, "the null sender is never counted");
        assert_eq!(key(BreakerKey::AuthUser, "a@x.test", Some("crm"), ip).as_deref(), Some("crm"));
        assert_eq!(key(BreakerKey::AuthUser, "a@x.test", None, ip), None);
        assert_eq!(key(BreakerKey::Client, "a@x.test", None, ip).as_deref(), Some("10.0.0.7"));
    }

    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_local_counts() {
        let breaker = Breaker::new(Some("redis://127.0.0.1:1/"));
        let limits = Limits { leaks: 2, window_ms: 60_000, duration_ms: 60_000 };
        assert_eq!(breaker.judge("k", true, "m1", 0, limits).await, Verdict::Open { count: 1 });
        assert!(matches!(breaker.judge("k", true, "m2", 1, limits).await, Verdict::JustTripped(_)));
        let state = breaker.state();
        assert_eq!(state.store, "redis");
        assert!(state.degraded.is_some(), "{state:?}");
        assert_eq!(breaker.list(2, limits).await.len(), 1);
        assert!(breaker.reset("k").await);
    }
}
