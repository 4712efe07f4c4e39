# shellcheck shell=bash
# tests/real/lib.sh — shared helpers for vfnic's real-client suites.
# Source it from a suite (bash, set -euo pipefail), then call real_init NAME.
#
# Environment understood by every suite:
#   BACKEND=vfnic|testpmd  what serves the VF sockets. `vfnic` (default) runs
#                          the product; `testpmd` runs a DPDK net_vhost io-fwd
#                          switch as a stand-in (vf0<->vf1) so the harness can be
#                          exercised without the daemon; vfnic-only assertions
#                          (its counters) are skipped then.
#   VFNIC=path             the daemon binary (default target/release/vfnic)
#   NUM_VFS=4 ENGINES=1    written into the generated vfnic config
#   VFNIC_EXTRA_CONFIG=..  more TOML lines for it (e.g. "queue_pairs = 2")
#   WORK_ROOT=/tmp         where the per-run work dir (logs, sockets) goes
#   KEEP=1                 keep the work dir even when the suite passed
#
# Process model: every child runs under `timeout`, which makes itself a
# process-group leader, so signalling the timeout pid (or its group) reaches
# the child and its descendants. The EXIT trap stops all of them and then
# double-checks with ps that nothing mentioning the work dir survived.

REAL_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$REAL_LIB_DIR/../.." && pwd)

BACKEND=${BACKEND:-vfnic}
VFNIC=${VFNIC:-$REPO_ROOT/target/release/vfnic}
NUM_VFS=${NUM_VFS:-4}
ENGINES=${ENGINES:-1}
WORK_ROOT=${WORK_ROOT:-/tmp}

declare -A PROC_PID=()   # name -> pid of its `timeout` wrapper
declare -A PROC_LOG=()   # name -> log file
declare -a PROC_ORDER=() # start order (stopped in reverse)
SUITE=""
WORK=""
RUN=""
SUITE_OK=0
T0=$SECONDS

say() { echo "[$SUITE $(elapsed)s] $*"; }
elapsed() { echo $((SECONDS - T0)); }

# real_init NAME: work dir, run dir, traps. Call once, first.
real_init() {
    SUITE=$1
    mkdir -p "$WORK_ROOT"
    WORK=$(mktemp -d "$WORK_ROOT/vfnic-$SUITE.XXXXXX")
    RUN="$WORK/run"
    mkdir -p "$RUN"
    T0=$SECONDS
    trap real_cleanup EXIT
    # Turn INT/TERM into a normal exit so the EXIT trap still cleans up.
    trap 'fail "interrupted by a signal (the caller timed out?)"' INT TERM
    say "work dir $WORK (backend=$BACKEND)"
}

