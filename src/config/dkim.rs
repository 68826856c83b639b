//! `[dkim]`: the keys bccguard signs rewritten copies with (SPEC §11), and the checks on them.
//! A key file that cannot be read or is not a key of its algorithm is an error naming its
//! key path and file.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::load::ConfigError;
use crate::message::domain::normalize_domain;

/// `[dkim]`: re-signing of rewritten copies.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DkimConfig {
    /// The signing keys; the one whose domain aligns with a copy's `From:` domain (equal, or
    /// its nearest parent) signs it.
    pub keys: Vec<DkimKeyConfig>,
    /// Header fields signed, each instance present in the copy (absent ones are not listed).
    pub headers: Vec<String>,
    /// What happens to a copy whose original was signed, that bccguard rewrote, and for which
    /// no key aligns.
    pub unsigned: Unsigned,
    /// Also sign messages bccguard did not change (bccguard as the signing relay).
    pub sign_all: bool,
}

impl Default for DkimConfig {
    fn default() -> Self {
        DkimConfig { keys: Vec::new(), headers: default_headers(), unsigned: Unsigned::Send, sign_all: false }
    }
}

/// The header fields signed by default.
pub fn default_headers() -> Vec<String> {
    [
        "From",
        "To",
        "Cc",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Reply-To",
        "In-Reply-To",
        "References",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
    ]
    .map(String::from)
    .to_vec()
}

/// `dkim.unsigned`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unsigned {
    /// Deliver the copy with its original signatures renamed; logged and counted.
    #[default]
    Send,
    /// Hold the message for a person (SPEC §10).
    Hold,
}

/// One `[[dkim.keys]]` entry.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`): the key's DNS record is `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// PEM private key: PKCS#8 (RSA or Ed25519) or PKCS#1 (RSA).
    pub key_file: PathBuf,
    /// The algorithm of the key.
    #[serde(default)]
    pub algorithm: KeyAlgorithm,
}

/// `algorithm` of a `[[dkim.keys]]` entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum KeyAlgorithm {
    /// RSA with SHA-256.
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    /// Ed25519 with SHA-256 (RFC 8463).
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

/// Check `[dkim]`, loading every key once.
pub(super) fn validate(c: &DkimConfig, errors: &mut Vec<ConfigError>) {
    for (i, key) in c.keys.iter().enumerate() {
        let at = |k: &str| format!("dkim.keys[{i}].{k}");
        if normalize_domain(&key.domain).is_none_or(|d| !d.contains('.')) {
            errors.push(ConfigError::new(at("domain"), format!("{:?} is not a domain name", key.domain)));
        }
        let selector_ok = |s: &str| {
            s.split('.').all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        };
        if !selector_ok(&key.selector) {
            errors.push(ConfigError::new(at("selector"), format!("{:?} is not a selector", key.selector)));
        }
        if let Err(e) = crate::dkim::key::load(&key.key_file, key.algorithm) {
            errors.push(ConfigError::new(at("key_file"), e.to_string()));
        }
    }
    if !c.headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
        errors.push(ConfigError::new("dkim.headers", "must include From (RFC 6376 §5.4)"));
    }
    for (i, h) in c.headers.iter().enumerate() {
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            errors.push(ConfigError::new(format!("dkim.headers[{i}]"), format!("{h:?} is not a field name")));
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load::errors_in as errors;
    use crate::config::load_str;

    #[test]
    fn a_bad_key_is_an_error_naming_its_key_path_and_file() {
        let dir = env!("CARGO_MANIFEST_DIR");
        let toml = format!(
            "[[dkim.keys]]\ndomain = \"example.com\"\nselector = \"s1\"\nkey_file = \"{dir}/tests/fixtures/dkim/rsa.pem\"\n\
             [[dkim.keys]]\ndomain = \"example\"\nselector = \"bad selector\"\nkey_file = \"{dir}/nope.pem\"\n\
             [[dkim.keys]]\ndomain = \"example.org\"\nselector = \"s\"\nkey_file = \"{dir}/tests/fixtures/dkim/rsa.pem\"\n\
             algorithm = \"ed25519-sha256\"\n[dkim]\nheaders = [\"To\", \"Sub:ject\"]\n"
        );
        let errors = errors(&toml);
        assert_eq!(errors.len(), 6, "{errors:#?}");
        assert!(errors[0].starts_with("dkim.keys[1].domain: \"example\" is not a domain name"), "{errors:#?}");
        assert!(errors[1].starts_with("dkim.keys[1].selector:"), "{errors:#?}");
        assert!(errors[2].starts_with(&format!("dkim.keys[1].key_file: cannot read {dir}/nope.pem")), "{errors:#?}");
        let want =
            format!("dkim.keys[2].key_file: {dir}/tests/fixtures/dkim/rsa.pem is not a usable ed25519-sha256 key");
        assert!(errors[3].starts_with(&want), "{errors:#?}");
        assert_eq!(errors[4], "dkim.headers: must include From (RFC 6376 §5.4)");
        assert!(errors[5].starts_with("dkim.headers[1]:"), "{errors:#?}");
    }

    #[test]
    fn unknown_keys_and_values_are_refused() {
        assert!(load_str(Some("[dkim]\nunsigned = \"drop\"\n"), &[]).is_err());
        assert!(load_str(Some("[dkim]\nkeyz = []\n"), &[]).is_err());
        assert!(errors("[dkim]\nunsigned = \"hold\"\nsign_all = true\n").is_empty());
    }
}
