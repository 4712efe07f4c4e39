#!/usr/bin/env bash
# tests/real/uplink_interop_test.sh — vfnic and a Linux kernel vxlan device
# exchange ping and iperf3 traffic (issue 6, acceptance 2).
#
# Namespaces made here, joined by one veth pair:
#   A: vfnic (10.79.0.1), one VF and a VXLAN uplink "vx" (VNI 79) to B. A
#      QEMU/TCG guest (scripts/build-guest.sh) on VF0 is 192.168.79.2/24 and
#      serves two one-shot `iperf3 -s` tests (vfnic.role=server). QEMU runs
#      outside the namespace: it only needs VF0's unix socket.
#   B: a plain Linux kernel VTEP (10.79.0.2): `ip link add vxlan0 type vxlan
#      id 79 dstport 4789 local 10.79.0.2 remote 10.79.0.1` with
#      192.168.79.1/24. Ping and the iperf3 client run here.
# IPv6 is off on both sides (namespace sysctl, guest ipv6.disable=1) so the
# only traffic on the overlay is the test's own.
#
# Asserts:
#   * B pings the guest: PINGS echo requests, every one answered;
#   * iperf3 B -> guest (kernel vxlan encapsulates, vfnic decapsulates and
#     aggregates toward the VF) and iperf3 -R guest -> B (the guest's TSO
#     frames are segmented by vfnic to the inner MTU and encapsulated, the
#     kernel decapsulates): rc 0, IPERF_BYTES sent each way, the receiver
#     counted all but at most MAX_UNCOUNTED (see uplink_gro_test.sh);
#   * vfnic's uplink counters show the traffic: rx_bytes grew by at least
#     what B's direction delivered, tx_bytes by at least the -R bytes, and
#     VF0's rx/tx bytes likewise; no send error or bad-input drop;
#   * the two VTEPs agree frame for frame: what vxlan0 sent == what vfnic's
#     uplink read (+ datagrams A's kernel counted as dropped on the UDP
#     socket), and what vfnic's uplink sent == what vxlan0 received (+ B's
#     UDP drops).
#
# Env: IPERF_BYTES=24M MAX_UNCOUNTED=8M PINGS=10 plus lib.sh's.
# shellcheck disable=SC2034,SC2154 # counters are set by name (printf -v, uplink_counters)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/uplink_lib.sh"

IPERF_BYTES=${IPERF_BYTES:-24M}
MAX_UNCOUNTED=${MAX_UNCOUNTED:-8M}
PINGS=${PINGS:-10}
GUEST_IP=192.168.79.2
LINUX_IP=192.168.79.1

uplink_init uplink_interop
[ -x "$VFNIC" ] || fail "vfnic binary not found at $VFNIC (cargo build --release)"
ensure_guest_image
ns_add a
ns_add b
ns_no_ipv6 a b
veth_pair a 10.79.0.1 b 10.79.0.2
# B's veth as a NIC without offloads: the kernel then finishes checksums
# and segments before the "wire". (With them on, veth hands the encapsulated
# skb to A's kernel with the inner TCP checksum still partial and the UDP
# socket gives vfnic the unfinished bytes: an artifact of veth, which a real
# wire never shows; the guest then drops every TCP segment.)
ip netns exec "$(ns b)" ethtool -K "$VETH_B" tx off tx-udp_tnl-segmentation off tx-udp_tnl-csum-segmentation off >/dev/null ||
    fail "cannot turn the offloads of $VETH_B off"
ip -n "$(ns b)" link add vxlan0 type vxlan id 79 dstport 4789 local 10.79.0.2 remote 10.79.0.1 dev "$VETH_B"
ip -n "$(ns b)" addr add "$LINUX_IP/24" dev vxlan0
# Segments on vxlan0 itself (no TSO/GSO), so that its tx_packets counts
# frames as they go on the wire, as vfnic's uplink counts them.
ip netns exec "$(ns b)" ethtool -K vxlan0 tso off gso off >/dev/null || fail "cannot turn vxlan0's TSO/GSO off"
ip -n "$(ns b)" link set vxlan0 up
say "Linux vxlan0 in $(ns b): $(ip -n "$(ns b)" -d -br link show vxlan0 | tr -s ' ')"

start_vfnic_in a vfnic_a "$(printf 'num_vfs = 1\nengines = 1\n[[uplink]]\nname = "vx"\nkind = "vxlan"\nvni = 79\nlocal = "10.79.0.1"\nremotes = ["10.79.0.2"]\n' )"
RUN=$WORK/vfnic_a # qemu_guest and vfnic_stats use it
say "vfnic up in $(ns a)"

