//! The guarantees under faults, on the real binary: an upstream that refuses the relay's
//! login, and a spool disk that fills up, each with a `kill -9` in the middle. Nothing
//! answered 250 is lost, and no copy whose delivery was recorded is sent again.
//!
//! The full-disk tests mount a small tmpfs for the spool (as CI does, running as root); where
//! mounting is not allowed they say so and stop.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::upstream::{Stage, TestUpstream};
use common::{RawClient, TestRelay, eventually, sample, spawn_relay, test_config};

const POLICY: &str = "[policy]\ninternal_domains = [\"example.com\"]\n";

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

async fn wait_listening(addr: std::net::SocketAddr) {
    eventually("the relay listens", || std::net::TcpStream::connect(addr).is_ok()).await;
}

/// Send message `n` to its two external recipients (exploded: a copy each).
async fn send_two(addr: std::net::SocketAddr, n: usize, a: &str, b: &str) {
    let mut c = RawClient::connect(addr, None).await;
    assert!(c.reply().await.starts_with("220 "));
    c.cmd("EHLO test").await;
    let data = format!("From: app@example.com\r\nTo: {a}, {b}\r\nSubject: m{n}\r\n\r\nmessage {n}\r\n");
    let reply = c.transaction("app@example.com", &[a, b], data.as_bytes()).await;
    assert!(reply.starts_with("250 "), "{reply}");
    c.cmd("QUIT").await;
}

fn spool_ids(spool: &Path) -> Vec<String> {
    bccguard::spool::SpoolPaths::new(spool).ids().unwrap().iter().map(ToString::to_string).collect()
}

/// Wait (up to a minute) until the spool is empty; the log explains a failure.
async fn wait_drained(spool: &Path, log: &Path) {
    for _ in 0..600 {
        if spool_ids(spool).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("still spooled: {:?}\nlog:\n{}", spool_ids(spool), std::fs::read_to_string(log).unwrap_or_default());
}

fn kill9(mut relay: Child) {
    relay.kill().unwrap(); // SIGKILL
    relay.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_then_a_kill_then_the_fix_delivers_every_copy_once() {
    let upstream = TestUpstream::start().await;
    upstream.refuse(Stage::Auth, Some("535 5.7.8 Authentication credentials invalid"));
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let config = dir.path().join("bccguard.toml");
    let spool = dir.path().join("spool");
    let credentials = "username = \"relay\"\npassword = \"secret\"\nmax_connections = 4\n";
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"{addr}\"]\n{}[spool]\ndir = {spool:?}\nretry = [\"300ms\"]\n{POLICY}[log]\nlevel = \"warn\"\n",
            upstream.config(credentials)
        ),
    )
    .unwrap();
    let log = dir.path().join("relay.log");
    let relay = spawn_relay(&config, &log);
    wait_listening(addr).await;
    for n in 0..10 {
        send_two(addr, n, &format!("a{n}@alpha.test"), &format!("b{n}@beta.test")).await;
    }
    eventually("every copy refused at least twice", || upstream.auths() >= 40).await;
    assert!(upstream.deliveries().is_empty());
    kill9(relay);
    assert_eq!(spool_ids(&spool).len(), 10, "all ten kept through the refusals and the kill");

    upstream.refuse(Stage::Auth, None);
    let relay = spawn_relay(&config, &log);
    wait_listening(addr).await;
    wait_drained(&spool, &log).await;
    kill9(relay);
    for n in 0..10 {
        for rcpt in [format!("a{n}@alpha.test"), format!("b{n}@beta.test")] {
            assert_eq!(upstream.delivered_to(&rcpt).len(), 1, "{rcpt} exactly once");
        }
    }
    assert_eq!(upstream.deliveries().len(), 20, "twenty copies and no bounce");
}

