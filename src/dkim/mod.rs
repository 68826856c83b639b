//! DKIM for the copies bccguard rewrites (SPEC §11): the signing keys, the body hash (once
//! per message body), the signature of each copy's header block, and the renaming of the
//! original's signatures that a copy broke.
//!
//! The signing domain aligns with the copy's `From:` domain as DMARC's relaxed alignment
//! wants it: a key for the From domain itself, or else for its nearest parent domain (a key
//! for `example.com` signs mail from `news.example.com`). Signatures are relaxed/relaxed,
//! with no `l=` and the header fields of `dkim.headers` that the copy has.

pub mod key;
pub mod metrics;
mod original;
mod sign;

use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use mail_auth::common::crypto::DkimKey;
use serde::Serialize;

use crate::config::{Action, DkimConfig, KeyAlgorithm, Unsigned};
use crate::message::address;
use crate::message::parse::{addresses_in_text, header_bounds, split_fields};
pub use key::KeyError;
pub use original::{HeaderIndex, OriginalSignature, signatures};
pub use sign::{BodyHasher, body_hash};

/// Why a copy could not be signed.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The crypto library refused.
    #[error("signing failed: {0}")]
    Sign(String),
    /// None of the fields to sign is present (not even From).
    #[error("the copy has none of the fields to sign")]
    NoFields,
}

/// One loaded key.
pub struct SigningKey {
    /// `d=`, lowercase.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// Its algorithm.
    pub algorithm: KeyAlgorithm,
    key: DkimKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey(d={} s={} a={})", self.domain, self.selector, key::algorithm_name(self.algorithm))
    }
}

/// The keys and settings of `[dkim]`, loaded.
#[derive(Debug, Default)]
pub struct Signer {
    keys: Vec<SigningKey>,
    headers: Vec<String>,
    /// `dkim.unsigned`.
    pub unsigned: Unsigned,
    /// `dkim.sign_all`.
    pub sign_all: bool,
}

/// The signer shared by the intake and delivery, swapped on reload.
pub type Shared = Arc<ArcSwap<Signer>>;

impl Signer {
    /// Load every key of `[dkim]` (blocking: reads the key files).
    pub fn from_config(c: &DkimConfig) -> Result<Signer, KeyError> {
        let mut keys = Vec::with_capacity(c.keys.len());
        for k in &c.keys {
            let domain = k.domain.trim_end_matches('.').to_ascii_lowercase();
            let key = key::load(&k.key_file, k.algorithm)?;
            keys.push(SigningKey { domain, selector: k.selector.clone(), algorithm: k.algorithm, key });
        }
        Ok(Signer { keys, headers: c.headers.clone(), unsigned: c.unsigned, sign_all: c.sign_all })
    }

    /// Whether any key is loaded.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The key aligned with `from_domain`: for that domain, or else its nearest parent.
    pub fn aligned(&self, from_domain: &str) -> Option<&SigningKey> {
        let from = from_domain.trim_end_matches('.').to_ascii_lowercase();
        self.keys
            .iter()
            .filter(|k| from == k.domain || from.strip_suffix(k.domain.as_str()).is_some_and(|p| p.ends_with('.')))
            .max_by_key(|k| k.domain.len())
    }

    /// The key aligned with the `From:` domain of the header block `head` (without keys, the
    /// field is not looked for).
    pub fn key_for(&self, head: &[u8]) -> Option<&SigningKey> {
        if !self.has_keys() {
            return None;
        }
        from_domain(head).and_then(|d| self.aligned(&d))
    }
}

/// The domain of the (last) address in the first `From:` field of `head`.
pub fn from_domain(head: &[u8]) -> Option<String> {
    let (end, _) = header_bounds(head);
    let field = split_fields(&head[..end])
        .into_iter()
        .find(|f| f.name.as_ref().is_some_and(|n| head[n.clone()].trim_ascii().eq_ignore_ascii_case(b"from")))?;
    let text = String::from_utf8_lossy(&head[field.value]);
    let last = addresses_in_text(&text).last()?;
    Some(address::domain_key(&last))
}

/// Whether the original was signed, as the decision reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The original carries at least one `DKIM-Signature`.
    SignedByOriginal,
    /// It carries none.
    #[default]
    None,
}

