//! The one copy: bytes move from the sender's buffers straight into the
//! receiver's buffers, segment to segment, with no staging buffer.
//!
//! A [`Cursor`] is a position inside a walked [`Chain`]; [`copy`] moves
//! bytes between two cursors. Small reads into the daemon's own memory
//! ([`Cursor::gather`], e.g. the Ethernet header the switch looks at) and
//! small writes from it ([`Cursor::scatter`], e.g. the virtio-net header)
//! use the same walk.

use crate::chain::Chain;

/// Copies `n` bytes from `src` to `dst`. Frames are mostly short and the
/// header writes tiny, so up to 64 bytes (one cache line) are moved with
/// two or four unaligned 16-byte words (two 8-byte ones below 16 bytes),
/// the first ones from the start and the last ones ending at `n`, which
/// overlap where `n` is not a multiple of 16 (no loop, no call); longer
/// copies use `memcpy`, which streams whole cache lines.
///
/// # Safety
/// `src..src+n` must be readable and `dst..dst+n` writable, and the two
/// ranges must not overlap.
#[inline(always)]
unsafe fn copy_bytes(src: *const u8, dst: *mut u8, n: usize) {
    /// Copies the 16 bytes at offset `at`. SAFETY: the caller keeps
    /// `at + 16 <= n`, inside both ranges.
    #[inline(always)]
    unsafe fn word(src: *const u8, dst: *mut u8, at: usize) {
        // SAFETY: the caller's contract.
        unsafe { dst.add(at).cast::<u128>().write_unaligned(src.add(at).cast::<u128>().read_unaligned()) };
    }
    if (16..=64).contains(&n) {
        // SAFETY: n >= 16 covers 0 .. 16 and n - 16 .. n; n > 32 covers
        // 16 .. 32 and n - 32 .. n - 16; all inside both ranges.
        unsafe {
            word(src, dst, 0);
            if n > 32 {
                word(src, dst, 16);
                word(src, dst, n - 32);
            }
            word(src, dst, n - 16);
        }
    } else if (8..16).contains(&n) {
        // SAFETY: n >= 8, so 0 .. 8 and n - 8 .. n are inside both ranges.
        unsafe {
            dst.cast::<u64>().write_unaligned(src.cast::<u64>().read_unaligned());
            dst.add(n - 8).cast::<u64>().write_unaligned(src.add(n - 8).cast::<u64>().read_unaligned());
        }
    } else {
        // SAFETY: the caller's contract.
        unsafe { std::ptr::copy_nonoverlapping(src, dst, n) };
    }
}

/// The `N` bytes of `chain` from `off` on, read straight from its first
/// segment; `None` if they do not all lie in it (read them with a
/// [`Cursor`] then). How the switch reads the headers of a frame.
#[inline]
pub fn peek<const N: usize>(chain: &Chain, off: usize) -> Option<[u8; N]> {
    let s = chain.segments().first()?;
    if off.checked_add(N)? > s.len as usize {
        return None;
    }
    // SAFETY: `s.ptr + off .. + N` lies inside the chain's first segment
    // (checked just above), translated with its length from the chain's
    // memory, which the chain keeps mapped; one unaligned copy out.
    Some(unsafe { s.ptr.add(off).cast::<[u8; N]>().read_unaligned() })
}

/// Hints the CPU to fetch the cache line at `p` (no effect on program
/// state; never faults, whatever `p` is).
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    prefetch_hint::<{ core::arch::x86_64::_MM_HINT_T0 }>(p);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// PREFETCHh of the cache line at `p`, `HINT` one of `_MM_HINT_*`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn prefetch_hint<const HINT: i32>(p: *const u8) {
    // SAFETY: PREFETCHh is a hint: it does not fault and changes no
    // architectural state, for any address.
    unsafe { core::arch::x86_64::_mm_prefetch::<HINT>(p.cast()) };
}

