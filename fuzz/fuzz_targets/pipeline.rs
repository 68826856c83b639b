//! Fuzz the message pipeline: parse -> decide -> plan -> rewrite.
//!
//! Input layout: byte 0 chooses the policy, the rest is the message.
//!
//! byte 0, bits:
//!   0-1  action: 0 explode, 1 undisclose, 2 pass, 3 reject
//!   2-3  max_visible_external: 0..=3
//!   4    keep_internal_visible
//!   5    prepend a `Received:` trace field (the relay always does)
//!
//! The message is brought within the relay's input contract first: NUL dropped, bare CR and
//! bare LF turned into CRLF, and a final CRLF added when missing (DATA always ends with the
//! CRLF before the final dot).
//!
//! Envelope recipients: the canonical forms of the visible addresses that would fit in a
//! `RCPT TO:<...>` command line (512 octets, CRLF included), deduplicated by address key as
//! the SMTP session does, plus one fixed external and one fixed internal address.
#![no_main]

use std::collections::HashSet;

use bccguard::addresses::Addresses;
use bccguard::config::{Action, PolicyConfig};
use bccguard::message::address;
use bccguard::message::decide::{Policy, decide};
use bccguard::message::parse::{FieldKind, Headers};
use bccguard::plan::{Plan, Rewrite};
use bccguard::rewrite;
use libfuzzer_sys::fuzz_target;

/// Longest line bccguard may write (RFC 5322 §2.1.1), CRLF excluded.
const MAX_LINE: usize = 998;
/// Longest address that fits in `RCPT TO:<address>\r\n` within 512 octets.
const MAX_RCPT_ADDRESS: usize = 512 - "RCPT TO:<>\r\n".len();

const RECEIVED: &[u8] =
    b"Received: from client.example.net (client.example.net [192.0.2.1])\r\n\tby relay.example.com with ESMTP id 0123456789; Mon, 1 Jan 2024 00:00:00 +0000\r\n";
const FIXED_EXTERNAL: &str = "fixed.outside@external.test";
const FIXED_INTERNAL: &str = "fixed.inside@example.com";

fn policy_of(b: u8) -> Policy {
    let action = match b & 3 {
        0 => Action::Explode,
        1 => Action::Undisclose,
        2 => Action::Pass,
        _ => Action::Reject,
    };
    Policy::from_config(&PolicyConfig {
        internal_domains: vec!["example.com".to_string()],
        max_visible_external: usize::from((b >> 2) & 3),
        action,
        keep_internal_visible: (b >> 4) & 1 == 1,
        monitor: false,
        ..PolicyConfig::default()
    })
}

/// NUL dropped, every line ending CRLF, ending with CRLF unless empty.
fn normalize(raw: &[u8], received: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + RECEIVED.len() + 16);
    if received {
        out.extend_from_slice(RECEIVED);
    }
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            0 => {}
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if raw.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn recipients_of(headers: &Headers) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let visible = headers.visible().map(|m| m.address.as_str());
    let fixed = [FIXED_EXTERNAL, FIXED_INTERNAL].into_iter();
    for raw in visible.chain(fixed) {
        let Some(rcpt) = address::canonical(raw) else {
            continue;
        };
        if rcpt.len() > MAX_RCPT_ADDRESS || !round_trips(&rcpt) {
            continue;
        }
        if seen.insert(address::key(&rcpt)) {
            out.push(rcpt);
        }
    }
    out
}

/// Whether `rcpt`, written as a copy's `To:` writes it, is read back as itself. mail-parser
/// 0.11 drops white space that comes before a quoted-pair in a quoted local part
/// (`"a \"b"@x.test` is read as `"a\"b"@x.test`), so such an address cannot be checked
/// against its copy; the relay takes envelope recipients from RCPT, not from this parse.
fn round_trips(rcpt: &str) -> bool {
    let field = format!("To: <{rcpt}>\r\n\r\n");
    Headers::parse(field.as_bytes()).is_ok_and(|h| {
        let to: Vec<_> = h.of_kind(FieldKind::To).flat_map(|f| &f.mailboxes).collect();
        to.len() == 1 && to[0].address == rcpt
    })
}

/// Lines of `block`, each without its CRLF (a trailing piece without CRLF included).
fn lines(block: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = block;
    while !rest.is_empty() {
        match memchr_crlf(rest) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + 2..];
            }
            None => {
                out.push(rest);
                break;
            }
        }
    }
    out
}

fn memchr_crlf(s: &[u8]) -> Option<usize> {
    s.windows(2).position(|w| w == b"\r\n")
}

