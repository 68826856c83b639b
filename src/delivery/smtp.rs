//! The SMTP upstream: a pool of connection workers driving bccguard's pipelined client
//! ([`super::client::proto`]).
//!
//! [`SmtpUpstream::send`] queues a copy and waits for its outcomes. Up to
//! `upstream.max_connections` workers (a hard cap) each own one connection and take copies
//! from the queue. With PIPELINING a worker writes a copy's MAIL, RCPTs and DATA in one write,
//! and after `354` the content, its final dot and the next queued copy's MAIL, RCPTs and DATA
//! in one write again: a steady stream costs one round trip per copy. Every copy runs under
//! `upstream.timeout` from the moment a worker takes it (connect, TLS and AUTH included); a
//! connection that times out is dropped, never reused. An idle connection is kept for 10 s, and
//! a connection is closed after 1000 copies.
//!
//! With CHUNKING as well (RFC 3030), a copy goes as `BDAT size LAST` and its content as it is,
//! right after its RCPTs, and the next copy follows without waiting: two copies in flight.
//!
//! lettre's transport is not used: it waits for each reply before the next command (four
//! round trips per copy), and its timeout and pool do not give these guarantees.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tracing::error;

use super::client::proto::{
    Client, DotStuffer, Event, Extensions, Finished, ReplyReader, Submit, outcome_of, reply_of,
};
use super::refusals::RelayStatus;
use super::reply::{Answer, Judgement, Refusal, Stage, judge};
use super::{Copy, Outcome};
use crate::config::{Config, UpstreamTls};

/// An idle connection is not reused after this long (the relay may have closed it).
const MAX_IDLE: Duration = Duration::from_secs(10);
/// Copies per connection before it is closed and a new one opened.
const MAX_USES: u32 = 1000;
/// Content is written in pieces of about this size.
const WRITE_SIZE: usize = 64 * 1024;

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
    shared: Arc<Shared>,
}

struct Settings {
    host: String,
    port: u16,
    mode: UpstreamTls,
    tls: Option<TlsConnector>,
    credentials: Option<(String, String)>,
    hello: String,
    timeout: Duration,
    max_connections: usize,
}

struct Shared {
    settings: Settings,
    status: Arc<RelayStatus>,
    pool: Mutex<Pool>,
}

#[derive(Default)]
struct Pool {
    /// Copies no worker has taken yet.
    queue: VecDeque<Job>,
    /// Idle workers, each waiting to be handed a copy (oldest first).
    waiting: VecDeque<(u64, oneshot::Sender<Job>)>,
    next_waiter: u64,
    /// Workers alive (at most `upstream.max_connections`).
    workers: usize,
    closed: bool,
}

/// A copy waiting for a worker.
struct Job {
    sender: String,
    rcpts: Vec<String>,
    copy: Copy,
    done: oneshot::Sender<Vec<Outcome>>,
    /// Already moved once off a connection that failed before answering anything about it.
    retried: bool,
}

/// Why an attempt stopped before the transaction.
enum Stop {
    /// Every recipient gets this outcome.
    All(Outcome),
    /// The upstream refused the relay itself: every recipient is deferred.
    Refused(Refusal),
}

