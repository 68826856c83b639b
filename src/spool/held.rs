//! Held messages on disk (SPEC §10): what a person is shown of them, and the two changes a
//! person can make, as blocking operations on the spool files. The running relay's delivery
//! manager calls them one at a time (it serializes release and delete); the offline queue CLI
//! calls them under the spool's lock.
//!
//! A held message is an ordinary message file whose envelope line says `action: hold` with
//! an empty plan, so it survives restarts and crashes as any queued message does. Releasing
//! it appends one [`Record::Released`] to its journal, holding the plan made then; from that
//! record on it is delivered like any other message. Deleting it removes its files.

use std::fs::File;
use std::io::{self, BufReader};

use bytes::Bytes;

use super::content::Content;
use super::record::{Meta, Record, State, resolve_release};
use super::{OpenError, SpoolPaths, header_prefix, read_envelope};
use crate::config::Action;
use crate::hold::{HeldMessage, HeldSummary, HoldError, HoldOutcome, ReleaseAs};
use crate::message::calendar::{self, CalendarPart};
use crate::message::decide::{Decision, Policy};
use crate::message::parse::Headers;
use crate::plan::{self, Plan, Rewrite};
use crate::queue_id::QueueId;
use crate::rewrite::calendar::CalendarRewrite;

/// Longest subject kept for a listing (characters).
const MAX_SUBJECT: usize = 200;

/// What a release did, for the log and the metrics.
#[derive(Debug)]
pub struct Released {
    /// The message's envelope, as it was while held.
    pub meta: Meta,
    /// The action of the plan made at release (`pass` when it no longer leaks).
    pub action: Action,
    /// Upstream transactions planned.
    pub transactions: usize,
}

/// The calendar parts of a stored message (offsets from its first byte): it is scanned in
/// chunks, and read whole only when it names a calendar type.
fn calendar_parts(content: &Content) -> io::Result<Vec<CalendarPart>> {
    let mut tail: Vec<u8> = Vec::new();
    let mut found = false;
    for chunk in content.chunks() {
        let chunk = chunk?;
        tail.extend_from_slice(&chunk[..chunk.len().min(64)]);
        found = calendar::may_have_calendar(&tail) || calendar::may_have_calendar(&chunk);
        if found {
            break;
        }
        tail = chunk[chunk.len().saturating_sub(64)..].to_vec();
    }
    if !found {
        return Ok(Vec::new());
    }
    Ok(calendar::parts(&content.to_bytes()?))
}

impl SpoolPaths {
    /// A message's envelope (a release applied), its state, and the start of its bytes (at
    /// least the header block), without reading or checking the rest of it.
    pub fn load_head(&self, id: &QueueId) -> io::Result<(Meta, State, Bytes)> {
        let file = File::open(self.message_file(id))?;
        let total = file.metadata()?.len();
        let (mut meta, line_len) = read_envelope(&mut BufReader::new(&file))?;
        let content = Content::File { file: std::sync::Arc::new(file), offset: line_len, len: total - line_len };
        let head = header_prefix(&content)?;
        let records = resolve_release(&mut meta, self.journal(id)?);
        let state = State::replay(&meta, &records);
        Ok((meta, state, head))
    }

