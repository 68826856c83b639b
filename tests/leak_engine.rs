//! The leak engine end to end: real sockets in, exact bytes in the directory upstream out.

mod common;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{TestRelay, delivered_to, fixture};
use lettre::address::Envelope;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

const POLICY: &str = "[policy]\ninternal_domains = [\"example.com\"]\n";

/// Send `message` with lettre (which appends CRLF . CRLF itself, so one final CRLF is taken
/// off first). Returns the reply code.
async fn send(relay: &TestRelay, from: &str, to: &[&str], message: &[u8]) -> Result<u16, u16> {
    let transport =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1").port(relay.addr.port()).build();
    let envelope = Envelope::new(Some(from.parse().unwrap()), to.iter().map(|t| t.parse().unwrap()).collect()).unwrap();
    let message = message.strip_suffix(b"\r\n").unwrap_or(message);
    match transport.send_raw(&envelope, message).await {
        Ok(r) => Ok(u16::from(r.code())),
        Err(e) => Err(e.status().map(u16::from).unwrap_or(0)),
    }
}

/// The message's header block (through the empty line) and body.
fn split(message: &[u8]) -> (&[u8], &[u8]) {
    let i = message.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (&message[..i], &message[i..])
}

fn b64(s: &str) -> String {
    format!("=?UTF-8?B?{}?=", BASE64.encode(s))
}

#[tokio::test]
async fn explode_gives_each_external_recipient_its_own_copy() {
    let relay = TestRelay::start(POLICY).await;
    let original = fixture("multipart-attachment.eml");
    let external = ["zoe@client.test", "max@other.test", "jörg@beispiel.test"];
    let internal = ["ops@example.com", "haendler@example.com", "audit@example.com"];
    let all: Vec<&str> = external.iter().chain(&internal).copied().collect();
    assert_eq!(send(&relay, "shop@example.com", &all, &original).await, Ok(250));

    let files = relay.wait_outbox(6).await;
    let (_, original_body) = split(&original);
    let original_head = String::from_utf8_lossy(split(&original).0).to_string();
    let rewritten = |to: &str| {
        original_head
            .replace(
                "To: \"Zoë Customer\" <zoe@client.test>, Max <max@other.test>, Ops <ops@example.com>\r\n\
                 Cc: \"Händler\" <haendler@example.com>\r\nBcc: audit@example.com\r\n",
                &format!("To: {to}\r\nCc: Ops <ops@example.com>, {} <haendler@example.com>\r\n", b64("Händler")),
            )
            .replace("\r\n\r\n", "\r\nX-Bccguard: exploded\r\n\r\n")
    };
    for (rcpt, to) in [
        ("zoe@client.test", format!("{} <zoe@client.test>", b64("Zoë Customer"))),
        ("max@other.test", "Max <max@other.test>".to_string()),
        ("jörg@beispiel.test", "jörg@beispiel.test".to_string()),
    ] {
        let copy = delivered_to(&files, rcpt);
        let (head, body) = split(&copy);
        assert_eq!(String::from_utf8_lossy(head), rewritten(&to), "{rcpt}");
        assert_eq!(body, original_body, "{rcpt}: the body is byte-identical");
    }
    let original_minus_bcc = String::from_utf8_lossy(&original).replace("Bcc: audit@example.com\r\n", "");
    for rcpt in internal {
        let copy = delivered_to(&files, rcpt);
        assert_eq!(String::from_utf8_lossy(&copy), original_minus_bcc, "{rcpt} gets the original");
    }
}

#[tokio::test]
async fn undisclose_sends_one_copy_to_everyone() {
    let relay = TestRelay::start(&format!("{POLICY}action = \"undisclose\"\n")).await;
    let original = fixture("stray-bcc.eml");
    let rcpts = ["first@client.test", "second@other.test", "third@freemail.test", "boss@example.com"];
    assert_eq!(send(&relay, "app@example.com", &rcpts, &original).await, Ok(250));
    let files = relay.wait_outbox(4).await;
    let expected = String::from_utf8_lossy(&original)
        .replace(
            "To: first@client.test\r\nBcc: second@other.test, third@freemail.test\r\n",
            "To: undisclosed-recipients:;\r\n",
        )
        .replace("\r\n\r\n", "\r\nX-Bccguard: undisclosed\r\n\r\n");
    for rcpt in rcpts {
        assert_eq!(String::from_utf8_lossy(&delivered_to(&files, rcpt)), expected, "{rcpt}");
    }
    let names: std::collections::HashSet<_> =
        files.iter().map(|f| f.0.split('-').next().unwrap().to_string()).collect();
    assert_eq!(names.len(), 1, "one message, one queue id");
}

#[tokio::test]
async fn reject_refuses_the_leak_and_the_session_goes_on() {
    let relay = TestRelay::start(&format!("{POLICY}action = \"reject\"\n")).await;
    let mut c = relay.client().await;
    c.cmd("EHLO c").await;
    let bulk = fixture("bulk-50.eml");
    let rcpts: Vec<String> = (0..50).map(|i| format!("customer{i:02}@client.test")).collect();
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let reply = c.transaction("support@example.com", &rcpts, &bulk).await;
    assert_eq!(
        reply,
        "550 5.7.1 Message refused: it shows 50 external recipient addresses to every recipient \
         (at most 1 allowed); put the recipients in Bcc or send one message each"
    );
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 Ok");
    let reply = c.transaction("alice@example.com", &["bob@client.test"], &fixture("conversation.eml")).await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let files = relay.wait_outbox(1).await;
    relay.wait_spool_empty().await;
    assert_eq!(relay.outbox_files().len(), 1, "only the second message was delivered");
    assert_eq!(delivered_to(&files, "bob@client.test"), fixture("conversation.eml"));
}

#[tokio::test]
async fn monitor_mode_decides_but_delivers_unchanged() {
    let relay = TestRelay::start(&format!("{POLICY}monitor = true\n")).await;
    let original = fixture("group.eml");
    let rcpts = ["ann@alpha.test", "ben@beta.test", "cat@gamma.test"];
    assert_eq!(send(&relay, "app@example.com", &rcpts, &original).await, Ok(250));
    let files = relay.wait_outbox(3).await;
    for rcpt in rcpts {
        assert_eq!(delivered_to(&files, rcpt), original, "{rcpt}: unchanged");
    }
}

#[tokio::test]
async fn a_copy_bccguard_made_is_not_processed_again() {
    let relay = TestRelay::start(POLICY).await;
    let original = fixture("already-processed.eml");
    assert_eq!(send(&relay, "app@example.com", &["a@one.test", "b@two.test"], &original).await, Ok(250));
    let files = relay.wait_outbox(2).await;
    for rcpt in ["a@one.test", "b@two.test"] {
        assert_eq!(delivered_to(&files, rcpt), original, "{rcpt}: passed as it was");
    }
}

#[tokio::test]
async fn an_exploded_copy_sent_back_through_the_relay_passes_unchanged() {
    let relay = TestRelay::start(POLICY).await;
    let original = fixture("bulk-50.eml");
    assert_eq!(
        send(&relay, "support@example.com", &["customer00@gmail.com", "customer01@yahoo.com"], &original).await,
        Ok(250)
    );
    let copy = delivered_to(&relay.wait_outbox(2).await, "customer00@gmail.com");
    let second = TestRelay::start(POLICY).await;
    assert_eq!(send(&second, "support@example.com", &["customer00@gmail.com"], &copy).await, Ok(250));
    let files = second.wait_outbox(1).await;
    let (_, _, again) = common::split_delivered(&files[0].1);
    assert_eq!(again, copy, "byte-identical: no second mark, no rewrite");
}
