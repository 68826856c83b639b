//! `bccguard queue list [--held] | retry [ID] | delete ID | release ID`: inspect and act on
//! the spool, whether the relay runs or not (held messages: see [`super::held`]). Listing reads the spool files (they are never rewritten in place);
//! retry and delete go through the running relay's control socket, or, when no relay holds
//! the spool, act on the files directly.

use std::collections::HashMap;
use std::io::{self, Read, Write};

use chrono::{TimeZone, Utc};
use serde::Serialize;

use super::{ConfigArg, EXIT_ERROR};
use crate::control;
use crate::events::Redaction;
use crate::queue_id::QueueId;
use crate::spool::SpoolPaths;
use crate::spool::record::{Record, TxnStatus};

/// Longest reply text shown in the table (JSON has it whole).
const MAX_REPLY_SHOWN: usize = 60;
/// The listed state of a bounce that cannot be delivered.
const FAILED_BOUNCE: &str = "failed bounce";
/// The listed state of a message held for a person.
const HELD: &str = "held";

/// `bccguard queue ...`.
#[derive(Debug, clap::Subcommand)]
pub enum QueueCommand {
    /// List the messages in the queue.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only the held messages (id, age, sender, subject, exposure, rule).
        #[arg(long)]
        held: bool,
    },
    /// Deliver a held message (exit 1 when it is not held: nothing done).
    Release {
        #[command(flatten)]
        config: ConfigArg,
        /// Queue id.
        id: String,
        /// How: explode (a copy to each external recipient alone), undisclose, or pass (as it
        /// is). The plan is made now, with the policy in force.
        #[arg(long = "as", value_name = "HOW", default_value = "explode")]
        how: crate::hold::ReleaseAs,
    },
    /// Try one message (or every message) now, whatever its schedule.
    Retry {
        #[command(flatten)]
        config: ConfigArg,
        /// Queue id [default: every message].
        id: Option<String>,
    },
    /// Remove a message from the queue without delivering it.
    Delete {
        #[command(flatten)]
        config: ConfigArg,
        /// Queue id.
        id: String,
    },
}

/// One message, as listed.
#[derive(Debug, Default, Serialize)]
struct Entry {
    id: String,
    /// `pending`; `failed bounce`: a bounce (or null-sender message) that failed for good
    /// and waits for an operator (`queue retry` tries it again, `queue delete` drops it);
    /// `damaged`: set aside in damaged/, never delivered; `unreadable`: in the queue, but its
    /// file cannot be read (the relay sets it aside when it next looks at it).
    state: &'static str,
    /// Why a damaged or unreadable message is so.
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<String>,
    received_at: String,
    age_seconds: i64,
    sender: String,
    recipients: usize,
    transactions: Counts,
    next_attempt: Option<String>,
    last_reply: Option<String>,
    #[serde(skip)]
    next_ms: Option<i64>,
}

#[derive(Debug, Default, Serialize)]
struct Counts {
    pending: usize,
    delivered: usize,
    failed: usize,
}

/// Run a queue subcommand; returns the exit code.
pub fn run(command: &QueueCommand, out: &mut impl Write, err: &mut impl Write) -> u8 {
    let result = match command {
        QueueCommand::List { config, json, held: true } => super::held::list(config, *json, out),
        QueueCommand::List { config, json, held: false } => list(config, *json, out),
        QueueCommand::Release { config, id, how } => return super::held::release(config, id, *how, out, err),
        QueueCommand::Retry { config, id } => retry(config, id.as_deref(), out),
        QueueCommand::Delete { config, id } => delete(config, id, out),
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            let _ = writeln!(err, "bccguard queue: {message}");
            EXIT_ERROR
        }
    }
}

fn spool(config: &ConfigArg) -> Result<(SpoolPaths, Redaction), String> {
    let config = config.load().map_err(|e| e.to_string().trim_end().to_string())?;
    Ok((SpoolPaths::new(&config.spool.dir), Redaction(config.log.redact_addresses)))
}

fn list(config: &ConfigArg, json: bool, out: &mut impl Write) -> Result<(), String> {
    let (paths, redaction) = spool(config)?;
    let now = Utc::now().timestamp_millis();
    let ids = paths.ids().map_err(|e| format!("cannot read the spool: {e}"))?;
    let damaged = paths.damaged_ids().map_err(|e| format!("cannot read the spool: {e}"))?;
    let held = unwritten(&paths);
    let mut entries: Vec<Entry> = ids
        .iter()
        .filter_map(|id| entry(&paths, id, held.get(id).map_or(&[], Vec::as_slice), redaction, now))
        .collect();
    entries.extend(damaged.iter().map(|id| damaged_entry(&paths, id, redaction, now)));
    let written = if json {
        serde_json::to_writer_pretty(&mut *out, &entries).map_err(io::Error::other).and_then(|()| writeln!(out))
    } else {
        table(&entries, now, out)
    };
    match written {
        // The reader went away (`| head`): not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| e.to_string()),
    }
}

