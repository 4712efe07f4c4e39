# scripts/bench/mac-loop.sh — sourced by ab-bench.sh and ir-profile.sh: the
# client they share, one dpdk-testpmd whose two net_virtio_user ports sit on
# VF0's and VF1's sockets and loop frames in mac forward mode (each port's
# frames addressed to the other VF, so every frame crosses the switch).

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
