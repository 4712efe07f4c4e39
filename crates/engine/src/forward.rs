//! One burst of one TX queue, with look-ahead: take a burst of chains, walk
//! them all, resolve every destination under one read of the forwarding
//! table, then deliver per destination in one group (one RX lock, one
//! publish, one interrupt per receiver per burst). Frames keep their order
//! per (sender queue, receiver). A burst of one frame to where the port's
//! last burst went takes a short way through the same decisions (`lone`).

use vfnic_dma::chain::Access;
use vfnic_dma::copy::{peek, Cursor};
use vfnic_dma::{Chain, Filled, PopError};
use vfnic_op::vring::{TxQos, VringState};
use vfnic_op::{features, Function, Policy};
use vfnic_switch::Forward;
use vfnic_types::{DropReason, ErrorKind, HoldReason, MacAddr};

use std::ops::ControlFlow;
use std::sync::Arc;

use vfnic_offload::{complete_csum, Segmenter, VirtioNetHdr};

use crate::chains::ChainSets;
use crate::deliver::{
    deliver_group_to, deliver_locked, deliver_one, deliver_plain, fault_queue, Frame, RxScratch, TagEdit,
};
use crate::fabric::{port_of, Fabric, PortCache};
use crate::phases::{Phase, Stopwatch};
use crate::rss;

/// Most chains taken from one TX queue before the engine moves on.
pub const BURST: usize = 64;
/// Chains a turn with a budget takes in its first group (see `process_tx`).
const FIRST_GROUP: usize = 8;
/// Ethernet header length.
const ETH_HLEN: u64 = 14;
/// Room for a VLAN tag on top of the MTU.
const VLAN_HLEN: u64 = 4;

/// `ETH_P_8021Q`.
const ETH_P_8021Q: u16 = 0x8100;

/// One frame of the burst after classification.
#[derive(Debug, Clone, Copy)]
struct Meta {
    dest: Dest,
    /// Ethernet frame length.
    len: u64,
    /// VLAN it belongs to (0 = untagged).
    domain: u16,
    /// The frame carries an 802.1Q tag.
    tagged: bool,
    /// Dropped before the switch, and why.
    drop: Option<DropReason>,
    /// Offloads the sender asked for (checksum to complete, GSO).
    offload: VirtioNetHdr,
}

/// A frame dropped before the switch (its `drop` set).
const NOWHERE: Meta = Meta {
    dest: Dest::Nowhere,
    len: 0,
    domain: 0,
    tagged: false,
    drop: None,
    offload: VirtioNetHdr {
        flags: 0,
        gso_type: 0,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
        num_buffers: 0,
    },
};

/// Which turn of the engine's transmit arbitration a visit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Serve the VF's `min_tx_rate` guarantee only.
    Guaranteed,
    /// Deficit round robin: `quantum` bytes of credit per unit of weight.
    Shared {
        /// Bytes of credit per unit of weight per turn.
        quantum: u64,
    },
    /// No arbitration (only the max-rate shaper applies).
    Unlimited,
}

/// Bytes per unit of weight a sender may run ahead of a congested
/// receiver's fair order (`qos::Share::admit`). One MTU-sized frame.
pub const DRR_QUANTUM: u64 = 1536;

/// Bytes per unit of weight: a TX queue's deficit-round-robin credit per
/// turn of its engine. Sixteen MTU-sized frames: a turn of weight 1 is a
/// burst of large frames, not one frame (with one frame per turn, every
/// 1518-byte frame paid a whole burst's fixed cost). While the queue's
/// frames wait on a congested receiver (for `vfnic_qos::Share::CONGESTED_NS` since they were
/// last held there), its credit per turn is [`DRR_QUANTUM`] instead: the
/// senders of that receiver then reach it interleaved frame by frame,
/// which its fair order (`qos::Share`) needs to hold to the weights.
pub const TURN_QUANTUM: u64 = 16 * DRR_QUANTUM;

/// How long a queue counts as contending for a receiver after its frames
/// were last held there (the receiver's congestion window).
const CONTENDING_NS: u64 = vfnic_qos::Share::CONGESTED_NS;

/// How long a queue may wait for a full receiver before its frames to it
/// are dropped instead (2 ms: a receiver that does not drain is not
/// allowed to stall a sender for long).
pub const BACKPRESSURE_NS: u64 = 2_000_000;

/// The receiver's RX queue pairs that are up (enabled and started), in
/// order; at most 16.
fn active_rx_queues(d: &Function) -> ArrayQueues {
    let mut out = ArrayQueues::default();
    if d.queue_pairs() == 1 {
        // One queue: the delivery itself checks whether it is up.
        out.push(0);
        return out;
    }
    for qp in 0..d.queue_pairs().min(16) {
        if d.rx(qp).lock().ready() {
            out.push(qp);
        }
    }
    out
}

/// A small fixed list of queue pair numbers (no allocation per burst).
#[derive(Default, Clone, Copy)]
struct ArrayQueues {
    q: [u16; 16],
    n: usize,
}

impl ArrayQueues {
    fn push(&mut self, qp: u16) {
        if self.n < 16 {
            self.q[self.n] = qp;
            self.n += 1;
        }
    }
}

impl std::ops::Deref for ArrayQueues {
    type Target = [u16];

    fn deref(&self) -> &[u16] {
        &self.q[..self.n]
    }
}

/// Frames whose count is known beforehand (at most `left`): the size hint
/// a delivery takes its RX chains by.
struct Counted<I> {
    frames: I,
    left: usize,
}

impl<I: Iterator> Iterator for Counted<I> {
    type Item = I::Item;

    #[inline]
    fn next(&mut self) -> Option<I::Item> {
        let f = self.frames.next()?;
        self.left = self.left.saturating_sub(1);
        Some(f)
    }

    #[inline]
    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.left))
    }
}

/// Largest GSO frame a sender may hand over (64 KiB of IP plus headers).
const MAX_GSO_FRAME: u64 = 65535 + ETH_HLEN + VLAN_HLEN;

/// Delivers a frame whose offloads `dest` did not negotiate: the engine does
/// the work a NIC would: segments a GSO frame to `dest`'s MTU (checksums
/// computed), or completes a partial checksum. Two copies (gather, then
/// deliver): the price of the receiver's missing feature.
#[allow(clippy::too_many_arguments)]
fn soft_offload(
    dest: &Arc<Function>,
    qp: u16,
    chain: &Chain,
    hdr_len: u64,
    m: &Meta,
    tag: TagEdit,
    wire: &mut Vec<u8>,
    segmenter: &mut Segmenter,
    rx: &mut RxScratch,
) {
    wire.resize(m.len as usize, 0);
    let mut cur = Cursor::new(chain);
    cur.skip(hdr_len);
    cur.gather(wire);
    let o = m.offload;
    if o.gso_type & !features::GSO_ECN != features::GSO_NONE {
        dest.counters.gso_segmented.inc();
        let r = segmenter.segment(wire, &o, Some(dest.mtu()), |seg| {
            deliver_group_to(dest, qp, std::iter::once(Frame::from_bytes(seg).with_tag(tag)), rx);
            ControlFlow::Continue(())
        });
        if r.is_err() {
            dest.counters.drop_frames(DropReason::RxBadOffload, 1);
        }
    } else {
        if complete_csum(wire, o.csum_start as usize, o.csum_offset as usize).is_err() {
            dest.counters.drop_frames(DropReason::RxBadOffload, 1);
            return;
        }
        dest.counters.csum_completed.inc();
        deliver_group_to(dest, qp, std::iter::once(Frame::from_bytes(wire).with_tag(tag)), rx);
    }
}

