//! The SMTP session as a pure state machine: bytes in, [`Step`]s out.
//!
//! The session never touches a socket. The connection loop feeds it input and carries out
//! the steps that need I/O (TLS handshake, password check, storing a message), then reports
//! back with [`Session::tls_started`], [`Session::auth_result`] or a reply of its own.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use ipnet::IpNet;
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, MAIL_BODY_7BIT, MAIL_BODY_8BITMIME, MAIL_SMTPUTF8, MailFrom, RcptTo, Request,
};

use super::auth::{self, Credentials};
use super::data::{DataEvent, DataOutcome, DataReceiver};
use super::line::{Line, MAX_AUTH_LINE, MAX_COMMAND_LINE, skip_long_line, take_line};
use super::reply::{self, Reply};
use crate::addresses::Addresses;
use crate::message::address;

/// AUTH failures allowed before the connection is closed.
const MAX_AUTH_FAILURES: u8 = 3;

/// The settings a session works under.
#[derive(Clone, Debug)]
pub struct SessionParams {
    /// Our host name, for the EHLO reply.
    pub hostname: String,
    /// `server.max_message_size` in bytes.
    pub max_message_size: usize,
    /// `server.max_recipients`.
    pub max_recipients: usize,
    /// Whether STARTTLS can be offered.
    pub tls_available: bool,
    /// `access.relay_networks`.
    pub relay_networks: Vec<IpNet>,
    /// `access.require_auth`.
    pub require_auth: bool,
    /// `access.allow_plaintext_auth`.
    pub allow_plaintext_auth: bool,
    /// Whether any `[[access.users]]` exist.
    pub auth_enabled: bool,
}

/// A message received in full, with everything known about how it came.
#[derive(Clone, Debug)]
pub struct Incoming {
    /// The client's address.
    pub peer: SocketAddr,
    /// The name the client gave in EHLO/HELO.
    pub helo: String,
    /// Whether the session was under TLS.
    pub tls: bool,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// The envelope sender (empty for the null sender).
    pub sender: String,
    /// The envelope recipients, canonical and without duplicates.
    pub recipients: Addresses,
    /// The message, dot stuffing undone, CRLF line ends only.
    pub data: Vec<u8>,
}

/// What the connection loop must do next.
#[derive(Debug)]
pub enum Step {
    /// Flush pending replies and read more input.
    NeedInput,
    /// Queue this reply and call [`Session::advance`] again.
    Reply(Reply),
    /// Send this reply, then close the connection.
    Close(Reply),
    /// Send `220`, drop any input already buffered (it was sent in the clear), handshake,
    /// then call [`Session::tls_started`].
    StartTls,
    /// Check these credentials, then call [`Session::auth_result`].
    Authenticate(Credentials),
    /// Reserve memory for the message about to arrive, then call
    /// [`Session::data_reserved`].
    ReserveData,
    /// Check that the spool has room for a message of `size` bytes (0 when MAIL declared no
    /// `SIZE=`), then call [`Session::space_checked`].
    CheckSpace {
        /// The declared size.
        size: u64,
    },
    /// Store this message and reply with the outcome.
    Message(Incoming),
}

/// What the session waits for when it asks for input; the connection loop's deadlines
/// follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Awaiting {
    /// The first byte of the next command (only the idle timeout runs).
    NextCommand,
    /// The rest of a command line already begun (`server.command_timeout` runs).
    RestOfLine,
    /// The message, up to the final dot (`server.data_timeout` runs).
    Data,
}

#[derive(Debug)]
enum State {
    Command,
    Data(DataReceiver),
    Sasl(Sasl),
    SkipLongLine,
}

#[derive(Debug)]
enum Sasl {
    Plain,
    LoginUser,
    LoginPassword(String),
}

#[derive(Debug)]
struct Transaction {
    sender: String,
    smtputf8: bool,
    recipients: Recipients,
}

