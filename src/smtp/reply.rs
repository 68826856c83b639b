//! SMTP replies: a typed value per reply, every fixed text a named constant.

use std::borrow::Cow;
use std::fmt;

use crate::message::decide::{Decision, Reason};

/// An enhanced status code (RFC 3463), e.g. `5.7.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u8, pub u16, pub u16);

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One SMTP reply. Its text may hold several lines separated by `\n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code, written on every line when present.
    pub status: Option<Status>,
    /// The human-readable text; `\n` separates lines of a multi-line reply.
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub const fn new(code: u16, status: Status, text: &'static str) -> Reply {
        Reply { code, status: Some(status), text: Cow::Borrowed(text) }
    }

    /// A reply whose text is built at run time.
    pub fn dynamic(code: u16, status: Status, text: impl Into<String>) -> Reply {
        Reply { code, status: Some(status), text: Cow::Owned(text.into()) }
    }

    /// A reply without an enhanced status code (greeting, 354, 334, EHLO).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply { code, status: None, text: text.into() }
    }

    /// Append the wire form (`250-...` continuation lines, CRLF line ends) to `out`, without
    /// building strings on the way (a reply is written for every command).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{}{sep}", self.code);
            if let Some(status) = self.status {
                let _ = write!(out, "{status} ");
            }
            // Reply text never carries CR or LF from anywhere: they are the line breaks.
            out.extend(line.bytes().map(|b| if b == b'\r' { b' ' } else { b }));
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_to(&mut out);
        f.write_str(String::from_utf8_lossy(&out).trim_end())
    }
}

/// 221: the client said QUIT.
pub const BYE: Reply = Reply::new(221, Status(2, 0, 0), "Bye");
/// 250 to NOOP and RSET.
pub const OK: Reply = Reply::new(250, Status(2, 0, 0), "Ok");
/// 250 to MAIL.
pub const SENDER_OK: Reply = Reply::new(250, Status(2, 1, 0), "Sender ok");
/// 250 to RCPT.
pub const RECIPIENT_OK: Reply = Reply::new(250, Status(2, 1, 5), "Recipient ok");
/// 252 to VRFY: bccguard never confirms addresses.
pub const CANNOT_VRFY: Reply =
    Reply::new(252, Status(2, 5, 0), "Cannot VRFY user, but will accept message and attempt delivery");
/// 214 to HELP.
pub const HELP: Reply =
    Reply::new(214, Status(2, 0, 0), "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY STARTTLS AUTH");
/// 220 to STARTTLS.
pub const READY_FOR_TLS: Reply = Reply::new(220, Status(2, 0, 0), "Ready to start TLS");
/// 235 after a good AUTH.
pub const AUTH_OK: Reply = Reply::new(235, Status(2, 7, 0), "Authentication successful");

/// 421 when `server.max_connections` sessions are already open.
pub const TOO_MANY_CONNECTIONS: Reply = Reply::new(421, Status(4, 7, 0), "Too many connections, try again later");
/// 421 when the client's address already has `server.max_connections_per_client` sessions.
pub const TOO_MANY_FROM_CLIENT: Reply =
    Reply::new(421, Status(4, 7, 0), "Too many connections from your address, try again later");
/// 421 when the client was silent for `server.idle_timeout`.
pub const IDLE_TIMEOUT: Reply = Reply::new(421, Status(4, 4, 2), "Idle timeout, closing connection");
/// 421 when one command line took longer than `server.command_timeout` to arrive.
pub const COMMAND_TIMEOUT: Reply = Reply::new(421, Status(4, 4, 2), "Command timeout, closing connection");
/// 421 when the message took longer than `server.data_timeout` to arrive.
pub const DATA_TIMEOUT: Reply = Reply::new(421, Status(4, 4, 2), "Data timeout, closing connection");
/// 421 when the relay is shutting down.
pub const SHUTTING_DOWN: Reply = Reply::new(421, Status(4, 3, 2), "Service shutting down, try again later");
/// 421 after repeated AUTH failures.
pub const TOO_MANY_AUTH_FAILURES: Reply =
    Reply::new(421, Status(4, 7, 0), "Too many authentication failures, closing connection");
/// 451 when the message could not be stored durably.
pub const STORAGE_FAILED: Reply =
    Reply::new(451, Status(4, 3, 0), "Temporary failure storing the message, try again later");
/// 452 at DATA when `server.max_data_in_memory` is spent: the client retries later.
pub const NO_MEMORY_FOR_DATA: Reply =
    Reply::new(452, Status(4, 3, 1), "Insufficient system resources for the message now, try again later");
/// 452 to MAIL while the spool's filesystem has less than `spool.min_free` free.
pub const INSUFFICIENT_STORAGE: Reply = Reply::new(452, Status(4, 3, 1), "Insufficient system storage");
/// 452 beyond `server.max_recipients`.
pub const TOO_MANY_RECIPIENTS: Reply = Reply::new(452, Status(4, 5, 3), "Too many recipients");
/// 454 when STARTTLS fails on our side.
pub const TLS_UNAVAILABLE: Reply = Reply::new(454, Status(4, 7, 0), "TLS not available");

/// 500 to a command line over 512 octets.
pub const LINE_TOO_LONG: Reply = Reply::new(500, Status(5, 5, 2), "Line too long");
/// 500 to an unknown command.
pub const UNKNOWN_COMMAND: Reply = Reply::new(500, Status(5, 5, 1), "Command unrecognized");
/// 500 to a command holding a NUL byte.
pub const NUL_IN_COMMAND: Reply = Reply::new(500, Status(5, 5, 2), "NUL character in command");
/// 501 to a malformed sender address.
pub const BAD_SENDER: Reply = Reply::new(501, Status(5, 1, 7), "Bad sender address syntax");
/// 501 to a malformed recipient address.
pub const BAD_RECIPIENT: Reply = Reply::new(501, Status(5, 1, 3), "Bad recipient address syntax");
/// 501 to an AUTH response that is not base64 or not well formed.
pub const BAD_AUTH_RESPONSE: Reply = Reply::new(501, Status(5, 5, 2), "Cannot decode the authentication response");
/// 501 when the client cancels AUTH with `*`.
pub const AUTH_CANCELLED: Reply = Reply::new(501, Status(5, 7, 0), "Authentication cancelled");
/// 502 to commands bccguard does not implement.
pub const NOT_IMPLEMENTED: Reply = Reply::new(502, Status(5, 5, 1), "Command not implemented");
/// 503 to MAIL before EHLO/HELO.
pub const HELO_FIRST: Reply = Reply::new(503, Status(5, 5, 1), "Send EHLO or HELO first");
/// 503 to MAIL inside a transaction.
pub const NESTED_MAIL: Reply = Reply::new(503, Status(5, 5, 1), "Sender already given");
/// 503 to RCPT or DATA without MAIL.
pub const MAIL_FIRST: Reply = Reply::new(503, Status(5, 5, 1), "Send MAIL first");
/// 503 to STARTTLS on a TLS connection.
pub const TLS_ALREADY_ACTIVE: Reply = Reply::new(503, Status(5, 5, 1), "TLS already active");
/// 503 to AUTH once authenticated.
pub const ALREADY_AUTHENTICATED: Reply = Reply::new(503, Status(5, 5, 1), "Already authenticated");
/// 503 to AUTH inside a transaction.
pub const AUTH_IN_TRANSACTION: Reply = Reply::new(503, Status(5, 5, 1), "AUTH not allowed during a mail transaction");
/// 504 to an AUTH mechanism other than PLAIN and LOGIN.
pub const UNKNOWN_MECHANISM: Reply = Reply::new(504, Status(5, 5, 4), "Unrecognized authentication mechanism");
/// 530 to MAIL when `access.require_auth` is set and the client has not authenticated.
pub const AUTH_REQUIRED: Reply = Reply::new(530, Status(5, 7, 0), "Authentication required");
/// 535 to bad credentials.
pub const AUTH_FAILED: Reply = Reply::new(535, Status(5, 7, 8), "Authentication credentials invalid");
/// 538 to AUTH without TLS when plaintext AUTH is not allowed.
pub const ENCRYPTION_REQUIRED: Reply =
    Reply::new(538, Status(5, 7, 11), "Encryption required for requested authentication mechanism");
/// 550 to RCPT from a client that may not relay.
pub const RELAY_DENIED: Reply = Reply::new(550, Status(5, 7, 1), "Relaying denied");
/// 552 to SIZE= or data over `server.max_message_size`.
pub const MESSAGE_TOO_BIG: Reply = Reply::new(552, Status(5, 3, 4), "Message size exceeds fixed maximum message size");
/// 552 to a message whose header block is too large to inspect.
pub const HEADERS_TOO_LARGE: Reply = Reply::new(552, Status(5, 3, 4), "Message header block too large");
/// 553 to a non-ASCII address without SMTPUTF8.
pub const NEED_SMTPUTF8: Reply = Reply::new(553, Status(5, 6, 7), "Non-ASCII address requires the SMTPUTF8 parameter");
/// 554 to DATA with no accepted recipient.
pub const NO_RECIPIENTS: Reply = Reply::new(554, Status(5, 5, 1), "No valid recipients");
/// 554 when a bare CR or LF is seen; the connection is then closed.
pub const BARE_LINE_ENDING: Reply =
    Reply::new(554, Status(5, 5, 2), "Bare CR or LF not allowed: lines must end with CRLF; closing connection");
/// 554 to a message holding a NUL byte.
pub const NUL_IN_DATA: Reply = Reply::new(554, Status(5, 6, 0), "Message contains NUL characters, refused");
/// 555 to a MAIL or RCPT parameter bccguard does not support.
pub const UNSUPPORTED_PARAMETER: Reply =
    Reply::new(555, Status(5, 5, 4), "Parameter not recognized or not implemented");

/// 220 greeting.
pub fn greeting(hostname: &str) -> Reply {
    Reply::plain(220, format!("{hostname} ESMTP bccguard"))
}

/// 354 to DATA.
pub fn start_data() -> Reply {
    Reply::plain(354, "End data with <CR><LF>.<CR><LF>")
}

/// 250 at the end of DATA, naming the queue id.
pub fn queued(id: &str) -> Reply {
    Reply::dynamic(250, Status(2, 0, 0), format!("Ok: queued as {id}"))
}

/// 501 with the parser's description of the expected syntax.
pub fn syntax(usage: &str) -> Reply {
    Reply::dynamic(501, Status(5, 5, 4), format!("Syntax: {usage}"))
}

/// 550 5.7.1 for a leak under `policy.action = "reject"`: how many external addresses the
/// recipients would see (or which field could not be read), and what to do instead.
pub fn leak_rejected(decision: &Decision) -> Reply {
    let what = match &decision.reason {
        Reason::Unparseable { fields } => {
            format!("its {} field cannot be parsed, so it may show recipients each other's addresses", fields.join("/"))
        }
        _ => format!(
            "it shows {} external recipient addresses to every recipient (at most {} allowed)",
            decision.exposure, decision.max_visible_external
        ),
    };
    Reply::dynamic(
        550,
        Status(5, 7, 1),
        format!("Message refused: {what}; put the recipients in Bcc or send one message each"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_have_their_wire_form() {
        let mut out = Vec::new();
        RELAY_DENIED.write_to(&mut out);
        assert_eq!(out, b"550 5.7.1 Relaying denied\r\n");
        out.clear();
        Reply::plain(250, "host\nPIPELINING\nSIZE 10").write_to(&mut out);
        assert_eq!(out, b"250-host\r\n250-PIPELINING\r\n250 SIZE 10\r\n");
        out.clear();
        Reply::dynamic(451, Status(4, 3, 0), "one\ntwo").write_to(&mut out);
        assert_eq!(out, b"451-4.3.0 one\r\n451 4.3.0 two\r\n", "the status on every line");
    }

    #[test]
    fn reply_text_cannot_break_lines() {
        let mut out = Vec::new();
        Reply::dynamic(550, Status(5, 0, 0), "a\rb").write_to(&mut out);
        assert_eq!(out, b"550 5.0.0 a b\r\n");
    }
}