/// Admits a frame of `len` bytes in `pass` against the budget and the
/// VF's buckets, consuming them; false if it must wait.
fn admit(qos: &mut TxQos, pass: Pass, budget: &mut u64, len: u64, now_ns: u64) -> bool {
    match pass {
        Pass::Guaranteed => {
            let Some((_, min)) = qos.min.as_mut() else { return false };
            if !min.conforms(len, now_ns) {
                return false;
            }
        }
        Pass::Shared { .. } if len > *budget => return false,
        _ => {}
    }
    if let Some((_, max)) = qos.max.as_mut() {
        if !max.conforms(len, now_ns) {
            qos.throttled_until_ns = max.next_ready_ns(len, now_ns);
            return false;
        }
        max.consume(len);
    }
    if pass == Pass::Guaranteed {
        if let Some((_, min)) = qos.min.as_mut() {
            min.consume(len);
        }
    }
    *budget = budget.saturating_sub(len);
    true
}

/// Fewest frames to one receiver for which [`rx_room`] fetches its RX
/// buffers ahead: a frame or two are delivered right after, with nothing
/// in between for the fetch to overlap.
const HINT_MIN: u16 = 4;

/// RX buffers `d` has posted, counted up to `max` (on its first queue
/// pair; RSS receivers with several are treated as having room). A
/// receiver that is not up counts as having room: delivery drops and
/// counts those frames.
///
/// For `max` of at least [`HINT_MIN`], its next `max` buffers are also
/// asked for now, for writing, with their descriptors and used-ring
/// lines: they are in the receiver's driver's cache, and the
/// read-for-ownership of those lines is what a delivery waits on most.
/// Asked for here, they come while the arbitration runs, instead of all at
/// once when the group's chains are taken.
fn rx_room(d: &Function, max: u16) -> u16 {
    if !d.connected() || !d.link_up() || d.queue_pairs() > 1 {
        return u16::MAX;
    }
    let mut s = d.rx(0).lock();
    let ready = s.ready();
    match (ready, s.ring.as_mut()) {
        (true, Some(r)) if max >= HINT_MIN => r.room_prefetching(max),
        (true, Some(r)) => r.room(max),
        _ => u16::MAX,
    }
}

/// A unicast destination's side of the egress arbitration.
#[derive(Clone, Copy)]
enum Receiver<'a> {
    Vf(&'a Arc<Function>),
    Uplink(&'a crate::uplink::Uplink),
}

impl<'a> Receiver<'a> {
    fn share(self) -> parking_lot::MutexGuard<'a, vfnic_qos::Share> {
        match self {
            Receiver::Vf(d) => d.share(),
            Receiver::Uplink(u) => u.share(),
        }
    }
}

/// Where one frame of the burst goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    /// Dropped before the switch (counted).
    Nowhere,
    /// One port.
    Port(u16),
    /// Every connected port but the sender.
    Flood,
}

/// A (VLAN, MAC) key of the forwarding table as one word: the address's
/// six bytes in bits 0-47 (in memory order, little-endian), the VLAN in
/// bits 48-59. A frame's keys are compared with the memo's on every frame:
/// one load and one compare each instead of a field-wise one.
type VlanMac = u64;

/// No key: never equal to a frame's (VLANs are 12 bits).
const NO_KEY: VlanMac = u64::MAX;

/// Bits 0-47 of a word.
const MAC_BITS: u64 = (1 << 48) - 1;

/// The address in the first six of `bytes`, as the low bits of a key.
#[inline(always)]
fn mac_bits(bytes: [u8; 8]) -> VlanMac {
    u64::from_le_bytes(bytes) & MAC_BITS
}

/// A VF's own address as the low bits of a key.
fn mac_key(mac: MacAddr) -> VlanMac {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&mac.0);
    mac_bits(b)
}

/// The VLAN and address of a key.
fn split_key(k: VlanMac) -> (u16, MacAddr) {
    let b = k.to_le_bytes();
    ((k >> 48) as u16, MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]]))
}

/// What the forwarding table decided for one ingress port's latest burst,
/// kept for its next burst while the table's generation stands (frames of
/// a flow mostly come in many bursts).
#[derive(Debug, Clone, Copy)]
struct FdbMemo {
    generation: u64,
    /// How long a checked source is trusted (ms).
    src_window: u64,
    /// A source address the table knew ([`NO_KEY`]: none), and when that
    /// was checked (ms): trusted for a while, so that it is still
    /// refreshed well within the ageing time.
    src: (VlanMac, u64),
    /// The last destination ([`NO_KEY`]: none) and where it went.
    fwd: (VlanMac, (Dest, Option<DropReason>)),
}

impl Default for FdbMemo {
    fn default() -> Self {
        FdbMemo { generation: 0, src_window: 0, src: (NO_KEY, 0), fwd: (NO_KEY, (Dest::Nowhere, None)) }
    }
}

/// The forwarding table's read lock, taken by a burst on the first
/// decision its port's copy ([`FdbMemo`]) does not hold.
struct FdbRead<'a> {
    fabric: &'a Fabric,
    guard: Option<parking_lot::RwLockReadGuard<'a, vfnic_switch::Fdb>>,
    /// The generation the burst's decisions are of.
    generation: u64,
}

impl FdbRead<'_> {
    /// The table, and whether its generation moved on since the one the
    /// decisions so far are of (decisions copied from before are then
    /// stale for the rest of the burst).
    fn get(&mut self) -> (&vfnic_switch::Fdb, bool) {
        let mut moved = false;
        if self.guard.is_none() {
            let table = self.fabric.fdb_read();
            moved = table.generation() != self.generation;
            self.generation = table.generation();
            self.guard = Some(table);
        }
        (self.guard.as_deref().expect("taken above"), moved)
    }
}

/// Per-engine reusable state: a burst allocates nothing.
pub struct Scratch {
    /// TX chains, a set per sender's memory.
    tx: ChainSets,
    dest: Vec<Meta>,
    learn: Vec<VlanMac>,
    ports: Vec<(u16, Policy)>,
    /// A frame gathered for an uplink or for software offload.
    wire: Vec<u8>,
    /// Software segmentation for receivers without GSO.
    segmenter: Segmenter,
    /// Copies of the functions' policies.
    policies: vfnic_op::PolicyCache,
    /// RSS hashes of the burst's frames, computed on demand.
    hashes: Vec<Option<u32>>,
    rx: RxScratch,
    /// Per ingress port (VF index).
    fdb_memo: Vec<FdbMemo>,
    /// The switch's port table as this engine last read it.
    port_table: PortCache,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            tx: ChainSets::new(BURST),
            dest: Vec::with_capacity(BURST),
            learn: Vec::with_capacity(BURST),
            ports: Vec::with_capacity(64),
            wire: Vec::with_capacity(64 * 1024),
            segmenter: Segmenter::new(),
            hashes: Vec::with_capacity(BURST),
            policies: vfnic_op::PolicyCache::default(),
            rx: RxScratch::default(),
            fdb_memo: Vec::new(),
            port_table: PortCache::default(),
        }
    }
}

impl Scratch {
    /// Held RX interrupts: fire those due; true while some are held.
    pub fn fire_due_interrupts(&mut self) -> bool {
        self.rx.fire_due(false) > 0
    }

