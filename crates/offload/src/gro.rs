//! GRO: aggregation of TCP segments arriving from an uplink, before they
//! reach a VF that accepts GUEST_TSO4/6.
//!
//! [`Gro::receive`] takes one Ethernet frame at a time. A TCP segment that
//! may be merged (flags ACK or ACK|PSH, payload, IPv4 without options or IPv6
//! without extension headers, and, by default, a right checksum) is held in
//! one of a bounded number of flows; anything else passes through at once.
//! A held flow grows while segments follow the Linux GRO rules
//! (`tcp_gro_receive`, `inet_gro_receive`, `ipv6_gro_receive`):
//!
//! * same L2 header (MACs, VLAN tags), addresses and ports (the flow key);
//! * next sequence number exactly; payload at most the first segment's (the MSS);
//! * same ACK number, window, TCP header length and options; same IPv4 TOS
//!   (so a CE mark ends the flow), TTL and DF; same IPv6 traffic class, flow
//!   label and hop limit;
//! * the merged IP packet stays within the size limit (64 KiB).
//!
//! IPv4 IDs are not compared (Linux checks that they increment); the merged
//! frame keeps the first segment's ID and headers, PSH or'ed in from the last.
//!
//! A flow is flushed when a segment breaks these rules (the segment then
//! starts a new flow), when a segment with PSH or shorter than the MSS has
//! been merged, when a frame of the same flow that cannot be merged arrives
//! (it passes through after the flush, so order within a flow is kept), when
//! its slot is needed by a new flow (the oldest goes), and when the caller's
//! timer says so ([`Gro::flush_due`], deadline from [`Gro::next_deadline`]).
//!
//! Every frame comes out of the `out` closure exactly once, inside a merged
//! frame or on its own, with the virtio-net header to give the receiver:
//! `gso_type` TCPV4/TCPV6, `gso_size` = MSS, `hdr_len`, and either
//! `NEEDS_CSUM` (the TCP checksum field holds the pseudo-header sum, as Linux
//! GRO leaves it) or `DATA_VALID` (full checksum computed), per
//! [`GroConfig::csum`]. `num_buffers` is left 0 for the deliverer to fill.
//!
//! The flow buffers are allocated once in [`Gro::new`]; no allocation after.

use crate::csum::{pseudo_header, verify_l4_checksum_at, Csum};
use crate::hdr::{
    VirtioNetHdr, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
};
use crate::layout::{IpVersion, L4Proto, Layout, TCP_ACK, TCP_PSH};

/// Most flows a [`Gro`] holds at once.
pub const MAX_GRO_FLOWS: usize = 8;
/// Largest merged IP packet.
pub const GRO_MAX_IP_LEN: usize = 65535;
/// Longest L2 header (two VLAN tags).
const MAX_L2_LEN: usize = 22;

/// How a merged frame's checksum is presented to the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroCsum {
    /// `NEEDS_CSUM`, the TCP checksum field holding the pseudo-header sum:
    /// cheap, and what Linux GRO hands up (`CHECKSUM_PARTIAL`).
    NeedsCsum,
    /// `DATA_VALID`, with the full checksum computed over the merged frame.
    DataValid,
}

/// Settings of a [`Gro`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroConfig {
    /// Flows held at once, 1 to [`MAX_GRO_FLOWS`].
    pub max_flows: usize,
    /// Largest merged IP packet, up to [`GRO_MAX_IP_LEN`] (e.g. smaller to
    /// fit a receiver's buffers).
    pub max_ip_len: usize,
    /// A flow is flushed this long after its first segment arrived.
    pub flush_timeout_ns: u64,
    /// How merged frames present their checksum.
    pub csum: GroCsum,
    /// Verify each segment's TCP checksum before merging (a segment with a
    /// wrong one passes through unmerged, without `DATA_VALID`). Turn off
    /// only for an uplink that has already verified (e.g. a TAP device).
    pub verify_csum: bool,
}

impl Default for GroConfig {
    fn default() -> Self {
        GroConfig {
            max_flows: MAX_GRO_FLOWS,
            max_ip_len: GRO_MAX_IP_LEN,
            flush_timeout_ns: 100_000,
            csum: GroCsum::NeedsCsum,
            verify_csum: true,
        }
    }
}

