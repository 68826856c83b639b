//! The schedule with time as a value: instants are passed in, nothing sleeps.

use super::*;
use crate::delivery::dsn;
use crate::delivery::reply::{Answer, Reply};
use crate::events::Redaction;
use crate::plan::{Rewrite, Transaction};
use crate::spool::record::{DecisionSummary, FORMAT_VERSION, RcptState};

const MINUTE: i64 = 60_000;
const T0: i64 = 1_700_000_000_000;

pub(super) fn config() -> DeliveryConfig {
    DeliveryConfig {
        hostname: "relay.test".into(),
        retry: [60, 300, 900].map(Duration::from_secs).to_vec(),
        max_age: Duration::from_secs(3600),
        hold_max_age: Duration::from_secs(2 * 3600),
        redaction: Redaction(false),
        max_passes: 2,
        sends_per_pass: 4,
    }
}

/// A message to `n` recipients, one transaction each, accepted at `T0`.
fn meta(n: usize) -> Meta {
    Meta {
        version: FORMAT_VERSION,
        id: QueueId::generate(),
        received_at: T0,
        client: "127.0.0.1".into(),
        sender: "shop@example.com".into(),
        recipients: (0..n).map(|i| format!("r{i}@client.test")).collect(),
        decision: DecisionSummary::default(),
        plan: Plan {
            transactions: (0..n)
                .map(|i| Transaction { recipients: smallvec::smallvec![i], rewrite: Rewrite::Original })
                .collect(),
            ..Plan::default()
        },
        dsn: false,
        size: None,
        crc32: None,
    }
}

fn busy() -> Outcome {
    Outcome::Deferred(Answer::Reply(Reply::new(451, "4.3.0 busy")))
}

/// Attempt transaction 0 at `now` with `outcome`, apply the records; returns them.
fn attempt(meta: &Meta, state: &mut State, now: i64, outcome: Outcome) -> Vec<Record> {
    let records = records_for(&config(), meta, state, vec![(0, vec![0], vec![outcome])], now);
    records.iter().for_each(|r| state.apply(r));
    records
}

#[test]
fn deferrals_follow_the_retry_schedule_and_the_last_interval_repeats() {
    let (meta, mut state) = (meta(1), State::new(&meta(1)));
    let mut now = T0;
    let mut waits = Vec::new();
    for _ in 0..5 {
        assert_eq!(due(&state, &meta.plan, now, false), [0], "due at {now}");
        assert!(due(&state, &meta.plan, now - 1, false).is_empty() || now == T0);
        let records = attempt(&meta, &mut state, now, busy());
        let [Record::Deferred { next, reply, .. }] = records.as_slice() else { panic!("{records:?}") };
        assert_eq!(reply, "451 4.3.0 busy");
        waits.push((next - now) / MINUTE);
        assert!(due(&state, &meta.plan, next - 1, false).is_empty(), "not due before {next}");
        assert_eq!(after_pass(&state, &meta.plan, None), PassEnd::Later(*next));
        now = *next;
        if now - T0 >= 50 * MINUTE {
            break;
        }
    }
    assert_eq!(waits, [1, 5, 15, 15, 15]);
    assert_eq!(retry_delay(&[], 3), Duration::from_secs(60));
}

#[test]
fn a_deferral_after_max_age_fails_as_expired() {
    let meta = meta(1);
    let mut state = State::new(&meta);
    let just_before = T0 + 60 * MINUTE - 1;
    assert!(matches!(attempt(&meta, &mut state, just_before, busy())[..], [Record::Deferred { .. }]));
    let records = attempt(&meta, &mut state, T0 + 60 * MINUTE, busy());
    assert!(
        matches!(&records[..], [Record::Failed { expired: true, reply, .. }] if reply == "451 4.3.0 busy"),
        "{records:?}"
    );
    assert_eq!(state.unbounced(), [0]);
    assert_eq!(after_pass(&state, &meta.plan, None), PassEnd::Parked);
    // A permanent failure is never marked expired, however old the message.
    let mut fresh = State::new(&meta);
    let failed = Outcome::Failed(Reply::new(550, "5.1.1 no such user"));
    let records = attempt(&meta, &mut fresh, T0 + 600 * MINUTE, failed);
    assert!(matches!(&records[..], [Record::Failed { expired: false, .. }]), "{records:?}");
}

#[test]
fn the_dsn_reads_the_typed_outcome() {
    let meta = meta(3);
    let mut state = State::new(&meta);
    let results = vec![
        (0, vec![0], vec![Outcome::Failed(Reply::new(550, "5.1.1 no such user"))]),
        (1, vec![1], vec![Outcome::Failed(Reply::new(554, "rejected"))]),
        (2, vec![2], vec![busy()]),
    ];
    let late = T0 + 61 * MINUTE;
    for r in records_for(&config(), &meta, &state, results, late) {
        state.apply(&r);
    }
    let failures = dsn::failures(&meta, &state, &state.unbounced());
    let report = dsn::Report {
        hostname: "relay.test",
        remote: "",
        original_id: &meta.id,
        arrival: meta.received_at,
        sender: &meta.sender,
        failures: &failures,
        held_for: None,
    };
    let text = String::from_utf8(dsn::build(&report, &QueueId::generate(), b"Subject: x\r\n\r\n", chrono::Utc::now()))
        .expect("utf-8");
    for (rcpt, status, diagnostic) in [
        ("r0@client.test", "5.1.1", "550 5.1.1 no such user"),
        ("r1@client.test", "5.0.0", "554 rejected"),
        ("r2@client.test", "4.4.7", "451 4.3.0 busy"),
    ] {
        let block = format!(
            "Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\nDiagnostic-Code: smtp; {diagnostic}\r\n"
        );
        assert!(text.contains(&block), "{block} in {text}");
    }
}

