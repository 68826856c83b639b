//! The delivery schedule, without a clock: every decision about time takes `now` (Unix
//! milliseconds) as a value. Which transactions of a message are due, what an attempt's
//! outcomes become in the journal (retry after `spool.retry`, failure once `spool.max_age`
//! has passed), how a pass ends, and, for the manager, which message to run next and how long
//! to sleep ([`Schedule::next`]). The manager reads the clock and carries the answers out;
//! tests pass instants and never sleep.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::time::Duration;

use super::config::DeliveryConfig;
use super::outcome::Outcome;
use crate::plan::Plan;
use crate::queue_id::QueueId;
use crate::spool::record::{Meta, Record, State};

/// How a pass ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum PassEnd {
    /// Everything delivered or bounced; the message left the spool.
    Done,
    /// Work remains; next attempt at this time (Unix ms).
    Later(i64),
    /// Nothing will be tried until an operator says so: a bounce (or another message with
    /// the null sender) that failed for good stays queued, visibly, until retried or deleted.
    Parked,
    /// The message is no longer in the spool (deleted, or set aside as damaged).
    Gone,
    /// The message is held for a person; unless released, it expires at this time (Unix ms).
    Held(i64),
}

/// The outcome of one transaction's attempt: (transaction, recipients tried, outcomes).
pub(super) type Attempted = (usize, Vec<usize>, Vec<Outcome>);

/// The transactions a pass tries at `now`: those due, or with `force` every pending one.
pub(super) fn due(state: &State, plan: &Plan, now: i64, force: bool) -> Vec<usize> {
    state.due(plan, if force { i64::MAX } else { now })
}

/// Journal records for an attempt's outcomes at `now`: a temporary failure is scheduled on
/// `spool.retry`, or fails (`expired`) once the message is older than `spool.max_age`.
/// Recipients with the same outcome in one transaction share a record.
pub(super) fn records_for(
    config: &DeliveryConfig,
    meta: &Meta,
    state: &State,
    results: Vec<Attempted>,
    now: i64,
) -> Vec<Record> {
    let mut records = Vec::new();
    // A released message has its whole `spool.max_age` from its release.
    let since = state.released_at.unwrap_or(meta.received_at).max(meta.received_at);
    let expired = now - since >= config.max_age.as_millis() as i64;
    for (txn, rcpts, outcomes) in results {
        let attempts = state.txns[txn].attempts + 1;
        let mut groups: Vec<(Outcome, Vec<usize>)> = Vec::new();
        for (rcpt, outcome) in rcpts.into_iter().zip(outcomes) {
            match groups.iter_mut().find(|(o, _)| *o == outcome) {
                Some((_, list)) => list.push(rcpt),
                None => groups.push((outcome, vec![rcpt])),
            }
        }
        for (outcome, rcpts) in groups {
            // The journal keeps the reply as text (the spool format is unchanged).
            let reply = outcome.to_string();
            records.push(match outcome {
                Outcome::Delivered(_) => Record::Delivered { txn, rcpts, at: now, reply },
                Outcome::Failed(_) => Record::Failed { txn, rcpts, at: now, reply, expired: false },
                Outcome::Deferred(_) if expired => Record::Failed { txn, rcpts, at: now, reply, expired: true },
                Outcome::Deferred(_) => {
                    let next = now + retry_delay(&config.retry, attempts).as_millis() as i64;
                    Record::Deferred { txn, rcpts, at: now, reply, attempts, next }
                }
            });
        }
    }
    records
}

/// The wait after the `attempts`-th temporary failure: `spool.retry[attempts - 1]`, the last
/// interval repeating.
pub(super) fn retry_delay(retry: &[Duration], attempts: u32) -> Duration {
    let i = (attempts.max(1) as usize - 1).min(retry.len().saturating_sub(1));
    retry.get(i).copied().unwrap_or(Duration::from_secs(60))
}

