//! The pipelined SMTP client as a state machine without I/O (after Postfix's `smtp_proto.c`):
//! transactions go in, bytes to write and outcomes come out, the upstream's bytes are fed in
//! as they arrive. The state is a queue of expected replies, one per command written, matched
//! in order. It never reads the clock and never touches a socket.
//!
//! With PIPELINING (RFC 2920) a transaction's MAIL, every RCPT and DATA are released at once;
//! without it one command at a time, each after the previous reply. When the reply to DATA is
//! `354` the caller is told to write the content ([`Event::Content`]); it may then submit the
//! next transaction, whose commands follow the final dot in the same write.

use std::collections::VecDeque;

use smtp_proto::response::parser::ResponseReceiver;

use crate::delivery::Outcome;
use crate::delivery::reply::{Answer, Judgement, Refusal, Reply, Stage, judge};

/// The extensions of the upstream's EHLO reply that the client uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 3030 (BDAT).
    pub chunking: bool,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// AUTH PLAIN offered.
    pub auth_plain: bool,
    /// AUTH LOGIN offered.
    pub auth_login: bool,
    /// SIZE and its limit (0: none given).
    pub size: Option<u64>,
}

impl Extensions {
    /// The extensions in an EHLO reply's text (its lines after the first).
    pub fn parse(lines: &str) -> Extensions {
        let mut ext = Extensions::default();
        for line in lines.split('\n').skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else { continue };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "CHUNKING" => ext.chunking = true,
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "STARTTLS" => ext.starttls = true,
                "SIZE" => ext.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
                "AUTH" => {
                    for mechanism in words {
                        match mechanism.to_ascii_uppercase().as_str() {
                            "PLAIN" => ext.auth_plain = true,
                            "LOGIN" => ext.auth_login = true,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        ext
    }
}

/// A reply as smtp-proto parsed it: code, enhanced code, and its lines joined by `\n`.
pub type Raw = smtp_proto::Response<String>;

/// A parsed reply as bccguard's value: the enhanced code back in front of the text (where
/// the upstream wrote it), the lines joined by spaces.
pub fn reply_of(raw: &Raw) -> Reply {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(raw.message.len() + 12);
    if raw.esc != [0, 0, 0] {
        let [c, s, d] = raw.esc;
        let _ = write!(text, "{c}.{s}.{d} ");
    }
    for (i, line) in raw.message.split('\n').map(str::trim).enumerate() {
        if i > 0 {
            text.push(' ');
        }
        text.push_str(line);
    }
    Reply::from_text(raw.code, text)
}

/// Why the upstream's bytes are not a reply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// A reply past smtp-proto's bound, lines included.
    #[error("the upstream sent a reply longer than {} bytes", smtp_proto::response::parser::MAX_RESPONSE_LENGTH)]
    TooLong,
    /// Not SMTP.
    #[error("the upstream sent something that is not an SMTP reply: {0}")]
    Syntax(String),
}

/// Replies out of the bytes as they arrive, in any split (a reply may come a byte at a
/// time, or several replies in one read).
#[derive(Default)]
pub struct ReplyReader {
    receiver: ResponseReceiver,
    pending: Vec<u8>,
    start: usize,
}

impl ReplyReader {
    /// Bytes from the upstream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start == self.pending.len() {
            self.pending.clear();
            self.start = 0;
        }
        self.pending.extend_from_slice(bytes);
    }

    /// The next complete reply, if the bytes fed so far hold one.
    pub fn next_reply(&mut self) -> Result<Option<Raw>, ReadError> {
        let rest = &self.pending[self.start..];
        if rest.is_empty() {
            return Ok(None);
        }
        let mut iter = rest.iter();
        let parsed = self.receiver.parse(&mut iter);
        self.start += rest.len() - iter.len();
        match parsed {
            Ok(raw) => {
                self.receiver.reset();
                Ok(Some(raw))
            }
            Err(smtp_proto::Error::NeedsMoreData { .. }) => Ok(None),
            Err(smtp_proto::Error::ResponseTooLong) => Err(ReadError::TooLong),
            Err(e) => Err(ReadError::Syntax(e.to_string())),
        }
    }
}

