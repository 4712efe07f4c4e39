#!/usr/bin/env bash
# scripts/bench.sh — vfnic against its anchor (DPDK's own vhost backend), same
# client, same run, alternating rounds; prints a table of medians and ratios and
# appends a dated section to BENCHMARKS.md.
#
# Client (identical for both backends): one dpdk-testpmd with two
# net_virtio_user ports, port 0 on VF0's socket (VF0's MAC), port 1 on VF1's,
# mac forwarding with --eth-peer so every frame crosses the switch by
# destination MAC, --tx-first seeds one burst per port, which then circulates.
# Backends on the same two sockets:
#   vfnic   target/release/vfnic run --run-dir DIR --engines $ENGINES [--engine-cpus $ENGINE_CPUS]
#   dpdk    dpdk-testpmd net_vhost0/1 --forward-mode=io --record-core-cycles
# Cases (CASES, comma separated):
#   64, 1518  loop with --burst=32, --txpkts=SIZE: packets/s (both ports' Rx-pps
#             summed, median of the per-second samples leaving out the first
#             two), Gbit/s (frame bytes, no CRC/preamble), backend CPU
#             cycles per packet
#   lat       loop with --burst=1 (one packet in each direction): round-trip
#             time derived as 1 / per-port Rx-pps, p50/p99 over the samples
#   idle      4 VFs connected (testpmd rxonly on 4 ports, no traffic): the
#             backend process's CPU time over IDLE_SECS, % of one core
# Env: CASES=64,1518,lat,idle ROUNDS=3 SECS=8 (seconds measured per run)
#      VUARGS="" (appended to both client vdevs, e.g. ",packed_vq=1")
#      ENGINES=1 ENGINE_CPUS=1 (--engine-cpus: core 1 is where the anchor's
#      poller runs, so both backends get the same placement; ENGINE_CPUS= to
#      leave the engines unpinned)
#      IDLE_SECS=10 WAIT_IDLE=0 (wait up to N s for a quiet machine before each
#      pair) VFNIC=target/release/vfnic OUT=/tmp/vfnic-bench.<time> (logs)
#      MD=BENCHMARKS.md (where the section is appended; MD= to skip)
#      NOTE="" (a line added to the section)
#      CLIENT_EXTRA="" (added to the client's testpmd options, e.g.
#      --record-core-cycles: its fe.log then ends with the client's own
#      cycles per packet)
# Needs: root, hugepages (>= 512 free 2 MiB pages: scripts/setup.sh or
# /work/shared/recipes/setup-hugepages.sh), dpdk-testpmd (package dpdk), python3,
# 2+ cores. Run `cargo build --release` first.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
HELPERS=$REPO/scripts/bench
CASES=${CASES:-64,1518,lat,idle}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-8}
VUARGS=${VUARGS:-}
ENGINES=${ENGINES:-1}
ENGINE_CPUS=${ENGINE_CPUS-1}
IDLE_SECS=${IDLE_SECS:-10}
WAIT_IDLE=${WAIT_IDLE:-0}
VFNIC=${VFNIC:-$REPO/target/release/vfnic}
OUT=${OUT:-/tmp/vfnic-bench.$(date +%Y%m%d-%H%M%S).$$}
MD=${MD-$REPO/BENCHMARKS.md}
NOTE=${NOTE:-}
MIN_SAMPLES=${MIN_SAMPLES:-4}

MAC0=02:76:66:6e:00:00
MAC1=02:76:66:6e:00:01
vf_mac() { printf '02:76:66:6e:00:%02x' "$1"; }

