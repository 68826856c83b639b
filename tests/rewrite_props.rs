//! Property: whatever names and addresses a message shows, every copy bccguard makes is a
//! well-formed message: the same header fields plus the rewritten ones, CRLF line ends only,
//! no line over 998 octets, the body untouched.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bccguard::config::{Action, PolicyConfig};
use bccguard::message::address::canonical;
use bccguard::message::decide::{Policy, decide};
use bccguard::message::parse::Headers;
use bccguard::plan::{Plan, Rewrite};
use bccguard::rewrite::header_block;
use mail_parser::{HeaderName, MessageParser};
use proptest::prelude::*;

/// A display name: printable text, non-ASCII, quotes, commas, control characters, and text
/// that is itself an encoded word decoding to CRLF; sometimes very long.
fn name() -> impl Strategy<Value = Option<String>> {
    let piece = prop_oneof![
        "[a-zA-Z0-9 .,@:;<>()\"\\\\]{1,20}",
        "[üéß山田太郎 ]{1,10}",
        Just("\r\n".to_string()),
        Just("\0".to_string()),
        Just("\r\nBcc: evil@attacker.test\r\n".to_string()),
        Just("=?utf-8?q?x=0D=0ABcc:_y@z.test?=".to_string()),
        "[a-z]{300,1200}",
    ];
    prop::option::of(prop::collection::vec(piece, 1..4).prop_map(|v| v.concat()))
}

fn address() -> impl Strategy<Value = String> {
    ("[a-z0-9][a-z0-9._+-]{0,30}[a-z0-9]", "[a-z]{1,12}", prop_oneof!["test", "example"])
        .prop_map(|(local, host, tld)| format!("{local}@{host}.{tld}"))
}

/// The header text of a mailbox, written as a mailer would: a quoted string for short plain
/// names, else folded encoded words (so no input line exceeds 998 octets).
fn raw_mailbox(name: &Option<String>, addr: &str) -> String {
    match name {
        None => addr.to_string(),
        Some(n) if n.is_ascii() && n.len() < 200 && !n.chars().any(|c| c.is_control()) => {
            format!("\"{}\" <{addr}>", n.replace('\\', "\\\\").replace('"', "\\\""))
        }
        Some(n) => {
            let words: Vec<String> =
                n.as_bytes().chunks(45).map(|c| format!("=?UTF-8?B?{}?=", BASE64.encode(c))).collect();
            format!("{}\r\n <{addr}>", words.join("\r\n "))
        }
    }
}

fn field_count(message: &[u8]) -> (usize, usize) {
    let parsed = MessageParser::new().parse(message).expect("parses");
    let headers = &parsed.parts[0].headers;
    let address_fields =
        headers.iter().filter(|h| matches!(h.name, HeaderName::To | HeaderName::Cc | HeaderName::Bcc)).count();
    (headers.len(), address_fields)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn every_copy_is_well_formed(
        to in prop::collection::vec((name(), address()), 1..8),
        cc in prop::collection::vec((name(), "[a-z]{1,10}".prop_map(|l| format!("{l}@example.com"))), 0..4),
        bcc in prop::option::of(address()),
        keep_internal_visible in any::<bool>(),
    ) {
        let mut message = String::from("From: sender@example.com\r\nSubject: test\r\n");
        let list = |items: &[(Option<String>, String)]| {
            items.iter().map(|(n, a)| raw_mailbox(n, a)).collect::<Vec<_>>().join(",\r\n ")
        };
        message.push_str(&format!("To: {}\r\n", list(&to)));
        if !cc.is_empty() {
            message.push_str(&format!("Cc: {}\r\n", list(&cc)));
        }
        if let Some(b) = &bcc {
            message.push_str(&format!("Bcc: {b}\r\n"));
        }
        message.push_str("MIME-Version: 1.0\r\n\r\nbody\r\n.line\r\n");
        let message = message.into_bytes();

        let policy = Policy::from_config(&PolicyConfig {
            internal_domains: vec!["example.com".into()],
            max_visible_external: 0,
            action: Action::Explode,
            keep_internal_visible,
            monitor: false,
            ..PolicyConfig::default()
        });
        let headers = Headers::parse(&message).unwrap();
        // Envelope addresses arrive canonical from the SMTP session.
        let recipients: bccguard::addresses::Addresses = to.iter().chain(&cc).map(|(_, a)| canonical(a).unwrap()).collect();
        let decision = decide(&headers, &policy);
        let plan = Plan::build(&decision, &headers, &recipients, &policy).unwrap();
        let (original_fields, original_address_fields) = field_count(&message);

        for txn in &plan.transactions {
            let mut copy = header_block(&message, &headers, &plan, txn, &recipients);
            copy.extend_from_slice(&message[headers.body_start..]);
            // CRLF only, and no line over 998 octets.
            for (i, &b) in copy.iter().enumerate() {
                prop_assert!(b != 0, "NUL in the copy");
                if b == b'\n' { prop_assert_eq!(copy.get(i.wrapping_sub(1)), Some(&b'\r')); }
                if b == b'\r' { prop_assert_eq!(copy.get(i + 1), Some(&b'\n')); }
            }
            for line in copy.split(|&b| b == b'\n') {
                prop_assert!(line.len() <= 999, "line of {} octets", line.len());
            }
            // The same header fields, plus the rewritten ones.
            let (fields, address_fields) = field_count(&copy);
            let added = match txn.rewrite {
                Rewrite::Original => 0,
                _ => 1, // X-Bccguard
            };
            prop_assert_eq!(fields - address_fields, original_fields - original_address_fields + added, "other fields kept");
            let expected_address_fields = match txn.rewrite {
                Rewrite::Original => original_address_fields - usize::from(bcc.is_some()),
                _ => 1 + usize::from(!plan.cc.is_empty()),
            };
            prop_assert_eq!(address_fields, expected_address_fields);
            // An exploded copy is addressed to its recipient alone.
            if let Rewrite::Explode { .. } = txn.rewrite {
                let again = Headers::parse(&copy).unwrap();
                let to: Vec<_> = again.of_kind(bccguard::message::parse::FieldKind::To).flat_map(|f| &f.mailboxes).collect();
                prop_assert_eq!(to.len(), 1);
                prop_assert_eq!(&to[0].address, &recipients[txn.recipients[0]].to_string());
                prop_assert!(again.fields.iter().all(|f| !f.unparseable));
            }
            prop_assert!(copy.ends_with(b"\r\n\r\nbody\r\n.line\r\n"), "body untouched");
        }
    }
}
