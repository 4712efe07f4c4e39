#!/usr/bin/env bash
# scripts/ir-profile.sh — instructions the engine executes per forwarded
# frame, counted by callgrind: a figure that does not move with where the
# host places our two cores (cycles on this machine vary up to 2x between
# neighbouring runs of one binary; instruction counts vary by a few %).
#
#   scripts/ir-profile.sh BIN [BIN ...]
#
# Each BIN runs under `valgrind --tool=callgrind` with one engine, counting
# only inside vfnic_engine::forward::process_tx (one TX burst: take, switch,
# arbitrate, copy, complete; the engine's poll loop and sleeps are left
# out). One dpdk-testpmd with two net_virtio_user ports (VF0, VF1) loops
# frames in mac forward mode, seeded with INFLIGHT bursts per port (the
# engine runs ~50x slower under valgrind, so the rings stay full and bursts
# long: the per-frame cost; INFLIGHT=1 BURST=1 gives one frame per burst:
# the per-burst cost). After SECS the engine's own chain counter is read;
# the line per run is "frames, instructions, instructions per frame". Each
# BIN runs REPS times and the median is printed last. TOP=N also prints the
# N hottest source lines (instructions per frame) of the last run.
#
# Env: SECS=10 SIZE=64 BURST=32 INFLIGHT=12 REPS=2 TOP=0
#      KEEP=FILE (copy the last run's callgrind output there, for
#      callgrind_annotate --auto=yes)
#      VU="" (appended to both vdevs, e.g. ",packed_vq=1,in_order=1")
# Needs: root, hugepages, dpdk-testpmd, valgrind, python3.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BIN [BIN ...]" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 2; }
SECS=${SECS:-10} SIZE=${SIZE:-64} BURST=${BURST:-32} INFLIGHT=${INFLIGHT:-12}
REPS=${REPS:-2} TOP=${TOP:-0} VU=${VU:-}
# shellcheck source=scripts/bench/mac-loop.sh
. "$(dirname "$0")/bench/mac-loop.sh"
OUT=$(mktemp -d /tmp/vfnic-ir.XXXXXX)
trap 'pkill -f "file-prefix=ir$$" 2>/dev/null || true; rm -rf "$OUT"' EXIT

# run BIN: prints "FRAMES IR".
run() {
    local bin=$1 d=$OUT/run vp tp
    rm -rf "$d"
    mkdir -p "$d/run"
    printf 'start tx_first %d\n' "$INFLIGHT" >"$d/seed.cmd"
    start_vfnic "$d/run" "$d/vfnic.log" valgrind --tool=callgrind --callgrind-out-file="$d/cg.out" \
        --toggle-collect='vfnic_engine::forward::process_tx' "$bin"
    vp=$VFNIC_PID
    # Interactive, so that `start tx_first N` can seed N bursts; stdin stays
    # open until the run is over.
    mac_loop "$d/run" "ir$$" $((SECS + 60)) -i --cmdline-file="$d/seed.cmd" \
        < <(sleep $((SECS + 30))) >"$d/testpmd.log" 2>&1 &
    tp=$!
    sleep "$SECS"
    # The client first: the engine's count then covers every burst counted.
    kill "$tp" 2>/dev/null || true
    wait "$tp" 2>/dev/null || true
    sleep 2
    "$bin" --run-dir "$d/run" --json engines >"$d/e.json"
    kill "$vp" 2>/dev/null || true
    wait "$vp" 2>/dev/null || true
    local frames ir
    frames=$(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
es = j["engines"] if isinstance(j, dict) else j
print(sum(e["chains"] for e in es))' "$d/e.json")
    ir=$(callgrind_annotate "$d/cg.out" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
    echo "$frames ${ir:-0}"
}

for bin in "$@"; do
    : >"$OUT/ratios"
    for _ in $(seq "$REPS"); do
        read -r frames ir < <(run "$bin")
        [ "$frames" -gt 0 ] || { echo "$bin: no frames forwarded (see a run by hand)" >&2; exit 1; }
        echo "$bin: $frames frames, $ir instructions, $((ir / frames)) per frame"
        echo $((ir / frames)) >>"$OUT/ratios"
    done
    echo "$bin: median $(sort -n "$OUT/ratios" | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}') instructions per frame (SIZE=$SIZE BURST=$BURST INFLIGHT=$INFLIGHT$VU)"
done
[ -n "${KEEP:-}" ] && cp "$OUT/run/cg.out" "$KEEP"
if [ "$TOP" -gt 0 ]; then
    callgrind_annotate --auto=yes --show-percs=no --threshold=100 "$OUT/run/cg.out" 2>/dev/null |
        grep -E '^\s*[0-9,]{6,} ' |
        awk -v f="$frames" '{x = $1; gsub(",", "", x); $1 = sprintf("%8.1f", x / f); print}' |
        sort -rn | head -n "$TOP"
fi
