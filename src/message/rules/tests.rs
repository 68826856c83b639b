//! Every condition, the first-match engine (with a property test), and the decision naming
//! its rule.

use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::config::{Action, PolicyConfig, load_str};
use crate::message::signals::{HeaderFields, Signals};

fn facts<'a>(fields: &'a HeaderFields, signals: &'a Signals) -> Facts<'a> {
    Facts {
        client: "10.1.2.3".parse().unwrap(),
        auth_user: Some("crm"),
        sender: "News@Shop.Example.COM",
        fields,
        from_domain: Some("xn--bcher-kva.de"),
        exposure: 5,
        recipients: 10,
        signals,
    }
}

fn rule(toml: &str) -> Rule {
    let config = load_str(Some(&format!("[[policy.rules]]\nname = \"r\"\n{toml}")), &[]).unwrap();
    Rule::from_config(&config.policy.rules[0])
}

#[test]
fn every_condition() {
    let fields = HeaderFields::parse(b"X-Mailer: Campaign Monitor 5\r\nList-Id: <n.example.com>\r\n\r\n");
    let signals = Signals { bulk: true, external_domains: 3, ..Signals::default() };
    let f = facts(&fields, &signals);
    for (toml, expected) in [
        ("client_networks = [\"10.0.0.0/8\"]", true),
        ("client_networks = [\"192.168.0.0/16\", \"10.1.2.3/32\"]", true),
        ("client_networks = [\"127.0.0.0/8\"]", false),
        ("auth_users = [\"crm\"]", true),
        ("auth_users = [\"CRM\"]", false),
        ("senders = [\"News@shop.example.com\"]", true),
        ("senders = [\"*@*.example.com\"]", true),
        ("senders = [\"news@shop.example.com\"]", false),
        ("senders = [\"*@example.com\"]", false),
        ("senders = [\"<>\"]", false),
        ("senders = [\"*\"]", true),
        ("from_domains = [\"bücher.de\"]", true),
        ("from_domains = [\"de\"]", true),
        ("from_domains = [\"example.com\"]", false),
        ("min_exposure = 5", true),
        ("min_exposure = 6", false),
        ("max_exposure = 5", true),
        ("max_exposure = 4", false),
        ("min_recipients = 10\nmax_recipients = 10", true),
        ("min_recipients = 11", false),
        ("max_recipients = 9", false),
        ("headers = { \"x-mailer\" = \"campaign*\" }", true),
        ("headers = { \"X-Mailer\" = \"*Monitor*\" }", true),
        ("headers = { \"X-Mailer\" = \"Mailchimp*\" }", false),
        ("headers = { \"List-Id\" = \"*\" }", true),
        ("headers = { \"List-Unsubscribe\" = \"*\" }", false),
        ("bulk = true", true),
        ("bulk = false", false),
        ("reply = false", true),
        ("reply = true", false),
        ("sorted_recipients = false\nheader_matches_envelope = false\ncalendar = false", true),
        ("calendar = true", false),
        ("bulk = true\nmax_exposure = 4", false),
    ] {
        assert_eq!(rule(toml).matches(&f), expected, "{toml}");
    }
}

#[test]
fn client_networks_match_ipv4_mapped_clients() {
    let fields = HeaderFields::default();
    let signals = Signals::default();
    let mut f = facts(&fields, &signals);
    f.client = "::ffff:127.0.0.2".parse::<IpAddr>().unwrap();
    assert!(rule("client_networks = [\"127.0.0.2/32\"]").matches(&f));
}

#[test]
fn the_null_sender_matches_only_its_glob() {
    assert!(sender_matches("<>", ""));
    assert!(!sender_matches("*", ""));
    assert!(!sender_matches("*@*", ""));
    assert!(!sender_matches("<>", "a@x.test"));
    assert!(sender_matches("*@bücher.de", "a@XN--BCHER-KVA.de"));
    assert!(sender_matches("bounce-*@x.test", "bounce-123@X.test"));
    assert!(!sender_matches("bounce-*@x.test", "Bounce-123@x.test"));
}

#[test]
fn globs() {
    for (p, t, m) in [
        ("*", "", true),
        ("a*c", "abbbc", true),
        ("a*c", "abbbd", false),
        ("*a*a*a*", "banana split", true),
        ("**", "x", true),
        ("ab", "abc", false),
        ("", "", true),
    ] {
        assert_eq!(glob(p, t, false), m, "{p} {t}");
    }
}

