//! The intake: what happens to a message between its final dot and the reply.
//!
//! The `Received:` field is prepended, the header block parsed, the leak decided and the
//! delivery planned; a leak under `reject` gets 550 and nothing is kept. Otherwise the
//! message and its plan are written to the spool, file and directory fsync'd, and only then
//! does the client hear `250`; delivery takes over from there (or, for a leak under `hold`,
//! nothing is delivered until a person releases it). The notifier hears of every leak acted
//! on (without the reply ever waiting for it).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::error;

mod judge;

use crate::breaker::{self, Breaker};
use crate::config::{Action, DEFAULT_RULE};
use crate::delivery::Deliverer;
use crate::events::{MessageDecided, Redaction};
use crate::message::calendar::{self, CalendarPart};
use crate::message::decide::{Decision, Policy};
use crate::message::parse::Headers;
use crate::message::parse::MAX_HEADER_BLOCK;
use crate::notify::{Event, EventKind, Notifier};
use crate::plan::Plan;
use crate::queue_id::QueueId;
use crate::rewrite::calendar::CalendarRewrite;
use crate::smtp::reply::{self, Reply};
use crate::smtp::session::Incoming;
use crate::smtp::{Body, Intake, trace};
use crate::spool::record::{DecisionSummary, FORMAT_VERSION, Meta};
use crate::spool::{Opened, Spill, Spool};

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
    /// Who hears about leaks: the sender, the admins, the webhook.
    notifier: Notifier,
    /// The DKIM keys: a signed message that would be rewritten with no aligned key is held
    /// under `dkim.unsigned = "hold"`.
    dkim: crate::dkim::Shared,
    /// The campaign breaker's counts (they survive a reload).
    breaker: Breaker,
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
        let dkim = crate::dkim::Shared::default();
        let breaker = Breaker::default();
        Relay { hostname, policy, spool, deliverer, redaction, budget, notifier: Notifier::disabled(), dkim, breaker }
    }

    /// This relay, with these DKIM keys.
    pub fn with_dkim(mut self, dkim: crate::dkim::Shared) -> Relay {
        self.dkim = dkim;
        self
    }

    /// This relay, counting leaks for the campaign breaker in `breaker`.
    pub fn with_breaker(mut self, breaker: Breaker) -> Relay {
        self.breaker = breaker;
        self
    }

    /// This relay, telling `notifier` about the leaks it acts on.
    pub fn with_notifier(mut self, notifier: Notifier) -> Relay {
        self.notifier = notifier;
        self
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
        // stored after the Received field without being copied to prepend it. A message in
        // memory (at most 128 KiB) is whole in `head`, which its first delivery pass takes.
        let (head, body, _extra) = match body {
            Body::Memory(data) => {
                let data = Bytes::from(data);
                let head = [&received[..], &data[..]].concat();
                (Bytes::from(head), Stored::Memory(data), None)
            }
            Body::Spilled(spill) => match self.spilled_head(&spill, &received).await {
                Ok((head, permit)) => (head, Stored::Spilled(spill), permit),
                Err(r) => return r,
            },
        };
        let size = received.len() + usize::try_from(body.len()).unwrap_or(usize::MAX);
        let Ok(mut headers) = Headers::parse(&head) else {
            return reply::HEADERS_TOO_LARGE;
        };
        let calendar = match self.calendar_parts(&body).await {
            Ok(c) => c,
            Err(r) => return r,
        };
        headers.attendees = calendar.iter().flat_map(|p| p.attendees.iter().cloned()).collect();
        let in_memory = match &body {
            Stored::Memory(data) => Some(&data[..]),
            Stored::Spilled(_) => None,
        };
        let judged = self.judge(&id, &incoming, &head, &headers, in_memory).await;
        if judged.tempfail {
            return breaker::TEMPFAIL;
        }
        let (mut decision, policy, signals) = (judged.decision, judged.policy, judged.signals.seen());
        if decision.action == Action::Undisclose && !headers.attendees.is_empty() {
            // An invite cannot be undisclosed: each invitee must find itself in it.
            decision.action = Action::Explode;
        }
        let report = crate::dkim::Report::of(&head, &self.dkim.load(), decision.action);
        decision.apply_dkim(report);
        if decision.dkim.held {
            crate::metrics::metrics().dkim.held.inc();
        }
        let Some(mut plan) = Plan::build(&decision, &headers, &incoming.recipients, &policy) else {
            let rejected = MessageDecided {
                id: &id,
                client: incoming.peer,
                sender: &incoming.sender,
                recipients: incoming.recipients.len(),
                size,
                decision: &decision,
                signals: &signals,
                transactions: 0,
                copies: 0,
            };
            rejected.emit(self.redaction);
            self.notifier.event(rejected_at_data(&id, &incoming, &decision));
            return reply::leak_rejected(&decision);
        };
        if decision.action == Action::Explode {
            plan.calendar = CalendarRewrite::plan(&calendar, received.len(), &policy);
        }
        let meta = Meta {
            version: FORMAT_VERSION,
            id: id.clone(),
            received_at: now.timestamp_millis(),
            client: incoming.peer.ip().to_canonical().to_string(),
            sender: incoming.sender,
            recipients: incoming.recipients,
            decision: DecisionSummary {
                leak: decision.leak,
                action: decision.action,
                exposure: decision.exposure,
                rule: Some(decision.rule.clone()),
                signals,
            },
            plan,
            dsn: false,
            size: None,
            crc32: None,
        };
        let whole = matches!(body, Stored::Memory(_)).then(|| head.clone());
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
            signals: &meta.decision.signals,
            transactions: meta.plan.transactions.len(),
            copies: meta.plan.transactions.iter().filter(|t| t.rewrite != crate::plan::Rewrite::Original).count(),
        };
        accepted.emit(self.redaction);
        let hold_max_age = std::time::Duration::from_millis(self.deliverer.hold_max_age_ms().max(0) as u64);
        let event = accepted_event(&decision, hold_max_age).map(|kind| {
            let event = Event::about(kind, &meta).with_rule(named_rule(&decision));
            // Only notices quote the subject (the webhook never does).
            if event.kind.has_notice() { event.with_subject_of(&head) } else { event }
        });
        if meta.is_held() {
            self.deliverer.hold(meta.id.clone(), meta.received_at);
        } else if let Some(whole) = whole {
            self.deliverer.submit_opened(Opened::fresh(meta, whole));
        } else {
            self.deliverer.submit(meta.id.clone());
        }
        if let Some(event) = event {
            self.notifier.event(event);
        }
        reply::queued(id.as_str())
    }
}

