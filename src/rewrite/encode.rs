//! Header text built from parsed values: display names re-encoded (RFC 2047) when they are not
//! plain atoms, control characters dropped, fields folded at 78 columns. Nothing decoded from
//! the original header is ever copied out as it was.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::message::parse::Mailbox;

/// Fold lines at this width when there is a place to fold (RFC 5322 §2.1.1).
const FOLD_AT: usize = 78;
/// Longest display name written as a quoted string or atoms; longer ones are encoded words,
/// which can be folded.
const MAX_PLAIN_NAME: usize = 60;
/// Bytes of name per encoded word: 45 bytes are 60 base64 characters, 72 with the framing.
const ENCODED_CHUNK: usize = 45;

/// A header field `name: items`, items separated by commas, folded, CRLF-terminated. Each item
/// is a list of tokens that may be separated by folding white space.
pub fn field(name: &str, items: &[Vec<String>]) -> String {
    let mut out = format!("{name}:");
    let mut line = out.len();
    for (i, item) in items.iter().enumerate() {
        for (j, token) in item.iter().enumerate() {
            let comma = if j + 1 == item.len() && i + 1 < items.len() { "," } else { "" };
            let width = token.len() + comma.len();
            if line + 1 + width > FOLD_AT && line > name.len() + 1 {
                out.push_str("\r\n ");
                line = 1;
            } else {
                out.push(' ');
                line += 1;
            }
            out.push_str(token);
            out.push_str(comma);
            line += width;
        }
    }
    out.push_str("\r\n");
    out
}

/// The tokens of one mailbox: the display name (if any, re-encoded) and the address.
pub fn mailbox(m: &Mailbox) -> Vec<String> {
    match m.name.as_deref().map(clean_name).filter(|n| !n.is_empty()) {
        // A quoted local part is unambiguous only inside angle brackets.
        None if m.address.starts_with('"') => vec![format!("<{}>", m.address)],
        None => vec![m.address.clone()],
        Some(name) => {
            let mut tokens = phrase(&name);
            tokens.push(format!("<{}>", m.address));
            tokens
        }
    }
}

/// Control characters (CR, LF, NUL, TAB, ...) become spaces; runs of space collapse.
fn clean_name(name: &str) -> String {
    let spaced: String = name.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A display name as RFC 5322 phrase tokens: plain atoms, one quoted string, or encoded
/// words. Text that looks like an encoded word is itself encoded, so it cannot be decoded
/// into something else later.
fn phrase(name: &str) -> Vec<String> {
    let plain = name.is_ascii() && name.len() <= MAX_PLAIN_NAME && !name.contains("=?");
    if plain && name.split(' ').all(|w| !w.is_empty() && w.chars().all(is_atext)) {
        name.split(' ').map(str::to_string).collect()
    } else if plain {
        vec![format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))]
    } else {
        encoded_words(name)
    }
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// `=?UTF-8?B?...?=` words of at most 45 bytes of text each, split between characters.
fn encoded_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + ENCODED_CHUNK).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        words.push(format!("=?UTF-8?B?{}?=", BASE64.encode(&text[start..end])));
        start = end;
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(name: Option<&str>, address: &str) -> Mailbox {
        Mailbox { name: name.map(str::to_string), address: address.into() }
    }

    fn to(name: Option<&str>, address: &str) -> String {
        field("To", &[mailbox(&mb(name, address))])
    }

    #[test]
    fn names_are_written_as_atoms_quoted_or_encoded() {
        assert_eq!(to(None, "a@x.test"), "To: a@x.test\r\n");
        assert_eq!(to(None, "\"a b\"@x.test"), "To: <\"a b\"@x.test>\r\n");
        assert_eq!(to(Some("Bob Smith"), "b@x.test"), "To: Bob Smith <b@x.test>\r\n");
        assert_eq!(to(Some("Smith, Bob"), "b@x.test"), "To: \"Smith, Bob\" <b@x.test>\r\n");
        assert_eq!(to(Some("say \"hi\""), "b@x.test"), "To: \"say \\\"hi\\\"\" <b@x.test>\r\n");
        assert_eq!(to(Some("Jürgen"), "j@x.de"), "To: =?UTF-8?B?SsO8cmdlbg==?= <j@x.de>\r\n");
        assert_eq!(to(Some("=?x?q?y?="), "j@x.de"), "To: =?UTF-8?B?PT94P3E/eT89?= <j@x.de>\r\n");
        assert_eq!(to(Some("   "), "a@x.test"), "To: a@x.test\r\n");
    }

    #[test]
    fn control_characters_never_reach_the_output() {
        let out = to(Some("Evil\r\nBcc: victim@x.test\0"), "e@x.test");
        assert_eq!(out, "To: \"Evil Bcc: victim@x.test\" <e@x.test>\r\n");
    }

    #[test]
    fn long_fields_fold_and_no_line_exceeds_998() {
        let items: Vec<_> = (0..40).map(|i| mailbox(&mb(None, &format!("user{i}@example.com")))).collect();
        let out = field("Cc", &items);
        assert!(out.split("\r\n").all(|l| l.len() <= FOLD_AT), "{out}");
        assert!(out.starts_with("Cc: user0@example.com, user1@example.com,"));
        let long_name = "ä".repeat(2000);
        let out = to(Some(&long_name), "a@x.test");
        assert!(out.split("\r\n").all(|l| l.len() <= FOLD_AT), "{out}");
        assert!(out.ends_with(" <a@x.test>\r\n"));
    }
}
