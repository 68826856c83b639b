//! The upstream client pipelines (RFC 2920) when the relay offers PIPELINING, against a
//! scripted upstream that refuses to answer a group before it has read all of it (up to
//! DATA, or the final dot with nothing after it): a client that waited for each reply would
//! hang there and its copies would be deferred. Replies are matched to commands in order, and
//! per-recipient outcomes survive rejected RCPTs, a refused DATA, a 421 mid-group, replies
//! written a byte at a time, and an upstream without PIPELINING.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bccguard::delivery::outcome::recorded;
use bccguard::delivery::reply::Reply;
use bccguard::delivery::smtp::SmtpUpstream;
use bccguard::delivery::{Copy, Outcome};
use bccguard::spool::content::Content;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A reply for a command line (without its CRLF; `.` for the end of data), given the
/// recipients accepted so far in the transaction; `None` for the usual one.
type Answer = Arc<dyn Fn(&str, &[String]) -> Option<String> + Send + Sync>;

#[derive(Clone, Default)]
struct Message {
    from: String,
    rcpts: Vec<String>,
    data: Vec<u8>,
}

#[derive(Default)]
struct Log {
    /// Every byte received, per connection.
    raw: Vec<Vec<u8>>,
    /// Writes of replies after EHLO (round trips), per connection.
    rounds: Vec<usize>,
    messages: Vec<Message>,
    /// A command arrived with more bytes behind it although PIPELINING was not offered.
    pipelined_unasked: bool,
    /// Offer CHUNKING (BDAT).
    chunking: bool,
    /// Offer AUTH LOGIN only, and require it.
    login_only: bool,
}

struct Upstream {
    port: u16,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start(pipelining: bool, trickle: bool, answer: Answer) -> Upstream {
        Self::start_with(Log::default(), pipelining, trickle, answer).await
    }

    async fn start_with(log: Log, pipelining: bool, trickle: bool, answer: Answer) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(log));
        let l = log.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (l, a) = (l.clone(), answer.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, pipelining, trickle, l, a).await;
                });
            }
        });
        Upstream { port, log, task }
    }

    fn upstream(&self, extra: &str) -> SmtpUpstream {
        let text = format!(
            "[upstream]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\ntimeout = \"5s\"\n{extra}\n",
            self.port
        );
        let config = bccguard::config::load_str(Some(&text), &[]).unwrap();
        SmtpUpstream::from_config(&config).unwrap()
    }

    fn log<T>(&self, f: impl FnOnce(&Log) -> T) -> T {
        f(&self.log.lock().unwrap())
    }
}

async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8], trickle: bool) -> std::io::Result<()> {
    if trickle {
        for b in bytes {
            stream.write_all(std::slice::from_ref(b)).await?;
            tokio::task::yield_now().await;
        }
        Ok(())
    } else {
        stream.write_all(bytes).await
    }
}

fn take_line(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let end = buf.iter().position(|b| *b == b'\n')?;
    Some(buf.drain(..=end).collect())
}

async fn serve(
    stream: TcpStream,
    pipelining: bool,
    trickle: bool,
    log: Arc<Mutex<Log>>,
    answer: Answer,
) -> std::io::Result<()> {
    let mut stream = stream;
    write(&mut stream, b"220 upstream.test ESMTP\r\n", trickle).await?;
    let auth = log.lock().unwrap().login_only;
    serve_on(stream, pipelining, trickle, log, answer, auth).await
}

