//! The leak decision over the fixture corpus in `tests/fixtures/`, table-driven.

use bccguard::addresses::Addresses;
use bccguard::config::{Action, PolicyConfig};
use bccguard::message::decide::{Policy, Reason, decide};
use bccguard::message::parse::Headers;
use bccguard::plan::{Plan, Rewrite};

fn policy() -> Policy {
    Policy::from_config(&PolicyConfig {
        internal_domains: vec!["example.com".into()],
        max_visible_external: 1,
        action: Action::Explode,
        keep_internal_visible: true,
        monitor: false,
        ..PolicyConfig::default()
    })
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_corpus_decides_as_expected() {
    let unparseable_to = Reason::Unparseable { fields: vec!["To"] };
    let table: [(&str, bool, usize, Reason); 11] = [
        ("bulk-50.eml", true, 50, Reason::TooManyVisible),
        ("conversation.eml", false, 1, Reason::WithinLimit),
        ("newsletter.eml", false, 0, Reason::WithinLimit),
        ("stray-bcc.eml", true, 3, Reason::TooManyVisible),
        ("group.eml", true, 3, Reason::TooManyVisible),
        ("encoded-names.eml", true, 3, Reason::TooManyVisible),
        ("resent.eml", true, 2, Reason::TooManyVisible),
        ("folded-repeated-to.eml", true, 4, Reason::TooManyVisible),
        ("malformed-to.eml", true, 0, unparseable_to),
        ("already-processed.eml", false, 2, Reason::AlreadyProcessed),
        ("multipart-attachment.eml", true, 2, Reason::TooManyVisible),
    ];
    let policy = policy();
    for (name, leak, exposure, reason) in table {
        let message = fixture(name);
        let headers = Headers::parse(&message).unwrap();
        let d = decide(&headers, &policy);
        assert_eq!((d.leak, d.exposure, &d.reason), (leak, exposure, &reason), "{name}");
        assert_eq!(d.action, if leak { Action::Explode } else { Action::Pass }, "{name}");
    }
}

#[test]
fn encoded_display_names_are_decoded_for_the_copies() {
    let message = fixture("encoded-names.eml");
    let headers = Headers::parse(&message).unwrap();
    let recipients: Addresses = ["juergen@muenchen.test", "francois@paris.test", "taro@tokyo.test"].iter().collect();
    let plan = Plan::build(&decide(&headers, &policy()), &headers, &recipients, &policy()).unwrap();
    let names: Vec<_> = plan
        .transactions
        .iter()
        .map(|t| match &t.rewrite {
            Rewrite::Explode { name } => name.clone().unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["Jürgen Müller", "François Lefèvre", "山田 太郎"]);
}

#[test]
fn the_bulk_mail_explodes_into_one_transaction_per_customer() {
    let message = fixture("bulk-50.eml");
    let headers = Headers::parse(&message).unwrap();
    let recipients: Addresses = headers.visible().map(|m| m.address.clone()).collect();
    assert_eq!(recipients.len(), 50);
    let plan = Plan::build(&decide(&headers, &policy()), &headers, &recipients, &policy()).unwrap();
    assert_eq!(plan.transactions.len(), 50);
    assert!(plan.transactions.iter().all(|t| t.recipients.len() == 1));
    assert!(plan.cc.is_empty());
}
