#!/usr/bin/env bash
# tests/real/uplink_tap_test.sh — TAP uplink (issue 6, acceptance 3).
#
# vfnic runs in a namespace made here with a TAP uplink; the host kernel
# side of the TAP gets 10.79.0.1/24. A VF (the project's virtio-user client,
# 10.79.0.2) resolves that address with ARP and pings it; the uplink's
# counters show the frames both ways.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/uplink_lib.sh"

uplink_init uplink_tap
[ -x "$VFNIC" ] || fail "vfnic binary not found at $VFNIC (cargo build --release)"
ns_add a
TAP="vfut$$"
TAP=${TAP:0:15}
start_vfnic_in a vfnic_a "$(printf 'num_vfs = 2\nengines = 1\n[[uplink]]\nname = "host"\nkind = "tap"\nifname = "%s"\n' "$TAP")"
ip -n "$(ns a)" addr add 10.79.0.1/24 dev "$TAP"
ip -n "$(ns a)" link show "$TAP" | grep -q UP || fail "TAP $TAP is not up"
vf_ping "$WORK/vfnic_a/vf0.sock" 10.79.0.2 10.79.0.1 5
uplink_counter tx "$WORK/vfnic_a" host tx_packets
uplink_counter rx "$WORK/vfnic_a" host rx_packets
say "TAP uplink: tx=$tx rx=$rx"
[ "$tx" -ge 6 ] && [ "$rx" -ge 6 ] || fail "TAP uplink counters did not move with the pings (tx=$tx rx=$rx)"
timeout 10 "$VFNIC" --run-dir "$WORK/vfnic_a" uplink show host
pass "VF reached the host kernel through the TAP uplink"
