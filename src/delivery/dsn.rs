//! Delivery status notifications (RFC 3464): one `multipart/report` to the envelope sender
//! naming the failed recipients and the upstream's replies. It never names the message's
//! other recipients: the returned header block has every address field removed.

use chrono::{DateTime, TimeZone, Utc};

use super::outcome;
use super::reply::Answer;
use crate::message::parse::{FieldKind, Headers};
use crate::queue_id::QueueId;
use crate::spool::record::{Meta, RcptState, State};

/// One recipient the message could not be delivered to.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The recipient.
    pub recipient: String,
    /// The upstream's last reply, or why there was none.
    pub reply: Answer,
    /// True when it failed by running out of `spool.max_age`.
    pub expired: bool,
}

/// The failures of recipients `failed` (indexes into `meta.recipients`), from the state the
/// journal rebuilt: each reply, recorded as text, is a value again here, once.
pub fn failures(meta: &Meta, state: &State, failed: &[usize]) -> Vec<Failure> {
    failed
        .iter()
        .filter_map(|&i| match &state.rcpts[i] {
            RcptState::Failed { reply, expired, .. } => Some(Failure {
                recipient: meta.recipients[i].clone(),
                reply: outcome::recorded(reply),
                expired: *expired,
            }),
            _ => None,
        })
        .collect()
}

/// What a notification is about.
#[derive(Debug)]
pub struct Report<'a> {
    /// Our host name.
    pub hostname: &'a str,
    /// The upstream, for `Remote-MTA` (empty for the directory upstream).
    pub remote: &'a str,
    /// The original message's queue id.
    pub original_id: &'a QueueId,
    /// When the original was accepted (Unix milliseconds).
    pub arrival: i64,
    /// The original sender (the notification's recipient).
    pub sender: &'a str,
    /// The failed recipients.
    pub failures: &'a [Failure],
    /// Set when the message was held for review and not released within this time
    /// (`hold.max_age`, e.g. `10d`): the failures are bccguard's own, not the upstream's.
    pub held_for: Option<&'a str>,
}

/// The notification message, CRLF line ends. `message` is the original as spooled.
pub fn build(report: &Report<'_>, dsn_id: &QueueId, message: &[u8], now: DateTime<Utc>) -> Vec<u8> {
    let boundary = format!("{dsn_id}/{}", report.hostname);
    let arrival = Utc.timestamp_millis_opt(report.arrival).single().unwrap_or(now);
    let mut out = String::new();
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\r\nTo: <{sender}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\nDate: {date}\r\n\
         Message-ID: <{dsn_id}@{host}>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n",
        host = report.hostname,
        sender = report.sender,
        date = now.to_rfc2822(),
    ));
    out.push_str(&format!("--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"));
    let s = if report.failures.len() == 1 { "" } else { "s" };
    let what = match report.held_for {
        Some(age) => format!(
            "was held for review and not released within {age}, so it was deleted without being delivered \
             to the following recipient{s}"
        ),
        None => format!("could not be delivered to the following recipient{s}"),
    };
    out.push_str(&format!(
        "This is the mail system at host {}.\r\n\r\nYour message (queue id {}) {what}:\r\n\r\n",
        report.hostname, report.original_id,
    ));
    for f in report.failures {
        let why = if f.expired { "the message was undeliverable for too long; last reply: " } else { "" };
        out.push_str(&format!("<{}>: {why}{}\r\n", f.recipient, one_line(&f.reply.to_string())));
    }
    out.push_str(&format!("\r\n--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"));
    out.push_str(&format!(
        "Reporting-MTA: dns; {}\r\nX-Bccguard-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        report.hostname,
        report.original_id,
        arrival.to_rfc2822()
    ));
    for f in report.failures {
        out.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {}\r\nAction: failed\r\nStatus: {}\r\n",
            f.recipient,
            status_of(f)
        ));
        if !report.remote.is_empty() && report.held_for.is_none() {
            out.push_str(&format!("Remote-MTA: dns; {}\r\n", report.remote));
        }
        let kind = if report.held_for.is_some() { "X-Bccguard" } else { "smtp" };
        out.push_str(&format!("Diagnostic-Code: {kind}; {}\r\n", one_line(&f.reply.to_string())));
    }
    out.push_str(&format!("\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&headers_without_addresses(message));
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The enhanced status code of the reply (`5.1.1` in `550 5.1.1 ...`), `4.4.7` for an
/// expired message, else `5.0.0`.
fn status_of(f: &Failure) -> String {
    if f.expired {
        return "4.4.7".into();
    }
    f.reply.enhanced().map_or_else(|| "5.0.0".to_string(), |e| e.to_string())
}

/// Reply text on one line, without control characters.
fn one_line(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

/// The original header block without To, Cc, Bcc and Resent-* fields (and without the empty
/// line): enough for the sender to recognize the message, and no other recipient's address.
fn headers_without_addresses(message: &[u8]) -> Vec<u8> {
    let Ok(headers) = Headers::parse_layout(message) else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(headers.header_end);
    let mut pos = 0;
    for field in headers.fields.iter().filter(|f| f.kind != FieldKind::Mark) {
        out.extend_from_slice(&message[pos..field.range.start.max(pos)]);
        pos = pos.max(field.range.end);
    }
    out.extend_from_slice(&message[pos.min(headers.header_end)..headers.header_end]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::reply::Reply;

    #[test]
    fn the_report_names_only_the_failed_recipient() {
        let message = b"Received: x\r\nFrom: shop@example.com\r\nTo: a@x.test, b@y.test\r\nCc: c@z.test\r\n\
            Subject: offer\r\n\r\nbody\r\n";
        let id = QueueId::generate();
        let failures = [Failure {
            recipient: "b@y.test".into(),
            reply: Answer::Reply(Reply::new(550, "5.1.1 no such user")),
            expired: false,
        }];
        let report = Report {
            hostname: "relay.test",
            remote: "smtp.test:25",
            original_id: &id,
            arrival: 1_700_000_000,
            sender: "shop@example.com",
            failures: &failures,
            held_for: None,
        };
        let text = String::from_utf8(build(&report, &QueueId::generate(), message, Utc::now())).unwrap();
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        assert!(text.contains("\r\nFinal-Recipient: rfc822; b@y.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
        assert!(text.contains("Remote-MTA: dns; smtp.test:25\r\n"));
        assert!(text.contains("\r\nReceived: x\r\nFrom: shop@example.com\r\nSubject: offer\r\n\r\n--"));
        assert!(!text.contains("a@x.test") && !text.contains("c@z.test"), "no other recipient: {text}");
        assert!(!text.contains("\n\n") && text.split("\r\n").all(|l| !l.contains('\n')));
    }

    #[test]
    fn expired_and_unknown_statuses() {
        let f = |code, text: &str, expired| Failure {
            recipient: "r@x.test".into(),
            reply: Answer::Reply(Reply::new(code, text)),
            expired,
        };
        assert_eq!(status_of(&f(451, "4.3.0 busy", true)), "4.4.7");
        assert_eq!(status_of(&f(554, "rejected", false)), "5.0.0");
        assert_eq!(status_of(&f(550, "5.7.1 denied", false)), "5.7.1");
        let broken = Failure { recipient: "r@x.test".into(), reply: Answer::Broken("reset".into()), expired: false };
        assert_eq!(status_of(&broken), "5.0.0");
    }
}
