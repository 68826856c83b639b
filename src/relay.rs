//! The intake: what happens to a message between its final dot and the reply.
//!
//! The `Received:` field is prepended, the header block parsed, the leak decided and the
//! delivery planned; a leak under `reject` gets 550 and nothing is kept. Otherwise the
//! message and its plan are written to the spool, file and directory fsync'd, and only then
//! does the client hear `250`; delivery takes over from there.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::Utc;
use tracing::error;

use crate::delivery::Deliverer;
use crate::events::{MessageDecided, Redaction};
use crate::message::decide::{Policy, decide};
use crate::message::parse::Headers;
use crate::plan::Plan;
use crate::queue_id::QueueId;
use crate::smtp::reply::{self, Reply};
use crate::smtp::session::Incoming;
use crate::smtp::{Intake, trace};
use crate::spool::Spool;
use crate::spool::record::{DecisionSummary, FORMAT_VERSION, Meta};

/// The message pipeline behind the SMTP front door.
pub struct Relay {
    hostname: String,
    policy: ArcSwap<Policy>,
    spool: Arc<Spool>,
    deliverer: Deliverer,
    redaction: Redaction,
}

impl Relay {
    /// A relay deciding by `policy`, storing into `spool` and handing messages to `deliverer`.
    pub fn new(
        hostname: String,
        policy: Policy,
        spool: Arc<Spool>,
        deliverer: Deliverer,
        redaction: Redaction,
    ) -> Relay {
        Relay { hostname, policy: ArcSwap::from_pointee(policy), spool, deliverer, redaction }
    }

    /// Decide messages by `policy` from now on.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    async fn accept_message(&self, incoming: Incoming) -> Reply {
        let id = QueueId::generate();
        let now = Utc::now();
        let received = trace::received_field(&incoming, &self.hostname, id.as_str(), now);
        let mut bytes = Vec::with_capacity(received.len() + incoming.data.len());
        bytes.extend_from_slice(received.as_bytes());
        bytes.extend_from_slice(&incoming.data);
        let message = Bytes::from(bytes);
        let Ok(headers) = Headers::parse(&message) else {
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
                size: message.len(),
                decision: &decision,
                transactions: 0,
                copies: 0,
            };
            rejected.emit(self.redaction);
            return reply::leak_rejected(&decision);
        };
        let mut meta = Meta {
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
        if let Err(e) = self.spool.store(&mut meta, &message).await {
            error!(queue_id = %id, error = %e, "cannot store the message in the spool");
            return reply::STORAGE_FAILED;
        }
        let accepted = MessageDecided {
            id: &id,
            client: incoming.peer,
            sender: &meta.sender,
            recipients: meta.recipients.len(),
            size: message.len(),
            decision: &decision,
            transactions: meta.plan.transactions.len(),
            copies: meta.plan.transactions.iter().filter(|t| t.rewrite != crate::plan::Rewrite::Original).count(),
        };
        accepted.emit(self.redaction);
        self.deliverer.submit(meta.id.clone());
        reply::queued(id.as_str())
    }
}

impl Intake for Relay {
    fn accept(&self, incoming: Incoming) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        Box::pin(self.accept_message(incoming))
    }
}
