//! Calendar invites and reply fields end to end (SPEC §11): invites shaped as Google Calendar,
//! Outlook and Thunderbird write them, sent through the real server to a real SMTP upstream;
//! each copy's calendar part is read back with mail-parser and with Python's `icalendar`.

mod common;
#[path = "common/dkim.rs"]
mod dkim_support;

use std::process::Command;

use common::upstream::TestUpstream;
use common::{TestRelay, eventually, fixture};
use mail_parser::{MessageParser, MimeHeaders};

const POLICY: &str = "[policy]\ninternal_domains = [\"example.com\"]\n";

async fn relay_and_upstream(extra: &str) -> (TestRelay, TestUpstream) {
    let upstream = TestUpstream::start().await;
    let relay = TestRelay::start(&format!("{POLICY}{extra}\n{}", upstream.config(""))).await;
    (relay, upstream)
}

async fn send_and_wait(relay: &TestRelay, upstream: &TestUpstream, message: &[u8], rcpts: &[&str]) {
    let before: usize = upstream.deliveries().iter().map(|d| d.rcpts.len()).sum();
    let reply = relay.send("dana@example.com", rcpts, message).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let n: usize = before + rcpts.len();
    eventually("every copy delivered", || upstream.deliveries().iter().map(|d| d.rcpts.len()).sum::<usize>() == n)
        .await;
}

/// The message `rcpt` got, without the Received field bccguard added.
fn delivered(upstream: &TestUpstream, rcpt: &str) -> Vec<u8> {
    let d = upstream.delivered_to(rcpt);
    assert_eq!(d.len(), 1, "one copy for {rcpt}");
    let data = &d[0].data;
    let text = String::from_utf8_lossy(data);
    assert!(text.starts_with("Received: "), "{text}");
    let mut end = text.find("\r\n").unwrap() + 2;
    while text[end..].starts_with(['\t', ' ']) {
        end += text[end..].find("\r\n").unwrap() + 2;
    }
    data[end..].to_vec()
}

fn body(message: &[u8]) -> &[u8] {
    let at = message.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    &message[at..]
}

/// The decoded calendar parts of a message, as mail-parser reads them.
fn calendars(message: &[u8]) -> Vec<Vec<u8>> {
    let parsed = MessageParser::new().parse(message).unwrap();
    parsed
        .parts
        .iter()
        .filter(|p| p.content_type().is_some_and(|c| matches!(c.subtype(), Some("calendar" | "ics"))))
        .map(|p| p.contents().to_vec())
        .collect()
}

const ICALENDAR: &str = r#"
import sys, json, icalendar
cal = icalendar.Calendar.from_ical(open(sys.argv[1], 'rb').read())
out = []
for ev in cal.walk('VEVENT'):
    a = ev.get('ATTENDEE', [])
    a = a if isinstance(a, list) else [a]
    out.append([str(ev.get('ORGANIZER')), [str(x) for x in a]])
print(json.dumps(out))
"#;

