#!/usr/bin/env bash
# tests/real/dpdk_pvp.sh — DPDK testpmd (virtio-user) through vfnic, VF0 <-> VF1.
#
# One dpdk-testpmd process drives two net_virtio_user ports: port 0 on VF0's
# socket, port 1 on VF1's, each with its VF's MAC. In mac forward mode testpmd
# re-sends what port 0 receives out of port 1 and vice versa, rewriting the
# destination to the other VF's MAC (--eth-peer), so every packet must cross
# vfnic's switch by destination MAC. `start tx_first` injects one burst per
# port; those packets then circulate for RUN_SECS.
#
# testpmd runs interactively, fed through a fifo, so the test can stop the
# traffic, let vfnic drain, and read both sides' counters while the tenants
# are still connected; only then does it quit. (Killing a forwarding testpmd
# instead races the teardown: a burst still inside vfnic finds its
# destination VF gone and is dropped, which is correct but not what we test.)
#
# Asserts:
#   * both ports received packets (RX-packets > 0);
#   * testpmd quits cleanly and the switch survives the disconnect;
#   * (vfnic only) after the drain, with both tenants connected, the daemon's
#     counters agree with testpmd's final "Forward statistics":
#       VFn tx_packets ~= port n TX-packets    (|diff| <= TX_SLACK, one ring)
#       VFn rx_packets >= port n RX-packets     (diff <= RX_SLACK: delivered
#                                               into the ring but not polled)
#       tx_dropped == rx_dropped == 0 on both VFs (MAX_DROPS to relax)
#   * (vfnic only) both VFs connected with the default MACs while running,
#     reported disconnected after testpmd quit, counters unchanged by it.
#
# Env: ENGINES=1 (vfnic engines)  RUN_SECS=8  DRAIN_SECS=1  TX_SLACK=256
#      RX_SLACK=512  MAX_DROPS=0  BURST=32
#      plus lib.sh's (BACKEND, VFNIC, NUM_VFS, KEEP, ...).
set -euo pipefail
# shellcheck source=tests/real/lib.sh
. "$(dirname "$0")/lib.sh"

RUN_SECS=${RUN_SECS:-8}
TX_SLACK=${TX_SLACK:-256}
RX_SLACK=${RX_SLACK:-512}
MAX_DROPS=${MAX_DROPS:-0}
DRAIN_SECS=${DRAIN_SECS:-1}
BURST=${BURST:-32}

MAC0=$(vf_mac 0)
MAC1=$(vf_mac 1)

# The frontend forwards on core 0 (main lcore 1 runs the command line),
# leaving core 1 to the stand-in switch's poller; vfnic's engines float.
# --in-memory + --single-file-segments: one memfd region in the vhost memory
# table and no files left in /dev/hugepages (22.11 refuses
# --single-file-segments with --huge-unlink).
start_frontend() {
    say "starting testpmd (virtio-user on vf0, vf1) for ${RUN_SECS}s"
    mkfifo "$WORK/testpmd.in"
    # stdbuf: stdout is a file, so testpmd would otherwise block-buffer it and
    # the answers to our commands would only show up at exit.
    SPAWN_STDIN="$WORK/testpmd.in" spawn testpmd $((RUN_SECS + 60)) stdbuf -oL dpdk-testpmd \
        -l 1,0 --main-lcore 1 -m 512 \
        --no-pci --in-memory --single-file-segments --file-prefix="vfpvp$$" \
        --vdev "net_virtio_user0,path=$RUN/vf0.sock,queues=1,mac=$MAC0${VUARGS:-}" \
        --vdev "net_virtio_user1,path=$RUN/vf1.sock,queues=1,mac=$MAC1${VUARGS:-}" \
        -- -i --no-mlockall --total-num-mbufs=16384 --burst="$BURST" \
        --forward-mode=mac --eth-peer=0,"$MAC1" --eth-peer=1,"$MAC0"
    # Read-write open never blocks (a write-only one would hang until testpmd
    # opened its end, forever if it failed to start) and lets testpmd's
    # read-side open complete.
    exec {TP_IN}<>"$WORK/testpmd.in"
}

# tp CMD: type a command at testpmd's prompt.
tp() { echo "$*" >&"$TP_IN"; }

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

# periodic_mpps LOG PORT: Rx-pps of PORT from `show port stats`, leaving out
# the first sample (that call only starts the measurement interval), in Mpps.
periodic_mpps() {
    tr -d '\r' <"$1" | awk -v p="$2" '
        /NIC statistics for port/ { for (i = 1; i <= NF; i++) if ($i == "port") cur = $(i + 1) }
        cur == p && /Rx-pps:/ { print $2 }' |
        tail -n +2 | sort -n |
        awk '{ a[NR] = $1 } END { printf "%.2f", NR ? a[int((NR + 1) / 2)] / 1e6 : 0 }'
}

abs() { local v=$1; echo $((v < 0 ? -v : v)); }

