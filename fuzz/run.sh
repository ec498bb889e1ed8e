#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) with cargo-fuzz (libFuzzer).
#
#   fuzz/run.sh 30      # CI uses a short time; run longer by hand to dig deeper
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, sancov passes). Only the stable
# toolchain is guaranteed here, so RUSTC_BOOTSTRAP=1 lets stable accept them; nothing else in the
# project relies on it. Installs cargo-fuzz from crates.io when it is missing.
#
# The committed seeds in fuzz/corpus/<target>/ are read-only input: new inputs libFuzzer finds go
# to a scratch directory, so a run leaves the repository unchanged. A crash stops the script
# with the failing input saved under fuzz/artifacts/<target>/ (reproduce it with
# `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`); make it a regression unit test next to
# the code it broke. The build is release with debug assertions and AddressSanitizer (cargo
# fuzz's defaults); on a busy 2-core machine the first build takes many minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
# cargo fuzz builds in fuzz/target; an inherited CARGO_TARGET_DIR would mix its instrumented
# artifacts with the main build's.
unset CARGO_TARGET_DIR

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

targets=(tag config webhook retry_after bucket_header settings_seal)
cargo fuzz build
# Run the built binaries directly: `cargo fuzz run` would re-check the build for every target.
bin="fuzz/target/$(rustc -vV | sed -n 's/^host: //p')/release"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
mkdir -p fuzz/artifacts
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "fuzz/artifacts/$t"
    echo "fuzz/run.sh: $t for ${seconds}s" >&2
    status=0
    "$bin/$t" "$scratch/$t" "fuzz/corpus/$t" -max_total_time="$seconds" -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" >"$scratch/$t.log" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$scratch/$t.log" >&2
        echo "fuzz/run.sh: $t FAILED (exit $status), input saved under fuzz/artifacts/$t/" >&2
        exit "$status"
    fi
    grep -E '^stat::(number_of_executed_units|new_units_added)' "$scratch/$t.log" | sed "s/^/  $t /" >&2
done
echo "fuzz/run.sh: ${#targets[@]} targets, ${seconds}s each: no crash" >&2
