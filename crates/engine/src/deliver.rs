//! Writing one frame into a receiver's RX queue: the copy's destination
//! side.

use std::sync::Arc;
use vfnic_dma::chain::Access;
use vfnic_dma::copy::{copy, copy_flat, copy_flat_fetching, Ahead, Cursor};
use vfnic_dma::{Chain, Filled, PopError, Virtqueue};

use crate::chains::ChainSets;
use crate::phases::{Phase, Stopwatch};
use vfnic_dma::tsc;
use vfnic_offload::VirtioNetHdr;
use vfnic_op::{features, Function, VringState};
use vfnic_types::{DropReason, ErrorKind};

/// Most RX buffers one frame may be merged over (`MRG_RXBUF`).
/// 64 buffers of the smallest size drivers post for mergeable RX (Linux
/// and DPDK: >= 1536 bytes) hold a 64 KiB GSO segment.
pub const MAX_MERGE: usize = 64;

/// Most RX chains a group takes before its first frame is written (one
/// per frame; frames merged over several buffers take the rest as they
/// go).
const AHEAD: usize = 64;

/// How many frames ahead of its copy [`deliver_plain`] fetches a large
/// frame's RX buffer into L2. Four: 1518-byte frames through the switch,
/// 9% more frames per second than with none, on split and on packed
/// rings (`scripts/ab-switch.sh`); three or six, about 0.5% fewer than four.
const RX_STAGE: usize = 4;

/// RX chains (reused, so delivering allocates nothing) and the held
/// interrupts.
pub struct RxScratch {
    /// `..at`: chains handed to frames (completed); `at..n`: taken from the
    /// ring ahead of the frames and not yet used. Room for a group's
    /// chains taken ahead and then a frame merged over [`MAX_MERGE`] more.
    chains: ChainSets,
    at: usize,
    n: usize,
    /// A malformed chain ended the chains taken ahead: the error the frame
    /// that needs a chain past them gets.
    err: Option<PopError>,
    /// The chains `..n` were taken by [`RxScratch::take_ahead`] for the
    /// next delivery, which uses them instead of taking its own.
    pretaken: bool,
    armed: Vec<Armed>,
}

impl Default for RxScratch {
    fn default() -> Self {
        RxScratch {
            chains: ChainSets::new(AHEAD + MAX_MERGE),
            at: 0,
            n: 0,
            err: None,
            pretaken: false,
            armed: Vec::new(),
        }
    }
}

impl RxScratch {
    /// Lets go of every tenant memory table the chains still refer to.
    pub fn release(&mut self) {
        self.chains.release();
        self.fire_due(true);
    }

    /// Takes up to `want` (at most `AHEAD`, 64) RX chains from the ready
    /// ring `s` for the next [`deliver_locked`] into it, which must follow
    /// under the same lock, or [`RxScratch::give_back`]. Returns how many
    /// frames the ring has room for: the chains taken, or `want` when a
    /// malformed chain ended them (the delivery then faults the queue at
    /// that frame, as it does when it takes the chains itself).
    ///
    /// The engine counts a receiver's buffers for its arbitration this
    /// way: the count and the chains are one walk of the ring (a count,
    /// then the delivery's own take, walked the descriptors twice).
    pub fn take_ahead(&mut self, s: &mut VringState, want: usize) -> usize {
        let indirect = s.indirect;
        let ring = s.ring.as_mut().expect("the caller checked ready()");
        let want = want.min(AHEAD);
        self.take(ring, want, indirect);
        self.pretaken = true;
        if self.err.is_some() {
            want
        } else {
            self.n
        }
    }

    /// Gives back to RX vring `index` of `dest`, locked in `s`, the chains
    /// [`RxScratch::take_ahead`] took when no delivery follows (a malformed
    /// chain among them faults the queue, as the delivery would have).
    pub fn give_back(&mut self, dest: &Function, index: u16, s: &mut VringState) {
        if !std::mem::take(&mut self.pretaken) {
            return;
        }
        let Some(ring) = s.ring.as_mut() else { return };
        let fault = self.settle(ring);
        ring.publish_used();
        if let Some(kind) = fault {
            fault_queue(dest, s, kind, index);
        }
    }

