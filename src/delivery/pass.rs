//! One delivery pass over a message: send every due transaction's copy, record what
//! happened, bounce what failed, and leave the spool when everything is done.
//!
//! Transactions go in chunks; each chunk's outcomes are journaled with one fsync, unless the
//! message finishes in this pass (then it is simply removed). A crash therefore repeats at
//! most one chunk's deliveries: at-least-once. A journal write that fails keeps the outcomes
//! in memory, never re-sending them while the relay runs (see [`super::journal`]).
//!
//! Within a chunk a pass sends at most `sends_per_pass` copies at once (the upstream's
//! connection count) and builds the next copy only when a send ends, so what a pass holds
//! follows the connections, not the recipients. The decisions about time are
//! [`super::schedule`]'s; a pass reads the clock and hands it the instant. A bounce is
//! spooled here and handed back to the manager to submit: a pass never calls its manager.

use std::sync::Arc;

use bytes::Bytes;
use chrono::Utc;
use tokio::task::JoinSet;
use tracing::{error, warn};

use super::Upstream;
use super::config::DeliveryConfig;
use super::copy::{self, Message};
use super::dsn;
use super::events::DeliveryAttempt;
use super::journal::{Gone, Journal};
use super::schedule::{self, Attempted, PassEnd};
use crate::message::parse::Headers;
use crate::queue_id::QueueId;
use crate::spool::content::Content;
use crate::spool::record::{Meta, RcptState, Record, State};
use crate::spool::{OpenError, Opened, Spool};

/// Transactions sent before their outcomes are journaled together.
const CHUNK: usize = 256;
/// Wait before a pass that could not read or write the spool is tried again.
const SPOOL_TROUBLE_WAIT: i64 = 60_000;

/// What a pass needs.
pub(super) struct Ctx {
    pub spool: Arc<Spool>,
    pub upstream: Arc<Upstream>,
    pub config: DeliveryConfig,
}

/// What a pass hands back to the manager.
#[derive(Debug)]
pub(super) struct Ended {
    /// How it ended.
    pub end: PassEnd,
    /// A bounce it spooled, for the manager to deliver.
    pub dsn: Option<QueueId>,
}

/// A message opened for this pass: its header block in memory, its body where it lies.
struct Loaded {
    meta: Arc<Meta>,
    head: Bytes,
    content: Content,
    state: State,
    headers: Headers,
    eight_bit: bool,
    /// Whether it had a journal file when opened.
    journaled: bool,
}

/// Now, in Unix milliseconds.
pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Run one pass over message `id`, read from the spool. With `force`, every pending
/// transaction is tried, whatever its schedule. `unwritten` holds journal records earlier
/// passes could not write (see [`Journal`]); on return, those still not written.
pub(super) async fn run(
    ctx: &Ctx,
    id: &QueueId,
    force: bool,
    unwritten: &mut Vec<Record>,
    preloaded: Option<Box<Opened>>,
) -> Ended {
    let mut dsn = None;
    let end = deliver(ctx, id, force, unwritten, preloaded, &mut dsn).await;
    Ended { end, dsn }
}

async fn deliver(
    ctx: &Ctx,
    id: &QueueId,
    force: bool,
    unwritten: &mut Vec<Record>,
    preloaded: Option<Box<Opened>>,
    dsn: &mut Option<QueueId>,
) -> PassEnd {
    let loaded = match load(ctx, id, preloaded).await {
        Ok(l) => l,
        Err(end) => return end,
    };
    let Loaded { meta, head, content, mut state, headers, eight_bit, journaled } = loaded;
    if meta.is_held() {
        // Only a release delivers it (see `super::held`).
        return PassEnd::Held(ctx.config.hold_expires(meta.received_at));
    }
    let mut journal = Journal::new(&ctx.spool, id, unwritten);
    for r in journal.unwritten() {
        state.apply(r);
    }
    if journal.write(Vec::new()).await.is_err() {
        return PassEnd::Gone;
    }
    if force && keeps_failures(&meta) {
        let failed = state.unbounced();
        if !failed.is_empty() {
            // An operator retries a failed bounce: its recipients are pending again.
            let record = Record::Requeued { rcpts: failed, at: now_ms() };
            state.apply(&record);
            if journal.write(vec![record]).await.is_err() {
                return PassEnd::Gone;
            }
        }
    }
    let due = schedule::due(&state, &meta.plan, now_ms(), force);
    let chunks: Vec<&[usize]> = due.chunks(CHUNK).collect();
    let signer = ctx.config.dkim.load_full();
    let body_hash = match chunks.is_empty() {
        true => None,
        false => copy::body_hash(&signer, &meta.plan, &head, &headers, &content).await,
    };
    let calendars = match chunks.is_empty() {
        true => Vec::new(),
        // Never the original invite instead: no copy goes until its parts can be read.
        false => match copy::calendar_parts(&meta.plan, &content).await {
            Some(parts) => parts,
            None => return PassEnd::Later(now_ms() + SPOOL_TROUBLE_WAIT),
        },
    };
    let original = Arc::new(crate::dkim::HeaderIndex::new(head.slice(..headers.body_start)));
    for (n, chunk) in chunks.iter().enumerate() {
        let (content, calendars, body_hash, original) = (&content, &calendars[..], body_hash.as_ref(), &original);
        let message = Message {
            original,
            meta: &meta,
            head: &head,
            content,
            headers: &headers,
            eight_bit,
            signer: &signer,
            body_hash,
            calendars,
        };
        let results = attempt(ctx, &message, &state, chunk).await;
        log_attempts(&ctx.config, &meta, &state, &results);
        let records = schedule::records_for(&ctx.config, &meta, &state, results, now_ms());
        for r in &records {
            state.apply(r);
        }
        let finished = n + 1 == chunks.len() && leaves_the_spool(&meta, &state);
        if !finished && journal.write(records).await.is_err() {
            return PassEnd::Gone;
        }
    }
    if let Err(end) = bounce(ctx, &meta, &head, &mut state, &mut journal, dsn).await {
        return end;
    }
    if state.is_done() {
        if let Err(e) = ctx.spool.remove_delivered(id, journaled || journal.touched(), meta.size).await {
            warn!(queue_id = %id, error = %e, "cannot remove a finished message from the spool");
        }
        return PassEnd::Done;
    }
    // Records only in memory: try the journal again soon, whatever the schedule.
    let catch_up = journal.is_behind().then(|| now_ms() + SPOOL_TROUBLE_WAIT);
    schedule::after_pass(&state, &meta.plan, catch_up)
}

