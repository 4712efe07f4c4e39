//! Raw access to a packed virtqueue in tenant memory (virtio 1.1+, 2.8;
//! `VIRTIO_F_RING_PACKED`).
//!
//! One ring of 16-byte descriptors serves both directions: the driver makes
//! a descriptor available by writing its flags with `AVAIL` equal to its
//! wrap counter and `USED` the inverse; the device hands a buffer back by
//! overwriting a descriptor it took with the buffer id, the length written
//! and flags with `AVAIL` and `USED` both equal to its own wrap counter.
//! Two 4-byte event suppression areas replace the split ring's flags and
//! `used_event`/`avail_event`.
//!
//! The discipline is the one of [`crate::ring`]: the tenant writes the ring
//! concurrently with us, so every field is read once into a local (the
//! flags with an acquire load: they are the availability signal; the other
//! fields after them, volatile) and checked before use; nothing here hands
//! out references into tenant memory. A chain is bounded by the ring size
//! (an overlong chain is an error, not a hang) and every buffer goes
//! through the checks of [`crate::chain`].
//!
//! Differences from [`SplitRing`](crate::ring::SplitRing) an engine must
//! know:
//! * [`PackedRing::pending`] can only tell "at least one" (1) from "none"
//!   (0): take chains with [`PackedRing::pop_chain`] until it returns
//!   `None`.
//! * A chain is identified by a [`Token`] (buffer id and number of ring
//!   descriptors it took), which [`PackedRing::push_used`] needs; a walked
//!   [`Chain`] remembers it ([`Chain::token`]).
//! * Used descriptors are written in ring order, one per chain; the flags of
//!   the first one of a batch are stored last, by
//!   [`PackedRing::publish_used`], so the driver never sees half a batch.

use std::sync::atomic::{fence, AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;

use thiserror::Error;
use vfnic_types::ErrorKind;

use crate::chain::{Access, Chain, ChainError};
use crate::mem::GuestMemory;
use crate::ring::{RingAddrs, RingError, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, MAX_RING_SIZE};

/// `VIRTQ_DESC_F_AVAIL`.
pub const DESC_F_AVAIL: u16 = 1 << 7;
/// `VIRTQ_DESC_F_USED`.
pub const DESC_F_USED: u16 = 1 << 15;
/// `RING_EVENT_FLAGS_ENABLE`: notify on every event.
pub const EVENT_FLAGS_ENABLE: u16 = 0;
/// `RING_EVENT_FLAGS_DISABLE`: do not notify.
pub const EVENT_FLAGS_DISABLE: u16 = 1;
/// `RING_EVENT_FLAGS_DESC`: notify when the descriptor at the event
/// offset/wrap counter is made available/used (`RING_EVENT_IDX` only).
pub const EVENT_FLAGS_DESC: u16 = 2;
/// Bit 15 of a ring state (`SET/GET_VRING_BASE`) and of an event `off_wrap`:
/// the wrap counter; bits 0-14 are the descriptor index.
pub const WRAP_BIT: u16 = 1 << 15;

// Offsets of the `pvirtq_desc` fields.
const OFF_ADDR: usize = 0;
const OFF_LEN: usize = 8;
const OFF_ID: usize = 12;
const OFF_FLAGS: usize = 14;
// Offsets of the `pvirtq_event_suppress` fields.
const OFF_EVENT_OFF_WRAP: usize = 0;
const OFF_EVENT_FLAGS: usize = 2;

/// What identifies a chain taken from a packed ring, for
/// [`PackedRing::push_used`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    /// Buffer id (from the chain's last descriptor, or its only one when
    /// indirect).
    pub id: u16,
    /// Ring descriptors the chain took (1 for an indirect chain).
    pub ndesc: u16,
}

