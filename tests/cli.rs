//! The command line, run as the real binary.

use std::process::{Command, Output};

fn bccguard(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bccguard"));
    cmd.args(args).env_remove("BCCGUARD_CONFIG");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn the_shipped_config_file_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/bccguard.toml");
    let config = bccguard::config::load_str(Some(&std::fs::read_to_string(path).unwrap()), &[]).unwrap();
    assert_eq!(config.server.listen[0].to_string(), "127.0.0.1:2525");
    assert_eq!(config.policy.internal_domains, ["example.com"]);
    assert_eq!(config.hold.max_age, bccguard::config::Duration::secs(10 * 24 * 3600));
    let out = bccguard(&["check-config", "--config", path], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("configuration is valid"));
}

#[test]
fn check_config_lists_every_error_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nmax_message_size = \"huge\"\nmax_connections = 0\n[policy]\naction = \"drop\"\nbogus = 1\n",
    )
    .unwrap();
    let out = bccguard(&["check-config", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("4 errors"), "{err}");
    for key in ["server.max_message_size:", "server.max_connections:", "policy.action:", "policy.bogus:"] {
        assert!(err.contains(key), "{key} in {err}");
    }
}

#[test]
fn config_path_from_the_environment_and_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[server]\nmax_recipients = 5\n").unwrap();
    let p = path.to_str().unwrap();
    let out = bccguard(&["check-config"], &[("BCCGUARD_CONFIG", p), ("BCCGUARD__SERVER__MAX_RECIPIENTS", "x")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("BCCGUARD__SERVER__MAX_RECIPIENTS"), "{}", text(&out.stderr));
    let out = bccguard(&["check-config", "--config", "/nonexistent.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read the file"));
}

#[test]
fn serve_refuses_a_bad_config_with_exit_2() {
    let out = bccguard(&["serve", "--config", "/nonexistent.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn hash_password_makes_a_usable_hash() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bccguard"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let hash = text(&out.stdout).trim().to_string();
    let parsed = bccguard::smtp::auth::PasswordHash::parse(&hash).unwrap();
    assert!(parsed.verify(b"s3cret"));
}

fn fixture_path(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

const INTERNAL: (&str, &str) = ("BCCGUARD__POLICY__INTERNAL_DOMAINS", "[\"example.com\"]");

#[test]
fn check_exits_0_without_a_leak_and_1_with_one() {
    let out = bccguard(&["check", &fixture_path("conversation.eml")], &[INTERNAL]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("decision      no leak: pass"));

    let out = bccguard(&["check", &fixture_path("bulk-50.eml")], &[INTERNAL]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("decision      leak: explode"), "{stdout}");
    assert!(stdout.contains("exposure      50 external (at most 1 allowed)"), "{stdout}");
    assert!(stdout.contains("transactions  50"), "{stdout}");
    assert!(stdout.contains("\n50  customer49@customer-b.test  explode  customer49@customer-b.test  -\n"), "{stdout}");

    let out = bccguard(&["check", &fixture_path("bulk-50.eml")], &[INTERNAL, ("BCCGUARD__POLICY__ACTION", "reject")]);
    assert_eq!(out.status.code(), Some(1), "a leak exits 1 whatever the action");
    assert!(text(&out.stdout).contains("reply         550 5.7.1 Message refused: it shows 50 external"));
}

#[test]
fn check_json_names_the_transactions() {
    let out = bccguard(
        &[
            "check",
            "--json",
            "--from",
            "shop@example.com",
            "--rcpt",
            "zoe@client.test",
            "--rcpt",
            "ops@example.com",
            &fixture_path("multipart-attachment.eml"),
        ],
        &[INTERNAL],
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["leak"], true);
    assert_eq!(v["action"], "explode");
    assert_eq!(v["exposure"], 2);
    assert_eq!(v["recipients"], 2);
    let txns = v["transactions"].as_array().unwrap();
    assert_eq!(txns.len(), 2);
    assert_eq!(txns[0]["recipients"][0], "ops@example.com");
    assert_eq!(txns[0]["rewrite"], "original");
    assert_eq!(txns[1]["to"], "=?UTF-8?B?Wm/DqyBDdXN0b21lcg==?= <zoe@client.test>");
    assert_eq!(txns[1]["cc"], "Ops <ops@example.com>, =?UTF-8?B?SMOkbmRsZXI=?= <haendler@example.com>");
}

#[test]
fn check_reads_lf_files_and_reports_errors_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lf.eml");
    std::fs::write(&path, "To: a@x.test, b@y.test\nSubject: lf\n\nbody\n").unwrap();
    let out = bccguard(&["check", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("exposure      2 external"));

    let out = bccguard(&["check", "/nonexistent.eml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read /nonexistent.eml"));
    let out = bccguard(&["check", "--rcpt", "not an address", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--rcpt \"not an address\" is not an address"));
}

#[test]
fn check_shows_hold_for_a_leak_under_hold() {
    let hold = ("BCCGUARD__POLICY__ACTION", "hold");
    let out = bccguard(&["check", &fixture_path("bulk-50.eml")], &[INTERNAL, hold]);
    assert_eq!(out.status.code(), Some(1), "a leak");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("decision      leak: hold\n"), "{stdout}");
    assert!(stdout.contains("reply         250 (held: nothing is delivered until a person releases it)\n"));
    let out = bccguard(&["check", "--json", &fixture_path("bulk-50.eml")], &[INTERNAL, hold]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((v["action"].as_str(), v["transactions"].as_array().map(Vec::len)), (Some("hold"), Some(0)));
    let out = bccguard(&["check", &fixture_path("conversation.eml")], &[INTERNAL, hold]);
    assert!(text(&out.stdout).contains("decision      no leak: pass"), "only leaks are held");
}

#[test]
fn hold_max_age_is_checked() {
    let out = bccguard(&["check-config"], &[("BCCGUARD__HOLD__MAX_AGE", "0s"), ("BCCGUARD__HOLD__COLOUR", "red")]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("hold.colour") || err.contains("HOLD__COLOUR"), "{err}");
    let out = bccguard(&["check-config"], &[("BCCGUARD__HOLD__MAX_AGE", "0s")]);
    assert!(text(&out.stderr).contains("hold.max_age: must be greater than 0"), "{}", text(&out.stderr));
}

#[test]
fn serve_raises_the_open_files_soft_limit_to_the_hard_one() {
    // The soft limit it should reach: the hard one, at most 1,048,576.
    let hard =
        rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum.map_or(1 << 20, |h| h.min(1 << 20));
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = dir.path().join("bccguard.toml");
    let toml = format!(
        "[server]\nlisten = [\"{addr}\"]\n[upstream]\nhost = \"127.0.0.1\"\nport = 9\ntls = \"none\"\n[spool]\ndir = {:?}\n",
        dir.path().join("spool")
    );
    std::fs::write(&config, toml).unwrap();
    // Started with a soft limit of 256, as a container's 1,024 is below what it needs.
    let mut relay = Command::new("sh")
        .args(["-c", "ulimit -Sn 256 && exec \"$0\" serve --config \"$1\""])
        .arg(env!("CARGO_BIN_EXE_bccguard"))
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the relay listens");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", relay.id())).unwrap();
    let _ = relay.kill();
    let _ = relay.wait();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    let soft: u64 = line.split_whitespace().find_map(|w| w.parse().ok()).unwrap();
    assert_eq!(soft, hard, "soft raised to hard: {line}");
}
