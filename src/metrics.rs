//! Prometheus metrics (process-wide, updated by the events in [`crate::events`]) and the
//! readiness state of a running relay.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

mod rules;

pub use rules::{BreakerActionLabels, DecisionLabels, RulesMetrics, SignalLabels};

use crate::message::address::redact_in_text;

/// Labels of `bccguard_messages_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageLabels {
    /// explode, undisclose, reject, pass or hold.
    pub action: String,
    /// "true" when the message leaked.
    pub leak: String,
}

/// Labels of `bccguard_deliveries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// delivered, deferred or failed.
    pub outcome: String,
}

/// Labels of `bccguard_upstream_refusals_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// greeting, ehlo, tls, auth, mail, rcpt or data.
    pub stage: String,
}

/// Labels of `bccguard_notices_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// held, rejected or breaker_tripped.
    pub kind: String,
}

/// Labels of `bccguard_held_releases_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleaseLabels {
    /// explode, undisclose or pass: what the person asked for.
    pub r#as: String,
}

/// Metrics of held messages (SPEC §10).
pub struct HoldMetrics {
    /// Messages held now.
    pub held: Gauge,
    /// Held messages released, by how they were released.
    pub releases: Family<ReleaseLabels, Counter>,
    /// Held messages deleted by a person.
    pub deletes: Counter,
    /// Held messages deleted because `hold.max_age` passed (their senders got a DSN).
    pub expiries: Counter,
}

