//! A delivery journal that cannot be written (a full disk) never causes a re-send: outcomes
//! stay in memory, the listing shows them, and the journal catches up when the disk allows.

mod common;

use common::upstream::{Stage, TestUpstream};
use common::{TestRelay, eventually, queue_cli};

const TWO: &[u8] = b"From: app@example.com\r\nTo: ann@alpha.test, ben@beta.test\r\nSubject: hi\r\n\r\nhello\r\n";

// Multi-threaded: the queue CLI blocks a thread while the in-process relay answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_that_cannot_be_written_never_causes_a_resend() {
    // ben is deferred three times, then accepted; ann is accepted at once.
    let upstream = TestUpstream::scripted(Box::new(|stage, rcpt, attempt| {
        (stage == Stage::Rcpt && rcpt == "ben@beta.test" && attempt <= 3).then(|| "451 4.3.0 later".to_string())
    }))
    .await;
    let policy = "[policy]\ninternal_domains = [\"example.com\"]\n";
    // A long retry interval: only `queue retry` brings the next attempt soon.
    let relay = TestRelay::start(&format!("{}[spool]\nretry = [\"1h\"]\n{policy}", upstream.config(""))).await;
    relay.journal_fault.set(true);
    let mut c = relay.client().await;
    c.cmd("EHLO test").await;
    assert!(c.transaction("app@example.com", &["ann@alpha.test", "ben@beta.test"], TWO).await.starts_with("250 "));
    eventually("the first attempts", || upstream.attempts("ben@beta.test") == 1).await;
    let id = relay.spooled()[0].clone();
    let spool = bccguard::spool::SpoolPaths::new(&relay.dir.path().join("spool"));
    let on_disk = || spool.journal(&bccguard::queue_id::QueueId::parse(&id).unwrap()).unwrap();

    // The live listing has what the disk does not: ann delivered, ben in an hour, not "now".
    eventually("the live state listed", || {
        let row = queue_cli(&relay, &["list"]).1;
        row.contains("in 59m") || row.contains("in 1h")
    })
    .await;
    let (_, listed) = queue_cli(&relay, &["list"]);
    let row = listed.lines().nth(1).unwrap().to_string();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[4..8], ["2", "1", "1", "0"], "RCPTS PENDING DELIVERED FAILED: {listed}");
    assert!(row.contains("in 59m") || row.contains("in 1h"), "the real next attempt: {listed}");
    let (_, json) = queue_cli(&relay, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["transactions"]["delivered"], 1, "{json}");
    assert!(on_disk().is_empty(), "nothing could be written");

    // Retried while the disk is still full: ben only.
    assert_eq!(queue_cli(&relay, &["retry"]).0, 0);
    eventually("ben's second attempt", || upstream.attempts("ben@beta.test") == 2).await;
    assert!(on_disk().is_empty());

    // The disk frees: the next pass writes everything held, oldest first.
    relay.journal_fault.set(false);
    assert_eq!(queue_cli(&relay, &["retry"]).0, 0);
    eventually("ben's third attempt", || upstream.attempts("ben@beta.test") == 3).await;
    eventually("the journal caught up", || on_disk().len() == 4).await;
    let events: Vec<String> = on_disk().iter().map(|r| serde_json::to_value(r).unwrap()["event"].to_string()).collect();
    assert_eq!(events.iter().filter(|e| *e == "\"delivered\"").count(), 1, "{events:?}");
    assert_eq!(events.iter().filter(|e| *e == "\"deferred\"").count(), 3, "{events:?}");

    assert_eq!(queue_cli(&relay, &["retry"]).0, 0);
    relay.wait_spool_empty().await;
    assert_eq!(upstream.attempts("ann@alpha.test"), 1, "ann was never tried again");
    assert_eq!(upstream.delivered_to("ann@alpha.test").len(), 1);
    assert_eq!(upstream.delivered_to("ben@beta.test").len(), 1);
    assert_eq!(upstream.attempts("ben@beta.test"), 4);
}
