//! Notices and the webhook (SPEC §10): who learns that a message was held, exploded,
//! undisclosed or rejected, or that the breaker tripped.
//!
//! The relay owns one [`Notifier`] and hands it an [`Event`] with [`Notifier::event`], which
//! never waits: the event goes onto two bounded queues (dropped and counted when one is
//! full), each drained by its own task.
//!
//! - [`notice`]: the notice by mail (pure): a short plain-text message naming the count of
//!   exposed addresses and the rule, never the addresses.
//! - `mail`: the task that spools each notice with the null sender, flagged as generated (as
//!   bounces are, so it is never bounced and never notified about), and hands it to
//!   delivery, which sends it through the upstream like any message.
//! - [`webhook`]: the JSON payload (pure) and the task that POSTs it, with a per-request
//!   timeout and retries with backoff.

mod events;
mod mail;
pub mod notice;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, WebhookTarget};
use crate::delivery::Deliverer;
use crate::message::parse::Headers;
use crate::queue_id::QueueId;
use crate::spool::Spool;
use crate::spool::record::Meta;

/// How long stopping waits for queued notices to be spooled and queued posts to be tried.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// What happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// The message was stored and is held until a person releases or deletes it; it is
    /// deleted (with a DSN) after `max_age` (`hold.max_age`).
    Held {
        /// How long it stays held at most.
        max_age: Duration,
    },
    /// The message was accepted and each external recipient gets its own copy.
    Exploded,
    /// The message was accepted and goes out with `To: undisclosed-recipients:;`.
    Undisclosed,
    /// The message was refused: at the end of DATA (the client got 550, nobody else is
    /// told), or after it was accepted (`after_accept`, e.g. at release; the sender is told).
    Rejected {
        /// The client had already been answered `250`.
        after_accept: bool,
    },
    /// One sender (by `key`) sent `count` leaking messages within `window`: later messages
    /// from it get the breaker's action for a while (SPEC §9).
    BreakerTripped {
        /// The key the breaker counts by: an envelope sender, an AUTH user or a client
        /// address.
        key: String,
        /// Leaking messages counted.
        count: u64,
        /// The window they were counted in.
        window: Duration,
    },
}

impl EventKind {
    /// The name used in webhook posts, logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Held { .. } => "held",
            EventKind::Exploded => "exploded",
            EventKind::Undisclosed => "undisclosed",
            EventKind::Rejected { .. } => "rejected",
            EventKind::BreakerTripped { .. } => "breaker_tripped",
        }
    }

    /// Whether the sender (and the admins) get a notice by mail: a hold, a rejection after
    /// the `250`, a breaker trip. A client refused at DATA already has its answer.
    pub fn has_notice(&self) -> bool {
        matches!(
            self,
            EventKind::Held { .. } | EventKind::Rejected { after_accept: true } | EventKind::BreakerTripped { .. }
        )
    }
}

/// Something the sender, the admins or the webhook should hear about, and the message it
/// concerns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The message's queue id (for a breaker trip, the message that tripped it).
    pub queue_id: QueueId,
    /// The policy rule that decided (SPEC §9); `None` for the top-level policy.
    pub rule: Option<String>,
    /// The action taken, as logs name it (`hold`, `explode`, `reject`, `tempfail`, ...).
    pub action: &'static str,
    /// Distinct external visible addresses.
    pub exposure: usize,
    /// Envelope recipients.
    pub recipients: usize,
    /// Envelope sender; empty for the null sender.
    pub sender: String,
    /// The message's decoded `Subject:` (for notices; never posted to the webhook).
    pub subject: Option<String>,
    /// The client's IP address (`local` for messages bccguard made).
    pub client: String,
    /// The message is itself a notice or a bounce (no notice is ever sent about it).
    pub generated: bool,
    /// When it happened.
    pub at: DateTime<Utc>,
}

impl Event {
    /// An event about a message as it was spooled, happening now; no rule, no subject. For
    /// a notice, add the subject with [`Event::with_subject_of`]:
    ///
    /// ```ignore
    /// let event = Event::about(EventKind::Held { max_age }, &meta).with_subject_of(&head);
    /// notifier.event(event.with_rule(rule));
    /// ```
    pub fn about(kind: EventKind, meta: &Meta) -> Event {
        Event {
            kind,
            queue_id: meta.id.clone(),
            rule: None,
            action: meta.decision.action.as_str(),
            exposure: meta.decision.exposure,
            recipients: meta.recipients.len(),
            sender: meta.sender.clone(),
            subject: None,
            client: meta.client.clone(),
            generated: meta.dsn,
            at: Utc::now(),
        }
    }

    /// This event, naming the rule that decided.
    pub fn with_rule(mut self, rule: Option<String>) -> Event {
        self.rule = rule;
        self
    }

    /// This event, with the subject of the message whose header block starts `head` (and
    /// marked generated when that header block is a notice's).
    pub fn with_subject_of(mut self, head: &[u8]) -> Event {
        self.subject = subject_of(head);
        self.generated |= Headers::parse_layout(head).is_ok_and(|h| is_notice(&h));
        self
    }
}

/// The decoded `Subject:` of the message whose header block starts `head`.
pub fn subject_of(head: &[u8]) -> Option<String> {
    let message = mail_parser::MessageParser::new().parse_headers(head)?;
    message.subject().map(str::to_string)
}

