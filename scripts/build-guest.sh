#!/usr/bin/env bash
# scripts/build-guest.sh OUTDIR [KERNEL_PKG]
#
# Builds the tiny Linux guest that tests/real/qemu_pair.sh boots under QEMU:
#   OUTDIR/vmlinuz     Debian cloud kernel (what linux-image-cloud-amd64
#                      depends on, unless KERNEL_PKG names another one)
#   OUTDIR/initrd.gz   busybox + virtio-net modules + iperf3 + ethtool, with an /init
#                      driven by kernel command-line knobs (see GUEST_INIT)
#   OUTDIR/stamp       what the two files were built from (the cache key)
#
# Cache: when OUTDIR/stamp matches the current key (kernel package+version,
# this script's own hash, iperf3, ethtool and busybox versions) nothing is
# rebuilt.
# FORCE=1 rebuilds anyway. The kernel .deb is kept in OUTDIR/debs, so a rebuild
# after editing /init downloads nothing.
#
# Why the 6.1 bookworm kernel: the 6.12 backports kernel double-faults at boot
# under QEMU 7.2 TCG about half the time.
#
# Needs (scripts/setup.sh installs them): apt lists, busybox-static, cpio,
# iperf3, ethtool, xz-utils.
set -euo pipefail

SELF=$(readlink -f "${BASH_SOURCE[0]}")

# Modules to insmod, dependencies first. Any of them may be built in, in which
# case it is simply absent from the package and skipped.
GUEST_MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
               virtio_pci failover net_failover virtio_net)

log() { echo "build-guest: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

check_tools() {
    local t
    for t in busybox cpio iperf3 ethtool gzip dpkg-deb apt-get apt-cache ldd; do
        if [ "$t" = ethtool ]; then
            ethtool_path >/dev/null || die "missing 'ethtool' (run scripts/setup.sh)"
            continue
        fi
        command -v "$t" >/dev/null || die "missing '$t' (run scripts/setup.sh)"
    done
    # busybox must be static: the initramfs holds no libc for it
    if ldd "$(command -v busybox)" >/dev/null 2>&1; then
        die "busybox is dynamically linked; install busybox-static"
    fi
}

# ethtool lives in /usr/sbin, which a non-root PATH may lack.
ethtool_path() {
    local p
    p=$(command -v ethtool 2>/dev/null) && { echo "$p"; return; }
    for p in /usr/sbin/ethtool /sbin/ethtool; do
        [ -x "$p" ] && { echo "$p"; return; }
    done
    return 1
}

# The versioned kernel package, e.g. linux-image-6.1.0-56-cloud-amd64.
resolve_kernel_pkg() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}

pkg_version() {
    apt-cache show "$1" 2>/dev/null | awk '/^Version:/ {print $2; exit}'
}

cache_key() {
    local pkg=$1 ver=$2
    # layout=2: the initrd gained ethtool (any change to this script also
    # changes script=, but the explicit bump keeps old stamps from matching).
    printf 'layout=2\nkernel=%s %s\nscript=%s\niperf3=%s\nethtool=%s\nbusybox=%s\n' \
        "$pkg" "$ver" \
        "$(sha256sum "$SELF" | cut -c1-16)" \
        "$(dpkg-query -W -f='${Version}' iperf3 2>/dev/null || echo '?')" \
        "$(dpkg-query -W -f='${Version}' ethtool 2>/dev/null || echo '?')" \
        "$(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || echo '?')"
}

