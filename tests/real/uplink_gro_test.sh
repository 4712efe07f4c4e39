#!/usr/bin/env bash
# tests/real/uplink_gro_test.sh — GRO toward a VF (issue 6, acceptance 5).
#
# vfnic runs in a namespace made here with a TAP uplink; the namespace's
# kernel side of the TAP has 10.81.0.1/24. A QEMU/TCG guest (the image of
# scripts/build-guest.sh) sits on VF0 at 10.81.0.2 and runs a one-shot
# `iperf3 -s`; it negotiates GUEST_TSO4/6 and GUEST_CSUM. The namespace's
# kernel sends it an iperf3 TCP stream of IPERF_BYTES through the TAP: the
# TAP device has no offloads, so the kernel hands vfnic MTU-sized
# segments, and vfnic's uplink pump merges in-order segments of the flow
# (GRO) before delivering to the VF.
#
# Asserts:
#   * the guest negotiated GUEST_CSUM, GUEST_TSO4 and GUEST_TSO6;
#   * the stream is intact: iperf3 (client in the namespace) exits 0 with
#     all of IPERF_BYTES sent, the guest's server counted all but at most
#     MAX_UNCOUNTED of them (it stops counting at the client's TEST_END,
#     with data still in flight, see qemu_pair.sh; what the client had
#     not sent by then is never sent), VF0's rx_bytes rose by at least what
#     the server counted, and the guest's TCP counted no checksum
#     error (InCsumErrors 0);
#   * fewer, larger segments: over the stream, the VF received fewer than
#     half as many frames as the uplink read from the wire, every frame
#     read was merged or handed over (rx_gro_merged_segments +
#     rx_gro_frames covers the frames read), the uplink's
#     rx_gro_merged_segments rose by at least a third of the frames read,
#     and the VF's average frame is above 3000 bytes.
#
# Env: IPERF_BYTES=48M MAX_UNCOUNTED=8M plus lib.sh's (VFNIC, GUEST_DIR, QEMU).
# shellcheck disable=SC2034,SC2154 # counters are set by name (printf -v, uplink_counters)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/uplink_lib.sh"

IPERF_BYTES=${IPERF_BYTES:-48M}
MAX_UNCOUNTED=${MAX_UNCOUNTED:-8M}
HOST_IP=10.81.0.1
GUEST_IP=10.81.0.2

uplink_init uplink_gro
[ -x "$VFNIC" ] || fail "vfnic binary not found at $VFNIC (cargo build --release)"
ensure_guest_image
ns_add a
TAP="vfug$$"
TAP=${TAP:0:15}
start_vfnic_in a vfnic_a "$(printf 'num_vfs = 1\nengines = 1\n[[uplink]]\nname = "host"\nkind = "tap"\nifname = "%s"\n' "$TAP")"
RUN=$WORK/vfnic_a # qemu_guest and vfnic_stats use it
ip -n "$(ns a)" addr add "$HOST_IP/24" dev "$TAP"
ip -n "$(ns a)" link show "$TAP" | grep -q UP || fail "TAP $TAP is not up"
ip netns exec "$(ns a)" ethtool -k "$TAP" 2>/dev/null | grep -E '^(tcp-segmentation-offload|generic-segmentation-offload|tx-checksumming):' |
    sed 's/^/  TAP /' || true

qemu_guest guest 0 100 "" "" "vfnic.ip=$GUEST_IP/24 vfnic.role=server vfnic.report=1 vfnic.wait=70"
wait_for_log guest 'VFNIC-SERVER-READY' 60
say "guest up"
guest_console guest >"$WORK/guest.console"
feat=$(awk '/^VFNIC-GUEST-FEATURES/ {print $2}' "$WORK/guest.console")
say "guest features: $(virtio_features_names "$feat")"
for b in 1:GUEST_CSUM 7:GUEST_TSO4 8:GUEST_TSO6; do
    has_feature "$feat" "${b%%:*}" || fail "the guest did not negotiate ${b#*:}"
done

snap() { # snap PREFIX: uplink and VF0 counters into PREFIX_*
    vfnic_stats "$WORK/stats-$1.json"
    local j=$WORK/stats-$1.json
    printf -v "$1_up_rx" '%s' "$(jq -r '.uplinks[] | select(.name == "host") | .counters.rx_packets' "$j")"
    printf -v "$1_merged" '%s' "$(jq -r '.uplinks[] | select(.name == "host") | .counters.rx_gro_merged_segments' "$j")"
    printf -v "$1_gro_frames" '%s' "$(jq -r '.uplinks[] | select(.name == "host") | .counters.rx_gro_frames' "$j")"
    vf_get "$1_vf_rx" "$j" 0 rx_packets
    vf_get "$1_vf_rx_bytes" "$j" 0 rx_bytes
}
snap before

