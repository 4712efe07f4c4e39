//! Raw access to a split virtqueue in tenant memory (virtio 1.x, 2.7).
//!
//! The tenant writes the avail ring and descriptor table concurrently with
//! us, so every field is read once into a local (volatile or atomic) and
//! checked before use; nothing here hands out references into tenant memory.

use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;

use thiserror::Error;

use crate::chain::{Access, Chain};
use crate::mem::GuestMemory;
use crate::packed::Token;

/// Largest ring the spec allows.
pub const MAX_RING_SIZE: u16 = 32768;

/// `VRING_DESC_F_NEXT`.
pub const DESC_F_NEXT: u16 = 1;
/// `VRING_DESC_F_WRITE`: the device writes this buffer.
pub const DESC_F_WRITE: u16 = 2;
/// `VRING_DESC_F_INDIRECT`: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// `VRING_USED_F_NO_NOTIFY`: the device asks not to be kicked.
const USED_F_NO_NOTIFY: u16 = 1;
/// `VRING_AVAIL_F_NO_INTERRUPT`: the driver asks not to be interrupted.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// Where a ring's three areas are, in the front end's virtual addresses
/// (`VHOST_USER_SET_VRING_ADDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Avail (driver) ring.
    pub avail: u64,
    /// Used (device) ring.
    pub used: u64,
}

/// A ring that cannot be used.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum RingError {
    /// Size 0, above 32768, or not a power of two.
    #[error("Ring size {0} is invalid")]
    Size(u32),
    /// An area lies outside the memory table or is misaligned.
    #[error("Ring {0} area is outside tenant memory or misaligned")]
    Addr(&'static str),
    /// The driver published more buffers than the ring holds.
    #[error("Avail index moved by {0}, beyond the ring size")]
    AvailIndex(u16),
    /// The avail ring names a descriptor beyond the table.
    #[error("Avail ring names descriptor {0}, beyond the table")]
    HeadIndex(u16),
}

/// One descriptor, copied out of tenant memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(C)]
pub struct Desc {
    /// Guest-physical address of the buffer.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// `DESC_F_*` flags.
    pub flags: u16,
    /// Next descriptor when `DESC_F_NEXT` is set.
    pub next: u16,
}

/// A split virtqueue, mapped and checked, with the device-side indices.
#[derive(Debug)]
pub struct SplitRing {
    mem: Arc<GuestMemory>,
    desc: *mut Desc,
    avail: *mut u8,
    used: *mut u8,
    size: u16,
    next_avail: u16,
    next_used: u16,
    /// Avail index as last read: buffers up to it are known available, so
    /// the driver's index (a cache line it keeps writing) is re-read only
    /// when they run out.
    avail_shadow: u16,
    /// Used index at the last interrupt we sent (EVENT_IDX bookkeeping).
    signalled_used: Option<u16>,
    event_idx: bool,
    /// See [`crate::vq::Virtqueue::set_read_skip`].
    pub(crate) read_skip: u8,
}

// SAFETY: the raw pointers point into `mem`, which this value keeps alive
// through its Arc; a SplitRing is used by one thread at a time (`&mut self`
// for every access that moves an index), so sending it is sound.
unsafe impl Send for SplitRing {}

impl SplitRing {
    /// Checks and maps a ring of `size` entries at `addrs`, resuming at
    /// `base` (`VHOST_USER_SET_VRING_BASE`).
    pub fn new(
        mem: Arc<GuestMemory>,
        size: u32,
        addrs: RingAddrs,
        base: u16,
        event_idx: bool,
    ) -> Result<SplitRing, RingError> {
        if size == 0 || size > MAX_RING_SIZE as u32 || !size.is_power_of_two() {
            return Err(RingError::Size(size));
        }
        let n = size as u64;
        let area = |name, addr: u64, len: u64, align: u64| mem.ring_area(addr, len, align).ok_or(RingError::Addr(name));
        let desc = area("descriptor", addrs.desc, 16 * n, 16)?;
        let avail = area("avail", addrs.avail, 6 + 2 * n, 2)?;
        let used = area("used", addrs.used, 6 + 8 * n, 4)?;
        Ok(SplitRing {
            mem,
            desc: desc.cast(),
            avail,
            used,
            size: size as u16,
            next_avail: base,
            next_used: base,
            avail_shadow: base,
            signalled_used: None,
            event_idx,
            read_skip: 0,
        })
    }

