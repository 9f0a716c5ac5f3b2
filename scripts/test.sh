#!/usr/bin/env bash
# The project's test command (README): installs what the tests need on a fresh
# Debian/Ubuntu machine, builds everything, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/build.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --all-targets --no-fail-fast
