//! Descriptor chains: a chain's buffers, translated into host segments.
//!
//! Walking is bounded: a chain may visit at most as many descriptors as its
//! table holds (a loop is an error, not a hang), lengths are checked for
//! overflow, every buffer must lie inside the memory table, and every buffer
//! must have the permission the direction needs (the device only reads TX
//! buffers and only writes RX buffers).
//!
//! [`Chain::walk`] follows a split ring's `next` links; a packed ring's
//! chains (consecutive descriptors) are walked by
//! [`crate::packed::PackedRing::pop_chain`], which uses the same buffer,
//! segment and indirect-table checks from here.

use std::sync::Arc;

use thiserror::Error;
use vfnic_types::ErrorKind;

use crate::mem::{GuestMemory, Window};
use crate::packed::Token;
use crate::ring::{Desc, SplitRing, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

/// Most host segments one chain may have (after merging adjacent buffers).
/// A Linux TSO frame uses at most 19 descriptors.
pub const MAX_CHAIN_SEGMENTS: usize = 64;
/// Most descriptors an indirect table may hold.
pub const MAX_INDIRECT: u32 = 1024;

/// What the device does with a chain's buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// TX: the device reads; a device-writable buffer is an error.
    DeviceReads,
    /// RX: the device writes; a read-only buffer is an error (it is never
    /// written).
    DeviceWrites,
    /// Control queue: device-readable buffers (the command), then
    /// device-writable ones (the ack). A readable buffer after a writable
    /// one is an error; [`Chain::readable_len`] says where the writable
    /// part starts.
    Mixed,
}

/// A malformed chain.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ChainError {
    /// A buffer outside the memory table.
    #[error("Descriptor buffer outside tenant memory")]
    OutOfBounds,
    /// More descriptors than the table holds: the chain loops.
    #[error("Descriptor chain loops or is longer than its table")]
    Loop,
    /// A `next` index beyond the table.
    #[error("Descriptor index beyond the table")]
    Index,
    /// A length that overflows, a bad indirect table, or too many segments.
    #[error("Descriptor length or indirect table invalid")]
    Length,
    /// A buffer with the wrong direction.
    #[error("Descriptor permission does not match the queue direction")]
    Permission,
}

impl ChainError {
    /// The counter this fault is reported under.
    pub fn kind(self) -> ErrorKind {
        match self {
            ChainError::OutOfBounds => ErrorKind::DescOutOfBounds,
            ChainError::Loop => ErrorKind::ChainLoop,
            ChainError::Index => ErrorKind::DescIndexInvalid,
            ChainError::Length => ErrorKind::DescLengthInvalid,
            ChainError::Permission => ErrorKind::DescPermission,
        }
    }
}

/// Follows `next` links from `idx` for at most `budget` more steps: true if
/// the chain does not end within them (it loops).
fn loops(ring: &SplitRing, mut idx: u16, budget: u16) -> bool {
    for _ in 0..=budget {
        let d = ring.desc(idx);
        if d.flags & DESC_F_NEXT == 0 || d.next >= ring.size() {
            return false;
        }
        idx = d.next;
    }
    true
}

/// A contiguous piece of a buffer in host memory.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    pub(crate) ptr: *mut u8,
    pub(crate) len: u32,
}

impl Segment {
    const EMPTY: Segment = Segment { ptr: std::ptr::null_mut(), len: 0 };

    /// Length in bytes.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// True for a zero-length segment.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A walked chain: its head (for the used ring) and its buffers. Reused from
/// packet to packet, so walking allocates nothing.
pub struct Chain {
    head: u16,
    /// Ring descriptors the chain took (packed rings; 1 for split rings).
    ndesc: u16,
    segs: [Segment; MAX_CHAIN_SEGMENTS],
    n: usize,
    len: u64,
    /// Bytes of the device-readable prefix (all of a TX chain, none of an
    /// RX chain; the command of a control-queue chain).
    readable: u64,
    /// Keeps the segments' memory mapped while the chain is in use; cloned
    /// only when the ring's memory table changed.
    mem: Option<Arc<GuestMemory>>,
    /// Where `mem` points (null for none): what [`Chain::adopt`] compares.
    mem_key: *const GuestMemory,
}

// SAFETY: the segment pointers point into `mem`, which the chain keeps
// alive; a chain is only used by the thread that owns it.
unsafe impl Send for Chain {}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            head: 0,
            ndesc: 1,
            segs: [Segment::EMPTY; MAX_CHAIN_SEGMENTS],
            n: 0,
            len: 0,
            readable: 0,
            mem: None,
            mem_key: std::ptr::null(),
        }
    }
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain").field("head", &self.head).field("segments", &self.n).field("len", &self.len).finish()
    }
}

