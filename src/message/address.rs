//! Mail addresses: their canonical text (safe in a command or a header), the key that
//! compares them, and the redacted form written to logs.

use super::domain::{is_domain, normalize_domain};

/// The canonical text of an address: `local@domain` with the local part quoted only when it
/// is not a dot-atom. `None` when it has no local part, no valid domain, or a control
/// character anywhere (so nothing from it can break a command or a header line).
pub fn canonical(raw: &str) -> Option<String> {
    if raw.chars().any(char::is_control) {
        return None;
    }
    let (local, domain) = raw.rsplit_once('@')?;
    let local = unquote(local);
    if local.is_empty() || domain.is_empty() || !is_domain(domain) {
        return None;
    }
    // A local part that looks like the start of an encoded word (RFC 2047) is quoted: bare,
    // a reader of the header might decode it as a display name and see another address.
    if is_dot_atom(&local) && !local.contains("=?") {
        Some(format!("{local}@{domain}"))
    } else {
        let escaped = local.replace('\\', "\\\\").replace('"', "\\\"");
        Some(format!("\"{escaped}\"@{domain}"))
    }
}

/// The canonical text of an address read from a header field, where a local part that is not
/// a dot-atom must have been quoted: anything else is a parse accident, not an address.
pub fn from_header(raw: &str) -> Option<String> {
    let (local, _) = raw.rsplit_once('@')?;
    let quoted = local.len() >= 2 && local.starts_with('"') && local.ends_with('"');
    if !quoted && !is_dot_atom(local) {
        return None;
    }
    canonical(raw)
}

fn unquote(local: &str) -> std::borrow::Cow<'_, str> {
    match local.strip_prefix('"').and_then(|l| l.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
            }
            out.into()
        }
        None => local.into(),
    }
}

/// RFC 5322 dot-atom, with non-ASCII allowed as in RFC 6532.
fn is_dot_atom(s: &str) -> bool {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii();
    s.split('.').all(|atom| !atom.is_empty() && atom.chars().all(atext))
}

/// The local part and domain of a canonical address.
pub fn split(address: &str) -> (&str, &str) {
    address.rsplit_once('@').unwrap_or((address, ""))
}

/// Whether `address` (canonical) is in one of the `internal` domains.
pub fn is_internal(internal: &super::domain::InternalDomains, address: &str) -> bool {
    internal.contains_name(split(address).1)
}

/// The domain of an address in comparable form (ASCII lowercase), or its lowercase text if
/// it is not a valid domain.
pub fn domain_key(address: &str) -> String {
    let domain = split(address).1;
    normalize_domain(domain).unwrap_or_else(|| domain.to_lowercase())
}

/// What makes two addresses the same: the local part as written, the domain in ASCII
/// lowercase.
pub fn key(address: &str) -> (String, String) {
    (split(address).0.to_string(), domain_key(address))
}

/// An address as it may appear in a log: first character of the local part, then `***`,
/// then the domain (`j***@example.com`). The null sender shows as `<>`.
pub fn redact(address: &str) -> String {
    if address.is_empty() {
        return "<>".into();
    }
    let (local, domain) = split(address);
    let first: String = local.chars().find(|c| *c != '"').into_iter().collect();
    format!("{first}***@{domain}")
}

/// `text` with every address-like word (anything around an `@`, between separators)
/// redacted as by [`redact`]: for replies and errors that quote addresses.
pub fn redact_in_text(text: &str) -> String {
    let separator = |c: char| c.is_whitespace() || "<>()[],;:\"'".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains('@') && !word.starts_with('@') {
            out.push_str(&redact(word));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if separator(c) {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_quotes_only_when_needed() {
        for (raw, expected) in [
            ("john.doe@example.com", Some("john.doe@example.com")),
            ("John@Example.COM", Some("John@Example.COM")),
            ("john doe@example.com", Some("\"john doe\"@example.com")),
            ("\"john doe\"@example.com", Some("\"john doe\"@example.com")),
            ("\"plain\"@example.com", Some("plain@example.com")),
            ("a\"b@example.com", Some("\"a\\\"b\"@example.com")),
            ("a@b@example.com", Some("\"a@b\"@example.com")),
            ("üser@exämple.de", Some("üser@exämple.de")),
            ("a..b@example.com", Some("\"a..b\"@example.com")),
            ("=?utf-8?q?abc?=@example.com", Some("\"=?utf-8?q?abc?=\"@example.com")),
            ("nodomain", None),
            ("@example.com", None),
            ("a@", None),
            ("a@bad domain", None),
            ("a\r\nRCPT TO:<x@y>@example.com", None),
            ("a\u{0}b@example.com", None),
        ] {
            assert_eq!(canonical(raw).as_deref(), expected, "{raw:?}");
        }
    }

    #[test]
    fn header_addresses_need_a_dot_atom_or_a_quoted_local_part() {
        assert_eq!(from_header("a.b@x.test").as_deref(), Some("a.b@x.test"));
        assert_eq!(from_header("\"john doe\"@x.test").as_deref(), Some("\"john doe\"@x.test"));
        for bad in ["<<garbage@x.test", "a@b.test d@e.test", "a@b.testd@e.test", "@x.test", "a@"] {
            assert_eq!(from_header(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn keys_compare_domains_case_insensitively_and_local_parts_as_written() {
        assert_eq!(key("Bob@EXAMPLE.com"), key("Bob@example.com"));
        assert_ne!(key("Bob@example.com"), key("bob@example.com"));
        assert_eq!(key("a@bücher.de"), key("a@xn--bcher-kva.de"));
    }

    #[test]
    fn redaction_hides_the_local_part() {
        assert_eq!(redact("john.doe@example.com"), "j***@example.com");
        assert_eq!(redact(""), "<>");
        assert_eq!(
            redact_in_text("550 5.1.1 <bob.smith@customer.test>: Recipient address rejected"),
            "550 5.1.1 <b***@customer.test>: Recipient address rejected"
        );
        assert_eq!(redact_in_text("452 4.5.3 no @ here, a@b"), "452 4.5.3 no @ here, a***@b");
    }
}
