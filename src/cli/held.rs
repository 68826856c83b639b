//! `bccguard queue list --held` and `bccguard queue release ID [--as ...]`: held messages
//! (SPEC §10), whether the relay runs or not. With a relay, through its control socket (the
//! relay releases one message at a time, so a message is delivered at most once); without
//! one, on the spool files under the spool's lock (the release is journaled, and delivered
//! when the relay starts). Deleting a held message is `queue delete ID`, as for any message.
//!
//! This is the operator's view: full addresses are shown (the log never shows them).

use std::io::{self, Write};

use chrono::Utc;

use super::queue::{escape_controls, lock, parse_id, short_duration};
use super::{ConfigArg, EXIT_ERROR};
use crate::config::Config;
use crate::control;
use crate::hold::{HeldSummary, HoldOutcome, ReleaseAs};
use crate::message::decide::Policy;
use crate::spool::SpoolPaths;

/// Exit code when nothing was done because the message is not held (or not there).
pub const EXIT_NOT_HELD: u8 = 1;
/// Longest subject shown in the table (JSON has it whole).
const MAX_SUBJECT_SHOWN: usize = 60;

fn load(config: &ConfigArg) -> Result<(Config, SpoolPaths), String> {
    let config = config.load().map_err(|e| e.to_string().trim_end().to_string())?;
    let paths = SpoolPaths::new(&config.spool.dir);
    Ok((config, paths))
}

/// What the running relay answered; `Ok(None)` when no relay listens on the spool's socket.
fn ask(paths: &SpoolPaths, request: &str) -> Result<Option<String>, String> {
    match control::request(&paths.control_socket(), request) {
        Ok(reply) => match reply.strip_prefix("ok ") {
            Some(rest) => Ok(Some(rest.to_string())),
            None => Err(reply.strip_prefix("error: ").unwrap_or(&reply).to_string()),
        },
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => Ok(None),
        Err(e) => Err(format!("cannot reach the relay: {e}")),
    }
}

/// `queue list --held [--json]`.
pub fn list(config: &ConfigArg, json: bool, out: &mut impl Write) -> Result<(), String> {
    let (config, paths) = load(config)?;
    let held: Vec<HeldSummary> = match ask(&paths, "held")? {
        Some(text) => serde_json::from_str(&text).map_err(|e| format!("the relay's answer: {e}"))?,
        None => {
            let ids = paths.ids().map_err(|e| format!("cannot read the spool: {e}"))?;
            let max_age = config.hold.max_age.0.as_millis() as i64;
            paths.held_summaries(&ids, max_age).map_err(|e| e.to_string())?
        }
    };
    let written = if json {
        serde_json::to_writer_pretty(&mut *out, &held).map_err(io::Error::other).and_then(|()| writeln!(out))
    } else {
        table(&held, Utc::now().timestamp_millis(), out)
    };
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| e.to_string()),
    }
}

fn table(held: &[HeldSummary], now: i64, out: &mut impl Write) -> io::Result<()> {
    if held.is_empty() {
        return writeln!(out, "No messages are held.");
    }
    let rows: Vec<[String; 8]> = held.iter().map(|h| row(h, now)).collect();
    let header = ["ID", "AGE", "EXPIRES", "SENDER", "RCPTS", "EXPOSURE", "RULE", "SUBJECT"];
    super::table::write(out, &header, &rows)?;
    let n = held.len();
    writeln!(
        out,
        "\n{n} held message{}: `bccguard queue release ID [--as explode|undisclose|pass]` delivers one, \
         `bccguard queue delete ID` drops it; unreleased, each is deleted when it expires and its sender told.",
        if n == 1 { "" } else { "s" }
    )
}

/// One table row; every text from the message shown with its control characters escaped.
fn row(h: &HeldSummary, now: i64) -> [String; 8] {
    let sender = if h.sender.is_empty() { "<>".to_string() } else { escape_controls(&h.sender) };
    let subject = escape_controls(&h.subject);
    let subject = if subject.chars().count() > MAX_SUBJECT_SHOWN {
        format!("{}…", subject.chars().take(MAX_SUBJECT_SHOWN - 1).collect::<String>())
    } else if subject.is_empty() {
        "-".to_string()
    } else {
        subject
    };
    let expires = if h.expires_at <= now {
        "now".to_string()
    } else {
        format!("in {}", short_duration((h.expires_at - now) / 1000))
    };
    [
        h.id.to_string(),
        short_duration((now - h.received_at) / 1000),
        expires,
        sender,
        h.recipients.to_string(),
        h.exposure.to_string(),
        escape_controls(h.rule.as_deref().unwrap_or("default")),
        subject,
    ]
}

/// `queue release ID [--as HOW]`: exit 0 when released now, [`EXIT_NOT_HELD`] when the
/// message is not held or not in the queue (nothing done), 2 on an error.
pub fn release(config: &ConfigArg, id: &str, how: ReleaseAs, out: &mut impl Write, err: &mut impl Write) -> u8 {
    match try_release(config, id, how) {
        Ok((HoldOutcome::Done, live)) => {
            let when = if live { "it is being delivered now" } else { "it will be delivered when bccguard starts" };
            let _ = writeln!(out, "Released {id} as {}: {when}.", how.as_str());
            0
        }
        Ok((HoldOutcome::NotHeld, _)) => {
            let _ = writeln!(err, "bccguard queue: {id} is not held (already released?); nothing done");
            EXIT_NOT_HELD
        }
        Ok((HoldOutcome::NotFound, _)) => {
            let _ = writeln!(err, "bccguard queue: {id} is not in the queue; nothing done");
            EXIT_NOT_HELD
        }
        Err(message) => {
            let _ = writeln!(err, "bccguard queue: {message}");
            EXIT_ERROR
        }
    }
}

/// The outcome, and whether a running relay did it.
fn try_release(config: &ConfigArg, id: &str, how: ReleaseAs) -> Result<(HoldOutcome, bool), String> {
    let (config, paths) = load(config)?;
    let id = parse_id(id)?;
    if let Some(word) = ask(&paths, &format!("release {id} {}", how.as_str()))? {
        let outcome = match word.as_str() {
            "done" => HoldOutcome::Done,
            "not_held" => HoldOutcome::NotHeld,
            "not_found" => HoldOutcome::NotFound,
            other => return Err(format!("unexpected answer from the relay: {other:?}")),
        };
        return Ok((outcome, true));
    }
    let _lock = lock(&paths)?;
    let policy = Policy::from_config(&config.policy);
    let now = Utc::now().timestamp_millis();
    match paths.release_blocking(&id, how, &policy, now).map_err(|e| e.to_string())? {
        Ok(_) => Ok((HoldOutcome::Done, false)),
        Err(outcome) => Ok((outcome, false)),
    }
}
