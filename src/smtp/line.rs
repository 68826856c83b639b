//! Command-line framing: one CRLF-terminated line at a time, with a length limit, refusing
//! bare CR and bare LF (smtp-proto itself would accept a bare LF and drop a bare CR).

use bytes::{Buf, BytesMut};

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4).
pub const MAX_COMMAND_LINE: usize = 512;
/// Longest AUTH command or SASL response line (RFC 4954 §4).
pub const MAX_AUTH_LINE: usize = 12288;

/// The next line in the input, if a whole one has arrived.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// No complete line yet.
    Incomplete,
    /// A complete line, CRLF included.
    Complete(BytesMut),
    /// A line over the limit, consumed through its LF.
    TooLong,
    /// The limit passed without an LF: the input was dropped; call [`skip_long_line`] next.
    Overflow,
    /// A bare CR or LF; the input is left as it was.
    BareLineEnding,
}

/// Take the next line from `input`, allowing `limit` octets including CRLF.
pub fn take_line(input: &mut BytesMut, limit: usize) -> Line {
    let Some(lf) = memchr::memchr(b'\n', input) else {
        if input.len() > limit {
            input.clear();
            return Line::Overflow;
        }
        return bare_cr_check(input, input.len(), Line::Incomplete);
    };
    if lf + 1 > limit {
        input.advance(lf + 1);
        return Line::TooLong;
    }
    if lf == 0 || input[lf - 1] != b'\r' {
        return Line::BareLineEnding;
    }
    match bare_cr_check(input, lf - 1, Line::Incomplete) {
        Line::BareLineEnding => Line::BareLineEnding,
        _ => Line::Complete(input.split_to(lf + 1)),
    }
}

/// Report a CR in `input[..end]` (a CR not followed by LF), else `otherwise`.
fn bare_cr_check(input: &[u8], end: usize, otherwise: Line) -> Line {
    // A CR as the very last byte received may still be followed by LF.
    let end = if end == input.len() && input.last() == Some(&b'\r') { end - 1 } else { end };
    if memchr::memchr(b'\r', &input[..end]).is_some() { Line::BareLineEnding } else { otherwise }
}

/// While discarding an overlong line: drop input through the next LF. True once it is found.
pub fn skip_long_line(input: &mut BytesMut) -> bool {
    match memchr::memchr(b'\n', input) {
        Some(lf) => {
            input.advance(lf + 1);
            true
        }
        None => {
            input.clear();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(bytes: &[u8], limit: usize) -> (Line, Vec<u8>) {
        let mut input = BytesMut::from(bytes);
        let line = take_line(&mut input, limit);
        (line, input.to_vec())
    }

    #[test]
    fn complete_lines_are_split_off() {
        let (line, rest) = take(b"NOOP\r\nQUIT\r\n", 512);
        assert_eq!(line, Line::Complete(BytesMut::from(&b"NOOP\r\n"[..])));
        assert_eq!(rest, b"QUIT\r\n");
        assert_eq!(take(b"NOO", 512).0, Line::Incomplete);
        assert_eq!(take(b"NOOP\r", 512).0, Line::Incomplete);
    }

    #[test]
    fn bare_line_endings_are_refused() {
        for bad in [&b"NOOP\n"[..], b"\n", b"NO\rOP\r\n", b"NO\rOP", b"\r\rX"] {
            assert_eq!(take(bad, 512).0, Line::BareLineEnding, "{bad:?}");
        }
    }

    #[test]
    fn the_limit_counts_the_crlf() {
        let mut ok = vec![b'x'; 510];
        ok.extend_from_slice(b"\r\n");
        assert!(matches!(take(&ok, 512).0, Line::Complete(_)));
        let mut long = vec![b'x'; 511];
        long.extend_from_slice(b"\r\nNOOP\r\n");
        assert_eq!(take(&long, 512), (Line::TooLong, b"NOOP\r\n".to_vec()));
        assert_eq!(take(&[b'x'; 600], 512), (Line::Overflow, Vec::new()));
    }
}
