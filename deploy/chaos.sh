#!/usr/bin/env bash
# Chaos scenarios against real routerd processes on 127.0.0.1 (router-chaos's
# `chaos` binary): kill -9 of the leader / a follower, SIGSTOP+SIGCONT, a
# rolling restart, a wiped data directory, a torn or corrupt log record and a
# leader's wall clock jump, on 3 and 5 nodes, under a recorded provider
# workload whose history is checked afterwards.
#   bash deploy/chaos.sh --profile quick            (CI: ~3 min on a debug build)
#   bash deploy/chaos.sh --profile long --out DIR   (every fault on 3 and 5 nodes)
#   bash deploy/chaos.sh --profile network          (partitions, one-way, slow links; own netns)
#   bash deploy/chaos.sh --profile power-loss       (power cuts losing unsynced writes; own mount ns)
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
profile=quick
prev=""
for a in "$@"; do
    case "$a" in --profile=*) profile="${a#--profile=}" ;; esac
    [ "$prev" = "--profile" ] && profile="$a"
    prev="$a"
done
# The power-loss profile loop-mounts an ext4 filesystem per node: it runs in a
# mount namespace made for this run, so every mount (and, through autoclear,
# every loop device) goes away with it. Needs root, mkfs.ext4 and unshare.
if [ "$profile" = "power-loss" ]; then
    for tool in unshare mkfs.ext4 mount; do
        command -v "$tool" >/dev/null || { echo "chaos.sh: the power-loss profile needs $tool (deploy/install-deps.sh --with-diskfaults)" >&2; exit 2; }
    done
    [ "$(id -u)" -eq 0 ] || { echo "chaos.sh: the power-loss profile mounts filesystems and needs root" >&2; exit 2; }
    exec unshare --mount --propagation private target/debug/chaos --routerd "$routerd" "$@"
fi
if [ "$profile" != "network" ]; then
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
