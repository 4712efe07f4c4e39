#!/usr/bin/env bash
# scripts/test-all.sh — vfnic's single test command (also what .ci/run runs).
#
# Steps, in order:
#   setup        scripts/setup.sh (packages, hugepages; needs root)
#   fmt          cargo fmt --all -- --check
#   clippy       cargo clippy --workspace --all-targets -- -D warnings
#   clippy-features  the same for vfnic-engine with its tool features
#                  (phase-cycles, ab-switch)
#   test         cargo test --workspace
#   build        cargo build --release            (the daemon the suites run)
#   guest        scripts/build-guest.sh .cache/guest (cached between runs)
#   dpdk_pvp-e1  tests/real/dpdk_pvp.sh with ENGINES=1
#   dpdk_pvp-e2  tests/real/dpdk_pvp.sh with ENGINES=2
#   dpdk_pvp-packed  the same over packed rings with IN_ORDER (VUARGS)
#   qemu_pair    tests/real/qemu_pair.sh
#   <name>       every tests/real/<name>_test.sh, picked up automatically
# Then a PASS/FAIL table; the exit status is nonzero if any step failed.
#
# Env:
#   SKIP_REAL=1     skip the guest build and the real-client suites
#   ONLY=pattern    run only matching steps (shell glob, comma-separated
#                   list: ONLY=qemu_pair, ONLY='dpdk_pvp*', ONLY=fmt,clippy).
#                   Prerequisites of a selected suite (the release build for
#                   BACKEND=vfnic, the guest image) still run.
#   SKIP_SETUP=1    do not run scripts/setup.sh
#   BACKEND=testpmd run the suites against the DPDK stand-in switch instead
#                   of vfnic (see tests/real/lib.sh)
#   TOTAL_BUDGET=5100  seconds for the whole run; CI stops at 5400, so steps
#                   are cut short early enough for the table to print.
# Step logs: .cache/test-logs/<step>.log (also streamed to stdout).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

TOTAL_BUDGET=${TOTAL_BUDGET:-5100}
BACKEND=${BACKEND:-vfnic}
LOG_DIR="$REPO/.cache/test-logs"
GUEST_DIR="$REPO/.cache/guest"
START=$SECONDS

# cargo from rustup lives in ~/.cargo/bin, which a bare CI shell may lack.
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH="$HOME/.cargo/bin:$PATH"
fi

declare -a R_NAME=() R_STATUS=() R_SECS=() R_NOTE=()

record() { R_NAME+=("$1"); R_STATUS+=("$2"); R_SECS+=("$3"); R_NOTE+=("${4:-}"); }

step_status() {
    local i
    for i in "${!R_NAME[@]}"; do
        [ "${R_NAME[$i]}" = "$1" ] && { echo "${R_STATUS[$i]}"; return; }
    done
    echo NONE
}

# selected NAME: does ONLY (if set) pick this step?
selected() {
    [ -z "${ONLY:-}" ] && return 0
    local pat
    for pat in ${ONLY//,/ }; do
        # shellcheck disable=SC2053
        [[ $1 == $pat ]] && return 0
    done
    return 1
}

banner() { printf '\n===== %s =====\n' "$*"; }

# run_step NAME MAX_SECS CMD...: run CMD under a timeout (MAX_SECS, or less if
# the total budget is nearly spent), log it, record PASS/FAIL/TIMEOUT.
run_step() {
    local name=$1 max=$2 left limit t0 rc note=""
    shift 2
    left=$((TOTAL_BUDGET - (SECONDS - START) - 30))
    if [ "$left" -lt 30 ]; then
        banner "$name: no time left in the ${TOTAL_BUDGET}s budget"
        record "$name" FAIL 0 "not run: budget spent"
        return 0
    fi
    limit=$((max < left ? max : left))
    banner "$name (limit ${limit}s): $*"
    t0=$SECONDS
    set +e
    # -k: a suite gets 30 s after SIGTERM to stop its own children.
    timeout -k 30 "$limit" "$@" </dev/null 2>&1 | tee "$LOG_DIR/$name.log"
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -eq 0 ]; then
        record "$name" PASS $((SECONDS - t0))
    else
        case "$rc" in
            124 | 137) note="timed out after ${limit}s" ;;
            *) note="exit $rc" ;;
        esac
        record "$name" FAIL $((SECONDS - t0)) "$note"
    fi
}

skip_step() { record "$1" SKIP 0 "$2"; }

# ------------------------------------------------------------------ steps

do_setup() {
    if [ "${SKIP_SETUP:-0}" = 1 ]; then
        skip_step setup "SKIP_SETUP=1"
    elif [ "$(id -u)" -ne 0 ]; then
        skip_step setup "not root: run scripts/setup.sh as root once"
    else
        run_step setup 900 bash scripts/setup.sh
    fi
}

