//! Bench (not a test): one 100 KiB message with 30,000 and then 100,000 external recipients,
//! sent to the real relay (the release binary, in its own process) and exploded into copies
//! delivered to an SMTP sink with `upstream.max_connections` = 16. Prints, per count, the
//! time until the sink had every copy, copies/s, and the relay's peak resident memory
//! (`VmHWM`), which is the figure to watch: it must follow the connections, not the
//! recipients.
//!
//! With `rsa` or `ed25519` among the arguments, each count runs again with a DKIM key of
//! that kind for the From domain: every copy is signed (the test key of
//! `tests/fixtures/dkim`), and the body hash is computed once for the message.
//!
//! Run: `cargo bench --bench explode` (or `-- 30000` for one recipient count, `-- 30000 none
//! rsa` for it without and with signing); `BCCGUARD_BIN=path` measures another build of the
//! relay.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 16;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let counts: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let counts = if counts.is_empty() { vec![30_000, 100_000] } else { counts };
    let keys: Vec<&str> =
        args.iter().map(String::as_str).filter(|a| matches!(*a, "none" | "rsa" | "ed25519")).collect();
    let keys = if keys.is_empty() { vec!["none"] } else { keys };
    for n in counts {
        for key in &keys {
            run(n, key).await;
        }
    }
}

/// `[[dkim.keys]]` for example.com with the test key `key`, or nothing for `none`.
fn dkim_keys(key: &str) -> String {
    let algorithm = match key {
        "rsa" => "rsa-sha256",
        "ed25519" => "ed25519-sha256",
        _ => return String::new(),
    };
    let file = format!("{}/tests/fixtures/dkim/{key}.pem", env!("CARGO_MANIFEST_DIR"));
    format!(
        "[[dkim.keys]]\ndomain = \"example.com\"\nselector = \"bench\"\nkey_file = \"{file}\"\nalgorithm = \"{algorithm}\"\n"
    )
}

async fn run(recipients: usize, key: &str) {
    let work = tempfile::tempdir().expect("temporary directory");
    let received = Arc::new(AtomicUsize::new(0));
    let sink = TcpListener::bind("127.0.0.1:0").await.expect("bind the sink");
    let sink_port = sink.local_addr().expect("sink address").port();
    tokio::spawn(serve_sink(sink, received.clone()));
    let relay_port = free_port();
    let config = work.path().join("bccguard.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:{relay_port}\"]\nmax_recipients = {recipients}\n\
             [spool]\ndir = \"{spool}\"\n\
             [upstream]\nhost = \"127.0.0.1\"\nport = {sink_port}\ntls = \"none\"\nmax_connections = {CONNECTIONS}\n\
             [policy]\ninternal_domains = [\"example.com\"]\n[log]\nlevel = \"error\"\n{keys}",
            spool = work.path().join("spool").display(),
            keys = dkim_keys(key),
        ),
    )
    .expect("write the config");
    let relay = Relay(
        Command::new(std::env::var("BCCGUARD_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_bccguard").into()))
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the relay"),
    );
    let mut client = connect(relay_port).await;
    let message = message(100 * 1024);
    let started = Instant::now();
    send(&mut client, recipients, &message).await;
    let accepted = started.elapsed();
    let peak_accepted = peak_rss_kib(relay.0.id());
    let deadline = Instant::now() + Duration::from_secs(1200);
    while received.load(Ordering::Relaxed) < recipients {
        assert!(Instant::now() < deadline, "only {} copies arrived", received.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let peak = peak_rss_kib(relay.0.id());
    println!(
        "{recipients} recipients, {} KiB message, {CONNECTIONS} connections, DKIM {key}: accepted in {:.2} s, \
         every copy at the sink in {:.1} s ({:.0} copies/s); relay peak RSS {:.1} MiB \
         ({:.1} MiB when the message was accepted)",
        message.len() / 1024,
        accepted.as_secs_f64(),
        elapsed.as_secs_f64(),
        recipients as f64 / (elapsed - accepted).as_secs_f64(),
        peak as f64 / 1024.0,
        peak_accepted as f64 / 1024.0
    );
}

/// Kills the relay when dropped.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

async fn connect(port: u16) -> BufReader<TcpStream> {
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)).await {
            return BufReader::new(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the relay did not start");
}

/// One transaction: RCPTs pipelined a thousand at a time, then the data.
async fn send(c: &mut BufReader<TcpStream>, recipients: usize, message: &[u8]) {
    expect(c, "220").await;
    c.get_mut().write_all(b"EHLO bench.test\r\nMAIL FROM:<support@example.com>\r\n").await.unwrap();
    expect(c, "250").await;
    expect(c, "250").await;
    let mut sent = 0;
    while sent < recipients {
        let batch = (recipients - sent).min(1000);
        let mut out = String::new();
        for i in sent..sent + batch {
            out.push_str(&format!("RCPT TO:<{}>\r\n", address(i)));
        }
        c.get_mut().write_all(out.as_bytes()).await.unwrap();
        for _ in 0..batch {
            expect(c, "250").await;
        }
        sent += batch;
    }
    c.get_mut().write_all(b"DATA\r\n").await.unwrap();
    expect(c, "354").await;
    c.get_mut().write_all(message).await.unwrap();
    c.get_mut().write_all(b".\r\nQUIT\r\n").await.unwrap();
    expect(c, "250").await;
}

/// Read one reply (all its lines); it must start with `code`.
async fn expect(c: &mut BufReader<TcpStream>, code: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        c.read_line(&mut line).await.unwrap();
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) != Some(&b'-') {
            return;
        }
    }
}

