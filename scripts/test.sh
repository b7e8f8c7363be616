#!/usr/bin/env bash
# The whole test suite, from a fresh machine: builds the workspace (host + every plugin), checks
# formatting and lints, then runs every test against real plugins and real local services that
# this script installs and starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# moto (a real SNS/SQS server from PyPI) for the AWS tests, in a venv of its own.
MOTO_VERSION="5.2.5"
MOTO_VENV="target/moto-venv"
# (pip's answer is read whole first: `pip show | grep -q` under pipefail failed whenever grep
# closed the pipe before pip had written everything, and moto was reinstalled every run.)
moto_installed="$("$MOTO_VENV/bin/pip" show moto 2>/dev/null || true)"
if [ ! -x "$MOTO_VENV/bin/moto_server" ] || ! grep -q "^Version: $MOTO_VERSION\$" <<<"$moto_installed"; then
    echo "==> installing moto[server]==$MOTO_VERSION into $MOTO_VENV"
    mkdir -p target
    # --clear: a venv moved from another path (its scripts name the old interpreter path) or
    # left half-built is rebuilt from scratch rather than half-reused.
    if ! python3 -m venv --clear "$MOTO_VENV"; then
        apt-get update -qq && apt-get install -y -qq python3-venv
        python3 -m venv --clear "$MOTO_VENV"
    fi
    "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
# The Amazon SQS and SNS Extended Client Libraries for Python (the S3 claim check's other
# side, host/tests/it/claim_check.rs), in the same venv: they want the recent boto3 moto has.
EXTENDED_CLIENTS="amazon-sqs-extended-client==1.0.1 amazon-sns-extended-client==1.0.1"
extended_installed="$("$MOTO_VENV/bin/pip" freeze 2>/dev/null || true)"
if ! grep -q "^amazon-sqs-extended-client==1.0.1\$" <<<"$extended_installed" \
    || ! grep -q "^amazon-sns-extended-client==1.0.1\$" <<<"$extended_installed"; then
    echo "==> installing $EXTENDED_CLIENTS into $MOTO_VENV"
    # shellcheck disable=SC2086
    "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check $EXTENDED_CLIENTS
fi
export INIESTA_MOTO_SERVER="$PWD/$MOTO_VENV/bin/moto_server"

# --- the real Python libraries for the conformance suite (host/tests/it/conformance.rs) ---------
# insanic-iniesta, microcosm-pubsub, pop-evbus and acct, pinned in
# host/tests/conformance/requirements.txt, in a venv cached under ~/.cache/iniesta (rebuilt
# only when the pins change). Exports INIESTA_PEERS_PYTHON.
source scripts/python-peers.sh >/dev/null
echo "==> python peers: $INIESTA_PEERS_PYTHON ($("$INIESTA_PEERS_PYTHON" --version))"
# --- end python peers -------------------------------------------------------------------------

# --- redis-server for the idempotency lock tests (host/tests/it/locks.rs) -----------------------
# The tests start their own redis-server processes on free loopback ports (one, or three for
# the Redlock quorum) and never touch a Redis already running on 6379.
if ! command -v redis-server >/dev/null 2>&1; then
    echo "==> installing redis-server (apt-get)"
    apt-get update -qq && apt-get install -y -qq redis-server
fi
export INIESTA_REDIS_SERVER="${INIESTA_REDIS_SERVER:-$(command -v redis-server)}"
echo "==> redis-server: $INIESTA_REDIS_SERVER ($("$INIESTA_REDIS_SERVER" --version | cut -d' ' -f1-3))"
# --- end redis-server -----------------------------------------------------------------------

