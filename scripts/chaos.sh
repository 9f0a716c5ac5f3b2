#!/usr/bin/env bash
# The chaos suite (tests/chaos.rs), for a person: N random scenarios from a seed,
# one table row each (DEVELOPMENT.md "Tests"). Without variables it runs the CI set.
#
#   GHRM_CHAOS_ROUNDS=20 scripts/chaos.sh            20 random scenarios (seed 13)
#   GHRM_CHAOS_SEED=42 GHRM_CHAOS_ROUNDS=20 scripts/chaos.sh
#   GHRM_CHAOS_ONLY=idle/loopkill GHRM_CHAOS_SEED=… scripts/chaos.sh   replay one row
#   GHRM_CHAOS_QEMU=0 scripts/chaos.sh                 without the QEMU rows
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build.sh
export GHRM_CHAOS_SEED="${GHRM_CHAOS_SEED:-}" GHRM_CHAOS_ROUNDS="${GHRM_CHAOS_ROUNDS:-}" \
  GHRM_CHAOS_ONLY="${GHRM_CHAOS_ONLY:-}"
cargo test --test integration chaos::chaos_suite -- --nocapture --test-threads=1
# Then the QEMU rows (real microVMs under TCG; GHRM_CHAOS_QEMU=0 skips them,
# GHRM_CHAOS_QEMU_ONLY=NAME runs one).
if [ "${GHRM_CHAOS_QEMU:-1}" != 0 ]; then
  cargo test --test integration chaos_qemu::chaos_qemu_suite -- --nocapture --test-threads=1
fi
