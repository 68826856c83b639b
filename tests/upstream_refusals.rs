//! Refusals about the relay rather than the recipient (AUTH, TLS, greeting, EHLO, MAIL for the
//! relay's own reasons) defer every copy and turn `/readyz` 503; they never bounce. And an
//! upstream that talks without end is cut off.

mod common;

use std::time::Duration;

use common::upstream::{Stage, TestUpstream};
use common::{TestRelay, eventually, fixture, http_get, queue_cli, sample};

const POLICY: &str = "[policy]\ninternal_domains = [\"example.com\"]\n";
const SIMPLE: &[u8] = b"From: app@example.com\r\nTo: customer@client.test\r\nSubject: hi\r\n\r\nhello\r\n";
const CREDENTIALS: &str = "username = \"relay\"\npassword = \"secret\"\n";

/// A relay with metrics, a long retry interval (only `queue retry` brings the next attempt
/// soon) and `upstream_extra` in `[upstream]`.
async fn relay_to(upstream: &TestUpstream, upstream_extra: &str) -> TestRelay {
    let metrics = "[metrics]\nlisten = \"127.0.0.1:0\"\n";
    TestRelay::start(&format!("{}{metrics}[spool]\nretry = [\"1h\"]\n{POLICY}", upstream.config(upstream_extra))).await
}

// Multi-threaded: the queue CLI blocks a thread while the in-process relay answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_auth_refused_then_fixed_defers_everything_and_delivers_each_copy_once() {
    let upstream = TestUpstream::start().await;
    upstream.refuse(Stage::Auth, Some("535 5.7.8 Authentication credentials invalid"));
    let relay = relay_to(&upstream, CREDENTIALS).await;
    let metrics = relay.metrics.unwrap();
    let refusals_before = sample(&http_get(metrics, "/metrics").1, "bccguard_upstream_refusals_total{stage=\"auth\"}");
    let group = ["ann@alpha.test", "ben@beta.test", "cat@gamma.test"];
    assert!(relay.send("app@example.com", &group, &fixture("group.eml")).await.starts_with("250 "));
    assert!(relay.send("app@example.com", &["customer@client.test"], SIMPLE).await.starts_with("250 "));
    eventually("four refused attempts", || upstream.auths() >= 4).await;
    eventually("journaled", || queue_cli(&relay, &["list"]).1.matches("AUTH refused").count() == 2).await;

    assert_eq!(upstream.mails(), 0, "no transaction without AUTH");
    assert!(upstream.deliveries().is_empty());
    assert_eq!(relay.spooled().len(), 2, "nothing bounced, nothing dropped");
    let (_, listed) = queue_cli(&relay, &["list"]);
    assert!(listed.contains("2 messages, 4 transactions pending"), "{listed}");
    assert!(listed.contains("AUTH refused: 535 5.7.8 Authentication credentials invalid"), "{listed}");
    let (status, body) = http_get(metrics, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(
            "upstream accepts the relay: FAILING: AUTH refused: 535 5.7.8 Authentication credentials invalid\n"
        ),
        "{body}"
    );
    let exposition = http_get(metrics, "/metrics").1;
    let refusals = sample(&exposition, "bccguard_upstream_refusals_total{stage=\"auth\"}");
    assert!(refusals >= refusals_before + 4.0, "{exposition}");
    assert!(exposition.contains("# TYPE bccguard_upstream_refusing gauge\n"), "{exposition}");

    upstream.refuse(Stage::Auth, None);
    let (code, out) = queue_cli(&relay, &["retry"]);
    assert_eq!((code, out.trim()), (0, "Retrying 2 messages now."));
    relay.wait_spool_empty().await;
    for rcpt in group.iter().chain(&["customer@client.test"]) {
        assert_eq!(upstream.delivered_to(rcpt).len(), 1, "{rcpt} exactly once");
    }
    assert_eq!(upstream.deliveries().len(), 4, "four copies, no bounce");
    assert!(upstream.delivered_to("app@example.com").is_empty(), "nothing bounced");
    let (status, body) = http_get(metrics, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("upstream accepts the relay: ok\n"), "{body}");
}

