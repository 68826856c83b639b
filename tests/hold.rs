//! Held messages end to end (SPEC §10): `policy.action = "hold"` answers 250 and delivers
//! nothing; `queue release` delivers once (exact bytes at an SMTP upstream), `queue delete`
//! drops, `hold.max_age` expires with a DSN; release twice, release racing delete, release
//! during shutdown, and the offline CLI on a stopped relay's spool.

mod common;

use std::path::Path;
use std::time::Duration;

use common::upstream::TestUpstream;
use common::{TestRelay, eventually, test_config};

const HOLD: &str = "[policy]\ninternal_domains = [\"example.com\"]\naction = \"hold\"\n";
const MESSAGE: &[u8] = b"From: Shop <shop@example.com>\r\nTo: Zoe <zoe@client.test>, max@other.test\r\n\
    Cc: ops@example.com\r\nSubject: Spring \x1b[31moffer\r\nMessage-ID: <1@example.com>\r\n\r\nHello\r\n";
const RCPTS: [&str; 3] = ["zoe@client.test", "max@other.test", "ops@example.com"];

/// The relay's configuration: hold, an SMTP upstream, and `extra` TOML sections.
fn config(upstream: &TestUpstream, extra: &str) -> String {
    format!("{HOLD}{}{extra}", upstream.config(""))
}

/// The queue id in a `250 2.0.0 Ok: queued as ID` reply.
fn queued_id(reply: &str) -> String {
    assert!(reply.starts_with("250 "), "{reply}");
    reply.rsplit(' ').next().unwrap().to_string()
}

/// Send the test message; its queue id.
async fn send_held(relay: &TestRelay, from: &str) -> String {
    queued_id(&relay.send(from, &RCPTS, MESSAGE).await)
}

