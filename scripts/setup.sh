#!/usr/bin/env bash
# scripts/setup.sh — prepare a Debian 12 machine for vfnic's real-client tests.
#
# Idempotent; run as root. It:
#   1. installs the Debian packages the real-client suites need, but only when
#      at least one of them is missing (so a warm machine pays nothing);
#   2. makes sure apt's package lists exist (build-guest.sh resolves and
#      downloads the guest kernel with apt);
#   3. reserves 2 MiB hugepages (DPDK cannot build mbuf pools without them)
#      and mounts hugetlbfs on /dev/hugepages.
#
# Env: HUGEPAGES=1024 (number of 2 MiB pages to reserve, i.e. 2 GiB)
set -euo pipefail

HUGEPAGES=${HUGEPAGES:-1024}

# Everything the harness calls: QEMU + guest-image tools, DPDK's testpmd and the
# PMDs it loads as plugins (vhost, virtio-user, ring mempool), iperf3 for the
# guests, ethtool for the guests (offload and queue settings, per-queue
# counters; build-guest.sh copies it in), jq to read `vfnic stats --json`,
# procps for the leak check (ps).
PACKAGES=(
    qemu-system-x86 busybox-static cpio iperf3 ethtool
    dpdk dpdk-dev librte-net-vhost23 librte-net-virtio23 librte-mempool-ring23
    xz-utils iproute2 jq procps ca-certificates
)

log() { echo "setup: $*"; }

require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: must run as root (apt-get, hugepages)" >&2
        exit 1
    fi
}

is_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

apt_lists_present() {
    compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null
}

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        is_installed "$p" || missing+=("$p")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "packages: all present"
        # build-guest.sh still needs package lists to find the kernel .deb
        if ! apt_lists_present; then
            log "apt lists missing: apt-get update"
            apt-get update -q
        fi
        return
    fi
    log "packages: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

setup_hugepages() {
    local total
    total=$(awk '/^HugePages_Total:/ {print $2}' /proc/meminfo)
    # Only grow the pool: another user of the machine may have reserved more.
    if [ "$total" -lt "$HUGEPAGES" ]; then
        log "hugepages: reserving $HUGEPAGES x 2 MiB (had $total)"
        echo "$HUGEPAGES" > /proc/sys/vm/nr_hugepages
        total=$(awk '/^HugePages_Total:/ {print $2}' /proc/meminfo)
        if [ "$total" -lt "$HUGEPAGES" ]; then
            # Fragmented memory can yield fewer pages; the suites need ~512 each.
            log "WARNING: only $total hugepages could be reserved"
        fi
    else
        log "hugepages: $total reserved already"
    fi
    mkdir -p /dev/hugepages
    if ! mountpoint -q /dev/hugepages; then
        log "hugepages: mounting hugetlbfs on /dev/hugepages"
        mount -t hugetlbfs nodev /dev/hugepages
    fi
    grep -E '^HugePages_(Total|Free):' /proc/meminfo | sed 's/^/setup: /'
}

main() {
    require_root
    install_packages
    setup_hugepages
    log "done"
}

main "$@"
