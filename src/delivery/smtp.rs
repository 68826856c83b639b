//! The SMTP upstream, on lettre's connection type under bccguard's own pool.
//!
//! lettre's pooled transport is not used: its pool bounds only idle connections, its timeout
//! covers only connect, a cancelled send returns a half-used connection to the pool, and it
//! fails a whole transaction on one rejected recipient. Here a semaphore caps connections,
//! every attempt runs under one timeout (a connection that times out is dropped, never
//! reused), and recipients are sent one RCPT at a time so each gets its own outcome.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use lettre::Address;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use super::bounded::Bounded;
use super::refusals::RelayStatus;
use super::reply::{Answer, Judgement, Refusal, Reply, Stage, judge};
use super::{Copy, Outcome};
use crate::config::{Config, UpstreamTls};
use crate::message::address;
use crate::spool::content::Chunks;
use tracing::error;

/// An idle connection is not reused after this long (the relay may have closed it).
const MAX_IDLE: Duration = Duration::from_secs(10);
/// Messages per connection before it is closed and a new one opened.
const MAX_USES: u32 = 1000;

/// Why the SMTP upstream could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SmtpSetupError {
    /// The config key at fault.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

/// An SMTP relay to deliver to.
pub struct SmtpUpstream {
    host: String,
    port: u16,
    mode: UpstreamTls,
    tls: Option<TlsParameters>,
    implicit_tls: Option<TlsConnector>,
    credentials: Option<Credentials>,
    hello: ClientId,
    timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<Idle>>,
    status: Arc<RelayStatus>,
}

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
    uses: u32,
    /// Set when a copy's body could not be read: the socket then refuses every write.
    poison: Arc<AtomicBool>,
}

/// Why one attempt on one connection stopped short.
enum Stop {
    /// The connection failed before anything was accepted: a fresh one may do better.
    Stale(String),
    /// Every recipient gets this outcome.
    All(Outcome),
    /// The upstream refused the relay itself: every recipient is deferred.
    Refused(Refusal),
}

