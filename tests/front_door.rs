//! The SMTP front door over real sockets: lettre as a real client, raw bytes for exact codes.

mod common;

use std::time::Duration;

use common::{RawClient, TestRelay, eventually};
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

/// A message as lettre sends it: lettre appends CRLF . CRLF itself, so the relay receives
/// these bytes plus one CRLF.
const MESSAGE: &[u8] = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: hello\r\n\r\nbody line";

fn lettre_to(relay: &TestRelay) -> lettre::transport::smtp::AsyncSmtpTransportBuilder {
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1").port(relay.addr.port())
}

fn envelope(from: Option<&str>, to: &[&str]) -> Envelope {
    Envelope::new(from.map(|f| f.parse().unwrap()), to.iter().map(|t| t.parse().unwrap()).collect()).unwrap()
}

#[tokio::test]
async fn lettre_delivers_one_file_per_recipient_byte_for_byte() {
    let relay = TestRelay::start("").await;
    let transport = lettre_to(&relay).build();
    let response = transport.send_raw(&envelope(Some("a@x.test"), &["b@y.test", "c@z.test"]), MESSAGE).await.unwrap();
    assert_eq!(u16::from(response.code()), 250);
    let text = response.message().next().unwrap().to_string();
    let id = text.split("queued as ").nth(1).unwrap().to_string();

    let files = relay.wait_outbox(2).await;
    let mut expected_body = MESSAGE.to_vec();
    expected_body.extend_from_slice(b"\r\n");
    for (i, (name, bytes)) in files.iter().enumerate() {
        assert_eq!(name, &format!("{id}-{i}.eml"));
        let (envelope_lines, received, rest) = common::split_delivered(bytes);
        let rcpt = ["b@y.test", "c@z.test"][i];
        assert_eq!(envelope_lines, format!("Return-Path: <a@x.test>\r\nDelivered-To: {rcpt}\r\n"));
        assert!(
            received.starts_with(&format!(
                "Received: from [127.0.0.1] ([127.0.0.1])\r\n\tby bccguard.localdomain (bccguard) with ESMTP id {id};\r\n\t"
            )),
            "{received}"
        );
        assert_eq!(rest, expected_body, "the message follows, unchanged");
    }
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_pipelined_dialogue_in_two_writes() {
    let relay = TestRelay::start("").await;
    let mut c = relay.client().await;
    let ehlo = c.cmd("EHLO client.test").await;
    for ext in ["PIPELINING", "SIZE 26214400", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"] {
        assert!(ehlo.contains(&format!("250-{ext}")) || ehlo.contains(&format!("250 {ext}")), "{ehlo}");
    }
    c.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n").await;
    assert_eq!(c.reply().await, "250 2.1.0 Sender ok");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient ok");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient ok");
    assert_eq!(c.reply().await, "354 End data with <CR><LF>.<CR><LF>");
    c.send(b"Subject: piped\r\n\r\n..dot\r\n.\r\nQUIT\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(c.reply().await, "221 2.0.0 Bye");
    let files = relay.wait_outbox(2).await;
    assert!(files[0].1.ends_with(b"Subject: piped\r\n\r\n.dot\r\n"), "dot stuffing undone");
}

#[tokio::test]
async fn the_null_sender_is_accepted() {
    let relay = TestRelay::start("").await;
    let transport = lettre_to(&relay).build();
    transport.send_raw(&envelope(None, &["b@y.test"]), MESSAGE).await.unwrap();
    let files = relay.wait_outbox(1).await;
    assert!(files[0].1.starts_with(b"Return-Path: <>\r\nDelivered-To: b@y.test\r\n"));
}

#[tokio::test]
async fn message_size_limit_at_mail_and_in_data() {
    let relay = TestRelay::start("[server]\nmax_message_size = \"1KiB\"\n").await;
    let mut c = relay.client().await;
    assert!(c.cmd("EHLO c").await.contains("250-SIZE 1024"));
    assert_eq!(
        c.cmd("MAIL FROM:<a@x.test> SIZE=2000").await,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(2000));
    let reply = c.transaction("a@x.test", &["b@y.test"], big.as_bytes()).await;
    assert_eq!(reply, "552 5.3.4 Message size exceeds fixed maximum message size");
    assert!(relay.outbox_files().is_empty(), "nothing kept");
    // The session goes on.
    let reply = c.transaction("a@x.test", &["b@y.test"], b"Subject: small\r\n\r\nok\r\n").await;
    assert!(reply.starts_with("250 "), "{reply}");
}

#[tokio::test]
async fn recipient_limit() {
    let relay = TestRelay::start("[server]\nmax_recipients = 2\n").await;
    let mut c = relay.client().await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@x.test>").await;
    assert_eq!(c.cmd("RCPT TO:<r1@y.test>").await, "250 2.1.5 Recipient ok");
    assert_eq!(c.cmd("RCPT TO:<r2@y.test>").await, "250 2.1.5 Recipient ok");
    assert_eq!(c.cmd("RCPT TO:<r3@y.test>").await, "452 4.5.3 Too many recipients");
}

#[tokio::test]
async fn command_lines_over_512_octets() {
    let relay = TestRelay::start("").await;
    let mut c = relay.client().await;
    let line = format!("NOOP {}", "a".repeat(506));
    assert_eq!(line.len() + 2, 513);
    assert_eq!(c.cmd(&line).await, "500 5.5.2 Line too long");
    assert_eq!(c.cmd(&line[..line.len() - 1]).await, "250 2.0.0 Ok", "512 octets are fine");
}

#[tokio::test]
async fn connection_limit() {
    let relay = TestRelay::start("[server]\nmax_connections = 2\n").await;
    let _a = relay.client().await;
    let _b = relay.client().await;
    let mut c = RawClient::connect(relay.addr, None).await;
    assert_eq!(c.reply().await, "421 4.7.0 Too many connections, try again later");
    assert!(c.is_closed().await);
    drop(_a);
    // The slot is freed once the first session ends.
    let mut ok = false;
    for _ in 0..100 {
        let mut d = RawClient::connect(relay.addr, None).await;
        if d.reply().await.starts_with("220 ") {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a new session is accepted after one closes");
}

#[tokio::test]
async fn idle_timeout_closes_with_421() {
    let relay = TestRelay::start("[server]\nidle_timeout = \"1s\"\n").await;
    let mut c = relay.client().await;
    c.cmd("EHLO c").await;
    assert_eq!(c.reply().await, "421 4.4.2 Idle timeout, closing connection");
    assert!(c.is_closed().await);
}

#[tokio::test]
async fn relay_denied_outside_relay_networks() {
    let relay = TestRelay::start("[access]\nrelay_networks = [\"127.0.0.1/32\"]\n").await;
    let mut outsider = RawClient::connect(relay.addr, Some("127.0.0.2")).await;
    outsider.reply().await;
    outsider.cmd("EHLO c").await;
    assert_eq!(outsider.cmd("MAIL FROM:<a@x.test>").await, "250 2.1.0 Sender ok");
    assert_eq!(outsider.cmd("RCPT TO:<b@y.test>").await, "550 5.7.1 Relaying denied");
    let mut insider = relay.client().await;
    insider.cmd("EHLO c").await;
    insider.cmd("MAIL FROM:<a@x.test>").await;
    assert_eq!(insider.cmd("RCPT TO:<b@y.test>").await, "250 2.1.5 Recipient ok");
}

/// The configuration for TLS and AUTH tests: a test certificate and one user, `app`/`s3cret`.
fn tls_auth_config(dir: &std::path::Path, extra: &str) -> (String, String) {
    let (cert, key, pem) = common::test_certificate(dir);
    let hash = bccguard::smtp::auth::hash_password("s3cret").unwrap();
    let toml = format!(
        "[server.tls]\ncert = {cert:?}\nkey = {key:?}\n[access]\n{extra}\n[[access.users]]\nname = \"app\"\npassword_hash = {hash:?}\n"
    );
    (toml, pem)
}

async fn tls_relay(extra: &str) -> (TestRelay, String) {
    let dir = tempfile::tempdir().unwrap();
    let (toml, pem) = tls_auth_config(dir.path(), extra);
    let config = common::test_config(&toml, dir.path());
    (TestRelay::start_with(config, dir).await, pem)
}

fn lettre_tls(relay: &TestRelay, pem: &str, user: &str, password: &str) -> AsyncSmtpTransport<Tokio1Executor> {
    let tls = TlsParameters::builder("localhost".into())
        .add_root_certificate(Certificate::from_pem(pem.as_bytes()).unwrap())
        .build()
        .unwrap();
    AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("localhost")
        .port(relay.addr.port())
        .tls(Tls::Required(tls))
        .credentials(Credentials::new(user.into(), password.into()))
        .build()
}

#[tokio::test]
async fn starttls_then_auth_with_lettre() {
    // Only authenticated clients may relay here, so AUTH must have worked.
    let (relay, pem) = tls_relay("require_auth = true").await;
    let good = lettre_tls(&relay, &pem, "app", "s3cret");
    let response = good.send_raw(&envelope(Some("a@x.test"), &["b@y.test"]), MESSAGE).await.unwrap();
    assert_eq!(u16::from(response.code()), 250);
    let files = relay.wait_outbox(1).await;
    assert!(String::from_utf8_lossy(&files[0].1).contains("with ESMTPSA id"));

    let bad = lettre_tls(&relay, &pem, "app", "wrong");
    let err = bad.send_raw(&envelope(Some("a@x.test"), &["b@y.test"]), MESSAGE).await.unwrap_err();
    assert_eq!(err.status().map(u16::from), Some(535), "{err}");
    assert!(relay.spooled().is_empty(), "nothing more accepted");
    assert_eq!(relay.outbox_files().len(), 1, "nothing more delivered");
}

#[tokio::test]
async fn auth_is_not_offered_in_the_clear() {
    let (relay, _) = tls_relay("").await;
    let mut c = relay.client().await;
    let ehlo = c.cmd("EHLO c").await;
    assert!(ehlo.contains("250-STARTTLS") || ehlo.ends_with("250 STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(
        c.cmd("AUTH PLAIN AGFwcABzM2NyZXQ=").await,
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
}

#[tokio::test]
async fn input_pipelined_after_starttls_is_discarded() {
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, pki_types::CertificateDer, pki_types::ServerName};
    let (relay, pem) = tls_relay("").await;
    let mut c = relay.client().await;
    c.cmd("EHLO c").await;
    // A man in the middle appends a command after STARTTLS, in the clear.
    c.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n").await;
    assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS");
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()).unwrap();
    let config = ClientConfig::builder_with_provider(bccguard::smtp::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tls = connector.connect(ServerName::try_from("localhost").unwrap(), c.into_inner()).await.unwrap();
    let mut tls = tokio::io::BufReader::new(tls);
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    tls.get_mut().write_all(b"EHLO c\r\nMAIL FROM:<a@x.test>\r\n").await.unwrap();
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        tls.read_line(&mut line).await.unwrap();
        let last = line.as_bytes().get(3) == Some(&b' ');
        lines.push(line);
        if last && lines.len() > 1 && lines.last().unwrap().starts_with("250 2.1.0") {
            break;
        }
        if last && lines.last().unwrap().starts_with("503") {
            panic!("the injected MAIL was executed: {lines:?}");
        }
    }
    assert!(lines[0].starts_with("250-bccguard.localdomain"), "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("250 AUTH PLAIN LOGIN")), "AUTH offered under TLS: {lines:?}");
}

#[tokio::test]
async fn bare_lf_in_a_command_is_refused_and_closes() {
    let relay = TestRelay::start("").await;
    let mut c = relay.client().await;
    c.send(b"EHLO c\nMAIL FROM:<a@x.test>\r\n").await;
    assert_eq!(c.reply().await, "554 5.5.2 Bare CR or LF not allowed: lines must end with CRLF; closing connection");
    assert!(c.is_closed().await);
}

#[tokio::test]
async fn shutdown_closes_idle_sessions_and_lets_transactions_finish() {
    let relay = TestRelay::start("").await;
    let mut idle = relay.client().await;
    idle.cmd("EHLO idle").await;
    let mut busy = relay.client().await;
    busy.cmd("EHLO busy").await;
    busy.cmd("MAIL FROM:<a@x.test>").await;
    busy.cmd("RCPT TO:<b@y.test>").await;
    assert!(busy.cmd("DATA").await.starts_with("354"));
    busy.send(b"Subject: in flight\r\n\r\n").await;

    relay.begin_shutdown();
    assert_eq!(idle.reply().await, "421 4.3.2 Service shutting down, try again later");
    assert!(idle.is_closed().await);
    // New connections are refused once the listener is closed.
    eventually("listener closed", || std::net::TcpStream::connect(relay.addr).is_err()).await;

    busy.send(b"the rest\r\n.\r\n").await;
    assert!(busy.reply().await.starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(busy.reply().await, "421 4.3.2 Service shutting down, try again later");
    assert!(busy.is_closed().await);
    let (result, dir) = relay.shutdown().await;
    result.unwrap();
    let spool = bccguard::spool::SpoolPaths::new(&dir.path().join("spool"));
    let delivered = common::files_in(&dir.path().join("outbox")).len();
    assert_eq!(delivered + spool.ids().unwrap().len(), 1, "the transaction in flight was kept");
}

#[tokio::test]
async fn shutdown_grace_ends_stuck_transactions() {
    let relay = TestRelay::start("[server]\nshutdown_grace = \"1s\"\n").await;
    let mut stuck = relay.client().await;
    stuck.cmd("EHLO c").await;
    stuck.cmd("MAIL FROM:<a@x.test>").await;
    relay.begin_shutdown();
    assert_eq!(stuck.reply().await, "421 4.3.2 Service shutting down, try again later");
    relay.stop().await.unwrap();
}

/// Each of these, inside the data, must not end it: the session is refused or the bytes
/// stay message content, and the transaction after them is never run on its own.
#[tokio::test]
async fn smtp_smuggling_sequences_never_start_a_second_transaction() {
    let sequences: [(&str, &[u8]); 12] = [
        ("LF.LF", b"\n.\n"),
        ("CR.CR", b"\r.\r"),
        ("LF.CRLF", b"\n.\r\n"),
        ("CR.LF", b"\r.\n"),
        ("LF.CR", b"\n.\r"),
        ("CR.CRLF", b"\r.\r\n"),
        ("CRLF.LF", b"\r\n.\n"),
        ("CRLF.CR", b"\r\n.\r"),
        ("CRLF NUL . CRLF", b"\r\n\0.\r\n"),
        ("CRLF . NUL CRLF", b"\r\n.\0\r\n"),
        ("CRLF . CR CRLF", b"\r\n.\r\r\n"),
        ("CR CRLF . CR CRLF", b"\r\r\n.\r\r\n"),
    ];
    let relay = TestRelay::start("").await;
    for (name, seq) in sequences {
        let mut c = relay.client().await;
        c.cmd("EHLO c").await;
        c.cmd("MAIL FROM:<sender@x.test>").await;
        c.cmd("RCPT TO:<first@y.test>").await;
        assert!(c.cmd("DATA").await.starts_with("354"));
        let mut data = b"Subject: first\r\n\r\nhello".to_vec();
        data.extend_from_slice(seq);
        data.extend_from_slice(
            b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@y.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n",
        );
        c.try_send(&data).await;
        let first = c.reply().await;
        assert!(first.starts_with("554 5."), "{name}: refused, got {first:?}");
        // Either the session was closed, or it is in sync: the next reply is QUIT's, so the
        // smuggled commands were never run.
        if c.try_send(b"QUIT\r\n").await {
            let next = c.reply().await;
            assert!(next.is_empty() || next == "221 2.0.0 Bye", "{name}: {next:?}");
        }
    }
    assert!(relay.spooled().is_empty(), "nothing accepted");
    assert!(relay.outbox_files().is_empty(), "nothing delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_sessions_each_complete_a_transaction() {
    // All from 127.0.0.1: lift the per-client limit (50 by default), the total stays.
    let relay = TestRelay::start("[server]\nmax_connections_per_client = 0\n").await;
    let addr = relay.addr;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300 {
        tasks.spawn(async move {
            let mut c = RawClient::connect(addr, None).await;
            assert!(c.reply().await.starts_with("220"));
            c.cmd("EHLO load").await;
            let data = format!("Subject: load {i}\r\n\r\nmessage {i}\r\n");
            let reply = c.transaction("a@x.test", &[&format!("r{i}@y.test")], data.as_bytes()).await;
            assert!(reply.starts_with("250 2.0.0"), "{i}: {reply}");
            c.cmd("QUIT").await
        });
    }
    while let Some(r) = tasks.join_next().await {
        assert_eq!(r.unwrap(), "221 2.0.0 Bye");
    }
    relay.wait_outbox(300).await;
    // The relay still answers.
    let mut c = relay.client().await;
    assert_eq!(c.cmd("NOOP").await, "250 2.0.0 Ok");
    relay.stop().await.unwrap();
}

/// A burst of connections all wait in the accept queue: with the 128-connection backlog of
/// tokio's and std's `bind`, Linux would drop the excess handshakes and those clients would
/// wait up to half a minute for a retransmitted SYN-ACK.
#[tokio::test]
async fn a_burst_of_connections_fits_in_the_listen_backlog() {
    let listener = bccguard::listen("127.0.0.1:0".parse().unwrap(), bccguard::MIN_BACKLOG).unwrap();
    let addr = listener.local_addr().unwrap();
    let clients: Vec<std::net::TcpStream> = (0..300).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    let mut queued = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await {
        queued += 1;
    }
    assert_eq!(queued, clients.len(), "every connection was in the accept queue");
}
