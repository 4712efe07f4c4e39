#!/usr/bin/env bash
# tests/real/uplink_pair_test.sh — two vfnic hosts over VXLAN (issue 6,
# acceptance 1).
#
# Namespaces A and B made here, joined by one veth pair (10.80.0.1/24 in A,
# 10.80.0.2/24 in B). Each runs vfnic with one VF and a VXLAN uplink (VNI 80)
# to the other. On each VF a tenant (vf_tenant of tests/uplink.rs, the
# project's virtio-user front end: ARP + ICMP, answering and pinging):
#   A's tenant 192.168.80.1 pings 192.168.80.2 and answers B's pings;
#   B's tenant 192.168.80.2 pings 192.168.80.1 and answers A's pings.
# Both at once, PINGS each way, so traffic crosses the link both ways.
#
# Asserts, once both tenants are done (every request answered):
#   * each tenant got PINGS replies and answered at least PINGS requests;
#   * counters agree across the link: uplink tx on A == uplink rx on B
#     (frames and bytes), and the same B -> A;
#   * VF and uplink counters agree on each host (the VF is the only one, so
#     everything it sends leaves on the uplink and everything the uplink
#     delivers is for it): VF tx_packets == uplink tx_packets, uplink
#     rx_delivered == VF rx_packets, and uplink rx_packets == rx_delivered +
#     rx_dropped_no_dest + VF rx_dropped (only the other side's first ARP
#     requests, sent before this tenant was up, may be lost: at most 5);
#     no send error or bad-input drop on the uplinks.
#
# Env: PINGS=20 plus lib.sh's (VFNIC...).
# shellcheck disable=SC2034,SC2154 # counters are set by name (printf -v, uplink_counters)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/uplink_lib.sh"

PINGS=${PINGS:-20}

uplink_init uplink_pair
[ -x "$VFNIC" ] || fail "vfnic binary not found at $VFNIC (cargo build --release)"
uplink_test_bin
ns_add a
ns_add b
veth_pair a 10.80.0.1 b 10.80.0.2

# VF0 of each host gets its own MAC (the default would be the same on both).
cfg() {
    printf 'num_vfs = 1\nengines = 1\n[[vf]]\nid = 0\nmac = "%s"\n[[uplink]]\nname = "vx"\nkind = "vxlan"\nvni = 80\nlocal = "%s"\nremotes = ["%s"]\n' "$1" "$2" "$3"
}
start_vfnic_in a vfnic_a "$(cfg 02:76:66:6e:0a:00 10.80.0.1 10.80.0.2)"
start_vfnic_in b vfnic_b "$(cfg 02:76:66:6e:0b:00 10.80.0.2 10.80.0.1)"
say "daemons up in $(ns a) and $(ns b)"

# Each tenant stays up answering a while after its own pings are done, so
# the other one finishes too.
common=(PINGS="$PINGS" INTERVAL_MS=50 TIMEOUT_MS=30000 HOLD_MS=3000)
spawn_tenant tenant_a 60 "$WORK/vfnic_a/vf0.sock" 192.168.80.1 TARGET_IP=192.168.80.2 "${common[@]}"
spawn_tenant tenant_b 60 "$WORK/vfnic_b/vf0.sock" 192.168.80.2 TARGET_IP=192.168.80.1 "${common[@]}"
for t in a b; do
    tenant_done "tenant_$t" 50
    say "tenant $t: $TENANT_SUMMARY"
    summary_field replies replies
    summary_field answered answered
    [ "$replies" -ge "$PINGS" ] || fail "tenant $t got $replies of $PINGS replies"
    [ "$answered" -ge "$PINGS" ] || fail "tenant $t answered only $answered pings"
done

# Both tenants are gone: the counters are final. Read them until two reads
# agree (the pumps count right after the send).
C=(tx_packets tx_bytes rx_packets rx_bytes rx_delivered tx_dropped_error rx_dropped_no_dest
   rx_dropped_unknown_peer rx_dropped_truncated rx_dropped_wrong_vni rx_dropped_runt)
