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
# A BIN of `dpdk` profiles the anchor instead: dpdk-testpmd with two
# net_vhost ports in io forward mode (scripts/bench.sh's anchor) under
# callgrind, with the same client. Counted: the two vhost library calls
# that do what process_tx does (rte_vhost_dequeue_burst: take the chains
# and copy each frame into an mbuf; rte_vhost_enqueue_burst: copy into the
# receiver's buffers and complete), per frame the backend received. Its
# loop polls a port that has nothing (an empty dequeue costs a fixed
# amount, measured in a run with the client idle) far more often under
# valgrind than natively: those polls are taken out. testpmd's loop and
# the PMD's wrappers are left out, as the engine's poll loop is for vfnic.
# TOP and KEEP look at the last vfnic BIN's run (list one after `dpdk`).
#
# Env: SECS=10 SIZE=64 BURST=32 INFLIGHT=12 REPS=2 TOP=0
#      KEEP=FILE (copy the last run's callgrind output there, for
#      callgrind_annotate --auto=yes)
#      VU="" (appended to both vdevs, e.g. ",packed_vq=1,in_order=1")
#      KEEPDIR=1 (keep the work folder, with every log, /tmp/vfnic-ir.*)
# A `dpdk` run takes ~3.5 min (valgrind makes testpmd's start and the
# vhost-user handshake slow; the count starts once both ports are up).
# Needs: root, hugepages, dpdk-testpmd, valgrind, python3.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BIN [BIN ...]" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 2; }
SECS=${SECS:-10} SIZE=${SIZE:-64} BURST=${BURST:-32} INFLIGHT=${INFLIGHT:-12}
REPS=${REPS:-2} TOP=${TOP:-0} VU=${VU:-}
# shellcheck source=scripts/bench/mac-loop.sh
. "$(dirname "$0")/bench/mac-loop.sh"
OUT=$(mktemp -d /tmp/vfnic-ir.XXXXXX)
trap 'pkill -f "file-prefix=ir$$" 2>/dev/null || true; [ -n "${KEEPDIR:-}" ] || rm -rf "$OUT"' EXIT

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

# dpdk_run INFLIGHT: the anchor under callgrind (INFLIGHT 0: the client
# idle); prints "FRAMES DEQ_CALLS DEQ_IR ENQ_CALLS ENQ_IR".
dpdk_run() {
    local d=$OUT/run tp bp
    rm -rf "$d"
    mkdir -p "$d/run"
    if [ "$1" = 0 ]; then echo start; else printf 'start tx_first %d\n' "$1"; fi >"$d/seed.cmd"
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$d/cg.out" \
        dpdk-testpmd -l 0,1 --main-lcore 0 -m 512 --no-pci --no-huge --file-prefix="irb$$" \
        --vdev "net_vhost0,iface=$d/run/vf0.sock,queues=1" --vdev "net_vhost1,iface=$d/run/vf1.sock,queues=1" -- \
        --no-mlockall --total-num-mbufs=16384 --forward-mode=io --auto-start --stats-period 5 \
        </dev/null >"$d/backend.log" 2>&1 &
    bp=$!
    for _ in $(seq 1200); do [ -S "$d/run/vf1.sock" ] && break; sleep 0.1; done
    mac_loop "$d/run" "ir$$" $((SECS + 180)) -i --cmdline-file="$d/seed.cmd" \
        < <(sleep $((SECS + 150))) >"$d/testpmd.log" 2>&1 &
    tp=$!
    # Counted from when both ports are up (the handshake is slow under
    # valgrind).
    for _ in $(seq 1200); do
        [ "$(grep -c 'virtio is now ready' "$d/backend.log")" -ge 2 ] && break
        sleep 0.1
    done
    sleep "$SECS"
    kill "$tp" 2>/dev/null || true
    wait "$tp" 2>/dev/null || true
    sleep 1
    # testpmd prints its totals on SIGINT
    kill -INT "$bp" 2>/dev/null || true
    wait "$bp" 2>/dev/null || true
    python3 - "$d" <<'PY'
import glob, re, sys
d = sys.argv[1]
log = open(d + "/backend.log", errors="replace").read()
m = re.findall(r"Accumulated forward statistics.*?RX-packets:\s*(\d+)", log, re.S)
frames = int(m[-1]) if m else 0
# Calls to (and inclusive cost of) the two library calls, over all threads.
names, calls, cost = {}, {}, {}
for f in glob.glob(d + "/cg.out*"):
    lines = open(f, errors="replace").read().split("\n")
    callee = None
    for i, l in enumerate(lines):
        m = re.match(r"^c?fn=\((\d+)\)(?: (.*))?", l)
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            if l.startswith("cfn"):
                callee = names.get(m.group(1))
            continue
        m = re.match(r"^calls=(\d+)", l)
        if m and callee in ("rte_vhost_dequeue_burst", "rte_vhost_enqueue_burst"):
            calls[callee] = calls.get(callee, 0) + int(m.group(1))
            cost[callee] = cost.get(callee, 0) + int(lines[i + 1].split()[1])
    names.clear()
g = lambda k, t: t.get(k, 0)
print(frames, g("rte_vhost_dequeue_burst", calls), g("rte_vhost_dequeue_burst", cost),
      g("rte_vhost_enqueue_burst", calls), g("rte_vhost_enqueue_burst", cost))
PY
}

# dpdk: the anchor's instructions per frame (see the top).
dpdk() {
    local f dc di ec ei idc idi empty deq enq
    read -r _ idc idi _ _ < <(dpdk_run 0)
    [ "${idc:-0}" -gt 0 ] || { echo "dpdk: no empty polls counted in the idle run" >&2; exit 1; }
    for _ in $(seq "$REPS"); do
        read -r f dc di ec ei < <(dpdk_run "$INFLIGHT")
        [ "${f:-0}" -gt 0 ] || { echo "dpdk: no frames forwarded (see a run by hand)" >&2; exit 1; }
        empty=$((idi / idc))
        deq=$(((di - (dc - ec) * empty) / f)) enq=$((ei / f))
        echo "dpdk: $f frames, $dc dequeue calls ($ec with frames; an empty one $empty instructions)," \
            "dequeue $deq + enqueue $enq = $((deq + enq)) per frame"
        echo $((deq + enq)) >>"$OUT/ratios"
    done
}

for bin in "$@"; do
    : >"$OUT/ratios"
    if [ "$bin" = dpdk ]; then
        dpdk
    else
        for _ in $(seq "$REPS"); do
            read -r frames ir < <(run "$bin")
            [ "$frames" -gt 0 ] || { echo "$bin: no frames forwarded (see a run by hand)" >&2; exit 1; }
            echo "$bin: $frames frames, $ir instructions, $((ir / frames)) per frame"
            echo $((ir / frames)) >>"$OUT/ratios"
        done
    fi
    echo "$bin: median $(sort -n "$OUT/ratios" | awk '{a[NR]=$1} END {print a[int((NR + 1) / 2)]}') instructions per frame (SIZE=$SIZE BURST=$BURST INFLIGHT=$INFLIGHT$VU)"
done
[ -n "${KEEP:-}" ] && cp "$OUT/run/cg.out" "$KEEP"
if [ "$TOP" -gt 0 ]; then
    callgrind_annotate --auto=yes --show-percs=no --threshold=100 "$OUT/run/cg.out" 2>/dev/null |
        grep -E '^\s*[0-9,]{6,} ' |
        awk -v f="$frames" '{x = $1; gsub(",", "", x); $1 = sprintf("%8.1f", x / f); print}' |
        sort -rn | head -n "$TOP"
fi
