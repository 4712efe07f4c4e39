//! Tables for people (the `--json` output is the API's answer as is).

use std::fmt::Write;

use serde_json::Value;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn yes(v: &Value) -> &'static str {
    if v.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
}

/// `vfnic vf list`.
pub fn vf_list(v: &Value) -> String {
    let mut o = String::new();
    let _ =
        writeln!(o, "{:<4} {:<17} {:<5} {:<5} {:<9} {:<6} SOCKET", "VF", "MAC", "MTU", "LINK", "CONNECTED", "ENGINE");
    for vf in v.as_array().into_iter().flatten() {
        let _ = writeln!(
            o,
            "{:<4} {:<17} {:<5} {:<5} {:<9} {:<7} {}",
            s(&vf["id"]),
            s(&vf["mac"]),
            s(&vf["mtu"]),
            s(&vf["state"]),
            yes(&vf["connected"]),
            vf["engines"].as_array().map(|a| a.iter().map(s).collect::<Vec<_>>().join(",")).unwrap_or_default(),
            s(&vf["socket"])
        );
    }
    o
}

/// `vfnic vf show N`.
pub fn vf_show(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "vf {}", s(&v["id"]));
    for key in ["mac", "mtu", "state", "vlan", "qos"] {
        let _ = writeln!(o, "  {key:<14} {}", s(&v[key]));
    }
    for key in ["spoofchk", "trust", "promisc"] {
        let _ = writeln!(o, "  {key:<14} {}", if v[key].as_bool() == Some(true) { "on" } else { "off" });
    }
    let rate = |k: &str| match v[k].as_u64() {
        Some(0) => "0 (unlimited)".to_string(),
        Some(n) => format!("{n} Mbit/s"),
        None => "-".into(),
    };
    let _ = writeln!(o, "  {:<14} {}", "max_tx_rate", rate("max_tx_rate"));
    let _ = writeln!(o, "  {:<14} {}", "min_tx_rate", s(&v["min_tx_rate"]));
    let _ = writeln!(
        o,
        "  {:<14} {}",
        "speed",
        match v["speed"].as_u64() {
            Some(0) => "0 (the tenant's pace)".to_string(),
            Some(n) => format!("{n} Mbit/s"),
            None => "-".into(),
        }
    );
    for key in ["weight", "rx_usecs", "rx_frames", "socket", "queue_pairs", "engines", "features", "status"] {
        let _ = writeln!(o, "  {key:<14} {}", s(&v[key]));
    }
    let _ = writeln!(o, "  {:<14} {}", "connected", yes(&v["connected"]));
    let _ = writeln!(o, "  {:<14} {}", "config_notify", yes(&v["backend_channel"]));
    let _ = writeln!(o, "  {:<14} {}", "faulted", yes(&v["faulted"]));
    o
}

/// `vfnic vf qemu-args N`: comment lines, then one option group per line,
/// continued with backslashes (pastes into a shell command line).
pub fn qemu_args(v: &Value) -> String {
    let mut o = String::new();
    for c in v["comments"].as_array().into_iter().flatten() {
        let _ = writeln!(o, "# {}", s(c));
    }
    let opts: Vec<String> = v["options"].as_array().into_iter().flatten().map(s).collect();
    let _ = writeln!(o, "{}", opts.join(" \\\n"));
    o
}

/// `vfnic vf dpdk-args N`.
pub fn dpdk_args(v: &Value) -> String {
    format!("{}\n", s(&v["args"]))
}

/// `vfnic pf show`.
pub fn pf_show(v: &Value) -> String {
    let mut o = String::new();
    for key in ["num_vfs", "max_vfs", "engines", "queue_pairs", "run_dir"] {
        let _ = writeln!(o, "{key:<12} {}", s(&v[key]));
    }
    o
}

/// `vfnic stats`.
pub fn stats(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<4} {:<17} {:>12} {:>14} {:>12} {:>14} {:>10} {:>10}",
        "VF", "MAC", "TX-PACKETS", "TX-BYTES", "RX-PACKETS", "RX-BYTES", "TX-DROP", "RX-DROP"
    );
    let vfs = v["vfs"].as_array().cloned().unwrap_or_default();
    for vf in &vfs {
        let _ = writeln!(
            o,
            "{:<4} {:<17} {:>12} {:>14} {:>12} {:>14} {:>10} {:>10}",
            s(&vf["id"]),
            s(&vf["mac"]),
            s(&vf["tx_packets"]),
            s(&vf["tx_bytes"]),
            s(&vf["rx_packets"]),
            s(&vf["rx_bytes"]),
            s(&vf["tx_dropped"]),
            s(&vf["rx_dropped"])
        );
    }
    for vf in &vfs {
        let nonzero = |m: &Value| -> Vec<String> {
            m.as_object()
                .into_iter()
                .flatten()
                .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
                .map(|(k, n)| format!("{k}={n}"))
                .collect()
        };
        let mut detail = nonzero(&vf["drops"]);
        detail.extend(nonzero(&vf["held"]));
        detail.extend(nonzero(&vf["errors"]));
        if !detail.is_empty() {
            let _ = writeln!(o, "vf {}: {}", s(&vf["id"]), detail.join(" "));
        }
    }
    if v["uplinks"].as_array().is_some_and(|a| !a.is_empty()) {
        o.push_str(&uplink_list(&v["uplinks"]));
    }
    o
}

