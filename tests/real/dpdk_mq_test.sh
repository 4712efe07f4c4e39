#!/usr/bin/env bash
# tests/real/dpdk_mq_test.sh — multiqueue with RSS through vfnic, real DPDK.
#
# VFs have 2 queue pairs (VIRTIO_NET_F_MQ). A testpmd receiver attaches to
# VF1 with 2 queues (rxonly, --rxq=2); a testpmd sender on VF0 sends many
# flows (txonly with --txonly-multi-flow: the source IP varies per packet).
# Asserts: vfnic spread VF1's receive traffic over both RX queues by flow
# hash (each queue well above zero), and the daemon stayed up.
# Env: RUN_SECS=5, plus lib.sh's.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
RUN_SECS=${RUN_SECS:-5}
export VFNIC_EXTRA_CONFIG="queue_pairs = 2"

main() {
    real_init dpdk_mq
    start_backend
    local mac0 mac1
    mac0=$(vf_mac 0)
    mac1=$(vf_mac 1)
    spawn rx $((RUN_SECS + 30)) dpdk-testpmd -l 1,0 --main-lcore 1 -m 256 --no-pci --in-memory \
        --single-file-segments --file-prefix="mqrx$$" \
        --vdev "net_virtio_user1,path=$RUN/vf1.sock,queues=2,mac=$mac1" -- \
        --no-mlockall --total-num-mbufs=8192 --rxq=2 --txq=2 --forward-mode=rxonly --auto-start --stats-period 2
    wait_for_log rx 'Start automatic packet forwarding|forwards packets on' 30
    spawn tx $((RUN_SECS + 30)) dpdk-testpmd -l 0,1 --main-lcore 0 -m 256 --no-pci --in-memory \
        --single-file-segments --file-prefix="mqtx$$" \
        --vdev "net_virtio_user0,path=$RUN/vf0.sock,queues=1,mac=$mac0" -- \
        --no-mlockall --total-num-mbufs=8192 --forward-mode=txonly --txonly-multi-flow \
        --eth-peer=0,"$mac1" --auto-start --stats-period 2
    wait_for_log tx 'Start automatic packet forwarding|forwards packets on' 30
    nap "$RUN_SECS"
    fail_if_dead rx "while receiving"
    check_backend_alive "while forwarding"
    local stats=$WORK/stats.json q0 q1 total
    vfnic_stats "$stats"
    q0=$(jq -r '.vfs[] | select(.id == 1) | .queues[0].rx_packets' "$stats")
    q1=$(jq -r '.vfs[] | select(.id == 1) | .queues[1].rx_packets' "$stats")
    total=$((q0 + q1))
    say "VF1 received $total frames: queue 0 $q0, queue 1 $q1"
    [ "$total" -gt 1000 ] || fail "too little traffic reached VF1 ($total frames)"
    [ $((q0 * 10)) -gt "$total" ] && [ $((q1 * 10)) -gt "$total" ] ||
        fail "RSS did not spread the flows over both RX queues (queue 0 $q0, queue 1 $q1)"
    pass "flows spread over VF1's 2 RX queues: $q0 / $q1"
}
main "$@"
