# scripts/bench/mac-loop.sh — sourced by ab-bench.sh, ab-switch.sh, ir-profile.sh and phase-profile.sh: how
# they start vfnic, and the client they share: one dpdk-testpmd whose two
# net_virtio_user ports sit on VF0's and VF1's sockets and loop frames in mac
# forward mode (each port's frames addressed to the other VF, so every frame
# crosses the switch).

MAC0=02:76:66:6e:00:00 MAC1=02:76:66:6e:00:01

# mac_loop RUN_DIR FILE_PREFIX TIME_LIMIT [testpmd options...]
# Becomes dpdk-testpmd (under `timeout`): run it in the background, and $!
# is the process to kill. Reads VU (appended to both vdevs), BURST, SIZE.
mac_loop() {
    local dir=$1 prefix=$2 limit=$3
    shift 3
    exec timeout -k 5 "$limit" dpdk-testpmd -l 1,0 --main-lcore 1 -m 512 --no-pci --in-memory \
        --single-file-segments --file-prefix="$prefix" \
        --vdev "net_virtio_user0,path=$dir/vf0.sock,queues=1,mac=$MAC0${VU:-}" \
        --vdev "net_virtio_user1,path=$dir/vf1.sock,queues=1,mac=$MAC1${VU:-}" -- \
        --no-mlockall --total-num-mbufs=16384 --forward-mode=mac --eth-peer=0,"$MAC1" --eth-peer=1,"$MAC0" \
        --burst="$BURST" --txpkts="$SIZE" "$@"
}

# start_vfnic RUN_DIR LOG COMMAND...: starts COMMAND (a vfnic binary, or a
# wrapper such as valgrind and then the binary) with `run` and one engine
# pinned to CPU 1, in the background (its pid in VFNIC_PID), and waits up
# to 30 s for VF1's socket.
start_vfnic() {
    local dir=$1 log=$2
    shift 2
    "$@" run --run-dir "$dir" --engines 1 --engine-cpus 1 >"$log" 2>&1 &
    VFNIC_PID=$!
    for _ in $(seq 300); do [ -S "$dir/vf1.sock" ] && return 0; sleep 0.1; done
}

# start_loop WORK_DIR PREFIX TIME_LIMIT BIN: a fresh WORK_DIR/run, BIN started
# there (start_vfnic, log WORK_DIR/vfnic.log) and the mac loop seeded with
# --tx-first (testpmd log WORK_DIR/testpmd.log), both in the background:
# their pids in VFNIC_PID and LOOP_PID.
start_loop() {
    local d=$1 prefix=$2 limit=$3 bin=$4
    rm -rf "$d"
    mkdir -p "$d/run"
    start_vfnic "$d/run" "$d/vfnic.log" "$bin"
    mac_loop "$d/run" "$prefix" "$limit" --tx-first --stats-period 1 </dev/null >"$d/testpmd.log" 2>&1 &
    LOOP_PID=$!
}

# loop_for WORK_DIR PREFIX SECS BIN: start_loop, let it run SECS seconds,
# stop both (the logs stay in WORK_DIR).
loop_for() {
    local d=$1 prefix=$2 secs=$3 bin=$4
    start_loop "$d" "$prefix" $((secs + 30)) "$bin"
    local vp=$VFNIC_PID tp=$LOOP_PID
    sleep "$secs"
    kill "$tp" "$vp" 2>/dev/null || true
    wait "$tp" "$vp" 2>/dev/null || true
}