/// The socket, plain or TLS.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection after EHLO, TLS and AUTH.
struct Conn {
    io: Box<dyn Io>,
    client: Client,
    uses: u32,
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
        let tls = (u.tls != UpstreamTls::None).then(|| tls_connector(&extra_roots)).transpose()?;
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
        let hello = config.server.hostname.clone();
        if hello.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(SmtpSetupError { key: "server.hostname", message: "not a host name".into() });
        }
        let settings = Settings {
            port: u.port(),
            host,
            mode: u.tls,
            tls,
            credentials: u.username.clone().zip(password),
            hello,
            timeout: u.timeout.0,
            max_connections: u.max_connections.max(1),
        };
        let shared = Shared { settings, status: Arc::default(), pool: Mutex::default() };
        Ok(SmtpUpstream { shared: Arc::new(shared) })
    }

    /// Whether the relay accepts a TCP connection within 5 seconds. While it refuses the
    /// relay at greeting, EHLO, TLS, AUTH or MAIL, the probe goes that far instead (MAIL with
    /// the null sender, then RSET), so that readiness comes back without waiting for mail to
    /// try; the connection then serves the next copies.
    pub async fn probe(&self) -> bool {
        let shared = &self.shared;
        let refused_at = shared.status.stage();
        if refused_at.is_some_and(|s| !matches!(s, Stage::Rcpt | Stage::Data)) && shared.reserve_worker() {
            let dialogue = async {
                let (mut io, mut reader, ext) = shared.connect().await?;
                if refused_at == Some(Stage::Mail) {
                    exchange(&mut io, &mut reader, b"MAIL FROM:<>\r\n", Stage::Mail).await?;
                    exchange(&mut io, &mut reader, b"RSET\r\n", Stage::Mail).await?;
                }
                Ok::<_, Stop>(Conn { io, client: Client::new(ext, reader), uses: 0 })
            };
            let deadline = Instant::now() + shared.settings.timeout;
            return match timeout_at(deadline, dialogue).await {
                Ok(Ok(conn)) => {
                    shared.status.accepted();
                    tokio::spawn(worker(shared.clone(), Some(conn)));
                    true
                }
                Ok(Err(Stop::Refused(refusal))) => {
                    shared.status.refused(&refusal);
                    shared.release_worker();
                    true
                }
                Ok(Err(_)) | Err(_) => {
                    shared.release_worker();
                    false
                }
            };
        }
        let connect = TcpStream::connect((shared.settings.host.as_str(), shared.settings.port));
        matches!(tokio::time::timeout(Duration::from_secs(5), connect).await, Ok(Ok(_)))
    }

    /// Whether the upstream refuses the relay right now.
    pub fn status(&self) -> Arc<RelayStatus> {
        self.shared.status.clone()
    }

    /// `host:port`, for logs and bounces.
    pub fn describe(&self) -> String {
        self.shared.describe()
    }

    /// Deliver one copy to `rcpts`: one outcome per recipient, in order.
    pub async fn send(&self, sender: &str, rcpts: &[&str], copy: &Copy) -> Vec<Outcome> {
        let (done, outcomes) = oneshot::channel();
        let job = Job {
            sender: sender.to_string(),
            rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
            copy: copy.clone(),
            done,
            retried: false,
        };
        self.shared.submit(job);
        outcomes.await.unwrap_or_else(|_| {
            vec![Outcome::Deferred(Answer::Broken("the delivery worker stopped".into())); rcpts.len()]
        })
    }
}

impl Drop for SmtpUpstream {
    fn drop(&mut self) {
        let mut pool = self.shared.pool.lock().expect("pool lock");
        pool.closed = true;
        // Idle workers see their channel closed, say QUIT and end.
        pool.waiting.clear();
    }
}

impl Shared {
    fn describe(&self) -> String {
        format!("{}:{}", self.settings.host, self.settings.port)
    }

    /// Hand a copy to an idle worker; else queue it, and start a worker if the cap allows.
    fn submit(self: &Arc<Self>, mut job: Job) {
        let mut pool = self.pool.lock().expect("pool lock");
        while let Some((_, waiter)) = pool.waiting.pop_front() {
            match waiter.send(job) {
                Ok(()) => return,
                Err(back) => job = back,
            }
        }
        pool.queue.push_back(job);
        if pool.workers < self.settings.max_connections && !pool.closed {
            pool.workers += 1;
            drop(pool);
            tokio::spawn(worker(self.clone(), None));
        }
    }

    fn reserve_worker(&self) -> bool {
        let mut pool = self.pool.lock().expect("pool lock");
        let free = pool.workers < self.settings.max_connections && !pool.closed;
        if free {
            pool.workers += 1;
        }
        free
    }

    fn release_worker(&self) {
        self.pool.lock().expect("pool lock").workers -= 1;
    }

    /// A queued copy, without waiting.
    fn try_next(&self) -> Option<Job> {
        self.pool.lock().expect("pool lock").queue.pop_front()
    }