log() { echo "[bench $(date +%H:%M:%S)] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- our processes: each runs under `timeout` (its own process group) --------
declare -a GROUPS_STARTED=()
cleanup() {
    local g
    for g in "${GROUPS_STARTED[@]}"; do kill -TERM -- "-$g" 2>/dev/null; done
    sleep 0.3
    for g in "${GROUPS_STARTED[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# child_of TIMEOUT_PID: the real process under `timeout`
child_of() {
    local c
    for _ in $(seq 50); do
        c=$(pgrep -P "$1" | head -1)
        [ -n "$c" ] && { echo "$c"; return 0; }
        sleep 0.05
    done
    return 1
}

# stop_proc TIMEOUT_PID SIGNAL WAIT_S: signal the real process, wait for the
# wrapper, kill the group if it lingers.
stop_proc() {
    local t=$1 sig=$2 w=$3 c
    c=$(pgrep -P "$t" | head -1)
    [ -n "$c" ] && kill "-$sig" "$c" 2>/dev/null
    for _ in $(seq $((w * 10))); do kill -0 "$t" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$t" 2>/dev/null; then
        log "warning: pid $c ignored SIG$sig for ${w}s, killing"
        kill -KILL -- "-$t" 2>/dev/null
    fi
    wait "$t" 2>/dev/null
}

# --- machine checks ----------------------------------------------------------
# Other pollers or compilers on this 2-core machine wreck the figures.
others() {
    ps -eo pid=,comm=,args= |
        awk '$2 ~ /^(dpdk-|qemu-system|ovs-vswitchd|rustc|cargo|vfnic|cc1|ld$)/' |
        grep -v -F "$OUT" | cut -c1-140
}
# machine busy %, steal % over 0.5 s (while none of ours runs)
cpu_busy() {
    local a b
    read -r -a a </proc/stat; sleep 0.5; read -r -a b </proc/stat
    awk -v a="${a[*]}" -v b="${b[*]}" 'BEGIN {
        split(a, x, " "); split(b, y, " "); tot = 0
        for (i = 2; i <= 9; i++) tot += y[i] - x[i]   # user..steal (guest is inside user)
        idle = (y[5] - x[5]) + (y[6] - x[6]); st = y[9] - x[9]
        if (tot <= 0) tot = 1
        printf "%.0f %.0f", 100 * (tot - idle) / tot, 100 * st / tot }'
}
wait_idle() {
    [ "$WAIT_IDLE" -gt 0 ] || return 0
    local quiet=0 end=$((SECONDS + WAIT_IDLE)) busy
    while [ $quiet -lt 5 ] && [ $SECONDS -lt $end ]; do
        read -r busy _ < <(cpu_busy)
        if [ -z "$(others)" ] && [ "$busy" -lt 20 ]; then quiet=$((quiet + 1)); else quiet=0; fi
        sleep 0.5
    done
    [ $quiet -ge 5 ] || log "WAIT_IDLE: machine not quiet after ${WAIT_IDLE}s, going on"
}

# --- backends -----------------------------------------------------------------
SEQ=0
BE_T=""       # timeout pid of the backend
BE_PID=""     # the backend process itself

# start_backend vfnic|dpdk DIR NPORTS LOG
start_backend() {
    local kind=$1 dir=$2 n=$3 logf=$4
    rm -rf "$dir"; mkdir -p "$dir"
    SEQ=$((SEQ + 1))
    if [ "$kind" = vfnic ]; then
        local extra=()
        [ -n "$ENGINE_CPUS" ] && extra=(--engine-cpus "$ENGINE_CPUS")
        timeout -k 5 600 "$VFNIC" run --run-dir "$dir" --engines "$ENGINES" "${extra[@]}" \
            </dev/null >"$logf" 2>&1 &
    else
        local vdevs=() p
        for ((p = 0; p < n; p++)); do vdevs+=(--vdev "net_vhost$p,iface=$dir/vf$p.sock,queues=1"); done
        timeout -k 5 600 stdbuf -oL dpdk-testpmd -l 0,1 --main-lcore 0 -m 512 --no-pci --huge-unlink \
            --file-prefix="vfbbe$$_$SEQ" "${vdevs[@]}" -- --no-mlockall --total-num-mbufs=16384 \
            --forward-mode=io --auto-start --stats-period 5 --record-core-cycles \
            </dev/null >"$logf" 2>&1 &
    fi
    BE_T=$!; GROUPS_STARTED+=("$BE_T")
    BE_PID=$(child_of "$BE_T") || { log "backend $kind did not start"; return 1; }
    # stdbuf execs testpmd: the pid stays the same
    for _ in $(seq 150); do
        local all=1 p
        for ((p = 0; p < n; p++)); do [ -S "$dir/vf$p.sock" ] || all=0; done
        [ "$kind" = vfnic ] && [ ! -S "$dir/vfnic.sock" ] && all=0
        [ $all = 1 ] && return 0
        kill -0 "$BE_T" 2>/dev/null || break
        sleep 0.1
    done
    log "backend $kind: sockets did not appear (see $logf)"; return 1
}
stop_backend() {
    # testpmd prints its final statistics and "CPU cycles/packet" on SIGINT
    stop_proc "$BE_T" INT 15
    BE_T=""
}

# --- client -------------------------------------------------------------------
FE_T=""
# start_client DIR NPORTS LOG MODE(loop|idle) SIZE BURST
start_client() {
    local dir=$1 n=$2 logf=$3 mode=$4 size=$5 burst=$6 p vdevs=() app=()
    for ((p = 0; p < n; p++)); do
        vdevs+=(--vdev "net_virtio_user$p,path=$dir/vf$p.sock,queues=1,mac=$(vf_mac "$p")$VUARGS")
    done
    if [ "$mode" = loop ]; then
        # shellcheck disable=SC2054  # the commas belong to testpmd's arguments
        app=(--forward-mode=mac --eth-peer=0,"$MAC1" --eth-peer=1,"$MAC0" --tx-first
            --burst="$burst" --txpkts="$size")
    else
        app=(--forward-mode=rxonly)
    fi
    local extra=()
    read -ra extra <<<"${CLIENT_EXTRA:-}"
    SEQ=$((SEQ + 1))
    timeout -k 5 $((SECS + IDLE_SECS + 60)) stdbuf -oL dpdk-testpmd -l 1,0 --main-lcore 1 -m 512 \
        --no-pci --in-memory --single-file-segments --file-prefix="vfbfe$$_$SEQ" "${vdevs[@]}" -- \
        --no-mlockall --total-num-mbufs=16384 "${app[@]}" "${extra[@]}" --stats-period 1 \
        </dev/null >"$logf" 2>&1 &
    FE_T=$!; GROUPS_STARTED+=("$FE_T")
}
# blocks LOG: how many periodic stats blocks testpmd printed (for its last port)
blocks() { grep -c "NIC statistics for port $2 " "$1" 2>/dev/null || true; }
# wait_blocks LOG PORT N TIMEOUT_S
wait_blocks() {
    local _i
    for _i in $(seq $(($4 * 10))); do
        [ "$(blocks "$1" "$2")" -ge "$3" ] && return 0
        kill -0 "$FE_T" 2>/dev/null || return 1
        sleep 0.1
    done
    return 1
}
proc_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
engines_json() { "$VFNIC" --run-dir "$1" --json engines 2>/dev/null || echo null; }

# measure ROUND CASE BACKEND: one run, results in $OUT/m/ROUND-CASE-BACKEND/
measure() {
    local round=$1 case=$2 kind=$3 m=$OUT/m/$1-$2-$3 dir nports=2 size=64 burst=32 mode=loop
    dir=$OUT/run/$1-$2-$3
    rm -rf "$m"; mkdir -p "$m"
    case $case in
    lat) burst=1 ;;
    idle) nports=4; mode=idle ;;
    *) size=$case ;;
    esac
    local busy steal foreign
    read -r busy steal < <(cpu_busy)
    foreign=$(others)
    [ -n "$foreign" ] && log "WARNING: other busy processes: $(echo "$foreign" | tr '\n' ';')"
    {
        echo "round=$round"; echo "case=$case"; echo "backend=$kind"; echo "size=$size"
        echo "burst=$burst"; echo "mode=$mode"; echo "machine_busy_pct=$busy"; echo "steal_pct=$steal"
        echo "foreign=$(echo "$foreign" | awk 'NF {print $2}' | sort -u | tr '\n' ' ')"
        echo "start=$(date +%s)"
    } >"$m/info"
    printf '%s\n' "$foreign" >"$m/foreign.txt"
    start_backend "$kind" "$dir" "$nports" "$m/be.log" || { echo "ok=0" >>"$m/info"; stop_backend; return 1; }
    start_client "$dir" "$nports" "$m/fe.log" "$mode" "$size" "$burst"
    local last=$((nports - 1)) ok=1
    if [ "$mode" = loop ]; then
        # block 1 is printed as forwarding starts (0 pps), block 2 is the
        # ramp-up: both left out; the window starts after block 2
        if wait_blocks "$m/fe.log" "$last" 2 30; then
            [ "$kind" = vfnic ] && engines_json "$dir" >"$m/eng_before.json"
            local t0=$SECONDS
            sleep "$SECS"
            [ "$kind" = vfnic ] && "$VFNIC" --run-dir "$dir" --json vf show 0 >"$m/vf0.json" 2>/dev/null
            # at least MIN_SAMPLES samples after the first two (stats periods stretch to ~2 s
            # when the printing lcore shares its core with a poller)
            wait_blocks "$m/fe.log" "$last" $((MIN_SAMPLES + 2)) 8
            [ "$kind" = vfnic ] && engines_json "$dir" >"$m/eng_after.json"
            echo "window_s=$((SECONDS - t0))" >>"$m/info"
        else
            ok=0; log "client did not start forwarding ($m/fe.log)"
        fi
    else
        if wait_blocks "$m/fe.log" "$last" 1 30; then
            sleep 2
            [ "$kind" = vfnic ] && "$VFNIC" --run-dir "$dir" --json stats >"$m/stats.json" 2>/dev/null
            [ "$kind" = vfnic ] && engines_json "$dir" >"$m/eng_before.json"
            local t0 t1 c0 c1
            t0=$(date +%s.%N); c0=$(proc_ticks "$BE_PID")
            sleep "$IDLE_SECS"
            t1=$(date +%s.%N); c1=$(proc_ticks "$BE_PID")
            [ "$kind" = vfnic ] && engines_json "$dir" >"$m/eng_after.json"
            echo "ticks=$((c1 - c0)) secs=$(echo "$t0 $t1" | awk '{printf "%.3f", $2 - $1}') clk_tck=$(getconf CLK_TCK)" >"$m/cpu.txt"
        else
            ok=0; log "idle client did not start ($m/fe.log)"
        fi
    fi
    # whatever else started while we measured counts too
    local late
    late=$(others)
    if [ -n "$late" ]; then
        printf '%s\n' "$late" >>"$m/foreign.txt"
        echo "foreign_after=$(echo "$late" | awk 'NF {print $2}' | sort -u | tr '\n' ' ')" >>"$m/info"
    fi
    stop_proc "$FE_T" INT 15
    stop_backend
    echo "ok=$ok" >>"$m/info"
    rm -rf "$dir"
    [ $ok = 1 ]
}