    /// Lets go of every tenant memory table the chains still refer to and
    /// of the port table copy (so of functions detached since); the engine
    /// calls it whenever its queues change and before it sleeps.
    pub fn release(&mut self) {
        self.tx.release();
        self.rx.release();
        self.port_table.release();
    }
}

/// Step 3 of [`process_tx`] for any burst: delivers the first `n` frames
/// per destination, in order of first appearance: unicast targets, flood
/// targets, and trusted promiscuous VFs (mirrors), each only within the
/// frame's VLAN. Returns whether some frame is flooded and whether some
/// goes to an uplink (step 3b).
fn deliver_sorted(
    f: &Function,
    ports: &[Option<Arc<Function>>],
    scratch: &mut Scratch,
    hdr_len: u64,
    n: usize,
    any_offload: bool,
) -> (bool, bool) {
    scratch.ports.clear();
    let mut any_flood = false;
    let mut any_unicast = false;
    let mut any_uplink = false;
    for m in &scratch.dest {
        match m.dest {
            Dest::Port(p) if crate::uplink::is_uplink_port(vfnic_switch::PortId(p)) => any_uplink = true,
            Dest::Port(p) => {
                any_unicast = true;
                if !scratch.ports.iter().any(|(q, _)| *q == p) {
                    if let Some(d) = ports.get(p as usize).and_then(Option::as_ref) {
                        scratch.ports.push((p, scratch.policies.get(d)));
                    } else {
                        f.counters.drop_frames(DropReason::RxNotReady, 1);
                    }
                }
            }
            Dest::Flood => any_flood = true,
            Dest::Nowhere => {}
        }
    }
    // Mirrors: looked for only while some VF is promiscuous.
    if any_flood || (any_unicast && vfnic_op::any_promiscuous()) {
        for d in ports.iter().flatten().filter(|d| d.id != f.id && d.connected()) {
            if scratch.ports.iter().any(|(q, _)| *q == d.id.0) {
                continue;
            }
            let p = scratch.policies.get(d);
            if any_flood || p.promisc {
                scratch.ports.push((d.id.0, p));
            }
        }
    }
    for &(p, pp) in &scratch.ports {
        let Some(dest) = ports.get(p as usize).and_then(Option::as_ref) else { continue };
        let connected = dest.connected();
        let racked = dest.acked_features();
        let for_p = |m: &Meta| -> Option<TagEdit> {
            let to_p = match m.dest {
                Dest::Port(q) => q == p || (pp.promisc && connected),
                Dest::Flood => connected,
                Dest::Nowhere => false,
            };
            (to_p && pp.vlan == m.domain).then_some(if m.tagged && pp.vlan != 0 {
                TagEdit::Strip
            } else {
                TagEdit::Keep
            })
        };
        let accepts = |m: &Meta| features::may_receive(racked, m.offload.flags, m.offload.gso_type);
        let frame =
            |chain, m: &Meta, tag| Frame::from_chain(chain, hdr_len, m.len).with_offload(m.offload).with_tag(tag);
        // RSS: with several active RX queues, each flow's hash picks one.
        let active = active_rx_queues(dest);
        let queue_of = |chain: &Chain, i: usize, hashes: &mut [Option<u32>]| -> u16 {
            if active.len() < 2 {
                return active.first().copied().unwrap_or(0);
            }
            let h = *hashes[i].get_or_insert_with(|| {
                let mut head = [0u8; 64];
                let mut cur = Cursor::new(chain);
                cur.skip(hdr_len);
                let got = cur.gather(&mut head);
                rss::flow_hash(&rss::DEFAULT_KEY, &head[..got])
            });
            active[h as usize % active.len()]
        };
        if active.len() >= 2 {
            scratch.hashes.clear();
            scratch.hashes.resize(n, None);
        }
        if !any_offload || scratch.dest.iter().all(|m| for_p(m).is_none() || accepts(m)) {
            // Fast path: the receiver takes every offload as it is (or there
            // is none): one group per RX queue, one copy each, headers passed
            // through.
            // Each group is counted first (the receiver takes one RX chain per
            // frame in one go): with one receiver, the burst bounds it.
            if active.len() < 2 {
                let q = active.first().copied().unwrap_or(0);
                let count = if scratch.ports.len() == 1 {
                    n
                } else {
                    scratch.dest.iter().filter(|m| for_p(m).is_some()).count()
                };
                let frames = scratch.tx.active[..n]
                    .iter()
                    .zip(&scratch.dest)
                    .filter_map(|(chain, m)| for_p(m).map(|tag| frame(chain, m, tag)));
                deliver_group_to(dest, q, Counted { frames, left: count }, &mut scratch.rx);
                continue;
            }
            for &q in active.iter() {
                let hashes = &mut scratch.hashes;
                let mut to_q = |i: usize, chain: &Chain, m: &Meta| for_p(m).filter(|_| queue_of(chain, i, hashes) == q);
                let count = (0..n).filter(|&i| to_q(i, &scratch.tx.active[i], &scratch.dest[i]).is_some()).count();
                let frames = scratch.tx.active[..n]
                    .iter()
                    .zip(&scratch.dest)
                    .enumerate()
                    .filter_map(|(i, (chain, m))| to_q(i, chain, m).map(|tag| frame(chain, m, tag)));
                deliver_group_to(dest, q, Counted { frames, left: count }, &mut scratch.rx);
            }
            continue;
        }
        // Some frame needs software offload for this receiver: deliver in
        // order, frame by frame.
        for (i, (chain, m)) in scratch.tx.active[..n].iter().zip(&scratch.dest).enumerate() {
            let Some(tag) = for_p(m) else { continue };
            let q = queue_of(chain, i, &mut scratch.hashes);
            if accepts(m) {
                deliver_group_to(dest, q, std::iter::once(frame(chain, m, tag)), &mut scratch.rx);
            } else {
                let (wire, seg, rx) = (&mut scratch.wire, &mut scratch.segmenter, &mut scratch.rx);
                soft_offload(dest, q, chain, hdr_len, m, tag, wire, seg, rx);
            }
        }
    }
    (any_flood, any_uplink)
}

/// What classification reads of a frame: the first 16 bytes of its
/// Ethernet header, and its virtio-net header's flags and GSO type. The
/// virtio-net header is read only with `read_hdr` (the driver negotiated
/// a send offload, [`features::sends_offloads`]); else it is not touched
/// and both fields are zero: no offload asked for.
#[derive(Clone, Copy)]
struct Heads {
    eth: [u8; 16],
    flags: u8,
    gso_type: u8,
}

impl Heads {
    /// From the chain's first buffer when both headers lie there after a
    /// 12-byte virtio-net header (nearly every frame); `None` otherwise.
    #[inline(always)]
    fn flat(chain: &Chain, read_hdr: bool) -> Option<Heads> {
        if read_hdr {
            let h = peek::<28>(chain, 0)?;
            Some(Heads { eth: h[12..].try_into().expect("16 bytes"), flags: h[0], gso_type: h[1] })
        } else {
            Some(Heads { eth: peek::<16>(chain, 12)?, flags: 0, gso_type: 0 })
        }
    }

    /// Gathered across the chain's buffers (or after a 10-byte virtio-net
    /// header). A chain too short for them leaves zeros (a runt).
    #[inline(never)]
    fn gather(chain: &Chain, hdr_len: u64, read_hdr: bool) -> Heads {
        let mut h = Heads { eth: [0; 16], flags: 0, gso_type: 0 };
        if chain.len() >= hdr_len + ETH_HLEN {
            if read_hdr {
                let vh = net_hdr(chain, hdr_len);
                (h.flags, h.gso_type) = (vh[0], vh[1]);
            }
            let mut cur = Cursor::new(chain);
            cur.skip(hdr_len);
            cur.gather(&mut h.eth);
        }
        h
    }