    /// Takes up to `ahead` chains from `ring` into `..n`.
    #[inline]
    fn take(&mut self, ring: &mut Virtqueue, ahead: usize, indirect: bool) {
        self.chains.select(ring.mem());
        ring.prefetch_burst(ahead as u16);
        let (k, e) = ring.pop_burst(&mut self.chains.active[..ahead], Access::DeviceWrites, indirect);
        (self.at, self.n, self.err) = (0, k, e);
    }

    /// After a delivery (or none): the chains taken ahead and not used go
    /// back to the ring, unless a malformed one came after them: then they
    /// are returned unwritten, and the error is returned (the queue is to
    /// be faulted).
    #[inline]
    fn settle(&mut self, ring: &mut Virtqueue) -> Option<ErrorKind> {
        let (at, n) = (self.at, self.n);
        (self.at, self.n) = (0, 0);
        if let Some(e) = self.err.take() {
            self.chains.active[at..n].iter().for_each(|c| ring.complete(c, 0));
            return Some(e.kind());
        }
        if n > at {
            ring.unpop(&self.chains.active[at..n]);
        }
        None
    }
}

/// Where a frame's bytes come from.
#[derive(Clone, Copy)]
pub enum Source<'a> {
    /// A sender's walked TX chain; the Ethernet frame starts `offset` bytes
    /// in (after the sender's virtio-net header). Copied straight from the
    /// sender's buffers.
    Chain {
        /// The chain.
        chain: &'a Chain,
        /// Bytes of virtio-net header before the frame.
        offset: u64,
    },
    /// A buffer of the daemon's own (a frame from an uplink, a GRO or GSO
    /// product).
    Bytes(&'a [u8]),
}

/// An 802.1Q tag edit applied while copying (port VLAN strip on delivery to
/// a VLAN's VF, insert toward a trunk or an uplink).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagEdit {
    /// Copy as is.
    Keep,
    /// Drop the 4 tag bytes after the MAC addresses.
    Strip,
    /// Insert these 4 tag bytes (TPID + TCI) after the MAC addresses.
    Insert([u8; 4]),
}

/// A frame to deliver.
#[derive(Clone, Copy)]
pub struct Frame<'a> {
    /// Its bytes.
    pub src: Source<'a>,
    /// Ethernet frame length in the source.
    pub len: u64,
    /// Tag edit on the way.
    pub tag: TagEdit,
    /// The virtio-net header handed to the receiver (checksum to complete,
    /// GSO type and size; the receiver accepted them). Its `num_buffers` is
    /// set when the frame is written.
    pub offload: VirtioNetHdr,
}

impl<'a> Frame<'a> {
    /// A frame from a sender's TX chain, copied as is.
    pub fn from_chain(chain: &'a Chain, offset: u64, len: u64) -> Frame<'a> {
        Frame { src: Source::Chain { chain, offset }, len, tag: TagEdit::Keep, offload: VirtioNetHdr::default() }
    }

    /// A frame from the daemon's own buffer, copied as is.
    pub fn from_bytes(bytes: &'a [u8]) -> Frame<'a> {
        Frame {
            src: Source::Bytes(bytes),
            len: bytes.len() as u64,
            tag: TagEdit::Keep,
            offload: VirtioNetHdr::default(),
        }
    }

    /// The same frame with a tag edit (offload offsets follow the move).
    pub fn with_tag(self, tag: TagEdit) -> Frame<'a> {
        let offload = match tag {
            TagEdit::Keep => self.offload,
            TagEdit::Strip => self.offload.shifted(-4),
            TagEdit::Insert(_) => self.offload.shifted(4),
        };
        Frame { tag, offload, ..self }
    }

    /// The same frame handing `offload` to the receiver (set before any
    /// tag edit).
    pub fn with_offload(self, offload: VirtioNetHdr) -> Frame<'a> {
        Frame { offload, ..self }
    }

    /// Length as delivered (after the tag edit).
    pub fn out_len(&self) -> u64 {
        match self.tag {
            TagEdit::Keep => self.len,
            TagEdit::Strip => self.len.saturating_sub(4),
            TagEdit::Insert(_) => self.len + 4,
        }
    }

    pub(crate) fn revoked(&self) -> bool {
        match self.src {
            Source::Chain { chain, .. } => chain.revoked(),
            Source::Bytes(_) => false,
        }
    }

