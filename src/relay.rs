//! The intake: what happens to a message between its final dot and the reply.
//!
//! The `Received:` field is prepended, and each recipient's copy is written durably to the
//! upstream before the client hears `250`.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use chrono::Utc;
use tokio::task::JoinSet;
use tracing::error;

use crate::delivery::directory::DirectoryUpstream;
use crate::events::{MessageAccepted, Redaction};
use crate::queue_id::QueueId;
use crate::smtp::reply::{self, Reply};
use crate::smtp::session::Incoming;
use crate::smtp::{Intake, trace};

/// The message pipeline behind the SMTP front door.
pub struct Relay {
    hostname: String,
    upstream: DirectoryUpstream,
    redaction: Redaction,
}

impl Relay {
    /// A relay delivering into `upstream`.
    pub fn new(hostname: String, upstream: DirectoryUpstream, redaction: Redaction) -> Relay {
        Relay {
            hostname,
            upstream,
            redaction,
        }
    }

    async fn accept_message(&self, incoming: Incoming) -> Reply {
        let id = QueueId::generate();
        let received = trace::received_field(&incoming, &self.hostname, id.as_str(), Utc::now());
        let message = vec![Bytes::from(received), Bytes::from(incoming.data.clone())];
        let size = message.iter().map(Bytes::len).sum();
        let mut writes = JoinSet::new();
        for (i, rcpt) in incoming.recipients.iter().enumerate() {
            let (upstream, message) = (self.upstream.clone(), message.clone());
            let (name, sender, rcpt) = (format!("{id}-{i}"), incoming.sender.clone(), rcpt.clone());
            writes
                .spawn(async move { upstream.deliver_one(&name, &sender, &rcpt, &message).await });
        }
        while let Some(result) = writes.join_next().await {
            if let Err(e) = result.map_err(std::io::Error::other).and_then(|r| r) {
                error!(queue_id = %id, error = %e, "cannot write to the outbox");
                return reply::STORAGE_FAILED;
            }
        }
        MessageAccepted {
            id: &id,
            client: incoming.peer,
            sender: &incoming.sender,
            recipients: incoming.recipients.len(),
            size,
        }
        .emit(self.redaction);
        reply::queued(id.as_str())
    }
}

impl Intake for Relay {
    fn accept(&self, incoming: Incoming) -> Pin<Box<dyn Future<Output = Reply> + Send + '_>> {
        Box::pin(self.accept_message(incoming))
    }
}
