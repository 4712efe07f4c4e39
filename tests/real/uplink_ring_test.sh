#!/usr/bin/env bash
# tests/real/uplink_ring_test.sh — a ring of 4 vfnic hosts (issue 6,
# acceptance 4).
#
# Namespaces h1..h4 made here; a veth pair joins each host to its successor
# (h1-h2, h2-h3, h3-h4, h4-h1; link k is 10.82.k.0/24). Each host's VXLAN
# endpoint is an address on its lo (10.83.0.i/32) with routes to its two
# neighbours' endpoints over the direct veths only, so the ring is the only
# path. Each runs vfnic with one VF (MAC 02:76:66:6e:0i:00) and a ring
# uplink: VNI 83, ring_next and ring_prev, ring_size 4 (hop count 2),
# keepalives every PROBE_MS ms, down after 3 misses.
# Tenants: vf_tenant of tests/uplink.rs (the project's virtio-user front end).
#
# 1. Hop limit: h1's tenant sends FLOOD frames to an unknown unicast MAC.
#    Each goes h1 -> h2 -> h3 -> h4 and dies there: ring_hop_expired rises
#    by exactly FLOOD, ring_forwarded by 2 x FLOOD, and then the uplink
#    counters of all hosts stop moving (nothing circulates).
# 2. Reach: h3's tenant (192.168.83.3) answers; h1's tenant (192.168.83.1)
#    pings it every INTERVAL_MS ms for STREAM_SECS s; once it has replies,
#    the h1-h2 link is cut (`ip link set ... down` on h1's side) and the
#    stream must recover (traffic goes round the other way): the longest
#    gap between replies is below RECOVERY_MAX_MS, replies arrive after the
#    cut (at least a quarter of the pings' worth), h4 forwarded them (the
#    other way round) and h1 counted its link to h2 down.
# 3. Hop limit with the link cut: FLOOD more frames from h1; each still
#    dies exactly once (ring_hop_expired +FLOOD) and the counters settle.
#
# Env: FLOOD=10 INTERVAL_MS=50 STREAM_SECS=8 RECOVERY_MAX_MS=3000
#      PROBE_MS=100 plus lib.sh's (VFNIC...).
# shellcheck disable=SC2034,SC2154 # counters are set by name (printf -v, uplink_counters)
set -euo pipefail
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/uplink_lib.sh"

FLOOD=${FLOOD:-10}
INTERVAL_MS=${INTERVAL_MS:-50}
STREAM_SECS=${STREAM_SECS:-8}
RECOVERY_MAX_MS=${RECOVERY_MAX_MS:-3000}
PROBE_MS=${PROBE_MS:-100}
N=4

uplink_init uplink_ring
[ -x "$VFNIC" ] || fail "vfnic binary not found at $VFNIC (cargo build --release)"
uplink_test_bin
nxt() { echo $(($1 % N + 1)); }
prv() { echo $((($1 + N - 2) % N + 1)); }
for i in 1 2 3 4; do
    ns_add "$i"
    ip -n "$(ns "$i")" addr add "10.83.0.$i/32" dev lo
done
declare -A LINK_IF=() # "i" -> host i's interface toward its successor
for i in 1 2 3 4; do
    j=$(nxt "$i")
    veth_pair "$i" "10.82.$i.1" "$j" "10.82.$i.2"
    LINK_IF[$i]=$VETH_A
    ip -n "$(ns "$i")" route add "10.83.0.$j/32" via "10.82.$i.2"
    ip -n "$(ns "$j")" route add "10.83.0.$i/32" via "10.82.$i.1"
done

for i in 1 2 3 4; do
    start_vfnic_in "$i" "vfnic_$i" "$(printf 'num_vfs = 1\nengines = 1\n[[vf]]\nid = 0\nmac = "02:76:66:6e:0%d:00"\n[[uplink]]\nname = "ring"\nkind = "vxlan"\nvni = 83\nlocal = "10.83.0.%d"\nring_next = "10.83.0.%d"\nring_prev = "10.83.0.%d"\nring_size = 4\nprobe_interval_ms = %d\nprobe_misses = 3\n' \
        "$i" "$i" "$(nxt "$i")" "$(prv "$i")" "$PROBE_MS")"
done
say "4 daemons up"

RC=(tx_packets rx_packets ring_forwarded ring_hop_expired link_down_events link_up_events probes_received rx_dropped_unknown_peer)
# ring_sums PREFIX: PREFIX_<counter> summed over the 4 hosts, and per host
# PREFIX<i>_<counter>.
ring_sums() {
    local p=$1 i c v
    for c in "${RC[@]}"; do printf -v "${p}_$c" 0; done
    for i in 1 2 3 4; do
        uplink_counters "$p$i" "$WORK/vfnic_$i" ring "${RC[@]}"
        for c in "${RC[@]}"; do
            eval "v=\$${p}${i}_$c"
            printf -v "${p}_$c" '%s' $(($(eval "echo \$${p}_$c") + v))
        done
    done
}

# Every ring link up (a host that started before its neighbour may have
# seen it down first): each host's two ring remotes are up.
links_up() {
    local i j
    for i in 1 2 3 4; do
        j=$(timeout -k 2 10 "$VFNIC" --run-dir "$WORK/vfnic_$i" uplink show ring --json) || return 1
        jq -e '[.detail.remotes[] | .up] | length == 2 and all' <<<"$j" >/dev/null || return 1
    done
}
end=$((SECONDS + 10))
until links_up; do
    [ $SECONDS -lt $end ] || fail "ring links not all up after 10 s: $(for i in 1 2 3 4; do timeout 5 "$VFNIC" --run-dir "$WORK/vfnic_$i" uplink show ring --json | jq -c '[.detail.remotes[] | .up]'; done | tr '\n' ' ')"
    sleep 0.2