impl Chain {
    /// Head descriptor index (what goes into the used ring).
    pub fn head(&self) -> u16 {
        self.head
    }

    /// For a chain taken from a packed ring: its buffer id (same as
    /// [`Chain::head`]) and how many ring descriptors it took, i.e. what
    /// [`crate::packed::PackedRing::push_used`] needs. Meaningless for a
    /// split ring's chain.
    pub fn token(&self) -> Token {
        Token { id: self.head, ndesc: self.ndesc }
    }

    /// Total bytes of the chain's buffers.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when the chain has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of the device-readable prefix: the whole chain for
    /// [`Access::DeviceReads`], 0 for [`Access::DeviceWrites`], the command
    /// part for [`Access::Mixed`] (the rest is device-writable).
    pub fn readable_len(&self) -> u64 {
        self.readable
    }

    /// Starts fetching the chain's first two cache lines (the virtio-net and
    /// Ethernet headers the engine reads next, or the buffer it writes), so
    /// the cross-core cache miss overlaps other work.
    #[inline]
    pub fn prefetch(&self) {
        self.prefetch_for(false);
    }

    /// [`Chain::prefetch`], for writing if `write` (an RX buffer the
    /// engine writes next: its lines are asked for in exclusive state,
    /// which saves the second miss of a read followed by a write).
    #[inline]
    pub fn prefetch_for(&self, write: bool) {
        if let Some(s) = self.segs[..self.n].first() {
            crate::copy::prefetch_for(s.ptr, write);
            if s.len > 64 {
                crate::copy::prefetch_for(s.ptr.wrapping_add(64), write);
            }
        }
    }

    /// Starts fetching bytes `from..to` of the chain's first segment (as
    /// far as it goes), a cache line at a time, for writing if `write`: a
    /// large frame the engine copies next (its source lines, or the RX
    /// buffer it is written to), so its lines are on their way while the
    /// one before is copied.
    #[inline]
    pub fn prefetch_range(&self, from: u64, to: u64, write: bool) {
        if let Some(s) = self.segs[..self.n].first() {
            let mut off = from.min(s.len as u64) as usize;
            let end = to.min(s.len as u64) as usize;
            while off < end {
                crate::copy::prefetch_for(s.ptr.wrapping_add(off), write);
                off += 64;
            }
        }
    }

    /// Starts fetching bytes `from..to` of the chain's first segment (as
    /// far as it goes) into the core's L2 cache, a line at a time: an RX
    /// buffer a few frames before it is written, whose lines may have to
    /// come from DRAM (see `engine::deliver::deliver_plain`). [`Chain::prefetch_range`]
    /// fetches them into L1 nearer the time.
    #[inline]
    pub fn prefetch_range_l2(&self, from: u64, to: u64) {
        if let Some(s) = self.segs[..self.n].first() {
            let end = to.min(s.len as u64) as usize;
            crate::copy::prefetch_lines_l2(s.ptr, from.min(end as u64) as usize, end);
        }
    }

    /// The translated segments.
    pub fn segments(&self) -> &[Segment] {
        &self.segs[..self.n]
    }

    /// True if the chain's memory table was revoked (a SIGBUS was contained
    /// in it): its bytes may be zeros instead of the tenant's data.
    #[inline]
    pub fn revoked(&self) -> bool {
        self.mem.as_ref().is_some_and(|m| m.revoked())
    }

    /// Forgets the segments and lets go of the memory table they were in
    /// (so a departed tenant's memory is unmapped promptly).
    pub fn release(&mut self) {
        self.n = 0;
        self.len = 0;
        self.readable = 0;
        self.mem = None;
        self.mem_key = std::ptr::null();
    }

