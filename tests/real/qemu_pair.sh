#!/usr/bin/env bash
# tests/real/qemu_pair.sh — two QEMU/TCG Linux guests talking through vfnic.
#
#   guest A: VF0, 10.0.0.1, iperf3 server (one test)
#   guest B: VF1, 10.0.0.2, pings A (0% loss required) then
#            iperf3 -c A -n $IPERF_BYTES (JSON result): rc 0, all of
#            IPERF_BYTES sent, and at least MIN_RECV_BYTES counted by the
#            server. (The server stops counting at the client's TEST_END, so
#            data still in flight then is not in its total: it reads a few MB
#            under what was sent, hence a separate floor, 100 MB decimal.)
# QEMU 7.2 is the vhost-user client of the VF sockets. Each guest's NIC has
# its VF's MAC, so vfnic's MAC switching delivers A<->B frames.
#
# Facts this relies on (QEMU 7.2 + TCG):
#   * KVM is not usable on these hosts (nested PVM) -> -accel tcg;
#   * MSI-X on virtio-net-pci crashes QEMU 7.2 under TCG once vhost-user
#     starts -> vectors=0 (INTx);
#   * the backend maps guest memory -> memfd backend with share=on.
#
# Env: GUEST_DIR=.cache/guest (built by scripts/build-guest.sh if missing)
#      IPERF_BYTES=100M  MIN_RECV_BYTES=100000000  PINGS=10  TOTAL_SECS=240
#      QEMU=qemu-system-x86_64
#      GUEST_MEM=256 (MiB)  plus lib.sh's (BACKEND, VFNIC, NUM_VFS, ...).
set -euo pipefail
# shellcheck source=tests/real/lib.sh
. "$(dirname "$0")/lib.sh"

GUEST_DIR=${GUEST_DIR:-$REPO_ROOT/.cache/guest}
IPERF_BYTES=${IPERF_BYTES:-100M}
MIN_RECV_BYTES=${MIN_RECV_BYTES:-100000000}
PINGS=${PINGS:-10}
TOTAL_SECS=${TOTAL_SECS:-240}
QEMU=${QEMU:-qemu-system-x86_64}
GUEST_MEM=${GUEST_MEM:-256}

IP_A=10.0.0.1
IP_B=10.0.0.2

ensure_guest() {
    if [ ! -s "$GUEST_DIR/vmlinuz" ] || [ ! -s "$GUEST_DIR/initrd.gz" ]; then
        say "no guest image in $GUEST_DIR: building it"
        bash "$REPO_ROOT/scripts/build-guest.sh" "$GUEST_DIR" >"$WORK/build-guest.log" 2>&1 ||
            fail "scripts/build-guest.sh failed"
    fi
}

# start_guest NAME VF KERNEL_ARGS...: one TCG guest on RUN/vfVF.sock.
start_guest() {
    local name=$1 vf=$2
    shift 2
    spawn "$name" "$TOTAL_SECS" "$QEMU" \
        -M pc,memory-backend=mem -accel tcg -cpu max -smp 1 -m "$GUEST_MEM" \
        -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
        -kernel "$GUEST_DIR/vmlinuz" -initrd "$GUEST_DIR/initrd.gz" \
        -append "console=ttyS0 quiet panic=-1 $*" \
        -object "memory-backend-memfd,id=mem,size=${GUEST_MEM}M,share=on" \
        -chardev "socket,id=vhu,path=$RUN/vf$vf.sock" \
        -netdev vhost-user,id=net0,chardev=vhu \
        -device "virtio-net-pci,netdev=net0,mac=$(vf_mac "$vf"),vectors=0,romfile="
}

# Virtio-net feature bit string (bit 0 first, as sysfs prints it) -> hex + names.
decode_features() {
    local hex
    hex=$(awk -v b="$1" 'BEGIN {
        hi = 0; lo = 0
        for (i = 0; i < length(b); i++) {
            if (substr(b, i + 1, 1) != "1") continue
            if (i < 32) lo += 2 ^ i; else hi += 2 ^ (i - 32)
        }
        printf "0x%x%08x", hi, lo
    }')
    printf '%s %s' "$hex" "$(virtio_features_names "$1")"
}

# Check the client's ping and iperf3 results; prints the summary fields.
check_client() {
    local log=$WORK/B.console json=$WORK/iperf.json loss sent recv mbps retr
    grep -q '^VFNIC-PEER-REACHABLE' "$log" || fail "guest B never reached guest A"
    loss=$(grep -aoE '[0-9]+% packet loss' "$log" | head -1)
    grep -q '^PING-RC 0$' "$log" && [ "$loss" = "0% packet loss" ] ||
        fail "ping B->A: ${loss:-no result} ($(grep -a '^PING-RC' "$log" || echo 'no PING-RC'))"
    say "ping: $(grep -a 'round-trip' "$log" || true) ($loss)"

    grep -q '^IPERF-RC ' "$log" || fail "iperf3 client did not finish"
    sed -n '/^IPERF-JSON-BEGIN$/,/^IPERF-JSON-END$/p' "$log" | sed '1d;$d' >"$json"
    jq -e . "$json" >/dev/null 2>&1 || fail "iperf3 JSON output unreadable (see $json)"
    grep -q '^IPERF-RC 0$' "$log" ||
        fail "iperf3 failed: $(grep -a '^IPERF-RC' "$log"), error: $(jq -r '.error // "-"' "$json")"
    sent=$(jq -r '.end.sum_sent.bytes // 0' "$json")
    recv=$(jq -r '.end.sum_received.bytes // 0' "$json")
    mbps=$(jq -r '(.end.sum_received.bits_per_second // 0) / 1e6 | floor' "$json")
    retr=$(jq -r '.end.sum_sent.retransmits // 0' "$json")
    [ "$sent" -ge "$IPERF_MIN_BYTES" ] && [ "$recv" -ge "$MIN_RECV_BYTES" ] ||
        fail "iperf3 moved too little: sent=$sent (need $IPERF_MIN_BYTES) received=$recv (need $MIN_RECV_BYTES)"
    IPERF_RECV=$recv
    say "iperf3: sent=$sent received=$recv bytes, $mbps Mbit/s, $retr retransmits"
    IPERF_SUMMARY="iperf3 ${recv}B ${mbps}Mbit/s retr=$retr"
}

