#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test
# (domain unit tests, router tests, end-to-end tests that start the real
# `certflow` binary and check what it issues with openssl and pkilint).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/peers.sh

echo "== vendored console assets (static/ equals npm's copies)"
scripts/vendor-assets.sh --check

scripts/check-deploy.sh

echo "== layout and dependencies (surfaces apart, no unused or adapter dependencies)"
scripts/check-layout.sh
scripts/check-deps.sh

echo "== functions over 120 lines (each needs a written reason)"
scripts/check-long-fns.py

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== tests"
# The e2e tests run the agent binary next to the server's (target/debug/
# certflow-agent); `nextest run` builds only test executables for that package.
cargo build -p certflow-agent --bin certflow-agent --locked
rm -rf "${CARGO_TARGET_DIR:-target}/test-logs"   # this run's server logs only (scan-logs.sh)
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

echo "== secrets in the test logs"
scripts/scan-logs.sh