    /// The destination MAC with the two bytes after it (masked off in keys).
    #[inline(always)]
    fn dst(&self) -> u64 {
        mac_bits(self.eth[0..8].try_into().expect("8 bytes"))
    }

    /// The source MAC, likewise.
    #[inline(always)]
    fn src(&self) -> u64 {
        mac_bits(self.eth[6..14].try_into().expect("8 bytes"))
    }

    /// An 802.1Q tag follows the addresses.
    #[inline(always)]
    fn tagged(&self) -> bool {
        u16::from_be_bytes([self.eth[12], self.eth[13]]) == ETH_P_8021Q
    }

    /// The tag's VLAN ID (meaningful when [`Heads::tagged`]).
    #[inline(always)]
    fn vid(&self) -> u16 {
        u16::from_be_bytes([self.eth[14], self.eth[15]]) & 0x0fff
    }
}

/// A frame's whole virtio-net header (a 10-byte one padded with zeros),
/// for a frame that asks for an offload: one read where it lies in the
/// first buffer (where [`Heads::flat`] just read its first bytes),
/// gathered otherwise.
#[inline(never)]
fn net_hdr(chain: &Chain, hdr_len: u64) -> [u8; 12] {
    if hdr_len == 12 {
        if let Some(h) = peek::<12>(chain, 0) {
            return h;
        }
    }
    let mut h = [0u8; 12];
    Cursor::new(chain).gather(&mut h[..hdr_len as usize]);
    h
}

/// Look-ahead across the switch: the receiver `f`'s last burst went to
/// (its port's [`FdbMemo`], most likely this burst's too) starts fetching
/// the lines its RX take reads first: its avail entry and the descriptor
/// an in-order driver put there. Those misses then overlap the TX chain's
/// instead of following them; with one frame per burst they were two of
/// the few misses on the path from a frame posted to a frame delivered.
/// A hint only: a wrong guess costs a line fetched; the RX ring is not
/// waited for if another engine holds it.
#[inline]
fn hint_receiver(f: &Function, scratch: &Scratch) {
    let Some(memo) = scratch.fdb_memo.get(port_of(f).0 as usize) else { return };
    let (Dest::Port(p), None) = memo.fwd.1 else { return };
    let Some(Some(d)) = scratch.port_table.peek().and_then(|t| t.get(p as usize)) else { return };
    if d.queue_pairs() != 1 {
        return;
    }
    if let Some(rs) = d.rx(0).try_lock() {
        if let Some(r) = rs.ring.as_ref() {
            r.prefetch_next();
        }
    }
}