    /// The next copy, waiting up to [`MAX_IDLE`] to be handed one; `None`: the worker ends
    /// (and its slot is given back).
    async fn next(&self) -> Option<Job> {
        let (id, mut handed) = {
            let mut pool = self.pool.lock().expect("pool lock");
            if let Some(job) = pool.queue.pop_front() {
                return Some(job);
            }
            if pool.closed {
                pool.workers -= 1;
                return None;
            }
            let (tx, rx) = oneshot::channel();
            let id = pool.next_waiter;
            pool.next_waiter += 1;
            pool.waiting.push_back((id, tx));
            (id, rx)
        };
        if let Ok(Ok(job)) = tokio::time::timeout(MAX_IDLE, &mut handed).await {
            return Some(job);
        }
        let mut pool = self.pool.lock().expect("pool lock");
        pool.waiting.retain(|(w, _)| *w != id);
        // Handed a copy just as the wait ended.
        if let Ok(job) = handed.try_recv() {
            return Some(job);
        }
        pool.workers -= 1;
        None
    }

    /// Open a connection: TCP with `TCP_NODELAY`, implicit TLS or STARTTLS, EHLO, AUTH. A
    /// refusing reply at any of these stages, or a failed TLS or AUTH exchange, is a refusal
    /// of the relay ([`judge`]); a connection that breaks before TLS merely defers.
    async fn connect(&self) -> Result<(Box<dyn Io>, ReplyReader, Extensions), Stop> {
        let s = &self.settings;
        let remote = self.describe();
        let io_err = |what: &str, e: std::io::Error| {
            Stop::All(Outcome::Deferred(Answer::Broken(format!("{remote}: {what}: {e}"))))
        };
        let tcp = TcpStream::connect((s.host.as_str(), s.port)).await.map_err(|e| io_err("connect", e))?;
        tcp.set_nodelay(true).map_err(|e| io_err("connect", e))?;
        let name = || {
            ServerName::try_from(s.host.clone())
                .map_err(|e| Stop::All(Outcome::Deferred(Answer::Broken(format!("{remote}: {e}")))))
        };
        let handshake = |e: std::io::Error| stop_at(Stage::Tls, Answer::Broken(format!("{remote}: TLS: {e}")));
        let ehlo = format!("EHLO {}\r\n", s.hello);
        let (mut io, mut reader, ext): (Box<dyn Io>, _, _) = match (&s.tls, s.mode) {
            (Some(connector), UpstreamTls::Tls) => {
                let mut io: Box<dyn Io> = Box::new(connector.connect(name()?, tcp).await.map_err(handshake)?);
                let (reader, ext) = greet(&mut io, ehlo.as_bytes(), &remote).await?;
                (io, reader, ext)
            }
            (Some(connector), UpstreamTls::Starttls) => {
                let mut tcp = tcp;
                let (mut reader, ext) = greet(&mut tcp, ehlo.as_bytes(), &remote).await?;
                if !ext.starttls {
                    return Err(stop_at(Stage::Tls, Answer::Broken(format!("{remote}: STARTTLS is not offered"))));
                }
                exchange(&mut tcp, &mut reader, b"STARTTLS\r\n", Stage::Tls).await?;
                let mut io: Box<dyn Io> = Box::new(connector.connect(name()?, tcp).await.map_err(handshake)?);
                let mut reader = ReplyReader::default();
                let raw = exchange(&mut io, &mut reader, ehlo.as_bytes(), Stage::Ehlo).await?;
                (io, reader, Extensions::parse(&raw.message))
            }
            _ => {
                let mut io: Box<dyn Io> = Box::new(tcp);
                let (reader, ext) = greet(&mut io, ehlo.as_bytes(), &remote).await?;
                (io, reader, ext)
            }
        };
        if let Some((user, password)) = &s.credentials {
            let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            if ext.auth_plain {
                let line = format!("AUTH PLAIN {}\r\n", b64(&format!("\0{user}\0{password}")));
                expect_code(exchange(&mut io, &mut reader, line.as_bytes(), Stage::Auth).await?, 235)?;
            } else if ext.auth_login {
                expect_code(exchange(&mut io, &mut reader, b"AUTH LOGIN\r\n", Stage::Auth).await?, 334)?;
                let user = format!("{}\r\n", b64(user));
                expect_code(exchange(&mut io, &mut reader, user.as_bytes(), Stage::Auth).await?, 334)?;
                let password = format!("{}\r\n", b64(password));
                expect_code(exchange(&mut io, &mut reader, password.as_bytes(), Stage::Auth).await?, 235)?;
            } else {
                let why = format!("{remote}: no AUTH mechanism in common (bccguard offers PLAIN and LOGIN)");
                return Err(stop_at(Stage::Auth, Answer::Broken(why)));
            }
        }
        Ok((io, reader, ext))
    }