# check_vfnic_counters STATS: compare a snapshot taken after the drain with
# testpmd's final statistics (WORK/final.txt).
check_vfnic_counters() {
    local stats=$1 vf port rx tx txd rxd vtx vrx
    for vf in 0 1; do say "vfnic: $(vf_summary "$stats" "$vf")"; done
    check_vfs_connected "$stats" 0 1
    for vf in 0 1; do
        port=$vf
        read -r _ rx _ tx _ < <(grep "^$port " "$WORK/final.txt")
        vf_get vtx "$stats" "$vf" tx_packets
        vf_get vrx "$stats" "$vf" rx_packets
        vf_get txd "$stats" "$vf" tx_dropped
        vf_get rxd "$stats" "$vf" rx_dropped
        [ "$(abs $((vtx - tx)))" -le "$TX_SLACK" ] ||
            fail "VF$vf tx_packets=$vtx but testpmd port $port TX-packets=$tx (slack $TX_SLACK)"
        [ "$vrx" -ge "$rx" ] ||
            fail "VF$vf rx_packets=$vrx < testpmd port $port RX-packets=$rx"
        [ $((vrx - rx)) -le "$RX_SLACK" ] ||
            fail "VF$vf rx_packets=$vrx exceeds testpmd port $port RX-packets=$rx by more than $RX_SLACK"
        [ "$txd" -le "$MAX_DROPS" ] && [ "$rxd" -le "$MAX_DROPS" ] ||
            fail "VF$vf dropped packets: tx_dropped=$txd rx_dropped=$rxd (max $MAX_DROPS)"
        # Notification suppression with a polling driver: testpmd sets
        # NO_INTERRUPT (or disables events on a packed ring), so vfnic must
        # never interrupt it; and while the engine polls it suppresses kicks,
        # so doorbells are rare next to the frames sent.
        local irqs kicks
        vf_get irqs "$stats" "$vf" interrupts
        vf_get kicks "$stats" "$vf" kicks
        [ "$irqs" -eq 0 ] || fail "VF$vf: $irqs interrupts sent to a polling driver"
        [ $((kicks * 100)) -le "$vtx" ] ||
            fail "VF$vf: $kicks kicks for $vtx frames: kick suppression not honoured"
        say "VF$vf: $kicks kicks and $irqs interrupts for $vtx frames sent"
    done
    say "vfnic counters agree with testpmd"
}

# counters VF STATS: the VF's traffic counters on one line, for comparisons.
counters() {
    jq -c --argjson id "$1" '.vfs[] | select(.id == $id) |
        [.tx_packets, .tx_bytes, .rx_packets, .rx_bytes, .tx_dropped, .rx_dropped]' "$2"
}

# After testpmd quit: both VFs reported disconnected (within 5 s), and the
# counters left as they were (no traffic without tenants).
check_vfnic_after_quit() {
    local before=$1 after=$WORK/stats-after-quit.json vf tries=0 c0 c1
    while :; do
        vfnic_stats "$after"
        vf_get c0 "$after" 0 connected
        vf_get c1 "$after" 1 connected
        [ "$c0" = false ] && [ "$c1" = false ] && break
        tries=$((tries + 1))
        [ $tries -lt 25 ] || fail "vfnic still reports a VF connected 5 s after testpmd quit"
        sleep 0.2
    done
    for vf in 0 1; do
        [ "$(counters "$vf" "$before")" = "$(counters "$vf" "$after")" ] ||
            fail "VF$vf counters changed after testpmd quit: $(counters "$vf" "$before") -> $(counters "$vf" "$after")"
    done
    say "after quit: VFs disconnected, counters unchanged"
}

main() {
    real_init "dpdk_pvp-e$ENGINES"
    start_backend
    start_frontend

    # (--tx-first is refused with -i; `start tx_first` is its interactive form)
    wait_for_log testpmd 'testpmd> ' 30
    tp start tx_first
    wait_for_log testpmd 'forwards packets on' 10
    # The first `show port stats` starts the rate interval; the last ends it.
    nap 1
    tp show port stats all
    local t_start=$SECONDS
    nap $((RUN_SECS / 2))
    fail_if_dead testpmd "while forwarding"
    check_backend_alive "while testpmd was forwarding"
    if is_vfnic; then
        vfnic_stats "$WORK/stats-mid.json"
        check_vfs_connected "$WORK/stats-mid.json" 0 1
        say "mid-run: $(vf_summary "$WORK/stats-mid.json" 0); $(vf_summary "$WORK/stats-mid.json" 1)"
    fi
    nap $((RUN_SECS - RUN_SECS / 2))
    fail_if_dead testpmd "while forwarding"
    tp show port stats all
    local fwd_secs=$((SECONDS - t_start))

    # Stop forwarding (testpmd prints its final statistics), let vfnic
    # finish what is in flight, then read its counters: both tenants still up.
    tp stop
    wait_for_log testpmd 'Accumulated forward statistics' 20
    nap "$DRAIN_SECS"
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
        vfnic_stats "$WORK/stats-final.json"
        check_vfnic_counters "$WORK/stats-final.json"
    else
        say "BACKEND=$BACKEND: vfnic counter checks skipped"
    fi

    tp quit
    wait_exit testpmd 20 || fail "testpmd did not quit within 20 s"
    [ "$EXIT_RC" -eq 0 ] || fail "testpmd quit with status $EXIT_RC"
    check_backend_alive "after testpmd disconnected"
    if is_vfnic; then check_vfnic_after_quit "$WORK/stats-final.json"; fi

    local m0 m1
    m0=$(periodic_mpps "$WORK/testpmd.log" 0)
    m1=$(periodic_mpps "$WORK/testpmd.log" 1)
    pass "$(printf 'backend=%s engines=%s rx_total=%d over ~%ds; Mpps port0=%s port1=%s total=%.2f' \
        "$BACKEND" "$ENGINES" "$total_rx" "$fwd_secs" "$m0" "$m1" "$(echo "$m0 $m1" | awk '{print $1 + $2}')")"
}

main "$@"