# --- chromium + chromedriver for the operator console's browser test (host/tests/it/console.rs) --
# Debian's packages; the test drives headless Chromium over WebDriver (fantoccini).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    echo "==> installing chromium and chromium-driver (apt-get)"
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver
fi
export INIESTA_CHROMIUM="${INIESTA_CHROMIUM:-$(command -v chromium)}"
export INIESTA_CHROMEDRIVER="${INIESTA_CHROMEDRIVER:-$(command -v chromedriver)}"
echo "==> chromium: $INIESTA_CHROMIUM ($("$INIESTA_CHROMIUM" --version 2>/dev/null | head -1))"
# --- end chromium ----------------------------------------------------------------------------
# --- nats-server for the egress/ingress tests (host/tests/it/egress.rs) --------------------------
# The tests start their own nats-server on free loopback ports (stopping and restarting it to
# show a broker outage) and never touch one already running on 4222. They need the binary
# (without one they fail, never skip): a failed install stops the suite here.
NATS_BIN="$(command -v nats-server || true)"
[ -z "$NATS_BIN" ] && [ -x /usr/sbin/nats-server ] && NATS_BIN=/usr/sbin/nats-server
if [ -z "$NATS_BIN" ]; then
    echo "==> installing nats-server (apt-get)"
    apt-get update -qq && apt-get install -y -qq nats-server
    NATS_BIN="$(command -v nats-server || true)"
    [ -z "$NATS_BIN" ] && [ -x /usr/sbin/nats-server ] && NATS_BIN=/usr/sbin/nats-server
    if [ -z "$NATS_BIN" ]; then
        echo "==> nats-server was installed but is not on PATH nor in /usr/sbin" >&2
        exit 1
    fi
fi
export INIESTA_NATS_SERVER="${INIESTA_NATS_SERVER:-$NATS_BIN}"
echo "==> nats-server: $INIESTA_NATS_SERVER ($("$INIESTA_NATS_SERVER" --version))"
# --- end nats-server ------------------------------------------------------------------------

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo build --workspace (host and plugins; tests load the plugins from target/debug)"
cargo build --workspace --all-targets

echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# --- cargo-deny: licenses, bans, sources, advisories (deny.toml) -------------------------------
# cargo-deny from crates.io, pinned, installed once under ~/.cache/iniesta (a few minutes cold).
# Advisories need the RustSec database, which lives on GitHub (not reachable from these
# machines): a local copy of github.com/rustsec/advisory-db at $INIESTA_ADVISORY_DB (default
# ~/.cache/iniesta/advisory-db) is checked; without one the script says so and skips only that.
DENY_VERSION="0.20.2"
DENY_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/iniesta/cargo-deny-$DENY_VERSION"
if [ ! -x "$DENY_ROOT/bin/cargo-deny" ]; then
    echo "==> installing cargo-deny $DENY_VERSION into $DENY_ROOT"
    if ! cargo install cargo-deny --locked --version "$DENY_VERSION" --root "$DENY_ROOT"; then
        DENY_ROOT="$PWD/target/cargo-deny-$DENY_VERSION"
        cargo install cargo-deny --locked --version "$DENY_VERSION" --root "$DENY_ROOT"
    fi
fi
# cargo-deny reads every crate of the lock file, those of other platforms too (windows-sys, …),
# which the builds above never downloaded: fetch them all first, or --offline fails on a fresh
# machine ("failed to download `windows-sys`").
echo "==> cargo fetch --locked (every platform's crates, for cargo-deny)"
cargo fetch --locked --quiet
echo "==> cargo deny check licenses bans sources"
"$DENY_ROOT/bin/cargo-deny" --offline check licenses bans sources
ADVISORY_DB="${INIESTA_ADVISORY_DB:-${XDG_CACHE_HOME:-$HOME/.cache}/iniesta/advisory-db}"
if [ -d "$ADVISORY_DB/crates" ]; then
    mkdir -p target/advisory-dbs
    # The directory name cargo-deny derives from the database's URL.
    ln -sfn "$ADVISORY_DB" target/advisory-dbs/advisory-db-3157b0e258782691
    echo "==> cargo deny check advisories (database of $(git -C "$ADVISORY_DB" log -1 --format=%cs 2>/dev/null || echo 'unknown date'))"
    "$DENY_ROOT/bin/cargo-deny" --offline check advisories
else
    echo "==> cargo deny check advisories skipped: no RustSec database at $ADVISORY_DB (github.com is not reachable from here; clone github.com/rustsec/advisory-db there to check)"
fi
# --- end cargo-deny ---------------------------------------------------------------------------

echo "==> cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace -- --test-threads 4 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line for the whole suite (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "suite: %d passed, %d failed\n", p, f }' "$log"

