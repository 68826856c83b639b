//! A held message on the real binary killed with SIGKILL: it is still held after a restart
//! (listed, counted, not delivered), and a release journaled before another SIGKILL is
//! delivered once after the next start.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::upstream::TestUpstream;
use common::{RawClient, eventually, http_get, sample, spawn_relay};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `bccguard queue ARGS --config CONFIG`: (exit code, stdout and stderr).
fn queue(config: &Path, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .arg("queue")
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("BCCGUARD_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

async fn start(config: &Path, log: &Path, smtp: SocketAddr, metrics: SocketAddr) -> std::process::Child {
    let child = spawn_relay(config, log);
    eventually("the relay listens", || std::net::TcpStream::connect(smtp).is_ok()).await;
    eventually("the metrics endpoint", || std::net::TcpStream::connect(metrics).is_ok()).await;
    child
}

fn kill(mut child: std::process::Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_message_survives_kill_9_and_its_journaled_release_is_delivered_once() {
    let upstream = TestUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let smtp: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("bccguard.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"{smtp}\"]\n{}[spool]\ndir = {:?}\nretry = [\"200ms\"]\n\
             [policy]\ninternal_domains = [\"example.com\"]\naction = \"hold\"\n\
             [metrics]\nlisten = \"{metrics}\"\n[log]\nlevel = \"warn\"\n",
            upstream.config(""),
            dir.path().join("spool"),
        ),
    )
    .unwrap();
    let log = dir.path().join("relay.log");
    let relay = start(&config, &log, smtp, metrics).await;
    let mut c = RawClient::connect(smtp, None).await;
    c.reply().await;
    c.cmd("EHLO crash").await;
    let message = b"From: shop@example.com\r\nTo: a@x.test, b@y.test\r\nSubject: held\r\n\r\nHello\r\n";
    let reply = c.transaction("shop@example.com", &["a@x.test", "b@y.test"], message).await;
    let id = reply.rsplit(' ').next().unwrap().to_string();
    assert!(reply.starts_with("250 "), "{reply}");
    kill(relay);

    let relay = start(&config, &log, smtp, metrics).await;
    let (code, list) = queue(&config, &["list", "--held"]);
    assert_eq!(code, 0, "{list}");
    assert!(list.contains(&id) && list.contains("1 held message:"), "still held after kill -9: {list}");
    let (_, text) = http_get(metrics, "/metrics");
    assert_eq!(sample(&text, "bccguard_held_messages "), 1.0, "{text}");
    assert!(upstream.deliveries().is_empty());

    // Released while the upstream does not answer: journaled, nothing delivered, then killed.
    upstream.set_silent(true);
    let (code, out) = queue(&config, &["release", &id]);
    assert_eq!(code, 0, "{out}");
    let (_, text) = http_get(metrics, "/metrics");
    assert_eq!(sample(&text, "bccguard_held_releases_total{as=\"explode\"} "), 1.0, "{text}");
    assert_eq!(sample(&text, "bccguard_held_messages "), 0.0);
    kill(relay);
    upstream.set_silent(false);

    let relay = start(&config, &log, smtp, metrics).await;
    let spool = bccguard::spool::SpoolPaths::new(&dir.path().join("spool"));
    eventually("delivered", || spool.ids().unwrap().is_empty()).await;
    kill(relay);
    for rcpt in ["a@x.test", "b@y.test"] {
        let copies = upstream.delivered_to(rcpt);
        assert_eq!(copies.len(), 1, "{rcpt} once\n{}", std::fs::read_to_string(&log).unwrap());
        assert!(String::from_utf8_lossy(&copies[0].data).contains(&format!("\r\nTo: {rcpt}\r\n")));
    }
    let (code, out) = queue(&config, &["release", &id]);
    assert_eq!(code, 1, "gone: {out}");
}