    /// Walks the chain starting at `head` of `ring`. On error the chain is
    /// left empty (its head is still set, so it can be returned with len 0).
    #[inline]
    pub fn walk(&mut self, ring: &SplitRing, head: u16, access: Access, indirect_ok: bool) -> Result<(), ChainError> {
        self.start(ring.mem(), head, 1);
        let d = ring.desc(head);
        if d.flags & (DESC_F_NEXT | DESC_F_INDIRECT) == 0 && self.single(ring.mem(), d.addr, d.len, d.flags, access) {
            return Ok(());
        }
        let r = self.walk_inner(ring, head, access, indirect_ok);
        if r.is_err() {
            self.clear();
        }
        r
    }

    /// Empties the chain and points it at `mem` (cloning the Arc only when
    /// the memory table changed), ready to take buffers.
    #[inline]
    pub(crate) fn start(&mut self, mem: &Arc<GuestMemory>, head: u16, ndesc: u16) {
        self.head = head;
        self.ndesc = ndesc;
        self.n = 0;
        self.len = 0;
        self.readable = 0;
        self.adopt(mem);
    }

    /// Points the chain at `mem`, cloning the Arc only when the memory
    /// table changed.
    #[inline(always)]
    fn adopt(&mut self, mem: &Arc<GuestMemory>) {
        if self.mem_key != Arc::as_ptr(mem) {
            self.adopt_other(mem);
        }
    }

    /// [`Chain::adopt`]'s rare case, out of the pop loops (which then keep
    /// their registers for the common one).
    #[cold]
    #[inline(never)]
    fn adopt_other(&mut self, mem: &Arc<GuestMemory>) {
        self.mem = Some(mem.clone());
        self.mem_key = Arc::as_ptr(mem);
    }

    /// Makes `ptr` of `len` bytes the chain's only segment (device-readable
    /// unless `writable`).
    #[inline(always)]
    fn set_one(&mut self, ptr: *mut u8, len: u32, writable: bool) {
        self.segs[0] = Segment { ptr, len };
        self.n = 1;
        self.len = len as u64;
        self.readable = if writable { 0 } else { len as u64 };
    }

    /// The common chain of one buffer that lies in one region: takes it as
    /// the chain's only segment and returns true if it has the permission
    /// `access` needs and is not empty; anything else (false) is left to
    /// the general walk, which takes it or says what is wrong. The chain
    /// must have just been started.
    #[inline]
    pub(crate) fn single(&mut self, mem: &GuestMemory, addr: u64, len: u32, flags: u16, access: Access) -> bool {
        let writable = flags & DESC_F_WRITE != 0;
        if !self.allows(access, writable) || len == 0 {
            return false;
        }
        match mem.translate(addr, len as u64) {
            Some(ptr) => {
                self.set_one(ptr, len, writable);
                true
            }
            None => false,
        }
    }

    /// Takes the one buffer at `addr` of `len` bytes (its permission
    /// checked by the caller: device-writable if `writes`) as the whole
    /// chain, taken as `token`, if it lies inside one region (`window`
    /// tried first, then the rest of `mem`), and starts fetching its first
    /// lines; false, with the chain untouched, if it does not.
    /// [`Chain::start`] and [`Chain::single`] in one, for the rings'
    /// `pop_simple`.
    #[inline(always)]
    pub(crate) fn take_one(
        &mut self,
        mem: &Arc<GuestMemory>,
        window: Window,
        (addr, len): (u64, u32),
        writes: bool,
        skip: u8,
        token: Token,
    ) -> bool {
        let ptr = match window.translate(addr, len as u64) {
            Some(ptr) => ptr,
            None => match translate_elsewhere(mem, addr, len) {
                Some(ptr) => ptr,
                None => return false,
            },
        };
        self.adopt(mem);
        self.set_token(token);
        self.set_one(ptr, len, writes);
        // The first lines to be read (or written), past a header that is
        // not read: a line left alone stays in the driver's cache, where
        // its next write finds it. (A hint: a buffer too short for a frame
        // after its header points it at a line not read; nothing faults.)
        let first = ptr.wrapping_add(skip as usize);
        crate::copy::prefetch_for(first, writes);
        if len > skip as u32 + 64 {
            crate::copy::prefetch_for(first.wrapping_add(64), writes);
        }
        true
    }

    /// Forgets the segments taken so far (a walk failed).
    pub(crate) fn clear(&mut self) {
        self.n = 0;
        self.len = 0;
        self.readable = 0;
    }

    /// Sets what [`Chain::token`] returns (a packed walk succeeded, or a
    /// one-buffer chain was taken).
    pub(crate) fn set_token(&mut self, t: Token) {
        self.head = t.id;
        self.ndesc = t.ndesc;
    }

