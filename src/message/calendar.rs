//! Calendar invites in a message body (SPEC §11): the text/calendar and application/ics parts
//! at any depth of the MIME tree, in any transfer encoding, and the ATTENDEEs they show.
//! Pure: bytes in, parts and addresses out. Each part is located by its encoded bytes in the
//! message, so a copy can replace just that span and share every other byte of the body.

use std::ops::Range;

use mail_parser::decoders::base64::base64_decode;
use mail_parser::decoders::quoted_printable::quoted_printable_decode;
use mail_parser::{Encoding, MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};

use super::address;
use super::parse::Mailbox;

/// The transfer encoding of a calendar part, kept when it is rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferEncoding {
    /// 7bit, 8bit, binary, or none given.
    Identity,
    /// base64.
    Base64,
    /// quoted-printable.
    QuotedPrintable,
}

/// One calendar part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalendarPart {
    /// Its encoded body bytes in the message.
    pub range: Range<usize>,
    /// Its transfer encoding.
    pub encoding: TransferEncoding,
    /// The ATTENDEE addresses it lists, with their CN as display name, in order.
    pub attendees: Vec<Mailbox>,
}

/// Why a part could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// Its base64 or quoted-printable is broken.
    #[error("a calendar part cannot be decoded")]
    Undecodable,
}

/// Whether `bytes` may hold a calendar part: it names `text/calendar` or `application/ics`
/// (any case). A cheap test before parsing the MIME tree; no allocation.
pub fn may_have_calendar(bytes: &[u8]) -> bool {
    let is =
        |range: std::ops::Range<usize>, word: &[u8]| bytes.get(range).is_some_and(|b| b.eq_ignore_ascii_case(word));
    memchr::memchr_iter(b'/', bytes).any(|i| {
        (i >= 4 && is(i - 4..i, b"text") && is(i + 1..i + 9, b"calendar"))
            || (i >= 11 && is(i - 11..i, b"application") && is(i + 1..i + 4, b"ics"))
    })
}

/// The calendar parts of `message` (a whole message, CRLF line ends).
pub fn parts(message: &[u8]) -> Vec<CalendarPart> {
    if !may_have_calendar(message) {
        return Vec::new();
    }
    let Some(parsed) = MessageParser::new().parse(message) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for part in &parsed.parts {
        let is_calendar = part.content_type().is_some_and(|ct| {
            let sub = ct.subtype().unwrap_or_default();
            (ct.ctype().eq_ignore_ascii_case("text") && sub.eq_ignore_ascii_case("calendar"))
                || (ct.ctype().eq_ignore_ascii_case("application") && sub.eq_ignore_ascii_case("ics"))
        });
        if !is_calendar {
            continue;
        }
        let range = part.offset_body as usize..(part.offset_end as usize).min(message.len());
        let encoding = match part.encoding {
            Encoding::None => TransferEncoding::Identity,
            Encoding::Base64 => TransferEncoding::Base64,
            Encoding::QuotedPrintable => TransferEncoding::QuotedPrintable,
        };
        let attendees = decode(&message[range.clone()], encoding).map(|t| attendees(&t)).unwrap_or_default();
        found.push(CalendarPart { range, encoding, attendees });
    }
    found
}

/// The decoded bytes of a part's encoded body.
pub fn decode(encoded: &[u8], encoding: TransferEncoding) -> Result<Vec<u8>, CalendarError> {
    match encoding {
        TransferEncoding::Identity => Ok(encoded.to_vec()),
        TransferEncoding::Base64 => base64_decode(encoded).ok_or(CalendarError::Undecodable),
        TransferEncoding::QuotedPrintable => quoted_printable_decode(encoded).ok_or(CalendarError::Undecodable),
    }
}

/// One content line of an iCalendar object: its raw (folded) bytes, line end included.
#[derive(Debug)]
pub struct ContentLine<'a> {
    /// The raw bytes, folded as written, with the line end.
    pub raw: &'a [u8],
    /// The unfolded line (RFC 5545 §3.1), without the line end.
    pub unfolded: Vec<u8>,
}

/// The content lines of `text`, unfolded: a line starting with a space or a tab continues
/// the one before (the space or tab dropped).
pub fn content_lines(text: &[u8]) -> Vec<ContentLine<'_>> {
    let mut lines: Vec<ContentLine<'_>> = Vec::new();
    let mut start = 0;
    let mut pos = 0;
    while pos < text.len() {
        let end = memchr::memchr(b'\n', &text[pos..]).map_or(text.len(), |i| pos + i + 1);
        let physical = &text[pos..end];
        let body = physical.strip_suffix(b"\n").map(|b| b.strip_suffix(b"\r").unwrap_or(b)).unwrap_or(physical);
        match lines.last_mut() {
            Some(last) if matches!(physical.first(), Some(b' ' | b'\t')) => {
                last.unfolded.extend_from_slice(&body[1..]);
                last.raw = &text[start..end];
            }
            _ => {
                start = pos;
                lines.push(ContentLine { raw: physical, unfolded: body.to_vec() });
            }
        }
        pos = end;
    }
    lines
}

/// The property name of an unfolded content line, uppercase.
fn property_name(line: &[u8]) -> String {
    let end = line.iter().position(|&b| b == b';' || b == b':').unwrap_or(line.len());
    String::from_utf8_lossy(&line[..end]).trim().to_ascii_uppercase()
}

/// The parameters and value of an unfolded content line (`;` and `:` inside double quotes
/// do not count).
fn params_and_value(line: &[u8]) -> (Vec<(String, String)>, String) {
    let text = String::from_utf8_lossy(line);
    let (mut params, mut quoted, mut start) = (Vec::new(), false, 0);
    let cut = |from: usize, to: usize, params: &mut Vec<(String, String)>| {
        if from > 0 {
            let p = &text[from..to];
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            params.push((k.trim().to_ascii_uppercase(), v.trim().trim_matches('"').to_string()));
        }
    };
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' | ':' if !quoted => {
                cut(start, i, &mut params);
                if c == ':' {
                    return (params, text[i + 1..].to_string());
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    (params, String::new())
}

/// The address of an ATTENDEE (or ORGANIZER) line: its `mailto:` value (any case), and its
/// CN as the display name.
pub fn attendee(line: &[u8]) -> Option<Mailbox> {
    let (params, value) = params_and_value(line);
    let value = value.trim();
    let addr = value.get(..7).filter(|p| p.eq_ignore_ascii_case("mailto:")).map(|_| &value[7..])?;
    let address = address::from_header(addr.trim())?;
    let name = params.into_iter().find(|(k, _)| k == "CN").map(|(_, v)| v).filter(|v| !v.is_empty());
    Some(Mailbox { name, address })
}

/// The ATTENDEE addresses of a decoded calendar object, in order.
pub fn attendees(text: &[u8]) -> Vec<Mailbox> {
    content_lines(text)
        .iter()
        .filter(|l| property_name(&l.unfolded) == "ATTENDEE")
        .filter_map(|l| attendee(&l.unfolded))
        .collect()
}

/// Whether an unfolded content line is an ATTENDEE property.
pub fn is_attendee(line: &[u8]) -> bool {
    property_name(line) == "ATTENDEE"
}

#[cfg(test)]
mod tests;
