//! Every signal, with its edge cases.

use super::*;
use crate::config::PolicyConfig;
use crate::message::decide::Policy;

fn policy() -> Policy {
    Policy::from_config(&PolicyConfig { internal_domains: vec!["example.com".into()], ..PolicyConfig::default() })
}

/// The signals of a header block (and body), with these envelope recipients (the visible
/// addresses when none are given).
fn signals_of(head: &str, body: Option<&str>, rcpts: &[&str]) -> Signals {
    let message = format!("{head}\r\n{}", body.unwrap_or(""));
    let headers = Headers::parse(message.as_bytes()).unwrap();
    let fields = HeaderFields::parse(message.as_bytes());
    let rcpts: Addresses =
        if rcpts.is_empty() { headers.visible().map(|m| m.address.clone()).collect() } else { rcpts.iter().collect() };
    Signals::compute(&fields, &headers, body.map(|_| message.as_bytes()), &rcpts, &policy().internal)
}

#[test]
fn reply_needs_in_reply_to_or_references() {
    for (head, reply) in [
        ("In-Reply-To: <1@x.test>\r\n", true),
        ("References: <1@x.test> <2@x.test>\r\n", true),
        ("references:\r\n <1@x.test>\r\n", true),
        ("In-Reply-To:   \r\n", false),
        ("Subject: Re: hello\r\n", false),
        ("", false),
    ] {
        assert_eq!(signals_of(head, None, &["a@x.test"]).reply, reply, "{head:?}");
    }
}

#[test]
fn bulk_headers() {
    for (head, bulk) in [
        ("List-Id: <news.example.com>\r\n", true),
        ("List-Unsubscribe: <mailto:u@example.com>\r\n", true),
        ("Precedence: bulk\r\n", true),
        ("Precedence: List\r\n", true),
        ("Precedence: junk\r\n", true),
        ("Precedence: first-class\r\n", false),
        ("Auto-Submitted: auto-generated\r\n", true),
        ("Auto-Submitted: auto-replied; owner-email=x@example.com\r\n", true),
        ("Auto-Submitted: no\r\n", false),
        ("Auto-Submitted: No (a person wrote this)\r\n", false),
        ("Subject: bulk\r\n", false),
    ] {
        assert_eq!(signals_of(head, None, &["a@x.test"]).bulk, bulk, "{head:?}");
    }
}

fn to_field(addrs: &[&str]) -> String {
    format!("To: {}\r\n", addrs.join(", "))
}

#[test]
fn sorted_recipients_needs_seven_strictly_ascending_external_addresses_in_one_field() {
    let seven = ["a@x.test", "b@x.test", "c@y.test", "d@x.test", "e@x.test", "f@x.test", "g@x.test"];
    assert!(signals_of(&to_field(&seven), None, &[]).sorted_recipients);
    assert!(!signals_of(&to_field(&seven[..6]), None, &[]).sorted_recipients, "6 are not enough");
    let mut dup = seven.to_vec();
    dup.insert(3, "c@y.test");
    assert!(!signals_of(&to_field(&dup), None, &[]).sorted_recipients, "a duplicate is not strictly ascending");
    let mut swapped = seven.to_vec();
    swapped.swap(2, 3);
    assert!(!signals_of(&to_field(&swapped), None, &[]).sorted_recipients);
    let cased = ["A@x.test", "b@x.test", "C@x.test", "d@x.test", "E@x.test", "f@x.test", "G@x.test"];
    assert!(signals_of(&to_field(&cased), None, &[]).sorted_recipients, "case does not change the order");
    let mut with_internal = seven.to_vec();
    with_internal.insert(0, "zed@example.com");
    assert!(signals_of(&to_field(&with_internal), None, &[]).sorted_recipients, "internal addresses are not counted");
    let split = format!("{}Cc: {}\r\n", to_field(&seven[..4]), seven[4..].join(", "));
    assert!(!signals_of(&split, None, &[]).sorted_recipients, "one field must hold all seven");
}