/// Journal records the running relay holds in memory because the spool would not take them
/// (none when no relay runs): the live state is the journal on disk followed by these.
fn unwritten(paths: &SpoolPaths) -> HashMap<QueueId, Vec<Record>> {
    let Ok(reply) = control::request(&paths.control_socket(), "unwritten") else {
        return HashMap::new();
    };
    let held: Vec<(QueueId, Vec<Record>)> =
        reply.strip_prefix("ok ").and_then(|json| serde_json::from_str(json).ok()).unwrap_or_default();
    held.into_iter().collect()
}

/// A message's listing entry (`held`: its journal records not yet on disk); `None` if it
/// vanished meanwhile (delivered).
fn entry(paths: &SpoolPaths, id: &QueueId, held: &[Record], redaction: Redaction, now: i64) -> Option<Entry> {
    let (meta, mut state) = match paths.load_meta(id) {
        Ok(loaded) => loaded,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            let file = paths.queue().join(format!("{id}.msg"));
            return Some(unreadable(id, "unreadable", e.to_string(), &file, now));
        }
    };
    for r in held {
        state.apply(r);
    }
    let mut counts = Counts::default();
    for t in 0..meta.plan.transactions.len() {
        match state.txn_status(&meta.plan, t) {
            TxnStatus::Pending => counts.pending += 1,
            TxnStatus::Delivered => counts.delivered += 1,
            TxnStatus::Failed => counts.failed += 1,
        }
    }
    let next_ms = state.next_attempt(&meta.plan);
    let failed_bounce = (meta.dsn || meta.sender.is_empty()) && state.is_failed_bounce();
    let state_word = if meta.is_held() {
        HELD
    } else if failed_bounce {
        FAILED_BOUNCE
    } else {
        "pending"
    };
    let rfc3339 = |ms: i64| Utc.timestamp_millis_opt(ms).single().map(|t| t.to_rfc3339());
    Some(Entry {
        id: id.to_string(),
        state: state_word,
        problem: None,
        received_at: rfc3339(meta.received_at).unwrap_or_default(),
        age_seconds: (now - meta.received_at) / 1000,
        sender: redaction.address(&meta.sender),
        recipients: meta.recipients.len(),
        transactions: counts,
        next_attempt: next_ms.and_then(|ms| rfc3339(ms.max(meta.received_at))),
        last_reply: state.last_reply.map(|r| redaction.text(&r)),
        next_ms,
    })
}

/// A message in damaged/: what its envelope line still tells, and why it was set aside.
fn damaged_entry(paths: &SpoolPaths, id: &QueueId, redaction: Redaction, now: i64) -> Entry {
    let file = paths.damaged().join(format!("{id}.msg"));
    let reason = paths.damage_reason(id);
    let mut entry = unreadable(id, "damaged", reason, &file, now);
    let meta = std::fs::File::open(&file).ok().and_then(|f| {
        let mut line = String::new();
        io::BufRead::read_line(&mut io::BufReader::new(f).take(1 << 20), &mut line).ok()?;
        serde_json::from_str::<crate::spool::record::Meta>(&line).ok()
    });
    if let Some(meta) = meta {
        entry.sender = redaction.address(&meta.sender);
        entry.recipients = meta.recipients.len();
        entry.age_seconds = (now - meta.received_at) / 1000;
    }
    entry
}

/// An entry for a file whose envelope cannot be trusted: its age from the file's time.
fn unreadable(id: &QueueId, state: &'static str, problem: String, file: &std::path::Path, now: i64) -> Entry {
    let modified = std::fs::metadata(file).and_then(|m| m.modified()).ok();
    let at = modified.map(|t| chrono::DateTime::<Utc>::from(t).timestamp_millis()).unwrap_or(now);
    Entry {
        id: id.to_string(),
        state,
        problem: Some(problem),
        received_at: Utc.timestamp_millis_opt(at).single().map(|t| t.to_rfc3339()).unwrap_or_default(),
        age_seconds: (now - at) / 1000,
        sender: "-".into(),
        ..Entry::default()
    }
}

fn table(entries: &[Entry], now: i64, out: &mut impl Write) -> io::Result<()> {
    if entries.is_empty() {
        return writeln!(out, "The queue is empty.");
    }
    let rows: Vec<[String; 10]> = entries
        .iter()
        .map(|e| {
            let next = match e.next_ms {
                None => "-".to_string(),
                Some(ms) if ms <= now => "now".to_string(),
                Some(ms) => format!("in {}", short_duration((ms - now) / 1000)),
            };
            let reply = e.problem.as_deref().or(e.last_reply.as_deref());
            let reply = reply.map_or("-".to_string(), |r| shorten(&escape_controls(r)));
            [
                e.id.clone(),
                e.state.to_string(),
                short_duration(e.age_seconds),
                e.sender.clone(),
                e.recipients.to_string(),
                e.transactions.pending.to_string(),
                e.transactions.delivered.to_string(),
                e.transactions.failed.to_string(),
                next,
                reply,
            ]
        })
        .collect();
    let header = ["ID", "STATE", "AGE", "SENDER", "RCPTS", "PENDING", "DELIVERED", "FAILED", "NEXT", "LAST REPLY"];
    super::table::write(out, &header, &rows)?;
    let pending: usize = entries.iter().map(|e| e.transactions.pending).sum();
    let n = entries.len();
    write!(out, "\n{n} message{}, {pending} transaction{} pending", plural(n), plural(pending))?;
    match entries.iter().filter(|e| e.state == FAILED_BOUNCE).count() {
        0 => {}
        f => write!(out, ", {f} failed bounce{} (queue retry or queue delete)", plural(f))?,
    }
    match entries.iter().filter(|e| e.state == HELD).count() {
        0 => {}
        h => write!(out, ", {h} held (queue list --held)")?,
    }
    match entries.iter().filter(|e| matches!(e.state, "damaged" | "unreadable")).count() {
        0 => writeln!(out),
        d => writeln!(out, "; {d} damaged or unreadable, never delivered (see spool/damaged/)"),
    }
}

