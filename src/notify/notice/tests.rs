use super::*;

fn event(kind: EventKind, subject: Option<&str>) -> Event {
    Event {
        kind,
        queue_id: QueueId::parse("0641F2A3B4C5D001").unwrap(),
        rule: Some("marketing".into()),
        action: "hold",
        exposure: 1000,
        recipients: 1000,
        sender: "shop@example.com".into(),
        subject: subject.map(str::to_string),
        client: "192.0.2.7".into(),
        generated: false,
        at: DateTime::parse_from_rfc3339("2026-11-29T12:00:00Z").unwrap().with_timezone(&Utc),
    }
}

fn held() -> EventKind {
    EventKind::Held { max_age: Duration::from_secs(10 * 86_400) }
}

fn render(event: &Event, audience: Audience) -> String {
    let id = QueueId::parse("0641F2A3B4C5D0FF").unwrap();
    let notice = Notice {
        event,
        audience,
        from: "postmaster@relay.test",
        to: "shop@example.com",
        hostname: "relay.test",
        id: &id,
        now: event.at,
    };
    String::from_utf8(build(&notice).expect("a notice")).unwrap()
}

fn header_block(text: &str) -> &str {
    &text[..text.find("\r\n\r\n").unwrap() + 2]
}

#[test]
fn a_held_notice_has_the_headers_and_the_facts() {
    let text = render(&event(held(), Some("Black Friday offer")), Audience::Sender);
    let head = header_block(&text);
    for field in [
        "From: bccguard <postmaster@relay.test>\r\n",
        "To: <shop@example.com>\r\n",
        "Subject: Held: your message to 1,000 recipients showed their addresses to each other\r\n",
        "Date: Sun, 29 Nov 2026 12:00:00 +0000\r\n",
        "Message-ID: <0641F2A3B4C5D0FF.notice@relay.test>\r\n",
        "Auto-Submitted: auto-generated\r\n",
        "X-Bccguard: notice\r\n",
        "MIME-Version: 1.0\r\n",
        "Content-Type: text/plain; charset=utf-8\r\n",
        "Content-Transfer-Encoding: 7bit\r\n",
    ] {
        assert!(head.contains(field), "missing {field:?} in:\n{head}");
    }
    assert!(head.starts_with("From: "));
    for fact in [
        "It held one of your messages instead of delivering it.",
        "  Subject:    Black Friday offer\r\n",
        "  Queue id:   0641F2A3B4C5D001\r\n",
        "  Rule:       marketing\r\n",
        "showed 1,000 external addresses",
        "deleted on 2026-12-09 12:00 UTC (after 10 days)",
        "recipients in Bcc",
    ] {
        assert!(text.contains(fact), "missing {fact:?} in:\n{text}");
    }
    assert!(!text.contains("Sender:") && !text.contains("192.0.2.7"), "the sender's own notice: {text}");
    assert!(text.ends_with("\r\n-- \r\nThis notice was generated automatically; replies are not read.\r\n"));
    assert!(text.split("\r\n").all(|l| !l.contains('\n') && !l.contains('\r') && l.len() <= 998));
}

#[test]
fn the_admin_notice_names_sender_client_and_how_to_review() {
    let mut e = event(held(), None);
    e.rule = None;
    let text = render(&e, Audience::Admin);
    assert!(text.contains("Subject: Held: a message to 1,000 recipients showed their addresses to each other\r\n"));
    for fact in [
        "  Sender:     shop@example.com\r\n",
        "  Client:     192.0.2.7\r\n",
        "  Subject:    (none)\r\n",
        "  Rule:       default\r\n",
        "bccguard queue release 0641F2A3B4C5D001",
    ] {
        assert!(text.contains(fact), "missing {fact:?} in:\n{text}");
    }
}

