//! Crash safety: a relay process killed with SIGKILL under load and restarted on the same
//! spool delivers every message it answered 250 for, with all its copies, at least once.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::upstream::TestUpstream;
use common::{RawClient, eventually, spawn_relay};

async fn wait_listening(addr: std::net::SocketAddr) {
    eventually("the relay listens", || std::net::TcpStream::connect(addr).is_ok()).await;
}

/// The recipients of message `n`: two external (exploded into a copy each), one internal.
fn recipients(n: usize) -> Vec<String> {
    vec![format!("m{n}a@alpha.test"), format!("m{n}b@beta.test"), format!("m{n}c@example.com")]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_relay_delivers_everything_it_accepted_after_a_restart() {
    let upstream = TestUpstream::start().await;
    upstream.set_delay(Duration::from_millis(5));
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = dir.path().join("bccguard.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"{addr}\"]\n{}[spool]\ndir = {:?}\nretry = [\"200ms\"]\n\
             [policy]\ninternal_domains = [\"example.com\"]\n[log]\nlevel = \"warn\"\n",
            upstream.config("max_connections = 4\n"),
            dir.path().join("spool"),
        ),
    )
    .unwrap();
    let log = dir.path().join("relay.log");
    let mut relay = spawn_relay(&config, &log);
    wait_listening(addr).await;

    // Load: eight clients sending until the relay dies under them.
    let accepted = Arc::new(Mutex::new(Vec::<usize>::new()));
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..8 {
        let accepted = accepted.clone();
        clients.spawn(async move {
            let mut c = RawClient::connect(addr, None).await;
            if !c.reply().await.starts_with("220") {
                return;
            }
            c.cmd("EHLO load").await;
            for i in 0.. {
                let n = client * 100_000 + i;
                let rcpts = recipients(n);
                let to = format!("{}, {}", rcpts[0], rcpts[1]);
                let data =
                    format!("From: app@example.com\r\nTo: {to}\r\nSubject: crash-test {n}\r\n\r\nmessage {n}\r\n");
                let mut script = "MAIL FROM:<app@example.com>\r\n".to_string();
                for r in &rcpts {
                    script.push_str(&format!("RCPT TO:<{r}>\r\n"));
                }
                script.push_str("DATA\r\n");
                if !c.try_send(script.as_bytes()).await {
                    return;
                }
                for _ in 0..5 {
                    if c.reply().await.is_empty() {
                        return;
                    }
                }
                if !c.try_send(format!("{data}.\r\n").as_bytes()).await {
                    return;
                }
                let reply = c.reply().await;
                if !reply.starts_with("250 ") {
                    return;
                }
                accepted.lock().unwrap().push(n);
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay.kill().unwrap(); // SIGKILL
    relay.wait().unwrap();
    while clients.join_next().await.is_some() {}
    let accepted = accepted.lock().unwrap().clone();
    assert!(accepted.len() > 20, "the load got going: {} accepted", accepted.len());
    let spooled = bccguard::spool::SpoolPaths::new(&dir.path().join("spool")).ids().unwrap().len();

    let mut relay = spawn_relay(&config, &log);
    wait_listening(addr).await;
    let spool = bccguard::spool::SpoolPaths::new(&dir.path().join("spool"));
    for _ in 0..600 {
        if spool.ids().map(|i| i.is_empty()).unwrap_or(false) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let left = spool.ids().unwrap();
    if !left.is_empty() {
        let _ = relay.kill();
        let first = spool.load_meta(&left[0]).map(|(m, s)| format!("{m:?}\n{s:?}"));
        panic!(
            "{} messages still spooled after the restart; first: {first:?}\nlog:\n{}",
            left.len(),
            std::fs::read_to_string(&log).unwrap()
        );
    }
    relay.kill().unwrap();
    relay.wait().unwrap();

    let mut copies: HashMap<(String, String), usize> = HashMap::new();
    for d in upstream.deliveries() {
        let text = String::from_utf8_lossy(&d.data);
        let subject = text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default().to_string();
        for r in d.rcpts {
            *copies.entry((subject.clone(), r)).or_insert(0) += 1;
        }
    }
    let mut missing = Vec::new();
    for n in &accepted {
        for r in recipients(*n) {
            if !copies.contains_key(&(format!("crash-test {n}"), r.clone())) {
                missing.push(format!("{n}: {r}"));
            }
        }
    }
    let duplicates: usize = copies.values().map(|c| c - 1).sum();
    let delivered: HashSet<&String> = copies.keys().map(|(s, _)| s).collect();
    println!(
        "crash test: {} messages accepted, {spooled} in the spool at the kill, {} copies delivered, {duplicates} duplicates",
        accepted.len(),
        copies.values().sum::<usize>()
    );
    assert!(missing.is_empty(), "accepted but not delivered: {missing:?}\n{}", std::fs::read_to_string(&log).unwrap());
    assert!(delivered.len() >= accepted.len());
}
