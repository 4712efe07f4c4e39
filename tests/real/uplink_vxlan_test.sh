#!/usr/bin/env bash
# tests/real/uplink_vxlan_test.sh — VXLAN uplinks (issue 6, acceptance 2, 6, 1).
#
# Namespaces made here, joined by veth pairs:
#   A: vfnic, VXLAN uplink (VNI 42, local 10.78.0.1) to B and to C
#   B: a Linux kernel vxlan device (`ip link add vx0 type vxlan id 42
#      dstport 4789 remote 10.78.0.1`) with 192.168.78.1/24
#   C: a second vfnic host (local 10.78.0.3), VXLAN to A
# Checks:
#   1. interop: a VF on A (192.168.78.2) pings the Linux vxlan address in B;
#   2. two vfnic hosts: a VF on C (192.168.78.3) does the same; both hosts
#      replicate floods to every remote (head-end) and the uplink counters
#      of both daemons move with the traffic;
#   3. bad input from the wire (truncated header, wrong VNI, runt frame,
#      bad flags) is dropped and counted, and the daemon lives on.
# The VF->uplink direction needs the engines to call uplink::egress.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/uplink_lib.sh"

uplink_init uplink_vxlan
[ -x "$VFNIC" ] || fail "vfnic binary not found at $VFNIC (cargo build --release)"
ns_add a
ns_add b
ns_add c
ip link add br0 netns "$(ns b)" type bridge
ip -n "$(ns b)" link set br0 up
ip -n "$(ns b)" addr add 10.78.0.2/24 dev br0
for h in a c; do
    ip link add "u$h" netns "$(ns "$h")" type veth peer name "p$h" netns "$(ns b)"
    ip -n "$(ns b)" link set "p$h" master br0 up
done
ip -n "$(ns a)" addr add 10.78.0.1/24 dev ua
ip -n "$(ns a)" link set ua up
ip -n "$(ns c)" addr add 10.78.0.3/24 dev uc
ip -n "$(ns c)" link set uc up
# B: the Linux VTEP, toward both vfnic hosts (head-end replication, as ours).
ip -n "$(ns b)" link add vx0 type vxlan id 42 dstport 4789 local 10.78.0.2 nolearning
ip -n "$(ns b)" link set vx0 address 02:42:42:00:00:01
bridge -n "$(ns b)" fdb append 00:00:00:00:00:00 dev vx0 dst 10.78.0.1
bridge -n "$(ns b)" fdb append 00:00:00:00:00:00 dev vx0 dst 10.78.0.3
ip -n "$(ns b)" addr add 192.168.78.1/24 dev vx0
ip -n "$(ns b)" link set vx0 up

uplink_cfg() {
    printf 'num_vfs = 2\nengines = 1\n[[uplink]]\nname = "vx"\nkind = "vxlan"\nvni = 42\nlocal = "%s"\nremotes = [%s]\n' "$1" "$2"
}
start_vfnic_in a vfnic_a "$(uplink_cfg 10.78.0.1 '"10.78.0.2", "10.78.0.3"')"
start_vfnic_in c vfnic_c "$(uplink_cfg 10.78.0.3 '"10.78.0.2", "10.78.0.1"')"
say "daemons up in $(ns a) and $(ns c)"

# 1. Interop with the kernel's vxlan.
vf_ping "$WORK/vfnic_a/vf0.sock" 192.168.78.2 192.168.78.1 5
# 2. The other vfnic host, through the same VNI.
vf_ping "$WORK/vfnic_c/vf0.sock" 192.168.78.3 192.168.78.1 5
uplink_counter a_tx "$WORK/vfnic_a" vx tx_packets
uplink_counter a_rx "$WORK/vfnic_a" vx rx_packets
uplink_counter c_tx "$WORK/vfnic_c" vx tx_packets
uplink_counter c_rx "$WORK/vfnic_c" vx rx_packets
say "host A uplink: tx=$a_tx rx=$a_rx; host C uplink: tx=$c_tx rx=$c_rx"
[ "$a_tx" -ge 6 ] && [ "$a_rx" -ge 5 ] || fail "host A's uplink counters did not move with the pings"
[ "$c_tx" -ge 6 ] && [ "$c_rx" -ge 5 ] || fail "host C's uplink counters did not move with the pings"

# 3. Bad input from the wire, sent from B's address.
ip netns exec "$(ns b)" python3 - <<'PY'
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("10.78.0.2", 0))
to = ("10.78.0.1", 4789)
good = bytes([0x08, 0, 0, 0, 0, 0, 42, 0])
frame = bytes([0xff] * 6 + [2, 0xbb, 0, 0, 0, 1] + [0x88, 0xb5] + [0] * 46)
s.sendto(good[:5], to)                                   # truncated header
s.sendto(bytes([0x08, 0, 0, 0, 0, 0, 43, 0]) + frame, to) # wrong VNI
s.sendto(good + frame[:10], to)                           # runt inner frame
s.sendto(bytes([0x00, 0, 0, 0, 0, 0, 42, 0]) + frame, to) # no I flag
PY
end=$((SECONDS + 10))
while :; do
    uplink_counter t "$WORK/vfnic_a" vx rx_dropped_truncated
    uplink_counter v "$WORK/vfnic_a" vx rx_dropped_wrong_vni
    uplink_counter r "$WORK/vfnic_a" vx rx_dropped_runt
    uplink_counter f "$WORK/vfnic_a" vx rx_dropped_bad_flags
    [ "$t$v$r$f" = 1111 ] && break
    [ $SECONDS -lt $end ] || fail "bad input not counted: truncated=$t wrong_vni=$v runt=$r bad_flags=$f"
    sleep 0.2
done
fail_if_dead vfnic_a "after bad input"
timeout 10 "$VFNIC" --run-dir "$WORK/vfnic_a" uplink list
vf_ping "$WORK/vfnic_a/vf0.sock" 192.168.78.2 192.168.78.1 2
pass "Linux vxlan interop both ways, two vfnic hosts, bad input counted"