/// Moves up to [`BURST`] frames from `f`'s TX queue `qp`. Returns how many
/// chains were consumed (0 = nothing to do).
pub fn process_tx(f: &Function, qp: u16, fabric: &Fabric, scratch: &mut Scratch, pass: Pass) -> usize {
    if pass == Pass::Guaranteed && !f.has_guarantee() {
        return 0;
    }
    let tx = f.tx(qp);
    let mut s = tx.lock();
    if !s.ready() || !s.ring.as_ref().is_some_and(|r| r.any_pending().unwrap_or(true)) {
        return 0;
    }
    let pol = scratch.policies.get(f);
    // Transmit QoS: the shaper may hold the queue; the pass sets a budget.
    let now_ns = fabric.now_ns();
    s.qos.configure(pol.max_tx_rate, pol.min_tx_rate, now_ns);
    if s.qos.throttled_until_ns > now_ns {
        return 0;
    }
    let mut budget = match pass {
        Pass::Guaranteed if s.qos.min.is_none() => return 0,
        Pass::Guaranteed => u64::MAX,
        Pass::Shared { quantum } => {
            let quantum = if now_ns < s.qos.contending_until_ns { quantum.min(DRR_QUANTUM) } else { quantum };
            s.qos.deficit = s.qos.deficit.saturating_add(quantum * pol.weight as u64);
            if s.qos.deficit < ETH_HLEN {
                return 0;
            }
            s.qos.deficit
        }
        Pass::Unlimited => u64::MAX,
    };
    let indirect = s.indirect;
    let acked = f.acked_features();
    let hdr_len = features::net_hdr_len(acked) as u64;
    let mut watch = Stopwatch::start();
    let vs = &mut *s;
    let ring = vs.ring.as_mut().expect("ready() checked the ring");
    let qos = &mut vs.qos;
    scratch.tx.select(ring.mem());

    // 1. Look ahead: take and walk a burst. Each chain is admitted by the
    // turn's budget (guarantee or DRR credit) and the max-rate shaper; the
    // first one not admitted goes straight back to the ring, in order.
    let mut fault = None;
    let mut n = 0;
    let mut drained = false;
    // A split ring says how many chains it has (its index read once for
    // the burst): the burst takes those, with no call into `pop_chain` to
    // find the queue empty. A packed ring is taken until a descriptor is
    // not available.
    let seen = ring.prefetch_burst(BURST as u16);
    if seen.unwrap_or(1) > 0 {
        hint_receiver(f, scratch);
    }
    let limit = seen.map_or(BURST, usize::from);
    // Chains are taken a group at a time (`Virtqueue::pop_burst`) and then
    // admitted one by one; those taken and not admitted go back. The first
    // group of a turn with a budget is small, the next ones sized by the
    // frames seen, so a turn of a few large frames takes few more than it
    // sends.
    let mut taken = 0;
    let mut admitted = 0u64;
    let mut pop_err = None;
    while n < limit {
        if n == taken {
            if pop_err.is_some() {
                break;
            }
            let want = if budget == u64::MAX {
                limit - n
            } else if n == 0 {
                FIRST_GROUP.min(limit)
            } else {
                // The budget left over the mean frame length so far, plus
                // one to find where the turn ends.
                let avg = (admitted / n as u64).max(ETH_HLEN);
                ((budget / avg) as usize + 1).clamp(1, limit - n)
            };
            let (k, e) = ring.pop_burst(&mut scratch.tx.active[n..n + want], Access::DeviceReads, indirect);
            taken = n + k;
            pop_err = e;
            if k == 0 {
                drained = pop_err.is_none();
                break;
            }
        }
        let len = scratch.tx.active[n].len().saturating_sub(hdr_len);
        let shaped_until = qos.throttled_until_ns;
        if !admit(qos, pass, &mut budget, len, now_ns) {
            if pop_err.is_none() {
                ring.unpop(&scratch.tx.active[n..taken]);
            }
            if qos.throttled_until_ns != shaped_until {
                // Its max_tx_rate holds it (the other refusals end a turn).
                f.counters.hold_frames(HoldReason::RateLimited, 1);
            }
            break;
        }
        admitted += len;
        n += 1;
    }
    if let Some(e) = pop_err {
        // A malformed chain ended the last group: the queue is faulted once
        // the chains admitted before it (if any) are sent (any others stay
        // taken: the queue stops until the tenant resets it).
        if matches!(e, PopError::Chain(_)) {
            f.counters.drop_frames(DropReason::TxBadDescriptor, 1);
        }
        fault = Some(e.kind());
    }
    if n < BURST && seen == Some(n as u16) {
        // All it showed is taken: drained unless the driver added more
        // since (then the queue still contends and keeps its DRR credit).
        drained = !ring.any_pending().unwrap_or(true);
    }
    if let Pass::Shared { .. } = pass {
        // DRR: credit carries over while backlogged and is lost when the
        // queue runs dry.
        qos.deficit = if drained { 0 } else { budget };
    }
    if qos.throttled_until_ns > now_ns {
        // Held by its own max_tx_rate: receivers' arbiters do not wait for it.
        f.hold_tx(qos.throttled_until_ns);
    }
    if n == 0 && fault.is_none() {
        return 0;
    }
    watch.lap(Phase::Take);
    // A burst of one frame going where the port's last one went: steps 2
    // to 3 from the memo, without their bookkeeping for many (`lone`).
    if n == 1 && fault.is_none() && pass != Pass::Guaranteed {
        if let Some(len) = lone(f, &pol, hdr_len, fabric, scratch, now_ns, drained) {
            qos.blocked_since_ns = None;
            watch.lap(Phase::Deliver);
            let sent = Sent { chains: &scratch.tx.active[..1], packets: 1, bytes: len, fault: None };
            return complete_tx(f, qp, tx.index, &mut s, sent, acked, watch);
        }
    }
    // A burst of many frames, each what `lone` would take: delivered as
    // steps 2 to 3 would, without their per-frame records (`plain`).
    if n > 1 && fault.is_none() && pass != Pass::Guaranteed {
        if let Some(bytes) = plain(f, &pol, hdr_len, fabric, scratch, n, now_ns, drained, &mut watch) {
            qos.blocked_since_ns = None;
            watch.lap(Phase::Deliver);
            let sent = Sent { chains: &scratch.tx.active[..n], packets: n as u64, bytes, fault: None };
            return complete_tx(f, qp, tx.index, &mut s, sent, acked, watch);
        }
    }
    // 2. Classify: PF policy (state, spoof check, VLAN), then one read of
    // the forwarding table for the burst.
    let max_frame = f.mtu() as u64 + ETH_HLEN + VLAN_HLEN;
    // The virtio-net headers are read only if the driver may ask for an
    // offload in them.
    let read_hdr = features::sends_offloads(acked);
    let ingress = port_of(f);
    let now_ms = now_ns / 1_000_000;
    let (mut tx_packets, mut tx_bytes) = (0u64, 0u64);
    scratch.dest.clear();
    scratch.learn.clear();
    // Some frame of the burst asks for a checksum or segmentation offload.
    let mut any_offload = false;
    // The one (port, VLAN) every frame so far goes to, untagged and not
    // dropped (`None` once two differ or one is not such a frame): a burst
    // delivered without sorting (step 3).
    let mut single: Option<(u16, u16)> = None;
    let mut plain = true;
    {
        // The table is read under its lock only when this port's copy of
        // its decisions is out of date, or a frame needs one the copy does
        // not hold.
        let mut fdb = FdbRead { fabric, guard: None, generation: fabric.fdb_generation() };
        let slot = ingress.0 as usize;
        if scratch.fdb_memo.len() <= slot {
            scratch.fdb_memo.resize(slot + 1, FdbMemo::default());
        }
        let mut memo = scratch.fdb_memo[slot];
        if memo.generation != fdb.generation {
            let (table, _) = fdb.get();
            // A learned source is re-checked (and so refreshed) at least
            // every quarter of the ageing time, and every second.
            let src_window = (table.ageing_ms() / 4).min(1000);
            memo = FdbMemo { generation: table.generation(), src_window, ..FdbMemo::default() };
        }
        let mut last_src = if now_ms < memo.src.1.saturating_add(memo.src_window) { memo.src } else { (NO_KEY, 0) };
        let mut last_fwd = memo.fwd;
        // The source looked at last in this burst (or trusted from the memo).
        let mut seen_src = last_src.0;
        let own_mac = mac_key(pol.mac);
        for chain in &scratch.tx.active[..n] {
            let len = chain.len().saturating_sub(hdr_len);
            // The virtio-net header (12 bytes; a 10-byte one is padded) and
            // the Ethernet header's first 16 bytes, at fixed places.
            let flat = if hdr_len == 12 { Heads::flat(chain, read_hdr) } else { None };
            let h = match flat {
                Some(h) => h,
                None => Heads::gather(chain, hdr_len, read_hdr),
            };
            let (flags, gso_type) = (h.flags & features::HDR_F_NEEDS_CSUM, h.gso_type);
            let wants_offload = flags != 0 || gso_type != features::GSO_NONE;
            let vh = if wants_offload {
                VirtioNetHdr::parse(&net_hdr(chain, hdr_len)).expect("12 bytes")
            } else {
                VirtioNetHdr::default()
            };
            let offload = VirtioNetHdr { flags, num_buffers: 0, ..vh };
            any_offload |= wants_offload;
            let gso = gso_type & !features::GSO_ECN != features::GSO_NONE;
            // Each address with the two bytes after it (masked off in keys).
            let (dst, src, tagged) = (h.dst(), h.src(), h.tagged());
            let drop = if len < ETH_HLEN || (tagged && len < ETH_HLEN + VLAN_HLEN) {
                Some(DropReason::TxRunt)
            } else if len > if gso { MAX_GSO_FRAME } else { max_frame } {
                Some(DropReason::TxOversize)
            } else if wants_offload
                && (!features::may_send(acked, flags, gso_type) || offload.check(len as usize).is_err())
            {
                Some(DropReason::TxBadOffload)
            } else if !pol.enabled {
                Some(DropReason::TxLinkDown)
            } else if pol.spoofchk && src != own_mac {
                Some(DropReason::TxSpoofed)
            } else if tagged && (pol.vlan != 0 || !pol.trust) {
                // A port-VLAN VF is not a trunk, and only a trusted VF may
                // put its frames into a VLAN of its choosing.
                Some(DropReason::TxVlan)
            } else {
                None
            };
            if drop.is_some() {
                plain = false;
                scratch.dest.push(Meta { drop, ..NOWHERE });
                continue;
            }
            let domain = if pol.vlan != 0 {
                pol.vlan
            } else if tagged {
                h.vid()
            } else {
                0
            };
            // Frames of a burst mostly share their source: look it up once.
            let src_key = src | (domain as u64) << 48;
            if seen_src != src_key {
                seen_src = src_key;
                // Only a source the table knows is remembered as checked.
                last_src = (NO_KEY, 0);
                let (table, moved) = fdb.get();
                if moved {
                    last_fwd = (NO_KEY, (Dest::Nowhere, None));
                }
                if table.is_learned_vlan(domain, split_key(src_key).1, ingress, now_ms) {
                    last_src = (src_key, now_ms);
                } else if !scratch.learn.contains(&src_key) {
                    scratch.learn.push(src_key);
                }
            }
            // ... and their destination: one lookup per run of frames to it.
            let dst_key = dst | (domain as u64) << 48;
            if last_fwd.0 != dst_key {
                let (table, moved) = fdb.get();
                if moved {
                    last_src = (NO_KEY, 0);
                }
                let v = match table.forward_vlan(ingress, domain, split_key(dst_key).1) {
                    Forward::Unicast(p) => (Dest::Port(p.0), None),
                    Forward::Flood => (Dest::Flood, None),
                    Forward::Hairpin => (Dest::Nowhere, Some(DropReason::TxHairpin)),
                };
                last_fwd = (dst_key, v);
            }
            let (dest, drop) = last_fwd.1;
            plain &= match (dest, drop, tagged) {
                (Dest::Port(p), None, false) => *single.get_or_insert((p, domain)) == (p, domain),
                _ => false,
            };
            scratch.dest.push(Meta { dest, len, domain, tagged, drop, offload });
        }
        scratch.fdb_memo[slot] =
            FdbMemo { generation: fdb.generation, src_window: memo.src_window, src: last_src, fwd: last_fwd };
    }
    watch.lap(Phase::Classify);
    if !scratch.learn.is_empty() {
        let mut fdb = fabric.fdb();
        for &key in &scratch.learn {
            let (vlan, src) = split_key(key);
            fdb.learn_vlan(vlan, src, ingress, now_ms);
        }
    }

    // 2b. Backpressure and egress arbitration: a unicast receiver with no
    // RX buffer, or whose link (`speed`) is full, is congested; its senders
    // then share it in fair order by weight (vfnic_qos::Share; frames under
    // a min_tx_rate guarantee pass first). Frames not admitted wait in the
    // sender's ring, in order; a receiver that takes nothing for
    // BACKPRESSURE_NS gets its frames dropped instead, as on a NIC (a full
    // link is never a reason to drop: it drains at its speed).
    let mut cut = n;
    let mut blocked = false;
    let mut hold = HoldReason::FairShare;
    // (receiver, RX buffers it has posted, its link speed), per receiver
    // of the burst; an uplink has no buffers to count, only its line rate.
    let mut rooms: [(u16, u16, u32); 8] = [(u16::MAX, 0, 0); 8];
    let ports = scratch.port_table.take(fabric);
    let uplinks = std::cell::OnceCell::new();
    let held = |vf: u16| ports.get(vf as usize).and_then(Option::as_ref).is_some_and(|p| p.tx_held(now_ns));
    // The run of frames to one receiver being admitted: its port, its
    // place in `rooms`, its arbiter (locked once per run; one receiver lock
    // at a time, as engines lock receivers in no set order) and whether
    // that arbiter is open for the whole run: no link speed and no
    // congestion, so nothing but the buffer count changes frame by frame.
    struct Run<'g> {
        p: u16,
        slot: Option<usize>,
        share: parking_lot::MutexGuard<'g, vfnic_qos::Share>,
        open: bool,
    }
    let mut run: Option<Run<'_>> = None;
    // The common burst: every frame to one VF, as it is (`single`), the
    // VF up, with one queue pair. Its RX ring is locked once, for the
    // count here and the delivery in step 3, and while its arbiter is open
    // (no link speed, no congestion) only its buffers count, for the whole
    // burst at once.
    let to_one = single
        .filter(|&(p, _)| plain && !any_offload && !crate::uplink::is_uplink_port(vfnic_switch::PortId(p)))
        .and_then(|(p, vlan)| {
            let d = ports.get(p as usize).and_then(Option::as_ref)?;
            if d.queue_pairs() > 1 || vfnic_op::any_promiscuous() {
                return None;
            }
            let pd = scratch.policies.get(d);
            (pd.vlan == vlan).then_some((d, pd))
        });
    let mut rx_held = None;
    if let Some((d, pd)) = to_one.filter(|(d, _)| pass != Pass::Guaranteed && d.connected() && d.link_up()) {
        let mut rs = d.rx(0).lock();
        if rs.ready() {
            // Its buffers are counted by taking them: the delivery uses the
            // chains taken here (or they go back).
            let room = scratch.rx.take_ahead(&mut rs, n);
            let mut share = d.share();
            share.set_speed(pd.speed, now_ns);
            if !share.has_link() && !share.congested(now_ns) {
                if room < n {
                    share.mark_congested(now_ns);
                    cut = room;
                    blocked = true;
                    hold = HoldReason::NoBuffer;
                } else if drained {
                    share.idle(f.id.0);
                }
                drop(share);
                rx_held = Some((d, rs));
            } else {
                drop(share);
                scratch.rx.give_back(d, d.rx(0).index, &mut rs);
            }
        }
    }
    // Frame by frame, unless the common burst was settled just above.
    let per_frame: &[Meta] = if rx_held.is_none() { &scratch.dest } else { &[] };
    for (i, m) in per_frame.iter().enumerate() {
        let Dest::Port(p) = m.dest else { continue };
        if m.drop.is_some() {
            continue;
        }
        if run.as_ref().is_none_or(|r| r.p != p) {
            let dst = if crate::uplink::is_uplink_port(vfnic_switch::PortId(p)) {
                let ups = uplinks.get_or_init(|| fabric.uplinks());
                match ups.iter().find(|u| u.id.0 == p) {
                    Some(u) => Receiver::Uplink(u),
                    None => continue,
                }
            } else {
                match ports.get(p as usize).and_then(Option::as_ref) {
                    Some(d) => Receiver::Vf(d),
                    None => continue,
                }
            };
            // The last receiver's arbiter is let go before this one's RX
            // ring is locked (rx_room): delivery locks an RX ring, then its
            // arbiter (mark_congested), so holding an arbiter while taking
            // an RX ring could close a cycle between engines.
            drop(run.take());
            let mut slot = rooms.iter().position(|r| r.0 == p);
            if slot.is_none() {
                slot = rooms.iter().position(|r| r.0 == u16::MAX);
                if let Some(k) = slot {
                    rooms[k] = match dst {
                        Receiver::Vf(d) => (p, rx_room(d, n as u16), scratch.policies.get(d).speed),
                        Receiver::Uplink(u) => (p, u16::MAX, u.speed),
                    };
                }
            }
            let mut share = dst.share();
            share.set_speed(slot.map_or(0, |k| rooms[k].2), now_ns);
            let open = pass != Pass::Guaranteed && !share.has_link() && !share.congested(now_ns);
            run = Some(Run { p, slot, share, open });
        }
        let r = run.as_mut().expect("set just above");
        if r.slot.is_some_and(|k| rooms[k].1 == 0) {
            // No buffer posted for this frame: it waits, and the receiver's
            // senders now share it by weight; a guarantee holds the next
            // buffers for itself.
            r.share.mark_congested(now_ns);
            if pass == Pass::Guaranteed {
                r.share.reserve(now_ns);
            }
            cut = i;
            blocked = true;
            hold = HoldReason::NoBuffer;
            break;
        }
        if !r.open {
            let share = &mut r.share;
            if let Some(ready_ns) = share.link_wait(m.len, now_ns) {
                // The link is full: the same contention as a receiver out
                // of buffers, and this queue rests until the link has room.
                share.mark_congested(now_ns);
                if pass == Pass::Guaranteed {
                    share.reserve(now_ns);
                }
                qos.throttled_until_ns = ready_ns;
                cut = i;
                hold = HoldReason::LinkFull;
                break;
            }
            if pass == Pass::Guaranteed {
                share.release();
            } else if share.congested(now_ns)
                && (share.reserved(now_ns) || !share.admit(f.id.0, pol.weight, m.len, DRR_QUANTUM, now_ns, held))
            {
                cut = i;
                break;
            }
            share.take_link(m.len);
        }
        if let Some(k) = r.slot {
            rooms[k].1 -= 1;
        }
    }
    if drained && cut == n {
        // The queue ran dry with all of it admitted: it no longer contends.
        // The receiver still locked first (mostly the only one), then the
        // others, one at a time.
        // (A run with a slot is in `rooms`; one without is not counted.)
        let mut last = None;
        if let Some(r) = run.as_mut().filter(|r| r.slot.is_some()) {
            r.share.idle(f.id.0);
            last = Some(r.p);
        }
        drop(run);
        for &(p, _, _) in rooms.iter().take_while(|r| r.0 != u16::MAX).filter(|r| Some(r.0) != last) {
            if let Some(d) = ports.get(p as usize).and_then(Option::as_ref) {
                d.share().idle(f.id.0);
            } else if let Some(u) = uplinks.get().and_then(|ups| ups.iter().find(|u| u.id.0 == p)) {
                u.share().idle(f.id.0);
            }
        }
    } else {
        drop(run);
    }
    // Step 3b takes the uplink table again (egress_to): not while it is held.
    drop(uplinks);
    if cut < n {
        let since = if blocked { *qos.blocked_since_ns.get_or_insert(now_ns) } else { now_ns };
        if now_ns.saturating_sub(since) < BACKPRESSURE_NS {
            // The frames going back to the ring give back what admission
            // took for them (shaper tokens, guarantee tokens, DRR credit).
            let back: u64 = scratch.tx.active[cut..n].iter().map(|c| c.len().saturating_sub(hdr_len)).sum();
            if let Some((_, max)) = qos.max.as_mut() {
                max.refund(back);
            }
            match pass {
                Pass::Guaranteed => {
                    if let Some((_, min)) = qos.min.as_mut() {
                        min.refund(back);
                    }
                }
                Pass::Shared { .. } => qos.deficit = qos.deficit.saturating_add(back),
                Pass::Unlimited => {}
            }
            ring.unpop(&scratch.tx.active[cut..n]);
            f.counters.hold_frames(hold, (n - cut) as u64);
            qos.contending_until_ns = now_ns + CONTENDING_NS;
            n = cut;
            scratch.dest.truncate(n);
        } else {
            qos.blocked_since_ns = None;
        }
    } else {
        qos.blocked_since_ns = None;
    }
    watch.lap(Phase::Arbitrate);
    for m in &scratch.dest[..n] {
        match m.drop {
            Some(r) => f.counters.drop_frames(r, 1),
            None => {
                tx_packets += 1;
                tx_bytes += m.len;
            }
        }
    }

    // 3. Deliver: the common burst (`to_one`) as it is, with no sorting by
    // receiver and no mirrors to look for; any other per destination
    // (`deliver_sorted`). Nothing is delivered from memory the tenant
    // revoked under us. (`ports` is still the table step 2b read.)
    if ring.mem().revoked() {
        scratch.dest.iter_mut().for_each(|m| m.dest = Dest::Nowhere);
        plain = false;
    }
    let to_one = to_one.filter(|_| plain);
    if to_one.is_none() {
        if let Some((d, mut rs)) = rx_held.take() {
            scratch.rx.give_back(d, d.rx(0).index, &mut rs);
        }
    }
    let (any_flood, any_uplink) = match to_one {
        Some((d, _)) => {
            let mut frames = scratch.tx.active[..n]
                .iter()
                .zip(&scratch.dest)
                .map(|(chain, m)| Frame::from_chain(chain, hdr_len, m.len).with_offload(m.offload));
            match rx_held.take() {
                Some((_, mut rs)) => match frames.next() {
                    Some(first) => {
                        let rest = Counted { frames, left: n - 1 };
                        deliver_locked(d, d.rx(0).index, &mut rs, first, rest, &mut scratch.rx);
                    }
                    None => scratch.rx.give_back(d, d.rx(0).index, &mut rs),
                },
                None => {
                    deliver_group_to(d, 0, Counted { frames, left: n }, &mut scratch.rx);
                }
            }
            (false, false)
        }
        None => deliver_sorted(f, &ports, scratch, hdr_len, n, any_offload),
    };
    drop(rx_held);
    scratch.port_table.put(ports);
    watch.lap(Phase::Deliver);

    // 3b. The physical port: frames for addresses behind an uplink, and
    // floods, leave through the uplinks (gathered into one buffer: the wire
    // needs them contiguous).
    if any_uplink || (any_flood && fabric.has_uplinks()) {
        for (chain, m) in scratch.tx.active[..n].iter().zip(&scratch.dest) {
            let to = match m.dest {
                Dest::Flood => None,
                Dest::Port(p) if crate::uplink::is_uplink_port(vfnic_switch::PortId(p)) => {
                    Some(vfnic_switch::PortId(p))
                }
                _ => continue,
            };
            scratch.wire.resize(m.len as usize, 0);
            let mut cur = Cursor::new(chain);
            cur.skip(hdr_len);
            cur.gather(&mut scratch.wire);
            crate::uplink::egress_to(fabric, to, pol.vlan, &scratch.wire, m.offload.any().then_some(&m.offload));
        }
    }

    let sent = Sent { chains: &scratch.tx.active[..n], packets: tx_packets, bytes: tx_bytes, fault };
    complete_tx(f, qp, tx.index, &mut s, sent, acked, watch)
}

