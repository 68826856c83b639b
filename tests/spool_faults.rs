//! Memory and the spool under faults: large messages spilled to disk and delivered from their
//! spool file with every byte intact, the memory budget for data in flight, and damaged spool
//! files set aside instead of being delivered.

mod common;

use std::io::Write;
use std::time::Duration;

use common::upstream::{Stage, TestUpstream};
use common::{TestRelay, eventually, queue_cli_in, test_config};

const FAST: &str = "[spool]\nretry = [\"200ms\"]\n";
const POLICY: &str = "[policy]\ninternal_domains = [\"example.com\"]\n";

/// A message of about `size` bytes showing three customers, with lines that begin with a dot
/// (stuffed on the wire) spread through the body.
fn large_message(size: usize) -> (Vec<u8>, Vec<u8>) {
    let head = b"From: app@example.com\r\nTo: ann@alpha.test, ben@beta.test, cat@gamma.test\r\n\
        Subject: the report\r\nMIME-Version: 1.0\r\n\r\n"
        .to_vec();
    let mut body = Vec::with_capacity(size + 100);
    let mut n = 0u64;
    while body.len() < size {
        n += 1;
        let line = if n.is_multiple_of(97) { format!(".{n:075}\r\n") } else { format!("{n:076x}\r\n") };
        body.extend_from_slice(line.as_bytes());
    }
    body.extend_from_slice(b".\r\n..\r\nend\r\n");
    (head, body)
}

/// Send one message, dot-stuffed as a mailer does.
async fn send(relay: &TestRelay, from: &str, to: &[&str], data: &[u8]) -> String {
    let mut c = relay.client().await;
    c.cmd("EHLO test").await;
    let mut stuffed = Vec::with_capacity(data.len() + 1024);
    for line in data.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            stuffed.push(b'.');
        }
        stuffed.extend_from_slice(line);
    }
    let reply = c.transaction(from, to, &stuffed).await;
    c.cmd("QUIT").await;
    reply
}

