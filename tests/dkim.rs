//! DKIM re-signing end to end (SPEC §11): signed originals, sent through the real server,
//! every delivered copy verified with mail-auth and with dkimpy against a stub resolver.

mod common;
#[path = "common/dkim.rs"]
mod dkim_support;

use common::{TestRelay, files_in};
use dkim_support::{publish, sign_dkimpy, sign_mail_auth, verify_dkimpy, verify_mail_auth};

const ORIGINAL: &str = "From: Shop <shop@example.com>\r\n\
To: Ann <ann@customer-a.test>, bob@customer-b.test, \"Cy\" <cy@customer-c.test>\r\n\
Cc: ops@example.com\r\n\
Subject: Your order\r\n\
Date: Sun, 29 Nov 2026 10:00:00 +0000\r\n\
Message-ID: <order-1@example.com>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Thank you for your order.\r\n\
It ships   tomorrow.  \r\n\
\r\n";

const RCPTS: [&str; 4] = ["ann@customer-a.test", "bob@customer-b.test", "cy@customer-c.test", "ops@example.com"];

fn config(keys: &str, extra: &str) -> String {
    format!("[policy]\ninternal_domains = [\"example.com\"]\n{extra}\n{keys}")
}

fn key(domain: &str, selector: &str, file: &str, algorithm: &str) -> String {
    let path = dkim_support::key_path(file);
    format!(
        "[[dkim.keys]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey_file = \"{}\"\nalgorithm = \"{algorithm}\"\n",
        path.display()
    )
}

/// The delivered message for `rcpt`: the outbox file without its Return-Path and
/// Delivered-To lines.
fn delivered(relay: &TestRelay, rcpt: &str) -> Vec<u8> {
    let needle = format!("\r\nDelivered-To: {rcpt}\r\n");
    let files = files_in(&relay.outbox());
    let (_, file) = files.iter().find(|(_, b)| String::from_utf8_lossy(b).contains(&needle)).expect("delivered");
    let text = String::from_utf8_lossy(file);
    let start = text.match_indices("\r\n").nth(1).unwrap().0 + 2;
    file[start..].to_vec()
}

async fn deliver(relay: &TestRelay, message: &[u8]) {
    let reply = relay.send("shop@example.com", &RCPTS, message).await;
    assert!(reply.starts_with("250 "), "{reply}");
    relay.wait_outbox(4).await;
}

/// Every signature of `message`, by both verifiers: `(d=, passed)` each.
async fn verify(message: &[u8], records: &[(String, String)]) -> Vec<(String, bool)> {
    let by_mail_auth = verify_mail_auth(message, records).await;
    if let Some(by_dkimpy) = verify_dkimpy(message, records) {
        assert_eq!(by_mail_auth, by_dkimpy, "mail-auth and dkimpy agree\n{}", String::from_utf8_lossy(message));
    }
    by_mail_auth
}