    /// A copy's outcomes, given to its sender; the relay's status follows.
    fn resolve(&self, job: Job, finished: Finished) {
        let outcomes = match finished.refusal {
            Some(refusal) => {
                self.status.refused(&refusal);
                vec![Outcome::Deferred(Answer::Broken(refusal.text)); job.rcpts.len()]
            }
            None => {
                if finished.mail_accepted {
                    self.status.accepted();
                }
                finished.outcomes
            }
        };
        let _ = job.done.send(outcomes);
    }

    fn stopped(&self, job: Job, stop: Stop) {
        let outcomes = match stop {
            Stop::All(outcome) => vec![outcome; job.rcpts.len()],
            Stop::Refused(refusal) => {
                self.status.refused(&refusal);
                vec![Outcome::Deferred(Answer::Broken(refusal.text)); job.rcpts.len()]
            }
        };
        let _ = job.done.send(outcomes);
    }

    fn timed_out(&self) -> String {
        format!("no answer from {} within {}", self.describe(), humantime::format_duration(self.settings.timeout))
    }
}

/// The greeting, then EHLO.
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    ehlo: &[u8],
    remote: &str,
) -> Result<(ReplyReader, Extensions), Stop> {
    let mut reader = ReplyReader::default();
    exchange(io, &mut reader, b"", Stage::Greeting).await.map_err(|stop| match stop {
        Stop::All(Outcome::Deferred(Answer::Broken(why))) if !why.starts_with(remote) => {
            Stop::All(Outcome::Deferred(Answer::Broken(format!("{remote}: {why}"))))
        }
        other => other,
    })?;
    let raw = exchange(io, &mut reader, ehlo, Stage::Ehlo).await?;
    Ok((reader, Extensions::parse(&raw.message)))
}

/// Write `command` (if any), read one reply, and judge it at `stage`: on anything but
/// acceptance, why the attempt stops.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    reader: &mut ReplyReader,
    command: &[u8],
    stage: Stage,
) -> Result<smtp_proto::Response<String>, Stop> {
    if !command.is_empty() {
        io.write_all(command).await.map_err(|e| stop_at(stage, Answer::Broken(e.to_string())))?;
    }
    let mut buf = [0u8; 4096];
    let raw = loop {
        match reader.next_reply() {
            Ok(Some(raw)) => break raw,
            Ok(None) => {}
            Err(e) => return Err(stop_at(stage, Answer::Broken(e.to_string()))),
        }
        match io.read(&mut buf).await {
            Ok(0) => return Err(stop_at(stage, Answer::Broken("the upstream closed the connection".into()))),
            Ok(n) => reader.feed(&buf[..n]),
            Err(e) => return Err(stop_at(stage, Answer::Broken(e.to_string()))),
        }
    };
    match judge(stage, Answer::Reply(reply_of(&raw))) {
        Judgement::Accepted(_) => Ok(raw),
        judged => Err(stop_judged(judged)),
    }
}

fn expect_code(raw: smtp_proto::Response<String>, code: u16) -> Result<(), Stop> {
    if raw.code == code {
        return Ok(());
    }
    Err(stop_at(Stage::Auth, Answer::Broken(format!("unexpected reply to AUTH: {}", reply_of(&raw)))))
}

/// Why an attempt stops after `answer` at `stage`.
fn stop_at(stage: Stage, answer: Answer) -> Stop {
    stop_judged(judge(stage, answer))
}

fn stop_judged(judged: Judgement) -> Stop {
    match judged {
        Judgement::RelayRefused(refusal) => Stop::Refused(refusal),
        judged => Stop::All(outcome_of(judged)),
    }
}