/// What a [`Gro`] did. Plain numbers, owned by the one engine driving it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroCounters {
    /// Frames given to [`Gro::receive`].
    pub rx_frames: u64,
    /// Frames passed through unmerged (not TCP, not mergeable, bad checksum).
    pub passthrough: u64,
    /// TCP segments passed through because their checksum was wrong.
    pub csum_bad: u64,
    /// Segments that started a flow.
    pub flows_started: u64,
    /// Segments appended to a held flow.
    pub merged_segments: u64,
    /// Frames emitted from flows (merged or single).
    pub flushed_frames: u64,
    /// Segments inside those frames.
    pub flushed_segments: u64,
    /// Flushes: the next segment did not follow in sequence.
    pub flush_seq_break: u64,
    /// Flushes: flags, headers or options of the next segment differed, or a
    /// frame of the flow that cannot be merged arrived.
    pub flush_mismatch: u64,
    /// Flushes: the size limit was reached.
    pub flush_size: u64,
    /// Flushes: a segment with PSH or shorter than the MSS was merged.
    pub flush_push: u64,
    /// Flushes: the timer.
    pub flush_timer: u64,
    /// Flushes: the slot was taken for a new flow.
    pub flush_evict: u64,
    /// Flushes: [`Gro::flush_all`].
    pub flush_all: u64,
}

#[derive(Debug, Clone, Copy)]
enum Why {
    SeqBreak,
    Mismatch,
    Size,
    Push,
    Timer,
    Evict,
    All,
}

/// One held flow: the first segment's headers followed by the merged payload.
#[derive(Debug)]
struct Flow {
    active: bool,
    buf: Vec<u8>,
    layout: Layout,
    mss: usize,
    next_seq: u32,
    segments: u64,
    psh: bool,
    first_ns: u64,
}

/// The GRO aggregator. Sans-IO: the caller passes the time and drives the timer.
#[derive(Debug)]
pub struct Gro {
    cfg: GroConfig,
    flows: Vec<Flow>,
    counters: GroCounters,
}

/// A parsed segment that may be merged.
struct Seg<'a> {
    frame: &'a [u8],
    layout: Layout,
    seq: u32,
    flags: u8,
}

impl Gro {
    /// An aggregator with `cfg` (limits clamped to their ranges). Allocates
    /// every flow buffer now.
    pub fn new(cfg: GroConfig) -> Self {
        let cfg = GroConfig {
            max_flows: cfg.max_flows.clamp(1, MAX_GRO_FLOWS),
            max_ip_len: cfg.max_ip_len.min(GRO_MAX_IP_LEN),
            ..cfg
        };
        let placeholder =
            Layout { l3_offset: 0, l4_offset: 0, payload_offset: 0, l3_end: 0, ip: IpVersion::V4, l4: L4Proto::Tcp };
        let flows = (0..cfg.max_flows)
            .map(|_| Flow {
                active: false,
                buf: Vec::with_capacity(MAX_L2_LEN + GRO_MAX_IP_LEN),
                layout: placeholder,
                mss: 0,
                next_seq: 0,
                segments: 0,
                psh: false,
                first_ns: 0,
            })
            .collect();
        Gro { cfg, flows, counters: GroCounters::default() }
    }

    /// The settings in force.
    pub fn config(&self) -> &GroConfig {
        &self.cfg
    }

    /// The counters.
    pub fn counters(&self) -> &GroCounters {
        &self.counters
    }

    /// Flows held now.
    pub fn held_flows(&self) -> usize {
        self.flows.iter().filter(|f| f.active).count()
    }

    /// When [`Gro::flush_due`] next has work: the earliest flow deadline.
    pub fn next_deadline(&self) -> Option<u64> {
        self.flows.iter().filter(|f| f.active).map(|f| f.first_ns.saturating_add(self.cfg.flush_timeout_ns)).min()
    }

