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
            "{:<4} {:<17} {:<5} {:<5} {:<9} {:<6} {}",
            s(&vf["id"]),
            s(&vf["mac"]),
            s(&vf["mtu"]),
            s(&vf["link"]),
            yes(&vf["connected"]),
            s(&vf["engine"]),
            s(&vf["socket"])
        );
    }
    o
}

/// `vfnic vf show N`.
pub fn vf_show(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "vf {}", s(&v["id"]));
    for key in ["mac", "mtu", "link", "socket", "queue_pairs", "engine", "features", "status"] {
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
    let _ = writeln!(
        o,
        "{:<7} {:<16} {:>12} {:>10} {:>12} {:>12}",
        "ENGINE", "VFS", "CHAINS", "SLEEPS", "BUSY-POLLS", "IDLE-POLLS"
    );
    for e in v.as_array().into_iter().flatten() {
        let vfs: Vec<String> = e["vfs"].as_array().into_iter().flatten().map(s).collect();
        let _ = writeln!(
            o,
            "{:<7} {:<16} {:>12} {:>10} {:>12} {:>12}",
            s(&e["id"]),
            vfs.join(","),
            s(&e["chains"]),
            s(&e["sleeps"]),
            s(&e["busy_polls"]),
            s(&e["idle_polls"])
        );
    }
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
