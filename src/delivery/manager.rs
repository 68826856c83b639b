//! The queue manager: one task that carries out the [`Schedule`]: it reads the clock, starts
//! the passes the schedule names (a bounded number at once), sleeps until the schedule's next
//! instant, delivers the bounces passes hand back, and takes commands: a newly accepted
//! message, "retry now", "delete", and for held messages "hold", "release", "delete held"
//! (carried out one at a time, to the end, so that a message is released at most once; see
//! [`super::held`]) and their expiry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::Upstream;
use super::config::DeliveryConfig;
use super::held::{self, Expiry};
use super::pass::{self, Ctx, Ended, now_ms};
use super::schedule::{Deleted, Next, PassEnd, Schedule};
use crate::events::{HeldChange, HeldChanged};
use crate::hold::{HoldError, HoldOutcome, ReleaseAs};
use crate::message::decide::Policy;
use crate::queue_id::QueueId;
use crate::shutdown::Shutdown;
use crate::spool::record::Record;
use crate::spool::{Spool, SpoolPaths};

/// Wait before a message whose pass panicked is tried again.
const PANIC_WAIT: i64 = 60_000;

/// The delivery manager is not running (shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the delivery manager is not running")]
pub struct ManagerStopped;

/// Wait before an expiry that could not read or write the spool is tried again.
const EXPIRY_TROUBLE_WAIT: i64 = 60_000;

/// A pass ended: the message, how, and its journal records still only in memory.
type Done = (QueueId, Ended, Vec<Record>);

/// The answer to a release or a delete of a held message.
pub(super) type HoldReply = oneshot::Sender<Result<HoldOutcome, HoldError>>;

/// What the manager is asked to do.
pub(super) enum Command {
    Submit(QueueId),
    Hold(QueueId, i64),
    Retry(Option<QueueId>, oneshot::Sender<usize>),
    Delete(QueueId, oneshot::Sender<bool>),
    Unwritten(oneshot::Sender<Vec<(QueueId, Vec<Record>)>>),
    HeldIds(oneshot::Sender<Vec<QueueId>>),
    Release(QueueId, ReleaseAs, HoldReply),
    DeleteHeld(QueueId, HoldReply),
}

