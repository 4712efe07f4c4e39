#!/usr/bin/env python3
"""report.py OUT — turn scripts/bench.sh's logs into the comparison table.

Reads OUT/meta and OUT/m/<round>-<case>-<backend>/ (fe.log: the client
testpmd; be.log: the backend; eng_before/eng_after.json: `vfnic --json
engines`; vf0.json: `vfnic --json vf show 0`; cpu.txt: idle CPU ticks; info),
prints the table and writes OUT/section.md (the BENCHMARKS.md section) and
OUT/results.json.
"""
import json
import math
import os
import re
import statistics
import sys

RING_PACKED = 1 << 34
DROP = 2  # periodic samples left out at the start (0 pps block + ramp-up)


def read_kv(path):
    out = {}
    try:
        with open(path) as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    out[k] = v
    except OSError:
        pass
    return out


def read_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().replace("\r", "")
    except OSError:
        return ""


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def periodic(log):
    """Per port: list of (rx_pps, rx_packets, rx_bytes) per periodic block."""
    ports = {}
    cur = None
    rxp = rxb = None
    for line in log.splitlines():
        m = re.search(r"NIC statistics for port (\d+)", line)
        if m:
            cur = int(m.group(1))
            continue
        if cur is None:
            continue
        m = re.search(r"RX-packets:\s*(\d+).*RX-bytes:\s*(\d+)", line)
        if m:
            rxp, rxb = int(m.group(1)), int(m.group(2))
            continue
        m = re.search(r"Rx-pps:\s*(\d+)", line)
        if m:
            ports.setdefault(cur, []).append((int(m.group(1)), rxp, rxb))
            cur = None
    return ports


def median(xs):
    return statistics.median(xs) if xs else None


