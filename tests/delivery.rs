//! Delivery through an SMTP upstream under the test's control: retries, bounces, timeouts,
//! an upstream that comes up late, the 250 that follows the fsync, and the queue commands.

mod common;

use std::time::Duration;

use common::upstream::{Stage, TestUpstream};
use common::{TestRelay, eventually, fixture, queue_cli, queue_cli_in};

/// Fast retries, so tests take seconds.
const FAST: &str = "[spool]\nretry = [\"200ms\"]\n";
const POLICY: &str = "[policy]\ninternal_domains = [\"example.com\"]\n";

async fn relay_to(upstream: &TestUpstream, extra: &str) -> TestRelay {
    TestRelay::start(&format!("{}{FAST}{POLICY}", upstream.config(extra))).await
}

const SIMPLE: &[u8] = b"From: app@example.com\r\nTo: customer@client.test\r\nSubject: hi\r\n\r\nhello\r\n";

#[tokio::test]
async fn temporary_failures_are_retried_and_delivered_exactly_once() {
    let upstream = TestUpstream::scripted(Box::new(|stage, _, attempt| {
        (stage == Stage::Data && attempt <= 2).then(|| "451 4.3.0 try again later".to_string())
    }))
    .await;
    // The sequential dialogue (the other tests pipeline).
    upstream.set_pipelining(false);
    let relay = relay_to(&upstream, "").await;
    assert!(relay.send("app@example.com", &["customer@client.test"], SIMPLE).await.starts_with("250 "));
    relay.wait_spool_empty().await;
    assert_eq!(upstream.attempts("customer@client.test"), 3, "451, 451, 250");
    let delivered = upstream.delivered_to("customer@client.test");
    assert_eq!(delivered.len(), 1, "delivered exactly once");
    assert_eq!(delivered[0].from, "app@example.com");
    assert!(delivered[0].data.ends_with(b"Subject: hi\r\n\r\nhello\r\n"), "exact bytes at the upstream");
}

