//! The DMA window: tenant memory regions mapped into the daemon, and address
//! translation with bounds checks.
//!
//! Why not `vm-memory`: its `MmapRegion::from_file` maps a region without
//! checking it against the file's size (a region beyond EOF kills the daemon
//! with SIGBUS, ANCHORS.md sec. 5), and a vhost-user backend needs two
//! translations per region (guest-physical for descriptors, the front end's
//! virtual addresses for vrings). This module is small and does both.

use std::os::fd::{AsRawFd, OwnedFd};

use thiserror::Error;

/// Most regions a memory table may hold (`VHOST_MEMORY_BASELINE_NREGIONS`).
pub const MAX_REGIONS: usize = 8;

/// One region of a vhost-user memory table, as the front end describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegionSpec {
    /// Guest-physical address of the region's first byte.
    pub guest_phys_addr: u64,
    /// Size in bytes.
    pub memory_size: u64,
    /// The front end's virtual address of the region's first byte.
    pub userspace_addr: u64,
    /// Offset of the region's first byte in the shared file.
    pub mmap_offset: u64,
}

/// A memory table that cannot be mapped.
#[derive(Debug, Error)]
pub enum MemError {
    /// No regions, or more than [`MAX_REGIONS`].
    #[error("Memory table has {0} regions (1 to 8 allowed)")]
    RegionCount(usize),
    /// The number of fds does not match the number of regions.
    #[error("Memory table has {regions} regions but {fds} fds")]
    FdCount {
        /// Regions declared.
        regions: usize,
        /// Fds received.
        fds: usize,
    },
    /// A region of size zero or whose end overflows 64 bits.
    #[error("Region {0} has a zero size or overflows")]
    RegionRange(usize),
    /// Two regions overlap in guest-physical or front-end address space.
    #[error("Regions {0} and {1} overlap")]
    Overlap(usize, usize),
    /// `fstat` on a region's fd failed.
    #[error("Cannot stat the fd of region {0}")]
    Stat(usize, #[source] std::io::Error),
    /// The fd is not a regular file (memfd, hugetlbfs or tmpfs file).
    #[error("The fd of region {0} is not a regular file")]
    NotAFile(usize),
    /// The region extends beyond the end of its file: touching it would
    /// raise SIGBUS.
    #[error("Region {index} needs {needed} bytes of its file but the file has {file_size}")]
    BeyondFile {
        /// Region index.
        index: usize,
        /// `mmap_offset + memory_size`.
        needed: u64,
        /// The file's size.
        file_size: u64,
    },
    /// `mmap` failed.
    #[error("Cannot map region {0}")]
    Map(usize, #[source] std::io::Error),
}

#[derive(Debug)]
struct Region {
    spec: RegionSpec,
    /// Host address of the region's first byte (`map_base + mmap_offset`).
    host: *mut u8,
    map_base: *mut libc::c_void,
    map_len: usize,
    /// SIGBUS containment; dropped (unregistered) before the munmap.
    guard: Option<crate::sigbus::Registration>,
    _fd: OwnedFd,
}

/// One region's guest-physical range and where it is mapped: what
/// [`GuestMemory::translate`] looks at, copied out (see
/// [`GuestMemory::first_window`]).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    gpa: u64,
    size: u64,
    host: *mut u8,
}

impl Window {
    /// Translates nothing.
    const EMPTY: Window = Window { gpa: 0, size: 0, host: std::ptr::null_mut() };

    /// [`GuestMemory::translate`] within this region only: `None` if the
    /// range does not lie inside it (it may still lie in another).
    #[inline(always)]
    pub fn translate(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let (ptr, avail) = self.translate_partial(gpa)?;
        (len <= avail).then_some(ptr)
    }