# The stream: namespace kernel -> TAP -> vfnic -> VF0 -> guest.
json=$WORK/iperf.json
# The one-shot server may start listening just after VFNIC-SERVER-READY:
# retry a refused connection (nothing was sent then).
for _ in 1 2 3 4 5; do
    rc=0
    ip netns exec "$(ns a)" timeout -k 2 45 iperf3 -c "$GUEST_IP" -n "$IPERF_BYTES" -J --connect-timeout 5000 \
        >"$json" 2>"$WORK/iperf.err" || rc=$?
    [ "$rc" != 0 ] && grep -q 'unable to connect' "$json" && { sleep 1; continue; }
    break
done
jq -e . "$json" >/dev/null 2>&1 || fail "iperf3 rc=$rc, no JSON: $(head -c 300 "$json") $(cat "$WORK/iperf.err")"
[ "$rc" = 0 ] || fail "iperf3 rc=$rc, error: $(jq -r '.error // "-"' "$json")"
sent=$(jq -r '.end.sum_sent.bytes // 0' "$json")
recv=$(jq -r '.end.sum_received.bytes // 0' "$json")
mbps=$(jq -r '(.end.sum_received.bits_per_second // 0) / 1e6 | floor' "$json")
retr=$(jq -r '.end.sum_sent.retransmits // 0' "$json")
want=$(numfmt --from=iec "$IPERF_BYTES")
say "iperf3 namespace -> guest: sent=$sent received=$recv bytes, $mbps Mbit/s, $retr retransmits"
[ "$sent" -ge "$want" ] || fail "iperf3 sent $sent bytes, below $IPERF_BYTES"
[ "$recv" -ge $((sent - $(numfmt --from=iec "$MAX_UNCOUNTED"))) ] || fail "the guest's server counted $recv of $sent bytes"
# The guest powers off once its one-shot server is done: by then every
# byte sent has crossed the VF.
wait_exit guest 30 || fail "the guest did not power off after the test"
snap after

up_rx=$((after_up_rx - before_up_rx))
vf_rx=$((after_vf_rx - before_vf_rx))
vf_bytes=$((after_vf_rx_bytes - before_vf_rx_bytes))
merged=$((after_merged - before_merged))
gro_frames=$((after_gro_frames - before_gro_frames))
[ "$vf_rx" -gt 0 ] || fail "VF0 received nothing during the stream"
say "GRO: uplink read $up_rx frames; VF0 got $vf_rx frames ($vf_bytes bytes, $((vf_bytes / vf_rx)) B average); rx_gro_merged_segments +$merged, rx_gro_frames +$gro_frames"
[ "$vf_bytes" -ge "$recv" ] || fail "VF0 rx_bytes +$vf_bytes is below the $recv bytes the guest's server counted"
# Every frame read from the wire was merged into another or handed to the
# VF (a handful of slack for the namespace kernel's IPv6 chatter).
[ $((merged + gro_frames)) -ge $((up_rx - 5)) ] ||
    fail "GRO accounted for $((merged + gro_frames)) of $up_rx frames read (merged $merged + handed over $gro_frames)"
[ $((vf_rx * 2)) -lt "$up_rx" ] || fail "VF0 got $vf_rx frames for $up_rx read from the uplink: not aggregated"
[ $((merged * 3)) -ge "$up_rx" ] || fail "rx_gro_merged_segments rose by only $merged for $up_rx frames"
[ $((vf_bytes / vf_rx)) -gt 3000 ] || fail "VF0 frames average $((vf_bytes / vf_rx)) bytes: not larger segments"

guest_console guest >"$WORK/guest.console"
guest_snmp csum_err "$WORK/guest.console" end Tcp InCsumErrors
say "guest Tcp InCsumErrors=${csum_err:-?}"
[ "${csum_err:-0}" = 0 ] || fail "the guest counted $csum_err TCP checksum errors"
fail_if_dead vfnic_a "after the stream"
pass "iperf3 ${recv}B ${mbps}Mbit/s intact; $up_rx wire frames -> $vf_rx VF frames (GRO merged $merged)"
