//! The webhook: one JSON POST per event to `notify.webhook`, from a bounded in-memory queue.
//!
//! `Queue::push` builds the payload and never waits: when the queue is full the event is
//! dropped and counted. One task posts the events in order, each request under
//! `notify.webhook_timeout`; a connection error, a timeout, a 5xx, 408 or 429 is retried after
//! `notify.webhook_backoff`, doubling, up to `notify.webhook_attempts` attempts; any other
//! answer that is not 2xx is final. Whether to retry and how long to wait are pure functions
//! ([`verdict`], [`backoff`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::SecondsFormat;
use http_body_util::Full;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::events::{WebhookDelivered, WebhookDropped, WebhookFailed, WebhookRetry};
use super::{Event, EventKind, STOP_WAIT};
use crate::config::{NotifyConfig, WebhookTarget};
use crate::message::address;

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The JSON body of one post.
#[derive(Debug, Serialize)]
pub struct Payload<'a> {
    /// `held`, `exploded`, `undisclosed`, `rejected` or `breaker_tripped`.
    pub event: &'static str,
    /// The relay's host name (which replica).
    pub relay: &'a str,
    /// The message's queue id.
    pub queue_id: &'a str,
    /// The rule that decided; `null` for the top-level policy.
    pub rule: Option<&'a str>,
    /// The action taken.
    pub action: &'a str,
    /// Distinct external visible addresses.
    pub exposure: usize,
    /// Envelope recipients.
    pub recipients: usize,
    /// The envelope sender, redacted (`s***@example.com`) unless `notify.webhook_addresses`;
    /// `<>` for the null sender.
    pub sender: String,
    /// The client's IP address.
    pub client: &'a str,
    /// When, RFC 3339 UTC.
    pub time: String,
    /// For `rejected`: whether the client had already been answered 250.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_accept: Option<bool>,
    /// For `breaker_tripped`: the key (redacted like the sender), the count and the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub breaker: Option<Breaker>,
}

/// What tripped a breaker.
#[derive(Debug, Serialize)]
pub struct Breaker {
    /// The key counted (sender, AUTH user or client address).
    pub key: String,
    /// Leaking messages counted.
    pub count: u64,
    /// The window, in seconds.
    pub window_secs: u64,
}

/// The JSON body for `event` from relay `relay`; full addresses only with `addresses`.
pub fn payload(event: &Event, relay: &str, addresses: bool) -> Vec<u8> {
    let sender = match (event.sender.is_empty(), addresses) {
        (true, _) => "<>".to_string(),
        (false, true) => event.sender.clone(),
        (false, false) => address::redact(&event.sender),
    };
    let breaker = match &event.kind {
        EventKind::BreakerTripped { key, count, window } => Some(Breaker {
            key: if addresses { key.clone() } else { address::redact_in_text(key) },
            count: *count,
            window_secs: window.as_secs(),
        }),
        _ => None,
    };
    let body = Payload {
        event: event.kind.name(),
        relay,
        queue_id: event.queue_id.as_str(),
        rule: event.rule.as_deref(),
        action: event.action,
        exposure: event.exposure,
        recipients: event.recipients,
        sender,
        client: &event.client,
        time: event.at.to_rfc3339_opts(SecondsFormat::Millis, true),
        after_accept: match event.kind {
            EventKind::Rejected { after_accept } => Some(after_accept),
            _ => None,
        },
        breaker,
    };
    serde_json::to_vec(&body).expect("a payload serializes")
}

/// One queued post: the queue id (for logs) and the body.
type Item = (String, Bytes);

/// The sending end of the webhook queue.
pub(super) struct Queue {
    tx: mpsc::Sender<Item>,
    relay: String,
    addresses: bool,
    /// Whether the last push was dropped (only the first drop of a run is logged).
    dropping: AtomicBool,
}

impl Queue {
    /// A queue of `notify.queue_size` events, and its receiving end for the [`Poster`].
    pub fn new(config: &NotifyConfig, relay: &str) -> (Queue, mpsc::Receiver<Item>) {
        let (tx, rx) = mpsc::channel(config.queue_size.max(1));
        let queue = Queue {
            tx,
            relay: relay.to_string(),
            addresses: config.webhook_addresses,
            dropping: AtomicBool::new(false),
        };
        (queue, rx)
    }

    /// Queue a post about `event`, or drop it (counted) when the queue is full. Returns
    /// whether it was queued.
    pub fn push(&self, event: &Event) -> bool {
        let body = Bytes::from(payload(event, &self.relay, self.addresses));
        match self.tx.try_send((event.queue_id.to_string(), body)) {
            Ok(()) => {
                self.dropping.store(false, Ordering::Relaxed);
                true
            }
            Err(_) => {
                let first = !self.dropping.swap(true, Ordering::Relaxed);
                WebhookDropped { id: &event.queue_id, first }.emit();
                false
            }
        }
    }
}