    fn reader(&self) -> Reader<'a> {
        let src = match self.src {
            Source::Chain { chain, offset } => {
                let mut c = Cursor::new(chain);
                c.skip(offset);
                SrcCursor::Chain(c)
            }
            Source::Bytes(b) => SrcCursor::Bytes(b, 0),
        };
        let (insert, strip) = match self.tag {
            TagEdit::Keep => (None, false),
            TagEdit::Strip => (None, true),
            TagEdit::Insert(t) => (Some((t, 0)), false),
        };
        Reader { src, left: self.len, head: 12, insert, strip }
    }
}

enum SrcCursor<'a> {
    Chain(Cursor<'a>),
    Bytes(&'a [u8], usize),
}

/// Produces a frame's delivered bytes: its first 12 (the MAC addresses),
/// then the tag edit, then the rest.
struct Reader<'a> {
    src: SrcCursor<'a>,
    /// Source bytes not yet consumed.
    left: u64,
    /// Source bytes still to copy before the edit point.
    head: u64,
    insert: Option<([u8; 4], usize)>,
    strip: bool,
}

impl Reader<'_> {
    fn copy_src(&mut self, dst: &mut Cursor<'_>, n: u64) -> u64 {
        let n = n.min(self.left);
        let done = match &mut self.src {
            SrcCursor::Chain(c) => copy(c, dst, n),
            SrcCursor::Bytes(b, off) => {
                let k = dst.scatter(&b[*off..*off + n as usize]);
                *off += k;
                k as u64
            }
        };
        self.left -= done;
        done
    }

    /// Writes up to `budget` delivered bytes into `dst`; returns how many.
    fn pump(&mut self, dst: &mut Cursor<'_>, budget: u64) -> u64 {
        let mut total = 0;
        while total < budget {
            let room = budget - total;
            let n = if self.head > 0 {
                let n = self.copy_src(dst, self.head.min(room));
                self.head -= n;
                n
            } else if let Some((tag, off)) = &mut self.insert {
                let k = dst.scatter(&tag[*off..(*off + room as usize).min(4)]);
                *off += k;
                if *off == 4 {
                    self.insert = None;
                }
                k as u64
            } else if self.strip {
                self.strip = false;
                let skip = self.left.min(4);
                match &mut self.src {
                    SrcCursor::Chain(c) => {
                        c.skip(skip);
                    }
                    SrcCursor::Bytes(_, off) => *off += skip as usize,
                }
                self.left -= skip;
                continue;
            } else {
                self.copy_src(dst, room)
            };
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    }
}

/// Faults a queue: the tenant broke its ring. It stays stopped until the
/// tenant reprograms or resets it.
pub fn fault_queue(f: &Function, s: &mut VringState, kind: ErrorKind, queue: u16) {
    f.counters.error(kind);
    f.counters.error(ErrorKind::QueueFaulted);
    s.fault();
    f.set_needs_reset();
    tracing::warn!(vf = f.id.0, queue, error = kind.as_str(), "queue faulted by a tenant error");
}

/// Copies `frames`, in order, into `dest`'s RX queue 0: one lock, one
/// publish and at most one interrupt for the whole group. Returns how many
/// were delivered; each one not delivered is counted on `dest` by reason.
pub fn deliver_group<'f>(
    dest: &Arc<Function>,
    frames: impl Iterator<Item = Frame<'f>>,
    scratch: &mut RxScratch,
) -> u64 {
    deliver_group_to(dest, 0, frames, scratch)
}

/// [`deliver_group`] into RX queue pair `qp` of `dest` (RSS picks it).
pub fn deliver_group_to<'f>(
    dest: &Arc<Function>,
    qp: u16,
    mut frames: impl Iterator<Item = Frame<'f>>,
    scratch: &mut RxScratch,
) -> u64 {
    let Some(first) = frames.next() else { return 0 };
    if !dest.link_up() {
        dest.counters.drop_frames(DropReason::RxLinkDown, 1 + frames.count() as u64);
        return 0;
    }
    let rx = dest.rx(qp.min(dest.queue_pairs() - 1));
    let mut s = rx.lock();
    if !s.ready() {
        dest.counters.drop_frames(DropReason::RxNotReady, 1 + frames.count() as u64);
        return 0;
    }
    deliver_locked(dest, rx.index, &mut s, first, frames, scratch)
}

