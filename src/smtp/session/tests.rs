//! The session driven in memory: lines in, exact replies out.

use super::*;

fn params() -> SessionParams {
    SessionParams {
        hostname: "relay.test".into(),
        max_message_size: 1000,
        max_recipients: 3,
        tls_available: true,
        relay_networks: vec!["127.0.0.0/8".parse().unwrap()],
        require_auth: false,
        allow_plaintext_auth: false,
        auth_enabled: true,
    }
}

struct Harness {
    session: Session,
    input: BytesMut,
    messages: Vec<Incoming>,
    credentials: Vec<Credentials>,
    closed: bool,
    starttls: bool,
    /// Refuse DATA's memory reservation.
    no_memory: bool,
    /// What the free-space check answers.
    room: bool,
}

impl Harness {
    fn new(params: SessionParams, peer: &str) -> Harness {
        Harness {
            session: Session::new(Arc::new(params), peer.parse().unwrap()),
            input: BytesMut::new(),
            messages: Vec::new(),
            credentials: Vec::new(),
            closed: false,
            starttls: false,
            no_memory: false,
            room: true,
        }
    }

    fn local() -> Harness {
        Harness::new(params(), "127.0.0.1:5000")
    }

    /// Send raw bytes; return every reply line produced, joined by CRLF.
    fn send(&mut self, bytes: &[u8]) -> String {
        self.input.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            match self.session.advance(&mut self.input) {
                Step::NeedInput => break,
                Step::Reply(r) => r.write_to(&mut out),
                Step::Close(r) => {
                    r.write_to(&mut out);
                    self.closed = true;
                    break;
                }
                Step::StartTls => {
                    self.starttls = true;
                    break;
                }
                Step::Authenticate(c) => {
                    let ok = c.password == "right";
                    let user = c.user.clone();
                    self.credentials.push(c);
                    match self.session.auth_result(ok.then_some(user)) {
                        Step::Reply(r) => r.write_to(&mut out),
                        Step::Close(r) => {
                            r.write_to(&mut out);
                            self.closed = true;
                            break;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                Step::ReserveData => match self.session.data_reserved(!self.no_memory) {
                    Step::Reply(r) => r.write_to(&mut out),
                    other => panic!("unexpected {other:?}"),
                },
                Step::CheckSpace { .. } => match self.session.space_checked(self.room) {
                    Step::Reply(r) => r.write_to(&mut out),
                    other => panic!("unexpected {other:?}"),
                },
                Step::Message(m) => {
                    self.messages.push(m);
                    reply::queued("ID").write_to(&mut out);
                }
            }
        }
        String::from_utf8(out).unwrap()
    }

    /// Send one command line and return the reply (code and text).
    fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).trim_end().to_string()
    }
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn a_whole_transaction() {
    let mut h = Harness::local();
    assert_eq!(
        h.cmd("EHLO client.test"),
        "250-relay.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
         250-ENHANCEDSTATUSCODES\r\n250 STARTTLS"
    );
    assert_eq!(h.cmd("MAIL FROM:<a@x.test> SIZE=10 BODY=8BITMIME"), "250 2.1.0 Sender ok");
    assert_eq!(h.cmd("RCPT TO:<b@y.test>"), "250 2.1.5 Recipient ok");
    assert_eq!(h.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>");
    assert_eq!(h.cmd("Subject: hi\r\n\r\nbody\r\n."), "250 2.0.0 Ok: queued as ID");
    assert_eq!(h.messages[0].sender, "a@x.test");
    assert_eq!(h.messages[0].recipients, ["b@y.test"]);
    assert_eq!(h.messages[0].data, b"Subject: hi\r\n\r\nbody\r\n");
    assert!(!h.session.in_transaction());
    assert_eq!(h.cmd("QUIT"), "221 2.0.0 Bye");
    assert!(h.closed);
}

#[test]
fn pipelined_commands_get_replies_in_order() {
    let mut h = Harness::local();
    h.cmd("EHLO c");
    let replies = h.send(b"MAIL FROM:<>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n");
    assert_eq!(
        replies,
        "250 2.1.0 Sender ok\r\n250 2.1.5 Recipient ok\r\n250 2.1.5 Recipient ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    assert_eq!(h.send(b"x\r\n.\r\nNOOP\r\n"), "250 2.0.0 Ok: queued as ID\r\n250 2.0.0 Ok\r\n");
    assert_eq!(h.messages[0].sender, "", "the null sender is accepted");
}

#[test]
fn data_without_memory_gets_452_and_the_transaction_stays_open() {
    let mut h = Harness::local();
    h.cmd("EHLO c");
    h.send(b"MAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\n");
    h.no_memory = true;
    assert_eq!(h.cmd("DATA"), "452 4.3.1 Insufficient system resources for the message now, try again later");
    assert!(!h.session.in_data());
    h.no_memory = false;
    assert_eq!(h.cmd("DATA"), "354 End data with <CR><LF>.<CR><LF>");
    assert_eq!(h.send(b"x\r\n.\r\n"), "250 2.0.0 Ok: queued as ID\r\n");
    assert_eq!(h.messages[0].recipients, ["b@y.test"]);
}

#[test]
fn sequence_errors() {
    let mut h = Harness::local();
    assert_eq!(h.cmd("MAIL FROM:<a@x.test>"), "503 5.5.1 Send EHLO or HELO first");
    assert_eq!(h.cmd("HELO c"), "250 relay.test");
    assert_eq!(h.cmd("RCPT TO:<b@y.test>"), "503 5.5.1 Send MAIL first");
    assert_eq!(h.cmd("DATA"), "503 5.5.1 Send MAIL first");
    assert_eq!(h.cmd("MAIL FROM:<a@x.test>"), "250 2.1.0 Sender ok");
    assert_eq!(h.cmd("MAIL FROM:<a@x.test>"), "503 5.5.1 Sender already given");
    assert_eq!(h.cmd("DATA"), "554 5.5.1 No valid recipients");
    assert_eq!(h.cmd("RSET"), "250 2.0.0 Ok");
    assert_eq!(h.cmd("RCPT TO:<b@y.test>"), "503 5.5.1 Send MAIL first");
}

#[test]
fn other_commands() {
    let mut h = Harness::local();
    assert_eq!(h.cmd("NOOP"), "250 2.0.0 Ok");
    assert!(h.cmd("VRFY someone").starts_with("252 2.5.0 "));
    assert_eq!(h.cmd("EXPN list"), "502 5.5.1 Command not implemented");
    assert_eq!(h.cmd("FOO"), "500 5.5.1 Command unrecognized");
    assert!(h.cmd("HELP").starts_with("214 2.0.0 "));
    assert_eq!(h.cmd("NO\0OP"), "500 5.5.2 NUL character in command");
}

#[test]
fn parameters_and_addresses() {
    let mut h = Harness::local();
    h.cmd("EHLO c");
    assert_eq!(h.cmd("MAIL FROM:<a@x.test> SIZE=1001"), "552 5.3.4 Message size exceeds fixed maximum message size");
    assert_eq!(
        h.cmd("MAIL FROM:<a@x.test> SIZE=99999999999999999999999999"),
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    assert_eq!(h.cmd("MAIL FROM:<a@x.test> RET=FULL"), "555 5.5.4 Parameter not recognized or not implemented");
    assert_eq!(h.cmd("MAIL FROM:<a@x.test> FOO=BAR"), "555 5.5.4 Parameter not recognized or not implemented");
    assert_eq!(h.cmd("MAIL FROM:<üser@x.test>"), "553 5.6.7 Non-ASCII address requires the SMTPUTF8 parameter");
    assert_eq!(h.cmd("MAIL FROM:<üser@x.test> SMTPUTF8"), "250 2.1.0 Sender ok");
    assert_eq!(h.cmd("RCPT TO:<b@y.test> NOTIFY=NEVER"), "555 5.5.4 Parameter not recognized or not implemented");
    assert_eq!(h.cmd("RCPT TO:<>"), "501 5.1.3 Bad recipient address syntax");
    assert_eq!(h.cmd("RCPT TO:<nodomain>"), "501 5.1.3 Bad recipient address syntax");
    assert_eq!(h.cmd("RCPT TO:<\"john doe\"@y.test>"), "250 2.1.5 Recipient ok");
    assert_eq!(h.cmd("RCPT TO:<ü@y.test>"), "250 2.1.5 Recipient ok");
    h.cmd("DATA");
    h.send(b"x\r\n.\r\n");
    assert_eq!(h.messages[0].recipients, ["\"john doe\"@y.test", "ü@y.test"]);
}

#[test]
fn recipient_limit_and_duplicates() {
    let mut h = Harness::local();
    h.cmd("EHLO c");
    h.cmd("MAIL FROM:<a@x.test>");
    // Domains compare case-insensitively, local parts as written; a repeat is not counted.
    for r in ["r1@y.test", "r2@y.test", "R2@Y.TEST", "r2@y.TEST"] {
        assert_eq!(h.cmd(&format!("RCPT TO:<{r}>")), "250 2.1.5 Recipient ok", "{r}");
    }
    assert_eq!(h.cmd("RCPT TO:<r3@y.test>"), "452 4.5.3 Too many recipients");
    h.cmd("DATA");
    h.send(b"x\r\n.\r\n");
    assert_eq!(h.messages[0].recipients, ["r1@y.test", "r2@y.test", "R2@Y.TEST"]);
}

#[test]
fn relay_is_denied_outside_relay_networks() {
    let mut h = Harness::new(params(), "192.0.2.7:5000");
    h.cmd("EHLO c");
    h.cmd("MAIL FROM:<a@x.test>");
    assert_eq!(h.cmd("RCPT TO:<b@y.test>"), "550 5.7.1 Relaying denied");
    let mut mapped = Harness::new(params(), "[::ffff:127.0.0.1]:5000");
    mapped.cmd("EHLO c");
    mapped.cmd("MAIL FROM:<a@x.test>");
    assert_eq!(mapped.cmd("RCPT TO:<b@y.test>"), "250 2.1.5 Recipient ok", "IPv4-mapped loopback");
}

#[test]
fn size_limit_on_data() {
    let mut h = Harness::local();
    h.cmd("EHLO c");
    h.cmd("MAIL FROM:<a@x.test>");
    h.cmd("RCPT TO:<b@y.test>");
    h.cmd("DATA");
    let big = format!("{}\r\n.\r\n", "x".repeat(1200));
    assert_eq!(h.send(big.as_bytes()), "552 5.3.4 Message size exceeds fixed maximum message size\r\n");
    assert!(h.messages.is_empty());
    assert!(!h.session.in_transaction(), "the transaction is over");
    assert_eq!(h.cmd("NOOP"), "250 2.0.0 Ok");
}

#[test]
fn long_lines_and_bare_line_endings() {
    let mut h = Harness::local();
    let long = format!("NOOP {}", "x".repeat(520));
    assert_eq!(h.cmd(&long), "500 5.5.2 Line too long");
    // Split over several reads, without an LF for more than 512 octets.
    assert_eq!(h.send("y".repeat(600).as_bytes()), "");
    assert_eq!(h.send(b"yyy\r\nNOOP\r\n"), "500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n");
    assert!(!h.closed);
    assert_eq!(
        h.send(b"NOOP\n"),
        "554 5.5.2 Bare CR or LF not allowed: lines must end with CRLF; closing connection\r\n"
    );
    assert!(h.closed);
}

#[test]
fn bare_lf_in_data_closes_the_session() {
    let mut h = Harness::local();
    h.cmd("EHLO c");
    h.cmd("MAIL FROM:<a@x.test>");
    h.cmd("RCPT TO:<b@y.test>");
    h.cmd("DATA");
    let replies = h.send(b"hi\n.\nMAIL FROM:<e@x.test>\r\n");
    assert!(replies.starts_with("554 5.5.2 "), "{replies}");
    assert!(h.closed);
    assert!(h.messages.is_empty());
}

#[test]
fn starttls_is_offered_and_resets_the_session() {
    let mut h = Harness::local();
    h.cmd("EHLO c");
    h.cmd("MAIL FROM:<a@x.test>");
    h.send(b"STARTTLS\r\n");
    assert!(h.starttls);
    h.session.tls_started();
    assert!(!h.session.in_transaction());
    assert_eq!(h.cmd("MAIL FROM:<a@x.test>"), "503 5.5.1 Send EHLO or HELO first");
    let ehlo = h.cmd("EHLO c");
    assert!(!ehlo.contains("STARTTLS") && ehlo.ends_with("250 AUTH PLAIN LOGIN"), "{ehlo}");
    assert_eq!(h.cmd("STARTTLS"), "503 5.5.1 TLS already active");
}

#[test]
fn auth_needs_tls_unless_plaintext_is_allowed() {
    let mut h = Harness::local();
    h.cmd("EHLO c");
    assert_eq!(
        h.cmd(&format!("AUTH PLAIN {}", b64("\0app\0right"))),
        "538 5.7.11 Encryption required for requested authentication mechanism"
    );
    let mut plain_ok = Harness::new(SessionParams { allow_plaintext_auth: true, ..params() }, "192.0.2.7:1");
    assert!(plain_ok.cmd("EHLO c").ends_with("250-STARTTLS\r\n250 AUTH PLAIN LOGIN"));
    assert_eq!(plain_ok.cmd(&format!("AUTH PLAIN {}", b64("\0app\0right"))), "235 2.7.0 Authentication successful");
    plain_ok.cmd("MAIL FROM:<a@x.test>");
    assert_eq!(plain_ok.cmd("RCPT TO:<b@y.test>"), "250 2.1.5 Recipient ok", "authenticated clients relay");
}

#[test]
fn auth_plain_and_login_exchanges() {
    let p = SessionParams { allow_plaintext_auth: true, ..params() };
    let mut h = Harness::new(p.clone(), "192.0.2.7:1");
    h.cmd("EHLO c");
    assert_eq!(h.send(b"AUTH PLAIN\r\n"), "334 \r\n");
    assert_eq!(h.cmd(&b64("\0app\0wrong")), "535 5.7.8 Authentication credentials invalid");
    assert_eq!(h.cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6");
    assert_eq!(h.cmd(&b64("app")), "334 UGFzc3dvcmQ6");
    assert_eq!(h.cmd(&b64("right")), "235 2.7.0 Authentication successful");
    assert_eq!(h.credentials[1].user, "app");
    assert_eq!(h.cmd("AUTH LOGIN"), "503 5.5.1 Already authenticated");

    let mut h = Harness::new(p.clone(), "192.0.2.7:1");
    h.cmd("EHLO c");
    assert_eq!(h.cmd("AUTH CRAM-MD5"), "504 5.5.4 Unrecognized authentication mechanism");
    assert_eq!(h.cmd("AUTH LOGIN"), "334 VXNlcm5hbWU6");
    assert_eq!(h.cmd("*"), "501 5.7.0 Authentication cancelled");
    assert_eq!(h.cmd("AUTH PLAIN !!!"), "501 5.5.2 Cannot decode the authentication response");
    assert_eq!(h.cmd(&format!("AUTH LOGIN {}", b64("app"))), "334 UGFzc3dvcmQ6");
    assert_eq!(h.cmd(&b64("x")), "535 5.7.8 Authentication credentials invalid");
    h.cmd(&format!("AUTH PLAIN {}", b64("\0app\0y")));
    assert_eq!(
        h.cmd(&format!("AUTH PLAIN {}", b64("\0app\0z"))),
        "421 4.7.0 Too many authentication failures, closing connection"
    );
    assert!(h.closed);
}

#[test]
fn require_auth_refuses_mail_from_anyone_unauthenticated() {
    let p = SessionParams { require_auth: true, allow_plaintext_auth: true, ..params() };
    let mut h = Harness::new(p, "127.0.0.1:1");
    h.cmd("EHLO c");
    assert_eq!(h.cmd("MAIL FROM:<a@x.test>"), "530 5.7.0 Authentication required");
    h.cmd(&format!("AUTH PLAIN {}", b64("\0app\0right")));
    assert_eq!(h.cmd("MAIL FROM:<a@x.test>"), "250 2.1.0 Sender ok");
}

#[test]
fn awaiting_tells_the_loop_which_deadline_runs() {
    let mut h = Harness::local();
    assert_eq!(h.session.awaiting(&h.input), Awaiting::NextCommand);
    h.send(b"EHL");
    assert_eq!(h.session.awaiting(&h.input), Awaiting::RestOfLine, "a line begun");
    h.send(b"O c\r\n");
    assert_eq!(h.session.awaiting(&h.input), Awaiting::NextCommand);
    h.send(format!("NOOP {}", "x".repeat(600)).as_bytes());
    assert!(h.input.is_empty(), "an overlong line is discarded as it comes");
    assert_eq!(h.session.awaiting(&h.input), Awaiting::RestOfLine, "still the same line");
    h.send(b"\r\nMAIL FROM:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n");
    assert_eq!(h.session.awaiting(&h.input), Awaiting::Data);
    h.send(b"x\r\n.\r\n");
    assert_eq!(h.session.awaiting(&h.input), Awaiting::NextCommand);
}

#[test]
fn mail_asks_for_room_and_is_refused_without_it() {
    let mut h = Harness::local();
    h.cmd("EHLO c");
    h.input.extend_from_slice(b"MAIL FROM:<a@x.test> SIZE=900\r\n");
    assert!(matches!(h.session.advance(&mut h.input), Step::CheckSpace { size: 900 }));
    assert!(matches!(h.session.space_checked(false), Step::Reply(r) if r == reply::INSUFFICIENT_STORAGE));
    assert!(!h.session.in_transaction(), "no transaction was opened");
    assert_eq!(h.cmd("RCPT TO:<b@y.test>"), "503 5.5.1 Send MAIL first");
    h.room = false;
    assert_eq!(h.cmd("MAIL FROM:<a@x.test>"), "452 4.3.1 Insufficient system storage");
    h.room = true;
    assert_eq!(h.cmd("MAIL FROM:<a@x.test>"), "250 2.1.0 Sender ok");
    assert_eq!(h.cmd("RCPT TO:<b@y.test>"), "250 2.1.5 Recipient ok");
}
