#!/usr/bin/env bash
# Writes the certificates and node configs that deploy/compose.yaml mounts,
# into deploy/.compose/ (git-ignored: it holds private keys of a dev CA).
#
#   bash deploy/build-image.sh          # the image, once
#   bash deploy/compose-init.sh         # this script
#   docker-compose -f deploy/compose.yaml up -d
#
# Steps:
#   1. `routerd init-dev --dir deploy/.compose --nodes 3` (run from the image, so
#      nothing else is needed on the host; ROUTERD=path/to/routerd runs a local
#      binary instead) writes a dev CA, node/provider/operator certificates and
#      routerd-1..3.toml. Those configs describe a cluster on 127.0.0.1.
#   2. Each routerd-N.toml is rewritten for the containers:
#        data_dir                 /var/lib/routerd (the node's named volume)
#        [listen]                 0.0.0.0:7411 / 0.0.0.0:7412 / 0.0.0.0:7413
#        [advertise]              router-N:7411 / router-N:7412
#        [tls] ca/cert/key        /etc/routerd/certs/{ca.pem,node-N.pem,node-N.key}
#        [tls] peer_server_name   "localhost": the dev node certificates cover only
#                                 localhost and 127.0.0.1; peers dial router-N but
#                                 verify the certificate against this name.
#        [cluster] initial_members  peer router-N:7412, provider router-N:7411
#      node 1 keeps bootstrap = true; the providers stay onboarded at bootstrap.
#   3. The node certificates, their keys and the CA are made readable by the
#      container user (uid 65532): dev keys only. Provider and operator keys
#      stay private to you (mode 0600): host-side clients use them.
#
# Options:
#   --force       replace an existing deploy/.compose (a new CA: re-copy client certs)
#   --providers   comma-separated providers to certify and onboard (default alpha,beta)
#
# Environment: IMAGE (default interop-router/routerd:dev), ROUTERD (a local routerd binary).
set -euo pipefail

cd "$(dirname "$0")"
deploy_dir="$(pwd)"
out="$deploy_dir/.compose"
IMAGE="${IMAGE:-interop-router/routerd:dev}"
nodes=3
providers="alpha,beta"
force=0

say() { printf 'compose-init: %s\n' "$*" >&2; }
die() { printf 'compose-init: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --force) force=1 ;;
        --providers) [ $# -ge 2 ] || die "--providers needs a value"; providers="$2"; shift ;;
        --providers=*) providers="${1#--providers=}" ;;
        -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

command -v python3 >/dev/null 2>&1 || die "python3 is required (it rewrites the TOML files)"
python3 -c 'import tomllib' 2>/dev/null || die "python3 >= 3.11 is required (tomllib)"

if [ -e "$out" ]; then
    [ "$force" -eq 1 ] || die "$out exists; pass --force to replace it (new CA and keys)"
    say "removing $out"
    rm -rf "$out"
fi
mkdir -p "$out"

if [ -n "${ROUTERD:-}" ]; then
    [ -x "$ROUTERD" ] || die "ROUTERD=$ROUTERD is not an executable"
    say "running $ROUTERD init-dev"
    "$ROUTERD" init-dev --dir "$out" --nodes "$nodes" --providers "$providers"
else
    command -v docker >/dev/null 2>&1 || die "docker is not installed (or set ROUTERD=path/to/routerd)"
    docker image inspect "$IMAGE" >/dev/null 2>&1 \
        || die "image $IMAGE not found: run 'bash deploy/build-image.sh' first (or set ROUTERD=path/to/routerd)"
    say "running routerd init-dev in $IMAGE"
    # As the invoking user, so the files belong to you and not to uid 65532.
    docker run --rm --network none --user "$(id -u):$(id -g)" \
        -v "$out:/out" "$IMAGE" init-dev --dir /out --nodes "$nodes" --providers "$providers"
fi

# init-dev also creates per-node data directories for a local run; the
# containers use named volumes instead.
for n in $(seq 1 "$nodes"); do
    rm -rf "${out:?}/node-$n"
