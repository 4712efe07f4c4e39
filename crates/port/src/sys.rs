//! The system calls behind the ports: TAP setup, AF_PACKET sockets, raw fd
//! reads and writes, and readiness polling. The only `unsafe` of this crate.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `TUNSETIFF` (`_IOW('T', 202, int)`).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// `PACKET_IGNORE_OUTGOING` (Linux 4.20): do not see frames we send.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

/// `struct ifreq`: the name, then a union whose members we use are a
/// `short` (flags) and an `int` (MTU, index), both at offset 0.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<IfReq> {
        let b = name.as_bytes();
        if b.is_empty() || b.len() >= libc::IFNAMSIZ || b.contains(&0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"));
        }
        let mut r = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
        r.name[..b.len()].copy_from_slice(b);
        Ok(r)
    }

    fn name(&self) -> String {
        let end = self.name.iter().position(|b| *b == 0).unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes plain integers and returns a new fd or -1; on
    // success the fd is ours alone, so OwnedFd may own (and close) it.
    unsafe {
        let fd = cvt(libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto))?;
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

fn ioctl_ifreq(fd: RawFd, req: libc::c_ulong, ifr: &mut IfReq) -> io::Result<()> {
    // SAFETY: every request passed here (TUNSETIFF, SIOC[GS]IFFLAGS,
    // SIOCSIFMTU) reads and writes at most a `struct ifreq`, which `ifr`
    // is (repr(C), 40 bytes), and `ifr` is a live exclusive borrow.
    cvt(unsafe { libc::ioctl(fd, req as _, ifr as *mut IfReq) })?;
    Ok(())
}

/// Opens (creating if needed) the TAP device `name`: `IFF_TAP | IFF_NO_PI`,
/// nonblocking. Returns the fd and the device's actual name.
pub fn open_tap(name: &str) -> io::Result<(OwnedFd, String)> {
    let path = CString::new("/dev/net/tun").expect("no NUL inside");
    // SAFETY: `path` is a NUL-terminated string that outlives the call; the
    // returned fd (checked) is new and ours alone.
    let fd = unsafe {
        let fd = cvt(libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC))?;
        OwnedFd::from_raw_fd(fd)
    };
    let mut ifr = IfReq::new(name)?;
    ifr.data[..2].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
    ioctl_ifreq(fd.as_raw_fd(), TUNSETIFF, &mut ifr)?;
    Ok((fd, ifr.name()))
}

/// Sets the interface's MTU (when given) and brings it up.
pub fn set_up(name: &str, mtu: Option<u16>) -> io::Result<()> {
    let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    if let Some(mtu) = mtu {
        let mut ifr = IfReq::new(name)?;
        ifr.data[..4].copy_from_slice(&libc::c_int::from(mtu).to_ne_bytes());
        ioctl_ifreq(s.as_raw_fd(), libc::SIOCSIFMTU, &mut ifr)?;
    }
    let mut ifr = IfReq::new(name)?;
    ioctl_ifreq(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr)?;
    let flags = libc::c_short::from_ne_bytes([ifr.data[0], ifr.data[1]]) | libc::IFF_UP as libc::c_short;
    ifr.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl_ifreq(s.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr)
}

/// Index of interface `name`.
pub fn if_index(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"))?;
    // SAFETY: `c` is NUL-terminated and outlives the call, which only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(i)
    }
}

/// An AF_PACKET raw socket bound to `ifname` (every EtherType), nonblocking,
/// in promiscuous mode, not seeing its own transmissions.
pub fn open_packet(ifname: &str) -> io::Result<OwnedFd> {
    let index = if_index(ifname)?;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    let fd = socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK, proto as libc::c_int)?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: `sll` is a fully initialised sockaddr_ll and the length passed
    // is its size; bind only reads it.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    })?;
    // SAFETY: packet_mreq is plain old data; all-zero is a valid value.
    let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mr.mr_ifindex = index as i32;
    mr.mr_type = libc::PACKET_MR_PROMISC as u16;
    setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mr)?;
    // Older kernels lack it: then the bound socket's own frames are skipped
    // by the kernel anyway (it never loops a socket's frames back to it).
    let _ = setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, &1 as &libc::c_int);
    Ok(fd)
}

/// Asks for `bytes` of socket receive and send buffer (the kernel caps it
/// at its rmem_max/wmem_max unless the process may raise it; best effort).
pub fn set_socket_buffers(fd: RawFd, bytes: libc::c_int) {
    // SO_RCVBUFFORCE/SNDBUFFORCE pass the sysctl cap for a privileged
    // daemon; the plain options are the fallback.
    for (force, plain) in [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)] {
        if setsockopt(fd, libc::SOL_SOCKET, force, &bytes).is_err() {
            let _ = setsockopt(fd, libc::SOL_SOCKET, plain, &bytes);
        }
    }
}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, v: &T) -> io::Result<()> {
    // SAFETY: `v` points to a live, initialised T and the length passed is
    // exactly its size; setsockopt only reads it.
    cvt(unsafe {
        libc::setsockopt(fd, level, name, v as *const T as *const libc::c_void, std::mem::size_of::<T>() as u32)
    })?;
    Ok(())
}

/// Reads one frame; `Ok(None)` when none is pending (nonblocking fd).
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    // SAFETY: `buf` is a live exclusive borrow of `buf.len()` writable bytes.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(n as usize))
}

/// Writes one frame.
pub fn write(fd: RawFd, frame: &[u8]) -> io::Result<usize> {
    // SAFETY: `frame` is a live borrow of `frame.len()` readable bytes.
    let n = unsafe { libc::write(fd, frame.as_ptr() as *const libc::c_void, frame.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Waits up to `timeout_ms` for `fd` to become readable.
pub fn poll_in(fd: RawFd, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: `p` is one live pollfd and we pass a count of 1.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
    }
    Ok(n > 0)
}