/// [`deliver_group_to`] into RX vring `index` of `dest`, whose state `s`
/// the caller has locked and found ready (the engine locks a receiver's
/// RX ring once to count its buffers and deliver): `first`, then `frames`.
pub fn deliver_locked<'f>(
    dest: &Arc<Function>,
    index: u16,
    s: &mut VringState,
    first: Frame<'f>,
    frames: impl Iterator<Item = Frame<'f>>,
    scratch: &mut RxScratch,
) -> u64 {
    let (hdr_len, mergeable, indirect) = rx_format(dest, s);
    let ring = s.ring.as_mut().expect("ready() checked the ring");
    // Look ahead: the RX descriptors and used lines of the whole group,
    // then one chain per frame, taken together (their buffers fetched for
    // writing as they are taken); a frame merged over several buffers, or
    // one past the count, takes the rest as it goes. (Taken already if the
    // engine counted the ring's buffers with `take_ahead`.)
    let mut watch = Stopwatch::start();
    if !std::mem::take(&mut scratch.pretaken) {
        let ahead = frames.size_hint().1.map_or(1, |rest| rest + 1).clamp(1, AHEAD);
        scratch.take(ring, ahead, indirect);
    }
    watch.lap(Phase::RxTake);
    let (packets, bytes, fault) = fill_each(dest, ring, (hdr_len, mergeable, indirect), first, frames, scratch);
    watch.lap(Phase::RxFill);
    finish(dest, index, s, (packets, bytes), fault, scratch)
}

/// [`deliver_locked`] for the burst of `forward::plain`: the frames of
/// `tx`'s chains, each after `offset` bytes of virtio-net header, with no
/// tag edit and no offload handed over, into RX chains taken ahead for
/// every one ([`RxScratch::take_ahead`]). The frames that each fit the
/// first buffer of the next chain, up to the first that does not, are
/// copied in one loop (two straight copies each, as `fill`'s) and
/// completed as one run ([`Virtqueue::complete_run`]); the rest go as
/// [`deliver_locked`]'s do. The same writes and counts as
/// [`deliver_locked`] with these frames, less the per-frame records
/// (`Frame`, the fill's choice, the completion's ring dispatch and
/// counters): a burst of 64-byte frames through the switch, 397 -> 303
/// instructions per frame on packed rings, 374 -> 302 on split rings
/// (307 and 304 with `copy_flat_fetching`).
pub fn deliver_plain(
    dest: &Arc<Function>,
    index: u16,
    s: &mut VringState,
    tx: &[Chain],
    offset: u64,
    scratch: &mut RxScratch,
) -> u64 {
    let (hdr_len, mergeable, indirect) = rx_format(dest, s);
    let ring = s.ring.as_mut().expect("ready() checked the ring");
    let mut watch = Stopwatch::start();
    debug_assert!(scratch.pretaken, "plain takes the chains ahead");
    scratch.pretaken = false;
    let hdr = VirtioNetHdr { num_buffers: 1, ..VirtioNetHdr::default() }.to_bytes();
    let hdr = &hdr[..hdr_len as usize];
    let dst = &scratch.chains.active[scratch.at..scratch.n];
    let flat = tx.len().min(dst.len());
    let (mut k, mut bytes) = (0, 0);
    // RX buffers of large frames are fetched into L2 `RX_STAGE` frames
    // before their copy, the burst's first ones now. A driver that
    // recycles its buffers through a pool hands some back that have left
    // every cache: with DPDK's client, 30-45% of RX buffer lines probed
    // before the copy took 250 to over 800 TSC cycles to load (DRAM),
    // where a sender's lines, which this engine wrote one lap before,
    // took 40-110. The fetch into L1 two frames on is too late for those.
    let stage = |k: usize| {
        if let (Some(t), Some(d)) = (tx.get(k), dst.get(k)) {
            d.prefetch_range_l2(128, hdr_len + t.len() - offset);
        }
    };
    if tx.first().is_some_and(|t| t.len() > offset + 128) {
        (0..RX_STAGE).for_each(stage);
    }
    while k < flat {
        let src = &tx[k];
        let len = src.len() - offset;
        // A large next frame: its lines, past the two of each chain
        // fetched when the chains were taken, come in while this one is
        // copied, and so do those of the RX buffer two frames on (the next
        // one's came in during the last copy; at the burst's end, the
        // next one's again). An RX buffer's lines lie further away than a
        // sender's, which this engine wrote one lap of the loop before:
        // 1518-byte frames through the switch, 0.3-1.4% more frames per
        // second than fetching the next RX buffer (three runs of
        // `scripts/ab-switch.sh`), and 1% fewer three frames on.
        let copied = match (tx.get(k + 1), dst.get(k + 1)) {
            (Some(next), Some(next_dst)) if next.len() > offset + 128 => {
                let (sent, rx) = match (tx.get(k + 2), dst.get(k + 2)) {
                    (Some(sent), Some(rx)) => (sent, rx),
                    _ => (next, next_dst),
                };
                stage(k + RX_STAGE);
                let ahead = [
                    Ahead { chain: next, from: 128, to: next.len(), write: false },
                    Ahead { chain: rx, from: 128, to: hdr_len + sent.len() - offset, write: true },
                ];
                copy_flat_fetching(hdr, src, offset, len, &dst[k], ahead)
            }
            _ => copy_flat(hdr, src, offset, len, &dst[k]),
        };
        if !copied {
            break;
        }
        bytes += len;
        k += 1;
    }
    let mut packets = k as u64;
    if k > 0 && tx[0].revoked() {
        // The senders' memory vanished under the copies (one table for the
        // burst): the buffers go back empty, as `fill_flat` returns them.
        ring.complete_run(&dst[..k], std::iter::repeat(0));
        dest.counters.drop_frames(DropReason::RxNotReady, packets);
        (packets, bytes) = (0, 0);
    } else {
        ring.complete_run(&dst[..k], tx[..k].iter().map(|c| (hdr_len + c.len() - offset) as u32));
    }
    scratch.at += k;
    let mut fault = None;
    let mut rest = tx[k..].iter().map(|c| Frame::from_chain(c, offset, c.len() - offset));
    if let Some(first) = rest.next() {
        let (p, b, f) = fill_each(dest, ring, (hdr_len, mergeable, indirect), first, rest, scratch);
        (packets, bytes, fault) = (packets + p, bytes + b, f);
    }
    watch.lap(Phase::RxFill);
    let delivered = finish(dest, index, s, (packets, bytes), fault, scratch);
    // The next burst's first RX buffers, staged now for frames as large as
    // this burst's last (their copies come first in that burst, with the
    // least time to fetch them in it): 1.6% more 1518-byte frames per
    // second (`scripts/ab-switch.sh`); staging eight gained no more.
    if let (Some(ring), Some(last)) = (s.ring.as_ref(), tx.last()) {
        if last.len() > offset + 128 {
            ring.stage_buffers(RX_STAGE as u16, 128, hdr_len + last.len() - offset);
        }
    }
    delivered
}

