#!/usr/bin/env bash
# tests/real/uplink_packet_test.sh — AF_PACKET uplink (issue 6).
#
# vfnic runs in a namespace made here, bound with an AF_PACKET socket to one
# end of a veth pair; the other end (the host kernel) gets 10.79.1.1/24. A VF
# (the project's virtio-user client, 10.79.1.2) resolves that address with
# ARP and pings it; the uplink's counters show the frames both ways.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/uplink_lib.sh"

uplink_init uplink_packet
[ -x "$VFNIC" ] || fail "vfnic binary not found at $VFNIC (cargo build --release)"
ns_add a
WIRE="vfpw$$"
WIRE=${WIRE:0:15}
HOST="vfph$$"
HOST=${HOST:0:15}
ip -n "$(ns a)" link add "$WIRE" type veth peer name "$HOST"
ip -n "$(ns a)" addr add 10.79.1.1/24 dev "$HOST"
ip -n "$(ns a)" link set "$HOST" up
start_vfnic_in a vfnic_a "$(printf 'num_vfs = 2\nengines = 1\n[[uplink]]\nname = "wire"\nkind = "af_packet"\nifname = "%s"\n' "$WIRE")"
ip -n "$(ns a)" link show "$WIRE" | grep -q UP || fail "$WIRE is not up"
vf_ping "$WORK/vfnic_a/vf0.sock" 10.79.1.2 10.79.1.1 5
uplink_counter tx "$WORK/vfnic_a" wire tx_packets
uplink_counter rx "$WORK/vfnic_a" wire rx_packets
say "AF_PACKET uplink: tx=$tx rx=$rx"
[ "$tx" -ge 6 ] && [ "$rx" -ge 6 ] || fail "AF_PACKET uplink counters did not move with the pings (tx=$tx rx=$rx)"
timeout 10 "$VFNIC" --run-dir "$WORK/vfnic_a" uplink show wire | tee "$WORK/show.txt"
grep -q af_packet "$WORK/show.txt" || fail "uplink show does not say af_packet"
pass "VF reached the host kernel through the AF_PACKET uplink"