/// `(ORGANIZER, ATTENDEEs)` of each VEVENT, as Python's icalendar parses the object; `None`
/// when it is missing (a failure under CI).
fn icalendar(ics: &[u8]) -> Option<Vec<(String, Vec<String>)>> {
    let python = if std::path::Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    let ok = Command::new(python).args(["-c", "import icalendar"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(std::env::var_os("CI").is_none(), "python3-icalendar is required under CI");
        eprintln!("SKIPPED: icalendar checks (install python3-icalendar)");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.ics");
    std::fs::write(&path, ics).unwrap();
    let out = Command::new(python).args(["-c", ICALENDAR, path.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "icalendar refuses it: {}", String::from_utf8_lossy(&out.stderr));
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

fn mailto(addrs: &[&str]) -> Vec<String> {
    addrs.iter().map(|a| format!("mailto:{a}")).collect()
}

/// The base64 block of each calendar part of the Google fixture (both hold the same invite).
fn base64_block(message: &str) -> &str {
    let start = message.find("Content-Transfer-Encoding: base64\r\n\r\n").unwrap() + 37;
    let end = start + message[start..].find("\r\n--").unwrap();
    &message[start..end]
}

#[tokio::test]
async fn a_google_invite_is_exploded_with_each_calendar_part_rewritten_and_every_other_byte_kept() {
    let (relay, upstream) = relay_and_upstream("").await;
    let original = fixture("calendar/google-base64.eml");
    let rcpts = ["ann@customer-a.test", "bob@customer-b.test", "Cy@customer-c.test", "ops@example.com"];
    send_and_wait(&relay, &upstream, &original, &rcpts).await;
    // Ann's copy, byte for byte: both base64 blocks replaced by the expected one.
    let text = String::from_utf8(original.clone()).unwrap();
    let ann_block = String::from_utf8(fixture("calendar/google-ann.b64")).unwrap();
    let expected = body(text.as_bytes()).to_vec();
    let expected = String::from_utf8(expected).unwrap().replace(base64_block(&text), &ann_block);
    let ann = delivered(&upstream, "ann@customer-a.test");
    assert_eq!(String::from_utf8_lossy(body(&ann)), expected);
    for (rcpt, shown) in [
        ("ann@customer-a.test", "ann@customer-a.test"),
        ("bob@customer-b.test", "bob@customer-b.test"),
        ("Cy@customer-c.test", "Cy@Customer-C.test"),
    ] {
        let copy = delivered(&upstream, rcpt);
        let parts = calendars(&copy);
        assert_eq!(parts.len(), 2, "the inline part and invite.ics");
        for ics in parts {
            let Some(mut events) = icalendar(&ics) else { continue };
            // The line keeps its bytes: `MAILTO:` as the invite wrote it.
            events[0].1.iter_mut().for_each(|a| *a = a.replacen("MAILTO:", "mailto:", 1));
            let want = mailto(&[shown, "dana@example.com", "ops@example.com"]);
            assert_eq!(events, [("mailto:dana@example.com".to_string(), want)], "{rcpt}");
        }
    }
    assert_eq!(delivered(&upstream, "ops@example.com"), original, "the internal copy is the original");
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn outlook_quoted_printable_and_thunderbird_8bit_invites_keep_their_encoding() {
    let (relay, upstream) = relay_and_upstream("").await;
    let outlook = fixture("calendar/outlook-qp.eml");
    send_and_wait(&relay, &upstream, &outlook, &["ann@customer-a.test", "bob@customer-b.test"]).await;
    let copy = delivered(&upstream, "bob@customer-b.test");
    let text = String::from_utf8_lossy(&copy).into_owned();
    let part = &text[text.find("Content-Type: text/calendar").unwrap()..];
    assert!(part.contains("Content-Transfer-Encoding: quoted-printable\r\n\r\nBEGIN:VCALENDAR\r\n"), "{part}");
    assert!(part.split("\r\n").all(|l| l.len() <= 76), "{part}");
    assert!(!text.contains("ann@customer-a.test") && !text.contains("Customer, Ann"), "{text}");
    let ics = &calendars(&copy)[0];
    if let Some(events) = icalendar(ics) {
        assert_eq!(events[0].1, mailto(&["bob@customer-b.test", "ops@example.com"]));
    }
    let thunderbird = fixture("calendar/thunderbird-8bit.eml");
    send_and_wait(&relay, &upstream, &thunderbird, &["ann@customer-a.test", "bob@customer-b.test"]).await;
    let copies = upstream.delivered_to("ann@customer-a.test");
    let copy = String::from_utf8(copies.last().unwrap().data.clone()).unwrap();
    assert!(copy.contains("Content-Transfer-Encoding: 8bit\r\n\r\nBEGIN:VCALENDAR\r\n"));
    assert!(copy.contains("You are invited. Café provided.\r\n") && !copy.contains("bob@customer-b.test"), "{copy}");
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn fifty_attendees_behind_undisclosed_recipients_leak_and_undisclose_delivers_as_explode() {
    let (relay, upstream) = relay_and_upstream("action = \"undisclose\"\n").await;
    let invite = fixture("calendar/fifty-attendees.eml");
    let rcpts = ["c00@client00.test", "c07@client07.test", "c49@client49.test"];
    send_and_wait(&relay, &upstream, &invite, &rcpts).await;
    assert_eq!(upstream.deliveries().len(), 3, "one copy each: an invite cannot be undisclosed");
    for rcpt in rcpts {
        let copy = delivered(&upstream, rcpt);
        let text = String::from_utf8_lossy(&copy);
        assert!(text.contains(&format!("\r\nTo: {rcpt}\r\n")) && text.contains("X-Bccguard: exploded"), "{text}");
        assert_eq!(text.matches("ATTENDEE").count(), 1, "{text}");
        if let Some(events) = icalendar(body(&copy)) {
            assert_eq!(events[0].1, mailto(&[rcpt]));
        }
    }
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_signed_invite_is_re_signed_over_each_copys_own_body() {
    let original = fixture("calendar/thunderbird-8bit.eml");
    let signed = dkim_support::sign_mail_auth(&original, "rsa", "orig", "example.com", &["From", "To", "Subject"]);
    let key = dkim_support::key_path("ed25519");
    let keys = format!(
        "[[dkim.keys]]\ndomain = \"example.com\"\nselector = \"ed\"\nkey_file = \"{}\"\nalgorithm = \"ed25519-sha256\"\n",
        key.display()
    );
    let (relay, upstream) = relay_and_upstream(&keys).await;
    send_and_wait(&relay, &upstream, &signed, &["ann@customer-a.test", "bob@customer-b.test"]).await;
    let records =
        [dkim_support::publish("rsa", "orig", "example.com"), dkim_support::publish("ed25519", "ed", "example.com")];
    for rcpt in ["ann@customer-a.test", "bob@customer-b.test"] {
        let copy = upstream.delivered_to(rcpt)[0].data.clone();
        let results = dkim_support::verify_mail_auth(&copy, &records).await;
        assert_eq!(results, [("example.com".to_string(), true)], "{rcpt}");
        if let Some(by_dkimpy) = dkim_support::verify_dkimpy(&copy, &records) {
            assert_eq!(by_dkimpy, results);
        }
    }
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn three_external_addresses_in_mail_followup_to_are_a_leak_and_each_copy_keeps_its_own() {
    let (relay, upstream) = relay_and_upstream("").await;
    let message = b"From: dana@example.com\r\nTo: undisclosed-recipients:;\r\n\
        Mail-Followup-To: a@x.test, b@y.test, c@z.test\r\nReply-To: Help <help@desk.test>\r\nSubject: s\r\n\r\nhi\r\n";
    send_and_wait(&relay, &upstream, message, &["a@x.test", "b@y.test", "c@z.test"]).await;
    let copy = String::from_utf8(delivered(&upstream, "b@y.test")).unwrap();
    assert_eq!(
        copy,
        "From: dana@example.com\r\nTo: b@y.test\r\nMail-Followup-To: b@y.test\r\nReply-To: Help <help@desk.test>\r\n\
         Subject: s\r\nX-Bccguard: exploded\r\n\r\nhi\r\n"
    );
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_invite_released_as_undisclose_is_exploded_with_its_calendar_rewritten() {
    let (relay, upstream) = relay_and_upstream("action = \"hold\"\n").await;
    let invite = fixture("calendar/thunderbird-8bit.eml");
    let reply = relay.send("dana@example.com", &["ann@customer-a.test", "bob@customer-b.test"], &invite).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let id = reply.rsplit(' ').next().unwrap().to_string();
    let (code, out) = common::queue_cli(&relay, &["release", &id, "--as", "undisclose"]);
    assert_eq!(code, 0, "{out}");
    eventually("both copies delivered", || upstream.deliveries().len() == 2).await;
    for (rcpt, other) in
        [("ann@customer-a.test", "bob@customer-b.test"), ("bob@customer-b.test", "ann@customer-a.test")]
    {
        let copy = String::from_utf8(delivered(&upstream, rcpt)).unwrap();
        assert!(copy.contains(&format!("\r\nTo: {rcpt}\r\n")), "{copy}");
        assert!(!copy.contains(other), "{copy}");
    }
    relay.stop().await.unwrap();
}

/// `bccguard check` with `toml` as its configuration: (exit code, stdout).
fn check(toml: &str, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    (out.status.code().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn check_shows_the_attendees_the_calendar_copies_and_dkim() {
    let fifty = format!("{}/tests/fixtures/calendar/fifty-attendees.eml", env!("CARGO_MANIFEST_DIR"));
    let (code, out) = check(POLICY, &[&fifty]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("  exposure      50 external (at most 1 allowed)\n"), "{out}");
    assert!(out.contains("  attendees     50 external (calendar invite)\n"), "{out}");
    assert!(out.contains("  recipients    50 (the visible addresses; use --rcpt to set)\n"), "{out}");
    assert_eq!(out.matches("explode + calendar").count(), 50, "{out}");
    assert!(!out.contains("  dkim "), "an unsigned message with no key: nothing to say");

    let dir = tempfile::tempdir().unwrap();
    let signed = dir.path().join("signed.eml");
    let headers = ["From", "To", "Subject"];
    std::fs::write(
        &signed,
        dkim_support::sign_mail_auth(&fixture("calendar/thunderbird-8bit.eml"), "rsa", "o", "example.com", &headers),
    )
    .unwrap();
    let key = dkim_support::key_path("rsa");
    let keys = format!("[[dkim.keys]]\ndomain = \"example.com\"\nselector = \"relay\"\nkey_file = {key:?}\n");
    let (_, out) = check(&format!("{POLICY}{keys}"), &["--json", signed.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["dkim"]["dkim"], "signed_by_original", "{out}");
    assert_eq!(json["dkim"]["key"], "d=example.com s=relay", "{out}");
    let resigned: Vec<_> =
        json["transactions"].as_array().unwrap().iter().map(|t| t["resigned"].as_bool().unwrap()).collect();
    assert_eq!(resigned, [false, true, true, true], "the internal original is not re-signed: {out}");
    let (_, out) = check(&format!("{POLICY}{keys}"), &[signed.to_str().unwrap()]);
    assert!(
        out.contains("  dkim          signed_by_original; rewritten copies re-signed with d=example.com s=relay\n"),
        "{out}"
    );
    assert_eq!(out.matches("re-signed\n").count(), 3, "{out}");
}
