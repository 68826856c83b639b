//! The breaker's counting, pure: per key, the leaking messages in a sliding window and the
//! trip; time is a value (Unix milliseconds) passed in, never read.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// The numbers a breaker runs by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Leaking messages within `window_ms` that trip it.
    pub leaks: u64,
    /// The sliding window, milliseconds.
    pub window_ms: i64,
    /// How long a trip lasts, milliseconds.
    pub duration_ms: i64,
}

/// A tripped breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trip {
    /// When it tripped, Unix milliseconds.
    pub at: i64,
    /// When it closes by itself, Unix milliseconds.
    pub until: i64,
    /// The leaking messages counted when it tripped.
    pub count: u64,
}

/// What the breaker says about one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Tripped before this message: the message gets the breaker's action.
    Tripped(Trip),
    /// This leaking message tripped it (the message itself is handled as usual).
    JustTripped(Trip),
    /// Not tripped; `count` leaking messages in the window (this one included, if it leaks).
    Open {
        /// Leaks counted in the window.
        count: u64,
    },
}

/// One key as `breaker list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyStatus {
    /// The key (a sender, an AUTH user or a client address).
    pub key: String,
    /// Leaking messages in the window now.
    pub count: u64,
    /// The trip in force, if any.
    pub trip: Option<Trip>,
}

#[derive(Debug, Default)]
struct KeyState {
    leaks: VecDeque<i64>,
    trip: Option<Trip>,
}

/// Keys counted at most: a flood of leaks from ever new senders is not counted beyond this
/// (those keys are let through, as when the breaker is off) rather than growing the map.
pub const MAX_KEYS: usize = 100_000;

/// Every key's leaks and trip.
#[derive(Debug, Default)]
pub struct Counts {
    keys: HashMap<String, KeyState>,
    /// When the map was last cleared of keys with nothing in the window (Unix ms).
    pruned_at: i64,
}

impl Counts {
    /// Judge one message from `key` at `now`: a key that is tripped stays so until its trip
    /// ends; otherwise a leaking message is counted, and the `limits.leaks`-th within the
    /// window trips it (the count then starts again from zero).
    pub fn judge(&mut self, key: &str, leak: bool, now: i64, limits: Limits) -> Verdict {
        if !self.keys.contains_key(key) && self.keys.len() >= MAX_KEYS {
            // At most one sweep a second, so a full map costs no sweep per message.
            if now - self.pruned_at >= 1000 {
                self.prune(now, limits);
            }
            if self.keys.len() >= MAX_KEYS {
                return Verdict::Open { count: 0 };
            }
        }
        let state = self.keys.entry(key.to_string()).or_default();
        if let Some(trip) = state.trip.filter(|t| t.until > now) {
            return Verdict::Tripped(trip);
        }
        state.trip = None;
        while state.leaks.front().is_some_and(|&t| t <= now - limits.window_ms) {
            state.leaks.pop_front();
        }
        if leak {
            state.leaks.push_back(now);
        }
        let count = state.leaks.len() as u64;
        let verdict = if leak && count >= limits.leaks {
            let trip = Trip { at: now, until: now.saturating_add(limits.duration_ms), count };
            state.trip = Some(trip);
            state.leaks.clear();
            Verdict::JustTripped(trip)
        } else {
            Verdict::Open { count }
        };
        if state.leaks.is_empty() && state.trip.is_none() {
            self.keys.remove(key);
        }
        verdict
    }

    /// Record a trip decided elsewhere (a shared store), so local counts agree.
    pub fn set_trip(&mut self, key: &str, trip: Trip) {
        let state = self.keys.entry(key.to_string()).or_default();
        state.trip = Some(trip);
        state.leaks.clear();
    }

    /// Forget keys with no leak in the window and no trip in force.
    fn prune(&mut self, now: i64, limits: Limits) {
        self.keys.retain(|_, s| {
            s.leaks.retain(|&t| t > now - limits.window_ms);
            s.trip = s.trip.filter(|t| t.until > now);
            !s.leaks.is_empty() || s.trip.is_some()
        });
        self.pruned_at = now;
    }

