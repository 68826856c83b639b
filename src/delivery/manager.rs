//! The queue manager: one task that carries out the [`Schedule`]: it reads the clock, starts
//! the passes the schedule names (a bounded number at once), sleeps until the schedule's next
//! instant, delivers the bounces passes hand back, and takes commands: a newly accepted
//! message, "retry now", "delete".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::Upstream;
use super::config::DeliveryConfig;
use super::pass::{self, Ctx, Ended, now_ms};
use super::schedule::{Deleted, Next, PassEnd, Schedule};
use crate::queue_id::QueueId;
use crate::shutdown::Shutdown;
use crate::spool::Spool;
use crate::spool::record::Record;

/// Wait before a message whose pass panicked is tried again.
const PANIC_WAIT: i64 = 60_000;

/// The delivery manager is not running (shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the delivery manager is not running")]
pub struct ManagerStopped;

/// A pass ended: the message, how, and its journal records still only in memory.
type Done = (QueueId, Ended, Vec<Record>);

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
    let schedule = Schedule::new(config.max_passes);
    let ctx = Arc::new(Ctx { spool, upstream, config });
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let manager = Manager {
        ctx,
        schedule,
        unwritten: HashMap::new(),
        done_tx,
        tracker: tracker.clone(),
        hard: shutdown.hard.clone(),
    };
    tracker.spawn(manager.run(rx, done_rx, shutdown));
    deliverer
}

struct Manager {
    ctx: Arc<Ctx>,
    schedule: Schedule,
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
            crate::metrics::metrics().spool_messages.set(self.schedule.len() as i64);
            let wake = self.start_due();
            let sleep = async move {
                match wake {
                    Some(at) => tokio::time::sleep(Duration::from_millis((at - now_ms()).max(0) as u64)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.soft.cancelled() => break,
                Some((id, ended, unwritten)) = done.recv() => self.finished(id, ended, unwritten),
                command = commands.recv() => match command {
                    Some(c) => self.command(c),
                    None => break,
                },
                _ = sleep => {}
            }
        }
        let (running, queued) = (self.schedule.running(), self.schedule.len());
        info!(in_flight = running, queued, "delivery manager stopped; undelivered mail stays spooled");
    }

    /// Start every pass the schedule says is due now; returns when to look again.
    fn start_due(&mut self) -> Option<i64> {
        let now = now_ms();
        loop {
            match self.schedule.next(now) {
                Next::Run(id, force) => self.start_pass(id, force),
                Next::Sleep(at) => return Some(at),
                Next::Idle => return None,
            }
        }
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
            self.schedule.add(id, at);
        }
    }

    /// Run a pass over `id` on the tracker; its end comes back through `done`.
    fn start_pass(&mut self, id: QueueId, force: bool) {
        let (ctx, done, hard) = (self.ctx.clone(), self.done_tx.clone(), self.hard.clone());
        let mut unwritten = self.unwritten.remove(&id).unwrap_or_default();
        self.tracker.spawn(async move {
            let pass = {
                let id = id.clone();
                tokio::spawn(async move {
                    let ended = pass::run(&ctx, &id, force, &mut unwritten).await;
                    (ended, unwritten)
                })
            };
            let abort = pass.abort_handle();
            let later = |at| Ended { end: PassEnd::Later(at), dsn: None };
            let (ended, unwritten) = tokio::select! {
                ended = pass => ended.unwrap_or_else(|e| {
                    error!(queue_id = %id, error = %e, "a delivery pass failed; trying again later");
                    (later(now_ms() + PANIC_WAIT), Vec::new())
                }),
                // Interrupted: the message stays spooled as it is (and so does any bounce
                // it queued, for the next start).
                _ = hard.cancelled() => {
                    abort.abort();
                    (later(now_ms()), Vec::new())
                }
            };
            let _ = done.send((id, ended, unwritten));
        });
    }

    fn finished(&mut self, id: QueueId, ended: Ended, unwritten: Vec<Record>) {
        let Ended { end, dsn } = ended;
        if let Some(dsn) = dsn {
            self.schedule.submit(dsn);
        }
        let stays = matches!(end, PassEnd::Later(_) | PassEnd::Parked);
        let delete = self.schedule.finished(id.clone(), &end);
        if delete {
            self.unwritten.remove(&id);
            self.remove(&id);
        } else if stays && !unwritten.is_empty() {
            self.unwritten.insert(id, unwritten);
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Submit(id) => self.schedule.submit(id),
            Command::Retry(which, reply) => {
                let _ = reply.send(self.schedule.retry(which.as_ref()));
            }
            Command::Delete(id, reply) => {
                let found = match self.schedule.delete(&id) {
                    Deleted::AfterPass => true,
                    Deleted::Now => {
                        self.unwritten.remove(&id);
                        self.remove(&id);
                        true
                    }
                    // Not scheduled: maybe damaged or unreadable; its files go all the same.
                    Deleted::Unknown => self.ctx.spool.paths().remove(&id).is_ok(),
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
