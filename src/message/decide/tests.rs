//! The decision, table-driven.

use super::*;
use crate::config::PolicyConfig;

fn policy(max: usize, action: Action, monitor: bool) -> Policy {
    Policy::from_config(&PolicyConfig {
        internal_domains: vec!["example.com".into(), "bücher.de".into()],
        max_visible_external: max,
        action,
        keep_internal_visible: true,
        monitor,
        ..PolicyConfig::default()
    })
}

fn decide_headers(headers: &str, p: &Policy) -> Decision {
    let message = format!("{headers}Subject: s\r\n\r\nbody\r\n");
    decide(&Headers::parse(message.as_bytes()).unwrap(), p)
}

#[test]
fn exposure_counts_distinct_external_visible_addresses() {
    let p = policy(1, Action::Explode, false);
    for (headers, exposure) in [
        ("To: a@x.test\r\n", 1),
        ("To: a@x.test, b@y.test\r\n", 2),
        ("To: a@x.test\r\nCc: A@X.TEST\r\n", 2),
        ("To: a@x.test\r\nCc: a@X.TEST\r\n", 1),
        ("To: boss@example.com, dev@mail.example.com\r\n", 0),
        ("To: a@notexample.com, b@example.com.evil.test\r\n", 2),
        ("To: a@bücher.de, b@shop.xn--bcher-kva.de\r\n", 0),
        ("Bcc: a@x.test, b@y.test\r\n", 2),
        ("Resent-To: a@x.test\r\nResent-Cc: b@y.test\r\n", 2),
        ("To: Customers: a@x.test, b@y.test;\r\n", 2),
        ("To: \"c@z.test\" <a@x.test>\r\n", 2),
        ("To: list@example.com\r\n", 0),
        ("", 0),
    ] {
        assert_eq!(decide_headers(headers, &p).exposure, exposure, "{headers:?}");
    }
}

#[test]
fn the_action_follows_leak_monitor_and_mark() {
    for (headers, max, policy_action, monitor, leak, action, reason) in [
        ("To: a@x.test\r\n", 1, Action::Explode, false, false, Action::Pass, Reason::WithinLimit),
        ("To: a@x.test, b@y.test\r\n", 1, Action::Explode, false, true, Action::Explode, Reason::TooManyVisible),
        ("To: a@x.test, b@y.test\r\n", 2, Action::Explode, false, false, Action::Pass, Reason::WithinLimit),
        ("To: a@x.test, b@y.test\r\n", 1, Action::Undisclose, false, true, Action::Undisclose, Reason::TooManyVisible),
        ("To: a@x.test, b@y.test\r\n", 1, Action::Reject, false, true, Action::Reject, Reason::TooManyVisible),
        ("To: a@x.test, b@y.test\r\n", 1, Action::Pass, false, true, Action::Pass, Reason::TooManyVisible),
        ("To: a@x.test, b@y.test\r\n", 1, Action::Reject, true, true, Action::Pass, Reason::TooManyVisible),
        ("To: a@x.test, b@y.test\r\n", 0, Action::Explode, false, true, Action::Explode, Reason::TooManyVisible),
        ("To: a@x.test\r\n", 0, Action::Explode, false, true, Action::Explode, Reason::TooManyVisible),
        (
            "To: a@x.test, b@y.test\r\nX-Bccguard: exploded\r\n",
            1,
            Action::Explode,
            false,
            false,
            Action::Pass,
            Reason::AlreadyProcessed,
        ),
        ("To: bob\r\n", 5, Action::Reject, false, true, Action::Reject, Reason::Unparseable { fields: vec!["To"] }),
    ] {
        let d = decide_headers(headers, &policy(max, policy_action, monitor));
        assert_eq!((d.leak, d.action, &d.reason), (leak, action, &reason), "{headers:?} max={max}");
        assert_eq!(d.monitor, monitor && leak);
        assert_eq!(d.policy_action, policy_action);
    }
}

#[test]
fn an_unknown_mark_is_not_trusted() {
    let d = decide_headers("To: a@x.test, b@y.test\r\nX-Bccguard: please skip\r\n", &policy(1, Action::Explode, false));
    assert!(d.leak);
}

#[test]
fn the_reason_reads_well() {
    let p = policy(1, Action::Explode, false);
    assert_eq!(
        decide_headers("To: a@x.test, b@y.test\r\n", &p).to_string(),
        "2 external addresses visible, more than 1 allowed"
    );
    assert_eq!(decide_headers("To: a@x.test\r\n", &p).to_string(), "1 external address visible, at most 1 allowed");
    assert_eq!(
        decide_headers("To: bob\r\nCc: ,@\r\n", &p).to_string(),
        "To, Cc cannot be parsed, so what it shows is unknown"
    );
}
