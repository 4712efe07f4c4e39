//! `[[uplink]]` tables of the configuration.
//!
//! ```toml
//! [[uplink]]
//! name = "up0"
//! kind = "vxlan"             # "tap" | "af_packet" | "vxlan"
//! vni = 42                   # vxlan: 0 to 16777215
//! local = "10.0.0.1"         # vxlan: address to bind (":PORT" optional)
//! port = 4789                # vxlan: UDP port (default 4789)
//! remotes = ["10.0.0.2"]     # vxlan: plain endpoints (Linux, OVS, vfnic)
//! ring_next = "10.0.1.2"     # vxlan: ring successor (a vfnic host)
//! ring_prev = "10.0.4.1"     # vxlan: ring predecessor (optional)
//! ring_size = 4              # hosts in the ring (hop limit = ring_size - 2)
//! probe_interval_ms = 100    # keepalives to ring neighbours
//! probe_misses = 3           # silent intervals before a link is down
//! mtu = 1500                 # the wire's (underlay's) L3 MTU
//! speed = 10000              # line rate, Mbit/s: the VFs sending out of the
//!                            # uplink share it by weight (0 = the wire's pace)
//!
//! [[uplink]]
//! name = "host"
//! kind = "tap"               # or "af_packet" (an existing interface)
//! ifname = "vfnic0"
//! ```

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;
use vfnic_port::vxlan::{VxlanConfig, DEFAULT_PORT};
use vfnic_port::{PortKind, PortSpec};

/// Most uplinks.
pub const MAX_UPLINKS: usize = 64;

/// One `[[uplink]]` table as written.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: PortKind,
    /// Interface name (tap, af_packet).
    pub ifname: Option<String>,
    /// VNI (vxlan).
    pub vni: Option<u32>,
    /// Local address (vxlan), `IP` or `IP:PORT`.
    pub local: Option<String>,
    /// UDP port (vxlan).
    pub port: Option<u16>,
    /// Plain remote endpoints (vxlan).
    #[serde(default)]
    pub remotes: Vec<String>,
    /// Ring successor (vxlan).
    pub ring_next: Option<String>,
    /// Ring predecessor (vxlan).
    pub ring_prev: Option<String>,
    /// Hosts in the ring.
    pub ring_size: Option<u8>,
    /// Keepalive interval.
    pub probe_interval_ms: Option<u64>,
    /// Missed keepalives before a link is down.
    pub probe_misses: Option<u32>,
    /// Wire MTU.
    pub mtu: Option<u16>,
    /// Line rate, Mbit/s (0 = as fast as the wire takes).
    pub speed: Option<u32>,
}

fn addr(s: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, port)).map_err(|_| format!("`{s}` is not an IP address"))
}

