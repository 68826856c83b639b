//! What a sidecar deployment relies on: metrics and health over HTTP, `bccguard health`, and
//! SIGHUP reloading the policy and access sections without dropping connections.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::{RawClient, TestRelay, eventually, fixture, http_get, sample};

const METRICS: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n[policy]\ninternal_domains = [\"example.com\"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_after_a_message() {
    let relay = TestRelay::start(METRICS).await;
    let addr = relay.metrics.expect("metrics enabled");
    let (status, before) = http_get(addr, "/metrics");
    assert_eq!(status, 200);
    let exploded = "bccguard_messages_total{action=\"explode\",leak=\"true\"}";
    let delivered = "bccguard_deliveries_total{outcome=\"delivered\"}";

    let mut c = relay.client().await;
    c.cmd("EHLO c").await;
    let rcpts = ["ann@alpha.test", "ben@beta.test", "cat@gamma.test"];
    assert!(c.transaction("app@example.com", &rcpts, &fixture("group.eml")).await.starts_with("250 "));
    relay.wait_outbox(3).await;
    eventually("deliveries counted", || {
        sample(&http_get(addr, "/metrics").1, delivered) >= sample(&before, delivered) + 3.0
    })
    .await;

    let (_, after) = http_get(addr, "/metrics");
    assert_eq!(sample(&after, exploded), sample(&before, exploded) + 1.0, "{after}");
    assert!(sample(&after, "bccguard_copies_created_total") >= sample(&before, "bccguard_copies_created_total") + 3.0);
    assert!(
        sample(&after, "bccguard_message_exposure_count") > sample(&before, "bccguard_message_exposure_count"),
        "{after}"
    );
    for name in ["bccguard_spool_messages", "bccguard_upstream_latency_seconds", "bccguard_bounces_total"] {
        assert!(after.contains(name), "{name} in {after}");
    }
    assert_eq!(http_get(addr, "/healthz"), (200, "ok\n".into()));
    eventually("ready", || http_get(addr, "/readyz").0 == 200).await;
    assert_eq!(http_get(addr, "/readyz").1, "listening: ok\nspool writable: ok\nupstream reachable: ok\n");
    assert_eq!(http_get(addr, "/nope").0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_while_the_upstream_is_unreachable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let relay =
        TestRelay::start(&format!("{METRICS}[upstream]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n")).await;
    let addr = relay.metrics.unwrap();
    let (status, body) = http_get(addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("upstream reachable: FAILING"), "{body}");
    assert_eq!(http_get(addr, "/healthz").0, 200, "alive all the same");
}

fn bccguard(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bccguard")).args(args).env_remove("BCCGUARD_CONFIG").output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_command_checks_the_smtp_greeting() {
    let relay = TestRelay::start("").await;
    let own = tempfile::tempdir().unwrap();
    let config = own.path().join("health.toml");
    std::fs::write(&config, format!("[server]\nlisten = [\"{}\"]\n", relay.addr)).unwrap();
    let out = bccguard(&["health", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(&format!("ok: {}: 220 ", relay.addr)));
    relay.stop().await.unwrap();
    let out = bccguard(&["health", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

/// The relay binary as a child process, on a config file the test rewrites.
struct Child {
    process: std::process::Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Child {
    fn config_text(&self, internal: &str) -> String {
        self.config_with(internal, "127.0.0.0/8")
    }

    fn config_with(&self, internal: &str, relay_network: &str) -> String {
        format!(
            "[server]\nlisten = [\"{}\"]\n[upstream]\ndirectory = {:?}\n[spool]\ndir = {:?}\n\
             [policy]\ninternal_domains = [{internal}]\naction = \"reject\"\n\
             [access]\nrelay_networks = [\"{relay_network}\"]\n",
            self.addr,
            self.dir.path().join("outbox"),
            self.dir.path().join("spool"),
        )
    }

    fn write_config(&self, text: &str) {
        std::fs::write(self.dir.path().join("bccguard.toml"), text).unwrap();
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.process.id().to_string()]).status();
        assert!(status.unwrap().success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default()
    }
}

async fn leak(addr: SocketAddr) -> String {
    let mut c = RawClient::connect(addr, None).await;
    c.reply().await;
    c.cmd("EHLO c").await;
    let data = b"From: app@example.com\r\nTo: a@partner.test, b@partner.test\r\nSubject: s\r\n\r\nbody\r\n";
    c.transaction("app@example.com", &["a@partner.test", "b@partner.test"], data).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_policy_and_refuses_a_broken_file() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Child {
        process: Command::new("true").spawn().unwrap(),
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        dir,
    };
    child.write_config(&child.config_text("\"example.com\""));
    let log = std::fs::File::create(child.dir.path().join("relay.log")).unwrap();
    child.process = Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .args(["serve", "--config"])
        .arg(child.dir.path().join("bccguard.toml"))
        .stderr(log)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let addr = child.addr;
    eventually("the relay listens", || std::net::TcpStream::connect(addr).is_ok()).await;

    assert!(leak(addr).await.starts_with("550 5.7.1 "), "partner.test is external: a leak, rejected");
    // A session opened before the reload goes on after it.
    let mut open = RawClient::connect(addr, None).await;
    open.reply().await;
    open.cmd("EHLO before").await;

    child.write_config(&child.config_text("\"example.com\", \"partner.test\""));
    child.signal("HUP");
    eventually("the reload", || child.log().contains("configuration reloaded")).await;
    assert!(leak(addr).await.starts_with("250 "), "partner.test is internal now: no leak");
    assert_eq!(open.cmd("NOOP").await, "250 2.0.0 Ok", "the open session was not dropped");

    child.write_config("[policy]\naction = \"explod\"\n");
    child.signal("HUP");
    eventually("the refusal", || child.log().contains("configuration not reloaded")).await;
    assert!(child.log().contains("policy.action: unknown variant `explod`"), "{}", child.log());
    assert!(leak(addr).await.starts_with("250 "), "the previous policy still applies");

    // [access] too: loopback may no longer relay, for sessions that start after the reload.
    child.write_config(&child.config_with("\"example.com\", \"partner.test\"", "10.0.0.0/8"));
    child.signal("HUP");
    eventually("the second reload", || child.log().matches("configuration reloaded").count() == 2).await;
    let mut new = RawClient::connect(addr, None).await;
    new.reply().await;
    new.cmd("EHLO after").await;
    new.cmd("MAIL FROM:<app@example.com>").await;
    assert_eq!(new.cmd("RCPT TO:<a@partner.test>").await, "550 5.7.1 Relaying denied");
    open.cmd("MAIL FROM:<app@example.com>").await;
    assert_eq!(open.cmd("RCPT TO:<a@partner.test>").await, "250 2.1.5 Recipient ok", "an open session keeps its rules");

    // Sessions in a transaction would hold the shutdown for its grace period.
    for session in [&mut open, &mut new] {
        session.cmd("QUIT").await;
    }
    child.signal("TERM");
    let status = child.process.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", child.log());
}
