//! Notices and the webhook end to end (SPEC §10): the webhook receives a JSON POST per leak
//! acted on, a webhook that hangs or fails delays no SMTP reply and is retried, and notices
//! reach the sender and an admin through the upstream with the null sender, naming no
//! exposed address.

mod common;

use std::sync::{Arc, Mutex};

use bccguard::notify::{Event, EventKind};
use bccguard::queue_id::QueueId;
use common::upstream::TestUpstream;
use common::{TestRelay, eventually};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

const CUSTOMERS: [&str; 3] = ["anna@customers.test", "ben@buyers.test", "carl@clients.test"];

/// A leaking message: three external customers see each other in `To:`.
fn leak(subject: &str) -> Vec<u8> {
    format!("From: shop@example.com\r\nTo: {}\r\nSubject: {subject}\r\n\r\nHello\r\n", CUSTOMERS.join(", "))
        .into_bytes()
}

/// What the test webhook server does with its n-th request.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// Answer with this status at once.
    Status(u16),
    /// Hold the request, unanswered, until the test calls [`Hook::release`]; then this status.
    AfterRelease(u16),
    /// Never answer.
    Never,
}

/// A webhook endpoint: records each request (head and body) and answers as scripted.
struct Hook {
    url: String,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    answered: Arc<Mutex<usize>>,
    gate: Arc<Notify>,
}

impl Hook {
    async fn start(script: fn(usize) -> Answer) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hook = Hook {
            url: format!("http://{addr}/hooks/bcc"),
            requests: Arc::default(),
            answered: Arc::default(),
            gate: Arc::new(Notify::new()),
        };
        let (requests, answered, gate) = (hook.requests.clone(), hook.answered.clone(), hook.gate.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (requests, answered, gate) = (requests.clone(), answered.clone(), gate.clone());
                tokio::spawn(async move { serve(stream, script, requests, answered, gate).await });
            }
        });
        hook
    }

    fn requests(&self) -> Vec<(String, String)> {
        self.requests.lock().unwrap().clone()
    }

    fn answered(&self) -> usize {
        *self.answered.lock().unwrap()
    }

    fn release(&self) {
        self.gate.notify_one();
    }

    async fn wait_requests(&self, n: usize) -> Vec<(String, String)> {
        eventually(&format!("{n} webhook requests"), || self.requests().len() >= n).await;
        self.requests()
    }
}

async fn serve(
    mut stream: TcpStream,
    script: fn(usize) -> Answer,
    requests: Arc<Mutex<Vec<(String, String)>>>,
    answered: Arc<Mutex<usize>>,
    gate: Arc<Notify>,
) {
    let Some((head, body)) = read_request(&mut stream).await else {
        return;
    };
    let n = {
        let mut r = requests.lock().unwrap();
        r.push((head, body));
        r.len()
    };
    let status = match script(n) {
        Answer::Status(s) => s,
        Answer::AfterRelease(s) => {
            gate.notified().await;
            s
        }
        Answer::Never => {
            let _ = stream.read(&mut [0; 1]).await;
            return;
        }
    };
    *answered.lock().unwrap() += 1;
    let reply = format!("HTTP/1.1 {status} Status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    let _ = stream.write_all(reply.as_bytes()).await;
}

/// One HTTP/1.1 request: its head (request line and header fields) and its body, by
/// `Content-Length`.
async fn read_request(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut data = Vec::new();
    let mut buf = [0; 4096];
    loop {
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end + 2].to_string();
            let length: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if data.len() >= end + 4 + length {
                return Some((head, text[end + 4..end + 4 + length].to_string()));
            }
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    }
}

fn config(action: &str, notify: &str) -> String {
    format!("[policy]\ninternal_domains = [\"example.com\"]\naction = \"{action}\"\n[notify]\n{notify}\n")
}