    /// Release a held message as `how`: the plan is made now under `policy` (see
    /// [`plan::for_release`]) and journaled durably before this returns. `Ok(Err(_))` when
    /// the message is not held or not there; nothing changes then.
    pub fn release_blocking(
        &self,
        id: &QueueId,
        how: ReleaseAs,
        policy: &Policy,
        now: i64,
    ) -> Result<Result<Released, HoldOutcome>, HoldError> {
        let opened = match self.open(id) {
            Ok(o) => o,
            Err(OpenError::Gone) => return Ok(Err(HoldOutcome::NotFound)),
            Err(e) => return Err(HoldError::Spool(format!("{id}: {e}"))),
        };
        if !opened.meta.is_held() {
            return Ok(Err(HoldOutcome::NotHeld));
        }
        let mut headers = Headers::parse(&opened.head).map_err(|e| HoldError::Spool(format!("{id}: {e}")))?;
        let calendar = calendar_parts(&opened.content).map_err(|e| HoldError::Spool(format!("{id}: {e}")))?;
        headers.attendees = calendar.iter().flat_map(|p| p.attendees.iter().cloned()).collect();
        // An invite cannot be undisclosed (SPEC §11).
        let how = if how == ReleaseAs::Undisclose && !headers.attendees.is_empty() { ReleaseAs::Explode } else { how };
        // Planned with the settings of the rule that held it, as in force now.
        let policy = policy.for_rule(opened.meta.decision.rule.as_deref().unwrap_or_default());
        let (decision, mut plan) = plan::for_release(&headers, &opened.meta.recipients, &policy, how);
        if decision.action == Action::Explode {
            plan.calendar = CalendarRewrite::plan(&calendar, 0, &policy);
        }
        let transactions = plan.transactions.len();
        let record = Record::Released { at: now, how, action: decision.action, plan };
        self.append_blocking(id, &[record]).map_err(|e| HoldError::Spool(format!("{id}: {e}")))?;
        Ok(Ok(Released { meta: opened.meta, action: decision.action, transactions }))
    }

    /// Delete a held message (its files). `Ok(Err(_))` when it is not held or not there.
    pub fn delete_held_blocking(&self, id: &QueueId) -> Result<Result<(Meta, Bytes), HoldOutcome>, HoldError> {
        let (meta, head) = match self.load_head(id) {
            Ok((meta, _, head)) => (meta, head),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Err(HoldOutcome::NotFound)),
            Err(e) => return Err(HoldError::Spool(format!("{id}: {e}"))),
        };
        if !meta.is_held() {
            return Ok(Err(HoldOutcome::NotHeld));
        }
        match self.remove(id) {
            Ok(()) => Ok(Ok((meta, head))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Err(HoldOutcome::NotFound)),
            Err(e) => Err(HoldError::Spool(format!("{id}: {e}"))),
        }
    }

    /// The held messages among `ids`, oldest first, as a list shows them (`max_age`:
    /// `hold.max_age` in milliseconds). Messages that vanished meanwhile are left out; one
    /// that cannot be read is an error.
    pub fn held_summaries(&self, ids: &[QueueId], max_age: i64) -> Result<Vec<HeldSummary>, HoldError> {
        let mut list = Vec::new();
        for id in ids {
            // The envelope first: only a held message's header block is read.
            let held = self.load_meta(id).and_then(|(meta, _)| meta.is_held().then(|| self.load_head(id)).transpose());
            match held {
                Ok(Some((meta, _, head))) if meta.is_held() => list.push(summary(&meta, &head, max_age)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(HoldError::Spool(format!("{id}: {e}"))),
            }
        }
        list.sort_by_key(|s| (s.received_at, s.id.clone()));
        Ok(list)
    }

    /// One held message as its page shows it; `None` when it is not held or not there.
    pub fn held_message(&self, id: &QueueId, max_age: i64, policy: &Policy) -> Result<Option<HeldMessage>, HoldError> {
        let (meta, _, head) = match self.load_head(id) {
            Ok(loaded) if loaded.0.is_held() => loaded,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(HoldError::Spool(format!("{id}: {e}"))),
        };
        let headers = Headers::parse(&head).map_err(|e| HoldError::Spool(format!("{id}: {e}")))?;
        let rule = meta.decision.rule.as_deref().unwrap_or(crate::config::DEFAULT_RULE);
        let policy = policy.for_rule(rule);
        let by = if rule == crate::config::DEFAULT_RULE { String::new() } else { format!(" (rule {rule})") };
        let decision = format!(
            "{}: {}, at most {} allowed; action hold{by}",
            if meta.decision.leak { "leak" } else { "no leak" },
            exposure_text(meta.decision.exposure),
            policy.max_visible_external,
        );
        let plans = [ReleaseAs::Explode, ReleaseAs::Undisclose, ReleaseAs::Pass]
            .into_iter()
            .map(|how| {
                let (decision, plan) = plan::for_release(&headers, &meta.recipients, &policy, how);
                (how, describe(&decision, &plan))
            })
            .collect();
        Ok(Some(HeldMessage {
            summary: summary(&meta, &head, max_age),
            header: String::from_utf8_lossy(&head[..headers.header_end.min(head.len())]).into_owned(),
            recipients: meta.recipients.iter().map(str::to_string).collect(),
            decision,
            signals: meta.decision.signals.clone(),
            plans,
        }))
    }
}