/// What the receiver `dest` negotiated for its RX ring `s`: its
/// virtio-net header's length, whether frames may be merged over buffers
/// (`MRG_RXBUF`), whether its chains may be indirect.
#[inline(always)]
fn rx_format(dest: &Function, s: &VringState) -> (u64, bool, bool) {
    let acked = dest.acked_features();
    (features::net_hdr_len(acked) as u64, features::mergeable(acked), s.indirect)
}

/// Writes `first`, then `frames`, into `ring` with the chains taken ahead
/// in `scratch` (and more from the ring as frames need them), `(hdr_len,
/// mergeable, indirect)` as the receiver negotiated. Returns the frames
/// and bytes delivered, and the fault if a malformed chain ended the
/// delivery (its frame and the rest are counted dropped). Each frame not
/// delivered is counted on `dest` by reason.
#[inline(always)]
fn fill_each<'f>(
    dest: &Function,
    ring: &mut Virtqueue,
    (hdr_len, mergeable, indirect): (u64, bool, bool),
    first: Frame<'f>,
    mut frames: impl Iterator<Item = Frame<'f>>,
    scratch: &mut RxScratch,
) -> (u64, u64, Option<ErrorKind>) {
    let (mut packets, mut bytes) = (0u64, 0u64);
    let mut next = Some(first);
    while let Some(frame) = next {
        next = frames.next();
        // A large next frame: its lines, and those of the RX buffer taken
        // ahead for it, start coming while this one is copied (the first
        // two of each were fetched when the chains were taken).
        if let Some(Frame { src: Source::Chain { chain, offset }, len, .. }) = &next {
            if *len > 128 {
                chain.prefetch_range(128, offset + len, false);
                if scratch.at + 1 < scratch.n {
                    scratch.chains.active[scratch.at + 1].prefetch_range(128, hdr_len + len, true);
                }
            }
        }
        match fill(ring, &frame, hdr_len, mergeable, indirect, scratch) {
            Ok(()) => {
                packets += 1;
                bytes += frame.out_len();
                if frame.offload.gso_type != 0 {
                    dest.counters.gso_passed.inc();
                }
            }
            Err(Fill::Drop(r)) => {
                if r == DropReason::RxNoBuffer {
                    // The receiver cannot take all it is sent: from now on
                    // its senders share it by weight (forward.rs 2b).
                    dest.share().mark_congested(vfnic_dma::tsc::ns());
                }
                dest.counters.drop_frames(r, 1)
            }
            Err(Fill::Fault(kind)) => {
                // This frame and those after it.
                let lost = 1 + next.map_or(0, |_| 1) + frames.count();
                dest.counters.drop_frames(DropReason::RxBadDescriptor, lost as u64);
                return (packets, bytes, Some(kind));
            }
        }
    }
    (packets, bytes, None)
}