/// What a burst hands to [`complete_tx`].
struct Sent<'a> {
    /// The TX chains taken, in order.
    chains: &'a [Chain],
    /// Frames sent (not dropped) and their bytes.
    packets: u64,
    bytes: u64,
    /// The tenant broke the queue: it is faulted once the chains are back.
    fault: Option<ErrorKind>,
}

/// Step 4 of [`process_tx`]: completes the TX chains (length 0: the device
/// writes nothing into TX buffers), in order: one publish, at most one
/// interrupt (and, with IN_ORDER on a packed ring, one used descriptor).
/// Returns what the burst returns.
fn complete_tx(
    f: &Function,
    qp: u16,
    index: u16,
    s: &mut VringState,
    sent: Sent<'_>,
    acked: u64,
    mut watch: Stopwatch,
) -> usize {
    let qc = f.queue_counters(qp);
    qc.tx_packets.add_exclusive(sent.packets);
    qc.tx_bytes.add_exclusive(sent.bytes);
    let ring = s.ring.as_mut().expect("ready() checked the ring");
    ring.complete_unwritten(sent.chains, features::in_order(acked));
    ring.publish_used();
    let mut fault = sent.fault;
    if ring.mem().revoked() {
        fault = Some(ErrorKind::MemoryRevoked);
    }
    if s.interrupt() {
        f.counters.interrupts.inc();
    }
    if let Some(kind) = fault {
        fault_queue(f, s, kind, index);
    }
    watch.lap(Phase::Complete);
    let n = sent.chains.len();
    crate::phases::burst(n as u64);
    n.max(1)
}

