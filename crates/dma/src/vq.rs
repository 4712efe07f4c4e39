//! One interface over both virtqueue layouts, as the engines use them:
//! take a chain, complete it, publish, interrupt, suppress notifications.

use std::sync::Arc;

use crate::chain::{Access, Chain};
use crate::mem::GuestMemory;
use crate::packed::{PackedRing, PopError, Token};
use crate::ring::{RingAddrs, RingError, SplitRing};

/// What [`Virtqueue::fill_one`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// The frame is written and its chain completed.
    Frame,
    /// The sender's memory was revoked under the copy: the chain is
    /// completed empty.
    Empty,
    /// `admit` said no: nothing taken.
    Refused,
    /// Nothing available, or the next chain is not one buffer that holds
    /// the frame (or the frame is not in its sender's first buffer):
    /// nothing taken; the general take and fill handle it (and say what
    /// is wrong with a malformed chain).
    NotOne,
}

/// A mapped virtqueue, split or packed.
#[derive(Debug)]
pub enum Virtqueue {
    /// Split layout (virtio 1.x 2.7).
    Split(SplitRing),
    /// Packed layout (`VIRTIO_F_RING_PACKED`, virtio 1.1 2.8).
    Packed(PackedRing),
}

impl Virtqueue {
    /// Maps a queue. `base` is the `SET_VRING_BASE` value (for packed: the
    /// index in bits 0-14 and the wrap counter in bit 15).
    pub fn new(
        mem: Arc<GuestMemory>,
        size: u32,
        addrs: RingAddrs,
        base: u16,
        event_idx: bool,
        packed: bool,
    ) -> Result<Virtqueue, RingError> {
        Ok(if packed {
            Virtqueue::Packed(PackedRing::new(mem, size, addrs, base, event_idx)?)
        } else {
            Virtqueue::Split(SplitRing::new(mem, size, addrs, base, event_idx)?)
        })
    }

    /// The memory table the queue and its buffers live in.
    pub fn mem(&self) -> &Arc<GuestMemory> {
        match self {
            Virtqueue::Split(r) => r.mem(),
            Virtqueue::Packed(r) => r.mem(),
        }
    }

    /// Chains available, counted up to `max` (split: from the avail index;
    /// packed: by walking the descriptors' flags, so ask for no more than
    /// a burst needs).
    #[inline]
    pub fn room(&self, max: u16) -> u16 {
        match self {
            Virtqueue::Split(r) => r.pending().unwrap_or(0).min(max),
            Virtqueue::Packed(r) => r.room_upto(max),
        }
    }

    /// [`Virtqueue::room`] for a ring about to be written, with the hints
    /// for it: [`Virtqueue::prefetch_burst`], and the first two cache lines
    /// of the buffers of its next `max` available chains (those of one
    /// buffer) fetched for writing (a packed ring's count and buffer hint
    /// are one walk of its flags). Nothing is taken or checked.
    #[inline]
    pub fn room_prefetching(&mut self, max: u16) -> u16 {
        match self {
            Virtqueue::Split(r) => {
                r.prefetch_burst(max);
                r.prefetch_buffers_write(max);
                r.pending().unwrap_or(0).min(max)
            }
            Virtqueue::Packed(r) => r.room_prefetching(max),
        }
    }

    /// Hint for the buffers the next delivery writes: bytes `from..to` of
    /// the buffers of the next `count` available one-buffer chains are
    /// fetched into L2 (see [`crate::Chain::prefetch_range_l2`]). Nothing
    /// is taken or checked.
    #[inline]
    pub fn stage_buffers(&self, count: u16, from: u64, to: u64) {
        match self {
            Virtqueue::Split(r) => r.stage_buffers(count, from, to),
            Virtqueue::Packed(r) => r.stage_buffers(count, from, to),
        }
    }

