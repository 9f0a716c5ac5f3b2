#!/usr/bin/env bash
# The README's first command: on a fresh Debian/Ubuntu machine with Rust, install
# what the demo needs when it is missing (scripts/install-deps.sh --demo: QEMU, a
# C compiler and static C library; with sudo when not root, saying what), build
# everything (scripts/build.sh), and run `orchestrator demo` on this machine.
#
#   scripts/demo.sh                    2 loops, 4 jobs (orchestrator demo -n 2 --jobs 4)
#   scripts/demo.sh -n 3 --jobs 9      any `orchestrator demo` options instead
set -euo pipefail
cd "$(dirname "$0")/.."

# rustup puts cargo in ~/.cargo/bin, which a new shell may not have on PATH yet.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
  PATH=$HOME/.cargo/bin:$PATH
fi
if ! command -v cargo >/dev/null; then
  echo "demo: cargo is missing: install Rust stable first (https://rustup.rs), then run scripts/demo.sh again" >&2
  exit 1
fi

scripts/install-deps.sh --demo
scripts/build.sh
if [ $# -eq 0 ]; then
  set -- -n 2 --jobs 4
fi
exec target/debug/orchestrator demo "$@"