    /// The memory this ring lives in (and its buffers are translated by).
    pub fn mem(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Next avail entry the device will consume (`GET_VRING_BASE`).
    pub fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Used index the device will publish next.
    pub fn next_used(&self) -> u16 {
        self.next_used
    }

    fn avail_idx_atomic(&self) -> &AtomicU16 {
        // SAFETY: `avail + 2` is inside the avail area checked in `new`, is
        // 2-aligned (avail is 2-aligned), and lives as long as `self.mem`.
        // Only atomic accesses are made through it on our side.
        unsafe { AtomicU16::from_ptr(self.avail.add(2).cast()) }
    }

    fn used_idx_atomic(&self) -> &AtomicU16 {
        // SAFETY: as for `avail_idx_atomic`, for the used area (4-aligned).
        unsafe { AtomicU16::from_ptr(self.used.add(2).cast()) }
    }

    /// Buffers published by the driver and not yet taken.
    #[inline]
    pub fn pending(&self) -> Result<u16, RingError> {
        let avail_idx = self.avail_idx_atomic().load(Ordering::Acquire);
        let n = avail_idx.wrapping_sub(self.next_avail);
        if n > self.size {
            return Err(RingError::AvailIndex(n));
        }
        Ok(n)
    }

    /// Takes the next head from the avail ring. The caller has checked
    /// [`SplitRing::pending`] is non-zero.
    #[inline]
    pub fn pop_head(&mut self) -> Result<u16, RingError> {
        let head = self.avail_entry(0);
        if head >= self.size {
            return Err(RingError::HeadIndex(head));
        }
        self.next_avail = self.next_avail.wrapping_add(1);
        Ok(head)
    }

    /// Takes the next available chains into `chains`, as long as each is
    /// the common chain (a head inside the table whose descriptor has no
    /// `DESC_F_NEXT` or `DESC_F_INDIRECT`, a non-empty buffer with the
    /// permission `access` needs, inside one region): the chains, with the
    /// checks, that [`Chain::walk`] takes on its first branch. Stops at the
    /// first that is not (or when none is available, the driver's index read
    /// only when those seen last are used up) and returns how many were
    /// taken; the rest is for [`SplitRing::pop_head`] and [`Chain::walk`],
    /// which also report what is wrong (a bad head, or an avail index
    /// running ahead, for which this takes nothing). Each chain taken has
    /// its first lines fetched (for writing with [`Access::DeviceWrites`]).
    #[inline]
    pub fn pop_simple(&mut self, chains: &mut [Chain], access: Access) -> usize {
        match access {
            Access::DeviceReads => self.pop_simple_as::<false>(chains),
            Access::DeviceWrites => self.pop_simple_as::<true>(chains),
            Access::Mixed => 0,
        }
    }

    /// [`SplitRing::pop_simple`] for buffers the device writes (`WRITES`)
    /// or reads: one loop each, with the permission bit and the skipped
    /// header folded in, and the avail entries read in runs that end where
    /// the ring wraps. A burst of 64-byte frames through the switch: 588 ->
    /// 550 instructions per frame, with `Chain::take_one`'s rare cases moved
    /// out of line.
    #[inline(always)]
    fn pop_simple_as<const WRITES: bool>(&mut self, chains: &mut [Chain]) -> usize {
        if !self.has_avail().unwrap_or(false) {
            return 0;
        }
        let want = if WRITES { DESC_F_WRITE } else { 0 };
        let k = chains.len().min(self.avail_shadow.wrapping_sub(self.next_avail) as usize);
        let window = self.mem.first_window();
        let skip = if WRITES { 0 } else { self.read_skip };
        let (size, mask) = (self.size, self.size - 1);
        let mut n = 0;
        while n < k {
            let slot = self.next_avail.wrapping_add(n as u16) & mask;
            let run = (k - n).min((size - slot) as usize);
            // SAFETY: `4 + 2 * slot` is inside the avail area (slot < size)
            // and 2-aligned; entries up to `slot + run <= size` follow it.
            let first = unsafe { self.avail.add(4 + 2 * slot as usize) }.cast::<u16>();
            let mut got = 0;
            for c in &mut chains[n..n + run] {
                // SAFETY: as above; each entry is copied once (volatile).
                let head = u16::from_le(unsafe { first.add(got).read_volatile() });
                if head >= size {
                    break;
                }
                // SAFETY: the table holds `size` 16-aligned descriptors
                // (checked in `new`) and head < size.
                let d = unsafe { self.desc.add(head as usize).read_volatile() };
                if d.flags & (DESC_F_NEXT | DESC_F_INDIRECT | DESC_F_WRITE) != want || d.len == 0 {
                    break;
                }
                if !c.take_one(&self.mem, window, (d.addr, d.len), WRITES, skip, Token { id: head, ndesc: 1 }) {
                    break;
                }
                got += 1;
            }
            n += got;
            if got < run {
                break;
            }
        }
        self.next_avail = self.next_avail.wrapping_add(n as u16);
        n
    }

    /// The avail ring's entry `ahead` places after the next one to take
    /// (unchecked: a head as the driver wrote it).
    #[inline]
    fn avail_entry(&self, ahead: u16) -> u16 {
        let slot = (self.next_avail.wrapping_add(ahead) & (self.size - 1)) as usize;
        // SAFETY: `4 + 2 * slot` is inside the avail area (slot < size) and
        // 2-aligned; the read is a volatile copy of a u16.
        unsafe { self.avail.add(4 + 2 * slot).cast::<u16>().read_volatile() }
    }

    /// True if a buffer is available, reading the driver's avail index only
    /// when the buffers seen last time are used up.
    #[inline]
    pub fn has_avail(&mut self) -> Result<bool, RingError> {
        if self.next_avail == self.avail_shadow {
            let n = self.pending()?;
            self.avail_shadow = self.next_avail.wrapping_add(n);
        }
        Ok(self.next_avail != self.avail_shadow)
    }

    /// Look-ahead for a burst of up to `max` chains: starts fetching the
    /// descriptors of the next available heads and takes ownership of the
    /// used-ring lines their completions will be written to, so the
    /// cross-core misses of the whole burst overlap instead of coming one
    /// chain at a time. A hint only: nothing is taken or validated here.
    /// Returns how many chains are available, up to `max` (the driver's
    /// index read at most once), or `None` if that index is invalid (the
    /// next pop says so).
    #[inline]
    pub fn prefetch_burst(&mut self, max: u16) -> Option<u16> {
        if self.has_avail().is_err() {
            return None;
        }
        let n = self.avail_shadow.wrapping_sub(self.next_avail).min(max);
        if n == 0 {
            return Some(0);
        }
        // What the burst's completion writes and reads last, after the
        // copies: the used index's line and, with EVENT_IDX, the driver's
        // `used_event` (read right after a fence). Asked for now, their
        // misses overlap the burst's work instead of adding to its end.
        crate::copy::prefetch_write(self.used);
        if self.event_idx {
            crate::copy::prefetch(self.avail.wrapping_add(4 + 2 * self.size as usize));
        }
        let mask = self.size - 1;
        if n == 1 {
            // One chain is walked right away: only its used line to ask for.
            crate::copy::prefetch_write(self.used.wrapping_add(4 + 8 * (self.next_used & mask) as usize));
            return Some(1);
        }
        for i in 0..n {
            let head = self.avail_entry(i);
            // Masked: a bad head is refused later by `pop_head`; the hint
            // stays inside the table.
            crate::copy::prefetch(self.desc.wrapping_add((head & mask) as usize).cast());
        }
        // Used elements are 8 bytes: one hint per 64-byte line.
        let mut k = 0;
        while k < n {
            let slot = (self.next_used.wrapping_add(k) & mask) as usize;
            crate::copy::prefetch_write(self.used.wrapping_add(4 + 8 * slot));
            k += 8 - (slot as u16 & 7);
        }
        Some(n)
    }

    /// Hint: the lines the next chain's take reads first: the avail ring's
    /// next entry and (if the buffers seen are used up) its index, and the
    /// descriptor a driver that posts in ring order (all in-order drivers)
    /// puts there. Takes and checks nothing.
    #[inline]
    pub fn prefetch_next(&self) {
        let slot = (self.next_avail & (self.size - 1)) as usize;
        if self.avail_shadow == self.next_avail {
            crate::copy::prefetch(self.avail);
        }
        crate::copy::prefetch(self.avail.wrapping_add(4 + 2 * slot));
        crate::copy::prefetch(self.desc.wrapping_add(slot).cast());
    }

    /// Hint for buffers about to be written: the first two cache lines of
    /// the buffers of the next `max` available chains (one-buffer chains
    /// only) are fetched for writing. Takes and checks nothing (a bad
    /// descriptor is refused when popped); reads only what the driver has
    /// made available (up to the avail index seen last).
    pub fn prefetch_buffers_write(&self, max: u16) {
        for d in self.avail_buffers(max) {
            if let Some(p) = self.mem.translate(d.addr, (d.len as u64).min(128)) {
                crate::copy::prefetch_write(p);
                if d.len > 64 {
                    crate::copy::prefetch_write(p.wrapping_add(64));
                }
            }
        }
    }

    /// The descriptors of the next `max` available chains that are one
    /// buffer each (as the driver wrote them, unchecked; up to the avail
    /// index seen last): what the buffer hints fetch.
    #[inline(always)]
    fn avail_buffers(&self, max: u16) -> impl Iterator<Item = Desc> + '_ {
        let n = self.avail_shadow.wrapping_sub(self.next_avail).min(max);
        let mask = self.size - 1;
        (0..n)
            .map(move |i| self.desc(self.avail_entry(i) & mask))
            .filter(|d| d.flags & (DESC_F_NEXT | DESC_F_INDIRECT) == 0)
    }

