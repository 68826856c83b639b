//! Helpers for the review page's tests: an in-memory held queue that records what was done
//! to it, the page served over it on `127.0.0.1:0`, and a raw HTTP/1.1 client.

#![allow(dead_code)]

pub mod browser;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bccguard::admin::{self, Admin, Auth, Token};
use bccguard::hold::{HeldMessage, HeldQueue, HeldSummary, HoldError, HoldOutcome, ReleaseAs};
use bccguard::queue_id::QueueId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The token the test page accepts.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// The `Authorization` header that carries [`TOKEN`].
pub const BEARER_HEADER: (&str, &str) = ("Authorization", "Bearer test-token-0123456789abcdef");

/// A held queue in memory: what is held, and every release and delete it was asked for.
#[derive(Clone, Default)]
pub struct FakeQueue(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    held: Vec<HeldMessage>,
    released: Vec<(QueueId, ReleaseAs)>,
    deleted: Vec<QueueId>,
}

impl FakeQueue {
    /// Hold `message`.
    pub fn hold(&self, message: HeldMessage) {
        self.0.lock().unwrap().held.push(message);
    }

    /// The releases done, in order.
    pub fn released(&self) -> Vec<(QueueId, ReleaseAs)> {
        self.0.lock().unwrap().released.clone()
    }

    /// The deletes done, in order.
    pub fn deleted(&self) -> Vec<QueueId> {
        self.0.lock().unwrap().deleted.clone()
    }

    fn take(&self, id: &QueueId) -> Result<HoldOutcome, HoldError> {
        let mut inner = self.0.lock().unwrap();
        match inner.held.iter().position(|m| &m.summary.id == id) {
            Some(i) => {
                inner.held.remove(i);
                Ok(HoldOutcome::Done)
            }
            None if inner.released.iter().any(|(r, _)| r == id) => Ok(HoldOutcome::NotHeld),
            None => Ok(HoldOutcome::NotFound),
        }
    }
}

impl HeldQueue for FakeQueue {
    async fn held(&self) -> Result<Vec<HeldSummary>, HoldError> {
        Ok(self.0.lock().unwrap().held.iter().map(|m| m.summary.clone()).collect())
    }

    async fn held_message(&self, id: &QueueId) -> Result<Option<HeldMessage>, HoldError> {
        Ok(self.0.lock().unwrap().held.iter().find(|m| &m.summary.id == id).cloned())
    }

    async fn release(&self, id: &QueueId, how: ReleaseAs) -> Result<HoldOutcome, HoldError> {
        let outcome = self.take(id)?;
        if outcome == HoldOutcome::Done {
            self.0.lock().unwrap().released.push((id.clone(), how));
        }
        Ok(outcome)
    }

    async fn delete_held(&self, id: &QueueId) -> Result<HoldOutcome, HoldError> {
        let outcome = self.take(id)?;
        if outcome == HoldOutcome::Done {
            self.0.lock().unwrap().deleted.push(id.clone());
        }
        Ok(outcome)
    }
}

/// The queue id written `id`.
pub fn qid(id: &str) -> QueueId {
    QueueId::parse(id).expect("a queue id")
}

/// A held message as a marketing tool's leak looks: `n` customers in To:, held by a rule.
pub fn leak(subject: &str, n: usize, age_ms: i64) -> HeldMessage {
    let now = chrono::Utc::now().timestamp_millis();
    let recipients: Vec<String> = (1..=n).map(|i| format!("customer{i}@mail{}.example", i % 7)).collect();
    let header = format!(
        "Received: from app.example.com by bccguard.localdomain\r\nFrom: Shop <news@shop.example.com>\r\n\
         To: {}\r\nSubject: {subject}\r\nMessage-ID: <1@shop.example.com>\r\n",
        recipients.join(", ")
    );
    HeldMessage {
        summary: HeldSummary {
            id: QueueId::generate(),
            received_at: now - age_ms,
            expires_at: now - age_ms + 10 * 86_400_000,
            sender: "news@shop.example.com".into(),
            subject: subject.into(),
            recipients: n,
            exposure: n,
            rule: Some("marketing".into()),
        },
        header,
        recipients,
        decision: format!("leak: {n} external addresses visible (max 1); action hold"),
        signals: vec!["sorted_recipients".into(), "header_matches_envelope".into()],
        plans: vec![
            (ReleaseAs::Explode, format!("{n} transactions: one per external recipient")),
            (ReleaseAs::Pass, "1 transaction: the message unchanged to every recipient".into()),
        ],
    }
}

/// The page over a fake queue, on `127.0.0.1:0`.
pub struct TestPage {
    pub addr: SocketAddr,
    pub queue: FakeQueue,
    pub auth: Arc<Auth>,
    stop: CancellationToken,
}

impl TestPage {
    /// Serve the page over `queue` with [`TOKEN`].
    pub async fn start(queue: FakeQueue) -> TestPage {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let auth = Arc::new(Auth::new(Token::checked(TOKEN, "test").unwrap()));
        let page = Arc::new(Admin::new(queue.clone(), auth.clone()));
        let stop = CancellationToken::new();
        tokio::spawn(admin::serve(listener, page, stop.clone()));
        TestPage { addr, queue, auth, stop }
    }
}

impl Drop for TestPage {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The value of the form field `csrf` in the page, if any.
    pub fn csrf(&self) -> Option<String> {
        let start = self.body.find("name=\"csrf\" value=\"")? + "name=\"csrf\" value=\"".len();
        Some(self.body[start..].split('"').next()?.to_string())
    }
}

/// Send one request (with `Connection: close`) and read the whole response.
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    parse(&String::from_utf8_lossy(&raw))
}

fn parse(raw: &str) -> Reply {
    let (head, body) = raw.split_once("\r\n\r\n").expect("a complete response");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.to_string(), v.trim().to_string())).collect();
    Reply { status, headers, body: body.to_string() }
}

/// Wait (up to 10 s) until `check` holds.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Wait (up to 10 s) until `check` gives a value.
pub async fn eventually_some<T, F: Future<Output = Option<T>>>(what: &str, mut check: impl FnMut() -> F) -> T {
    for _ in 0..200 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A form POST with these extra headers.
pub async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], form: &str) -> Reply {
    let mut all = vec![("Content-Type", "application/x-www-form-urlencoded")];
    all.extend_from_slice(headers);
    request(addr, "POST", path, &all, form).await
}

/// Log in with [`TOKEN`]: the `Cookie` header value and the session's CSRF token.
pub async fn login(addr: SocketAddr) -> (String, String) {
    let reply = post(addr, "/login", &[], &format!("token={TOKEN}")).await;
    assert_eq!(reply.status, 303, "{reply:?}");
    let cookie = reply.header("set-cookie").unwrap().split(';').next().unwrap().to_string();
    let page = request(addr, "GET", "/", &[("Cookie", &cookie)], "").await;
    let csrf = page.csrf().expect("a CSRF token in the page");
    (cookie, csrf)
}
