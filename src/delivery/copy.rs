//! One transaction's copy, as a delivery pass builds it: the rewritten header block, the body
//! (shared, or the original's slices around calendar parts rewritten for the recipient), and
//! DKIM (original signatures the copy broke renamed; a new signature when a key aligns).
//!
//! The body hash of the shared body is computed once per pass ([`body_hash`]); a copy with a
//! body of its own (an invite) is hashed on its own. Signing is left to [`Unsigned::finish`],
//! which the pass runs on a blocking thread when it costs a signature.

use std::sync::Arc;

use bytes::Bytes;
use tracing::{error, warn};

use super::Copy;
use crate::dkim::{self, HeaderIndex, Signer};
use crate::message::parse::Headers;
use crate::plan::{Plan, Rewrite, Transaction};
use crate::rewrite;
use crate::spool::content::Content;
use crate::spool::record::Meta;

/// What every copy of a message is made from.
pub(super) struct Message<'a> {
    pub meta: &'a Arc<Meta>,
    pub head: &'a Bytes,
    pub content: &'a Content,
    pub headers: &'a Headers,
    pub eight_bit: bool,
    /// The DKIM keys.
    pub signer: &'a Arc<Signer>,
    /// The hash of the shared body, when some copy is to be signed.
    pub body_hash: Option<&'a Arc<[u8]>>,
    /// The encoded bytes of each calendar part the plan rewrites, read once per pass.
    pub calendars: &'a [Bytes],
    /// The original's header block, split once per pass, for DKIM to compare copies with.
    pub original: &'a Arc<HeaderIndex>,
}

/// A copy before DKIM.
pub(super) struct Unsigned {
    head: Bytes,
    body: Content,
    eight_bit: bool,
    /// The original's header block.
    original: Arc<HeaderIndex>,
    head_changed: bool,
    own_body: bool,
    signer: Arc<Signer>,
    body_hash: Option<Arc<[u8]>>,
}

impl Message<'_> {
    /// Transaction `t`'s copy, before DKIM.
    pub fn copy(&self, t: usize) -> Unsigned {
        let txn = &self.meta.plan.transactions[t];
        let head = rewrite::head(self.head, self.headers, &self.meta.plan, txn, &self.meta.recipients);
        let (body, own_body) = self.body(txn);
        Unsigned {
            head,
            body,
            eight_bit: self.eight_bit,
            original: self.original.clone(),
            head_changed: !rewrite::unchanged(self.headers, txn),
            own_body,
            signer: self.signer.clone(),
            body_hash: self.body_hash.cloned(),
        }
    }

    /// The body of `txn`'s copy, and whether it is its own: an exploded copy of an invite
    /// has its calendar parts rewritten for its recipient, between slices of the original
    /// body; every other copy shares the original body.
    fn body(&self, txn: &Transaction) -> (Content, bool) {
        let start = self.headers.body_start as u64;
        let plan = &self.meta.plan;
        let (Rewrite::Explode { .. }, Some(&rcpt)) = (&txn.rewrite, txn.recipients.first()) else {
            return (self.content.slice(start..u64::MAX), false);
        };
        if plan.calendar.is_empty() {
            return (self.content.slice(start..u64::MAX), false);
        }
        let recipient = &self.meta.recipients[rcpt];
        let mut parts = Vec::with_capacity(plan.calendar.len() * 2 + 1);
        let mut at = start;
        for (part, encoded) in plan.calendar.iter().zip(self.calendars) {
            parts.push(self.content.slice(at..part.start.max(at)));
            parts.push(Content::Memory(Bytes::from(part.for_recipient(encoded, recipient))));
            at = part.end.max(at);
        }
        parts.push(self.content.slice(at..u64::MAX));
        (Content::joined(parts), true)
    }
}

impl Unsigned {
    /// Whether finishing it makes a signature (a millisecond of CPU for RSA).
    pub fn signs(&self) -> bool {
        self.body_hash.is_some() && (self.head_changed || self.own_body || self.signer.sign_all)
    }

    /// The copy after DKIM (blocking when it has a body of its own to hash).
    pub fn finish(self) -> Copy {
        let change = dkim::Change { original: &self.original, head: self.head_changed, body: self.own_body };
        let now = chrono::Utc::now().timestamp().max(0) as u64;
        let own_hash = (self.own_body && self.body_hash.is_some()).then(|| own_body_hash(&self.body)).flatten();
        let body_hash = if self.own_body { own_hash.as_deref() } else { self.body_hash.as_deref() };
        let signed = self.signer.finish(self.head, change, body_hash, now);
        crate::metrics::metrics().dkim.count(&signed);
        Copy { head: signed.head, body: self.body, eight_bit: self.eight_bit }
    }
}

/// The body hash of a copy's own body (reads of the spool file around the rewritten part);
/// `None` when it cannot be read (the copy then goes unsigned, and its send fails on the
/// same read).
fn own_body_hash(body: &Content) -> Option<Vec<u8>> {
    let mut hasher = dkim::BodyHasher::default();
    for chunk in body.chunks() {
        hasher.write(&chunk.ok()?);
    }
    Some(hasher.finish())
}

/// The encoded bytes of each calendar part `plan` rewrites (empty when it rewrites none);
/// `None` when they cannot be read.
pub(super) async fn calendar_parts(plan: &Plan, content: &Content) -> Option<Vec<Bytes>> {
    if plan.calendar.is_empty() {
        return Some(Vec::new());
    }
    let slices: Vec<Content> = plan.calendar.iter().map(|c| content.slice(c.start..c.end)).collect();
    let read =
        tokio::task::spawn_blocking(move || slices.iter().map(Content::to_bytes).collect::<std::io::Result<Vec<_>>>());
    match read.await {
        Ok(Ok(parts)) => Some(parts),
        Ok(Err(e)) => {
            warn!(error = %e, "cannot read the calendar parts; trying again later");
            None
        }
        Err(e) => {
            error!(error = %e, "the calendar read task failed");
            None
        }
    }
}

/// The DKIM body hash of the body every copy shares, read once from the spool, when some
/// copy of this message is to be signed: a key aligns with its From domain, and a copy is
/// rewritten (or `dkim.sign_all`).
pub(super) async fn body_hash(
    signer: &Arc<Signer>,
    plan: &Plan,
    head: &Bytes,
    headers: &Headers,
    content: &Content,
) -> Option<Arc<[u8]>> {
    let rewritten = plan.transactions.iter().any(|t| !rewrite::unchanged(headers, t)) || !plan.calendar.is_empty();
    if !(rewritten || signer.sign_all) || signer.key_for(&head[..headers.body_start]).is_none() {
        return None;
    }
    let body = content.slice(headers.body_start as u64..u64::MAX);
    let hashed = tokio::task::spawn_blocking(move || {
        let mut hasher = dkim::BodyHasher::default();
        for chunk in body.chunks() {
            hasher.write(&chunk?);
        }
        Ok::<_, std::io::Error>(hasher.finish())
    })
    .await;
    match hashed {
        Ok(Ok(bh)) => Some(bh.into()),
        Ok(Err(e)) => {
            warn!(error = %e, "cannot read the body to sign it; its copies go unsigned");
            None
        }
        Err(e) => {
            error!(error = %e, "the body hash task failed");
            None
        }
    }
}
