//! The DATA receiver: ends only on CRLF `.` CRLF, refuses bare CR and bare LF, undoes dot
//! stuffing, and stops storing (but keeps reading) past the size limit. Pure: bytes in,
//! events out. What it keeps can be taken out as it grows (the connection loop writes it to
//! a file), so its buffer stays small whatever the message's size.

use bytes::{Buf, BytesMut};

/// Where the receiver is within the current line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// At the first byte of a line.
    LineStart,
    /// After a `.` that began a line.
    Dot,
    /// After `.` CR at the start of a line: LF here ends the data.
    DotCr,
    /// Inside a line.
    Middle,
    /// After a CR inside a line: only LF may follow.
    Cr,
}

/// What the data that has arrived so far amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum DataEvent {
    /// The terminator has not arrived yet; feed more bytes.
    NeedMore,
    /// The data ended; what it holds. Bytes after the terminator stay in the input.
    End(DataOutcome),
    /// A bare CR or bare LF: the client is not speaking SMTP, so the session must end.
    BareLineEnding,
}

/// The message, or why it cannot be kept.
#[derive(Debug, PartialEq, Eq)]
pub enum DataOutcome {
    /// The message, dot stuffing undone, ending with the CRLF before the final dot: what
    /// was not already taken with [`DataReceiver::take_kept`].
    Message(Vec<u8>),
    /// More than the size limit arrived; nothing was kept.
    TooBig,
    /// The message holds a NUL byte, which downstream software may drop (smuggling risk).
    Nul,
}

/// What a message's buffer starts with (it grows as needed).
const INITIAL: usize = 8 * 1024;

/// Receives one message body after `354`.
#[derive(Debug)]
pub struct DataReceiver {
    at: At,
    data: Vec<u8>,
    /// Bytes kept in all, including those already taken out.
    total: usize,
    max: usize,
    too_big: bool,
    nul: bool,
}

impl DataReceiver {
    /// A receiver that keeps at most `max` bytes of message.
    pub fn new(max: usize) -> Self {
        DataReceiver { at: At::LineStart, data: Vec::new(), total: 0, max, too_big: false, nul: false }
    }

    /// Consume bytes from `input` up to the end of the data (or all of it).
    pub fn ingest(&mut self, input: &mut BytesMut) -> DataEvent {
        let mut i = 0;
        let bytes = &input[..];
        while i < bytes.len() {
            if self.at == At::Middle {
                // Fast path: copy the run up to the next CR, LF or NUL.
                let run = memchr::memchr3(b'\r', b'\n', 0, &bytes[i..]).unwrap_or(bytes.len() - i);
                self.keep(&bytes[i..i + run]);
                i += run;
                if i == bytes.len() {
                    break;
                }
            }
            let b = bytes[i];
            i += 1;
            self.at = match (self.at, b) {
                (At::LineStart, b'.') => At::Dot,
                (At::DotCr, b'\n') => {
                    input.advance(i);
                    return DataEvent::End(self.finish());
                }
                (At::Cr, b'\n') => {
                    self.keep(b"\r\n");
                    At::LineStart
                }
                (At::Cr | At::DotCr, _) | (_, b'\n') => {
                    input.advance(i);
                    return DataEvent::BareLineEnding;
                }
                (At::Dot, b'\r') => At::DotCr,
                (_, b'\r') => At::Cr,
                (_, b) => {
                    // A dot that began a line and is followed by more text was stuffing.
                    self.nul |= b == 0;
                    self.keep(&[b]);
                    At::Middle
                }
            };
        }
        input.advance(i);
        DataEvent::NeedMore
    }

    /// Bytes kept and not yet taken out.
    pub fn buffered(&self) -> usize {
        self.data.len()
    }