    /// Look-ahead hint for a burst of up to `max` chains (split rings: their
    /// descriptors and used-ring lines; packed rings read descriptors in
    /// order, which the hardware prefetcher follows). Returns how many
    /// chains a split ring has available, up to `max`, from one read of
    /// the driver's index; `None` when not known (a packed ring, or an
    /// invalid index, which the next pop reports).
    #[inline]
    pub fn prefetch_burst(&mut self, max: u16) -> Option<u16> {
        match self {
            Virtqueue::Split(r) => r.prefetch_burst(max),
            Virtqueue::Packed(_) => None,
        }
    }

    /// True if at least one chain is available (re-checks the driver's side).
    pub fn any_pending(&self) -> Result<bool, RingError> {
        match self {
            Virtqueue::Split(r) => r.pending().map(|n| n > 0),
            Virtqueue::Packed(r) => r.pending().map(|n| n > 0),
        }
    }

    /// Takes the next available chain into `chain`. `Ok(false)`: none
    /// available. On error the queue must be faulted; nothing stays taken:
    /// a split chain that fails its walk is returned with length 0 at once
    /// (visible at the next publish), a packed one is left in place.
    #[inline]
    pub fn pop_chain(&mut self, chain: &mut Chain, access: Access, indirect_ok: bool) -> Result<bool, PopError> {
        match self {
            Virtqueue::Split(r) => {
                if !r.has_avail()? {
                    return Ok(false);
                }
                let head = r.pop_head()?;
                if let Err(e) = chain.walk(r, head, access, indirect_ok) {
                    r.push_used(head, 0);
                    return Err(e.into());
                }
                Ok(true)
            }
            Virtqueue::Packed(r) => Ok(r.pop_chain(chain, access, indirect_ok)?.is_some()),
        }
    }

    /// Takes up to `chains.len()` available chains into `chains`, in order,
    /// as [`Virtqueue::pop_chain`] would one by one, and starts fetching the
    /// first two cache lines of each one's buffer (for writing if `access`
    /// is [`Access::DeviceWrites`]). One call per group of chains: the
    /// ring's layout is matched once and the walk's registers are saved
    /// once, not per chain. Returns how many were taken and, if a chain was
    /// malformed, the error that ended the group (the chains before it are
    /// good; the queue must be faulted once they are handled).
    #[inline]
    pub fn pop_burst(&mut self, chains: &mut [Chain], access: Access, indirect_ok: bool) -> (usize, Option<PopError>) {
        // A group of one common chain (a burst of one frame): taken here,
        // without the call into the group's loop.
        if let (Virtqueue::Split(r), [c]) = (&mut *self, &mut *chains) {
            if r.pop_simple(std::slice::from_mut(c), access) == 1 {
                return (1, None);
            }
        }
        match self {
            Virtqueue::Split(r) => split_pop_burst(r, chains, access, indirect_ok),
            Virtqueue::Packed(r) => packed_pop_burst(r, chains, access, indirect_ok),
        }
    }

    /// One frame into the next available chain when that chain is one
    /// device-writable buffer that holds it (how nearly every receiver
    /// posts its buffers), without taking the chain as a [`Chain`]: `hdr`,
    /// then the `len` bytes of `src` from `src_off` (which must lie in
    /// its first buffer), in two straight copies, and the chain completed
    /// (visible at publish). `admit` is asked once the buffer is known to
    /// fit, before anything is taken or written.
    #[inline]
    pub fn fill_one(
        &mut self,
        hdr: &[u8],
        src: &Chain,
        src_off: u64,
        len: u64,
        admit: impl FnOnce() -> bool,
    ) -> Filled {
        let Some(from) = crate::copy::flat_source(src, src_off, len) else { return Filled::NotOne };
        let need = hdr.len() as u64 + len;
        let found = match self {
            Virtqueue::Split(r) => r.next_buffer(need).map(|(head, p)| (Token { id: head, ndesc: 1 }, p)),
            Virtqueue::Packed(r) => r.next_buffer(need),
        };
        let Some((token, dst)) = found else { return Filled::NotOne };
        if !admit() {
            return Filled::Refused;
        }
        // SAFETY: `dst .. + need` lies in a buffer the tenant posted as
        // device-writable (mapped readable and writable), translated with
        // its length from this ring's memory table, which `self` keeps
        // mapped (next_buffer); `from .. + len` lies in `src`'s first
        // segment, kept mapped by `src`. Two mappings of tenant memory: no
        // overlap.
        unsafe { crate::copy::copy_flat_to(hdr, from, len, dst) };
        // The sender's memory vanished under the copy: what was read may
        // be zeros, so the buffer goes back empty.
        let whole = !src.revoked();
        let written = if whole { need as u32 } else { 0 };
        match self {
            Virtqueue::Split(r) => {
                r.take_next();
                r.push_used(token.id, written);
            }
            Virtqueue::Packed(r) => {
                r.took(token);
                r.push_used(token, written);
            }
        }
        if whole {
            Filled::Frame
        } else {
            Filled::Empty
        }
    }

