//! The intake: what happens to a message between its final dot and the reply.
//!
//! The `Received:` field is prepended, the header block parsed, the leak decided and the
//! delivery planned; a leak under `reject` gets 550 and nothing is kept. Otherwise each
//! transaction's copy is written durably to the upstream before the client hears `250`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::Utc;
use tokio::task::JoinSet;
use tracing::error;

use crate::delivery::directory::DirectoryUpstream;
use crate::events::{MessageDecided, Redaction};
use crate::message::decide::{Policy, decide};
use crate::message::parse::Headers;
use crate::plan::Plan;
use crate::queue_id::QueueId;
use crate::rewrite;
use crate::smtp::reply::{self, Reply};
use crate::smtp::session::Incoming;
use crate::smtp::{Intake, trace};

/// Copies written to the outbox at once.
const MAX_WRITES_IN_FLIGHT: usize = 64;

/// The message pipeline behind the SMTP front door.
pub struct Relay {
    hostname: String,
    policy: ArcSwap<Policy>,
    upstream: DirectoryUpstream,
    redaction: Redaction,
}

impl Relay {
    /// A relay deciding by `policy` and delivering into `upstream`.
    pub fn new(
        hostname: String,
        policy: Policy,
        upstream: DirectoryUpstream,
        redaction: Redaction,
    ) -> Relay {
        Relay {
            hostname,
            policy: ArcSwap::from_pointee(policy),
            upstream,
            redaction,
        }
    }

    /// Decide messages by `policy` from now on.
    pub fn set_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    async fn accept_message(&self, incoming: Incoming) -> Reply {
        let id = QueueId::generate();
        let received = trace::received_field(&incoming, &self.hostname, id.as_str(), Utc::now());
        let mut bytes = Vec::with_capacity(received.len() + incoming.data.len());
        bytes.extend_from_slice(received.as_bytes());
        bytes.extend_from_slice(&incoming.data);
        let message = Bytes::from(bytes);
        let Ok(headers) = Headers::parse(&message) else {
            return reply::HEADERS_TOO_LARGE;
        };
        let policy = self.policy.load();
        let decision = decide(&headers, &policy);
        let plan = Plan::build(&decision, &headers, &incoming.recipients, &policy);
        let event = MessageDecided {
            id: &id,
            client: incoming.peer,
            sender: &incoming.sender,
            recipients: incoming.recipients.len(),
            size: message.len(),
            decision: &decision,
            transactions: plan.as_ref().map_or(0, |p| p.transactions.len()),
        };
        let Some(plan) = plan else {
            event.emit(self.redaction);
            return reply::leak_rejected(&decision);
        };
        if let Err(e) = self
            .deliver(&id, &incoming, &message, &headers, &plan)
            .await
        {
            error!(queue_id = %id, error = %e, "cannot write to the outbox");
            return reply::STORAGE_FAILED;
        }
        event.emit(self.redaction);
        reply::queued(id.as_str())
    }

    /// Write every transaction's copy, one file per recipient.
    async fn deliver(
        &self,
        id: &QueueId,
        incoming: &Incoming,
        message: &Bytes,
        headers: &Headers,
        plan: &Plan,
    ) -> std::io::Result<()> {
        let body = message.slice(headers.body_start..);
        let mut writes = JoinSet::new();
        for txn in &plan.transactions {
            let head = Bytes::from(rewrite::header_block(
                message,
                headers,
                plan,
                txn,
                &incoming.recipients,
            ));
            for &i in &txn.recipients {
                if writes.len() >= MAX_WRITES_IN_FLIGHT {
                    writes
                        .join_next()
                        .await
                        .expect("not empty")
                        .map_err(std::io::Error::other)??;
                }
                let (upstream, parts) = (self.upstream.clone(), vec![head.clone(), body.clone()]);
                let (name, sender, rcpt) = (
                    format!("{id}-{i}"),
                    incoming.sender.clone(),
                    incoming.recipients[i].clone(),
                );
                writes.spawn(
                    async move { upstream.deliver_one(&name, &sender, &rcpt, &parts).await },
                );
            }
        }
        while let Some(result) = writes.join_next().await {
            result.map_err(std::io::Error::other)??;
        }
        Ok(())
    }
}

impl Intake for Relay {
    fn accept(&self, incoming: Incoming) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        Box::pin(self.accept_message(incoming))
    }
}
