#!/usr/bin/env bash
# The Docker cluster test: three routerd containers on a private network, the
# leader killed (SIGKILL) mid-stream and started again; every acked message
# must be delivered once and the killed node must rejoin as a caught-up voter.
#
#   bash deploy/docker-test.sh                       # target/debug/routerd (built if missing)
#   bash deploy/docker-test.sh path/to/routerd       # any routerd built for this machine
#   bash deploy/docker-test.sh target/debug/routerd --messages 1000 --keep-dir
#                                                    # arguments after the binary go to the test
#
# Steps: the image is built from the binary by deploy/build-image.sh (FROM
# scratch, nothing pulled) under a tag of its own; router-chaos's
# docker-cluster-test is built and run (see chaos/src/bin/docker_cluster_test.rs).
# Without an answering Docker Engine the test prints "SKIPPED: ..." and exits 0.
#
# Cleanup: everything the run creates is named rchaos-<pid>-... and labelled
# router-chaos.run=<prefix>; the test removes it on every exit path, and this
# script's trap removes whatever carries the label too, and the test's work dir
# (e.g. after a SIGKILL of the test). The image tag is removed at the end unless
# KEEP_IMAGE=1.
#
# Environment:
#   IMAGE       tag to build and test (default interop-router/routerd:docker-test)
#   KEEP_IMAGE  1 keeps the image after the run
set -euo pipefail

cd "$(dirname "$0")/.."

say() { printf 'docker-test: %s\n' "$*" >&2; }
die() { printf 'docker-test: error: %s\n' "$*" >&2; exit 2; }

bin="target/debug/routerd"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
    bin="$1"
    shift
fi
IMAGE="${IMAGE:-interop-router/routerd:docker-test}"
KEEP_IMAGE="${KEEP_IMAGE:-0}"
prefix="rchaos-$$-$(date +%s)"
built_image=0

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if command -v docker >/dev/null 2>&1 && timeout 20 docker version >/dev/null 2>&1; then
        local ids
        ids="$(timeout 60 docker ps -aq --filter "label=router-chaos.run=$prefix" || true)"
        [ -z "$ids" ] || { say "removing leftover containers"; timeout 60 docker rm -f -v $ids >/dev/null || true; }
        ids="$(timeout 60 docker network ls -q --filter "label=router-chaos.run=$prefix" || true)"
        [ -z "$ids" ] || { say "removing leftover networks"; timeout 60 docker network rm $ids >/dev/null || true; }
        ids="$(timeout 60 docker volume ls -q --filter "label=router-chaos.run=$prefix" || true)"
        [ -z "$ids" ] || { say "removing leftover volumes"; timeout 60 docker volume rm -f $ids >/dev/null || true; }
        if [ "$built_image" -eq 1 ] && [ "$KEEP_IMAGE" != 1 ]; then
            timeout 60 docker image rm "$IMAGE" >/dev/null 2>&1 || true
        fi
    fi
    # The test's default work dir (dev CA keys), left behind only if the test itself was killed.
    rm -rf "${TMPDIR:-/tmp}/$prefix"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

docker_up=0
if command -v docker >/dev/null 2>&1 && timeout 20 docker version >/dev/null 2>&1; then
    docker_up=1
fi

if [ "$docker_up" -eq 1 ]; then
    if [ ! -e "$bin" ]; then
        [ "$bin" = "target/debug/routerd" ] || die "no routerd binary at $bin"
        say "$bin is missing; building it (cargo build --locked -p router-node)"
        cargo build --locked -p router-node
    fi
    say "building image $IMAGE from $bin"
    built_image=1
    IMAGE="$IMAGE" IIDFILE="target/routerd-docker-test.id" bash deploy/build-image.sh "$bin" >/dev/null
else
    say "no Docker Engine answers; the test binary reports the skip"
fi

say "building router-chaos (cargo build --locked -p router-chaos)"
cargo build --locked -p router-chaos

set +e
target/debug/docker-cluster-test --image "$IMAGE" --routerd "$bin" --prefix "$prefix" "$@"
rc=$?
set -e
exit "$rc"