/// A transaction's recipients without duplicates (same local part, same domain in any case).
/// The duplicate check keeps a keyed hash of each recipient's key and its index, a few bytes
/// a recipient instead of a second copy of every address: a transaction of 100,000
/// recipients holds them once.
#[derive(Debug, Default)]
struct Recipients {
    list: Addresses,
    /// Hash of a recipient's key to the first recipient with that hash.
    by_hash: HashMap<u64, u32>,
    /// Recipients whose key hash equals an earlier, different recipient's (a 64-bit
    /// collision: in practice never).
    collided: Vec<(u64, u32)>,
    hasher: RandomState,
}

impl Recipients {
    fn len(&self) -> usize {
        self.list.len()
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether an address with the same key is already in.
    fn contains(&self, key: &(String, String)) -> bool {
        let hash = self.hasher.hash_one(key);
        let same = |i: u32| address::key(&self.list[i as usize]) == *key;
        self.by_hash.get(&hash).is_some_and(|&i| same(i)) || self.collided.iter().any(|&(h, i)| h == hash && same(i))
    }

    /// Add an address not yet in.
    fn push(&mut self, rcpt: String, key: &(String, String)) {
        let hash = self.hasher.hash_one(key);
        let index = u32::try_from(self.list.len()).unwrap_or(u32::MAX);
        match self.by_hash.entry(hash) {
            std::collections::hash_map::Entry::Occupied(_) => self.collided.push((hash, index)),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(index);
            }
        }
        self.list.push(&rcpt);
    }
}

/// One client's SMTP session.
#[derive(Debug)]
pub struct Session {
    params: Arc<SessionParams>,
    peer: SocketAddr,
    trusted_network: bool,
    helo: Option<String>,
    tls: bool,
    user: Option<String>,
    tx: Option<Transaction>,
    state: State,
    auth_failures: u8,
    /// A MAIL accepted but for the check of free space.
    pending_mail: Option<Transaction>,
}

impl Session {
    /// A new session for a client at `peer`.
    pub fn new(params: Arc<SessionParams>, peer: SocketAddr) -> Session {
        let ip = peer.ip().to_canonical();
        let trusted_network = params.relay_networks.iter().any(|n| n.contains(&ip));
        Session {
            params,
            peer,
            trusted_network,
            helo: None,
            tls: false,
            user: None,
            tx: None,
            state: State::Command,
            auth_failures: 0,
            pending_mail: None,
        }
    }

    /// The 220 greeting.
    pub fn greeting(&self) -> Reply {
        reply::greeting(&self.params.hostname)
    }

    /// True while a mail transaction (or an AUTH exchange) is under way.
    pub fn in_transaction(&self) -> bool {
        self.tx.is_some() || !matches!(self.state, State::Command)
    }

    /// What the session is waiting for, given the input still buffered after
    /// [`Step::NeedInput`].
    pub fn awaiting(&self, buffered: &[u8]) -> Awaiting {
        match self.state {
            State::Data(_) => Awaiting::Data,
            State::SkipLongLine => Awaiting::RestOfLine,
            State::Command | State::Sasl(_) if buffered.is_empty() => Awaiting::NextCommand,
            State::Command | State::Sasl(_) => Awaiting::RestOfLine,
        }
    }

    /// Consume input up to the next step.
    pub fn advance(&mut self, input: &mut BytesMut) -> Step {
        match &mut self.state {
            State::Data(rx) => match rx.ingest(input) {
                DataEvent::NeedMore => Step::NeedInput,
                DataEvent::BareLineEnding => Step::Close(reply::BARE_LINE_ENDING),
                DataEvent::End(outcome) => self.end_of_data(outcome),
            },
            State::SkipLongLine => {
                if skip_long_line(input) {
                    self.state = State::Command;
                    Step::Reply(reply::LINE_TOO_LONG)
                } else {
                    Step::NeedInput
                }
            }
            State::Command | State::Sasl(_) => {
                let in_sasl = matches!(self.state, State::Sasl(_));
                let limit = if in_sasl || starts_with_auth(input) { MAX_AUTH_LINE } else { MAX_COMMAND_LINE };
                match take_line(input, limit) {
                    Line::Incomplete => Step::NeedInput,
                    Line::Overflow => {
                        self.state = State::SkipLongLine;
                        Step::NeedInput
                    }
                    Line::TooLong => {
                        self.state = State::Command;
                        Step::Reply(reply::LINE_TOO_LONG)
                    }
                    Line::BareLineEnding => Step::Close(reply::BARE_LINE_ENDING),
                    Line::Complete(line) if in_sasl => self.sasl_response(&line),
                    Line::Complete(line) => self.command(&line),
                }
            }
        }
    }