    /// [`GuestMemory::translate_partial`] within this region only.
    #[inline(always)]
    fn translate_partial(&self, gpa: u64) -> Option<(*mut u8, u64)> {
        let off = gpa.wrapping_sub(self.gpa);
        // Cannot overflow: off < size, which fits in usize.
        (off < self.size).then(|| (self.host.wrapping_add(off as usize), self.size - off))
    }
}

impl Region {
    /// What translating into this region needs.
    #[inline(always)]
    fn window(&self) -> Window {
        Window { gpa: self.spec.guest_phys_addr, size: self.spec.memory_size, host: self.host }
    }
}

/// A tenant's memory table, mapped.
///
/// Host pointers handed out by the `translate` methods stay valid as long as
/// this value lives; the data path holds it in an `Arc` while it works.
#[derive(Debug)]
pub struct GuestMemory {
    regions: Vec<Region>,
}

// SAFETY: the raw pointers refer to MAP_SHARED mappings owned by this value
// and unmapped only in `Drop`; the value itself is never mutated after
// construction, so sharing or sending it between threads cannot race on its
// own fields. Accesses to the mapped bytes go through raw-pointer reads and
// writes whose callers accept that the tenant may change them concurrently.
unsafe impl Send for GuestMemory {}
// SAFETY: see `Send` above; `&GuestMemory` only reads immutable fields.
unsafe impl Sync for GuestMemory {}

fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b + blen && b < a + alen
}

impl GuestMemory {
    /// Maps a memory table. Refuses regions that overlap, overflow, or
    /// extend beyond their file.
    pub fn map(specs: &[RegionSpec], fds: Vec<OwnedFd>) -> Result<GuestMemory, MemError> {
        if specs.is_empty() || specs.len() > MAX_REGIONS {
            return Err(MemError::RegionCount(specs.len()));
        }
        if fds.len() != specs.len() {
            return Err(MemError::FdCount { regions: specs.len(), fds: fds.len() });
        }
        for (i, s) in specs.iter().enumerate() {
            let ok = s.memory_size > 0
                && s.guest_phys_addr.checked_add(s.memory_size).is_some()
                && s.userspace_addr.checked_add(s.memory_size).is_some()
                && s.mmap_offset.checked_add(s.memory_size).is_some()
                && usize::try_from(s.mmap_offset + s.memory_size).is_ok();
            if !ok {
                return Err(MemError::RegionRange(i));
            }
            for (j, t) in specs[..i].iter().enumerate() {
                if overlaps(s.guest_phys_addr, s.memory_size, t.guest_phys_addr, t.memory_size)
                    || overlaps(s.userspace_addr, s.memory_size, t.userspace_addr, t.memory_size)
                {
                    return Err(MemError::Overlap(j, i));
                }
            }
        }
        let mut regions = Vec::with_capacity(specs.len());
        for (i, (spec, fd)) in specs.iter().zip(fds).enumerate() {
            regions.push(map_region(i, *spec, fd)?);
        }
        Ok(GuestMemory { regions })
    }

    /// True once the tenant shrank a region's file under us (a SIGBUS was
    /// contained): the data path must stop using this table.
    #[inline]
    pub fn revoked(&self) -> bool {
        crate::sigbus::any_revoked() && self.regions.iter().any(|r| r.guard.as_ref().is_some_and(|g| g.revoked()))
    }

    /// The regions as the front end declared them.
    pub fn specs(&self) -> impl Iterator<Item = &RegionSpec> {
        self.regions.iter().map(|r| &r.spec)
    }

    /// The first region as a [`Window`]: a copy of what translating into
    /// it needs, for a loop to keep in registers (tenants mostly have one
    /// region, or their buffers in one).
    #[inline]
    pub fn first_window(&self) -> Window {
        self.regions.first().map_or(Window::EMPTY, Region::window)
    }

    /// Translates `[gpa, gpa + len)` to host memory if the range lies inside
    /// one region. `len` may be 0 only inside a region.
    #[inline]
    pub fn translate(&self, gpa: u64, len: u64) -> Option<*mut u8> {
        let (ptr, avail) = self.translate_partial(gpa)?;
        (len <= avail).then_some(ptr)
    }

