//! The connection loop: the only code that reads and writes client sockets. It feeds the
//! session, carries out its steps, and enforces the idle timeout, the command and data
//! deadlines, and shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{Instrument, debug, error, info_span};

use super::reply::{self, Reply};
use super::session::{Awaiting, Incoming, Session, Step};
use super::{Body, DATA_RESERVATION, Frontend, Intake, SPILL_AT};
use crate::shutdown::Shutdown;
use crate::spool::Spill;

/// How long a closing connection is drained so the peer reads our last reply (a close with
/// unread input would send a TCP reset, which can destroy that reply in flight).
const LINGER: Duration = Duration::from_secs(2);

/// How one pass of the loop ended.
enum Outcome {
    Closed,
    StartTls,
}

/// Serve one client from greeting to close.
pub async fn handle(stream: TcpStream, peer: SocketAddr, front: Arc<Frontend>, shutdown: Shutdown) {
    let span = info_span!("session", client = %peer);
    async move {
        let snapshot = front.snapshot();
        let mut session = Session::new(snapshot.params.clone(), peer);
        let mut conn = Conn::new(stream, front.idle_timeout());
        session.greeting().write_to(&mut conn.output);
        let ctx = Ctx { front: &front, users: &snapshot.users, shutdown: &shutdown };
        match drive(&mut conn, &mut session, &ctx).await {
            Ok(Outcome::StartTls) => start_tls(conn, session, &ctx).await,
            Ok(Outcome::Closed) => {}
            Err(e) => debug!(error = %e, "connection ended"),
        }
    }
    .instrument(span)
    .await
}

/// Answer a client that may not have a session (too many connections) with `reply` and close.
pub async fn refuse(stream: TcpStream, reply: Reply, idle: Duration) {
    let mut conn = Conn::new(stream, idle);
    reply.write_to(&mut conn.output);
    if conn.flush().await.is_ok() {
        conn.linger_close().await;
    }
}

struct Ctx<'a> {
    front: &'a Frontend,
    users: &'a super::auth::Users,
    shutdown: &'a Shutdown,
}

