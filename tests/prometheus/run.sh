#!/usr/bin/env bash
# The alert rules and the dashboard are valid Prometheus: `promtool check rules` on
# docker/prometheus/bccguard-rules.yaml, its unit tests (bccguard-rules.test.yaml: each alert
# fires when it should and not before), and every PromQL expression of
# docker/grafana/bccguard.json parsed by promtool too (as recording rules, with Grafana's
# $__rate_interval and $instance filled in). That the metrics they name exist is checked by
# `cargo test --test alert_metrics`. Needs promtool (Debian: prometheus) and python3.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

promtool check rules "$root/docker/prometheus/bccguard-rules.yaml"
(cd "$root/docker/prometheus" && promtool test rules bccguard-rules.test.yaml)

python3 - "$root/docker/grafana/bccguard.json" >"$work/dashboard-rules.yaml" <<'PY'
import json, sys
dashboard = json.load(open(sys.argv[1]))
print("groups:\n  - name: dashboard\n    rules:")
n = 0
for panel in dashboard["panels"]:
    for target in panel.get("targets", []):
        expr = target["expr"].replace("$__rate_interval", "5m").replace("$instance", ".*")
        n += 1
        print(f"      - record: dashboard:panel{panel['id']}:{target['refId']}")
        print(f"        expr: {json.dumps(expr)}")
if n < 20:
    sys.exit(f"only {n} expressions found in the dashboard")
PY
promtool check rules "$work/dashboard-rules.yaml" | sed 's|^|dashboard: |'
echo "prometheus: all passed"
