//! The notices task: for each event, one notice per recipient (the sender when
//! `notify.sender = true`, each of `notify.admins`), spooled with the null sender and flagged
//! as generated, then handed to delivery, which sends it through the upstream like any other
//! message. A notice that cannot be delivered is never bounced (null sender), and stays queued
//! as a failed bounce does.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::events::{NoticeDropped, NoticeQueued};
use super::notice::{self, Audience, Notice};
use super::{Event, STOP_WAIT};
use crate::config::Config;
use crate::delivery::Deliverer;
use crate::events::Redaction;
use crate::message::address;
use crate::queue_id::QueueId;
use crate::spool::Spool;
use crate::spool::record::Meta;

/// Spools notices and hands them to delivery.
pub(super) struct Mailer {
    spool: Arc<Spool>,
    deliverer: Deliverer,
    hostname: String,
    from: String,
    sender: bool,
    admins: Vec<String>,
    redaction: Redaction,
}

impl Mailer {
    /// The notices `config` asks for.
    pub fn new(config: &Config, spool: Arc<Spool>, deliverer: Deliverer) -> Mailer {
        let n = &config.notify;
        Mailer {
            spool,
            deliverer,
            hostname: config.server.hostname.clone(),
            from: n.from_address(&config.server.hostname),
            sender: n.sender,
            admins: n.admins.clone(),
            redaction: Redaction(config.log.redact_addresses),
        }
    }

    /// Spool the notices of each event until `stop`; then those already queued, for a few
    /// seconds at most.
    pub async fn run(self, mut events: mpsc::Receiver<Event>, stop: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => self.send(&event).await,
                    None => return,
                },
            }
        }
        events.close();
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while let Ok(event) = events.try_recv() {
            if tokio::time::timeout_at(deadline, self.send(&event)).await.is_err() {
                NoticeDropped { id: &event.queue_id, reason: "shutting down" }.emit();
            }
        }
    }

    /// Spool and submit the notices of one event.
    async fn send(&self, event: &Event) {
        for (audience, to) in recipients(event, self.sender, &self.admins) {
            let id = QueueId::generate();
            let notice =
                Notice { event, audience, from: &self.from, to, hostname: &self.hostname, id: &id, now: Utc::now() };
            let Some(bytes) = notice::build(&notice) else {
                return;
            };
            match self.spool.store(meta(&id, to), vec![Bytes::from(bytes)]).await {
                Ok(_) => {
                    NoticeQueued { id: &event.queue_id, notice: &id, kind: event.kind.name(), to }.emit(self.redaction);
                    self.deliverer.submit(id);
                }
                Err(e) => {
                    let reason = format!("cannot store the notice in the spool: {e}");
                    NoticeDropped { id: &event.queue_id, reason: &reason }.emit();
                }
            }
        }
    }
}

/// Who gets a notice about `event`: the admins, then the sender (when `sender` is set and it
/// is not one of them); nobody when the event has no notice, the sender is the null sender,
/// or the message is itself generated.
pub(super) fn recipients<'a>(event: &'a Event, sender: bool, admins: &'a [String]) -> Vec<(Audience, &'a str)> {
    if !event.kind.has_notice() || event.sender.is_empty() || event.generated {
        return Vec::new();
    }
    let mut out: Vec<(Audience, &str)> = Vec::new();
    for admin in admins {
        if !out.iter().any(|(_, a)| address::key(a) == address::key(admin)) {
            out.push((Audience::Admin, admin));
        }
    }
    if sender && !out.iter().any(|(_, a)| address::key(a) == address::key(&event.sender)) {
        out.push((Audience::Sender, &event.sender));
    }
    out
}

/// The spool record of a notice to `to`: null sender, one unchanged transaction, flagged as
/// generated (never bounced, never notified about).
fn meta(id: &QueueId, to: &str) -> Meta {
    Meta::generated(id.clone(), to, Utc::now().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::notify::EventKind;

    fn event(kind: EventKind, sender: &str) -> Event {
        Event {
            kind,
            queue_id: QueueId::generate(),
            rule: None,
            action: "hold",
            exposure: 3,
            recipients: 3,
            sender: sender.into(),
            subject: None,
            client: "127.0.0.1".into(),
            generated: false,
            at: Utc::now(),
        }
    }

    fn held() -> EventKind {
        EventKind::Held { max_age: Duration::from_secs(60) }
    }

    #[test]
    fn admins_and_the_sender_each_get_one() {
        let admins = vec!["ops@example.com".to_string(), "ops@EXAMPLE.com".to_string(), "sec@example.com".to_string()];
        let e = event(held(), "shop@example.com");
        let got = recipients(&e, true, &admins);
        assert_eq!(
            got,
            [
                (Audience::Admin, "ops@example.com"),
                (Audience::Admin, "sec@example.com"),
                (Audience::Sender, "shop@example.com")
            ]
        );
        assert_eq!(recipients(&e, false, &admins).len(), 2);
        // A sender who is also an admin gets the admin's notice only.
        let e = event(held(), "sec@example.com");
        assert_eq!(recipients(&e, true, &admins).len(), 2);
    }

    #[test]
    fn none_for_the_null_sender_a_generated_message_or_an_event_without_notice() {
        let admins = vec!["ops@example.com".to_string()];
        assert!(recipients(&event(held(), ""), true, &admins).is_empty());
        let mut generated = event(held(), "shop@example.com");
        generated.generated = true;
        assert!(recipients(&generated, true, &admins).is_empty());
        for kind in [EventKind::Exploded, EventKind::Rejected { after_accept: false }] {
            assert!(recipients(&event(kind, "shop@example.com"), true, &admins).is_empty());
        }
        assert_eq!(recipients(&event(EventKind::Rejected { after_accept: true }, "s@x.test"), true, &[]).len(), 1);
    }

    #[test]
    fn a_notice_is_spooled_as_generated_with_the_null_sender() {
        let m = meta(&QueueId::generate(), "ops@example.com");
        assert!(m.dsn && m.sender.is_empty());
        assert_eq!(m.recipients, ["ops@example.com"]);
        assert_eq!(m.plan.transactions.len(), 1);
    }
}
