//! The delivery plan (SPEC §3): which envelope recipients go together in one upstream
//! transaction, and how each transaction's copy is rewritten. Pure, and serializable so the
//! spool can keep it next to the message.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::config::Action;
use crate::hold::ReleaseAs;
use crate::message::address;
use crate::message::decide::{Decision, Policy, decide};
use crate::message::parse::{FieldKind, Headers, Mailbox};

/// Addresses longer than this are left out of a rewritten `Cc:` (no header line may exceed
/// 998 octets, and an address cannot be folded).
const MAX_ADDRESS_IN_HEADER: usize = 900;

/// How one transaction's copy differs from the original.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Rewrite {
    /// The original with `Bcc:` and `Resent-Bcc:` removed.
    Original,
    /// `To:` the transaction's one recipient, with this display name; `X-Bccguard: exploded`.
    Explode {
        /// The display name the original header gave the recipient.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// `To: undisclosed-recipients:;`; `X-Bccguard: undisclosed`.
    Undisclose,
}

/// One upstream transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// Indexes into the envelope recipients (held inline when there is one, as in every
    /// exploded copy: 100,000 copies cost no allocation each).
    pub recipients: SmallVec<[usize; 1]>,
    /// How its copy is made.
    pub rewrite: Rewrite,
}

/// Every transaction for one message, and what the rewritten copies keep visible.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The transactions, each delivered on its own.
    pub transactions: Vec<Transaction>,
    /// Internal addresses kept visible in `Cc:` of rewritten copies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cc: Vec<Mailbox>,
    /// Internal addresses kept visible in `Resent-Cc:` of rewritten copies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resent_cc: Vec<Mailbox>,
}

impl Plan {
    /// The plan for a decision; `None` when the message is to be rejected.
    pub fn build(decision: &Decision, headers: &Headers, recipients: &[String], policy: &Policy) -> Option<Plan> {
        let everyone = (0..recipients.len()).collect();
        match decision.action {
            Action::Reject => None,
            // Nothing is delivered until a person releases it; the plan is made then.
            Action::Hold => Some(Plan::default()),
            Action::Explode => Some(explode(headers, recipients, policy)),
            Action::Pass => Some(Plan::single(everyone, Rewrite::Original)),
            Action::Undisclose => {
                let mut plan = Plan::single(everyone, Rewrite::Undisclose);
                plan.keep_internal(headers, policy);
                Some(plan)
            }
        }
    }

    /// One transaction for all recipients.
    fn single(recipients: Vec<usize>, rewrite: Rewrite) -> Plan {
        Plan { transactions: vec![Transaction { recipients: recipients.into(), rewrite }], ..Plan::default() }
    }

    fn keep_internal(&mut self, headers: &Headers, policy: &Policy) {
        if policy.keep_internal_visible {
            self.cc = internal_visible(headers, policy, [FieldKind::To, FieldKind::Cc]);
            self.resent_cc = internal_visible(headers, policy, [FieldKind::ResentTo, FieldKind::ResentCc]);
        }
    }
}

/// The decision and plan for releasing a held message as `how`: decided again under
/// `policy` (the one in force at release) with its action set to `how` and monitor mode off
/// (a person chose), as if the message had just arrived with that action. A message that no
/// longer leaks is passed, as it would be on arrival.
pub fn for_release(headers: &Headers, recipients: &[String], policy: &Policy, how: ReleaseAs) -> (Decision, Plan) {
    let action = match how {
        ReleaseAs::Explode => Action::Explode,
        ReleaseAs::Undisclose => Action::Undisclose,
        ReleaseAs::Pass => Action::Pass,
    };
    let policy = Policy { action, monitor: false, ..policy.clone() };
    let decision = decide(headers, &policy);
    let plan = Plan::build(&decision, headers, recipients, &policy).unwrap_or_default();
    (decision, plan)
}

/// Internal recipients together with the original; each external one alone, addressed to
/// them with the display name the headers gave them.
fn explode(headers: &Headers, recipients: &[String], policy: &Policy) -> Plan {
    let names = display_names(headers);
    let (internal, external): (Vec<usize>, Vec<usize>) =
        (0..recipients.len()).partition(|&i| policy.is_internal(&recipients[i]));
    let mut transactions = Vec::with_capacity(external.len() + 1);
    if !internal.is_empty() {
        transactions.push(Transaction { recipients: internal.into(), rewrite: Rewrite::Original });
    }
    for i in external {
        let name = names.get(&address::key(&recipients[i])).cloned();
        transactions.push(Transaction { recipients: smallvec::smallvec![i], rewrite: Rewrite::Explode { name } });
    }
    let mut plan = Plan { transactions, ..Plan::default() };
    plan.keep_internal(headers, policy);
    plan
}

/// The first display name each visible address was given (names that show another address
/// are dropped).
fn display_names(headers: &Headers) -> HashMap<(String, String), String> {
    let mut names = HashMap::new();
    for m in headers.visible() {
        if let Some(name) = m.without_foreign_name().name {
            names.entry(address::key(&m.address)).or_insert(name);
        }
    }
    names
}

/// Internal addresses shown in fields of `kinds`, first occurrence of each, in header order.
fn internal_visible<const N: usize>(headers: &Headers, policy: &Policy, kinds: [FieldKind; N]) -> Vec<Mailbox> {
    let mut seen = HashSet::new();
    headers
        .fields
        .iter()
        .filter(|f| kinds.contains(&f.kind))
        .flat_map(|f| &f.mailboxes)
        .filter(|m| policy.is_internal(&m.address) && m.address.len() <= MAX_ADDRESS_IN_HEADER)
        .filter(|m| seen.insert(address::key(&m.address)))
        .map(Mailbox::without_foreign_name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyConfig;

    #[test]
    fn a_release_is_planned_as_if_the_message_had_just_arrived_with_that_action() {
        let config = PolicyConfig {
            internal_domains: vec!["example.com".into()],
            action: Action::Hold,
            monitor: true,
            ..PolicyConfig::default()
        };
        let policy = Policy::from_config(&config);
        let rcpts: Vec<String> = ["a@x.test", "b@y.test", "ops@example.com"].map(String::from).to_vec();
        let leak = Headers::parse(b"To: a@x.test, B <b@y.test>\r\nCc: ops@example.com\r\n\r\n").unwrap();
        let (d, plan) = for_release(&leak, &rcpts, &policy, ReleaseAs::Explode);
        assert_eq!((d.leak, d.action, d.monitor), (true, Action::Explode, false), "a person chose: no monitor");
        let rewrites: Vec<&Rewrite> = plan.transactions.iter().map(|t| &t.rewrite).collect();
        let b = Rewrite::Explode { name: Some("B".into()) };
        assert_eq!(rewrites, [&Rewrite::Original, &Rewrite::Explode { name: None }, &b]);
        let (d, plan) = for_release(&leak, &rcpts, &policy, ReleaseAs::Undisclose);
        assert_eq!((d.action, plan.transactions.len(), plan.cc.len()), (Action::Undisclose, 1, 1));
        let (d, plan) = for_release(&leak, &rcpts, &policy, ReleaseAs::Pass);
        assert_eq!((d.action, plan), (Action::Pass, Plan::single(vec![0, 1, 2], Rewrite::Original)));
        let fine = Headers::parse(b"To: a@x.test\r\n\r\n").unwrap();
        let (d, plan) = for_release(&fine, &rcpts, &policy, ReleaseAs::Explode);
        assert_eq!((d.leak, d.action, plan.transactions.len()), (false, Action::Pass, 1), "no longer a leak: pass");
    }
}