/// Checks the uplink tables; an error names the table's problem (the
/// caller adds the line).
pub fn resolve(u: &UplinkConfig) -> Result<PortSpec, String> {
    let n = &u.name;
    if n.is_empty() || n.len() > 32 || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("uplink name `{n}` must be 1 to 32 letters, digits, `-` or `_`"));
    }
    let mtu = u.mtu.unwrap_or(1500);
    if !(576..=9000).contains(&mtu) {
        return Err(format!("uplink {n}: mtu {mtu} is out of range (576 to 9000)"));
    }
    let speed = u.speed.unwrap_or(0);
    let vx_only = [
        ("vni", u.vni.is_some()),
        ("local", u.local.is_some()),
        ("port", u.port.is_some()),
        ("remotes", !u.remotes.is_empty()),
        ("ring_next", u.ring_next.is_some()),
        ("ring_prev", u.ring_prev.is_some()),
        ("ring_size", u.ring_size.is_some()),
    ];
    match u.kind {
        PortKind::Tap | PortKind::AfPacket => {
            if let Some((k, _)) = vx_only.iter().find(|(_, set)| *set) {
                return Err(format!("uplink {n}: `{k}` is for kind = \"vxlan\" only"));
            }
            let i = u.ifname.as_deref().ok_or(format!("uplink {n}: kind = \"{}\" needs ifname", u.kind.as_str()))?;
            if i.is_empty() || i.len() > 15 || i.contains('/') || i.contains(char::is_whitespace) {
                return Err(format!("uplink {n}: ifname `{i}` is not an interface name (1 to 15 characters)"));
            }
            Ok(PortSpec { name: n.clone(), kind: u.kind, ifname: Some(i.to_string()), mtu, speed, vxlan: None })
        }
        PortKind::Vxlan => {
            if u.ifname.is_some() {
                return Err(format!("uplink {n}: `ifname` is not used by kind = \"vxlan\""));
            }
            let vni = u.vni.ok_or(format!("uplink {n}: kind = \"vxlan\" needs vni"))?;
            if vni > 0x00ff_ffff {
                return Err(format!("uplink {n}: vni {vni} is out of range (0 to 16777215)"));
            }
            let port = u.port.unwrap_or(DEFAULT_PORT);
            let local = addr(u.local.as_deref().ok_or(format!("uplink {n}: kind = \"vxlan\" needs local"))?, port)
                .map_err(|e| format!("uplink {n}: local {e}"))?;
            let one = |s: &String| addr(s, port).map_err(|e| format!("uplink {n}: {e}"));
            let remotes = u.remotes.iter().map(one).collect::<Result<Vec<_>, _>>()?;
            let ring_next = u.ring_next.as_ref().map(one).transpose()?;
            let ring_prev = u.ring_prev.as_ref().map(one).transpose()?;
            if ring_prev.is_some() && ring_next.is_none() {
                return Err(format!("uplink {n}: ring_prev needs ring_next"));
            }
            let ring_size = u.ring_size.unwrap_or(if ring_next.is_some() { 2 } else { 0 });
            if ring_next.is_some() && ring_size < 2 {
                return Err(format!("uplink {n}: ring_size {ring_size} must be at least 2"));
            }
            let mut seen = HashSet::new();
            for a in remotes.iter().chain(&ring_next).chain(&ring_prev) {
                if !seen.insert(*a) && ring_next != ring_prev {
                    return Err(format!("uplink {n}: endpoint {a} is listed twice"));
                }
                if a.is_ipv4() != local.is_ipv4() {
                    return Err(format!("uplink {n}: endpoint {a} and local {local} are not the same IP version"));
                }
            }
            if remotes.is_empty() && ring_next.is_none() {
                return Err(format!("uplink {n}: a vxlan uplink needs remotes or ring_next"));
            }
            let probe_interval_ms = u.probe_interval_ms.unwrap_or(100);
            if !(10..=60_000).contains(&probe_interval_ms) {
                return Err(format!("uplink {n}: probe_interval_ms {probe_interval_ms} is out of range (10 to 60000)"));
            }
            let probe_misses = u.probe_misses.unwrap_or(3);
            if !(1..=100).contains(&probe_misses) {
                return Err(format!("uplink {n}: probe_misses {probe_misses} is out of range (1 to 100)"));
            }
            Ok(PortSpec {
                name: n.clone(),
                kind: u.kind,
                ifname: None,
                mtu,
                speed,
                vxlan: Some(VxlanConfig {
                    vni,
                    local,
                    remotes,
                    ring_next,
                    ring_prev,
                    ring_hops: ring_size.saturating_sub(2),
                    probe_interval_ms,
                    probe_misses,
                }),
            })
        }
    }
}