/// Each refusal of the relay at greeting, EHLO or MAIL: the copy is deferred (kept, never
/// bounced), `/readyz` names the stage, and once the upstream accepts, one delivery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_at_greeting_ehlo_and_mail_defer_and_never_bounce() {
    let cases = [
        (Stage::Greeting, "554 5.3.2 upstream.test not accepting mail", "greeting refused: 554 5.3.2", (0, 0)),
        (Stage::Ehlo, "550 5.7.1 you are not welcome", "EHLO refused: 550 5.7.1", (1, 0)),
        (Stage::Mail, "530 5.7.0 Must issue a STARTTLS command first", "MAIL refused: 530 5.7.0", (1, 1)),
        (Stage::Mail, "554 5.7.1 Relay access denied", "MAIL refused: 554 5.7.1", (1, 1)),
    ];
    for (stage, reply, shown, (ehlos, mails)) in cases {
        let upstream = TestUpstream::start().await;
        upstream.refuse(stage, Some(reply));
        let relay = relay_to(&upstream, "").await;
        assert!(relay.send("app@example.com", &["customer@client.test"], SIMPLE).await.starts_with("250 "));
        eventually("the refusal journaled", || queue_cli(&relay, &["list"]).1.contains(shown)).await;
        assert_eq!((upstream.ehlos(), upstream.mails()), (ehlos, mails), "{stage:?}: one attempt");
        assert_eq!(relay.spooled().len(), 1, "{stage:?}: kept, not bounced");
        let (status, body) = http_get(relay.metrics.unwrap(), "/readyz");
        assert_eq!(status, 503, "{stage:?}: {body}");
        assert!(body.contains(&format!("upstream accepts the relay: FAILING: {shown}")), "{body}");

        upstream.refuse(stage, None);
        assert_eq!(queue_cli(&relay, &["retry"]).0, 0);
        relay.wait_spool_empty().await;
        assert_eq!(upstream.delivered_to("customer@client.test").len(), 1, "{stage:?}");
        assert_eq!(upstream.deliveries().len(), 1, "{stage:?}: no bounce");
        assert_eq!(http_get(relay.metrics.unwrap(), "/readyz").0, 200);
    }
}

/// A refusal about the sender at MAIL still fails and bounces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_sender_at_mail_still_bounces() {
    let upstream = TestUpstream::scripted(Box::new(|_, _, _| None)).await;
    upstream.refuse(Stage::Mail, Some("553 5.1.7 bad sender address"));
    let relay = relay_to(&upstream, "").await;
    assert!(relay.send("app@example.com", &["customer@client.test"], SIMPLE).await.starts_with("250 "));
    // The DSN (null sender) is refused the same way: it stays queued as a failed bounce.
    eventually("the original finished, the DSN kept", || queue_cli(&relay, &["list"]).1.contains("failed bounce"))
        .await;
    assert_eq!(upstream.mails(), 2, "the copy once, the DSN once");
    assert_eq!(http_get(relay.metrics.unwrap(), "/readyz").0, 200, "not a refusal of the relay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_greeting_is_cut_off_and_the_copy_deferred() {
    let upstream = TestUpstream::start().await;
    upstream.set_endless_greeting(true);
    let relay = relay_to(&upstream, "timeout = \"60s\"\n").await;
    let started = std::time::Instant::now();
    assert!(relay.send("app@example.com", &["customer@client.test"], SIMPLE).await.starts_with("250 "));
    eventually("deferred", || {
        let json = queue_cli(&relay, &["list", "--json"]).1;
        json.contains("the upstream sent a reply longer than 4096 bytes")
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(20), "cut off long before the 60s timeout");
    let (sent, hung_up) = upstream.endless_sent();
    // What the relay read is bounded by 4 KiB (one reply); the rest sat in socket buffers.
    assert!(hung_up && sent < 32 << 20, "{sent} bytes sent before the relay hung up");
    assert_eq!(relay.spooled().len(), 1, "kept for a later attempt");
    assert_eq!(upstream.ehlos(), 0, "the connection went no further");

    upstream.set_endless_greeting(false);
    assert_eq!(queue_cli(&relay, &["retry"]).0, 0);
    relay.wait_spool_empty().await;
    assert_eq!(upstream.delivered_to("customer@client.test").len(), 1);
}

/// `/readyz` does not wait for mail to find out that the upstream accepts the relay again:
/// while it refuses, the readiness probe goes as far as AUTH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_comes_back_by_itself_when_the_upstream_accepts_again() {
    let upstream = TestUpstream::start().await;
    upstream.refuse(Stage::Auth, Some("535 5.7.8 Authentication credentials invalid"));
    let relay = relay_to(&upstream, CREDENTIALS).await;
    let metrics = relay.metrics.unwrap();
    assert!(relay.send("app@example.com", &["customer@client.test"], SIMPLE).await.starts_with("250 "));
    eventually("refused", || http_get(metrics, "/readyz").0 == 503).await;
    upstream.refuse(Stage::Auth, None);
    eventually("ready again without a retry", || http_get(metrics, "/readyz").0 == 200).await;
    assert!(upstream.deliveries().is_empty(), "the copy keeps its schedule");
    assert_eq!(relay.spooled().len(), 1);
}
