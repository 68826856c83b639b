//! Policy rules end to end (SPEC §9) through the real server: the example configurations
//! parse, a conversation passes under `org-relay.toml` while a bulk list with the same
//! exposure explodes (exact bytes in the outbox), a rule by AUTH user, a rule by client
//! network (127.0.0.2), monitor on one rule only; the rule named in the spool, the queue and
//! held lists, metrics and `check`.

mod common;

use std::path::Path;

use common::{RawClient, TestRelay, delivered_to, eventually, http_get, queue_cli, sample};

/// An example configuration's text.
fn example(name: &str) -> String {
    std::fs::read_to_string(format!("{}/config/examples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Only the `[policy]` of an example (its upstream, listeners and notices are for a real
/// deployment), plus `extra`.
fn policy_of(name: &str, extra: &str) -> String {
    let table: toml::Table = toml::from_str(&example(name)).unwrap();
    let policy = toml::Table::from_iter([("policy".to_string(), table["policy"].clone())]);
    format!("{}\n{extra}", toml::to_string(&policy).unwrap())
}

#[test]
fn every_example_parses_without_warnings() {
    for name in ["app-sidecar.toml", "org-relay.toml", "monitor-first.toml"] {
        let path = format!("{}/config/examples/{name}", env!("CARGO_MANIFEST_DIR"));
        let config = bccguard::config::load(bccguard::config::ConfigSource::File(path.into()))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(bccguard::config::shadowed(&config.policy.rules).is_empty(), "{name}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_bccguard"))
            .args(["check-config", "--config", &format!("config/examples/{name}")])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty(), "{name}: no warnings: {}", String::from_utf8_lossy(&out.stderr));
    }
    let app = bccguard::config::load_str(Some(&example("app-sidecar.toml")), &[]).unwrap();
    assert_eq!(app.policy.breaker.leaks, Some(5));
    let monitor = bccguard::config::load_str(Some(&example("monitor-first.toml")), &[]).unwrap();
    assert!(monitor.policy.monitor && monitor.policy.rules.iter().all(|r| r.monitor.is_none()));
}

#[test]
fn check_config_warns_of_a_rule_that_can_never_match() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shadow.toml");
    std::fs::write(&path, "[[policy.rules]]\nname = \"all\"\n[[policy.rules]]\nname = \"late\"\nbulk = true\n")
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "a warning, not an error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err,
        "  warning: policy.rules[1]: rule \"late\" never matches: the earlier rule \"all\" (policy.rules[0]) has no \
         conditions and matches every message, and the first match wins\n"
    );
}

const PARTNERS: [&str; 3] = ["ann@alpha.test", "ben@beta.test", "cat@gamma.test"];

