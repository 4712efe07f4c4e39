#!/usr/bin/env bash
# scripts/phase-profile.sh — where the engine's cycles go, by phase of a
# burst: TX take, classify, arbitrate, deliver (RX take + RX fill), complete,
# in TSC cycles per frame. For a machine without hardware performance
# counters: instruction counts (scripts/ir-profile.sh) say what the engine
# executes, this says what it waits on (a phase whose cycles grow while its
# instructions do not is waiting on memory).
#
#   scripts/phase-profile.sh [BIN ...]
#
# With no BIN, builds vfnic with the `phase-cycles` feature into
# target/phases (a separate build: the default binary has no timing code)
# and profiles that. Each BIN (built with the feature) runs with one engine
# pinned to CPU 1 while one dpdk-testpmd loops frames between VF0 and VF1 in
# mac forward mode, as in scripts/ab-bench.sh; the engine logs one line per
# 131072 bursts (crates/engine/src/phases.rs). BINs alternate, ROUNDS times;
# each run prints the median of its lines, phase by phase.
#
# Env: SECS=10 ROUNDS=1 SIZE=64 BURST=32 VU="" (e.g. ",packed_vq=1,in_order=1")
# Needs: root, hugepages, dpdk-testpmd, python3 (scripts/setup.sh).
set -euo pipefail
SECS=${SECS:-10} ROUNDS=${ROUNDS:-1} SIZE=${SIZE:-64} BURST=${BURST:-32} VU=${VU:-}
REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench/mac-loop.sh
. "$REPO/scripts/bench/mac-loop.sh"
if [ $# -eq 0 ]; then
    cargo build --release --quiet --features phase-cycles --target-dir "$REPO/target/phases" \
        --manifest-path "$REPO/Cargo.toml"
    set -- "$REPO/target/phases/release/vfnic"
fi
OUT=$(mktemp -d /tmp/vfnic-phases.XXXXXX)
trap 'rm -rf "$OUT"' EXIT

run() {
    local bin=$1 d=$OUT/run
    loop_for "$d" "ph$$" "$SECS" "$bin"
    python3 - "$d/vfnic.log" "$bin" <<'PY'
import re, statistics as st, sys
keys = ["frames_per_burst", "take", "classify", "arbitrate", "deliver", "rx_take", "rx_fill", "complete"]
rows = []
for line in open(sys.argv[1], errors="replace"):
    if "cycles per frame by phase" not in line:
        continue
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    rows.append({k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", line) if k in keys})
if not rows:
    sys.exit(f"{sys.argv[2]}: no phase lines logged (built without --features phase-cycles, or too few bursts)")
med = {k: st.median(r[k] for r in rows) for k in keys}
total = med["take"] + med["classify"] + med["arbitrate"] + med["deliver"] + med["complete"]
print(f"{sys.argv[2]}: {len(rows)} lines, {med['frames_per_burst']:.1f} frames/burst, "
      f"{total:.0f} cycles/frame: take {med['take']:.0f} classify {med['classify']:.0f} "
      f"arbitrate {med['arbitrate']:.0f} deliver {med['deliver']:.0f} (rx_take {med['rx_take']:.0f} "
      f"rx_fill {med['rx_fill']:.0f}) complete {med['complete']:.0f}")
PY
}

for _ in $(seq "$ROUNDS"); do
    for bin in "$@"; do run "$bin"; done
done
