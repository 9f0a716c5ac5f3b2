#!/usr/bin/env bash
# Benchmark (not a test): runs `orchestrator demo` (local forge, QEMU microVMs,
# fake actions runner) for N = 1, 2, 4 loops and prints one table:
# cold start → .tkn (median, p90), host share of VM exit → next VM start,
# jobs per minute, peak RSS of orchestrator / runner loop / QEMU.
#
#   scripts/bench.sh                 BENCH_JOBS=10 BENCH_ACCEL=auto by default
#   BENCH_ACCEL=tcg BENCH_JOBS=12 scripts/bench.sh
#   BENCH_BUNDLE=DIR scripts/bench.sh   boot DIR (e.g. a root-disk bundle of an image
#                                       with the fake runner) instead of the busybox one
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${BENCH_JOBS:-10}
accel=${BENCH_ACCEL:-auto}
loops=${BENCH_LOOPS:-1 2 4}

scripts/build.sh --release >/dev/null
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for n in $loops; do
  echo "bench: $n loop(s), $jobs jobs, accel $accel ..." >&2
  target/release/orchestrator demo -n "$n" --jobs "$jobs" --accel "$accel" \
    ${BENCH_BUNDLE:+--bundle "$BENCH_BUNDLE"} --json 2>/dev/null | tail -n 1 >> "$results"
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
f = lambda v, i: "-" if not v else f"{v[i]:.2f}"
print(f"{'loops':>5} {'jobs':>5} {'boot med s':>10} {'boot p90 s':>10} {'host turn ms':>12} {'jobs/min':>9} {'orch KiB':>9} {'loop KiB':>9} {'QEMU KiB':>9}")
for r in rows:
    t = r["turnaround_s"]
    turn = "-" if not t else f"{t[0]*1000:.0f}"
    print(f"{r['loops']:>5} {r['jobs']:>5} {f(r['boot_s'],0):>10} {f(r['boot_s'],1):>10} {turn:>12} {r['jobs_per_min']:>9.2f} "
          f"{r['rss_kib']['orchestrator']:>9} {r['rss_kib']['runner']:>9} {r['rss_kib']['qemu']:>9}")
PY