fn policy(toml: &str) -> Policy {
    Policy::from_config(&load_str(Some(toml), &[]).unwrap().policy)
}

#[test]
fn the_decision_names_its_rule_and_takes_unset_settings_from_the_policy() {
    let p = policy(
        "[policy]\nmax_visible_external = 1\naction = \"undisclose\"\nkeep_internal_visible = false\n\
         [[policy.rules]]\nname = \"conversations\"\nreply = true\nmax_visible_external = 10\n\
         [[policy.rules]]\nname = \"watch\"\nbulk = true\nmonitor = true\n",
    );
    let headers = Headers::parse(b"To: a@x.test, b@y.test, c@z.test\r\n\r\n").unwrap();
    let fields = HeaderFields::default();
    let reply = Signals { reply: true, ..Signals::default() };
    let (d, effective) = decide(&headers, &facts(&fields, &reply), &p);
    assert_eq!((d.rule.as_str(), d.leak, d.max_visible_external), ("conversations", false, 10));
    assert_eq!((effective.action, effective.keep_internal_visible), (Action::Undisclose, false));
    let bulk = Signals { bulk: true, ..Signals::default() };
    let (d, _) = decide(&headers, &facts(&fields, &bulk), &p);
    assert_eq!((d.rule.as_str(), d.leak, d.action, d.monitor), ("watch", true, Action::Pass, true));
    let none = Signals::default();
    let (d, _) = decide(&headers, &facts(&fields, &none), &p);
    assert_eq!((d.rule.as_str(), d.leak, d.action), ("default", true, Action::Undisclose));
    assert_eq!(p.for_rule("conversations").max_visible_external, 10);
    assert_eq!(p.for_rule("gone").max_visible_external, 1);
}

/// A random condition over small fact spaces.
fn condition() -> impl Strategy<Value = Condition> {
    prop_oneof![
        (0usize..4, 0usize..4).prop_map(|(a, b)| Condition::Exposure(a.min(b), a.max(b))),
        (0usize..4, 0usize..4).prop_map(|(a, b)| Condition::Recipients(a.min(b), a.max(b))),
        any::<bool>().prop_map(|b| Condition::Signal("reply", b)),
        any::<bool>().prop_map(|b| Condition::Signal("bulk", b)),
        prop::sample::select(vec!["crm", "app"]).prop_map(|u| Condition::AuthUsers(vec![u.to_string()])),
    ]
}

proptest! {
    #[test]
    fn the_chosen_rule_is_the_first_whose_conditions_hold(
        rules in prop::collection::vec(prop::collection::vec(condition(), 0..3), 0..6),
        exposure in 0usize..4, recipients in 0usize..4, reply: bool, bulk: bool, crm: bool,
    ) {
        let rules: Vec<Rule> = rules.into_iter().enumerate()
            .map(|(i, when)| Rule { name: format!("r{i}"), when, then: Settings::default() })
            .collect();
        let fields = HeaderFields::default();
        let signals = Signals { reply, bulk, ..Signals::default() };
        let f = Facts {
            client: "127.0.0.1".parse().unwrap(),
            auth_user: crm.then_some("crm"),
            sender: "a@x.test",
            fields: &fields,
            from_domain: None,
            exposure,
            recipients,
            signals: &signals,
        };
        let holds = |c: &Condition| match c {
            Condition::Exposure(lo, hi) => *lo <= exposure && exposure <= *hi,
            Condition::Recipients(lo, hi) => *lo <= recipients && recipients <= *hi,
            Condition::Signal("reply", b) => *b == reply,
            Condition::Signal(_, b) => *b == bulk,
            Condition::AuthUsers(u) => crm && u[0] == "crm",
            _ => unreachable!(),
        };
        let expected = rules.iter().position(|r| r.when.iter().all(holds));
        let chosen = first_match(&rules, &f).map(|r| r.name.clone());
        prop_assert_eq!(chosen, expected.map(|i| format!("r{i}")));
    }
}

#[test]
fn an_empty_policy_decides_as_before() {
    let p = Policy::from_config(&PolicyConfig::default());
    let headers = Headers::parse(b"To: a@x.test, b@y.test\r\n\r\n").unwrap();
    let fields = HeaderFields::default();
    let signals = Signals::default();
    let exposure = crate::message::decide::exposure(&headers, &p);
    let (d, _) = decide(&headers, &Facts { exposure, ..facts(&fields, &signals) }, &p);
    assert_eq!(d, crate::message::decide::decide(&headers, &p));
}
