#!/usr/bin/env bash
# Fuzzing (issue #6): builds the cargo-fuzz targets in chaos/fuzz and runs each for a bounded
# time, starting from the seed corpus kept in the repo (chaos/fuzz/corpus/<target>/).
#
#   bash deploy/fuzz.sh                      # every target, 30 s each
#   bash deploy/fuzz.sh --seconds 300 --targets state_machine,config
#   bash deploy/fuzz.sh --save-corpus        # merge new coverage back into the repo corpus
#
# Targets: state_machine (command batches -> router-core State, invariants after every batch),
# log_entry (stored Raft values through router-raft's decoder, the batch applied and checked),
# proto_decode (provider requests -> prost -> edge validation -> command applied), config
# (routerd.toml parse + validation). See chaos/fuzz/README.md.
#
# Needs cargo-fuzz: installed with `cargo install cargo-fuzz --version 0.13.2 --locked` when
# missing (about a minute), and a C++ compiler for libFuzzer. Works on stable Rust: no sanitizer
# by default (the workspace forbids unsafe code; panics, overflows and invariant violations are
# what the targets look for), and RUSTC_BOOTSTRAP=1 for the rest of cargo-fuzz's flags.
# `--sanitizer address` adds AddressSanitizer (a separate, slower build).
#
# Each run fuzzes a temporary copy of the corpus, so the repo stays clean unless --save-corpus.
# Exit status: 0 when no target crashed; 1 otherwise, after printing each crash's artifact
# (kept in chaos/fuzz/artifacts/<target>/, gitignored) and the command that replays it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="chaos/fuzz"
ALL_TARGETS="state_machine log_entry proto_decode config"
CARGO_FUZZ_VERSION="0.13.2"

seconds=30
targets="$ALL_TARGETS"
save_corpus=0
write_seeds=0
sanitizer=none
keep=""

usage() {
    sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<EOF

Options:
  --seconds N        fuzz each target for N seconds (default 30)
  --targets a,b      only these targets (default: $ALL_TARGETS)
  --save-corpus      add the new inputs that add coverage to $FUZZ_DIR/corpus/<target>
                     (libFuzzer -set_cover_merge=1); review the size before committing
  --write-seeds      regenerate the generated seeds (log_entry, proto_decode) and exit
  --sanitizer S      none (default) or address
  --keep DIR         keep the working corpora and logs in DIR
EOF
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --targets) targets="${2//,/ }"; shift 2 ;;
        --save-corpus) save_corpus=1; shift ;;
        --write-seeds) write_seeds=1; shift ;;
        --sanitizer) sanitizer="$2"; shift 2 ;;
        --keep) keep="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ "$seconds" =~ ^[0-9]+$ && "$seconds" -gt 0 ]] || { echo "--seconds needs a positive integer" >&2; exit 2; }
case "$sanitizer" in none|address) ;; *) echo "--sanitizer: none or address" >&2; exit 2 ;; esac
for t in $targets; do
    [[ " $ALL_TARGETS " == *" $t "* ]] || { echo "unknown target: $t (have: $ALL_TARGETS)" >&2; exit 2; }
done

cd "$ROOT"
# cargo-fuzz passes a few unstable flags; RUSTC_BOOTSTRAP lets stable rustc accept them.
export RUSTC_BOOTSTRAP=1
# Its own target dir: the fuzz build uses other flags than the workspace build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/fuzz"
# For `cargo fuzz` on the command line, not for the replays printed below.
fuzz=(cargo fuzz)
build_flags=(--fuzz-dir "$FUZZ_DIR" --sanitizer "$sanitizer")

step() { printf '\n== %s\n' "$*"; }

if ! cargo fuzz --version >/dev/null 2>&1; then
    step "installing cargo-fuzz $CARGO_FUZZ_VERSION (cargo install --locked)"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi
command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null ||
    { echo "a C++ compiler is needed to build libFuzzer (apt-get install g++)" >&2; exit 1; }

# The fuzz crate has its own Cargo.lock (shared dependencies pinned to the root lock's versions).
# Refuse to fuzz against a lock that cargo would have to change.
if ! cargo metadata --locked --format-version 1 --manifest-path "$FUZZ_DIR/Cargo.toml" >/dev/null 2>&1; then
    echo "$FUZZ_DIR/Cargo.lock is out of date (a workspace crate's dependencies changed?)." >&2
    echo "Update it with: cargo update --manifest-path $FUZZ_DIR/Cargo.toml --workspace" >&2
    exit 1