#[test]
fn header_matches_envelope_compares_external_sets() {
    let head = "To: a@x.test, B@Y.TEST\r\nCc: ops@example.com\r\n";
    assert!(signals_of(head, None, &["a@x.test", "B@y.test"]).header_matches_envelope);
    assert!(signals_of(head, None, &["a@x.test", "B@y.test", "boss@example.com"]).header_matches_envelope);
    assert!(!signals_of(head, None, &["a@x.test"]).header_matches_envelope, "b is shown but not a recipient");
    assert!(!signals_of(head, None, &["a@x.test", "B@y.test", "c@z.test"]).header_matches_envelope);
    assert!(!signals_of(head, None, &["a@x.test", "b@y.test"]).header_matches_envelope, "local parts as written");
    assert!(!signals_of("To: ops@example.com\r\n", None, &["ops@example.com"]).header_matches_envelope, "no external");
}

#[test]
fn external_domains_are_distinct_ascii_domains() {
    let head = "To: a@x.test, b@X.TEST, c@bücher.de, d@xn--bcher-kva.de, e@example.com\r\n";
    assert_eq!(signals_of(head, None, &[]).external_domains, 2);
    assert_eq!(signals_of("Subject: none\r\n", None, &["a@x.test"]).external_domains, 0);
}

const INVITE: &str = "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nORGANIZER:mailto:boss@example.com\r\n\
ATTENDEE;CN=Ann;ROLE=REQ-PARTICIPANT:mailto:ann@x.test\r\nATTENDEE;CN=\"Bob, B\";RSVP=TRUE:\r\n MAILTO:bob@y.test\r\n\
ATTENDEE:mailto:ann@x.test\r\nATTENDEE:mailto:dev@example.com\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

#[test]
fn calendar_parts_and_their_external_attendees() {
    let head = "To: ann@x.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n";
    let body = format!(
        "--b\r\nContent-Type: text/plain\r\n\r\nSee you.\r\n--b\r\nContent-Type: text/calendar; method=REQUEST\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--b--\r\n",
        base64_lines(INVITE)
    );
    let s = signals_of(head, Some(&body), &[]);
    assert!(s.calendar);
    assert_eq!(s.attendees, 2, "ann once, bob from a folded line, internal dev not counted");
    let plain = signals_of("Content-Type: text/plain\r\n", Some("hello\r\n"), &["a@x.test"]);
    assert!(!plain.calendar);
    let top = signals_of("Content-Type: text/calendar; method=REQUEST\r\n", None, &["a@x.test"]);
    assert!(top.calendar, "the header block alone shows a calendar message");
}

fn base64_lines(text: &str) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(text);
    encoded.as_bytes().chunks(76).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join("\r\n")
}

#[test]
fn from_domain_is_ascii_with_idn_as_punycode() {
    for (head, domain) in [
        ("From: Shop <news@Bücher.DE>\r\n", Some("xn--bcher-kva.de")),
        ("From: a@shop.example.com\r\n", Some("shop.example.com")),
        ("From: =?utf-8?q?Z=C3=BC?= <z@x.test>\r\n", Some("x.test")),
        ("Subject: none\r\n", None),
    ] {
        let block = format!("{head}\r\n");
        let fields = HeaderFields::parse(block.as_bytes());
        assert_eq!(fields.from_domain().as_deref(), domain, "{head:?}");
    }
}

#[test]
fn seen_names_the_signals_on() {
    let s = Signals { reply: true, calendar: true, attendees: 3, external_domains: 2, ..Signals::default() };
    assert_eq!(s.seen(), ["reply", "calendar", "attendees=3", "external_domains=2"]);
}

#[test]
fn fields_are_found_by_name_in_any_case_and_blank_values_do_not_count() {
    let block = "list-ID : <n.example.com>\r\nX-Empty:  \r\n \t\r\nX-Nbsp: \u{a0}\r\nX-Folded: a\r\n b\r\nPRECEDENCE: bulk\r\n\r\n";
    let fields = HeaderFields::parse(block.as_bytes());
    assert_eq!(fields.values("List-Id").collect::<Vec<_>>(), ["<n.example.com>"]);
    assert!(fields.has("list-id") && fields.has("LIST-ID"));
    assert!(!fields.has("x-empty"), "white space folded over two lines is blank");
    assert!(!fields.has("x-nbsp"), "a no-break space is blank too");
    assert_eq!(fields.values("x-folded").collect::<Vec<_>>(), ["a b"]);
    assert_eq!(fields.values("precedence").collect::<Vec<_>>(), ["bulk"]);
    assert!(!fields.has("list") && !fields.has("id") && fields.values("x-").next().is_none());
}
