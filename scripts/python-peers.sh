#!/usr/bin/env bash
# The real Python libraries the conformance suite (host/tests/it/conformance.rs) runs against
# iniesta-rs: insanic-iniesta 0.4.0, microcosm-pubsub 3.0.0, pop-evbus and acct, pinned with
# every dependency in host/tests/conformance/requirements.txt (found by installing them and
# `pip freeze`).
#
# The venv lives under ~/.cache/iniesta/peers-<hash>, where the hash covers the pinned
# requirements and the interpreter's version: it is reused while both stay the same and built
# afresh when either changes (or when a build was interrupted). Prints the venv's python;
# `source` it to get INIESTA_PEERS_PYTHON exported.
#
#   scripts/python-peers.sh                 # create or reuse; print the python path
#   source scripts/python-peers.sh          # the same, and export INIESTA_PEERS_PYTHON
set -euo pipefail

peers_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
peers_requirements="$peers_root/host/tests/conformance/requirements.txt"

# Python 3.10: insanic-framework 0.9.2 (the Python iniesta's framework) cannot start its server
# on 3.11+ (aiotask-context 0.6.1's task factory does not take asyncio's new `context`
# argument), and microcosm-pubsub 3.0.0 needs 3.10+ (it evaluates `X | None` annotations).
peers_python_bin="${INIESTA_PEERS_BASE_PYTHON:-}"
if [ -z "$peers_python_bin" ]; then
    for candidate in python3.10 "$(pyenv root 2>/dev/null)"/versions/3.10*/bin/python3.10 \
        /usr/bin/python3.10 /usr/local/bin/python3.10; do
        if "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; then
            peers_python_bin="$candidate"
            break
        fi
    done
fi
if [ -z "$peers_python_bin" ]; then
    echo "python-peers.sh: no Python 3.10 found (install one, e.g. pyenv install 3.10, or set INIESTA_PEERS_BASE_PYTHON)" >&2
    exit 1
fi

peers_hash="$( { cat "$peers_requirements"; "$peers_python_bin" --version; } | sha256sum | cut -c1-16)"
peers_cache="${XDG_CACHE_HOME:-$HOME/.cache}/iniesta"
peers_venv="$peers_cache/peers-$peers_hash"

if [ -x "$peers_venv/bin/python" ] && [ -f "$peers_venv/.complete" ]; then
    echo "==> python peers: reusing $peers_venv" >&2
else
    echo "==> python peers: building $peers_venv (pins: ${peers_requirements#"$peers_root"/})" >&2
    mkdir -p "$peers_cache"
    # A venv's scripts name their interpreter by absolute path, so it is built where it stays;
    # `.complete` is written last, and a venv without it (an interrupted build) is rebuilt.
    rm -rf "$peers_venv"
    "$peers_python_bin" -m venv "$peers_venv"
    # --no-deps: the file pins the whole closure, so nothing unpinned can slip in.
    "$peers_venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -r "$peers_requirements"
    "$peers_venv/bin/pip" check >&2
    touch "$peers_venv/.complete"
    # Venvs of older pins.
    find "$peers_cache" -maxdepth 1 -name 'peers-*' ! -name "peers-$peers_hash" -exec rm -rf {} +
fi
export INIESTA_PEERS_PYTHON="$peers_venv/bin/python"
echo "$INIESTA_PEERS_PYTHON"
