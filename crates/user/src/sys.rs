//! Syscall edge: fd passing over Unix sockets, poll, eventfd, memfd.
//!
//! Every `unsafe` block of the socket/fd side of the crate lives here; the mmap side
//! lives in [`crate::memory`].
#![allow(unsafe_code)]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// Most fds one message may carry (the kernel's SCM_MAX_FD).
pub(crate) const MAX_FDS: usize = 253;

/// Sends `bytes` in one `sendmsg`, with `fds` as SCM_RIGHTS ancillary data.
/// Uses MSG_NOSIGNAL so a closed peer is an error, not a SIGPIPE.
/// Returns the number of bytes sent.
pub(crate) fn send_with_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many fds for one message"));
    }
    let mut iov = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
    let fd_bytes = std::mem::size_of_val(fds);
    // CMSG_SPACE of at most 253 * 4 bytes cannot overflow u32.
    let fd_bytes_u32 = u32::try_from(fd_bytes).expect("fd payload bounded by MAX_FDS");
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes_u32) } as usize;
    // u64 elements keep the control buffer aligned for cmsghdr.
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is a valid "no name, no control" message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `space` zeroed, aligned bytes owned by `cbuf`,
        // which is at least CMSG_SPACE(fd_bytes), so the first header and its data
        // (CMSG_LEN(fd_bytes) bytes) fit; `cbuf` outlives every pointer derived here.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes_u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), fd_bytes);
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` (describing `bytes`, read-only for sendmsg) and
        // at `cbuf`, all alive for the call; the kernel validates the fds themselves.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives into `buf` with one non-blocking `recvmsg`, collecting any SCM_RIGHTS fds
/// into `fds` (they become owned, so they are closed when dropped). Returns the bytes
/// read (0 = peer closed).
pub(crate) fn recv_with_fds(sock: RawFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let max_bytes = u32::try_from(MAX_FDS * std::mem::size_of::<RawFd>()).expect("MAX_FDS fds fit u32 bytes");
    // SAFETY: CMSG_SPACE only computes a size from its argument.
    let space = unsafe { libc::CMSG_SPACE(max_bytes) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: an all-zero msghdr is a valid "no name, no control" message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: `msg` describes `buf` (writable, buf.len() bytes) and `cbuf` (`space`
        // bytes), both alive for the call; MSG_CMSG_CLOEXEC keeps received fds private.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    // SAFETY: the kernel filled `msg_control`/`msg_controllen` inside `cbuf`; the CMSG_*
    // walkers stay within msg_controllen, and each SCM_RIGHTS payload holds
    // (cmsg_len - CMSG_LEN(0)) / 4 fds that this process now owns exactly once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let count = len / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(n)
}

/// Waits until `fd` is readable (or hung up) or `deadline` passes.
/// Returns `Ok(false)` on timeout.
pub(crate) fn wait_readable(fd: RawFd, deadline: Instant) -> io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = timeout_ms(left);
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: `pfd` is one valid pollfd on the stack for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r > 0 {
            return Ok(true);
        }
        if r == 0 {
            if Instant::now() >= deadline {
                return Ok(false);
            }
            continue;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Rounds a duration up to whole milliseconds for poll(), saturating at `i32::MAX`.
fn timeout_ms(d: Duration) -> i32 {
    let ms = d.as_micros().div_ceil(1000);
    i32::try_from(ms).unwrap_or(i32::MAX)
}

/// A non-blocking eventfd (kick = doorbell, call = interrupt).
#[derive(Debug)]
pub struct EventFd(File);

impl EventFd {
    /// Creates a non-blocking, close-on-exec eventfd with counter 0.
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a fresh fd.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        Ok(EventFd(unsafe { File::from_raw_fd(fd) }))
    }

    /// Wraps a received eventfd (the fake backend's call fds).
    #[cfg(test)]
    pub(crate) fn from_file(f: File) -> Self {
        EventFd(f)
    }

    /// Adds 1 to the counter (signals the peer).
    pub fn signal(&self) -> io::Result<()> {
        (&self.0).write_all(&1u64.to_ne_bytes())
    }

    /// Reads and clears the counter; `Ok(0)` when it was already 0.
    pub fn take(&self) -> io::Result<u64> {
        let mut b = [0u8; 8];
        match (&self.0).read(&mut b) {
            Ok(8) => Ok(u64::from_ne_bytes(b)),
            Ok(_) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short eventfd read")),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Waits until the counter is non-zero or `deadline` passes; `Ok(false)` on timeout.
    pub fn wait(&self, deadline: Instant) -> io::Result<bool> {
        wait_readable(self.0.as_raw_fd(), deadline)
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Creates an anonymous, close-on-exec memfd of `size` bytes.
pub(crate) fn memfd(name: &std::ffi::CStr, size: u64) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create and is owned by nobody else.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn fds_ride_along() {
        let (a, b) = UnixStream::pair().unwrap();
        let e1 = EventFd::new().unwrap();
        let e2 = EventFd::new().unwrap();
        let n = send_with_fds(a.as_raw_fd(), b"hello", &[e1.as_raw_fd(), e2.as_raw_fd()]).unwrap();
        assert_eq!(n, 5);
        let mut buf = [0u8; 16];
        let mut fds = Vec::new();
        let n = recv_with_fds(b.as_raw_fd(), &mut buf, &mut fds).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 2);
        // The received fd is the same eventfd: signalling it shows up on e1.
        let dup = EventFd(File::from(fds.remove(0)));
        dup.signal().unwrap();
        assert_eq!(e1.take().unwrap(), 1);
        assert_eq!(e1.take().unwrap(), 0);
    }

    #[test]
    fn eventfd_wait_times_out() {
        let e = EventFd::new().unwrap();
        let t = Instant::now();
        assert!(!e.wait(t + Duration::from_millis(20)).unwrap());
        assert!(t.elapsed() >= Duration::from_millis(20));
        e.signal().unwrap();
        assert!(e.wait(Instant::now() + Duration::from_secs(1)).unwrap());
    }

    #[test]
    fn timeout_rounds_up() {
        assert_eq!(timeout_ms(Duration::from_micros(1)), 1);
        assert_eq!(timeout_ms(Duration::ZERO), 0);
        assert_eq!(timeout_ms(Duration::from_secs(u64::MAX)), i32::MAX);
    }
}