/// Dot-stuffing of content that is already CRLF-clean: a `.` at the start of a line is
/// doubled, and the end adds the final `.` line (after a CRLF if the content lacks one).
#[derive(Debug)]
pub struct DotStuffer {
    line_start: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer { line_start: true }
    }
}

impl DotStuffer {
    /// Append `chunk`, stuffed, to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        while !rest.is_empty() {
            if self.line_start && rest[0] == b'.' {
                out.push(b'.');
            }
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    out.extend_from_slice(&rest[..=i]);
                    rest = &rest[i + 1..];
                    self.line_start = true;
                }
                None => {
                    out.extend_from_slice(rest);
                    self.line_start = false;
                    rest = &[];
                }
            }
        }
    }

    /// The end of the data.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// A caller's name for a transaction.
pub type TxId = u64;

/// One transaction to run: one copy, its envelope.
#[derive(Clone, Debug)]
pub struct Submit {
    /// The caller's name for it.
    pub id: TxId,
    /// The envelope sender (empty: the null sender).
    pub sender: String,
    /// The recipients.
    pub rcpts: Vec<String>,
    /// Whether the content is not ASCII (`BODY=8BITMIME` when offered).
    pub eight_bit: bool,
    /// The content's length in bytes (for `BDAT`).
    pub size: u64,
}

/// How a transaction ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    /// Which.
    pub id: TxId,
    /// One per recipient, in order.
    pub outcomes: Vec<Outcome>,
    /// The upstream refused the relay itself (every copy is deferred).
    pub refusal: Option<Refusal>,
    /// MAIL FROM was accepted (the relay got past the relay-level stages).
    pub mail_accepted: bool,
    /// The upstream answered nothing of it: the content was never sent, and the transaction
    /// may go to another connection as it is.
    pub untouched: bool,
}

/// What the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Write this transaction's content: dot-stuffed and with the final dot (see
    /// [`DotStuffer`]) after `354`; as it is after `BDAT` (see [`Client::chunking`]), right
    /// after the bytes [`Client::output`] returned.
    Content(TxId),
    /// A transaction ended.
    Finished(Finished),
    /// Close the connection (after the `Finished` of everything in flight): why.
    Close(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Mail,
    Rcpt(usize),
    Data,
    /// `BDAT size LAST` and the content (RFC 3030).
    Bdat(u64),
    /// The final dot (written by the caller with the content).
    Dot,
    Rset,
    /// A lone dot after a `354` with no recipient accepted.
    Discard,
    Quit,
}

struct Tx {
    id: TxId,
    mail_line: String,
    rcpts: Vec<String>,
    mail: Option<bool>,
    accepted: Vec<bool>,
    outcomes: Vec<Option<Outcome>>,
    refusal: Option<Refusal>,
    answered: bool,
}

impl Tx {
    fn goes_on(&self) -> bool {
        self.mail == Some(true) && self.refusal.is_none()
    }
    fn has_recipients(&self) -> bool {
        self.goes_on() && self.accepted.iter().any(|a| *a)
    }
}

/// The client's side of one connection after EHLO (and TLS, AUTH).
pub struct Client {
    ext: Extensions,
    reader: ReplyReader,
    txs: Vec<Tx>,
    /// Commands not yet written.
    pending: VecDeque<(TxId, Command)>,
    /// Commands written, whose replies are awaited, in order.
    expected: VecDeque<(TxId, Command)>,
    out: Vec<u8>,
    events: VecDeque<Event>,
    closed: bool,
}

impl Client {
    /// A client for a connection with `ext`; `reader` holds what was read during setup.
    pub fn new(ext: Extensions, reader: ReplyReader) -> Client {
        Client {
            ext,
            reader,
            txs: Vec::new(),
            pending: VecDeque::new(),
            expected: VecDeque::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            closed: false,
        }
    }