/// Why [`PackedRing::pop_chain`] could not take a chain. The ring is left
/// as it was; the tenant broke its ring and the queue should be faulted.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum PopError {
    /// The chain's buffer id is beyond the ring (`HeadIndex`).
    #[error(transparent)]
    Ring(#[from] RingError),
    /// A malformed chain.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

impl PopError {
    /// The counter this fault is reported under.
    pub fn kind(self) -> ErrorKind {
        match self {
            PopError::Chain(e) => e.kind(),
            PopError::Ring(RingError::AvailIndex(_)) => ErrorKind::AvailIndexInvalid,
            PopError::Ring(RingError::HeadIndex(_)) => ErrorKind::DescIndexInvalid,
            PopError::Ring(RingError::Size(_) | RingError::Addr(_)) => ErrorKind::RingAddrInvalid,
        }
    }
}

/// A packed virtqueue, mapped and checked, with the device-side positions
/// and wrap counters.
#[derive(Debug)]
pub struct PackedRing {
    mem: Arc<GuestMemory>,
    /// Descriptor ring: `size` 16-byte descriptors, 16-aligned.
    desc: *mut u8,
    /// Driver event suppression area (the driver writes it; it says when
    /// it wants used buffer notifications). 4 bytes, 4-aligned.
    driver: *mut u8,
    /// Device event suppression area (we write it; it says when we want
    /// available buffer notifications). 4 bytes, 4-aligned.
    device: *mut u8,
    size: u16,
    /// Next descriptor the device takes, and the wrap counter it expects.
    next_avail: u16,
    avail_wrap: bool,
    /// Next used descriptor position, and the wrap counter it is written
    /// with.
    next_used: u16,
    used_wrap: bool,
    /// First used descriptor of the batch not yet published: its position
    /// and the flags still to store there.
    batch_head: Option<(u16, u16)>,
    /// Used descriptors not yet written to the ring: kept here and written
    /// out together at publish, so each ring line (four descriptors, which
    /// the driver is polling) is written in one short run instead of
    /// frame by frame between copies, with the driver's reads bouncing it
    /// back and forth in between.
    shadow: Box<[UsedDesc; SHADOW]>,
    shadow_n: usize,
    /// Used descriptor positions advanced since the last
    /// [`PackedRing::needs_interrupt`] (saturating).
    unsignalled: u32,
    /// False until the first [`PackedRing::needs_interrupt`].
    signalled_valid: bool,
    event_idx: bool,
    /// See [`crate::vq::Virtqueue::set_read_skip`].
    pub(crate) read_skip: u8,
    /// Pops minus pushes: how many tokens may still be given back.
    in_flight: u32,
    /// Ring descriptors taken and not yet returned: a new chain must fit
    /// in the rest of the ring.
    in_flight_desc: u32,
}

// SAFETY: the raw pointers point into `mem`, which this value keeps alive
// through its Arc; a PackedRing is used by one thread at a time (`&mut
// self` for every access that moves a position), so sending it is sound.
unsafe impl Send for PackedRing {}

/// Used descriptors a ring holds back before it writes them out.
const SHADOW: usize = 64;

/// A used descriptor waiting to be written: its position and contents.
#[derive(Debug, Default, Clone, Copy)]
struct UsedDesc {
    slot: u16,
    id: u16,
    len: u32,
    flags: u16,
}

/// Steps `pos` (< size) forward by `n` (<= size) with its wrap counter.
#[inline]
fn advance(pos: u16, wrap: bool, n: u16, size: u16) -> (u16, bool) {
    let p = pos as u32 + n as u32;
    if p >= size as u32 {
        ((p - size as u32) as u16, !wrap)
    } else {
        (p as u16, wrap)
    }
}

/// Steps `pos` (< size) back by `n` (<= size) with its wrap counter.
#[inline]
fn retreat(pos: u16, wrap: bool, n: u16, size: u16) -> (u16, bool) {
    if pos >= n {
        (pos - n, wrap)
    } else {
        ((pos as u32 + size as u32 - n as u32) as u16, !wrap)
    }
}

/// The flags of a used descriptor written with wrap counter `wrap` for a
/// buffer `len` bytes were written to: AVAIL and USED both equal to the
/// wrap counter, WRITE if anything was written.
#[inline(always)]
fn used_flags(wrap: bool, len: u32) -> u16 {
    let mut flags = if wrap { DESC_F_AVAIL | DESC_F_USED } else { 0 };
    if len > 0 {
        flags |= DESC_F_WRITE;
    }
    flags
}

/// Whether descriptor `flags` mark it available for wrap counter `wrap`.
#[inline]
fn is_avail(flags: u16, wrap: bool) -> bool {
    // AVAIL equal to the wrap counter and USED its inverse.
    flags & (DESC_F_AVAIL | DESC_F_USED) == if wrap { DESC_F_AVAIL } else { DESC_F_USED }
}

/// The flags of the descriptor at `d`, with acquire: the fields the
/// driver wrote before them are visible once they are read.
///
/// # Safety
/// `d` is a descriptor of a ring checked in [`PackedRing::new`] (16
/// bytes, 16-aligned, inside a memory table the caller keeps alive), on
/// which our side makes only atomic accesses to the flags.
#[inline(always)]
unsafe fn desc_flags(d: *mut u8) -> u16 {
    // SAFETY: the caller's promise: `d + 14` is 2-aligned and mapped.
    let f = unsafe { AtomicU16::from_ptr(d.add(OFF_FLAGS).cast()) };
    u16::from_le(f.load(Ordering::Acquire))
}

/// Copies addr, len and id of the descriptor at `d`, after its flags
/// were read.
///
/// # Safety
/// As for [`desc_flags`].
#[inline(always)]
unsafe fn desc_rest(d: *mut u8) -> (u64, u32, u16) {
    // SAFETY: the descriptor's 16 bytes are mapped and 16-aligned, so
    // each field is aligned; each is copied once with a volatile read.
    unsafe {
        (
            u64::from_le(d.add(OFF_ADDR).cast::<u64>().read_volatile()),
            u32::from_le(d.add(OFF_LEN).cast::<u32>().read_volatile()),
            u16::from_le(d.add(OFF_ID).cast::<u16>().read_volatile()),
        )
    }
}

impl PackedRing {
    /// Checks and maps a packed ring of `size` (1..=32768, any value)
    /// descriptors. `addrs.desc` is the descriptor ring, `addrs.avail` the
    /// driver event suppression area and `addrs.used` the device event
    /// suppression area (how vhost-user passes them). `base` is
    /// `SET_VRING_BASE`'s value: next descriptor index in bits 0-14, the
    /// wrap counter in bit 15 (a fresh ring: `0 | WRAP_BIT`, since both
    /// wrap counters start at 1). The used side resumes at the same place
    /// (nothing is in flight when a ring is stopped).
    pub fn new(
        mem: Arc<GuestMemory>,
        size: u32,
        addrs: RingAddrs,
        base: u16,
        event_idx: bool,
    ) -> Result<PackedRing, RingError> {
        if size == 0 || size > MAX_RING_SIZE as u32 {
            return Err(RingError::Size(size));
        }
        let area = |name, addr: u64, len: u64, align: u64| mem.ring_area(addr, len, align).ok_or(RingError::Addr(name));
        let desc = area("descriptor", addrs.desc, 16 * size as u64, 16)?;
        let driver = area("driver event suppression", addrs.avail, 4, 4)?;
        let device = area("device event suppression", addrs.used, 4, 4)?;
        let idx = base & !WRAP_BIT;
        if idx as u32 >= size {
            return Err(RingError::AvailIndex(idx));
        }
        let wrap = base & WRAP_BIT != 0;
        Ok(PackedRing {
            mem,
            desc,
            driver,
            device,
            size: size as u16,
            next_avail: idx,
            avail_wrap: wrap,
            next_used: idx,
            used_wrap: wrap,
            batch_head: None,
            shadow: Box::new([UsedDesc::default(); SHADOW]),
            shadow_n: 0,
            unsignalled: 0,
            signalled_valid: false,
            event_idx,
            read_skip: 0,
            in_flight: 0,
            in_flight_desc: 0,
        })
    }

    /// The memory this ring lives in (and its buffers are translated by).
    pub fn mem(&self) -> &Arc<GuestMemory> {
        &self.mem
    }

    /// Number of descriptors.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Where the device resumes taking descriptors, encoded as
    /// `GET_VRING_BASE` returns it: index in bits 0-14, wrap counter in
    /// bit 15 (what [`PackedRing::new`] takes back as `base`).
    pub fn next_avail_state(&self) -> u16 {
        self.next_avail | if self.avail_wrap { WRAP_BIT } else { 0 }
    }

    /// Where the next used descriptor goes, encoded like
    /// [`PackedRing::next_avail_state`] (newer vhost-user front ends take it
    /// in bits 16-31 of `GET_VRING_BASE`; equal to the avail state once
    /// everything taken was returned).
    pub fn next_used_state(&self) -> u16 {
        self.next_used | if self.used_wrap { WRAP_BIT } else { 0 }
    }

    /// Hint: the next descriptor's line (what the next take reads first).
    #[inline]
    pub fn prefetch_next(&self) {
        crate::copy::prefetch(self.desc_ptr(self.next_avail));
    }

    /// Pointer to descriptor `slot` (< size).
    #[inline]
    fn desc_ptr(&self, slot: u16) -> *mut u8 {
        debug_assert!(slot < self.size);
        // In bounds: slot < size and the ring was translated with 16 * size
        // bytes in `new`; wrapping_add keeps this free of UB by itself.
        self.desc.wrapping_add(16 * slot as usize)
    }

    /// The flags of descriptor `slot` (< size), with acquire: the fields
    /// the driver wrote before them are visible once they are read.
    #[inline]
    fn flags(&self, slot: u16) -> u16 {
        // SAFETY: slot < size, so `desc_ptr(slot)` is a descriptor of the
        // ring checked in `new`.
        unsafe { desc_flags(self.desc_ptr(slot)) }
    }

    /// Copies addr, len and id of descriptor `slot` (< size), after its
    /// flags were read.
    #[inline]
    fn rest(&self, slot: u16) -> (u64, u32, u16) {
        // SAFETY: as in `flags`.
        unsafe { desc_rest(self.desc_ptr(slot)) }
    }

    /// Whether a chain is available: 1 if the descriptor at the next
    /// position is available for the device's wrap counter, else 0. A
    /// packed ring has no index that says how many; take chains with
    /// [`PackedRing::pop_chain`] until it returns `None`. Never fails (the
    /// `Result` mirrors [`crate::ring::SplitRing::pending`]).
    #[inline]
    pub fn pending(&self) -> Result<u16, RingError> {
        Ok(is_avail(self.flags(self.next_avail), self.avail_wrap) as u16)
    }

    /// How many chains are available, counting at most `max`: walks the
    /// descriptors' flags from the next position (a chain's descriptors
    /// with `DESC_F_NEXT` count once), never past the ring's size. Takes
    /// nothing; a malformed chain is refused later by
    /// [`PackedRing::pop_chain`].
    pub fn room_upto(&self, max: u16) -> u16 {
        self.walk_avail(max, false)
    }

    /// [`PackedRing::room_upto`] for a ring about to be written, in the
    /// same walk of the flags a hint for its buffers: the first two cache
    /// lines of the buffers of the chains counted (one-buffer chains only)
    /// are fetched for writing. Takes and checks nothing more than the
    /// count does (a bad descriptor is refused when popped).
    pub fn room_prefetching(&self, max: u16) -> u16 {
        self.walk_avail(max, true)
    }

    /// Hint for the buffers of the next `count` available chains (one-buffer
    /// chains only): bytes `from..to` of each (as far as it goes) are
    /// fetched into L2 (see [`crate::Chain::prefetch_range_l2`]). Takes and
    /// checks nothing.
    pub fn stage_buffers(&self, count: u16, from: u64, to: u64) {
        let (mut slot, mut wrap) = (self.next_avail, self.avail_wrap);
        for _ in 0..count.min(self.size) {
            let f = self.flags(slot);
            if !is_avail(f, wrap) || f & (DESC_F_NEXT | DESC_F_INDIRECT) != 0 {
                return;
            }
            let (addr, len, _) = self.rest(slot);
            let end = to.min(len as u64);
            if let Some(p) = self.mem.translate(addr, end) {
                crate::copy::prefetch_lines_l2(p, from.min(end) as usize, end as usize);
            }
            (slot, wrap) = advance(slot, wrap, 1, self.size);
        }
    }

    /// Counts available chains up to `max` (see [`PackedRing::room_upto`]),
    /// fetching the buffers of one-buffer chains for writing if `prefetch`.
    #[inline(always)]
    fn walk_avail(&self, max: u16, prefetch: bool) -> u16 {
        let (mut slot, mut wrap) = (self.next_avail, self.avail_wrap);
        let (mut chains, mut seen) = (0u16, 0u16);
        while chains < max && seen < self.size {
            let f = self.flags(slot);
            if !is_avail(f, wrap) {
                break;
            }
            if prefetch && f & (DESC_F_NEXT | DESC_F_INDIRECT) == 0 {
                let (addr, len, _) = self.rest(slot);
                if let Some(p) = self.mem.translate(addr, (len as u64).min(128)) {
                    crate::copy::prefetch_write(p);
                    if len > 64 {
                        crate::copy::prefetch_write(p.wrapping_add(64));
                    }
                }
            }
            seen += 1;
            slot += 1;
            if slot == self.size {
                slot = 0;
                wrap = !wrap;
            }
            if f & DESC_F_NEXT == 0 {
                chains += 1;
            }
        }
        chains
    }

    /// Takes and walks the next available chain into `chain`: consecutive
    /// descriptors (wrapping around the ring) while `DESC_F_NEXT` is set,
    /// or one `DESC_F_INDIRECT` descriptor whose table is walked (only if
    /// `indirect_ok`). Each buffer must have the permission `access` needs
    /// and lie inside tenant memory. `Ok(None)`: nothing is available.
    ///
    /// On error the ring is not advanced and `chain` is left empty; the
    /// tenant broke its ring and the queue should be faulted. A chain
    /// longer than the ring, or than the part of it not taken by chains
    /// not yet returned, is [`ChainError::Loop`]; an indirect
    /// descriptor in a chain of several, or one with `DESC_F_NEXT`, is
    /// [`ChainError::Length`]; a buffer id beyond the ring is
    /// [`RingError::HeadIndex`].
    #[inline]
    pub fn pop_chain(
        &mut self,
        chain: &mut Chain,
        access: Access,
        indirect_ok: bool,
    ) -> Result<Option<Token>, PopError> {
        let slot = self.next_avail;
        let flags = self.flags(slot);
        if !is_avail(flags, self.avail_wrap) {
            return Ok(None);
        }
        chain.start(&self.mem, 0, 0);
        // The common chain: one descriptor, one buffer in one region.
        if flags & (DESC_F_NEXT | DESC_F_INDIRECT) == 0 && self.in_flight_desc < self.size as u32 {
            let (addr, len, id) = self.rest(slot);
            if id < self.size && chain.single(&self.mem, addr, len, flags, access) {
                let token = Token { id, ndesc: 1 };
                chain.set_token(token);
                self.took(token);
                return Ok(Some(token));
            }
        }
        self.pop_walked(chain, flags, access, indirect_ok)
    }

    /// Takes the next available chains into `chains`, as long as each is
    /// the common chain (one descriptor, no `DESC_F_NEXT` or
    /// `DESC_F_INDIRECT`, a buffer id inside the ring, a non-empty buffer
    /// with the permission `access` needs, inside one region): the same
    /// chains, with the same checks, as [`PackedRing::pop_chain`] takes on
    /// its first branch. Stops at the first descriptor that is not one of
    /// those (or not available) and returns how many were taken: the rest
    /// is [`PackedRing::pop_chain`]'s. Each chain taken has its first lines
    /// fetched (for writing with [`Access::DeviceWrites`]).
    ///
    /// One loop with the ring's position in registers and the ring's
    /// counters moved once: fewer instructions per chain than
    /// [`PackedRing::pop_chain`] (a burst of 64-byte frames through the
    /// switch: 843 -> 785 per frame).
    #[inline]
    pub fn pop_simple(&mut self, chains: &mut [Chain], access: Access) -> usize {
        match access {
            Access::DeviceReads => self.pop_simple_as::<false>(chains),
            Access::DeviceWrites => self.pop_simple_as::<true>(chains),
            Access::Mixed => 0,
        }
    }

    /// [`PackedRing::pop_simple`] for buffers the device writes
    /// (`WRITES`) or reads: one loop each, with the permission bit and the
    /// skipped header folded in, the ring's position and descriptor table
    /// in registers, the availability and kind of a descriptor checked
    /// with one compare of its flags, and no wrap test per chain (runs end
    /// where the ring wraps). A burst of 64-byte frames through the switch:
    /// 620 -> 571 instructions per frame, with `Chain::take_one`'s rare
    /// cases moved out of line.
    #[inline(always)]
    fn pop_simple_as<const WRITES: bool>(&mut self, chains: &mut [Chain]) -> usize {
        let size = self.size;
        // A chain takes one descriptor of those not taken and not returned.
        let room = (size as u32).saturating_sub(self.in_flight_desc) as usize;
        let k = chains.len().min(room);
        // The flags of an available one-buffer descriptor of the kind
        // wanted: AVAIL equal to the wrap counter, USED its inverse, no
        // NEXT or INDIRECT, WRITE as `WRITES` says. Flipped with the wrap.
        const KIND: u16 = DESC_F_AVAIL | DESC_F_USED | DESC_F_NEXT | DESC_F_INDIRECT | DESC_F_WRITE;
        let want = if WRITES { DESC_F_WRITE } else { 0 };
        let mut expect = if self.avail_wrap { DESC_F_AVAIL } else { DESC_F_USED } | want;
        let mut slot = self.next_avail;
        let window = self.mem.first_window();
        let skip = if WRITES { 0 } else { self.read_skip };
        let mut n = 0;
        // In runs that end where the ring wraps: no wrap test per chain.
        while n < k {
            let run = (k - n).min((size - slot) as usize);
            let first = self.desc_ptr(slot);
            let mut got = 0;
            for c in &mut chains[n..n + run] {
                let d = first.wrapping_add(16 * got);
                // SAFETY: slot + got < size, so `d` is a descriptor of the
                // ring checked in `new`.
                let flags = unsafe { desc_flags(d) };
                if flags & KIND != expect {
                    break;
                }
                // SAFETY: as above.
                let (addr, len, id) = unsafe { desc_rest(d) };
                if id >= size || len == 0 {
                    break;
                }
                if !c.take_one(&self.mem, window, (addr, len), WRITES, skip, Token { id, ndesc: 1 }) {
                    break;
                }
                got += 1;
            }
            n += got;
            slot += got as u16;
            if got < run {
                break;
            }
            if slot == size {
                slot = 0;
                expect ^= DESC_F_AVAIL | DESC_F_USED;
            }
        }
        (self.next_avail, self.avail_wrap) = (slot, expect & DESC_F_AVAIL != 0);
        self.in_flight += n as u32;
        self.in_flight_desc += n as u32;
        n
    }

    /// [`PackedRing::pop_chain`] for any other chain: walked (and checked)
    /// descriptor by descriptor.
    #[inline(never)]
    fn pop_walked(
        &mut self,
        chain: &mut Chain,
        flags: u16,
        access: Access,
        indirect_ok: bool,
    ) -> Result<Option<Token>, PopError> {
        match self.walk(chain, flags, access, indirect_ok) {
            Ok(token) => {
                chain.set_token(token);
                self.took(token);
                Ok(Some(token))
            }
            Err(e) => {
                chain.clear();
                Err(e)
            }
        }
    }

    /// The next available chain, when it is one device-writable
    /// descriptor of at least `need` bytes inside tenant memory: its token
    /// and where the buffer is mapped. Takes nothing (`took` does).
    #[inline]
    pub(crate) fn next_buffer(&mut self, need: u64) -> Option<(Token, *mut u8)> {
        if self.in_flight_desc >= self.size as u32 {
            return None;
        }
        let flags = self.flags(self.next_avail);
        if !is_avail(flags, self.avail_wrap) || flags & (DESC_F_NEXT | DESC_F_INDIRECT | DESC_F_WRITE) != DESC_F_WRITE {
            return None;
        }
        let (addr, len, id) = self.rest(self.next_avail);
        if id >= self.size || (len as u64) < need {
            return None;
        }
        let ptr = self.mem.translate(addr, len as u64)?;
        Some((Token { id, ndesc: 1 }, ptr))
    }

    /// Moves the avail position past a chain just taken.
    #[inline]
    pub(crate) fn took(&mut self, token: Token) {
        (self.next_avail, self.avail_wrap) = advance(self.next_avail, self.avail_wrap, token.ndesc, self.size);
        self.in_flight += 1;
        self.in_flight_desc += token.ndesc as u32;
    }

    fn walk(&self, chain: &mut Chain, first_flags: u16, access: Access, indirect_ok: bool) -> Result<Token, PopError> {
        let mut slot = self.next_avail;
        let mut flags = first_flags;
        let mut ndesc = 0u16;
        // Descriptors the chain may take: the ring less those taken and not
        // returned (a chain running into them loops round the ring).
        let room = self.size - self.in_flight_desc.min(self.size as u32) as u16;
        loop {
            if ndesc == room {
                return Err(ChainError::Loop.into());
            }
            ndesc += 1;
            let (addr, len, id) = self.rest(slot);
            if flags & DESC_F_INDIRECT != 0 {
                // The spec forbids indirect descriptors in a list linked by
                // NEXT (and NEXT on one).
                if !indirect_ok || ndesc != 1 || flags & DESC_F_NEXT != 0 {
                    return Err(ChainError::Length.into());
                }
                chain.walk_packed_indirect(&self.mem, addr, len, access)?;
                return self.token(id, 1);
            }
            if let Err(e) = chain.add_packed(&self.mem, addr, len, flags, access) {
                // Out of segments: tell an overlong chain (it would loop
                // round the ring) from a long one by the flags alone.
                return Err(if e == ChainError::Length && self.overlong(slot, room - ndesc) {
                    ChainError::Loop
                } else {
                    e
                }
                .into());
            }
            if flags & DESC_F_NEXT == 0 {
                return self.token(id, ndesc);
            }
            slot += 1;
            if slot == self.size {
                slot = 0;
            }
            // The driver exposed the whole list with the first flags (read
            // with acquire); the availability bits of the others are not
            // checked (DPDK does not either); a stale descriptor is still
            // bounded and checked.
            flags = self.flags(slot);
        }
    }

    fn token(&self, id: u16, ndesc: u16) -> Result<Token, PopError> {
        if id >= self.size {
            return Err(RingError::HeadIndex(id).into());
        }
        Ok(Token { id, ndesc })
    }

    /// True if, from `slot` whose flags have NEXT, the chain goes on for
    /// more than `budget` further descriptors.
    fn overlong(&self, mut slot: u16, budget: u16) -> bool {
        for _ in 0..=budget {
            let f = self.flags(slot);
            if f & DESC_F_NEXT == 0 || f & DESC_F_INDIRECT != 0 {
                return false;
            }
            slot += 1;
            if slot == self.size {
                slot = 0;
            }
        }
        true
    }

    /// Gives back the last `chains` chains taken by
    /// [`PackedRing::pop_chain`] and not yet returned with
    /// [`PackedRing::push_used`] (the destination had no room), `ndesc` ring
    /// descriptors in all (the sum of their tokens' `ndesc`): they are
    /// taken again next time. The caller holds the chains, so the ring
    /// keeps no history of its pops.
    ///
    /// # Panics
    /// If more chains or descriptors are given back than are taken and
    /// not yet pushed: a bug in the caller.
    pub fn unpop(&mut self, chains: u32, ndesc: u32) {
        assert!(
            chains <= self.in_flight && ndesc <= self.in_flight_desc && ndesc >= chains,
            "unpop({chains} chains, {ndesc} descriptors) with {} chains and {} descriptors in flight",
            self.in_flight,
            self.in_flight_desc
        );
        (self.next_avail, self.avail_wrap) = retreat(self.next_avail, self.avail_wrap, ndesc as u16, self.size);
        self.in_flight -= chains;
        self.in_flight_desc -= ndesc;
    }

    /// Returns a chain: writes its used descriptor (buffer id, `len` bytes
    /// written, `DESC_F_WRITE` if `len > 0`, AVAIL and USED both equal to
    /// the device's wrap counter) at the next used position, and skips the
    /// `token.ndesc` descriptors the chain took. Tokens are returned in the
    /// order they were taken or not; the positions are always in order.
    /// The first used descriptor of a batch gets its flags only in
    /// [`PackedRing::publish_used`], so the driver, which only looks past a
    /// descriptor once it is used, sees the batch whole or not at all.
    #[inline(always)]
    pub fn push_used(&mut self, token: Token, len: u32) {
        self.write_used(token.id, len, token.ndesc, 1);
    }

    /// Returns `chains` chains taken in order and not written to (TX),
    /// `ndesc` ring descriptors in all, the last of them `last`, with one
    /// used descriptor: what `VIRTIO_F_IN_ORDER` lets a device do (the
    /// driver takes every buffer up to `last`'s id as used, and the next
    /// used descriptor goes `ndesc` positions on). Only with IN_ORDER
    /// negotiated, and only for the oldest chains not yet returned.
    #[inline]
    pub fn push_used_in_order(&mut self, last: Token, chains: u32, ndesc: u32) {
        debug_assert!(chains >= 1 && ndesc >= chains && ndesc <= self.size as u32);
        self.write_used(last.id, 0, ndesc.clamp(1, self.size as u32) as u16, chains);
    }

    /// Returns a run of chains, each with the bytes written to it (RX):
    /// what [`PackedRing::push_used`] does for each, in order, with the
    /// used descriptors stored straight into the ring and the ring's
    /// counters moved once. For a caller that has done the run's copies:
    /// its stores are one short run, as the queued ones' are at publish.
    /// A descriptor other than the batch's first gets its len, id and
    /// flags in one 8-byte store (fields 8..16 of the descriptor), so the
    /// driver, once it sees the flags, sees the rest; the batch's first
    /// gets its flags at [`PackedRing::publish_used`], as always.
    #[inline(always)]
    pub fn push_used_run(&mut self, run: impl Iterator<Item = (Token, u32)>) {
        // Used descriptors queued before the run go out first: they hold
        // the earlier positions, maybe the batch's first.
        if self.shadow_n > 0 {
            self.write_shadow();
        }
        let size = self.size;
        let (mut slot, mut wrap) = (self.next_used, self.used_wrap);
        let (mut chains, mut ndescs) = (0u32, 0u32);
        let mut head = self.batch_head.is_none();
        for (token, len) in run {
            let flags = used_flags(wrap, len);
            let d = self.desc_ptr(slot);
            if head {
                head = false;
                self.batch_head = Some((slot, flags));
                // SAFETY: slot < size (a used position): the descriptor lies
                // in the ring checked in `new`, 16-aligned as mapped, so the
                // id and len fields are aligned. The slot belongs to a chain
                // we took and have not returned, so the driver does not
                // write it now; volatile writes.
                unsafe {
                    d.add(OFF_ID).cast::<u16>().write_volatile(token.id.to_le());
                    d.add(OFF_LEN).cast::<u32>().write_volatile(len.to_le());
                }
            } else {
                let word = len as u64 | (token.id as u64) << 32 | (flags as u64) << 48;
                // SAFETY: as above; bytes 8..16 of the descriptor (len, id,
                // flags) are 8-aligned. One atomic store: the driver reads
                // the flags, then the rest, and an aligned 8-byte store is
                // seen whole or not at all. Release: the frame's bytes are
                // visible before. Our side makes no access to these bytes
                // that could race with it (one thread owns the ring).
                unsafe { AtomicU64::from_ptr(d.add(OFF_LEN).cast()) }.store(word.to_le(), Ordering::Release);
            }
            let n = token.ndesc.max(1).min(size);
            (slot, wrap) = advance(slot, wrap, n, size);
            chains += 1;
            ndescs += n as u32;
        }
        (self.next_used, self.used_wrap) = (slot, wrap);
        self.returned(chains, ndescs);
    }

    /// Counts `chains` chains, `ndesc` ring descriptors in all, returned:
    /// used positions not yet signalled, and no longer in flight.
    #[inline(always)]
    fn returned(&mut self, chains: u32, ndesc: u32) {
        self.unsignalled = self.unsignalled.saturating_add(ndesc);
        self.in_flight = self.in_flight.saturating_sub(chains);
        self.in_flight_desc = self.in_flight_desc.saturating_sub(ndesc);
    }

    /// Queues one used descriptor (`id`, `len`) for the next used position
    /// and moves that position `ndesc` on, for `chains` chains returned.
    #[inline(always)]
    fn write_used(&mut self, id: u16, len: u32, ndesc: u16, chains: u32) {
        debug_assert!(ndesc >= 1 && ndesc <= self.size);
        let flags = used_flags(self.used_wrap, len);
        if self.shadow_n == SHADOW {
            self.write_shadow();
        }
        self.shadow[self.shadow_n] = UsedDesc { slot: self.next_used, id, len, flags };
        self.shadow_n += 1;
        let ndesc = ndesc.max(1).min(self.size);
        (self.next_used, self.used_wrap) = advance(self.next_used, self.used_wrap, ndesc, self.size);
        self.returned(chains, ndesc as u32);
    }

    /// Writes the queued used descriptors into the ring: every id and len,
    /// then every flags but the batch's first, whose flags
    /// [`PackedRing::publish_used`] stores last.
    #[inline(never)]
    fn write_shadow(&mut self) {
        let queued = &self.shadow[..self.shadow_n];
        for u in queued {
            let d = self.desc_ptr(u.slot);
            // SAFETY: u.slot < size (a used position): the descriptor lies in
            // the ring checked in `new`, 16-aligned, so the id and len
            // fields are aligned. The slot belongs to a chain we took and
            // have not returned, so the driver does not write it now;
            // volatile writes.
            unsafe {
                d.add(OFF_ID).cast::<u16>().write_volatile(u.id.to_le());
                d.add(OFF_LEN).cast::<u32>().write_volatile(u.len.to_le());
            }
        }
        for u in queued {
            if self.batch_head.is_none() {
                self.batch_head = Some((u.slot, u.flags));
                continue;
            }
            // Not the first of the batch: the driver reads it only after the
            // first one's flags, stored (release) after these. Release here
            // too, so id and len are visible before these flags.
            // SAFETY: as above; the flags field is 2-aligned, and only
            // atomic accesses are made through it on our side.
            unsafe { AtomicU16::from_ptr(self.desc_ptr(u.slot).add(OFF_FLAGS).cast()) }
                .store(u.flags.to_le(), Ordering::Release);
        }
        self.shadow_n = 0;
    }

    /// Publishes every used descriptor queued so far: writes them out and
    /// stores the batch's first flags with release.
    #[inline]
    pub fn publish_used(&mut self) {
        if self.shadow_n > 0 {
            self.write_shadow();
        }
        if let Some((slot, flags)) = self.batch_head.take() {
            // SAFETY: slot < size was a used position: its flags field is in
            // the ring checked in `new`, 2-aligned; only atomic accesses are
            // made through it on our side.
            unsafe { AtomicU16::from_ptr(self.desc_ptr(slot).add(OFF_FLAGS).cast()) }
                .store(flags.to_le(), Ordering::Release);
        }
    }

    /// Reads a u16 of an event suppression area.
    #[inline]
    fn read_event(area: *mut u8, off: usize) -> u16 {
        // SAFETY: callers pass `driver` or `device` (4 bytes, 4-aligned,
        // checked in `new`, alive as long as `self.mem`) and off 0 or 2; a
        // volatile copy of an aligned u16.
        u16::from_le(unsafe { area.add(off).cast::<u16>().read_volatile() })
    }

    /// After [`PackedRing::publish_used`]: whether the driver wants a used
    /// buffer notification for what was published since the last call
    /// (driver event suppression: `DISABLE` never, `ENABLE` always, `DESC`
    /// (with `RING_EVENT_IDX`) when the descriptor at the event's
    /// offset/wrap counter was among those used since the last call).
    pub fn needs_interrupt(&mut self) -> bool {
        // The used flags must be visible before we read the driver's
        // suppression fields (as for the split ring).
        fence(Ordering::SeqCst);
        let flags = Self::read_event(self.driver, OFF_EVENT_FLAGS) & 3;
        let used = std::mem::take(&mut self.unsignalled);
        if !self.event_idx {
            return flags != EVENT_FLAGS_DISABLE;
        }
        let first = !std::mem::replace(&mut self.signalled_valid, true);
        match flags {
            EVENT_FLAGS_DISABLE => false,
            EVENT_FLAGS_DESC if !first => {
                let off_wrap = Self::read_event(self.driver, OFF_EVENT_OFF_WRAP);
                // Positions as one counter modulo 2 * size: wrap counter 1
                // is the first lap, 0 the second.
                let s = self.size as i64;
                let lin = |pos: u16, wrap: bool| pos as i64 + if wrap { 0 } else { s };
                let event = lin(off_wrap & !WRAP_BIT, off_wrap & WRAP_BIT != 0);
                let new = lin(self.next_used, self.used_wrap);
                // vring_need_event(): was `event` in [new - used, new)?
                used as i64 >= 2 * s || (new - event - 1).rem_euclid(2 * s) < used as i64
            }
            // ENABLE, the reserved value, or the first call.
            _ => true,
        }
    }

    /// Asks the driver to notify (true) or not to (false) when it makes
    /// buffers available (device event suppression: with `RING_EVENT_IDX`,
    /// enabling asks for the next descriptor only). After enabling,
    /// re-check [`PackedRing::pending`]: buffers made available just before
    /// are not notified.
    pub fn set_notification(&mut self, enable: bool) {
        let flags = if !enable {
            EVENT_FLAGS_DISABLE
        } else if self.event_idx {
            // SAFETY: `device` is the 4-byte, 4-aligned device area checked
            // in `new`; off_wrap is its first u16. Volatile write.
            unsafe {
                self.device.add(OFF_EVENT_OFF_WRAP).cast::<u16>().write_volatile(self.next_avail_state().to_le())
            };
            // off_wrap before the flags that make it meaningful.
            fence(Ordering::Release);
            EVENT_FLAGS_DESC
        } else {
            EVENT_FLAGS_ENABLE
        };
        // SAFETY: the flags are the second u16 of the device area checked
        // in `new` (2-aligned). Volatile write.
        unsafe { self.device.add(OFF_EVENT_FLAGS).cast::<u16>().write_volatile(flags.to_le()) };
        fence(Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::copy::Cursor;
    use crate::ring::tests::{TestRing, AVAIL_OFF, BUF_OFF, DESC_OFF, GPA, UADDR, USED_OFF};

    const R: Access = Access::DeviceReads;
    const W: Access = Access::DeviceWrites;

    fn addrs() -> RingAddrs {
        RingAddrs { desc: UADDR + DESC_OFF, avail: UADDR + AVAIL_OFF, used: UADDR + USED_OFF }
    }

    /// A model of a packed-ring driver over a [`TestRing`]'s memory.
    struct Driver {
        t: TestRing,
        size: u16,
        next: u16,
        wrap: bool,
        used: u16,
        used_wrap: bool,
        /// Descriptors each buffer id took.
        ndesc: Vec<u16>,
    }

    impl Driver {
        fn new(size: u16) -> Driver {
            Driver {
                t: TestRing::new(size),
                size,
                next: 0,
                wrap: true,
                used: 0,
                used_wrap: true,
                ndesc: vec![0; size as usize],
            }
        }

        fn ring(&self, event_idx: bool) -> PackedRing {
            PackedRing::new(self.t.mem.clone(), self.size as u32, addrs(), WRAP_BIT, event_idx).unwrap()
        }

        fn write_desc(&self, slot: u16, addr: u64, len: u32, id: u16, flags: u16) {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&addr.to_le_bytes());
            b[8..12].copy_from_slice(&len.to_le_bytes());
            b[12..14].copy_from_slice(&id.to_le_bytes());
            b[14..].copy_from_slice(&flags.to_le_bytes());
            self.t.write(GPA + DESC_OFF + 16 * slot as u64, &b);
        }

        fn read_desc(&self, slot: u16) -> (u64, u32, u16, u16) {
            let b = self.t.read(GPA + DESC_OFF + 16 * slot as u64, 16);
            (
                u64::from_le_bytes(b[..8].try_into().unwrap()),
                u32::from_le_bytes(b[8..12].try_into().unwrap()),
                u16::from_le_bytes(b[12..14].try_into().unwrap()),
                u16::from_le_bytes(b[14..].try_into().unwrap()),
            )
        }

        fn avail_bits(&self, wrap: bool) -> u16 {
            if wrap {
                DESC_F_AVAIL
            } else {
                DESC_F_USED
            }
        }

        /// Makes a chain of `(addr, len, flags)` available as buffer `id`:
        /// NEXT on all but the last, the id in the last (garbage ids in the
        /// others), the first descriptor's flags written last.
        fn offer(&mut self, id: u16, bufs: &[(u64, u32, u16)]) {
            let first = (self.next, self.wrap);
            let mut first_flags = 0;
            for (k, &(addr, len, f)) in bufs.iter().enumerate() {
                let last = k + 1 == bufs.len();
                let flags = f | self.avail_bits(self.wrap) | if last { 0 } else { DESC_F_NEXT };
                let bid = if last { id } else { 0xbeef };
                if k == 0 {
                    // Not available yet: keep the slot's old flags.
                    first_flags = flags;
                    let old = self.read_desc(self.next).3;
                    self.write_desc(self.next, addr, len, bid, old);
                } else {
                    self.write_desc(self.next, addr, len, bid, flags);
                }
                (self.next, self.wrap) = advance(self.next, self.wrap, 1, self.size);
            }
            self.ndesc[id as usize] = bufs.len() as u16;
            let (addr, len, bid, _) = self.read_desc(first.0);
            self.write_desc(first.0, addr, len, bid, first_flags);
        }

        /// Takes the next used buffer, if the device returned one.
        fn take_used(&mut self) -> Option<(u16, u32, u16)> {
            let (_, len, id, flags) = self.read_desc(self.used);
            // As Linux does: used when AVAIL and USED both equal the wrap
            // counter (USED alone may match in a skipped descriptor of the
            // previous lap). Nothing in flight: nothing to look at.
            let used = flags & DESC_F_USED != 0;
            let avail = flags & DESC_F_AVAIL != 0;
            if self.ndesc.iter().all(|&n| n == 0) || used != self.used_wrap || avail != used {
                return None;
            }
            let n = self.ndesc[id as usize];
            assert!(n > 0, "id {id} was not in flight");
            self.ndesc[id as usize] = 0;
            (self.used, self.used_wrap) = advance(self.used, self.used_wrap, n, self.size);
            Some((id, len, flags))
        }

        fn set_driver_event(&self, off_wrap: u16, flags: u16) {
            self.t.write(GPA + AVAIL_OFF, &off_wrap.to_le_bytes());
            self.t.write(GPA + AVAIL_OFF + 2, &flags.to_le_bytes());
        }

        fn device_event(&self) -> (u16, u16) {
            let b = self.t.read(GPA + USED_OFF, 4);
            (u16::from_le_bytes([b[0], b[1]]), u16::from_le_bytes([b[2], b[3]]))
        }
    }

    /// A small deterministic generator: `rnd(m)` is in `0..m`.
    fn lcg(mut seed: u32) -> impl FnMut(u32) -> u32 {
        move |m| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 16) % m
        }
    }

    fn buf(k: u64) -> u64 {
        GPA + BUF_OFF + 4096 * k
    }

    #[test]
    fn refuses_bad_sizes_addresses_and_base() {
        let d = Driver::new(8);
        let mem = d.t.mem.clone();
        for size in [0, 32769, 65536] {
            assert_eq!(PackedRing::new(mem.clone(), size, addrs(), 0, false).unwrap_err(), RingError::Size(size));
        }
        // Any size up to 32768 is fine for a packed ring (the ring itself
        // must fit in memory: 32768 * 16 bytes = 512 KiB here).
        for size in [1, 3, 1000, 32768] {
            PackedRing::new(mem.clone(), size, addrs(), 0, false).unwrap();
        }
        let a = RingAddrs { desc: UADDR + 8, ..addrs() };
        assert_eq!(PackedRing::new(mem.clone(), 8, a, 0, false).unwrap_err(), RingError::Addr("descriptor"));
        let a = RingAddrs { avail: UADDR + AVAIL_OFF + 2, ..addrs() };
        assert!(matches!(PackedRing::new(mem.clone(), 8, a, 0, false), Err(RingError::Addr(_))));
        let a = RingAddrs { used: UADDR + (1 << 20) - 2, ..addrs() };
        assert!(matches!(PackedRing::new(mem.clone(), 8, a, 0, false), Err(RingError::Addr(_))));
        let a = RingAddrs { desc: UADDR + (1 << 20) - 64, ..addrs() };
        assert_eq!(PackedRing::new(mem.clone(), 8, a, 0, false).unwrap_err(), RingError::Addr("descriptor"));
        assert_eq!(PackedRing::new(mem.clone(), 8, addrs(), 8, false).unwrap_err(), RingError::AvailIndex(8));
        assert_eq!(
            PackedRing::new(mem.clone(), 8, addrs(), 8 | WRAP_BIT, false).unwrap_err(),
            RingError::AvailIndex(8)
        );
    }

    #[test]
    fn room_counts_chains_across_the_wrap() {
        let mut d = Driver::new(8);
        let mut r = d.ring(false);
        assert_eq!(r.room_upto(64), 0);
        d.offer(0, &[(buf(0), 64, 0)]);
        d.offer(1, &[(buf(1), 64, 0), (buf(2), 64, 0)]);
        d.offer(2, &[(buf(3), 64, 0)]);
        assert_eq!(r.room_upto(64), 3, "a two-descriptor chain counts once");
        assert_eq!(r.room_upto(2), 2, "bounded by max");
        // Take and return two, offer more: the count follows across the wrap.
        let mut c = Chain::default();
        for _ in 0..2 {
            let t = r.pop_chain(&mut c, R, false).unwrap().unwrap();
            r.push_used(t, 0);
        }
        r.publish_used();
        while d.take_used().is_some() {}
        assert_eq!(r.room_upto(64), 1);
        d.offer(0, &[(buf(0), 64, 0), (buf(1), 64, 0)]);
        d.offer(1, &[(buf(2), 64, 0), (buf(4), 64, 0)]);
        assert_eq!(r.room_upto(64), 3);
        for n in (0..3).rev() {
            let t = r.pop_chain(&mut c, R, false).unwrap().unwrap();
            r.push_used(t, 0);
            assert_eq!(r.room_upto(64), n);
        }
    }

    #[test]
    fn base_encodes_index_and_wrap_counter() {
        let mut d = Driver::new(8);
        let r = d.ring(false);
        assert_eq!(r.next_avail_state(), WRAP_BIT);
        assert_eq!(r.next_used_state(), WRAP_BIT);
        // Resume at index 5 of the second lap (wrap counter 0).
        (d.next, d.wrap, d.used, d.used_wrap) = (5, false, 5, false);
        let mut r = PackedRing::new(d.t.mem.clone(), 8, addrs(), 5, false).unwrap();
        assert_eq!(r.next_avail_state(), 5);
        assert_eq!(r.pending(), Ok(0));
        d.offer(1, &[(buf(0), 64, 0), (buf(1), 64, 0), (buf(2), 64, 0), (buf(3), 64, 0)]);
        assert_eq!(r.pending(), Ok(1));
        let mut c = Chain::default();
        let t = r.pop_chain(&mut c, R, false).unwrap().unwrap();
        assert_eq!(t, Token { id: 1, ndesc: 4 });
        // 5 + 4 wraps to 1 with the wrap counter back to 1.
        assert_eq!(r.next_avail_state(), 1 | WRAP_BIT);
        r.push_used(t, 0);
        r.publish_used();
        assert_eq!(r.next_used_state(), 1 | WRAP_BIT);
        assert_eq!(d.take_used(), Some((1, 0, 0)), "used with wrap counter 0: AVAIL = USED = 0");
        // And a ring resumed from that state continues there.
        let r = PackedRing::new(d.t.mem.clone(), 8, addrs(), r.next_avail_state(), false).unwrap();
        assert_eq!(r.pending(), Ok(0));
        d.offer(2, &[(buf(0), 64, 0)]);
        assert_eq!(r.pending(), Ok(1));
    }

    #[test]
    fn availability_follows_wrap_counters_across_many_laps() {
        // A size that is not a power of two, and chains that straddle the
        // end of the ring.
        let mut d = Driver::new(5);
        let mut r = d.ring(false);
        let mut c = Chain::default();
        let mut id = 0u16;
        for round in 0..40u64 {
            assert_eq!(r.pending(), Ok(0));
            assert_eq!(r.pop_chain(&mut c, R, false), Ok(None));
            let n = 1 + (round % 3) as usize;
            let bufs: Vec<_> = (0..n).map(|k| (buf(k as u64), 10 + k as u32, 0)).collect();
            d.offer(id, &bufs);
            let other = (id + 1) % 5;
            d.offer(other, &[(buf(7), 7, 0)]);
            assert_eq!(r.pending(), Ok(1));
            let t1 = r.pop_chain(&mut c, R, false).unwrap().unwrap();
            assert_eq!(t1, Token { id, ndesc: n as u16 });
            assert_eq!(c.token(), t1);
            assert_eq!(c.len(), (0..n as u64).map(|k| 10 + k).sum::<u64>());
            let t2 = r.pop_chain(&mut c, R, false).unwrap().unwrap();
            assert_eq!(t2, Token { id: other, ndesc: 1 });
            assert_eq!(r.pop_chain(&mut c, R, false), Ok(None));
            r.push_used(t1, 0);
            r.push_used(t2, 0);
            r.publish_used();
            let lap_flags = if d.used_wrap { DESC_F_AVAIL | DESC_F_USED } else { 0 };
            assert_eq!(d.take_used(), Some((id, 0, lap_flags)));
            assert!(d.take_used().is_some());
            assert_eq!(d.take_used(), None);
            assert_eq!(r.next_avail_state(), r.next_used_state());
            id = (id + 2) % 5;
        }
        assert!(r.next_avail_state() & !WRAP_BIT < 5);
    }

    #[test]
    fn stale_and_used_descriptors_are_not_available() {
        let d = Driver::new(4);
        let r = d.ring(false);
        // Zero-initialized ring: AVAIL = USED = 0.
        assert_eq!(r.pending(), Ok(0));
        // Used descriptor of the first lap: both bits set.
        d.write_desc(0, buf(0), 8, 0, DESC_F_AVAIL | DESC_F_USED);
        assert_eq!(r.pending(), Ok(0));
        // Available for wrap counter 0 (the next lap), not for 1.
        d.write_desc(0, buf(0), 8, 0, DESC_F_USED);
        assert_eq!(r.pending(), Ok(0));
        d.write_desc(0, buf(0), 8, 0, DESC_F_AVAIL);
        assert_eq!(r.pending(), Ok(1));
    }

    #[test]
    fn multi_descriptor_chain_takes_the_id_of_its_last_descriptor() {
        let mut d = Driver::new(8);
        let mut r = d.ring(false);
        d.offer(6, &[(buf(0), 12, DESC_F_WRITE), (buf(0) + 12, 100, DESC_F_WRITE), (buf(3), 50, DESC_F_WRITE)]);
        let mut c = Chain::default();
        assert_eq!(r.pop_chain(&mut c, R, false), Err(PopError::Chain(ChainError::Permission)));
        assert_eq!(r.next_avail_state(), WRAP_BIT, "an error leaves the ring as it was");
        let t = r.pop_chain(&mut c, W, false).unwrap().unwrap();
        assert_eq!(t, Token { id: 6, ndesc: 3 });
        assert_eq!(c.head(), 6);
        assert_eq!(c.len(), 162);
        assert_eq!(c.segments().len(), 2, "adjacent buffers merge");
        let mut cur = Cursor::new(&c);
        assert_eq!(cur.scatter(&[7u8; 20]), 20);
        assert_eq!(d.t.read(buf(0), 20), vec![7u8; 20]);
    }

    #[test]
    fn indirect_tables() {
        let mut d = Driver::new(8);
        let mut r = d.ring(false);
        let table = buf(2) + 8; // deliberately not 16-aligned
        let enc = |addr: u64, len: u32, id: u16, flags: u16| {
            let mut b = Vec::new();
            b.extend_from_slice(&addr.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&id.to_le_bytes());
            b.extend_from_slice(&flags.to_le_bytes());
            b
        };
        // NEXT, ids and other flags inside the table are ignored: all
        // entries are walked in order.
        let mut bytes = enc(buf(0), 12, 99, DESC_F_NEXT);
        bytes.extend(enc(buf(1), 100, 0xffff, DESC_F_INDIRECT | DESC_F_AVAIL));
        bytes.extend(enc(buf(3), 30, 0, 0));
        d.t.write(table, &bytes);
        d.offer(3, &[(table, 48, DESC_F_INDIRECT)]);
        let mut c = Chain::default();
        assert_eq!(r.pop_chain(&mut c, R, false), Err(PopError::Chain(ChainError::Length)), "not negotiated");
        let t = r.pop_chain(&mut c, R, true).unwrap().unwrap();
        assert_eq!(t, Token { id: 3, ndesc: 1 });
        assert_eq!(c.len(), 142);
        assert_eq!(c.segments().len(), 3);
        r.push_used(t, 0);
        r.publish_used();
        assert_eq!(d.take_used(), Some((3, 0, DESC_F_AVAIL | DESC_F_USED)));

        // Permission is checked inside the table; WRITE on the indirect
        // descriptor itself is ignored.
        d.offer(4, &[(table, 48, DESC_F_INDIRECT | DESC_F_WRITE)]);
        assert_eq!(r.pop_chain(&mut c, W, true), Err(PopError::Chain(ChainError::Permission)));
        assert!(c.is_empty());
        assert!(r.pop_chain(&mut c, R, true).unwrap().is_some());

        // Bad tables and bad uses of INDIRECT.
        let mut bad = |bufs: &[(u64, u32, u16)], e: ChainError| {
            let mut d2 = Driver::new(8);
            d2.t.write(table, &bytes);
            let mut r2 = d2.ring(false);
            d2.offer(0, bufs);
            assert_eq!(r2.pop_chain(&mut c, R, true), Err(PopError::Chain(e)), "{bufs:?}");
        };
        bad(&[(table, 20, DESC_F_INDIRECT)], ChainError::Length);
        bad(&[(table, 0, DESC_F_INDIRECT)], ChainError::Length);
        bad(&[(table, 16 * (MAX_INDIRECT_TEST + 1), DESC_F_INDIRECT)], ChainError::Length);
        bad(&[(GPA + (1 << 20) - 16, 32, DESC_F_INDIRECT)], ChainError::OutOfBounds);
        // INDIRECT with NEXT, and INDIRECT after a direct descriptor.
        bad(&[(table, 48, DESC_F_INDIRECT), (buf(5), 10, 0)], ChainError::Length);
        bad(&[(buf(5), 10, 0), (table, 48, DESC_F_INDIRECT)], ChainError::Length);
    }

    const MAX_INDIRECT_TEST: u32 = crate::chain::MAX_INDIRECT;

    #[test]
    fn chain_longer_than_the_ring_is_an_error_not_a_hang() {
        let d = Driver::new(8);
        let mut r = d.ring(false);
        for i in 0..8 {
            d.write_desc(i, buf(i as u64), 16, 0, DESC_F_AVAIL | DESC_F_NEXT);
        }
        let mut c = Chain::default();
        assert_eq!(r.pop_chain(&mut c, R, false), Err(PopError::Chain(ChainError::Loop)));
        assert!(c.is_empty());
        assert_eq!(r.next_avail_state(), WRAP_BIT);
        // A chain of exactly the ring size is fine.
        d.write_desc(7, buf(7), 16, 2, DESC_F_AVAIL);
        assert_eq!(r.pop_chain(&mut c, R, false), Ok(Some(Token { id: 2, ndesc: 8 })));

        // A chain running into descriptors taken and not yet returned.
        let mut d = Driver::new(4);
        let mut r = d.ring(false);
        d.offer(0, &[(buf(0), 8, 0), (buf(1), 8, 0)]);
        let t = r.pop_chain(&mut c, R, false).unwrap().unwrap();
        for i in 2..4 {
            d.write_desc(i, buf(i as u64), 8, 1, DESC_F_AVAIL | DESC_F_NEXT);
        }
        assert_eq!(r.pop_chain(&mut c, R, false), Err(PopError::Chain(ChainError::Loop)));
        r.push_used(t, 0);
        r.publish_used();
        assert!(d.take_used().is_some());
        // Once they are returned the same chain (slots 2, 3, 0) is taken:
        // slot 0 now holds our used descriptor; its flags say no NEXT.
        assert_eq!(r.pop_chain(&mut c, R, false), Ok(Some(Token { id: 0, ndesc: 3 })));

        // Past the segment limit: still told apart from a long chain.
        let d = Driver::new(256);
        let mut r = d.ring(false);
        for i in 0..256u16 {
            d.write_desc(i, GPA + BUF_OFF + 64 * i as u64, 8, 0, DESC_F_AVAIL | DESC_F_NEXT);
        }
        assert_eq!(r.pop_chain(&mut c, R, false), Err(PopError::Chain(ChainError::Loop)));
        d.write_desc(100, GPA + BUF_OFF, 8, 0, DESC_F_AVAIL);
        assert_eq!(r.pop_chain(&mut c, R, false), Err(PopError::Chain(ChainError::Length)));
    }

    #[test]
    fn refuses_out_of_bounds_overflow_and_bad_ids() {
        let mut c = Chain::default();
        let cases: [(u64, u32, u16, PopError); 4] = [
            (0x1000, 64, 0, PopError::Chain(ChainError::OutOfBounds)),
            (GPA + (1 << 20) - 8, 64, 0, PopError::Chain(ChainError::OutOfBounds)),
            (u64::MAX - 4, 64, 0, PopError::Chain(ChainError::Length)),
            (buf(0), 64, 8, PopError::Ring(RingError::HeadIndex(8))),
        ];
        for (addr, len, id, e) in cases {
            let mut d = Driver::new(8);
            let mut r = d.ring(false);
            d.offer(id.min(7), &[(addr, len, 0)]);
            d.write_desc(0, addr, len, id, DESC_F_AVAIL);
            assert_eq!(r.pop_chain(&mut c, R, false), Err(e));
            assert!(c.is_empty());
            assert_eq!(r.next_avail_state(), WRAP_BIT);
            assert_eq!(e.kind(), e.kind());
        }
        assert_eq!(PopError::Ring(RingError::HeadIndex(8)).kind(), ErrorKind::DescIndexInvalid);
        assert_eq!(PopError::Chain(ChainError::Loop).kind(), ErrorKind::ChainLoop);
    }

    #[test]
    fn in_order_returns_a_batch_with_one_used_descriptor() {
        let mut d = Driver::new(8);
        let mut r = d.ring(false);
        let mut c = Chain::default();
        // Lap 1: ids 0..3 (the middle chain takes two descriptors).
        d.offer(0, &[(buf(0), 60, 0)]);
        d.offer(1, &[(buf(1), 12, 0), (buf(2), 60, 0)]);
        d.offer(2, &[(buf(3), 60, 0)]);
        let t: Vec<Token> = (0..3).map(|_| r.pop_chain(&mut c, R, false).unwrap().unwrap()).collect();
        r.push_used_in_order(t[2], 3, 4);
        r.publish_used();
        // One used descriptor, at the first chain's position, with the last
        // id; the driver skips to position 4 (as an IN_ORDER driver does,
        // by the batch it computes from the id).
        assert_eq!(d.read_desc(0).2, 2);
        assert_eq!(d.read_desc(0).3 & (DESC_F_AVAIL | DESC_F_USED), DESC_F_AVAIL | DESC_F_USED);
        assert_eq!(d.read_desc(0).1, 0);
        for s in 1..4 {
            assert_eq!(d.read_desc(s).3 & DESC_F_USED, 0, "slot {s} is not written");
        }
        assert_eq!(r.next_used_state(), WRAP_BIT | 4);
        // Everything taken is back: the whole ring is room again, and the
        // next lap's batch wraps round with the wrap counter flipped.
        for id in 3..7 {
            d.offer(id, &[(buf(id as u64), 60, 0)]);
        }
        let t: Vec<Token> = (0..4).map(|_| r.pop_chain(&mut c, R, false).unwrap().unwrap()).collect();
        r.push_used_in_order(t[3], 4, 4);
        r.publish_used();
        assert_eq!(d.read_desc(4).2, 6);
        assert_eq!(r.next_used_state(), 0, "position 0 of lap 2");
        assert_eq!(r.next_used_state(), r.next_avail_state());
    }

    #[test]
    fn buffer_hint_takes_nothing_and_stops_at_what_is_not_available() {
        let mut d = Driver::new(8);
        let mut r = d.ring(false);
        let mut c = Chain::default();
        // A good buffer, one outside memory, a two-descriptor chain, one
        // whose address would overflow; the hint reads past none of them
        // and beyond them is nothing offered.
        d.offer(0, &[(buf(0), 60, DESC_F_WRITE)]);
        d.offer(1, &[(1 << 40, 60, DESC_F_WRITE)]);
        d.offer(2, &[(buf(2), 12, DESC_F_WRITE), (buf(3), 60, DESC_F_WRITE)]);
        d.offer(3, &[(u64::MAX - 4, 100, DESC_F_WRITE)]);
        let before = (r.next_avail_state(), r.room_upto(8));
        for max in [0, 1, 4, 64] {
            assert_eq!(r.room_prefetching(max), r.room_upto(max), "the count with the hint is the count");
        }
        for (count, from, to) in [(8, 128, 1530), (64, 0, u64::MAX), (2, 4096, 64), (0, 0, 1500)] {
            r.stage_buffers(count, from, to);
        }
        r.prefetch_next();
        assert_eq!(before.1, 4);
        assert_eq!((r.next_avail_state(), r.room_upto(8)), before, "nothing taken");
        // The pops find the ring as the driver left it.
        assert_eq!(r.pop_chain(&mut c, W, false).unwrap().unwrap().id, 0);
        assert_eq!(r.pop_chain(&mut c, W, false), Err(PopError::Chain(ChainError::OutOfBounds)));
    }

    #[test]
    fn more_used_descriptors_than_the_shadow_holds_all_arrive_in_order() {
        let n = SHADOW as u16 * 2 + 3;
        let mut d = Driver::new(256);
        let mut r = d.ring(false);
        let mut c = Chain::default();
        for id in 0..n {
            d.offer(id, &[(buf(id as u64 % 8), 100, DESC_F_WRITE)]);
        }
        for k in 0..n {
            let t = r.pop_chain(&mut c, W, false).unwrap().unwrap();
            assert_eq!(t.id, k);
            r.push_used(t, 10 + k as u32);
        }
        // Some went out when the shadow filled, but the batch's first
        // flags did not: the driver still sees nothing.
        assert_eq!(d.take_used(), None);
        r.publish_used();
        for k in 0..n {
            assert_eq!(d.take_used(), Some((k, 10 + k as u32, DESC_F_AVAIL | DESC_F_USED | DESC_F_WRITE)));
        }
        assert_eq!(d.take_used(), None);
    }

    #[test]
    fn a_used_run_writes_what_pushes_one_by_one_write() {
        // Two rings driven alike over several laps: one returns each
        // chain with push_used, the other in runs (some after a push_used
        // that left a batch's first queued); the driver sees the same.
        let mut rnd = lcg(7);
        let (mut d1, mut d2) = (Driver::new(16), Driver::new(16));
        let (mut r1, mut r2) = (d1.ring(false), d2.ring(false));
        let mut c = Chain::default();
        let mut id = 0u16;
        for round in 0..40 {
            let k = 1 + rnd(6) as u16;
            for _ in 0..k {
                let nbufs = 1 + rnd(2) as usize;
                let bufs: Vec<_> = (0..nbufs).map(|b| (buf(b as u64), 100, DESC_F_WRITE)).collect();
                d1.offer(id, &bufs);
                d2.offer(id, &bufs);
                id = (id + 1) % 16;
            }
            let mut run = Vec::new();
            for _ in 0..k {
                let t1 = r1.pop_chain(&mut c, W, false).unwrap().unwrap();
                let t2 = r2.pop_chain(&mut c, W, false).unwrap().unwrap();
                assert_eq!(t1, t2);
                run.push((t2, rnd(3) * 50));
            }
            for &(t, len) in &run {
                r1.push_used(t, len);
            }
            // Now and then the first goes alone, the rest as a run.
            let alone = if round % 3 == 0 { 1 } else { 0 };
            for &(t, len) in &run[..alone] {
                r2.push_used(t, len);
            }
            r2.push_used_run(run[alone..].iter().copied());
            if round % 2 == 0 {
                assert_eq!(d2.take_used(), None, "nothing before publish");
            }
            r1.publish_used();
            r2.publish_used();
            for &(t, len) in &run {
                let flags =
                    if d1.used_wrap { DESC_F_AVAIL | DESC_F_USED } else { 0 } | if len > 0 { DESC_F_WRITE } else { 0 };
                assert_eq!(d1.take_used(), Some((t.id, len, flags)), "round {round}");
                assert_eq!(d2.take_used(), Some((t.id, len, flags)), "round {round}");
            }
            assert_eq!((d1.take_used(), d2.take_used()), (None, None));
            assert_eq!(r1.next_used_state(), r2.next_used_state());
            assert_eq!(
                (r1.in_flight, r1.in_flight_desc, r1.unsignalled),
                (r2.in_flight, r2.in_flight_desc, r2.unsignalled)
            );
        }
    }

    #[test]
    fn used_descriptors_are_published_as_one_batch() {
        let mut d = Driver::new(8);
        let mut r = d.ring(false);
        let mut c = Chain::default();
        d.offer(4, &[(buf(0), 100, DESC_F_WRITE), (buf(1), 100, DESC_F_WRITE)]);
        d.offer(2, &[(buf(2), 100, DESC_F_WRITE)]);
        d.offer(7, &[(buf(3), 100, DESC_F_WRITE), (buf(4), 100, DESC_F_WRITE), (buf(5), 100, DESC_F_WRITE)]);
        let t: Vec<Token> = (0..3).map(|_| r.pop_chain(&mut c, W, false).unwrap().unwrap()).collect();
        assert_eq!(t.iter().map(|t| t.ndesc).collect::<Vec<_>>(), [2, 1, 3]);
        r.push_used(t[0], 150);
        r.push_used(t[1], 0);
        r.push_used(t[2], 300);
        // Nothing visible at the driver's position until publish.
        assert_eq!(d.take_used(), None);
        // Not even written: the ring still holds what the driver put there
        // (the used descriptors go out together at publish).
        let (_, len, id, flags) = d.read_desc(0);
        assert_eq!((len, id), (100, 0xbeef), "written only at publish");
        assert_eq!(flags & (DESC_F_AVAIL | DESC_F_USED), DESC_F_AVAIL, "still the driver's flags");
        r.publish_used();
        // Layout: one used descriptor per chain, at positions 0, 2, 3.
        assert_eq!(d.read_desc(0).3, DESC_F_AVAIL | DESC_F_USED | DESC_F_WRITE);
        assert_eq!(d.read_desc(2).3, DESC_F_AVAIL | DESC_F_USED);
        assert_eq!(d.read_desc(3).3, DESC_F_AVAIL | DESC_F_USED | DESC_F_WRITE);
        assert_eq!(d.take_used(), Some((4, 150, DESC_F_AVAIL | DESC_F_USED | DESC_F_WRITE)));
        assert_eq!(d.take_used(), Some((2, 0, DESC_F_AVAIL | DESC_F_USED)));
        assert_eq!(d.take_used(), Some((7, 300, DESC_F_AVAIL | DESC_F_USED | DESC_F_WRITE)));
        assert_eq!(d.take_used(), None);
        // Publishing again with nothing new changes nothing.
        r.publish_used();
        assert_eq!(d.take_used(), None);
        // The next lap writes used descriptors with wrap counter 0.
        for id in 0..3 {
            d.offer(id, &[(buf(id as u64), 10, DESC_F_WRITE)]);
        }
        for _ in 0..3 {
            let t = r.pop_chain(&mut c, W, false).unwrap().unwrap();
            r.push_used(t, 10);
        }
        r.publish_used();
        assert_eq!(d.take_used(), Some((0, 10, DESC_F_WRITE | DESC_F_AVAIL | DESC_F_USED)), "slot 6: lap 1");
        assert_eq!(d.take_used(), Some((1, 10, DESC_F_WRITE | DESC_F_AVAIL | DESC_F_USED)), "slot 7: lap 1");
        assert_eq!(d.take_used(), Some((2, 10, DESC_F_WRITE)), "slot 0: lap 2");
    }

    #[test]
    fn unpop_gives_chains_back_across_the_wrap() {
        let mut d = Driver::new(4);
        let mut r = d.ring(false);
        let mut c = Chain::default();
        d.offer(0, &[(buf(0), 10, 0), (buf(1), 10, 0), (buf(2), 10, 0)]);
        let t0 = r.pop_chain(&mut c, R, false).unwrap().unwrap();
        r.push_used(t0, 0);
        r.publish_used();
        assert!(d.take_used().is_some());
        d.offer(1, &[(buf(0), 10, 0), (buf(1), 10, 0)]); // slots 3, 0
        d.offer(2, &[(buf(2), 10, 0)]); // slot 1
        let t1 = r.pop_chain(&mut c, R, false).unwrap().unwrap();
        let t2 = r.pop_chain(&mut c, R, false).unwrap().unwrap();
        assert_eq!(r.next_avail_state(), 2);
        r.unpop(2, 3);
        assert_eq!(r.next_avail_state(), 3 | WRAP_BIT);
        assert_eq!(r.pop_chain(&mut c, R, false).unwrap(), Some(t1));
        r.unpop(1, 2);
        assert_eq!(r.pop_chain(&mut c, R, false).unwrap(), Some(t1));
        assert_eq!(r.pop_chain(&mut c, R, false).unwrap(), Some(t2));
        r.push_used(t1, 0);
        r.push_used(t2, 0);
        r.publish_used();
        assert_eq!(d.take_used().map(|u| u.0), Some(1));
        assert_eq!(d.take_used().map(|u| u.0), Some(2));
    }

    #[test]
    #[should_panic(expected = "unpop")]
    fn unpop_of_a_returned_chain_is_a_bug() {
        let mut d = Driver::new(4);
        let mut r = d.ring(false);
        let mut c = Chain::default();
        d.offer(0, &[(buf(0), 10, 0)]);
        let t = r.pop_chain(&mut c, R, false).unwrap().unwrap();
        r.push_used(t, 0);
        r.unpop(1, 1);
    }

    #[test]
    fn interrupt_suppression_without_event_idx() {
        let mut d = Driver::new(4);
        let mut r = d.ring(false);
        let mut c = Chain::default();
        d.offer(0, &[(buf(0), 10, 0)]);
        let t = r.pop_chain(&mut c, R, false).unwrap().unwrap();
        r.push_used(t, 0);
        r.publish_used();
        d.set_driver_event(0, EVENT_FLAGS_ENABLE);
        assert!(r.needs_interrupt());
        d.set_driver_event(0, EVENT_FLAGS_DISABLE);
        assert!(!r.needs_interrupt());
        // DESC is only valid with EVENT_IDX: treated as enabled.
        d.set_driver_event(0, EVENT_FLAGS_DESC);
        assert!(r.needs_interrupt());
    }

    #[test]
    fn interrupt_suppression_with_event_idx() {
        let mut d = Driver::new(5);
        let mut r = d.ring(true);
        let mut c = Chain::default();
        let mut id = 0u16;
        let mut complete = |d: &mut Driver, r: &mut PackedRing, n: usize| {
            for _ in 0..n {
                d.offer(id, &[(buf(0), 10, 0)]);
                id = (id + 1) % 5;
                let t = r.pop_chain(&mut c, R, false).unwrap().unwrap();
                r.push_used(t, 0);
            }
            r.publish_used();
            while d.take_used().is_some() {}
        };
        // Event at position 3 of lap 1.
        d.set_driver_event(3 | WRAP_BIT, EVENT_FLAGS_DESC);
        complete(&mut d, &mut r, 1); // used 0
        assert!(r.needs_interrupt(), "the first completion always interrupts");
        complete(&mut d, &mut r, 2); // used 1, 2
        assert!(!r.needs_interrupt());
        complete(&mut d, &mut r, 1); // used 3
        assert!(r.needs_interrupt());
        complete(&mut d, &mut r, 2); // used 4, 0 (lap 2)
        assert!(!r.needs_interrupt(), "3 of lap 1 already passed");
        // Event at position 1 of lap 2 (wrap counter 0), passed by a batch
        // that crosses nothing else.
        d.set_driver_event(1, EVENT_FLAGS_DESC);
        complete(&mut d, &mut r, 3); // used 1, 2, 3 of lap 2
        assert!(r.needs_interrupt());
        // Event at 0 of lap 3 (wrap 1), reached by a batch crossing the end.
        d.set_driver_event(WRAP_BIT, EVENT_FLAGS_DESC);
        complete(&mut d, &mut r, 1); // used 4
        assert!(!r.needs_interrupt());
        complete(&mut d, &mut r, 2); // used 0, 1 of lap 3
        assert!(r.needs_interrupt());
        // Nothing new: no interrupt even if the event is at the next one.
        d.set_driver_event(2 | WRAP_BIT, EVENT_FLAGS_DESC);
        assert!(!r.needs_interrupt());
        // ENABLE and DISABLE still apply.
        d.set_driver_event(0, EVENT_FLAGS_DISABLE);
        complete(&mut d, &mut r, 1);
        assert!(!r.needs_interrupt());
        d.set_driver_event(0, EVENT_FLAGS_ENABLE);
        assert!(r.needs_interrupt());
    }

    #[test]
    fn kick_suppression_both_modes() {
        let mut d = Driver::new(4);
        let mut r = d.ring(false);
        r.set_notification(false);
        assert_eq!(d.device_event().1, EVENT_FLAGS_DISABLE);
        r.set_notification(true);
        assert_eq!(d.device_event().1, EVENT_FLAGS_ENABLE);

        let mut r = d.ring(true);
        let mut c = Chain::default();
        for id in 0..3 {
            d.offer(id, &[(buf(0), 10, 0), (buf(1), 10, 0)]);
            let t = r.pop_chain(&mut c, R, false).unwrap().unwrap();
            r.push_used(t, 0);
            r.publish_used();
            while d.take_used().is_some() {}
        }
        // Six descriptors into a ring of 4: position 2 of lap 2.
        r.set_notification(true);
        assert_eq!(d.device_event(), (2, EVENT_FLAGS_DESC));
        r.set_notification(false);
        assert_eq!(d.device_event().1, EVENT_FLAGS_DISABLE);
    }

    #[test]
    fn pop_simple_takes_only_common_chains_and_stops_where_pop_chain_must_look() {
        let mut d = Driver::new(8);
        let mut r = d.ring(false);
        let mut cs: Vec<Chain> = (0..8).map(|_| Chain::default()).collect();
        // Two one-buffer chains, a chain of two, one more one-buffer chain.
        d.offer(0, &[(buf(0), 64, 0)]);
        d.offer(1, &[(buf(1), 100, 0)]);
        d.offer(2, &[(buf(2), 10, 0), (buf(3), 20, 0)]);
        d.offer(3, &[(buf(4), 30, 0)]);
        assert_eq!(r.pop_simple(&mut cs, R), 2);
        assert_eq!((cs[0].token(), cs[0].len(), cs[0].readable_len()), (Token { id: 0, ndesc: 1 }, 64, 64));
        assert_eq!((cs[1].token(), cs[1].len()), (Token { id: 1, ndesc: 1 }, 100));
        assert_eq!(r.pop_simple(&mut cs, R), 0, "a chain of two is pop_chain's");
        assert_eq!(r.pop_chain(&mut cs[2], R, false), Ok(Some(Token { id: 2, ndesc: 2 })));
        // Control queues (mixed access) are always walked.
        assert_eq!(r.pop_simple(&mut cs[3..], Access::Mixed), 0);
        assert_eq!(r.pop_simple(&mut cs[3..], R), 1);
        assert_eq!(cs[3].token(), Token { id: 3, ndesc: 1 });
        assert_eq!(r.pop_simple(&mut cs, R), 0, "nothing more available");
        assert_eq!(r.in_flight_desc, 5);

        // Each malformed one-buffer chain: pop_simple takes nothing and
        // moves nothing; pop_chain then reports it.
        let cases: [(u64, u32, u16, u16, Access, PopError); 4] = [
            (buf(0), 64, 0, DESC_F_WRITE, R, PopError::Chain(ChainError::Permission)),
            (buf(0), 64, 0, 0, W, PopError::Chain(ChainError::Permission)),
            (0x1000, 64, 0, 0, R, PopError::Chain(ChainError::OutOfBounds)),
            (buf(0), 64, 8, 0, R, PopError::Ring(RingError::HeadIndex(8))),
        ];
        for (addr, len, id, flags, access, e) in cases {
            let mut d = Driver::new(8);
            let mut r = d.ring(false);
            d.offer(id.min(7), &[(addr, len, flags)]);
            d.write_desc(0, addr, len, id, DESC_F_AVAIL | flags);
            assert_eq!(r.pop_simple(&mut cs, access), 0, "{e:?}");
            assert_eq!(r.next_avail_state(), WRAP_BIT);
            assert_eq!(r.pop_chain(&mut cs[0], access, false), Err(e));
        }
        // An empty buffer is left to pop_chain's walk too (which takes it).
        let mut d = Driver::new(8);
        let mut r = d.ring(false);
        d.offer(0, &[(buf(0), 0, 0)]);
        assert_eq!(r.pop_simple(&mut cs, R), 0);
        assert_eq!(r.pop_chain(&mut cs[0], R, false), Ok(Some(Token { id: 0, ndesc: 1 })));
    }

    #[test]
    fn fill_one_writes_one_writable_descriptor_across_the_wrap() {
        use crate::vq::{Filled, Virtqueue};
        let mut d = Driver::new(4);
        let mut q = Virtqueue::Packed(d.ring(false));
        let frame: Vec<u8> = (0..64u8).collect();
        d.t.write(buf(7), &frame);
        let hdr = [0xee; 12];
        let mut src = [Chain::default()];
        // A frame to send and a buffer to receive it, lap after lap (the
        // ring of 4 wraps every other round).
        for round in 0..6u8 {
            d.offer(0, &[(buf(7), 64, 0)]);
            assert_eq!(q.pop_burst(&mut src, R, false).0, 1);
            d.t.write(buf(1), &[0; 76]);
            d.offer(1, &[(buf(1), 76, DESC_F_WRITE)]);
            assert_eq!(q.fill_one(&hdr, &src[0], 0, 64, || true), Filled::Frame, "round {round}");
            q.complete(&src[0], 0);
            q.publish_used();
            assert_eq!(d.take_used().map(|(id, len, _)| (id, len)), Some((1, 76)), "round {round}");
            assert_eq!(d.take_used().map(|(id, len, _)| (id, len)), Some((0, 0)));
            assert_eq!((d.t.read(buf(1), 12), d.t.read(buf(1) + 12, 64)), (hdr.to_vec(), frame.clone()));
        }
        // A chain of two, a read-only buffer, one too small: nothing taken
        // (the general take has them).
        d.offer(0, &[(buf(7), 64, 0)]);
        assert_eq!(q.pop_burst(&mut src, R, false).0, 1);
        for bufs in [
            &[(buf(2), 12, DESC_F_WRITE), (buf(3), 1500, DESC_F_WRITE)][..],
            &[(buf(2), 1500, 0)],
            &[(buf(2), 75, DESC_F_WRITE)],
        ] {
            let mut d2 = Driver::new(4);
            let mut q2 = Virtqueue::Packed(d2.ring(false));
            d2.offer(1, bufs);
            assert_eq!(q2.fill_one(&hdr, &src[0], 0, 64, || true), Filled::NotOne, "{bufs:?}");
            assert_eq!(q2.room(4), 1, "{bufs:?}: nothing taken");
            assert_eq!(q2.fill_one(&hdr, &src[0], 0, 64, || false), Filled::NotOne, "{bufs:?}: not asked");
        }
        // Refused: nothing taken; then filled.
        d.offer(1, &[(buf(1), 1500, DESC_F_WRITE)]);
        assert_eq!(q.fill_one(&hdr, &src[0], 0, 64, || false), Filled::Refused);
        assert_eq!(q.room(4), 1);
        assert_eq!(q.fill_one(&hdr, &src[0], 0, 64, || true), Filled::Frame);
        assert_eq!(q.room(4), 0);
    }

    #[test]
    fn pop_simple_never_takes_more_than_the_ring_has_free() {
        // The driver reuses a slot the device has not returned: a broken
        // driver; the device takes no more descriptors than are not in
        // flight.
        let mut d = Driver::new(4);
        let mut r = d.ring(false);
        let mut cs: Vec<Chain> = (0..8).map(|_| Chain::default()).collect();
        for id in 0..4 {
            d.offer(id, &[(buf(id as u64), 64, 0)]);
        }
        assert_eq!(r.pop_simple(&mut cs, R), 4);
        // Slot 0 again, made available for the next lap.
        d.offer(0, &[(buf(0), 64, 0)]);
        assert_eq!(r.pop_simple(&mut cs, R), 0);
        r.push_used(cs[0].token(), 0);
        assert_eq!(r.pop_simple(&mut cs, R), 1);
    }

    #[test]
    fn pop_simple_and_pop_chain_share_many_laps_in_order() {
        // Chains of one or two descriptors over many laps of a ring of 7,
        // taken by bursts of pop_simple with a pop_chain after each:
        // every chain comes out once, in order, with its length.
        let size = 7u16;
        let mut d = Driver::new(size);
        let mut r = d.ring(true);
        let mut cs: Vec<Chain> = (0..size).map(|_| Chain::default()).collect();
        let mut free: Vec<u16> = (0..size).collect();
        let mut room = size;
        let mut rnd = lcg(0x9e37_79b9u32);
        let mut expect = std::collections::VecDeque::new();
        let mut simple = 0;
        for _ in 0..3000 {
            for _ in 0..rnd(4) {
                let n = 1 + (rnd(4) == 0) as u16;
                if n > room || free.is_empty() {
                    break;
                }
                let id = free.remove(rnd(free.len() as u32) as usize);
                let bufs: Vec<_> = (0..n).map(|k| (buf(k as u64), 8 + id as u32, DESC_F_WRITE)).collect();
                d.offer(id, &bufs);
                room -= n;
                expect.push_back((id, n));
            }
            let k = r.pop_simple(&mut cs[..rnd(size as u32 + 1) as usize], W);
            simple += k;
            let mut taken: Vec<Token> = cs[..k].iter().map(Chain::token).collect();
            for (c, t) in cs[..k].iter().zip(&taken) {
                assert_eq!((c.len(), t.ndesc), (8 + t.id as u64, 1));
            }
            if let Some(t) = r.pop_chain(&mut cs[0], W, false).unwrap() {
                taken.push(t);
            }
            for t in &taken {
                assert_eq!(Some((t.id, t.ndesc)), expect.pop_front());
                r.push_used(*t, 1);
            }
            r.publish_used();
            while let Some((id, _, _)) = d.take_used() {
                room += d.ndesc[id as usize].max(1);
                free.push(id);
            }
        }
        assert!(simple > 1000, "pop_simple took {simple}");
    }

    #[test]
    fn simulated_driver_many_laps_odd_size() {
        // A small deterministic simulation: chains of 1..=4 descriptors,
        // batches of varying size, over hundreds of laps of a ring of 7.
        let size = 7u16;
        let mut d = Driver::new(size);
        let mut r = d.ring(true);
        let mut c = Chain::default();
        let mut free: Vec<u16> = (0..size).collect();
        let mut room = size;
        let mut rnd = lcg(0x1234_5678u32);
        let mut expect = std::collections::VecDeque::new();
        for _ in 0..2000 {
            // Driver offers a few chains if there is room.
            for _ in 0..rnd(3) {
                let n = 1 + rnd(4) as u16;
                if n > room || free.is_empty() {
                    break;
                }
                let id = free.remove(rnd(free.len() as u32) as usize);
                let bufs: Vec<_> = (0..n).map(|k| (buf(k as u64), 8, DESC_F_WRITE)).collect();
                d.offer(id, &bufs);
                room -= n;
                expect.push_back((id, n));
            }
            // Device takes some, maybe gives one back, returns the rest.
            let mut taken = Vec::new();
            for _ in 0..rnd(4) {
                match r.pop_chain(&mut c, W, false).unwrap() {
                    Some(t) => {
                        assert_eq!(Some((t.id, t.ndesc)), expect.pop_front());
                        taken.push(t);
                    }
                    None => break,
                }
            }
            if !taken.is_empty() && rnd(4) == 0 {
                let back = 1 + rnd(taken.len() as u32) as usize;
                let ndesc = taken[taken.len() - back..].iter().map(|t| t.ndesc as u32).sum();
                r.unpop(back as u32, ndesc);
                for t in taken.drain(taken.len() - back..).rev() {
                    expect.push_front((t.id, t.ndesc));
                }
            }
            for t in &taken {
                r.push_used(*t, t.id as u32);
            }
            r.publish_used();
            let _ = r.needs_interrupt();
            for t in &taken {
                let (id, len, _) = d.take_used().expect("published");
                assert_eq!((id, len), (t.id, t.id as u32));
                free.push(id);
                room += t.ndesc;
            }
            assert_eq!(d.take_used(), None);
        }
    }
}