qemu_guest guest 0 100 "" "" "ipv6.disable=1 vfnic.ip=$GUEST_IP/24 vfnic.role=server vfnic.tests=2 vfnic.report=1 vfnic.wait=70"
wait_for_log guest 'VFNIC-SERVER-READY' 60
say "guest up on VF0"

# Counters: vfnic's uplink and VF0, the Linux VTEP, both namespaces' UDP drops.
UC=(rx_packets rx_bytes tx_packets tx_bytes rx_delivered tx_dropped_error tx_dropped_oversize
    rx_dropped_no_dest rx_dropped_unknown_peer rx_dropped_truncated rx_dropped_wrong_vni rx_dropped_runt)
udp_drops() { # udp_drops NS: InErrors of the namespace's UDP MIB (a full
    # socket buffer counts there and in RcvbufErrors: InErrors alone, once)
    ip netns exec "$(ns "$1")" awk '$1 == "Udp:" && !h { for (i = 2; i <= NF; i++) c[$i] = i; h = 1; next }
        $1 == "Udp:" { print $(c["InErrors"]); exit }' /proc/net/snmp
}
snap() { # snap PREFIX
    local p=$1 j=$WORK/stats-$1.json l
    uplink_counters "${p}_up" "$WORK/vfnic_a" vx "${UC[@]}"
    vfnic_stats "$j"
    vf_get "${p}_vf_rx" "$j" 0 rx_packets
    vf_get "${p}_vf_rx_bytes" "$j" 0 rx_bytes
    vf_get "${p}_vf_tx" "$j" 0 tx_packets
    vf_get "${p}_vf_tx_bytes" "$j" 0 tx_bytes
    vf_get "${p}_vf_rx_dropped" "$j" 0 rx_dropped
    l=$(ip -n "$(ns b)" -s -j link show vxlan0)
    printf -v "${p}_lx_tx" '%s' "$(jq -r '.[0].stats64.tx.packets' <<<"$l")"
    printf -v "${p}_lx_rx" '%s' "$(jq -r '.[0].stats64.rx.packets' <<<"$l")"
    printf -v "${p}_udp_a" '%s' "$(udp_drops a)"
    printf -v "${p}_udp_b" '%s' "$(udp_drops b)"
}
snap before

# ping: iputils where installed, else busybox's (same summary line).
if command -v ping >/dev/null; then PING=(ping); else PING=(busybox ping); fi
# Ping: wait until the guest answers (its ARP entry in B settles), then count.
ok=0
for _ in $(seq 20); do
    ip netns exec "$(ns b)" "${PING[@]}" -c 1 -W 1 "$GUEST_IP" >/dev/null 2>&1 && { ok=1; break; }
done
[ "$ok" = 1 ] || fail "the guest at $GUEST_IP never answered a ping from the Linux vxlan side"
ip netns exec "$(ns b)" timeout 30 "${PING[@]}" -c "$PINGS" -i 0.2 -W 2 "$GUEST_IP" >"$WORK/ping.log" 2>&1 || true
got=$(awk '/packets transmitted/ { print $4 }' "$WORK/ping.log")
say "ping Linux vxlan0 -> guest: $(grep -E 'transmitted|rtt|round-trip' "$WORK/ping.log" | tr '\n' ' ')"
[ "${got:-0}" = "$PINGS" ] || fail "$PINGS pings from the Linux vxlan side, ${got:-0} answered"

