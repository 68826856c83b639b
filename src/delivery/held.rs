//! Held messages in the running relay (SPEC §10): the spool work behind the manager's
//! release, delete and expiry, and [`HeldQueue`] for the [`Deliverer`] handle.
//!
//! At most once: only the manager changes a held message, one command at a time, and a
//! release is journaled (fsync'd) before the message is handed to a pass. A second release,
//! or a delete after a release, finds the message no longer held and does nothing; a release
//! after a delete finds nothing. A held message's entry on the schedule is never run by a pass.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;

use tokio::sync::oneshot;

use super::dsn;
use super::manager::{Command, Deliverer};
use super::pass::{Ctx, dsn_meta, now_ms};
use super::reply::{Answer, Reply};
use crate::hold::{HeldMessage, HeldQueue, HeldSummary, HoldError, HoldOutcome, ReleaseAs};
use crate::message::decide::Policy;
use crate::queue_id::QueueId;
use crate::spool::SpoolPaths;
use crate::spool::held::Released;
use crate::spool::record::Meta;

/// What an expiry found.
#[derive(Debug)]
pub(super) enum Expiry {
    /// Deleted; the DSN queued to its sender, if it has one.
    Expired {
        /// The message's envelope.
        meta: Box<Meta>,
        /// The DSN's queue id.
        dsn: Option<QueueId>,
    },
    /// Its journal says it was released: it is to be delivered, not expired.
    Released,
    /// It is no longer in the spool.
    Gone,
}

/// Run blocking spool work on its own thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, HoldError> + Send + 'static,
) -> Result<T, HoldError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| HoldError::Spool(e.to_string()))?
}

/// Release `id` as `how` under `policy` (see [`crate::spool::SpoolPaths::release_blocking`]).
pub(super) async fn release(
    ctx: &Ctx,
    policy: Arc<Policy>,
    id: &QueueId,
    how: ReleaseAs,
) -> Result<Result<Released, HoldOutcome>, HoldError> {
    let (paths, id) = (ctx.spool.paths().clone(), id.clone());
    blocking(move || paths.release_blocking(&id, how, &policy, now_ms())).await
}

/// Delete held message `id`.
pub(super) async fn delete(ctx: &Ctx, id: &QueueId) -> Result<Result<Meta, HoldOutcome>, HoldError> {
    let (paths, id) = (ctx.spool.paths().clone(), id.clone());
    blocking(move || paths.delete_held_blocking(&id)).await
}

/// Expire held message `id`: queue a DSN to its sender (none for the null sender), then
/// delete it. A crash between the two sends the DSN again at the next start.
pub(super) async fn expire(ctx: &Ctx, id: &QueueId) -> std::io::Result<Expiry> {
    let (paths, owned) = (ctx.spool.paths().clone(), id.clone());
    let loaded = tokio::task::spawn_blocking(move || paths.load_head(&owned)).await.map_err(std::io::Error::other)?;
    let (meta, _, head) = match loaded {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Expiry::Gone),
        Err(e) => return Err(e),
    };
    if !meta.is_held() {
        return Ok(Expiry::Released);
    }
    let dsn = if meta.sender.is_empty() { None } else { Some(queue_dsn(ctx, &meta, &head).await?) };
    match ctx.spool.remove(id).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(Expiry::Expired { meta: Box::new(meta), dsn })
}

/// Spool a DSN telling the sender that its held message was not delivered to anyone.
async fn queue_dsn(ctx: &Ctx, meta: &Meta, head: &[u8]) -> std::io::Result<QueueId> {
    let age = crate::config::Duration(ctx.config.hold_max_age).to_string();
    let reply = Reply::new(550, &format!("5.7.1 held for review and not released within {age}"));
    let failures: Vec<dsn::Failure> = meta
        .recipients
        .iter()
        .map(|r| dsn::Failure { recipient: r.clone(), reply: Answer::Reply(reply.clone()), expired: false })
        .collect();
    let report = dsn::Report {
        hostname: &ctx.config.hostname,
        remote: "",
        original_id: &meta.id,
        arrival: meta.received_at,
        sender: &meta.sender,
        failures: &failures,
        held_for: Some(&age),
    };
    let id = QueueId::generate();
    let bytes = Bytes::from(dsn::build(&report, &id, head, Utc::now()));
    ctx.spool.store(dsn_meta(id.clone(), &meta.sender), vec![bytes]).await?;
    crate::events::BounceQueued { id: &meta.id, dsn: &id, failed: failures.len(), sender: &meta.sender }
        .emit(ctx.config.redaction);
    Ok(id)
}

impl Deliverer {
    /// Keep a message that is already durably spooled, held, for a person (it arrived at
    /// `received_at`, Unix ms; it expires `hold.max_age` later).
    pub fn hold(&self, id: QueueId, received_at: i64) {
        let _ = self.tx.send(Command::Hold(id, received_at));
    }

    /// The held messages' ids, oldest first.
    pub async fn held_ids(&self) -> Result<Vec<QueueId>, HoldError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::HeldIds(tx)).map_err(|_| HoldError::Stopped)?;
        rx.await.map_err(|_| HoldError::Stopped)
    }

    /// The spool's paths.
    pub fn paths(&self) -> &SpoolPaths {
        &self.paths
    }

    /// `hold.max_age` in milliseconds.
    pub fn hold_max_age_ms(&self) -> i64 {
        self.hold_max_age
    }

    /// The policy in force (replaced on reload).
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }
}

impl HeldQueue for Deliverer {
    async fn held(&self) -> Result<Vec<HeldSummary>, HoldError> {
        let ids = self.held_ids().await?;
        let (paths, max_age) = (self.paths().clone(), self.hold_max_age_ms());
        blocking(move || paths.held_summaries(&ids, max_age)).await
    }

    async fn held_message(&self, id: &QueueId) -> Result<Option<HeldMessage>, HoldError> {
        let (paths, max_age, id) = (self.paths().clone(), self.hold_max_age_ms(), id.clone());
        let policy = self.policy();
        blocking(move || paths.held_message(&id, max_age, &policy)).await
    }

    /// The manager releases one message at a time: its plan is made with the policy in force
    /// and journaled before the answer.
    async fn release(&self, id: &QueueId, how: ReleaseAs) -> Result<HoldOutcome, HoldError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Release(id.clone(), how, tx)).map_err(|_| HoldError::Stopped)?;
        rx.await.map_err(|_| HoldError::Stopped)?
    }

    async fn delete_held(&self, id: &QueueId) -> Result<HoldOutcome, HoldError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::DeleteHeld(id.clone(), tx)).map_err(|_| HoldError::Stopped)?;
        rx.await.map_err(|_| HoldError::Stopped)?
    }
}
