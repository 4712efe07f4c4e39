# shellcheck shell=bash
# tests/real/uplink_lib.sh — network namespaces for the uplink suites.
# Source after lib.sh. Namespaces and links are named after this run's pid,
# made by the suite and deleted on exit; traffic stays on their addresses.

NS_PREFIX="vfu$$"
declare -a NETNS=()

# ns_add NAME: a fresh namespace ${NS_PREFIX}NAME with lo up.
ns_add() {
    local ns="${NS_PREFIX}$1"
    ip netns add "$ns" || fail "cannot create network namespace $ns (root needed)"
    NETNS+=("$ns")
    ip -n "$ns" link set lo up
}

ns() { echo "${NS_PREFIX}$1"; }

# ns_no_ipv6 NAME...: IPv6 off in these namespaces (so the only traffic on
# their links is the suite's own IPv4, which the counters can be checked
# against).
ns_no_ipv6() {
    local n
    for n in "$@"; do
        ip netns exec "$(ns "$n")" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    done
}

# Wrap lib.sh's EXIT trap so namespaces go after the processes.
uplink_init() {
    real_init "$1"
    trap uplink_exit EXIT
}

uplink_exit() {
    local rc=$? n
    trap - EXIT
    for n in "${NETNS[@]}"; do
        ip netns pids "$n" 2>/dev/null | xargs -r kill -TERM 2>/dev/null || true
    done
    sleep 0.5
    for n in "${NETNS[@]}"; do
        ip netns pids "$n" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
        ip netns del "$n" 2>/dev/null || true
    done
    # lib.sh's cleanup reads the status from $? and exits with it.
    ( exit "$rc" )
    real_cleanup
}

# veth_pair A ADDR_A B ADDR_B: a veth between namespaces A and B with /24s.
veth_pair() {
    local a=$1 aa=$2 b=$3 ba=$4 ia="v${NS_PREFIX: -5}$1$3" ib="v${NS_PREFIX: -5}$3$1"
    ip link add "$ia" netns "$(ns "$a")" type veth peer name "$ib" netns "$(ns "$b")"
    ip -n "$(ns "$a")" addr add "$aa/24" dev "$ia"
    ip -n "$(ns "$b")" addr add "$ba/24" dev "$ib"
    ip -n "$(ns "$a")" link set "$ia" up
    ip -n "$(ns "$b")" link set "$ib" up
    VETH_A=$ia
    VETH_B=$ib
}

# start_vfnic_in NS NAME CONFIG_TEXT: the daemon inside a namespace, with
# its own run dir $WORK/NAME.
start_vfnic_in() {
    local n=$1 name=$2 dir="$WORK/$2"
    mkdir -p "$dir"
    printf 'run_dir = "%s"\n%s\n' "$dir" "$3" >"$dir/vfnic.toml"
    spawn "$name" 120 ip netns exec "$(ns "$n")" "$VFNIC" run --config "$dir/vfnic.toml"
    wait_for_sockets "$name" 20 "$dir/vf0.sock" "$dir/vfnic.sock"
}

# uplink_counter VAR RUNDIR UPLINK COUNTER
uplink_counter() {
    local _uc
    _uc=$(timeout -k 2 10 "$VFNIC" --run-dir "$2" uplink show "$3" --json | jq -r --arg c "$4" '.counters[$c]') ||
        fail "vfnic uplink show $3 failed"
    [ -n "$_uc" ] && [ "$_uc" != null ] || fail "uplink $3 has no counter $4"
    printf -v "$1" "%s" "$_uc"
}

