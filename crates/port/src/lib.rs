//! Stage ⑥ of the adapter: uplinks, the physical port.
//!
//! A [`Port`] moves whole Ethernet frames between the adapter and the world
//! outside the host's tenants. It knows nothing about vhost or VFs: the
//! engine's uplink pump (`vfnic_engine::uplink`) reads frames from a port,
//! switches them to VFs, and hands frames from VFs to [`Port::send`].
//!
//! | module | port |
//! |---|---|
//! | [`tap`] | a TAP device toward the host kernel |
//! | [`af_packet`] | an existing interface (veth, NIC) through an AF_PACKET socket |
//! | [`vxlan`] | VXLAN over UDP (RFC 7348) to vfnic hosts and Linux/OVS endpoints; learning, head-end replication, the ring extension |
//! | [`ring`] | a ring of hosts: hop-limited forwarding and link failure detection (pure, clock injected) |
//!
//! Input from the wire is hostile: a truncated or foreign datagram, a runt
//! frame is dropped and counted in [`PortCounters`], never a panic. The
//! system calls (and the only `unsafe`) live in the private `sys` module.
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod af_packet;
pub mod raw;
pub mod ring;
mod sys;
pub mod tap;
pub mod vxlan;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The event counter every stage shares (relaxed atomic, monotonic).
pub use vfnic_types::Counter;

pub use ring::{RingHeader, Side};

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// Largest frame a port reads (a 64 KiB GRO/TSO-sized IP packet plus L2).
pub const MAX_FRAME: usize = 65_536 + 64;

/// Waits up to `timeout_ms` for `fd` (a port's [`Port::fd`]) to be readable.
pub fn wait_readable(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    sys::poll_in(fd, timeout_ms)
}

/// The kinds of uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortKind {
    /// A TAP device.
    Tap,
    /// An existing interface through AF_PACKET.
    AfPacket,
    /// A VXLAN tunnel.
    Vxlan,
}

impl PortKind {
    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            PortKind::Tap => "tap",
            PortKind::AfPacket => "af_packet",
            PortKind::Vxlan => "vxlan",
        }
    }
}

/// A frame just received, at `buf[offset..offset + len]` of the caller's
/// buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rx {
    /// Where the Ethernet frame starts.
    pub offset: usize,
    /// Its length (at least [`ETH_HLEN`]).
    pub len: usize,
    /// The ring header, when a vfnic ring neighbour sent it (only then may
    /// it be forwarded round the ring with [`Port::ring_forward`]).
    pub ring: Option<RingHeader>,
    /// The ring neighbour it came from, if any.
    pub from_side: Option<Side>,
}

