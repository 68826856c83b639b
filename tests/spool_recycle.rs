//! The spool keeps delivered messages' files for the next messages (see `spool::recycle`) and
//! commits new messages in groups (`spool.sync`): a message written into a longer file is
//! delivered byte for byte and nothing more, kept files are deleted when idle and at start-up,
//! and both sync modes store and deliver.

mod common;

use std::path::Path;
use std::time::Duration;

use common::upstream::{Stage, TestUpstream};
use common::{TestRelay, eventually, test_config};

const POLICY: &str = "[policy]\ninternal_domains = [\"example.com\"]\n";

/// The files under a temporary name in the queue (kept files, and the own names of files lent
/// to queued messages), with their inode numbers.
fn kept_files(spool: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(spool.join("queue"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let temp = name.starts_with('.') && name.ends_with(".tmp") && !name.starts_with(".spill-");
            // Deleted meanwhile: not kept any more.
            let ino = std::os::unix::fs::MetadataExt::ino(&e.metadata().ok()?);
            temp.then_some((name, ino))
        })
        .collect()
}

fn ino(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
}

/// A message of `lines` numbered body lines, for one recipient.
fn message(subject: &str, lines: usize) -> Vec<u8> {
    let mut m = format!("From: app@example.com\r\nTo: one@client.test\r\nSubject: {subject}\r\n\r\n").into_bytes();
    for n in 0..lines {
        m.extend_from_slice(format!("{subject} line {n:070}\r\n").as_bytes());
    }
    m
}

#[tokio::test]
async fn a_kept_file_holds_the_next_message_exactly_and_is_deleted_when_idle() {
    let upstream = TestUpstream::start().await;
    let relay = TestRelay::start(&format!("{}{POLICY}[spool]\nretry = [\"200ms\"]\n", upstream.config(""))).await;
    let spool = relay.dir.path().join("spool");

    // A 100 KiB message, delivered: its file is kept.
    let long = message("long", 1200);
    assert!(relay.send("app@example.com", &["one@client.test"], &long).await.starts_with("250 "));
    relay.wait_spool_empty().await;
    let kept = kept_files(&spool);
    assert_eq!(kept.len(), 1, "the delivered message's file is kept: {kept:?}");

    // A short message is written into it, and the file is cut to the short message's length:
    // while the upstream defers it, its spool file holds nothing of the long one. The file is
    // lent to it: the queue name is a second name of the kept file, not a new file.
    upstream.refuse(Stage::Mail, Some("451 4.3.0 try later"));
    let short = message("short", 2);
    assert!(relay.send("app@example.com", &["one@client.test"], &short).await.starts_with("250 "));
    let [id] = relay.spooled().try_into().expect("one queued message");
    let queued = spool.join(format!("queue/{id}.msg"));
    assert_eq!(ino(&queued), kept[0].1, "the kept file was taken");
    assert_eq!(kept_files(&spool), kept, "and keeps its own name while it is lent");
    let file = std::fs::read(&queued).unwrap();
    let envelope = file.iter().position(|&b| b == b'\n').unwrap() + 1;
    assert!(file.ends_with(&short), "the short message is the file's end");
    assert!(file.len() - envelope - short.len() < 400, "only a Received: field besides ({} bytes)", file.len());
    assert!(!file.windows(9).any(|w| w == b"long line"), "nothing of the delivered message is left in it");
    upstream.refuse(Stage::Mail, None);
    relay.wait_spool_empty().await;
    let deliveries = upstream.deliveries();
    assert_eq!(deliveries.len(), 2);
    assert!(deliveries[0].data.ends_with(&long[long.len() - 200..]));
    let got = &deliveries[1].data;
    assert!(got.ends_with(&short), "the short message arrives whole");
    let extra = got.len() - short.len();
    assert!(extra < 400, "only a Received: field precedes it, nothing of the long one follows ({extra} bytes more)");
    assert!(!got.windows(9).any(|w| w == b"long line"), "nothing of the earlier message");
    // Had the short message gone into a new file, two files would be kept now.
    let again = kept_files(&spool);
    assert_eq!(again, kept, "the one file was taken for the short message and kept again, under its name");
    assert!(!queued.exists());

    // Unused for a few seconds, it is deleted.
    eventually("the idle kept file is deleted", || kept_files(&spool).is_empty()).await;
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn kept_files_left_by_a_crash_are_deleted_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let queue = dir.path().join("spool/queue");
    std::fs::create_dir_all(&queue).unwrap();
    std::fs::write(queue.join(".free-7.tmp"), b"To: someone@client.test\r\n\r\nan old message").unwrap();
    let config = test_config(POLICY, dir.path());
    let relay = TestRelay::start_with(config, dir).await;
    assert!(kept_files(&relay.dir.path().join("spool")).is_empty());
    assert!(relay.spooled().is_empty(), "a kept file is never taken for a message");
    relay.stop().await.unwrap();
}

#[tokio::test]
async fn both_sync_modes_store_and_deliver_concurrent_messages() {
    for mode in ["filesystem", "file"] {
        let upstream = TestUpstream::start().await;
        let relay = TestRelay::start(&format!("{}{POLICY}[spool]\nsync = \"{mode}\"\n", upstream.config(""))).await;
        let mut sends = tokio::task::JoinSet::new();
        let relay = std::sync::Arc::new(relay);
        for i in 0..30 {
            let relay = relay.clone();
            sends.spawn(async move {
                let m = message(&format!("m{i}"), 3);
                relay.send("app@example.com", &["one@client.test"], &m).await
            });
        }
        while let Some(reply) = sends.join_next().await {
            let reply = reply.unwrap();
            assert!(reply.starts_with("250 "), "{mode}: {reply}");
        }
        relay.wait_spool_empty().await;
        let m = bccguard::metrics::metrics();
        let (groups, messages) = (m.spool_commit_groups.get(), m.spool_commit_messages.get());
        assert!(messages >= 30 && groups >= 1 && groups <= messages, "{mode}: {groups} groups, {messages} messages");
        let mut subjects: Vec<String> = upstream
            .deliveries()
            .iter()
            .map(|d| {
                let text = String::from_utf8_lossy(&d.data).into_owned();
                text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap().to_string()
            })
            .collect();
        subjects.sort();
        subjects.dedup();
        assert_eq!(subjects.len(), 30, "{mode}: each message once");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let Ok(relay) = std::sync::Arc::try_unwrap(relay) else { panic!("sessions ended") };
        let spool = relay.dir.path().join("spool");
        assert!(!kept_files(&spool).is_empty(), "{mode}: delivered files are kept while the relay runs");
        let (result, dir) = relay.shutdown().await;
        result.unwrap();
        eventually("no kept file once the relay stopped", || kept_files(&dir.path().join("spool")).is_empty()).await;
    }
}

#[test]
fn an_unknown_sync_mode_is_a_config_error_naming_it() {
    let errors = bccguard::config::load_str(Some("[spool]\nsync = \"never\"\n"), &[]).unwrap_err();
    let err = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n");
    assert!(err.contains("never") && err.contains("filesystem") && err.contains("file"), "{err}");
}