impl SmtpUpstream {
    /// The relay of `[upstream]` (`host` must be set).
    pub fn from_config(config: &Config) -> Result<SmtpUpstream, SmtpSetupError> {
        let u = &config.upstream;
        let host = u.host.clone().unwrap_or_default();
        let extra_roots = match &u.ca_file {
            Some(path) => read_ca_file(path)?,
            None => Vec::new(),
        };
        let tls = match u.tls {
            UpstreamTls::Starttls => Some(tls_parameters(&host, &extra_roots)?),
            UpstreamTls::None | UpstreamTls::Tls => None,
        };
        let implicit_tls = (u.tls == UpstreamTls::Tls).then(|| tls_connector(&extra_roots)).transpose()?;
        let password = match (&u.password, &u.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| SmtpSetupError {
                    key: "upstream.password_file",
                    message: format!("cannot read {}: {e}", path.display()),
                })?;
                Some(text.lines().next().unwrap_or_default().to_string())
            }
            (None, None) => None,
        };
        let credentials = u.username.clone().zip(password).map(|(user, pw)| Credentials::new(user, pw));
        Ok(SmtpUpstream {
            port: u.port(),
            host,
            mode: u.tls,
            tls,
            implicit_tls,
            credentials,
            hello: ClientId::Domain(config.server.hostname.clone()),
            timeout: u.timeout.0,
            permits: Semaphore::new(u.max_connections),
            idle: Mutex::new(Vec::new()),
            status: Arc::default(),
        })
    }

    /// Whether the relay accepts a TCP connection within 5 seconds. While it refuses the
    /// relay at greeting, EHLO, TLS, AUTH or MAIL, the probe goes that far instead (MAIL with
    /// the null sender, then RSET), so that readiness comes back without waiting for mail to
    /// try; the connection is kept for the next copy.
    pub async fn probe(&self) -> bool {
        let refused_at = self.status.stage();
        if refused_at.is_some_and(|s| !matches!(s, Stage::Rcpt | Stage::Data))
            && let Ok(_permit) = self.permits.try_acquire()
        {
            let dialogue = async {
                let (mut conn, poison) = self.connect().await?;
                if refused_at == Some(Stage::Mail) {
                    conn.command(Mail::new(None, vec![])).await.map_err(|e| stop_at(Stage::Mail, answer_of("", &e)))?;
                    conn.command(Rset).await.map_err(|e| stop_at(Stage::Mail, answer_of("", &e)))?;
                }
                Ok((conn, poison))
            };
            return match tokio::time::timeout(self.timeout, dialogue).await {
                Ok(Ok((conn, poison))) => {
                    self.status.accepted();
                    self.idle.lock().expect("pool lock").push(Idle { conn, since: Instant::now(), uses: 0, poison });
                    true
                }
                Ok(Err(Stop::Refused(refusal))) => {
                    self.status.refused(&refusal);
                    true
                }
                Ok(Err(_)) | Err(_) => false,
            };
        }
        let connect = TcpStream::connect((self.host.as_str(), self.port));
        matches!(tokio::time::timeout(Duration::from_secs(5), connect).await, Ok(Ok(_)))
    }

    /// Whether the upstream refuses the relay right now.
    pub fn status(&self) -> Arc<RelayStatus> {
        self.status.clone()
    }

    /// `host:port`, for logs and bounces.
    pub fn describe(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Deliver one copy to `rcpts`: one outcome per recipient, in order.
    pub async fn send(&self, sender: &str, rcpts: &[&str], copy: &Copy) -> Vec<Outcome> {
        let _permit = self.permits.acquire().await.expect("the semaphore is never closed");
        let attempt = async {
            match self.take_idle() {
                Some(idle) => match self.on_connection(idle, sender, rcpts, copy).await {
                    Err(Stop::Stale(_)) => self.fresh(sender, rcpts, copy).await,
                    other => other,
                },
                None => self.fresh(sender, rcpts, copy).await,
            }
        };
        let result = match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Stop::All(Outcome::Deferred(Answer::Broken(format!(
                "no answer from {} within {}",
                self.describe(),
                humantime::format_duration(self.timeout)
            ))))),
        };
        match result {
            Ok(outcomes) => {
                self.status.accepted();
                outcomes
            }
            Err(Stop::Stale(e)) => vec![Outcome::Deferred(Answer::Broken(e)); rcpts.len()],
            Err(Stop::All(outcome)) => vec![outcome; rcpts.len()],
            Err(Stop::Refused(refusal)) => {
                self.status.refused(&refusal);
                vec![Outcome::Deferred(Answer::Broken(refusal.text)); rcpts.len()]
            }
        }
    }

    async fn fresh(&self, sender: &str, rcpts: &[&str], copy: &Copy) -> Result<Vec<Outcome>, Stop> {
        let (conn, poison) = self.connect().await?;
        match self.on_connection(Idle { conn, since: Instant::now(), uses: 0, poison }, sender, rcpts, copy).await {
            Err(Stop::Stale(e)) => Err(Stop::All(Outcome::Deferred(Answer::Broken(e)))),
            other => other,
        }
    }

    fn take_idle(&self) -> Option<Idle> {
        let mut idle = self.idle.lock().expect("pool lock");
        while let Some(c) = idle.pop() {
            if c.since.elapsed() < MAX_IDLE && !c.conn.has_broken() {
                return Some(c);
            }
        }
        None
    }

    /// Open a connection: TCP with `TCP_NODELAY` (lettre writes the data and its final dot
    /// separately; with Nagle's algorithm each message would wait for a delayed ACK), then
    /// implicit TLS or STARTTLS, then AUTH. Reads are bounded ([`Bounded`]); writes stop once
    /// a copy's body cannot be read ([`Guarded`]). A refusing reply at any of these stages, or
    /// a failed TLS or AUTH exchange, is a refusal of the relay ([`judge`]); a connection that
    /// breaks before TLS merely defers.
    async fn connect(&self) -> Result<(AsyncSmtpConnection, Arc<AtomicBool>), Stop> {
        let remote = self.describe();
        let io_err = |what: &str, e: std::io::Error| {
            Stop::All(Outcome::Deferred(Answer::Broken(format!("{remote}: {what}: {e}"))))
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await.map_err(|e| io_err("connect", e))?;
        tcp.set_nodelay(true).map_err(|e| io_err("connect", e))?;
        let written = Arc::new(AtomicU64::new(0));
        let stream: Box<dyn AsyncTokioStream> = match &self.implicit_tls {
            Some(connector) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| Stop::All(Outcome::Deferred(Answer::Broken(format!("{remote}: {e}")))))?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| stop_at(Stage::Tls, Answer::Broken(format!("{remote}: TLS: {e}"))))?;
                Box::new(Bounded::new(TlsSocket(tls), written.clone()))
            }
            None => Box::new(Bounded::new(tcp, written.clone())),
        };
        let poison = Arc::new(AtomicBool::new(false));
        let stream: Box<dyn AsyncTokioStream> = Box::new(Guarded { inner: stream, poison: poison.clone() });
        let remote = remote.as_str();
        let at = |stage: Stage| move |e: lettre::transport::smtp::Error| stop_at(stage, answer_of(remote, &e));
        let hello = AsyncSmtpConnection::connect_with_transport(stream, &self.hello).await;
        // Nothing written yet: the greeting failed; otherwise EHLO did.
        let hello_stage = if written.load(Ordering::Relaxed) == 0 { Stage::Greeting } else { Stage::Ehlo };
        let mut conn = hello.map_err(at(hello_stage))?;
        if self.mode == UpstreamTls::Starttls {
            let params = self.tls.clone().expect("starttls has TLS parameters");
            conn.starttls(params, &self.hello).await.map_err(at(Stage::Tls))?;
        }
        if let Some(credentials) = &self.credentials {
            conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials).await.map_err(at(Stage::Auth))?;
        }
        Ok((conn, poison))
    }

    /// One transaction: MAIL, RCPT for each recipient, DATA. The connection goes back to the
    /// pool if it is still in a known state.
    async fn on_connection(
        &self,
        mut idle: Idle,
        sender: &str,
        rcpts: &[&str],
        copy: &Copy,
    ) -> Result<Vec<Outcome>, Stop> {
        let result = transaction(&mut idle.conn, sender, rcpts, copy, &idle.poison).await;
        idle.uses += 1;
        if result.is_ok() && idle.uses < MAX_USES && !idle.conn.has_broken() {
            idle.since = Instant::now();
            self.idle.lock().expect("pool lock").push(idle);
        }
        result
    }
}