impl Relay {
    /// The calendar parts of a received message (offsets relative to its first byte, after
    /// the Received field). A spilled message is first scanned in chunks; only one that
    /// names a calendar type is read whole, under the memory budget (452 4.3.1 when spent).
    async fn calendar_parts(&self, body: &Stored) -> Result<Vec<CalendarPart>, Reply> {
        let spill = match body {
            Stored::Memory(data) => return Ok(calendar::parts(data)),
            Stored::Spilled(spill) => spill,
        };
        let storage_failed = |e: std::io::Error| {
            error!(error = %e, "cannot read back a spilled message");
            reply::STORAGE_FAILED
        };
        if !spill.any(calendar::may_have_calendar).await.map_err(storage_failed)? {
            return Ok(Vec::new());
        }
        let want = u32::try_from(spill.len()).unwrap_or(u32::MAX);
        let _permit = self.budget.clone().try_acquire_many_owned(want).map_err(|_| reply::NO_MEMORY_FOR_DATA)?;
        let data = spill.read_all().await.map_err(storage_failed)?;
        Ok(calendar::parts(&data))
    }

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

/// What the notifier hears about a message accepted under `decision`, if anything: the leaks
/// acted on (not those monitor mode let pass). A held message is `EventKind::Held`, with
/// `hold.max_age`: its notices then quote the subject.
fn accepted_event(decision: &Decision, hold_max_age: std::time::Duration) -> Option<EventKind> {
    if !decision.leak {
        return None;
    }
    match decision.action {
        Action::Explode => Some(EventKind::Exploded),
        Action::Undisclose => Some(EventKind::Undisclosed),
        Action::Hold => Some(EventKind::Held { max_age: hold_max_age }),
        Action::Reject | Action::Pass => None,
    }
}

/// The event of a leak refused at the end of DATA (the client hears 550; no notice by mail).
fn rejected_at_data(id: &QueueId, incoming: &Incoming, decision: &Decision) -> Event {
    Event {
        kind: EventKind::Rejected { after_accept: false },
        queue_id: id.clone(),
        rule: named_rule(decision),
        action: decision.action.as_str(),
        exposure: decision.exposure,
        recipients: incoming.recipients.len(),
        sender: incoming.sender.clone(),
        subject: None,
        client: incoming.peer.ip().to_canonical().to_string(),
        generated: false,
        at: Utc::now(),
    }
}

/// The rule an event names: `None` for the top-level policy.
fn named_rule(decision: &Decision) -> Option<String> {
    (decision.rule != DEFAULT_RULE).then(|| decision.rule.clone())
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