/// `1000 external addresses visible`.
fn exposure_text(n: usize) -> String {
    format!("{n} external address{} visible", if n == 1 { "" } else { "es" })
}

/// A held message's listing from its envelope and header block.
fn summary(meta: &Meta, head: &[u8], max_age: i64) -> HeldSummary {
    HeldSummary {
        id: meta.id.clone(),
        received_at: meta.received_at,
        expires_at: meta.received_at.saturating_add(max_age),
        sender: meta.sender.clone(),
        subject: subject(head),
        recipients: meta.recipients.len(),
        exposure: meta.decision.exposure,
        rule: meta.decision.rule.clone(),
    }
}

/// What a release would deliver, in words.
fn describe(decision: &Decision, plan: &Plan) -> String {
    let count = |f: fn(&Rewrite) -> bool| -> usize {
        plan.transactions.iter().filter(|t| f(&t.rewrite)).map(|t| t.recipients.len()).sum()
    };
    let n = plan.transactions.len();
    let mut parts = Vec::new();
    let exploded = count(|r| matches!(r, Rewrite::Explode { .. }));
    if exploded > 0 {
        parts.push(format!("a copy to each of {exploded} external recipient{} alone", plural(exploded)));
    }
    let undisclosed = count(|r| *r == Rewrite::Undisclose);
    if undisclosed > 0 {
        parts.push(format!(
            "one copy to {undisclosed} recipient{} with To: undisclosed-recipients:;",
            plural(undisclosed)
        ));
    }
    let original = count(|r| *r == Rewrite::Original);
    if original > 0 {
        parts.push(format!("the message unchanged to {original} recipient{}", plural(original)));
    }
    let leak = if decision.leak { "" } else { " (it does not leak under the policy in force)" };
    format!("{n} transaction{}: {}{leak}", plural(n), parts.join("; "))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// The first `Subject:` field of a header block, unfolded, decoded (RFC 2047), without
/// control characters, at most `MAX_SUBJECT` characters; empty when there is none.
pub fn subject(head: &[u8]) -> String {
    let end = memchr::memmem::find(head, b"\r\n\r\n").map_or(head.len(), |i| i + 2);
    let block = &head[..end];
    let mut lines = block.split_inclusive(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if line.len() < 8 || !line[..8].eq_ignore_ascii_case(b"subject:") {
            continue;
        }
        let mut field = line.to_vec();
        while let Some(next) = lines.next_if(|l| matches!(l.first(), Some(b' ' | b'\t'))) {
            field.extend_from_slice(next);
        }
        field.extend_from_slice(b"\r\n");
        let parsed = mail_parser::MessageParser::new().parse_headers(&field);
        let text = parsed.as_ref().and_then(|m| m.subject()).map(str::to_string);
        let text = text.unwrap_or_else(|| String::from_utf8_lossy(&field[8..]).into_owned());
        let clean: String = text
            .chars()
            .filter_map(|c| match c {
                c if c.is_whitespace() => Some(' '),
                c if c.is_control() => None,
                c => Some(c),
            })
            .collect();
        return clean.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(MAX_SUBJECT).collect();
    }
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subject_is_unfolded_decoded_and_cleaned() {
        let head = b"Received: x\r\nSUBJECT: =?UTF-8?B?SMOkbmRsZXI=?= news\r\n\tfolded\r\nTo: a@x.test\r\n\r\nbody";
        assert_eq!(subject(head), "H\u{e4}ndler news folded");
        assert_eq!(subject(b"Subject: a\x1b[2J\tb\r\n\r\n"), "a[2J b");
        assert_eq!(subject(b"To: a@x.test\r\n\r\nSubject: not a header\r\n"), "");
        let long = format!("Subject: {}\r\n\r\n", "x".repeat(500));
        assert_eq!(subject(long.as_bytes()).len(), MAX_SUBJECT);
    }
}