/// A message whose permanent failures are kept rather than bounced: a bounce, or anything
/// else with the null sender (no one to tell).
fn keeps_failures(meta: &Meta) -> bool {
    meta.dsn || meta.sender.is_empty()
}

/// Whether the message leaves the spool once every recipient is final.
fn leaves_the_spool(meta: &Meta, state: &State) -> bool {
    let all_final = state.rcpts.iter().all(RcptState::is_final);
    all_final && !(keeps_failures(meta) && state.rcpts.iter().any(|r| matches!(r, RcptState::Failed { .. })))
}

/// Open the message (checked against its length and checksum), repair a torn journal, and
/// parse the header block. A damaged message is set aside, never delivered.
async fn load(ctx: &Ctx, id: &QueueId, preloaded: Option<Box<Opened>>) -> Result<Loaded, PassEnd> {
    let (paths, owned_id) = (ctx.spool.paths().clone(), id.clone());
    let opened = match preloaded {
        Some(opened) => Ok(*opened),
        None => read(paths, owned_id).await,
    };
    let opened = match opened {
        Ok(o) => o,
        Err(OpenError::Gone) => return Err(PassEnd::Gone),
        Err(OpenError::Damaged(reason)) => return Err(set_aside(ctx, id, &reason).await),
        Err(OpenError::Io(e)) => {
            error!(queue_id = %id, error = %e, "cannot read the message from the spool");
            return Err(PassEnd::Later(now_ms() + SPOOL_TROUBLE_WAIT));
        }
    };
    let headers = match Headers::parse_layout(&opened.head) {
        Ok(h) => h,
        Err(e) => return Err(set_aside(ctx, id, &format!("header block cannot be parsed: {e}")).await),
    };
    let Opened { meta, state, head, content, eight_bit, journaled, .. } = opened;
    Ok(Loaded { meta: Arc::new(meta), head, content, state, headers, eight_bit, journaled })
}

/// Read a message back from the spool (on a blocking thread).
async fn read(paths: crate::spool::SpoolPaths, owned_id: QueueId) -> Result<Opened, OpenError> {
    tokio::task::spawn_blocking(move || {
        let opened = paths.open(&owned_id)?;
        if opened.journal_cut > 0 {
            warn!(queue_id = %owned_id, bytes = opened.journal_cut, "cut a torn last line off the delivery journal");
        }
        Ok::<_, OpenError>(opened)
    })
    .await
    .unwrap_or_else(|e| Err(OpenError::Io(std::io::Error::other(e))))
}

/// Move a damaged message to `damaged/` (or, if even that fails, leave it and try later).
pub(super) async fn set_aside(ctx: &Ctx, id: &QueueId, reason: &str) -> PassEnd {
    let (paths, owned_id, why) = (ctx.spool.paths().clone(), id.clone(), reason.to_string());
    let moved = tokio::task::spawn_blocking(move || paths.quarantine(&owned_id, &why))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    crate::events::SpoolDamaged { id, reason }.emit();
    match moved {
        Ok(()) => PassEnd::Gone,
        Err(e) => {
            error!(queue_id = %id, error = %e, "cannot move a damaged message to damaged/");
            PassEnd::Later(now_ms() + SPOOL_TROUBLE_WAIT)
        }
    }
}

