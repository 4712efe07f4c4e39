//! Doorbells and interrupt lines: the eventfds a tenant hands over.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use vmm_sys_util::eventfd::EventFd;

/// A tenant-supplied eventfd (kick, call or err), checked to really be an
/// eventfd and switched to non-blocking, so a hostile fd (a pipe, a socket,
/// an eventfd the tenant drains behind our back) can never block an engine.
#[derive(Debug)]
pub struct Doorbell(EventFd);

impl Doorbell {
    /// Checks `fd` and takes it over.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Doorbell> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        if link.as_os_str() != "anon_inode:[eventfd]" {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an eventfd"));
        }
        // SAFETY: fcntl on an fd we own; F_GETFL/F_SETFL take an int flag.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `into_raw_fd` releases ownership of an open eventfd, which
        // the EventFd takes over; nothing else closes it.
        Ok(Doorbell(unsafe { EventFd::from_raw_fd(fd.into_raw_fd()) }))
    }

    /// A fresh eventfd of our own (engine wake-ups, tests).
    pub fn new() -> io::Result<Doorbell> {
        EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).map(Doorbell)
    }

    /// Rings it (adds 1).
    #[inline]
    pub fn signal(&self) {
        // A saturated counter (EAGAIN) still means "signalled".
        let _ = self.0.write(1);
    }

    /// Consumes pending rings; true if there were any.
    pub fn drain(&self) -> bool {
        self.0.read().is_ok()
    }

    /// A second handle on the same eventfd.
    pub fn try_clone(&self) -> io::Result<Doorbell> {
        self.0.try_clone().map(Doorbell)
    }
}

impl AsRawFd for Doorbell {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_eventfd_refuses_others() {
        let ours = Doorbell::new().unwrap();
        // SAFETY: into_raw_fd hands over an open fd that nothing else owns.
        let dup = unsafe { OwnedFd::from_raw_fd(ours.0.try_clone().unwrap().into_raw_fd()) };
        let theirs = Doorbell::from_fd(dup).unwrap();
        theirs.signal();
        assert!(ours.drain());
        assert!(!ours.drain(), "non-blocking: an empty eventfd does not block");
        let file: OwnedFd = std::fs::File::open("/proc/self/stat").unwrap().into();
        assert!(Doorbell::from_fd(file).is_err());
    }
}
