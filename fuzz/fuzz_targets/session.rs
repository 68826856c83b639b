//! Fuzz the inbound SMTP session: client bytes in, split into chunks at arbitrary points,
//! driven through the sans-I/O [`Session`] (and with it the DATA receiver) the way the
//! connection loop drives it; replies out.
//!
//! Input layout:
//!
//! byte 0, bits:
//!   0    tls_available
//!   1    require_auth
//!   2    allow_plaintext_auth
//!   3    auth_enabled
//!   4    the peer is inside relay_networks
//!   5-6  client prefix: 0 none, 1 `EHLO`, 2 `EHLO` `MAIL` `RCPT`, 3 the same and `DATA`
//!   7    the reply to a message: 0 always 250, 1 alternating 250 and 550
//! byte 1, bits:
//!   0-2  max_recipients: 0..=7
//!   3-4  max_message_size: 16, 64, 1000, 1 MiB
//!   5-6  AUTH outcome: 0 always fails, 1 always passes, 2-3 alternates
//!   7    the peer address is IPv4-mapped IPv6
//! byte 2: 0 feeds everything at once, else chunks of 1..=byte 2 bytes
//! byte 3: seed for the chunk sizes; its bits 5-7 also say: 5 every other DATA finds the
//!         memory budget spent (452), 6 every other MAIL finds the disk short (452), 7 the
//!         loop takes the message's bytes out of the session whenever it asks for input (as
//!         it does to spill a large message to disk)
//! rest:   what the client sends (after the prefix)
//!
//! Invariants checked (a correct session keeps them whatever the client sends and however
//! its bytes are split):
//!
//! - every reply: code 200..=599; each wire line CRLF-terminated, at most 512 octets, no CR
//!   or LF inside, starts with the 3-digit code, `-` on every line but the last, which has
//!   ` `; an enhanced status code, if any, is of the reply's class;
//! - `advance` only ever consumes input from the front (what stays buffered is a suffix of
//!   what was fed), never grows it, and makes progress: at most 2 calls per buffered byte
//!   (+2) until it asks for input;
//! - `NeedInput` leaves no LF in the buffer (no complete line is left waiting: pipelined
//!   commands cannot stall) and at most one AUTH line (12288 octets) buffered;
//! - DATA: what the session makes of the bytes after its `354` (the bytes taken out while it
//!   arrived, then the rest) is exactly what a plain line-by-line reference makes of them (ends at the first `.` line, strips one leading
//!   dot, refuses bare CR/LF, 552 past the size limit, 554 with a NUL), whatever the
//!   chunking; a delivered message is CRLF-only, NUL-free, within the size limit;
//! - a delivered message has 1..=max_recipients distinct recipients, the session's TLS
//!   state and user, and comes from a client that may relay (authenticated, or trusted
//!   network without require_auth);
//! - STARTTLS only when offered and not yet under TLS; AUTH only when enabled, under TLS or
//!   with plaintext AUTH allowed, not yet authenticated, with a non-empty user; the third
//!   failed AUTH closes the session;
//! - `Close` only with 221, 421 or 554; nothing is processed after it.
#![no_main]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use bccguard::message::address;
use bccguard::smtp::reply::{self, Reply, Status};
use bccguard::smtp::session::{Session, SessionParams, Step};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// Longest reply line, CRLF included (RFC 5321 §4.5.3.1.5).
const MAX_REPLY_LINE: usize = 512;
/// Longest AUTH line the session buffers (RFC 4954 §4).
const MAX_AUTH_LINE: usize = 12288;
/// AUTH failures after which the session closes.
const MAX_AUTH_FAILURES: u32 = 3;

const SIZES: [usize; 4] = [16, 64, 1000, 1 << 20];
const PREFIXES: [&[u8]; 4] = [
    b"",
    b"EHLO client.test\r\n",
    b"EHLO client.test\r\nMAIL FROM:<>\r\nRCPT TO:<a@b.test>\r\n",
    b"EHLO client.test\r\nMAIL FROM:<>\r\nRCPT TO:<a@b.test>\r\nDATA\r\n",
];

fn debug() -> bool {
    std::env::var_os("BCCGUARD_FUZZ_DEBUG").is_some()
}