    /// Take out what was kept so far (the message continues after it).
    pub fn take_kept(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.data)
    }

    fn keep(&mut self, bytes: &[u8]) {
        if self.too_big {
            return;
        }
        if self.total + bytes.len() > self.max {
            self.too_big = true;
            self.data = Vec::new();
            return;
        }
        if self.data.capacity() == 0 {
            // Room for a typical message at once, not a doubling per few lines.
            self.data.reserve(INITIAL.min(self.max).max(bytes.len()));
        }
        self.total += bytes.len();
        self.data.extend_from_slice(bytes);
    }

    fn finish(&mut self) -> DataOutcome {
        if self.too_big {
            DataOutcome::TooBig
        } else if self.nul {
            DataOutcome::Nul
        } else {
            DataOutcome::Message(std::mem::take(&mut self.data))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], max: usize) -> (DataEvent, Vec<u8>) {
        let mut rx = DataReceiver::new(max);
        let mut input = BytesMut::new();
        for chunk in chunks {
            input.extend_from_slice(chunk);
            let event = rx.ingest(&mut input);
            if event != DataEvent::NeedMore {
                return (event, input.to_vec());
            }
        }
        (DataEvent::NeedMore, input.to_vec())
    }

    fn message(bytes: &[u8]) -> DataEvent {
        DataEvent::End(DataOutcome::Message(bytes.to_vec()))
    }

    #[test]
    fn ends_only_on_crlf_dot_crlf_and_keeps_what_follows() {
        let (event, rest) = run(&[b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n"], 1000);
        assert_eq!(event, message(b"Subject: x\r\n\r\nhello\r\n"));
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[test]
    fn the_terminator_may_be_split_across_reads() {
        let chunks: &[&[u8]] = &[b"a\r", b"\n", b".", b"\r", b"\nrest"];
        let (event, rest) = run(chunks, 1000);
        assert_eq!(event, message(b"a\r\n"));
        assert_eq!(rest, b"rest");
    }

    #[test]
    fn empty_message_and_leading_dots() {
        assert_eq!(run(&[b".\r\n"], 10).0, message(b""));
        assert_eq!(run(&[b"..x\r\n.\r\n"], 10).0, message(b".x\r\n"));
        assert_eq!(run(&[b"a\r\n...\r\n.\r\n"], 10).0, message(b"a\r\n..\r\n"));
        assert_eq!(run(&[b"a\r\n.b\r\n.\r\n"], 10).0, message(b"a\r\nb\r\n"));
    }

    #[test]
    fn bare_cr_and_bare_lf_are_refused_wherever_they_are() {
        let cases: &[&[u8]] = &[
            b"a\n.\n",
            b"a\r.\r",
            b"a\n.\r\n",
            b"a\r.\n",
            b"a\n.\r",
            b"a\r.\r\n",
            b"a\r\n.\n",
            b"a\r\n.\rx",
            b"a\r\n.\r\r\n",
            b"a\r\r\n.\r\r\n",
            b"\n",
            b"x\ry",
        ];
        for case in cases {
            assert_eq!(run(&[case], 100).0, DataEvent::BareLineEnding, "{case:?}");
        }
    }

    #[test]
    fn nul_is_flagged_at_the_end() {
        assert_eq!(run(&[b"a\r\n\0.\r\n.\r\n"], 100).0, DataEvent::End(DataOutcome::Nul));
        assert_eq!(run(&[b"a\r\n.\0\r\n.\r\n"], 100).0, DataEvent::End(DataOutcome::Nul));
    }

    #[test]
    fn kept_bytes_can_be_taken_out_as_they_grow() {
        let mut rx = DataReceiver::new(12);
        let mut input = BytesMut::from(&b"abc\r\n..d"[..]);
        assert_eq!(rx.ingest(&mut input), DataEvent::NeedMore);
        assert_eq!(rx.buffered(), 7);
        assert_eq!(rx.take_kept(), b"abc\r\n.d");
        assert_eq!(rx.buffered(), 0);
        input.extend_from_slice(b"ef\r\n.\r\n");
        assert_eq!(rx.ingest(&mut input), message(b"ef\r\n"));
        // The limit counts what was taken out too.
        let mut rx = DataReceiver::new(8);
        let mut input = BytesMut::from(&b"12345\r\n"[..]);
        rx.ingest(&mut input);
        rx.take_kept();
        input.extend_from_slice(b"6789\r\n.\r\n");
        assert_eq!(rx.ingest(&mut input), DataEvent::End(DataOutcome::TooBig));
    }

    #[test]
    fn oversize_data_is_read_to_its_end_but_not_kept() {
        let (event, rest) = run(&[b"0123456789\r\n", b"more\r\n.\r\nNOOP\r\n"], 8);
        assert_eq!(event, DataEvent::End(DataOutcome::TooBig));
        assert_eq!(rest, b"NOOP\r\n");
        // Exactly at the limit is fine.
        assert_eq!(run(&[b"1234\r\n.\r\n"], 6).0, message(b"1234\r\n"));
    }
}
