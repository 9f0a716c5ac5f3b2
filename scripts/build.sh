#!/usr/bin/env bash
# Build everything: the host binaries (orchestrator, runner) and the static guest
# binaries (entrypoint, and the fake actions runner used by tests and the demo),
# and put the guest ones beside the host ones, where `runner -D` and
# `orchestrator image bundle` look for them.
#
#   scripts/build.sh            debug build (target/debug)
#   scripts/build.sh --release  release build (target/release)
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
flags=()
if [ "${1:-}" = "--release" ]; then
  profile=release
  flags=(--release)
fi
triple=x86_64-unknown-linux-gnu

cargo build "${flags[@]}" --bins
# An explicit --target keeps +crt-static away from build scripts and proc-macros.
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build "${flags[@]}" --target "$triple" -p guest -p fake-actions-runner --bins

out=target/$profile
cp -f "target/$triple/$profile/entrypoint" "$out/entrypoint"
cp -f "target/$triple/$profile/fake-runner-listener" "$out/fake-runner-listener"
echo "built: $out/orchestrator $out/runner $out/entrypoint (static)"