/// Text from an upstream made safe for a terminal: C0 and C1 control characters and DEL
/// shown as `\x1b`, `\u{9b}` (and a backslash doubled, so the escapes are unambiguous).
pub(super) fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\0'..='\x1f' | '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            '\u{80}'..='\u{9f}' => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn shorten(reply: &str) -> String {
    if reply.chars().count() <= MAX_REPLY_SHOWN {
        reply.to_string()
    } else {
        let cut: String = reply.chars().take(MAX_REPLY_SHOWN - 1).collect();
        format!("{cut}…")
    }
}

/// `45s`, `12m`, `3h`, `2d`.
pub(super) fn short_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86400),
    }
}

/// Ask the running relay; `Ok(None)` when no relay listens on the spool's socket.
fn ask_relay(paths: &SpoolPaths, request: &str) -> Result<Option<usize>, String> {
    match control::request(&paths.control_socket(), request) {
        Ok(reply) => match reply.strip_prefix("ok ").and_then(|n| n.parse().ok()) {
            Some(n) => Ok(Some(n)),
            None => Err(reply.strip_prefix("error: ").unwrap_or(&reply).to_string()),
        },
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) => Ok(None),
        Err(e) => Err(format!("cannot reach the relay: {e}")),
    }
}

pub(super) fn parse_id(id: &str) -> Result<QueueId, String> {
    QueueId::parse(id).ok_or_else(|| format!("{id:?} is not a queue id (16 hex digits, as `queue list` shows)"))
}

/// Take the spool's lock for direct changes; fails if a relay holds it.
pub(super) fn lock(paths: &SpoolPaths) -> Result<std::fs::File, String> {
    paths
        .try_lock()
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "a bccguard relay holds the spool but its control socket does not answer; try again".to_string())
}

fn retry(config: &ConfigArg, id: Option<&str>, out: &mut impl Write) -> Result<(), String> {
    let (paths, _) = spool(config)?;
    let id = id.map(parse_id).transpose()?;
    let request = match &id {
        Some(id) => format!("retry {id}"),
        None => "retry".to_string(),
    };
    if let Some(n) = ask_relay(&paths, &request)? {
        return writeln!(out, "Retrying {n} message{} now.", plural(n)).map_err(|e| e.to_string());
    }
    let _lock = lock(&paths)?;
    let ids = match id {
        Some(id) => vec![id],
        None => paths.ids().map_err(|e| e.to_string())?,
    };
    let at = Utc::now().timestamp_millis();
    let mut n = 0;
    for id in &ids {
        let mut records = vec![Record::Retry { at }];
        if let Ok((meta, state)) = paths.load_meta(id)
            && (meta.dsn || meta.sender.is_empty())
            && state.is_failed_bounce()
        {
            records.push(Record::Requeued { rcpts: state.unbounced(), at });
        }
        match paths.append_blocking(id, &records) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(format!("{id} is not in the queue")),
            Err(e) => return Err(format!("{id}: {e}")),
        }
    }
    writeln!(out, "Marked {n} message{} to be tried as soon as bccguard starts.", plural(n)).map_err(|e| e.to_string())
}

fn delete(config: &ConfigArg, id: &str, out: &mut impl Write) -> Result<(), String> {
    let (paths, _) = spool(config)?;
    let id = parse_id(id)?;
    let found = match ask_relay(&paths, &format!("delete {id}"))? {
        Some(n) => n > 0,
        None => {
            let _lock = lock(&paths)?;
            match paths.remove(&id) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(format!("{id}: {e}")),
            }
        }
    };
    if !found {
        return Err(format!("{id} is not in the queue"));
    }
    writeln!(out, "Deleted {id}.").map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        let hostile = "451 4.3.0 \x1b[2J\x1b]0;owned\x07 \u{9b}31m \x7f tab\there \\x1b";
        assert_eq!(
            escape_controls(hostile),
            "451 4.3.0 \\x1b[2J\\x1b]0;owned\\x07 \\u{9b}31m \\x7f tab\\x09here \\\\x1b"
        );
        assert_eq!(escape_controls("550 5.1.1 ok é"), "550 5.1.1 ok é");
    }

    #[test]
    fn durations_are_short() {
        let shown: Vec<String> = [5, 125, 7200, 200_000].into_iter().map(short_duration).collect();
        assert_eq!(shown, ["5s", "2m", "2h", "2d"]);
    }
}