/// Resolves every table, checking names are unique; errors carry the
/// table's index.
pub fn resolve_all(tables: &[UplinkConfig]) -> Result<Vec<PortSpec>, (usize, String)> {
    if tables.len() > MAX_UPLINKS {
        return Err((MAX_UPLINKS, format!("at most {MAX_UPLINKS} uplinks")));
    }
    let mut names = HashSet::new();
    let mut ifnames = HashSet::new();
    let mut out = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let spec = resolve(t).map_err(|e| (i, e))?;
        if !names.insert(spec.name.clone()) {
            return Err((i, format!("uplink name `{}` appears twice", spec.name)));
        }
        if let Some(f) = &spec.ifname {
            if !ifnames.insert(f.clone()) {
                return Err((i, format!("uplink {}: ifname {f} is used by another uplink", spec.name)));
            }
        }
        out.push(spec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn err(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn uplinks_parse() {
        let c = Config::parse(
            "num_vfs = 2\n[[uplink]]\nname = \"up0\"\nkind = \"vxlan\"\nvni = 42\nlocal = \"10.0.0.1\"\nremotes = [\"10.0.0.2\", \"10.0.0.3:5000\"]\n\n[[uplink]]\nname = \"host\"\nkind = \"tap\"\nifname = \"vf-tap0\"\nmtu = 9000\n",
        )
        .unwrap();
        assert_eq!(c.uplinks.len(), 2);
        let vx = c.uplinks[0].vxlan.as_ref().unwrap();
        assert_eq!(vx.local.to_string(), "10.0.0.1:4789");
        assert_eq!(vx.remotes[1].to_string(), "10.0.0.3:5000");
        assert_eq!(c.uplinks[1].mtu, 9000);
        let r = Config::parse(
            "[[uplink]]\nname = \"ring\"\nkind = \"vxlan\"\nvni = 1\nlocal = \"10.0.1.1\"\nring_next = \"10.0.1.2\"\nring_prev = \"10.0.4.2\"\nring_size = 4\n",
        )
        .unwrap();
        assert_eq!(r.uplinks[0].vxlan.as_ref().unwrap().ring_hops, 2);
    }

    #[test]
    fn uplink_errors_name_the_line() {
        let e = err("num_vfs = 2\n\n[[uplink]]\nname = \"up0\"\nkind = \"vxlan\"\nlocal = \"10.0.0.1\"\nremotes = [\"10.0.0.2\"]\n");
        assert!(e.starts_with("line 3") && e.contains("needs vni"), "{e}");
        let e = err("[[uplink]]\nname = \"a\"\nkind = \"tap\"\nifname = \"t0\"\n[[uplink]]\nname = \"a\"\nkind = \"tap\"\nifname = \"t1\"\n");
        assert!(e.starts_with("line 5") && e.contains("twice"), "{e}");
        let e = err("[[uplink]]\nname = \"a\"\nkind = \"tap\"\n");
        assert!(e.contains("needs ifname"), "{e}");
        let e = err("[[uplink]]\nname = \"a\"\nkind = \"tap\"\nifname = \"t0\"\nvni = 3\n");
        assert!(e.contains("vxlan\" only"), "{e}");
        let e = err("[[uplink]]\nname = \"a\"\nkind = \"vxlan\"\nvni = 16777216\nlocal = \"1.1.1.1\"\nremotes = [\"1.1.1.2\"]\n");
        assert!(e.contains("out of range"), "{e}");
        let e = err("[[uplink]]\nname = \"a\"\nkind = \"vxlan\"\nvni = 1\nlocal = \"nope\"\nremotes = [\"1.1.1.2\"]\n");
        assert!(e.contains("not an IP"), "{e}");
        let e = err("[[uplink]]\nname = \"a\"\nkind = \"vxlan\"\nvni = 1\nlocal = \"1.1.1.1\"\n");
        assert!(e.contains("needs remotes or ring_next"), "{e}");
        let e = err("[[uplink]]\nname = \"a\"\nkind = \"gre\"\n");
        assert!(e.starts_with("line 3"), "{e}");
        let e =
            err("[[uplink]]\nname = \"a\"\nkind = \"vxlan\"\nvni = 1\nlocal = \"1.1.1.1\"\nring_prev = \"1.1.1.2\"\n");
        assert!(e.contains("ring_prev needs ring_next"), "{e}");
    }
}
