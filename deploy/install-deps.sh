#!/usr/bin/env bash
# Installs the system packages the build needs on a fresh Debian machine.
#   protobuf-compiler: protoc, used by crates/proto/build.rs (tonic-prost-build).
# Idempotent; does nothing when everything is already there.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v curl >/dev/null 2>&1 || need+=(curl)
for flag in "$@"; do
    case "$flag" in
        # promtool and a Prometheus server for the metrics checks
        # (tests/cluster/metrics.rs, deploy/check-prometheus.sh).
        --with-prometheus) command -v promtool >/dev/null 2>&1 || need+=(prometheus) ;;
        # ip, iptables, tc for the chaos network profile (deploy/chaos.sh --profile network).
        --with-netfaults)
            command -v ip >/dev/null 2>&1 || need+=(iproute2)
            command -v tc >/dev/null 2>&1 || need+=(iproute2)
            command -v iptables >/dev/null 2>&1 || need+=(iptables)
            ;;
        # mkfs.ext4, mount, unshare for the chaos power-loss profile
        # (deploy/chaos.sh --profile power-loss).
        --with-diskfaults)
            command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
            command -v mount >/dev/null 2>&1 || need+=(mount)
            command -v unshare >/dev/null 2>&1 || need+=(util-linux)
            ;;
        # libfaketime for the chaos clock-jump scenario (deploy/chaos.sh, clock-jump-leader).
        --with-clockfaults)
            compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null || need+=(faketime)
            ;;
        *) echo "install-deps: unknown flag $flag" >&2; exit 2 ;;
    esac
done

if [ "${#need[@]}" -gt 0 ]; then
    echo "install-deps: installing ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
protoc --version
