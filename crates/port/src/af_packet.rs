//! An existing interface (a veth, a real NIC) driven through an AF_PACKET
//! raw socket in promiscuous mode.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::tap::{recv_raw, send_raw};
use crate::{sys, Port, PortCounters, PortKind, Rx};

/// An AF_PACKET port bound to one interface.
pub struct PacketPort {
    name: String,
    ifname: String,
    fd: OwnedFd,
    counters: Arc<PortCounters>,
}

impl PacketPort {
    /// Binds interface `ifname` (which must exist) and brings it up.
    pub fn open(name: &str, ifname: &str, counters: Arc<PortCounters>) -> io::Result<PacketPort> {
        let fd = sys::open_packet(ifname)?;
        sys::set_up(ifname, None)?;
        Ok(PacketPort { name: name.to_string(), ifname: ifname.to_string(), fd, counters })
    }
}

impl Port for PacketPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> PortKind {
        PortKind::AfPacket
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