/// The end of a delivery into RX vring `index` of `dest`, locked in `s`:
/// the chains taken ahead and not used go back to the ring, unless a
/// malformed one came after them (the queue is faulted then, and they are
/// returned unwritten); then [`publish_rx`]. Returns `packets`.
#[inline(always)]
fn finish(
    dest: &Arc<Function>,
    index: u16,
    s: &mut VringState,
    (packets, bytes): (u64, u64),
    mut fault: Option<ErrorKind>,
    scratch: &mut RxScratch,
) -> u64 {
    let ring = s.ring.as_mut().expect("a delivery has the ring");
    if let Some(e) = scratch.settle(ring) {
        fault = fault.or(Some(e));
    }
    publish_rx(dest, index, s, (packets, bytes), fault, &mut scratch.armed);
    packets
}

/// The end of a delivery into RX vring `index` of `dest` (locked in `s`):
/// publishes what was written, raises or holds the interrupt for the
/// `(packets, bytes)` delivered, faults the queue if the tenant broke it
/// (`fault`) or revoked its memory meanwhile, and counts. Inlined into
/// both deliveries (as a call it added 24 instructions to a one-frame
/// burst: `deliver_one`'s constants no longer folded).
#[inline(always)]
fn publish_rx(
    dest: &Arc<Function>,
    index: u16,
    s: &mut VringState,
    (packets, bytes): (u64, u64),
    mut fault: Option<ErrorKind>,
    armed: &mut Vec<Armed>,
) {
    let qp = index / 2;
    let ring = s.ring.as_mut().expect("a delivery has the ring");
    ring.publish_used();
    if fault.is_none() && ring.mem().revoked() {
        fault = Some(ErrorKind::MemoryRevoked);
    }
    if packets > 0 {
        moderate(dest, qp, s, packets as u32, armed);
    }
    if let Some(kind) = fault {
        fault_queue(dest, s, kind, index);
    }
    // Under the RX queue's lock (`s`): its only writer now.
    let qc = dest.queue_counters(qp);
    qc.rx_packets.add_exclusive(packets);
    qc.rx_bytes.add_exclusive(bytes);
}

/// [`deliver_locked`] for one frame as the one-frame burst has it (in the
/// sender's first buffer, no tag edit) into the receiver's next chain when
/// that is one buffer that holds it: written straight in by the ring
/// ([`Virtqueue::fill_one`]) instead of through chains taken ahead.
/// `admit` (the receiver's arbiter) is asked once the buffer is known to
/// fit. Returns what the ring did; only [`Filled::Frame`] and
/// [`Filled::Empty`] delivered (and counted) anything.
pub fn deliver_one(
    dest: &Arc<Function>,
    index: u16,
    s: &mut VringState,
    frame: &Frame<'_>,
    scratch: &mut RxScratch,
    admit: impl FnOnce() -> bool,
) -> Filled {
    let (TagEdit::Keep, Source::Chain { chain, offset }) = (frame.tag, frame.src) else { return Filled::NotOne };
    let hdr_len = features::net_hdr_len(dest.acked_features());
    let hdr = VirtioNetHdr { num_buffers: 1, ..frame.offload }.to_bytes();
    let ring = s.ring.as_mut().expect("the caller checked ready()");
    let filled = ring.fill_one(&hdr[..hdr_len], chain, offset, frame.len, admit);
    let packets = match filled {
        Filled::Frame => 1,
        Filled::Empty => {
            dest.counters.drop_frames(DropReason::RxNotReady, 1);
            0
        }
        Filled::Refused | Filled::NotOne => return filled,
    };
    publish_rx(dest, index, s, (packets, packets * frame.len), None, &mut scratch.armed);
    filled
}