/// Steps 2 to 3 of [`process_tx`] for its commonest burst: one frame,
/// plain (no offload asked for, untagged, not dropped), from the source
/// and to the destination its port's last burst had (its [`FdbMemo`]),
/// for a VF with one queue pair that is up, has a buffer posted and whose
/// arbiter is open (no link speed, not congested). The decisions are the
/// general steps' own, read from the memo; what is left out is their
/// bookkeeping for many frames and many receivers (the burst's list of
/// destinations, the arbitration's runs, the delivery's iterators): with
/// one frame per burst, the latency test's load, that was about half of a
/// burst's instructions.
///
/// Returns the frame's length once it is delivered; `None`, with nothing
/// changed, when the general steps must take it.
fn lone(
    f: &Function,
    pol: &Policy,
    hdr_len: u64,
    fabric: &Fabric,
    scratch: &mut Scratch,
    now_ns: u64,
    drained: bool,
) -> Option<u64> {
    if hdr_len != 12 {
        return None;
    }
    let route = memo_route(f, pol, scratch, fabric, now_ns)?;
    let chain = &scratch.tx.active[0];
    let h = Heads::flat(chain, features::sends_offloads(f.acked_features()))?;
    let len = chain.len() - hdr_len;
    if !route.takes(&h, len, f.mtu() as u64 + ETH_HLEN + VLAN_HLEN) {
        return None;
    }
    let Scratch { tx, policies, rx, port_table, .. } = scratch;
    let d = port_table.get(fabric).get(route.to as usize)?.as_ref()?;
    lone_to(f, d, policies.get(d), pol.vlan, Frame::from_chain(&tx.active[0], hdr_len, len), rx, now_ns, drained)?;
    Some(len)
}

