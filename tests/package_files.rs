//! The Debian package's files agree with the relay: the conffile made from
//! config/bccguard.toml by packaging/deb/conffile.sh is valid and has the package defaults,
//! and the systemd unit's stop timeout, writable paths and capabilities fit that configuration.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bccguard::config::{Config, UpstreamKind, load_str};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The packaged /etc/bccguard/bccguard.toml, as the package build makes it.
fn packaged_conffile() -> String {
    let script = format!("{}/packaging/deb/conffile.sh", env!("CARGO_MANIFEST_DIR"));
    let mut child =
        Command::new("sh").arg(script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("sh runs");
    child.stdin.take().unwrap().write_all(read("config/bccguard.toml").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "conffile.sh failed");
    String::from_utf8(out.stdout).unwrap()
}

/// `Key=value` lines of the unit's `[Service]` section.
fn service_settings(unit: &str, key: &str) -> Vec<String> {
    let service = unit.split("[Service]").nth(1).unwrap().split("\n[").next().unwrap();
    service.lines().filter_map(|l| l.strip_prefix(&format!("{key}="))).map(str::to_string).collect()
}

fn seconds(value: &str) -> u64 {
    humantime::parse_duration(value).map(|d: Duration| d.as_secs()).unwrap_or_else(|e| panic!("{value}: {e}"))
}

#[test]
fn the_conffile_is_config_bccguard_toml_with_the_package_defaults() {
    let text = packaged_conffile();
    let config: Config = load_str(Some(&text), &[]).unwrap();
    assert_eq!(config.spool.dir.to_str(), Some("/var/spool/bccguard"));
    assert!(matches!(config.upstream.kind(), UpstreamKind::Smtp("smtp.example.com")));
    assert_eq!(config.metrics.listen.unwrap().to_string(), "127.0.0.1:9325");
    assert_eq!(config.server.listen[0].to_string(), "127.0.0.1:2525");
    assert_eq!(text.matches("# Package default").count(), 4, "each package default is explained:\n{text}");
    // Every other line is config/bccguard.toml's, in its order.
    let original = read("config/bccguard.toml");
    let mut packaged = text.lines();
    for line in original.lines() {
        if [
            "directory = \"outbox\"",
            "dir = \"spool\"",
            "# listen = \"127.0.0.1:9325\"",
            "# host = \"smtp.example.com\"",
        ]
        .contains(&line)
            || line.starts_with("# ...or an SMTP relay")
        {
            continue;
        }
        assert!(packaged.any(|l| l == line), "{line:?} is missing from the packaged conffile, or out of order");
    }
}

#[test]
fn the_unit_fits_the_packaged_configuration() {
    let unit = read("packaging/deb/bccguard.service");
    let config = load_str(Some(&packaged_conffile()), &[]).unwrap();
    let one = |key: &str| -> String {
        let values = service_settings(&unit, key);
        assert_eq!(values.len(), 1, "{key}: {values:?}");
        values[0].clone()
    };
    let stop = seconds(&one("TimeoutStopSec"));
    assert!(stop > config.server.shutdown_grace.0.as_secs(), "TimeoutStopSec {stop}s within shutdown_grace");
    assert_eq!(one("ExecStart"), "/usr/bin/bccguard serve --config /etc/bccguard/bccguard.toml");
    assert_eq!(service_settings(&unit, "ExecReload").last().unwrap(), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(one("User"), "bccguard");
    assert_eq!(one("ReadWritePaths"), config.spool.dir.to_str().unwrap());
    assert_eq!(one("WorkingDirectory"), config.spool.dir.to_str().unwrap());
    for (key, value) in
        [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"), ("ProtectHome", "yes")]
    {
        assert_eq!(one(key), value, "{key}");
    }
    // No capability while every listener is on an unprivileged port.
    assert!(config.server.listen.iter().all(|a| a.port() >= 1024));
    assert_eq!(one("CapabilityBoundingSet"), "");
    assert_eq!(one("AmbientCapabilities"), "");
    let files: u64 = one("LimitNOFILE").parse().unwrap();
    assert!(files > 2 * config.server.max_connections as u64, "LimitNOFILE {files}");
}