async fn transaction(
    conn: &mut AsyncSmtpConnection,
    sender: &str,
    rcpts: &[&str],
    copy: &Copy,
    poison: &AtomicBool,
) -> Result<Vec<Outcome>, Stop> {
    let info = conn.server_info().clone();
    let mut params = Vec::new();
    let non_ascii = !sender.is_ascii() || rcpts.iter().any(|r| !r.is_ascii());
    if non_ascii {
        if !info.supports_feature(Extension::SmtpUtfEight) {
            return Err(Stop::All(Outcome::Failed(Reply::new(
                553,
                "5.6.7 the upstream does not support SMTPUTF8, needed for this address",
            ))));
        }
        params.push(MailParameter::SmtpUtfEight);
    }
    if (copy.eight_bit || !copy.head.is_ascii()) && info.supports_feature(Extension::EightBitMime) {
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let from = (!sender.is_empty()).then(|| lettre_address(sender));
    match conn.command(Mail::new(from, params)).await {
        Ok(_) => {}
        Err(e) if e.status().is_none() => return Err(Stop::Stale(e.to_string())),
        Err(e) => return Err(stop_at(Stage::Mail, answer_of("", &e))),
    }
    let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(rcpts.len());
    for rcpt in rcpts {
        match conn.command(Rcpt::new(lettre_address(rcpt), vec![])).await {
            Ok(_) => outcomes.push(None),
            Err(e) if e.status().is_none() => return Err(Stop::All(outcome_of_error("", &e))),
            Err(e) => match judge(Stage::Rcpt, answer_of("", &e)) {
                Judgement::RelayRefused(refusal) => return Err(Stop::Refused(refusal)),
                judged => outcomes.push(Some(outcome_of(judged))),
            },
        }
    }
    if outcomes.iter().all(Option::is_some) {
        let _ = conn.command(Rset).await;
        return Ok(outcomes.into_iter().flatten().collect());
    }
    let end = async {
        conn.command(Data).await?;
        conn.message_iter(CopyChunks::new(copy, poison)).await
    };
    let accepted = match end.await {
        Ok(response) => Outcome::Delivered(reply_of(&response)),
        Err(e) if e.status().is_none() => return Err(Stop::All(outcome_of_error("", &e))),
        Err(e) => match judge(Stage::Data, answer_of("", &e)) {
            Judgement::RelayRefused(refusal) => return Err(Stop::Refused(refusal)),
            judged => outcome_of(judged),
        },
    };
    Ok(outcomes.into_iter().map(|o| o.unwrap_or_else(|| accepted.clone())).collect())
}

/// A copy's bytes as lettre writes them: the header block, then the body read in chunks.
/// lettre ends the data with CRLF . CRLF itself, so the message's own last CRLF goes. If the
/// body cannot be read whole, the socket is poisoned: the writes that follow fail, the final
/// dot is never sent, and the upstream discards what it got.
struct CopyChunks<'a> {
    head: Option<Bytes>,
    body: Chunks,
    poison: &'a AtomicBool,
}