fn message(extra: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.com>\r\nTo: ann@alpha.test, Ben <ben@beta.test>\r\nCc: cat@gamma.test, \
         bob@example.com\r\nSubject: Re: the offer\r\n{extra}Message-ID: <2@example.com>\r\n\r\nSee below.\r\n"
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn org_relay_passes_a_conversation_and_explodes_a_bulk_list_with_the_same_exposure() {
    let relay = TestRelay::start(&policy_of("org-relay.toml", "")).await;
    let rcpts = [PARTNERS[0], PARTNERS[1], PARTNERS[2], "bob@example.com"];
    let conversation = message("In-Reply-To: <1@alpha.test>\r\n");
    assert!(relay.send("alice@example.com", &rcpts, &conversation).await.starts_with("250 "));
    let files = relay.wait_outbox(4).await;
    for rcpt in rcpts {
        assert_eq!(delivered_to(&files, rcpt), conversation, "{rcpt}: unchanged");
    }
    for f in std::fs::read_dir(relay.outbox()).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    let bulk = message("In-Reply-To: <1@alpha.test>\r\nList-Unsubscribe: <mailto:leave@example.com>\r\n");
    assert!(relay.send("alice@example.com", &rcpts, &bulk).await.starts_with("250 "));
    let files = relay.wait_outbox(4).await;
    let text = String::from_utf8_lossy(&bulk).into_owned();
    let fields = "To: ann@alpha.test, Ben <ben@beta.test>\r\nCc: cat@gamma.test, bob@example.com\r\n";
    for (rcpt, to) in
        [(PARTNERS[0], "ann@alpha.test"), (PARTNERS[1], "Ben <ben@beta.test>"), (PARTNERS[2], "cat@gamma.test")]
    {
        let expected = text
            .replace(fields, &format!("To: {to}\r\nCc: bob@example.com\r\n"))
            .replace("\r\n\r\n", "\r\nX-Bccguard: exploded\r\n\r\n");
        assert_eq!(String::from_utf8_lossy(&delivered_to(&files, rcpt)), expected, "{rcpt}");
    }
    assert_eq!(delivered_to(&files, "bob@example.com"), bulk, "internal recipients get the original");
}

#[tokio::test(flavor = "multi_thread")]
async fn org_relay_holds_an_exposure_over_100_and_names_the_rule() {
    let relay = TestRelay::start(&policy_of("org-relay.toml", "")).await;
    let rcpts: Vec<String> = (0..101).map(|i| format!("c{i:03}@client{}.test", i % 7)).collect();
    let to = rcpts.iter().rev().cloned().collect::<Vec<_>>().join(", ");
    let data = format!("From: a@example.com\r\nTo: {to}\r\nIn-Reply-To: <x@y>\r\nSubject: big\r\n\r\nhi\r\n");
    let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    let reply = relay.send("a@example.com", &rcpts, data.as_bytes()).await;
    assert!(reply.starts_with("250 2.0.0 Ok: queued as "), "{reply}");
    let (code, held) = queue_cli(&relay, &["list", "--held"]);
    assert_eq!(code, 0, "{held}");
    let row = held.lines().nth(1).unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[5..9], ["101", "101", "huge-exposure", "big"], "{held}");
    let (_, queue) = queue_cli(&relay, &["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&queue).unwrap();
    assert_eq!(v[0]["rule"], "huge-exposure", "{queue}");
    let id = relay.spooled().remove(0);
    let msg = std::fs::read_to_string(relay.dir.path().join(format!("spool/queue/{id}.msg"))).unwrap();
    let meta: serde_json::Value = serde_json::from_str(msg.lines().next().unwrap()).unwrap();
    assert_eq!(meta["decision"]["rule"], "huge-exposure");
    assert_eq!(
        meta["decision"]["signals"],
        serde_json::json!(["reply", "header_matches_envelope", "external_domains=7"])
    );
    assert!(relay.outbox_files().is_empty());
}

#[test]
fn spool_records_written_before_rules_are_read() {
    let old = r#"{"version":2,"id":"6616D7BA4958B000","received_at":1,"client":"127.0.0.1","sender":"a@x.test","recipients":["b@y.test"],"decision":{"leak":false,"action":"pass","exposure":1},"plan":{"transactions":[]}}"#;
    let meta: bccguard::spool::record::Meta = serde_json::from_str(old).unwrap();
    assert_eq!((meta.decision.rule, meta.decision.signals.len()), (None, 0));
}

const USERS: &str = "[access]\nallow_plaintext_auth = true\n";

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_by_auth_user() {
    let hash = bccguard::smtp::auth::hash_password("s3cret").unwrap();
    let config = format!(
        "{USERS}[[access.users]]\nname = \"crm\"\npassword_hash = '{hash}'\n\
         [policy]\ninternal_domains = [\"example.com\"]\n\
         [[policy.rules]]\nname = \"crm-tool\"\nauth_users = [\"crm\"]\naction = \"reject\"\n"
    );
    let relay = TestRelay::start(&config).await;
    let leak = message("");
    let rcpts = [PARTNERS[0], PARTNERS[1], PARTNERS[2]];
    let mut c = relay.client().await;
    c.cmd("EHLO crm").await;
    // AUTH PLAIN \0crm\0s3cret
    assert_eq!(c.cmd("AUTH PLAIN AGNybQBzM2NyZXQ=").await, "235 2.7.0 Authentication successful");
    assert_eq!(
        c.transaction("crm@example.com", &rcpts, &leak).await,
        "550 5.7.1 Message refused: it shows 3 external recipient addresses to every recipient \
         (at most 1 allowed); put the recipients in Bcc or send one message each"
    );
    let reply = relay.send("alice@example.com", &rcpts, &leak).await;
    assert!(reply.starts_with("250 "), "not authenticated: the top-level policy explodes: {reply}");
    let files = relay.wait_outbox(3).await;
    assert!(String::from_utf8_lossy(&delivered_to(&files, PARTNERS[0])).contains("X-Bccguard: exploded\r\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rule_by_client_network() {
    let config = "[policy]\ninternal_domains = [\"example.com\"]\n\
                  [[policy.rules]]\nname = \"marketing-host\"\nclient_networks = [\"127.0.0.2/32\"]\naction = \"undisclose\"\n";
    let relay = TestRelay::start(config).await;
    let leak = message("");
    let rcpts = [PARTNERS[0], PARTNERS[1], PARTNERS[2]];
    let mut c = RawClient::connect(relay.addr, Some("127.0.0.2")).await;
    assert!(c.reply().await.starts_with("220 "));
    c.cmd("EHLO marketing").await;
    assert!(c.transaction("news@example.com", &rcpts, &leak).await.starts_with("250 "));
    let files = relay.wait_outbox(3).await;
    let expected = String::from_utf8_lossy(&leak)
        .replace(
            "To: ann@alpha.test, Ben <ben@beta.test>\r\nCc: cat@gamma.test, bob@example.com\r\n",
            "To: undisclosed-recipients:;\r\nCc: bob@example.com\r\n",
        )
        .replace("\r\n\r\n", "\r\nX-Bccguard: undisclosed\r\n\r\n");
    for rcpt in rcpts {
        assert_eq!(String::from_utf8_lossy(&delivered_to(&files, rcpt)), expected, "{rcpt}");
    }
    relay.wait_spool_empty().await;
    assert!(relay.send("news@example.com", &rcpts, &leak).await.starts_with("250 "));
    let files = relay.wait_outbox(6).await;
    let exploded = files.iter().filter(|(_, b)| String::from_utf8_lossy(b).contains("X-Bccguard: exploded")).count();
    assert_eq!(exploded, 3, "from 127.0.0.1 the top-level policy explodes");
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_on_one_rule_only() {
    let config = "[metrics]\nlisten = \"127.0.0.1:0\"\n[policy]\ninternal_domains = [\"example.com\"]\n\
                  [[policy.rules]]\nname = \"watch-bulk\"\nbulk = true\nmonitor = true\n";
    let relay = TestRelay::start(config).await;
    let metrics = relay.metrics.unwrap();
    let before = http_get(metrics, "/metrics").1;
    let count = |text: &str, rule: &str, action: &str| {
        sample(text, &format!("bccguard_decisions_total{{rule=\"{rule}\",action=\"{action}\"}}"))
    };
    let rcpts = [PARTNERS[0], PARTNERS[1], PARTNERS[2]];
    let bulk = message("Precedence: bulk\r\n");
    assert!(relay.send("news@example.com", &rcpts, &bulk).await.starts_with("250 "));
    let files = relay.wait_outbox(3).await;
    for rcpt in rcpts {
        assert_eq!(delivered_to(&files, rcpt), bulk, "{rcpt}: monitor mode delivers unchanged");
    }
    relay.wait_spool_empty().await;
    assert!(relay.send("news@example.com", &rcpts, &message("")).await.starts_with("250 "));
    let files = relay.wait_outbox(6).await;
    let exploded = files.iter().filter(|(_, b)| String::from_utf8_lossy(b).contains("X-Bccguard: exploded")).count();
    assert_eq!(exploded, 3, "other mail is enforced");
    eventually("the decisions counted", || {
        let after = http_get(metrics, "/metrics").1;
        count(&after, "watch-bulk", "pass") - count(&before, "watch-bulk", "pass") >= 1.0
            && count(&after, "default", "explode") - count(&before, "default", "explode") >= 1.0
            && sample(&after, "bccguard_signals_total{signal=\"bulk\"}") >= 1.0
    })
    .await;
}

/// `bccguard check --json` with a config and a message file.
fn check(dir: &Path, config: &str, message: &[u8], args: &[&str]) -> (i32, String) {
    std::fs::write(dir.join("check.toml"), config).unwrap();
    std::fs::write(dir.join("m.eml"), message).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .arg("check")
        .arg("--config")
        .arg(dir.join("check.toml"))
        .args(args)
        .arg(dir.join("m.eml"))
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn check_names_the_rule_and_shows_the_signals() {
    let dir = tempfile::tempdir().unwrap();
    let config = policy_of("org-relay.toml", "");
    let conversation = message("References: <1@alpha.test>\r\n");
    let (code, out) = check(dir.path(), &config, &conversation, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("  decision      no leak: pass\n  rule          conversations\n"), "{out}");
    assert!(out.contains("  signals       reply, header_matches_envelope, external_domains=3\n"), "{out}");
    let (code, out) = check(dir.path(), &config, &message("Auto-Submitted: auto-generated\r\n"), &["--json"]);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["rule"].as_str(), v["action"].as_str()), (Some("bulk-lists"), Some("explode")));
    assert_eq!(v["signals"]["bulk"], true);
    assert_eq!(v["signals"]["external_domains"], 3);
    let by_client = "[[policy.rules]]\nname = \"lan\"\nclient_networks = [\"10.0.0.0/8\"]\naction = \"reject\"\n";
    let (_, out) = check(dir.path(), by_client, &message(""), &["--client", "10.1.2.3", "--json"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["rule"], "lan");
    let by_user = "[[policy.rules]]\nname = \"crm\"\nauth_users = [\"crm\"]\naction = \"reject\"\n";
    let (_, out) = check(dir.path(), by_user, &message(""), &["--auth-user", "crm", "--json"]);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out).unwrap()["rule"], "crm");
}