/// Hints the CPU to fetch the cache line at `p` for writing (an early
/// read-for-ownership of a line the other side wrote last).
#[inline(always)]
pub(crate) fn prefetch_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: PREFETCHW is a hint: it does not fault and changes no
        // architectural state, for any address; CPUs without it decode the
        // 0F 0D opcode as a NOP.
        unsafe { core::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly)) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Hints the CPU to fetch the cache line at `p` into its L2 cache, not
/// L1: a line needed some while from now, which should not take one of
/// L1's few miss buffers, nor L1's room, before then.
#[inline(always)]
pub(crate) fn prefetch_l2(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    prefetch_hint::<{ core::arch::x86_64::_MM_HINT_T1 }>(p);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`prefetch_l2`] of the lines of bytes `from..to` of the buffer at `p`
/// (the caller keeps `to` within the buffer).
#[inline(always)]
pub(crate) fn prefetch_lines_l2(p: *const u8, from: usize, to: usize) {
    let mut off = from;
    while off < to {
        prefetch_l2(p.wrapping_add(off));
        off += 64;
    }
}

/// [`prefetch_write`] if `write`, else [`prefetch`]: a buffer the engine
/// writes next (RX) or reads next.
#[inline(always)]
pub(crate) fn prefetch_for(p: *const u8, write: bool) {
    if write {
        prefetch_write(p);
    } else {
        prefetch(p);
    }
}

/// A read/write position inside a chain.
#[derive(Debug)]
pub struct Cursor<'c> {
    chain: &'c Chain,
    seg: usize,
    off: u32,
    left: u64,
}