/// What one attempt's result calls for.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The endpoint took it (2xx).
    Delivered,
    /// Worth another attempt: no connection, a timeout, 5xx, 408 or 429.
    Retry(String),
    /// Final: any other status.
    Refused(String),
}

/// The verdict on one attempt: the status, or why there was none.
pub fn verdict(result: Result<u16, String>) -> Verdict {
    match result {
        Ok(s) if (200..300).contains(&s) => Verdict::Delivered,
        Ok(s) if s >= 500 || s == 408 || s == 429 => Verdict::Retry(format!("HTTP status {s}")),
        Ok(s) => Verdict::Refused(format!("HTTP status {s}")),
        Err(e) => Verdict::Retry(e),
    }
}

/// The wait after failed attempt number `attempt` (from 1): `base`, doubling, at most five
/// minutes.
pub fn backoff(base: Duration, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(20));
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

/// Posts queued events to the endpoint.
pub(super) struct Poster {
    target: Arc<WebhookTarget>,
    timeout: Duration,
    attempts: u32,
    backoff: Duration,
}

impl Poster {
    /// A poster to `target` with `[notify]`'s timeout, attempts and backoff.
    pub fn new(target: WebhookTarget, config: &NotifyConfig) -> Poster {
        Poster {
            target: Arc::new(target),
            timeout: config.webhook_timeout.0,
            attempts: config.webhook_attempts.max(1),
            backoff: config.webhook_backoff.0,
        }
    }

    /// Post events in order until `stop`; then each one still queued once, for a few
    /// seconds at most (the rest are given up).
    pub async fn run(self, mut items: mpsc::Receiver<Item>, stop: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                item = items.recv() => match item {
                    Some((id, body)) => self.deliver(&id, body, &stop).await,
                    None => return,
                },
            }
        }
        items.close();
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while let Ok((id, body)) = items.try_recv() {
            let attempt = tokio::time::timeout_at(deadline, post(&self.target, body, self.timeout));
            let result = attempt.await.unwrap_or_else(|_| Err("shutting down".into()));
            match verdict(result) {
                Verdict::Delivered => WebhookDelivered { id: &id, attempts: 1 }.emit(),
                Verdict::Retry(e) | Verdict::Refused(e) => WebhookFailed { id: &id, attempts: 1, error: &e }.emit(),
            }
        }
    }

    /// Post one event, retrying as [`verdict`] and [`backoff`] say; no retry once `stop`.
    async fn deliver(&self, id: &str, body: Bytes, stop: &CancellationToken) {
        let mut attempt = 1;
        loop {
            let result = tokio::select! {
                result = post(&self.target, body.clone(), self.timeout) => result,
                _ = past_stop(stop) => Err("shutting down".into()),
            };
            let error = match verdict(result) {
                Verdict::Delivered => return WebhookDelivered { id, attempts: attempt }.emit(),
                Verdict::Refused(e) => return WebhookFailed { id, attempts: attempt, error: &e }.emit(),
                Verdict::Retry(e) => e,
            };
            if attempt >= self.attempts || stop.is_cancelled() {
                return WebhookFailed { id, attempts: attempt, error: &error }.emit();
            }
            WebhookRetry { id, attempts: attempt, error: &error }.emit();
            tokio::select! {
                _ = tokio::time::sleep(backoff(self.backoff, attempt)) => {}
                _ = stop.cancelled() => return WebhookFailed { id, attempts: attempt, error: &error }.emit(),
            }
            attempt += 1;
        }
    }
}

/// Resolves a few seconds after `stop`: a post still in flight then is abandoned.
async fn past_stop(stop: &CancellationToken) {
    stop.cancelled().await;
    tokio::time::sleep(STOP_WAIT).await;
}

/// One POST of `body` within `timeout`, connecting included: the response status, or why
/// there is none. Each post has its own connection (events are rare; nothing to pool).
async fn post(target: &WebhookTarget, body: Bytes, timeout: Duration) -> Result<u16, String> {
    let request = Request::post(&target.path)
        .header(hyper::header::HOST, &target.authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("bccguard/", env!("CARGO_PKG_VERSION")))
        .header(hyper::header::CONNECTION, "close")
        .body(Full::new(body))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let exchange = async {
        let stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", target.authority))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        // Aborted when this exchange ends, however it ends (a timeout drops it midway).
        let _driver = AbortOnDropHandle::new(tokio::spawn(connection));
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        Ok(response.status().as_u16())
    };
    tokio::time::timeout(timeout, exchange).await.unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
}

#[cfg(test)]
mod tests;
