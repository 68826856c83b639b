//! The campaign breaker with its counts in a real `redis-server` (Debian's package; `.ci/run`
//! installs it), started by each test on a free loopback port with its own directory: two
//! relays on one Redis trip together, and killing Redis mid-run keeps both relays accepting
//! mail (local counts, a log line, `/readyz` detail and a metric).
//!
//! Without `redis-server` these tests are skipped with a message, except in CI (`CI` set),
//! where they fail.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{TestRelay, eventually, http_get, sample};

const LEAK: &[u8] = b"From: app@example.com\r\nTo: ann@alpha.test, ben@beta.test\r\nSubject: offer\r\n\r\nhi\r\n";
const CLEAN: &[u8] = b"From: app@example.com\r\nTo: ann@alpha.test\r\nSubject: receipt\r\n\r\nthanks\r\n";
const RCPTS: [&str; 2] = ["ann@alpha.test", "ben@beta.test"];

/// A `redis-server` of this test's own.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Start one; `None` (skip) when redis-server is not installed, outside CI.
    async fn start() -> Option<Redis> {
        let found = ["/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(binary) = found else {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is missing: .ci/run installs the redis-server package"
            );
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server) ");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let redis = Redis { child, port, _dir: dir };
        eventually("redis-server answers PING", || redis.ping()).await;
        Some(redis)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn config(redis: &Redis) -> String {
    format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[policy]\ninternal_domains = [\"example.com\"]\n\
         [policy.breaker]\nleaks = 2\nwindow = \"1h\"\nduration = \"1h\"\naction = \"tempfail\"\nredis_url = \"{}\"\n",
        redis.url()
    )
}

/// The tests run one at a time: the metrics they read are the process's.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn send(relay: &TestRelay, from: &str, data: &[u8]) -> String {
    let to: &[&str] = if data == CLEAN { &RCPTS[..1] } else { &RCPTS };
    relay.send(from, to, data).await
}

fn breaker_list(relay: &TestRelay) -> String {
    let config = relay.dir.path().join("breaker-cli.toml");
    std::fs::write(&config, format!("[spool]\ndir = {:?}\n", relay.dir.path().join("spool"))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .args(["breaker", "list", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_relays_sharing_one_redis_trip_together() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(redis) = Redis::start().await else {
        return;
    };
    let (a, b) = (TestRelay::start(&config(&redis)).await, TestRelay::start(&config(&redis)).await);
    assert!(send(&a, "app@example.com", LEAK).await.starts_with("250 "));
    assert!(send(&b, "app@example.com", LEAK).await.starts_with("250 "), "the second leak, at the other relay");
    for relay in [&a, &b] {
        assert_eq!(
            send(relay, "app@example.com", CLEAN).await,
            "451 4.7.1 Campaign breaker tripped: too many messages from this sender showed their recipients to \
             each other; try again later"
        );
        assert!(send(relay, "other@example.com", CLEAN).await.starts_with("250 "), "another sender");
    }
    let list = breaker_list(&a);
    assert!(list.lines().nth(1).is_some_and(|l| l.starts_with("app@example.com  tripped  2")), "{list}");
    assert!(list.contains("; counts in Redis."), "{list}");
    let (status, ready) = http_get(a.metrics.unwrap(), "/readyz");
    assert!(ready.contains("breaker counts: ok (redis)\n"), "{status} {ready}");
    // A reset at one relay reopens it for both.
    let config = a.dir.path().join("breaker-cli.toml");
    let reset = Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .args(["breaker", "reset", "app@example.com", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(reset.status.code(), Some(0));
    assert!(send(&b, "app@example.com", CLEAN).await.starts_with("250 "));
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_redis_mid_run_keeps_both_relays_accepting_mail() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let (a, b) = (TestRelay::start(&config(&redis)).await, TestRelay::start(&config(&redis)).await);
    assert!(send(&a, "app@example.com", LEAK).await.starts_with("250 "), "counted in redis");
    redis.kill();
    for relay in [&a, &b] {
        for from in ["app@example.com", "new@example.com"] {
            let reply = send(relay, from, CLEAN).await;
            assert!(reply.starts_with("250 "), "redis down: mail accepted: {reply}");
        }
        let reply = send(relay, "other@example.com", LEAK).await;
        assert!(reply.starts_with("250 "), "{reply}");
        let (status, ready) = http_get(relay.metrics.unwrap(), "/readyz");
        assert!(ready.contains("breaker counts: DEGRADED: redis"), "{ready}");
        assert!(ready.contains("counting in this relay until it is back (mail is accepted)"), "{ready}");
        assert!(!ready.contains("FAILING"), "redis is not a readiness failure: {status} {ready}");
        let metrics = http_get(relay.metrics.unwrap(), "/metrics").1;
        assert_eq!(sample(&metrics, "bccguard_breaker_redis_down "), 1.0, "{metrics}");
        assert!(sample(&metrics, "bccguard_breaker_redis_errors_total") >= 1.0);
    }
    // Local counts still trip, each relay on its own.
    assert!(send(&a, "other@example.com", LEAK).await.starts_with("250 "));
    assert!(send(&a, "other@example.com", CLEAN).await.starts_with("451 4.7.1 "), "tripped on local counts");
    assert!(breaker_list(&a).contains("counts in this relay (redis"), "{}", breaker_list(&a));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_relay_the_cli_reads_and_resets_the_counts_in_redis() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(mut redis) = Redis::start().await else {
        return;
    };
    let relay = TestRelay::start(&config(&redis)).await;
    for _ in 0..2 {
        assert!(send(&relay, "app@example.com", LEAK).await.starts_with("250 "));
    }
    let (_, dir) = relay.shutdown().await;
    let url = redis.url();
    let cli = |args: &[&str]| {
        let path = dir.path().join("offline.toml");
        let text = format!(
            "[spool]\ndir = {:?}\n[policy.breaker]\nleaks = 2\nredis_url = \"{}\"\n",
            dir.path().join("spool"),
            url
        );
        std::fs::write(&path, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_bccguard"))
            .arg("breaker")
            .args(args)
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, list) = cli(&["list"]);
    assert_eq!(code, Some(0), "{list}");
    assert!(list.lines().nth(1).is_some_and(|l| l.starts_with("app@example.com  tripped  2")), "{list}");
    assert_eq!(cli(&["reset", "app@example.com"]), (Some(0), "Reset the breaker of app@example.com.\n".to_string()));
    assert!(cli(&["list"]).1.starts_with("No key is tripped or counting.\n"));
    redis.kill();
    let (code, err) = cli(&["list"]);
    assert_eq!(code, Some(2));
    assert!(err.starts_with("bccguard breaker: no relay is running, and redis: "), "{err}");
}
