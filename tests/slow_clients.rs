//! Slow clients cannot starve fast ones (SPEC §12): command and data deadlines besides the
//! idle timeout, a connection limit per client address, password checks a few at a time, and
//! MAIL refused when the spool's filesystem is short of space. Real sockets, exact replies.

mod common;

use std::time::Duration;

use common::{RawClient, TestRelay};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Send `bytes` one at a time, `every` apart, until they run out or the relay stops reading.
fn trickle(mut writer: tokio::net::tcp::OwnedWriteHalf, bytes: &'static [u8], every: Duration) {
    tokio::spawn(async move {
        for byte in bytes {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
}

/// Read lines until end of stream (at most 30 s); the lines read.
async fn lines_until_closed(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line)).await;
        match read.expect("the relay answers or closes within 30 s") {
            Ok(0) | Err(_) => return lines,
            Ok(_) => lines.push(line.trim_end().to_string()),
        }
    }
}

/// A client past the greeting, split so one task can trickle while the test reads.
async fn split_client(
    relay: &TestRelay,
) -> (BufReader<tokio::net::tcp::OwnedReadHalf>, tokio::net::tcp::OwnedWriteHalf) {
    let stream: TcpStream = relay.client().await.into_inner();
    let (read, write) = stream.into_split();
    (BufReader::new(read), write)
}

#[tokio::test]
async fn a_command_line_trickled_past_command_timeout_gets_421_and_is_closed() {
    let relay = TestRelay::start("[server]\ncommand_timeout = \"1s\"\nidle_timeout = \"5s\"\n").await;
    let (mut reader, writer) = split_client(&relay).await;
    // 24 bytes at one per 200 ms: the idle timeout never fires, the line takes 4.8 s.
    trickle(writer, b"EHLO trickle.example.com\r\n", Duration::from_millis(200));
    let started = std::time::Instant::now();
    let lines = lines_until_closed(&mut reader).await;
    assert_eq!(lines, ["421 4.4.2 Command timeout, closing connection"]);
    assert!(started.elapsed() >= Duration::from_secs(1), "not before the deadline: {:?}", started.elapsed());
}