    /// After a successful STARTTLS handshake: start over, as RFC 3207 requires.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.helo = None;
        self.user = None;
        self.tx = None;
        self.state = State::Command;
    }

    /// After a credential check: `Some(user)` when it passed.
    pub fn auth_result(&mut self, user: Option<String>) -> Step {
        match user {
            Some(user) => {
                self.user = Some(user);
                Step::Reply(reply::AUTH_OK)
            }
            None => {
                self.auth_failures += 1;
                if self.auth_failures >= MAX_AUTH_FAILURES {
                    Step::Close(reply::TOO_MANY_AUTH_FAILURES)
                } else {
                    Step::Reply(reply::AUTH_FAILED)
                }
            }
        }
    }

    /// After DATA's reservation: `354` and the data, or `452 4.3.1` when there was no memory
    /// for it (the transaction stays open; the client may try DATA again).
    pub fn data_reserved(&mut self, granted: bool) -> Step {
        if !granted {
            return Step::Reply(reply::NO_MEMORY_FOR_DATA);
        }
        self.state = State::Data(DataReceiver::new(self.params.max_message_size));
        Step::Reply(reply::start_data())
    }

    /// Message bytes received and not yet taken out (0 outside DATA).
    pub fn data_buffered(&self) -> usize {
        match &self.state {
            State::Data(rx) => rx.buffered(),
            _ => 0,
        }
    }

    /// Take out the message bytes received so far (the message continues after them).
    pub fn take_data(&mut self) -> Vec<u8> {
        match &mut self.state {
            State::Data(rx) => rx.take_kept(),
            _ => Vec::new(),
        }
    }

    /// Whether the session is receiving a message's data.
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data(_))
    }

    /// After [`Step::CheckSpace`]: open the transaction when there is room, else 452 4.3.1.
    pub fn space_checked(&mut self, room: bool) -> Step {
        let Some(tx) = self.pending_mail.take() else {
            return Step::Reply(reply::MAIL_FIRST);
        };
        if !room {
            return Step::Reply(reply::INSUFFICIENT_STORAGE);
        }
        self.tx = Some(tx);
        Step::Reply(reply::SENDER_OK)
    }

    fn end_of_data(&mut self, outcome: DataOutcome) -> Step {
        self.state = State::Command;
        let tx = self.tx.take().expect("DATA is only entered inside a transaction");
        match outcome {
            DataOutcome::TooBig => Step::Reply(reply::MESSAGE_TOO_BIG),
            DataOutcome::Nul => Step::Reply(reply::NUL_IN_DATA),
            DataOutcome::Message(data) => Step::Message(Incoming {
                peer: self.peer,
                helo: self.helo.clone().unwrap_or_default(),
                tls: self.tls,
                user: self.user.clone(),
                sender: tx.sender,
                recipients: tx.recipients.list,
                data,
            }),
        }
    }

    fn command(&mut self, line: &[u8]) -> Step {
        if line.contains(&0) {
            return Step::Reply(reply::NUL_IN_COMMAND);
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(request) => request,
            Err(e) => return Step::Reply(parse_error(e)),
        };
        match request {
            Request::Ehlo { host } => self.hello(host, true),
            Request::Helo { host } => self.hello(host, false),
            Request::Mail { from } => self.mail(from, line),
            Request::Rcpt { to } => self.rcpt(to),
            Request::Data => self.data(),
            Request::Rset => {
                self.tx = None;
                Step::Reply(reply::OK)
            }
            Request::Noop { .. } => Step::Reply(reply::OK),
            Request::Quit => Step::Close(reply::BYE),
            Request::Vrfy { .. } => Step::Reply(reply::CANNOT_VRFY),
            Request::Help { .. } => Step::Reply(reply::HELP),
            Request::StartTls => self.starttls(),
            Request::Auth { mechanism, initial_response } => self.auth(mechanism, &initial_response),
            _ => Step::Reply(reply::NOT_IMPLEMENTED),
        }
    }

    fn hello(&mut self, host: Cow<'_, str>, esmtp: bool) -> Step {
        self.tx = None;
        self.helo = Some(host.into_owned());
        let p = &self.params;
        if !esmtp {
            return Step::Reply(Reply::plain(250, p.hostname.clone()));
        }
        let mut lines = vec![
            p.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", p.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if p.tls_available && !self.tls {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        Step::Reply(Reply::plain(250, lines.join("\n")))
    }

    fn auth_offered(&self) -> bool {
        self.params.auth_enabled && self.user.is_none() && (self.tls || self.params.allow_plaintext_auth)
    }

    fn may_relay(&self) -> bool {
        self.user.is_some() || (self.trusted_network && !self.params.require_auth)
    }

    fn mail(&mut self, from: MailFrom<Cow<'_, str>>, line: &[u8]) -> Step {
        if self.helo.is_none() {
            return Step::Reply(reply::HELO_FIRST);
        }
        if self.tx.is_some() {
            return Step::Reply(reply::NESTED_MAIL);
        }
        if self.params.require_auth && self.user.is_none() {
            return Step::Reply(reply::AUTH_REQUIRED);
        }
        let supported = MAIL_BODY_7BIT | MAIL_BODY_8BITMIME | MAIL_SMTPUTF8;
        let extensions_used = from.env_id.is_some()
            || from.trans_id.is_some()
            || from.solicit.is_some()
            || from.mtrk.is_some()
            || from.by != 0
            || from.hold_for != 0
            || from.hold_until != 0
            || from.mt_priority != 0;
        if from.flags & !supported != 0 || extensions_used {
            return Step::Reply(reply::UNSUPPORTED_PARAMETER);
        }
        let size = declared_size(line).unwrap_or(0);
        if size > self.params.max_message_size as u128 {
            return Step::Reply(reply::MESSAGE_TOO_BIG);
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        let sender = if from.address.is_empty() {
            String::new()
        } else {
            match address::canonical(&from.address) {
                Some(a) => a,
                None => return Step::Reply(reply::BAD_SENDER),
            }
        };
        if !smtputf8 && !sender.is_ascii() {
            return Step::Reply(reply::NEED_SMTPUTF8);
        }
        self.pending_mail = Some(Transaction { sender, smtputf8, recipients: Recipients::default() });
        // Not above max_message_size, so it fits in a u64.
        Step::CheckSpace { size: u64::try_from(size).unwrap_or(u64::MAX) }
    }

    fn rcpt(&mut self, to: RcptTo<Cow<'_, str>>) -> Step {
        let may_relay = self.may_relay();
        let max = self.params.max_recipients;
        let Some(tx) = &mut self.tx else {
            return Step::Reply(reply::MAIL_FIRST);
        };
        if to.flags != 0 || to.orcpt.is_some() || to.rrvs != 0 {
            return Step::Reply(reply::UNSUPPORTED_PARAMETER);
        }
        let Some(rcpt) = address::canonical(&to.address) else {
            return Step::Reply(reply::BAD_RECIPIENT);
        };
        if !tx.smtputf8 && !rcpt.is_ascii() {
            return Step::Reply(reply::NEED_SMTPUTF8);
        }
        if !may_relay {
            return Step::Reply(reply::RELAY_DENIED);
        }
        let key = address::key(&rcpt);
        if tx.recipients.contains(&key) {
            return Step::Reply(reply::RECIPIENT_OK);
        }
        if tx.recipients.len() >= max {
            return Step::Reply(reply::TOO_MANY_RECIPIENTS);
        }
        tx.recipients.push(rcpt, &key);
        Step::Reply(reply::RECIPIENT_OK)
    }

    fn data(&mut self) -> Step {
        match &self.tx {
            None => Step::Reply(reply::MAIL_FIRST),
            Some(tx) if tx.recipients.is_empty() => Step::Reply(reply::NO_RECIPIENTS),
            Some(_) => Step::ReserveData,
        }
    }

    fn starttls(&mut self) -> Step {
        if self.tls {
            Step::Reply(reply::TLS_ALREADY_ACTIVE)
        } else if !self.params.tls_available {
            Step::Reply(reply::NOT_IMPLEMENTED)
        } else {
            Step::StartTls
        }
    }

    fn auth(&mut self, mechanism: u64, initial: &str) -> Step {
        if !self.params.auth_enabled {
            return Step::Reply(reply::NOT_IMPLEMENTED);
        }
        if self.helo.is_none() {
            return Step::Reply(reply::HELO_FIRST);
        }
        if self.user.is_some() {
            return Step::Reply(reply::ALREADY_AUTHENTICATED);
        }
        if self.tx.is_some() {
            return Step::Reply(reply::AUTH_IN_TRANSACTION);
        }
        if !self.tls && !self.params.allow_plaintext_auth {
            return Step::Reply(reply::ENCRYPTION_REQUIRED);
        }
        match (mechanism, initial.is_empty()) {
            (AUTH_PLAIN, true) => self.challenge(Sasl::Plain, ""),
            (AUTH_PLAIN, false) => self.plain(initial),
            (AUTH_LOGIN, true) => self.challenge(Sasl::LoginUser, "Username:"),
            (AUTH_LOGIN, false) => self.login_user(initial),
            _ => Step::Reply(reply::UNKNOWN_MECHANISM),
        }
    }

    fn challenge(&mut self, next: Sasl, prompt: &str) -> Step {
        self.state = State::Sasl(next);
        Step::Reply(Reply::plain(334, auth::encode_prompt(prompt)))
    }

    fn plain(&mut self, response: &str) -> Step {
        match auth::decode_plain(response) {
            Some(credentials) => Step::Authenticate(credentials),
            None => Step::Reply(reply::BAD_AUTH_RESPONSE),
        }
    }

    fn login_user(&mut self, response: &str) -> Step {
        match auth::decode_response(response) {
            Some(user) if !user.is_empty() => self.challenge(Sasl::LoginPassword(user), "Password:"),
            _ => Step::Reply(reply::BAD_AUTH_RESPONSE),
        }
    }

    fn sasl_response(&mut self, line: &[u8]) -> Step {
        let State::Sasl(sasl) = std::mem::replace(&mut self.state, State::Command) else {
            unreachable!("only called in the SASL state");
        };
        let text = String::from_utf8_lossy(&line[..line.len() - 2]);
        if text.trim() == "*" {
            return Step::Reply(reply::AUTH_CANCELLED);
        }
        match sasl {
            Sasl::Plain => self.plain(&text),
            Sasl::LoginUser => self.login_user(&text),
            Sasl::LoginPassword(user) => match auth::decode_response(&text) {
                Some(password) => Step::Authenticate(Credentials { user, password }),
                None => Step::Reply(reply::BAD_AUTH_RESPONSE),
            },
        }
    }
}

fn starts_with_auth(input: &[u8]) -> bool {
    input.len() >= 5 && input[..5].eq_ignore_ascii_case(b"AUTH ")
}

/// The `SIZE=` value of a MAIL line, read here because the parser wraps around on values of
/// more than 20 digits. Saturates instead of overflowing.
fn declared_size(line: &[u8]) -> Option<u128> {
    let text = std::str::from_utf8(line).ok()?;
    let params = &text[text.find('>')? + 1..];
    params.split_ascii_whitespace().find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.eq_ignore_ascii_case("SIZE").then(|| {
            value
                .bytes()
                .take_while(u8::is_ascii_digit)
                .fold(0u128, |n, d| n.saturating_mul(10).saturating_add(u128::from(d - b'0')))
        })
    })
}

fn parse_error(e: smtp_proto::Error) -> Reply {
    use smtp_proto::Error as E;
    match e {
        E::InvalidSenderAddress => reply::BAD_SENDER,
        E::InvalidRecipientAddress => reply::BAD_RECIPIENT,
        E::SyntaxError { syntax } => reply::syntax(syntax),
        E::InvalidParameter { param } => reply::syntax(&format!("invalid value for {param}")),
        E::UnsupportedParameter { .. } => reply::UNSUPPORTED_PARAMETER,
        _ => reply::UNKNOWN_COMMAND,
    }
}

#[cfg(test)]
mod tests;