do_cargo_checks() {
    if selected fmt; then run_step fmt 300 cargo fmt --all -- --check; fi
    if selected clippy; then
        run_step clippy 1800 cargo clippy --workspace --all-targets -- -D warnings
        # The engines' phase timing (scripts/phase-profile.sh) and A/B switch
        # (scripts/ab-switch.sh) are features the default build leaves out:
        # checked here so they keep building.
        run_step clippy-features 900 cargo clippy -p vfnic-engine --all-targets --features phase-cycles,ab-switch \
            -- -D warnings
    fi
    if selected test; then run_step test 1800 cargo test --workspace; fi
}

# Real-client suites, in order: "name|command...".
declare -a SUITES=()
collect_suites() {
    SUITES+=("dpdk_pvp-e1|env ENGINES=1 bash tests/real/dpdk_pvp.sh")
    SUITES+=("dpdk_pvp-e2|env ENGINES=2 bash tests/real/dpdk_pvp.sh")
    SUITES+=("dpdk_pvp-packed|env ENGINES=1 VUARGS=,packed_vq=1,in_order=1 bash tests/real/dpdk_pvp.sh")
    SUITES+=("qemu_pair|bash tests/real/qemu_pair.sh")
    local f
    for f in tests/real/*_test.sh; do
        [ -e "$f" ] || continue
        SUITES+=("$(basename "$f" _test.sh)|bash $f")
    done
}

any_suite_selected() {
    [ "${SKIP_REAL:-0}" = 1 ] && return 1
    local s
    for s in "${SUITES[@]}"; do selected "${s%%|*}" && return 0; done
    return 1
}

do_build() {
    # The release build is a check of its own, and the binary the suites run.
    if selected build || { any_suite_selected && [ "$BACKEND" = vfnic ] && [ -z "${VFNIC:-}" ]; }; then
        run_step build 1800 cargo build --release
    fi
}

do_real() {
    local s name cmd
    if [ "${SKIP_REAL:-0}" = 1 ]; then
        for s in "${SUITES[@]}"; do selected "${s%%|*}" && skip_step "${s%%|*}" "SKIP_REAL=1"; done
        return 0
    fi
    any_suite_selected || return 0

    run_step guest 600 bash scripts/build-guest.sh "$GUEST_DIR"

    # Suites share one work root, so leftovers are easy to find afterwards.
    export WORK_ROOT BACKEND
    WORK_ROOT=$(mktemp -d /tmp/vfnic-test-all.XXXXXX)
    warn_busy_machine
    for s in "${SUITES[@]}"; do
        name=${s%%|*}
        cmd=${s#*|}
        selected "$name" || continue
        if [ "$BACKEND" = vfnic ] && [ -z "${VFNIC:-}" ] && [ "$(step_status build)" != PASS ]; then
            # Never test a stale binary left over from an earlier build.
            record "$name" FAIL 0 "not run: release build failed"
            continue
        fi
        if [ "$name" = qemu_pair ] && [ "$(step_status guest)" != PASS ]; then
            record "$name" FAIL 0 "not run: guest build failed"
            continue
        fi
        # shellcheck disable=SC2086
        run_step "$name" 600 $cmd
    done
    sweep_leftovers
}

# Other pollers (someone else's testpmd, QEMU) make results noisy: say so.
warn_busy_machine() {
    local busy
    busy=$(ps -eo pid=,comm= | awk '$2 ~ /^(dpdk-testpmd|qemu-system|vfnic)/' || true)
    [ -z "$busy" ] || printf 'WARNING: already running on this machine (results may be noisy):\n%s\n' "$busy"
}

# Each suite cleans up after itself; anything still running under our work
# root is a harness bug: kill it and fail the run.
sweep_leftovers() {
    local pids
    pids=$(pgrep -f -- "$WORK_ROOT" || true)
    if [ -n "$pids" ]; then
        echo "ERROR: processes left behind by the suites:"
        ps -o pid=,args= -p "${pids//$'\n'/,}" || true
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        record leftovers FAIL 0 "processes left running: ${pids//$'\n'/ }"
    fi
    # Failed suites keep their logs there; passing ones removed theirs.
    rmdir "$WORK_ROOT" 2>/dev/null || echo "suite work dirs kept in $WORK_ROOT"
}

print_table() {
    local i failed=0
    banner "summary (backend=$BACKEND, $((SECONDS - START))s total)"
    printf '%-16s %-6s %6s  %s\n' STEP RESULT SECS NOTE
    for i in "${!R_NAME[@]}"; do
        printf '%-16s %-6s %6s  %s\n' "${R_NAME[$i]}" "${R_STATUS[$i]}" "${R_SECS[$i]}" "${R_NOTE[$i]}"
        [ "${R_STATUS[$i]}" = FAIL ] && failed=$((failed + 1))
    done
    if [ "$failed" -gt 0 ]; then
        echo "RESULT: FAIL ($failed failed; logs in $LOG_DIR)"
        return 1
    fi
    echo "RESULT: PASS"
}

main() {
    mkdir -p "$LOG_DIR"
    collect_suites
    do_setup
    do_cargo_checks
    do_build
    do_real
    print_table
}

main "$@"
