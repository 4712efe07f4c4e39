#!/usr/bin/env bash
# tests/real/qemu_state_test.sh — `vfnic vf set N state disable|enable` on a VF
# used by a real Linux guest (issue 4, acceptance 4).
#
# Two QEMU (TCG) guests on VF0 and VF1 ping each other, so traffic flows both
# ways. Then `vfnic vf set 1 state disable`: nothing crosses VF1 in either
# direction (nothing from VF1 enters the switch, nothing reaches VF1;
# the drops are counted as tx_dropped_link_down / rx_dropped_link_down on
# VF1). `vfnic vf set 1 state enable` brings the traffic back.
# Env: DISABLED_SECS=3, plus lib.sh's.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
DISABLED_SECS=${DISABLED_SECS:-3}

# counter VF NAME [drops]: one counter of a fresh stats snapshot.
counter() {
    local f=$WORK/stats-now.json
    vfnic_stats "$f"
    if [ "${3:-}" = drops ]; then
        jq -r --argjson id "$1" --arg k "$2" '.vfs[] | select(.id == $id) | .drops[$k]' "$f"
    else
        jq -r --argjson id "$1" --arg k "$2" '.vfs[] | select(.id == $id) | .[$k]' "$f"
    fi
}

# wait_rising VF NAME SECS: until VF's counter NAME grows (traffic flows).
wait_rising() {
    local start v end=$((SECONDS + $3))
    start=$(counter "$1" "$2")
    while [ $SECONDS -lt $end ]; do
        v=$(counter "$1" "$2")
        [ "$v" -gt "$start" ] && return 0
        sleep 0.5
    done
    return 1
}

main() {
    real_init qemu_state
    ensure_guest_image
    start_backend
    local kargs="vfnic.role=ping vfnic.pings=400 vfnic.wait=150"
    qemu_guest A 0 180 "" "" vfnic.ip=10.0.0.1/24 vfnic.peer=10.0.0.2 $kargs
    qemu_guest B 1 180 "" "" vfnic.ip=10.0.0.2/24 vfnic.peer=10.0.0.1 $kargs
    # C only listens (untrusted VF2): it must not see A's and B's unicast.
    qemu_guest C 2 180 "" "" vfnic.ip=10.0.0.3/24 vfnic.role=idle vfnic.wait=150
    say "waiting for the guests' pings to flow both ways"
    wait_rising 0 rx_packets 90 || fail "no traffic reached VF0"
    wait_rising 1 rx_packets 30 || fail "no traffic reached VF1"

    "$VFNIC" --run-dir "$RUN" vf set 1 state disable >/dev/null || fail "vf set 1 state disable failed"
    nap 1 # frames already in flight
    local rx0 rx1 txd rxd
    rx0=$(counter 1 tx_packets)
    rx1=$(counter 1 rx_packets)
    txd=$(counter 1 tx_dropped_link_down drops)
    rxd=$(counter 1 rx_dropped_link_down drops)
    nap "$DISABLED_SECS"
    local rx0b rx1b txdb rxdb
    rx0b=$(counter 1 tx_packets)
    rx1b=$(counter 1 rx_packets)
    txdb=$(counter 1 tx_dropped_link_down drops)
    rxdb=$(counter 1 rx_dropped_link_down drops)
    say "disabled for ${DISABLED_SECS}s: VF1 tx +$((rx0b - rx0)), VF1 rx +$((rx1b - rx1)), VF1 tx_dropped_link_down +$((txdb - txd)), rx_dropped_link_down +$((rxdb - rxd))"
    [ "$rx0b" -eq "$rx0" ] || fail "disabled VF1 still sent $((rx0b - rx0)) frames into the switch"
    [ "$rx1b" -eq "$rx1" ] || fail "disabled VF1 still received $((rx1b - rx1)) frames"
    [ "$txdb" -gt "$txd" ] || fail "VF1's frames were not counted as tx_dropped_link_down"
    [ "$rxdb" -gt "$rxd" ] || fail "frames for VF1 were not counted as rx_dropped_link_down"

    "$VFNIC" --run-dir "$RUN" vf set 1 state enable >/dev/null || fail "vf set 1 state enable failed"
    wait_rising 0 rx_packets 15 || fail "traffic from VF1 did not come back after enable"
    wait_rising 1 rx_packets 15 || fail "traffic to VF1 did not come back after enable"

    # Promiscuous mode is PF policy: an untrusted VF gets none of the other
    # VFs' unicast (whatever its guest sets); a trusted VF with promisc on
    # gets a copy of its VLAN's unicast.
    local c0 c1 c2
    c0=$(counter 2 rx_packets)
    nap 3
    c1=$(counter 2 rx_packets)
    [ $((c1 - c0)) -le 2 ] || fail "untrusted VF2 received $((c1 - c0)) frames of A<->B unicast"
    "$VFNIC" --run-dir "$RUN" vf set 2 promisc on >/dev/null 2>&1 && fail "promisc on an untrusted VF was accepted"
    "$VFNIC" --run-dir "$RUN" vf set 2 trust on promisc on >/dev/null || fail "vf set 2 trust on promisc on failed"
    nap 3
    c2=$(counter 2 rx_packets)
    say "VF2 received $((c1 - c0)) frames in 3 s untrusted, $((c2 - c1)) in 3 s trusted+promisc"
    [ $((c2 - c1)) -ge 10 ] || fail "trusted promiscuous VF2 got only $((c2 - c1)) frames of A<->B unicast"
    pass "state disable stopped a guest's traffic both ways (drops counted); enable restored it; promisc only for a trusted VF"
}
main "$@"