    /// Takes one Ethernet frame (no virtio header) at time `now_ns`. Frames
    /// come out of `out` (with the header to deliver them with) now or later;
    /// within a flow, in order.
    pub fn receive<F>(&mut self, frame: &[u8], now_ns: u64, mut out: F)
    where
        F: FnMut(&VirtioNetHdr, &[u8]),
    {
        self.counters.rx_frames += 1;
        let Ok(layout) = Layout::parse(frame) else {
            return self.pass(frame, false, &mut out);
        };
        if layout.l4 != L4Proto::Tcp {
            return self.pass(frame, false, &mut out);
        }
        let slot = self.flows.iter().position(|f| f.active && same_flow(&f.buf, &f.layout, frame, &layout));
        let l4 = layout.l4_offset;
        let flags = frame[l4 + 13];
        let simple_ip = match layout.ip {
            IpVersion::V4 => layout.l4_offset - layout.l3_offset == 20,
            IpVersion::V6 => layout.l4_offset - layout.l3_offset == 40,
        };
        let mergeable = simple_ip && flags & !TCP_PSH == TCP_ACK && layout.payload_len() > 0;
        let csum_ok = mergeable && (!self.cfg.verify_csum || verify_l4_checksum_at(frame, &layout));
        if !csum_ok {
            if mergeable {
                self.counters.csum_bad += 1;
            }
            if let Some(i) = slot {
                self.flush(i, Why::Mismatch, &mut out);
            }
            return self.pass(frame, false, &mut out);
        }
        let seg = Seg { frame, layout, seq: be32(&frame[l4 + 4..l4 + 8]), flags };
        let slot = match slot {
            Some(i) => match self.merge_verdict(i, &seg) {
                Ok(()) => {
                    self.append(i, &seg, &mut out);
                    return;
                }
                Err(why) => {
                    self.flush(i, why, &mut out);
                    i
                }
            },
            None => match self.flows.iter().position(|f| !f.active) {
                Some(i) => i,
                None => {
                    // The table is full: the oldest flow makes room.
                    let i = (0..self.flows.len()).min_by_key(|&i| self.flows[i].first_ns).unwrap_or(0);
                    self.flush(i, Why::Evict, &mut out);
                    i
                }
            },
        };
        if seg.flags & TCP_PSH != 0 {
            // Nothing can follow it: no use holding it.
            return self.pass(frame, self.cfg.verify_csum, &mut out);
        }
        self.start(slot, &seg, now_ns);
    }

    /// Flushes every flow held for `flush_timeout_ns` or longer at `now_ns`.
    pub fn flush_due<F>(&mut self, now_ns: u64, mut out: F)
    where
        F: FnMut(&VirtioNetHdr, &[u8]),
    {
        for i in 0..self.flows.len() {
            let f = &self.flows[i];
            if f.active && now_ns.saturating_sub(f.first_ns) >= self.cfg.flush_timeout_ns {
                self.flush(i, Why::Timer, &mut out);
            }
        }
    }

    /// Flushes every flow (end of a burst, or before the receiver goes away).
    pub fn flush_all<F>(&mut self, mut out: F)
    where
        F: FnMut(&VirtioNetHdr, &[u8]),
    {
        for i in 0..self.flows.len() {
            if self.flows[i].active {
                self.flush(i, Why::All, &mut out);
            }
        }
    }

    fn pass<F: FnMut(&VirtioNetHdr, &[u8])>(&mut self, frame: &[u8], valid: bool, out: &mut F) {
        self.counters.passthrough += 1;
        let hdr = VirtioNetHdr { flags: if valid { VIRTIO_NET_HDR_F_DATA_VALID } else { 0 }, ..Default::default() };
        out(&hdr, frame);
    }

    /// Whether `seg` may be appended to flow `i` (same key already known).
    fn merge_verdict(&self, i: usize, seg: &Seg<'_>) -> Result<(), Why> {
        let f = &self.flows[i];
        let (held, new) = (&f.buf, seg.frame);
        let (l3, l4) = (seg.layout.l3_offset, seg.layout.l4_offset);
        let same_ip = match seg.layout.ip {
            // TOS (with ECN), TTL, DF.
            IpVersion::V4 => {
                held[l3 + 1] == new[l3 + 1] && held[l3 + 8] == new[l3 + 8] && (held[l3 + 6] ^ new[l3 + 6]) & 0x40 == 0
            }
            // Version, traffic class, flow label; hop limit.
            IpVersion::V6 => held[l3..l3 + 4] == new[l3..l3 + 4] && held[l3 + 7] == new[l3 + 7],
        };
        let hdr_len = seg.layout.payload_offset;
        let same_tcp = f.layout.payload_offset == hdr_len
            // ACK number, data offset.
            && held[l4 + 8..l4 + 13] == new[l4 + 8..l4 + 13]
            // Window, options.
            && held[l4 + 14..l4 + 16] == new[l4 + 14..l4 + 16]
            && held[l4 + 20..hdr_len] == new[l4 + 20..hdr_len];
        if !same_ip || !same_tcp {
            return Err(Why::Mismatch);
        }
        if seg.seq != f.next_seq {
            return Err(Why::SeqBreak);
        }
        let len = seg.layout.payload_len();
        if len > f.mss {
            return Err(Why::Mismatch);
        }
        if f.buf.len() - f.layout.l3_offset + len > self.cfg.max_ip_len {
            return Err(Why::Size);
        }
        Ok(())
    }