    /// Translates `gpa` and says how many bytes from there stay inside its
    /// region (a buffer may cross into the next region).
    #[inline]
    pub fn translate_partial(&self, gpa: u64) -> Option<(*mut u8, u64)> {
        self.regions.iter().find_map(|r| r.window().translate_partial(gpa))
    }

    /// Translates a front-end virtual address range (how vring addresses are
    /// given) to host memory if it lies inside one region.
    pub fn translate_uaddr(&self, uaddr: u64, len: u64) -> Option<*mut u8> {
        for r in &self.regions {
            let off = uaddr.wrapping_sub(r.spec.userspace_addr);
            if off < r.spec.memory_size {
                return (len <= r.spec.memory_size - off).then(|| r.host.wrapping_add(off as usize));
            }
        }
        None
    }

    /// Where a vring area of `len` bytes at front-end address `uaddr` is
    /// mapped, when it lies inside one region and is `align`-aligned (a
    /// power of two) both as the front end gave it and as mapped here: a
    /// region whose front-end address and mmap offset disagree modulo the
    /// alignment would place the ring's fields across their natural
    /// boundaries, where the atomic accesses the rings make are not
    /// allowed (and on x86 could split a lock over two lines).
    pub fn ring_area(&self, uaddr: u64, len: u64, align: u64) -> Option<*mut u8> {
        debug_assert!(align.is_power_of_two());
        if uaddr & (align - 1) != 0 {
            return None;
        }
        self.translate_uaddr(uaddr, len).filter(|p| (*p as u64) & (align - 1) == 0)
    }
}

fn map_region(index: usize, spec: RegionSpec, fd: OwnedFd) -> Result<Region, MemError> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor we own and `st` is a writable stat
    // buffer of the right type.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(MemError::Stat(index, std::io::Error::last_os_error()));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(MemError::NotAFile(index));
    }
    let needed = spec.mmap_offset + spec.memory_size;
    let file_size = st.st_size.max(0) as u64;
    if needed > file_size {
        return Err(MemError::BeyondFile { index, needed, file_size });
    }
    // hugetlbfs wants lengths in whole huge pages; st_blksize is the page
    // size there and 4 KiB elsewhere. Bytes mapped past `needed` are never
    // translated to, so they are never touched.
    let blk = (st.st_blksize as u64).clamp(4096, 1 << 30);
    let map_len = needed.div_ceil(blk) * blk;
    let map_len = usize::try_from(map_len).map_err(|_| MemError::RegionRange(index))?;
    // SAFETY: a fresh shared mapping of a file we hold open; the kernel picks
    // the address, so no existing mapping is replaced. The result is checked
    // against MAP_FAILED before use.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(MemError::Map(index, std::io::Error::last_os_error()));
    }
    Ok(Region {
        spec,
        host: (base as *mut u8).wrapping_add(spec.mmap_offset as usize),
        map_base: base,
        map_len,
        guard: Some(crate::sigbus::register(base as usize, map_len, blk as usize)),
        _fd: fd,
    })
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        for r in &mut self.regions {
            r.guard = None;
            // SAFETY: `map_base`/`map_len` are exactly what mmap returned for
            // this region, and no pointer into it outlives `self` (callers
            // hold an Arc<GuestMemory> while they use translated pointers).
            unsafe { libc::munmap(r.map_base, r.map_len) };
        }
    }
}

/// Helpers to build memory tables in tests (memfd-backed).
#[cfg(any(test, feature = "test-utils"))]
pub mod testing {
    use std::os::fd::{FromRawFd, OwnedFd};

    /// A memfd of `size` bytes.
    pub fn memfd(size: u64) -> OwnedFd {
        // SAFETY: the name is a NUL-terminated literal; the flags are valid.
        let fd = unsafe { libc::memfd_create(c"vfnic-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create failed");
        // SAFETY: `fd` was just created and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on a memfd we own.
        let rc = unsafe { libc::ftruncate(std::os::fd::AsRawFd::as_raw_fd(&fd), size as i64) };
        assert_eq!(rc, 0, "ftruncate failed");
        fd
    }
}

#[cfg(test)]
mod tests {
    use super::testing::memfd;
    use super::*;

