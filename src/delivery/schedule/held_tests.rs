//! Held messages on the schedule, with time as a value: they wait for a release, a delete or
//! their expiry, and nothing else runs them.

use super::*;
use crate::config::Action;
use crate::hold::ReleaseAs;
use crate::plan::{Rewrite, Transaction};
use crate::spool::record::{DecisionSummary, FORMAT_VERSION, resolve_release};

const MINUTE: i64 = 60_000;
const T0: i64 = 1_700_000_000_000;
const DAY: i64 = 24 * 60 * MINUTE;

#[test]
fn a_held_message_sleeps_until_its_expiry_and_then_expires() {
    let mut s = Schedule::new(2);
    let (held, queued) = (QueueId::generate(), QueueId::generate());
    s.hold(held.clone(), T0 + 10 * DAY);
    s.add(queued.clone(), T0 + MINUTE);
    assert_eq!((s.len(), s.held_count(), s.held()), (2, 1, vec![held.clone()]));
    assert_eq!(s.next(T0), Next::Sleep(T0 + MINUTE));
    assert_eq!(s.next(T0 + MINUTE), Next::Run(queued.clone(), false));
    assert_eq!(s.next(T0 + MINUTE), Next::Sleep(T0 + 10 * DAY), "the manager wakes at the expiry");
    assert_eq!(s.next(T0 + 10 * DAY - 1), Next::Sleep(T0 + 10 * DAY));
    assert_eq!(s.next(T0 + 10 * DAY), Next::Expire(held.clone()));
    assert_eq!((s.held_count(), s.is_held(&held), s.contains(&held)), (0, false, false), "off the schedule");
    // An expiry that failed is put back a little later.
    s.hold(held.clone(), T0 + 10 * DAY + MINUTE);
    assert_eq!(s.next(T0 + 10 * DAY), Next::Sleep(T0 + 10 * DAY + MINUTE));
    assert_eq!(s.next(T0 + 10 * DAY + MINUTE), Next::Expire(held));
}

#[test]
fn only_a_release_runs_a_held_message_and_only_once() {
    let mut s = Schedule::new(2);
    let held = QueueId::generate();
    s.hold(held.clone(), T0 + DAY);
    assert_eq!(s.retry(None), 0, "retry does not deliver a held message");
    assert_eq!(s.retry(Some(&held)), 0);
    assert_eq!(s.next(T0), Next::Sleep(T0 + DAY));
    assert!(s.release(&held));
    assert!(!s.release(&held), "a second release finds it not held");
    assert_eq!(s.held_count(), 0);
    assert_eq!(s.next(T0), Next::Run(held.clone(), false));
    assert!(!s.release(&held), "nor while its pass runs");
    assert!(!s.finished(held, &PassEnd::Done));
    assert_eq!(s.next(T0 + DAY), Next::Idle, "the old expiry timer is ignored");
}

#[test]
fn a_deleted_held_message_never_expires() {
    let mut s = Schedule::new(2);
    let held = QueueId::generate();
    s.hold(held.clone(), T0 + DAY);
    assert_eq!(s.delete(&held), Deleted::Now);
    assert_eq!((s.len(), s.held_count()), (0, 0));
    assert_eq!(s.next(T0 + DAY), Next::Idle);
    assert!(!s.release(&held));
}

#[test]
fn a_pass_that_finds_a_message_held_puts_it_back_held() {
    let mut s = Schedule::new(2);
    let id = QueueId::generate();
    s.add(id.clone(), T0);
    assert_eq!(s.next(T0), Next::Run(id.clone(), false));
    assert!(!s.finished(id.clone(), &PassEnd::Held(T0 + DAY)));
    assert!(s.is_held(&id));
    assert_eq!(s.next(T0), Next::Sleep(T0 + DAY));
}

fn held_meta() -> Meta {
    Meta {
        version: FORMAT_VERSION,
        id: QueueId::generate(),
        received_at: T0,
        client: "127.0.0.1".into(),
        sender: "shop@example.com".into(),
        recipients: vec!["a@x.test".into(), "b@y.test".into()],
        decision: DecisionSummary { leak: true, action: Action::Hold, exposure: 2 },
        plan: Plan::default(),
        dsn: false,
        size: None,
        crc32: None,
    }
}

#[test]
fn a_released_message_has_its_spool_max_age_from_the_release() {
    let config = DeliveryConfig { max_age: Duration::from_secs(3600), ..super::tests::config() };
    let mut meta = held_meta();
    let plan = Plan {
        transactions: (0..2)
            .map(|i| Transaction { recipients: smallvec::smallvec![i], rewrite: Rewrite::Explode { name: None } })
            .collect(),
        ..Plan::default()
    };
    let released = T0 + 5 * DAY;
    let records = vec![
        Record::Retry { at: T0 + MINUTE },
        Record::Released { at: released, how: ReleaseAs::Explode, action: Action::Explode, plan: plan.clone() },
    ];
    let records = resolve_release(&mut meta, records);
    assert!(!meta.is_held());
    assert_eq!((meta.plan.clone(), meta.decision.action), (plan, Action::Explode));
    let state = State::replay(&meta, &records);
    assert_eq!(state.released_at, Some(released));
    assert_eq!(state.due(&meta.plan, released), [0, 1]);
    let busy = || Outcome::Deferred(crate::delivery::reply::Answer::Broken("busy".into()));
    let attempt = |now| records_for(&config, &meta, &state, vec![(0, vec![0], vec![busy()])], now);
    assert!(matches!(attempt(released + MINUTE)[..], [Record::Deferred { .. }]), "five days held, not expired");
    assert!(matches!(attempt(released + 60 * MINUTE)[..], [Record::Failed { expired: true, .. }]));
}

#[test]
fn a_held_message_without_a_release_stays_held_and_old_records_read_as_before() {
    let mut meta = held_meta();
    let records = resolve_release(&mut meta, vec![Record::Retry { at: T0 }]);
    assert!(meta.is_held() && meta.plan.transactions.is_empty());
    let state = State::replay(&meta, &records);
    assert_eq!((state.next_attempt(&meta.plan), state.is_done()), (None, false));
    let line = r#"{"event":"released","at":5,"how":"pass","action":"pass","plan":{"transactions":[{"recipients":[0,1],"rewrite":{"kind":"original"}}]}}"#;
    let record: Record = serde_json::from_str(line).unwrap();
    assert_eq!(serde_json::to_string(&record).unwrap(), line, "the journal line's form");
    // A message that was never held is not changed by a stray release record.
    let mut plain = Meta { decision: DecisionSummary::default(), ..held_meta() };
    let kept = resolve_release(&mut plain, vec![record.clone()]);
    assert_eq!((kept, plain.plan.transactions.len()), (vec![record], 0));
}
