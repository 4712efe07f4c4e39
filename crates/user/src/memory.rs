//! Frontend-owned shared memory: one memfd mapped `MAP_SHARED`, shared with the
//! backend through SET_MEM_TABLE.
//!
//! Two numberings of the same bytes are kept apart on purpose:
//! - the **guest physical address** (GPA, `gpa_base + offset`), carried by descriptors;
//! - the **userspace address** (this process's virtual address), carried by
//!   SET_VRING_ADDR.
//!
//! The default `gpa_base` (0x4000_0000) differs from any mmap address, so a backend that
//! confuses the two translations fails loudly.
//!
//! The backend reads and writes this memory concurrently, so every access is volatile
//! (bytes and fields) or atomic (ring indices); no Rust reference to the mapping is ever
//! created.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use crate::proto::MemRegion;
use crate::{sys, Error, Result};

/// Default guest-physical base of a [`GuestMemory`].
pub const DEFAULT_GPA_BASE: u64 = 0x4000_0000;

/// An owned, shared memory region addressed by guest physical address.
#[derive(Debug)]
pub struct GuestMemory {
    file: File,
    ptr: *mut u8,
    size: usize,
    gpa_base: u64,
}

// SAFETY: `GuestMemory` owns its mapping exclusively (unmapped only in Drop); all
// accesses go through volatile/atomic raw-pointer operations that are valid from any
// thread, so moving or sharing the handle across threads cannot create a dangling or
// aliased Rust reference.
unsafe impl Send for GuestMemory {}
// SAFETY: see `Send`: `&GuestMemory` only offers volatile/atomic accesses, which are
// exactly as safe from several threads as from the (concurrently writing) backend.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Creates `size` bytes of zeroed shared memory numbered from `gpa_base`.
    pub fn new(size: usize, gpa_base: u64) -> Result<Self> {
        if size == 0 || gpa_base.checked_add(size as u64).is_none() {
            return Err(Error::InvalidOptions("memory size/base"));
        }
        let name: &CStr = c"vfnic-user";
        let file = sys::memfd(name, size as u64).map_err(Error::CreateMemory)?;
        // SAFETY: mapping a fresh fd of exactly `size` bytes at a kernel-chosen address
        // cannot alias any existing Rust object; the result is checked for MAP_FAILED.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::CreateMemory(std::io::Error::last_os_error()));
        }
        Ok(GuestMemory { file, ptr: ptr.cast(), size, gpa_base })
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Guest physical address of the first byte.
    pub fn gpa_base(&self) -> u64 {
        self.gpa_base
    }

    /// This process's virtual address of the first byte (the `userspace_addr`).
    pub fn user_addr(&self) -> u64 {
        self.ptr as u64
    }

    /// The memfd backing the region (to pass with SET_MEM_TABLE / ADD_MEM_REG).
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The memory-table entry describing this region (mmap offset 0).
    pub fn region(&self) -> MemRegion {
        MemRegion {
            guest_phys_addr: self.gpa_base,
            memory_size: self.size as u64,
            userspace_addr: self.user_addr(),
            mmap_offset: 0,
        }
    }

    /// Translates a guest physical address to this process's virtual address.
    pub fn gpa_to_user(&self, gpa: u64) -> Option<u64> {
        let off = self.offset(gpa, 1).ok()?;
        Some(self.user_addr() + off as u64)
    }

    /// Offset of `[gpa, gpa+len)` inside the region, or `OutOfRange`.
    fn offset(&self, gpa: u64, len: usize) -> Result<usize> {
        let oor = || Error::OutOfRange { gpa, len: len as u64 };
        let off = gpa.checked_sub(self.gpa_base).ok_or_else(oor)?;
        let end = off.checked_add(len as u64).ok_or_else(oor)?;
        if end > self.size as u64 {
            return Err(oor());
        }
        Ok(off as usize)
    }

    /// Copies `buf.len()` bytes at `gpa` into `buf` (volatile reads).
    pub fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        let off = self.offset(gpa, buf.len())?;
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: `offset` checked `off + buf.len() <= size`, so every byte read is
            // inside the live mapping; volatile because the backend may write it.
            *b = unsafe { self.ptr.add(off + i).read_volatile() };
        }
        Ok(())
    }

    /// Reads `len` bytes at `gpa` into a new vector.
    pub fn read_vec(&self, gpa: u64, len: usize) -> Result<Vec<u8>> {
        let mut v = vec![0u8; len];
        self.read(gpa, &mut v)?;
        Ok(v)
    }

    /// Writes `data` at `gpa` (volatile writes).
    pub fn write(&self, gpa: u64, data: &[u8]) -> Result<()> {
        let off = self.offset(gpa, data.len())?;
        for (i, b) in data.iter().enumerate() {
            // SAFETY: `offset` checked `off + data.len() <= size`, so every byte written
            // is inside the live, writable mapping; volatile because the backend shares it.
            unsafe { self.ptr.add(off + i).write_volatile(*b) };
        }
        Ok(())
    }

    /// Fills `[gpa, gpa+len)` with `byte`.
    pub fn fill(&self, gpa: u64, len: usize, byte: u8) -> Result<()> {
        let off = self.offset(gpa, len)?;
        for i in 0..len {
            // SAFETY: bounds checked by `offset` as in `write`.
            unsafe { self.ptr.add(off + i).write_volatile(byte) };
        }
        Ok(())
    }

    /// Reads a little-endian `u16` at `gpa`.
    pub fn read_u16(&self, gpa: u64) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read(gpa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a little-endian `u32` at `gpa`.
    pub fn read_u32(&self, gpa: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian `u64` at `gpa`.
    pub fn read_u64(&self, gpa: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Writes a little-endian `u16` at `gpa`.
    pub fn write_u16(&self, gpa: u64, v: u16) -> Result<()> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Writes a little-endian `u32` at `gpa`.
    pub fn write_u32(&self, gpa: u64, v: u32) -> Result<()> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// Writes a little-endian `u64` at `gpa`.
    pub fn write_u64(&self, gpa: u64, v: u64) -> Result<()> {
        self.write(gpa, &v.to_le_bytes())
    }

    /// The atomic view of an aligned `u16` ring index at `gpa`.
    fn atomic_u16(&self, gpa: u64) -> Result<&AtomicU16> {
        let off = self.offset(gpa, 2)?;
        if off % 2 != 0 {
            return Err(Error::OutOfRange { gpa, len: 2 });
        }
        // SAFETY: the 2 bytes at `off` are inside the mapping (checked by `offset`) and
        // 2-aligned (the mapping is page-aligned and `off` is even); the mapping lives as
        // long as `&self`, and all other accesses to it are atomic or volatile, never
        // through a non-atomic Rust reference.
        Ok(unsafe { AtomicU16::from_ptr(self.ptr.add(off).cast()) })
    }

    /// Loads a ring index (`avail.idx`, `used.idx`, event fields) with `order`.
    /// The value is little-endian in memory; on big-endian hosts it is swapped.
    pub fn load_u16(&self, gpa: u64, order: Ordering) -> Result<u16> {
        Ok(u16::from_le(self.atomic_u16(gpa)?.load(order)))
    }

    /// Stores a ring index with `order`.
    pub fn store_u16(&self, gpa: u64, v: u16, order: Ordering) -> Result<()> {
        self.atomic_u16(gpa)?.store(v.to_le(), order);
        Ok(())
    }
}

impl AsFd for GuestMemory {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`size` are exactly the mapping created in `new`, unmapped once
        // here; no reference into it outlives `self` (accessors borrow `&self`).
        unsafe {
            libc::munmap(self.ptr.cast(), self.size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn gpa_and_user_addresses_differ_and_translate() {
        let m = GuestMemory::new(1 << 16, DEFAULT_GPA_BASE).unwrap();
        assert_ne!(m.user_addr(), m.gpa_base());
        assert_eq!(m.gpa_to_user(DEFAULT_GPA_BASE + 16), Some(m.user_addr() + 16));
        assert_eq!(m.gpa_to_user(DEFAULT_GPA_BASE - 1), None);
        assert_eq!(m.gpa_to_user(DEFAULT_GPA_BASE + (1 << 16)), None);
        let r = m.region();
        assert_eq!(r.memory_size, 1 << 16);
        assert_eq!(r.guest_phys_addr, DEFAULT_GPA_BASE);
    }

    #[test]
    fn bounds_are_checked() {
        let m = GuestMemory::new(4096, 0x1000).unwrap();
        assert!(m.write(0x1000 + 4095, &[1]).is_ok());
        assert!(m.write(0x1000 + 4095, &[1, 2]).is_err());
        assert!(m.read_vec(0xfff, 1).is_err());
        assert!(m.read_vec(u64::MAX, 2).is_err());
        assert!(m.load_u16(0x1001, Ordering::Acquire).is_err());
    }

    #[test]
    fn shared_through_the_fd() {
        let m = GuestMemory::new(4096, 0).unwrap();
        m.write_u32(8, 0xdead_beef).unwrap();
        // Another mapping of the same file (what the backend has) sees the bytes.
        let f = m.file.try_clone().unwrap();
        let mut b = [0u8; 4];
        f.read_at(&mut b, 8).unwrap();
        assert_eq!(u32::from_le_bytes(b), 0xdead_beef);
        f.write_at(&7u16.to_le_bytes(), 16).unwrap();
        assert_eq!(m.load_u16(16, Ordering::Acquire).unwrap(), 7);
        m.store_u16(16, 9, Ordering::Release).unwrap();
        assert_eq!(m.read_u16(16).unwrap(), 9);
    }
}
