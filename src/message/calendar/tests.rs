use super::*;
use crate::config::PolicyConfig;
use crate::message::decide::Policy;
use crate::rewrite::calendar::CalendarRewrite;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/calendar/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn addresses(p: &CalendarPart) -> Vec<&str> {
    p.attendees.iter().map(|m| m.address.as_str()).collect()
}

#[test]
fn parts_are_found_at_any_depth_in_any_encoding() {
    let google = parts(&fixture("google-base64.eml"));
    assert_eq!(google.len(), 2, "the inline text/calendar and the invite.ics attachment");
    for p in &google {
        assert_eq!(p.encoding, TransferEncoding::Base64);
        let want =
            ["ann@customer-a.test", "bob@customer-b.test", "Cy@Customer-C.test", "dana@example.com", "ops@example.com"];
        assert_eq!(addresses(p), want, "folded lines, MAILTO: in capitals");
        assert_eq!(p.attendees[0].name.as_deref(), Some("Ann Customer"));
    }
    let outlook = parts(&fixture("outlook-qp.eml"));
    assert_eq!((outlook.len(), outlook[0].encoding), (1, TransferEncoding::QuotedPrintable));
    assert_eq!(outlook[0].attendees[0].name.as_deref(), Some("Customer, Ann"), "a quoted CN keeps its comma");
    let thunderbird = parts(&fixture("thunderbird-8bit.eml"));
    assert_eq!((thunderbird.len(), thunderbird[0].encoding), (1, TransferEncoding::Identity));
    assert_eq!(addresses(&thunderbird[0]).len(), 3);
    let fifty = parts(&fixture("fifty-attendees.eml"));
    assert_eq!((fifty.len(), fifty[0].attendees.len()), (1, 50), "a whole message that is a calendar");
    assert!(parts(b"From: a@b.test\r\nContent-Type: text/plain\r\n\r\ntext/calendar is mentioned\r\n").is_empty());
}

#[test]
fn content_lines_unfold_and_attendees_need_mailto() {
    let text = b"BEGIN:VEVENT\r\nATTENDEE;CN=\"A; B: C\";ROLE=REQ-PARTICIPANT:mAiLtO:\r\n a@x.test\r\nATTENDEE:urn:uuid:123\r\nEND:VEVENT\r\n";
    let lines = content_lines(text);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[1].unfolded, b"ATTENDEE;CN=\"A; B: C\";ROLE=REQ-PARTICIPANT:mAiLtO:a@x.test");
    assert!(lines[1].raw.starts_with(b"ATTENDEE;") && lines[1].raw.ends_with(b":\r\n a@x.test\r\n"));
    let found = attendees(text);
    assert_eq!(found, [Mailbox { name: Some("A; B: C".into()), address: "a@x.test".into() }]);
    assert!(may_have_calendar(b"Content-Type: TEXT/Calendar") && may_have_calendar(b"application/ICS"));
    assert!(!may_have_calendar(b"text/plain; name=calendar.txt"));
}

#[test]
fn a_copy_lists_only_its_recipient_and_the_internal_attendees_in_the_same_encoding() {
    let message = fixture("google-base64.eml");
    let policy =
        Policy::from_config(&PolicyConfig { internal_domains: vec!["example.com".into()], ..Default::default() });
    let found = parts(&message);
    let plan = CalendarRewrite::plan(&found, 0, &policy);
    assert_eq!(plan[0].internal, ["dana@example.com", "ops@example.com"]);
    let encoded = &message[found[0].range.clone()];
    assert!(encoded.ends_with(b"\r\n"));
    let copy = plan[0].for_recipient(encoded, "ann@customer-a.test");
    assert_eq!(String::from_utf8(copy.clone()).unwrap(), String::from_utf8(fixture("google-ann.b64")).unwrap());
    let decoded = decode(&copy, TransferEncoding::Base64).unwrap();
    assert_eq!(decoded, fixture("google-ann.ics"));
    // Cy is matched however the domain is written; the local part as written.
    let cy = plan[0].for_recipient(encoded, "Cy@customer-C.TEST");
    let cy = attendees(&decode(&cy, TransferEncoding::Base64).unwrap());
    assert_eq!(
        cy.iter().map(|m| m.address.as_str()).collect::<Vec<_>>(),
        ["Cy@Customer-C.test", "dana@example.com", "ops@example.com"]
    );
    let outlook = fixture("outlook-qp.eml");
    let found = parts(&outlook);
    let plan = CalendarRewrite::plan(&found, 0, &policy);
    let copy = plan[0].for_recipient(&outlook[found[0].range.clone()], "bob@customer-b.test");
    assert!(copy.split(|&b| b == b'\n').all(|l| l.len() <= 77), "quoted-printable lines stay short");
    let text = decode(&copy, TransferEncoding::QuotedPrintable).unwrap();
    let names: Vec<_> = attendees(&text).into_iter().map(|m| m.address).collect();
    assert_eq!(names, ["bob@customer-b.test", "ops@example.com"]);
    assert!(
        String::from_utf8_lossy(&text).contains("BEGIN:VTIMEZONE\r\n")
            && String::from_utf8_lossy(&text).contains("café")
    );
}
