//! The broadcast signals of SPEC §9 (pure): what a message shows about being a conversation
//! or a broadcast, computed once per message with the parse, logged with every decision,
//! shown by `check`, counted in metrics, and usable as rule conditions.

use std::collections::HashSet;
use std::ops::Range;

use mail_parser::{MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};

use super::address;
use super::domain::InternalDomains;
use super::parse::{FieldKind, Headers, parse_address_value, split_fields};
use crate::addresses::Addresses;

/// Fewest external addresses in strictly ascending order, in one field, that look like a
/// list pasted from a database export.
pub const SORTED_MIN: usize = 7;

/// The header fields of a message by name, read where they lie: what rule `headers` globs and
/// the signals read. Values are unfolded when asked for, so a `To:` showing 100,000 addresses
/// costs a range here, not a copy.
#[derive(Clone, Debug, Default)]
pub struct HeaderFields<'a> {
    block: &'a [u8],
    /// (name range, value range in `block`), in header order; the name without the white
    /// space around it.
    fields: Vec<(Range<usize>, Range<usize>)>,
}

impl<'a> HeaderFields<'a> {
    /// The fields of the header block that starts `head` (more bytes after it are ignored).
    pub fn parse(head: &'a [u8]) -> HeaderFields<'a> {
        let end = memchr::memmem::find(head, b"\r\n\r\n").map_or(head.len(), |i| i + 2);
        let block = if head.starts_with(b"\r\n") { &head[..0] } else { &head[..end] };
        let fields = split_fields(block)
            .into_iter()
            .filter_map(|raw| {
                let name = raw.name?;
                let trimmed = block[name.clone()].trim_ascii_start();
                let start = name.end - trimmed.len();
                Some((start..start + trimmed.trim_ascii_end().len(), raw.value))
            })
            .collect();
        HeaderFields { block, fields }
    }

    /// The value ranges of the fields called `name` (case-insensitive), in order.
    fn ranges<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s [u8]> + 's {
        self.fields
            .iter()
            .filter(move |(n, _)| self.block[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| &self.block[value.clone()])
    }

    /// The values of the fields called `name` (case-insensitive), unfolded and trimmed, in
    /// order.
    pub fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = String> + 's {
        self.ranges(name).map(unfolded)
    }

    /// Whether a field called `name` is present with a value that is not blank.
    pub fn has(&self, name: &str) -> bool {
        self.ranges(name).any(|value| {
            // A printable ASCII byte survives unfolding and trimming; anything else is decided
            // as `values` decides it.
            value.iter().any(|b| b.is_ascii_graphic()) || !unfolded(value).is_empty()
        })
    }

    /// The domain of the first address in `From:`, in ASCII lowercase (IDN as punycode).
    pub fn from_domain(&self) -> Option<String> {
        let value = self.values("from").next()?;
        let (mailboxes, _) = parse_address_value(value.as_bytes());
        mailboxes.first().map(|m| address::domain_key(&m.address))
    }
}

/// A field value unfolded (its line breaks taken out) and trimmed.
fn unfolded(value: &[u8]) -> String {
    String::from_utf8_lossy(value).replace(['\r', '\n'], "").trim().to_string()
}

/// The broadcast signals of one message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signals {
    /// In-Reply-To or References present.
    pub reply: bool,
    /// List-Id, List-Unsubscribe, `Precedence: bulk|list|junk`, or Auto-Submitted other than
    /// `no`.
    pub bulk: bool,
    /// One address field shows at least 7 external addresses in strictly ascending order.
    pub sorted_recipients: bool,
    /// The visible external addresses and the external envelope recipients are the same
    /// (non-empty) set.
    pub header_matches_envelope: bool,
    /// A text/calendar part is present.
    pub calendar: bool,
    /// Distinct external ATTENDEEs of the calendar parts.
    pub attendees: usize,
    /// Distinct domains among the visible external addresses.
    pub external_domains: usize,
}

impl Signals {
    /// The signals of a message: its header fields and parsed header block, the whole message
    /// when it is at hand (`None`: only the header block is read, so a calendar part is seen
    /// only when it is the whole message), its envelope recipients, and the policy's internal
    /// domains.
    pub fn compute(
        fields: &HeaderFields,
        headers: &Headers,
        message: Option<&[u8]>,
        recipients: &Addresses,
        internal: &InternalDomains,
    ) -> Signals {
        let (calendar, attendees) = calendar(fields, message, internal);
        Signals {
            reply: fields.has("in-reply-to") || fields.has("references"),
            bulk: bulk(fields),
            sorted_recipients: sorted(headers, internal),
            header_matches_envelope: matches_envelope(headers, recipients, internal),
            calendar,
            attendees,
            external_domains: external_domains(headers, internal),
        }
    }