/// Whether a header block is a bccguard notice's (`X-Bccguard: notice`).
pub fn is_notice(headers: &Headers) -> bool {
    headers.mark.as_deref().is_some_and(|m| m.starts_with(notice::MARK))
}

/// The relay's handle on notices and the webhook; cheap to clone. A notifier with nothing
/// configured does nothing.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    notices: Option<mpsc::Sender<Event>>,
    webhook: Option<webhook::Queue>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Notifier {
    /// A notifier that tells no one.
    pub fn disabled() -> Notifier {
        Notifier::default()
    }

    /// Start the tasks `[notify]` asks for: notices spooled into `spool` and handed to
    /// `deliverer`, and the webhook poster.
    pub fn start(config: &Config, spool: Arc<Spool>, deliverer: Deliverer) -> Notifier {
        let n = &config.notify;
        let webhook_target = (!n.webhook.is_empty()).then(|| WebhookTarget::parse(&n.webhook));
        if !n.notices() && webhook_target.is_none() {
            return Notifier::disabled();
        }
        let (stop, tasks) = (CancellationToken::new(), TaskTracker::new());
        let notices = n.notices().then(|| {
            let (tx, rx) = mpsc::channel(n.queue_size.max(1));
            let mailer = mail::Mailer::new(config, spool, deliverer);
            tasks.spawn(mailer.run(rx, stop.clone()));
            tx
        });
        let webhook = match webhook_target {
            Some(Ok(target)) => {
                let (queue, rx) = webhook::Queue::new(n, &config.server.hostname);
                let poster = webhook::Poster::new(target, n);
                tasks.spawn(poster.run(rx, stop.clone()));
                Some(queue)
            }
            // Validation refuses such a configuration before the relay starts.
            Some(Err(_)) | None => None,
        };
        Notifier { inner: Some(Arc::new(Inner { notices, webhook, stop, tasks })) }
    }

    /// Tell whoever should hear about `event`. Never waits: an event that finds its queue
    /// full is dropped, logged and counted.
    pub fn event(&self, event: Event) {
        let Some(inner) = &self.inner else {
            return;
        };
        if let Some(queue) = &inner.webhook {
            queue.push(&event);
        }
        let Some(notices) = &inner.notices else {
            return;
        };
        if event.kind.has_notice() && !event.sender.is_empty() && !event.generated {
            let id = event.queue_id.clone();
            if notices.try_send(event).is_err() {
                events::NoticeDropped { id: &id, reason: "the notice queue is full" }.emit();
            }
        }
    }

    /// Stop: spool the notices already queued and try the webhook posts already queued once
    /// each, for a few seconds at most; what is left then is dropped.
    pub async fn stop(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        inner.stop.cancel();
        inner.tasks.close();
        let _ = tokio::time::timeout(STOP_WAIT, inner.tasks.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_only_for_holds_late_rejections_and_trips() {
        let trip = EventKind::BreakerTripped { key: "k".into(), count: 5, window: Duration::from_secs(60) };
        let held = EventKind::Held { max_age: Duration::from_secs(60) };
        for (kind, notice) in [
            (held, true),
            (EventKind::Rejected { after_accept: true }, true),
            (trip, true),
            (EventKind::Rejected { after_accept: false }, false),
            (EventKind::Exploded, false),
            (EventKind::Undisclosed, false),
        ] {
            assert_eq!(kind.has_notice(), notice, "{kind:?}");
        }
    }

    #[test]
    fn a_full_notice_queue_drops_and_counts() {
        let (tx, mut rx) = mpsc::channel(1);
        let inner =
            Inner { notices: Some(tx), webhook: None, stop: CancellationToken::new(), tasks: TaskTracker::new() };
        let notifier = Notifier { inner: Some(Arc::new(inner)) };
        let event = |kind, sender: &str| Event {
            kind,
            queue_id: QueueId::generate(),
            rule: None,
            action: "hold",
            exposure: 2,
            recipients: 2,
            sender: sender.into(),
            subject: None,
            client: "127.0.0.1".into(),
            generated: false,
            at: Utc::now(),
        };
        let held = || EventKind::Held { max_age: Duration::from_secs(60) };
        let before = crate::metrics::metrics().notices_dropped.get();
        // Events without notices never take a place in the queue.
        notifier.event(event(EventKind::Exploded, "s@x.test"));
        notifier.event(event(held(), ""));
        notifier.event(event(held(), "s@x.test"));
        notifier.event(event(held(), "t@x.test"));
        notifier.event(event(held(), "u@x.test"));
        assert_eq!(crate::metrics::metrics().notices_dropped.get() - before, 2);
        assert_eq!(rx.try_recv().unwrap().sender, "s@x.test");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn the_subject_is_decoded_and_notices_are_recognised() {
        let head = b"From: a@x.test\r\nSubject: =?UTF-8?B?SsO8cmdlbg==?= news\r\nX-Bccguard: notice\r\n\r\n";
        assert_eq!(subject_of(head).as_deref(), Some("J\u{fc}rgen news"));
        assert!(is_notice(&Headers::parse_layout(head).unwrap()));
        assert_eq!(subject_of(b"From: a@x.test\r\n\r\n"), None);
        assert!(!is_notice(&Headers::parse_layout(b"X-Bccguard: exploded\r\n\r\n").unwrap()));
    }
}