fi

step "building fuzz targets ($FUZZ_DIR, sanitizer: $sanitizer, target dir: $CARGO_TARGET_DIR)"
t0=$SECONDS
"${fuzz[@]}" build "${build_flags[@]}"
echo "built in $((SECONDS - t0)) s"
bin_dir="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release"

if [[ $write_seeds == 1 ]]; then
    for t in $targets; do
        # config: hand-written TOML; state_machine: picked from a fuzzing run (see the README).
        [[ $t == config || $t == state_machine ]] && continue
        # Regenerated seeds replace the old ones; regression inputs (crashes once found) stay.
        mkdir -p "${FUZZ_DIR:?}/corpus/$t"
        find "$FUZZ_DIR/corpus/$t" -maxdepth 1 -type f ! -name 'regression-*' -delete
        ROUTER_FUZZ_WRITE_SEEDS="$FUZZ_DIR/corpus/$t" "$bin_dir/$t" 2>&1 | grep -v '^WARNING: Failed to find function'
    done
    exit 0
fi

if [[ -n "$keep" ]]; then
    work="$keep"
    mkdir -p "$work"
else
    work="$(mktemp -d -t router-fuzz.XXXXXX)"
    trap 'rm -rf "$work"' EXIT
fi

replay() { # target artifact
    echo "RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$CARGO_TARGET_DIR cargo fuzz run --fuzz-dir $FUZZ_DIR --sanitizer $sanitizer $1 $2"
}

failed=()
summary=()
for t in $targets; do
    step "fuzzing $t for ${seconds}s"
    corpus="$work/corpus-$t"
    rm -rf "$corpus"
    mkdir -p "$corpus" "$FUZZ_DIR/artifacts/$t"
    cp "$FUZZ_DIR/corpus/$t"/* "$corpus"/
    args=(-max_total_time="$seconds" -timeout=10 -print_final_stats=1)
    [[ -f "$FUZZ_DIR/dict/$t.dict" ]] && args+=(-dict="$FUZZ_DIR/dict/$t.dict")
    marker="$work/start-$t"
    touch "$marker"
    log="$work/$t.log"
    set +e
    "${fuzz[@]}" run "${build_flags[@]}" "$t" "$corpus" -- "${args[@]}" >"$log" 2>&1
    status=$?
    set -e
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    files=$(find "$corpus" -type f | wc -l)
    if [[ $status == 0 ]]; then
        grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true
        summary+=("$(printf '%-14s ok       %6ss %10s runs %7s exec/s  corpus %s -> %s files' \
            "$t" "$seconds" "${runs:-?}" "${rate:-?}" "$(find "$FUZZ_DIR/corpus/$t" -type f | wc -l)" "$files")")
    else
        failed+=("$t")
        summary+=("$(printf '%-14s FAILED   exit %s after %s runs' "$t" "$status" "${runs:-?}")")
        echo "!! $t failed (exit $status)${keep:+, log: $log}"
        grep -v '^WARNING: Failed to find function' "$log" | grep -m1 -A12 -E 'panicked at|ERROR: libFuzzer' || tail -30 "$log"
        found=0
        while IFS= read -r -d '' a; do
            found=1
            echo
            echo "   artifact: $a"
            echo "   replay:   $(replay "$t" "$a")"
            if [[ $t == state_machine ]]; then
                echo "   (with ROUTER_FUZZ_DEBUG=1 it prints every batch and outcome)"
            fi
        done < <(find "$FUZZ_DIR/artifacts/$t" -type f -newer "$marker" -print0)
        [[ $found == 1 ]] || echo "   (no artifact written; see the log above)"
    fi
    if [[ $save_corpus == 1 ]]; then
        # Adds a small set of the new inputs that cover what the repo corpus does not.
        "$bin_dir/$t" -set_cover_merge=1 "$FUZZ_DIR/corpus/$t" "$corpus" >"$work/merge-$t.log" 2>&1 ||
            { echo "merge failed:" >&2; tail -20 "$work/merge-$t.log" >&2; exit 1; }
        echo "corpus $FUZZ_DIR/corpus/$t: $(find "$FUZZ_DIR/corpus/$t" -type f | wc -l) files," \
            "$(du -sk "$FUZZ_DIR/corpus/$t" | cut -f1) KiB"
    fi
done

step "summary"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "crashes in: ${failed[*]} (artifacts in $FUZZ_DIR/artifacts/<target>/)"
    exit 1
fi
echo "no crashes"