done
say "ring links up (keepalives heard on every host)"

# hop_limit_phase NAME WHAT FWD: FLOOD frames to an unknown MAC from h1;
# each must expire exactly once, forwarded FWD times per frame, then
# silence. (The tenant stays connected a moment so its frames are taken.)
hop_limit_phase() {
    local name=$1 what=$2 fwd=$3 t
    ring_sums b
    spawn_tenant "$name" 30 "$WORK/vfnic_1/vf0.sock" 192.168.83.1 FLOOD_FRAMES="$FLOOD" HOLD_MS=500
    wait_exit "$name" 25 || fail "flooding tenant still running"
    [ "$EXIT_RC" = 0 ] || fail "flooding tenant failed (status $EXIT_RC)"
    end=$((SECONDS + 5))
    while :; do
        ring_sums a
        [ $((a_ring_hop_expired - b_ring_hop_expired)) -ge "$FLOOD" ] && break
        [ $SECONDS -lt $end ] || fail "$what: ring_hop_expired rose by $((a_ring_hop_expired - b_ring_hop_expired)), $FLOOD expected"
        sleep 0.2
    done
    sleep 1
    ring_sums c
    for t in tx_packets rx_packets ring_forwarded ring_hop_expired; do
        [ "$(eval "echo \$a_$t")" = "$(eval "echo \$c_$t")" ] ||
            fail "$what: $t still moving 1 s after the frames expired ($(eval "echo \$a_$t") -> $(eval "echo \$c_$t")): circulating"
    done
    local exp=$((c_ring_hop_expired - b_ring_hop_expired)) fw=$((c_ring_forwarded - b_ring_forwarded))
    local tx=$((c_tx_packets - b_tx_packets)) rx=$((c_rx_packets - b_rx_packets))
    say "$what: $FLOOD frames to an unknown MAC: ring_hop_expired +$exp, ring_forwarded +$fw, wire tx +$tx rx +$rx (all hosts), then still"
    [ "$exp" = "$FLOOD" ] || fail "$what: ring_hop_expired rose by $exp, $FLOOD expected"
    [ "$fw" = $((fwd * FLOOD)) ] || fail "$what: ring_forwarded rose by $fw, $((fwd * FLOOD)) expected"
    [ "$tx" = $(((fwd + 1) * FLOOD)) ] && [ "$rx" = "$tx" ] ||
        fail "$what: wire tx +$tx rx +$rx, $(((fwd + 1) * FLOOD)) each expected"
}
hop_limit_phase flood1 "hop limit" 2

# Reach h3 from h1, then cut h1-h2 under the stream.
spawn_tenant responder 120 "$WORK/vfnic_3/vf0.sock" 192.168.83.3 HOLD_MS=100000
pings=$((STREAM_SECS * 1000 / INTERVAL_MS))
spawn_tenant stream 60 "$WORK/vfnic_1/vf0.sock" 192.168.83.1 TARGET_IP=192.168.83.3 MODE=stream \
    PINGS="$pings" INTERVAL_MS="$INTERVAL_MS"
wait_for_log stream '^reply seq=10 ' 20
ring_sums pre
ip -n "$(ns 1)" link set "${LINK_IF[1]}" down
cut_ms=$(awk '/^reply seq=/ { sub("t_ms=", "", $3); t = $3 } END { print t }' "$WORK/stream.log")
say "h1 reached h3 (10 replies); cut the h1-h2 link (${LINK_IF[1]} down) at about t=${cut_ms} ms"
tenant_done stream 50
say "stream: $TENANT_SUMMARY"
summary_field sent sent
summary_field replies replies
summary_field gap max_gap_ms
after=$(awk -v c="$cut_ms" '/^reply seq=/ { sub("t_ms=", "", $3); if ($3 + 0 > c + 0) n++ } END { print n + 0 }' "$WORK/stream.log")
ring_sums post
say "h1 link_down_events +$((post1_link_down_events - pre1_link_down_events)), h2 +$((post2_link_down_events - pre2_link_down_events)); ring_forwarded over all hosts +$((post_ring_forwarded - pre_ring_forwarded))"
say "recovery: longest gap between replies ${gap} ms (bound $RECOVERY_MAX_MS ms); $after replies after the cut; $replies/$sent answered"
[ "$after" -ge $((pings / 4)) ] || fail "only $after replies after the cut: traffic did not recover"
[ "$gap" -lt "$RECOVERY_MAX_MS" ] || fail "traffic took ${gap} ms to recover (bound $RECOVERY_MAX_MS ms)"
h4_fwd=$((post4_ring_forwarded - pre4_ring_forwarded))
say "h4 forwarded $h4_fwd frames after the cut (the other way round)"
[ "$h4_fwd" -ge "$after" ] || fail "h4 forwarded only $h4_fwd frames after the cut: the stream did not go round the other way"
[ $((post1_link_down_events - pre1_link_down_events)) -ge 1 ] || fail "h1 did not count its link to h2 down"
[ $((sent - replies)) -le $((RECOVERY_MAX_MS / INTERVAL_MS)) ] || fail "$((sent - replies)) of $sent pings lost"

# With h1-h2 cut, h1's floods go h1 -> h4 -> h3 -> h2 and expire on h2.
hop_limit_phase flood2 "hop limit, link cut" 2
for i in 1 2 3 4; do fail_if_dead "vfnic_$i" "at the end"; done
pass "h1 reached h3 round the ring; recovered in ${gap} ms after a cut; $FLOOD unknown-MAC frames expired once each (twice)"
