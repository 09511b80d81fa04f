#!/usr/bin/env bash
# Every check and test of Harmony Sync: formatting, lints, and all tests in one cargo
# invocation. This is the README's test command and what CI (.ci/run) runs.
#
# Nothing outside the workspace is needed yet: the embedded event log (sled) runs in-process.
# When tests need servers (nats-server, PostgreSQL, Chromium), this script installs and starts
# them itself, on loopback only, and stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# Logs from the code under test only when asked for.
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"

# One closing line with the totals: cargo's own last line belongs to whichever target ran last.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed;?$/) p += $(i-1); if ($(i) ~ /^failed;?$/) f += $(i-1) } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