/// A small filesystem for the spool, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    /// Mount a tmpfs of `mib` MiB at `path`; `None` where mounting is not allowed.
    fn mount(path: PathBuf, mib: u32) -> Option<SmallDisk> {
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("not run: mounting a tmpfs needs root (CI runs this test as root)");
            return None;
        }
        Some(SmallDisk { path })
    }

    /// Fill what is left with a file (ENOSPC for everyone else).
    fn fill(&self) {
        let mut file = std::fs::File::create(self.path.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while std::io::Write::write_all(&mut file, &block).is_ok() {}
        // tmpfs may have room for a few bytes more in the last page.
        let _ = std::io::Write::write_all(&mut file, &block[..1]);
    }

    fn free(&self) {
        std::fs::remove_file(self.path.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Recipients starting with `b` are refused (451) on their first attempt, `c` on their first
/// three; the rest are accepted. The refusal is a long multi-line reply, so that each journal
/// record of it takes about 2.7 KiB: a full disk still takes appends that fit in a journal's
/// last allocated page, and these do not.
async fn refusing_b_once_and_c_thrice() -> TestUpstream {
    let script = |stage, rcpt: &str, attempt| {
        let refusals = match rcpt.as_bytes()[0] {
            b'b' => 1,
            b'c' => 3,
            _ => 0,
        };
        let line = "greylisted, come back later ".repeat(32);
        let reply = format!("451-4.3.0 {line}\r\n451-4.3.0 {line}\r\n451 4.3.0 {line}");
        (stage == Stage::Rcpt && attempt <= refusals).then_some(reply)
    };
    TestUpstream::scripted(Box::new(script)).await
}

/// Journal writes that failed, from the relay's metrics (in this process).
fn journal_failures() -> f64 {
    sample(&bccguard::metrics::metrics().encode(), "bccguard_journal_write_failures_total ")
}

/// Send message `n` to `a{n}`, `b{n}` and `c{n}`.
async fn send_three(addr: std::net::SocketAddr, n: usize) {
    let rcpts = [format!("a{n}@alpha.test"), format!("b{n}@beta.test"), format!("c{n}@gamma.test")];
    let mut c = RawClient::connect(addr, None).await;
    assert!(c.reply().await.starts_with("220 "));
    c.cmd("EHLO test").await;
    let data = format!("From: app@example.com\r\nTo: {}\r\nSubject: m{n}\r\n\r\nmessage {n}\r\n", rcpts.join(", "));
    let to: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let reply = c.transaction("app@example.com", &to, data.as_bytes()).await;
    assert!(reply.starts_with("250 "), "{reply}");
    c.cmd("QUIT").await;
}

fn attempts_all(upstream: &TestUpstream, prefix: char, at_least: u32) -> bool {
    (0..5).all(|n| {
        let domain = match prefix {
            'a' => "alpha",
            'b' => "beta",
            _ => "gamma",
        };
        upstream.attempts(&format!("{prefix}{n}@{domain}.test")) >= at_least
    })
}

fn copies(upstream: &TestUpstream, prefix: char, n: usize) -> usize {
    let domain = match prefix {
        'a' => "alpha",
        'b' => "beta",
        _ => "gamma",
    };
    upstream.delivered_to(&format!("{prefix}{n}@{domain}.test")).len()
}

fn journals_with(spool: &Path, what: &str) -> usize {
    let queue = spool.join("queue");
    std::fs::read_dir(queue)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "state"))
        .filter(|e| std::fs::read_to_string(e.path()).unwrap_or_default().contains(what))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_during_delivery_then_freed_resends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(dir.path().join("fs"), 8) else {
        return;
    };
    let upstream = refusing_b_once_and_c_thrice().await;
    let spool = disk.path.join("spool");
    let toml = format!(
        "{}[spool]\ndir = {spool:?}\nretry = [\"300ms\"]\nmin_free = \"0\"\n{POLICY}",
        upstream.config("max_connections = 2\n")
    );
    let relay = TestRelay::start_with(test_config(&toml, dir.path()), tempfile::tempdir().unwrap()).await;
    let failures_before = journal_failures();
    for n in 0..5 {
        send_three(relay.addr, n).await;
    }
    // First pass, with room on the disk: a delivered, b and c refused, all recorded.
    eventually("five journals on disk", || journals_with(&spool, "\"deferred\"") == 5).await;
    disk.fill();
    // Second pass: b delivered, c refused, and the journal cannot take it. Third pass: c
    // refused again. b must not go out a second time.
    eventually("every c tried three times", || attempts_all(&upstream, 'c', 3)).await;
    assert!(journal_failures() > failures_before, "the journal could not be written while the disk was full");
    for n in 0..5 {
        assert_eq!(copies(&upstream, 'b', n), 1, "b{n}: delivered while the disk was full, not sent again");
    }
    disk.free();
    eventually("the spool drains once the disk has room", || spool_ids(&spool).is_empty()).await;
    for n in 0..5 {
        for p in ['a', 'b', 'c'] {
            assert_eq!(copies(&upstream, p, n), 1, "{p}{n} exactly once");
        }
    }
    assert!(upstream.delivered_to("app@example.com").is_empty(), "nothing bounced");
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_and_a_kill_lose_nothing_and_resend_nothing_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(dir.path().join("fs"), 8) else {
        return;
    };
    let upstream = refusing_b_once_and_c_thrice().await;
    let spool = disk.path.join("spool");
    let addr = free_port();
    let config = dir.path().join("bccguard.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"{addr}\"]\n{}[spool]\ndir = {spool:?}\nretry = [\"300ms\"]\nmin_free = \"0\"\n\
             {POLICY}[log]\nlevel = \"warn\"\n",
            upstream.config("max_connections = 2\n")
        ),
    )
    .unwrap();
    let log = dir.path().join("relay.log");
    let relay = spawn_relay(&config, &log);
    wait_listening(addr).await;
    for n in 0..5 {
        send_three(addr, n).await;
    }
    // a's delivery is recorded (with b's and c's refusals) while the disk has room.
    eventually("five journals recording a", || journals_with(&spool, "\"delivered\"") == 5).await;
    disk.fill();
    // b delivered with the disk full (held in memory only), then the relay dies.
    eventually("every c tried twice", || attempts_all(&upstream, 'c', 2)).await;
    eventually("journal failures logged", || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("cannot write the delivery journal")
    })
    .await;
    kill9(relay);
    disk.free();

    let relay = spawn_relay(&config, &log);
    wait_listening(addr).await;
    wait_drained(&spool, &log).await;
    kill9(relay);
    let mut resent = 0;
    for n in 0..5 {
        assert_eq!(copies(&upstream, 'a', n), 1, "a{n}: recorded before the kill, never sent again");
        let b = copies(&upstream, 'b', n);
        assert!(b >= 1, "b{n}: never lost");
        resent += b - 1;
        assert_eq!(copies(&upstream, 'c', n), 1, "c{n}: delivered after the restart, once");
    }
    // b's deliveries were in memory only when the relay died: sending them again is the
    // at-least-once the spool promises.
    println!("full disk and kill -9: {resent} of 5 unrecorded deliveries sent again");
    assert!(upstream.delivered_to("app@example.com").is_empty(), "nothing bounced");
}