# --- the container image (Dockerfile, scripts/container.sh; docs/src/guide/deploying.md) -------
# Builds the Dockerfile's runtime stage around target/debug's host and echo plugin (built above;
# it never builds Rust) and runs the default job in it. Installs podman, runc and debootstrap
# with apt-get when missing; exits 0 with "container test skipped: <why>" when no engine can run.
container_status=0
bash scripts/container.sh || container_status=$?
# --- end the container image ------------------------------------------------------------------

# --- the book (docs/; docs/src/contributing.md) -----------------------------------------------
# `mdbook build` (a failed {{#include}} only logs ERROR, so the log is checked too) and
# `mdbook test`, which compiles the book's Rust examples against a plugin-api built in a target
# dir of its own (rustdoc's -L needs exactly one copy of each crate). mdbook itself comes from
# crates.io, pinned, installed once under ~/.cache/iniesta (about 11 minutes cold on 2 shared
# cores), or under target/ when the cache cannot be written.
MDBOOK_VERSION="0.5.4"
MDBOOK="$(command -v mdbook || true)"
if [ -z "$MDBOOK" ] || ! "$MDBOOK" --version | grep -q "v$MDBOOK_VERSION\$"; then
    MDBOOK_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/iniesta/mdbook-$MDBOOK_VERSION"
    if [ ! -x "$MDBOOK_ROOT/bin/mdbook" ]; then
        echo "==> installing mdbook $MDBOOK_VERSION into $MDBOOK_ROOT"
        if ! cargo install mdbook --locked --no-default-features --version "$MDBOOK_VERSION" --root "$MDBOOK_ROOT"; then
            MDBOOK_ROOT="$PWD/target/mdbook-$MDBOOK_VERSION"
            echo "==> installing mdbook $MDBOOK_VERSION into $MDBOOK_ROOT instead"
            cargo install mdbook --locked --no-default-features --version "$MDBOOK_VERSION" --root "$MDBOOK_ROOT"
        fi
    fi
    MDBOOK="$MDBOOK_ROOT/bin/mdbook"
fi
echo "==> mdbook build docs ($("$MDBOOK" --version))"
book_status=0
book_log="$(mktemp)"
trap 'rm -f "$log" "$book_log"' EXIT
"$MDBOOK" build docs 2>&1 | tee "$book_log" || book_status=1
if grep -q "ERROR" "$book_log"; then
    echo "==> mdbook build docs logged an error" >&2
    book_status=1
fi
echo "==> mdbook test docs"
book_deps="${CARGO_TARGET_DIR:-$PWD/target}/mdbook-deps"
# rustdoc is handed the whole deps directory (-L): an rlib left over from an earlier build of
# another version (a bumped plugin-api, a changed dependency) is a second candidate for the same
# `extern crate` and fails every doctest. Start that directory afresh whenever what it is built
# from changed.
book_stamp="$(cat plugin-api/Cargo.toml Cargo.lock | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$book_deps/.built-from" 2>/dev/null || true)" != "$book_stamp" ]; then
    rm -rf "$book_deps"
fi
cargo build -q -p iniesta-plugin-api --target-dir "$book_deps" || book_status=1
mkdir -p "$book_deps" && echo "$book_stamp" > "$book_deps/.built-from"
# export_plugin! reads CARGO_PKG_VERSION at compile time; rustdoc outside cargo has none.
CARGO_PKG_VERSION=0.0.0 "$MDBOOK" test docs -L "$book_deps/debug/deps" || book_status=1
# --- end the book ------------------------------------------------------------------------------

# --- fuzzing (host/fuzz/, docs/src/guide/security.md "Fuzzing") ----------------------------------------
# Every cargo-fuzz target for a bounded time from its seed corpus (30 s each by default,
# INIESTA_FUZZ_SECONDS to change); a crash fails the suite and keeps the crashing input.
fuzz_status=0
bash scripts/fuzz.sh "${INIESTA_FUZZ_SECONDS:-30}" || fuzz_status=$?
# --- end fuzzing -----------------------------------------------------------------------------
if [ "$status" -ne 0 ]; then
    exit "$status"
fi
if [ "$book_status" -ne 0 ]; then
    exit "$book_status"
fi
if [ "$container_status" -ne 0 ]; then
    exit "$container_status"
fi
exit "$fuzz_status"
