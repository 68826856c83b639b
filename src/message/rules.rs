//! Policy rules (SPEC §9): the leak decision under the first rule whose conditions hold (see
//! [`super::rule`] for rules and their conditions), and the policy a rule applies.

use super::decide::{self, Decision, Policy};
use super::parse::Headers;
pub use super::rule::{Condition, Facts, Rule, Settings, first_match, glob, sender_matches};
use crate::config::DEFAULT_RULE;

impl Policy {
    /// This policy with a rule's settings applied.
    pub fn with(&self, settings: &Settings) -> Policy {
        Policy {
            action: settings.action.unwrap_or(self.action),
            max_visible_external: settings.max_visible_external.unwrap_or(self.max_visible_external),
            keep_internal_visible: settings.keep_internal_visible.unwrap_or(self.keep_internal_visible),
            monitor: settings.monitor.unwrap_or(self.monitor),
            ..self.clone()
        }
    }

    /// The policy a rule named `rule` applies (the top-level one for `default`, or a rule
    /// that no longer exists).
    pub fn for_rule(&self, rule: &str) -> Policy {
        match self.rules.iter().find(|r| r.name == rule) {
            Some(r) => self.with(&r.then),
            None => self.clone(),
        }
    }
}

/// The leak decision under the first matching rule (or `[policy]`), naming it; and the
/// policy that rule applies (for the plan).
pub fn decide(headers: &Headers, facts: &Facts<'_>, policy: &Policy) -> (Decision, Policy) {
    let (name, effective) = match first_match(&policy.rules, facts) {
        Some(rule) => (rule.name.as_str(), policy.with(&rule.then)),
        None => (DEFAULT_RULE, policy.clone()),
    };
    // A rule changes what is allowed, never what is internal: the exposure stays the facts'.
    let mut decision = decide::decide_exposed(headers, &effective, facts.exposure);
    decision.rule = name.to_string();
    (decision, effective)
}

#[cfg(test)]
mod tests;
