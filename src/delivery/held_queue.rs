//! [`HeldQueue`] for the delivery manager's handle, [`Deliverer`]: what the queue CLI (through
//! the control socket) and the review page ask of a running relay's held messages. Lists
//! and pages are read from the spool; a release or delete is a command to the manager, which
//! carries them out one at a time (see `super::held`).

use std::sync::Arc;

use tokio::sync::oneshot;

use super::held::blocking;
use super::manager::{Command, Deliverer};
use crate::hold::{HeldMessage, HeldQueue, HeldSummary, HoldError, HoldOutcome, ReleaseAs};
use crate::message::decide::Policy;
use crate::queue_id::QueueId;
use crate::spool::SpoolPaths;

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