impl<'c> Cursor<'c> {
    /// A cursor at the start of `chain`.
    pub fn new(chain: &'c Chain) -> Cursor<'c> {
        Cursor { chain, seg: 0, off: 0, left: chain.len() }
    }

    /// Bytes between the cursor and the end of the chain.
    pub fn remaining(&self) -> u64 {
        self.left
    }

    /// The contiguous piece at the cursor, at most `max` bytes.
    #[inline]
    fn piece(&mut self, max: u64) -> Option<(*mut u8, usize)> {
        let segs = self.chain.segments();
        while let Some(s) = segs.get(self.seg) {
            let in_seg = s.len - self.off;
            if in_seg == 0 {
                self.seg += 1;
                self.off = 0;
                continue;
            }
            let take = (in_seg as u64).min(max) as usize;
            return Some((s.ptr.wrapping_add(self.off as usize), take));
        }
        None
    }

    #[inline]
    fn advance(&mut self, n: usize) {
        self.off += n as u32;
        self.left -= n as u64;
    }

    /// Moves the cursor `n` bytes on; false if the chain is shorter.
    pub fn skip(&mut self, n: u64) -> bool {
        let mut n = n;
        while n > 0 {
            let Some((_, take)) = self.piece(n) else { return false };
            self.advance(take);
            n -= take as u64;
        }
        true
    }

    /// Copies bytes at the cursor into `out`; returns how many.
    pub fn gather(&mut self, out: &mut [u8]) -> usize {
        let mut done = 0;
        while done < out.len() {
            let Some((p, take)) = self.piece((out.len() - done) as u64) else { break };
            // SAFETY: `p..p+take` lies inside a segment translated (with its
            // length) from the chain's memory, which the chain keeps mapped;
            // `out[done..done+take]` is in bounds. Tenant memory never
            // overlaps the daemon's own buffer.
            unsafe { copy_bytes(p, out.as_mut_ptr().add(done), take) };
            self.advance(take);
            done += take;
        }
        done
    }

    /// Writes `data` at the cursor; returns how many bytes fitted.
    pub fn scatter(&mut self, data: &[u8]) -> usize {
        let mut done = 0;
        while done < data.len() {
            let Some((p, take)) = self.piece((data.len() - done) as u64) else { break };
            // SAFETY: as in `gather`, with the roles swapped. RX chains are
            // only walked with `Access::DeviceWrites`, so the tenant marked
            // these bytes writable.
            unsafe { copy_bytes(data.as_ptr().add(done), p, take) };
            self.advance(take);
            done += take;
        }
        done
    }
}

/// The common case of a delivery in one step: `hdr` and then `len` bytes of
/// `src` from `src_off` on, written to the start of `dst`, when the source
/// bytes lie in `src`'s first segment and `hdr` plus them fit in `dst`'s
/// first segment. Returns false, having written nothing, otherwise (the
/// caller then takes the general path of [`Cursor`]s and [`copy`]).
#[inline(always)]
pub fn copy_flat(hdr: &[u8], src: &Chain, src_off: u64, len: u64, dst: &Chain) -> bool {
    let Some((from, to)) = flat_pair(hdr.len(), src, src_off, len, dst) else { return false };
    // SAFETY: the ranges `flat_pair` checked, in chains that keep their
    // memory mapped; two mappings of tenant memory, no overlap.
    unsafe { copy_flat_to(hdr, from, len, to) };
    true
}

/// Where [`copy_flat`] reads and writes: the start of `len` bytes of `src`
/// from `src_off`, when they lie in its first segment, and the start of
/// `dst`, when `hdr_len` plus `len` bytes fit its first segment. RX chains
/// are walked with `Access::DeviceWrites`, so the tenant marked that
/// segment writable; both are translated with their lengths from their
/// chains' memory.
#[inline(always)]
fn flat_pair(hdr_len: usize, src: &Chain, src_off: u64, len: u64, dst: &Chain) -> Option<(*const u8, *mut u8)> {
    let (from, d) = (flat_source(src, src_off, len)?, dst.segments().first()?);
    let fits = (hdr_len as u64).checked_add(len).is_some_and(|end| end <= d.len as u64);
    fits.then_some((from, d.ptr))
}

/// Lines of a chain's first segment to fetch while something else is
/// copied: bytes `from..to` of it (as far as it goes), for writing if
/// `write` (what [`Chain::prefetch_range`] fetches at once).
#[derive(Clone, Copy)]
pub struct Ahead<'c> {
    /// The chain.
    pub chain: &'c Chain,
    /// First byte.
    pub from: u64,
    /// Byte past the last.
    pub to: u64,
    /// Fetched for writing (an RX buffer) or reading.
    pub write: bool,
}

/// [`Ahead`]'s lines still to fetch.
struct Fetching {
    at: *const u8,
    end: *const u8,
    write: bool,
}

impl Fetching {
    fn new(a: &Ahead<'_>) -> Fetching {
        let Some(s) = a.chain.segments().first() else {
            return Fetching { at: std::ptr::null(), end: std::ptr::null(), write: a.write };
        };
        let end = a.to.min(s.len as u64) as usize;
        let base = s.ptr.cast_const();
        // Hints only: the pointers are never dereferenced.
        Fetching { at: base.wrapping_add(a.from.min(end as u64) as usize), end: base.wrapping_add(end), write: a.write }
    }

    /// Fetches up to `lines` more lines.
    #[inline(always)]
    fn some(&mut self, lines: usize) {
        for _ in 0..lines {
            if self.at >= self.end {
                return;
            }
            prefetch_for(self.at, self.write);
            self.at = self.at.wrapping_add(64);
        }
    }

    /// Fetches the lines left.
    fn rest(&mut self) {
        self.some(usize::MAX);
    }
}