/// How a pass over a message that is not finished ends: at its next attempt, or at
/// `catch_up` (when journal records are still only in memory) if that is sooner; parked when
/// nothing is pending.
pub(super) fn after_pass(state: &State, plan: &Plan, catch_up: Option<i64>) -> PassEnd {
    match (state.next_attempt(plan), catch_up) {
        (Some(at), Some(soon)) => PassEnd::Later(at.min(soon)),
        (Some(at), None) | (None, Some(at)) => PassEnd::Later(at),
        (None, None) => PassEnd::Parked,
    }
}

/// What the manager does next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Start a pass over this message now (`force`: every pending transaction, whatever its
    /// schedule).
    Run(QueueId, bool),
    /// Nothing to start before this time (Unix ms), unless a command or a pass's end comes.
    Sleep(i64),
    /// Nothing to start until a command or a pass's end comes.
    Idle,
    /// This held message's `hold.max_age` has passed: delete it and tell the sender. It is
    /// off the schedule now; put it back with [`Schedule::hold`] if that fails.
    Expire(QueueId),
}

/// What became of a `delete`.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Deleted {
    /// Its pass is running: the message goes when the pass ends.
    AfterPass,
    /// Taken off the schedule: remove its files now.
    Now,
    /// Not on the schedule.
    Unknown,
}

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    /// Next attempt at this time (Unix ms).
    Waiting(i64),
    /// A failed bounce: only a retry or a delete moves it.
    Parked,
    /// Held for a person until released or deleted, or until it expires at this time.
    Held(i64),
    /// In the ready queue.
    Ready,
    /// A pass is running; afterwards run again at once (`rerun`) or delete.
    Running { rerun: bool, delete: bool },
}

/// Every queued message and when to try it: ids and times only, never message data.
#[derive(Debug)]
pub(super) struct Schedule {
    entries: HashMap<QueueId, Entry>,
    /// Entries that are `Held`.
    held: usize,
    timers: BinaryHeap<Reverse<(i64, QueueId)>>,
    ready: VecDeque<(QueueId, bool)>,
    running: usize,
    max_running: usize,
}

impl Schedule {
    /// An empty schedule running at most `max_running` passes at once.
    pub fn new(max_running: usize) -> Schedule {
        Schedule {
            entries: HashMap::new(),
            held: 0,
            timers: BinaryHeap::new(),
            ready: VecDeque::new(),
            running: 0,
            max_running: max_running.max(1),
        }
    }

    /// Messages on the schedule.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Passes running.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Try `id` at `at` (a message found in the spool at start).
    pub fn add(&mut self, id: QueueId, at: i64) {
        self.put(id.clone(), Entry::Waiting(at));
        self.timers.push(Reverse((at, id)));
    }

    /// How many held messages are on the schedule.
    pub fn held_count(&self) -> usize {
        self.held
    }

    /// Held messages on the schedule.
    pub fn held(&self) -> Vec<QueueId> {
        let mut ids: Vec<QueueId> =
            self.entries.iter().filter(|(_, e)| matches!(e, Entry::Held(_))).map(|(id, _)| id.clone()).collect();
        ids.sort();
        ids
    }

    /// Whether `id` is held.
    pub fn is_held(&self, id: &QueueId) -> bool {
        matches!(self.entries.get(id), Some(Entry::Held(_)))
    }

    /// Whether `id` is on the schedule at all.
    pub fn contains(&self, id: &QueueId) -> bool {
        self.entries.contains_key(id)
    }

    /// Hold `id` for a person; it expires at `expires` (Unix ms) unless released.
    pub fn hold(&mut self, id: QueueId, expires: i64) {
        self.put(id.clone(), Entry::Held(expires));
        self.timers.push(Reverse((expires, id)));
    }

    /// A held message was released: deliver it as soon as a pass is free. False (and
    /// nothing changes) when it is not held.
    pub fn release(&mut self, id: &QueueId) -> bool {
        if !self.is_held(id) {
            return false;
        }
        self.make_ready(id.clone(), false);
        true
    }

