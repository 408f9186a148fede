#!/usr/bin/env bash
# Rolling-upgrade test: versions N and N+1 of routerd running together.
#   bash deploy/upgrade-test.sh [--from REV] [--skip-if-missing] [chaos args...]
# Builds routerd at REV (default: the commit in deploy/upgrade-from, the last
# release) from a temporary git worktree, sharing this tree's target directory
# so only the workspace crates compile again, and this tree's routerd. Then the
# chaos runner starts 3 nodes on the old binary under a recorded workload
# (sends, receives with acks, prekey claims), upgrades the followers, moves
# leadership to an upgraded node while an old one still follows, upgrades the
# rest, and checks the history: nothing acked lost, no duplicate, order kept,
# no prekey handed out twice. Exit 0 only when no invariant was violated.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

from="$(grep -v '^#' deploy/upgrade-from | head -n1 | tr -d '[:space:]')"
skip_if_missing=0
while [ $# -gt 0 ]; do
    case "$1" in
        --from) from="$2"; shift 2 ;;
        # CI: a clone without the base commit (shallow) says so loudly and skips.
        --skip-if-missing) skip_if_missing=1; shift ;;
        *) break ;;
    esac
done
if ! git cat-file -e "${from}^{commit}" 2>/dev/null; then
    echo "upgrade-test: commit $from is not in this clone's history." >&2
    echo "  A shallow clone lacks it: run 'git fetch --unshallow' (or clone without --depth) and retry." >&2
    if [ "$skip_if_missing" = 1 ]; then
        echo "upgrade-test: SKIPPED (no N to upgrade from in this clone)" >&2
        exit 0
    fi
    exit 2
fi
short="$(git rev-parse --short "$from")"
target="${CARGO_TARGET_DIR:-$root/target}"
old_bin="$target/upgrade/routerd-$short"
new_bin="$target/upgrade/routerd-current"
mkdir -p "$target/upgrade"

if [ ! -x "$old_bin" ]; then
    tree="$target/upgrade/src-$short"
    rm -rf "$tree"
    git worktree prune
    git worktree add --detach "$tree" "$from" >/dev/null
    echo "upgrade-test: building routerd $short (version N) in $tree"
    (cd "$tree" && ROUTERD_BUILD_COMMIT="$short" CARGO_TARGET_DIR="$target" \
        cargo build --locked -p router-node --bin routerd)
    # The shared target directory's routerd is now the old one: keep a copy
    # under its own name before this tree's build puts the current one back.
    cp "$target/debug/routerd" "$old_bin.tmp" && mv "$old_bin.tmp" "$old_bin"
    git worktree remove --force "$tree"
fi

echo "upgrade-test: building this tree's routerd (version N+1)"
head="$(git rev-parse --short HEAD)"
# The old build may just have replaced target/debug/routerd; cargo would
# consider this tree's routerd fresh and not copy it back, so force a relink.
touch crates/node/src/lib.rs
ROUTERD_BUILD_COMMIT="$head" cargo build --locked -p router-node --bin routerd
cp "$target/debug/routerd" "$new_bin"
cargo build --locked -p router-chaos

echo "upgrade-test: $short -> $head"
exec "$target/debug/chaos" --routerd "$new_bin" --upgrade-from "$old_bin" \
    --only rolling-upgrade --out "${UPGRADE_OUT:-$target/upgrade/chaos}" "$@"