    /// Adds one buffer of a packed ring's descriptor (`flags` in the packed
    /// layout; only `DESC_F_WRITE` is looked at), with the same checks as a
    /// split ring's buffers.
    pub(crate) fn add_packed(
        &mut self,
        mem: &GuestMemory,
        addr: u64,
        len: u32,
        flags: u16,
        access: Access,
    ) -> Result<(), ChainError> {
        self.add_buffer(mem, Desc { addr, len, flags: flags & DESC_F_WRITE, next: 0 }, access)
    }

    /// Walks a packed ring's indirect table at `addr` of `len` bytes: every
    /// 16-byte `pvirtq_desc` in it, in order (the table has no `next`
    /// links; flags other than `DESC_F_WRITE` and the buffer ids are
    /// reserved there and ignored, as the spec says).
    pub(crate) fn walk_packed_indirect(
        &mut self,
        mem: &GuestMemory,
        addr: u64,
        len: u32,
        access: Access,
    ) -> Result<(), ChainError> {
        if len == 0 || len % 16 != 0 || len / 16 > MAX_INDIRECT {
            return Err(ChainError::Length);
        }
        let base = mem.translate(addr, len as u64).ok_or(ChainError::OutOfBounds)?;
        for i in 0..(len / 16) as usize {
            // SAFETY: i < len / 16, so the 16 bytes at base + 16 * i lie in
            // the table translated with its whole length above. The table
            // need not be aligned, hence unaligned reads; each field is
            // copied out once and only the copies are used.
            let (a, l, f) = unsafe {
                let d = base.add(16 * i);
                (
                    d.cast::<u64>().read_unaligned(),
                    d.add(8).cast::<u32>().read_unaligned(),
                    d.add(14).cast::<u16>().read_unaligned(),
                )
            };
            self.add_packed(mem, u64::from_le(a), u32::from_le(l), u16::from_le(f), access)?;
        }
        Ok(())
    }

    fn walk_inner(&mut self, ring: &SplitRing, head: u16, access: Access, indirect_ok: bool) -> Result<(), ChainError> {
        let mem = ring.mem();
        let size = ring.size();
        let mut idx = head;
        let mut visited = 0u16;
        loop {
            if visited == size {
                return Err(ChainError::Loop);
            }
            visited += 1;
            let d = ring.desc(idx);
            if d.flags & DESC_F_INDIRECT != 0 {
                if !indirect_ok || d.flags & DESC_F_NEXT != 0 {
                    return Err(ChainError::Length);
                }
                return self.walk_indirect(mem, d, access);
            }
            if let Err(e) = self.add_buffer(mem, d, access) {
                // Out of segments: tell a loop from a long chain by
                // following the links alone (bounded by the table size).
                return Err(if e == ChainError::Length && loops(ring, idx, size - visited) {
                    ChainError::Loop
                } else {
                    e
                });
            }
            if d.flags & DESC_F_NEXT == 0 {
                return Ok(());
            }
            if d.next >= size {
                return Err(ChainError::Index);
            }
            idx = d.next;
        }
    }

    fn walk_indirect(&mut self, mem: &GuestMemory, table: Desc, access: Access) -> Result<(), ChainError> {
        if table.len == 0 || table.len % 16 != 0 || table.len / 16 > MAX_INDIRECT {
            return Err(ChainError::Length);
        }
        let count = (table.len / 16) as u16;
        let base = mem.translate(table.addr, table.len as u64).ok_or(ChainError::OutOfBounds)?;
        let mut idx = 0u16;
        for _ in 0..count {
            // SAFETY: idx < count, so the 16 bytes at base + 16 * idx lie in
            // the table translated with its whole length above. The table
            // need not be 16-aligned, hence the unaligned read (one copy).
            let d: Desc = unsafe { base.add(16 * idx as usize).cast::<Desc>().read_unaligned() };
            if d.flags & DESC_F_INDIRECT != 0 {
                return Err(ChainError::Length);
            }
            self.add_buffer(mem, d, access)?;
            if d.flags & DESC_F_NEXT == 0 {
                return Ok(());
            }
            if d.next >= count {
                return Err(ChainError::Index);
            }
            idx = d.next;
        }
        Err(ChainError::Loop)
    }

