#!/usr/bin/env bash
# scripts/qos-bench.sh — transmit QoS with real DPDK clients.
#
# Three VFs flood a fourth: one dpdk-testpmd drives VF0..VF2 (net_virtio_user,
# txonly, destination = VF3's MAC, source = each VF's own MAC so spoof check
# passes); a second testpmd drains VF3 (rxonly). VF3's link speed (SPEED,
# Mbit/s) is below what the three offer together, so VF3 is the bottleneck
# and its senders share it by the arbiter (SPEED=0: VF3 takes what its
# tenant drains; on a 2-core machine that tenant and the senders are
# time-sliced, so no sender stays backlogged and the shares are whatever
# each offers). For each scenario the PF settings come from a generated
# config; the rates each VF gets are read from vfnic's counters over a
# steady window and set against what the settings promise:
#   max+weights  VF0 max_tx_rate=MAX, VF1 weight 1, VF2 weight 3
#                promise: VF0 = MAX; VF1 : VF2 = 1 : 3 of the rest
#   min          VF0 min_tx_rate=MIN, all weight 1
#                promise: VF0 = MIN + 1/3 of the rest (at least MIN), the
#                others 1/3 of the rest each, while all three flood
#   weights      weights 1, 2, 3   promise: shares 1/6, 2/6, 3/6 of the total
# Prints a table (promised, measured, error %) and appends it with the exact
# command to BENCHMARKS.md (APPEND=0 to skip).
# Env: SECS=6 (measured window) WARMUP=2 SIZE=1024 (frame bytes) SPEED=1000
#      MAX=100 MIN=500 (Mbit/s) VFNIC=target/release/vfnic
#      SCENARIOS="max+weights min weights"
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VFNIC=${VFNIC:-$REPO/target/release/vfnic}
SECS=${SECS:-6} WARMUP=${WARMUP:-2} SIZE=${SIZE:-1024} SPEED=${SPEED:-1000} MAX=${MAX:-100} MIN=${MIN:-500}
SCENARIOS=${SCENARIOS:-"max+weights min weights"}
WORK=$(mktemp -d /tmp/vfnic-qos.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap - EXIT
mac() { printf '02:76:66:6e:00:%02x' "$1"; }

[ -x "$VFNIC" ] || { echo "build first: cargo build --release" >&2; exit 1; }
command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd missing: run scripts/setup.sh" >&2; exit 1; }

# tx_bytes of VF0..2, rx_bytes and rx_dropped of VF3 from `vfnic stats --json`.
counters() { "$VFNIC" --run-dir "$WORK/run" --json stats | python3 -c '
import json,sys; v=json.load(sys.stdin)["vfs"]
print(" ".join(str(x["tx_bytes"]) for x in v[:3]), v[3]["rx_bytes"], v[3]["rx_dropped"])'; }

run_scenario() {
    local name=$1 cfg=$2
    rm -rf "$WORK/run"; mkdir -p "$WORK/run"
    printf 'run_dir = "%s"\nnum_vfs = 4\nengines = 1\nengine_cpus = [1]\n%b[[vf]]\nid = 3\nspeed = %s\n' "$WORK/run" "$cfg" "$SPEED" > "$WORK/vfnic.toml"
    "$VFNIC" run --config "$WORK/vfnic.toml" > "$WORK/vfnic-$name.log" 2>&1 & PIDS+=($!)
    for _ in $(seq 100); do [ -S "$WORK/run/vfnic.sock" ] && break; sleep 0.1; done
    local t=$((WARMUP + SECS + 15))
    timeout -k 5 $t dpdk-testpmd -l 1,0 --main-lcore 1 -m 256 --no-pci --in-memory --single-file-segments --file-prefix="qrx$$" \
        --vdev "net_virtio_user3,path=$WORK/run/vf3.sock,queues=1,queue_size=1024,mac=$(mac 3)" -- \
        --no-mlockall --total-num-mbufs=8192 --rxd=1024 --forward-mode=rxonly --auto-start --stats-period 10 \
        </dev/null > "$WORK/rx-$name.log" 2>&1 & PIDS+=($!)
    sleep 1
    timeout -k 5 $t dpdk-testpmd -l 0,1 --main-lcore 0 -m 512 --no-pci --in-memory --single-file-segments --file-prefix="qtx$$" \
        --vdev "net_virtio_user0,path=$WORK/run/vf0.sock,queues=1,queue_size=1024,mac=$(mac 0)" \
        --vdev "net_virtio_user1,path=$WORK/run/vf1.sock,queues=1,queue_size=1024,mac=$(mac 1)" \
        --vdev "net_virtio_user2,path=$WORK/run/vf2.sock,queues=1,queue_size=1024,mac=$(mac 2)" -- \
        --no-mlockall --total-num-mbufs=16384 --txd=1024 --forward-mode=txonly --txpkts="$SIZE" \
        --eth-peer=0,"$(mac 3)" --eth-peer=1,"$(mac 3)" --eth-peer=2,"$(mac 3)" --auto-start --stats-period 10 \
        </dev/null > "$WORK/tx-$name.log" 2>&1 & PIDS+=($!)
    sleep "$WARMUP"
    local c0 c1 t0 t1
    c0=$(counters); t0=$(date +%s.%N)
    sleep "$SECS"
    c1=$(counters); t1=$(date +%s.%N)
    "$VFNIC" --run-dir "$WORK/run" stats > "$WORK/stats-$name.txt" 2>&1 || true
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=()
    python3 - "$name" "$c0" "$c1" "$t0" "$t1" "$MAX" "$MIN" "$SPEED" <<'PY'
import sys
name, c0, c1, t0, t1, mx, mn, speed = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7]), float(sys.argv[8])
dt = t1 - t0
rate = [(int(b) - int(a)) * 8 / dt / 1e6 for a, b in zip(c0[:4], c1[:4])]   # Mbit/s: VF0..2 tx, VF3 rx
tx, rx = rate[:3], rate[3]
drops = int(c1[4]) - int(c0[4])
total = sum(tx)
if name == "max+weights":
    rest = total - tx[0]
    promise = [mx, rest / 4, rest * 3 / 4]
    kind = ["max_tx_rate", "weight 1 of rest", "weight 3 of rest"]
elif name == "min":
    # The guarantee first, then equal weights share what is left.
    rest = total - mn
    promise = [mn + rest / 3, rest / 3, rest / 3]
    kind = [f"min_tx_rate {mn:.0f} + weight 1 of rest", "weight 1 of rest", "weight 1 of rest"]
else:
    promise = [total / 6, total * 2 / 6, total * 3 / 6]
    kind = ["weight 1", "weight 2", "weight 3"]
for i in range(3):
    p = promise[i]
    if p is None:
        print(f"| {name} | VF{i} | {kind[i]} | - | {tx[i]:.0f} | - |")
        continue
    err = (tx[i] - p) / p * 100
    ok = abs(err) <= 3 and (name != "min" or i != 0 or tx[0] >= mn)
    print(f"| {name} | VF{i} | {kind[i]} | {p:.0f} | {tx[i]:.0f} | {err:+.1f}% {'ok' if ok else 'MISS'} |")
if speed:
    err = (rx - speed) / speed * 100
    print(f"| {name} | VF3 | received (speed {speed:.0f}; {drops} frames dropped) | {speed:.0f} | {rx:.0f} | {err:+.1f}% {'ok' if abs(err) <= 3 else 'MISS'} |")
else:
    print(f"| {name} | VF3 | received (all three; {drops} frames dropped) | - | {rx:.0f} | - |")
PY
}