/// Send the copies of `txns`, at most `sends_per_pass` at once: a copy is built when a send
/// ends, never ahead of the connections that will carry it.
///
/// A message of one copy (the most common) is sent on the pass's own task.
async fn attempt(ctx: &Ctx, message: &Message<'_>, state: &State, txns: &[usize]) -> Vec<Attempted> {
    let meta = message.meta;
    let send = |t: usize| {
        let pending = state.pending_in(&meta.plan, t);
        let unsigned = message.copy(t);
        let (upstream, meta) = (ctx.upstream.clone(), meta.clone());
        async move {
            // A signature costs a millisecond of CPU: made off the async threads.
            let copy = match unsigned.signs() {
                true => tokio::task::spawn_blocking(move || unsigned.finish()).await.expect("signing a copy"),
                false => unsigned.finish(),
            };
            let rcpts: Vec<(usize, &str)> = pending.iter().map(|&i| (i, &meta.recipients[i])).collect();
            let outcomes = upstream.send(&meta.id, &meta.sender, &rcpts, &copy).await;
            (t, pending, outcomes)
        }
    };
    if let [t] = txns {
        return vec![send(*t).await];
    }
    let mut sends = JoinSet::new();
    let mut waiting = txns.iter();
    let mut results = Vec::with_capacity(txns.len());
    loop {
        while sends.len() < ctx.config.sends_per_pass {
            let Some(&t) = waiting.next() else { break };
            sends.spawn(send(t));
        }
        match sends.join_next().await {
            Some(Ok(result)) => results.push(result),
            Some(Err(e)) => error!(queue_id = %meta.id, error = %e, "a delivery task failed"),
            None => return results,
        }
    }
}

/// Log and count each recipient's outcome.
fn log_attempts(config: &DeliveryConfig, meta: &Meta, state: &State, results: &[Attempted]) {
    for (txn, rcpts, outcomes) in results {
        let attempts = state.txns[*txn].attempts + 1;
        for (&rcpt, outcome) in rcpts.iter().zip(outcomes) {
            DeliveryAttempt { id: &meta.id, recipient: &meta.recipients[rcpt], outcome, attempts }
                .emit(config.redaction);
        }
    }
}

/// Tell the sender about failed recipients: one DSN for all of them, spooled, its id left in
/// `queued` for the manager to deliver. A DSN or another message with the null sender sends
/// none: its failures are kept, and it stays queued as a failed bounce.
async fn bounce(
    ctx: &Ctx,
    meta: &Meta,
    message: &[u8],
    state: &mut State,
    journal: &mut Journal<'_>,
    queued: &mut Option<QueueId>,
) -> Result<(), PassEnd> {
    let failed = state.unbounced();
    if failed.is_empty() {
        return Ok(());
    }
    if keeps_failures(meta) {
        // Never dropped: it stays queued as a failed bounce (see `PassEnd::Parked`).
        let reply = state.last_reply.clone().unwrap_or_default();
        super::events::BounceFailed { id: &meta.id, failed: failed.len(), reply: &reply }.emit(ctx.config.redaction);
        return Ok(());
    }
    let dsn = match queue_dsn(ctx, meta, message, state, &failed).await {
        Ok(id) => {
            *queued = Some(id.clone());
            Some(id)
        }
        Err(e) => {
            error!(queue_id = %meta.id, error = %e, "cannot queue the bounce");
            return Err(PassEnd::Later(now_ms() + SPOOL_TROUBLE_WAIT));
        }
    };
    let record = Record::Bounced { rcpts: failed, at: now_ms(), dsn };
    state.apply(&record);
    if !state.is_done() {
        journal.write(vec![record]).await.map_err(|Gone| PassEnd::Gone)?;
    }
    Ok(())
}

async fn queue_dsn(
    ctx: &Ctx,
    meta: &Meta,
    message: &[u8],
    state: &State,
    failed: &[usize],
) -> std::io::Result<QueueId> {
    let failures = dsn::failures(meta, state, failed);
    let remote = ctx.upstream.remote();
    let report = dsn::Report {
        hostname: &ctx.config.hostname,
        remote: &remote,
        original_id: &meta.id,
        arrival: meta.received_at,
        sender: &meta.sender,
        failures: &failures,
        held_for: None,
    };
    let id = QueueId::generate();
    let bytes = Bytes::from(dsn::build(&report, &id, message, Utc::now()));
    ctx.spool.store(dsn_meta(id.clone(), &meta.sender), vec![bytes]).await?;
    super::events::BounceQueued { id: &meta.id, dsn: &id, failed: failures.len(), sender: &meta.sender }
        .emit(ctx.config.redaction);
    Ok(id)
}

/// The envelope of a delivery status notification to `to`, with the null sender.
pub(super) fn dsn_meta(id: QueueId, to: &str) -> Meta {
    Meta::generated(id, to, now_ms())
}
