//! SIGBUS containment for tenant memory.
//!
//! A memory region was checked against its file's size when it was mapped,
//! but a tenant can shrink its file afterwards (an unsealed memfd, a
//! hugetlbfs file). Touching the vanished pages raises SIGBUS, which would
//! kill the daemon and every VF with it. Instead, a process-wide handler
//! looks the faulting address up in a lock-free table of tenant mappings;
//! if it is one of ours, it maps a private zero page over the vanished page
//! (so the access completes harmlessly) and marks the mapping revoked. The
//! data path checks [`Registration::revoked`] after each burst and faults
//! that VF's queue; the tenant must reset or reconnect. A SIGBUS anywhere
//! else is passed on to the previous handler (Rust's stack-overflow handler,
//! or the default action).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;

/// Most tenant mappings at once (256 VFs x 8 regions).
const SLOTS: usize = 2048;
/// Slot value of `start` while a slot is being filled.
const BUSY: usize = usize::MAX;

struct Slot {
    start: AtomicUsize,
    end: AtomicUsize,
    page: AtomicUsize,
    hits: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // only used to initialise TABLE
const EMPTY: Slot =
    Slot { start: AtomicUsize::new(0), end: AtomicUsize::new(0), page: AtomicUsize::new(0), hits: AtomicU64::new(0) };
static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];
/// Set by the handler at its first contained SIGBUS, never cleared: until
/// then no mapping is revoked, and `GuestMemory::revoked` (asked per frame
/// on the data path) answers from this one flag.
static ANY_HIT: AtomicBool = AtomicBool::new(false);
static OLD_HANDLER: AtomicUsize = AtomicUsize::new(0);
static OLD_FLAGS: AtomicUsize = AtomicUsize::new(0);
static INSTALL: Once = Once::new();

/// A tenant mapping known to the handler; unregistered on drop.
#[derive(Debug)]
pub struct Registration(Option<usize>);

impl Registration {
    /// True once a SIGBUS hit this mapping.
    pub fn revoked(&self) -> bool {
        self.0.is_some_and(|i| TABLE[i].hits.load(Ordering::Relaxed) > 0)
    }
}

/// False until some mapping was revoked: the data path's one-load check.
#[inline]
pub(crate) fn any_revoked() -> bool {
    ANY_HIT.load(Ordering::Relaxed)
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(i) = self.0 {
            TABLE[i].start.store(0, Ordering::Release);
        }
    }
}

/// Registers `[start, start + len)`, mapped in pages of `page` bytes. If
/// the table is full the mapping is not protected (logged by the caller).
pub fn register(start: usize, len: usize, page: usize) -> Registration {
    install();
    for (i, s) in TABLE.iter().enumerate() {
        if s.start.compare_exchange(0, BUSY, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            s.end.store(start + len, Ordering::Relaxed);
            s.page.store(page, Ordering::Relaxed);
            s.hits.store(0, Ordering::Relaxed);
            s.start.store(start, Ordering::Release);
            return Registration(Some(i));
        }
    }
    Registration(None)
}

fn install() {
    INSTALL.call_once(|| {
        // SAFETY: an all-zero sigaction is a valid value; we fill the
        // handler, flags and an empty mask before passing it to the kernel.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_sigbus as *const () as usize;
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: `act.sa_mask` is a valid sigset_t to clear; sigaction
        // reads `act` and writes `old`, both live locals.
        unsafe {
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(libc::SIGBUS, &act, &mut old) == 0 {
                OLD_HANDLER.store(old.sa_sigaction, Ordering::Release);
                OLD_FLAGS.store(old.sa_flags as usize, Ordering::Release);
            }
        }
    });
}

/// The SIGBUS handler: only atomics and `mmap`, which are async-signal-safe.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    for s in &TABLE {
        let start = s.start.load(Ordering::Acquire);
        if start == 0 || start == BUSY || addr < start || addr >= s.end.load(Ordering::Relaxed) {
            continue;
        }
        let page = s.page.load(Ordering::Relaxed).max(4096);
        let base = start + ((addr - start) & !(page - 1));
        // SAFETY: `base..base+page` lies inside a tenant mapping this
        // process owns (registered and not yet unregistered; mappings are
        // unregistered before they are unmapped). Replacing it with private
        // anonymous memory only changes what the data path reads or writes
        // there: zeros instead of a vanished file page.
        let r = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if r != libc::MAP_FAILED {
            s.hits.fetch_add(1, Ordering::Relaxed);
            ANY_HIT.store(true, Ordering::Relaxed);
            return;
        }
    }
    // Not a tenant mapping: hand over to whoever handled SIGBUS before us.
    let old = OLD_HANDLER.load(Ordering::Acquire);
    let flags = OLD_FLAGS.load(Ordering::Acquire) as libc::c_int;
    match old {
        libc::SIG_IGN => {}
        libc::SIG_DFL => {
            // SAFETY: restoring the default action is async-signal-safe;
            // returning re-executes the faulting access, which then takes
            // the default action (the process dies as it would have).
            unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
        }
        h if flags & libc::SA_SIGINFO != 0 => {
            // SAFETY: `h` was installed as an SA_SIGINFO handler, so it has
            // this signature; we pass the arguments we were given.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(h) };
            f(sig, info, ctx);
        }
        h => {
            // SAFETY: a plain handler takes the signal number only.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(h) };
            f(sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::mem::testing::memfd;
    use crate::mem::{GuestMemory, RegionSpec};
    use std::os::fd::AsRawFd;

    #[test]
    fn shrunk_file_is_contained_and_reported() {
        let fd = memfd(1 << 20);
        let raw = fd.as_raw_fd();
        let spec = RegionSpec { guest_phys_addr: 0, memory_size: 1 << 20, userspace_addr: 0, mmap_offset: 0 };
        // Keep a second handle to shrink the file behind the mapping's back.
        // SAFETY: dup of an open fd.
        let dup = unsafe { libc::dup(raw) };
        let m = GuestMemory::map(&[spec], vec![fd]).unwrap();
        assert!(!m.revoked());
        // SAFETY: ftruncate on our own memfd.
        assert_eq!(unsafe { libc::ftruncate(dup, 4096) }, 0);
        let p = m.translate(8192, 8).unwrap();
        // SAFETY: p is inside the mapping (translated); the page behind it
        // vanished, which is exactly what the handler must contain.
        let v = unsafe { p.read_volatile() };
        assert_eq!(v, 0);
        assert!(m.revoked());
        // SAFETY: closing the dup we made.
        unsafe { libc::close(dup) };
    }
}