/// A copy on a connection: its job and when its time is up.
struct InFlight {
    id: u64,
    job: Job,
    deadline: Instant,
    /// Its content was (being) written.
    content: bool,
}

/// One worker: one connection at a time, copies from the queue until it has been idle for
/// [`MAX_IDLE`] or the upstream is dropped.
async fn worker(shared: Arc<Shared>, mut conn: Option<Conn>) {
    loop {
        let Some(job) = shared.next().await else {
            if let Some(conn) = conn {
                quit(conn).await;
            }
            return;
        };
        let deadline = Instant::now() + shared.settings.timeout;
        let c = match conn.take() {
            Some(c) => c,
            None => match timeout_at(deadline, shared.connect()).await {
                Ok(Ok((io, reader, ext))) => Conn { io, client: Client::new(ext, reader), uses: 0 },
                Ok(Err(stop)) => {
                    shared.stopped(job, stop);
                    continue;
                }
                Err(_) => {
                    let why = shared.timed_out();
                    shared.stopped(job, Stop::All(Outcome::Deferred(Answer::Broken(why))));
                    continue;
                }
            },
        };
        conn = session(&shared, c, InFlight { id: 0, job, deadline, content: false }).await;
    }
}

/// Best effort: QUIT, and a second for its reply.
async fn quit(mut conn: Conn) {
    conn.client.quit();
    let out = conn.client.output();
    let bye = async {
        conn.io.write_all(&out).await?;
        let mut buf = [0u8; 512];
        conn.io.read(&mut buf).await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), bye).await;
}

/// Run copies on `conn`, starting with `first`, for as long as copies are queued and the
/// connection is sound. Gives the connection back when it may serve again.
async fn session(shared: &Arc<Shared>, mut conn: Conn, first: InFlight) -> Option<Conn> {
    let mut flights: Vec<InFlight> = Vec::new();
    let mut next_id = first.id + 1;
    start(&mut conn, &mut flights, first);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let out = conn.client.output();
        if !out.is_empty() {
            let deadline =
                flights.iter().map(|f| f.deadline).min().unwrap_or_else(|| Instant::now() + shared.settings.timeout);
            match timeout_at(deadline, conn.io.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => conn.client.close(&format!("{}: {e}", shared.describe())),
                Err(_) => conn.client.close(&shared.timed_out()),
            }
        }
        let mut closed = false;
        while let Some(event) = conn.client.event() {
            match event {
                Event::Content(id) => {
                    let Some(i) = flights.iter().position(|f| f.id == id) else { continue };
                    flights[i].content = true;
                    let copy = flights[i].job.copy.clone();
                    let deadline = flights[i].deadline;
                    let result =
                        timeout_at(deadline, write_content(shared, &mut conn, &copy, &mut flights, &mut next_id));
                    match result.await {
                        Ok(Ok(())) => {}
                        Ok(Err(why)) => conn.client.close(&why),
                        Err(_) => conn.client.close(&shared.timed_out()),
                    }
                }
                Event::Finished(finished) => {
                    let Some(i) = flights.iter().position(|f| f.id == finished.id) else { continue };
                    let flight = flights.swap_remove(i);
                    conn.uses += 1;
                    let again = finished.untouched
                        && !flight.content
                        && !flight.job.retried
                        && Instant::now() < flight.deadline;
                    if again && closed_before_answer(&finished) {
                        // To the front of the queue, not to an idle worker (whose connection
                        // may be as stale): this worker takes it next, on a new connection.
                        let mut job = flight.job;
                        job.retried = true;
                        shared.pool.lock().expect("pool lock").queue.push_front(job);
                    } else {
                        shared.resolve(flight.job, finished);
                    }
                }
                Event::Close(_) => closed = true,
            }
        }
        if closed {
            return None;
        }
        // With BDAT nothing waits for a reply before the content: keep a second copy going.
        if conn.client.chunking()
            && flights.len() == 1
            && conn.uses + 1 < MAX_USES
            && let Some(job) = shared.try_next()
        {
            let deadline = Instant::now() + shared.settings.timeout;
            start(&mut conn, &mut flights, InFlight { id: next_id, job, deadline, content: false });
            next_id += 1;
            continue;
        }
        if flights.is_empty() {
            if conn.uses >= MAX_USES {
                quit(conn).await;
                return None;
            }
            match shared.try_next() {
                Some(job) => {
                    let deadline = Instant::now() + shared.settings.timeout;
                    start(&mut conn, &mut flights, InFlight { id: next_id, job, deadline, content: false });
                    next_id += 1;
                    continue;
                }
                // Replies still awaited (to RSET): the connection is not idle yet.
                None if !conn.client.idle() => {}
                None => return Some(conn),
            }
        }
        if !conn.client.output_pending() {
            let deadline =
                flights.iter().map(|f| f.deadline).min().unwrap_or_else(|| Instant::now() + shared.settings.timeout);
            match timeout_at(deadline, conn.io.read(&mut buf)).await {
                Ok(Ok(0)) => conn.client.close(&format!("{}: the upstream closed the connection", shared.describe())),
                Ok(Ok(n)) => conn.client.receive(&buf[..n]),
                Ok(Err(e)) => conn.client.close(&format!("{}: {e}", shared.describe())),
                Err(_) => conn.client.close(&shared.timed_out()),
            }
        }
    }
}