/// What the decision says about DKIM.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `dkim = signed_by_original | none`.
    pub dkim: Origin,
    /// The key that signs rewritten copies (`d=... s=...`), if one aligns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Whether the message is held because no key aligns (`dkim.unsigned = "hold"`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub held: bool,
}

impl Report {
    /// What `signer` will do with a message whose header block is `head`, decided `action`.
    pub fn of(head: &[u8], signer: &Signer, action: Action) -> Report {
        let dkim = if signatures(head).is_empty() { Origin::None } else { Origin::SignedByOriginal };
        let key = signer.key_for(head).map(|k| format!("d={} s={}", k.domain, k.selector));
        let rewrites = matches!(action, Action::Explode | Action::Undisclose);
        let held = rewrites && dkim == Origin::SignedByOriginal && key.is_none() && signer.unsigned == Unsigned::Hold;
        Report { dkim, key, held }
    }

    /// The log field: `none`, `signed_by_original`, and what happens to rewritten copies
    /// (`resigned`, `unsigned` when no key aligns: they go with the signatures renamed, or
    /// `held`).
    pub fn summary(&self) -> &'static str {
        match (self.dkim, self.key.is_some(), self.held) {
            (_, _, true) => "signed_by_original, held: no key aligns",
            (Origin::SignedByOriginal, true, _) => "signed_by_original, copies resigned",
            (Origin::SignedByOriginal, false, _) => "signed_by_original, copies unsigned: no key aligns",
            (Origin::None, true, _) => "none, copies signed",
            (Origin::None, false, _) => "none",
        }
    }

    /// Whether a copy (rewritten or not) is signed by bccguard.
    pub fn resigns(&self, rewritten: bool, sign_all: bool) -> bool {
        self.key.is_some() && (rewritten || sign_all)
    }
}

/// A copy after DKIM: its header block and what was done.
#[derive(Debug)]
pub struct Signed {
    /// The header block to send.
    pub head: Bytes,
    /// bccguard signed it.
    pub resigned: bool,
    /// Original signatures renamed `X-Original-DKIM-Signature`.
    pub renamed: usize,
    /// An original signature broke and no key aligned.
    pub unsigned_broken: bool,
}

/// How one copy differs from the original.
#[derive(Clone, Copy, Debug)]
pub struct Change<'a> {
    /// The original's header block.
    pub original: &'a HeaderIndex,
    /// Whether the header block was rewritten.
    pub head: bool,
    /// Whether the body differs (a rewritten calendar part).
    pub body: bool,
}

impl Signer {
    /// Rename the signatures `copy` broke, and sign it when a key aligns (a copy that
    /// changed nothing only under `sign_all`). `body_hash` is the copy's body hash; `None`
    /// means it is not to be signed. `now` is Unix seconds.
    pub fn finish(&self, copy: Bytes, change: Change<'_>, body_hash: Option<&[u8]>, now: u64) -> Signed {
        let changed = change.head || change.body;
        let unchanged = Signed { head: copy.clone(), resigned: false, renamed: 0, unsigned_broken: false };
        if !changed && !self.sign_all {
            return unchanged;
        }
        let sigs = if changed { signatures(&copy) } else { Vec::new() };
        let broken: Vec<OriginalSignature> = match (sigs.is_empty(), change.body) {
            (true, _) => Vec::new(),
            (false, true) => sigs,
            (false, false) => {
                let index = HeaderIndex::new(copy.clone());
                sigs.into_iter().filter(|s| s.broken_by(change.original, &index)).collect()
            }
        };
        let head = if broken.is_empty() { copy.clone() } else { Bytes::from(original::rename(&copy, &broken)) };
        let signed = match (self.key_for(&head), body_hash) {
            (Some(key), Some(bh)) => sign::sign(key, &self.headers, &head, bh, now).ok(),
            _ => None,
        };
        match signed {
            Some(field) => {
                let mut out = Vec::with_capacity(field.len() + head.len());
                out.extend_from_slice(field.as_bytes());
                out.extend_from_slice(&head);
                Signed { head: Bytes::from(out), resigned: true, renamed: broken.len(), unsigned_broken: false }
            }
            None => Signed { head, resigned: false, renamed: broken.len(), unsigned_broken: !broken.is_empty() },
        }
    }
}

#[cfg(test)]
mod tests;