# Download the kernel .deb into OUTDIR/debs (kept across rebuilds); prints
# its path. apt-get download names it pkg_version_arch.deb (':' as %3a).
fetch_kernel_deb() {
    local pkg=$1 ver=$2 debs=$3 deb f
    deb="$debs/${pkg}_${ver//:/%3a}_$(dpkg --print-architecture).deb"
    if [ -s "$deb" ]; then
        echo "$deb"
        return
    fi
    rm -f "$debs"/*.deb
    log "downloading $pkg $ver"
    # APT::Sandbox::User=root: apt's _apt user cannot write into OUTDIR
    if ! (cd "$debs" && apt-get -q -o APT::Sandbox::User=root download "$pkg=$ver" >&2); then
        # Stale lists point at a version the mirror dropped: refresh once.
        [ "$(id -u)" -eq 0 ] || die "download of $pkg failed"
        log "download failed; apt-get update and retry"
        apt-get update -q >&2
        (cd "$debs" && apt-get -q -o APT::Sandbox::User=root download "$pkg" >&2)
    fi
    for f in "$debs"/*.deb; do
        [ -s "$f" ] && { echo "$f"; return; }
    done
    die "no .deb for $pkg after download"
}

# Copy a module into the initramfs, decompressing when Debian shipped it packed.
copy_module() {
    local src=$1 dst=$2
    case "$src" in
        *.ko.xz)  xz -dc "$src" > "$dst" ;;
        *.ko.zst) zstd -dcq "$src" > "$dst" ;;
        *.ko.gz)  gzip -dc "$src" > "$dst" ;;
        *)        cp "$src" "$dst" ;;
    esac
}

# iperf3 and ethtool are dynamic Debian binaries: copy each with every
# library ldd names, at the same paths, so the guest's loader finds them.
copy_dynamic() {
    local root=$1 src=$2 dst=$3 lib
    install -D -m 0755 "$src" "$root$dst"
    for lib in $(ldd "$src" | awk '/=> \// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}'); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$(dirname "$lib")/"
    done
}

write_init() {
    cat > "$1" <<'GUEST_INIT'
#!/bin/busybox sh
# vfnic test guest /init. Knobs come from the kernel command line:
#   vfnic.ip=10.0.0.1/24     address of eth0
#   vfnic.peer=10.0.0.2      the other guest
#   vfnic.role=server|client|ping|idle
#       server: iperf3 -s -1 (one test), then power off
#       client: wait for peer, ping it, then iperf3 -c peer (JSON output)
#       ping:   wait for peer, ping it, then power off
#       idle:   stay up for vfnic.wait seconds
#   vfnic.pings=10           counted pings (0.2 s apart) after the peer answers
#   vfnic.bytes=100M         iperf3 -n (wins over vfnic.time)
#   vfnic.time=5             iperf3 -t
#   vfnic.iperfargs=-P_2     extra iperf3 client args ('_' stands for a space)
#   vfnic.parallel=4         iperf3 -P 4: that many parallel TCP flows
#   vfnic.reverse=1          client: after the first iperf3 run (client ->
#                            server), a second one with -R (server -> client)
#   vfnic.tests=2            server: serve that many iperf3 tests, one after
#                            the other (2 for a client with vfnic.reverse=1)
#   vfnic.ethtool=-K_eth0_tso_off;-L_eth0_combined_2
#                            ethtool commands run after eth0 is up and before
#                            the role starts ('_' = space, ';' separates
#                            commands; the knob may also be repeated)
#   vfnic.report=1           print `ethtool -k/-l/-S eth0` and the kernel's
#                            TCP/UDP counters (/proc/net/snmp) before the
#                            role starts (when=start) and after it (when=end)
#   vfnic.wait=120           upper bound (s) on how long any role stays up
# Markers (one per line, for the host to grep):
#   VFNIC-ETHTOOL-SET rc=N ethtool <args>     (one per vfnic.ethtool command)
#   VFNIC-GUEST-UP uptime=.. mac=.. ip=.. role=..
#   VFNIC-GUEST-FEATURES <bit string from /sys/.../features>
#   VFNIC-REPORT-BEGIN when=start|end what=k|l|S|snmp ... VFNIC-REPORT-END
#   VFNIC-PEER-REACHABLE tries=N | VFNIC-PEER-UNREACHABLE
#   PING-RC n, IPERF-JSON-BEGIN ... IPERF-JSON-END, IPERF-TRIES n, IPERF-RC n
#   server: VFNIC-SERVER-READY, IPERF-SERVER-TEST-END n=N (per test),
#   IPERF-SERVER-EXIT, IPERF-SERVER-LOG-BEGIN ... IPERF-SERVER-LOG-END
#   (with vfnic.reverse=1 also IPERF-R-JSON-BEGIN ... IPERF-R-JSON-END, IPERF-R-TRIES n, IPERF-R-RC n)
#   VFNIC-GUEST-DONE
/bin/busybox --install -s /bin
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/modules.order); do
    [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
done

knob() {
    for kv in $(cat /proc/cmdline); do
        case "$kv" in vfnic.$1=*) echo "${kv#*=}"; return ;; esac
    done
    echo "$2"
}
# Every value of a repeatable knob, one per line.
knobs() {
    for kv in $(cat /proc/cmdline); do
        case "$kv" in vfnic.$1=*) echo "${kv#*=}" ;; esac
    done
}
IP=$(knob ip "")
PEER=$(knob peer "")
ROLE=$(knob role idle)
PINGS=$(knob pings 10)
BYTES=$(knob bytes "")
TIME=$(knob time 5)
WAIT=$(knob wait 120)
XARGS=$(knob iperfargs "" | tr _ ' ')
PARALLEL=$(knob parallel "")
[ -n "$PARALLEL" ] && XARGS="$XARGS -P $PARALLEL"
REVERSE=$(knob reverse 0)
TESTS=$(knob tests 1)
REPORT=$(knob report 0)

done_and_off() {
    echo VFNIC-GUEST-DONE
    poweroff -f
}

ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if [ ! -e /sys/class/net/eth0 ]; then
    echo "VFNIC-GUEST-ERROR no eth0"
    done_and_off
fi
ip link set eth0 up
[ -n "$IP" ] && ip addr add "$IP" dev eth0
# SeaBIOS leaves terminal escapes on the current console line: start afresh
# so every marker begins its line.
echo
# vfnic.ethtool: each command is ';'-separated, '_' stands for a space.
for cmds in $(knobs ethtool); do
    echo "$cmds" | tr ';' '\n' | while read -r c; do
        [ -n "$c" ] || continue
        args=$(echo "$c" | tr _ ' ')
        out=$(ethtool $args 2>&1)
        echo "VFNIC-ETHTOOL-SET rc=$? ethtool $args"
        [ -z "$out" ] || echo "$out" | sed 's/^/  /'
    done
done
echo "VFNIC-GUEST-UP uptime=$(cut -d' ' -f1 /proc/uptime) mac=$(cat /sys/class/net/eth0/address) ip=$IP role=$ROLE"
echo "VFNIC-GUEST-FEATURES $(cat /sys/class/net/eth0/device/features 2>/dev/null)"

# report WHEN: offload state, channels, per-queue counters, TCP/UDP MIBs.
report() {
    [ "$REPORT" = 1 ] || return 0
    for w in k l S; do
        echo "VFNIC-REPORT-BEGIN when=$1 what=$w"
        ethtool -$w eth0 2>&1
        echo VFNIC-REPORT-END
    done
    echo "VFNIC-REPORT-BEGIN when=$1 what=snmp"
    grep -E '^(Tcp|Udp):' /proc/net/snmp
    echo VFNIC-REPORT-END
}
report start

# The peer boots on its own schedule: poll with single pings (each waits 1 s)
# until it answers, so the counted ping below measures loss, not boot order.
wait_peer() {
    i=0
    while [ $i -lt "$WAIT" ]; do
        if ping -c 1 -W 1 "$PEER" >/dev/null 2>&1; then
            echo "VFNIC-PEER-REACHABLE tries=$i"
            return 0
        fi
        i=$((i + 1))
    done
    echo "VFNIC-PEER-UNREACHABLE"
    return 1
}

counted_ping() {
    ping -c "$PINGS" -i 0.2 "$PEER"
    echo "PING-RC $?"
}

# iperf3_retry OUT ARGS...: iperf3 -c PEER ARGS with JSON output into OUT.
# The peer answers pings before its iperf3 server listens (and a one-shot
# server restarts between tests), so a refused connection is retried a few
# times, 1 s apart. The JSON's "error" says so: iperf3 3.12 with -J may exit
# 0 even then (seen: "unable to connect to server: Connection refused",
# rc 0), so the exit status alone does not tell. Sets RC and TRIES.
iperf3_retry() {
    out=$1
    shift
    TRIES=0
    while :; do
        iperf3 -c "$PEER" -J "$@" >"$out" 2>&1
        RC=$?
        TRIES=$((TRIES + 1))
        [ $TRIES -lt 8 ] && grep -q 'unable to connect' "$out" || break
        sleep 1
    done
}

run_iperf_client() {
    if [ -n "$BYTES" ]; then LEN="-n $BYTES"; else LEN="-t $TIME"; fi
    iperf3_retry /tmp/iperf.json $LEN $XARGS
    echo IPERF-JSON-BEGIN
    cat /tmp/iperf.json
    echo IPERF-JSON-END
    echo "IPERF-TRIES $TRIES"
    echo "IPERF-RC $RC"
}

# The -R run (server -> client), after the first one.
run_iperf_reverse() {
    sleep 1
    iperf3_retry /tmp/iperf-r.json $LEN -R $XARGS
    echo IPERF-R-JSON-BEGIN
    cat /tmp/iperf-r.json
    echo IPERF-R-JSON-END
    echo "IPERF-R-TRIES $TRIES"
    echo "IPERF-R-RC $RC"
}

case "$ROLE" in
    server)
        (
            n=0
            while [ $n -lt "$TESTS" ]; do
                iperf3 -s -1 >>/tmp/iperf3-server.log 2>&1
                n=$((n + 1))
                echo "IPERF-SERVER-TEST-END n=$n"
            done
        ) &
        spid=$!
        # The client also says when it is done (TCP port 5299): a one-shot
        # server that lingers after its last test must not hold this guest.
        nc -l -p 5299 >/tmp/peer-done 2>/dev/null &
        npid=$!
        echo VFNIC-SERVER-READY
        i=0
        grace=5
        while [ $i -lt "$WAIT" ] && kill -0 $spid 2>/dev/null; do
            if [ -s /tmp/peer-done ]; then
                [ $grace -gt 0 ] || break
                grace=$((grace - 1))
            fi
            sleep 1
            i=$((i + 1))
        done
        if kill -0 $spid 2>/dev/null; then
            echo "IPERF-SERVER-STOPPED still running after ${i}s (client done: $(cat /tmp/peer-done 2>/dev/null))"
            kill $spid 2>/dev/null
            killall iperf3 2>/dev/null
        fi
        kill $npid 2>/dev/null
        echo "IPERF-SERVER-EXIT after ${i}s"
        echo IPERF-SERVER-LOG-BEGIN
        cat /tmp/iperf3-server.log
        echo IPERF-SERVER-LOG-END
        ;;
    client)
        if wait_peer; then
            counted_ping
            run_iperf_client
            [ "$REVERSE" = 1 ] && run_iperf_reverse
            # Tell a server-role peer that no more tests are coming.
            echo done | nc -w 2 "$PEER" 5299 >/dev/null 2>&1
        fi
        ;;
    ping)
        wait_peer && counted_ping
        ;;
    idle)
        sleep "$WAIT"
        ;;
    *)
        echo "VFNIC-GUEST-ERROR unknown role $ROLE"
        ;;
esac
report end
done_and_off
GUEST_INIT
    chmod 0755 "$1"
}

build() {
    local out=$1 pkg=$2 ver=$3 work deb kver root m f
    work="$out/work"
    rm -rf "$work"
    mkdir -p "$work" "$out/debs"
    deb=$(fetch_kernel_deb "$pkg" "$ver" "$out/debs")
    log "unpacking $(basename "$deb")"
    dpkg-deb -x "$deb" "$work/kernel"
    kver=""
    for f in "$work"/kernel/lib/modules/*; do [ -d "$f" ] && kver=$(basename "$f") && break; done
    [ -n "$kver" ] || die "no modules directory in $deb"

    root="$work/initrd"
    mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,etc,lib/modules,usr/bin}
    cp "$(command -v busybox)" "$root/bin/busybox"
    : > "$root/etc/modules.order"
    for m in "${GUEST_MODULES[@]}"; do
        f=$(find "$work/kernel/lib/modules/$kver" -name "$m.ko*" | head -1)
        if [ -z "$f" ]; then
            log "module $m: not shipped (built in), skipped"
            continue
        fi
        copy_module "$f" "$root/lib/modules/$m.ko"
        echo "$m" >> "$root/etc/modules.order"
    done
    copy_dynamic "$root" "$(command -v iperf3)" /usr/bin/iperf3
    copy_dynamic "$root" "$(ethtool_path)" /usr/sbin/ethtool
    write_init "$root/init"

    # Write to temporaries and rename, so an interrupted build never leaves a
    # kernel/initrd pair that the stamp would vouch for.
    cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -6 > "$out/initrd.gz.tmp")
    mv "$out/vmlinuz.tmp" "$out/vmlinuz"
    mv "$out/initrd.gz.tmp" "$out/initrd.gz"
    rm -rf "$work"
    log "kernel $kver, initrd $(du -h "$out/initrd.gz" | cut -f1)"
}

main() {
    local out=${1:?usage: build-guest.sh OUTDIR [KERNEL_PKG]} pkg ver key
    mkdir -p "$out"
    out=$(cd "$out" && pwd)
    check_tools

    pkg=${2:-$(resolve_kernel_pkg)}
    if [ -z "$pkg" ]; then
        # No apt lists (e.g. offline): an existing build is better than none.
        if [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.gz" ]; then
            log "WARNING: cannot resolve the kernel package; using the cached guest"
            exit 0
        fi
        die "cannot resolve linux-image-cloud-amd64's kernel (run apt-get update)"
    fi
    ver=$(pkg_version "$pkg")
    [ -n "$ver" ] || die "no version known for $pkg"
    key=$(cache_key "$pkg" "$ver")

    if [ "${FORCE:-0}" != 1 ] && [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.gz" ] &&
        [ "$(cat "$out/stamp" 2>/dev/null)" = "$key" ]; then
        log "cached guest is current ($pkg $ver)"
        exit 0
    fi
    rm -f "$out/stamp"
    build "$out" "$pkg" "$ver"
    echo "$key" > "$out/stamp"
    log "done: $out/vmlinuz $out/initrd.gz"
}

main "$@"
