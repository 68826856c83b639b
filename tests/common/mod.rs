//! Test helpers: the real relay on `127.0.0.1:0` with its own temporary directories, and a
//! raw SMTP client that reads complete replies.

#![allow(dead_code)]

pub mod upstream;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bccguard::RunError;
use bccguard::config::{self, Config};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A relay running in this process.
pub struct TestRelay {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config: Config,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), RunError>>,
    /// The metrics endpoint, when `[metrics] listen` is set (use port 0).
    pub metrics: Option<SocketAddr>,
    /// The review page, when `[admin] listen` is set (use port 0).
    pub admin: Option<SocketAddr>,
    /// Makes the spool's journal appends fail as on a full disk.
    pub journal_fault: bccguard::spool::JournalFault,
    /// The relay's notifier (notices and the webhook).
    pub notifier: bccguard::notify::Notifier,
}

impl TestRelay {
    /// Start a relay whose configuration is `toml`, with the outbox and spool in a fresh
    /// temporary directory.
    pub async fn start(toml: &str) -> TestRelay {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(toml, dir.path());
        Self::start_with(config, dir).await
    }

    /// Start a relay with a configuration already built (see [`test_config`]).
    pub async fn start_with(config: Config, dir: tempfile::TempDir) -> TestRelay {
        if std::env::var_os("BCCGUARD_TEST_LOG").is_some() {
            bccguard::logging::init(&config.log);
        }
        let listener = bccguard::listen("127.0.0.1:0".parse().unwrap(), bccguard::MIN_BACKLOG).unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let running = bccguard::start(config.clone(), vec![listener]).await.expect("the relay starts");
        let metrics = running.metrics_addr();
        let admin = running.admin_addr();
        let journal_fault = running.journal_fault();
        let notifier = running.notifier();
        let stop = shutdown.clone();
        let handle = tokio::spawn(async move {
            stop.cancelled().await;
            running.stop().await;
            Ok(())
        });
        let relay = TestRelay { addr, dir, config, shutdown, handle, metrics, admin, journal_fault, notifier };
        relay.wait_ready().await;
        relay
    }

    /// Wait until the relay greets (spool, control socket and listeners are up); panic if it
    /// stopped instead.
    async fn wait_ready(&self) {
        for _ in 0..200 {
            assert!(!self.handle.is_finished(), "the relay did not start");
            let connect = TcpStream::connect(self.addr);
            if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(200), connect).await {
                let mut c = RawClient { stream: BufReader::new(stream) };
                let greeting = tokio::time::timeout(Duration::from_millis(500), c.reply()).await;
                if greeting.is_ok_and(|g| g.starts_with("220 ")) {
                    c.send(b"QUIT\r\n").await;
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the relay did not greet");
    }

    /// Where the directory upstream writes.
    pub fn outbox(&self) -> PathBuf {
        self.dir.path().join("outbox")
    }

    /// The files in the outbox (temporary files excluded), sorted by name.
    pub fn outbox_files(&self) -> Vec<(String, Vec<u8>)> {
        files_in(&self.outbox())
    }

    /// Wait until the outbox holds `n` files, then return them.
    pub async fn wait_outbox(&self, n: usize) -> Vec<(String, Vec<u8>)> {
        eventually(&format!("{n} files in the outbox"), || self.outbox_files().len() >= n).await;
        let files = self.outbox_files();
        assert_eq!(files.len(), n, "{:?}", files.iter().map(|f| &f.0).collect::<Vec<_>>());
        files
    }

    /// Queue ids of the messages in the spool.
    pub fn spooled(&self) -> Vec<String> {
        let ids = bccguard::spool::SpoolPaths::new(&self.dir.path().join("spool")).ids().unwrap();
        ids.iter().map(ToString::to_string).collect()
    }

    /// Wait until the spool is empty (everything delivered or bounced).
    pub async fn wait_spool_empty(&self) {
        eventually("an empty spool", || self.spooled().is_empty()).await;
    }

    /// Signal shutdown without waiting.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shut down and wait for `run` to return.
    pub async fn stop(self) -> Result<(), RunError> {
        self.shutdown().await.0
    }

    /// Shut down, wait for `run` to return, and keep the directory (outbox, spool).
    pub async fn shutdown(self) -> (Result<(), RunError>, tempfile::TempDir) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("the relay stops")
            .expect("the relay task does not panic");
        (result, self.dir)
    }

    /// Send one message in its own session (EHLO, one transaction, QUIT); the reply to the
    /// final dot.
    pub async fn send(&self, from: &str, to: &[&str], data: &[u8]) -> String {
        let mut c = self.client().await;
        c.cmd("EHLO test").await;
        let reply = c.transaction(from, to, data).await;
        c.cmd("QUIT").await;
        reply
    }

    /// A raw client connected from 127.0.0.1, greeting already read.
    pub async fn client(&self) -> RawClient {
        let mut c = RawClient::connect(self.addr, None).await;
        let greeting = c.reply().await;
        assert!(greeting.starts_with("220 "), "{greeting}");
        c
    }
}

/// A configuration from `toml` with the outbox and spool placed under `dir`.
pub fn test_config(toml: &str, dir: &Path) -> Config {
    let mut table: toml::Table = toml::from_str(toml).unwrap_or_else(|e| panic!("test config: {e}\n{toml}"));
    let mut section = |name: &str| -> toml::Table {
        let t = table.remove(name).and_then(|v| v.as_table().cloned());
        t.unwrap_or_default()
    };
    let mut spool = section("spool");
    let mut upstream = section("upstream");
    spool.entry("dir").or_insert(dir.join("spool").display().to_string().into());
    if !upstream.contains_key("host") {
        let outbox = dir.join("outbox").display().to_string();
        upstream.entry("directory").or_insert(outbox.into());
    }
    table.insert("spool".into(), spool.into());
    table.insert("upstream".into(), upstream.into());
    let text = toml::to_string(&table).unwrap();
    config::load_str(Some(&text), &[]).unwrap_or_else(|e| panic!("test config: {e:?}\n{text}"))
}

/// Files in a directory (no dot files), sorted by name.
pub fn files_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|e| e.unwrap())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

