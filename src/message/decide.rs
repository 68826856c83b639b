//! The leak decision (SPEC §2, §3): pure, from the parsed header block and the policy to an
//! action, the exposure, and the reason.

use std::collections::HashSet;
use std::fmt;

use serde::Serialize;

use super::address;
use super::domain::InternalDomains;
use super::parse::{Field, FieldKind, Headers};
use super::rule::Rule;
use crate::config::{Action, BreakerConfig, DEFAULT_RULE, PolicyConfig};

/// The policy in the form the decision uses.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Internal domains.
    pub internal: InternalDomains,
    /// A message leaks when its exposure is above this.
    pub max_visible_external: usize,
    /// What to do with a leak.
    pub action: Action,
    /// Keep internal addresses visible on rewritten copies.
    pub keep_internal_visible: bool,
    /// Decide and log only.
    pub monitor: bool,
    /// `[[policy.rules]]`, in order (SPEC §9); shared, so a rule's policy is cheap to make.
    pub rules: std::sync::Arc<[Rule]>,
    /// `[policy.breaker]`: the campaign breaker's settings.
    pub breaker: BreakerConfig,
}

impl Policy {
    /// The policy of `[policy]`, its rules and breaker included.
    pub fn from_config(c: &PolicyConfig) -> Policy {
        Policy {
            internal: InternalDomains::new(&c.internal_domains),
            max_visible_external: c.max_visible_external,
            action: c.action,
            keep_internal_visible: c.keep_internal_visible,
            monitor: c.monitor,
            rules: c.rules.iter().map(Rule::from_config).collect(),
            breaker: c.breaker.clone(),
        }
    }

    /// Whether `addr` (canonical) is internal.
    pub fn is_internal(&self, addr: &str) -> bool {
        address::is_internal(&self.internal, addr)
    }
}

impl Decision {
    /// Add what DKIM does to the copies (see [`crate::dkim::Report::of`]): a signed message
    /// that would be rewritten with no aligned key is held under `dkim.unsigned = "hold"`.
    pub fn apply_dkim(&mut self, report: crate::dkim::Report) {
        if report.held {
            self.action = Action::Hold;
        }
        self.dkim = report;
    }
}

/// Why the decision came out as it did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Reason {
    /// Exposure within the limit.
    WithinLimit,
    /// Exposure above the limit.
    TooManyVisible,
    /// These fields could not be parsed, so the exposure is unknown.
    Unparseable {
        /// The field names.
        fields: Vec<&'static str>,
    },
    /// The message is a copy this relay made (`X-Bccguard`).
    AlreadyProcessed,
    /// The campaign breaker is tripped for the message's sender (SPEC §9): it is held
    /// whatever it shows.
    Breaker {
        /// Leaking messages counted when the breaker tripped.
        count: u64,
    },
}

/// The outcome of the leak decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Whether the message leaks.
    pub leak: bool,
    /// What will be done: the policy's action for a leak (or `pass` in monitor mode), `pass`
    /// otherwise.
    pub action: Action,
    /// The action the policy names for a leak, whatever was done.
    pub policy_action: Action,
    /// Whether monitor mode turned the action into `pass`.
    pub monitor: bool,
    /// Distinct external visible addresses.
    pub exposure: usize,
    /// The limit it was compared with.
    pub max_visible_external: usize,
    /// Why.
    pub reason: Reason,
    /// What DKIM does to the copies (filled by [`Decision::apply_dkim`]).
    pub dkim: crate::dkim::Report,
    /// Distinct external ATTENDEEs of the calendar parts (the `attendees` signal).
    pub attendees: usize,
    /// The policy rule that decided (`default`: the top-level `[policy]`).
    pub rule: String,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (n, max) = (self.exposure, self.max_visible_external);
        let s = if n == 1 { "" } else { "es" };
        if self.monitor {
            write!(f, "monitor mode, would {}: ", self.policy_action.as_str())?;
        }
        if self.dkim.held {
            write!(f, "held (DKIM-signed, and no key aligns with its From domain): ")?;
        }
        match &self.reason {
            Reason::AlreadyProcessed => write!(f, "already processed by bccguard (X-Bccguard)"),
            Reason::Breaker { count } => write!(
                f,
                "the campaign breaker is tripped for this sender ({count} leaking messages); {n} external address{s} visible"
            ),
            Reason::WithinLimit => {
                write!(f, "{n} external address{s} visible, at most {max} allowed")
            }
            Reason::TooManyVisible => write!(f, "{n} external address{s} visible, more than {max} allowed"),
            Reason::Unparseable { fields } => {
                write!(f, "{} cannot be parsed, so what it shows is unknown", fields.join(", "))
            }
        }
    }
}

/// Decide what happens to a message with these headers under `policy`.
pub fn decide(headers: &Headers, policy: &Policy) -> Decision {
    decide_exposed(headers, policy, exposure(headers, policy))
}

/// [`decide`] for a message whose [`exposure`] under `policy` (or a policy with the same
/// internal domains) is already known.
pub fn decide_exposed(headers: &Headers, policy: &Policy, exposure: usize) -> Decision {
    let mut unparseable: Vec<&'static str> = Vec::new();
    for field in headers.fields.iter().filter(|f| f.unparseable) {
        if !unparseable.contains(&field.kind.name()) {
            unparseable.push(field.kind.name());
        }
    }
    let (leak, reason) = if headers.already_processed() {
        (false, Reason::AlreadyProcessed)
    } else if !unparseable.is_empty() {
        (true, Reason::Unparseable { fields: unparseable })
    } else if exposure > policy.max_visible_external {
        (true, Reason::TooManyVisible)
    } else {
        (false, Reason::WithinLimit)
    };
    let monitor = leak && policy.monitor;
    let action = if leak && !monitor { policy.action } else { Action::Pass };
    Decision {
        leak,
        action,
        policy_action: policy.action,
        monitor,
        exposure,
        max_visible_external: policy.max_visible_external,
        reason,
        dkim: crate::dkim::Report::default(),
        attendees: external_attendees(headers, policy),
        rule: DEFAULT_RULE.to_string(),
    }
}

/// The number of distinct external ATTENDEEs of the calendar parts.
pub fn external_attendees(headers: &Headers, policy: &Policy) -> usize {
    let external = headers.attendees.iter().filter(|m| !policy.is_internal(&m.address));
    external.map(|m| address::key(&m.address)).collect::<HashSet<_>>().len()
}

/// The number of distinct external addresses visible in To, Cc, Bcc and Resent-*, in the
/// reply fields that show two or more of them, and in calendar ATTENDEEs (SPEC §11).
pub fn exposure(headers: &Headers, policy: &Policy) -> usize {
    let mut seen = HashSet::new();
    headers
        .fields
        .iter()
        .filter(|f| f.kind != FieldKind::Mark && (!f.kind.is_reply() || reply_counts(f, policy)))
        .flat_map(|f| &f.mailboxes)
        .chain(&headers.attendees)
        .filter(|m| !policy.is_internal(&m.address))
        .filter(|m| seen.insert(address::key(&m.address)))
        .count()
}

/// Whether a reply field (Reply-To, Mail-Followup-To, Resent-Reply-To) counts toward
/// exposure: it shows two or more distinct external addresses. A single external reply
/// address is an intended reply target (a helpdesk): it neither counts nor changes.
pub fn reply_counts(field: &Field, policy: &Policy) -> bool {
    let external: HashSet<_> =
        field.mailboxes.iter().filter(|m| !policy.is_internal(&m.address)).map(|m| address::key(&m.address)).collect();
    external.len() >= 2
}

#[cfg(test)]
mod tests;
