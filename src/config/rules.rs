//! `[[policy.rules]]` (SPEC §9): ordered rules, each with conditions and the settings it
//! applies; their checks (every error names its rule path, `policy.rules[2].senders[0]`), and
//! the shadowed-rule warning of `check-config`.

use std::collections::{BTreeMap, HashSet};

use ipnet::IpNet;
use serde::Deserialize;

use super::Action;
use super::load::ConfigError;
use crate::message::domain::normalize_domain;

/// The name of the top-level `[policy]` when no rule matched.
pub const DEFAULT_RULE: &str = "default";

/// One `[[policy.rules]]` entry: conditions (each optional; absent means "any") and the
/// settings it applies (unset ones come from `[policy]`).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleConfig {
    /// Unique name, shown in logs, `check`, the queue and metrics.
    pub name: String,
    /// What to do with a leak under this rule.
    pub action: Option<Action>,
    /// A message leaks when it shows more distinct external addresses than this.
    pub max_visible_external: Option<usize>,
    /// Keep internal addresses visible on rewritten copies.
    pub keep_internal_visible: Option<bool>,
    /// Decide and log only.
    pub monitor: Option<bool>,
    /// The client's address is in one of these networks.
    pub client_networks: Option<Vec<IpNet>>,
    /// The client authenticated as one of these users.
    pub auth_users: Option<Vec<String>>,
    /// Globs on the envelope sender (`*` any run, domain case-insensitive, `"<>"` the null
    /// sender).
    pub senders: Option<Vec<String>>,
    /// The `From:` domain is one of these, or a subdomain of one.
    pub from_domains: Option<Vec<String>>,
    /// Exposure at least this.
    pub min_exposure: Option<usize>,
    /// Exposure at most this.
    pub max_exposure: Option<usize>,
    /// Envelope recipients at least this.
    pub min_recipients: Option<usize>,
    /// Envelope recipients at most this.
    pub max_recipients: Option<usize>,
    /// Field name -> glob on its unfolded value (`"*"`: the field is present).
    pub headers: Option<BTreeMap<String, String>>,
    /// In-Reply-To or References present.
    pub reply: Option<bool>,
    /// List-Id, List-Unsubscribe, Precedence bulk/list/junk, or Auto-Submitted other than no.
    pub bulk: Option<bool>,
    /// One address field lists at least 7 external addresses in strictly ascending order.
    pub sorted_recipients: Option<bool>,
    /// The visible external addresses are the external envelope recipients.
    pub header_matches_envelope: Option<bool>,
    /// A text/calendar part is present.
    pub calendar: Option<bool>,
}

impl RuleConfig {
    /// Whether the rule has no condition at all (it matches every message).
    pub fn is_catch_all(&self) -> bool {
        self.client_networks.is_none()
            && self.auth_users.is_none()
            && self.senders.is_none()
            && self.from_domains.is_none()
            && self.min_exposure.is_none()
            && self.max_exposure.is_none()
            && self.min_recipients.is_none()
            && self.max_recipients.is_none()
            && self.headers.is_none()
            && self.signals().iter().all(|(_, v)| v.is_none())
    }

    /// The signal conditions, by name.
    pub fn signals(&self) -> [(&'static str, Option<bool>); 5] {
        [
            ("reply", self.reply),
            ("bulk", self.bulk),
            ("sorted_recipients", self.sorted_recipients),
            ("header_matches_envelope", self.header_matches_envelope),
            ("calendar", self.calendar),
        ]
    }
}

/// Every problem in `policy.rules`.
pub(super) fn validate(rules: &[RuleConfig], errors: &mut Vec<ConfigError>) {
    let mut names = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = |key: &str| format!("policy.rules[{i}].{key}");
        let mut push = |key: String, message: String| errors.push(ConfigError::new(key, message));
        if rule.name.trim().is_empty() {
            push(at("name"), "every rule needs a name".into());
        } else if rule.name == DEFAULT_RULE || rule.name == crate::breaker::RULE {
            let message =
                format!("{:?} is reserved (the top-level [policy], the breaker); choose another name", rule.name);
            push(at("name"), message);
        } else if rule.name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            push(at("name"), format!("{:?}: no spaces or control characters in a rule name", rule.name));
        } else if !names.insert(rule.name.as_str()) {
            push(at("name"), format!("{:?} is the name of an earlier rule; names must be unique", rule.name));
        }
        conditions(rule, &at, &mut push);
    }
}

