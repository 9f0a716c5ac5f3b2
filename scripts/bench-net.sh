#!/usr/bin/env bash
# Benchmark (not a test) of the guest network modes, as root (it makes an
# "internet" host in a network namespace): per mode, the host's set-up cost per
# VM (namespace + nft filter + slirp4netns), VM start → runner up, and a 100 MiB
# download by the guest. QEMU under TCG unless the test harness says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh >/dev/null
cargo test --quiet --test integration guestnet::bench_guest_network -- --ignored --nocapture --test-threads 1 2>&1 |
  grep -E '^(--net|user|internet|restricted) '