    /// Completes `chain` with `len` bytes written (visible at publish).
    #[inline(always)]
    pub fn complete(&mut self, chain: &Chain, len: u32) {
        match self {
            Virtqueue::Split(r) => r.push_used(chain.head(), len),
            Virtqueue::Packed(r) => r.push_used(chain.token(), len),
        }
    }

    /// Completes `chains` in order, each with the bytes written to it from
    /// `lens` (RX): [`Virtqueue::complete`] for each, done as one run (a
    /// packed ring stores the used descriptors straight into the ring and
    /// moves its counters once: [`PackedRing::push_used_run`]).
    #[inline(always)]
    pub fn complete_run(&mut self, chains: &[Chain], lens: impl Iterator<Item = u32>) {
        match self {
            Virtqueue::Split(r) => chains.iter().zip(lens).for_each(|(c, len)| r.push_used(c.head(), len)),
            Virtqueue::Packed(r) => r.push_used_run(chains.iter().map(Chain::token).zip(lens)),
        }
    }

    /// Completes `chains`, none written to (TX), in the order they were
    /// taken. With `in_order` (`VIRTIO_F_IN_ORDER` negotiated) and the
    /// chains the oldest still out, a packed ring returns them with one
    /// used descriptor (one descriptor-ring line written for the burst
    /// instead of one per four chains, and fewer for the driver to read).
    #[inline]
    pub fn complete_unwritten(&mut self, chains: &[Chain], in_order: bool) {
        match (self, chains.last()) {
            (Virtqueue::Packed(r), Some(last)) if in_order => {
                r.push_used_in_order(last.token(), chains.len() as u32, ring_descriptors(chains));
            }
            (Virtqueue::Split(r), _) => chains.iter().for_each(|c| r.push_used(c.head(), 0)),
            (Virtqueue::Packed(r), _) => chains.iter().for_each(|c| r.push_used(c.token(), 0)),
        }
    }

    /// Gives back `chains`, the last ones taken and not completed: they
    /// are taken again next time.
    #[inline]
    pub fn unpop(&mut self, chains: &[Chain]) {
        match self {
            Virtqueue::Split(r) => r.unpop(chains.len() as u16),
            Virtqueue::Packed(r) => r.unpop(chains.len() as u32, ring_descriptors(chains)),
        }
    }

    /// Makes every completion visible to the driver.
    #[inline]
    pub fn publish_used(&mut self) {
        match self {
            Virtqueue::Split(r) => r.publish_used(),
            Virtqueue::Packed(r) => r.publish_used(),
        }
    }

    /// Hint: the lines the next take reads first (see the rings').
    #[inline]
    pub fn prefetch_next(&self) {
        match self {
            Virtqueue::Split(r) => r.prefetch_next(),
            Virtqueue::Packed(r) => r.prefetch_next(),
        }
    }