/// A copy that got no answer at all, and whose content was not written, may go to another
/// connection (the connection was stale, or closed under it).
fn closed_before_answer(finished: &Finished) -> bool {
    finished.refusal.is_none() && finished.outcomes.iter().all(|o| matches!(o, Outcome::Deferred(_)))
}

fn start(conn: &mut Conn, flights: &mut Vec<InFlight>, flight: InFlight) {
    let copy = &flight.job.copy;
    conn.client.submit(Submit {
        id: flight.id,
        sender: flight.job.sender.clone(),
        rcpts: flight.job.rcpts.clone(),
        eight_bit: copy.eight_bit || !copy.head.is_ascii(),
        size: copy.head.len() as u64 + copy.body.len(),
    });
    flights.push(flight);
}

/// Write a copy's content, dot-stuffed, and its final dot; with PIPELINING, the next queued
/// copy's MAIL, RCPTs and DATA go in the same write. If the body cannot be read, nothing more
/// is written: the final dot never goes, and the upstream discards what it got.
async fn write_content(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    copy: &Copy,
    flights: &mut Vec<InFlight>,
    next_id: &mut u64,
) -> Result<(), String> {
    let remote = shared.describe();
    let mut out = Vec::with_capacity(WRITE_SIZE.min(copy.head.len() + copy.body.len() as usize + 512));
    // After BDAT the content goes as it is; after DATA, dot-stuffed and ended by a dot.
    let mut stuffer = (!conn.client.chunking()).then(DotStuffer::default);
    let mut push = |bytes: &[u8], out: &mut Vec<u8>| match stuffer.as_mut() {
        Some(stuffer) => stuffer.push(bytes, out),
        None => out.extend_from_slice(bytes),
    };
    push(&copy.head, &mut out);
    for chunk in copy.body.chunks() {
        let chunk = chunk.map_err(|e| {
            error!(error = %e, "a spooled message could not be read while sending it; the copy is abandoned");
            "the copy could not be read from the spool".to_string()
        })?;
        push(&chunk, &mut out);
        if out.len() >= WRITE_SIZE {
            conn.io.write_all(&out).await.map_err(|e| format!("{remote}: {e}"))?;
            out.clear();
        }
    }
    if let Some(stuffer) = stuffer {
        stuffer.finish(&mut out);
    }
    // At most two copies in flight: the upstream's replies are read before more is written.
    if conn.client.extensions().pipelining
        && flights.len() < 2
        && conn.uses + (flights.len() as u32) < MAX_USES
        && let Some(job) = shared.try_next()
    {
        let deadline = Instant::now() + shared.settings.timeout;
        start(conn, flights, InFlight { id: *next_id, job, deadline, content: false });
        *next_id += 1;
        out.extend_from_slice(&conn.client.output());
    }
    conn.io.write_all(&out).await.map_err(|e| format!("{remote}: {e}"))
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

/// TLS to the upstream (implicit or STARTTLS): the webpki roots plus `upstream.ca_file`, with
/// bccguard's crypto provider.
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
    Ok(TlsConnector::from(Arc::new(config)))
}