/// `vfnic engines`.
pub fn engines(v: &Value) -> String {
    let mut o = String::new();
    let hz = v["tsc_hz"].as_f64().unwrap_or(0.0);
    let _ = writeln!(
        o,
        "{:<7} {:>6} {:>12} {:>10} {:>9} {:>6}  QUEUES (vf/qp load%)",
        "ENGINE", "LOAD%", "CHAINS", "CYC/CHAIN", "SLEEPS", "MOVES"
    );
    for e in v["engines"].as_array().into_iter().flatten() {
        let chains = e["chains"].as_u64().unwrap_or(0);
        let cpc = if chains > 0 {
            format!("{:.0}", e["busy_cycles"].as_f64().unwrap_or(0.0) / chains as f64)
        } else {
            "-".into()
        };
        let queues: Vec<String> = e["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|q| format!("{}/{} {:.1}", s(&q["vf"]), s(&q["qp"]), q["load_pct"].as_f64().unwrap_or(0.0)))
            .collect();
        let _ = writeln!(
            o,
            "{:<7} {:>6.1} {:>12} {:>10} {:>9} {:>6}  {}",
            s(&e["id"]),
            e["load_pct"].as_f64().unwrap_or(0.0),
            chains,
            cpc,
            s(&e["sleeps"]),
            s(&e["moves_in"]),
            queues.join(", ")
        );
    }
    let _ = writeln!(o, "tsc {:.0} MHz, {} queue-pair moves", hz / 1e6, s(&v["moves"]));
    o
}

/// `vfnic fdb`.
pub fn fdb(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{:<17} {:<5} TYPE", "MAC", "PORT");
    for e in v.as_array().into_iter().flatten() {
        let kind = if e["static"].as_bool() == Some(true) { "static" } else { "learned" };
        let _ = writeln!(o, "{:<17} vf{:<3} {kind}", s(&e["mac"]), s(&e["port"]));
    }
    o
}

/// `vfnic uplink list` (and the uplink part of `vfnic stats`).
pub fn uplink_list(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<10} {:<9} {:<6} {:<5} {:>10} {:>12} {:>10} {:>12} {:>8} {:>8} {:>8}",
        "UPLINK", "KIND", "PORT", "MTU", "RX-PKTS", "RX-BYTES", "TX-PKTS", "TX-BYTES", "RX-DROP", "TX-DROP", "GRO"
    );
    for u in v.as_array().into_iter().flatten() {
        let c = &u["counters"];
        let sum = |prefix: &str| -> u64 {
            c.as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(_, n)| n.as_u64().unwrap_or(0))
                .sum()
        };
        let _ = writeln!(
            o,
            "{:<10} {:<9} {:<6} {:<5} {:>10} {:>12} {:>10} {:>12} {:>8} {:>8} {:>8}",
            s(&u["name"]),
            s(&u["kind"]),
            s(&u["port"]),
            s(&u["mtu"]),
            s(&c["rx_packets"]),
            s(&c["rx_bytes"]),
            s(&c["tx_packets"]),
            s(&c["tx_bytes"]),
            sum("rx_dropped_"),
            sum("tx_dropped_"),
            s(&c["rx_gro_merged_segments"])
        );
    }
    o
}

/// `vfnic uplink show NAME`.
pub fn uplink_show(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "uplink {}", s(&v["name"]));
    for key in ["kind", "port", "mtu", "inner_mtu", "speed"] {
        let _ = writeln!(o, "  {key:<12} {}", s(&v[key]));
    }
    if let Some(d) = v["detail"].as_object() {
        for (k, val) in d {
            if k == "remotes" {
                continue;
            }
            let _ = writeln!(o, "  {k:<12} {}", s(val));
        }
    }
    for r in v["detail"]["remotes"].as_array().into_iter().flatten() {
        let up = if r["up"].as_bool() == Some(true) { "up" } else { "DOWN" };
        let _ = writeln!(
            o,
            "  remote       {:<22} {:<12} {:<4} learned={}",
            s(&r["addr"]),
            s(&r["role"]),
            up,
            s(&r["learned"])
        );
    }
    for (k, n) in v["counters"].as_object().into_iter().flatten() {
        if n.as_u64().unwrap_or(0) > 0 {
            let _ = writeln!(o, "  {k:<28} {n}");
        }
    }
    o
}
