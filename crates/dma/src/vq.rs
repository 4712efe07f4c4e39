//! One interface over both virtqueue layouts, as the engines use them:
//! take a chain, complete it, publish, interrupt, suppress notifications.

use std::sync::Arc;

use crate::chain::{Access, Chain};
use crate::mem::GuestMemory;
use crate::packed::{PackedRing, PopError};
use crate::ring::{RingAddrs, RingError, SplitRing};

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

    /// Look-ahead hint: the first line of the next `max` buffers, for
    /// writing or reading.
    #[inline]
    pub fn prefetch_buffers(&mut self, max: u16, write: bool) {
        match self {
            Virtqueue::Split(r) => r.prefetch_buffers(max, write),
            Virtqueue::Packed(r) => r.prefetch_buffers(max, write),
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

    /// Completes `chain` with `len` bytes written (visible at publish).
    #[inline]
    pub fn complete(&mut self, chain: &Chain, len: u32) {
        match self {
            Virtqueue::Split(r) => r.push_used(chain.head(), len),
            Virtqueue::Packed(r) => r.push_used(chain.token(), len),
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
                let ndesc = chains.iter().map(|c| c.token().ndesc as u32).sum();
                r.push_used_in_order(last.token(), chains.len() as u32, ndesc);
            }
            (q, _) => chains.iter().for_each(|c| q.complete(c, 0)),
        }
    }

    /// Gives back the last `n` chains taken and not completed.
    pub fn unpop(&mut self, n: u16) {
        match self {
            Virtqueue::Split(r) => r.unpop(n),
            Virtqueue::Packed(r) => r.unpop(n),
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

    /// Where to resume (`GET_VRING_BASE`): split: next avail index; packed:
    /// index | wrap counter << 15.
    pub fn base(&self) -> u16 {
        match self {
            Virtqueue::Split(r) => r.next_avail(),
            Virtqueue::Packed(r) => r.next_avail_state(),
        }
    }
}