    /// Whether copies go with `BDAT` (CHUNKING, used with PIPELINING only): the content as it
    /// is, without dot-stuffing, after its command and before the replies to the group.
    pub fn chunking(&self) -> bool {
        self.ext.chunking && self.ext.pipelining
    }

    /// The upstream's extensions.
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    /// Start a transaction. It may end at once (an address the upstream cannot take).
    pub fn submit(&mut self, s: Submit) {
        let n = s.rcpts.len();
        let clean = |a: &str| !a.bytes().any(|b| b < 0x20 || b == 0x7f || b == b'<' || b == b'>');
        let fail_all = |text: &str| Finished {
            id: s.id,
            outcomes: vec![Outcome::Failed(Reply::parse(text).expect("a reply of our own")); n],
            refusal: None,
            mail_accepted: false,
            untouched: false,
        };
        if !clean(&s.sender) {
            self.events.push_back(Event::Finished(fail_all("553 5.1.7 the sender address cannot be sent")));
            return;
        }
        let non_ascii = !s.sender.is_ascii() || s.rcpts.iter().any(|r| !r.is_ascii());
        let mut mail_line = format!("MAIL FROM:<{}>", s.sender);
        if non_ascii {
            if !self.ext.smtputf8 {
                let text = "553 5.6.7 the upstream does not support SMTPUTF8, needed for this address";
                self.events.push_back(Event::Finished(fail_all(text)));
                return;
            }
            mail_line.push_str(" SMTPUTF8");
        }
        if s.eight_bit && self.ext.eight_bit_mime {
            mail_line.push_str(" BODY=8BITMIME");
        }
        mail_line.push_str("\r\n");
        let mut outcomes = vec![None; n];
        for (i, r) in s.rcpts.iter().enumerate() {
            if !clean(r) {
                outcomes[i] = Some(Outcome::Failed(Reply::new(553, "5.1.3 the recipient address cannot be sent")));
            }
        }
        self.pending.push_back((s.id, Command::Mail));
        for (i, _) in outcomes.iter().enumerate().filter(|(_, o)| o.is_none()) {
            self.pending.push_back((s.id, Command::Rcpt(i)));
        }
        let last = if self.chunking() { Command::Bdat(s.size) } else { Command::Data };
        self.pending.push_back((s.id, last));
        self.txs.push(Tx {
            id: s.id,
            mail_line,
            rcpts: s.rcpts,
            mail: None,
            accepted: vec![false; n],
            outcomes,
            refusal: None,
            answered: false,
        });
    }

    /// Say QUIT (the connection is closing while idle).
    pub fn quit(&mut self) {
        self.pending.push_back((0, Command::Quit));
    }

    /// The content of `id` and its final dot were written (or are about to be, in the same
    /// write as what [`Client::output`] returns next).
    fn expect_dot(&mut self, id: TxId) {
        self.expected.push_back((id, Command::Dot));
    }

    /// Bytes to write now: the commands that may go (all of them with PIPELINING, else one
    /// once every reply is in).
    pub fn output(&mut self) -> Vec<u8> {
        while !self.closed && (self.ext.pipelining || self.expected.is_empty()) {
            let Some((id, command)) = self.pending.pop_front() else { break };
            if let Command::Rset | Command::Quit = command {
                self.out.extend_from_slice(if command == Command::Rset { b"RSET\r\n" } else { b"QUIT\r\n" });
                self.expected.push_back((id, command));
                continue;
            }
            let Some(tx) = self.txs.iter().find(|t| t.id == id) else { continue };
            match command {
                Command::Mail => self.out.extend_from_slice(tx.mail_line.as_bytes()),
                // Without pipelining, nothing more after a refused MAIL or a refusal of the relay.
                Command::Rcpt(_) if tx.mail.is_some() && !tx.goes_on() => continue,
                Command::Rcpt(i) => {
                    self.out.extend_from_slice(format!("RCPT TO:<{}>\r\n", tx.rcpts[i]).as_bytes());
                }
                Command::Data if tx.mail.is_some() && !tx.has_recipients() => {
                    self.finish(id);
                    self.out.extend_from_slice(b"RSET\r\n");
                    self.expected.push_back((id, Command::Rset));
                    continue;
                }
                Command::Data => self.out.extend_from_slice(b"DATA\r\n"),
                Command::Bdat(size) => {
                    // The content follows these bytes: nothing more is released before it.
                    self.out.extend_from_slice(format!("BDAT {size} LAST\r\n").as_bytes());
                    self.expected.push_back((id, command));
                    self.events.push_back(Event::Content(id));
                    break;
                }
                _ => continue,
            }
            self.expected.push_back((id, command));
        }
        std::mem::take(&mut self.out)
    }