#[test]
fn no_exposed_address_is_ever_listed() {
    // The notice is built from the event alone, which carries counts, not addresses; the
    // only addresses in it are the sender's (for an admin), the From and the To.
    let text = render(&event(held(), Some("news")), Audience::Admin);
    let addresses: Vec<String> = crate::message::parse::addresses_in_text(&text).collect();
    for a in &addresses {
        let ours = ["postmaster@relay.test", "shop@example.com", "0641F2A3B4C5D0FF.notice@relay.test"];
        assert!(ours.contains(&a.as_str()), "{a} in:\n{text}");
    }
}

#[test]
fn a_subject_cannot_inject_header_fields_or_lines() {
    let evil = "Hi\r\nBcc: victim@x.test\r\n\r\nfake body\0\u{7f}";
    let text = render(&event(held(), Some(evil)), Audience::Sender);
    let head = header_block(&text);
    assert!(!head.contains("victim") && !head.contains("Hi"), "nothing of the subject in the header: {head}");
    assert!(text.contains("  Subject:    Hi Bcc: victim@x.test fake body\r\n"), "{text}");
    assert!(!text.contains('\0') && !text.contains('\u{7f}'));
    assert_eq!(text.matches("\r\n\r\n").count(), 6, "only the paragraph breaks: {text}");
}

#[test]
fn long_and_non_ascii_subjects_are_bounded_and_quoted_printable() {
    let long = "Grüße ".repeat(500);
    let text = render(&event(held(), Some(&long)), Audience::Sender);
    assert!(text.contains("Content-Transfer-Encoding: quoted-printable\r\n"));
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    assert!(text.is_ascii() && body.split("\r\n").all(|l| l.len() <= 76), "{text}");
    assert!(text.contains("Subject:    Gr=C3=BC=C3=9Fe Gr=C3=BC=C3=9Fe"), "{text}");
    assert_eq!(clean_subject(&long).chars().count(), 203);
    assert!(clean_subject(&long).ends_with("..."));
}

#[test]
fn quoted_printable_round_trips_and_keeps_lines_short() {
    let text = format!("a=b \r\n{}\r\ntrailing \r\nÄ", "x".repeat(200));
    let encoded = quoted_printable(&text);
    assert!(encoded.split("\r\n").all(|l| l.len() <= 76), "{encoded}");
    assert!(encoded.starts_with("a=3Db=20\r\n"), "{encoded}");
    assert!(encoded.ends_with("trailing=20\r\n=C3=84"), "{encoded}");
    let decoded = encoded.replace("=\r\n", "");
    assert!(decoded.contains(&"x".repeat(200)));
}

#[test]
fn counts_and_durations_read_well() {
    for (n, s) in [(0, "0"), (7, "7"), (999, "999"), (1000, "1,000"), (23_456, "23,456"), (1_000_000, "1,000,000")] {
        assert_eq!(thousands(n), s);
    }
    for (secs, s) in
        [(864_000, "10 days"), (86_400, "1 day"), (3600, "1 hour"), (5400, "90 minutes"), (45, "45 seconds")]
    {
        assert_eq!(words(Duration::from_secs(secs)), s);
    }
}

#[test]
fn subjects_per_event() {
    let mut one = event(EventKind::Rejected { after_accept: true }, None);
    one.recipients = 1;
    one.exposure = 12;
    assert!(
        render(&one, Audience::Sender)
            .contains("Subject: Not delivered: your message showed 12 external addresses\r\n")
    );
    let trip =
        EventKind::BreakerTripped { key: "shop@example.com".into(), count: 5, window: Duration::from_secs(3600) };
    let text = render(&event(trip, None), Audience::Sender);
    assert!(
        text.contains("Subject: Paused: 5 of your messages in 1 hour showed recipients' addresses to each other\r\n")
    );
    assert!(text.contains("(held for review)"), "{text}");
    for kind in [EventKind::Exploded, EventKind::Undisclosed, EventKind::Rejected { after_accept: false }] {
        let e = event(kind, None);
        let id = QueueId::generate();
        let n = Notice {
            event: &e,
            audience: Audience::Sender,
            from: "a@b.test",
            to: "c@d.test",
            hostname: "h",
            id: &id,
            now: e.at,
        };
        assert_eq!(build(&n), None);
    }
}
