#!/usr/bin/env bash
# tests/real/uplink_pair_qemu_test.sh — two vfnic hosts over VXLAN, a QEMU
# guest tenant on each (issue 6, acceptance 1, with real clients;
# uplink_pair_test.sh does the same with the project's own vf_tenant).
#
# Namespaces A and B made here, joined by one veth pair (10.82.0.1/24 in A,
# 10.82.0.2/24 in B). Each runs vfnic with a VXLAN uplink "vx" (VNI 82) to
# the other. QEMU/TCG guests (scripts/build-guest.sh) run outside the
# namespaces, on the VF sockets:
#   A: VF0 (02:76:66:6e:00:00), guest 192.168.82.1, vfnic.role=server
#      (two one-shot iperf3 tests);
#   B: VF1 (02:76:66:6e:00:01; B's VF0 gets another MAC so that no MAC is
#      on both hosts), guest 192.168.82.2, vfnic.role=client: PINGS pings
#      to A's guest, iperf3 B -> A of IPERF_BYTES, then -R (A -> B).
# IPv6 is off in the namespaces and the guests: the overlay carries only
# the test's traffic.
#
# Asserts, once both guests have powered off (counters final):
#   * every ping answered; both iperf3 runs rc 0 with IPERF_BYTES sent and
#     all but MAX_UNCOUNTED counted by the receiver;
#   * the link agrees frame for frame and byte for byte: A's uplink
#     tx_packets/tx_bytes == B's uplink rx_packets/rx_bytes (+ datagrams B's
#     kernel dropped on vfnic's UDP socket, UDP InErrors, and their bytes
#     are then not compared), and B -> A the same; no send error,
#     oversize or bad-input drop;
#   * each uplink's reads are accounted for: every frame read was handed
#     to a VF, merged into another (GRO), counted as no destination, or
#     counted as dropped by the VF (rx_dropped);
#   * VFs agree with their guests: the VF's tx_packets == the guest's
#     virtio tx_queue_0_packets and rx_packets == rx_queue_0_packets
#     (the guest counts last, just before powering off: up to SLACK frames
#     still in flight then), VF rx_dropped at most DROP_PCT % of the frames
#     it delivered (the wire has no backpressure: a TCG guest descheduled
#     under the stream leaves its ring full and frames are dropped, counted,
#     in the uplink's sum above, and TCP resends them); and the bytes the VFs carried
#     cover what iperf3 moved.
#
# Env: IPERF_BYTES=8M MAX_UNCOUNTED=4M PINGS=20 SLACK=8 DROP_PCT=20 plus lib.sh's.
# shellcheck disable=SC2034,SC2154 # counters are set by name (printf -v, uplink_counters)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/uplink_lib.sh"

IPERF_BYTES=${IPERF_BYTES:-8M}
MAX_UNCOUNTED=${MAX_UNCOUNTED:-4M}
PINGS=${PINGS:-20}
SLACK=${SLACK:-8}
DROP_PCT=${DROP_PCT:-20}

uplink_init uplink_pair_qemu
[ -x "$VFNIC" ] || fail "vfnic binary not found at $VFNIC (cargo build --release)"
ensure_guest_image
ns_add a
ns_add b
ns_no_ipv6 a b
veth_pair a 10.82.0.1 b 10.82.0.2

cfg() { # cfg NUM_VFS LOCAL REMOTE [EXTRA]
    printf 'num_vfs = %s\nengines = 1\n%s\n[[uplink]]\nname = "vx"\nkind = "vxlan"\nvni = 82\nlocal = "%s"\nremotes = ["%s"]\n' \
        "$1" "${4:-}" "$2" "$3"
}
start_vfnic_in a vfnic_a "$(cfg 1 10.82.0.1 10.82.0.2)"
start_vfnic_in b vfnic_b "$(cfg 2 10.82.0.2 10.82.0.1 "$(printf '[[vf]]\nid = 0\nmac = "02:76:66:6e:0b:00"')")"
wait_for_sockets vfnic_b 10 "$WORK/vfnic_b/vf1.sock"
say "daemons up in $(ns a) and $(ns b)"

common="ipv6.disable=1 vfnic.report=1 vfnic.wait=70"
# The guests' MTU is the uplinks' inner MTU (1500 - 50 of VXLAN), as for
# any VXLAN overlay: QEMU's host_mtu offers it (VIRTIO_NET_F_MTU). With
# 1500 their full-size frames could not cross (tx_dropped_oversize).
mtu=",host_mtu=1450"
RUN=$WORK/vfnic_a qemu_guest guest_a 0 100 "" "$mtu" "$common vfnic.ip=192.168.82.1/24 vfnic.role=server vfnic.tests=2"
RUN=$WORK/vfnic_b qemu_guest guest_b 1 100 "" "$mtu" \
    "$common vfnic.ip=192.168.82.2/24 vfnic.peer=192.168.82.1 vfnic.role=client vfnic.pings=$PINGS vfnic.bytes=$IPERF_BYTES vfnic.reverse=1"
