//! The queue manager: one task that knows every spooled message and when to try it next,
//! runs passes over them (a bounded number at once), and takes commands: a newly accepted
//! message, "retry now", "delete".

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::Upstream;
use super::pass::{self, Ctx, PassEnd, now_ms};
use crate::Shutdown;
use crate::config::Config;
use crate::events::Redaction;
use crate::queue_id::QueueId;
use crate::spool::Spool;
use crate::spool::record::Record;

/// Passes running at once, per upstream connection: a pass holds its message's header block
/// and the copies being written, so the messages in delivery follow the upstream's
/// connection cap, not the length of the queue (which is kept as ids and times only).
const PASSES_PER_CONNECTION: usize = 2;

/// Wait before a message whose pass panicked is tried again.
const PANIC_WAIT: i64 = 60_000;

/// Delivery settings.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// Our host name (for bounces).
    pub hostname: String,
    /// `spool.retry`.
    pub retry: Vec<Duration>,
    /// `spool.max_age`.
    pub max_age: Duration,
    /// `log.redact_addresses`.
    pub redaction: Redaction,
    /// Delivery passes running at once.
    pub max_passes: usize,
}

impl DeliveryConfig {
    /// The settings in `config`.
    pub fn from_config(config: &Config) -> DeliveryConfig {
        DeliveryConfig {
            hostname: config.server.hostname.clone(),
            retry: config.spool.retry.iter().map(|d| d.0).collect(),
            max_age: config.spool.max_age.0,
            redaction: Redaction(config.log.redact_addresses),
            max_passes: config.upstream.max_connections.max(1) * PASSES_PER_CONNECTION,
        }
    }
}

/// The delivery manager is not running (shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the delivery manager is not running")]
pub struct ManagerStopped;

/// A pass ended: the message, how, and its journal records still only in memory.
type Done = (QueueId, PassEnd, Vec<Record>);

enum Command {
    Submit(QueueId),
    Retry(Option<QueueId>, oneshot::Sender<usize>),
    Delete(QueueId, oneshot::Sender<bool>),
    Unwritten(oneshot::Sender<Vec<(QueueId, Vec<Record>)>>),
}

/// A handle to the manager.
#[derive(Clone)]
pub struct Deliverer {
    tx: mpsc::UnboundedSender<Command>,
}

impl Deliverer {
    /// Deliver a message that is already durably spooled. Only its id is queued: its pass
    /// reads it back from the spool (from the page cache, for a message just written).
    pub fn submit(&self, id: QueueId) {
        // After shutdown began the message simply stays spooled for the next start.
        let _ = self.tx.send(Command::Submit(id));
    }

    /// Try one message (or all) now, whatever their schedule; returns how many.
    pub async fn retry(&self, id: Option<QueueId>) -> Result<usize, ManagerStopped> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Retry(id, tx)).map_err(|_| ManagerStopped)?;
        rx.await.map_err(|_| ManagerStopped)
    }

    /// Journal records the relay holds in memory because the spool would not take them, per
    /// message: the live state is the journal on disk followed by these.
    pub async fn unwritten(&self) -> Result<Vec<(QueueId, Vec<Record>)>, ManagerStopped> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Unwritten(tx)).map_err(|_| ManagerStopped)?;
        rx.await.map_err(|_| ManagerStopped)
    }

    /// Remove a message from the queue; false if it is not there.
    pub async fn delete(&self, id: QueueId) -> Result<bool, ManagerStopped> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Delete(id, tx)).map_err(|_| ManagerStopped)?;
        rx.await.map_err(|_| ManagerStopped)
    }
}

