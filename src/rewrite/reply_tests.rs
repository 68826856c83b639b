//! Reply fields (SPEC §11): counted when they show two or more external addresses, and then
//! rewritten in every rewritten copy; a single external reply address is left alone.

use super::*;
use crate::config::{Action, PolicyConfig};
use crate::message::decide::{Policy, decide};

fn policy(action: Action) -> Policy {
    Policy::from_config(&PolicyConfig {
        internal_domains: vec!["example.com".into()],
        action,
        ..PolicyConfig::default()
    })
}

fn copies(message: &str, recipients: &[&str], policy: &Policy) -> (usize, Vec<String>) {
    let recipients: crate::addresses::Addresses = recipients.iter().map(|r| r.to_string()).collect::<Vec<_>>().into();
    let headers = Headers::parse(message.as_bytes()).unwrap();
    let decision = decide(&headers, policy);
    let plan = Plan::build(&decision, &headers, &recipients, policy).unwrap();
    let layout = Headers::parse_layout(message.as_bytes()).unwrap();
    let texts = plan
        .transactions
        .iter()
        .map(|t| String::from_utf8(header_block(message.as_bytes(), &layout, &plan, t, &recipients)).unwrap())
        .collect();
    (decision.exposure, texts)
}

#[test]
fn three_external_addresses_in_mail_followup_to_leak_and_each_copy_keeps_only_its_own() {
    let message = "From: shop@example.com\r\nTo: undisclosed-recipients:;\r\n\
        Mail-Followup-To: a@x.test, \"Bee\" <b@y.test>, c@z.test, list@example.com\r\nSubject: s\r\n\r\n";
    let (exposure, copies) = copies(message, &["a@x.test", "b@y.test", "ops@example.com"], &policy(Action::Explode));
    assert_eq!(exposure, 3);
    assert_eq!(copies[0], message, "the internal recipients get the original");
    assert_eq!(
        copies[1],
        "From: shop@example.com\r\nTo: a@x.test\r\nMail-Followup-To: list@example.com, a@x.test\r\n\
         Subject: s\r\nX-Bccguard: exploded\r\n\r\n"
    );
    assert!(copies[2].contains("\r\nMail-Followup-To: list@example.com, Bee <b@y.test>\r\n"), "{}", copies[2]);
}

#[test]
fn a_single_external_reply_to_neither_counts_nor_changes() {
    let message = "From: shop@example.com\r\nReply-To: Help <help@desk.test>\r\nTo: a@x.test, b@y.test\r\n\r\n";
    let (exposure, copies) = copies(message, &["a@x.test", "b@y.test"], &policy(Action::Explode));
    assert_eq!(exposure, 2);
    assert!(copies.iter().all(|c| c.contains("\r\nReply-To: Help <help@desk.test>\r\n")), "{copies:?}");
    let alone = "From: shop@example.com\r\nReply-To: help@desk.test, ops@example.com\r\nTo: a@x.test\r\n\r\n";
    assert_eq!(copies_exposure(alone), 1, "one external reply address: no leak");
}

fn copies_exposure(message: &str) -> usize {
    decide(&Headers::parse(message.as_bytes()).unwrap(), &policy(Action::Explode)).exposure
}

#[test]
fn reply_to_and_resent_reply_to_count_and_undisclose_keeps_only_internal_addresses() {
    let message = "From: shop@example.com\r\nTo: a@x.test\r\nReply-To: a@x.test, b@y.test\r\n\
        Resent-Reply-To: c@z.test, d@w.test, boss@example.com\r\n\r\n";
    assert_eq!(copies_exposure(message), 4, "a@x.test is counted once");
    let (_, copies) = copies(message, &["a@x.test"], &policy(Action::Undisclose));
    assert_eq!(
        copies[0],
        "From: shop@example.com\r\nTo: undisclosed-recipients:;\r\nResent-Reply-To: boss@example.com\r\n\
         X-Bccguard: undisclosed\r\n\r\n",
        "Reply-To (nothing internal left) is removed"
    );
}