fn check_reply(r: &Reply) {
    assert!((200..=599).contains(&r.code), "reply code {} out of range: {r:?}", r.code);
    if let Some(Status(class, _, _)) = r.status {
        assert!(matches!(class, 2 | 4 | 5), "enhanced status class {class}: {r:?}");
        assert_eq!(u16::from(class), r.code / 100, "enhanced status of another class: {r:?}");
    }
    let mut wire = Vec::new();
    r.write_to(&mut wire);
    if debug() {
        eprint!("S: {}", String::from_utf8_lossy(&wire));
    }
    assert!(wire.ends_with(b"\r\n"), "reply not CRLF-terminated: {wire:?}");
    let code = r.code.to_string();
    let mut lines = Vec::new();
    let mut rest = &wire[..];
    while !rest.is_empty() {
        let end = rest.windows(2).position(|w| w == b"\r\n").expect("every reply line ends with CRLF");
        lines.push(&rest[..end]);
        rest = &rest[end + 2..];
    }
    assert!(!lines.is_empty());
    for (i, line) in lines.iter().enumerate() {
        let shown = String::from_utf8_lossy(line);
        assert!(line.len() + 2 <= MAX_REPLY_LINE, "reply line of {} octets: {shown:?}", line.len() + 2);
        assert!(!line.contains(&b'\r') && !line.contains(&b'\n'), "CR or LF inside a reply line: {shown:?}");
        assert!(line.len() >= 4, "reply line too short: {shown:?}");
        assert!(line[..3].iter().all(u8::is_ascii_digit), "reply line without a code: {shown:?}");
        assert!((b'2'..=b'5').contains(&line[0]), "reply class: {shown:?}");
        assert_eq!(&line[..3], code.as_bytes(), "mixed codes in one reply: {shown:?}");
        let sep = if i + 1 == lines.len() { b' ' } else { b'-' };
        assert_eq!(line[3], sep, "bad separator in line {i} of {}: {shown:?}", lines.len());
    }
}

/// What a DATA phase amounts to, by a plain line-by-line reading of everything the client
/// sends after the `354`.
#[derive(Debug, PartialEq, Eq)]
enum Reference {
    /// No terminator yet.
    Incomplete,
    /// A bare CR or LF before the terminator.
    Bare,
    /// The terminator ends `consumed` bytes; the message is `data`.
    End { data: Vec<u8>, consumed: usize },
}

fn reference_data(s: &[u8]) -> Reference {
    let mut data = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &s[pos..];
        let Some(k) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
            return Reference::Incomplete;
        };
        if rest[k] == b'\n' {
            return Reference::Bare;
        }
        match rest.get(k + 1) {
            None => return Reference::Incomplete,
            Some(b'\n') => {}
            Some(_) => return Reference::Bare,
        }
        let line = &rest[..k];
        pos += k + 2;
        if line == b"." {
            return Reference::End { data, consumed: pos };
        }
        data.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        data.extend_from_slice(b"\r\n");
    }
}

fn check_line_endings(data: &[u8]) {
    for (i, &b) in data.iter().enumerate() {
        match b {
            0 => panic!("NUL in message at {i}"),
            b'\n' => assert!(i > 0 && data[i - 1] == b'\r', "bare LF in message at {i}"),
            b'\r' => assert!(data.get(i + 1) == Some(&b'\n'), "bare CR in message at {i}"),
            _ => {}
        }
    }
    assert!(data.is_empty() || data.ends_with(b"\r\n"), "message does not end with CRLF");
}

/// Tiny deterministic generator for chunk sizes.
struct Chunker {
    state: u32,
    max: usize,
}

impl Chunker {
    fn next(&mut self, left: usize) -> usize {
        if self.max == 0 {
            return left;
        }
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        (1 + self.state as usize % self.max).min(left)
    }
}

struct Harness<'a> {
    params: &'a SessionParams,
    trusted: bool,
    peer: SocketAddr,
    /// Everything the client will send.
    stream: &'a [u8],
    /// How much of `stream` has been fed.
    fed: usize,
    tls: bool,
    user: Option<String>,
    auth_mode: u8,
    auth_count: u32,
    auth_failures: u32,
    reject_mode: bool,
    messages: u32,
    /// Stream offset of the first byte after the `354`, while in DATA.
    data_start: Option<usize>,
    /// Take the message's bytes out of the session at every `NeedInput` in DATA.
    spill: bool,
    /// The bytes taken out so far.
    spilled: Vec<u8>,
    /// Refuse every other DATA reservation / MAIL free-space check.
    deny_memory: bool,
    deny_space: bool,
    asks: u32,
}

