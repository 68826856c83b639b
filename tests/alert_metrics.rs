//! The alert rules (`docker/prometheus/bccguard-rules.yaml`) and the dashboard
//! (`docker/grafana/bccguard.json`) name only metrics a running relay exposes on `/metrics`, so
//! a renamed metric cannot silently break an alert or a panel.

mod common;

use std::collections::BTreeSet;

use common::{TestRelay, http_get};

const METRICS: &str = "[metrics]\nlisten = \"127.0.0.1:0\"\n[policy]\ninternal_domains = [\"example.com\"]\n";

/// Metrics the rules use that belong to features on other branches, with the feature. Each is
/// allowed to be missing only while it is missing: once a relay exposes it, it is checked like
/// any other name (and this entry can go).
const PENDING: &[(&str, &str)] = &[];

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Every `bccguard_...` metric name in `text`.
fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("bccguard_") {
        let start_ok = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric();
        let tail = &rest[at..];
        let len = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        if start_ok {
            names.insert(tail[..len].to_string());
        }
        rest = &tail[len..];
    }
    names
}

/// The PromQL expressions of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(&read("docker/grafana/bccguard.json")).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    exprs
}

/// Series names in an exposition: `bccguard_messages_total`, `..._bucket`, `..._sum`, ...
fn exposed(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn names_are_found_in_promql_and_text() {
    let names = names_in("sum(rate(bccguard_a_total{x=\"y\"}[5m])) / bccguard_b_bucket and xbccguard_c");
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["bccguard_a_total", "bccguard_b_bucket"]);
    let text = "# TYPE bccguard_m counter\nbccguard_m_total{a=\"b\"} 1\nbccguard_h_bucket{le=\"1\"} 0\nbccguard_g 3\n";
    assert_eq!(exposed(text).into_iter().collect::<Vec<_>>(), ["bccguard_g", "bccguard_h_bucket", "bccguard_m_total"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_the_dashboard_use_is_exposed() {
    let rules = names_in(&read("docker/prometheus/bccguard-rules.yaml"));
    let panels = names_in(&dashboard_exprs().join("\n"));
    assert!(rules.len() >= 12, "the rules name too few metrics to be read right: {rules:?}");
    assert!(panels.len() >= 20, "the dashboard names too few metrics to be read right: {panels:?}");

    let relay = TestRelay::start(METRICS).await;
    let (status, text) = http_get(relay.metrics.expect("metrics enabled"), "/metrics");
    assert_eq!(status, 200);
    let exposed = exposed(&text);
    let mut missing = Vec::new();
    for (file, names) in [("docker/prometheus/bccguard-rules.yaml", &rules), ("docker/grafana/bccguard.json", &panels)]
    {
        for name in names {
            if exposed.contains(name) {
                continue;
            }
            match PENDING.iter().find(|(pending, _)| pending == name) {
                Some((_, feature)) => eprintln!("{file}: {name} is not exposed yet; it comes with {feature}"),
                None => missing.push(format!("{file}: {name}")),
            }
        }
    }
    assert!(missing.is_empty(), "not on /metrics:\n{}\n\nexposed:\n{exposed:#?}", missing.join("\n"));
}