/// The dialogue after the greeting; `auth`: offer AUTH PLAIN and require it before MAIL.
async fn serve_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    pipelining: bool,
    trickle: bool,
    log: Arc<Mutex<Log>>,
    answer: Answer,
    auth: bool,
) -> std::io::Result<()> {
    let mut authenticated = !auth;
    // AUTH LOGIN: 1 waiting for the user name, 2 for the password.
    let mut login = 0;
    let conn = {
        let mut l = log.lock().unwrap();
        l.raw.push(Vec::new());
        l.rounds.push(0);
        l.raw.len() - 1
    };
    let (mut buf, mut replies, mut data) = (Vec::new(), String::new(), None::<Vec<u8>>);
    let mut message = Message::default();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut ehlo_done = false;
    let mut bdat: Option<(usize, Vec<u8>)> = None;
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        log.lock().unwrap().raw[conn].extend_from_slice(&chunk[..n]);
        // Whether the last thing read ends a group: only then are replies written.
        let mut boundary = false;
        let mut close = false;
        loop {
            if let Some((left, mut d)) = bdat.take() {
                let n = left.min(buf.len());
                d.extend(buf.drain(..n));
                if n < left {
                    bdat = Some((left - n, d));
                    break;
                }
                let reply = if message.rcpts.is_empty() {
                    "554 5.5.1 no valid recipients".to_string()
                } else {
                    answer(".", &message.rcpts).unwrap_or_else(|| "250 2.0.0 queued".into())
                };
                if reply.starts_with('2') {
                    message.data = d;
                    log.lock().unwrap().messages.push(std::mem::take(&mut message));
                }
                replies.push_str(&format!("{reply}\r\n"));
                boundary = buf.is_empty();
                continue;
            }
            let Some(line) = take_line(&mut buf) else { break };
            if let Some(d) = data.as_mut() {
                if line == b".\r\n" {
                    let reply = answer(".", &message.rcpts).unwrap_or_else(|| "250 2.0.0 queued".into());
                    if reply.starts_with('2') {
                        message.data = data.take().unwrap();
                        log.lock().unwrap().messages.push(std::mem::take(&mut message));
                    }
                    data = None;
                    replies.push_str(&format!("{reply}\r\n"));
                    boundary = buf.is_empty();
                    // An upstream that drops the connection after answering, without a word.
                    if reply.ends_with("[then close]") {
                        close = true;
                        break;
                    }
                } else {
                    d.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
                }
                continue;
            }
            if !pipelining && !buf.is_empty() {
                log.lock().unwrap().pipelined_unasked = true;
            }
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            if login > 0 {
                let (expected, next) =
                    if login == 1 { ("cmVsYXk=", "334 UGFzc3dvcmQ6") } else { ("c2VjcmV0", "235 2.7.0 ok") };
                let reply = if text == expected { next } else { "535 5.7.8 bad credentials" };
                login = if text == expected && login == 1 { 2 } else { 0 };
                authenticated |= reply.starts_with("235");
                replies.push_str(&format!("{reply}\r\n"));
                boundary = true;
                continue;
            }
            let upper = text.to_ascii_uppercase();
            let usual = if upper.starts_with("EHLO") {
                let mut p = if pipelining { "250-PIPELINING\r\n" } else { "" }.to_string();
                if log.lock().unwrap().chunking {
                    p.push_str("250-CHUNKING\r\n");
                }
                let login_only = log.lock().unwrap().login_only;
                let a = match (auth, login_only) {
                    (false, _) => "",
                    (true, true) => "250-AUTH LOGIN\r\n",
                    (true, false) => "250-AUTH LOGIN PLAIN\r\n",
                };
                format!("250-upstream.test\r\n{p}{a}250-8BITMIME\r\n250-SIZE 1000000\r\n250 SMTPUTF8")
            } else if upper == "AUTH LOGIN" {
                login = 1;
                "334 VXNlcm5hbWU6".into()
            } else if upper.starts_with("AUTH PLAIN ") {
                // user "relay", password "secret"
                authenticated = &text[11..] == "AHJlbGF5AHNlY3JldA==";
                if authenticated { "235 2.7.0 ok".into() } else { "535 5.7.8 bad credentials".into() }
            } else if upper.starts_with("BDAT ") {
                assert!(upper.ends_with(" LAST"), "{text}");
                bdat = Some((upper[5..upper.len() - 5].parse().unwrap(), Vec::new()));
                continue;
            } else if upper.starts_with("MAIL FROM:") && !authenticated {
                "530 5.7.0 Authentication required".into()
            } else if upper.starts_with("MAIL FROM:") {
                message = Message { from: text[11..text.find('>').unwrap()].to_string(), ..Message::default() };
                "250 2.1.0 ok".into()
            } else if upper.starts_with("RCPT TO:") {
                "250 2.1.5 ok".into()
            } else if upper == "DATA" {
                if message.rcpts.is_empty() { "554 5.5.1 no valid recipients".into() } else { "354 go ahead".into() }
            } else if upper == "QUIT" {
                close = true;
                "221 2.0.0 bye".into()
            } else {
                "250 2.0.0 ok".into()
            };
            let reply = answer(&text, &message.rcpts).unwrap_or(usual);
            if upper.starts_with("RCPT TO:") && reply.starts_with('2') {
                message.rcpts.push(text[9..text.find('>').unwrap()].to_string());
            }
            if upper == "DATA" && reply.starts_with("354") {
                data = Some(Vec::new());
            }
            replies.push_str(&format!("{reply}\r\n"));
            close |= reply.starts_with("421");
            boundary = !(upper.starts_with("MAIL") || upper.starts_with("RCPT")) || !pipelining;
            if close {
                break;
            }
        }
        if (boundary || close) && !replies.is_empty() {
            write(&mut stream, std::mem::take(&mut replies).as_bytes(), trickle).await?;
            if ehlo_done {
                log.lock().unwrap().rounds[conn] += 1;
            }
            ehlo_done = true;
        }
        if close {
            return Ok(());
        }
    }
}