impl<'a> CopyChunks<'a> {
    fn new(copy: &Copy, poison: &'a AtomicBool) -> CopyChunks<'a> {
        let (mut head, mut body) = (copy.head.clone(), copy.body.clone());
        let len = body.len();
        if len == 0 {
            if head.ends_with(b"\r\n") {
                head.truncate(head.len() - 2);
            }
        } else if body.slice(len.saturating_sub(2)..len).to_bytes().is_ok_and(|end| end.as_ref() == b"\r\n") {
            body = body.slice(0..len - 2);
        }
        CopyChunks { head: Some(head), body: body.chunks(), poison }
    }
}

impl Iterator for CopyChunks<'_> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        if let Some(head) = self.head.take() {
            return Some(head);
        }
        match self.body.next()? {
            Ok(chunk) => Some(chunk),
            Err(e) => {
                error!(error = %e, "a spooled message could not be read while sending it; the copy is abandoned");
                self.poison.store(true, Ordering::SeqCst);
                None
            }
        }
    }
}

/// The upstream socket under lettre: refuses every write once poisoned.
#[derive(Debug)]
struct Guarded {
    inner: Box<dyn AsyncTokioStream>,
    poison: Arc<AtomicBool>,
}

impl Guarded {
    fn check(&self) -> std::io::Result<()> {
        if self.poison.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("the copy could not be read from the spool"));
        }
        Ok(())
    }
}

impl AsyncTokioStream for Guarded {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.inner.peer_addr()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A canonical address as lettre's type. Canonical addresses hold no control characters
/// and are quoted where needed, so lettre's own (stricter, RFC 5321-only) checks are skipped.
fn lettre_address(addr: &str) -> Address {
    let (local, domain) = address::split(addr);
    Address::new_dangerous(local, domain)
}

fn reply_of(response: &Response) -> Reply {
    let text: Vec<&str> = response.message().collect();
    Reply::new(response.code().to_string().parse().unwrap_or(250), &text.join(" "))
}

/// An error without a reply (network, timeout) as the outcome it means: deferred.
fn outcome_of_error(upstream: &str, e: &lettre::transport::smtp::Error) -> Outcome {
    match answer_of(upstream, e) {
        Answer::Reply(r) if r.is_permanent() => Outcome::Failed(r),
        answer => Outcome::Deferred(answer),
    }
}

/// What the upstream answered, as a value: its reply when lettre has one, else why not
/// (prefixed with `upstream` when given).
fn answer_of(upstream: &str, e: &lettre::transport::smtp::Error) -> Answer {
    match e.status() {
        Some(code) => {
            let text = std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default();
            let code = code.to_string().parse().unwrap_or(500);
            Answer::Reply(Reply::new(code, &text))
        }
        None if upstream.is_empty() => Answer::Broken(e.to_string()),
        None => Answer::Broken(format!("{upstream}: {e}")),
    }
}

/// Why an attempt stops after `answer` at `stage`.
fn stop_at(stage: Stage, answer: Answer) -> Stop {
    match judge(stage, answer) {
        Judgement::RelayRefused(refusal) => Stop::Refused(refusal),
        judged => Stop::All(outcome_of(judged)),
    }
}

/// A judgement (other than a refusal of the relay) as a recipient's outcome.
fn outcome_of(judged: Judgement) -> Outcome {
    match judged {
        Judgement::Accepted(r) => Outcome::Delivered(r),
        Judgement::Deferred(answer) => Outcome::Deferred(answer),
        Judgement::Failed(r) => Outcome::Failed(r),
        Judgement::RelayRefused(refusal) => Outcome::Deferred(Answer::Broken(refusal.text)),
    }
}

/// Certificates from `upstream.ca_file`, as DER.
fn read_ca_file(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, SmtpSetupError> {
    let err = |message: String| SmtpSetupError { key: "upstream.ca_file", message };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(format!("bad PEM in {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}

/// STARTTLS parameters: the webpki roots plus the extra ones.
fn tls_parameters(host: &str, extra_roots: &[CertificateDer<'static>]) -> Result<TlsParameters, SmtpSetupError> {
    let mut builder = TlsParameters::builder(host.to_string());
    for der in extra_roots {
        let cert = Certificate::from_der(der.to_vec())
            .map_err(|e| SmtpSetupError { key: "upstream.ca_file", message: e.to_string() })?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().map_err(|e| SmtpSetupError { key: "upstream.host", message: e.to_string() })
}

/// Implicit TLS: the same trust anchors, with bccguard's crypto provider.
fn tls_connector(extra_roots: &[CertificateDer<'static>]) -> Result<TlsConnector, SmtpSetupError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for der in extra_roots {
        roots.add(der.clone()).map_err(|e| SmtpSetupError { key: "upstream.ca_file", message: e.to_string() })?;
    }
    let config = ClientConfig::builder_with_provider(crate::smtp::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SmtpSetupError { key: "upstream.tls", message: e.to_string() })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(std::sync::Arc::new(config)))
}

/// An implicit-TLS socket as lettre's stream type (lettre sees a plain stream; the TLS is
/// ours).
#[derive(Debug)]
struct TlsSocket(tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncTokioStream for TlsSocket {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl AsyncRead for TlsSocket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