# --- main ---------------------------------------------------------------------
command -v dpdk-testpmd >/dev/null || die "dpdk-testpmd not found (apt-get install dpdk)"
command -v python3 >/dev/null || die "python3 not found"
[ -x "$VFNIC" ] || die "$VFNIC not built: run cargo build --release"
if [ -n "$(find "$REPO/src" "$REPO/crates" -name '*.rs' -newer "$VFNIC" 2>/dev/null | head -1)" ]; then
    log "WARNING: sources are newer than $VFNIC; run cargo build --release"
fi
free=$(awk '/HugePages_Free/ {print $2}' /proc/meminfo)
[ "${free:-0}" -ge 512 ] || die "need 512 free 2 MiB hugepages (have ${free:-0}); run scripts/setup.sh or setup-hugepages.sh"
[ "$(nproc)" -ge 2 ] || die "needs 2 cores"

mkdir -p "$OUT/m" "$OUT/run"
# others may rebuild target/release while we measure: run a private copy
cp "$VFNIC" "$OUT/vfnic" || die "cannot copy $VFNIC"
VFNIC_BUILT=$(date -r "$VFNIC" '+%Y-%m-%d %H:%M:%S')
VFNIC=$OUT/vfnic
IFS=, read -r -a CASE_LIST <<<"$CASES"
for c in "${CASE_LIST[@]}"; do
    case $c in lat | idle | [0-9]*) ;; *) die "unknown case $c (64, 1518, any size, lat, idle)" ;; esac
