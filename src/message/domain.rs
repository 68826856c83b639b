//! Domain names in one comparable form (ASCII, lowercase) and the internal-domain test.

/// The ASCII lowercase form of `domain` (IDN labels as punycode), or `None` when it is not a
/// domain name. A trailing dot is dropped; an address literal (`[192.0.2.1]`) is kept as is.
pub fn normalize_domain(domain: &str) -> Option<String> {
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.starts_with('[') && domain.ends_with(']') && domain.len() > 2 {
        return Some(domain.to_ascii_lowercase());
    }
    if domain.is_empty() || domain.len() > 253 {
        return None;
    }
    let ascii = idna::domain_to_ascii(domain).ok()?;
    let label_ok = |l: &str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    ascii.split('.').all(label_ok).then_some(ascii)
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
        self.domains.iter().any(|d| {
            domain_ascii == d
                || (domain_ascii.len() > d.len()
                    && domain_ascii.ends_with(d.as_str())
                    && domain_ascii.as_bytes()[domain_ascii.len() - d.len() - 1] == b'.')
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
        for bad in ["", "a b.com", "a..b", "x@y", "a\u{0}b.com"] {
            assert!(normalize_domain(bad).is_none(), "{bad:?}");
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