# vf_ping SOCK VF_IP TARGET_IP [PINGS]: ARP + ICMP echo from a VF (the
# project's virtio-user client, tests/uplink.rs vf_reaches_ip).
UPLINK_TEST_BIN=""
vf_ping() {
    if [ -z "$UPLINK_TEST_BIN" ]; then
        UPLINK_TEST_BIN=$(cd "$REPO_ROOT" && cargo test --release --test uplink --no-run --message-format=json 2>/dev/null |
            jq -r 'select(.executable != null and .target.name == "uplink") | .executable' | tail -n1)
        [ -x "$UPLINK_TEST_BIN" ] || fail "cannot build the uplink test client (cargo test --test uplink)"
    fi
    VF_SOCK=$1 VF_IP=$2 TARGET_IP=$3 PINGS=${4:-5} timeout -k 2 40 \
        "$UPLINK_TEST_BIN" --ignored --exact vf_reaches_ip --nocapture >"$WORK/ping-$3.log" 2>&1 ||
        { cat "$WORK/ping-$3.log"; fail "VF at $2 did not reach $3"; }
    say "VF $2 -> $3: $(grep -c '^reply' "$WORK/ping-$3.log") echo replies"
}

# uplink_test_bin: sets UPLINK_TEST_BIN, the tests/uplink.rs test binary
# whose #[ignore]d tests are the suites' tenants (built if needed).
uplink_test_bin() {
    [ -n "$UPLINK_TEST_BIN" ] && return 0
    UPLINK_TEST_BIN=$(cd "$REPO_ROOT" && cargo test --release --test uplink --no-run --message-format=json 2>/dev/null |
        jq -r 'select(.executable != null and .target.name == "uplink") | .executable' | tail -n1)
    [ -x "$UPLINK_TEST_BIN" ] || fail "cannot build the uplink test client (cargo test --test uplink)"
}

# spawn_tenant NAME SECS SOCK VF_IP [VAR=VALUE...]: the vf_tenant of
# tests/uplink.rs on a VF socket in the background (lib.sh's spawn, log
# NAME.log): it answers ARP and ping for VF_IP and, given TARGET_IP=...,
# pings that (see vf_tenant for PINGS, INTERVAL_MS, MODE, HOLD_MS,
# FLOOD_FRAMES).
spawn_tenant() {
    local name=$1 secs=$2 sock=$3 ip=$4
    shift 4
    uplink_test_bin
    spawn "$name" "$secs" env VF_SOCK="$sock" VF_IP="$ip" "$@" \
        "$UPLINK_TEST_BIN" --ignored --exact vf_tenant --nocapture --test-threads 1
}

# tenant_done NAME SECS: wait for a tenant to finish and succeed; prints
# its SUMMARY line into TENANT_SUMMARY.
TENANT_SUMMARY=""
tenant_done() {
    wait_exit "$1" "$2" || fail "tenant $1 still running after $2 s"
    [ "$EXIT_RC" = 0 ] || fail "tenant $1 failed (status $EXIT_RC)"
    TENANT_SUMMARY=$(grep -a '^SUMMARY ' "$WORK/$1.log" | tail -n1)
    [ -n "$TENANT_SUMMARY" ] || fail "tenant $1 printed no SUMMARY"
}

# summary_field VAR FIELD: one key=value of TENANT_SUMMARY.
summary_field() {
    local v
    v=$(tr ' ' '\n' <<<"$TENANT_SUMMARY" | awk -F= -v k="$2" '$1 == k { print $2 }')
    [ -n "$v" ] || fail "no $2 in tenant summary: $TENANT_SUMMARY"
    printf -v "$1" '%s' "$v"
}

# uplink_counters PREFIX RUNDIR UPLINK COUNTER...: PREFIX_COUNTER for each,
# from one `vfnic uplink show --json` (a consistent snapshot).
uplink_counters() {
    local p=$1 dir=$2 up=$3 j c v
    shift 3
    j=$(timeout -k 2 10 "$VFNIC" --run-dir "$dir" uplink show "$up" --json) || fail "vfnic uplink show $up failed"
    for c in "$@"; do
        v=$(jq -r --arg c "$c" '.counters[$c]' <<<"$j")
        [ -n "$v" ] && [ "$v" != null ] || fail "uplink $up has no counter $c"
        printf -v "${p}_$c" '%s' "$v"
    done
}
