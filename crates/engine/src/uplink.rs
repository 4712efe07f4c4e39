//! Uplinks in the data path: the RX pump (wire -> switch -> VFs) and
//! [`egress`] (VF -> wire).
//!
//! Each uplink is a switch port numbered from [`UPLINK_PORT_BASE`] up, held
//! in the [`Fabric`]'s uplink registry. Its pump thread waits on the port's
//! fd, reads bursts of frames, learns each source MAC as behind the uplink
//! (a local VF's static MAC is never moved: such a frame is a loop and is
//! dropped), asks the forwarding table for the destination and delivers per
//! VF in one group (as `forward.rs` does for VF traffic). Broadcast,
//! multicast and unknown unicast go to every connected VF. A frame that
//! came round a ring of hosts and was not for a local VF goes on to the
//! next host ([`vfnic_port::Port::ring_forward`], hop-limited).
//!
//! TCP segments toward a VF that negotiated GUEST_TSO4/6 are aggregated by
//! [`vfnic_offload::Gro`] per burst (each burst ends with a flush, so a
//! segment waits at most one burst); a VF without them gets the segments
//! as they came.
//!
//! In the other direction the engines call [`egress`] for a frame whose
//! destination is behind an uplink, or that floods.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use serde::Serialize;
use vfnic_offload::hdr::VIRTIO_NET_HDR_GSO_NONE;
use vfnic_offload::{complete_csum, segment, Gro, GroConfig, VirtioNetHdr};
use vfnic_op::{features, Function};
use vfnic_port::{OpenError, Port, PortCounters, PortKind, PortSpec, Rx, ETH_HLEN, MAX_FRAME};
use vfnic_switch::{Forward, PortId};
use vfnic_types::MacAddr;

use crate::deliver::{deliver_group, Frame, RxScratch, TagEdit};
use crate::fabric::Fabric;

/// Switch port number of the first uplink; VFs use the numbers below.
pub const UPLINK_PORT_BASE: u16 = 0x8000;
/// Frames read from an uplink per burst.
pub const UPLINK_BURST: usize = 32;
/// `VIRTIO_NET_F_GUEST_TSO4` and `_TSO6`.
const GUEST_TSO4: u32 = 7;
const GUEST_TSO6: u32 = 8;
/// `VIRTIO_NET_F_GUEST_CSUM`.
const GUEST_CSUM: u32 = 1;
const TPID_8021Q: u16 = 0x8100;

/// Whether switch port `p` is an uplink.
pub fn is_uplink_port(p: PortId) -> bool {
    p.0 >= UPLINK_PORT_BASE
}

/// An uplink attached to the switch.
pub struct Uplink {
    /// Its switch port.
    pub id: PortId,
    /// The port.
    pub port: Arc<dyn Port>,
    /// The wire's L3 MTU (for VXLAN, the underlay's).
    pub mtu: u16,
    /// Line rate in Mbit/s (0 = as fast as the wire takes).
    pub speed: u32,
    /// Egress arbiter: the VFs sending out of this uplink share its line
    /// rate by weight and guarantee (`forward.rs` step 2b).
    share: parking_lot::Mutex<vfnic_qos::Share>,
}

impl Uplink {
    /// The egress arbiter of its line.
    pub fn share(&self) -> parking_lot::MutexGuard<'_, vfnic_qos::Share> {
        self.share.lock()
    }

    /// Its counters.
    pub fn counters(&self) -> &PortCounters {
        self.port.counters()
    }

    /// L3 MTU available to a tenant's frame inside this uplink.
    pub fn inner_mtu(&self) -> u16 {
        self.mtu.saturating_sub(self.port.overhead())
    }

    /// What `vfnic uplink list/show` and `vfnic stats` print.
    pub fn info(&self) -> UplinkInfo {
        UplinkInfo {
            name: self.port.name().to_string(),
            kind: self.port.kind(),
            port: self.id.0,
            mtu: self.mtu,
            inner_mtu: self.inner_mtu(),
            speed: self.speed,
            counters: self.counters().snapshot(),
            detail: self.port.info(),
        }
    }
}

