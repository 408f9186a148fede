#!/usr/bin/env bash
# Starts a local dev cluster (routerd dev) and a real Prometheus (Debian's
# package) scraping the three admin ports, then checks through Prometheus'
# query API that every node is up and exports router metrics. Everything
# listens on 127.0.0.1; both processes are stopped by PID on exit.
#   usage: bash deploy/check-prometheus.sh [path/to/routerd]
set -euo pipefail
cd "$(dirname "$0")/.."

routerd="${1:-target/debug/routerd}"
base=7700          # nodes: admin ports 7713, 7723, 7733
prom_port=9390
work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

[ -x "$routerd" ] || { echo "check-prometheus: $routerd not found (cargo build -p router-node)"; exit 2; }
command -v prometheus >/dev/null || { echo "check-prometheus: prometheus not installed (deploy/install-deps.sh --with-prometheus)"; exit 2; }

"$routerd" dev --dir "$work/cluster" --base-port "$base" >"$work/routerd.log" 2>&1 &
pids+=($!)
cat >"$work/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: interop-router
    static_configs:
      - targets: ["127.0.0.1:$((base + 13))", "127.0.0.1:$((base + 23))", "127.0.0.1:$((base + 33))"]
YAML
promtool check config "$work/prometheus.yml"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address="127.0.0.1:$prom_port" >"$work/prometheus.log" 2>&1 &
pids+=($!)

query() { curl -fsS --get "http://127.0.0.1:$prom_port/api/v1/query" --data-urlencode "query=$1"; }
ok=""
for _ in $(seq 1 60); do
    sleep 1
    up=$(query 'sum(up{job="interop-router"})' 2>/dev/null | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)' 2>/dev/null || echo 0)
    leaders=$(query 'sum(router_raft{field="is_leader"})' 2>/dev/null | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else 0)' 2>/dev/null || echo 0)
    if [ "$up" = "3" ] && [ "$leaders" = "1" ]; then ok=yes; break; fi
done
if [ -z "$ok" ]; then
    echo "check-prometheus: FAILED (up=$up, leaders=$leaders)"
    tail -20 "$work/prometheus.log" "$work/routerd.log"
    exit 1
fi
series=$(curl -fsS "http://127.0.0.1:$prom_port/api/v1/label/__name__/values" | python3 -c 'import json,sys; print(len([n for n in json.load(sys.stdin)["data"] if n.startswith("router_")]))')
echo "check-prometheus: Prometheus scraped 3/3 nodes (up), exactly 1 leader, $series router_* metric names"
# Every query of the shipped Grafana dashboard parses and runs against this Prometheus.
python3 - "$prom_port" deploy/grafana-dashboard.json <<'PY'
import json, sys, urllib.parse, urllib.request
port, path = sys.argv[1], sys.argv[2]
exprs = [t["expr"] for p in json.load(open(path))["panels"] for t in p["targets"]]
bad = []
for e in exprs:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": e})
    try:
        if json.load(urllib.request.urlopen(url))["status"] != "success":
            bad.append(e)
    except Exception as err:  # HTTP 400 on a syntax error
        bad.append(f"{e} ({err})")
if bad:
    sys.exit("check-prometheus: dashboard queries failed:\n  " + "\n  ".join(bad))
print(f"check-prometheus: all {len(exprs)} dashboard queries run")
PY
