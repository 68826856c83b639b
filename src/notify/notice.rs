//! The notice by mail (pure): a short plain-text RFC 5322 message to the sender or an admin
//! saying what was detected, the rule, the count, the queue id, the original subject and what
//! happens next. It never names an exposed address.
//!
//! Nothing from the original message reaches a header field: the subject appears only in the
//! body, with control characters removed and its length bounded; a body that is not ASCII is
//! sent quoted-printable, so no line exceeds 76 octets.

use std::fmt::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Event, EventKind};
use crate::queue_id::QueueId;

/// The value of the `X-Bccguard:` field that marks a notice.
pub const MARK: &str = "notice";
/// Longest original subject quoted, in characters.
const MAX_SUBJECT: usize = 200;
/// Quoted-printable lines are at most this long (RFC 2045 §6.7).
const QP_LINE: usize = 76;

/// Who a notice is for: the wording differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Audience {
    /// The envelope sender: "your message".
    Sender,
    /// A mail administrator: "a message from ...", and how to review it.
    Admin,
}

/// One notice to build.
#[derive(Debug)]
pub struct Notice<'a> {
    /// What it is about.
    pub event: &'a Event,
    /// Who reads it.
    pub audience: Audience,
    /// The `From:` address (`notify.from`).
    pub from: &'a str,
    /// The recipient.
    pub to: &'a str,
    /// Our host name (`server.hostname`), for the Message-ID and the text.
    pub hostname: &'a str,
    /// The notice's own queue id, for its Message-ID.
    pub id: &'a QueueId,
    /// Its `Date:`.
    pub now: DateTime<Utc>,
}

/// The notice message, CRLF line ends; `None` for events that have no notice (see
/// [`EventKind::has_notice`]).
pub fn build(n: &Notice<'_>) -> Option<Vec<u8>> {
    let subject = subject(n.event, n.audience)?;
    let body = body(n);
    let (encoding, body) = if body.is_ascii() { ("7bit", body) } else { ("quoted-printable", quoted_printable(&body)) };
    let mut out = String::new();
    let _ = write!(
        out,
        "From: bccguard <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nDate: {date}\r\n\
         Message-ID: <{id}.notice@{host}>\r\nAuto-Submitted: auto-generated\r\nX-Bccguard: {MARK}\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n",
        from = one_line(n.from),
        to = one_line(n.to),
        date = n.now.to_rfc2822(),
        id = n.id,
        host = n.hostname,
    );
    out.push_str(&body);
    Some(out.into_bytes())
}

/// The `Subject:` of a notice: the verdict and the count, ASCII only.
fn subject(event: &Event, audience: Audience) -> Option<String> {
    let whose = match audience {
        Audience::Sender => "your message",
        Audience::Admin => "a message",
    };
    let showed = if event.recipients >= 2 {
        format!("to {} recipients showed their addresses to each other", thousands(event.recipients as u64))
    } else {
        format!("showed {} external addresses", thousands(event.exposure as u64))
    };
    Some(match &event.kind {
        EventKind::Held { .. } => format!("Held: {whose} {showed}"),
        EventKind::Rejected { after_accept: true } => format!("Not delivered: {whose} {showed}"),
        EventKind::BreakerTripped { count, window, .. } => {
            let whose = match audience {
                Audience::Sender => "of your messages",
                Audience::Admin => "messages from one sender",
            };
            let count = thousands(*count);
            format!("Paused: {count} {whose} in {} showed recipients' addresses to each other", words(*window))
        }
        EventKind::Rejected { after_accept: false } | EventKind::Exploded | EventKind::Undisclosed => return None,
    })
}

/// The text: what happened, the facts, what happens next, what to do.
fn body(n: &Notice<'_>) -> String {
    let e = n.event;
    let mut out = String::new();
    let _ = writeln!(out, "This is bccguard, the mail relay at {}.", n.hostname);
    let _ = writeln!(out, "{}\n", opening(e, n.audience));
    let _ = writeln!(out, "What was detected");
    let _ = writeln!(out, "{}\n", detected(e));
    let subject = e.subject.as_deref().map(clean_subject).filter(|s| !s.is_empty());
    let _ = writeln!(out, "  Subject:    {}", subject.as_deref().unwrap_or("(none)"));
    let _ = writeln!(out, "  Queue id:   {}", e.queue_id);
    let _ = writeln!(out, "  Rule:       {}", e.rule.as_deref().map_or("default".into(), clean_subject));
    let _ = writeln!(out, "  Recipients: {}", thousands(e.recipients as u64));
    let _ = writeln!(out, "  Exposed:    {} external addresses (not listed here)", thousands(e.exposure as u64));
    if n.audience == Audience::Admin {
        let sender = if e.sender.is_empty() { "<>".to_string() } else { one_line(&e.sender) };
        let _ = writeln!(out, "  Sender:     {sender}");
        let _ = writeln!(out, "  Client:     {}", one_line(&e.client));
    }
    let _ = writeln!(out, "  Time:       {}\n", e.at.to_rfc2822());
    let _ = writeln!(out, "What happens next");
    let _ = writeln!(out, "{}\n", next(e, n.now));
    let _ = writeln!(out, "What to do");
    let _ = writeln!(out, "{}\n", advice(e, n.audience));
    let _ = writeln!(out, "-- \nThis notice was generated automatically; replies are not read.");
    out.replace('\n', "\r\n")
}

