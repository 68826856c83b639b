//! Writing a message's delivery journal so that a failed write never causes a re-send.
//!
//! Outcomes the upstream gave are applied to the pass's state at once; the journal is how
//! they survive a restart. When an append fails (a full disk), the records are kept in memory
//! (the manager holds them between passes) and written, oldest first, with the next append
//! that works. While the relay runs the in-memory state is authoritative: a recipient the
//! upstream accepted is not tried again. Only a restart before the journal caught up repeats
//! those deliveries (at-least-once, as after a crash).

use tracing::{error, info};

use crate::queue_id::QueueId;
use crate::spool::Spool;
use crate::spool::record::Record;

/// The message left the spool (deleted) while a pass ran.
#[derive(Debug)]
pub(super) struct Gone;

/// A message's journal during one pass, with the records not yet on disk.
pub(super) struct Journal<'a> {
    spool: &'a Spool,
    id: &'a QueueId,
    unwritten: &'a mut Vec<Record>,
    /// Whether this pass tried to append (a failed append may have created the file).
    touched: bool,
}

impl<'a> Journal<'a> {
    /// The journal of `id`; `unwritten` are records earlier passes could not write.
    pub fn new(spool: &'a Spool, id: &'a QueueId, unwritten: &'a mut Vec<Record>) -> Journal<'a> {
        Journal { spool, id, unwritten, touched: false }
    }

    /// Whether this pass tried to write to the journal file.
    pub fn touched(&self) -> bool {
        self.touched
    }

    /// Records not yet on disk, oldest first (they happened after everything on disk).
    pub fn unwritten(&self) -> &[Record] {
        self.unwritten
    }

    /// Whether some records are still only in memory.
    pub fn is_behind(&self) -> bool {
        !self.unwritten.is_empty()
    }

    /// Append `records` (after any still unwritten) durably; if the disk refuses, keep them
    /// for a later append. Only a message that left the spool is an error.
    pub async fn write(&mut self, records: Vec<Record>) -> Result<(), Gone> {
        let was_behind = self.is_behind();
        self.unwritten.extend(records);
        if self.unwritten.is_empty() {
            return Ok(());
        }
        self.touched = true;
        match self.spool.append(self.id, self.unwritten.clone()).await {
            Ok(()) => {
                if was_behind {
                    info!(queue_id = %self.id, records = self.unwritten.len(), "the delivery journal caught up");
                }
                self.unwritten.clear();
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Gone),
            Err(e) => {
                crate::metrics::metrics().journal_failures.inc();
                if !was_behind {
                    error!(
                        queue_id = %self.id,
                        error = %e,
                        "cannot write the delivery journal; outcomes are kept in memory and written when the \
                         spool allows (a restart before then may repeat those deliveries)"
                    );
                }
                Ok(())
            }
        }
    }
}