done

python3 - "$out" "$nodes" <<'PY'
"""Rewrites deploy/.compose/routerd-N.toml for the compose network."""
import json
import sys
import tomllib
from pathlib import Path

out, nodes = Path(sys.argv[1]), int(sys.argv[2])


def s(value):
    # TOML basic strings share JSON's escapes for everything these values can hold.
    return json.dumps(str(value))


for n in range(1, nodes + 1):
    path = out / f"routerd-{n}.toml"
    cfg = tomllib.loads(path.read_text())
    if cfg.get("node_id") != n:
        sys.exit(f"compose-init: {path}: expected node_id = {n}, found {cfg.get('node_id')!r}")
    cluster = cfg.get("cluster", {})
    known = {"node_id", "data_dir", "listen", "advertise", "tls", "cluster", "raft", "limits", "batching"}
    unknown = set(cfg) - known
    if unknown:
        sys.exit(f"compose-init: {path}: init-dev wrote keys this script does not know: {sorted(unknown)}")
    members = []
    for m in cluster.get("initial_members", []):
        mid = int(m["id"])
        peer, provider = s(f"router-{mid}:7412"), s(f"router-{mid}:7411")
        members.append(f"  {{ id = {mid}, peer = {peer}, provider = {provider} }},")
    if len(members) != nodes:
        sys.exit(f"compose-init: {path}: expected {nodes} initial_members, found {len(members)}")
    lines = [
        "# Generated by deploy/compose-init.sh from `routerd init-dev`, for deploy/compose.yaml.",
        f"node_id = {n}",
        'data_dir = "/var/lib/routerd"',
        "",
        "[listen]",
        'provider = "0.0.0.0:7411"',
        'peer = "0.0.0.0:7412"',
        'admin = "0.0.0.0:7413"',
        "",
        "[advertise]",
        f"provider = {s(f'router-{n}:7411')}",
        f"peer = {s(f'router-{n}:7412')}",
        "",
        "[tls]",
        'ca = "/etc/routerd/certs/ca.pem"',
        f"cert = {s(f'/etc/routerd/certs/node-{n}.pem')}",
        f"key = {s(f'/etc/routerd/certs/node-{n}.key')}",
        "# The dev node certificates cover only localhost and 127.0.0.1: peers are",
        "# dialed as router-N but their certificates are verified against this name.",
        'peer_server_name = "localhost"',
        "",
        "[cluster]",
        f"bootstrap = {'true' if cluster.get('bootstrap', False) else 'false'}",
        "initial_providers = [" + ", ".join(s(p) for p in cluster.get("initial_providers", [])) + "]",
        "initial_members = [",
        *members,
        "]",
        "",
    ]
    # Sections init-dev may write in the future are carried over unchanged.
    for section in ("raft", "limits", "batching"):
        table = cfg.get(section)
        if table:
            lines.append(f"[{section}]")
            for key, value in table.items():
                lines.append(f"{key} = {json.dumps(value)}")
            lines.append("")
    text = "\n".join(lines)
    tomllib.loads(text)  # the result must parse
    path.write_text(text)
    print(f"compose-init: rewrote {path.name}", file=sys.stderr)
PY

chmod 0755 "$out" "$out/certs"
chmod 0644 "$out"/routerd-*.toml "$out/certs/ca.pem" "$out"/certs/node-*.pem
# Readable by uid 65532 inside the containers. Dev CA only: never do this with real keys.
chmod 0644 "$out"/certs/node-*.key

say "done: $out"
say "  configs   routerd-1..$nodes.toml (node 1 bootstraps the cluster)"
say "  CA        $out/certs/ca.pem"
for p in ${providers//,/ }; do
    say "  provider  $p: $out/certs/provider-$p.pem / .key"
done
say "  operator  $out/certs/operator-admin.pem / .key"
say "next: docker-compose -f deploy/compose.yaml up -d"
