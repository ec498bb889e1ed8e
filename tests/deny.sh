#!/usr/bin/env bash
# Dependency checks with cargo-deny against deny.toml (see SECURITY.md).
#
#   tests/deny.sh              # licenses, bans, sources; offline (what CI runs)
#   tests/deny.sh advisories   # also the RustSec advisories; needs GitHub, which CI cannot reach
#
# Installs cargo-deny with `cargo install --locked` when it is missing (a few minutes, once).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deny >/dev/null 2>&1; then
    echo "deny.sh: installing cargo-deny" >&2
    cargo install cargo-deny --locked
fi

# --offline reads every platform's crates from the local registry cache, which a build fills only
# for this platform's: fetch them all first (the registry is reachable; GitHub is not).
cargo fetch --quiet

if [ "${1:-}" = advisories ]; then
    cargo deny check --hide-inclusion-graph advisories licenses bans sources
else
    cargo deny --offline check --hide-inclusion-graph licenses bans sources
fi