    /// Close `key` and forget its count; whether it was tripped or counted at all.
    pub fn reset(&mut self, key: &str) -> bool {
        self.keys.remove(key).is_some()
    }

    /// Keys tripped now or with leaks in the window, tripped first, then by count.
    pub fn list(&mut self, now: i64, limits: Limits) -> Vec<KeyStatus> {
        self.prune(now, limits);
        let mut list: Vec<KeyStatus> = self
            .keys
            .iter()
            .map(|(k, s)| KeyStatus {
                key: k.clone(),
                count: s.trip.map_or(s.leaks.len() as u64, |t| t.count),
                trip: s.trip,
            })
            .collect();
        list.sort_by(|a, b| {
            b.trip.is_some().cmp(&a.trip.is_some()).then(b.count.cmp(&a.count)).then(a.key.cmp(&b.key))
        });
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { leaks: 3, window_ms: 60_000, duration_ms: 600_000 };

    #[test]
    fn the_nth_leak_within_the_window_trips_and_later_messages_are_tripped() {
        let mut c = Counts::default();
        assert_eq!(c.judge("a", true, 0, L), Verdict::Open { count: 1 });
        assert_eq!(c.judge("a", false, 1, L), Verdict::Open { count: 1 }, "clean mail is not counted");
        assert_eq!(c.judge("b", true, 2, L), Verdict::Open { count: 1 }, "keys count apart");
        assert_eq!(c.judge("a", true, 3, L), Verdict::Open { count: 2 });
        let trip = Trip { at: 4, until: 600_004, count: 3 };
        assert_eq!(c.judge("a", true, 4, L), Verdict::JustTripped(trip));
        assert_eq!(c.judge("a", false, 5, L), Verdict::Tripped(trip), "clean mail too while tripped");
        assert_eq!(c.judge("b", false, 6, L), Verdict::Open { count: 1 });
        assert_eq!(c.judge("a", false, 600_004, L), Verdict::Open { count: 0 }, "closes by itself");
    }

    #[test]
    fn the_window_slides() {
        let mut c = Counts::default();
        c.judge("a", true, 0, L);
        c.judge("a", true, 30_000, L);
        assert_eq!(c.judge("a", true, 60_000, L), Verdict::Open { count: 2 }, "the first fell out");
        assert!(matches!(c.judge("a", true, 89_999, L), Verdict::JustTripped(_)));
    }

    #[test]
    fn reset_closes_and_forgets_and_list_shows_tripped_first() {
        let mut c = Counts::default();
        for t in 0..3 {
            c.judge("a", true, t, L);
        }
        c.judge("b", true, 10, L);
        let list = c.list(20, L);
        assert_eq!(
            list.iter().map(|s| (s.key.as_str(), s.count, s.trip.is_some())).collect::<Vec<_>>(),
            [("a", 3, true), ("b", 1, false)]
        );
        assert!(c.reset("a"));
        assert!(!c.reset("a"));
        assert_eq!(c.judge("a", true, 30, L), Verdict::Open { count: 1 });
        assert_eq!(c.list(100_000, L), [], "old leaks leave the list");
    }

    #[test]
    fn the_keys_counted_are_bounded_and_expired_ones_make_room() {
        let mut c = Counts::default();
        for i in 0..MAX_KEYS {
            c.judge(&format!("s{i}@x.test"), true, 1_000, L);
        }
        assert_eq!(c.keys.len(), MAX_KEYS);
        // Full: a new key is let through uncounted, and the map does not grow.
        assert_eq!(c.judge("new@x.test", true, 2_000, L), Verdict::Open { count: 0 });
        assert_eq!(c.keys.len(), MAX_KEYS);
        // Once the window has passed, the sweep makes room for it.
        assert_eq!(c.judge("new@x.test", true, 70_000, L), Verdict::Open { count: 1 });
        assert_eq!(c.keys.len(), 1);
    }
}