# iperf_run NAME ARGS...: iperf3 -c GUEST in B, JSON into NAME.json, retrying
# a refused connection (the one-shot server restarts between tests).
want=$(numfmt --from=iec "$IPERF_BYTES")
slack=$(numfmt --from=iec "$MAX_UNCOUNTED")
iperf_run() {
    local name=$1 json=$WORK/$1.json rc
    shift
    for _ in 1 2 3 4 5 6 7 8; do
        rc=0
        ip netns exec "$(ns b)" timeout -k 2 40 iperf3 -c "$GUEST_IP" -n "$IPERF_BYTES" -J --connect-timeout 5000 "$@" \
            >"$json" 2>"$WORK/$name.err" || rc=$?
        # (iperf 3.12 -J may exit 0 with an "error" in its JSON.)
        grep -q '"error":.*unable to connect' "$json" && { sleep 1; continue; }
        break
    done
    jq -e . "$json" >/dev/null 2>&1 || fail "iperf3 $name rc=$rc, no JSON: $(head -c 300 "$json") $(cat "$WORK/$name.err")"
    [ "$rc" = 0 ] && jq -e '.error == null' "$json" >/dev/null || fail "iperf3 $name rc=$rc, error: $(jq -r '.error // "-"' "$json")"
    SENT=$(jq -r '.end.sum_sent.bytes // 0' "$json")
    RECV=$(jq -r '.end.sum_received.bytes // 0' "$json")
    local mbps retr
    mbps=$(jq -r '(.end.sum_received.bits_per_second // 0) / 1e6 | floor' "$json")
    retr=$(jq -r '.end.sum_sent.retransmits // 0' "$json")
    say "iperf3 $name: sent=$SENT received=$RECV bytes, $mbps Mbit/s, $retr retransmits"
    [ "$SENT" -ge "$want" ] || fail "iperf3 $name sent $SENT bytes, below $IPERF_BYTES"
    [ "$RECV" -ge $((SENT - slack)) ] || fail "iperf3 $name: the receiver counted $RECV of $SENT bytes"
}
iperf_run to-guest
fwd=$RECV
iperf_run from-guest -R
rev=$RECV
# The guest powers off once both tests are served: by then every frame has
# crossed the VF and the uplink.
wait_exit guest 30 || fail "the guest did not power off after its two iperf3 tests"
# Read until two snapshots agree (the pumps count right after each frame).
snap after
for _ in 1 2 3 4 5; do
    sleep 0.3
    prev="$after_up_rx_packets $after_up_tx_packets $after_lx_tx $after_lx_rx"
    snap after
    [ "$prev" = "$after_up_rx_packets $after_up_tx_packets $after_lx_tx $after_lx_rx" ] && break
done

d() { echo $(($(eval "echo \$after_$1") - $(eval "echo \$before_$1"))); }
up_rx=$(d up_rx_packets) up_rx_b=$(d up_rx_bytes) up_tx=$(d up_tx_packets) up_tx_b=$(d up_tx_bytes)
vf_rx_b=$(d vf_rx_bytes) vf_tx_b=$(d vf_tx_bytes) lx_tx=$(d lx_tx) lx_rx=$(d lx_rx)
udp_a=$(d udp_a) udp_b=$(d udp_b)
say "vfnic uplink: rx +$up_rx frames/+$up_rx_b B (delivered +$(d up_rx_delivered)), tx +$up_tx frames/+$up_tx_b B"
say "vfnic VF0: rx +$(d vf_rx) frames/+$vf_rx_b B (dropped +$(d vf_rx_dropped)), tx +$(d vf_tx) frames/+$vf_tx_b B"
say "Linux vxlan0: tx +$lx_tx rx +$lx_rx frames; UDP drops: A +$udp_a, B +$udp_b"
[ "$up_rx_b" -ge "$fwd" ] || fail "vfnic's uplink read $up_rx_b bytes, below the $fwd bytes iperf3 moved toward the guest"
[ "$vf_rx_b" -ge "$fwd" ] || fail "VF0 received $vf_rx_b bytes, below the $fwd bytes iperf3 moved toward the guest"
[ "$up_tx_b" -ge "$rev" ] || fail "vfnic's uplink sent $up_tx_b bytes, below the $rev bytes iperf3 -R moved from the guest"
[ "$vf_tx_b" -ge "$rev" ] || fail "VF0 sent $vf_tx_b bytes, below the $rev bytes iperf3 -R moved from the guest"
[ "$lx_tx" = $((up_rx + udp_a)) ] ||
    fail "Linux -> vfnic: vxlan0 sent $lx_tx frames, vfnic's uplink read $up_rx (+ $udp_a UDP drops in A)"
[ "$up_tx" = $((lx_rx + udp_b)) ] ||
    fail "vfnic -> Linux: vfnic's uplink sent $up_tx frames, vxlan0 received $lx_rx (+ $udp_b UDP drops in B)"
for c in tx_dropped_error tx_dropped_oversize rx_dropped_unknown_peer rx_dropped_truncated rx_dropped_wrong_vni rx_dropped_runt; do
    v=$(d "up_$c")
    [ "$v" = 0 ] || fail "vfnic uplink counter $c rose by $v"
done
fail_if_dead vfnic_a "after the traffic"
pass "ping $PINGS/$PINGS; iperf3 Linux->guest ${fwd}B, guest->Linux ${rev}B over VXLAN; VTEP frame counts agree ($lx_tx / $up_tx)"