    /// Try `id` as soon as a pass is free (a message just accepted, or a bounce just queued).
    pub fn submit(&mut self, id: QueueId) {
        self.make_ready(id, false);
    }

    /// Try one message (or all) now, whatever their schedule; returns how many.
    pub fn retry(&mut self, which: Option<&QueueId>) -> usize {
        let ids: Vec<QueueId> = match which {
            Some(id) => vec![id.clone()],
            None => self.entries.keys().cloned().collect(),
        };
        let mut n = 0;
        for id in ids {
            match self.entries.get_mut(&id) {
                Some(Entry::Waiting(_) | Entry::Parked) => self.make_ready(id, true),
                Some(Entry::Running { rerun, .. }) => *rerun = true,
                Some(Entry::Ready) => {}
                // Only a release delivers a held message.
                Some(Entry::Held(_)) | None => continue,
            }
            n += 1;
        }
        n
    }

    /// Take `id` off the schedule.
    pub fn delete(&mut self, id: &QueueId) -> Deleted {
        match self.entries.get_mut(id) {
            Some(Entry::Running { delete, .. }) => {
                *delete = true;
                Deleted::AfterPass
            }
            Some(_) => {
                self.take(id);
                Deleted::Now
            }
            None => Deleted::Unknown,
        }
    }

    /// The pass over `id` ended with `end`. True when the message is to be deleted now (a
    /// delete came while the pass ran).
    pub fn finished(&mut self, id: QueueId, end: &PassEnd) -> bool {
        self.running = self.running.saturating_sub(1);
        let entry = self.take(&id);
        match (entry, end) {
            (Some(Entry::Running { delete: true, .. }), _) => return true,
            (_, PassEnd::Done | PassEnd::Gone) => {}
            (Some(Entry::Running { rerun: true, .. }), PassEnd::Later(_) | PassEnd::Parked) => {
                self.make_ready(id, true)
            }
            (_, PassEnd::Later(at)) => self.add(id, *at),
            (_, PassEnd::Parked) => self.put(id, Entry::Parked),
            (_, PassEnd::Held(expires)) => self.hold(id, *expires),
        }
        false
    }

    /// What to do at `now`: start a pass (and call again), or wait.
    pub fn next(&mut self, now: i64) -> Next {
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Reverse((at, id)) = self.timers.pop().expect("peeked");
            // A timer outlived by a newer schedule of the same message is ignored.
            match self.entries.get(&id) {
                Some(Entry::Waiting(t)) if *t == at => self.make_ready(id, false),
                Some(Entry::Held(t)) if *t == at => {
                    self.take(&id);
                    return Next::Expire(id);
                }
                _ => {}
            }
        }
        while self.running < self.max_running {
            let Some((id, force)) = self.ready.pop_front() else {
                break;
            };
            if self.entries.get(&id) != Some(&Entry::Ready) {
                continue;
            }
            self.put(id.clone(), Entry::Running { rerun: false, delete: false });
            self.running += 1;
            return Next::Run(id, force);
        }
        match self.timers.peek() {
            Some(Reverse((at, _))) => Next::Sleep(*at),
            None => Next::Idle,
        }
    }

    fn make_ready(&mut self, id: QueueId, force: bool) {
        self.put(id.clone(), Entry::Ready);
        self.ready.push_back((id, force));
    }

    /// Set `id`'s entry, keeping the count of held ones.
    fn put(&mut self, id: QueueId, entry: Entry) {
        self.held += usize::from(matches!(entry, Entry::Held(_)));
        if let Some(Entry::Held(_)) = self.entries.insert(id, entry) {
            self.held -= 1;
        }
    }

    /// Remove `id`'s entry, keeping the count of held ones.
    fn take(&mut self, id: &QueueId) -> Option<Entry> {
        let entry = self.entries.remove(id);
        if let Some(Entry::Held(_)) = entry {
            self.held -= 1;
        }
        entry
    }
}

#[cfg(test)]
mod held_tests;
#[cfg(test)]
mod tests;