declare -A CFG=(
    ["max+weights"]="[[vf]]\nid = 0\nmax_tx_rate = $MAX\n[[vf]]\nid = 1\nweight = 1\n[[vf]]\nid = 2\nweight = 3\n"
    ["min"]="[[vf]]\nid = 0\nmin_tx_rate = $MIN\n"
    ["weights"]="[[vf]]\nid = 0\nweight = 1\n[[vf]]\nid = 1\nweight = 2\n[[vf]]\nid = 2\nweight = 3\n"
)
OUT=$WORK/table.md
{
    echo "| scenario | VF | setting | promised Mbit/s | measured Mbit/s | error |"
    echo "|---|---|---|---|---|---|"
    for s in $SCENARIOS; do run_scenario "$s" "${CFG[$s]}"; done
} | tee "$OUT"
if [ "${APPEND:-1}" = 1 ]; then
    {
        echo
        echo "## QoS: promised vs measured ($(date -u +%Y-%m-%d), commit $(git -C "$REPO" rev-parse --short HEAD))"
        echo
        echo "Command: \`SECS=$SECS WARMUP=$WARMUP SIZE=$SIZE SPEED=$SPEED MAX=$MAX MIN=$MIN bash scripts/qos-bench.sh\`"
        echo "(three VFs flood a fourth (link speed ${SPEED} Mbit/s) with dpdk-testpmd txonly, ${SIZE}-byte frames; one engine; rates from vfnic's per-VF counters over ${SECS} s; $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'))"
        echo
        cat "$OUT"
    } >> "$REPO/BENCHMARKS.md"
fi