/// Start the manager: recover the spool, then deliver until the soft shutdown. Passes run on
/// `tracker`; the hard shutdown interrupts them (their messages stay spooled).
pub fn start(
    spool: Arc<Spool>,
    upstream: Arc<Upstream>,
    config: DeliveryConfig,
    shutdown: Shutdown,
    tracker: TaskTracker,
) -> Deliverer {
    let (tx, rx) = mpsc::unbounded_channel();
    let deliverer = Deliverer { tx };
    let ctx = Arc::new(Ctx { spool, upstream, config, deliverer: deliverer.clone() });
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let manager = Manager {
        ctx,
        entries: HashMap::new(),
        timers: BinaryHeap::new(),
        ready: VecDeque::new(),
        running: 0,
        unwritten: HashMap::new(),
        done_tx,
        tracker: tracker.clone(),
        hard: shutdown.hard.clone(),
    };
    tracker.spawn(manager.run(rx, done_rx, shutdown));
    deliverer
}

#[derive(Debug, PartialEq, Eq)]
enum Entry {
    /// Next attempt at this time (Unix ms).
    Waiting(i64),
    /// In the ready queue.
    Ready,
    /// A pass is running; afterwards run again at once (`rerun`) or delete.
    Running { rerun: bool, delete: bool },
}

struct Manager {
    ctx: Arc<Ctx>,
    entries: HashMap<QueueId, Entry>,
    timers: BinaryHeap<Reverse<(i64, QueueId)>>,
    ready: VecDeque<(QueueId, bool)>,
    running: usize,
    /// Journal records not yet on disk, per message (see `super::journal`).
    unwritten: HashMap<QueueId, Vec<Record>>,
    done_tx: mpsc::UnboundedSender<Done>,
    tracker: TaskTracker,
    hard: tokio_util::sync::CancellationToken,
}

