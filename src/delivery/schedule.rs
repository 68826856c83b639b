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
    let expired = now - meta.received_at >= config.max_age.as_millis() as i64;
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
    /// In the ready queue.
    Ready,
    /// A pass is running; afterwards run again at once (`rerun`) or delete.
    Running { rerun: bool, delete: bool },
}

/// Every queued message and when to try it: ids and times only, never message data.
#[derive(Debug)]
pub(super) struct Schedule {
    entries: HashMap<QueueId, Entry>,
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
        self.entries.insert(id.clone(), Entry::Waiting(at));
        self.timers.push(Reverse((at, id)));
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
                None => continue,
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
                self.entries.remove(id);
                Deleted::Now
            }
            None => Deleted::Unknown,
        }
    }

    /// The pass over `id` ended with `end`. True when the message is to be deleted now (a
    /// delete came while the pass ran).
    pub fn finished(&mut self, id: QueueId, end: &PassEnd) -> bool {
        self.running = self.running.saturating_sub(1);
        let entry = self.entries.remove(&id);
        match (entry, end) {
            (Some(Entry::Running { delete: true, .. }), _) => return true,
            (_, PassEnd::Done | PassEnd::Gone) => {}
            (Some(Entry::Running { rerun: true, .. }), PassEnd::Later(_) | PassEnd::Parked) => {
                self.make_ready(id, true)
            }
            (_, PassEnd::Later(at)) => self.add(id, *at),
            (_, PassEnd::Parked) => {
                self.entries.insert(id, Entry::Parked);
            }
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
            if self.entries.get(&id) == Some(&Entry::Waiting(at)) {
                self.make_ready(id, false);
            }
        }
        while self.running < self.max_running {
            let Some((id, force)) = self.ready.pop_front() else {
                break;
            };
            if self.entries.get(&id) != Some(&Entry::Ready) {
                continue;
            }
            self.entries.insert(id.clone(), Entry::Running { rerun: false, delete: false });
            self.running += 1;
            return Next::Run(id, force);
        }
        match self.timers.peek() {
            Some(Reverse((at, _))) => Next::Sleep(*at),
            None => Next::Idle,
        }
    }

    fn make_ready(&mut self, id: QueueId, force: bool) {
        self.entries.insert(id.clone(), Entry::Ready);
        self.ready.push_back((id, force));
    }
}

#[cfg(test)]
mod tests;