    /// Whether nothing is in flight: no transaction, no reply awaited, nothing to write.
    pub fn idle(&self) -> bool {
        self.txs.is_empty() && self.expected.is_empty() && self.pending.is_empty() && self.out.is_empty()
    }

    /// Whether [`Client::output`] has something to write now.
    pub fn output_pending(&self) -> bool {
        !self.closed
            && (!self.out.is_empty() || (!self.pending.is_empty() && (self.ext.pipelining || self.expected.is_empty())))
    }

    /// The next thing to do, if any.
    pub fn event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Bytes from the upstream.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.reader.feed(bytes);
        while !self.closed {
            match self.reader.next_reply() {
                Ok(Some(raw)) => self.reply(reply_of(&raw)),
                Ok(None) => break,
                Err(e) => self.close(&e.to_string()),
            }
        }
    }

    /// The connection failed (closed, an I/O error, a timeout, the content could not be read):
    /// every transaction in flight ends, its undecided recipients deferred with `why`.
    pub fn close(&mut self, why: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        for tx in std::mem::take(&mut self.txs) {
            let finished = finished(tx, why);
            self.events.push_back(Event::Finished(finished));
        }
        self.pending.clear();
        self.expected.clear();
        self.events.push_back(Event::Close(why.to_string()));
    }

    fn reply(&mut self, reply: Reply) {
        let Some((id, command)) = self.expected.pop_front() else {
            return self.close(&format!("the upstream sent a reply to no command: {reply}"));
        };
        if reply.code == 421 && command != Command::Quit {
            // The upstream is closing the connection: nothing more will be answered.
            return self.close(&reply.to_string());
        }
        let Some(tx) = self.txs.iter_mut().find(|t| t.id == id) else {
            if command == Command::Quit {
                self.close("QUIT");
            }
            return;
        };
        tx.answered = true;
        match command {
            Command::Mail => match judge(Stage::Mail, Answer::Reply(reply)) {
                Judgement::Accepted(_) => tx.mail = Some(true),
                Judgement::RelayRefused(refusal) => {
                    tx.mail = Some(false);
                    tx.refusal = Some(refusal);
                }
                judged => {
                    tx.mail = Some(false);
                    let outcome = outcome_of(judged);
                    for o in tx.outcomes.iter_mut().filter(|o| o.is_none()) {
                        *o = Some(outcome.clone());
                    }
                }
            },
            // After a refused MAIL, the RCPT replies (503) say nothing about the recipients.
            Command::Rcpt(_) if !tx.goes_on() => {}
            Command::Rcpt(i) => match judge(Stage::Rcpt, Answer::Reply(reply)) {
                Judgement::Accepted(_) => tx.accepted[i] = true,
                Judgement::RelayRefused(refusal) => tx.refusal = Some(refusal),
                judged => tx.outcomes[i] = Some(outcome_of(judged)),
            },
            Command::Data if reply.code == 354 && tx.has_recipients() => {
                self.expect_dot(id);
                self.events.push_back(Event::Content(id));
            }
            Command::Data if reply.code == 354 => {
                // RFC 2920 3.1: no recipient was accepted, yet the upstream wants the content:
                // send none (a lone dot), then RSET.
                self.finish(id);
                self.out.extend_from_slice(b".\r\nRSET\r\n");
                self.expected.push_back((id, Command::Discard));
                self.expected.push_back((id, Command::Rset));
            }
            Command::Data => {
                if tx.has_recipients() {
                    let judged = match judge(Stage::Data, Answer::Reply(reply.clone())) {
                        Judgement::Accepted(_) => {
                            Judgement::Deferred(Answer::Broken(format!("unexpected reply to DATA: {reply}")))
                        }
                        judged => judged,
                    };
                    settle_accepted(tx, judged);
                }
                // With pipelining a refused DATA is expected when no recipient was accepted.
                self.finish(id);
                self.pending.push_front((id, Command::Rset));
            }
            Command::Dot => {
                settle_accepted(tx, judge(Stage::Data, Answer::Reply(reply)));
                self.finish(id);
            }
            // With no recipient accepted the refusal of BDAT is expected.
            Command::Bdat(_) => {
                if tx.has_recipients() {
                    settle_accepted(tx, judge(Stage::Data, Answer::Reply(reply)));
                }
                self.finish(id);
            }
            Command::Rset | Command::Discard | Command::Quit => {}
        }
    }

    fn finish(&mut self, id: TxId) {
        if let Some(i) = self.txs.iter().position(|t| t.id == id) {
            let tx = self.txs.remove(i);
            let finished = finished(tx, "no reply");
            self.events.push_back(Event::Finished(finished));
        }
    }
}