/// Raises or holds the interrupt for `packets` new frames on `dest`'s RX
/// ring, per its moderation settings (ethtool `rx-usecs`/`rx-frames`). A held
/// interrupt is armed in `armed`; the engine fires it by its deadline.
fn moderate(dest: &Arc<Function>, qp: u16, s: &mut VringState, packets: u32, armed: &mut Vec<Armed>) {
    let (usecs, frames) = dest.moderation();
    if usecs == 0 && frames == 0 {
        if s.interrupt() {
            dest.counters.interrupts.inc();
        }
        return;
    }
    let now = tsc::now();
    if s.irq_pending == 0 {
        s.irq_since = now;
    }
    s.irq_pending = s.irq_pending.saturating_add(packets);
    let deadline = s.irq_since + usecs as u64 * tsc::hz() / 1_000_000;
    if (frames > 0 && s.irq_pending >= frames) || now >= deadline {
        if s.interrupt() {
            dest.counters.interrupts.inc();
        }
    } else if !armed.iter().any(|a| a.qp == qp && Arc::ptr_eq(&a.func, dest)) {
        armed.push(Armed { func: dest.clone(), qp });
    }
}

/// An RX ring whose interrupt moderation holds an interrupt back. Its
/// deadline is read from the ring state each time, so an interrupt fired
/// early (by frame count) and a new batch begun since are never confused.
pub struct Armed {
    func: Arc<Function>,
    qp: u16,
}

impl RxScratch {
    /// Interrupts held back by moderation, waiting for their deadline.
    pub fn armed(&self) -> bool {
        !self.armed.is_empty()
    }

    /// Fires every held interrupt whose deadline passed (all of them if
    /// `all`); returns how many are still held.
    pub fn fire_due(&mut self, all: bool) -> usize {
        if self.armed.is_empty() {
            return 0;
        }
        let now = tsc::now();
        self.armed.retain(|a| {
            let mut s = a.func.rx(a.qp).lock();
            if s.irq_pending == 0 {
                return false;
            }
            let (usecs, _) = a.func.moderation();
            let deadline = s.irq_since + usecs as u64 * tsc::hz() / 1_000_000;
            if !all && now < deadline {
                return true;
            }
            if s.interrupt() {
                a.func.counters.interrupts.inc();
            }
            false
        });
        self.armed.len()
    }
}

enum Fill {
    Drop(DropReason),
    Fault(ErrorKind),
}

/// Writes `frame` into the next RX buffers: the one taken ahead for it when
/// the frame and its header fit there in one straight copy (nearly every
/// frame), else [`fill_general`]. Inlined into the delivery loop (a call
/// per frame, with its register saves: burst 32 of 64 B, 550 -> 531
/// instructions per frame split, 571 -> 555 packed; A/B packed 0.970).
#[inline(always)]
fn fill(
    ring: &mut Virtqueue,
    frame: &Frame<'_>,
    hdr_len: u64,
    mergeable: bool,
    indirect: bool,
    scratch: &mut RxScratch,
) -> Result<(), Fill> {
    if scratch.at < scratch.n {
        // One buffer holds header and frame: the general path would take
        // just this one too (num_buffers 1).
        if let Some(r) = fill_flat(ring, frame, hdr_len, &scratch.chains.active[scratch.at]) {
            scratch.at += 1;
            return r;
        }
    }
    fill_general(ring, frame, hdr_len, mergeable, indirect, scratch)
}

/// Writes `frame` into `dst` alone in two straight copies (header, then
/// frame) when the frame has no tag edit and lies in the sender's first
/// buffer, and header plus frame fit `dst`'s first buffer; `None`, with
/// nothing written, otherwise. `Some`: `dst` is completed (empty if the
/// sender's memory vanished under the copy).
#[inline(always)]
fn fill_flat(ring: &mut Virtqueue, frame: &Frame<'_>, hdr_len: u64, dst: &Chain) -> Option<Result<(), Fill>> {
    let (TagEdit::Keep, Source::Chain { chain, offset }) = (frame.tag, frame.src) else { return None };
    let hdr = VirtioNetHdr { num_buffers: 1, ..frame.offload }.to_bytes();
    if !vfnic_dma::copy::copy_flat(&hdr[..hdr_len as usize], chain, offset, frame.len, dst) {
        return None;
    }
    if chain.revoked() {
        ring.complete(dst, 0);
        return Some(Err(Fill::Drop(DropReason::RxNotReady)));
    }
    ring.complete(dst, (hdr_len + frame.len) as u32);
    Some(Ok(()))
}