read_all() {
    local h
    for h in a b; do
        uplink_counters "$h" "$WORK/vfnic_$h" vx "${C[@]}"
        vfnic_stats_in "$h"
    done
}
vfnic_stats_in() {
    local j=$WORK/stats-$1.json
    timeout -k 2 10 "$VFNIC" --run-dir "$WORK/vfnic_$1" stats --json >"$j" || fail "vfnic stats on $1 failed"
    vf_get "$1_vf_tx" "$j" 0 tx_packets
    vf_get "$1_vf_rx" "$j" 0 rx_packets
    vf_get "$1_vf_rx_dropped" "$j" 0 rx_dropped
}
read_all
prev="$a_tx_packets $b_tx_packets $a_rx_packets $b_rx_packets"
for _ in 1 2 3 4 5 6 7 8 9 10; do
    sleep 0.3
    read_all
    cur="$a_tx_packets $b_tx_packets $a_rx_packets $b_rx_packets"
    [ "$cur" = "$prev" ] && break
    prev=$cur
done

for h in a b; do
    eval "say \"host $h: uplink tx=\$${h}_tx_packets/\$${h}_tx_bytes B rx=\$${h}_rx_packets/\$${h}_rx_bytes B delivered=\$${h}_rx_delivered; VF0 tx=\$${h}_vf_tx rx=\$${h}_vf_rx rx_dropped=\$${h}_vf_rx_dropped\""
done
[ "$a_tx_packets" -ge $((2 * PINGS)) ] && [ "$b_tx_packets" -ge $((2 * PINGS)) ] ||
    fail "too few frames crossed the link (A tx $a_tx_packets, B tx $b_tx_packets; $((2 * PINGS)) each expected)"
[ "$a_tx_packets" = "$b_rx_packets" ] && [ "$a_tx_bytes" = "$b_rx_bytes" ] ||
    fail "A -> B: A's uplink sent $a_tx_packets frames/$a_tx_bytes B, B's received $b_rx_packets/$b_rx_bytes B"
[ "$b_tx_packets" = "$a_rx_packets" ] && [ "$b_tx_bytes" = "$a_rx_bytes" ] ||
    fail "B -> A: B's uplink sent $b_tx_packets frames/$b_tx_bytes B, A's received $a_rx_packets/$a_rx_bytes B"
for h in a b; do
    eval "vtx=\$${h}_vf_tx vrx=\$${h}_vf_rx vdrop=\$${h}_vf_rx_dropped utx=\$${h}_tx_packets"
    eval "urx=\$${h}_rx_packets del=\$${h}_rx_delivered nodest=\$${h}_rx_dropped_no_dest"
    [ "$vtx" = "$utx" ] || fail "host $h: VF0 sent $vtx frames, its uplink $utx"
    [ "$del" = "$vrx" ] || fail "host $h: uplink delivered $del frames, VF0 received $vrx"
    # The other tenant's first ARP requests may come before this one is
    # connected (no_dest) or has its rings ready (VF rx_dropped): counted.
    [ "$urx" = $((del + nodest + vdrop)) ] ||
        fail "host $h: uplink read $urx frames: delivered $del + no VF $nodest + VF dropped $vdrop do not add up"
    [ $((nodest + vdrop)) -le 5 ] || fail "host $h: $((nodest + vdrop)) frames lost before the tenant was up"
    for c in tx_dropped_error rx_dropped_unknown_peer rx_dropped_truncated rx_dropped_wrong_vni rx_dropped_runt; do
        eval "v=\$${h}_$c"
        [ "$v" = 0 ] || fail "host $h: uplink counter $c is $v"
    done
done
fail_if_dead vfnic_a "at the end"
fail_if_dead vfnic_b "at the end"
pass "$PINGS pings each way across VXLAN; A->B $a_tx_packets frames, B->A $b_tx_packets frames, counters agree"