    /// Hint for the buffers of the next `count` available chains (one-buffer
    /// chains only): bytes `from..to` of each (as far as it goes) are
    /// fetched into L2 (see [`crate::Chain::prefetch_range_l2`]). Takes and
    /// checks nothing; reads only what the driver has made available (up
    /// to the avail index seen last).
    pub fn stage_buffers(&self, count: u16, from: u64, to: u64) {
        for d in self.avail_buffers(count) {
            let end = to.min(d.len as u64);
            if let Some(p) = self.mem.translate(d.addr, end) {
                crate::copy::prefetch_lines_l2(p, from.min(end) as usize, end as usize);
            }
        }
    }

    /// The next available chain, when it is one device-writable buffer of
    /// at least `need` bytes inside tenant memory: its head and where the
    /// buffer is mapped. Takes nothing ([`SplitRing::take_next`] does).
    #[inline]
    pub(crate) fn next_buffer(&mut self, need: u64) -> Option<(u16, *mut u8)> {
        if !self.has_avail().ok()? {
            return None;
        }
        let head = self.avail_entry(0);
        if head >= self.size {
            return None;
        }
        let d = self.desc(head);
        if d.flags & (DESC_F_NEXT | DESC_F_INDIRECT | DESC_F_WRITE) != DESC_F_WRITE || (d.len as u64) < need {
            return None;
        }
        let ptr = self.mem.translate(d.addr, d.len as u64)?;
        Some((head, ptr))
    }