impl Manager {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut done: mpsc::UnboundedReceiver<Done>,
        shutdown: Shutdown,
    ) {
        self.recover().await;
        loop {
            crate::metrics::metrics().spool_messages.set(self.entries.len() as i64);
            let next_timer = self.timers.peek().map(|Reverse((at, _))| *at);
            let sleep = async move {
                match next_timer {
                    Some(at) => tokio::time::sleep(Duration::from_millis((at - now_ms()).max(0) as u64)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.soft.cancelled() => break,
                Some((id, end, unwritten)) = done.recv() => self.finished(id, end, unwritten),
                command = commands.recv() => match command {
                    Some(c) => self.command(c),
                    None => break,
                },
                _ = sleep => self.fire_timers(),
            }
        }
        let waiting = self.entries.len();
        info!(in_flight = self.running, queued = waiting, "delivery manager stopped; undelivered mail stays spooled");
    }

    /// Schedule every message found in the spool at its next attempt (the spool was cleaned
    /// of crash leftovers before the front door opened).
    async fn recover(&mut self) {
        let paths = self.ctx.spool.paths().clone();
        let found = tokio::task::spawn_blocking(move || {
            let ids = paths.ids().unwrap_or_else(|e| {
                error!(error = %e, "cannot list the spool");
                Vec::new()
            });
            // An unreadable one is scheduled now: its pass sets it aside as damaged (or, if
            // the spool cannot be read at all now, tries again later).
            ids.into_iter()
                .map(|id| match paths.load_meta(&id) {
                    Ok((meta, state)) => (id, state.next_attempt(&meta.plan).unwrap_or(0)),
                    Err(_) => (id, 0),
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        if !found.is_empty() {
            info!(messages = found.len(), "resuming delivery of spooled mail");
        }
        for (id, at) in found {
            self.schedule(id, at);
        }
    }

    fn schedule(&mut self, id: QueueId, at: i64) {
        self.entries.insert(id.clone(), Entry::Waiting(at));
        self.timers.push(Reverse((at, id)));
    }

    fn make_ready(&mut self, id: QueueId, force: bool) {
        self.entries.insert(id.clone(), Entry::Ready);
        self.ready.push_back((id, force));
        self.start_ready();
    }

    fn start_ready(&mut self) {
        while self.running < self.ctx.config.max_passes {
            let Some((id, force)) = self.ready.pop_front() else {
                return;
            };
            if self.entries.get(&id) != Some(&Entry::Ready) {
                continue;
            }
            self.entries.insert(id.clone(), Entry::Running { rerun: false, delete: false });
            self.running += 1;
            let (ctx, done, hard) = (self.ctx.clone(), self.done_tx.clone(), self.hard.clone());
            let mut unwritten = self.unwritten.remove(&id).unwrap_or_default();
            self.tracker.spawn(async move {
                let pass = {
                    let id = id.clone();
                    tokio::spawn(async move {
                        let end = pass::run(&ctx, &id, force, &mut unwritten).await;
                        (end, unwritten)
                    })
                };
                let abort = pass.abort_handle();
                let (end, unwritten) = tokio::select! {
                    end = pass => end.unwrap_or_else(|e| {
                        error!(queue_id = %id, error = %e, "a delivery pass failed; trying again later");
                        (PassEnd::Later(now_ms() + PANIC_WAIT), Vec::new())
                    }),
                    // Interrupted: the message stays spooled as it is.
                    _ = hard.cancelled() => {
                        abort.abort();
                        (PassEnd::Later(now_ms()), Vec::new())
                    }
                };
                let _ = done.send((id, end, unwritten));
            });
        }
    }

    fn fire_timers(&mut self) {
        let now = now_ms();
        while let Some(Reverse((at, _))) = self.timers.peek() {
            if *at > now {
                break;
            }
            let Reverse((at, id)) = self.timers.pop().expect("peeked");
            if self.entries.get(&id) == Some(&Entry::Waiting(at)) {
                self.make_ready(id, false);
            }
        }
    }

    fn finished(&mut self, id: QueueId, end: PassEnd, unwritten: Vec<Record>) {
        self.running -= 1;
        let entry = self.entries.remove(&id);
        let stays = matches!(end, PassEnd::Later(_) | PassEnd::Parked)
            && !matches!(entry, Some(Entry::Running { delete: true, .. }));
        if stays && !unwritten.is_empty() {
            self.unwritten.insert(id.clone(), unwritten);
        }
        match (entry, end) {
            (Some(Entry::Running { delete: true, .. }), _) => self.remove(&id),
            (_, PassEnd::Done | PassEnd::Gone) => {}
            (Some(Entry::Running { rerun: true, .. }), PassEnd::Later(_) | PassEnd::Parked) => {
                self.make_ready(id, true)
            }
            (_, PassEnd::Later(at)) => self.schedule(id, at),
            // Only a retry or a delete moves it.
            (_, PassEnd::Parked) => {
                self.entries.insert(id, Entry::Waiting(i64::MAX));
            }
        }
        self.start_ready();
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Submit(id) => self.make_ready(id, false),
            Command::Retry(which, reply) => {
                let ids: Vec<QueueId> = match which {
                    Some(id) => vec![id],
                    None => self.entries.keys().cloned().collect(),
                };
                let mut n = 0;
                for id in ids {
                    match self.entries.get_mut(&id) {
                        Some(Entry::Waiting(_)) => self.make_ready(id, true),
                        Some(Entry::Running { rerun, .. }) => *rerun = true,
                        Some(Entry::Ready) => {}
                        None => continue,
                    }
                    n += 1;
                }
                let _ = reply.send(n);
            }
            Command::Delete(id, reply) => {
                let found = match self.entries.get_mut(&id) {
                    Some(Entry::Running { delete, .. }) => {
                        *delete = true;
                        true
                    }
                    Some(_) => {
                        self.entries.remove(&id);
                        self.unwritten.remove(&id);
                        self.remove(&id);
                        true
                    }
                    // Not scheduled: maybe damaged or unreadable; its files go all the same.
                    None => self.ctx.spool.paths().remove(&id).is_ok(),
                };
                let _ = reply.send(found);
            }
            Command::Unwritten(reply) => {
                let held = self.unwritten.iter().map(|(id, records)| (id.clone(), records.clone())).collect();
                let _ = reply.send(held);
            }
        }
    }

    fn remove(&self, id: &QueueId) {
        let (spool, id) = (self.ctx.spool.clone(), id.clone());
        tokio::spawn(async move {
            match spool.remove(&id).await {
                Ok(()) => info!(queue_id = %id, "deleted from the queue"),
                Err(e) => warn!(queue_id = %id, error = %e, "cannot delete from the spool"),
            }
        });
    }
}