/// An uplink's state and counters.
#[derive(Debug, Clone, Serialize)]
pub struct UplinkInfo {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: PortKind,
    /// Switch port number.
    pub port: u16,
    /// Wire MTU.
    pub mtu: u16,
    /// L3 MTU left to tenant frames (after encapsulation).
    pub inner_mtu: u16,
    /// Line rate, Mbit/s (0 = the wire's pace).
    pub speed: u32,
    /// Counters by name.
    pub counters: BTreeMap<&'static str, u64>,
    /// Kind-specific state (VXLAN: VNI, local address, remotes and links).
    pub detail: serde_json::Value,
}

/// A running uplink: its pump thread stops when this is dropped.
pub struct UplinkHandle {
    /// The uplink.
    pub uplink: Arc<Uplink>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    fabric: Arc<Fabric>,
}

impl Drop for UplinkHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.fabric.remove_uplink(self.uplink.id);
    }
}

/// Why an uplink could not be started.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    /// The port could not be opened.
    #[error("Cannot open uplink")]
    Open(#[source] OpenError),
    /// The pump thread could not be started.
    #[error("Cannot start the uplink thread")]
    Thread(#[source] std::io::Error),
}

/// Opens the uplink `spec` describes, attaches it to the switch as port
/// `UPLINK_PORT_BASE + index` and starts its pump thread.
pub fn start(fabric: &Arc<Fabric>, index: u16, spec: &PortSpec) -> Result<UplinkHandle, UplinkError> {
    let port = vfnic_port::open(spec, Arc::default()).map_err(UplinkError::Open)?;
    let uplink = Arc::new(Uplink {
        id: PortId(UPLINK_PORT_BASE + index),
        port,
        mtu: spec.mtu,
        speed: spec.speed,
        share: Default::default(),
    });
    fabric.add_uplink(uplink.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let (f, u, s) = (fabric.clone(), uplink.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name(format!("uplink-{}", spec.name))
        .spawn(move || pump(&f, &u, &s))
        .map_err(|e| {
            fabric.remove_uplink(uplink.id);
            UplinkError::Thread(e)
        })?;
    tracing::info!(uplink = %spec.name, kind = spec.kind.as_str(), port = uplink.id.0, "uplink up");
    Ok(UplinkHandle { uplink, stop, thread: Some(thread), fabric: fabric.clone() })
}

// ------------------------------------------------------------------ egress

thread_local! {
    static EGRESS_BUF: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(MAX_FRAME + 4));
}

/// Sends a frame a local VF transmitted out of the uplinks; returns how
/// many frames went to the wire (segments count one each).
///
/// * `frame`: the contiguous Ethernet frame, without virtio-net header, as
///   the VF sent it (untagged when the VF has a port VLAN).
/// * `ingress_vlan`: the sending VF's port VLAN; when not 0 an 802.1Q tag
///   with this VID is inserted after the MAC addresses.
/// * `gso`: the VF's virtio-net header when it carried offload requests
///   (`NEEDS_CSUM`, a GSO type); `None` means a finished frame.
///
/// Destination: a unicast MAC the switch learned behind an uplink goes to
/// that uplink (a VXLAN uplink then picks the remote endpoint it learned
/// the MAC from); broadcast, multicast and unknown unicast go to every
/// uplink (a VXLAN uplink replicates to every remote, head-end). A unicast
/// MAC of a local VF goes nowhere here. GSO frames are segmented to the
/// uplink's inner MTU (VXLAN overhead accounted for) with every checksum
/// computed; `NEEDS_CSUM` frames get their checksum finished; frames longer
/// than the inner MTU are dropped (`tx_dropped_oversize`). Never panics on
/// a malformed frame or header: it is dropped and counted.
pub fn egress(fabric: &Fabric, ingress_vlan: u16, frame: &[u8], gso: Option<&VirtioNetHdr>) -> u64 {
    let Some(dst) = frame.get(..6).and_then(MacAddr::from_slice) else { return 0 };
    let domain = if ingress_vlan != 0 { ingress_vlan } else { vlan_of(frame).0 };
    let target = if dst.is_unicast() { fabric.uplink_lookup(dst, domain) } else { None };
    match target {
        Some(p) if is_uplink_port(p) => egress_to(fabric, Some(p), ingress_vlan, frame, gso),
        Some(_) => 0,
        None => egress_to(fabric, None, ingress_vlan, frame, gso),
    }
}

/// [`egress`] with the destination decided by the caller: uplink port `to`,
/// or every uplink when `None` (flood).
pub fn egress_to(
    fabric: &Fabric,
    to: Option<PortId>,
    ingress_vlan: u16,
    frame: &[u8],
    gso: Option<&VirtioNetHdr>,
) -> u64 {
    let uplinks = fabric.uplinks();
    uplinks.iter().filter(|u| to.is_none_or(|p| p == u.id)).map(|u| send_one(u, ingress_vlan, frame, gso)).sum()
}

fn send_one(u: &Uplink, vlan: u16, frame: &[u8], gso: Option<&VirtioNetHdr>) -> u64 {
    let c = u.counters();
    if frame.len() < ETH_HLEN {
        c.tx_dropped_runt.inc();
        return 0;
    }
    let mtu = u.inner_mtu();
    let hdr = gso.copied().unwrap_or_default();
    if hdr.gso_type != VIRTIO_NET_HDR_GSO_NONE {
        let mut sent = 0;
        let r = segment(frame, &hdr, Some(mtu), |seg| {
            EGRESS_BUF.with(|b| {
                let mut b = b.borrow_mut();
                b.clear();
                b.extend_from_slice(seg.headers());
                b.extend_from_slice(seg.payload());
                sent += put(u, vlan, &mut b);
            });
            ControlFlow::Continue(())
        });
        match r {
            Ok(rep) => {
                c.tx_gso_frames.inc();
                c.tx_gso_segments.add(rep.segments as u64);
            }
            Err(_) => c.tx_dropped_bad_gso.inc(),
        }
        return sent;
    }
    let tagged = frame.len() >= 16 && u16::from_be_bytes([frame[12], frame[13]]) == TPID_8021Q;
    let max = usize::from(mtu) + ETH_HLEN + if tagged { 4 } else { 0 };
    if frame.len() > max {
        c.tx_dropped_oversize.inc();
        return 0;
    }
    EGRESS_BUF.with(|b| {
        let mut b = b.borrow_mut();
        b.clear();
        b.extend_from_slice(frame);
        if hdr.needs_csum() && complete_csum(&mut b, usize::from(hdr.csum_start), usize::from(hdr.csum_offset)).is_err()
        {
            c.tx_dropped_bad_gso.inc();
            return 0;
        }
        put(u, vlan, &mut b)
    })
}

/// Inserts the port VLAN tag (if any) and sends.
fn put(u: &Uplink, vlan: u16, b: &mut Vec<u8>) -> u64 {
    if vlan != 0 {
        let tci = (vlan & 0x0fff).to_be_bytes();
        let tpid = TPID_8021Q.to_be_bytes();
        b.splice(12..12, [tpid[0], tpid[1], tci[0], tci[1]]);
    }
    match u.port.send(b) {
        Ok(()) => 1,
        Err(_) => {
            u.counters().tx_dropped_error.inc();
            0
        }
    }
}

// -------------------------------------------------------------------- RX

/// Where one received frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    Nowhere,
    Vf(u16),
    Flood,
    /// Not for a local VF (behind an uplink): only on round the ring.
    Away,
}

/// One received frame after classification.
#[derive(Debug, Clone, Copy)]
struct Meta {
    dest: Dest,
    /// VLAN it belongs to (0 = untagged).
    domain: u16,
    /// It carries an 802.1Q tag.
    tagged: bool,
}

struct PumpScratch {
    bufs: Vec<Vec<u8>>,
    rx: Vec<Rx>,
    dest: Vec<Meta>,
    learn: Vec<(u16, MacAddr)>,
    vfs: Vec<u16>,
    hit: Vec<bool>,
    rx_scratch: RxScratch,
    gro: Gro,
    /// GRO products: the receiver's virtio-net header fields and the frame.
    gro_out: Vec<(VirtioNetHdr, Vec<u8>)>,
    gro_used: usize,
}

fn pump(fabric: &Fabric, u: &Uplink, stop: &AtomicBool) {
    let mut s = PumpScratch {
        bufs: (0..UPLINK_BURST).map(|_| vec![0u8; MAX_FRAME]).collect(),
        rx: Vec::with_capacity(UPLINK_BURST),
        dest: Vec::with_capacity(UPLINK_BURST),
        learn: Vec::with_capacity(UPLINK_BURST),
        vfs: Vec::new(),
        hit: Vec::with_capacity(UPLINK_BURST),
        rx_scratch: RxScratch::default(),
        gro: Gro::new(GroConfig::default()),
        gro_out: Vec::new(),
        gro_used: 0,
    };
    let epoch = Instant::now();
    let mut next_tick = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let now = epoch.elapsed().as_millis() as u64;
        if now >= next_tick {
            next_tick = now + u.port.tick().clamp(1, 100);
        }
        let wait = if s.rx_scratch.armed() { 1 } else { next_tick.saturating_sub(now).clamp(1, 100) as i32 };
        if let Ok(false) | Err(_) = vfnic_port::wait_readable(u.port.fd(), wait) {
            s.rx_scratch.fire_due(false);
            continue;
        }
        s.rx.clear();
        while s.rx.len() < UPLINK_BURST {
            let i = s.rx.len();
            match u.port.recv(&mut s.bufs[i]) {
                Ok(Some(rx)) => s.rx.push(rx),
                Ok(None) | Err(_) => break,
            }
        }
        if s.rx.is_empty() {
            continue;
        }
        if catch_unwind(AssertUnwindSafe(|| burst(fabric, u, &mut s))).is_err() {
            tracing::error!(uplink = u.port.name(), "panic in an uplink burst; burst dropped");
            s.rx_scratch = RxScratch::default();
        }
        s.rx_scratch.fire_due(false);
    }
    s.rx_scratch.release();
}