impl Harness<'_> {
    /// Stream offset of the first byte still buffered.
    fn pos(&self, input: &BytesMut) -> usize {
        self.fed - input.len()
    }

    /// The end of a DATA phase: check it against the reference.
    fn data_end(&mut self, start: usize, input: &BytesMut, outcome: Result<Vec<u8>, &Step>) {
        let reference = reference_data(&self.stream[start..]);
        let Reference::End { data, consumed } = reference else {
            panic!("DATA ended ({outcome:?}) but the reference says {reference:?}");
        };
        assert_eq!(self.pos(input), start + consumed, "DATA consumed a different amount");
        let too_big = data.len() > self.params.max_message_size;
        let nul = data.contains(&0);
        match outcome {
            Ok(message) => {
                assert!(!too_big && !nul, "message delivered: too_big {too_big} nul {nul}");
                assert!(message == data, "message differs from the reference:\n{message:?}\n{data:?}");
                check_line_endings(&message);
            }
            // Over the limit and with a NUL: either refusal is right.
            Err(Step::Reply(r)) if *r == reply::MESSAGE_TOO_BIG => {
                assert!(too_big, "552 for a message within the limit")
            }
            Err(Step::Reply(r)) if *r == reply::NUL_IN_DATA => assert!(nul, "554 NUL without a NUL"),
            Err(other) => panic!("unexpected end of DATA: {other:?}"),
        }
    }

    /// Carry out one step; false once the session is closed.
    fn step(&mut self, session: &mut Session, input: &mut BytesMut, step: Step) -> bool {
        if let Some(start) = self.data_start {
            match &step {
                Step::NeedInput | Step::Message(_) => {}
                Step::Close(r) => {
                    self.spilled.clear();
                    check_reply(r);
                    assert_eq!(*r, reply::BARE_LINE_ENDING, "DATA closed otherwise than for a bare line ending");
                    let reference = reference_data(&self.stream[start..]);
                    assert_eq!(
                        reference,
                        Reference::Bare,
                        "DATA closed for a bare line ending the reference does not see"
                    );
                    self.data_start = None;
                    return false;
                }
                _ => {
                    self.data_start = None;
                    self.spilled.clear();
                    if let Step::Reply(r) = &step {
                        check_reply(r);
                    }
                    self.data_end(start, input, Err(&step));
                    return true;
                }
            }
        }
        match step {
            Step::NeedInput => {
                assert!(!input.contains(&b'\n'), "NeedInput with a complete line buffered: {input:?}");
                assert!(input.len() <= MAX_AUTH_LINE, "{} bytes buffered", input.len());
                if self.spill && self.data_start.is_some() {
                    let before = session.data_buffered();
                    let taken = session.take_data();
                    assert_eq!(taken.len(), before, "data_buffered and take_data disagree");
                    assert_eq!(session.data_buffered(), 0);
                    self.spilled.extend_from_slice(&taken);
                }
                true
            }
            Step::ReserveData => {
                assert!(self.data_start.is_none(), "DATA reserved inside DATA");
                self.asks += 1;
                let granted = !(self.deny_memory && self.asks.is_multiple_of(2));
                let next = session.data_reserved(granted);
                if !granted {
                    assert!(matches!(&next, Step::Reply(r) if *r == reply::NO_MEMORY_FOR_DATA), "{next:?}");
                    assert!(!session.in_data());
                }
                self.step(session, input, next)
            }
            Step::CheckSpace { .. } => {
                self.asks += 1;
                let room = !(self.deny_space && self.asks.is_multiple_of(2));
                let next = session.space_checked(room);
                if !room {
                    assert!(matches!(&next, Step::Reply(r) if *r == reply::INSUFFICIENT_STORAGE), "{next:?}");
                }
                self.step(session, input, next)
            }
            Step::Reply(r) => {
                check_reply(&r);
                if r == reply::start_data() {
                    self.data_start = Some(self.pos(input));
                }
                true
            }
            Step::Close(r) => {
                check_reply(&r);
                assert!(matches!(r.code, 221 | 421 | 554), "Close with {r:?}");
                false
            }
            Step::StartTls => {
                assert!(self.params.tls_available, "STARTTLS without TLS available");
                assert!(!self.tls, "STARTTLS under TLS");
                check_reply(&reply::READY_FOR_TLS);
                input.clear();
                session.tls_started();
                self.tls = true;
                self.user = None;
                true
            }
            Step::Authenticate(credentials) => {
                assert!(self.params.auth_enabled, "AUTH while disabled");
                assert!(self.tls || self.params.allow_plaintext_auth, "AUTH in the clear");
                assert!(self.user.is_none(), "AUTH twice");
                assert!(!credentials.user.is_empty(), "AUTH with an empty user");
                let ok = match self.auth_mode {
                    0 => false,
                    1 => true,
                    _ => !self.auth_count.is_multiple_of(2),
                };
                self.auth_count += 1;
                let user = credentials.user.clone();
                let next = session.auth_result(ok.then(|| user.clone()));
                if ok {
                    assert!(matches!(&next, Step::Reply(r) if *r == reply::AUTH_OK), "{next:?}");
                    self.user = Some(user);
                } else {
                    self.auth_failures += 1;
                    if self.auth_failures >= MAX_AUTH_FAILURES {
                        assert!(matches!(&next, Step::Close(r) if *r == reply::TOO_MANY_AUTH_FAILURES), "{next:?}");
                    } else {
                        assert!(matches!(&next, Step::Reply(r) if *r == reply::AUTH_FAILED), "{next:?}");
                    }
                }
                self.step(session, input, next)
            }
            Step::Message(incoming) => {
                let start = self.data_start.take().expect("a message outside DATA");
                let p = self.params;
                assert!(
                    self.user.is_some() || (self.trusted && !p.require_auth),
                    "message from a client that may not relay"
                );
                assert_eq!(incoming.peer, self.peer);
                assert_eq!(incoming.tls, self.tls, "Incoming.tls");
                assert_eq!(incoming.user, self.user, "Incoming.user");
                let n = incoming.recipients.len();
                assert!(n >= 1 && n <= p.max_recipients, "{n} recipients (max {})", p.max_recipients);
                let keys: HashSet<_> = incoming.recipients.iter().map(|r| address::key(r)).collect();
                assert_eq!(keys.len(), n, "duplicate recipients: {:?}", incoming.recipients);
                let mut message = std::mem::take(&mut self.spilled);
                message.extend_from_slice(&incoming.data);
                assert!(message.len() <= p.max_message_size);
                self.data_end(start, input, Ok(message));
                self.messages += 1;
                let answer = if self.reject_mode && self.messages.is_multiple_of(2) {
                    Reply::dynamic(550, Status(5, 7, 1), "Message refused: it shows 3 external recipient addresses")
                } else {
                    reply::queued("0123456789ABCDEF")
                };
                check_reply(&answer);
                true
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [b0, b1, chunk_max, seed, ref rest @ ..] = *data else {
        return;
    };
    let bit = |b: u8, i: u32| (b >> i) & 1 == 1;
    let trusted = bit(b0, 4);
    let params = SessionParams {
        hostname: "relay.test".into(),
        max_message_size: SIZES[usize::from((b1 >> 3) & 3)],
        max_recipients: usize::from(b1 & 7),
        tls_available: bit(b0, 0),
        relay_networks: vec!["127.0.0.0/8".parse().unwrap()],
        require_auth: bit(b0, 1),
        allow_plaintext_auth: bit(b0, 2),
        auth_enabled: bit(b0, 3),
    };
    let peer: SocketAddr = match (trusted, bit(b1, 7)) {
        (true, false) => "127.0.0.1:5000",
        (true, true) => "[::ffff:127.0.0.1]:5000",
        (false, false) => "192.0.2.1:5000",
        (false, true) => "[::ffff:192.0.2.1]:5000",
    }
    .parse()
    .unwrap();
    let mut stream = PREFIXES[usize::from((b0 >> 5) & 3)].to_vec();
    stream.extend_from_slice(rest);
    if debug() {
        eprintln!("{params:?} peer {peer}\nC: {:?}", String::from_utf8_lossy(&stream));
    }

    let mut session = Session::new(Arc::new(params.clone()), peer);
    check_reply(&session.greeting());
    let mut h = Harness {
        params: &params,
        trusted,
        peer,
        stream: &stream,
        fed: 0,
        tls: false,
        user: None,
        auth_mode: (b1 >> 5) & 3,
        auth_count: 0,
        auth_failures: 0,
        reject_mode: bit(b0, 7),
        messages: 0,
        data_start: None,
        spill: bit(seed, 7),
        spilled: Vec::new(),
        deny_memory: bit(seed, 5),
        deny_space: bit(seed, 6),
        asks: 0,
    };
    let mut chunker = Chunker { state: u32::from(seed) | 0x100, max: usize::from(chunk_max) };
    let mut input = BytesMut::new();
    'feed: while h.fed < stream.len() {
        let n = chunker.next(stream.len() - h.fed);
        input.extend_from_slice(&stream[h.fed..h.fed + n]);
        h.fed += n;
        let budget = 2 * input.len() + 2;
        let mut calls = 0;
        loop {
            calls += 1;
            assert!(calls <= budget, "{calls} advance calls for {} buffered bytes", input.len());
            let before = input.len();
            let step = session.advance(&mut input);
            assert!(input.len() <= before, "advance grew the input");
            assert!(input[..] == stream[h.fed - input.len()..h.fed], "the buffered input is not what was fed");
            let need_input = matches!(step, Step::NeedInput);
            if !h.step(&mut session, &mut input, step) {
                // Closed: nothing more is processed.
                break 'feed;
            }
            if need_input {
                break;
            }
        }
    }
    if let Some(start) = h.data_start {
        let reference = reference_data(&stream[start..]);
        assert_eq!(reference, Reference::Incomplete, "the session still waits for data the reference sees ended");
    }
});