    /// After a publish: whether the driver wants an interrupt.
    #[inline]
    pub fn needs_interrupt(&mut self) -> bool {
        match self {
            Virtqueue::Split(r) => r.needs_interrupt(),
            Virtqueue::Packed(r) => r.needs_interrupt(),
        }
    }

    /// Asks the driver to kick (true) or not (false).
    pub fn set_notification(&mut self, enable: bool) {
        match self {
            Virtqueue::Split(r) => r.set_notification(enable),
            Virtqueue::Packed(r) => r.set_notification(enable),
        }
    }

    /// Bytes at the head of each device-readable buffer the device does
    /// not read (a TX frame's virtio-net header, when its driver
    /// negotiated no send offload): the look-ahead at the take fetches the
    /// lines after them. A hint only; what is taken does not change.
    pub fn set_read_skip(&mut self, bytes: u8) {
        match self {
            Virtqueue::Split(r) => r.read_skip = bytes,
            Virtqueue::Packed(r) => r.read_skip = bytes,
        }
    }

    /// Where to resume (`GET_VRING_BASE`): split: next avail index; packed:
    /// index | wrap counter << 15.
    pub fn base(&self) -> u16 {
        match self {
            Virtqueue::Split(r) => r.next_avail(),
            Virtqueue::Packed(r) => r.next_avail_state(),
        }
    }
}

/// Packed-ring descriptors `chains` took in all.
fn ring_descriptors(chains: &[Chain]) -> u32 {
    chains.iter().map(|c| c.token().ndesc as u32).sum()
}

/// The loop of [`Virtqueue::pop_burst`]: `pop` takes the next chain into
/// the one it is given (`Ok(false)`: none available); each chain taken has
/// its first lines fetched.
#[inline(always)]
fn pop_each(
    chains: &mut [Chain],
    write: bool,
    mut pop: impl FnMut(&mut Chain) -> Result<bool, PopError>,
) -> (usize, Option<PopError>) {
    for (n, c) in chains.iter_mut().enumerate() {
        match pop(c) {
            Ok(true) => c.prefetch_for(write),
            Ok(false) => return (n, None),
            Err(e) => return (n, Some(e)),
        }
    }
    (chains.len(), None)
}

/// [`Virtqueue::pop_burst`] for a split ring (each layout has its own
/// loop, so neither pays for the other's registers).
#[inline(never)]
fn split_pop_burst(
    r: &mut SplitRing,
    chains: &mut [Chain],
    access: Access,
    indirect_ok: bool,
) -> (usize, Option<PopError>) {
    let simple = r.pop_simple(chains, access);
    let (n, e) = pop_each(&mut chains[simple..], access == Access::DeviceWrites, |c| {
        if !r.has_avail()? {
            return Ok(false);
        }
        let head = r.pop_head()?;
        if let Err(e) = c.walk(r, head, access, indirect_ok) {
            // Returned at once, unused (visible at the next publish).
            r.push_used(head, 0);
            return Err(e.into());
        }
        Ok(true)
    });
    (simple + n, e)
}

