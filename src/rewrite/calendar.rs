//! The calendar part of one exploded copy (SPEC §11): the invite lists only the copy's own
//! recipient and the internal attendees (ORGANIZER and every other property kept), and goes
//! back into the transfer encoding it came in. Pure.
//!
//! Lines that are kept keep their bytes, folded as they were, unless a physical line is
//! longer than 75 octets: then the line is folded again at 75 octets (RFC 5545 §3.1), never
//! inside a UTF-8 sequence.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::message::address;
use crate::message::calendar::{CalendarPart, TransferEncoding, attendee, content_lines, decode, is_attendee};
use crate::message::decide::Policy;
use crate::message::parse::Mailbox;

/// A calendar part that every exploded copy rewrites (kept in the plan).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalendarRewrite {
    /// Where its encoded body starts in the stored message.
    pub start: u64,
    /// Where it ends.
    pub end: u64,
    /// Its transfer encoding.
    pub encoding: TransferEncoding,
    /// The internal ATTENDEEs, kept in every copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub internal: Vec<String>,
}

impl CalendarRewrite {
    /// The rewrites of `parts` (found at `offset` in the stored message) under `policy`.
    pub fn plan(parts: &[CalendarPart], offset: usize, policy: &Policy) -> Vec<CalendarRewrite> {
        parts
            .iter()
            .map(|p| CalendarRewrite {
                start: (p.range.start + offset) as u64,
                end: (p.range.end + offset) as u64,
                encoding: p.encoding,
                internal: p
                    .attendees
                    .iter()
                    .filter(|m| policy.is_internal(&m.address))
                    .map(|m| m.address.clone())
                    .collect(),
            })
            .collect()
    }

    /// This part as the copy to `recipient` has it, from its encoded bytes: only the
    /// internal ATTENDEEs and the recipient's own, in the same transfer encoding. A part that
    /// cannot be decoded loses every ATTENDEE line it may show: it becomes an empty object.
    pub fn for_recipient(&self, encoded: &[u8], recipient: &str) -> Vec<u8> {
        let own = address::key(recipient);
        let internal: Vec<_> = self.internal.iter().map(|a| address::key(a)).collect();
        let keep = |m: &Mailbox| {
            let k = address::key(&m.address);
            k == own || internal.contains(&k)
        };
        let text = decode(encoded, self.encoding).unwrap_or_default();
        encode(&filter(&text, keep), self.encoding, encoded.ends_with(b"\n"))
    }
}

/// Longest physical line of an iCalendar object, line end excluded (RFC 5545 §3.1).
pub const FOLD_AT: usize = 75;
/// Longest encoded line of base64 and quoted-printable (RFC 2045), line end excluded.
const ENCODED_LINE: usize = 76;

/// The decoded calendar object `text` with only the ATTENDEEs that `keep` accepts.
pub fn filter(text: &[u8], keep: impl Fn(&Mailbox) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for line in content_lines(text) {
        if is_attendee(&line.unfolded) && !attendee(&line.unfolded).is_some_and(|m| keep(&m)) {
            continue;
        }
        let too_long = line.raw.split(|&b| b == b'\n').any(|l| l.strip_suffix(b"\r").unwrap_or(l).len() > FOLD_AT);
        if too_long {
            fold(&line.unfolded, &mut out);
        } else {
            out.extend_from_slice(line.raw);
        }
    }
    out
}