fn spill_files(relay_dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(relay_dir.join("spool/queue"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(".spill-"))
        .collect()
}

#[tokio::test]
async fn a_large_message_is_spilled_and_every_copy_carries_its_exact_body() {
    let upstream = TestUpstream::start().await;
    let relay = TestRelay::start(&format!("{}{FAST}{POLICY}", upstream.config(""))).await;
    let (head, body) = large_message(3 << 20);
    let message = [head, body.clone()].concat();
    let rcpts = ["ann@alpha.test", "ben@beta.test", "cat@gamma.test"];
    assert!(send(&relay, "app@example.com", &rcpts, &message).await.starts_with("250 "));
    relay.wait_spool_empty().await;
    for rcpt in rcpts {
        let copies = upstream.delivered_to(rcpt);
        assert_eq!(copies.len(), 1, "{rcpt} gets one copy");
        let data = &copies[0].data;
        let text = String::from_utf8_lossy(&data[..2000]);
        assert!(text.contains(&format!("To: {rcpt}\r\n")), "{text}");
        assert!(data.ends_with(&body), "{rcpt}: the body arrives byte for byte");
        assert!(data.len() < body.len() + 4096, "a header block, then the body and nothing else");
    }
    assert_eq!(spill_files(relay.dir.path()), Vec::<String>::new(), "no spill file is left behind");
}

#[tokio::test]
async fn a_large_message_reaches_the_outbox_whole() {
    let relay = TestRelay::start(POLICY).await;
    let (head, body) = large_message(1 << 20);
    let rcpts = ["ann@alpha.test", "ben@beta.test", "cat@gamma.test"];
    assert!(send(&relay, "app@example.com", &rcpts, &[head, body.clone()].concat()).await.starts_with("250 "));
    let files = relay.wait_outbox(3).await;
    for (name, data) in files {
        assert!(data.ends_with(&body), "{name}: the body is the original's");
    }
}

#[tokio::test]
async fn an_oversized_spilled_message_is_refused_and_its_spill_file_removed() {
    let relay = TestRelay::start(&format!("[server]\nmax_message_size = \"1MiB\"\n{POLICY}")).await;
    let (head, body) = large_message(2 << 20);
    let reply = send(&relay, "app@example.com", &["ann@alpha.test"], &[head, body].concat()).await;
    assert_eq!(reply, "552 5.3.4 Message size exceeds fixed maximum message size");
    assert_eq!(spill_files(relay.dir.path()), Vec::<String>::new());
    assert!(relay.spooled().is_empty());
}

#[tokio::test]
async fn data_gets_452_while_the_memory_budget_is_spent() {
    // Room for two transactions' reservations (192 KiB each), not three.
    let relay = TestRelay::start(&format!("[server]\nmax_data_in_memory = \"400KiB\"\n{POLICY}")).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = relay.client().await;
        c.cmd("EHLO test").await;
        assert!(c.cmd("MAIL FROM:<app@example.com>").await.starts_with("250 "));
        assert!(c.cmd("RCPT TO:<ann@alpha.test>").await.starts_with("250 "));
        clients.push(c);
    }
    assert_eq!(clients[0].cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    assert_eq!(clients[1].cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    assert_eq!(
        clients[2].cmd("DATA").await,
        "452 4.3.1 Insufficient system resources for the message now, try again later"
    );
    // The first message ends: its reservation returns, and the third client's retry is taken.
    clients[0].send(b"Subject: one\r\n\r\nbody\r\n.\r\n").await;
    assert!(clients[0].reply().await.starts_with("250 "));
    assert_eq!(clients[2].cmd("DATA").await, "354 End data with <CR><LF>.<CR><LF>");
    clients[2].send(b"Subject: three\r\n\r\nbody\r\n.\r\n").await;
    assert!(clients[2].reply().await.starts_with("250 "));
    // A client that disconnects in the middle of its data gives its share back too.
    drop(clients.remove(1));
    let mut c = relay.client().await;
    c.cmd("EHLO test").await;
    c.cmd("MAIL FROM:<app@example.com>").await;
    c.cmd("RCPT TO:<ann@alpha.test>").await;
    let mut reply = c.cmd("DATA").await;
    for _ in 0..50 {
        if reply.starts_with("354") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        reply = c.cmd("DATA").await;
    }
    assert_eq!(reply, "354 End data with <CR><LF>.<CR><LF>");
    c.send(b"Subject: four\r\n\r\nbody\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 "));
    relay.stop().await.unwrap();
}

/// The first line (the envelope) of every message file in `dir`, by sender.
fn message_files_by_sender(dir: &std::path::Path) -> std::collections::HashMap<String, std::path::PathBuf> {
    let mut found = std::collections::HashMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "msg") {
            let text = std::fs::read(&path).unwrap();
            let line = &text[..text.iter().position(|&b| b == b'\n').unwrap()];
            let meta: serde_json::Value = serde_json::from_slice(line).unwrap();
            found.insert(meta["sender"].as_str().unwrap().to_string(), path);
        }
    }
    found
}

