//! Domain names in one comparable form (ASCII, lowercase) and the internal-domain test.

/// The ASCII lowercase form of `domain` (IDN labels as punycode), or `None` when it is not a
/// domain name. A trailing dot is dropped; an address literal (`[192.0.2.1]`) is kept as is.
pub fn normalize_domain(domain: &str) -> Option<String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if is_literal(domain) {
        return Some(domain.to_ascii_lowercase());
    }
    if domain.is_empty() || domain.len() > 253 {
        return None;
    }
    if let Some(valid) = plain_ascii(domain) {
        return valid.then(|| domain.to_ascii_lowercase());
    }
    let ascii = idna::domain_to_ascii(domain).ok()?;
    ascii.split('.').all(label_ok).then_some(ascii)
}

/// Whether `domain` is a domain name: [`normalize_domain`] would give it a form. Builds no
/// string for a name in plain ASCII.
pub fn is_domain(domain: &str) -> bool {
    let plain = domain.strip_suffix('.').unwrap_or(domain);
    match plain_ascii(plain) {
        Some(valid) => valid && plain.len() <= 253,
        // As written: normalizing drops one trailing dot itself.
        None => normalize_domain(domain).is_some(),
    }
}

fn is_literal(domain: &str) -> bool {
    domain.starts_with('[') && domain.ends_with(']') && domain.len() > 2
}

fn label_ok(label: &str) -> bool {
    !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// For a name of ASCII letters, digits, `-`, `_` and `.` with no `xn--` label, which IDNA
/// leaves as it is but for case: whether its labels are valid. `None` for any other name
/// (IDNA decides).
fn plain_ascii(domain: &str) -> Option<bool> {
    let plain = domain.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let punycode = domain.split('.').any(|l| l.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("xn--")));
    (plain && !punycode).then(|| domain.split('.').all(label_ok))
}

/// The set of internal domains: each matches itself and its subdomains.
#[derive(Clone, Debug, Default)]
pub struct InternalDomains {
    domains: Vec<String>,
}

impl InternalDomains {
    /// Build the set from configured names; names that are not domains are skipped (the
    /// configuration check reports them).
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        let domains = names.iter().filter_map(|n| normalize_domain(n.as_ref())).collect();
        InternalDomains { domains }
    }

    /// Whether `domain_ascii` (already normalized) is internal.
    pub fn contains(&self, domain_ascii: &str) -> bool {
        self.matches(domain_ascii.as_bytes(), |a, b| a == b)
    }

    /// Whether `domain` as written (any case, a trailing dot) is internal: [`Self::contains`]
    /// of its normalized form (or its lowercase text when it is no domain), without building
    /// that form for a name in plain ASCII.
    pub fn contains_name(&self, domain: &str) -> bool {
        let plain = domain.strip_suffix('.').unwrap_or(domain);
        match plain_ascii(plain) {
            Some(true) => self.matches(plain.as_bytes(), <[u8]>::eq_ignore_ascii_case),
            _ => self.contains(&normalize_domain(domain).unwrap_or_else(|| domain.to_lowercase())),
        }
    }

    /// Whether `name` is one of the domains or a subdomain of one, comparing with `eq`.
    fn matches(&self, name: &[u8], eq: impl Fn(&[u8], &[u8]) -> bool) -> bool {
        self.domains.iter().map(String::as_bytes).any(|d| {
            name.len() >= d.len()
                && eq(&name[name.len() - d.len()..], d)
                && (name.len() == d.len() || name[name.len() - d.len() - 1] == b'.')
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_normalize_to_ascii_lowercase() {
        assert_eq!(normalize_domain("Example.COM").as_deref(), Some("example.com"));
        assert_eq!(normalize_domain("example.com.").as_deref(), Some("example.com"));
        assert_eq!(normalize_domain("bücher.de").as_deref(), Some("xn--bcher-kva.de"));
        assert_eq!(normalize_domain("XN--BCHER-KVA.de").as_deref(), Some("xn--bcher-kva.de"));
        assert_eq!(normalize_domain("[192.0.2.1]").as_deref(), Some("[192.0.2.1]"));
        for bad in
            ["", "a b.com", "a..b", "x@y", "a\u{0}b.com", "xn--.com", "xn--zz.com", "a.com..", "xn--bcher-kva.de.."]
        {
            assert!(normalize_domain(bad).is_none() && !is_domain(bad), "{bad:?}");
        }
        let long = format!("{}.com", vec!["a".repeat(63); 4].join("."));
        assert!(long.len() > 253 && !is_domain(&long) && normalize_domain(&long).is_none());
    }

    proptest::proptest! {
        /// A domain as written is internal exactly when its normalized form is.
        #[test]
        fn a_name_as_written_is_internal_as_its_normal_form_is(
            domain in "(([xX][nN]--)?[a-zA-Z0-9_-]{0,8}\\.){0,3}(example\\.com|EXAMPLE\\.Com|bücher\\.de|XN--BCHER-KVA\\.de|com|x\\.test)(\\.?)",
        ) {
            let internal = InternalDomains::new(&["example.com", "bücher.de"]);
            let key = normalize_domain(&domain).unwrap_or_else(|| domain.to_lowercase());
            proptest::prop_assert_eq!(internal.contains_name(&domain), internal.contains(&key), "{}", key);
        }

        /// A name in plain ASCII takes the short way; it must agree with IDNA on every one.
        #[test]
        fn the_plain_ascii_way_agrees_with_idna(domain in "(([xX][nN]--)?[a-zA-Z0-9._-]{0,20}){0,4}(\\.?)") {
            let idna = idna::domain_to_ascii(domain.strip_suffix('.').unwrap_or(&domain))
                .ok()
                .filter(|a| !a.is_empty() && a.len() <= 253 && a.split('.').all(label_ok));
            proptest::prop_assert_eq!(normalize_domain(&domain), idna.clone());
            proptest::prop_assert_eq!(is_domain(&domain), idna.is_some());
        }
    }

    #[test]
    fn internal_means_the_domain_or_a_subdomain() {
        let internal = InternalDomains::new(&["Example.com", "bücher.de"]);
        for (domain, expected) in [
            ("example.com", true),
            ("mail.example.com", true),
            ("a.b.example.com", true),
            ("notexample.com", false),
            ("example.com.evil.org", false),
            ("xn--bcher-kva.de", true),
            ("shop.xn--bcher-kva.de", true),
            ("example.org", false),
        ] {
            assert_eq!(internal.contains(domain), expected, "{domain}");
        }
    }
}
