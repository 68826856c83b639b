//! A policy rule (SPEC §9), pure: conditions on the facts of a message, computed once, and
//! the settings it applies. [`first_match`] is the whole engine; `rules` decides under the
//! rule it picks.

use std::net::IpAddr;

use ipnet::IpNet;

use super::address;
use super::domain::{InternalDomains, normalize_domain};
use super::signals::{HeaderFields, Signals};
use crate::config::{Action, RuleConfig};

/// What a message is, for the rules: computed once per message.
#[derive(Clone, Copy, Debug)]
pub struct Facts<'a> {
    /// The client's address.
    pub client: IpAddr,
    /// The AUTH user, if the client authenticated.
    pub auth_user: Option<&'a str>,
    /// The envelope sender; empty for the null sender.
    pub sender: &'a str,
    /// The message's header fields.
    pub fields: &'a HeaderFields<'a>,
    /// The `From:` domain, ASCII lowercase.
    pub from_domain: Option<&'a str>,
    /// Distinct external visible addresses (the exposure under the policy in force; the
    /// decision takes it from here rather than counting again).
    pub exposure: usize,
    /// Envelope recipients.
    pub recipients: usize,
    /// The broadcast signals.
    pub signals: &'a Signals,
}

/// One condition of a rule.
#[derive(Clone, Debug)]
pub enum Condition {
    /// The client is in one of these networks.
    ClientNetworks(Vec<IpNet>),
    /// The client authenticated as one of these users.
    AuthUsers(Vec<String>),
    /// The envelope sender matches one of these globs.
    Senders(Vec<String>),
    /// The `From:` domain is one of these or a subdomain.
    FromDomains(InternalDomains),
    /// Exposure within this inclusive range.
    Exposure(usize, usize),
    /// Envelope recipients within this inclusive range.
    Recipients(usize, usize),
    /// A field with this name (lowercase) whose unfolded value matches the glob.
    Header(String, String),
    /// A signal is on (`true`) or off (`false`).
    Signal(&'static str, bool),
}

impl Condition {
    /// Whether the condition holds for `facts`.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        match self {
            Condition::ClientNetworks(nets) => nets.iter().any(|n| n.contains(&facts.client.to_canonical())),
            Condition::AuthUsers(users) => facts.auth_user.is_some_and(|u| users.iter().any(|x| x == u)),
            Condition::Senders(globs) => globs.iter().any(|g| sender_matches(g, facts.sender)),
            Condition::FromDomains(domains) => facts.from_domain.is_some_and(|d| domains.contains(d)),
            Condition::Exposure(lo, hi) => (*lo..=*hi).contains(&facts.exposure),
            Condition::Recipients(lo, hi) => (*lo..=*hi).contains(&facts.recipients),
            Condition::Header(name, g) => facts.fields.values(name).any(|v| g == "*" || glob(g, &v, true)),
            Condition::Signal(name, want) => facts.signals.flags().iter().any(|(n, on)| n == name && on == want),
        }
    }
}

/// The settings a rule applies; unset ones come from `[policy]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// What to do with a leak.
    pub action: Option<Action>,
    /// The exposure limit.
    pub max_visible_external: Option<usize>,
    /// Keep internal addresses visible on copies.
    pub keep_internal_visible: Option<bool>,
    /// Decide and log only.
    pub monitor: Option<bool>,
}

/// One rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Its unique name.
    pub name: String,
    /// Conditions, all of which must hold.
    pub when: Vec<Condition>,
    /// What it applies.
    pub then: Settings,
}

impl Rule {
    /// The rule of a `[[policy.rules]]` entry (already validated).
    pub fn from_config(c: &RuleConfig) -> Rule {
        let mut when = Vec::new();
        if let Some(nets) = &c.client_networks {
            when.push(Condition::ClientNetworks(nets.clone()));
        }
        if let Some(users) = &c.auth_users {
            when.push(Condition::AuthUsers(users.clone()));
        }
        if let Some(senders) = &c.senders {
            when.push(Condition::Senders(senders.clone()));
        }
        if let Some(domains) = &c.from_domains {
            when.push(Condition::FromDomains(InternalDomains::new(domains)));
        }
        if c.min_exposure.is_some() || c.max_exposure.is_some() {
            when.push(Condition::Exposure(c.min_exposure.unwrap_or(0), c.max_exposure.unwrap_or(usize::MAX)));
        }
        if c.min_recipients.is_some() || c.max_recipients.is_some() {
            when.push(Condition::Recipients(c.min_recipients.unwrap_or(0), c.max_recipients.unwrap_or(usize::MAX)));
        }
        for (name, g) in c.headers.iter().flatten() {
            when.push(Condition::Header(name.to_ascii_lowercase(), g.clone()));
        }
        for (name, want) in c.signals() {
            if let Some(want) = want {
                when.push(Condition::Signal(name, want));
            }
        }
        let then = Settings {
            action: c.action,
            max_visible_external: c.max_visible_external,
            keep_internal_visible: c.keep_internal_visible,
            monitor: c.monitor,
        };
        Rule { name: c.name.clone(), when, then }
    }

    /// Whether every condition holds.
    pub fn matches(&self, facts: &Facts<'_>) -> bool {
        self.when.iter().all(|c| c.matches(facts))
    }
}

/// The first rule whose conditions all hold.
pub fn first_match<'r>(rules: &'r [Rule], facts: &Facts<'_>) -> Option<&'r Rule> {
    rules.iter().find(|r| r.matches(facts))
}

/// Whether the envelope sender matches a sender glob: `"<>"` is the null sender (which no
/// other glob matches); otherwise `*` is any run of characters, the domain compares
/// case-insensitively (IDN in ASCII form), the local part as written.
pub fn sender_matches(pattern: &str, sender: &str) -> bool {
    if pattern == "<>" || sender.is_empty() {
        return pattern == "<>" && sender.is_empty();
    }
    let (local, domain) = address::split(sender);
    let domain = normalize_domain(domain).unwrap_or_else(|| domain.to_lowercase());
    let (p_local, p_domain) = pattern.rsplit_once('@').unwrap_or((pattern, "*"));
    let p_domain = if p_domain.contains('*') {
        p_domain.to_lowercase()
    } else {
        normalize_domain(p_domain).unwrap_or_else(|| p_domain.to_lowercase())
    };
    if !pattern.contains('@') {
        return glob(pattern, &format!("{local}@{domain}"), false);
    }
    glob(p_local, local, false) && glob(&p_domain, &domain, false)
}

/// Whether `text` matches `pattern`, where `*` is any run of characters (case-insensitive
/// when `fold`).
pub fn glob(pattern: &str, text: &str, fold: bool) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = if fold {
        (pattern.to_lowercase().chars().collect(), text.to_lowercase().chars().collect())
    } else {
        (pattern.chars().collect(), text.chars().collect())
    };
    // Iterative matching with backtracking to the last star: linear in practice.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}