    /// Takes the chain [`SplitRing::next_buffer`] found.
    #[inline]
    pub(crate) fn take_next(&mut self) {
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Gives back a head taken by `pop_head` that will not be used now
    /// (the destination had no room): it is taken again next time.
    pub fn unpop(&mut self, n: u16) {
        self.next_avail = self.next_avail.wrapping_sub(n);
    }

    /// Copies descriptor `index` (< size) out of the table.
    #[inline]
    pub fn desc(&self, index: u16) -> Desc {
        debug_assert!(index < self.size);
        let index = index & (self.size - 1);
        // SAFETY: the table holds `size` 16-aligned descriptors (checked in
        // `new`) and index < size; a volatile read copies it once.
        unsafe { self.desc.add(index as usize).read_volatile() }
    }

    /// Queues a used element; [`SplitRing::publish_used`] makes it visible.
    #[inline]
    pub fn push_used(&mut self, id: u16, len: u32) {
        let slot = (self.next_used & (self.size - 1)) as usize;
        // SAFETY: `4 + 8 * slot` is inside the used area (slot < size) and
        // 4-aligned; the device owns the used ring, the writes are volatile.
        unsafe {
            let elem = self.used.add(4 + 8 * slot).cast::<u32>();
            elem.write_volatile(id as u32);
            elem.add(1).write_volatile(len);
        }
        self.next_used = self.next_used.wrapping_add(1);
    }

    /// Publishes every used element queued so far.
    #[inline]
    pub fn publish_used(&mut self) {
        self.used_idx_atomic().store(self.next_used, Ordering::Release);
    }

    /// After [`SplitRing::publish_used`]: whether the driver wants an
    /// interrupt for what was published since the last one (honours
    /// `EVENT_IDX` and `NO_INTERRUPT`).
    pub fn needs_interrupt(&mut self) -> bool {
        // The used index store must be visible before we read the driver's
        // suppression fields (virtio 2.7.7.2).
        fence(Ordering::SeqCst);
        let new = self.next_used;
        if !self.event_idx {
            // SAFETY: avail flags are the first 2 bytes of the avail area.
            let flags = unsafe { self.avail.cast::<u16>().read_volatile() };
            return flags & AVAIL_F_NO_INTERRUPT == 0;
        }
        let old = self.signalled_used.replace(new);
        let Some(old) = old else { return true };
        // SAFETY: used_event sits after the avail ring, inside the
        // `6 + 2 * size` bytes checked in `new`; 2-aligned.
        let used_event = unsafe { self.avail.add(4 + 2 * self.size as usize).cast::<u16>().read_volatile() };
        // vring_need_event(): did `new` pass used_event since `old`?
        new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old)
    }