/// Write `line` folded at [`FOLD_AT`] octets, with CRLF line ends.
pub fn fold(line: &[u8], out: &mut Vec<u8>) {
    let mut rest = line;
    let mut width = FOLD_AT;
    loop {
        let mut cut = rest.len().min(width);
        while cut < rest.len() && cut > 0 && (rest[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        if cut == 0 {
            // Not UTF-8 (nothing but continuation bytes): cut at the width all the same.
            cut = rest.len().min(width);
        }
        out.extend_from_slice(&rest[..cut]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[cut..];
        if rest.is_empty() {
            return;
        }
        out.push(b' ');
        width = FOLD_AT - 1;
    }
}

/// `decoded` in `encoding`; `line_end` says whether the encoded body ended with a line end
/// (kept so the MIME boundary that follows stays on its own line).
pub fn encode(decoded: &[u8], encoding: TransferEncoding, line_end: bool) -> Vec<u8> {
    let mut out = match encoding {
        TransferEncoding::Identity => decoded.to_vec(),
        TransferEncoding::Base64 => {
            let text = base64::engine::general_purpose::STANDARD.encode(decoded);
            let mut out = Vec::with_capacity(text.len() + text.len() / ENCODED_LINE * 2 + 2);
            for (i, chunk) in text.as_bytes().chunks(ENCODED_LINE).enumerate() {
                if i > 0 {
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(chunk);
            }
            out
        }
        TransferEncoding::QuotedPrintable => quoted_printable(decoded),
    };
    if line_end && !out.ends_with(b"\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Quoted-printable (RFC 2045 §6.7): CRLF stays a hard line break, lines are cut with soft
/// breaks before 76 octets, `=` and bytes outside printable ASCII are escaped, and so is a
/// space or tab at a line end.
fn quoted_printable(decoded: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(decoded.len() * 11 / 10 + 8);
    let lines: Vec<&[u8]> = decoded.split_inclusive(|&b| b == b'\n').collect();
    for raw in lines {
        let (line, hard) = match raw.strip_suffix(b"\r\n") {
            Some(l) => (l, true),
            None => (raw, false),
        };
        let mut width = 0;
        for (i, &b) in line.iter().enumerate() {
            let at_end = i + 1 == line.len();
            let literal = matches!(b, 33..=60 | 62..=126) || (matches!(b, b' ' | b'\t') && !at_end);
            let token: [u8; 3] = [b'=', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]];
            let token: &[u8] = if literal { std::slice::from_ref(&line[i]) } else { &token };
            if width + token.len() > ENCODED_LINE - 1 {
                out.extend_from_slice(b"=\r\n");
                width = 0;
            }
            out.extend_from_slice(token);
            width += token.len();
        }
        if hard {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::calendar::decode;

    #[test]
    fn quoted_printable_and_base64_round_trip() {
        let text = "BEGIN:VCALENDAR\r\nDESCRIPTION:Café = ☕ and a line that is long enough to need a soft break somewhere\r\nX: trailing \r\nEND:VCALENDAR\r\n";
        for enc in [TransferEncoding::QuotedPrintable, TransferEncoding::Base64, TransferEncoding::Identity] {
            let encoded = encode(text.as_bytes(), enc, true);
            let short = encoded.split(|&b| b == b'\n').all(|l| l.len() <= ENCODED_LINE + 1);
            assert!(short || enc == TransferEncoding::Identity, "{enc:?}");
            assert_eq!(decode(&encoded, enc).unwrap(), text.as_bytes(), "{enc:?}");
        }
    }

    #[test]
    fn a_long_line_is_folded_at_75_octets_outside_utf8_sequences() {
        let line = format!("DESCRIPTION:{}", "é".repeat(60));
        let mut out = Vec::new();
        fold(line.as_bytes(), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.split("\r\n").all(|l| l.len() <= FOLD_AT), "{text}");
        assert_eq!(text.replace("\r\n ", ""), format!("{line}\r\n"));
    }

    #[test]
    fn a_line_of_bytes_that_are_not_utf8_is_folded_too() {
        // Found by the fuzzer: 80 continuation bytes made the fold loop forever.
        let mut line = b"X:".to_vec();
        line.extend_from_slice(&[0x80; 160]);
        let mut out = Vec::new();
        fold(&line, &mut out);
        assert!(out.split(|&b| b == b'\n').all(|l| l.len() <= FOLD_AT + 1));
        let mut unfolded = line.clone();
        unfolded.extend_from_slice(b"\r\n");
        let joined: Vec<u8> =
            out.split(|&b| b == b'\n').map(|l| l.strip_prefix(b" ").unwrap_or(l)).collect::<Vec<_>>().join(&b'\n');
        assert_eq!(joined.iter().filter(|&&b| b != b'\r' && b != b'\n').count(), line.len());
    }
}