wait_for_log guest_a 'VFNIC-SERVER-READY' 60
wait_for_log guest_b 'VFNIC-GUEST-UP' 60
say "guests up: A on VF0 (server), B on VF1 (client)"
# The client powers off after ping, iperf3 and iperf3 -R; the server after
# its two tests.
wait_exit guest_b 75 || fail "guest B (client) still running after 75 s"
wait_exit guest_a 20 || fail "guest A (server) still running 20 s after the client ended"
for g in a b; do guest_console "guest_$g" >"$WORK/guest_$g.console"; done
cb=$WORK/guest_b.console
grep -q '^VFNIC-PEER-REACHABLE' "$cb" || fail "guest B never reached guest A"
ping_line=$(grep -E 'packets transmitted' "$cb" | tail -n1)
say "guest B ping: $ping_line"
grep -q '^PING-RC 0$' "$cb" || fail "guest B's ping failed ($ping_line)"
replies=$(awk '/packets transmitted/ { n = $4 } END { print n + 0 }' "$cb")
[ "$replies" = "$PINGS" ] || fail "guest B got $replies of $PINGS ping replies"

want=$(numfmt --from=iec "$IPERF_BYTES")
slack=$(numfmt --from=iec "$MAX_UNCOUNTED")
check_iperf() { # check_iperf PREFIX WHAT: sets RECV
    local j=$WORK/$1.json rc sent mbps retr
    rc=$(awk -v p="$1-RC" '$1 == p { print $2 }' "$cb" | tail -n1)
    guest_iperf_json "$cb" "$1" "$j"
    sent=$(jq -r '.end.sum_sent.bytes // 0' "$j")
    RECV=$(jq -r '.end.sum_received.bytes // 0' "$j")
    mbps=$(jq -r '(.end.sum_received.bits_per_second // 0) / 1e6 | floor' "$j")
    retr=$(jq -r '.end.sum_sent.retransmits // 0' "$j")
    say "iperf3 $2: rc=${rc:-?} sent=$sent received=$RECV bytes, $mbps Mbit/s, $retr retransmits"
    [ "${rc:-}" = 0 ] && jq -e '.error == null' "$j" >/dev/null || fail "iperf3 $2 failed: rc=${rc:-none} $(jq -r '.error // ""' "$j")"
    [ "$sent" -ge "$want" ] || fail "iperf3 $2 sent $sent bytes, below $IPERF_BYTES"
    [ "$RECV" -ge $((sent - slack)) ] || fail "iperf3 $2: the receiver counted $RECV of $sent bytes"
}
check_iperf IPERF "B -> A"
b_to_a=$RECV
check_iperf IPERF-R "A -> B (-R)"
a_to_b=$RECV

# Counters. Read until two reads agree (the pumps count right after a send).
UC=(tx_packets tx_bytes rx_packets rx_bytes rx_delivered rx_gro_merged_segments rx_dropped_no_dest
    tx_dropped_error tx_dropped_oversize rx_dropped_unknown_peer rx_dropped_truncated rx_dropped_wrong_vni rx_dropped_runt)
udp_inerr() {
    ip netns exec "$(ns "$1")" awk '$1 == "Udp:" && !h { for (i = 2; i <= NF; i++) c[$i] = i; h = 1; next }
        $1 == "Udp:" { print $(c["InErrors"]); exit }' /proc/net/snmp
}
read_all() {
    local h vf j
    for h in a b; do
        uplink_counters "$h" "$WORK/vfnic_$h" vx "${UC[@]}"
        if [ "$h" = a ]; then vf=0; else vf=1; fi
        j=$WORK/stats-$h.json
        timeout -k 2 10 "$VFNIC" --run-dir "$WORK/vfnic_$h" stats --json >"$j" || fail "vfnic stats on $h failed"
        for f in tx_packets tx_bytes rx_packets rx_bytes rx_dropped; do vf_get "${h}_vf_$f" "$j" "$vf" "$f"; done
        printf -v "${h}_udp" '%s' "$(udp_inerr "$h")"
    done
}
read_all
for _ in 1 2 3 4 5 6 7 8 9 10; do
    prev="$a_tx_packets $b_tx_packets $a_rx_packets $b_rx_packets"
    sleep 0.3
    read_all
    [ "$prev" = "$a_tx_packets $b_tx_packets $a_rx_packets $b_rx_packets" ] && break