/// A spool disk with no room left (and `spool.min_free` off, so MAIL does not see it coming)
/// refuses new mail with the contract's `451 4.3.0` at its final dot, whether the message was
/// held in memory or was being spilled to a file, and keeps nothing; the same session sends
/// both once there is room, and both arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_mail_with_451_until_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(dir.path().join("fs"), 8) else {
        return;
    };
    let upstream = TestUpstream::start().await;
    let spool = disk.path.join("spool");
    let toml = format!("{}[spool]\ndir = {spool:?}\nmin_free = \"0\"\n{POLICY}", upstream.config(""));
    let relay = TestRelay::start_with(test_config(&toml, dir.path()), tempfile::tempdir().unwrap()).await;
    let small = b"From: app@example.com\r\nTo: b@client.test\r\nSubject: small\r\n\r\nhello\r\n".to_vec();
    let line = format!("{}\r\n", "x".repeat(76));
    let big = format!(
        "From: app@example.com\r\nTo: b@client.test\r\nSubject: big\r\n\r\n{}",
        line.repeat(bccguard::smtp::SPILL_AT / line.len() * 2)
    )
    .into_bytes();
    disk.fill();
    let mut c = RawClient::connect(relay.addr, None).await;
    assert!(c.reply().await.starts_with("220 "));
    c.cmd("EHLO full").await;
    for data in [&small, &big] {
        let reply = c.transaction("app@example.com", &["b@client.test"], data).await;
        assert_eq!(reply, "451 4.3.0 Temporary failure storing the message, try again later");
    }
    assert!(spool_ids(&spool).is_empty(), "nothing refused is queued");

    disk.free();
    for data in [&small, &big] {
        let reply = c.transaction("app@example.com", &["b@client.test"], data).await;
        assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    }
    eventually("both delivered", || upstream.delivered_to("b@client.test").len() == 2).await;
    let delivered = upstream.delivered_to("b@client.test");
    for (d, sent) in delivered.iter().zip([&small, &big]) {
        assert!(d.data.ends_with(sent), "delivered whole after its Received field");
    }
    relay.stop().await.unwrap();
}