/// A handle to the manager.
#[derive(Clone)]
pub struct Deliverer {
    pub(super) tx: mpsc::UnboundedSender<Command>,
    pub(super) paths: SpoolPaths,
    pub(super) hold_max_age: i64,
    pub(super) policy: Arc<ArcSwap<Policy>>,
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
/// `tracker`; the hard shutdown interrupts them (their messages stay spooled). Held messages
/// are released with `policy` as it is at the time (the relay replaces it on reload).
pub fn start(
    spool: Arc<Spool>,
    upstream: Arc<Upstream>,
    config: DeliveryConfig,
    policy: Arc<ArcSwap<Policy>>,
    shutdown: Shutdown,
    tracker: TaskTracker,
) -> Deliverer {
    let (tx, rx) = mpsc::unbounded_channel();
    let hold_max_age = config.hold_max_age.as_millis() as i64;
    let deliverer = Deliverer { tx, paths: spool.paths().clone(), hold_max_age, policy: policy.clone() };
    let schedule = Schedule::new(config.max_passes);
    let ctx = Arc::new(Ctx { spool, upstream, config });
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let manager = Manager {
        ctx,
        policy,
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
    policy: Arc<ArcSwap<Policy>>,
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
            let m = crate::metrics::metrics();
            m.spool_messages.set(self.schedule.len() as i64);
            m.hold.held.set(self.schedule.held_count() as i64);
            let (wake, expired) = self.start_due();
            if !expired.is_empty() {
                for id in expired {
                    if shutdown.soft.is_cancelled() {
                        // The rest expire at the next start (they stay spooled, held).
                        break;
                    }
                    self.expire(id).await;
                }
                continue;
            }
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
                    Some(c) => self.command(c).await,
                    None => break,
                },
                _ = sleep => {}
            }
        }
        let (running, queued) = (self.schedule.running(), self.schedule.len());
        info!(in_flight = running, queued, "delivery manager stopped; undelivered mail stays spooled");
    }

    /// Start every pass the schedule says is due now; returns when to look again, and the
    /// held messages to expire now.
    fn start_due(&mut self) -> (Option<i64>, Vec<QueueId>) {
        let now = now_ms();
        let mut expired = Vec::new();
        loop {
            match self.schedule.next(now) {
                Next::Run(id, force) => self.start_pass(id, force),
                Next::Expire(id) => expired.push(id),
                Next::Sleep(at) => return (Some(at), expired),
                Next::Idle => return (None, expired),
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
                    Ok((meta, _)) if meta.is_held() => (id, Err(meta.received_at)),
                    Ok((meta, state)) => (id, Ok(state.next_attempt(&meta.plan).unwrap_or(0))),
                    Err(_) => (id, Ok(0)),
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        if !found.is_empty() {
            info!(messages = found.len(), "resuming delivery of spooled mail");
        }
        for (id, at) in found {
            match at {
                Ok(at) => self.schedule.add(id, at),
                Err(received_at) => self.schedule.hold(id, self.ctx.config.hold_expires(received_at)),
            }
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

    async fn command(&mut self, command: Command) {
        match command {
            Command::Submit(id) => self.schedule.submit(id),
            Command::Hold(id, received_at) => self.schedule.hold(id, self.ctx.config.hold_expires(received_at)),
            Command::HeldIds(reply) => {
                let _ = reply.send(self.schedule.held());
            }
            Command::Release(id, how, reply) => {
                let _ = reply.send(self.release(id, how).await);
            }
            Command::DeleteHeld(id, reply) => {
                let _ = reply.send(self.delete_held(id).await);
            }
            Command::Retry(which, reply) => {
                let _ = reply.send(self.schedule.retry(which.as_ref()));
            }
            Command::Delete(id, reply) => {
                if self.schedule.is_held(&id) {
                    // Through the held path, so that it is logged and counted as such.
                    let found = match self.delete_held(id.clone()).await {
                        Ok(HoldOutcome::Done) => Some(true),
                        Ok(HoldOutcome::NotFound) => Some(false),
                        Ok(HoldOutcome::NotHeld) | Err(_) => None,
                    };
                    if let Some(found) = found {
                        let _ = reply.send(found);
                        return;
                    }
                }
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

    /// Release held message `id`: journal the plan, then schedule its delivery.
    async fn release(&mut self, id: QueueId, how: ReleaseAs) -> Result<HoldOutcome, HoldError> {
        if !self.schedule.is_held(&id) {
            return Ok(if self.schedule.contains(&id) { HoldOutcome::NotHeld } else { HoldOutcome::NotFound });
        }
        match held::release(&self.ctx, self.policy.load_full(), &id, how).await? {
            Ok(released) => {
                self.schedule.release(&id);
                let meta = &released.meta;
                let change = HeldChange::Released { how, action: released.action, transactions: released.transactions };
                HeldChanged { id: &id, sender: &meta.sender, recipients: meta.recipients.len(), change }
                    .emit(self.ctx.config.redaction);
                Ok(HoldOutcome::Done)
            }
            Err(outcome) => Ok(self.not_held_on_disk(&id, outcome)),
        }
    }

    /// Delete held message `id`, without a DSN.
    async fn delete_held(&mut self, id: QueueId) -> Result<HoldOutcome, HoldError> {
        if !self.schedule.is_held(&id) {
            return Ok(if self.schedule.contains(&id) { HoldOutcome::NotHeld } else { HoldOutcome::NotFound });
        }
        match held::delete(&self.ctx, &id).await? {
            Ok(meta) => {
                self.schedule.delete(&id);
                let change = HeldChange::Deleted;
                HeldChanged { id: &id, sender: &meta.sender, recipients: meta.recipients.len(), change }
                    .emit(self.ctx.config.redaction);
                Ok(HoldOutcome::Done)
            }
            Err(outcome) => Ok(self.not_held_on_disk(&id, outcome)),
        }
    }

    /// The schedule said held, the spool says otherwise: follow the spool (released:
    /// deliver it; gone: forget it).
    fn not_held_on_disk(&mut self, id: &QueueId, outcome: HoldOutcome) -> HoldOutcome {
        match outcome {
            HoldOutcome::NotFound => {
                self.schedule.delete(id);
            }
            _ => {
                self.schedule.release(id);
            }
        }
        outcome
    }

    /// `hold.max_age` has passed for held message `id`: tell its sender and delete it.
    async fn expire(&mut self, id: QueueId) {
        match held::expire(&self.ctx, &id).await {
            Ok(Expiry::Expired { meta, dsn }) => {
                let change = HeldChange::Expired { dsn: dsn.is_some() };
                if let Some(dsn) = dsn {
                    self.schedule.submit(dsn);
                }
                HeldChanged { id: &id, sender: &meta.sender, recipients: meta.recipients.len(), change }
                    .emit(self.ctx.config.redaction);
            }
            Ok(Expiry::Released) => self.schedule.submit(id),
            Ok(Expiry::Gone) => {}
            Err(e) => {
                error!(queue_id = %id, error = %e, "cannot expire a held message; trying again later");
                self.schedule.hold(id, now_ms() + EXPIRY_TROUBLE_WAIT);
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
