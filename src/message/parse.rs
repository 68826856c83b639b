//! The header block of a message, as the leak decision and the rewriter need it: where each
//! address field lies (byte ranges into the original), and the addresses it shows.
//!
//! mail-parser is lenient, so what it returns is checked: every address must be a valid
//! address, a name-only entry is malformed, and every `@` in the raw field must be accounted
//! for by a parsed address or name. A field that fails is *unparseable*, which the decision
//! treats as exposing, never as safe. Addresses written inside display names and comments
//! (`"john@evil.test" <john@good.test>`) are visible too, so they count.

use std::ops::Range;

use mail_parser::{Address, HeaderValue, MessageParser};
use serde::{Deserialize, Serialize};

use super::address;

/// Largest header block bccguard parses (about 300,000 visible addresses).
pub const MAX_HEADER_BLOCK: usize = 8 * 1024 * 1024;

/// The header fields bccguard reads or rewrites.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FieldKind {
    /// `To:`
    To,
    /// `Cc:`
    Cc,
    /// `Bcc:`
    Bcc,
    /// `Resent-To:`
    ResentTo,
    /// `Resent-Cc:`
    ResentCc,
    /// `Resent-Bcc:`
    ResentBcc,
    /// `X-Bccguard:`, the mark of a copy this relay made.
    Mark,
    /// `Reply-To:` (SPEC §11: counts when it shows two or more external addresses).
    ReplyTo,
    /// `Mail-Followup-To:`.
    MailFollowupTo,
    /// `Resent-Reply-To:`.
    ResentReplyTo,
    /// A line in the header block that is not a field (no colon) but shows an address.
    Stray,
}

impl FieldKind {
    /// The field name as bccguard writes it.
    pub fn name(self) -> &'static str {
        match self {
            FieldKind::To => "To",
            FieldKind::Cc => "Cc",
            FieldKind::Bcc => "Bcc",
            FieldKind::ResentTo => "Resent-To",
            FieldKind::ResentCc => "Resent-Cc",
            FieldKind::ResentBcc => "Resent-Bcc",
            FieldKind::Mark => "X-Bccguard",
            FieldKind::ReplyTo => "Reply-To",
            FieldKind::MailFollowupTo => "Mail-Followup-To",
            FieldKind::ResentReplyTo => "Resent-Reply-To",
            FieldKind::Stray => "a line that is not a header field",
        }
    }

    /// Whether this is one of the Resent-* fields.
    pub fn is_resent(self) -> bool {
        matches!(self, FieldKind::ResentTo | FieldKind::ResentCc | FieldKind::ResentBcc)
    }

    /// Whether this is a reply field (Reply-To, Mail-Followup-To, Resent-Reply-To): not a
    /// recipient field, but shown to every recipient, and where reply-all writes.
    pub fn is_reply(self) -> bool {
        matches!(self, FieldKind::ReplyTo | FieldKind::MailFollowupTo | FieldKind::ResentReplyTo)
    }

    /// The kind of a field by its name: case-insensitive, and blind to spaces and tabs in the
    /// name (`B cc:`, `To :`), as lenient readers are.
    fn of(name: &[u8]) -> Option<FieldKind> {
        // The longest name known is 16 bytes: a longer one is none of them (no allocation:
        // this runs for every field of every message).
        let mut buf = [0u8; 16];
        let mut len = 0;
        for &b in name.iter().filter(|b| !matches!(b, b' ' | b'\t')) {
            *buf.get_mut(len)? = b.to_ascii_lowercase();
            len += 1;
        }
        Some(match &buf[..len] {
            b"to" => FieldKind::To,
            b"cc" => FieldKind::Cc,
            b"bcc" => FieldKind::Bcc,
            b"resent-to" => FieldKind::ResentTo,
            b"resent-cc" => FieldKind::ResentCc,
            b"resent-bcc" => FieldKind::ResentBcc,
            b"x-bccguard" => FieldKind::Mark,
            b"reply-to" => FieldKind::ReplyTo,
            b"mail-followup-to" => FieldKind::MailFollowupTo,
            b"resent-reply-to" => FieldKind::ResentReplyTo,
            _ => return None,
        })
    }
}

/// A visible address with the display name the header gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    /// The decoded display name, if any (never written back as it is: see `rewrite`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The canonical address.
    pub address: String,
}

/// One address field of the header block.
#[derive(Clone, Debug)]
pub struct Field {
    /// Which field.
    pub kind: FieldKind,
    /// Its bytes in the message, name through the CRLF after the last continuation line.
    pub range: Range<usize>,
    /// The addresses it shows, in order.
    pub mailboxes: Vec<Mailbox>,
    /// True when the field could not be fully parsed.
    pub unparseable: bool,
}

