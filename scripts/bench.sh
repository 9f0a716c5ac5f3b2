#!/usr/bin/env bash
# Benchmark (not a test): runs `orchestrator demo` (local forge, QEMU microVMs,
# fake actions runner) for N = 1, 2, 4 loops and each way of booting, on the same
# bundle, and prints one table: cold start → .tkn (median, p90), host share of VM
# exit → next VM start, jobs per minute, peak RSS of orchestrator / runner loop / QEMU.
# Boots: `pvh` (the bundle's uncompressed vmlinux), `bzimage` (the same bundle
# without it: its compressed kernel), both cold (`--start cold`); `snapshot` (each VM
# restored from a memory-snapshot template of the PVH bundle, `--start snapshot`; the
# one cold boot that makes the template is outside "boot" but inside jobs/min); `warm`
# (snapshot, and `--warm`: the next VM is restored while a job runs and handed its
# configuration when the job's VM exits). "exit→up" is the previous VM's exit to the
# next runner up: the host's turnaround plus the hand-over/boot (sum of medians).
#
#   scripts/bench.sh                 BENCH_JOBS=10 BENCH_ACCEL=auto by default
#   BENCH_ACCEL=tcg BENCH_JOBS=12 scripts/bench.sh
#   BENCH_LOOPS=1 BENCH_BOOTS="bzimage pvh" scripts/bench.sh   the before/after of PVH
#   BENCH_BUNDLE=DIR scripts/bench.sh   boot DIR (e.g. a root-disk bundle of an image
#                                       with the fake runner) instead of the busybox one
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${BENCH_JOBS:-10}
accel=${BENCH_ACCEL:-auto}
loops=${BENCH_LOOPS:-1 2 4}

boots=${BENCH_BOOTS:-bzimage pvh snapshot warm}

scripts/build.sh --release >/dev/null
results=$(mktemp)
work=$(mktemp -d)
trap 'rm -rf "$results" "$work"' EXIT
bundle=${BENCH_BUNDLE:-${XDG_CACHE_HOME:-$HOME/.cache}/gh-runner-microvm/demo/bundle}
run() { # run BOOT N [--bundle DIR]
  echo "bench: $2 loop(s), $jobs jobs, accel $accel, boot $1 ..." >&2
  local start=(--start cold)
  [ "$1" = snapshot ] && start=(--start snapshot)
  [ "$1" = warm ] && start=(--start snapshot --warm)
  target/release/orchestrator demo -n "$2" --jobs "$jobs" --accel "$accel" "${start[@]}" "${@:3}" --json 2>/dev/null \
    | tail -n 1 | sed "s/^{/{\"boot\":\"$1\",/" >> "$results"
}
for n in $loops; do
  for boot in $boots; do
    if [ "$boot" != bzimage ]; then
      # Without BENCH_BUNDLE the demo (re)builds its bundle here, vmlinux included.
      run "$boot" "$n" ${BENCH_BUNDLE:+--bundle "$BENCH_BUNDLE"}
    else
      # The same bundle without its vmlinux: bundle.json as before PVH, the other files linked.
      [ -f "$bundle/bundle.json" ] || # make the demo bundle first
        target/release/orchestrator demo -n 1 --jobs 1 --accel "$accel" >/dev/null 2>&1
      rm -rf "$work/bz" && mkdir "$work/bz"
      for f in "$bundle"/*; do ln -s "$(realpath "$f")" "$work/bz/"; done
      rm -f "$work/bz/bundle.json" "$work/bz/vmlinux"
      python3 -c 'import json,sys; b=json.load(open(sys.argv[1])); b.pop("vmlinux",None); print(json.dumps(b))' \
        "$bundle/bundle.json" > "$work/bz/bundle.json"
      run bzimage "$n" --bundle "$work/bz"
    fi
  done
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
f = lambda v, i: "-" if not v else f"{v[i]:.2f}"
print(f"{'boot':>8} {'loops':>5} {'jobs':>5} {'boot med s':>10} {'boot p90 s':>10} {'host turn ms':>12} {'exit→up ms':>10} {'jobs/min':>9} {'orch KiB':>9} {'loop KiB':>9} {'QEMU KiB':>9}")
for r in rows:
    t = r["turnaround_s"]
    turn = "-" if not t else f"{t[0]*1000:.0f}"
    up = "-" if not t or not r["boot_s"] else f"{(t[0]+r['boot_s'][0])*1000:.0f}"
    print(f"{r.get('boot','-'):>8} {r['loops']:>5} {r['jobs']:>5} {f(r['boot_s'],0):>10} {f(r['boot_s'],1):>10} {turn:>12} {up:>10} {r['jobs_per_min']:>9.2f} "
          f"{r['rss_kib']['orchestrator']:>9} {r['rss_kib']['runner']:>9} {r['rss_kib']['qemu']:>9}")
PY