fn header_count(message: &[u8], name: &str) -> usize {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next().unwrap();
    head.split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with(&format!("{}:", name.to_ascii_lowercase())))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_copies_signed_by_dkimpy_verify_after_re_signing_and_the_original_keeps_its_signature() {
    let headers = "from:to:subject:date:message-id";
    let Some(original) = sign_dkimpy(ORIGINAL.as_bytes(), "rsa-pkcs1", "orig", "example.com", headers) else {
        return;
    };
    let records = [publish("rsa-pkcs1", "orig", "example.com"), publish("rsa", "relay", "example.com")];
    assert_eq!(verify(&original, &records).await, [("example.com".to_string(), true)], "the original verifies");
    let metrics = "[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let relay = TestRelay::start(&config(&key("example.com", "relay", "rsa", "rsa-sha256"), metrics)).await;
    deliver(&relay, &original).await;
    let (_, text) = common::http_get(relay.metrics.unwrap(), "/metrics");
    // Metrics are per process, and the tests of this file run in it together: at least.
    assert!(common::sample(&text, "bccguard_dkim_resigned_copies_total") >= 3.0, "{text}");
    assert!(common::sample(&text, "bccguard_dkim_renamed_signatures_total") >= 3.0, "{text}");
    for rcpt in &RCPTS[..3] {
        let copy = delivered(&relay, rcpt);
        let text = String::from_utf8_lossy(&copy);
        assert!(text.starts_with("DKIM-Signature: v=1; a=rsa-sha256; s=relay; d=example.com; c=relaxed/relaxed;"));
        assert_eq!(header_count(&copy, "DKIM-Signature"), 1, "the broken signature is renamed\n{text}");
        assert_eq!(header_count(&copy, "X-Original-DKIM-Signature"), 1, "{text}");
        assert!(text.contains(&format!("\r\nTo: {rcpt}\r\n")) || text.contains(&format!("<{rcpt}>\r\n")), "{text}");
        assert_eq!(verify(&copy, &records).await, [("example.com".to_string(), true)], "{rcpt}'s copy verifies");
        assert!(copy.ends_with(ORIGINAL.split_once("\r\n\r\n").unwrap().1.as_bytes()), "the body is the original's");
    }
    let internal = delivered(&relay, "ops@example.com");
    assert_eq!(header_count(&internal, "X-Original-DKIM-Signature"), 0);
    assert!(internal.ends_with(&original), "the internal copy is the original, after the Received field");
    assert_eq!(verify(&internal, &records).await, [("example.com".to_string(), true)]);
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn an_ed25519_key_for_the_parent_domain_signs_copies_from_a_subdomain() {
    let from_news = ORIGINAL.replace("shop@example.com", "shop@news.example.com");
    let signed_headers = ["From", "To", "Subject", "Date", "Message-ID"];
    let original = sign_mail_auth(from_news.as_bytes(), "rsa", "orig", "news.example.com", &signed_headers);
    let records = [publish("rsa", "orig", "news.example.com"), publish("ed25519", "ed", "example.com")];
    assert_eq!(verify(&original, &records).await, [("news.example.com".to_string(), true)]);
    let relay = TestRelay::start(&config(&key("example.com", "ed", "ed25519", "ed25519-sha256"), "")).await;
    deliver(&relay, &original).await;
    for rcpt in &RCPTS[..3] {
        let copy = delivered(&relay, rcpt);
        assert!(
            String::from_utf8_lossy(&copy).starts_with("DKIM-Signature: v=1; a=ed25519-sha256; s=ed; d=example.com;")
        );
        assert_eq!(header_count(&copy, "X-Original-DKIM-Signature"), 1);
        assert_eq!(verify(&copy, &records).await, [("example.com".to_string(), true)], "{rcpt}");
    }
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn a_signature_that_did_not_cover_to_or_cc_stays_valid_beside_the_new_one() {
    let original = sign_mail_auth(ORIGINAL.as_bytes(), "rsa", "orig", "example.com", &["From", "Subject", "Date"]);
    let records = [publish("rsa", "orig", "example.com"), publish("ed25519", "ed", "example.com")];
    let relay = TestRelay::start(&config(&key("example.com", "ed", "ed25519", "ed25519-sha256"), "")).await;
    deliver(&relay, &original).await;
    let copy = delivered(&relay, RCPTS[0]);
    assert_eq!(header_count(&copy, "X-Original-DKIM-Signature"), 0, "nothing it signed changed");
    let results = verify(&copy, &records).await;
    assert_eq!(results, [("example.com".to_string(), true), ("example.com".to_string(), true)]);
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_aligned_key_copies_go_unsigned_with_the_signature_renamed_or_are_held() {
    let original = sign_mail_auth(ORIGINAL.as_bytes(), "rsa", "orig", "example.com", &["From", "To", "Subject"]);
    let other = key("other.test", "ed", "ed25519", "ed25519-sha256");
    let relay = TestRelay::start(&config(&other, "")).await;
    deliver(&relay, &original).await;
    let copy = delivered(&relay, RCPTS[1]);
    assert_eq!((header_count(&copy, "DKIM-Signature"), header_count(&copy, "X-Original-DKIM-Signature")), (0, 1));
    relay.stop().await.unwrap();

    let relay = TestRelay::start(&config(&other, "[dkim]\nunsigned = \"hold\"\n")).await;
    let reply = relay.send("shop@example.com", &RCPTS, &original).await;
    assert!(reply.starts_with("250 "), "{reply}");
    let (code, list) = common::queue_cli(&relay, &["list", "--held"]);
    assert_eq!(code, 0, "{list}");
    assert_eq!(list.lines().filter(|l| l.contains(" held ")).count(), 1, "{list}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(files_in(&relay.outbox()).is_empty(), "nothing delivered while held");
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn sign_all_signs_a_message_that_was_not_rewritten() {
    let fine = "From: shop@example.com\r\nTo: ann@customer-a.test\r\nSubject: hi\r\n\r\nHello\r\n";
    let records = [publish("rsa", "relay", "example.com")];
    let relay =
        TestRelay::start(&config(&key("example.com", "relay", "rsa", "rsa-sha256"), "[dkim]\nsign_all = true\n")).await;
    let reply = relay.send("shop@example.com", &["ann@customer-a.test"], fine.as_bytes()).await;
    assert!(reply.starts_with("250 "), "{reply}");
    relay.wait_outbox(1).await;
    let copy = delivered(&relay, "ann@customer-a.test");
    assert!(copy.ends_with(fine.as_bytes()), "the message is unchanged below the new fields");
    assert_eq!(verify(&copy, &records).await, [("example.com".to_string(), true)]);
    relay.stop().await.unwrap();
}

/// The relay binary's configuration: directory upstream, spool, and `keys`.
fn binary_config(dir: &std::path::Path, port: u16, keys: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[spool]\ndir = {:?}\n[upstream]\ndirectory = {:?}\n{}",
        dir.join("spool"),
        dir.join("outbox"),
        config(keys, "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reads_the_keys_again_and_keeps_them_when_the_new_file_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let path = dir.path().join("bccguard.toml");
    std::fs::write(&path, binary_config(dir.path(), port, &key("example.com", "one", "ed25519", "ed25519-sha256")))
        .unwrap();
    let log = std::fs::File::create(dir.path().join("relay.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .args(["serve", "--config"])
        .arg(&path)
        .stderr(log)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    common::eventually("the relay listens", || std::net::TcpStream::connect(addr).is_ok()).await;
    let outbox = dir.path().join("outbox");
    let selectors = || -> Vec<String> {
        files_in(&outbox)
            .iter()
            .filter_map(|(_, b)| String::from_utf8_lossy(b).split("; s=").nth(1).map(|s| s[..3].to_string()))
            .collect()
    };
    let hup = |child: &std::process::Child| {
        std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    };
    let deliver = |n: usize| {
        let outbox = outbox.clone();
        async move {
            let mut c = common::RawClient::connect(addr, None).await;
            c.reply().await;
            c.cmd("EHLO t").await;
            let reply = c.transaction("shop@example.com", &RCPTS[..2], ORIGINAL.as_bytes()).await;
            assert!(reply.starts_with("250 "), "{reply}");
            common::eventually("copies", || files_in(&outbox).len() >= n).await;
        }
    };
    deliver(2).await;
    assert_eq!(selectors(), ["one", "one"]);
    std::fs::write(&path, binary_config(dir.path(), port, &key("example.com", "two", "rsa", "rsa-sha256"))).unwrap();
    hup(&child);
    let log_text = || std::fs::read_to_string(dir.path().join("relay.log")).unwrap_or_default();
    common::eventually("the reload", || log_text().contains("configuration reloaded")).await;
    deliver(4).await;
    let mut seen = selectors();
    seen.sort();
    assert_eq!(seen, ["one", "one", "two", "two"]);
    // A key file that is not a key: the file is refused, the running keys stay.
    std::fs::write(dir.path().join("broken.pem"), "not a key").unwrap();
    let broken = format!(
        "[[dkim.keys]]\ndomain = \"example.com\"\nselector = \"bad\"\nkey_file = {:?}\n",
        dir.path().join("broken.pem")
    );
    std::fs::write(&path, binary_config(dir.path(), port, &broken)).unwrap();
    hup(&child);
    common::eventually("the refusal", || log_text().contains("dkim.keys[0].key_file")).await;
    deliver(6).await;
    assert_eq!(selectors().iter().filter(|s| *s == "two").count(), 4, "{:?}", selectors());
    let _ = child.kill();
    let _ = child.wait();
}