fn opening(e: &Event, audience: Audience) -> String {
    let whose = match audience {
        Audience::Sender => "one of your messages",
        Audience::Admin => "a message",
    };
    match &e.kind {
        EventKind::Held { .. } => format!("It held {whose} instead of delivering it."),
        EventKind::Rejected { .. } => format!("It accepted {whose} but refused to deliver it."),
        EventKind::BreakerTripped { .. } => match audience {
            Audience::Sender => "It paused mail from you: too many of your messages leaked addresses.".into(),
            Audience::Admin => "Its campaign breaker tripped: one sender sent too many leaking messages.".into(),
        },
        EventKind::Exploded | EventKind::Undisclosed => String::new(),
    }
}

fn detected(e: &Event) -> String {
    let exposure = thousands(e.exposure as u64);
    let mut text = format!(
        "  The message's To, Cc or Bcc fields showed {exposure} external addresses, so every\n  \
         recipient would have seen the addresses of the others (the \"forgot to Bcc\" leak)."
    );
    if let EventKind::BreakerTripped { count, window, .. } = &e.kind {
        let _ = write!(
            text,
            "\n  It was the last of {} such messages from the same source within {}.",
            thousands(*count),
            words(*window)
        );
    }
    text
}

fn next(e: &Event, now: DateTime<Utc>) -> String {
    match &e.kind {
        EventKind::Held { max_age } => {
            let expires = chrono::Duration::from_std(*max_age).ok().and_then(|d| now.checked_add_signed(d));
            let when = expires.map_or_else(String::new, |t| format!(" on {}", t.format("%Y-%m-%d %H:%M UTC")));
            format!(
                "  Nothing has been delivered. The message is held until a person reviews it and\n  \
                 either delivers it so that each recipient sees only their own address, or deletes\n  \
                 it. If nobody does, it is deleted{when} (after {}) and the\n  \
                 sender gets a delivery failure notice.",
                words(*max_age)
            )
        }
        EventKind::BreakerTripped { .. } => format!(
            "  For a while, every message from the same source gets the breaker's action\n  ({}), \
             leaking or not, until the breaker closes again.",
            match e.action {
                "hold" => "held for review",
                "tempfail" => "refused for now with 451; the sending software retries later",
                other => other,
            }
        ),
        _ => "  The message was not delivered to anyone, and will not be.".into(),
    }
}

fn advice(e: &Event, audience: Audience) -> String {
    match audience {
        Audience::Sender => "  Send such mail with the recipients in Bcc, or as one message per recipient. If\n  \
                             you have questions, give your mail administrator the queue id above."
            .into(),
        Audience::Admin => match &e.kind {
            EventKind::Held { .. } => format!(
                "  Review it: bccguard queue list --held, then bccguard queue release {id}\n  \
                 (one copy per recipient) or bccguard queue delete {id}.",
                id = e.queue_id
            ),
            EventKind::BreakerTripped { .. } => {
                "  Find out why the sender leaks; bccguard breaker list shows the tripped\n  \
                                                 breakers, bccguard breaker reset KEY closes one."
                    .into()
            }
            _ => "  Find out why the sender leaks; the relay's log names the queue id above.".into(),
        },
    }
}

pub use crate::text::thousands;

/// A duration in words: `10 days`, `1 hour`, `90 minutes`, `45 seconds`.
fn words(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = match secs {
        s if s >= 86_400 && s.is_multiple_of(86_400) => (s / 86_400, "day"),
        s if s >= 3600 && s.is_multiple_of(3600) => (s / 3600, "hour"),
        s if s >= 60 && s.is_multiple_of(60) => (s / 60, "minute"),
        s => (s, "second"),
    };
    format!("{} {unit}{}", thousands(n), if n == 1 { "" } else { "s" })
}

/// An original subject as the body quotes it: control characters (CR, LF, NUL, ...) made
/// spaces, white space collapsed, at most 200 characters.
pub fn clean_subject(s: &str) -> String {
    let spaced: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let joined = spaced.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= MAX_SUBJECT {
        return joined;
    }
    let mut cut: String = joined.chars().take(MAX_SUBJECT).collect();
    cut.push_str("...");
    cut
}

/// Text on one line, without control characters.
fn one_line(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}

/// CRLF text as quoted-printable (RFC 2045 §6.7): soft line breaks keep every line at most 76
/// octets; `=`, non-ASCII and trailing white space are encoded.
fn quoted_printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for (i, line) in text.split("\r\n").enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let bytes = line.as_bytes();
        let mut width = 0;
        for (j, &b) in bytes.iter().enumerate() {
            let last = j + 1 == bytes.len();
            let plain = (b == b' ' || b.is_ascii_graphic()) && b != b'=' && !(last && b == b' ');
            let token = if plain { (b as char).to_string() } else { format!("={b:02X}") };
            // Room for the token, and for a soft break ("=") unless this is the last byte.
            let room = if last { QP_LINE } else { QP_LINE - 1 };
            if width + token.len() > room {
                out.push_str("=\r\n");
                width = 0;
            }
            out.push_str(&token);
            width += token.len();
        }
    }
    out
}

#[cfg(test)]
mod tests;