/// Split an outbox file into its `Return-Path`/`Delivered-To` lines, the `Received:` field
/// bccguard added, and the message that follows.
pub fn split_delivered(file: &[u8]) -> (String, String, Vec<u8>) {
    let text = String::from_utf8_lossy(file);
    let env_end = text.match_indices("\r\n").nth(1).unwrap().0 + 2;
    let received_end = text.find(";\r\n\t").unwrap() + 3;
    let received_end = received_end + text[received_end..].find("\r\n").unwrap() + 2;
    (text[..env_end].to_string(), text[env_end..received_end].to_string(), file[received_end..].to_vec())
}

/// The file delivered to `rcpt` (by its `Delivered-To:` line); panics unless exactly one.
pub fn delivered_to(files: &[(String, Vec<u8>)], rcpt: &str) -> Vec<u8> {
    let needle = format!("\r\nDelivered-To: {rcpt}\r\n");
    let found: Vec<_> = files.iter().filter(|(_, b)| String::from_utf8_lossy(b).contains(&needle)).collect();
    assert_eq!(found.len(), 1, "one file for {rcpt}");
    split_delivered(&found[0].1).2
}

/// A fixture from `tests/fixtures/`.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Wait until `check` holds, polling; panics after 20 seconds.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// An SMTP client that speaks raw bytes.
pub struct RawClient {
    stream: BufReader<TcpStream>,
}

impl RawClient {
    /// Connect, optionally from a given local address (e.g. 127.0.0.2).
    pub async fn connect(addr: SocketAddr, from: Option<&str>) -> RawClient {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(ip) = from {
            socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        }
        let stream = socket.connect(addr).await.unwrap();
        RawClient { stream: BufReader::new(stream) }
    }

    /// Write bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// Write bytes, tolerating a connection the server already closed.
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.get_mut().write_all(bytes).await.is_ok()
    }

    /// Read one complete reply (all lines), without the final CRLF; empty at end of stream.
    pub async fn reply(&mut self) -> String {
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            let read = tokio::time::timeout(Duration::from_secs(30), self.stream.read_line(&mut line))
                .await
                .expect("a reply within 30s");
            match read {
                Ok(0) | Err(_) => return reply.trim_end().to_string(),
                Ok(_) => {}
            }
            reply.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return reply.trim_end().to_string();
            }
        }
    }

    /// Send a command line and return its reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Run a transaction with default steps, asserting each reply; returns the reply to the dot.
    pub async fn transaction(&mut self, from: &str, to: &[&str], data: &[u8]) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert!(r.starts_with("250"), "MAIL: {r}");
        for rcpt in to {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>")).await;
            assert!(r.starts_with("250"), "RCPT {rcpt}: {r}");
        }
        let r = self.cmd("DATA").await;
        assert!(r.starts_with("354"), "DATA: {r}");
        self.send(data).await;
        self.send(b".\r\n").await;
        self.reply().await
    }

    /// True when the server has closed the connection (reads end of stream).
    pub async fn is_closed(&mut self) -> bool {
        let mut buf = String::new();
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.stream.read_line(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    /// The underlying stream (for TLS upgrades).
    pub fn into_inner(self) -> TcpStream {
        self.stream.into_inner()
    }
}

/// A self-signed certificate for `localhost`, written as PEM files in `dir`:
/// (cert path, key path, cert PEM).
pub fn test_certificate(dir: &Path) -> (PathBuf, PathBuf, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (cert_path, key_path, cert_pem)
}

/// `bccguard queue ARGS` on the spool under `dir` (a relay's temporary directory): (exit
/// code, stdout, stderr).
pub fn queue_cli_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    cli_in(dir, "queue", args)
}

/// `bccguard COMMAND ARGS` with a configuration naming only the spool under `dir`: (exit
/// code, stdout, stderr).
pub fn cli_in(dir: &Path, command: &str, args: &[&str]) -> (i32, String, String) {
    let config = dir.join("cli.toml");
    std::fs::write(&config, format!("[spool]\ndir = {:?}\n", dir.join("spool"))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .arg(command)
        .args(args)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// `bccguard queue ARGS` on the relay's spool: (exit code, stdout and stderr together).
pub fn queue_cli(relay: &TestRelay, args: &[&str]) -> (i32, String) {
    let (code, out, err) = queue_cli_in(relay.dir.path(), args);
    (code, out + &err)
}

/// The relay binary, `bccguard serve --config CONFIG`, its log appended to `log`.
pub fn spawn_relay(config: &Path, log: &Path) -> std::process::Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// GET a path over HTTP/1.1: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of a sample line in a metrics exposition (`name{labels} value`), 0 when absent.
pub fn sample(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