def pct(xs, q):
    """Nearest-rank percentile."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


def engine_list(j):
    if isinstance(j, dict):
        return j.get("engines"), j.get("tsc_hz")
    if isinstance(j, list):
        return j, None
    return None, None


def engine_delta(before, after):
    """(cycles/chain or None, busy-round cycles/chain or None, sleeps delta,
    chains delta, load_pct list, note). The first counts the engine's
    `burst_cycles` (the queue polls that moved frames, start to end: the
    definition of testpmd's --record-core-cycles); the second its
    `busy_cycles` (whole poll rounds that moved frames, with the empty
    polls and the loop's work in them). A vfnic without `burst_cycles`
    gives the second for both."""
    b, _ = engine_list(before)
    a, hz = engine_list(after)
    if not a or not b:
        return None, None, None, None, None, "no engine counters"
    bi = {e.get("id"): e for e in b}
    busy = burst = chains = sleeps = 0
    have_busy = have_burst = True
    loads = []
    for e in a:
        p = bi.get(e.get("id"), {})
        chains += e.get("chains", 0) - p.get("chains", 0)
        sleeps += e.get("sleeps", 0) - p.get("sleeps", 0)
        if "busy_cycles" in e and "busy_cycles" in p:
            busy += e["busy_cycles"] - p["busy_cycles"]
        else:
            have_busy = False
        if "burst_cycles" in e and "burst_cycles" in p:
            burst += e["burst_cycles"] - p["burst_cycles"]
        else:
            have_burst = False
        if "load_pct" in e:
            loads.append(e["load_pct"])
    busy_cpp = busy / chains if have_busy and chains > 0 else None
    burst_cpp = burst / chains if have_burst and chains > 0 else busy_cpp
    note = "" if have_busy else "vfnic reports no busy_cycles"
    return burst_cpp, busy_cpp, sleeps, chains, loads, note


def features_vfnic(d):
    j = read_json(os.path.join(d, "vf0.json"))
    if isinstance(j, dict):
        f = j.get("features")
        if f is None and isinstance(j.get("vf"), dict):
            f = j["vf"].get("features")
        try:
            return int(str(f), 0)
        except (TypeError, ValueError):
            return None
    return None


def features_dpdk(be):
    m = re.search(r"negotiated Virtio features: (0x[0-9a-fA-F]+)", be)
    return int(m.group(1), 16) if m else None


def analyse(d):
    info = read_kv(os.path.join(d, "info"))
    fe = read_text(os.path.join(d, "fe.log"))
    be = read_text(os.path.join(d, "be.log"))
    r = {
        "round": int(info.get("round", 0)),
        "case": info.get("case"),
        "backend": info.get("backend"),
        "ok": info.get("ok") == "1",
        "busy_pct": int(info.get("machine_busy_pct") or 0),
        "steal_pct": int(info.get("steal_pct") or 0),
        "foreign": " ".join(sorted(set((info.get("foreign", "") + " " + info.get("foreign_after", "")).split()))),
        "notes": [],
    }
    size = int(info.get("size", 64))
    if r["backend"] == "vfnic":
        feat = features_vfnic(d)
    else:
        feat = features_dpdk(be)
    r["features"] = hex(feat) if feat is not None else None
    r["ring"] = None if feat is None else ("packed" if feat & RING_PACKED else "split")
    if info.get("mode") == "idle":
        cpu = read_kv_line(os.path.join(d, "cpu.txt"))
        if cpu and float(cpu.get("secs", 0)) > 0:
            r["idle_cpu_pct"] = 100.0 * int(cpu["ticks"]) / int(cpu["clk_tck"]) / float(cpu["secs"])
            r["idle_ticks"], r["clk_tck"] = int(cpu["ticks"]), int(cpu["clk_tck"])
        if r["backend"] == "vfnic":
            st = read_json(os.path.join(d, "stats.json"))
            if isinstance(st, dict) and "vfs" in st:
                r["connected_vfs"] = sum(1 for v in st["vfs"] if v.get("connected"))
            _, _, sleeps, chains, loads, _ = engine_delta(
                read_json(os.path.join(d, "eng_before.json")), read_json(os.path.join(d, "eng_after.json")))
            r["idle_engine_sleeps"] = sleeps
        return r
    ports = periodic(fe)
    p0 = [x[0] for x in ports.get(0, [])][DROP:]
    p1 = [x[0] for x in ports.get(1, [])][DROP:]
    n = min(len(p0), len(p1))
    tot = [p0[i] + p1[i] for i in range(n)]
    r["samples_mpps"] = [round(x / 1e6, 3) for x in tot]
    if not tot:
        r["ok"] = False
        r["notes"].append("no periodic samples")
        return r
    r["pps"] = median(tot)
    r["gbps"] = r["pps"] * size * 8 / 1e9
    # frame size actually on the wire (cumulative RX-bytes / RX-packets)
    last = ports.get(1, [])[-1] if ports.get(1) else None
    if last and last[1]:
        r["frame_bytes"] = round(last[2] / last[1], 1)
        if abs(r["frame_bytes"] - size) > 0.5:
            r["notes"].append(f"frames are {r['frame_bytes']} B, not {size} B")
    if info.get("case") == "lat":
        rtts = [1e6 / x for x in p0[:n] + p1[:n] if x > 0]
        r["rtt_us"] = [round(x, 3) for x in rtts]
        r["rtt_p50"] = pct(rtts, 50)
        r["rtt_p99"] = pct(rtts, 99)
    if r["backend"] == "vfnic":
        cpp, busy_cpp, sleeps, chains, loads, note = engine_delta(
            read_json(os.path.join(d, "eng_before.json")), read_json(os.path.join(d, "eng_after.json")))
        r["cycles_per_pkt"] = cpp
        r["busy_cycles_per_pkt"] = busy_cpp
        r["engine_sleeps"] = sleeps
        r["engine_load_pct"] = loads
        w = int(info.get("window_s") or 0)
        if sleeps is not None and w > 0:
            r["engine_sleeps_per_s"] = sleeps / w
        if note:
            r["notes"].append(note)
    else:
        m = re.search(r"CPU cycles/packet=([\d.]+).*?at (\d+) MHz", be)
        r["cycles_per_pkt"] = float(m.group(1)) if m else None
        if not m:
            r["notes"].append("testpmd printed no CPU cycles/packet")
    return r


def read_kv_line(path):
    t = read_text(path).split()
    out = {}
    for w in t:
        if "=" in w:
            k, v = w.split("=", 1)
            out[k] = v
    return out


def fmt(x, nd=2):
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{nd}f}"


def main():
    out = sys.argv[1]
    meta = read_kv(os.path.join(out, "meta"))
    mdir = os.path.join(out, "m")
    res = [analyse(os.path.join(mdir, d)) for d in sorted(os.listdir(mdir))]
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"meta": meta, "runs": res}, f, indent=1)

    cases = [c for c in meta.get("cases", "").split(",") if c]
    rounds = int(meta.get("rounds", "1"))
    want_packed = "packed_vq=1" in meta.get("vuargs", "")
    by = {(r["round"], r["case"], r["backend"]): r for r in res}

    def value(rnd, case, be, key):
        r = by.get((rnd, case, be))
        if not r or not r["ok"]:
            return None
        if want_packed and r.get("ring") != "packed" and case != "idle":
            return None  # the client fell back to split ring: not a packed figure
        return r.get(key)

    # (label, case, key, lower_is_better)
    rows = []
    for c in cases:
        if c == "lat":
            rows += [
                ("RTT p50, µs (burst 1 loop, 1/per-port rate)", c, "rtt_p50", True),
                ("RTT p99, µs (same; nearest rank = max here)", c, "rtt_p99", True),
                ("burst 1 loop, Mpps (both ports)", c, "pps", False),
                ("burst 1: backend CPU cycles/packet", c, "cycles_per_pkt", True),
            ]
        elif c == "idle":
            rows.append(("idle, 4 VFs connected: backend CPU, % of a core", c, "idle_cpu_pct", True))
        else:
            rows += [
                (f"{c} B loop, Mpps (both ports)", c, "pps", False),
                (f"{c} B loop, Gbit/s", c, "gbps", False),
                (f"{c} B: backend CPU cycles/packet", c, "cycles_per_pkt", True),
            ]

    def conv(key, v):
        if v is None:
            return None
        return v / 1e6 if key == "pps" else v

    table = []
    for label, c, key, lower in rows:
        vs = [conv(key, value(i, c, "vfnic", key)) for i in range(1, rounds + 1)]
        ds = [conv(key, value(i, c, "dpdk", key)) for i in range(1, rounds + 1)]
        vm = median([x for x in vs if x is not None])
        dm = median([x for x in ds if x is not None])
        ratio = vm / dm if vm is not None and dm else None
        pairs = []
        clean = []
        for i, (a, b) in enumerate(zip(vs, ds), 1):
            rr = a / b if a is not None and b else None
            busy = any(by.get((i, c, be), {}).get("foreign") for be in ("vfnic", "dpdk"))
            if rr is not None and not busy:
                clean.append(rr)
            pairs.append(f"r{i} {fmt(a)}/{fmt(b)}={fmt(rr, 3)}" + ("*" if busy else ""))
        cr = f"{fmt(median(clean), 3)} ({len(clean)})" if clean else "n/a (0)"
        table.append((label + (" ↓" if lower else " ↑"), fmt(vm), fmt(dm), fmt(ratio, 3), cr, "; ".join(pairs)))

    # machine / idleness
    foreign = sorted({w for r in res for w in r["foreign"].split()})
    n_foreign = sum(1 for r in res if r["foreign"])
    busy = max((r["busy_pct"] for r in res), default=0)
    steal = max((r["steal_pct"] for r in res), default=0)
    failed = [f"r{r['round']} {r['case']} {r['backend']}" for r in res if not r["ok"]]
    rings = {}
    for r in res:
        if r.get("ring"):
            rings.setdefault(r["backend"], set()).add(r["ring"])
    notes = sorted({f"{r['backend']}: {n}" for r in res for n in r["notes"]})
    if want_packed and "packed" not in rings.get("vfnic", set()):
        notes.insert(0, "vfnic did not negotiate VIRTIO_F_RING_PACKED (bit 34): the client fell back to the "
                        "split ring, so vfnic's packed-ring figures are n/a; its split-ring figures from this run "
                        "are in the details")

    L = []
    L.append(f"## {meta.get('date')} — `{meta.get('command')}`")
    L.append("")
    dirty = meta.get("dirty", "").strip()
    L.append(f"* Command: `{meta.get('command')}` (logs: `{out}`)")
    L.append(f"* Commit: `{meta.get('commit')}`" + (f" plus uncommitted changes in {dirty}" if dirty else "")
             + f"; vfnic binary built {meta.get('vfnic_built')}")
    L.append(f"* Machine: nproc {meta.get('nproc')}, CPU `{meta.get('cpu')}`, kernel {meta.get('kernel')}, "
             f"DPDK {meta.get('dpdk')}, load at start {meta.get('load')}")
    ec = meta.get("engine_cpus") or ""
    L.append(f"* vfnic: `--engines {meta.get('engines')}`"
             + (f" `--engine-cpus {ec}` (pinned)" if ec else " (engines not pinned)")
             + f"; client devargs extra: `{meta.get('vuargs') or '(none)'}`; rings negotiated: "
             + ", ".join(f"{k} {'/'.join(sorted(v))}" for k, v in sorted(rings.items())))
    L.append(f"* {meta.get('secs')} s measured per run, {rounds} rounds, vfnic and DPDK back to back in each "
             "round (order alternating)")
    idle_line = "* Idle check: "
    idle_line += (f"WARNING: other pollers/compilers ({', '.join(foreign)}) seen before {n_foreign} of {len(res)} runs"
                   " (figures low/noisy)" if foreign
                  else "no other testpmd/qemu/ovs/cargo/rustc seen")
    idle_line += f"; machine busy before runs ≤ {busy}%, steal ≤ {steal}%"
    L.append(idle_line)
    if failed:
        L.append(f"* FAILED runs: {', '.join(failed)}")
    if meta.get("note"):
        L.append(f"* Note: {meta.get('note')}")
    for n in notes:
        L.append(f"* Note: {n}")
    L.append("")
    L.append("| figure (↑ higher is better, ↓ lower) | vfnic median | DPDK median | vfnic/DPDK | median ratio, clean pairs (n) | per round: vfnic/DPDK=ratio (* = others ran) |")
    L.append("|---|---:|---:|---:|---:|---|")
    for row in table:
        L.append("| " + " | ".join(row) + " |")
    if "lat" in cases:
        L.append("")
        L.append("RTT is derived, not timed: with --burst=1 one packet circulates per direction, so RTT ≈ 1 / "
                 "per-port Rx-pps; p50/p99 are nearest-rank over the per-second samples of both ports.")
    L.append("")
    L.append("Per run (Mpps: per-second samples, both ports summed, first two left out):")
    L.append("")
    L.append("| round | case | backend | median | samples | ring | extra |")
    L.append("|---|---|---|---:|---|---|---|")
    for r in sorted(res, key=lambda r: (r["round"], cases.index(r["case"]) if r["case"] in cases else 0, r["backend"])):
        extra = []
        if r.get("cycles_per_pkt") is not None:
            extra.append(f"cyc/pkt {r['cycles_per_pkt']:.0f}")
        if r.get("busy_cycles_per_pkt") is not None:
            extra.append(f"busy rounds {r['busy_cycles_per_pkt']:.0f}")
        if r.get("engine_sleeps_per_s") is not None:
            extra.append(f"engine sleeps/s {r['engine_sleeps_per_s']:.0f}")
        if r.get("engine_load_pct"):
            extra.append("load% " + "/".join(f"{x:.0f}" for x in r["engine_load_pct"]))
        if r.get("rtt_p50") is not None:
            extra.append(f"RTT p50 {r['rtt_p50']:.2f} µs p99 {r['rtt_p99']:.2f} µs")
        if r.get("idle_cpu_pct") is not None:
            extra.append(f"CPU {r['idle_cpu_pct']:.1f}% ({r.get('idle_ticks')} ticks of 1/{r.get('clk_tck')} s)")
        if r.get("connected_vfs") is not None:
            extra.append(f"{r['connected_vfs']} VFs connected")
        if r.get("idle_engine_sleeps") is not None:
            extra.append(f"engine sleeps {r['idle_engine_sleeps']}")
        if r["foreign"]:
            extra.append(f"OTHERS RUNNING: {r['foreign']}")
        if not r["ok"]:
            extra.append("FAILED")
        med = fmt(r["pps"] / 1e6) if r.get("pps") else "-"
        samples = ",".join(f"{x:.2f}" for x in r.get("samples_mpps", [])) or "-"
        L.append(f"| {r['round']} | {r['case']} | {r['backend']} | {med} | {samples} | {r.get('ring') or '-'} | {'; '.join(extra)} |")
    L.append("")
    md = "\n".join(L) + "\n"
    with open(os.path.join(out, "section.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