/// [`Virtqueue::pop_burst`] for a packed ring.
#[inline(never)]
fn packed_pop_burst(
    r: &mut PackedRing,
    chains: &mut [Chain],
    access: Access,
    indirect_ok: bool,
) -> (usize, Option<PopError>) {
    let simple = r.pop_simple(chains, access);
    let (n, e) = pop_each(&mut chains[simple..], access == Access::DeviceWrites, |c| {
        Ok(r.pop_chain(c, access, indirect_ok)?.is_some())
    });
    (simple + n, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::ChainError;
    use crate::ring::tests::{TestRing, BUF_OFF, GPA};
    use crate::ring::Desc;

    #[test]
    fn pop_burst_takes_what_is_available_and_stops_at_a_bad_chain() {
        let t = TestRing::new(8);
        let mut q = Virtqueue::Split(t.ring(false));
        let mut chains: Vec<Chain> = (0..8).map(|_| Chain::default()).collect();
        for i in 0..4u16 {
            t.set_desc(i, Desc { addr: GPA + BUF_OFF + 256 * i as u64, len: 60 + i as u32, flags: 0, next: 0 });
        }
        // Two chains available: a burst of eight takes those two, in order.
        t.publish(0, &[2, 0]);
        let (n, e) = q.pop_burst(&mut chains, Access::DeviceReads, false);
        assert!(e.is_none());
        assert_eq!((n, chains[0].head(), chains[1].head(), chains[1].len()), (2, 2, 0, 60));
        // A good chain, then one outside memory, then a good one: the burst
        // ends at the bad one with its error; the good one before is taken.
        t.set_desc(3, Desc { addr: GPA + (1 << 20), len: 64, flags: 0, next: 0 });
        t.publish(2, &[1, 3, 0]);
        let (n, e) = q.pop_burst(&mut chains, Access::DeviceReads, false);
        assert_eq!(n, 1);
        assert_eq!(chains[0].head(), 1);
        assert!(matches!(e, Some(PopError::Chain(ChainError::OutOfBounds))), "{e:?}");
        // The bad chain was returned unused at once (visible at publish).
        q.publish_used();
        assert_eq!(t.used_idx(), 1);
        assert_eq!(t.used_elem(0), (3, 0));
        // A group smaller than what is available takes only its size.
        t.publish(5, &[2]);
        let (n, e) = q.pop_burst(&mut chains[..1], Access::DeviceReads, false);
        assert_eq!((n, chains[0].head(), e.is_none()), (1, 0, true));
        assert_eq!(q.room(8), 1);
        // A group of one (taken without the group's loop) still walks and
        // reports what is not a common chain: here one outside memory.
        let (n, e) = q.pop_burst(&mut chains[..1], Access::DeviceReads, false);
        assert_eq!((n, chains[0].head()), (1, 2));
        t.publish(6, &[3]);
        let (n, e2) = q.pop_burst(&mut chains[..1], Access::DeviceReads, false);
        assert!(e.is_none() && n == 0, "{e:?} {n}");
        assert!(matches!(e2, Some(PopError::Chain(ChainError::OutOfBounds))), "{e2:?}");
    }

    /// A TX chain of one buffer holding `frame` (its own ring and memory).
    fn source(frame: &[u8]) -> (TestRing, Chain) {
        let t = TestRing::new(8);
        let mut q = Virtqueue::Split(t.ring(false));
        t.write(GPA + BUF_OFF, frame);
        t.set_desc(0, Desc { addr: GPA + BUF_OFF, len: frame.len() as u32, flags: 0, next: 0 });
        t.publish(0, &[0]);
        let mut c = [Chain::default()];
        assert_eq!(q.pop_burst(&mut c, Access::DeviceReads, false).0, 1);
        let [c] = c;
        (t, c)
    }

    #[test]
    fn fill_one_writes_one_buffer_and_takes_nothing_else() {
        let frame: Vec<u8> = (0..64u8).collect();
        let (_src_mem, src) = source(&frame);
        let w = crate::ring::DESC_F_WRITE;
        let hdr = [0xee; 12];
        let buf = |k: u64| GPA + BUF_OFF + 4096 * k;
        let ring = |d: &[Desc]| {
            let t = TestRing::new(8);
            for (i, d) in d.iter().enumerate() {
                t.set_desc(i as u16, *d);
            }
            let q = Virtqueue::Split(t.ring(false));
            (t, q)
        };
        // Nothing posted; then read-only, too small (64 + 12 bytes needed),
        // a chain of two, outside memory, a head past the size: each left
        // in place for the general take (which reports the bad ones).
        let (_t, mut q) = ring(&[]);
        assert_eq!(q.fill_one(&hdr, &src, 0, 64, || true), Filled::NotOne);
        let two = Desc { addr: buf(0), len: 12, flags: w | crate::ring::DESC_F_NEXT, next: 1 };
        for (d, head) in [
            (Desc { addr: buf(0), len: 1500, flags: 0, next: 0 }, 0),
            (Desc { addr: buf(0), len: 75, flags: w, next: 0 }, 0),
            (two, 0),
            (Desc { addr: GPA + (1 << 20), len: 1500, flags: w, next: 0 }, 0),
            (Desc { addr: buf(0), len: 1500, flags: w, next: 0 }, 9),
        ] {
            let (t, mut q) = ring(&[d, Desc { addr: buf(1), len: 1500, flags: w, next: 0 }]);
            t.publish(0, &[head]);
            assert_eq!(q.fill_one(&hdr, &src, 0, 64, || true), Filled::NotOne, "{d:?} at head {head}");
            assert_eq!(q.room(8), 1, "{d:?}: nothing taken");
        }
        // A good buffer: refused by the arbiter, then filled.
        let (t, mut q) = ring(&[Desc { addr: buf(0), len: 76, flags: w, next: 0 }]);
        t.publish(0, &[0]);
        let mut asked = 0;
        let refuse = || {
            asked += 1;
            false
        };
        assert_eq!(q.fill_one(&hdr, &src, 0, 64, refuse), Filled::Refused);
        assert_eq!((asked, q.room(8)), (1, 1), "refused: asked once, nothing taken");
        // Only a source in its first buffer: 65 bytes from offset 0 are not.
        assert_eq!(q.fill_one(&hdr, &src, 0, 65, || true), Filled::NotOne);
        assert_eq!(q.fill_one(&hdr, &src, 4, 60, || true), Filled::Frame);
        assert_eq!(q.room(8), 0);
        q.publish_used();
        assert_eq!((t.used_idx(), t.used_elem(0)), (1, (0, 72)));
        assert_eq!(t.read(buf(0), 12), hdr);
        assert_eq!(t.read(buf(0) + 12, 60), &frame[4..]);
    }

    #[test]
    fn buffer_hint_takes_nothing_and_reads_only_what_is_available() {
        let t = TestRing::new(8);
        let mut q = Virtqueue::Split(t.ring(false));
        let mut chains: Vec<Chain> = (0..8).map(|_| Chain::default()).collect();
        let w = crate::ring::DESC_F_WRITE;
        t.set_desc(0, Desc { addr: GPA + BUF_OFF, len: 1500, flags: w, next: 0 });
        t.set_desc(1, Desc { addr: GPA + (1 << 20), len: 64, flags: w, next: 0 });
        t.set_desc(2, Desc { addr: GPA + BUF_OFF + 4096, len: 12, flags: w | crate::ring::DESC_F_NEXT, next: 3 });
        t.set_desc(3, Desc { addr: GPA + BUF_OFF + 8192, len: 1500, flags: w, next: 0 });
        // A good buffer, a chain of two, one outside memory, and an avail
        // entry past the size (masked by the hint, refused by the pop).
        q.prefetch_next();
        assert_eq!(q.room(8), 0, "nothing published yet");
        t.publish(0, &[0, 2, 1, 9]);
        q.prefetch_next();
        assert_eq!(q.prefetch_burst(8), Some(4));
        assert_eq!(q.room_prefetching(64), 4);
        // Staged into L2 over every kind of range, past the buffers' ends too.
        for (count, from, to) in [(8, 128, 1530), (64, 0, u64::MAX), (2, 4096, 64), (0, 0, 1500)] {
            q.stage_buffers(count, from, to);
        }
        assert_eq!(q.room(8), 4, "the hints take nothing");
        assert_eq!((q.room_prefetching(8), q.room_prefetching(2), q.room(8)), (4, 2, 4), "nor does the count with it");
        let (n, e) = q.pop_burst(&mut chains, Access::DeviceWrites, false);
        assert_eq!((n, chains[0].len(), chains[1].len()), (2, 1500, 1512));
        assert!(matches!(e, Some(PopError::Chain(ChainError::OutOfBounds))), "{e:?}");
    }
}