/// The header block of a message.
#[derive(Clone, Debug)]
pub struct Headers {
    /// The address fields (and the mark), in header order.
    pub fields: Vec<Field>,
    /// Where the header block ends: the start of the empty line, or of the body when there
    /// is none.
    pub header_end: usize,
    /// Where the body starts (after the empty line).
    pub body_start: usize,
    /// The value of an `X-Bccguard:` field, lowercased and trimmed, if present.
    pub mark: Option<String>,
    /// The ATTENDEEs of the calendar parts in the body: not in the header block, so empty
    /// until the intake reads the body ([`super::calendar`]). They count as visible.
    pub attendees: Vec<Mailbox>,
}

/// Why a header block was not parsed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Over [`MAX_HEADER_BLOCK`].
    #[error("the header block is larger than {MAX_HEADER_BLOCK} bytes")]
    TooLarge,
}

impl Headers {
    /// Parse the header block of `message` (CRLF line ends).
    ///
    /// bccguard splits the block into fields itself, as RFC 5322 says (a field begins on a
    /// line that does not start with a space or tab; the block ends at the first empty line),
    /// and has mail-parser read each address field's value alone: no field can hide another
    /// (mail-parser, reading a whole block, lets a `Date:` with a one-letter zone swallow the
    /// next line, and ends the block early at some malformed lines).
    pub fn parse(message: &[u8]) -> Result<Headers, ParseError> {
        Self::split(message, true)
    }

    /// The fields and their kinds, without reading the addresses in them (every `mailboxes`
    /// is empty): what rewriting a copy needs, when the decision and the plan are already
    /// made. A `To:` showing 100,000 addresses costs its bytes, not 100,000 parsed mailboxes.
    pub fn parse_layout(message: &[u8]) -> Result<Headers, ParseError> {
        Self::split(message, false)
    }

    fn split(message: &[u8], addresses: bool) -> Result<Headers, ParseError> {
        let (header_end, body_start) = header_bounds(message);
        if body_start > MAX_HEADER_BLOCK {
            return Err(ParseError::TooLarge);
        }
        let mut fields = Vec::new();
        let mut mark = None;
        for raw in split_fields(&message[..header_end]) {
            let value = &message[raw.value.clone()];
            let (kind, mailboxes, unparseable) = match raw.name.map(|n| FieldKind::of(&message[n])) {
                Some(Some(FieldKind::Mark)) => {
                    mark.get_or_insert_with(|| String::from_utf8_lossy(value).trim().to_lowercase());
                    (FieldKind::Mark, Vec::new(), false)
                }
                Some(Some(kind)) if addresses => {
                    let (mailboxes, unparseable) = parse_address_value(value);
                    (kind, mailboxes, unparseable)
                }
                Some(Some(kind)) => (kind, Vec::new(), false),
                Some(None) => continue,
                // Not a field at all, yet it shows an address: count it, never trust it.
                None if !addresses && value.contains(&b'@') => (FieldKind::Stray, Vec::new(), true),
                None if value.contains(&b'@') => {
                    let text = String::from_utf8_lossy(value);
                    let mailboxes = addresses_in_text(&text).map(|address| Mailbox { name: None, address }).collect();
                    (FieldKind::Stray, mailboxes, true)
                }
                None => continue,
            };
            fields.push(Field { kind, range: raw.range, mailboxes, unparseable });
        }
        Ok(Headers { fields, header_end, body_start, mark, attendees: Vec::new() })
    }

    /// Fields of one kind.
    pub fn of_kind(&self, kind: FieldKind) -> impl Iterator<Item = &Field> {
        self.fields.iter().filter(move |f| f.kind == kind)
    }

    /// Every visible address (To, Cc, Bcc, Resent-*, and stray lines), in header order; reply
    /// fields are not recipient fields and are left out.
    pub fn visible(&self) -> impl Iterator<Item = &Mailbox> {
        self.fields.iter().filter(|f| !f.kind.is_reply()).flat_map(|f| f.mailboxes.iter())
    }

    /// Whether this message carries the mark of a copy bccguard made.
    pub fn already_processed(&self) -> bool {
        self.mark.as_deref().is_some_and(|m| m.starts_with("exploded") || m.starts_with("undisclosed"))
    }
}

/// (start of the empty line, start of the body); both the message length when there is no
/// empty line. Bare LF cannot occur: the front door refuses it.
pub(crate) fn header_bounds(message: &[u8]) -> (usize, usize) {
    if message.starts_with(b"\r\n") {
        return (0, 2);
    }
    match memchr::memmem::find(message, b"\r\n\r\n") {
        Some(i) => (i + 2, i + 4),
        None => (message.len(), message.len()),
    }
}

/// One field of a header block, as RFC 5322 delimits it.
pub(crate) struct RawField {
    /// The whole field: name through the line end after its last continuation line.
    pub(crate) range: Range<usize>,
    /// The field name (before the colon); `None` for a line that is not a field.
    pub(crate) name: Option<Range<usize>>,
    /// The value (after the colon), line ends included.
    pub(crate) value: Range<usize>,
}