    /// Asks the driver to kick (true) or not to (false) when it publishes
    /// buffers. After enabling, re-check [`SplitRing::pending`]: buffers
    /// published just before are not kicked for.
    pub fn set_notification(&mut self, enable: bool) {
        if self.event_idx {
            if enable {
                // SAFETY: avail_event sits after the used ring, inside the
                // `6 + 8 * size` bytes checked in `new`; 2-aligned.
                unsafe { self.used.add(4 + 8 * self.size as usize).cast::<u16>().write_volatile(self.next_avail) };
            }
            // With EVENT_IDX, a stale avail_event already suppresses kicks.
        } else {
            let flags = if enable { 0 } else { USED_F_NO_NOTIFY };
            // SAFETY: used flags are the first 2 bytes of the used area.
            unsafe { self.used.cast::<u16>().write_volatile(flags) };
        }
        fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::mem::testing::memfd;
    use crate::mem::RegionSpec;

    /// A test ring of `size` at fixed offsets in a 1 MiB region whose
    /// guest-physical and front-end addresses differ.
    pub(crate) struct TestRing {
        pub mem: Arc<GuestMemory>,
        pub size: u16,
    }

    pub(crate) const GPA: u64 = 0x4000_0000;
    pub(crate) const UADDR: u64 = 0x7000_0000_0000;
    pub(crate) const DESC_OFF: u64 = 0;
    pub(crate) const AVAIL_OFF: u64 = 0x10000;
    pub(crate) const USED_OFF: u64 = 0x20000;
    pub(crate) const BUF_OFF: u64 = 0x40000;

    impl TestRing {
        pub(crate) fn new(size: u16) -> TestRing {
            let spec = RegionSpec { guest_phys_addr: GPA, memory_size: 1 << 20, userspace_addr: UADDR, mmap_offset: 0 };
            TestRing { mem: Arc::new(GuestMemory::map(&[spec], vec![memfd(1 << 20)]).unwrap()), size }
        }

        pub(crate) fn ring(&self, event_idx: bool) -> SplitRing {
            let addrs = RingAddrs { desc: UADDR + DESC_OFF, avail: UADDR + AVAIL_OFF, used: UADDR + USED_OFF };
            SplitRing::new(self.mem.clone(), self.size as u32, addrs, 0, event_idx).unwrap()
        }

        pub(crate) fn write(&self, gpa: u64, bytes: &[u8]) {
            let p = self.mem.translate(gpa, bytes.len() as u64).unwrap();
            // SAFETY: the range was translated with its length.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
        }

        pub(crate) fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
            let p = self.mem.translate(gpa, len as u64).unwrap();
            let mut v = vec![0; len];
            // SAFETY: the range was translated with its length.
            unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), len) };
            v
        }

        pub(crate) fn set_desc(&self, i: u16, d: Desc) {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&d.addr.to_le_bytes());
            b[8..12].copy_from_slice(&d.len.to_le_bytes());
            b[12..14].copy_from_slice(&d.flags.to_le_bytes());
            b[14..].copy_from_slice(&d.next.to_le_bytes());
            self.write(GPA + DESC_OFF + 16 * i as u64, &b);
        }

        /// Publishes `heads` in the avail ring starting at avail index `at`.
        pub(crate) fn publish(&self, at: u16, heads: &[u16]) {
            for (k, h) in heads.iter().enumerate() {
                let slot = (at as usize + k) % self.size as usize;
                self.write(GPA + AVAIL_OFF + 4 + 2 * slot as u64, &h.to_le_bytes());
            }
            self.write(GPA + AVAIL_OFF + 2, &(at.wrapping_add(heads.len() as u16)).to_le_bytes());
        }

        pub(crate) fn used_idx(&self) -> u16 {
            u16::from_le_bytes(self.read(GPA + USED_OFF + 2, 2).try_into().unwrap())
        }

        #[allow(dead_code)]
        pub(crate) fn used_elem(&self, slot: u16) -> (u32, u32) {
            let b = self.read(GPA + USED_OFF + 4 + 8 * slot as u64, 8);
            (u32::from_le_bytes(b[..4].try_into().unwrap()), u32::from_le_bytes(b[4..].try_into().unwrap()))
        }

        pub(crate) fn set_used_event(&self, v: u16) {
            self.write(GPA + AVAIL_OFF + 4 + 2 * self.size as u64, &v.to_le_bytes());
        }

        pub(crate) fn avail_event(&self) -> u16 {
            u16::from_le_bytes(self.read(GPA + USED_OFF + 4 + 8 * self.size as u64, 2).try_into().unwrap())
        }
    }

    #[test]
    fn refuses_bad_sizes_and_addresses() {
        let t = TestRing::new(8);
        let good = RingAddrs { desc: UADDR, avail: UADDR + AVAIL_OFF, used: UADDR + USED_OFF };
        for size in [0, 3, 65536] {
            assert_eq!(SplitRing::new(t.mem.clone(), size, good, 0, false).unwrap_err(), RingError::Size(size));
        }
        let outside = RingAddrs { desc: UADDR + (1 << 20) - 16, ..good };
        assert!(SplitRing::new(t.mem.clone(), 8, outside, 0, false).is_err());
        let gpa_not_uaddr = RingAddrs { desc: GPA, ..good };
        assert!(SplitRing::new(t.mem.clone(), 8, gpa_not_uaddr, 0, false).is_err());
        let misaligned = RingAddrs { used: UADDR + USED_OFF + 2, ..good };
        assert_eq!(SplitRing::new(t.mem.clone(), 8, misaligned, 0, false).unwrap_err(), RingError::Addr("used"));
    }

    #[test]
    fn pops_in_order_across_wraparound() {
        let t = TestRing::new(4);
        let mut r = t.ring(false);
        let mut at = 0u16;
        for round in 0..10u16 {
            let heads = [round % 4, (round + 1) % 4];
            t.publish(at, &heads);
            assert_eq!(r.pending().unwrap(), 2);
            assert_eq!(r.pop_head().unwrap(), heads[0]);
            assert_eq!(r.pop_head().unwrap(), heads[1]);
            r.push_used(heads[0], 10);
            r.push_used(heads[1], 20);
            r.publish_used();
            at = at.wrapping_add(2);
            assert_eq!(t.used_idx(), at);
        }
    }

    #[test]
    fn pop_simple_takes_only_common_chains_and_stops_where_the_walk_must_look() {
        let t = TestRing::new(8);
        let mut r = t.ring(false);
        let mut cs: Vec<Chain> = (0..8).map(|_| Chain::default()).collect();
        let b = |k: u64| GPA + BUF_OFF + 4096 * k;
        let (rd, wr) = (Access::DeviceReads, Access::DeviceWrites);
        t.set_desc(0, Desc { addr: b(0), len: 64, flags: 0, next: 0 });
        t.set_desc(1, Desc { addr: b(1), len: 100, flags: 0, next: 0 });
        t.set_desc(2, Desc { addr: b(2), len: 10, flags: DESC_F_NEXT, next: 3 });
        t.set_desc(3, Desc { addr: b(3), len: 20, flags: 0, next: 0 });
        t.set_desc(4, Desc { addr: b(4), len: 30, flags: 0, next: 0 });
        t.publish(0, &[1, 0, 2, 4]);
        assert_eq!(r.pop_simple(&mut cs, rd), 2);
        assert_eq!((cs[0].head(), cs[0].len(), cs[0].readable_len(), cs[1].head()), (1, 100, 100, 0));
        assert_eq!(r.pop_simple(&mut cs, rd), 0, "a chain of two is the walk's");
        let head = r.pop_head().unwrap();
        cs[2].walk(&r, head, rd, false).unwrap();
        assert_eq!((head, cs[2].len()), (2, 30));
        // Control queues (mixed access) are always walked.
        assert_eq!(r.pop_simple(&mut cs[3..], Access::Mixed), 0);
        assert_eq!(r.pop_simple(&mut cs[3..], rd), 1);
        assert_eq!(cs[3].head(), 4);
        assert_eq!(r.pop_simple(&mut cs, rd), 0, "nothing more available");

        // Each malformed one-buffer chain (or an empty buffer): nothing
        // taken, the ring not moved; pop_head and the walk then have it.
        for (d, head, access) in [
            (Desc { addr: b(0), len: 64, flags: DESC_F_WRITE, next: 0 }, 5, rd),
            (Desc { addr: b(0), len: 64, flags: 0, next: 0 }, 5, wr),
            (Desc { addr: 0x1000, len: 64, flags: 0, next: 0 }, 5, rd),
            (Desc { addr: b(0), len: 0, flags: 0, next: 0 }, 5, rd),
            (Desc { addr: b(0), len: 64, flags: 0, next: 0 }, 9, rd),
        ] {
            let t = TestRing::new(8);
            let mut r = t.ring(false);
            t.set_desc(5, d);
            t.publish(0, &[head]);
            assert_eq!(r.pop_simple(&mut cs, access), 0, "{d:?}");
            assert_eq!(r.pending(), Ok(1));
        }
        // An avail index running ahead of the ring: nothing taken; the
        // index check reports it.
        let t = TestRing::new(8);
        let mut r = t.ring(false);
        t.set_desc(0, Desc { addr: b(0), len: 64, flags: 0, next: 0 });
        t.write(GPA + AVAIL_OFF + 2, &9u16.to_le_bytes());
        assert_eq!(r.pop_simple(&mut cs, rd), 0);
        assert_eq!(r.pending(), Err(RingError::AvailIndex(9)));
    }

    #[test]
    fn pop_simple_bursts_run_across_the_avail_wrap() {
        // Bursts of 3 over a ring of 4: most bursts read avail entries on
        // both sides of the ring's end; each chain comes out once, in the
        // order published, with its buffer.
        let t = TestRing::new(4);
        let mut r = t.ring(false);
        let mut cs: Vec<Chain> = (0..3).map(|_| Chain::default()).collect();
        let b = |k: u64| GPA + BUF_OFF + 4096 * k;
        for d in 0..4u16 {
            t.set_desc(d, Desc { addr: b(d as u64), len: 64 + d as u32, flags: 0, next: 0 });
        }
        let mut at = 0u16;
        for round in 0..12u16 {
            let heads = [round % 4, (round + 2) % 4, (round + 1) % 4];
            t.publish(at, &heads);
            assert_eq!(r.pop_simple(&mut cs, Access::DeviceReads), 3, "round {round}");
            for (c, &h) in cs.iter().zip(&heads) {
                assert_eq!((c.head(), c.len()), (h, 64 + h as u64));
                assert_eq!(c.segments()[0].ptr, t.mem.translate(b(h as u64), 1).unwrap());
                r.push_used(h, 0);
            }
            r.publish_used();
            at = at.wrapping_add(3);
            assert_eq!(r.pop_simple(&mut cs, Access::DeviceReads), 0);
        }
    }

    #[test]
    fn refuses_runaway_avail_index_and_head() {
        let t = TestRing::new(4);
        let mut r = t.ring(false);
        t.write(GPA + AVAIL_OFF + 2, &5u16.to_le_bytes());
        assert_eq!(r.pending(), Err(RingError::AvailIndex(5)));
        t.publish(0, &[9]);
        assert_eq!(r.pending(), Ok(1));
        assert_eq!(r.pop_head(), Err(RingError::HeadIndex(9)));
    }

    #[test]
    fn event_idx_interrupt_suppression() {
        let t = TestRing::new(8);
        let mut r = t.ring(true);
        r.push_used(0, 1);
        r.publish_used();
        assert!(r.needs_interrupt(), "first completion always interrupts");
        // Driver wants an interrupt only once used idx passes 3.
        t.set_used_event(3);
        r.push_used(1, 1);
        r.publish_used(); // used idx 2
        assert!(!r.needs_interrupt());
        r.push_used(2, 1);
        r.push_used(3, 1);
        r.publish_used(); // used idx 4 passes 3
        assert!(r.needs_interrupt());
    }

    #[test]
    fn no_interrupt_flag_without_event_idx() {
        let t = TestRing::new(8);
        let mut r = t.ring(false);
        r.push_used(0, 1);
        r.publish_used();
        assert!(r.needs_interrupt());
        t.write(GPA + AVAIL_OFF, &1u16.to_le_bytes());
        assert!(!r.needs_interrupt());
    }

    #[test]
    fn kick_suppression_both_modes() {
        let t = TestRing::new(8);
        let mut r = t.ring(false);
        r.set_notification(false);
        assert_eq!(t.read(GPA + USED_OFF, 2), 1u16.to_le_bytes());
        r.set_notification(true);
        assert_eq!(t.read(GPA + USED_OFF, 2), 0u16.to_le_bytes());
        let mut r = t.ring(true);
        t.publish(0, &[1, 2, 3]);
        for _ in 0..3 {
            r.pop_head().unwrap();
        }
        r.set_notification(true);
        assert_eq!(t.avail_event(), 3);
    }
}