fn address(i: usize) -> String {
    format!("customer{i:06}@domain{}.test", i % 500)
}

/// A 100 KiB-ish message whose To shows 1,000 external customers (a batch like the 2019 leak).
fn message(size: usize) -> Vec<u8> {
    let to: Vec<String> = (0..1000).map(address).collect();
    let mut m = format!(
        "From: Support <support@example.com>\r\nTo: {}\r\nCc: Ops <ops@example.com>\r\nSubject: Security update\r\n\
         Date: Mon, 18 Nov 2019 09:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        to.join(",\r\n ")
    )
    .into_bytes();
    while m.len() < size {
        m.extend_from_slice(b"Please update your password at your earliest convenience. Thank you.\r\n");
    }
    m
}

/// An SMTP server that accepts everything and keeps nothing; counts the messages.
async fn serve_sink(listener: TcpListener, received: Arc<AtomicUsize>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let received = received.clone();
        tokio::spawn(async move {
            let _ = sink_session(stream, &received).await;
        });
    }
}

/// One sink session, answering as a pipelining server does: replies are collected and
/// written when the client has nothing more buffered (with `TCP_NODELAY`), so a pipelined
/// group gets its replies in one write and nobody waits for a delayed ACK.
async fn sink_session(stream: TcpStream, received: &AtomicUsize) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut c = BufReader::with_capacity(64 * 1024, stream);
    let mut out: Vec<u8> = b"220 sink.test ESMTP\r\n".to_vec();
    let mut line = Vec::with_capacity(1024);
    loop {
        if !read_line(&mut c, &mut line, &mut out).await? {
            return Ok(());
        }
        let verb = line.get(..4).map(|v| v.to_ascii_uppercase()).unwrap_or_default();
        match verb.as_slice() {
            b"EHLO" => out.extend_from_slice(b"250-sink.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 PIPELINING\r\n"),
            b"DATA" => {
                out.extend_from_slice(b"354 go on\r\n");
                loop {
                    if !read_line(&mut c, &mut line, &mut out).await? {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    if line.as_slice() == b".\r\n" {
                        break;
                    }
                }
                received.fetch_add(1, Ordering::Relaxed);
                out.extend_from_slice(b"250 2.0.0 ok\r\n");
            }
            b"QUIT" => {
                out.extend_from_slice(b"221 bye\r\n");
                c.get_mut().write_all(&out).await?;
                let mut rest = Vec::new();
                let _ = c.read_to_end(&mut rest).await;
                return Ok(());
            }
            _ => out.extend_from_slice(b"250 2.0.0 ok\r\n"),
        }
    }
}

/// Read one line; first write the replies collected so far if no more input is buffered.
/// False at the end of input.
async fn read_line(c: &mut BufReader<TcpStream>, line: &mut Vec<u8>, out: &mut Vec<u8>) -> std::io::Result<bool> {
    if c.buffer().is_empty() && !out.is_empty() {
        c.get_mut().write_all(out).await?;
        out.clear();
    }
    line.clear();
    Ok(c.read_until(b'\n', line).await? > 0)
}

/// Peak resident set size of process `pid`, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