#[tokio::test]
async fn a_permanent_failure_bounces_naming_only_that_recipient() {
    let upstream = TestUpstream::scripted(Box::new(|stage, rcpt, _| {
        (stage == Stage::Rcpt && rcpt == "ben@beta.test").then(|| "550 5.1.1 no such user here".to_string())
    }))
    .await;
    let relay = relay_to(&upstream, "").await;
    let rcpts = ["ann@alpha.test", "ben@beta.test", "cat@gamma.test"];
    assert!(relay.send("app@example.com", &rcpts, &fixture("group.eml")).await.starts_with("250 "));
    relay.wait_spool_empty().await;

    for ok in ["ann@alpha.test", "cat@gamma.test"] {
        let copies = upstream.delivered_to(ok);
        assert_eq!(copies.len(), 1, "{ok} delivered once");
        assert!(String::from_utf8_lossy(&copies[0].data).contains("X-Bccguard: exploded"));
    }
    assert!(upstream.delivered_to("ben@beta.test").is_empty());
    let bounces = upstream.delivered_to("app@example.com");
    assert_eq!(bounces.len(), 1, "one DSN to the sender");
    let dsn = String::from_utf8_lossy(&bounces[0].data).into_owned();
    assert_eq!(bounces[0].from, "", "a bounce is sent with the null sender");
    assert!(dsn.contains("Content-Type: multipart/report; report-type=delivery-status;"), "{dsn}");
    assert!(dsn.contains("Final-Recipient: rfc822; ben@beta.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"), "{dsn}");
    assert!(dsn.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user here"), "{dsn}");
    assert!(!dsn.contains("ann@alpha.test") && !dsn.contains("cat@gamma.test"), "no other recipient: {dsn}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_bounce_for_the_null_sender_and_the_message_is_kept() {
    let upstream =
        TestUpstream::scripted(Box::new(|stage, _, _| (stage == Stage::Data).then(|| "554 5.7.1 refused".to_string())))
            .await;
    let relay = relay_to(&upstream, "").await;
    assert!(relay.send("", &["customer@client.test"], SIMPLE).await.starts_with("250 "));
    eventually("a failed bounce", || bccguard_queue_list(&relay).contains("failed bounce")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(upstream.deliveries().is_empty(), "no DSN: {:?}", upstream.deliveries());
    assert_eq!(upstream.attempts("customer@client.test"), 1, "a permanent failure is not retried on its own");
    assert_eq!(relay.spooled().len(), 1, "kept, never dropped");
}

// Multi-threaded: the queue CLI blocks a thread while the in-process relay answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_that_cannot_be_delivered_stays_queued_until_retried() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let sender_broken = Arc::new(AtomicBool::new(true));
    let broken = sender_broken.clone();
    let upstream = TestUpstream::scripted(Box::new(move |stage, rcpt, _| match (stage, rcpt) {
        (Stage::Rcpt, "gone@client.test") => Some("550 5.1.1 no such user".to_string()),
        (Stage::Rcpt, "app@example.com") if broken.load(Ordering::SeqCst) => {
            Some("550 5.1.1 \x1b[31mmailbox unavailable".to_string())
        }
        _ => None,
    }))
    .await;
    let relay = relay_to(&upstream, "").await;
    assert!(relay.send("app@example.com", &["gone@client.test"], SIMPLE).await.starts_with("250 "));
    eventually("a failed bounce", || bccguard_queue_list(&relay).contains("failed bounce")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(upstream.attempts("app@example.com"), 1, "the DSN was tried once, not again on its own");
    let ids = relay.spooled();
    assert_eq!(ids.len(), 1, "the original finished; the bounce is kept");

    let listed = bccguard_queue_list(&relay);
    let row = listed.lines().nth(1).unwrap();
    assert!(row.starts_with(&format!("{}  failed bounce  ", ids[0])), "{listed}");
    assert!(row.contains("550 5.1.1 \\x1b[31mmailbox unavailable"), "the ESC is shown escaped: {listed}");
    assert!(!listed.contains('\x1b'), "no raw ESC reaches the terminal");
    assert!(listed.contains("1 message, 0 transactions pending, 1 failed bounce (queue retry or queue delete)"));
    let (_, json) = queue_cli(&relay, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["state"], "failed bounce");
    assert_eq!(v[0]["sender"], "<>");
    assert_eq!(v[0]["last_reply"], "550 5.1.1 \u{1b}[31mmailbox unavailable");
    assert!(json.contains("\\u001b[31m"), "JSON escapes it: {json}");

    sender_broken.store(false, Ordering::SeqCst);
    let (code, out) = queue_cli(&relay, &["retry"]);
    assert_eq!((code, out.trim()), (0, "Retrying 1 message now."));
    relay.wait_spool_empty().await;
    let dsns = upstream.delivered_to("app@example.com");
    assert_eq!(dsns.len(), 1, "the bounce delivered once");
    assert!(String::from_utf8_lossy(&dsns[0].data).contains("Final-Recipient: rfc822; gone@client.test"));
    assert_eq!(upstream.attempts("app@example.com"), 2);
}

#[tokio::test]
async fn an_upstream_that_comes_up_later_gets_the_mail() {
    // Reserve a port, then close it: the relay's first attempts are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let relay =
        TestRelay::start(&format!("[upstream]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n{FAST}{POLICY}"))
            .await;
    assert!(relay.send("app@example.com", &["customer@client.test"], SIMPLE).await.starts_with("250 "));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(relay.spooled().len(), 1, "kept while the upstream is down");
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let upstream = TestUpstream::on(listener, Box::new(|_, _, _| None));
    relay.wait_spool_empty().await;
    assert_eq!(upstream.delivered_to("customer@client.test").len(), 1);
}

// Multi-threaded: the queue CLI blocks a thread while the in-process relay answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_times_out_and_the_copy_is_retried() {
    let upstream = TestUpstream::start().await;
    upstream.set_silent(true);
    let relay = relay_to(&upstream, "timeout = \"1s\"\n").await;
    assert!(relay.send("app@example.com", &["customer@client.test"], SIMPLE).await.starts_with("250 "));
    eventually("a timed-out attempt", || upstream.connections() >= 1).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(upstream.deliveries().is_empty());
    let listed = bccguard_queue_list(&relay);
    assert!(listed.contains("no answer from 127.0.0.1:"), "{listed}");
    upstream.set_silent(false);
    relay.wait_spool_empty().await;
    assert_eq!(upstream.delivered_to("customer@client.test").len(), 1);
}

#[tokio::test]
async fn messages_older_than_max_age_bounce_as_expired() {
    let upstream = TestUpstream::scripted(Box::new(|stage, rcpt, _| {
        (stage == Stage::Rcpt && rcpt == "customer@client.test").then(|| "451 4.2.1 mailbox busy".to_string())
    }))
    .await;
    let relay =
        TestRelay::start(&format!("{}[spool]\nretry = [\"200ms\"]\nmax_age = \"1s\"\n{POLICY}", upstream.config("")))
            .await;
    assert!(relay.send("app@example.com", &["customer@client.test"], SIMPLE).await.starts_with("250 "));
    relay.wait_spool_empty().await;
    assert!(upstream.attempts("customer@client.test") >= 2, "retried until it expired");
    let dsn = String::from_utf8_lossy(&upstream.delivered_to("app@example.com")[0].data).into_owned();
    assert!(dsn.contains("Status: 4.4.7\r\n"), "{dsn}");
    assert!(dsn.contains("undeliverable for too long; last reply: 451 4.2.1 mailbox busy"), "{dsn}");
}

#[tokio::test]
async fn a_spool_that_cannot_be_written_gives_451_and_nothing_is_delivered() {
    let upstream = TestUpstream::start().await;
    let relay = relay_to(&upstream, "").await;
    // Replace the queue directory with a file: every write into it fails (even as root).
    let queue = relay.dir.path().join("spool/queue");
    std::fs::remove_dir_all(&queue).unwrap();
    std::fs::write(&queue, b"not a directory").unwrap();
    let reply = relay.send("app@example.com", &["customer@client.test"], SIMPLE).await;
    assert_eq!(reply, "451 4.3.0 Temporary failure storing the message, try again later");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(upstream.deliveries().is_empty(), "nothing delivered");
}

/// `bccguard queue list` for the relay's spool, as text.
fn bccguard_queue_list(relay: &TestRelay) -> String {
    queue_cli(relay, &["list"]).1
}

// Multi-threaded: the queue CLI blocks a thread while the in-process relay answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_can_be_listed_retried_and_deleted_while_the_relay_runs() {
    let upstream = TestUpstream::scripted(Box::new(|stage, rcpt, _| {
        // Real relays quote the recipient in their replies.
        (stage == Stage::Rcpt && rcpt.starts_with("slow")).then(|| format!("451 4.4.1 <{rcpt}>: come back later"))
    }))
    .await;
    // A long retry interval: only `queue retry` makes the next attempt happen soon.
    let relay = TestRelay::start(&format!("{}[spool]\nretry = [\"1h\"]\n{POLICY}", upstream.config(""))).await;
    assert!(relay.send("app@example.com", &["slow1@client.test"], SIMPLE).await.starts_with("250 "));
    assert!(relay.send("app@example.com", &["slow2@client.test"], SIMPLE).await.starts_with("250 "));
    eventually("two first attempts", || {
        upstream.attempts("slow2@client.test") == 1 && upstream.attempts("slow1@client.test") == 1
    })
    .await;
    eventually("journaled", || bccguard_queue_list(&relay).contains("451 4.4.1")).await;

    let listed = bccguard_queue_list(&relay);
    let lines: Vec<&str> = listed.lines().collect();
    assert!(lines[0].starts_with("ID  "), "{listed}");
    for column in ["AGE", "SENDER", "RCPTS", "PENDING", "DELIVERED", "FAILED", "NEXT", "LAST REPLY"] {
        assert!(lines[0].contains(column), "{listed}");
    }
    assert!(lines[1].contains("a***@example.com"), "the sender is redacted: {listed}");
    assert!(lines[1].contains("in 59m") || lines[1].contains("in 1h"), "{listed}");
    assert!(listed.contains("2 messages, 2 transactions pending"), "{listed}");
    let ids = relay.spooled();

    let (code, json) = queue_cli(&relay, &["list", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["transactions"]["pending"], 1);
    assert_eq!(
        v[0]["last_reply"], "451 4.4.1 <s***@client.test>: come back later",
        "addresses in replies are redacted"
    );
    assert!(!json.contains("slow1@") && !listed.contains("slow1@"), "{listed}\n{json}");

    let (code, out) = queue_cli(&relay, &["retry", &ids[0]]);
    assert_eq!((code, out.trim()), (0, "Retrying 1 message now."));
    eventually("a second attempt", || upstream.attempts("slow1@client.test") == 2).await;
    assert_eq!(upstream.attempts("slow2@client.test"), 1, "only the one asked for");

    let (code, out) = queue_cli(&relay, &["delete", &ids[1]]);
    assert_eq!((code, out.trim().to_string()), (0, format!("Deleted {}.", ids[1])));
    // The files go on the manager's next turn.
    eventually("the deleted message's files gone", || relay.spooled() == [ids[0].clone()]).await;
    let (code, out) = queue_cli(&relay, &["delete", &ids[1]]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("is not in the queue"));
    let (code, out) = queue_cli(&relay, &["retry", "../etc"]);
    assert_eq!(code, 2, "{out}");
}

// Multi-threaded: the queue CLI blocks a thread while the in-process relay answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_work_on_the_files_when_no_relay_runs() {
    let upstream =
        TestUpstream::scripted(Box::new(|stage, _, _| (stage == Stage::Rcpt).then(|| "451 4.4.1 later".to_string())))
            .await;
    let relay = TestRelay::start(&format!("{}[spool]\nretry = [\"1h\"]\n{POLICY}", upstream.config(""))).await;
    assert!(relay.send("app@example.com", &["c@client.test"], SIMPLE).await.starts_with("250 "));
    eventually("an attempt", || upstream.attempts("c@client.test") == 1).await;
    eventually("journaled", || bccguard_queue_list(&relay).contains("451 4.4.1")).await;
    let id = relay.spooled()[0].clone();
    let (result, dir) = relay.shutdown().await;
    result.unwrap();
    let cli = |args: &[&str]| {
        let (code, out, _) = queue_cli_in(dir.path(), args);
        (code, out)
    };
    assert_eq!(cli(&["retry"]), (0, "Marked 1 message to be tried as soon as bccguard starts.\n".into()));
    let listed = cli(&["list"]).1;
    assert!(listed.lines().nth(1).unwrap().contains(" now "), "{listed}");
    assert_eq!(cli(&["delete", &id]), (0, format!("Deleted {id}.\n")));
    assert_eq!(cli(&["list"]), (0, "The queue is empty.\n".into()));
}

#[tokio::test]
async fn shutdown_lets_deliveries_in_flight_finish_and_keeps_the_rest() {
    let upstream = TestUpstream::start().await;
    upstream.set_silent(true);
    let relay = relay_to(&upstream, "timeout = \"30s\"\n[server]\nshutdown_grace = \"1s\"\n").await;
    assert!(relay.send("app@example.com", &["customer@client.test"], SIMPLE).await.starts_with("250 "));
    eventually("an attempt in flight", || upstream.connections() >= 1).await;
    let started = std::time::Instant::now();
    let (result, dir) = relay.shutdown().await;
    result.unwrap();
    assert!(started.elapsed() < Duration::from_secs(20), "the grace period bounds the wait");
    let spool = bccguard::spool::SpoolPaths::new(&dir.path().join("spool"));
    assert_eq!(spool.ids().unwrap().len(), 1, "the undelivered message stays spooled");
}