done
for h in a b; do
    eval "say \"host $h uplink: tx=\$${h}_tx_packets/\$${h}_tx_bytes B rx=\$${h}_rx_packets/\$${h}_rx_bytes B" \
        "delivered=\$${h}_rx_delivered gro_merged=\$${h}_rx_gro_merged_segments no_dest=\$${h}_rx_dropped_no_dest udp_drops=\$${h}_udp;" \
        "VF tx=\$${h}_vf_tx_packets/\$${h}_vf_tx_bytes B rx=\$${h}_vf_rx_packets/\$${h}_vf_rx_bytes B rx_dropped=\$${h}_vf_rx_dropped\""
done

# The link, both ways.
[ "$a_tx_packets" = $((b_rx_packets + b_udp)) ] ||
    fail "A -> B: A's uplink sent $a_tx_packets frames, B's read $b_rx_packets (+ $b_udp UDP drops in B)"
[ "$b_tx_packets" = $((a_rx_packets + a_udp)) ] ||
    fail "B -> A: B's uplink sent $b_tx_packets frames, A's read $a_rx_packets (+ $a_udp UDP drops in A)"
if [ "$b_udp" = 0 ]; then
    [ "$a_tx_bytes" = "$b_rx_bytes" ] || fail "A -> B: A's uplink sent $a_tx_bytes bytes, B's read $b_rx_bytes"
fi
if [ "$a_udp" = 0 ]; then
    [ "$b_tx_bytes" = "$a_rx_bytes" ] || fail "B -> A: B's uplink sent $b_tx_bytes bytes, A's read $a_rx_bytes"
fi
[ "$a_tx_bytes" -ge "$a_to_b" ] && [ "$b_tx_bytes" -ge "$b_to_a" ] ||
    fail "the uplinks sent less than iperf3 moved (A $a_tx_bytes < $a_to_b or B $b_tx_bytes < $b_to_a)"
for h in a b; do
    for c in tx_dropped_error tx_dropped_oversize rx_dropped_unknown_peer rx_dropped_truncated rx_dropped_wrong_vni rx_dropped_runt; do
        eval "v=\$${h}_$c"
        [ "$v" = 0 ] || fail "host $h: uplink counter $c is $v"
    done
    eval "urx=\$${h}_rx_packets del=\$${h}_rx_delivered merged=\$${h}_rx_gro_merged_segments nodest=\$${h}_rx_dropped_no_dest"
    eval "vdrop=\$${h}_vf_rx_dropped"
    [ "$urx" = $((del + merged + nodest + vdrop)) ] ||
        fail "host $h: uplink read $urx frames: delivered $del + merged $merged + no destination $nodest + VF rx_dropped $vdrop do not add up"
done

# VFs against their guests.
for h in a b; do
    guest_stat g_tx "$WORK/guest_$h.console" end tx_queue_0_packets
    guest_stat g_rx "$WORK/guest_$h.console" end rx_queue_0_packets
    eval "vtx=\$${h}_vf_tx_packets vrx=\$${h}_vf_rx_packets vdrop=\$${h}_vf_rx_dropped"
    say "host $h: VF tx=$vtx rx=$vrx rx_dropped=$vdrop; guest $h virtio tx=$g_tx rx=$g_rx"
    [ "$g_tx" -gt 0 ] && [ "$g_rx" -gt 0 ] || fail "guest $h reported no virtio counters"
    [ "$vtx" -ge "$g_tx" ] && [ "$vtx" -le $((g_tx + SLACK)) ] ||
        fail "host $h: the VF took $vtx frames, guest $h counted $g_tx sent"
    [ "$vrx" -ge "$g_rx" ] && [ "$vrx" -le $((g_rx + SLACK)) ] ||
        fail "host $h: the VF delivered $vrx frames, guest $h counted $g_rx received"
    [ $((vdrop * 100)) -le $((vrx * DROP_PCT)) ] || fail "host $h: VF rx_dropped $vdrop against $vrx delivered (over $DROP_PCT %)"
done
[ "$b_vf_tx_bytes" -ge "$b_to_a" ] && [ "$a_vf_rx_bytes" -ge "$b_to_a" ] ||
    fail "B -> A: VF bytes (B tx $b_vf_tx_bytes, A rx $a_vf_rx_bytes) below the $b_to_a iperf3 moved"
[ "$a_vf_tx_bytes" -ge "$a_to_b" ] && [ "$b_vf_rx_bytes" -ge "$a_to_b" ] ||
    fail "A -> B: VF bytes (A tx $a_vf_tx_bytes, B rx $b_vf_rx_bytes) below the $a_to_b iperf3 moved"
fail_if_dead vfnic_a "at the end"
fail_if_dead vfnic_b "at the end"
pass "guests across VXLAN: $PINGS pings, iperf3 B->A ${b_to_a}B and A->B ${a_to_b}B; A->B $a_tx_packets frames, B->A $b_tx_packets frames, counters agree"