impl HoldMetrics {
    fn register(registry: &mut Registry) -> HoldMetrics {
        let held = Gauge::default();
        registry.register("held_messages", "Messages held for a person to release or delete", held.clone());
        let releases = Family::<ReleaseLabels, Counter>::default();
        registry.register("held_releases", "Held messages released, by how (as)", releases.clone());
        for how in ["explode", "undisclose", "pass"] {
            let _ = releases.get_or_create(&ReleaseLabels { r#as: how.into() });
        }
        let deletes = Counter::default();
        registry.register("held_deletes", "Held messages deleted by a person", deletes.clone());
        let expiries = Counter::default();
        registry.register(
            "held_expiries",
            "Held messages deleted after hold.max_age, their senders told by a DSN",
            expiries.clone(),
        );
        HoldMetrics { held, releases, deletes, expiries }
    }
}

/// Every metric bccguard exports.
pub struct Metrics {
    registry: Registry,
    /// Messages decided, by action and leak.
    pub messages: Family<MessageLabels, Counter>,
    /// Exposure (distinct external visible addresses) of each message.
    pub exposure: Histogram,
    /// Rewritten copies planned (explode and undisclose transactions).
    pub copies: Counter,
    /// Recipient delivery attempts, by outcome.
    pub deliveries: Family<OutcomeLabels, Counter>,
    /// Bounces queued.
    pub bounces: Counter,
    /// Messages in the spool.
    pub spool_messages: Gauge,
    /// Arrival (Unix seconds) of the oldest message waiting for delivery; 0 when none.
    pub spool_oldest: Gauge,
    /// Time per upstream transaction attempt, in seconds.
    pub upstream_latency: Histogram,
    /// Spooled messages set aside as damaged.
    pub spool_damaged: Counter,
    /// Upstream attempts refused because of the relay itself, by stage.
    pub upstream_refusals: Family<StageLabels, Counter>,
    /// 1 while the upstream refuses the relay (every copy deferred), else 0.
    pub upstream_refusing: Gauge,
    /// Bounces (and other null-sender messages) that failed permanently and stay queued.
    pub failed_bounces: Counter,
    /// Journal writes that failed (the outcomes are kept in memory and written later).
    pub journal_failures: Counter,
    /// Groups of new messages made durable together (one sync each).
    pub spool_commit_groups: Counter,
    /// New messages made durable (divided by the groups: messages per sync).
    pub spool_commit_messages: Counter,
    /// Groups whose sync failed (each of their clients got 451).
    pub spool_commit_failures: Counter,
    /// Notices spooled for delivery, by kind (one per recipient).
    pub notices: Family<KindLabels, Counter>,
    /// Events whose notices were not spooled (queue full, or the spool refused them).
    pub notices_dropped: Counter,
    /// Webhook events the endpoint accepted (2xx).
    pub webhook_deliveries: Counter,
    /// Webhook events given up after their last attempt, or refused (4xx).
    pub webhook_failures: Counter,
    /// Webhook events dropped because the queue was full.
    pub webhook_dropped: Counter,
    /// Webhook attempts that failed and were retried.
    pub webhook_retries: Counter,
    /// Held messages.
    pub hold: HoldMetrics,
    /// DKIM re-signing of copies.
    pub dkim: crate::dkim::metrics::DkimMetrics,
    /// Rules, signals and the campaign breaker (SPEC §9).
    pub rules: RulesMetrics,
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("bccguard");
        let messages = Family::<MessageLabels, Counter>::default();
        registry.register("messages", "Messages decided, by action and whether they leaked", messages.clone());
        let exposure = Histogram::new([0.0, 1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 10000.0]);
        registry.register("message_exposure", "Distinct external addresses visible per message", exposure.clone());
        let copies = Counter::default();
        registry.register("copies_created", "Rewritten copies planned (explode, undisclose)", copies.clone());
        let deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register("deliveries", "Recipient delivery attempts, by outcome", deliveries.clone());
        let bounces = Counter::default();
        registry.register("bounces", "Delivery status notifications queued", bounces.clone());
        let spool_messages = Gauge::default();
        registry.register("spool_messages", "Messages in the spool", spool_messages.clone());
        let spool_oldest = Gauge::default();
        registry.register(
            "spool_oldest_message_timestamp_seconds",
            "Arrival time (Unix seconds) of the oldest message waiting for delivery (not held, not a failed bounce); 0 when none",
            spool_oldest.clone(),
        );
        let upstream_latency = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "upstream_latency_seconds",
            "Time per upstream transaction attempt",
            upstream_latency.clone(),
        );
        let upstream_refusals = Family::<StageLabels, Counter>::default();
        registry.register(
            "upstream_refusals",
            "Upstream attempts refused because of the relay itself (AUTH, TLS, greeting, policy), by stage",
            upstream_refusals.clone(),
        );
        let upstream_refusing = Gauge::default();
        registry.register(
            "upstream_refusing",
            "1 while the upstream refuses the relay and every copy is deferred",
            upstream_refusing.clone(),
        );
        let failed_bounces = Counter::default();
        registry.register(
            "failed_bounces",
            "Bounces that failed permanently and stay in the queue for an operator",
            failed_bounces.clone(),
        );
        let journal_failures = Counter::default();
        registry.register(
            "journal_write_failures",
            "Delivery journal writes that failed (outcomes kept in memory until written)",
            journal_failures.clone(),
        );
        let (spool_commit_groups, spool_commit_messages, spool_commit_failures) =
            (Counter::default(), Counter::default(), Counter::default());
        for (name, help, counter) in [
            (
                "spool_commit_groups",
                "Groups of new messages made durable together before their 250, one sync each",
                &spool_commit_groups,
            ),
            (
                "spool_commit_messages",
                "New messages made durable before their 250 (per group: messages per sync)",
                &spool_commit_messages,
            ),
            (
                "spool_commit_failures",
                "Groups of new messages whose sync failed (each client got 451)",
                &spool_commit_failures,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        // Every known series exists from the start, at 0.
        let hold = HoldMetrics::register(&mut registry);
        for action in ["explode", "undisclose", "reject", "pass", "hold"] {
            for leak in ["true", "false"] {
                let _ = messages.get_or_create(&MessageLabels { action: action.into(), leak: leak.into() });
            }
        }
        for outcome in ["delivered", "deferred", "failed"] {
            let _ = deliveries.get_or_create(&OutcomeLabels { outcome: outcome.into() });
        }
        let spool_damaged = Counter::default();
        registry.register(
            "spool_damaged",
            "Spooled messages that failed their length or checksum check, set aside in damaged/",
            spool_damaged.clone(),
        );
        for stage in ["greeting", "ehlo", "tls", "auth", "mail", "rcpt", "data"] {
            let _ = upstream_refusals.get_or_create(&StageLabels { stage: stage.into() });
        }
        let notify = NotifyMetrics::register(&mut registry);
        let dkim = crate::dkim::metrics::DkimMetrics::register(&mut registry);
        let rules = RulesMetrics::register(&mut registry);
        Metrics {
            registry,
            messages,
            exposure,
            copies,
            deliveries,
            bounces,
            spool_messages,
            spool_oldest,
            upstream_latency,
            spool_damaged,
            upstream_refusals,
            upstream_refusing,
            failed_bounces,
            journal_failures,
            spool_commit_groups,
            spool_commit_messages,
            spool_commit_failures,
            notices: notify.notices,
            notices_dropped: notify.notices_dropped,
            webhook_deliveries: notify.webhook_deliveries,
            webhook_failures: notify.webhook_failures,
            webhook_dropped: notify.webhook_dropped,
            webhook_retries: notify.webhook_retries,
            hold,
            dkim,
            rules,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// The notices' and webhook's metrics, registered together.
struct NotifyMetrics {
    notices: Family<KindLabels, Counter>,
    notices_dropped: Counter,
    webhook_deliveries: Counter,
    webhook_failures: Counter,
    webhook_dropped: Counter,
    webhook_retries: Counter,
}

impl NotifyMetrics {
    fn register(registry: &mut Registry) -> NotifyMetrics {
        let notices = Family::<KindLabels, Counter>::default();
        registry.register("notices", "Notices spooled for delivery, by kind (one per recipient)", notices.clone());
        for kind in ["held", "rejected", "breaker_tripped"] {
            let _ = notices.get_or_create(&KindLabels { kind: kind.into() });
        }
        let m = NotifyMetrics {
            notices,
            notices_dropped: Counter::default(),
            webhook_deliveries: Counter::default(),
            webhook_failures: Counter::default(),
            webhook_dropped: Counter::default(),
            webhook_retries: Counter::default(),
        };
        for (name, help, counter) in [
            (
                "notices_dropped",
                "Events whose notices were not spooled (queue full or spool error)",
                &m.notices_dropped,
            ),
            ("webhook_deliveries", "Webhook events the endpoint accepted (2xx)", &m.webhook_deliveries),
            (
                "webhook_failures",
                "Webhook events given up after the last attempt, or refused (4xx)",
                &m.webhook_failures,
            ),
            ("webhook_dropped", "Webhook events dropped because the queue was full", &m.webhook_dropped),
            ("webhook_retries", "Webhook attempts that failed and were retried", &m.webhook_retries),
        ] {
            registry.register(name, help, counter.clone());
        }
        m
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// How long an upstream check stays good.
pub const UPSTREAM_FRESH_MS: i64 = 90_000;

/// One readiness check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// What is checked.
    pub name: &'static str,
    /// Why it fails; `None` when it passes.
    pub failing: Option<String>,
}

/// The text of the upstream's refusal of the relay in force, if any.
type RelayRefusal = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// Lines of `/readyz` that inform without deciding readiness.
type Notes = Box<dyn Fn() -> Vec<String> + Send + Sync>;

/// Readiness of one running relay: listening, the spool writable, the upstream reachable
/// recently and not refusing the relay.
#[derive(Default)]
pub struct Health {
    listening: AtomicBool,
    spool_writable: AtomicBool,
    upstream_ok_at: AtomicI64,
    relay: OnceLock<RelayRefusal>,
    notes: OnceLock<Notes>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("listening", &self.listening)
            .field("spool_writable", &self.spool_writable)
            .field("upstream_ok_at", &self.upstream_ok_at)
            .field("watches_relay", &self.relay.get().is_some())
            .field("notes", &self.notes.get().map(|n| n()))
            .finish()
    }
}

impl Health {
    /// Record whether the SMTP listeners accept connections.
    pub fn set_listening(&self, yes: bool) {
        self.listening.store(yes, Ordering::Relaxed);
    }

    /// Record the last spool probe.
    pub fn set_spool_writable(&self, yes: bool) {
        self.spool_writable.store(yes, Ordering::Relaxed);
    }

    /// Record that the upstream was reached at `now_ms`.
    pub fn upstream_reached(&self, now_ms: i64) {
        self.upstream_ok_at.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// Follow whether the upstream refuses the relay (an SMTP upstream): `refusal` gives
    /// the text of the refusal in force, if any.
    pub fn watch_relay(&self, refusal: impl Fn() -> Option<String> + Send + Sync + 'static) {
        let _ = self.relay.set(Box::new(refusal));
    }

    /// Follow lines that `/readyz` shows without failing on them (the breaker's Redis: mail
    /// is accepted on local counts while it is unreachable).
    pub fn watch_notes(&self, notes: impl Fn() -> Vec<String> + Send + Sync + 'static) {
        let _ = self.notes.set(Box::new(notes));
    }

    /// The informing lines of `/readyz`.
    pub fn notes(&self) -> Vec<String> {
        self.notes.get().map(|n| n()).unwrap_or_default()
    }

    /// Each check, and the overall verdict.
    pub fn checks(&self, now_ms: i64) -> (bool, Vec<Check>) {
        let check = |name, ok: bool| Check { name, failing: (!ok).then(String::new) };
        let upstream = now_ms - self.upstream_ok_at.load(Ordering::Relaxed) <= UPSTREAM_FRESH_MS;
        let mut checks = vec![
            check("listening", self.listening.load(Ordering::Relaxed)),
            check("spool writable", self.spool_writable.load(Ordering::Relaxed)),
            check("upstream reachable", upstream),
        ];
        if let Some(relay) = self.relay.get() {
            let failing = relay().map(|text| redact_in_text(&text));
            checks.push(Check { name: "upstream accepts the relay", failing });
        }
        (checks.iter().all(|c| c.failing.is_none()), checks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_check() {
        let h = Health::default();
        assert!(!h.checks(1000).0);
        h.set_listening(true);
        h.set_spool_writable(true);
        h.upstream_reached(1000);
        assert!(h.checks(1000 + UPSTREAM_FRESH_MS).0);
        assert!(!h.checks(1001 + UPSTREAM_FRESH_MS).0, "an old upstream check goes stale");
    }

    #[test]
    fn the_exposition_names_every_metric() {
        let m = metrics();
        m.copies.inc();
        let text = m.encode();
        for (name, kind) in [
            ("bccguard_messages", "counter"),
            ("bccguard_message_exposure", "histogram"),
            ("bccguard_copies_created", "counter"),
            ("bccguard_deliveries", "counter"),
            ("bccguard_bounces", "counter"),
            ("bccguard_spool_messages", "gauge"),
            ("bccguard_spool_oldest_message_timestamp_seconds", "gauge"),
            ("bccguard_spool_damaged", "counter"),
            ("bccguard_upstream_latency_seconds", "histogram"),
            ("bccguard_upstream_refusals", "counter"),
            ("bccguard_upstream_refusing", "gauge"),
            ("bccguard_failed_bounces", "counter"),
            ("bccguard_journal_write_failures", "counter"),
            ("bccguard_held_messages", "gauge"),
            ("bccguard_held_releases", "counter"),
            ("bccguard_held_deletes", "counter"),
            ("bccguard_held_expiries", "counter"),
        ] {
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{name} in {text}");
        }
    }
}