    fn spec(gpa: u64, size: u64, uaddr: u64) -> RegionSpec {
        RegionSpec { guest_phys_addr: gpa, memory_size: size, userspace_addr: uaddr, mmap_offset: 0 }
    }

    #[test]
    fn translates_both_address_spaces() {
        let m = GuestMemory::map(&[spec(0x1000_0000, 1 << 20, 0x7f00_0000_0000)], vec![memfd(1 << 20)]).unwrap();
        let a = m.translate(0x1000_0000, 16).unwrap();
        let b = m.translate_uaddr(0x7f00_0000_0000, 16).unwrap();
        assert_eq!(a, b);
        assert!(m.translate(0x1000_0000 + (1 << 20) - 8, 16).is_none());
        assert!(m.translate(0x0fff_ffff, 1).is_none());
        assert!(m.translate(u64::MAX, 1).is_none());
        assert_eq!(m.translate_partial(0x1000_0000 + (1 << 20) - 8).unwrap().1, 8);
    }

    #[test]
    fn ring_areas_are_aligned_as_given_and_as_mapped() {
        let m = GuestMemory::map(&[spec(0x1000_0000, 1 << 20, 0x7f00_0000_0000)], vec![memfd(1 << 20)]).unwrap();
        assert!(m.ring_area(0x7f00_0000_0010, 64, 16).is_some());
        assert!(m.ring_area(0x7f00_0000_0008, 64, 16).is_none(), "front-end address not aligned");
        assert!(m.ring_area(0x7f00_0000_0000 + (1 << 20) - 32, 64, 16).is_none(), "past the region");
        // A region mapped 8 bytes into its file: a 16-aligned front-end
        // address lands 8 bytes off a 16-byte boundary here.
        let s = RegionSpec { mmap_offset: 8, ..spec(0x1000_0000, 1 << 16, 0x7f00_0000_0000) };
        let m = GuestMemory::map(&[s], vec![memfd(1 << 20)]).unwrap();
        assert!(m.translate_uaddr(0x7f00_0000_0010, 64).is_some());
        assert!(m.ring_area(0x7f00_0000_0010, 64, 16).is_none(), "mapped across the boundary");
        assert!(m.ring_area(0x7f00_0000_0010, 64, 8).is_some(), "8-aligned both ways");
    }

    #[test]
    fn refuses_region_beyond_file() {
        let err = GuestMemory::map(&[spec(0, 2 << 20, 0)], vec![memfd(1 << 20)]).unwrap_err();
        assert!(matches!(err, MemError::BeyondFile { .. }), "{err}");
        let mut s = spec(0, 1 << 20, 0);
        s.mmap_offset = 4096;
        assert!(GuestMemory::map(&[s], vec![memfd(1 << 20)]).is_err());
    }

    #[test]
    fn refuses_overlap_overflow_and_count() {
        let two = [spec(0, 8192, 0), spec(4096, 8192, 1 << 30)];
        assert!(matches!(GuestMemory::map(&two, vec![memfd(16384), memfd(16384)]), Err(MemError::Overlap(0, 1))));
        assert!(matches!(
            GuestMemory::map(&[spec(u64::MAX - 10, 4096, 0)], vec![memfd(4096)]),
            Err(MemError::RegionRange(0))
        ));
        assert!(matches!(GuestMemory::map(&[], vec![]), Err(MemError::RegionCount(0))));
        assert!(matches!(GuestMemory::map(&[spec(0, 4096, 0)], vec![]), Err(MemError::FdCount { .. })));
    }

    #[test]
    fn refuses_non_file_fd() {
        let mut fds = [0; 2];
        // SAFETY: fds is a 2-element array as pipe() requires.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both fds were just created and are owned here.
        let (r, _w) = unsafe {
            use std::os::fd::FromRawFd;
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        };
        assert!(matches!(GuestMemory::map(&[spec(0, 4096, 0)], vec![r]), Err(MemError::NotAFile(0))));
    }
}