# iperf3 size suffixes are binary (100M = 100 MiB).
to_bytes() {
    local v=$1
    case "$v" in
        *K) echo $((${v%K} * 1024)) ;;
        *M) echo $((${v%M} * 1024 * 1024)) ;;
        *G) echo $((${v%G} * 1024 * 1024 * 1024)) ;;
        *) echo "$v" ;;
    esac
}

check_vfnic_after() {
    local stats=$WORK/stats-final.json v b1_tx b0_rx p0_tx p1_rx
    vfnic_stats "$stats"
    for v in 0 1; do say "vfnic: $(vf_summary "$stats" "$v")"; done
    vf_get b1_tx "$stats" 1 tx_bytes
    vf_get b0_rx "$stats" 0 rx_bytes
    vf_get p0_tx "$stats" 0 tx_packets
    vf_get p1_rx "$stats" 1 rx_packets
    # Every payload byte A's server counted entered vfnic on VF1 and left it
    # on VF0 (frame headers only add to the counters).
    [ "$b1_tx" -ge "$IPERF_RECV" ] || fail "VF1 tx_bytes=$b1_tx, below the $IPERF_RECV bytes iperf3 received"
    [ "$b0_rx" -ge "$IPERF_RECV" ] || fail "VF0 rx_bytes=$b0_rx, below the $IPERF_RECV bytes iperf3 received"
    [ "$p0_tx" -gt 0 ] || fail "VF0 sent nothing (ACKs expected)"
    [ "$p1_rx" -gt 0 ] || fail "VF1 received nothing (ACKs expected)"
    # Offloads: the guests negotiate TSO and checksum offload both ways, so
    # the stream crosses vfnic as large segments, unsegmented (one copy).
    local p1_tx gso
    vf_get p1_tx "$stats" 1 tx_packets
    vf_get gso "$stats" 0 gso_passed
    [ "$gso" -gt 0 ] || fail "no GSO segment was passed through to VF0 (offloads not negotiated?)"
    [ $((p1_tx * 1514)) -lt $((b1_tx / 4)) ] ||
        fail "VF1 sent $p1_tx frames for $b1_tx bytes: the stream was not carried in large segments"
    say "offloads: $b1_tx bytes in $p1_tx frames ($((b1_tx / p1_tx)) B average), $gso GSO segments passed through unsegmented"
    # The data-plane core's cost: busy TSC cycles of the engines (for
    # scripts/guest-bench.sh's Gbit/s per data-plane core).
    local eng
    eng=$("$VFNIC" --run-dir "$RUN" --json engines 2>/dev/null |
        jq -r '"busy_cycles=\([.engines[].busy_cycles] | add) tsc_hz=\(.tsc_hz)"' 2>/dev/null || true)
    [ -n "$eng" ] && say "engines: $eng"
}

main() {
    IPERF_MIN_BYTES=$(to_bytes "$IPERF_BYTES")
    real_init qemu_pair
    ensure_guest
    start_backend

    # Guests give up a little before the host does, so their output is complete.
    local gwait=$((TOTAL_SECS > 40 ? TOTAL_SECS - 20 : 20))
    local common="vfnic.pings=$PINGS vfnic.wait=$gwait"
    start_guest A 0 "vfnic.ip=$IP_A/24 vfnic.role=server $common"
    start_guest B 1 "vfnic.ip=$IP_B/24 vfnic.peer=$IP_A vfnic.role=client vfnic.bytes=$IPERF_BYTES $common"

    wait_guests_up

    wait_guests_done "$TOTAL_SECS"
    guest_console A >"$WORK/A.console"
    guest_console B >"$WORK/B.console"
    grep -q '^VFNIC-GUEST-DONE' "$WORK/B.console" || fail "guest B did not reach VFNIC-GUEST-DONE"

    local fa fb
    fa=$(awk '/^VFNIC-GUEST-FEATURES/ {print $2}' "$WORK/A.console")
    fb=$(awk '/^VFNIC-GUEST-FEATURES/ {print $2}' "$WORK/B.console")
    say "guest A features: $(decode_features "$fa")"
    say "guest B features: $(decode_features "$fb")"

    check_client
    if is_vfnic; then
        check_vfnic_after
    else
        say "BACKEND=$BACKEND: vfnic counter checks skipped"
    fi
    pass "backend=$BACKEND $IPERF_SUMMARY, ping 0% loss"
}

main "$@"