fn copy(text: &str) -> Copy {
    let (head, body) = text.split_at(text.find("\r\n\r\n").unwrap() + 4);
    Copy {
        head: Bytes::copy_from_slice(head.as_bytes()),
        body: Content::Memory(Bytes::copy_from_slice(body.as_bytes())),
        eight_bit: false,
    }
}

const TEXT: &str = "Subject: hi\r\nTo: a@x.test\r\n\r\n.leading dot\r\nmiddle\r\n..two dots\r\n.\r\nend\r\n";

fn usual() -> Answer {
    Arc::new(|_, _| None)
}

fn delivered(outcomes: &[Outcome]) -> bool {
    outcomes.iter().all(|o| matches!(o, Outcome::Delivered(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_are_pipelined_one_round_trip_each_with_exact_bytes() {
    let server = Upstream::start(true, false, usual()).await;
    let upstream = Arc::new(server.upstream("max_connections = 1"));
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..5 {
        let upstream = upstream.clone();
        sends.spawn(async move {
            let rcpts = [format!("r{i}@x.test"), format!("s{i}@x.test")];
            let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
            upstream.send("app@example.com", &rcpts, &copy(TEXT)).await
        });
    }
    while let Some(outcomes) = sends.join_next().await {
        let outcomes = outcomes.unwrap();
        assert!(delivered(&outcomes), "{outcomes:?}");
        assert_eq!(outcomes.len(), 2);
    }
    server.log(|log| {
        assert_eq!(log.raw.len(), 1, "one connection");
        assert_eq!(log.messages.len(), 5, "each copy once");
        for m in &log.messages {
            assert_eq!(m.data, TEXT.as_bytes(), "the content, unstuffed, is the copy");
            assert_eq!(m.from, "app@example.com");
            assert_eq!(m.rcpts.len(), 2);
        }
        // The first group, then one write per copy (its dot, with the next group).
        assert!(log.rounds[0] <= 6, "{} round trips for 5 copies", log.rounds[0]);
        let raw = String::from_utf8_lossy(&log.raw[0]);
        assert!(raw.contains("DATA\r\nSubject: hi\r\nTo: a@x.test\r\n\r\n..leading dot\r\nmiddle\r\n...two dots\r\n..\r\nend\r\n.\r\nMAIL FROM:<app@example.com>\r\nRCPT TO:<"), "{raw}");
        assert_eq!(raw.matches("\r\n.\r\n").count(), 5);
        assert!(!raw.replace("\r\n", "").contains(['\r', '\n']), "no bare CR or LF");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_recipients_and_a_refused_data_keep_per_recipient_outcomes() {
    let answer: Answer = Arc::new(|line, rcpts| {
        if line.contains("nobody@") {
            Some("550 5.1.1 no such user".into())
        } else if line.contains("later@") {
            Some("451 4.3.0 try later".into())
        } else if line == "DATA" && rcpts.iter().any(|r| r.starts_with("spam")) {
            Some("554 5.7.1 not from you".into())
        } else {
            None
        }
    });
    let server = Upstream::start(true, false, answer).await;
    let upstream = server.upstream("max_connections = 1");
    let outcomes = upstream.send("app@example.com", &["a@x.test", "nobody@x.test", "later@x.test"], &copy(TEXT)).await;
    assert!(matches!(&outcomes[0], Outcome::Delivered(t) if t.code == 250), "{outcomes:?}");
    assert_eq!(outcomes[1], failed("550 5.1.1 no such user"));
    assert_eq!(outcomes[2], deferred("451 4.3.0 try later"));
    // Nobody accepted: DATA is refused, no content goes, RSET follows.
    let outcomes = upstream.send("app@example.com", &["nobody@x.test"], &copy("Subject: none\r\n\r\nX\r\n")).await;
    assert_eq!(outcomes, vec![failed("550 5.1.1 no such user")]);
    // DATA refused after an accepted RCPT.
    let outcomes = upstream.send("app@example.com", &["spam@x.test", "nobody@x.test"], &copy(TEXT)).await;
    assert_eq!(outcomes, vec![failed("554 5.7.1 not from you"), failed("550 5.1.1 no such user")]);
    // The connection is still good.
    assert!(delivered(&upstream.send("app@example.com", &["b@x.test"], &copy(TEXT)).await));
    server.log(|log| {
        assert_eq!(log.raw.len(), 1, "one connection throughout");
        assert_eq!(log.messages.len(), 2);
        let raw = String::from_utf8_lossy(&log.raw[0]);
        assert!(!raw.contains("Subject: none"), "no content without a recipient");
        assert!(raw.contains("RCPT TO:<nobody@x.test>\r\nDATA\r\nRSET\r\n"), "{raw}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_mid_group_defers_what_is_left_and_a_new_connection_goes_on() {
    let first = Arc::new(Mutex::new(true));
    let answer: Answer = Arc::new(move |line, _| {
        if line.contains("RCPT TO:<b@") && std::mem::take(&mut *first.lock().unwrap()) {
            Some("421 4.3.2 going down".into())
        } else if line.contains("RCPT TO:<a@") {
            Some("550 5.1.1 gone".into())
        } else {
            None
        }
    });
    let server = Upstream::start(true, false, answer).await;
    let upstream = server.upstream("max_connections = 1");
    let outcomes = upstream.send("app@example.com", &["a@x.test", "b@x.test", "c@x.test"], &copy(TEXT)).await;
    assert_eq!(
        outcomes,
        vec![failed("550 5.1.1 gone"), deferred("421 4.3.2 going down"), deferred("421 4.3.2 going down"),]
    );
    let outcomes = upstream.send("app@example.com", &["b@x.test", "c@x.test"], &copy(TEXT)).await;
    assert!(delivered(&outcomes), "{outcomes:?}");
    server.log(|log| {
        assert_eq!(log.raw.len(), 2, "the closed connection is not reused");
        assert_eq!(log.messages.len(), 1);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_written_a_byte_at_a_time_and_multiline() {
    let answer: Answer = Arc::new(|line, _| {
        line.starts_with("RCPT").then(|| "250-2.1.5 first line\r\n250-2.1.5 second\r\n250 2.1.5 ok".into())
    });
    let server = Upstream::start(true, true, answer).await;
    let upstream = Arc::new(server.upstream("max_connections = 2"));
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..4 {
        let upstream = upstream.clone();
        sends.spawn(async move {
            let rcpt = format!("r{i}@x.test");
            upstream.send("app@example.com", &[rcpt.as_str(), "z@x.test"], &copy(TEXT)).await
        });
    }
    while let Some(outcomes) = sends.join_next().await {
        let outcomes = outcomes.unwrap();
        assert!(delivered(&outcomes), "{outcomes:?}");
    }
    server.log(|log| {
        assert_eq!(log.messages.len(), 4);
        assert!(log.raw.len() <= 2, "the connection cap holds");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pipelining_one_command_at_a_time() {
    let answer: Answer = Arc::new(|line, _| line.contains("nobody@").then(|| "550 5.1.1 no".into()));
    let server = Upstream::start(false, false, answer).await;
    let upstream = Arc::new(server.upstream("max_connections = 1"));
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..3 {
        let upstream = upstream.clone();
        sends.spawn(async move {
            let rcpt = format!("r{i}@x.test");
            upstream.send("", &[rcpt.as_str(), "nobody@x.test"], &copy(TEXT)).await
        });
    }
    while let Some(outcomes) = sends.join_next().await {
        let outcomes = outcomes.unwrap();
        assert!(matches!(outcomes[0], Outcome::Delivered(_)), "{outcomes:?}");
        assert_eq!(outcomes[1], failed("550 5.1.1 no"));
    }
    server.log(|log| {
        assert!(!log.pipelined_unasked, "no command was sent before the previous reply");
        assert_eq!(log.messages.len(), 3);
        assert!(log.messages.iter().all(|m| m.data == TEXT.as_bytes() && m.from.is_empty()));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_cannot_be_read_never_gets_its_final_dot() {
    let server = Upstream::start(true, false, usual()).await;
    let upstream = server.upstream("max_connections = 1");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short");
    std::fs::write(&path, vec![b'a'; 1000]).unwrap();
    let file = Arc::new(std::fs::File::open(&path).unwrap());
    // The region runs past the end of the file: the read fails part way.
    let body = Content::File { file, offset: 0, len: 300_000 };
    let broken = Copy { head: Bytes::from_static(b"Subject: broken\r\n\r\n"), body, eight_bit: false };
    let outcomes = upstream.send("app@example.com", &["a@x.test"], &broken).await;
    assert!(
        matches!(&outcomes[0], o @ Outcome::Deferred(_) if o.to_string().contains("could not be read")),
        "{outcomes:?}"
    );
    assert!(delivered(&upstream.send("app@example.com", &["a@x.test"], &copy(TEXT)).await));
    server.log(|log| {
        assert_eq!(log.messages.len(), 1, "only the good copy");
        assert_eq!(log.raw.len(), 2, "the poisoned connection was dropped");
        assert!(!String::from_utf8_lossy(&log.raw[0]).contains("\r\n.\r\n"), "no final dot");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_times_out_per_copy() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let text = format!("[upstream]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\ntimeout = \"1s\"\n");
    let config = bccguard::config::load_str(Some(&text), &[]).unwrap();
    let upstream = SmtpUpstream::from_config(&config).unwrap();
    let started = std::time::Instant::now();
    let outcomes = upstream.send("app@example.com", &["a@x.test"], &copy(TEXT)).await;
    assert!(
        matches!(&outcomes[0], o @ Outcome::Deferred(_) if o.to_string().contains("no answer from")),
        "{outcomes:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// A CA (written to `dir/ca.pem`) and a TLS acceptor whose certificate it signed, for
/// "localhost".
fn tls_acceptor(dir: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().signed_by(&key, &ca).unwrap();
    let der_key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], der_key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// STARTTLS then AUTH PLAIN, and implicit TLS then AUTH PLAIN, with the relay's CA from
/// `upstream.ca_file`: the copies pipeline inside TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_implicit_tls_with_auth() {
    let dir = tempfile::tempdir().unwrap();
    let acceptor = tls_acceptor(dir.path());
    for implicit in [false, true] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Log::default()));
        let (l, acceptor) = (log.clone(), acceptor.clone());
        let server = tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                let (l, acceptor) = (l.clone(), acceptor.clone());
                tokio::spawn(async move {
                    if !implicit {
                        tcp.write_all(b"220 upstream.test ESMTP\r\n").await?;
                        let mut line = Vec::new();
                        let mut byte = [0u8; 1];
                        for expected in ["EHLO", "STARTTLS"] {
                            line.clear();
                            while line.last() != Some(&b'\n') {
                                tcp.read_exact(&mut byte).await?;
                                line.push(byte[0]);
                            }
                            assert!(line.starts_with(expected.as_bytes()), "{}", String::from_utf8_lossy(&line));
                            let reply: &[u8] = if expected == "EHLO" {
                                b"250-upstream.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
                            } else {
                                b"220 2.0.0 go ahead\r\n"
                            };
                            tcp.write_all(reply).await?;
                        }
                    }
                    let mut tls = acceptor.accept(tcp).await?;
                    if implicit {
                        tls.write_all(b"220 upstream.test ESMTP\r\n").await?;
                    }
                    serve_on(tls, true, false, l, usual(), true).await
                });
            }
        });
        let text = format!(
            "[upstream]\nhost = \"localhost\"\nport = {port}\ntls = \"{}\"\ntimeout = \"5s\"\n\
             ca_file = \"{}\"\nusername = \"relay\"\npassword = \"secret\"\nmax_connections = 1\n",
            if implicit { "tls" } else { "starttls" },
            dir.path().join("ca.pem").display()
        );
        let config = bccguard::config::load_str(Some(&text), &[]).unwrap();
        let upstream = Arc::new(SmtpUpstream::from_config(&config).unwrap());
        let mut sends = tokio::task::JoinSet::new();
        for i in 0..3 {
            let upstream = upstream.clone();
            sends.spawn(async move {
                let rcpt = format!("r{i}@x.test");
                upstream.send("app@example.com", &[rcpt.as_str()], &copy(TEXT)).await
            });
        }
        while let Some(outcomes) = sends.join_next().await {
            let outcomes = outcomes.unwrap();
            assert!(delivered(&outcomes), "implicit={implicit}: {outcomes:?}");
        }
        let log = log.lock().unwrap();
        assert_eq!(log.messages.len(), 3, "implicit={implicit}");
        assert!(log.messages.iter().all(|m| m.data == TEXT.as_bytes()));
        assert_eq!(log.raw.len(), 1, "one connection");
        assert!(String::from_utf8_lossy(&log.raw[0]).contains("AUTH PLAIN AHJlbGF5AHNlY3JldA==\r\n"));
        server.abort();
    }
}

/// CHUNKING: each copy goes as `BDAT size LAST` with its content as it is (no dot-stuffing),
/// after its RCPTs and before their replies; rejected recipients keep their outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunking_sends_bdat_with_the_content_as_it_is() {
    let answer: Answer = Arc::new(|line, _| line.contains("nobody@").then(|| "550 5.1.1 no".into()));
    let server = Upstream::start_with(Log { chunking: true, ..Log::default() }, true, false, answer).await;
    let upstream = Arc::new(server.upstream("max_connections = 1"));
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..5 {
        let upstream = upstream.clone();
        sends.spawn(async move {
            let rcpt = format!("r{i}@x.test");
            upstream.send("app@example.com", &[rcpt.as_str(), "nobody@x.test"], &copy(TEXT)).await
        });
    }
    while let Some(outcomes) = sends.join_next().await {
        let outcomes = outcomes.unwrap();
        assert!(matches!(outcomes[0], Outcome::Delivered(_)), "{outcomes:?}");
        assert_eq!(outcomes[1], failed("550 5.1.1 no"));
    }
    let outcomes = upstream.send("app@example.com", &["nobody@x.test"], &copy(TEXT)).await;
    assert_eq!(outcomes, vec![failed("550 5.1.1 no")]);
    server.log(|log| {
        assert_eq!(log.raw.len(), 1, "one connection");
        assert_eq!(log.messages.len(), 5);
        assert!(log.messages.iter().all(|m| m.data == TEXT.as_bytes()), "the content as it is");
        let raw = String::from_utf8_lossy(&log.raw[0]);
        let bdat = format!("RCPT TO:<nobody@x.test>\r\nBDAT {} LAST\r\n{TEXT}MAIL FROM:", TEXT.len());
        assert!(raw.contains(&bdat), "{raw}");
        assert!(!raw.contains("DATA\r\n") && !raw.contains("..leading"), "no DATA, no dot-stuffing");
    });
}

/// Idle connections the upstream has closed meanwhile (each of the two workers holds one): the
/// next copy goes to one of them, finds it dead before any reply, and is sent again at once
/// on a new connection, neither deferred nor duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_on_a_stale_idle_connection_goes_on_a_new_one() {
    let answer: Answer = Arc::new(|line, _| (line == ".").then(|| "250 2.0.0 queued [then close]".into()));
    let server = Upstream::start(true, false, answer).await;
    let upstream = Arc::new(server.upstream("max_connections = 2"));
    let text = copy(TEXT);
    let (a, b) = tokio::join!(
        upstream.send("app@example.com", &["a@x.test"], &text),
        upstream.send("app@example.com", &["b@x.test"], &text),
    );
    assert!(delivered(&a) && delivered(&b), "{a:?} {b:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = upstream.send("app@example.com", &["c@x.test"], &copy(TEXT)).await;
    assert!(delivered(&c), "{c:?}");
    server.log(|log| {
        assert_eq!(log.messages.len(), 3, "each copy once");
        assert!(log.raw.len() >= 3, "a new connection for the third copy");
    });
}

/// AUTH LOGIN when the relay offers only that mechanism.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_login_when_plain_is_not_offered() {
    let server = Upstream::start_with(Log { login_only: true, ..Log::default() }, true, false, usual()).await;
    let upstream = server.upstream("username = \"relay\"\npassword = \"secret\"");
    let outcomes = upstream.send("app@example.com", &["a@x.test"], &copy(TEXT)).await;
    assert!(delivered(&outcomes), "{outcomes:?}");
    server.log(|log| {
        let raw = String::from_utf8_lossy(&log.raw[0]);
        assert!(raw.contains("AUTH LOGIN\r\ncmVsYXk=\r\nc2VjcmV0\r\nMAIL FROM:"), "{raw}");
    });
}

/// A permanent failure with this reply.
fn failed(reply: &str) -> Outcome {
    Outcome::Failed(Reply::parse(reply).expect("a reply"))
}

/// A deferral with this reply (or reason).
fn deferred(reply: &str) -> Outcome {
    Outcome::Deferred(recorded(reply))
}