/// [`fill`] for any frame: RX buffers taken (ahead, or from the ring) until
/// the frame fits, merged if the receiver allows, tag edits applied.
#[inline(never)]
fn fill_general(
    ring: &mut Virtqueue,
    frame: &Frame<'_>,
    hdr_len: u64,
    mergeable: bool,
    indirect: bool,
    scratch: &mut RxScratch,
) -> Result<(), Fill> {
    let need = hdr_len + frame.out_len();
    let max = if mergeable { MAX_MERGE } else { 1 };
    if scratch.at == scratch.n {
        // None taken ahead (left): this frame's chains go from the start.
        (scratch.at, scratch.n) = (0, 0);
    }
    let start = scratch.at;
    let mut taken = 0usize;
    let mut capacity = 0u64;
    let mut ran_out = false;
    while capacity < need && taken < max {
        if scratch.at == scratch.n {
            // Past the chains taken ahead: the next one from the ring.
            let popped = match scratch.err {
                Some(e) => Err(e),
                None => ring.pop_chain(&mut scratch.chains.active[scratch.n], Access::DeviceWrites, indirect),
            };
            match popped {
                Ok(true) => {
                    scratch.chains.active[scratch.n].prefetch();
                    scratch.n += 1;
                }
                Ok(false) => {
                    ran_out = true;
                    break;
                }
                Err(e) => {
                    // Give back what we took so far, unwritten.
                    for c in &scratch.chains.active[start..start + taken] {
                        ring.complete(c, 0);
                    }
                    return Err(Fill::Fault(e.kind()));
                }
            }
        }
        scratch.at += 1;
        taken += 1;
        let len = scratch.chains.active[start + taken - 1].len();
        if taken == 1 && len < hdr_len {
            // Too small even for the header: refused, never half-written.
            ring.complete(&scratch.chains.active[start], 0);
            return Err(Fill::Drop(DropReason::RxBufferTooSmall));
        }
        capacity += len;
    }
    let chains = &scratch.chains.active[start..start + taken];
    if capacity < need {
        if ran_out {
            // Not enough buffers yet: leave them for the next frame (the
            // last ones taken: none was taken ahead past them).
            ring.unpop(chains);
            (scratch.at, scratch.n) = (start, start);
            return Err(Fill::Drop(DropReason::RxNoBuffer));
        }
        for c in chains {
            ring.complete(c, 0);
        }
        return Err(Fill::Drop(DropReason::RxBufferTooSmall));
    }
    // A frame in one buffer (mostly one taken from the ring just above):
    // the same two straight copies as `fill`'s, when the frame allows them.
    if taken == 1 {
        if let Some(r) = fill_flat(ring, frame, hdr_len, &chains[0]) {
            return r;
        }
    }
    // virtio_net_hdr: the offloads handed over, num_buffers = buffers used.
    let hdr = VirtioNetHdr { num_buffers: taken as u16, ..frame.offload }.to_bytes();
    let mut written = [0u32; MAX_MERGE];
    let mut src = frame.reader();
    let mut left = frame.out_len();
    for (i, c) in chains.iter().enumerate() {
        let mut dst = Cursor::new(c);
        let mut n = 0u64;
        if i == 0 {
            n += dst.scatter(&hdr[..hdr_len as usize]) as u64;
        }
        let copied = src.pump(&mut dst, left);
        left -= copied;
        written[i] = (n + copied) as u32;
    }
    if frame.revoked() {
        // The sender's memory vanished under the copy: what we read may be
        // zeros, so the receiver gets its buffers back empty instead.
        for c in chains {
            ring.complete(c, 0);
        }
        return Err(Fill::Drop(DropReason::RxNotReady));
    }
    for (c, w) in chains.iter().zip(&written[..taken]) {
        ring.complete(c, *w);
    }
    debug_assert_eq!(left, 0);
    Ok(())
}
