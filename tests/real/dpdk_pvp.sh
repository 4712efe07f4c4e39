#!/usr/bin/env bash
# tests/real/dpdk_pvp.sh — DPDK testpmd (virtio-user) through vfnic, VF0 <-> VF1.
#
# One dpdk-testpmd process drives two net_virtio_user ports: port 0 on VF0's
# socket, port 1 on VF1's, each with its VF's MAC. In mac forward mode testpmd
# re-sends what port 0 receives out of port 1 and vice versa, rewriting the
# destination to the other VF's MAC (--eth-peer), so every packet must cross
# vfnic's switch by destination MAC. --tx-first injects one burst per port;
# those packets then circulate for RUN_SECS.
#
# Asserts:
#   * both ports received packets (RX-packets > 0);
#   * (vfnic only) the daemon's counters agree with testpmd's final stats:
#       VFn tx_packets ~= port n TX-packets    (|diff| <= TX_SLACK, one ring)
#       VFn rx_packets >= port n RX-packets     (diff <= RX_SLACK: delivered
#                                               but not yet polled at stop)
#       tx_dropped == rx_dropped == 0 on both VFs (MAX_DROPS to relax)
#   * (vfnic only) both VFs are reported connected, with the default MACs.
#
# Env: ENGINES=1 (vfnic engines)  RUN_SECS=8  TX_SLACK=256  RX_SLACK=512
#      MAX_DROPS=0  BURST=32  plus lib.sh's (BACKEND, VFNIC, NUM_VFS, ...).
set -euo pipefail
. "$(dirname "$0")/lib.sh"

RUN_SECS=${RUN_SECS:-8}
TX_SLACK=${TX_SLACK:-256}
RX_SLACK=${RX_SLACK:-512}
MAX_DROPS=${MAX_DROPS:-0}
BURST=${BURST:-32}

MAC0=$(vf_mac 0)
MAC1=$(vf_mac 1)

# The frontend forwards on core 0 (main lcore 1 only prints stats), leaving
# core 1 to the stand-in switch's poller; vfnic's engines float.
# --in-memory + --single-file-segments: one memfd region in the vhost memory
# table and no files left in /dev/hugepages (22.11 refuses
# --single-file-segments with --huge-unlink).
start_frontend() {
    say "starting testpmd (virtio-user on vf0, vf1) for ${RUN_SECS}s"
    spawn testpmd $((RUN_SECS + 60)) dpdk-testpmd -l 1,0 --main-lcore 1 -m 512 \
        --no-pci --in-memory --single-file-segments --file-prefix="vfpvp$$" \
        --vdev "net_virtio_user0,path=$RUN/vf0.sock,queues=1,mac=$MAC0" \
        --vdev "net_virtio_user1,path=$RUN/vf1.sock,queues=1,mac=$MAC1" \
        -- --no-mlockall --total-num-mbufs=16384 --burst="$BURST" \
        --forward-mode=mac --eth-peer=0,"$MAC1" --eth-peer=1,"$MAC0" \
        --tx-first --stats-period 1 --auto-start
}

# parse_final_stats LOG: prints "port rx rx_dropped tx tx_dropped" for each
# "Forward statistics for port N" block testpmd prints when it stops.
parse_final_stats() {
    tr -d '\r' <"$1" | awk '
        /Forward statistics for port/ {
            for (i = 1; i <= NF; i++) if ($i == "port") port = $(i + 1)
            next
        }
        /Accumulated forward statistics/ { port = "" }
        port != "" && /RX-packets:/ { rx[port] = $2; rxd[port] = $4 }
        port != "" && /TX-packets:/ { tx[port] = $2; txd[port] = $4 }
        END { for (p in rx) print p, rx[p], rxd[p], tx[p], txd[p] }' | sort -n
}

# periodic_mpps LOG PORT: median of the per-second Rx-pps samples of PORT,
# leaving out the first (ramp-up), in Mpps.
periodic_mpps() {
    tr -d '\r' <"$1" | awk -v p="$2" '
        /NIC statistics for port/ { for (i = 1; i <= NF; i++) if ($i == "port") cur = $(i + 1) }
        cur == p && /Rx-pps:/ { print $2 }' |
        tail -n +2 | sort -n |
        awk '{ a[NR] = $1 } END { printf "%.2f", NR ? a[int((NR + 1) / 2)] / 1e6 : 0 }'
}