#[test]
fn the_schedule_runs_due_messages_within_its_limit_and_says_how_long_to_sleep() {
    let mut s = Schedule::new(2);
    let [a, b, c, d] = [(); 4].map(|()| QueueId::generate());
    s.add(a.clone(), T0 + MINUTE);
    s.add(b.clone(), T0 + 2 * MINUTE);
    s.submit(c.clone());
    s.submit(d.clone());
    assert_eq!(s.next(T0), Next::Run(c.clone(), false));
    assert_eq!(s.next(T0), Next::Run(d.clone(), false));
    assert_eq!(s.next(T0), Next::Sleep(T0 + MINUTE), "two passes running: the limit");
    assert_eq!(s.next(T0 + MINUTE), Next::Sleep(T0 + 2 * MINUTE), "a is ready but no pass is free");
    assert!(!s.finished(c, &PassEnd::Done));
    assert_eq!(s.next(T0 + MINUTE), Next::Run(a.clone(), false));
    assert!(!s.finished(d.clone(), &PassEnd::Later(T0 + 10 * MINUTE)));
    assert!(!s.finished(a, &PassEnd::Gone));
    assert_eq!(s.next(T0 + MINUTE), Next::Sleep(T0 + 2 * MINUTE));
    assert_eq!(s.next(T0 + 2 * MINUTE), Next::Run(b.clone(), false));
    assert_eq!(s.next(T0 + 2 * MINUTE), Next::Sleep(T0 + 10 * MINUTE));
    assert_eq!((s.len(), s.running()), (2, 1));
}

#[test]
fn retry_makes_everything_due_now() {
    let mut s = Schedule::new(10);
    let (a, b, running) = (QueueId::generate(), QueueId::generate(), QueueId::generate());
    s.add(a.clone(), T0 + 60 * MINUTE);
    s.add(b.clone(), T0 + 120 * MINUTE);
    s.submit(running.clone());
    assert_eq!(s.next(T0), Next::Run(running.clone(), false));
    assert_eq!(s.next(T0), Next::Sleep(T0 + 60 * MINUTE));
    assert_eq!(s.retry(None), 3);
    let mut started = [s.next(T0), s.next(T0)];
    started.sort_by_key(|n| format!("{n:?}"));
    let mut expected = [Next::Run(a, true), Next::Run(b, true)];
    expected.sort_by_key(|n| format!("{n:?}"));
    assert_eq!(started, expected);
    // The running one goes again, forced, as soon as its pass ends.
    assert!(!s.finished(running.clone(), &PassEnd::Later(T0 + 60 * MINUTE)));
    assert_eq!(s.next(T0), Next::Run(running, true));
    assert_eq!(s.retry(Some(&QueueId::generate())), 0, "not queued");
}

#[test]
fn a_parked_failed_bounce_is_never_due_until_retried() {
    let mut s = Schedule::new(4);
    let bounce = QueueId::generate();
    s.submit(bounce.clone());
    assert_eq!(s.next(T0), Next::Run(bounce.clone(), false));
    assert!(!s.finished(bounce.clone(), &PassEnd::Parked));
    for now in [T0, T0 + 1_000 * MINUTE, i64::MAX] {
        assert_eq!(s.next(now), Next::Idle);
    }
    assert_eq!(s.len(), 1, "still listed");
    assert_eq!(s.retry(Some(&bounce)), 1);
    assert_eq!(s.next(T0), Next::Run(bounce, true));
}

#[test]
fn a_delete_during_a_pass_waits_for_its_end() {
    let mut s = Schedule::new(4);
    let (a, b) = (QueueId::generate(), QueueId::generate());
    s.add(a.clone(), T0);
    s.add(b.clone(), T0 + MINUTE);
    assert_eq!(s.next(T0), Next::Run(a.clone(), false));
    assert_eq!(s.delete(&a), Deleted::AfterPass);
    assert_eq!(s.delete(&b), Deleted::Now);
    assert_eq!(s.delete(&b), Deleted::Unknown);
    assert!(s.finished(a, &PassEnd::Later(T0 + MINUTE)), "delete it now");
    assert_eq!(s.next(T0 + MINUTE), Next::Idle, "b's old timer is ignored");
    assert_eq!(s.len(), 0);
}

#[test]
fn a_chunk_of_outcomes_groups_recipients_per_transaction() {
    let meta = Meta {
        plan: Plan {
            transactions: vec![Transaction { recipients: smallvec::smallvec![0, 1, 2], rewrite: Rewrite::Original }],
            ..Plan::default()
        },
        ..meta(3)
    };
    let state = State::new(&meta);
    let ok = Outcome::Delivered(Reply::new(250, "2.0.0 ok"));
    let results = vec![(0, vec![0, 1, 2], vec![ok.clone(), busy(), ok])];
    let records = records_for(&config(), &meta, &state, results, T0);
    assert!(
        matches!(&records[..], [
        Record::Delivered { rcpts: d, .. },
        Record::Deferred { rcpts: r, attempts: 1, next, .. },
    ] if d == &[0, 2] && r == &[1] && *next == T0 + MINUTE),
        "{records:?}"
    );
    assert!(matches!(state.rcpts[0], RcptState::Pending));
}
