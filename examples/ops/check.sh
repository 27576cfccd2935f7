#!/usr/bin/env bash
# Checks the ops kit: the alert rules parse and pass their unit tests, every expression of the
# Grafana dashboard is valid PromQL, and every trailmark_* series they name is one the server
# exports (a metric renamed in the code breaks this check, not a dashboard in production).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../.."
cd "$here"
promtool check rules prometheus-alerts.yml
promtool test rules prometheus-alerts.test.yml
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 - "$tmp/dashboard-rules.yml" <<'PY'
import json, sys
d = json.load(open("grafana-dashboard.json"))
exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
with open(sys.argv[1], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        f.write(f"      - record: dashboard_expr_{i}\n        expr: {json.dumps(e)}\n")
print(f"{len(d['panels'])} panels, {len(exprs)} expressions")
PY
promtool check rules "$tmp/dashboard-rules.yml"
exported="$(grep -rhoE '"trailmark_[a-z_]+"' "$root/server-lib/src" | tr -d '"' | sort -u)"
missing=0
for name in $(grep -hoE 'trailmark_[a-z_]+' grafana-dashboard.json prometheus-alerts.yml | sed -E 's/_(bucket|sum|count)$//' | sort -u); do
  if ! grep -qx "$name" <<<"$exported"; then
    echo "unknown series: $name"
    missing=1
  fi
done
[ "$missing" -eq 0 ] && echo "ops kit: every series exists in the server"
exit "$missing"
