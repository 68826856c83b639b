use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::config::Duration as ConfigDuration;
use crate::metrics::metrics;
use crate::queue_id::QueueId;

fn event(kind: EventKind) -> Event {
    Event {
        kind,
        queue_id: QueueId::parse("0641F2A3B4C5D001").unwrap(),
        rule: None,
        action: "reject",
        exposure: 1000,
        recipients: 1002,
        sender: "shop@example.com".into(),
        subject: Some("never posted".into()),
        client: "192.0.2.7".into(),
        generated: false,
        at: DateTime::parse_from_rfc3339("2026-11-29T12:00:00.250Z").unwrap().with_timezone(&Utc),
    }
}

#[test]
fn the_payload_has_the_fields_and_a_redacted_sender() {
    let body = payload(&event(EventKind::Rejected { after_accept: false }), "relay.test", false);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "{\"event\":\"rejected\",\"relay\":\"relay.test\",\"queue_id\":\"0641F2A3B4C5D001\",\"rule\":null,\
         \"action\":\"reject\",\"exposure\":1000,\"recipients\":1002,\"sender\":\"s***@example.com\",\
         \"client\":\"192.0.2.7\",\"time\":\"2026-11-29T12:00:00.250Z\",\"after_accept\":false}"
    );
}

#[test]
fn full_addresses_only_when_asked_and_the_breaker_is_described() {
    let trip = EventKind::BreakerTripped { key: "shop@example.com".into(), count: 5, window: Duration::from_secs(600) };
    let mut e = event(trip);
    e.rule = Some("marketing".into());
    let json: serde_json::Value = serde_json::from_slice(&payload(&e, "r", false)).unwrap();
    assert_eq!(json["event"], "breaker_tripped");
    assert_eq!(json["rule"], "marketing");
    assert_eq!(json["breaker"], serde_json::json!({"key": "s***@example.com", "count": 5, "window_secs": 600}));
    assert!(json.get("after_accept").is_none() && json.get("subject").is_none());
    let json: serde_json::Value = serde_json::from_slice(&payload(&e, "r", true)).unwrap();
    assert_eq!(json["sender"], "shop@example.com");
    assert_eq!(json["breaker"]["key"], "shop@example.com");
    e.sender = String::new();
    let json: serde_json::Value = serde_json::from_slice(&payload(&e, "r", false)).unwrap();
    assert_eq!(json["sender"], "<>");
}

#[test]
fn verdicts_and_backoff() {
    assert_eq!(verdict(Ok(200)), Verdict::Delivered);
    assert_eq!(verdict(Ok(204)), Verdict::Delivered);
    for status in [500, 502, 503, 408, 429] {
        assert!(matches!(verdict(Ok(status)), Verdict::Retry(_)), "{status}");
    }
    for status in [301, 400, 401, 404] {
        assert!(matches!(verdict(Ok(status)), Verdict::Refused(_)), "{status}");
    }
    assert_eq!(verdict(Err("refused".into())), Verdict::Retry("refused".into()));
    let base = Duration::from_secs(2);
    let waits: Vec<u64> = (1..=10).map(|a| backoff(base, a).as_secs()).collect();
    assert_eq!(waits, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    assert_eq!(backoff(base, u32::MAX), MAX_BACKOFF);
}

fn config(queue_size: usize) -> NotifyConfig {
    NotifyConfig {
        queue_size,
        webhook_backoff: ConfigDuration(Duration::from_millis(5)),
        webhook_attempts: 3,
        ..NotifyConfig::default()
    }
}

#[test]
fn a_full_queue_drops_and_counts() {
    let (queue, _rx) = Queue::new(&config(2), "relay.test");
    let before = metrics().webhook_dropped.get();
    let pushed: Vec<bool> = (0..5).map(|_| queue.push(&event(EventKind::Exploded))).collect();
    assert_eq!(pushed, [true, true, false, false, false]);
    assert_eq!(metrics().webhook_dropped.get() - before, 3);
}

/// An HTTP server answering each request with the next status of `statuses` (the last one
/// repeats); it records the request bodies.
async fn server(statuses: Vec<u16>) -> (WebhookTarget, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = WebhookTarget::parse(&format!("http://{}/hook", listener.local_addr().unwrap())).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0; 4096];
            while !String::from_utf8_lossy(&request).contains("}") {
                let n = stream.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
            }
            let n = {
                let mut seen = log.lock().unwrap();
                seen.push(String::from_utf8_lossy(&request).into_owned());
                seen.len()
            };
            let status = statuses[(n - 1).min(statuses.len() - 1)];
            let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            stream.write_all(reply.as_bytes()).await.unwrap();
        }
    });
    (target, seen)
}

#[tokio::test]
async fn server_errors_are_retried_and_client_errors_are_not() {
    let (target, seen) = server(vec![500, 503, 200]).await;
    let poster = Poster::new(target, &config(10));
    poster.deliver("X", Bytes::from_static(b"{}"), &CancellationToken::new()).await;
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 3);
    assert!(requests[0].starts_with("POST /hook HTTP/1.1\r\n"), "{}", requests[0]);
    assert!(requests[0].to_ascii_lowercase().contains("content-type: application/json\r\n"));
    assert!(requests.iter().all(|r| r.ends_with("\r\n\r\n{}")));

    let (target, seen) = server(vec![404]).await;
    Poster::new(target, &config(10)).deliver("X", Bytes::from_static(b"{}"), &CancellationToken::new()).await;
    assert_eq!(seen.lock().unwrap().len(), 1);

    let (target, seen) = server(vec![500]).await;
    Poster::new(target, &config(10)).deliver("X", Bytes::from_static(b"{}"), &CancellationToken::new()).await;
    assert_eq!(seen.lock().unwrap().len(), 3, "webhook_attempts = 3, then given up");
}

#[tokio::test]
async fn at_shutdown_each_queued_post_gets_one_attempt() {
    let (target, seen) = server(vec![500]).await;
    let (queue, rx) = Queue::new(&config(10), "relay.test");
    for _ in 0..3 {
        assert!(queue.push(&event(EventKind::Exploded)));
    }
    let stop = CancellationToken::new();
    stop.cancel();
    let failures = metrics().webhook_failures.get();
    Poster::new(target, &config(10)).run(rx, stop).await;
    assert_eq!(seen.lock().unwrap().len(), 3, "one attempt each, no retries");
    assert!(metrics().webhook_failures.get() - failures >= 3);
}
