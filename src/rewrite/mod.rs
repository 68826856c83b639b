//! Header rewriting: the header block of each transaction's copy (pure). A copy is this new
//! header block followed by the original body bytes, shared among all copies.
//!
//! Only the address fields change: every other header field keeps its bytes and its place.
//! Explode and undisclose replace To/Cc (at the first of To, Cc, Bcc) and Resent-To/Resent-Cc
//! (when present), drop header lines that are not fields but show an address, and add
//! `X-Bccguard`; every copy loses Bcc and Resent-Bcc.

mod encode;

use bytes::Bytes;

use crate::addresses::Addresses;
use crate::message::parse::{FieldKind, Headers, Mailbox};
use crate::plan::{Plan, Rewrite, Transaction};

/// The value of the mark on an exploded copy.
pub const MARK_EXPLODED: &str = "exploded";
/// The value of the mark on an undisclosed copy.
pub const MARK_UNDISCLOSED: &str = "undisclosed";

/// The new To/Cc of a rewritten copy, as complete field text.
#[derive(Debug)]
struct Replacement {
    primary: String,
    resent: String,
    mark: &'static str,
}

/// The copy for `txn`: its header block and the body, shared with every other copy. A copy
/// that changes nothing (the original, with no Bcc field to remove) is the original's bytes.
pub fn copy(message: &Bytes, headers: &Headers, plan: &Plan, txn: &Transaction, recipients: &Addresses) -> [Bytes; 2] {
    [head(message, headers, plan, txn, recipients), message.slice(headers.body_start..)]
}

/// The header block of `txn`'s copy; `message` holds at least the original's header block.
/// A copy that changes nothing shares the original's bytes.
pub fn head(message: &Bytes, headers: &Headers, plan: &Plan, txn: &Transaction, recipients: &Addresses) -> Bytes {
    let bcc = headers.fields.iter().any(|f| matches!(f.kind, FieldKind::Bcc | FieldKind::ResentBcc));
    if txn.rewrite == Rewrite::Original && !bcc {
        message.slice(..headers.body_start)
    } else {
        Bytes::from(header_block(message, headers, plan, txn, recipients))
    }
}

/// The header block (empty line included) of `txn`'s copy of `message`. The copy is this
/// followed by `message[headers.body_start..]`.
pub fn header_block(
    message: &[u8],
    headers: &Headers,
    plan: &Plan,
    txn: &Transaction,
    recipients: &Addresses,
) -> Vec<u8> {
    let replacement = replacement(plan, txn, recipients);
    let mut out = Vec::with_capacity(headers.body_start + 512);
    let (mut pos, mut primary_done, mut resent_done) = (0, false, false);
    for field in &headers.fields {
        out.extend_from_slice(&message[pos..field.range.start.max(pos)]);
        let keep = match (&replacement, field.kind) {
            (None, FieldKind::Bcc | FieldKind::ResentBcc) => false,
            (None, _) => true,
            // A stray line may show addresses; a rewritten copy shows none but its own.
            (Some(_), FieldKind::Mark | FieldKind::Stray) => false,
            (Some(r), kind) if kind.is_resent() => {
                if !resent_done {
                    out.extend_from_slice(r.resent.as_bytes());
                    resent_done = true;
                }
                false
            }
            (Some(r), _) => {
                if !primary_done {
                    out.extend_from_slice(r.primary.as_bytes());
                    primary_done = true;
                }
                false
            }
        };
        if keep {
            out.extend_from_slice(&message[field.range.clone()]);
        }
        pos = pos.max(field.range.end);
    }
    out.extend_from_slice(&message[pos.min(headers.header_end)..headers.header_end]);
    if let Some(r) = &replacement {
        if !primary_done {
            out.extend_from_slice(r.primary.as_bytes());
        }
        out.extend_from_slice(format!("X-Bccguard: {}\r\n", r.mark).as_bytes());
    }
    out.extend_from_slice(&message[headers.header_end..headers.body_start]);
    out
}

/// The fields that replace To/Cc and Resent-To/Resent-Cc; `None` for the original.
fn replacement(plan: &Plan, txn: &Transaction, recipients: &Addresses) -> Option<Replacement> {
    let (to, mark) = match &txn.rewrite {
        Rewrite::Original => return None,
        Rewrite::Explode { name } => {
            let address = recipients[txn.recipients[0]].to_string();
            let mailbox = Mailbox { name: name.clone(), address };
            (encode::mailbox(&mailbox), MARK_EXPLODED)
        }
        Rewrite::Undisclose => (vec!["undisclosed-recipients:;".to_string()], MARK_UNDISCLOSED),
    };
    let to_and_cc = |to_name: &str, cc_name: &str, cc: &[Mailbox]| {
        let mut text = encode::field(to_name, std::slice::from_ref(&to));
        if !cc.is_empty() {
            let items: Vec<_> = cc.iter().map(encode::mailbox).collect();
            text.push_str(&encode::field(cc_name, &items));
        }
        text
    };
    Some(Replacement {
        primary: to_and_cc("To", "Cc", &plan.cc),
        resent: to_and_cc("Resent-To", "Resent-Cc", &plan.resent_cc),
        mark,
    })
}

#[cfg(test)]
mod tests;
