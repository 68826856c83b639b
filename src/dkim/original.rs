//! The original's `DKIM-Signature` fields: which header fields each one signed, whether a copy
//! changed any of them, and renaming the broken ones `X-Original-DKIM-Signature` (as mailing
//! lists do), so that a verifier sees no failing signature and a person can still read it.

use std::ops::Range;

use bytes::Bytes;

use crate::message::parse::{header_bounds, split_fields};

/// The name a broken signature takes in a copy.
pub const RENAMED: &str = "X-Original-DKIM-Signature";

/// One `DKIM-Signature` field of a header block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginalSignature {
    /// The field name's bytes.
    pub name: Range<usize>,
    /// The names in its `h=` tag, lowercase.
    pub signed: Vec<String>,
}

/// The `DKIM-Signature` fields of header block `head`, in order.
pub fn signatures(head: &[u8]) -> Vec<OriginalSignature> {
    let (end, _) = header_bounds(head);
    split_fields(&head[..end])
        .into_iter()
        .filter_map(|f| {
            let name = f.name?;
            head[name.clone()]
                .trim_ascii()
                .eq_ignore_ascii_case(b"dkim-signature")
                .then(|| OriginalSignature { name, signed: signed_names(&head[f.value]) })
        })
        .collect()
}

/// The field names of a signature's `h=` tag, lowercase.
fn signed_names(value: &[u8]) -> Vec<String> {
    let text: String = String::from_utf8_lossy(value).chars().filter(|c| !c.is_whitespace()).collect();
    text.split(';')
        .find_map(|tag| tag.strip_prefix("h="))
        .map(|h| h.split(':').filter(|n| !n.is_empty()).map(str::to_ascii_lowercase).collect())
        .unwrap_or_default()
}

/// A header block's fields by name, split once: the original's is built once per delivery
/// pass and compared with every copy's.
#[derive(Debug)]
pub struct HeaderIndex {
    bytes: Bytes,
    /// Each field's lowercase name and its bytes (name through line end).
    fields: Vec<(String, Range<usize>)>,
}

impl HeaderIndex {
    /// The index of header block `bytes`.
    pub fn new(bytes: Bytes) -> HeaderIndex {
        let (end, _) = header_bounds(&bytes);
        let fields = split_fields(&bytes[..end])
            .into_iter()
            .filter_map(|f| {
                let name = String::from_utf8_lossy(bytes[f.name?].trim_ascii()).to_ascii_lowercase();
                Some((name, f.range))
            })
            .collect();
        HeaderIndex { bytes, fields }
    }

    /// Every instance of field `name` (lowercase), raw bytes, top to bottom.
    fn instances<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields.iter().filter(move |(n, _)| n == name).map(|(_, r)| &self.bytes[r.clone()])
    }
}

impl OriginalSignature {
    /// Whether `copy` changed, added or removed an instance of a field this signature
    /// signed, compared with `original` (a verifier takes instances bottom-up, so any
    /// difference in the list can break it).
    pub fn broken_by(&self, original: &HeaderIndex, copy: &HeaderIndex) -> bool {
        let mut names: Vec<&str> = self.signed.iter().map(String::as_str).collect();
        names.sort_unstable();
        names.dedup();
        names.iter().any(|n| !original.instances(n).eq(copy.instances(n)))
    }
}

/// `head` with the name of each of `broken` replaced by [`RENAMED`].
pub fn rename(head: &[u8], broken: &[OriginalSignature]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + broken.len() * 16);
    let mut pos = 0;
    for s in broken {
        out.extend_from_slice(&head[pos..s.name.start]);
        out.extend_from_slice(RENAMED.as_bytes());
        pos = s.name.end;
    }
    out.extend_from_slice(&head[pos..]);
    out
}
