//! The intake: what happens to a message between its final dot and the reply.
//!
//! The `Received:` field is prepended, the header block parsed, the leak decided and the
//! delivery planned; a leak under `reject` gets 550 and nothing is kept. Otherwise the
//! message and its plan are written to the spool, file and directory fsync'd, and only then
//! does the client hear `250`; delivery takes over from there (or, for a leak under `hold`,
//! nothing is delivered until a person releases it).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::error;

use crate::delivery::Deliverer;
use crate::events::{MessageDecided, Redaction};
use crate::message::decide::{Policy, decide};
use crate::message::parse::Headers;
use crate::message::parse::MAX_HEADER_BLOCK;
use crate::plan::Plan;
use crate::queue_id::QueueId;
use crate::smtp::reply::{self, Reply};
use crate::smtp::session::Incoming;
use crate::smtp::{Body, Intake, trace};
use crate::spool::record::{DecisionSummary, FORMAT_VERSION, Meta};
use crate::spool::{Spill, Spool};

/// The message pipeline behind the SMTP front door.
pub struct Relay {
    hostname: String,
    /// Shared with the delivery manager, which releases held messages by the policy in force.
    policy: Arc<ArcSwap<Policy>>,
    spool: Arc<Spool>,
    deliverer: Deliverer,
    redaction: Redaction,
    /// `server.max_data_in_memory`: a spilled message's header block is read back under it.
    budget: Arc<Semaphore>,
}

impl Relay {
    /// A relay deciding by `policy`, storing into `spool` and handing messages to `deliverer`.
    pub fn new(
        hostname: String,
        policy: Arc<ArcSwap<Policy>>,
        spool: Arc<Spool>,
        deliverer: Deliverer,
        redaction: Redaction,
        budget: Arc<Semaphore>,
    ) -> Relay {
        Relay { hostname, policy, spool, deliverer, redaction, budget }
    }

    /// Decide messages by `policy` from now on.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    async fn accept_message(&self, incoming: Incoming, body: Body) -> Reply {
        let id = QueueId::generate();
        let now = Utc::now();
        let received = trace::received_field(&incoming, &self.hostname, id.as_str(), now);
        let received = Bytes::from(received);
        // The Received field and the start of the message (at least its header block), to
        // decide on; the message itself stays where it is (in memory, or spilled), and is
        // stored after the Received field without being copied to prepend it.
        let (head, body, _extra) = match body {
            Body::Memory(data) => {
                let data = Bytes::from(data);
                let head = [&received[..], &data[..header_block_len(&data)]].concat();
                (Bytes::from(head), Stored::Memory(data), None)
            }
            Body::Spilled(spill) => match self.spilled_head(&spill, &received).await {
                Ok((head, permit)) => (head, Stored::Spilled(spill), permit),
                Err(r) => return r,
            },
        };
        let size = received.len() + usize::try_from(body.len()).unwrap_or(usize::MAX);
        let Ok(headers) = Headers::parse(&head) else {
            return reply::HEADERS_TOO_LARGE;
        };
        let policy = self.policy.load();
        let decision = decide(&headers, &policy);
        let Some(plan) = Plan::build(&decision, &headers, &incoming.recipients, &policy) else {
            let rejected = MessageDecided {
                id: &id,
                client: incoming.peer,
                sender: &incoming.sender,
                recipients: incoming.recipients.len(),
                size,
                decision: &decision,
                transactions: 0,
                copies: 0,
            };
            rejected.emit(self.redaction);
            return reply::leak_rejected(&decision);
        };
        let meta = Meta {
            version: FORMAT_VERSION,
            id: id.clone(),
            received_at: now.timestamp_millis(),
            client: incoming.peer.ip().to_canonical().to_string(),
            sender: incoming.sender,
            recipients: incoming.recipients,
            decision: DecisionSummary { leak: decision.leak, action: decision.action, exposure: decision.exposure },
            plan,
            dsn: false,
            size: None,
            crc32: None,
        };
        let stored = match body {
            Stored::Memory(data) => self.spool.store(meta, vec![received, data]).await,
            Stored::Spilled(spill) => self.spool.store_spilled(meta, received, spill).await,
        };
        let meta = match stored {
            Ok(meta) => meta,
            Err(e) => {
                error!(queue_id = %id, error = %e, "cannot store the message in the spool");
                return reply::STORAGE_FAILED;
            }
        };
        let accepted = MessageDecided {
            id: &id,
            client: incoming.peer,
            sender: &meta.sender,
            recipients: meta.recipients.len(),
            size,
            decision: &decision,
            transactions: meta.plan.transactions.len(),
            copies: meta.plan.transactions.iter().filter(|t| t.rewrite != crate::plan::Rewrite::Original).count(),
        };
        accepted.emit(self.redaction);
        if meta.is_held() {
            self.deliverer.hold(meta.id.clone(), meta.received_at);
        } else {
            self.deliverer.submit(meta.id.clone());
        }
        reply::queued(id.as_str())
    }
}

impl Relay {
    /// The `Received:` field and the start of a spilled message, up to the end of its header
    /// block. Header blocks larger than the transaction's reservation are read under the
    /// memory budget (452 4.3.1 when it is spent).
    async fn spilled_head(
        &self,
        spill: &Spill,
        received: &[u8],
    ) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Reply> {
        let mut extra = None;
        let mut limit = HEAD_IN_RESERVATION;
        loop {
            let head = spill.head(limit).await.map_err(|e| {
                error!(error = %e, "cannot read back a spilled message");
                reply::STORAGE_FAILED
            })?;
            if head.complete || limit > MAX_HEADER_BLOCK {
                let mut bytes = Vec::with_capacity(received.len() + head.bytes.len());
                bytes.extend_from_slice(received);
                bytes.extend_from_slice(&head.bytes);
                return Ok((Bytes::from(bytes), extra));
            }
            limit = MAX_HEADER_BLOCK + 4;
            let want = u32::try_from(limit).unwrap_or(u32::MAX);
            extra = Some(self.budget.clone().try_acquire_many_owned(want).map_err(|_| reply::NO_MEMORY_FOR_DATA)?);
        }
    }
}

/// A received message's bytes after the Received field.
enum Stored {
    Memory(Bytes),
    Spilled(Spill),
}

impl Stored {
    fn len(&self) -> u64 {
        match self {
            Stored::Memory(b) => b.len() as u64,
            Stored::Spilled(s) => s.len(),
        }
    }
}

/// The length of `data`'s header block, its empty line included (all of it when it has no
/// empty line).
fn header_block_len(data: &[u8]) -> usize {
    if data.starts_with(b"\r\n") {
        return 2;
    }
    memchr::memmem::find(data, b"\r\n\r\n").map_or(data.len(), |i| i + 4)
}

/// How much of a spilled message's header block is read under the transaction's own
/// reservation.
const HEAD_IN_RESERVATION: usize = 64 * 1024;

impl Intake for Relay {
    fn accept(&self, incoming: Incoming, body: Body) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        Box::pin(self.accept_message(incoming, body))
    }

    fn spill(&self) -> Pin<Box<dyn Future<Output = std::io::Result<Spill>> + Send + '_>> {
        Box::pin(self.spool.spill())
    }
}
