#!/usr/bin/env bash
# Builds the routerd runtime image WITHOUT pulling anything (the build machine
# reaches no container registry, so deploy/Dockerfile's base images are out of
# reach). Same contract as deploy/Dockerfile's runtime stage: binary at
# /usr/local/bin/routerd, user 65532:65532, VOLUME /var/lib/routerd,
# EXPOSE 7411 7412 7413, same OCI labels.
#
#   bash deploy/build-image.sh                      # target/release/routerd (built if missing)
#   bash deploy/build-image.sh path/to/routerd      # any routerd binary built for this machine
#   IMAGE=interop-router/routerd:test bash deploy/build-image.sh
#
# How: a root filesystem is assembled in a temp dir from the binary, exactly
# the shared libraries `ldd` reports (at the paths it reports, plus the dynamic
# loader), /etc/passwd and /etc/group with user nonroot (65532), an empty
# /var/lib/routerd owned by 65532 and /tmp; then `docker build` of a generated
# Dockerfile that starts `FROM scratch`.
#
# Environment:
#   IMAGE    image tag                        (default interop-router/routerd:dev)
#   IIDFILE  file that receives the image id  (default target/routerd-image.id)
#   VERSION  org.opencontainers.image.version (default: the workspace version)
set -euo pipefail

cd "$(dirname "$0")/.."
repo_root="$(pwd)"

IMAGE="${IMAGE:-interop-router/routerd:dev}"
IIDFILE="${IIDFILE:-target/routerd-image.id}"
default_bin="target/release/routerd"
bin="${1:-$default_bin}"

say() { printf 'build-image: %s\n' "$*" >&2; }
die() { printf 'build-image: error: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker is not installed"
command -v ldd >/dev/null 2>&1 || die "ldd is not installed (Debian package libc-bin)"
docker info >/dev/null 2>&1 || die "cannot reach the Docker daemon (is it running, may this user use it?)"

if [ ! -e "$bin" ]; then
    if [ "$bin" = "$default_bin" ]; then
        say "$bin is missing; building it (cargo build --release --locked -p router-node)"
        bash deploy/install-deps.sh >/dev/null
        cargo build --release --locked -p router-node
    else
        die "no routerd binary at $bin"
    fi
fi
[ -x "$bin" ] || die "$bin is not executable"

version="${VERSION:-$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)}"
[ -n "$version" ] || version="0.0.0"
revision="$(git -C "$repo_root" rev-parse HEAD 2>/dev/null || echo unknown)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"

work="$(mktemp -d "${TMPDIR:-/tmp}/routerd-image.XXXXXX")"
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
# rootfs/ is copied root-owned; data/ and home/ become /var/lib/routerd and
# /home/nonroot, owned by 65532 (COPY --chown applies to what it creates, so
# their parents must already exist in rootfs/ to stay root-owned).
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc" "$rootfs/tmp" "$rootfs/var/lib" "$rootfs/home" \
         "$work/data" "$work/home"

# The binary: copied first, so a concurrent rebuild cannot swap it between ldd and COPY.
install -m 0755 "$bin" "$rootfs/usr/local/bin/routerd"
say "binary: $bin ($(du -h "$bin" | cut -f1))"

# Shared libraries. ldd prints one of:
#   libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)   a library and where it was found
#   /lib64/ld-linux-x86-64.so.2 (0x...)                     the dynamic loader
#   linux-vdso.so.1 (0x...)                                 provided by the kernel: nothing to copy
#   libfoo.so => not found                                  fatal
ldd_out="$(ldd "$rootfs/usr/local/bin/routerd" 2>&1)" || {
    case "$ldd_out" in
        *"not a dynamic executable"*|*"statically linked"*) ldd_out="" ;;
        *) die "ldd failed: $ldd_out" ;;
    esac
}
if printf '%s\n' "$ldd_out" | grep -q 'not found'; then
    die "routerd needs libraries this machine lacks:
$(printf '%s\n' "$ldd_out" | grep 'not found')"
fi
libs="$(printf '%s\n' "$ldd_out" | awk '
    $2 == "=>" && $3 ~ /^\// { print $3; next }
    $1 ~ /^\// { print $1 }')"
n_libs=0
for lib in $libs; do
    # Copy the file the path resolves to, under the path ldd reported (the loader
    # and the binary's RUNPATH/default search look there, not at the symlink target).
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
    say "library: $lib"
    n_libs=$((n_libs + 1))
done
[ -n "$ldd_out" ] && [ "$n_libs" -eq 0 ] && die "ldd listed no libraries to copy:
$ldd_out"

# Users: root and nonroot (65532), the uid distroless uses; no login shells exist.
cat >"$rootfs/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
PASSWD
cat >"$rootfs/etc/group" <<'GROUP'
root:x:0:
nonroot:x:65532:
GROUP
# Host name lookups (peer DNS names such as router-2 or <pod>.<svc>): glibc >= 2.34
# has the files and dns NSS modules built in, so no extra library is needed.
printf 'hosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
chmod 0644 "$rootfs/etc/passwd" "$rootfs/etc/group" "$rootfs/etc/nsswitch.conf"
chmod 1777 "$rootfs/tmp"

cat >"$work/Dockerfile" <<DOCKERFILE
# Generated by deploy/build-image.sh; mirrors the runtime stage of deploy/Dockerfile.
FROM scratch
COPY rootfs/ /
# COPY makes everything root-owned unless told otherwise: the data directory
# and the home directory belong to the runtime user.
COPY --chown=65532:65532 data/ /var/lib/routerd/
COPY --chown=65532:65532 home/ /home/nonroot/
LABEL org.opencontainers.image.title="routerd" \\
      org.opencontainers.image.description="Interop Router node: Raft-replicated switchboard for end-to-end-encrypted messaging between providers" \\
      org.opencontainers.image.version="${version}" \\
      org.opencontainers.image.revision="${revision}" \\
      org.opencontainers.image.created="${created}" \\
      org.opencontainers.image.licenses="Apache-2.0" \\
      org.opencontainers.image.source="https://example.invalid/interop-router" \\
      org.opencontainers.image.base.name="scratch"
USER 65532:65532
WORKDIR /var/lib/routerd
VOLUME ["/var/lib/routerd"]
EXPOSE 7411 7412 7413
ENTRYPOINT ["/usr/local/bin/routerd"]
CMD ["--config", "/etc/routerd/routerd.toml"]
DOCKERFILE

mkdir -p "$(dirname "$IIDFILE")"
say "docker build -t $IMAGE (FROM scratch, no network)"
docker build --network=none --iidfile "$IIDFILE" -t "$IMAGE" "$work" >&2 \
    || die "docker build failed"

image_id="$(cat "$IIDFILE")"
say "built $IMAGE"
say "image id $image_id (written to $IIDFILE)"
printf '%s\n' "$image_id"
