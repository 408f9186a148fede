#!/usr/bin/env bash
# Chaos scenarios against real routerd processes on 127.0.0.1 (router-chaos's
# `chaos` binary): kill -9 of the leader / a follower, SIGSTOP+SIGCONT of the
# leader, a rolling restart and a wiped data directory, on 3 and 5 nodes, under
# a recorded provider workload whose history is checked afterwards.
#   bash deploy/chaos.sh --profile quick            (CI: ~2 min on a debug build)
#   bash deploy/chaos.sh --profile long --out DIR   (every fault on 3 and 5 nodes)
# Builds routerd (debug) if it is missing, and the chaos binary. Exit code 0 only
# when no invariant was violated. Report: DIR/report.json and DIR/summary.txt
# (default DIR: target/chaos).
set -euo pipefail
cd "$(dirname "$0")/.."

routerd="${ROUTERD_BIN:-target/debug/routerd}"
if [ ! -x "$routerd" ]; then
    cargo build --locked -p router-node
fi
cargo build --locked -p router-chaos   # a no-op when up to date

exec target/debug/chaos --routerd "$routerd" "$@"
