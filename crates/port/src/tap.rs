//! A TAP device toward the host kernel: frames the host stack sends on the
//! device come to the adapter, frames the adapter sends appear as received
//! on the device.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::{sys, Port, PortCounters, PortKind, Rx, ETH_HLEN};

/// A TAP port (`IFF_TAP | IFF_NO_PI`, nonblocking).
pub struct TapPort {
    name: String,
    ifname: String,
    fd: OwnedFd,
    counters: Arc<PortCounters>,
}

impl TapPort {
    /// Opens (creating if needed) TAP device `ifname`, sets its MTU and
    /// brings it up.
    pub fn open(name: &str, ifname: &str, mtu: u16, counters: Arc<PortCounters>) -> io::Result<TapPort> {
        let (fd, ifname) = sys::open_tap(ifname)?;
        sys::set_up(&ifname, Some(mtu))?;
        Ok(TapPort { name: name.to_string(), ifname, fd, counters })
    }
}

/// Reads a frame from a raw frame fd (TAP or AF_PACKET), counting runts.
pub(crate) fn recv_raw(fd: RawFd, buf: &mut [u8], c: &PortCounters) -> io::Result<Option<Rx>> {
    loop {
        let Some(n) = sys::read(fd, buf)? else { return Ok(None) };
        if n < ETH_HLEN {
            c.rx_dropped_runt.inc();
            continue;
        }
        c.rx_packets.inc();
        c.rx_bytes.add(n as u64);
        return Ok(Some(Rx { offset: 0, len: n, ring: None, from_side: None }));
    }
}

/// Writes a frame to a raw frame fd, counting the outcome.
pub(crate) fn send_raw(fd: RawFd, frame: &[u8], c: &PortCounters) -> io::Result<()> {
    if frame.len() < ETH_HLEN {
        c.tx_dropped_runt.inc();
        return Ok(());
    }
    match sys::write(fd, frame) {
        Ok(_) => {
            c.tx_packets.inc();
            c.tx_bytes.add(frame.len() as u64);
        }
        // A full queue or a device that is down: the frame is lost, as on a wire.
        Err(_) => c.tx_dropped_error.inc(),
    }
    Ok(())
}

impl Port for TapPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> PortKind {
        PortKind::Tap
    }

    fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn counters(&self) -> &Arc<PortCounters> {
        &self.counters
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<Rx>> {
        recv_raw(self.fd(), buf, &self.counters)
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        send_raw(self.fd(), frame, &self.counters)
    }

    fn info(&self) -> serde_json::Value {
        serde_json::json!({ "ifname": self.ifname })
    }
}
