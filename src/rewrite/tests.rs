//! Copies of messages, byte for byte.

use super::*;
use crate::config::{Action, PolicyConfig};
use crate::message::decide::{Policy, decide};

fn policy(action: Action, keep_internal_visible: bool) -> Policy {
    Policy::from_config(&PolicyConfig {
        internal_domains: vec!["example.com".into()],
        max_visible_external: 1,
        action,
        keep_internal_visible,
        monitor: false,
        ..PolicyConfig::default()
    })
}

/// Every copy of `message` for `recipients` under `policy`, as (recipients, bytes).
fn copies(message: &str, recipients: &[&str], policy: &Policy) -> Vec<(Vec<String>, String)> {
    let message = message.as_bytes();
    let recipients: Addresses = recipients.iter().collect();
    let headers = Headers::parse(message).unwrap();
    let decision = decide(&headers, policy);
    let plan = Plan::build(&decision, &headers, &recipients, policy).unwrap();
    plan.transactions
        .iter()
        .map(|t| {
            let mut copy = header_block(message, &headers, &plan, t, &recipients);
            // Delivery rewrites from the fields alone, without the addresses parsed again.
            let layout = Headers::parse_layout(message).unwrap();
            assert_eq!(header_block(message, &layout, &plan, t, &recipients), copy, "layout-only rewrite");
            copy.extend_from_slice(&message[headers.body_start..]);
            let rcpts = t.recipients.iter().map(|&i| recipients[i].to_string()).collect();
            (rcpts, String::from_utf8(copy).unwrap())
        })
        .collect()
}

const BULK: &str = "Received: from app\r\nFrom: shop@example.com\r\nTo: \"Alice A.\" <alice@a.test>, bob@b.test,\r\n \
    boss@example.com\r\nSubject: Offer\r\nCc: =?UTF-8?B?SsO8cmdlbg==?= <j@c.test>, team@example.com\r\n\
    Bcc: audit@example.com\r\nMIME-Version: 1.0\r\n\r\nBody line\r\n.dots stay\r\n";

#[test]
fn explode_gives_each_external_recipient_a_copy_addressed_to_them_alone() {
    let rcpts = [
        "alice@a.test",
        "bob@b.test",
        "j@c.test",
        "boss@example.com",
        "team@example.com",
        "audit@example.com",
        "x@d.test",
    ];
    let out = copies(BULK, &rcpts, &policy(Action::Explode, true));
    assert_eq!(out.len(), 5, "one for the internal recipients, one per external");
    assert_eq!(out[0].0, ["boss@example.com", "team@example.com", "audit@example.com"]);
    assert_eq!(out[0].1, BULK.replace("Bcc: audit@example.com\r\n", ""), "internal: the original minus Bcc");
    let expected = |to: &str| {
        format!(
            "Received: from app\r\nFrom: shop@example.com\r\nTo: {to}\r\nCc: boss@example.com, team@example.com\r\n\
             Subject: Offer\r\nMIME-Version: 1.0\r\nX-Bccguard: exploded\r\n\r\nBody line\r\n.dots stay\r\n"
        )
    };
    assert_eq!(out[1], (vec!["alice@a.test".to_string()], expected("\"Alice A.\" <alice@a.test>")));
    assert_eq!(out[2].1, expected("bob@b.test"));
    assert_eq!(out[3].1, expected("=?UTF-8?B?SsO8cmdlbg==?= <j@c.test>"));
    assert_eq!(out[4].1, expected("x@d.test"), "an envelope-only recipient gets To: itself");
}

#[test]
fn explode_without_keeping_internal_addresses_drops_cc() {
    let out = copies(BULK, &["bob@b.test"], &policy(Action::Explode, false));
    assert_eq!(
        out[0].1,
        "Received: from app\r\nFrom: shop@example.com\r\nTo: bob@b.test\r\nSubject: Offer\r\n\
         MIME-Version: 1.0\r\nX-Bccguard: exploded\r\n\r\nBody line\r\n.dots stay\r\n"
    );
}

#[test]
fn undisclose_makes_one_copy_for_everyone() {
    let out = copies(BULK, &["bob@b.test", "boss@example.com"], &policy(Action::Undisclose, true));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, ["bob@b.test", "boss@example.com"]);
    assert_eq!(
        out[0].1,
        "Received: from app\r\nFrom: shop@example.com\r\nTo: undisclosed-recipients:;\r\n\
         Cc: boss@example.com, team@example.com\r\nSubject: Offer\r\nMIME-Version: 1.0\r\n\
         X-Bccguard: undisclosed\r\n\r\nBody line\r\n.dots stay\r\n"
    );
}

#[test]
fn pass_removes_only_bcc_fields() {
    let message = "To: a@x.test\r\nBcc: hidden@example.com\r\nResent-Bcc: r@example.com\r\nSubject: s\r\n\r\nbody\r\n";
    let out = copies(message, &["a@x.test", "hidden@example.com"], &policy(Action::Explode, true));
    assert_eq!(out.len(), 1, "no leak: one transaction");
    assert_eq!(out[0].1, "To: a@x.test\r\nSubject: s\r\n\r\nbody\r\n");
}

