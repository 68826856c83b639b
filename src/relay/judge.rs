//! The decision at intake: the signals and facts of a message, the rule that applies, and the
//! campaign breaker (SPEC §9).

use chrono::Utc;
use tracing::{info, warn};

use super::Relay;
use crate::breaker::{self, Trip, Verdict};
use crate::config::{Action, BreakerAction};
use crate::message::decide::{self, Decision, Policy, Reason};
use crate::message::parse::Headers;
use crate::message::rules::{self, Facts};
use crate::message::signals::{HeaderFields, Signals};
use crate::metrics::{BreakerActionLabels, DecisionLabels, metrics};
use crate::notify::{Event, EventKind};
use crate::queue_id::QueueId;
use crate::smtp::session::Incoming;

/// What the intake decided about one message.
pub(super) struct Judged {
    /// The decision, naming its rule.
    pub decision: Decision,
    /// The policy the rule applies (for the plan).
    pub policy: Policy,
    /// The broadcast signals.
    pub signals: Signals,
    /// The breaker is tripped for the sender and its action is `tempfail`: answer 451.
    pub tempfail: bool,
}

impl Relay {
    /// Decide a message: signals and facts once, the first matching rule, then the breaker.
    pub(super) async fn judge(
        &self,
        id: &QueueId,
        incoming: &Incoming,
        head: &[u8],
        headers: &Headers,
        whole: Option<&[u8]>,
    ) -> Judged {
        let policy = self.policy.load_full();
        let fields = HeaderFields::parse(head);
        let signals = Signals::compute(&fields, headers, whole, &incoming.recipients, &policy.internal);
        let from_domain = fields.from_domain();
        let facts = Facts {
            client: incoming.peer.ip(),
            auth_user: incoming.user.as_deref(),
            sender: &incoming.sender,
            fields: &fields,
            from_domain: from_domain.as_deref(),
            exposure: decide::exposure(headers, &policy),
            recipients: incoming.recipients.len(),
            signals: &signals,
        };
        let (mut decision, effective) = rules::decide(headers, &facts, &policy);
        let mut tempfail = false;
        let b = &policy.breaker;
        let key = breaker::key(b.key, &incoming.sender, incoming.user.as_deref(), incoming.peer.ip());
        if let (Some(limits), Some(key)) = (breaker::limits(b), key) {
            let now = Utc::now().timestamp_millis();
            match self.breaker.judge(&key, decision.leak, id.as_str(), now, limits).await {
                Verdict::Tripped(trip) => {
                    metrics()
                        .rules
                        .breaker_actions
                        .get_or_create(&BreakerActionLabels { action: b.action.as_str().into() })
                        .inc();
                    match b.action {
                        BreakerAction::Tempfail => tempfail = true,
                        BreakerAction::Hold => {
                            decision.action = Action::Hold;
                            decision.monitor = false;
                            decision.rule = breaker::RULE.into();
                            decision.reason = Reason::Breaker { count: trip.count };
                        }
                    }
                }
                Verdict::JustTripped(trip) => self.tripped(id, incoming, head, &decision, &key, trip),
                Verdict::Open { .. } => {}
            }
        }
        if tempfail {
            let labels = DecisionLabels { rule: breaker::RULE.into(), action: "tempfail".into() };
            metrics().rules.decisions.get_or_create(&labels).inc();
            info!(
                queue_id = %id,
                client = %incoming.peer.ip().to_canonical(),
                sender = %self.redaction.address(&incoming.sender),
                recipients = incoming.recipients.len(),
                exposure = decision.exposure,
                leak = decision.leak,
                rule = breaker::RULE,
                action = "tempfail",
                "message deferred (451): the campaign breaker is tripped for this sender"
            );
        }
        Judged { decision, policy: effective, signals, tempfail }
    }

    /// The breaker tripped on this message: log, count, notify.
    fn tripped(&self, id: &QueueId, incoming: &Incoming, head: &[u8], decision: &Decision, key: &str, trip: Trip) {
        let b = self.policy.load().breaker.clone();
        metrics().rules.breaker_trips.inc();
        metrics().rules.breaker_tripped.inc();
        warn!(
            queue_id = %id,
            key = %self.redaction.text(key),
            key_kind = b.key.as_str(),
            count = trip.count,
            window = %b.window,
            duration = %b.duration,
            action = b.action.as_str(),
            "campaign breaker tripped: later messages from this key get its action until it closes \
             (bccguard breaker list / reset)"
        );
        let event = Event {
            kind: EventKind::BreakerTripped { key: key.to_string(), count: trip.count, window: b.window.0 },
            queue_id: id.clone(),
            rule: (decision.rule != crate::config::DEFAULT_RULE).then(|| decision.rule.clone()),
            action: b.action.as_str(),
            exposure: decision.exposure,
            recipients: incoming.recipients.len(),
            sender: incoming.sender.clone(),
            subject: crate::notify::subject_of(head),
            client: incoming.peer.ip().to_canonical().to_string(),
            generated: false,
            at: Utc::now(),
        };
        self.notifier.event(event);
    }
}
