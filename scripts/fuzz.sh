#!/usr/bin/env bash
# Fuzz the host's parsers for a bounded time: builds every cargo-fuzz target of host/fuzz/
# (see docs/src/guide/security.md, "Fuzzing"), runs each for SECONDS_PER_TARGET seconds starting from its
# seed corpus (host/fuzz/corpus/<target>/), prints the executions per target, writes
# target/fuzz-summary.json and exits non-zero if any target crashed (printing the path of the
# input that crashed it, kept under target/fuzz-artifacts/<target>/).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET [TARGET...]]     (default: 30 seconds, every target)
#
# Only a stable toolchain is needed: cargo-fuzz's nightly flags are accepted with
# RUSTC_BOOTSTRAP=1. cargo-fuzz is installed from crates.io into ~/.cache/iniesta/cargo-fuzz
# when missing. Environment:
#   INIESTA_FUZZ_SANITIZER   none (default: a crash is a panic, ~2x the executions) or address
#   INIESTA_FUZZ_TARGET_DIR  the build directory (default: ~/.cache/iniesta/fuzz-target-<sanitizer>)
#   INIESTA_FUZZ_SUMMARY     where to write the JSON summary (default: target/fuzz-summary.json)
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

seconds="${1:-30}"
shift || true

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUSTC_BOOTSTRAP=1

CARGO_FUZZ_VERSION="0.13.2"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/iniesta"
fuzz_root="$cache/cargo-fuzz"
cargo_fuzz="$fuzz_root/bin/cargo-fuzz"
if ! "$cargo_fuzz" --version 2>/dev/null | grep -q " $CARGO_FUZZ_VERSION\$"; then
    echo "==> installing cargo-fuzz $CARGO_FUZZ_VERSION into $fuzz_root"
    mkdir -p "$fuzz_root"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$fuzz_root"
fi

sanitizer="${INIESTA_FUZZ_SANITIZER:-none}"
# The instrumented build of the host's whole dependency tree (AWS SDK included) takes about
# 16 CPU-minutes cold, so it is kept between runs in the cache directory; without the cache it
# is built from scratch.
target_dir="${INIESTA_FUZZ_TARGET_DIR:-$cache/fuzz-target-$sanitizer}"
mkdir -p "$target_dir"
target_dir="$(cd "$target_dir" && pwd)"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cd host && "$cargo_fuzz" list)
fi

echo "==> cargo fmt --check (host/fuzz, a workspace of its own)"
cargo fmt --manifest-path host/fuzz/Cargo.toml -- --check

# host/fuzz has a lock file of its own: a dependency bumped in the main workspace (plugin-api,
# say) leaves it stale, and cargo-fuzz would quietly re-resolve it on every run.
if ! cargo metadata --locked --offline --format-version 1 --manifest-path host/fuzz/Cargo.toml >/dev/null 2>&1 \
    && ! cargo metadata --locked --format-version 1 --manifest-path host/fuzz/Cargo.toml >/dev/null; then
    echo "==> host/fuzz/Cargo.lock is out of date: run \`cargo metadata --manifest-path host/fuzz/Cargo.toml\` and commit it" >&2
    exit 1
fi

echo "==> building the fuzz targets (sanitizer: $sanitizer, into $target_dir)"
build_start=$(date +%s)
(cd host && "$cargo_fuzz" build -O --sanitizer "$sanitizer" --target-dir "$target_dir")
echo "==> fuzz targets built in $(($(date +%s) - build_start)) s"

bin_dir="$target_dir/x86_64-unknown-linux-gnu/release"
summary="${INIESTA_FUZZ_SUMMARY:-$root/target/fuzz-summary.json}"
rows=()
crashed=0
for t in "${targets[@]}"; do
    work="$root/target/fuzz-corpus/$t"        # new inputs go here; the seeds stay as they are
    artifacts="$root/target/fuzz-artifacts/$t"
    log="$root/target/fuzz-logs/$t.log"
    mkdir -p "$work" "$artifacts" "$(dirname "$log")"
    echo "==> fuzzing $t for ${seconds} s"
    start=$(date +%s.%N)
    set +e
    seeds=()
    [ -d "host/fuzz/corpus/$t" ] && seeds=("host/fuzz/corpus/$t")
    "$bin_dir/$t" "$work" "${seeds[@]}" \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 -max_len=65536 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1
    status=$?
    set -e
    elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')
    execs=$(awk '/^stat::number_of_executed_units:/ { n = $2 } END { print n + 0 }' "$log")
    if [ "$execs" = 0 ]; then
        # No final stats (killed): the last status line, "#N<tab>DONE" or "#N<tab>pulse".
        execs=$(awk '/^#[0-9]+\t/ { n = substr($1, 2) } END { print n + 0 }' "$log")
    fi
    crashes=0
    artifact=""
    if [ "$status" -ne 0 ]; then
        crashed=1
        artifact=$(sed -n 's/.*Test unit written to \([^ ]*\).*/\1/p' "$log" | tail -1)
        if [ -n "$artifact" ]; then
            crashes=1
            echo "!! $t CRASHED after $execs executions (exit $status); log: $log" >&2
        else
            echo "!! $t FAILED to run (exit $status, no crashing input); log: $log" >&2
            tail -3 "$log" >&2
        fi
        grep -m 20 -A1 -E "panicked at|ERROR: libFuzzer" "$log" >&2 || true
        echo "!! crashing input: ${artifact:-(none written, see the log)}" >&2
        echo "!! reproduce: $bin_dir/$t ${artifact:-<input>}" >&2
    fi
    printf '    %-16s %10s executions in %6s s, %s crash(es)\n' "$t" "$execs" "$elapsed" "$crashes"
    rows+=("$(printf '{"target": "%s", "execs": %s, "seconds": %s, "crashes": %s, "artifact": %s}' \
        "$t" "$execs" "$elapsed" "$crashes" "$([ -n "$artifact" ] && printf '"%s"' "$artifact" || echo null)")")
done

{
    echo "["
    for i in "${!rows[@]}"; do
        sep=","
        [ "$i" -eq $((${#rows[@]} - 1)) ] && sep=""
        echo "  ${rows[$i]}$sep"
    done
    echo "]"
} >"$summary"
echo "==> summary: $summary"
if [ "$crashed" -ne 0 ]; then
    echo "==> a fuzz target crashed: every crash is a bug (see docs/src/guide/security.md, Fuzzing)" >&2
    exit 1
fi
