//! The control socket (`spool/control.sock`): how `bccguard queue retry|delete` reach the
//! running relay. One request line, one reply line:
//!
//! ```text
//! retry          -> ok 12        (every message, now)
//! retry ID       -> ok 1
//! delete ID      -> ok 1 | ok 0
//! unwritten      -> ok [["ID", [record, ...]], ...]   (journal records held in memory)
//! held           -> ok [summary, ...]                 (held messages, oldest first)
//! release ID AS  -> ok done | ok not_held | ok not_found   (AS: explode|undisclose|pass)
//! breakers       -> ok {listing}                      (the campaign breaker: settings, keys)
//! breaker-reset KEY -> ok 1 | ok 0                   (KEY: the rest of the line)
//! anything else  -> error: ...
//! ```

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::breaker::Control;
use crate::delivery::Deliverer;
use crate::hold::{HeldQueue, HoldOutcome, ReleaseAs};
use crate::queue_id::QueueId;

/// Longest request line read.
const MAX_REQUEST: u64 = 256;

/// Bind the socket, replacing a stale one (the caller holds the spool lock, so no other relay
/// owns it).
pub fn listen(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    UnixListener::bind(path)
}

/// Answer requests until `stop` is cancelled, then wait for the answers under way: each
/// holds the delivery side (and through it the spool and its lock), which must be let go of
/// when the relay has stopped.
pub async fn serve(listener: UnixListener, deliverer: Deliverer, breaker: Control, stop: CancellationToken) {
    let answers = tokio_util::task::TaskTracker::new();
    while let Some((stream, _)) = crate::accept::next(&stop, "control socket", || listener.accept()).await {
        let deliverer = deliverer.clone();
        let breaker = breaker.clone();
        answers.spawn(async move {
            if let Err(e) = answer(stream, deliverer, breaker).await {
                warn!(error = %e, "control request failed");
            }
        });
    }
    answers.close();
    answers.wait().await;
}

async fn answer(stream: UnixStream, deliverer: Deliverer, breaker: Control) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    AsyncBufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST)).read_line(&mut line).await?;
    let reply = if line.trim() == "breakers" {
        let listing = breaker.listing(chrono::Utc::now().timestamp_millis()).await;
        format!("ok {}\n", serde_json::to_string(&listing).map_err(io::Error::other)?)
    } else if let Some(key) = line.trim_end_matches(['\r', '\n']).strip_prefix("breaker-reset ") {
        format!("ok {}\n", u8::from(breaker.reset(key).await))
    } else if line.trim() == "unwritten" {
        match deliverer.unwritten().await {
            Ok(held) => format!("ok {}\n", serde_json::to_string(&held).map_err(io::Error::other)?),
            Err(e) => format!("error: {e}\n"),
        }
    } else if line.trim() == "held" {
        match deliverer.held().await {
            Ok(held) => format!("ok {}\n", serde_json::to_string(&held).map_err(io::Error::other)?),
            Err(e) => format!("error: {e}\n"),
        }
    } else if let Some(args) = line.trim().strip_prefix("release ") {
        match release(args, &deliverer).await {
            Ok(outcome) => format!("ok {}\n", outcome_word(outcome)),
            Err(e) => format!("error: {e}\n"),
        }
    } else {
        match execute(line.trim(), &deliverer).await {
            Ok(n) => format!("ok {n}\n"),
            Err(e) => format!("error: {e}\n"),
        }
    };
    write.write_all(reply.as_bytes()).await
}

async fn execute(request: &str, deliverer: &Deliverer) -> Result<usize, String> {
    let mut words = request.split_whitespace();
    let id =
        |w: Option<&str>| w.map(|s| QueueId::parse(s).ok_or_else(|| format!("{s:?} is not a queue id"))).transpose();
    match (words.next(), words.next(), words.next()) {
        (Some("retry"), w, None) => deliverer.retry(id(w)?).await.map_err(|e| e.to_string()),
        (Some("delete"), Some(w), None) => {
            let id = id(Some(w))?.expect("given");
            deliverer.delete(id).await.map(usize::from).map_err(|e| e.to_string())
        }
        _ => Err(format!("unknown request {request:?}")),
    }
}

/// `release ID AS`.
async fn release(args: &str, deliverer: &Deliverer) -> Result<HoldOutcome, String> {
    let mut words = args.split_whitespace();
    let (Some(id), how, None) = (words.next(), words.next(), words.next()) else {
        return Err(format!("unknown request \"release {args}\""));
    };
    let id = QueueId::parse(id).ok_or_else(|| format!("{id:?} is not a queue id"))?;
    let how = how.map(str::parse::<ReleaseAs>).transpose()?.unwrap_or_default();
    deliverer.release(&id, how).await.map_err(|e| e.to_string())
}

/// The word for a held-queue outcome on the control socket.
pub fn outcome_word(outcome: HoldOutcome) -> &'static str {
    match outcome {
        HoldOutcome::Done => "done",
        HoldOutcome::NotHeld => "not_held",
        HoldOutcome::NotFound => "not_found",
    }
}

/// Send one request to the relay at `path` and return its reply line (blocking; for the CLI).
pub fn request(path: &Path, line: &str) -> io::Result<String> {
    let mut stream = StdUnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(format!("{line}\n").as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    Ok(reply.trim_end().to_string())
}