fn frame_of<'a>(bufs: &'a [Vec<u8>], rx: &[Rx], i: usize) -> &'a [u8] {
    &bufs[i][rx[i].offset..rx[i].offset + rx[i].len]
}

fn burst(fabric: &Fabric, u: &Uplink, s: &mut PumpScratch) {
    let c = u.counters();
    let now_ms = fabric.now_ms();
    s.dest.clear();
    s.learn.clear();
    {
        let fdb = fabric.fdb_read();
        for i in 0..s.rx.len() {
            let f = frame_of(&s.bufs, &s.rx, i);
            let dst = MacAddr::from_slice(&f[..6]).expect("6 bytes");
            let src = MacAddr::from_slice(&f[6..12]).expect("6 bytes");
            let (domain, tagged) = vlan_of(f);
            let to = |d| Meta { dest: d, domain, tagged };
            if tagged && f.len() < ETH_HLEN + 4 {
                c.rx_dropped_runt.inc();
                s.dest.push(to(Dest::Nowhere));
                continue;
            }
            if fdb.lookup_vlan(domain, src).is_some_and(|p| !is_uplink_port(p)) {
                // Our own VF's address coming back: a loop.
                c.rx_dropped_loop.inc();
                s.dest.push(to(Dest::Nowhere));
                continue;
            }
            if !fdb.is_learned_vlan(domain, src, u.id, now_ms) && !s.learn.contains(&(domain, src)) {
                s.learn.push((domain, src));
            }
            s.dest.push(to(match fdb.forward_vlan(u.id, domain, dst) {
                Forward::Unicast(p) if !is_uplink_port(p) => Dest::Vf(p.0),
                Forward::Unicast(_) | Forward::Hairpin => Dest::Away,
                Forward::Flood => Dest::Flood,
            }));
        }
    }
    if !s.learn.is_empty() {
        let mut fdb = fabric.fdb();
        for (vlan, src) in &s.learn {
            fdb.learn_vlan(*vlan, *src, u.id, now_ms);
        }
    }
    // On round the ring: everything not for one local VF.
    for i in 0..s.rx.len() {
        let d = s.dest[i].dest;
        if s.rx[i].ring.is_some() && matches!(d, Dest::Flood | Dest::Away) {
            u.port.ring_forward(frame_of(&s.bufs, &s.rx, i), &s.rx[i]);
        } else if d == Dest::Away {
            c.rx_dropped_no_dest.inc();
        }
    }
    let ports = fabric.ports();
    s.vfs.clear();
    let mut any_flood = false;
    for m in &s.dest {
        match m.dest {
            Dest::Vf(p) if !s.vfs.contains(&p) => s.vfs.push(p),
            Dest::Flood => any_flood = true,
            _ => {}
        }
    }
    if any_flood {
        for f in ports.iter().flatten().filter(|f| f.connected()) {
            if !s.vfs.contains(&f.id.0) {
                s.vfs.push(f.id.0);
            }
        }
    }
    s.hit.clear();
    s.hit.resize(s.rx.len(), false);
    for k in 0..s.vfs.len() {
        let p = s.vfs[k];
        let Some(vf) = ports.get(usize::from(p)).and_then(Option::as_ref) else { continue };
        let pvlan = vf.policy().vlan;
        let connected = vf.connected();
        let wanted = |m: &Meta| (m.dest == Dest::Vf(p) || (m.dest == Dest::Flood && connected)) && m.domain == pvlan;
        for (i, m) in s.dest.iter().enumerate() {
            if wanted(m) {
                s.hit[i] = true;
            }
        }
        let strip = pvlan != 0;
        let delivered = if accepts_tso(vf) && !strip {
            gro_burst(s, &wanted, c);
            let out = &s.gro_out[..s.gro_used];
            deliver_group(vf, out.iter().map(|(o, b)| Frame::from_bytes(b).with_offload(*o)), &mut s.rx_scratch)
        } else {
            let (bufs, rx, dest) = (&s.bufs, &s.rx, &s.dest);
            let frames = (0..rx.len()).filter(|&i| wanted(&dest[i])).map(|i| {
                let tag = if dest[i].tagged && strip { TagEdit::Strip } else { TagEdit::Keep };
                Frame::from_bytes(frame_of(bufs, rx, i)).with_tag(tag)
            });
            deliver_group(vf, frames, &mut s.rx_scratch)
        };
        c.rx_delivered.add(delivered);
    }
    // Counted once per frame that found no VF at all (and no ring to go on).
    for (i, m) in s.dest.iter().enumerate() {
        if !s.hit[i] && matches!(m.dest, Dest::Vf(_) | Dest::Flood) && s.rx[i].ring.is_none() {
            c.rx_dropped_no_dest.inc();
        }
    }
}