    fn add_buffer(&mut self, mem: &GuestMemory, d: Desc, access: Access) -> Result<(), ChainError> {
        let writable = d.flags & DESC_F_WRITE != 0;
        if !self.allows(access, writable) {
            return Err(ChainError::Permission);
        }
        if d.addr.checked_add(d.len as u64).is_none() {
            return Err(ChainError::Length);
        }
        let mut addr = d.addr;
        let mut left = d.len as u64;
        while left > 0 {
            let (ptr, avail) = mem.translate_partial(addr).ok_or(ChainError::OutOfBounds)?;
            let take = left.min(avail) as u32;
            self.push_segment(ptr, take)?;
            addr += take as u64;
            left -= take as u64;
        }
        if !writable {
            self.readable = self.len;
        }
        Ok(())
    }

    /// May the next buffer be `writable` (or not) for `access`?
    #[inline]
    fn allows(&self, access: Access, writable: bool) -> bool {
        match access {
            Access::DeviceReads => !writable,
            Access::DeviceWrites => writable,
            // Readable buffers only before the first writable one.
            Access::Mixed => writable || self.readable == self.len,
        }
    }

    fn push_segment(&mut self, ptr: *mut u8, len: u32) -> Result<(), ChainError> {
        self.len += len as u64;
        if let Some(last) = self.n.checked_sub(1).map(|i| &mut self.segs[i]) {
            if last.ptr.wrapping_add(last.len as usize) == ptr && last.len.checked_add(len).is_some() {
                last.len += len;
                return Ok(());
            }
        }
        if self.n == MAX_CHAIN_SEGMENTS {
            return Err(ChainError::Length);
        }
        self.segs[self.n] = Segment { ptr, len };
        self.n += 1;
        Ok(())
    }
}