/// An uplink port. Every method may be called from several threads.
pub trait Port: Send + Sync {
    /// The uplink's configured name.
    fn name(&self) -> &str;
    /// Its kind.
    fn kind(&self) -> PortKind;
    /// The fd to wait on for received frames.
    fn fd(&self) -> RawFd;
    /// Bytes the port adds around a frame on the wire beyond the inner
    /// Ethernet header (VXLAN: outer IP + UDP + VXLAN + inner Ethernet;
    /// 0 for TAP and AF_PACKET), for segmentation to the uplink MTU.
    fn overhead(&self) -> u16 {
        0
    }
    /// The port's counters.
    fn counters(&self) -> &Arc<PortCounters>;
    /// Receives one frame into `buf` (nonblocking): `Ok(None)` when nothing
    /// is pending. Bad input is counted and skipped.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Rx>>;
    /// Sends one complete Ethernet frame (checksums done, at most the MTU).
    /// A frame the wire loses is counted, not an error.
    fn send(&self, frame: &[u8]) -> io::Result<()>;
    /// Forwards a frame received with `rx` on round the ring, if its hop
    /// count allows. Returns whether it was sent.
    fn ring_forward(&self, _frame: &[u8], _rx: &Rx) -> bool {
        false
    }
    /// Periodic work (keepalive probes, link state, ageing); returns the
    /// milliseconds until it next has work.
    fn tick(&self) -> u64 {
        1_000
    }
    /// Kind-specific state for `vfnic uplink show`.
    fn info(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

macro_rules! counters {
    ($($(#[$m:meta])* $name:ident,)*) => {
        /// Per-uplink counters, updated lock-free by the data path. Names
        /// follow `<dir>_<what>[_<reason>]`; `rx` is what came in from the
        /// wire, `tx` what the adapter sent out.
        #[derive(Debug, Default)]
        pub struct PortCounters {
            $($(#[$m])* pub $name: Counter,)*
        }

        impl PortCounters {
            /// Every counter by name.
            pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
                let mut m = BTreeMap::new();
                $(m.insert(stringify!($name), self.$name.get());)*
                m
            }
        }
    };
}

counters! {
    /// Frames received from the wire (after decapsulation).
    rx_packets,
    /// Bytes of those frames.
    rx_bytes,
    /// Frames sent to the wire.
    tx_packets,
    /// Bytes of those frames (inner frames for VXLAN).
    tx_bytes,
    /// Frames delivered into VF RX rings.
    rx_delivered,
    /// Datagrams shorter than the VXLAN header.
    rx_dropped_truncated,
    /// VXLAN flags wrong (no `I` bit, unknown reserved bits).
    rx_dropped_bad_flags,
    /// VXLAN datagrams for another VNI.
    rx_dropped_wrong_vni,
    /// Frames shorter than an Ethernet header.
    rx_dropped_runt,
    /// VXLAN datagrams from an address that is no configured remote.
    rx_dropped_unknown_peer,
    /// Frames for no connected VF (and not forwarded round a ring).
    rx_dropped_no_dest,
    /// Frames carrying a local VF's own source MAC (a loop).
    rx_dropped_loop,
    /// Frames too long for the uplink MTU (and not segmentable).
    tx_dropped_oversize,
    /// Frames shorter than an Ethernet header.
    tx_dropped_runt,
    /// GSO frames whose headers could not be segmented.
    tx_dropped_bad_gso,
    /// Sends that failed (queue full, network unreachable).
    tx_dropped_error,
    /// Frames with no ring link up to go on.
    tx_dropped_link_down,
    /// GSO frames segmented in software for this uplink.
    tx_gso_frames,
    /// Segments those produced.
    tx_gso_segments,
    /// TCP segments merged into larger frames toward VFs (GRO).
    rx_gro_merged_segments,
    /// Frames GRO handed to VFs (merged or single).
    rx_gro_frames,
    /// Frames forwarded on round the ring.
    ring_forwarded,
    /// Ring frames stopped because their hop count was 0.
    ring_hop_expired,
    /// Keepalive probes sent to ring neighbours.
    probes_sent,
    /// Keepalive probes received.
    probes_received,
    /// Ring links that went down.
    link_down_events,
    /// Ring links that came back up.
    link_up_events,
}

/// What an uplink is, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// Name (`up0`).
    pub name: String,
    /// Kind.
    pub kind: PortKind,
    /// Interface name (TAP device to create, or interface to bind).
    pub ifname: Option<String>,
    /// L3 MTU of the wire (for VXLAN: the underlay's).
    pub mtu: u16,
    /// Line rate in Mbit/s (0 = as fast as the wire takes): the VFs that
    /// send out of this port share it by weight and guarantee.
    pub speed: u32,
    /// VXLAN settings (kind `vxlan` only).
    pub vxlan: Option<vxlan::VxlanConfig>,
}

/// Why an uplink could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The TAP device could not be created or brought up.
    #[error("Cannot open TAP device {0}")]
    Tap(String, #[source] io::Error),
    /// The interface could not be bound.
    #[error("Cannot bind interface {0}")]
    Packet(String, #[source] io::Error),
    /// The UDP socket could not be bound.
    #[error("Cannot bind VXLAN socket {0}")]
    Vxlan(SocketAddr, #[source] io::Error),
    /// The specification lacks what its kind needs.
    #[error("Uplink {0}: {1}")]
    Spec(String, &'static str),
}

/// Opens the port `spec` describes.
pub fn open(spec: &PortSpec, counters: Arc<PortCounters>) -> Result<Arc<dyn Port>, OpenError> {
    let ifname = || spec.ifname.clone().ok_or(OpenError::Spec(spec.name.clone(), "needs ifname"));
    Ok(match spec.kind {
        PortKind::Tap => {
            let i = ifname()?;
            Arc::new(tap::open(&spec.name, &i, spec.mtu, counters).map_err(|e| OpenError::Tap(i, e))?)
        }
        PortKind::AfPacket => {
            let i = ifname()?;
            Arc::new(af_packet::open(&spec.name, &i, counters).map_err(|e| OpenError::Packet(i, e))?)
        }
        PortKind::Vxlan => {
            let c = spec.vxlan.clone().ok_or(OpenError::Spec(spec.name.clone(), "needs vxlan settings"))?;
            let local = c.local;
            Arc::new(vxlan::VxlanPort::open(&spec.name, c, counters).map_err(|e| OpenError::Vxlan(local, e))?)
        }
    })
}