done

cmd="CASES=$CASES ROUNDS=$ROUNDS SECS=$SECS ENGINES=$ENGINES"
[ "$ENGINE_CPUS" != 1 ] && cmd+=" ENGINE_CPUS=$ENGINE_CPUS"
[ -n "$VUARGS" ] && cmd+=" VUARGS=\"$VUARGS\""
[ "$IDLE_SECS" != 10 ] && cmd+=" IDLE_SECS=$IDLE_SECS"
[ "$WAIT_IDLE" != 0 ] && cmd+=" WAIT_IDLE=$WAIT_IDLE"
cmd+=" scripts/bench.sh"
dirty=$(git -C "$REPO" status --porcelain --untracked-files=normal -- src crates Cargo.toml Cargo.lock 2>/dev/null |
    awk '{print $2}' | tr '\n' ' ')
{
    echo "command=$cmd"
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "vfnic_built=$VFNIC_BUILT"
    echo "commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo "dirty=$dirty"
    echo "nproc=$(nproc)"
    echo "cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "kernel=$(uname -r)"
    echo "dpdk=$(dpkg-query -W -f='${Version}' dpdk 2>/dev/null || echo unknown)"
    echo "load=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "engines=$ENGINES"; echo "engine_cpus=$ENGINE_CPUS"; echo "vuargs=$VUARGS"
    echo "secs=$SECS"; echo "idle_secs=$IDLE_SECS"; echo "rounds=$ROUNDS"; echo "cases=$CASES"
    echo "note=$NOTE"
} >"$OUT/meta"
log "results in $OUT; $cmd"
[ -n "$dirty" ] && log "note: working tree has uncommitted changes in: $dirty"
f=$(others); [ -n "$f" ] && log "WARNING: other busy processes at start, figures will be low/noisy:"$'\n'"$f"

t_start=$SECONDS
for ((r = 1; r <= ROUNDS; r++)); do
    for c in "${CASE_LIST[@]}"; do
        wait_idle
        # alternate which backend goes first, so neither always gets the
        # "second run" conditions
        if [ $((r % 2)) = 1 ]; then order=(vfnic dpdk); else order=(dpdk vfnic); fi
        for b in "${order[@]}"; do
            log "round $r/$ROUNDS case $c backend $b"
            measure "$r" "$c" "$b" || { log "retrying once"; measure "$r" "$c" "$b" || log "FAILED: round $r $c $b"; }
        done
    done
done
log "measurements took $((SECONDS - t_start)) s"

python3 "$HELPERS/report.py" "$OUT" || die "report failed"
if [ -n "$MD" ]; then
    [ -f "$MD" ] || printf '# vfnic benchmarks\n\nMade by scripts/bench.sh; see its header.\n' >"$MD"
    { echo; cat "$OUT/section.md"; } >>"$MD"
    log "appended to $MD"
fi