// Multi-threaded: the queue CLI blocks a thread while the in-process relay answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_spool_files_are_set_aside_listed_and_never_delivered() {
    // First everything is deferred, except recipients starting with "a-".
    let first = TestUpstream::scripted(Box::new(|stage, rcpt, _| {
        (stage == Stage::Rcpt && !rcpt.starts_with("a-")).then(|| "451 4.3.0 later".to_string())
    }))
    .await;
    let relay = TestRelay::start(&format!("{}{FAST}{POLICY}", first.config(""))).await;
    let (head, body) = large_message(1 << 20);
    let big = [head, body].concat();
    let small = b"From: app@example.com\r\nTo: x@client.test\r\nSubject: s\r\n\r\nhello\r\n";
    for sender in ["zero@example.com", "garbage@example.com"] {
        assert!(send(&relay, sender, &["x@client.test"], small).await.starts_with("250 "));
    }
    assert!(send(&relay, "big@example.com", &["x@client.test"], &big).await.starts_with("250 "));
    let two = b"From: app@example.com\r\nTo: a-1@client.test\r\nCc: b-1@client.test\r\nSubject: s\r\n\r\nhi\r\n";
    assert!(
        send(&relay, "journal@example.com", &["a-1@client.test", "b-1@client.test"], two).await.starts_with("250 ")
    );
    let queue = relay.dir.path().join("spool/queue");
    eventually("every message journaled", || {
        std::fs::read_dir(&queue)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "state"))
            .count()
            == 4
    })
    .await;
    assert_eq!(first.delivered_to("a-1@client.test").len(), 1);
    let (result, dir) = relay.shutdown().await;
    result.unwrap();

    // Damage three message files and the journal of the fourth, as a disk or a person might.
    let files = message_files_by_sender(&dir.path().join("spool/queue"));
    let len = std::fs::metadata(&files["big@example.com"]).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&files["big@example.com"]).unwrap().set_len(len / 2).unwrap();
    std::fs::OpenOptions::new().write(true).open(&files["zero@example.com"]).unwrap().set_len(0).unwrap();
    let mut garbage = std::fs::read(&files["garbage@example.com"]).unwrap();
    garbage[..12].copy_from_slice(b"#!garbage!#\0");
    std::fs::write(&files["garbage@example.com"], garbage).unwrap();
    let journal = files["journal@example.com"].with_extension("state");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .unwrap()
        .write_all(b"\x00\x01{garbage\n{\"event\":\"deliv")
        .unwrap();
    let ids: std::collections::HashMap<&str, String> =
        files.iter().map(|(s, p)| (s.as_str(), p.file_stem().unwrap().to_string_lossy().into_owned())).collect();

    let (code, listed, _) = queue_cli_in(dir.path(), &["list"]);
    assert_eq!(code, 0);
    assert!(listed.contains("4 messages"), "every entry is listed, readable or not:\n{listed}");
    assert!(listed.lines().any(|l| l.contains(&ids["zero@example.com"]) && l.contains("unreadable")), "{listed}");

    let second = TestUpstream::start().await;
    let config = test_config(&format!("{}{FAST}{POLICY}", second.config("")), dir.path());
    let relay = TestRelay::start_with(config, dir).await;
    relay.wait_spool_empty().await;
    assert_eq!(second.delivered_to("b-1@client.test").len(), 1, "the journal's good records were kept");
    assert!(second.delivered_to("a-1@client.test").is_empty(), "a recorded delivery is not repeated");
    assert!(second.delivered_to("x@client.test").is_empty(), "no damaged message is delivered");
    let damaged = relay.dir.path().join("spool/damaged");
    for sender in ["big@example.com", "zero@example.com", "garbage@example.com"] {
        assert!(damaged.join(format!("{}.msg", ids[sender])).exists(), "{sender} set aside");
    }
    let reason = |s: &str| std::fs::read_to_string(damaged.join(format!("{}.reason", ids[s]))).unwrap();
    assert!(
        reason("big@example.com").contains("bytes after the envelope line, which says"),
        "{}",
        reason("big@example.com")
    );
    assert!(reason("zero@example.com").contains("empty file"));
    assert!(reason("garbage@example.com").contains("bad envelope line"));

    let (code, listed, _) = queue_cli_in(relay.dir.path(), &["list"]);
    assert_eq!(code, 0);
    assert_eq!(listed.lines().filter(|l| l.split_whitespace().nth(1) == Some("damaged")).count(), 3, "{listed}");
    assert!(listed.contains("3 damaged or unreadable, never delivered"), "{listed}");
    let big_line = listed.lines().find(|l| l.contains(&ids["big@example.com"])).unwrap();
    assert!(big_line.contains("b***@example.com"), "what the envelope line still tells: {big_line}");
    let (code, json, _) = queue_cli_in(relay.dir.path(), &["list", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v.as_array().unwrap().iter().all(|e| e["state"] == "damaged"), "{json}");

    let (code, out, _) = queue_cli_in(relay.dir.path(), &["delete", &ids["big@example.com"]]);
    assert_eq!((code, out.trim().to_string()), (0, format!("Deleted {}.", ids["big@example.com"])));
    assert!(!damaged.join(format!("{}.msg", ids["big@example.com"])).exists());
    let metrics = bccguard::metrics::metrics().encode();
    assert!(!metrics.contains("bccguard_spool_damaged_total 0\n"), "counted:\n{metrics}");
    relay.stop().await.unwrap();
}