/// Split a header block (without its empty line) into fields.
pub(crate) fn split_fields(block: &[u8]) -> Vec<RawField> {
    let line_end = |from: usize| memchr::memchr(b'\n', &block[from..]).map_or(block.len(), |i| from + i + 1);
    let mut fields = Vec::with_capacity(32);
    let mut pos = 0;
    while pos < block.len() {
        let start = pos;
        let first_line = line_end(start);
        pos = first_line;
        while pos < block.len() && matches!(block[pos], b' ' | b'\t') {
            pos = line_end(pos);
        }
        let field = match memchr::memchr(b':', &block[start..first_line]) {
            Some(colon) => {
                RawField { range: start..pos, name: Some(start..start + colon), value: start + colon + 1..pos }
            }
            None => RawField { range: start..pos, name: None, value: start..pos },
        };
        fields.push(field);
    }
    fields
}

/// The mailboxes of one address field's value, parsed alone, and whether it is unparseable.
pub(super) fn parse_address_value(value: &[u8]) -> (Vec<Mailbox>, bool) {
    let mut alone = Vec::with_capacity(value.len() + 8);
    alone.extend_from_slice(b"To:");
    alone.extend_from_slice(value);
    if !alone.ends_with(b"\n") {
        alone.extend_from_slice(b"\r\n");
    }
    alone.extend_from_slice(b"\r\n");
    let parsed = MessageParser::new().parse(&alone);
    match parsed.as_ref().and_then(|m| m.parts.first()).and_then(|p| p.headers.first()) {
        Some(header) => read_addresses(&header.value, value),
        None => (Vec::new(), value.contains(&b'@')),
    }
}

/// The mailboxes of an address field, and whether it is unparseable.
fn read_addresses(value: &HeaderValue<'_>, raw: &[u8]) -> (Vec<Mailbox>, bool) {
    let mut c = Collector::default();
    match value {
        HeaderValue::Address(Address::List(list)) => {
            for a in list {
                c.take(a.name.as_deref(), a.address.as_deref());
            }
        }
        HeaderValue::Address(Address::Group(groups)) => {
            for g in groups {
                if let Some(name) = g.name.as_deref() {
                    // A group's name is shown too: an address written there is visible.
                    c.accounted += count_at(name);
                    c.mailboxes.extend(addresses_in_text(name).map(|address| Mailbox { name: None, address }));
                }
                for a in &g.addresses {
                    c.take(a.name.as_deref(), a.address.as_deref());
                }
            }
        }
        HeaderValue::Empty => {}
        _ => c.malformed = true,
    }
    let unaccounted = count_at(&String::from_utf8_lossy(raw)) > c.accounted;
    (c.mailboxes, c.malformed || unaccounted)
}

/// Gathers the mailboxes of one field and counts the `@` signs they account for.
#[derive(Default)]
struct Collector {
    mailboxes: Vec<Mailbox>,
    malformed: bool,
    accounted: usize,
}

impl Collector {
    fn take(&mut self, name: Option<&str>, addr: Option<&str>) {
        self.accounted += name.map_or(0, count_at) + addr.map_or(0, count_at);
        let name = name.filter(|n| !n.trim().is_empty());
        match (addr.and_then(address::from_header), addr, name) {
            (Some(address), _, name) => self.mailboxes.push(Mailbox { name: name.map(str::to_string), address }),
            (None, Some(_), _) | (None, None, Some(_)) => self.malformed = true,
            (None, None, None) => {}
        }
        // An address written in a display name or comment is visible too.
        for address in name.into_iter().flat_map(addresses_in_text) {
            self.mailboxes.push(Mailbox { name: None, address });
        }
    }
}

/// The addresses written in free text, such as a display name.
pub fn addresses_in_text(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(is_separator).filter(|t| t.contains('@')).filter_map(address::from_header)
}

impl Mailbox {
    /// This mailbox with its display name dropped if the name shows another address, so a
    /// rewritten copy can never show an address through a name.
    pub fn without_foreign_name(&self) -> Mailbox {
        let own = address::key(&self.address);
        let name = self.name.as_deref().filter(|n| addresses_in_text(n).all(|a| address::key(&a) == own));
        Mailbox { name: name.map(str::to_string), address: self.address.clone() }
    }
}

fn is_separator(c: char) -> bool {
    c.is_whitespace() || c.is_control() || "<>()[]\",;:'".contains(c)
}

fn count_at(s: &str) -> usize {
    s.bytes().filter(|&b| b == b'@').count()
}

/// LF or CR line ends (as files on disk often have) become CRLF, as a mailer would send them
/// and as DATA arrives (`bccguard check`, the fuzz targets).
pub fn to_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests;
