//! Bench (not a test): explode one 100 KiB message with 30,000 external recipients into
//! copies written to a null sink; reports time, copies/s and peak memory (VmHWM).
//!
//! Run: `cargo bench --bench explode` (add `-- 100000` for another recipient count).

use std::io::Write;
use std::time::Instant;

use bccguard::config::{Action, PolicyConfig};
use bccguard::message::decide::{Policy, decide};
use bccguard::message::parse::Headers;
use bccguard::plan::Plan;
use bccguard::rewrite::header_block;

fn main() {
    let recipients: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(30_000);
    let rss_before = peak_rss_kib();
    let message = message(100 * 1024);
    let rcpts: Vec<String> = (0..recipients).map(|i| format!("customer{i:05}@domain{}.test", i % 500)).collect();
    let policy = Policy::from_config(&PolicyConfig {
        internal_domains: vec!["example.com".into()],
        max_visible_external: 1,
        action: Action::Explode,
        keep_internal_visible: true,
        monitor: false,
    });

    let start = Instant::now();
    let headers = Headers::parse(&message).expect("parses");
    let decision = decide(&headers, &policy);
    let plan = Plan::build(&decision, &headers, &rcpts, &policy).expect("explode");
    let planned = start.elapsed();
    let body = &message[headers.body_start..];
    let mut sink = std::io::sink();
    let mut bytes = 0usize;
    for txn in &plan.transactions {
        let head = header_block(&message, &headers, &plan, txn, &rcpts);
        sink.write_all(&head).unwrap();
        sink.write_all(body).unwrap();
        bytes += head.len() + body.len();
    }
    let elapsed = start.elapsed();
    let copies = plan.transactions.len();
    println!(
        "message: {} bytes, {} addresses visible, {recipients} envelope recipients",
        message.len(),
        headers.visible().count()
    );
    println!("decision: leak={} exposure={} action={}", decision.leak, decision.exposure, decision.action.as_str());
    println!("parse+decide+plan: {:.1} ms", planned.as_secs_f64() * 1e3);
    println!(
        "explode: {copies} copies, {:.1} MiB written to the sink in {:.2} s ({:.0} copies/s)",
        bytes as f64 / (1 << 20) as f64,
        elapsed.as_secs_f64(),
        copies as f64 / elapsed.as_secs_f64()
    );
    println!(
        "peak RSS: {:.1} MiB (before the message: {:.1} MiB)",
        peak_rss_kib() as f64 / 1024.0,
        rss_before as f64 / 1024.0
    );
}

/// A 100 KiB-ish message whose To shows 1,000 external customers (a batch like the 2019 leak).
fn message(size: usize) -> Vec<u8> {
    let to: Vec<String> = (0..1000).map(|i| format!("customer{i:05}@domain{}.test", i % 500)).collect();
    let mut m = format!(
        "From: Support <support@example.com>\r\nTo: {}\r\nCc: Ops <ops@example.com>\r\nSubject: Security update\r\n\
         Date: Mon, 18 Nov 2019 09:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n",
        to.join(",\r\n ")
    )
    .into_bytes();
    while m.len() < size {
        m.extend_from_slice(b"Please update your password at your earliest convenience. Thank you.\r\n");
    }
    m
}

/// Peak resident set size of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