/// The accepted recipients get what the reply to DATA or to the final dot means.
fn settle_accepted(tx: &mut Tx, judged: Judgement) {
    let outcome = match judged {
        Judgement::RelayRefused(refusal) => {
            tx.refusal = Some(refusal);
            return;
        }
        judged => outcome_of(judged),
    };
    for (i, accepted) in tx.accepted.iter().enumerate() {
        if *accepted && tx.outcomes[i].is_none() {
            tx.outcomes[i] = Some(outcome.clone());
        }
    }
}

fn finished(tx: Tx, why: &str) -> Finished {
    Finished {
        id: tx.id,
        outcomes: tx
            .outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Deferred(crate::delivery::outcome::recorded(why))))
            .collect(),
        refusal: tx.refusal,
        mail_accepted: tx.mail == Some(true),
        untouched: !tx.answered,
    }
}

/// A judgement (other than a refusal of the relay) as a recipient's outcome.
pub fn outcome_of(judged: Judgement) -> Outcome {
    match judged {
        Judgement::Accepted(r) => Outcome::Delivered(r),
        Judgement::Deferred(why) => Outcome::Deferred(why),
        Judgement::Failed(r) => Outcome::Failed(r),
        Judgement::RelayRefused(refusal) => Outcome::Deferred(Answer::Broken(refusal.text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipelining() -> Extensions {
        Extensions { pipelining: true, ..Extensions::default() }
    }

    fn submit(client: &mut Client, id: TxId, rcpts: &[&str]) {
        let rcpts = rcpts.iter().map(|r| r.to_string()).collect();
        client.submit(Submit { id, sender: "app@example.com".into(), rcpts, eight_bit: false, size: 10 });
    }

    /// Feed `bytes` one byte at a time (replies split anywhere).
    fn trickle(client: &mut Client, bytes: &str) {
        for b in bytes.as_bytes() {
            client.receive(std::slice::from_ref(b));
        }
    }

    fn events(client: &mut Client) -> Vec<Event> {
        std::iter::from_fn(|| client.event()).collect()
    }

    fn finished(events: &[Event]) -> Vec<Finished> {
        events.iter().filter_map(|e| if let Event::Finished(f) = e { Some(f.clone()) } else { None }).collect()
    }

    #[test]
    fn a_reply_keeps_its_enhanced_code_and_joins_its_lines() {
        let read = |bytes: &str| {
            let mut reader = ReplyReader::default();
            reader.feed(bytes.as_bytes());
            let reply = reply_of(&reader.next_reply().unwrap().expect("a reply"));
            (reply.code, reply.text)
        };
        assert_eq!(read("550-5.1.1 no such\r\n550 5.1.1  user \r\n"), (550, "5.1.1 no such user".to_string()));
        assert_eq!(read("250 ok\r\n"), (250, "ok".to_string()));
        assert_eq!(read("451 4.3.0\r\n"), (451, "4.3.0".to_string()));
        assert_eq!(read("354 \r\n"), (354, String::new()));
    }

    #[test]
    fn a_group_goes_in_one_write_and_the_next_follows_the_dot() {
        let mut c = Client::new(pipelining(), ReplyReader::default());
        submit(&mut c, 1, &["a@x.test", "b@x.test"]);
        assert_eq!(
            String::from_utf8(c.output()).unwrap(),
            "MAIL FROM:<app@example.com>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
        );
        trickle(&mut c, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n250-2.1.5 ok\r\n250 2.1.5 still ok\r\n354 go\r\n");
        assert_eq!(events(&mut c), vec![Event::Content(1)]);
        // The content is written by the caller; the next copy's group goes in the same write.
        submit(&mut c, 2, &["c@x.test"]);
        assert_eq!(
            String::from_utf8(c.output()).unwrap(),
            "MAIL FROM:<app@example.com>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n"
        );
        c.receive(b"250 2.0.0 queued as A\r\n250 ok\r\n250 ok\r\n354 go\r\n");
        let got = events(&mut c);
        let done = finished(&got);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].outcomes, vec![Outcome::Delivered(Reply::parse("250 2.0.0 queued as A").unwrap()); 2]);
        assert!(done[0].mail_accepted && !done[0].untouched);
        assert_eq!(got.last(), Some(&Event::Content(2)));
    }

    #[test]
    fn with_chunking_bdat_takes_the_place_of_data() {
        let ext = Extensions { chunking: true, ..pipelining() };
        let mut c = Client::new(ext, ReplyReader::default());
        submit(&mut c, 1, &["a@x.test", "b@x.test"]);
        submit(&mut c, 2, &["c@x.test"]);
        assert_eq!(
            String::from_utf8(c.output()).unwrap(),
            "MAIL FROM:<app@example.com>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nBDAT 10 LAST\r\n",
            "nothing after BDAT before its content"
        );
        assert_eq!(events(&mut c), vec![Event::Content(1)]);
        assert!(c.output().starts_with(b"MAIL"), "then the next copy");
        assert_eq!(events(&mut c), vec![Event::Content(2)]);
        c.receive(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 2.0.0 queued\r\n");
        let done = finished(&events(&mut c));
        assert_eq!(
            done[0].outcomes,
            vec![
                Outcome::Delivered(Reply::parse("250 2.0.0 queued").unwrap()),
                Outcome::Failed(Reply::parse("550 5.1.1 no").unwrap())
            ]
        );
        // Nobody accepted: the refusal of BDAT is expected, and the copy fails as RCPT said.
        c.receive(b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n");
        let done = finished(&events(&mut c));
        assert_eq!(done[0].outcomes, vec![Outcome::Failed(Reply::parse("550 5.1.1 no").unwrap())]);
    }

    #[test]
    fn rejected_recipients_keep_their_own_outcome() {
        let mut c = Client::new(pipelining(), ReplyReader::default());
        submit(&mut c, 1, &["a@x.test", "nobody@x.test", "later@x.test"]);
        c.output();
        c.receive(b"250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n451 4.3.0 later\r\n354 go\r\n");
        assert_eq!(events(&mut c), vec![Event::Content(1)]);
        c.receive(b"250 2.0.0 ok\r\n");
        let done = finished(&events(&mut c));
        assert_eq!(
            done[0].outcomes,
            vec![
                Outcome::Delivered(Reply::parse("250 2.0.0 ok").unwrap()),
                Outcome::Failed(Reply::parse("550 5.1.1 no such user").unwrap()),
                Outcome::Deferred(crate::delivery::outcome::recorded("451 4.3.0 later")),
            ]
        );
    }

    #[test]
    fn no_recipient_accepted_means_no_content_and_rset() {
        let mut c = Client::new(pipelining(), ReplyReader::default());
        submit(&mut c, 1, &["a@x.test"]);
        c.output();
        c.receive(b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n");
        let done = finished(&events(&mut c));
        assert_eq!(done[0].outcomes, vec![Outcome::Failed(Reply::parse("550 5.1.1 no").unwrap())]);
        assert_eq!(c.output(), b"RSET\r\n");
        // An upstream that says 354 anyway gets an empty message and RSET.
        let mut c = Client::new(pipelining(), ReplyReader::default());
        submit(&mut c, 1, &["a@x.test"]);
        c.output();
        c.receive(b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n");
        assert!(matches!(&events(&mut c)[..], [Event::Finished(_)]));
        assert_eq!(c.output(), b".\r\nRSET\r\n");
    }

    #[test]
    fn data_refused_after_accepted_recipients_fails_them() {
        let mut c = Client::new(pipelining(), ReplyReader::default());
        submit(&mut c, 1, &["a@x.test", "b@x.test"]);
        c.output();
        c.receive(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n554 5.7.1 not today\r\n");
        let done = finished(&events(&mut c));
        assert_eq!(
            done[0].outcomes,
            vec![
                Outcome::Failed(Reply::parse("554 5.7.1 not today").unwrap()),
                Outcome::Failed(Reply::parse("550 5.1.1 no").unwrap())
            ]
        );
    }

    #[test]
    fn a_421_mid_group_defers_the_rest_and_closes() {
        let mut c = Client::new(pipelining(), ReplyReader::default());
        submit(&mut c, 1, &["a@x.test", "b@x.test", "c@x.test"]);
        c.output();
        c.receive(b"250 ok\r\n550 5.1.1 no\r\n421 4.3.2 shutting down\r\n");
        let got = events(&mut c);
        let done = finished(&got);
        assert_eq!(
            done[0].outcomes,
            vec![
                Outcome::Failed(Reply::parse("550 5.1.1 no").unwrap()),
                Outcome::Deferred(crate::delivery::outcome::recorded("421 4.3.2 shutting down")),
                Outcome::Deferred(crate::delivery::outcome::recorded("421 4.3.2 shutting down")),
            ]
        );
        assert_eq!(got.last(), Some(&Event::Close("421 4.3.2 shutting down".into())));
        assert!(c.output().is_empty(), "nothing more is written");
    }

    #[test]
    fn a_relay_refusal_at_mail_defers_the_copy() {
        let mut c = Client::new(pipelining(), ReplyReader::default());
        submit(&mut c, 1, &["a@x.test"]);
        c.output();
        c.receive(b"530 5.7.0 Authentication required\r\n503 5.5.1 sender first\r\n503 5.5.1 no\r\n");
        let done = finished(&events(&mut c));
        assert_eq!(done[0].refusal.as_ref().map(|r| r.stage), Some(Stage::Mail));
        assert!(!done[0].mail_accepted);
    }

    #[test]
    fn without_pipelining_one_command_at_a_time() {
        let mut c = Client::new(Extensions::default(), ReplyReader::default());
        submit(&mut c, 1, &["a@x.test", "b@x.test"]);
        assert_eq!(c.output(), b"MAIL FROM:<app@example.com>\r\n");
        assert!(c.output().is_empty(), "waits for the reply");
        c.receive(b"250 ok\r\n");
        assert_eq!(c.output(), b"RCPT TO:<a@x.test>\r\n");
        c.receive(b"550 5.1.1 no\r\n");
        assert_eq!(c.output(), b"RCPT TO:<b@x.test>\r\n");
        c.receive(b"550 5.1.1 no\r\n");
        assert_eq!(c.output(), b"RSET\r\n", "no DATA when nobody was accepted");
        assert_eq!(
            finished(&events(&mut c))[0].outcomes,
            vec![Outcome::Failed(Reply::parse("550 5.1.1 no").unwrap()); 2]
        );
        // A refused MAIL: no RCPT at all.
        let mut c = Client::new(Extensions::default(), ReplyReader::default());
        submit(&mut c, 2, &["a@x.test"]);
        c.output();
        c.receive(b"553 5.1.7 bad sender\r\n");
        assert_eq!(c.output(), b"RSET\r\n");
        assert_eq!(
            finished(&events(&mut c))[0].outcomes,
            vec![Outcome::Failed(Reply::parse("553 5.1.7 bad sender").unwrap())]
        );
    }

    #[test]
    fn smtputf8_and_8bitmime_only_when_offered() {
        let mut c = Client::new(pipelining(), ReplyReader::default());
        c.submit(Submit { id: 1, sender: String::new(), rcpts: vec!["josé@x.test".into()], eight_bit: true, size: 1 });
        assert!(c.output().is_empty());
        assert_eq!(
            finished(&events(&mut c))[0].outcomes,
            vec![Outcome::Failed(
                Reply::parse("553 5.6.7 the upstream does not support SMTPUTF8, needed for this address").unwrap()
            )]
        );
        let ext = Extensions { smtputf8: true, eight_bit_mime: true, ..pipelining() };
        let mut c = Client::new(ext, ReplyReader::default());
        c.submit(Submit { id: 1, sender: String::new(), rcpts: vec!["josé@x.test".into()], eight_bit: true, size: 1 });
        assert!(String::from_utf8(c.output()).unwrap().starts_with("MAIL FROM:<> SMTPUTF8 BODY=8BITMIME\r\n"));
    }

    #[test]
    fn replies_to_nothing_and_garbage_close_the_connection() {
        let mut c = Client::new(pipelining(), ReplyReader::default());
        c.receive(b"250 surprise\r\n");
        assert!(matches!(events(&mut c).last(), Some(Event::Close(_))));
        let mut c = Client::new(pipelining(), ReplyReader::default());
        submit(&mut c, 1, &["a@x.test"]);
        c.output();
        c.receive(&[b'x'; 5000]);
        let got = events(&mut c);
        assert_eq!(finished(&got)[0].outcomes.len(), 1);
        assert!(finished(&got)[0].untouched);
        assert!(matches!(got.last(), Some(Event::Close(_))));
        let mut c = Client::new(pipelining(), ReplyReader::default());
        submit(&mut c, 1, &["a@x.test"]);
        c.output();
        c.receive(b"250 ");
        c.receive(&[b'x'; 5000]);
        let got = events(&mut c);
        assert!(matches!(got.last(), Some(Event::Close(why)) if why.contains("longer than 4096")), "{got:?}");
    }

    #[test]
    fn ehlo_extensions_parse_from_a_split_multiline_reply() {
        let mut reader = ReplyReader::default();
        let text = "250-relay.test hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-AUTH LOGIN PLAIN\r\n\
                    250-CHUNKING\r\n250 SMTPUTF8\r\n";
        let mut got = None;
        for b in text.as_bytes() {
            reader.feed(std::slice::from_ref(b));
            if let Some(raw) = reader.next_reply().unwrap() {
                got = Some(raw);
            }
        }
        let ext = Extensions::parse(&got.unwrap().message);
        assert_eq!(
            ext,
            Extensions {
                pipelining: true,
                chunking: true,
                eight_bit_mime: true,
                smtputf8: true,
                starttls: false,
                auth_plain: true,
                auth_login: true,
                size: Some(1000),
            }
        );
    }

    #[test]
    fn dot_stuffing_across_chunks() {
        let mut out = Vec::new();
        let mut s = DotStuffer::default();
        for chunk in [&b".leading\r\nmid."[..], b"\r\n", b".", b"x\r\n..two\r\nlast"] {
            s.push(chunk, &mut out);
        }
        s.finish(&mut out);
        assert_eq!(out, b"..leading\r\nmid.\r\n..x\r\n...two\r\nlast\r\n.\r\n");
        let mut out = Vec::new();
        let mut s = DotStuffer::default();
        s.push(b"a\r\n", &mut out);
        s.finish(&mut out);
        assert_eq!(out, b"a\r\n.\r\n");
    }
}