fn check_line_endings(copy: &[u8]) {
    for (i, &b) in copy.iter().enumerate() {
        match b {
            0 => panic!("NUL in copy at {i}"),
            b'\n' => assert!(
                i > 0 && copy[i - 1] == b'\r',
                "bare LF in copy at {i}: {:?}",
                String::from_utf8_lossy(&copy[i.saturating_sub(80)..(i + 20).min(copy.len())])
            ),
            b'\r' => assert!(
                copy.get(i + 1) == Some(&b'\n'),
                "bare CR in copy at {i}: {:?}",
                String::from_utf8_lossy(&copy[i.saturating_sub(80)..(i + 20).min(copy.len())])
            ),
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&policy_byte, raw)) = data.split_first() else {
        return;
    };
    let policy = policy_of(policy_byte);
    let message = normalize(raw, (policy_byte >> 5) & 1 == 1);

    let Ok(headers) = Headers::parse(&message) else {
        return;
    };
    assert!(headers.header_end <= headers.body_start && headers.body_start <= message.len());
    let recipients: Addresses = recipients_of(&headers).into_iter().collect();
    let decision = decide(&headers, &policy);
    if std::env::var_os("BCCGUARD_FUZZ_DEBUG").is_some() {
        eprintln!("message: {:?}", String::from_utf8_lossy(&message));
        eprintln!("fields: {:#?}", headers.fields);
        eprintln!("header_end {} body_start {}", headers.header_end, headers.body_start);
        eprintln!("recipients: {recipients:?}\ndecision: {decision:?}");
    }
    let Some(plan) = Plan::build(&decision, &headers, &recipients, &policy) else {
        return;
    };

    let body = &message[headers.body_start..];
    let original_lines: HashSet<&[u8]> = lines(&message[..headers.body_start]).into_iter().collect();

    for txn in &plan.transactions {
        for &i in &txn.recipients {
            assert!(i < recipients.len(), "recipient index {i} out of range");
        }
        let head = rewrite::header_block(&message, &headers, &plan, txn, &recipients);
        let mut copy = head.clone();
        copy.extend_from_slice(body);

        // 2. CRLF only, no NUL.
        check_line_endings(&copy);

        // 3. Lines bccguard wrote are at most 998 octets.
        for line in lines(&head) {
            if line.len() > MAX_LINE && !original_lines.contains(line) {
                panic!(
                    "written header line of {} octets ({:?}): {:?}",
                    line.len(),
                    txn.rewrite,
                    String::from_utf8_lossy(&line[..200.min(line.len())])
                );
            }
        }

        // 4. The body is the original body.
        assert_eq!(&copy[head.len()..], body, "copy body differs from the original");

        // 5. A rewritten copy exposes nothing but its recipient: parsed again, an exploded
        //    copy shows at most one external address and its To is that recipient (a display
        //    name may repeat the recipient's own address); an undisclosed copy shows none.
        let reparsed = Headers::parse(&copy).expect("copy parses");
        let exposure = bccguard::message::decide::exposure(&reparsed, &policy);
        if txn.rewrite == Rewrite::Undisclose {
            assert_eq!(
                exposure,
                0,
                "undisclosed copy exposes {exposure}\n--- head ---\n{}",
                String::from_utf8_lossy(&head)
            );
        }
        if let Rewrite::Explode { .. } = &txn.rewrite {
            assert_eq!(txn.recipients.len(), 1, "explode transaction with several recipients");
            let rcpt = &recipients[txn.recipients[0]];
            assert!(
                exposure <= 1,
                "exploded copy exposes {exposure}\n--- head ---\n{}",
                String::from_utf8_lossy(&head)
            );
            let to: Vec<_> = reparsed.of_kind(FieldKind::To).flat_map(|f| &f.mailboxes).collect();
            let own = address::key(rcpt);
            let to_ok = to.iter().any(|m| &m.address == rcpt) && to.iter().all(|m| address::key(&m.address) == own);
            assert!(
                to_ok,
                "exploded copy for {rcpt:?} shows To mailboxes {to:?}\n--- head ---\n{}",
                String::from_utf8_lossy(&head)
            );
            let bcc: Vec<_> =
                reparsed.fields.iter().filter(|f| matches!(f.kind, FieldKind::Bcc | FieldKind::ResentBcc)).collect();
            assert!(
                bcc.is_empty(),
                "exploded copy for {rcpt:?} has Bcc fields {bcc:?}\n--- head ---\n{}",
                String::from_utf8_lossy(&head)
            );
        }
    }
});