#[test]
fn resent_fields_get_the_same_treatment_when_present() {
    let message = "Resent-From: fwd@example.com\r\nResent-To: a@x.test, b@y.test, ops@example.com\r\n\
        Resent-Bcc: c@z.test\r\nTo: list@example.com\r\nSubject: s\r\n\r\nbody\r\n";
    let out = copies(message, &["a@x.test"], &policy(Action::Explode, true));
    assert_eq!(
        out[0].1,
        "Resent-From: fwd@example.com\r\nResent-To: a@x.test\r\nResent-Cc: ops@example.com\r\n\
         To: a@x.test\r\nCc: list@example.com\r\nSubject: s\r\nX-Bccguard: exploded\r\n\r\nbody\r\n"
    );
}

#[test]
fn repeated_and_folded_to_fields_become_one() {
    let message = "To: a@x.test,\r\n b@y.test\r\nSubject: s\r\nTo: c@z.test\r\n\r\nbody\r\n";
    let out = copies(message, &["c@z.test"], &policy(Action::Explode, true));
    assert_eq!(out[0].1, "To: c@z.test\r\nSubject: s\r\nX-Bccguard: exploded\r\n\r\nbody\r\n");
}

#[test]
fn a_message_without_address_fields_or_body_still_gets_to() {
    let message = "Subject: s\r\nTo: bob\r\n";
    let out = copies(message, &["a@x.test"], &policy(Action::Explode, true));
    assert_eq!(out[0].1, "Subject: s\r\nTo: a@x.test\r\nX-Bccguard: exploded\r\n");
}

#[test]
fn a_name_that_shows_another_address_is_dropped() {
    let message = "To: \"carol@c.test\" <alice@a.test>, \"bob@b.test\" <bob@b.test>\r\n\r\nbody\r\n";
    let out = copies(message, &["alice@a.test", "bob@b.test"], &policy(Action::Explode, true));
    assert!(out[0].1.starts_with("To: alice@a.test\r\n"), "{}", out[0].1);
    assert!(out[1].1.starts_with("To: \"bob@b.test\" <bob@b.test>\r\n"), "{}", out[1].1);
}

#[test]
fn an_injected_name_cannot_add_a_field() {
    let message = "To: =?utf-8?q?Evil=0D=0ABcc=3A_x?= <e@x.test>, f@y.test\r\n\r\nbody\r\n";
    let out = copies(message, &["e@x.test"], &policy(Action::Explode, true));
    assert_eq!(out[0].1, "To: \"Evil Bcc: x\" <e@x.test>\r\nX-Bccguard: exploded\r\n\r\nbody\r\n");
}

#[test]
fn an_unchanged_copy_is_the_original_bytes_not_a_copy_of_them() {
    let message = bytes::Bytes::from_static(b"To: a@x.test\r\nSubject: s\r\n\r\nbody\r\n");
    let headers = Headers::parse(&message).unwrap();
    let recipients: Addresses = ["a@x.test"].iter().collect();
    let policy = policy(Action::Explode, true);
    let plan = Plan::build(&decide(&headers, &policy), &headers, &recipients, &policy).unwrap();
    let [head, body] = copy(&message, &headers, &plan, &plan.transactions[0], &recipients);
    assert_eq!(head.as_ptr(), message.as_ptr(), "the head is a slice of the original");
    assert_eq!([head, body].concat(), message);

    let with_bcc = bytes::Bytes::from_static(b"To: a@x.test\r\nBcc: b@example.com\r\n\r\nbody\r\n");
    let headers = Headers::parse(&with_bcc).unwrap();
    let plan = Plan::build(&decide(&headers, &policy), &headers, &recipients, &policy).unwrap();
    let [head, _] = copy(&with_bcc, &headers, &plan, &plan.transactions[0], &recipients);
    assert_eq!(head, &b"To: a@x.test\r\n\r\n"[..], "the Bcc is removed");
}

#[test]
fn a_stray_line_with_an_address_leaks_and_is_dropped_from_copies() {
    let message = "From: shop@example.com\r\nnot a field, shows c@z.test\r\nTo: a@x.test\r\nSubject: s\r\n\r\nbody\r\n";
    let out = copies(message, &["a@x.test"], &policy(Action::Explode, true));
    assert_eq!(
        out[0].1,
        "From: shop@example.com\r\nTo: a@x.test\r\nSubject: s\r\nX-Bccguard: exploded\r\n\r\nbody\r\n"
    );
}

/// Found by fuzzing: a local part that looks like an encoded word, written bare, is decoded by
/// readers as a display name followed by another address.
#[test]
fn a_local_part_like_an_encoded_word_is_quoted_in_angle_brackets() {
    let recipient = crate::message::address::canonical("=?utf-8?q?abc?=@x.test").unwrap();
    let message = "To: one@a.test, two@b.test\r\n\r\nbody\r\n";
    let out = copies(message, &[recipient.as_str()], &policy(Action::Explode, true));
    assert!(out[0].1.starts_with("To: <\"=?utf-8?q?abc?=\"@x.test>\r\n"), "{}", out[0].1);
    let again = Headers::parse(out[0].1.as_bytes()).unwrap();
    assert_eq!(again.fields[0].mailboxes[0].address, recipient);
}