    fn start(&mut self, i: usize, seg: &Seg<'_>, now_ns: u64) {
        self.counters.flows_started += 1;
        let f = &mut self.flows[i];
        f.active = true;
        f.buf.clear();
        f.buf.extend_from_slice(&seg.frame[..seg.layout.l3_end]);
        f.layout = seg.layout;
        f.mss = seg.layout.payload_len();
        f.next_seq = seg.seq.wrapping_add(f.mss as u32);
        f.segments = 1;
        f.psh = false;
        f.first_ns = now_ns;
    }

    fn append<F: FnMut(&VirtioNetHdr, &[u8])>(&mut self, i: usize, seg: &Seg<'_>, out: &mut F) {
        self.counters.merged_segments += 1;
        let f = &mut self.flows[i];
        let len = seg.layout.payload_len();
        f.buf.extend_from_slice(&seg.frame[seg.layout.payload_offset..seg.layout.l3_end]);
        f.next_seq = f.next_seq.wrapping_add(len as u32);
        f.segments += 1;
        f.psh = seg.flags & TCP_PSH != 0;
        if f.psh || len < f.mss {
            self.flush(i, Why::Push, out);
        }
    }

    fn flush<F: FnMut(&VirtioNetHdr, &[u8])>(&mut self, i: usize, why: Why, out: &mut F) {
        let c = &mut self.counters;
        match why {
            Why::SeqBreak => c.flush_seq_break += 1,
            Why::Mismatch => c.flush_mismatch += 1,
            Why::Size => c.flush_size += 1,
            Why::Push => c.flush_push += 1,
            Why::Timer => c.flush_timer += 1,
            Why::Evict => c.flush_evict += 1,
            Why::All => c.flush_all += 1,
        }
        c.flushed_frames += 1;
        let f = &mut self.flows[i];
        c.flushed_segments += f.segments;
        f.active = false;
        if f.segments == 1 {
            // Unchanged from the wire.
            let flags = if self.cfg.verify_csum { VIRTIO_NET_HDR_F_DATA_VALID } else { 0 };
            out(&VirtioNetHdr { flags, ..Default::default() }, &f.buf);
            return;
        }
        let Layout { l3_offset: l3, l4_offset: l4, payload_offset: hdr_len, ip, .. } = f.layout;
        let ip_len = f.buf.len() - l3;
        let b = &mut f.buf;
        match ip {
            IpVersion::V4 => {
                b[l3 + 2..l3 + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
                b[l3 + 10..l3 + 12].fill(0);
                let check = Csum::new().add_bytes(&b[l3..l4]).finish();
                b[l3 + 10..l3 + 12].copy_from_slice(&check.to_be_bytes());
            }
            IpVersion::V6 => b[l3 + 4..l3 + 6].copy_from_slice(&((ip_len - 40) as u16).to_be_bytes()),
        }
        if f.psh {
            b[l4 + 13] |= TCP_PSH;
        }
        let layout = Layout { l3_end: b.len(), ..f.layout };
        let l4_len = b.len() - l4;
        let pseudo = pseudo_header(b, &layout, l4_len);
        let (flags, check) = match self.cfg.csum {
            GroCsum::NeedsCsum => (VIRTIO_NET_HDR_F_NEEDS_CSUM, pseudo.fold()),
            GroCsum::DataValid => {
                b[l4 + 16..l4 + 18].fill(0);
                let mut c = pseudo;
                c.add_bytes(&b[l4..]);
                (VIRTIO_NET_HDR_F_DATA_VALID, c.finish())
            }
        };
        b[l4 + 16..l4 + 18].copy_from_slice(&check.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags,
            gso_type: match ip {
                IpVersion::V4 => VIRTIO_NET_HDR_GSO_TCPV4,
                IpVersion::V6 => VIRTIO_NET_HDR_GSO_TCPV6,
            },
            // Headers are at most 22 + 40 + 60 bytes; the MSS is under 64 KiB.
            hdr_len: hdr_len as u16,
            gso_size: f.mss as u16,
            csum_start: l4 as u16,
            csum_offset: 16,
            num_buffers: 0,
        };
        out(&hdr, b);
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Same L2 header, IP version, addresses and ports.
fn same_flow(held: &[u8], hl: &Layout, new: &[u8], nl: &Layout) -> bool {
    if hl.ip != nl.ip || hl.l3_offset != nl.l3_offset || hl.l4_offset != nl.l4_offset {
        return false;
    }
    let l3 = nl.l3_offset;
    let addrs = match nl.ip {
        IpVersion::V4 => l3 + 12..l3 + 20,
        IpVersion::V6 => l3 + 8..l3 + 40,
    };
    let l4 = nl.l4_offset;
    held[..l3] == new[..l3] && held[addrs.clone()] == new[addrs] && held[l4..l4 + 4] == new[l4..l4 + 4]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum::{complete_csum, fill_l4_checksum, verify_l4_checksum};
    use crate::layout::tests::tcp4;
    use crate::layout::{TCP_FIN, TCP_SYN};

    /// Segment `i` of a flow: seq 100 + i * mss, ACK only, checksum filled.
    fn seg(i: u32, mss: usize) -> Vec<u8> {
        let mut f = tcp4(false, mss);
        f[38..42].copy_from_slice(&(100 + i * mss as u32).to_be_bytes());
        f[47] = TCP_ACK;
        for (k, b) in f[54..].iter_mut().enumerate() {
            *b = (i as usize * mss + k) as u8;
        }
        fill_l4_checksum(&mut f).unwrap();
        f
    }

    fn collect(v: &mut Vec<(VirtioNetHdr, Vec<u8>)>) -> impl FnMut(&VirtioNetHdr, &[u8]) + '_ {
        |h, f| v.push((*h, f.to_vec()))
    }

    #[test]
    fn merges_in_order_and_flushes_on_push() {
        let mut g = Gro::new(GroConfig::default());
        let mut out = Vec::new();
        for i in 0..4 {
            g.receive(&seg(i, 100), i as u64, collect(&mut out));
        }
        assert!(out.is_empty());
        assert_eq!(g.held_flows(), 1);
        let mut last = seg(4, 100);
        last[47] |= TCP_PSH;
        fill_l4_checksum(&mut last).unwrap();
        g.receive(&last, 5, collect(&mut out));
        assert_eq!(out.len(), 1);
        let (h, f) = &out[0];
        assert_eq!((h.gso_type, h.gso_size, h.hdr_len, h.csum_start, h.csum_offset), (1, 100, 54, 34, 16));
        assert!(h.needs_csum());
        assert_eq!(f.len(), 54 + 500);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 540);
        assert_eq!(Csum::new().add_bytes(&f[14..34]).fold(), 0xffff);
        assert_eq!(f[47], TCP_ACK | TCP_PSH);
        assert!(f[54..].iter().enumerate().all(|(k, &b)| b == k as u8));
        let mut done = f.clone();
        complete_csum(&mut done, 34, 16).unwrap();
        assert!(verify_l4_checksum(&done).unwrap());
        let c = g.counters();
        assert_eq!((c.flows_started, c.merged_segments, c.flushed_segments, c.flush_push), (1, 4, 5, 1));
        assert_eq!(g.held_flows(), 0);
    }

    #[test]
    fn data_valid_mode_computes_full_checksum() {
        let mut g = Gro::new(GroConfig { csum: GroCsum::DataValid, ..Default::default() });
        let mut out = Vec::new();
        for i in 0..3 {
            g.receive(&seg(i, 200), 0, collect(&mut out));
        }
        g.flush_all(collect(&mut out));
        assert_eq!(out.len(), 1);
        assert!(out[0].0.data_valid());
        assert!(verify_l4_checksum(&out[0].1).unwrap());
        assert_eq!(g.counters().flush_all, 1);
    }

    #[test]
    fn seq_break_and_flags_and_bad_checksum() {
        let mut g = Gro::new(GroConfig::default());
        let mut out = Vec::new();
        g.receive(&seg(0, 100), 0, collect(&mut out));
        g.receive(&seg(2, 100), 0, collect(&mut out)); // gap: flush seg 0, hold seg 2
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0.gso_type, 0, "single segment goes out as is");
        assert!(out[0].0.data_valid());
        assert_eq!(out[0].1, seg(0, 100));
        let mut fin = seg(3, 100);
        fin[47] |= TCP_FIN;
        fill_l4_checksum(&mut fin).unwrap();
        g.receive(&fin, 0, collect(&mut out)); // flush seg 2, pass FIN
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].1, seg(2, 100));
        assert_eq!(out[2], (VirtioNetHdr::default(), fin));
        let mut bad = seg(4, 100);
        bad[60] ^= 1;
        g.receive(&bad, 0, collect(&mut out));
        assert_eq!(out.len(), 4);
        assert_eq!(out[3].0.flags, 0);
        let mut syn = seg(5, 100);
        syn[47] = TCP_SYN;
        g.receive(&syn, 0, collect(&mut out));
        let c = *g.counters();
        assert_eq!((c.flush_seq_break, c.flush_mismatch, c.csum_bad, c.passthrough), (1, 1, 1, 3));
        assert_eq!(c.rx_frames, 5);
        g.receive(&[0u8; 10], 0, collect(&mut out));
        assert_eq!(out.last().unwrap().1, vec![0u8; 10]);
    }

    #[test]
    fn window_change_and_ecn_mark_flush() {
        let mut g = Gro::new(GroConfig::default());
        let mut out = Vec::new();
        g.receive(&seg(0, 100), 0, collect(&mut out));
        let mut s1 = seg(1, 100);
        s1[49] ^= 1; // window
        fill_l4_checksum(&mut s1).unwrap();
        g.receive(&s1, 0, collect(&mut out));
        assert_eq!(out.len(), 1);
        let mut s2 = seg(2, 100);
        s2[49] ^= 1;
        s2[15] = 0x03; // CE
        fill_l4_checksum(&mut s2).unwrap();
        g.receive(&s2, 0, collect(&mut out));
        assert_eq!(out.len(), 2);
        assert_eq!(g.counters().flush_mismatch, 2);
    }

    #[test]
    fn timer_and_eviction() {
        let mut g = Gro::new(GroConfig { max_flows: 2, flush_timeout_ns: 1000, ..Default::default() });
        let mut out = Vec::new();
        for port in 0..3u16 {
            let mut s = seg(0, 100);
            s[34..36].copy_from_slice(&(1000 + port).to_be_bytes());
            fill_l4_checksum(&mut s).unwrap();
            g.receive(&s, u64::from(port) * 10, collect(&mut out));
        }
        assert_eq!((out.len(), g.counters().flush_evict, g.held_flows()), (1, 1, 2));
        assert_eq!(&out[0].1[34..36], &1000u16.to_be_bytes());
        assert_eq!(g.next_deadline(), Some(1010));
        g.flush_due(1009, collect(&mut out));
        assert_eq!(out.len(), 1);
        g.flush_due(1010, collect(&mut out));
        assert_eq!((out.len(), g.held_flows(), g.next_deadline()), (2, 1, Some(1020)));
        g.flush_due(u64::MAX, collect(&mut out));
        assert_eq!((out.len(), g.counters().flush_timer), (3, 2));
    }

    #[test]
    fn size_limit() {
        let mut g = Gro::new(GroConfig { max_ip_len: 40 + 250, ..Default::default() });
        let mut out = Vec::new();
        for i in 0..5 {
            g.receive(&seg(i, 100), 0, collect(&mut out));
        }
        // 0+1 merged (240 bytes); 2 would pass 290: flush, 2 starts a flow;
        // 2+3 likewise; 4 held.
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|(h, f)| h.gso_size == 100 && f.len() == 54 + 200));
        assert_eq!(g.counters().flush_size, 2);
        assert_eq!(g.held_flows(), 1);
    }
}
