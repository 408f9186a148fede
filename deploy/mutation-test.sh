#!/usr/bin/env bash
# The checker's own test against real processes: routerd built with the
# `mutations` feature (crates/node/src/mutation.rs) breaks one guarantee per
# run, and the chaos scenario chosen for it must report a violation. Exit 0
# only if every mutation turned the checker red (docs/testing/chaos.md,
# "Mutations"). The power-loss run needs root, like that profile.
#   bash deploy/mutation-test.sh [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/chaos-mutations
[ "${1:-}" = "--out" ] && out="$2"

# Both builds share the target directory; the second puts the normal binary
# back at target/debug/routerd (cargo keeps both sets of artifacts).
cargo build --locked -p router-node --features mutations
cp target/debug/routerd target/debug/routerd-mutations
cargo build --locked -p router-node
cargo build --locked -p router-chaos

failed=()
check() { # mutation profile scenario
    echo "== mutation $1: chaos --profile $2 --only $3 must report a violation"
    if ROUTERD_MUTATION="$1" ROUTERD_BIN=target/debug/routerd-mutations \
        bash deploy/chaos.sh --profile "$2" --only "$3" --out "$out/$1" --expect-violations; then
        echo "== mutation $1: caught"
    else
        echo "== mutation $1: NOT caught (or the run failed)" >&2
        failed+=("$1")
    fi
}
check ack-before-quorum quick kill9-leader-3n
check replay-prekey quick kill9-follower-3n
check skip-fsync power-loss power-loss-all-3n
if [ "${#failed[@]}" -ne 0 ]; then
    echo "mutation-test: the checker stayed green for: ${failed[*]}" >&2
    exit 1
fi
echo "mutation-test: every mutation turned the checker red"
