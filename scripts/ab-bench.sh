#!/usr/bin/env bash
# scripts/ab-bench.sh — two vfnic binaries against each other, for judging
# one data-path change (scripts/bench.sh compares vfnic with DPDK).
#
#   scripts/ab-bench.sh BIN_A BIN_B [PAIRS]
#
# Each run: BIN runs with one engine pinned to CPU 1; one dpdk-testpmd with
# two net_virtio_user ports (VF0, VF1) loops frames in mac forward mode with
# --tx-first, as in scripts/bench.sh. After 2 s of warm-up the engine's own
# counters (busy TSC cycles, chains) are read SECS apart: chains per second
# and busy cycles per chain. A and B alternate, PAIRS times; the last line
# gives each side's median and the B/A ratio of cycles per chain in each
# pair and its median (below 1: B is cheaper). On a shared 2-core host the
# same binary varies by up to 2x between neighbouring runs: only steps well
# beyond that noise, seen in most pairs, mean anything.
#
# Env: SECS=4 SIZE=64 BURST=32 VU="" (appended to both vdevs, e.g.
#      ",packed_vq=1,in_order=1")
# Needs: root, hugepages, dpdk-testpmd, python3 (scripts/setup.sh).
set -euo pipefail
[ $# -ge 2 ] || { echo "usage: $0 BIN_A BIN_B [PAIRS]" >&2; exit 2; }
A=$1 B=$2 PAIRS=${3:-4}
SECS=${SECS:-4} SIZE=${SIZE:-64} BURST=${BURST:-32} VU=${VU:-}
# shellcheck source=scripts/bench/mac-loop.sh
. "$(dirname "$0")/bench/mac-loop.sh"
OUT=$(mktemp -d /tmp/vfnic-ab.XXXXXX)
trap 'rm -rf "$OUT"' EXIT

# run BIN: prints "MPPS CYCLES_PER_CHAIN".
run() {
    local bin=$1 d=$OUT/run vp tp
    start_loop "$d" "ab$$" 60 "$bin"
    vp=$VFNIC_PID tp=$LOOP_PID
    sleep 2
    "$bin" --run-dir "$d/run" --json engines >"$d/e0.json"
    sleep "$SECS"
    "$bin" --run-dir "$d/run" --json engines >"$d/e1.json"
    kill "$tp" "$vp" 2>/dev/null || true
    wait "$tp" "$vp" 2>/dev/null || true
    python3 - "$d/e0.json" "$d/e1.json" "$SECS" <<'PY'
import json, sys
def load(f):
    j = json.load(open(f))
    es = j["engines"] if isinstance(j, dict) else j
    return sum(e["busy_cycles"] for e in es), sum(e["chains"] for e in es)
(b0, c0), (b1, c1) = load(sys.argv[1]), load(sys.argv[2])
n = max(c1 - c0, 1)
print(f"{n / float(sys.argv[3]) / 1e6:.2f} {(b1 - b0) / n:.0f}")
PY
}

: >"$OUT/results"
for _ in $(seq "$PAIRS"); do
    for side in A B; do
        bin=$A
        [ "$side" = B ] && bin=$B
        read -r mpps cpc < <(run "$bin")
        echo "$side: $mpps Mpps  $cpc busy cycles/chain"
        echo "$side $cpc" >>"$OUT/results"
    done
done
python3 - "$OUT/results" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1])]
a = [float(c) for s, c in rows if s == "A"]
b = [float(c) for s, c in rows if s == "B"]
r = [y / x for x, y in zip(a, b)]
print(f"cycles/chain median A {st.median(a):.0f}, B {st.median(b):.0f}; "
      f"B/A per pair {[round(x, 2) for x in r]}, median {st.median(r):.3f}")
PY