/// Steps 2 to 3 of [`process_tx`] for its commonest burst of many frames:
/// each one what [`lone`] takes (plain, from the source and to the
/// destination its port's last burst had), to a VF with one queue pair
/// that is up, has a buffer posted for every frame and whose arbiter is
/// open. The decisions are the general steps' own for such a burst; left
/// out are the records they keep per frame (destination, length, offload:
/// written by the classification, read back by the arbitration, the
/// counters and the delivery) and the burst's sorting by receiver.
///
/// Returns the bytes delivered; `None`, with nothing changed, when the
/// general steps must take the burst (a frame that is not plain, or goes
/// elsewhere, is found in one pass over the frames' headers).
#[allow(clippy::too_many_arguments)]
fn plain(
    f: &Function,
    pol: &Policy,
    hdr_len: u64,
    fabric: &Fabric,
    scratch: &mut Scratch,
    n: usize,
    now_ns: u64,
    drained: bool,
    watch: &mut Stopwatch,
) -> Option<u64> {
    if hdr_len != 12 {
        return None;
    }
    let route = memo_route(f, pol, scratch, fabric, now_ns)?;
    let max_frame = f.mtu() as u64 + ETH_HLEN + VLAN_HLEN;
    let read_hdr = features::sends_offloads(f.acked_features());
    let mut bytes = 0;
    for chain in &scratch.tx.active[..n] {
        // Both headers in the first buffer: a frame of at least 16 bytes.
        let h = Heads::flat(chain, read_hdr)?;
        let len = chain.len() - hdr_len;
        if !route.takes(&h, len, max_frame) {
            return None;
        }
        bytes += len;
    }
    watch.lap(Phase::Classify);
    if scratch.tx.active[0].revoked() {
        return None;
    }
    let Scratch { tx, policies, rx, port_table, .. } = scratch;
    let d = port_table.get(fabric).get(route.to as usize)?.as_ref()?;
    let pd = policies.get(d);
    if !takes_plain(d, &pd, pol.vlan) {
        return None;
    }
    let ring = d.rx(0);
    let mut rs = ring.lock();
    if !rs.ready() {
        return None;
    }
    // Its buffers are counted by taking them; the arbiter is asked once
    // they are all there (as step 2b does for the common burst).
    let room = rx.take_ahead(&mut rs, n);
    if room < n || !open_to(f, d, &pd, now_ns, drained) {
        rx.give_back(d, ring.index, &mut rs);
        return None;
    }
    watch.lap(Phase::Arbitrate);
    deliver_plain(d, ring.index, &mut rs, &tx.active[..n], hdr_len, rx);
    Some(bytes)
}

/// The decision the port's [`FdbMemo`] holds for the plain frames of
/// [`lone`] and [`plain`]: their source and destination keys (in the
/// port's VLAN) and the VF they go to.
struct Route {
    src: VlanMac,
    dst: VlanMac,
    domain: u64,
    to: u16,
}

impl Route {
    /// Whether a frame of `len` bytes with headers `h` is one the route
    /// settles: no offload asked for, untagged, at most `max_frame` bytes,
    /// from the route's source to its destination.
    #[inline(always)]
    fn takes(&self, h: &Heads, len: u64, max_frame: u64) -> bool {
        h.flags & features::HDR_F_NEEDS_CSUM == 0
            && h.gso_type == features::GSO_NONE
            && !h.tagged()
            && len <= max_frame
            && h.src() | self.domain == self.src
            && h.dst() | self.domain == self.dst
    }
}

/// The [`Route`] of `f`'s port while its memo stands (the table's
/// generation unchanged, the source checked within its window), for a
/// port that is up, to a VF (not an uplink, no promiscuous VF anywhere),
/// from a source the spoof check passes; `None` otherwise.
#[inline(always)]
fn memo_route(f: &Function, pol: &Policy, scratch: &Scratch, fabric: &Fabric, now_ns: u64) -> Option<Route> {
    if !pol.enabled {
        return None;
    }
    let memo = scratch.fdb_memo.get(port_of(f).0 as usize)?;
    let trusted = now_ns / 1_000_000 < memo.src.1.saturating_add(memo.src_window);
    if memo.generation != fabric.fdb_generation() || !trusted {
        return None;
    }
    let (Dest::Port(p), None) = memo.fwd.1 else { return None };
    if crate::uplink::is_uplink_port(vfnic_switch::PortId(p)) || vfnic_op::any_promiscuous() {
        return None;
    }
    // Untagged: the frames are in the port's VLAN (0: none).
    let domain = (pol.vlan as u64) << 48;
    if pol.spoofchk && memo.src.0 != mac_key(pol.mac) | domain {
        return None;
    }
    Some(Route { src: memo.src.0, dst: memo.fwd.0, domain, to: p })
}

/// Whether VF `d` (its policy `pd`) takes [`lone`]'s and [`plain`]'s
/// frames from a port in `vlan`: one queue pair, the same VLAN, up.
#[inline(always)]
fn takes_plain(d: &Function, pd: &Policy, vlan: u16) -> bool {
    d.queue_pairs() <= 1 && pd.vlan == vlan && d.connected() && d.link_up()
}

/// Whether `d`'s arbiter lets [`lone`]'s or [`plain`]'s frames from `f`
/// through at once: open (no link speed, `pd`'s, and not congested). When
/// it is and `f`'s queue ran dry (`drained`), `f` no longer contends.
#[inline(always)]
fn open_to(f: &Function, d: &Function, pd: &Policy, now_ns: u64, drained: bool) -> bool {
    let mut share = d.share();
    share.set_speed(pd.speed, now_ns);
    let open = !share.has_link() && !share.congested(now_ns);
    if open && drained {
        share.idle(f.id.0);
    }
    open
}

/// [`lone`]'s delivery of `frame` to `d` (its policy `pd`), as step 2b
/// admits the common burst and step 3 delivers it.
#[allow(clippy::too_many_arguments)]
fn lone_to(
    f: &Function,
    d: &Arc<Function>,
    pd: Policy,
    vlan: u16,
    frame: Frame<'_>,
    rx: &mut RxScratch,
    now_ns: u64,
    drained: bool,
) -> Option<()> {
    if !takes_plain(d, &pd, vlan) || frame.revoked() {
        return None;
    }
    let ring = d.rx(0);
    let mut rs = ring.lock();
    if !rs.ready() {
        return None;
    }
    // The arbiter, asked once a buffer is known to be there.
    let open = || open_to(f, d, &pd, now_ns, drained);
    match deliver_one(d, ring.index, &mut rs, &frame, rx, open) {
        Filled::Frame | Filled::Empty => return Some(()),
        Filled::Refused => return None,
        Filled::NotOne => {}
    }
    // A receiver that posts chains of several buffers, or has none: its
    // chains taken as the general delivery takes them.
    if rx.take_ahead(&mut rs, 1) == 0 || !open() {
        rx.give_back(d, ring.index, &mut rs);
        return None;
    }
    deliver_locked(d, ring.index, &mut rs, frame, std::iter::empty(), rx);
    Some(())
}
