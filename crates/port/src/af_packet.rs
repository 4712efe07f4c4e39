//! An existing interface (a veth, a real NIC) driven through an AF_PACKET
//! raw socket in promiscuous mode.

use std::io;
use std::sync::Arc;

use crate::raw::RawPort;
use crate::{sys, PortCounters, PortKind};

/// Binds an AF_PACKET socket to interface `ifname` (which must exist) and
/// brings the interface up.
pub fn open(name: &str, ifname: &str, counters: Arc<PortCounters>) -> io::Result<RawPort> {
    let fd = sys::open_packet(ifname)?;
    sys::set_up(ifname, None)?;
    Ok(RawPort::new(name, ifname.to_string(), PortKind::AfPacket, fd, counters))
}
