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
            s(&vf["link"]),
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
    for key in ["mac", "mtu", "link", "socket", "queue_pairs", "engines", "features", "status", "rx_usecs", "rx_frames"]
    {
        let _ = writeln!(o, "  {key:<12} {}", s(&v[key]));
    }
    let _ = writeln!(o, "  {:<12} {}", "connected", yes(&v["connected"]));
    let _ = writeln!(o, "  {:<12} {}", "faulted", yes(&v["faulted"]));
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
        detail.extend(nonzero(&vf["errors"]));
        if !detail.is_empty() {
            let _ = writeln!(o, "vf {}: {}", s(&vf["id"]), detail.join(" "));
        }
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
