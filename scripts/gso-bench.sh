#!/usr/bin/env bash
# scripts/gso-bench.sh — the GSO case: 64 KB TCP segments VF -> VF.
#
# The same client (crates/user/examples/gso_flood.rs: one port sends 64 KB
# TSO segments with NEEDS_CSUM, the other receives them with GUEST_TSO4 and
# mergeable buffers) runs against vfnic (the segments pass through
# unsegmented, one copy) and against DPDK's vhost backend (testpmd io
# forward, net_vhost with tso=1), alternating, ROUNDS times. Reported per
# backend: the client's Gbit/s (client-bound: one thread writes and reads
# every byte) and Gbit/s per busy data-plane core: bytes x 8 / busy seconds
# of the backend's core (vfnic: engine busy TSC cycles; DPDK: testpmd's
# --record-core-cycles total). Appends to BENCHMARKS.md (APPEND=0 to skip).
# Env: ROUNDS=2 SECS=5
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-2} SECS=${SECS:-5}
VFNIC=${VFNIC:-$REPO/target/release/vfnic}
FLOOD=$REPO/target/release/examples/gso_flood
W=$(mktemp -d /tmp/vfnic-gso.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
(cd "$REPO" && cargo build --release -q && cargo build --release -q -p vfnic-user --example gso_flood)

run_vfnic() {
    local d=$W/v$1
    mkdir -p "$d"
    "$VFNIC" run --run-dir "$d" --engines 1 >"$d/log" 2>&1 & PIDS+=($!)
    for _ in $(seq 100); do [ -S "$d/vfnic.sock" ] && break; sleep 0.1; done
    local a b hz bytes gbps
    a=$("$VFNIC" --run-dir "$d" --json engines | jq '[.engines[].busy_cycles] | add')
    read -r bytes gbps < <("$FLOOD" "$d/vf0.sock" "$d/vf1.sock" "$SECS" | sed -n 's/.*bytes=\([0-9]*\) .*gbps=\([0-9.]*\).*/\1 \2/p')
    b=$("$VFNIC" --run-dir "$d" --json engines | jq '[.engines[].busy_cycles] | add')
    hz=$("$VFNIC" --run-dir "$d" --json engines | jq '.tsc_hz')
    kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
    python3 -c "print(f'$gbps {$bytes*8/(($b-$a)/$hz)/1e9:.1f}')"
}

run_dpdk() {
    local d=$W/d$1
    mkdir -p "$d"
    timeout -k 5 $((SECS + 30)) dpdk-testpmd -l 0,1 --main-lcore 0 -m 1024 --no-pci --file-prefix="gso$$_$1" --huge-unlink \
        --vdev "net_vhost0,iface=$d/vf0.sock,queues=1,tso=1" --vdev "net_vhost1,iface=$d/vf1.sock,queues=1,tso=1" -- \
        --no-mlockall --total-num-mbufs=32768 --forward-mode=io --auto-start --stats-period 5 --record-core-cycles \
        </dev/null >"$d/be.log" 2>&1 & PIDS+=($!)
    for _ in $(seq 100); do [ -S "$d/vf1.sock" ] && break; sleep 0.1; done
    local bytes gbps cyc hz
    read -r bytes gbps < <("$FLOOD" "$d/vf0.sock" "$d/vf1.sock" "$SECS" | sed -n 's/.*bytes=\([0-9]*\) .*gbps=\([0-9.]*\).*/\1 \2/p')
    kill -INT "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
    cyc=$(sed -n 's/.*total cycles=\([0-9]*\) .*/\1/p' "$d/be.log" | tail -1)
    hz=$(sed -n 's/.* at \([0-9]*\) MHz Clock.*/\1/p' "$d/be.log" | tail -1)
    python3 -c "print(f'$gbps {$bytes*8/($cyc/($hz*1e6))/1e9:.1f}')"
}

rows=()
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then v=$(run_vfnic "$r"); d=$(run_dpdk "$r"); else d=$(run_dpdk "$r"); v=$(run_vfnic "$r"); fi
    rows+=("$r $v $d")
    echo "round $r: vfnic $v | dpdk $d (client Gbit/s, Gbit/s per busy core)" >&2
done
TABLE=$(printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics
rows = [l.split() for l in sys.stdin if l.strip()]
print("| round | vfnic client Gbit/s | vfnic Gbit/s per busy core | DPDK client Gbit/s | DPDK Gbit/s per busy core | per-core ratio |")
print("|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {float(r[2])/float(r[4]):.2f} |")
vc = statistics.median(float(r[2]) for r in rows); dc = statistics.median(float(r[4]) for r in rows)
print(f"| median | | {vc:.1f} | | {dc:.1f} | {vc/dc:.2f} |")
')
echo "$TABLE"
if [ "${APPEND:-1}" = 1 ]; then
    {
        echo
        echo "## GSO case: 64 KB TCP segments VF to VF ($(date -u +%Y-%m-%d), commit $(git -C "$REPO" rev-parse --short HEAD))"
        echo
        echo "Command: \`ROUNDS=$ROUNDS SECS=$SECS bash scripts/gso-bench.sh\` (client: crates/user/examples/gso_flood.rs; vfnic: TSO segments passed through unsegmented, one copy; DPDK: testpmd io forward between net_vhost ports with tso=1; per-core figure = bytes x 8 / busy seconds of the data-plane core; $(nproc) cores)."
        echo
        echo "$TABLE"
    } >>"$REPO/BENCHMARKS.md"
fi
