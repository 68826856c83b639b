//! The body hash and the signature of a header block, with mail-auth's canonicalization and
//! keys. mail-auth signs a whole message; bccguard signs many header blocks over one body, so
//! the body goes once through mail-auth's streaming body canonicalizer and every copy's
//! signature carries that hash.

use mail_auth::common::crypto::{HashContext, HashImpl, Sha256, SigningKey as _};
use mail_auth::common::headers::{HeaderWriter, Writable, Writer};
use mail_auth::dkim::{Canonicalization, Signature};

use super::{DkimError, SigningKey};
use crate::config::KeyAlgorithm;
use crate::message::parse::{header_bounds, split_fields};

/// The relaxed body hash (SHA-256) of a body fed in pieces.
pub struct BodyHasher(mail_auth::dkim::canonicalize::BodyHasher<<Sha256 as HashImpl>::Context>);

impl Default for BodyHasher {
    fn default() -> Self {
        BodyHasher(mail_auth::dkim::canonicalize::BodyHasher::new(Sha256::hasher(), Canonicalization::Relaxed, 0))
    }
}

impl BodyHasher {
    /// Feed the next piece of the body.
    pub fn write(&mut self, piece: &[u8]) {
        self.0.write(piece);
    }

    /// The hash (`bh=`).
    pub fn finish(self) -> Vec<u8> {
        let (hasher, _) = self.0.finish();
        hasher.complete().as_ref().to_vec()
    }
}

/// The relaxed body hash of a body in pieces.
pub fn body_hash<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut h = BodyHasher::default();
    for p in pieces {
        h.write(p);
    }
    h.finish()
}

/// What is signed: the selected header fields, bottom-up, then the signature field with an
/// empty `b=` (RFC 6376 §3.7), exactly as mail-auth's own signer writes it.
struct Signable<'a> {
    headers: Vec<(&'a [u8], &'a [u8])>,
    signature: &'a Signature,
}

impl Writable for Signable<'_> {
    fn write(self, writer: &mut impl Writer) {
        Canonicalization::Relaxed.canonicalize_headers(self.headers.into_iter().rev(), writer);
        self.signature.write(writer, false);
    }
}

/// The `DKIM-Signature` field (CRLF included) for header block `head` over a body whose hash
/// is `bh`, signing every instance of the fields in `names` that `head` has.
pub(super) fn sign(key: &SigningKey, names: &[String], head: &[u8], bh: &[u8], now: u64) -> Result<String, DkimError> {
    let mut selected = Vec::new();
    let mut h = Vec::new();
    let (end, _) = header_bounds(head);
    for field in split_fields(&head[..end]) {
        let Some(name) = field.name else { continue };
        let (name, value) = (&head[name], &head[field.value]);
        if let Some(n) = names.iter().find(|n| name.eq_ignore_ascii_case(n.as_bytes())) {
            selected.push((name, value));
            h.push(n.clone());
        }
    }
    if selected.is_empty() {
        return Err(DkimError::NoFields);
    }
    h.reverse();
    let mut signature = Signature {
        v: 1,
        a: match key.algorithm {
            KeyAlgorithm::RsaSha256 => mail_auth::common::crypto::Algorithm::RsaSha256,
            KeyAlgorithm::Ed25519Sha256 => mail_auth::common::crypto::Algorithm::Ed25519Sha256,
        },
        d: key.domain.clone(),
        s: key.selector.clone(),
        bh: bh.to_vec(),
        h,
        t: now,
        ch: Canonicalization::Relaxed,
        cb: Canonicalization::Relaxed,
        ..Signature::default()
    };
    signature.b = key
        .key
        .sign(Signable { headers: selected, signature: &signature })
        .map_err(|e| DkimError::Sign(e.to_string()))?;
    let mut field = signature.to_header();
    if !field.ends_with("\r\n") {
        field.push_str("\r\n");
    }
    Ok(field)
}