/// `bccguard queue ARGS` with the relay's own configuration (its policy and spool): (exit
/// code, stdout, stderr).
fn cli(dir: &Path, toml: &str, args: &[&str]) -> (i32, String, String) {
    let path = dir.join("cli.toml");
    std::fs::write(&path, format!("{toml}[spool]\ndir = {:?}\n", dir.join("spool"))).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .arg("queue")
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_remove("BCCGUARD_CONFIG")
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// A delivered message without the `Received:` field bccguard prepended.
fn without_received(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    assert!(text.starts_with("Received: "), "{text}");
    let mut end = text.find("\r\n").unwrap() + 2;
    while text[end..].starts_with(['\t', ' ']) {
        end += text[end..].find("\r\n").unwrap() + 2;
    }
    text[end..].to_string()
}

/// The test message as exploded for `to`.
fn exploded(to: &str) -> String {
    String::from_utf8_lossy(MESSAGE)
        .replace("To: Zoe <zoe@client.test>, max@other.test\r\n", &format!("To: {to}\r\n"))
        .replace("\r\n\r\n", "\r\nX-Bccguard: exploded\r\n\r\n")
}

/// Give a relay time to do what it should not do.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_then_released_as_explode_is_delivered_once() {
    let upstream = TestUpstream::start().await;
    let relay = TestRelay::start(&config(&upstream, "")).await;
    let id = send_held(&relay, "shop@example.com").await;
    settle().await;
    assert!(upstream.deliveries().is_empty(), "nothing delivered while held");
    assert_eq!(relay.spooled(), std::slice::from_ref(&id));

    let dir = relay.dir.path().to_path_buf();
    let (code, out, err) = cli(&dir, HOLD, &["list", "--held"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "ID                AGE  EXPIRES  SENDER            RCPTS  EXPOSURE  RULE     SUBJECT");
    assert!(lines[1].starts_with(&format!("{id}  0s   in 9d    shop@example.com  3      2         default  Spring ")));
    assert!(lines[1].ends_with("  Spring [31moffer"), "{out}");
    assert!(!out.contains('\x1b'), "no escape sequence reaches the terminal: {out:?}");
    let (code, list, _) = cli(&dir, HOLD, &["list"]);
    assert_eq!(code, 0);
    assert!(list.contains(&format!("{id}  held ")), "{list}");

    let (code, out, err) = cli(&dir, HOLD, &["release", &id]);
    assert_eq!(
        (code, out.trim()),
        (0, format!("Released {id} as explode: it is being delivered now.").as_str()),
        "{err}"
    );
    relay.wait_spool_empty().await;
    for (rcpt, to) in [("zoe@client.test", "Zoe <zoe@client.test>"), ("max@other.test", "max@other.test")] {
        let got = upstream.delivered_to(rcpt);
        assert_eq!(got.len(), 1, "{rcpt} once");
        assert_eq!(got[0].rcpts, [rcpt]);
        assert_eq!(without_received(&got[0].data), exploded(to), "{rcpt}");
    }
    let internal = upstream.delivered_to("ops@example.com");
    assert_eq!(internal.len(), 1);
    assert_eq!(without_received(&internal[0].data), String::from_utf8_lossy(MESSAGE), "the original, internally");

    let (code, _, err) = cli(&dir, HOLD, &["release", &id]);
    assert_eq!(code, 1, "released twice: {err}");
    assert!(err.contains("not in the queue; nothing done"), "{err}");
    settle().await;
    assert_eq!(upstream.deliveries().len(), 3, "nothing delivered twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_as_pass_delivers_the_original_unchanged() {
    let upstream = TestUpstream::start().await;
    let relay = TestRelay::start(&config(&upstream, "")).await;
    let id = send_held(&relay, "shop@example.com").await;
    let (code, out, err) = cli(relay.dir.path(), HOLD, &["release", &id, "--as", "pass"]);
    assert_eq!(code, 0, "{out}{err}");
    relay.wait_spool_empty().await;
    let all = upstream.deliveries();
    assert_eq!(all.len(), 1, "one transaction");
    assert_eq!(all[0].rcpts, RCPTS);
    assert_eq!(without_received(&all[0].data), String::from_utf8_lossy(MESSAGE));
    let (code, _, err) = cli(relay.dir.path(), HOLD, &["release", &id, "--as", "sideways"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("\"sideways\" is not one of explode, undisclose, pass"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_held_message_is_never_delivered() {
    let upstream = TestUpstream::start().await;
    let relay = TestRelay::start(&config(&upstream, "")).await;
    let id = send_held(&relay, "shop@example.com").await;
    let dir = relay.dir.path().to_path_buf();
    let (code, out, _) = cli(&dir, HOLD, &["delete", &id]);
    assert_eq!((code, out.trim()), (0, format!("Deleted {id}.").as_str()));
    assert!(relay.spooled().is_empty());
    let (code, _, err) = cli(&dir, HOLD, &["release", &id]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{id} is not in the queue")), "{err}");
    let (code, out, _) = cli(&dir, HOLD, &["list", "--held"]);
    assert_eq!((code, out.as_str()), (0, "No messages are held.\n"));
    settle().await;
    assert!(upstream.deliveries().is_empty(), "no delivery and no DSN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreleased_message_expires_with_a_dsn_to_its_sender() {
    let upstream = TestUpstream::start().await;
    let relay = TestRelay::start(&config(&upstream, "[hold]\nmax_age = \"2s\"\n")).await;
    let id = send_held(&relay, "shop@example.com").await;
    let null = send_held(&relay, "").await;
    let (code, json, _) = cli(relay.dir.path(), HOLD, &["list", "--held", "--json"]);
    assert_eq!(code, 0);
    let list: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{json}");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["subject"], "Spring [31moffer");
    let expires = list[0]["expires_at"].as_i64().unwrap() - list[0]["received_at"].as_i64().unwrap();
    assert_eq!(expires, 2000);

    eventually("the DSN", || !upstream.deliveries().is_empty()).await;
    relay.wait_spool_empty().await;
    let all = upstream.deliveries();
    assert_eq!(all.len(), 1, "one DSN; none for the null sender");
    assert_eq!((all[0].from.as_str(), all[0].rcpts.as_slice()), ("", ["shop@example.com".to_string()].as_slice()));
    let dsn = String::from_utf8_lossy(&all[0].data);
    assert!(dsn.contains("Content-Type: multipart/report; report-type=delivery-status;"), "{dsn}");
    assert!(dsn.contains(&format!("Your message (queue id {id}) was held for review and not released within 2s")));
    assert!(dsn.contains("\r\nFinal-Recipient: rfc822; zoe@client.test\r\nAction: failed\r\nStatus: 5.7.1\r\n"));
    assert!(dsn.contains("Diagnostic-Code: X-Bccguard; 550 5.7.1 held for review and not released within 2s\r\n"));
    assert!(!dsn.contains("Remote-MTA"), "nothing came from the upstream");
    assert!(dsn.contains("\r\nSubject: Spring \x1b[31moffer\r\n") && !dsn.contains("To: Zoe"), "{dsn}");
    let (code, _, err) = cli(relay.dir.path(), HOLD, &["release", &null]);
    assert_eq!(code, 1, "{err}");
}

/// Concurrent release, release and delete requests on the control socket.
fn race(socket: &Path, id: &str) -> Vec<String> {
    let requests = [format!("release {id} explode"), format!("delete {id}"), format!("release {id} pass")];
    let threads: Vec<_> = requests
        .into_iter()
        .map(|r| {
            let socket = socket.to_path_buf();
            std::thread::spawn(move || bccguard::control::request(&socket, &r).unwrap())
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_racing_a_delete_deliver_at_most_once() {
    let upstream = TestUpstream::start().await;
    let relay = TestRelay::start(&config(&upstream, "")).await;
    let socket = relay.dir.path().join("spool/control.sock");
    for n in 0..6 {
        let id = send_held(&relay, &format!("shop{n}@example.com")).await;
        let replies = tokio::task::spawn_blocking({
            let (socket, id) = (socket.clone(), id.clone());
            move || race(&socket, &id)
        })
        .await
        .unwrap();
        let releases = replies.iter().filter(|r| *r == "ok done").count();
        assert!(releases <= 1, "released once at most: {replies:?}");
        assert!(releases == 1 || replies[1] == "ok 1", "one of them acted: {replies:?}");
        for (i, r) in replies.iter().enumerate() {
            let allowed: &[&str] = if i == 1 { &["ok 1", "ok 0"] } else { &["ok done", "ok not_held", "ok not_found"] };
            assert!(allowed.contains(&r.as_str()), "{replies:?}");
        }
    }
    relay.wait_spool_empty().await;
    settle().await;
    for rcpt in RCPTS {
        let mut senders: Vec<String> = upstream.delivered_to(rcpt).iter().map(|d| d.from.clone()).collect();
        let copies = senders.len();
        senders.sort();
        senders.dedup();
        assert_eq!(senders.len(), copies, "{rcpt}: no message delivered twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_during_shutdown_is_kept_or_refused_and_delivered_once_after_restart() {
    let upstream = TestUpstream::start().await;
    let toml = config(&upstream, "");
    let relay = TestRelay::start(&toml).await;
    let id = send_held(&relay, "shop@example.com").await;
    let socket = relay.dir.path().join("spool/control.sock");
    let request = format!("release {id} explode");
    let release = std::thread::spawn(move || bccguard::control::request(&socket, &request));
    relay.begin_shutdown();
    let answered = release.join().unwrap();
    let (result, dir) = relay.shutdown().await;
    result.unwrap();
    let released = matches!(answered.as_deref(), Ok("ok done"));
    let spool = bccguard::spool::SpoolPaths::new(&dir.path().join("spool"));
    match spool.load_meta(&bccguard::queue_id::QueueId::parse(&id).unwrap()) {
        Ok((meta, _)) => assert_eq!(meta.is_held(), !released, "the journal agrees with {answered:?}"),
        Err(e) => assert!(released, "only a released message can be gone: {e}"),
    }

    let relay = TestRelay::start_with(test_config(&toml, dir.path()), dir).await;
    if !released {
        let (code, out, err) = cli(relay.dir.path(), HOLD, &["release", &id]);
        assert_eq!(code, 0, "{out}{err}");
    }
    relay.wait_spool_empty().await;
    settle().await;
    for rcpt in RCPTS {
        assert_eq!(upstream.delivered_to(rcpt).len(), 1, "{rcpt} once ({answered:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_cli_lists_releases_and_deletes_on_a_stopped_relays_spool() {
    let upstream = TestUpstream::start().await;
    let toml = config(&upstream, "");
    let relay = TestRelay::start(&toml).await;
    let keep = send_held(&relay, "a@example.com").await;
    let drop = send_held(&relay, "b@example.com").await;
    let (result, dir) = relay.shutdown().await;
    result.unwrap();

    let (code, out, _) = cli(dir.path(), &toml, &["list", "--held"]);
    assert_eq!(code, 0);
    assert!(out.contains(&keep) && out.contains(&drop) && out.contains("2 held messages"), "{out}");
    let (code, out, err) = cli(dir.path(), &toml, &["release", &keep, "--as", "undisclose"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("Released {keep} as undisclose: it will be delivered when bccguard starts."));
    let (code, _, err) = cli(dir.path(), &toml, &["release", &keep]);
    assert_eq!(code, 1);
    assert!(err.contains("is not held (already released?); nothing done"), "{err}");
    let (code, out, _) = cli(dir.path(), &toml, &["delete", &drop]);
    assert_eq!((code, out.trim()), (0, format!("Deleted {drop}.").as_str()));
    let (_, out, _) = cli(dir.path(), &toml, &["list", "--held"]);
    assert_eq!(out, "No messages are held.\n");
    assert!(upstream.deliveries().is_empty());

    let relay = TestRelay::start_with(test_config(&toml, dir.path()), dir).await;
    relay.wait_spool_empty().await;
    settle().await;
    let all = upstream.deliveries();
    assert_eq!(all.len(), 1, "one undisclosed copy for everyone");
    assert_eq!(all[0].from, "a@example.com");
    let text = without_received(&all[0].data);
    assert!(
        text.contains("\r\nTo: undisclosed-recipients:;\r\n") && text.contains("X-Bccguard: undisclosed"),
        "{text}"
    );
}
