#!/usr/bin/env bash
# scripts/guest-bench.sh — guest-to-guest TCP through vfnic vs through DPDK.
#
# Runs tests/real/qemu_pair.sh (two QEMU TCG Linux guests, iperf3 of IPERF
# bytes) alternately with BACKEND=vfnic (offloads negotiated: TSO segments
# cross vfnic unsegmented) and BACKEND=testpmd (DPDK's vhost io-forward
# switch: no HOST_TSO by default, so the guests send MTU-sized frames), ROUNDS
# times, and prints each run's Mbit/s, frames per MB through the switch, and
# the vfnic/DPDK ratio per round and of the medians. Appends the table and
# the exact command to BENCHMARKS.md (APPEND=0 to skip).
# Env: ROUNDS=3 IPERF=100M
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=${ROUNDS:-3}
IPERF=${IPERF:-100M}
OUT=$(mktemp -d /tmp/vfnic-guest-bench.XXXXXX)
trap 'rm -rf "$OUT"' EXIT

run_one() { # BACKEND ROUND -> prints "Mbit/s retransmits"
    local log="$OUT/$1-$2.log"
    BACKEND=$1 IPERF_BYTES=$IPERF bash "$REPO/tests/real/qemu_pair.sh" >"$log" 2>&1 ||
        { echo "FAIL"; return 0; }
    sed -n 's/.*iperf3: sent=.* bytes, \([0-9.]*\) Mbit\/s, \([0-9]*\) retransmits.*/\1 \2/p' "$log" | tail -1
    # vfnic: bytes through the switch per busy second of the engine core.
    if [ "$1" = vfnic ]; then
        local bytes cyc hz
        bytes=$(sed -n 's/.*offloads: \([0-9]*\) bytes in.*/\1/p' "$log" | tail -1)
        cyc=$(sed -n 's/.*engines: busy_cycles=\([0-9]*\) tsc_hz=.*/\1/p' "$log" | tail -1)
        hz=$(sed -n 's/.*engines: busy_cycles=[0-9]* tsc_hz=\([0-9]*\).*/\1/p' "$log" | tail -1)
        [ -n "$bytes" ] && [ -n "$cyc" ] && [ "$cyc" -gt 0 ] &&
            python3 -c "print(f'{$bytes*8/($cyc/$hz)/1e9:.1f}')" >"$OUT/core-$2"
    fi
}

rows=()
CORE=()
for r in $(seq "$ROUNDS"); do
    # Alternate which goes first, so neither always gets the warmer machine.
    if [ $((r % 2)) = 1 ]; then order="vfnic testpmd"; else order="testpmd vfnic"; fi
    declare -A res=()
    for b in $order; do res[$b]=$(run_one "$b" "$r"); done
    rows+=("$r ${res[vfnic]} ${res[testpmd]}")
    echo "round $r: vfnic ${res[vfnic]} | testpmd ${res[testpmd]} | vfnic engine Gbit/s per busy core $(cat "$OUT/core-$r" 2>/dev/null || echo n/a)" >&2
    CORE+=("$(cat "$OUT/core-$r" 2>/dev/null || echo n/a)")
done

TABLE=$(printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics
rows = [l.split() for l in sys.stdin if l.strip()]
print("| round | vfnic Mbit/s (retr) | DPDK vhost io-fwd Mbit/s (retr) | ratio |")
print("|---|---|---|---|")
v, d = [], []
for r in rows:
    if "FAIL" in r:
        print(f"| {r[0]} | run failed | | |"); continue
    rnd, vm, vr, dm, dr = r[0], float(r[1]), r[2], float(r[3]), r[4]
    v.append(vm); d.append(dm)
    print(f"| {rnd} | {vm:.0f} ({vr}) | {dm:.0f} ({dr}) | {vm/dm:.2f} |")
if v and d:
    print(f"| median | {statistics.median(v):.0f} | {statistics.median(d):.0f} | {statistics.median(v)/statistics.median(d):.2f} |")
')
echo "$TABLE"
if [ "${APPEND:-1}" = 1 ]; then
    {
        echo
        echo "## Guest-to-guest TCP, vfnic vs DPDK vhost switch ($(date -u +%Y-%m-%d), commit $(git -C "$REPO" rev-parse --short HEAD))"
        echo
        echo "Command: \`ROUNDS=$ROUNDS IPERF=$IPERF bash scripts/guest-bench.sh\` (two QEMU 7.2 TCG guests, 1 vCPU each, one iperf3 TCP stream of $IPERF; vfnic with TSO/checksum offloads negotiated, the DPDK anchor without host TSO; $(nproc) cores)."
        echo
        echo "$TABLE"
        echo
        echo "vfnic engine throughput per busy data-plane core (bytes switched x 8 / engine busy seconds; the guests' TSO segments pass through unsegmented), per round: ${CORE[*]} Gbit/s."
    } >>"$REPO/BENCHMARKS.md"
fi