/// The VLAN a frame from the wire belongs to, and whether it is tagged.
fn vlan_of(f: &[u8]) -> (u16, bool) {
    if f.len() >= ETH_HLEN + 4 && u16::from_be_bytes([f[12], f[13]]) == TPID_8021Q {
        (u16::from_be_bytes([f[14], f[15]]) & 0x0fff, true)
    } else {
        (0, false)
    }
}

fn accepts_tso(f: &Function) -> bool {
    let a = f.acked_features();
    // GRO output carries NEEDS_CSUM and a GSO type: both must be accepted.
    features::has(a, GUEST_TSO4) && features::has(a, GUEST_TSO6) && features::has(a, GUEST_CSUM)
}

/// Runs the burst's frames for one VF through GRO, flushing at the end:
/// the results land in `s.gro_out[..s.gro_used]`.
fn gro_burst(s: &mut PumpScratch, wanted: &dyn Fn(&Meta) -> bool, c: &PortCounters) {
    let before = *s.gro.counters();
    s.gro_used = 0;
    let (gro, out, used) = (&mut s.gro, &mut s.gro_out, &mut s.gro_used);
    let mut push = |h: &VirtioNetHdr, bytes: &[u8]| {
        if out.len() <= *used {
            out.push((VirtioNetHdr::default(), Vec::new()));
        }
        let (o, b) = &mut out[*used];
        // The merged segment's GSO type/size and checksum state go to the
        // receiver in its header (it negotiated GUEST_TSO and GUEST_CSUM).
        *o = VirtioNetHdr { num_buffers: 0, ..*h };
        b.clear();
        b.extend_from_slice(bytes);
        *used += 1;
    };
    for i in 0..s.rx.len() {
        if wanted(&s.dest[i]) {
            gro.receive(frame_of(&s.bufs, &s.rx, i), 0, &mut push);
        }
    }
    gro.flush_all(&mut push);
    let after = gro.counters();
    c.rx_gro_merged_segments.add(after.merged_segments - before.merged_segments);
    c.rx_gro_frames.add((after.flushed_frames + after.passthrough) - (before.flushed_frames + before.passthrough));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use vfnic_port::vxlan::{VxlanConfig, VxlanHeader, VXLAN_HLEN};

    fn vxlan_spec(name: &str, remote: std::net::SocketAddr, mtu: u16) -> PortSpec {
        PortSpec {
            name: name.into(),
            kind: PortKind::Vxlan,
            ifname: None,
            mtu,
            speed: 0,
            vxlan: Some(VxlanConfig {
                vni: 5,
                local: "127.0.0.1:0".parse().unwrap(),
                remotes: vec![remote],
                ring_next: None,
                ring_prev: None,
                ring_hops: 0,
                probe_interval_ms: 100,
                probe_misses: 3,
            }),
        }
    }

    fn tcp_frame(payload: usize) -> (Vec<u8>, VirtioNetHdr) {
        let mut f = vec![0u8; 14 + 20 + 20 + payload];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        f[6..12].copy_from_slice(&[2, 0x76, 0x66, 0x6e, 0, 0]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + 20 + payload) as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        let tcp = &mut f[34..54];
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        let hdr = VirtioNetHdr::gso_tcp(false, 1448, 34, 54).unwrap();
        (f, hdr)
    }

    #[test]
    fn egress_segments_to_the_vxlan_inner_mtu_and_tags() {
        let fabric = Arc::new(Fabric::default());
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        sink.set_read_timeout(Some(std::time::Duration::from_secs(2))).unwrap();
        let h = start(&fabric, 0, &vxlan_spec("up0", sink.local_addr().unwrap(), 1500)).unwrap();
        assert_eq!(h.uplink.inner_mtu(), 1450);
        let (f, hdr) = tcp_frame(10_000);
        let sent = egress(&fabric, 0, &f, Some(&hdr));
        assert_eq!(sent, 10_000usize.div_ceil(1410) as u64, "1450 - 40 bytes of headers per segment");
        let mut buf = vec![0u8; 4096];
        let mut total = 0;
        for _ in 0..sent {
            let n = sink.recv(&mut buf).unwrap();
            let (vh, inner) = VxlanHeader::decode(&buf[..n], 5).unwrap();
            assert_eq!(vh, VxlanHeader::plain(5));
            assert!(inner.len() <= 1450 + 14, "{}", inner.len());
            assert!(vfnic_offload::csum::verify_l4_checksum(inner).unwrap(), "TCP checksum complete");
            total += inner.len() - 54;
        }
        assert_eq!(total, 10_000);
        // A port VLAN is inserted; an oversize plain frame is dropped.
        let (small, _) = tcp_frame(100);
        assert_eq!(egress(&fabric, 7, &small, None), 1);
        let n = sink.recv(&mut buf).unwrap();
        assert_eq!(&buf[VXLAN_HLEN + 12..VXLAN_HLEN + 16], &[0x81, 0x00, 0x00, 0x07]);
        assert_eq!(n, VXLAN_HLEN + small.len() + 4);
        let (big, _) = tcp_frame(1500);
        assert_eq!(egress(&fabric, 0, &big, None), 0);
        let c = h.uplink.counters();
        assert_eq!(c.tx_dropped_oversize.get(), 1);
        assert_eq!(c.tx_gso_frames.get(), 1);
        // Hostile GSO header: counted, nothing sent.
        let bad = VirtioNetHdr { gso_type: 1, gso_size: 0, ..Default::default() };
        assert_eq!(egress(&fabric, 0, &small, Some(&bad)), 0);
        assert_eq!(egress(&fabric, 0, &small[..10], None), 0);
        assert_eq!(c.tx_dropped_bad_gso.get(), 1);
        drop(h);
        assert!(fabric.uplinks().is_empty());
    }

    #[test]
    fn uplink_learns_sources_and_forward_decision_is_visible() {
        let fabric = Arc::new(Fabric::default());
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let h = start(&fabric, 3, &vxlan_spec("up3", peer.local_addr().unwrap(), 1500)).unwrap();
        assert_eq!(h.uplink.id, PortId(UPLINK_PORT_BASE + 3));
        let to = match &h.uplink.port.info()["local"] {
            serde_json::Value::String(s) => s.parse::<std::net::SocketAddr>().unwrap(),
            _ => panic!(),
        };
        let (f, _) = tcp_frame(10);
        let mut d = VxlanHeader::plain(5).emit().to_vec();
        d.extend_from_slice(&f);
        peer.send_to(&d, to).unwrap();
        let src = MacAddr::from_slice(&f[6..12]).unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while fabric.uplink_port_for(src, 0).is_none() || h.uplink.counters().rx_dropped_no_dest.get() == 0 {
            assert!(Instant::now() < deadline, "source not learned");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(fabric.uplink_port_for(src, 0), Some(h.uplink.id));
        assert_eq!(fabric.uplink_port_for(src, 9), None, "other VLAN");
        assert_eq!(h.uplink.counters().rx_dropped_no_dest.get(), 1, "no VF to flood to");
    }
}
