//! [`HeldQueue`] as the review page uses it, on the delivery manager's own handle: the list,
//! one message's page, and releases and deletes racing each other (tasks on several threads):
//! exactly one of them acts, and a message is delivered at most once.

mod common;

use std::sync::Arc;

use arc_swap::ArcSwap;
use bccguard::config::{Action, Config};
use bccguard::delivery::{self, Deliverer, DeliveryConfig, Upstream};
use bccguard::hold::{HeldQueue, HoldError, HoldOutcome, ReleaseAs};
use bccguard::message::decide::Policy;
use bccguard::queue_id::QueueId;
use bccguard::spool::Spool;
use bccguard::spool::record::{DecisionSummary, FORMAT_VERSION, Meta};
use bytes::Bytes;
use common::{eventually, files_in, test_config};

const MESSAGE: &[u8] = b"From: shop@example.com\r\nTo: a@x.test, B <b@y.test>\r\nCc: ops@example.com\r\n\
    Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\r\n\r\nHello\r\n";
const HOUR: i64 = 3_600_000;

struct Manager {
    deliverer: Deliverer,
    spool: Arc<Spool>,
    shutdown: bccguard::Shutdown,
    config: Config,
    _dir: tempfile::TempDir,
}

fn start() -> Manager {
    let dir = tempfile::tempdir().unwrap();
    let toml = "[policy]\ninternal_domains = [\"example.com\"]\naction = \"hold\"\n[hold]\nmax_age = \"1h\"\n";
    let config = test_config(toml, dir.path());
    let spool = Arc::new(Spool::open(&config.spool.dir, config.spool.sync).unwrap());
    let upstream = Arc::new(Upstream::from_config(&config).unwrap());
    let policy = Arc::new(ArcSwap::from_pointee(Policy::from_config(&config.policy)));
    let shutdown = bccguard::Shutdown::default();
    let tracker = tokio_util::task::TaskTracker::new();
    let delivery = DeliveryConfig::from_config(&config);
    let deliverer = delivery::start(spool.clone(), upstream, delivery, policy, shutdown.clone(), tracker);
    Manager { deliverer, spool, shutdown, config, _dir: dir }
}

/// Spool the test message as held, as the intake does; its id.
async fn hold(m: &Manager, received_at: i64) -> QueueId {
    let meta = Meta {
        version: FORMAT_VERSION,
        id: QueueId::generate(),
        received_at,
        client: "127.0.0.1".into(),
        sender: "shop@example.com".into(),
        recipients: ["a@x.test", "b@y.test", "ops@example.com"].iter().collect(),
        decision: DecisionSummary { leak: true, action: Action::Hold, exposure: 2, ..DecisionSummary::default() },
        plan: Default::default(),
        dsn: false,
        size: None,
        crc32: None,
    };
    let meta = m.spool.store(meta, vec![Bytes::from_static(MESSAGE)]).await.unwrap();
    m.deliverer.hold(meta.id.clone(), received_at);
    meta.id
}

fn outbox(m: &Manager) -> usize {
    files_in(&m.config.upstream.directory.clone().unwrap()).len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_and_a_messages_page() {
    let m = start();
    let now = chrono::Utc::now().timestamp_millis();
    let (old, new) = (hold(&m, now - HOUR / 2).await, hold(&m, now).await);
    let list = m.deliverer.held().await.unwrap();
    assert_eq!(list.iter().map(|s| &s.id).collect::<Vec<_>>(), [&old, &new], "oldest first");
    let s = &list[0];
    assert_eq!((s.sender.as_str(), s.subject.as_str()), ("shop@example.com", "Grüße"));
    assert_eq!((s.recipients, s.exposure, s.rule.as_deref()), (3, 2, None));
    assert_eq!(s.expires_at - s.received_at, HOUR);

    let page = m.deliverer.held_message(&old).await.unwrap().expect("held");
    assert_eq!(page.summary, list[0]);
    assert_eq!(page.header, String::from_utf8_lossy(&MESSAGE[..MESSAGE.len() - 9]));
    assert_eq!(page.recipients, ["a@x.test", "b@y.test", "ops@example.com"]);
    assert_eq!(page.decision, "leak: 2 external addresses visible, at most 1 allowed; action hold");
    let plans: Vec<(ReleaseAs, &str)> = page.plans.iter().map(|(h, d)| (*h, d.as_str())).collect();
    assert_eq!(
        plans,
        [
            (
                ReleaseAs::Explode,
                "3 transactions: a copy to each of 2 external recipients alone; the message unchanged to 1 recipient"
            ),
            (ReleaseAs::Undisclose, "1 transaction: one copy to 3 recipients with To: undisclosed-recipients:;"),
            (ReleaseAs::Pass, "1 transaction: the message unchanged to 3 recipients"),
        ]
    );
    assert_eq!(m.deliverer.release(&old, ReleaseAs::Explode).await.unwrap(), HoldOutcome::Done);
    assert!(m.deliverer.held_message(&old).await.unwrap().is_none(), "no longer held");
    assert_eq!(m.deliverer.held().await.unwrap().len(), 1);
    eventually("three copies", || outbox(&m) == 3).await;
    // Released: not held (or, once its pass has removed it, not there); nothing done either way.
    let outcome = m.deliverer.delete_held(&old).await.unwrap();
    assert!(matches!(outcome, HoldOutcome::NotHeld | HoldOutcome::NotFound), "{outcome:?}");
    assert_eq!(m.deliverer.delete_held(&new).await.unwrap(), HoldOutcome::Done);
    assert!(m.deliverer.held().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_releases_and_deletes_act_once() {
    let m = start();
    let now = chrono::Utc::now().timestamp_millis();
    let mut released = 0;
    for _ in 0..10 {
        let id = hold(&m, now).await;
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..4 {
            let (d, id) = (m.deliverer.clone(), id.clone());
            tasks.spawn(async move {
                let outcome = match n {
                    0 | 2 => d.release(&id, ReleaseAs::Explode).await,
                    1 => d.release(&id, ReleaseAs::Pass).await,
                    _ => d.delete_held(&id).await,
                };
                (n, outcome.unwrap())
            });
        }
        let outcomes = tasks.join_all().await;
        let done: Vec<usize> = outcomes.iter().filter(|(_, o)| *o == HoldOutcome::Done).map(|(n, _)| *n).collect();
        assert_eq!(done.len(), 1, "exactly one acted: {outcomes:?}");
        released += usize::from(done[0] != 3);
    }
    eventually("every released copy", || outbox(&m) == 3 * released).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(outbox(&m), 3 * released, "nothing delivered twice ({released} released)");

    // During shutdown a release is either carried out (journaled) or refused (still held).
    let id = hold(&m, now).await;
    m.shutdown.soft.cancel();
    let during = m.deliverer.release(&id, ReleaseAs::Explode).await;
    assert!(matches!(during, Ok(HoldOutcome::Done) | Err(HoldError::Stopped)), "{during:?}");
    let (meta, _) = m.spool.paths().load_meta(&id).unwrap();
    assert_eq!(meta.is_held(), during.is_err(), "the journal agrees with the answer {during:?}");
    let late = hold(&m, now).await;
    for _ in 0..200 {
        if m.deliverer.held_ids().await.is_err() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let refused = m.deliverer.release(&late, ReleaseAs::Explode).await;
    assert!(matches!(refused, Err(HoldError::Stopped)), "{refused:?}");
    assert!(m.spool.paths().load_meta(&late).unwrap().0.is_held(), "a refused release leaves it held");
}