/// [`copy_flat`] of a large frame with the lines of frames to come
/// (`ahead`: the engine's delivery fetches the next frame's source and
/// the RX buffer two frames on) fetched a few at a time between
/// 256-byte chunks of the copy, instead of all before it: fewer misses
/// wait at once for the line buffers, and the copy's own lines are not
/// queued behind the next frame's. 1518-byte frames through the switch:
/// 1-3% more frames per second (`scripts/ab-switch.sh`, 13 windows a
/// run: B/A 0.972 and 0.968 inlined, 0.990 out of line). Out of
/// line: it is for large frames, and inlined into the delivery loop it
/// cost the loop's small frames instructions (64-byte frames: 302 -> 317
/// per frame; out of line 304).
#[inline(never)]
pub fn copy_flat_fetching(hdr: &[u8], src: &Chain, src_off: u64, len: u64, dst: &Chain, ahead: [Ahead<'_>; 2]) -> bool {
    let Some((from, d)) = flat_pair(hdr.len(), src, src_off, len, dst) else { return false };
    let mut fetch = ahead.map(|a| Fetching::new(&a));
    // SAFETY: as in `copy_flat`: the ranges `flat_pair` checked, kept
    // mapped by their chains, no overlap. Each chunk lies inside.
    unsafe {
        write_hdr(hdr, d);
        let to = d.add(hdr.len());
        let n = len as usize;
        let mut done = 0;
        while n - done >= 256 {
            std::ptr::copy_nonoverlapping(from.add(done), to.add(done), 256);
            fetch.iter_mut().for_each(|f| f.some(4));
            done += 256;
        }
        copy_bytes(from.add(done), to.add(done), n - done);
    }
    fetch.iter_mut().for_each(Fetching::rest);
    true
}

/// Where `len` bytes of `src` from `src_off` start, when they all lie in
/// its first segment (a frame in its sender's first buffer).
#[inline]
pub(crate) fn flat_source(src: &Chain, src_off: u64, len: u64) -> Option<*const u8> {
    let s = src.segments().first()?;
    let end = src_off.checked_add(len)?;
    // SAFETY: src_off <= end <= s.len: inside the segment.
    (end <= s.len as u64).then(|| unsafe { s.ptr.add(src_off as usize).cast_const() })
}

/// Writes `hdr`, then `len` bytes from `from`, to the start of `dst`: a
/// frame and its virtio-net header in two straight copies. A 12-byte
/// header already there, byte for byte, is not written again (the
/// virtio-net header of a frame without offloads is the same every time,
/// and a driver that recycles its buffers, as DPDK's does, has it there
/// from the buffer's last trip): a line only read stays shared with the
/// driver instead of moving between the two cores each frame, as DPDK's
/// virtio driver leaves its transmit headers alone where they already
/// hold what it would write. Packed 64 B loop 14% faster, split 4.5%
/// (`scripts/ab-switch.sh`).
///
/// # Safety
/// `from .. + len` must be readable, `dst .. + hdr.len() + len` readable
/// and writable (tenant memory is mapped both ways), and the two must not
/// overlap (two mappings of tenant memory; `hdr` is
/// the daemon's own).
#[inline(always)]
pub(crate) unsafe fn copy_flat_to(hdr: &[u8], from: *const u8, len: u64, dst: *mut u8) {
    // SAFETY: the caller's contract.
    unsafe {
        write_hdr(hdr, dst);
        copy_bytes(from, dst.add(hdr.len()), len as usize);
    }
}

/// Writes `hdr` to `dst` unless it is a 12-byte header `dst` already
/// holds (see [`copy_flat_to`]).
///
/// # Safety
/// `dst .. + hdr.len()` must be readable and writable.
#[inline(always)]
unsafe fn write_hdr(hdr: &[u8], dst: *mut u8) {
    // SAFETY: the caller's contract.
    unsafe {
        if !(hdr.len() == 12 && holds12(dst, hdr)) {
            copy_bytes(hdr.as_ptr(), dst, hdr.len());
        }
    }
}

/// Whether the 12 bytes at `at` equal `hdr`'s (12 bytes).
///
/// # Safety
/// `at .. + 12` must be readable.
#[inline(always)]
unsafe fn holds12(at: *const u8, hdr: &[u8]) -> bool {
    let (lo, hi) =
        (u64::from_ne_bytes(hdr[..8].try_into().expect("8")), u32::from_ne_bytes(hdr[8..12].try_into().expect("4")));
    // SAFETY: the caller's contract; two unaligned reads inside it.
    unsafe { at.cast::<u64>().read_unaligned() == lo && at.add(8).cast::<u32>().read_unaligned() == hi }
}

/// Copies up to `len` bytes from `src` to `dst`, advancing both; returns the
/// number copied (less than `len` when either chain ends).
#[inline]
pub fn copy(src: &mut Cursor<'_>, dst: &mut Cursor<'_>, len: u64) -> u64 {
    let mut left = len;
    while left > 0 {
        let Some((s, s_take)) = src.piece(left) else { break };
        let Some((d, d_take)) = dst.piece(s_take as u64) else { break };
        // SAFETY: `s..s+d_take` and `d..d+d_take` each lie inside a segment
        // translated from its chain's memory (d_take <= s_take, both bounded
        // by their segments), kept mapped by the chains. They are in two
        // different mappings of tenant memory, so they do not overlap in our
        // address space.
        unsafe { copy_bytes(s, d, d_take) };
        src.advance(d_take);
        dst.advance(d_take);
        left -= d_take as u64;
    }
    len - left
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::Access;
    use crate::ring::tests::{TestRing, BUF_OFF, GPA};
    use crate::ring::{Desc, DESC_F_NEXT, DESC_F_WRITE};

    #[test]
    fn copies_across_uneven_segments() {
        let t = TestRing::new(16);
        let r = t.ring(false);
        let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        // Source: 3 buffers of 100, 400, 500 bytes, not adjacent.
        let src = [(0u64, 100u32), (2000, 400), (5000, 500)];
        let mut off = 0;
        for (i, (o, l)) in src.iter().enumerate() {
            t.write(GPA + BUF_OFF + o, &payload[off..off + *l as usize]);
            off += *l as usize;
            let flags = if i < 2 { DESC_F_NEXT } else { 0 };
            t.set_desc(i as u16, Desc { addr: GPA + BUF_OFF + o, len: *l, flags, next: i as u16 + 1 });
        }
        // Destination: 7 x 150 bytes.
        for i in 0..7u16 {
            let flags = DESC_F_WRITE | if i < 6 { DESC_F_NEXT } else { 0 };
            t.set_desc(8 + i, Desc { addr: GPA + BUF_OFF + 0x10000 + 300 * i as u64, len: 150, flags, next: 9 + i });
        }
        let (mut a, mut b) = (Chain::default(), Chain::default());
        a.walk(&r, 0, Access::DeviceReads, false).unwrap();
        b.walk(&r, 8, Access::DeviceWrites, false).unwrap();
        let (mut sc, mut dc) = (Cursor::new(&a), Cursor::new(&b));
        assert!(sc.skip(10));
        assert_eq!(dc.scatter(&[0xee; 10]), 10);
        assert_eq!(copy(&mut sc, &mut dc, 5000), 990);
        let mut got = Vec::new();
        for i in 0..7u64 {
            got.extend(t.read(GPA + BUF_OFF + 0x10000 + 300 * i, 150));
        }
        assert_eq!(&got[..10], &[0xee; 10]);
        assert_eq!(&got[10..1000], &payload[10..]);
    }

    #[test]
    fn copy_flat_takes_only_the_single_segment_case() {
        let t = TestRing::new(8);
        let r = t.ring(false);
        let frame: Vec<u8> = (0..100u8).collect();
        t.write(GPA + BUF_OFF, &[0xaa; 12]);
        t.write(GPA + BUF_OFF + 12, &frame);
        t.set_desc(0, Desc { addr: GPA + BUF_OFF, len: 112, flags: 0, next: 0 });
        t.set_desc(1, Desc { addr: GPA + BUF_OFF + 4096, len: 112, flags: DESC_F_WRITE, next: 0 });
        t.set_desc(2, Desc { addr: GPA + BUF_OFF + 8192, len: 111, flags: DESC_F_WRITE, next: 0 });
        let (mut a, mut b, mut c) = (Chain::default(), Chain::default(), Chain::default());
        a.walk(&r, 0, Access::DeviceReads, false).unwrap();
        b.walk(&r, 1, Access::DeviceWrites, false).unwrap();
        c.walk(&r, 2, Access::DeviceWrites, false).unwrap();
        let hdr = [7u8; 12];
        assert!(copy_flat(&hdr, &a, 12, 100, &b));
        assert_eq!(t.read(GPA + BUF_OFF + 4096, 12), hdr);
        assert_eq!(t.read(GPA + BUF_OFF + 4096 + 12, 100), frame);
        // One byte too small: nothing written, the general path's turn.
        assert!(!copy_flat(&hdr, &a, 12, 100, &c));
        assert_eq!(t.read(GPA + BUF_OFF + 8192, 111), vec![0; 111]);
        // Source shorter than asked.
        assert!(!copy_flat(&hdr, &a, 13, 100, &b));
        assert!(!copy_flat(&hdr, &a, u64::MAX, 100, &b));
        // A header left from the buffer's last trip: rewritten where any
        // byte differs (in either of the two words compared), left as it
        // is where it already holds the new one; the frame always written.
        for stale in [0usize, 7, 8, 11] {
            let mut old = hdr;
            old[stale] ^= 0x10;
            t.write(GPA + BUF_OFF + 4096, &old);
            t.write(GPA + BUF_OFF + 4096 + 12, &[0; 100]);
            assert!(copy_flat(&hdr, &a, 12, 100, &b));
            assert_eq!(t.read(GPA + BUF_OFF + 4096, 12), hdr, "byte {stale} stale");
            assert_eq!(t.read(GPA + BUF_OFF + 4096 + 12, 100), frame);
        }
        t.write(GPA + BUF_OFF + 4096 + 12, &[0; 100]);
        assert!(copy_flat(&hdr, &a, 12, 100, &b));
        assert_eq!(t.read(GPA + BUF_OFF + 4096, 112)[..], [&hdr[..], &frame[..]].concat()[..]);
        // A 10-byte (legacy) header is always written.
        t.write(GPA + BUF_OFF + 4096, &[0; 112]);
        assert!(copy_flat(&hdr[..10], &a, 12, 100, &b));
        assert_eq!(t.read(GPA + BUF_OFF + 4096, 10), hdr[..10]);
        assert_eq!(t.read(GPA + BUF_OFF + 4096 + 10, 100), frame);
    }

    #[test]
    fn copy_flat_fetching_writes_what_copy_flat_writes() {
        // Frames of every length around the 256-byte chunks, with the next
        // frame's lines (ranges past their buffers too) fetched meanwhile:
        // the same bytes as copy_flat, and the same refusals.
        let t = TestRing::new(8);
        let r = t.ring(false);
        let frame: Vec<u8> = (0..2000u32).map(|i| (i * 7 + 3) as u8).collect();
        t.write(GPA + BUF_OFF + 12, &frame);
        t.set_desc(0, Desc { addr: GPA + BUF_OFF, len: 12 + 2000, flags: 0, next: 0 });
        t.set_desc(1, Desc { addr: GPA + BUF_OFF + 4096, len: 12 + 1600, flags: DESC_F_WRITE, next: 0 });
        let (mut a, mut b) = (Chain::default(), Chain::default());
        a.walk(&r, 0, Access::DeviceReads, false).unwrap();
        b.walk(&r, 1, Access::DeviceWrites, false).unwrap();
        let hdr = [9u8; 12];
        let ahead = [
            Ahead { chain: &a, from: 128, to: 5000, write: false },
            Ahead { chain: &b, from: 128, to: 1700, write: true },
        ];
        for len in (0..=1600).filter(|n| n % 256 < 3 || n % 256 > 253 || n % 97 == 0) {
            t.write(GPA + BUF_OFF + 4096, &[0xee; 12 + 1600]);
            assert!(copy_flat_fetching(&hdr, &a, 12, len, &b, ahead), "len {len}");
            let got = t.read(GPA + BUF_OFF + 4096, 12 + 1600);
            assert_eq!(got[..12], hdr, "len {len}");
            assert_eq!(got[12..12 + len as usize], frame[..len as usize], "len {len}");
            assert!(got[12 + len as usize..].iter().all(|&x| x == 0xee), "len {len}: wrote past the frame");
        }
        // Too long for the buffer, or for the source: nothing written.
        t.write(GPA + BUF_OFF + 4096, &[0xee; 12 + 1600]);
        assert!(!copy_flat_fetching(&hdr, &a, 12, 1601, &b, ahead));
        assert!(!copy_flat_fetching(&hdr, &a, 13, 2000, &b, ahead));
        assert!(t.read(GPA + BUF_OFF + 4096, 12 + 1600).iter().all(|&x| x == 0xee));
    }

    #[test]
    fn copy_bytes_moves_exactly_n_bytes_at_every_length() {
        let src: Vec<u8> = (1..=200u8).collect();
        for n in 0..=130 {
            let mut dst = vec![0u8; 140];
            // SAFETY: both buffers hold at least n bytes and are distinct.
            unsafe { copy_bytes(src.as_ptr(), dst.as_mut_ptr(), n) };
            assert_eq!(&dst[..n], &src[..n], "n = {n}");
            assert!(dst[n..].iter().all(|&b| b == 0), "n = {n}: wrote past the end");
        }
    }

    #[test]
    fn peek_reads_only_inside_the_first_segment() {
        let t = TestRing::new(8);
        let r = t.ring(false);
        let bytes: Vec<u8> = (0..40u8).collect();
        t.write(GPA + BUF_OFF, &bytes);
        t.set_desc(0, Desc { addr: GPA + BUF_OFF, len: 30, flags: DESC_F_NEXT, next: 1 });
        t.set_desc(1, Desc { addr: GPA + BUF_OFF + 4096, len: 30, flags: 0, next: 0 });
        let mut a = Chain::default();
        a.walk(&r, 0, Access::DeviceReads, false).unwrap();
        assert_eq!(peek::<28>(&a, 0), Some(bytes[..28].try_into().unwrap()));
        assert_eq!(peek::<28>(&a, 2), Some(bytes[2..30].try_into().unwrap()));
        // Would run into the second buffer.
        assert_eq!(peek::<28>(&a, 3), None);
        assert_eq!(peek::<28>(&a, usize::MAX), None);
        assert_eq!(peek::<4>(&Chain::default(), 0), None);
    }

    #[test]
    fn stops_at_the_shorter_chain() {
        let t = TestRing::new(8);
        let r = t.ring(false);
        t.set_desc(0, Desc { addr: GPA + BUF_OFF, len: 100, flags: 0, next: 0 });
        t.set_desc(1, Desc { addr: GPA + BUF_OFF + 4096, len: 40, flags: DESC_F_WRITE, next: 0 });
        let (mut a, mut b) = (Chain::default(), Chain::default());
        a.walk(&r, 0, Access::DeviceReads, false).unwrap();
        b.walk(&r, 1, Access::DeviceWrites, false).unwrap();
        let (mut sc, mut dc) = (Cursor::new(&a), Cursor::new(&b));
        assert_eq!(copy(&mut sc, &mut dc, 100), 40);
        assert_eq!(sc.remaining(), 60);
        assert_eq!(dc.remaining(), 0);
        let mut hdr = [0u8; 200];
        assert_eq!(sc.gather(&mut hdr), 60);
    }
}