    /// The boolean signals, by name.
    pub fn flags(&self) -> [(&'static str, bool); 5] {
        [
            ("reply", self.reply),
            ("bulk", self.bulk),
            ("sorted_recipients", self.sorted_recipients),
            ("header_matches_envelope", self.header_matches_envelope),
            ("calendar", self.calendar),
        ]
    }

    /// The signals seen, in words: `reply`, `bulk`, ..., `attendees=3`, `external_domains=2`.
    pub fn seen(&self) -> Vec<String> {
        let mut seen: Vec<String> = self.flags().iter().filter(|(_, on)| *on).map(|(n, _)| n.to_string()).collect();
        if self.attendees > 0 {
            seen.push(format!("attendees={}", self.attendees));
        }
        seen.push(format!("external_domains={}", self.external_domains));
        seen
    }
}

/// List-Id, List-Unsubscribe, Precedence bulk/list/junk, Auto-Submitted other than `no`.
fn bulk(fields: &HeaderFields) -> bool {
    let first_word = |v: &str| v.split([';', ' ', '\t', '(']).next().unwrap_or_default().to_ascii_lowercase();
    fields.has("list-id")
        || fields.has("list-unsubscribe")
        || fields.values("precedence").any(|v| matches!(first_word(&v).as_str(), "bulk" | "list" | "junk"))
        || fields.values("auto-submitted").any(|v| !v.is_empty() && first_word(&v) != "no")
}

/// One address field with at least [`SORTED_MIN`] external addresses, all in strictly
/// ascending order (compared case-insensitively; a repeated address breaks the order).
fn sorted(headers: &Headers, internal: &InternalDomains) -> bool {
    headers.fields.iter().filter(|f| f.kind != FieldKind::Mark).any(|f| {
        let external: Vec<String> = f
            .mailboxes
            .iter()
            .filter(|m| !address::is_internal(internal, &m.address))
            .map(|m| m.address.to_lowercase())
            .collect();
        external.len() >= SORTED_MIN && external.windows(2).all(|w| w[0] < w[1])
    })
}

/// The visible external addresses are exactly the external envelope recipients.
fn matches_envelope(headers: &Headers, recipients: &Addresses, internal: &InternalDomains) -> bool {
    let visible: HashSet<_> = headers
        .visible()
        .filter(|m| !address::is_internal(internal, &m.address))
        .map(|m| address::key(&m.address))
        .collect();
    let envelope: HashSet<_> =
        recipients.iter().filter(|r| !address::is_internal(internal, r)).map(address::key).collect();
    !visible.is_empty() && visible == envelope
}

fn external_domains(headers: &Headers, internal: &InternalDomains) -> usize {
    let domains: HashSet<String> = headers
        .visible()
        .filter(|m| !address::is_internal(internal, &m.address))
        .map(|m| address::domain_key(&m.address))
        .collect();
    domains.len()
}

/// Whether a text/calendar part is present, and its distinct external attendees.
fn calendar(fields: &HeaderFields, message: Option<&[u8]>, internal: &InternalDomains) -> (bool, usize) {
    let content_type = fields.values("content-type").next().unwrap_or_default().to_ascii_lowercase();
    let top_is_calendar = content_type.starts_with("text/calendar");
    // Only a calendar message or a multipart one can hold a calendar part.
    let Some(message) = message.filter(|_| top_is_calendar || content_type.starts_with("multipart/")) else {
        return (top_is_calendar, 0);
    };
    let Some(parsed) = MessageParser::new().parse(message) else {
        return (top_is_calendar, 0);
    };
    let mut found = false;
    let mut attendees = HashSet::new();
    for part in &parsed.parts {
        let is_calendar = part.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("text") && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("calendar"))
        });
        if is_calendar {
            found = true;
            let text = String::from_utf8_lossy(part.contents());
            for a in attendee_addresses(&text).filter(|a| !address::is_internal(internal, a)) {
                attendees.insert(address::key(&a));
            }
        }
    }
    (found || top_is_calendar, attendees.len())
}

/// The `mailto:` addresses of the ATTENDEE lines of an iCalendar text (folded lines joined).
pub fn attendee_addresses(text: &str) -> impl Iterator<Item = String> + '_ {
    let unfolded = text.replace("\r\n ", "").replace("\r\n\t", "").replace("\n ", "").replace("\n\t", "");
    let lines: Vec<String> = unfolded.lines().map(str::to_string).collect();
    lines.into_iter().filter_map(|line| {
        let upper = line.to_ascii_uppercase();
        if !(upper.starts_with("ATTENDEE;") || upper.starts_with("ATTENDEE:")) {
            return None;
        }
        let at = upper.rfind("MAILTO:")?;
        address::canonical(line[at + 7..].trim())
    })
}

#[cfg(test)]
mod tests;