/// [`Chain::take_one`]'s buffer outside the first region: looked up in
/// all of `mem`, out of the pop loops.
#[cold]
#[inline(never)]
fn translate_elsewhere(mem: &GuestMemory, addr: u64, len: u32) -> Option<*mut u8> {
    mem.translate(addr, len as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::tests::{TestRing, BUF_OFF, GPA};

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> Desc {
        Desc { addr, len, flags, next }
    }

    #[test]
    fn walks_a_two_buffer_chain() {
        let t = TestRing::new(8);
        let r = t.ring(false);
        t.set_desc(0, d(GPA + BUF_OFF, 12, DESC_F_NEXT, 3));
        t.set_desc(3, d(GPA + BUF_OFF + 4096, 100, 0, 0));
        let mut c = Chain::default();
        c.walk(&r, 0, Access::DeviceReads, false).unwrap();
        assert_eq!(c.len(), 112);
        assert_eq!(c.segments().len(), 2);
    }

    #[test]
    fn a_chain_holds_the_table_of_its_buffers_and_lets_go_on_release() {
        // take_one compares table addresses; after release the chain holds
        // nothing and takes the table again (a new table may reuse a freed
        // one's address: it must never be taken for the one let go).
        let t = TestRing::new(8);
        let mut c = Chain::default();
        let token = Token { id: 0, ndesc: 1 };
        let take = |c: &mut Chain| c.take_one(&t.mem, t.mem.first_window(), (GPA + BUF_OFF, 64), false, 0, token);
        assert_eq!(Arc::strong_count(&t.mem), 1);
        assert!(take(&mut c));
        assert_eq!(Arc::strong_count(&t.mem), 2);
        assert!(take(&mut c), "the same table: not cloned again");
        assert_eq!(Arc::strong_count(&t.mem), 2);
        c.release();
        assert_eq!(Arc::strong_count(&t.mem), 1);
        assert!(take(&mut c));
        assert_eq!(Arc::strong_count(&t.mem), 2, "taken again after release");
        // A buffer outside the first region's window: looked up in all of
        // the table (none here), and the chain left as it was.
        assert!(!c.take_one(&t.mem, t.mem.first_window(), (0x1000, 64), false, 0, token));
        assert_eq!(c.len(), 64);
    }

    #[test]
    fn a_single_buffer_chain_replaces_what_the_chain_held() {
        let t = TestRing::new(8);
        let r = t.ring(false);
        t.set_desc(0, d(GPA + BUF_OFF, 12, DESC_F_NEXT, 3));
        t.set_desc(3, d(GPA + BUF_OFF + 4096, 100, 0, 0));
        t.set_desc(1, d(GPA + BUF_OFF + 8192, 60, 0, 0));
        t.set_desc(2, d(GPA + BUF_OFF, 0, 0, 0));
        let mut c = Chain::default();
        c.walk(&r, 0, Access::DeviceReads, false).unwrap();
        c.walk(&r, 1, Access::DeviceReads, false).unwrap();
        assert_eq!((c.head(), c.len(), c.readable_len(), c.segments().len()), (1, 60, 60, 1));
        // An empty buffer is a chain of no segments, as the general walk
        // makes it.
        c.walk(&r, 2, Access::DeviceReads, false).unwrap();
        assert_eq!((c.len(), c.segments().len()), (0, 0));
        t.set_desc(1, d(GPA + BUF_OFF + 8192, 60, DESC_F_WRITE, 0));
        c.walk(&r, 1, Access::DeviceWrites, false).unwrap();
        assert_eq!((c.len(), c.readable_len()), (60, 0));
    }

    #[test]
    fn merges_adjacent_buffers() {
        let t = TestRing::new(8);
        let r = t.ring(false);
        t.set_desc(0, d(GPA + BUF_OFF, 12, DESC_F_NEXT, 1));
        t.set_desc(1, d(GPA + BUF_OFF + 12, 60, 0, 0));
        let mut c = Chain::default();
        c.walk(&r, 0, Access::DeviceReads, false).unwrap();
        assert_eq!(c.segments().len(), 1);
        assert_eq!(c.len(), 72);
    }

    #[test]
    fn detects_loops() {
        let t = TestRing::new(8);
        let r = t.ring(false);
        t.set_desc(0, d(GPA + BUF_OFF, 10, DESC_F_NEXT, 1));
        t.set_desc(1, d(GPA + BUF_OFF + 100, 10, DESC_F_NEXT, 0));
        let mut c = Chain::default();
        assert_eq!(c.walk(&r, 0, Access::DeviceReads, false), Err(ChainError::Loop));
        assert!(c.is_empty());
        // A self-loop too.
        t.set_desc(2, d(GPA + BUF_OFF, 10, DESC_F_NEXT, 2));
        assert_eq!(c.walk(&r, 2, Access::DeviceReads, false), Err(ChainError::Loop));
    }

    #[test]
    fn refuses_out_of_bounds_and_overflow() {
        let t = TestRing::new(8);
        let r = t.ring(false);
        let mut c = Chain::default();
        t.set_desc(0, d(0x1000, 64, 0, 0));
        assert_eq!(c.walk(&r, 0, Access::DeviceReads, false), Err(ChainError::OutOfBounds));
        t.set_desc(0, d(GPA + (1 << 20) - 8, 64, 0, 0));
        assert_eq!(c.walk(&r, 0, Access::DeviceReads, false), Err(ChainError::OutOfBounds));
        t.set_desc(0, d(u64::MAX - 4, 64, 0, 0));
        assert_eq!(c.walk(&r, 0, Access::DeviceReads, false), Err(ChainError::Length));
        t.set_desc(0, d(GPA, 8, DESC_F_NEXT, 8));
        assert_eq!(c.walk(&r, 0, Access::DeviceReads, false), Err(ChainError::Index));
    }

    #[test]
    fn enforces_direction() {
        let t = TestRing::new(8);
        let r = t.ring(false);
        let mut c = Chain::default();
        t.set_desc(0, d(GPA + BUF_OFF, 64, 0, 0));
        assert_eq!(c.walk(&r, 0, Access::DeviceWrites, false), Err(ChainError::Permission));
        t.set_desc(0, d(GPA + BUF_OFF, 64, DESC_F_WRITE, 0));
        assert_eq!(c.walk(&r, 0, Access::DeviceReads, false), Err(ChainError::Permission));
        assert!(c.walk(&r, 0, Access::DeviceWrites, false).is_ok());
    }

    #[test]
    fn mixed_chains_take_a_readable_prefix_then_writable_buffers() {
        let t = TestRing::new(8);
        let r = t.ring(false);
        let mut c = Chain::default();
        t.set_desc(0, d(GPA + BUF_OFF, 2, DESC_F_NEXT, 1));
        t.set_desc(1, d(GPA + BUF_OFF + 100, 6, DESC_F_NEXT, 2));
        t.set_desc(2, d(GPA + BUF_OFF + 200, 1, DESC_F_WRITE, 0));
        c.walk(&r, 0, Access::Mixed, false).unwrap();
        assert_eq!((c.len(), c.readable_len()), (9, 8));
        // Readable after writable: refused, chain left empty.
        t.set_desc(0, d(GPA + BUF_OFF, 2, DESC_F_WRITE | DESC_F_NEXT, 1));
        t.set_desc(1, d(GPA + BUF_OFF + 100, 6, 0, 0));
        assert_eq!(c.walk(&r, 0, Access::Mixed, false), Err(ChainError::Permission));
        assert_eq!((c.len(), c.readable_len()), (0, 0));
        // All-readable and all-writable chains are both well formed.
        t.set_desc(0, d(GPA + BUF_OFF, 2, 0, 0));
        c.walk(&r, 0, Access::Mixed, false).unwrap();
        assert_eq!(c.readable_len(), 2);
        t.set_desc(0, d(GPA + BUF_OFF, 2, DESC_F_WRITE, 0));
        c.walk(&r, 0, Access::Mixed, false).unwrap();
        assert_eq!(c.readable_len(), 0);
        // The other walks report their prefix too.
        t.set_desc(0, d(GPA + BUF_OFF, 5, 0, 0));
        c.walk(&r, 0, Access::DeviceReads, false).unwrap();
        assert_eq!(c.readable_len(), 5);
    }

    #[test]
    fn indirect_tables() {
        let t = TestRing::new(8);
        let r = t.ring(false);
        let table = GPA + BUF_OFF + 8192 + 8; // deliberately not 16-aligned
        let enc = |x: Desc| {
            let mut b = Vec::new();
            b.extend_from_slice(&x.addr.to_le_bytes());
            b.extend_from_slice(&x.len.to_le_bytes());
            b.extend_from_slice(&x.flags.to_le_bytes());
            b.extend_from_slice(&x.next.to_le_bytes());
            b
        };
        let mut bytes = enc(d(GPA + BUF_OFF, 12, DESC_F_NEXT, 1));
        bytes.extend(enc(d(GPA + BUF_OFF + 512, 100, 0, 0)));
        t.write(table, &bytes);
        t.set_desc(0, d(table, 32, DESC_F_INDIRECT, 0));
        let mut c = Chain::default();
        assert_eq!(c.walk(&r, 0, Access::DeviceReads, false), Err(ChainError::Length), "not negotiated");
        c.walk(&r, 0, Access::DeviceReads, true).unwrap();
        assert_eq!(c.len(), 112);
        // A loop inside the table.
        let mut looping = enc(d(GPA + BUF_OFF, 12, DESC_F_NEXT, 1));
        looping.extend(enc(d(GPA + BUF_OFF, 12, DESC_F_NEXT, 0)));
        t.write(table, &looping);
        assert_eq!(c.walk(&r, 0, Access::DeviceReads, true), Err(ChainError::Loop));
        // Bad table sizes.
        t.set_desc(0, d(table, 20, DESC_F_INDIRECT, 0));
        assert_eq!(c.walk(&r, 0, Access::DeviceReads, true), Err(ChainError::Length));
        t.set_desc(0, d(table, 32, DESC_F_INDIRECT | DESC_F_NEXT, 1));
        assert_eq!(c.walk(&r, 0, Access::DeviceReads, true), Err(ChainError::Length));
    }

    #[test]
    fn loop_is_a_loop_even_past_the_segment_limit() {
        let t = TestRing::new(256);
        let r = t.ring(false);
        t.set_desc(0, d(GPA + BUF_OFF, 64, DESC_F_NEXT, 1));
        t.set_desc(1, d(GPA + BUF_OFF + 4096, 64, DESC_F_NEXT, 0));
        let mut c = Chain::default();
        assert_eq!(c.walk(&r, 0, Access::DeviceReads, false), Err(ChainError::Loop));
    }

    #[test]
    fn too_many_segments_is_an_error_not_an_overflow() {
        let t = TestRing::new(256);
        let r = t.ring(false);
        for i in 0..100u16 {
            // Non-adjacent buffers so they do not merge.
            t.set_desc(i, d(GPA + BUF_OFF + 64 * i as u64, 8, DESC_F_NEXT, i + 1));
        }
        t.set_desc(100, d(GPA + BUF_OFF, 8, 0, 0));
        let mut c = Chain::default();
        assert_eq!(c.walk(&r, 0, Access::DeviceReads, false), Err(ChainError::Length));
    }
}