# fail MSG...: report, dump the tails of every log, exit 1 (cleanup runs).
FAIL_MSG=""
fail() {
    FAIL_MSG="$*"
    echo "[$SUITE] FAIL: $*" >&2
    local f
    for f in "$WORK"/*.log; do
        [ -f "$f" ] || continue
        echo "----- tail of $(basename "$f") -----" >&2
        tail -n "${FAIL_TAIL:-40}" "$f" | tr -d '\r' >&2
    done
    exit 1
}

# pass: mark success (the work dir is then removed unless KEEP=1).
pass() {
    SUITE_OK=1
    say "PASS${1:+: $*}"
}

# vf_mac N: the daemon's default MAC of VF N.
vf_mac() { printf '02:76:66:6e:00:%02x' "$1"; }

# spawn NAME SECS CMD...: run CMD in the background under `timeout SECS`,
# output to NAME.log. stdin is /dev/null (testpmd and QEMU read stdin), or
# the file/fifo named by SPAWN_STDIN.
spawn() {
    local name=$1 secs=$2
    shift 2
    local log="$WORK/$name.log"
    : >"$log" # exists before the child starts, for wait_for_log
    timeout -k 5 "$secs" "$@" <"${SPAWN_STDIN:-/dev/null}" >"$log" 2>&1 &
    PROC_PID[$name]=$!
    PROC_LOG[$name]=$log
    PROC_ORDER+=("$name")
    echo "$*" > "$WORK/$name.cmd"
}

# nap SECS: sleep in short slices, so INT/TERM traps run promptly (bash
# defers a trap until the foreground command ends).
nap() {
    local end=$((SECONDS + $1))
    while [ $SECONDS -lt $end ]; do sleep 0.5; done
}

alive() { kill -0 "${PROC_PID[$1]}" 2>/dev/null; }

# fail_if_dead NAME WHAT: fail with NAME's exit status if it has ended.
fail_if_dead() {
    alive "$1" && return 0
    wait_exit "$1" 1 || true
    fail "$1 exited (status $EXIT_RC) $2"
}

# wait_exit NAME SECS: wait up to SECS for NAME to end. Returns 0 and sets
# EXIT_RC to its exit status, or returns 1 if it is still running.
# (Not usable inside $(...): only this shell can reap its children.)
EXIT_RC=0
wait_exit() {
    local pid=${PROC_PID[$1]} end=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.2
    done
    EXIT_RC=0
    wait "$pid" 2>/dev/null || EXIT_RC=$?
    return 0
}

# stop_proc NAME [GRACE]: SIGTERM (timeout forwards it to the child), then
# SIGKILL to the whole process group after GRACE seconds. Sets EXIT_RC.
stop_proc() {
    local name=$1 grace=${2:-10} pid=${PROC_PID[$1]}
    kill -TERM "$pid" 2>/dev/null || true
    wait_exit "$name" "$grace" && return 0
    say "$name ignored SIGTERM for ${grace}s; killing its process group"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    wait_exit "$name" 5 || EXIT_RC=137
}

# wait_for_log NAME PATTERN SECS: wait until NAME.log matches the extended
# regex PATTERN; fail if NAME dies or SECS pass first.
wait_for_log() {
    local name=$1 pat=$2 secs=$3 end
    end=$((SECONDS + secs))
    until tr -d '\r' <"${PROC_LOG[$name]}" | grep -aqE "$pat"; do
        fail_if_dead "$name" "before printing /$pat/"
        [ $SECONDS -lt $end ] || fail "$name did not print /$pat/ within ${secs}s"
        sleep 0.2
    done
}

# wait_for_sockets NAME SECS PATH...: wait until every PATH is a socket.
wait_for_sockets() {
    local name=$1 secs=$2 end p missing
    shift 2
    end=$((SECONDS + secs))
    while :; do
        missing=""
        for p in "$@"; do [ -S "$p" ] || missing="$missing $p"; done
        [ -z "$missing" ] && return 0
        fail_if_dead "$name" "before creating:$missing"
        [ $SECONDS -lt $end ] || fail "$name did not create within ${secs}s:$missing"
        sleep 0.1
    done
}

# live_pids_matching TEXT: pids (not zombies) whose command line has TEXT.
live_pids_matching() {
    local pid
    for pid in $(pgrep -f -- "$1" || true); do
        case "$(ps -o stat= -p "$pid" 2>/dev/null)" in
            "" | Z*) ;;
            *) echo "$pid" ;;
        esac
    done
}

# real_cleanup: EXIT trap. Stop children newest first, sweep stragglers.
real_cleanup() {
    local rc=$? i name pids
    trap - EXIT INT TERM
    for ((i = ${#PROC_ORDER[@]} - 1; i >= 0; i--)); do
        name=${PROC_ORDER[$i]}
        if alive "$name"; then stop_proc "$name" 10; fi
    done
    # Anything still mentioning our work dir (sockets and logs live there)
    # is ours: a grandchild that outlived its parent. Give it a few seconds
    # to finish exiting (DPDK teardown is slow), then kill it.
    if [ -n "$WORK" ]; then
        pids=$(live_pids_matching "$WORK")
        for i in $(seq 25); do
            [ -n "$pids" ] || break
            sleep 0.2
            pids=$(live_pids_matching "$WORK")
        done
        if [ -n "$pids" ]; then
            echo "[$SUITE] WARNING: killing leftover processes: ${pids//$'\n'/ }" >&2
            # shellcheck disable=SC2086 # one pid per word
            kill -KILL $pids 2>/dev/null || true
        fi
    fi
    # DPDK --huge-unlink / --in-memory leave nothing behind; double-check.
    if [ "$SUITE_OK" = 1 ] && [ "$rc" -eq 0 ] && [ "${KEEP:-0}" != 1 ]; then
        rm -rf "$WORK"
    elif [ -n "$WORK" ]; then
        echo "[$SUITE] logs kept in $WORK" >&2
    fi
    # Repeat the verdict last, below the log tails, where CI readers look.
    [ -z "$FAIL_MSG" ] || echo "[$SUITE] FAIL: $FAIL_MSG" >&2
    [ "$rc" -eq 0 ] && [ "$SUITE_OK" != 1 ] && rc=1
    exit "$rc"
}

# ---------------------------------------------------------------- backends

# write_vfnic_config FILE: the generated daemon config (defaults MACs).
write_vfnic_config() {
    cat >"$1" <<EOF
# generated by tests/real/lib.sh for suite $SUITE
num_vfs = $NUM_VFS
engines = $ENGINES
run_dir = "$RUN"
${VFNIC_EXTRA_CONFIG:-}
EOF
}

vf_sockets() {
    local n=$1 i
    for ((i = 0; i < n; i++)); do echo "$RUN/vf$i.sock"; done
}

# start_backend: bring up whatever serves RUN/vf*.sock and wait until ready.
start_backend() {
    case "$BACKEND" in
        vfnic) start_vfnic ;;
        testpmd) start_testpmd_switch ;;
        *) fail "unknown BACKEND=$BACKEND (vfnic|testpmd)" ;;
    esac
}

start_vfnic() {
    [ -x "$VFNIC" ] || fail "vfnic binary not found at $VFNIC (cargo build --release, or set VFNIC=)"
    write_vfnic_config "$WORK/vfnic.toml"
    say "starting vfnic: num_vfs=$NUM_VFS engines=$ENGINES"
    spawn vfnic "${VFNIC_TIMEOUT:-600}" "$VFNIC" run --config "$WORK/vfnic.toml" --run-dir "$RUN"
    # shellcheck disable=SC2046
    wait_for_sockets vfnic 20 $(vf_sockets "$NUM_VFS") "$RUN/vfnic.sock"
    say "vfnic ready"
}

# The stand-in: testpmd with two net_vhost ports in io mode (port 0 <-> 1).
# Its forwarding lcore is core 1; the main lcore 0 only prints stats.
start_testpmd_switch() {
    say "starting stand-in testpmd vhost switch"
    spawn backend "${VFNIC_TIMEOUT:-600}" dpdk-testpmd -l 0,1 --main-lcore 0 -m 512 --no-pci \
        --file-prefix="vfsb$$" --huge-unlink \
        --vdev "net_vhost0,iface=$RUN/vf0.sock,queues=1" \
        --vdev "net_vhost1,iface=$RUN/vf1.sock,queues=1" \
        -- --no-mlockall --total-num-mbufs=16384 --forward-mode=io \
        --auto-start --stats-period 5
    wait_for_sockets backend 30 "$RUN/vf0.sock" "$RUN/vf1.sock"
    say "stand-in ready"
}

is_vfnic() { [ "$BACKEND" = vfnic ]; }

# check_backend_alive WHEN: the switch must survive tenants coming and going.
check_backend_alive() {
    if is_vfnic; then fail_if_dead vfnic "$1"; else fail_if_dead backend "$1"; fi
}

# --------------------------------------------------------------- vfnic stats

# vfnic_stats OUTFILE: `vfnic stats --json` into OUTFILE (validated JSON).
vfnic_stats() {
    local out=$1
    timeout -k 2 10 "$VFNIC" --run-dir "$RUN" stats --json >"$out" 2>"$out.err" ||
        fail "vfnic stats --json failed: $(cat "$out.err")"
    jq -e '.vfs | type == "array"' "$out" >/dev/null 2>&1 ||
        fail "vfnic stats --json: no .vfs array in: $(head -c 500 "$out")"
}

# vf_get VAR FILE VF FIELD: set VAR to one field of one VF (by id) from a
# stats file. (It assigns instead of printing so that fail() runs in this
# shell: a fail inside $(...) would only end the subshell.)
vf_get() {
    local v
    v=$(jq -r --argjson id "$3" --arg f "$4" '.vfs[] | select(.id == $id) | .[$f]' "$2")
    [ -n "$v" ] && [ "$v" != null ] || fail "stats: VF $3 has no field '$4' in $(basename "$2")"
    printf -v "$1" '%s' "$v"
}

# check_vfs_connected FILE VF...: the tenants we started show up as connected.
check_vfs_connected() {
    local f=$1 vf mac conn
    shift
    for vf in "$@"; do
        vf_get conn "$f" "$vf" connected
        [ "$conn" = true ] || fail "vfnic reports VF$vf not connected"
        vf_get mac "$f" "$vf" mac
        [ "$mac" = "$(vf_mac "$vf")" ] || fail "VF$vf mac is $mac, expected $(vf_mac "$vf")"
    done
}

# wait_guests_up: guests A and B (VF0, VF1) have booted; with vfnic, its
# counters then go to $WORK/stats-mid.json and both VFs must be connected.
wait_guests_up() {
    wait_for_log A 'VFNIC-GUEST-UP' 120
    wait_for_log B 'VFNIC-GUEST-UP' 120
    say "both guests up"
    if is_vfnic; then
        vfnic_stats "$WORK/stats-mid.json"
        check_vfs_connected "$WORK/stats-mid.json" 0 1
    fi
}

# wait_guests_done TOTAL_SECS: B drives the test and powers off at the end
# (within TOTAL_SECS of the start); A follows once its one-shot iperf3 server
# is done; the backend must have survived.
wait_guests_done() {
    wait_exit B $(($1 - $(elapsed))) || fail "guest B still running after ${1}s"
    [ "$EXIT_RC" -ne 124 ] || fail "guest B hit its timeout"
    wait_exit A 30 || fail "guest A did not power off after the test"
    check_backend_alive "after the guests powered off"
}

# vf_summary FILE VF: one line of counters for the log.
vf_summary() {
    jq -r --argjson id "$2" '.vfs[] | select(.id == $id) |
        "VF\(.id) \(.mac) link=\(.link) connected=\(.connected) tx=\(.tx_packets)p/\(.tx_bytes)B rx=\(.rx_packets)p/\(.rx_bytes)B tx_dropped=\(.tx_dropped) rx_dropped=\(.rx_dropped)"' "$1"
}

# ---------------------------------------------------------------- QEMU guests
# Helpers for suites that boot the test guest of scripts/build-guest.sh
# (qemu_pair.sh keeps its own copies). Env: GUEST_DIR=.cache/guest,
# QEMU=qemu-system-x86_64, GUEST_MEM=256 (MiB), GUEST_SMP=1.

# ensure_guest_image: run scripts/build-guest.sh, which rebuilds the guest
# only when its cache key changed (so a guest from before a new tool or
# /init knob was added is refreshed); about a second when current.
ensure_guest_image() {
    bash "$REPO_ROOT/scripts/build-guest.sh" "${GUEST_DIR:-$REPO_ROOT/.cache/guest}" \
        >"$WORK/build-guest.log" 2>&1 || fail "scripts/build-guest.sh failed"
}

# qemu_guest NAME VF SECS NETDEV_OPTS DEVICE_OPTS KERNEL_ARGS...: one TCG
# guest on RUN/vfVF.sock. NETDEV_OPTS / DEVICE_OPTS are appended to the
# -netdev vhost-user / -device virtio-net-pci options (start them with ',':
# ",queues=2" and ",mq=on"). vectors=0: QEMU 7.2 + TCG + vhost-user crashes
# with MSI-X (see qemu_pair.sh).
qemu_guest() {
    local name=$1 vf=$2 secs=$3 nopts=$4 dopts=$5
    local dir=${GUEST_DIR:-$REPO_ROOT/.cache/guest} mem=${GUEST_MEM:-256}
    shift 5
    spawn "$name" "$secs" "${QEMU:-qemu-system-x86_64}" \
        -M pc,memory-backend=mem -accel tcg -cpu max -smp "${GUEST_SMP:-1}" -m "$mem" \
        -nodefaults -no-user-config -nographic -serial stdio -no-reboot \
        -kernel "$dir/vmlinuz" -initrd "$dir/initrd.gz" \
        -append "console=ttyS0 quiet panic=-1 $*" \
        -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" \
        -chardev "socket,id=vhu,path=$RUN/vf$vf.sock" \
        -netdev "vhost-user,id=net0,chardev=vhu$nopts" \
        -device "virtio-net-pci,netdev=net0,mac=$(vf_mac "$vf"),vectors=0,romfile=$dopts"
}

# guest_console NAME: NAME's serial log without CRs and terminal escapes.
guest_console() { tr -d '\r' <"$WORK/$1.log" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g'; }

# guest_report CONSOLE WHEN WHAT: one VFNIC-REPORT block (vfnic.report=1) of
# a console file; WHEN is start|end, WHAT is k|l|S|snmp.
guest_report() {
    awk -v hdr="VFNIC-REPORT-BEGIN when=$2 what=$3" '
        $0 == hdr { on = 1; next }
        on && $0 == "VFNIC-REPORT-END" { exit }
        on { print }' "$1"
}

# guest_stat VAR CONSOLE WHEN NAME: one `ethtool -S eth0` counter (0 if absent).
guest_stat() {
    local v
    v=$(guest_report "$2" "$3" S | awk -v n="$4:" '{ sub(/^[ \t]+/, "") } $1 == n { print $2; exit }')
    printf -v "$1" '%s' "${v:-0}"
}

# guest_snmp VAR CONSOLE WHEN PROTO FIELD: a /proc/net/snmp counter
# (PROTO Tcp|Udp, FIELD e.g. InCsumErrors, RetransSegs); empty if absent.
guest_snmp() {
    local v
    v=$(guest_report "$2" "$3" snmp | awk -v p="$4:" -v f="$5" '
        $1 == p && !hdr { for (i = 2; i <= NF; i++) col[$i] = i; hdr = 1; next }
        $1 == p && hdr { if (f in col) print $(col[f]); exit }')
    printf -v "$1" '%s' "$v"
}

# guest_offload CONSOLE WHEN FEATURE: its `ethtool -k eth0` state ("on",
# "off", "off [fixed]"...), e.g. FEATURE=tcp-segmentation-offload.
guest_offload() {
    guest_report "$1" "$2" k | awk -v f="$3:" '{ sub(/^[ \t]+/, "") } $1 == f { $1 = ""; sub(/^ /, ""); print; exit }'
}

# guest_iperf_json CONSOLE PREFIX OUT: the JSON between PREFIX-JSON-BEGIN
# and PREFIX-JSON-END (PREFIX IPERF or IPERF-R) into OUT; fails if unreadable.
guest_iperf_json() {
    sed -n "/^$2-JSON-BEGIN\$/,/^$2-JSON-END\$/p" "$1" | sed '1d;$d' >"$3"
    jq -e . "$3" >/dev/null 2>&1 || fail "iperf3 JSON ($2) unreadable (see $3)"
}

# virtio_features_names BITS: the names of the set bits of a virtio-net
# feature string as /sys/class/net/eth0/device/features prints it (bit 0
# first), e.g. "CSUM,GUEST_CSUM,...".
virtio_features_names() {
    awk -v b="$1" 'BEGIN {
        split("0:CSUM 1:GUEST_CSUM 2:CTRL_GUEST_OFFLOADS 3:MTU 5:MAC 7:GUEST_TSO4 " \
              "8:GUEST_TSO6 9:GUEST_ECN 10:GUEST_UFO 11:HOST_TSO4 12:HOST_TSO6 " \
              "13:HOST_ECN 14:HOST_UFO 15:MRG_RXBUF 16:STATUS 17:CTRL_VQ 18:CTRL_RX " \
              "19:CTRL_VLAN 20:CTRL_RX_EXTRA 21:GUEST_ANNOUNCE 22:MQ 23:CTRL_MAC_ADDR " \
              "28:INDIRECT_DESC 29:EVENT_IDX 32:VERSION_1 33:ACCESS_PLATFORM " \
              "34:RING_PACKED 35:IN_ORDER", kv, " ")
        for (k in kv) { split(kv[k], p, ":"); name[p[1]] = p[2] }
        names = ""
        for (i = 0; i < length(b); i++)
            if (substr(b, i + 1, 1) == "1")
                names = names (names == "" ? "" : ",") (i in name ? name[i] : "bit" i)
        print names
    }'
}

# has_feature BITS N: is virtio feature bit N set in BITS?
has_feature() { [ "${1:$2:1}" = 1 ]; }
