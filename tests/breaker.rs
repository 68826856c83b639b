//! The campaign breaker end to end (SPEC §9), counts in the relay: N leaking messages trip
//! it, the next clean message from the same sender is held (or gets 451 4.7.1), another
//! sender is unaffected, `bccguard breaker list` and `reset` work against the running relay,
//! a trip is notified, and the breaker closes by itself after `duration`. A reload keeps the
//! counts.

mod common;

use std::path::Path;

use common::{TestRelay, eventually, http_get, queue_cli, sample};

const LEAK: &[u8] = b"From: app@example.com\r\nTo: ann@alpha.test, ben@beta.test\r\nSubject: offer\r\n\r\nhi\r\n";
const CLEAN: &[u8] = b"From: app@example.com\r\nTo: ann@alpha.test\r\nSubject: receipt\r\n\r\nthanks\r\n";
const RCPTS: [&str; 2] = ["ann@alpha.test", "ben@beta.test"];

fn config(breaker: &str) -> String {
    format!(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[notify]\nadmins = [\"ops@example.com\"]\n\
         [policy]\ninternal_domains = [\"example.com\"]\n[policy.breaker]\n{breaker}"
    )
}

/// `bccguard breaker ARGS` against the relay's spool: (exit code, stdout, stderr).
pub fn breaker_cli(dir: &Path, args: &[&str]) -> (i32, String, String) {
    common::cli_in(dir, "breaker", args)
}

async fn send(relay: &TestRelay, from: &str, data: &[u8]) -> String {
    let to: &[&str] = if data == CLEAN { &RCPTS[..1] } else { &RCPTS };
    relay.send(from, to, data).await
}

#[tokio::test(flavor = "multi_thread")]
async fn leaks_trip_the_breaker_the_next_clean_message_is_held_and_reset_reopens_it() {
    let relay = TestRelay::start(&config("leaks = 3\nwindow = \"1h\"\nduration = \"1h\"\n")).await;
    let metrics = relay.metrics.unwrap();
    let trips_before = sample(&http_get(metrics, "/metrics").1, "bccguard_breaker_trips_total");
    for _ in 0..3 {
        assert!(send(&relay, "app@example.com", LEAK).await.starts_with("250 "));
    }
    let notice = relay.wait_outbox(7).await;
    let notice: Vec<_> =
        notice.iter().filter(|(_, b)| String::from_utf8_lossy(b).contains("Delivered-To: ops@example.com")).collect();
    assert_eq!(notice.len(), 1, "the admins hear of the trip");
    assert!(String::from_utf8_lossy(&notice[0].1).contains("X-Bccguard: notice"));

    let reply = send(&relay, "app@example.com", CLEAN).await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let (code, held) = queue_cli(&relay, &["list", "--held"]);
    assert_eq!(code, 0, "{held}");
    assert!(held.lines().nth(1).unwrap().contains(" breaker "), "held by the breaker: {held}");
    assert!(send(&relay, "other@example.com", CLEAN).await.starts_with("250 "));
    relay.wait_outbox(8).await;

    let (code, list, err) = breaker_cli(relay.dir.path(), &["list"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines[0], "KEY              STATE    COUNT  TRIPPED  CLOSES", "{list}");
    assert!(lines[1].starts_with("app@example.com  tripped  3      "), "{list}");
    assert!(list.contains("3 leaking messages within 1h from one sender trip it for 1h; then held for review (hold); counts in this relay."), "{list}");
    let (_, json, _) = breaker_cli(relay.dir.path(), &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((v["keys"][0]["key"].as_str(), v["keys"][0]["count"].as_u64()), (Some("app@example.com"), Some(3)));
    assert_eq!(v["store"]["store"], "local");

    let (code, out, _) = breaker_cli(relay.dir.path(), &["reset", "app@example.com"]);
    assert_eq!((code, out.as_str()), (0, "Reset the breaker of app@example.com.\n"));
    let (code, out, _) = breaker_cli(relay.dir.path(), &["reset", "app@example.com"]);
    assert_eq!((code, out.as_str()), (1, "app@example.com is neither tripped nor counted; nothing done.\n"));
    assert!(send(&relay, "app@example.com", CLEAN).await.starts_with("250 "));
    relay.wait_outbox(9).await;
    let after = http_get(metrics, "/metrics").1;
    assert!(sample(&after, "bccguard_breaker_trips_total") > trips_before);
    assert!(sample(&after, "bccguard_decisions_total{rule=\"breaker\",action=\"hold\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn tempfail_answers_451_until_the_breaker_closes_by_itself() {
    let relay =
        TestRelay::start(&config("leaks = 2\nwindow = \"1h\"\nduration = \"2s\"\naction = \"tempfail\"\n")).await;
    for _ in 0..2 {
        assert!(send(&relay, "app@example.com", LEAK).await.starts_with("250 "));
    }
    let mut c = relay.client().await;
    c.cmd("EHLO app").await;
    assert_eq!(
        c.transaction("app@example.com", &RCPTS[..1], CLEAN).await,
        "451 4.7.1 Campaign breaker tripped: too many messages from this sender showed their recipients to each \
         other; try again later"
    );
    assert_eq!(c.cmd("RSET").await, "250 2.0.0 Ok", "the session goes on");
    assert!(c.transaction("other@example.com", &RCPTS[..1], CLEAN).await.starts_with("250 "), "another sender");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert!(c.transaction("app@example.com", &RCPTS[..1], CLEAN).await.starts_with("250 "), "closed by itself");
    let (_, list, _) = breaker_cli(relay.dir.path(), &["list"]);
    assert!(list.starts_with("No key is tripped or counting.\n"), "{list}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_is_off_without_leaks_and_the_cli_needs_a_running_relay() {
    let relay = TestRelay::start("[policy]\ninternal_domains = [\"example.com\"]\n").await;
    for _ in 0..5 {
        assert!(send(&relay, "app@example.com", LEAK).await.starts_with("250 "));
    }
    let (code, list, _) = breaker_cli(relay.dir.path(), &["list"]);
    assert_eq!((code, list.as_str()), (0, "The campaign breaker is off (set policy.breaker.leaks).\n"));
    let (_, dir) = relay.shutdown().await;
    let (code, _, err) = breaker_cli(dir.path(), &["list"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("bccguard breaker: no relay is running on "), "{err}");
}

/// The real binary, reloaded by SIGHUP: the counts survive, the new rules and breaker
/// settings apply to new messages.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_keeps_the_counts_and_applies_new_rules_and_breaker_settings() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let base = format!(
        "[server]\nlisten = [\"{addr}\"]\n[upstream]\ndirectory = {:?}\n[spool]\ndir = {:?}\n\
         [policy]\ninternal_domains = [\"example.com\"]\n",
        dir.path().join("outbox"),
        dir.path().join("spool")
    );
    let path = dir.path().join("bccguard.toml");
    std::fs::write(&path, format!("{base}[policy.breaker]\nleaks = 3\n")).unwrap();
    let mut child = common::spawn_relay(&path, &dir.path().join("relay.log"));
    eventually("the relay listens", || std::net::TcpStream::connect(addr).is_ok()).await;
    let send = |from: &'static str, data: &'static [u8]| async move {
        let mut c = common::RawClient::connect(addr, None).await;
        c.reply().await;
        c.cmd("EHLO c").await;
        let to: &[&str] = if data == CLEAN { &RCPTS[..1] } else { &RCPTS };
        c.transaction(from, to, data).await
    };
    for _ in 0..2 {
        assert!(send("app@example.com", LEAK).await.starts_with("250 "));
    }
    let rule = "[[policy.rules]]\nname = \"receipts\"\nheaders = { Subject = \"receipt*\" }\naction = \"reject\"\n\
                max_visible_external = 0\n";
    std::fs::write(&path, format!("{base}{rule}[policy.breaker]\nleaks = 3\naction = \"tempfail\"\n")).unwrap();
    let hup = std::process::Command::new("kill").args(["-HUP", &child.id().to_string()]).status().unwrap();
    assert!(hup.success());
    let log = || std::fs::read_to_string(dir.path().join("relay.log")).unwrap_or_default();
    eventually("the reload", || log().contains("configuration reloaded")).await;
    assert!(send("app@example.com", LEAK).await.starts_with("250 "), "the third leak trips it: counts kept");
    assert!(send("app@example.com", CLEAN).await.starts_with("451 4.7.1 "), "the new breaker action");
    let refused = send("other@example.com", CLEAN).await;
    assert!(refused.starts_with("550 5.7.1 "), "the new rule: {refused}");
    let term = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(term.success());
    assert_eq!(child.wait().unwrap().code(), Some(0), "{}", log());
}
