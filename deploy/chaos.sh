#!/usr/bin/env bash
# Chaos scenarios against real routerd processes on 127.0.0.1 (router-chaos's
# `chaos` binary): kill -9 of the leader / a follower, SIGSTOP+SIGCONT of the
# leader, a rolling restart and a wiped data directory, on 3 and 5 nodes, under
# a recorded provider workload whose history is checked afterwards.
#   bash deploy/chaos.sh --profile quick            (CI: ~2 min on a debug build)
#   bash deploy/chaos.sh --profile long --out DIR   (every fault on 3 and 5 nodes)
#   bash deploy/chaos.sh --profile network          (partitions, one-way, slow links; own netns)
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

# The network profile cuts and slows links with iptables and tc: it runs in a
# network namespace made for this run (loopback only), deleted afterwards, so
# no rule can touch the host's network. Needs root, iproute2 and iptables.
network=0
prev=""
for a in "$@"; do
    if [ "$a" = "--profile=network" ] || { [ "$prev" = "--profile" ] && [ "$a" = "network" ]; }; then
        network=1
    fi
    prev="$a"
done
if [ "$network" = 0 ]; then
    exec target/debug/chaos --routerd "$routerd" "$@"
fi
for tool in ip iptables tc; do
    command -v "$tool" >/dev/null || { echo "chaos.sh: the network profile needs $tool (deploy/install-deps.sh --with-netfaults)" >&2; exit 2; }
done
ns="irchaos-$$"
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip netns exec "$ns" ip link set lo up
IRCHAOS_NETNS="$ns" ip netns exec "$ns" target/debug/chaos --routerd "$routerd" "$@"
