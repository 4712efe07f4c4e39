#!/usr/bin/env bash
# scripts/ab-switch.sh — two variants of the data path compared in one
# process, on the same placement of the machine's cores (crates/dma/src/ab.rs).
#
#   scripts/ab-switch.sh [BIN]
#
# Write variant B where it differs from A:
#     if vfnic_dma::ab::b() { /* B */ } else { /* A */ }
# With no BIN, this builds vfnic with the `ab-switch` feature into target/ab
# (without the feature `b()` is a constant false: B is compiled out of every
# other build) and runs it with one engine pinned to CPU 1 while one
# dpdk-testpmd loops frames between VF0 and VF1 in mac forward mode, as
# scripts/ab-bench.sh and scripts/phase-profile.sh do. The engine flips
# between A and B every MS milliseconds and logs the chains/s of each every
# 200 flips (crates/engine/src/ab.rs); this prints those lines and the
# median of their B/A ratios (the first line, the ramp-up, left out).
# Neighbouring builds, or runs, differ by up to 2x on this machine; within
# one run the ratio of an unchanged A/A holds to about 1%.
#
# Env: SECS=40 BURST=1 SIZE=64 MS=20 VU="" (e.g. ",packed_vq=1,in_order=1")
# Needs: root, hugepages, dpdk-testpmd, python3 (scripts/setup.sh).
set -euo pipefail
SECS=${SECS:-40} BURST=${BURST:-1} SIZE=${SIZE:-64} MS=${MS:-20} VU=${VU:-}
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench/mac-loop.sh
. "$REPO/scripts/bench/mac-loop.sh"
bin=${1:-}
if [ -z "$bin" ]; then
    cargo build --release --quiet --features ab-switch --target-dir "$REPO/target/ab" \
        --manifest-path "$REPO/Cargo.toml"
    bin=$REPO/target/ab/release/vfnic
fi
OUT=$(mktemp -d /tmp/vfnic-abswitch.XXXXXX)
trap 'rm -rf "$OUT"' EXIT

export VFNIC_AB_MS=$MS
loop_for "$OUT/run" "abs$$" "$SECS" "$bin"
python3 - "$OUT/run/vfnic.log" "$bin" <<'PY'
import re, statistics as st, sys
rows = []
for line in open(sys.argv[1], errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    if "chains/s per variant" not in line:
        continue
    v = dict(re.findall(r"\b(a|b|ratio)=([0-9.e+-]+)", line))
    rows.append((float(v["a"]), float(v["b"]), float(v["ratio"])))
if len(rows) < 2:
    sys.exit(f"{sys.argv[2]}: fewer than two A/B lines logged (built without --features ab-switch, or SECS too short)")
for a, b, r in rows:
    print(f"A {a / 1e6:7.3f} Mchains/s  B {b / 1e6:7.3f} Mchains/s  B/A {r:.4f}")
rs = [r for _, _, r in rows[1:]]
print(f"{sys.argv[2]}: B/A median {st.median(rs):.4f} over {len(rs)} lines "
      f"(min {min(rs):.4f}, max {max(rs):.4f}; {sum(r > 1 for r in rs)} above 1)")
PY