/// The problems in one rule's conditions.
fn conditions(rule: &RuleConfig, at: &dyn Fn(&str) -> String, push: &mut dyn FnMut(String, String)) {
    for (key, empty) in [
        ("client_networks", rule.client_networks.as_ref().is_some_and(Vec::is_empty)),
        ("auth_users", rule.auth_users.as_ref().is_some_and(Vec::is_empty)),
        ("senders", rule.senders.as_ref().is_some_and(Vec::is_empty)),
        ("from_domains", rule.from_domains.as_ref().is_some_and(Vec::is_empty)),
        ("headers", rule.headers.as_ref().is_some_and(BTreeMap::is_empty)),
    ] {
        if empty {
            push(at(key), "an empty list never matches; remove the key to mean \"any\"".into());
        }
    }
    for (j, glob) in rule.senders.iter().flatten().enumerate() {
        if let Err(e) = check_sender_glob(glob) {
            push(at(&format!("senders[{j}]")), e);
        }
    }
    for (j, domain) in rule.from_domains.iter().flatten().enumerate() {
        if normalize_domain(domain).is_none() {
            push(at(&format!("from_domains[{j}]")), format!("{domain:?} is not a domain name"));
        }
    }
    for (j, user) in rule.auth_users.iter().flatten().enumerate() {
        if user.is_empty() {
            push(at(&format!("auth_users[{j}]")), "must not be empty".into());
        }
    }
    for (name, glob) in rule.headers.iter().flatten() {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            push(at(&format!("headers.{name}")), format!("{name:?} is not a header field name"));
        } else if glob.chars().any(char::is_control) {
            push(at(&format!("headers.{name}")), "no control characters in a glob".into());
        }
    }
    for (min_key, min, max_key, max) in [
        ("min_exposure", rule.min_exposure, "max_exposure", rule.max_exposure),
        ("min_recipients", rule.min_recipients, "max_recipients", rule.max_recipients),
    ] {
        if let (Some(lo), Some(hi)) = (min, max)
            && lo > hi
        {
            push(at(min_key), format!("{lo} is greater than {max_key} ({hi}): the rule never matches"));
        }
    }
}

/// A sender glob: `"<>"`, or a pattern with an `@` (or a lone `*`) and no spaces or control
/// characters.
fn check_sender_glob(glob: &str) -> Result<(), String> {
    if glob == "<>" || glob == "*" {
        return Ok(());
    }
    if glob.is_empty() || glob.chars().any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>') {
        return Err(format!("{glob:?} is not a sender glob (write \"*@example.com\", or \"<>\" for the null sender)"));
    }
    if !glob.contains('@') {
        return Err(format!("{glob:?} has no @: write \"{glob}@*\" or \"*@{glob}\""));
    }
    Ok(())
}

/// The warnings of `check-config`: rules that can never match because an earlier rule
/// matches every message they would (its conditions are implied by theirs).
pub fn shadowed(rules: &[RuleConfig]) -> Vec<ConfigError> {
    let mut warnings = Vec::new();
    for (j, later) in rules.iter().enumerate() {
        if let Some((i, earlier)) = rules[..j].iter().enumerate().find(|(_, e)| implies(later, e)) {
            let what = if earlier.is_catch_all() {
                "has no conditions and matches every message"
            } else {
                "matches every message it would"
            };
            let message = format!(
                "rule {:?} never matches: the earlier rule {:?} (policy.rules[{i}]) {what}, and the first match wins",
                later.name, earlier.name
            );
            warnings.push(ConfigError::new(format!("policy.rules[{j}]"), message));
        }
    }
    warnings
}

/// Whether every message matching `later` matches `earlier` (a sound, conservative check:
/// `false` when in doubt).
fn implies(later: &RuleConfig, earlier: &RuleConfig) -> bool {
    fn list<T>(l: &Option<Vec<T>>, e: &Option<Vec<T>>, within: impl Fn(&T, &T) -> bool) -> bool {
        match (l, e) {
            (_, None) => true,
            (None, Some(_)) => false,
            (Some(l), Some(e)) => l.iter().all(|x| e.iter().any(|y| within(x, y))),
        }
    }
    let min = |l: Option<usize>, e: Option<usize>| e.is_none_or(|e| l.is_some_and(|l| l >= e));
    let max = |l: Option<usize>, e: Option<usize>| e.is_none_or(|e| l.is_some_and(|l| l <= e));
    let domain_within = |l: &String, e: &String| match (normalize_domain(l), normalize_domain(e)) {
        (Some(l), Some(e)) => l == e || l.ends_with(&format!(".{e}")),
        _ => false,
    };
    let headers = match (&later.headers, &earlier.headers) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(l), Some(e)) => e
            .iter()
            .all(|(name, glob)| l.iter().any(|(n, g)| n.eq_ignore_ascii_case(name) && (glob == "*" || g == glob))),
    };
    let signals = later.signals().iter().zip(earlier.signals()).all(|((_, l), (_, e))| e.is_none() || *l == e);
    list(&later.client_networks, &earlier.client_networks, |l, e| e.contains(l))
        && list(&later.auth_users, &earlier.auth_users, |l, e| l == e)
        && list(&later.senders, &earlier.senders, |l, e| l == e || (e == "*" && l != "<>"))
        && list(&later.from_domains, &earlier.from_domains, domain_within)
        && min(later.min_exposure, earlier.min_exposure)
        && max(later.max_exposure, earlier.max_exposure)
        && min(later.min_recipients, earlier.min_recipients)
        && max(later.max_recipients, earlier.max_recipients)
        && headers
        && signals
}

#[cfg(test)]
mod tests;
