//! Rule and breaker settings: parsing, every error with its rule path, shadowed rules.

use super::*;
use crate::config::load::errors_in as errors;
use crate::config::load_str;

#[test]
fn rules_parse_with_every_condition_and_setting() {
    let config = load_str(
        Some(
            "[policy]\ninternal_domains = [\"example.com\"]\n\
             [[policy.rules]]\nname = \"partners\"\nclient_networks = [\"10.0.0.0/8\"]\n\
             auth_users = [\"crm\"]\nsenders = [\"*@example.com\", \"<>\"]\nfrom_domains = [\"bücher.de\"]\n\
             min_exposure = 2\nmax_exposure = 10\nmin_recipients = 1\nmax_recipients = 50\n\
             headers = { \"X-Mailer\" = \"Campaign*\", \"List-Id\" = \"*\" }\n\
             reply = true\nbulk = false\nsorted_recipients = false\nheader_matches_envelope = true\ncalendar = false\n\
             action = \"pass\"\nmax_visible_external = 10\nkeep_internal_visible = false\nmonitor = true\n\
             [policy.breaker]\nleaks = 3\nwindow = \"10m\"\nduration = \"1h\"\nkey = \"auth_user\"\naction = \"tempfail\"\n",
        ),
        &[],
    )
    .unwrap();
    let rule = &config.policy.rules[0];
    assert_eq!(rule.name, "partners");
    assert_eq!(rule.action, Some(Action::Pass));
    assert_eq!(rule.headers.as_ref().unwrap()["X-Mailer"], "Campaign*");
    assert!(!rule.is_catch_all());
    let b = &config.policy.breaker;
    assert_eq!(
        (b.leaks, b.key, b.action),
        (Some(3), crate::config::BreakerKey::AuthUser, crate::config::BreakerAction::Tempfail)
    );
    assert_eq!(b.window.0.as_secs(), 600);
}

#[test]
fn errors_name_the_rule_path() {
    let errs = errors(
        "[[policy.rules]]\nname = \"a\"\nsenders = [\"*@x.test\", \"bad glob\"]\n\
         [[policy.rules]]\nname = \"a\"\nfrom_domains = [\"no domain\"]\nmin_exposure = 5\nmax_exposure = 2\n\
         [[policy.rules]]\nname = \"default\"\nauth_users = []\nheaders = { \"Bad:Name\" = \"*\" }\n\
         [[policy.rules]]\nsurprise = 1\nsenders = [\"nodomain\"]\nclient_networks = [\"nonsense\"]\n\
         [policy.breaker]\nleaks = 0\nwindow = \"0s\"\nkey = \"recipient\"\nredis_url = \"http://x\"\n",
    );
    let joined = errs.join("\n");
    for needle in [
        "policy.rules[0].senders[1]: \"bad glob\" is not a sender glob",
        "policy.rules[1].name: \"a\" is the name of an earlier rule",
        "policy.rules[1].from_domains[0]: \"no domain\" is not a domain name",
        "policy.rules[1].min_exposure: 5 is greater than max_exposure (2)",
        "policy.rules[2].name: \"default\" is reserved",
        "policy.rules[2].auth_users: an empty list never matches",
        "policy.rules[2].headers.Bad:Name:",
        "policy.rules[3].surprise: unknown field `surprise`",
        "policy.rules[3].client_networks[0]:",
        "policy.rules[3].senders[0]: \"nodomain\" has no @",
        "policy.rules[3].name: every rule needs a name",
        "policy.breaker.leaks: must be at least 1",
        "policy.breaker.window: must be greater than 0",
        "policy.breaker.key: unknown variant `recipient`",
        "policy.breaker.redis_url: \"http://x\" must start with redis://",
    ] {
        assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
    }
}

fn rules(text: &str) -> Vec<RuleConfig> {
    load_str(Some(text), &[]).unwrap().policy.rules
}

#[test]
fn a_rule_behind_one_that_always_matches_first_is_shadowed() {
    let warnings = shadowed(&rules(
        "[[policy.rules]]\nname = \"bulk\"\nbulk = true\n\
         [[policy.rules]]\nname = \"bulk-crm\"\nbulk = true\nauth_users = [\"crm\"]\n\
         [[policy.rules]]\nname = \"lan\"\nclient_networks = [\"10.0.0.0/8\"]\nmax_exposure = 100\n\
         [[policy.rules]]\nname = \"lan-small\"\nclient_networks = [\"10.1.0.0/16\"]\nmax_exposure = 10\n\
         [[policy.rules]]\nname = \"lan-big\"\nclient_networks = [\"10.1.0.0/16\"]\nmax_exposure = 1000\n\
         [[policy.rules]]\nname = \"everything\"\n\
         [[policy.rules]]\nname = \"after\"\nreply = true\n",
    ));
    let text: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 3, "{text:#?}");
    assert!(
        text[0].starts_with("policy.rules[1]: rule \"bulk-crm\" never matches: the earlier rule \"bulk\""),
        "{text:?}"
    );
    assert!(
        text[1].starts_with("policy.rules[3]: rule \"lan-small\" never matches: the earlier rule \"lan\""),
        "{text:?}"
    );
    assert!(
        text[2].contains(
            "rule \"after\" never matches: the earlier rule \"everything\" (policy.rules[5]) has no conditions"
        ),
        "{text:?}"
    );
}

#[test]
fn different_conditions_do_not_shadow() {
    let warnings = shadowed(&rules(
        "[[policy.rules]]\nname = \"a\"\nsenders = [\"news@x.test\"]\n\
         [[policy.rules]]\nname = \"b\"\nsenders = [\"News@x.test\"]\n\
         [[policy.rules]]\nname = \"c\"\nreply = true\n\
         [[policy.rules]]\nname = \"d\"\nreply = false\n\
         [[policy.rules]]\nname = \"e\"\nfrom_domains = [\"shop.example.com\"]\n\
         [[policy.rules]]\nname = \"f\"\nfrom_domains = [\"example.com\"]\n\
         [[policy.rules]]\nname = \"g\"\nsenders = [\"*\"]\n\
         [[policy.rules]]\nname = \"h\"\nsenders = [\"<>\"]\n",
    ));
    assert!(warnings.is_empty(), "{warnings:?}");
}
