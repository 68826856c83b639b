//! Metrics of rules, signals and the campaign breaker (SPEC §9).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Labels of `bccguard_decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// The rule that decided (`default`: the top-level policy; `breaker`: the breaker).
    pub rule: String,
    /// The action taken.
    pub action: String,
}

/// Labels of `bccguard_signals_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    /// reply, bulk, sorted_recipients, header_matches_envelope or calendar.
    pub signal: String,
}

/// Labels of `bccguard_breaker_actions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerActionLabels {
    /// hold or tempfail.
    pub action: String,
}

/// Metrics of rules, signals and the campaign breaker (SPEC §9).
pub struct RulesMetrics {
    /// Messages decided, by rule and action.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Messages showing each broadcast signal.
    pub signals: Family<SignalLabels, Counter>,
    /// Breaker trips.
    pub breaker_trips: Counter,
    /// Keys tripped now (refreshed every few seconds, and at each trip and reset).
    pub breaker_tripped: Gauge,
    /// Messages that got a tripped breaker's action, by action.
    pub breaker_actions: Family<BreakerActionLabels, Counter>,
    /// 1 while the breaker's Redis (`redis_url`) does not answer and each relay counts on its
    /// own; 0 otherwise (and without `redis_url`).
    pub breaker_redis_down: Gauge,
    /// Breaker calls to Redis that failed (the message was judged on local counts).
    pub breaker_redis_errors: Counter,
}

impl RulesMetrics {
    pub(super) fn register(registry: &mut Registry) -> RulesMetrics {
        let m = RulesMetrics {
            decisions: Family::default(),
            signals: Family::default(),
            breaker_trips: Counter::default(),
            breaker_tripped: Gauge::default(),
            breaker_actions: Family::default(),
            breaker_redis_down: Gauge::default(),
            breaker_redis_errors: Counter::default(),
        };
        registry.register("decisions", "Messages decided, by policy rule and action", m.decisions.clone());
        registry.register("signals", "Messages showing each broadcast signal", m.signals.clone());
        for signal in ["reply", "bulk", "sorted_recipients", "header_matches_envelope", "calendar"] {
            let _ = m.signals.get_or_create(&SignalLabels { signal: signal.into() });
        }
        registry.register("breaker_trips", "Campaign breaker trips", m.breaker_trips.clone());
        registry.register("breaker_tripped", "Campaign breaker keys tripped now", m.breaker_tripped.clone());
        registry.register(
            "breaker_actions",
            "Messages that got a tripped breaker's action (hold or tempfail)",
            m.breaker_actions.clone(),
        );
        for action in ["hold", "tempfail"] {
            let _ = m.breaker_actions.get_or_create(&BreakerActionLabels { action: action.into() });
        }
        registry.register(
            "breaker_redis_down",
            "1 while the breaker's Redis does not answer and this relay counts on its own, else 0",
            m.breaker_redis_down.clone(),
        );
        registry.register(
            "breaker_redis_errors",
            "Breaker calls to Redis that failed (judged on local counts instead)",
            m.breaker_redis_errors.clone(),
        );
        m
    }
}
