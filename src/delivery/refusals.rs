//! Whether the upstream is refusing the relay itself right now (see [`super::reply`]): set by
//! a refused attempt, cleared by the next attempt that gets as far as MAIL FROM. `/readyz`
//! reads it; a change is logged once, not once per copy.

use std::sync::Mutex;

use super::events::{UpstreamAcceptsAgain, UpstreamRefuses};
use super::reply::{Refusal, Stage};

/// The upstream's current stance towards the relay.
#[derive(Debug, Default)]
pub struct RelayStatus {
    refusing: Mutex<Option<Refusal>>,
}

impl RelayStatus {
    /// An attempt was refused at the relay level.
    pub fn refused(&self, refusal: &Refusal) {
        let mut current = self.refusing.lock().expect("relay status lock");
        let same = |r: &Refusal| {
            r.stage == refusal.stage && r.reply.as_ref().map(|x| x.code) == refusal.reply.as_ref().map(|x| x.code)
        };
        let changed = !current.as_ref().is_some_and(same);
        UpstreamRefuses { refusal, changed }.emit();
        *current = Some(refusal.clone());
    }

    /// An attempt got through the relay-level stages.
    pub fn accepted(&self) {
        let mut current = self.refusing.lock().expect("relay status lock");
        if let Some(was) = current.take() {
            UpstreamAcceptsAgain { was: &was }.emit();
        }
    }

    /// The refusal in force, if any.
    pub fn current(&self) -> Option<Refusal> {
        self.refusing.lock().expect("relay status lock").clone()
    }

    /// The stage of the refusal in force.
    pub fn stage(&self) -> Option<Stage> {
        self.refusing.lock().expect("relay status lock").as_ref().map(|r| r.stage)
    }
}