#[tokio::test]
async fn pauses_between_whole_commands_are_not_a_command_timeout() {
    let relay = TestRelay::start("[server]\ncommand_timeout = \"1s\"\nidle_timeout = \"5s\"\n").await;
    let mut c = relay.client().await;
    assert!(c.cmd("EHLO c").await.starts_with("250-"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
    // A line in two parts, well within the deadline, is fine too.
    c.send(b"NO").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(c.cmd("OP").await, "250 2.0.0 Ok");
}

#[tokio::test]
async fn a_message_trickled_past_data_timeout_gets_421_and_is_closed() {
    let relay =
        TestRelay::start("[server]\ndata_timeout = \"1s\"\ncommand_timeout = \"30s\"\nidle_timeout = \"5s\"\n").await;
    let mut c = relay.client().await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    c.cmd("RCPT TO:<b@y.test>").await;
    assert!(c.cmd("DATA").await.starts_with("354"));
    let (read, writer) = c.into_inner().into_split();
    let mut reader = BufReader::new(read);
    // Whole lines, each well within the idle timeout, but the dot never comes in time.
    trickle(writer, b"Subject: slow\r\n\r\nline\r\nline\r\nline\r\nline\r\n.\r\n", Duration::from_millis(200));
    let lines = lines_until_closed(&mut reader).await;
    assert_eq!(lines, ["421 4.4.2 Data timeout, closing connection"]);
    assert!(relay.spooled().is_empty() && relay.outbox_files().is_empty(), "nothing accepted");
}

#[tokio::test]
async fn connections_beyond_the_per_client_limit_get_421() {
    let relay = TestRelay::start("[server]\nmax_connections_per_client = 3\n").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(greeted(&relay).await);
    }
    let mut fourth = RawClient::connect(relay.addr, None).await;
    assert_eq!(fourth.reply().await, "421 4.7.0 Too many connections from your address, try again later");
    assert!(fourth.is_closed().await);

    // Another address has its own count (relay_networks are not exempt, but not shared).
    let mut other = RawClient::connect(relay.addr, Some("127.0.0.2")).await;
    assert!(other.reply().await.starts_with("220 "));
    assert_eq!(other.cmd("NOOP").await, "250 2.0.0 Ok");

    // Once one session ends, the address may open another.
    assert_eq!(held[0].cmd("QUIT").await, "221 2.0.0 Bye");
    held.remove(0);
    let mut again = greeted(&relay).await;
    assert_eq!(again.cmd("NOOP").await, "250 2.0.0 Ok");
}

/// A session from 127.0.0.1, retried while an earlier one (the start-up probe, a session
/// just quit) may still be closing and holding its slot.
async fn greeted(relay: &TestRelay) -> RawClient {
    for _ in 0..100 {
        let mut c = RawClient::connect(relay.addr, None).await;
        if c.reply().await.starts_with("220 ") {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no session from 127.0.0.1 was accepted");
}

#[tokio::test]
async fn a_failed_auth_is_answered_after_the_failure_delay() {
    // bcrypt at cost 4 checks in milliseconds, so the time measured is the delay.
    let hash = bcrypt::hash("s3cret", 4).unwrap();
    let relay = TestRelay::start(&format!(
        "[access]\nallow_plaintext_auth = true\n[[access.users]]\nname = \"app\"\npassword_hash = {hash:?}\n"
    ))
    .await;
    let mut c = relay.client().await;
    c.cmd("EHLO c").await;
    let started = std::time::Instant::now();
    // AUTH PLAIN for app / wrong.
    assert_eq!(c.cmd("AUTH PLAIN AGFwcAB3cm9uZw==").await, "535 5.7.8 Authentication credentials invalid");
    let waited = started.elapsed();
    assert!(waited >= bccguard::smtp::auth::FAILURE_DELAY, "535 after {waited:?}");
    // AUTH PLAIN for app / s3cret.
    assert_eq!(c.cmd("AUTH PLAIN AGFwcABzM2NyZXQ=").await, "235 2.7.0 Authentication successful");
}

#[tokio::test]
async fn mail_gets_452_while_free_space_is_below_min_free() {
    let relay = TestRelay::start("[spool]\nmin_free = \"1000TiB\"\n").await;
    let mut c = relay.client().await;
    c.cmd("EHLO c").await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test>").await, "452 4.3.1 Insufficient system storage");
    assert_eq!(c.cmd("RCPT TO:<b@y.test>").await, "503 5.5.1 Send MAIL first");

    let relay = TestRelay::start("[spool]\nmin_free = 0\n").await;
    let mut c = relay.client().await;
    c.cmd("EHLO c").await;
    let reply = c.transaction("a@x.test", &["b@y.test"], b"Subject: room\r\n\r\nok\r\n").await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
}

#[tokio::test]
async fn a_declared_size_counts_against_min_free() {
    let relay = TestRelay::start("[spool]\nmin_free = \"1B\"\n[server]\nmax_message_size = \"1000TiB\"\n").await;
    let mut c = relay.client().await;
    c.cmd("EHLO c").await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test> SIZE=1000").await, "250 2.1.0 Sender ok");
    c.cmd("RSET").await;
    assert_eq!(c.cmd("MAIL FROM:<a@x.test> SIZE=1000000000000000").await, "452 4.3.1 Insufficient system storage");
}

#[tokio::test]
async fn a_tls_handshake_must_finish_within_command_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = common::test_certificate(dir.path());
    let toml = format!(
        "[server]\ncommand_timeout = \"1s\"\nidle_timeout = \"60s\"\n[server.tls]\ncert = {cert:?}\nkey = {key:?}\n"
    );
    let relay = TestRelay::start_with(common::test_config(&toml, dir.path()), dir).await;
    let mut c = relay.client().await;
    c.cmd("EHLO c").await;
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS");
    // A client that never sends its ClientHello is dropped at the command deadline, long
    // before the idle timeout (is_closed waits at most 10 s).
    c.send(b"\x16").await;
    assert!(c.is_closed().await);
}