abs() { local v=$1; echo $((v < 0 ? -v : v)); }

check_vfnic_counters() {
    local stats=$WORK/stats-final.json vf port tx rx txd rxd vtx vrx
    vfnic_stats "$stats"
    for vf in 0 1; do say "vfnic: $(vf_summary "$stats" "$vf")"; done
    for vf in 0 1; do
        port=$vf
        read -r _ rx _ tx _ < <(grep "^$port " "$WORK/final.txt")
        vtx=$(vf_field "$stats" "$vf" tx_packets)
        vrx=$(vf_field "$stats" "$vf" rx_packets)
        txd=$(vf_field "$stats" "$vf" tx_dropped)
        rxd=$(vf_field "$stats" "$vf" rx_dropped)
        [ "$(abs $((vtx - tx)))" -le "$TX_SLACK" ] ||
            fail "VF$vf tx_packets=$vtx but testpmd port $port TX-packets=$tx (slack $TX_SLACK)"
        [ "$vrx" -ge "$rx" ] ||
            fail "VF$vf rx_packets=$vrx < testpmd port $port RX-packets=$rx"
        [ $((vrx - rx)) -le "$RX_SLACK" ] ||
            fail "VF$vf rx_packets=$vrx exceeds testpmd port $port RX-packets=$rx by more than $RX_SLACK"
        [ "$txd" -le "$MAX_DROPS" ] && [ "$rxd" -le "$MAX_DROPS" ] ||
            fail "VF$vf dropped packets: tx_dropped=$txd rx_dropped=$rxd (max $MAX_DROPS)"
    done
    say "vfnic counters agree with testpmd"
}

main() {
    local mid=""
    real_init "dpdk_pvp-e$ENGINES"
    start_backend
    start_frontend

    # Let traffic run; half way, check the daemon sees both tenants.
    wait_for_log testpmd 'Start automatic packet forwarding|Start Packet Forwarding|forwards packets on' 30
    local t_start=$SECONDS
    nap $((RUN_SECS / 2))
    fail_if_dead testpmd "while forwarding"
    check_backend_alive "while testpmd was forwarding"
    if is_vfnic; then
        mid=$WORK/stats-mid.json
        vfnic_stats "$mid"
        check_vfs_connected "$mid" 0 1
        say "mid-run: $(vf_summary "$mid" 0); $(vf_summary "$mid" 1)"
    fi
    nap $((RUN_SECS - RUN_SECS / 2))
    fail_if_dead testpmd "while forwarding"
    local fwd_secs=$((SECONDS - t_start))

    # SIGTERM: testpmd stops forwarding and prints its final statistics.
    stop_proc testpmd 20
    [ "$EXIT_RC" -ne 124 ] || fail "testpmd hit its own timeout"
    check_backend_alive "after testpmd disconnected"
    parse_final_stats "$WORK/testpmd.log" >"$WORK/final.txt"
    [ "$(wc -l <"$WORK/final.txt")" -eq 2 ] ||
        fail "could not parse testpmd's final 'Forward statistics' for ports 0 and 1"

    local port rx rxd tx txd total_rx=0
    while read -r port rx rxd tx txd; do
        say "testpmd port $port: RX-packets=$rx RX-dropped=$rxd TX-packets=$tx TX-dropped=$txd"
        [ "$rx" -gt 0 ] || fail "port $port received nothing"
        total_rx=$((total_rx + rx))
    done <"$WORK/final.txt"

    if is_vfnic; then
        check_vfnic_counters
    else
        say "BACKEND=$BACKEND: vfnic counter checks skipped"
    fi

    local m0 m1
    m0=$(periodic_mpps "$WORK/testpmd.log" 0)
    m1=$(periodic_mpps "$WORK/testpmd.log" 1)
    pass "$(printf 'backend=%s engines=%s rx_total=%d in ~%ds, median Mpps port0=%s port1=%s total=%.2f' \
        "$BACKEND" "$ENGINES" "$total_rx" "$fwd_secs" "$m0" "$m1" "$(echo "$m0 $m1" | awk '{print $1 + $2}')")"
}

main "$@"
