//! A TAP device toward the host kernel: frames the host stack sends on the
//! device come to the adapter, frames the adapter sends appear as received
//! on the device.

use std::io;
use std::sync::Arc;

use crate::raw::RawPort;
use crate::{sys, PortCounters, PortKind};

/// Opens (creating if needed) TAP device `ifname` (`IFF_TAP | IFF_NO_PI`,
/// nonblocking), sets its MTU and brings it up.
pub fn open(name: &str, ifname: &str, mtu: u16, counters: Arc<PortCounters>) -> io::Result<RawPort> {
    let (fd, ifname) = sys::open_tap(ifname)?;
    sys::set_up(&ifname, Some(mtu))?;
    Ok(RawPort::new(name, ifname, PortKind::Tap, fd, counters))
}