/// The JSON body without its `time` (checked to be RFC 3339) and `queue_id` (checked to be a
/// queue id), and the queue id.
fn without_time_and_id(body: &str) -> (serde_json::Value, String) {
    let mut json: serde_json::Value = serde_json::from_str(body).unwrap();
    let object = json.as_object_mut().unwrap();
    let time = object.remove("time").unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(time.as_str().unwrap()).is_ok(), "{time}");
    let id = object.remove("queue_id").unwrap().as_str().unwrap().to_string();
    assert!(QueueId::parse(&id).is_some(), "{id}");
    (json, id)
}

#[tokio::test]
async fn a_rejected_leak_is_posted_with_the_sender_redacted() {
    let hook = Hook::start(|_| Answer::Status(200)).await;
    let relay = TestRelay::start(&config("reject", &format!("webhook = \"{}\"", hook.url))).await;
    let reply = relay.send("shop@example.com", &CUSTOMERS, &leak("Offer")).await;
    assert!(reply.starts_with("550 5.7.1 "), "{reply}");
    let (head, body) = hook.wait_requests(1).await.remove(0);
    assert!(head.starts_with("POST /hooks/bcc HTTP/1.1\r\n"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains(&format!("\r\nhost: {}\r\n", hook.url[7..].split('/').next().unwrap())), "{head}");
    assert!(lower.contains("\r\ncontent-type: application/json\r\n"), "{head}");
    let (json, _) = without_time_and_id(&body);
    assert_eq!(
        json,
        json!({
            "event": "rejected",
            "relay": "bccguard.localdomain",
            "rule": null,
            "action": "reject",
            "exposure": 3,
            "recipients": 3,
            "sender": "s***@example.com",
            "client": "127.0.0.1",
            "after_accept": false,
        })
    );
    for address in CUSTOMERS.iter().chain(&["shop@example.com"]) {
        assert!(!body.contains(address), "{address} in {body}");
    }
    relay.stop().await.unwrap();
}

// Multi-threaded: the metrics endpoint answers the blocking `http_get` from another thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exploded_leak_is_posted_with_full_addresses_when_asked() {
    let hook = Hook::start(|_| Answer::Status(204)).await;
    let notify = format!("webhook = \"{}\"\nwebhook_addresses = true", hook.url);
    let metrics = "[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let relay = TestRelay::start(&format!("{}{metrics}", config("explode", &notify))).await;
    let reply = relay.send("shop@example.com", &CUSTOMERS, &leak("Offer")).await;
    let id = reply.strip_prefix("250 2.0.0 Ok: queued as ").unwrap_or_else(|| panic!("{reply}"));
    let (_, body) = hook.wait_requests(1).await.remove(0);
    let (json, posted_id) = without_time_and_id(&body);
    assert_eq!(posted_id, id);
    assert_eq!(json["event"], "exploded");
    assert_eq!(json["action"], "explode");
    assert_eq!(json["sender"], "shop@example.com");
    assert_eq!(json["exposure"], 3);
    assert!(json.get("after_accept").is_none() && json.get("subject").is_none(), "{json}");
    relay.wait_outbox(3).await;
    // A message that does not leak is no event: the next post is the next leak's.
    relay.send("shop@example.com", &["anna@customers.test"], b"To: anna@customers.test\r\n\r\nHi\r\n").await;
    relay.send("", &CUSTOMERS, &leak("Again")).await;
    let requests = hook.wait_requests(2).await;
    assert_eq!(requests.len(), 2);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&requests[1].1).unwrap()["sender"], "<>");
    let delivered =
        || common::sample(&common::http_get(relay.metrics.unwrap(), "/metrics").1, "bccguard_webhook_deliveries_total");
    eventually("the deliveries counted", || delivered() >= 2.0).await;
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_hanging_then_failing_webhook_delays_no_reply_and_is_retried() {
    let hook = Hook::start(|n| if n == 1 { Answer::AfterRelease(500) } else { Answer::Status(200) }).await;
    let notify = format!("webhook = \"{}\"\nwebhook_timeout = \"60s\"\nwebhook_backoff = \"10ms\"", hook.url);
    let relay = TestRelay::start(&config("reject", &notify)).await;
    // The endpoint holds the first post unanswered until it is released below: were the
    // reply waiting for the webhook, it would never come (and the client gives up).
    let first = relay.send("shop@example.com", &CUSTOMERS, &leak("One")).await;
    assert!(first.starts_with("550 "), "{first}");
    hook.wait_requests(1).await;
    let second = relay.send("shop@example.com", &CUSTOMERS, &leak("Two")).await;
    assert!(second.starts_with("550 "), "{second}");
    assert_eq!((hook.requests().len(), hook.answered()), (1, 0), "both replies came while the post hung");
    hook.release();
    let requests = hook.wait_requests(3).await;
    assert_eq!(requests[0].1, requests[1].1, "the 500 is retried with the same event");
    assert_ne!(requests[1].1, requests[2].1, "then the second event");
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_webhook_that_never_answers_is_timed_out_and_retried() {
    let hook = Hook::start(|n| if n == 1 { Answer::Never } else { Answer::Status(200) }).await;
    let notify = format!("webhook = \"{}\"\nwebhook_timeout = \"200ms\"\nwebhook_backoff = \"10ms\"", hook.url);
    let relay = TestRelay::start(&config("explode", &notify)).await;
    let reply = relay.send("shop@example.com", &CUSTOMERS, &leak("Offer")).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let requests = hook.wait_requests(2).await;
    assert_eq!(requests[0].1, requests[1].1);
    assert_eq!(hook.answered(), 1);
    relay.stop().await.unwrap();
}

fn rejected_after_accept(id: &str, sender: &str) -> Event {
    Event {
        kind: EventKind::Rejected { after_accept: true },
        queue_id: QueueId::parse(id).unwrap(),
        rule: Some("marketing".into()),
        action: "reject",
        exposure: 3,
        recipients: 3,
        sender: sender.into(),
        subject: Some("Offer".into()),
        client: "127.0.0.1".into(),
        generated: false,
        at: chrono::Utc::now(),
    }
}

#[tokio::test]
async fn notices_reach_the_sender_and_an_admin_through_the_upstream() {
    let upstream = TestUpstream::start().await;
    let notify = "sender = true\nadmins = [\"ops@example.com\"]\nfrom = \"bccguard@example.com\"";
    let relay = TestRelay::start(&format!("{}{}", config("explode", notify), upstream.config(""))).await;
    let reply = relay.send("shop@example.com", &CUSTOMERS, &leak("Offer")).await;
    let id = reply.strip_prefix("250 2.0.0 Ok: queued as ").unwrap_or_else(|| panic!("{reply}")).to_string();
    // Explode sends no notice; neither does an event about the null sender or about a
    // message bccguard generated. Only the last event below has notices (two).
    relay.notifier.event(rejected_after_accept(&id, ""));
    let mut generated = rejected_after_accept(&id, "shop@example.com");
    generated.generated = true;
    relay.notifier.event(generated);
    relay.notifier.event(rejected_after_accept(&id, "shop@example.com"));
    eventually("two notices", || upstream.deliveries().iter().filter(|d| d.from.is_empty()).count() >= 2).await;
    relay.wait_spool_empty().await;
    let deliveries = upstream.deliveries();
    let envelopes: Vec<(&str, &[String])> = deliveries.iter().map(|d| (d.from.as_str(), d.rcpts.as_slice())).collect();
    assert_eq!(envelopes.len(), 3 + 2, "{envelopes:?}");
    for (to, subject) in [
        ("shop@example.com", "Not delivered: your message to 3 recipients showed their addresses to each other"),
        ("ops@example.com", "Not delivered: a message to 3 recipients showed their addresses to each other"),
    ] {
        let notices = upstream.delivered_to(to);
        assert_eq!(notices.len(), 1, "{to}");
        let n = &notices[0];
        assert_eq!(
            (n.from.as_str(), n.rcpts.as_slice()),
            ("", [to.to_string()].as_slice()),
            "null sender in MAIL FROM"
        );
        let text = String::from_utf8(n.data.clone()).unwrap();
        for line in [
            "From: bccguard <bccguard@example.com>\r\n".to_string(),
            format!("To: <{to}>\r\n"),
            format!("Subject: {subject}\r\n"),
            "Auto-Submitted: auto-generated\r\n".into(),
            format!("  Queue id:   {id}\r\n"),
            "  Rule:       marketing\r\n".into(),
            "  Subject:    Offer\r\n".into(),
        ] {
            assert!(text.contains(&line), "missing {line:?} in:\n{text}");
        }
        for customer in CUSTOMERS {
            assert!(!text.contains(customer), "{customer} in the notice:\n{text}");
        }
    }
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_hanging_webhook_does_not_hold_shutdown() {
    let hook = Hook::start(|_| Answer::Never).await;
    let notify = format!("webhook = \"{}\"\nwebhook_timeout = \"1h\"", hook.url);
    let relay = TestRelay::start(&config("reject", &notify)).await;
    relay.send("shop@example.com", &CUSTOMERS, &leak("One")).await;
    relay.send("shop@example.com", &CUSTOMERS, &leak("Two")).await;
    hook.wait_requests(1).await;
    // The post in flight never ends and another waits behind it: stopping still ends (the
    // helper allows a minute, far below the hour the post could take).
    relay.stop().await.unwrap();
    assert_eq!(hook.answered(), 0);
}

#[tokio::test]
async fn a_held_leak_sends_notices_quoting_the_subject() {
    let upstream = TestUpstream::start().await;
    let notify = "sender = true\nadmins = [\"ops@example.com\"]";
    let relay = TestRelay::start(&format!("{}{}", config("hold", notify), upstream.config(""))).await;
    let reply = relay.send("shop@example.com", &CUSTOMERS, &leak("Black Friday")).await;
    let id = reply.strip_prefix("250 2.0.0 Ok: queued as ").unwrap_or_else(|| panic!("{reply}")).to_string();
    eventually("two notices", || upstream.deliveries().len() >= 2).await;
    for to in ["shop@example.com", "ops@example.com"] {
        let n = &upstream.delivered_to(to)[0];
        assert_eq!(n.from, "");
        let text = String::from_utf8(n.data.clone()).unwrap();
        assert!(text.contains("Subject: Held: "), "{text}");
        assert!(text.contains("  Subject:    Black Friday\r\n"), "{text}");
        assert!(text.contains(&format!("  Queue id:   {id}\r\n")), "{text}");
        assert!(text.contains("(after 10 days)"), "{text}");
        for customer in CUSTOMERS {
            assert!(!text.contains(customer), "{text}");
        }
    }
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_held_message_tells_its_sender_and_the_admins_it_will_not_be_delivered() {
    let upstream = TestUpstream::start().await;
    let notify = "sender = true\nadmins = [\"ops@example.com\"]";
    let relay = TestRelay::start(&format!("{}{}", config("hold", notify), upstream.config(""))).await;
    let reply = relay.send("shop@example.com", &CUSTOMERS, &leak("Cyber Monday")).await;
    let id = reply.strip_prefix("250 2.0.0 Ok: queued as ").unwrap_or_else(|| panic!("{reply}")).to_string();
    eventually("the held notices", || upstream.deliveries().len() >= 2).await;
    let (code, out) = common::queue_cli(&relay, &["delete", &id]);
    assert_eq!(code, 0, "{out}");
    eventually("the not-delivered notices", || upstream.deliveries().len() >= 4).await;
    for to in ["shop@example.com", "ops@example.com"] {
        let notices = upstream.delivered_to(to);
        assert_eq!(notices.len(), 2, "{to}");
        let text = String::from_utf8(notices[1].data.clone()).unwrap();
        assert_eq!(notices[1].from, "");
        assert!(text.contains("Subject: Not delivered: "), "{text}");
        assert!(text.contains("  Subject:    Cyber Monday\r\n"), "{text}");
        assert!(text.contains(&format!("  Queue id:   {id}\r\n")), "{text}");
        for customer in CUSTOMERS {
            assert!(!text.contains(customer), "{text}");
        }
    }
    // The deletion delivered nothing else: four notices, no copy to a customer.
    assert_eq!(upstream.deliveries().len(), 4);
    relay.stop().await.unwrap();
}