async fn start_tls(conn: Conn<TcpStream>, mut session: Session, ctx: &Ctx<'_>) {
    let Some(acceptor) = ctx.front.tls.clone() else {
        return;
    };
    let idle = conn.idle;
    // The handshake is answered like a command: whole within the command deadline.
    let deadline = idle.min(ctx.front.command_timeout());
    let tls = match tokio::time::timeout(deadline, acceptor.accept(conn.stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return debug!(error = %e, "TLS handshake failed"),
        Err(_) => return debug!("TLS handshake timed out"),
    };
    session.tls_started();
    let mut conn = Conn::new(tls, idle);
    conn.tls = true;
    if let Err(e) = drive(&mut conn, &mut session, ctx).await {
        debug!(error = %e, "connection ended");
    }
}

async fn drive<S>(conn: &mut Conn<S>, session: &mut Session, ctx: &Ctx<'_>) -> io::Result<Outcome>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut pending: Option<Step> = None;
    let mut sink = DataSink::default();
    let mut deadlines = Deadlines::new(ctx.front.command_timeout(), ctx.front.data_timeout());
    loop {
        if pending.is_none() && ctx.shutdown.soft.is_cancelled() && !session.in_transaction() {
            pending = Some(Step::Close(reply::SHUTTING_DOWN));
        }
        let step = match pending.take() {
            Some(step) => step,
            None => session.advance(&mut conn.input),
        };
        if !session.in_data() && !matches!(step, Step::Message(_)) {
            // The data ended without a message (too big, NUL, closed): drop its spill file.
            sink = DataSink::default();
        }
        if !matches!(step, Step::NeedInput) {
            deadlines.progress();
        }
        match step {
            Step::Reply(r) => r.write_to(&mut conn.output),
            Step::NeedInput => {
                if session.data_buffered() >= SPILL_AT {
                    sink.spill_from(session, ctx.front.intake.as_ref()).await;
                }
                conn.flush().await?;
                let deadline = deadlines.next(session.awaiting(&conn.input), Instant::now());
                if let Read::End(last) = conn.read(session.in_transaction(), deadline, ctx.shutdown).await? {
                    return conn.close_with(last).await;
                }
            }
            Step::Close(r) => return conn.close_with(Some(r)).await,
            Step::StartTls => {
                reply::READY_FOR_TLS.write_to(&mut conn.output);
                conn.flush().await?;
                // Anything the client sent after STARTTLS came in the clear: never use it.
                conn.input.clear();
                return Ok(Outcome::StartTls);
            }
            Step::Authenticate(credentials) => {
                let user = credentials.user.clone();
                let ok = ctx.front.password_checks.check(ctx.users, credentials).await;
                pending = Some(session.auth_result(ok.then_some(user)));
            }
            Step::CheckSpace { size } => {
                pending = Some(session.space_checked(ctx.front.free_space.has_room(size)));
            }
            Step::ReserveData => {
                sink = DataSink::default();
                sink.permit = ctx.front.data_budget.clone().try_acquire_many_owned(DATA_RESERVATION).ok();
                pending = Some(session.data_reserved(sink.permit.is_some()));
            }
            Step::Message(mut incoming) => {
                let r = match sink.finish(&mut incoming).await {
                    Ok(body) => ctx.front.intake.accept(incoming, body).await,
                    Err(r) => r,
                };
                // The reservation lasts until the message is stored (or refused).
                sink = DataSink::default();
                r.write_to(&mut conn.output);
            }
        }
    }
}

/// Where a message's data goes while it arrives: its share of the memory budget, and the
/// spill file once it outgrows [`SPILL_AT`].
#[derive(Default)]
struct DataSink {
    permit: Option<OwnedSemaphorePermit>,
    spill: Option<Spill>,
    /// The spill file could not be written: the message is read to its end and refused.
    failed: bool,
}

impl DataSink {
    /// Move what the session holds of the message to the spill file.
    async fn spill_from(&mut self, session: &mut Session, intake: &dyn Intake) {
        let chunk = session.take_data();
        if self.failed {
            return;
        }
        if self.spill.is_none() {
            match intake.spill().await {
                Ok(spill) => self.spill = Some(spill),
                Err(e) => return self.fail(&e),
            }
        }
        if let Some(spill) = &mut self.spill
            && let Err(e) = spill.append(chunk).await
        {
            self.fail(&e);
        }
    }

    fn fail(&mut self, e: &io::Error) {
        error!(error = %e, "cannot write an arriving message to its spill file; it will be refused with 451");
        self.failed = true;
        self.spill = None;
    }

    /// The whole message: what the session still holds, after what was spilled.
    async fn finish(&mut self, incoming: &mut Incoming) -> Result<Body, Reply> {
        let tail = std::mem::take(&mut incoming.data);
        if self.failed {
            return Err(reply::STORAGE_FAILED);
        }
        match self.spill.take() {
            None => Ok(Body::Memory(tail)),
            Some(mut spill) => match spill.append(tail).await {
                Ok(()) => Ok(Body::Spilled(spill)),
                Err(e) => {
                    self.fail(&e);
                    Err(reply::STORAGE_FAILED)
                }
            },
        }
    }
}

/// `server.command_timeout` and `server.data_timeout`: when the command line or the message
/// being received began, so that a client trickling bytes cannot hold its session past them
/// (the idle timeout alone is reset by every byte).
struct Deadlines {
    command: Duration,
    data: Duration,
    started: Option<(Awaiting, Instant)>,
}

impl Deadlines {
    fn new(command: Duration, data: Duration) -> Self {
        Deadlines { command, data, started: None }
    }

    /// The session completed a command line or a message: the next one starts its own clock.
    fn progress(&mut self) {
        self.started = None;
    }

    /// The session needs input while `awaiting`: the deadline for it, with the reply to send
    /// when it passes (`None`: only the idle timeout applies).
    fn next(&mut self, awaiting: Awaiting, now: Instant) -> Option<(Instant, Reply)> {
        let (limit, reply) = match awaiting {
            Awaiting::NextCommand => {
                self.started = None;
                return None;
            }
            Awaiting::RestOfLine => (self.command, reply::COMMAND_TIMEOUT),
            Awaiting::Data => (self.data, reply::DATA_TIMEOUT),
        };
        let since = match self.started {
            Some((what, since)) if what == awaiting => since,
            _ => self.started.insert((awaiting, now)).1,
        };
        Some((since + limit, reply))
    }
}

/// What a read brought.
enum Read {
    /// More input is buffered.
    More,
    /// The session must end, with these last words (none at end of input).
    End(Option<Reply>),
}

struct Conn<S> {
    stream: S,
    input: BytesMut,
    output: Vec<u8>,
    idle: Duration,
    /// The stream is TLS: closing it sends close_notify.
    tls: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S, idle: Duration) -> Self {
        Conn { stream, input: BytesMut::with_capacity(8192), output: Vec::with_capacity(1024), idle, tls: false }
    }

    async fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let write = async {
            self.stream.write_all(&self.output).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.idle, write).await {
            Ok(result) => result?,
            Err(_) => return Err(io::ErrorKind::TimedOut.into()),
        }
        self.output.clear();
        Ok(())
    }

    /// Read more input, unless the client idles too long, the `deadline` passes, or the relay
    /// shuts down (a soft shutdown waits while `busy`, i.e. inside a transaction).
    async fn read(&mut self, busy: bool, deadline: Option<(Instant, Reply)>, shutdown: &Shutdown) -> io::Result<Read> {
        let now = Instant::now();
        let (at, expired) = match deadline {
            Some((at, reply)) if at < now + self.idle => (at, reply),
            _ => (now + self.idle, reply::IDLE_TIMEOUT),
        };
        // Checked before reading too: a client that always has bytes ready (an endless line)
        // would otherwise never let the timer fire.
        if at <= now {
            return Ok(Read::End(Some(expired)));
        }
        tokio::select! {
            biased;
            _ = shutdown.hard.cancelled() => Ok(Read::End(Some(reply::SHUTTING_DOWN))),
            _ = shutdown.soft.cancelled(), if !busy => Ok(Read::End(Some(reply::SHUTTING_DOWN))),
            read = tokio::time::timeout_at(at, self.stream.read_buf(&mut self.input)) => match read {
                Err(_) => Ok(Read::End(Some(expired))),
                Ok(Ok(0)) => Ok(Read::End(None)),
                Ok(Ok(_)) => Ok(Read::More),
                Ok(Err(e)) => Err(e),
            },
        }
    }

    /// Send `last` and close. After 221 to QUIT the client has nothing more to send: the
    /// connection is closed without waiting to drain it (TLS sends its close_notify first; a
    /// plain connection's FIN goes when it is dropped).
    async fn close_with(&mut self, last: Option<Reply>) -> io::Result<Outcome> {
        if let Some(r) = last {
            r.write_to(&mut self.output);
            self.flush().await?;
            if r == reply::BYE {
                if self.tls {
                    let _ = self.stream.shutdown().await;
                }
            } else {
                self.linger_close().await;
            }
        }
        Ok(Outcome::Closed)
    }

    /// Half-close, then drain what the client still sends for a moment before dropping.
    async fn linger_close(&mut self) {
        let drain = async {
            let _ = self.stream.shutdown().await;
            let mut sink = [0u8; 4096];
            while let Ok(n) = self.stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_line_keeps_its_clock_until_it_is_complete() {
        let mut d = Deadlines::new(Duration::from_secs(10), Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(d.next(Awaiting::NextCommand, t0), None);
        let first = d.next(Awaiting::RestOfLine, t0).unwrap();
        assert_eq!(first, (t0 + Duration::from_secs(10), reply::COMMAND_TIMEOUT));
        let later = d.next(Awaiting::RestOfLine, t0 + Duration::from_secs(3)).unwrap();
        assert_eq!(later.0, first.0, "more bytes of the same line do not move the deadline");
        d.progress();
        let next_line = d.next(Awaiting::RestOfLine, t0 + Duration::from_secs(4)).unwrap();
        assert_eq!(next_line.0, t0 + Duration::from_secs(14));
    }

    #[test]
    fn the_data_clock_runs_from_354_to_the_dot() {
        let mut d = Deadlines::new(Duration::from_secs(10), Duration::from_secs(60));
        let t0 = Instant::now();
        d.next(Awaiting::RestOfLine, t0);
        let data = d.next(Awaiting::Data, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(data, (t0 + Duration::from_secs(61), reply::DATA_TIMEOUT));
        assert_eq!(d.next(Awaiting::Data, t0 + Duration::from_secs(30)).unwrap().0, data.0);
        assert_eq!(d.next(Awaiting::NextCommand, t0 + Duration::from_secs(31)), None);
        let again = d.next(Awaiting::Data, t0 + Duration::from_secs(32)).unwrap();
        assert_eq!(again.0, t0 + Duration::from_secs(92));
    }
}
